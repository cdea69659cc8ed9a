//! luod's file handlers: the code that knows each kind of preservable file.
//!
//! Each handler implements [`luo_core::FileHandler`] and is chosen by the engine in
//! registration order, the first whose `can_preserve` says yes owning the file. The order of
//! [`default_handlers`] is:
//!
//! | compatible | type | takes | preserved by |
//! |---|---|---|---|
//! | `guestmem-v1` | [`GuestmemHandler`] | the descriptor memfd (`luo-guestmem`) of a [`luo_guestmem::GuestMemory`]: its geometry and shared/private attributes | copying and validating the descriptor at preserve and freeze; retrieve returns a sealed memfd with exactly the recorded state |
//! | `memfd-v1` | [`MemfdHandler`] | shmem memfds, unlinked tmpfs files (`O_TMPFILE` on `/dev/shm`) | holding the inode; retrieve reopens it (a new open file description) with the recorded size, position and seals |
//! | `memfd-hugetlb-v1` | [`HugetlbHandler`] | `MFD_HUGETLB` memfds (2 MiB, 1 GiB pages) | the same, plus the page size; the kernel's LUO refuses these |
//! | `pci-device-v1` | [`PciDeviceHandler`] | a PCI function's sysfs `config`, a VFIO cdev, a netdev's sysfs `ifindex` | holding the descriptor and registering the device in the [`PciFlb`] |
//! | `fdref-v1` | [`FdrefHandler`] | sockets, pipes and FIFOs, eventfds | holding the descriptor; retrieve returns the same open file description |
//!
//! One FLB, [`PciFlb`] (`pci-v1`), is linked to the `pci-device-v1` handler: it keeps the
//! preserved devices sorted by `domain << 16 | bdf` (network interfaces by name after them),
//! refuses virtual functions and devices preserved twice, and after a restore says which
//! devices are incoming until their files are finished.
//!
//! Nothing is ever copied: every handler keeps the object alive by holding a descriptor to it,
//! which is what crosses an exec in the fd table. Anything no handler takes (character devices
//! other than VFIO, directories, linked regular files, epoll, timerfd, ...) is refused by the
//! engine with `ENOENT`.
//!
//! Each handler's record (the bytes the engine stores in the handover image) is a contract: a
//! little-endian zerocopy struct whose size the compiler checks, parsed defensively on retrieve
//! (wrong length, unknown flags or kinds give `EINVAL`, never a panic). `docs/format.md` ("Handler records")
//! documents every layout.
//!
//! A memfd through the handler, as the engine drives it (preserve, freeze, retrieve, finish):
//!
//! ```
//! use std::os::fd::AsFd;
//! use luo_core::{FileData, FileHandler, RetrieveStatus};
//! use luo_handlers::MemfdHandler;
//! use rustix::fs::{MemfdFlags, SeekFrom};
//!
//! let memfd = rustix::fs::memfd_create("state", MemfdFlags::CLOEXEC)?;
//! rustix::io::write(&memfd, b"hello")?;
//!
//! let handler = MemfdHandler::new();
//! assert!(handler.can_preserve(memfd.as_fd()));
//! let preserved = handler.preserve(memfd.as_fd())?;
//! let mut file = FileData { token: 1, fd: preserved.fd, record: preserved.record };
//! handler.freeze(&mut file)?;
//! drop(memfd); // the client exits; the held descriptor keeps the memory
//!
//! let retrieved = handler.retrieve(&file)?;
//! assert_eq!(rustix::fs::seek(&retrieved, SeekFrom::Current(0))?, 5);
//! let mut buf = [0u8; 5];
//! rustix::io::pread(&retrieved, &mut buf, 0)?;
//! assert_eq!(&buf, b"hello");
//! handler.finish(&mut file, RetrieveStatus::Retrieved);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use luo_core::{FileHandler, Flb};

pub mod error;
mod fd;
pub mod fdref;
pub mod guestmem;
pub mod hugetlb;
pub mod memfd;
pub mod pci;
pub mod pci_device;
mod shmem;

pub use error::Error;
pub use fdref::{FDREF_COMPATIBLE, FDREF_FLAG_RIGHTS_OFF, FdKind, FdrefHandler, FdrefRecord};
pub use guestmem::{GUESTMEM_COMPATIBLE, GuestmemHandler};
pub use hugetlb::{HUGETLB_COMPATIBLE, HugetlbHandler, HugetlbRecord};
pub use memfd::{MEMFD_COMPATIBLE, MemfdHandler, MemfdRecord};
pub use pci::{DeviceKey, IfName, PCI_FLB_COMPATIBLE, PciAddress, PciFlb};
pub use pci_device::{PCI_DEVICE_COMPATIBLE, PciDeviceHandler, PciDeviceRecord};
pub use shmem::{
    ALL_SEALS, FLAG_APPEND, FLAG_NO_SEALS, FLAG_READ, FLAG_WRITE, access_of, open_flags,
};

/// The handlers in registration order, and the FLBs to link to them.
#[derive(Debug)]
pub struct Defaults {
    /// guestmem, memfd, memfd-hugetlb, pci-device, fdref: register them in this order.
    pub handlers: Vec<Arc<dyn FileHandler>>,
    /// The PCI FLB, linked to the `pci-device-v1` handler (and only to it).
    pub pci_flb: Arc<PciFlb>,
}

impl Defaults {
    /// The handlers over the real sysfs (`/sys`).
    pub fn new() -> Defaults {
        Defaults::with_sysfs_root("/sys")
    }

    /// The handlers with the PCI FLB and handler resolving devices under `root`.
    pub fn with_sysfs_root(root: impl Into<PathBuf>) -> Defaults {
        let pci_flb = Arc::new(PciFlb::with_sysfs_root(root));
        let handlers: Vec<Arc<dyn FileHandler>> = vec![
            // First: memfd-v1 would take a guest memory descriptor as a plain memfd.
            Arc::new(GuestmemHandler::new()),
            Arc::new(MemfdHandler::new()),
            Arc::new(HugetlbHandler::new()),
            Arc::new(PciDeviceHandler::new(Arc::clone(&pci_flb))),
            Arc::new(FdrefHandler::new()),
        ];
        Defaults { handlers, pci_flb }
    }

    /// The FLB links, as (handler compatible, FLB) pairs to register after the handlers.
    pub fn flb_links(&self) -> Vec<(&'static str, Arc<dyn Flb>)> {
        let flb: Arc<dyn Flb> = self.pci_flb.clone();
        vec![(PCI_DEVICE_COMPATIBLE, flb)]
    }
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults::new()
    }
}

/// luod's handlers over the real sysfs, in registration order. See [`Defaults`].
pub fn default_handlers() -> Defaults {
    Defaults::new()
}

/// luod's registry: [`default_handlers`] registered in order, with their FLB links.
pub fn default_registry() -> Result<luo_core::Registry, luo_core::Error> {
    let defaults = default_handlers();
    let mut registry = luo_core::Registry::new();
    for handler in &defaults.handlers {
        registry.register_handler(handler.clone())?;
    }
    for (handler, flb) in defaults.flb_links() {
        registry.register_flb(handler, flb)?;
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_order_and_links() {
        let d = default_handlers();
        let names: Vec<&str> = d.handlers.iter().map(|h| h.compatible()).collect();
        assert_eq!(
            names,
            [
                GUESTMEM_COMPATIBLE,
                MEMFD_COMPATIBLE,
                HUGETLB_COMPATIBLE,
                PCI_DEVICE_COMPATIBLE,
                FDREF_COMPATIBLE
            ]
        );
        for name in names {
            assert!((1..=47).contains(&name.len()));
        }
        let links = d.flb_links();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].0, PCI_DEVICE_COMPATIBLE);
        assert_eq!(links[0].1.compatible(), PCI_FLB_COMPATIBLE);
    }
}
