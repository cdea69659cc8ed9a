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
//! - **The responder** ([`http`]): a minimal HTTP/1.1 server over that listener. A request
//!   is read into a buffer of at most [`MAX_REQUEST`] bytes, and every connection is closed
//!   [`SCRAPE_TIMEOUT`] after it was accepted, whatever it does; at most [`MAX_SCRAPERS`] are
//!   open at once (more wait in the listener's backlog), and the metrics are rendered at most
//!   once per [`MIN_RENDER_INTERVAL`]. Reads and writes never block, so a slow or hostile
//!   scraper costs the loop a bounded share of its time and never holds a client's request
//!   back for long. One request per connection (`Connection: close`).
//! - **The counters** ([`counters`]): what no other part of luod counts (requests by operation
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
//! What a scrape shows is put together in [`render`]; the metrics and their labels are listed
//! in `docs/operations.md` ("Metrics").

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

mod counters;
mod http;
mod render;

use counters::{
    Counters, ERRNO_SLOTS, LATENCY_BUCKETS, OPS, PAUSE_BUCKETS, copy_fields, errno_index,
    errno_label, monotonic_ns, op_index, slot,
};
use http::{Scraper, Step, read_request};
pub use http::{on_event, owns_key};
pub use render::render;

/// Longest request (request line and headers) a scraper may send.
pub const MAX_REQUEST: usize = 8192;
/// How long a scrape connection may stay open, from its accept to its close.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrape connections open at once; more wait in the listener's backlog until one closes.
pub const MAX_SCRAPERS: usize = 4;
/// Least time between two renderings of the metrics: a scrape that comes sooner waits (about
/// 25 ms of the loop per rendering with 5,000 sessions, debug build; see `docs/operations.md`).
pub const MIN_RENDER_INTERVAL: Duration = Duration::from_millis(100);
/// How long the listener is off after `accept` failed for want of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

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
// The endpoint's state in the server.

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
    /// When the last scrape was rendered: the next one waits until [`MIN_RENDER_INTERVAL`]
    /// has passed, so that scrapes in a loop cost the server a bounded share of its time.
    last_render: Option<Instant>,
    /// The listener is off epoll until then (`accept` failed for want of descriptors).
    paused_until: Option<Instant>,
    /// The listener is in the epoll set: not while every scrape slot is taken (new
    /// connections wait in its backlog) or while it is paused.
    listening: bool,
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
            last_render: None,
            paused_until: None,
            listening: false,
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

    /// When the loop must wake: to close a scrape connection that ran out of time, to answer
    /// one that waits for [`MIN_RENDER_INTERVAL`], or to switch the listener back on.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        let render = self
            .scrapers
            .iter()
            .flatten()
            .any(|s| s.deferred)
            .then(|| self.render_at().saturating_duration_since(now));
        self.scrapers
            .iter()
            .flatten()
            .map(|s| s.deadline.saturating_duration_since(now))
            .chain(render)
            .chain(self.paused_until.map(|t| t.saturating_duration_since(now)))
            .min()
            .map(|d| d + Duration::from_millis(1))
    }

    /// When the next scrape may be rendered.
    fn render_at(&self) -> Instant {
        self.last_render
            .map_or_else(Instant::now, |t| t + MIN_RENDER_INTERVAL)
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
pub fn attach(server: &mut Server, mut metrics: Metrics) -> anyhow::Result<()> {
    epoll::add(
        &server.epoll,
        &metrics.listener,
        epoll::EventData::new_u64(KEY_LISTENER),
        epoll::EventFlags::IN,
    )?;
    metrics.listening = true;
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
            let Some(s) = s else { continue };
            if s.deferred {
                answers.push((i, 200));
            } else if s.output.is_empty()
                && let Step::Answer(status) = read_request(s)
            {
                answers.push((i, status));
            }
        }
        http::answer_all(self, answers);
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
        let now = self.copy_stats();
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

    /// Closes scrape connections whose time is up, answers those that waited for their
    /// rendering, and switches a paused listener back on. Called on every turn of the loop.
    pub(crate) fn metrics_tick(&mut self) {
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
        if m.paused_until.is_some_and(|t| t <= now) {
            m.paused_until = None;
        }
        let listen = m.paused_until.is_none() && m.scrapers.iter().any(Option::is_none);
        if listen != m.listening {
            let done = if listen {
                epoll::add(
                    &self.epoll,
                    &m.listener,
                    epoll::EventData::new_u64(KEY_LISTENER),
                    epoll::EventFlags::IN,
                )
            } else {
                epoll::delete(&self.epoll, &m.listener)
            };
            if done.is_ok() {
                m.listening = listen;
            }
        }
        if m.render_at() <= now {
            let waiting: Vec<(usize, u16)> = m
                .scrapers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.as_ref().is_some_and(|s| s.deferred))
                .map(|(i, _)| (i, 200))
                .collect();
            http::answer_all(self, waiting);
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
}
