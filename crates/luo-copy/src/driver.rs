//! The copy driver: what copies a batch, and whether it should.

use std::fmt;

use crate::batch::Batch;
use crate::error::Result;
use crate::unit::UnitSize;

/// Why memory is being copied: the policy's input, as the kernel's migrate reason is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Re-backing a preserved memory file (`luoctl migrate`): throughput counts.
    Rebacking,
    /// A pre-copy round of a live migration, while the guest runs.
    PreCopy,
    /// The final copy of a live migration, while the guest is paused: latency counts.
    Blackout,
    /// Anything else (benchmarks, tests).
    Other,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Rebacking => "rebacking",
            Reason::PreCopy => "pre-copy",
            Reason::Blackout => "blackout",
            Reason::Other => "other",
        })
    }
}

/// What the policy is told about a batch before it is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// Bytes in the batch.
    pub bytes: u64,
    /// Units in the batch.
    pub units: usize,
    /// The request's unit size (every unit is at most this long).
    pub unit_size: UnitSize,
    /// Why the copy is made.
    pub reason: Reason,
}

/// A copy driver: the engine's two decisions about every batch, as in the kernel's migrate
/// offload (`struct migrator`: `should_batch` and `migrate_offc`).
///
/// The [`Engine`](crate::Engine) has at most one active driver. For every batch it asks
/// [`should_batch`](Driver::should_batch); if the answer is no it copies the batch on the CPU
/// itself. Otherwise it calls [`copy_batch`](Driver::copy_batch), then copies on the CPU, one
/// by one, every unit the driver did not mark as copied. So a driver may fail any part of a
/// batch, or all of it, and the bytes come out the same.
///
/// A driver is shared between the engine and the threads that copy through it: both methods
/// take `&self` and may be called from several threads (a driver serializes batches itself if
/// it must).
pub trait Driver: Send + Sync + fmt::Debug {
    /// The driver's name, as shown in [`Stats::driver`](crate::Stats::driver) and in errors.
    fn name(&self) -> &str;

    /// How many channels it copies with: channel indices passed to
    /// [`Batch::credit`] are below this.
    fn channels(&self) -> usize;

    /// Decides whether the batch is offloaded at all. Called once per batch, before
    /// [`copy_batch`](Driver::copy_batch); `false` keeps the batch on the caller's CPU (counted
    /// in [`Stats::batches_cpu_policy`](crate::Stats::batches_cpu_policy)). It must be cheap:
    /// it runs on the copying thread.
    fn should_batch(&self, info: &BatchInfo) -> bool;

    /// Copies the batch. Required. For every unit it copied completely it calls
    /// [`Batch::mark`] (directly or through a [`Run`](crate::Run)), and for every channel it
    /// credits the units and bytes that channel copied with [`Batch::credit`].
    ///
    /// It must not return while anything it started may still touch the batch's memory. An
    /// error says the driver left some units undone (a stalled or failed channel); the marks
    /// say which. Undoing is never needed: an unmarked unit is simply copied again on the CPU.
    fn copy_batch(&self, batch: &mut Batch<'_>) -> Result<()>;
}
