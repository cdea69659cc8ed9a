//! `luo-bench kexec`: luod's share of a real kernel live update, measured in the VM harness.
//!
//! Runs `scripts/vm run kexec-bench` (five boots of the test kernel, `docs/vm.md`) and reads
//! the `LUO-BENCH` lines its stages printed on the console (`crates/luo-vmtest`,
//! `kexec_bench.rs`). For each shape (one session of one 1 GiB memfd; 2,000 sessions plus one
//! session of 500 files) it has, measured within one boot each:
//! - `luod_forward`: `luoctl kexec`'s work before the kernel's reboot, luod forwarding every
//!   session into kernel sessions;
//! - `direct_preserve`: the same files preserved into kernel sessions by a program that uses
//!   `/dev/liveupdate` itself (the kernel's own work, which luod does at the forward);
//! - `luod_first_retrieve`: from the moment before luod is started on the new kernel to the
//!   workload's first file retrieved through it (luod restores everything before it serves);
//! - `direct_first_retrieve`: from the moment before `/dev/liveupdate` is opened to the first
//!   file retrieved from it.
//!
//! luod's share is `(luod_forward - direct_preserve) + (luod_first_retrieve -
//! direct_first_retrieve)`, printed as `kexec_luod_overhead_ms_<shape>`, with every part
//! (`kexec_<shape>_<part>_ms`). The kernel's boot is in none of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::{Result, check, put};

/// The shapes the scenario measures, by their key prefix, with the name the figures use.
const SHAPES: [(&str, &str); 2] = [("large_1024m", "1s_1g"), ("s2000", "2000s")];

/// The parts each shape must have.
const PARTS: [&str; 6] = [
    "luod_preserve",
    "luod_forward",
    "direct_preserve",
    "luod_first_retrieve",
    "luod_all_retrieved",
    "direct_first_retrieve",
];

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/vm")
}

fn console_log() -> PathBuf {
    let cache = std::env::var_os("LUO_VM_CACHE").unwrap_or_else(|| "/var/cache/luod-vm".into());
    PathBuf::from(cache).join("work/kexec-bench.console.log")
}

/// The `LUO-BENCH key=value` lines of a console log.
pub fn parse(console: &str) -> BTreeMap<String, f64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LUO-BENCH "))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The figures of one shape, or what is missing.
pub fn figures(found: &BTreeMap<String, f64>, prefix: &str) -> Result<BTreeMap<&'static str, f64>> {
    let mut out = BTreeMap::new();
    for part in PARTS.into_iter().chain(["direct_all_retrieved"]) {
        let key = format!("{prefix}_{part}_ms");
        let v = *found
            .get(&key)
            .ok_or_else(|| format!("the console has no LUO-BENCH {key}"))?;
        out.insert(part, v);
    }
    let overhead = (out["luod_forward"] - out["direct_preserve"])
        + (out["luod_first_retrieve"] - out["direct_first_retrieve"]);
    out.insert("overhead", overhead);
    Ok(out)
}

/// Runs the scenario and prints the figures.
pub fn run() -> Result<()> {
    let log = console_log();
    let _ = std::fs::remove_file(&log);
    eprintln!("kexec: scripts/vm run kexec-bench (five boots; the kernel must be built)");
    let status = Command::new("bash")
        .arg(script())
        .args(["run", "kexec-bench"])
        .env("LUO_VM_BUILD", "never")
        .status()?;
    check(status.success(), || {
        format!(
            "scripts/vm run kexec-bench: {status} (the console log: {})",
            log.display()
        )
    })?;
    let found = parse(&std::fs::read_to_string(&log)?);
    for (prefix, name) in SHAPES {
        let f = figures(&found, prefix)?;
        for (part, v) in &f {
            if *part != "overhead" {
                put(&format!("kexec_{name}_{part}_ms"), format!("{v:.1}"));
            }
        }
        put(
            &format!("kexec_luod_overhead_ms_{name}"),
            format!("{:.1}", f["overhead"]),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes() {
        let console = "noise\nLUO-BENCH s2000_luod_preserve_ms=10.5\r\n\
            LUO-BENCH s2000_luod_forward_ms=300\nLUO-BENCH s2000_direct_preserve_ms=100\n\
            LUO-BENCH s2000_luod_first_retrieve_ms=800\nLUO-BENCH s2000_luod_all_retrieved_ms=900\n\
            LUO-BENCH s2000_direct_first_retrieve_ms=90\nLUO-BENCH s2000_direct_all_retrieved_ms=95\n\
            LUO-BENCH broken=x\n";
        let found = parse(console);
        assert_eq!(found.len(), 7);
        let f = figures(&found, "s2000").unwrap();
        assert!((f["overhead"] - 910.0).abs() < 1e-9);
        assert!(figures(&found, "large_1024m").is_err());
    }
}
