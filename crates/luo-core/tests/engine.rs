//! The engine's rules, one test per rule, on real memfds.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::os::fd::AsFd;

use common::{errno, fixture, memfd};
use luo_abi::Errno;
use luo_core::{Direction, RetrieveStatus};
use rustix::fs::{SeekFrom, seek};

const ROOT: u32 = 0;

#[test]
fn session_names_follow_the_kernel() {
    let fx = fixture();
    let mut e = fx.engine();
    assert_eq!(errno(e.create_session(ROOT, b"")), Errno::EINVAL);
    assert_eq!(errno(e.create_session(ROOT, &[b'n'; 64])), Errno::EINVAL);
    assert_eq!(errno(e.create_session(ROOT, b"a\0b")), Errno::EINVAL);
    let s = e.create_session(ROOT, &[b'n'; 63]).unwrap();
    assert_eq!(e.session_name(s).unwrap(), &[b'n'; 63][..]);
    assert_eq!(errno(e.create_session(ROOT, &[b'n'; 63])), Errno::EEXIST);
    // Another namespace has its own names.
    e.create_session(1000, &[b'n'; 63]).unwrap();
    // Any byte but NUL is allowed.
    e.create_session(ROOT, "ünï\u{1}/".as_bytes()).unwrap();
}

#[test]
fn tokens_are_any_u64_unique_per_session() {
    let fx = fixture();
    let mut e = fx.engine();
    let s1 = e.create_session(ROOT, b"one").unwrap();
    let s2 = e.create_session(ROOT, b"two").unwrap();
    for (i, token) in [0, 1, u64::MAX].into_iter().enumerate() {
        let fd = memfd(&format!("a{i}"), b"x");
        e.preserve_fd(s1, Some(fd.as_fd()), token).unwrap();
    }
    let fd = memfd("a-dup", b"x");
    assert_eq!(errno(e.preserve_fd(s1, Some(fd.as_fd()), 0)), Errno::EEXIST);
    e.preserve_fd(s2, Some(fd.as_fd()), 0).unwrap();
    assert_eq!(e.tokens(s1).unwrap(), vec![0, 1, u64::MAX]);
}

#[test]
fn preserve_checks_come_in_kernel_order() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    let fd = memfd("a", b"x");
    e.preserve_fd(s, Some(fd.as_fd()), 7).unwrap();
    // Token before descriptor: a duplicate token with no descriptor is EEXIST.
    assert_eq!(errno(e.preserve_fd(s, None, 7)), Errno::EEXIST);
    assert_eq!(errno(e.preserve_fd(s, None, 8)), Errno::EBADF);
    // No handler for an eventfd.
    let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    assert_eq!(errno(e.preserve_fd(s, Some(ev.as_fd()), 9)), Errno::ENOENT);
}

#[test]
fn handlers_are_chosen_in_registration_order() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    // "test-b" accepts every memfd but comes second: a memfd named a* goes to test-a.
    e.preserve_fd(s, Some(memfd("a1", b"").as_fd()), 1).unwrap();
    e.preserve_fd(s, Some(memfd("b1", b"").as_fd()), 2).unwrap();
    assert_eq!(
        fx.log(),
        vec!["flb-x:preserve", "test-a:preserve", "test-b:preserve"]
    );
}

#[test]
fn the_same_object_cannot_be_preserved_twice() {
    let fx = fixture();
    let mut e = fx.engine();
    let s1 = e.create_session(ROOT, b"one").unwrap();
    let s2 = e.create_session(ROOT, b"two").unwrap();
    let fd = memfd("a", b"data");
    e.preserve_fd(s1, Some(fd.as_fd()), 1).unwrap();
    // Through another descriptor of the same memfd, in the same or another session.
    let other = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
    assert_eq!(
        errno(e.preserve_fd(s1, Some(other.as_fd()), 2)),
        Errno::EBUSY
    );
    assert_eq!(
        errno(e.preserve_fd(s2, Some(other.as_fd()), 2)),
        Errno::EBUSY
    );
    // Handed off, retrieved and not finished: still busy.
    e.handoff(s1).unwrap();
    let r = e.retrieve_session(ROOT, b"one").unwrap();
    let _file = e.retrieve_fd(r, 1).unwrap();
    assert_eq!(errno(e.preserve_fd(s2, Some(fd.as_fd()), 3)), Errno::EBUSY);
    e.finish(r).unwrap();
    e.preserve_fd(s2, Some(fd.as_fd()), 3).unwrap();
    // Closing an outgoing session releases its objects.
    e.close_session(s2).unwrap();
    let s3 = e.create_session(ROOT, b"three").unwrap();
    e.preserve_fd(s3, Some(fd.as_fd()), 1).unwrap();
}

#[test]
fn session_direction_is_checked() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    e.preserve_fd(s, Some(memfd("a", b"").as_fd()), 1).unwrap();
    assert_eq!(errno(e.retrieve_fd(s, 1)), Errno::EINVAL);
    assert_eq!(errno(e.finish(s)), Errno::EINVAL);
    e.handoff(s).unwrap();
    assert_eq!(errno(e.handoff(s)), Errno::EINVAL);
    let r = e.retrieve_session(ROOT, b"s").unwrap();
    assert_eq!(
        errno(e.preserve_fd(r, Some(memfd("a2", b"").as_fd()), 2)),
        Errno::EINVAL
    );
    assert_eq!(errno(e.retrieve_session(ROOT, b"s")), Errno::EINVAL);
    assert_eq!(errno(e.retrieve_session(ROOT, b"missing")), Errno::ENOENT);
    assert_eq!(errno(e.retrieve_session(1000, b"s")), Errno::ENOENT);
}

#[test]
fn retrieving_a_file_twice_gives_the_same_open_file() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    e.preserve_fd(s, Some(memfd("a", b"0123456789").as_fd()), 5)
        .unwrap();
    e.handoff(s).unwrap();
    let r = e.retrieve_session(ROOT, b"s").unwrap();
    fx.log();
    let first = e.retrieve_fd(r, 5).unwrap();
    let second = e.retrieve_fd(r, 5).unwrap();
    assert_eq!(
        fx.log(),
        vec!["flb-x:retrieve flb-x", "test-a:retrieve 5"],
        "handler asked once"
    );
    seek(&first, SeekFrom::Start(4)).unwrap();
    assert_eq!(
        seek(&second, SeekFrom::Current(0)).unwrap(),
        4,
        "one open file description"
    );
    assert_eq!(errno(e.retrieve_fd(r, 6)), Errno::ENOENT);
}

#[test]
fn a_failed_retrieve_is_sticky() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    e.preserve_fd(s, Some(memfd("a", b"").as_fd()), 1).unwrap();
    e.handoff(s).unwrap();
    let r = e.retrieve_session(ROOT, b"s").unwrap();
    fx.faults.lock().unwrap().retrieve.insert(1);
    assert_eq!(errno(e.retrieve_fd(r, 1)), Errno::EIO);
    fx.faults.lock().unwrap().retrieve.clear();
    fx.log();
    assert_eq!(errno(e.retrieve_fd(r, 1)), Errno::EIO);
    assert!(fx.log().is_empty(), "the handler is not asked again");
    e.finish(r).unwrap();
    let log = fx.log();
    assert!(log.contains(&format!(
        "test-a:finish 1 {:?}",
        RetrieveStatus::Failed(Errno::EIO)
    )));
}

#[test]
fn finish_asks_every_file_then_finishes_newest_first() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    for t in [3, 1, 2] {
        e.preserve_fd(s, Some(memfd(&format!("b{t}"), b"").as_fd()), t)
            .unwrap();
    }
    e.handoff(s).unwrap();
    let r = e.retrieve_session(ROOT, b"s").unwrap();
    let _f = e.retrieve_fd(r, 1).unwrap();
    fx.faults.lock().unwrap().veto.insert(2);
    fx.log();
    assert_eq!(errno(e.finish(r)), Errno::EBUSY);
    assert_eq!(
        fx.log(),
        vec![
            "test-b:can_finish 3 NotRetrieved",
            "test-b:can_finish 1 Retrieved",
            "test-b:can_finish 2 NotRetrieved"
        ]
    );
    // Nothing changed: every file is still there and retrievable.
    assert_eq!(e.tokens(r).unwrap(), vec![3, 1, 2]);
    let _f3 = e.retrieve_fd(r, 3).unwrap();
    fx.faults.lock().unwrap().veto.clear();
    fx.log();
    e.finish(r).unwrap();
    let log = fx.log();
    assert_eq!(
        &log[3..],
        [
            "test-b:finish 2 NotRetrieved",
            "test-b:finish 1 Retrieved",
            "test-b:finish 3 Retrieved"
        ]
    );
    // Finished: no files, FINISH again is fine, the session stays.
    assert_eq!(errno(e.retrieve_fd(r, 1)), Errno::ENOENT);
    e.finish(r).unwrap();
    assert!(matches!(
        e.session_info(r).unwrap().direction,
        Direction::Incoming { finished: true, .. }
    ));
    assert_eq!(e.preserved_objects(), 0);
}

#[test]
fn closing_an_outgoing_session_unpreserves_newest_first() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    for t in [10, 30, 20] {
        e.preserve_fd(s, Some(memfd(&format!("b{t}"), b"").as_fd()), t)
            .unwrap();
    }
    fx.log();
    e.close_session(s).unwrap();
    assert_eq!(
        fx.log(),
        vec![
            "test-b:unpreserve 20",
            "test-b:unpreserve 30",
            "test-b:unpreserve 10"
        ]
    );
    assert_eq!(
        errno(e.preserve_fd(s, None, 1)),
        Errno::ENOENT,
        "stale handle"
    );
    assert_eq!(e.preserved_objects(), 0);
    e.create_session(ROOT, b"s").unwrap();
}

#[test]
fn closing_a_retrieved_session_finishes_it_and_a_veto_leaves_it_stuck() {
    let fx = fixture();
    let mut e = fx.engine();
    for name in [&b"ok"[..], b"stuck"] {
        let s = e.create_session(ROOT, name).unwrap();
        e.preserve_fd(s, Some(memfd("b", b"").as_fd()), 1).unwrap();
        e.handoff(s).unwrap();
    }
    let ok = e.retrieve_session(ROOT, b"ok").unwrap();
    fx.log();
    e.close_session(ok).unwrap();
    assert_eq!(
        fx.log(),
        vec![
            "test-b:can_finish 1 NotRetrieved",
            "test-b:finish 1 NotRetrieved"
        ]
    );
    assert_eq!(errno(e.retrieve_session(ROOT, b"ok")), Errno::ENOENT);

    let stuck = e.retrieve_session(ROOT, b"stuck").unwrap();
    fx.faults.lock().unwrap().veto.insert(1);
    assert_eq!(errno(e.close_session(stuck)), Errno::EBUSY);
    assert_eq!(errno(e.retrieve_session(ROOT, b"stuck")), Errno::EINVAL);
}

#[test]
fn handoff_needs_a_free_incoming_name_and_rolls_back() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"vm").unwrap();
    e.handoff(s).unwrap();
    // The name is free among outgoing sessions again, but not among incoming ones.
    let s2 = e.create_session(ROOT, b"vm").unwrap();
    assert_eq!(errno(e.handoff(s2)), Errno::EEXIST);
    for t in 1..=3 {
        e.preserve_fd(s2, Some(memfd(&format!("b{t}"), b"").as_fd()), t)
            .unwrap();
    }
    let s3 = e.create_session(ROOT, b"vm2").unwrap();
    for t in 1..=3 {
        e.preserve_fd(s3, Some(memfd(&format!("b{t}"), b"").as_fd()), t)
            .unwrap();
    }
    fx.faults.lock().unwrap().freeze.insert(3);
    fx.log();
    assert_eq!(errno(e.handoff(s3)), Errno::EIO);
    assert_eq!(
        fx.log(),
        vec![
            "test-b:freeze 1",
            "test-b:freeze 2",
            "test-b:freeze-fail 3",
            "test-b:unfreeze 1",
            "test-b:unfreeze 2"
        ]
    );
    assert_eq!(e.session_info(s3).unwrap().direction, Direction::Outgoing);
    e.preserve_fd(s3, Some(memfd("b4", b"").as_fd()), 4)
        .unwrap();
}

#[test]
fn a_failed_preserve_changes_nothing() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    let fd = memfd("a", b"");
    fx.faults.lock().unwrap().preserve = true;
    assert_eq!(errno(e.preserve_fd(s, Some(fd.as_fd()), 1)), Errno::ENOMEM);
    // The FLB was preserved for the attempt and rolled back.
    assert_eq!(
        fx.log(),
        vec!["flb-x:preserve", "test-a:preserve-fail", "flb-x:unpreserve"]
    );
    assert_eq!(e.flb_counts("flb-x"), Some((0, 0)));
    fx.faults.lock().unwrap().preserve = false;
    fx.faults.lock().unwrap().flb_preserve = true;
    assert_eq!(errno(e.preserve_fd(s, Some(fd.as_fd()), 1)), Errno::ENODEV);
    assert_eq!(e.session_info(s).unwrap().files, 0);
    fx.faults.lock().unwrap().flb_preserve = false;
    e.preserve_fd(s, Some(fd.as_fd()), 1).unwrap();
}

#[test]
fn flbs_are_refcounted_by_their_files() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    let s2 = e.create_session(ROOT, b"s2").unwrap();
    e.preserve_fd(s, Some(memfd("a1", b"").as_fd()), 1).unwrap();
    e.preserve_fd(s2, Some(memfd("a2", b"").as_fd()), 2)
        .unwrap();
    e.preserve_fd(s2, Some(memfd("b3", b"").as_fd()), 3)
        .unwrap();
    assert_eq!(e.flb_counts("flb-x"), Some((2, 0)));
    let log = fx.log();
    assert_eq!(
        log.iter()
            .filter(|l| l.as_str() == "flb-x:preserve")
            .count(),
        1
    );
    e.close_session(s2).unwrap();
    assert_eq!(e.flb_counts("flb-x"), Some((1, 0)));
    assert!(!fx.log().contains(&"flb-x:unpreserve".to_string()));
    e.close_session(s).unwrap();
    assert_eq!(
        fx.log().last().map(String::as_str),
        Some("flb-x:unpreserve")
    );
    assert_eq!(e.flb_counts("flb-x"), Some((0, 0)));
}

#[test]
fn excluded_descriptors_have_no_handler() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(ROOT, b"s").unwrap();
    let own = memfd("b-own", b"");
    let own_ino = rustix::fs::fstat(&own).unwrap().st_ino;
    e.set_excluded(move |_fd, st| st.st_ino == own_ino);
    assert_eq!(errno(e.preserve_fd(s, Some(own.as_fd()), 1)), Errno::ENOENT);
    // The token check still comes first; other memfds are fine.
    e.preserve_fd(s, Some(memfd("b-other", b"").as_fd()), 2)
        .unwrap();
    assert_eq!(errno(e.preserve_fd(s, Some(own.as_fd()), 2)), Errno::EEXIST);
}
