//! The channel driver: copy channels that are persistent worker threads.
//!
//! [`Channels`] starts one thread per channel, optionally pinned to a CPU, that waits for work.
//! For each batch it cuts the batch into as many contiguous runs of about equal bytes as it has
//! channels (a unit is cut only when units are large against a channel's share, as one 1 GiB
//! unit over two channels is), lends each run to its channel, and waits. A channel streams its
//! run in chunks of [`ChannelConfig::chunk_bytes`], marks every unit it completed and bumps a
//! progress counter after every chunk. A channel whose counter does not move for
//! [`ChannelConfig::stall_timeout`] is told to stop after its current chunk; its unfinished
//! units fall back to the CPU. Batches are serialized: one batch at a time over all channels.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{self, Batch, Lent, Piece, Pos, Run};
use crate::driver::{BatchInfo, Driver};
use crate::error::{Error, Result};
use crate::unit::Unit;

/// The most channels a [`Channels`] driver may have.
pub const MAX_CHANNELS: usize = 64;

/// How a [`Channels`] driver is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Channels (threads), 1 to [`MAX_CHANNELS`].
    pub channels: usize,
    /// CPUs to pin the channels to: channel `i` runs on `cpus[i % cpus.len()]`. Empty: not
    /// pinned.
    pub cpus: Vec<usize>,
    /// The policy: batches smaller than this stay on the caller's CPU, where handing them to
    /// the channels would cost more than it gains.
    pub min_offload_bytes: u64,
    /// A channel that copies nothing for this long is stopped and its units fall back.
    pub stall_timeout: Duration,
    /// The most a channel copies between two looks at whether it must stop (and between two
    /// progress marks).
    pub chunk_bytes: usize,
}

impl ChannelConfig {
    /// `channels` unpinned channels, offloading batches of 1 MiB or more, stopping a channel
    /// that stalls for a second, in chunks of 2 MiB.
    pub fn new(channels: usize) -> ChannelConfig {
        ChannelConfig {
            channels,
            cpus: Vec::new(),
            min_offload_bytes: 1 << 20,
            stall_timeout: Duration::from_secs(1),
            chunk_bytes: 2 << 20,
        }
    }

    /// The same, with channel `i` pinned to `cpus[i % cpus.len()]`.
    pub fn pinned(mut self, cpus: Vec<usize>) -> ChannelConfig {
        self.cpus = cpus;
        self
    }

    /// The same, offloading batches of `bytes` or more.
    pub fn min_offload_bytes(mut self, bytes: u64) -> ChannelConfig {
        self.min_offload_bytes = bytes;
        self
    }

    /// The same, with another stall timeout.
    pub fn stall_timeout(mut self, timeout: Duration) -> ChannelConfig {
        self.stall_timeout = timeout;
        self
    }

    /// The same, with chunks of `bytes` (at least 4 KiB).
    pub fn chunk_bytes(mut self, bytes: usize) -> ChannelConfig {
        self.chunk_bytes = bytes.max(4096);
        self
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig::new(1)
    }
}

/// The channel driver: `n` worker threads, each a copy channel. Dropping it stops and joins
/// them.
#[derive(Debug)]
pub struct Channels {
    name: String,
    config: ChannelConfig,
    workers: Vec<Worker>,
    /// One batch at a time.
    serial: Mutex<()>,
    faults: Faults,
}

impl Channels {
    /// Starts the channels; fails if a thread cannot be started or pinned (the channels
    /// started so far are stopped again).
    pub fn new(config: ChannelConfig) -> Result<Channels> {
        Channels::start("channels", config, Faults::default())
    }

    /// What it was started with.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    pub(crate) fn start(name: &str, config: ChannelConfig, faults: Faults) -> Result<Channels> {
        if config.channels == 0 || config.channels > MAX_CHANNELS {
            return Err(Error::ChannelCount(config.channels));
        }
        let mut config = config;
        config.chunk_bytes = config.chunk_bytes.max(4096);
        let mut channels = Channels {
            name: name.to_owned(),
            workers: Vec::with_capacity(config.channels),
            config,
            serial: Mutex::new(()),
            faults,
        };
        for index in 0..channels.config.channels {
            let cpu = match channels.config.cpus.as_slice() {
                [] => None,
                cpus => Some(cpus[index % cpus.len()]),
            };
            // On failure `channels` is dropped, which stops the workers already started.
            let worker = Worker::start(index, cpu)?;
            channels.workers.push(worker);
        }
        Ok(channels)
    }

    /// The run outcomes of one batch: for every channel, what its run left.
    fn dispatch_and_wait(
        &self,
        batch: &mut Batch<'_>,
        cuts: &[Pos],
    ) -> Result<Vec<Option<Outcome>>> {
        let first_unit = batch.first_unit();
        let mut runs = batch.split(cuts)?;
        let n = self.workers.len();
        let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        let mut dispatched = vec![false; n];
        batch::scope(|scope| {
            for (index, run) in runs.drain(..).enumerate() {
                let Some(worker) = self.workers.get(index) else {
                    break;
                };
                if run.is_empty() {
                    continue;
                }
                if !worker.shared.alive.load(Ordering::Acquire) {
                    outcomes[index] = Some(Outcome::failed(Error::ChannelGone { channel: index }));
                    continue;
                }
                worker.dispatch(Job {
                    lent: scope.lend(run),
                    first_unit,
                    chunk: self.config.chunk_bytes,
                    faults: self.faults.clone(),
                });
                dispatched[index] = true;
            }
            // Watch the channels' progress while they copy; stop those that stall.
            let mut seen: Vec<u64> = self.workers.iter().map(Worker::progress).collect();
            while !scope.wait(self.config.stall_timeout) {
                for (index, worker) in self.workers.iter().enumerate() {
                    if !dispatched[index] || worker.finished() {
                        continue;
                    }
                    let now = worker.progress();
                    if now == seen[index] && !worker.shared.cancel.swap(true, Ordering::Relaxed) {
                        outcomes[index] = Some(Outcome::failed(Error::Stalled {
                            channel: index,
                            waited: self.config.stall_timeout,
                        }));
                    }
                    seen[index] = now;
                }
            }
        });
        for (index, worker) in self.workers.iter().enumerate() {
            if !dispatched[index] {
                continue;
            }
            let Some(mut outcome) = worker.take_outcome() else {
                outcomes[index] = Some(Outcome::failed(Error::ChannelGone { channel: index }));
                continue;
            };
            // A stalled channel's own account of what it did stands; the error is the stall.
            if let Some(Outcome { error, .. }) = outcomes[index].take() {
                outcome.error = error.or(outcome.error);
            }
            outcomes[index] = Some(outcome);
        }
        Ok(outcomes)
    }
}

impl Driver for Channels {
    fn name(&self) -> &str {
        &self.name
    }

    fn channels(&self) -> usize {
        self.workers.len()
    }

    fn should_batch(&self, info: &BatchInfo) -> bool {
        info.bytes >= self.config.min_offload_bytes
    }

    fn copy_batch(&self, batch: &mut Batch<'_>) -> Result<()> {
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let cuts = even_cuts(batch.units(), self.workers.len());
        let outcomes = self.dispatch_and_wait(batch, &cuts)?;

        // Whole units are marked by the channels; credit them, and gather the pieces of units
        // cut between channels: such a unit is copied if every piece of it is.
        let mut pieces: Vec<(usize, usize, u64)> = Vec::new();
        let mut error = None;
        for (channel, outcome) in outcomes.into_iter().enumerate() {
            let Some(outcome) = outcome else { continue };
            if outcome.units > 0 || outcome.bytes > 0 {
                batch.credit(channel, outcome.units, outcome.bytes);
            }
            pieces.extend(
                outcome
                    .pieces
                    .iter()
                    .map(|&(unit, len)| (unit, channel, len)),
            );
            if error.is_none() {
                error = outcome.error;
            }
        }
        pieces.sort_unstable();
        for group in pieces.chunk_by(|a, b| a.0 == b.0) {
            let unit = group[0].0;
            let copied: u64 = group.iter().map(|p| p.2).sum();
            if copied == batch.units()[unit].len as u64 {
                batch.mark(unit);
                batch.credit(group[0].1, 1, 0);
                for &(_, channel, len) in group {
                    batch.credit(channel, 0, len);
                }
            }
        }
        error.map_or(Ok(()), Err)
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.shared.lock().quit = true;
            worker.shared.wake.notify_one();
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                // A worker that panicked outside a batch has nothing left to report.
                let _ = thread.join();
            }
        }
    }
}

/// Where to cut `units` into `n` runs of about equal bytes: at unit boundaries when units are
/// small against a run (at most an eighth of it), else inside units, 4 KiB-aligned.
pub(crate) fn even_cuts(units: &[Unit], n: usize) -> Vec<Pos> {
    let total: u64 = units.iter().map(|u| u.len as u64).sum();
    let share = (total / n.max(1) as u64).max(1);
    let mut cuts: Vec<Pos> = Vec::with_capacity(n.saturating_sub(1));
    let (mut unit, mut before) = (0usize, 0u64);
    for k in 1..n as u64 {
        let target = total * k / n as u64;
        while unit < units.len() && before + units[unit].len as u64 <= target {
            before += units[unit].len as u64;
            unit += 1;
        }
        let cut = match units.get(unit) {
            None => Pos::unit(units.len()),
            Some(u) => {
                let offset = (target - before) as usize;
                if (u.len as u64) * 8 <= share {
                    if offset * 2 < u.len {
                        Pos::unit(unit)
                    } else {
                        Pos::unit(unit + 1)
                    }
                } else {
                    Pos {
                        unit,
                        offset: offset & !4095,
                    }
                }
            }
        };
        let cut = cuts.last().map_or(cut, |&last| last.max(cut));
        cuts.push(cut);
    }
    cuts
}

/// One channel: its thread and what it shares with the driver.
#[derive(Debug)]
struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What a channel's thread shares with the driver.
#[derive(Debug)]
struct Shared {
    index: usize,
    slot: Mutex<Slot>,
    /// Signalled when a job is put in the slot, or `quit` set.
    wake: Condvar,
    /// Set by the driver: stop after the current chunk.
    cancel: AtomicBool,
    /// Chunks copied, ever.
    progress: AtomicU64,
    /// Cleared when the thread ends.
    alive: AtomicBool,
}

/// The job handed to a channel and the outcome it hands back.
#[derive(Debug, Default)]
struct Slot {
    job: Option<Job>,
    outcome: Option<Outcome>,
    quit: bool,
}

/// A run to copy.
#[derive(Debug)]
struct Job {
    lent: Lent,
    first_unit: u64,
    chunk: usize,
    faults: Faults,
}

/// What a channel did with its run.
#[derive(Debug, Default)]
struct Outcome {
    /// Whole units completed (and marked).
    units: u64,
    /// Their bytes.
    bytes: u64,
    /// Pieces of cut units completed: (unit, bytes).
    pieces: Vec<(usize, u64)>,
    /// Why it stopped early.
    error: Option<Error>,
}

impl Outcome {
    fn failed(error: Error) -> Outcome {
        Outcome {
            error: Some(error),
            ..Outcome::default()
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Worker {
    fn start(index: usize, cpu: Option<usize>) -> Result<Worker> {
        let shared = Arc::new(Shared {
            index,
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
            cancel: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            alive: AtomicBool::new(true),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("luo-copy-{index}"))
            .spawn(move || {
                let _alive = ClearOnDrop(&thread_shared.alive);
                let pinned = cpu.map_or(Ok(()), |cpu| pin(index, cpu));
                let ok = pinned.is_ok();
                // The driver waits for this; if it is gone, so is the reason to run.
                if ready_tx.send(pinned).is_err() || !ok {
                    return;
                }
                worker_loop(&thread_shared);
            })
            .map_err(|source| Error::Spawn {
                channel: index,
                source,
            })?;
        let mut worker = Worker {
            shared,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => {
                if let Some(thread) = worker.thread.take() {
                    let _ = thread.join();
                }
                Err(e)
            }
            Err(_) => Err(Error::ChannelGone { channel: index }),
        }
    }

    fn dispatch(&self, job: Job) {
        self.shared.cancel.store(false, Ordering::Relaxed);
        let mut slot = self.shared.lock();
        slot.outcome = None;
        slot.job = Some(job);
        drop(slot);
        self.shared.wake.notify_one();
    }

    fn progress(&self) -> u64 {
        self.shared.progress.load(Ordering::Relaxed)
    }

    fn finished(&self) -> bool {
        self.shared.lock().outcome.is_some()
    }

    fn take_outcome(&self) -> Option<Outcome> {
        self.shared.lock().outcome.take()
    }
}

/// Clears a flag when dropped (when a channel's thread ends, also by a panic).
struct ClearOnDrop<'f>(&'f AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Pins the calling thread (channel `channel`) to `cpu`.
fn pin(channel: usize, cpu: usize) -> Result<()> {
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(Error::Pin {
            channel,
            cpu,
            source: rustix::io::Errno::INVAL,
        });
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(|source| Error::Pin {
        channel,
        cpu,
        source,
    })
}

/// A channel's thread: take a job, copy its run, hand back the outcome, return the run.
fn worker_loop(shared: &Shared) {
    loop {
        let job = {
            let mut slot = shared.lock();
            loop {
                if slot.quit {
                    return;
                }
                if let Some(job) = slot.job.take() {
                    break job;
                }
                slot = shared
                    .wake
                    .wait(slot)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        let outcome =
            catch_unwind(AssertUnwindSafe(|| copy_run(&job, shared))).unwrap_or_else(|_| {
                Outcome::failed(Error::ChannelPanicked {
                    channel: shared.index,
                })
            });
        shared.lock().outcome = Some(outcome);
        // Returning the run lets the driver's `copy_batch` finish: the outcome is in place.
        drop(job);
    }
}

/// Copies a job's run, chunk by chunk.
fn copy_run(job: &Job, shared: &Shared) -> Outcome {
    let run = job.lent.run();
    let channel = shared.index;
    let cancelled = || shared.cancel.load(Ordering::Relaxed);
    if let Some(stall) = job.faults.stall(channel) {
        let until = Instant::now().checked_add(stall);
        while !cancelled() && until.is_none_or(|u| Instant::now() < u) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let fail_after = job.faults.channel_fails_after(channel);
    let mut walk = Walk {
        run,
        shared,
        from: run.start(),
        bytes: 0,
        waiting: Vec::new(),
        out: Outcome::default(),
    };
    let mut reached = 0u64;
    'pieces: for piece in run.pieces() {
        if cancelled() {
            return walk.out;
        }
        if fail_after.is_some_and(|n| reached >= n) {
            walk.flush(piece.start_pos());
            walk.out
                .error
                .get_or_insert(Error::ChannelFailed { channel });
            return walk.out;
        }
        reached += 1;
        match job.faults.unit(job.first_unit + piece.unit as u64) {
            UnitFault::None => {}
            UnitFault::Fail => {
                // Copy half, then give up on the unit: the CPU must redo all of it.
                walk.flush(piece.start_pos());
                let half = Pos {
                    unit: piece.unit,
                    offset: piece.start + piece.len() / 2,
                };
                if let Err(e) = run.copy(piece.start_pos(), half) {
                    walk.out.error.get_or_insert(e);
                }
                walk.from = piece.end_pos();
                continue;
            }
            UnitFault::Lie => {
                // Claim the unit without copying it: a broken driver.
                walk.flush(piece.start_pos());
                walk.from = piece.end_pos();
                walk.complete(piece);
                continue;
            }
        }
        let mut offset = piece.start;
        while piece.end - offset > job.chunk - walk.bytes {
            offset += job.chunk - walk.bytes;
            walk.flush(Pos {
                unit: piece.unit,
                offset,
            });
            if cancelled() {
                break 'pieces;
            }
        }
        walk.bytes += piece.end - offset;
        walk.waiting.push(piece);
        if walk.bytes == job.chunk {
            walk.flush(piece.end_pos());
        }
    }
    if !cancelled() {
        walk.flush(run.end());
    }
    walk.out
}

impl Piece {
    fn start_pos(&self) -> Pos {
        Pos {
            unit: self.unit,
            offset: self.start,
        }
    }

    fn end_pos(&self) -> Pos {
        Pos {
            unit: self.unit,
            offset: self.end,
        }
    }
}

/// A channel's walk through its run: the chunk gathered since `from`, and the pieces that are
/// complete once it is copied.
struct Walk<'r> {
    run: &'r Run<'r>,
    shared: &'r Shared,
    from: Pos,
    bytes: usize,
    waiting: Vec<Piece>,
    out: Outcome,
}

impl Walk<'_> {
    /// Copies the chunk from `from` to `to`, completes the pieces waiting on it, and starts
    /// the next chunk at `to`.
    fn flush(&mut self, to: Pos) {
        let copied = self.run.copy(self.from, to);
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
        let mut waiting = std::mem::take(&mut self.waiting);
        match copied {
            Ok(_) => waiting.iter().for_each(|&p| self.complete(p)),
            Err(e) => {
                self.out.error.get_or_insert(e);
            }
        }
        waiting.clear();
        self.waiting = waiting;
        self.from = to;
        self.bytes = 0;
    }

    /// Records a piece as copied.
    fn complete(&mut self, piece: Piece) {
        if piece.whole {
            self.run.mark(piece.unit);
            self.out.units += 1;
            self.out.bytes += piece.len() as u64;
        } else {
            self.out.pieces.push((piece.unit, piece.len() as u64));
        }
    }
}

/// What the fault plan does to one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) enum UnitFault {
    /// Nothing: copy it.
    None,
    /// Copy half of it and report it not copied.
    Fail,
    /// Report it copied without copying it.
    Lie,
}

#[cfg(feature = "fault-injection")]
pub(crate) use crate::fault::Faults;

/// No faults: what the product is built with.
#[cfg(not(feature = "fault-injection"))]
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults;

#[cfg(not(feature = "fault-injection"))]
impl Faults {
    fn stall(&self, _channel: usize) -> Option<Duration> {
        None
    }

    fn channel_fails_after(&self, _channel: usize) -> Option<u64> {
        None
    }

    fn unit(&self, _unit: u64) -> UnitFault {
        UnitFault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: usize, len: usize) -> Vec<Unit> {
        (0..n)
            .map(|i| Unit {
                src: i * len,
                dst: i * len,
                len,
            })
            .collect()
    }

    #[test]
    fn small_units_are_cut_at_boundaries() {
        assert_eq!(even_cuts(&units(100, 4096), 1), vec![]);
        assert_eq!(even_cuts(&units(100, 4096), 2), vec![Pos::unit(50)]);
        assert_eq!(
            even_cuts(&units(100, 4096), 3),
            vec![Pos::unit(33), Pos::unit(67)]
        );
    }

    #[test]
    fn large_units_are_cut_inside_4k_aligned() {
        let one = units(1, 1 << 30);
        assert_eq!(
            even_cuts(&one, 2),
            vec![Pos {
                unit: 0,
                offset: 1 << 29
            }]
        );
        let three = units(3, 1 << 20);
        let cuts = even_cuts(&three, 2);
        assert_eq!(
            cuts,
            vec![Pos {
                unit: 1,
                offset: 1 << 19
            }]
        );
        // Odd sizes: offsets stay 4 KiB-aligned and in order.
        let odd = units(1, 3 * 4096 + 5);
        let cuts = even_cuts(&odd, 4);
        assert!(cuts.windows(2).all(|w| w[0] <= w[1]));
        assert!(cuts.iter().all(|c| c.offset % 4096 == 0));
    }

    #[test]
    fn more_channels_than_bytes_leave_runs_empty() {
        let cuts = even_cuts(&units(1, 100), 4);
        assert_eq!(cuts.len(), 3);
        assert!(cuts.iter().all(|c| c.unit == 0 && c.offset == 0));
    }

    #[test]
    fn channel_count_is_bounded() {
        assert!(matches!(
            Channels::new(ChannelConfig::new(0)),
            Err(Error::ChannelCount(0))
        ));
        assert!(matches!(
            Channels::new(ChannelConfig::new(MAX_CHANNELS + 1)),
            Err(Error::ChannelCount(_))
        ));
    }

    #[test]
    fn pinning_to_a_missing_cpu_fails_and_stops_the_others() {
        let e = Channels::new(ChannelConfig::new(2).pinned(vec![0, 100_000])).unwrap_err();
        assert!(matches!(e, Error::Pin { channel: 1, .. }), "{e:?}");
    }
}
