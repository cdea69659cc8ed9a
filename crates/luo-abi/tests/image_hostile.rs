//! Hostile images: each damaged or forged image is refused with its own error, never a panic.
//!
//! Most cases tamper with the sample image (layout in `common::sample_model`) and then reseal
//! it (rewrite `image-length` and `checksum`), so that the check under test is the one that
//! fires rather than the checksum.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use luo_abi::image::{
    FILE_BLOCK_CAP, FileEntry, FileSpec, Image, ImageError, ImageWriter, MAX_CHAIN_BLOCKS, NO_FD,
    SESSION_FINISHED, SESSION_INCOMING, SessionSpec, property_offset, reseal,
};
use zerocopy::{FromBytes, IntoBytes};

// Offsets in the sample image, relative to `base` (see `common::sample_model`).
const ALPHA_FILES: usize = 0;
const ALPHA_FILE0: usize = ALPHA_FILES + 16;
const ALPHA_FILE1: usize = ALPHA_FILE0 + 88;
const BETA_FILES: usize = 200;
const BETA_FILE0: usize = BETA_FILES + 16;
const SESSION_BLOCK: usize = 312;
const SESSION0: usize = SESSION_BLOCK + 16;
const SESSION1: usize = SESSION0 + 96;
const FLB_BLOCK: usize = 520;
const FLB0: usize = FLB_BLOCK + 16;
const FD_TABLE: usize = 624;
// Field offsets within entries.
const S_FLAGS: usize = 68;
const S_FILES_HEAD: usize = 72;
const S_FILES_COUNT: usize = 80;
const F_TOKEN: usize = 48;
const F_RECORD_OFF: usize = 56;
const F_RECORD_LEN: usize = 64;
const F_FD_INDEX: usize = 72;
const F_STATUS: usize = 76;
const F_FLAGS: usize = 80;
const F_OPEN_FD_INDEX: usize = 84;
const FLB_DATA_OFF: usize = 56;
const FLB_DATA_LEN: usize = 64;
const FLB_FLAGS: usize = 72;
const FLB_RESERVED: usize = 76;

/// The sample, and its base offset.
fn sample_at() -> (Vec<u8>, usize) {
    let bytes = sample();
    let b = base(&bytes);
    (bytes, b)
}

/// Tampers with the sample (`f` gets the bytes and the base offset), reseals it, parses it.
fn tamper(f: impl FnOnce(&mut Vec<u8>, usize)) -> Result<(), ImageError> {
    let (bytes, b) = sample_at();
    tampered(&bytes, |v| f(v, b))
}

/// The absolute offset of `rel` in the sample.
fn at(rel: usize) -> u64 {
    (sample_at().1 + rel) as u64
}

#[test]
fn sample_is_valid_and_resealing_is_neutral() {
    let bytes = sample();
    Image::parse(&bytes).unwrap();
    let mut copy = bytes.clone();
    reseal(&mut copy).unwrap();
    assert_eq!(copy, bytes);
}

#[test]
fn every_truncation_is_refused() {
    let bytes = sample();
    for len in 0..bytes.len() {
        let err = Image::parse(&bytes[..len]).unwrap_err();
        if len < 40 {
            assert_eq!(err, ImageError::TooShort { len: len as u64 });
        } else if len >= fdt_end(&bytes) {
            assert_eq!(
                err,
                ImageError::ImageLength {
                    declared: bytes.len() as u64,
                    actual: len as u64
                }
            );
        }
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    let bytes = sample();
    let mut b = bytes.clone();
    for i in 0..bytes.len() * 8 {
        b[i / 8] ^= 1 << (i % 8);
        assert!(Image::parse(&b).is_err(), "bit {i} flipped was accepted");
        b[i / 8] ^= 1 << (i % 8);
    }
    // A flipped payload bit is caught by the checksum.
    b[base(&bytes) + 20] ^= 1;
    assert!(matches!(Image::parse(&b), Err(ImageError::Checksum { .. })));
}

#[test]
fn appended_bytes_are_refused() {
    let mut b = sample();
    b.extend_from_slice(&[0; 8]);
    assert!(matches!(
        Image::parse(&b),
        Err(ImageError::ImageLength { .. })
    ));
}

#[test]
fn chain_cycle_and_backward_link() {
    // A file block linking to itself.
    assert_eq!(
        tamper(|b, p| put_u64(b, p + ALPHA_FILES, (p + ALPHA_FILES) as u64)),
        Err(ImageError::ChainBackward {
            block: at(ALPHA_FILES),
            next: at(ALPHA_FILES)
        })
    );
    // The session block linking to itself, or back to a file block.
    assert_eq!(
        tamper(|b, p| put_u64(b, p + SESSION_BLOCK, (p + SESSION_BLOCK) as u64)),
        Err(ImageError::ChainBackward {
            block: at(SESSION_BLOCK),
            next: at(SESSION_BLOCK)
        })
    );
    assert_eq!(
        tamper(|b, p| put_u64(b, p + SESSION_BLOCK, p as u64)),
        Err(ImageError::ChainBackward {
            block: at(SESSION_BLOCK),
            next: at(0)
        })
    );

    // A two-block chain whose second block links back to the first.
    let mut m = Model::empty();
    m.sessions = vec![session(
        "s",
        0,
        (0..FILE_BLOCK_CAP as u64 + 1)
            .map(|t| file("c", t, None, b""))
            .collect(),
    )];
    let bytes = m.write().unwrap();
    let first = files_head(&bytes, 0) as u64;
    let second = get_u64(&bytes, first as usize);
    assert_eq!(second, first + 16 + FILE_BLOCK_CAP as u64 * 88);
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, second as usize, first)),
        Err(ImageError::ChainBackward {
            block: second,
            next: first
        })
    );
}

/// An image whose one session has `n` files, each in a block of its own.
fn one_file_per_block(n: u64) -> Vec<u8> {
    let mut w = ImageWriter::new(0, "t");
    let spec = SessionSpec {
        name: b"s",
        owner: 0,
        flags: 0,
        seq: 0,
    };
    let files = (0..n).map(|token| FileSpec {
        compatible: "c",
        token,
        fd_index: NO_FD,
        open_fd_index: NO_FD,
        status: 0,
        flags: 0,
        record: b"",
    });
    w.add_session(&spec, files).unwrap();
    let bytes = w.finish().unwrap();
    let head = files_head(&bytes, 0);
    let sessions = prop(&bytes, &["sessions"], "head") as usize;
    // The writer packed the files 744 to a block, then wrote the session block; rebuild the
    // chain one file per block, followed by the same session block.
    let entry = |token: u64| {
        let mut e = FileEntry::read_from_bytes(&bytes[head + 16..head + 16 + 88]).unwrap();
        e.token.set(token);
        e
    };
    let mut out = bytes[..head].to_vec();
    for token in 0..n {
        let next = if token + 1 == n {
            0
        } else {
            (head + (token as usize + 1) * (16 + 88)) as u64
        };
        out.extend_from_slice(&next.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(entry(token).as_bytes());
    }
    let new_sessions = out.len() as u64;
    out.extend_from_slice(&bytes[sessions..sessions + 16 + 96]);
    let slot = property_offset(&bytes, &["sessions"], "head").unwrap();
    put_be64(&mut out, slot, new_sessions);
    reseal(&mut out).unwrap();
    out
}

#[test]
fn chain_of_10000_blocks_is_accepted_and_10001_refused() {
    let ok = one_file_per_block(MAX_CHAIN_BLOCKS);
    let image = Image::parse(&ok).unwrap();
    let tokens: Vec<u64> = image
        .sessions()
        .flat_map(|s| s.files().map(|f| f.token).collect::<Vec<_>>())
        .collect();
    assert_eq!(tokens, (0..MAX_CHAIN_BLOCKS).collect::<Vec<_>>());

    let bad = one_file_per_block(MAX_CHAIN_BLOCKS + 1);
    let head = files_head(&bad, 0) as u64;
    assert_eq!(
        Image::parse(&bad).unwrap_err(),
        ImageError::ChainTooLong { head }
    );
}

#[test]
fn block_count_zero_and_over_capacity() {
    for count in [0, FILE_BLOCK_CAP as u64 + 1, u64::MAX] {
        assert_eq!(
            tamper(|b, p| put_u64(b, p + ALPHA_FILES + 8, count)),
            Err(ImageError::BlockCount {
                block: at(ALPHA_FILES),
                count
            })
        );
    }
    assert_eq!(
        tamper(|b, p| put_u64(b, p + SESSION_BLOCK + 8, 0)),
        Err(ImageError::BlockCount {
            block: at(SESSION_BLOCK),
            count: 0
        })
    );
    assert_eq!(
        tamper(|b, p| put_u64(b, p + FLB_BLOCK + 8, 820)),
        Err(ImageError::BlockCount {
            block: at(FLB_BLOCK),
            count: 820
        })
    );
    // One more entry than the session declares: the block now covers alpha's record.
    assert_eq!(
        tamper(|b, p| put_u64(b, p + ALPHA_FILES + 8, 3)),
        Err(ImageError::CountMismatch {
            head: at(ALPHA_FILES),
            declared: 2,
            found: 3
        })
    );
}

#[test]
fn offsets_past_the_end() {
    let (bytes, p) = sample_at();
    let len = bytes.len() as u64;
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, p + SESSION0 + S_FILES_HEAD, len)),
        Err(ImageError::OutOfBounds {
            offset: len,
            len: 16
        })
    );
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + SESSION0 + S_FILES_HEAD,
            u64::MAX - 7
        )),
        Err(ImageError::OutOfBounds {
            offset: u64::MAX - 7,
            len: 16
        })
    );
    // A block whose header fits but whose entries do not.
    assert_eq!(
        tampered(&bytes, |b| {
            put_u64(b, p + SESSION0 + S_FILES_HEAD, len - 16);
            put_u64(b, len as usize - 16, 0);
            put_u64(b, len as usize - 8, 2);
        }),
        Err(ImageError::OutOfBounds {
            offset: len - 16,
            len: 16 + 2 * 88
        })
    );
    let record_off = get_u64(&bytes, p + ALPHA_FILE0 + F_RECORD_OFF);
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, p + ALPHA_FILE0 + F_RECORD_OFF, len)),
        Err(ImageError::OutOfBounds {
            offset: len,
            len: 8
        })
    );
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, p + ALPHA_FILE0 + F_RECORD_LEN, len)),
        Err(ImageError::OutOfBounds {
            offset: record_off,
            len
        })
    );
    let head = property_offset(&bytes, &["sessions"], "head").unwrap();
    assert_eq!(
        tampered(&bytes, |b| put_be64(b, head, len)),
        Err(ImageError::OutOfBounds {
            offset: len,
            len: 16
        })
    );
}

#[test]
fn huge_lengths() {
    let (bytes, p) = sample_at();
    let record_off = get_u64(&bytes, p + ALPHA_FILE0 + F_RECORD_OFF);
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + ALPHA_FILE0 + F_RECORD_LEN,
            u64::MAX
        )),
        Err(ImageError::OutOfBounds {
            offset: record_off,
            len: u64::MAX
        })
    );
    let flb_data = get_u64(&bytes, p + FLB0 + FLB_DATA_OFF);
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, p + FLB0 + FLB_DATA_LEN, u64::MAX)),
        Err(ImageError::OutOfBounds {
            offset: flb_data,
            len: u64::MAX
        })
    );
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + SESSION0 + S_FILES_COUNT,
            u64::MAX
        )),
        Err(ImageError::CountMismatch {
            head: at(ALPHA_FILES),
            declared: u64::MAX,
            found: 2
        })
    );
    // FDT properties.
    let count = property_offset(&bytes, &["sessions"], "count").unwrap();
    assert_eq!(
        tampered(&bytes, |b| put_be64(b, count, u64::MAX)),
        Err(ImageError::CountMismatch {
            head: at(SESSION_BLOCK),
            declared: u64::MAX,
            found: 2
        })
    );
    let count = property_offset(&bytes, &["fds"], "count").unwrap();
    assert_eq!(
        tampered(&bytes, |b| put_be64(b, count, u64::MAX)),
        Err(ImageError::OutOfBounds {
            offset: at(FD_TABLE),
            len: u64::MAX
        })
    );
    assert_eq!(
        tampered(&bytes, |b| put_be64(b, count, u64::MAX / 8)),
        Err(ImageError::OutOfBounds {
            offset: at(FD_TABLE),
            len: u64::MAX / 8 * 8
        })
    );
    let luod = &["parts", "luod"][..];
    let length = property_offset(&bytes, luod, "data-length").unwrap();
    let data = prop(&bytes, luod, "data-offset");
    assert_eq!(
        tampered(&bytes, |b| put_be64(b, length, u64::MAX)),
        Err(ImageError::OutOfBounds {
            offset: data,
            len: u64::MAX
        })
    );
    let head = property_offset(&bytes, &["sessions"], "head").unwrap();
    assert_eq!(
        tampered(&bytes, |b| put_be64(b, head, !7u64)),
        Err(ImageError::OutOfBounds {
            offset: !7u64,
            len: 16
        })
    );
}

#[test]
fn session_name_without_nul() {
    assert_eq!(
        tamper(|b, p| b[p + SESSION0..p + SESSION0 + 64].fill(b'a')),
        Err(ImageError::SessionName { session: 0 })
    );
    assert_eq!(
        tamper(|b, p| b[p + SESSION1..p + SESSION1 + 64].fill(0)),
        Err(ImageError::SessionName { session: 1 })
    );
    // Garbage after the NUL.
    assert_eq!(
        tamper(|b, p| b[p + SESSION1 + 63] = b'x'),
        Err(ImageError::SessionName { session: 1 })
    );
}

#[test]
fn fd_index_out_of_range_and_reused() {
    assert_eq!(
        tamper(|b, p| put_u32(b, p + ALPHA_FILE0 + F_FD_INDEX, 3)),
        Err(ImageError::FdIndex {
            session: 0,
            file: 0,
            fd_index: 3,
        })
    );
    assert_eq!(
        tamper(|b, p| put_u32(b, p + ALPHA_FILE1 + F_FD_INDEX, NO_FD - 1)),
        Err(ImageError::FdIndex {
            session: 0,
            file: 1,
            fd_index: NO_FD - 1,
        })
    );
    assert_eq!(
        tamper(|b, p| put_u32(b, p + BETA_FILE0 + F_FD_INDEX, 0)),
        Err(ImageError::FdReused {
            session: 1,
            file: 0,
            fd_index: 0,
        })
    );
    assert_eq!(
        tamper(|b, p| put_u32(b, p + ALPHA_FILE1 + F_FD_INDEX, 0)),
        Err(ImageError::FdReused {
            session: 0,
            file: 1,
            fd_index: 0,
        })
    );
}

#[test]
fn entry_contents() {
    type Tamper = Box<dyn FnOnce(&mut Vec<u8>, usize)>;
    let cases: Vec<(ImageError, Tamper)> = vec![
        (
            ImageError::SessionFlags {
                session: 0,
                flags: 8,
            },
            Box::new(|b, p| put_u32(b, p + SESSION0 + S_FLAGS, 8)),
        ),
        (
            ImageError::SessionFlags {
                session: 0,
                flags: 2,
            },
            Box::new(|b, p| put_u32(b, p + SESSION0 + S_FLAGS, 2)),
        ),
        (
            ImageError::FinishedWithFiles { session: 1 },
            Box::new(|b, p| {
                put_u32(
                    b,
                    p + SESSION1 + S_FLAGS,
                    SESSION_INCOMING | SESSION_FINISHED,
                )
            }),
        ),
        (
            ImageError::FileCompatible {
                session: 0,
                file: 1,
            },
            Box::new(|b, p| b[p + ALPHA_FILE1..p + ALPHA_FILE1 + 48].fill(b'c')),
        ),
        (
            ImageError::FileCompatible {
                session: 0,
                file: 1,
            },
            Box::new(|b, p| b[p + ALPHA_FILE1..p + ALPHA_FILE1 + 48].fill(0)),
        ),
        (
            ImageError::FileCompatible {
                session: 0,
                file: 1,
            },
            Box::new(|b, p| b[p + ALPHA_FILE1] = 0xff),
        ),
        (
            ImageError::FileCompatible {
                session: 0,
                file: 1,
            },
            Box::new(|b, p| b[p + ALPHA_FILE1 + 47] = b'x'),
        ),
        (
            ImageError::FileFlags {
                session: 0,
                file: 0,
                flags: 4,
            },
            Box::new(|b, p| put_u32(b, p + ALPHA_FILE0 + F_FLAGS, 4)),
        ),
        (
            ImageError::OpenFd {
                session: 0,
                file: 0,
            },
            Box::new(|b, p| put_u32(b, p + ALPHA_FILE0 + F_OPEN_FD_INDEX, 1)),
        ),
        (
            ImageError::FdIndex {
                session: 1,
                file: 0,
                fd_index: 3,
            },
            Box::new(|b, p| put_u32(b, p + BETA_FILE0 + F_OPEN_FD_INDEX, 3)),
        ),
        (
            ImageError::FdReused {
                session: 1,
                file: 0,
                fd_index: 1,
            },
            Box::new(|b, p| put_u32(b, p + BETA_FILE0 + F_OPEN_FD_INDEX, 1)),
        ),
        (
            ImageError::FdReused {
                session: 1,
                file: 0,
                fd_index: 0,
            },
            Box::new(|b, p| put_u32(b, p + BETA_FILE0 + F_OPEN_FD_INDEX, 0)),
        ),
        (
            ImageError::DuplicateToken {
                session: 0,
                token: 1,
            },
            Box::new(|b, p| put_u64(b, p + ALPHA_FILE1 + F_TOKEN, 1)),
        ),
        (
            ImageError::EmptyBlobOffset { offset: 8 },
            Box::new(|b, p| put_u64(b, p + ALPHA_FILE1 + F_RECORD_OFF, 8)),
        ),
        (
            ImageError::FlbFlags { flb: 0, flags: 2 },
            Box::new(|b, p| put_u32(b, p + FLB0 + FLB_FLAGS, 2)),
        ),
        (
            ImageError::FlbReserved { flb: 0 },
            Box::new(|b, p| put_u32(b, p + FLB0 + FLB_RESERVED, 1)),
        ),
        (
            ImageError::FlbCompatible { flb: 0 },
            Box::new(|b, p| b[p + FLB0..p + FLB0 + 48].fill(b'f')),
        ),
    ];
    for (err, f) in cases {
        assert_eq!(tamper(f), Err(err.clone()), "{err}");
    }
    for status in [1, 2, -4096, i32::MIN] {
        assert_eq!(
            tamper(|b, p| put_u32(b, p + ALPHA_FILE1 + F_STATUS, status as u32)),
            Err(ImageError::FileStatus {
                session: 0,
                file: 1,
                status,
            })
        );
    }
}

#[test]
fn duplicate_sessions() {
    // beta becomes an outgoing "alpha": same owner, direction and name as session 0.
    assert_eq!(
        tamper(|b, p| {
            b.copy_within(p + SESSION0..p + SESSION0 + 64, p + SESSION1);
            put_u32(b, p + SESSION1 + S_FLAGS, 0);
        }),
        Err(ImageError::DuplicateSession { session: 1 })
    );
    // The same name in the other direction is no duplicate.
    tamper(|b, p| b.copy_within(p + SESSION0..p + SESSION0 + 64, p + SESSION1)).unwrap();
}

#[test]
fn fd_table_entries() {
    assert_eq!(
        tamper(|b, p| put_u32(b, p + FD_TABLE + 8, -3i32 as u32)),
        Err(ImageError::FdNumber { index: 1, fd: -3 })
    );
    assert_eq!(
        tamper(|b, p| put_u32(b, p + FD_TABLE + 4, 0o100644)),
        Err(ImageError::FdType {
            index: 0,
            mode_type: 0o100644,
        })
    );
    assert_eq!(
        tamper(|b, p| put_u32(b, p + FD_TABLE + 8, 10)),
        Err(ImageError::DuplicateFd { index: 1, fd: 10 })
    );
}

#[test]
fn overlapping_and_misplaced_regions() {
    let (bytes, p) = sample_at();
    // Both sessions pointing at alpha's file block (beta's declared count adjusted).
    assert_eq!(
        tampered(&bytes, |b| {
            put_u64(b, p + SESSION1 + S_FILES_HEAD, (p + ALPHA_FILES) as u64);
            put_u64(b, p + SESSION1 + S_FILES_COUNT, 2);
        }),
        Err(ImageError::Overlap {
            offset: at(ALPHA_FILES)
        })
    );
    // A file chain inside the session block.
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + SESSION1 + S_FILES_HEAD,
            (p + SESSION_BLOCK) as u64
        )),
        Err(ImageError::CountMismatch {
            head: at(SESSION_BLOCK),
            declared: 1,
            found: 2
        })
    );
    // A record pointing into the FDT.
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, p + ALPHA_FILE0 + F_RECORD_OFF, 8)),
        Err(ImageError::Overlap { offset: 8 })
    );
    // A record sharing bytes with the one before it.
    let r0 = get_u64(&bytes, p + ALPHA_FILE0 + F_RECORD_OFF);
    assert_eq!(
        tampered(&bytes, |b| put_u64(b, p + BETA_FILE0 + F_RECORD_OFF, r0)),
        Err(ImageError::Overlap { offset: r0 })
    );
    // A record inside its own file block.
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + ALPHA_FILE0 + F_RECORD_OFF,
            (p + 16) as u64
        )),
        Err(ImageError::Overlap { offset: at(16) })
    );
    // The session block moved in front of the files of its sessions, every offset adjusted:
    // well-formed, but out of payload order.
    let head = property_offset(&bytes, &["sessions"], "head").unwrap();
    assert_eq!(
        tampered(&bytes, |b| {
            b[p..p + 208].copy_from_slice(&bytes[p + SESSION_BLOCK..p + SESSION_BLOCK + 208]);
            b[p + 208..p + 520].copy_from_slice(&bytes[p..p + SESSION_BLOCK]);
            for entry in [p + 16, p + 16 + 96] {
                let files = get_u64(b, entry + S_FILES_HEAD);
                put_u64(b, entry + S_FILES_HEAD, files + 208);
            }
            for file in [p + 208 + ALPHA_FILE0, p + 208 + BETA_FILE0] {
                let record = get_u64(b, file + F_RECORD_OFF);
                put_u64(b, file + F_RECORD_OFF, record + 208);
            }
            put_be64(b, head, p as u64);
        }),
        Err(ImageError::Overlap { offset: at(0) })
    );
    // Misaligned block and record.
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + SESSION0 + S_FILES_HEAD,
            (p + ALPHA_FILES + 4) as u64
        )),
        Err(ImageError::Misaligned {
            offset: at(ALPHA_FILES + 4)
        })
    );
    assert_eq!(
        tampered(&bytes, |b| put_u64(
            b,
            p + ALPHA_FILE0 + F_RECORD_OFF,
            r0 + 1
        )),
        Err(ImageError::Misaligned { offset: r0 + 1 })
    );
}

#[test]
fn fdt_tampering() {
    let (bytes, _) = sample_at();
    let replace = |from: &str, to: &str| {
        tampered(&bytes, |b| {
            let i = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[i..i + to.len()].copy_from_slice(to.as_bytes());
        })
    };
    assert_eq!(
        replace("luod-image-v1", "luod-image-v2"),
        Err(ImageError::RootCompatible)
    );
    let offset = property_offset(&bytes, &["sessions"], "compatible").unwrap() as u64;
    assert_eq!(
        replace("luod-sessions-v1", "luod-sessions-v2"),
        Err(ImageError::NodeCompatible { offset })
    );
    // Renaming a node makes it unknown (and the real one missing).
    assert!(matches!(
        replace("flbs\0", "flbz\0"),
        Err(ImageError::UnknownNode { .. })
    ));
    // Renaming a property name in the strings block: "head" is shared by two nodes.
    assert!(matches!(
        replace("head\0", "hEad\0"),
        Err(ImageError::UnknownProperty { .. })
    ));
    let mut b = bytes.clone();
    b[0] = 0;
    assert_eq!(
        Image::parse(&b).unwrap_err(),
        ImageError::FdtMagic { found: 0x000d_feed }
    );
    let block_size = property_offset(&bytes, &[], "block-size").unwrap();
    assert_eq!(
        tampered(&bytes, |b| b[block_size..block_size + 4]
            .copy_from_slice(&4096u32.to_be_bytes())),
        Err(ImageError::BlockSize { found: 4096 })
    );
}
