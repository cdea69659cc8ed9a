//! Pipelined requests: `Session::preserve_many` against a real luod, in batches larger than its
//! window, with files luod refuses in the middle, across a workload update; and a client that
//! pipelines requests whose replies carry descriptors and never reads them.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{
    Got, Luod, Proc, Raw, STEP, assert_serving, child_socket, file_size, memfd_with, message,
    open_device_retry, pread_all, role_command, say,
};
use luo_abi::Errno;
use luo_abi::uapi::LIVEUPDATE_IOCTL_CREATE_SESSION;
use luo_abi::wire::Op;
use luo_client::{PRESERVE_WINDOW, Session};
use rustix::fs::{Mode, OFlags};

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    common::child_entry(|role| match role {
        "batch-v1" => batch_v1(),
        "batch-v2" => batch_v2(),
        other => panic!("unknown role {other}"),
    });
}

/// Files of the workload update: many windows' worth.
const BATCH: usize = 1_000;

/// The content of file `i` of a batch: distinct bytes and a distinct length.
fn content(i: usize) -> Vec<u8> {
    format!("file {i} of the batch {}", "#".repeat(i % 97)).into_bytes()
}

/// The token of file `i` of a batch.
fn token(i: usize) -> u64 {
    (i as u64) * 7 + 3
}

/// Pairs each descriptor with its token, as `preserve_many` takes them.
fn pairs<'a>(files: &'a [(OwnedFd, u64)]) -> Vec<(BorrowedFd<'a>, u64)> {
    files.iter().map(|(f, t)| (f.as_fd(), *t)).collect()
}

/// Version 1: preserves [`BATCH`] memfds in one `preserve_many`, hands off, exits.
fn batch_v1() {
    let dev = luo_client::Device::open_at(&child_socket()).expect("open");
    let s = dev.create_session("batch").expect("create");
    let files: Vec<(OwnedFd, u64)> = (0..BATCH)
        .map(|i| (memfd_with("part", &content(i)), token(i)))
        .collect();
    s.preserve_many(&pairs(&files)).expect("preserve_many");
    s.handoff().expect("handoff");
    say("HANDED-OFF");
}

/// Version 2: retrieves every file of the batch and checks its bytes, then finishes.
fn batch_v2() {
    let dev = open_device_retry(&child_socket(), STEP);
    let s = dev.retrieve_session("batch").expect("retrieve session");
    for i in 0..BATCH {
        let f = s
            .retrieve(token(i))
            .unwrap_or_else(|e| panic!("file {i}: {e}"));
        let want = content(i);
        assert_eq!(file_size(&f), want.len() as u64, "size of file {i}");
        assert_eq!(pread_all(&f, 0, want.len()), want, "bytes of file {i}");
    }
    s.finish().expect("finish");
    say(&format!("CHECKED {BATCH}"));
}

#[test]
fn preserve_many_hands_1000_memfds_from_v1_to_a_new_process_v2() {
    const { assert!(BATCH > 10 * PRESERVE_WINDOW) };
    let luod = Luod::start("batch");
    let mut v1 = Proc::spawn("v1", role_command("child_role", "batch-v1", &luod.socket));
    v1.expect("HANDED-OFF");
    v1.wait_ok(STEP);

    let list = luod.control().sessions().expect("list");
    assert_eq!(list.len(), 1);
    assert!(list[0].incoming);
    assert_eq!(list[0].files, BATCH as u64);

    let mut v2 = Proc::spawn("v2", role_command("child_role", "batch-v2", &luod.socket));
    assert_eq!(v2.expect("CHECKED"), BATCH.to_string());
    v2.wait_ok(STEP);
    assert!(common::eventually(Duration::from_secs(5), || {
        luod.control().sessions().expect("list").is_empty()
    }));
}

/// Files of the batch with faults.
const FAULTY: usize = 200;

/// What goes wrong in the faulty batch, by index, and the errno the kernel gives for it.
fn faults() -> Vec<(usize, Errno)> {
    vec![
        // A token the batch used before.
        (70, Errno::EEXIST),
        // The session's own descriptor: no handler.
        (100, Errno::ENOENT),
        // A second descriptor of an inode the batch preserved before.
        (130, Errno::EBUSY),
        // /dev/null: no handler.
        (160, Errno::ENOENT),
        // The last file, again a used token.
        (FAULTY - 1, Errno::EEXIST),
    ]
}

/// The faulty batch for `session`: memfds holding [`content`] under [`token`], but for the
/// [`faults`].
fn faulty_batch(session: &Session) -> Vec<(OwnedFd, u64)> {
    let mut files: Vec<(OwnedFd, u64)> = (0..FAULTY)
        .map(|i| (memfd_with("faulty", &content(i)), token(i)))
        .collect();
    files[70].1 = token(10);
    files[100].0 = rustix::io::fcntl_dupfd_cloexec(session, 0).expect("dup session");
    files[130].0 = rustix::fs::open(
        format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&files[20].0)
        ),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("reopen memfd 20");
    files[160].0 = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .expect("/dev/null");
    files[FAULTY - 1].1 = token(0);
    files
}

#[test]
fn preserve_many_reports_exactly_the_files_refused_and_agrees_with_preserve() {
    let luod = Luod::start("faulty");
    let _no_forks = common::no_forks();
    let dev = luod.device();

    // One at a time.
    let one = dev.create_session("one-by-one").expect("create");
    let files = faulty_batch(&one);
    let sequential: Vec<Option<Errno>> = files
        .iter()
        .map(|(f, t)| one.preserve(f, *t).err().map(|e| e.errno))
        .collect();

    // Pipelined, on another session with its own files.
    let many = dev.create_session("pipelined").expect("create");
    let files = faulty_batch(&many);
    let err = many
        .preserve_many(&pairs(&files))
        .expect_err("the batch has faults");
    let mut pipelined = vec![None; FAULTY];
    for f in &err.failed {
        assert_eq!(f.token, files[f.index].1, "token of file {}", f.index);
        assert_eq!(f.error.op, "PRESERVE_FD");
        pipelined[f.index] = Some(f.error.errno);
    }

    let mut expected = vec![None; FAULTY];
    for (i, e) in faults() {
        expected[i] = Some(e);
    }
    assert_eq!(sequential, expected, "preserve one at a time");
    assert_eq!(pipelined, expected, "preserve_many");
    let indices: Vec<usize> = err.failed.iter().map(|f| f.index).collect();
    assert_eq!(
        indices,
        faults().iter().map(|f| f.0).collect::<Vec<_>>(),
        "listed once each, in order"
    );
    assert!(err.to_string().contains("EEXIST"), "{err}");

    // Everything else is held: hand the pipelined session over and read it back. A token
    // used twice holds the first file given under it.
    let list = luod.control().sessions().expect("list");
    for name in ["one-by-one", "pipelined"] {
        let s = list.iter().find(|s| s.name == name).expect("listed");
        assert_eq!(s.files, (FAULTY - faults().len()) as u64, "{name}");
    }
    many.handoff().expect("handoff");
    drop((many, files, dev));
    let dev = luod.device();
    let back = dev.retrieve_session("pipelined").expect("retrieve");
    for i in (0..FAULTY).filter(|i| expected[*i].is_none()) {
        let f = back
            .retrieve(token(i))
            .unwrap_or_else(|e| panic!("file {i}: {e}"));
        assert_eq!(pread_all(&f, 0, content(i).len()), content(i), "file {i}");
    }
    back.finish().expect("finish");
}

/// A device that pipelines CREATE_SESSION without reading: the replies carry the new
/// sessions' descriptors. luod sends what its socket takes, keeps the reply that does not fit
/// (descriptor included) in the connection's outbox and stops reading the connection; it
/// serves everyone else meanwhile, and once the client reads, every reply arrives in order
/// with its descriptor.
#[test]
fn unread_replies_carrying_descriptors_wait_in_the_outbox_and_arrive_in_order() {
    let luod = Luod::start("outbox");
    let greedy = Raw::connect(&luod.socket);
    assert_eq!(
        greedy.request(Op::OpenDevice as u32, 1, &[], &[]).errno(),
        0
    );
    rustix::net::sockopt::set_socket_timeout(
        &greedy.fd,
        rustix::net::sockopt::Timeout::Send,
        Some(Duration::from_millis(200)),
    )
    .expect("SO_SNDTIMEO");
    let create = |i: u64| {
        let mut arg = Vec::new();
        arg.extend_from_slice(&72u32.to_le_bytes());
        arg.extend_from_slice(&(-1i32).to_le_bytes());
        let mut name = [0u8; 64];
        let text = format!("greedy-{i}");
        name[..text.len()].copy_from_slice(text.as_bytes());
        arg.extend_from_slice(&name);
        message(LIVEUPDATE_IOCTL_CREATE_SESSION, i, &arg)
    };
    let mut sent = 0u64;
    let t0 = Instant::now();
    while sent < 5_000 && t0.elapsed() < Duration::from_secs(5) {
        if luo_client::transport::send(greedy.fd.as_fd(), &create(sent + 2), &[]).is_err() {
            break;
        }
        sent += 1;
    }
    // luod stopped reading us (else our sends would never have backed up).
    assert!(
        sent < 5_000,
        "luod kept reading a client that does not read"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || luod
            .log_text()
            .contains("pausing it")),
        "luod never paused the client"
    );

    let other = Raw::connect(&luod.socket);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        other.ping();
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a ping took {slowest:?} while a client does not read"
    );

    let mut sessions = Vec::new();
    for i in 0..sent {
        match greedy.recv() {
            Got::Reply {
                errno: 0, id, fds, ..
            } => {
                assert_eq!(id, i + 2, "reply {i} of {sent}");
                assert_eq!(fds.len(), 1, "reply {i} carries its session");
                sessions.extend(fds);
            }
            other => panic!("reply {i} of {sent}: {other:?}"),
        }
    }
    assert!(luod.log_text().contains("resuming it"));
    let list = luod.control().sessions().expect("list");
    assert_eq!(list.len() as u64, sent);
    // Each descriptor is its session: GET_NAME through it.
    let last = Session::from_fd(sessions.pop().expect("a session"));
    assert_eq!(last.name().expect("name"), format!("greedy-{}", sent + 1));
    drop((last, sessions));
    assert!(common::eventually(Duration::from_secs(5), || {
        luod.control().sessions().expect("list").is_empty()
    }));
    assert_serving(&luod.socket);
}

/// Replies waiting in an outbox cannot travel in the handover image: before an upgrade luod
/// gives them a second to leave, then closes the connection that does not take them, so its
/// client sees the end of the connection instead of waiting forever for a reply. The upgrade
/// itself and every other client go on.
#[test]
fn an_upgrade_closes_a_connection_whose_replies_cannot_be_delivered() {
    let luod = Luod::start("outbox-upgrade");
    let first = luod.status().pid;
    let greedy = Raw::connect(&luod.socket);
    rustix::net::sockopt::set_socket_timeout(
        &greedy.fd,
        rustix::net::sockopt::Timeout::Send,
        Some(Duration::from_millis(200)),
    )
    .expect("SO_SNDTIMEO");
    let mut sent = 0u64;
    while sent < 5_000 {
        let status = message(Op::Status as u32, sent + 1, &[]);
        if luo_client::transport::send(greedy.fd.as_fd(), &status, &[]).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        common::eventually(Duration::from_secs(5), || luod
            .log_text()
            .contains("pausing it")),
        "luod never paused the client"
    );

    let other = Raw::connect(&luod.socket);
    other.ping();
    luod.control().upgrade(None).expect("upgrade");
    let after = luod.status();
    assert_ne!(after.pid, first, "a new process serves");
    assert!(
        luod.log_text()
            .contains("replies not delivered before the handover"),
        "{}",
        luod.log_text()
    );
    // The other client kept its connection across the upgrade.
    other.ping();

    // The greedy client gets the replies that had left, in order, then the end.
    let mut got = 0u64;
    loop {
        match greedy.recv() {
            Got::Reply { errno: 0, id, .. } => {
                got += 1;
                assert_eq!(id, got);
            }
            Got::Closed => break,
            other => panic!("after {got} replies: {other:?}"),
        }
    }
    assert!(got < sent, "{got} of {sent} replies");
    assert_serving(&luod.socket);
}
