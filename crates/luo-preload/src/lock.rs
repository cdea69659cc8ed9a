//! One request in flight per process.
//!
//! A luod connection answers requests in order, and whoever reads the socket next gets the
//! next reply. Two threads of one process with requests in flight on the same descriptor could
//! each read the other's reply, so a request and its reply are made under one process-wide
//! lock (requests are short: luod never holds a reply back waiting for another client).
//!
//! The lock word holds the owner's thread id. That makes it robust to what a C program may do
//! around it without telling this library:
//!
//! - `fork` or `clone` while another thread holds it: the child's copy names a thread that is
//!   not in the child's process; the child sees that (`tgkill(pid, tid, 0)` fails with `ESRCH`)
//!   and takes the lock over. No `pthread_atfork` handler is needed.
//! - a signal handler that issues a request while its thread holds the lock: the handler gets
//!   `EDEADLK` instead of waiting forever for itself.

use core::sync::atomic::{AtomicU32, Ordering};

use rustix::thread::futex;

/// The owner's thread id, 0 when free.
static OWNER: AtomicU32 = AtomicU32::new(0);
/// Threads sleeping on `OWNER`.
static WAITERS: AtomicU32 = AtomicU32::new(0);

/// Held while a request is in flight; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Guard(());

/// True if thread `tid` belongs to this process.
fn in_this_process(tid: u32) -> bool {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: tgkill with signal 0 only checks that the thread exists in the thread group.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid as libc::c_int, 0) };
    r == 0 || crate::user::errno() != libc::ESRCH
}

/// Takes the lock; `EDEADLK` if this thread already holds it (a signal handler interrupted
/// one of its requests).
pub(crate) fn lock() -> Result<Guard, i32> {
    let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    loop {
        match OWNER.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Ok(Guard(())),
            Err(owner) if owner == me => return Err(libc::EDEADLK),
            Err(owner) => {
                if !in_this_process(owner) {
                    // A copy made by fork/clone in the middle of another thread's request.
                    if OWNER
                        .compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Ok(Guard(()));
                    }
                    continue;
                }
                WAITERS.fetch_add(1, Ordering::SeqCst);
                // A bounded sleep: a wake-up lost to a fork or a dead owner costs 50 ms at
                // most, never a hang.
                let timeout = rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                let _ = futex::wait(&OWNER, futex::Flags::PRIVATE, owner, Some(&timeout));
                WAITERS.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        OWNER.store(0, Ordering::SeqCst);
        if WAITERS.load(Ordering::SeqCst) > 0 {
            let _ = futex::wake(&OWNER, futex::Flags::PRIVATE, 1);
        }
    }
}
