//! Hostile peers on raw `SOCK_SEQPACKET` connections: truncated and oversized messages, lying
//! headers, unknown opcodes, dirty tails, descriptors where none are expected, clients that
//! vanish mid-request or never read. Each gets the right errno or a dropped connection, and
//! after each luod still answers everyone else.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{Got, Luod, Proc, Raw, STEP, assert_serving, child_socket, memfd_with, message};
use luo_abi::Errno;
use luo_abi::uapi::{LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_SESSION_GET_NAME};
use luo_abi::wire::{NATIVE_BASE, Op};

const EMSGSIZE: i32 = 90;

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    common::child_entry(|role| match role {
        "vanish-mid-request" => vanish_mid_request(),
        other => panic!("unknown role {other}"),
    });
}

fn create_arg(name: &[u8], size: u32, len: usize, tail: u8) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&size.to_le_bytes());
    a.extend_from_slice(&(-1i32).to_le_bytes());
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name);
    a.extend_from_slice(&n);
    a.resize(len, tail);
    a
}

/// A raw connection turned into the device of this uid.
fn raw_device(luod: &Luod) -> Raw {
    let raw = Raw::connect(&luod.socket);
    assert_eq!(raw.request(Op::OpenDevice as u32, 1, &[], &[]).errno(), 0);
    raw
}

#[test]
fn truncated_header_is_eproto() {
    let luod = Luod::start("truncated");
    let raw = Raw::connect(&luod.socket);
    for len in [1usize, 8, 15] {
        raw.send(&vec![0xAB; len], &[]);
        match raw.recv() {
            Got::Reply { errno, id, .. } => {
                assert_eq!(errno, Errno::EPROTO.raw(), "{len}-byte message");
                assert_eq!(id, 0, "no id could be read");
            }
            other => panic!("{len}-byte message: {other:?}"),
        }
    }
    // The connection still works, and so does everyone else's.
    raw.ping();
    assert_serving(&luod.socket);
}

#[test]
fn header_len_disagreeing_with_the_payload_is_eproto() {
    let luod = Luod::start("lying-len");
    let raw = Raw::connect(&luod.socket);
    let mut m = message(Op::Ping as u32, 5, &[0u8; 8]);
    m[4..8].copy_from_slice(&4u32.to_le_bytes()); // says 4, carries 8
    raw.send(&m, &[]);
    assert_eq!(raw.recv().errno(), Errno::EPROTO.raw());
    m[4..8].copy_from_slice(&100u32.to_le_bytes()); // says 100, carries 8
    raw.send(&m, &[]);
    assert_eq!(raw.recv().errno(), Errno::EPROTO.raw());
    raw.ping();
    assert_serving(&luod.socket);
}

#[test]
fn oversized_message_is_emsgsize_or_dropped() {
    let luod = Luod::start("oversized");
    let raw = Raw::connect(&luod.socket);
    let big = message(Op::Ping as u32, 9, &vec![0u8; 4080]);
    assert_eq!(big.len(), 4096, "the largest message is accepted");
    // 4096 bytes is the limit: a ping with 4080 bytes of argument is a well-formed message
    // (ping ignores its argument).
    assert_eq!(
        raw.request(Op::Ping as u32, 9, &vec![0u8; 4080], &[])
            .errno(),
        0
    );
    let mut huge = message(Op::Ping as u32, 10, &[]);
    huge.resize(64 * 1024, 0x55);
    let len = (huge.len() - 16) as u32;
    huge[4..8].copy_from_slice(&len.to_le_bytes());
    raw.send(&huge, &[]);
    match raw.recv() {
        Got::Reply { errno, .. } => assert_eq!(errno, EMSGSIZE),
        Got::Closed => {}
        Got::Timeout => panic!("no answer to an oversized message"),
    }
    assert_serving(&luod.socket);
}

#[test]
fn unknown_opcodes_are_errors() {
    let luod = Luod::start("unknown-op");
    let ctl = Raw::connect(&luod.socket);
    let dev = raw_device(&luod);
    for op in [
        NATIVE_BASE,
        NATIVE_BASE + 99,
        NATIVE_BASE | 0xFFFF,
        0,
        0xFFFF_FFFF,
        0x1234,
    ] {
        let on_ctl = ctl.request(op, 3, &[], &[]).errno();
        let on_dev = dev.request(op, 4, &[], &[]).errno();
        assert_ne!(on_ctl, 0, "op {op:#x} on a control connection");
        assert_ne!(on_dev, 0, "op {op:#x} on a device");
    }
    // Decoded as ioctls: on a control connection ENOTTY, on the device the kernel's rules.
    assert_eq!(
        ctl.request(NATIVE_BASE + 99, 5, &[], &[]).errno(),
        Errno::ENOTTY.raw()
    );
    assert_eq!(
        dev.request(NATIVE_BASE + 99, 6, &[], &[]).errno(),
        Errno::EINVAL.raw()
    );
    ctl.ping();
    dev.ping();
    assert_serving(&luod.socket);
}

#[test]
fn nonzero_tail_is_e2big() {
    let luod = Luod::start("tail");
    let dev = raw_device(&luod);
    let got = dev.request(
        LIVEUPDATE_IOCTL_CREATE_SESSION,
        7,
        &create_arg(b"tail", 200, 200, 0),
        &[],
    );
    let _session = match got {
        Got::Reply {
            errno: 0, mut fds, ..
        } => {
            assert_eq!(fds.len(), 1);
            fds.pop()
        }
        other => panic!("zero tail: {other:?}"),
    };
    let mut dirty = create_arg(b"tail2", 200, 200, 0);
    dirty[199] = 1;
    assert_eq!(
        dev.request(LIVEUPDATE_IOCTL_CREATE_SESSION, 8, &dirty, &[])
            .errno(),
        Errno::E2BIG.raw()
    );
    // Nothing was created by the refused request.
    let list = luod.control().sessions().expect("list");
    assert_eq!(list.len(), 1);
    assert_serving(&luod.socket);
}

#[test]
fn descriptors_attached_where_none_are_expected_are_einval_and_closed() {
    let luod = Luod::start("stray-fds");
    let dev = raw_device(&luod);
    let got = dev.request(
        LIVEUPDATE_IOCTL_CREATE_SESSION,
        1,
        &create_arg(b"s", 72, 72, 0),
        &[],
    );
    let Got::Reply {
        errno: 0, mut fds, ..
    } = got
    else {
        panic!("create: {got:?}");
    };
    let session = Raw::from_fd(fds.pop().expect("session fd"));
    let stray = memfd_with("stray", b"stray");
    let mut get_name = vec![0u8; 72];
    get_name[..4].copy_from_slice(&72u32.to_le_bytes());
    // A kernel operation that takes no descriptor.
    assert_eq!(
        session
            .request(LIVEUPDATE_SESSION_GET_NAME, 2, &get_name, &[stray.as_fd()])
            .errno(),
        Errno::EINVAL.raw()
    );
    // A device operation.
    assert_eq!(
        dev.request(
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            3,
            &create_arg(b"t", 72, 72, 0),
            &[stray.as_fd()]
        )
        .errno(),
        Errno::EINVAL.raw()
    );
    // Native operations.
    let ctl = Raw::connect(&luod.socket);
    for op in [Op::Ping, Op::Status] {
        assert_eq!(
            ctl.request(op as u32, 4, &[], &[stray.as_fd(), stray.as_fd()])
                .errno(),
            Errno::EINVAL.raw(),
            "{op:?}"
        );
    }
    // Malformed and with descriptors: the header error wins, the descriptors are dropped.
    ctl.send(&[1, 2, 3], &[stray.as_fd()]);
    assert_eq!(ctl.recv().errno(), Errno::EPROTO.raw());
    // luod kept none of them: its descriptor count is back where it was, and nothing was
    // preserved or created.
    let st = luod.status();
    assert_eq!((st.files, st.sessions_outgoing), (0, 1));
    let fds_before = st.fd_used;
    for i in 0..50 {
        ctl.send(&message(Op::Ping as u32, i, &[]), &[stray.as_fd()]);
        assert_eq!(ctl.recv().errno(), Errno::EINVAL.raw());
    }
    assert_eq!(
        luod.status().fd_used,
        fds_before,
        "stray descriptors leaked"
    );
    session.ping();
    assert_serving(&luod.socket);
}

/// Sends a CREATE_SESSION and a second request without reading, then exits.
fn vanish_mid_request() {
    let raw = Raw::connect(&child_socket());
    assert_eq!(raw.request(Op::OpenDevice as u32, 1, &[], &[]).errno(), 0);
    raw.send(
        &message(
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            2,
            &create_arg(b"orphan", 72, 72, 0),
        ),
        &[],
    );
    raw.send(&message(Op::Status as u32, 3, &[]), &[]);
    // Exit without reading either reply.
}

#[test]
fn client_vanishing_mid_request_leaves_nothing_behind() {
    let luod = Luod::start("vanish");
    for round in 0..5 {
        let mut p = Proc::spawn(
            "vanishing client",
            common::role_command("child_role", "vanish-mid-request", &luod.socket),
        );
        p.wait_ok(STEP);
        // The session whose descriptor never reached anyone is closed: the name and the
        // device are free at once.
        let _no_forks = common::no_forks();
        let dev = luod.device();
        let s = dev
            .create_session("orphan")
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop((s, dev));
    }
    assert!(common::eventually(Duration::from_secs(5), || {
        luod.control().sessions().expect("list").is_empty()
    }));
    assert_serving(&luod.socket);
}

/// A client that sent requests and never read the replies stalled every other client: luod
/// waited up to a second in each reply's send (then dropped the client). luod now stops
/// reading such a client until it reads, and serves everyone else meanwhile; the paused
/// client loses nothing.
#[test]
fn client_that_never_reads_its_replies_cannot_stall_luod() {
    let luod = Luod::start("never-reads");
    let greedy = Raw::connect(&luod.socket);
    // Shrink the greedy client's receive buffer so luod's replies back up quickly.
    rustix::net::sockopt::set_socket_recv_buffer_size(&greedy.fd, 4096).expect("SO_RCVBUF");
    // Send until our own send buffer is full (the send timeout ends it) or enough is queued.
    rustix::net::sockopt::set_socket_timeout(
        &greedy.fd,
        rustix::net::sockopt::Timeout::Send,
        Some(Duration::from_millis(200)),
    )
    .expect("SO_SNDTIMEO");
    let mut sent = 0u64;
    let t0 = Instant::now();
    while sent < 2000 && t0.elapsed() < Duration::from_secs(3) {
        let status = message(Op::Status as u32, sent + 1, &[]);
        if luo_client::transport::send(greedy.fd.as_fd(), &status, &[]).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 10, "sent only {sent}");
    // Everyone else is still served promptly.
    let other = Raw::connect(&luod.socket);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        other.ping();
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("{sent} unread requests; slowest ping of another client {slowest:?}");
    assert!(
        slowest < Duration::from_millis(300),
        "a ping took {slowest:?} while a client does not read"
    );
    // The greedy client, once it reads, gets every reply, in order, exactly once.
    for want in 1..=sent {
        match greedy.recv() {
            Got::Reply { errno: 0, id, .. } => assert_eq!(id, want),
            other => panic!("reply {want} of {sent}: {other:?}"),
        }
    }
    assert_serving(&luod.socket);
}
