//! luod's batch copy engine: moves memory in batches of units (4 KiB, 2 MiB or 1 GiB) over
//! several copy channels, with a per-unit completion mark so that whatever a channel leaves
//! undone is copied by the CPU, and counters of what went where. It is how luod re-backs a
//! preserved memory file (4 KiB pages onto a 1 GiB page, one NUMA node onto another), after the
//! kernel's migrate offload (AMD's batch migration RFC and its `dcbm` driver, Zi Yan's
//! multi-threaded folio copy).
//!
//! The principal types:
//!
//! - [`Engine`]: cuts a copy into batches ([`EngineConfig`]), hands each to the active driver
//!   or copies it on the caller's thread (the CPU path, also the baseline), copies the units a
//!   driver did not complete (the fallback), and keeps the [`Stats`]. At most one driver is
//!   active: [`Engine::register`] refuses a second until [`Engine::unregister`] removes the
//!   first.
//! - [`Driver`]: the two decisions per batch, [`should_batch`](Driver::should_batch) (the
//!   policy: offload at all?) and [`copy_batch`](Driver::copy_batch) (copy, marking every unit
//!   completed).
//! - [`Channels`]: the driver of the product, `n` persistent worker threads
//!   ([`ChannelConfig`]: count, CPU pinning, policy threshold, stall timeout). Each batch is cut
//!   into `n` contiguous shares of about equal size, so each channel streams through memory,
//!   and each share into slices of about [`SLICE_BYTES`]: a channel that runs out takes the
//!   last slice another has not started, so the faster channel does not idle.
//! - [`Mapping`]: a shared mapping of a memfd, for [`Engine::copy_mapped`], memory another
//!   process may write while it is copied (a running guest's RAM).
//! - [`Batch`], [`Run`], [`Unit`], [`Pos`]: what a driver works on. The `unsafe` code of the
//!   crate is confined to the module behind `Batch`, `Run` and `Mapping`, which only hand out
//!   disjoint parts of a batch's memory.
//! - [`Stats`] and [`ChannelStats`]: batches, units and bytes per channel, units that fell
//!   back, batches the policy kept on the CPU, time spent. [`Engine::stats`] is a cheap
//!   snapshot for luod's status.
//! - With the `fault-injection` feature, for tests only: `FaultDriver` and `FaultPlan`, which
//!   fail chosen units or whole channels, or stall.
//!
//! ```
//! use std::sync::Arc;
//! use luo_copy::{ChannelConfig, Channels, Engine, EngineConfig, Reason, UnitSize};
//!
//! let engine = Engine::new(EngineConfig::default());
//! engine.register(Arc::new(Channels::new(ChannelConfig::new(2))?))?;
//!
//! let src: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
//! let mut dst = vec![0u8; src.len()];
//! let stats = engine.copy(&src, &mut dst, UnitSize::Base4K, Reason::Rebacking)?;
//! assert_eq!(dst, src);
//! assert_eq!(stats.units, 4096);
//! assert_eq!(stats.units_offloaded() + stats.units_fallback, 4096);
//! assert_eq!(stats.channels.len(), 2);
//!
//! // One driver at a time.
//! let second = Arc::new(Channels::new(ChannelConfig::new(1))?);
//! assert!(engine.register(second.clone()).is_err());
//! engine.unregister("channels")?;
//! engine.register(second)?;
//! assert_eq!(engine.stats().driver.as_deref(), Some("channels"));
//! # Ok::<(), luo_copy::Error>(())
//! ```
#![deny(unsafe_code)]

mod batch;
mod channel;
mod driver;
mod engine;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod stats;
mod unit;

pub use batch::{Batch, Mapping, Piece, Pos, Run};
pub use channel::{ChannelConfig, Channels, MAX_CHANNELS, SLICE_BYTES};
pub use driver::{BatchInfo, Driver, Reason};
pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
#[cfg(feature = "fault-injection")]
pub use fault::{ChannelFault, FaultDriver, FaultLog, FaultPlan, Stall};
pub use stats::{ChannelStats, Stats};
pub use unit::{Unit, UnitSize};
