//! `call` against peers that do not answer.

use std::os::fd::AsFd;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use luo_abi::Errno;
use luo_abi::wire::Op;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// `call` on a socket with a receive timeout spun forever once the timeout expired (it took
/// the timeout's EAGAIN for "nothing yet" and received again), so a client could not bound
/// its wait for a hung luod. It now returns EAGAIN.
#[test]
fn call_returns_eagain_when_the_receive_timeout_expires() {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(100)),
    )
    .expect("SO_RCVTIMEO");
    let (tx, rx) = channel();
    // In a thread, so that a regression fails the test instead of hanging it.
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = luo_client::call(ours.as_fd(), "ping", Op::Ping as u32, &[], &[]);
        let _ = tx.send((r.map(|_| ()), t0.elapsed()));
    });
    let (result, took) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("call returned within 5 s");
    assert_eq!(result.expect_err("nobody answers").errno, Errno::EAGAIN);
    assert!(took >= Duration::from_millis(90), "returned after {took:?}");
    drop(theirs);
}

/// A reply to an abandoned request is skipped: the next call on the same descriptor gets its
/// own reply.
#[test]
fn a_late_reply_to_an_abandoned_call_is_skipped() {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(50)),
    )
    .expect("SO_RCVTIMEO");
    let first = luo_client::call(ours.as_fd(), "ping", Op::Ping as u32, &[], &[]);
    assert_eq!(first.expect_err("no answer yet").errno, Errno::EAGAIN);
    // A server answers both requests, late, and remembers their ids.
    let server = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let m = match luo_client::transport::recv(theirs.as_fd(), true).expect("recv") {
                luo_client::transport::Recv::Message(m) => m,
                other => panic!("{other:?}"),
            };
            let (hdr, _) = luo_abi::wire::parse_request(&m.bytes).expect("request");
            ids.push(hdr.id.get());
        }
        for &id in &ids {
            let mut out = Vec::new();
            // Each reply carries its request's id as the argument.
            luo_abi::wire::write_reply(&mut out, 0, id, &id.to_le_bytes());
            luo_client::transport::send(theirs.as_fd(), &out, &[]).expect("send");
        }
        ids
    });
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(5)),
    )
    .expect("SO_RCVTIMEO");
    let (arg, _) =
        luo_client::call(ours.as_fd(), "ping", Op::Ping as u32, &[], &[]).expect("second call");
    let ids = server.join().expect("server");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        u64::from_le_bytes(arg[..8].try_into().expect("8 bytes")),
        ids[1],
        "the second call got its own reply, not the first one's"
    );
}

/// A peer that sent a message and closed without reading ours: `recv` reported the connection
/// as closed and lost the peer's message, because the kernel reports ECONNRESET once before
/// the messages still queued. (luod lost a refusing successor's reason this way, and said only
/// that it had exited.) `recv` now receives again after the reset.
#[test]
fn recv_delivers_the_last_words_of_a_peer_that_reset_the_connection() {
    use luo_client::transport::{Recv, recv, send};
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    send(ours.as_fd(), b"never read", &[]).expect("send");
    send(theirs.as_fd(), b"last words", &[]).expect("send");
    drop(theirs);
    match recv(ours.as_fd(), false).expect("recv") {
        Recv::Message(m) => assert_eq!(m.bytes, b"last words"),
        other => panic!("expected the peer's message, got {other:?}"),
    }
    assert!(matches!(recv(ours.as_fd(), false), Ok(Recv::Closed)));
}
