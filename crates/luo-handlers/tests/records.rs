//! Every handler's record, and the PCI FLB's data, treated as hostile: truncated, extended,
//! bit-flipped and random bytes give `EINVAL`, never a panic, both from the parsers and from a
//! handler's retrieve.

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;

use common::preserve;
use luo_abi::Errno;
use luo_core::{FileData, FileHandler, Flb};
use luo_handlers::{
    FdrefHandler, FdrefRecord, HugetlbRecord, MemfdHandler, MemfdRecord, PciDeviceHandler,
    PciDeviceRecord, PciFlb,
};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Variants of `valid`: every truncation, a few extensions, single bit flips, random bytes of
/// random lengths.
fn hostile(valid: &[u8], rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for len in 0..valid.len() {
        out.push(valid[..len].to_vec());
    }
    for extra in [1, 7, 64] {
        let mut v = valid.to_vec();
        v.extend(std::iter::repeat_n(0, extra));
        out.push(v);
    }
    for bit in 0..valid.len() * 8 {
        let mut v = valid.to_vec();
        v[bit / 8] ^= 1 << (bit % 8);
        out.push(v);
    }
    for _ in 0..2000 {
        let len = rng.below(80) as usize;
        out.push(rng.bytes(len));
    }
    out
}

/// Runs `parse` on every hostile variant of `valid`: it must not panic, and must refuse
/// anything whose length differs.
fn parse_never_panics<T, E: std::fmt::Debug>(
    valid: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, E>,
    errno: impl Fn(&E) -> Errno,
) {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for bytes in hostile(valid, &mut rng) {
        match parse(&bytes) {
            Ok(_) => assert_eq!(bytes.len(), valid.len(), "accepted {} bytes", bytes.len()),
            Err(e) => assert_eq!(errno(&e), Errno::EINVAL, "{e:?}"),
        }
    }
}

#[test]
fn parsers_refuse_hostile_bytes() {
    let h = MemfdHandler::new();
    let memfd =
        rustix::fs::memfd_create("luo-records", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let mem = preserve(&h, memfd.as_fd(), 1);
    parse_never_panics(&mem.record, MemfdRecord::parse, |e| e.errno());

    let mut huge = mem.record.clone();
    huge.extend_from_slice(&(2u64 << 20).to_le_bytes());
    HugetlbRecord::parse(&huge).expect("a memfd record plus a page size is a valid layout");
    parse_never_panics(&huge, HugetlbRecord::parse, |e| e.errno());

    let (a, _b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let sock = preserve(&FdrefHandler::new(), a.as_fd(), 2);
    parse_never_panics(&sock.record, FdrefRecord::parse, |e| e.errno());

    let pci = Arc::new(PciFlb::new());
    let ph = PciDeviceHandler::new(Arc::clone(&pci));
    let lo = common::open_ro("/sys/class/net/lo/ifindex");
    let dev = preserve(&ph, lo.as_fd(), 3);
    parse_never_panics(&dev.record, PciDeviceRecord::parse, |e| e.errno());

    let data = pci.serialize();
    parse_never_panics(&data, PciFlb::decode, |e| e.errno());
    // And through the FLB trait.
    let mut rng = Rng(99);
    for bytes in hostile(&data, &mut rng) {
        let flb = PciFlb::new();
        if let Err(e) = flb.retrieve(&bytes) {
            assert_eq!(e.errno, Errno::EINVAL);
        }
    }
}

/// Retrieves `file` with every truncation and a random record: always `EINVAL`.
fn retrieve_refuses(handler: &dyn FileHandler, file: &FileData) {
    let mut rng = Rng(7);
    let mut records: Vec<Vec<u8>> = (0..file.record.len())
        .map(|l| file.record[..l].to_vec())
        .collect();
    let mut long = file.record.clone();
    long.push(0);
    records.push(long);
    records.push(rng.bytes(file.record.len()));
    for record in records {
        let forged = FileData {
            token: file.token,
            fd: rustix::io::fcntl_dupfd_cloexec(&file.fd, 0).expect("dup"),
            record,
        };
        match handler.retrieve(&forged) {
            Ok(_) => panic!(
                "{} retrieved from {:?}",
                handler.compatible(),
                forged.record
            ),
            Err(e) => assert_eq!(
                e.errno,
                Errno::EINVAL,
                "{}: {}",
                handler.compatible(),
                e.message
            ),
        }
    }
}

#[test]
fn retrieve_refuses_malformed_records() {
    let mh = MemfdHandler::new();
    let memfd =
        rustix::fs::memfd_create("luo-records", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    retrieve_refuses(&mh, &preserve(&mh, memfd.as_fd(), 1));

    let fh = FdrefHandler::new();
    let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    retrieve_refuses(&fh, &preserve(&fh, r.as_fd(), 2));

    let ph = PciDeviceHandler::new(Arc::new(PciFlb::new()));
    let lo = common::open_ro("/sys/class/net/lo/ifindex");
    retrieve_refuses(&ph, &preserve(&ph, lo.as_fd(), 3));
}
