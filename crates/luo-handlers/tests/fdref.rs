//! The fdref handler on real sockets, pipes and eventfds: the retrieved descriptor is the same
//! open file, with everything in flight still there.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{preserve, retrieve_err};
use luo_abi::Errno;
use luo_core::{FileHandler, RetrieveStatus};
use luo_handlers::{FdKind, FdrefHandler, FdrefRecord, MemfdHandler};
use rustix::fs::OFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

fn read_exact(fd: impl AsFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = rustix::io::read(fd.as_fd(), &mut buf[done..]).expect("read");
        assert!(n > 0, "end of file after {done} bytes");
        done += n;
    }
    buf
}

fn write_all(fd: impl AsFd, data: &[u8]) {
    assert_eq!(
        rustix::io::write(fd.as_fd(), data).expect("write"),
        data.len()
    );
}

#[test]
fn socketpair_keeps_data_in_both_directions() {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    write_all(&a, b"ping from a");
    write_all(&b, b"pong from b");
    // A status flag on the open file description must survive: it is the same one.
    let fl = rustix::fs::fcntl_getfl(&a).expect("F_GETFL");
    rustix::fs::fcntl_setfl(&a, fl | OFlags::NONBLOCK).expect("F_SETFL");

    let h = FdrefHandler::new();
    assert!(h.can_preserve(a.as_fd()));
    assert_eq!(FdKind::of(a.as_fd()), Some(FdKind::Socket));
    let ida = h.identity(a.as_fd()).expect("identity");
    let idb = h.identity(b.as_fd()).expect("identity");
    assert_ne!(ida, idb, "two sockets are two objects");
    let mut fa = preserve(&h, a.as_fd(), 1);
    let mut fb = preserve(&h, b.as_fd(), 2);
    h.freeze(&mut fa).expect("freeze");
    h.freeze(&mut fb).expect("freeze");
    drop((a, b)); // the client exits; only the held duplicates keep the sockets

    let ra = h.retrieve(&fa).expect("retrieve a");
    let rb = h.retrieve(&fb).expect("retrieve b");
    assert_eq!(h.identity(ra.as_fd()).expect("identity"), ida);
    assert!(
        rustix::fs::fcntl_getfl(&ra)
            .expect("F_GETFL")
            .contains(OFlags::NONBLOCK)
    );
    assert_eq!(read_exact(&rb, 11), b"ping from a");
    assert_eq!(read_exact(&ra, 11), b"pong from b");
    write_all(&ra, b"after a");
    write_all(&rb, b"after b");
    assert_eq!(read_exact(&rb, 7), b"after a");
    assert_eq!(read_exact(&ra, 7), b"after b");

    h.finish(&mut fa, RetrieveStatus::Retrieved);
    h.finish(&mut fb, RetrieveStatus::Retrieved);
}

#[test]
fn pipe_ends_are_two_objects_and_keep_their_bytes() {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    write_all(&w, b"in flight");
    let h = FdrefHandler::new();
    assert_eq!(FdKind::of(r.as_fd()), Some(FdKind::Pipe));
    let idr = h.identity(r.as_fd()).expect("identity");
    let idw = h.identity(w.as_fd()).expect("identity");
    assert_ne!(idr, idw, "the two ends share an inode but are two objects");
    let dup = rustix::io::fcntl_dupfd_cloexec(&r, 0).expect("dup");
    assert_eq!(h.identity(dup.as_fd()).expect("identity"), idr);

    let mut fr = preserve(&h, r.as_fd(), 1);
    let mut fw = preserve(&h, w.as_fd(), 2);
    drop((r, w, dup));
    let rr = h.retrieve(&fr).expect("retrieve");
    let rw = h.retrieve(&fw).expect("retrieve");
    assert_eq!(read_exact(&rr, 9), b"in flight");
    write_all(&rw, b"more");
    assert_eq!(read_exact(&rr, 4), b"more");

    // Once every write end is closed the reader sees end of file.
    h.finish(&mut fw, RetrieveStatus::Retrieved);
    drop(fw);
    drop(rw);
    let mut buf = [0u8; 1];
    assert_eq!(rustix::io::read(&rr, &mut buf).expect("read"), 0);
    h.finish(&mut fr, RetrieveStatus::Retrieved);
}

#[test]
fn eventfd_keeps_its_counter_and_has_its_own_identity() {
    use rustix::event::{EventfdFlags, eventfd};
    let e = eventfd(5, EventfdFlags::CLOEXEC).expect("eventfd");
    let other = eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
    let h = FdrefHandler::new();
    assert_eq!(FdKind::of(e.as_fd()), Some(FdKind::Eventfd));
    let id = h.identity(e.as_fd()).expect("identity");
    assert_ne!(
        id,
        h.identity(other.as_fd()).expect("identity"),
        "eventfds share one anonymous inode but are distinct objects"
    );
    let mut f = preserve(&h, e.as_fd(), 1);
    write_all(&e, &3u64.to_ne_bytes());
    drop(e);
    let r = h.retrieve(&f).expect("retrieve");
    assert_eq!(h.identity(r.as_fd()).expect("identity"), id);
    assert_eq!(read_exact(&r, 8), 8u64.to_ne_bytes(), "5 + 3");
    h.finish(&mut f, RetrieveStatus::Retrieved);
}

#[test]
fn fdref_refuses_files_devices_directories_and_other_anon_inodes() {
    let h = FdrefHandler::new();
    let memfd =
        rustix::fs::memfd_create("luo-fdref", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let refused: Vec<(&str, OwnedFd)> = vec![
        ("/dev/null", common::open_ro("/dev/null")),
        ("a directory", common::open_ro("/")),
        ("a regular file", common::open_ro("/proc/self/status")),
        ("a memfd", memfd),
        (
            "an epoll",
            rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
                .expect("epoll"),
        ),
    ];
    for (what, fd) in &refused {
        assert!(!h.can_preserve(fd.as_fd()), "fdref takes {what}");
        assert_eq!(h.preserve(fd.as_fd()).expect_err(what).errno, Errno::EINVAL);
    }
    // A socket is not a memory file either.
    let (a, _b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    assert!(!MemfdHandler::new().can_preserve(a.as_fd()));
}

#[test]
fn retrieve_refuses_a_record_of_another_kind_or_object() {
    let h = FdrefHandler::new();
    let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let fa = preserve(&h, a.as_fd(), 1);
    let fb = preserve(&h, b.as_fd(), 2);
    let fr = preserve(&h, r.as_fd(), 3);

    // A socket record on a pipe.
    let forged = luo_core::FileData {
        token: 4,
        fd: rustix::io::fcntl_dupfd_cloexec(&fr.fd, 0).expect("dup"),
        record: fa.record.clone(),
    };
    assert_eq!(retrieve_err(&h, &forged).errno, Errno::EINVAL);
    // Another socket's record.
    let forged = luo_core::FileData {
        token: 5,
        fd: rustix::io::fcntl_dupfd_cloexec(&fb.fd, 0).expect("dup"),
        record: fa.record.clone(),
    };
    assert_eq!(retrieve_err(&h, &forged).errno, Errno::EINVAL);
    assert_eq!(
        FdrefRecord::parse(&fr.record).expect("record").kind(),
        Some(FdKind::Pipe)
    );
}

/// `SO_PASSRIGHTS` of a Unix socket, through the raw option.
fn passrights(fd: impl AsFd) -> bool {
    luo_sys::sockopt::passrights(fd)
        .expect("SO_PASSRIGHTS")
        .expect("this kernel has SO_PASSRIGHTS")
}

/// A preserved Unix socket accepts no descriptor while the handler holds it, and gets
/// `SO_PASSRIGHTS` back on every way the handler lets go of it: retrieve, unpreserve, and a
/// finish without retrieve. A socket whose owner had already turned it off stays off.
#[test]
fn unix_socket_refuses_descriptors_while_held_and_gets_them_back() {
    let pair = || {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair")
    };
    let h = FdrefHandler::new();
    type LetGo = fn(&FdrefHandler, &mut luo_core::FileData);
    let ways: [(&str, LetGo); 3] = [
        ("retrieve", |h, f| drop(h.retrieve(f).expect("retrieve"))),
        ("unpreserve", |h, f| h.unpreserve(f)),
        ("finish without retrieve", |h, f| {
            h.finish(f, RetrieveStatus::NotRetrieved)
        }),
    ];
    for (how, let_go) in ways {
        let (a, _b) = pair();
        assert!(passrights(&a));
        let mut f = preserve(&h, a.as_fd(), 1);
        assert!(!passrights(&a), "{how}: off while held");
        let rec = FdrefRecord::parse(&f.record).expect("record");
        assert_eq!(rec.flags.get(), luo_handlers::FDREF_FLAG_RIGHTS_OFF);
        let_go(&h, &mut f);
        assert!(passrights(&a), "{how}: on again");
    }
    let (a, _b) = pair();
    luo_sys::sockopt::set_passrights(&a, false).expect("off by its owner");
    let mut f = preserve(&h, a.as_fd(), 1);
    assert_eq!(
        FdrefRecord::parse(&f.record).expect("record").flags.get(),
        0
    );
    h.unpreserve(&mut f);
    assert!(!passrights(&a), "the owner's choice is kept");

    // What is queued is shown to `carries`, without being consumed.
    let (a, b) = pair();
    let m = rustix::fs::memfd_create("carried", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [m.as_fd()];
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &b,
        &[std::io::IoSlice::new(b"m")],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .expect("send");
    let f = preserve(&h, a.as_fd(), 1);
    let want = common::inode(&m);
    for _ in 0..2 {
        let mut seen = Vec::new();
        let found = h
            .carries(f.fd.as_fd(), &mut |c| {
                seen.push(common::inode(c));
                false
            })
            .expect("carries");
        assert!(!found);
        assert_eq!(
            seen,
            [want],
            "the queued memfd, seen again: nothing was consumed"
        );
    }
    assert!(
        h.carries(f.fd.as_fd(), &mut |c| common::inode(c) == want)
            .expect("carries"),
        "a yes from the visitor is the answer"
    );
}
