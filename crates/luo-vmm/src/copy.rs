//! [`Copier`]: the one place a live migrate copies guest memory — byte runs from a mapping of
//! the old RAM to a mapping of the new — with the batch copy engine (`luo-copy`).
//!
//! The engine has the channel driver registered with one channel per CPU the vCPU leaves free
//! (at least one, at most four), so a large copy streams on worker threads while the vCPU
//! thread keeps running the guest; small batches (the dirty pages of a late round, the last
//! pages copied during the pause) stay on the caller's CPU, as the engine's policy decides.

use std::ops::Range;
use std::sync::Arc;

use luo_copy::{ChannelConfig, Channels, Engine, EngineConfig, Reason, Stats, Unit, UnitSize};
use luo_guestmem::{HostMapping, UNIT};

use crate::error::Error;

/// Copies runs of guest memory with the batch copy engine.
#[derive(Debug)]
pub struct Copier {
    engine: Engine,
}

impl Copier {
    /// An engine with the channel driver registered (the CPU alone if its threads cannot
    /// start: the copy is the same, only slower).
    pub fn new() -> Copier {
        let engine = Engine::new(EngineConfig::default());
        let channels = std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .clamp(1, 4);
        if let Ok(ch) = Channels::new(ChannelConfig::new(channels)) {
            let _ = engine.register(Arc::new(ch));
        }
        Copier { engine }
    }

    /// The engine's counters since it was created.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Copies `runs` (byte ranges of guest memory, ascending, not overlapping, inside both
    /// mappings) from `src` to `dst`, which map the same guest range. Units are 2 MiB for a
    /// whole-memory pass and 4 KiB pages for dirty pages (`reason` says which copy this is).
    ///
    /// The guest may be writing `src` meanwhile: a page it writes during the copy may arrive
    /// torn, and is in the dirty log, so a later round copies it again.
    pub fn copy_runs(
        &self,
        src: &HostMapping,
        dst: &mut HostMapping,
        runs: &[Range<u64>],
        reason: Reason,
    ) -> Result<Stats, Error> {
        if src.range() != dst.range() {
            return Err(Error::State("copy between mappings of different ranges"));
        }
        let unit = match reason {
            Reason::PreCopy | Reason::Blackout => UnitSize::Base4K,
            _ => UnitSize::Huge2M,
        };
        let step = unit.bytes() as u64;
        let mut units = Vec::new();
        for r in runs {
            if r.start > r.end || r.end > src.len() as u64 || !r.start.is_multiple_of(UNIT) {
                return Err(Error::State("copy run outside guest memory"));
            }
            let mut at = r.start;
            while at < r.end {
                let len = step.min(r.end - at);
                units.push(Unit {
                    src: at as usize,
                    dst: at as usize,
                    len: len as usize,
                });
                at += len;
            }
        }
        if units.is_empty() {
            return Ok(Stats::default());
        }
        // SAFETY: `src` maps `src.len()` readable bytes that stay mapped while it is borrowed.
        // The slice is only handed to the copy engine, which reads it; the guest may write the
        // same memory meanwhile (memory outside Rust's model, as every VMM's guest RAM), which
        // can only change which bytes are read, and such pages are copied again (see above).
        #[allow(unsafe_code)]
        let from = unsafe { std::slice::from_raw_parts(src.as_ptr().cast_const(), src.len()) };
        // SAFETY: `dst` maps `dst.len()` writable bytes, borrowed mutably here: nothing else in
        // this process writes them meanwhile, and no KVM slot uses them before the switch.
        #[allow(unsafe_code)]
        let to = unsafe { std::slice::from_raw_parts_mut(dst.as_ptr(), dst.len()) };
        self.engine
            .copy_units(from, to, &units, unit, reason)
            .map_err(Error::Copy)
    }
}

impl Default for Copier {
    fn default() -> Copier {
        Copier::new()
    }
}
