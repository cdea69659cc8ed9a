//! The `guestmem-v1` handler: the descriptor of a guest memory object (geometry and
//! shared/private attributes), copied and validated at preserve and at freeze.
//!
//! A VMM using [`luo_guestmem::GuestMemory`] preserves two files: the RAM memfd (taken by
//! `memfd-v1` or `memfd-hugetlb-v1`, nothing copied) and the descriptor memfd the object keeps
//! up to date. This handler takes the second. It is registered before `memfd-v1`, which would
//! otherwise accept it as an ordinary memfd.
//!
//! **The record is a contract**: it is the descriptor, byte for byte, exactly as
//! `luo_guestmem::descriptor` lays it out (`docs/format.md`, "`guestmem-v1`"), validated by
//! [`Descriptor::parse`] whenever it is written or read.
//!
//! What it takes: a shmem memfd named `luo-guestmem` (`/proc/self/fd/N` reads
//! `/memfd:luo-guestmem (deleted)`) whose first 8 bytes are the descriptor magic.
//!
//! Lifecycle:
//!
//! - **preserve** reads the descriptor consistently (under its sequence lock), validates it
//!   (magic, version, checksum, sizes, page size, ranges sorted, aligned, in bounds and
//!   maximal, split pages as the ranges imply) and records it; a malformed one is refused with
//!   `EINVAL`.
//! - **freeze** reads and validates it again: the object may have converted ranges since.
//! - **retrieve** returns a *new* memfd named `luo-guestmem` holding exactly the recorded
//!   bytes, sealed against every change, positioned at 0. The successor's
//!   `GuestMemory::open` reads it and writes a descriptor of its own.
//! - **finish** does nothing; the held descriptor is closed by the engine.

use std::os::fd::{BorrowedFd, OwnedFd};

use luo_core::{FileData, FileHandler, HandlerError, Preserved, RetrieveStatus};
use luo_guestmem::descriptor::{self, Descriptor, MAGIC};
use rustix::fs::{FileType, MemfdFlags, SealFlags, Stat};

use crate::error::Error;
use crate::fd;
use crate::memfd::fd_of;
use crate::shmem;

/// The compatible string of [`GuestmemHandler`]. Changing the descriptor layout bumps it.
pub const GUESTMEM_COMPATIBLE: &str = "guestmem-v1";

/// What `/proc/self/fd/N` reads for a descriptor memfd.
const LINK: &str = "/memfd:luo-guestmem (deleted)";

/// The handler of guest memory descriptors. See the [module](self) documentation.
#[derive(Debug, Default)]
pub struct GuestmemHandler;

impl GuestmemHandler {
    /// The handler.
    pub fn new() -> GuestmemHandler {
        GuestmemHandler
    }
}

fn guestmem_err(e: luo_guestmem::Error) -> HandlerError {
    HandlerError::new(
        luo_abi::Errno(e.errno().raw_os_error()),
        format!("guest memory descriptor: {e}"),
    )
}

/// True if `fd` is named as a descriptor memfd is.
fn is_named(fd: BorrowedFd<'_>) -> bool {
    fd::link_target(fd).is_ok_and(|t| t.as_os_str() == LINK)
}

/// True if the file behind `fd` starts with the descriptor's magic.
fn has_magic(fd: BorrowedFd<'_>) -> bool {
    let mut magic = [0u8; 8];
    rustix::io::pread(fd, &mut magic, 0).is_ok_and(|n| n == 8) && magic == MAGIC
}

/// Reads and validates the descriptor behind `fd`: its exact bytes.
fn capture(fd: BorrowedFd<'_>) -> Result<Vec<u8>, HandlerError> {
    descriptor::read_bytes(fd)
        .map(|(_, bytes)| bytes)
        .map_err(guestmem_err)
}

impl FileHandler for GuestmemHandler {
    fn compatible(&self) -> &str {
        GUESTMEM_COMPATIBLE
    }

    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
        // The name first: one readlink turns away every other file cheaply (this handler is
        // asked first, for every preserve).
        is_named(fd) && shmem::is_unlinked_file_on(fd, fd::TMPFS_MAGIC) && has_magic(fd)
    }

    fn can_preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &Stat) -> bool {
        // Type and links first, from `st`: anything but an unlinked regular file is turned
        // away without a system call; then the name.
        fd::file_type(st) == FileType::RegularFile
            && st.st_nlink == 0
            && is_named(fd)
            && shmem::is_unlinked_stat_on(fd, st, fd::TMPFS_MAGIC)
            && has_magic(fd)
    }

    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
        if !self.can_preserve(fd) {
            return Err(Error::NotPreservable.into());
        }
        let record = capture(fd)?;
        let held = fd::dup(fd)?;
        Ok(Preserved {
            fd: held,
            bytes: record.len() as u64,
            record,
        })
    }

    fn record_bytes(&self, record: &[u8]) -> u64 {
        record.len() as u64
    }

    fn unpreserve(&self, file: &mut FileData) {
        let _ = file;
    }

    fn freeze(&self, file: &mut FileData) -> Result<(), HandlerError> {
        file.record = capture(fd_of(file))?;
        Ok(())
    }

    fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError> {
        Descriptor::parse(&file.record).map_err(guestmem_err)?;
        let out = rustix::fs::memfd_create(
            descriptor::MEMFD_NAME,
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| HandlerError::from_io("memfd_create", e))?;
        let mut done = 0;
        while done < file.record.len() {
            done += rustix::io::pwrite(&out, &file.record[done..], done as u64)
                .map_err(|e| HandlerError::from_io("pwrite", e))?;
        }
        rustix::fs::fcntl_add_seals(
            &out,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )
        .map_err(|e| HandlerError::from_io("F_ADD_SEALS", e))?;
        Ok(out)
    }

    fn finish(&self, file: &mut FileData, status: RetrieveStatus) {
        let _ = (file, status);
    }
}
