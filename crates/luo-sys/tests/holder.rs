//! The holder across real deaths: a helper "server" process fills its descriptor table, spawns
//! a holder and is SIGKILLed; the test, playing the keeper, tells the holder to start a new
//! server, and the new server (the same helper, in "recover" mode) reports what it inherited.
//!
//! The helper is this test binary itself, run as `holder-… role_entry --exact` with
//! `LUO_HOLDER_TEST_ROLE` set; without the variable `role_entry` is an empty test. The helper's
//! standard input is a `SOCK_SEQPACKET` socket to the test (the *link*): the test sends the
//! server its configuration and descriptors over it, the server reports its descriptor numbers,
//! and since the link is in the table, every new server the holder starts talks to the test
//! through it too.
#![allow(unsafe_code)] // The recovered helper looks at inherited descriptor numbers.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use luo_sys::holder::{self, Holder, HolderConfig, HolderControl, HolderError, Inherit, PID_ENV};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::MemfdFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, WaitOptions};

const ROLE: &str = "LUO_HOLDER_TEST_ROLE";
const ROLE_ARGS: [&str; 4] = ["role_entry", "--exact", "--nocapture", "--test-threads=1"];
const TIMEOUT: Duration = Duration::from_secs(30);
/// The kept memfd's size and its bytes.
const KEPT_LEN: usize = 256 * 1024;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// The helper's entry point; an empty test when run by the harness.
#[test]
fn role_entry() {
    match std::env::var(ROLE).as_deref() {
        Ok("server") => server(),
        Ok("recover") => recover(),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Messages over the link: text, with descriptors attached.

fn send_msg(fd: impl AsFd, text: &str, fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        fd,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .expect("sendmsg");
}

/// The next message, or `None` on hang-up. Panics after `TIMEOUT`.
fn recv_msg(fd: impl AsFd) -> Option<(String, Vec<OwnedFd>)> {
    assert!(readable(&fd, TIMEOUT), "no message within {TIMEOUT:?}");
    let mut buf = vec![0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    if got.bytes == 0 {
        return None;
    }
    let fds = control
        .drain()
        .flat_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    let text = String::from_utf8(buf[..got.bytes].to_vec()).expect("utf-8");
    Some((text, fds))
}

fn readable(fd: impl AsFd, timeout: Duration) -> bool {
    let limit = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match poll(&mut pfd, Some(&limit)) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.expect("poll") > 0,
        }
    }
}

/// `WORD k=v k=v…` → (`WORD`, map).
fn fields(text: &str) -> (String, BTreeMap<String, String>) {
    let mut words = text.split_whitespace();
    let head = words.next().unwrap_or_default().to_string();
    let map = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (head, map)
}

/// The link: standard input, in both roles.
fn link() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 is the link, open for the whole life of a helper, which never
    // closes it.
    unsafe { BorrowedFd::borrow_raw(0) }
}

// ---------------------------------------------------------------------------------------------
// The helper's roles.

/// Receives `CONFIG …` and the holder's end (plus any descriptor to hold), fills the table,
/// spawns the holder, changes the table after the spawn, reports `SERVER …` with the far end of
/// a socket pair, then waits to be killed (or for the link to hang up).
fn server() -> ! {
    let (text, mut received) = recv_msg(link()).expect("CONFIG");
    let (head, cfg) = fields(&text);
    assert_eq!(head, "CONFIG");
    let holder_end = received.remove(0);
    let _held = received; // Descriptors the test wants in the table (a pipe's write end).

    let kept = rustix::fs::memfd_create("kept", MemfdFlags::CLOEXEC).expect("memfd");
    let bytes: Vec<u8> = (0..KEPT_LEN).map(pattern).collect();
    rustix::io::write(&kept, &bytes).expect("write");
    let (sock, far) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    // Not close-on-exec, yet excluded: the exclusion must set the flag.
    let excluded = rustix::fs::memfd_create("excluded", MemfdFlags::empty()).expect("memfd");
    let doomed = rustix::fs::memfd_create("doomed", MemfdFlags::CLOEXEC).expect("memfd");

    let extra: usize = cfg["extra"].parse().expect("extra");
    let mut dups = Vec::with_capacity(extra);
    if extra > 0 {
        let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current = limit.maximum;
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).expect("rlimit");
        for _ in 0..extra {
            dups.push(rustix::io::fcntl_dupfd_cloexec(&kept, 3).expect("dup"));
        }
    }

    let exe = std::env::current_exe().expect("current_exe");
    let mut config = HolderConfig::new(&exe).expect("config");
    if let Some(program) = cfg.get("program").filter(|p| *p != "self") {
        config.program = std::ffi::CString::new(program.as_str()).expect("path");
    }
    config.argv.extend(
        ROLE_ARGS
            .iter()
            .map(|a| std::ffi::CString::new(*a).expect("arg")),
    );
    config
        .envp
        .retain(|e| !e.as_bytes().starts_with(ROLE.as_bytes()));
    config
        .envp
        .push(std::ffi::CString::new(format!("{ROLE}=recover")).expect("env"));
    config.clone_parent = cfg["parent"] == "1";
    config.inherit = match cfg["mode"].as_str() {
        "all" => Inherit::All {
            except: vec![excluded.as_raw_fd()],
        },
        "only" => Inherit::Only(vec![kept.as_raw_fd()]),
        other => panic!("mode {other}"),
    };
    let holder = Holder::spawn(&config, holder_end).expect("spawn");

    // After the spawn: the holder shares the table, so these count too. (`late` first, so
    // that it does not take the number `doomed` frees.)
    let late = rustix::fs::memfd_create("late", MemfdFlags::CLOEXEC).expect("memfd");
    rustix::io::write(&late, b"late").expect("write");
    let doomed_fd = doomed.as_raw_fd();
    drop(doomed);
    if cfg.get("close_channel").is_some_and(|v| v == "1") {
        // SAFETY: deliberately breaking the holder's contract: the number is open (the holder
        // owns it) and nothing in this process uses it.
        drop(unsafe { OwnedFd::from_raw_fd(holder.channel_fd()) });
    }
    let report = format!(
        "SERVER holder={} kept={} sock={} excluded={} doomed={} late={} channel={} pid={}",
        holder.pid(),
        kept.as_raw_fd(),
        sock.as_raw_fd(),
        excluded.as_raw_fd(),
        doomed_fd,
        late.as_raw_fd(),
        holder.channel_fd(),
        std::process::id(),
    );
    send_msg(link(), &report, &[far.as_fd()]);
    drop(far);
    while recv_msg(link()).is_some() {}
    std::process::exit(0);
}

/// Says `HELLO`, then does what the test answers: `CRASH` (exit 3 at once) or `CHECK k=fd…`
/// (report what each inherited number holds as `RESULT …`, then exit 0).
fn recover() -> ! {
    let holder_env = std::env::var(PID_ENV).unwrap_or_default();
    send_msg(
        link(),
        &format!("HELLO pid={} holder={holder_env}", std::process::id()),
        &[],
    );
    let Some((text, _)) = recv_msg(link()) else {
        std::process::exit(0);
    };
    let (head, numbers) = fields(&text);
    if head == "CRASH" {
        std::process::exit(3);
    }
    assert_eq!(head, "CHECK");
    let mut result = String::from("RESULT");
    for (name, fd) in &numbers {
        let fd: RawFd = fd.parse().expect("number");
        // SAFETY: F_GETFD reads one flag of a table entry; a number that is not open gives
        // EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            result += &format!(" {name}=closed");
            continue;
        }
        // SAFETY: the number is open, was inherited, and nothing else in this process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let what = match name.as_str() {
            "kept" => {
                let mut buf = vec![0u8; KEPT_LEN + 1];
                let n = rustix::io::pread(&owned, &mut buf, 0).expect("pread");
                let intact =
                    n == KEPT_LEN && buf[..n].iter().enumerate().all(|(i, &b)| b == pattern(i));
                if intact {
                    "intact".to_string()
                } else {
                    format!("damaged({n})")
                }
            }
            "late" => {
                let mut buf = [0u8; 16];
                let n = rustix::io::pread(&owned, &mut buf, 0).expect("pread");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            "sock" => {
                assert!(readable(&owned, TIMEOUT), "nothing on the socket");
                let mut buf = [0u8; 64];
                let (_, n) =
                    rustix::net::recv(&owned, &mut buf[..], RecvFlags::empty()).expect("recv");
                rustix::net::send(&owned, b"pong", SendFlags::NOSIGNAL).expect("send");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            _ => "open".to_string(),
        };
        result += &format!(" {name}={what} {name}_cloexec={}", flags & libc::FD_CLOEXEC);
        std::mem::forget(owned); // Leave the table as it was.
    }
    let count = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
        - 1;
    result += &format!(" fds={count}");
    send_msg(link(), &result, &[]);
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// The test's side: the keeper.

/// A helper server, its link, its report, and the far end of its socket pair.
struct Server {
    child: Child,
    link: OwnedFd,
    report: BTreeMap<String, String>,
    far: OwnedFd,
}

impl Server {
    /// Starts a helper server with `config` (`parent=… mode=… extra=…`) and hands it the
    /// holder's end of a new control channel, plus `held`. Returns the keeper's end too.
    fn start(config: &str, held: &[BorrowedFd<'_>]) -> (Server, HolderControl) {
        let (control, holder_end) = holder::channel().expect("channel");
        let (link, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let child = Command::new(std::env::current_exe().expect("current_exe"))
            .args(ROLE_ARGS)
            .env(ROLE, "server")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the helper");
        let mut fds = vec![holder_end.as_fd()];
        fds.extend_from_slice(held);
        send_msg(&link, &format!("CONFIG {config}"), &fds);
        drop(holder_end);
        let (text, mut far) = recv_msg(&link).expect("the server's report");
        let (head, report) = fields(&text);
        assert_eq!(head, "SERVER", "{text}");
        let server = Server {
            child,
            link,
            report,
            far: far.pop().expect("the socket's far end"),
        };
        (server, control)
    }

    fn fd(&self, name: &str) -> &str {
        &self.report[name]
    }

    fn holder(&self) -> Pid {
        pid(self.fd("holder"))
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("wait");
        assert!(!status.success(), "killed: {status}");
    }

    /// Waits for the new server's `HELLO`; checks it names the holder.
    fn hello(&self) -> Pid {
        let (text, _) = recv_msg(&self.link).expect("HELLO");
        let (head, hello) = fields(&text);
        assert_eq!(head, "HELLO", "{text}");
        assert_eq!(
            hello["holder"],
            self.fd("holder"),
            "{PID_ENV} names the holder"
        );
        pid(&hello["pid"])
    }

    /// Asks the new server what it inherited under the numbers named `names`.
    fn check(&self, names: &[&str]) -> BTreeMap<String, String> {
        rustix::net::send(&self.far, b"ping", SendFlags::NOSIGNAL).expect("send");
        let numbers: Vec<String> = names
            .iter()
            .map(|n| format!("{n}={}", self.fd(n)))
            .collect();
        send_msg(&self.link, &format!("CHECK {}", numbers.join(" ")), &[]);
        let (text, _) = recv_msg(&self.link).expect("RESULT");
        let (head, result) = fields(&text);
        assert_eq!(head, "RESULT", "{text}");
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid(text: &str) -> Pid {
    Pid::from_raw(text.parse().expect("pid")).expect("pid > 0")
}

/// Waits for `pid`, a child of this process, to exit; its exit code (or 128 + signal).
fn wait_child(pid: Pid) -> i32 {
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open");
    assert!(
        readable(&pidfd, TIMEOUT),
        "{pid} still runs after {TIMEOUT:?}"
    );
    let (_, status) = rustix::process::waitpid(Some(pid), WaitOptions::empty())
        .expect("waitpid")
        .expect("a status");
    status
        .exit_status()
        .or(status.terminating_signal().map(|s| 128 + s))
        .expect("exited or killed")
}

/// Whether `fd` (a pipe's read end) sees end-of-file within `timeout`.
fn eof_within(fd: &OwnedFd, timeout: Duration) -> bool {
    if !readable(fd, timeout) {
        return false;
    }
    let mut b = [0u8; 1];
    rustix::io::read(fd, &mut b).expect("read") == 0
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_killed_servers_descriptors_reach_the_new_server_under_the_same_numbers() {
    let (mut server, mut control) = Server::start("parent=1 mode=all extra=0", &[]);
    assert_eq!(control.ping().expect("ping"), server.holder());
    server.kill();
    assert_eq!(
        control.ping().expect("ping"),
        server.holder(),
        "the holder outlives the server"
    );
    let new = control.start().expect("start");
    assert_eq!(server.hello(), new);
    let result = server.check(&["kept", "sock", "excluded", "doomed", "late", "channel"]);
    let expect = |k: &str, v: &str| assert_eq!(result[k], v, "{k} in {result:?}");
    expect("kept", "intact");
    expect("kept_cloexec", "0");
    expect("sock", "ping");
    expect("sock_cloexec", "0");
    expect("excluded", "closed");
    expect("doomed", "closed"); // Closed by the server after the spawn: closed in the holder.
    expect("late", "late"); // Opened by the server after the spawn: in the holder too.
    expect("late_cloexec", "0");
    expect("channel", "closed");
    let mut pong = [0u8; 8];
    let (_, n) = rustix::net::recv(&server.far, &mut pong[..], RecvFlags::empty()).expect("recv");
    assert_eq!(
        &pong[..n],
        b"pong",
        "the socket is still connected both ways"
    );
    assert_eq!(
        wait_child(new),
        0,
        "the new server is the keeper's child (CLONE_PARENT)"
    );
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

#[test]
fn only_the_listed_descriptors_and_stdio_cross_with_inherit_only() {
    let (mut server, mut control) = Server::start("parent=1 mode=only extra=0", &[]);
    server.kill();
    let new = control.start().expect("start");
    assert_eq!(server.hello(), new, "standard input crossed");
    // The socket is not inherited, so `check` cannot read it: list the others.
    let numbers = ["kept", "sock", "excluded", "late", "channel"]
        .iter()
        .map(|n| format!("{n}={}", server.fd(n)))
        .collect::<Vec<_>>()
        .join(" ");
    send_msg(&server.link, &format!("CHECK {numbers}"), &[]);
    let (text, _) = recv_msg(&server.link).expect("RESULT");
    let (_, result) = fields(&text);
    assert_eq!(result["kept"], "intact", "{text}");
    for name in ["sock", "excluded", "late", "channel"] {
        assert_eq!(result[name], "closed", "{name} in {text}");
    }
    assert_eq!(wait_child(new), 0);
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

#[test]
fn a_crash_looping_new_server_can_be_started_again_and_again() {
    let (mut server, mut control) = Server::start("parent=1 mode=all extra=0", &[]);
    server.kill();
    for round in 0..3 {
        let new = control.start().expect("start");
        assert_eq!(server.hello(), new);
        send_msg(&server.link, "CRASH", &[]);
        assert_eq!(wait_child(new), 3, "round {round}: the new server crashed");
    }
    let new = control.start().expect("the fourth start");
    assert_eq!(server.hello(), new);
    let result = server.check(&["kept", "sock", "late"]);
    assert_eq!(
        (
            result["kept"].as_str(),
            result["sock"].as_str(),
            result["late"].as_str()
        ),
        ("intact", "ping", "late"),
        "{result:?}"
    );
    assert_eq!(wait_child(new), 0);
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

#[test]
fn a_failed_exec_is_reported_and_the_holder_stays() {
    let (mut server, mut control) =
        Server::start("parent=1 mode=all extra=0 program=/nonexistent/luod", &[]);
    server.kill();
    match control.start() {
        Err(HolderError::Exec { pid, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}");
            assert_eq!(
                wait_child(pid),
                127,
                "the failed child is the keeper's to reap"
            );
        }
        other => panic!("expected an exec failure, got {other:?}"),
    }
    assert_eq!(control.ping().expect("ping"), server.holder());
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

#[test]
fn the_holder_exits_when_told_and_the_table_is_released() {
    let (read, write) = pipe();
    let (mut server, mut control) = Server::start("parent=1 mode=all extra=0", &[write.as_fd()]);
    drop(write);
    server.kill();
    assert!(
        !eof_within(&read, Duration::from_millis(200)),
        "the holder still holds the pipe's write end"
    );
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
    assert!(eof_within(&read, TIMEOUT), "the table was released");
}

#[test]
fn the_holder_exits_when_the_keeper_hangs_up_and_the_table_is_released() {
    let (read, write) = pipe();
    let (mut server, control) = Server::start("parent=1 mode=all extra=0", &[write.as_fd()]);
    drop(write);
    server.kill();
    assert!(!eof_within(&read, Duration::from_millis(200)));
    drop(control);
    assert_eq!(wait_child(server.holder()), 0);
    assert!(eof_within(&read, TIMEOUT), "the table was released");
}

#[test]
fn a_server_crash_does_not_end_the_holder() {
    // The server dies while a request is pending nowhere: nothing reaches the holder.
    let (mut server, mut control) = Server::start("parent=1 mode=all extra=0", &[]);
    server.kill();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(control.ping().expect("ping"), server.holder());
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

#[test]
fn the_holder_catches_ignores_and_blocks_no_signal() {
    // The server (a Rust program) ignores SIGPIPE and has glibc's handlers installed; none of
    // that may reach the holder, or an inherited handler could run in it.
    let (server, mut control) = Server::start("parent=1 mode=all extra=0", &[]);
    let status =
        |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |text: &str, key: &str| {
        let line = text.lines().find(|l| l.starts_with(key)).expect(key);
        u64::from_str_radix(line[key.len()..].trim(), 16).expect("hex")
    };
    // The holder resets its signals before it answers anything.
    assert_eq!(control.ping().expect("ping"), server.holder());
    let server_status = status(server.fd("pid"));
    assert_ne!(
        field(&server_status, "SigIgn:"),
        0,
        "the server ignores SIGPIPE"
    );
    let holder_status = status(server.fd("holder"));
    for key in ["SigBlk:", "SigIgn:", "SigCgt:"] {
        assert_eq!(field(&holder_status, key), 0, "{key} of the holder");
    }
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

#[test]
fn the_holder_sees_what_the_server_opens_and_closes_after_the_spawn() {
    let (server, mut control) = Server::start("parent=1 mode=all extra=0", &[]);
    let fd_of = |name: &str| format!("/proc/{}/fd/{}", server.holder(), server.fd(name));
    let late = std::fs::read_link(fd_of("late")).expect("the late memfd is in the holder");
    assert!(late.to_string_lossy().contains("memfd:late"), "{late:?}");
    assert!(
        std::fs::read_link(fd_of("doomed")).is_err(),
        "the memfd closed after the spawn is gone from the holder"
    );
    let server_late = std::fs::read_link(format!(
        "/proc/{}/fd/{}",
        server.fd("pid"),
        server.fd("late")
    ))
    .expect("the server's late memfd");
    assert_eq!(late, server_late);
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

#[test]
fn without_clone_parent_the_holder_outlives_its_parent_and_reaps_its_servers() {
    let (mut server, mut control) = Server::start("parent=0 mode=all extra=0", &[]);
    let holder = server.holder();
    let holder_fd = rustix::process::pidfd_open(holder, PidfdFlags::empty()).expect("pidfd");
    server.kill();
    assert_eq!(control.ping().expect("ping"), holder);
    let new = control.start().expect("start");
    let new_fd = rustix::process::pidfd_open(new, PidfdFlags::empty()).expect("pidfd");
    assert_eq!(server.hello(), new);
    let result = server.check(&["kept", "late"]);
    assert_eq!(result["kept"], "intact", "{result:?}");
    assert!(readable(&new_fd, TIMEOUT), "the new server exits");
    // SA_NOCLDWAIT in the holder: no zombie is left for it to collect.
    let deadline = Instant::now() + TIMEOUT;
    while std::path::Path::new(&format!("/proc/{new}")).exists() {
        assert!(Instant::now() < deadline, "{new} stays a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    control.exit().expect("exit");
    assert!(readable(&holder_fd, TIMEOUT), "the holder exits");
}

#[test]
fn a_holder_whose_channel_the_server_closed_exits() {
    let (server, mut control) = Server::start("parent=1 mode=all extra=0 close_channel=1", &[]);
    // The holder may answer one last request (a receive already under way), then exits.
    let _ = control.ping();
    assert_eq!(wait_child(server.holder()), holder::EXIT_CHANNEL_LOST);
    assert!(matches!(control.ping(), Err(HolderError::HungUp)));
}

#[test]
fn hostile_requests_are_refused_and_install_nothing() {
    let (mut server, mut control) = Server::start("parent=1 mode=all extra=0", &[]);
    server.kill();
    let holder_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.holder()))
            .expect("fd")
            .count()
    };
    let before = holder_fds();
    let ask = |bytes: &[u8], fds: &[BorrowedFd<'_>]| -> holder::Reply {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(anc.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            &control,
            &[IoSlice::new(bytes)],
            &mut anc,
            SendFlags::NOSIGNAL,
        )
        .expect("send");
        assert!(readable(&control, TIMEOUT));
        let mut buf = [0u8; 64];
        let (_, n) = rustix::net::recv(&control, &mut buf[..], RecvFlags::empty()).expect("recv");
        holder::Reply::parse(&buf[..n]).expect("a well-formed refusal")
    };
    let refused = |reply: holder::Reply| (reply.step.get(), reply.errno.get() as i32);
    assert_eq!(
        refused(ask(b"garbage", &[])),
        (holder::STEP_REQUEST, libc::EINVAL)
    );
    let mut big = vec![0u8; 200];
    big[..16].copy_from_slice(zerocopy::IntoBytes::as_bytes(&holder::Request::new(
        holder::OP_PING,
        5,
    )));
    assert_eq!(refused(ask(&big, &[])), (holder::STEP_REQUEST, libc::E2BIG));
    let unknown = holder::Request::new(77, 6);
    assert_eq!(
        refused(ask(zerocopy::IntoBytes::as_bytes(&unknown), &[])),
        (holder::STEP_REQUEST, libc::EOPNOTSUPP)
    );
    // A valid ping carrying a descriptor: answered, the descriptor dropped by the kernel.
    let (r, _w) = pipe();
    let ping = holder::Request::new(holder::OP_PING, 8);
    let reply = ask(zerocopy::IntoBytes::as_bytes(&ping), &[r.as_fd()]);
    assert_eq!((reply.step.get(), reply.seq.get()), (holder::STEP_OK, 8));
    assert_eq!(
        holder_fds(),
        before,
        "nothing was installed in the shared table"
    );
    // An empty packet is not a hang-up.
    rustix::net::send(&control, b"", SendFlags::NOSIGNAL).expect("send");
    assert_eq!(
        control.ping().expect("ping after all that"),
        server.holder()
    );
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
}

/// Median and minimum of `start` (request to reply: the exec has succeeded) and of start to
/// `HELLO` (the new server runs), over `rounds` crash-looped starts.
fn time_starts(extra: usize, rounds: usize) -> (Duration, Duration, Duration, Duration, usize) {
    let (mut server, mut control) = Server::start(&format!("parent=1 mode=all extra={extra}"), &[]);
    server.kill();
    let mut replies = Vec::new();
    let mut running = Vec::new();
    let mut fds = 0;
    for round in 0..rounds {
        let t0 = Instant::now();
        let new = control.start().expect("start");
        replies.push(t0.elapsed());
        assert_eq!(server.hello(), new);
        running.push(t0.elapsed());
        if round + 1 < rounds {
            send_msg(&server.link, "CRASH", &[]);
            assert_eq!(wait_child(new), 3);
        } else {
            let result = server.check(&["kept", "late"]);
            assert_eq!(result["kept"], "intact", "{result:?}");
            fds = result["fds"].parse().expect("fds");
            assert_eq!(wait_child(new), 0);
        }
    }
    control.exit().expect("exit");
    assert_eq!(wait_child(server.holder()), 0);
    replies.sort();
    running.sort();
    (
        replies[rounds / 2],
        replies[0],
        running[rounds / 2],
        running[0],
        fds,
    )
}

#[test]
fn start_with_17000_descriptors() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.maximum.is_some_and(|max| max < 17_100) {
        assert!(
            std::env::var_os("LUO_REQUIRE_ALL").is_none(),
            "RLIMIT_NOFILE's hard limit is under 17,100"
        );
        eprintln!("skipped: RLIMIT_NOFILE's hard limit is under 17,100");
        return;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (base_med, base_min, base_run, _, base_fds) = time_starts(0, 5);
    let (big_med, big_min, big_run, _, big_fds) = time_starts(17_000, 5);
    assert!(
        big_fds >= 17_000,
        "the new server has {big_fds} descriptors"
    );
    eprintln!(
        "holder start, request to reply (exec done), median (min) of 5: \
         {base_fds} descriptors {:.2} ms ({:.2} ms); {big_fds} descriptors {:.2} ms ({:.2} ms); \
         to the new server running (libtest start-up included): {:.2} ms and {:.2} ms",
        ms(base_med),
        ms(base_min),
        ms(big_med),
        ms(big_min),
        ms(base_run),
        ms(big_run),
    );
}
