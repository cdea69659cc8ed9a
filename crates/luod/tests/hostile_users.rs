//! A hostile user against a root luod that serves every uid (`--socket-mode 0666`): each test
//! reproduces a hole a probe found acting as uid 65534, and asserts it is closed. Each test is
//! named after what broke; its comment says how.
//!
//! The hostile user is a real process of another uid: this test binary re-executed in a role
//! ([`common::role_command`]) with its uid and gid switched to 65534, talking to the test over
//! its stdin and stdout. Under `LUO_REQUIRE_ALL=1` none of these may skip.

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Got, Luod, Proc, Raw, STEP, child_socket, errno, hear, memfd_with, say};
use luo_abi::Errno;
use luo_abi::wire::Op;
use luo_client::{Control, Device};
use rustix::fs::{Mode, OFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The hostile user (`nobody`).
const OTHER_UID: u32 = 65534;

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    common::child_entry(|role| match role {
        "read-only-file" => read_only_file(),
        "sessions-in-each-other" => sessions_in_each_other(),
        "own-status" => own_status(),
        other => panic!("unknown role {other}"),
    });
}

/// The command that runs `role` as the hostile user against `luod`.
fn hostile(role: &str, luod: &Luod) -> std::process::Command {
    let mut cmd = common::role_command("child_role", role, &luod.socket);
    cmd.uid(OTHER_UID).gid(OTHER_UID);
    cmd
}

/// The access mode and append flag of `fd`.
fn access(fd: impl AsFd) -> (OFlags, bool) {
    let fl = rustix::fs::fcntl_getfl(fd).expect("F_GETFL");
    (fl & OFlags::ACCMODE, fl.contains(OFlags::APPEND))
}

/// Sends one byte with `fds` attached over `sock`.
fn send_fds(sock: impl AsFd, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(b"x")],
        &mut control,
        SendFlags::NOSIGNAL,
    )
}

/// Receives one message from `sock` and returns the descriptors it carried.
fn recv_fds(sock: impl AsFd) -> Vec<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    fds
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}

// ---------------------------------------------------------------------------------------------
// Item 1: read-only descriptors came back writable.

/// The hostile side: opens root's 0644 file read-only, preserves it once root has unlinked it,
/// hands off, retrieves, and tries to write and to resize through what it got back.
fn read_only_file() {
    let path = hear().expect("path");
    let ro = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open root's file read-only");
    assert!(
        rustix::fs::open(path.as_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).is_err(),
        "uid {OTHER_UID} must not be able to open root's 0644 file for writing"
    );
    say("OPENED");
    assert_eq!(hear().as_deref(), Some("UNLINKED"));
    let dev = Device::open_at(&child_socket()).expect("device");
    let s = dev.create_session("ro").expect("create");
    s.preserve(&ro, 1)
        .expect("preserve the read-only descriptor");
    s.handoff().expect("handoff");
    drop((s, ro));
    say("HANDED");
    assert_eq!(hear().as_deref(), Some("GROWN"));
    let s = dev.retrieve_session("ro").expect("retrieve session");
    let back = s.retrieve(1).expect("retrieve the file");
    let (mode, append) = access(&back);
    say(&format!("MODE {} {append}", mode.bits()));
    let wrote = rustix::io::pwrite(&back, b"OWNED", 0);
    say(&format!(
        "PWRITE {}",
        wrote.map_or_else(|e| e.raw_os_error(), |_| 0)
    ));
    let cut = rustix::fs::ftruncate(&back, 1);
    say(&format!(
        "FTRUNCATE {}",
        cut.map_or_else(|e| e.raw_os_error(), |()| 0)
    ));
    s.finish().expect("finish");
}

/// Retrieve reopened `/proc/self/fd/N` with `O_RDWR` as root, whatever access the client had:
/// a user holding only an `O_RDONLY` descriptor of root's 0644 file got back an `O_RDWR` one
/// and `pwrite` changed root's file; retrieve also set the size back to the one recorded at
/// handoff, cutting what root had appended since.
#[test]
fn retrieve_of_a_read_only_descriptor_gave_write_access() {
    if !common::require_root("retrieve_of_a_read_only_descriptor_gave_write_access") {
        return;
    }
    let luod = Luod::start("ro-retrieve");
    let path = format!("/dev/shm/luo-hostile-ro-{}", std::process::id());
    let root_fd = rustix::fs::open(
        path.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .expect("create root's file");
    rustix::fs::fchmod(&root_fd, Mode::from_raw_mode(0o644)).expect("chmod");
    common::pwrite_all(&root_fd, 0, b"root's data");

    let mut child = Proc::spawn("uid 65534", hostile("read-only-file", &luod));
    child.tell(&path);
    child.expect("OPENED");
    rustix::fs::unlink(path.as_str()).expect("unlink");
    child.tell("UNLINKED");
    child.expect("HANDED");
    // Root appends after the handoff: a retrieve that restores the recorded size cuts it.
    common::pwrite_all(&root_fd, 11, b" and more");
    child.tell("GROWN");
    let mode = child.expect("MODE ");
    assert_eq!(
        mode,
        format!("{} false", OFlags::RDONLY.bits()),
        "the retrieved descriptor must be O_RDONLY, as the preserved one was"
    );
    assert_eq!(
        child.expect("PWRITE "),
        Errno::EBADF.raw().to_string(),
        "a write through it must fail as it did before"
    );
    assert_ne!(
        child.expect("FTRUNCATE "),
        "0",
        "nor may it resize the file"
    );
    child.wait_ok(STEP);
    assert_eq!(
        common::pread_all(&root_fd, 0, 20),
        b"root's data and more",
        "root's file is untouched: neither written nor cut back"
    );
}

/// Every access mode comes back exactly: read-only, write-only, read-write, and append.
#[test]
fn retrieve_keeps_the_access_mode_of_every_preserved_descriptor() {
    let luod = Luod::start("access-modes");
    let dev = luod.device();
    let modes = [
        OFlags::RDONLY,
        OFlags::WRONLY,
        OFlags::RDWR,
        OFlags::RDWR | OFlags::APPEND,
        OFlags::WRONLY | OFlags::APPEND,
    ];
    let s = dev.create_session("modes").expect("create");
    let mut keep = Vec::new();
    for (token, &flags) in modes.iter().enumerate() {
        let memfd = memfd_with("mode", b"0123456789");
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd)),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("reopen with the mode");
        s.preserve(&fd, token as u64).expect("preserve");
        keep.push((memfd, fd));
    }
    s.handoff().expect("handoff");
    drop(s);
    let s = dev.retrieve_session("modes").expect("retrieve");
    for (token, &flags) in modes.iter().enumerate() {
        let back = s.retrieve(token as u64).expect("retrieve file");
        assert_eq!(
            access(&back),
            (flags & OFlags::ACCMODE, flags.contains(OFlags::APPEND)),
            "mode {flags:?}"
        );
        let can_write = flags & OFlags::ACCMODE != OFlags::RDONLY;
        assert_eq!(
            rustix::io::write(&back, b"!").is_ok(),
            can_write,
            "write through mode {flags:?}"
        );
        let mut buf = [0u8; 1];
        let can_read = flags & OFlags::ACCMODE != OFlags::WRONLY;
        assert_eq!(
            rustix::io::pread(&back, &mut buf, 0).is_ok(),
            can_read,
            "read through mode {flags:?}"
        );
    }
    s.finish().expect("finish");
}

// ---------------------------------------------------------------------------------------------
// Item 4: a zero-length datagram destroyed a session.

/// `send(b"")` on a session connection read as end-of-file (`recvmsg` returns 0 for both on
/// `SOCK_SEQPACKET`): luod closed the connection and dropped the outgoing session with its
/// files. The same on a device connection. An empty message is shorter than the header:
/// `EPROTO`, and the connection stays.
#[test]
fn an_empty_datagram_destroyed_a_session() {
    let luod = Luod::start("empty-datagram");
    let dev = luod.device();
    let s = dev.create_session("kept").expect("create");
    s.preserve(memfd_with("kept", b"kept bytes"), 7)
        .expect("preserve");
    let raw = Raw::from_fd(
        rustix::io::fcntl_dupfd_cloexec(s.as_fd(), 3).expect("dup the session descriptor"),
    );
    for round in 0..3 {
        raw.send(b"", &[]);
        match raw.recv() {
            Got::Reply { errno, id, .. } => {
                assert_eq!(errno, Errno::EPROTO.raw(), "round {round}");
                assert_eq!(id, 0);
            }
            other => panic!("round {round}: an empty datagram got {other:?}"),
        }
    }
    assert_eq!(s.name().expect("the session still answers"), "kept");
    let list = luod.control().sessions().expect("list");
    assert!(
        list.iter()
            .any(|x| x.name == "kept" && x.files == 1 && !x.incoming),
        "the session and its file survive: {list:?}"
    );

    // A device connection, raw, likewise.
    drop(dev);
    let raw_dev = Raw::connect(&luod.socket);
    assert_eq!(
        raw_dev.request(Op::OpenDevice as u32, 1, &[], &[]).errno(),
        0
    );
    raw_dev.send(b"", &[]);
    assert_eq!(raw_dev.recv().errno(), Errno::EPROTO.raw());
    raw_dev.ping();
    // Still this uid's device: a second open is EBUSY.
    assert_eq!(errno(Device::open_at(&luod.socket)), Errno::EBUSY);
    // A real hang-up is still one: the session goes with its last descriptor.
    drop((raw, s));
    assert!(common::eventually(Duration::from_secs(5), || {
        luod.control().sessions().expect("list").is_empty()
    }));
}

// ---------------------------------------------------------------------------------------------
// Item 5: sessions that nobody could release.

/// A socket whose receive queue held a session descriptor in flight was accepted by
/// PRESERVE_FD: luod then kept that session alive through the socket. Now it is refused, and
/// the socket comes back as it was (its queue intact, descriptors accepted again).
#[test]
fn a_socket_carrying_a_session_in_flight_was_preserved() {
    let luod = Luod::start("in-flight");
    let dev = luod.device();
    let holder = dev.create_session("holder").expect("create");
    let carried = dev.create_session("carried").expect("create");
    let (s1, p1) = seqpacket_pair();
    // A harmless message first, then the session: the check must look past the first.
    send_fds(&p1, &[memfd_with("harmless", b"h").as_fd()]).expect("send a memfd");
    send_fds(&p1, &[carried.as_fd()]).expect("send the session");
    assert_eq!(
        errno(holder.preserve(&s1, 1)),
        Errno::EINVAL,
        "a socket with a luod session queued in it"
    );
    // Nothing was consumed, and the socket takes descriptors again.
    assert_eq!(recv_fds(&s1).len(), 1, "the memfd is still queued");
    let back = recv_fds(&s1);
    assert_eq!(back.len(), 1, "the session is still queued");
    send_fds(&p1, &[back[0].as_fd()]).expect("SO_PASSRIGHTS is on again");

    // A socket carrying other descriptors is fine, and while luod holds it nothing more
    // can be put in flight to it.
    let (s2, p2) = seqpacket_pair();
    send_fds(&p2, &[memfd_with("other", b"o").as_fd()]).expect("send a memfd");
    holder.preserve(&s2, 2).expect("a socket carrying a memfd");
    assert_eq!(
        send_fds(&p2, &[carried.as_fd()]),
        Err(rustix::io::Errno::PERM),
        "a preserved Unix socket refuses descriptors"
    );
    // Data still flows.
    rustix::net::send(&p2, b"data", SendFlags::empty()).expect("plain data");
    holder.handoff().expect("handoff");
    drop(holder);
    let holder = dev.retrieve_session("holder").expect("retrieve");
    let s2_back = holder.retrieve(2).expect("retrieve the socket");
    send_fds(&p2, &[carried.as_fd()]).expect("retrieve turns SO_PASSRIGHTS back on");
    assert_eq!(
        recv_fds(&s2_back).len(),
        1,
        "the memfd queued before preserve"
    );
    holder.finish().expect("finish");
}

/// The hostile side: two sessions, each holding a socket, each socket with the other session
/// queued in it; then it exits.
fn sessions_in_each_other() {
    let dev = Device::open_at(&child_socket()).expect("device");
    let a = dev.create_session("a").expect("create a");
    let b = dev.create_session("b").expect("create b");
    let (s1, p1) = seqpacket_pair();
    let (s2, p2) = seqpacket_pair();
    a.preserve(&s1, 1).expect("preserve s1 (empty queue)");
    b.preserve(&s2, 1).expect("preserve s2 (empty queue)");
    // The probe put b into s1's queue and a into s2's after preserving them.
    let into_s1 = send_fds(&p1, &[b.as_fd()]);
    let into_s2 = send_fds(&p2, &[a.as_fd()]);
    say(&format!(
        "SENT {} {}",
        into_s1.map_or_else(|e| e.raw_os_error(), |_| 0),
        into_s2.map_or_else(|e| e.raw_os_error(), |_| 0)
    ));
    drop((a, b, s1, s2, p1, p2, dev));
}

/// Two sessions that held each other through sockets queued with each other's descriptor
/// stayed after their owner exited, and nothing but a reboot freed them. Now a preserved Unix
/// socket accepts no descriptor while luod holds it, so the cycle cannot form, and the
/// sessions go with their owner.
#[test]
fn two_sessions_holding_each_other_outlived_their_owner() {
    if !common::require_root("two_sessions_holding_each_other_outlived_their_owner") {
        return;
    }
    let luod = Luod::start("cycle");
    let mut child = Proc::spawn("uid 65534", hostile("sessions-in-each-other", &luod));
    let perm = rustix::io::Errno::PERM.raw_os_error();
    assert_eq!(child.expect("SENT "), format!("{perm} {perm}"));
    child.wait_ok(STEP);
    assert!(
        common::eventually(Duration::from_secs(5), || {
            !luod
                .control()
                .sessions()
                .expect("list")
                .iter()
                .any(|s| s.owner == OTHER_UID)
        }),
        "uid {OTHER_UID}'s sessions are gone with it: {:?}",
        luod.control().sessions()
    );
    assert_eq!(luod.status().files, 0);
}

// ---------------------------------------------------------------------------------------------
// Item 6: global counts leaked across users.

/// The hostile side: reads STATUS before and after making a session of its own.
fn own_status() {
    let ctl = Control::connect_at(&child_socket()).expect("connect");
    let st = ctl.status().expect("status");
    say(&format!(
        "BEFORE {} {} {} {} {}",
        st.sessions_outgoing + st.sessions_incoming,
        st.files,
        st.bytes,
        st.clients,
        st.fd_used
    ));
    let dev = Device::open_at(&child_socket()).expect("device");
    let s = dev.create_session("mine").expect("create");
    s.preserve(memfd_with("mine", &[1u8; 4096]), 1)
        .expect("preserve");
    let st = ctl.status().expect("status");
    say(&format!(
        "AFTER {} {} {} {} {}",
        st.sessions_outgoing + st.sessions_incoming,
        st.files,
        st.bytes,
        st.clients,
        st.fd_used
    ));
    let _ = hear();
}

/// STATUS showed every user the machine-wide session, file, byte and client counts. A
/// non-root user now sees its own.
#[test]
fn status_showed_every_user_the_whole_machine() {
    if !common::require_root("status_showed_every_user_the_whole_machine") {
        return;
    }
    let luod = Luod::start("own-status");
    let dev = luod.device();
    let mut keep = Vec::new();
    for i in 0..3 {
        let s = dev.create_session(&format!("root-{i}")).expect("create");
        s.preserve(memfd_with("root", &[0u8; 65536]), 1)
            .expect("preserve");
        keep.push(s);
    }
    let mut child = Proc::spawn("uid 65534", hostile("own-status", &luod));
    // Its one control connection: no session, no file, no byte of root's.
    assert_eq!(child.expect("BEFORE "), "0 0 0 1 1");
    // Control, device and session connections, one file of 4096 bytes.
    assert_eq!(child.expect("AFTER "), "1 1 4096 3 4");
    let all = luod.status();
    assert_eq!(all.sessions_outgoing, 4, "root sees every uid's sessions");
    assert_eq!(all.files, 4);
    assert_eq!(all.bytes, 3 * 65536 + 4096);
    child.close_stdin();
    child.wait_ok(STEP);
}
