//! The daemon's part of the handover image: luod's settings, its listener and lock, and every
//! client connection with the replies it has not delivered yet.
//!
//! **This module is a contract.** The part is written by one luod and read by the next (after
//! an upgrade, a reboot emulation or a crash), so its layout is fixed by `luod-daemon-v2` and
//! documented byte for byte in `docs/format.md` ("The daemon part"). It is stored in the image
//! as the part [`DAEMON_PART_NAME`] (`/parts/luod`) with compatible [`DAEMON_COMPATIBLE`]; the
//! data repeats the version after a magic, so the bytes alone say what they are. Any change to
//! the layout, to a field's meaning or to a validation rule bumps both. Version 1 was a text of
//! `key=value` lines; this reader refuses it ([`DaemonError::Version`]).
//!
//! # Layout
//!
//! ```text
//!  0               104                                                                  length
//!  +---------------+--------+--------+--------+-------------------+----------------------+
//!  | DaemonHeader  | socket | binary | pids   | ConnRecord        | outbox replies,      |
//!  | (104 B)       | path   | path   | i32 ×  | × conn_count      | connection order,    |
//!  |               | pad 8  | pad 8  | count, | (104 B each)      | oldest first         |
//!  |               |        |        | pad 8  |                   |                      |
//!  +---------------+--------+--------+--------+-------------------+----------------------+
//!
//!  an outbox reply:
//!  0        8       12        14         16               16+arg_len
//!  +--------+-------+---------+----------+----------------+----------------------+-------+
//!  | id u64 | errno | arg_len | fd_count | arg bytes      | fd-table indices     | zero  |
//!  |        | i32   | u16     | u16      |                | u32 × fd_count       | pad 8 |
//!  +--------+-------+---------+----------+----------------+----------------------+-------+
//! ```
//!
//! All integers are little-endian. [`DaemonHeader`], [`ConnRecord`] and [`OutboxHeader`] are
//! zerocopy structs with compile-time size checks. Descriptors are named by their index in the
//! image's fd table (`/fds`); each index is used at most once in the part.
//!
//! # Using it
//!
//! [`DaemonWriter`] builds the part from [`DaemonSettings`] and [`DaemonConn`]s and checks
//! every rule as it goes; [`DaemonPart::parse`] validates a part completely, including every
//! fd-table index against the length of the image's fd table, and returns it as borrowed
//! values (paths, names and reply arguments point into the input).
//!
//! ```
//! use luo_abi::daemon::{
//!     AppliedRequest, ConnKind, DaemonConn, DaemonPart, DaemonSettings, DaemonWriter,
//!     Direction, OutboxReply,
//! };
//!
//! # fn main() -> Result<(), luo_abi::daemon::DaemonError> {
//! let mut settings = DaemonSettings::new("/run/luod.sock", "/usr/bin/luod");
//! settings.pids = vec![4242];
//! settings.limits.sessions = Some(64);
//! let mut writer = DaemonWriter::new(&settings, 0, 1)?; // fd-table slots of listener, lock
//! writer.add_conn(&DaemonConn {
//!     fd_index: 2,
//!     kind: ConnKind::Session { direction: Direction::Outgoing, name: b"vm-42" },
//!     pid: 77,
//!     uid: 1000,
//!     gid: 1000,
//!     last_request: Some(AppliedRequest { id: 9, reply_sent: false }),
//!     outbox: vec![OutboxReply { id: 9, errno: 0, arg: b"ok", fds: vec![3] }],
//! })?;
//! let bytes = writer.finish();
//!
//! let part = DaemonPart::parse(&bytes, 4)?; // the image's fd table has 4 slots
//! assert_eq!(part.settings, settings);
//! assert_eq!(part.conns[0].outbox[0].fds, [3]);
//! assert!(DaemonPart::parse(&bytes, 3).is_err()); // slot 3 is not in a 3-slot table
//! # Ok(())
//! # }
//! ```

use alloc::vec::Vec;

mod error;
mod fuzz;
pub mod layout;
mod reader;
mod rules;
mod writer;

pub use error::{DaemonError, FdUse};
#[doc(hidden)]
pub use fuzz::{fuzz_one, reseal};
pub use layout::*;

/// Name of the daemon's part in the image (`/parts/luod`).
pub const DAEMON_PART_NAME: &str = "luod";
/// `compatible` of the daemon part. Any change to the layout or its rules bumps it.
pub const DAEMON_COMPATIBLE: &str = "luod-daemon-v2";
/// First eight bytes of the part.
pub const DAEMON_MAGIC: [u8; 8] = *b"LUODDMN\0";
/// The version in [`DaemonHeader::version`]; always the number in [`DAEMON_COMPATIBLE`].
pub const DAEMON_VERSION: u32 = 2;
/// Bytes in a [`DaemonHeader`].
pub const DAEMON_HEADER_LEN: usize = core::mem::size_of::<DaemonHeader>();
/// Bytes in a [`ConnRecord`].
pub const CONN_RECORD_LEN: usize = core::mem::size_of::<ConnRecord>();
/// Bytes in an [`OutboxHeader`].
pub const OUTBOX_HEADER_LEN: usize = core::mem::size_of::<OutboxHeader>();
/// Longest part accepted or written: it lives in an image, which is at most this long.
pub const MAX_DAEMON_LEN: u64 = crate::image::MAX_IMAGE_LEN;
/// Longest socket or binary path, in bytes (Linux's `PATH_MAX` without the NUL).
pub const PATH_MAX: usize = 4095;
/// Most luod pids in the settings: Linux's `PID_MAX_LIMIT`, the most distinct pids there are.
pub const MAX_PIDS: usize = 4 * 1024 * 1024;
/// Longest session name of a connection, without the NUL (the image's session names).
pub const CONN_NAME_MAX: usize = crate::image::SESSION_NAME_MAX;
/// Longest argument of an outbox reply (a reply message less its header).
pub const MAX_REPLY_ARG: usize = crate::wire::MAX_ARG;
/// Most descriptors attached to an outbox reply (the kernel's `SCM_MAX_FD`).
pub const MAX_REPLY_FDS: usize = crate::wire::MAX_FDS;
/// Largest errno of an outbox reply (as the kernel's `MAX_ERRNO`).
pub const MAX_ERRNO: i32 = crate::image::MAX_ERRNO;
/// Alignment of the paths, the pid array and each outbox reply within the part.
pub const DAEMON_ALIGN: usize = 8;

/// [`DaemonHeader::limits`]: `limit_sessions` holds a value.
pub const LIMIT_SESSIONS: u32 = 1 << 0;
/// [`DaemonHeader::limits`]: `limit_files` holds a value.
pub const LIMIT_FILES: u32 = 1 << 1;
/// [`DaemonHeader::limits`]: `limit_bytes` holds a value.
pub const LIMIT_BYTES: u32 = 1 << 2;
/// [`DaemonHeader::limits`]: `fd_share` holds a value.
pub const LIMIT_FD_SHARE: u32 = 1 << 3;
/// [`DaemonHeader::limits`]: `fd_reserve` holds a value.
pub const LIMIT_FD_RESERVE: u32 = 1 << 4;
/// Every defined [`DaemonHeader::limits`] bit.
pub const LIMITS_ALL: u32 =
    LIMIT_SESSIONS | LIMIT_FILES | LIMIT_BYTES | LIMIT_FD_SHARE | LIMIT_FD_RESERVE;
/// Every defined [`DaemonHeader::last_upgrade_flags`] bit.
pub const LAST_UPGRADE_FLAGS_ALL: u32 = crate::wire::UPGRADE_STOP_AND_COPY;

/// [`ConnRecord::kind`]: a fresh connection (status, list, upgrade, reboot).
pub const CONN_CONTROL: u32 = 0;
/// [`ConnRecord::kind`]: the open `/dev/liveupdate` of its uid.
pub const CONN_DEVICE: u32 = 1;
/// [`ConnRecord::kind`]: a session descriptor.
pub const CONN_SESSION: u32 = 2;
/// [`ConnRecord::kind`]: a session descriptor whose session was handed off.
pub const CONN_DETACHED: u32 = 3;

/// [`ConnRecord::flags`]: the session of a `CONN_SESSION` connection is incoming (handed over);
/// without it, outgoing. Only on `CONN_SESSION`.
pub const CONN_INCOMING: u32 = 1 << 0;
/// [`ConnRecord::flags`]: a request was applied on the connection; `last_request` is its id.
pub const CONN_APPLIED: u32 = 1 << 1;
/// [`ConnRecord::flags`]: the reply to `last_request` was sent. Only with `CONN_APPLIED`.
pub const CONN_REPLY_SENT: u32 = 1 << 2;
/// Every defined [`ConnRecord::flags`] bit.
pub const CONN_FLAGS_ALL: u32 = CONN_INCOMING | CONN_APPLIED | CONN_REPLY_SENT;

/// How the last orchestrator upgrade went, as `luoctl status` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastUpgrade {
    /// Successors started for it (1 when the first one was taken; 0 before any upgrade).
    pub rounds: u32,
    /// `wire::UPGRADE_STOP_AND_COPY` if it fell back to stop and copy; no other bit. Zero
    /// when `rounds` is.
    pub flags: u32,
}

/// The daemon's quotas and descriptor budget, each absent or a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonLimits {
    /// Most sessions a uid may hold.
    pub sessions: Option<u64>,
    /// Most preserved files a uid may hold.
    pub files: Option<u64>,
    /// Most bytes of preserved memory a uid may hold.
    pub bytes: Option<u64>,
    /// A uid's share of luod's descriptors.
    pub fd_share: Option<u64>,
    /// Descriptors kept in reserve for luod itself.
    pub fd_reserve: Option<u64>,
}

/// What luod was started with, carried across upgrades.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSettings<'a> {
    /// The socket path: 1..=[`PATH_MAX`] bytes of UTF-8 without NUL.
    pub socket: &'a str,
    /// The binary an upgrade runs when none is named: 1..=[`PATH_MAX`] bytes of UTF-8
    /// without NUL.
    pub binary: &'a str,
    /// Orchestrator upgrades since this generation started.
    pub upgrades: u64,
    /// How the last upgrade went.
    pub last_upgrade: LastUpgrade,
    /// Every luod process that served the socket: positive, distinct, at most [`MAX_PIDS`].
    pub pids: Vec<i32>,
    /// Quotas and descriptor budget.
    pub limits: DaemonLimits,
}

impl<'a> DaemonSettings<'a> {
    /// Settings with these paths, no upgrade yet, no pid and no limit.
    pub fn new(socket: &'a str, binary: &'a str) -> Self {
        DaemonSettings {
            socket,
            binary,
            upgrades: 0,
            last_upgrade: LastUpgrade::default(),
            pids: Vec::new(),
            limits: DaemonLimits::default(),
        }
    }
}

/// The direction of a session connection's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Being filled by this generation.
    Outgoing,
    /// Handed over, waiting to be retrieved.
    Incoming,
}

/// What a connection plays the part of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind<'a> {
    /// [`CONN_CONTROL`].
    Control,
    /// [`CONN_DEVICE`].
    Device,
    /// [`CONN_SESSION`]: the session is the one of the connection's uid with this direction
    /// and name (1..=[`CONN_NAME_MAX`] bytes, no NUL).
    Session {
        /// The session's direction.
        direction: Direction,
        /// The session's name.
        name: &'a [u8],
    },
    /// [`CONN_DETACHED`].
    Detached,
}

impl ConnKind<'_> {
    /// The [`ConnRecord::kind`] code.
    pub fn code(&self) -> u32 {
        match self {
            ConnKind::Control => CONN_CONTROL,
            ConnKind::Device => CONN_DEVICE,
            ConnKind::Session { .. } => CONN_SESSION,
            ConnKind::Detached => CONN_DETACHED,
        }
    }
}

/// The last request applied on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedRequest {
    /// Its id.
    pub id: u64,
    /// Whether its reply was sent.
    pub reply_sent: bool,
}

/// A reply not yet delivered: it waits in its connection's outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxReply<'a> {
    /// The request's id.
    pub id: u64,
    /// 0 or a positive errno, at most [`MAX_ERRNO`].
    pub errno: i32,
    /// The reply's argument, at most [`MAX_REPLY_ARG`] bytes.
    pub arg: &'a [u8],
    /// fd-table indices of the descriptors it carries, at most [`MAX_REPLY_FDS`].
    pub fds: Vec<u32>,
}

/// One client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConn<'a> {
    /// fd-table index of luod's end of the connection.
    pub fd_index: u32,
    /// What it plays the part of.
    pub kind: ConnKind<'a>,
    /// The peer's pid (0 if not visible); not negative.
    pub pid: i32,
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid.
    pub gid: u32,
    /// The last request applied on the connection, if any.
    pub last_request: Option<AppliedRequest>,
    /// Replies waiting to be delivered, oldest first.
    pub outbox: Vec<OutboxReply<'a>>,
}

/// A validated daemon part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonPart<'a> {
    /// luod's settings.
    pub settings: DaemonSettings<'a>,
    /// fd-table index of the listening socket.
    pub listener: u32,
    /// fd-table index of the lock file.
    pub lock: u32,
    /// The connections, in the order they were written.
    pub conns: Vec<DaemonConn<'a>>,
}

impl<'a> DaemonPart<'a> {
    /// Validates a part whose descriptors are in an fd table of `fd_count` slots (the image's
    /// `fds().len()`); nothing is returned unless every rule of `docs/format.md` holds.
    pub fn parse(bytes: &'a [u8], fd_count: usize) -> Result<Self, DaemonError> {
        reader::parse(bytes, fd_count)
    }

    /// [`parse`](Self::parse), after checking the part's `compatible` in the image:
    /// [`DaemonError::Compatible`] for anything but [`DAEMON_COMPATIBLE`] (`luod-daemon-v1`,
    /// the text form, included).
    pub fn parse_part(
        compatible: &str,
        bytes: &'a [u8],
        fd_count: usize,
    ) -> Result<Self, DaemonError> {
        if compatible != DAEMON_COMPATIBLE {
            return Err(DaemonError::Compatible {
                found: alloc::string::String::from(compatible),
            });
        }
        Self::parse(bytes, fd_count)
    }

    /// Checks the part against the image's fd table (`Image::fds`): the listener and every
    /// connection are sockets (`S_IFSOCK`). The lock and the descriptors of outbox replies may
    /// be of any type.
    pub fn check_fd_types(&self, fds: &[crate::image::FdEntry]) -> Result<(), DaemonError> {
        let sockets = core::iter::once((self.listener, FdUse::Listener)).chain(
            self.conns
                .iter()
                .zip(0u32..)
                .map(|(c, conn)| (c.fd_index, FdUse::Conn { conn })),
        );
        for (index, used_by) in sockets {
            let entry = fds.get(index as usize).ok_or(DaemonError::FdIndex {
                used_by,
                index,
                fd_count: fds.len() as u64,
            })?;
            let mode_type = entry.mode_type.get();
            if mode_type != crate::image::S_IFSOCK {
                return Err(DaemonError::FdType {
                    used_by,
                    index,
                    mode_type,
                });
            }
        }
        Ok(())
    }

    /// The part's bytes, as [`DaemonWriter`] lays them out; fails on what the writer refuses.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DaemonError> {
        let mut w = DaemonWriter::new(&self.settings, self.listener, self.lock)?;
        for conn in &self.conns {
            w.add_conn(conn)?;
        }
        Ok(w.finish())
    }

    /// Every fd-table index the part uses, with what uses it, in part order: the listener, the
    /// lock, then each connection followed by the descriptors of its outbox replies.
    pub fn fd_uses(&self) -> impl Iterator<Item = (u32, FdUse)> + '_ {
        let fixed = [(self.listener, FdUse::Listener), (self.lock, FdUse::Lock)];
        let conns = self.conns.iter().zip(0u32..).flat_map(|(c, conn)| {
            let replies = c.outbox.iter().zip(0u32..).flat_map(move |(r, reply)| {
                r.fds
                    .iter()
                    .map(move |&i| (i, FdUse::Reply { conn, reply }))
            });
            core::iter::once((c.fd_index, FdUse::Conn { conn })).chain(replies)
        });
        fixed.into_iter().chain(conns)
    }
}

/// Builds a daemon part.
///
/// [`new`](Self::new) takes the settings and the listener's and lock's fd-table indices,
/// [`add_conn`](Self::add_conn) one connection with its outbox, [`finish`](Self::finish)
/// returns the bytes. Each step checks its input against the rules the reader applies and
/// leaves the writer unchanged on error, so every part it finishes is one
/// [`DaemonPart::parse`] accepts, given an fd table that holds every index used.
#[derive(Debug)]
pub struct DaemonWriter {
    /// The header, the paths and the pids.
    head: Vec<u8>,
    /// The connection records.
    conns: Vec<u8>,
    conn_count: u32,
    /// The outbox replies.
    outboxes: Vec<u8>,
    /// Every fd-table index used so far.
    slots: rules::Slots,
}

impl DaemonWriter {
    /// A writer for these settings, with the listener and the lock at these fd-table indices.
    ///
    /// Checks the paths (1..=[`PATH_MAX`] bytes, no NUL), the last upgrade (known flag bits,
    /// none without a round), the pids (positive, distinct, at most [`MAX_PIDS`]) and that
    /// `listener` and `lock` differ.
    pub fn new(
        settings: &DaemonSettings<'_>,
        listener: u32,
        lock: u32,
    ) -> Result<Self, DaemonError> {
        Self::new_impl(settings, listener, lock)
    }

    /// Adds a connection and its outbox.
    ///
    /// Checks the pid (not negative), the session name of a session connection
    /// (1..=[`CONN_NAME_MAX`] bytes, no NUL), each outbox reply (errno `0..=MAX_ERRNO`, at
    /// most [`MAX_REPLY_ARG`] argument bytes and [`MAX_REPLY_FDS`] descriptors), that no
    /// fd-table index is used twice in the part, and the part's length. On error nothing is
    /// added.
    pub fn add_conn(&mut self, conn: &DaemonConn<'_>) -> Result<(), DaemonError> {
        self.add_conn_impl(conn)
    }

    /// The part's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.finish_impl()
    }
}
