//! Every `/dev/liveupdate` operation and errno, through luod's socket, with the kernel's
//! decoding order (`spec/kernel-luo.md` §1.3 and §1.5). Requests are built byte by byte and sent
//! with `luo_client::call`, so odd sizes, dirty tails and reserved fields reach luod as a C
//! program would send them.
//!
//! Each test holds [`common::no_forks`] once luod runs: several check that a `close()` is seen
//! at once, which a concurrent fork in another test's thread would delay.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use common::{Luod, errno, memfd_with, pread_all};
use luo_abi::Errno;
use luo_abi::uapi::{
    LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_GET_NAME, LIVEUPDATE_SESSION_PRESERVE_FD, LIVEUPDATE_SESSION_RETRIEVE_FD,
};
use luo_client::{Device, Session, call};
use rustix::fs::{Mode, OFlags, SeekFrom};

/// A CREATE/RETRIEVE_SESSION struct: `size`, fd = -1, `name` (at most 64 bytes, not
/// NUL-terminated if it is 64), then `len - 72` tail bytes of `tail`.
fn name_arg(size: u32, name: &[u8], len: usize, tail: u8) -> Vec<u8> {
    let mut a = Vec::with_capacity(len.max(72));
    a.extend_from_slice(&size.to_le_bytes());
    a.extend_from_slice(&(-1i32).to_le_bytes());
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name);
    a.extend_from_slice(&n);
    a.resize(len.max(72), tail);
    a.truncate(len);
    a
}

/// A PRESERVE_FD/RETRIEVE_FD struct of `len` bytes (tail filled with `tail`).
fn fd_arg(size: u32, token: u64, len: usize, tail: u8) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&size.to_le_bytes());
    a.extend_from_slice(&(-1i32).to_le_bytes());
    a.extend_from_slice(&token.to_le_bytes());
    a.resize(len.max(16), tail);
    a.truncate(len);
    a
}

/// A FINISH struct.
fn finish_arg(size: u32, reserved: u32, len: usize) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&size.to_le_bytes());
    a.extend_from_slice(&reserved.to_le_bytes());
    a.resize(len, 0);
    a
}

/// A GET_NAME struct.
fn get_name_arg(size: u32, reserved: u32, len: usize, tail: u8) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&size.to_le_bytes());
    a.extend_from_slice(&reserved.to_le_bytes());
    a.resize(72, 0);
    a.resize(len.max(72), tail);
    a.truncate(len);
    a
}

type Reply = Result<(Vec<u8>, Vec<OwnedFd>), luo_client::Error>;

fn raw(fd: impl AsFd, op: u32, arg: &[u8]) -> Reply {
    call(fd.as_fd(), "raw", op, arg, &[])
}

fn raw_fds(fd: impl AsFd, op: u32, arg: &[u8], fds: &[BorrowedFd<'_>]) -> Reply {
    call(fd.as_fd(), "raw", op, arg, fds)
}

/// The session descriptor of a successful CREATE/RETRIEVE_SESSION reply.
fn session_of(reply: Reply) -> Session {
    let (_, mut fds) = reply.expect("session call");
    assert_eq!(fds.len(), 1, "one session descriptor");
    Session::from_fd(fds.pop().expect("fd"))
}

/// Creates `name` with `data` preserved under token 1 and hands it off: an incoming session.
fn hand_off(dev: &Device, name: &str, data: &[u8]) {
    let s = dev.create_session(name).expect("create");
    let m = memfd_with(name, data);
    s.preserve(&m, 1).expect("preserve");
    s.handoff().expect("handoff");
}

fn e(reply: Reply) -> Errno {
    errno(reply.map(|(a, f)| (a.len(), f.len())))
}

#[test]
fn create_and_retrieve_session_names_follow_the_kernel_rules() {
    let luod = Luod::start("names");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let create = LIVEUPDATE_IOCTL_CREATE_SESSION;
    let retrieve = LIVEUPDATE_IOCTL_RETRIEVE_SESSION;

    // strnlen(name, 64) must be 1..=63.
    assert_eq!(
        e(raw(&dev, create, &name_arg(72, b"", 72, 0))),
        Errno::EINVAL
    );
    assert_eq!(
        e(raw(&dev, create, &name_arg(72, &[b'x'; 64], 72, 0))),
        Errno::EINVAL
    );
    let long = [b'y'; 63];
    let s63 = session_of(raw(&dev, create, &name_arg(72, &long, 72, 0)));
    assert_eq!(s63.name().expect("name").as_bytes(), &long[..]);
    // No character-set restriction.
    let odd = b"\x01 spaces/slashes\xff";
    let s_odd = session_of(raw(&dev, create, &name_arg(72, odd, 72, 0)));

    // Unique among outgoing sessions only.
    assert_eq!(
        e(raw(&dev, create, &name_arg(72, &long, 72, 0))),
        Errno::EEXIST
    );
    drop(s_odd);

    // RETRIEVE: no incoming session → ENOENT, whatever the name (the kernel does not
    // validate its length).
    assert_eq!(
        e(raw(&dev, retrieve, &name_arg(72, b"nothing", 72, 0))),
        Errno::ENOENT
    );
    assert_eq!(
        e(raw(&dev, retrieve, &name_arg(72, b"", 72, 0))),
        Errno::ENOENT
    );
    assert_eq!(
        e(raw(&dev, retrieve, &name_arg(72, &[b'x'; 64], 72, 0))),
        Errno::ENOENT
    );
    // An outgoing session is not retrievable.
    assert_eq!(
        e(raw(&dev, retrieve, &name_arg(72, &long, 72, 0))),
        Errno::ENOENT
    );

    // Hand the 63-byte session off; a new outgoing session may reuse the incoming one's name.
    s63.handoff().expect("handoff");
    let again = session_of(raw(&dev, create, &name_arg(72, &long, 72, 0)));
    let inc = session_of(raw(&dev, retrieve, &name_arg(72, &long, 72, 0)));
    assert_eq!(inc.name().expect("name").as_bytes(), &long[..]);
    // Double retrieve → EINVAL.
    assert_eq!(
        e(raw(&dev, retrieve, &name_arg(72, &long, 72, 0))),
        Errno::EINVAL
    );
    drop(again);

    // Closing the retrieved session finishes it: the name is gone.
    drop(inc);
    assert_eq!(
        errno(dev.retrieve_session(std::str::from_utf8(&long).expect("ascii"))),
        Errno::ENOENT
    );
}

#[test]
fn preserve_fd_errnos_match_the_kernel() {
    let luod = Luod::start("preserve");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let s = dev.create_session("p").expect("create");
    let m = memfd_with("m", b"data");
    s.preserve(&m, 5).expect("preserve");

    // Token 0 is a token like any other.
    let zero = memfd_with("zero", b"0");
    s.preserve(&zero, 0).expect("token 0");

    // The token is checked first: even with another file, a used token is EEXIST.
    let other = memfd_with("other", b"other");
    assert_eq!(errno(s.preserve(&other, 5)), Errno::EEXIST);

    // No descriptor attached: EBADF.
    assert_eq!(
        e(raw(
            &s,
            LIVEUPDATE_SESSION_PRESERVE_FD,
            &fd_arg(16, 9, 16, 0)
        )),
        Errno::EBADF
    );
    // No handler: /dev/null, a directory.
    let null = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .expect("/dev/null");
    assert_eq!(errno(s.preserve(&null, 10)), Errno::ENOENT);
    let dir = rustix::fs::open(
        "/tmp",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("/tmp");
    assert_eq!(errno(s.preserve(&dir, 11)), Errno::ENOENT);

    // The same memfd again: through a dup (same open file) and through a reopen (a second
    // open file description of the same inode). Both are EBUSY, in this session or another.
    let dup = rustix::io::fcntl_dupfd_cloexec(&m, 0).expect("dup");
    assert_eq!(errno(s.preserve(&dup, 12)), Errno::EBUSY);
    let reopened = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&m)),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("reopen memfd");
    assert_eq!(errno(s.preserve(&reopened, 13)), Errno::EBUSY);
    let s2 = dev.create_session("p2").expect("create p2");
    assert_eq!(errno(s2.preserve(&reopened, 1)), Errno::EBUSY);
    // Tokens are per session: 5 is free in p2.
    s2.preserve(&other, 5).expect("same token, other session");

    // Two descriptors attached to one PRESERVE_FD: EINVAL.
    let two = memfd_with("two", b"2");
    assert_eq!(
        e(raw_fds(
            &s,
            LIVEUPDATE_SESSION_PRESERVE_FD,
            &fd_arg(16, 20, 16, 0),
            &[two.as_fd(), other.as_fd()]
        )),
        Errno::EINVAL
    );

    // Every failure left the session as it was: exactly tokens 0 and 5.
    let list = luod.control().sessions().expect("list");
    let p = list.iter().find(|x| x.name == "p").expect("p listed");
    assert_eq!(p.files, 2);

    // Closing the session unpreserves its files: the memfd may be preserved again.
    drop(s);
    let s3 = dev.create_session("p3").expect("create p3");
    s3.preserve(&dup, 1)
        .expect("preserve after the holder closed");
}

#[test]
fn session_direction_decides_which_operations_are_valid() {
    let luod = Luod::start("direction");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let out = dev.create_session("out").expect("create");
    let m = memfd_with("m", b"x");

    // RETRIEVE_FD and FINISH on an outgoing session: EINVAL.
    assert_eq!(
        e(raw(
            &out,
            LIVEUPDATE_SESSION_RETRIEVE_FD,
            &fd_arg(16, 1, 16, 0)
        )),
        Errno::EINVAL
    );
    assert_eq!(errno(out.retrieve(1)), Errno::EINVAL);
    assert_eq!(errno(out.finish()), Errno::EINVAL);

    // PRESERVE_FD on an incoming session: EINVAL.
    hand_off(&dev, "in", b"in");
    let inc = dev.retrieve_session("in").expect("retrieve");
    assert_eq!(errno(inc.preserve(&m, 2)), Errno::EINVAL);
    // Handoff of an incoming session: EINVAL.
    assert_eq!(errno(inc.handoff()), Errno::EINVAL);

    // A handed-off descriptor is inert: every session operation is EINVAL.
    out.preserve(&m, 1).expect("preserve");
    out.handoff().expect("handoff");
    let other = memfd_with("other", b"o");
    assert_eq!(errno(out.preserve(&other, 2)), Errno::EINVAL);
    assert_eq!(errno(out.retrieve(1)), Errno::EINVAL);
    assert_eq!(errno(out.finish()), Errno::EINVAL);
    assert_eq!(errno(out.name()), Errno::EINVAL);
    assert_eq!(errno(out.handoff()), Errno::EINVAL);
    // ...and closing it does nothing to the session, which is still retrievable.
    drop(out);
    let back = dev
        .retrieve_session("out")
        .expect("retrieve after the handoff");
    let f = back.retrieve(1).expect("retrieve fd");
    assert_eq!(pread_all(&f, 0, 1), b"x");

    // Session operations on the device and device operations on a session: EINVAL.
    assert_eq!(
        e(raw(
            &dev,
            LIVEUPDATE_SESSION_GET_NAME,
            &get_name_arg(72, 0, 72, 0)
        )),
        Errno::EINVAL
    );
    assert_eq!(
        e(raw(
            &back,
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            &name_arg(72, b"n", 72, 0)
        )),
        Errno::EINVAL
    );
}

#[test]
fn retrieve_fd_twice_returns_the_same_open_file() {
    let luod = Luod::start("retrieve-twice");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let s = dev.create_session("twice").expect("create");
    let m = memfd_with("m", &[7u8; 4096]);
    rustix::fs::seek(&m, SeekFrom::Start(123)).expect("seek");
    s.preserve(&m, 1).expect("preserve");
    s.handoff().expect("handoff");
    drop((s, m));

    let inc = dev.retrieve_session("twice").expect("retrieve");
    let a = inc.retrieve(1).expect("first");
    // The position recorded at handoff is restored.
    assert_eq!(
        rustix::fs::seek(&a, SeekFrom::Current(0)).expect("tell"),
        123
    );
    let b = inc.retrieve(1).expect("second");
    rustix::fs::seek(&a, SeekFrom::Start(1000)).expect("seek a");
    assert_eq!(
        rustix::fs::seek(&b, SeekFrom::Current(0)).expect("tell b"),
        1000,
        "both descriptors share one open file description"
    );
    assert_eq!(pread_all(&b, 4000, 96), vec![7u8; 96]);
    // Unknown token: ENOENT.
    assert_eq!(errno(inc.retrieve(2)), Errno::ENOENT);

    // Until FINISH the retrieved file cannot be preserved into an outgoing session (EBUSY);
    // after it, it can.
    let next = dev.create_session("next").expect("create");
    assert_eq!(errno(next.preserve(&a, 1)), Errno::EBUSY);
    inc.finish().expect("finish");
    next.preserve(&a, 1).expect("preserve after finish");
}

#[test]
fn finish_rules_match_the_kernel() {
    let luod = Luod::start("finish");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let s = dev.create_session("f").expect("create");
    let m1 = memfd_with("m1", b"one");
    let m2 = memfd_with("m2", b"two");
    s.preserve(&m1, 1).expect("preserve 1");
    s.preserve(&m2, 2).expect("preserve 2");
    s.handoff().expect("handoff");
    let inc = dev.retrieve_session("f").expect("retrieve");

    // reserved != 0: EINVAL, nothing changes.
    assert_eq!(
        e(raw(&inc, LIVEUPDATE_SESSION_FINISH, &finish_arg(8, 1, 8))),
        Errno::EINVAL
    );
    // Too short: EINVAL. A longer struct with a zero tail is fine, a dirty one E2BIG.
    assert_eq!(
        e(raw(&inc, LIVEUPDATE_SESSION_FINISH, &finish_arg(4, 0, 4))),
        Errno::EINVAL
    );
    let mut dirty = finish_arg(12, 0, 12);
    dirty[11] = 1;
    assert_eq!(
        e(raw(&inc, LIVEUPDATE_SESSION_FINISH, &dirty)),
        Errno::E2BIG
    );
    let one = inc.retrieve(1).expect("retrieve 1 is still there");
    assert_eq!(pread_all(&one, 0, 3), b"one");

    // FINISH before every file was retrieved is allowed (token 2 is discarded).
    let (reply, _) = raw(&inc, LIVEUPDATE_SESSION_FINISH, &finish_arg(12, 0, 12)).expect("finish");
    assert_eq!(reply.len(), 8, "the reply is min(size, known size) bytes");
    // Repeated FINISH succeeds; every token is now ENOENT.
    inc.finish().expect("finish again");
    assert_eq!(errno(inc.retrieve(1)), Errno::ENOENT);
    assert_eq!(errno(inc.retrieve(2)), Errno::ENOENT);
    // The retrieved file stays usable by its holder.
    assert_eq!(pread_all(&one, 0, 3), b"one");

    // The finished session stays listed until its descriptor closes, and cannot be
    // retrieved again.
    let listed = luod.control().sessions().expect("list");
    assert!(
        listed
            .iter()
            .any(|x| x.name == "f" && x.finished && x.files == 0)
    );
    assert_eq!(errno(dev.retrieve_session("f")), Errno::EINVAL);
    drop(inc);
    assert!(common::eventually(
        std::time::Duration::from_secs(5),
        || { luod.control().sessions().expect("list").is_empty() }
    ));
}

#[test]
fn get_name_works_on_both_directions_and_checks_reserved() {
    let luod = Luod::start("get-name");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let out = dev.create_session("outgoing-name").expect("create");
    hand_off(&dev, "incoming-name", b"i");
    let inc = dev.retrieve_session("incoming-name").expect("retrieve");
    assert_eq!(out.name().expect("name"), "outgoing-name");
    assert_eq!(inc.name().expect("name"), "incoming-name");

    // reserved != 0 → EINVAL; size below 72 → EINVAL.
    assert_eq!(
        e(raw(
            &out,
            LIVEUPDATE_SESSION_GET_NAME,
            &get_name_arg(72, 3, 72, 0)
        )),
        Errno::EINVAL
    );
    assert_eq!(
        e(raw(
            &out,
            LIVEUPDATE_SESSION_GET_NAME,
            &get_name_arg(16, 0, 16, 0)
        )),
        Errno::EINVAL
    );
    // A larger struct: zero tail fine (72 bytes back), dirty tail E2BIG.
    let (reply, _) = raw(
        &inc,
        LIVEUPDATE_SESSION_GET_NAME,
        &get_name_arg(100, 0, 100, 0),
    )
    .expect("get name, zero tail");
    assert_eq!(reply.len(), 72);
    assert_eq!(&reply[8..8 + 13], b"incoming-name");
    assert!(
        reply[8 + 13..].iter().all(|&b| b == 0),
        "name is NUL-padded"
    );
    assert_eq!(
        e(raw(
            &inc,
            LIVEUPDATE_SESSION_GET_NAME,
            &get_name_arg(100, 0, 100, 9)
        )),
        Errno::E2BIG
    );
}

#[test]
fn decoding_order_matches_the_kernel() {
    let luod = Luod::start("decoding");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let ctl = luod.control();
    let _ = ctl;

    // 1. Index out of the table: EINVAL, on the device and on sessions.
    assert_eq!(
        e(raw(&dev, 0xBA02, &name_arg(72, b"a", 72, 0))),
        Errno::EINVAL
    );
    assert_eq!(e(raw(&dev, 0xBA40, &fd_arg(16, 1, 16, 0))), Errno::EINVAL);
    let out = dev.create_session("out").expect("create");
    assert_eq!(e(raw(&out, 0xBA44, &fd_arg(16, 1, 16, 0))), Errno::EINVAL);
    assert_eq!(e(raw(&out, 0xBA3F, &fd_arg(16, 1, 16, 0))), Errno::EINVAL);
    assert_eq!(
        e(raw(&out, 0xBA01, &name_arg(72, b"a", 72, 0))),
        Errno::EINVAL
    );

    // 3. Right index, other bits wrong (type byte, direction/size bits): ENOTTY.
    assert_eq!(
        e(raw(&dev, 0xBB00, &name_arg(72, b"a", 72, 0))),
        Errno::ENOTTY
    );
    assert_eq!(
        e(raw(&dev, 0xC048_BA00, &name_arg(72, b"a", 72, 0))),
        Errno::ENOTTY
    );
    assert_eq!(
        e(raw(&out, 0xBB43, &get_name_arg(72, 0, 72, 0))),
        Errno::ENOTTY
    );

    // 5. Size below the minimum: EINVAL (even if the bytes are all there).
    assert_eq!(
        e(raw(&dev, 0xBA00, &name_arg(71, b"a", 72, 0))),
        Errno::EINVAL
    );
    assert_eq!(
        e(raw(&dev, 0xBA00, &name_arg(4, b"a", 4, 0))),
        Errno::EINVAL
    );
    assert_eq!(e(raw(&dev, 0xBA00, &[])), Errno::EINVAL);

    // 6. Larger than known: a non-zero tail is E2BIG, a zero tail works and the reply is the
    // known size.
    assert_eq!(
        e(raw(&dev, 0xBA00, &name_arg(80, b"big", 80, 1))),
        Errno::E2BIG
    );
    let (reply, fds) = raw(&dev, 0xBA00, &name_arg(80, b"big", 80, 0)).expect("zero tail");
    assert_eq!((reply.len(), fds.len()), (72, 1));
    assert_eq!(&reply[8..11], b"big");

    // 4 before 5 and 6: the session's direction is checked before the size.
    hand_off(&dev, "in", b"x");
    let inc = dev.retrieve_session("in").expect("retrieve");
    assert_eq!(
        e(raw(
            &inc,
            LIVEUPDATE_SESSION_PRESERVE_FD,
            &fd_arg(4, 1, 4, 0)
        )),
        Errno::EINVAL
    );
    // RETRIEVE_FD on an outgoing session with a dirty tail: EINVAL, not E2BIG...
    assert_eq!(
        e(raw(
            &out,
            LIVEUPDATE_SESSION_RETRIEVE_FD,
            &fd_arg(24, 1, 24, 0xff)
        )),
        Errno::EINVAL
    );
    assert_eq!(
        e(raw(
            &out,
            LIVEUPDATE_SESSION_FINISH,
            &[12, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
        )),
        Errno::EINVAL
    );
    // ...while on an incoming one the same dirty tail is E2BIG, and a clean one works.
    assert_eq!(
        e(raw(
            &inc,
            LIVEUPDATE_SESSION_RETRIEVE_FD,
            &fd_arg(24, 1, 24, 0xff)
        )),
        Errno::E2BIG
    );
    let (reply, fds) =
        raw(&inc, LIVEUPDATE_SESSION_RETRIEVE_FD, &fd_arg(24, 1, 24, 0)).expect("clean tail");
    assert_eq!((reply.len(), fds.len()), (16, 1));
    // A PRESERVE_FD shorter than its minimum on an outgoing session: EINVAL.
    let m = memfd_with("m", b"m");
    assert_eq!(
        e(raw_fds(
            &out,
            LIVEUPDATE_SESSION_PRESERVE_FD,
            &fd_arg(12, 1, 12, 0),
            &[m.as_fd()]
        )),
        Errno::EINVAL
    );

    // The kernel's operations need a device or session: on a fresh (control) connection they
    // are ENOTTY, as an ioctl on an unrelated file would be.
    let fresh = luo_client::connect(&luod.socket).expect("connect");
    assert_eq!(
        e(raw(&fresh, 0xBA00, &name_arg(72, b"a", 72, 0))),
        Errno::ENOTTY
    );
    // A device connection cannot become a device twice.
    assert_eq!(
        e(raw(&dev, luo_abi::wire::Op::OpenDevice as u32, &[])),
        Errno::EINVAL
    );
}

// Regressions.

/// A program that closes a retrieved session and at once retrieves the name again got EINVAL
/// ("already retrieved") instead of the kernel's ENOENT: luod had not yet seen the hang-up of
/// the closed descriptor, which in the kernel finishes and removes the session synchronously.
/// luod now processes the holder's pending hang-up before answering EINVAL.
#[test]
fn retrieve_right_after_closing_a_retrieved_session_is_enoent_not_einval() {
    let luod = Luod::start("reretrieve");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    for i in 0..100 {
        let name = format!("again-{i}");
        hand_off(&dev, &name, b"z");
        let inc = dev.retrieve_session(&name).expect("retrieve");
        drop(inc);
        assert_eq!(
            errno(dev.retrieve_session(&name)),
            Errno::ENOENT,
            "round {i}"
        );
    }
}

/// The same race for a handoff: closing a retrieved incoming session and at once handing off
/// a new outgoing session of the same name got EEXIST, because the closed one (finished by
/// its close, in the kernel's model) still held the incoming name.
#[test]
fn handoff_right_after_closing_the_retrieved_namesake_is_not_eexist() {
    let luod = Luod::start("rehandoff");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    hand_off(&dev, "cycle", b"0");
    for i in 0..100u32 {
        let inc = dev.retrieve_session("cycle").expect("retrieve");
        let next = dev
            .create_session("cycle")
            .expect("create the successor's session");
        let m = memfd_with("m", &i.to_le_bytes());
        next.preserve(&m, 1).expect("preserve");
        drop(inc);
        next.handoff().unwrap_or_else(|e| panic!("round {i}: {e}"));
    }
    let last = dev.retrieve_session("cycle").expect("retrieve the last");
    let f = last.retrieve(1).expect("retrieve fd");
    assert_eq!(pread_all(&f, 0, 4), 99u32.to_le_bytes());
}
