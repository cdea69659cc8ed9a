#![allow(clippy::reversed_empty_ranges, clippy::single_range_in_vec_init)]
//! Conversions on real guest memory objects: every alignment and size on 1 GiB pages (split and
//! merge visible in the geometry), attributes exactly as a per-unit model predicts (a property
//! test), `EBUSY` while mapped, `EINVAL` for bad ranges, and the descriptor always in step.
//!
//! The 1 GiB tests reserve two pages under the shared pool lock and put the pool back after;
//! without root or free contiguous memory they say why and skip (`LUO_REQUIRE_ALL=1` fails).

mod common;

use std::ops::Range;

use common::{HugePages, skip};
use luo_guestmem::{Attr, Descriptor, GuestMemory, PageSize, UNIT};
use proptest::prelude::*;
use rustix::io::Errno;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Checks everything the object says about itself against a per-unit model.
fn check_against(mem: &GuestMemory, model: &[bool]) {
    // Attribute ranges exactly as the model's runs of private units.
    let mut want: Vec<Range<u64>> = Vec::new();
    let mut i = 0;
    while i < model.len() {
        if model[i] {
            let s = i;
            while i < model.len() && model[i] {
                i += 1;
            }
            want.push(s as u64 * UNIT..i as u64 * UNIT);
        } else {
            i += 1;
        }
    }
    let got: Vec<Range<u64>> = mem.attrs().private_ranges().collect();
    assert_eq!(got, want, "attribute ranges");
    // Split pages: exactly the huge pages whose units are mixed.
    let page = mem.page_size().bytes();
    let per = (page / UNIT) as usize;
    let geo = mem.geometry();
    let want_split: Vec<u64> = if mem.page_size().is_huge() {
        model
            .chunks(per)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b) && !c.iter().all(|&b| b))
            .map(|(i, _)| i as u64)
            .collect()
    } else {
        Vec::new()
    };
    assert_eq!(geo.split, want_split, "split pages");
    assert_eq!(geo.intact() + geo.split.len() as u64, geo.pages);
    // The descriptor memfd says the same.
    let d = Descriptor::read(mem.descriptor_fd()).expect("descriptor");
    assert_eq!(d, mem.to_descriptor());
    assert_eq!(d.split, geo.split);
}

fn apply(model: &mut [bool], r: &Range<u64>, attr: Attr) {
    for u in (r.start / UNIT)..(r.end / UNIT) {
        model[u as usize] = attr == Attr::Private;
    }
}

/// A 2 GiB object and the pool guard that reserved its pages. The fields drop in order: the
/// memory goes back to the pool before the pool shrinks.
struct Object {
    mem: GuestMemory,
    _pool: Option<HugePages>,
}

/// A 2 GiB object on `page` pages, or the reason it cannot be had.
fn object(page: PageSize) -> Result<Object, String> {
    let pool = HugePages::reserve(page, (2 * GIB) / page.bytes())?;
    let mem = GuestMemory::create(2 * GIB, page).map_err(|e| e.to_string())?;
    Ok(Object { mem, _pool: pool })
}

/// Offsets of every alignment class around the interesting boundaries of a 2 GiB object on
/// 1 GiB pages: 4 KiB, 64 KiB, 2 MiB and 1 GiB aligned, just before and after each page
/// boundary.
fn offsets() -> Vec<u64> {
    let mut v = vec![
        0,
        UNIT,
        16 * UNIT,
        2 * MIB - UNIT,
        2 * MIB,
        2 * MIB + UNIT,
        512 * MIB,
        GIB - 2 * MIB,
        GIB - UNIT,
        GIB,
        GIB + UNIT,
        GIB + 2 * MIB,
        2 * GIB - 2 * MIB,
        2 * GIB - UNIT,
        2 * GIB,
    ];
    v.sort_unstable();
    v
}

#[test]
fn every_alignment_and_size_splits_and_merges_1g() {
    let mut obj = match object(PageSize::Huge1G) {
        Ok(o) => o,
        Err(why) => return skip("every_alignment_and_size_splits_and_merges_1g", &why),
    };
    let mem = &mut obj.mem;
    assert_eq!(mem.geometry().pages, 2);
    let mut model = vec![false; (2 * GIB / UNIT) as usize];
    let offs = offsets();
    let mut cases = 0;
    for &s in &offs {
        for &e in &offs {
            if e <= s {
                continue;
            }
            let r = s..e;
            mem.convert(r.clone(), Attr::Private).expect("to private");
            apply(&mut model, &r, Attr::Private);
            // Split exactly where the range cuts a page; merged where it covers one.
            let split = mem.geometry().split;
            for p in 0..2u64 {
                let page = p * GIB..(p + 1) * GIB;
                let cut = (s > page.start && s < page.end) || (e > page.start && e < page.end);
                assert_eq!(split.contains(&p), cut, "page {p} after {s:#x}..{e:#x}");
            }
            check_against(mem, &model);
            mem.convert(r.clone(), Attr::Shared).expect("to shared");
            apply(&mut model, &r, Attr::Shared);
            assert!(
                mem.geometry().split.is_empty(),
                "merged back after {s:#x}..{e:#x}"
            );
            assert!(mem.attrs().is_empty());
            cases += 1;
        }
    }
    assert!(cases > 90, "{cases} ranges");
    check_against(mem, &model);
}

#[test]
fn busy_while_mapped_and_einval_for_bad_ranges() {
    for page in [PageSize::Base4K, PageSize::Huge1G] {
        let mut obj = match object(page) {
            Ok(o) => o,
            Err(why) => return skip("busy_while_mapped_and_einval_for_bad_ranges", &why),
        };
        let mem = &mut obj.mem;
        let p = page.bytes();
        // Bad ranges: unaligned, empty, reversed, outside.
        for r in [
            0..1,
            1..UNIT,
            UNIT..UNIT,
            2 * UNIT..UNIT,
            2 * GIB - UNIT..2 * GIB + UNIT,
            2 * GIB..2 * GIB + UNIT,
            u64::MAX - UNIT + 1..u64::MAX,
        ] {
            for attr in [Attr::Private, Attr::Shared] {
                let e = mem.convert(r.clone(), attr).expect_err("bad range");
                assert_eq!(e.errno(), Errno::INVAL, "{r:?} {attr:?}");
            }
        }
        // Mappings are whole backing pages.
        if page.is_huge() {
            assert_eq!(
                mem.map(0..UNIT).expect_err("partial huge page").errno(),
                Errno::INVAL
            );
        }
        let mut map = mem.map(0..p).expect("map");
        map.write(8, b"shared!").expect("write");
        // Nothing in the mapped range may become private; shared conversions are fine.
        for r in [0..UNIT, p - UNIT..p + UNIT, 0..2 * GIB] {
            let e = mem.convert(r.clone(), Attr::Private).expect_err("mapped");
            assert_eq!(e.errno(), Errno::BUSY, "{r:?}");
        }
        mem.convert(0..UNIT, Attr::Shared)
            .expect("shared stays allowed");
        assert!(
            mem.attrs().is_empty(),
            "a refused conversion changes nothing"
        );
        mem.convert(p..p + UNIT, Attr::Private)
            .expect("outside the mapping");
        // A range holding a private unit cannot be mapped (the host may not fault it).
        assert_eq!(
            mem.map(p..2 * p).expect_err("private").errno(),
            Errno::ACCESS
        );
        assert_eq!(mem.mapping_count(), 1);
        drop(map);
        assert_eq!(mem.mapping_count(), 0);
        mem.convert(0..UNIT, Attr::Private).expect("unmapped now");
        assert_eq!(mem.attr_at(0), Attr::Private);
        assert_eq!(mem.attr_at(2 * p), Attr::Shared);
    }
}

#[test]
fn empty_pool_error_says_how_to_reserve() {
    let pool = luo_guestmem::Pool::read(PageSize::Huge1G);
    let pages = pool.free + 1;
    let e = GuestMemory::create(pages * GIB, PageSize::Huge1G).expect_err("not enough pages");
    assert_eq!(e.errno(), Errno::NOMEM);
    let msg = e.to_string();
    assert!(
        msg.contains("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"),
        "{msg}"
    );
    assert!(msg.contains(&format!("echo {}", pool.total + 1)), "{msg}");
}

/// One conversion of the property test: a range built from an alignment class and a size
/// class, then clipped into the object.
fn conversion() -> impl Strategy<Value = (Range<u64>, Attr)> {
    let align = prop_oneof![Just(UNIT), Just(16 * UNIT), Just(2 * MIB), Just(GIB)];
    let size = prop_oneof![
        (1u64..4).prop_map(|n| n * UNIT),
        (1u64..600).prop_map(|n| n * UNIT),
        (1u64..3).prop_map(|n| n * 2 * MIB),
        (1u64..1024).prop_map(|n| n * 2 * MIB - UNIT),
        Just(GIB),
        Just(GIB + UNIT),
    ];
    let jitter = prop_oneof![Just(0i64), Just(-(UNIT as i64)), Just(UNIT as i64)];
    (align, 0u64..(2 * GIB / UNIT), size, jitter, any::<bool>()).prop_map(
        |(align, pos, size, jitter, private)| {
            let base = (pos * UNIT / align) * align;
            let start = base.saturating_add_signed(jitter).min(2 * GIB - UNIT);
            let end = (start + size).min(2 * GIB);
            let attr = if private { Attr::Private } else { Attr::Shared };
            (start..end, attr)
        },
    )
}

fn model_test(page: PageSize, ops: &[(Range<u64>, Attr)], mem: &mut GuestMemory) {
    mem.convert(0..2 * GIB, Attr::Shared).expect("reset");
    let mut model = vec![false; (2 * GIB / UNIT) as usize];
    for (r, attr) in ops {
        mem.convert(r.clone(), *attr).expect("convert");
        apply(&mut model, r, *attr);
        check_against(mem, &model);
    }
    let _ = page;
}

#[test]
fn attributes_follow_a_per_unit_model_1g() {
    let mut obj = match object(PageSize::Huge1G) {
        Ok(o) => o,
        Err(why) => return skip("attributes_follow_a_per_unit_model_1g", &why),
    };
    let mem = std::cell::RefCell::new(&mut obj.mem);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
    runner
        .run(&proptest::collection::vec(conversion(), 1..12), |ops| {
            model_test(PageSize::Huge1G, &ops, &mut mem.borrow_mut());
            Ok(())
        })
        .expect("property");
}

#[test]
fn attributes_follow_a_per_unit_model_4k() {
    // Sparse: 2 GiB of 4 KiB pages that are never touched cost nothing.
    let mem = GuestMemory::create(2 * GIB, PageSize::Base4K).expect("create");
    let mem = std::cell::RefCell::new(mem);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(32));
    runner
        .run(&proptest::collection::vec(conversion(), 1..12), |ops| {
            model_test(PageSize::Base4K, &ops, &mut mem.borrow_mut());
            Ok(())
        })
        .expect("property");
}

#[test]
fn reopen_checks_ram_and_descriptor_agree() {
    let mut a = GuestMemory::create(8 * MIB, PageSize::Base4K).expect("create");
    a.convert(UNIT..3 * UNIT, Attr::Private).expect("convert");
    a.set_ram_token(7).expect("token");
    let b = GuestMemory::create(16 * MIB, PageSize::Base4K).expect("create");
    // b's RAM with a's descriptor: sizes differ.
    let ram = rustix::io::fcntl_dupfd_cloexec(b.ram_fd(), 3).expect("dup");
    let e = GuestMemory::open(ram, a.descriptor_fd()).expect_err("mismatch");
    assert_eq!(e.errno(), Errno::INVAL);
    let ram = rustix::io::fcntl_dupfd_cloexec(a.ram_fd(), 3).expect("dup");
    let c = GuestMemory::open(ram, a.descriptor_fd()).expect("open");
    assert_eq!(c.to_descriptor(), a.to_descriptor());
    assert_eq!(c.ram_token(), Some(7));
    // A descriptor that is not one.
    let junk = rustix::fs::memfd_create("junk", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::io::write(&junk, &[0u8; 100]).expect("write");
    let ram = rustix::io::fcntl_dupfd_cloexec(a.ram_fd(), 3).expect("dup");
    assert_eq!(
        GuestMemory::open(ram, junk.as_fd_for_test())
            .expect_err("junk")
            .errno(),
        Errno::INVAL
    );
}

trait AsFdForTest {
    fn as_fd_for_test(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl AsFdForTest for std::os::fd::OwnedFd {
    fn as_fd_for_test(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}
