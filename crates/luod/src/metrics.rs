//! Metrics: `luod --metrics ADDR` serves Prometheus text format on `GET /metrics`.
//!
//! Three pieces, each small:
//!
//! - **The endpoint** ([`Addr`], [`bind`]): a TCP listener on a loopback address, or a Unix
//!   stream socket, non-blocking, watched by the server's own epoll loop. Off unless asked for;
//!   any address that is not loopback is refused, since the metrics name the uids that use
//!   luod. Like luod's client listener it lives in the descriptor table that crosses an
//!   upgrade (the image's [`PART`]) and a crash (the holder keeps the table, the checkpoint
//!   names it), so the same socket keeps serving under every server of the lineage.
//! - **The responder** ([`Scraper`]): a minimal HTTP/1.1 server over that listener. A request
//!   is read into a buffer of at most [`MAX_REQUEST`] bytes, and every connection is closed
//!   [`SCRAPE_TIMEOUT`] after it was accepted, whatever it does; at most [`MAX_SCRAPERS`] are
//!   open at once (more are accepted and closed at once). Reads and writes never block, so a
//!   slow or hostile scraper costs the loop a bounded amount of work and never delays a
//!   client's request. One request per connection (`Connection: close`).
//! - **The counters** ([`Counters`]): what no other part of luod counts (requests by operation
//!   and errno, their latency, the blackout of each upgrade, the length of each recovery, the
//!   copy engine's totals across servers) lives in a memfd of fixed layout, mapped shared.
//!   The memfd is in the table beside the listener, so an upgrade's successor and a recovered
//!   server map the same counters and go on from where the last server left them: they never
//!   reset while luod runs. Everything else (sessions, files, bytes, descriptors, upgrades,
//!   restarts) is read from the server's state at each scrape, as STATUS reads it.
//!
//! Only one process writes the counters at a time: the server that serves. A successor maps
//! them while its predecessor still serves but reads them only once it serves itself (after
//! "GO"), and a recovered server starts after the one that died is gone.
//!
//! The metrics and their labels are listed in `docs/operations.md` ("Metrics").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::image::{Image, ImageWriter};
use luo_abi::{Errno, uapi, wire};
use luo_core::Direction;
use luo_sys::mmap::SharedMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use rustix::event::epoll;
use rustix::fs::{MemfdFlags, Mode};
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use tracing::{debug, info, warn};

use crate::server::Server;

/// Longest request (request line and headers) a scraper may send.
pub const MAX_REQUEST: usize = 8192;
/// How long a scrape connection may stay open, from its accept to its close.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrape connections open at once; more are closed as soon as they are accepted.
pub const MAX_SCRAPERS: usize = 4;

/// epoll key of the metrics listener.
pub const KEY_LISTENER: u64 = u64::MAX - 3;
/// epoll key of scrape connection slot 0; slot `i` is `KEY_SCRAPER + i`.
const KEY_SCRAPER: u64 = u64::MAX - 16;
const _: () = assert!(KEY_SCRAPER + (MAX_SCRAPERS as u64) < KEY_LISTENER);

/// The image part that carries the endpoint and the counters across a handover or a crash.
pub const PART: &str = "luod-metrics";
/// Its compatible. Data: the listener's fd-table slot (u32), the counters memfd's slot (u32),
/// eight zero bytes, then the address as the operator wrote it (UTF-8, at most
/// [`MAX_ADDR`] bytes), little-endian. Changing this bumps the compatible.
pub const PART_COMPATIBLE: &str = "luod-metrics-v1";
/// Longest address recorded in the part.
pub const MAX_ADDR: usize = 512;

// ---------------------------------------------------------------------------------------------
// The address.

/// Where the metrics are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A loopback TCP address (`127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`).
    Tcp(SocketAddr),
    /// A Unix stream socket (`unix:/run/luod/metrics.sock`).
    Unix(PathBuf),
}

impl Addr {
    /// Parses `--metrics ADDR`; refuses anything that is not loopback or a Unix socket.
    pub fn parse(s: &str) -> anyhow::Result<Addr> {
        if let Some(path) = s.strip_prefix("unix:") {
            ensure!(
                path.starts_with('/'),
                "Invalid metrics address {s:?}: a Unix socket takes an absolute path (unix:/run/luod/metrics.sock)"
            );
            return Ok(Addr::Unix(path.into()));
        }
        let addr: SocketAddr = match s.parse() {
            Ok(a) => a,
            Err(_) => match s.rsplit_once(':') {
                Some(("localhost", port)) => {
                    let port: u16 = port.parse().with_context(|| {
                        format!("Invalid metrics address {s:?}: {port:?} is not a port")
                    })?;
                    SocketAddr::from(([127, 0, 0, 1], port))
                }
                _ => bail!(
                    "Invalid metrics address {s:?}: expected 127.0.0.1:PORT, [::1]:PORT, localhost:PORT or unix:/PATH"
                ),
            },
        };
        ensure!(
            addr.ip().is_loopback(),
            "Refusing metrics address {s}: {} is not a loopback address. luod serves metrics only \
             on loopback (127.0.0.0/8, [::1]) or on a Unix socket (unix:/PATH), as they name the \
             uids that use it; put a proxy in front of it to publish them further",
            addr.ip()
        );
        Ok(Addr::Tcp(addr))
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Binds the metrics listener, non-blocking and close-on-exec. A Unix socket gets `mode`
/// (the client socket's); a socket file left by a luod that is gone is replaced, anything else
/// at the path is refused.
pub fn bind(addr: &Addr, mode: u32) -> anyhow::Result<OwnedFd> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    match addr {
        Addr::Tcp(a) => {
            let family = if a.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            };
            let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
            rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
            if a.is_ipv6() {
                rustix::net::sockopt::set_ipv6_v6only(&fd, true)?;
            }
            rustix::net::bind(&fd, a)
                .with_context(|| format!("Cannot bind the metrics address {addr}"))?;
            rustix::net::listen(&fd, 16)?;
            Ok(fd)
        }
        Addr::Unix(path) => {
            remove_stale_unix(path)?;
            let fd =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
            let sa = SocketAddrUnix::new(path.as_path())
                .with_context(|| format!("Invalid metrics socket path {}", path.display()))?;
            // As for the client socket: created with its final mode, never chmod-ed by path.
            let old = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
            let bound = rustix::net::bind(&fd, &sa);
            rustix::process::umask(old);
            bound.with_context(|| format!("Cannot bind the metrics socket {}", path.display()))?;
            rustix::net::listen(&fd, 16)?;
            Ok(fd)
        }
    }
}

/// Removes a socket file nobody listens on at `path` (a luod killed with SIGKILL left it);
/// refuses a socket someone serves and anything that is not a socket.
fn remove_stale_unix(path: &std::path::Path) -> anyhow::Result<()> {
    let st = match rustix::fs::lstat(path) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(anyhow!("Cannot look at {}: {e}", path.display())),
    };
    ensure!(
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket,
        "Refusing the metrics socket {}: something that is not a socket is there",
        path.display()
    );
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let sa = SocketAddrUnix::new(path)?;
    if rustix::net::connect(&probe, &sa).is_ok() {
        bail!(
            "Refusing the metrics socket {}: another process serves it",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .with_context(|| format!("Cannot remove the stale metrics socket {}", path.display()))?;
    info!(socket = %path.display(), "removed the metrics socket a stopped luod left behind");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The operations and errnos counted.

/// The operations counted, by label, with their opcodes. `unknown` is any other opcode,
/// `malformed` a message that is not a request (too short, truncated).
const OPS: &[(&str, Option<u32>)] = &[
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
const OP_UNKNOWN: usize = OPS.len() - 2;
const OP_MALFORMED: usize = OPS.len() - 1;

/// The index in [`OPS`] of opcode `op` (`None`: a malformed message).
fn op_index(op: Option<u32>) -> usize {
    match op {
        None => OP_MALFORMED,
        Some(op) => OPS
            .iter()
            .position(|&(_, code)| code == Some(op))
            .unwrap_or(OP_UNKNOWN),
    }
}

/// Errnos counted one by one: 0 (success) to this; any other is counted as `other`.
const ERRNO_MAX: usize = 133;
const ERRNO_SLOTS: usize = ERRNO_MAX + 2;

fn errno_index(errno: i32) -> usize {
    usize::try_from(errno)
        .ok()
        .filter(|&e| e <= ERRNO_MAX)
        .unwrap_or(ERRNO_MAX + 1)
}

fn errno_label(index: usize) -> String {
    match index {
        0 => "none".into(),
        i if i > ERRNO_MAX => "other".into(),
        i => Errno(i as i32)
            .name()
            .map_or_else(|| format!("errno{i}"), str::to_owned),
    }
}

/// Upper bounds (seconds) of the request latency histogram's buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Upper bounds (seconds) of the blackout and recovery histograms' buckets.
const PAUSE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

// ---------------------------------------------------------------------------------------------
// The counters memfd.

/// The memfd's first eight bytes. Changing the layout below changes this (and a successor
/// that finds another one starts from zero).
const MAGIC: u64 = u64::from_le_bytes(*b"LUOMETR1");

/// Slots (u64, little-endian) of the counters memfd, in order.
mod slot {
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
const COUNTERS_BYTES: usize = slot::LEN * 8;
const _: () = assert!(COUNTERS_BYTES <= 64 << 10);

/// The counters: a memfd of [`slot::LEN`] little-endian u64, mapped shared.
#[derive(Debug)]
pub struct Counters {
    fd: OwnedFd,
    map: SharedMap,
}

impl Counters {
    /// A fresh memfd, all zero but its header.
    fn create() -> anyhow::Result<Counters> {
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
    fn adopt(fd: OwnedFd) -> anyhow::Result<Counters> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size == COUNTERS_BYTES as i64 {
            let map = SharedMap::new(&fd, COUNTERS_BYTES, true, false)?;
            let c = Counters { fd, map };
            if c.get(slot::MAGIC) == MAGIC && c.get(slot::LEN_SLOT) == slot::LEN as u64 {
                return Ok(c);
            }
        }
        warn!("the metrics counters inherited have another layout; starting them from zero");
        Counters::create()
    }

    fn get(&self, i: usize) -> u64 {
        let b = &self.map.as_slice()[i * 8..i * 8 + 8];
        u64::from_le_bytes(b.try_into().unwrap_or_default())
    }

    fn set(&mut self, i: usize, v: u64) {
        if let Some(m) = self.map.as_mut_slice() {
            m[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn add(&mut self, i: usize, v: u64) {
        let now = self.get(i);
        self.set(i, now.wrapping_add(v));
    }

    fn observe(&mut self, at: usize, buckets: &[f64], d: Duration) {
        let secs = d.as_secs_f64();
        let b = buckets
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(buckets.len());
        self.add(at + b, 1);
        self.add(at + buckets.len() + 1, d.as_nanos() as u64);
        self.add(at + buckets.len() + 2, 1);
    }

    fn histogram(&self, at: usize, buckets: &[f64]) -> Histogram {
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
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// The copy engine's counters kept in the memfd, in [`slot::COPY`] order.
fn copy_fields(s: &luo_copy::Stats) -> [u64; slot::COPY_LEN] {
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

// ---------------------------------------------------------------------------------------------
// The endpoint's state in the server.

/// One scrape connection.
#[derive(Debug)]
struct Scraper {
    fd: OwnedFd,
    deadline: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// The answer is out and the write side shut: only waiting for the peer to close, so that
    /// unread bytes of its do not turn the close into a reset that loses the answer.
    draining: bool,
}

/// The metrics endpoint and counters of a server.
#[derive(Debug)]
pub struct Metrics {
    /// The address as given (for the log, and to remove a Unix socket at shutdown).
    pub addr: String,
    listener: OwnedFd,
    counters: Counters,
    scrapers: Vec<Option<Scraper>>,
    /// Requests being served, by connection: their op's index and when they were read.
    pending: HashMap<u64, (usize, Instant)>,
    /// The copy engine's counters already added to the memfd.
    copy_folded: luo_copy::Stats,
}

impl Metrics {
    /// A fresh endpoint on `listener`, with fresh counters.
    pub fn new(addr: String, listener: OwnedFd) -> anyhow::Result<Metrics> {
        Ok(Metrics::with(addr, listener, Counters::create()?))
    }

    fn with(addr: String, listener: OwnedFd, counters: Counters) -> Metrics {
        Metrics {
            addr,
            listener,
            counters,
            scrapers: (0..MAX_SCRAPERS).map(|_| None).collect(),
            pending: HashMap::new(),
            copy_folded: luo_copy::Stats::default(),
        }
    }

    /// Descriptors it holds for good, as STATUS counts them: the listener and the counters.
    /// Scrape connections (at most [`MAX_SCRAPERS`], in luod's own 64) are counted apart, so
    /// that a scrape does not change the figure it reports.
    pub fn fds(&self) -> u64 {
        2
    }

    /// Scrape connections open.
    pub fn scrapers(&self) -> u64 {
        self.scrapers.iter().flatten().count() as u64
    }

    /// When the loop must wake to close a scrape connection that ran out of time.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.scrapers
            .iter()
            .flatten()
            .map(|s| s.deadline.saturating_duration_since(now) + Duration::from_millis(1))
            .min()
    }
}

/// The record of [`PART`]: fd-table slots of the listener and the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub listener: u32,
    pub counters: u32,
    pub addr: String,
}

impl Record {
    /// The metrics part of `image`, if it has one, checked against its fd table.
    pub fn read(image: &Image<'_>) -> anyhow::Result<Option<Record>> {
        let Some(p) = image.part(PART) else {
            return Ok(None);
        };
        ensure!(
            p.compatible == PART_COMPATIBLE,
            "Unknown metrics part {}",
            p.compatible
        );
        ensure!(
            p.data.len() >= 16 && p.data.len() <= 16 + MAX_ADDR,
            "The metrics part has {} bytes",
            p.data.len()
        );
        let u32_at =
            |i: usize| u32::from_le_bytes([p.data[i], p.data[i + 1], p.data[i + 2], p.data[i + 3]]);
        let (listener, counters) = (u32_at(0), u32_at(4));
        ensure!(
            p.data[8..16] == [0; 8],
            "The metrics part's reserved bytes are not zero"
        );
        let n = image.fds().len();
        ensure!(
            (listener as usize) < n && (counters as usize) < n && listener != counters,
            "The metrics part names slots {listener} and {counters} of a table of {n}"
        );
        let addr = std::str::from_utf8(&p.data[16..])
            .context("The metrics part's address is not UTF-8")?
            .to_owned();
        Ok(Some(Record {
            listener,
            counters,
            addr,
        }))
    }

    /// Adds the part to `w`.
    pub fn write(&self, w: &mut ImageWriter) -> anyhow::Result<()> {
        let addr = self.addr.as_bytes();
        let addr = &addr[..addr.len().min(MAX_ADDR)];
        let mut data = Vec::with_capacity(16 + addr.len());
        data.extend_from_slice(&self.listener.to_le_bytes());
        data.extend_from_slice(&self.counters.to_le_bytes());
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(addr);
        w.add_part(PART, PART_COMPATIBLE, &data)
            .map_err(|e| anyhow!("{e}"))
    }
}

/// The descriptors a server's metrics put in an image: the listener (a socket) and the
/// counters (a memfd), in that order.
pub fn image_fds(m: &Metrics) -> [std::os::fd::BorrowedFd<'_>; 2] {
    [m.listener.as_fd(), m.counters.fd.as_fd()]
}

/// Starts serving metrics in `server`: watches the listener.
pub fn attach(server: &mut Server, metrics: Metrics) -> anyhow::Result<()> {
    epoll::add(
        &server.epoll,
        &metrics.listener,
        epoll::EventData::new_u64(KEY_LISTENER),
        epoll::EventFlags::IN,
    )?;
    server.metrics = Some(metrics);
    Ok(())
}

/// The endpoint a successor or a recovered server inherited.
pub fn adopt(
    server: &mut Server,
    listener: OwnedFd,
    counters: OwnedFd,
    addr: String,
) -> anyhow::Result<()> {
    rustix::io::ioctl_fionbio(&listener, true)?;
    let counters = Counters::adopt(counters)?;
    attach(server, Metrics::with(addr, listener, counters))
}

// ---------------------------------------------------------------------------------------------
// Hooks of the server.

impl Server {
    /// A request of connection `key` was read (`op`: `None` if it is malformed).
    pub(crate) fn metrics_request(&mut self, key: u64, op: Option<u32>) {
        if let Some(m) = self.metrics.as_mut() {
            m.pending.insert(key, (op_index(op), Instant::now()));
        }
    }

    /// The reply to connection `key`'s request leaves: count it, with its latency.
    pub(crate) fn metrics_reply(&mut self, key: u64, errno: i32) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let Some((op, t0)) = m.pending.remove(&key) else {
            return;
        };
        m.counters
            .add(slot::REQUESTS + op * ERRNO_SLOTS + errno_index(errno), 1);
        m.counters.observe(
            slot::LATENCY + op * slot::LATENCY_LEN,
            LATENCY_BUCKETS,
            t0.elapsed(),
        );
    }

    /// Connection `key` is gone.
    pub(crate) fn metrics_conn_closed(&mut self, key: u64) {
        if let Some(m) = self.metrics.as_mut() {
            m.pending.remove(&key);
        }
    }

    /// This server stops serving to hand over to an upgrade's successor: the blackout starts.
    pub(crate) fn metrics_pause(&mut self) {
        if let Some(m) = self.metrics.as_mut() {
            m.counters.set(slot::PAUSE_START, monotonic_ns());
        }
        self.metrics_hand_over();
    }

    /// This server is about to hand over (an upgrade, a reboot): the scrapes it accepted are
    /// answered now if their requests have arrived, as its successor cannot take them over;
    /// the others are closed when it exits. New scrapes wait in the listener's backlog for the
    /// successor.
    pub(crate) fn metrics_hand_over(&mut self) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let mut answers = Vec::new();
        for (i, s) in m.scrapers.iter_mut().enumerate() {
            if let Some(s) = s
                && s.output.is_empty()
                && let Step::Answer(status) = read_request(s)
            {
                answers.push((i, status));
            }
        }
        if answers.is_empty() {
            return;
        }
        let body = render(self);
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        for (i, status) in answers {
            if let Some(k) = slot::SCRAPE_CODES.iter().position(|&c| c == status) {
                m.counters.add(slot::SCRAPES + k, 1);
            }
            if let Some(s) = m.scrapers[i].as_mut() {
                let body = if status == 200 { body.as_str() } else { "" };
                s.output = response(status, body, s.head_only());
                // Non-blocking: an answer of a few KiB fits in an empty socket buffer.
                write(s);
            }
        }
    }

    /// An upgrade failed; this server keeps serving.
    pub(crate) fn metrics_upgrade_failed(&mut self) {
        if let Some(m) = self.metrics.as_mut() {
            m.counters.set(slot::PAUSE_START, 0);
            m.counters.add(slot::UPGRADE_FAILURES, 1);
        }
    }

    /// A migration ended: what the copy engine did since the last time goes into the memfd,
    /// so that it outlives this server.
    pub(crate) fn metrics_fold_copy(&mut self) {
        let now = self.copier.stats();
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let (was, is) = (copy_fields(&m.copy_folded), copy_fields(&now));
        for i in 0..slot::COPY_LEN {
            m.counters.add(slot::COPY + i, is[i].saturating_sub(was[i]));
        }
        m.copy_folded = now;
    }

    /// This server, an upgrade's successor, is about to serve: the blackout ends.
    pub fn metrics_took_over(&mut self) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let start = m.counters.get(slot::PAUSE_START);
        if start == 0 {
            return;
        }
        let d = Duration::from_nanos(monotonic_ns().saturating_sub(start));
        m.counters.set(slot::PAUSE_START, 0);
        m.counters.set(slot::LAST_BLACKOUT, d.as_nanos() as u64);
        m.counters.observe(slot::BLACKOUT, PAUSE_BUCKETS, d);
        info!(
            blackout_ms = d.as_secs_f64() * 1e3,
            "upgrade blackout (the old server's pause to this one serving)"
        );
    }

    /// This server, started after one that died, is about to serve; it started `t0`.
    pub fn metrics_recovered(&mut self, t0: Instant) {
        let waited = Duration::from_micros(self.keeper.last_recovery_us);
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        m.counters.set(slot::PAUSE_START, 0);
        m.counters
            .observe(slot::RECOVERY, PAUSE_BUCKETS, waited + t0.elapsed());
    }

    /// Closes scrape connections whose time is up. Called on every turn of the loop.
    pub(crate) fn metrics_expire(&mut self) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let now = Instant::now();
        for s in m.scrapers.iter_mut() {
            if s.as_ref().is_some_and(|s| s.deadline <= now) {
                debug!("scrape connection timed out");
                *s = None;
            }
        }
    }

    /// At shutdown: the Unix socket's file goes, as the client socket's does.
    pub(crate) fn metrics_shutdown(&mut self) {
        if let Some(m) = &self.metrics
            && let Some(path) = m.addr.strip_prefix("unix:")
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// True for the epoll keys of the metrics endpoint.
pub fn owns_key(key: u64) -> bool {
    key == KEY_LISTENER || (KEY_SCRAPER..KEY_SCRAPER + MAX_SCRAPERS as u64).contains(&key)
}

/// An epoll event of the endpoint.
pub fn on_event(server: &mut Server, key: u64, flags: epoll::EventFlags) {
    if key == KEY_LISTENER {
        accept(server);
        return;
    }
    let i = (key - KEY_SCRAPER) as usize;
    let Some(m) = server.metrics.as_mut() else {
        return;
    };
    let Some(Some(s)) = m.scrapers.get_mut(i) else {
        return;
    };
    let done = if s.output.is_empty() {
        read_request(s)
    } else if s.draining {
        drain(s)
    } else {
        Step::Write
    };
    let done = match done {
        Step::Answer(status) => {
            let body = if status == 200 {
                render(server)
            } else {
                String::new()
            };
            let Some(m) = server.metrics.as_mut() else {
                return;
            };
            if let Some(k) = slot::SCRAPE_CODES.iter().position(|&c| c == status) {
                m.counters.add(slot::SCRAPES + k, 1);
            }
            let Some(Some(s)) = m.scrapers.get_mut(i) else {
                return;
            };
            s.output = response(status, &body, s.head_only());
            write(s)
        }
        Step::Write => write(s),
        other => other,
    };
    let Some(m) = server.metrics.as_mut() else {
        return;
    };
    let Some(Some(s)) = m.scrapers.get_mut(i) else {
        return;
    };
    let events = match done {
        Step::Close => {
            m.scrapers[i] = None;
            return;
        }
        Step::WaitOut => epoll::EventFlags::OUT,
        _ => epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
    };
    if flags.contains(epoll::EventFlags::ERR) {
        m.scrapers[i] = None;
        return;
    }
    let _ = epoll::modify(&server.epoll, &s.fd, epoll::EventData::new_u64(key), events);
}

/// What a scrape connection needs next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// More of the request.
    Read,
    /// The request is complete (or hopeless): answer with this status.
    Answer(u16),
    /// Keep writing the answer.
    Write,
    /// The socket is full: wait until it can take more.
    WaitOut,
    /// Close it.
    Close,
}

impl Scraper {
    fn head_only(&self) -> bool {
        self.input.starts_with(b"HEAD ")
    }
}

fn accept(server: &mut Server) {
    for _ in 0..MAX_SCRAPERS {
        let Some(m) = server.metrics.as_mut() else {
            return;
        };
        let fd = match rustix::net::accept_with(
            &m.listener,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            // AGAIN, or the table is full (the connection waits in the backlog; the spare of
            // the client listener is not spent on a scraper).
            Err(_) => return,
        };
        let Some(i) = m.scrapers.iter().position(Option::is_none) else {
            debug!("too many scrape connections; closing a new one");
            continue;
        };
        if epoll::add(
            &server.epoll,
            &fd,
            epoll::EventData::new_u64(KEY_SCRAPER + i as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .is_err()
        {
            continue;
        }
        m.scrapers[i] = Some(Scraper {
            fd,
            deadline: Instant::now() + SCRAPE_TIMEOUT,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            draining: false,
        });
    }
}

/// Reads what the socket has, up to [`MAX_REQUEST`] in all, and says whether the request is
/// complete.
fn read_request(s: &mut Scraper) -> Step {
    let mut buf = [0u8; 2048];
    loop {
        match rustix::io::read(&s.fd, &mut buf) {
            Ok(0) => {
                // The peer sent all it will: answer what it sent, if anything.
                return if s.input.is_empty() {
                    Step::Close
                } else {
                    Step::Answer(judge(&s.input))
                };
            }
            Ok(n) => {
                let room = MAX_REQUEST - s.input.len();
                s.input.extend_from_slice(&buf[..n.min(room)]);
                if head_end(&s.input).is_some() {
                    return Step::Answer(judge(&s.input));
                }
                if n > room || s.input.len() >= MAX_REQUEST {
                    return Step::Answer(431);
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Step::Read,
            Err(_) => return Step::Close,
        }
    }
}

/// Reads and drops what the peer still sends after the answer, until it closes.
fn drain(s: &mut Scraper) -> Step {
    let mut buf = [0u8; 2048];
    loop {
        match rustix::io::read(&s.fd, &mut buf) {
            Ok(0) => return Step::Close,
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Step::Read,
            Err(_) => return Step::Close,
        }
    }
}

/// Writes what the socket takes of the answer; once it is all out, shuts the write side.
fn write(s: &mut Scraper) -> Step {
    while s.sent < s.output.len() {
        match rustix::net::send(&s.fd, &s.output[s.sent..], SendFlags::NOSIGNAL) {
            Ok(n) => s.sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Step::WaitOut,
            Err(_) => return Step::Close,
        }
    }
    let _ = rustix::net::shutdown(&s.fd, rustix::net::Shutdown::Write);
    s.draining = true;
    drain(s)
}

/// Where the request's head ends (after the blank line), if it has.
fn head_end(input: &[u8]) -> Option<usize> {
    input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| input.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

/// The status a request gets: 200 for `GET /metrics` (or `HEAD`), 404 for another path, 405
/// for another method, 400 for anything that is not an HTTP/1.x request.
fn judge(input: &[u8]) -> u16 {
    let Some(end) = head_end(input) else {
        return 400;
    };
    let Ok(head) = std::str::from_utf8(&input[..end]) else {
        return 400;
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return 400;
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return 400;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return 400;
    }
    for line in lines.filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, _)) if !name.is_empty() && !name.contains(' ') => {}
            _ => return 400,
        }
    }
    if method != "GET" && method != "HEAD" {
        return 405;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return 404;
    }
    200
}

fn response(status: u16, body: &str, head_only: bool) -> Vec<u8> {
    let (reason, body, content_type) = match status {
        200 => (
            "OK",
            body,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
        404 => (
            "Not Found",
            "Not found: luod serves metrics at /metrics\n",
            "text/plain; charset=utf-8",
        ),
        405 => (
            "Method Not Allowed",
            "Method not allowed: use GET\n",
            "text/plain; charset=utf-8",
        ),
        431 => (
            "Request Header Fields Too Large",
            "Request too large\n",
            "text/plain; charset=utf-8",
        ),
        _ => (
            "Bad Request",
            "Bad request: not an HTTP/1.x request\n",
            "text/plain; charset=utf-8",
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status == 405 { "Allow: GET, HEAD\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The metrics.

/// A histogram's buckets (upper bound, count in it: not cumulative), sum and count.
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// A labelled value.
type Sample<T> = (Vec<(&'static str, String)>, T);

/// One metric family as it is encoded.
#[derive(Debug)]
enum Values {
    Gauge(Vec<Sample<f64>>),
    Counter(Vec<Sample<u64>>),
    Histogram(Vec<Sample<Histogram>>),
    /// A counter of seconds, without labels.
    Seconds(f64),
}

/// Everything one scrape shows, taken from the server at once.
#[derive(Debug, Default)]
struct Snapshot {
    families: Vec<(&'static str, &'static str, Values)>,
}

impl Snapshot {
    fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.families
            .push((name, help, Values::Gauge(vec![(Vec::new(), v)])));
    }
    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.families
            .push((name, help, Values::Counter(vec![(Vec::new(), v)])));
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, values) in &self.families {
            match values {
                Values::Gauge(samples) => {
                    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                    for (labels, v) in samples {
                        if labels.is_empty() {
                            e.encode_gauge(v)?;
                        } else {
                            e.encode_family(labels)?.encode_gauge(v)?;
                        }
                    }
                }
                Values::Counter(samples) => {
                    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    for (labels, v) in samples {
                        if labels.is_empty() {
                            e.encode_counter::<NoLabelSet, _, u64>(v, None)?;
                        } else {
                            e.encode_family(labels)?
                                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                        }
                    }
                }
                Values::Seconds(v) => {
                    encoder
                        .encode_descriptor(name, help, None, MetricType::Counter)?
                        .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                }
                Values::Histogram(samples) => {
                    let mut e =
                        encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
                    for (labels, h) in samples {
                        if labels.is_empty() {
                            e.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                        } else {
                            e.encode_family(labels)?
                                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The state a session is in, as a label.
fn state_label(d: Direction) -> &'static str {
    match d {
        Direction::Outgoing => "outgoing",
        Direction::Incoming { finished: true, .. } => "finished",
        Direction::Incoming {
            retrieved: true, ..
        } => "retrieved",
        Direction::Incoming { .. } => "incoming",
    }
}

/// The metrics text of `server` now.
pub fn render(server: &Server) -> String {
    let snap = snapshot(server);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(snap));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        warn!(error = %e, "cannot encode the metrics");
    }
    out
}

fn snapshot(server: &Server) -> Snapshot {
    let mut s = Snapshot::default();
    let info = vec![(vec![("version", crate::status::VERSION.to_owned())], 1.0)];
    s.families.push((
        "luod_build_info",
        "Always 1; the label is the version of the luod that serves.",
        Values::Gauge(info),
    ));
    s.gauge(
        "luod_generation",
        "Reboots (luoctl reboot) since luod started, as STATUS reports it.",
        server.engine.generation() as f64,
    );
    s.gauge(
        "luod_server_uptime_seconds",
        "Seconds since the server that serves now started (it changes with upgrades and recoveries).",
        server.started.elapsed().as_secs_f64(),
    );

    // Sessions, files and bytes per uid and state.
    let mut by: std::collections::BTreeMap<(u32, &'static str), (u64, u64, u64)> =
        Default::default();
    for info in server.engine.sessions() {
        let e = by
            .entry((info.owner, state_label(info.direction)))
            .or_default();
        e.0 += 1;
        e.1 += info.files as u64;
        e.2 += info.bytes;
    }
    let labelled = |f: fn(&(u64, u64, u64)) -> u64| -> Vec<Sample<f64>> {
        by.iter()
            .map(|(&(uid, state), v)| {
                (
                    vec![("uid", uid.to_string()), ("state", state.to_owned())],
                    f(v) as f64,
                )
            })
            .collect()
    };
    s.families.push((
        "luod_sessions",
        "Sessions, by owner uid and state (outgoing, incoming, retrieved, finished).",
        Values::Gauge(labelled(|v| v.0)),
    ));
    s.families.push((
        "luod_files",
        "Preserved files in those sessions, by owner uid and session state.",
        Values::Gauge(labelled(|v| v.1)),
    ));
    s.families.push((
        "luod_preserved_bytes",
        "Bytes of memory the preserved files keep alive, by owner uid and session state.",
        Values::Gauge(labelled(|v| v.2)),
    ));
    let mut conns: std::collections::BTreeMap<u32, u64> = Default::default();
    for c in server.conns.values() {
        *conns.entry(c.cred.uid).or_default() += 1;
    }
    s.families.push((
        "luod_connections",
        "Client connections (control, device and session descriptors), by uid.",
        Values::Gauge(
            conns
                .iter()
                .map(|(uid, n)| (vec![("uid", uid.to_string())], *n as f64))
                .collect(),
        ),
    ));

    // Descriptors.
    s.gauge(
        "luod_descriptors_used",
        "Descriptors luod holds, as STATUS's fd_used counts them (scrape connections apart).",
        server.fds_used() as f64,
    );
    s.gauge(
        "luod_descriptors_limit",
        "luod's descriptor limit (RLIMIT_NOFILE).",
        server.fd_limit as f64,
    );
    s.gauge(
        "luod_descriptor_budget",
        "Descriptors that may be charged to uids: the limit less luod's own 64.",
        server.budget.total as f64,
    );
    s.gauge(
        "luod_descriptor_share",
        "Most descriptors one uid other than root and luod's own may hold (--max-fds).",
        server.budget.share as f64,
    );
    s.gauge(
        "luod_descriptor_reserve",
        "Descriptors only root and luod's own uid may use (--fd-reserve).",
        server.budget.reserve as f64,
    );

    // Upgrades, restarts, recoveries.
    s.counter(
        "luod_upgrades",
        "Upgrades in this generation (STATUS's upgrades; a reboot emulation starts it again).",
        server.upgrades,
    );
    s.gauge(
        "luod_last_upgrade_rounds",
        "Successors the last upgrade started (0: no upgrade yet).",
        f64::from(server.last_upgrade.0),
    );
    s.counter(
        "luod_server_restarts",
        "Servers the keeper started after one died (STATUS's restarts).",
        u64::from(server.keeper.restarts),
    );
    s.gauge(
        "luod_last_recovery_seconds",
        "The keeper's figure for the last restart: from the death it saw to the new server's start (STATUS's last_recovery_us).",
        server.keeper.last_recovery_us as f64 / 1e6,
    );
    if let Some(m) = &server.metrics {
        let c = &m.counters;
        s.counter(
            "luod_upgrade_failures",
            "Upgrades that failed; the old server kept serving.",
            c.get(slot::UPGRADE_FAILURES),
        );
        s.gauge(
            "luod_last_upgrade_blackout_seconds",
            "The last upgrade's blackout: from the old server's last request to the new one serving.",
            c.get(slot::LAST_BLACKOUT) as f64 / 1e9,
        );
        s.families.push((
            "luod_upgrade_blackout_seconds",
            "Upgrade blackouts: from the old server's last request to the new one serving.",
            Values::Histogram(vec![(
                Vec::new(),
                c.histogram(slot::BLACKOUT, PAUSE_BUCKETS),
            )]),
        ));
        s.families.push((
            "luod_recovery_seconds",
            "Recoveries after a server died: from the death the keeper saw to the new server serving.",
            Values::Histogram(vec![(Vec::new(), c.histogram(slot::RECOVERY, PAUSE_BUCKETS))]),
        ));

        // Requests.
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for (op, &(name, _)) in OPS.iter().enumerate() {
            for e in 0..ERRNO_SLOTS {
                let n = c.get(slot::REQUESTS + op * ERRNO_SLOTS + e);
                if n > 0 {
                    requests.push((vec![("op", name.to_owned()), ("errno", errno_label(e))], n));
                }
            }
            let h = c.histogram(slot::LATENCY + op * slot::LATENCY_LEN, LATENCY_BUCKETS);
            if h.count > 0 {
                latency.push((vec![("op", name.to_owned())], h));
            }
        }
        s.families.push((
            "luod_requests",
            "Requests answered, by operation and errno (none: success).",
            Values::Counter(requests),
        ));
        s.families.push((
            "luod_request_duration_seconds",
            "Time from reading a request to sending its reply, by operation.",
            Values::Histogram(latency),
        ));
        s.gauge(
            "luod_metrics_connections",
            "Scrape connections open (this one included), not counted in luod_descriptors_used.",
            m.scrapers() as f64,
        );
        let scrapes = slot::SCRAPE_CODES
            .iter()
            .enumerate()
            .map(|(k, code)| {
                (
                    vec![("code", code.to_string())],
                    c.get(slot::SCRAPES + k) + u64::from(*code == 200),
                )
            })
            .collect();
        s.families.push((
            "luod_metrics_requests",
            "HTTP requests the metrics endpoint answered, by status code (this one included).",
            Values::Counter(scrapes),
        ));

        // The copy engine: the servers' before this one, and this one's.
        let base: Vec<u64> = (0..slot::COPY_LEN).map(|i| c.get(slot::COPY + i)).collect();
        let (was, is) = (
            copy_fields(&m.copy_folded),
            copy_fields(&server.copier.stats()),
        );
        let v = |i: usize| base[i] + is[i].saturating_sub(was[i]);
        s.counter(
            "luod_copy_copies",
            "Copies the copy engine made (one per migration).",
            v(0),
        );
        let batch = |path: &str, n| (vec![("path", path.to_owned())], n);
        s.families.push((
            "luod_copy_batches",
            "Batches the copy engine copied, by path: offloaded to a copy channel, kept on the CPU by the driver's policy, on the CPU for want of a driver.",
            Values::Counter(vec![
                batch("offloaded", v(2)),
                batch("cpu_policy", v(3)),
                batch("cpu_no_driver", v(4)),
            ]),
        ));
        s.counter(
            "luod_copy_batches_failed",
            "Offloaded batches the driver reported an error for (their units fell back to the CPU).",
            v(5),
        );
        let channels = |u: u64, cpu: u64, fb: u64| u.saturating_sub(cpu).saturating_sub(fb);
        s.families.push((
            "luod_copy_units",
            "Units the copy engine copied, by path: by a copy channel, on the CPU (batches kept there), by the CPU after a channel left them undone (fallback).",
            Values::Counter(vec![
                batch("channel", channels(v(6), v(8), v(10))),
                batch("cpu", v(8)),
                batch("fallback", v(10)),
            ]),
        ));
        s.families.push((
            "luod_copy_bytes",
            "Bytes the copy engine copied, by the same paths as luod_copy_units.",
            Values::Counter(vec![
                batch("channel", channels(v(7), v(9), v(11))),
                batch("cpu", v(9)),
                batch("fallback", v(11)),
            ]),
        ));
        s.families.push((
            "luod_copy_seconds",
            "Time the copy engine spent copying.",
            Values::Seconds(v(12) as f64 / 1e9),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_other_than_loopback_are_refused() {
        assert_eq!(
            Addr::parse("127.0.0.1:9464").unwrap(),
            Addr::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            Addr::parse("127.3.4.5:1").unwrap(),
            Addr::Tcp("127.3.4.5:1".parse().unwrap())
        );
        assert_eq!(
            Addr::parse("[::1]:9464").unwrap(),
            Addr::Tcp("[::1]:9464".parse().unwrap())
        );
        assert_eq!(
            Addr::parse("localhost:80").unwrap(),
            Addr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            Addr::parse("unix:/run/x.sock").unwrap(),
            Addr::Unix("/run/x.sock".into())
        );
        for bad in [
            "0.0.0.0:9464",
            "[::]:9464",
            "10.1.2.3:80",
            "[::ffff:127.0.0.1]:1",
        ] {
            let e = Addr::parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a loopback address"), "{bad}: {e}");
        }
        for bad in ["9464", "example.com:80", "unix:relative", "localhost:x"] {
            assert!(Addr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_part_round_trips_and_bad_ones_are_refused() {
        let fds: Vec<OwnedFd> = (0..2)
            .map(|_| rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap())
            .collect();
        let image = |data: Option<&[u8]>, r: Option<&Record>| {
            let mut w = ImageWriter::new(0, "test");
            w.add_fd(fds[0].as_raw_fd(), luo_abi::image::S_IFSOCK);
            w.add_fd(fds[1].as_raw_fd(), luo_abi::image::S_IFREG);
            if let Some(d) = data {
                w.add_part(PART, PART_COMPATIBLE, d).unwrap();
            }
            if let Some(r) = r {
                r.write(&mut w).unwrap();
            }
            w.finish().unwrap()
        };
        let r = Record {
            listener: 0,
            counters: 1,
            addr: "127.0.0.1:9464".into(),
        };
        let bytes = image(None, Some(&r));
        assert_eq!(
            Record::read(&Image::parse(&bytes).unwrap()).unwrap(),
            Some(r)
        );
        let bytes = image(None, None);
        assert_eq!(Record::read(&Image::parse(&bytes).unwrap()).unwrap(), None);
        let mut reserved = [0u8; 17];
        reserved[4] = 1;
        reserved[9] = 1;
        let mut outside = [0u8; 16];
        outside[4] = 9;
        let long = [0u8; 16 + MAX_ADDR + 1];
        for data in [&[0u8; 8][..], &reserved, &outside, &[0u8; 16], &long] {
            let bytes = image(Some(data), None);
            assert!(
                Record::read(&Image::parse(&bytes).unwrap()).is_err(),
                "{data:?}"
            );
        }
    }

    #[test]
    fn requests_are_judged() {
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(judge(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(judge(b"HEAD /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(judge(b"GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(judge(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(judge(b"hello\r\n\r\n"), 400);
        assert_eq!(judge(b"GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(judge(b"\xff\xfe\r\n\r\n"), 400);
        assert_eq!(judge(b"GET /metrics HTTP/1.1"), 400);
    }

    /// The request parser over inputs derived from real requests (every truncation, every
    /// bit flip, random overwrites) and random bytes: it answers one of its five statuses and
    /// never panics. (The parser is in the daemon binary, which the fuzz crate cannot link;
    /// this is its stable stand-in.)
    #[test]
    fn the_request_parser_survives_derived_and_random_inputs() {
        let seeds: [&[u8]; 3] = [
            b"GET /metrics HTTP/1.1\r\nHost: localhost:9464\r\nAccept: text/plain\r\n\r\n",
            b"HEAD /metrics?x=1 HTTP/1.0\n\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ok = |input: &[u8]| {
            let status = judge(input);
            assert!(
                [200, 400, 404, 405].contains(&status),
                "{input:?}: {status}"
            );
            let _ = head_end(input);
        };
        for seed in seeds {
            for n in 0..=seed.len() {
                ok(&seed[..n]);
            }
            for bit in 0..seed.len() * 8 {
                let mut v = seed.to_vec();
                v[bit / 8] ^= 1 << (bit % 8);
                ok(&v);
            }
            for _ in 0..2000 {
                let mut v = seed.to_vec();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                ok(&v);
            }
        }
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            ok(&v);
        }
    }

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
