//! MIGRATE: a preserved memory file moved onto new backing (4 KiB pages, 2 MiB or 1 GiB huge
//! pages), its contents copied by the batch copy engine (`luo-copy`) on a worker thread while
//! the server keeps serving.
//!
//! ```text
//!  MIGRATE (name, token, page size)        worker thread                 event loop
//!  checks; new memfd of that page size --> map old (read) and new (write)
//!  reply waits                              copy in chunks (progress) -->
//!                                           seals, position, access   --> done (eventfd)
//!                                                                         same file still?
//!                                                                         swap it in the
//!                                                                         session; reply
//! ```
//!
//! Which files: a `memfd-v1` or `memfd-hugetlb-v1` file of an incoming session that nobody
//! retrieved (no one can have it mapped through luod), or of an outgoing session when its
//! owner asks (the owner then must not write the memory until the reply). Every failure leaves
//! the old file in place, untouched; the old memory goes when luod lets go of it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use luo_abi::Errno;
use luo_abi::wire::{MIGRATE_OWN, MigrateReply, MigrateRequest};
use luo_core::{Direction, RetrieveStatus, SessionId};
use luo_guestmem::PageSize;
use luo_handlers::{FLAG_APPEND, FLAG_READ, FLAG_WRITE, HugetlbRecord, MemfdRecord};
use rustix::fs::{Mode, SealFlags, SeekFrom};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::conn::Cred;
use crate::server::Reply;

/// Copy channels of luod's copy engine: one per CPU, at most 4 (on a machine with few cores
/// the limit is memory bandwidth, not the number of channels).
fn channels() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// luod's copy engine, with the channel driver registered (the CPU alone if the channels
/// cannot start).
pub fn copier() -> Arc<luo_copy::Engine> {
    let engine = luo_copy::Engine::new(luo_copy::EngineConfig::default());
    match luo_copy::Channels::new(luo_copy::ChannelConfig::new(channels())) {
        Ok(ch) => {
            if let Err(e) = engine.register(Arc::new(ch)) {
                tracing::warn!(error = %e, "copy channels not registered; copies use the CPU");
            }
        }
        Err(e) => tracing::warn!(error = %e, "copy channels did not start; copies use the CPU"),
    }
    Arc::new(engine)
}

/// A migration in progress: its copy runs on a worker thread.
#[derive(Debug)]
pub struct Migration {
    /// The requester's connection and request id, answered when it ends.
    pub key: u64,
    /// The request id.
    pub id: u64,
    session: SessionId,
    token: u64,
    /// The held file's inode when the copy started: the swap is refused if it changed.
    inode: (u64, u64),
    /// Bytes copied so far, and the total.
    pub progress: Arc<AtomicU64>,
    /// The file's size.
    pub total: u64,
    /// Signalled by the worker when it is done.
    pub done: OwnedFd,
    worker: std::thread::JoinHandle<Result<Copied, String>>,
}

/// What the worker hands back.
#[derive(Debug)]
struct Copied {
    /// The new file, opened with the old one's access, at its position, with its seals.
    fd: OwnedFd,
    reply: MigrateReply,
}

/// What a MIGRATE request asks, checked: the file, its state and the new backing.
struct Plan {
    session: SessionId,
    token: u64,
    src: OwnedFd,
    inode: (u64, u64),
    size: u64,
    pos: u64,
    seals: u32,
    access: u32,
    page: PageSize,
}

fn err(errno: Errno, msg: impl AsRef<str>) -> Reply {
    Reply::err_msg(errno, msg.as_ref())
}

/// Starts the migration MIGRATE `arg` asks for on behalf of `cred`, to be answered on
/// connection `key` as request `id`. `Err` is the reply to send at once.
pub fn start(
    server: &mut crate::server::Server,
    key: u64,
    id: u64,
    cred: Cred,
    admin: bool,
    arg: &[u8],
) -> Result<Migration, Reply> {
    let plan = plan(server, cred, admin, arg)?;
    let dst = new_backing(plan.size, plan.page)?;
    let done = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .map_err(|e| {
        err(
            Errno(e.raw_os_error()),
            "Cannot create the migration's eventfd",
        )
    })?;
    let signal = rustix::io::fcntl_dupfd_cloexec(&done, 3)
        .map_err(|e| err(Errno(e.raw_os_error()), "Cannot duplicate the eventfd"))?;
    let progress = Arc::new(AtomicU64::new(0));
    let shared = Arc::clone(&progress);
    let copier = server.copier();
    let Plan {
        session,
        token,
        src,
        inode,
        size,
        pos,
        seals,
        access,
        page,
    } = plan;
    let worker = std::thread::Builder::new()
        .name("luod-migrate".into())
        .spawn(move || {
            let r = copy(&copier, &src, dst, size, page, &shared).and_then(|(dst, reply)| {
                finish_file(dst, pos, seals, access).map(|fd| Copied { fd, reply })
            });
            let _ = rustix::io::write(&signal, &1u64.to_ne_bytes());
            r
        })
        .map_err(|_| err(Errno::EAGAIN, "Cannot start the migration's thread"))?;
    Ok(Migration {
        key,
        id,
        session,
        token,
        inode,
        progress,
        total: size,
        done,
        worker,
    })
}

/// Ends migration `m` once its worker is done: swaps the new file in if the old one is still
/// the one copied, and returns the reply for the requester.
pub fn finish(server: &mut crate::server::Server, m: Migration) -> Reply {
    let copied = match m.worker.join() {
        Ok(Ok(c)) => c,
        Ok(Err(msg)) => return err(Errno::EIO, msg),
        Err(_) => return err(Errno::EIO, "The migration's thread panicked"),
    };
    let still = server
        .engine
        .file_view(m.session, m.token)
        .is_some_and(|f| {
            rustix::fs::fstat(f.held).is_ok_and(|st| (st.st_dev, st.st_ino) == m.inode)
                && (f.status == RetrieveStatus::NotRetrieved)
        });
    if !still {
        return err(
            Errno::EBUSY,
            "The file changed while it was copied (retrieved, finished or replaced); nothing was moved",
        );
    }
    match server
        .engine
        .reback_fd(m.session, m.token, copied.fd.as_fd())
    {
        Ok(old) => {
            // Closed once the swap is journaled (see `Server::bury`), on a thread of its own.
            server.bury_later(old);
            Reply::ok(copied.reply.as_bytes().to_vec())
        }
        Err(e) => err(e.errno(), e.to_string()),
    }
}

/// Re-backs file `token` of `session` onto shmem (4 KiB pages) now, on the caller's thread: a
/// kexec with `--convert`, before the sessions are frozen, since the kernel preserves shmem
/// memfds only. The same checks, copy and swap as MIGRATE; a failure leaves the old file in
/// place. Returns the bytes copied and how long the copy took.
pub fn convert_now(
    server: &mut crate::server::Server,
    session: SessionId,
    token: u64,
) -> Result<(u64, std::time::Duration), Reply> {
    let outgoing = matches!(
        server.engine.session_info(session).map(|s| s.direction),
        Some(Direction::Outgoing)
    );
    let plan = plan_file(&server.engine, session, token, outgoing, PageSize::Base4K)?;
    let dst = new_backing(plan.size, plan.page)?;
    let progress = Arc::new(AtomicU64::new(0));
    let copier = server.copier();
    let started = Instant::now();
    let (dst, _) = copy(&copier, &plan.src, dst, plan.size, plan.page, &progress)
        .map_err(|m| err(Errno::EIO, m))?;
    let fd = finish_file(dst, plan.pos, plan.seals, plan.access).map_err(|m| err(Errno::EIO, m))?;
    let took = started.elapsed();
    let old = server
        .engine
        .reback_fd(session, token, fd.as_fd())
        .map_err(|e| err(e.errno(), e.to_string()))?;
    server.bury_later(old);
    Ok((plan.size, took))
}

/// Closes `old` on a thread of its own: when it is the last reference to the old memory, the
/// close frees every page of it, which for a gigabyte takes tens of milliseconds the event loop
/// should not spend.
pub(crate) fn release_later(old: OwnedFd) {
    // If the thread cannot start, the closure, and the descriptor with it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("luod-release".into())
        .spawn(move || drop(old));
}

/// Checks the request and the file it names.
fn plan(
    server: &crate::server::Server,
    cred: Cred,
    admin: bool,
    arg: &[u8],
) -> Result<Plan, Reply> {
    let req = MigrateRequest::read_from_bytes(arg)
        .map_err(|_| err(Errno::EINVAL, "MIGRATE takes an 88-byte MigrateRequest"))?;
    if req.flags.get() != 0 {
        return Err(err(Errno::EINVAL, "MIGRATE flags must be 0"));
    }
    let page = PageSize::from_bytes(req.page_size.get())
        .ok_or_else(|| err(Errno::EINVAL, "The page size must be 4096, 2 MiB or 1 GiB"))?;
    let owner = match req.owner.get() {
        MIGRATE_OWN => cred.uid,
        uid if uid == cred.uid || admin => uid,
        _ => {
            return Err(err(
                Errno::EPERM,
                "Only root may migrate another user's files",
            ));
        }
    };
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(64);
    if len == 0 || len == 64 {
        return Err(err(Errno::EINVAL, "Invalid session name"));
    }
    let name = &req.name[..len];
    let engine = &server.engine;
    let (session, outgoing) = match engine.find_session(owner, true, name) {
        Some(id) => (id, false),
        None => match engine.find_session(owner, false, name) {
            Some(id) if owner == cred.uid => (id, true),
            Some(_) => {
                return Err(err(
                    Errno::EPERM,
                    "An outgoing session is migrated only on its owner's request",
                ));
            }
            None => return Err(err(Errno::ENOENT, "No such session")),
        },
    };
    if !outgoing
        && matches!(
            engine.session_info(session).map(|s| s.direction),
            Some(Direction::Incoming {
                retrieved: true,
                ..
            })
        )
    {
        // A retrieved session's files may be mapped by its new owner at any moment.
        return Err(err(Errno::EBUSY, "The session was retrieved"));
    }
    plan_file(engine, session, req.token.get(), outgoing, page)
}

/// Checks file `token` of `session` (outgoing or not) for a move onto pages of `page`.
fn plan_file(
    engine: &luo_core::Engine,
    session: SessionId,
    token: u64,
    outgoing: bool,
    page: PageSize,
) -> Result<Plan, Reply> {
    let file = engine
        .file_view(session, token)
        .ok_or_else(|| err(Errno::ENOENT, "No file with that token"))?;
    if file.status != RetrieveStatus::NotRetrieved {
        return Err(err(Errno::EBUSY, "The file was retrieved"));
    }
    let (size, pos, seals, flags) = match file.compatible {
        luo_handlers::MEMFD_COMPATIBLE => MemfdRecord::parse(file.record)
            .map(|r| (r.size.get(), r.pos.get(), r.seals.get(), r.flags.get())),
        luo_handlers::HUGETLB_COMPATIBLE => HugetlbRecord::parse(file.record)
            .map(|r| (r.size.get(), r.pos.get(), r.seals.get(), r.flags.get())),
        other => {
            return Err(err(
                Errno::EINVAL,
                format!("Only memory files can be migrated, not {other}"),
            ));
        }
    }
    .map_err(|e| err(Errno::EINVAL, format!("Unreadable record: {e}")))?;
    let st = rustix::fs::fstat(file.held).map_err(|e| err(Errno(e.raw_os_error()), "fstat"))?;
    let live_size = u64::try_from(st.st_size).unwrap_or(0);
    let (size, pos, seals) = if outgoing {
        // Not frozen yet: the file as its owner left it.
        let pos = rustix::fs::seek(file.held, SeekFrom::Current(0))
            .map_err(|e| err(Errno(e.raw_os_error()), "lseek"))?;
        let seals = rustix::fs::fcntl_get_seals(file.held).map_or(0, |s| s.bits());
        (live_size, pos, seals)
    } else if live_size != size {
        return Err(err(
            Errno::EBUSY,
            "The file's size changed since it was handed off (another holder resized it)",
        ));
    } else {
        (size, pos, seals)
    };
    if size == 0 || !size.is_multiple_of(page.bytes()) {
        return Err(err(
            Errno::EINVAL,
            format!(
                "The file's {size} bytes are not a whole number of {} KiB pages",
                page.bytes() >> 10
            ),
        ));
    }
    let src = rustix::io::fcntl_dupfd_cloexec(file.held, 3)
        .map_err(|e| err(Errno(e.raw_os_error()), "Cannot duplicate the held file"))?;
    // A record written before the access flags existed: the held description's own access.
    let access = match flags & (FLAG_READ | FLAG_WRITE | FLAG_APPEND) {
        0 => luo_handlers::access_of(src.as_fd())
            .map_err(|e| err(Errno::EINVAL, format!("Cannot read the file's access: {e}")))?,
        a => a,
    };
    Ok(Plan {
        session,
        token,
        src,
        inode: (st.st_dev, st.st_ino),
        size,
        pos,
        seals,
        access,
        page,
    })
}

/// A new memfd of `size` bytes on pages of `page`, its huge pages taken now: an error that
/// says how many pages to reserve if the pool lacks them.
fn new_backing(size: u64, page: PageSize) -> Result<OwnedFd, Reply> {
    luo_guestmem::memfd_on("luod-migrate", size, page)
        .map_err(|e| err(Errno(e.errno().raw_os_error()), e.to_string()))
}

/// Copies `size` bytes of `src` into `dst` with the copy engine, publishing the progress.
fn copy(
    copier: &Arc<luo_copy::Engine>,
    src: &OwnedFd,
    dst: OwnedFd,
    size: u64,
    page: PageSize,
    progress: &Arc<AtomicU64>,
) -> Result<(OwnedFd, MigrateReply), String> {
    let len = usize::try_from(size).map_err(|_| "The file is too large to map".to_owned())?;
    // Both mappings populated at once: far cheaper than a fault per page during the copy.
    let map_err = |what| move |e: luo_copy::Error| format!("Cannot map {what}: {e}");
    let from = luo_copy::Mapping::populated(src, 0, len, false).map_err(map_err("the file"))?;
    let mut to =
        luo_copy::Mapping::populated(&dst, 0, len, true).map_err(map_err("the new backing"))?;
    // Units of 2 MiB where the size allows (a 1 GiB page is copied as 512 of them, so every
    // channel streams through its share), else of 4 KiB.
    let unit = if size.is_multiple_of(2 << 20) {
        luo_copy::UnitSize::Huge2M
    } else {
        luo_copy::UnitSize::Base4K
    };
    let started = Instant::now();
    let mut reply = MigrateReply {
        page_size: U64::new(page.bytes()),
        ..MigrateReply::default()
    };
    // The engine counts after every batch: the progress is what it copied since this began
    // (one migration runs at a time).
    let base = copier.stats().bytes;
    let watch = {
        let copier = Arc::clone(copier);
        let progress = Arc::clone(progress);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        let t = std::thread::Builder::new()
            .name("luod-progress".into())
            .spawn(move || {
                while !halt.load(Ordering::Relaxed) {
                    let done = copier.stats().bytes.saturating_sub(base);
                    progress.store(done.min(size), Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            })
            .ok();
        (t, stop)
    };
    let outcome = copier.copy_mapped(&from, &mut to, unit, luo_copy::Reason::Rebacking);
    watch.1.store(true, Ordering::Relaxed);
    if let Some(t) = watch.0 {
        let _ = t.join();
    }
    let stats = outcome.map_err(|e| format!("Copy failed: {e}"))?;
    progress.store(size, Ordering::Relaxed);
    reply.channels = U32::new(stats.channels.len() as u32);
    let (units, fallback) = (stats.units, stats.units_fallback);
    reply.copy_ns = U64::new(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    reply.bytes = U64::new(size);
    reply.units = U64::new(units);
    reply.units_fallback = U64::new(fallback);
    drop((from, to));
    Ok((dst, reply))
}

/// The new file as the old one was: its seals, then a new open file description with the old
/// one's access (never more), at its position.
fn finish_file(dst: OwnedFd, pos: u64, seals: u32, access: u32) -> Result<OwnedFd, String> {
    if seals != 0 {
        rustix::fs::fcntl_add_seals(&dst, SealFlags::from_bits_retain(seals))
            .map_err(|e| format!("Cannot seal the new backing: {e}"))?;
    }
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", dst.as_raw_fd()),
        luo_handlers::open_flags(access),
        Mode::empty(),
    )
    .map_err(|e| format!("Cannot reopen the new backing: {e}"))?;
    rustix::fs::seek(&fd, SeekFrom::Start(pos)).map_err(|e| format!("lseek: {e}"))?;
    Ok(fd)
}
