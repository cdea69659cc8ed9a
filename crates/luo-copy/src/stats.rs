//! Counters: what the engine copied, how, and how long it took.

use std::time::Duration;

/// What one channel of the driver copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Batches in which the channel copied anything.
    pub batches: u64,
    /// Units the channel completed (a unit split between channels counts for the channel that
    /// copied its first byte).
    pub units: u64,
    /// Bytes of completed units the channel copied.
    pub bytes: u64,
}

/// The engine's counters: for one copy (what [`Engine::copy`](crate::Engine::copy) returns)
/// or since the engine was created ([`Engine::stats`](crate::Engine::stats), updated after
/// every batch, so it shows a copy's progress while the copy runs).
///
/// Every unit is copied exactly once in the end, in one of three ways, so
/// `units == units_cpu + units_fallback + Σ channels[i].units`, and the same for bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The active driver's name when the snapshot was taken (`None`: the CPU only).
    pub driver: Option<String>,
    /// Copy requests.
    pub copies: u64,
    /// Batches.
    pub batches: u64,
    /// Batches handed to the driver.
    pub batches_offloaded: u64,
    /// Batches the driver's policy (`should_batch`) kept on the CPU.
    pub batches_cpu_policy: u64,
    /// Batches copied on the CPU because no driver was registered.
    pub batches_cpu_no_driver: u64,
    /// Offloaded batches the driver reported an error for (some of their units fell back).
    pub batches_failed: u64,
    /// Units copied, by any path.
    pub units: u64,
    /// Bytes copied, by any path.
    pub bytes: u64,
    /// Units of batches kept on the CPU (by the policy or for want of a driver).
    pub units_cpu: u64,
    /// Bytes of batches kept on the CPU.
    pub bytes_cpu: u64,
    /// Units of offloaded batches the driver did not complete, copied by the CPU one by one.
    pub units_fallback: u64,
    /// Bytes of those units.
    pub bytes_fallback: u64,
    /// What each of the driver's channels copied.
    pub channels: Vec<ChannelStats>,
    /// Time spent copying, all paths.
    pub time: Duration,
    /// Of which in the driver's `copy_batch`.
    pub time_offload: Duration,
    /// Of which copying batches on the CPU.
    pub time_cpu: Duration,
    /// Of which copying fallback units on the CPU.
    pub time_fallback: Duration,
    /// The last error a driver reported.
    pub last_error: Option<String>,
}

impl Stats {
    /// Adds `other`'s counters to these (the driver name and last error are `other`'s when
    /// it has one).
    pub fn add(&mut self, other: &Stats) {
        self.copies += other.copies;
        self.batches += other.batches;
        self.batches_offloaded += other.batches_offloaded;
        self.batches_cpu_policy += other.batches_cpu_policy;
        self.batches_cpu_no_driver += other.batches_cpu_no_driver;
        self.batches_failed += other.batches_failed;
        self.units += other.units;
        self.bytes += other.bytes;
        self.units_cpu += other.units_cpu;
        self.bytes_cpu += other.bytes_cpu;
        self.units_fallback += other.units_fallback;
        self.bytes_fallback += other.bytes_fallback;
        if self.channels.len() < other.channels.len() {
            self.channels
                .resize_with(other.channels.len(), ChannelStats::default);
        }
        for (mine, theirs) in self.channels.iter_mut().zip(&other.channels) {
            mine.batches += theirs.batches;
            mine.units += theirs.units;
            mine.bytes += theirs.bytes;
        }
        self.time += other.time;
        self.time_offload += other.time_offload;
        self.time_cpu += other.time_cpu;
        self.time_fallback += other.time_fallback;
        if other.driver.is_some() {
            self.driver.clone_from(&other.driver);
        }
        if other.last_error.is_some() {
            self.last_error.clone_from(&other.last_error);
        }
    }

    /// Units the driver's channels completed.
    pub fn units_offloaded(&self) -> u64 {
        self.channels.iter().map(|c| c.units).sum()
    }

    /// Bytes the driver's channels copied of the units they completed.
    pub fn bytes_offloaded(&self) -> u64 {
        self.channels.iter().map(|c| c.bytes).sum()
    }

    /// Throughput over [`time`](Stats::time), in GB/s (10^9 bytes a second).
    pub fn gb_per_s(&self) -> f64 {
        let secs = self.time.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs / 1e9
        } else {
            0.0
        }
    }
}
