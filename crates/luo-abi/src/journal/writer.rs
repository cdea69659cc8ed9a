//! [`JournalWriter`]: the header of a new journal, and records appended to a caller's buffer.

use alloc::vec::Vec;

use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{U16, U32, U64};

use super::payload;
use super::reader::{header_crc, record_crc};
use super::{
    Entry, JOURNAL_MAGIC, JOURNAL_VERSION, JournalError, JournalHeader, JournalWriter, MAX_PAYLOAD,
    MAX_SEQ, RECORD_HEADER_LEN, RecordHeader, RecordType,
};

pub(super) fn create(
    out: &mut Vec<u8>,
    generation: u64,
    checkpoint_seq: u64,
) -> Result<JournalWriter, JournalError> {
    if checkpoint_seq > MAX_SEQ {
        return Err(JournalError::HeaderSeq {
            seq: checkpoint_seq,
        });
    }
    let mut header = JournalHeader {
        magic: JOURNAL_MAGIC,
        version: U32::new(JOURNAL_VERSION),
        header_crc: U32::ZERO,
        generation: U64::new(generation),
        checkpoint_seq: U64::new(checkpoint_seq),
    };
    header.header_crc = U32::new(header_crc(&header));
    out.extend_from_slice(header.as_bytes());
    Ok(JournalWriter {
        next_seq: checkpoint_seq + 1,
        covered: checkpoint_seq,
    })
}

impl JournalWriter {
    pub(super) fn append_impl(
        &mut self,
        out: &mut Vec<u8>,
        entry: &Entry<'_>,
    ) -> Result<u64, JournalError> {
        let rtype = entry.record_type();
        if let Entry::Skipped { payload, .. } = entry {
            return self.append_raw_impl(out, rtype, payload);
        }
        let offset = out.len() as u64;
        let seq = self.seq(offset)?;
        let bad = |error| JournalError::Payload {
            offset,
            seq,
            rtype,
            error,
        };
        payload::check(entry).map_err(bad)?;
        if let Entry::Checkpoint(c) = entry {
            payload::checkpoint(c.covers, seq, self.covered).map_err(bad)?;
        }
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        payload::encode(entry, out);
        self.seal(out, start, rtype, seq, entry)
    }

    pub(super) fn append_raw_impl(
        &mut self,
        out: &mut Vec<u8>,
        rtype: RecordType,
        data: &[u8],
    ) -> Result<u64, JournalError> {
        let offset = out.len() as u64;
        let seq = self.seq(offset)?;
        if data.len() > MAX_PAYLOAD {
            return Err(JournalError::PayloadTooLarge {
                offset,
                len: data.len() as u64,
            });
        }
        let entry = match payload::decode(rtype, data) {
            Some(entry) => entry.map_err(|error| JournalError::Payload {
                offset,
                seq,
                rtype,
                error,
            })?,
            None if rtype.may_skip() && rtype.0 != RecordType::MAY_SKIP => Entry::Skipped {
                rtype,
                payload: data,
            },
            None => return Err(JournalError::UnknownType { offset, seq, rtype }),
        };
        if let Entry::Checkpoint(c) = entry {
            payload::checkpoint(c.covers, seq, self.covered).map_err(|error| {
                JournalError::Payload {
                    offset,
                    seq,
                    rtype,
                    error,
                }
            })?;
        }
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        out.extend_from_slice(data);
        self.seal(out, start, rtype, seq, &entry)
    }

    /// The next sequence number, if there is one.
    fn seq(&self, offset: u64) -> Result<u64, JournalError> {
        if self.next_seq > MAX_SEQ {
            return Err(JournalError::SeqOverflow { offset });
        }
        Ok(self.next_seq)
    }

    /// Fills in the header of the record whose payload ends `out`, appends its CRC and moves
    /// the writer on. A payload over the limit is taken back out.
    fn seal(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
        rtype: RecordType,
        seq: u64,
        entry: &Entry<'_>,
    ) -> Result<u64, JournalError> {
        let len = out.len() - start - RECORD_HEADER_LEN;
        if len > MAX_PAYLOAD {
            out.truncate(start);
            return Err(JournalError::PayloadTooLarge {
                offset: start as u64,
                len: len as u64,
            });
        }
        let header = RecordHeader {
            rtype: U16::new(rtype.0),
            flags: U16::ZERO,
            // At most MAX_PAYLOAD, checked above.
            len: U32::new(len as u32),
            seq: U64::new(seq),
        };
        if let Some(dst) = out.get_mut(start..start + RECORD_HEADER_LEN) {
            dst.copy_from_slice(header.as_bytes());
        }
        let crc = record_crc(out.get(start..).unwrap_or_default());
        out.extend_from_slice(&crc.to_le_bytes());
        if let Entry::Checkpoint(c) = entry {
            self.covered = c.covers;
        }
        self.next_seq = seq + 1;
        Ok(seq)
    }
}
