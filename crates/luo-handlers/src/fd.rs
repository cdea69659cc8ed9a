//! Small descriptor helpers the handlers share: what a descriptor is, where it points, and how
//! to duplicate or reopen it.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{FileType, OFlags};

use crate::error::Error;

/// `TMPFS_MAGIC`: tmpfs and the kernel's internal shmem mount that holds memfds.
pub(crate) const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `HUGETLBFS_MAGIC`: hugetlbfs and the internal mounts that hold `MFD_HUGETLB` memfds.
pub(crate) const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// `ANON_INODE_FS_MAGIC`: the anonymous inode of eventfds, epoll, timerfds and the like.
pub(crate) const ANON_INODE_FS_MAGIC: i64 = 0x0904_1934;

/// The longest `/proc/self/fdinfo` text read (an eventfd's is about 100 bytes).
const FDINFO_LIMIT: u64 = 4096;

/// `/proc/self/fd/N` for `fd`: the magic link to the open file.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Where `fd` points, as the kernel prints it (`/memfd:x (deleted)`, `socket:[123]`,
/// `anon_inode:[eventfd]`, `/sys/devices/...`).
pub(crate) fn link_target(fd: BorrowedFd<'_>) -> Result<PathBuf, Error> {
    let target = rustix::fs::readlink(proc_path(fd), Vec::new()).map_err(Error::sys("readlink"))?;
    Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
}

/// True for an `O_PATH` descriptor: it names a file but cannot read, seek or map it, so no
/// handler takes it.
pub(crate) fn is_path_only(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_getfl(fd).map_or(true, |fl| fl.contains(OFlags::PATH))
}

/// The file type of `fd`'s inode.
pub(crate) fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// The filesystem magic of `fd`, or `None` if `fstatfs` fails.
pub(crate) fn fs_magic(fd: BorrowedFd<'_>) -> Option<i64> {
    rustix::fs::fstatfs(fd).ok().map(|s| s.f_type)
}

/// A close-on-exec duplicate of `fd`: the same open file description.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    // Above the standard streams, so a daemon with a closed stdin never hands fd 0 around.
    rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(Error::sys("F_DUPFD_CLOEXEC"))
}

/// The value of `key` in `/proc/self/fdinfo/N` for `fd` (`eventfd-id`, `flags`, ...).
pub(crate) fn fdinfo_field(fd: BorrowedFd<'_>, key: &str) -> Result<Option<String>, Error> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(FDINFO_LIMIT).read_to_string(&mut text))
        .map_err(|e| Error::Sys {
            step: "read fdinfo",
            source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
        })?;
    Ok(text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    }))
}
