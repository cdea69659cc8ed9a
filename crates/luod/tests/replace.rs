//! REPLACE_FD: a preserved file swapped for another in one step, as a VMM does after moving
//! its guest's RAM to new backing. Every failure leaves the old file preserved, untouched.

mod common;

use std::os::fd::AsFd;

use common::{Luod, Raw, errno, memfd_with, message, pread_all};
use luo_abi::Errno;
use luo_abi::wire::Op;

#[test]
fn replace_swaps_the_file_and_releases_the_old_one() {
    let luod = Luod::start("replace");
    let dev = luod.device();
    let s = dev.create_session("vm").expect("create");
    let old = memfd_with("old-ram", &[1u8; 8192]);
    let state = memfd_with("state", b"vcpu state");
    s.preserve(&old, 1).expect("preserve");
    s.preserve(&state, 2).expect("preserve");
    let new = memfd_with("new-ram", &[2u8; 16384]);
    s.replace(1, &new).expect("replace");
    assert_eq!(
        luod.status().bytes,
        16384 + 10,
        "counted: the new file, not the old"
    );

    // The old memfd is no longer luod's: another session may preserve it.
    let other = dev.create_session("other").expect("create");
    other.preserve(&old, 1).expect("the old file was released");
    // The new one is: preserving it again is EBUSY.
    assert_eq!(errno(other.preserve(&new, 2)), Errno::EBUSY);
    drop(other);

    // Replacing with the same object again is allowed.
    s.replace(1, &new)
        .expect("replace with the file already there");

    s.handoff().expect("handoff");
    drop((s, new));
    let s = dev.retrieve_session("vm").expect("retrieve");
    let ram = s.retrieve(1).expect("retrieve token 1");
    assert_eq!(
        pread_all(&ram, 0, 16384),
        vec![2u8; 16384],
        "the new memory"
    );
    assert_eq!(
        pread_all(s.retrieve(2).expect("token 2"), 0, 10),
        b"vcpu state"
    );
    s.finish().expect("finish");
}

#[test]
fn a_failed_replace_leaves_the_old_file_in_place() {
    let luod = Luod::start_with("replace-fail", &["--max-bytes", "20000"]);
    let dev = luod.device();
    let s = dev.create_session("vm").expect("create");
    let old = memfd_with("old", &[7u8; 8192]);
    s.preserve(&old, 1).expect("preserve");
    let busy = memfd_with("busy", b"elsewhere");
    let elsewhere = dev.create_session("elsewhere").expect("create");
    elsewhere.preserve(&busy, 1).expect("preserve");

    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    assert_eq!(errno(s.replace(1, &devnull)), Errno::ENOENT, "no handler");
    assert_eq!(
        errno(s.replace(1, &busy)),
        Errno::EBUSY,
        "preserved elsewhere"
    );
    assert_eq!(
        errno(s.replace(9, memfd_with("x", b"x"))),
        Errno::ENOENT,
        "no such token"
    );
    // The byte quota counts the new file instead of the old: 16 KiB fits beside the 9 bytes
    // of the other session, 24 KiB does not.
    assert_eq!(
        errno(s.replace(1, memfd_with("huge", &[0u8; 24576]))),
        Errno::ENOSPC
    );
    assert_eq!(luod.status().bytes, 8192 + 9);

    // Malformed requests on a raw duplicate of the session connection.
    let raw = Raw::from_fd(rustix::io::fcntl_dupfd_cloexec(s.as_fd(), 3).expect("dup"));
    let token = 1u64.to_le_bytes();
    let m = memfd_with("m", b"m");
    let op = Op::ReplaceFd as u32;
    assert_eq!(
        raw.request(op, 1, &token, &[]).errno(),
        Errno::EINVAL.raw(),
        "no fd"
    );
    assert_eq!(
        raw.request(op, 2, &token, &[m.as_fd(), m.as_fd()]).errno(),
        Errno::EINVAL.raw(),
        "two fds"
    );
    assert_eq!(
        raw.request(op, 3, &token[..4], &[m.as_fd()]).errno(),
        Errno::EINVAL.raw(),
        "short argument"
    );
    raw.send(&message(op, 4, &token), &[m.as_fd()]);
    assert_eq!(raw.recv().errno(), 0, "a well-formed replace works");
    s.replace(1, &old).expect("and back");

    // Nothing of the failures stuck: the old file is the one handed over.
    s.handoff().expect("handoff");
    drop(s);
    assert_eq!(
        pread_all(&old, 0, 4),
        [7u8; 4],
        "the client still holds its old file"
    );
    let s = dev.retrieve_session("vm").expect("retrieve");
    assert_eq!(
        pread_all(s.retrieve(1).expect("retrieve"), 0, 8192),
        vec![7u8; 8192]
    );
    assert_eq!(
        errno(s.replace(1, memfd_with("late", b"late"))),
        Errno::EINVAL,
        "incoming"
    );
    s.finish().expect("finish");
}
