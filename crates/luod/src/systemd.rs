//! luod under systemd: the notify protocol, socket activation and the file descriptor store.
//!
//! **Who says what.** The keeper is the service's main process (its pid never changes, so
//! `MAINPID` is always the keeper's), but the *server* knows when the socket is served, what
//! is held, and which descriptors the state names, so the server sends every notification
//! itself and the unit says `NotifyAccess=all`. Only luod's own processes live in the unit's
//! cgroup (keeper, server, holder, an upgrade's successor): workloads are clients in units of
//! their own, never children of luod, so no other process can speak for the service. Relaying
//! through the keeper would give the keeper a copy of every preserved descriptor for a moment
//! and put client-driven traffic on the channel it must keep free for crash recovery.
//!
//! | message | sent by | when |
//! |---|---|---|
//! | `READY=1`, `MAINPID=<keeper>`, `STATUS=` | the server | it serves: the socket is bound (or adopted) and listening, the state is durable, the keeper knows it |
//! | `STATUS=sessions … files … bytes …` | the server | the counts changed; at most once a second |
//! | `RELOADING=1`, `MONOTONIC_USEC=` | the server | an upgrade begins (`ExecReload=luoctl upgrade`) |
//! | `READY=1` | the successor, or the old server | the successor serves, or the upgrade failed and the old server goes on |
//! | `WATCHDOG=1` | the server | every half `WATCHDOG_USEC`, from its event loop: only a server that runs its loop pings, and the keeper never does |
//! | `STOPPING=1` | the server | SIGTERM (the keeper passes it on) |
//! | `FDSTORE=1`, `FDNAME=`, `FDPOLL=0` | the server | with `--fdstore`: a descriptor enters the state, a checkpoint is written |
//! | `FDSTOREREMOVE=1`, `FDNAME=` | the server | a descriptor left the state and is closed; an old checkpoint is replaced |
//!
//! `NOTIFY_SOCKET` stays in the environment of luod's own processes (each server of the
//! lineage needs it); `WATCHDOG_PID` names the keeper, so a server pings only if it is the
//! keeper's server. `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are the keeper's: it takes
//! them at start, removes them from its environment and hands the descriptors to its first
//! server under `LUOD_LISTEN_FDS` and `LUOD_LISTEN_FDNAMES`, which that server removes in turn.
//!
//! **The file descriptor store** (`--fdstore`, or when systemd says `FDSTORE=` in the
//! environment) holds, at every moment, a superset of what a server needs to rebuild its
//! state after the whole service is gone (keeper included): every descriptor the state names
//! (preserved files, retrieved open files, connections, the listener and the lock), the last
//! checkpoint and the journal. A descriptor is stored before the journal record that names it
//! is written, and removed from the store only once the journal says it is gone and it is
//! closed, so the store never lacks what the last journal record needs. Names:
//!
//! | name | what |
//! |---|---|
//! | `f<N>` | the descriptor the state names at number `N` (hexadecimal) |
//! | `s<P>.a`, `s<P>.b`, `s<P>.c` | a checkpoint of the server of pid `P` (hexadecimal); each new one takes the next slot and the previous one is removed after it, so when two are found the newer is the one after the other in `a → b → c → a` |
//! | `j<P>` | the journal of the server of pid `P` |
//!
//! On start, a server handed such descriptors puts each `f<N>` back at number `N`, picks the
//! newest server's checkpoint and journal (the longest lineage of pids), and recovers from them
//! exactly as after a crash of its server ([`crate::recover`]). Anything wrong (a name used
//! twice, a descriptor of the wrong type, one the state needs and the store lacks) stops luod
//! with a message before anything is removed from the store.

#![allow(unsafe_code)] // The environment before any thread exists; descriptors by number.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::image::{Image, MAX_IMAGE_LEN, S_IFMT, S_IFSOCK};
use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::server::Server;

/// Set by the keeper for its first server: how many descriptors it hands over, from 3 on.
const HANDED_FDS: &str = "LUOD_LISTEN_FDS";
/// Their names, `:`-separated, as in `LISTEN_FDNAMES`.
const HANDED_NAMES: &str = "LUOD_LISTEN_FDNAMES";
/// Set (to the store's capacity) in every luod process when the file descriptor store is on.
const FDSTORE_ENV: &str = "LUOD_FDSTORE";
/// Set in every luod process when the listening socket came from socket activation: no
/// server removes its path then (systemd owns it).
const ACTIVATED_ENV: &str = "LUOD_SOCKET_ACTIVATED";
/// The store's capacity when systemd does not say (`FileDescriptorStoreMax=` in luod.service).
pub const DEFAULT_STORE_MAX: usize = 16384;
/// systemd's own bound on one unit's store.
const STORE_HARD_MAX: usize = 20_000;
/// Descriptors of the store kept for the state: a checkpoint, the next one, the journal.
const STATE_ENTRIES: usize = 3;
/// At most one `STATUS=` per this long.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Largest journal a restart reads.
const MAX_JOURNAL: u64 = 1 << 30;

/// Descriptors this process was handed at start, from 3 on, with their names.
pub type Handed = Vec<(OwnedFd, String)>;

/// Which luod process this is, for [`take_environment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The process systemd (or an operator) started.
    Keeper,
    /// The keeper's first server (`--serve`).
    FirstServer,
    /// A successor, a recovered server, a keeper that re-executed itself.
    Other,
}

/// Reads and clears what systemd (or the keeper) put in the environment, and adopts the
/// descriptors handed over. Called first thing in `main`, while the process has one thread.
pub fn take_environment(role: Role, fdstore: bool) -> anyhow::Result<Handed> {
    let listed: Vec<(RawFd, String)> = match role {
        Role::Keeper => {
            // SAFETY: main calls this before it starts any thread (no logger, no runtime, no
            // engine yet), so nothing reads the environment while it changes.
            let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
                .map_err(|e| anyhow!("Invalid LISTEN_FDS or LISTEN_FDNAMES from systemd: {e}"))?;
            let fds: Vec<(RawFd, String)> = fds.collect();
            let max = store_capacity(fdstore)?;
            if let Some(max) = max {
                // SAFETY: as above, one thread.
                unsafe { std::env::set_var(FDSTORE_ENV, max.to_string()) };
            }
            fds
        }
        Role::FirstServer => {
            let count = std::env::var(HANDED_FDS).ok();
            let names = std::env::var(HANDED_NAMES).unwrap_or_default();
            // SAFETY: as above, one thread.
            unsafe {
                std::env::remove_var(HANDED_FDS);
                std::env::remove_var(HANDED_NAMES);
            }
            let Some(count) = count else {
                return Ok(Vec::new());
            };
            let count: i32 = count
                .parse()
                .with_context(|| format!("{HANDED_FDS} is not a number: {count:?}"))?;
            let names: Vec<String> = if count == 0 {
                Vec::new()
            } else {
                names.split(':').map(str::to_owned).collect()
            };
            ensure!(
                names.len() == count as usize,
                "{HANDED_FDS}={count} but {} names",
                names.len()
            );
            (3..3 + count).zip(names).collect()
        }
        Role::Other => return Ok(Vec::new()),
    };
    let mut handed = Vec::with_capacity(listed.len());
    for (raw, name) in listed {
        let fd = crate::handover::adopt_inherited(raw)
            .with_context(|| format!("Descriptor {raw} ({name:?}) handed by LISTEN_FDS"))?;
        handed.push((fd, name));
    }
    if role == Role::FirstServer
        && handed
            .iter()
            .any(|(_, n)| matches!(parse_name(n), Name::Other))
    {
        // SAFETY: as above, one thread.
        unsafe { std::env::set_var(ACTIVATED_ENV, "1") };
    }
    Ok(handed)
}

/// The store's capacity if it is to be used: `--fdstore`, or `FDSTORE=<n>` from systemd
/// (254 and later say so when `FileDescriptorStoreMax=` is set).
fn store_capacity(flag: bool) -> anyhow::Result<Option<usize>> {
    let from_systemd = match std::env::var("FDSTORE") {
        Ok(v) => Some(
            v.parse::<usize>()
                .with_context(|| format!("FDSTORE={v:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    Ok(match (flag, from_systemd) {
        (_, Some(0)) if flag => bail!(
            "--fdstore, but systemd says the store holds nothing (FDSTORE=0): set FileDescriptorStoreMax= in luod.service"
        ),
        (_, Some(n)) if n > 0 => Some(n.min(STORE_HARD_MAX)),
        (true, _) => Some(DEFAULT_STORE_MAX),
        _ => None,
    })
}

/// The keeper's side: lets the first server inherit the handed descriptors, under
/// [`HANDED_FDS`] and [`HANDED_NAMES`]. They are at 3, 4, ... in this process, as systemd
/// passed them, and stay so in the child.
pub fn hand_to_server(handed: &Handed, cmd: &mut std::process::Command) -> anyhow::Result<()> {
    if handed.is_empty() {
        return Ok(());
    }
    for (i, (fd, _)) in handed.iter().enumerate() {
        ensure!(
            fd.as_raw_fd() == 3 + i as i32,
            "handed descriptors are not at 3, 4, ..."
        );
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    let names: Vec<&str> = handed.iter().map(|(_, n)| n.as_str()).collect();
    cmd.env(HANDED_FDS, handed.len().to_string())
        .env(HANDED_NAMES, names.join(":"));
    Ok(())
}

/// True if `name` is a valid `FDNAME=`: 1 to 255 characters, no `:`, no control character.
pub fn valid_fdname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c != ':' && !c.is_control() && c.is_ascii())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    /// `f<N>`: the state's descriptor at number N.
    Fd(i32),
    /// `s<P>.<slot>`: a checkpoint.
    State(u32, u8),
    /// `j<P>`: a journal.
    Journal(u32),
    /// Anything else: a socket of the socket unit.
    Other,
}

fn hex<T: TryFrom<u64>>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16)
        .ok()
        .and_then(|v| T::try_from(v).ok())
}

fn parse_name(name: &str) -> Name {
    let (Some(first), rest) = (name.chars().next(), name.get(1..).unwrap_or("")) else {
        return Name::Other;
    };
    match first {
        'f' => hex::<i32>(rest)
            .filter(|&n| n > 2)
            .map_or(Name::Other, Name::Fd),
        'j' => hex::<u32>(rest).map_or(Name::Other, Name::Journal),
        's' => match rest.split_once('.') {
            Some((pid, slot)) => match (hex::<u32>(pid), slot) {
                (Some(p), "a") => Name::State(p, 0),
                (Some(p), "b") => Name::State(p, 1),
                (Some(p), "c") => Name::State(p, 2),
                _ => Name::Other,
            },
            None => Name::Other,
        },
        _ => Name::Other,
    }
}

fn fd_name(n: RawFd) -> String {
    format!("f{n:x}")
}

fn state_name(pid: u32, slot: u8) -> String {
    format!("s{pid:x}.{}", ["a", "b", "c"][usize::from(slot % 3)])
}

fn journal_name(pid: u32) -> String {
    format!("j{pid:x}")
}

/// True if descriptors handed over include a stored state: this start is a restore.
pub fn holds_state(handed: &Handed) -> bool {
    handed
        .iter()
        .any(|(_, n)| matches!(parse_name(n), Name::State(..) | Name::Journal(_)))
}

/// What `fd` is, for messages.
fn describe(fd: BorrowedFd<'_>) -> String {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let Ok(st) = rustix::fs::fstat(fd) else {
        return "not open".into();
    };
    let kind = match st.st_mode & S_IFMT {
        0o140000 => "a socket",
        0o010000 => "a pipe",
        0o100000 => "a regular file or memfd",
        0o020000 => "a character device",
        0o040000 => "a directory",
        _ => "some other file",
    };
    if st.st_mode & S_IFMT != S_IFSOCK {
        return kind.into();
    }
    let family = match sockopt::socket_domain(fd) {
        Ok(AddressFamily::UNIX) => "AF_UNIX",
        Ok(AddressFamily::INET) => "AF_INET",
        Ok(AddressFamily::INET6) => "AF_INET6",
        Ok(AddressFamily::NETLINK) => "AF_NETLINK",
        _ => "an unknown family",
    };
    let ty = match sockopt::socket_type(fd) {
        Ok(SocketType::STREAM) => "SOCK_STREAM",
        Ok(SocketType::DGRAM) => "SOCK_DGRAM",
        Ok(SocketType::SEQPACKET) => "SOCK_SEQPACKET",
        _ => "another type",
    };
    let listening = if sockopt::socket_acceptconn(fd).unwrap_or(false) {
        "listening"
    } else {
        "not listening"
    };
    format!("a {family} {ty} socket, {listening}")
}

/// Checks that `fd` is a listening `AF_UNIX` `SOCK_SEQPACKET` socket, the only kind luod
/// serves, and returns the path it is bound to.
fn check_listener(fd: BorrowedFd<'_>, name: &str) -> anyhow::Result<PathBuf> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let good = sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
        && sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::SEQPACKET)
        && sockopt::socket_acceptconn(fd).unwrap_or(false);
    ensure!(
        good,
        "The socket systemd handed over (descriptor {}, name {name:?}) is {}; luod serves only a \
         listening AF_UNIX SOCK_SEQPACKET socket (ListenSequentialPacket= in luod.socket)",
        fd.as_raw_fd(),
        describe(fd)
    );
    // systemd's sockets are blocking; luod's loop accepts until EAGAIN.
    rustix::io::ioctl_fionbio(fd, true)?;
    let addr = rustix::net::getsockname(fd)?;
    let path = rustix::net::SocketAddrUnix::try_from(addr)
        .ok()
        .and_then(|a| {
            a.path()
                .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
        })
        .with_context(|| {
            format!("The socket systemd handed over ({name:?}) has no path (an abstract socket?)")
        })?;
    Ok(path)
}

/// Socket activation without a stored state: the one socket of the socket unit, checked, and
/// its path. `None` when nothing was handed over.
pub fn activated_listener(handed: Handed) -> anyhow::Result<Option<(OwnedFd, PathBuf)>> {
    let mut found = None;
    for (fd, name) in handed {
        if let Name::Fd(n) = parse_name(&name) {
            bail!(
                "systemd handed over {name:?} (descriptor {}, a stored descriptor of luod's state \
                 at number {n}) but no checkpoint and journal: the store is incomplete; nothing \
                 was removed from it",
                fd.as_raw_fd()
            );
        }
        let path = check_listener(fd.as_fd(), &name)?;
        ensure!(
            found.is_none(),
            "systemd handed over more than one socket; luod serves one (ListenSequentialPacket=)"
        );
        found = Some((fd, path));
    }
    Ok(found)
}

/// True if the listening socket came from socket activation (in this process or an
/// ancestor of its lineage).
pub fn socket_activated() -> bool {
    std::env::var_os(ACTIVATED_ENV).is_some()
}

/// The server's link to systemd.
#[derive(Debug)]
pub struct Link {
    /// `NOTIFY_SOCKET` is set.
    notify: bool,
    watchdog: Option<Duration>,
    last_ping: Instant,
    /// Sessions, files, bytes as last said, and when.
    said: Option<((u64, u64, u64), Instant)>,
    reloading: bool,
    store: Option<Store>,
}

#[derive(Debug)]
struct Store {
    max: usize,
    /// False in an upgrade's successor until it serves: the store is its predecessor's.
    active: bool,
    /// Numbers stored under `f<N>` by this server.
    stored: HashSet<RawFd>,
    /// The slot of the checkpoint stored last, if any.
    slot: Option<u8>,
    /// This server's journal is in the store.
    journal_stored: bool,
    /// The predecessor's entries (and a restore's stale ones) were removed.
    cleaned: bool,
    /// The next checkpoint's descriptors are in the store already (this server inherited them
    /// from a predecessor that stored them): they are noted, not sent again.
    assume: bool,
    warned: bool,
    /// Names handed over at a restore that the restored state does not use: removed once this
    /// server's own state is stored.
    stale: Vec<String>,
}

impl Link {
    /// From this process's environment.
    pub fn from_env() -> Link {
        let store = std::env::var(FDSTORE_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&m| m > STATE_ENTRIES)
            .map(|max| Store {
                max,
                active: true,
                stored: HashSet::new(),
                slot: None,
                journal_stored: false,
                cleaned: false,
                assume: false,
                warned: false,
                stale: Vec::new(),
            });
        Link {
            notify: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: None,
            last_ping: Instant::now(),
            said: None,
            reloading: false,
            store: store.filter(|_| std::env::var_os("NOTIFY_SOCKET").is_some()),
        }
    }

    /// True if the file descriptor store is in use.
    pub fn storing(&self) -> bool {
        self.store.is_some()
    }

    /// An upgrade's successor: the store stays its predecessor's until it serves.
    pub fn defer(&mut self) {
        if let Some(s) = self.store.as_mut() {
            s.active = false;
        }
    }

    /// A server recovered from a predecessor's state: that predecessor stored every
    /// descriptor of it already.
    pub fn assume_stored(&mut self) {
        if let Some(s) = self.store.as_mut() {
            s.assume = true;
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.notify {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            warn!(error = %e, "cannot notify systemd");
        }
    }

    fn store_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> bool {
        let Some(s) = self.store.as_mut() else {
            return false;
        };
        debug_assert!(valid_fdname(name));
        let r = sd_notify::notify_with_fds(
            &[
                NotifyState::FdStore,
                NotifyState::FdName(name),
                NotifyState::Custom("FDPOLL=0"),
            ],
            &[fd],
        );
        if let Err(e) = r {
            if !s.warned {
                s.warned = true;
                warn!(error = %e, name, "cannot store a descriptor in systemd's store");
            }
            return false;
        }
        true
    }

    fn unstore(&self, name: &str) {
        if self.store.is_none() {
            return;
        }
        let r = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
        if let Err(e) = r {
            warn!(error = %e, name, "cannot remove a descriptor from systemd's store");
        }
    }

    /// Stores the state's descriptor at `n` under `f<N>` unless this server did already;
    /// called before the journal record that names it is written.
    fn keep(&mut self, n: RawFd) {
        let Some(s) = self.store.as_ref() else {
            return;
        };
        if !s.active || n < 0 || s.stored.contains(&n) {
            return;
        }
        if s.stored.len() + STATE_ENTRIES >= s.max {
            if let Some(s) = self.store.as_mut()
                && !s.warned
            {
                s.warned = true;
                warn!(
                    max = s.max,
                    "systemd's descriptor store is full: descriptors preserved from now on do \
                     not survive a restart of the whole service (FileDescriptorStoreMax=)"
                );
            }
            return;
        }
        // SAFETY: `n` is the number of a descriptor the live state names right now (a record
        // just computed from it); it is only borrowed for the send, during which nothing closes
        // it.
        let fd = unsafe { BorrowedFd::borrow_raw(n) };
        let name = fd_name(n);
        // Whatever an older entry of this name held (a number closed without passing through
        // the journal and reused) goes first: one entry per name.
        self.unstore(&name);
        if self.store_fd(&name, fd)
            && let Some(s) = self.store.as_mut()
        {
            s.stored.insert(n);
        }
    }
}

/// Before a journal batch: stores the descriptors its records name.
pub(crate) fn before_journal(link: &mut Link, deltas: &[crate::journal::Delta]) {
    use crate::journal::Delta;
    if !link.store.as_ref().is_some_and(|s| s.active) {
        return;
    }
    for d in deltas {
        match d {
            Delta::FilePut { file, .. } => {
                link.keep(file.fd);
                link.keep(file.open_fd);
            }
            Delta::ConnPut(c) => link.keep(c.fd),
            _ => {}
        }
    }
}

/// After the journal said the descriptors at `numbers` left the state, right before they are
/// closed: they leave the store.
pub(crate) fn closing(link: &mut Link, numbers: &[RawFd]) {
    let Some(s) = link.store.as_mut() else {
        return;
    };
    if !s.active {
        return;
    }
    for n in numbers {
        s.stored.remove(n);
    }
    for &n in numbers {
        link.unstore(&fd_name(n));
    }
}

/// A checkpoint was written to `fresh`, whose image names the descriptors `numbers`: they are
/// all stored (those not stored yet), then the journal if it is not yet, then the checkpoint
/// in the next slot. Returns the name of the previous slot, to remove once the new checkpoint
/// is installed and the journal starts afresh.
pub(crate) fn checkpoint_written(
    link: &mut Link,
    fresh: &OwnedFd,
    journal: &OwnedFd,
    numbers: &[RawFd],
    keeper: Option<RawFd>,
) -> Option<String> {
    let s = link.store.as_mut()?;
    if !s.active || s.assume {
        // The predecessor stored them (a successor's store is its predecessor's until GO).
        s.stored
            .extend(numbers.iter().copied().filter(|&n| Some(n) != keeper));
        s.assume = false;
        if !s.active {
            return None;
        }
    }
    for &n in numbers {
        if Some(n) != keeper {
            link.keep(n);
        }
    }
    let me = std::process::id();
    if !link.store.as_ref()?.journal_stored {
        let name = journal_name(me);
        link.unstore(&name);
        if link.store_fd(&name, journal.as_fd())
            && let Some(s) = link.store.as_mut()
        {
            s.journal_stored = true;
        }
    }
    let s = link.store.as_ref()?;
    let slot = s.slot.map_or(0, |x| (x + 1) % 3);
    let old = s.slot.map(|x| state_name(me, x));
    if link.store_fd(&state_name(me, slot), fresh.as_fd())
        && let Some(s) = link.store.as_mut()
    {
        s.slot = Some(slot);
        return old;
    }
    None
}

/// The previous checkpoint's entry goes, once the new one is in place.
pub(crate) fn checkpoint_installed(link: &Link, old: Option<String>) {
    if let Some(old) = old {
        link.unstore(&old);
    }
}

/// The server serves from now on: its state goes into the store (if it was deferred), the
/// entries of its predecessor go, and systemd hears `READY=1`.
pub fn serving(server: &mut Server) {
    activate(server);
    let keeper = server.keeper.pid;
    server.systemd.watchdog = sd_watchdog(keeper);
    server.systemd.last_ping = Instant::now();
    let status = status_line(server);
    let main_pid = format!("MAINPID={keeper}");
    server.systemd.send(&[
        NotifyState::Ready,
        NotifyState::Custom(&main_pid),
        NotifyState::Status(&status),
    ]);
    server.systemd.said = Some((counts(server), Instant::now()));
    server.systemd.reloading = false;
    if server.systemd.notify {
        info!(
            keeper,
            watchdog_ms = server.systemd.watchdog.map(|d| d.as_millis() as u64),
            fdstore = server.systemd.storing(),
            "told systemd: ready"
        );
    }
}

/// `WATCHDOG_USEC` if the watchdog is meant for the keeper (`WATCHDOG_PID`), which is the
/// service's main process.
fn sd_watchdog(keeper: u32) -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    if pid.is_some_and(|p| p.parse::<u32>().ok() != Some(keeper)) {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Puts this server's journal and checkpoint into the store if they were deferred, then
/// removes its predecessor's (and, after a restore, whatever the store held that the state does
/// not use).
fn activate(server: &mut Server) {
    let Some(s) = server.systemd.store.as_mut() else {
        return;
    };
    let me = std::process::id();
    if !s.active {
        s.active = true;
        let Some(d) = server.durable.as_ref() else {
            return;
        };
        let link = &mut server.systemd;
        let journal = journal_name(me);
        link.unstore(&journal);
        let ok = link.store_fd(&journal, d.journal.fd().as_fd())
            && link.store_fd(&state_name(me, 0), d.state.as_fd());
        if let Some(s) = link.store.as_mut() {
            s.journal_stored = ok;
            s.slot = ok.then_some(0);
        }
    }
    let link = &mut server.systemd;
    let Some(s) = link.store.as_mut() else {
        return;
    };
    if s.cleaned {
        return;
    }
    if !(s.journal_stored && s.slot.is_some()) {
        warn!(
            "luod's state is not in systemd's store: a restart of the whole service would lose it"
        );
        return;
    }
    s.cleaned = true;
    let stale = std::mem::take(&mut s.stale);
    // The predecessor's state: the pid before this one in the lineage.
    let pids = &server.settings.pids;
    if pids.len() >= 2 {
        let prev = pids[pids.len() - 2] as u32;
        if prev != me {
            for slot in 0..3 {
                link.unstore(&state_name(prev, slot));
            }
            link.unstore(&journal_name(prev));
        }
    }
    for name in stale {
        if name != journal_name(me) && !(0..3).any(|i| name == state_name(me, i)) {
            link.unstore(&name);
        }
    }
}

fn counts(server: &Server) -> (u64, u64, u64) {
    let u = server.engine.total_usage();
    (u.sessions, u.files, u.bytes)
}

fn status_line(server: &Server) -> String {
    let (sessions, files, bytes) = counts(server);
    format!(
        "serving {}: {sessions} sessions, {files} files, {bytes} bytes preserved",
        server.settings.socket.display()
    )
}

/// Once per turn of the event loop: the watchdog's ping, `STATUS=` when the counts changed,
/// `READY=1` after an upgrade that did not hand over.
pub fn tick(server: &mut Server) {
    let link = &server.systemd;
    if !link.notify {
        return;
    }
    let now = Instant::now();
    if let Some(every) = link.watchdog
        && now.duration_since(link.last_ping) >= every / 2
    {
        link.send(&[NotifyState::Watchdog]);
        server.systemd.last_ping = now;
    }
    if server.systemd.reloading && server.staging.is_none() && server.ended.is_none() {
        // The upgrade ended and this server goes on: it failed or was cancelled.
        server.systemd.reloading = false;
        server.systemd.send(&[NotifyState::Ready]);
    }
    let c = counts(server);
    if let Some((said, at)) = server.systemd.said
        && said != c
        && now.duration_since(at) >= STATUS_EVERY
    {
        let line = status_line(server);
        server.systemd.send(&[NotifyState::Status(&line)]);
        server.systemd.said = Some((c, now));
    }
}

/// How long the event loop may sleep before [`tick`] has something to do.
pub fn timeout(server: &Server) -> Option<Duration> {
    let link = &server.systemd;
    if !link.notify {
        return None;
    }
    let now = Instant::now();
    let ping = link
        .watchdog
        .map(|every| (link.last_ping + every / 2).saturating_duration_since(now));
    let status = link.said.and_then(|(said, at)| {
        (said != counts(server)).then(|| (at + STATUS_EVERY).saturating_duration_since(now))
    });
    match (ping, status) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An upgrade begins.
pub fn reloading(server: &mut Server) {
    if !server.systemd.notify || server.systemd.reloading {
        return;
    }
    server.systemd.reloading = true;
    match NotifyState::monotonic_usec_now() {
        Ok(now) => server.systemd.send(&[NotifyState::Reloading, now]),
        Err(_) => server.systemd.send(&[NotifyState::Reloading]),
    }
}

/// The server stops (SIGTERM). Returns true if its state stays in systemd's store, in which
/// case nothing is to be undone on the way out (the socket's path stays too).
pub fn stopping(server: &mut Server) -> bool {
    let parked = server
        .systemd
        .store
        .as_ref()
        .is_some_and(|s| s.active && s.slot.is_some());
    let line = if parked {
        let (sessions, files, bytes) = counts(server);
        format!(
            "stopped; {sessions} sessions, {files} files, {bytes} bytes kept in systemd's descriptor store"
        )
    } else {
        "stopping".to_owned()
    };
    server
        .systemd
        .send(&[NotifyState::Stopping, NotifyState::Status(&line)]);
    parked
}

/// A start from the store: puts every stored descriptor back at its number, and recovers the
/// newest stored state as after the death of its server. `channel` is this server's end of
/// the keeper's channel; it takes the place of the dead keeper's.
pub fn restore(
    handed: Handed,
    channel: OwnedFd,
    fd_limit: u64,
    signals: impl FnOnce() -> anyhow::Result<OwnedFd>,
) -> anyhow::Result<(Server, crate::handover::Recovery)> {
    let mut numbered: BTreeMap<RawFd, (OwnedFd, String)> = BTreeMap::new();
    let mut states: HashMap<u32, [Option<OwnedFd>; 3]> = HashMap::new();
    let mut journals: HashMap<u32, OwnedFd> = HashMap::new();
    let mut sockets: Vec<(OwnedFd, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (fd, name) in handed {
        ensure!(
            !names.contains(&name),
            "systemd handed over two descriptors named {name:?}; luod stores one per name. \
             Nothing was removed from the store"
        );
        names.push(name.clone());
        match parse_name(&name) {
            Name::Fd(n) => {
                numbered.insert(n, (fd, name));
            }
            Name::State(pid, slot) => {
                states.entry(pid).or_default()[usize::from(slot)] = Some(fd);
            }
            Name::Journal(pid) => {
                journals.insert(pid, fd);
            }
            Name::Other => sockets.push((fd, name)),
        }
    }
    // The candidates: every server with a journal and a checkpoint, its newest checkpoint.
    let mut best: Option<(usize, u32, OwnedFd, OwnedFd, Vec<u8>)> = None;
    let mut why = Vec::new();
    for (pid, journal) in journals {
        let Some(slots) = states.remove(&pid) else {
            why.push(format!("journal {} has no checkpoint", journal_name(pid)));
            continue;
        };
        let present: Vec<u8> = (0..3u8)
            .filter(|&i| slots[usize::from(i)].is_some())
            .collect();
        let newest = match present.as_slice() {
            [one] => *one,
            [a, b] if (a + 1) % 3 == *b => *b,
            [a, b] if (b + 1) % 3 == *a => *a,
            _ => bail!(
                "systemd's store holds three checkpoints of server {pid}; luod keeps at most two. Nothing was removed from the store"
            ),
        };
        let mut slots = slots;
        let Some(state) = slots[usize::from(newest)].take() else {
            continue;
        };
        let bytes = read_bounded(state.as_fd(), MAX_IMAGE_LEN).with_context(|| {
            format!("Reading the stored checkpoint {}", state_name(pid, newest))
        })?;
        let image = Image::parse(&bytes).map_err(|e| {
            anyhow!(
                "The stored checkpoint {} is invalid: {e}",
                state_name(pid, newest)
            )
        })?;
        let lineage = crate::handover::DaemonState::read(&image)?
            .settings
            .pids
            .len();

        if best.as_ref().is_none_or(|b| lineage > b.0) {
            best = Some((lineage, pid, state, journal, bytes));
        }
    }
    let Some((_, pid, state, journal, checkpoint)) = best else {
        bail!(
            "systemd handed over luod's stored descriptors but no checkpoint with its journal ({}); \
             nothing was removed from the store",
            if why.is_empty() {
                "none found".to_owned()
            } else {
                why.join("; ")
            }
        );
    };
    let size = rustix::fs::fstat(&journal)?.st_size as u64;
    ensure!(
        size <= MAX_JOURNAL,
        "The stored journal {} has {size} bytes, over the limit",
        journal_name(pid)
    );
    let records = crate::journal::read_all(&journal).context("Reading the stored journal")?;
    let rebuilt =
        crate::recover::rebuild(&checkpoint, &records).context("Rebuilding the stored state")?;
    let image = Image::parse(&rebuilt.image).map_err(|e| anyhow!("Rebuilt image: {e}"))?;
    let d = crate::handover::DaemonState::read(&image)?;
    let Some(keeper_slot) = d.keeper else {
        bail!("The stored state has no keeper channel; it was not written under a keeper");
    };
    // Where each descriptor goes.
    let mut placed: Vec<(RawFd, OwnedFd)> = Vec::new();
    let mut missing = Vec::new();
    let mut channel = Some(channel);
    for (i, entry) in image.fds().iter().enumerate() {
        let (n, mode) = (entry.fd.get(), entry.mode_type.get());
        let fd = if i as u32 == keeper_slot {
            numbered.remove(&n);
            channel.take()
        } else if i as u32 == d.listener && !sockets.is_empty() {
            let (fd, name) = sockets.remove(0);
            check_listener(fd.as_fd(), &name)?;
            numbered.remove(&n);
            Some(fd)
        } else {
            numbered.remove(&n).map(|(fd, _)| fd)
        };
        let Some(fd) = fd else {
            missing.push(format!("{} ({:o})", fd_name(n), mode));
            continue;
        };
        let got = rustix::fs::fstat(&fd)?.st_mode & S_IFMT;
        ensure!(
            got == mode,
            "The stored descriptor {} is {}, the state needs file type {mode:o}; nothing was \
             removed from the store",
            fd_name(n),
            describe(fd.as_fd())
        );
        placed.push((n, fd));
    }
    ensure!(
        missing.is_empty(),
        "systemd's store lacks {} descriptor(s) luod's state names: {}; nothing was removed \
         from the store",
        missing.len(),
        missing.join(", ")
    );
    if let Some((fd, name)) = sockets.first() {
        bail!(
            "systemd handed over {name:?} (descriptor {}, {}), which luod's state does not use",
            fd.as_raw_fd(),
            describe(fd.as_fd())
        );
    }
    // Unused: entries of older servers, descriptors stored before a journal record that was
    // never written. Removed from the store once this server's own state is there.
    let used: HashSet<String> = placed.iter().map(|(n, _)| fd_name(*n)).collect();
    let stale: Vec<String> = names.into_iter().filter(|n| !used.contains(n)).collect();
    drop(numbered);
    drop(states);
    // Every number in use now, and every number a target or a pending reply needs.
    let mut top = placed
        .iter()
        .flat_map(|(n, fd)| [*n, fd.as_raw_fd()])
        .chain([state.as_raw_fd(), journal.as_raw_fd()])
        .chain(rebuilt.pending.iter().flat_map(|p| p.fds.iter().copied()))
        .max()
        .unwrap_or(3);
    top = top.saturating_add(1);
    ensure!(
        (top as u64) < fd_limit,
        "luod's descriptor limit ({fd_limit}) is below the numbers of the stored state"
    );
    // Out of the way first, then each to its number.
    let lift =
        |fd: OwnedFd| -> anyhow::Result<OwnedFd> { Ok(rustix::io::fcntl_dupfd_cloexec(&fd, top)?) };
    let state = lift(state)?;
    let journal = lift(journal)?;
    let mut lifted = Vec::with_capacity(placed.len());
    for (n, fd) in placed {
        lifted.push((n, lift(fd)?));
    }
    let mut raws = Vec::with_capacity(lifted.len());
    for (n, fd) in lifted {
        let at = rustix::io::fcntl_dupfd_cloexec(&fd, n)?;
        ensure!(
            at.as_raw_fd() == n,
            "descriptor {n} is taken; cannot put the stored one back"
        );
        raws.push(at);
    }
    info!(
        descriptors = raws.len(),
        server = pid,
        records = records.len(),
        "took back luod's state from systemd's descriptor store"
    );
    // From here the recovery owns every number (it adopts those the image lists and closes
    // the rest, the checkpoint and journal included, once it has read them).
    let (state_raw, journal_raw) = (state.into_raw_fd(), journal.into_raw_fd());
    for fd in raws {
        let _ = fd.into_raw_fd();
    }
    let (mut server, recovery) =
        crate::handover::recover(state_raw, journal_raw, fd_limit, signals)?;
    if let Some(s) = server.systemd.store.as_mut() {
        s.stale = stale;
        s.assume = true;
    }
    Ok((server, recovery))
}

/// The whole content of `fd`, at most `max` bytes.
fn read_bounded(fd: BorrowedFd<'_>, max: u64) -> anyhow::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size as u64;
    ensure!(size <= max, "{size} bytes is over the limit of {max}");
    let mut bytes = vec![0u8; size as usize];
    let mut done = 0;
    while done < bytes.len() {
        let n = rustix::io::pread(fd, &mut bytes[done..], done as u64)?;
        ensure!(n > 0, "shorter than its size");
        done += n;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_valid_fdnames() {
        for n in [3, 17, 0xffff, 19_999, i32::MAX] {
            let name = fd_name(n);
            assert!(valid_fdname(&name), "{name}");
            assert_eq!(parse_name(&name), Name::Fd(n));
        }
        for slot in 0..3 {
            let name = state_name(4_194_304, slot);
            assert!(valid_fdname(&name));
            assert_eq!(parse_name(&name), Name::State(4_194_304, slot));
        }
        assert_eq!(parse_name(&journal_name(77)), Name::Journal(77));
        for other in [
            "luod.sock",
            "",
            "f",
            "f2",
            "fzz",
            "s12",
            "s12.d",
            "j",
            "f123456789",
            "stored",
        ] {
            assert_eq!(parse_name(other), Name::Other, "{other:?}");
        }
    }

    #[test]
    fn fdnames_are_checked() {
        assert!(valid_fdname("luod.sock"));
        assert!(!valid_fdname(""));
        assert!(!valid_fdname("a:b"));
        assert!(!valid_fdname("a\nb"));
        assert!(!valid_fdname(&"x".repeat(256)));
        assert!(valid_fdname(&"x".repeat(255)));
    }

    #[test]
    fn the_names_of_a_full_store_fit_in_one_environment_variable() {
        // systemd passes every name in LISTEN_FDNAMES, one string under the kernel's limit of
        // 128 KiB per environment entry (MAX_ARG_STRLEN): a full store of f<N> names fits.
        let all: Vec<String> = (3..3 + DEFAULT_STORE_MAX as i32).map(fd_name).collect();
        let len = "LISTEN_FDNAMES=".len() + all.join(":").len();
        assert!(len < 128 * 1024, "{len}");
    }
}
