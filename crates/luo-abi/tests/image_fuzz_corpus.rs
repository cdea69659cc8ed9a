//! The fuzz target's body (`luo_abi::image::fuzz_one`, also run by `fuzz/fuzz_targets/image.rs`)
//! over inputs derived from real images: truncations, single-bit flips, random byte and field
//! overwrites. `fuzz_one` parses each input as is and again resealed (length and checksum
//! fixed), so the damage reaches the checks behind the checksum; on an accepted image it reads
//! everything back through every accessor. Any panic fails the test.
//!
//! This is how CI exercises the fuzz target on stable Rust; `cargo +nightly fuzz run image`
//! explores further.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use luo_abi::image::fuzz_one;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut big = Model::empty();
    big.fds = (0..800).map(|i| (i + 3, S_IFREG)).collect();
    big.sessions = vec![
        session(
            "big",
            0,
            (0..800u32)
                .map(|i| file("memfd-v1", u64::from(i), Some(i), &[i as u8; 3]))
                .collect(),
        ),
        session("empty", luo_abi::image::SESSION_INCOMING, vec![]),
    ];
    let mut parts = sample_model();
    for i in 0..40 {
        parts.parts.push((
            format!("handlers/{}{i}", "x".repeat(50)),
            "c".into(),
            vec![1; i],
        ));
    }
    vec![
        sample(),
        Model::empty().write().unwrap(),
        big.write().unwrap(),
        parts.write().unwrap(),
    ]
}

/// The interesting byte ranges of an image: the FDT and the payload, not the zero gap between
/// them (the writer keeps 4096 bytes for the FDT unless it needs more).
fn ranges(bytes: &[u8]) -> [core::ops::Range<usize>; 2] {
    let fdt = fdt_end(bytes);
    let payload = fdt.max(4096).min(bytes.len());
    [0..fdt, payload..bytes.len()]
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
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    for seed in &seeds {
        assert!(fuzz_one(seed));
    }

    // Truncations and single-bit flips of the sample, over the FDT and the payload.
    let sample = &seeds[0];
    for range in ranges(sample) {
        for len in range.clone() {
            run(&sample[..len]);
        }
        for bit in range.start * 8..range.end * 8 {
            let mut b = sample.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            run(&b);
        }
    }

    // Random damage to every seed.
    for seed in &seeds {
        let [fdt, payload] = ranges(seed);
        for _ in 0..1500 {
            let mut b = seed.clone();
            for _ in 0..1 + rng.below(4) {
                let range = if rng.below(3) == 0 || payload.is_empty() {
                    fdt.clone()
                } else {
                    payload.clone()
                };
                let at = range.start + rng.below(range.len());
                match rng.below(4) {
                    // A whole little-endian u64 field in the payload (or a big-endian FDT cell).
                    0 => {
                        let at = at & !7;
                        let len = b.len() as u64;
                        let values = [0, 1, len, len - 8, u64::MAX, u64::MAX / 88, at as u64];
                        let v = values[rng.below(values.len())];
                        let bytes = if at < fdt.end {
                            v.to_be_bytes()
                        } else {
                            v.to_le_bytes()
                        };
                        let end = (at + 8).min(b.len());
                        b[at..end].copy_from_slice(&bytes[..end - at]);
                    }
                    1 => b[at] = 0,
                    2 => b[at] = 0xff,
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

    // Hostile FDT shapes: deep nesting, a huge property length, garbage tokens.
    let mut b = sample.clone();
    b.truncate(fdt_end(sample));
    run(&b);
    for i in (56..fdt_end(sample)).step_by(4) {
        for token in [1u32, 2, 3, 4, 9, 0xffff_ffff] {
            let mut b = sample.clone();
            b[i..i + 4].copy_from_slice(&token.to_be_bytes());
            run(&b);
        }
    }

    println!("{inputs} inputs, {accepted} accepted");
    assert!(inputs > 20_000);
    assert!(accepted > 0 && accepted < inputs);
}
