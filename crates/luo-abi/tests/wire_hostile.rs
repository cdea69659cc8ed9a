//! The `wire` fuzz target's body, run on stable over truncated, bit-flipped and random
//! messages so CI exercises it: decoding never panics, and well-formed requests are accepted.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use luo_abi::uapi::{CreateSession, PreserveFd};
use luo_abi::wire::{self, MAX_MESSAGE, NATIVE_BASE, fuzz_one};
use zerocopy::IntoBytes;

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |op: u32, arg: &[u8]| {
        let mut m = Vec::new();
        wire::write_request(&mut m, op, 7, arg).unwrap();
        out.push(m);
    };
    push(0xBA00, CreateSession::new(b"vm-42").unwrap().as_bytes());
    push(0xBA01, CreateSession::new(b"x").unwrap().as_bytes());
    let p = PreserveFd {
        size: 16.into(),
        fd: 3.into(),
        token: 9.into(),
    };
    push(0xBA40, p.as_bytes());
    push(0xBA41, p.as_bytes());
    push(0xBA42, &[8, 0, 0, 0, 0, 0, 0, 0]);
    push(0xBA43, &[72; 72]);
    push(NATIVE_BASE + 3, &[0; 8]);
    push(NATIVE_BASE + 4, &[]);
    push(0xBA40, &[255, 255, 255, 255, 1, 2]);
    out
}

#[test]
fn well_formed_requests_are_accepted() {
    for s in seeds() {
        assert!(fuzz_one(&s));
    }
}

#[test]
fn truncated_flipped_and_random_messages_never_panic() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut inputs = 0;
    for seed in seeds() {
        for len in 0..=seed.len() {
            fuzz_one(&seed[..len]);
            inputs += 1;
        }
        for bit in 0..seed.len() * 8 {
            let mut m = seed.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            fuzz_one(&m);
            inputs += 1;
        }
    }
    for _ in 0..5000 {
        let len = (next() % (MAX_MESSAGE as u64 + 64)) as usize;
        let m: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        fuzz_one(&m);
        inputs += 1;
    }
    assert!(inputs > 8_000, "{inputs} inputs");
    // Framing rules hold on the mutations: a header whose len disagrees is refused.
    let mut m = seeds().remove(0);
    m[4] ^= 1;
    assert!(!fuzz_one(&m));
}
