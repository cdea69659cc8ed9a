//! The counters memfd: what luod counts for metrics alone, in a fixed layout that every server
//! of the lineage maps.

use super::render::Histogram;
use super::*;

// ---------------------------------------------------------------------------------------------
// The operations and errnos counted.

/// The operations counted, by label, with their opcodes. `unknown` is any other opcode,
/// `malformed` a message that is not a request (too short, truncated).
pub(super) const OPS: &[(&str, Option<u32>)] = &[
    (
        "create_session",
        Some(uapi::LIVEUPDATE_IOCTL_CREATE_SESSION),
    ),
    (
        "retrieve_session",
        Some(uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION),
    ),
    ("preserve_fd", Some(uapi::LIVEUPDATE_SESSION_PRESERVE_FD)),
    ("retrieve_fd", Some(uapi::LIVEUPDATE_SESSION_RETRIEVE_FD)),
    ("finish", Some(uapi::LIVEUPDATE_SESSION_FINISH)),
    ("get_name", Some(uapi::LIVEUPDATE_SESSION_GET_NAME)),
    ("open_device", Some(wire::Op::OpenDevice as u32)),
    ("handoff", Some(wire::Op::Handoff as u32)),
    ("list", Some(wire::Op::List as u32)),
    ("status", Some(wire::Op::Status as u32)),
    ("upgrade", Some(wire::Op::Upgrade as u32)),
    ("reboot", Some(wire::Op::Reboot as u32)),
    ("ping", Some(wire::Op::Ping as u32)),
    ("replace_fd", Some(wire::Op::ReplaceFd as u32)),
    ("migrate", Some(wire::Op::Migrate as u32)),
    ("failpoint", Some(wire::Op::Failpoint as u32)),
    ("unknown", None),
    ("malformed", None),
];
pub(super) const OP_UNKNOWN: usize = OPS.len() - 2;
pub(super) const OP_MALFORMED: usize = OPS.len() - 1;

/// The index in [`OPS`] of opcode `op` (`None`: a malformed message).
pub(super) fn op_index(op: Option<u32>) -> usize {
    match op {
        None => OP_MALFORMED,
        Some(op) => OPS
            .iter()
            .position(|&(_, code)| code == Some(op))
            .unwrap_or(OP_UNKNOWN),
    }
}

/// Errnos counted one by one: 0 (success) to this; any other is counted as `other`.
pub(super) const ERRNO_MAX: usize = 133;
pub(super) const ERRNO_SLOTS: usize = ERRNO_MAX + 2;

pub(super) fn errno_index(errno: i32) -> usize {
    usize::try_from(errno)
        .ok()
        .filter(|&e| e <= ERRNO_MAX)
        .unwrap_or(ERRNO_MAX + 1)
}

pub(super) fn errno_label(index: usize) -> String {
    match index {
        0 => "none".into(),
        i if i > ERRNO_MAX => "other".into(),
        i => Errno(i as i32)
            .name()
            .map_or_else(|| format!("errno{i}"), str::to_owned),
    }
}

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub(super) const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Upper bounds (seconds) of the blackout and recovery histograms' buckets.
pub(super) const PAUSE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

// ---------------------------------------------------------------------------------------------
// The counters memfd.

/// The memfd's first eight bytes. Changing the layout below changes this (and a successor
/// that finds another one starts from zero).
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"LUOMETR1");

/// Slots (u64, little-endian) of the counters memfd, in order.
pub(super) mod slot {
    use super::{ERRNO_SLOTS, LATENCY_BUCKETS, OPS, PAUSE_BUCKETS};

    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// The number of slots, [`LEN`].
    pub const LEN_SLOT: usize = 1;
    /// `CLOCK_MONOTONIC` (ns) when the server that hands over stopped serving; 0 for none.
    pub const PAUSE_START: usize = 2;
    /// The last upgrade's blackout, ns.
    pub const LAST_BLACKOUT: usize = 3;
    /// Upgrades that failed (the old server kept serving).
    pub const UPGRADE_FAILURES: usize = 4;
    /// Scrapes answered, by status: 200, 400, 404, 405, 431.
    pub const SCRAPES: usize = 5;
    pub const SCRAPE_CODES: [u16; 5] = [200, 400, 404, 405, 431];
    /// The copy engine's totals of servers before this one (see `CopyTotals`).
    pub const COPY: usize = SCRAPES + SCRAPE_CODES.len();
    pub const COPY_LEN: usize = 13;
    /// A histogram: one count per bucket (not cumulative; +Inf last), the sum in ns, the count.
    pub const fn histogram_len(buckets: usize) -> usize {
        buckets + 1 + 2
    }
    pub const BLACKOUT: usize = COPY + COPY_LEN;
    pub const RECOVERY: usize = BLACKOUT + histogram_len(PAUSE_BUCKETS.len());
    /// Requests, `[op][errno]`.
    pub const REQUESTS: usize = RECOVERY + histogram_len(PAUSE_BUCKETS.len());
    /// Request latency histograms, one per op.
    pub const LATENCY: usize = REQUESTS + OPS.len() * ERRNO_SLOTS;
    pub const LATENCY_LEN: usize = histogram_len(LATENCY_BUCKETS.len());
    pub const LEN: usize = LATENCY + OPS.len() * LATENCY_LEN;
}
pub(super) const COUNTERS_BYTES: usize = slot::LEN * 8;
const _: () = assert!(COUNTERS_BYTES <= 64 << 10);

/// The counters: a memfd of [`slot::LEN`] little-endian u64, mapped shared.
#[derive(Debug)]
pub struct Counters {
    pub(super) fd: OwnedFd,
    map: SharedMap,
}

impl Counters {
    /// A fresh memfd, all zero but its header.
    pub(super) fn create() -> anyhow::Result<Counters> {
        let fd = rustix::fs::memfd_create("luod-metrics", MemfdFlags::CLOEXEC)
            .context("Cannot create the metrics memfd")?;
        rustix::fs::ftruncate(&fd, COUNTERS_BYTES as u64)?;
        let map = SharedMap::new(&fd, COUNTERS_BYTES, true, true)?;
        let mut c = Counters { fd, map };
        c.set(slot::MAGIC, MAGIC);
        c.set(slot::LEN_SLOT, slot::LEN as u64);
        Ok(c)
    }

    /// The counters in `fd`, inherited from the server before this one; fresh ones if `fd`
    /// has another layout (a luod of another version wrote it).
    pub(super) fn adopt(fd: OwnedFd) -> anyhow::Result<Counters> {
        // The header is read with pread, not through the mapping: the predecessor may still be
        // writing other slots, and nothing here looks at the mapped memory until this server
        // serves.
        let size = rustix::fs::fstat(&fd)?.st_size;
        let mut head = [0u8; 16];
        let read = rustix::io::pread(&fd, &mut head, 0).unwrap_or(0);
        let word =
            |i: usize| u64::from_le_bytes(head[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        if size == COUNTERS_BYTES as i64
            && read == head.len()
            && word(slot::MAGIC) == MAGIC
            && word(slot::LEN_SLOT) == slot::LEN as u64
        {
            let map = SharedMap::new(&fd, COUNTERS_BYTES, true, false)?;
            return Ok(Counters { fd, map });
        }
        warn!("the metrics counters inherited have another layout; starting them from zero");
        Counters::create()
    }

    pub(super) fn get(&self, i: usize) -> u64 {
        let b = &self.map.as_slice()[i * 8..i * 8 + 8];
        u64::from_le_bytes(b.try_into().unwrap_or_default())
    }

    pub(super) fn set(&mut self, i: usize, v: u64) {
        if let Some(m) = self.map.as_mut_slice() {
            m[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    pub(super) fn add(&mut self, i: usize, v: u64) {
        let now = self.get(i);
        self.set(i, now.wrapping_add(v));
    }

    pub(super) fn observe(&mut self, at: usize, buckets: &[f64], d: Duration) {
        let secs = d.as_secs_f64();
        let b = buckets
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(buckets.len());
        self.add(at + b, 1);
        self.add(at + buckets.len() + 1, d.as_nanos() as u64);
        self.add(at + buckets.len() + 2, 1);
    }

    pub(super) fn histogram(&self, at: usize, buckets: &[f64]) -> Histogram {
        let mut counts: Vec<(f64, u64)> = buckets
            .iter()
            .enumerate()
            .map(|(i, &le)| (le, self.get(at + i)))
            .collect();
        counts.push((f64::INFINITY, self.get(at + buckets.len())));
        Histogram {
            buckets: counts,
            sum: self.get(at + buckets.len() + 1) as f64 / 1e9,
            count: self.get(at + buckets.len() + 2),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine, so that a
/// successor can measure from a moment its predecessor wrote down.
pub(super) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// The copy engine's counters kept in the memfd, in [`slot::COPY`] order.
pub(super) fn copy_fields(s: &luo_copy::Stats) -> [u64; slot::COPY_LEN] {
    [
        s.copies,
        s.batches,
        s.batches_offloaded,
        s.batches_cpu_policy,
        s.batches_cpu_no_driver,
        s.batches_failed,
        s.units,
        s.bytes,
        s.units_cpu,
        s.bytes_cpu,
        s.units_fallback,
        s.bytes_fallback,
        s.time.as_nanos() as u64,
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_counters_layout_is_the_one_docs_format_md_gives() {
        // docs/format.md ("luod-metrics") names these figures; changing the layout changes
        // MAGIC too.
        assert_eq!(slot::LEN, 2831);
        assert_eq!(COUNTERS_BYTES, 22_648);
        assert_eq!(MAGIC.to_le_bytes(), *b"LUOMETR1");
    }

    #[test]
    fn ops_and_errnos_have_slots() {
        assert_eq!(op_index(Some(uapi::LIVEUPDATE_SESSION_PRESERVE_FD)), 2);
        assert_eq!(op_index(Some(12345)), OP_UNKNOWN);
        assert_eq!(op_index(None), OP_MALFORMED);
        assert_eq!(errno_label(errno_index(0)), "none");
        assert_eq!(errno_label(errno_index(22)), "EINVAL");
        assert_eq!(errno_label(errno_index(4000)), "other");
        assert_eq!(errno_label(errno_index(-1)), "other");
    }

    #[test]
    fn counters_survive_adoption_and_a_foreign_layout_starts_afresh() {
        let mut c = Counters::create().unwrap();
        c.observe(slot::BLACKOUT, PAUSE_BUCKETS, Duration::from_millis(3));
        c.add(slot::REQUESTS + 5, 7);
        let fd = rustix::io::fcntl_dupfd_cloexec(&c.fd, 0).unwrap();
        let d = Counters::adopt(fd).unwrap();
        assert_eq!(d.get(slot::REQUESTS + 5), 7);
        let h = d.histogram(slot::BLACKOUT, PAUSE_BUCKETS);
        assert_eq!(h.count, 1);
        assert!((h.sum - 0.003).abs() < 1e-9);
        assert_eq!(h.buckets[3], (0.005, 1));
        let other = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&other, 64).unwrap();
        let e = Counters::adopt(other).unwrap();
        assert_eq!(e.get(slot::REQUESTS + 5), 0);
        assert_eq!(e.get(slot::MAGIC), MAGIC);
    }
}
