//! luod's listening socket: where it lives, the directory that holds it, and the lock beside
//! it.
//!
//! The default socket ([`Place::default_for_caller`], the rule of `luo_client::SocketDir`) is in
//! a directory luod checks before it puts anything there, because a directory another user can
//! write to lets that user serve the socket instead (and receive the clients' descriptors):
//!
//! | directory | created | owner | refused if it has |
//! |---|---|---|---|
//! | `/run/luod` (root) | mode 0755 | root | write permission for group or other |
//! | `$XDG_RUNTIME_DIR` | never | luod's euid | write permission for group or other |
//! | `/tmp/luod-<uid>` | mode 0700 | luod's euid | any permission for group or other |
//!
//! A symlink or anything but a directory there is refused too: the directory is opened with
//! `O_NOFOLLOW | O_DIRECTORY` and checked with `fstat` on what was opened.
//!
//! An explicit path (`--socket`, `LUOD_SOCKET`, the config file) is the operator's choice: its
//! directory is created if missing and not checked. Whatever the path, luod never follows a
//! symlink at the socket or at its lock (`<socket>.lock`, opened with `O_NOFOLLOW`), and
//! removes an old socket file only while it holds the lock: the only one it removes is a
//! socket a luod that is gone left behind (after a `kill -9`). Anything else at the socket's
//! path is refused.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use luo_client::SocketDir;
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tracing::info;

/// What the directory of a default socket must be.
#[derive(Clone, Debug)]
struct DirRule {
    /// Created with this mode if missing, or required to exist (`None`).
    create: Option<u32>,
    /// Its required owner.
    owner: u32,
    /// Permission bits it must not have.
    forbidden: u32,
    /// Where the directory comes from, for messages.
    origin: &'static str,
}

/// Where luod serves: the socket's path and, for a default socket, the rule of its directory.
#[derive(Clone, Debug)]
pub struct Place {
    /// The socket.
    pub socket: PathBuf,
    rule: Option<DirRule>,
}

impl Place {
    /// The default socket of the calling user (see the module doc).
    pub fn default_for_caller() -> Place {
        let euid = rustix::process::geteuid().as_raw();
        let dir = SocketDir::of_caller();
        let rule = match &dir {
            SocketDir::System => DirRule {
                create: Some(0o755),
                owner: 0,
                forbidden: 0o022,
                origin: "root's default",
            },
            SocketDir::Runtime(_) => DirRule {
                create: None,
                owner: euid,
                forbidden: 0o022,
                origin: "$XDG_RUNTIME_DIR",
            },
            SocketDir::Private(_) => DirRule {
                create: Some(0o700),
                owner: euid,
                forbidden: luo_client::socket::PRIVATE_DIR_FORBIDDEN,
                origin: "the default without $XDG_RUNTIME_DIR",
            },
        };
        Place {
            socket: dir.socket(),
            rule: Some(rule),
        }
    }

    /// A socket the operator named.
    pub fn explicit(socket: PathBuf) -> Place {
        Place { socket, rule: None }
    }
}

/// Takes the socket's lock (a second luod fails here), replaces a stale socket, then binds
/// with permissions `mode` and listens. Returns the listener and the lock.
pub fn bind(place: &Place, mode: u32) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let (dir, lock) = take_lock(place)?;
    let socket = &place.socket;
    let name = socket
        .file_name()
        .with_context(|| format!("Invalid socket path {}: no file name", socket.display()))?;
    remove_stale(&dir, name, socket)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(socket)
        .with_context(|| format!("Invalid socket path {}", socket.display()))?;
    // The socket file is created with mode 0777 less the umask: set the umask so that it has
    // `mode` from the start. A chmod after bind would follow a symlink put there meanwhile.
    // The umask is the process's: luod has no other thread yet that could create a file.
    let old = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
    let bound = rustix::net::bind(&fd, &addr);
    rustix::process::umask(old);
    bound.with_context(|| format!("Cannot bind {}", socket.display()))?;
    rustix::net::listen(&fd, 1024)?;
    Ok((fd, lock))
}

/// Takes the lock of a socket systemd bound (socket activation): a second luod on the same
/// socket fails here as it would at [`bind`].
pub fn lock(place: &Place) -> anyhow::Result<OwnedFd> {
    Ok(take_lock(place)?.1)
}

/// Opens (checking it, for a default socket) the socket's directory and takes the lock in it.
fn take_lock(place: &Place) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let socket = &place.socket;
    let name = socket
        .file_name()
        .with_context(|| format!("Invalid socket path {}: no file name", socket.display()))?;
    let dir_path = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = match &place.rule {
        Some(rule) => checked_dir(dir_path, rule)?,
        None => operator_dir(dir_path)?,
    };
    let lock_name = Path::new(name).with_extension("lock");
    let lock_path = dir_path.join(&lock_name);
    let lock = open_lock(&dir, &lock_name, &lock_path)?;
    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "Another luod is already serving {} (it holds {}); stop it first",
            socket.display(),
            lock_path.display()
        );
    }
    Ok((dir, lock))
}

/// Opens (creating it if the rule says so) the directory of a default socket and checks it.
fn checked_dir(dir: &Path, rule: &DirRule) -> anyhow::Result<OwnedFd> {
    let mut created = false;
    if let Some(mode) = rule.create {
        // mkdir never follows a symlink: one already there is EEXIST, and refused below.
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(mode)) {
            Ok(()) => created = true,
            Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("Cannot create the socket directory {}", dir.display())
                });
            }
        }
    }
    let opened = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::NOENT) => bail!(
            "The socket directory {} ({}) does not exist; create it (owned by uid {}, mode \
             0700), or choose a socket with --socket",
            dir.display(),
            rule.origin,
            rule.owner
        ),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            let what = match rustix::fs::lstat(dir).map(|st| FileType::from_raw_mode(st.st_mode)) {
                Ok(FileType::Symlink) => "is a symlink",
                _ => "is not a directory",
            };
            return Err(refusal(dir, rule, what));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("Cannot open the socket directory {}", dir.display()));
        }
    };
    if created && let Some(mode) = rule.create {
        // The umask may have taken bits away; what luod just made is exactly `mode`.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .with_context(|| format!("Cannot chmod {}", dir.display()))?;
    }
    let st = rustix::fs::fstat(&fd)?;
    if st.st_uid != rule.owner {
        let what = format!("is owned by uid {}, not uid {}", st.st_uid, rule.owner);
        return Err(refusal(dir, rule, &what));
    }
    let perm = st.st_mode & 0o7777;
    if perm & rule.forbidden != 0 {
        let what = if rule.forbidden == 0o077 {
            format!("has mode {perm:04o}: group and other must have no permission (0700)")
        } else {
            format!("has mode {perm:04o}: group and other must not have write permission")
        };
        return Err(refusal(dir, rule, &what));
    }
    Ok(fd)
}

/// The error for a default socket directory that fails its check.
fn refusal(dir: &Path, rule: &DirRule, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "Refusing the socket directory {} ({}): it {what}. Another user may have created it to \
         take over luod's socket. Remove it (as its owner or root), or set XDG_RUNTIME_DIR, or \
         choose a socket with --socket",
        dir.display(),
        rule.origin
    )
}

/// Opens the directory of an explicit socket, creating it (and its parents) if missing.
fn operator_dir(dir: &Path) -> anyhow::Result<OwnedFd> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Cannot create the socket directory {}", dir.display()))?;
    }
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Cannot open the socket directory {}", dir.display()))
}

/// Opens (creating) the lock file `name` in `dir`, never through a symlink; it must be a
/// regular file.
fn open_lock(dir: &OwnedFd, name: &Path, path: &Path) -> anyhow::Result<OwnedFd> {
    let lock = match rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => bail!(
            "The lock file {} is a symlink; luod never follows one: remove it",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("Cannot open the lock file {}", path.display()));
        }
    };
    let st = rustix::fs::fstat(&lock)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        bail!(
            "The lock file {} is not a regular file: remove it",
            path.display()
        );
    }
    Ok(lock)
}

/// With the lock held: removes a socket file left at `name` by a luod that is gone; refuses a
/// symlink or anything else there.
fn remove_stale(dir: &OwnedFd, name: &std::ffi::OsStr, socket: &Path) -> anyhow::Result<()> {
    let st = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("Cannot examine {}", socket.display())),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Socket => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .with_context(|| format!("Cannot remove the stale socket {}", socket.display()))?;
            info!(socket = %socket.display(), "removed the socket a stopped luod left behind");
            Ok(())
        }
        FileType::Symlink => bail!(
            "{} is a symlink; luod never follows or replaces one: remove it",
            socket.display()
        ),
        _ => bail!(
            "{} exists and is not a socket: remove it, or choose another --socket",
            socket.display()
        ),
    }
}
