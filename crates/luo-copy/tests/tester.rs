//! Every copy path must agree with a plain copy.
//!
//! In the manner of ripgrep's `SearcherTester`: a [`Tester`] holds one random source and
//! copies it with every path (the CPU alone, the channel driver, the fault-injecting driver
//! under every fault pattern) × channel count × layout (offsets, alignments, scatter-gather);
//! every destination must be byte-identical to a plain copy, with nothing written outside the
//! units, and the counters must say what happened (every unit counted once, fallbacks equal to
//! the units a fault left undone, batches the policy kept on the CPU, ...). Every failing
//! combination is reported, not only the first.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use luo_copy::{
    ChannelConfig, ChannelFault, Channels, Driver, Engine, EngineConfig, FaultDriver, FaultPlan,
    Reason, Stall, Stats, Unit, UnitSize,
};

/// What the destination holds before a copy: a copy that misses a byte leaves it.
const POISON: u8 = 0xa5;

/// How the engine copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// No driver: the CPU path.
    Cpu,
    /// The channel driver with `n` channels.
    Channels(usize),
    /// The fault-injecting driver with `n` channels.
    Fault(usize, Pattern),
}

/// What the fault-injecting driver does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    /// Fails unit 0, the last unit and every unit `i % 7 == 3`.
    Units,
    /// Channel 0 fails at once in every batch.
    DeadChannel,
    /// The last channel fails after 3 pieces in every batch.
    FailingChannel,
    /// Channel 0 stalls until stopped in the first batch.
    StallLong,
    /// The last channel stalls 5 ms in the first two batches: slow, not stopped.
    StallShort,
    /// The policy keeps every batch on the CPU.
    CpuPolicy,
    /// Claims unit 1 without copying it: a broken driver (only for proving the checks).
    Lie,
}

const PATTERNS: [Pattern; 6] = [
    Pattern::Units,
    Pattern::DeadChannel,
    Pattern::FailingChannel,
    Pattern::StallLong,
    Pattern::StallShort,
    Pattern::CpuPolicy,
];

/// Where the units are in source and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Both at offset 0, page-aligned.
    Aligned,
    /// Source at 1, destination at 4096 + 7 (neither cache-line aligned, nor alike), 3 bytes
    /// shorter.
    Offset,
    /// Source a page in, destination at 0.
    Shifted,
    /// Scatter-gather: sources permuted, destinations ascending with odd gaps, the last unit
    /// 5 bytes short.
    Scatter,
}

/// One configuration's copy and the data it runs on.
struct Tester {
    unit: UnitSize,
    count: usize,
    tail: usize,
    engine: EngineConfig,
    channels: Vec<usize>,
    fault_channels: Vec<usize>,
    layouts: Vec<Layout>,
    patterns: Vec<Pattern>,
    src: Vec<u8>,
    dst: Vec<u8>,
}

/// A copy request under one layout.
struct Request {
    /// Contiguous: source offset, destination offset, length.
    contiguous: Option<(usize, usize, usize)>,
    /// The units (relative to the slices for a contiguous copy).
    units: Vec<Unit>,
}

impl Tester {
    /// `count` whole units of `unit` plus a `tail`, copied with every path, every channel
    /// count from 1 to 4, every layout and fault pattern.
    fn new(unit: UnitSize, count: usize, tail: usize) -> Tester {
        let len = count * unit.bytes() + tail;
        let mut t = Tester {
            unit,
            count,
            tail,
            engine: EngineConfig::default(),
            channels: vec![1, 2, 3, 4],
            fault_channels: vec![1, 2, 3, 4],
            layouts: vec![
                Layout::Aligned,
                Layout::Offset,
                Layout::Shifted,
                Layout::Scatter,
            ],
            patterns: PATTERNS.to_vec(),
            src: random(len + 4096, 0x5eed ^ unit.bytes() as u64),
            dst: Vec::new(),
        };
        t.size_dst();
        t
    }

    /// Sizes the destination for the layouts, with a poisoned page past the last unit.
    fn size_dst(&mut self) {
        let end = |r: &Request| {
            let base = r.contiguous.map_or(0, |(_, d, _)| d);
            r.units.last().map_or(0, |u| base + u.dst + u.len)
        };
        let len = self
            .layouts
            .iter()
            .map(|&l| end(&self.request(l)))
            .max()
            .unwrap_or(0);
        self.dst = vec![POISON; len + 4096];
    }

    fn engine(mut self, config: EngineConfig) -> Tester {
        self.engine = config;
        self
    }

    /// Runs the fault patterns with these channel counts only.
    fn fault_channels(mut self, counts: &[usize]) -> Tester {
        self.fault_channels = counts.to_vec();
        self
    }

    fn layouts(mut self, layouts: &[Layout]) -> Tester {
        self.layouts = layouts.to_vec();
        self.size_dst();
        self
    }

    fn request(&self, layout: Layout) -> Request {
        let u = self.unit.bytes();
        let len = self.count * u + self.tail;
        let contiguous = |s, d, len: usize| Request {
            contiguous: Some((s, d, len)),
            units: (0..len.div_ceil(u))
                .map(|i| Unit {
                    src: i * u,
                    dst: i * u,
                    len: u.min(len - i * u),
                })
                .collect(),
        };
        match layout {
            Layout::Aligned => contiguous(0, 0, len),
            Layout::Offset => contiguous(1, 4096 + 7, len - 3),
            Layout::Shifted => contiguous(4096, 0, len),
            Layout::Scatter => {
                // 7 is prime to every count used, so `i * 7 % n` permutes the sources.
                let n = self.count.max(1);
                Request {
                    contiguous: None,
                    units: (0..n)
                        .map(|i| Unit {
                            src: (i * 7 % n) * u,
                            dst: i * (u + 4097) + 3,
                            len: if i + 1 == n { u - 5 } else { u },
                        })
                        .collect(),
                }
            }
        }
    }

    fn paths(&self) -> Vec<Path> {
        let mut paths = vec![Path::Cpu];
        paths.extend(self.channels.iter().map(|&n| Path::Channels(n)));
        for &pattern in &self.patterns {
            paths.extend(self.fault_channels.iter().map(|&n| Path::Fault(n, pattern)));
        }
        paths
    }

    /// Runs every combination; panics listing every one that failed.
    fn test(mut self) {
        let mut failures = Vec::new();
        let mut cases = 0;
        for layout in self.layouts.clone() {
            let request = self.request(layout);
            for path in self.paths() {
                cases += 1;
                let t = std::time::Instant::now();
                let result = self.case(path, &request);
                if std::env::var_os("LUO_COPY_TESTER_TIMES").is_some() {
                    eprintln!("{} {path:?} {layout:?}: {:?}", self.unit, t.elapsed());
                }
                if let Err(why) = result {
                    failures.push(format!(
                        "unit={} path={path:?} layout={layout:?}: {why}",
                        self.unit
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cases} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// One copy, checked.
    fn case(&mut self, path: Path, request: &Request) -> Result<(), String> {
        let n_units = request.units.len();
        let (driver, fault) = make_driver(path, n_units)?;
        let engine = Engine::new(self.engine.clone());
        if let Some(driver) = &driver {
            engine
                .register(Arc::clone(driver))
                .map_err(|e| e.to_string())?;
        }
        self.dst.fill(POISON);
        let stats = match request.contiguous {
            Some((s, d, len)) => engine.copy(
                &self.src[s..s + len],
                &mut self.dst[d..d + len],
                self.unit,
                Reason::Other,
            ),
            None => engine.copy_units(
                &self.src,
                &mut self.dst,
                &request.units,
                self.unit,
                Reason::Other,
            ),
        }
        .map_err(|e| format!("copy failed: {e}"))?;

        self.check_bytes(request)?;
        let (batches, first_batch_units) =
            expected_batches(&self.engine, self.unit, &request.units);
        check_stats(path, &stats, &request.units, batches)?;
        if let Some(fault) = fault {
            check_fault(
                path,
                &stats,
                &fault,
                &request.units,
                batches,
                first_batch_units,
            )?;
        }
        let mut engine_stats = engine.stats();
        if engine_stats.driver != driver.as_ref().map(|d| d.name().to_owned()) {
            return Err(format!(
                "engine stats name driver {:?}",
                engine_stats.driver
            ));
        }
        engine_stats.driver.clone_from(&stats.driver);
        if engine_stats != stats {
            return Err(format!(
                "engine stats {engine_stats:?} differ from the copy's {stats:?}"
            ));
        }
        Ok(())
    }

    /// The destination holds the source's bytes in every unit and poison everywhere else.
    fn check_bytes(&self, request: &Request) -> Result<(), String> {
        let block = [POISON; 4096];
        let poisoned = |range: std::ops::Range<usize>| -> Result<(), String> {
            let start = range.start;
            for (i, chunk) in self.dst[range].chunks(block.len()).enumerate() {
                if chunk != &block[..chunk.len()] {
                    let at = chunk.iter().position(|&b| b != POISON).unwrap_or(0);
                    let at = start + i * block.len() + at;
                    return Err(format!("byte {at} outside every unit was written"));
                }
            }
            Ok(())
        };
        let (s_base, d_base) = request.contiguous.map_or((0, 0), |(s, d, _)| (s, d));
        let mut end = 0;
        for (i, u) in request.units.iter().enumerate() {
            let (s, d) = (s_base + u.src, d_base + u.dst);
            poisoned(end..d)?;
            let (got, want) = (&self.dst[d..d + u.len], &self.src[s..s + u.len]);
            if got != want {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "unit {i}: bytes differ from a plain copy at offset {at} of {}",
                    u.len
                ));
            }
            end = d + u.len;
        }
        poisoned(end..self.dst.len())
    }
}

/// The driver for `path` (none for the CPU), and the fault driver's handle if it is one.
type Made = (Option<Arc<dyn Driver>>, Option<Arc<FaultDriver>>);

fn make_driver(path: Path, n_units: usize) -> Result<Made, String> {
    let config = |n| {
        ChannelConfig::new(n)
            .min_offload_bytes(0)
            .chunk_bytes(256 << 10)
    };
    match path {
        Path::Cpu => Ok((None, None)),
        Path::Channels(n) => {
            let d = Channels::new(config(n)).map_err(|e| e.to_string())?;
            Ok((Some(Arc::new(d)), None))
        }
        Path::Fault(n, pattern) => {
            let (plan, config) = plan(pattern, n, n_units, config(n));
            let d = Arc::new(FaultDriver::new(config, plan).map_err(|e| e.to_string())?);
            Ok((Some(d.clone()), Some(d)))
        }
    }
}

fn fail_set(n_units: usize) -> BTreeSet<u64> {
    let n = n_units as u64;
    (0..n)
        .filter(|i| i % 7 == 3)
        .chain([0, n.saturating_sub(1)])
        .collect()
}

fn plan(
    pattern: Pattern,
    n: usize,
    n_units: usize,
    config: ChannelConfig,
) -> (FaultPlan, ChannelConfig) {
    let mut plan = FaultPlan::default();
    let mut config = config;
    match pattern {
        Pattern::Units => plan.fail_units = fail_set(n_units),
        Pattern::DeadChannel => {
            plan.fail_channel = Some(ChannelFault {
                channel: 0,
                after_units: 0,
            })
        }
        Pattern::FailingChannel => {
            plan.fail_channel = Some(ChannelFault {
                channel: n - 1,
                after_units: 3,
            })
        }
        Pattern::StallLong => {
            plan.stall = Some(Stall {
                channel: 0,
                duration: Duration::MAX,
                batches: 1,
            });
            config = config.stall_timeout(Duration::from_millis(50));
        }
        Pattern::StallShort => {
            plan.stall = Some(Stall {
                channel: n - 1,
                duration: Duration::from_millis(5),
                batches: 2,
            });
            config = config.stall_timeout(Duration::from_secs(5));
        }
        Pattern::CpuPolicy => plan.offload = Some(false),
        Pattern::Lie => plan.lie_units = [1].into(),
    }
    (plan, config)
}

/// Batches the engine should make of `units`, by its documented rule (consecutive units, at
/// most `max_batch_units` of them and `max_batch_bytes`, but at least one unit), and how many
/// units the first one holds.
fn expected_batches(config: &EngineConfig, unit: UnitSize, units: &[Unit]) -> (u64, usize) {
    let per_batch = (config.max_batch_bytes / unit.bytes() as u64)
        .clamp(1, config.max_batch_units as u64) as usize;
    let (mut batches, mut first) = (0, 0);
    let mut i = 0;
    while i < units.len() {
        let (mut n, mut bytes) = (0, 0u64);
        while i < units.len()
            && n < per_batch.min(config.max_batch_units)
            && (n == 0 || bytes + units[i].len as u64 <= config.max_batch_bytes)
        {
            bytes += units[i].len as u64;
            n += 1;
            i += 1;
        }
        if batches == 0 {
            first = n;
        }
        batches += 1;
    }
    (batches, first)
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// What every path's counters must say.
fn check_stats(path: Path, s: &Stats, units: &[Unit], batches: u64) -> Result<(), String> {
    let n = units.len() as u64;
    let bytes: u64 = units.iter().map(|u| u.len as u64).sum();
    ensure(s.copies == 1, || format!("copies {}", s.copies))?;
    ensure(s.units == n && s.bytes == bytes, || {
        format!(
            "{} units / {} bytes counted, {n} / {bytes} copied",
            s.units, s.bytes
        )
    })?;
    ensure(s.batches == batches, || {
        format!("{} batches, expected {batches}", s.batches)
    })?;
    ensure(
        s.batches == s.batches_offloaded + s.batches_cpu_policy + s.batches_cpu_no_driver,
        || format!("batches do not add up: {s:?}"),
    )?;
    ensure(
        s.units == s.units_cpu + s.units_fallback + s.units_offloaded(),
        || format!("units do not add up: {s:?}"),
    )?;
    ensure(
        s.bytes == s.bytes_cpu + s.bytes_fallback + s.bytes_offloaded(),
        || format!("bytes do not add up: {s:?}"),
    )?;
    ensure(
        s.time >= s.time_offload + s.time_cpu + s.time_fallback,
        || format!("times do not add up: {s:?}"),
    )?;
    match path {
        Path::Cpu => ensure(
            s.batches_cpu_no_driver == batches && s.units_cpu == n && s.channels.is_empty(),
            || format!("the CPU path counted {s:?}"),
        ),
        Path::Channels(c) => {
            ensure(
                s.batches_offloaded == batches && s.units_fallback == 0 && s.batches_failed == 0,
                || format!("channels without faults counted {s:?}"),
            )?;
            ensure(s.channels.len() <= c, || {
                format!("{} channels counted of {c}", s.channels.len())
            })?;
            // Large enough copies keep every channel busy.
            let busy = s.channels.iter().filter(|ch| ch.bytes > 0).count();
            ensure(bytes < (c as u64) << 20 || busy == c, || {
                format!("only {busy} of {c} channels copied anything: {s:?}")
            })?;
            let batch_sum: u64 = s.channels.iter().map(|ch| ch.batches).sum();
            ensure(batch_sum >= batches, || {
                format!("channels took part in {batch_sum} batches of {batches}")
            })
        }
        Path::Fault(..) => Ok(()),
    }
}

/// What each fault pattern must have caused.
fn check_fault(
    path: Path,
    s: &Stats,
    fault: &FaultDriver,
    units: &[Unit],
    batches: u64,
    first_batch_units: usize,
) -> Result<(), String> {
    let Path::Fault(c, pattern) = path else {
        return Ok(());
    };
    let log = fault.log();
    let channel_units = |i: usize| s.channels.get(i).map_or(0, |ch| ch.units);
    let channel_bytes = |i: usize| s.channels.get(i).map_or(0, |ch| ch.bytes);
    match pattern {
        Pattern::Units => {
            let failed = fail_set(units.len());
            let failed_bytes: u64 = failed.iter().map(|&i| units[i as usize].len as u64).sum();
            ensure(
                s.units_fallback == failed.len() as u64 && s.bytes_fallback == failed_bytes,
                || {
                    format!(
                        "{} units / {} bytes fell back, {} / {failed_bytes} failed",
                        s.units_fallback,
                        s.bytes_fallback,
                        failed.len()
                    )
                },
            )?;
            ensure(log.units_failed >= failed.len() as u64, || {
                format!("the driver failed {} units", log.units_failed)
            })?;
            ensure(s.batches_failed == 0, || format!("{s:?}"))
        }
        Pattern::DeadChannel => {
            ensure(channel_units(0) == 0 && channel_bytes(0) == 0, || {
                format!("the dead channel copied: {s:?}")
            })?;
            ensure(s.units_fallback > 0 && s.batches_failed > 0, || {
                format!("nothing fell back from the dead channel: {s:?}")
            })?;
            ensure(
                s.last_error.as_deref() == Some("Copy channel 0 failed"),
                || format!("last error {:?}", s.last_error),
            )?;
            // The other channels complete whole units when a batch has more than one a channel
            // (else every unit is cut, and every cut unit has a piece on the dead channel).
            ensure(
                c == 1 || first_batch_units < 2 * c || s.units_offloaded() > 0,
                || format!("the live channels copied nothing: {s:?}"),
            )
        }
        Pattern::FailingChannel => {
            ensure(channel_units(c - 1) <= 3 * batches, || {
                format!(
                    "the failing channel completed {} units",
                    channel_units(c - 1)
                )
            })?;
            // Its run in the first batch is longer than 3 pieces when the batch has more than
            // 4 units per channel.
            let long_runs = first_batch_units / c > 4;
            ensure(
                !long_runs || (s.units_fallback > 0 && s.batches_failed > 0),
                || format!("nothing fell back from the failing channel: {s:?}"),
            )
        }
        Pattern::StallLong => {
            ensure(log.stalls == 1, || format!("{} stalls", log.stalls))?;
            ensure(channel_units(0) == 0 || batches > 1, || {
                format!("the stalled channel completed units: {s:?}")
            })?;
            ensure(
                s.units_fallback > 0
                    && s.batches_failed >= 1
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("stalled")),
                || format!("the stall was not detected: {s:?}"),
            )
        }
        Pattern::StallShort => {
            ensure(log.stalls == batches.min(2), || {
                format!("{} stalls in {batches} batches", log.stalls)
            })?;
            ensure(s.units_fallback == 0 && s.batches_failed == 0, || {
                format!("a short stall made units fall back: {s:?}")
            })
        }
        Pattern::CpuPolicy => ensure(
            s.batches_cpu_policy == batches
                && s.units_cpu == units.len() as u64
                && s.channels.is_empty()
                && s.units_fallback == 0,
            || format!("the policy did not keep the batches on the CPU: {s:?}"),
        ),
        Pattern::Lie => Ok(()),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn every_path_agrees_at_4k() {
    // 8 batches of 128 units: several batches, each cut into runs of whole units.
    Tester::new(UnitSize::Base4K, 1000, 100)
        .engine(EngineConfig::default().max_batch_units(128))
        .test();
}

#[test]
fn every_path_agrees_at_2m() {
    // Batches of 4 units (8 MiB): 3 channels cut units in the middle.
    Tester::new(UnitSize::Huge2M, 20, 3 * 4096 + 1)
        .engine(EngineConfig::default().max_batch_bytes(8 << 20))
        .test();
}

#[test]
fn every_path_agrees_at_1g() {
    // One 1 GiB unit and a short one: the large unit is cut between the channels. Each case
    // moves gigabytes, so fewer of them: two layouts, and the faults with 2 and 3 channels
    // (one cut, and two cuts of which one is not at a midpoint).
    Tester::new(UnitSize::Huge1G, 1, 3 * 4096 + 5)
        .layouts(&[Layout::Aligned, Layout::Offset])
        .fault_channels(&[2, 3])
        .test();
}

/// The checks catch a driver that claims a unit it never copied: the tester can fail.
#[test]
fn a_lying_driver_is_caught() {
    let mut t = Tester::new(UnitSize::Base4K, 64, 0);
    let request = t.request(Layout::Aligned);
    for n in [1, 2] {
        let err = t
            .case(Path::Fault(n, Pattern::Lie), &request)
            .expect_err("a unit claimed but not copied went unnoticed");
        assert!(err.contains("unit 1: bytes differ"), "{err}");
    }
}
