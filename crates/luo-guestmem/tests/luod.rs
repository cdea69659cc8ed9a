//! Guest memory crossing a real luod: a VMM-like owner preserves the RAM (1 GiB pages) and the
//! descriptor, converts once more, hands the session off and goes away; luod itself is upgraded
//! to a new process; a successor retrieves both files and rebuilds exactly the same object —
//! page size, geometry, attributes — on the same pages, whose contents were never copied.

mod common;

use common::{HugePages, Luod, skip};
use luo_client::Device;
use luo_guestmem::{Attr, GuestMemory, PageSize, UNIT};

const GIB: u64 = 1 << 30;

fn marker(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6c75_6f64
}

#[test]
fn state_crosses_a_handoff_and_a_luod_upgrade() {
    // Declared first, dropped last: the pool shrinks after luod let go of the pages.
    let _pool = match HugePages::reserve(PageSize::Huge1G, 2) {
        Ok(p) => p,
        Err(why) => return skip("state_crosses_a_handoff_and_a_luod_upgrade", &why),
    };
    let mut luod = Luod::start("handoff");

    let mut mem = GuestMemory::create(2 * GIB, PageSize::Huge1G).expect("create");
    {
        let mut map = mem.map(GIB..2 * GIB).expect("map page 1");
        for i in 0..GIB / UNIT {
            map.write((i * UNIT) as usize, &marker(i).to_le_bytes())
                .expect("write");
        }
    }
    // Page 0 split by ranges at odd alignments; page 1 all private (intact).
    mem.convert(UNIT..3 * UNIT, Attr::Private).expect("convert");
    mem.convert((2 << 20) - UNIT..(2 << 20) + UNIT, Attr::Private)
        .expect("convert");
    mem.convert(GIB..2 * GIB, Attr::Private).expect("convert");
    mem.set_ram_token(1).expect("token");

    let device = Device::open_at(&luod.socket).expect("device");
    let session = device.create_session("vm-guestmem").expect("session");
    drop(device);
    session.preserve(mem.ram_fd(), 1).expect("preserve RAM");
    session
        .preserve(mem.descriptor_fd(), 2)
        .expect("preserve descriptor");
    // After preserve, before handoff: the freeze must pick this up.
    mem.convert(GIB - UNIT..GIB, Attr::Private)
        .expect("convert");
    let want = mem.to_descriptor();
    assert_eq!(want.split, [0]);
    session.handoff().expect("handoff");
    drop(session);
    drop(mem);

    luod.upgrade();

    let device = Device::open_at(&luod.socket).expect("device");
    let session = device
        .retrieve_session("vm-guestmem")
        .expect("retrieve session");
    let desc = session.retrieve(2).expect("retrieve descriptor");
    let d = luo_guestmem::Descriptor::read(std::os::fd::AsFd::as_fd(&desc)).expect("read");
    let token = d.ram_token.expect("RAM token recorded");
    let ram = session.retrieve(token).expect("retrieve RAM");
    let mut back = GuestMemory::open(ram, std::os::fd::AsFd::as_fd(&desc)).expect("open");
    assert_eq!(back.to_descriptor(), want, "geometry and attributes");
    assert_eq!(back.page_size(), PageSize::Huge1G);
    let geo = back.geometry();
    assert_eq!((geo.pages, geo.intact(), geo.split), (2, 1, vec![0]));
    assert_eq!(back.attr_at(2 * UNIT), Attr::Private);
    assert_eq!(back.attr_at(3 * UNIT), Attr::Shared);

    // The same pages: the markers written before the handoff are there.
    back.convert(GIB..2 * GIB, Attr::Shared).expect("convert");
    let map = back.map(GIB..2 * GIB).expect("map");
    for i in 0..GIB / UNIT {
        assert_eq!(
            map.read_u64((i * UNIT) as usize),
            Some(marker(i)),
            "unit {i}"
        );
    }
    drop(map);
    session.finish().expect("finish");
    drop(back);
}
