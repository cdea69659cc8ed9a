//! The `memfd-hugetlb-v1` handler: memfds backed by huge pages (`MFD_HUGETLB`, 2 MiB and 1 GiB
//! pages on x86_64), preserved by holding them.
//!
//! The kernel's LUO refuses these (they are not shmem, so no handler matches). luod takes them
//! the same way it takes ordinary memfds: the pages stay in the hugetlb pool, owned by the inode
//! the engine keeps open, and nothing is copied.
//!
//! **The record is a contract**:
//!
//! ```text
//!  offset  0        8        16     20     24       32       40          48
//!          +--------+--------+------+------+--------+--------+-----------+
//!          | size   | pos    |seals |flags | dev    | ino    | page_size |   HugetlbRecord
//!          +--------+--------+------+------+--------+--------+-----------+
//! ```
//!
//! What it takes: a regular file with no links on hugetlbfs (`fstatfs` magic
//! `HUGETLBFS_MAGIC`), which is every `MFD_HUGETLB` memfd and an unlinked file on a hugetlbfs
//! mount. The lifecycle is the [memfd handler's](crate::memfd), plus the page size: recorded from
//! `fstatfs`'s `f_bsize` at preserve and checked on retrieve.

use std::os::fd::{BorrowedFd, OwnedFd};

use luo_core::{FileData, FileHandler, HandlerError, Preserved, RetrieveStatus};
use rustix::fs::Stat;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::Error;
use crate::fd;
use crate::memfd::fd_of;
use crate::shmem::{self, State};

/// The compatible string of [`HugetlbHandler`]. Changing [`HugetlbRecord`] bumps it.
pub const HUGETLB_COMPATIBLE: &str = "memfd-hugetlb-v1";

/// The smallest page size a record may carry (a base page).
const MIN_PAGE_SIZE: u64 = 4096;
/// The largest page size a record may carry (16 GiB, the largest any architecture has).
const MAX_PAGE_SIZE: u64 = 16 << 30;

/// The `memfd-hugetlb-v1` record: a hugetlb memory file's state at freeze.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `size` | 0 | 8 | file size in bytes; a multiple of `page_size`, at most `i64::MAX` |
/// | `pos` | 8 | 8 | file position; at most `i64::MAX` |
/// | `seals` | 16 | 4 | `F_SEAL_*` bits (only [`ALL_SEALS`](crate::ALL_SEALS)) |
/// | `flags` | 20 | 4 | bit 0 [`FLAG_NO_SEALS`](crate::FLAG_NO_SEALS); other bits must be 0 |
/// | `dev` | 24 | 8 | `st_dev` of the inode, checked on retrieve |
/// | `ino` | 32 | 8 | `st_ino` of the inode, checked on retrieve |
/// | `page_size` | 40 | 8 | huge page size in bytes (`f_bsize`): a power of two, 4 KiB to 16 GiB |
///
/// All fields are little-endian. Changing this bumps `HUGETLB_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct HugetlbRecord {
    /// File size in bytes.
    pub size: U64,
    /// File position.
    pub pos: U64,
    /// `F_SEAL_*` bits.
    pub seals: U32,
    /// Record flags.
    pub flags: U32,
    /// Device of the inode.
    pub dev: U64,
    /// Inode number.
    pub ino: U64,
    /// Huge page size in bytes.
    pub page_size: U64,
}

const _: () = assert!(size_of::<HugetlbRecord>() == 48);

impl HugetlbRecord {
    /// Parses a record defensively: exact length, no unknown bits, a plausible page size and a
    /// size that is a whole number of pages.
    pub fn parse(bytes: &[u8]) -> Result<HugetlbRecord, Error> {
        let rec = HugetlbRecord::read_from_bytes(bytes).map_err(|_| Error::RecordLength {
            record: HUGETLB_COMPATIBLE,
            got: bytes.len(),
            expected: size_of::<HugetlbRecord>(),
        })?;
        rec.state().validate(HUGETLB_COMPATIBLE)?;
        let page = rec.page_size.get();
        if !page.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page) {
            return Err(Error::RecordField {
                record: HUGETLB_COMPATIBLE,
                field: "page_size",
            });
        }
        if rec.size.get() % page != 0 {
            return Err(Error::RecordField {
                record: HUGETLB_COMPATIBLE,
                field: "size",
            });
        }
        Ok(rec)
    }

    fn state(&self) -> State {
        State {
            size: self.size.get(),
            pos: self.pos.get(),
            seals: self.seals.get(),
            flags: self.flags.get(),
            dev: self.dev.get(),
            ino: self.ino.get(),
        }
    }

    fn new(s: &State, page_size: u64) -> HugetlbRecord {
        HugetlbRecord {
            size: U64::new(s.size),
            pos: U64::new(s.pos),
            seals: U32::new(s.seals),
            flags: U32::new(s.flags),
            dev: U64::new(s.dev),
            ino: U64::new(s.ino),
            page_size: U64::new(page_size),
        }
    }
}

/// The page size of a hugetlbfs file.
fn page_size(fd: BorrowedFd<'_>) -> Result<u64, Error> {
    let sfs = rustix::fs::fstatfs(fd).map_err(Error::sys("fstatfs"))?;
    if sfs.f_type != fd::HUGETLBFS_MAGIC {
        return Err(Error::HeldMismatch("hugetlb file"));
    }
    Ok(u64::try_from(sfs.f_bsize).unwrap_or(0))
}

/// Takes hold of the hugetlb memfd `fd` whose state is `state`, with pages of `page` bytes.
fn hold(fd: BorrowedFd<'_>, state: &State, page: u64) -> Result<Preserved, HandlerError> {
    Ok(Preserved {
        fd: fd::dup(fd)?,
        record: HugetlbRecord::new(state, page).as_bytes().to_vec(),
        bytes: state.size,
    })
}

/// The handler of hugetlb memfds. See the [module](self) documentation.
#[derive(Debug, Default)]
pub struct HugetlbHandler;

impl HugetlbHandler {
    /// The handler.
    pub fn new() -> HugetlbHandler {
        HugetlbHandler
    }
}

impl FileHandler for HugetlbHandler {
    fn compatible(&self) -> &str {
        HUGETLB_COMPATIBLE
    }

    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
        shmem::is_unlinked_file_on(fd, fd::HUGETLBFS_MAGIC)
    }

    fn can_preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> bool {
        shmem::is_unlinked_stat_on(fd, st, fd::HUGETLBFS_MAGIC)
    }

    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
        let (state, page) = State::capture_unlinked_on(fd, fd::HUGETLBFS_MAGIC)?;
        hold(fd, &state, page)
    }

    fn preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> Result<Preserved, HandlerError> {
        // `can_preserve_with_stat` checked type, links and open mode; the page size comes
        // with the filesystem check.
        let page = page_size(fd)?;
        hold(fd, &State::from_stat(fd, st)?, page)
    }

    fn record_bytes(&self, record: &[u8]) -> u64 {
        HugetlbRecord::parse(record).map_or(0, |r| r.size.get())
    }

    fn unpreserve(&self, file: &mut FileData) {
        let _ = file;
    }

    fn freeze(&self, file: &mut FileData) -> Result<(), HandlerError> {
        let old = HugetlbRecord::parse(&file.record)?;
        let now = State::capture(fd_of(file))?;
        if (now.dev, now.ino) != (old.dev.get(), old.ino.get()) {
            return Err(Error::HeldMismatch("hugetlb file").into());
        }
        file.record = HugetlbRecord::new(&now, old.page_size.get())
            .as_bytes()
            .to_vec();
        Ok(())
    }

    fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError> {
        let rec = HugetlbRecord::parse(&file.record)?;
        let found = page_size(fd_of(file))?;
        if found != rec.page_size.get() {
            return Err(Error::PageSize {
                found,
                recorded: rec.page_size.get(),
            }
            .into());
        }
        Ok(rec.state().reopen(fd_of(file))?)
    }

    fn finish(&self, file: &mut FileData, status: RetrieveStatus) {
        // As for memfds: the engine closes the held descriptor, and the pages go back to the
        // pool when the last holder lets go.
        let _ = (file, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> HugetlbRecord {
        HugetlbRecord::new(
            &State {
                size: 4 << 21,
                pos: 0,
                seals: 1,
                flags: 0,
                dev: 0x11,
                ino: 7,
            },
            2 << 20,
        )
    }

    #[test]
    fn record_round_trips() {
        let rec = valid();
        assert_eq!(HugetlbRecord::parse(rec.as_bytes()).expect("valid"), rec);
    }

    #[test]
    fn record_rejects_malformed() {
        assert!(HugetlbRecord::parse(&valid().as_bytes()[..40]).is_err());
        for page in [0, 4095, 3 << 20, 32 << 30] {
            let mut rec = valid();
            rec.page_size = U64::new(page);
            assert!(HugetlbRecord::parse(rec.as_bytes()).is_err(), "page {page}");
        }
        let mut rec = valid();
        rec.size = U64::new((2 << 20) + 4096);
        assert!(
            HugetlbRecord::parse(rec.as_bytes()).is_err(),
            "partial page"
        );
        let mut rec = valid();
        rec.flags = U32::new(0x8000_0000);
        assert!(HugetlbRecord::parse(rec.as_bytes()).is_err());
    }
}
