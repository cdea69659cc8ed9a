//! The daemon part fuzz target's body (`luo_abi::daemon::fuzz_one`, also run by
//! `fuzz/fuzz_targets/daemon.rs`) over inputs derived from real parts: every truncation, every
//! single-bit flip, random byte and field overwrites. `fuzz_one` parses each input as is and
//! again with its length field repaired, so the damage reaches the checks behind the length;
//! on an accepted part it checks the rules and that the part writes back to the same bytes.
//! Any panic fails the test.
//!
//! This is how CI exercises the fuzz target on stable Rust; `cargo +nightly fuzz run daemon`
//! explores further. The target's seeds in `fuzz/seeds/daemon` are checked here too.
#![allow(clippy::unwrap_used)]

mod records;

use luo_abi::daemon::fuzz_one;
use records::*;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("seed-sample", sample_daemon()),
        ("seed-minimal", minimal_daemon()),
        ("seed-big", big_daemon()),
    ]
}

#[test]
fn seeds_are_the_writers() {
    check_seeds("daemon", &seeds());
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

    // Every truncation and every single-bit flip of the sample and the minimal part.
    for (_, seed) in &seeds[..2] {
        for len in 0..seed.len() {
            run(&seed[..len]);
        }
        for bit in 0..seed.len() * 8 {
            let mut b = seed.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            run(&b);
        }
    }

    // Random damage to every seed: bytes, whole 32-bit fields (counts, lengths, indices),
    // insertions and cuts.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (_, seed) in &seeds {
        for _ in 0..3000 {
            let mut b = seed.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                match rng.below(5) {
                    0 => {
                        let at = at & !3;
                        let values = [0, 1, 2, 8, 63, 64, 253, 254, 4080, 4081, u32::MAX];
                        let v = values[rng.below(values.len())].to_le_bytes();
                        let end = (at + 4).min(b.len());
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

    // Random bytes behind a valid header prefix.
    for _ in 0..2000 {
        let mut b = seeds[0].1[..24].to_vec();
        let len = rng.below(600);
        b.extend((0..len).map(|_| rng.next() as u8));
        run(&b);
    }

    println!("{inputs} inputs, {accepted} accepted");
    assert!(inputs > 15_000, "{inputs} inputs");
    assert!(accepted > 0 && accepted < inputs);
}
