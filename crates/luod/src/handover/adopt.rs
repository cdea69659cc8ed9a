//! The successor's side: adopt the inherited descriptors, validate the image, rebuild.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::image::{Image, MAX_IMAGE_LEN, S_IFMT};
use luo_client::transport::{self, Recv};
use luo_core::Engine;
use tracing::{debug, info};

use super::records::DaemonState;
use crate::conn::Kind;
use crate::server::Server;

/// A successor's whole start: adopt what the predecessor left (before this process opens
/// anything), then open the signal pipe with `signals`, restore, and confirm. The image is
/// parsed, and so validated, once: its descriptor table, the engine's state and the daemon's
/// part are all read from that one parse.
pub fn take_over(
    channel_raw: i32,
    fd_limit: u64,
    signals: impl FnOnce() -> anyhow::Result<OwnedFd>,
    prepare: impl FnOnce(&mut Server) -> anyhow::Result<()>,
) -> anyhow::Result<Inherited> {
    let channel = adopt_raw(channel_raw)?;
    let image = match read_image(&channel) {
        Ok(image) => image,
        Err(e) => {
            let _ = transport::send(channel.as_fd(), format!("{e:#}").as_bytes(), &[]);
            return Err(e);
        }
    };
    let result = (|| {
        let parsed = Image::parse(&image).map_err(|e| anyhow!("Invalid handover image: {e}"))?;
        let t0 = Instant::now();
        let (mut fds, stats) = adopt_fds(&[channel.as_raw_fd()], &parsed)?;
        info!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "inherited descriptors adopted"
        );
        let signals = signals()?;
        let mut server = build_successor(&parsed, &mut fds, &stats, signals, fd_limit)?;
        // The successor's own checkpoint and holder are made now, while the old server still
        // serves, so that after GO only a message separates it from serving.
        prepare(&mut server)?;
        Ok(server)
    })();
    match result {
        Ok(server) => {
            transport::send(channel.as_fd(), b"READY", &[]).map_err(|e| {
                anyhow!("The predecessor went away before READY ({e}); not serving")
            })?;
            Ok(Inherited { server, channel })
        }
        Err(e) => {
            let _ = transport::send(channel.as_fd(), format!("{e:#}").as_bytes(), &[]);
            Err(e)
        }
    }
}

/// What a successor starts from.
pub struct Inherited {
    pub server: Server,
    pub channel: OwnedFd,
}

/// Adopts a descriptor this process inherited by number.
pub(crate) fn adopt_raw(raw: i32) -> anyhow::Result<OwnedFd> {
    ensure!(raw > 2, "Descriptor {raw} cannot be inherited");
    // SAFETY: `raw` was named by the predecessor, which cleared close-on-exec on exactly the
    // descriptors it lists before exec; callers check that each number is adopted once (no two
    // OwnedFd own one number), and nothing in this process has opened, adopted or closed
    // descriptors yet, so the number is open and owned by nobody else. fcntl below proves it
    // is open before anything else uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Err(e) = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC) {
        std::mem::forget(fd);
        bail!("Descriptor {raw} is not open: {e}");
    }
    Ok(fd)
}

/// Reads the image the predecessor names in its first message, into memory. The image's
/// memfd is adopted (and closed when this returns).
fn read_image(channel: &OwnedFd) -> anyhow::Result<Vec<u8>> {
    let first = match transport::recv(channel.as_fd(), true)? {
        Recv::Message(m) => m,
        _ => bail!("The predecessor closed the channel"),
    };
    let header = String::from_utf8_lossy(&first.bytes).into_owned();
    let image_raw: i32 = header
        .strip_prefix("IMAGE ")
        .and_then(|n| n.parse().ok())
        .context("Malformed image header")?;
    ensure!(
        image_raw != channel.as_raw_fd(),
        "Image and channel share a descriptor"
    );
    let memfd = adopt_raw(image_raw)?;
    let size = rustix::fs::fstat(&memfd)?.st_size as u64;
    ensure!(
        size <= MAX_IMAGE_LEN,
        "Image of {size} bytes is over the limit"
    );
    let mut image = vec![0u8; size as usize];
    let mut done = 0;
    while done < image.len() {
        let n = rustix::io::pread(&memfd, &mut image[done..], done as u64)?;
        ensure!(n > 0, "Image shorter than its size");
        done += n;
    }
    Ok(image)
}

type AdoptedFds = (Vec<Option<OwnedFd>>, Vec<Option<rustix::fs::Stat>>);

/// Adopts every descriptor the image's table lists (checking number and type) and closes every
/// other inherited descriptor but the channel.
fn adopt_fds(keep: &[i32], parsed: &Image<'_>) -> anyhow::Result<AdoptedFds> {
    // Everything this process inherited becomes close-on-exec at once.
    close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC)?;
    let table = parsed.fds();
    let mut numbers = Vec::with_capacity(table.len());
    for (i, entry) in table.iter().enumerate() {
        let raw = entry.fd.get();
        ensure!(raw > 2, "Descriptor {raw} (slot {i}) cannot be inherited");
        numbers.push(raw);
    }
    let mut keep: Vec<i32> = keep
        .iter()
        .copied()
        .chain(numbers.iter().copied())
        .collect();
    keep.sort_unstable();
    if let Some(w) = keep.windows(2).find(|w| w[0] == w[1]) {
        bail!("Descriptor {} is listed twice", w[0]);
    }
    let stats = stat_all(&numbers)?;
    for (i, (entry, st)) in table.iter().zip(&stats).enumerate() {
        let mode = st.st_mode & S_IFMT;
        ensure!(
            mode == entry.mode_type.get(),
            "Descriptor {} (slot {i}) has file type {mode:o}, the image says {:o}",
            entry.fd.get(),
            entry.mode_type.get()
        );
    }
    close_strays(&keep)?;
    // SAFETY: every number was checked open above, is listed once (no duplicates, and neither
    // the channel nor the image), and this process has opened nothing since it started, so no
    // other owner exists; from here each is owned by exactly one OwnedFd.
    let fds = numbers
        .into_iter()
        .map(|raw| Some(unsafe { OwnedFd::from_raw_fd(raw) }))
        .collect();
    Ok((fds, stats.into_iter().map(Some).collect()))
}

/// Tables this long are checked by two threads: one `fstat` per descriptor is most of an
/// adoption's time when thousands are inherited.
const PARALLEL_STAT: usize = 4096;

/// `fstat` of every number, in order; an error names the first that is not open.
fn stat_all(numbers: &[i32]) -> anyhow::Result<Vec<rustix::fs::Stat>> {
    fn stat_run(run: &[i32]) -> Result<Vec<rustix::fs::Stat>, i32> {
        run.iter()
            .map(|&raw| {
                // SAFETY: fstat only reads the descriptor table entry; a number that is not
                // open gives EBADF. The borrow ends with the call, and nothing in this process
                // closes or reuses numbers while it adopts.
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                rustix::fs::fstat(fd).map_err(|_| raw)
            })
            .collect()
    }
    let not_open = |raw: i32| {
        let slot = numbers.iter().position(|&n| n == raw).unwrap_or(0);
        anyhow!("Descriptor {raw} (slot {slot}) is not open")
    };
    if numbers.len() < PARALLEL_STAT {
        return stat_run(numbers).map_err(not_open);
    }
    let (first, second) = numbers.split_at(numbers.len() / 2);
    let (a, b) = std::thread::scope(|scope| {
        let other = scope.spawn(|| stat_run(second));
        let a = stat_run(first);
        (a, other.join())
    });
    let b = b.map_err(|_| anyhow!("The thread checking descriptors panicked"))?;
    let mut all = a.map_err(not_open)?;
    all.extend(b.map_err(not_open)?);
    Ok(all)
}

pub(crate) const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// `close_range(2)`, which rustix lacks.
pub(crate) fn close_range(first: u32, last: u32, flags: u32) -> anyhow::Result<()> {
    // SAFETY: close_range takes three integers and touches only this process's descriptor
    // table. Closing (flags 0) is used only on numbers no OwnedFd owns (see `close_strays`).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    ensure!(rc == 0, "close_range: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Closes every descriptor above stderr that is not in `keep` (sorted): whatever was leaked
/// into this process is closed, as the image contract requires. One system call per gap.
pub(crate) fn close_strays(keep: &[i32]) -> anyhow::Result<()> {
    let mut next = 3u32;
    for &k in keep {
        let k = k as u32;
        if k > next {
            close_range(next, k - 1, 0)?;
        }
        next = next.max(k + 1);
    }
    close_range(next, u32::MAX, 0)
}

/// Blocks until the predecessor says "GO". Anything else (it went away, or discarded this
/// successor because its state moved on) means this process must not serve.
pub fn wait_go(channel: &OwnedFd) -> anyhow::Result<()> {
    match transport::recv(channel.as_fd(), true) {
        Ok(Recv::Message(m)) if m.bytes == b"GO" => Ok(()),
        Ok(Recv::Message(m)) => bail!(
            "The predecessor kept serving ({})",
            String::from_utf8_lossy(&m.bytes)
        ),
        _ => bail!("The predecessor went away without handing over; not serving"),
    }
}

pub(crate) fn build_successor(
    parsed: &Image<'_>,
    fds: &mut [Option<OwnedFd>],
    stats: &[Option<rustix::fs::Stat>],
    signals: OwnedFd,
    fd_limit: u64,
) -> anyhow::Result<Server> {
    // The daemon's records are read and checked before anything is taken from `fds`.
    let state = DaemonState::read(parsed)?;
    let registry = crate::registry()?;
    let t0 = Instant::now();
    let mut engine =
        Engine::restore_parsed(registry, parsed, fds, stats).context("Restoring the sessions")?;
    info!(ms = t0.elapsed().as_secs_f64() * 1e3, "engine restored");
    let mut take = |i: u32| -> anyhow::Result<OwnedFd> {
        fds.get_mut(i as usize)
            .and_then(Option::take)
            .with_context(|| format!("descriptor {i} missing"))
    };
    let listener = take(state.listener)?;
    let lock = take(state.lock)?;
    let keeper = state.keeper.map(&mut take).transpose()?;
    let metrics = match &state.metrics {
        Some(r) => Some((take(r.listener)?, take(r.counters)?, r.addr.clone())),
        None => None,
    };
    let mut conns = Vec::with_capacity(state.conns.len());
    for c in &state.conns {
        conns.push((take(c.index)?, c));
    }
    engine.set_limits(state.settings.limits);
    let mut server = Server::new(
        engine,
        state.settings.clone(),
        listener,
        lock,
        signals,
        fd_limit,
    )?;
    server.upgrades = state.upgrades;
    server.last_upgrade = state.last_upgrade;
    server.keeper_channel = keeper;
    if let Some((listener, counters, addr)) = metrics {
        crate::metrics::adopt(&mut server, listener, counters, addr)?;
    }
    for (fd, c) in conns {
        let kind = match c.kind {
            0 => Kind::Control,
            1 => Kind::Device,
            2 => {
                let id = server
                    .engine
                    .find_session(c.cred.uid, c.incoming, &c.name)
                    .context("A connection's session is not in the image")?;
                Kind::Session(id)
            }
            3 => Kind::Detached,
            other => bail!("Unknown connection kind {other}"),
        };
        // Already non-blocking: luod makes every connection so when it accepts or creates it,
        // and the flag belongs to the open file description, which crossed the exec.
        server.add_conn(fd, kind, c.cred)?;
    }
    Ok(server)
}

/// What a recovery found, for the log and STATUS.
#[derive(Debug)]
pub struct Recovery {
    /// Journal records applied to the checkpoint.
    pub records: usize,
    /// Replies sent again (their requests were still unread).
    pub resent: usize,
    /// The sequence number the journal continues from.
    pub next_seq: u64,
    /// The replies to send again, once the keeper grants this server.
    pub replies: Vec<Resend>,
}

/// A server started by the holder of one that died: reads the checkpoint and the journal the
/// dead server left at `state_raw` and `journal_raw` (this process inherited its whole
/// descriptor table), rebuilds its state, adopts every descriptor that state names and closes
/// the rest, and finds every reply the journal holds whose request is still unread, for
/// [`send_again`].
/// Runs before this process opens anything; `signals` opens the signal pipe once the table is
/// clean.
pub fn recover(
    state_raw: i32,
    journal_raw: i32,
    fd_limit: u64,
    signals: impl FnOnce() -> anyhow::Result<OwnedFd>,
) -> anyhow::Result<(Server, Recovery)> {
    ensure!(
        state_raw > 2 && journal_raw > 2,
        "The state and journal descriptors must be above 2"
    );
    // SAFETY: both numbers were named by the holder's argv, which the dead server prepared
    // from its own open memfds; this process inherited its whole table and has opened nothing
    // yet. They are only borrowed here, to read; fstat fails on a number that is not open.
    let (state, journal) = unsafe {
        (
            BorrowedFd::borrow_raw(state_raw),
            BorrowedFd::borrow_raw(journal_raw),
        )
    };
    let t0 = Instant::now();
    let mapped = map_memfd(state).context("Reading the checkpoint")?;
    let checkpoint = mapped.as_slice();
    let records = crate::journal::read_all(journal).context("Reading the journal")?;
    let t_read = t0.elapsed();
    let rebuilt = crate::recover::rebuild(checkpoint, &records)?;
    let parsed = Image::parse(&rebuilt.image).map_err(|e| anyhow!("Recovered image: {e}"))?;
    let t_rebuild = t0.elapsed();
    // A reply is sent again only if its request is still the first unread message of its
    // connection; its descriptors are then still open (they are closed only after it left).
    let mut resend = Vec::new();
    let mut keep = Vec::new();
    for p in rebuilt.pending {
        // After a restart from systemd's store the descriptors of a reply in flight are gone
        // (they were never stored): the request is then answered anew.
        if head_id(p.conn) == Some(p.id) && p.fds.iter().all(|&fd| is_open(fd)) {
            keep.extend_from_slice(&p.fds);
            resend.push(p);
        }
    }
    let (mut fds, stats) = adopt_fds(&keep, &parsed)?;
    let t_adopt = t0.elapsed();
    let signals = signals()?;
    let server = build_successor(&parsed, &mut fds, &stats, signals, fd_limit)?;
    let t_build = t0.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    debug!(
        read_ms = ms(t_read),
        rebuild_ms = ms(t_rebuild - t_read),
        adopt_ms = ms(t_adopt - t_rebuild),
        build_ms = ms(t_build - t_adopt),
        checkpoint_bytes = checkpoint.len(),
        "recovery: state rebuilt"
    );
    let resent = resend.len();
    let mut replies = Vec::with_capacity(resent);
    for p in resend {
        let mut reply_fds = Vec::with_capacity(p.fds.len());
        for &raw in &p.fds {
            reply_fds.push(adopt_raw(raw)?);
        }
        let key = server
            .conns
            .iter()
            .find(|(_, c)| c.fd.as_raw_fd() == p.conn)
            .map(|(&k, _)| k);
        if let Some(key) = key {
            replies.push(Resend {
                key,
                id: p.id,
                reply: crate::server::Reply {
                    errno: p.errno,
                    arg: p.arg,
                    fds: reply_fds,
                },
            });
        }
    }
    Ok((
        server,
        Recovery {
            records: rebuilt.applied,
            resent,
            next_seq: rebuilt.next_seq,
            replies,
        },
    ))
}

/// A journaled reply to send again once this server may answer clients.
#[derive(Debug)]
pub struct Resend {
    key: u64,
    id: u64,
    reply: crate::server::Reply,
}

/// Sends the replies a recovery found to send again. Only once the keeper granted this server
/// (`keeper::serving`): a server the keeper refuses answers nobody.
pub fn send_again(server: &mut Server, replies: Vec<Resend>) {
    for r in replies {
        server.send_reply(r.key, r.id, r.reply);
    }
}

/// True if `raw` is an open descriptor of this process.
fn is_open(raw: i32) -> bool {
    if raw <= 2 {
        return false;
    }
    // SAFETY: fcntl(F_GETFD) only reads the descriptor table entry; a closed number gives
    // EBADF, and the borrow ends with the call.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(fd).is_ok()
}

/// The whole content of the dead server's checkpoint, mapped: its pages are already in memory,
/// and a copy would fault in as many fresh ones. Nothing writes the file any more (its server
/// is dead, the holder only holds it, this server writes a checkpoint of its own), so the
/// mapping's contents do not change while it is read.
fn map_memfd(fd: BorrowedFd<'_>) -> anyhow::Result<luo_sys::mmap::SharedMap> {
    let size = rustix::fs::fstat(fd)?.st_size as u64;
    ensure!(
        size <= MAX_IMAGE_LEN,
        "{size} bytes is over the image limit"
    );
    ensure!(size > 0, "it is empty");
    Ok(luo_sys::mmap::SharedMap::new(
        fd,
        size as usize,
        false,
        true,
    )?)
}

/// The request id of the first unread message on the connection at `raw`, if any. Peeks
/// without a control buffer: descriptors the message carries are not installed.
fn head_id(raw: i32) -> Option<u64> {
    if raw <= 2 {
        return None;
    }
    // SAFETY: `raw` is a connection of the recovered state, open in the inherited table;
    // recv on a number that is not a socket fails (ENOTSOCK, EBADF) and is then ignored.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let mut head = [0u8; 16];
    let n = rustix::net::recv(
        fd,
        &mut head,
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    )
    .ok()?
    .0;
    (n >= 16).then(|| u64::from_le_bytes(head[8..16].try_into().unwrap_or_default()))
}

/// Adopts a descriptor a parent passed by number on the command line (the keeper's channel).
pub fn adopt_inherited(raw: i32) -> anyhow::Result<OwnedFd> {
    adopt_raw(raw)
}
