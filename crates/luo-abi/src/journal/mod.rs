//! The journal: what luod did since its last checkpoint image, as an append-only log in a memfd.
//!
//! **This module is a contract.** The journal is written by a running luod and read by the one
//! that replaces it after a crash (the keeper holds the memfd), possibly a newer binary, so its
//! layout is fixed by [`JOURNAL_VERSION`] (`luod-journal-v1`) and documented byte for byte in
//! `docs/format.md` ("The journal"). Any change to the header, the record framing or a payload
//! bumps the version; a new kind of record gets a new [`RecordType`] instead, and a reader that
//! does not know a type skips it only if the type says it may ([`RecordType::MAY_SKIP`]).
//!
//! # Layout
//!
//! ```text
//!  0                       32
//!  +-----------------------+----------+----------+-----+----------+
//!  | JournalHeader (32 B)  | record 1 | record 2 | ... | record n |    n ≥ 0, no padding
//!  +-----------------------+----------+----------+-----+----------+
//!
//!  a record (20 + len bytes):
//!  0          2           4         8          16             16+len
//!  +----------+-----------+---------+----------+--------------+-------------------------+
//!  | type u16 | flags u16 | len u32 | seq u64  | payload      | crc32 of bytes 0..16+len |
//!  +----------+-----------+---------+----------+--------------+-------------------------+
//! ```
//!
//! All integers are little-endian. The header names the checkpoint image the journal follows
//! (its generation and the last sequence number it covers); record `k` carries sequence number
//! `checkpoint_seq + k`. A payload is at most [`MAX_PAYLOAD`] bytes.
//!
//! **Torn tail or corruption.** The writer appends whole records at the end (many in one
//! `pwrite` if it likes) and never rewrites one, so a writer that dies mid-write leaves a
//! prefix of what it meant to write: complete records, then at most one incomplete record.
//! [`Journal::parse`] therefore accepts a last record that is incomplete, or complete but with
//! a wrong CRC and nothing after it, as a *torn tail*: the records before it are returned and
//! the tail is reported ([`Journal::torn_tail`]) and ignored. Anything else that is wrong is
//! *corruption* and refuses the whole journal ([`JournalError`]): a bad CRC with bytes after
//! it, a sequence number out of order, a payload longer than the limit, an unknown record type
//! without `MAY_SKIP`, a payload that breaks its type's rules. Before appending again, the
//! daemon cuts the memfd back to [`Journal::valid_len`] and continues with
//! [`Journal::writer`].
//!
//! # Using it
//!
//! ```
//! use luo_abi::journal::{ConnOpen, Entry, Journal, JournalWriter, RequestApplied};
//!
//! # fn main() -> Result<(), luo_abi::journal::JournalError> {
//! let mut log = Vec::new();
//! let mut writer = JournalWriter::create(&mut log, 7, 100)?; // generation 7, after seq 100
//! // Several records, one buffer: one pwrite.
//! let mut batch = Vec::new();
//! let open = ConnOpen { fd: 12, kind: 1, pid: 4242, uid: 1000, gid: 1000 };
//! assert_eq!(writer.append(&mut batch, &Entry::ConnOpen(open))?, 101);
//! let applied = RequestApplied { conn_fd: 12, request_id: 5, errno: 0, arg: b"", fds: vec![13] };
//! writer.append(&mut batch, &Entry::RequestApplied(applied))?;
//! log.extend_from_slice(&batch);
//!
//! // The writer died in the middle of its next record: the tail is ignored.
//! let mut torn = Vec::new();
//! writer.append(&mut torn, &Entry::ConnOpen(open))?;
//! log.extend_from_slice(&torn[..9]);
//!
//! let journal = Journal::parse(&log)?;
//! assert_eq!((journal.generation(), journal.checkpoint_seq()), (7, 100));
//! assert_eq!(journal.records().len(), 2);
//! assert_eq!(journal.records()[0].entry, Entry::ConnOpen(open));
//! assert!(journal.torn_tail().is_some());
//! assert_eq!(journal.next_seq(), 103);
//! log.truncate(journal.valid_len() as usize); // then append with journal.writer()
//! # Ok(())
//! # }
//! ```
//!
//! # Adding a record type
//!
//! Pick the next free number (with [`RecordType::MAY_SKIP`] if a reader that does not know it
//! loses nothing by skipping it), add its constant to [`RecordType`], its payload struct to
//! `layout.rs`, a variant to [`Entry`], and one arm each to `payload::decode`,
//! `payload::encode` and `payload::check`; document it in `docs/format.md`. The framing, the
//! reader and the writer need no change.

use alloc::vec::Vec;
use core::fmt;

mod error;
mod fuzz;
pub mod layout;
mod payload;
mod reader;
mod writer;

pub use error::{JournalError, PayloadError};
#[doc(hidden)]
pub use fuzz::{fuzz_one, reseal};
pub use layout::*;

/// First eight bytes of a journal.
pub const JOURNAL_MAGIC: [u8; 8] = *b"LUOJRNL\0";
/// The version in [`JournalHeader::version`]: `luod-journal-v1`. Any change to the framing or
/// to a payload bumps it.
pub const JOURNAL_VERSION: u32 = 1;
/// Bytes in a [`JournalHeader`].
pub const JOURNAL_HEADER_LEN: usize = core::mem::size_of::<JournalHeader>();
/// Bytes in a [`RecordHeader`].
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();
/// Bytes of framing around a payload: the header and the CRC.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + 4;
/// Longest payload of one record (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Longest journal accepted (1 GiB, as an image): a daemon checkpoints long before.
pub const MAX_JOURNAL_LEN: u64 = 1 << 30;
/// Largest sequence number (`2^63 - 1`); a journal that would need a larger one is refused.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A record type: an open set of `u16` values, of which this version defines five.
///
/// Bit 15 ([`MAY_SKIP`](Self::MAY_SKIP)) is part of the type: a reader that does not know a
/// type with it set skips the record; one without it refuses the journal. The other 15 bits
/// number the type; 0 is never valid (so a zeroed header is never a record).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordType(pub u16);

impl RecordType {
    /// The bit that lets a reader skip a record of a type it does not know.
    pub const MAY_SKIP: u16 = 0x8000;
    /// A connection opened: [`ConnOpenPayload`].
    pub const CONN_OPEN: RecordType = RecordType(1);
    /// A connection closed: [`ConnClosePayload`].
    pub const CONN_CLOSE: RecordType = RecordType(2);
    /// A request applied, with its reply: [`RequestAppliedHead`] and what follows it.
    pub const REQUEST_APPLIED: RecordType = RecordType(3);
    /// A reply sent: [`ReplySentPayload`].
    pub const REPLY_SENT: RecordType = RecordType(4);
    /// A checkpoint image written: [`CheckpointPayload`].
    pub const CHECKPOINT: RecordType = RecordType(5);

    /// Whether a reader that does not know the type may skip it.
    pub fn may_skip(self) -> bool {
        self.0 & Self::MAY_SKIP != 0
    }

    /// The symbolic name of a type this version defines.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::CONN_OPEN => "CONN_OPEN",
            Self::CONN_CLOSE => "CONN_CLOSE",
            Self::REQUEST_APPLIED => "REQUEST_APPLIED",
            Self::REPLY_SENT => "REPLY_SENT",
            Self::CHECKPOINT => "CHECKPOINT",
            _ => return None,
        })
    }
}

impl fmt::Debug for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

/// `CONN_OPEN`: luod accepted or created a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOpen {
    /// The descriptor number of luod's end; not negative.
    pub fd: i32,
    /// A `daemon::CONN_*` code, 0 to 3.
    pub kind: u32,
    /// The peer's pid (0 if not visible); not negative.
    pub pid: i32,
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid.
    pub gid: u32,
}

/// `CONN_CLOSE`: luod closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnClose {
    /// The descriptor number of luod's end; not negative.
    pub fd: i32,
}

/// `REQUEST_APPLIED`: a mutating request was applied, and this is its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestApplied<'a> {
    /// The descriptor number of the connection the request came on; not negative.
    pub conn_fd: i32,
    /// The request's id.
    pub request_id: u64,
    /// The reply's errno: 0 or a positive errno up to 4095.
    pub errno: i32,
    /// The reply's argument, at most 4080 bytes (`wire::MAX_ARG`).
    pub arg: &'a [u8],
    /// The descriptor numbers the reply carries: at most 253, not negative, distinct.
    pub fds: Vec<i32>,
}

/// `REPLY_SENT`: the reply to a request left luod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplySent {
    /// The descriptor number of the connection; not negative.
    pub conn_fd: i32,
    /// The request's id.
    pub request_id: u64,
}

/// `CHECKPOINT`: a checkpoint image covering every record up to `covers` was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last sequence number the image covers.
    pub covers: u64,
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// [`RecordType::CONN_OPEN`].
    ConnOpen(ConnOpen),
    /// [`RecordType::CONN_CLOSE`].
    ConnClose(ConnClose),
    /// [`RecordType::REQUEST_APPLIED`].
    RequestApplied(RequestApplied<'a>),
    /// [`RecordType::REPLY_SENT`].
    ReplySent(ReplySent),
    /// [`RecordType::CHECKPOINT`].
    Checkpoint(Checkpoint),
    /// A record of a type this version does not know, which may be skipped.
    Skipped {
        /// Its type (with [`RecordType::MAY_SKIP`] set).
        rtype: RecordType,
        /// Its payload, unread.
        payload: &'a [u8],
    },
}

impl Entry<'_> {
    /// The record type that carries this entry.
    pub fn record_type(&self) -> RecordType {
        match self {
            Entry::ConnOpen(_) => RecordType::CONN_OPEN,
            Entry::ConnClose(_) => RecordType::CONN_CLOSE,
            Entry::RequestApplied(_) => RecordType::REQUEST_APPLIED,
            Entry::ReplySent(_) => RecordType::REPLY_SENT,
            Entry::Checkpoint(_) => RecordType::CHECKPOINT,
            Entry::Skipped { rtype, .. } => *rtype,
        }
    }
}

/// One valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset of its header in the journal.
    pub offset: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its raw payload.
    pub payload: &'a [u8],
    /// What it says.
    pub entry: Entry<'a>,
}

/// How the last record of a journal is torn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Torn {
    /// Fewer bytes than a record header.
    Header,
    /// A header whose payload or CRC is not all there.
    Body,
    /// A complete last record whose CRC does not match.
    Checksum,
}

/// The incomplete record at the end of a journal, which the reader ignores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Its offset: the journal's valid length.
    pub offset: u64,
    /// Its bytes, up to the end of the journal.
    pub len: u64,
    /// What is wrong with it.
    pub torn: Torn,
}

/// A validated journal: its header and every record before a torn tail, in order.
#[derive(Clone, Debug)]
pub struct Journal<'a> {
    generation: u64,
    checkpoint_seq: u64,
    records: Vec<Record<'a>>,
    valid_len: u64,
    torn: Option<TornTail>,
    /// The last sequence number a checkpoint covers: the header's, or the last `CHECKPOINT`'s.
    covered: u64,
}

impl<'a> Journal<'a> {
    /// Validates the header and every record; a torn tail is allowed, corruption is not.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, JournalError> {
        reader::parse(bytes)
    }
    /// The generation of the checkpoint image the journal follows.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// The last sequence number that image covers.
    pub fn checkpoint_seq(&self) -> u64 {
        self.checkpoint_seq
    }
    /// The valid records, in order: their sequence numbers are `checkpoint_seq + 1, + 2, ...`.
    pub fn records(&self) -> &[Record<'a>] {
        &self.records
    }
    /// Bytes of the header and the valid records: where the next record goes.
    pub fn valid_len(&self) -> u64 {
        self.valid_len
    }
    /// The torn record at the end, if the writer died while writing it.
    pub fn torn_tail(&self) -> Option<TornTail> {
        self.torn
    }
    /// The sequence number of the next record.
    pub fn next_seq(&self) -> u64 {
        self.checkpoint_seq + self.records.len() as u64 + 1
    }
    /// A writer that appends after the valid records (once the journal is cut back to
    /// [`valid_len`](Self::valid_len)).
    pub fn writer(&self) -> JournalWriter {
        JournalWriter {
            next_seq: self.next_seq(),
            covered: self.covered,
        }
    }
}

/// Appends records to a caller's buffer, numbering them.
///
/// The buffer is whatever the daemon writes next: many records may go into one buffer and
/// reach the memfd with one `pwrite` at its end. Each record is checked against the rules the
/// reader applies before it is appended; on error the buffer and the writer are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalWriter {
    next_seq: u64,
    covered: u64,
}

impl JournalWriter {
    /// Appends the header of a new journal that follows the checkpoint image of `generation`
    /// covering sequence numbers up to `checkpoint_seq` (at most [`MAX_SEQ`]).
    pub fn create(
        out: &mut Vec<u8>,
        generation: u64,
        checkpoint_seq: u64,
    ) -> Result<Self, JournalError> {
        writer::create(out, generation, checkpoint_seq)
    }
    /// The sequence number the next record will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    /// Appends a record carrying `entry` and returns its sequence number.
    pub fn append(&mut self, out: &mut Vec<u8>, entry: &Entry<'_>) -> Result<u64, JournalError> {
        self.append_impl(out, entry)
    }
    /// Appends a record of type `rtype` with an encoded payload: for a type this version
    /// defines, the payload must follow its rules; any other type must have
    /// [`RecordType::MAY_SKIP`].
    pub fn append_raw(
        &mut self,
        out: &mut Vec<u8>,
        rtype: RecordType,
        payload: &[u8],
    ) -> Result<u64, JournalError> {
        self.append_raw_impl(out, rtype, payload)
    }
}
