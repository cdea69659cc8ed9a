//! The fixed-size structs of the daemon part.
//!
//! Every struct here is part of the `luod-daemon-v2` contract (`docs/format.md`): changing any
//! of them bumps [`DAEMON_COMPATIBLE`](super::DAEMON_COMPATIBLE) and
//! [`DAEMON_VERSION`](super::DAEMON_VERSION).

use zerocopy::byteorder::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes in a connection's session name field, including the NUL (as the uapi's 64).
pub const CONN_NAME_LEN: usize = 64;

/// The start of the part: what it is, how long it is, the daemon's settings and the counts of
/// what follows.
///
/// Changing this struct bumps `DAEMON_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DaemonHeader {
    /// [`DAEMON_MAGIC`](super::DAEMON_MAGIC), `LUODDMN\0`.
    pub magic: [u8; 8],
    /// [`DAEMON_VERSION`](super::DAEMON_VERSION), 2.
    pub version: U32,
    /// `LIMIT_*` bits: which of the five limit fields hold a value.
    pub limits: U32,
    /// Bytes in the whole part, this header included.
    pub length: U64,
    /// Orchestrator upgrades since this generation started.
    pub upgrades: U64,
    /// Successors started for the last upgrade (0 before any).
    pub last_upgrade_rounds: U32,
    /// `UPGRADE_STOP_AND_COPY` if the last upgrade stopped the old server; 0 otherwise.
    pub last_upgrade_flags: U32,
    /// fd-table index of the listening socket.
    pub listener: U32,
    /// fd-table index of the lock file.
    pub lock: U32,
    /// Bytes of the socket path that follows the header.
    pub socket_len: U32,
    /// Bytes of the binary path that follows the socket path.
    pub binary_len: U32,
    /// luod pids that follow the binary path.
    pub pid_count: U32,
    /// [`ConnRecord`]s that follow the pids.
    pub conn_count: U32,
    /// Most sessions a uid may hold (`LIMIT_SESSIONS`; 0 when absent).
    pub limit_sessions: U64,
    /// Most preserved files a uid may hold (`LIMIT_FILES`; 0 when absent).
    pub limit_files: U64,
    /// Most bytes of preserved memory a uid may hold (`LIMIT_BYTES`; 0 when absent).
    pub limit_bytes: U64,
    /// A uid's share of luod's descriptors (`LIMIT_FD_SHARE`; 0 when absent).
    pub fd_share: U64,
    /// Descriptors kept in reserve for luod itself (`LIMIT_FD_RESERVE`; 0 when absent).
    pub fd_reserve: U64,
}
const _: () = assert!(core::mem::size_of::<DaemonHeader>() == 104);

/// One client connection.
///
/// Changing this struct bumps `DAEMON_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnRecord {
    /// fd-table index of luod's end of the connection.
    pub fd_index: U32,
    /// `CONN_CONTROL`, `CONN_DEVICE`, `CONN_SESSION` or `CONN_DETACHED`.
    pub kind: U32,
    /// The peer's pid (`SO_PEERCRED`); 0 when it is in a pid namespace luod cannot see.
    pub pid: I32,
    /// The peer's uid: the namespace the connection works in.
    pub uid: U32,
    /// The peer's gid.
    pub gid: U32,
    /// `CONN_*` flag bits.
    pub flags: U32,
    /// Id of the last request applied on the connection (with `CONN_APPLIED`; 0 otherwise).
    pub last_request: U64,
    /// [`OutboxHeader`] replies of this connection in the outbox area.
    pub outbox_count: U32,
    /// Zero.
    pub reserved: U32,
    /// For a session connection, the session's name: 1..=63 bytes, NUL-terminated,
    /// zero-padded. All zero for other kinds.
    pub name: [u8; CONN_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<ConnRecord>() == 104);

/// A reply not yet delivered, followed by `arg_len` argument bytes, `fd_count` little-endian
/// `u32` fd-table indices and zero padding to a multiple of 8.
///
/// Changing this struct bumps `DAEMON_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OutboxHeader {
    /// The request's id, echoed in the reply.
    pub id: U64,
    /// 0 or a positive errno, at most 4095.
    pub errno: I32,
    /// Bytes of the reply's argument, at most 4080 (`wire::MAX_ARG`).
    pub arg_len: U16,
    /// Descriptors attached to the reply, at most 253 (`wire::MAX_FDS`).
    pub fd_count: U16,
}
const _: () = assert!(core::mem::size_of::<OutboxHeader>() == 16);
