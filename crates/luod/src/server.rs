//! The server: one thread, one epoll loop, every connection non-blocking.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use luo_abi::Errno;
use luo_abi::uapi::{self, Target};
use luo_abi::wire::{self, Op};
use luo_client::transport::{self, Incoming, Recv};
use luo_core::{Direction, Engine, Limits, SessionId};
use rustix::event::epoll;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tracing::{debug, info, warn};

use crate::budget::{Budget, FdSettings, Scope, Tally};
use crate::conn::{Conn, Cred, Kind, Outgoing};
use crate::listener::{Admission, KEY_LISTENER};

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

/// A reply to send: errno, argument bytes and descriptors.
#[derive(Debug, Default)]
pub struct Reply {
    pub errno: i32,
    pub arg: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    pub fn ok(arg: Vec<u8>) -> Reply {
        Reply {
            errno: 0,
            arg,
            fds: Vec::new(),
        }
    }
    pub fn err(e: Errno) -> Reply {
        Reply {
            errno: e.raw(),
            arg: Vec::new(),
            fds: Vec::new(),
        }
    }
    pub fn err_msg(e: Errno, msg: &str) -> Reply {
        Reply {
            errno: e.raw(),
            arg: msg.as_bytes().to_vec(),
            fds: Vec::new(),
        }
    }
}

/// What the loop must do after a request.
#[derive(Debug)]
pub enum After {
    Nothing,
    Upgrade(PathBuf),
    Reboot,
    /// A migration started; its reply goes out when its copy is done.
    Migrate(Box<crate::migrate::Migration>),
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
    pub stop: bool,
    /// Moves whenever something an upgrade image records may have changed (a request that is
    /// not read-only, a connection opened or closed): a staged successor is used only if its
    /// image was written at the current epoch.
    pub epoch: u64,
    /// The upgrade in progress, if any.
    pub staging: Option<crate::takeover::Staging>,
    /// The migration in progress, if any.
    pub migration: Option<crate::migrate::Migration>,
    /// The batch copy engine migrations copy with (its driver: copy channels on threads).
    pub copier: std::sync::Arc<luo_copy::Engine>,
    /// Discarded successors not yet reaped.
    zombies: Vec<crate::takeover::Successor>,
    reaping: bool,
    /// The receive buffer of `on_conn`, reused for every message.
    rx: Vec<u8>,
    /// The buffer replies are framed in, reused unless a reply has to wait in an outbox.
    tx: Vec<u8>,
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
            stop: false,
            epoch: 0,
            staging: None,
            migration: None,
            copier: crate::migrate::copier(),
            zombies: Vec::new(),
            reaping: false,
            rx: vec![0; wire::MAX_MESSAGE],
            tx: Vec::with_capacity(wire::MAX_MESSAGE),
        })
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
            },
        );
        Ok(key)
    }

    /// Runs until SIGTERM/SIGINT.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(256);
        while !self.stop {
            events.clear();
            self.reap_zombies();
            crate::listener::resume(self);
            let timeout = self.wait_timeout();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                let key = ev.data.u64();
                match key {
                    KEY_LISTENER => crate::listener::accept_all(self),
                    KEY_SIGNAL => self.on_signal(),
                    KEY_SUCCESSOR => crate::takeover::on_successor(self),
                    KEY_MIGRATION => self.on_migrated(),
                    _ => self.on_conn(key, ev.flags),
                }
                if self.stop {
                    break;
                }
            }
            crate::takeover::on_timeout(self);
        }
        self.shutdown();
        Ok(())
    }

    /// The migration in progress finished copying: swap the file in and answer.
    fn on_migrated(&mut self) {
        let Some(m) = self.migration.take() else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &m.done);
        let (key, id) = (m.key, m.id);
        let reply = crate::migrate::finish(self, m);
        if reply.errno == 0 {
            info!(key, "migration done");
        } else {
            warn!(
                key,
                errno = reply.errno,
                "migration failed; the old file stays"
            );
        }
        self.epoch += 1;
        self.send_reply(key, id, reply);
    }

    /// Watches the handover channel of a staged upgrade.
    pub fn watch_successor(&self, channel: &OwnedFd) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            channel,
            epoll::EventData::new_u64(KEY_SUCCESSOR),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
    }

    /// Stops watching it.
    pub fn unwatch_successor(&self, channel: &OwnedFd) {
        let _ = epoll::delete(&self.epoll, channel);
    }

    /// Keeps a discarded successor until it has exited.
    pub fn reap_later(&mut self, child: crate::takeover::Successor) {
        self.zombies.push(child);
    }

    fn reap_zombies(&mut self) {
        if !self.zombies.is_empty() {
            self.zombies.retain(|c| !c.try_reap());
        }
    }

    fn on_signal(&mut self) {
        let mut buf = [0u8; 64];
        let _ = rustix::io::read(&self.signals, &mut buf);
        info!("SIGTERM received: shutting down");
        self.stop = true;
    }

    fn shutdown(&mut self) {
        let usage = self.engine.total_usage();
        if usage.sessions > 0 {
            warn!(
                sessions = usage.sessions,
                files = usage.files,
                bytes = usage.bytes,
                "Shutting down drops every preserved session and file"
            );
        }
        let _ = std::fs::remove_file(&self.settings.socket);
    }

    /// How long the loop may wait: until a staged upgrade's deadline or the end of the
    /// listener's pause, whichever comes first.
    fn wait_timeout(&self) -> Option<rustix::event::Timespec> {
        let staging = self
            .staging
            .as_ref()
            .map(crate::takeover::Staging::time_left);
        let paused = self
            .admission
            .time_left(Instant::now())
            .map(|left| rustix::event::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            });
        match (staging, paused) {
            (Some(a), Some(b)) => Some(if (a.tv_sec, a.tv_nsec) <= (b.tv_sec, b.tv_nsec) {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        }
    }

    fn on_conn(&mut self, key: u64, flags: epoll::EventFlags) {
        // Replies waiting for room go first; until they are all out the connection is not
        // read, so a client that does not read its replies stops being served instead of
        // stalling everyone.
        if !self.flush(key) {
            if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                self.close_conn(key);
            }
            return;
        }
        // A nested call (`reap_hung_up` while a message is handled) finds the buffer taken.
        let mut rx = std::mem::take(&mut self.rx);
        if rx.len() != wire::MAX_MESSAGE {
            rx = vec![0; wire::MAX_MESSAGE];
        }
        for _ in 0..BURST {
            let Some(conn) = self.conns.get(&key) else {
                break;
            };
            if conn.paused() {
                break;
            }
            match transport::recv_into(conn.fd.as_fd(), &mut rx, false) {
                Ok(Recv::Message(msg)) => self.on_message(key, &rx[..msg.len], msg),
                Ok(Recv::WouldBlock) => {
                    if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP)
                        && transport::peer_hung_up(&conn.fd)
                    {
                        self.close_conn(key);
                    }
                    break;
                }
                Ok(Recv::Closed) | Err(_) => {
                    self.close_conn(key);
                    break;
                }
            }
        }
        self.rx = rx;
    }

    /// Sends what waits in connection `key`'s outbox, as far as the socket takes it. True if
    /// nothing waits any more (the connection is read again); false if something still does,
    /// or the connection failed and was closed.
    fn flush(&mut self, key: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        if !conn.paused() {
            return true;
        }
        while let Some(out) = conn.outbox.front() {
            let sent = {
                let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
                transport::send(conn.fd.as_fd(), &out.bytes, &fds)
            };
            match sent {
                Ok(()) => {
                    if let Some(out) = conn.outbox.pop_front() {
                        self.tally.sub(conn.cred.uid, out.fds.len() as u64);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return false,
                Err(e) => {
                    debug!(key, error = %e, "reply not delivered; dropping connection");
                    self.close_conn(key);
                    return false;
                }
            }
        }
        self.resume(key);
        true
    }

    /// Stops reading connection `key` and watches it for room for its waiting replies.
    fn pause(&mut self, key: u64) {
        if let Some(conn) = self.conns.get(&key) {
            debug!(key, "client does not read its replies; pausing it");
            // Only OUT: a hang-up is reported anyway (EPOLLHUP), and a peer that shut down
            // its sending side only must not wake the loop while it does not read.
            let _ = epoll::modify(
                &self.epoll,
                &conn.fd,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::OUT,
            );
        }
    }

    /// Reads connection `key` again: its outbox is empty.
    fn resume(&mut self, key: u64) {
        if let Some(conn) = self.conns.get(&key) {
            debug!(key, "client read its replies; resuming it");
            let _ = epoll::modify(
                &self.epoll,
                &conn.fd,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            );
        }
    }

    /// Before luod hands itself over or exits: delivers the replies waiting in the outboxes
    /// (of connection `only`, or of every connection), waiting for room up to
    /// [`HANDOVER_FLUSH_MS`] in all. A connection whose replies cannot be delivered by then is
    /// closed.
    pub fn deliver_waiting(&mut self, only: Option<u64>) {
        let deadline = Instant::now() + std::time::Duration::from_millis(HANDOVER_FLUSH_MS);
        let keys: Vec<u64> = match only {
            Some(k) => vec![k],
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.paused())
                .map(|(&k, _)| k)
                .collect(),
        };
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let mut failed = None;
            while let Some(out) = conn.outbox.pop_front() {
                self.tally.sub(conn.cred.uid, out.fds.len() as u64);
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
                if let Err(e) = transport::send_wait(conn.fd.as_fd(), &out.bytes, &fds, ms) {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                Some(e) => {
                    warn!(key, error = %e, "replies not delivered before the handover; dropping connection");
                    self.close_conn(key);
                }
                None => self.resume(key),
            }
        }
    }

    fn after(&mut self, key: u64, id: u64, after: After) {
        match after {
            After::Nothing => {}
            After::Upgrade(_) | After::Reboot if self.migration.is_some() => self.send_reply(
                key,
                id,
                Reply::err_msg(Errno::EBUSY, "A migration is in progress"),
            ),
            After::Migrate(m) => {
                let mut m = *m;
                m.id = id;
                match epoll::add(
                    &self.epoll,
                    &m.done,
                    epoll::EventData::new_u64(KEY_MIGRATION),
                    epoll::EventFlags::IN,
                ) {
                    Ok(()) => self.migration = Some(m),
                    Err(e) => {
                        // Cannot learn when it ends: wait for it here.
                        warn!(error = %e, "cannot watch the migration; waiting for it");
                        let reply = crate::migrate::finish(self, m);
                        self.send_reply(key, id, reply);
                    }
                }
            }
            After::Upgrade(path) => crate::takeover::begin_upgrade(self, key, id, path),
            After::Reboot if self.staging.is_some() => self.send_reply(
                key,
                id,
                Reply::err_msg(Errno::EBUSY, "An upgrade is in progress"),
            ),
            After::Reboot => {
                let reply = match crate::takeover::reboot(self) {
                    Ok(()) => {
                        info!("reboot handed over; cutting every connection and exiting");
                        self.send_reply(key, id, Reply::ok(Vec::new()));
                        self.deliver_waiting(Some(key));
                        crate::takeover::release_successor(self);
                        std::process::exit(0);
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "reboot failed; sessions unfrozen, this server keeps running");
                        Reply::err_msg(Errno::EAGAIN, &format!("{e:#}"))
                    }
                };
                self.send_reply(key, id, reply);
            }
        }
    }

    /// Closes connection `key`: a session connection closes its session (kernel semantics).
    pub fn close_conn(&mut self, key: u64) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.epoch += 1;
        let _ = epoll::delete(&self.epoll, &conn.fd);
        self.tally.sub(conn.cred.uid, 1 + waiting_fds(&conn));
        crate::takeover::requester_gone(self, key);
        match conn.kind {
            Kind::Device => {
                if self.devices.get(&conn.cred.uid) == Some(&key) {
                    self.devices.remove(&conn.cred.uid);
                }
            }
            Kind::Session(id) => {
                self.sessions.remove(&id);
                if let Err(e) = self.engine.close_session(id) {
                    warn!(error = %e, "closing a session left it behind");
                }
            }
            Kind::Control | Kind::Detached => {}
        }
        debug!(key, "connection closed");
    }

    /// Processes every pending message of connections that hung up, then closes them, so that
    /// a close the client already did is seen before EBUSY/EEXIST is answered.
    fn reap_hung_up(&mut self, only: Option<u64>) -> bool {
        if self.reaping {
            return false;
        }
        self.reaping = true;
        let keys: Vec<u64> = match only {
            Some(k) => vec![k],
            None => self.conns.keys().copied().collect(),
        };
        let mut any = false;
        for key in keys {
            let hung = self
                .conns
                .get(&key)
                .is_some_and(|c| transport::peer_hung_up(&c.fd));
            if hung {
                self.on_conn(key, epoll::EventFlags::HUP);
                self.close_conn(key);
                any = true;
            }
        }
        self.reaping = false;
        any
    }

    /// Sends a reply without waiting. If the socket has no room (its peer does not read), or
    /// earlier replies still wait, the reply joins the connection's outbox and the connection
    /// is paused until the outbox drains (see [`on_conn`](Self::on_conn)). A connection whose
    /// peer is gone is closed.
    pub fn send_reply(&mut self, key: u64, id: u64, reply: Reply) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut out = std::mem::take(&mut self.tx);
        out.clear();
        wire::write_reply(&mut out, reply.errno, id, &reply.arg);
        let sent = if conn.paused() {
            Err(rustix::io::Errno::AGAIN)
        } else {
            let fds: Vec<BorrowedFd<'_>> = reply.fds.iter().map(AsFd::as_fd).collect();
            transport::send(conn.fd.as_fd(), &out, &fds)
        };
        match sent {
            Ok(()) => self.tx = out,
            Err(rustix::io::Errno::AGAIN) => {
                self.tally.add(conn.cred.uid, reply.fds.len() as u64);
                conn.outbox.push_back(Outgoing {
                    bytes: out,
                    fds: reply.fds,
                });
                if conn.outbox.len() == 1 {
                    self.pause(key);
                }
            }
            Err(e) => {
                debug!(key, error = %e, "reply not delivered; dropping connection");
                self.tx = out;
                self.close_conn(key);
            }
        }
    }

    fn on_message(&mut self, key: u64, bytes: &[u8], msg: Incoming) {
        let (hdr, arg) = match wire::parse_request(bytes) {
            Ok(v) => v,
            Err(e) => {
                let e = if msg.truncated { Errno::EMSGSIZE } else { e };
                self.send_reply(key, 0, Reply::err(e));
                return;
            }
        };
        let id = hdr.id.get();
        if msg.truncated || msg.fds_truncated {
            let reply = if msg.truncated {
                Reply::err(Errno::EMSGSIZE)
            } else if msg.fds.len() < wire::MAX_FDS {
                // The kernel could not install a descriptor in luod's table (MSG_CTRUNC with
                // fewer than the most a message carries): luod's problem, not the request's.
                Reply::err_msg(Errno::EMFILE, FDS_NOT_RECEIVED)
            } else {
                Reply::err(Errno::EINVAL)
            };
            self.send_reply(key, id, reply);
            return;
        }
        let op = hdr.op.get();
        if !read_only(op) {
            self.epoch += 1;
        }
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let (kind, cred) = (conn.kind, conn.cred);
        let (reply, after) = if let Some(native) = Op::from_raw(op) {
            self.native_op(key, kind, cred, native, arg, msg.fds)
        } else {
            (self.kernel_op(kind, cred, op, arg, msg.fds), After::Nothing)
        };
        match after {
            // Upgrade and reboot answer once they have run.
            After::Nothing => self.send_reply(key, id, reply),
            after => self.after(key, id, after),
        }
    }

    fn native_op(
        &mut self,
        key: u64,
        kind: Kind,
        cred: Cred,
        op: Op,
        arg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> (Reply, After) {
        if op == Op::ReplaceFd {
            return (self.replace_fd(kind, cred, arg, fds), After::Nothing);
        }
        if !fds.is_empty() {
            return (
                Reply::err_msg(Errno::EINVAL, "No descriptors expected"),
                After::Nothing,
            );
        }
        let admin = cred.uid == 0 || cred.uid == rustix::process::geteuid().as_raw();
        let reply = match op {
            Op::Ping => Reply::ok(Vec::new()),
            Op::OpenDevice => self.open_device(key, kind, cred),
            Op::Handoff => match kind {
                Kind::Session(id) => match self.handoff(id, cred.uid) {
                    Ok(()) => {
                        self.sessions.remove(&id);
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.kind = Kind::Detached;
                        }
                        info!(uid = cred.uid, session = %String::from_utf8_lossy(self.engine.session_name(id).unwrap_or_default()), "session handed off");
                        Reply::ok(Vec::new())
                    }
                    Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
                },
                _ => Reply::err_msg(Errno::EINVAL, "Handoff needs a session connection"),
            },
            Op::Status => Reply::ok(crate::status::status(self, cred, admin)),
            Op::ReplaceFd => Reply::err(Errno::EINVAL), // answered above
            Op::Migrate if self.migration.is_some() => {
                Reply::err_msg(Errno::EBUSY, "A migration is in progress")
            }
            Op::Migrate if self.staging.is_some() => {
                Reply::err_msg(Errno::EBUSY, "An upgrade is in progress")
            }
            Op::Migrate => match crate::migrate::start(self, key, 0, cred, admin, arg) {
                Ok(m) => return (Reply::default(), After::Migrate(Box::new(m))),
                Err(reply) => reply,
            },
            Op::List => crate::status::list(self, cred, admin, arg),
            Op::Upgrade => {
                if !admin {
                    return (
                        Reply::err_msg(Errno::EPERM, "Only root may upgrade luod"),
                        After::Nothing,
                    );
                }
                let path = match std::str::from_utf8(arg) {
                    Ok("") => self.settings.binary.clone(),
                    Ok(p) => PathBuf::from(p),
                    Err(_) => {
                        return (
                            Reply::err_msg(Errno::EINVAL, "Binary path is not UTF-8"),
                            After::Nothing,
                        );
                    }
                };
                return (Reply::default(), After::Upgrade(path));
            }
            Op::Reboot => {
                if !admin {
                    return (
                        Reply::err_msg(Errno::EPERM, "Only root may reboot luod"),
                        After::Nothing,
                    );
                }
                return (Reply::default(), After::Reboot);
            }
        };
        (reply, After::Nothing)
    }

    /// Handoff of session `id`; an `EEXIST` caused by an incoming session of the same name
    /// whose descriptor was already closed is resolved by processing that close first.
    fn handoff(&mut self, id: SessionId, uid: u32) -> Result<(), luo_core::Error> {
        let result = self.engine.handoff(id);
        if matches!(result, Err(luo_core::Error::NameTaken)) {
            let name = self.engine.session_name(id).map(<[u8]>::to_vec)?;
            if self.reap_incoming_holder(uid, &name) {
                return self.engine.handoff(id);
            }
        }
        result
    }

    /// Processes a pending hang-up of the connection holding `uid`'s incoming session `name`,
    /// so that an answer caused by that session (EINVAL for a double retrieve, EEXIST for a
    /// handoff) reflects a close the client already did. True if a hang-up was processed.
    fn reap_incoming_holder(&mut self, uid: u32, name: &[u8]) -> bool {
        let holder = self
            .engine
            .sessions()
            .into_iter()
            .find(|s| s.owner == uid && s.name == name && s.direction != Direction::Outgoing)
            .and_then(|s| self.sessions.get(&s.id).copied());
        holder.is_some_and(|key| self.reap_hung_up(Some(key)))
    }

    fn open_device(&mut self, key: u64, kind: Kind, cred: Cred) -> Reply {
        if kind != Kind::Control {
            return Reply::err_msg(Errno::EINVAL, "Only a fresh connection can become a device");
        }
        if let Some(&holder) = self.devices.get(&cred.uid)
            && holder != key
            && self.conns.contains_key(&holder)
        {
            self.reap_hung_up(Some(holder));
            if self.devices.contains_key(&cred.uid) {
                return Reply::err(Errno::EBUSY);
            }
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.kind = Kind::Device;
        }
        self.devices.insert(cred.uid, key);
        Reply::ok(Vec::new())
    }

    fn kernel_op(
        &mut self,
        kind: Kind,
        cred: Cred,
        op: u32,
        arg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Reply {
        let target = match kind {
            Kind::Device => Target::Device,
            Kind::Session(_) | Kind::Detached => Target::Session,
            Kind::Control => return Reply::err(Errno::ENOTTY),
        };
        let session = match kind {
            Kind::Session(id) => match self.engine.direction(id) {
                Some(Direction::Outgoing) => uapi::SessionState::Outgoing,
                Some(_) => uapi::SessionState::Incoming,
                None => uapi::SessionState::Inert,
            },
            // A handed-off session's descriptor accepts nothing.
            _ => uapi::SessionState::Inert,
        };
        let uapi::Decoded { buf, copy_back, .. } =
            match uapi::decode(target, session, op, arg, fds.len()) {
                Ok(d) => d,
                Err(e) => return Reply::err(e),
            };
        if let Some((n, scope)) = Server::fds_needed(op)
            && let Err(refusal) = self.may_hold(cred.uid, n, scope)
        {
            return Reply::err_msg(Errno::EMFILE, &refusal.to_string());
        }
        let mut reply = match op {
            uapi::LIVEUPDATE_IOCTL_CREATE_SESSION => self.create_session(cred, &buf),
            uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION => self.retrieve_session(cred, &buf),
            uapi::LIVEUPDATE_SESSION_PRESERVE_FD => self.preserve_fd(kind, &buf, fds),
            uapi::LIVEUPDATE_SESSION_RETRIEVE_FD => self.retrieve_fd(kind, &buf),
            uapi::LIVEUPDATE_SESSION_FINISH => self.finish(kind, &buf),
            uapi::LIVEUPDATE_SESSION_GET_NAME => self.get_name(kind, &buf),
            _ => Reply::err(Errno::ENOTTY),
        };
        if reply.errno == 0 {
            reply.arg.truncate(copy_back);
        }
        reply
    }

    fn session_socket(&mut self, id: SessionId, cred: Cred) -> Result<OwnedFd, Errno> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Errno(e.raw_os_error()))?;
        rustix::io::ioctl_fionbio(&ours, true).map_err(|e| Errno(e.raw_os_error()))?;
        self.add_conn(ours, Kind::Session(id), cred)
            .map_err(|_| Errno::ENOMEM)?;
        Ok(theirs)
    }

    fn create_session(&mut self, cred: Cred, buf: &[u8; 72]) -> Reply {
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&buf[8..72]);
        let Some(name) = uapi::session_name(&raw) else {
            return Reply::err(Errno::EINVAL);
        };
        let mut result = self.engine.create_session(cred.uid, name);
        if matches!(result, Err(luo_core::Error::NameTaken))
            && let Some(holder) = self
                .engine
                .outgoing_session(cred.uid, name)
                .and_then(|s| self.sessions.get(&s).copied())
            && self.reap_hung_up(Some(holder))
        {
            result = self.engine.create_session(cred.uid, name);
        }
        let id = match result {
            Ok(id) => id,
            Err(e) => return Reply::err_msg(e.errno(), &e.to_string()),
        };
        self.session_reply(id, cred, buf)
    }

    fn retrieve_session(&mut self, cred: Cred, buf: &[u8; 72]) -> Reply {
        let raw = &buf[8..72];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        let mut result = self.engine.retrieve_session(cred.uid, name);
        if matches!(result, Err(luo_core::Error::AlreadyRetrieved))
            && self.reap_incoming_holder(cred.uid, name)
        {
            // The holder had closed it: the close finished it, and the name is gone (ENOENT).
            result = self.engine.retrieve_session(cred.uid, name);
        }
        let id = match result {
            Ok(id) => id,
            Err(e) => return Reply::err(e.errno()),
        };
        self.session_reply(id, cred, buf)
    }

    /// The reply to CREATE/RETRIEVE_SESSION: the struct with `fd` -1 (the client writes the
    /// number it receives) and the client's end of the new session connection. If that cannot
    /// be made the session is closed again (for a retrieved one, as in the kernel: finished).
    fn session_reply(&mut self, id: SessionId, cred: Cred, buf: &[u8; 72]) -> Reply {
        match self.session_socket(id, cred) {
            Ok(theirs) => {
                let mut arg = buf.to_vec();
                arg[4..8].copy_from_slice(&(-1i32).to_le_bytes());
                Reply {
                    errno: 0,
                    arg,
                    fds: vec![theirs],
                }
            }
            Err(e) => {
                let _ = self.engine.close_session(id);
                Reply::err(e)
            }
        }
    }

    fn preserve_fd(&mut self, kind: Kind, buf: &[u8; 72], fds: Vec<OwnedFd>) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err(Errno::EINVAL);
        };
        let token = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        let fd = fds.first().map(|f| f.as_fd());
        let mut result = self.engine.preserve_fd(id, fd, token);
        if matches!(result, Err(luo_core::Error::AlreadyPreserved)) && self.reap_hung_up(None) {
            let fd = fds.first().map(|f| f.as_fd());
            result = if self.engine.session_info(id).is_some() {
                self.engine.preserve_fd(id, fd, token)
            } else {
                Err(luo_core::Error::StaleSession)
            };
        }
        match result {
            Ok(()) => Reply::ok(buf[..16].to_vec()),
            Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
        }
    }

    /// REPLACE_FD: the file under the token of `arg` swapped for the one descriptor in `fds`.
    fn replace_fd(&mut self, kind: Kind, cred: Cred, arg: &[u8], fds: Vec<OwnedFd>) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err_msg(Errno::EINVAL, "REPLACE_FD needs an outgoing session");
        };
        let Ok(req) = <wire::ReplaceFdRequest as zerocopy::FromBytes>::read_from_bytes(arg) else {
            return Reply::err_msg(Errno::EINVAL, "REPLACE_FD takes an 8-byte token");
        };
        if fds.len() != 1 {
            return Reply::err_msg(Errno::EINVAL, "REPLACE_FD takes exactly one descriptor");
        }
        if let Err(refusal) = self.may_hold(cred.uid, 1, Scope::Budget) {
            return Reply::err_msg(Errno::EMFILE, &refusal.to_string());
        }
        match self
            .engine
            .replace_fd(id, req.token.get(), fds.first().map(|f| f.as_fd()))
        {
            // The client holds the old file too (it replaced it): closing luod's copy is cheap.
            Ok(old) => {
                drop(old);
                Reply::ok(Vec::new())
            }
            Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
        }
    }

    fn retrieve_fd(&mut self, kind: Kind, buf: &[u8; 72]) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err(Errno::EINVAL);
        };
        let token = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        match self.engine.retrieve_fd(id, token) {
            Ok(fd) => {
                let mut arg = buf[..16].to_vec();
                arg[4..8].copy_from_slice(&(-1i32).to_le_bytes());
                Reply {
                    errno: 0,
                    arg,
                    fds: vec![fd],
                }
            }
            Err(e) => Reply::err(e.errno()),
        }
    }

    fn finish(&mut self, kind: Kind, buf: &[u8; 72]) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err(Errno::EINVAL);
        };
        if buf[4..8] != [0; 4] {
            return Reply::err(Errno::EINVAL);
        }
        match self.engine.finish(id) {
            Ok(()) => Reply::ok(buf[..8].to_vec()),
            Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
        }
    }

    fn get_name(&mut self, kind: Kind, buf: &[u8; 72]) -> Reply {
        if buf[4..8] != [0; 4] {
            return Reply::err(Errno::EINVAL);
        }
        let name = match kind {
            Kind::Session(id) => self
                .engine
                .session_name(id)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            _ => return Reply::err(Errno::EINVAL),
        };
        let mut arg = buf.to_vec();
        arg[8..72].fill(0);
        arg[8..8 + name.len()].copy_from_slice(&name);
        Reply::ok(arg)
    }

    /// Descriptors the process holds (for status): its fixed ones (stdio, epoll, listener,
    /// lock, signal pipe, the listener's spare), one per connection and per descriptor of a
    /// waiting reply, and the engine's.
    pub fn fds_used(&self) -> u64 {
        FD_FIXED + self.admission.fds() + self.tally.total() + self.engine.fds_held()
    }
}

/// Descriptors of the replies waiting in `conn`'s outbox.
fn waiting_fds(conn: &Conn) -> u64 {
    conn.outbox.iter().map(|o| o.fds.len() as u64).sum()
}

/// The answer to a request whose descriptor luod could not receive.
pub const FDS_NOT_RECEIVED: &str =
    "luod could not receive the descriptor: its descriptor table is full";

/// True for the requests that change nothing an upgrade image records.
fn read_only(op: u32) -> bool {
    matches!(
        Op::from_raw(op),
        Some(Op::Ping | Op::Status | Op::List | Op::Upgrade)
    ) || op == uapi::LIVEUPDATE_SESSION_GET_NAME
}

/// True if `fd` is a client's end of one of luod's own connections (a device, control or
/// session descriptor): a socket whose peer is a luod process of this socket's lineage. As the
/// kernel refuses to preserve session descriptors, PRESERVE_FD refuses these with `ENOENT`.
fn is_luod_connection(
    fd: BorrowedFd<'_>,
    st: &rustix::fs::Stat,
    pids: &std::collections::HashSet<i32>,
) -> bool {
    st.st_mode & 0o170000 == 0o140000
        && rustix::net::sockopt::socket_peercred(fd)
            .is_ok_and(|c| pids.contains(&c.pid.as_raw_nonzero().get()))
}
