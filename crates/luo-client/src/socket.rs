//! Where luod's socket is, and who may serve it.
//!
//! luod and every client (this crate, `luoctl`, the preload library) find the socket by the
//! same rule, [`SocketDir::of_caller`]: `/run/luod/luod.sock` for root,
//! `$XDG_RUNTIME_DIR/luod.sock` for another user who has a runtime directory, and otherwise
//! `/tmp/luod-<uid>/luod.sock`, in a private directory luod creates with mode 0700. A directory
//! under `/tmp` is not enough by itself: another user can create `/tmp/luod-<uid>` first. So
//! [`connect`] checks two things before it returns a connection, and sends nothing before:
//!
//! - if the path is the caller's private default, `/tmp/luod-<uid>/luod.sock`, its directory
//!   must be a real directory (not a symlink) owned by the caller, with no permission for group
//!   or other ([`ErrorKind::UnsafeDirectory`] otherwise, and no connection is made);
//! - whatever the path, the process that serves it (`SO_PEERCRED` of the connection) must run
//!   as root, as the caller's own effective uid, or as the uid named in [`SERVER_UID_ENV`]
//!   ([`ErrorKind::UntrustedServer`] otherwise). A server that fails this never sees a byte or a
//!   descriptor from this process: the connection is closed unused.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use luo_abi::Errno;
use rustix::fs::FileType;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::{Error, ErrorKind};

/// The environment variable naming one more uid a client trusts to serve luod's socket,
/// besides root and its own effective uid (a decimal uid, e.g. `LUOD_SERVER_UID=990` for a
/// luod that runs as a dedicated system user). Anything that is not a decimal uid trusts no
/// one more.
pub const SERVER_UID_ENV: &str = "LUOD_SERVER_UID";

/// The socket's file name in its directory.
pub const SOCKET_NAME: &str = "luod.sock";

/// Permission bits the private directory must not have: none for group or other.
pub const PRIVATE_DIR_FORBIDDEN: u32 = 0o077;

/// The private directory of `uid` under `/tmp`, for a user without `XDG_RUNTIME_DIR`.
pub fn private_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/luod-{uid}"))
}

/// The directory that holds luod's default socket, as luod and every client choose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketDir {
    /// `/run/luod`: root's. luod creates it (0755) and requires it owned by root and not
    /// writable by group or other.
    System,
    /// `$XDG_RUNTIME_DIR` (an absolute path): a non-root user's when it is set. luod requires
    /// it to exist, be owned by the user and not writable by group or other.
    Runtime(PathBuf),
    /// `/tmp/luod-<uid>` ([`private_dir`]): a non-root user's without `XDG_RUNTIME_DIR`. luod
    /// creates it with mode 0700 and requires it owned by the user with no permission for
    /// group or other; clients check the same before they connect.
    Private(PathBuf),
}

impl SocketDir {
    /// The directory for the calling process's effective uid and environment
    /// (`LUOD_SOCKET` is not looked at: see [`default_socket`]). An empty or relative
    /// `XDG_RUNTIME_DIR` counts as unset, as the XDG spec says.
    pub fn of_caller() -> SocketDir {
        let uid = rustix::process::geteuid();
        if uid.is_root() {
            return SocketDir::System;
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) if Path::new(&dir).is_absolute() => SocketDir::Runtime(PathBuf::from(dir)),
            _ => SocketDir::Private(private_dir(uid.as_raw())),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            SocketDir::System => Path::new("/run/luod"),
            SocketDir::Runtime(p) | SocketDir::Private(p) => p,
        }
    }

    /// The socket in it.
    pub fn socket(&self) -> PathBuf {
        self.path().join(SOCKET_NAME)
    }
}

/// luod's socket: `LUOD_SOCKET` if set, else the socket of [`SocketDir::of_caller`]:
/// `/run/luod/luod.sock` for root, `$XDG_RUNTIME_DIR/luod.sock` or `/tmp/luod-<uid>/luod.sock`
/// for anyone else.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("LUOD_SOCKET") {
        Some(p) => PathBuf::from(p),
        None => SocketDir::of_caller().socket(),
    }
}

/// Connects to luod at `path` and checks who serves it (see the module doc) before anything
/// is sent. `ENOENT` or `ECONNREFUSED` mean luod is not running there; `EACCES` with
/// [`ErrorKind::UntrustedServer`] or [`ErrorKind::UnsafeDirectory`] that the socket is not
/// luod's, or not safely.
pub fn connect(path: &Path) -> Result<OwnedFd, Error> {
    let euid = rustix::process::geteuid().as_raw();
    let private = private_dir(euid);
    if path.parent() == Some(private.as_path())
        && path.file_name() == Some(SOCKET_NAME.as_ref())
        && let Some(problem) = private_dir_problem(&private, euid)
    {
        return Err(Error::refused(ErrorKind::UnsafeDirectory {
            socket: path.to_path_buf(),
            dir: private,
            problem,
        }));
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::io("connect", e))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| Error::io("connect", e))?;
    rustix::net::connect(&fd, &addr).map_err(|e| Error::io("connect", e))?;
    let server = rustix::net::sockopt::socket_peercred(&fd)
        .map_err(|e| Error::io("connect", e))?
        .uid
        .as_raw();
    if !trusted(server, euid) {
        return Err(Error::refused(ErrorKind::UntrustedServer {
            socket: path.to_path_buf(),
            server_uid: server,
            client_uid: euid,
        }));
    }
    Ok(fd)
}

/// True if a server running as `server` may serve a client of effective uid `client`: root,
/// the client itself, or the uid of [`SERVER_UID_ENV`].
pub fn trusted(server: u32, client: u32) -> bool {
    server == 0 || server == client || trusted_extra() == Some(server)
}

/// The uid of [`SERVER_UID_ENV`], if it holds one.
fn trusted_extra() -> Option<u32> {
    std::env::var(SERVER_UID_ENV).ok()?.trim().parse().ok()
}

/// What is wrong with the private directory `dir` of `uid`, if anything. A directory that
/// does not exist is fine here (the connect then finds no luod).
fn private_dir_problem(dir: &Path, uid: u32) -> Option<String> {
    let st = match rustix::fs::lstat(dir) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return None,
        Err(e) => return Some(format!("cannot be examined ({e})")),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => return Some("is a symlink".to_owned()),
        _ => return Some("is not a directory".to_owned()),
    }
    if st.st_uid != uid {
        return Some(format!("is owned by uid {}", st.st_uid));
    }
    let mode = st.st_mode & 0o7777;
    if mode & PRIVATE_DIR_FORBIDDEN != 0 {
        return Some(format!(
            "has mode {mode:04o} (group and other must have no permission)"
        ));
    }
    None
}

impl Error {
    /// The client refused the socket: `EACCES`, nothing sent.
    fn refused(kind: ErrorKind) -> Error {
        Error {
            op: "connect",
            errno: Errno::EACCES,
            message: None,
            kind,
        }
    }
}
