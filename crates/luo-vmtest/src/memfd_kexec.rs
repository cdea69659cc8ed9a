//! The `memfd-kexec` scenario: a shmem memfd with a known pattern crosses a real kexec.
//!
//! Stage 1 creates session [`SESSION`], fills a memfd of [`SIZE`] bytes (not a whole number of
//! pages, with a never-written [`HOLE`]) with [`pattern`], moves its file position to [`POS`],
//! seals it against shrinking, preserves it under [`TOKEN`] and runs `kexec -e` while it still
//! holds the session. Stage 2, in the next kernel, retrieves the session and the memfd, checks
//! size, position, seals and every byte, finishes the session and checks that it is gone.
//! Stage 3, after one more kexec, checks that the finished session did not come back.
//!
//! Along the way it checks the handler's refusals the kernel documents: a hugetlb memfd has no
//! handler (`ENOENT`), the same file cannot be preserved twice (`EBUSY`), a preserved memfd
//! cannot grow, a session cannot be retrieved twice (`EINVAL`), an unknown token is `ENOENT`.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;

use luo_sys::mmap::SharedMap;
use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};
use rustix::io::Errno;

use crate::{Error, Report};
use luo_sys::liveupdate::{Device, Session};

/// The session both stages name.
pub const SESSION: &str = "luod-vmtest-memfd-kexec";
/// The memfd's token in the session.
pub const TOKEN: u64 = 0x6c75_6f64_0000_0001;
/// The memfd's size: 32 MiB and a partial page.
pub const SIZE: u64 = (32 << 20) + 3 * 4096 + 123;
/// A page-aligned range never written: the next kernel must give zeros there.
pub const HOLE: Range<u64> = (8 << 20)..(9 << 20);
/// The file position stage 1 leaves; the memfd handler carries it over.
pub const POS: u64 = 12_345;
/// The seals stage 1 adds; the memfd handler (`memfd-v2`) carries them over.
pub const SEALS: SealFlags = SealFlags::SHRINK;

/// The 8 bytes the memfd holds at offset `8 * index`: a mix of the index, so that a page
/// restored at the wrong index or a shifted copy shows, and zero inside [`HOLE`] (whose bounds
/// are multiples of 8).
fn word(index: u64) -> [u8; 8] {
    if HOLE.contains(&(index * 8)) {
        return [0; 8];
    }
    let mut x = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)).to_le_bytes()
}

/// The byte the memfd holds at `offset`.
pub fn pattern(offset: u64) -> u8 {
    word(offset / 8)[(offset % 8) as usize]
}

fn len(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// Fills `buf`, which starts at file offset 0, with [`pattern`], leaving [`HOLE`] untouched.
fn fill(buf: &mut [u8]) {
    for (index, chunk) in (0u64..).zip(buf.chunks_mut(8)) {
        if !HOLE.contains(&(index * 8)) {
            chunk.copy_from_slice(&word(index)[..chunk.len()]);
        }
    }
}

/// The first offset where `buf` differs from [`pattern`], and how many bytes differ.
fn verify(buf: &[u8]) -> Option<(u64, u64)> {
    let mut first = None;
    let mut count = 0u64;
    for (index, chunk) in (0u64..).zip(buf.chunks(8)) {
        let want = word(index);
        if chunk == &want[..chunk.len()] {
            continue;
        }
        for (i, (a, b)) in (0u64..).zip(chunk.iter().zip(want.iter())) {
            if a != b {
                first.get_or_insert(index * 8 + i);
                count += 1;
            }
        }
    }
    first.map(|f| (f, count))
}

/// Checks that `result` failed with `want`.
fn expect_errno<T>(
    report: &mut Report,
    what: &str,
    result: rustix::io::Result<T>,
    want: Errno,
) -> Result<(), Error> {
    match result {
        Err(e) if e == want => {
            report.ok(&format!("{what}: {want} as expected"));
            Ok(())
        }
        Err(e) => Err(Error::Unexpected(format!("{what}: {e}, expected {want}"))),
        Ok(_) => Err(Error::Unexpected(format!(
            "{what}: succeeded, expected {want}"
        ))),
    }
}

fn step<T>(what: &'static str, result: rustix::io::Result<T>) -> Result<T, Error> {
    result.map_err(|e| Error::Call(what, e.into()))
}

/// Stage 1: preserve, then `kexec -e` (a kernel already loaded with `kexec -s -l`) while the
/// session is held. Returns only on failure.
pub fn stage1(report: &mut Report, kexec: &str) -> Result<(), Error> {
    let dev = step("open /dev/liveupdate", Device::open())?;
    let session = step("create session", dev.create_session(SESSION))?;
    report.ok(&format!("created session {SESSION}"));
    let name = step("get name", session.name())?;
    if name != SESSION.as_bytes() {
        return Err(Error::Unexpected(format!(
            "GET_NAME gave {:?}",
            String::from_utf8_lossy(&name)
        )));
    }
    report.ok("GET_NAME gives the session's name");

    let memfd = step(
        "memfd_create",
        rustix::fs::memfd_create(
            "luo-vmtest",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        ),
    )?;
    step("ftruncate", rustix::fs::ftruncate(&memfd, SIZE))?;
    {
        let mut map =
            SharedMap::new(&memfd, len(SIZE), true, false).map_err(|e| Error::Call("mmap", e))?;
        let buf = map
            .as_mut_slice()
            .ok_or(Error::Unexpected("read-only mapping".into()))?;
        fill(buf);
    }
    step("lseek", rustix::fs::seek(&memfd, SeekFrom::Start(POS)))?;
    step("add seals", rustix::fs::fcntl_add_seals(&memfd, SEALS))?;
    report.ok(&format!(
        "memfd of {SIZE} bytes filled, hole at {HOLE:?}, position {POS}, seals {SEALS:?}"
    ));

    hugetlb_refused(report, &session)?;

    step("preserve memfd", session.preserve_fd(&memfd, TOKEN))?;
    report.ok(&format!("preserved memfd as token {TOKEN:#x}"));
    expect_errno(
        report,
        "preserving the same memfd again",
        session.preserve_fd(&memfd, TOKEN + 1),
        Errno::BUSY,
    )?;
    expect_errno(
        report,
        "reusing the token",
        session.preserve_fd(&memfd, TOKEN),
        Errno::EXIST,
    )?;
    match rustix::fs::ftruncate(&memfd, SIZE + 4096) {
        Err(e) => report.ok(&format!("a preserved memfd cannot grow: {e}")),
        Ok(()) => return Err(Error::Unexpected("a preserved memfd grew".into())),
    }
    drop(memfd); // The session holds the file now.
    drop(dev); // Sessions outlive the device descriptor.

    report.ok("stage 1 done; kexec -e while holding the session");
    report.flush();
    let status = Command::new(kexec)
        .arg("-e")
        .status()
        .map_err(|e| Error::Call("run kexec -e", e))?;
    drop(session);
    Err(Error::Unexpected(format!("kexec -e returned ({status})")))
}

/// A hugetlb memfd is not shmem: no handler takes it.
fn hugetlb_refused(report: &mut Report, session: &Session) -> Result<(), Error> {
    match rustix::fs::memfd_create("luo-vmtest-huge", MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB) {
        Ok(huge) => expect_errno(
            report,
            "preserving a hugetlb memfd",
            session.preserve_fd(&huge, TOKEN + 2),
            Errno::NOENT,
        ),
        Err(e) => {
            report.ok(&format!(
                "no hugetlb memfd here ({e:?}): its refusal is not checked"
            ));
            Ok(())
        }
    }
}

/// Stage 2: retrieve, check every byte, finish, check the session is gone.
pub fn stage2(report: &mut Report) -> Result<(), Error> {
    let dev = step("open /dev/liveupdate", Device::open())?;
    let session = step("retrieve session", dev.retrieve_session(SESSION))?;
    report.ok(&format!("retrieved session {SESSION}"));
    expect_errno(
        report,
        "retrieving the session twice",
        dev.retrieve_session(SESSION),
        Errno::INVAL,
    )?;
    let name = step("get name", session.name())?;
    if name != SESSION.as_bytes() {
        return Err(Error::Unexpected(format!(
            "GET_NAME gave {:?}",
            String::from_utf8_lossy(&name)
        )));
    }
    expect_errno(
        report,
        "an unknown token",
        session.retrieve_fd(TOKEN + 7),
        Errno::NOENT,
    )?;

    let memfd = step("retrieve memfd", session.retrieve_fd(TOKEN))?;
    report.ok(&format!("retrieved token {TOKEN:#x}"));
    check_file(report, &memfd)?;

    step("finish", session.finish())?;
    report.ok("session finished");
    expect_errno(
        report,
        "retrieving after finish",
        session.retrieve_fd(TOKEN),
        Errno::NOENT,
    )?;
    drop(session);
    expect_errno(
        report,
        "the finished session after close",
        dev.retrieve_session(SESSION),
        Errno::NOENT,
    )?;

    // The retrieved file is the caller's, and its memory stays after the session is gone.
    let map =
        SharedMap::new(&memfd, len(SIZE), false, false).map_err(|e| Error::Call("mmap", e))?;
    if let Some((offset, count)) = verify(map.as_slice()) {
        return Err(Error::Unexpected(format!(
            "after finish: {count} bytes differ, first at {offset:#x}"
        )));
    }
    report.ok("the memory is still there after the session is gone");
    Ok(())
}

fn check_file(report: &mut Report, memfd: &OwnedFd) -> Result<(), Error> {
    let stat = step("fstat", rustix::fs::fstat(memfd.as_fd()))?;
    if stat.st_size as u64 != SIZE {
        return Err(Error::Unexpected(format!(
            "size {} after kexec, expected {SIZE}",
            stat.st_size
        )));
    }
    let pos = step("lseek", rustix::fs::seek(memfd, SeekFrom::Current(0)))?;
    if pos != POS {
        return Err(Error::Unexpected(format!(
            "position {pos} after kexec, expected {POS}"
        )));
    }
    let seals = step("get seals", rustix::fs::fcntl_get_seals(memfd))?;
    if seals != SEALS {
        return Err(Error::Unexpected(format!(
            "seals {seals:?} after kexec, expected {SEALS:?}"
        )));
    }
    report.ok(&format!(
        "size {SIZE}, position {POS}, seals {SEALS:?} kept"
    ));
    let map = SharedMap::new(memfd, len(SIZE), false, false).map_err(|e| Error::Call("mmap", e))?;
    if let Some((offset, count)) = verify(map.as_slice()) {
        return Err(Error::Unexpected(format!(
            "{count} of {SIZE} bytes differ, first at {offset:#x}: {:#04x}, expected {:#04x}",
            map.as_slice()[len(offset)],
            pattern(offset)
        )));
    }
    report.ok(&format!("all {SIZE} bytes as written, the hole zero"));
    Ok(())
}

/// Stage 3, one kexec later: a finished session is not carried forward.
pub fn stage3(report: &mut Report) -> Result<(), Error> {
    let dev = step("open /dev/liveupdate", Device::open())?;
    expect_errno(
        report,
        "the session one kexec after its finish",
        dev.retrieve_session(SESSION),
        Errno::NOENT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_differs_between_pages_and_is_zero_in_the_hole() {
        let page0: Vec<u8> = (0..4096).map(pattern).collect();
        let page1: Vec<u8> = (4096..8192).map(pattern).collect();
        assert_ne!(page0, page1);
        assert!(HOLE.clone().step_by(4093).all(|o| pattern(o) == 0));
    }

    #[test]
    fn verify_finds_the_first_difference() {
        let mut buf = vec![0u8; 3 * 4096 + 5];
        fill(&mut buf);
        assert_eq!(verify(&buf), None);
        assert!((0u64..).zip(&buf).all(|(o, &b)| b == pattern(o)));
        buf[4096 + 9] ^= 1;
        buf[8000] ^= 1;
        assert_eq!(verify(&buf), Some((4096 + 9, 2)));
    }
}
