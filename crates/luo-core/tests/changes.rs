//! Change tracking: every mutation names the session and file records a journal must write
//! again, and nothing else.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::os::fd::AsFd;

use common::{fixture, memfd};
use luo_abi::image::{FILE_FROZEN, SESSION_INCOMING, SESSION_RETRIEVED};

#[test]
fn nothing_is_recorded_until_tracking_is_on() {
    let fx = fixture();
    let mut engine = fx.engine();
    let s = engine.create_session(0, b"quiet").unwrap();
    engine.track_changes(true);
    assert!(engine.take_changes().is_empty());
    engine.track_changes(false);
    engine
        .preserve_fd(s, Some(memfd("a1", b"x").as_fd()), 1)
        .unwrap();
    assert!(engine.take_changes().is_empty());
}

#[test]
fn each_operation_names_what_it_changed() {
    let fx = fixture();
    let mut engine = fx.engine();
    engine.track_changes(true);

    let s = engine.create_session(7, b"web").unwrap();
    let seq = engine.session_record(s).unwrap().seq;
    let c = engine.take_changes();
    assert_eq!(
        c.sessions.into_iter().collect::<Vec<_>>(),
        [(seq, (s, false))]
    );
    assert!(c.files.is_empty());

    // A plain memfd ("b…"): a file, no FLB.
    engine
        .preserve_fd(s, Some(memfd("b1", b"one").as_fd()), 10)
        .unwrap();
    let c = engine.take_changes();
    assert!(c.sessions.is_empty());
    assert_eq!(c.files.into_iter().collect::<Vec<_>>(), [(seq, s, 10)]);
    assert!(!c.flbs);
    let rec = engine.file_record(s, 10).unwrap();
    assert_eq!((rec.compatible, rec.token, rec.status), ("test-b", 10, 0));

    // An "a…" memfd is test-a's, linked to FLB flb-x: the FLB records change too.
    engine
        .preserve_fd(s, Some(memfd("a2", b"two").as_fd()), 11)
        .unwrap();
    let c = engine.take_changes();
    assert!(c.flbs);
    assert_eq!(engine.flb_records().len(), 1);

    // A failed operation changes nothing.
    assert!(
        engine
            .preserve_fd(s, Some(memfd("b3", b"").as_fd()), 10)
            .is_err()
    );
    assert!(engine.take_changes().is_empty());

    // Handoff freezes every file: the whole session is written again.
    engine.handoff(s).unwrap();
    let c = engine.take_changes();
    assert_eq!(c.sessions.get(&seq), Some(&(s, true)));
    assert_eq!(engine.session_record(s).unwrap().flags, SESSION_INCOMING);
    assert_ne!(engine.file_record(s, 10).unwrap().flags & FILE_FROZEN, 0);
    assert_eq!(engine.file_tokens(s), [10, 11]);

    let r = engine.retrieve_session(7, b"web").unwrap();
    assert_eq!(r, s);
    let c = engine.take_changes();
    assert_eq!(c.sessions.get(&seq), Some(&(s, false)));
    assert_eq!(
        engine.session_record(s).unwrap().flags,
        SESSION_INCOMING | SESSION_RETRIEVED
    );

    let _fd = engine.retrieve_fd(s, 10).unwrap();
    let c = engine.take_changes();
    assert_eq!(c.files.into_iter().collect::<Vec<_>>(), [(seq, s, 10)]);
    let rec = engine.file_record(s, 10).unwrap();
    assert_eq!(rec.status, 1);
    assert!(rec.open.is_some());

    engine.finish(s).unwrap();
    let c = engine.take_changes();
    assert_eq!(c.sessions.get(&seq), Some(&(s, true)));
    assert!(engine.file_tokens(s).is_empty());

    engine.close_session(s).unwrap();
    let c = engine.take_changes();
    assert_eq!(c.sessions.get(&seq), Some(&(s, true)));
    assert!(engine.session_record(s).is_none());
}
