//! `libluo_preload.so`: gives unmodified programs a `/dev/liveupdate` backed by luod.
//!
//! A program written for the kernel's Live Update Orchestrator opens `/dev/liveupdate` and
//! issues the `LIVEUPDATE_*` ioctls of `include/uapi/linux/liveupdate.h`. Run it with
//!
//! ```text
//! LD_PRELOAD=target/debug/libluo_preload.so LUOD_SOCKET=/run/luod/luod.sock ./program
//! ```
//!
//! and it talks to luod instead, with the same results and the same errno values; a
//! `luoctl reboot` stands in for the kexec between its two stages. `docs/compat.md` lists every
//! uapi operation and the few places where userspace cannot behave as the kernel does.
//!
//! # How it fits together
//!
//! - `open` and the rest of the open family (`open64`, `openat`, `openat64` and the
//!   fortified `__open_2`, `__open64_2`, `__openat_2`, `__openat64_2`) recognise the path of
//!   the device (`path`) and, for it only, connect to luod and turn the connection into the
//!   caller's device connection (`conn::open_device`). Every other path goes to the real
//!   libc function, found with `dlsym(RTLD_NEXT)` (`real`).
//! - `ioctl` answers requests on luod connections (a mark on the socket itself says so:
//!   `conn::classify`) as the kernel's device and session files do (see [`ioctl`] for which
//!   requests are looked at, and when). `decode` applies the kernel's
//!   decoding order — the parts that need no state locally, the session-direction check in
//!   luod — forwards the struct bytes, and copies the reply back with the received descriptor's
//!   number in the struct's `fd` field. Anything else goes to the real `ioctl`.
//! - The caller's struct is only touched after the kernel has accessed it on the library's
//!   behalf (a futex operation on one word per page, see `user`), so a bad pointer is `EFAULT`
//!   at the step where the kernel would fault, never a crash.
//! - Requests are made under a process-wide lock (`lock`): replies come back in order on a
//!   connection, and two threads must not read each other's.
//!
//! # Rules the library keeps
//!
//! - **Stateless.** What a descriptor is lives on the socket (its mark), not in this process:
//!   descriptors keep working after `fork`, `clone`, `dup` and `execve`, and a session is closed
//!   when the last copy of its descriptor is closed anywhere (luod sees the hang-up).
//! - **Never re-entered.** Inside a hook only raw system calls are made (rustix's `linux_raw`
//!   backend, or libc wrappers of system calls that are not hooked); nothing calls `open` or
//!   `ioctl` through the PLT, and no `std` I/O is used.
//! - **No panic crosses the C boundary.** The code is written not to panic (indexing, overflow
//!   and unwrap lints are denied below) and every hook body still runs under `catch_unwind`,
//!   answering `EIO` if the impossible happens.
//! - **errno exactly.** A successful call leaves `errno` as it found it; a failed one sets
//!   the kernel's errno. Received descriptors are close-on-exec, as the kernel's are.
//!
//! # Fixed-arity hooks
//!
//! `open`, `openat` and `ioctl` are C-variadic, and Rust 1.95 cannot *define* a C-variadic
//! function (E0658). The hooks are defined with the optional argument as a fixed trailing
//! parameter instead. This is sound on the two targets luod supports: on x86_64 (System V
//! AMD64 ABI) and on aarch64 Linux (AAPCS64, not Apple's variant), the variadic integer and
//! pointer arguments that follow the named ones travel in exactly the registers the same
//! arguments would use as named parameters (`rdx`/`rcx` on x86_64, `x2`/`x3` on aarch64); the
//! caller's extra setup for a variadic call (`al` on x86_64) is simply ignored. When the
//! caller passed no `mode` (no `O_CREAT`/`O_TMPFILE`), the parameter holds whatever was left in
//! the register: the hooks only forward it, and the real `open` reads it only when those flags
//! say it was passed, exactly as it would have. The `cfg` below refuses other targets.
#![allow(unsafe_code)] // A C ABI shim: every unsafe block says why it is sound.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "luo-preload's fixed-arity hooks are only sound on x86_64 and aarch64 Linux (see the crate doc)"
);

mod conn;
mod decode;
mod lock;
mod path;
mod real;
mod user;

use core::ffi::{c_char, c_int, c_ulong, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::mode_t;
use luo_abi::uapi::LIVEUPDATE_IOCTL_TYPE;

/// Runs a hook body that answers `Ok(value)` or `Err(errno)`: on success `errno` is restored
/// to what it was on entry (the libc wrappers used inside may have changed it), on failure it
/// is set and `-1` returned. A panic, which the code is written never to raise, becomes `EIO`.
fn hook(body: impl FnOnce() -> Result<c_int, i32>) -> c_int {
    let saved = user::errno();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => {
            user::set_errno(saved);
            value
        }
        Ok(Err(e)) => {
            user::set_errno(e);
            -1
        }
        Err(_) => {
            user::set_errno(libc::EIO);
            -1
        }
    }
}

/// The open family's common body: the device for its path, else `fallback`.
///
/// # Safety
///
/// `path` is the caller's argument to an open call: NULL or a pointer to a NUL-terminated
/// string (an invalid non-NULL pointer faults here as it would in libc's own `strlen`).
unsafe fn open_common(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    fallback: impl FnOnce() -> c_int,
) -> c_int {
    // SAFETY: forwarded from this function's contract.
    if unsafe { path::is_device(dirfd, path) } {
        hook(|| conn::open_device(flags))
    } else {
        fallback()
    }
}

/// `open(2)`: `/dev/liveupdate` connects to luod; any other path goes to libc.
///
/// # Safety
///
/// Called by C code with the arguments of `open`; `mode` is read only when `flags` say it was
/// passed (see the crate doc on fixed arity).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the caller's arguments, forwarded unchanged to the real function of the same
    // prototype.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, || {
            real::open(&real::OPEN, path, flags, mode)
        })
    }
}

/// `open64`: as `open`.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, || {
            real::open(&real::OPEN64, path, flags, mode)
        })
    }
}

/// `openat(2)`: a path naming `/dev/liveupdate` (relative to `dirfd` or not) connects to luod.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(dirfd, path, flags, || {
            real::openat(&real::OPENAT, dirfd, path, flags, mode)
        })
    }
}

/// `openat64`: as `openat`.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(dirfd, path, flags, || {
            real::openat(&real::OPENAT64, dirfd, path, flags, mode)
        })
    }
}

/// `__open_2`, what `open` becomes under `_FORTIFY_SOURCE` when the compiler cannot see the
/// flags: no `mode` argument.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, || {
            real::open_2(&real::OPEN_2, path, flags)
        })
    }
}

/// `__open64_2`: as `__open_2`.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, || {
            real::open_2(&real::OPEN64_2, path, flags)
        })
    }
}

/// `__openat_2`: the fortified `openat`, no `mode` argument.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(dirfd, path, flags, || {
            real::openat_2(&real::OPENAT_2, dirfd, path, flags)
        })
    }
}

/// `__openat64_2`: as `__openat_2`.
///
/// # Safety
///
/// As `open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as in `open`.
    unsafe {
        open_common(dirfd, path, flags, || {
            real::openat_2(&real::OPENAT64_2, dirfd, path, flags)
        })
    }
}

/// `ioctl(2)`: on luod connections, every request the kernel would give to the device's or
/// the session's own handler is answered as that handler answers it (`decode`): the
/// `LIVEUPDATE_*` requests by luod, any other by the handler's decoding steps alone, which
/// refuse it (`EINVAL` for a command number outside the table, `ENOTTY` inside it). The
/// requests the kernel handles for every file before its handler (`FIOCLEX`, `FIONCLEX`,
/// `FIONBIO`, `FIOASYNC`, `FIOQSIZE`, the file-system ones) and everything on other
/// descriptors go to the real `ioctl`.
///
/// A luod connection is a socket, and a socket answers terminal (`'T'`, such as `FIONREAD`)
/// and socket (`0x89`) requests itself, so those types are classified before the real call.
/// Any other type is only looked at when the real call says `ENOTTY` (a socket's answer to a
/// request it does not know, with nothing changed): the descriptors of other programs' ioctls
/// (a VMM's `KVM_RUN`) cost no extra system call.
///
/// # Safety
///
/// Called by C code with the arguments of `ioctl` (the third is forwarded as it came, whatever
/// it is; for a luod request it is read only through `user`, which cannot fault).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    // The kernel takes the command as an `unsigned int`: the upper half of `request` is lost
    // on the way in, so it is ignored here too.
    let cmd = request as u32;
    let kind = || {
        let saved = user::errno();
        let kind = conn::classify(fd);
        user::set_errno(saved);
        kind
    };
    let ty = (cmd >> 8) & 0xff;
    if ty == LIVEUPDATE_IOCTL_TYPE || ty == TTY_IOCTL_TYPE || ty == SOCK_IOCTL_TYPE {
        if !every_file(cmd)
            && let Some(kind) = kind()
        {
            return hook(|| decode::ioctl(fd, kind, cmd, arg as usize));
        }
        // SAFETY: the caller's arguments, forwarded unchanged.
        return unsafe { real::ioctl(fd, request, arg) };
    }
    // SAFETY: the caller's arguments, forwarded unchanged.
    let r = unsafe { real::ioctl(fd, request, arg) };
    if r == -1
        && user::errno() == libc::ENOTTY
        && let Some(kind) = kind()
    {
        return hook(|| decode::ioctl(fd, kind, cmd, arg as usize));
    }
    r
}

/// The ioctl type of terminal requests (`FIONREAD`, `TCGETS`, `FIOCLEX`, ...).
const TTY_IOCTL_TYPE: u32 = b'T' as u32;
/// The ioctl type of socket requests (`SIOC*`).
const SOCK_IOCTL_TYPE: u32 = 0x89;

/// The `'T'` requests the kernel's `do_vfs_ioctl` answers for every file before its own
/// handler sees them; on a socket they do what they do on the kernel's device or session.
fn every_file(cmd: u32) -> bool {
    [
        libc::FIOCLEX,
        libc::FIONCLEX,
        libc::FIONBIO,
        libc::FIOASYNC,
        libc::FIOQSIZE,
    ]
    .into_iter()
    .any(|c| c as u32 == cmd)
}
