//! The C suite (`tests/c`) through the preload library against a real luod, in four builds:
//! `-O2`, `-D_FORTIFY_SOURCE=2`, `-D_FILE_OFFSET_BITS=64` (all three must pass every rule and
//! survive real `luoctl reboot`s) and `-static` (LD_PRELOAD cannot act: every program must
//! see ENOENT for /dev/liveupdate and skip, as on a kernel without LUO).

mod common;

use common::{Flavor, Luod, build, have_gcc, kill_holder, run};

/// `luo_rules`: stage 1 (every rule that needs no incoming session), a reboot, stage 2 (the
/// incoming rules), another reboot, stage 3 (what is carried forward and what is not).
fn rules(flavor: Flavor) {
    if !have_gcc("rules") {
        return;
    }
    let prog = build("luo_rules", flavor);
    let luod = Luod::start("rules");
    let mut previous = None;
    for stage in ["1", "2", "3"] {
        if let Some(child) = previous.take() {
            luod.reboot();
            kill_holder(child);
        }
        let out = run(&prog, &[stage], &luod.socket, true);
        out.assert_passed(&format!("luo_rules {stage} ({flavor:?})"));
        previous = out.child();
        if stage != "3" {
            assert!(
                previous.is_some(),
                "stage {stage} printed no CHILD line:\n{}",
                out.stdout
            );
        }
    }
}

/// A two-stage program: stage 2 requested before the update fails (nothing handed over),
/// stage 1 passes, the update, stage 2 (detected, not told) passes, and stage 2 again fails.
fn two_stage(program: &str, flavor: Flavor) {
    if !have_gcc(program) {
        return;
    }
    let prog = build(program, flavor);
    let luod = Luod::start(program);
    let early = run(&prog, &["--stage", "2"], &luod.socket, true);
    assert_eq!(
        early.code(),
        1,
        "{program} --stage 2 before stage 1:\n{}",
        early.stdout
    );
    assert!(
        early.stdout.contains("nothing was handed over"),
        "{}",
        early.stdout
    );

    let one = run(&prog, &[], &luod.socket, true);
    one.assert_passed(&format!("{program} stage 1 ({flavor:?})"));
    assert!(one.stdout.contains("# stage 1"), "{}", one.stdout);
    let child = one.child().expect("stage 1 leaves a holder child");

    let not_yet = run(&prog, &["--stage", "2"], &luod.socket, true);
    assert_eq!(
        not_yet.code(),
        1,
        "stage 2 before the update:\n{}",
        not_yet.stdout
    );

    luod.reboot();
    kill_holder(child);

    let two = run(&prog, &[], &luod.socket, true);
    two.assert_passed(&format!("{program} stage 2 ({flavor:?})"));
    assert!(two.stdout.contains("# stage 2"), "{}", two.stdout);

    let again = run(&prog, &["--stage", "2"], &luod.socket, true);
    assert_eq!(
        again.code(),
        1,
        "{program} stage 2 run again:\n{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("nothing was handed over"),
        "{}",
        again.stdout
    );
}

/// A one-stage program: `luo_open_family` (each of the eight open entry points reaches luod
/// for the device, honours O_CLOEXEC, and libc for anything else) or `luo_foreign` (the
/// library leaves every other descriptor alone; a session passed over SCM_RIGHTS works).
fn single(program: &str, flavor: Flavor) {
    if !have_gcc(program) {
        return;
    }
    let prog = build(program, flavor);
    let luod = Luod::start(program);
    run(&prog, &[], &luod.socket, true).assert_passed(&format!("{program} ({flavor:?})"));
}

macro_rules! flavored {
    ($($name:ident: $body:expr;)*) => {
        $(
            mod $name {
                use super::*;
                #[test]
                fn o2() {
                    ($body)(Flavor::O2)
                }
                #[test]
                fn fortify() {
                    ($body)(Flavor::Fortify)
                }
                #[test]
                fn file_offset_bits_64() {
                    ($body)(Flavor::FileOffset64)
                }
            }
        )*
    };
}

flavored! {
    open_entry_points: |f| single("luo_open_family", f);
    foreign_descriptors: |f| single("luo_foreign", f);
    rules_across_two_reboots: rules;
    update_simple: |f| two_stage("luo_update_simple", f);
    stress_2000_sessions: |f| two_stage("luo_stress_sessions", f);
    stress_500_files: |f| two_stage("luo_stress_files", f);
}

/// Every program linked `-static`: the library cannot reach it, /dev/liveupdate does not
/// exist on this kernel, so each one reports SKIP (exit 4), even with luod running and
/// LD_PRELOAD set.
#[test]
fn static_build_skips() {
    if !have_gcc("static_build_skips") {
        return;
    }
    if !std::path::Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists()
        && !std::path::Path::new("/usr/lib/aarch64-linux-gnu/libc.a").exists()
    {
        common::skip("static_build_skips", "no static libc (libc6-dev)");
        return;
    }
    let luod = Luod::start("static");
    for program in [
        "luo_open_family",
        "luo_foreign",
        "luo_rules",
        "luo_update_simple",
        "luo_stress_sessions",
        "luo_stress_files",
    ] {
        let prog = build(program, Flavor::Static);
        let args: &[&str] = if program == "luo_rules" { &["1"] } else { &[] };
        let out = run(&prog, args, &luod.socket, true);
        assert_eq!(
            out.code(),
            4,
            "{program} -static:\n{}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("SKIP: /dev/liveupdate does not exist"),
            "{program} -static:\n{}",
            out.stdout
        );
    }
    // And the same program built dynamically does reach luod.
    let dynamic = run(
        &build("luo_update_simple", Flavor::O2),
        &["--stage", "2"],
        &luod.socket,
        true,
    );
    assert_eq!(dynamic.code(), 1, "{}", dynamic.stdout);
}

/// Without luod, /dev/liveupdate does not exist: ENOENT, the programs skip.
#[test]
fn no_luod_is_enoent() {
    if !have_gcc("no_luod_is_enoent") {
        return;
    }
    let dir = common::temp_dir("no-luod");
    let prog = build("luo_update_simple", Flavor::O2);
    let out = run(&prog, &[], &dir.join("absent.sock"), true);
    assert_eq!(out.code(), 4, "{}{}", out.stdout, out.stderr);
    // A stale socket file (luod died without removing it) is the same.
    let stale = dir.join("stale.sock");
    {
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            None,
        )
        .expect("socket");
        let addr = rustix::net::SocketAddrUnix::new(&stale).expect("addr");
        rustix::net::bind(&sock, &addr).expect("bind");
    }
    let out = run(&prog, &[], &stale, true);
    assert_eq!(out.code(), 4, "stale socket:\n{}{}", out.stdout, out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// The fallback mark (an abstract socket name, for a kernel that would refuse the peek-offset
/// mark), forced with `LUO_PRELOAD_NAME_MARK`: descriptors are still recognised, in this
/// process, across fork and exec, and over SCM_RIGHTS.
#[test]
fn fallback_mark() {
    if !have_gcc("fallback_mark") {
        return;
    }
    let luod = Luod::start("name-mark");
    for program in ["luo_open_family", "luo_foreign"] {
        let mut cmd = std::process::Command::new(build(program, Flavor::O2));
        cmd.env("LUOD_SOCKET", &luod.socket)
            .env("LD_PRELOAD", &common::binaries().preload)
            .env("LUO_PRELOAD_NAME_MARK", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        common::run_command(cmd, program).assert_passed(&format!("{program} with name marks"));
    }
}
