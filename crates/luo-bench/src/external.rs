//! Benchmarks that live beside the code they measure, run from here so every figure has one
//! entry point: `preload` (the LD_PRELOAD library against luo-client, in luo-preload) and `vmm`
//! (VMM upgrades under a running KVM guest, and attribute conversions, in luo-vmm).
//!
//! Each is built in release mode with cargo, then run with this process's standard output, so
//! its `key=value` lines are printed as they come.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo_build(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--release", "--quiet"])
        .args(args)
        .status()?;
    crate::check(status.success(), || {
        format!("cargo build {args:?} failed: {status}")
    })
}

fn run(binary: PathBuf, args: &[&str]) -> Result<()> {
    let status = Command::new(&binary).args(args).status()?;
    crate::check(status.success(), || {
        format!("{} failed: {status}", binary.display())
    })
}

fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .ok_or("No directory for luo-bench")?
        .to_path_buf())
}

/// `preload`: PRESERVE_FD + RETRIEVE_FD pairs per second through the library and natively.
pub fn preload() -> Result<()> {
    cargo_build(&[
        "-p",
        "luod",
        "-p",
        "luoctl",
        "-p",
        "luo-preload",
        "--example",
        "bench_preload",
    ])?;
    run(release_dir()?.join("examples/bench_preload"), &[])
}

/// `vmm`: VMM upgrade blackouts and attribute conversion rates.
pub fn vmm(extra: &[String]) -> Result<()> {
    cargo_build(&["-p", "luod", "-p", "luo-vmm"])?;
    let mut args = vec!["bench"];
    args.extend(extra.iter().map(String::as_str));
    run(release_dir()?.join("luo-vmm"), &args)
}
