//! The huge page pool, as `/sys/kernel/mm/hugepages/hugepages-<kib>kB/` shows it.

use crate::error::Error;
use crate::page::PageSize;

/// The pool of one huge page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Page size in KiB.
    pub kib: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`).
    pub free: u64,
}

impl Pool {
    /// Reads the pool of `page` (which must be a huge size). A kernel without that size reads
    /// as an empty pool.
    pub fn read(page: PageSize) -> Pool {
        let kib = page.bytes() >> 10;
        let dir = format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB");
        let read = |f: &str| -> u64 {
            std::fs::read_to_string(format!("{dir}/{f}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        Pool {
            kib,
            total: read("nr_hugepages"),
            free: read("free_hugepages"),
        }
    }

    /// Checks that `needed` pages are free, with an error that says how to reserve them.
    pub fn check(page: PageSize, needed: u64) -> Result<(), Error> {
        let pool = Pool::read(page);
        if pool.free >= needed {
            return Ok(());
        }
        Err(pool.shortage(needed))
    }

    pub(crate) fn shortage(&self, needed: u64) -> Error {
        Error::NoHugePages {
            kib: self.kib,
            needed,
            free: self.free,
            suggest: self.total + needed.saturating_sub(self.free),
        }
    }
}
