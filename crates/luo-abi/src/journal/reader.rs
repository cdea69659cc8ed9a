//! [`Journal::parse`]: the header, then record after record until the end or a torn tail.
//!
//! For each record at offset `p`, with `r` bytes left:
//!
//! 1. `r == 0`: the end.
//! 2. `r < 16`: a torn header.
//! 3. A payload longer than `MAX_PAYLOAD`: corruption (no writer writes that header, and the
//!    next record cannot be found).
//! 4. `r < 20 + len`: a torn body, if its sequence number is the expected one (the header of a
//!    torn record is whole, so a wrong one is damage).
//! 5. A wrong CRC: a torn tail if the record ends exactly at the end, corruption otherwise.
//! 6. Sequence number, flags, type and payload: corruption if any is wrong.
//!
//! Each step moves forward by at least one whole record, so the reader is linear in the input.

use alloc::vec::Vec;

use zerocopy::FromBytes;
use zerocopy::byteorder::little_endian::U32;

use super::payload;
use super::{
    Entry, JOURNAL_HEADER_LEN, JOURNAL_MAGIC, JOURNAL_VERSION, Journal, JournalError,
    JournalHeader, MAX_JOURNAL_LEN, MAX_PAYLOAD, MAX_SEQ, RECORD_HEADER_LEN, RECORD_OVERHEAD,
    Record, RecordHeader, RecordType, Torn, TornTail,
};

/// CRC-32 of a header with its `header_crc` field taken as zero.
pub(super) fn header_crc(header: &JournalHeader) -> u32 {
    let mut copy = *header;
    copy.header_crc = U32::ZERO;
    crc32fast::hash(zerocopy::IntoBytes::as_bytes(&copy))
}

/// CRC-32 of a record's header and payload.
pub(super) fn record_crc(header_and_payload: &[u8]) -> u32 {
    crc32fast::hash(header_and_payload)
}

pub(super) fn parse(bytes: &[u8]) -> Result<Journal<'_>, JournalError> {
    let len = bytes.len() as u64;
    if len > MAX_JOURNAL_LEN {
        return Err(JournalError::TooLarge { len });
    }
    let (magic, rest) = bytes
        .split_at_checked(8)
        .ok_or(JournalError::TooShort { len })?;
    if magic != JOURNAL_MAGIC {
        return Err(JournalError::Magic);
    }
    let (version, _) = U32::read_from_prefix(rest).map_err(|_| JournalError::TooShort { len })?;
    if version.get() != JOURNAL_VERSION {
        return Err(JournalError::Version {
            found: version.get(),
        });
    }
    let (header, _) =
        JournalHeader::ref_from_prefix(bytes).map_err(|_| JournalError::TooShort { len })?;
    let computed = header_crc(header);
    if header.header_crc.get() != computed {
        return Err(JournalError::HeaderChecksum {
            stored: header.header_crc.get(),
            computed,
        });
    }
    let checkpoint_seq = header.checkpoint_seq.get();
    if checkpoint_seq > MAX_SEQ {
        return Err(JournalError::HeaderSeq {
            seq: checkpoint_seq,
        });
    }

    let mut records = Vec::new();
    let mut covered = checkpoint_seq;
    let mut expected = checkpoint_seq + 1;
    let mut at = JOURNAL_HEADER_LEN;
    let mut torn = None;
    while let Some(left) = bytes.get(at..).filter(|l| !l.is_empty()) {
        let offset = at as u64;
        let tail = |torn| TornTail {
            offset,
            len: left.len() as u64,
            torn,
        };
        let Ok((h, _)) = RecordHeader::ref_from_prefix(left) else {
            torn = Some(tail(Torn::Header));
            break;
        };
        let plen = h.len.get() as usize;
        let seq = h.seq.get();
        if plen > MAX_PAYLOAD {
            return Err(JournalError::PayloadTooLarge {
                offset,
                len: plen as u64,
            });
        }
        let body_end = RECORD_HEADER_LEN + plen;
        let Some((covered_bytes, crc)) = left
            .get(..body_end + 4)
            .map(|record| record.split_at(body_end))
        else {
            if seq != expected {
                return Err(JournalError::SeqGap {
                    offset,
                    expected,
                    found: seq,
                });
            }
            torn = Some(tail(Torn::Body));
            break;
        };
        let stored = U32::read_from_bytes(crc).map_or(0, |c| c.get());
        let computed = record_crc(covered_bytes);
        if stored != computed {
            if left.len() == body_end + 4 {
                torn = Some(tail(Torn::Checksum));
                break;
            }
            return Err(JournalError::Checksum {
                offset,
                seq,
                stored,
                computed,
            });
        }
        if expected > MAX_SEQ {
            return Err(JournalError::SeqOverflow { offset });
        }
        if seq != expected {
            return Err(JournalError::SeqGap {
                offset,
                expected,
                found: seq,
            });
        }
        let flags = h.flags.get();
        if flags != 0 {
            return Err(JournalError::RecordFlags { offset, seq, flags });
        }
        let rtype = RecordType(h.rtype.get());
        let data = covered_bytes.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let bad = |error| JournalError::Payload {
            offset,
            seq,
            rtype,
            error,
        };
        let entry = match payload::decode(rtype, data) {
            Some(entry) => entry.map_err(bad)?,
            None if rtype.may_skip() && rtype.0 != RecordType::MAY_SKIP => Entry::Skipped {
                rtype,
                payload: data,
            },
            None => return Err(JournalError::UnknownType { offset, seq, rtype }),
        };
        if let Entry::Checkpoint(c) = entry {
            payload::checkpoint(c.covers, seq, covered).map_err(bad)?;
            covered = c.covers;
        }
        records.push(Record {
            offset,
            seq,
            payload: data,
            entry,
        });
        expected += 1;
        at += RECORD_OVERHEAD + plen;
    }
    Ok(Journal {
        generation: header.generation.get(),
        checkpoint_seq,
        records,
        valid_len: at as u64,
        torn,
        covered,
    })
}
