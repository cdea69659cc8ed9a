//! The journal: what the writer appends the reader returns in order (proptest); a torn last
//! record is ignored and reported, every kind of corruption refuses the journal with its own
//! error, never a panic.
//!
//! Hostile cases either tamper with the sample journal (`records::sample_journal`: seven
//! records, seq 101 to 107) and repair the CRCs with `reseal`, so that the check under test is
//! the one that fires, or frame records by hand with `records::raw_record`, which skips the
//! writer's checks.
#![allow(clippy::unwrap_used)]

mod records;

use luo_abi::journal::{
    Checkpoint, ConnClose, ConnOpen, Entry, Journal, JournalError, JournalWriter, MAX_PAYLOAD,
    MAX_SEQ, PayloadError, RecordType, ReplySent, RequestApplied, Torn, TornTail, reseal,
};
use proptest::prelude::*;
use records::*;

// Field offsets in a record.
const T_TYPE: usize = 0;
const T_FLAGS: usize = 2;
const T_LEN: usize = 4;
const T_SEQ: usize = 8;
const T_PAYLOAD: usize = 16;

/// Tampers with the sample (`f` gets the bytes and the record offsets), reseals, parses.
fn tamper(f: impl FnOnce(&mut Vec<u8>, &[usize])) -> Result<Journal<'static>, JournalError> {
    let (mut b, at) = sample_journal();
    f(&mut b, &at);
    reseal(&mut b);
    Journal::parse(b.leak())
}

fn entries<'a>(j: &'a Journal<'_>) -> Vec<&'a Entry<'a>> {
    j.records().iter().map(|r| &r.entry).collect()
}

#[test]
fn sample_reads_back_in_order() {
    let (bytes, at) = sample_journal();
    let j = Journal::parse(&bytes).unwrap();
    assert_eq!(
        (j.generation(), j.checkpoint_seq()),
        (GENERATION, CHECKPOINT_SEQ)
    );
    let want = sample_entries();
    assert_eq!(entries(&j), want.iter().collect::<Vec<_>>());
    for (k, r) in j.records().iter().enumerate() {
        assert_eq!(r.seq, CHECKPOINT_SEQ + 1 + k as u64);
        assert_eq!(r.offset, at[k] as u64);
    }
    assert_eq!(j.records()[4].payload, b"future");
    assert_eq!(j.valid_len(), bytes.len() as u64);
    assert_eq!(j.torn_tail(), None);
    assert_eq!(j.next_seq(), 108);
    let mut copy = bytes.clone();
    reseal(&mut copy);
    assert_eq!(copy, bytes);
}

#[test]
fn an_empty_journal_is_its_header() {
    let mut out = Vec::new();
    let w = JournalWriter::create(&mut out, 1, 0).unwrap();
    assert_eq!(out.len(), 32);
    assert_eq!(w.next_seq(), 1);
    let j = Journal::parse(&out).unwrap();
    assert!(j.records().is_empty());
    assert_eq!((j.valid_len(), j.next_seq(), j.torn_tail()), (32, 1, None));
    assert_eq!(j.writer(), w);
}

#[test]
fn batches_and_single_appends_write_the_same_bytes() {
    let (bytes, _) = sample_journal();
    let mut out = Vec::new();
    let mut w = JournalWriter::create(&mut out, GENERATION, CHECKPOINT_SEQ).unwrap();
    let mut batch = Vec::new();
    for e in sample_entries() {
        w.append(&mut batch, &e).unwrap();
    }
    out.extend_from_slice(&batch);
    assert_eq!(out, bytes);
}

#[test]
fn a_writer_resumes_after_the_valid_records() {
    let (bytes, at) = sample_journal();
    // Torn in the middle of the last record: cut back, append it again, and another one.
    let torn = &bytes[..at[6] + 7];
    let j = Journal::parse(torn).unwrap();
    assert_eq!(j.records().len(), 6);
    let mut log = torn[..j.valid_len() as usize].to_vec();
    let mut w = j.writer();
    assert_eq!(w.next_seq(), 107);
    w.append(&mut log, &sample_entries()[6]).unwrap();
    assert_eq!(log, bytes);
    let close = Entry::ConnClose(ConnClose { fd: 11 });
    assert_eq!(w.append(&mut log, &close), Ok(108));
    let j = Journal::parse(&log).unwrap();
    assert_eq!(j.records().len(), 8);
    // The resumed writer knows the last checkpoint: one behind it is refused.
    let behind = Entry::Checkpoint(Checkpoint { covers: 102 });
    assert!(matches!(
        w.append(&mut log, &behind),
        Err(JournalError::Payload {
            error: PayloadError::CheckpointBehind {
                covers: 102,
                covered: 103
            },
            ..
        })
    ));
}

// ---- Torn tails ----

#[test]
fn every_truncation_is_a_clean_end_or_a_torn_tail() {
    let (bytes, at) = sample_journal();
    for len in 0..=bytes.len() {
        let cut = &bytes[..len];
        if len < 32 {
            assert_eq!(
                Journal::parse(cut).unwrap_err(),
                JournalError::TooShort { len: len as u64 },
                "length {len}"
            );
            continue;
        }
        let j = Journal::parse(cut).unwrap();
        // The records wholly inside the cut, and a torn tail unless the cut is on a boundary.
        let whole = at.iter().skip(1).filter(|&&end| end <= len).count();
        assert_eq!(j.records().len(), whole, "length {len}");
        let boundary = if whole == 0 { 32 } else { at[whole] };
        assert_eq!(j.valid_len(), boundary as u64);
        let torn = (len > boundary).then(|| TornTail {
            offset: boundary as u64,
            len: (len - boundary) as u64,
            torn: if len - boundary < 16 {
                Torn::Header
            } else {
                Torn::Body
            },
        });
        assert_eq!(j.torn_tail(), torn, "length {len}");
    }
}

#[test]
fn a_bad_crc_on_the_last_record_is_a_torn_tail() {
    let (mut b, at) = sample_journal();
    let last = b.len() - 1;
    b[last] ^= 1;
    let j = Journal::parse(&b).unwrap();
    assert_eq!(j.records().len(), 6);
    assert_eq!(
        j.torn_tail(),
        Some(TornTail {
            offset: at[6] as u64,
            len: (b.len() - at[6]) as u64,
            torn: Torn::Checksum
        })
    );
    // So is a damaged payload there.
    let (mut b, at) = sample_journal();
    b[at[6] + T_PAYLOAD] ^= 0x10;
    let j = Journal::parse(&b).unwrap();
    assert_eq!(j.torn_tail().map(|t| t.torn), Some(Torn::Checksum));
}

#[test]
fn a_bad_crc_followed_by_records_is_corruption() {
    let (mut b, at) = sample_journal();
    b[at[2] + T_PAYLOAD + 3] ^= 0x01;
    let err = Journal::parse(&b).unwrap_err();
    assert!(
        matches!(err, JournalError::Checksum { offset, seq: 103, .. } if offset == at[2] as u64),
        "{err}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");
    // Even a torn-looking record is corruption when anything follows it.
    let (mut b, _) = sample_journal();
    let last = b.len() - 1;
    b[last] ^= 1;
    b.push(0);
    assert!(matches!(
        Journal::parse(&b).unwrap_err(),
        JournalError::Checksum { seq: 107, .. }
    ));
}

#[test]
fn zero_bytes_after_the_records_are_not_an_end() {
    // The log is never padded: a zeroed "record" fails its CRC.
    let (mut b, _) = sample_journal();
    let end = b.len() as u64;
    b.extend_from_slice(&[0; 10]);
    let j = Journal::parse(&b).unwrap();
    assert_eq!(
        j.torn_tail().map(|t| (t.offset, t.torn)),
        Some((end, Torn::Header))
    );
    b.extend_from_slice(&[0; 30]);
    assert!(matches!(
        Journal::parse(&b).unwrap_err(),
        JournalError::Checksum { offset, seq: 0, .. } if offset == end
    ));
}

#[test]
fn a_torn_record_with_a_wrong_seq_is_corruption() {
    let (mut b, at) = sample_journal();
    b.truncate(at[6] + 17);
    put_u64(&mut b, at[6] + T_SEQ, 200);
    assert_eq!(
        Journal::parse(&b).unwrap_err(),
        JournalError::SeqGap {
            offset: at[6] as u64,
            expected: 107,
            found: 200
        }
    );
}

// ---- Header ----

#[test]
fn bad_headers_are_refused() {
    let (b, _) = sample_journal();
    let mut m = b.clone();
    m[3] ^= 1;
    assert_eq!(Journal::parse(&m).unwrap_err(), JournalError::Magic);
    let mut m = b.clone();
    put_u32(&mut m, 8, 2);
    assert_eq!(
        Journal::parse(&m).unwrap_err(),
        JournalError::Version { found: 2 }
    );
    let mut m = b.clone();
    m[20] ^= 1; // the generation
    assert!(matches!(
        Journal::parse(&m).unwrap_err(),
        JournalError::HeaderChecksum { .. }
    ));
    assert_eq!(
        Journal::parse(b"LUOJRNL\0\x01\0\0\0").unwrap_err(),
        JournalError::TooShort { len: 12 }
    );
    let err = tamper(|b, _| put_u64(b, 24, MAX_SEQ + 1)).unwrap_err();
    assert_eq!(err, JournalError::HeaderSeq { seq: MAX_SEQ + 1 });
}

// ---- Records ----

#[test]
fn an_oversized_payload_is_refused() {
    let (_, at) = sample_journal();
    let err = tamper(|b, at| put_u32(b, at[1] + T_LEN, MAX_PAYLOAD as u32 + 1)).unwrap_err();
    assert_eq!(
        err,
        JournalError::PayloadTooLarge {
            offset: at[1] as u64,
            len: MAX_PAYLOAD as u64 + 1
        }
    );
}

#[test]
fn seq_gaps_and_repeats_are_refused() {
    let (_, at) = sample_journal();
    for (seq, k) in [(104, 2), (102, 2), (0, 0), (u64::MAX, 6)] {
        let err = tamper(|b, at| put_u64(b, at[k] + T_SEQ, seq)).unwrap_err();
        assert_eq!(
            err,
            JournalError::SeqGap {
                offset: at[k] as u64,
                expected: 101 + k as u64,
                found: seq
            }
        );
    }
}

#[test]
fn seq_numbers_stop_at_the_limit() {
    let mut out = Vec::new();
    let mut w = JournalWriter::create(&mut out, 0, MAX_SEQ - 1).unwrap();
    let close = Entry::ConnClose(ConnClose { fd: 3 });
    assert_eq!(w.append(&mut out, &close), Ok(MAX_SEQ));
    let len = out.len();
    assert_eq!(
        w.append(&mut out, &close),
        Err(JournalError::SeqOverflow { offset: len as u64 })
    );
    assert_eq!(out.len(), len);
    // A forged record past the limit.
    out.extend_from_slice(&raw_record(2, 0, MAX_SEQ + 1, &3i32.to_le_bytes()));
    assert_eq!(
        Journal::parse(&out).unwrap_err(),
        JournalError::SeqOverflow { offset: len as u64 }
    );
    assert_eq!(
        JournalWriter::create(&mut Vec::new(), 0, MAX_SEQ + 1).unwrap_err(),
        JournalError::HeaderSeq { seq: MAX_SEQ + 1 }
    );
}

#[test]
fn record_flags_are_refused() {
    let (_, at) = sample_journal();
    let err = tamper(|b, at| put_u16(b, at[3] + T_FLAGS, 1)).unwrap_err();
    assert_eq!(
        err,
        JournalError::RecordFlags {
            offset: at[3] as u64,
            seq: 104,
            flags: 1
        }
    );
}

#[test]
fn unknown_types_are_refused_unless_they_may_be_skipped() {
    let (_, at) = sample_journal();
    for rtype in [0x0042, 0, RecordType::MAY_SKIP, 0x7fff] {
        let err = tamper(|b, at| put_u16(b, at[4] + T_TYPE, rtype)).unwrap_err();
        assert_eq!(
            err,
            JournalError::UnknownType {
                offset: at[4] as u64,
                seq: 105,
                rtype: RecordType(rtype)
            }
        );
    }
    // With the bit, any payload is skipped unread.
    let j = tamper(|b, at| put_u16(b, at[4] + T_TYPE, 0xffff)).unwrap();
    assert_eq!(
        j.records()[4].entry,
        Entry::Skipped {
            rtype: RecordType(0xffff),
            payload: b"future"
        }
    );
    let err = tamper(|b, at| put_u16(b, at[4] + T_TYPE, 0x0042)).unwrap_err();
    assert!(err.to_string().contains("unknown type 0x0042"), "{err}");
}

/// The error for a journal of the sample's header and one forged record at seq 101.
fn forged(rtype: RecordType, payload: &[u8]) -> JournalError {
    Journal::parse(&journal_of(&[raw_record(rtype.0, 0, 101, payload)])).unwrap_err()
}

fn payload_error(rtype: RecordType, payload: &[u8]) -> PayloadError {
    match forged(rtype, payload) {
        JournalError::Payload {
            offset: 32,
            seq: 101,
            rtype: t,
            error,
        } if t == rtype => error,
        other => panic!("{other:?}"),
    }
}

fn conn_open(fd: i32, kind: u32, pid: i32) -> Vec<u8> {
    [
        fd.to_le_bytes(),
        kind.to_le_bytes(),
        pid.to_le_bytes(),
        [0; 4],
        [0; 4],
    ]
    .concat()
}

fn applied(conn_fd: i32, errno: i32, arg_len: u16, fd_count: u16, rest: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&9u64.to_le_bytes());
    p.extend_from_slice(&conn_fd.to_le_bytes());
    p.extend_from_slice(&errno.to_le_bytes());
    p.extend_from_slice(&arg_len.to_le_bytes());
    p.extend_from_slice(&fd_count.to_le_bytes());
    p.extend_from_slice(rest);
    p
}

#[test]
fn payload_lengths_are_exact() {
    let cases: [(RecordType, usize); 4] = [
        (RecordType::CONN_OPEN, 20),
        (RecordType::CONN_CLOSE, 4),
        (RecordType::REPLY_SENT, 12),
        (RecordType::CHECKPOINT, 8),
    ];
    for (rtype, len) in cases {
        for found in [0, len - 1, len + 1] {
            assert_eq!(
                payload_error(rtype, &vec![0; found]),
                PayloadError::Length {
                    expected: len as u64,
                    found: found as u64
                },
                "{rtype}"
            );
        }
    }
    // REQUEST_APPLIED: its head, then exactly what its counts say.
    assert_eq!(
        payload_error(RecordType::REQUEST_APPLIED, &[0; 19]),
        PayloadError::Length {
            expected: 20,
            found: 19
        }
    );
    for rest in [&b"ab"[..], b"abc\x05\0\0", b"abc\x05\0\0\0\0"] {
        assert_eq!(
            payload_error(RecordType::REQUEST_APPLIED, &applied(3, 0, 3, 1, rest)),
            PayloadError::Length {
                expected: 27,
                found: 20 + rest.len() as u64
            }
        );
    }
}

#[test]
fn bad_payload_fields_are_refused() {
    use PayloadError::*;
    let t = RecordType::CONN_OPEN;
    assert_eq!(payload_error(t, &conn_open(-1, 0, 0)), Fd { fd: -1 });
    assert_eq!(payload_error(t, &conn_open(3, 4, 0)), ConnKind { kind: 4 });
    assert_eq!(payload_error(t, &conn_open(3, 2, -2)), Pid { pid: -2 });
    assert_eq!(
        payload_error(RecordType::CONN_CLOSE, &(-3i32).to_le_bytes()),
        Fd { fd: -3 }
    );
    let sent = [9u64.to_le_bytes().as_slice(), &(-1i32).to_le_bytes()].concat();
    assert_eq!(payload_error(RecordType::REPLY_SENT, &sent), Fd { fd: -1 });

    let t = RecordType::REQUEST_APPLIED;
    assert_eq!(payload_error(t, &applied(-1, 0, 0, 0, b"")), Fd { fd: -1 });
    for errno in [-1, 4096] {
        assert_eq!(
            payload_error(t, &applied(3, errno, 0, 0, b"")),
            Errno { errno }
        );
    }
    assert_eq!(
        payload_error(t, &applied(3, 0, 4081, 0, &[0; 4081])),
        ArgTooLong { len: 4081 }
    );
    assert_eq!(
        payload_error(t, &applied(3, 0, 0, 254, &[0; 254 * 4])),
        TooManyFds { count: 254 }
    );
    let fds = [5i32.to_le_bytes(), (-5i32).to_le_bytes()].concat();
    assert_eq!(payload_error(t, &applied(3, 0, 0, 2, &fds)), Fd { fd: -5 });
    let fds = [5i32, 6, 5].map(i32::to_le_bytes).concat();
    assert_eq!(
        payload_error(t, &applied(3, 0, 0, 3, &fds)),
        DuplicateFd { fd: 5 }
    );
}

#[test]
fn checkpoints_must_cover_what_went_before() {
    use PayloadError::*;
    let t = RecordType::CHECKPOINT;
    // The header's checkpoint is 100, this record is 101.
    assert_eq!(
        payload_error(t, &101u64.to_le_bytes()),
        CheckpointAhead { covers: 101 }
    );
    assert_eq!(
        payload_error(t, &99u64.to_le_bytes()),
        CheckpointBehind {
            covers: 99,
            covered: 100
        }
    );
    // 100 covers nothing new, which is allowed; then one behind it is not.
    let records = [
        raw_record(5, 0, 101, &100u64.to_le_bytes()),
        raw_record(2, 0, 102, &3i32.to_le_bytes()),
        raw_record(5, 0, 103, &102u64.to_le_bytes()),
        raw_record(5, 0, 104, &101u64.to_le_bytes()),
    ];
    let err = Journal::parse(&journal_of(&records)).unwrap_err();
    assert!(matches!(
        err,
        JournalError::Payload {
            seq: 104,
            error: CheckpointBehind {
                covers: 101,
                covered: 102
            },
            ..
        }
    ));
    assert_eq!(
        Journal::parse(&journal_of(&records[..3]))
            .unwrap()
            .records()
            .len(),
        3
    );
}

// ---- The writer refuses what the reader would ----

#[test]
fn writer_refuses_bad_records_and_stays_unchanged() {
    let mut out = Vec::new();
    let mut w = JournalWriter::create(&mut out, 1, 10).unwrap();
    let before = (out.clone(), w);
    let open = |fd, kind, pid| {
        Entry::ConnOpen(ConnOpen {
            fd,
            kind,
            pid,
            uid: 0,
            gid: 0,
        })
    };
    let many: Vec<i32> = (0..254).collect();
    let cases = [
        (open(-1, 0, 0), PayloadError::Fd { fd: -1 }),
        (open(1, 9, 0), PayloadError::ConnKind { kind: 9 }),
        (open(1, 0, -1), PayloadError::Pid { pid: -1 }),
        (
            Entry::RequestApplied(RequestApplied {
                conn_fd: 1,
                request_id: 1,
                errno: 0,
                arg: &[0; 4081],
                fds: vec![],
            }),
            PayloadError::ArgTooLong { len: 4081 },
        ),
        (
            Entry::RequestApplied(RequestApplied {
                conn_fd: 1,
                request_id: 1,
                errno: 0,
                arg: b"",
                fds: many,
            }),
            PayloadError::TooManyFds { count: 254 },
        ),
        (
            Entry::ReplySent(ReplySent {
                conn_fd: -9,
                request_id: 1,
            }),
            PayloadError::Fd { fd: -9 },
        ),
        (
            Entry::Checkpoint(Checkpoint { covers: 11 }),
            PayloadError::CheckpointAhead { covers: 11 },
        ),
        (
            Entry::Checkpoint(Checkpoint { covers: 9 }),
            PayloadError::CheckpointBehind {
                covers: 9,
                covered: 10,
            },
        ),
    ];
    for (entry, error) in cases {
        let rtype = entry.record_type();
        assert_eq!(
            w.append(&mut out, &entry),
            Err(JournalError::Payload {
                offset: 32,
                seq: 11,
                rtype,
                error
            })
        );
        assert_eq!((&out, &w), (&before.0, &before.1));
    }
    // Raw payloads: a known type is decoded and checked, an unknown one must be skippable.
    assert_eq!(
        w.append_raw(&mut out, RecordType::CONN_CLOSE, &[0; 3]),
        Err(JournalError::Payload {
            offset: 32,
            seq: 11,
            rtype: RecordType::CONN_CLOSE,
            error: PayloadError::Length {
                expected: 4,
                found: 3
            }
        })
    );
    assert_eq!(
        w.append_raw(&mut out, RecordType(0x42), b""),
        Err(JournalError::UnknownType {
            offset: 32,
            seq: 11,
            rtype: RecordType(0x42)
        })
    );
    let big = vec![0; MAX_PAYLOAD + 1];
    assert_eq!(
        w.append_raw(&mut out, FUTURE, &big),
        Err(JournalError::PayloadTooLarge {
            offset: 32,
            len: MAX_PAYLOAD as u64 + 1
        })
    );
    let skipped = Entry::Skipped {
        rtype: RecordType(0x43),
        payload: b"",
    };
    assert!(matches!(
        w.append(&mut out, &skipped),
        Err(JournalError::UnknownType { .. })
    ));
    assert_eq!((&out, &w), (&before.0, &before.1));
    // The largest payload is fine.
    assert_eq!(
        w.append_raw(&mut out, FUTURE, &vec![7; MAX_PAYLOAD]),
        Ok(11)
    );
    assert_eq!(Journal::parse(&out).unwrap().records().len(), 1);
}

#[test]
fn messages_read_well() {
    let cases = [
        (
            JournalError::SeqGap {
                offset: 52,
                expected: 102,
                found: 104,
            },
            "Journal record at offset 52 has seq 104, 102 expected",
        ),
        (
            JournalError::Payload {
                offset: 32,
                seq: 101,
                rtype: RecordType::REQUEST_APPLIED,
                error: PayloadError::DuplicateFd { fd: 5 },
            },
            "Journal record 101 (REQUEST_APPLIED) at offset 32: reply carries descriptor 5 twice",
        ),
        (
            JournalError::Version { found: 9 },
            "Journal version 9 is not supported; this luod reads version 1",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

// ---- Round trips ----

/// A generated entry: which kind, a descriptor number, a kind code, an errno (or pid), an id,
/// an argument and descriptor numbers.
type RawEntry = (u8, i32, u32, i32, u64, Vec<u8>, Vec<i32>);

fn entry() -> impl Strategy<Value = RawEntry> {
    (
        0..6u8,
        0..=i32::MAX,
        0..4u32,
        prop_oneof![Just(0), 1..=4095i32],
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::btree_set(0..=i32::MAX, 0..6).prop_map(|s| s.into_iter().collect()),
    )
}

fn build<'a>(raw: &'a [RawEntry], checkpoint_seq: u64) -> Vec<Entry<'a>> {
    let mut covered = checkpoint_seq;
    raw.iter()
        .zip(1u64..)
        .map(|((kind, fd, code, errno, id, arg, fds), k)| match kind {
            0 => Entry::ConnOpen(ConnOpen {
                fd: *fd,
                kind: *code,
                pid: *errno,
                uid: *id as u32,
                gid: (*id >> 32) as u32,
            }),
            1 => Entry::ConnClose(ConnClose { fd: *fd }),
            2 => Entry::RequestApplied(RequestApplied {
                conn_fd: *fd,
                request_id: *id,
                errno: *errno,
                arg,
                fds: fds.clone(),
            }),
            3 => Entry::ReplySent(ReplySent {
                conn_fd: *fd,
                request_id: *id,
            }),
            4 => {
                // Anything from what is covered up to the record before this one.
                let seq = checkpoint_seq + k;
                covered += id % (seq - covered);
                Entry::Checkpoint(Checkpoint { covers: covered })
            }
            _ => Entry::Skipped {
                rtype: RecordType(RecordType::MAY_SKIP | 0x100 | u16::from(*code as u8)),
                payload: arg,
            },
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the writer appends, in whatever batches, the reader returns in order with the
    /// right sequence numbers; and every cut inside the last record is a torn tail that leaves
    /// the others.
    #[test]
    fn writer_and_reader_agree(
        generation in any::<u64>(),
        checkpoint_seq in 0..MAX_SEQ - 1000,
        raw in prop::collection::vec(entry(), 0..24),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        tear in any::<prop::sample::Index>(),
    ) {
        let want = build(&raw, checkpoint_seq);
        let mut log = Vec::new();
        let mut w = JournalWriter::create(&mut log, generation, checkpoint_seq).unwrap();
        let mut batch = Vec::new();
        let mut starts = Vec::new();
        let cut_at: Vec<usize> = cuts.iter().map(|i| i.index(want.len() + 1)).collect();
        for (k, e) in want.iter().enumerate() {
            if cut_at.contains(&k) {
                log.append(&mut batch);
            }
            starts.push(log.len() + batch.len());
            prop_assert_eq!(w.append(&mut batch, e), Ok(checkpoint_seq + 1 + k as u64));
        }
        log.append(&mut batch);
        let j = Journal::parse(&log).unwrap();
        prop_assert_eq!((j.generation(), j.checkpoint_seq()), (generation, checkpoint_seq));
        let got: Vec<Entry<'_>> = j.records().iter().map(|r| r.entry.clone()).collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(j.torn_tail(), None);
        prop_assert_eq!(j.writer(), w);
        if let Some(&last) = starts.last() {
            let len = last + tear.index(log.len() - last);
            let torn = Journal::parse(&log[..len]).unwrap();
            prop_assert_eq!(torn.records().len(), want.len() - 1);
            prop_assert_eq!(torn.valid_len(), last as u64);
            prop_assert_eq!(torn.torn_tail().is_some(), len > last);
        }
    }
}
