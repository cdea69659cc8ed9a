//! What the preload library costs: PRESERVE_FD + RETRIEVE_FD pairs per second through
//! `libluo_preload.so` (a C program, `tests/c/luo_bench.c`, issuing the ioctls and timing
//! itself) against the same pairs through `luo-client` (native protocol, this process), on
//! one fresh luod.
//!
//! ```text
//! cargo run --release -p luo-preload --example bench_preload
//! ```
//!
//! Prints `preload_ioctl_per_s`, `native_ioctl_per_s` (pairs per second, best of the rounds),
//! `preload_vs_native_ratio` (native / preload of those: 1.10 means the library costs 10%)
//! and `preload_vs_native_ratio_median` (the median of the rounds' own ratios, which is less
//! sensitive to one lucky round on a busy machine). Each
//! round gives both paths a fresh incoming session (handed off by this process) and the same
//! batches: an outgoing session and 250 memfds are made untimed, then 250 pairs are timed,
//! each preserving the next memfd and retrieving the incoming file. The two paths alternate,
//! so drift on the machine hits both; everything runs pinned to one CPU (`LUO_BENCH_CPU`,
//! default 0), so a round trip costs the same context switches on both paths. A failed call
//! anywhere exits non-zero instead of printing a figure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Flavor, Luod, build, run};
use luo_client::Device;

const ROUNDS: usize = 9;
const BATCHES: usize = 20;
const PER_BATCH: usize = 250;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn memfd() -> Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        "bench",
        rustix::fs::MemfdFlags::CLOEXEC,
    )?)
}

/// Hands off a session `name` holding one memfd under token 1: an incoming session to
/// retrieve from.
fn incoming(socket: &Path, name: &str) -> Result<()> {
    let device = Device::open_at(socket)?;
    let session = device.create_session(name)?;
    session.preserve(memfd()?, 1)?;
    session.handoff()?;
    Ok(())
}

/// The pairs through luo-client: (pairs, timed seconds).
fn native(socket: &Path, incoming: &str) -> Result<(usize, Duration)> {
    let device = Device::open_at(socket)?;
    let source = device.retrieve_session(incoming)?;
    let mut timed = Duration::ZERO;
    for b in 0..BATCHES {
        let out = device.create_session(&format!("native-out-{b}"))?;
        let memfds = (0..PER_BATCH)
            .map(|_| memfd())
            .collect::<Result<Vec<_>>>()?;
        let start = Instant::now();
        for (i, fd) in memfds.iter().enumerate() {
            out.preserve(fd, i as u64)?;
            drop(source.retrieve(1)?);
        }
        timed += start.elapsed();
    }
    Ok((BATCHES * PER_BATCH, timed))
}

/// The pairs through the library: the C program's own count and timing.
fn preloaded(program: &Path, socket: &Path, incoming: &str) -> Result<(usize, Duration)> {
    let out = run(
        program,
        &[incoming, &BATCHES.to_string(), &PER_BATCH.to_string()],
        socket,
        true,
    );
    if !out.status.success() {
        return Err(format!("luo_bench failed: {}{}", out.stdout, out.stderr).into());
    }
    let field = |key: &str| -> Option<&str> {
        out.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
    };
    let pairs: usize = field("pairs=").ok_or("no pairs=")?.parse()?;
    let seconds: f64 = field("seconds=").ok_or("no seconds=")?.parse()?;
    Ok((pairs, Duration::from_secs_f64(seconds)))
}

fn per_s((pairs, d): (usize, Duration)) -> f64 {
    pairs as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench_preload: {e}");
        std::process::exit(1);
    }
}

/// Pins this process (and so luod and the C program, which inherit it) to `cpu`: every round
/// trip is then two context switches on one CPU, the same for both paths, instead of
/// cross-CPU wake-ups whose cost varies with what else runs on the machine.
fn pin(cpu: usize) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

fn bench() -> Result<()> {
    let program = build("luo_bench", Flavor::O2);
    let cpu = std::env::var("LUO_BENCH_CPU")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    pin(cpu)?;
    eprintln!("luod, the C program and the native client all run on CPU {cpu} (LUO_BENCH_CPU)");
    let luod = Luod::start("bench");
    let (mut best_native, mut best_preload) = (0f64, 0f64);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (c_in, native_in) = (
            format!("bench-in-c-{round}"),
            format!("bench-in-native-{round}"),
        );
        incoming(&luod.socket, &c_in)?;
        incoming(&luod.socket, &native_in)?;
        let p = per_s(preloaded(&program, &luod.socket, &c_in)?);
        let n = per_s(native(&luod.socket, &native_in)?);
        eprintln!("round {round}: preload {p:.0} pairs/s, native {n:.0} pairs/s");
        best_preload = best_preload.max(p);
        best_native = best_native.max(n);
        ratios.push(n / p);
    }
    ratios.sort_by(f64::total_cmp);
    println!("preload_ioctl_per_s={best_preload:.0}");
    println!("native_ioctl_per_s={best_native:.0}");
    println!("preload_vs_native_ratio={:.3}", best_native / best_preload);
    println!(
        "preload_vs_native_ratio_median={:.3}",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
