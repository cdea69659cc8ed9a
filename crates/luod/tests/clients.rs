//! Clients as processes: the exclusive device of each uid, isolation between uids, a session
//! kept alive by a child that inherited its descriptor, and the close-then-reuse races the
//! kernel's synchronous `close()` rules out.
//!
//! Every client here is a real process: this test binary re-executed in a role
//! ([`common::role_command`]), talking to the test over its stdin and stdout.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::{Luod, Proc, STEP, child_socket, errno, hear, memfd_with, role_command, say};
use luo_abi::Errno;
use luo_client::{Control, Device};

/// The uid the isolation test switches a child to (`nobody`).
const OTHER_UID: u32 = 65534;

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    common::child_entry(|role| match role {
        "hold-device" => hold_device(),
        "other-uid" => other_uid(),
        "session-parent" => session_parent(),
        "session-heir" => session_heir(),
        other => panic!("unknown role {other}"),
    });
}

fn role(test_role: &str, socket: &std::path::Path) -> std::process::Command {
    role_command("child_role", test_role, socket)
}

/// Opens the device and holds it until told to go.
fn hold_device() {
    let dev = Device::open_at(&child_socket()).expect("open device");
    say("OPEN");
    let _ = hear();
    drop(dev);
}

#[test]
fn device_is_exclusive_per_uid_and_free_again_once_its_holder_exits() {
    let luod = Luod::start("exclusive");
    let mut holder = Proc::spawn("holder", role("hold-device", &luod.socket));
    holder.expect("OPEN");

    // Another process of the same uid: EBUSY, as long as the holder keeps it.
    assert_eq!(errno(Device::open_at(&luod.socket)), Errno::EBUSY);
    assert_eq!(errno(Device::open_at(&luod.socket)), Errno::EBUSY);

    // The holder exits; the very next open works (luod processes the hang-up it has not yet
    // seen before it would answer EBUSY).
    holder.close_stdin();
    holder.wait_ok(STEP);
    // From here on this test relies on its own closes being seen at once.
    let _no_forks = common::no_forks();
    let dev = Device::open_at(&luod.socket).expect("open right after the holder exited");
    assert_eq!(errno(Device::open_at(&luod.socket)), Errno::EBUSY);

    // Sessions outlive the device descriptor, as in the kernel.
    let s = dev.create_session("outlives").expect("create");
    drop(dev);
    assert_eq!(s.name().expect("name"), "outlives");
    let dev = Device::open_at(&luod.socket).expect("reopen");
    assert_eq!(errno(dev.create_session("outlives")), Errno::EEXIST);
}

#[test]
fn closing_the_device_and_reopening_at_once_never_sees_ebusy() {
    let luod = Luod::start("reopen-race");
    let _no_forks = common::no_forks();
    for i in 0..300 {
        let dev = Device::open_at(&luod.socket)
            .unwrap_or_else(|e| panic!("round {i}: open after close: {e}"));
        drop(dev);
    }
}

#[test]
fn closing_a_session_and_reusing_its_name_and_file_at_once_never_sees_eexist_or_ebusy() {
    let luod = Luod::start("recreate-race");
    let _no_forks = common::no_forks();
    let dev = luod.device();
    let m = memfd_with("same", b"same memfd every round");
    for i in 0..300 {
        let s = dev
            .create_session("race")
            .unwrap_or_else(|e| panic!("round {i}: create after close: {e}"));
        // The same memfd: preserved by the session just closed, so EBUSY unless luod sees
        // that close first.
        s.preserve(&m, 1)
            .unwrap_or_else(|e| panic!("round {i}: preserve after close: {e}"));
        drop(s);
    }
    // The last close is processed too: nothing is left.
    assert!(common::eventually(Duration::from_secs(5), || {
        luod.control().sessions().expect("list").is_empty()
    }));
}

/// Runs as uid 65534 against root's luod.
fn other_uid() {
    let socket = child_socket();
    assert_eq!(rustix::process::getuid().as_raw(), OTHER_UID);
    let ctl = Control::connect_at(&socket).expect("connect");
    // Nothing of root's is visible.
    let mine = ctl.sessions().expect("list");
    assert!(mine.is_empty(), "uid {OTHER_UID} sees {mine:?}");
    // Its own device, although root holds root's.
    let dev = Device::open_at(&socket).expect("own device while root holds root's");
    // Exclusive within the uid.
    assert_eq!(errno(Device::open_at(&socket)), Errno::EBUSY);
    // Root's sessions cannot be retrieved: another namespace.
    assert_eq!(errno(dev.retrieve_session("root-handed")), Errno::ENOENT);
    // Names are per uid: root's outgoing name is free here.
    let same = dev
        .create_session("root-open")
        .expect("same name, other uid");
    let m = memfd_with("nobody", b"nobody's data");
    same.preserve(&m, 1).expect("preserve");
    let handed = dev.create_session("nobody-handed").expect("create");
    handed.preserve(memfd_with("h", b"h"), 1).expect("preserve");
    handed.handoff().expect("handoff");
    let mine = ctl.sessions().expect("list");
    let mut names: Vec<(u32, String)> = mine.iter().map(|s| (s.owner, s.name.clone())).collect();
    names.sort();
    assert_eq!(
        names,
        [
            (OTHER_UID, "nobody-handed".to_owned()),
            (OTHER_UID, "root-open".to_owned())
        ]
    );
    // Administration is root's.
    assert_eq!(errno(ctl.upgrade(None)), Errno::EPERM);
    assert_eq!(errno(ctl.reboot()), Errno::EPERM);
    say("READY");
    let _ = hear();
    drop((same, dev));
}

#[test]
fn uids_are_isolated_and_root_sees_every_namespace() {
    if !common::require_root("uids_are_isolated_and_root_sees_every_namespace") {
        return;
    }
    let luod = Luod::start("uids");
    let dev = luod.device();
    let open = dev.create_session("root-open").expect("create");
    open.preserve(memfd_with("r", b"root"), 1)
        .expect("preserve");
    let handed = dev.create_session("root-handed").expect("create");
    handed
        .preserve(memfd_with("rh", b"rh"), 1)
        .expect("preserve");
    handed.handoff().expect("handoff");

    let mut cmd = role("other-uid", &luod.socket);
    cmd.uid(OTHER_UID).gid(OTHER_UID);
    let mut child = Proc::spawn("uid 65534", cmd);
    child.expect("READY");

    // Root lists both namespaces.
    let all = luod.control().sessions().expect("list");
    let mut names: Vec<(u32, String)> = all.iter().map(|s| (s.owner, s.name.clone())).collect();
    names.sort();
    assert_eq!(
        names,
        [
            (0, "root-handed".to_owned()),
            (0, "root-open".to_owned()),
            (OTHER_UID, "nobody-handed".to_owned()),
            (OTHER_UID, "root-open".to_owned()),
        ]
    );
    // Root's namespace is root's too: the other uid's handed-off session is not retrievable.
    assert_eq!(errno(dev.retrieve_session("nobody-handed")), Errno::ENOENT);
    let mine = dev.retrieve_session("root-handed").expect("root's own");
    mine.finish().expect("finish");

    child.close_stdin();
    child.wait_ok(STEP);
    // The child's outgoing session closed with it; its handed-off one waits for a successor.
    assert!(common::eventually(Duration::from_secs(5), || {
        let list = luod.control().sessions().expect("list");
        !list
            .iter()
            .any(|s| s.owner == OTHER_UID && s.name == "root-open")
            && list
                .iter()
                .any(|s| s.owner == OTHER_UID && s.name == "nobody-handed" && s.incoming)
    }));
}

/// Creates a session, preserves a memfd, starts an heir that inherits the session's
/// descriptor, and exits.
fn session_parent() {
    let socket = child_socket();
    let dev = Device::open_at(&socket).expect("open");
    let s = dev.create_session("kept").expect("create");
    let m = memfd_with("kept", b"kept alive by the heir");
    s.preserve(&m, 1).expect("preserve");
    // Only this descriptor crosses the exec.
    rustix::io::fcntl_setfd(&s, rustix::io::FdFlags::empty()).expect("clear CLOEXEC");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&s));
    let heir = role("session-heir", &socket)
        .env("LUOD_TEST_SESSION_FD", fd.to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn heir");
    say(&format!("HEIR {}", heir.id()));
    // Exit without waiting: the heir is orphaned and keeps the session.
    std::mem::forget(heir);
}

/// Holds the inherited session descriptor until its stdin closes.
fn session_heir() {
    let fd: i32 = std::env::var("LUOD_TEST_SESSION_FD")
        .expect("fd")
        .parse()
        .expect("number");
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("inherited fd");
    assert!(
        link.to_string_lossy().starts_with("socket:["),
        "inherited {link:?}"
    );
    say("HOLDING");
    while hear().is_some() {}
}

#[test]
fn session_survives_its_creator_while_a_child_holds_its_descriptor() {
    let luod = Luod::start("heir");
    let mut parent = Proc::spawn("session parent", role("session-parent", &luod.socket));
    let heir_pid: i32 = parent.expect("HEIR").parse().expect("pid");
    // The heir shares the parent's stdout: it says HOLDING once it runs.
    parent.expect("HOLDING");
    // `wait` only: the heir shares the stdin pipe, which stays open while the parent is gone.
    let status = parent.wait(STEP);
    assert!(status.success(), "parent: {status}; {}", parent.stderr());

    // The creator is gone; its session (and the memfd) are still there, outgoing.
    let list = luod.control().sessions().expect("list");
    let kept = list
        .iter()
        .find(|s| s.name == "kept")
        .expect("session kept");
    assert!(!kept.incoming);
    assert_eq!(kept.files, 1);
    // Held by another connection: the name is still taken.
    assert_eq!(errno(luod.device().create_session("kept")), Errno::EEXIST);

    // The heir exits: the last descriptor closes, the outgoing session is unpreserved.
    parent.close_stdin();
    assert!(
        common::eventually(STEP, || !std::path::Path::new(&format!("/proc/{heir_pid}"))
            .exists()
            || std::fs::read_to_string(format!("/proc/{heir_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z"))),
        "heir did not exit"
    );
    assert!(common::eventually(Duration::from_secs(5), || {
        luod.control().sessions().expect("list").is_empty()
    }));
    let status = luod.status();
    assert_eq!((status.files, status.bytes), (0, 0));
}
