//! Units: what a batch is made of.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The size of a copy unit: a base page or a huge page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitSize {
    /// 4 KiB.
    Base4K,
    /// 2 MiB.
    Huge2M,
    /// 1 GiB.
    Huge1G,
}

impl UnitSize {
    /// Every unit size, smallest first.
    pub const ALL: [UnitSize; 3] = [UnitSize::Base4K, UnitSize::Huge2M, UnitSize::Huge1G];

    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            UnitSize::Base4K => 4 << 10,
            UnitSize::Huge2M => 2 << 20,
            UnitSize::Huge1G => 1 << 30,
        }
    }

    /// The short name: `4k`, `2m` or `1g`.
    pub const fn name(self) -> &'static str {
        match self {
            UnitSize::Base4K => "4k",
            UnitSize::Huge2M => "2m",
            UnitSize::Huge1G => "1g",
        }
    }
}

impl fmt::Display for UnitSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for UnitSize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        UnitSize::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownUnitSize(s.to_owned()))
    }
}

/// One unit of a copy: `len` bytes from offset `src` of the source to offset `dst` of the
/// destination.
///
/// `len` is at most the request's [`UnitSize`] (a shorter unit is a tail). In one request the
/// units' destinations are in ascending order and do not overlap; sources may be anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Unit {
    /// Offset in the source.
    pub src: usize,
    /// Offset in the destination.
    pub dst: usize,
    /// Length in bytes, 1 to the unit size.
    pub len: usize,
}

impl Unit {
    /// The unit of index `i` of a contiguous copy of `total` bytes in units of `size`.
    pub(crate) fn contiguous(i: usize, size: UnitSize, total: usize) -> Unit {
        let start = i * size.bytes();
        Unit {
            src: start,
            dst: start,
            len: size.bytes().min(total - start),
        }
    }
}

/// Checks what [`Batch`](crate::Batch) relies on for soundness: every unit non-empty, at most
/// `size` long, inside both buffers, and the destinations ascending without overlap.
pub(crate) fn check_units(
    src_len: usize,
    dst_len: usize,
    units: &[Unit],
    size: UnitSize,
) -> Result<()> {
    let mut dst_end = 0usize;
    for (index, u) in units.iter().enumerate() {
        if u.len == 0 || u.len > size.bytes() {
            return Err(Error::UnitLength {
                index,
                len: u.len,
                unit: size,
            });
        }
        let in_src = u.src.checked_add(u.len).is_some_and(|end| end <= src_len);
        let in_dst = u.dst.checked_add(u.len).is_some_and(|end| end <= dst_len);
        if !in_src || !in_dst {
            return Err(Error::UnitOutOfBounds { index });
        }
        if index > 0 && u.dst < dst_end {
            return Err(Error::UnitOrder { index });
        }
        dst_end = u.dst + u.len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_sizes_parse_and_print() {
        for u in UnitSize::ALL {
            assert_eq!(u.to_string().parse::<UnitSize>().unwrap(), u);
        }
        assert_eq!("2M".parse::<UnitSize>().unwrap(), UnitSize::Huge2M);
        assert!("3k".parse::<UnitSize>().is_err());
    }

    #[test]
    fn check_units_refuses_what_batches_rely_on() {
        let u = |src, dst, len| Unit { src, dst, len };
        let k4 = UnitSize::Base4K;
        assert!(check_units(8192, 8192, &[u(0, 0, 4096), u(4096, 4096, 4096)], k4).is_ok());
        assert!(matches!(
            check_units(8192, 8192, &[u(0, 0, 0)], k4),
            Err(Error::UnitLength { index: 0, .. })
        ));
        assert!(matches!(
            check_units(8192, 8192, &[u(0, 0, 4097)], k4),
            Err(Error::UnitLength { .. })
        ));
        assert!(matches!(
            check_units(8192, 8192, &[u(4097, 0, 4096)], k4),
            Err(Error::UnitOutOfBounds { index: 0 })
        ));
        assert!(matches!(
            check_units(8192, 8192, &[u(0, usize::MAX, 2)], k4),
            Err(Error::UnitOutOfBounds { index: 0 })
        ));
        assert!(matches!(
            check_units(8192, 8192, &[u(0, 100, 100), u(0, 199, 10)], k4),
            Err(Error::UnitOrder { index: 1 })
        ));
        // Sources may repeat; destinations may leave gaps.
        assert!(check_units(8192, 8192, &[u(0, 0, 10), u(0, 20, 10)], k4).is_ok());
    }
}
