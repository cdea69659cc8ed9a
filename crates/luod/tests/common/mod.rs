//! The harness of luod's integration tests: real `luod` processes on private sockets, real
//! client processes (this test binary re-executed in a *role*), raw `SOCK_SEQPACKET`
//! connections with timeouts, and skipping (or failing under `LUO_REQUIRE_ALL=1`).
//!
//! Nothing here may hang: every luod has a watchdog that kills it (so every blocked client call
//! returns), every child process and every raw receive has a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use luo_abi::Errno;
use luo_abi::wire::{self, Op, ReplyHeader, StatusReply};
use luo_client::transport::{self, Recv};
use luo_client::{Control, Device};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};
use zerocopy::FromBytes;

/// How long one luod may live before its watchdog kills it (the whole suite stays well under
/// this; a hung test fails instead of hanging).
pub const WATCHDOG: Duration = Duration::from_secs(50);
/// Deadline of one raw receive and of one child's step.
pub const STEP: Duration = Duration::from_secs(10);

/// Environment variable selecting a child's role.
pub const ROLE_ENV: &str = "LUOD_TEST_ROLE";
/// Environment variable carrying luod's socket to a child.
pub const SOCKET_ENV: &str = "LUOD_TEST_SOCKET";
/// Prefix of the lines a child says to its parent (the harness prints other lines).
const SAY: &str = "LUOD-TEST ";

/// Held while this process forks a child, and by a test for as long as it relies on a
/// `close()` being the last reference.
///
/// Tests run in threads of one process: a child forked by another test holds a copy of every
/// descriptor until it execs (close-on-exec descriptors included), so a session or device this
/// test just closed stays open a little longer, exactly as it would in the kernel. Tests that
/// check that a close is seen at once take [`no_forks`]; every spawn here takes the lock.
static FORK_LOCK: Mutex<()> = Mutex::new(());

/// No other thread of this process forks while the guard lives (see [`FORK_LOCK`]). Never
/// spawn a process while holding it.
pub fn no_forks() -> std::sync::MutexGuard<'static, ()> {
    FORK_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spawns `cmd` under [`FORK_LOCK`] (`spawn` returns once the child has exec'd).
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let _guard = no_forks();
    cmd.spawn()
}

/// Reports that `test` cannot run here. Under `LUO_REQUIRE_ALL=1` (CI) that is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// True if the test runs as root; otherwise reports the skip.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root to switch a child process to another uid");
    false
}

/// The luod binary under test.
pub fn luod_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_luod"))
}

/// A private directory under /tmp, traversable by every uid (0755), removed by its owner.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "luod-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// True while `pid` runs (a zombie has exited).
pub fn alive(pid: i32) -> bool {
    // A zombie has exited: its descriptors are closed, which is all luod's clients notice.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn is_luod(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|&b| b == 0)
            .next()
            .is_some_and(|argv0| argv0.windows(4).any(|w| w == b"luod"))
    })
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid)
        && alive(pid)
        && is_luod(pid)
    {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Reaps `pid` if it is an exited child of this process (adopted ones included).
pub fn reap(pid: i32) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(p), WaitOptions::NOHANG);
    }
}

/// A running luod on its own socket, in its own directory. Dropping it stops it (SIGTERM,
/// then SIGKILL), including any successor an upgrade or reboot started, and removes the
/// directory. If the test panicked, luod's log is printed.
pub struct Luod {
    child: Option<Child>,
    /// Its directory (0755).
    pub dir: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    log: PathBuf,
    pids: Arc<Mutex<Vec<i32>>>,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Luod {
    /// Starts luod with `--socket-mode 0666` (every uid may connect) and `extra` arguments,
    /// and waits until it answers a ping.
    pub fn start(tag: &str) -> Luod {
        Luod::start_with(tag, &[])
    }

    /// [`start`](Self::start) with more arguments.
    pub fn start_with(tag: &str, extra: &[&str]) -> Luod {
        Luod::start_under(tag, &[], extra)
    }

    /// [`start_with`](Self::start_with), run through the command `prefix` (such as
    /// `["prlimit", "--nofile=200:200", "--"]`), which must exec luod.
    pub fn start_under(tag: &str, prefix: &[&str], extra: &[&str]) -> Luod {
        // Successors of an upgraded or rebooted luod are orphaned when their predecessor
        // exits; as a subreaper this process adopts them and can reap them.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let dir = temp_dir(tag);
        let socket = dir.join("luod.sock");
        let log = dir.join("luod.log");
        let log_file = std::fs::File::create(&log).expect("create log");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(luod_binary());
                c
            }
            None => Command::new(luod_binary()),
        };
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--socket-mode", "0666", "--log", "luod=debug"])
            .args(extra)
            .env_remove("LUOD_SOCKET")
            .env_remove("LUOD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = spawn(&mut cmd).expect("spawn luod");
        let pids = Arc::new(Mutex::new(vec![child.id() as i32]));
        let (stop, stopped) = channel::<()>();
        let dog_pids = Arc::clone(&pids);
        let dog = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(WATCHDOG) {
                eprintln!("watchdog: luod still running after {WATCHDOG:?}; killing it");
                for &pid in dog_pids.lock().expect("pids").iter() {
                    signal(pid, Signal::KILL);
                }
            }
        });
        let mut luod = Luod {
            child: Some(child),
            dir,
            socket,
            log,
            pids,
            watchdog: Some((stop, dog)),
        };
        let deadline = Instant::now() + STEP;
        loop {
            if Control::connect_at(&luod.socket).is_ok_and(|c| c.ping().is_ok()) {
                break;
            }
            if let Some(Ok(Some(status))) = luod.child.as_mut().map(Child::try_wait) {
                panic!("luod exited at start ({status}):\n{}", luod.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "luod did not start:\n{}",
                luod.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }

    /// The pid of the process that started (not of its successors).
    pub fn first_pid(&self) -> i32 {
        self.pids.lock().expect("pids")[0]
    }

    /// A new control connection.
    pub fn control(&self) -> Control {
        Control::connect_at(&self.socket).expect("connect to luod")
    }

    /// Opens the device of this process's uid.
    pub fn device(&self) -> Device {
        Device::open_at(&self.socket).expect("open device")
    }

    /// luod's status; the pid it reports is remembered, so a successor is stopped too.
    pub fn status(&self) -> luo_client::Status {
        let s = self.control().status().expect("status");
        self.note_pid(s.pid as i32);
        s
    }

    /// Remembers a luod pid to stop at the end (and to kill from the watchdog).
    pub fn note_pid(&self, pid: i32) {
        let mut pids = self.pids.lock().expect("pids");
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }

    /// luod's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until no luod process of this instance is alive.
    fn wait_gone(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
            }
            let pids = self.pids.lock().expect("pids").clone();
            for &pid in &pids {
                reap(pid);
            }
            if self.child.is_none() && !pids.iter().any(|&p| alive(p)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        if let Some(pid) = raw_status(&self.socket).map(|s| s.pid.get() as i32) {
            self.note_pid(pid);
        }
        let pids = self.pids.lock().expect("pids").clone();
        for &pid in &pids {
            signal(pid, Signal::TERM);
        }
        if !self.wait_gone(Duration::from_secs(5)) {
            eprintln!("luod did not stop on SIGTERM; killing it");
            for &pid in &pids {
                signal(pid, Signal::KILL);
            }
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
            }
            self.wait_gone(Duration::from_secs(5));
        }
        if let Some((stop, dog)) = self.watchdog.take() {
            let _ = stop.send(());
            let _ = dog.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- luod log ({}) -----\n{}-----",
                self.socket.display(),
                self.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw client connection with send and receive timeouts, for malformed messages.
pub struct Raw {
    /// The socket.
    pub fd: OwnedFd,
}

/// What a raw receive got.
#[derive(Debug)]
pub enum Got {
    /// A well-formed reply.
    Reply {
        /// Its errno (0 for success).
        errno: i32,
        /// The request id it echoes.
        id: u64,
        /// Its argument.
        body: Vec<u8>,
        /// Descriptors attached.
        fds: Vec<OwnedFd>,
    },
    /// luod closed the connection.
    Closed,
    /// Nothing within the timeout.
    Timeout,
}

impl Got {
    /// The errno of a reply; panics on anything else.
    pub fn errno(&self) -> i32 {
        match self {
            Got::Reply { errno, .. } => *errno,
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

impl Raw {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> Raw {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = SocketAddrUnix::new(socket).expect("address");
        rustix::net::connect(&fd, &addr).expect("connect");
        let raw = Raw { fd };
        raw.set_timeout(STEP);
        raw
    }

    /// Wraps a connection luod gave (a session), with timeouts.
    pub fn from_fd(fd: OwnedFd) -> Raw {
        let raw = Raw { fd };
        raw.set_timeout(STEP);
        raw
    }

    fn set_timeout(&self, t: Duration) {
        use rustix::net::sockopt::{Timeout, set_socket_timeout};
        set_socket_timeout(&self.fd, Timeout::Recv, Some(t)).expect("SO_RCVTIMEO");
        set_socket_timeout(&self.fd, Timeout::Send, Some(t)).expect("SO_SNDTIMEO");
    }

    /// Sends `bytes` as one message with `fds`.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        transport::send(self.fd.as_fd(), bytes, fds).expect("send");
    }

    /// Receives one message (or the timeout, or the close).
    pub fn recv(&self) -> Got {
        match transport::recv(self.fd.as_fd(), true) {
            Ok(Recv::Message(m)) => {
                let (hdr, body) = wire::parse_reply(&m.bytes).expect("luod's reply is well-formed");
                Got::Reply {
                    errno: hdr.errno.get(),
                    id: hdr.id.get(),
                    body: body.to_vec(),
                    fds: m.fds,
                }
            }
            Ok(Recv::WouldBlock) => Got::Timeout,
            Ok(Recv::Closed) => Got::Closed,
            Err(rustix::io::Errno::CONNRESET) => Got::Closed,
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// Sends a well-formed request for `op` with `arg` and `fds`, and receives the reply.
    pub fn request(&self, op: u32, id: u64, arg: &[u8], fds: &[BorrowedFd<'_>]) -> Got {
        self.send(&message(op, id, arg), fds);
        self.recv()
    }

    /// A ping that must succeed.
    pub fn ping(&self) {
        let got = self.request(Op::Ping as u32, 77, &[], &[]);
        assert_eq!(got.errno(), 0, "ping: {got:?}");
    }
}

/// A request message: header then `arg`.
pub fn message(op: u32, id: u64, arg: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    wire::write_request(&mut m, op, id, arg).expect("request fits");
    m
}

/// luod's status over a raw connection with timeouts, or `None` if it does not answer.
pub fn raw_status(socket: &Path) -> Option<StatusReply> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(socket).ok()?).ok()?;
    let raw = Raw { fd };
    raw.set_timeout(Duration::from_secs(2));
    transport::send(raw.fd.as_fd(), &message(Op::Status as u32, 1, &[]), &[]).ok()?;
    match raw.recv() {
        Got::Reply { errno: 0, body, .. } => StatusReply::read_from_prefix(&body).ok().map(|r| r.0),
        _ => None,
    }
}

/// Checks that luod at `socket` still serves a new connection.
pub fn assert_serving(socket: &Path) {
    Raw::connect(socket).ping();
}

/// The errno of a client error, for assertions.
pub fn errno<T: std::fmt::Debug>(r: Result<T, luo_client::Error>) -> Errno {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno,
    }
}

/// Size of the reply header, for raw parsing.
pub const REPLY_HEADER: usize = std::mem::size_of::<ReplyHeader>();

// ---------------------------------------------------------------------------------------------
// Memory helpers.

/// A memfd holding `data`.
pub fn memfd_with(name: &str, data: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    pwrite_all(&fd, 0, data);
    fd
}

/// Writes all of `data` at `offset`.
pub fn pwrite_all(fd: impl AsFd, offset: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let n =
            rustix::io::pwrite(fd.as_fd(), &data[done..], offset + done as u64).expect("pwrite");
        assert!(n > 0);
        done += n;
    }
}

/// Reads `len` bytes at `offset`.
pub fn pread_all(fd: impl AsFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n =
            rustix::io::pread(fd.as_fd(), &mut buf[done..], offset + done as u64).expect("pread");
        assert!(n > 0, "unexpected end of file at {}", offset + done as u64);
        done += n;
    }
    buf
}

/// The size of the file behind `fd`.
pub fn file_size(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).expect("fstat").st_size as u64
}

/// Fills `buf` with the pattern of `seed` for the bytes at `offset..` (offset 8-aligned).
pub fn pattern_at(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = (offset / 8 + i as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17)
            ^ seed;
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes: this test binary re-executed in a role.

/// True in a child process (a role is set).
pub fn in_child() -> bool {
    std::env::var_os(ROLE_ENV).is_some()
}

/// The entry point of every child: runs `roles(role)` and exits with 0, or panics (the
/// harness then exits non-zero and prints the panic). Does nothing in the parent.
pub fn child_entry(roles: impl FnOnce(&str)) {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    roles(&role);
    std::io::stdout().flush().expect("flush");
    std::process::exit(0);
}

/// luod's socket, in a child.
pub fn child_socket() -> PathBuf {
    PathBuf::from(std::env::var_os(SOCKET_ENV).expect("LUOD_TEST_SOCKET"))
}

/// Says `line` to the parent.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{SAY}{line}").expect("say");
    out.flush().expect("flush");
}

/// Reads the parent's next line; `None` when the parent closed our stdin.
pub fn hear() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

/// The command that runs this test binary as `role`, through the test named `entry` (the test
/// that calls [`child_entry`]), talking to luod at `socket`.
pub fn role_command(entry: &str, role: &str, socket: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_ENV, role)
        .env(SOCKET_ENV, socket)
        .env_remove("LUOD_SOCKET")
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// A child process with line-based talk over its stdin and stdout.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with piped stdio.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd).unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(said) = line.strip_prefix(SAY)
                    && tx.send(said.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        let err_text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&err_text);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().expect("stderr");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: err_text,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// The child's next line, within `within`; panics (with its stderr) if none comes.
    pub fn expect_line(&mut self, within: Duration) -> String {
        match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(e) => {
                let status = self.child.try_wait().ok().flatten();
                // Let the stderr reader catch up with a child that just died.
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "{}: no line within {within:?} ({e}; exit status {status:?}); stderr:\n{}",
                    self.name,
                    self.stderr()
                )
            }
        }
    }

    /// Waits for a line starting with `prefix` and returns the rest.
    pub fn expect(&mut self, prefix: &str) -> String {
        let line = self.expect_line(STEP);
        match line.strip_prefix(prefix) {
            Some(rest) => rest.trim().to_owned(),
            None => panic!(
                "{}: expected {prefix:?}, got {line:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Sends a line to the child.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("tell child");
        stdin.flush().expect("flush");
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the child to exit, within `within`, and returns its status.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the stderr reader drain.
                std::thread::sleep(Duration::from_millis(20));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {within:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a successful exit.
    pub fn wait_ok(&mut self, within: Duration) {
        let status = self.wait(within);
        assert!(
            status.success(),
            "{} failed ({status}); stderr:\n{}",
            self.name,
            self.stderr()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Opens the device, retrying while another process of the uid holds it (`EBUSY`).
pub fn open_device_retry(socket: &Path, within: Duration) -> Device {
    let deadline = Instant::now() + within;
    loop {
        match Device::open_at(socket) {
            Ok(d) => return d,
            Err(e) if e.errno == Errno::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("open device: {e}"),
        }
    }
}

/// Polls `cond` every few milliseconds until it holds or `within` passes.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
