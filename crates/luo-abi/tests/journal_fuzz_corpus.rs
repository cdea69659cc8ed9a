//! The journal fuzz target's body (`luo_abi::journal::fuzz_one`, also run by
//! `fuzz/fuzz_targets/journal.rs`) over inputs derived from real journals: every truncation,
//! every single-bit flip, random byte and field overwrites, records spliced out or repeated.
//! `fuzz_one` parses each input as is and again with every CRC repaired, so the damage reaches
//! the checks behind the CRCs; on an accepted journal it checks that the valid prefix writes
//! back to the same bytes and that the torn tail covers the rest. Any panic fails the test.
//!
//! This is how CI exercises the fuzz target on stable Rust; `cargo +nightly fuzz run journal`
//! explores further. The target's seeds in `fuzz/seeds/journal` are checked here too.
#![allow(clippy::unwrap_used)]

mod records;

use luo_abi::journal::{Journal, JournalError, Torn, fuzz_one, reseal};
use records::*;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (sample, at) = sample_journal();
    let mut empty = Vec::new();
    luo_abi::journal::JournalWriter::create(&mut empty, 3, 0).unwrap();
    vec![
        ("seed-sample", sample.clone()),
        ("seed-torn", sample[..at[6] + 21].to_vec()),
        ("seed-empty", empty),
        ("seed-big", big_journal()),
    ]
}

#[test]
fn seeds_are_the_writers() {
    check_seeds("journal", &seeds());
}

/// A bit flip in the sample is refused, or (in the last record, or in a length that makes a
/// record look longer than what is left) read as a torn tail; never accepted whole.
#[test]
fn every_bit_flip_is_caught() {
    let (sample, at) = sample_journal();
    let last = at[6];
    for bit in 0..sample.len() * 8 {
        let mut b = sample.clone();
        let byte = bit / 8;
        b[byte] ^= 1 << (bit % 8);
        let result = Journal::parse(&b);
        // The record the byte is in (0 for the header), and whether it is in its `len`.
        let record = at.iter().rposition(|&s| s <= byte).unwrap_or(0);
        let in_len = byte >= 32 && (4..8).contains(&(byte - at[record]));
        match result {
            Err(JournalError::Magic) => assert!(byte < 8),
            Err(JournalError::Version { .. }) => assert!((8..12).contains(&byte)),
            Err(JournalError::HeaderChecksum { .. }) => assert!((12..32).contains(&byte)),
            Err(JournalError::Checksum { offset, .. }) => {
                assert_eq!(offset as usize, at[record], "bit {bit}")
            }
            Err(JournalError::PayloadTooLarge { .. }) => assert!(in_len, "bit {bit}"),
            Ok(j) => {
                let torn = j.torn_tail().unwrap();
                assert!(byte >= last || in_len, "bit {bit} accepted: {torn:?}");
                assert!(torn.torn == Torn::Checksum || in_len, "bit {bit}: {torn:?}");
            }
            Err(e) => assert!(in_len, "bit {bit}: {e}"),
        }
    }
}

#[test]
fn fuzz_target_survives_derived_inputs() {
    let mut inputs = 0usize;
    let mut accepted = 0usize;
    let mut run = |data: &[u8]| {
        inputs += 1;
        if fuzz_one(data) {
            accepted += 1;
        }
    };
    let seeds = seeds();
    for (_, seed) in &seeds {
        assert!(fuzz_one(seed));
    }

    // Every truncation and every single-bit flip of the sample, raw and resealed (fuzz_one
    // reseals itself; resealing first also checks flips in the CRCs themselves).
    let (sample, at) = sample_journal();
    for len in 0..=sample.len() {
        run(&sample[..len]);
    }
    for bit in 0..sample.len() * 8 {
        let mut b = sample.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        run(&b);
        reseal(&mut b);
        run(&b);
    }

    // Records spliced out, repeated or swapped.
    let record = |k: usize| sample[at[k]..at[k + 1]].to_vec();
    for k in 0..7 {
        let mut without = sample[..at[k]].to_vec();
        without.extend_from_slice(&sample[at[k + 1]..]);
        assert!(Journal::parse(&without).is_err() || k == 6);
        run(&without);
        let mut twice = sample[..at[k + 1]].to_vec();
        twice.extend_from_slice(&record(k));
        twice.extend_from_slice(&sample[at[k + 1]..]);
        run(&twice);
        if k < 6 {
            let mut swapped = sample[..at[k]].to_vec();
            swapped.extend_from_slice(&record(k + 1));
            swapped.extend_from_slice(&record(k));
            swapped.extend_from_slice(&sample[at[k + 2]..]);
            assert!(Journal::parse(&swapped).is_err());
            run(&swapped);
        }
    }

    // Random damage to every seed: bytes, whole fields, insertions and cuts.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for (_, seed) in &seeds {
        for _ in 0..2500 {
            let mut b = seed.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                match rng.below(5) {
                    0 => {
                        let values: [u64; 9] =
                            [0, 1, 3, 5, 0x8000, 4081, 1 << 20, u64::MAX, rng.next()];
                        let v = values[rng.below(values.len())].to_le_bytes();
                        let width = [2, 4, 8][rng.below(3)];
                        let end = (at + width).min(b.len());
                        b[at..end].copy_from_slice(&v[..end - at]);
                    }
                    1 => b[at] = 0,
                    2 => b[at] = 0xff,
                    3 => b.insert(at, rng.next() as u8),
                    _ => b[at] = rng.next() as u8,
                }
            }
            if rng.below(8) == 0 {
                let len = rng.below(b.len());
                b.truncate(len);
            }
            run(&b);
        }
    }

    // Random bytes behind a valid header.
    for _ in 0..2000 {
        let mut b = seeds[2].1.clone();
        let len = rng.below(300);
        b.extend((0..len).map(|_| rng.next() as u8));
        run(&b);
    }

    println!("{inputs} inputs, {accepted} accepted");
    assert!(inputs > 15_000, "{inputs} inputs");
    assert!(accepted > 0 && accepted < inputs);
}
