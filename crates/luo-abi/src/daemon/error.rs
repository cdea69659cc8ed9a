//! [`DaemonError`]: why a daemon part could not be written or read.
//!
//! One variant per check. Reader errors carry the byte offset in the part, or the index of the
//! connection (`conn`, in part order) and of the reply in its outbox (`reply`, oldest first),
//! so a refused part can be found in a hex dump. Writer errors carry the same indices, counted
//! in the order the writer received its input (which is the part's order).

use alloc::string::String;
use core::fmt;

/// What uses an fd-table index in the daemon part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdUse {
    /// The listening socket.
    Listener,
    /// The lock file.
    Lock,
    /// Connection `conn` (its own socket).
    Conn {
        /// Index of the connection.
        conn: u32,
    },
    /// A descriptor carried by reply `reply` of connection `conn`'s outbox.
    Reply {
        /// Index of the connection.
        conn: u32,
        /// Index of the reply in the outbox.
        reply: u32,
    },
}

impl fmt::Display for FdUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FdUse::Listener => write!(f, "the listener"),
            FdUse::Lock => write!(f, "the lock"),
            FdUse::Conn { conn } => write!(f, "connection {conn}"),
            FdUse::Reply { conn, reply } => write!(f, "reply {reply} of connection {conn}"),
        }
    }
}

/// Why a daemon part could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonError {
    // ---- Whole part ----
    /// The part is longer than [`MAX_DAEMON_LEN`](super::MAX_DAEMON_LEN) (also returned by
    /// the writer when the part it would build is).
    TooLarge {
        /// Its length.
        len: u64,
    },
    /// Too short for the magic and version, or for the header of its version.
    TooShort {
        /// Its length.
        len: u64,
    },
    /// The part does not start with [`DAEMON_MAGIC`](super::DAEMON_MAGIC).
    Magic,
    /// A version this reader does not know.
    Version {
        /// The part's version.
        found: u32,
    },
    /// The image says the part is of another compatible than
    /// [`DAEMON_COMPATIBLE`](super::DAEMON_COMPATIBLE).
    Compatible {
        /// The compatible found.
        found: String,
    },
    /// The header's `length` differs from the part's.
    Length {
        /// The header's `length`.
        declared: u64,
        /// The part's length.
        actual: u64,
    },

    // ---- Settings ----
    /// Undefined `LIMIT_*` bits.
    LimitFlags {
        /// The `limits` field.
        flags: u32,
    },
    /// A limit field that is not zero although its `LIMIT_*` bit is clear.
    AbsentLimit {
        /// The field's name.
        field: &'static str,
    },
    /// Undefined last-upgrade flag bits, or flags without a round.
    LastUpgrade {
        /// `last_upgrade_rounds`.
        rounds: u32,
        /// `last_upgrade_flags`.
        flags: u32,
    },
    /// A path is empty or longer than [`PATH_MAX`](super::PATH_MAX).
    PathLength {
        /// `"socket"` or `"binary"`.
        path: &'static str,
        /// Its length.
        len: u64,
    },
    /// A path is not UTF-8.
    PathUtf8 {
        /// `"socket"` or `"binary"`.
        path: &'static str,
    },
    /// A path contains a NUL byte.
    PathNul {
        /// `"socket"` or `"binary"`.
        path: &'static str,
    },
    /// More pids than [`MAX_PIDS`](super::MAX_PIDS).
    TooManyPids {
        /// The count.
        count: u64,
    },
    /// A luod pid that is not positive.
    Pid {
        /// Index of the pid.
        index: u32,
        /// The pid.
        pid: i32,
    },
    /// A luod pid listed twice.
    DuplicatePid {
        /// Index of the later of the two.
        index: u32,
        /// The pid.
        pid: i32,
    },

    // ---- Placement ----
    /// A padding byte is not zero.
    Padding {
        /// Offset of the byte.
        offset: u64,
    },
    /// Something the header or a record counts runs past the end of the part.
    Truncated {
        /// What: `"socket path"`, `"connection table"`, `"outbox reply"`...
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// The bytes it needs.
        len: u64,
    },
    /// Bytes after the last outbox reply.
    TrailingBytes {
        /// Offset of the first of them.
        offset: u64,
    },

    // ---- Connections ----
    /// A connection kind code other than 0 to 3.
    ConnKind {
        /// Index of the connection.
        conn: u32,
        /// The code.
        kind: u32,
    },
    /// Undefined `CONN_*` bits, `CONN_INCOMING` on a connection that is not a session's, or
    /// `CONN_REPLY_SENT` without `CONN_APPLIED`.
    ConnFlags {
        /// Index of the connection.
        conn: u32,
        /// The flags.
        flags: u32,
    },
    /// A negative peer pid.
    ConnPid {
        /// Index of the connection.
        conn: u32,
        /// The pid.
        pid: i32,
    },
    /// A session connection's name is not 1 to 63 bytes, NUL-terminated and zero-padded, or
    /// another connection's name field is not all zero (writer: a session name that is not 1
    /// to 63 bytes, or contains a NUL).
    ConnName {
        /// Index of the connection.
        conn: u32,
    },
    /// A connection's reserved field is not zero.
    ConnReserved {
        /// Index of the connection.
        conn: u32,
    },
    /// A `last_request` id without `CONN_APPLIED`.
    LastRequest {
        /// Index of the connection.
        conn: u32,
    },

    // ---- Outbox replies ----
    /// A reply's errno is not 0 or a positive errno up to 4095.
    ReplyErrno {
        /// Index of the connection.
        conn: u32,
        /// Index of the reply.
        reply: u32,
        /// The errno.
        errno: i32,
    },
    /// A reply's argument is longer than [`MAX_REPLY_ARG`](super::MAX_REPLY_ARG).
    ReplyArg {
        /// Index of the connection.
        conn: u32,
        /// Index of the reply.
        reply: u32,
        /// Its length.
        len: u64,
    },
    /// A reply carries more than [`MAX_REPLY_FDS`](super::MAX_REPLY_FDS) descriptors.
    ReplyFds {
        /// Index of the connection.
        conn: u32,
        /// Index of the reply.
        reply: u32,
        /// How many.
        count: u64,
    },

    // ---- fd-table indices ----
    /// An fd-table index outside the image's fd table.
    FdIndex {
        /// What uses it.
        used_by: FdUse,
        /// The index.
        index: u32,
        /// Slots in the fd table.
        fd_count: u64,
    },
    /// An fd-table index used twice in the part.
    FdReused {
        /// The second user.
        used_by: FdUse,
        /// The index.
        index: u32,
    },
    /// The listener or a connection is not a socket in the image's fd table
    /// ([`DaemonPart::check_fd_types`](super::DaemonPart::check_fd_types)).
    FdType {
        /// What uses it.
        used_by: FdUse,
        /// The index.
        index: u32,
        /// The `mode_type` the fd table records.
        mode_type: u32,
    },
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DaemonError::*;
        match self {
            TooLarge { len } => write!(f, "Daemon part of {len} bytes exceeds the size limit"),
            TooShort { len } => write!(f, "Daemon part of {len} bytes is shorter than its header"),
            Magic => write!(f, "Not a luod daemon part (bad magic)"),
            Version { found: 1 } => write!(
                f,
                "Daemon part version 1 (the text form) is not supported; this luod reads version {}",
                super::DAEMON_VERSION
            ),
            Version { found } => write!(
                f,
                "Daemon part version {found} is not supported; this luod reads version {}",
                super::DAEMON_VERSION
            ),
            Compatible { found } => write!(
                f,
                "Daemon part is {found:?}; this luod reads {:?}",
                super::DAEMON_COMPATIBLE
            ),
            Length { declared, actual } => {
                write!(
                    f,
                    "Daemon part is {actual} bytes long but declares {declared}"
                )
            }
            LimitFlags { flags } => write!(f, "Daemon part has unknown limit bits {flags:#x}"),
            AbsentLimit { field } => {
                write!(f, "Daemon part's absent limit {field} is not zero")
            }
            LastUpgrade { rounds, flags } => write!(
                f,
                "Daemon part's last upgrade has bad flags {flags:#x} ({rounds} rounds)"
            ),
            PathLength { path, len } => {
                write!(f, "Daemon part's {path} path has a bad length {len}")
            }
            PathUtf8 { path } => write!(f, "Daemon part's {path} path is not UTF-8"),
            PathNul { path } => write!(f, "Daemon part's {path} path contains a NUL byte"),
            TooManyPids { count } => write!(f, "Daemon part lists too many pids ({count})"),
            Pid { index, pid } => write!(f, "Daemon part's pid {index} is not positive ({pid})"),
            DuplicatePid { index, pid } => {
                write!(f, "Daemon part's pid {index} repeats pid {pid}")
            }
            Padding { offset } => {
                write!(
                    f,
                    "Daemon part has a non-zero padding byte at offset {offset}"
                )
            }
            Truncated { what, offset, len } => write!(
                f,
                "Daemon part's {what} at offset {offset} ({len} bytes) runs past its end"
            ),
            TrailingBytes { offset } => {
                write!(f, "Daemon part has trailing bytes from offset {offset}")
            }
            ConnKind { conn, kind } => write!(f, "Connection {conn} has unknown kind {kind}"),
            ConnFlags { conn, flags } => write!(f, "Connection {conn} has bad flags {flags:#x}"),
            ConnPid { conn, pid } => write!(f, "Connection {conn} has a negative peer pid {pid}"),
            ConnName { conn } => write!(f, "Connection {conn} has a bad session name"),
            ConnReserved { conn } => {
                write!(f, "Connection {conn} has a non-zero reserved field")
            }
            LastRequest { conn } => write!(
                f,
                "Connection {conn} has a last request id but no applied request"
            ),
            ReplyErrno { conn, reply, errno } => write!(
                f,
                "Reply {reply} of connection {conn} has bad errno {errno}"
            ),
            ReplyArg { conn, reply, len } => write!(
                f,
                "Reply {reply} of connection {conn} has a {len}-byte argument, over the limit"
            ),
            ReplyFds { conn, reply, count } => write!(
                f,
                "Reply {reply} of connection {conn} carries {count} descriptors, over the limit"
            ),
            FdIndex {
                used_by,
                index,
                fd_count,
            } => write!(
                f,
                "fd slot {index} of {used_by} is outside the image's fd table of {fd_count} slots"
            ),
            FdReused { used_by, index } => write!(
                f,
                "fd slot {index} of {used_by} is already used in the daemon part"
            ),
            FdType {
                used_by,
                index,
                mode_type,
            } => write!(
                f,
                "fd slot {index} of {used_by} is not a socket (file type {mode_type:#o})"
            ),
        }
    }
}

impl core::error::Error for DaemonError {}
