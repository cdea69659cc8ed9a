//! The crate's error: one variant per failed step.

use std::time::Duration;

use crate::batch::Pos;
use crate::unit::UnitSize;

/// Something the copy engine or one of its drivers could not do.
///
/// A driver's failure during a batch (a stalled or failed channel) never fails the copy: the
/// engine copies what the driver left undone on the CPU and records the error in
/// [`Stats::last_error`](crate::Stats::last_error). What [`Engine::copy`](crate::Engine::copy)
/// returns as an error is a request it refused before copying anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A driver is registered while another is active.
    #[error("Copy driver {active:?} is active; unregister it before registering {refused:?}")]
    DriverActive {
        /// The active driver's name.
        active: String,
        /// The name of the driver refused.
        refused: String,
    },
    /// Unregistering a driver that is not the active one.
    #[error("Copy driver {name:?} is not the active driver")]
    NotActive {
        /// The name asked for.
        name: String,
    },
    /// Source and destination differ in length.
    #[error("Source is {src} bytes but destination is {dst}")]
    LengthMismatch {
        /// Source length.
        src: usize,
        /// Destination length.
        dst: usize,
    },
    /// A unit is empty or longer than the batch's unit size.
    #[error("Unit {index} is {len} bytes: not 1 to {unit} bytes", unit = unit.bytes())]
    UnitLength {
        /// The unit's index in the request.
        index: usize,
        /// Its length.
        len: usize,
        /// The unit size of the request.
        unit: UnitSize,
    },
    /// A unit reaches past the end of the source or the destination.
    #[error("Unit {index} lies outside the source or the destination")]
    UnitOutOfBounds {
        /// The unit's index in the request.
        index: usize,
    },
    /// A unit's destination starts before the previous unit's ends.
    #[error("Unit {index}'s destination overlaps or precedes the previous unit's")]
    UnitOrder {
        /// The unit's index in the request.
        index: usize,
    },
    /// A unit size name other than `4k`, `2m` or `1g`.
    #[error("Unknown unit size {0:?}: expected 4k, 2m or 1g")]
    UnknownUnitSize(String),
    /// A channel count of zero or above [`MAX_CHANNELS`](crate::MAX_CHANNELS).
    #[error("Channel count {0} is not 1 to {max}", max = crate::MAX_CHANNELS)]
    ChannelCount(usize),
    /// A copy channel's thread could not be started.
    #[error("Cannot start copy channel {channel}")]
    Spawn {
        /// The channel.
        channel: usize,
        /// What the system answered.
        #[source]
        source: std::io::Error,
    },
    /// A copy channel could not be pinned to its CPU.
    #[error("Cannot pin copy channel {channel} to CPU {cpu}")]
    Pin {
        /// The channel.
        channel: usize,
        /// The CPU asked for.
        cpu: usize,
        /// What the kernel answered.
        #[source]
        source: rustix::io::Errno,
    },
    /// A driver split a batch at a position out of order or outside the batch.
    #[error("Split position {0:?} is out of order or outside the batch")]
    BadSplit(Pos),
    /// A driver asked a run to copy bytes outside it.
    #[error("Copy from {from:?} to {to:?} is outside the run")]
    OutsideRun {
        /// Start of the copy asked for.
        from: Pos,
        /// End of the copy asked for.
        to: Pos,
    },
    /// A channel made no progress for the stall timeout and was stopped.
    #[error("Copy channel {channel} stalled: no progress in {waited:?}")]
    Stalled {
        /// The channel.
        channel: usize,
        /// How long it went without progress.
        waited: Duration,
    },
    /// A channel reported a failure (a fault-injecting driver's failed channel).
    #[error("Copy channel {channel} failed")]
    ChannelFailed {
        /// The channel.
        channel: usize,
    },
    /// A channel's thread panicked during a batch.
    #[error("Copy channel {channel} panicked")]
    ChannelPanicked {
        /// The channel.
        channel: usize,
    },
    /// A channel's thread is gone.
    #[error("Copy channel {channel} is gone")]
    ChannelGone {
        /// The channel.
        channel: usize,
    },
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;
