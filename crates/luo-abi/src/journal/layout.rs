//! The fixed-size structs of the journal: its header, the header of every record, and the
//! payloads of the record types defined so far.
//!
//! Every struct here is part of the `luod-journal-v1` contract (`docs/format.md`): changing any
//! of them bumps [`JOURNAL_VERSION`](super::JOURNAL_VERSION) (a payload may instead get a new
//! record type).

use zerocopy::byteorder::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The start of the journal, written once when it is created.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct JournalHeader {
    /// [`JOURNAL_MAGIC`](super::JOURNAL_MAGIC), `LUOJRNL\0`.
    pub magic: [u8; 8],
    /// [`JOURNAL_VERSION`](super::JOURNAL_VERSION), 1.
    pub version: U32,
    /// CRC-32 of these 32 bytes with this field taken as zero.
    pub header_crc: U32,
    /// The generation of the checkpoint image the journal follows.
    pub generation: U64,
    /// The last sequence number that checkpoint image covers: the first record carries the
    /// next one.
    pub checkpoint_seq: U64,
}
const _: () = assert!(core::mem::size_of::<JournalHeader>() == 32);

/// The head of every record; `len` payload bytes and a CRC-32 follow.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RecordHeader {
    /// The record type ([`RecordType`](super::RecordType)); bit 15 is `MAY_SKIP`.
    pub rtype: U16,
    /// Zero.
    pub flags: U16,
    /// Bytes of payload, at most [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
    pub len: U32,
    /// Sequence number: the previous record's plus one.
    pub seq: U64,
}
const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);

/// Payload of `CONN_OPEN`: luod accepted or created a connection.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnOpenPayload {
    /// The descriptor number of luod's end of the connection; not negative.
    pub fd: I32,
    /// Its kind: a `daemon::CONN_*` code, 0 to 3.
    pub kind: U32,
    /// The peer's pid (0 if not visible); not negative.
    pub pid: I32,
    /// The peer's uid.
    pub uid: U32,
    /// The peer's gid.
    pub gid: U32,
}
const _: () = assert!(core::mem::size_of::<ConnOpenPayload>() == 20);

/// Payload of `CONN_CLOSE`: luod closed a connection.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnClosePayload {
    /// The descriptor number of luod's end of the connection; not negative.
    pub fd: I32,
}
const _: () = assert!(core::mem::size_of::<ConnClosePayload>() == 4);

/// Head of the payload of `REQUEST_APPLIED`: a mutating request was applied and its reply
/// decided. `arg_len` reply argument bytes and `fd_count` little-endian `i32` descriptor numbers
/// follow.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RequestAppliedHead {
    /// The request's id.
    pub request_id: U64,
    /// The descriptor number of the connection it came on; not negative.
    pub conn_fd: I32,
    /// The reply's errno: 0 or a positive errno up to 4095.
    pub errno: I32,
    /// Bytes of the reply's argument, at most 4080.
    pub arg_len: U16,
    /// Descriptors the reply carries, at most 253.
    pub fd_count: U16,
}
const _: () = assert!(core::mem::size_of::<RequestAppliedHead>() == 20);

/// Payload of `REPLY_SENT`: the reply to a request left luod.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReplySentPayload {
    /// The request's id.
    pub request_id: U64,
    /// The descriptor number of the connection; not negative.
    pub conn_fd: I32,
}
const _: () = assert!(core::mem::size_of::<ReplySentPayload>() == 12);

/// Payload of `CHECKPOINT`: a checkpoint image covering every record up to `covers` was
/// written.
///
/// Changing this struct bumps `JOURNAL_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CheckpointPayload {
    /// The last sequence number the image covers: below this record's, and not below the
    /// header's `checkpoint_seq` or an earlier checkpoint's.
    pub covers: U64,
}
const _: () = assert!(core::mem::size_of::<CheckpointPayload>() == 8);
