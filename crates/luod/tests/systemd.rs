//! luod under systemd's protocols, with real components: the notify protocol read by a
//! listener on a real `NOTIFY_SOCKET` (a Unix datagram socket receiving `SCM_RIGHTS` and the
//! sender's credentials), socket activation by systemd's own `systemd-socket-activate`, and a
//! restart of the whole service (keeper, server and holder killed together) that gets every
//! descriptor back through `LISTEN_FDS`/`LISTEN_FDNAMES`, the test playing systemd's store.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.
#![allow(unsafe_code)] // pre_exec: the restarted luod gets the stored descriptors at 3, 4, ...

mod common;

use std::collections::HashSet;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{luod_binary, pattern_at, pread_all, temp_dir};
use luo_client::{Control, Device};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::process::{Pid, Signal, WaitOptions};

/// One datagram luod sent to the notify socket.
#[derive(Debug, Clone)]
struct Msg {
    lines: Vec<String>,
    /// The sender's pid (`SCM_CREDENTIALS`).
    pid: i32,
    fds: usize,
}

impl Msg {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
    fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The systemd side of `NOTIFY_SOCKET`: records every message and keeps a descriptor store
/// with systemd's rules (`FDSTORE=1` adds every descriptor of the message under its
/// `FDNAME=`, `FDSTOREREMOVE=1` removes every one of that name), in the order stored.
struct Notify {
    path: PathBuf,
    msgs: Arc<Mutex<Vec<Msg>>>,
    store: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        rustix::net::sockopt::set_socket_passcred(&sock, true).unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (Arc::clone(&msgs), Arc::clone(&store), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32), ScmCredentials(1))];
                let mut anc = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    &sock,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut anc,
                    RecvFlags::CMSG_CLOEXEC,
                );
                let Ok(got) = got else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
                let mut pid = 0;
                let mut fds = Vec::new();
                for a in anc.drain() {
                    match a {
                        RecvAncillaryMessage::ScmRights(r) => fds.extend(r),
                        RecvAncillaryMessage::ScmCredentials(c) => {
                            pid = c.pid.as_raw_nonzero().get()
                        }
                        _ => {}
                    }
                }
                let msg = Msg {
                    lines: text.lines().map(str::to_owned).collect(),
                    pid,
                    fds: fds.len(),
                };
                let name = msg.value("FDNAME").unwrap_or("stored").to_owned();
                {
                    let mut store = s.lock().unwrap();
                    if msg.has("FDSTOREREMOVE=1") {
                        store.retain(|(n, _)| *n != name);
                    }
                    if msg.has("FDSTORE=1") {
                        for fd in fds {
                            store.push((name.clone(), fd));
                        }
                    }
                }
                m.lock().unwrap().push(msg);
            }
        });
        Notify {
            path,
            msgs,
            store,
            stop,
            thread: Some(thread),
        }
    }

    fn msgs(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// The store's entries now: names and copies of the descriptors.
    fn store(&self) -> Vec<(String, OwnedFd)> {
        self.store
            .lock()
            .unwrap()
            .iter()
            .map(|(n, fd)| (n.clone(), fd.try_clone().unwrap()))
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Waits until a message from index `from` on satisfies `pred`; returns its index.
    fn wait(&self, from: usize, what: &str, pred: impl Fn(&Msg) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(i) = self.msgs().iter().skip(from).position(&pred) {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} from luod: {:#?}",
                self.msgs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// As [`Notify::wait`], failing at once with the service's log if it exits meanwhile.
    fn wait_serving(
        &self,
        from: usize,
        what: &str,
        svc: &mut Service,
        pred: impl Fn(&Msg) -> bool,
    ) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(i) = self.msgs().iter().skip(from).position(&pred) {
                return from + i;
            }
            if let Some(st) = svc.child.try_wait().unwrap() {
                panic!("luod exited ({st}) before {what}: {}", svc.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} from luod: {:#?}\n{}",
                self.msgs(),
                svc.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every datagram sent before this call has been read: a marker sent now
    /// arrives after all of them (a Unix datagram socket keeps their order), as systemd reads
    /// a dead service's last messages before it acts on its exit.
    fn sync(&self) {
        let marker = format!("X-LUOD-TEST-SYNC={}", self.msgs().len());
        UnixDatagram::unbound()
            .unwrap()
            .send_to(marker.as_bytes(), &self.path)
            .unwrap();
        self.wait(0, "the sync marker", |m| m.has(&marker));
        self.msgs.lock().unwrap().retain(|m| !m.has(&marker));
    }

    /// Waits until the store satisfies `pred`.
    fn wait_store(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !pred(&self.names()) {
            assert!(
                Instant::now() < deadline,
                "the store never had {what}: {:?}",
                self.names()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A luod service: its own process group, as a unit's cgroup, so that the whole of it
/// (keeper, server, holder, successors) is killed at once. Dropping it kills the group.
struct Service {
    child: Child,
    pgid: Pid,
    log: PathBuf,
}

impl Service {
    fn start(mut cmd: Command, log: &Path) -> Service {
        // Servers and holders orphaned by the kill are reparented here and reaped.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let file = std::fs::File::create(log).unwrap();
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .env_remove("LUOD_SOCKET")
            .env_remove("LUOD_CONFIG");
        let child = common::spawn(&mut cmd).expect("spawn");
        let pgid = Pid::from_raw(child.id() as i32).unwrap();
        Service {
            child,
            pgid,
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL to every process of the service, and waits until none is left.
    fn kill_all(&mut self) {
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            while let Ok(Some(_)) = rustix::process::waitpgid(self.pgid, WaitOptions::NOHANG) {}
            if rustix::process::test_kill_process_group(self.pgid).is_err() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the service's processes do not go"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the first process to exit; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "luod did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("----- luod log -----\n{}-----", self.log());
        }
    }
}

fn luod_args(socket: &Path) -> Vec<String> {
    vec![
        "--socket".into(),
        socket.display().to_string(),
        "--log".into(),
        "luod=debug".into(),
    ]
}

fn wait_serving(socket: &Path, svc: &mut Service) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if Control::connect_at(socket).is_ok_and(|c| c.ping().is_ok()) {
            return;
        }
        if let Some(st) = svc.child.try_wait().unwrap() {
            panic!("luod exited ({st}):\n{}", svc.log());
        }
        assert!(
            Instant::now() < deadline,
            "luod does not serve:\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn patterned(name: &str, seed: u64, len: usize) -> (OwnedFd, Vec<u8>) {
    let mut bytes = vec![0u8; len];
    pattern_at(seed, 0, &mut bytes);
    (common::memfd_with(name, &bytes), bytes)
}

/// The contents of every regular file (memfd) in `store` under an `f<N>` name.
fn stored_files(store: &[(String, OwnedFd)]) -> Vec<(String, Vec<u8>)> {
    store
        .iter()
        .filter(|(n, fd)| {
            n.starts_with('f') && rustix::fs::fstat(fd).unwrap().st_mode & 0o170000 == 0o100000
        })
        .map(|(n, fd)| (n.clone(), pread_all(fd, 0, common::file_size(fd) as usize)))
        .collect()
}

/// Starts luod as systemd starts it after a restart: the store's descriptors at 3, 4, ...,
/// `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` the pid that execs luod.
fn start_with_fds(
    fds: &[(String, OwnedFd)],
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> Service {
    // Out of the way of 3, 4, ... first, in this process.
    let lifted: Vec<OwnedFd> = fds
        .iter()
        .map(|(_, fd)| rustix::io::fcntl_dupfd_cloexec(fd, 600).unwrap())
        .collect();
    let raws: Vec<i32> = lifted.iter().map(AsRawFd::as_raw_fd).collect();
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(luod_binary())
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: between fork and exec the closure only calls dup2, which is async-signal-safe,
    // on numbers open in the parent (`lifted` lives until spawn returns) onto 3.., all below
    // 600 where the sources are.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &raw) in raws.iter().enumerate() {
                if libc::dup2(raw, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let svc = Service::start(cmd, log);
    drop(lifted);
    svc
}

#[test]
fn notify_says_ready_status_and_stopping_in_order_and_stores_every_preserved_file() {
    let dir = temp_dir("sd-notify");
    let notify = Notify::new(&dir);
    let socket = dir.join("luod.sock");
    let mut cmd = Command::new(luod_binary());
    cmd.args(luod_args(&socket))
        .arg("--fdstore")
        .env("NOTIFY_SOCKET", &notify.path);
    let mut svc = Service::start(cmd, &dir.join("luod.log"));
    let ready = notify.wait(0, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);
    let status = Control::connect_at(&socket).unwrap().status().unwrap();
    let msgs = notify.msgs();
    let (keeper, server) = (status.keeper_pid as i32, status.pid as i32);
    assert_eq!(keeper, svc.pid(), "MAINPID is the process systemd started");
    assert_eq!(
        msgs[ready].value("MAINPID"),
        Some(keeper.to_string().as_str())
    );
    assert_eq!(
        msgs[ready].pid, server,
        "the server says READY (NotifyAccess=all)"
    );
    // Before READY: only the store's entries (the listener, the lock, the state).
    for m in &msgs[..ready] {
        assert!(
            m.has("FDSTORE=1") || m.has("FDSTOREREMOVE=1"),
            "{m:?} before READY"
        );
    }
    let hex = |p: i32| format!("{p:x}");
    notify.wait_store("the server's journal and checkpoint", |n| {
        n.contains(&format!("j{}", hex(server))) && n.contains(&format!("s{}.a", hex(server)))
    });

    // Preserved files go into the store with their bytes, before the preserve returns.
    let dev = Device::open_at(&socket).unwrap();
    let s = dev.create_session("stored").unwrap();
    let (a, a_bytes) = patterned("a", 1, 100_000);
    let (b, b_bytes) = patterned("b", 2, 1 << 20);
    s.preserve(a.as_fd(), 1).unwrap();
    s.preserve(b.as_fd(), 2).unwrap();
    notify.wait_store("both files", |n| {
        n.iter().filter(|n| n.starts_with('f')).count() >= 5
    });
    let files = stored_files(&notify.store());
    let a_name = files
        .iter()
        .find(|(_, c)| *c == a_bytes)
        .expect("a stored")
        .0
        .clone();
    let b_name = files
        .iter()
        .find(|(_, c)| *c == b_bytes)
        .expect("b stored")
        .0
        .clone();
    for m in notify.msgs().iter().filter(|m| m.has("FDSTORE=1")) {
        assert_eq!(m.fds, 1, "one descriptor per FDSTORE=1: {m:?}");
        assert!(m.has("FDPOLL=0"), "{m:?}");
        let name = m.value("FDNAME").unwrap();
        assert!(name.len() <= 255 && !name.contains(':'), "{name:?}");
    }
    let st = notify.wait(ready + 1, "STATUS with the counts", |m| {
        m.value("STATUS")
            .is_some_and(|s| s.contains("1 sessions, 2 files"))
    });
    assert!(
        notify.msgs()[st]
            .value("STATUS")
            .unwrap()
            .contains(&format!("{} bytes", 100_000 + (1 << 20))),
        "{:?}",
        notify.msgs()[st]
    );

    // Released files leave the store.
    drop(s);
    notify.wait_store("the files removed", |n| {
        !n.contains(&a_name) && !n.contains(&b_name)
    });

    rustix::process::kill_process(Pid::from_raw(keeper).unwrap(), Signal::TERM).unwrap();
    assert!(svc.wait_exit().success(), "{}", svc.log());
    let msgs = notify.msgs();
    let stopping = msgs
        .iter()
        .position(|m| m.has("STOPPING=1"))
        .expect("STOPPING=1");
    assert_eq!(
        stopping,
        msgs.len() - 1,
        "STOPPING=1 is the last message: {msgs:#?}"
    );
    assert_eq!(
        msgs.iter().filter(|m| m.has("READY=1")).count(),
        1,
        "{msgs:#?}"
    );
    assert!(ready < st && st < stopping);
    // With the store the socket's path stays: the stored listener is bound to it.
    assert!(socket.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_fdstore_nothing_is_stored_and_stopping_drops_the_sessions() {
    let dir = temp_dir("sd-nostore");
    let notify = Notify::new(&dir);
    let socket = dir.join("luod.sock");
    let mut cmd = Command::new(luod_binary());
    cmd.args(luod_args(&socket))
        .env("NOTIFY_SOCKET", &notify.path);
    let mut svc = Service::start(cmd, &dir.join("luod.log"));
    notify.wait(0, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);
    let dev = Device::open_at(&socket).unwrap();
    let s = dev.create_session("x").unwrap();
    s.preserve(patterned("x", 3, 4096).0.as_fd(), 1).unwrap();
    rustix::process::kill_process(Pid::from_raw(svc.pid()).unwrap(), Signal::TERM).unwrap();
    assert!(svc.wait_exit().success());
    let msgs = notify.msgs();
    assert!(
        msgs.iter().all(|m| m.fds == 0 && !m.has("FDSTORE=1")),
        "{msgs:#?}"
    );
    assert!(msgs.last().unwrap().has("STOPPING=1"));
    assert!(
        svc.log().contains("drops every preserved session"),
        "{}",
        svc.log()
    );
    assert!(!socket.exists(), "luod removes the socket it bound");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `systemd-socket-activate` listening at `socket` with `kind` (`--seqpacket`, or none
/// for a stream socket), to exec luod on the first connection.
fn socket_activate(
    socket: &Path,
    kind: &[&str],
    dir: &Path,
    env: &[(&str, &Path)],
) -> Option<Service> {
    let tool = Path::new("/usr/bin/systemd-socket-activate");
    if !tool.exists() {
        common::skip(
            "socket activation",
            "needs /usr/bin/systemd-socket-activate (Debian package systemd; scripts/setup)",
        );
        return None;
    }
    let mut cmd = Command::new(tool);
    cmd.args(kind)
        .arg("-l")
        .arg(socket)
        .arg("--fdname=luod.sock");
    for (k, v) in env {
        cmd.arg(format!("--setenv={k}={}", v.display()));
    }
    cmd.arg(luod_binary()).args(["--log", "luod=debug"]);
    let svc = Service::start(cmd, &dir.join("luod.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not bind"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(svc)
}

#[test]
fn socket_activation_serves_the_socket_given_across_an_upgrade_and_a_server_crash() {
    let dir = temp_dir("sd-activate");
    let notify = Notify::new(&dir);
    let socket = dir.join("activated.sock");
    let Some(mut svc) = socket_activate(
        &socket,
        &["--seqpacket"],
        &dir,
        &[("NOTIFY_SOCKET", &notify.path)],
    ) else {
        return;
    };
    // The first connection makes systemd-socket-activate exec luod, which serves it.
    wait_serving(&socket, &mut svc);
    let control = Control::connect_at(&socket).unwrap();
    let first = control.status().unwrap();
    assert_eq!(
        first.keeper_pid as i32,
        svc.pid(),
        "luod runs as the activated process"
    );
    assert!(svc.log().contains("luod serving"), "{}", svc.log());
    assert!(!svc.log().contains("Cannot bind"), "{}", svc.log());

    let dev = Device::open_at(&socket).unwrap();
    let s = dev.create_session("activated").unwrap();
    let (f, bytes) = patterned("f", 9, 300_000);
    s.preserve(f.as_fd(), 5).unwrap();
    s.handoff().unwrap();
    drop(s);

    // Upgrade: RELOADING=1 with MONOTONIC_USEC, then READY=1 from the successor.
    let from = notify.msgs().len();
    control.upgrade(None).unwrap();
    let r = notify.wait(from, "RELOADING=1", |m| m.has("RELOADING=1"));
    assert!(
        notify.msgs()[r]
            .value("MONOTONIC_USEC")
            .is_some_and(|v| v.parse::<u64>().is_ok())
    );
    let ready = notify.wait(r, "READY=1 after the upgrade", |m| m.has("READY=1"));
    let upgraded = Control::connect_at(&socket).unwrap().status().unwrap();
    assert_ne!(upgraded.pid, first.pid);
    assert_eq!(upgraded.keeper_pid, first.keeper_pid);
    assert_eq!(notify.msgs()[ready].pid, upgraded.pid as i32);

    // The server dies; the next one serves the same socket.
    rustix::process::kill_process(Pid::from_raw(upgraded.pid as i32).unwrap(), Signal::KILL)
        .unwrap();
    assert!(common::eventually(Duration::from_secs(15), || {
        Control::connect_at(&socket)
            .and_then(|c| c.status())
            .is_ok_and(|s| s.pid != upgraded.pid)
    }));
    let back = dev.retrieve_session("activated").unwrap();
    let got = back.retrieve(5).unwrap();
    assert_eq!(pread_all(&got, 0, bytes.len()), bytes);
    back.finish().unwrap();

    rustix::process::kill_process(Pid::from_raw(svc.pid()).unwrap(), Signal::TERM).unwrap();
    drop(control);
    drop(dev);
    assert!(svc.wait_exit().success(), "{}", svc.log());
    assert!(
        socket.exists(),
        "the socket belongs to whoever bound it (systemd), not to luod"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_socket_of_the_wrong_type_is_refused_with_a_clear_error() {
    let dir = temp_dir("sd-wrong-type");
    let socket = dir.join("stream.sock");
    let Some(mut svc) = socket_activate(&socket, &[], &dir, &[]) else {
        return;
    };
    // A stream connection starts luod, which must refuse the stream socket.
    let _trigger = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let st = svc.wait_exit();
    assert_eq!(st.code(), Some(1), "{}", svc.log());
    let log = svc.log();
    assert!(
        log.contains("is a AF_UNIX SOCK_STREAM socket, listening")
            && log.contains("only a listening AF_UNIX SOCK_SEQPACKET socket"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_watchdog_is_pinged_by_the_server_only_while_it_runs() {
    let dir = temp_dir("sd-watchdog");
    let notify = Notify::new(&dir);
    let socket = dir.join("luod.sock");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export WATCHDOG_PID=$$; exec "$0" "$@""#)
        .arg(luod_binary())
        .args(luod_args(&socket))
        .env("WATCHDOG_USEC", "200000")
        .env("NOTIFY_SOCKET", &notify.path);
    let mut svc = Service::start(cmd, &dir.join("luod.log"));
    notify.wait(0, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);
    let server = Control::connect_at(&socket).unwrap().status().unwrap().pid as i32;
    let pings = |n: &Notify| n.msgs().iter().filter(|m| m.has("WATCHDOG=1")).count();
    std::thread::sleep(Duration::from_millis(1000));
    let n1 = pings(&notify);
    assert!(n1 >= 5, "{n1} pings in a second with WATCHDOG_USEC=200000");
    assert!(
        notify
            .msgs()
            .iter()
            .filter(|m| m.has("WATCHDOG=1"))
            .all(|m| m.pid == server)
    );
    // A server that does not run its loop does not ping.
    let pid = Pid::from_raw(server).unwrap();
    rustix::process::kill_process(pid, Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stopped = pings(&notify);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(pings(&notify), stopped, "pings from a stopped server");
    rustix::process::kill_process(pid, Signal::CONT).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(pings(&notify) > stopped, "pings resume");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let dir = temp_dir("sd-watchdog-other");
    let notify = Notify::new(&dir);
    let socket = dir.join("luod.sock");
    let mut cmd = Command::new(luod_binary());
    cmd.args(luod_args(&socket))
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .env("NOTIFY_SOCKET", &notify.path);
    let mut svc = Service::start(cmd, &dir.join("luod.log"));
    notify.wait(0, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!notify.msgs().iter().any(|m| m.has("WATCHDOG=1")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restart_of_the_whole_service_gets_every_descriptor_back_from_the_store() {
    let dir = temp_dir("sd-restart");
    let notify = Notify::new(&dir);
    let socket = dir.join("luod.sock");
    let mut args = luod_args(&socket);
    args.push("--fdstore".into());
    let mut cmd = Command::new(luod_binary());
    cmd.args(&args).env("NOTIFY_SOCKET", &notify.path);
    let mut svc = Service::start(cmd, &dir.join("luod.log"));
    notify.wait(0, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);

    // An outgoing session kept open (its connection too), one handed off, one closed.
    let dev = Device::open_at(&socket).unwrap();
    let kept = dev.create_session("kept").unwrap();
    let (k, k_bytes) = patterned("k", 11, 256 * 1024);
    kept.preserve(k.as_fd(), 1).unwrap();
    let handed = dev.create_session("handed").unwrap();
    let (h, h_bytes) = patterned("h", 12, 1 << 20);
    handed.preserve(h.as_fd(), 2).unwrap();
    handed.handoff().unwrap();
    drop(handed);
    let gone = dev.create_session("gone").unwrap();
    gone.preserve(patterned("g", 13, 4096).0.as_fd(), 3)
        .unwrap();
    drop(gone);
    drop(k);
    drop(h);

    // An upgrade first: the successor's state replaces its predecessor's in the store.
    let control = Control::connect_at(&socket).unwrap();
    let before = control.status().unwrap();
    control.upgrade(None).unwrap();
    let after = Control::connect_at(&socket).unwrap().status().unwrap();
    assert_ne!(after.pid, before.pid);
    let (old, new) = (format!("j{:x}", before.pid), format!("j{:x}", after.pid));
    notify.wait_store("the successor's journal in place of the old", |n| {
        n.contains(&new) && !n.contains(&old)
    });
    // A closed session's file left the store: a memfd of 4096 bytes is in no entry.
    let files = stored_files(&notify.store());
    assert!(files.iter().any(|(_, c)| *c == k_bytes) && files.iter().any(|(_, c)| *c == h_bytes));
    assert!(
        !files.iter().any(|(_, c)| c.len() == 4096),
        "{:?}",
        notify.names()
    );

    // The whole service dies at once, as a kill of its cgroup.
    svc.kill_all();
    notify.sync();
    let stored = notify.store();
    let names: HashSet<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.len(),
        stored.len(),
        "one entry per name: {:?}",
        notify.names()
    );
    let log = dir.join("restart.log");
    let env = [("NOTIFY_SOCKET", notify.path.display().to_string())];
    let removals = |n: &Notify| n.msgs().iter().filter(|m| m.has("FDSTOREREMOVE=1")).count();
    let removed_before = removals(&notify);

    // Bad input first: a pipe where the store held a memfd.
    let k_name = stored_files(&stored)
        .into_iter()
        .find(|(_, c)| *c == k_bytes)
        .unwrap()
        .0;
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let mut wrong: Vec<(String, OwnedFd)> = stored
        .iter()
        .map(|(n, fd)| (n.clone(), fd.try_clone().unwrap()))
        .collect();
    for e in &mut wrong {
        if e.0 == k_name {
            e.1 = pipe_r.try_clone().unwrap();
        }
    }
    let mut bad = start_with_fds(&wrong, &args, &env, &log);
    assert_eq!(bad.wait_exit().code(), Some(1), "{}", bad.log());
    assert!(
        bad.log()
            .contains(&format!("The stored descriptor {k_name} is a pipe"))
            && bad.log().contains("nothing was removed from the store"),
        "{}",
        bad.log()
    );
    drop(bad);
    // A name handed twice.
    let mut twice: Vec<(String, OwnedFd)> = stored
        .iter()
        .map(|(n, fd)| (n.clone(), fd.try_clone().unwrap()))
        .collect();
    twice.push((
        k_name.clone(),
        stored
            .iter()
            .find(|e| e.0 == k_name)
            .unwrap()
            .1
            .try_clone()
            .unwrap(),
    ));
    let mut bad = start_with_fds(&twice, &args, &env, &log);
    assert_eq!(bad.wait_exit().code(), Some(1), "{}", bad.log());
    assert!(bad.log().contains("two descriptors named"), "{}", bad.log());
    drop(bad);
    assert_eq!(
        removals(&notify),
        removed_before,
        "a refused start removed something"
    );

    // Now as systemd would: the store as it is.
    let from = notify.msgs().len();
    let mut svc = start_with_fds(&stored, &args, &env, &log);
    let ready = notify.wait_serving(from, "READY=1 after the restart", &mut svc, |m| {
        m.has("READY=1")
    });
    wait_serving(&socket, &mut svc);
    assert!(
        svc.log()
            .contains("took back luod's state from systemd's descriptor store"),
        "{}",
        svc.log()
    );
    let restored = Control::connect_at(&socket).unwrap().status().unwrap();
    assert_eq!(restored.keeper_pid as i32, svc.pid());
    assert_eq!(notify.msgs()[ready].pid, restored.pid as i32);
    assert_eq!(restored.sessions_outgoing, 1, "{restored:?}");
    assert_eq!(restored.sessions_incoming, 1, "{restored:?}");
    assert_eq!(restored.files, 2, "{restored:?}");

    // The connections made before the restart still work: the device and the kept session.
    let (k2, k2_bytes) = patterned("k2", 14, 8192);
    kept.preserve(k2.as_fd(), 4).unwrap();
    kept.handoff().unwrap();
    drop(kept);
    let back = dev.retrieve_session("kept").unwrap();
    assert_eq!(
        pread_all(back.retrieve(1).unwrap(), 0, k_bytes.len()),
        k_bytes
    );
    assert_eq!(
        pread_all(back.retrieve(4).unwrap(), 0, k2_bytes.len()),
        k2_bytes
    );
    back.finish().unwrap();
    let back = dev.retrieve_session("handed").unwrap();
    assert_eq!(
        pread_all(back.retrieve(2).unwrap(), 0, h_bytes.len()),
        h_bytes
    );
    back.finish().unwrap();
    assert!(
        dev.retrieve_session("gone").is_err(),
        "a closed session came back"
    );

    // The dead lineage's state left the store; the new server's is there.
    let me = format!("j{:x}", restored.pid);
    notify.wait_store("the restored server's state alone", |n| {
        n.contains(&me) && n.iter().filter(|n| n.starts_with('j')).count() == 1
    });
    drop(dev);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stop_with_the_store_keeps_every_session_for_the_next_start() {
    // `systemctl restart luod`: SIGTERM to the keeper, then a new start with the store.
    let dir = temp_dir("sd-stop-start");
    let notify = Notify::new(&dir);
    let socket = dir.join("luod.sock");
    let mut args = luod_args(&socket);
    args.push("--fdstore".into());
    let mut cmd = Command::new(luod_binary());
    cmd.args(&args).env("NOTIFY_SOCKET", &notify.path);
    let mut svc = Service::start(cmd, &dir.join("luod.log"));
    notify.wait(0, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);
    let server = Control::connect_at(&socket).unwrap().status().unwrap().pid;
    let (f, bytes) = patterned("f", 21, 2 << 20);
    {
        let dev = Device::open_at(&socket).unwrap();
        let s = dev.create_session("across-stop").unwrap();
        s.preserve(f.as_fd(), 8).unwrap();
        s.handoff().unwrap();
    }
    drop(f);
    let journal = format!("j{server:x}");
    notify.wait_store("the journal", |n| n.contains(&journal));
    rustix::process::kill_process(Pid::from_raw(svc.pid()).unwrap(), Signal::TERM).unwrap();
    assert!(svc.wait_exit().success(), "{}", svc.log());
    notify.sync();
    let last = notify.msgs().last().cloned().unwrap();
    assert!(last.has("STOPPING=1"), "{last:?}");
    assert!(
        last.value("STATUS")
            .is_some_and(|s| s.contains("kept in systemd's descriptor store"))
    );
    assert!(
        svc.log().contains("stays in systemd's descriptor store"),
        "{}",
        svc.log()
    );
    svc.kill_all();
    notify.sync();

    // As with luod.socket: the socket unit's socket comes first, under its own name, and the
    // stored listener (the same socket) after it.
    let mut handed = notify.store();
    let listener = handed
        .iter()
        .find(|(_, fd)| rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false))
        .map(|(_, fd)| fd.try_clone().unwrap())
        .expect("the listener is stored");
    handed.insert(0, ("luod.sock".into(), listener));
    let from = notify.msgs().len();
    let mut svc = start_with_fds(
        &handed,
        &args,
        &[("NOTIFY_SOCKET", notify.path.display().to_string())],
        &dir.join("second.log"),
    );
    notify.wait(from, "READY=1", |m| m.has("READY=1"));
    wait_serving(&socket, &mut svc);
    let dev = Device::open_at(&socket).unwrap();
    let s = dev.retrieve_session("across-stop").unwrap();
    assert_eq!(pread_all(s.retrieve(8).unwrap(), 0, bytes.len()), bytes);
    s.finish().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
