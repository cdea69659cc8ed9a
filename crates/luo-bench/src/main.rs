//! luod's benchmark programs.
//!
//! Each benchmark is a program, not a timed test: it runs the real code path, checks that the
//! path did what it should (a benchmark of a broken path exits non-zero instead of printing a
//! figure), and prints its figures as `key=value` lines on stdout, with ratios against a
//! baseline measured in the same run. Commentary goes to stderr. `docs/PERFORMANCE.md` records
//! what they printed and on what machine.
//!
//! ```text
//! cargo run --release -p luo-bench -- <image|engine|upgrade|rpc|crash|copy|copy-engine|migrate|kexec|preload|vmm|all>
//! ```
//!
//! - **`image`** — the handover image format alone. Writes ([`ImageWriter`]) and reads back
//!   ([`Image::parse`], then every session and file through the accessors, checking each
//!   value) an image of 1,000,000 sessions without files, and one of a single session with
//!   1,000,000 files (a 40-byte record each, the first one with a descriptor); the same at
//!   100,000. Best of 3 runs of write + read, each run in a fresh process of this program
//!   (`image-run`), so every run starts from cold memory as in luod, where one process writes
//!   or reads one image. Prints `image_sessions_1000000_ms`,
//!   `image_files_1000000_ms`, `image_sessions_100000_ms`, `image_files_100000_ms` (and the
//!   write and read halves of each), `image_bytes_per_session`, `image_linearity_ratio`
//!   (sessions, 1M / 100k) and `image_files_linearity_ratio`.
//! - **`engine`** — the whole engine cycle on real memfds, in one process: N sessions each
//!   preserving one memfd with the `memfd-v1` handler of luod's registry (untimed setup), then
//!   timed: `freeze_all` (writes the image), `into_image_fds`, `Engine::restore`, and for
//!   every session `retrieve_session`, `retrieve_fd` (reading the memfd's bytes back) and
//!   `finish`. N = 8,000 and 800, best of 3. Prints `engine_cycle_8000_ms`,
//!   `engine_cycle_800_ms`, `engine_cycle_ratio` (8000 / 800) and `engine_us_per_session`.
//! - **`upgrade`** — luod's orchestrator upgrade end to end, through the real daemon
//!   (`target/release/luod`, next to this program: build it first with
//!   `cargo build --release -p luod`). A fresh luod gets 100 control connections and 2,000
//!   sessions holding 15,000 descriptors (memfds and both ends of socket pairs) plus one memfd
//!   of 4 GiB with every page written; a thread hammers it with STATUS requests while it is
//!   upgraded nine times (`Control::upgrade(None)`), each upgrade checked (new pid, every
//!   session and file listed, every client answering). The blackout of an upgrade is the gap
//!   between the last STATUS answered by the old process and the first answered by the new one
//!   (told apart by the pid in the reply). The same again with a 16 MiB memfd. Then the
//!   figures of `rpc` (below), and a plain restart (SIGTERM, start, first PING) as the
//!   baseline of the blackout. Prints `upgrade_blackout_ms` (median of 9; `_max_ms` the
//!   worst), `upgrade_blackout_small_ms`, `upgrade_blackout_ratio` (large / small),
//!   `upgrade_stall_ms` (median over the upgrades of the longest gap between two answers of
//!   the old server while the upgrade call was open: its own pause to write the image and fork
//!   the successor; `_max_ms` the worst), `upgrade_rounds_max` (most successors one upgrade
//!   started; 1 = the first, prepared while serving, was taken), `upgrade_stop_and_copy` (how
//!   many upgrades fell back to stop and copy), `upgrade_status_gap_ms` (median gap between
//!   STATUS answers outside upgrades: the resolution of the blackout), `upgrade_call_ms`, every `rpc_*` key of `rpc`,
//!   `restart_ms`, `upgrade_blackout_vs_restart_ratio`, and what was held
//!   (`upgrade_sessions`, `upgrade_fds`, `upgrade_clients`, `upgrade_luod_fds`). Set
//!   `LUO_BENCH_LUOD_LOG=info` to pass a log filter to luod and see its log after each run.
//! - **`rpc`** — the request rates of one client through a fresh release luod (build it first
//!   with `cargo build --release -p luod -p luo-bench`), best of 3 runs each, against
//!   baselines measured in the same run: round trips over a bare `SOCK_SEQPACKET` socket pair
//!   to an echo thread (`rpc_raw_roundtrip_per_s`), the same with a descriptor on each request
//!   (`rpc_raw_fd_roundtrip_per_s`), and the same with 64 requests in flight, as
//!   `Session::preserve_many` keeps them (`rpc_raw_fd_pipelined_per_s`). Through luod: PING
//!   one at a time (`rpc_ping_per_s`); PRESERVE_FD of 5,000 memfds into a new session, one
//!   `Session::preserve` at a time (`rpc_preserve_sequential_per_s`) and in one
//!   `Session::preserve_many` (`rpc_preserve_per_s`), each run checked through STATUS (luod
//!   holds all 5,000 files, and none once the session is closed). Ratios:
//!   `rpc_ping_vs_raw_ratio`, `rpc_preserve_sequential_vs_raw_fd_ratio`,
//!   `rpc_preserve_vs_raw_fd_pipelined_ratio` (like for like),
//!   `rpc_preserve_vs_raw_fd_ratio`, `rpc_preserve_vs_sequential_ratio` (what pipelining
//!   gains) and `rpc_preserve_vs_ping_ratio`.
//! - **`crash`** — the crash-injection harness (module `crash`, shared with luod's test
//!   `tests/crash.rs`) against the release luod (build it first with
//!   `cargo build --release -p luod`; needs root): clients of four uids create, preserve, hand
//!   off, retrieve and finish while the server is killed 1,000 times, at random instants and at
//!   its failpoints, with 2,000 sessions and 15,000 memfds held; upgrades and reboots in the mix.
//!   After every kill LIST and STATUS are checked against the harness's record of what luod
//!   acknowledged; at the end every file is read back. Prints `crash_kills`, `crash_lost`,
//!   `crash_duplicated` (both must be 0: the program exits non-zero otherwise),
//!   `crash_recovery_ms_p50`, `_p99` and `_max` (from the kill to the first request answered
//!   by the new server), `crash_failpoint_kills`, `crash_upgrades`, `crash_reboots` and the
//!   counters behind them (`docs/PERFORMANCE.md`, "Crash recovery"). `crash short` runs the
//!   test's short form; `LUO_BENCH_CRASH_ROUNDS`, `LUO_BENCH_CRASH_SEED` and
//!   `LUO_BENCH_CRASH_KILL=0` (the same mix without kills) change the run.
//! - **`copy`** — the batch copy engine (`luo-copy`) against plain copies of the same
//!   prefaulted, page-aligned 1 GiB buffers, in one run: the engine with the CPU path, one
//!   channel and two channels at 4 KiB, 2 MiB and 1 GiB units (every copy checked byte for
//!   byte, every count checked), one-thread and two-thread `memcpy`, and `copy_file_range`
//!   between two memfds; medians of 9 interleaved repetitions, ratios as medians of the ratios
//!   within each repetition. Prints `copy_<unit>_<n>ch_gb_per_s` and
//!   `copy_<unit>_cpu_gb_per_s` (unit 4k, 2m, 1g; n 1, 2), `memcpy_1t_gb_per_s`,
//!   `memcpy_2t_gb_per_s`, `copy_file_range_gb_per_s`, the ratios
//!   `copy_2m_2ch_over_memcpy_2t` (target >= 0.90), `copy_4k_1ch_over_memcpy_1t` (target >=
//!   0.80), `copy_4k_cpu_over_memcpy_1t` and `copy_1g_2ch_over_memcpy_2t`, and
//!   `copy_offload_overhead_1ch_us` / `_2ch_us` (what handing one batch to the channels
//!   costs). `LUO_BENCH_COPY_BATCH_MIB`, `LUO_BENCH_COPY_CHUNK_KIB`, `LUO_BENCH_COPY_PIN=1`
//!   and `LUO_BENCH_COPY_ONLY=key,...` change the setup. Needs 5 GiB free. Then it runs
//!   `migrate` (below) and `vmm --only migrate` (the live re-backing of a running guest:
//!   `vmm_migrate_blackout_p50_ms`, `vmm_migrate_total_ms`...), so one command prints every
//!   figure of the copy engine and what is built on it; `copy-engine` runs the first part
//!   alone.
//! - **`migrate`** — MIGRATE end to end through a release luod (build it first with
//!   `cargo build --release -p luod -p luo-bench`; needs root to reserve one 1 GiB page, given
//!   back at the end): a 1 GiB memfd of 4 KiB pages with every page written, handed off,
//!   moved onto one 1 GiB page and back onto 4 KiB pages, 5 times each way, each move checked
//!   (page size, one word per MiB). Prints `migrate_1g_ms` (median, from the client's call to
//!   its reply, 4 KiB → 1 GiB), `migrate_1g_copy_ms` (the copy alone, as luod reports it),
//!   `migrate_1g_gb_per_s`, `migrate_1g_to_4k_ms` and `migrate_channels`.
//! - **`kexec`** — luod's share of a real kernel live update: runs the VM harness's
//!   `kexec-bench` scenario (`scripts/vm run kexec-bench`: the test kernel must be built, see
//!   `docs/vm.md`) and reads its console. One session of a 1 GiB memfd, then 2,000 sessions
//!   plus one of 500 files, each across a kexec through luod and through a program using
//!   `/dev/liveupdate` itself. Prints `kexec_luod_overhead_ms_1s_1g` and
//!   `kexec_luod_overhead_ms_2000s` (luod's forward less the direct program's preserves, plus
//!   luod's start-to-first-retrieve less the direct program's open-to-first-retrieve) and
//!   every part (`kexec_<shape>_<part>_ms`). Module `kexec`.
//! - **`preload`** — builds and runs luo-preload's `bench_preload`: PRESERVE_FD + RETRIEVE_FD
//!   pairs per second through the `LD_PRELOAD` library and through luo-client, printing
//!   `preload_ioctl_per_s`, `native_ioctl_per_s` and their ratio.
//! - **`vmm`** — builds luod and luo-vmm and runs `luo-vmm bench` (extra arguments pass
//!   through, e.g. `--only convert`): VMM upgrades under a running KVM guest
//!   (`vmm_blackout_*`), live migrates of a 1 GiB guest's RAM onto a 1 GiB page and back
//!   (`vmm_migrate_*`, `--only migrate`) and attribute conversions (`convert_pages_per_s`,
//!   `attr_bytes_per_range`). Needs root and `/dev/kvm`.
//! - **`all`** — `image` then `engine` (not `upgrade` or `rpc`, which need the release luod
//!   binary).
//!
//! [`ImageWriter`]: luo_abi::image::ImageWriter
//! [`Image::parse`]: luo_abi::image::Image::parse
#![forbid(unsafe_code)]

mod copy;
mod crash;
mod engine;
mod external;
mod image;
mod kexec;
mod migrate;
mod rpc;
mod upgrade;

use std::fmt::Display;
use std::time::Duration;

/// Every benchmark's result: a failed step or a failed check.
pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Fails with `what` unless `ok`.
pub(crate) fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("Check failed: {}", what()).into())
    }
}

/// Prints one figure.
pub(crate) fn put(key: &str, value: impl Display) {
    println!("{key}={value}");
}

/// Milliseconds, one decimal.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// A ratio, two decimals.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "inf".to_owned()
    }
}

/// The shortest of `runs` runs of `f`.
pub(crate) fn best_of<T>(
    runs: usize,
    mut f: impl FnMut() -> Result<(Duration, T)>,
) -> Result<(Duration, T)> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let (d, extra) = f()?;
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, extra));
        }
    }
    best.ok_or_else(|| "No run".into())
}

/// Raises the soft descriptor limit to the hard one and returns it.
pub(crate) fn raise_nofile() -> Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

const USAGE: &str = "usage: luo-bench <image|engine|upgrade|rpc|crash [short]|copy|copy-engine|migrate|kexec|preload|vmm|all>";

/// The `crash` benchmark: the long form of the crash-injection harness (`short`: the test's).
fn crash(args: &[String]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let luod = upgrade::locate_luod()?;
    let limit = raise_nofile()?;
    let dir = std::env::temp_dir().join(format!("luo-bench-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Every client uid must reach the socket.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let mut opts = match args.first().map(String::as_str) {
        None | Some("long") => crash::Options::long(luod, dir.clone()),
        Some("short") => crash::Options::short(luod, dir.clone()),
        Some(other) => return Err(format!("crash: unknown form {other:?} (long or short)").into()),
    };
    opts.progress = true;
    if let Some(n) = env_number("LUO_BENCH_CRASH_ROUNDS") {
        opts.rounds = n;
    }
    // 0: the same mix with no kill, which must find nothing (the harness's own baseline).
    if let Some(n) = env_number("LUO_BENCH_CRASH_KILL") {
        opts.kill = n != 0;
    }
    if let Some(n) = env_number("LUO_BENCH_CRASH_SEED") {
        opts.seed = n;
    }
    if let Ok(filter) = std::env::var("LUO_BENCH_LUOD_LOG") {
        opts.log_filter = filter;
    }
    eprintln!(
        "crash: {} in {} (fd limit {limit}); {} rounds, {} clients, {} sessions and {} memfds held",
        opts.luod.display(),
        dir.display(),
        opts.rounds,
        opts.clients,
        opts.load_sessions,
        opts.load_files
    );
    let result = crash::run(&opts);
    // luod's whole log outlives the run's directory, for a look at what went wrong.
    let kept = std::env::temp_dir().join("luo-bench-crash-last.log");
    if std::fs::copy(dir.join("luod.log"), &kept).is_ok() {
        eprintln!("crash: luod's log is kept in {}", kept.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    for (key, value) in report.keys() {
        put(key, value);
    }
    check(report.clean(), || {
        format!(
            "luod lost {} and duplicated {} (cut {}, unexpected {}, unrecovered {}, luod gone {} \
             times):\n{}",
            report.lost(),
            report.duplicated,
            report.connections_cut,
            report.unexpected,
            report.unrecovered,
            report.keeper_deaths,
            report.failures()
        )
    })
}

/// A number from the environment.
fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_default();
    let result = match name.as_str() {
        "image" => image::run(),
        "engine" => engine::run(),
        "upgrade" => upgrade::run(),
        "crash" => crash(args.get(1..).unwrap_or_default()),
        // The copy engine, then what is built on it: MIGRATE through luod and the live
        // re-backing of a running guest.
        "copy" => copy::run()
            .and_then(|()| migrate::run())
            .and_then(|()| external::vmm(&["--only".to_owned(), "migrate".to_owned()])),
        "copy-engine" => copy::run(),
        "rpc" => rpc::run(),
        "migrate" => migrate::run(),
        "kexec" => kexec::run(),
        "preload" => external::preload(),
        "vmm" => external::vmm(args.get(1..).unwrap_or_default()),
        "all" => image::run().and_then(|()| engine::run()),
        // Internal: one run of `image`, in its own process.
        "image-run" => image::run_one(args.get(1..).unwrap_or_default()),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("luo-bench {name}: {e}");
        std::process::exit(1);
    }
}
