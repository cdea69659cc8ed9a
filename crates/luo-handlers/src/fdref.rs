//! The `fdref-v1` handler: sockets, pipes and eventfds, preserved by reference.
//!
//! These objects have no memory a successor could map, only a kernel object that must stay
//! open: a connected socket with data queued in both directions, a pipe with bytes in flight,
//! an eventfd with its counter. luod keeps a duplicate of the client's descriptor and hands
//! back another duplicate: the **same open file description**, with its file status flags
//! (`O_NONBLOCK`) and, for a socket, every option and queued byte.
//!
//! **The record is a contract**:
//!
//! ```text
//!  offset  0      2        4          8          16         24
//!          +------+--------+----------+----------+----------+
//!          | kind | access | flags    | id_dev   | id_ino   |   FdrefRecord, little-endian
//!          +------+--------+----------+----------+----------+
//! ```
//!
//! What it takes: sockets (`S_IFSOCK`), pipes and FIFOs (`S_IFIFO`), and eventfds (an anonymous
//! inode whose link reads `anon_inode:[eventfd]`). It refuses everything else: regular files,
//! directories, character and block devices, symlinks, other anonymous inodes (epoll, timerfd,
//! signalfd, pidfd...) and `O_PATH` descriptors. A regular file that is not a memory file and
//! not a PCI device is preservable by no handler.
//!
//! Identity (the double-preserve key) approximates the kernel's default, the open file itself:
//!
//! - a socket: its inode (each socket has its own);
//! - a pipe: its inode *and* its access mode, so the read end and the write end of one pipe are
//!   two objects (they share an inode). Two open file descriptions of one FIFO end with the same
//!   access mode collide;
//! - an eventfd: its `eventfd-id` from `/proc/self/fdinfo` (every eventfd shares one anonymous
//!   inode). On a kernel without `eventfd-id` the shared inode is used, so only one eventfd at a
//!   time can be preserved there.
//!
//! A Unix socket needs one more guard. Descriptors can sit in flight in its receive queue, and
//! one of them may be a luod connection (a session): held by luod, the socket would keep that
//! session alive with nobody able to release it, and two such sessions holding each other
//! would outlive their owner. So at preserve the handler turns `SO_PASSRIGHTS` off (nothing
//! new can be put in flight to the socket while luod holds it), then shows the engine every
//! descriptor already queued ([`FileHandler::carries`]), which refuses the socket if one is a
//! luod connection. `SO_PASSRIGHTS` is turned back on when the socket is handed back
//! (retrieve) or let go (unpreserve, finish). A kernel without `SO_PASSRIGHTS` (before 6.16)
//! cannot have this guard: there a Unix socket is refused outright.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use luo_core::{FileData, FileHandler, HandlerError, Identity, Preserved, RetrieveStatus};
use rustix::fs::{FileType, OFlags};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::Error;
use crate::fd;
use crate::memfd::fd_of;

/// Record flag: luod turned `SO_PASSRIGHTS` off on this Unix socket at preserve, and turns it
/// back on when it hands the socket back or lets go of it.
pub const FDREF_FLAG_RIGHTS_OFF: u32 = 1 << 0;

/// The most messages a preserve looks at in a Unix socket's receive queue; a longer queue is
/// refused, since what it carries cannot all be checked.
pub const IN_FLIGHT_MESSAGES_MAX: usize = 4096;

/// Bytes read per message by that look (a longer message is looked at in several pieces).
const PEEK_CHUNK: usize = 64 * 1024;

/// Descriptors one message can carry (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// The compatible string of [`FdrefHandler`]. Changing [`FdrefRecord`] bumps it.
pub const FDREF_COMPATIBLE: &str = "fdref-v1";

/// Upper half of the identity `dev` of a pipe end (`"pip"` followed by the access mode).
pub const IDENTITY_TAG_PIPE: u32 = 0x7069_7000;
/// Upper half of the identity `dev` of an eventfd (`"evfd"`).
pub const IDENTITY_TAG_EVENTFD: u32 = 0x6576_6664;

/// The link text of an eventfd.
const EVENTFD_LINK: &str = "anon_inode:[eventfd]";

/// What kind of object an `fdref` file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum FdKind {
    /// A socket of any family and type.
    Socket = 1,
    /// An anonymous pipe or a FIFO.
    Pipe = 2,
    /// An eventfd.
    Eventfd = 3,
}

impl FdKind {
    /// Classifies `fd`, or `None` if the handler does not take it.
    pub fn of(fd: BorrowedFd<'_>) -> Option<FdKind> {
        FdKind::of_stat(fd, &rustix::fs::fstat(fd).ok()?)
    }

    /// [`of`](Self::of) given `st`, the `fstat` of `fd`.
    fn of_stat(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> Option<FdKind> {
        if fd::is_path_only(fd) {
            return None;
        }
        match fd::file_type(st) {
            FileType::Socket => Some(FdKind::Socket),
            FileType::Fifo => Some(FdKind::Pipe),
            _ if fd::fs_magic(fd) == Some(fd::ANON_INODE_FS_MAGIC)
                && fd::link_target(fd).ok()?.as_os_str() == EVENTFD_LINK =>
            {
                Some(FdKind::Eventfd)
            }
            _ => None,
        }
    }

    fn from_raw(raw: u16) -> Option<FdKind> {
        match raw {
            1 => Some(FdKind::Socket),
            2 => Some(FdKind::Pipe),
            3 => Some(FdKind::Eventfd),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Eventfd => "eventfd",
        }
    }
}

/// The `fdref-v1` record: what the held descriptor must still be on retrieve.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `kind` | 0 | 2 | 1 socket, 2 pipe or FIFO, 3 eventfd ([`FdKind`]) |
/// | `access` | 2 | 2 | `O_ACCMODE` of the open file: 0 read, 1 write, 2 read-write |
/// | `flags` | 4 | 4 | bit 0 [`FDREF_FLAG_RIGHTS_OFF`]: luod turned `SO_PASSRIGHTS` off; other bits must be 0 |
/// | `id_dev` | 8 | 8 | identity of the object (see the [module](self) docs), `dev` half |
/// | `id_ino` | 16 | 8 | identity of the object, `ino` half |
///
/// All fields are little-endian. Changing this bumps `FDREF_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FdrefRecord {
    /// [`FdKind`] as a number.
    pub kind: U16,
    /// `O_ACCMODE` bits.
    pub access: U16,
    /// Record flags.
    pub flags: U32,
    /// Identity, `dev` half.
    pub id_dev: U64,
    /// Identity, `ino` half.
    pub id_ino: U64,
}

const _: () = assert!(size_of::<FdrefRecord>() == 24);

impl FdrefRecord {
    /// Parses a record defensively: exact length, a known kind, an access mode of 0..=2, no
    /// unknown flag, the `SO_PASSRIGHTS` flag only on a socket.
    pub fn parse(bytes: &[u8]) -> Result<FdrefRecord, Error> {
        let rec = FdrefRecord::read_from_bytes(bytes).map_err(|_| Error::RecordLength {
            record: FDREF_COMPATIBLE,
            got: bytes.len(),
            expected: size_of::<FdrefRecord>(),
        })?;
        let field = |field| Error::RecordField {
            record: FDREF_COMPATIBLE,
            field,
        };
        if FdKind::from_raw(rec.kind.get()).is_none() {
            return Err(field("kind"));
        }
        if rec.access.get() > 2 {
            return Err(field("access"));
        }
        let flags = rec.flags.get();
        if flags & !FDREF_FLAG_RIGHTS_OFF != 0
            || (flags & FDREF_FLAG_RIGHTS_OFF != 0 && rec.kind.get() != FdKind::Socket as u16)
        {
            return Err(field("flags"));
        }
        Ok(rec)
    }

    /// The kind recorded.
    pub fn kind(&self) -> Option<FdKind> {
        FdKind::from_raw(self.kind.get())
    }

    /// The identity recorded.
    pub fn identity(&self) -> Identity {
        Identity {
            dev: self.id_dev.get(),
            ino: self.id_ino.get(),
        }
    }
}

/// `O_ACCMODE` of `fd` as 0, 1 or 2.
fn access_mode(fd: BorrowedFd<'_>) -> Result<u16, Error> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(Error::sys("F_GETFL"))?;
    let mode = fl & OFlags::ACCMODE;
    Ok(if mode == OFlags::RDWR {
        2
    } else if mode == OFlags::WRONLY {
        1
    } else {
        0
    })
}

/// True if the socket `fd` is an `AF_UNIX` socket.
fn is_unix(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == rustix::net::AddressFamily::UNIX)
}

fn io_errno(e: &std::io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(e).unwrap_or(rustix::io::Errno::IO)
}

/// Turns `SO_PASSRIGHTS` off on the Unix socket `fd` so nothing new can be put in flight to it,
/// and returns the record flags that say so (0 if it was off already). A kernel without the
/// option cannot guard the socket: it is refused.
fn stop_rights(fd: BorrowedFd<'_>) -> Result<u32, Error> {
    match luo_sys::sockopt::passrights(fd).map_err(|e| Error::sys("SO_PASSRIGHTS")(io_errno(&e)))? {
        None => Err(Error::Unguardable),
        Some(false) => Ok(0),
        Some(true) => {
            luo_sys::sockopt::set_passrights(fd, false)
                .map_err(|e| Error::sys("SO_PASSRIGHTS")(io_errno(&e)))?;
            Ok(FDREF_FLAG_RIGHTS_OFF)
        }
    }
}

/// Turns `SO_PASSRIGHTS` back on if preserve turned it off. Best effort: this runs where
/// nothing may fail, and a socket that refuses is closed by the engine next anyway.
fn restore_rights(file: &FileData) {
    if FdrefRecord::parse(&file.record).is_ok_and(|r| r.flags.get() & FDREF_FLAG_RIGHTS_OFF != 0) {
        let _ = luo_sys::sockopt::set_passrights(fd_of(file), true);
    }
}

/// Shows `visit` every descriptor queued in the receive queue of the Unix socket `fd`, each a
/// close-on-exec duplicate that is closed right after; true as soon as `visit` says yes.
///
/// It peeks (`MSG_PEEK`), message after message, by moving the socket's peek offset
/// (`SO_PEEK_OFF`), which it puts back afterwards; nothing is consumed. A queue longer than
/// [`IN_FLIGHT_MESSAGES_MAX`] messages, or descriptors cut because luod's table was full, is an
/// error: what cannot be seen cannot be allowed.
fn in_flight(
    fd: BorrowedFd<'_>,
    visit: &mut dyn FnMut(BorrowedFd<'_>) -> bool,
) -> Result<bool, Error> {
    use luo_sys::sockopt::{SO_PEEK_OFF, get_int, set_int};
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};

    let sys = |step| move |e: std::io::Error| Error::sys(step)(io_errno(&e));
    let saved = get_int(fd, SO_PEEK_OFF).map_err(sys("SO_PEEK_OFF"))?;
    set_int(fd, SO_PEEK_OFF, 0).map_err(sys("SO_PEEK_OFF"))?;
    let mut data = vec![0u8; PEEK_CHUNK];
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut outcome = Err(Error::InFlightUnchecked("its receive queue is too long"));
    for _ in 0..IN_FLIGHT_MESSAGES_MAX {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match rustix::net::recvmsg(
            fd,
            &mut [std::io::IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                outcome = Ok(false);
                break;
            }
            Err(e) => {
                outcome = Err(Error::sys("MSG_PEEK")(e));
                break;
            }
        };
        let mut found = false;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                for carried in rights {
                    found = found || visit(carried.as_fd());
                }
            }
        }
        if found {
            outcome = Ok(true);
            break;
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            outcome = Err(Error::InFlightUnchecked(
                "luod could not receive every descriptor queued in it",
            ));
            break;
        }
        if msg.bytes == 0 && !is_datagram(fd) {
            // A stream at its end: nothing more is queued.
            outcome = Ok(false);
            break;
        }
    }
    let _ = set_int(fd, SO_PEEK_OFF, saved);
    outcome
}

/// True for a socket whose messages keep their boundaries (`SOCK_DGRAM`, `SOCK_SEQPACKET`),
/// where a peek of 0 bytes is an empty message rather than the end of the stream.
fn is_datagram(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t != rustix::net::SocketType::STREAM)
}

/// The double-preserve key of an object of kind `kind`.
fn identity_of(fd: BorrowedFd<'_>, kind: FdKind) -> Result<Identity, Error> {
    let st = rustix::fs::fstat(fd).map_err(Error::sys("fstat"))?;
    match kind {
        FdKind::Socket => Ok(Identity {
            dev: st.st_dev,
            ino: st.st_ino,
        }),
        FdKind::Pipe => {
            let tag = u64::from(IDENTITY_TAG_PIPE | u32::from(access_mode(fd)?));
            Ok(Identity {
                dev: (tag << 32) | (st.st_dev & 0xffff_ffff),
                ino: st.st_ino,
            })
        }
        FdKind::Eventfd => match fd::fdinfo_field(fd, "eventfd-id")? {
            Some(id) => {
                let id = id.parse::<u64>().map_err(|_| Error::NotPreservable)?;
                Ok(Identity {
                    dev: u64::from(IDENTITY_TAG_EVENTFD) << 32,
                    ino: id,
                })
            }
            None => Ok(Identity {
                dev: st.st_dev,
                ino: st.st_ino,
            }),
        },
    }
}

/// The handler of sockets, pipes and eventfds. See the [module](self) documentation.
#[derive(Debug, Default)]
pub struct FdrefHandler;

impl FdrefHandler {
    /// The handler.
    pub fn new() -> FdrefHandler {
        FdrefHandler
    }
}

impl FileHandler for FdrefHandler {
    fn compatible(&self) -> &str {
        FDREF_COMPATIBLE
    }

    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
        FdKind::of(fd).is_some()
    }

    fn can_preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> bool {
        FdKind::of_stat(fd, st).is_some()
    }

    fn recorded_identity(&self, record: &[u8]) -> Option<Identity> {
        FdrefRecord::parse(record).ok().map(|r| r.identity())
    }

    fn inode_identity(&self) -> bool {
        false
    }

    fn identity(&self, fd: BorrowedFd<'_>) -> Result<Identity, HandlerError> {
        let kind = FdKind::of(fd).ok_or(Error::NotPreservable)?;
        Ok(identity_of(fd, kind)?)
    }

    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
        let kind = FdKind::of(fd).ok_or(Error::NotPreservable)?;
        let id = identity_of(fd, kind)?;
        let access = access_mode(fd)?;
        let held = fd::dup(fd)?;
        let flags = if kind == FdKind::Socket && is_unix(fd) {
            stop_rights(held.as_fd())?
        } else {
            0
        };
        let record = FdrefRecord {
            kind: U16::new(kind as u16),
            access: U16::new(access),
            flags: U32::new(flags),
            id_dev: U64::new(id.dev),
            id_ino: U64::new(id.ino),
        };
        Ok(Preserved {
            fd: held,
            record: record.as_bytes().to_vec(),
            bytes: 0,
        })
    }

    fn carries(
        &self,
        held: BorrowedFd<'_>,
        visit: &mut dyn FnMut(BorrowedFd<'_>) -> bool,
    ) -> Result<bool, HandlerError> {
        if FdKind::of(held) != Some(FdKind::Socket) || !is_unix(held) {
            return Ok(false);
        }
        Ok(in_flight(held, visit)?)
    }

    fn unpreserve(&self, file: &mut FileData) {
        restore_rights(file);
    }

    fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError> {
        let rec = FdrefRecord::parse(&file.record)?;
        let held = fd_of(file);
        let kind = rec.kind().ok_or(Error::HeldMismatch("object"))?;
        if FdKind::of(held) != Some(kind) {
            return Err(Error::HeldMismatch(kind.name()).into());
        }
        if identity_of(held, kind)? != rec.identity() {
            return Err(Error::HeldMismatch(kind.name()).into());
        }
        let out = fd::dup(held)?;
        if rec.flags.get() & FDREF_FLAG_RIGHTS_OFF != 0 {
            luo_sys::sockopt::set_passrights(held, true)
                .map_err(|e| Error::sys("SO_PASSRIGHTS")(io_errno(&e)))?;
        }
        Ok(out)
    }

    fn finish(&self, file: &mut FileData, status: RetrieveStatus) {
        // The engine closes the held duplicate; a socket or pipe nobody retrieved is closed
        // with it (its peer sees end-of-file when no other holder remains). A Unix socket
        // someone else may still hold gets `SO_PASSRIGHTS` back first (after a retrieve it
        // already has it).
        if status != RetrieveStatus::Retrieved {
            restore_rights(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> FdrefRecord {
        FdrefRecord {
            kind: U16::new(2),
            access: U16::new(1),
            flags: U32::new(0),
            id_dev: U64::new(5),
            id_ino: U64::new(6),
        }
    }

    #[test]
    fn record_round_trips() {
        let rec = valid();
        let parsed = FdrefRecord::parse(rec.as_bytes()).expect("valid");
        assert_eq!(parsed, rec);
        assert_eq!(parsed.kind(), Some(FdKind::Pipe));
    }

    #[test]
    fn record_rejects_malformed() {
        assert!(FdrefRecord::parse(&[0; 23]).is_err());
        assert!(FdrefRecord::parse(&[0; 25]).is_err());
        for kind in [0, 4, 0xffff] {
            let mut rec = valid();
            rec.kind = U16::new(kind);
            assert!(FdrefRecord::parse(rec.as_bytes()).is_err());
        }
        let mut rec = valid();
        rec.access = U16::new(3);
        assert!(FdrefRecord::parse(rec.as_bytes()).is_err());
        let mut rec = valid();
        rec.flags = U32::new(2);
        assert!(FdrefRecord::parse(rec.as_bytes()).is_err(), "unknown flag");
        let mut rec = valid();
        rec.flags = U32::new(FDREF_FLAG_RIGHTS_OFF);
        assert!(
            FdrefRecord::parse(rec.as_bytes()).is_err(),
            "SO_PASSRIGHTS flag on a pipe"
        );
        rec.kind = U16::new(FdKind::Socket as u16);
        assert!(FdrefRecord::parse(rec.as_bytes()).is_ok());
    }
}
