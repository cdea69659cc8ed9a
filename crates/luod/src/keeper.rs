//! The keeper: luod's main process. It starts the server, and starts another one when a server
//! dies, from what the dead one left: its descriptor table, kept alive by its holder
//! (`luo_sys::holder`), and its checkpoint and journal, which are memfds in that table. Its pid
//! never changes, so a service manager tracks it; it never reads a client's message.
//!
//! ```text
//!  keeper                          server (child)                 holder (child, shares the
//!  ------                          ------                         server's descriptor table)
//!  start `luod --serve`   ----->   bind, serve; make the state
//!                         <-----   HELLO <pid> + an answer socket of its own
//!  a control pair and a reply pair; HOLDER <pid> <restarts> <recovery µs> <keeper pid>
//!  + the server's reply end + the holder's end, on that answer socket --->
//!                                  spawn the holder  ------------> waits for commands
//!                         <-----   SERVING <pid> <holder pid>
//!  GRANTED (on its reply pair) --> only now does it answer clients
//!  the previous holder, if any: exit
//!  ...
//!  the server dies (any signal, any exit but 0 and 3):
//!  (after a back-off if it keeps dying)  start  ------------------> fork, exec
//!                                  `luod --recover`: rebuild from the checkpoint + journal,
//!                                  answer again what the dead one had answered but not sent,
//!                                  HELLO, ... as above
//! ```
//!
//! The server's end of the keeper's channel crosses every start (inherited, and recorded in
//! every image), so whichever process serves reaches the keeper. That end is shared: two
//! servers can be starting at once (a successor whose predecessor died, and the server the
//! keeper started from the dead one's holder), and one reading it could take the other's
//! answer. So the keeper answers each HELLO on the socket sent with it, and writes nothing on
//! the shared end (except to a server older than this keeper, which sends none). A server that ends with exit
//! status 0 shut down (SIGTERM): the keeper tells the holder to exit and exits. Status
//! [`EXIT_HANDED_OVER`] means a successor (an upgrade or a reboot) serves now: it is this
//! process's descendant, so the keeper, a child subreaper, adopts it, and it says HELLO.
//!
//! **One server at a time.** Two servers can be ready to serve at once: a server that dies
//! just after it told its upgrade successor GO leaves that successor, which holds the whole
//! state, and the server the keeper starts from the dead one's holder, which rebuilds the
//! same state. Both must not answer clients (each would apply requests to a state the other
//! does not see). So a server answers no client before the keeper grants it: the keeper
//! numbers the grants, and grants SERVING only to a server that said HELLO since the last
//! grant. The first of the two to say SERVING is granted; the keeper kills the server it
//! started from the holder if the successor won, and refuses the successor if the other won
//! (it exits with [`EXIT_REFUSED`], having answered nobody).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use luo_client::transport::{self, Recv};
use luo_sys::holder::{self, HolderConfig, HolderControl};
use rustix::process::{Pid, WaitOptions};
use tracing::{info, warn};

/// Exit status of a server whose successor serves now.
pub const EXIT_HANDED_OVER: i32 = 3;

/// Exit status of a server the keeper refused: another server was granted first.
pub const EXIT_REFUSED: i32 = 4;

/// The keeper refused to let this server serve (see the module doc); it must exit having
/// answered nobody.
#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("The keeper granted another server first; this one exits without serving")
    }
}

impl std::error::Error for Refused {}

/// What [`prepare`] leaves for [`serving`]: the holder spawned, and the channel the keeper
/// grants on (`None` from a keeper that does not grant).
#[derive(Debug)]
pub struct Joined {
    holder: u32,
    reply: Option<OwnedFd>,
}

/// How long a server waits for the keeper's grant after SERVING.
const GRANT_WAIT: Duration = Duration::from_secs(10);

/// A server that dies before it serves, or sooner than this after it said SERVING (a crash on
/// the first request it reads again, say), counts toward the back-off of a crash loop; one
/// that served longer is replaced at once, and the back-off starts over.
const QUICK_DEATH: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the keeper: starts `luod --serve <server_args>` and keeps a server running until one
/// shuts down.
pub fn keep(
    server_args: Vec<OsString>,
    signals: OwnedFd,
    handed: crate::systemd::Handed,
) -> anyhow::Result<()> {
    let children = signal_pipe_of(signal_hook::consts::SIGCHLD)?;
    let reexec = signal_pipe_of(signal_hook::consts::SIGUSR2)?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("Cannot become a child subreaper")?;
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    // The server's end crosses the exec of the first server.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())?;
    let exe = std::env::current_exe().context("Cannot find luod's own binary")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg0(argv0())
        .arg("--serve")
        .arg(theirs.as_raw_fd().to_string())
        .args(&server_args);
    // What systemd handed over (the socket, the stored descriptors) goes to the first server;
    // the keeper keeps no copy.
    crate::systemd::hand_to_server(&handed, &mut cmd)?;
    let child = cmd
        .spawn()
        .with_context(|| format!("Cannot start {}", exe.display()))?;
    drop(theirs);
    drop(handed);
    let mut k = Keeper {
        channel: ours,
        server: Pid::from_raw(child.id() as i32),
        started: Instant::now(),
        serving_since: None,
        holder: None,
        offered: Vec::new(),
        grants: 0,
        recovering: None,
        restarts: 0,
        died: None,
        last_recovery_us: 0,
        backoff: BACKOFF_FIRST,
        retry_at: None,
        stopping: false,
    };
    info!(pid = child.id(), "keeper started the server");
    k.run(&signals, &children, &reexec)
}

/// A keeper that re-executed itself (SIGUSR2): same pid, same children, the channel and the
/// holder's control kept across the exec under the numbers in `spec`
/// (`channel,holder,server,restarts,recovery_us`; holder -1 and server 0 for none).
pub fn resume(spec: &str, signals: OwnedFd) -> anyhow::Result<()> {
    let children = signal_pipe_of(signal_hook::consts::SIGCHLD)?;
    let reexec = signal_pipe_of(signal_hook::consts::SIGUSR2)?;
    let f: Vec<&str> = spec.split(',').collect();
    anyhow::ensure!(
        f.len() == 5,
        "--keeper-resume takes five numbers, not {spec:?}"
    );
    let n = |i: usize| -> anyhow::Result<i64> {
        f[i].parse()
            .with_context(|| format!("--keeper-resume field {i}"))
    };
    let channel = crate::handover::adopt_inherited(n(0)? as i32)?;
    let holder = match n(1)? {
        h if h >= 0 => Some(HolderControl::from_fd(crate::handover::adopt_inherited(
            h as i32,
        )?)),
        _ => None,
    };
    let mut k = Keeper {
        channel,
        server: Pid::from_raw(n(2)? as i32),
        started: Instant::now(),
        serving_since: None,
        holder,
        offered: Vec::new(),
        grants: 0,
        recovering: None,
        restarts: n(3)? as u32,
        died: None,
        last_recovery_us: n(4)? as u64,
        backoff: BACKOFF_FIRST,
        retry_at: None,
        stopping: false,
    };
    info!(
        server = n(2)?,
        restarts = k.restarts,
        "keeper re-executed itself; same pid, same server"
    );
    // A server that died during the exec is reaped now.
    if let Some(done) = k.reap()? {
        return done;
    }
    k.run(&signals, &children, &reexec)
}

/// A pipe written to on every `signal`, so the keeper's poll wakes at once.
fn signal_pipe_of(signal: i32) -> anyhow::Result<OwnedFd> {
    let (read, write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    signal_hook::low_level::pipe::register(signal, write)?;
    Ok(read)
}

#[derive(Debug)]
struct Keeper {
    channel: OwnedFd,
    /// The process serving (or starting to), if any.
    server: Option<Pid>,
    started: Instant,
    /// When the current server said SERVING (`None` until it does).
    serving_since: Option<Instant>,
    /// The holder of the current server's table.
    holder: Option<HolderControl>,
    /// Servers that said HELLO and not yet SERVING.
    offered: Vec<Offer>,
    /// Grants made so far; a server is granted only if it said HELLO since the last one.
    grants: u64,
    /// The server the keeper started from a holder, until it is granted.
    recovering: Option<Pid>,
    restarts: u32,
    /// When the last server died, until its successor serves.
    died: Option<Instant>,
    last_recovery_us: u64,
    backoff: Duration,
    /// When to try again to start a server, after a start that failed.
    retry_at: Option<Instant>,
    stopping: bool,
}

/// A server that said HELLO: its holder's channel, the grant count when it said it, and the
/// keeper's end of its reply pair.
#[derive(Debug)]
struct Offer {
    pid: i32,
    holder: HolderControl,
    grants: u64,
    reply: OwnedFd,
}

impl Keeper {
    fn run(
        &mut self,
        signals: &OwnedFd,
        children: &OwnedFd,
        reexec: &OwnedFd,
    ) -> anyhow::Result<()> {
        loop {
            let mut fds = [
                rustix::event::PollFd::new(&self.channel, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(signals, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(children, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(reexec, rustix::event::PollFlags::IN),
            ];
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let (chan, sig, child) = (
                fds[0].revents().contains(rustix::event::PollFlags::IN),
                fds[1].revents().contains(rustix::event::PollFlags::IN),
                fds[2].revents().contains(rustix::event::PollFlags::IN),
            );
            if child {
                let mut buf = [0u8; 64];
                let _ = rustix::io::read(children, &mut buf);
            }
            if fds[3].revents().contains(rustix::event::PollFlags::IN) {
                let mut buf = [0u8; 64];
                let _ = rustix::io::read(reexec, &mut buf);
                if let Err(e) = self.reexec() {
                    warn!(error = %format!("{e:#}"), "the keeper could not re-execute itself; it keeps running");
                }
            }
            if sig {
                let mut buf = [0u8; 64];
                let n = rustix::io::read(signals, &mut buf).unwrap_or(0);
                if n > 0 && !self.stopping {
                    self.stopping = true;
                    info!("SIGTERM: stopping the server");
                    if let Some(pid) = self.server {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
            }
            if chan {
                // Every message waiting: a SERVING must be seen before the death of its
                // sender is.
                while self.on_message() {}
            }
            if let Some(done) = self.reap()? {
                return done;
            }
            if self.server.is_none()
                && !self.stopping
                && self.retry_at.is_some_and(|t| Instant::now() >= t)
            {
                self.try_restart();
            }
            // A successor its predecessor discarded is not the keeper's child: its holder's
            // channel goes (ending that holder) once the process is gone.
            self.offered.retain(|o| {
                Pid::from_raw(o.pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
            });
        }
    }

    /// Handles one message from a server; false when none was waiting.
    fn on_message(&mut self) -> bool {
        let msg = match transport::recv(self.channel.as_fd(), false) {
            Ok(Recv::Message(m)) => m,
            _ => return false,
        };
        let text = String::from_utf8_lossy(&msg.bytes).into_owned();
        let mut words = text.split(' ');
        match (
            words.next(),
            words.next().and_then(|p| p.parse::<i32>().ok()),
        ) {
            (Some("HELLO"), Some(pid)) => {
                let (ctl, end) = match holder::channel() {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "cannot make a holder channel");
                        return true;
                    }
                };
                let (reply, their_reply) = match rustix::net::socketpair(
                    rustix::net::AddressFamily::UNIX,
                    rustix::net::SocketType::SEQPACKET,
                    rustix::net::SocketFlags::CLOEXEC,
                    None,
                ) {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "cannot make a reply channel");
                        return true;
                    }
                };
                let hello = format!(
                    "HOLDER {pid} {} {} {}",
                    self.restarts,
                    self.last_recovery_us,
                    std::process::id()
                );
                // The answer goes on the socket the server sent with its HELLO, which only it
                // reads. The shared end is read by every server that is starting (a successor
                // and a server started from a holder can both be waiting), and a server that
                // reads another's answer cannot give it back; it is used only for a server
                // that sent no socket (one older than this keeper).
                let answer_to = msg.fds.first().map_or(self.channel.as_fd(), AsFd::as_fd);
                // The holder's end last: a server that knows no grants takes the last one.
                if let Err(e) = transport::send(
                    answer_to,
                    hello.as_bytes(),
                    &[their_reply.as_fd(), end.as_fd()],
                ) {
                    warn!(error = %e, "cannot answer the server");
                    return true;
                }
                self.offered.push(Offer {
                    pid,
                    holder: ctl,
                    grants: self.grants,
                    reply,
                });
                if self.server.is_none() {
                    self.server = Pid::from_raw(pid);
                    self.started = Instant::now();
                }
            }
            (Some("SERVING"), Some(pid)) => {
                let Some(i) = self.offered.iter().position(|o| o.pid == pid) else {
                    return true;
                };
                let offer = self.offered.swap_remove(i);
                if offer.grants != self.grants {
                    // Another server was granted since this one said HELLO.
                    warn!(pid, "refusing a server: another one serves already");
                    let _ = transport::send(offer.reply.as_fd(), b"REFUSED", &[]);
                    return true;
                }
                self.grants += 1;
                // With the counts as they are now: a restart may have come since HELLO.
                let granted = format!("GRANTED {} {}", self.restarts, self.last_recovery_us);
                if let Err(e) = transport::send(offer.reply.as_fd(), granted.as_bytes(), &[]) {
                    warn!(pid, error = %e, "cannot grant a server");
                }
                if let Some(other) = self.recovering.take()
                    && other.as_raw_nonzero().get() != pid
                {
                    // The successor of a server that died after GO won: the server started
                    // from that one's holder must not serve too.
                    warn!(
                        pid = other.as_raw_nonzero().get(),
                        "stopping the server started from the holder: the successor serves"
                    );
                    let _ = rustix::process::kill_process(other, rustix::process::Signal::KILL);
                }
                if let Some(mut old) = self.holder.replace(offer.holder) {
                    let _ = old.exit();
                }
                self.server = Pid::from_raw(pid);
                self.serving_since = Some(Instant::now());
                if let Some(died) = self.died.take() {
                    info!(
                        pid,
                        restarts = self.restarts,
                        ms = died.elapsed().as_secs_f64() * 1e3,
                        "a new server serves"
                    );
                }
            }
            _ => warn!(message = %text, "unknown message from the server"),
        }
        true
    }

    /// Reaps every child that exited; `Some` when the keeper must end.
    fn reap(&mut self) -> anyhow::Result<Option<anyhow::Result<()>>> {
        loop {
            let (pid, status) = match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => (pid, status),
                Ok(None) | Err(rustix::io::Errno::CHILD) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            // A holder channel offered to a server that died unused: dropping it ends the
            // holder that server may have spawned (it exits when its keeper's end closes).
            let raw = pid.as_raw_nonzero().get();
            let was_offered = self.offered.iter().any(|o| o.pid == raw);
            self.offered.retain(|o| o.pid != raw);
            if self.recovering == Some(pid) {
                self.recovering = None;
            }
            // Between an old server's exit after a handover and its successor's SERVING, no
            // server is current: a successor that dies then is the one that would have served.
            let successor = self.server.is_none() && was_offered;
            if Some(pid) != self.server && !successor {
                // A holder told to exit, an old server after a handover, a successor its
                // predecessor discarded: nothing to do.
                continue;
            }
            self.server = None;
            let code = status.exit_status();
            if code == Some(0) {
                info!("the server shut down; the keeper exits");
                if let Some(mut h) = self.holder.take() {
                    let _ = h.exit();
                }
                return Ok(Some(Ok(())));
            }
            if code == Some(EXIT_HANDED_OVER) && !self.stopping {
                // Its successor says HELLO when it is ready.
                continue;
            }
            if self.stopping {
                return Ok(Some(Ok(())));
            }
            let how = match (code, status.terminating_signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => format!("wait status {:#x}", status.as_raw()),
            };
            if self.holder.is_none() {
                // The first server never served (it refused its settings, say): nothing is
                // held, and luod fails to start as the server did.
                return Ok(Some(Err(anyhow::anyhow!(
                    "The server did not start ({how}); see its message above"
                ))));
            }
            let quick = self
                .serving_since
                .take()
                .is_none_or(|t| t.elapsed() < QUICK_DEATH);
            warn!(pid = pid.as_raw_nonzero().get(), how = %how, "the server died; starting another from its state");
            self.died.get_or_insert_with(Instant::now);
            if quick {
                std::thread::sleep(self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            } else {
                self.backoff = BACKOFF_FIRST;
            }
            self.try_restart();
        }
    }

    /// Replaces the keeper's program with its binary as it is on disk now (SIGUSR2), keeping
    /// its pid, its children, its channel and its holder's control. Returns only on failure.
    fn reexec(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.offered.is_empty() && self.died.is_none(),
            "a server is starting; try again once it serves"
        );
        let exe = std::env::current_exe().context("Cannot find luod's own binary")?;
        let keep: Vec<std::os::fd::BorrowedFd<'_>> = std::iter::once(self.channel.as_fd())
            .chain(self.holder.as_ref().map(AsFd::as_fd))
            .collect();
        for fd in &keep {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
        }
        let spec = format!(
            "{},{},{},{},{}",
            self.channel.as_raw_fd(),
            self.holder.as_ref().map_or(-1, |h| h.as_fd().as_raw_fd()),
            self.server.map_or(0, |p| p.as_raw_nonzero().get()),
            self.restarts,
            self.last_recovery_us
        );
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if let Some(i) = args.iter().position(|a| a == "--keeper-resume") {
            args.truncate(i);
        }
        info!(binary = %exe.display(), "the keeper re-executes itself");
        let err = std::process::Command::new(&exe)
            .arg0(argv0())
            .args(args.iter().skip(1))
            .arg("--keeper-resume")
            .arg(&spec)
            .exec();
        for fd in keep {
            let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
        }
        Err(anyhow::anyhow!("exec {}: {err}", exe.display()))
    }

    /// Starts a server from the holder, or, if that fails, tries again after the back-off:
    /// the keeper never gives up the holder, whatever goes wrong.
    fn try_restart(&mut self) {
        if let Err(e) = self.restart() {
            warn!(error = %format!("{e:#}"), retry_ms = self.backoff.as_millis() as u64, "cannot start a server; trying again");
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.retry_at = None;
        let Some(holder) = self.holder.as_mut() else {
            bail!("The server died before it had a holder: nothing to start from");
        };
        let died = self.died.unwrap_or_else(Instant::now);
        let pid = holder
            .start()
            .map_err(|e| anyhow::anyhow!("The holder cannot start a server: {e}"))?;
        self.restarts += 1;
        self.last_recovery_us = died.elapsed().as_micros() as u64;
        self.server = Some(pid);
        self.recovering = Some(pid);
        self.started = Instant::now();
        info!(pid = pid.as_raw_nonzero().get(), "a new server is starting");
        Ok(())
    }
}

/// How a server that joins its keeper came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The keeper's first server.
    First,
    /// Started by the keeper from a dead server's holder (`--recover`).
    Recovered,
    /// An upgrade's or a reboot's successor, joining while its predecessor still serves.
    Successor,
}

/// The server's side: says HELLO, gets its holder's channel, spawns the holder (set up to
/// start `luod --recover` from this server's checkpoint and journal), and says SERVING.
pub fn join(server: &mut crate::server::Server, log: &str, role: Role) -> anyhow::Result<()> {
    if let Some(joined) = prepare(server, log, role)? {
        serving(server, joined)?;
    }
    Ok(())
}

/// The first half of [`join`]: HELLO, the holder's channel, the holder spawned. A successor
/// does this while its predecessor still serves; the keeper changes nothing until
/// [`serving`]. `None` without a keeper.
pub fn prepare(
    server: &mut crate::server::Server,
    log: &str,
    role: Role,
) -> anyhow::Result<Option<Joined>> {
    let Some(channel) = server.keeper_channel.as_ref() else {
        return Ok(None);
    };
    let me = std::process::id();
    // The keeper answers on a socket of this server's own: the shared end is read by every
    // server that is starting, and one would take (and drop) another's answer.
    let (answer, answer_theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    if role == Role::Successor {
        crate::failpoint::delay("LUOD_FAILPOINT_HELLO_DELAY_MS");
    }
    transport::send(
        channel.as_fd(),
        format!("HELLO {me}").as_bytes(),
        &[answer_theirs.as_fd()],
    )?;
    drop(answer_theirs);
    let mut answer = Some(answer);
    if role == Role::Recovered {
        crate::failpoint::delay("LUOD_FAILPOINT_HOLDER_DELAY_MS");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (end, reply, restarts, recovery_us, keeper_pid) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("The keeper did not answer");
        }
        // A keeper older than this server answers on the shared end instead (and closes the
        // socket it was sent: then only the shared end is watched).
        let own = answer.as_ref().unwrap_or(channel);
        let mut pfd = [
            rustix::event::PollFd::new(own, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(channel, rustix::event::PollFlags::IN),
        ];
        let t = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut pfd, Some(&t)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let shared = !pfd[1].revents().is_empty();
        let from = if shared { channel.as_fd() } else { own.as_fd() };
        let m = match transport::recv(from, false)? {
            Recv::Message(m) => m,
            Recv::WouldBlock => continue,
            Recv::Closed if !shared && answer.is_some() => {
                answer = None;
                continue;
            }
            Recv::Closed => bail!("The keeper is gone"),
        };
        let text = String::from_utf8_lossy(&m.bytes).into_owned();
        let w: Vec<&str> = text.split(' ').collect();
        // An answer to a predecessor that died before reading it is dropped with its fd.
        if w.len() == 5 && w[0] == "HOLDER" && w[1] == me.to_string() {
            let mut fds = m.fds;
            let end = fds.pop().context("HOLDER without its channel")?;
            let reply = fds.pop();
            let num = |s: &str| s.parse::<u64>().unwrap_or(0);
            break (end, reply, num(w[2]) as u32, num(w[3]), num(w[4]) as u32);
        }
    };
    let Some(d) = server.durable.as_ref() else {
        bail!("A server joins its keeper once its state is durable");
    };
    let exe = std::env::current_exe().context("Cannot find luod's own binary")?;
    let mut config = HolderConfig::new(&exe)?;
    let arg = |s: String| std::ffi::CString::new(s).unwrap_or_default();
    config.argv = vec![
        std::ffi::CString::new(argv0().into_encoded_bytes()).unwrap_or_default(),
        arg("--recover".into()),
        arg(format!(
            "{},{}",
            d.state.as_raw_fd(),
            d.journal.fd().as_raw_fd()
        )),
        arg("--log".into()),
        arg(log.to_owned()),
    ];
    let holder = luo_sys::holder::Holder::spawn(&config, end)?;
    server.keeper = crate::server::KeeperInfo {
        pid: keeper_pid,
        restarts,
        last_recovery_us: recovery_us,
    };
    Ok(Some(Joined {
        holder: holder.pid().as_raw_nonzero().get() as u32,
        reply,
    }))
}

/// The second half of [`join`]: SERVING, after which the keeper lets the predecessor's holder
/// go and starts servers from this one's.
pub fn serving(server: &mut crate::server::Server, joined: Joined) -> anyhow::Result<()> {
    let Some(channel) = server.keeper_channel.as_ref() else {
        return Ok(());
    };
    let serving = format!("SERVING {} {}", std::process::id(), joined.holder);
    transport::send(channel.as_fd(), serving.as_bytes(), &[])?;
    if let Some(reply) = &joined.reply {
        let (restarts, recovery_us) = await_grant(reply)?;
        server.keeper.restarts = restarts;
        server.keeper.last_recovery_us = recovery_us;
    }
    server.watch_keeper();
    Ok(())
}

/// Waits for the keeper's answer to SERVING: the keeper's restart count and last recovery
/// time if granted, [`Refused`] if refused.
fn await_grant(reply: &OwnedFd) -> anyhow::Result<(u32, u64)> {
    let deadline = Instant::now() + GRANT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("The keeper did not answer SERVING");
        }
        let mut pfd = [rustix::event::PollFd::new(
            reply,
            rustix::event::PollFlags::IN,
        )];
        let t = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut pfd, Some(&t)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if pfd[0].revents().is_empty() {
            continue;
        }
        match transport::recv(reply.as_fd(), false)? {
            Recv::Message(m) => {
                let text = String::from_utf8_lossy(&m.bytes).into_owned();
                let w: Vec<&str> = text.split(' ').collect();
                match w.as_slice() {
                    ["GRANTED", restarts, recovery_us] => {
                        if let (Ok(r), Ok(us)) = (restarts.parse(), recovery_us.parse()) {
                            return Ok((r, us));
                        }
                    }
                    ["REFUSED"] => return Err(Refused.into()),
                    _ => {}
                }
                bail!("The keeper answered SERVING with {text:?}");
            }
            Recv::WouldBlock => continue,
            Recv::Closed => bail!("The keeper is gone"),
        }
    }
}

/// The `argv[0]` every luod process is started with: the keeper's own, as it was started.
/// A service manager's conventions live in it: systemd's last kill before a reboot or a kexec
/// spares root's processes whose `argv[0]` starts with `@` (`ExecStart=@/usr/bin/luod @luod`),
/// so that luod, its servers and its holders hold the kernel's sessions until the kexec
/// (docs/operations.md, "systemctl kexec").
pub fn argv0() -> std::ffi::OsString {
    std::env::args_os().next().unwrap_or_else(|| "luod".into())
}
