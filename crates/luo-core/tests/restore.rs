//! Freeze, image write and restore: the reboot path, the upgrade snapshot, and every way a
//! restore refuses an image without losing a descriptor.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use common::{TestHandler, errno, fixture, memfd};
use luo_abi::Errno;
use luo_abi::image::ImageWriter;
use luo_core::{Direction, Engine, Registry, WRITER_VERSION};
use rustix::fs::{SeekFrom, seek};

fn some(fds: Vec<OwnedFd>) -> Vec<Option<OwnedFd>> {
    fds.into_iter().map(Some).collect()
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    seek(fd, SeekFrom::Start(0)).unwrap();
    let mut buf = vec![0u8; 64];
    let n = rustix::io::read(fd, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn reboot_carries_open_outgoing_sessions_only() {
    let fx = fixture();
    let mut e = fx.engine();
    let keep = e.create_session(0, b"keep").unwrap();
    e.preserve_fd(keep, Some(memfd("a1", b"alpha").as_fd()), 1)
        .unwrap();
    e.preserve_fd(keep, Some(memfd("b2", b"beta").as_fd()), 2)
        .unwrap();
    let closed = e.create_session(0, b"closed").unwrap();
    e.preserve_fd(closed, Some(memfd("b3", b"gone").as_fd()), 3)
        .unwrap();
    e.close_session(closed).unwrap();
    let handed = e.create_session(7, b"handed").unwrap();
    e.handoff(handed).unwrap();
    let image = e.freeze_all().unwrap();
    assert!(e.is_frozen());
    assert_eq!(errno(e.create_session(0, b"late")), Errno::EBUSY);
    let mut fds = some(e.into_image_fds());
    let mut e = Engine::restore(fx.registry.clone(), &image, &mut fds).unwrap();
    assert_eq!(e.generation(), 1);
    let names: Vec<_> = e
        .sessions()
        .into_iter()
        .map(|s| (s.owner, s.name, s.direction))
        .collect();
    let incoming = Direction::Incoming {
        retrieved: false,
        finished: false,
    };
    assert_eq!(
        names,
        vec![(0, b"keep".to_vec(), incoming)],
        "closed and incoming sessions are dropped"
    );
    // The FLB's incoming count was loaded at restore; the first access retrieves it.
    assert_eq!(e.flb_counts("flb-x"), Some((0, 1)));
    fx.log();
    let s = e.retrieve_session(0, b"keep").unwrap();
    assert_eq!(read_all(&e.retrieve_fd(s, 2).unwrap()), b"beta");
    assert!(
        fx.log().iter().all(|l| !l.starts_with("flb-x")),
        "test-b files do not touch flb-x"
    );
    assert_eq!(read_all(&e.retrieve_fd(s, 1).unwrap()), b"alpha");
    assert_eq!(fx.log(), vec!["flb-x:retrieve flb-x", "test-a:retrieve 1"]);
    e.finish(s).unwrap();
    assert_eq!(fx.log().last().map(String::as_str), Some("flb-x:finish"));
    assert_eq!(e.flb_counts("flb-x"), Some((0, 0)));
}

#[test]
fn an_flb_never_retrieved_is_retrieved_before_its_finish() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(0, b"s").unwrap();
    e.preserve_fd(s, Some(memfd("a1", b"").as_fd()), 1).unwrap();
    e.preserve_fd(s, Some(memfd("a2", b"").as_fd()), 2).unwrap();
    let image = e.freeze_all().unwrap();
    let mut fds = some(e.into_image_fds());
    let mut e = Engine::restore(fx.registry.clone(), &image, &mut fds).unwrap();
    assert_eq!(e.flb_counts("flb-x"), Some((0, 2)));
    let s = e.retrieve_session(0, b"s").unwrap();
    fx.log();
    e.finish(s).unwrap();
    let flb: Vec<_> = fx
        .log()
        .into_iter()
        .filter(|l| l.starts_with("flb-x"))
        .collect();
    assert_eq!(
        flb,
        vec!["flb-x:retrieve flb-x", "flb-x:finish"],
        "no underflow, finish exactly once"
    );
}

#[test]
fn freeze_failure_unfreezes_in_the_kernel_order_and_changes_nothing() {
    let fx = fixture();
    let mut e = fx.engine();
    for (name, tokens) in [(&b"s1"[..], [1, 2]), (b"s2", [3, 4]), (b"s3", [5, 6])] {
        let s = e.create_session(0, name).unwrap();
        for t in tokens {
            e.preserve_fd(s, Some(memfd(&format!("b{t}"), b"").as_fd()), t)
                .unwrap();
        }
    }
    let before = e.sessions();
    fx.faults.lock().unwrap().freeze.insert(6);
    fx.log();
    assert_eq!(errno(e.freeze_all()), Errno::EIO);
    assert_eq!(
        fx.log(),
        vec![
            "test-b:freeze 1",
            "test-b:freeze 2",
            "test-b:freeze 3",
            "test-b:freeze 4",
            "test-b:freeze 5",
            "test-b:freeze-fail 6",
            // the failing session, then earlier sessions newest first, files in order
            "test-b:unfreeze 5",
            "test-b:unfreeze 3",
            "test-b:unfreeze 4",
            "test-b:unfreeze 1",
            "test-b:unfreeze 2",
        ]
    );
    assert!(!e.is_frozen());
    assert_eq!(e.sessions(), before);
    fx.faults.lock().unwrap().freeze.clear();
    e.freeze_all().unwrap();
    e.thaw();
    assert!(!e.is_frozen());
    let s = e.create_session(0, b"after").unwrap();
    e.preserve_fd(s, Some(memfd("b9", b"").as_fd()), 9).unwrap();
}

#[test]
fn restore_refuses_an_unknown_handler_and_keeps_every_descriptor() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(0, b"s").unwrap();
    e.preserve_fd(s, Some(memfd("b1", b"kept").as_fd()), 1)
        .unwrap();
    let image = e.freeze_all().unwrap();
    let mut fds = some(e.into_image_fds());
    // A registry without "test-b".
    let mut registry = Registry::new();
    registry
        .register_handler(Arc::new(TestHandler {
            compatible: "test-a".into(),
            prefix: "a".into(),
            log: fx.log.clone(),
            faults: Arc::new(Mutex::new(Default::default())),
        }))
        .unwrap();
    let err = Engine::restore(Arc::new(registry), &image, &mut fds).unwrap_err();
    assert_eq!(err.errno(), Errno::EIO);
    assert!(err.to_string().contains("test-b"), "{err}");
    assert!(fds.iter().all(Option::is_some), "nothing taken");
    // The same descriptors restore fine with the right registry.
    let mut e = Engine::restore(fx.registry.clone(), &image, &mut fds).unwrap();
    let s = e.retrieve_session(0, b"s").unwrap();
    assert_eq!(read_all(&e.retrieve_fd(s, 1).unwrap()), b"kept");
}

#[test]
fn restore_refuses_wrong_or_missing_descriptors_and_corrupt_images() {
    let fx = fixture();
    let mut e = fx.engine();
    let s = e.create_session(0, b"s").unwrap();
    e.preserve_fd(s, Some(memfd("b1", b"x").as_fd()), 1)
        .unwrap();
    let image = e.freeze_all().unwrap();
    let mut fds = some(e.into_image_fds());
    // Wrong count.
    let mut short: Vec<Option<OwnedFd>> = Vec::new();
    assert_eq!(
        Engine::restore(fx.registry.clone(), &image, &mut short)
            .unwrap_err()
            .errno(),
        Errno::EIO
    );
    // Wrong type: a socket where a memfd was.
    let (sock, _peer) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut wrong = vec![Some(sock)];
    let err = Engine::restore(fx.registry.clone(), &image, &mut wrong).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(wrong[0].is_some());
    // Missing.
    let mut missing: Vec<Option<OwnedFd>> = vec![None];
    assert!(Engine::restore(fx.registry.clone(), &image, &mut missing).is_err());
    // Corrupt: every single-byte change is refused, and the descriptors stay.
    for i in (0..image.len()).step_by(97) {
        let mut bad = image.clone();
        bad[i] ^= 0x40;
        assert!(
            Engine::restore(fx.registry.clone(), &bad, &mut fds).is_err(),
            "byte {i}"
        );
        assert!(fds[0].is_some());
    }
    assert!(Engine::restore(fx.registry.clone(), &image[..image.len() - 1], &mut fds).is_err());
    Engine::restore(fx.registry.clone(), &image, &mut fds).unwrap();
}

#[test]
fn a_snapshot_carries_the_whole_live_state() {
    let fx = fixture();
    let mut e = fx.engine();
    let out = e.create_session(0, b"out").unwrap();
    e.preserve_fd(out, Some(memfd("a1", b"one").as_fd()), 1)
        .unwrap();
    let inc = e.create_session(5, b"inc").unwrap();
    let f2 = memfd("b2", b"two");
    e.preserve_fd(inc, Some(f2.as_fd()), 2).unwrap();
    e.preserve_fd(inc, Some(memfd("b3", b"three").as_fd()), 3)
        .unwrap();
    e.handoff(inc).unwrap();
    let inc = e.retrieve_session(5, b"inc").unwrap();
    let open = e.retrieve_fd(inc, 2).unwrap();
    seek(&open, SeekFrom::Start(2)).unwrap();
    let parked = e.create_session(5, b"parked").unwrap();
    e.handoff(parked).unwrap();

    let mut w = ImageWriter::new(e.generation(), WRITER_VERSION);
    let mut borrowed = Vec::new();
    e.write_snapshot(&mut w, &mut borrowed).unwrap();
    let image = w.finish().unwrap();
    let mut fds: Vec<Option<OwnedFd>> = borrowed
        .iter()
        .map(|fd| Some(rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()))
        .collect();
    drop(borrowed);
    let before: Vec<_> = e
        .sessions()
        .into_iter()
        .map(|s| (s.owner, s.name, s.direction, s.files))
        .collect();
    drop(e);

    let mut e = Engine::restore(fx.registry.clone(), &image, &mut fds).unwrap();
    let after: Vec<_> = e
        .sessions()
        .into_iter()
        .map(|s| (s.owner, s.name, s.direction, s.files))
        .collect();
    assert_eq!(after, before);
    assert_eq!(e.flb_counts("flb-x"), Some((1, 0)));
    // The outgoing file, and both files of the session handed off inside this process.
    assert_eq!(e.preserved_objects(), 3);
    // The retrieved file is the same open file (shared position); the other is still new.
    let ids: Vec<_> = e.sessions().into_iter().map(|s| s.id).collect();
    let (out, inc, parked) = (ids[0], ids[1], ids[2]);
    let again = e.retrieve_fd(inc, 2).unwrap();
    assert_eq!(seek(&again, SeekFrom::Current(0)).unwrap(), 2);
    assert_eq!(read_all(&e.retrieve_fd(inc, 3).unwrap()), b"three");
    // Still busy: the retrieved memfd cannot be preserved again; the outgoing one neither.
    let s = e.create_session(0, b"new").unwrap();
    assert_eq!(errno(e.preserve_fd(s, Some(f2.as_fd()), 9)), Errno::EBUSY);
    assert_eq!(
        errno(e.retrieve_session(5, b"inc")),
        Errno::EINVAL,
        "still retrieved"
    );
    e.retrieve_session(5, b"parked").unwrap();
    let _ = parked;
    e.finish(inc).unwrap();
    e.preserve_fd(s, Some(f2.as_fd()), 9).unwrap();
    e.close_session(out).unwrap();
    assert_eq!(e.flb_counts("flb-x"), Some((0, 0)));
}

#[test]
fn registry_rules() {
    let fx = fixture();
    let mut r = Registry::new();
    let handler = |c: &str| {
        Arc::new(TestHandler {
            compatible: c.into(),
            prefix: "".into(),
            log: fx.log.clone(),
            faults: fx.faults.clone(),
        })
    };
    assert_eq!(
        r.register_handler(handler("")).unwrap_err().errno(),
        Errno::EINVAL
    );
    assert_eq!(
        r.register_handler(handler(&"x".repeat(48)))
            .unwrap_err()
            .errno(),
        Errno::EINVAL
    );
    r.register_handler(handler(&"x".repeat(47))).unwrap();
    assert_eq!(
        r.register_handler(handler(&"x".repeat(47)))
            .unwrap_err()
            .errno(),
        Errno::EEXIST
    );
    let flb = Arc::new(common::TestFlb {
        compatible: "f".into(),
        log: fx.log.clone(),
        faults: fx.faults.clone(),
        incoming: Mutex::new(None),
    });
    assert_eq!(
        r.register_flb("nope", flb.clone()).unwrap_err().errno(),
        Errno::EINVAL
    );
    r.register_flb(&"x".repeat(47), flb.clone()).unwrap();
    assert_eq!(
        r.register_flb(&"x".repeat(47), flb).unwrap_err().errno(),
        Errno::EEXIST
    );
}
