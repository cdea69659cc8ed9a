//! Handing the whole daemon to a successor process: the orchestrator upgrade and the reboot
//! emulation share one mechanism.
//!
//! ```text
//!  old server                                        successor (new binary)
//!  ----------                                        ----------
//!  write image (sessions, fds, connections)
//!  seal it in a memfd
//!  fork; in the child clear close-on-exec on
//!  exactly the descriptors the image lists, the
//!  image memfd and one end of a socket pair;
//!  exec `luod --takeover FD`                     --> "IMAGE <memfd number>" arrives;
//!  (upgrade: back to serving clients)                validate the image; adopt every listed
//!                                                    descriptor (number and type checked),
//!                                                    close any other; restore the engine,
//!                                                    rebuild connections
//!                                  <-- "READY" (or the reason it refuses, then exits)
//!  upgrade: has anything the image records
//!  changed since it was written? if so, kill
//!  the successor and start another one (at most
//!  three rounds, then stop and copy)
//!  send "GO"; answer the requester; exit         --> start serving
//! ```
//!
//! No descriptor is copied or sent: they are inherited across the exec, under the numbers the
//! image's fd table records.
//!
//! **Preparing while serving.** For an upgrade the old server does not wait for the successor:
//! after the fork it goes back to its loop and keeps answering while the successor adopts,
//! validates and restores (the slow part: tens of milliseconds with thousands of descriptors).
//! Every request that is not read-only, and every connection opened or closed, moves
//! [`Server::epoch`]; the successor's "READY" is taken only if the epoch is still the one the
//! image was written at, so the successor is an exact copy of the server at the moment it
//! takes over, and the pause clients see is the "GO" exchange alone. Otherwise the successor
//! is killed and another one prepares from a new image; after three such rounds the old server
//! stops serving until the next successor is ready (stop and copy), which always converges.
//! A reboot is always stop and copy: it freezes every session first.
//!
//! Until "GO" the old server owns everything: if the successor cannot be started, refuses the
//! image, or dies, the old one unfreezes (for a reboot) and keeps serving. The successor serves
//! nothing until "GO"; if the old server goes away without sending it, the successor exits.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::Errno;
use luo_abi::image::{Image, ImageWriter, MAX_IMAGE_LEN};
use luo_abi::wire::UPGRADE_STOP_AND_COPY;
use luo_client::transport::{self, Recv};
use luo_core::{Direction, Engine, WRITER_VERSION};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tracing::{info, warn};

use crate::conn::{Cred, Kind};
use crate::server::{Reply, Server, Settings};

/// Image part holding the daemon's own state.
pub const DAEMON_PART: &str = "luod";
/// Its compatible; changing the text layout below bumps it.
pub const DAEMON_PART_COMPATIBLE: &str = "luod-daemon-v1";
/// How long the old server waits for the successor's verdict.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The successor of the last successful handover, waiting for "GO".
static SUCCESSOR: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);

/// The upgrade image: the engine's state, the listener, the lock and every connection.
fn upgrade_image(
    server: &Server,
    round: u32,
    flags: u32,
) -> anyhow::Result<(Vec<u8>, Vec<BorrowedFd<'_>>)> {
    let t0 = Instant::now();
    let mut w = ImageWriter::new(server.engine.generation(), WRITER_VERSION);
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    server
        .engine
        .write_snapshot(&mut w, &mut fds)
        .context("Cannot write the engine's state")?;
    let t1 = Instant::now();
    let mut text = settings_text(&server.settings, server.upgrades + 1, true);
    text.push_str(&format!("last_upgrade={round} {flags}\n"));
    add_daemon_fds(server, &mut w, &mut fds, &mut text, true)?;
    w.add_part(DAEMON_PART, DAEMON_PART_COMPATIBLE, text.as_bytes())
        .map_err(|e| anyhow!("{e}"))?;
    let t2 = Instant::now();
    let image = w
        .finish()
        .map_err(|e| anyhow!("Cannot lay out the image: {e}"))?;
    tracing::debug!(
        engine_ms = (t1 - t0).as_secs_f64() * 1e3,
        daemon_ms = (t2 - t1).as_secs_f64() * 1e3,
        layout_ms = t2.elapsed().as_secs_f64() * 1e3,
        "image written"
    );
    Ok((image, fds))
}

/// Orchestrator upgrade, stop and copy: hand everything, connections included, to `binary`
/// while this server waits. The last resort of [`begin_upgrade`]'s rounds.
pub fn upgrade(server: &mut Server, binary: &Path, round: u32) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (image, fds) = upgrade_image(server, round, UPGRADE_STOP_AND_COPY)?;
    let written = t0.elapsed().as_secs_f64() * 1e3;
    let (child, channel) = spawn_successor(binary, &image, &fds)?;
    drop(fds);
    let channel = await_verdict(binary, child, channel, READY_TIMEOUT)?;
    info!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        image_ms = written,
        bytes = image.len(),
        "successor ready (stop and copy)"
    );
    *SUCCESSOR.lock().map_err(|_| anyhow!("poisoned"))? = Some(channel);
    Ok(())
}

/// An upgrade in progress: a successor prepares itself from an image of this server's state
/// while this server keeps serving. The image stays true as long as [`Server::epoch`] does not
/// move; the successor's "READY" is taken only then.
#[derive(Debug)]
pub struct Staging {
    /// The connection that asked for the upgrade, and its request id.
    requester: u64,
    id: u64,
    binary: PathBuf,
    /// 1 for the first successor, 2 for the next one after a change, …
    round: u32,
    /// [`Server::epoch`] when the image was written.
    epoch: u64,
    /// The handover channel, watched by the server's epoll loop.
    pub channel: OwnedFd,
    child: Successor,
    /// When the upgrade was asked for, and when this round's successor must have answered.
    started: Instant,
    deadline: Instant,
}

impl Staging {
    /// Time left before the successor of this round is given up on (rounded up to the next
    /// millisecond, so the loop wakes after the deadline, not just before it).
    pub fn time_left(&self) -> rustix::event::Timespec {
        let left = self.deadline.saturating_duration_since(Instant::now())
            + std::time::Duration::from_millis(1);
        rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    }
}

/// Rounds of preparation in the background before an upgrade falls back to stop and copy.
const STAGED_ROUNDS: u32 = 3;

/// Starts an upgrade asked for by request `id` of connection `requester`: writes the image,
/// starts `binary` on it and returns to serving. The answer is sent later, by
/// [`on_successor`] or [`on_timeout`].
pub fn begin_upgrade(server: &mut Server, requester: u64, id: u64, binary: PathBuf) {
    if server.staging.is_some() {
        server.send_reply(
            requester,
            id,
            Reply::err_msg(Errno::EBUSY, "An upgrade is already in progress"),
        );
        return;
    }
    stage_round(server, requester, id, binary, 1, Instant::now());
}

fn stage_round(
    server: &mut Server,
    requester: u64,
    id: u64,
    binary: PathBuf,
    round: u32,
    started: Instant,
) {
    // Replies waiting in an outbox cannot travel in the image: deliver them first.
    server.deliver_waiting(None);
    let t0 = Instant::now();
    let mut image_ms = 0.0;
    let spawned = upgrade_image(server, round, 0).and_then(|(image, fds)| {
        image_ms = t0.elapsed().as_secs_f64() * 1e3;
        spawn_successor(&binary, &image, &fds)
    });
    match spawned {
        Ok((child, channel)) => {
            info!(
                round,
                image_ms,
                ms = t0.elapsed().as_secs_f64() * 1e3,
                "successor started; serving while it prepares"
            );
            let staging = Staging {
                requester,
                id,
                binary,
                round,
                epoch: server.epoch,
                channel,
                child,
                started,
                deadline: Instant::now() + READY_TIMEOUT,
            };
            if let Err(e) = server.watch_successor(&staging.channel) {
                fail(
                    server,
                    staging,
                    anyhow!("Cannot watch the handover channel: {e}"),
                );
                return;
            }
            server.staging = Some(staging);
        }
        Err(e) => refuse(server, requester, id, &e),
    }
}

/// The successor of the staged upgrade said something (or went away).
pub fn on_successor(server: &mut Server) {
    let Some(staging) = server.staging.take() else {
        return;
    };
    let msg = match transport::recv(staging.channel.as_fd(), false) {
        Ok(Recv::WouldBlock) => {
            server.staging = Some(staging);
            return;
        }
        Ok(Recv::Message(m)) => m,
        Ok(Recv::Closed) | Err(_) => {
            let status = staging.child.wait();
            let e = anyhow!("The new server exited before confirming ({status})");
            server.unwatch_successor(&staging.channel);
            refuse(server, staging.requester, staging.id, &e);
            return;
        }
    };
    server.unwatch_successor(&staging.channel);
    if msg.bytes != b"READY" {
        staging.child.wait();
        let e = refusal(&staging.binary, &msg.bytes);
        refuse(server, staging.requester, staging.id, &e);
        return;
    }
    // Replies that went to an outbox since the image (read-only requests do not move the
    // epoch) must leave before this server does; closing a connection that cannot take them
    // moves the epoch.
    server.deliver_waiting(None);
    if staging.epoch == server.epoch {
        // Nothing changed since the image was written: the successor is exact. Answer,
        // let it go, and leave.
        info!(
            round = staging.round,
            ms = staging.started.elapsed().as_secs_f64() * 1e3,
            binary = %staging.binary.display(),
            "upgrade confirmed by the new server; exiting"
        );
        // The successor first: from here on it serves. Then the answer (the requester waits
        // on its connection and sends nothing else meanwhile), at the lowest priority, so
        // that this process's exit (closing every descriptor) does not take a CPU from it.
        let _ = transport::send(staging.channel.as_fd(), b"GO", &[]);
        let _ = rustix::process::setpriority_process(None, 19);
        server.send_reply(staging.requester, staging.id, Reply::ok(Vec::new()));
        server.deliver_waiting(Some(staging.requester));
        std::process::exit(0);
    }
    // The state moved on while the successor prepared: its image is stale. Start over, or
    // stop and copy after enough rounds.
    info!(
        round = staging.round,
        "state changed while the successor prepared; discarding it"
    );
    let Staging {
        requester,
        id,
        binary,
        round,
        started,
        child,
        channel,
        ..
    } = staging;
    discard(server, child, channel);
    if round < STAGED_ROUNDS {
        stage_round(server, requester, id, binary, round + 1, started);
        return;
    }
    server.deliver_waiting(None);
    match upgrade(server, &binary, round + 1) {
        Ok(()) => {
            info!(binary = %binary.display(), "upgrade confirmed by the new server; exiting");
            server.send_reply(requester, id, Reply::ok(Vec::new()));
            server.deliver_waiting(Some(requester));
            release_successor(server);
            std::process::exit(0);
        }
        Err(e) => refuse(server, requester, id, &e),
    }
}

/// The successor of the staged upgrade did not answer in time.
pub fn on_timeout(server: &mut Server) {
    if let Some(staging) = server.staging.take_if(|s| s.deadline <= Instant::now()) {
        server.unwatch_successor(&staging.channel);
        let e = anyhow!(
            "The new server did not confirm within {} s",
            READY_TIMEOUT.as_secs()
        );
        fail(server, staging, e);
    }
}

/// Connection `key` closed: if it asked for the upgrade in progress, the upgrade is cancelled
/// (nobody waits for its answer any more; closing `luoctl upgrade` stops it).
pub fn requester_gone(server: &mut Server, key: u64) {
    if let Some(staging) = server.staging.take_if(|s| s.requester == key) {
        server.unwatch_successor(&staging.channel);
        info!(
            round = staging.round,
            "the upgrade's requester went away; upgrade cancelled"
        );
        discard(server, staging.child, staging.channel);
    }
}

/// Gives up on a staged successor and answers the requester with `e`.
fn fail(server: &mut Server, staging: Staging, e: anyhow::Error) {
    let (requester, id) = (staging.requester, staging.id);
    discard(server, staging.child, staging.channel);
    refuse(server, requester, id, &e);
}

/// Ends a successor that will not be used; it is reaped later, without waiting here.
fn discard(server: &mut Server, child: Successor, channel: OwnedFd) {
    child.kill();
    drop(channel);
    server.reap_later(child);
}

fn refuse(server: &mut Server, requester: u64, id: u64, e: &anyhow::Error) {
    warn!(error = %format!("{e:#}"), "upgrade refused; this server keeps running");
    server.send_reply(
        requester,
        id,
        Reply::err_msg(Errno::EAGAIN, &format!("{e:#}")),
    );
}

/// Reboot emulation: freeze every outgoing session, hand them (and only them) to a fresh
/// server of the next generation, and cut every connection.
pub fn reboot(server: &mut Server) -> anyhow::Result<()> {
    server
        .engine
        .freeze()
        .context("Freezing the outgoing sessions failed; nothing changed")?;
    let result = (|| {
        let mut w = ImageWriter::new(server.engine.generation() + 1, WRITER_VERSION);
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        server
            .engine
            .write_reboot(&mut w, &mut fds)
            .context("Cannot write the sessions")?;
        let mut text = settings_text(&server.settings, 0, false);
        add_daemon_fds(server, &mut w, &mut fds, &mut text, false)?;
        w.add_part(DAEMON_PART, DAEMON_PART_COMPATIBLE, text.as_bytes())
            .map_err(|e| anyhow!("{e}"))?;
        let image = w
            .finish()
            .map_err(|e| anyhow!("Cannot lay out the image: {e}"))?;
        let (child, channel) = spawn_successor(&server.settings.binary, &image, &fds)?;
        drop(fds);
        await_verdict(&server.settings.binary, child, channel, READY_TIMEOUT)
    })();
    match result {
        Ok(channel) => {
            *SUCCESSOR.lock().map_err(|_| anyhow!("poisoned"))? = Some(channel);
            Ok(())
        }
        Err(e) => {
            server.engine.thaw();
            Err(e)
        }
    }
}

/// Tells the successor to start serving.
pub fn release_successor(_server: &mut Server) {
    if let Ok(mut slot) = SUCCESSOR.lock()
        && let Some(channel) = slot.take()
    {
        let _ = transport::send(channel.as_fd(), b"GO", &[]);
    }
}

fn settings_text(s: &Settings, upgrades: u64, _keep_conns: bool) -> String {
    let mut t = String::new();
    t.push_str(&format!("socket={}\n", s.socket.display()));
    t.push_str(&format!("binary={}\n", s.binary.display()));
    t.push_str(&format!("upgrades={upgrades}\n"));
    let pids: Vec<String> = s.pids.iter().map(i32::to_string).collect();
    t.push_str(&format!("pids={}\n", pids.join(",")));
    for (k, v) in [
        ("sessions", s.limits.sessions),
        ("files", s.limits.files),
        ("bytes", s.limits.bytes),
        ("fds", s.fds.share),
        ("fd_reserve", s.fds.reserve),
    ] {
        if let Some(v) = v {
            t.push_str(&format!("limit.{k}={v}\n"));
        }
    }
    t
}

/// Adds the listener, the lock and (for an upgrade) every connection to the fd table, and
/// describes them in the daemon part's text.
fn add_daemon_fds<'a>(
    server: &'a Server,
    w: &mut ImageWriter,
    fds: &mut Vec<BorrowedFd<'a>>,
    text: &mut String,
    with_conns: bool,
) -> anyhow::Result<()> {
    // Connections and the listener are sockets by construction; only the lock is looked at.
    use luo_abi::image::S_IFSOCK;
    let mut add = |fd: BorrowedFd<'a>, mode: Option<u32>| -> anyhow::Result<u32> {
        let mode = match mode {
            Some(m) => m,
            None => rustix::fs::fstat(fd)?.st_mode & 0o170000,
        };
        let i = w.add_fd(fd.as_raw_fd(), mode);
        fds.push(fd);
        Ok(i)
    };
    text.push_str(&format!(
        "listener={}\n",
        add(server.listener.as_fd(), Some(S_IFSOCK))?
    ));
    text.push_str(&format!("lock={}\n", add(server.lock.as_fd(), None)?));
    if with_conns {
        let mut keys: Vec<&u64> = server.conns.keys().collect();
        keys.sort();
        for key in keys {
            let conn = &server.conns[key];
            let index = add(conn.fd.as_fd(), Some(S_IFSOCK))?;
            let (owner_dir, name) = match conn.kind {
                Kind::Session(id) => {
                    let dir = server
                        .engine
                        .direction(id)
                        .context("session of a connection")?;
                    let name = server
                        .engine
                        .session_name(id)
                        .context("session of a connection")?;
                    (
                        if dir == Direction::Outgoing {
                            "out"
                        } else {
                            "in"
                        },
                        name,
                    )
                }
                _ => ("-", &[][..]),
            };
            use std::fmt::Write as _;
            let _ = write!(
                text,
                "conn={index} {} {} {} {} {owner_dir} ",
                conn.kind.code(),
                conn.cred.pid,
                conn.cred.uid,
                conn.cred.gid
            );
            push_hex(text, name);
            text.push('\n');
        }
    }
    Ok(())
}

/// Appends `b` in lowercase hex.
fn push_hex(text: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    text.reserve(b.len() * 2);
    for &x in b {
        text.push(char::from(DIGITS[usize::from(x >> 4)]));
        text.push(char::from(DIGITS[usize::from(x & 15)]));
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// A started successor process, which this server may still have to stop and reap. Its
/// parent is this server; once this server exits it is reparented.
#[derive(Debug)]
pub struct Successor {
    pid: rustix::process::Pid,
}

impl Successor {
    fn kill(&self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
    }

    /// Waits for it to exit and says how it did.
    fn wait(&self) -> String {
        loop {
            match rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => return describe(status),
                Ok(None) => return String::new(),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return format!("cannot wait for it: {e}"),
            }
        }
    }

    /// Reaps it if it has exited; true once it is gone.
    pub fn try_reap(&self) -> bool {
        !matches!(
            rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::NOHANG),
            Ok(None)
        )
    }
}

fn describe(status: rustix::process::WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exit status: {code}")
    } else if let Some(sig) = status.terminating_signal() {
        format!("signal: {sig}")
    } else {
        format!("wait status {:#x}", status.as_raw())
    }
}

/// First bytes of the message a child whose exec failed leaves on the channel, followed by
/// the errno (4 bytes, little endian).
const EXEC_FAILED: &[u8] = b"EXEC-FAILED ";

/// The error for a successor's message other than "READY".
fn refusal(binary: &Path, bytes: &[u8]) -> anyhow::Error {
    if let Some(errno) = bytes
        .strip_prefix(EXEC_FAILED)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    {
        let e = std::io::Error::from_raw_os_error(i32::from_le_bytes(errno));
        return anyhow!("Cannot start {}: {e}", binary.display());
    }
    anyhow!(
        "The new server refused the image: {}",
        String::from_utf8_lossy(bytes)
    )
}

/// Starts `binary --takeover` with `fds` inherited and tells it where the image is. Returns
/// right after the fork: this server does not wait for the child's exec (the child clears
/// close-on-exec on one descriptor after another, which takes milliseconds with thousands of
/// them); a failed exec is reported on the channel.
fn spawn_successor(
    binary: &Path,
    image: &[u8],
    fds: &[BorrowedFd<'_>],
) -> anyhow::Result<(Successor, OwnedFd)> {
    use std::os::unix::ffi::OsStrExt;
    let memfd = rustix::fs::memfd_create(
        "luod-image",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(image)?;
    let memfd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let devnull = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut inherit: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    inherit.push(memfd.as_raw_fd());
    inherit.push(theirs.as_raw_fd());
    // Everything the child needs is made before the fork: it allocates nothing.
    let path = std::ffi::CString::new(binary.as_os_str().as_bytes())
        .with_context(|| format!("Cannot start {}: NUL in the path", binary.display()))?;
    let channel_arg = std::ffi::CString::new(theirs.as_raw_fd().to_string())?;
    let argv = [
        path.as_ptr(),
        c"--takeover".as_ptr(),
        channel_arg.as_ptr(),
        std::ptr::null(),
    ];
    let (theirs_raw, devnull_raw) = (theirs.as_raw_fd(), devnull.as_raw_fd());
    let t_spawn = Instant::now();
    // SAFETY: luod is single-threaded, so the child is a full copy with no lock held by another
    // thread. The child only makes system calls (fcntl, dup2, execv, send, _exit: all
    // async-signal-safe) on descriptor numbers open in it (it inherited the whole table) and
    // on memory prepared above, and leaves with execv or _exit, never returning into Rust.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; this is the child, which never returns from this block.
        unsafe {
            let mut failed = 0;
            for &raw in &inherit {
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    failed = *libc::__errno_location();
                }
            }
            if failed == 0 && libc::dup2(devnull_raw, 0) == 0 {
                libc::execv(path.as_ptr(), argv.as_ptr());
                failed = *libc::__errno_location();
            }
            let mut msg = [0u8; EXEC_FAILED.len() + 4];
            msg[..EXEC_FAILED.len()].copy_from_slice(EXEC_FAILED);
            msg[EXEC_FAILED.len()..].copy_from_slice(&failed.to_le_bytes());
            libc::send(
                theirs_raw,
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            );
            libc::_exit(127);
        }
    }
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| {
        anyhow!(
            "Cannot start {}: {}",
            binary.display(),
            std::io::Error::last_os_error()
        )
    })?;
    let child = Successor { pid };
    info!(
        ms = t_spawn.elapsed().as_secs_f64() * 1e3,
        "successor forked"
    );
    drop((theirs, devnull));
    let header = format!("IMAGE {}", memfd.as_raw_fd());
    if let Err(e) = transport::send(ours.as_fd(), header.as_bytes(), &[]) {
        // Usually the new binary already exited (EPIPE). If it said why before exiting, that
        // is the answer; otherwise report how it exited, as when it exits later.
        child.kill();
        let status = child.wait();
        if let Ok(Recv::Message(m)) = transport::recv(ours.as_fd(), false) {
            return Err(refusal(binary, &m.bytes));
        }
        bail!("The new server exited before confirming ({status}; {e})");
    }
    Ok((child, ours))
}

/// Waits up to `timeout` for the successor's verdict on `channel`: the channel back on
/// "READY", the reason otherwise.
fn await_verdict(
    binary: &Path,
    child: Successor,
    ours: OwnedFd,
    timeout: std::time::Duration,
) -> anyhow::Result<OwnedFd> {
    let mut pfd = [rustix::event::PollFd::new(
        &ours,
        rustix::event::PollFlags::IN,
    )];
    // A signal interrupts the wait (EINTR): wait again for what is left, since an interrupted
    // poll is not a timeout.
    let deadline = std::time::Instant::now() + timeout;
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let limit = rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut pfd, Some(&limit)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.unwrap_or(0),
        }
    };
    if ready == 0 {
        child.kill();
        child.wait();
        bail!(
            "The new server did not confirm within {} s",
            timeout.as_secs()
        );
    }
    match transport::recv(ours.as_fd(), true) {
        // Reaped by whoever adopts it once this server exits; never waited for here.
        Ok(Recv::Message(m)) if m.bytes == b"READY" => Ok(ours),
        Ok(Recv::Message(m)) => {
            child.wait();
            Err(refusal(binary, &m.bytes))
        }
        _ => {
            let status = child.wait();
            bail!("The new server exited before confirming ({status})")
        }
    }
}

/// What a successor adopted before anything else was opened: the channel, the image and
/// every descriptor the image lists (by fd-table slot).
pub struct Adopted {
    channel: OwnedFd,
    image: Vec<u8>,
    fds: Vec<Option<OwnedFd>>,
    stats: Vec<Option<rustix::fs::Stat>>,
}

/// What a successor starts from.
pub struct Inherited {
    pub server: Server,
    pub channel: OwnedFd,
}

/// Adopts a descriptor this process inherited by number.
fn adopt_raw(raw: i32) -> anyhow::Result<OwnedFd> {
    ensure!(raw > 2, "Descriptor {raw} cannot be inherited");
    // SAFETY: `raw` was named by the predecessor, which cleared close-on-exec on exactly the
    // descriptors it lists before exec; callers check that each number is adopted once (no two
    // OwnedFd own one number), and nothing in this process has opened, adopted or closed
    // descriptors yet, so the number is open and owned by nobody else. fcntl below proves it
    // is open before anything else uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Err(e) = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC) {
        std::mem::forget(fd);
        bail!("Descriptor {raw} is not open: {e}");
    }
    Ok(fd)
}

/// Successor, first step: runs before this process opens anything. Adopts the channel, reads
/// the image, adopts every descriptor it lists (checking number and type) and closes every other
/// inherited descriptor.
pub fn adopt(channel_raw: i32) -> anyhow::Result<Adopted> {
    let channel = adopt_raw(channel_raw)?;
    let t0 = Instant::now();
    let adopted = adopt_rest(&channel);
    info!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "inherited descriptors adopted"
    );
    match adopted {
        Ok((image, fds, stats)) => Ok(Adopted {
            channel,
            image,
            fds,
            stats,
        }),
        Err(e) => {
            let _ = transport::send(channel.as_fd(), format!("{e:#}").as_bytes(), &[]);
            Err(e)
        }
    }
}

type AdoptedParts = (Vec<u8>, Vec<Option<OwnedFd>>, Vec<Option<rustix::fs::Stat>>);

fn adopt_rest(channel: &OwnedFd) -> anyhow::Result<AdoptedParts> {
    let first = match transport::recv(channel.as_fd(), true)? {
        Recv::Message(m) => m,
        _ => bail!("The predecessor closed the channel"),
    };
    let header = String::from_utf8_lossy(&first.bytes).into_owned();
    let image_raw: i32 = header
        .strip_prefix("IMAGE ")
        .and_then(|n| n.parse().ok())
        .context("Malformed image header")?;
    ensure!(
        image_raw != channel.as_raw_fd(),
        "Image and channel share a descriptor"
    );
    let memfd = adopt_raw(image_raw)?;
    let size = rustix::fs::fstat(&memfd)?.st_size as u64;
    ensure!(
        size <= MAX_IMAGE_LEN,
        "Image of {size} bytes is over the limit"
    );
    let mut image = vec![0u8; size as usize];
    let mut done = 0;
    while done < image.len() {
        let n = rustix::io::pread(&memfd, &mut image[done..], done as u64)?;
        ensure!(n > 0, "Image shorter than its size");
        done += n;
    }
    let parsed = Image::parse(&image).map_err(|e| anyhow!("Invalid handover image: {e}"))?;
    // Everything this process inherited becomes close-on-exec at once.
    close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC)?;
    let mut keep = vec![channel.as_raw_fd(), memfd.as_raw_fd()];
    let mut fds = Vec::with_capacity(parsed.fds().len());
    let mut stats = Vec::with_capacity(parsed.fds().len());
    for (i, entry) in parsed.fds().iter().enumerate() {
        let raw = entry.fd.get();
        ensure!(raw > 2, "Descriptor {raw} (slot {i}) cannot be inherited");
        let fd = {
            // SAFETY: fstat only reads the descriptor table entry; a closed number gives EBADF.
            let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
            let st = rustix::fs::fstat(borrowed)
                .with_context(|| format!("Descriptor {raw} (slot {i}) is not open"))?;
            let mode = st.st_mode & 0o170000;
            ensure!(
                mode == entry.mode_type.get(),
                "Descriptor {raw} (slot {i}) has file type {mode:o}, the image says {:o}",
                entry.mode_type.get()
            );
            keep.push(raw);
            stats.push(Some(st));
            raw
        };
        fds.push(fd);
    }
    keep.sort_unstable();
    if let Some(w) = keep.windows(2).find(|w| w[0] == w[1]) {
        bail!("Descriptor {} is listed twice", w[0]);
    }
    close_strays(&keep)?;
    // SAFETY: every number was checked open above, is listed once (no duplicates, and neither
    // the channel nor the image), and this process has opened nothing since it started, so no
    // other owner exists; from here each is owned by exactly one OwnedFd.
    let fds = fds
        .into_iter()
        .map(|raw| Some(unsafe { OwnedFd::from_raw_fd(raw) }))
        .collect();
    Ok((image, fds, stats))
}

const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// `close_range(2)`, which rustix lacks.
fn close_range(first: u32, last: u32, flags: u32) -> anyhow::Result<()> {
    // SAFETY: close_range takes three integers and touches only this process's descriptor
    // table. Closing (flags 0) is used only on numbers no OwnedFd owns (see `close_strays`).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    ensure!(rc == 0, "close_range: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Closes every descriptor above stderr that is not in `keep` (sorted): whatever was leaked
/// into this process is closed, as the image contract requires. One system call per gap.
fn close_strays(keep: &[i32]) -> anyhow::Result<()> {
    let mut next = 3u32;
    for &k in keep {
        let k = k as u32;
        if k > next {
            close_range(next, k - 1, 0)?;
        }
        next = next.max(k + 1);
    }
    close_range(next, u32::MAX, 0)
}

/// Successor, second step: restore the engine and the connections, and confirm to the
/// predecessor. On a refusal the reason is sent back before the error is returned.
pub fn takeover(adopted: Adopted, signals: OwnedFd, fd_limit: u64) -> anyhow::Result<Inherited> {
    let Adopted {
        channel,
        image,
        mut fds,
        stats,
    } = adopted;
    match build_successor(&image, &mut fds, &stats, signals, fd_limit) {
        Ok(server) => {
            transport::send(channel.as_fd(), b"READY", &[])?;
            Ok(Inherited { server, channel })
        }
        Err(e) => {
            let _ = transport::send(channel.as_fd(), format!("{e:#}").as_bytes(), &[]);
            Err(e)
        }
    }
}

/// Blocks until the predecessor says "GO". Anything else (it went away, or discarded this
/// successor because its state moved on) means this process must not serve.
pub fn wait_go(channel: &OwnedFd) -> anyhow::Result<()> {
    match transport::recv(channel.as_fd(), true) {
        Ok(Recv::Message(m)) if m.bytes == b"GO" => Ok(()),
        Ok(Recv::Message(m)) => bail!(
            "The predecessor kept serving ({})",
            String::from_utf8_lossy(&m.bytes)
        ),
        _ => bail!("The predecessor went away without handing over; not serving"),
    }
}

fn build_successor(
    image: &[u8],
    fds: &mut [Option<OwnedFd>],
    stats: &[Option<rustix::fs::Stat>],
    signals: OwnedFd,
    fd_limit: u64,
) -> anyhow::Result<Server> {
    let parsed = Image::parse(image).map_err(|e| anyhow!("Invalid handover image: {e}"))?;
    let part = parsed
        .part(DAEMON_PART)
        .context("The image has no daemon part")?;
    ensure!(
        part.compatible == DAEMON_PART_COMPATIBLE,
        "Unknown daemon part {}",
        part.compatible
    );
    let text = std::str::from_utf8(part.data)
        .context("Daemon part is not UTF-8")?
        .to_owned();
    let registry = crate::registry()?;
    let t0 = Instant::now();
    let engine = Engine::restore_with_stats(registry, image, fds, stats)
        .context("Restoring the sessions")?;
    info!(ms = t0.elapsed().as_secs_f64() * 1e3, "engine restored");
    let mut settings = Settings {
        socket: Default::default(),
        limits: Default::default(),
        fds: Default::default(),
        binary: Default::default(),
        pids: Vec::new(),
    };
    let mut upgrades = 0;
    let mut last_upgrade = (0, 0);
    let mut listener = None;
    let mut lock = None;
    let mut conns = Vec::new();
    let mut take = |i: &str| -> anyhow::Result<OwnedFd> {
        let i: usize = i.parse().context("descriptor index")?;
        fds.get_mut(i)
            .and_then(Option::take)
            .with_context(|| format!("descriptor {i} missing"))
    };
    for line in text.lines() {
        let (k, v) = line.split_once('=').context("Malformed daemon part")?;
        match k {
            "socket" => settings.socket = v.into(),
            "binary" => settings.binary = v.into(),
            "upgrades" => upgrades = v.parse()?,
            "last_upgrade" => {
                let (r, f) = v.split_once(' ').context("Malformed last_upgrade")?;
                last_upgrade = (r.parse()?, f.parse()?);
            }
            "pids" => {
                settings.pids = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "limit.sessions" => settings.limits.sessions = Some(v.parse()?),
            "limit.files" => settings.limits.files = Some(v.parse()?),
            "limit.bytes" => settings.limits.bytes = Some(v.parse()?),
            "limit.fds" => settings.fds.share = Some(v.parse()?),
            "limit.fd_reserve" => settings.fds.reserve = Some(v.parse()?),
            "listener" => listener = Some(take(v)?),
            "lock" => lock = Some(take(v)?),
            "conn" => {
                let f: Vec<&str> = v.split(' ').collect();
                ensure!(f.len() == 7, "Malformed connection record");
                let fd = take(f[0])?;
                let cred = Cred {
                    pid: f[2].parse()?,
                    uid: f[3].parse()?,
                    gid: f[4].parse()?,
                };
                conns.push((
                    fd,
                    f[1].parse::<u32>()?,
                    cred,
                    f[5].to_owned(),
                    unhex(f[6]).context("name")?,
                ));
            }
            _ => bail!("Unknown daemon setting {k}"),
        }
    }
    let mut engine = engine;
    engine.set_limits(settings.limits);
    let listener = listener.context("No listener in the image")?;
    let lock = lock.context("No lock in the image")?;
    let mut server = Server::new(engine, settings, listener, lock, signals, fd_limit)?;
    server.upgrades = upgrades;
    server.last_upgrade = last_upgrade;
    for (fd, code, cred, dir, name) in conns {
        let kind = match code {
            0 => Kind::Control,
            1 => Kind::Device,
            2 => {
                let id = server
                    .engine
                    .find_session(cred.uid, dir != "out", &name)
                    .context("A connection's session is not in the image")?;
                Kind::Session(id)
            }
            3 => Kind::Detached,
            _ => bail!("Unknown connection kind {code}"),
        };
        rustix::io::ioctl_fionbio(&fd, true)?;
        server.add_conn(fd, kind, cred)?;
    }
    Ok(server)
}
