//! [`GuestMemory`]: the guest memory object.

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rustix::fs::{MemfdFlags, SealFlags};

use crate::attrs::AttrMap;
use crate::descriptor::{self, Descriptor, MAX_RANGES, MAX_SIZE, SEQ_OFFSET};
use crate::error::Error;
use crate::geometry::{Geometry, Splits};
use crate::hugepages::Pool;
use crate::mapping::{self, HostMapping, Mappings, Reservation};
use crate::page::{Attr, Backing, PageSize, UNIT};

/// `HUGETLBFS_MAGIC`.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// `TMPFS_MAGIC`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// The memfd name of the RAM file.
pub const RAM_MEMFD_NAME: &str = "luo-guestmem-ram";

/// Guest memory: a RAM file of 4 KiB, 2 MiB or 1 GiB pages, its page geometry, the
/// shared/private attribute of every 4 KiB unit, the host mappings it handed out, and the
/// descriptor memfd that mirrors geometry and attributes for luod. See the [crate](crate) doc.
#[derive(Debug)]
pub struct GuestMemory {
    ram: OwnedFd,
    descriptor: OwnedFd,
    size: u64,
    page: PageSize,
    backing: Backing,
    ram_token: Option<u64>,
    attrs: AttrMap,
    splits: Splits,
    mappings: mapping::Shared,
    seq: u64,
    /// Length of the descriptor file as last written.
    desc_len: u64,
}

/// A new memfd named `name` of `size` bytes (a whole number of pages) on pages of `page`,
/// close-on-exec, sealable, unsealed. 4 KiB pages come from shmem and are only sized, so they
/// are allocated as they are touched; huge pages come from hugetlbfs and are all taken now
/// (`fallocate`) after a check of the pool, so a short pool is [`Error::NoHugePages`] (which
/// says how to reserve them) rather than a `SIGBUS` at the first touch.
pub fn memfd_on(name: &str, size: u64, page: PageSize) -> Result<OwnedFd, Error> {
    let mut flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    match page {
        PageSize::Base4K => {}
        PageSize::Huge2M => flags |= MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB,
        PageSize::Huge1G => flags |= MemfdFlags::HUGETLB | MemfdFlags::HUGE_1GB,
    }
    let needed = size / page.bytes();
    if page.is_huge() {
        Pool::check(page, needed)?;
    }
    let ram = rustix::fs::memfd_create(name, flags).map_err(Error::sys("memfd_create"))?;
    rustix::fs::ftruncate(&ram, size).map_err(Error::sys("ftruncate"))?;
    if page.is_huge()
        && let Err(e) = rustix::fs::fallocate(&ram, rustix::fs::FallocateFlags::empty(), 0, size)
    {
        return Err(match e {
            rustix::io::Errno::NOSPC | rustix::io::Errno::NOMEM => {
                Pool::read(page).shortage(needed)
            }
            e => Error::Sys {
                step: "fallocate",
                source: e,
            },
        });
    }
    Ok(ram)
}

impl GuestMemory {
    /// A new object of `size` bytes on `page` pages, all shared.
    ///
    /// 4 KiB pages come from a shmem memfd that is only sized (`ftruncate`): pages are
    /// allocated as the guest touches them, so a sparse object costs nothing. Huge pages come
    /// from a hugetlb memfd and are allocated now (`fallocate`), after checking the pool has
    /// enough free pages: an empty pool gives [`Error::NoHugePages`], which says how to reserve
    /// them, rather than a `SIGBUS` when the guest first touches its memory.
    pub fn create(size: u64, page: PageSize) -> Result<GuestMemory, Error> {
        check_size(size, page)?;
        let backing = if page.is_huge() {
            Backing::Hugetlb
        } else {
            Backing::Memfd
        };
        let ram = memfd_on(RAM_MEMFD_NAME, size, page)?;
        // The size is part of the object: it never changes.
        rustix::fs::fcntl_add_seals(&ram, SealFlags::SHRINK | SealFlags::GROW)
            .map_err(Error::sys("F_ADD_SEALS"))?;
        GuestMemory::with_ram(ram, size, page, backing, AttrMap::new())
    }

    /// Wraps a KVM guest_memfd of `size` bytes created with the mmap flag (and initially
    /// shared), so the host can map it. Such memory belongs to the VM that created it: it can be
    /// preserved while that VM lives but no other VM can use it, so it cannot cross a VMM
    /// upgrade (see the crate doc).
    pub fn from_guest_memfd(gmem: OwnedFd, size: u64) -> Result<GuestMemory, Error> {
        check_size(size, PageSize::Base4K)?;
        let st = rustix::fs::fstat(&gmem).map_err(Error::sys("fstat"))?;
        if u64::try_from(st.st_size).ok() != Some(size) {
            return Err(Error::Mismatch("guest_memfd size"));
        }
        GuestMemory::with_ram(
            gmem,
            size,
            PageSize::Base4K,
            Backing::GuestMemfd,
            AttrMap::new(),
        )
    }

    /// Rebuilds the object a predecessor handed over: `ram` is its RAM file and `descriptor`
    /// the descriptor luod's `guestmem-v1` handler gave back. Checks that they agree (size,
    /// backing, page size from `fstatfs`) and takes geometry and attributes from the
    /// descriptor. The object writes a new descriptor of its own (the one retrieved is sealed).
    pub fn open(ram: OwnedFd, descriptor: BorrowedFd<'_>) -> Result<GuestMemory, Error> {
        let d = Descriptor::read(descriptor)?;
        let st = rustix::fs::fstat(&ram).map_err(Error::sys("fstat"))?;
        if u64::try_from(st.st_size).ok() != Some(d.size) {
            return Err(Error::Mismatch("size"));
        }
        let sfs = rustix::fs::fstatfs(&ram).map_err(Error::sys("fstatfs"))?;
        let found = match (d.backing, sfs.f_type) {
            (Backing::Hugetlb, HUGETLBFS_MAGIC) => u64::try_from(sfs.f_bsize).unwrap_or(0),
            (Backing::Memfd, TMPFS_MAGIC) => UNIT,
            (Backing::GuestMemfd, _) => UNIT,
            _ => return Err(Error::Mismatch("backing")),
        };
        if found != d.page_size.bytes() {
            return Err(Error::Mismatch("page size"));
        }
        let mut gm = GuestMemory::with_ram(ram, d.size, d.page_size, d.backing, d.attrs)?;
        gm.splits = Splits::from_sorted(d.split);
        gm.ram_token = d.ram_token;
        gm.sync()?;
        Ok(gm)
    }

    fn with_ram(
        ram: OwnedFd,
        size: u64,
        page: PageSize,
        backing: Backing,
        attrs: AttrMap,
    ) -> Result<GuestMemory, Error> {
        let descriptor = rustix::fs::memfd_create(
            descriptor::MEMFD_NAME,
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(Error::sys("memfd_create"))?;
        let mut gm = GuestMemory {
            ram,
            descriptor,
            size,
            page,
            backing,
            ram_token: None,
            attrs,
            splits: Splits::default(),
            mappings: Arc::new(Mutex::new(Mappings::default())),
            seq: 0,
            desc_len: 0,
        };
        gm.sync()?;
        Ok(gm)
    }

    /// The RAM file: preserve it with luod (it goes to `memfd-v1` or `memfd-hugetlb-v1`).
    pub fn ram_fd(&self) -> BorrowedFd<'_> {
        self.ram.as_fd()
    }

    /// The descriptor memfd: preserve it with luod (it goes to `guestmem-v1`).
    pub fn descriptor_fd(&self) -> BorrowedFd<'_> {
        self.descriptor.as_fd()
    }

    /// Bytes of guest memory.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The backing page size.
    pub fn page_size(&self) -> PageSize {
        self.page
    }

    /// What backs the RAM.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The token the RAM file is preserved under, as recorded in the descriptor.
    pub fn ram_token(&self) -> Option<u64> {
        self.ram_token
    }

    /// Records the token the RAM file is (about to be) preserved under, so a successor knows
    /// which file to retrieve with the descriptor.
    pub fn set_ram_token(&mut self, token: u64) -> Result<(), Error> {
        self.ram_token = Some(token);
        self.sync()
    }

    /// The attribute map.
    pub fn attrs(&self) -> &AttrMap {
        &self.attrs
    }

    /// The attribute of the 4 KiB unit holding byte `offset`.
    pub fn attr_at(&self, offset: u64) -> Attr {
        self.attrs.get(offset)
    }

    /// Which pages are intact and which are tracked split.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            page_size: self.page,
            pages: self.size / self.page.bytes(),
            split: self.splits.iter().collect(),
        }
    }

    /// Live host mappings.
    pub fn mapping_count(&self) -> usize {
        mapping::lock(&self.mappings).count()
    }

    /// Converts `range` to `attr`.
    ///
    /// The range must be 4 KiB-aligned, non-empty and inside the object (`EINVAL` otherwise).
    /// Converting to private is refused with `EBUSY` while a [`HostMapping`] overlaps the range
    /// (the faultability rule of guest_memfd: the host may not hold a mapping of a private
    /// page). A conversion that covers part of a huge page splits that page's tracking; one
    /// that makes it uniform merges it back. The descriptor is rewritten before this returns.
    pub fn convert(&mut self, range: Range<u64>, attr: Attr) -> Result<(), Error> {
        self.check_range(&range, UNIT)?;
        if attr == Attr::Private && mapping::lock(&self.mappings).overlaps(&range) {
            return Err(Error::Mapped {
                start: range.start,
                end: range.end,
            });
        }
        // What the range held, to undo the conversion if the descriptor cannot be written.
        let saved_attrs = self.attrs.private_within(range.clone());
        let saved_splits = self.splits.touched(self.page, &range);
        self.attrs.set(range.clone(), attr);
        self.splits.converted(self.page, &self.attrs, range.clone());
        let result = if self.attrs.len() > MAX_RANGES {
            Err(Error::TooManyRanges(MAX_RANGES))
        } else {
            self.sync()
        };
        if let Err(e) = result {
            self.attrs.set(range.clone(), Attr::Shared);
            for r in saved_attrs {
                self.attrs.set(r, Attr::Private);
            }
            self.splits.restore(self.page, &range, saved_splits);
            return Err(e);
        }
        Ok(())
    }

    /// Maps `range` shared and read-write for the host. The range must be aligned to the
    /// backing page size (hugetlb files are mapped in whole huge pages) and hold no private
    /// unit (`EACCES`: a private page may not be faulted by the host).
    pub fn map(&self, range: Range<u64>) -> Result<HostMapping, Error> {
        self.check_range(&range, self.page.bytes())?;
        let mut live = mapping::lock(&self.mappings);
        if self.attrs.any_private(range.clone()) {
            return Err(Error::Private {
                start: range.start,
                end: range.end,
            });
        }
        let len = usize::try_from(range.end - range.start).map_err(|_| Error::BadRange {
            start: range.start,
            end: range.end,
            align: self.page.bytes(),
            size: self.size,
        })?;
        // SAFETY: a new mapping at an address the kernel chooses (null hint), so no existing
        // Rust object is affected; the file is open and `range` lies inside it (checked above),
        // and the result is owned by the `HostMapping`, which unmaps it exactly once.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &self.ram,
                range.start,
            )
        }
        .map_err(Error::sys("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Sys {
            step: "mmap",
            source: rustix::io::Errno::FAULT,
        })?;
        let id = live.register(range.clone());
        drop(live);
        Ok(HostMapping::new(ptr, range, id, Arc::clone(&self.mappings)))
    }

    /// Maps all of the object over `reservation` (which must be exactly its size and aligned
    /// to its page size), as [`map`](Self::map) would elsewhere: the host address is the
    /// reservation's. On failure the reservation is returned untouched inside the error path's
    /// drop (it is unmapped).
    pub fn map_into(&self, reservation: Reservation) -> Result<HostMapping, Error> {
        let range = 0..self.size;
        if reservation.len() as u64 != self.size
            || !(reservation.as_ptr() as u64).is_multiple_of(self.page.bytes())
        {
            return Err(Error::Mismatch("reservation size or alignment"));
        }
        let mut live = mapping::lock(&self.mappings);
        if self.attrs.any_private(range.clone()) {
            return Err(Error::Private {
                start: range.start,
                end: range.end,
            });
        }
        let addr = reservation.as_ptr();
        // Over the placeholder (replacing it), or into the vacated hole without replacing
        // anything that may have been mapped there since.
        let fixed = if reservation.has_placeholder() {
            rustix::mm::MapFlags::FIXED
        } else {
            rustix::mm::MapFlags::FIXED_NOREPLACE
        };
        // SAFETY: with MAP_FIXED the mapping replaces exactly the placeholder, which
        // `reservation` owns and no Rust object points into (it is inaccessible); with
        // MAP_FIXED_NOREPLACE it replaces nothing (the kernel fails with EEXIST if anything is
        // mapped there). On success the range passes to the `HostMapping`; on failure the
        // reservation is dropped, unmapping only its own placeholder.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            rustix::mm::mmap(
                addr.cast(),
                reservation.len(),
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED | fixed,
                &self.ram,
                0,
            )
        }
        .map_err(Error::sys("mmap"))?;
        if ptr.cast::<u8>() != addr {
            return Err(Error::Mismatch("fixed mapping moved"));
        }
        let (ptr, _) = reservation.into_raw();
        let id = live.register(range.clone());
        drop(live);
        Ok(HostMapping::new(ptr, range, id, Arc::clone(&self.mappings)))
    }

    fn check_range(&self, range: &Range<u64>, align: u64) -> Result<(), Error> {
        if range.start >= range.end
            || !range.start.is_multiple_of(align)
            || !range.end.is_multiple_of(align)
            || range.end > self.size
        {
            return Err(Error::BadRange {
                start: range.start,
                end: range.end,
                align,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The descriptor as this object would write it now.
    pub fn to_descriptor(&self) -> Descriptor {
        Descriptor {
            size: self.size,
            page_size: self.page,
            backing: self.backing,
            ram_token: self.ram_token,
            attrs: self.attrs.clone(),
            split: self.splits.iter().collect(),
        }
    }

    /// Rewrites the descriptor memfd under its sequence lock: the new bytes go in with an odd
    /// sequence number, then the even one is stored (the CRC does not cover it).
    fn sync(&mut self) -> Result<(), Error> {
        let fd = self.descriptor.as_fd();
        let odd = self.seq + 1;
        let even = self.seq + 2;
        let bytes = descriptor::encode(
            self.size,
            self.page,
            self.backing,
            self.ram_token,
            self.attrs.private_ranges(),
            self.splits.iter(),
            odd,
        );
        if self.desc_len >= SEQ_OFFSET + 8 {
            pwrite_all(fd, &odd.to_le_bytes(), SEQ_OFFSET)?;
        }
        let len = bytes.len() as u64;
        if len < self.desc_len {
            rustix::fs::ftruncate(fd, len).map_err(Error::sys("ftruncate"))?;
        }
        pwrite_all(fd, &bytes, 0)?;
        pwrite_all(fd, &even.to_le_bytes(), SEQ_OFFSET)?;
        self.desc_len = len;
        self.seq = even;
        Ok(())
    }
}

fn check_size(size: u64, page: PageSize) -> Result<(), Error> {
    if size == 0 || !size.is_multiple_of(page.bytes()) || size > MAX_SIZE {
        return Err(Error::Size {
            size,
            page: page.bytes(),
            max: MAX_SIZE,
        });
    }
    Ok(())
}

fn pwrite_all(fd: BorrowedFd<'_>, mut bytes: &[u8], mut offset: u64) -> Result<(), Error> {
    while !bytes.is_empty() {
        let n = rustix::io::pwrite(fd, bytes, offset).map_err(Error::sys("pwrite"))?;
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}
