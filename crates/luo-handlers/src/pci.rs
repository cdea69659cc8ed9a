//! The PCI FLB (`pci-v1`): the registry of preserved devices, shared by every file that holds
//! a device.
//!
//! It mirrors the kernel's out-of-tree PCI FLB (`spec/kernel-luo.md` §3.3): the preserved
//! devices are kept sorted by the key `domain << 16 | bus << 8 | devfn` and looked up by binary
//! search; a virtual function is refused (`EINVAL`, it belongs to its physical function); a
//! device preserved twice is refused (`EBUSY`). After a restore each device is *incoming* until
//! the file that held it is finished, so a successor can tell which devices were handed to it
//! ([`PciFlb::is_incoming`]).
//!
//! luod adds what the kernel's FLB cannot express: **network interfaces by name**. A netdev has
//! no bus address (it may be virtual, or sit on a PCI function that is itself not preserved), so
//! it is tracked under its interface name in the same sorted registry, after every PCI device.
//!
//! **The serialized device list is a contract** (the FLB's data in the handover image):
//!
//! ```text
//!  PciFlbHeader (16 B)            PciEntry (8 B) x pci_count     NetEntry (24 B) x net_count
//!  +---------+-----------+-----------+----------+  +--------+-----+-------+  +----------+---------+-------+
//!  | version | pci_count | net_count | reserved |  | domain | bdf | flags |  | name[16] | ifindex | flags |
//!  +---------+-----------+-----------+----------+  +--------+-----+-------+  +----------+---------+-------+
//! ```
//!
//! PCI entries are strictly ascending by key, net entries strictly ascending by name, and the
//! data is exactly as long as the counts say.
//!
//! The sysfs root is a parameter (`/sys` by default) so tests can build a fake tree with
//! virtual functions in a temporary directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use luo_core::{Flb, HandlerError};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::Error;

/// The compatible string of [`PciFlb`]. Changing [`PciFlbHeader`], [`PciEntry`] or
/// [`NetEntry`] bumps it.
pub const PCI_FLB_COMPATIBLE: &str = "pci-v1";

/// The version field of [`PciFlbHeader`].
pub const PCI_FLB_VERSION: u32 = 1;

/// The largest serialized device list a restore accepts (1 MiB: 130,000 PCI functions).
pub const PCI_FLB_MAX_BYTES: usize = 1 << 20;

/// `IFNAMSIZ`: an interface name is at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;

/// A PCI function's address: domain (segment), bus, device and function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI domain (segment group). Usually 0; VMD and some hosts use values above 0xffff.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7..3) and function (bits 2..0).
    pub devfn: u8,
}

impl PciAddress {
    /// The address `domain:bus:device.function`. `None` if device > 31 or function > 7.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<PciAddress> {
        (device < 32 && function < 8).then_some(PciAddress {
            domain,
            bus,
            devfn: (device << 3) | function,
        })
    }

    /// The 16-bit bus/device/function number (`bus << 8 | devfn`).
    pub fn bdf(self) -> u16 {
        (u16::from(self.bus) << 8) | u16::from(self.devfn)
    }

    /// The sort key of the FLB: `domain << 16 | bdf`.
    pub fn key(self) -> u64 {
        (u64::from(self.domain) << 16) | u64::from(self.bdf())
    }

    /// The address from its sort key, if the domain fits.
    pub fn from_key(key: u64) -> Option<PciAddress> {
        let domain = u32::try_from(key >> 16).ok()?;
        let [bus, devfn] = ((key & 0xffff) as u16).to_be_bytes();
        Some(PciAddress { domain, bus, devfn })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain,
            self.bus,
            self.devfn >> 3,
            self.devfn & 7
        )
    }
}

/// The error of parsing a [`PciAddress`] or an [`IfName`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {0}")]
pub struct ParseError(&'static str);

impl FromStr for PciAddress {
    type Err = ParseError;

    /// Parses sysfs's spelling, `DDDD:BB:DD.F` (hexadecimal; the domain has 4 to 8 digits).
    fn from_str(s: &str) -> Result<PciAddress, ParseError> {
        let err = ParseError("PCI address");
        let hex = |t: &str, min: usize, max: usize| {
            if (min..=max).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                u32::from_str_radix(t, 16).map_err(|_| err)
            } else {
                Err(err)
            }
        };
        let (domain, rest) = s.split_once(':').ok_or(err)?;
        let (bus, rest) = rest.split_once(':').ok_or(err)?;
        let (dev, func) = rest.split_once('.').ok_or(err)?;
        let domain = hex(domain, 4, 8)?;
        let bus = u8::try_from(hex(bus, 2, 2)?).map_err(|_| err)?;
        let dev = u8::try_from(hex(dev, 2, 2)?).map_err(|_| err)?;
        let func = u8::try_from(hex(func, 1, 1)?).map_err(|_| err)?;
        PciAddress::new(domain, bus, dev, func).ok_or(err)
    }
}

/// A network interface name, validated as the kernel's `dev_valid_name` does: 1 to 15 bytes,
/// not `.` or `..`, no `/`, `:` or whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// A validated name.
    pub fn new(name: &str) -> Result<IfName, ParseError> {
        let ok = !name.is_empty()
            && name.len() < IFNAMSIZ
            && name != "."
            && name != ".."
            && !name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
        if ok {
            Ok(IfName(name.to_owned()))
        } else {
            Err(ParseError("interface name"))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name NUL-padded to [`IFNAMSIZ`] bytes.
    pub fn to_padded(&self) -> [u8; IFNAMSIZ] {
        let mut out = [0u8; IFNAMSIZ];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }

    /// The name from NUL-padded bytes: the bytes after the first NUL must all be NUL too.
    pub fn from_padded(bytes: &[u8; IFNAMSIZ]) -> Result<IfName, ParseError> {
        let err = ParseError("interface name");
        let len = bytes.iter().position(|&b| b == 0).ok_or(err)?;
        if bytes[len..].iter().any(|&b| b != 0) {
            return Err(err);
        }
        let name = std::str::from_utf8(&bytes[..len]).map_err(|_| err)?;
        IfName::new(name)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the FLB tracks: a PCI function by address, or a network interface by name. PCI
/// devices sort first (by key), then interfaces (by name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKey {
    /// A PCI function.
    Pci(PciAddress),
    /// A network interface.
    Net(IfName),
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKey::Pci(a) => write!(f, "pci {a}"),
            DeviceKey::Net(n) => write!(f, "netdev {n}"),
        }
    }
}

impl From<PciAddress> for DeviceKey {
    fn from(a: PciAddress) -> DeviceKey {
        DeviceKey::Pci(a)
    }
}

impl From<IfName> for DeviceKey {
    fn from(n: IfName) -> DeviceKey {
        DeviceKey::Net(n)
    }
}

/// The header of the `pci-v1` FLB data.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `version` | 0 | 4 | [`PCI_FLB_VERSION`] (1) |
/// | `pci_count` | 4 | 4 | number of [`PciEntry`] that follow |
/// | `net_count` | 8 | 4 | number of [`NetEntry`] after the PCI entries |
/// | `reserved` | 12 | 4 | must be 0 |
///
/// Little-endian. Changing this bumps `PCI_FLB_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct PciFlbHeader {
    /// Layout version.
    pub version: U32,
    /// PCI entries.
    pub pci_count: U32,
    /// Netdev entries.
    pub net_count: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = assert!(size_of::<PciFlbHeader>() == 16);

/// One preserved PCI function in the `pci-v1` FLB data.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `domain` | 0 | 4 | PCI domain |
/// | `bdf` | 4 | 2 | `bus << 8 \| device << 3 \| function` |
/// | `flags` | 6 | 2 | none defined; must be 0 |
///
/// Little-endian. Entries are strictly ascending by `domain << 16 | bdf`. Changing this bumps
/// `PCI_FLB_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct PciEntry {
    /// PCI domain.
    pub domain: U32,
    /// Bus, device and function.
    pub bdf: U16,
    /// Zero.
    pub flags: U16,
}

const _: () = assert!(size_of::<PciEntry>() == 8);

/// One preserved network interface in the `pci-v1` FLB data.
///
/// | field | offset | size | meaning |
/// |---|---|---|---|
/// | `name` | 0 | 16 | interface name, NUL-padded (a valid [`IfName`]) |
/// | `ifindex` | 16 | 4 | interface index at preserve (0 if it could not be read) |
/// | `flags` | 20 | 4 | none defined; must be 0 |
///
/// Little-endian. Entries are strictly ascending by name. Changing this bumps
/// `PCI_FLB_COMPATIBLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct NetEntry {
    /// NUL-padded name.
    pub name: [u8; IFNAMSIZ],
    /// Interface index.
    pub ifindex: U32,
    /// Zero.
    pub flags: U32,
}

const _: () = assert!(size_of::<NetEntry>() == 24);

/// What tags a claim with the file that made it: the device and inode of the held file
/// (`st_dev`, `st_ino`). Unlike a descriptor number it stays the same whatever number the
/// held descriptor has in whichever luod process, and no two held files share it (the engine
/// refuses to preserve one file twice).
pub(crate) type Holder = (u64, u64);

/// The [`Holder`] tag of the held descriptor `fd`, or `None` if it cannot be read.
pub(crate) fn holder_of(fd: std::os::fd::BorrowedFd<'_>) -> Option<Holder> {
    rustix::fs::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino))
}

/// One tracked device.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    key: DeviceKey,
    /// The interface index of a netdev (0 for PCI functions).
    ifindex: u32,
    /// Which held file claimed the device, for outgoing entries: its [`Holder`] tag. See
    /// [`PciFlb::release_incoming`].
    holder: Option<Holder>,
}

/// A list of entries sorted by key, without duplicates.
#[derive(Debug, Default)]
struct Sorted(Vec<Entry>);

impl Sorted {
    fn find(&self, key: &DeviceKey) -> Result<usize, usize> {
        self.0.binary_search_by(|e| e.key.cmp(key))
    }

    fn contains(&self, key: &DeviceKey) -> bool {
        self.find(key).is_ok()
    }

    fn remove(&mut self, key: &DeviceKey) -> Option<Entry> {
        self.find(key).ok().map(|i| self.0.remove(i))
    }

    fn keys(&self) -> Vec<DeviceKey> {
        self.0.iter().map(|e| e.key.clone()).collect()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Devices held by outgoing files of this process.
    outgoing: Sorted,
    /// Devices handed to this process, until their files are finished.
    incoming: Sorted,
    /// The incoming half was rebuilt by [`Flb::retrieve`].
    retrieved: bool,
    /// Devices whose files finished before the incoming half was retrieved; retrieve leaves
    /// them out.
    finished_early: Vec<DeviceKey>,
}

/// The PCI FLB. See the [module](self) documentation.
///
/// It is shared (`Arc`) between the engine, which calls the [`Flb`] methods on the edges of the
/// file counts, and the [`PciDeviceHandler`](crate::PciDeviceHandler), which adds and removes
/// devices as their files are preserved, unpreserved and finished.
#[derive(Debug)]
pub struct PciFlb {
    root: PathBuf,
    state: Mutex<State>,
}

impl Default for PciFlb {
    fn default() -> PciFlb {
        PciFlb::new()
    }
}

impl PciFlb {
    /// The FLB over the real sysfs, `/sys`.
    pub fn new() -> PciFlb {
        PciFlb::with_sysfs_root("/sys")
    }

    /// The FLB over the sysfs tree at `root` (canonicalized, since the kernel reports the paths
    /// of open files canonically). Tests build fake trees with this.
    pub fn with_sysfs_root(root: impl Into<PathBuf>) -> PciFlb {
        let root = root.into();
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        PciFlb {
            root,
            state: Mutex::new(State::default()),
        }
    }

    /// The sysfs root.
    pub fn sysfs_root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True if an outgoing file of this process holds `key`.
    pub fn is_preserved(&self, key: &DeviceKey) -> bool {
        self.lock().outgoing.contains(key)
    }

    /// True if `key` was handed to this process and its file is not finished yet. False until
    /// the engine has retrieved the FLB (it does so before the first retrieve of a dependent
    /// file, and at the latest before the FLB's finish).
    pub fn is_incoming(&self, key: &DeviceKey) -> bool {
        self.lock().incoming.contains(key)
    }

    /// The devices outgoing files hold, in key order.
    pub fn outgoing_devices(&self) -> Vec<DeviceKey> {
        self.lock().outgoing.keys()
    }

    /// The incoming devices not finished yet, in key order.
    pub fn incoming_devices(&self) -> Vec<DeviceKey> {
        self.lock().incoming.keys()
    }

    /// The directory of the PCI function `addr`: `<root>/bus/pci/devices/<addr>`.
    pub fn pci_device_dir(&self, addr: PciAddress) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr.to_string())
    }

    /// The directory of the interface `name`: `<root>/class/net/<name>`.
    pub fn netdev_dir(&self, name: &IfName) -> PathBuf {
        self.root.join("class/net").join(name.as_str())
    }

    /// Adds `key` to the outgoing devices on behalf of the held descriptor number `holder`.
    ///
    /// `ENODEV` if the device is not in sysfs, `EINVAL` for a virtual function (its directory
    /// has a `physfn` link), `EBUSY` if it is already preserved.
    pub(crate) fn claim(&self, key: &DeviceKey, holder: Option<Holder>) -> Result<(), Error> {
        let ifindex = match key {
            DeviceKey::Pci(addr) => {
                let dir = self.pci_device_dir(*addr);
                if !dir.is_dir() {
                    return Err(Error::NoDevice(key.clone()));
                }
                if dir.join("physfn").symlink_metadata().is_ok() {
                    return Err(Error::VirtualFunction(key.clone()));
                }
                0
            }
            DeviceKey::Net(name) => {
                let dir = self.netdev_dir(name);
                if !dir.is_dir() {
                    return Err(Error::NoDevice(key.clone()));
                }
                read_ifindex(&dir.join("ifindex")).unwrap_or(0)
            }
        };
        let mut state = self.lock();
        match state.outgoing.find(key) {
            Ok(_) => Err(Error::AlreadyPreserved(key.clone())),
            Err(at) => {
                state.outgoing.0.insert(
                    at,
                    Entry {
                        key: key.clone(),
                        ifindex,
                        holder,
                    },
                );
                Ok(())
            }
        }
    }

    /// Removes `key` from the outgoing devices (its file was unpreserved).
    pub(crate) fn unclaim(&self, key: &DeviceKey) {
        self.lock().outgoing.remove(key);
    }

    /// The file that held `key` was finished: the device is no longer incoming.
    ///
    /// If the same held file (`holder`) also still claims `key` in the outgoing list, the
    /// file was handed off inside this process (the engine moves it to incoming without an
    /// unpreserve), and that claim is dropped too. No other live file has that tag, so a
    /// device preserved anew by another file is never touched.
    pub(crate) fn release_incoming(&self, key: &DeviceKey, holder: Option<Holder>) {
        let mut state = self.lock();
        if state.retrieved {
            state.incoming.remove(key);
        } else if let Err(at) = state.finished_early.binary_search(key) {
            state.finished_early.insert(at, key.clone());
        }
        if let Ok(i) = state.outgoing.find(key)
            && holder.is_some()
            && state.outgoing.0[i].holder == holder
        {
            state.outgoing.0.remove(i);
        }
    }

    /// The handler's freeze of the file holding `key`, tagged `holder`:
    /// an outgoing claim without a holder (rebuilt by [`restore_outgoing_state`] in a new luod
    /// binary) is taken over by that file, so its later finish can release it.
    ///
    /// [`restore_outgoing_state`]: PciFlb::restore_outgoing_state
    pub(crate) fn adopt(&self, key: &DeviceKey, holder: Option<Holder>) {
        let mut state = self.lock();
        if let Ok(i) = state.outgoing.find(key)
            && state.outgoing.0[i].holder.is_none()
        {
            state.outgoing.0[i].holder = holder;
        }
    }

    /// For an orchestrator upgrade (a new luod binary takes over live state): the incoming
    /// devices not finished yet, as `pci-v1` data, for the new binary's [`Flb::retrieve`].
    /// This is the FLB's `serialize_incoming`.
    pub fn incoming_state(&self) -> Vec<u8> {
        PciFlb::encode(&self.lock().incoming.0)
    }

    /// For an orchestrator upgrade: rebuilds the outgoing devices in the new binary from what
    /// [`Flb::serialize`] wrote in the old one, instead of [`Flb::preserve`]. This is the
    /// FLB's `restore_outgoing`. The claims have no holder until each file's next freeze.
    pub fn restore_outgoing_state(&self, data: &[u8]) -> Result<(), Error> {
        let entries = PciFlb::decode_entries(data)?;
        self.lock().outgoing = Sorted(entries);
        Ok(())
    }

    /// The outgoing devices as `pci-v1` data.
    fn encode(entries: &[Entry]) -> Vec<u8> {
        let (pci, net): (Vec<&Entry>, Vec<&Entry>) = entries
            .iter()
            .partition(|e| matches!(e.key, DeviceKey::Pci(_)));
        let header = PciFlbHeader {
            version: U32::new(PCI_FLB_VERSION),
            pci_count: U32::new(u32::try_from(pci.len()).unwrap_or(u32::MAX)),
            net_count: U32::new(u32::try_from(net.len()).unwrap_or(u32::MAX)),
            reserved: U32::new(0),
        };
        let mut out = header.as_bytes().to_vec();
        for e in entries {
            match &e.key {
                DeviceKey::Pci(a) => out.extend_from_slice(
                    PciEntry {
                        domain: U32::new(a.domain),
                        bdf: U16::new(a.bdf()),
                        flags: U16::new(0),
                    }
                    .as_bytes(),
                ),
                DeviceKey::Net(n) => out.extend_from_slice(
                    NetEntry {
                        name: n.to_padded(),
                        ifindex: U32::new(e.ifindex),
                        flags: U32::new(0),
                    }
                    .as_bytes(),
                ),
            }
        }
        out
    }

    /// Parses `pci-v1` data defensively: bounded length, exact size for the counts, known
    /// version, zero flags and reserved bits, valid names, strictly ascending keys.
    pub fn decode(data: &[u8]) -> Result<Vec<DeviceKey>, Error> {
        Ok(PciFlb::decode_entries(data)?
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    fn decode_entries(data: &[u8]) -> Result<Vec<Entry>, Error> {
        if data.len() > PCI_FLB_MAX_BYTES {
            return Err(Error::FlbData("length"));
        }
        let (header, rest) =
            PciFlbHeader::read_from_prefix(data).map_err(|_| Error::FlbData("header"))?;
        if header.version.get() != PCI_FLB_VERSION {
            return Err(Error::FlbData("version"));
        }
        if header.reserved.get() != 0 {
            return Err(Error::FlbData("reserved field"));
        }
        let pci_count =
            usize::try_from(header.pci_count.get()).map_err(|_| Error::FlbData("count"))?;
        let net_count =
            usize::try_from(header.net_count.get()).map_err(|_| Error::FlbData("count"))?;
        let pci_len = pci_count
            .checked_mul(size_of::<PciEntry>())
            .ok_or(Error::FlbData("count"))?;
        let net_len = net_count
            .checked_mul(size_of::<NetEntry>())
            .ok_or(Error::FlbData("count"))?;
        if pci_len.checked_add(net_len) != Some(rest.len()) {
            return Err(Error::FlbData("length"));
        }
        let (pci_bytes, net_bytes) = rest.split_at(pci_len);
        let pci = <[PciEntry]>::ref_from_bytes(pci_bytes).map_err(|_| Error::FlbData("length"))?;
        let net = <[NetEntry]>::ref_from_bytes(net_bytes).map_err(|_| Error::FlbData("length"))?;

        let mut out: Vec<Entry> = Vec::with_capacity(pci_count + net_count);
        for e in pci {
            if e.flags.get() != 0 {
                return Err(Error::FlbData("PCI entry flags"));
            }
            let [bus, devfn] = e.bdf.get().to_be_bytes();
            out.push(Entry {
                key: DeviceKey::Pci(PciAddress {
                    domain: e.domain.get(),
                    bus,
                    devfn,
                }),
                ifindex: 0,
                holder: None,
            });
        }
        for e in net {
            if e.flags.get() != 0 {
                return Err(Error::FlbData("netdev entry flags"));
            }
            let name = IfName::from_padded(&e.name).map_err(|_| Error::FlbData("netdev name"))?;
            out.push(Entry {
                key: DeviceKey::Net(name),
                ifindex: e.ifindex.get(),
                holder: None,
            });
        }
        if out.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(Error::FlbData("order"));
        }
        Ok(out)
    }
}

/// Reads an `ifindex` file (a decimal number and a newline).
pub(crate) fn read_ifindex(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(32).read_to_string(&mut text))
        .ok()?;
    text.trim().parse().ok()
}

impl Flb for PciFlb {
    fn compatible(&self) -> &str {
        PCI_FLB_COMPATIBLE
    }

    fn preserve(&self) -> Result<(), HandlerError> {
        // The device list is kept live as files come and go; the first file needs nothing.
        Ok(())
    }

    fn unpreserve(&self) {
        // The last outgoing file is gone; each took its own device with it, so this only drops
        // anything left behind.
        self.lock().outgoing.0.clear();
    }

    fn serialize(&self) -> Vec<u8> {
        PciFlb::encode(&self.lock().outgoing.0)
    }

    fn retrieve(&self, data: &[u8]) -> Result<(), HandlerError> {
        let entries = PciFlb::decode_entries(data)?;
        let mut state = self.lock();
        let early = std::mem::take(&mut state.finished_early);
        // Merge rather than replace: a second retrieve (more sessions handed over while the
        // incoming half is live) must not forget devices still incoming from the first.
        for e in entries {
            if early.binary_search(&e.key).is_ok() {
                continue;
            }
            if let Err(at) = state.incoming.find(&e.key) {
                state.incoming.0.insert(at, e);
            }
        }
        state.retrieved = true;
        Ok(())
    }

    fn finish(&self) {
        let mut state = self.lock();
        state.incoming.0.clear();
        state.finished_early.clear();
        state.retrieved = false;
    }

    fn serialize_incoming(&self) -> Vec<u8> {
        self.incoming_state()
    }

    fn restore_outgoing(&self, data: &[u8]) -> Result<(), HandlerError> {
        self.restore_outgoing_state(data)
            .map_err(HandlerError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(s: &str) -> DeviceKey {
        DeviceKey::Pci(s.parse().expect("valid address"))
    }

    #[test]
    fn address_parse_and_display() {
        let a: PciAddress = "0000:00:03.0".parse().expect("valid");
        assert_eq!(a.bdf(), 0x0018);
        assert_eq!(a.key(), 0x18);
        assert_eq!(a.to_string(), "0000:00:03.0");
        let b: PciAddress = "10000:e1:1f.7".parse().expect("valid");
        assert_eq!(b.key(), (0x10000 << 16) | 0xe1ff);
        assert_eq!(PciAddress::from_key(b.key()), Some(b));
        for bad in [
            "",
            "0000:00:03",
            "000:00:03.0",
            "0000:0:03.0",
            "0000:00:20.0",
            "0000:00:03.8",
            "0000:00:03.0x",
            "g000:00:03.0",
            "0000:00:03.0:1",
            "123456789:00:00.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn key_order_is_numeric() {
        let mut keys = [
            pci("0001:00:00.0"),
            pci("0000:01:00.0"),
            pci("0000:00:1f.7"),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                pci("0000:00:1f.7"),
                pci("0000:01:00.0"),
                pci("0001:00:00.0")
            ]
        );
        let net = DeviceKey::Net(IfName::new("a").expect("valid"));
        assert!(pci("ffff:ff:1f.7") < net);
    }

    #[test]
    fn ifname_rules() {
        for good in ["lo", "eth0", "a", "x23456789012345"] {
            let n = IfName::new(good).expect(good);
            assert_eq!(IfName::from_padded(&n.to_padded()).expect("round trip"), n);
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "x234567890123456"] {
            assert!(IfName::new(bad).is_err(), "{bad}");
        }
        let mut padded = IfName::new("lo").expect("valid").to_padded();
        padded[5] = b'x';
        assert!(IfName::from_padded(&padded).is_err(), "garbage after NUL");
        assert!(IfName::from_padded(&[b'a'; IFNAMSIZ]).is_err(), "no NUL");
    }

    fn entries(keys: &[DeviceKey]) -> Vec<Entry> {
        keys.iter()
            .map(|k| Entry {
                key: k.clone(),
                ifindex: 0,
                holder: None,
            })
            .collect()
    }

    #[test]
    fn data_round_trips() {
        let keys = vec![
            pci("0000:00:01.0"),
            pci("0000:00:03.0"),
            pci("0001:00:00.0"),
            DeviceKey::Net(IfName::new("eth0").expect("valid")),
            DeviceKey::Net(IfName::new("lo").expect("valid")),
        ];
        let data = PciFlb::encode(&entries(&keys));
        assert_eq!(data.len(), 16 + 3 * 8 + 2 * 24);
        assert_eq!(PciFlb::decode(&data).expect("valid"), keys);
        assert_eq!(PciFlb::decode(&PciFlb::encode(&[])).expect("empty"), vec![]);
    }

    #[test]
    fn data_rejects_malformed() {
        let keys = vec![pci("0000:00:01.0"), pci("0000:00:03.0")];
        let good = PciFlb::encode(&entries(&keys));
        let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut d = good.clone();
            f(&mut d);
            PciFlb::decode(&d)
        };
        assert!(mutate(&|d| d.truncate(15)).is_err(), "short header");
        assert!(mutate(&|d| d.truncate(20)).is_err(), "short entries");
        assert!(mutate(&|d| d.push(0)).is_err(), "trailing byte");
        assert!(mutate(&|d| d[0] = 2).is_err(), "version");
        assert!(mutate(&|d| d[12] = 1).is_err(), "reserved");
        assert!(mutate(&|d| d[4] = 3).is_err(), "count");
        assert!(mutate(&|d| d[4..8].copy_from_slice(&u32::MAX.to_le_bytes())).is_err());
        assert!(mutate(&|d| d[8..12].copy_from_slice(&u32::MAX.to_le_bytes())).is_err());
        assert!(mutate(&|d| d[22] = 1).is_err(), "entry flags");
        let swapped = PciFlb::encode(&entries(&[keys[1].clone(), keys[0].clone()]));
        assert!(PciFlb::decode(&swapped).is_err(), "order");
        let dup = PciFlb::encode(&entries(&[keys[0].clone(), keys[0].clone()]));
        assert!(PciFlb::decode(&dup).is_err(), "duplicate");
        let mut net = PciFlb::encode(&entries(&[DeviceKey::Net(IfName::new("lo").expect("ok"))]));
        net[16] = b'/';
        assert!(PciFlb::decode(&net).is_err(), "bad name");
        let err = PciFlb::decode(&[]).expect_err("empty");
        assert_eq!(err.errno(), luo_abi::Errno::EINVAL);
    }

    #[test]
    fn upgrade_carries_both_halves() {
        let old = PciFlb::with_sysfs_root("/nonexistent");
        let out = vec![pci("0000:00:01.0"), pci("0000:00:02.0")];
        let inc = vec![pci("0000:00:05.0")];
        old.retrieve(&PciFlb::encode(&entries(&inc)))
            .expect("valid");
        let new = PciFlb::with_sysfs_root("/nonexistent");
        new.restore_outgoing_state(&PciFlb::encode(&entries(&out)))
            .expect("valid");
        new.retrieve(&old.incoming_state()).expect("valid");
        assert_eq!(new.outgoing_devices(), out);
        assert_eq!(new.incoming_devices(), inc);
        // A restored claim has no holder until the file's freeze adopts it; then the file's
        // finish after an in-process handoff releases it.
        new.release_incoming(&out[0], Some((1, 40)));
        assert!(new.is_preserved(&out[0]));
        new.adopt(&out[0], Some((1, 40)));
        new.adopt(&out[0], Some((1, 41)));
        new.release_incoming(&out[0], Some((1, 41)));
        assert!(
            new.is_preserved(&out[0]),
            "adopted by the first holder only"
        );
        new.release_incoming(&out[0], Some((1, 40)));
        assert!(!new.is_preserved(&out[0]));
        assert!(new.restore_outgoing_state(&[1, 2, 3]).is_err());
    }

    #[test]
    fn finish_before_retrieve_is_remembered() {
        let flb = PciFlb::with_sysfs_root("/nonexistent");
        let keys = vec![pci("0000:00:01.0"), pci("0000:00:03.0")];
        let data = PciFlb::encode(&entries(&keys));
        flb.release_incoming(&keys[0], Some((1, 100)));
        flb.retrieve(&data).expect("valid data");
        assert_eq!(flb.incoming_devices(), vec![keys[1].clone()]);
        flb.release_incoming(&keys[1], Some((1, 101)));
        assert!(flb.incoming_devices().is_empty());
        // A later retrieve adds to the incoming devices.
        flb.retrieve(&PciFlb::encode(&entries(&keys[..1])))
            .expect("valid");
        flb.retrieve(&PciFlb::encode(&entries(&keys[1..])))
            .expect("valid");
        assert_eq!(flb.incoming_devices(), keys);
        flb.finish();
        assert!(!flb.is_incoming(&keys[1]));
    }
}
