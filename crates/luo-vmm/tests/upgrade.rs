//! A real KVM guest across VMM upgrades through a real luod: the guest counts in its RAM and
//! reports every step; each upgrade must continue exactly where the guest stopped — no step
//! lost, none repeated, the counter in RAM the same — also across an upgrade of luod itself.
//!
//! Needs `/dev/kvm` (and root for the huge page variant); otherwise the tests say why and skip,
//! and fail under `LUO_REQUIRE_ALL=1`.

mod common;

use std::time::Duration;

use common::{
    Setup, check_report, field, kvm_usable, luo_size, skip_kernel_lacks, with_huge_pages,
};

fn upgrade_many(test: &str, mem: &str, pages: &str) {
    if !kvm_usable(test) {
        return;
    }
    let mut setup = Setup::new(test);
    setup.boot(mem, pages);
    let first = setup.status();
    let mut last = field(&first, "last");
    for n in 1..=4 {
        if n == 3 {
            // luod itself is replaced while the guest runs.
            let c = luo_client::Control::connect_at(&setup.dir.join("luod.sock")).expect("control");
            c.upgrade(None).expect("upgrade luod");
            setup.luod_pids.push(c.status().expect("status").pid);
        }
        let out = setup.vmm(&["upgrade"]);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "upgrade {n}: {report} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            setup.log()
        );
        check_report(&report, n);
        assert!(
            field(&report, "last_before") >= last,
            "progress went backwards"
        );
        last = field(&report, "first_after");
        assert_eq!(field(&report, "mem"), luo_size(mem));
    }
    std::thread::sleep(Duration::from_millis(100));
    let end = setup.status();
    assert!(
        field(&end, "steps") > last,
        "the guest keeps running: {end}"
    );
    assert_eq!(field(&end, "anomalies"), 0, "{end}");
    assert_eq!(field(&end, "upgrades"), 4, "{end}");
}

#[test]
fn guest_survives_vmm_and_luod_upgrades_4k() {
    upgrade_many("guest_survives_vmm_and_luod_upgrades_4k", "64M", "4k");
}

#[test]
fn guest_survives_vmm_upgrades_2m() {
    const TEST: &str = "guest_survives_vmm_upgrades_2m";
    with_huge_pages(TEST, 2048, 32, || upgrade_many(TEST, "64M", "2m"));
}

/// A 1 GiB guest on one 1 GiB page.
#[test]
fn guest_survives_vmm_upgrades_1g() {
    const TEST: &str = "guest_survives_vmm_upgrades_1g";
    with_huge_pages(TEST, 1 << 20, 1, || upgrade_many(TEST, "1G", "1g"));
}

/// A guest whose RAM is a real KVM guest_memfd runs, but cannot be upgraded: the kernel binds
/// the guest_memfd to its VM. The upgrade is refused with the reason and the guest keeps
/// running, untouched.
#[test]
fn guest_memfd_guest_runs_and_refuses_upgrade() {
    const TEST: &str = "guest_memfd_guest_runs_and_refuses_upgrade";
    if !kvm_usable(TEST) {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    if !kvm.check_extension(kvm_ioctls::Cap::GuestMemfd) {
        return skip_kernel_lacks(TEST, "KVM has no KVM_CAP_GUEST_MEMFD");
    }
    let vm = kvm.create_vm().expect("vm");
    if vm.check_extension_raw(244) & 1 == 0 {
        return skip_kernel_lacks(
            TEST,
            "KVM's guest_memfd has no mmap flag (KVM_CAP_GUEST_MEMFD_FLAGS)",
        );
    }
    drop(vm);
    let mut setup = Setup::new("gmem");
    setup.boot_with(&["--mem", "16M", "--guest-memfd"]);
    let before = setup.status();
    assert!(before.contains("backing=GuestMemfd"), "{before}");
    let out = setup.vmm(&["upgrade"]);
    assert!(!out.status.success(), "upgrade must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest_memfd"), "{err}");
    std::thread::sleep(Duration::from_millis(50));
    let after = setup.status();
    assert_eq!(field(&after, "pid"), field(&before, "pid"));
    assert!(
        field(&after, "steps") > field(&before, "steps"),
        "still running: {after}"
    );
    assert_eq!(field(&after, "anomalies"), 0);
}
