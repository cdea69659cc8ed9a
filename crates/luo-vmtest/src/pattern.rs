//! Memory contents that show where they were read back wrong: every 8-byte word holds a mix of
//! its index and a seed, so a page restored at the wrong offset, a shifted copy, a page from
//! another file (another seed) or a zeroed page all differ from what was written.

/// The 8 bytes at offset `8 * index` of a file filled with `seed`.
pub fn word(seed: u64, index: u64) -> u64 {
    // splitmix64's finalizer over the index and the seed.
    let mut x = index
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(seed.rotate_left(29));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The byte at `offset` of a file filled with `seed`.
#[cfg(test)]
pub fn byte(seed: u64, offset: u64) -> u8 {
    word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf`, which sits at file offset `start` (a multiple of 8), with the pattern of `seed`.
pub fn fill(seed: u64, start: u64, buf: &mut [u8]) {
    debug_assert_eq!(start % 8, 0);
    let first = start / 8;
    for (index, chunk) in (first..).zip(buf.chunks_mut(8)) {
        let w = word(seed, index).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// A difference between a buffer and the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The first offset that differs.
    pub offset: u64,
    /// The byte found there.
    pub found: u8,
    /// The byte the pattern has there.
    pub expected: u8,
    /// How many bytes differ in all.
    pub count: u64,
}

/// Compares `buf`, at file offset `start` (a multiple of 8), with the pattern of `seed`: every
/// byte. `None` when they are the same.
pub fn verify(seed: u64, start: u64, buf: &[u8]) -> Option<Mismatch> {
    debug_assert_eq!(start % 8, 0);
    let mut mismatch: Option<Mismatch> = None;
    for (index, chunk) in (start / 8..).zip(buf.chunks(8)) {
        let want = word(seed, index).to_le_bytes();
        if chunk == &want[..chunk.len()] {
            continue;
        }
        for (i, (&found, &expected)) in (0u64..).zip(chunk.iter().zip(want.iter())) {
            if found != expected {
                let m = mismatch.get_or_insert(Mismatch {
                    offset: index * 8 + i,
                    found,
                    expected,
                    count: 0,
                });
                m.count += 1;
            }
        }
    }
    mismatch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_differs_from_its_neighbours_and_other_seeds() {
        let words: Vec<u64> = (0..100_000).map(|i| word(7, i)).collect();
        let mut sorted = words.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), words.len());
        assert!((0..1000).all(|i| word(7, i) != word(8, i)));
        assert!(words.iter().all(|&w| w != 0));
    }

    #[test]
    fn fill_and_verify_agree_and_find_the_first_difference() {
        let mut buf = vec![0u8; 3 * 4096 + 5];
        fill(3, 4096, &mut buf);
        assert_eq!(verify(3, 4096, &buf), None);
        assert!((4096u64..).zip(&buf).all(|(o, &b)| b == byte(3, o)));
        assert!(verify(4, 4096, &buf).is_some());
        assert!(verify(3, 0, &buf).is_some());
        buf[4096 + 9] ^= 1;
        buf[8000] ^= 0xff;
        let m = verify(3, 4096, &buf).expect("a difference");
        assert_eq!((m.offset, m.count), (4096 + 4096 + 9, 2));
        assert_eq!(m.found, byte(3, m.offset) ^ 1);
        assert_eq!(m.expected, byte(3, m.offset));
    }
}
