//! The pci-device handler and the PCI FLB, on this machine's real PCI functions and network
//! interfaces and on fake sysfs trees (virtual functions, VFIO devices, missing devices).

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use common::{TempDir, open_ro, preserve, skip};
use luo_abi::Errno;
use luo_core::{FileData, FileHandler, Flb, RetrieveStatus};
use luo_handlers::pci_device::{IDENTITY_TAG_NET, IDENTITY_TAG_PCI};
use luo_handlers::{
    Defaults, DeviceKey, IfName, PCI_DEVICE_COMPATIBLE, PciAddress, PciDeviceHandler,
    PciDeviceRecord, PciFlb,
};

/// This machine's PCI functions, sorted by address.
fn real_devices() -> Vec<PciAddress> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return Vec::new();
    };
    let mut out: Vec<PciAddress> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

fn config_path(addr: PciAddress) -> String {
    format!("/sys/bus/pci/devices/{addr}/config")
}

fn held_dup(file: &FileData) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(&file.fd, 0).expect("dup")
}

#[test]
fn real_pci_functions_preserve_sort_serialize_and_come_back_incoming() {
    let devices = real_devices();
    if devices.is_empty() {
        return skip(
            "real_pci_functions_preserve_sort_serialize_and_come_back_incoming",
            "no PCI functions under /sys/bus/pci/devices",
        );
    }
    let flb = Arc::new(PciFlb::new());
    let h = PciDeviceHandler::new(Arc::clone(&flb));
    let others = Defaults::new().handlers;
    flb.preserve().expect("FLB preserve (first dependent file)");

    // Preserve in reverse order: the FLB keeps its list sorted whatever the order.
    let mut files = Vec::new();
    for (i, addr) in devices.iter().rev().enumerate() {
        let fd = open_ro(config_path(*addr));
        assert!(h.can_preserve(fd.as_fd()), "{addr}");
        for o in &others {
            if o.compatible() != PCI_DEVICE_COMPATIBLE {
                assert!(
                    !o.can_preserve(fd.as_fd()),
                    "{} takes {addr}'s config",
                    o.compatible()
                );
            }
        }
        assert_eq!(h.device_of(fd.as_fd()), Some(DeviceKey::Pci(*addr)));
        let id = h.identity(fd.as_fd()).expect("identity");
        assert_eq!(id.dev, u64::from(IDENTITY_TAG_PCI) << 32);
        assert_eq!(id.ino, addr.key());
        let file = preserve(&h, fd.as_fd(), i as u64);
        assert_eq!(
            PciDeviceRecord::parse(&file.record)
                .expect("record")
                .device()
                .expect("device"),
            DeviceKey::Pci(*addr)
        );
        files.push((*addr, file));
    }
    let keys: Vec<DeviceKey> = devices.iter().map(|a| DeviceKey::Pci(*a)).collect();
    assert_eq!(flb.outgoing_devices(), keys, "sorted by domain << 16 | bdf");
    for k in &keys {
        assert!(flb.is_preserved(k));
    }
    let absent = DeviceKey::Pci("ffff:ff:1f.7".parse().expect("address"));
    assert!(!flb.is_preserved(&absent));

    // The same function through a second descriptor: one identity, and the FLB says EBUSY.
    let first = devices[0];
    let again = open_ro(config_path(first));
    let first_fd = &files
        .iter()
        .find(|(a, _)| *a == first)
        .expect("preserved")
        .1
        .fd;
    assert_eq!(
        h.identity(again.as_fd()).expect("identity"),
        h.identity(first_fd.as_fd()).expect("identity"),
        "two descriptors on one device collide in the engine's identity check"
    );
    let err = h.preserve(again.as_fd()).expect_err("double preserve");
    assert_eq!(err.errno, Errno::EBUSY);
    assert_eq!(
        flb.outgoing_devices(),
        keys,
        "a refused preserve changes nothing"
    );

    // Freeze, serialize, and restore into a fresh FLB as the next luod would.
    for (_, f) in &mut files {
        h.freeze(f).expect("freeze");
    }
    let data = flb.serialize();
    assert_eq!(data.len(), 16 + 8 * devices.len());
    assert_eq!(PciFlb::decode(&data).expect("decode"), keys);

    let next_flb = Arc::new(PciFlb::new());
    let next = PciDeviceHandler::new(Arc::clone(&next_flb));
    assert!(
        !next_flb.is_incoming(&keys[0]),
        "not incoming before retrieve"
    );
    next_flb.retrieve(&data).expect("FLB retrieve");
    assert_eq!(next_flb.incoming_devices(), keys);
    assert!(next_flb.outgoing_devices().is_empty());

    let mut incoming: Vec<(PciAddress, FileData)> = files
        .iter()
        .map(|(a, f)| {
            (
                *a,
                FileData {
                    token: f.token,
                    fd: held_dup(f),
                    record: f.record.clone(),
                },
            )
        })
        .collect();
    for (addr, f) in &mut incoming {
        let fd = next.retrieve(f).expect("retrieve");
        assert_eq!(next.device_of(fd.as_fd()), Some(DeviceKey::Pci(*addr)));
        let mut vendor = [0u8; 2];
        assert_eq!(
            rustix::io::pread(&fd, &mut vendor, 0).expect("read config"),
            2
        );
        assert_ne!(
            u16::from_le_bytes(vendor),
            0xffff,
            "{addr} answers config reads"
        );
        assert!(next_flb.is_incoming(&DeviceKey::Pci(*addr)));
        next.finish(f, RetrieveStatus::Retrieved);
        assert!(
            !next_flb.is_incoming(&DeviceKey::Pci(*addr)),
            "finished: no longer incoming"
        );
    }
    assert!(next_flb.incoming_devices().is_empty());
    next_flb.finish();

    // Back on the outgoing side: unpreserve takes each device out.
    let (addr, mut f) = files.remove(0);
    h.unpreserve(&mut f);
    assert!(!flb.is_preserved(&DeviceKey::Pci(addr)));
    flb.unpreserve();
    assert!(flb.outgoing_devices().is_empty());
}

#[test]
fn flb_finish_clears_incoming_devices_nobody_finished() {
    let fake = FakeSysfs::new();
    let out = Arc::new(PciFlb::with_sysfs_root(fake.root()));
    let h = PciDeviceHandler::new(Arc::clone(&out));
    let _f1 = preserve(&h, fake.config("0000:00:07.0").as_fd(), 1);
    let _f2 = preserve(&h, fake.netdev("lo").as_fd(), 2);
    let data = out.serialize();

    let flb = PciFlb::with_sysfs_root(fake.root());
    let a = DeviceKey::Pci("0000:00:07.0".parse().expect("address"));
    let b = DeviceKey::Net(IfName::new("lo").expect("name"));
    flb.retrieve(&data).expect("retrieve");
    assert_eq!(flb.incoming_devices(), vec![a, b]);
    flb.finish();
    assert!(flb.incoming_devices().is_empty());
}

#[test]
fn network_interface_by_name() {
    let path = "/sys/class/net/lo/ifindex";
    if !Path::new(path).exists() {
        return skip(
            "network_interface_by_name",
            "no loopback interface in /sys/class/net",
        );
    }
    let flb = Arc::new(PciFlb::new());
    let h = PciDeviceHandler::new(Arc::clone(&flb));
    let lo = IfName::new("lo").expect("name");
    let fd = open_ro(path);
    assert!(h.can_preserve(fd.as_fd()));
    assert_eq!(h.device_of(fd.as_fd()), Some(DeviceKey::Net(lo.clone())));
    let id = h.identity(fd.as_fd()).expect("identity");
    let ifindex: u64 = std::fs::read_to_string(path)
        .expect("read")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(id.dev, u64::from(IDENTITY_TAG_NET) << 32);
    assert_eq!(id.ino, ifindex);

    // The interface's directory is not a device file: no handler takes directories.
    let dir = open_ro("/sys/class/net/lo");
    for o in Defaults::new().handlers {
        assert!(
            !o.can_preserve(dir.as_fd()),
            "{} takes a directory",
            o.compatible()
        );
    }
    // Nor any other attribute of it.
    assert!(!h.can_preserve(open_ro("/sys/class/net/lo/address").as_fd()));

    flb.preserve().expect("FLB preserve");
    let mut file = preserve(&h, fd.as_fd(), 1);
    let again = open_ro(path);
    assert_eq!(h.identity(again.as_fd()).expect("identity"), id);
    assert_eq!(
        h.preserve(again.as_fd()).expect_err("twice").errno,
        Errno::EBUSY
    );

    let mut keys = vec![DeviceKey::Net(lo.clone())];
    if let Some(addr) = real_devices().first() {
        let cfg = open_ro(config_path(*addr));
        let _pci = preserve(&h, cfg.as_fd(), 2);
        keys.insert(0, DeviceKey::Pci(*addr));
    }
    assert_eq!(
        flb.outgoing_devices(),
        keys,
        "PCI functions first, then interfaces by name"
    );

    let data = flb.serialize();
    let next_flb = Arc::new(PciFlb::new());
    next_flb.retrieve(&data).expect("retrieve");
    assert!(next_flb.is_incoming(&DeviceKey::Net(lo.clone())));
    let next = PciDeviceHandler::new(Arc::clone(&next_flb));
    let mut incoming = FileData {
        token: 1,
        fd: held_dup(&file),
        record: file.record.clone(),
    };
    let r = next.retrieve(&incoming).expect("retrieve");
    let mut buf = [0u8; 16];
    let n = rustix::io::pread(&r, &mut buf, 0).expect("pread");
    assert_eq!(
        std::str::from_utf8(&buf[..n]).expect("utf8").trim(),
        ifindex.to_string()
    );
    next.finish(&mut incoming, RetrieveStatus::Retrieved);
    assert!(!next_flb.is_incoming(&DeviceKey::Net(lo)));

    h.unpreserve(&mut file);
}

/// A fake sysfs tree:
///
/// ```text
/// <root>/devices/pci0000:00/0000:00:07.0/config            physical function
/// <root>/devices/pci0000:00/0000:00:07.0/vfio-dev/vfio0/    its VFIO cdev
/// <root>/devices/pci0000:00/0000:00:07.1/config            virtual function
/// <root>/devices/pci0000:00/0000:00:07.1/physfn -> ../0000:00:07.0
/// <root>/devices/pci0000:00/0000:00:08.0/config            not on the bus (removed)
/// <root>/bus/pci/devices/0000:00:07.{0,1} -> ../../../devices/pci0000:00/...
/// <root>/dev/char/<major>:<minor of /dev/null> -> ../../devices/.../0000:00:07.0/vfio-dev/vfio0
/// <root>/devices/virtual/net/lo/ifindex                     an interface
/// <root>/class/net/lo -> ../../devices/virtual/net/lo
/// ```
struct FakeSysfs {
    dir: TempDir,
}

impl FakeSysfs {
    fn new() -> FakeSysfs {
        let dir = TempDir::new("sysfs");
        let root = dir.path();
        let bus = root.join("bus/pci/devices");
        std::fs::create_dir_all(&bus).expect("mkdir");
        for f in ["0000:00:07.0", "0000:00:07.1", "0000:00:08.0"] {
            let d = root.join("devices/pci0000:00").join(f);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("config"), [0x86, 0x80, 0x34, 0x12]).expect("config");
            if f != "0000:00:08.0" {
                symlink(format!("../../../devices/pci0000:00/{f}"), bus.join(f)).expect("symlink");
            }
        }
        symlink(
            "../0000:00:07.0",
            root.join("devices/pci0000:00/0000:00:07.1/physfn"),
        )
        .expect("physfn");
        std::fs::create_dir_all(root.join("devices/pci0000:00/0000:00:07.0/vfio-dev/vfio0"))
            .expect("mkdir");
        let null = rustix::fs::stat("/dev/null").expect("stat");
        let chr = root.join("dev/char");
        std::fs::create_dir_all(&chr).expect("mkdir");
        symlink(
            "../../devices/pci0000:00/0000:00:07.0/vfio-dev/vfio0",
            chr.join(format!(
                "{}:{}",
                rustix::fs::major(null.st_rdev),
                rustix::fs::minor(null.st_rdev)
            )),
        )
        .expect("symlink");
        let lo = root.join("devices/virtual/net/lo");
        std::fs::create_dir_all(&lo).expect("mkdir");
        std::fs::write(lo.join("ifindex"), "1\n").expect("ifindex");
        std::fs::create_dir_all(root.join("class/net")).expect("mkdir");
        symlink("../../devices/virtual/net/lo", root.join("class/net/lo")).expect("symlink");
        FakeSysfs { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn netdev(&self, name: &str) -> OwnedFd {
        open_ro(self.root().join("class/net").join(name).join("ifindex"))
    }

    fn config(&self, f: &str) -> OwnedFd {
        open_ro(
            self.root()
                .join("devices/pci0000:00")
                .join(f)
                .join("config"),
        )
    }
}

#[test]
fn fake_tree_virtual_function_is_refused() {
    let fake = FakeSysfs::new();
    let defaults = Defaults::with_sysfs_root(fake.root());
    let flb = Arc::clone(&defaults.pci_flb);
    let h = PciDeviceHandler::new(Arc::clone(&flb));
    flb.preserve().expect("FLB preserve");

    let vf = fake.config("0000:00:07.1");
    let owner = defaults
        .handlers
        .iter()
        .find(|h| h.can_preserve(vf.as_fd()))
        .expect("some handler takes a device config");
    assert_eq!(owner.compatible(), PCI_DEVICE_COMPATIBLE);
    let err = h.preserve(vf.as_fd()).expect_err("VF");
    assert_eq!(err.errno, Errno::EINVAL);
    assert!(
        flb.outgoing_devices().is_empty(),
        "a refused VF leaves nothing behind"
    );

    let pf = fake.config("0000:00:07.0");
    let mut file = preserve(&h, pf.as_fd(), 1);
    let pf_key = DeviceKey::Pci("0000:00:07.0".parse().expect("address"));
    assert_eq!(flb.outgoing_devices(), vec![pf_key.clone()]);

    // A function that is no longer on the bus.
    let gone = fake.config("0000:00:08.0");
    assert_eq!(
        h.preserve(gone.as_fd()).expect_err("removed").errno,
        Errno::ENODEV
    );

    h.unpreserve(&mut file);
    assert!(flb.outgoing_devices().is_empty());
}

#[test]
fn fake_tree_vfio_cdev_is_the_same_device_as_its_config() {
    let fake = FakeSysfs::new();
    let flb = Arc::new(PciFlb::with_sysfs_root(fake.root()));
    let h = PciDeviceHandler::new(Arc::clone(&flb));
    // In the fake tree, the character device of /dev/null stands for 0000:00:07.0's VFIO cdev.
    let vfio = open_ro("/dev/null");
    let pf = "0000:00:07.0".parse::<PciAddress>().expect("address");
    assert!(h.can_preserve(vfio.as_fd()));
    assert_eq!(h.device_of(vfio.as_fd()), Some(DeviceKey::Pci(pf)));
    let cfg = fake.config("0000:00:07.0");
    assert_eq!(
        h.identity(vfio.as_fd()).expect("identity"),
        h.identity(cfg.as_fd()).expect("identity"),
        "one device, whichever descriptor stands for it"
    );
    let mut file = preserve(&h, vfio.as_fd(), 1);
    assert_eq!(
        h.preserve(cfg.as_fd()).expect_err("same device").errno,
        Errno::EBUSY
    );
    let r = h.retrieve(&file).expect("retrieve");
    assert_eq!(h.device_of(r.as_fd()), Some(DeviceKey::Pci(pf)));
    h.unpreserve(&mut file);

    // With the real sysfs, /dev/null is nobody's device.
    assert!(!PciDeviceHandler::new(Arc::new(PciFlb::new())).can_preserve(vfio.as_fd()));
}

#[test]
fn in_process_handoff_releases_the_outgoing_claim_at_finish() {
    // The engine hands a session off inside one process without unpreserving its files; the
    // device must become preservable again once the handed-off file is finished.
    let fake = FakeSysfs::new();
    let flb = Arc::new(PciFlb::with_sysfs_root(fake.root()));
    let h = PciDeviceHandler::new(Arc::clone(&flb));
    flb.preserve().expect("FLB preserve");
    let key = DeviceKey::Pci("0000:00:07.0".parse().expect("address"));
    let mut file = preserve(&h, fake.config("0000:00:07.0").as_fd(), 1);
    h.freeze(&mut file).expect("freeze");
    flb.retrieve(&flb.serialize()).expect("retrieve");
    assert!(flb.is_incoming(&key));
    let r = h.retrieve(&file).expect("retrieve");
    h.finish(&mut file, RetrieveStatus::Retrieved);
    drop((r, file));
    assert!(!flb.is_incoming(&key));
    assert!(!flb.is_preserved(&key));
    let mut again = preserve(&h, fake.config("0000:00:07.0").as_fd(), 2);
    h.unpreserve(&mut again);
}

#[test]
fn retrieve_refuses_a_record_of_another_device() {
    let fake = FakeSysfs::new();
    let flb = Arc::new(PciFlb::with_sysfs_root(fake.root()));
    let h = PciDeviceHandler::new(Arc::clone(&flb));
    let file = preserve(&h, fake.config("0000:00:07.0").as_fd(), 1);
    let lo = open_ro("/sys/class/net/lo/ifindex");
    let forged = FileData {
        token: 2,
        fd: lo,
        record: file.record.clone(),
    };
    assert_eq!(common::retrieve_err(&h, &forged).errno, Errno::EINVAL);
}
