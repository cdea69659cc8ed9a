//! What luoctl prints, against a real luod: a snapshot (insta) of the text and of the JSON of
//! every command that prints, with what changes from run to run (pids, times, paths, the
//! version, descriptor counts) redacted. Every JSON document is also parsed by a strict
//! parser (serde_json), and session names must come back from it byte for byte.
//!
//! A changed snapshot fails the test and leaves a `.snap.new` beside the old one: review it,
//! and accept it with `INSTA_UPDATE=always cargo test -p luoctl` (or `cargo insta review`).

mod common;

use std::os::fd::OwnedFd;
use std::process::Command;

use common::{Luoctl, Luod, NOBODY, Redact, require_root};
use luo_client::Device;

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    let Ok(role) = std::env::var("LUOCTL_TEST_ROLE") else {
        return;
    };
    let socket = std::env::var("LUOCTL_TEST_SOCKET").expect("LUOCTL_TEST_SOCKET");
    let name = std::env::var("LUOCTL_TEST_NAME").expect("LUOCTL_TEST_NAME");
    match role.as_str() {
        // Preserves a memfd of 4096 bytes in session `name`, hands it off and exits.
        "hand-off" => {
            let dev = Device::open_at(socket.as_ref()).expect("open");
            let s = dev.create_session(&name).expect("create");
            s.preserve(memfd(4096), 1).expect("preserve");
            s.handoff().expect("handoff");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Runs [`child_role`] as `uid`: hands off session `name` at `luod`'s socket.
fn hand_off_as(uid: u32, luod: &Luod, name: &str) {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["child_role", "--exact", "--nocapture", "--test-threads=1"]);
    common::as_user(&mut cmd, uid);
    cmd.env("LUOCTL_TEST_ROLE", "hand-off")
        .env("LUOCTL_TEST_SOCKET", &luod.socket)
        .env("LUOCTL_TEST_NAME", name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = common::spawn(&mut cmd).wait_with_output().expect("child");
    assert!(
        out.status.success(),
        "hand-off as uid {uid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn memfd(size: u64) -> OwnedFd {
    let m = rustix::fs::memfd_create("m", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&m, size).expect("size");
    m
}

/// Runs luoctl, which must succeed.
fn ok(luod: &Luod, args: &[&str]) -> common::Output {
    let out = Luoctl::new().at(&luod.socket, args);
    assert_eq!(out.code(), Some(0), "luoctl {args:?}: {out:?}");
    assert!(out.stderr.is_empty(), "luoctl {args:?}: {out:?}");
    out
}

#[test]
fn status_prints_luods_state_aligned_or_as_json() {
    let mut luod = Luod::start("status");
    let dev = Device::open_at(&luod.socket).expect("open");
    let s = dev.create_session("cli-session").expect("create");
    s.preserve(memfd(8192), 1).expect("preserve");
    let h = dev.create_session("handed").expect("create");
    h.handoff().expect("handoff");
    let pid = luod.status().pid;
    let redact = Redact::new()
        .number(pid.into(), "[PID]")
        .line("clients:")
        .line("descriptors:")
        .line("uptime:")
        .field("pid")
        .field("clients")
        .field("uptime_ms")
        .field("fd_limit")
        .field("fd_used");

    let text = ok(&luod, &["status"]).stdout;
    insta::assert_snapshot!("status", redact.apply(&text));
    // Every value starts in the same column.
    let columns: Vec<usize> = text
        .lines()
        .skip(1)
        .map(|l| {
            let colon = l.find(':').expect("label");
            let value = &l[colon + 1..];
            colon + 1 + value.len() - value.trim_start().len()
        })
        .collect();
    assert!(columns.windows(2).all(|w| w[0] == w[1]), "{text}");

    let out = ok(&luod, &["status", "--json"]);
    let v = out.json();
    assert_eq!(v["pid"], pid);
    assert_eq!(v["bytes"], 8192);
    insta::assert_snapshot!("status_json", redact.apply(&out.stdout));
    drop((s, h, dev));
}

#[test]
fn sessions_table_stays_aligned_whatever_the_names() {
    let test = "sessions_table_stays_aligned_whatever_the_names";
    if !require_root(test) {
        return;
    }
    let luod = Luod::start_as("sessions", 0, &["--socket-mode", "0666"]);
    let long = format!("long-{}", "0123456789".repeat(6).get(..58).expect("58"));
    assert_eq!(long.len(), 63, "the longest name luod takes");
    let control = "tab\there\nnew line \u{1b}[7mreverse\\";
    hand_off_as(NOBODY, &luod, "nobody's state");
    let dev = Device::open_at(&luod.socket).expect("open");
    let a = dev.create_session("cli-session").expect("create");
    a.preserve(memfd(8192), 1).expect("preserve");
    let h = dev.create_session("handed \"quoted\"").expect("create");
    h.handoff().expect("handoff");
    let u = dev.create_session("会话-séance-🦀").expect("create");
    u.preserve(memfd(3 << 20), 7).expect("preserve");
    let c = dev.create_session(control).expect("create");
    let l = dev.create_session(&long).expect("create");
    let r = dev.create_session("retrieved").expect("create");
    r.handoff().expect("handoff");
    let r = dev.retrieve_session("retrieved").expect("retrieve");

    let table = ok(&luod, &["sessions"]).stdout;
    insta::assert_snapshot!("sessions", table);
    let header = table.lines().next().expect("header");
    let name_at = header.chars().count() - "NAME".len();
    for line in table.lines() {
        let chars: Vec<char> = line.chars().collect();
        assert!(
            chars[name_at - 2..name_at] == [' ', ' '] && chars[name_at] != ' ',
            "NAME does not start at column {name_at}:\n{table}"
        );
    }
    // The alias.
    assert_eq!(ok(&luod, &["list"]).stdout, table);

    let out = ok(&luod, &["sessions", "--json"]);
    insta::assert_snapshot!("sessions_json", out.stdout);
    let names: Vec<String> = out
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "nobody's state",
            "cli-session",
            "handed \"quoted\"",
            "会话-séance-🦀",
            control,
            &long,
            "retrieved",
        ]
    );
    drop((a, h, u, c, l, r, dev));
}

#[test]
fn an_empty_session_list_is_a_header_or_an_empty_array() {
    let luod = Luod::start("empty");
    insta::assert_snapshot!("sessions_empty", ok(&luod, &["sessions"]).stdout);
    assert_eq!(ok(&luod, &["sessions", "--json"]).stdout, "[]\n");
}

#[test]
fn version_names_luoctl_and_luod() {
    let mut luod = Luod::start("version");
    let pid = luod.status().pid;
    let redact = Redact::new().number(pid.into(), "[PID]");
    insta::assert_snapshot!("version", redact.apply(&ok(&luod, &["version"]).stdout));
    let out = ok(&luod, &["version", "--json"]);
    assert_eq!(out.json()["luod"]["pid"], pid);
    insta::assert_snapshot!("version_json", redact.apply(&out.stdout));
}

#[test]
fn migrate_reports_the_copy() {
    let luod = Luod::start("migrate");
    let dev = Device::open_at(&luod.socket).expect("open");
    let s = dev.create_session("vm ram").expect("create");
    s.preserve(memfd(4 << 20), 1).expect("preserve");
    s.handoff().expect("handoff");
    let redact = Redact::new()
        .line("vm ram token")
        .field("copy_ms")
        .field("gb_per_s")
        .field("units")
        .field("units_fallback")
        .field("channels");

    let text = ok(&luod, &["migrate", "vm ram", "1", "--to", "4K"]).stdout;
    assert!(
        text.starts_with("vm ram token 1: 4 MiB onto 4k pages in "),
        "{text}"
    );
    insta::assert_snapshot!("migrate", redact.apply(&text));
    let out = ok(&luod, &["migrate", "vm ram", "1", "--to", "4k", "--json"]);
    let v = out.json();
    assert_eq!(
        (&v["session"], &v["bytes"], &v["page_size"]),
        (&"vm ram".into(), &(4 << 20).into(), &4096.into())
    );
    insta::assert_snapshot!("migrate_json", redact.apply(&out.stdout));
    drop((s, dev));
}

#[test]
fn upgrade_and_reboot_say_what_happened() {
    let mut luod = Luod::start("upgrade");
    let dev = Device::open_at(&luod.socket).expect("open");
    let s = dev.create_session("kept").expect("create");
    s.preserve(memfd(4096), 1).expect("preserve");

    let upgrade = |luod: &mut Luod, json: bool| {
        let before = luod.status().pid;
        let args: &[&str] = if json {
            &["upgrade", "--json"]
        } else {
            &["upgrade"]
        };
        let out = ok(luod, args);
        let after = luod.status().pid;
        assert_ne!(before, after);
        // How many successors it took depends on what else luod saw meanwhile.
        let redact = Redact::new()
            .number(before.into(), "[OLD PID]")
            .number(after.into(), "[NEW PID]")
            .text(" 1 successor(s)", " [N] successor(s)")
            .text(" 2 successor(s)", " [N] successor(s)")
            .field("rounds");
        if json {
            let v = out.json();
            assert_eq!(
                (&v["pid_before"], &v["pid"]),
                (&before.into(), &after.into())
            );
        }
        redact.apply(&out.stdout)
    };
    insta::assert_snapshot!("upgrade", upgrade(&mut luod, false));
    insta::assert_snapshot!("upgrade_json", upgrade(&mut luod, true));
    assert_eq!(luod.status().upgrades, 2);

    insta::assert_snapshot!("reboot", ok(&luod, &["reboot"]).stdout);
    assert_eq!(
        luod.status().sessions_incoming,
        1,
        "the open session is incoming"
    );
    insta::assert_snapshot!("reboot_json", ok(&luod, &["reboot", "--json"]).stdout);
    assert_eq!(luod.status().generation, 2);
    drop((s, dev));
}
