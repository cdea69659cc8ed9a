//! One `LIVEUPDATE_*` ioctl on a luod descriptor, in the kernel's order.
//!
//! The kernel decodes an ioctl in steps (spec §1.3), and the first step that fails decides
//! the errno. Most steps need no state, so they run here, in order, before anything is sent;
//! one needs luod:
//!
//! | step | check | errno | where |
//! |---|---|---|---|
//! | 1 | command number in the descriptor's table | `EINVAL` | here (`uapi::lookup`) |
//! | 2 | read `size`, the struct's first `u32` | `EFAULT` | here (`user::read`) |
//! | 3 | the whole command word matches the table | `ENOTTY` | here |
//! | 4 | session direction (outgoing/incoming) | `EINVAL` | luod |
//! | 5 | `size` below the minimum | `EINVAL` | here (4 and 5 give the same errno, so their order cannot show) |
//! | 6 | non-zero bytes past the known size / unreadable struct | `E2BIG` / `EFAULT` | here |
//! | handler | reserve the descriptor an answer will need | `EMFILE`, `ENFILE` | here (a `dup` held until the request goes) |
//! | handler | everything else | luod's errno | luod |
//! | copy back | write `min(size, known)` bytes | `EFAULT` | here (`user::write`) |
//!
//! When a local check after step 4 fails on a session descriptor, luod must still say whether
//! step 4 would have failed first. The library asks it with a *probe*: the same command with a
//! struct whose size is the known size plus one and whose extra byte is non-zero. luod runs
//! steps 1 to 5 on it and stops at step 6 with `E2BIG`, having changed nothing; `EINVAL` means
//! the direction was wrong.
//!
//! Only the known part of the struct (at most 72 bytes) is sent: the size field keeps the
//! caller's value, and the tail beyond the known size was checked to be zero here.

use core::ffi::c_int;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd, RawFd};

use luo_abi::Errno;
use luo_abi::uapi::{self, Target};

use crate::conn::{self, Kind, Reply};
use crate::lock::Guard;
use crate::user::{self, Tail};

/// Largest known struct.
const KNOWN_MAX: usize = 72;

/// True for the commands whose answer carries a new descriptor.
fn returns_fd(cmd: u32) -> bool {
    matches!(
        cmd,
        uapi::LIVEUPDATE_IOCTL_CREATE_SESSION
            | uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION
            | uapi::LIVEUPDATE_SESSION_RETRIEVE_FD
    )
}

/// Runs `cmd` with the struct at `arg` on luod descriptor `fd` of `kind`: `Ok(0)` or the errno.
pub(crate) fn ioctl(fd: RawFd, kind: Kind, cmd: u32, arg: usize) -> Result<c_int, i32> {
    // SAFETY: `fd` was just classified as a luod socket; it is borrowed for this call only and
    // never closed here.
    let sock = unsafe { conn::borrow(fd) };
    let target = match kind {
        Kind::Device => Target::Device,
        Kind::Session => Target::Session,
    };
    // Step 1, and step 3 decided early: a wrong command word still reads `size` (step 2,
    // EFAULT) before it is ENOTTY.
    let row = match uapi::lookup(target, cmd) {
        Ok(row) => row,
        Err(e) if e == Errno::EINVAL => return Err(libc::EINVAL),
        Err(e) => {
            user::read(arg, &mut [0u8; 4]).map_err(|_| libc::EFAULT)?;
            return Err(e.raw());
        }
    };
    let known = (row.known_size as usize).min(KNOWN_MAX);
    let mut buf = [0u8; KNOWN_MAX];
    // The usual case reads the whole known struct at once, if it lies in the page that holds
    // `size` (a page the kernel reads anyway); otherwise `size` first, then what it covers.
    let mut checked = None;
    if user::one_page(arg, known) {
        checked = user::read(arg, buf.get_mut(..known).ok_or(libc::EINVAL)?).ok();
    }
    if checked.is_none() {
        // Step 2.
        let size = buf.get_mut(..4).ok_or(libc::EINVAL)?;
        user::read(arg, size).map_err(|_| libc::EFAULT)?;
    }
    let size = buf
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes) as usize;
    // Steps 4 and 5: both EINVAL.
    if size < row.min_size as usize {
        return Err(libc::EINVAL);
    }
    // Step 6.
    let head = size.min(known);
    let mut local: Option<i32> = None;
    if size > known {
        match user::scan_tail(arg.wrapping_add(known), size.wrapping_sub(known)) {
            Ok(Tail::Zero) => {}
            Ok(Tail::NonZero) => local = Some(libc::E2BIG),
            Err(_) => local = Some(libc::EFAULT),
        }
    }
    if checked.is_some() {
        // Bytes past `size` were read with the rest but are not the caller's: zero them, as
        // the kernel zero-fills a short struct.
        if let Some(beyond) = buf.get_mut(head..) {
            beyond.fill(0);
        }
    } else if local.is_none() {
        match user::read(arg, buf.get_mut(..head).ok_or(libc::EINVAL)?) {
            Ok(c) => checked = Some(c),
            Err(_) => local = Some(libc::EFAULT),
        }
    }
    // The handler's first step: reserve the descriptor the answer needs.
    let mut reserved: Option<OwnedFd> = None;
    if local.is_none() && returns_fd(cmd) {
        match rustix::io::fcntl_dupfd_cloexec(sock, 0) {
            Ok(spare) => reserved = Some(spare),
            Err(e) => local = Some(e.raw_os_error()),
        }
    }
    let guard = crate::lock::lock()?;
    if let Some(e) = local {
        if target == Target::Session {
            match probe(&guard, sock, cmd, known) {
                libc::E2BIG => {}
                other => return Err(other),
            }
        }
        return Err(e);
    }
    let request = buf.get(..head).ok_or(libc::EINVAL)?;
    drop(reserved); // free the slot for the descriptor the reply brings
    let reply = if cmd == uapi::LIVEUPDATE_SESSION_PRESERVE_FD {
        preserve(&guard, sock, cmd, request)?
    } else {
        conn::call(&guard, sock, cmd, request, None)?
    };
    answer(
        cmd,
        arg,
        head,
        reply,
        checked.unwrap_or(user::Checked { writable: false }),
    )
}

/// PRESERVE_FD: the descriptor to preserve travels as `SCM_RIGHTS`. One that is not open is
/// sent as no descriptor at all, and luod answers `EBADF` at the step where the kernel's
/// `fget` fails (after the token check).
fn preserve(
    guard: &Guard,
    sock: std::os::fd::BorrowedFd<'_>,
    cmd: u32,
    request: &[u8],
) -> Result<Reply, i32> {
    let target = request
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(-1, i32::from_le_bytes);
    if target >= 0 {
        // SAFETY: non-negative, borrowed for this sendmsg only; EBADF if it is not open.
        let file = unsafe { conn::borrow(target) };
        match conn::call(guard, sock, cmd, request, Some(file)) {
            Err(libc::EBADF) => {}
            other => return other,
        }
    }
    conn::call(guard, sock, cmd, request, None)
}

/// Asks luod whether step 4 (the session's direction) fails for `cmd`: `EINVAL` if it does,
/// `E2BIG` if it does not (see the module doc), or the transport's errno.
fn probe(guard: &Guard, sock: std::os::fd::BorrowedFd<'_>, cmd: u32, known: usize) -> i32 {
    let mut struct_ = [0u8; KNOWN_MAX + 1];
    let len = known.saturating_add(1).min(struct_.len());
    if let Some(size) = struct_.get_mut(..4) {
        size.copy_from_slice(&(len as u32).to_le_bytes());
    }
    if let Some(last) = struct_.get_mut(len.saturating_sub(1)) {
        *last = 1;
    }
    match conn::call(
        guard,
        sock,
        cmd,
        struct_.get(..len).unwrap_or_default(),
        None,
    ) {
        Ok(reply) => reply.errno,
        Err(e) => e,
    }
}

/// Turns luod's reply into the ioctl's result: the struct copied back (`min(size, known)`
/// bytes, the new descriptor's number in `fd`), or the errno.
fn answer(
    cmd: u32,
    arg: usize,
    head: usize,
    mut reply: Reply,
    checked: user::Checked,
) -> Result<c_int, i32> {
    if reply.errno != 0 {
        return Err(reply.errno);
    }
    let n = reply.len.min(head);
    let mut new_fd: Option<OwnedFd> = None;
    if returns_fd(cmd) {
        let Some(fd) = reply.fds.take() else {
            return Err(if reply.fds_lost {
                libc::EMFILE
            } else {
                libc::EPROTO
            });
        };
        if cmd != uapi::LIVEUPDATE_SESSION_RETRIEVE_FD {
            // A session: mark it so that ioctls on it (in any process) are recognised.
            conn::mark(fd.as_fd(), Kind::Session)?;
        }
        let number = std::os::fd::AsRawFd::as_raw_fd(&fd);
        if let Some(field) = reply.arg.get_mut(4..8) {
            field.copy_from_slice(&number.to_le_bytes());
        }
        new_fd = Some(fd);
    }
    let back = reply.arg.get(..n).ok_or(libc::EIO)?;
    if user::write(arg, back, checked).is_err() {
        // As in the kernel, the new descriptor is released: a session made by CREATE_SESSION
        // is then destroyed, one retrieved by RETRIEVE_SESSION finished.
        drop(new_fd);
        return Err(libc::EFAULT);
    }
    if let Some(fd) = new_fd {
        let _ = fd.into_raw_fd(); // now the caller's
    }
    Ok(0)
}
