//! The root index is a standard dtb: `dtc -I dtb -O dts` prints a written image.
//!
//! Needs `dtc` (Debian: device-tree-compiler). Without it the test is skipped with a message,
//! unless `LUO_REQUIRE_ALL=1`, which turns the skip into a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

#[test]
fn dtc_prints_the_image() {
    let dtc = Command::new("dtc").arg("--version").output();
    if dtc.is_err() {
        let why = "dtc is not installed (Debian package device-tree-compiler)";
        if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("LUO_REQUIRE_ALL=1 and {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let bytes = common::sample();
    let path = std::env::temp_dir().join(format!("luo-abi-dtc-{}.img", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new("dtc")
        .args(["-q", "-I", "dtb", "-O", "dts"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let dts = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "dtc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dts.contains("compatible = \"luod-image-v1\";"), "{dts}");
    assert!(dts.contains("compatible = \"luod-sessions-v1\";"), "{dts}");
    assert!(dts.contains("memfd-v1 {"), "{dts}");
    assert!(dts.contains("writer = \"luod 0.1.0\";"), "{dts}");
}
