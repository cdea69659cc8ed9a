//! luod run by a user other than root, as the README's "Running luod as a non-root user"
//! says: no flag, no config, its socket the user's default (`$XDG_RUNTIME_DIR/luod.sock`), its
//! descriptor limit the user's hard limit; the user's workload hands a memfd off, luod upgrades
//! itself and emulates a reboot, all without root, and the memory comes through every step.
//!
//! Run as root, the test switches luod and every client to a uid of its own (no passwd entry,
//! unique to this test process); run as another user, it runs them as that user.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{Group, STEP, TempDir, built, have, run};

/// The uid the test runs luod as when it runs as root.
fn test_uid() -> u32 {
    2_100_000_000 + std::process::id() % 100_000_000
}

/// A command run as `uid` (unless that is this process's own) with the user's environment:
/// `XDG_RUNTIME_DIR` and none of luod's variables.
fn as_user(program: &Path, uid: u32, runtime: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "LUOD_SOCKET",
        "LUOD_CONFIG",
        "LUOD_SERVER_UID",
        "LD_PRELOAD",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("XDG_RUNTIME_DIR", runtime);
    if uid != rustix::process::geteuid().as_raw() {
        cmd.uid(uid).gid(uid);
    }
    cmd
}

#[test]
fn luod_of_a_user_other_than_root_hands_off_upgrades_and_reboots() {
    let test = "luod_of_a_user_other_than_root_hands_off_upgrades_and_reboots";
    if !have(test, &["prlimit", "--version"], "util-linux") {
        return;
    }
    let root = rustix::process::geteuid().is_root();
    let uid = if root {
        test_uid()
    } else {
        rustix::process::geteuid().as_raw()
    };
    let b = built();
    let scratch = TempDir::new("non-root");
    // The user's runtime directory, as systemd-logind makes it: owned by the user, 0700.
    let runtime = scratch.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    if root {
        std::os::unix::fs::chown(&runtime, Some(uid), Some(uid)).expect("chown");
    }
    let socket = runtime.join("luod.sock");

    // luod with no flag at all, under a hard descriptor limit of 4096 (soft 1024).
    let log = scratch.path().join("luod.log");
    let mut prlimit = as_user(Path::new("prlimit"), uid, &runtime);
    prlimit
        .args(["--nofile=1024:4096", "--"])
        .arg(&b.luod)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut luod = Group::spawn(&mut prlimit);
    let luoctl = |args: &[&str]| {
        let out = run(as_user(&b.luoctl, uid, &runtime).args(args), STEP);
        out.assert_success(&format!("luoctl {}", args.join(" ")));
        out.stdout
    };
    let end = Instant::now() + STEP;
    while !socket.exists() {
        if let Some(status) = luod.0.try_wait().expect("wait") {
            panic!(
                "luod exited at start ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < end, "luod made no {}", socket.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let meta = std::fs::symlink_metadata(&socket).expect("socket");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o600));

    // The descriptor limit is the user's hard limit, which luod raised its soft limit to.
    let status = luoctl(&["status"]);
    assert!(status.contains("generation:   0"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("descriptors:") && l.ends_with(" of 4096")),
        "{status}"
    );

    // A handoff, as the walkthrough does it.
    let workload = |args: &[&str]| {
        let out = run(as_user(&b.workload, uid, &runtime).args(args), STEP);
        out.assert_success(&format!("workload {}", args.join(" ")));
        out.stdout
    };
    let v1 = workload(&["v1", "counter"]);
    assert!(v1.contains("counter=1 preserved"), "{v1}");
    let sessions = luoctl(&["sessions", "--json"]);
    assert!(
        sessions.contains(&format!(
            "\"owner\":{uid},\"name\":\"counter\",\"state\":\"incoming\""
        )),
        "{sessions}"
    );

    // v2 keeps the counter in an open outgoing session while luod upgrades and reboots.
    let mut v2_cmd = as_user(&b.workload, uid, &runtime);
    v2_cmd
        .args(["v2", "counter", "--keep"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut v2 = Group::spawn(&mut v2_cmd);
    let (tx, rx) = channel();
    let stdout = v2.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = String::new();
    while !said.contains("holding it") {
        let line = rx
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("v2 did not hold its session: {said}"));
        said.push_str(&line);
        said.push('\n');
    }
    assert!(said.contains("counter was 1, now 2"), "{said}");

    // luod's own uid may upgrade and reboot it: no root needed.
    let upgraded = luoctl(&["upgrade"]);
    assert!(upgraded.contains("luod upgraded: pid "), "{upgraded}");
    let rebooted = luoctl(&["reboot"]);
    assert!(
        rebooted.contains("open sessions are now incoming"),
        "{rebooted}"
    );
    drop(v2);

    let v3 = workload(&["v3", "counter"]);
    assert!(v3.contains("counter was 2, now 3"), "{v3}");
    let status = luoctl(&["status", "--json"]);
    assert!(
        status.contains("\"generation\":1") && status.contains("\"upgrades\":"),
        "{status}"
    );

    // A user's luod stops on SIGTERM as root's does, and removes its socket.
    let keeper = rustix::process::Pid::from_raw(luod.0.id() as i32).expect("pid");
    rustix::process::kill_process(keeper, rustix::process::Signal::TERM).expect("SIGTERM");
    let end = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = luod.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < end, "luod did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "luod stopped with {status}");
    assert!(!socket.exists(), "luod left {}", socket.display());
    drop(luod);
}
