//! `Session::preserve_many` against peers that misbehave: a peer that hangs up in the middle of
//! a batch, and one that sends a stale reply first. (Against the real luod:
//! `crates/luod/tests/pipelining.rs`.)

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::channel;
use std::time::Duration;

use luo_abi::Errno;
use luo_abi::uapi::LIVEUPDATE_SESSION_PRESERVE_FD;
use luo_client::transport::{self, Recv};
use luo_client::{PRESERVE_WINDOW, Session};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

const ECONNRESET: Errno = Errno::ECONNRESET;

fn memfds(n: usize) -> Vec<(OwnedFd, u64)> {
    (0..n)
        .map(|i| {
            let fd =
                rustix::fs::memfd_create("batch", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
            (fd, 1000 + i as u64)
        })
        .collect()
}

/// Runs `preserve_many` over `files` in a thread against `peer`, which gets the other end of
/// a socket pair; returns what `preserve_many` returned and what the peer returned.
fn against<T: Send + 'static>(
    files: usize,
    peer: impl FnOnce(OwnedFd) -> T + Send + 'static,
) -> (Result<(), luo_client::PreserveManyError>, T) {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let peer = std::thread::spawn(move || peer(theirs));
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let files = memfds(files);
        let batch: Vec<(BorrowedFd<'_>, u64)> =
            files.iter().map(|(f, t)| (f.as_fd(), *t)).collect();
        let _ = tx.send(Session::from_fd(ours).preserve_many(&batch));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("preserve_many returned within 10 s");
    (result, peer.join().expect("peer"))
}

/// Receives one PRESERVE_FD request: its id and token, checking it carries one descriptor.
fn request(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    match transport::recv(fd, true).expect("recv") {
        Recv::Message(m) => {
            let (hdr, arg) = luo_abi::wire::parse_request(&m.bytes).expect("request");
            assert_eq!(hdr.op.get(), LIVEUPDATE_SESSION_PRESERVE_FD);
            assert_eq!(m.fds.len(), 1, "one descriptor per request");
            let token = u64::from_le_bytes(arg[8..16].try_into().expect("token"));
            Some((hdr.id.get(), token))
        }
        _ => None,
    }
}

fn reply(fd: BorrowedFd<'_>, errno: i32, id: u64) {
    let mut out = Vec::new();
    luo_abi::wire::write_reply(&mut out, errno, id, &[]);
    transport::send(fd, &out, &[]).expect("send reply");
}

#[test]
fn a_peer_hanging_up_mid_batch_fails_every_file_it_did_not_answer() {
    const FILES: usize = 3 * PRESERVE_WINDOW;
    const ANSWERED: usize = PRESERVE_WINDOW + 5;
    let (result, seen) = against(FILES, |peer| {
        let mut seen = Vec::new();
        // Never more than the window unanswered: the client must wait for replies.
        while seen.len() < ANSWERED + PRESERVE_WINDOW {
            let Some(req) = request(peer.as_fd()) else {
                break;
            };
            seen.push(req);
            if seen.len() <= ANSWERED {
                // Refuse the third file, accept the rest.
                let errno = if seen.len() == 3 { 17 } else { 0 };
                reply(peer.as_fd(), errno, req.0);
            }
        }
        seen
    });
    // The client sent exactly a window beyond what was answered, then waited.
    assert_eq!(seen.len(), ANSWERED + PRESERVE_WINDOW);
    let ids: Vec<u64> = seen.iter().map(|r| r.0).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "consecutive ids");
    let tokens: Vec<u64> = seen.iter().map(|r| r.1).collect();
    assert_eq!(tokens, (1000..1000 + seen.len() as u64).collect::<Vec<_>>());

    let err = result.expect_err("the peer hung up");
    assert_eq!(err.failed[0].index, 2);
    assert_eq!(err.failed[0].token, 1002);
    assert_eq!(err.failed[0].error.errno, Errno::EEXIST);
    let rest: Vec<usize> = err.failed[1..].iter().map(|f| f.index).collect();
    assert_eq!(rest, (ANSWERED..FILES).collect::<Vec<_>>());
    assert!(err.failed[1..].iter().all(|f| f.error.errno == ECONNRESET));
}

#[test]
fn a_stale_reply_is_skipped() {
    const FILES: usize = 10;
    let (result, ()) = against(FILES, |peer| {
        let mut ids = Vec::new();
        for _ in 0..FILES {
            ids.push(request(peer.as_fd()).expect("request").0);
        }
        // A reply to a request abandoned long ago, then the real ones.
        reply(peer.as_fd(), 5, ids[0].wrapping_sub(1000));
        for (i, id) in ids.iter().enumerate() {
            reply(peer.as_fd(), if i == 7 { 16 } else { 0 }, *id);
        }
        // Keep the connection open until the client is done.
        let _ = transport::recv(peer.as_fd(), true);
    });
    let err = result.expect_err("file 7 was refused");
    assert_eq!(err.failed.len(), 1, "{err}");
    assert_eq!(
        (err.failed[0].index, err.failed[0].error.errno),
        (7, Errno::EBUSY)
    );
}
