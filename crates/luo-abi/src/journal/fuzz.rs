//! Support for the journal's fuzz target (`fuzz/fuzz_targets/journal.rs`) and for tests that
//! build hostile journals. Hidden from the documentation: not part of the contract.

use alloc::vec::Vec;

use zerocopy::FromBytes;
use zerocopy::byteorder::little_endian::U32;

use super::reader::{header_crc, record_crc};
use super::{
    Entry, JOURNAL_HEADER_LEN, Journal, JournalHeader, JournalWriter, MAX_PAYLOAD,
    RECORD_HEADER_LEN, RECORD_OVERHEAD, RecordHeader,
};

/// Rewrites the header's CRC and the CRC of every complete record (following the records'
/// lengths as far as they lead), so that a tampered journal reaches the checks behind the
/// CRCs. Does nothing to an input shorter than the header.
pub fn reseal(bytes: &mut [u8]) {
    let Ok((header, _)) = JournalHeader::mut_from_prefix(bytes) else {
        return;
    };
    header.header_crc = U32::new(header_crc(header));
    let mut at = JOURNAL_HEADER_LEN;
    while let Some(left) = bytes.get_mut(at..) {
        let Ok((h, _)) = RecordHeader::ref_from_prefix(left) else {
            return;
        };
        let len = h.len.get() as usize;
        if len > MAX_PAYLOAD {
            return;
        }
        let body = RECORD_HEADER_LEN + len;
        let Some(record) = left.get_mut(..body + 4) else {
            return;
        };
        let (covered, crc) = record.split_at_mut(body);
        crc.copy_from_slice(&record_crc(covered).to_le_bytes());
        at += RECORD_OVERHEAD + len;
    }
}

/// Parses `data` and, if it is accepted, checks the journal against its own rules and against
/// the writer: writing its header and records again gives back the valid prefix byte for byte,
/// the prefix alone parses to the same records without a torn tail, and the torn tail covers
/// the rest. Then does the same with a copy resealed by [`reseal`]. Returns whether `data`
/// itself was accepted.
///
/// # Panics
///
/// When an accepted journal breaks a rule or does not write back to itself: that is the bug a
/// fuzzer looks for.
pub fn fuzz_one(data: &[u8]) -> bool {
    let accepted = exercise(data);
    let mut copy: Vec<u8> = data.to_vec();
    reseal(&mut copy);
    if copy != data {
        exercise(&copy);
    }
    accepted
}

fn exercise(bytes: &[u8]) -> bool {
    let Ok(journal) = Journal::parse(bytes) else {
        return false;
    };
    let valid = journal.valid_len() as usize;
    assert!(valid >= JOURNAL_HEADER_LEN && valid <= bytes.len());
    match journal.torn_tail() {
        Some(t) => {
            assert_eq!(t.offset as usize, valid);
            assert_eq!(t.offset + t.len, bytes.len() as u64);
            assert!(t.len > 0);
        }
        None => assert_eq!(valid, bytes.len()),
    }

    let mut out = Vec::with_capacity(valid);
    let created = JournalWriter::create(&mut out, journal.generation(), journal.checkpoint_seq());
    let Ok(mut writer) = created else {
        panic!("an accepted header is refused by the writer: {created:?}");
    };
    let mut at = JOURNAL_HEADER_LEN as u64;
    for (record, k) in journal.records().iter().zip(1u64..) {
        assert_eq!(record.seq, journal.checkpoint_seq() + k);
        assert_eq!(record.offset, at);
        at += (RECORD_OVERHEAD + record.payload.len()) as u64;
        if let Entry::Skipped { rtype, .. } = record.entry {
            assert!(rtype.may_skip() && rtype.name().is_none());
        }
        let appended = writer.append(&mut out, &record.entry);
        assert_eq!(appended, Ok(record.seq));
    }
    assert_eq!(at, journal.valid_len());
    assert_eq!(writer, journal.writer());
    assert!(
        out.as_slice() == bytes.get(..valid).unwrap_or_default(),
        "an accepted journal does not write back to itself"
    );

    let prefix = Journal::parse(&out);
    assert!(
        prefix.as_ref().is_ok_and(|p| p.torn_tail().is_none()
            && p.records() == journal.records()
            && p.next_seq() == journal.next_seq()),
        "the valid prefix does not parse to the same records: {prefix:?}"
    );
    true
}
