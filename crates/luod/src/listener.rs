//! The listening socket: accepting connections, shedding those of a uid over its descriptor
//! budget, and backing off when `accept` fails, so that no flood of connections can make luod
//! spin, fill its log, or keep root out.
//!
//! - **Shedding.** A connection whose uid may not hold one more descriptor
//!   ([`crate::budget`]) is accepted, told why (one reply with request id 0, `EMFILE` and the
//!   [`Refusal`](crate::budget::Refusal)'s message, which a client that already sent its
//!   request reads as the answer) and closed at once. Connections of root and luod's own uid
//!   are never shed while the descriptor table has room.
//! - **Rate.** At most [`OTHERS_PER_WINDOW`] connections of users other than root and luod's
//!   own are accepted (served or shed) per [`WINDOW`]; past that the listener is switched off
//!   until the window ends, so a uid that reconnects in a loop costs luod a bounded share of a
//!   core (a refused connection costs luod 10 to 30 µs, nearly all of it in the kernel). The
//!   kernel keeps the connections in the backlog meanwhile, root's among them; the backlog is
//!   [`BACKLOG`] deep, so root's connection is reached about `BACKLOG / OTHERS_PER_WINDOW`
//!   windows after it got into the backlog.
//!   One turn of the loop accepts at most [`ACCEPT_BURST`] connections, so the connections
//!   luod already has are served between bursts.
//! - **The spare.** luod keeps `/dev/null` open. When `accept` fails with `EMFILE`, it closes
//!   that descriptor, accepts one connection in its place — served if it is an administrator's,
//!   shed otherwise — and reopens it; this repeats while it works, so the backlog is drained
//!   rather than left to grow.
//! - **Back-off.** When `accept` fails and the spare does not help (`ENFILE`, the table full
//!   to the last descriptor, any other error), the listener is switched off for
//!   [`BACKOFF_MIN`], doubling on each failure in a row up to [`BACKOFF_MAX`], and back to the
//!   minimum once a round of accepting drains the backlog. The loop's epoll timeout wakes it to
//!   switch the listener back on, so a level-triggered listener can never spin.
//! - **Logging.** Failures and sheds are warned about at most once per [`LOG_INTERVAL`] each,
//!   with the number of events that were not logged since.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use luo_abi::Errno;
use luo_abi::wire;
use luo_client::transport;
use rustix::event::epoll;
use rustix::fs::{Mode, OFlags};
use rustix::net::SocketFlags;
use tracing::{debug, warn};

use crate::budget::Scope;
use crate::conn::{Cred, Kind};
use crate::server::Server;

/// The first pause after `accept` fails.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause after `accept` fails.
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// The window over which connections of users other than root are counted.
pub const WINDOW: Duration = Duration::from_millis(10);
/// Connections of users other than root and luod's own accepted per window before the
/// listener is switched off for the rest of it: 3,200 a second, about 9% of a core when every
/// one is refused (measured by `tests/hostile_flood.rs`, debug build).
pub const OTHERS_PER_WINDOW: u32 = 32;
/// Connections accepted per turn of the loop.
pub const ACCEPT_BURST: usize = 64;
/// The listen backlog: connections the kernel queues until luod accepts them. Short, so that
/// root's connection queued behind a flood is reached within a few windows.
pub const BACKLOG: i32 = 64;
/// At most one warning of each kind per interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// epoll key of the listening socket.
pub const KEY_LISTENER: u64 = 0;

/// A warning that is logged at most once per [`LOG_INTERVAL`].
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(events not logged since the last time)` if this event may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The listener's state beside its descriptor.
#[derive(Debug)]
pub struct Admission {
    /// `/dev/null`, closed to make room for one `accept` when the table is full.
    spare: Option<OwnedFd>,
    /// The listener is off epoll until then.
    paused_until: Option<Instant>,
    /// The next pause after a failed `accept`.
    backoff: Duration,
    /// Start of the current window, and connections of other users accepted in it.
    window: (Instant, u32),
    failed: Throttle,
    shed: Throttle,
}

fn open_spare() -> Option<OwnedFd> {
    rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
}

impl Admission {
    /// A fresh state, with its spare descriptor.
    pub fn new() -> Admission {
        Admission {
            spare: open_spare(),
            paused_until: None,
            backoff: BACKOFF_MIN,
            window: (Instant::now(), 0),
            failed: Throttle::default(),
            shed: Throttle::default(),
        }
    }

    /// Descriptors it holds (0 or 1), for the status.
    pub fn fds(&self) -> u64 {
        u64::from(self.spare.is_some())
    }

    /// How long the loop may wait before [`resume`] must run, if the listener is off.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new()
    }
}

/// Switches the listener off for `pause`.
fn pause(server: &mut Server, pause: Duration) {
    if server.admission.paused_until.is_none() {
        let _ = epoll::delete(&server.epoll, &server.listener);
    }
    server.admission.paused_until = Some(Instant::now() + pause);
}

/// Switches the listener back on once its pause is over. Called on every turn of the loop.
pub fn resume(server: &mut Server) {
    let Some(until) = server.admission.paused_until else {
        return;
    };
    if Instant::now() < until {
        return;
    }
    server.admission.paused_until = None;
    if let Err(e) = epoll::add(
        &server.epoll,
        &server.listener,
        epoll::EventData::new_u64(KEY_LISTENER),
        epoll::EventFlags::IN,
    ) {
        warn!(error = %e, "cannot watch the listener again; retrying");
        server.admission.paused_until = Some(Instant::now() + BACKOFF_MAX);
    }
}

/// Sets the listen backlog to [`BACKLOG`] (`listen` again on a listening socket only changes
/// it), whatever the listener was bound with.
pub fn set_backlog(listener: &OwnedFd) -> rustix::io::Result<()> {
    rustix::net::listen(listener, BACKLOG)
}

/// Accepts pending connections, up to [`ACCEPT_BURST`]: admits, sheds, or backs off (see the
/// module doc).
pub fn accept_all(server: &mut Server) {
    if server.admission.spare.is_none() {
        server.admission.spare = open_spare();
    }
    // Set while the spare was closed to make room and the next accept has not used it yet.
    let mut spare_freed = false;
    for _ in 0..ACCEPT_BURST {
        let now = Instant::now();
        let window = &mut server.admission.window;
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        } else if window.1 >= OTHERS_PER_WINDOW {
            let rest = WINDOW - now.duration_since(window.0);
            pause(server, rest);
            return;
        }
        let fd = match rustix::net::accept_with(
            &server.listener,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::AGAIN) => {
                server.admission.backoff = BACKOFF_MIN;
                return;
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(rustix::io::Errno::MFILE) if !spare_freed && server.admission.spare.is_some() => {
                server.admission.spare = None;
                spare_freed = true;
                continue;
            }
            Err(e) => {
                back_off(server, e, now);
                return;
            }
        };
        let table_full = std::mem::take(&mut spare_freed);
        admit(server, fd, table_full, now);
        if table_full {
            // Fails while an administrator's connection holds the spare's slot: the next
            // EMFILE then backs off, and the next round opens it again.
            server.admission.spare = open_spare();
        }
    }
}

/// `accept` failed with `e`: switch the listener off for the current back-off and double it.
fn back_off(server: &mut Server, e: rustix::io::Errno, now: Instant) {
    let pause_for = server.admission.backoff;
    server.admission.backoff = (pause_for * 2).min(BACKOFF_MAX);
    if let Some(suppressed) = server.admission.failed.allow(now) {
        warn!(
            error = %e,
            pause_ms = pause_for.as_millis() as u64,
            suppressed,
            fds_used = server.fds_used(),
            fd_limit = server.fd_limit,
            "accept failed; not accepting connections for a while"
        );
    }
    pause(server, pause_for);
}

/// Serves connection `fd` or sheds it, and counts it in the window unless it is an
/// administrator's. `table_full`: it took the spare's slot, and only an administrator's
/// connection may keep it.
fn admit(server: &mut Server, fd: OwnedFd, table_full: bool, now: Instant) {
    let cred = match rustix::net::sockopt::socket_peercred(&fd) {
        Ok(c) => Cred {
            pid: c.pid.as_raw_nonzero().get(),
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
        },
        Err(e) => {
            debug!(error = %e, "SO_PEERCRED failed; dropping connection");
            return;
        }
    };
    let admin = server.budget.is_admin(cred.uid);
    if !admin {
        server.admission.window.1 += 1;
    }
    let refusal = if admin {
        None
    } else if table_full {
        Some(crate::budget::Refusal::Table)
    } else {
        server.may_hold(cred.uid, 1, Scope::Share).err()
    };
    let Some(refusal) = refusal else {
        match server.add_conn(fd, Kind::Control, cred) {
            Ok(key) => debug!(key, uid = cred.uid, pid = cred.pid, "client connected"),
            Err(e) => warn!(error = %e, "cannot watch a new connection"),
        }
        return;
    };
    let message = refusal.to_string();
    let mut reply = Vec::new();
    wire::write_reply(&mut reply, Errno::EMFILE.raw(), 0, message.as_bytes());
    let _ = transport::send(fd.as_fd(), &reply, &[]);
    drop(fd);
    if let Some(suppressed) = server.admission.shed.allow(now) {
        warn!(
            uid = cred.uid,
            pid = cred.pid,
            suppressed,
            reason = %message,
            "connection refused"
        );
    }
}
