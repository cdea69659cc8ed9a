//! luoctl's failures, each in a real situation: no luod at the socket (no file, a stale
//! socket, a socket of another kind, a connection luod drops), permission denied (the
//! socket's mode, a directory on the way, an operation only root may do), a socket another
//! user serves or a private directory another user made, an operation luod refuses, and a
//! wrong command line. Each must exit with its documented status and say what is wrong and
//! what to do, on standard error, and, with `--json`, print one JSON error document.
//!
//! The tests that need another uid run as root and switch a child to `nobody` (65534) or to
//! a uid no one has.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

use common::{Luoctl, Luod, NOBODY, Redact, TempDir, require_root};

/// The exit statuses (`src/exit.rs`; `docs/luoctl.md`).
const FAILED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;
const PERMISSION_DENIED: i32 = 4;
const UNTRUSTED: i32 = 5;

/// `out` failed with `code`, printed nothing on standard output, and `luoctl: ` messages on
/// standard error.
fn failed(out: &common::Output, code: i32) {
    assert_eq!(out.code(), Some(code), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        !out.stderr.is_empty() && out.stderr.lines().all(|l| l.starts_with("luoctl: ")),
        "{out:?}"
    );
}

/// `out` (of a `--json` run) failed with `code` and printed the error document, whose
/// message is what standard error says.
fn failed_json(out: &common::Output, code: i32, kind: &str) -> serde_json::Value {
    assert_eq!(out.code(), Some(code), "{out:?}");
    let v = out.json();
    let e = &v["error"];
    assert_eq!(
        (&e["exit"], &e["kind"]),
        (&code.into(), &kind.into()),
        "{v}"
    );
    let said: Vec<&str> = out
        .stderr
        .lines()
        .map(|l| l.strip_prefix("luoctl: ").expect("prefix"))
        .collect();
    assert_eq!(e["message"], said.join("; "), "{out:?}");
    v
}

fn unix_socket(kind: rustix::net::SocketType) -> std::os::fd::OwnedFd {
    rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        kind,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket")
}

fn bind(fd: impl AsFd, path: &std::path::Path) {
    rustix::net::bind(fd, &rustix::net::SocketAddrUnix::new(path).expect("addr")).expect("bind");
}

#[test]
fn no_luod_at_the_socket_exits_3_and_says_how_to_start_it() {
    let dir = TempDir::new("absent");
    let socket = dir.path().join("luod.sock");
    let redact = Redact::new().text(dir.path(), "[DIR]");
    let luoctl = Luoctl::new();
    for args in [
        &["status"][..],
        &["sessions"],
        &["upgrade"],
        &["reboot"],
        &["migrate", "s", "1", "--to", "2m"],
    ] {
        let out = luoctl.at(&socket, args);
        failed(&out, UNREACHABLE);
        assert!(out.stderr.contains("luod is not running at"), "{out:?}");
    }
    let out = luoctl.at(&socket, &["status"]);
    insta::assert_snapshot!("no_socket", redact.apply(&out.stderr));
    let out = luoctl.at(&socket, &["sessions", "--json"]);
    let v = failed_json(&out, UNREACHABLE, "unreachable");
    assert_eq!(
        (&v["error"]["errno"], &v["error"]["errno_name"]),
        (&2.into(), &"ENOENT".into())
    );
    insta::assert_snapshot!("no_socket_json", redact.apply(&out.stdout));

    // `version` still says its own version, on standard output.
    let out = luoctl.at(&socket, &["version"]);
    assert_eq!(out.code(), Some(UNREACHABLE));
    assert_eq!(
        out.stdout,
        format!("luoctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = luoctl.at(&socket, &["version", "--json"]);
    let v = failed_json(&out, UNREACHABLE, "unreachable");
    assert_eq!(
        (&v["luoctl"], &v["luod"]),
        (&env!("CARGO_PKG_VERSION").into(), &serde_json::Value::Null)
    );

    // The socket may come from the environment: the hint names it.
    let out = Luoctl::new()
        .env("LUOD_SOCKET", socket.to_str().expect("utf-8"))
        .run(&["status"]);
    failed(&out, UNREACHABLE);
    assert!(
        out.stderr.contains(&format!(
            "start it with `luod --socket {}`",
            socket.display()
        )),
        "{out:?}"
    );
}

#[test]
fn a_socket_nobody_serves_exits_3() {
    let dir = TempDir::new("stale");
    let redact = Redact::new().text(dir.path(), "[DIR]");
    // A socket file left by a luod killed with SIGKILL: bound, nobody listening.
    let stale = dir.path().join("stale.sock");
    bind(unix_socket(rustix::net::SocketType::SEQPACKET), &stale);
    let out = Luoctl::new().at(&stale, &["status"]);
    failed(&out, UNREACHABLE);
    insta::assert_snapshot!("stale_socket", redact.apply(&out.stderr));

    // A socket of another kind (a stream socket), listening.
    let stream_path = dir.path().join("stream.sock");
    let stream = unix_socket(rustix::net::SocketType::STREAM);
    bind(&stream, &stream_path);
    rustix::net::listen(&stream, 8).expect("listen");
    let out = Luoctl::new().at(&stream_path, &["status"]);
    failed(&out, UNREACHABLE);
    insta::assert_snapshot!("stream_socket", redact.apply(&out.stderr));

    // A regular file.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"").expect("write");
    let out = Luoctl::new().at(&file, &["status", "--json"]);
    failed_json(&out, UNREACHABLE, "unreachable");
}

#[test]
fn a_connection_luod_drops_exits_3() {
    let dir = TempDir::new("dropped");
    let path = dir.path().join("luod.sock");
    let listener = unix_socket(rustix::net::SocketType::SEQPACKET);
    bind(&listener, &path);
    rustix::net::listen(&listener, 8).expect("listen");
    // A server of this uid (so luoctl trusts it) that hangs up on its first connection.
    let server = std::thread::spawn(move || {
        let conn = rustix::net::accept(&listener).expect("accept");
        drop(conn);
    });
    let out = Luoctl::new().at(&path, &["status"]);
    server.join().expect("server");
    failed(&out, UNREACHABLE);
    assert!(
        out.stderr.contains(&format!(
            "lost the connection to luod at {} during status",
            path.display()
        )) && (out.stderr.contains("(EPIPE)") || out.stderr.contains("(ECONNRESET)")),
        "{out:?}"
    );
}

#[test]
fn a_socket_that_does_not_let_the_user_in_exits_4() {
    if !require_root("a_socket_that_does_not_let_the_user_in_exits_4") {
        return;
    }
    // Root's luod, socket mode 0600: nobody may not connect.
    let luod = Luod::start_as("denied", 0, &[]);
    let redact = Redact::new().text(luod.dir.path(), "[DIR]");
    let nobody = Luoctl::as_uid(NOBODY);
    let out = nobody.at(&luod.socket, &["status"]);
    failed(&out, PERMISSION_DENIED);
    insta::assert_snapshot!("socket_mode_denied", redact.apply(&out.stderr));
    let out = nobody.at(&luod.socket, &["status", "--json"]);
    let v = failed_json(&out, PERMISSION_DENIED, "permission-denied");
    assert_eq!(v["error"]["errno_name"], "EACCES");

    // The socket's directory shut to others.
    std::fs::set_permissions(luod.dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let out = nobody.at(&luod.socket, &["sessions"]);
    failed(&out, PERMISSION_DENIED);
    insta::assert_snapshot!("socket_dir_denied", redact.apply(&out.stderr));
    std::fs::set_permissions(luod.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
}

#[test]
fn an_operation_only_root_may_do_exits_4() {
    if !require_root("an_operation_only_root_may_do_exits_4") {
        return;
    }
    let luod = Luod::start_as("root-only", 0, &["--socket-mode", "0666"]);
    let nobody = Luoctl::as_uid(NOBODY);
    for (op, snapshot) in [
        ("upgrade", "upgrade_not_root"),
        ("reboot", "reboot_not_root"),
    ] {
        let out = nobody.at(&luod.socket, &[op]);
        failed(&out, PERMISSION_DENIED);
        insta::assert_snapshot!(snapshot, out.stderr);
        let out = nobody.at(&luod.socket, &[op, "--json"]);
        let v = failed_json(&out, PERMISSION_DENIED, "permission-denied");
        assert_eq!(v["error"]["errno_name"], "EPERM");
    }
    // Everything else works for nobody.
    assert_eq!(nobody.at(&luod.socket, &["status"]).code(), Some(0));
}

#[test]
fn a_socket_another_user_serves_exits_5() {
    if !require_root("a_socket_another_user_serves_exits_5") {
        return;
    }
    let luod = Luod::start_as("untrusted", NOBODY, &["--socket-mode", "0666"]);
    let redact = Redact::new().text(luod.dir.path(), "[DIR]");
    let out = Luoctl::new().at(&luod.socket, &["status"]);
    failed(&out, UNTRUSTED);
    insta::assert_snapshot!("served_by_another_user", redact.apply(&out.stderr));
    let out = Luoctl::new().at(&luod.socket, &["sessions", "--json"]);
    let v = failed_json(&out, UNTRUSTED, "untrusted-socket");
    assert_eq!(v["error"]["errno_name"], "EACCES");
    // The way out the message names.
    let out = Luoctl::new()
        .env("LUOD_SERVER_UID", &NOBODY.to_string())
        .at(&luod.socket, &["status"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn a_private_directory_another_user_made_exits_5() {
    if !require_root("a_private_directory_another_user_made_exits_5") {
        return;
    }
    // A uid no one has, unique to this test process; its default socket is
    // /tmp/luod-<uid>/luod.sock, in a directory nobody made first.
    let victim = 2_000_000_000 + std::process::id() * 16 + 1;
    let dir = luo_client::socket::private_dir(victim);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir");
    let dir = TempDir(dir);
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let out = Luoctl::as_uid(victim).run(&["status"]);
    failed(&out, UNTRUSTED);
    let redact = Redact::new().number(victim.into(), "[VICTIM]");
    insta::assert_snapshot!("private_dir_of_another_user", redact.apply(&out.stderr));
}

#[test]
fn an_operation_luod_refuses_exits_1_with_its_errno() {
    let luod = Luod::start("refused");
    let out = Luoctl::new().at(&luod.socket, &["migrate", "no such", "1", "--to", "4k"]);
    failed(&out, FAILED);
    insta::assert_snapshot!("migrate_no_such_session", out.stderr);
    let out = Luoctl::new().at(
        &luod.socket,
        &["migrate", "no such", "1", "--to", "4k", "--json"],
    );
    let v = failed_json(&out, FAILED, "failed");
    insta::assert_snapshot!("migrate_no_such_session_json", out.stdout);
    assert_eq!(v["error"]["reason"], "No such session");
}

#[test]
fn a_wrong_command_line_exits_2() {
    let dir = TempDir::new("usage");
    let socket = dir.path().join("luod.sock");
    let luoctl = Luoctl::new();
    for args in [
        &["migrate", "s", "1", "--to", "3m"][..],
        &["migrate", "s", "token", "--to", "4k"],
        &["no-such-command"],
        &["status", "--no-such-flag"],
        &["completions", "tcsh"],
        &["upgrade", "--binary", ""],
    ] {
        let out = luoctl.at(&socket, args);
        assert_eq!(out.code(), Some(USAGE), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let out = luoctl.at(&socket, &["migrate", "s", "1", "--to", "3m"]);
    insta::assert_snapshot!("bad_page_size", out.stderr);
}

/// `luoctl sessions | head -1` with more lines than `head` reads: luoctl printed with
/// `println!`, which panics when the reader has gone (exit 101 and "failed printing to stdout:
/// Broken pipe" on standard error). Now a reader that stops reading ends luoctl quietly. The
/// pipe here is closed before luoctl writes, so the write fails every time.
#[test]
fn a_reader_that_stopped_reading_made_luoctl_panic() {
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    let mut cmd = std::process::Command::new(common::luoctl_binary());
    cmd.args(["completions", "bash"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped());
    let out = common::spawn(&mut cmd).wait_with_output().expect("luoctl");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
