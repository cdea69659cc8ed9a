//! Guest memory for luod: a VM's RAM on 4 KiB, 2 MiB or 1 GiB pages, with its page geometry and
//! the shared/private attribute of every 4 KiB unit, kept so that it survives the replacement of
//! the VMM that owns it without a byte being copied.
//!
//! The principal types:
//!
//! - [`GuestMemory`]: the object. It owns the RAM file (a shmem memfd, a hugetlb memfd, or a KVM
//!   guest_memfd), an [`AttrMap`] of private ranges, the split huge pages, and the
//!   [`HostMapping`]s it handed out.
//! - [`AttrMap`]: the attributes as an interval map. Memory is proportional to the number of
//!   ranges, not pages.
//! - [`Geometry`]: which huge pages are intact and which are tracked split into 4 KiB units.
//!   [`GuestMemory::convert`] splits a huge page when a conversion covers part of it and merges
//!   it back when the page is uniform again.
//! - [`Reservation`]: address space a VMM reserves for guest RAM before it has the RAM file, so
//!   it can register its KVM memory slot while its predecessor's guest still runs;
//!   [`GuestMemory::map_into`] then maps the RAM there.
//! - [`Descriptor`]: geometry and attributes serialized into a small memfd (named
//!   `luo-guestmem`) that the object rewrites on every change. It is a contract: luod's
//!   `guestmem-v1` handler validates it and carries it in the handover image.
//!
//! # Crossing an update
//!
//! The VMM preserves two files into a luod session: the RAM file (luod's `memfd-v1` or
//! `memfd-hugetlb-v1` handler holds it; nothing is copied) and the descriptor (the
//! `guestmem-v1` handler copies and validates it at preserve and again at handoff). The
//! successor retrieves both and calls [`GuestMemory::open`], which checks that they agree
//! (size, backing, page size) and rebuilds the same object: the same pages, geometry and
//! attributes.
//!
//! ```
//! use luo_guestmem::{Attr, GuestMemory, PageSize};
//!
//! let mut mem = GuestMemory::create(8 << 20, PageSize::Base4K)?;
//! mem.convert(0x1000..0x3000, Attr::Private)?;
//! assert_eq!(mem.attr_at(0x2000), Attr::Private);
//!
//! // A host mapping blocks conversions to private inside it (EBUSY).
//! let map = mem.map(0x10_0000..0x20_0000)?;
//! assert_eq!(
//!     mem.convert(0x10_0000..0x10_1000, Attr::Private).unwrap_err().errno(),
//!     rustix::io::Errno::BUSY
//! );
//! drop(map);
//!
//! // What a successor VMM does with the two files luod hands back.
//! let ram = rustix::io::fcntl_dupfd_cloexec(mem.ram_fd(), 3)?;
//! let copy = GuestMemory::open(ram, mem.descriptor_fd())?;
//! assert_eq!(copy.attrs(), mem.attrs());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # KVM guest_memfd
//!
//! [`GuestMemory::from_guest_memfd`] wraps a real KVM guest_memfd (created by the VMM with
//! `KVM_CREATE_GUEST_MEMFD` and the mmap flag). Attributes, geometry and mappings work the same,
//! and the descriptor can be preserved, but the kernel binds a guest_memfd to the VM that
//! created it: a successor VMM's new VM cannot use it (`KVM_SET_USER_MEMORY_REGION2` refuses a
//! guest_memfd of another VM), and KVM VM fds themselves cannot be used from another process.
//! So in that mode guest memory does not cross a VMM upgrade; only a memfd or hugetlb memfd
//! does. What does cross is the descriptor, so a successor knows what the guest had private.
//!
//! `unsafe` is confined to [`GuestMemory::map`] and [`HostMapping`] (`mmap`, `munmap` and the
//! accesses through the mapping), each block with its `SAFETY` argument.

mod attrs;
pub mod descriptor;
mod error;
mod geometry;
mod hugepages;
mod mapping;
mod memory;
mod page;

pub use attrs::AttrMap;
pub use descriptor::Descriptor;
pub use error::Error;
pub use geometry::Geometry;
pub use hugepages::Pool;
pub use mapping::{HostMapping, Reservation};
pub use memory::{GuestMemory, RAM_MEMFD_NAME, memfd_on};
pub use page::{Attr, Backing, PageSize, UNIT};
