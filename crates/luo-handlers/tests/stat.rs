//! The engine asks handlers through `can_preserve_with_stat` and `preserve_with_stat`, with
//! the `fstat` it made; the handlers that use it skip system calls. Every default handler must
//! answer exactly as through `can_preserve` and `preserve`, on every kind of descriptor.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use luo_guestmem::{GuestMemory, PageSize};
use luo_handlers::Defaults;
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags, SeekFrom};

fn memfd(name: &str, flags: MemfdFlags, data: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, flags | MemfdFlags::CLOEXEC).expect("memfd");
    common::pwrite_all(&fd, 0, data);
    fd
}

fn reopen(fd: impl AsFd, flags: OFlags) -> OwnedFd {
    rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("reopen")
}

/// Descriptors of every kind the handlers tell apart, named.
fn zoo(keep: &mut Vec<GuestMemory>) -> Vec<(String, OwnedFd)> {
    let mut z: Vec<(String, OwnedFd)> = Vec::new();
    let plain = memfd("plain", MemfdFlags::empty(), b"plain memfd");
    rustix::fs::seek(&plain, SeekFrom::Start(3)).expect("seek");
    z.push(("a memfd with its position moved".into(), plain));
    let sealed = memfd("sealed", MemfdFlags::ALLOW_SEALING, &[7; 5000]);
    rustix::fs::fcntl_add_seals(&sealed, SealFlags::GROW | SealFlags::SHRINK).expect("seal");
    z.push(("a sealed memfd".into(), sealed));
    let empty = memfd("empty", MemfdFlags::empty(), b"");
    z.push((
        "an O_WRONLY reopen of a memfd".into(),
        reopen(&empty, OFlags::WRONLY),
    ));
    z.push((
        "an O_PATH reopen of a memfd".into(),
        reopen(&empty, OFlags::PATH),
    ));
    if let Ok(huge) = rustix::fs::memfd_create("huge", MemfdFlags::HUGETLB | MemfdFlags::CLOEXEC) {
        z.push(("a hugetlb memfd".into(), huge));
    }
    let shm = rustix::fs::open(
        "/dev/shm",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .expect("O_TMPFILE on /dev/shm");
    z.push(("an O_TMPFILE on /dev/shm".into(), shm));
    let linked = format!("/dev/shm/luo-stat-{}", std::process::id());
    std::fs::write(&linked, b"linked").expect("write");
    z.push((
        "a linked tmpfs file".into(),
        rustix::fs::open(
            linked.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open"),
    ));
    let _ = std::fs::remove_file(&linked);
    z.push((
        "/dev/null".into(),
        rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .expect("/dev/null"),
    ));
    z.push((
        "a directory".into(),
        rustix::fs::open(
            "/tmp",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("/tmp"),
    ));
    let (a, _b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    z.push(("a socket".into(), a));
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    z.push(("a pipe's read end".into(), r));
    z.push(("a pipe's write end".into(), w));
    z.push((
        "an eventfd".into(),
        rustix::event::eventfd(1, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"),
    ));
    z.push((
        "an epoll".into(),
        rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).expect("epoll"),
    ));
    let mem = GuestMemory::create(2 << 20, PageSize::Base4K).expect("guest memory");
    z.push((
        "a guest memory descriptor".into(),
        rustix::io::fcntl_dupfd_cloexec(mem.descriptor_fd(), 0).expect("dup"),
    ));
    z.push((
        "guest RAM".into(),
        rustix::io::fcntl_dupfd_cloexec(mem.ram_fd(), 0).expect("dup"),
    ));
    keep.push(mem);
    z
}

#[test]
fn handlers_answer_the_same_with_and_without_the_stat() {
    let mut keep = Vec::new();
    let zoo = zoo(&mut keep);
    let handlers = Defaults::new().handlers;
    let mut owners = Vec::new();
    for (what, fd) in &zoo {
        let fd: BorrowedFd<'_> = fd.as_fd();
        let st = rustix::fs::fstat(fd).expect("fstat");
        for h in &handlers {
            assert_eq!(
                h.can_preserve_with_stat(fd, &st),
                h.can_preserve(fd),
                "{} on {what}",
                h.compatible()
            );
        }
        // The owner, as the engine picks it, preserves the same way both ways.
        let Some(h) = handlers.iter().find(|h| h.can_preserve_with_stat(fd, &st)) else {
            continue;
        };
        owners.push(h.compatible().to_owned());
        let plain = h.preserve(fd).expect("preserve");
        // Undone before the second preserve, which must find the file as the first did (a
        // Unix socket's SO_PASSRIGHTS is turned off by a preserve and back on by this).
        let mut undo = luo_core::FileData {
            token: 0,
            fd: rustix::io::fcntl_dupfd_cloexec(&plain.fd, 3).expect("dup"),
            record: plain.record.clone(),
        };
        h.unpreserve(&mut undo);
        let with = h.preserve_with_stat(fd, &st).expect("preserve_with_stat");
        let name = h.compatible();
        assert_eq!(with.record, plain.record, "{name}: record of {what}");
        assert_eq!(with.bytes, plain.bytes, "{name}: bytes of {what}");
        assert_eq!(
            common::inode(&with.fd),
            common::inode(&plain.fd),
            "{name}: held file of {what}"
        );
    }
    for must in ["guestmem-v1", "memfd-v1", "fdref-v1"] {
        assert!(
            owners.iter().any(|o| o == must),
            "{must} took nothing: {owners:?}"
        );
    }
}
