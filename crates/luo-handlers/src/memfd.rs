//! The `memfd-v1` handler: shmem memfds and unlinked tmpfs files, preserved by holding them.
//!
//! **The record is a contract**: it is stored in the handover image and read by the next luod.
//!
//! ```text
//!  offset  0        8        16     20     24       32       40
//!          +--------+--------+------+------+--------+--------+
//!          | size   | pos    |seals |flags | dev    | ino    |   MemfdRecord, little-endian
//!          +--------+--------+------+------+--------+--------+
//! ```
//!
//! What it takes: a regular file with no links (`st_nlink == 0`) on a tmpfs/shmem filesystem
//! (`fstatfs` magic `TMPFS_MAGIC`): every `memfd_create` memfd without `MFD_HUGETLB`, and an
//! `O_TMPFILE` (or an unlinked file) on tmpfs such as `/dev/shm`. Hugetlb memfds go to
//! [`HugetlbHandler`](crate::HugetlbHandler); linked files, `O_PATH` descriptors and everything
//! else are refused.
//!
//! Lifecycle:
//!
//! - **preserve** holds a close-on-exec duplicate of the client's descriptor (the same open file
//!   description) and records size, position, seals and the inode. The memory is never copied;
//!   [`Preserved::bytes`] is the file size.
//! - **freeze** records size, position and seals again (the client may have written, moved
//!   the position or added seals since preserve), and the access of its open file description.
//! - **retrieve** opens `/proc/self/fd/<held>` with exactly the access the client's descriptor
//!   had (read, write or both, and append), never more: a *new* open file description of the
//!   same inode, as the kernel gives a new `struct file`. It checks the inode; if the client
//!   could write, it sets the size back to the recorded one unless seals forbid it and adds any
//!   recorded seal that is missing; it sets the recorded position.
//! - **finish** does nothing: the engine closes the held descriptor afterwards, and the memory
//!   goes when the last holder lets go. A file never retrieved is not truncated, because another
//!   process may still share it.

use std::os::fd::BorrowedFd;

use luo_core::{FileData, FileHandler, HandlerError, Preserved, RetrieveStatus};
use rustix::fs::Stat;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::Error;
use crate::fd;
use crate::shmem::{self, State};

/// The compatible string of [`MemfdHandler`]. Changing [`MemfdRecord`] bumps it.
pub const MEMFD_COMPATIBLE: &str = "memfd-v1";

/// The `memfd-v1` record: the state of a memory file at freeze.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `size` | 0 | 8 | file size in bytes (`st_size`); at most `i64::MAX` |
/// | `pos` | 8 | 8 | file position of the client's open file description; at most `i64::MAX` |
/// | `seals` | 16 | 4 | `F_SEAL_*` bits (only [`ALL_SEALS`](crate::ALL_SEALS)) |
/// | `flags` | 20 | 4 | bit 0 [`FLAG_NO_SEALS`](crate::FLAG_NO_SEALS): the file has no seal support and `seals` is 0; bits 1–3 the client's access, [`FLAG_READ`](crate::FLAG_READ), [`FLAG_WRITE`](crate::FLAG_WRITE), [`FLAG_APPEND`](crate::FLAG_APPEND); other bits must be 0 |
/// | `dev` | 24 | 8 | `st_dev` of the inode, checked against the held descriptor on retrieve |
/// | `ino` | 32 | 8 | `st_ino` of the inode, checked likewise |
///
/// All fields are little-endian. Changing this bumps `MEMFD_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct MemfdRecord {
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
}

const _: () = assert!(size_of::<MemfdRecord>() == 40);

impl MemfdRecord {
    /// Parses a record defensively: exact length, no unknown flag or seal bits, sizes that fit
    /// `off_t`.
    pub fn parse(bytes: &[u8]) -> Result<MemfdRecord, Error> {
        let rec = MemfdRecord::read_from_bytes(bytes).map_err(|_| Error::RecordLength {
            record: MEMFD_COMPATIBLE,
            got: bytes.len(),
            expected: size_of::<MemfdRecord>(),
        })?;
        rec.state().validate(MEMFD_COMPATIBLE)?;
        Ok(rec)
    }

    pub(crate) fn state(&self) -> State {
        State {
            size: self.size.get(),
            pos: self.pos.get(),
            seals: self.seals.get(),
            flags: self.flags.get(),
            dev: self.dev.get(),
            ino: self.ino.get(),
        }
    }

    pub(crate) fn from_state(s: &State) -> MemfdRecord {
        MemfdRecord {
            size: U64::new(s.size),
            pos: U64::new(s.pos),
            seals: U32::new(s.seals),
            flags: U32::new(s.flags),
            dev: U64::new(s.dev),
            ino: U64::new(s.ino),
        }
    }
}

/// The handler of shmem memfds and unlinked tmpfs files. See the [module](self) documentation.
#[derive(Debug, Default)]
pub struct MemfdHandler;

impl MemfdHandler {
    /// The handler.
    pub fn new() -> MemfdHandler {
        MemfdHandler
    }
}

impl FileHandler for MemfdHandler {
    fn compatible(&self) -> &str {
        MEMFD_COMPATIBLE
    }

    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
        shmem::is_unlinked_file_on(fd, fd::TMPFS_MAGIC)
    }

    fn can_preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> bool {
        shmem::is_unlinked_stat_on(fd, st, fd::TMPFS_MAGIC)
    }

    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
        let (state, _) = State::capture_unlinked_on(fd, fd::TMPFS_MAGIC)?;
        hold(fd, &state)
    }

    fn preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> Result<Preserved, HandlerError> {
        // `can_preserve_with_stat` checked type, links, open mode and filesystem: what is left
        // to read is the position and the seals.
        hold(fd, &State::from_stat(fd, st)?)
    }

    fn record_bytes(&self, record: &[u8]) -> u64 {
        MemfdRecord::parse(record).map_or(0, |r| r.size.get())
    }

    fn unpreserve(&self, file: &mut FileData) {
        // The engine closes the held descriptor; nothing else was taken.
        let _ = file;
    }

    fn freeze(&self, file: &mut FileData) -> Result<(), HandlerError> {
        let old = MemfdRecord::parse(&file.record)?.state();
        let now = State::capture(fd_of(file))?;
        if (now.dev, now.ino) != (old.dev, old.ino) {
            return Err(Error::HeldMismatch("memory file").into());
        }
        file.record = MemfdRecord::from_state(&now).as_bytes().to_vec();
        Ok(())
    }

    fn retrieve(&self, file: &FileData) -> Result<std::os::fd::OwnedFd, HandlerError> {
        let state = MemfdRecord::parse(&file.record)?.state();
        Ok(state.reopen(fd_of(file))?)
    }

    fn finish(&self, file: &mut FileData, status: RetrieveStatus) {
        // Retrieved: the client has its own open file. Not retrieved or failed: the held
        // descriptor the engine closes next was the last reference luod had.
        let _ = (file, status);
    }
}

/// Takes hold of the memfd `fd` whose state is `state`.
fn hold(fd: BorrowedFd<'_>, state: &State) -> Result<Preserved, HandlerError> {
    Ok(Preserved {
        fd: fd::dup(fd)?,
        record: MemfdRecord::from_state(state).as_bytes().to_vec(),
        bytes: state.size,
    })
}

pub(crate) fn fd_of(file: &FileData) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(&file.fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> MemfdRecord {
        MemfdRecord::from_state(&State {
            size: 4096,
            pos: 12,
            seals: 0x6,
            flags: 0,
            dev: 1,
            ino: 99,
        })
    }

    #[test]
    fn record_round_trips() {
        let rec = valid();
        assert_eq!(
            MemfdRecord::parse(rec.as_bytes()).expect("valid record"),
            rec
        );
    }

    #[test]
    fn record_rejects_wrong_length() {
        let bytes = valid().as_bytes().to_vec();
        for len in [0, 1, 39, 41, 80] {
            let mut b = bytes.clone();
            b.resize(len, 0);
            let err = MemfdRecord::parse(&b).expect_err("wrong length");
            assert_eq!(err.errno(), luo_abi::Errno::EINVAL);
        }
    }

    #[test]
    fn record_rejects_unknown_bits() {
        let mut rec = valid();
        rec.flags = U32::new(0x10);
        assert!(MemfdRecord::parse(rec.as_bytes()).is_err());
        let mut rec = valid();
        rec.flags = U32::new(crate::FLAG_APPEND);
        assert!(
            MemfdRecord::parse(rec.as_bytes()).is_err(),
            "append without read or write"
        );
        for access in [
            crate::FLAG_READ,
            crate::FLAG_WRITE,
            crate::FLAG_READ | crate::FLAG_WRITE | crate::FLAG_APPEND,
        ] {
            let mut rec = valid();
            rec.flags = U32::new(access);
            assert!(
                MemfdRecord::parse(rec.as_bytes()).is_ok(),
                "access {access:#x}"
            );
        }
        let mut rec = valid();
        rec.seals = U32::new(0x40);
        assert!(MemfdRecord::parse(rec.as_bytes()).is_err());
        let mut rec = valid();
        rec.flags = U32::new(FLAG_NO_SEALS_FOR_TEST);
        assert!(
            MemfdRecord::parse(rec.as_bytes()).is_err(),
            "seals without seal support"
        );
        let mut rec = valid();
        rec.size = U64::new(u64::MAX);
        assert!(MemfdRecord::parse(rec.as_bytes()).is_err());
        let mut rec = valid();
        rec.pos = U64::new(1 << 63);
        assert!(MemfdRecord::parse(rec.as_bytes()).is_err());
    }

    const FLAG_NO_SEALS_FOR_TEST: u32 = crate::shmem::FLAG_NO_SEALS;
}
