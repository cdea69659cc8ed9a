//! The fault-injecting driver, for tests and benchmarks only (feature `fault-injection`).
//!
//! [`FaultDriver`] is the [`Channels`] driver with a [`FaultPlan`] threaded through its
//! channels: it fails chosen units (copying half of each, so a missing fallback shows in the
//! bytes), fails a whole channel after a number of units, stalls a channel, overrides the
//! policy, or, to prove that a tester notices, claims units it never copied. [`FaultLog`]
//! counts what it did.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::batch::Batch;
use crate::channel::{ChannelConfig, Channels, UnitFault};
use crate::driver::{BatchInfo, Driver};
use crate::error::Result;

/// A whole channel failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelFault {
    /// The channel.
    pub channel: usize,
    /// Pieces (units, or parts of cut units) it copies in each batch before failing; 0: it
    /// copies nothing.
    pub after_units: u64,
}

/// A channel stalling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The channel.
    pub channel: usize,
    /// How long it stalls before copying (`Duration::MAX`: until it is stopped).
    pub duration: Duration,
    /// In how many batches (the first ones it is given).
    pub batches: u64,
}

/// What a [`FaultDriver`] does wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Units (their index in the copy, counted over its batches) that a channel copies half of
    /// and reports not copied.
    pub fail_units: BTreeSet<u64>,
    /// Units a channel reports copied without copying them: a broken driver, which a tester
    /// must catch.
    pub lie_units: BTreeSet<u64>,
    /// A channel that fails.
    pub fail_channel: Option<ChannelFault>,
    /// A channel that stalls.
    pub stall: Option<Stall>,
    /// Overrides the policy: `Some(false)` keeps every batch on the CPU, `Some(true)` offloads
    /// every batch.
    pub offload: Option<bool>,
}

/// What a [`FaultDriver`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultLog {
    /// Unit pieces it failed.
    pub units_failed: u64,
    /// Unit pieces it claimed without copying.
    pub units_lied: u64,
    /// Batches in which the failing channel was given a run (and so failed in it, unless the
    /// run was shorter than `after_units`).
    pub channel_failures: u64,
    /// Stalls begun.
    pub stalls: u64,
}

#[derive(Debug, Default)]
struct State {
    plan: FaultPlan,
    stalls_left: AtomicU64,
    units_failed: AtomicU64,
    units_lied: AtomicU64,
    channel_failures: AtomicU64,
    stalls: AtomicU64,
}

/// The faults a channel consults (none, unless the driver is a [`FaultDriver`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults(Option<Arc<State>>);

impl Faults {
    /// How long channel `channel` stalls before this batch.
    pub(crate) fn stall(&self, channel: usize) -> Option<Duration> {
        let state = self.0.as_ref()?;
        let stall = state.plan.stall.filter(|s| s.channel == channel)?;
        state
            .stalls_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        state.stalls.fetch_add(1, Ordering::Relaxed);
        Some(stall.duration)
    }

    /// After how many pieces channel `channel` fails in this batch.
    pub(crate) fn channel_fails_after(&self, channel: usize) -> Option<u64> {
        let state = self.0.as_ref()?;
        let fault = state.plan.fail_channel.filter(|f| f.channel == channel)?;
        state.channel_failures.fetch_add(1, Ordering::Relaxed);
        Some(fault.after_units)
    }

    /// What happens to unit `unit` of the copy.
    pub(crate) fn unit(&self, unit: u64) -> UnitFault {
        let Some(state) = &self.0 else {
            return UnitFault::None;
        };
        if state.plan.fail_units.contains(&unit) {
            state.units_failed.fetch_add(1, Ordering::Relaxed);
            UnitFault::Fail
        } else if state.plan.lie_units.contains(&unit) {
            state.units_lied.fetch_add(1, Ordering::Relaxed);
            UnitFault::Lie
        } else {
            UnitFault::None
        }
    }
}

/// The channel driver with faults injected: not the product.
#[derive(Debug)]
pub struct FaultDriver {
    channels: Channels,
    state: Arc<State>,
}

impl FaultDriver {
    /// Starts `config`'s channels with `plan`'s faults, under the name `faulty`.
    pub fn new(config: ChannelConfig, plan: FaultPlan) -> Result<FaultDriver> {
        let state = Arc::new(State {
            stalls_left: AtomicU64::new(plan.stall.map_or(0, |s| s.batches)),
            plan,
            ..State::default()
        });
        let channels = Channels::start("faulty", config, Faults(Some(Arc::clone(&state))))?;
        Ok(FaultDriver { channels, state })
    }

    /// The plan it follows.
    pub fn plan(&self) -> &FaultPlan {
        &self.state.plan
    }

    /// What it has done so far.
    pub fn log(&self) -> FaultLog {
        let s = &self.state;
        FaultLog {
            units_failed: s.units_failed.load(Ordering::Relaxed),
            units_lied: s.units_lied.load(Ordering::Relaxed),
            channel_failures: s.channel_failures.load(Ordering::Relaxed),
            stalls: s.stalls.load(Ordering::Relaxed),
        }
    }
}

impl Driver for FaultDriver {
    fn name(&self) -> &str {
        self.channels.name()
    }

    fn channels(&self) -> usize {
        self.channels.channels()
    }

    fn should_batch(&self, info: &BatchInfo) -> bool {
        self.state
            .plan
            .offload
            .unwrap_or_else(|| self.channels.should_batch(info))
    }

    fn copy_batch(&self, batch: &mut Batch<'_>) -> Result<()> {
        self.channels.copy_batch(batch)
    }
}
