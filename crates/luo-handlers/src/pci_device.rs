//! The `pci-device-v1` handler: a descriptor that stands for a device, preserved by holding it,
//! with the device registered in the [PCI FLB](crate::pci).
//!
//! Which descriptors stand for a device (paths relative to the sysfs root, `/sys` by default):
//!
//! - **a PCI function's config space**: a descriptor opened on `bus/pci/devices/<addr>/config`.
//!   The kernel reports it as `devices/pci0000:00/.../<addr>/config` (`readlink
//!   /proc/self/fd/N`), and the directory name is the address.
//! - **a VFIO device** (the character device `/dev/vfio/devices/vfioN` of the VFIO cdev
//!   interface): `dev/char/<major>:<minor>` resolves to `devices/.../<addr>/vfio-dev/vfioN`.
//!   The legacy group interface's anonymous `[vfio-device]` descriptors name no device and are
//!   not taken.
//! - **a network interface**: a descriptor opened on `class/net/<name>/ifindex`, which the
//!   kernel reports as `devices/.../net/<name>/ifindex`. The `ifindex` file is chosen because it
//!   is read-only for everyone, it exists for every interface, and reading it lets retrieve
//!   check that the interface is still the one preserved (an interface deleted and recreated
//!   under the same name gets a new index). Directories are taken by no handler.
//!
//! The identity (double-preserve key) is the device, not the sysfs inode: two descriptors on
//! one function's `config`, or a `config` and a VFIO descriptor of the same function, collide.
//! See [`IDENTITY_TAG_PCI`] and [`IDENTITY_TAG_NET`].
//!
//! Lifecycle: **preserve** registers the device in the FLB (`ENODEV` if it is not in sysfs,
//! `EINVAL` for a virtual function, `EBUSY` if already preserved) and holds a duplicate;
//! **unpreserve** removes the device; **freeze** ties a claim rebuilt after an orchestrator
//! upgrade to its file; **retrieve** checks the held descriptor still stands for
//! the recorded device and returns a duplicate (the same open file description, which for a
//! VFIO device is what carries its binding); **finish** ends the device's *incoming* state.
//!
//! **The record is a contract**:
//!
//! ```text
//!  offset 0      2       4        8     10         12        16         32
//!         +------+-------+--------+-----+----------+---------+----------+
//!         | kind | flags | domain | bdf | reserved | ifindex | name[16] |   PciDeviceRecord
//!         +------+-------+--------+-----+----------+---------+----------+
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use luo_core::{FileData, FileHandler, HandlerError, Identity, Preserved, RetrieveStatus};
use rustix::fs::FileType;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::Error;
use crate::fd;
use crate::memfd::fd_of;
use crate::pci::holder_of;
use crate::pci::{DeviceKey, IFNAMSIZ, IfName, PciAddress, PciFlb};

/// The compatible string of [`PciDeviceHandler`]. Changing [`PciDeviceRecord`] bumps it.
pub const PCI_DEVICE_COMPATIBLE: &str = "pci-device-v1";

/// Upper half of the identity `dev` of a PCI function (`"pci\0"`); the `ino` is
/// [`PciAddress::key`]. Real `st_dev` values fit in 32 bits (the kernel's `new_encode_dev`), so a
/// device identity never equals an inode's.
pub const IDENTITY_TAG_PCI: u32 = 0x7063_6900;
/// Upper half of the identity `dev` of a network interface (`"net\0"`); the `ino` is the
/// interface index.
pub const IDENTITY_TAG_NET: u32 = 0x6e65_7400;

/// What a `pci-device` file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum DeviceFileKind {
    /// A PCI function's `config` file.
    PciConfig = 1,
    /// A VFIO cdev (`/dev/vfio/devices/vfioN`).
    Vfio = 2,
    /// A network interface's `ifindex` file.
    Netdev = 3,
}

impl DeviceFileKind {
    fn from_raw(raw: u16) -> Option<DeviceFileKind> {
        match raw {
            1 => Some(DeviceFileKind::PciConfig),
            2 => Some(DeviceFileKind::Vfio),
            3 => Some(DeviceFileKind::Netdev),
            _ => None,
        }
    }
}

/// What a descriptor was found to stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    kind: DeviceFileKind,
    key: DeviceKey,
}

/// Finds the device `fd` stands for under `root`, or `None`.
fn resolve(root: &Path, fd: BorrowedFd<'_>) -> Option<Target> {
    resolve_stat(root, fd, &rustix::fs::fstat(fd).ok()?)
}

/// [`resolve`] given `st`, the `fstat` of `fd`: a file of any other type than a regular file
/// or a character device costs no system call.
fn resolve_stat(root: &Path, fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> Option<Target> {
    let kind = fd::file_type(st);
    if !matches!(kind, FileType::RegularFile | FileType::CharacterDevice) || fd::is_path_only(fd) {
        return None;
    }
    let devices = root.join("devices");
    match kind {
        FileType::RegularFile => {
            let path = fd::link_target(fd).ok()?;
            let rel = path.strip_prefix(&devices).ok()?;
            let dir = rel.parent()?;
            let dir_name = dir.file_name()?.to_str()?;
            match rel.file_name()?.to_str()? {
                "config" => Some(Target {
                    kind: DeviceFileKind::PciConfig,
                    key: DeviceKey::Pci(dir_name.parse().ok()?),
                }),
                "ifindex" if dir.parent()?.file_name()? == "net" => Some(Target {
                    kind: DeviceFileKind::Netdev,
                    key: DeviceKey::Net(IfName::new(dir_name).ok()?),
                }),
                _ => None,
            }
        }
        FileType::CharacterDevice => {
            let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
            let link = root.join("dev/char").join(format!("{major}:{minor}"));
            let path = std::fs::canonicalize(link).ok()?;
            let rel = path.strip_prefix(&devices).ok()?;
            if !rel.file_name()?.to_str()?.starts_with("vfio") {
                return None;
            }
            let class = rel.parent()?;
            if class.file_name()? != "vfio-dev" {
                return None;
            }
            let addr: PciAddress = class.parent()?.file_name()?.to_str()?.parse().ok()?;
            Some(Target {
                kind: DeviceFileKind::Vfio,
                key: DeviceKey::Pci(addr),
            })
        }
        _ => None,
    }
}

/// Reads the interface index through an `ifindex` descriptor (from offset 0, so the
/// descriptor's position does not matter).
fn ifindex_of(fd: BorrowedFd<'_>) -> Result<u32, Error> {
    let mut buf = [0u8; 32];
    let n = rustix::io::pread(fd, &mut buf, 0).map_err(Error::sys("read ifindex"))?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(Error::NotPreservable)
}

/// The `pci-device-v1` record: which device the held descriptor stands for.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `kind` | 0 | 2 | 1 PCI `config` file, 2 VFIO cdev, 3 netdev `ifindex` file ([`DeviceFileKind`]) |
/// | `flags` | 2 | 2 | none defined; must be 0 |
/// | `domain` | 4 | 4 | PCI domain (kinds 1 and 2; 0 for a netdev) |
/// | `bdf` | 8 | 2 | `bus << 8 \| device << 3 \| function` (kinds 1 and 2; 0 for a netdev) |
/// | `reserved` | 10 | 2 | must be 0 |
/// | `ifindex` | 12 | 4 | interface index at preserve (kind 3; 0 otherwise) |
/// | `name` | 16 | 16 | interface name, NUL-padded (kind 3; all zero otherwise) |
///
/// All fields are little-endian. Changing this bumps `PCI_DEVICE_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct PciDeviceRecord {
    /// [`DeviceFileKind`] as a number.
    pub kind: U16,
    /// Zero.
    pub flags: U16,
    /// PCI domain.
    pub domain: U32,
    /// Bus, device and function.
    pub bdf: U16,
    /// Zero.
    pub reserved: U16,
    /// Interface index.
    pub ifindex: U32,
    /// NUL-padded interface name.
    pub name: [u8; IFNAMSIZ],
}

const _: () = assert!(size_of::<PciDeviceRecord>() == 32);

impl PciDeviceRecord {
    fn new(target: &Target, ifindex: u32) -> PciDeviceRecord {
        let mut rec = PciDeviceRecord {
            kind: U16::new(target.kind as u16),
            flags: U16::new(0),
            domain: U32::new(0),
            bdf: U16::new(0),
            reserved: U16::new(0),
            ifindex: U32::new(0),
            name: [0; IFNAMSIZ],
        };
        match &target.key {
            DeviceKey::Pci(a) => {
                rec.domain = U32::new(a.domain);
                rec.bdf = U16::new(a.bdf());
            }
            DeviceKey::Net(n) => {
                rec.ifindex = U32::new(ifindex);
                rec.name = n.to_padded();
            }
        }
        rec
    }

    /// Parses a record defensively: exact length, a known kind, zero flags and reserved bits,
    /// and only the fields of its kind set.
    pub fn parse(bytes: &[u8]) -> Result<PciDeviceRecord, Error> {
        let rec = PciDeviceRecord::read_from_bytes(bytes).map_err(|_| Error::RecordLength {
            record: PCI_DEVICE_COMPATIBLE,
            got: bytes.len(),
            expected: size_of::<PciDeviceRecord>(),
        })?;
        rec.target()?;
        Ok(rec)
    }

    /// The kind of file recorded.
    pub fn kind(&self) -> Option<DeviceFileKind> {
        DeviceFileKind::from_raw(self.kind.get())
    }

    /// The device recorded.
    pub fn device(&self) -> Result<DeviceKey, Error> {
        Ok(self.target()?.key)
    }

    fn target(&self) -> Result<Target, Error> {
        let field = |field| Error::RecordField {
            record: PCI_DEVICE_COMPATIBLE,
            field,
        };
        let kind = self.kind().ok_or(field("kind"))?;
        if self.flags.get() != 0 {
            return Err(field("flags"));
        }
        if self.reserved.get() != 0 {
            return Err(field("reserved"));
        }
        let key = match kind {
            DeviceFileKind::PciConfig | DeviceFileKind::Vfio => {
                if self.ifindex.get() != 0 || self.name != [0; IFNAMSIZ] {
                    return Err(field("netdev fields"));
                }
                let [bus, devfn] = self.bdf.get().to_be_bytes();
                DeviceKey::Pci(PciAddress {
                    domain: self.domain.get(),
                    bus,
                    devfn,
                })
            }
            DeviceFileKind::Netdev => {
                if self.domain.get() != 0 || self.bdf.get() != 0 {
                    return Err(field("PCI fields"));
                }
                DeviceKey::Net(IfName::from_padded(&self.name).map_err(|_| field("name"))?)
            }
        };
        Ok(Target { kind, key })
    }
}

/// The handler of descriptors that stand for devices. See the [module](self) documentation.
#[derive(Debug)]
pub struct PciDeviceHandler {
    flb: Arc<PciFlb>,
}

impl PciDeviceHandler {
    /// The handler, registering devices in `flb` (whose sysfs root it also resolves paths
    /// against). Link `flb` to this handler in the engine's registry.
    pub fn new(flb: Arc<PciFlb>) -> PciDeviceHandler {
        PciDeviceHandler { flb }
    }

    /// The FLB this handler registers devices in.
    pub fn flb(&self) -> &Arc<PciFlb> {
        &self.flb
    }

    /// The device `fd` stands for, or `None` if the handler does not take it.
    pub fn device_of(&self, fd: BorrowedFd<'_>) -> Option<DeviceKey> {
        resolve(self.flb.sysfs_root(), fd).map(|t| t.key)
    }

    fn identity_of(target: &Target, fd: BorrowedFd<'_>) -> Result<Identity, Error> {
        Ok(match &target.key {
            DeviceKey::Pci(a) => Identity {
                dev: u64::from(IDENTITY_TAG_PCI) << 32,
                ino: a.key(),
            },
            DeviceKey::Net(_) => Identity {
                dev: u64::from(IDENTITY_TAG_NET) << 32,
                ino: u64::from(ifindex_of(fd)?),
            },
        })
    }
}

impl FileHandler for PciDeviceHandler {
    fn compatible(&self) -> &str {
        PCI_DEVICE_COMPATIBLE
    }

    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
        resolve(self.flb.sysfs_root(), fd).is_some()
    }

    fn can_preserve_with_stat(&self, fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> bool {
        resolve_stat(self.flb.sysfs_root(), fd, st).is_some()
    }

    fn inode_identity(&self) -> bool {
        false
    }

    fn identity(&self, fd: BorrowedFd<'_>) -> Result<Identity, HandlerError> {
        let target = resolve(self.flb.sysfs_root(), fd).ok_or(Error::NotPreservable)?;
        Ok(PciDeviceHandler::identity_of(&target, fd)?)
    }

    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
        let target = resolve(self.flb.sysfs_root(), fd).ok_or(Error::NotPreservable)?;
        let ifindex = match target.kind {
            DeviceFileKind::Netdev => ifindex_of(fd)?,
            DeviceFileKind::PciConfig | DeviceFileKind::Vfio => 0,
        };
        let held = fd::dup(fd)?;
        // The held file's identity tags the claim; see `PciFlb::release_incoming`.
        self.flb.claim(&target.key, holder_of(held.as_fd()))?;
        Ok(Preserved {
            fd: held,
            record: PciDeviceRecord::new(&target, ifindex).as_bytes().to_vec(),
            bytes: 0,
        })
    }

    fn unpreserve(&self, file: &mut FileData) {
        if let Ok(key) = PciDeviceRecord::parse(&file.record).and_then(|r| r.device()) {
            self.flb.unclaim(&key);
        }
    }

    fn freeze(&self, file: &mut FileData) -> Result<(), HandlerError> {
        let key = PciDeviceRecord::parse(&file.record)?.device()?;
        self.flb.adopt(&key, holder_of(file.fd.as_fd()));
        Ok(())
    }

    fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError> {
        let rec = PciDeviceRecord::parse(&file.record)?;
        let recorded = rec.target()?;
        let held = fd_of(file);
        if resolve(self.flb.sysfs_root(), held).as_ref() != Some(&recorded) {
            return Err(Error::HeldMismatch("device").into());
        }
        if recorded.kind == DeviceFileKind::Netdev && ifindex_of(held)? != rec.ifindex.get() {
            return Err(Error::HeldMismatch("network interface").into());
        }
        Ok(fd::dup(held)?)
    }

    fn finish(&self, file: &mut FileData, status: RetrieveStatus) {
        // Whatever the status, the device stops being incoming once its file is gone.
        let _ = status;
        if let Ok(key) = PciDeviceRecord::parse(&file.record).and_then(|r| r.device()) {
            self.flb.release_incoming(&key, holder_of(file.fd.as_fd()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addr: &str) -> Target {
        Target {
            kind: DeviceFileKind::PciConfig,
            key: DeviceKey::Pci(addr.parse().expect("valid")),
        }
    }

    #[test]
    fn record_round_trips() {
        let t = config("0000:00:03.0");
        let rec = PciDeviceRecord::new(&t, 0);
        let parsed = PciDeviceRecord::parse(rec.as_bytes()).expect("valid");
        assert_eq!(parsed.target().expect("valid"), t);
        let n = Target {
            kind: DeviceFileKind::Netdev,
            key: DeviceKey::Net(IfName::new("lo").expect("valid")),
        };
        let rec = PciDeviceRecord::new(&n, 1);
        assert_eq!(
            PciDeviceRecord::parse(rec.as_bytes())
                .expect("valid")
                .target()
                .expect("valid"),
            n
        );
    }

    #[test]
    fn record_rejects_malformed() {
        let good = PciDeviceRecord::new(&config("0000:00:03.0"), 0);
        assert!(PciDeviceRecord::parse(&good.as_bytes()[..31]).is_err());
        let cases: [&dyn Fn(&mut PciDeviceRecord); 6] = [
            &|r| r.kind = U16::new(0),
            &|r| r.kind = U16::new(4),
            &|r| r.flags = U16::new(1),
            &|r| r.reserved = U16::new(1),
            &|r| r.ifindex = U32::new(1),
            &|r| r.name[0] = b'x',
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut r = good;
            mutate(&mut r);
            assert!(PciDeviceRecord::parse(r.as_bytes()).is_err(), "case {i}");
        }
        let mut net = PciDeviceRecord::new(
            &Target {
                kind: DeviceFileKind::Netdev,
                key: DeviceKey::Net(IfName::new("lo").expect("valid")),
            },
            1,
        );
        net.domain = U32::new(1);
        assert!(PciDeviceRecord::parse(net.as_bytes()).is_err());
        net.domain = U32::new(0);
        net.name = [0; IFNAMSIZ];
        assert!(
            PciDeviceRecord::parse(net.as_bytes()).is_err(),
            "empty name"
        );
    }
}
