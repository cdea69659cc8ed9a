//! The kernel's `/dev/liveupdate` and its session descriptors, driven through the real ioctls.
//!
//! The ioctl numbers and argument structs are luo-abi's ([`luo_abi::uapi`]), the same ones luod
//! answers to; here they go to the kernel itself. This module is the crate's only `unsafe`: the
//! ioctl calls and taking ownership of the descriptors the kernel returns.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use luo_abi::uapi::{self, CreateSession, Finish, GetName, PreserveFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, Result};
use rustix::ioctl::{Opcode, Updater};
use zerocopy::byteorder::little_endian::{I32, U32, U64};

/// Where the kernel's device lives.
pub const DEVICE: &str = "/dev/liveupdate";

const CREATE_SESSION: Opcode = uapi::LIVEUPDATE_IOCTL_CREATE_SESSION as Opcode;
const RETRIEVE_SESSION: Opcode = uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION as Opcode;
const PRESERVE_FD: Opcode = uapi::LIVEUPDATE_SESSION_PRESERVE_FD as Opcode;
const RETRIEVE_FD: Opcode = uapi::LIVEUPDATE_SESSION_RETRIEVE_FD as Opcode;
const FINISH: Opcode = uapi::LIVEUPDATE_SESSION_FINISH as Opcode;
const GET_NAME: Opcode = uapi::LIVEUPDATE_SESSION_GET_NAME as Opcode;

/// Issues ioctl `OP` on `fd` with `arg`, which the kernel reads and may write back.
fn ioctl<const OP: Opcode, T>(fd: BorrowedFd<'_>, arg: &mut T) -> Result<()> {
    // SAFETY: every LUO ioctl is `_IO(0xBA, nr)` with a pointer to its argument struct, whose
    // first u32 tells the kernel how many bytes it may read and write back; callers pass the
    // luo-abi struct for `OP` (sizes checked at compile time there) with `size` set to its full
    // length, so the kernel touches only `*arg`, which is borrowed mutably for the call.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<OP, T>::new(arg)) }
}

/// Takes ownership of a descriptor the kernel just installed for this process.
fn owned(fd: I32) -> Result<OwnedFd> {
    let raw = fd.get();
    if raw < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: a successful CREATE_SESSION, RETRIEVE_SESSION or RETRIEVE_FD installs a new
    // descriptor and reports it in `fd`; nothing else in the process knows of it, so it is
    // owned here exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn name_request(name: &str) -> Result<CreateSession> {
    CreateSession::new(name.as_bytes()).ok_or(Errno::NAMETOOLONG)
}

/// An open `/dev/liveupdate` (the kernel lets one description exist at a time: `EBUSY`).
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

impl Device {
    /// Opens the device, read-write and close-on-exec.
    pub fn open() -> Result<Device> {
        Device::open_at(DEVICE)
    }

    /// Opens the device at `path` (a kernel's `/dev/liveupdate`, or a node made for it).
    /// `EBUSY`: another open description of it exists (the kernel allows one).
    pub fn open_at(path: impl AsRef<std::path::Path>) -> Result<Device> {
        let fd = rustix::fs::open(path.as_ref(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Device { fd })
    }

    /// `LIVEUPDATE_IOCTL_CREATE_SESSION`: a new outgoing session.
    pub fn create_session(&self, name: &str) -> Result<Session> {
        let mut req = name_request(name)?;
        ioctl::<CREATE_SESSION, _>(self.fd.as_fd(), &mut req)?;
        Ok(Session { fd: owned(req.fd)? })
    }

    /// `LIVEUPDATE_IOCTL_RETRIEVE_SESSION`: an incoming session, preserved by the previous
    /// kernel's userspace.
    pub fn retrieve_session(&self, name: &str) -> Result<Session> {
        let mut req = name_request(name)?;
        ioctl::<RETRIEVE_SESSION, _>(self.fd.as_fd(), &mut req)?;
        Ok(Session { fd: owned(req.fd)? })
    }
}

/// A session descriptor. Closing an outgoing one unpreserves its files; closing an incoming
/// one finishes it.
#[derive(Debug)]
pub struct Session {
    fd: OwnedFd,
}

impl AsFd for Session {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Session {
    /// `LIVEUPDATE_SESSION_PRESERVE_FD`: carries `file` across the next kexec under `token`.
    pub fn preserve_fd(&self, file: impl AsFd, token: u64) -> Result<()> {
        let mut req = PreserveFd {
            size: U32::new(16),
            fd: I32::new(file.as_fd().as_raw_fd()),
            token: U64::new(token),
        };
        ioctl::<PRESERVE_FD, _>(self.fd.as_fd(), &mut req)
    }

    /// `LIVEUPDATE_SESSION_RETRIEVE_FD`: the file preserved under `token`, as a new descriptor.
    pub fn retrieve_fd(&self, token: u64) -> Result<OwnedFd> {
        let mut req = PreserveFd {
            size: U32::new(16),
            fd: I32::new(-1),
            token: U64::new(token),
        };
        ioctl::<RETRIEVE_FD, _>(self.fd.as_fd(), &mut req)?;
        owned(req.fd)
    }

    /// `LIVEUPDATE_SESSION_FINISH`: the incoming session's files are the caller's now.
    pub fn finish(&self) -> Result<()> {
        let mut req = Finish {
            size: U32::new(8),
            reserved: U32::new(0),
        };
        ioctl::<FINISH, _>(self.fd.as_fd(), &mut req)
    }

    /// `LIVEUPDATE_SESSION_GET_NAME`: the session's full name.
    pub fn name(&self) -> Result<Vec<u8>> {
        let mut req = GetName {
            size: U32::new(72),
            reserved: U32::new(0),
            name: [0; uapi::LIVEUPDATE_SESSION_NAME_LENGTH],
        };
        ioctl::<GET_NAME, _>(self.fd.as_fd(), &mut req)?;
        let len = req.name.iter().position(|&b| b == 0).ok_or(Errno::INVAL)?;
        Ok(req.name[..len].to_vec())
    }
}
