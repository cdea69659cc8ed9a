//! [`AttrMap`]: the shared/private attribute of every 4 KiB unit, kept as ranges.
//!
//! Only private ranges are stored; everything else is shared. Ranges are kept maximal (two
//! private ranges never touch), so the map's size is the number of attribute boundaries
//! divided by two, whatever the object's size: a 64 GiB object with one private range costs
//! one entry, not sixteen million.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::page::Attr;

/// Private ranges, `start -> end`, sorted, non-overlapping and non-adjacent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttrMap {
    private: BTreeMap<u64, u64>,
}

impl AttrMap {
    /// Everything shared.
    pub fn new() -> AttrMap {
        AttrMap::default()
    }

    /// Builds a map from private ranges that are already sorted, non-empty and non-adjacent
    /// (the caller has checked, as the descriptor parser does).
    pub(crate) fn from_sorted(ranges: impl IntoIterator<Item = Range<u64>>) -> AttrMap {
        AttrMap {
            private: ranges.into_iter().map(|r| (r.start, r.end)).collect(),
        }
    }

    /// Number of private ranges.
    pub fn len(&self) -> usize {
        self.private.len()
    }

    /// True if nothing is private.
    pub fn is_empty(&self) -> bool {
        self.private.is_empty()
    }

    /// The private ranges, in order.
    pub fn private_ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.private.iter().map(|(&s, &e)| s..e)
    }

    /// The attribute at byte `offset`.
    pub fn get(&self, offset: u64) -> Attr {
        match self.private.range(..=offset).next_back() {
            Some((_, &end)) if end > offset => Attr::Private,
            _ => Attr::Shared,
        }
    }

    /// The attribute of all of `range` if it is uniform, else `None`. An empty range is shared.
    pub fn uniform(&self, range: Range<u64>) -> Option<Attr> {
        if range.is_empty() {
            return Some(Attr::Shared);
        }
        match self.private.range(..range.end).next_back() {
            Some((&s, &e)) if e > range.start => {
                (s <= range.start && e >= range.end).then_some(Attr::Private)
            }
            _ => Some(Attr::Shared),
        }
    }

    /// True if any byte of `range` is private.
    pub fn any_private(&self, range: Range<u64>) -> bool {
        self.uniform(range.clone()) != Some(Attr::Shared)
    }

    /// The private parts of `range`, clipped to it.
    pub fn private_within(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = self
            .private
            .range(..range.end)
            .rev()
            .take_while(|&(_, &e)| e > range.start)
            .map(|(&s, &e)| s.max(range.start)..e.min(range.end))
            .collect();
        out.reverse();
        out
    }

    /// Sets `range` to `attr`, keeping ranges maximal. Cost: O(log n + ranges touched).
    pub fn set(&mut self, range: Range<u64>, attr: Attr) {
        if range.is_empty() {
            return;
        }
        match attr {
            Attr::Private => self.set_private(range),
            Attr::Shared => self.set_shared(range),
        }
    }

    fn set_private(&mut self, r: Range<u64>) {
        let (mut start, mut end) = (r.start, r.end);
        // Every range that overlaps or touches r: starts at or before r.end, ends at or after
        // r.start. Ends grow with starts, so walk back from r.end until one ends before.
        let touching: Vec<(u64, u64)> = self
            .private
            .range(..=r.end)
            .rev()
            .take_while(|&(_, &e)| e >= r.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.private.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.private.insert(start, end);
    }

    fn set_shared(&mut self, r: Range<u64>) {
        let overlapping: Vec<(u64, u64)> = self
            .private
            .range(..r.end)
            .rev()
            .take_while(|&(_, &e)| e > r.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.private.remove(&s);
            if s < r.start {
                self.private.insert(s, r.start);
            }
            if e > r.end {
                self.private.insert(r.end, e);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn set_merges_and_splits() {
        let mut m = AttrMap::new();
        m.set(0x1000..0x3000, Attr::Private);
        m.set(0x3000..0x4000, Attr::Private);
        assert_eq!(m.private_ranges().collect::<Vec<_>>(), [0x1000..0x4000]);
        m.set(0x2000..0x3000, Attr::Shared);
        assert_eq!(
            m.private_ranges().collect::<Vec<_>>(),
            [0x1000..0x2000, 0x3000..0x4000]
        );
        assert_eq!(m.uniform(0x1000..0x2000), Some(Attr::Private));
        assert_eq!(m.uniform(0x1000..0x3000), None);
        assert_eq!(m.uniform(0x2000..0x3000), Some(Attr::Shared));
        assert_eq!(m.get(0x3fff), Attr::Private);
        assert_eq!(m.get(0x4000), Attr::Shared);
        m.set(0..0x10000, Attr::Private);
        assert_eq!(m.len(), 1);
        m.set(0..0x10000, Attr::Shared);
        assert!(m.is_empty());
    }
}
