//! The channel driver: copy channels that are persistent worker threads.
//!
//! [`Channels`] starts one thread per channel, optionally pinned to a CPU, that waits for work.
//! For each batch it gives every channel a contiguous share of about equal bytes (a unit is cut
//! only when units are large against a share, as one 1 GiB unit over two channels is), cut
//! into *slices* of about [`SLICE_BYTES`], and waits. A channel streams its share slice after
//! slice, in order, in chunks of [`ChannelConfig::chunk_bytes`], marks every unit it completed
//! and bumps a progress counter after every chunk. A channel that runs out of slices takes the
//! last slice of the channel with the most left: channels do not get equal bandwidth, and
//! without that the faster one would idle until the slower ended the batch. A channel whose
//! counter does not move for [`ChannelConfig::stall_timeout`] is told to stop after its current
//! chunk; a channel that stops or fails gives up the slices it had not started, which nobody
//! takes: its unfinished units fall back to the CPU. Batches are serialized: one batch at a
//! time over all channels.

use std::collections::VecDeque;
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

/// About how much of a batch one slice holds, the unit of work an idle channel takes from
/// another: small enough that channels end a batch at most one slice's copy apart (about
/// 0.2 ms at 5 GB/s), large enough that taking one costs nothing against copying it.
pub const SLICE_BYTES: u64 = 1 << 20;

/// The most slices a channel's share is cut into.
const MAX_SLICES: u64 = 64;

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

    /// The outcomes of one batch cut at `cuts` into `slices` slices per channel: for every
    /// channel, what it did.
    fn dispatch_and_wait(
        &self,
        batch: &mut Batch<'_>,
        cuts: &[Pos],
        slices: usize,
    ) -> Result<Vec<Option<Outcome>>> {
        let first_unit = batch.first_unit();
        let runs = batch.split(cuts)?;
        let n = self.workers.len();
        let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        let mut dispatched = vec![false; n];
        batch::scope(|scope| {
            // Channel `i`'s share is runs `i * slices ..`, in order; its first slice is handed
            // to it with the job, so that it is not taken from it before it starts.
            let mut queues: Vec<Queue> = (0..n).map(|_| Queue::default()).collect();
            for (index, run) in runs.into_iter().enumerate() {
                if let Some(queue) = queues.get_mut(index / slices.max(1))
                    && !run.is_empty()
                {
                    queue.slices.push_back(scope.lend(run));
                }
            }
            let firsts: Vec<Option<Lent>> = queues
                .iter_mut()
                .map(|queue| queue.slices.pop_front())
                .collect();
            let board = Arc::new(Board {
                queues: Mutex::new(queues),
            });
            for (index, first) in firsts.into_iter().enumerate() {
                let Some(first) = first else { continue };
                let job = Job {
                    first,
                    board: Arc::clone(&board),
                    channel: index,
                    first_unit,
                    chunk: self.config.chunk_bytes,
                    faults: self.faults.clone(),
                };
                if self.workers[index].dispatch(job) {
                    dispatched[index] = true;
                } else {
                    outcomes[index] = Some(Outcome::failed(Error::ChannelGone { channel: index }));
                }
            }
            // The slices nobody takes are returned when the last job drops the board.
            drop(board);
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
        let n = self.workers.len();
        let slices = slices_per_channel(batch.units(), n);
        let cuts = even_cuts(batch.units(), n * slices);
        let outcomes = self.dispatch_and_wait(batch, &cuts, slices)?;

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

/// How many slices each of `n` channels' shares of `units` is cut into: one with one channel
/// (there is nobody to take work from it), else about [`SLICE_BYTES`] each, at most
/// [`MAX_SLICES`].
pub(crate) fn slices_per_channel(units: &[Unit], n: usize) -> usize {
    if n <= 1 {
        return 1;
    }
    let total: u64 = units.iter().map(|u| u.len as u64).sum();
    (total / n as u64 / SLICE_BYTES).clamp(1, MAX_SLICES) as usize
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
}

/// The job handed to a channel and the outcome it hands back.
#[derive(Debug, Default)]
struct Slot {
    job: Option<Job>,
    outcome: Option<Outcome>,
    /// Set by the driver: the thread must end.
    quit: bool,
    /// Set by the thread as it ends: no job will be taken any more.
    gone: bool,
}

/// A channel's share of a batch: its first slice, and the board holding the rest of every
/// channel's share.
#[derive(Debug)]
struct Job {
    first: Lent,
    board: Arc<Board>,
    /// The channel's own queue on the board.
    channel: usize,
    first_unit: u64,
    chunk: usize,
    faults: Faults,
}

/// The slices of one batch that no channel has started yet, a queue per channel.
#[derive(Debug)]
struct Board {
    queues: Mutex<Vec<Queue>>,
}

/// One channel's slices not yet started, in order.
#[derive(Debug, Default)]
struct Queue {
    slices: VecDeque<Lent>,
    /// Set when the channel stops early: its slices are left to the CPU, not taken.
    closed: bool,
}

impl Board {
    /// The next slice for channel `channel`: the first of its own, else the last of the open
    /// queue with the most slices left.
    fn next(&self, channel: usize) -> Option<Lent> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(own) = queues.get_mut(channel)
            && let Some(slice) = own.slices.pop_front()
        {
            return Some(slice);
        }
        queues
            .iter_mut()
            .filter(|q| !q.closed)
            .max_by_key(|q| q.slices.len())
            .and_then(|q| q.slices.pop_back())
    }

    /// Closes channel `channel`'s queue; its slices are returned as the caller drops them.
    fn close(&self, channel: usize) -> VecDeque<Lent> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.get_mut(channel) {
            Some(queue) => {
                queue.closed = true;
                std::mem::take(&mut queue.slices)
            }
            None => VecDeque::new(),
        }
    }
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
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("luo-copy-{index}"))
            .spawn(move || {
                let _exit = OnExit(&thread_shared);
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

    /// Hands `job` to the channel; false (and the job dropped, returning its run) if the
    /// channel's thread has ended.
    fn dispatch(&self, job: Job) -> bool {
        self.shared.cancel.store(false, Ordering::Relaxed);
        let mut slot = self.shared.lock();
        if slot.gone {
            return false;
        }
        slot.outcome = None;
        slot.job = Some(job);
        drop(slot);
        self.shared.wake.notify_one();
        true
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

/// Runs when a channel's thread ends, also by a panic: marks the channel gone and returns a
/// run it had not taken yet, so that no `copy_batch` waits for it for ever.
struct OnExit<'s>(&'s Shared);

impl Drop for OnExit<'_> {
    fn drop(&mut self) {
        let job = {
            let mut slot = self.0.lock();
            slot.gone = true;
            slot.job.take()
        };
        drop(job);
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
            catch_unwind(AssertUnwindSafe(|| copy_share(&job, shared))).unwrap_or_else(|_| {
                drop(job.board.close(job.channel));
                Outcome::failed(Error::ChannelPanicked {
                    channel: shared.index,
                })
            });
        shared.lock().outcome = Some(outcome);
        // Returning the slices lets the driver's `copy_batch` finish: the outcome is in place.
        drop(job);
    }
}

/// Copies a job's share, slice after slice, then slices taken from other channels; on a
/// stop or a failure gives up the slices it has not started.
fn copy_share(job: &Job, shared: &Shared) -> Outcome {
    let channel = shared.index;
    let cancelled = || shared.cancel.load(Ordering::Relaxed);
    if let Some(stall) = job.faults.stall(channel) {
        let until = Instant::now().checked_add(stall);
        while !cancelled() && until.is_none_or(|u| Instant::now() < u) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(
        !job.faults.panics(channel),
        "copy channel {channel}: injected panic"
    );
    let mut copy = ShareCopy {
        job,
        shared,
        reached: 0,
        fail_after: job.faults.channel_fails_after(channel),
        out: Outcome::default(),
    };
    let mut more = copy.slice(job.first.run());
    while more {
        let Some(slice) = job.board.next(job.channel) else {
            break;
        };
        more = copy.slice(slice.run());
    }
    if !more {
        drop(job.board.close(job.channel));
    }
    copy.out
}

/// A channel's progress through its share.
struct ShareCopy<'j> {
    job: &'j Job,
    shared: &'j Shared,
    /// Pieces reached so far, over every slice.
    reached: u64,
    fail_after: Option<u64>,
    out: Outcome,
}

impl ShareCopy<'_> {
    /// Copies one slice, chunk by chunk; false if the channel must stop (stopped by the
    /// driver, or failed).
    fn slice(&mut self, run: &Run<'_>) -> bool {
        let channel = self.shared.index;
        let shared = self.shared;
        let cancelled = || shared.cancel.load(Ordering::Relaxed);
        let job = self.job;
        let mut walk = Walk {
            run,
            shared,
            from: run.start(),
            bytes: 0,
            whole: 0..0,
            whole_bytes: 0,
            partial: Vec::new(),
            out: std::mem::take(&mut self.out),
        };
        let mut go_on = true;
        'pieces: for piece in run.pieces() {
            let reached = self.reached;
            self.reached += 1;
            if cancelled() {
                go_on = false;
                break;
            }
            if self.fail_after.is_some_and(|n| reached >= n) {
                walk.flush(piece.start_pos());
                walk.out
                    .error
                    .get_or_insert(Error::ChannelFailed { channel });
                go_on = false;
                break;
            }
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
                    go_on = false;
                    break 'pieces;
                }
            }
            walk.bytes += piece.end - offset;
            walk.wait_on(piece);
            if walk.bytes == job.chunk {
                walk.flush(piece.end_pos());
            }
        }
        if go_on && !cancelled() {
            walk.flush(run.end());
        } else {
            go_on = false;
        }
        if walk.out.error.is_some() {
            go_on = false;
        }
        self.out = walk.out;
        go_on
    }
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
/// complete once it is copied (whole units, consecutive, and the cut units at the run's ends).
struct Walk<'r> {
    run: &'r Run<'r>,
    shared: &'r Shared,
    from: Pos,
    bytes: usize,
    whole: std::ops::Range<usize>,
    whole_bytes: u64,
    partial: Vec<Piece>,
    out: Outcome,
}

impl Walk<'_> {
    /// Makes `piece` complete when the current chunk is copied.
    fn wait_on(&mut self, piece: Piece) {
        if !piece.whole {
            self.partial.push(piece);
        } else if self.whole.is_empty() {
            self.whole = piece.unit..piece.unit + 1;
            self.whole_bytes = piece.len() as u64;
        } else {
            // Pieces come in unit order and a fault flushes before it skips a unit, so whole
            // pieces waiting are always consecutive units.
            debug_assert_eq!(self.whole.end, piece.unit);
            self.whole.end = piece.unit + 1;
            self.whole_bytes += piece.len() as u64;
        }
    }

    /// Copies the chunk from `from` to `to`, completes the pieces waiting on it, and starts
    /// the next chunk at `to`.
    fn flush(&mut self, to: Pos) {
        let copied = self.run.copy(self.from, to);
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
        let whole = std::mem::replace(&mut self.whole, 0..0);
        let mut partial = std::mem::take(&mut self.partial);
        match copied {
            Ok(_) => {
                self.out.units += whole.len() as u64;
                self.out.bytes += self.whole_bytes;
                whole.for_each(|unit| self.run.mark(unit));
                partial.iter().for_each(|&p| self.complete(p));
            }
            Err(e) => {
                self.out.error.get_or_insert(e);
            }
        }
        partial.clear();
        self.partial = partial;
        self.whole_bytes = 0;
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
pub(crate) struct Faults(());

#[cfg(not(feature = "fault-injection"))]
impl Faults {
    fn stall(&self, _channel: usize) -> Option<Duration> {
        None
    }

    fn channel_fails_after(&self, _channel: usize) -> Option<u64> {
        None
    }

    fn panics(&self, _channel: usize) -> bool {
        false
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
