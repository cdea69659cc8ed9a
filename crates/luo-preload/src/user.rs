//! The caller's memory and the caller's `errno`.
//!
//! The kernel reads an ioctl's struct with `copy_from_user` and answers `EFAULT` for a bad
//! pointer; a library that dereferenced the pointer would crash instead. So before touching the
//! caller's struct the library has the kernel access it, one word per page, with the cheapest
//! system call that performs exactly the kernel's user access:
//!
//! - `futex(FUTEX_WAKE_OP_PRIVATE)` with the operation "add 0" does an atomic read-modify-write
//!   of the word that leaves its value unchanged: it succeeds on a readable and writable page
//!   and fails with `EFAULT` exactly where `copy_to_user` would;
//! - on a page that refuses the write (a read-only struct), `futex(FUTEX_WAIT_PRIVATE)` with a
//!   zero timeout reads the word with `get_user` and returns at once (`EAGAIN`), or fails with
//!   `EFAULT` exactly where `copy_from_user` would.
//!
//! Protection is per page, so one word per page settles a range; the bytes are then copied with
//! volatile accesses, and a struct proven writable when it was read is written back without
//! another check. One system call per ioctl in the usual case. A struct that is not 4-byte
//! aligned (futexes need aligned words), and the scan of a long tail, go through
//! `process_vm_readv`/`process_vm_writev` on the calling process instead (slower, same answers).
//! Only if the system refuses both (a seccomp filter) does the library fall back to plain memory
//! access, where a bad pointer faults as in any libc function. A struct unmapped or
//! write-protected by another thread between the check and the copy faults too: that program
//! races with its own ioctl. `docs/compat.md` says all this.

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

/// Smallest page size: protection never changes within one of these.
const PAGE: usize = 4096;

/// How a futex probe of one word went.
enum Probe {
    Ok,
    Fault,
    /// The probe cannot say (ENOSYS, EPERM from seccomp...): use another way.
    Unknown,
}

/// Has the kernel access the aligned word at `addr`: read it (`write` false) or atomically add
/// zero to it (`write` true).
fn probe(addr: usize, write: bool) -> Probe {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut scratch: u32 = 0;
    // SAFETY: futex only accesses user memory through the kernel's checked user accessors: a
    // bad `addr` is EFAULT, never a fault in this process. FUTEX_WAIT on a private word with
    // a zero timeout returns at once (EAGAIN unless the word holds the magic value, then
    // ETIMEDOUT); FUTEX_WAKE_OP wakes nobody on `scratch` (ours) and adds 0 to the word at
    // `addr`, leaving its value unchanged.
    let r = unsafe {
        if write {
            const ADD_ZERO: u32 = 1 << 28; // FUTEX_OP(FUTEX_OP_ADD, 0, FUTEX_OP_CMP_EQ, 0)
            libc::syscall(
                libc::SYS_futex,
                (&raw mut scratch).cast::<u32>(),
                libc::FUTEX_WAKE_OP | libc::FUTEX_PRIVATE_FLAG,
                0,
                0,
                addr as *mut u32,
                ADD_ZERO,
            )
        } else {
            libc::syscall(
                libc::SYS_futex,
                addr as *mut u32,
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0x5A5A_5A5Au32,
                &raw const zero,
                core::ptr::null::<u32>(),
                0,
            )
        }
    };
    if r >= 0 {
        return Probe::Ok;
    }
    match errno() {
        libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR => Probe::Ok,
        libc::EFAULT => Probe::Fault,
        _ => Probe::Unknown,
    }
}

/// What a checked read learnt about the range besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Every page of the range is writable too: copying back needs no further check.
    pub writable: bool,
}

/// Checks every page of `[start, start + len)`: readable (`Ok(false)`), readable and writable
/// (`Ok(true)`), or not (`Fault`). Each page is first probed for writing, which also proves it
/// readable — the common case costs one system call per page — and, if that faults, for
/// reading. `None` if a probe could not tell or the range is not word-aligned.
fn check_range(start: usize, len: usize, need_write: bool) -> Option<Result<bool, Fault>> {
    if !start.is_multiple_of(4) || len > PAGE {
        return None;
    }
    let Some(end) = start.checked_add(len) else {
        return Some(Err(Fault));
    };
    let mut writable = true;
    let mut word = start;
    while word < end {
        match probe(word, true) {
            Probe::Ok => {}
            Probe::Unknown => return None,
            Probe::Fault if need_write => return Some(Err(Fault)),
            Probe::Fault => match probe(word, false) {
                Probe::Ok => writable = false,
                Probe::Fault => return Some(Err(Fault)),
                Probe::Unknown => return None,
            },
        }
        // The first word of the next page.
        word = (word / PAGE).wrapping_add(1).wrapping_mul(PAGE);
    }
    Some(Ok(writable))
}

/// True if `[start, start + len)` lies within one page.
pub(crate) fn one_page(start: usize, len: usize) -> bool {
    (start % PAGE).saturating_add(len) <= PAGE
}

/// Copies `dst.len()` bytes from the caller's address `src`.
pub(crate) fn read(src: usize, dst: &mut [u8]) -> Result<Checked, Fault> {
    if dst.is_empty() {
        return Ok(Checked { writable: false });
    }
    match check_range(src, dst.len(), false) {
        Some(Ok(writable)) => {
            for (i, b) in dst.iter_mut().enumerate() {
                // SAFETY: every page of the range was just accessed by the kernel on our
                // behalf (check_range), so it is mapped and readable.
                *b = unsafe { core::ptr::read_volatile((src as *const u8).wrapping_add(i)) };
            }
            return Ok(Checked { writable });
        }
        Some(Err(f)) => return Err(f),
        None => {}
    }
    let unchecked = Checked { writable: false };
    if let Some(r) = vm_rw(false, dst.as_mut_ptr(), src, dst.len()) {
        return r.map(|()| unchecked);
    }
    if src == 0 {
        return Err(Fault);
    }
    // SAFETY: the last resort when the system refuses both checks: the caller promised a
    // readable struct (a bad pointer faults, as in any libc function; see the module doc).
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
    Ok(unchecked)
}

/// Copies `src` to the caller's address `dst`. `checked` is what reading a range covering
/// `dst` found: if it proved the pages writable, they are not probed again.
pub(crate) fn write(dst: usize, src: &[u8], checked: Checked) -> Result<(), Fault> {
    if src.is_empty() {
        return Ok(());
    }
    let direct = checked.writable
        || match check_range(dst, src.len(), true) {
            Some(Ok(_)) => true,
            Some(Err(f)) => return Err(f),
            None => false,
        };
    if direct {
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: every page of the range was written by the kernel on our behalf
            // (check_range, now or when the struct was read), so it is mapped and writable.
            unsafe { core::ptr::write_volatile((dst as *mut u8).wrapping_add(i), b) };
        }
        return Ok(());
    }
    // process_vm_writev only reads `local`; the cast to *mut is for the iovec type.
    if let Some(r) = vm_rw(true, src.as_ptr().cast_mut(), dst, src.len()) {
        return r;
    }
    if dst == 0 {
        return Err(Fault);
    }
    // SAFETY: the last resort (see `read`): the caller promised a writable struct.
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
