//! `copy`: the batch copy engine (luo-copy) against plain copies of the same buffers.
//!
//! Two page-aligned 1 GiB buffers, both prefaulted (every page written before anything is
//! timed). Each repetition times, in turn: the engine with the CPU path only, one channel and
//! two channels, each at 4 KiB, 2 MiB and 1 GiB units; one-thread `memcpy` (one
//! `copy_from_slice` of the whole GiB); two-thread `memcpy` (two threads, half each); and
//! `copy_file_range` between two prefaulted 1 GiB memfds. Before every timed copy the
//! destination is overwritten with a pattern, after it the destination is compared with the
//! source (neither is timed), and every engine copy's counters are checked (all units
//! offloaded, none fell back). The figures are medians over the repetitions; interleaving the
//! repetitions spreads the noise of a shared machine over every figure alike.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use luo_copy::{ChannelConfig, Channels, Engine, EngineConfig, Reason, UnitSize};
use rustix::fs::MemfdFlags;

use crate::{Result, check, put};

/// Bytes copied by every figure.
const LEN: usize = 1 << 30;
/// Repetitions of every figure (the median is printed).
const REPS: usize = 9;
/// What the destination holds before a timed copy.
const POISON: u8 = 0x5a;

/// One thing timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    /// The engine: no driver (`None`), or `n` channels.
    Engine(UnitSize, Option<usize>),
    /// `copy_from_slice` on one thread.
    Memcpy1,
    /// `copy_from_slice` on two threads, half each.
    Memcpy2,
    /// `copy_file_range` between two memfds.
    CopyFileRange,
}

impl Subject {
    fn key(self) -> String {
        match self {
            Subject::Engine(unit, None) => format!("copy_{unit}_cpu_gb_per_s"),
            Subject::Engine(unit, Some(n)) => format!("copy_{unit}_{n}ch_gb_per_s"),
            Subject::Memcpy1 => "memcpy_1t_gb_per_s".to_owned(),
            Subject::Memcpy2 => "memcpy_2t_gb_per_s".to_owned(),
            Subject::CopyFileRange => "copy_file_range_gb_per_s".to_owned(),
        }
    }
}

/// A `len`-byte, page-aligned window of a fresh vector, every page written.
struct Buffer {
    vec: Vec<u8>,
    start: usize,
}

impl Buffer {
    fn new(fill: impl Fn(usize) -> u8) -> Buffer {
        let mut vec = vec![0u8; LEN + 4096];
        let start = (4096 - vec.as_ptr().addr() % 4096) % 4096;
        // Prefault, with content that differs from page to page.
        for (i, page) in vec[start..start + LEN].chunks_mut(4096).enumerate() {
            page.fill(fill(i));
        }
        Buffer { vec, start }
    }

    fn get(&self) -> &[u8] {
        &self.vec[self.start..self.start + LEN]
    }

    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + LEN]
    }
}

/// Two memfds of `LEN` bytes, the source holding `src`'s bytes, both prefaulted.
fn memfds(src: &[u8]) -> Result<(OwnedFd, OwnedFd)> {
    let a = rustix::fs::memfd_create("luo-bench-src", MemfdFlags::CLOEXEC)?;
    let b = rustix::fs::memfd_create("luo-bench-dst", MemfdFlags::CLOEXEC)?;
    write_all(&a, src, 0)?;
    poison_memfd(&b)?;
    Ok((a, b))
}

/// Overwrites all `LEN` bytes of the memfd with the poison.
fn poison_memfd(fd: &OwnedFd) -> Result<()> {
    let block = vec![POISON; 64 << 20];
    for i in 0..LEN / block.len() {
        write_all(fd, &block, (i * block.len()) as u64)?;
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, mut data: &[u8], mut off: u64) -> Result<()> {
    while !data.is_empty() {
        let n = rustix::io::pwrite(fd, data, off)?;
        check(n > 0, || "short pwrite to a memfd".into())?;
        data = &data[n..];
        off += n as u64;
    }
    Ok(())
}

/// Copies all of `a` to `b` with `copy_file_range`.
fn copy_file_range(a: &OwnedFd, b: &OwnedFd) -> Result<()> {
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < LEN as u64 {
        let left = LEN - off_in as usize;
        let n = rustix::fs::copy_file_range(a, Some(&mut off_in), b, Some(&mut off_out), left)?;
        check(n > 0, || format!("copy_file_range stopped at {off_in}"))?;
    }
    Ok(())
}

/// Reads the memfd back and compares it with `src`.
fn check_memfd(fd: &OwnedFd, src: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; 64 << 20];
    for (i, want) in src.chunks(buf.len()).enumerate() {
        let off = (i * buf.len()) as u64;
        let mut got = 0;
        while got < want.len() {
            let n = rustix::io::pread(fd, &mut buf[got..want.len()], off + got as u64)?;
            check(n > 0, || "short pread from a memfd".into())?;
            got += n;
        }
        check(&buf[..want.len()] == want, || {
            format!("copy_file_range: bytes differ in the 64 MiB at {off}")
        })?;
    }
    Ok(())
}

/// How the engines are set up: luod's defaults, unless the environment says otherwise.
#[derive(Clone, Debug)]
struct Setup {
    engine: EngineConfig,
    /// Chunk size of the channels.
    chunk: usize,
    /// Pin channel `i` to CPU `i`.
    pin: bool,
    /// Only the subjects whose keys are listed (all if empty).
    only: Vec<String>,
}

impl Setup {
    /// `LUO_BENCH_COPY_BATCH_MIB`, `LUO_BENCH_COPY_CHUNK_KIB`, `LUO_BENCH_COPY_PIN=1` and
    /// `LUO_BENCH_COPY_ONLY=key,key` (keys as printed) change the defaults, to investigate.
    fn from_env() -> Result<Setup> {
        let num = |name: &str| -> Result<Option<usize>> {
            match std::env::var(name) {
                Ok(v) => Ok(Some(v.parse().map_err(|e| format!("{name}={v}: {e}"))?)),
                Err(_) => Ok(None),
            }
        };
        let mut engine = EngineConfig::default();
        if let Some(mib) = num("LUO_BENCH_COPY_BATCH_MIB")? {
            engine = engine
                .max_batch_bytes((mib as u64) << 20)
                .max_batch_units(usize::MAX);
        }
        let chunk = num("LUO_BENCH_COPY_CHUNK_KIB")?
            .map_or(ChannelConfig::new(1).chunk_bytes, |kib| kib << 10);
        Ok(Setup {
            engine,
            chunk,
            pin: std::env::var("LUO_BENCH_COPY_PIN").is_ok_and(|v| v == "1"),
            only: std::env::var("LUO_BENCH_COPY_ONLY")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }
}

/// The engines timed: no driver, one channel, two channels.
struct Engines {
    cpu: Engine,
    one: Engine,
    two: Engine,
}

impl Engines {
    fn new(setup: &Setup) -> Result<Engines> {
        let with = |n| -> Result<Engine> {
            let engine = Engine::new(setup.engine.clone());
            let mut config = ChannelConfig::new(n).chunk_bytes(setup.chunk);
            if setup.pin {
                config = config.pinned((0..n).collect());
            }
            engine.register(Arc::new(Channels::new(config)?))?;
            Ok(engine)
        };
        Ok(Engines {
            cpu: Engine::new(setup.engine.clone()),
            one: with(1)?,
            two: with(2)?,
        })
    }

    fn get(&self, channels: Option<usize>) -> &Engine {
        match channels {
            None => &self.cpu,
            Some(1) => &self.one,
            Some(_) => &self.two,
        }
    }
}

/// Times one subject once, checking what it did.
fn time_one(
    subject: Subject,
    engines: &Engines,
    src: &Buffer,
    dst: &mut Buffer,
    fds: &(OwnedFd, OwnedFd),
) -> Result<Duration> {
    if subject != Subject::CopyFileRange {
        dst.get_mut().fill(POISON);
    }
    let t = Instant::now();
    match subject {
        Subject::Engine(unit, channels) => {
            let stats =
                engines
                    .get(channels)
                    .copy(src.get(), dst.get_mut(), unit, Reason::Other)?;
            let elapsed = t.elapsed();
            let units = LEN.div_ceil(unit.bytes()) as u64;
            check(stats.units == units && stats.units_fallback == 0, || {
                format!("{subject:?}: {stats:?}")
            })?;
            match channels {
                None => check(stats.units_cpu == units, || format!("{stats:?}"))?,
                Some(n) => check(
                    stats.units_offloaded() == units
                        && stats.channels.len() == n
                        && stats.channels.iter().all(|c| c.bytes > 0),
                    || format!("{subject:?}: not every channel copied: {stats:?}"),
                )?,
            }
            check(dst.get() == src.get(), || {
                format!("{subject:?}: bytes differ")
            })?;
            return Ok(elapsed);
        }
        Subject::Memcpy1 => dst.get_mut().copy_from_slice(src.get()),
        Subject::Memcpy2 => {
            let (d0, d1) = dst.get_mut().split_at_mut(LEN / 2);
            let (s0, s1) = src.get().split_at(LEN / 2);
            std::thread::scope(|s| {
                s.spawn(|| d0.copy_from_slice(s0));
                d1.copy_from_slice(s1);
            });
        }
        Subject::CopyFileRange => {
            copy_file_range(&fds.0, &fds.1)?;
            let elapsed = t.elapsed();
            check_memfd(&fds.1, src.get())?;
            // The next run starts from a destination that differs again.
            poison_memfd(&fds.1)?;
            return Ok(elapsed);
        }
    }
    let elapsed = t.elapsed();
    check(dst.get() == src.get(), || {
        format!("{subject:?}: bytes differ")
    })?;
    Ok(elapsed)
}

/// What handing one batch to the channels costs: the median time of a one-batch copy of
/// 64 KiB (16 units of 4 KiB) offloaded to 1 and to 2 channels, less that of the same copy on
/// the CPU path, in microseconds.
fn offload_overhead() -> Result<(f64, f64)> {
    const CALLS: usize = 2000;
    let src = vec![1u8; 64 << 10];
    let mut dst = vec![0u8; 64 << 10];
    let per_call = |engine: &Engine, dst: &mut [u8]| -> Result<Duration> {
        let mut t = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let start = Instant::now();
            engine.copy(&src, dst, UnitSize::Base4K, Reason::Other)?;
            t.push(start.elapsed());
        }
        Ok(median(t))
    };
    let cpu = per_call(&Engine::default(), &mut dst)?;
    let mut offloaded = Vec::new();
    for n in [1, 2] {
        let engine = Engine::default();
        let config = ChannelConfig::new(n).min_offload_bytes(0);
        engine.register(Arc::new(Channels::new(config)?))?;
        let t = per_call(&engine, &mut dst)?;
        let stats = engine.stats();
        check(stats.batches_offloaded == CALLS as u64, || {
            format!("overhead: {stats:?}")
        })?;
        offloaded.push(t.saturating_sub(cpu).as_secs_f64() * 1e6);
    }
    check(dst == src, || "overhead: bytes differ".into())?;
    Ok((offloaded[0], offloaded[1]))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn gb_per_s(d: Duration) -> f64 {
    LEN as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

pub(crate) fn run() -> Result<()> {
    let mut subjects = Vec::new();
    for unit in UnitSize::ALL {
        for channels in [Some(1), Some(2), None] {
            subjects.push(Subject::Engine(unit, channels));
        }
    }
    subjects.extend([Subject::Memcpy1, Subject::Memcpy2, Subject::CopyFileRange]);
    let setup = Setup::from_env()?;
    if !setup.only.is_empty() {
        subjects.retain(|s| setup.only.iter().any(|k| s.key().starts_with(k.as_str())));
    }

    eprintln!("copy: prefaulting 2 x 1 GiB buffers and 2 x 1 GiB memfds");
    let src = Buffer::new(|page| (page * 7 + 1) as u8);
    let mut dst = Buffer::new(|_| POISON);
    let fds = memfds(src.get())?;
    let engines = Engines::new(&setup)?;

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); subjects.len()];
    for rep in 0..REPS {
        for (i, &subject) in subjects.iter().enumerate() {
            times[i].push(time_one(subject, &engines, &src, &mut dst, &fds)?);
        }
        eprintln!("copy: repetition {} of {REPS} done", rep + 1);
    }

    let index = |s: Subject| subjects.iter().position(|&x| x == s);
    for (subject, t) in subjects.iter().zip(&times) {
        let gbps: Vec<f64> = t.iter().map(|&d| gb_per_s(d)).collect();
        let (lo, hi) = gbps
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &g| (lo.min(g), hi.max(g)));
        let med = gb_per_s(median(t.clone()));
        eprintln!(
            "copy: {:<28} median {med:6.2}  range {lo:6.2} .. {hi:6.2} GB/s",
            subject.key()
        );
        put(&subject.key(), format!("{med:.2}"));
    }
    // A ratio is the median over the repetitions of the ratio within each: the two figures
    // of one repetition were measured seconds apart, under the same load.
    let ratios = [
        (
            "copy_2m_2ch_over_memcpy_2t",
            Subject::Engine(UnitSize::Huge2M, Some(2)),
            Subject::Memcpy2,
        ),
        (
            "copy_4k_1ch_over_memcpy_1t",
            Subject::Engine(UnitSize::Base4K, Some(1)),
            Subject::Memcpy1,
        ),
        (
            "copy_4k_cpu_over_memcpy_1t",
            Subject::Engine(UnitSize::Base4K, None),
            Subject::Memcpy1,
        ),
        (
            "copy_1g_2ch_over_memcpy_2t",
            Subject::Engine(UnitSize::Huge1G, Some(2)),
            Subject::Memcpy2,
        ),
    ];
    for (key, a, b) in ratios {
        if let (Some(a), Some(b)) = (index(a), index(b)) {
            let mut r: Vec<f64> = times[a]
                .iter()
                .zip(&times[b])
                .map(|(ta, tb)| tb.as_secs_f64() / ta.as_secs_f64().max(1e-9))
                .collect();
            r.sort_by(f64::total_cmp);
            put(key, format!("{:.2}", r[r.len() / 2]));
        }
    }
    let (one, two) = offload_overhead()?;
    put("copy_offload_overhead_1ch_us", format!("{one:.1}"));
    put("copy_offload_overhead_2ch_us", format!("{two:.1}"));
    put("copy_bytes", LEN);
    put("copy_reps", REPS);
    put("copy_batch_bytes", setup.engine.max_batch_bytes);
    put("copy_chunk_bytes", setup.chunk);
    put("copy_pinned", u8::from(setup.pin));
    Ok(())
}
