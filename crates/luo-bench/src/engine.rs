//! `engine`: a reboot cycle of the engine in one process, on real memfds.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use luo_core::{Direction, Engine, Registry};
use rustix::fs::MemfdFlags;

use crate::{Result, best_of, check, ms, put, raise_nofile, ratio};

const RUNS: usize = 3;
const OWNER: u32 = 1000;
const TOKEN: u64 = 42;

/// luod's registry: the default handlers and their FLB links, in luod's order.
pub(crate) fn registry() -> Result<Arc<Registry>> {
    Ok(Arc::new(luo_handlers::default_registry()?))
}

/// What session `i`'s memfd holds.
fn content(i: usize) -> [u8; 16] {
    let mut c = *b"luod-bench-00000";
    let mut n = i;
    for d in c[11..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    c
}

/// One cycle over `n` sessions; returns the timed part.
fn cycle(registry: &Arc<Registry>, n: usize) -> Result<Duration> {
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    let mut engine = Engine::new(Arc::clone(registry));
    for (i, name) in names.iter().enumerate() {
        let id = engine.create_session(OWNER, name.as_bytes())?;
        let memfd = rustix::fs::memfd_create("luo-bench", MemfdFlags::CLOEXEC)?;
        let written = rustix::io::write(&memfd, &content(i))?;
        check(written == 16, || format!("short write to memfd {i}"))?;
        engine.preserve_fd(id, Some(memfd.as_fd()), TOKEN)?;
        // Only the engine's copy remains.
        drop(memfd);
    }
    check(engine.fds_held() == n as u64, || {
        format!("engine holds {} fds, expected {n}", engine.fds_held())
    })?;

    let t0 = Instant::now();
    let image = engine.freeze_all()?;
    let mut fds: Vec<Option<OwnedFd>> = engine.into_image_fds().into_iter().map(Some).collect();
    let mut engine = Engine::restore(Arc::clone(registry), &image, &mut fds)?;
    let restored = engine.sessions();
    check(restored.len() == n, || {
        format!("{} sessions restored, expected {n}", restored.len())
    })?;
    check(
        restored
            .iter()
            .all(|s| matches!(s.direction, Direction::Incoming { .. })),
        || "a restored session is not incoming".into(),
    )?;
    let mut buf = [0u8; 16];
    for (i, name) in names.iter().enumerate() {
        let id = engine.retrieve_session(OWNER, name.as_bytes())?;
        let fd = engine.retrieve_fd(id, TOKEN)?;
        let got = rustix::io::pread(&fd, &mut buf, 0)?;
        check(got == 16 && buf == content(i), || {
            format!(
                "session {name}: memfd holds {:?}",
                String::from_utf8_lossy(&buf[..got])
            )
        })?;
        drop(fd);
        engine.finish(id)?;
    }
    let elapsed = t0.elapsed();

    check(fds.iter().all(Option::is_none), || {
        "restore left descriptors unused".into()
    })?;
    check(engine.fds_held() == 0, || {
        format!("{} fds still held after finish", engine.fds_held())
    })?;
    check(engine.total_usage().files == 0, || {
        "files left after finish".into()
    })?;
    check(engine.generation() == 1, || {
        format!("generation {}", engine.generation())
    })?;
    Ok(elapsed)
}

/// The `engine` benchmark.
pub(crate) fn run() -> Result<()> {
    let limit = raise_nofile()?;
    eprintln!(
        "engine: freeze_all + into_image_fds + restore + retrieve/read/finish every session, \
         best of {RUNS} runs each (fd limit {limit})"
    );
    let registry = registry()?;
    let (small, ()) = best_of(RUNS, || Ok((cycle(&registry, 800)?, ())))?;
    let (large, ()) = best_of(RUNS, || Ok((cycle(&registry, 8000)?, ())))?;
    put("engine_cycle_8000_ms", ms(large));
    put("engine_cycle_800_ms", ms(small));
    put(
        "engine_cycle_ratio",
        ratio(large.as_secs_f64(), small.as_secs_f64()),
    );
    put(
        "engine_us_per_session",
        format!("{:.1}", large.as_secs_f64() * 1e6 / 8000.0),
    );
    Ok(())
}
