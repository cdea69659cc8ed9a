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
