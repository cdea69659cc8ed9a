//! [`HostMapping`]: a host mapping of guest memory, handed out by the object so that it knows
//! which pages the host can touch.

use std::collections::BTreeMap;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

/// The live mappings of one object: id -> range.
#[derive(Debug, Default)]
pub(crate) struct Mappings {
    next: u64,
    live: BTreeMap<u64, Range<u64>>,
}

impl Mappings {
    pub(crate) fn register(&mut self, range: Range<u64>) -> u64 {
        let id = self.next;
        self.next += 1;
        self.live.insert(id, range);
        id
    }

    /// True if a live mapping overlaps `range`.
    pub(crate) fn overlaps(&self, range: &Range<u64>) -> bool {
        self.live
            .values()
            .any(|m| m.start < range.end && range.start < m.end)
    }

    pub(crate) fn count(&self) -> usize {
        self.live.len()
    }
}

pub(crate) type Shared = Arc<Mutex<Mappings>>;

pub(crate) fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Mappings> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A shared, read-write host mapping of part of a guest memory object.
///
/// While it lives, no page of its range may become private ([`GuestMemory::convert`] answers
/// `EBUSY`). Dropping it unmaps the memory and unregisters it. The mapping stays valid even if
/// the object is dropped first (the kernel keeps the file alive while it is mapped).
///
/// [`GuestMemory::convert`]: crate::GuestMemory::convert
#[derive(Debug)]
pub struct HostMapping {
    ptr: NonNull<u8>,
    range: Range<u64>,
    id: u64,
    owner: Shared,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; the pointer is only
// dereferenced through methods that take `&self`/`&mut self` with the usual borrow rules, and
// the kernel keeps the pages valid until `munmap` in `Drop`.
#[allow(unsafe_code)]
unsafe impl Send for HostMapping {}
// SAFETY: `&HostMapping` only gives volatile reads and the raw pointer; see `Send`.
#[allow(unsafe_code)]
unsafe impl Sync for HostMapping {}

impl HostMapping {
    pub(crate) fn new(ptr: NonNull<u8>, range: Range<u64>, id: u64, owner: Shared) -> HostMapping {
        HostMapping {
            ptr,
            range,
            id,
            owner,
        }
    }

    /// The host address of the first byte (what a VMM gives KVM as `userspace_addr`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes of guest memory mapped.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        (self.range.end - self.range.start) as usize
    }

    /// Never true: an empty range cannot be mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 8 bytes at `offset` within the mapping, read once (volatile: the guest may be
    /// writing them). `None` if out of bounds or unaligned.
    #[allow(unsafe_code)]
    pub fn read_u64(&self, offset: usize) -> Option<u64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.len() {
            return None;
        }
        // SAFETY: the mapping is `len()` bytes of readable shared memory that stays mapped while
        // `self` lives; `offset + 8 <= len()` and `offset` is 8-aligned (the base is page
        // aligned), so the read is in bounds and aligned.
        Some(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(offset).cast::<u64>()) })
    }

    /// Writes `bytes` at `offset` within the mapping. `None` if out of bounds.
    #[allow(unsafe_code)]
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Option<()> {
        if offset.checked_add(bytes.len())? > self.len() {
            return None;
        }
        // SAFETY: the destination is inside the writable mapping (checked above), which lives
        // as long as `self`; `bytes` is a separate Rust slice, so the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
        Some(())
    }

    /// Copies `out.len()` bytes at `offset` out of the mapping. `None` if out of bounds.
    #[allow(unsafe_code)]
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Option<()> {
        if offset.checked_add(out.len())? > self.len() {
            return None;
        }
        // SAFETY: the source is inside the readable mapping (checked above); `out` is a Rust
        // slice that cannot alias the mapping we own.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        Some(())
    }
}

impl Drop for HostMapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned for this mapping, it is unmapped
        // only here, and no reference into it outlives `self` (every accessor copies).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len()) };
        lock(&self.owner).live.remove(&self.id);
    }
}

/// Address space reserved for a future [`HostMapping`]: `len` bytes, aligned, mapped
/// inaccessible until [`GuestMemory::map_into`] maps guest memory over it.
///
/// It lets a VMM give KVM the host address of guest RAM *before* it has the RAM file: a
/// successor registers its memory slot on the reservation while its predecessor's guest still
/// runs, and only maps the RAM (one `mmap`) once luod hands it over.
///
/// [`GuestMemory::map_into`]: crate::GuestMemory::map_into
#[derive(Debug)]
pub struct Reservation {
    ptr: NonNull<u8>,
    len: usize,
    /// False once [`vacate`](Self::vacate) unmapped the placeholder.
    placeholder: bool,
}

// SAFETY: an inaccessible address range with no thread affinity; see `HostMapping`.
#[allow(unsafe_code)]
unsafe impl Send for Reservation {}

impl Reservation {
    /// Reserves `len` bytes aligned to `align` (a power of two, such as the huge page size).
    #[allow(unsafe_code)]
    pub fn new(len: usize, align: usize) -> Result<Reservation, crate::Error> {
        if len == 0 || !align.is_power_of_two() {
            return Err(crate::Error::Size {
                size: len as u64,
                page: align as u64,
                max: crate::descriptor::MAX_SIZE,
            });
        }
        let total = len
            .checked_add(align)
            .ok_or(crate::Error::Descriptor("reservation size"))?;
        // SAFETY: a new anonymous, inaccessible mapping at an address the kernel chooses: it
        // cannot affect any existing Rust object.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .map_err(crate::Error::sys("mmap reservation"))?;
        let base = raw as usize;
        let start = (base + align - 1) & !(align - 1);
        let head = start - base;
        let tail = total - head - len;
        // SAFETY: both ranges lie inside the mapping just created, which nothing else knows
        // about; what remains is exactly `start..start + len`.
        unsafe {
            if head > 0 {
                let _ = rustix::mm::munmap(raw, head);
            }
            if tail > 0 {
                let _ = rustix::mm::munmap((start + len) as *mut std::ffi::c_void, tail);
            }
        }
        let ptr = NonNull::new(start as *mut u8).ok_or(crate::Error::Sys {
            step: "mmap reservation",
            source: rustix::io::Errno::FAULT,
        })?;
        Ok(Reservation {
            ptr,
            len,
            placeholder: true,
        })
    }

    /// Unmaps the inaccessible placeholder now, keeping the address. Mapping over a placeholder
    /// replaces it, which makes the kernel invalidate the range for everyone watching it (KVM
    /// walks its memory slot); mapping into an empty range invalidates nothing. So a VMM that
    /// registered its memory slot on the reservation vacates it before its guest stops, and
    /// [`GuestMemory::map_into`] then only adds a mapping. Until then the range is a hole that
    /// another mapping of this process could take; `map_into` then fails (`EEXIST`) rather than
    /// replace it.
    ///
    /// [`GuestMemory::map_into`]: crate::GuestMemory::map_into
    #[allow(unsafe_code)]
    pub fn vacate(&mut self) {
        if self.placeholder {
            // SAFETY: the placeholder is exactly `ptr..ptr + len`, owned by `self` alone.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
            self.placeholder = false;
        }
    }

    /// True while the inaccessible placeholder is mapped (not [`vacate`](Self::vacate)d).
    pub fn has_placeholder(&self) -> bool {
        self.placeholder
    }

    /// The first reserved address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives up the range without unmapping it (it now belongs to a mapping placed over it).
    pub(crate) fn into_raw(self) -> (NonNull<u8>, usize) {
        let me = std::mem::ManuallyDrop::new(self);
        (me.ptr, me.len)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.vacate();
    }
}
