//! What the memfd and hugetlb memfd handlers share: capturing a memory file's state and handing
//! the same memory back as a new open file description.
//!
//! Nothing is copied. The engine holds a duplicate of the client's descriptor, which keeps the
//! inode (and so every page) alive; retrieve opens the held file again through
//! `/proc/self/fd/N`, which gives a new open file description of the same inode, exactly as the
//! kernel's retrieve gives a new `struct file`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, SealFlags, SeekFrom};

use crate::error::Error;
use crate::fd;

/// Every seal luod records and restores (the kernel's `MEMFD_LUO_ALL_SEALS`): `F_SEAL_SEAL`,
/// `F_SEAL_SHRINK`, `F_SEAL_GROW`, `F_SEAL_WRITE`, `F_SEAL_FUTURE_WRITE` and `F_SEAL_EXEC`.
pub const ALL_SEALS: u32 = 0x3f;

/// Record flag: the file answered `EINVAL` to `F_GET_SEALS`, so `seals` is 0 and retrieve does
/// not check seals.
pub const FLAG_NO_SEALS: u32 = 1 << 0;

/// Record flag: the preserved open file description could read (`O_RDONLY` or `O_RDWR`).
pub const FLAG_READ: u32 = 1 << 1;

/// Record flag: the preserved open file description could write (`O_WRONLY` or `O_RDWR`).
/// Without it retrieve opens the file without write access and never resizes it.
pub const FLAG_WRITE: u32 = 1 << 2;

/// Record flag: the preserved open file description was in append mode (`O_APPEND`).
pub const FLAG_APPEND: u32 = 1 << 3;

/// The access flags: what the client's open file description allowed.
pub(crate) const ACCESS_FLAGS: u32 = FLAG_READ | FLAG_WRITE | FLAG_APPEND;

/// Every record flag defined for `memfd-v1` and `memfd-hugetlb-v1`.
pub(crate) const ALL_FLAGS: u32 = FLAG_NO_SEALS | ACCESS_FLAGS;

/// The access flags ([`FLAG_READ`], [`FLAG_WRITE`], [`FLAG_APPEND`]) of the open file
/// description behind `fd` (`F_GETFL`).
pub fn access_of(fd: BorrowedFd<'_>) -> Result<u32, Error> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(Error::sys("F_GETFL"))?;
    let mode = fl & OFlags::ACCMODE;
    let mut flags = 0;
    if mode == OFlags::RDONLY || mode == OFlags::RDWR {
        flags |= FLAG_READ;
    }
    if mode == OFlags::WRONLY || mode == OFlags::RDWR {
        flags |= FLAG_WRITE;
    }
    if fl.contains(OFlags::APPEND) {
        flags |= FLAG_APPEND;
    }
    Ok(flags)
}

/// The open flags (with `O_CLOEXEC`) that give exactly the access `flags` describes.
pub fn open_flags(flags: u32) -> OFlags {
    let mut o = match (flags & FLAG_READ != 0, flags & FLAG_WRITE != 0) {
        (true, true) => OFlags::RDWR,
        (false, true) => OFlags::WRONLY,
        _ => OFlags::RDONLY,
    };
    if flags & FLAG_APPEND != 0 {
        o |= OFlags::APPEND;
    }
    o | OFlags::CLOEXEC
}

/// The state of a memory file that both records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) size: u64,
    pub(crate) pos: u64,
    pub(crate) seals: u32,
    pub(crate) flags: u32,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl State {
    /// Reads size, position, seals and inode from `fd` (the position is the open file
    /// description's, so through a duplicate it is the client's).
    pub(crate) fn capture(fd: BorrowedFd<'_>) -> Result<State, Error> {
        let st = rustix::fs::fstat(fd).map_err(Error::sys("fstat"))?;
        let mut state = State::from_stat(fd, &st)?;
        state.flags |= access_of(fd)?;
        Ok(state)
    }

    /// For `preserve`: the checks of [`is_unlinked_file_on`] and [`State::capture`] in one
    /// pass (one `fstat`, one `fstatfs`). Returns the state and the filesystem's block size
    /// (the page size, on hugetlbfs).
    pub(crate) fn capture_unlinked_on(
        fd: BorrowedFd<'_>,
        magic: i64,
    ) -> Result<(State, u64), Error> {
        let st = rustix::fs::fstat(fd).map_err(Error::sys("fstat"))?;
        if fd::file_type(&st) != rustix::fs::FileType::RegularFile || st.st_nlink != 0 {
            return Err(Error::NotPreservable);
        }
        let sfs = rustix::fs::fstatfs(fd).map_err(Error::sys("fstatfs"))?;
        if sfs.f_type != magic {
            return Err(Error::NotPreservable);
        }
        let state = State::from_stat(fd, &st)?;
        Ok((state, u64::try_from(sfs.f_bsize).unwrap_or(0)))
    }

    /// Reads position and seals from `fd`, and size and inode from `st`, its `fstat`. The
    /// access flags are left out: preserve does without them (the held description is the
    /// client's own, and [`reopen`](Self::reopen) takes its access when the record has none),
    /// saving a system call per file; [`capture`](Self::capture), at freeze, records them.
    pub(crate) fn from_stat(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> Result<State, Error> {
        let pos = rustix::fs::seek(fd, SeekFrom::Current(0)).map_err(Error::sys("lseek"))?;
        let (seals, flags) = match rustix::fs::fcntl_get_seals(fd) {
            Ok(s) => (s.bits(), 0),
            Err(rustix::io::Errno::INVAL) => (0, FLAG_NO_SEALS),
            Err(e) => return Err(Error::sys("F_GET_SEALS")(e)),
        };
        if seals & !ALL_SEALS != 0 {
            return Err(Error::UnsupportedSeals(seals & !ALL_SEALS));
        }
        Ok(State {
            size: u64::try_from(st.st_size).unwrap_or(0),
            pos,
            seals,
            flags,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// Checks the fields every memory record shares.
    pub(crate) fn validate(&self, record: &'static str) -> Result<(), Error> {
        let field = |field| Error::RecordField { record, field };
        if self.flags & !ALL_FLAGS != 0 {
            return Err(field("flags"));
        }
        if self.flags & ACCESS_FLAGS != 0 && self.flags & (FLAG_READ | FLAG_WRITE) == 0 {
            return Err(field("flags"));
        }
        if self.seals & !ALL_SEALS != 0 || (self.flags & FLAG_NO_SEALS != 0 && self.seals != 0) {
            return Err(field("seals"));
        }
        if i64::try_from(self.size).is_err() {
            return Err(field("size"));
        }
        if i64::try_from(self.pos).is_err() {
            return Err(field("pos"));
        }
        Ok(())
    }

    /// Hands the memory back: a new open file description of the held inode with the recorded
    /// access mode, size, seals and position.
    ///
    /// The new description grants exactly what the preserved one did, never more: luod opens
    /// it as root, so the access mode is the recorded one, narrowed further by what the held
    /// description (the client's own, duplicated) allows. A record without access flags (from
    /// an older luod) takes the held description's. A file the client could not write is never
    /// resized and gets no seal.
    ///
    /// With write access, the size is set back to the recorded one if someone still holding
    /// the file changed it after freeze, unless the file is sealed against that change (then
    /// the current size stays). Seals can only be added, never removed, so the file normally
    /// already has every recorded seal; any that are missing are added, and if that is refused
    /// the retrieve fails.
    pub(crate) fn reopen(&self, held: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
        let st = rustix::fs::fstat(held).map_err(Error::sys("fstat"))?;
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) {
            return Err(Error::HeldMismatch("memory file"));
        }
        let held_access = access_of(held)?;
        let recorded = self.flags & ACCESS_FLAGS;
        let access = if recorded == 0 {
            held_access
        } else {
            // Read and write only where both allow; append where either asks for it.
            (recorded & held_access & (FLAG_READ | FLAG_WRITE))
                | ((recorded | held_access) & FLAG_APPEND)
        };
        if access & (FLAG_READ | FLAG_WRITE) == 0 {
            return Err(Error::HeldMismatch("memory file access mode"));
        }
        let writable = access & FLAG_WRITE != 0;
        let open = rustix::fs::open(fd::proc_path(held), open_flags(access), Mode::empty())
            .map_err(Error::sys("reopen"))?;
        let now = rustix::fs::fstat(&open).map_err(Error::sys("fstat"))?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            return Err(Error::ReopenMismatch);
        }

        let seals_now = match rustix::fs::fcntl_get_seals(&open) {
            Ok(s) => s.bits(),
            Err(rustix::io::Errno::INVAL) => 0,
            Err(e) => return Err(Error::sys("F_GET_SEALS")(e)),
        };
        let size_now = u64::try_from(now.st_size).unwrap_or(0);
        let blocked = (self.size < size_now && seals_now & SealFlags::SHRINK.bits() != 0)
            || (self.size > size_now && seals_now & SealFlags::GROW.bits() != 0);
        if size_now != self.size && !blocked && writable {
            rustix::fs::ftruncate(&open, self.size).map_err(Error::sys("ftruncate"))?;
        }

        if self.flags & FLAG_NO_SEALS == 0 {
            let missing = self.seals & !seals_now;
            if missing != 0 {
                rustix::fs::fcntl_add_seals(&open, SealFlags::from_bits_retain(missing))
                    .map_err(Error::sys("F_ADD_SEALS"))?;
            }
        }

        rustix::fs::seek(&open, SeekFrom::Start(self.pos)).map_err(Error::sys("lseek"))?;
        Ok(open)
    }
}

/// Checks `fd` is an unlinked regular file on a filesystem with magic `magic`, open for I/O.
pub(crate) fn is_unlinked_file_on(fd: BorrowedFd<'_>, magic: i64) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| is_unlinked_stat_on(fd, &st, magic))
}

/// [`is_unlinked_file_on`] given `st`, the `fstat` of `fd`: the type and the links come from
/// `st` (any other type of file costs no system call), then the open mode (`F_GETFL`) and the
/// filesystem (`fstatfs`) from `fd`.
pub(crate) fn is_unlinked_stat_on(fd: BorrowedFd<'_>, st: &rustix::fs::Stat, magic: i64) -> bool {
    fd::file_type(st) == rustix::fs::FileType::RegularFile
        && st.st_nlink == 0
        && !fd::is_path_only(fd)
        && fd::fs_magic(fd.as_fd()) == Some(magic)
}
