//! One request in flight per process.
//!
//! A luod connection answers requests in order, and whoever reads the socket next gets the
//! next reply. Two threads of one process with requests in flight on the same descriptor could
//! each read the other's reply, so a request and its reply are made under one process-wide
//! lock (requests are short: luod never holds a reply back waiting for another client).
//!
//! - A `pthread_atfork` child handler, registered before the lock is first taken, frees the
//!   child's copy of the lock: a `fork` while another thread has a request in flight does not
//!   leave the child's first request waiting for a thread that does not exist there.
//! - A signal handler that issues a request while its own thread holds the lock gets
//!   `EDEADLK` instead of waiting forever for itself (a thread-local flag says so).
//! - A raw `clone` (which runs no fork handlers) while another thread holds the lock leaves
//!   the child's copy held; the child's requests then fail with `EDEADLK` after 30 seconds
//!   rather than hang. `docs/compat.md` says so.
//!
//! The lock also hands out request ids: the process id in the high half (updated in fork
//! children), a counter in the low half, so that two processes sharing a connection never send
//! the same id.

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use rustix::thread::futex;

/// 0: free, 1: held, 2: held with sleepers.
static STATE: AtomicU32 = AtomicU32::new(0);
static AT_FORK: Once = Once::new();
/// This process's id, for request ids.
static PID: AtomicU32 = AtomicU32::new(0);
/// The low half of the next request id.
static NEXT: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// This thread holds the lock.
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// The fork handler run in the child: the thread that held the lock (if any) was not copied.
extern "C" fn child_after_fork() {
    STATE.store(0, Ordering::SeqCst);
    PID.store(
        rustix::process::getpid().as_raw_nonzero().get() as u32,
        Ordering::SeqCst,
    );
    // The forking thread cannot have been inside a request (fork is not called from a hook),
    // so its flag is already false.
}

/// Held while a request is in flight; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Guard(());

/// Takes the lock; `EDEADLK` if this thread already holds it (a signal handler interrupted
/// one of its requests) or if no one released it for 30 seconds (see the module doc).
pub(crate) fn lock() -> Result<Guard, i32> {
    AT_FORK.call_once(|| {
        PID.store(
            rustix::process::getpid().as_raw_nonzero().get() as u32,
            Ordering::SeqCst,
        );
        // SAFETY: registers a handler with no prepare or parent part; the child part only
        // stores to an atomic, which is async-signal-safe as a fork child handler must be.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(child_after_fork)) };
    });
    if HELD.with(Cell::get) {
        return Err(libc::EDEADLK);
    }
    if STATE
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        let timeout = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let mut waits = 0u32;
        // The classic three-state futex mutex: mark it contended, sleep while it is held.
        while STATE.swap(2, Ordering::Acquire) != 0 {
            if waits >= 300 {
                return Err(libc::EDEADLK);
            }
            waits = waits.saturating_add(1);
            let _ = futex::wait(&STATE, futex::Flags::PRIVATE, 2, Some(&timeout));
        }
    }
    HELD.with(|h| h.set(true));
    Ok(Guard(()))
}

impl Guard {
    /// A request id no other process sharing the connection uses.
    pub(crate) fn next_id(&self) -> u64 {
        let low = NEXT.fetch_add(1, Ordering::Relaxed);
        (u64::from(PID.load(Ordering::Relaxed)) << 32) | u64::from(low)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        HELD.with(|h| h.set(false));
        if STATE.swap(0, Ordering::Release) == 2 {
            let _ = futex::wake(&STATE, futex::Flags::PRIVATE, 1);
        }
    }
}
