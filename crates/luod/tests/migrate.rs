//! MIGRATE on real memory: a 1 GiB memfd moved onto one 1 GiB huge page and back onto 4 KiB
//! pages through a real luod, every byte and the page size checked after
//! each move; migrations that cannot happen (a pool too small, a retrieved file, a socket)
//! leave the old file in place, intact.

mod common;

#[path = "../../luo-handlers/tests/common/hugepages.rs"]
mod hugepages;

use std::os::fd::{AsFd, OwnedFd};

use common::{Luod, errno, memfd_with, pattern_at};
use hugepages::HugePages;
use luo_abi::Errno;

const GIB: u64 = 1 << 30;
/// Bytes checked at a time.
const CHUNK: usize = 16 << 20;

/// Fills `fd` (`len` bytes) with the pattern of `seed`.
fn fill(fd: impl AsFd, len: u64, seed: u64) {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0;
    while off < len {
        let n = CHUNK.min((len - off) as usize);
        pattern_at(seed, off, &mut buf[..n]);
        common::pwrite_all(&fd, off, &buf[..n]);
        off += n as u64;
    }
}

/// Checks every byte of `fd` against the pattern of `seed`.
fn check(fd: impl AsFd, len: u64, seed: u64) {
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut off = 0;
    while off < len {
        let len_here = CHUNK.min((len - off) as usize);
        pattern_at(seed, off, &mut want[..len_here]);
        let mut done = 0;
        while done < len_here {
            let n =
                rustix::io::pread(&fd, &mut got[done..len_here], off + done as u64).expect("pread");
            assert!(n > 0, "end of file at {}", off + done as u64);
            done += n;
        }
        assert!(
            got[..len_here] == want[..len_here],
            "bytes differ in the 16 MiB at {off}"
        );
        off += len_here as u64;
    }
}

/// The page size of the memory behind `fd` (`f_bsize` of its filesystem: the huge page size
/// on hugetlbfs, 4096 on shmem).
fn page_of(fd: impl AsFd) -> u64 {
    rustix::fs::fstatfs(&fd).expect("fstatfs").f_bsize as u64
}

/// Hands `fd` off in session `name` under token 1 and returns nothing: the file is incoming.
fn hand_off(dev: &luo_client::Device, name: &str, fd: &OwnedFd) {
    let s = dev.create_session(name).expect("create");
    s.preserve(fd, 1).expect("preserve");
    s.handoff().expect("handoff");
}

#[test]
fn a_1g_memfd_moves_onto_a_1g_page_and_back_onto_4k_pages() {
    if !common::require_root("a_1g_memfd_moves_onto_a_1g_page_and_back_onto_4k_pages") {
        return;
    }
    let _pool = match HugePages::reserve(1 << 20, 1) {
        Ok(p) => p,
        Err(why) => {
            common::skip(
                "a_1g_memfd_moves_onto_a_1g_page_and_back_onto_4k_pages",
                &why,
            );
            return;
        }
    };
    let luod = Luod::start("migrate-1g");
    let dev = luod.device();
    let mem = memfd_with("guest-ram", b"");
    rustix::fs::ftruncate(&mem, GIB).expect("size");
    fill(&mem, GIB, 11);
    rustix::fs::seek(&mem, rustix::fs::SeekFrom::Start(12345)).expect("seek");
    hand_off(&dev, "vm", &mem);
    drop(mem);

    // 4 KiB -> one 1 GiB page.
    let m = luod
        .control()
        .migrate("vm", 1, GIB, None)
        .unwrap_or_else(|e| panic!("migrate: {e}\n{}", luod.log_text()));
    assert_eq!((m.bytes, m.page_size), (GIB, GIB));
    assert_eq!(m.units_fallback, 0);
    let st = luod.status();
    assert_eq!(st.bytes, GIB, "the quota counts the file once");
    assert!(st.copy_bytes >= GIB, "the copy engine's counters: {st:?}");

    let s = dev.retrieve_session("vm").expect("retrieve");
    let ram = s.retrieve(1).expect("retrieve the file");
    assert_eq!(page_of(&ram), GIB, "on a 1 GiB page now");
    assert_eq!(
        rustix::fs::seek(&ram, rustix::fs::SeekFrom::Current(0)).expect("pos"),
        12345,
        "the position crosses"
    );
    check(&ram, GIB, 11);
    s.finish().expect("finish");
    drop(s);

    // And back onto 4 KiB pages.
    hand_off(&dev, "vm", &ram);
    drop(ram);
    let m = luod
        .control()
        .migrate("vm", 1, 4096, None)
        .expect("migrate back");
    assert_eq!((m.bytes, m.page_size), (GIB, 4096));
    let s = dev.retrieve_session("vm").expect("retrieve");
    let ram = s.retrieve(1).expect("retrieve");
    assert_eq!(page_of(&ram), 4096, "on 4 KiB pages again");
    check(&ram, GIB, 11);
    s.finish().expect("finish");
}

#[test]
fn a_migration_that_cannot_happen_leaves_the_file_intact() {
    let luod = Luod::start("migrate-refused");
    let dev = luod.device();
    let mem = memfd_with("ram", b"");
    rustix::fs::ftruncate(&mem, 64 << 20).expect("size");
    fill(&mem, 64 << 20, 5);
    hand_off(&dev, "vm", &mem);
    let ctl = luod.control();

    // A pool with too few pages: refused before anything is copied, with what to reserve.
    // Holding the pool's lock (growing it by nothing) keeps other tests from changing it.
    let _pool_lock = HugePages::reserve(1 << 20, 0);
    let pool = "/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages";
    let free_1g: u64 = std::fs::read_to_string(pool)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let e = ctl
        .migrate("vm", 1, 1 << 30, None)
        .expect_err("64 MiB is not a whole number of 1 GiB pages");
    assert_eq!(e.errno, Errno::EINVAL, "{e}");
    // One page more than the pool has free: a sparse memfd of that many GiB costs nothing.
    let big = memfd_with("big", b"");
    rustix::fs::ftruncate(&big, (free_1g + 1) * GIB).expect("size");
    hand_off(&dev, "big", &big);
    let e = ctl
        .migrate("big", 1, GIB, None)
        .expect_err("more 1 GiB pages than are free");
    assert_eq!(e.errno, Errno::ENOMEM, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("nr_hugepages"), "says how to reserve: {msg}");
    assert_eq!(
        errno(ctl.migrate("vm", 9, 4096, None)),
        Errno::ENOENT,
        "no token"
    );
    assert_eq!(
        errno(ctl.migrate("nope", 1, 4096, None)),
        Errno::ENOENT,
        "no session"
    );
    assert_eq!(
        errno(ctl.migrate("vm", 1, 8192, None)),
        Errno::EINVAL,
        "page size"
    );

    // Not a memory file.
    let (a, _b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    hand_off(&dev, "sock", &a);
    assert_eq!(errno(ctl.migrate("sock", 1, 4096, None)), Errno::EINVAL);

    // A retrieved file may be mapped by its new owner: refused.
    let s = dev.retrieve_session("vm").expect("retrieve");
    let ram = s.retrieve(1).expect("retrieve");
    assert_eq!(errno(ctl.migrate("vm", 1, 4096, None)), Errno::EBUSY);
    // Nothing moved.
    assert_eq!(page_of(&ram), 4096);
    check(&ram, 64 << 20, 5);
    s.finish().expect("finish");
}

/// The owner of an outgoing session may migrate its own file before handing it off; another
/// uid's session is root's only.
#[test]
fn an_owner_migrates_its_outgoing_file_before_handoff() {
    let luod = Luod::start("migrate-outgoing");
    let dev = luod.device();
    let s = dev.create_session("vm").expect("create");
    let mem = memfd_with("ram", b"");
    rustix::fs::ftruncate(&mem, 8 << 20).expect("size");
    fill(&mem, 8 << 20, 9);
    s.preserve(&mem, 1).expect("preserve");
    // Grown after preserve: the live file is what moves.
    rustix::fs::ftruncate(&mem, 12 << 20).expect("grow");
    let m = luod
        .control()
        .migrate("vm", 1, 4096, None)
        .expect("migrate an outgoing file");
    assert_eq!(m.bytes, 12 << 20);
    s.handoff().expect("handoff");
    drop(s);
    let s = dev.retrieve_session("vm").expect("retrieve");
    let ram = s.retrieve(1).expect("retrieve");
    check(&ram, 8 << 20, 9);
    assert_eq!(common::file_size(&ram), 12 << 20);
    // A new inode: writes to the client's old memfd no longer reach it.
    assert_ne!(
        rustix::fs::fstat(&ram).expect("fstat").st_ino,
        rustix::fs::fstat(&mem).expect("fstat").st_ino
    );
    assert_eq!(
        errno(luod.control().migrate("vm", 1, 4096, Some(4242))),
        Errno::ENOENT,
        "root may name another namespace (which has no such session)"
    );
    s.finish().expect("finish");
}
