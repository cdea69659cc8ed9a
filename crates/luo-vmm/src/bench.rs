//! `luo-vmm bench`: the numbers behind `docs/PERFORMANCE.md`.
//!
//! - VMM upgrade blackouts as the guest sees them (last step under the old VMM to the first
//!   under the new): a 1 GiB guest on one 1 GiB page, the same on 4 KiB pages, and a 64 MiB
//!   guest, 20 upgrades each, through a luod this command starts on a private socket. The
//!   baseline, measured in the same run, is the guest's ordinary interval between two steps.
//! - Random shared/private conversions on a sparse 64 GiB guest memory object, and the memory
//!   one attribute range costs.
//!
//! Output: `key=value` lines on stdout; progress on stderr.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use luo_guestmem::{Attr, AttrMap, GuestMemory, PageSize};

use crate::alloc_count;

/// Benchmark arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The luod binary (default: `luod` beside this binary; `cargo build --release -p luod`).
    #[arg(long)]
    luod: Option<PathBuf>,
    /// Upgrades per configuration.
    #[arg(long, default_value_t = 20)]
    upgrades: usize,
    /// Random conversions on the 64 GiB object.
    #[arg(long, default_value_t = 20_000)]
    conversions: usize,
    /// Only these parts: vmm, convert (default both).
    #[arg(long)]
    only: Option<String>,
}

fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
}

/// Grows the pool of `kib`-KiB pages by `n` and restores it on drop.
struct Pool {
    nr: PathBuf,
    prev: u64,
}

impl Pool {
    fn grow(kib: u64, n: u64) -> Result<Pool, String> {
        let dir = PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"));
        let read = |f: &str| -> Result<u64, String> {
            std::fs::read_to_string(dir.join(f))
                .map_err(|e| format!("{f}: {e}"))?
                .trim()
                .parse()
                .map_err(|e| format!("{f}: {e}"))
        };
        let prev = read("nr_hugepages")?;
        let free = read("free_hugepages")?;
        let nr = dir.join("nr_hugepages");
        std::fs::write(&nr, format!("{}", prev + n)).map_err(|e| format!("needs root: {e}"))?;
        let pool = Pool { nr, prev };
        if read("free_hugepages")? < free + n {
            let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
            let _ = std::fs::write(&pool.nr, format!("{}", prev));
            let _ = std::fs::write(&pool.nr, format!("{}", prev + n));
            if read("free_hugepages")? < free + n {
                return Err("not enough contiguous free memory".into());
            }
        }
        Ok(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.nr, format!("{}", self.prev));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn field(s: &str, key: &str) -> Option<u64> {
    luo_vmm::handoff::field(s, key)
}

/// What one configuration measured.
struct Measured {
    /// Blackouts, sorted, in ms.
    ms: Vec<f64>,
    /// The guest's ordinary interval between steps, µs.
    step_us: f64,
    /// A cold start: from starting the VMM process to the guest's first step, ms (the guest
    /// starts over: what a restart without luod would cost at best).
    cold_ms: f64,
}

/// One configuration: boots a VMM, upgrades it `n` times.
fn upgrades(
    dir: &Path,
    luod_socket: &Path,
    tag: &str,
    mem: &str,
    pages: &str,
    n: usize,
) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let t_spawn = Instant::now();
    let control = dir.join(format!("{tag}.sock"));
    let log = std::fs::File::create(dir.join(format!("{tag}.log")))?;
    let mut first: Child = Command::new(&exe)
        .args(["run", "--mem", mem, "--pages", pages, "--session", tag])
        .arg("--control")
        .arg(&control)
        .env("LUOD_SOCKET", luod_socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !control.exists() {
        if let Some(st) = first.try_wait()? {
            bail!(
                "{tag}: VMM exited ({st}): {}",
                std::fs::read_to_string(dir.join(format!("{tag}.log"))).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{tag}: VMM did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cold_ms = loop {
        let s = luo_vmm::control::call(&control, "status")?;
        if field(&s, "steps").unwrap_or(0) > 0 {
            break t_spawn.elapsed().as_secs_f64() * 1e3;
        }
        if Instant::now() > deadline {
            bail!("{tag}: the guest did not start");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(Duration::from_millis(300));
    let s0 = luo_vmm::control::call(&control, "status")?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let s1 = luo_vmm::control::call(&control, "status")?;
    let steps = field(&s1, "steps").unwrap_or(0) - field(&s0, "steps").unwrap_or(0);
    let step_us = t0.elapsed().as_secs_f64() * 1e6 / steps.max(1) as f64;
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let r = luo_vmm::control::call(&control, "upgrade")?;
        if !r.starts_with("RESUMED") {
            bail!("{tag}: upgrade {i} failed: {r}");
        }
        if field(&r, "lost") != Some(0) || field(&r, "repeated") != Some(0) {
            bail!("{tag}: upgrade {i} lost or repeated a guest step: {r}");
        }
        let b = field(&r, "blackout_ns").unwrap_or(0) as f64 / 1e6;
        eprintln!(
            "  {tag} upgrade {:2}: blackout {b:.3} ms (notice {:.3}, save {:.3}, handoff {:.3}, go {:.3}, retrieve {:.3}, map {:.3}, restore {:.3}, first {:.3})",
            i + 1,
            field(&r, "notice_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "save_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "handoff_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "pause_to_go_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "go_to_retrieved_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "attach_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "restore_ns").unwrap_or(0) as f64 / 1e6,
            field(&r, "restored_to_first_ns").unwrap_or(0) as f64 / 1e6,
        );
        ms.push(b);
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = luo_vmm::control::call(&control, "stop")?;
    if field(&end, "anomalies") != Some(0) {
        bail!("{tag}: the guest saw out-of-order steps: {end}");
    }
    let _ = first.wait();
    // Wait for the last VMM (an orphan) to exit so its memory returns to the pool.
    if let Some(pid) = field(&end, "pid") {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(Measured {
        ms,
        step_us,
        cold_ms,
    })
}

fn vmm(args: &BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let luod = args
        .luod
        .clone()
        .unwrap_or_else(|| exe.with_file_name("luod"));
    if !luod.exists() {
        bail!(
            "no luod at {} (build it: cargo build --release -p luod)",
            luod.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("luo-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("luod.sock");
    let mut daemon = Command::new(&luod)
        .arg("--socket")
        .arg(&socket)
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("luod.log"))?)
        .spawn()
        .context("start luod")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while luo_client::Control::connect_at(&socket)
        .and_then(|c| c.ping())
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("luod did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let result = (|| -> anyhow::Result<()> {
        let n = args.upgrades;
        let pct = |ms: &[f64], p: f64| format!("{:.3}", percentile(ms, p));
        let mut p50_1g = None;
        match Pool::grow(1 << 20, 1) {
            Ok(_pool) => {
                eprintln!("vmm: 1 GiB guest on one 1 GiB page, {n} upgrades");
                let m = upgrades(&dir, &socket, "vm-1g-huge", "1G", "1g", n)?;
                let p50 = percentile(&m.ms, 50.0);
                out("vmm_blackout_1g_hugetlb_p50_ms", pct(&m.ms, 50.0));
                out("vmm_blackout_1g_hugetlb_p99_ms", pct(&m.ms, 99.0));
                out("vmm_blackout_1g_hugetlb_max_ms", pct(&m.ms, 100.0));
                out("vmm_guest_step_us", format!("{:.1}", m.step_us));
                out("vmm_cold_start_1g_hugetlb_ms", format!("{:.1}", m.cold_ms));
                out(
                    "vmm_cold_start_over_upgrade_1g_hugetlb",
                    format!("{:.0}", m.cold_ms / p50),
                );
                p50_1g = Some(p50);
            }
            Err(why) => {
                eprintln!("vmm: skipping the 1 GiB page guest: cannot reserve a 1 GiB page ({why})")
            }
        }
        eprintln!("vmm: 1 GiB guest on 4 KiB pages, {n} upgrades");
        let m = upgrades(&dir, &socket, "vm-1g-4k", "1G", "4k", n)?;
        out("vmm_blackout_1g_4k_p50_ms", pct(&m.ms, 50.0));
        out("vmm_blackout_1g_4k_p99_ms", pct(&m.ms, 99.0));
        eprintln!("vmm: 64 MiB guest on 4 KiB pages, {n} upgrades");
        let m = upgrades(&dir, &socket, "vm-64m", "64M", "4k", n)?;
        let p50_64m = percentile(&m.ms, 50.0);
        out("vmm_blackout_64m_p50_ms", pct(&m.ms, 50.0));
        out("vmm_blackout_64m_p99_ms", pct(&m.ms, 99.0));
        if let Some(p) = p50_1g {
            out(
                "vmm_blackout_1g_hugetlb_over_64m",
                format!("{:.2}", p / p50_64m),
            );
        } else {
            out("vmm_guest_step_us", format!("{:.1}", m.step_us));
        }
        Ok(())
    })();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    );
    let _ = daemon.wait();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    result
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn convert(args: &BenchArgs) -> anyhow::Result<()> {
    const SIZE: u64 = 64 << 30;
    const UNIT: u64 = 4096;
    let mut mem = GuestMemory::create(SIZE, PageSize::Base4K).context("64 GiB sparse object")?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let units = SIZE / UNIT;
    let mut pages = 0u64;
    let t = Instant::now();
    for _ in 0..args.conversions {
        let len = 1 + rng.next() % 512;
        let start = rng.next() % (units - len);
        let attr = if rng.next() & 1 == 0 {
            Attr::Private
        } else {
            Attr::Shared
        };
        mem.convert(start * UNIT..(start + len) * UNIT, attr)?;
        pages += len;
    }
    let secs = t.elapsed().as_secs_f64();
    out("convert_pages_per_s", format!("{:.0}", pages as f64 / secs));
    out(
        "convert_ops_per_s",
        format!("{:.0}", args.conversions as f64 / secs),
    );
    out("convert_ranges_at_end", mem.attrs().len());

    // Heap bytes per attribute range: an interval map of 100,000 ranges.
    let n = 100_000u64;
    let before = alloc_count::live_bytes();
    let mut map = AttrMap::new();
    for i in 0..n {
        map.set(i * 2 * UNIT..(i * 2 + 1) * UNIT, Attr::Private);
    }
    let bytes = alloc_count::live_bytes().saturating_sub(before);
    out(
        "attr_bytes_per_range",
        format!("{:.1}", bytes as f64 / n as f64),
    );
    out(
        "attr_descriptor_bytes_per_range",
        size_of::<luo_guestmem::descriptor::RangeEntry>(),
    );
    drop(map);
    Ok(())
}

/// Runs the benchmarks.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let only = args.only.clone().unwrap_or_default();
    if only.is_empty() || only == "convert" {
        convert(&args)?;
    }
    if only.is_empty() || only == "vmm" {
        vmm(&args)?;
    }
    Ok(())
}
