//! The keeper: luod survives the death of its server. A SIGKILL of the server at any moment
//! loses no session, no file and no byte, the keeper's pid stays, connections stay open, and
//! a server that keeps dying is started again with a back-off while everything is held.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use common::Luod;
use luo_client::Control;
use rustix::fs::MemfdFlags;

fn memfd_with(name: &str, bytes: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC).unwrap();
    rustix::io::write(&fd, bytes).unwrap();
    fd
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let size = rustix::fs::fstat(fd).unwrap().st_size as usize;
    let mut buf = vec![0u8; size];
    let n = rustix::io::pread(fd, &mut buf, 0).unwrap();
    buf.truncate(n);
    buf
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Kills the server luod reports and waits until a new server answers; returns the status the
/// new one gives and how long it took.
fn kill_server(luod: &Luod) -> (luo_client::Status, Duration) {
    let before = luod.status();
    assert_ne!(
        before.pid, before.keeper_pid,
        "the server is not the keeper"
    );
    let pid = rustix::process::Pid::from_raw(before.pid as i32).unwrap();
    let t0 = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    loop {
        if let Ok(s) = Control::connect_at(&luod.socket).and_then(|c| c.status())
            && s.pid != before.pid
        {
            luod.note_pid(s.pid as i32);
            return (s, t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no new server after 20 s:\n{}",
            luod.log_text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_killed_server_loses_no_session_file_or_byte_and_the_keeper_pid_stays() {
    let luod = Luod::start("keeper-kill");
    let first = luod.status();
    assert_eq!(
        first.keeper_pid as i32,
        luod.first_pid(),
        "the started process keeps"
    );

    // One session handed off (incoming), one outgoing, one control connection open.
    let dev = luod.device();
    let out = dev.create_session("held-out").unwrap();
    out.preserve(memfd_with("a", &pattern(1, 100_000)).as_fd(), 1)
        .unwrap();
    let handed = dev.create_session("handed").unwrap();
    handed
        .preserve(memfd_with("b", &pattern(7, 1 << 20)).as_fd(), 7)
        .unwrap();
    handed
        .preserve(memfd_with("c", &pattern(8, 4096)).as_fd(), 8)
        .unwrap();
    handed.handoff().unwrap();
    drop(handed);
    let ctl = luod.control();

    let (after, took) = kill_server(&luod);
    eprintln!("recovery: {:.1} ms", took.as_secs_f64() * 1e3);
    assert_eq!(after.keeper_pid, first.keeper_pid, "the keeper's pid stays");
    assert_eq!(after.restarts, 1);
    assert_eq!(
        (
            after.sessions_outgoing,
            after.sessions_incoming,
            after.files
        ),
        (1, 1, 3),
        "every session and file is still there"
    );
    // Connections survived: the old control connection and the device answer.
    ctl.ping().expect("the control connection survived");
    // The outgoing session's descriptor still works: preserve more into it.
    out.preserve(memfd_with("d", b"after").as_fd(), 2)
        .expect("the session connection survived");

    // The handed-off session is retrieved by a successor with every byte.
    drop(dev);
    let dev2 = luod.device();
    let s = dev2.retrieve_session("handed").unwrap();
    assert_eq!(read_all(&s.retrieve(7).unwrap()), pattern(7, 1 << 20));
    assert_eq!(read_all(&s.retrieve(8).unwrap()), pattern(8, 4096));
    s.finish().unwrap();

    // A second kill, after all that changed: still exact.
    let (again, _) = kill_server(&luod);
    assert_eq!(again.keeper_pid, first.keeper_pid);
    assert_eq!(again.restarts, 2);
    assert_eq!((again.sessions_outgoing, again.files), (1, 2));
    out.handoff().unwrap();
    drop(out);
    let s = dev2.retrieve_session("held-out").unwrap();
    assert_eq!(read_all(&s.retrieve(1).unwrap()), pattern(1, 100_000));
    assert_eq!(read_all(&s.retrieve(2).unwrap()), b"after");
}

#[test]
fn a_server_that_keeps_dying_is_restarted_with_backoff_and_nothing_is_lost() {
    let luod = Luod::start("keeper-loop");
    let dev = luod.device();
    let s = dev.create_session("kept").unwrap();
    s.preserve(memfd_with("k", &pattern(3, 65536)).as_fd(), 3)
        .unwrap();
    s.handoff().unwrap();
    drop(s);
    let keeper = luod.status().keeper_pid;
    let mut took = Vec::new();
    for _ in 0..4 {
        let (st, t) = kill_server(&luod);
        assert_eq!(st.keeper_pid, keeper);
        assert_eq!(st.files, 1);
        took.push(t);
    }
    eprintln!("recoveries: {took:?}");
    let log = luod.log_text();
    assert!(
        log.contains("the server died"),
        "the keeper logs why it restarts:\n{log}"
    );
    drop(dev);
    let dev2 = luod.device();
    let s = dev2.retrieve_session("kept").unwrap();
    assert_eq!(read_all(&s.retrieve(3).unwrap()), pattern(3, 65536));
}

/// luod with failpoints allowed.
fn luod_with_failpoints(tag: &str) -> Luod {
    Luod::start_under(tag, &["env", "LUOD_FAILPOINTS=1"], &[])
}

#[test]
fn the_keeper_pid_stays_across_an_upgrade_and_the_successor_is_kept_too() {
    let luod = Luod::start("keeper-upgrade");
    let dev = luod.device();
    let s = dev.create_session("up").unwrap();
    s.preserve(memfd_with("u", &pattern(5, 300_000)).as_fd(), 5)
        .unwrap();
    let before = luod.status();
    luod.control().upgrade(None).expect("upgrade");
    let after = luod.status();
    assert_ne!(after.pid, before.pid, "a new server serves");
    assert_eq!(
        after.keeper_pid, before.keeper_pid,
        "the keeper's pid stays"
    );
    assert_eq!(after.files, 1);
    // The successor has a holder of its own: killing it loses nothing either.
    let (st, _) = kill_server(&luod);
    assert_eq!((st.keeper_pid, st.files), (before.keeper_pid, 1));
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let s = luod.device().retrieve_session("up").unwrap();
    assert_eq!(read_all(&s.retrieve(5).unwrap()), pattern(5, 300_000));
}

#[test]
fn the_old_server_killed_right_after_ready_leaves_luod_serving_and_the_upgrade_done() {
    let luod = luod_with_failpoints("keeper-ready");
    let dev = luod.device();
    let s = dev.create_session("ready").unwrap();
    s.preserve(memfd_with("r", &pattern(9, 8192)).as_fd(), 9)
        .unwrap();
    let before = luod.status();
    let ctl = luod.control();
    ctl.failpoint("upgrade-ready", 1).expect("arm");
    // The old server dies between READY and GO; the keeper starts a server from its state,
    // which finds the UPGRADE unanswered and runs it: the caller gets one answer.
    ctl.upgrade(None).expect("the upgrade is answered once");
    let after = luod.status();
    assert_eq!(after.keeper_pid, before.keeper_pid);
    assert_eq!(after.restarts, 1, "one crash, one restart");
    assert_eq!(
        after.upgrades,
        before.upgrades + 1,
        "the upgrade was applied once"
    );
    assert_eq!(after.files, 1);
    ctl.ping().expect("the requester's connection survived");
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let s = luod.device().retrieve_session("ready").unwrap();
    assert_eq!(read_all(&s.retrieve(9).unwrap()), pattern(9, 8192));
}

#[test]
fn a_successor_and_a_server_started_after_a_crash_each_get_the_keepers_answer() {
    // The old server dies with its successor started (`upgrade-staged`): the keeper starts a
    // server from the dead one's holder, which says HELLO first and then waits before reading
    // the keeper's answer; the orphaned successor says HELLO later and reads at once. Both
    // are waiting for an answer at the same time. Each must get its own: a server that missed
    // its answer would wait 10 s for it, fail, and leave clients waiting for the next one.
    let luod = Luod::start_under(
        "keeper-answers",
        &[
            "env",
            "LUOD_FAILPOINTS=1",
            "LUOD_FAILPOINT_HELLO_DELAY_MS=1000",
            "LUOD_FAILPOINT_HOLDER_DELAY_MS=2500",
        ],
        &[],
    );
    let dev = luod.device();
    let s = dev.create_session("answers").unwrap();
    s.preserve(memfd_with("a", &pattern(7, 50_000)).as_fd(), 7)
        .unwrap();
    let before = luod.status();
    let ctl = luod.control();
    ctl.failpoint("upgrade-staged", 1).expect("arm");
    let t0 = Instant::now();
    ctl.upgrade(None).expect("the upgrade is answered");
    let took = t0.elapsed();
    let log = luod.log_text();
    assert!(
        log.contains("failpoint reached") && log.contains("LUOD_FAILPOINT_HOLDER_DELAY_MS"),
        "the race was not set up:\n{log}"
    );
    assert!(
        !log.contains("did not answer"),
        "a server missed the keeper's answer:\n{log}"
    );
    // 2.5 s for the recovered server's wait, 1 s for its own successor's, and the upgrade.
    assert!(
        took < Duration::from_secs(8),
        "the upgrade took {took:?}:\n{log}"
    );
    let after = luod.status();
    assert_eq!(after.keeper_pid, before.keeper_pid);
    assert_eq!(after.upgrades, before.upgrades + 1, "one upgrade applied");
    assert_eq!(after.files, 1);
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let s = luod.device().retrieve_session("answers").unwrap();
    assert_eq!(read_all(&s.retrieve(7).unwrap()), pattern(7, 50_000));
}

/// The live children of `parent` (the keeper's: servers and holders).
fn live_children(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 1 && f[1] == parent.to_string() && f[0] != "Z" && f[0] != "X" {
            out.push(pid);
        }
    }
    out
}

#[test]
fn the_old_server_killed_right_after_go_leaves_exactly_one_server() {
    // The old server dies just after GO: its successor holds the state, and the keeper may
    // start a server from the dead one's holder too. The keeper grants one of them; the other
    // answers nobody and goes. Without a delay the successor usually says SERVING before the
    // keeper sees the death; with one, the keeper starts a server from the holder first.
    one_server_after_go(&luod_with_failpoints("keeper-go"));
    let late = Luod::start_under(
        "keeper-go-late",
        &["env", "LUOD_FAILPOINTS=1", "LUOD_FAILPOINT_GO_DELAY_MS=400"],
        &[],
    );
    one_server_after_go(&late);
    // The successor came second every time: the keeper refused it.
    let log = late.log_text();
    assert_eq!(
        log.matches("refusing a server").count(),
        4,
        "the late successors were not refused:\n{log}"
    );
}

fn one_server_after_go(luod: &Luod) {
    let dev = luod.device();
    let s = dev.create_session("go").unwrap();
    s.preserve(memfd_with("g", &pattern(4, 20_000)).as_fd(), 4)
        .unwrap();
    let ctl = luod.control();
    let keeper = luod.status().keeper_pid;
    for round in 1..=4u64 {
        ctl.failpoint("upgrade-go", 1).expect("arm");
        ctl.upgrade(None).expect("the upgrade is answered");
        // Let the loser go: a refused successor exits at once, a killed recovery likewise.
        // Settled: the keeper's live children are the server STATUS names and one holder,
        // twice in a row 300 ms apart.
        let deadline = Instant::now() + Duration::from_secs(10);
        let settled = || {
            let pid = luod.status().pid as i32;
            let kids = live_children(keeper);
            (kids.len() == 2 && kids.contains(&pid), kids)
        };
        let mut kids;
        loop {
            let (first, _) = settled();
            std::thread::sleep(Duration::from_millis(300));
            let (second, now) = settled();
            kids = now;
            if (first && second) || Instant::now() > deadline {
                break;
            }
        }
        assert_eq!(
            kids.len(),
            2,
            "round {round}: the keeper's live children should be one server and its holder: \
             {kids:?}\n{}",
            luod.log_text()
        );
        // Every new connection reaches the one server, which holds the session and serves
        // the session's own connection too.
        let pid = luod.status().pid;
        for _ in 0..20 {
            let st = luod.status();
            assert_eq!((st.pid, st.files), (pid, 1), "round {round}");
        }
        assert!(
            kids.contains(&(pid as i32)),
            "round {round}: {pid} {kids:?}"
        );
        assert!(luod.status().restarts <= round as u32, "round {round}");
        ctl.ping().expect("the requester's connection survived");
    }
    s.preserve(memfd_with("h", &pattern(6, 7000)).as_fd(), 6)
        .unwrap();
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let r = luod.device().retrieve_session("go").unwrap();
    assert_eq!(read_all(&r.retrieve(4).unwrap()), pattern(4, 20_000));
    assert_eq!(read_all(&r.retrieve(6).unwrap()), pattern(6, 7000));
}

#[test]
fn a_request_the_server_dies_in_is_applied_once_and_answered_once() {
    let luod = luod_with_failpoints("keeper-once");
    let dev = luod.device();
    let s = dev.create_session("once").unwrap();
    let ctl = luod.control();
    let mut token = 100;
    for point in ["after-apply", "after-journal", "after-reply"] {
        for round in 0..2 {
            ctl.failpoint(point, 1).expect("arm");
            token += 1;
            let bytes = pattern(token as u8, 5000 + round);
            // The server dies inside this request; the new one answers it exactly once.
            s.preserve(memfd_with("x", &bytes).as_fd(), token)
                .unwrap_or_else(|e| panic!("{point}: preserve {token}: {e}"));
            let st = luod.status();
            assert_eq!(
                st.files,
                token - 100,
                "{point}: every preserve applied once:\n{}",
                luod.log_text()
            );
            // The same token again is refused (it is there), not taken twice.
            let e = s
                .preserve(memfd_with("y", b"dup").as_fd(), token)
                .expect_err("the token is taken");
            assert_eq!(e.errno, luo_abi::Errno::EEXIST, "{point}: {e}");
        }
    }
    let st = luod.status();
    assert_eq!(st.restarts, 6, "each failpoint killed one server");
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let r = luod.device().retrieve_session("once").unwrap();
    let mut token = 100;
    for _point in 0..3 {
        for round in 0..2 {
            token += 1;
            assert_eq!(
                read_all(&r.retrieve(token).unwrap()),
                pattern(token as u8, 5000 + round)
            );
        }
    }
}

#[test]
fn a_server_that_crashes_on_start_up_is_restarted_with_backoff_while_everything_is_held() {
    let dir = common::temp_dir("keeper-startup-crash");
    let counter = dir.join("crashes");
    // The next three servers started after a crash die before they serve.
    std::fs::write(&counter, "3\n").unwrap();
    let counter_env = format!("LUOD_FAILPOINT_RECOVER={}", counter.display());
    let luod = Luod::start_under(
        "keeper-startup",
        &["env", "LUOD_FAILPOINTS=1", &counter_env],
        &[],
    );
    let dev = luod.device();
    let s = dev.create_session("boot").unwrap();
    s.preserve(memfd_with("z", &pattern(4, 77_777)).as_fd(), 4)
        .unwrap();
    let t0 = Instant::now();
    let (st, took) = kill_server(&luod);
    eprintln!(
        "four starts, three crashing: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "0");
    assert_eq!(st.restarts, 4, "one kill and three start-up crashes");
    assert_eq!(st.files, 1, "the holder kept every descriptor meanwhile");
    // Back-off: 10 + 20 + 40 ms at least between the quick deaths.
    assert!(
        t0.elapsed() >= Duration::from_millis(70),
        "no back-off: {:?}",
        t0.elapsed()
    );
    let log = luod.log_text();
    assert!(log.matches("the server died").count() >= 4, "{log}");
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let r = luod.device().retrieve_session("boot").unwrap();
    assert_eq!(read_all(&r.retrieve(4).unwrap()), pattern(4, 77_777));
}

#[test]
fn the_keeper_re_executes_itself_in_place_and_keeps_everything() {
    let luod = Luod::start("keeper-reexec");
    let dev = luod.device();
    let s = dev.create_session("re").unwrap();
    s.preserve(memfd_with("q", &pattern(6, 123_456)).as_fd(), 6)
        .unwrap();
    let before = luod.status();
    let keeper = rustix::process::Pid::from_raw(before.keeper_pid as i32).unwrap();
    let exe_before = std::fs::read_link(format!("/proc/{}/exe", before.keeper_pid)).unwrap();
    rustix::process::kill_process(keeper, rustix::process::Signal::USR2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !luod.log_text().contains("keeper re-executed itself") {
        assert!(
            Instant::now() < deadline,
            "no re-exec:\n{}",
            luod.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = luod.status();
    assert_eq!(after.keeper_pid, before.keeper_pid, "same pid");
    assert_eq!(after.pid, before.pid, "the server was not touched");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", after.keeper_pid)).unwrap(),
        exe_before
    );
    // The re-executed keeper still holds the holder's control: a crash is recovered.
    let (st, _) = kill_server(&luod);
    assert_eq!(
        (st.keeper_pid, st.restarts, st.files),
        (before.keeper_pid, 1, 1)
    );
    s.handoff().unwrap();
    drop(s);
    drop(dev);
    let r = luod.device().retrieve_session("re").unwrap();
    assert_eq!(read_all(&r.retrieve(6).unwrap()), pattern(6, 123_456));
}

#[test]
fn a_killed_keeper_leaves_no_server_behind() {
    let luod = Luod::start("keeper-killed");
    let st = luod.status();
    let (keeper, server) = (st.keeper_pid as i32, st.pid as i32);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::alive(server) {
        assert!(
            Instant::now() < deadline,
            "the server outlived its keeper:\n{}",
            luod.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        luod.log_text().contains("the keeper is gone"),
        "the server says why it stopped:\n{}",
        luod.log_text()
    );
}

/// `argv[0]` of process `pid`.
fn argv0_of(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let first = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(first).into_owned()
}

#[test]
fn every_luod_process_is_started_with_the_keepers_argv0() {
    // As systemd starts it with `ExecStart=@/usr/bin/luod @luod`: the `@` is what spares a
    // process from systemd's last kill before a kexec, so luod's servers and holders need it
    // as much as the keeper does.
    let luod = Luod::start_under(
        "keeper-argv0",
        &["bash", "-c", r#"exec -a @luod-argv0 "$0" "$@""#],
        &[],
    );
    // Each live child of the keeper (a server, a holder), once the one that is going has gone
    // (an exiting process's cmdline reads empty).
    let check = |when: &str| {
        let keeper = luod.status().keeper_pid;
        assert_eq!(argv0_of(keeper as i32), "@luod-argv0", "{when}: the keeper");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids: Vec<(i32, String)> = live_children(keeper)
                .into_iter()
                .map(|k| (k, argv0_of(k)))
                .collect();
            let good = !kids.is_empty() && kids.iter().all(|(_, a)| a == "@luod-argv0");
            if good {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: the keeper's children and their argv[0]: {kids:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    check("at start");
    let before = luod.status();
    let (after, _) = kill_server(&luod);
    assert_ne!(after.pid, before.pid);
    check("after a crash of the server");
    luod.control().upgrade(None).expect("upgrade");
    check("after an upgrade");
}
