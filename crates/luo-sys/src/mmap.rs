//! A shared mapping of a whole memory file, seen as a byte slice.

use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

/// `len` bytes of a file mapped `MAP_SHARED` at offset 0, unmapped on drop.
///
/// It hands the memory out as `&[u8]` and `&mut [u8]`, which is sound only while no one else
/// writes the file: luod maps only files it holds and no client has retrieved (a handed-off
/// session's memory, a new file of its own), so no other writer exists while the slice lives.
#[derive(Debug)]
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; it is only reached
// through `&self`/`&mut self`, with the usual borrow rules.
unsafe impl Send for SharedMap {}
// SAFETY: `&SharedMap` only gives `&[u8]`; see `Send`.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes (more than 0) of `fd`, read-only or read-write. `populate`
    /// faults every page in at once (`MAP_POPULATE`).
    pub fn new(fd: impl AsFd, len: usize, writable: bool, populate: bool) -> io::Result<SharedMap> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let mut flags = MapFlags::SHARED;
        if populate {
            flags |= MapFlags::POPULATE;
        }
        // SAFETY: a new mapping chosen by the kernel (null hint) aliases no existing memory;
        // `fd` is live for the call and the kernel keeps the file alive while it is mapped.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) }?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(SharedMap { ptr, len, writable })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an empty mapping cannot be made.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is mapped readable for as long as `self` lives (unmapped only
        // in `Drop`), and the type's contract rules out other writers meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: as for `as_slice`, and the mapping is writable; `&mut self` makes this the
        // only reference into it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what `mmap` returned, unmapped only here, and no
        // slice into the mapping outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_memfd_both_ways() {
        let fd = rustix::fs::memfd_create("map", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&fd, 8192).expect("size");
        let mut w = SharedMap::new(&fd, 8192, true, true).expect("map rw");
        w.as_mut_slice().expect("writable")[4096] = 42;
        let r = SharedMap::new(&fd, 8192, false, false).expect("map ro");
        assert_eq!(r.as_slice()[4096], 42, "one file, two views");
        let mut r = r;
        assert!(r.as_mut_slice().is_none());
        assert!(SharedMap::new(&fd, 0, false, false).is_err());
    }
}
