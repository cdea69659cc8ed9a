//! [`JournalError`]: why a journal is corrupt or a record cannot be appended, and
//! [`PayloadError`]: what is wrong with one record's payload.
//!
//! Reader errors carry the offset of the record's header in the journal and its sequence
//! number; writer errors carry the offset in the caller's buffer where the record would have
//! started and the sequence number it would have had.

use core::fmt;

use super::RecordType;

/// What is wrong with the payload of a record of a known type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload is not exactly as long as its type and its counts say.
    Length {
        /// The length it must have.
        expected: u64,
        /// Its length.
        found: u64,
    },
    /// A negative descriptor number.
    Fd {
        /// The number.
        fd: i32,
    },
    /// A connection kind code other than 0 to 3.
    ConnKind {
        /// The code.
        kind: u32,
    },
    /// A negative peer pid.
    Pid {
        /// The pid.
        pid: i32,
    },
    /// A reply errno that is not 0 or a positive errno up to 4095.
    Errno {
        /// The errno.
        errno: i32,
    },
    /// A reply argument longer than 4080 bytes.
    ArgTooLong {
        /// Its length.
        len: u64,
    },
    /// A reply with more than 253 descriptors.
    TooManyFds {
        /// How many.
        count: u64,
    },
    /// A reply that carries one descriptor number twice.
    DuplicateFd {
        /// The number.
        fd: i32,
    },
    /// A checkpoint that covers its own record or a later one.
    CheckpointAhead {
        /// The sequence number it covers.
        covers: u64,
    },
    /// A checkpoint that covers less than the header's or an earlier checkpoint's.
    CheckpointBehind {
        /// The sequence number it covers.
        covers: u64,
        /// What was covered already.
        covered: u64,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PayloadError::*;
        match *self {
            Length { expected, found } => {
                write!(f, "payload is {found} bytes long, {expected} expected")
            }
            Fd { fd } => write!(f, "negative descriptor number {fd}"),
            ConnKind { kind } => write!(f, "unknown connection kind {kind}"),
            Pid { pid } => write!(f, "negative peer pid {pid}"),
            Errno { errno } => write!(f, "bad reply errno {errno}"),
            ArgTooLong { len } => write!(f, "reply argument of {len} bytes is over the limit"),
            TooManyFds { count } => write!(f, "reply carries {count} descriptors, over the limit"),
            DuplicateFd { fd } => write!(f, "reply carries descriptor {fd} twice"),
            CheckpointAhead { covers } => {
                write!(
                    f,
                    "checkpoint covers seq {covers}, not before its own record"
                )
            }
            CheckpointBehind { covers, covered } => write!(
                f,
                "checkpoint covers seq {covers}, less than the {covered} already covered"
            ),
        }
    }
}

/// Why a journal is refused, or a record cannot be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalError {
    // ---- Whole journal and header ----
    /// The journal is longer than [`MAX_JOURNAL_LEN`](super::MAX_JOURNAL_LEN).
    TooLarge {
        /// Its length.
        len: u64,
    },
    /// Shorter than the magic and version, or than the header.
    TooShort {
        /// Its length.
        len: u64,
    },
    /// The journal does not start with [`JOURNAL_MAGIC`](super::JOURNAL_MAGIC).
    Magic,
    /// A version this reader does not know.
    Version {
        /// The journal's version.
        found: u32,
    },
    /// The header's CRC does not match.
    HeaderChecksum {
        /// The stored CRC.
        stored: u32,
        /// The CRC computed.
        computed: u32,
    },
    /// The header's `checkpoint_seq` is above [`MAX_SEQ`](super::MAX_SEQ).
    HeaderSeq {
        /// The value.
        seq: u64,
    },

    // ---- Records ----
    /// A record declares a payload longer than [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
    PayloadTooLarge {
        /// Offset of the record.
        offset: u64,
        /// The declared length.
        len: u64,
    },
    /// A record's CRC does not match and more bytes follow it: not a torn tail.
    Checksum {
        /// Offset of the record.
        offset: u64,
        /// Its (unverified) sequence number.
        seq: u64,
        /// The stored CRC.
        stored: u32,
        /// The CRC computed.
        computed: u32,
    },
    /// A record's sequence number is not the previous one's plus one.
    SeqGap {
        /// Offset of the record.
        offset: u64,
        /// The sequence number it must have.
        expected: u64,
        /// Its sequence number.
        found: u64,
    },
    /// A record would need a sequence number above [`MAX_SEQ`](super::MAX_SEQ).
    SeqOverflow {
        /// Offset of the record.
        offset: u64,
    },
    /// A record's flags are not zero.
    RecordFlags {
        /// Offset of the record.
        offset: u64,
        /// Its sequence number.
        seq: u64,
        /// The flags.
        flags: u16,
    },
    /// A record type this version does not define, without
    /// [`RecordType::MAY_SKIP`](super::RecordType::MAY_SKIP) (or type 0).
    UnknownType {
        /// Offset of the record.
        offset: u64,
        /// Its sequence number.
        seq: u64,
        /// The type.
        rtype: RecordType,
    },
    /// A record's payload breaks its type's rules.
    Payload {
        /// Offset of the record.
        offset: u64,
        /// Its sequence number.
        seq: u64,
        /// Its type.
        rtype: RecordType,
        /// What is wrong.
        error: PayloadError,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use JournalError::*;
        match *self {
            TooLarge { len } => write!(f, "Journal of {len} bytes exceeds the size limit"),
            TooShort { len } => write!(f, "Journal of {len} bytes is shorter than its header"),
            Magic => write!(f, "Not a luod journal (bad magic)"),
            Version { found } => write!(
                f,
                "Journal version {found} is not supported; this luod reads version {}",
                super::JOURNAL_VERSION
            ),
            HeaderChecksum { stored, computed } => write!(
                f,
                "Journal header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            HeaderSeq { seq } => write!(f, "Journal header's checkpoint seq {seq} is too large"),
            PayloadTooLarge { offset, len } => write!(
                f,
                "Journal record at offset {offset} declares a {len}-byte payload, over the limit"
            ),
            Checksum {
                offset,
                seq,
                stored,
                computed,
            } => write!(
                f,
                "Journal record {seq} at offset {offset} fails its checksum (stored \
                 {stored:#010x}, computed {computed:#010x}) and more records follow: the \
                 journal is corrupt"
            ),
            SeqGap {
                offset,
                expected,
                found,
            } => write!(
                f,
                "Journal record at offset {offset} has seq {found}, {expected} expected"
            ),
            SeqOverflow { offset } => write!(
                f,
                "Journal record at offset {offset} would need a seq over the limit"
            ),
            RecordFlags { offset, seq, flags } => write!(
                f,
                "Journal record {seq} at offset {offset} has unknown flags {flags:#x}"
            ),
            UnknownType { offset, seq, rtype } => write!(
                f,
                "Journal record {seq} at offset {offset} has unknown type {rtype}, which may not be skipped"
            ),
            Payload {
                offset,
                seq,
                rtype,
                error,
            } => write!(
                f,
                "Journal record {seq} ({rtype}) at offset {offset}: {error}"
            ),
        }
    }
}

impl core::error::Error for JournalError {}
