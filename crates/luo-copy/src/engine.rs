//! The engine: the one active driver, batching, the CPU path and fallback, the counters.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::batch::Batch;
use crate::driver::{BatchInfo, Driver, Reason};
use crate::error::{Error, Result};
use crate::stats::{ChannelStats, Stats};
use crate::unit::{Unit, UnitSize, check_units};

/// How the engine cuts a copy into batches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The most bytes in one batch (a batch holds at least one unit, however large).
    pub max_batch_bytes: u64,
    /// The most units in one batch.
    pub max_batch_units: usize,
}

impl Default for EngineConfig {
    /// Batches of up to 64 MiB and 16,384 units (64 MiB of 4 KiB units): large enough that
    /// handing a batch to the channels costs well under 1% of copying it.
    fn default() -> Self {
        EngineConfig {
            max_batch_bytes: 64 << 20,
            max_batch_units: 16384,
        }
    }
}

impl EngineConfig {
    /// The same, with batches of up to `bytes` bytes.
    pub fn max_batch_bytes(mut self, bytes: u64) -> EngineConfig {
        self.max_batch_bytes = bytes.max(1);
        self
    }

    /// The same, with batches of up to `units` units.
    pub fn max_batch_units(mut self, units: usize) -> EngineConfig {
        self.max_batch_units = units.max(1);
        self
    }
}

/// The batch copy engine: at most one active [`Driver`], and the counters of everything it
/// copied.
///
/// A copy is cut into batches ([`EngineConfig`]); each batch goes to the active driver if its
/// policy agrees, else it is copied on the caller's thread (the CPU path). Units the driver
/// did not mark as copied are then copied on the caller's thread one by one (the fallback).
/// The engine is `Sync`: luod can copy from one thread and read [`stats`](Engine::stats)
/// from another.
#[derive(Debug, Default)]
pub struct Engine {
    config: EngineConfig,
    driver: Mutex<Option<Arc<dyn Driver>>>,
    stats: Mutex<Stats>,
}

/// Buffers reused by the batches of one copy.
#[derive(Default)]
struct Scratch {
    units: Vec<Unit>,
    marks: Vec<AtomicBool>,
    credits: Vec<ChannelStats>,
}

impl Engine {
    /// An engine without a driver: everything is copied on the CPU until one is registered.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            ..Engine::default()
        }
    }

    /// How it batches.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Makes `driver` the active driver. Refused while another is active: unregister that one
    /// first. Takes effect from the next batch.
    pub fn register(&self, driver: Arc<dyn Driver>) -> Result<()> {
        let mut active = self.driver.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = active.as_ref() {
            return Err(Error::DriverActive {
                active: current.name().to_owned(),
                refused: driver.name().to_owned(),
            });
        }
        *active = Some(driver);
        Ok(())
    }

    /// Removes the active driver, which must be the one named `name`, and returns it. Batches
    /// already handed to it finish; later ones go to the CPU.
    pub fn unregister(&self, name: &str) -> Result<Arc<dyn Driver>> {
        let mut active = self.driver.lock().unwrap_or_else(PoisonError::into_inner);
        match active.take() {
            Some(d) if d.name() == name => Ok(d),
            other => {
                *active = other;
                Err(Error::NotActive {
                    name: name.to_owned(),
                })
            }
        }
    }

    /// The active driver.
    pub fn driver(&self) -> Option<Arc<dyn Driver>> {
        self.driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The counters since the engine was created, with the active driver's name. Cheap: a
    /// lock and a clone of a small struct.
    pub fn stats(&self) -> Stats {
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        stats.driver = self.driver().map(|d| d.name().to_owned());
        stats
    }

    /// Copies `src` to `dst` (the same length) in units of `unit` (the last one shorter if the
    /// length is not a multiple). Returns the counters of this copy. Fails, copying nothing,
    /// if the lengths differ; a driver's failure never fails the copy.
    pub fn copy(
        &self,
        src: &[u8],
        dst: &mut [u8],
        unit: UnitSize,
        reason: Reason,
    ) -> Result<Stats> {
        if src.len() != dst.len() {
            return Err(Error::LengthMismatch {
                src: src.len(),
                dst: dst.len(),
            });
        }
        let total = src.len();
        let n = total.div_ceil(unit.bytes());
        let per_batch = self.units_per_batch(unit);
        let mut call = Stats {
            copies: 1,
            ..Stats::default()
        };
        let mut scratch = Scratch::default();
        let mut first = 0usize;
        while first < n {
            let end = (first + per_batch).min(n);
            let mut units = std::mem::take(&mut scratch.units);
            units.clear();
            units.extend((first..end).map(|i| Unit::contiguous(i, unit, total)));
            let r = self.batch(
                src,
                dst,
                &units,
                first as u64,
                unit,
                reason,
                &mut scratch,
                &mut call,
            );
            scratch.units = units;
            r?;
            first = end;
        }
        self.count_copy();
        Ok(call)
    }

    /// Copies `units` from `src` to `dst`: a scatter-gather copy, as of a live migration's
    /// dirty pages. Every unit is 1 byte to `unit` long and inside both buffers, and their
    /// destinations are in ascending order without overlap; otherwise it fails, copying
    /// nothing. Returns the counters of this copy.
    pub fn copy_units(
        &self,
        src: &[u8],
        dst: &mut [u8],
        units: &[Unit],
        unit: UnitSize,
        reason: Reason,
    ) -> Result<Stats> {
        check_units(src.len(), dst.len(), units, unit)?;
        let mut call = Stats {
            copies: 1,
            ..Stats::default()
        };
        let mut scratch = Scratch::default();
        let mut first = 0usize;
        while first < units.len() {
            let mut end = first;
            let mut bytes = 0u64;
            while end < units.len()
                && end - first < self.config.max_batch_units
                && (end == first || bytes + units[end].len as u64 <= self.config.max_batch_bytes)
            {
                bytes += units[end].len as u64;
                end += 1;
            }
            self.batch(
                src,
                dst,
                &units[first..end],
                first as u64,
                unit,
                reason,
                &mut scratch,
                &mut call,
            )?;
            first = end;
        }
        self.count_copy();
        Ok(call)
    }

    fn units_per_batch(&self, unit: UnitSize) -> usize {
        let by_bytes = (self.config.max_batch_bytes / unit.bytes() as u64).max(1);
        usize::try_from(by_bytes)
            .unwrap_or(usize::MAX)
            .min(self.config.max_batch_units)
            .max(1)
    }

    fn count_copy(&self) {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .copies += 1;
    }

    /// Copies one batch, by the driver, the CPU path or both, and counts it in `call` and in
    /// the engine's counters.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &self,
        src: &[u8],
        dst: &mut [u8],
        units: &[Unit],
        first_unit: u64,
        unit_size: UnitSize,
        reason: Reason,
        scratch: &mut Scratch,
        call: &mut Stats,
    ) -> Result<()> {
        let start = Instant::now();
        let driver = self.driver();
        let bytes: u64 = units.iter().map(|u| u.len as u64).sum();
        let info = BatchInfo {
            bytes,
            units: units.len(),
            unit_size,
            reason,
        };
        let mut delta = Stats {
            batches: 1,
            units: units.len() as u64,
            bytes,
            driver: driver.as_ref().map(|d| d.name().to_owned()),
            ..Stats::default()
        };
        let mut batch = Batch::new(
            src,
            dst,
            units,
            &mut scratch.marks,
            &mut scratch.credits,
            info,
            first_unit,
        )?;
        match driver {
            Some(driver) if driver.should_batch(&info) => {
                delta.batches_offloaded = 1;
                let t = Instant::now();
                if let Err(e) = driver.copy_batch(&mut batch) {
                    delta.batches_failed = 1;
                    delta.last_error = Some(e.to_string());
                }
                delta.time_offload = t.elapsed();
                let t = Instant::now();
                for (i, u) in units.iter().enumerate() {
                    if !batch.is_marked(i) {
                        batch.copy_unit(i);
                        delta.units_fallback += 1;
                        delta.bytes_fallback += u.len as u64;
                    }
                }
                delta.time_fallback = t.elapsed();
                drop(batch);
                delta.channels = std::mem::take(&mut scratch.credits);
                for c in &mut delta.channels {
                    c.batches = u64::from(c.units > 0 || c.bytes > 0);
                }
            }
            kept => {
                if kept.is_some() {
                    delta.batches_cpu_policy = 1;
                } else {
                    delta.batches_cpu_no_driver = 1;
                }
                let t = Instant::now();
                batch.copy_all();
                delta.time_cpu = t.elapsed();
                delta.units_cpu = delta.units;
                delta.bytes_cpu = bytes;
            }
        }
        delta.time = start.elapsed();
        call.add(&delta);
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&delta);
        Ok(())
    }
}
