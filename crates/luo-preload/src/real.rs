//! The real libc functions behind the hooks, found with `dlsym(RTLD_NEXT)` on first use.
//!
//! If a symbol cannot be found (a libc without the fortified variants, say), the call is made
//! as the raw system call the function stands for, so a hooked program never loses `open` or
//! `ioctl` because of this library.

use core::ffi::{CStr, c_char, c_int, c_ulong, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

use libc::mode_t;

/// One real function: its name and, once looked up, its address.
pub(crate) struct Real {
    name: &'static CStr,
    addr: AtomicPtr<c_void>,
}

impl Real {
    const fn new(name: &'static CStr) -> Real {
        Real {
            name,
            addr: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The function's address in the next object after this library, or null.
    fn addr(&self) -> *mut c_void {
        let addr = self.addr.load(Ordering::Acquire);
        if !addr.is_null() {
            return addr;
        }
        // SAFETY: `name` is a NUL-terminated string; RTLD_NEXT is valid in a shared object.
        // dlsym may be called concurrently; two threads racing here store the same address.
        let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        self.addr.store(addr, Ordering::Release);
        addr
    }
}

pub(crate) static OPEN: Real = Real::new(c"open");
pub(crate) static OPEN64: Real = Real::new(c"open64");
pub(crate) static OPENAT: Real = Real::new(c"openat");
pub(crate) static OPENAT64: Real = Real::new(c"openat64");
pub(crate) static OPEN_2: Real = Real::new(c"__open_2");
pub(crate) static OPEN64_2: Real = Real::new(c"__open64_2");
pub(crate) static OPENAT_2: Real = Real::new(c"__openat_2");
pub(crate) static OPENAT64_2: Real = Real::new(c"__openat64_2");
static IOCTL: Real = Real::new(c"ioctl");

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, mode_t) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, mode_t) -> c_int;
type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type Openat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int;

/// The raw `openat` system call, for a missing libc symbol.
///
/// # Safety
///
/// `path` as for `openat(2)`.
unsafe fn sys_openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the arguments of openat(2), passed as the kernel takes them; the kernel validates
    // the pointer (EFAULT).
    unsafe { libc::syscall(libc::SYS_openat, dirfd, path, flags, mode) as c_int }
}

/// Calls the real `open` or `open64`.
///
/// # Safety
///
/// The arguments of the caller's `open` call, unchanged.
pub(crate) unsafe fn open(real: &Real, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let addr = real.addr();
    if addr.is_null() {
        // SAFETY: forwarded.
        return unsafe { sys_openat(libc::AT_FDCWD, path, flags, mode) };
    }
    // SAFETY: `addr` is libc's `open`/`open64`, whose prototype is `OpenFn` with the variadic
    // `mode` passed as a fixed argument (sound on the supported targets: see the crate doc).
    unsafe {
        let f = core::mem::transmute::<*mut c_void, OpenFn>(addr);
        f(path, flags, mode)
    }
}

/// Calls the real `openat` or `openat64`.
///
/// # Safety
///
/// The arguments of the caller's `openat` call, unchanged.
pub(crate) unsafe fn openat(
    real: &Real,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    let addr = real.addr();
    if addr.is_null() {
        // SAFETY: forwarded.
        return unsafe { sys_openat(dirfd, path, flags, mode) };
    }
    // SAFETY: `addr` is libc's `openat`/`openat64` (see `open`).
    unsafe {
        let f = core::mem::transmute::<*mut c_void, OpenatFn>(addr);
        f(dirfd, path, flags, mode)
    }
}

/// Calls the real `__open_2` or `__open64_2`.
///
/// # Safety
///
/// The arguments of the caller's call, unchanged.
pub(crate) unsafe fn open_2(real: &Real, path: *const c_char, flags: c_int) -> c_int {
    let addr = real.addr();
    if addr.is_null() {
        // SAFETY: forwarded; without O_CREAT/O_TMPFILE (the fortified call's contract) the
        // mode is unused.
        return unsafe { sys_openat(libc::AT_FDCWD, path, flags, 0) };
    }
    // SAFETY: `addr` is libc's `__open_2`/`__open64_2`, of prototype `Open2Fn`.
    unsafe {
        let f = core::mem::transmute::<*mut c_void, Open2Fn>(addr);
        f(path, flags)
    }
}

/// Calls the real `__openat_2` or `__openat64_2`.
///
/// # Safety
///
/// The arguments of the caller's call, unchanged.
pub(crate) unsafe fn openat_2(
    real: &Real,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
) -> c_int {
    let addr = real.addr();
    if addr.is_null() {
        // SAFETY: as in `open_2`.
        return unsafe { sys_openat(dirfd, path, flags, 0) };
    }
    // SAFETY: `addr` is libc's `__openat_2`/`__openat64_2`, of prototype `Openat2Fn`.
    unsafe {
        let f = core::mem::transmute::<*mut c_void, Openat2Fn>(addr);
        f(dirfd, path, flags)
    }
}

/// Calls the real `ioctl`.
///
/// # Safety
///
/// The arguments of the caller's `ioctl` call, unchanged.
pub(crate) unsafe fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    let addr = IOCTL.addr();
    if addr.is_null() {
        // SAFETY: the arguments of ioctl(2); the kernel validates them.
        return unsafe { libc::syscall(libc::SYS_ioctl, fd, request, arg) as c_int };
    }
    // SAFETY: `addr` is libc's `ioctl`, whose one variadic argument is passed as a fixed one
    // (see the crate doc).
    unsafe {
        let f = core::mem::transmute::<*mut c_void, IoctlFn>(addr);
        f(fd, request, arg)
    }
}
