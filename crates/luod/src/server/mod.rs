//! The server: the daemon's state and the loop that serves it, one concept per module.
//!
//! - [`event_loop`]: the epoll loop, signals, timeouts; what ends it ([`Ended`]).
//! - [`request`]: one request, from its framing to what the loop does after it.
//! - [`kernel`]: the kernel's uAPI on a device or session connection.
//! - [`native`]: luod's own operations.
//! - [`kexec`]: the host kernel's live update (KEXEC), through [`crate::liveupdate`].
//! - [`close`]: the kernel's synchronous close, emulated.
//! - [`reply`]: replies, outboxes and back-pressure.
//!
//! Handing the daemon to a successor (upgrade, reboot) is [`crate::handover`].

mod close;
mod durable;
mod event_loop;
mod kernel;
mod kexec;
mod native;
mod reply;
mod request;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use luo_abi::image::{S_IFMT, S_IFSOCK};
use luo_abi::wire;
use luo_core::{Engine, Limits, SessionId};
use rustix::event::epoll;

use crate::budget::{Budget, FdSettings, Tally};
use crate::conn::{Conn, Cred, Kind};
use crate::listener::{Admission, KEY_LISTENER};

#[cfg(test)]
pub(crate) use durable::deltas_of;
pub use durable::state_memfd;
pub use event_loop::Ended;
pub use reply::Reply;

/// Descriptors luod holds besides connections and preserved files: stdin, stdout, stderr,
/// epoll, listener, lock, and the signal pipe's three ends (and the listener's spare, counted
/// apart).
const FD_FIXED: u64 = 9;
/// Messages read from one connection before the loop looks at the others.
const BURST: usize = 32;
/// How long replies still waiting for room get, in all, before luod hands itself over (an
/// upgrade or a reboot) or exits after one: a connection that cannot take them by then is
/// closed, as its replies could not travel with it.
const HANDOVER_FLUSH_MS: u64 = 1000;
/// epoll key of the signal pipe.
const KEY_SIGNAL: u64 = 1;
/// epoll key of the handover channel of a staged upgrade.
const KEY_SUCCESSOR: u64 = u64::MAX;
/// The epoll key of the migration in progress (its worker's eventfd).
const KEY_MIGRATION: u64 = u64::MAX - 1;
/// The epoll key of the keeper's channel.
const KEY_KEEPER: u64 = u64::MAX - 2;

/// What luod was started with, carried across upgrades.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The socket path.
    pub socket: PathBuf,
    /// Per-uid quotas.
    pub limits: Limits,
    /// Per-uid descriptor budget (see [`crate::budget`]).
    pub fds: FdSettings,
    /// The binary an upgrade runs when none is named.
    pub binary: PathBuf,
    /// Every luod process that served this socket since it was bound (this one included): the
    /// peers of luod's own connections, which PRESERVE_FD refuses.
    pub pids: Vec<i32>,
}

/// What the loop must do after a request.
#[derive(Debug)]
pub enum After {
    Nothing,
    Upgrade(PathBuf),
    Reboot,
    /// KEXEC with these flags (answered once it ran).
    Kexec(u32),
    /// A migration started; its reply goes out when its copy is done.
    Migrate(Box<crate::migrate::Migration>),
}

/// What the keeper told this server about itself, for STATUS.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeeperInfo {
    /// The keeper's pid.
    pub pid: u32,
    /// Servers it started after a crash.
    pub restarts: u32,
    /// The last recovery's length, in microseconds.
    pub last_recovery_us: u64,
}

/// The daemon's state.
#[derive(Debug)]
pub struct Server {
    pub engine: Engine,
    pub settings: Settings,
    pub listener: OwnedFd,
    pub lock: OwnedFd,
    pub epoll: OwnedFd,
    pub signals: OwnedFd,
    pub conns: HashMap<u64, Conn>,
    pub next_key: u64,
    pub devices: HashMap<u32, u64>,
    pub sessions: HashMap<SessionId, u64>,
    pub started: Instant,
    pub upgrades: u64,
    /// Rounds and flags of the upgrade that started this process (see `StatusReply`).
    pub last_upgrade: (u32, u32),
    pub fd_limit: u64,
    /// The descriptor budget in force, and what each uid holds besides its files.
    pub budget: Budget,
    pub tally: Tally,
    /// Accepting, shedding and backing off (see [`crate::listener`]).
    pub admission: Admission,
    /// Set when the loop must end, and why.
    pub ended: Option<Ended>,
    /// The channel of the successor that takes over once this server has ended: told "GO" by
    /// [`crate::handover::release_successor`] after the last reply.
    pub successor: Option<OwnedFd>,
    /// Moves whenever something an upgrade image records may have changed (a request that is
    /// not read-only, a connection opened or closed): a staged successor is used only if its
    /// image was written at the current epoch.
    pub epoch: u64,
    /// The upgrade in progress, if any.
    pub staging: Option<crate::handover::Staging>,
    /// The migration in progress, if any.
    pub migration: Option<crate::migrate::Migration>,
    /// The checkpoint and journal this server's state survives it in, once it has them.
    pub durable: Option<durable::Durable>,
    /// This server's end of the keeper's channel, if a keeper started it.
    pub keeper_channel: Option<OwnedFd>,
    /// Descriptors that left the state, closed once the journal says so (see
    /// [`Server::bury`]); `bury_later` ones are closed on a thread of their own.
    pub(crate) graveyard: Vec<OwnedFd>,
    pub(crate) graveyard_later: Vec<OwnedFd>,
    /// The reply being sent answers a changing request (where the `after-reply` failpoint is).
    pub(crate) replying_to_change: bool,
    /// Test-only failpoints (see [`crate::failpoint`]).
    pub failpoints: crate::failpoint::Failpoints,
    /// The keeper this server answers to, as STATUS reports it.
    pub keeper: KeeperInfo,
    /// The batch copy engine migrations copy with (its driver: copy channels on threads),
    /// started by the first copy ([`Server::copier`]): a server that never copies starts no
    /// thread, and one that starts serves sooner.
    copier: Option<std::sync::Arc<luo_copy::Engine>>,
    /// Discarded successors not yet reaped.
    pub(crate) zombies: Vec<crate::handover::Successor>,
    pub(crate) reaping: bool,
    /// systemd: notifications and the file descriptor store (see [`crate::systemd`]).
    pub systemd: crate::systemd::Link,
    /// The receive buffer of `on_conn`, reused for every message.
    pub(crate) rx: Vec<u8>,
    /// The buffer replies are framed in, reused unless a reply has to wait in an outbox.
    pub(crate) tx: Vec<u8>,
    /// The metrics endpoint and counters (`--metrics`), if any (see [`crate::metrics`]).
    pub metrics: Option<crate::metrics::Metrics>,
    /// The kernel backend (`/dev/liveupdate`), if this kernel has one (see
    /// [`crate::liveupdate`]).
    pub liveupdate: Option<crate::liveupdate::Backend>,
}

impl Server {
    /// A server over an engine and the fixed descriptors; connections are added after.
    pub fn new(
        engine: Engine,
        settings: Settings,
        listener: OwnedFd,
        lock: OwnedFd,
        signals: OwnedFd,
        fd_limit: u64,
    ) -> anyhow::Result<Server> {
        let mut engine = engine;
        let mut settings = settings;
        let me = std::process::id() as i32;
        if !settings.pids.contains(&me) {
            settings.pids.push(me);
        }
        let pids: std::collections::HashSet<i32> = settings.pids.iter().copied().collect();
        engine.set_excluded(move |fd, st| is_luod_connection(fd, st, &pids));
        crate::listener::set_backlog(&listener)?;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &ep,
            &listener,
            epoll::EventData::new_u64(KEY_LISTENER),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &ep,
            &signals,
            epoll::EventData::new_u64(KEY_SIGNAL),
            epoll::EventFlags::IN,
        )?;
        let budget = Budget::new(fd_limit, settings.fds, rustix::process::geteuid().as_raw());
        Ok(Server {
            engine,
            settings,
            listener,
            lock,
            epoll: ep,
            signals,
            conns: HashMap::new(),
            next_key: 2,
            devices: HashMap::new(),
            sessions: HashMap::new(),
            started: Instant::now(),
            upgrades: 0,
            last_upgrade: (0, 0),
            fd_limit,
            budget,
            tally: Tally::default(),
            admission: Admission::new(),
            ended: None,
            successor: None,
            epoch: 0,
            staging: None,
            migration: None,
            copier: None,
            failpoints: crate::failpoint::Failpoints::from_env(),
            durable: None,
            replying_to_change: false,
            graveyard: Vec::new(),
            graveyard_later: Vec::new(),
            keeper_channel: None,
            keeper: KeeperInfo {
                pid: std::process::id(),
                restarts: 0,
                last_recovery_us: 0,
            },
            zombies: Vec::new(),
            reaping: false,
            systemd: crate::systemd::Link::from_env(),
            rx: vec![0; wire::MAX_MESSAGE],
            tx: Vec::with_capacity(wire::MAX_MESSAGE),
            metrics: None,
            liveupdate: None,
        })
    }

    /// The copy engine, started now if no copy ran yet.
    pub(crate) fn copier(&mut self) -> std::sync::Arc<luo_copy::Engine> {
        std::sync::Arc::clone(self.copier.get_or_insert_with(crate::migrate::copier))
    }

    /// The copy engine's counters (all zero before its first copy).
    pub(crate) fn copy_stats(&self) -> luo_copy::Stats {
        self.copier
            .as_ref()
            .map_or_else(luo_copy::Stats::default, |c| c.stats())
    }

    /// Adds a connection to the loop and returns its key.
    pub fn add_conn(&mut self, fd: OwnedFd, kind: Kind, cred: Cred) -> anyhow::Result<u64> {
        self.epoch += 1;
        let key = self.next_key;
        self.next_key += 1;
        epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )?;
        self.tally.add(cred.uid, 1);
        match kind {
            Kind::Device => {
                self.devices.insert(cred.uid, key);
            }
            Kind::Session(id) => {
                self.sessions.insert(id, key);
            }
            Kind::Control | Kind::Detached => {}
        }
        self.conns.insert(
            key,
            Conn {
                fd,
                kind,
                cred,
                outbox: VecDeque::new(),
                busy: false,
            },
        );
        self.note_conn(key);
        Ok(key)
    }

    /// Descriptors the process holds (for status): its fixed ones (stdio, epoll, listener,
    /// lock, signal pipe, the listener's spare), one per connection and per descriptor of a
    /// waiting reply, and the engine's.
    pub fn fds_used(&self) -> u64 {
        FD_FIXED
            + self.admission.fds()
            + self.tally.total()
            + self.engine.fds_held()
            + self
                .metrics
                .as_ref()
                .map_or(0, crate::metrics::Metrics::fds)
    }
}

/// True if `fd` is a client's end of one of luod's own connections (a device, control or
/// session descriptor): a socket whose peer is a luod process of this socket's lineage. As the
/// kernel refuses to preserve session descriptors, PRESERVE_FD refuses these with `ENOENT`.
fn is_luod_connection(
    fd: BorrowedFd<'_>,
    st: &rustix::fs::Stat,
    pids: &std::collections::HashSet<i32>,
) -> bool {
    st.st_mode & S_IFMT == S_IFSOCK
        && rustix::net::sockopt::socket_peercred(fd)
            .is_ok_and(|c| pids.contains(&c.pid.as_raw_nonzero().get()))
}
