//! The file handler: the code that knows one kind of file.
//!
//! [`FileHandler`] mirrors the kernel's `struct liveupdate_file_ops`. The engine calls its
//! methods at fixed points of a file's life; each method's doc says when, whether a handler must
//! implement it, and what undoing it means.
//!
//! ```text
//!  outgoing:  can_preserve -> identity -> preserve ----------------> unpreserve   (session closed)
//!                                            \-> freeze (handoff, reboot) -> unfreeze (rolled back)
//!  incoming:  retrieve (any order, once; later retrieves reuse the open file)
//!             can_finish (every file, first) -> finish (every file, newest first)
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use luo_abi::Errno;
use rustix::fs::Stat;

/// The key of the double-preserve check: one underlying object may be preserved once.
///
/// For most files it is the inode (`st_dev`, `st_ino`), so two descriptors or two open file
/// descriptions of one memfd collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Device of the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Identity {
    /// The inode identity of `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> Result<Identity, HandlerError> {
        let st = rustix::fs::fstat(fd).map_err(|e| HandlerError::from_io("fstat", e))?;
        Ok(Identity {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// A handler's failure: the errno the client sees and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What the client's ioctl returns.
    pub errno: Errno,
    /// A short description of the failed step.
    pub message: String,
}

impl HandlerError {
    /// A failure with `errno` and a message.
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        HandlerError {
            errno,
            message: message.into(),
        }
    }

    /// A failed system call `what`, carrying its errno.
    pub fn from_io(what: &str, err: rustix::io::Errno) -> Self {
        HandlerError {
            errno: Errno(err.raw_os_error()),
            message: format!("{what}: {err}"),
        }
    }
}

/// The outcome of a retrieve, as `can_finish` and `finish` see it (the kernel's
/// `retrieve_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrieveStatus {
    /// Nobody asked for the file: `finish` discards it.
    NotRetrieved,
    /// The file was handed back to the client.
    Retrieved,
    /// Retrieving failed with this errno; the failure is sticky.
    Failed(Errno),
}

impl RetrieveStatus {
    /// The kernel's encoding: 0, 1 or a negative errno (this is what the image stores).
    pub fn to_raw(self) -> i32 {
        match self {
            RetrieveStatus::NotRetrieved => 0,
            RetrieveStatus::Retrieved => 1,
            RetrieveStatus::Failed(e) => -e.raw(),
        }
    }

    /// Decodes [`to_raw`](Self::to_raw); any positive value means retrieved.
    pub fn from_raw(raw: i32) -> RetrieveStatus {
        match raw {
            0 => RetrieveStatus::NotRetrieved,
            r if r > 0 => RetrieveStatus::Retrieved,
            r => RetrieveStatus::Failed(Errno(r.saturating_neg())),
        }
    }
}

/// What `preserve` hands the engine.
#[derive(Debug)]
pub struct Preserved {
    /// The descriptor the engine keeps for the file's whole preserved life. It is what crosses
    /// an exec in the fd table.
    pub fd: OwnedFd,
    /// The handler's record: whatever it needs to hand the file back. Stored in the image.
    pub record: Vec<u8>,
    /// Memory the file keeps alive, for quotas and status (0 when it does not apply). Must be
    /// what [`FileHandler::record_bytes`] says of `record`.
    pub bytes: u64,
}

/// A preserved file as a handler sees it: the descriptor the engine holds and the handler's
/// record (which `freeze` may rewrite).
#[derive(Debug)]
pub struct FileData {
    /// The client's token.
    pub token: u64,
    /// The held descriptor (from [`Preserved::fd`], or inherited across an exec).
    pub fd: OwnedFd,
    /// The handler's record.
    pub record: Vec<u8>,
}

impl AsFd for FileData {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One kind of preservable file. Mirrors the kernel's `liveupdate_file_ops`.
///
/// Handlers are tried in registration order; the first whose [`can_preserve`] says yes owns the
/// file. A handler's [`compatible`] is stored with each file and must match exactly on restore.
///
/// [`can_preserve`]: FileHandler::can_preserve
/// [`compatible`]: FileHandler::compatible
pub trait FileHandler: Send + Sync + std::fmt::Debug {
    /// The versioned compatible string, 1..=47 bytes, unique in a registry (e.g. `memfd-v1`).
    /// Changing what the handler records means changing this string.
    fn compatible(&self) -> &str;

    /// Required. Runs on PRESERVE_FD to pick the handler: a cheap type check, no side effects.
    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool;

    /// Optional. [`can_preserve`](Self::can_preserve) given `st`, the `fstat` of `fd` the
    /// engine makes anyway on every PRESERVE_FD; this is what the engine calls. A handler that
    /// looks at the type, links or inode overrides it to save system calls per file (and to
    /// turn away other types of file without any). Must answer as `can_preserve` does. The
    /// default ignores `st`.
    fn can_preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> bool {
        let _ = st;
        self.can_preserve(fd)
    }

    /// Optional. The key of the double-preserve check. Runs on PRESERVE_FD after
    /// `can_preserve`, and on a retrieved file. The default is the inode.
    fn identity(&self, fd: BorrowedFd<'_>) -> Result<Identity, HandlerError> {
        Identity::of(fd)
    }

    /// Optional. True when [`identity`](Self::identity) is the default (the inode): the engine
    /// then derives it from a `fstat` it makes anyway, saving a system call per file on
    /// preserve and restore. A handler that overrides `identity` must return false.
    fn inode_identity(&self) -> bool {
        true
    }

    /// Optional. The identity this handler wrote into a file's `record` at preserve, if it
    /// keeps one there: on restore the engine takes it from the record instead of asking the
    /// descriptor, saving system calls per file. The default keeps none.
    fn recorded_identity(&self, record: &[u8]) -> Option<Identity> {
        let _ = record;
        None
    }

    /// Required. Runs on PRESERVE_FD after the identity and FLB steps: takes hold of the file
    /// and writes its record. Undone by [`unpreserve`](Self::unpreserve); on failure it must
    /// leave nothing behind.
    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError>;

    /// Optional. [`preserve`](Self::preserve) given `st`, the `fstat` of `fd` for which
    /// [`can_preserve_with_stat`](Self::can_preserve_with_stat) just said yes; this is what
    /// the engine calls. A handler may skip the checks `can_preserve_with_stat` made and take
    /// size and inode from `st`, saving system calls per file. Must give what `preserve`
    /// gives. The default ignores `st`.
    fn preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> Result<Preserved, HandlerError> {
        let _ = st;
        self.preserve(fd)
    }

    /// Optional. The memory a file whose record is `record` keeps alive, for quotas and
    /// status: what [`Preserved::bytes`] said at preserve, and what the engine counts after
    /// each `freeze` and `unfreeze` and after a restore, so the count crosses an upgrade or a
    /// restart unchanged. A pure function of the record, no system call. The default is 0 (a
    /// file that keeps no memory of its own).
    fn record_bytes(&self, record: &[u8]) -> u64 {
        let _ = record;
        0
    }

    /// Optional. Runs on PRESERVE_FD right after `preserve`, when the engine has descriptors
    /// no handler may take ([`Engine::set_excluded`](crate::Engine::set_excluded)): shows
    /// `visit` each descriptor the file carries in flight (for a Unix socket: those queued in
    /// its receive queue) and returns true as soon as `visit` does. The engine then undoes the
    /// preserve and refuses the file (`EINVAL`), since holding it could keep an excluded
    /// descriptor alive with nobody able to release it. An error means the handler could not
    /// see them all; the file is refused with that error. `preserve` must already have made
    /// sure nothing new can be put in flight. The default carries nothing.
    fn carries(
        &self,
        held: BorrowedFd<'_>,
        visit: &mut dyn FnMut(BorrowedFd<'_>) -> bool,
    ) -> Result<bool, HandlerError> {
        let _ = (held, visit);
        Ok(false)
    }

    /// Required, cannot fail. Runs when an outgoing session is closed (newest file first), and
    /// when a preserve is rolled back after `preserve` succeeded. Undoes `preserve`.
    fn unpreserve(&self, file: &mut FileData);

    /// Optional. Runs when the file's session is handed off or the engine freezes for a
    /// reboot, sessions in creation order and files in preservation order: the last chance to
    /// update the record. Undone by [`unfreeze`](Self::unfreeze) if a later file fails.
    fn freeze(&self, file: &mut FileData) -> Result<(), HandlerError> {
        let _ = file;
        Ok(())
    }

    /// Optional, cannot fail. Runs when a freeze is rolled back, for every file whose `freeze`
    /// succeeded.
    fn unfreeze(&self, file: &mut FileData) {
        let _ = file;
    }

    /// Required. Runs on the first RETRIEVE_FD of the file: returns the open file the client
    /// gets. A failure is sticky: the engine never calls it again for this file.
    fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError>;

    /// Optional. Runs in phase one of FINISH (and of the implicit finish of a close), for every
    /// file of the session in preservation order. Any `false` vetoes the finish (EBUSY) and
    /// nothing changes.
    fn can_finish(&self, file: &FileData, status: RetrieveStatus) -> bool {
        let _ = (file, status);
        true
    }

    /// Required, cannot fail. Runs in phase two of FINISH, newest file first, after every
    /// `can_finish` agreed. Must handle every status: a file never retrieved is discarded.
    fn finish(&self, file: &mut FileData, status: RetrieveStatus);
}
