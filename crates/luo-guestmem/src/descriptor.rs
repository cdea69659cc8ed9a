//! The guest memory descriptor: a guest memory object's geometry and attributes, in a small
//! memfd next to its RAM.
//!
//! **The layout is a contract**: the `guestmem-v1` handler of luod copies these bytes into the
//! handover image, validates them, and hands them to a successor VMM, perhaps a newer binary.
//! `docs/format.md` ("`guestmem-v1`") documents it as well. Changing it bumps [`VERSION`] and
//! the handler's compatible string.
//!
//! ```text
//!  offset 0          8        12       16      24      32          40          48       52
//!         +----------+--------+--------+-------+-------+-----------+-----------+--------+-------+
//!         | magic    |version |hdr_len | seq   | size  | page_size | ram_token |backing | flags |
//!         +----------+--------+--------+-------+-------+-----------+-----------+--------+-------+
//!         56             60             64     68       72
//!         | range_count  | split_count  | crc  | rsvd  |  ranges: range_count x {start, end}
//!         +--------------+--------------+------+-------+  splits: split_count x page index
//! ```
//!
//! The file is rewritten by the object on every change, inside a *sequence lock*: `seq` is odd
//! while a rewrite is under way and even when the bytes are consistent. A reader (the handler)
//! reads the whole file, checks `seq` is even and unchanged after the read, and retries a few
//! times otherwise.

use std::ops::Range;
use std::os::fd::BorrowedFd;

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::attrs::AttrMap;
use crate::error::Error;
use crate::geometry::derived_splits;
use crate::page::{Backing, PageSize, UNIT};

/// `magic`: the bytes `LUOGMEM` and a NUL.
pub const MAGIC: [u8; 8] = *b"LUOGMEM\0";
/// `version` of this layout.
pub const VERSION: u32 = 1;
/// The memfd name a descriptor has (`/proc/self/fd/N` reads `/memfd:luo-guestmem (deleted)`).
pub const MEMFD_NAME: &str = "luo-guestmem";
/// The most private ranges a descriptor may carry (16 MiB of ranges).
pub const MAX_RANGES: usize = 1 << 20;
/// The largest object a descriptor may describe: 64 TiB.
pub const MAX_SIZE: u64 = 1 << 46;
/// The longest descriptor: the header, [`MAX_RANGES`] ranges and as many split pages.
pub const MAX_LEN: usize = HEADER_LEN + MAX_RANGES * (16 + 2 * 8);
/// Bytes in the header.
pub const HEADER_LEN: usize = size_of::<Header>();
/// `flags` bit 0: `ram_token` holds the token the RAM file is preserved under.
pub const FLAG_RAM_TOKEN: u32 = 1 << 0;
/// Offset of `seq` in the file.
pub(crate) const SEQ_OFFSET: u64 = 16;

/// The descriptor header.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `magic` | 0 | 8 | [`MAGIC`] |
/// | `version` | 8 | 4 | [`VERSION`] (1) |
/// | `header_len` | 12 | 4 | 72 |
/// | `seq` | 16 | 8 | sequence lock: even when consistent; not covered by `crc` |
/// | `size` | 24 | 8 | bytes of guest memory: a positive multiple of `page_size`, at most [`MAX_SIZE`] |
/// | `page_size` | 32 | 8 | 4096, 2 MiB or 1 GiB |
/// | `ram_token` | 40 | 8 | the luod token the RAM file is preserved under (with [`FLAG_RAM_TOKEN`]; zero without) |
/// | `backing` | 48 | 4 | 0 shmem memfd, 1 hugetlb memfd, 2 KVM guest_memfd |
/// | `flags` | 52 | 4 | bit 0 [`FLAG_RAM_TOKEN`]; other bits zero |
/// | `range_count` | 56 | 4 | private ranges that follow, at most [`MAX_RANGES`] |
/// | `split_count` | 60 | 4 | split page indexes that follow the ranges |
/// | `crc` | 64 | 4 | CRC-32 (IEEE) of the whole file with `seq` and `crc` read as zero |
/// | `reserved` | 68 | 4 | zero |
///
/// Then `range_count` [`RangeEntry`]s, then `split_count` little-endian `u64` page indexes.
/// Changing this bumps [`VERSION`] and `guestmem-v1`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// [`HEADER_LEN`].
    pub header_len: U32,
    /// Sequence lock.
    pub seq: U64,
    /// Bytes of guest memory.
    pub size: U64,
    /// Backing page size.
    pub page_size: U64,
    /// Token of the RAM file.
    pub ram_token: U64,
    /// [`Backing`] encoding.
    pub backing: U32,
    /// Flags.
    pub flags: U32,
    /// Private ranges.
    pub range_count: U32,
    /// Split pages.
    pub split_count: U32,
    /// CRC-32.
    pub crc: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = assert!(size_of::<Header>() == 72);

/// One private range: bytes `start..end` of guest memory.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `start` | 0 | 8 | first byte, 4 KiB-aligned |
/// | `end` | 8 | 8 | one past the last byte, 4 KiB-aligned, `start < end <= size` |
///
/// Ranges are sorted and maximal: each starts strictly after the previous one ends.
/// Changing this bumps [`VERSION`] and `guestmem-v1`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RangeEntry {
    /// First byte.
    pub start: U64,
    /// One past the last byte.
    pub end: U64,
}

const _: () = assert!(size_of::<RangeEntry>() == 16);

/// A parsed, validated descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Bytes of guest memory.
    pub size: u64,
    /// Backing page size.
    pub page_size: PageSize,
    /// What backs the RAM.
    pub backing: Backing,
    /// Token the RAM file is preserved under, if set.
    pub ram_token: Option<u64>,
    /// The private ranges.
    pub attrs: AttrMap,
    /// The split huge pages, ascending.
    pub split: Vec<u64>,
}

impl Descriptor {
    /// Serializes the descriptor with sequence number `seq`.
    pub fn encode(&self, seq: u64) -> Vec<u8> {
        encode(
            self.size,
            self.page_size,
            self.backing,
            self.ram_token,
            self.attrs.private_ranges(),
            self.split.iter().copied(),
            seq,
        )
    }

    /// Parses and validates `bytes`, treating them as hostile: exact length, magic, version,
    /// checksum, sizes, ranges sorted, aligned, in bounds and maximal, and the split pages
    /// exactly those the ranges imply. Returns the descriptor and its `seq`.
    pub fn parse(bytes: &[u8]) -> Result<(Descriptor, u64), Error> {
        let bad = Error::Descriptor;
        if bytes.len() > MAX_LEN {
            return Err(bad("length"));
        }
        let (h, rest) = Header::read_from_prefix(bytes).map_err(|_| bad("length"))?;
        if h.magic != MAGIC {
            return Err(bad("magic"));
        }
        if h.version.get() != VERSION {
            return Err(bad("version"));
        }
        if h.header_len.get() as usize != HEADER_LEN {
            return Err(bad("header_len"));
        }
        if h.reserved.get() != 0 {
            return Err(bad("reserved"));
        }
        if h.flags.get() & !FLAG_RAM_TOKEN != 0 {
            return Err(bad("flags"));
        }
        if h.flags.get() & FLAG_RAM_TOKEN == 0 && h.ram_token.get() != 0 {
            return Err(bad("ram_token"));
        }
        let page_size = PageSize::from_bytes(h.page_size.get()).ok_or(bad("page_size"))?;
        let backing = Backing::from_raw(h.backing.get()).ok_or(bad("backing"))?;
        if !backing.allows(page_size) {
            return Err(bad("backing"));
        }
        let size = h.size.get();
        if size == 0 || size % page_size.bytes() != 0 || size > MAX_SIZE {
            return Err(bad("size"));
        }
        let ranges = h.range_count.get() as usize;
        let splits = h.split_count.get() as usize;
        if ranges > MAX_RANGES || splits > 2 * MAX_RANGES {
            return Err(bad("range_count"));
        }
        if rest.len() != ranges * 16 + splits * 8 {
            return Err(bad("length"));
        }
        if crc(bytes) != h.crc.get() {
            return Err(bad("crc"));
        }
        let (range_bytes, split_bytes) = rest.split_at(ranges * 16);
        let entries = <[RangeEntry]>::ref_from_bytes(range_bytes).map_err(|_| bad("ranges"))?;
        let mut prev_end: Option<u64> = None;
        for e in entries {
            let (s, end) = (e.start.get(), e.end.get());
            if s >= end || s % UNIT != 0 || end % UNIT != 0 || end > size {
                return Err(bad("range"));
            }
            if prev_end.is_some_and(|p| s <= p) {
                return Err(bad("range order"));
            }
            prev_end = Some(end);
        }
        let split_list = <[U64]>::ref_from_bytes(split_bytes).map_err(|_| bad("splits"))?;
        let split: Vec<u64> = split_list.iter().map(|v| v.get()).collect();
        let derived = derived_splits(
            page_size,
            entries.iter().map(|e| e.start.get()..e.end.get()),
        );
        if split != derived {
            return Err(bad("split pages"));
        }
        let attrs = AttrMap::from_sorted(entries.iter().map(|e| e.start.get()..e.end.get()));
        let ram_token = (h.flags.get() & FLAG_RAM_TOKEN != 0).then(|| h.ram_token.get());
        Ok((
            Descriptor {
                size,
                page_size,
                backing,
                ram_token,
                attrs,
                split,
            },
            h.seq.get(),
        ))
    }

    /// Reads a descriptor file consistently (see the sequence lock in the [module](self) doc),
    /// at most [`MAX_LEN`] bytes, and validates it. Retries a few times while a rewrite is under
    /// way, then answers [`Error::DescriptorBusy`].
    pub fn read(fd: BorrowedFd<'_>) -> Result<Descriptor, Error> {
        Ok(read_bytes(fd)?.0)
    }
}

/// Reads and validates a descriptor file; returns it with its exact bytes.
pub fn read_bytes(fd: BorrowedFd<'_>) -> Result<(Descriptor, Vec<u8>), Error> {
    for _ in 0..64 {
        let st = rustix::fs::fstat(fd).map_err(Error::sys("fstat"))?;
        let len = usize::try_from(st.st_size).map_err(|_| Error::Descriptor("length"))?;
        if len > MAX_LEN {
            return Err(Error::Descriptor("length"));
        }
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = rustix::io::pread(fd, &mut buf[done..], done as u64)
                .map_err(Error::sys("pread"))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        let seq_in = buf
            .get(SEQ_OFFSET as usize..SEQ_OFFSET as usize + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        let mut after = [0u8; 8];
        let n = rustix::io::pread(fd, &mut after, SEQ_OFFSET).map_err(Error::sys("pread"))?;
        let stable = seq_in.is_some_and(|s| s % 2 == 0 && n == 8 && u64::from_le_bytes(after) == s);
        if !stable {
            std::thread::yield_now();
            continue;
        }
        let (d, _) = Descriptor::parse(&buf)?;
        return Ok((d, buf));
    }
    Err(Error::DescriptorBusy)
}

/// The body of a fuzz target for [`Descriptor::parse`]: never panics on any input; parses
/// `data` as given and again with its CRC repaired (so mutations reach the field checks), and
/// checks that whatever is accepted re-encodes to exactly the same bytes. Returns whether the
/// repaired copy was accepted.
pub fn fuzz_one(data: &[u8]) -> bool {
    let _ = Descriptor::parse(data);
    let mut fixed = data.to_vec();
    if fixed.len() >= HEADER_LEN {
        let c = crc(&fixed);
        fixed[64..68].copy_from_slice(&c.to_le_bytes());
    }
    match Descriptor::parse(&fixed) {
        Ok((d, seq)) => {
            assert_eq!(d.encode(seq), fixed, "an accepted descriptor is canonical");
            true
        }
        Err(_) => false,
    }
}

/// Serializes a descriptor.
pub(crate) fn encode(
    size: u64,
    page_size: PageSize,
    backing: Backing,
    ram_token: Option<u64>,
    ranges: impl Iterator<Item = Range<u64>>,
    splits: impl Iterator<Item = u64>,
    seq: u64,
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut range_count = 0u32;
    for r in ranges {
        out.extend_from_slice(
            RangeEntry {
                start: U64::new(r.start),
                end: U64::new(r.end),
            }
            .as_bytes(),
        );
        range_count += 1;
    }
    let mut split_count = 0u32;
    for s in splits {
        out.extend_from_slice(&s.to_le_bytes());
        split_count += 1;
    }
    let mut h = Header {
        magic: MAGIC,
        version: U32::new(VERSION),
        header_len: U32::new(HEADER_LEN as u32),
        seq: U64::new(0),
        size: U64::new(size),
        page_size: U64::new(page_size.bytes()),
        ram_token: U64::new(ram_token.unwrap_or(0)),
        backing: U32::new(backing.to_raw()),
        flags: U32::new(if ram_token.is_some() {
            FLAG_RAM_TOKEN
        } else {
            0
        }),
        range_count: U32::new(range_count),
        split_count: U32::new(split_count),
        crc: U32::new(0),
        reserved: U32::new(0),
    };
    out[..HEADER_LEN].copy_from_slice(h.as_bytes());
    h.crc = U32::new(crc(&out));
    h.seq = U64::new(seq);
    out[..HEADER_LEN].copy_from_slice(h.as_bytes());
    out
}

/// CRC-32 of a descriptor with `seq` and `crc` read as zero.
fn crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let seq = SEQ_OFFSET as usize;
    hasher.update(&bytes[..seq.min(bytes.len())]);
    if bytes.len() >= HEADER_LEN {
        hasher.update(&[0u8; 8]);
        hasher.update(&bytes[seq + 8..64]);
        hasher.update(&[0u8; 4]);
        hasher.update(&bytes[68..]);
    }
    hasher.finalize()
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn sample() -> Descriptor {
        let mut attrs = AttrMap::new();
        attrs.set(0x1000..0x3000, crate::Attr::Private);
        attrs.set((2 << 20)..(4 << 20), crate::Attr::Private);
        Descriptor {
            size: 8 << 20,
            page_size: PageSize::Huge2M,
            backing: Backing::Hugetlb,
            ram_token: Some(7),
            split: derived_splits(PageSize::Huge2M, attrs.private_ranges()),
            attrs,
        }
    }

    #[test]
    fn round_trips() {
        let d = sample();
        assert_eq!(d.split, [0]);
        let bytes = d.encode(4);
        assert_eq!(Descriptor::parse(&bytes).expect("valid"), (d, 4));
    }

    #[test]
    fn refuses_every_corruption() {
        let bytes = sample().encode(2);
        // Any single flipped bit outside `seq` is caught (by a field check or the CRC).
        for i in 0..bytes.len() {
            if (16..24).contains(&i) {
                continue;
            }
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(Descriptor::parse(&b).is_err(), "byte {i} bit {bit}");
            }
        }
        for len in [0, 71, 72, bytes.len() - 1, bytes.len() + 1] {
            let mut b = bytes.clone();
            b.resize(len, 0);
            assert!(Descriptor::parse(&b).is_err(), "length {len}");
        }
    }

    #[test]
    fn refuses_wrong_geometry_even_with_a_good_crc() {
        let mut d = sample();
        d.split = vec![];
        assert!(
            Descriptor::parse(&d.encode(0)).is_err(),
            "missing split page"
        );
        let mut d = sample();
        d.split = vec![0, 1];
        assert!(Descriptor::parse(&d.encode(0)).is_err(), "extra split page");
        let mut d = sample();
        d.attrs = AttrMap::from_sorted([0x1000..0x2000, 0x2000..0x3000]);
        d.split = vec![0];
        assert!(Descriptor::parse(&d.encode(0)).is_err(), "adjacent ranges");
        let mut d = sample();
        d.attrs = AttrMap::from_sorted([0x1000..0x1800]);
        assert!(Descriptor::parse(&d.encode(0)).is_err(), "unaligned");
        let mut d = sample();
        d.attrs = AttrMap::from_sorted([0x1000..(9 << 20)]);
        assert!(Descriptor::parse(&d.encode(0)).is_err(), "out of bounds");
        let mut d = sample();
        d.backing = Backing::Memfd;
        assert!(
            Descriptor::parse(&d.encode(0)).is_err(),
            "memfd with huge pages"
        );
    }
}
