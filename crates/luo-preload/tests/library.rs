//! The library in ordinary programs: everything but /dev/liveupdate is untouched, and the
//! daemon's socket is found by the same rule as `luo_client::default_socket`.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{Flavor, Luod, binaries, build, have_gcc, run_command, skip};

/// `cat`, `ls`, `sh` and `dd` run with the library preloaded exactly as without it.
#[test]
fn ordinary_programs_are_untouched() {
    let dir = common::temp_dir("untouched");
    let file = dir.join("data");
    let text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&file, &text).expect("write");
    let script = format!(
        "cat {f} > {f}.copy && ls -l /dev/null {f} | wc -l && cat {f}.copy | wc -c && \
         dd if={f} of={f}.dd bs=1k status=none && cmp {f} {f}.dd && echo same",
        f = file.display()
    );
    let mut outputs = Vec::new();
    for preload in [false, true] {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script])
            .env("LUOD_SOCKET", dir.join("none.sock"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if preload {
            cmd.env("LD_PRELOAD", &binaries().preload);
        } else {
            cmd.env_remove("LD_PRELOAD");
        }
        let out = run_command(cmd, "sh");
        assert!(
            out.status.success(),
            "preload={preload}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.is_empty(), "preload={preload}: {}", out.stderr);
        outputs.push(out.stdout);
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[1].ends_with("same\n"), "{}", outputs[1]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Without `LUOD_SOCKET`, a user other than root finds luod at `$XDG_RUNTIME_DIR/luod.sock`
/// (each uid has its own /dev/liveupdate there). Needs root to run a program as another uid.
#[test]
fn default_socket_of_a_user() {
    if !have_gcc("default_socket_of_a_user") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        skip(
            "default_socket_of_a_user",
            "needs root to run a program as another uid",
        );
        return;
    }
    let dir = common::temp_dir("xdg");
    let socket = dir.join("luod.sock");
    // A luod serving every uid on the XDG path.
    let mut luod_cmd = Command::new(&binaries().luod);
    luod_cmd
        .arg("--socket")
        .arg(&socket)
        .args(["--socket-mode", "0666", "--log", "warn"])
        .env_remove("LUOD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut luod = luod_cmd.spawn().expect("spawn luod");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while luo_client::Control::connect_at(&socket)
        .and_then(|c| c.ping())
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "luod did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let prog = build("luo_open_family", Flavor::O2);
    let mut cmd = Command::new(&prog);
    cmd.env_remove("LUOD_SOCKET")
        .env("XDG_RUNTIME_DIR", &dir)
        .env("LD_PRELOAD", &binaries().preload)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_command(cmd, "luo_open_family as uid 65534");
    let _ = luod.kill();
    let _ = luod.wait();
    out.assert_passed("luo_open_family as uid 65534 via $XDG_RUNTIME_DIR");
    let _ = std::fs::remove_dir_all(dir);
}

/// The same program with the device held by root: another uid has its own namespace, so its
/// open does not see root's EBUSY.
#[test]
fn each_uid_has_its_own_device() {
    if !have_gcc("each_uid_has_its_own_device") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        skip(
            "each_uid_has_its_own_device",
            "needs root to run a program as another uid",
        );
        return;
    }
    let luod = Luod::start("uids");
    std::fs::set_permissions(
        &luod.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod socket");
    let root_device = luo_client::Device::open_at(&luod.socket).expect("root's device");
    let prog = build("luo_open_family", Flavor::O2);
    let mut cmd = Command::new(&prog);
    cmd.env("LUOD_SOCKET", &luod.socket)
        .env("LD_PRELOAD", &binaries().preload)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_command(cmd, "luo_open_family as uid 65534").assert_passed("uid 65534 beside root");
    drop(root_device);
}
