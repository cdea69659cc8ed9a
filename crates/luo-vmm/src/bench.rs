//! `luo-vmm bench`: the numbers behind `docs/PERFORMANCE.md`.
//!
//! - VMM upgrade blackouts as the guest sees them (last step under the old VMM to the first
//!   under the new): a 1 GiB guest on one 1 GiB page, the same on 4 KiB pages, and a 64 MiB
//!   guest, 20 upgrades each, through a luod this command starts on a private socket. The
//!   baseline, measured in the same run, is the guest's ordinary interval between two steps.
//! - The live migrate of a 1 GiB guest whose RAM is full of data (`--only migrate`): 4 KiB
//!   pages onto one 1 GiB page (2 MiB pages if no 1 GiB page can be reserved, and it says so)
//!   and back, 10 times each way: the blackout the guest sees, the whole migrate, the pre-copy
//!   rounds. Baselines in the same run: the guest's ordinary step, and upgrades of the same
//!   guest.
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
    /// Live migrates of the 1 GiB guest, each way.
    #[arg(long, default_value_t = 10)]
    migrations: usize,
    /// Random conversions on the 64 GiB object.
    #[arg(long, default_value_t = 20_000)]
    conversions: usize,
    /// Only this part: vmm, migrate or convert (default all three).
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

/// A VMM this benchmark started, and the time from its start to the guest's first step.
struct Booted {
    first: Child,
    control: PathBuf,
    cold_ms: f64,
}

/// Boots a VMM of `mem` bytes on `pages` pages; returns once the guest has made its first step.
fn boot(
    dir: &Path,
    luod_socket: &Path,
    tag: &str,
    mem: &str,
    pages: &str,
) -> anyhow::Result<Booted> {
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
    Ok(Booted {
        first,
        control,
        cold_ms,
    })
}

/// Stops the VMM at `control` and waits until its process (an orphan, after upgrades) is gone,
/// so that its memory returns to the pool. Returns its last status.
fn stop(control: &Path, mut first: Child) -> anyhow::Result<String> {
    let end = luo_vmm::control::call(control, "stop")?;
    let _ = first.wait();
    if let Some(pid) = field(&end, "pid") {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(end)
}

/// The guest's ordinary interval between two steps, µs, over half a second.
fn step_us(control: &Path) -> anyhow::Result<f64> {
    let s0 = luo_vmm::control::call(control, "status")?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let s1 = luo_vmm::control::call(control, "status")?;
    let steps = field(&s1, "steps").unwrap_or(0) - field(&s0, "steps").unwrap_or(0);
    Ok(t0.elapsed().as_secs_f64() * 1e6 / steps.max(1) as f64)
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
    let Booted {
        first,
        control,
        cold_ms,
    } = boot(dir, luod_socket, tag, mem, pages)?;
    std::thread::sleep(Duration::from_millis(300));
    let step_us = step_us(&control)?;
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
    let end = stop(&control, first)?;
    if field(&end, "anomalies") != Some(0) {
        bail!("{tag}: the guest saw out-of-order steps: {end}");
    }
    ms.sort_by(f64::total_cmp);
    Ok(Measured {
        ms,
        step_us,
        cold_ms,
    })
}

/// Runs `f` with a luod this command starts on a private socket in a private directory
/// (`f` gets both), and stops it afterwards; keeps the logs if `f` fails.
fn with_luod(
    args: &BenchArgs,
    f: impl FnOnce(&Path, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
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
    let result = f(&dir, &socket);
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

fn vmm(args: &BenchArgs) -> anyhow::Result<()> {
    with_luod(args, |dir, socket| {
        let n = args.upgrades;
        let pct = |ms: &[f64], p: f64| format!("{:.3}", percentile(ms, p));
        let mut p50_1g = None;
        match Pool::grow(1 << 20, 1) {
            Ok(_pool) => {
                eprintln!("vmm: 1 GiB guest on one 1 GiB page, {n} upgrades");
                let m = upgrades(dir, socket, "vm-1g-huge", "1G", "1g", n)?;
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
        let m = upgrades(dir, socket, "vm-1g-4k", "1G", "4k", n)?;
        out("vmm_blackout_1g_4k_p50_ms", pct(&m.ms, 50.0));
        out("vmm_blackout_1g_4k_p99_ms", pct(&m.ms, 99.0));
        eprintln!("vmm: 64 MiB guest on 4 KiB pages, {n} upgrades");
        let m = upgrades(dir, socket, "vm-64m", "64M", "4k", n)?;
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
    })
}

/// Fills all of the guest RAM of the VMM at `control` with non-zero bytes (through
/// `/proc/<pid>/fd`, `pwrite`: the RAM is a 4 KiB memfd), so that a migrate copies all of it.
/// The guest's own first pages are left alone.
fn fill(control: &Path) -> anyhow::Result<()> {
    let st = luo_vmm::control::call(control, "status")?;
    let (Some(pid), Some(fd), Some(size)) =
        (field(&st, "pid"), field(&st, "ram_fd"), field(&st, "mem"))
    else {
        bail!("status without pid, ram_fd or mem: {st}");
    };
    let ram = std::fs::File::options()
        .write(true)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .context("open guest RAM")?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut at = 1u64 << 20;
    while at < size {
        let n = rustix::io::pwrite(&ram, &chunk[..chunk.len().min((size - at) as usize)], at)?;
        at += n as u64;
    }
    Ok(())
}

/// What the migrates of one direction measured.
#[derive(Default)]
struct Migrations {
    blackout_ms: Vec<f64>,
    total_ms: Vec<f64>,
    rounds: Vec<u64>,
    final_pages: Vec<u64>,
    copy_gb_per_s: Vec<f64>,
    /// The longest guest step during each pre-copy, ms.
    gap_ms: Vec<f64>,
}

impl Migrations {
    /// Runs one migrate to `to` and records it; checks the guest continued exactly.
    fn run(&mut self, control: &Path, to: &str, i: usize) -> anyhow::Result<()> {
        let r = luo_vmm::control::call(control, &format!("migrate {to}"))?;
        if !r.starts_with("MIGRATED") {
            bail!("migrate {i} to {to} failed: {r}");
        }
        let f = |k: &str| field(&r, k).unwrap_or(0);
        if f("lost") != 0
            || f("repeated") != 0
            || f("first_after") != f("last_before") + 1
            || f("counter_at_resume") != f("last_before")
        {
            bail!("migrate {i} to {to} lost or repeated a guest step: {r}");
        }
        let ms = |k: &str| f(k) as f64 / 1e6;
        let b = ms("blackout_ns");
        eprintln!(
            "  migrate {:2} to {to}: blackout {b:.3} ms (notice {:.3}, stop {:.3}, last copy {:.3} of {} pages, switch {:.3}, first step {:.3}); total {:.0} ms (create {:.0}, dirty log on {:.3}, copy {:.0}, rounds {}, luod {:.3}); longest guest step meanwhile {:.3} ms",
            i + 1,
            ms("notice_ns"),
            ms("quiesce_ns"),
            ms("final_copy_ns"),
            f("final_pages"),
            ms("switch_ns"),
            ms("switched_to_first_ns"),
            ms("total_ns"),
            ms("create_ns"),
            ms("log_on_ns"),
            ms("full_copy_ns"),
            f("rounds"),
            ms("replace_ns"),
            ms("precopy_max_gap_ns"),
        );
        self.gap_ms.push(ms("precopy_max_gap_ns"));
        self.blackout_ms.push(b);
        self.total_ms.push(ms("total_ns"));
        self.rounds.push(f("rounds"));
        self.final_pages.push(f("final_pages"));
        self.copy_gb_per_s
            .push(f("full_bytes") as f64 / f("full_copy_ns").max(1) as f64);
        Ok(())
    }

    fn sort(&mut self) {
        self.blackout_ms.sort_by(f64::total_cmp);
        self.total_ms.sort_by(f64::total_cmp);
        self.copy_gb_per_s.sort_by(f64::total_cmp);
        self.gap_ms.sort_by(f64::total_cmp);
    }
}

/// The live migrate of a 1 GiB guest whose RAM is full of data: from 4 KiB pages onto one
/// 1 GiB page (onto 2 MiB pages if no 1 GiB page can be reserved) and back, `n` times each way.
/// Baselines in the same run: the guest's ordinary step, and upgrades of the same guest.
fn migrate(args: &BenchArgs) -> anyhow::Result<()> {
    let n = args.migrations;
    let (target, _pool) = match Pool::grow(1 << 20, 1) {
        Ok(p) => ("1g", p),
        Err(why) => {
            eprintln!("vmm-migrate: cannot reserve a 1 GiB page ({why}): onto 2 MiB pages");
            let p = Pool::grow(2048, 512)
                .map_err(|e| anyhow::anyhow!("cannot reserve 512 2 MiB pages either: {e}"))?;
            ("2m", p)
        }
    };
    with_luod(args, |dir, socket| {
        let b = boot(dir, socket, "vm-migrate", "1G", "4k")?;
        fill(&b.control)?;
        std::thread::sleep(Duration::from_millis(300));
        let step_us = step_us(&b.control)?;
        let mut upgrade_ms = Vec::new();
        for i in 0..5 {
            let r = luo_vmm::control::call(&b.control, "upgrade")?;
            if !r.starts_with("RESUMED") || field(&r, "lost") != Some(0) {
                bail!("upgrade {i} failed: {r}");
            }
            upgrade_ms.push(field(&r, "blackout_ns").unwrap_or(0) as f64 / 1e6);
            std::thread::sleep(Duration::from_millis(100));
        }
        upgrade_ms.sort_by(f64::total_cmp);
        // The longest step of the guest left alone for a second (since the last upgrade): the
        // baseline of the longest step during a pre-copy.
        std::thread::sleep(Duration::from_secs(1));
        let idle_gap_ms = field(&luo_vmm::control::call(&b.control, "status")?, "max_gap_ns")
            .unwrap_or(0) as f64
            / 1e6;
        eprintln!("vmm-migrate: 1 GiB guest, 1 GiB of data, 4k <-> {target}, {n} times each way");
        let (mut there, mut back) = (Migrations::default(), Migrations::default());
        for i in 0..n {
            there.run(&b.control, target, i)?;
            std::thread::sleep(Duration::from_millis(100));
            back.run(&b.control, "4k", i)?;
            std::thread::sleep(Duration::from_millis(100));
        }
        let end = stop(&b.control, b.first)?;
        if field(&end, "anomalies") != Some(0) {
            bail!("the guest saw out-of-order steps: {end}");
        }
        there.sort();
        back.sort();
        let pct = |v: &[f64], p: f64| format!("{:.3}", percentile(v, p));
        let p50 = percentile(&there.blackout_ms, 50.0);
        out("vmm_migrate_target", target);
        out("vmm_migrate_count", n);
        out("vmm_migrate_blackout_p50_ms", pct(&there.blackout_ms, 50.0));
        out("vmm_migrate_blackout_p99_ms", pct(&there.blackout_ms, 99.0));
        out(
            "vmm_migrate_total_ms",
            format!("{:.0}", percentile(&there.total_ms, 50.0)),
        );
        out(
            "vmm_migrate_rounds",
            there.rounds.iter().max().unwrap_or(&0),
        );
        out(
            "vmm_migrate_final_pages_max",
            there.final_pages.iter().max().unwrap_or(&0),
        );
        out(
            "vmm_migrate_copy_gb_per_s",
            format!("{:.2}", percentile(&there.copy_gb_per_s, 50.0)),
        );
        out(
            "vmm_migrate_back_blackout_p50_ms",
            pct(&back.blackout_ms, 50.0),
        );
        out(
            "vmm_migrate_back_blackout_p99_ms",
            pct(&back.blackout_ms, 99.0),
        );
        out(
            "vmm_migrate_back_total_ms",
            format!("{:.0}", percentile(&back.total_ms, 50.0)),
        );
        out(
            "vmm_migrate_precopy_step_gap_p50_ms",
            pct(&there.gap_ms, 50.0),
        );
        out("vmm_migrate_idle_step_gap_ms", format!("{idle_gap_ms:.3}"));
        out(
            "vmm_migrate_max_step_gap_ms",
            format!("{:.3}", field(&end, "max_gap_ns").unwrap_or(0) as f64 / 1e6),
        );
        out("vmm_migrate_guest_step_us", format!("{step_us:.1}"));
        out(
            "vmm_migrate_upgrade_blackout_p50_ms",
            pct(&upgrade_ms, 50.0),
        );
        out(
            "vmm_migrate_blackout_over_upgrade",
            format!("{:.2}", p50 / percentile(&upgrade_ms, 50.0)),
        );
        Ok(())
    })
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
    if only.is_empty() || only == "migrate" {
        migrate(&args)?;
    }
    Ok(())
}
