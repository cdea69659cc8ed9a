//! The memfd handler on real memfds and tmpfs files, driven as the engine drives it:
//! preserve -> freeze -> retrieve -> finish.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{inode, mapper, position, pread_all, preserve, pwrite_all, retrieve_err, skip};
use luo_abi::Errno;
use luo_core::{FileHandler, RetrieveStatus};
use luo_handlers::{Defaults, FLAG_NO_SEALS, HugetlbHandler, MemfdHandler, MemfdRecord};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags, SeekFrom};
use rustix::io::FdFlags;
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::U32;

const SIZE: usize = 64 << 10;

fn sealable_memfd(name: &str) -> OwnedFd {
    rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create")
}

fn seals(fd: impl AsFd) -> SealFlags {
    rustix::fs::fcntl_get_seals(fd).expect("F_GET_SEALS")
}

#[test]
fn sealed_memfd_with_moved_position_comes_back_as_a_new_open_file() {
    let memfd = sealable_memfd("luo-sealed");
    rustix::fs::ftruncate(&memfd, SIZE as u64).expect("ftruncate");
    let mut expected = common::pattern(SIZE, 1);
    pwrite_all(&memfd, 0, &expected);
    rustix::fs::seek(&memfd, SeekFrom::Start(1000)).expect("lseek");
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).expect("seal");

    let handler = MemfdHandler::new();
    assert!(handler.can_preserve(memfd.as_fd()));
    let p = handler.preserve(memfd.as_fd()).expect("preserve");
    assert_eq!(p.bytes, SIZE as u64, "bytes is the file size");
    let mut file = luo_core::FileData {
        token: 7,
        fd: p.fd,
        record: p.record,
    };
    let rec = MemfdRecord::parse(&file.record).expect("record");
    assert_eq!(rec.pos.get(), 1000);

    // The client keeps working after preserve: write() moves the position, pwrite does not.
    let more = common::pattern(500, 2);
    assert_eq!(rustix::io::write(&memfd, &more).expect("write"), 500);
    expected[1000..1500].copy_from_slice(&more);
    let tail = common::pattern(1000, 3);
    pwrite_all(&memfd, 40_000, &tail);
    expected[40_000..41_000].copy_from_slice(&tail);

    handler.freeze(&mut file).expect("freeze");
    let rec = MemfdRecord::parse(&file.record).expect("record");
    assert_eq!(rec.size.get(), SIZE as u64);
    assert_eq!(
        rec.pos.get(),
        1500,
        "freeze records the position the client left"
    );
    assert_eq!(
        rec.seals.get(),
        (SealFlags::SHRINK | SealFlags::GROW).bits()
    );

    let retrieved = handler.retrieve(&file).expect("retrieve");
    assert_eq!(inode(&retrieved), inode(&memfd), "same memory");
    assert_eq!(position(&retrieved), 1500, "position as recorded");
    assert!(seals(&retrieved).contains(SealFlags::SHRINK | SealFlags::GROW));
    let fl = rustix::fs::fcntl_getfl(&retrieved).expect("F_GETFL");
    assert_eq!(fl & OFlags::ACCMODE, OFlags::RDWR);
    assert!(
        rustix::io::fcntl_getfd(&retrieved)
            .expect("F_GETFD")
            .contains(FdFlags::CLOEXEC)
    );

    // A new open file description, not a duplicate: positions move independently.
    rustix::fs::seek(&retrieved, SeekFrom::Start(0)).expect("lseek");
    assert_eq!(
        position(&memfd),
        1500,
        "the original's position did not move"
    );
    rustix::fs::seek(&memfd, SeekFrom::Start(10)).expect("lseek");
    assert_eq!(position(&retrieved), 0);

    // The same bytes through read() ...
    assert_eq!(pread_all(&retrieved, 0, SIZE), expected);
    // ... and through a shared mapping of the retrieved file.
    match mapper(retrieved.as_fd(), SIZE as u64, "fnv", 0) {
        Ok(out) => assert_eq!(out, common::fnv(&expected).to_string()),
        Err(why) => skip("memfd mmap check", &why),
    }

    // Shared, not copied: a write through the original shows through the retrieved file.
    pwrite_all(&memfd, 5, b"shared");
    assert_eq!(pread_all(&retrieved, 5, 6), b"shared");

    handler.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn retrieve_after_the_client_closed_its_descriptor() {
    let memfd = rustix::fs::memfd_create("luo-gone", MemfdFlags::CLOEXEC).expect("memfd");
    pwrite_all(&memfd, 0, b"survives");
    rustix::fs::seek(&memfd, SeekFrom::Start(3)).expect("lseek");
    let handler = MemfdHandler::new();
    let mut file = preserve(&handler, memfd.as_fd(), 1);
    handler.freeze(&mut file).expect("freeze");
    drop(memfd);
    let a = handler.retrieve(&file).expect("retrieve");
    assert_eq!(pread_all(&a, 0, 8), b"survives");
    assert_eq!(position(&a), 3);
    // A memfd created without MFD_ALLOW_SEALING carries F_SEAL_SEAL, which is kept.
    assert_eq!(seals(&a), SealFlags::SEAL);
    handler.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn size_changed_after_freeze_is_set_back() {
    let memfd = rustix::fs::memfd_create("luo-size", MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&memfd, 8192).expect("ftruncate");
    pwrite_all(&memfd, 0, b"head");
    let handler = MemfdHandler::new();
    let mut file = preserve(&handler, memfd.as_fd(), 1);
    handler.freeze(&mut file).expect("freeze");
    rustix::fs::ftruncate(&memfd, 100).expect("shrink after freeze");
    let a = handler.retrieve(&file).expect("retrieve");
    assert_eq!(rustix::fs::fstat(&a).expect("fstat").st_size, 8192);
    assert_eq!(pread_all(&a, 0, 4), b"head");
    handler.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn size_sealed_after_freeze_is_left_alone() {
    let memfd = sealable_memfd("luo-size-sealed");
    rustix::fs::ftruncate(&memfd, 8192).expect("ftruncate");
    let handler = MemfdHandler::new();
    let mut file = preserve(&handler, memfd.as_fd(), 1);
    handler.freeze(&mut file).expect("freeze");
    rustix::fs::ftruncate(&memfd, 4096).expect("shrink");
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::GROW).expect("seal");
    let a = handler.retrieve(&file).expect("retrieve");
    assert_eq!(rustix::fs::fstat(&a).expect("fstat").st_size, 4096);
    assert!(seals(&a).contains(SealFlags::GROW), "later seals are kept");
    handler.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn recorded_seals_missing_from_the_file_are_added_or_refused() {
    let handler = MemfdHandler::new();
    // A sealable file: the missing seal is added.
    let memfd = sealable_memfd("luo-add-seal");
    let mut file = preserve(&handler, memfd.as_fd(), 1);
    let mut rec = MemfdRecord::parse(&file.record).expect("record");
    rec.seals = U32::new(SealFlags::WRITE.bits());
    file.record = rec.as_bytes().to_vec();
    let a = handler.retrieve(&file).expect("retrieve");
    assert!(seals(&a).contains(SealFlags::WRITE));
    assert!(
        seals(&memfd).contains(SealFlags::WRITE),
        "seals belong to the inode"
    );

    // F_SEAL_SEAL forbids adding it: the retrieve fails with EPERM.
    let memfd = rustix::fs::memfd_create("luo-no-seal", MemfdFlags::CLOEXEC).expect("memfd");
    let mut file = preserve(&handler, memfd.as_fd(), 2);
    let mut rec = MemfdRecord::parse(&file.record).expect("record");
    rec.seals = U32::new((SealFlags::SEAL | SealFlags::GROW).bits());
    file.record = rec.as_bytes().to_vec();
    assert_eq!(retrieve_err(&handler, &file).errno, Errno::EPERM);
    handler.finish(&mut file, RetrieveStatus::Failed(Errno::EPERM));
}

#[test]
fn tmpfile_on_dev_shm_is_accepted() {
    let tmp = match rustix::fs::open(
        "/dev/shm",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return skip(
                "tmpfile_on_dev_shm_is_accepted",
                &format!("O_TMPFILE on /dev/shm: {e}"),
            );
        }
    };
    pwrite_all(&tmp, 0, b"tmpfile data");
    let handler = MemfdHandler::new();
    assert!(handler.can_preserve(tmp.as_fd()));
    assert!(!HugetlbHandler::new().can_preserve(tmp.as_fd()));
    let mut file = preserve(&handler, tmp.as_fd(), 3);
    handler.freeze(&mut file).expect("freeze");
    let rec = MemfdRecord::parse(&file.record).expect("record");
    assert_eq!(
        rec.flags.get() & FLAG_NO_SEALS,
        0,
        "tmpfs files answer F_GET_SEALS"
    );
    let a = handler.retrieve(&file).expect("retrieve");
    assert_eq!(inode(&a), inode(&tmp));
    assert_eq!(pread_all(&a, 0, 12), b"tmpfile data");
    assert_eq!(position(&a), 0);
    handler.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn finish_without_retrieve_leaves_the_clients_memory_alone() {
    let memfd = rustix::fs::memfd_create("luo-unretrieved", MemfdFlags::CLOEXEC).expect("memfd");
    pwrite_all(&memfd, 0, b"still here");
    let handler = MemfdHandler::new();
    let mut file = preserve(&handler, memfd.as_fd(), 4);
    handler.finish(&mut file, RetrieveStatus::NotRetrieved);
    drop(file);
    assert_eq!(pread_all(&memfd, 0, 10), b"still here");
}

#[test]
fn two_descriptors_of_one_memfd_have_one_identity() {
    let memfd = rustix::fs::memfd_create("luo-identity", MemfdFlags::CLOEXEC).expect("memfd");
    let dup = rustix::io::fcntl_dupfd_cloexec(&memfd, 0).expect("dup");
    let reopened = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd)),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("reopen");
    let other = rustix::fs::memfd_create("luo-identity-2", MemfdFlags::CLOEXEC).expect("memfd");
    let h = MemfdHandler::new();
    let id = h.identity(memfd.as_fd()).expect("identity");
    assert_eq!(h.identity(dup.as_fd()).expect("identity"), id);
    assert_eq!(h.identity(reopened.as_fd()).expect("identity"), id);
    assert_ne!(h.identity(other.as_fd()).expect("identity"), id);

    // A retrieved file has the identity of the preserved one.
    let mut file = preserve(&h, memfd.as_fd(), 5);
    let a = h.retrieve(&file).expect("retrieve");
    assert_eq!(h.identity(a.as_fd()).expect("identity"), id);
    h.finish(&mut file, RetrieveStatus::Retrieved);
}

#[test]
fn hugetlb_memfd_goes_to_the_hugetlb_handler() {
    // Creating a hugetlb memfd needs no pages; only touching it would.
    let huge = match rustix::fs::memfd_create(
        "luo-huge-kind",
        MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return skip(
                "hugetlb_memfd_goes_to_the_hugetlb_handler",
                &format!("MFD_HUGETLB: {e}"),
            );
        }
    };
    assert!(!MemfdHandler::new().can_preserve(huge.as_fd()));
    assert!(HugetlbHandler::new().can_preserve(huge.as_fd()));
    let err = MemfdHandler::new()
        .preserve(huge.as_fd())
        .expect_err("not a shmem file");
    assert_eq!(err.errno, Errno::EINVAL);
}

/// No default handler takes `fd`.
fn refused_by_all(fd: impl AsFd, what: &str) {
    for h in Defaults::new().handlers {
        assert!(
            !h.can_preserve(fd.as_fd()),
            "{} takes {what}",
            h.compatible()
        );
    }
}

#[test]
fn other_files_are_refused_by_every_handler() {
    refused_by_all(common::open_ro("/dev/null"), "/dev/null");
    refused_by_all(
        rustix::fs::open(
            "/dev/shm",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open dir"),
        "a directory",
    );
    let dir = common::TempDir::new("linked");
    let path = dir.path().join("linked");
    std::fs::write(&path, b"x").expect("write");
    refused_by_all(common::open_ro(&path), "a linked regular file");
    let shm = format!("/dev/shm/luo-linked-{}", std::process::id());
    std::fs::write(&shm, b"x").expect("write");
    let fd = common::open_ro(&shm);
    let _ = std::fs::remove_file(&shm);
    // Unlinked now: a tmpfs file with no links is memory, and the memfd handler takes it.
    assert!(MemfdHandler::new().can_preserve(fd.as_fd()));
    let linked_shm = format!("/dev/shm/luo-linked2-{}", std::process::id());
    std::fs::write(&linked_shm, b"x").expect("write");
    refused_by_all(common::open_ro(&linked_shm), "a linked tmpfs file");
    let _ = std::fs::remove_file(&linked_shm);

    let memfd = rustix::fs::memfd_create("luo-opath", MemfdFlags::CLOEXEC).expect("memfd");
    let opath = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd)),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("O_PATH");
    refused_by_all(opath, "an O_PATH descriptor");
    refused_by_all(
        rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).expect("epoll"),
        "an epoll",
    );
    let err = MemfdHandler::new()
        .preserve(common::open_ro("/dev/null").as_fd())
        .expect_err("preserve of /dev/null");
    assert_eq!(err.errno, Errno::EINVAL);
}

#[test]
fn retrieve_refuses_a_record_of_another_file() {
    let h = MemfdHandler::new();
    let a = rustix::fs::memfd_create("luo-a", MemfdFlags::CLOEXEC).expect("memfd");
    let b = rustix::fs::memfd_create("luo-b", MemfdFlags::CLOEXEC).expect("memfd");
    let file_a = preserve(&h, a.as_fd(), 1);
    let mut file_b = preserve(&h, b.as_fd(), 2);
    file_b.record = file_a.record.clone();
    assert_eq!(retrieve_err(&h, &file_b).errno, Errno::EINVAL);
    assert_eq!(
        h.freeze(&mut file_b).expect_err("freeze").errno,
        Errno::EINVAL
    );
}
