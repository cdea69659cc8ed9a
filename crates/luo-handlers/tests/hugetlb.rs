//! The hugetlb memfd handler on real huge pages: 2 MiB and 1 GiB.
//!
//! Each test grows the global pool by the pages it needs and shrinks it back when it ends
//! (also on failure), under a file lock so tests never fight over the pool. Without root, or
//! when the pool cannot grow, the tests say why and skip; with `LUO_REQUIRE_ALL=1` they fail.

mod common;

use std::os::fd::AsFd;

use common::{HugePages, block_marker, inode, mapper, position, preserve, skip};
use luo_abi::Errno;
use luo_core::{FileHandler, RetrieveStatus};
use luo_handlers::{HugetlbHandler, HugetlbRecord, MemfdHandler};
use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::U64;

/// Reads the 8-byte marker at the start of every 4 KiB block of `fd` with `pread` and checks it.
fn check_markers(fd: impl AsFd, len: u64, seed: u64) {
    let mut buf = [0u8; 8];
    for block in 0..len / 4096 {
        let n = rustix::io::pread(fd.as_fd(), &mut buf, block * 4096).expect("pread");
        assert_eq!(n, 8);
        assert_eq!(
            u64::from_le_bytes(buf),
            block_marker(block, seed),
            "block {block} through read()"
        );
    }
}

fn round_trip(test: &str, kib: u64, pages: u64, size_flag: MemfdFlags) {
    // Declared first, dropped last: the pool shrinks only after every descriptor is closed.
    let _pool = match HugePages::reserve(kib, pages) {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let page = kib << 10;
    let len = page * pages;
    let seed = 0x5eed ^ kib;

    let memfd = rustix::fs::memfd_create(
        "luo-huge",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB | size_flag,
    )
    .expect("memfd_create");
    rustix::fs::ftruncate(&memfd, len).expect("ftruncate");
    // hugetlbfs has no write(): the pattern goes in through a mapping.
    match mapper(memfd.as_fd(), len, "fill", seed) {
        Ok(_) => {}
        Err(why) => return skip(test, &why),
    }
    rustix::fs::seek(&memfd, SeekFrom::Start(page / 2)).expect("lseek");
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).expect("seal");

    let handler = HugetlbHandler::new();
    assert!(
        !MemfdHandler::new().can_preserve(memfd.as_fd()),
        "not a shmem memfd"
    );
    assert!(handler.can_preserve(memfd.as_fd()));
    let p = handler.preserve(memfd.as_fd()).expect("preserve");
    assert_eq!(p.bytes, len);
    let mut file = luo_core::FileData {
        token: 1,
        fd: p.fd,
        record: p.record,
    };
    rustix::fs::seek(&memfd, SeekFrom::Start(page / 4)).expect("lseek");
    handler.freeze(&mut file).expect("freeze");
    let rec = HugetlbRecord::parse(&file.record).expect("record");
    assert_eq!(rec.page_size.get(), page);
    assert_eq!(rec.size.get(), len);
    assert_eq!(rec.pos.get(), page / 4);
    drop(memfd); // the client is gone; the held descriptor keeps the pages

    let retrieved = handler.retrieve(&file).expect("retrieve");
    let st = rustix::fs::fstat(&retrieved).expect("fstat");
    assert_eq!(st.st_size as u64, len);
    assert_eq!(inode(&retrieved), inode(&file.fd));
    assert_eq!(position(&retrieved), page / 4);
    let sfs = rustix::fs::fstatfs(&retrieved).expect("fstatfs");
    assert_eq!(sfs.f_bsize as u64, page, "page size");
    assert!(
        rustix::fs::fcntl_get_seals(&retrieved)
            .expect("seals")
            .contains(SealFlags::SHRINK | SealFlags::GROW)
    );
    check_markers(&retrieved, len, seed);
    match mapper(retrieved.as_fd(), len, "check", seed) {
        Ok(out) => assert_eq!(out, "ok"),
        Err(why) => skip(test, &why),
    }

    // A record claiming another page size is refused.
    let mut wrong = rec;
    wrong.page_size = U64::new(if page == 2 << 20 { 1 << 30 } else { 2 << 20 });
    wrong.size = U64::new(0);
    let mut forged = luo_core::FileData {
        token: 2,
        fd: rustix::io::fcntl_dupfd_cloexec(&file.fd, 0).expect("dup"),
        record: wrong.as_bytes().to_vec(),
    };
    let err = handler.retrieve(&forged).expect_err("wrong page size");
    assert_eq!(err.errno, Errno::EINVAL);
    handler.finish(&mut forged, RetrieveStatus::Failed(Errno::EINVAL));

    handler.finish(&mut file, RetrieveStatus::Retrieved);
    drop(retrieved);
    drop(file);
    drop(forged);
}

#[test]
fn hugetlb_2m_memfd_round_trip() {
    round_trip("hugetlb_2m_memfd_round_trip", 2048, 2, MemfdFlags::HUGE_2MB);
}

#[test]
fn hugetlb_1g_memfd_round_trip() {
    round_trip(
        "hugetlb_1g_memfd_round_trip",
        1 << 20,
        1,
        MemfdFlags::HUGE_1GB,
    );
}

#[test]
fn hugetlb_identity_and_never_retrieved_finish() {
    let _pool = match HugePages::reserve(2048, 1) {
        Ok(p) => p,
        Err(why) => return skip("hugetlb_identity_and_never_retrieved_finish", &why),
    };
    let memfd = rustix::fs::memfd_create(
        "luo-huge-id",
        MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB,
    )
    .expect("memfd_create");
    rustix::fs::ftruncate(&memfd, 2 << 20).expect("ftruncate");
    let h = HugetlbHandler::new();
    let dup = rustix::io::fcntl_dupfd_cloexec(&memfd, 0).expect("dup");
    assert_eq!(
        h.identity(memfd.as_fd()).expect("identity"),
        h.identity(dup.as_fd()).expect("identity")
    );
    let mut file = preserve(&h, memfd.as_fd(), 1);
    h.finish(&mut file, RetrieveStatus::NotRetrieved);
    drop(file);
    assert_eq!(rustix::fs::fstat(&memfd).expect("fstat").st_size, 2 << 20);
}
