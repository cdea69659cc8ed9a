//! Reading block chains: one block at a time, never trusting a `next` or a `count`.

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::{BLOCK_HEADER_LEN, BlockHeader, FileEntry, FlbEntry, SessionEntry, block_capacity};

/// An entry type stored in block chains.
pub(crate) trait Entry:
    FromBytes + KnownLayout + Immutable + Unaligned + Sized + 'static
{
    /// Bytes in one entry.
    const SIZE: usize = size_of::<Self>();
    /// Entries in a full block.
    const CAP: u64 = block_capacity(Self::SIZE) as u64;
}

impl Entry for SessionEntry {}
impl Entry for FileEntry {}
impl Entry for FlbEntry {}

/// The header of the block at `off`, if it lies within `bytes`.
pub(crate) fn header(bytes: &[u8], off: u64) -> Option<&BlockHeader> {
    let off = usize::try_from(off).ok()?;
    let end = off.checked_add(BLOCK_HEADER_LEN)?;
    BlockHeader::ref_from_bytes(bytes.get(off..end)?).ok()
}

/// The header and entries of the block at `off`, if it lies within `bytes` and its count is in
/// `1..=CAP`.
pub(crate) fn block<T: Entry>(bytes: &[u8], off: u64) -> Option<(&BlockHeader, &[T])> {
    let h = header(bytes, off)?;
    let count = h.count.get();
    if count == 0 || count > T::CAP {
        return None;
    }
    // count <= CAP, so the product stays below 64 KiB.
    let start = usize::try_from(off).ok()?.checked_add(BLOCK_HEADER_LEN)?;
    let end = start.checked_add(count as usize * T::SIZE)?;
    let entries = <[T]>::ref_from_bytes(bytes.get(start..end)?).ok()?;
    Some((h, entries))
}

/// The entries of a chain, with the image offset of each. Stops at the end of the chain, or at
/// the first block that is out of bounds, has a bad count or links backward, so it always
/// terminates and never panics, whatever `bytes` holds.
#[derive(Clone, Debug)]
pub(crate) struct Chain<'a, T> {
    bytes: &'a [u8],
    next: u64,
    cur: core::slice::Iter<'a, T>,
    cur_off: u64,
}

impl<'a, T: Entry> Chain<'a, T> {
    /// The chain whose first block is at `head` (0: empty).
    pub(crate) fn new(bytes: &'a [u8], head: u64) -> Self {
        Chain {
            bytes,
            next: head,
            cur: [].iter(),
            cur_off: 0,
        }
    }
}

impl<'a, T: Entry> Iterator for Chain<'a, T> {
    type Item = (u64, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.cur.next() {
                let off = self.cur_off;
                self.cur_off = off.saturating_add(T::SIZE as u64);
                return Some((off, e));
            }
            let off = self.next;
            if off == 0 {
                return None;
            }
            let Some((h, entries)) = block::<T>(self.bytes, off) else {
                self.next = 0;
                return None;
            };
            let next = h.next.get();
            self.next = if next > off { next } else { 0 };
            self.cur = entries.iter();
            self.cur_off = off + BLOCK_HEADER_LEN as u64;
        }
    }
}
