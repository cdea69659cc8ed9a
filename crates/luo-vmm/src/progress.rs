//! [`Progress`]: the VMM's view of how far the guest got — its one device.

use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process on the machine, so a
/// predecessor's and a successor's stamps can be subtracted.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The progress device's state, saved with the vCPU state.
///
/// | field | offset | meaning |
/// |---|---|---|
/// | `last` | 0 | the last value the guest reported (its counter) |
/// | `steps` | 8 | steps seen since boot, across every upgrade |
/// | `anomalies` | 16 | reports that were not the previous value plus one |
/// | `last_ns` | 24 | `CLOCK_MONOTONIC` ns of the last report |
/// | `boot_ns` | 32 | `CLOCK_MONOTONIC` ns of the guest's boot |
/// | `upgrades` | 40 | VMM upgrades the guest went through |
///
/// Changing this bumps the state format version.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct Progress {
    /// Last reported value.
    pub last: U64,
    /// Steps seen.
    pub steps: U64,
    /// Reports out of sequence.
    pub anomalies: U64,
    /// Time of the last report.
    pub last_ns: U64,
    /// Time of boot.
    pub boot_ns: U64,
    /// Upgrades so far.
    pub upgrades: U64,
}

const _: () = assert!(size_of::<Progress>() == 48);

impl Progress {
    /// A guest that just booted with its counter at 0.
    pub fn boot() -> Progress {
        let now = U64::new(now_ns());
        Progress {
            boot_ns: now,
            last_ns: now,
            ..Progress::default()
        }
    }

    /// Records a report of `value` at `ns`; false if it was not the previous value plus one.
    pub fn report(&mut self, value: u32, ns: u64) -> bool {
        let expected = (self.last.get() as u32).wrapping_add(1);
        let ok = value == expected;
        if !ok {
            self.anomalies = U64::new(self.anomalies.get() + 1);
        }
        self.last = U64::new(u64::from(value));
        self.steps = U64::new(self.steps.get() + 1);
        self.last_ns = U64::new(ns);
        ok
    }
}
