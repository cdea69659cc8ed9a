//! Helpers shared by the integration tests: skipping (or failing under `LUO_REQUIRE_ALL=1`),
//! driving a handler through the engine's calls, reserving huge pages, mapping memory from a
//! helper process, and temporary directories.
#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use luo_core::{FileData, FileHandler, HandlerError};

#[path = "hugepages.rs"]
mod hugepages;

/// Reports that `test` cannot run here. Under `LUO_REQUIRE_ALL=1` (CI) that is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// Preserves `fd` with `handler` and wraps the result as the engine would hold it.
pub fn preserve(handler: &dyn FileHandler, fd: BorrowedFd<'_>, token: u64) -> FileData {
    let p = handler.preserve(fd).expect("preserve");
    FileData {
        token,
        fd: p.fd,
        record: p.record,
    }
}

/// A handler's error for `file`'s retrieve, or a panic if it succeeded.
pub fn retrieve_err(handler: &dyn FileHandler, file: &FileData) -> HandlerError {
    match handler.retrieve(file) {
        Ok(_) => panic!("retrieve succeeded"),
        Err(e) => e,
    }
}

/// The inode of `fd`.
pub fn inode(fd: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).expect("fstat");
    (st.st_dev, st.st_ino)
}

/// The current position of `fd`'s open file description.
pub fn position(fd: impl AsFd) -> u64 {
    rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0)).expect("lseek")
}

/// Reads `len` bytes at `offset` with `pread`, which leaves the position alone.
pub fn pread_all(fd: impl AsFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n =
            rustix::io::pread(fd.as_fd(), &mut buf[done..], offset + done as u64).expect("pread");
        assert!(n > 0, "unexpected end of file at {}", offset + done as u64);
        done += n;
    }
    buf
}

/// Writes all of `data` at `offset`.
pub fn pwrite_all(fd: impl AsFd, offset: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        done +=
            rustix::io::pwrite(fd.as_fd(), &data[done..], offset + done as u64).expect("pwrite");
    }
}

/// Deterministic bytes for `len` and `seed` (xorshift).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a 64 of `data` (the mapping helper computes the same over a mapping).
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The per-block marker the mapping helper writes and checks: 8 bytes at the start of every
/// 4 KiB block of a huge-page file.
pub fn block_marker(block: u64, seed: u64) -> u64 {
    block.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(seed)
}

const MAPPER: &str = r#"
import mmap, os, sys
pid, fd, length, op, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
write = op == "fill"
f = os.open("/proc/%s/fd/%s" % (pid, fd), os.O_RDWR if write else os.O_RDONLY)
prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
m = mmap.mmap(f, length, mmap.MAP_SHARED, prot)
M = (1 << 64) - 1
if op == "fnv":
    h = 0xcbf29ce484222325
    for b in m[:length]:
        h = ((h ^ b) * 0x100000001b3) & M
    print(h)
elif op == "fill":
    for i in range(length // 4096):
        m[i * 4096:i * 4096 + 8] = ((i * 0x9e3779b97f4a7c15 + seed) & M).to_bytes(8, "little")
    m.flush()
    print("filled")
elif op == "check":
    for i in range(length // 4096):
        want = ((i * 0x9e3779b97f4a7c15 + seed) & M).to_bytes(8, "little")
        if m[i * 4096:i * 4096 + 8] != want:
            print("mismatch at block %d" % i)
            sys.exit(1)
    print("ok")
"#;

/// Runs the mapping helper on `fd`: a separate process that opens `/proc/<us>/fd/<fd>` (the
/// same inode) and works through a shared `mmap` of it. The test crates cannot call `mmap`
/// themselves (the workspace forbids `unsafe`), so a Python process does the mapping.
/// `Err` if Python is not there.
pub fn mapper(fd: BorrowedFd<'_>, len: u64, op: &str, seed: u64) -> Result<String, String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(MAPPER)
        .arg(std::process::id().to_string())
        .arg(fd.as_raw_fd().to_string())
        .arg(len.to_string())
        .arg(op)
        .arg(seed.to_string())
        .output()
        .map_err(|e| format!("python3 is needed to map memory from a helper process: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        panic!(
            "mapping helper {op} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A unique empty directory under the system temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("luo-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[allow(unused_imports)] // Not every test binary reserves huge pages.
pub use hugepages::HugePages;

/// Opens `path` read-only, close-on-exec.
pub fn open_ro(path: impl AsRef<Path>) -> OwnedFd {
    rustix::fs::open(
        path.as_ref(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.as_ref().display()))
}
