//! Which open calls name the device.
//!
//! `"/dev/liveupdate"` itself is recognised by comparing bytes. Any other path whose last
//! component is `liveupdate` (`"/dev//liveupdate"`, `"liveupdate"` relative to a descriptor of
//! `/dev`, `"../dev/liveupdate"`...) is the device if its directory is `/dev`: the same device
//! and inode number. Every other path costs one byte comparison and a scan for the last `/`.

use core::ffi::{CStr, c_char, c_int};
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, CWD};

/// The device's path.
pub(crate) const DEVICE: &[u8] = b"/dev/liveupdate";
const NAME: &[u8] = b"liveupdate";

/// True if `path`, relative to `dirfd`, names `/dev/liveupdate`.
///
/// # Safety
///
/// `path` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn is_device(dirfd: c_int, path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: non-NULL and NUL-terminated by this function's contract.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes == DEVICE {
        return true;
    }
    if !bytes.ends_with(NAME) {
        return false;
    }
    let dir_len = bytes.len().saturating_sub(NAME.len());
    let dir = match bytes.get(..dir_len) {
        Some(b"") => &b"."[..],
        Some(d) if d.ends_with(b"/") => d,
        _ => return false, // "xliveupdate": another name
    };
    same_dir_as_dev(dirfd, dir)
}

/// True if `dir` (relative to `dirfd`) is the directory `/dev`.
fn same_dir_as_dev(dirfd: c_int, dir: &[u8]) -> bool {
    let mut buf = [0u8; 4096];
    let Some(slot) = buf.get_mut(..dir.len()) else {
        return false;
    };
    slot.copy_from_slice(dir);
    let Some(with_nul) = buf.get(..dir.len().saturating_add(1)) else {
        return false;
    };
    let Ok(dir) = CStr::from_bytes_with_nul(with_nul) else {
        return false;
    };
    let base = if dir.to_bytes().starts_with(b"/") || dirfd == libc::AT_FDCWD {
        CWD
    } else if dirfd < 0 {
        return false; // the real openat answers EBADF
    } else {
        // SAFETY: a non-negative descriptor number the caller passed; it is only used for the
        // duration of this fstatat, which fails with EBADF if it is not open. Never closed.
        unsafe { BorrowedFd::borrow_raw(dirfd) }
    };
    let (Ok(here), Ok(dev)) = (
        rustix::fs::statat(base, dir, AtFlags::empty()),
        rustix::fs::statat(CWD, c"/dev", AtFlags::empty()),
    ) else {
        return false;
    };
    (here.st_dev, here.st_ino) == (dev.st_dev, dev.st_ino)
}
