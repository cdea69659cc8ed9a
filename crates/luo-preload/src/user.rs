//! The caller's memory and the caller's `errno`.
//!
//! The kernel reads an ioctl's struct with `copy_from_user` and answers `EFAULT` for a bad
//! pointer; a library that dereferenced the pointer would crash instead. So the struct is read
//! and written with `process_vm_readv`/`process_vm_writev` on the calling process itself: the
//! kernel does the copy and reports a bad address as `EFAULT`, never as a signal. (Access to
//! one's own process is always allowed: the ptrace check passes for the same thread group.)
//!
//! Where those calls are unavailable (a seccomp filter refusing them with `EPERM` or
//! `ENOSYS`), the library falls back to plain memory access, and a bad pointer then faults as
//! it would in any libc function. `docs/compat.md` says so.

use core::sync::atomic::{AtomicBool, Ordering};

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// The address range was not (entirely) accessible: `EFAULT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault;

/// False once `process_vm_readv`/`writev` were refused by the system.
static VM_RW: AtomicBool = AtomicBool::new(true);

/// One `process_vm_readv` (`write` false) or `process_vm_writev` (`write` true) of `len`
/// bytes between `local` and the caller's `remote`. `None` if the system refused the call.
fn vm_rw(write: bool, local: *mut u8, remote: usize, len: usize) -> Option<Result<(), Fault>> {
    if !VM_RW.load(Ordering::Relaxed) {
        return None;
    }
    if remote.checked_add(len).is_none() {
        return Some(Err(Fault));
    }
    let local_iov = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let remote_iov = libc::iovec {
        iov_base: remote as *mut libc::c_void,
        iov_len: len,
    };
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: `local` points to `len` bytes of this library's own buffer (writable when
    // reading); `remote` is only touched by the kernel, which checks it and answers EFAULT.
    let n = unsafe {
        if write {
            libc::process_vm_writev(pid, &local_iov, 1, &remote_iov, 1, 0)
        } else {
            libc::process_vm_readv(pid, &local_iov, 1, &remote_iov, 1, 0)
        }
    };
    if n >= 0 {
        return Some(if n as usize == len {
            Ok(())
        } else {
            Err(Fault)
        });
    }
    match errno() {
        libc::ENOSYS | libc::EPERM => {
            VM_RW.store(false, Ordering::Relaxed);
            None
        }
        _ => Some(Err(Fault)),
    }
}

/// Copies `dst.len()` bytes from the caller's address `src`.
pub(crate) fn read(src: usize, dst: &mut [u8]) -> Result<(), Fault> {
    if dst.is_empty() {
        return Ok(());
    }
    if let Some(r) = vm_rw(false, dst.as_mut_ptr(), src, dst.len()) {
        return r;
    }
    if src == 0 {
        return Err(Fault);
    }
    // SAFETY: the fallback when the system refuses process_vm_readv: the caller promised a
    // readable struct (a bad pointer faults, as in any libc function; see the module doc).
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
    Ok(())
}

/// Copies `src` to the caller's address `dst`.
pub(crate) fn write(dst: usize, src: &[u8]) -> Result<(), Fault> {
    if src.is_empty() {
        return Ok(());
    }
    // process_vm_writev only reads `local`; the cast to *mut is for the iovec type.
    if let Some(r) = vm_rw(true, src.as_ptr().cast_mut(), dst, src.len()) {
        return r;
    }
    if dst == 0 {
        return Err(Fault);
    }
    // SAFETY: the fallback (see `read`): the caller promised a writable struct.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
    Ok(())
}

/// What a scan of the bytes past a struct's known size found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every byte is zero.
    Zero,
    /// A non-zero byte (the kernel's `E2BIG`).
    NonZero,
}

/// The kernel's `check_zeroed_user(start, len)`: scans in address order and stops at the first
/// non-zero byte (`NonZero`) or at the first inaccessible page (`Fault`), whichever comes first.
pub(crate) fn scan_tail(start: usize, len: usize) -> Result<Tail, Fault> {
    const PAGE: usize = 4096; // Faults are page-granular; no page is smaller.
    let mut buf = [0u8; 1024];
    let mut at = start;
    let end = start.checked_add(len).ok_or(Fault)?;
    while at < end {
        // Never cross a 4 KiB boundary in one read, so a read either sees a whole chunk or
        // faults on a page the kernel would have faulted on at this same point.
        let to_page = PAGE.wrapping_sub(at % PAGE);
        let n = end.wrapping_sub(at).min(to_page).min(buf.len());
        let chunk = buf.get_mut(..n).ok_or(Fault)?;
        read(at, chunk)?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(Tail::NonZero);
        }
        at = at.wrapping_add(n);
    }
    Ok(Tail::Zero)
}
