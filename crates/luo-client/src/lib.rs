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
//! Each of them connects to luod's socket, [`default_socket`] unless given a path, and checks
//! who serves it before it sends anything: root, the caller's own uid, or the uid trusted by
//! `LUOD_SERVER_UID` (module [`socket`]).
//!
//! Every call returns [`Error`], which carries the errno luod (or the kernel, for the same
//! call on `/dev/liveupdate`) answers; a socket the client refused is [`ErrorKind`]
//! `UntrustedServer` or `UnsafeDirectory`, with `EACCES`.
//!
//! Each call is one request and one reply, a round trip to luod. To preserve many files,
//! [`Session::preserve_many`] pipelines the requests: the same PRESERVE_FD per file, with the
//! same outcome per file, but up to [`PRESERVE_WINDOW`] in flight, so a batch costs about one
//! round trip per window. Its [`PreserveManyError`] lists every file not preserved with its
//! [`Error`].
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

pub mod socket;
pub mod transport;

pub use socket::{SocketDir, connect, default_socket};

use std::cell::Cell;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use luo_abi::Errno;
use luo_abi::uapi::{self, CreateSession, Finish, GetName, PreserveFd};
use luo_abi::wire::{self, ListEntry, ListReply, ListRequest, Op, StatusReply};
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
    /// What kind of failure: a call that failed, or a socket the client refused.
    pub kind: ErrorKind,
}

/// The kinds of [`Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// luod answered the errno, or the system call carrying the request failed with it.
    Call,
    /// The process serving the socket runs as a uid the client does not trust (see
    /// [`socket`]): the connection was closed before anything was sent on it. `EACCES`.
    UntrustedServer {
        /// The socket.
        socket: PathBuf,
        /// The server's uid (`SO_PEERCRED`).
        server_uid: u32,
        /// The client's effective uid.
        client_uid: u32,
    },
    /// The socket is the caller's private default (`/tmp/luod-<uid>/luod.sock`), and that
    /// directory is not the caller's own private directory: nothing was connected. `EACCES`.
    UnsafeDirectory {
        /// The socket.
        socket: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// What is wrong with the directory ("is owned by uid 65534").
        problem: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Call => {}
            ErrorKind::UntrustedServer {
                socket,
                server_uid,
                client_uid,
            } => {
                return write!(
                    f,
                    "{} refused: {} is served by uid {server_uid}, not by root or uid \
                     {client_uid}, so it is not luod's socket and nothing was sent (set {}=\
                     {server_uid} to trust that uid)",
                    self.op,
                    socket.display(),
                    socket::SERVER_UID_ENV,
                );
            }
            ErrorKind::UnsafeDirectory {
                socket,
                dir,
                problem,
            } => {
                return write!(
                    f,
                    "{} refused: {}: its directory {} {problem}, not a private directory of \
                     this user (another user may have created it); remove it, or set \
                     XDG_RUNTIME_DIR or LUOD_SOCKET",
                    self.op,
                    socket.display(),
                    dir.display(),
                );
            }
        }
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
            kind: ErrorKind::Call,
        }
    }
    fn io(op: &'static str, e: rustix::io::Errno) -> Error {
        Error::new(op, Errno(e.raw_os_error()))
    }
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// `n` fresh request ids, consecutive: the first one.
fn take_ids(n: u64) -> u64 {
    NEXT_ID.with(|next| {
        let first = next.get();
        next.set(first.wrapping_add(n));
        first
    })
}

/// One request and its reply on `fd`: the reply's argument and descriptors.
pub fn call(
    fd: BorrowedFd<'_>,
    name: &'static str,
    op: u32,
    arg: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
    let id = take_ids(1);
    let mut msg = Vec::with_capacity(16 + arg.len());
    wire::write_request(&mut msg, op, id, arg).map_err(|e| Error::new(name, e))?;
    let mut buf = [0u8; wire::MAX_MESSAGE];
    if let Err(e) = transport::send(fd, &msg, fds) {
        // luod refuses a connection it cannot take (its uid is over its descriptor budget) by
        // answering it, with request id 0, and closing it: a request sent after the close
        // fails with EPIPE while the answer still waits to be read.
        if e == rustix::io::Errno::PIPE
            && let Ok(Recv::Message(m)) = transport::recv_into(fd, &mut buf, false)
            && let Ok((hdr, body)) = wire::parse_reply(&buf[..m.len])
            && hdr.id.get() == 0
        {
            answer(name, hdr.errno.get(), body)?;
        }
        return Err(Error::io(name, e));
    }
    loop {
        let reply = receive(fd, name, &mut buf)?;
        let (hdr, body) = wire::parse_reply(&buf[..reply.len]).map_err(|e| Error::new(name, e))?;
        if hdr.id.get() != id && hdr.id.get() != 0 {
            continue; // a stale reply (a request abandoned earlier on a shared descriptor)
        }
        answer(name, hdr.errno.get(), body)?;
        return Ok((body.to_vec(), reply.fds));
    }
}

/// Receives one reply into `buf`; a hang-up and a receive timeout are errors of `name`.
fn receive(
    fd: BorrowedFd<'_>,
    name: &'static str,
    buf: &mut [u8],
) -> Result<transport::Incoming, Error> {
    match transport::recv_into(fd, buf, true).map_err(|e| Error::io(name, e))? {
        Recv::Message(m) => Ok(m),
        Recv::Closed => Err(Error::new(name, Errno::ECONNRESET)),
        // A receive timeout (SO_RCVTIMEO) expired, or the descriptor is non-blocking: give
        // the caller control back. A reply that arrives later is skipped as stale.
        Recv::WouldBlock => Err(Error::new(name, Errno::EAGAIN)),
    }
}

/// The outcome a reply header's `errno` and body stand for.
fn answer(name: &'static str, errno: i32, body: &[u8]) -> Result<(), Error> {
    if errno == 0 {
        return Ok(());
    }
    let message = (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned());
    Err(Error {
        op: name,
        errno: Errno(errno),
        message,
        kind: ErrorKind::Call,
    })
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

    /// PRESERVE_FD for many files: each `(file, token)` exactly as [`preserve`](Self::preserve)
    /// would, in order, but pipelined: the requests go out back to back, at most
    /// [`PRESERVE_WINDOW`] of them unanswered at a time, so a batch costs about one round trip
    /// per window instead of one per file.
    ///
    /// Every file gets its own request (its own id, its one descriptor), and luod answers the
    /// requests of a connection in order, so the outcome of each file is the one a loop of
    /// `preserve` calls would have given it; a file refused does not stop the others. Every
    /// reply is read before this returns. On failure the error lists each file that was not
    /// preserved, with the kernel's errno for it.
    ///
    /// If the connection itself fails (luod hangs up, or a receive timeout set on the
    /// descriptor expires), the files still unanswered and those not yet sent are reported with
    /// that error; luod may have preserved some of the unanswered ones.
    ///
    /// ```no_run
    /// use std::os::fd::{AsFd, OwnedFd};
    /// use rustix::fs::{MemfdFlags, memfd_create};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let device = luo_client::Device::open()?;
    /// let session = device.create_session("many")?;
    /// let memfds: Vec<OwnedFd> = (0..1000)
    ///     .map(|_| memfd_create("part", MemfdFlags::CLOEXEC))
    ///     .collect::<Result<_, _>>()?;
    /// let batch: Vec<_> = memfds.iter().zip(0u64..).map(|(f, t)| (f.as_fd(), t)).collect();
    /// if let Err(e) = session.preserve_many(&batch) {
    ///     for f in &e.failed {
    ///         eprintln!("token {}: {}", f.token, f.error.errno);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn preserve_many(&self, files: &[(BorrowedFd<'_>, u64)]) -> Result<(), PreserveManyError> {
        let mut batch = Batch {
            fd: self.fd.as_fd(),
            first_id: take_ids(files.len() as u64),
            unanswered: std::collections::VecDeque::with_capacity(PRESERVE_WINDOW),
            failed: Vec::new(),
            reply: [0u8; wire::MAX_MESSAGE],
        };
        let mut msg = Vec::with_capacity(32);
        for (index, &(file, token)) in files.iter().enumerate() {
            let result = (|| {
                while batch.unanswered.len() >= PRESERVE_WINDOW {
                    batch.read_reply(files)?;
                }
                let req = PreserveFd {
                    size: U32::new(16),
                    fd: 0.into(),
                    token: U64::new(token),
                };
                let id = batch.first_id.wrapping_add(index as u64);
                msg.clear();
                wire::write_request(
                    &mut msg,
                    uapi::LIVEUPDATE_SESSION_PRESERVE_FD,
                    id,
                    req.as_bytes(),
                )
                .map_err(|e| Error::new(PRESERVE, e))?;
                loop {
                    match transport::send(batch.fd, &msg, &[file]) {
                        Ok(()) => {
                            batch.unanswered.push_back(index);
                            return Ok(());
                        }
                        // Too many descriptors in flight for this user's descriptor limit:
                        // luod holds none of ours once it has answered, so collect an answer
                        // first (a lone `preserve` would not have hit the limit).
                        Err(rustix::io::Errno::TOOMANYREFS) if !batch.unanswered.is_empty() => {
                            batch.read_reply(files)?;
                        }
                        // This file's request never left: it fails alone, as `preserve` would.
                        Err(e) => {
                            batch.fail(index, token, Error::io(PRESERVE, e));
                            return Ok(());
                        }
                    }
                }
            })();
            if let Err(e) = result {
                // The connection failed: nothing more will be answered.
                batch.abandon(files, index, &e);
                return Err(batch.into_error());
            }
        }
        while !batch.unanswered.is_empty() {
            if let Err(e) = batch.read_reply(files) {
                batch.abandon(files, files.len(), &e);
                break;
            }
        }
        if batch.failed.is_empty() {
            Ok(())
        } else {
            Err(batch.into_error())
        }
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

    /// REPLACE_FD (a luod extension): swap the file preserved under `token` in this outgoing
    /// session for `file`, in one step. `file` passes every check of
    /// [`preserve`](Self::preserve); if anything fails, the old file stays preserved as it
    /// was. A VMM that moved its guest's RAM onto new backing calls this so that its next
    /// handoff carries the new memory.
    pub fn replace(&self, token: u64, file: impl AsFd) -> Result<(), Error> {
        let req = wire::ReplaceFdRequest {
            token: U64::new(token),
        };
        call(
            self.fd.as_fd(),
            "REPLACE_FD",
            Op::ReplaceFd as u32,
            req.as_bytes(),
            &[file.as_fd()],
        )?;
        Ok(())
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

/// The operation name [`Error`] carries for PRESERVE_FD.
const PRESERVE: &str = "PRESERVE_FD";

/// At most this many requests of one [`Session::preserve_many`] are unanswered at a time.
///
/// Their replies (32 bytes each) then always fit the socket's receive buffer, so luod never
/// has to stop serving the connection for want of room, and the client never blocks sending
/// while luod waits for it to read.
pub const PRESERVE_WINDOW: usize = 64;

/// One file [`Session::preserve_many`] did not preserve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedFile {
    /// Its position in the slice given.
    pub index: usize,
    /// Its token.
    pub token: u64,
    /// Why: for a file luod refused, the errno the kernel's PRESERVE_FD gives.
    pub error: Error,
}

/// A [`Session::preserve_many`] that did not preserve every file. Every file not listed was
/// preserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreserveManyError {
    /// The files not preserved, in the order given.
    pub failed: Vec<FailedFile>,
}

impl fmt::Display for PreserveManyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PRESERVE_FD failed for {} file(s):", self.failed.len())?;
        for (i, file) in self.failed.iter().enumerate() {
            if i == 8 {
                return write!(f, " ...");
            }
            write!(f, " token {}: {};", file.token, file.error.errno)?;
        }
        Ok(())
    }
}

impl std::error::Error for PreserveManyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failed
            .first()
            .map(|f| &f.error as &(dyn std::error::Error + 'static))
    }
}

/// The state of one [`Session::preserve_many`].
struct Batch<'a> {
    fd: BorrowedFd<'a>,
    /// The id of the first file's request; file `i` has `first_id + i`.
    first_id: u64,
    /// Indices of the files whose request was sent and not answered, oldest first.
    unanswered: std::collections::VecDeque<usize>,
    failed: Vec<FailedFile>,
    reply: [u8; wire::MAX_MESSAGE],
}

impl Batch<'_> {
    fn fail(&mut self, index: usize, token: u64, error: Error) {
        self.failed.push(FailedFile {
            index,
            token,
            error,
        });
    }

    /// Reads one reply and settles the file it answers. An error means the connection
    /// failed.
    fn read_reply(&mut self, files: &[(BorrowedFd<'_>, u64)]) -> Result<(), Error> {
        loop {
            let reply = receive(self.fd, PRESERVE, &mut self.reply)?;
            drop(reply.fds); // PRESERVE_FD returns none
            let (index, outcome) = match wire::parse_reply(&self.reply[..reply.len]) {
                Ok((hdr, body)) => {
                    let id = hdr.id.get();
                    // Id 0 answers a request luod could not decode: luod answers in order,
                    // so the oldest.
                    let Some(at) = self
                        .unanswered
                        .iter()
                        .position(|&i| id == 0 || self.first_id.wrapping_add(i as u64) == id)
                    else {
                        continue; // a stale reply (to a call abandoned earlier)
                    };
                    let index = self.unanswered.remove(at).unwrap_or(at);
                    (index, answer(PRESERVE, hdr.errno.get(), body))
                }
                Err(e) => match self.unanswered.pop_front() {
                    Some(index) => (index, Err(Error::new(PRESERVE, e))),
                    None => continue,
                },
            };
            if let Err(e) = outcome {
                self.fail(index, files[index].1, e);
            }
            return Ok(());
        }
    }

    /// After the connection failed with `e`: every unanswered file, and every file from
    /// `unsent` on, fails with it.
    fn abandon(&mut self, files: &[(BorrowedFd<'_>, u64)], unsent: usize, e: &Error) {
        while let Some(index) = self.unanswered.pop_front() {
            self.fail(index, files[index].1, e.clone());
        }
        for (index, &(_, token)) in files.iter().enumerate().skip(unsent) {
            self.fail(index, token, e.clone());
        }
    }

    fn into_error(mut self) -> PreserveManyError {
        self.failed.sort_by_key(|f| f.index);
        PreserveManyError {
            failed: self.failed,
        }
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
    /// The migration in progress: bytes copied so far (0 when none, and for non-root).
    pub migrate_done: u64,
    /// The migration in progress: bytes to copy (0 when none).
    pub migrate_total: u64,
    /// luod's copy engine since start: bytes copied (root only).
    pub copy_bytes: u64,
    /// Units copied.
    pub copy_units: u64,
    /// Units a copy channel left undone, copied by the CPU instead.
    pub copy_units_fallback: u64,
    /// Batches the policy kept on the CPU.
    pub copy_batches_cpu: u64,
    /// The keeper's pid: luod's main process, the same for as long as luod runs (0 from a
    /// luod older than wire version 5).
    pub keeper_pid: u32,
    /// Servers the keeper started because the one before died.
    pub restarts: u32,
    /// How long the last recovery took, in microseconds (0 before any).
    pub last_recovery_us: u64,
}

/// What a migration did ([`Control::migrate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// Bytes copied: the file's size.
    pub bytes: u64,
    /// The new backing's page size.
    pub page_size: u64,
    /// How long the copy took.
    pub copy_time: std::time::Duration,
    /// Units copied.
    pub units: u64,
    /// Units a copy channel left undone, copied by the CPU instead.
    pub units_fallback: u64,
    /// Copy channels of luod's copy engine (0: the CPU alone).
    pub channels: u32,
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

/// What to do with the host kernel's live update ([`Control::kexec`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KexecOptions {
    /// Only report which files can cross; change nothing.
    pub check: bool,
    /// Forward even if some files cannot cross (they are lost at the kexec).
    pub drop_unpreservable: bool,
    /// Forward, but leave the kexec itself to the caller (`kexec -e`, `systemctl kexec`).
    pub no_exec: bool,
    /// Undo a forward made with `no_exec`.
    pub cancel: bool,
    /// Re-back every hugetlb memfd onto shmem before the forward, so that it crosses (with
    /// `check`: report as if they were).
    pub convert: bool,
}

/// A preserved file that cannot cross a kexec of this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpreservable {
    /// The session's namespace (uid).
    pub owner: u32,
    /// The session's name.
    pub session: String,
    /// The file's token.
    pub token: u64,
    /// What it is: `hugetlb-memfd`, `socket`, `pipe`, `eventfd`, `pci-config` or `other`.
    pub kind: &'static str,
    /// Bytes of memory it holds.
    pub bytes: u64,
}

/// luod's answer to [`Control::kexec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KexecReport {
    /// Sessions that cross (outgoing, and incoming not yet retrieved).
    pub sessions: u64,
    /// Files that can cross.
    pub preservable: u64,
    /// Bytes of memory those files hold.
    pub preservable_bytes: u64,
    /// Files that cannot cross, in all.
    pub unpreservable: u64,
    /// The first of them (a reply lists at most `wire::KEXEC_LIST_MAX`).
    pub listed: Vec<Unpreservable>,
    /// luod's sessions are in kernel sessions, waiting for the kexec.
    pub forwarded: bool,
}

/// The name a [`wire::KexecEntry::kind`] stands for.
pub fn kexec_kind_name(kind: u32) -> &'static str {
    match kind {
        wire::KEXEC_KIND_HUGETLB => "hugetlb-memfd",
        wire::KEXEC_KIND_SOCKET => "socket",
        wire::KEXEC_KIND_PIPE => "pipe",
        wire::KEXEC_KIND_EVENTFD => "eventfd",
        wire::KEXEC_KIND_PCI => "pci-config",
        _ => "other",
    }
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
        // An older luod sends a shorter reply: what it lacks reads as zero.
        if reply.len() < wire::STATUS_REPLY_V2_LEN {
            return Err(Error::new("status", Errno::EPROTO));
        }
        let mut full = [0u8; size_of::<StatusReply>()];
        let n = reply.len().min(full.len());
        full[..n].copy_from_slice(&reply[..n]);
        let s =
            StatusReply::read_from_bytes(&full).map_err(|_| Error::new("status", Errno::EPROTO))?;
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
            migrate_done: s.migrate_done.get(),
            migrate_total: s.migrate_total.get(),
            copy_bytes: s.copy_bytes.get(),
            copy_units: s.copy_units.get(),
            copy_units_fallback: s.copy_units_fallback.get(),
            copy_batches_cpu: s.copy_batches_cpu.get(),
            keeper_pid: s.keeper_pid.get(),
            restarts: s.restarts.get(),
            last_recovery_us: s.last_recovery_us.get(),
        })
    }

    /// MIGRATE (a luod extension): moves the memory file preserved under `token` in session
    /// `name` onto new backing with pages of `page_size` bytes (4096, 2 MiB or 1 GiB), copying
    /// it with luod's copy engine, and swaps it in for the old one in one step. The session is
    /// the caller's incoming one (not retrieved), or its outgoing one, whose memory the caller
    /// must not write until this returns; `owner` names another uid's namespace (root only).
    /// Blocks until the copy is done; any failure leaves the old file in place. `ENOMEM` with a
    /// message saying what to reserve when the huge page pool is short.
    pub fn migrate(
        &self,
        name: &str,
        token: u64,
        page_size: u64,
        owner: Option<u32>,
    ) -> Result<Migrated, Error> {
        let op = "migrate";
        let n = name_struct(op, name)?;
        let req = wire::MigrateRequest {
            name: n.name,
            token: U64::new(token),
            page_size: U64::new(page_size),
            owner: U32::new(owner.unwrap_or(wire::MIGRATE_OWN)),
            flags: U32::new(0),
        };
        let (reply, _) = call(self.fd.as_fd(), op, Op::Migrate as u32, req.as_bytes(), &[])?;
        let r = wire::MigrateReply::read_from_bytes(&reply)
            .map_err(|_| Error::new(op, Errno::EPROTO))?;
        Ok(Migrated {
            bytes: r.bytes.get(),
            page_size: r.page_size.get(),
            copy_time: std::time::Duration::from_nanos(r.copy_ns.get()),
            units: r.units.get(),
            units_fallback: r.units_fallback.get(),
            channels: r.channels.get(),
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

    /// Test-only: arms the server's failpoint `name` to kill the server the `hit`-th time it
    /// passes there (0 disarms). `EPERM` unless luod runs with `LUOD_FAILPOINTS=1`.
    pub fn failpoint(&self, name: &str, hit: u32) -> Result<(), Error> {
        let mut arg = hit.to_le_bytes().to_vec();
        arg.extend_from_slice(name.as_bytes());
        call(
            self.fd.as_fd(),
            "failpoint",
            Op::Failpoint as u32,
            &arg,
            &[],
        )
        .map(|_| ())
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

    /// Host kernel live update through the kernel's `/dev/liveupdate`
    /// (`docs/operations.md`, "Kernel live update"): a check, a forward of every session into
    /// kernel sessions followed by the kexec (unless `no_exec`), or a cancel. A forward that
    /// goes on to the kexec may not get its reply: the machine is gone by then.
    pub fn kexec(&self, options: KexecOptions) -> Result<KexecReport, Error> {
        let flags = [
            (options.check, wire::KEXEC_CHECK),
            (options.drop_unpreservable, wire::KEXEC_DROP_UNPRESERVABLE),
            (options.no_exec, wire::KEXEC_NO_EXEC),
            (options.cancel, wire::KEXEC_CANCEL),
            (options.convert, wire::KEXEC_CONVERT),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit);
        let req = wire::KexecRequest {
            flags: U32::new(flags),
            reserved: U32::new(0),
        };
        let (reply, _) = call(
            self.fd.as_fd(),
            "kexec",
            Op::Kexec as u32,
            req.as_bytes(),
            &[],
        )?;
        let bad = || Error::new("kexec", Errno::EPROTO);
        let (head, mut rest) = wire::KexecReply::read_from_prefix(&reply).map_err(|_| bad())?;
        let mut listed = Vec::new();
        for _ in 0..head.listed.get() {
            let (e, tail) = wire::KexecEntry::read_from_prefix(rest).map_err(|_| bad())?;
            rest = tail;
            let len = e.session.iter().position(|&b| b == 0).unwrap_or(64);
            listed.push(Unpreservable {
                owner: e.owner.get(),
                session: String::from_utf8_lossy(&e.session[..len]).into_owned(),
                token: e.token.get(),
                kind: kexec_kind_name(e.kind.get()),
                bytes: e.bytes.get(),
            });
        }
        Ok(KexecReport {
            sessions: head.sessions.get(),
            preservable: head.preservable.get(),
            preservable_bytes: head.preservable_bytes.get(),
            unpreservable: head.unpreservable.get(),
            listed,
            forwarded: head.state.get() == wire::KEXEC_STATE_FORWARDED,
        })
    }
}
