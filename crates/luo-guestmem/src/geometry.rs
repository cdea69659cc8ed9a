//! [`Geometry`]: which pages of the backing are intact and which are tracked split.
//!
//! A huge page whose 4 KiB units do not all have the same attribute cannot be tracked as one
//! page: its tracking is *split* into 4 KiB units. A conversion that covers part of a huge page
//! splits it; one that makes it uniform again merges it back. Only split pages are stored, so
//! the cost is proportional to the pages that are mixed, not to the object's size.

use std::collections::BTreeSet;
use std::ops::Range;

use crate::attrs::AttrMap;
use crate::page::{PageSize, UNIT};

/// The page geometry of a guest memory object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The backing page size.
    pub page_size: PageSize,
    /// Pages in the object.
    pub pages: u64,
    /// Indexes of the huge pages whose tracking is split into 4 KiB units, ascending. Always
    /// empty for 4 KiB pages.
    pub split: Vec<u64>,
}

impl Geometry {
    /// Pages tracked whole.
    pub fn intact(&self) -> u64 {
        self.pages - self.split.len() as u64
    }

    /// The units a split page is tracked in (4 KiB), or the page size for an intact page.
    pub fn unit_of(&self, page: u64) -> u64 {
        if self.split.binary_search(&page).is_ok() {
            UNIT
        } else {
            self.page_size.bytes()
        }
    }
}

/// The split huge pages, maintained by conversions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Splits {
    pages: BTreeSet<u64>,
}

impl Splits {
    pub(crate) fn from_sorted(pages: impl IntoIterator<Item = u64>) -> Splits {
        Splits {
            pages: pages.into_iter().collect(),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter().copied()
    }

    /// The split pages among those `range` touches (to undo a conversion).
    pub(crate) fn touched(&self, page: PageSize, range: &Range<u64>) -> Vec<u64> {
        if !page.is_huge() || range.is_empty() {
            return Vec::new();
        }
        let p = page.bytes();
        self.pages
            .range(range.start / p..=(range.end - 1) / p)
            .copied()
            .collect()
    }

    /// Puts back the split pages `range` touches as `saved` says.
    pub(crate) fn restore(&mut self, page: PageSize, range: &Range<u64>, saved: Vec<u64>) {
        for i in self.touched(page, range) {
            self.pages.remove(&i);
        }
        self.pages.extend(saved);
    }

    /// Updates the tracking after `range` was converted in `attrs`: huge pages fully inside the
    /// range are uniform now and merge; the (at most two) pages the range's ends cut are split
    /// or merged by what they hold now.
    pub(crate) fn converted(&mut self, page: PageSize, attrs: &AttrMap, range: Range<u64>) {
        if !page.is_huge() || range.is_empty() {
            return;
        }
        let p = page.bytes();
        let first = range.start / p;
        let last = (range.end - 1) / p;
        let inside: Vec<u64> = self.pages.range(first..=last).copied().collect();
        for i in inside {
            self.pages.remove(&i);
        }
        for i in [first, last] {
            if attrs.uniform(i * p..(i + 1) * p).is_none() {
                self.pages.insert(i);
            }
        }
    }
}

/// The split pages that `attrs` implies: every huge page with an attribute boundary strictly
/// inside it. What [`Splits`] must always equal; the descriptor parser checks it.
pub(crate) fn derived_splits(page: PageSize, attrs: impl Iterator<Item = Range<u64>>) -> Vec<u64> {
    if !page.is_huge() {
        return Vec::new();
    }
    let p = page.bytes();
    let mut out: Vec<u64> = Vec::new();
    for r in attrs {
        for b in [r.start, r.end] {
            if b % p != 0 && out.last() != Some(&(b / p)) {
                out.push(b / p);
            }
        }
    }
    out
}
