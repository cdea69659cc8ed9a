//! The guestmem-v1 handler on real guest memory descriptors: it wins over memfd-v1 for them,
//! records exactly the state at freeze, refuses malformed ones, and retrieve gives a sealed
//! memfd a successor rebuilds the same object from.

mod common;

use std::os::fd::AsFd;

use common::preserve;
use luo_abi::Errno;
use luo_core::{FileHandler, RetrieveStatus};
use luo_guestmem::{Attr, Descriptor, GuestMemory, PageSize};
use luo_handlers::{GUESTMEM_COMPATIBLE, GuestmemHandler, MemfdHandler, default_handlers};
use rustix::fs::{MemfdFlags, SealFlags};

#[test]
fn descriptor_goes_to_guestmem_and_ram_to_memfd() {
    let mem = GuestMemory::create(4 << 20, PageSize::Base4K).expect("create");
    let d = default_handlers();
    let owner = |fd: std::os::fd::BorrowedFd<'_>| {
        d.handlers
            .iter()
            .find(|h| h.can_preserve(fd))
            .map(|h| h.compatible().to_owned())
    };
    assert_eq!(
        owner(mem.descriptor_fd()).as_deref(),
        Some(GUESTMEM_COMPATIBLE)
    );
    assert_eq!(owner(mem.ram_fd()).as_deref(), Some("memfd-v1"));
    // memfd-v1 alone would take the descriptor: hence guestmem-v1 is registered first.
    assert!(MemfdHandler::new().can_preserve(mem.descriptor_fd()));

    // A memfd with the name but not the magic, or the magic but not the name, is not one.
    let h = GuestmemHandler::new();
    let named = rustix::fs::memfd_create("luo-guestmem", MemfdFlags::CLOEXEC).expect("memfd");
    rustix::io::write(&named, b"NOTMAGIC and more").expect("write");
    assert!(!h.can_preserve(named.as_fd()));
    let other = rustix::fs::memfd_create("other", MemfdFlags::CLOEXEC).expect("memfd");
    rustix::io::write(&other, &luo_guestmem::descriptor::MAGIC).expect("write");
    assert!(!h.can_preserve(other.as_fd()));
}

#[test]
fn records_state_at_freeze_and_retrieves_it_sealed() {
    let mut mem = GuestMemory::create(8 << 20, PageSize::Base4K).expect("create");
    mem.convert(0x1000..0x3000, Attr::Private).expect("convert");
    mem.set_ram_token(11).expect("token");
    let h = GuestmemHandler::new();
    let mut file = preserve(&h, mem.descriptor_fd(), 2);
    let (at_preserve, _) = Descriptor::parse(&file.record).expect("record");
    assert_eq!(at_preserve, mem.to_descriptor());

    // The VMM converts more before handing off: freeze records the new state.
    mem.convert(0x10_0000..0x20_0000, Attr::Private)
        .expect("convert");
    mem.convert(0x2000..0x3000, Attr::Shared).expect("convert");
    h.freeze(&mut file).expect("freeze");
    let want = mem.to_descriptor();
    drop(mem);

    let out = h.retrieve(&file).expect("retrieve");
    let seals = rustix::fs::fcntl_get_seals(&out).expect("seals");
    assert!(
        seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
    );
    assert!(
        h.can_preserve(out.as_fd()),
        "the retrieved copy is a descriptor too"
    );
    assert_eq!(Descriptor::read(out.as_fd()).expect("read"), want);
    assert_eq!(
        want.attrs.private_ranges().collect::<Vec<_>>(),
        [0x1000..0x2000, 0x10_0000..0x20_0000]
    );
    h.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn malformed_descriptors_are_refused() {
    let mem = GuestMemory::create(4 << 20, PageSize::Base4K).expect("create");
    let h = GuestmemHandler::new();
    let good = mem.to_descriptor().encode(0);
    // A memfd with the right name whose bytes break the layout (here: a flipped size byte, so
    // the checksum no longer matches).
    let bad = rustix::fs::memfd_create("luo-guestmem", MemfdFlags::CLOEXEC).expect("memfd");
    let mut bytes = good.clone();
    bytes[24] ^= 0x10;
    rustix::io::write(&bad, &bytes).expect("write");
    assert!(h.can_preserve(bad.as_fd()));
    assert_eq!(
        h.preserve(bad.as_fd()).expect_err("bad").errno,
        Errno::EINVAL
    );

    // Valid at preserve, corrupted before freeze: the freeze (so the handoff) fails.
    let fd = rustix::fs::memfd_create("luo-guestmem", MemfdFlags::CLOEXEC).expect("memfd");
    rustix::io::write(&fd, &good).expect("write");
    let mut file = preserve(&h, fd.as_fd(), 1);
    rustix::io::pwrite(&fd, &[0xff; 4], 72 - 8).expect("pwrite crc");
    assert_eq!(
        h.freeze(&mut file).expect_err("corrupt").errno,
        Errno::EINVAL
    );
    // A descriptor left mid-update (odd sequence) is busy, not accepted.
    rustix::io::pwrite(&fd, &good, 0).expect("restore");
    rustix::io::pwrite(&fd, &1u64.to_le_bytes(), 16).expect("odd seq");
    assert_eq!(h.freeze(&mut file).expect_err("busy").errno, Errno::EBUSY);

    // A forged record is refused on retrieve.
    file.record[0] = b'X';
    assert_eq!(h.retrieve(&file).expect_err("forged").errno, Errno::EINVAL);
    h.finish(&mut file, RetrieveStatus::Failed(Errno::EINVAL));
}
