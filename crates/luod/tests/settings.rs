//! luod's settings and limits: flags, the config file, per-uid quotas, the descriptor budget,
//! the single-instance lock, and what SIGTERM says it drops.

#![allow(clippy::unwrap_used)] // Test helpers: a failure is a test failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use luo_abi::Errno;
use luo_client::{Control, Device};

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // An upgrade replaces the process we started: stop whichever one serves now.
        if let Ok(status) = Control::connect_at(&self.socket).and_then(|c| c.status())
            && let Some(pid) = rustix::process::Pid::from_raw(status.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("luod-settings-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `prefix... luod --socket <dir>/luod.sock args...` and waits until it answers.
fn start(tag: &str, prefix: &[&str], args: &[&str]) -> Daemon {
    let dir = temp_dir(tag);
    let socket = dir.join("luod.sock");
    let luod = env!("CARGO_BIN_EXE_luod");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(luod);
            c
        }
        None => Command::new(luod),
    };
    cmd.arg("--socket")
        .arg(&socket)
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let child = cmd.spawn().unwrap();
    let daemon = Daemon { child, dir, socket };
    wait_ready(&daemon.socket);
    daemon
}

fn wait_ready(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if Control::connect_at(socket).and_then(|c| c.ping()).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("luod did not start on {}", socket.display());
}

fn memfd(len: u64) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("settings", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_luod"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--socket",
        "--config",
        "--socket-mode",
        "--max-sessions",
        "--max-files",
        "--max-bytes",
        "--max-fds",
        "--fd-reserve",
        "--log",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    assert!(
        !text.contains("--takeover"),
        "the internal flag stays hidden"
    );
}

#[test]
fn a_second_luod_on_the_same_socket_refuses_to_start() {
    let first = start("second", &[], &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_luod"))
        .arg("--socket")
        .arg(&first.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Another luod is already serving"), "{err}");
    // The first one still serves.
    Control::connect_at(&first.socket).unwrap().ping().unwrap();
}

#[test]
fn the_config_file_sets_quotas_and_flags_override_it() {
    let dir = temp_dir("config-file");
    let config = dir.join("luod.toml");
    std::fs::write(
        &config,
        "socket_mode = \"0600\"\n[limits]\nsessions = 2\nfiles = 3\nbytes = 1048576\n",
    )
    .unwrap();
    let d = start(
        "config",
        &[],
        &["--config", config.to_str().unwrap(), "--max-files", "2"],
    );
    let device = Device::open_at(&d.socket).unwrap();
    let a = device.create_session("a").unwrap();
    let _b = device.create_session("b").unwrap();
    let err = device.create_session("c").unwrap_err();
    assert_eq!(err.errno, Errno::ENOSPC);
    assert!(
        err.message.as_deref().unwrap_or("").contains("sessions"),
        "{err}"
    );
    // Bytes: 1 MiB allowed in all.
    let big = memfd(2 << 20);
    let err = a.preserve(&big, 1).unwrap_err();
    assert_eq!(err.errno, Errno::ENOSPC);
    assert!(err.to_string().contains("bytes"), "{err}");
    // Files: the flag (2) overrides the file (3).
    a.preserve(memfd(4096), 1).unwrap();
    a.preserve(memfd(4096), 2).unwrap();
    let err = a.preserve(memfd(4096), 3).unwrap_err();
    assert_eq!(err.errno, Errno::ENOSPC);
    assert!(err.to_string().contains("files"), "{err}");
    // Nothing was lost by the refusals.
    let listed = Control::connect_at(&d.socket).unwrap().sessions().unwrap();
    assert_eq!(listed.iter().map(|s| s.files).sum::<u64>(), 2);
    let mode = std::fs::metadata(&d.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = temp_dir("bad-config");
    let config = dir.join("luod.toml");
    std::fs::write(&config, "sockett = \"/tmp/x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_luod"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.join("luod.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Invalid config file") && err.contains("sockett"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_luod"))
        .args(["--socket-mode", "999", "--socket"])
        .arg(dir.join("luod.sock"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid socket mode"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_descriptor_budget_refuses_a_preserve_before_it_runs_out() {
    // luod under a hard limit of 160 descriptors: it keeps 64 spare, so about 90 can be held.
    let d = start("budget", &["prlimit", "--nofile=160:160", "--"], &[]);
    let status = Control::connect_at(&d.socket).unwrap().status().unwrap();
    assert_eq!(status.fd_limit, 160, "luod reports the limit it raised to");
    let device = Device::open_at(&d.socket).unwrap();
    let session = device.create_session("many").unwrap();
    let mut preserved = 0u64;
    let err = loop {
        match session.preserve(memfd(4096), preserved) {
            Ok(()) => preserved += 1,
            Err(e) => break e,
        }
        assert!(preserved < 200, "the budget never refused");
    };
    assert_eq!(err.errno, Errno::EMFILE);
    assert!(err.to_string().contains("descriptor budget"), "{err}");
    assert!(preserved > 50, "only {preserved} preserved");
    // luod still serves, and everything preserved is still there.
    let control = Control::connect_at(&d.socket).unwrap();
    let s = control.status().unwrap();
    assert_eq!(s.files, preserved);
    assert!(s.fd_used <= s.fd_limit);
}

#[test]
fn sigterm_stops_luod_and_says_what_it_drops() {
    let mut d = start("sigterm", &[], &[]);
    let device = Device::open_at(&d.socket).unwrap();
    let session = device.create_session("doomed").unwrap();
    session.preserve(memfd(8192), 1).unwrap();
    let pid = rustix::process::Pid::from_raw(d.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = d.child.wait_with_output_ref();
    assert!(out.0.success(), "luod exits cleanly on SIGTERM");
    assert!(out.1.contains("drops every preserved session"), "{}", out.1);
    assert!(
        out.1.contains("sessions=1") && out.1.contains("files=1"),
        "{}",
        out.1
    );
    assert!(!d.socket.exists(), "the socket is removed");
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut s) = self.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (self.wait().unwrap(), err)
    }
}

#[test]
fn luods_own_connections_cannot_be_preserved_even_after_an_upgrade() {
    // The kernel has no handler for session descriptors; luod refuses its own connections the
    // same way, while ordinary sockets are preserved by reference.
    let d = start("own-conns", &[], &[]);
    let device = Device::open_at(&d.socket).unwrap();
    let a = device.create_session("a").unwrap();
    let b = device.create_session("b").unwrap();
    assert_eq!(
        a.preserve(&b, 1).unwrap_err().errno,
        Errno::ENOENT,
        "a session descriptor"
    );
    assert_eq!(
        a.preserve(&device, 2).unwrap_err().errno,
        Errno::ENOENT,
        "the device"
    );
    let control = Control::connect_at(&d.socket).unwrap();
    let (x, _y) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    a.preserve(&x, 3).unwrap();
    control.upgrade(None).unwrap();
    // Sockets made by the old server (b) and by the new one (c) are both refused.
    let c = device.create_session("c").unwrap();
    assert_eq!(a.preserve(&b, 4).unwrap_err().errno, Errno::ENOENT);
    assert_eq!(a.preserve(&c, 5).unwrap_err().errno, Errno::ENOENT);
}
