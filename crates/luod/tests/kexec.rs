//! The kernel backend's edges that a host without `/dev/liveupdate` can check: no backend, a
//! device that cannot be opened, a file that is not a live update device, bad requests. The
//! backend itself, against the kernel's real LUO and across real kexecs, is checked by the VM
//! harness's scenarios `luod-kexec` and `luod-kexec-corrupt` (`docs/vm.md`).

#![allow(clippy::unwrap_used)] // Test helpers: a failure is a test failure.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Luod, memfd_with};
use luo_abi::Errno;
use luo_abi::wire::{self, Op};
use luo_client::KexecOptions;

fn check() -> KexecOptions {
    KexecOptions {
        check: true,
        ..KexecOptions::default()
    }
}

#[test]
fn without_a_backend_kexec_is_refused_and_nothing_changes() {
    let luod = Luod::start_with("kexec-none", &["--liveupdate", "none"]);
    let dev = luod.device();
    let s = dev.create_session("kept").unwrap();
    let fd = memfd_with("kept", b"still here");
    s.preserve(&fd, 7).unwrap();
    let control = luod.control();
    for options in [
        check(),
        KexecOptions::default(),
        KexecOptions {
            no_exec: true,
            ..KexecOptions::default()
        },
    ] {
        let e = control.kexec(options).unwrap_err();
        assert_eq!(e.errno, Errno::ENODEV, "{e}");
        assert!(
            e.message
                .as_deref()
                .unwrap_or("")
                .contains("no kernel backend"),
            "{e}"
        );
    }
    // The session is as it was, and not frozen: another file still goes in.
    let other = memfd_with("more", b"x");
    s.preserve(&other, 8).unwrap();
    let list = control.sessions().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].files), ("kept", 2));
}

#[test]
fn bad_kexec_flags_are_einval() {
    let luod = Luod::start_with("kexec-flags", &["--liveupdate", "none"]);
    let raw = common::Raw::connect(&luod.socket);
    for (flags, reserved) in [
        (1u32 << 7, 0u32),
        (0, 1),
        (wire::KEXEC_CANCEL | wire::KEXEC_NO_EXEC, 0),
        (wire::KEXEC_CANCEL | wire::KEXEC_CONVERT, 0),
    ] {
        let mut arg = flags.to_le_bytes().to_vec();
        arg.extend_from_slice(&reserved.to_le_bytes());
        let got = raw.request(Op::Kexec as u32, 5, &arg, &[]);
        assert_eq!(
            got.errno(),
            Errno::EINVAL.0,
            "flags {flags:#x} reserved {reserved}"
        );
    }
    let got = raw.request(Op::Kexec as u32, 6, &[0; 4], &[]);
    assert_eq!(got.errno(), Errno::EINVAL.0, "a short argument");
}

/// luod started with `--liveupdate PATH`: its exit status and what it said.
fn start_failing(path: &str) -> (Option<i32>, String) {
    let dir = common::temp_dir("kexec-dev");
    let mut child = common::spawn(
        Command::new(common::luod_binary())
            .arg("--socket")
            .arg(dir.join("luod.sock"))
            .args(["--liveupdate", path])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("luod --liveupdate {path} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (status.code(), err)
}

#[test]
fn a_missing_device_named_on_the_command_line_stops_luod_with_its_name() {
    let (code, err) = start_failing("/nonexistent/liveupdate");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/liveupdate"), "{err}");
}

#[test]
fn a_file_that_is_not_a_live_update_device_is_refused() {
    // /dev/null opens, but answers no LUO ioctl: luod must not start as if there were no
    // state, since a real device that fails would mean sessions left behind.
    let (code, err) = start_failing("/dev/null");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("state session"), "{err}");
}
