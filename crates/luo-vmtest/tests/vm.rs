//! The VM harness's scenarios as tests: each runs `scripts/vm run <scenario>` (docs/vm.md),
//! which boots the test kernel under QEMU and follows the scenario's stages across real
//! kexecs.
//!
//! The kernel is built once and cached outside the clone; building it takes tens of minutes,
//! so these tests never build it (`LUO_VM_BUILD=never`): without a cached kernel they say why
//! they skip, and fail under `LUO_REQUIRE_ALL=1`. `scripts/vm kernel` builds it.
//!
//! The kernel's selftests run in scenario `oracle`, whose test is
//! `crates/luo-preload/tests/oracle.rs` (it compares every result with luod's); the
//! `selftests` scenario is the same steps alone, for a run by hand.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/vm")
}

fn run(scenario: &str) {
    let status = Command::new("bash")
        .arg(script())
        .args(["run", scenario])
        .env("LUO_VM_BUILD", "never")
        .status()
        .expect("run scripts/vm");
    match status.code() {
        Some(0) => {}
        // scripts/vm says why on stderr; under LUO_REQUIRE_ALL=1 it exits 1 instead.
        Some(77) => eprintln!("SKIP vm scenario {scenario}: see the reason above"),
        _ => panic!(
            "vm scenario {scenario} failed ({status}): the console log is in the cache's work directory"
        ),
    }
}

#[test]
fn vm_memfd_kexec() {
    run("memfd-kexec");
}

#[test]
fn vm_luod_kexec() {
    run("luod-kexec");
}

#[test]
fn vm_luod_kexec_corrupt() {
    run("luod-kexec-corrupt");
}

#[test]
fn vm_luod_kexec_stress() {
    run("luod-kexec-stress");
}

#[test]
fn vm_systemd() {
    run("systemd");
}
