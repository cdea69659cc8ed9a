//! The kernel backend: luod's sessions carried across a real kexec by the kernel's own Live
//! Update Orchestrator (`/dev/liveupdate`, Linux 6.19 and later). `docs/operations.md`,
//! "Kernel live update", is the operator's guide.
//!
//! The kernel lets one process hold `/dev/liveupdate` open; on a host with LUO that process is
//! luod, which serves every workload. At `luoctl kexec` the server freezes its sessions and
//! *forwards* them:
//!
//! ```text
//!  luod session (owner uid, name)     ->  kernel session "<FNV-1a 64 of name>-<uid, 8 hex>-luod"
//!    each shmem memfd under token T   ->    PRESERVE_FD under the same token T
//!  luod's own state (a handover image ->  kernel session "luod", a sealed memfd at token 0
//!    of the next generation)
//! ```
//!
//! then replies and kexecs (`reboot(LINUX_REBOOT_CMD_KEXEC)`; a kernel must be loaded, e.g. by
//! `kexec -s -l`), or leaves the kexec to the caller. On the next boot the first server
//! retrieves `luod`, validates the image as strictly as any handover image, and only then
//! retrieves each workload's kernel session and its files; the engine is restored from the
//! image with those files, every session incoming in its owner's namespace, exactly as after
//! `luoctl reboot`. A kernel session is finished when its luod session is.
//!
//! Only shmem memfds cross (this kernel's memfd handler refuses hugetlb memfds, and there is no
//! handler for sockets, pipes, eventfds or PCI config files): [`Report`] says which files would
//! be lost, and a forward with any of them is refused unless the caller drops them.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::Errno;
use luo_abi::image::{
    FILE_FROZEN, FileSpec, Image, ImageWriter, NO_FD, S_IFMT, S_IFREG, S_IFSOCK, SESSION_INCOMING,
    SessionSpec,
};

/// `S_IFIFO`: the file type of a pipe or FIFO.
const S_IFIFO: u32 = 0o010000;
use luo_abi::wire::{
    KEXEC_KIND_EVENTFD, KEXEC_KIND_HUGETLB, KEXEC_KIND_OTHER, KEXEC_KIND_PCI, KEXEC_KIND_PIPE,
    KEXEC_KIND_SOCKET,
};
use luo_core::{Direction, Engine, Registry, WRITER_VERSION};
use luo_handlers::{HUGETLB_COMPATIBLE, MEMFD_COMPATIBLE, MemfdRecord, PCI_DEVICE_COMPATIBLE};
use luo_sys::liveupdate::{Device, Session};
use rustix::fs::SealFlags;
use tracing::{info, warn};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::U64;

/// The kernel's device.
pub const DEFAULT_DEVICE: &str = "/dev/liveupdate";
/// The kernel session that holds luod's own state.
pub const STATE_SESSION: &str = "luod";
/// The token of the state memfd in [`STATE_SESSION`].
pub const STATE_TOKEN: u64 = 0;
/// The most a state image may be (luod refuses a larger one as corrupt).
const STATE_MAX: u64 = 1 << 30;

/// Where the kernel backend's device is, as `--liveupdate` (or `LUOD_LIVEUPDATE`) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `/dev/liveupdate` when it exists (the default).
    Auto,
    /// This device, which must exist.
    Path(PathBuf),
    /// No kernel backend (`none`).
    Off,
}

impl Setting {
    /// Parses `--liveupdate`: `none`, `auto` or a path.
    pub fn parse(s: Option<&str>) -> Setting {
        match s {
            None | Some("auto") | Some("") => Setting::Auto,
            Some("none") => Setting::Off,
            Some(p) => Setting::Path(PathBuf::from(p)),
        }
    }

    /// The device to use, if any.
    fn device(&self) -> Option<PathBuf> {
        match self {
            Setting::Auto => Path::new(DEFAULT_DEVICE)
                .exists()
                .then(|| PathBuf::from(DEFAULT_DEVICE)),
            Setting::Path(p) => Some(p.clone()),
            Setting::Off => None,
        }
    }
}

/// The name of the kernel session that carries `owner`'s luod session `name`: 30 bytes, whatever
/// the uid and name (the kernel allows 63).
///
/// The hash comes first. The kernel finds a session by walking its list of sessions and
/// comparing names with `strncmp` (at every CREATE_SESSION, for every session it restores at
/// boot, at every RETRIEVE_SESSION), so thousands of sessions cost it a number of comparisons
/// that grows with the square of their count, each as long as the prefix the names share. Names
/// that start with the hash differ at their first byte fifteen times in sixteen; with the
/// earlier `luod-<uid>-` prefix every comparison read 15 bytes, and forwarding and restoring
/// 2,000 sessions took the kernel hundreds of milliseconds more (`docs/PERFORMANCE.md`).
pub fn kernel_name(owner: u32, name: &[u8]) -> String {
    format!("{:016x}-{owner:08x}-luod", fnv1a64(name))
}

/// The name luod gave that kernel session before [`kernel_name`] put the hash first:
/// `luod-<uid, 8 hex>-<FNV-1a 64 of name>`. The next kernel's luod still finds sessions a luod
/// of that time forwarded.
pub fn legacy_kernel_name(owner: u32, name: &[u8]) -> String {
    format!("luod-{owner:08x}-{:016x}", fnv1a64(name))
}

/// Retrieves the kernel session of `owner`'s luod session `name` under [`kernel_name`] or
/// [`legacy_kernel_name`], the one that last worked first (`legacy` says which, and is updated):
/// a state image comes from one luod, which named all its sessions the same way, so the other
/// name is tried at most once in a while. Returns the session and the name it was found under.
fn retrieve_kernel_session<S>(
    mut retrieve: impl FnMut(&str) -> rustix::io::Result<S>,
    owner: u32,
    name: &[u8],
    legacy: &mut bool,
) -> rustix::io::Result<(S, String)> {
    let [new, old] = [kernel_name(owner, name), legacy_kernel_name(owner, name)];
    let (first, then) = if *legacy { (old, new) } else { (new, old) };
    match retrieve(&first) {
        Ok(s) => Ok((s, first)),
        Err(rustix::io::Errno::NOENT) => {
            let s = retrieve(&then)?;
            *legacy = !*legacy;
            Ok((s, then))
        }
        Err(e) => Err(e),
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The backend's state in a server.
#[derive(Debug)]
pub struct Backend {
    /// The device's path.
    pub path: PathBuf,
    /// The open device (a server that took over opens it again when it needs it).
    device: Option<Device>,
    /// The kernel sessions of a forward, the state session last, held until the kexec.
    forwarded: Vec<Session>,
    /// The kernel sessions retrieved at boot, by luod session (owner, name), finished when it
    /// is.
    incoming: HashMap<(u32, Vec<u8>), Session>,
}

/// The device could not be opened.
fn open_error(path: &Path, e: rustix::io::Errno) -> anyhow::Error {
    if e == rustix::io::Errno::BUSY {
        anyhow!(
            "{} is held by another process (the kernel allows one to open it): stop it, or \
             start luod with --liveupdate none to run without the kernel backend",
            path.display()
        )
    } else {
        anyhow!("Cannot open {}: {e}", path.display())
    }
}

impl Backend {
    /// A backend that opens the device when it first needs it (a server that took over from
    /// another, which may still hold it).
    pub fn lazy(setting: &Setting) -> Option<Backend> {
        setting.device().map(|path| Backend {
            path,
            device: None,
            forwarded: Vec::new(),
            incoming: HashMap::new(),
        })
    }

    fn device(&mut self) -> anyhow::Result<&Device> {
        if self.device.is_none() {
            let d = Device::open_at(&self.path).map_err(|e| open_error(&self.path, e))?;
            self.device = Some(d);
        }
        Ok(self.device.as_ref().expect("opened above"))
    }

    /// True while a forward waits for the kexec.
    pub fn is_forwarded(&self) -> bool {
        !self.forwarded.is_empty()
    }

    /// Closes the kernel sessions of a forward: the kernel unpreserves their files.
    pub fn cancel(&mut self) {
        // The state session first, so that a kexec racing the cancel carries no state that
        // names sessions already gone.
        while let Some(s) = self.forwarded.pop() {
            drop(s);
        }
    }

    /// The luod session `owner`/`name` was finished (or closed, which finishes it): so is the
    /// kernel session it came from.
    pub fn finished(&mut self, owner: u32, name: &[u8]) {
        if let Some(s) = self.incoming.remove(&(owner, name.to_vec()))
            && let Err(e) = s.finish()
        {
            warn!(error = %e, session = %kernel_name(owner, name), "finishing the kernel session failed; closing it finishes it");
        }
    }

    /// Kernel sessions retrieved at boot and not yet finished.
    pub fn incoming_count(&self) -> usize {
        self.incoming.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Before the kexec.

/// One preserved file that cannot cross.
#[derive(Clone, Debug)]
pub struct Lost {
    pub id: luo_core::SessionId,
    pub owner: u32,
    pub session: Vec<u8>,
    pub token: u64,
    pub kind: u32,
    pub bytes: u64,
}

/// What a kexec would carry.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub sessions: u64,
    pub preservable: u64,
    pub preservable_bytes: u64,
    pub lost: Vec<Lost>,
}

/// The sessions that cross: outgoing ones, and incoming ones nobody retrieved yet.
fn crossing(engine: &Engine) -> Vec<luo_core::SessionInfo> {
    engine
        .sessions()
        .into_iter()
        .filter(|s| match s.direction {
            Direction::Outgoing => true,
            Direction::Incoming { retrieved, .. } => !retrieved,
        })
        .collect()
}

/// Which kind of file `held` (preserved by handler `compatible`) is, if it cannot cross.
fn lost_kind(compatible: &str, held: BorrowedFd<'_>) -> Option<u32> {
    if compatible == MEMFD_COMPATIBLE {
        return None;
    }
    if compatible == HUGETLB_COMPATIBLE {
        return Some(KEXEC_KIND_HUGETLB);
    }
    if compatible == PCI_DEVICE_COMPATIBLE {
        return Some(KEXEC_KIND_PCI);
    }
    let mode = rustix::fs::fstat(held).map_or(0, |st| st.st_mode & S_IFMT);
    Some(match mode {
        S_IFSOCK => KEXEC_KIND_SOCKET,
        S_IFIFO => KEXEC_KIND_PIPE,
        _ if fd_link(held).contains("eventfd") => KEXEC_KIND_EVENTFD,
        _ => KEXEC_KIND_OTHER,
    })
}

fn fd_link(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a kexec now would carry and lose.
pub fn check(engine: &Engine, convert: bool) -> Report {
    let mut r = Report::default();
    for s in crossing(engine) {
        r.sessions += 1;
        for token in engine.tokens(s.id).unwrap_or_default() {
            let Some(f) = engine.file_view(s.id, token) else {
                continue;
            };
            match lost_kind(f.compatible, f.held) {
                None => {
                    r.preservable += 1;
                    r.preservable_bytes += f.bytes;
                }
                // Re-backed onto shmem before the forward (`--convert`).
                Some(KEXEC_KIND_HUGETLB) if convert => {
                    r.preservable += 1;
                    r.preservable_bytes += f.bytes;
                }
                Some(kind) => r.lost.push(Lost {
                    id: s.id,
                    owner: s.owner,
                    session: s.name.clone(),
                    token,
                    kind,
                    bytes: f.bytes,
                }),
            }
        }
    }
    r
}

/// Why a forward was refused, with the errno the client gets.
#[derive(Debug)]
pub struct Refusal {
    pub errno: Errno,
    pub message: String,
}

fn refuse(errno: Errno, message: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        message: message.into(),
    }
}

/// True when a kernel is loaded for kexec (`/sys/kernel/kexec_loaded`).
pub fn kexec_loaded() -> bool {
    std::fs::read_to_string("/sys/kernel/kexec_loaded").is_ok_and(|s| s.trim() == "1")
}

/// The state image of a forward: the crossing sessions as incoming sessions of the next
/// generation, with their shmem memfds only (FLBs stay behind: no file that crosses needs one).
/// Returns the image and, in its fd-table order, each file's (owner, name, token, held fd).
/// One file of a state image: its session's owner and name, its token, the held descriptor.
type Crossing<'e> = (u32, Vec<u8>, u64, BorrowedFd<'e>);

fn state_image<'e>(engine: &'e Engine) -> anyhow::Result<(Vec<u8>, Vec<Crossing<'e>>)> {
    let mut w = ImageWriter::new(engine.generation() + 1, WRITER_VERSION);
    let mut files = Vec::new();
    let mut names = HashMap::new();
    for (seq, s) in crossing(engine).into_iter().enumerate() {
        if let Some(other) = names.insert((s.owner, s.name.clone()), s.direction) {
            bail!(
                "uid {} has both an outgoing and a handed-off session named {:?} ({other:?}): \
                 retrieve or close one before the kexec",
                s.owner,
                String::from_utf8_lossy(&s.name)
            );
        }
        let mut specs = Vec::new();
        for token in engine.tokens(s.id).unwrap_or_default() {
            let Some(f) = engine.file_view(s.id, token) else {
                continue;
            };
            if lost_kind(f.compatible, f.held).is_some() {
                continue;
            }
            // Only shmem memfds cross, and the memfd handler holds regular files only: no
            // fstat for each of thousands of files.
            use std::os::fd::AsRawFd;
            let fd_index = w.add_fd(f.held.as_raw_fd(), S_IFREG);
            files.push((s.owner, s.name.clone(), token, f.held));
            specs.push(FileSpec {
                compatible: f.compatible,
                token,
                fd_index,
                open_fd_index: NO_FD,
                status: 0,
                flags: FILE_FROZEN,
                record: f.record,
            });
        }
        let spec = SessionSpec {
            name: &s.name,
            owner: s.owner,
            flags: SESSION_INCOMING,
            seq: seq as u64,
        };
        w.add_session(&spec, specs.iter().copied())
            .map_err(|e| anyhow!("Cannot write session {:?}: {e}", s.name))?;
    }
    let image = w
        .finish()
        .map_err(|e| anyhow!("Cannot lay out the state image: {e}"))?;
    Ok((image, files))
}

/// A sealed memfd holding `bytes`.
fn sealed_memfd(bytes: &[u8]) -> anyhow::Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(
        "luod-kexec-state",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut off = 0;
    while off < bytes.len() {
        off += rustix::io::pwrite(&fd, &bytes[off..], off as u64)?;
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// Forwards every crossing session of the frozen `engine` into kernel sessions, luod's state
/// last. On failure every kernel session made so far is closed again (the kernel unpreserves
/// their files) and nothing is left forwarded.
pub fn forward(backend: &mut Backend, engine: &Engine) -> Result<Report, Refusal> {
    let report = check(engine, false);
    let (image, files) =
        state_image(engine).map_err(|e| refuse(Errno::EINVAL, format!("{e:#}")))?;
    let state = sealed_memfd(&image).map_err(|e| {
        refuse(
            Errno::ENOMEM,
            format!("Cannot write luod's state for the kexec: {e:#}"),
        )
    })?;
    let device = backend
        .device()
        .map_err(|e| refuse(Errno::EBUSY, format!("{e:#}")))?;
    let mut made: Vec<Session> = Vec::new();
    let mut current: Option<(u32, Vec<u8>)> = None;
    let sessions: Vec<(u32, Vec<u8>)> = crossing(engine)
        .into_iter()
        .map(|s| (s.owner, s.name))
        .collect();
    let result = (|| -> Result<(), Refusal> {
        let mut by_session: HashMap<(u32, Vec<u8>), usize> = HashMap::new();
        for (owner, name) in &sessions {
            let kname = kernel_name(*owner, name);
            let s = device.create_session(&kname).map_err(|e| {
                refuse(
                    Errno(e.raw_os_error()),
                    format!("The kernel refused session {kname}: {e}"),
                )
            })?;
            by_session.insert((*owner, name.clone()), made.len());
            made.push(s);
        }
        for (owner, name, token, held) in &files {
            current = Some((*owner, name.clone()));
            let s = &made[by_session[&(*owner, name.clone())]];
            s.preserve_fd(held, *token).map_err(|e| {
                refuse(
                    Errno(e.raw_os_error()),
                    format!(
                        "The kernel refused to preserve token {token} of uid {owner}'s \
                         session {:?}: {e}",
                        String::from_utf8_lossy(name)
                    ),
                )
            })?;
        }
        current = None;
        let s = device.create_session(STATE_SESSION).map_err(|e| {
            refuse(
                Errno(e.raw_os_error()),
                format!("The kernel refused luod's state session: {e}"),
            )
        })?;
        s.preserve_fd(&state, STATE_TOKEN).map_err(|e| {
            refuse(
                Errno(e.raw_os_error()),
                format!("The kernel refused luod's state memfd: {e}"),
            )
        })?;
        made.push(s);
        Ok(())
    })();
    match result {
        Ok(()) => {
            info!(
                sessions = sessions.len(),
                files = files.len(),
                state_bytes = image.len(),
                "every session forwarded into the kernel's live update"
            );
            backend.forwarded = made;
            Ok(report)
        }
        Err(e) => {
            if let Some((owner, name)) = current {
                warn!(uid = owner, session = %String::from_utf8_lossy(&name), "forward failed at this session");
            }
            drop(made);
            Err(e)
        }
    }
}

/// Kexecs into the loaded kernel. Returns only if the kernel refused (then every kernel
/// session is still preserved; the caller decides).
pub fn kexec_now() -> rustix::io::Result<()> {
    rustix::fs::sync();
    rustix::system::reboot(rustix::system::RebootCommand::Kexec)
}

// ---------------------------------------------------------------------------------------------
// After the kexec.

/// What the first server starts from.
pub struct Boot {
    pub engine: Engine,
    pub backend: Option<Backend>,
    /// Sessions restored from before the kexec.
    pub restored: usize,
}

/// Opens the device of `setting` and, if the previous kernel's luod left its state, restores
/// every session from it; else a fresh engine. Errors: the device is held by another process,
/// or the state is invalid (then no workload's kernel session has been touched).
pub fn boot(setting: &Setting, registry: Arc<Registry>) -> anyhow::Result<Boot> {
    let Some(mut backend) = Backend::lazy(setting) else {
        return Ok(Boot {
            engine: Engine::new(registry),
            backend: None,
            restored: 0,
        });
    };
    let device = backend.device()?;
    let state = match device.retrieve_session(STATE_SESSION) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => {
            info!(device = %backend.path.display(), "kernel backend: no state from a previous kernel");
            return Ok(Boot {
                engine: Engine::new(registry),
                backend: Some(backend),
                restored: 0,
            });
        }
        Err(e) => bail!(
            "Cannot retrieve luod's state session from {}: {e} (EIO: the kernel could not read \
             the previous kernel's live update state)",
            backend.path.display()
        ),
    };
    let bytes =
        read_state(&state).context("luod's state session from before the kexec is invalid")?;
    let image = Image::parse(&bytes).map_err(|e| {
        anyhow!("luod's state session from before the kexec is invalid: {e}; nothing was restored")
    })?;
    validate(&image, &registry)
        .context("luod's state session from before the kexec is invalid; nothing was restored")?;
    // Only now is any workload's kernel session touched.
    let mut fds: Vec<Option<OwnedFd>> = (0..image.fds().len()).map(|_| None).collect();
    // Each retrieved file's stat, for the records and again for the engine's restore.
    let mut stats: Vec<Option<rustix::fs::Stat>> = vec![None; fds.len()];
    let mut records: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut incoming = HashMap::new();
    let mut legacy = false;
    for s in image.sessions() {
        let retrieve = |n: &str| device.retrieve_session(n);
        let (ks, kname) = retrieve_kernel_session(retrieve, s.owner(), s.name(), &mut legacy)
            .with_context(|| {
                format!(
                    "Cannot retrieve kernel session {} (uid {}'s {:?})",
                    kernel_name(s.owner(), s.name()),
                    s.owner(),
                    String::from_utf8_lossy(s.name())
                )
            })?;
        for f in s.files() {
            let fd = ks.retrieve_fd(f.token).with_context(|| {
                format!(
                    "Cannot retrieve token {} of kernel session {kname}",
                    f.token
                )
            })?;
            // The inode is new: the record names the one of the previous kernel.
            let st = rustix::fs::fstat(&fd)?;
            let mut rec = MemfdRecord::parse(f.record)
                .map_err(|e| anyhow!("A memfd record of {kname} is invalid: {e}"))?;
            rec.dev = U64::new(st.st_dev);
            rec.ino = U64::new(st.st_ino);
            let i = f
                .fd_index
                .context("a state image's file has no descriptor")?;
            records.insert(i, rec.as_bytes().to_vec());
            fds[i as usize] = Some(fd);
            stats[i as usize] = Some(st);
        }
        incoming.insert((s.owner(), s.name().to_vec()), ks);
    }
    let image = rewrite(&image, &records, &fds)?;
    let image = Image::parse(&image)
        .map_err(|e| anyhow!("Cannot restore the sessions from before the kexec: {e}"))?;
    let engine = Engine::restore_parsed(registry, &image, &mut fds, &stats)
        .map_err(|e| anyhow!("Cannot restore the sessions from before the kexec: {e}"))?;
    // Restored: the state session is done with.
    if let Err(e) = state.finish() {
        warn!(error = %e, "finishing luod's state session failed; closing it finishes it");
    }
    drop(state);
    let restored = incoming.len();
    backend.incoming = incoming;
    info!(
        sessions = restored,
        generation = engine.generation(),
        "kernel backend: restored the sessions from before the kexec"
    );
    Ok(Boot {
        engine,
        backend: Some(backend),
        restored,
    })
}

/// The bytes of the state memfd: sealed against writing and resizing, at most [`STATE_MAX`].
fn read_state(state: &Session) -> anyhow::Result<Vec<u8>> {
    let fd = state
        .retrieve_fd(STATE_TOKEN)
        .context("no state memfd under token 0")?;
    let seals = rustix::fs::fcntl_get_seals(&fd)?;
    ensure!(
        seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW),
        "the state memfd is not sealed against writing (seals {seals:?})"
    );
    let size = rustix::fs::fstat(&fd)?.st_size as u64;
    ensure!(
        size <= STATE_MAX,
        "the state memfd is {size} bytes, more than luod writes"
    );
    let mut bytes = vec![0u8; size as usize];
    let mut off = 0;
    while off < bytes.len() {
        let n = rustix::io::pread(&fd, &mut bytes[off..], off as u64)?;
        ensure!(n > 0, "the state memfd ended early");
        off += n;
    }
    Ok(bytes)
}

/// Checks a state image before anything is retrieved: the next generation's incoming sessions
/// only, of shmem memfds only, each in its own kernel session, every file with a valid record
/// and an fd-table entry of its own, no FLB, no daemon part.
fn validate(image: &Image<'_>, registry: &Registry) -> anyhow::Result<()> {
    ensure!(image.flb_count() == 0, "a state image carries no FLB");
    ensure!(
        image.parts().next().is_none(),
        "a state image carries no part"
    );
    let mut names = std::collections::HashSet::new();
    let mut used = vec![false; image.fds().len()];
    for s in image.sessions() {
        ensure!(s.is_incoming(), "session {:?} is not incoming", s.name());
        ensure!(
            names.insert(kernel_name(s.owner(), s.name())),
            "two sessions map to kernel session {}",
            kernel_name(s.owner(), s.name())
        );
        for f in s.files() {
            ensure!(
                f.compatible == MEMFD_COMPATIBLE,
                "file {} of {:?} is {}, which cannot cross a kexec",
                f.token,
                s.name(),
                f.compatible
            );
            ensure!(
                registry.handlers().any(|h| h.compatible() == f.compatible),
                "no handler {}",
                f.compatible
            );
            MemfdRecord::parse(f.record)
                .map_err(|e| anyhow!("file {} of {:?}: {e}", f.token, s.name()))?;
            let i = f.fd_index.map_or(usize::MAX, |i| i as usize);
            ensure!(
                i < used.len() && !used[i],
                "file {} of {:?} names fd-table entry {i} twice or out of range",
                f.token,
                s.name()
            );
            used[i] = true;
            ensure!(
                f.open_fd_index.is_none(),
                "a state image's file has no open file"
            );
        }
    }
    ensure!(
        used.iter().all(|&u| u),
        "the state image's fd table lists descriptors no file uses"
    );
    Ok(())
}

/// The state image again, with each memfd record's inode replaced by the retrieved file's and
/// the fd table naming the retrieved descriptors.
fn rewrite(
    image: &Image<'_>,
    records: &HashMap<u32, Vec<u8>>,
    fds: &[Option<OwnedFd>],
) -> anyhow::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut w = ImageWriter::new(image.generation(), WRITER_VERSION);
    for (i, e) in image.fds().iter().enumerate() {
        let fd = fds[i]
            .as_ref()
            .context("a descriptor of the state image was not retrieved")?;
        let at = w.add_fd(fd.as_fd().as_raw_fd(), e.mode_type.get());
        ensure!(at as usize == i, "fd table out of order");
    }
    for s in image.sessions() {
        let files: Vec<_> = s.files().collect();
        let specs: Vec<FileSpec<'_>> = files
            .iter()
            .map(|f| FileSpec {
                compatible: f.compatible,
                token: f.token,
                fd_index: f.fd_index.unwrap_or(NO_FD),
                open_fd_index: NO_FD,
                status: 0,
                flags: f.flags,
                record: records
                    .get(&f.fd_index.unwrap_or(NO_FD))
                    .map_or(f.record, |r| &r[..]),
            })
            .collect();
        let spec = SessionSpec {
            name: s.name(),
            owner: s.owner(),
            flags: s.flags(),
            seq: s.seq(),
        };
        w.add_session(&spec, specs.iter().copied())
            .map_err(|e| anyhow!("{e}"))?;
    }
    w.finish().map_err(|e| anyhow!("{e}"))
}

/// `MemfdRecord` read from raw bytes, for tests.
#[cfg(test)]
fn record_of(bytes: &[u8]) -> MemfdRecord {
    zerocopy::FromBytes::read_from_bytes(bytes).expect("40 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_fit_the_kernel_whatever_the_uid_and_name() {
        let long = [b'x'; 63];
        for (uid, name) in [(0, &b"a"[..]), (u32::MAX, &long[..]), (1000, b"vm-guest")] {
            let n = kernel_name(uid, name);
            assert_eq!(n.len(), 30, "{n}");
            assert!(n.len() < luo_abi::uapi::LIVEUPDATE_SESSION_NAME_LENGTH);
            assert!(n.ends_with(&format!("-{uid:08x}-luod")), "{n}");
            let legacy = legacy_kernel_name(uid, name);
            assert_eq!(legacy.len(), 30, "{legacy}");
            assert!(legacy.starts_with(&format!("luod-{uid:08x}-")));
            assert_ne!(n, legacy);
        }
        assert_eq!(kernel_name(0, b"a"), "af63dc4c8601ec8c-00000000-luod");
        assert_eq!(
            legacy_kernel_name(0x3e8, b"foobar"),
            "luod-000003e8-85944171f73967e8"
        );
        assert_ne!(kernel_name(0, b"a"), kernel_name(0, b"b"));
        assert_ne!(kernel_name(0, b"a"), kernel_name(1, b"a"));
        assert_ne!(kernel_name(0, b"a"), STATE_SESSION);
    }

    #[test]
    fn kernel_sessions_are_found_under_either_name_the_last_that_worked_first() {
        use rustix::io::Errno as E;
        let held: std::collections::HashSet<String> = [
            kernel_name(0, b"new"),
            legacy_kernel_name(0, b"old1"),
            legacy_kernel_name(0, b"old2"),
        ]
        .into();
        let asked = std::cell::Cell::new(0);
        let mut retrieve = |n: &str| {
            asked.set(asked.get() + 1);
            if held.contains(n) {
                Ok(n.to_owned())
            } else {
                Err(E::NOENT)
            }
        };
        let mut legacy = false;
        let (got, _) = retrieve_kernel_session(&mut retrieve, 0, b"new", &mut legacy).unwrap();
        assert_eq!((got, legacy), (kernel_name(0, b"new"), false));
        let (got, _) = retrieve_kernel_session(&mut retrieve, 0, b"old1", &mut legacy).unwrap();
        assert_eq!((got, legacy), (legacy_kernel_name(0, b"old1"), true));
        // Now the legacy name first: one question.
        let before = asked.get();
        retrieve_kernel_session(&mut retrieve, 0, b"old2", &mut legacy).unwrap();
        assert_eq!(asked.get(), before + 1);
        assert_eq!(
            retrieve_kernel_session(&mut retrieve, 0, b"none", &mut legacy).unwrap_err(),
            E::NOENT
        );
        // Another error is not a reason to try the other name.
        let mut busy = |_: &str| -> rustix::io::Result<String> { Err(E::BUSY) };
        assert_eq!(
            retrieve_kernel_session(&mut busy, 0, b"new", &mut legacy).unwrap_err(),
            E::BUSY
        );
    }

    #[test]
    fn fnv1a64_matches_its_published_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_setting_parses_none_auto_and_paths() {
        assert_eq!(Setting::parse(None), Setting::Auto);
        assert_eq!(Setting::parse(Some("none")), Setting::Off);
        assert_eq!(
            Setting::parse(Some("/tmp/x")),
            Setting::Path(PathBuf::from("/tmp/x"))
        );
        assert!(Backend::lazy(&Setting::Off).is_none());
    }

    fn memfd(bytes: &[u8]) -> OwnedFd {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::pwrite(&fd, bytes, 0).unwrap();
        fd
    }

    fn engine_with(files: &[(&str, u64, OwnedFd)]) -> Engine {
        let mut e = Engine::new(crate::registry().unwrap());
        for (name, token, fd) in files {
            let id = match e.outgoing_session(0, name.as_bytes()) {
                Some(id) => id,
                None => e.create_session(0, name.as_bytes()).unwrap(),
            };
            e.preserve_fd(id, Some(fd.as_fd()), *token).unwrap();
        }
        e
    }

    #[test]
    fn the_check_names_sockets_and_counts_memfds() {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        // A hugetlb memfd needs no huge page until it is mapped.
        let huge = rustix::fs::memfd_create(
            "huge",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::HUGETLB,
        )
        .unwrap();
        rustix::fs::ftruncate(&huge, 2 << 20).unwrap();
        let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
        let e = engine_with(&[
            ("m", 1, memfd(&[7; 5000])),
            ("m", 2, a),
            ("h", 3, huge),
            ("h", 4, pipe_r),
        ]);
        // With --convert the hugetlb memfd counts as crossing (it is re-backed first).
        let c = check(&e, true);
        assert_eq!(
            (c.sessions, c.preservable, c.preservable_bytes, c.lost.len()),
            (2, 2, 5000 + (2 << 20), 2)
        );
        let r = check(&e, false);
        assert_eq!(
            (r.sessions, r.preservable, r.preservable_bytes),
            (2, 1, 5000)
        );
        let lost: Vec<(&[u8], u64, u32)> = r
            .lost
            .iter()
            .map(|l| (&l.session[..], l.token, l.kind))
            .collect();
        assert_eq!(
            lost,
            vec![
                (&b"m"[..], 2, KEXEC_KIND_SOCKET),
                (&b"h"[..], 3, KEXEC_KIND_HUGETLB),
                (&b"h"[..], 4, KEXEC_KIND_PIPE),
            ]
        );
    }

    #[test]
    fn a_state_image_validates_and_leaves_sockets_behind() {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut e = engine_with(&[
            ("m", 1, memfd(b"hello")),
            ("m", 2, a),
            ("n", 3, memfd(b"x")),
        ]);
        e.freeze().unwrap();
        let (image, files) = state_image(&e).unwrap();
        assert_eq!(files.len(), 2);
        let parsed = Image::parse(&image).unwrap();
        assert_eq!(parsed.generation(), e.generation() + 1);
        validate(&parsed, &crate::registry().unwrap()).unwrap();
        let tokens: Vec<u64> = parsed
            .sessions()
            .flat_map(|s| s.files().map(|f| f.token).collect::<Vec<_>>())
            .collect();
        assert_eq!(tokens, vec![1, 3]);
        // The rewrite puts a new inode into each record and keeps the rest.
        let new = [memfd(b"hello"), memfd(b"x")];
        let fds: Vec<Option<OwnedFd>> = new
            .iter()
            .map(|f| Some(rustix::io::fcntl_dupfd_cloexec(f, 0).unwrap()))
            .collect();
        let mut records = HashMap::new();
        for s in parsed.sessions() {
            for f in s.files() {
                let mut r = record_of(f.record);
                r.ino = U64::new(424242);
                records.insert(f.fd_index.unwrap(), r.as_bytes().to_vec());
            }
        }
        let again = rewrite(&parsed, &records, &fds).unwrap();
        let again = Image::parse(&again).unwrap();
        for s in again.sessions() {
            for f in s.files() {
                assert_eq!(record_of(f.record).ino.get(), 424242);
            }
        }
    }

    #[test]
    fn validation_refuses_what_luod_never_writes() {
        let reg = crate::registry().unwrap();
        // An outgoing session.
        let fd = memfd(b"abc");
        let e = engine_with(&[("m", 1, rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap())]);
        let mut w = ImageWriter::new(1, WRITER_VERSION);
        let i = w.add_fd(3, luo_abi::image::S_IFREG);
        let view = e
            .file_view(e.outgoing_session(0, b"m").unwrap(), 1)
            .unwrap();
        let spec = FileSpec {
            compatible: MEMFD_COMPATIBLE,
            token: 1,
            fd_index: i,
            open_fd_index: NO_FD,
            status: 0,
            flags: FILE_FROZEN,
            record: view.record,
        };
        let session = SessionSpec {
            name: b"m",
            owner: 0,
            flags: 0,
            seq: 0,
        };
        w.add_session(&session, [spec]).unwrap();
        let bytes = w.finish().unwrap();
        let err = validate(&Image::parse(&bytes).unwrap(), &reg).unwrap_err();
        assert!(err.to_string().contains("not incoming"), "{err}");
        // A hugetlb file.
        let mut w = ImageWriter::new(1, WRITER_VERSION);
        let i = w.add_fd(3, luo_abi::image::S_IFREG);
        let spec = FileSpec {
            compatible: HUGETLB_COMPATIBLE,
            record: &[0; 8],
            fd_index: i,
            ..spec
        };
        let session = SessionSpec {
            flags: SESSION_INCOMING,
            ..session
        };
        w.add_session(&session, [spec]).unwrap();
        let bytes = w.finish().unwrap();
        let err = validate(&Image::parse(&bytes).unwrap(), &reg).unwrap_err();
        assert!(err.to_string().contains("cannot cross"), "{err}");
        // Garbage is no image at all.
        assert!(Image::parse(&[0xA5; 4096]).is_err());
    }
}
