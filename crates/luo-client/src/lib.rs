//! The Rust client of luod.
//!
//! A workload talks to luod through three kinds of object:
//!
//! - [`Device`]: the caller's `/dev/liveupdate` (one per uid at a time). It creates outgoing
//!   sessions and retrieves incoming ones.
//! - [`Session`]: one session. An outgoing session preserves descriptors under `u64` tokens and
//!   can be handed off; an incoming one gives them back and is finished. Dropping the last copy
//!   of a session's descriptor closes the session, in whatever process holds it: an outgoing
//!   session is then discarded, an incoming one finished.
//! - [`Control`]: status, the session list, and the administrative upgrade and reboot.
//!
//! Every call returns [`Error`], which carries the errno luod (or the kernel, for the same
//! call on `/dev/liveupdate`) answers.
//!
//! # A workload update
//!
//! Version 1 keeps its state in a memfd, hands the session off and exits; version 2 (here the
//! same process, normally a new one) retrieves it and finishes.
//!
//! ```no_run
//! use std::io::{Read, Seek, Write};
//! use luo_client::Device;
//!
//! # fn main() -> Result<(), luo_client::Error> {
//! // Version 1.
//! let state = rustix::fs::memfd_create("state", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
//! std::fs::File::from(state.try_clone().unwrap()).write_all(b"counter=41").unwrap();
//! let device = Device::open()?;
//! let session = device.create_session("cache-v1")?;
//! session.preserve(&state, 1)?;
//! session.handoff()?;
//! drop((session, device, state)); // version 1 exits
//!
//! // Version 2.
//! let device = Device::open()?;
//! let session = device.retrieve_session("cache-v1")?;
//! let mut file = std::fs::File::from(session.retrieve(1)?);
//! let mut text = String::new();
//! file.rewind().unwrap();
//! file.read_to_string(&mut text).unwrap();
//! assert_eq!(text, "counter=41");
//! session.finish()?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod transport;

use std::cell::Cell;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use luo_abi::Errno;
use luo_abi::uapi::{self, CreateSession, Finish, GetName, PreserveFd};
use luo_abi::wire::{self, ListEntry, ListReply, ListRequest, Op, StatusReply};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::transport::Recv;

/// A failed call: which operation, the errno, and luod's explanation when it gave one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The operation that failed.
    pub op: &'static str,
    /// The errno (the kernel's for the same call).
    pub errno: Errno,
    /// luod's explanation, if any.
    pub message: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.op, self.errno)?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl Error {
    fn new(op: &'static str, errno: Errno) -> Error {
        Error {
            op,
            errno,
            message: None,
        }
    }
    fn io(op: &'static str, e: rustix::io::Errno) -> Error {
        Error::new(op, Errno(e.raw_os_error()))
    }
}

/// luod's socket: `LUOD_SOCKET` if set, else `/run/luod/luod.sock` for root and
/// `$XDG_RUNTIME_DIR/luod.sock` (or `/tmp/luod-<uid>.sock`) for anyone else.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("LUOD_SOCKET") {
        return PathBuf::from(p);
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        PathBuf::from("/run/luod/luod.sock")
    } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        Path::new(&dir).join("luod.sock")
    } else {
        PathBuf::from(format!("/tmp/luod-{}.sock", uid.as_raw()))
    }
}

/// Connects to luod at `path`. `ENOENT` or `ECONNREFUSED` mean luod is not running there.
pub fn connect(path: &Path) -> Result<OwnedFd, Error> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::io("connect", e))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| Error::io("connect", e))?;
    rustix::net::connect(&fd, &addr).map_err(|e| Error::io("connect", e))?;
    Ok(fd)
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// One request and its reply on `fd`: the reply's argument and descriptors.
pub fn call(
    fd: BorrowedFd<'_>,
    name: &'static str,
    op: u32,
    arg: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1));
        id
    });
    let mut msg = Vec::with_capacity(16 + arg.len());
    wire::write_request(&mut msg, op, id, arg).map_err(|e| Error::new(name, e))?;
    transport::send(fd, &msg, fds).map_err(|e| Error::io(name, e))?;
    loop {
        let reply = match transport::recv(fd, true).map_err(|e| Error::io(name, e))? {
            Recv::Message(m) => m,
            Recv::Closed => return Err(Error::new(name, Errno(104))), // ECONNRESET
            // A receive timeout (SO_RCVTIMEO) expired, or the descriptor is non-blocking: give
            // the caller control back. A reply that arrives later is skipped as stale.
            Recv::WouldBlock => return Err(Error::new(name, Errno::EAGAIN)),
        };
        let (hdr, body) = wire::parse_reply(&reply.bytes).map_err(|e| Error::new(name, e))?;
        if hdr.id.get() != id && hdr.id.get() != 0 {
            continue; // a stale reply (a request abandoned earlier on a shared descriptor)
        }
        let errno = hdr.errno.get();
        if errno != 0 {
            let message = (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned());
            return Err(Error {
                op: name,
                errno: Errno(errno),
                message,
            });
        }
        return Ok((body.to_vec(), reply.fds));
    }
}

fn name_struct(op: &'static str, name: &str) -> Result<CreateSession, Error> {
    CreateSession::new(name.as_bytes()).ok_or(Error::new(op, Errno::EINVAL))
}

/// The caller's `/dev/liveupdate`: exclusive per uid while open.
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

impl Device {
    /// Opens the device at the [`default_socket`].
    pub fn open() -> Result<Device, Error> {
        Device::open_at(&default_socket())
    }

    /// Opens the device of luod at `socket`. `EBUSY` while the uid has another one open.
    pub fn open_at(socket: &Path) -> Result<Device, Error> {
        let fd = connect(socket)?;
        call(fd.as_fd(), "open device", Op::OpenDevice as u32, &[], &[])?;
        Ok(Device { fd })
    }

    /// CREATE_SESSION: a new outgoing session.
    pub fn create_session(&self, name: &str) -> Result<Session, Error> {
        self.session_call(
            "CREATE_SESSION",
            uapi::LIVEUPDATE_IOCTL_CREATE_SESSION,
            name,
        )
    }

    /// RETRIEVE_SESSION: an incoming session, handed over by a predecessor.
    pub fn retrieve_session(&self, name: &str) -> Result<Session, Error> {
        self.session_call(
            "RETRIEVE_SESSION",
            uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            name,
        )
    }

    fn session_call(&self, op_name: &'static str, op: u32, name: &str) -> Result<Session, Error> {
        let req = name_struct(op_name, name)?;
        let (_, mut fds) = call(self.fd.as_fd(), op_name, op, req.as_bytes(), &[])?;
        let fd = fds.pop().ok_or(Error::new(op_name, Errno::EPROTO))?;
        Ok(Session { fd })
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One session (its descriptor). Dropping the last copy closes it.
#[derive(Debug)]
pub struct Session {
    fd: OwnedFd,
}

impl Session {
    /// Wraps a session descriptor received some other way (inherited, passed over a socket).
    pub fn from_fd(fd: OwnedFd) -> Session {
        Session { fd }
    }

    /// PRESERVE_FD: preserve `file` under `token` (outgoing sessions).
    pub fn preserve(&self, file: impl AsFd, token: u64) -> Result<(), Error> {
        let req = PreserveFd {
            size: U32::new(16),
            fd: 0.into(),
            token: U64::new(token),
        };
        call(
            self.fd.as_fd(),
            "PRESERVE_FD",
            uapi::LIVEUPDATE_SESSION_PRESERVE_FD,
            req.as_bytes(),
            &[file.as_fd()],
        )?;
        Ok(())
    }

    /// RETRIEVE_FD: the file preserved under `token` (incoming sessions). Retrieving again
    /// gives another descriptor of the same open file.
    pub fn retrieve(&self, token: u64) -> Result<OwnedFd, Error> {
        let req = PreserveFd {
            size: U32::new(16),
            fd: (-1).into(),
            token: U64::new(token),
        };
        let (_, mut fds) = call(
            self.fd.as_fd(),
            "RETRIEVE_FD",
            uapi::LIVEUPDATE_SESSION_RETRIEVE_FD,
            req.as_bytes(),
            &[],
        )?;
        fds.pop().ok_or(Error::new("RETRIEVE_FD", Errno::EPROTO))
    }

    /// FINISH: end an incoming session (every file not retrieved is discarded).
    pub fn finish(&self) -> Result<(), Error> {
        let req = Finish {
            size: U32::new(8),
            reserved: U32::new(0),
        };
        call(
            self.fd.as_fd(),
            "FINISH",
            uapi::LIVEUPDATE_SESSION_FINISH,
            req.as_bytes(),
            &[],
        )?;
        Ok(())
    }

    /// GET_NAME: the session's name.
    pub fn name(&self) -> Result<String, Error> {
        let req = GetName {
            size: U32::new(72),
            reserved: U32::new(0),
            name: [0; 64],
        };
        let (reply, _) = call(
            self.fd.as_fd(),
            "GET_NAME",
            uapi::LIVEUPDATE_SESSION_GET_NAME,
            req.as_bytes(),
            &[],
        )?;
        let raw = reply
            .get(8..72)
            .ok_or(Error::new("GET_NAME", Errno::EPROTO))?;
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..len]).into_owned())
    }

    /// Handoff: freeze this outgoing session and move it to the incoming set, where a
    /// successor retrieves it by name. This descriptor is then inert.
    pub fn handoff(&self) -> Result<(), Error> {
        call(self.fd.as_fd(), "handoff", Op::Handoff as u32, &[], &[])?;
        Ok(())
    }
}

impl AsFd for Session {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Session> for OwnedFd {
    fn from(s: Session) -> OwnedFd {
        s.fd
    }
}

/// luod's state, as `luoctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Daemon pid.
    pub pid: u32,
    /// Daemon version.
    pub version: String,
    /// Reboots since the first start.
    pub generation: u64,
    /// Outgoing sessions.
    pub sessions_outgoing: u64,
    /// Incoming sessions.
    pub sessions_incoming: u64,
    /// Preserved files.
    pub files: u64,
    /// Bytes of memory they keep alive.
    pub bytes: u64,
    /// Connections.
    pub clients: u64,
    /// Milliseconds since this generation started.
    pub uptime_ms: u64,
    /// Descriptor limit.
    pub fd_limit: u64,
    /// Descriptors in use.
    pub fd_used: u64,
    /// Upgrades in this generation.
    pub upgrades: u64,
    /// Successors the last upgrade started (1: the first one, prepared while the old daemon
    /// kept serving, was taken; 0: no upgrade yet).
    pub last_upgrade_rounds: u32,
    /// The last upgrade fell back to stop and copy (the state kept changing while successors
    /// prepared).
    pub last_upgrade_stop_and_copy: bool,
}

/// One session, as `luoctl sessions` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// Namespace (uid).
    pub owner: u32,
    /// Name.
    pub name: String,
    /// Incoming (handed over) rather than outgoing.
    pub incoming: bool,
    /// Incoming and retrieved.
    pub retrieved: bool,
    /// Incoming and finished.
    pub finished: bool,
    /// Files held.
    pub files: u64,
    /// Memory they keep alive.
    pub bytes: u64,
}

/// A control connection: status, list, upgrade, reboot.
#[derive(Debug)]
pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Connects to luod at the [`default_socket`].
    pub fn connect() -> Result<Control, Error> {
        Control::connect_at(&default_socket())
    }

    /// Connects to luod at `socket`.
    pub fn connect_at(socket: &Path) -> Result<Control, Error> {
        Ok(Control {
            fd: connect(socket)?,
        })
    }

    /// Liveness check.
    pub fn ping(&self) -> Result<(), Error> {
        call(self.fd.as_fd(), "ping", Op::Ping as u32, &[], &[]).map(|_| ())
    }

    /// The daemon's status.
    pub fn status(&self) -> Result<Status, Error> {
        let (reply, _) = call(self.fd.as_fd(), "status", Op::Status as u32, &[], &[])?;
        let s = StatusReply::read_from_prefix(&reply)
            .map_err(|_| Error::new("status", Errno::EPROTO))?
            .0;
        let v = &s.version;
        let vlen = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        Ok(Status {
            pid: s.pid.get(),
            version: String::from_utf8_lossy(&v[..vlen]).into_owned(),
            generation: s.generation.get(),
            sessions_outgoing: s.sessions_outgoing.get(),
            sessions_incoming: s.sessions_incoming.get(),
            files: s.files.get(),
            bytes: s.bytes.get(),
            clients: s.clients.get(),
            uptime_ms: s.uptime_ms.get(),
            fd_limit: s.fd_limit.get(),
            fd_used: s.fd_used.get(),
            upgrades: s.upgrades.get(),
            last_upgrade_rounds: s.last_upgrade_rounds.get(),
            last_upgrade_stop_and_copy: s.last_upgrade_flags.get()
                & luo_abi::wire::UPGRADE_STOP_AND_COPY
                != 0,
        })
    }

    /// Every session the caller may see (root: all).
    pub fn sessions(&self) -> Result<Vec<SessionSummary>, Error> {
        let mut out = Vec::new();
        loop {
            let req = ListRequest {
                start: U64::new(out.len() as u64),
            };
            let (reply, _) = call(
                self.fd.as_fd(),
                "list",
                Op::List as u32,
                req.as_bytes(),
                &[],
            )?;
            let (head, mut rest) = ListReply::read_from_prefix(&reply)
                .map_err(|_| Error::new("list", Errno::EPROTO))?;
            let count = head.count.get();
            for _ in 0..count {
                let (e, tail) = ListEntry::read_from_prefix(rest)
                    .map_err(|_| Error::new("list", Errno::EPROTO))?;
                rest = tail;
                let len = e.name.iter().position(|&b| b == 0).unwrap_or(64);
                let flags = e.flags.get();
                out.push(SessionSummary {
                    owner: e.owner.get(),
                    name: String::from_utf8_lossy(&e.name[..len]).into_owned(),
                    incoming: flags & wire::LIST_INCOMING != 0,
                    retrieved: flags & wire::LIST_RETRIEVED != 0,
                    finished: flags & wire::LIST_FINISHED != 0,
                    files: e.files.get(),
                    bytes: e.bytes.get(),
                });
            }
            if count == 0 || out.len() as u64 >= head.total.get() {
                return Ok(out);
            }
        }
    }

    /// Replaces luod's binary with `binary` (its current one if `None`). Returns once the new
    /// binary serves; on error the old one still does.
    pub fn upgrade(&self, binary: Option<&Path>) -> Result<(), Error> {
        let path = binary
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        call(
            self.fd.as_fd(),
            "upgrade",
            Op::Upgrade as u32,
            path.as_bytes(),
            &[],
        )
        .map(|_| ())
    }

    /// Emulates a reboot: open outgoing sessions become incoming, every connection is cut.
    pub fn reboot(&self) -> Result<(), Error> {
        call(self.fd.as_fd(), "reboot", Op::Reboot as u32, &[], &[]).map(|_| ())
    }
}
