//! The kernel's `/dev/liveupdate` uAPI (`include/uapi/linux/liveupdate.h`), byte for byte.
//!
//! This module is a contract: programs written for the kernel's Live Update Orchestrator send
//! these exact bytes, and luod must read and answer them as the kernel would.
//!
//! # General ioctl format
//!
//! Every command is `_IO(0xBA, nr)`: no direction and no size bits. The argument is a struct
//! whose first `u32` is `size`, the caller's idea of the struct's size. A struct shorter than the
//! command's minimum is `EINVAL`; a struct longer than the known size must have an all-zero tail,
//! else `E2BIG`; a shorter one is zero-extended. This is how the structs grow compatibly.
//!
//! ```text
//!  CREATE_SESSION / RETRIEVE_SESSION (72 bytes)     PRESERVE_FD / RETRIEVE_FD (16 bytes)
//!  0      4      8                         72       0      4      8             16
//!  +------+------+-------------------------+        +------+------+-------------+
//!  | size |  fd  | name[64], NUL-terminated|        | size |  fd  |    token    |
//!  +------+------+-------------------------+        +------+------+-------------+
//!
//!  FINISH (8 bytes)           GET_NAME (72 bytes)
//!  0      4        8          0      4          8                         72
//!  +------+--------+          +------+----------+-------------------------+
//!  | size |reserved|          | size | reserved | name[64], NUL-terminated|
//!  +------+--------+          +------+----------+-------------------------+
//! ```
//!
//! Fields are little-endian (`zerocopy` byte-order types), which is the kernel's native layout on
//! x86_64 and aarch64. Changing any struct here breaks every program built against the kernel's
//! header: these layouts never change.

use zerocopy::byteorder::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::Errno;

/// The ioctl type byte registered for live update.
pub const LIVEUPDATE_IOCTL_TYPE: u32 = 0xBA;
/// Bytes in a session name, including the terminating NUL.
pub const LIVEUPDATE_SESSION_NAME_LENGTH: usize = 64;
/// Longest session name, without the NUL.
pub const SESSION_NAME_MAX: usize = LIVEUPDATE_SESSION_NAME_LENGTH - 1;

/// First command number of the device (`/dev/liveupdate`) table.
pub const LIVEUPDATE_CMD_BASE: u32 = 0x00;
/// Create an outgoing session.
pub const LIVEUPDATE_CMD_CREATE_SESSION: u32 = 0x00;
/// Retrieve an incoming session.
pub const LIVEUPDATE_CMD_RETRIEVE_SESSION: u32 = 0x01;
/// First command number of the session table.
pub const LIVEUPDATE_CMD_SESSION_BASE: u32 = 0x40;
/// Preserve a descriptor in an outgoing session.
pub const LIVEUPDATE_CMD_SESSION_PRESERVE_FD: u32 = 0x40;
/// Retrieve a descriptor from an incoming session.
pub const LIVEUPDATE_CMD_SESSION_RETRIEVE_FD: u32 = 0x41;
/// Finish an incoming session.
pub const LIVEUPDATE_CMD_SESSION_FINISH: u32 = 0x42;
/// Read a session's full name.
pub const LIVEUPDATE_CMD_SESSION_GET_NAME: u32 = 0x43;

/// `_IO(type, nr)` on x86_64 and aarch64: no direction bits, no size bits.
pub const fn io(ty: u32, nr: u32) -> u32 {
    (ty << 8) | nr
}

/// `LIVEUPDATE_IOCTL_CREATE_SESSION`, on the device.
pub const LIVEUPDATE_IOCTL_CREATE_SESSION: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_CREATE_SESSION);
/// `LIVEUPDATE_IOCTL_RETRIEVE_SESSION`, on the device.
pub const LIVEUPDATE_IOCTL_RETRIEVE_SESSION: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_RETRIEVE_SESSION);
/// `LIVEUPDATE_SESSION_PRESERVE_FD`, on a session.
pub const LIVEUPDATE_SESSION_PRESERVE_FD: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_PRESERVE_FD);
/// `LIVEUPDATE_SESSION_RETRIEVE_FD`, on a session.
pub const LIVEUPDATE_SESSION_RETRIEVE_FD: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_RETRIEVE_FD);
/// `LIVEUPDATE_SESSION_FINISH`, on a session.
pub const LIVEUPDATE_SESSION_FINISH: u32 = io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_FINISH);
/// `LIVEUPDATE_SESSION_GET_NAME`, on a session.
pub const LIVEUPDATE_SESSION_GET_NAME: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_GET_NAME);

const _: () = assert!(LIVEUPDATE_IOCTL_CREATE_SESSION == 0xBA00);
const _: () = assert!(LIVEUPDATE_IOCTL_RETRIEVE_SESSION == 0xBA01);
const _: () = assert!(LIVEUPDATE_SESSION_PRESERVE_FD == 0xBA40);
const _: () = assert!(LIVEUPDATE_SESSION_RETRIEVE_FD == 0xBA41);
const _: () = assert!(LIVEUPDATE_SESSION_FINISH == 0xBA42);
const _: () = assert!(LIVEUPDATE_SESSION_GET_NAME == 0xBA43);

/// `struct liveupdate_ioctl_create_session`: `size` in, `fd` out, `name` in.
///
/// Changing this struct breaks the kernel uAPI: it never changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CreateSession {
    /// Caller's idea of the struct size.
    pub size: U32,
    /// Out: the new session descriptor (close-on-exec).
    pub fd: I32,
    /// NUL-terminated session name.
    pub name: [u8; LIVEUPDATE_SESSION_NAME_LENGTH],
}
const _: () = assert!(core::mem::size_of::<CreateSession>() == 72);

/// `struct liveupdate_ioctl_retrieve_session`: the same layout as [`CreateSession`].
pub type RetrieveSession = CreateSession;

impl CreateSession {
    /// A request for `name`, or `None` if the name does not fit in 63 bytes.
    pub fn new(name: &[u8]) -> Option<Self> {
        let mut req = CreateSession {
            size: U32::new(72),
            fd: I32::new(-1),
            name: [0; LIVEUPDATE_SESSION_NAME_LENGTH],
        };
        if name.len() > SESSION_NAME_MAX {
            return None;
        }
        req.name[..name.len()].copy_from_slice(name);
        Some(req)
    }

    /// The name up to its NUL, or `None` when it is empty or has no NUL in 64 bytes (`EINVAL`
    /// in the kernel).
    pub fn name_bytes(&self) -> Option<&[u8]> {
        session_name(&self.name)
    }
}

/// The kernel's name rule: `strnlen(name, 64)` must be 1..=63.
pub fn session_name(raw: &[u8; LIVEUPDATE_SESSION_NAME_LENGTH]) -> Option<&[u8]> {
    let len = raw.iter().position(|&b| b == 0)?;
    if len == 0 { None } else { Some(&raw[..len]) }
}

/// `struct liveupdate_session_preserve_fd`: `size`, `fd` in, `token` in.
///
/// Changing this struct breaks the kernel uAPI: it never changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PreserveFd {
    /// Caller's idea of the struct size.
    pub size: U32,
    /// The descriptor to preserve (in); for RETRIEVE_FD, the new descriptor (out).
    pub fd: I32,
    /// The caller's token for the file, any `u64`, unique within the session.
    pub token: U64,
}
const _: () = assert!(core::mem::size_of::<PreserveFd>() == 16);

/// `struct liveupdate_session_retrieve_fd`: the same layout as [`PreserveFd`], `fd` is out.
pub type RetrieveFd = PreserveFd;

/// `struct liveupdate_session_finish`.
///
/// Changing this struct breaks the kernel uAPI: it never changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Finish {
    /// Caller's idea of the struct size.
    pub size: U32,
    /// Must be zero (`EINVAL` otherwise).
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<Finish>() == 8);

/// `struct liveupdate_session_get_name`.
///
/// Changing this struct breaks the kernel uAPI: it never changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GetName {
    /// Caller's idea of the struct size.
    pub size: U32,
    /// Must be zero (`EINVAL` otherwise).
    pub reserved: U32,
    /// Out: the full name, NUL-terminated.
    pub name: [u8; LIVEUPDATE_SESSION_NAME_LENGTH],
}
const _: () = assert!(core::mem::size_of::<GetName>() == 72);

/// Which kind of descriptor an ioctl is issued on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An open `/dev/liveupdate`.
    Device,
    /// A session descriptor.
    Session,
}

/// One row of the kernel's per-descriptor ioctl table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoctlDesc {
    /// The full command word.
    pub cmd: u32,
    /// Offset of the end of the last mandatory member.
    pub min_size: u32,
    /// `sizeof` the struct as this version knows it.
    pub known_size: u32,
}

const DEVICE_TABLE: [IoctlDesc; 2] = [
    IoctlDesc {
        cmd: LIVEUPDATE_IOCTL_CREATE_SESSION,
        min_size: 72,
        known_size: 72,
    },
    IoctlDesc {
        cmd: LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
        min_size: 72,
        known_size: 72,
    },
];

const SESSION_TABLE: [IoctlDesc; 4] = [
    IoctlDesc {
        cmd: LIVEUPDATE_SESSION_PRESERVE_FD,
        min_size: 16,
        known_size: 16,
    },
    IoctlDesc {
        cmd: LIVEUPDATE_SESSION_RETRIEVE_FD,
        min_size: 16,
        known_size: 16,
    },
    IoctlDesc {
        cmd: LIVEUPDATE_SESSION_FINISH,
        min_size: 8,
        known_size: 8,
    },
    IoctlDesc {
        cmd: LIVEUPDATE_SESSION_GET_NAME,
        min_size: 72,
        known_size: 72,
    },
];

/// Steps 1 and 3 of the kernel's decoding: find the table row for `cmd` on `target`.
///
/// An index out of the table is `EINVAL` (not `ENOTTY`, as the kernel does); the right index
/// with any other bit different (type byte, direction, size) is `ENOTTY`.
pub fn lookup(target: Target, cmd: u32) -> Result<IoctlDesc, Errno> {
    let (base, table): (u32, &[IoctlDesc]) = match target {
        Target::Device => (LIVEUPDATE_CMD_BASE, &DEVICE_TABLE),
        Target::Session => (LIVEUPDATE_CMD_SESSION_BASE, &SESSION_TABLE),
    };
    let nr = cmd & 0xff;
    let index = nr.checked_sub(base).ok_or(Errno::EINVAL)? as usize;
    let desc = *table.get(index).ok_or(Errno::EINVAL)?;
    if desc.cmd != cmd {
        return Err(Errno::ENOTTY);
    }
    Ok(desc)
}

/// What a session descriptor is, as [`decode`] needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// An outgoing session: PRESERVE_FD and GET_NAME.
    Outgoing,
    /// An incoming session: RETRIEVE_FD, FINISH and GET_NAME.
    Incoming,
    /// A descriptor whose session was handed off or is gone: nothing.
    Inert,
}

/// A kernel request decoded by [`decode`].
#[derive(Clone, Copy, Debug)]
pub struct Decoded {
    /// The table row of the command.
    pub desc: IoctlDesc,
    /// The struct, zero-filled past what the caller sent.
    pub buf: [u8; 72],
    /// How many bytes of the reply struct go back to the caller (its `size`, at most the
    /// known size).
    pub copy_back: usize,
}

/// The kernel's decoding of one request on a descriptor of `target`, in the kernel's order:
/// the command's table row (`EINVAL` outside the table, `ENOTTY` for a wrong command word),
/// the session's direction (`EINVAL`), the caller's `size` (`EINVAL` if missing or below the
/// mandatory part), the struct's tail (`E2BIG` for a non-zero byte past the known size), and
/// the descriptors attached (`EINVAL` for one where none is expected, or more than one).
/// `session` is ignored for [`Target::Device`]; `arg` is the message's argument, whose first 4
/// bytes are the caller's `size`. luod decodes with this, and the wire fuzz target fuzzes it.
pub fn decode(
    target: Target,
    session: SessionState,
    cmd: u32,
    arg: &[u8],
    fds: usize,
) -> Result<Decoded, Errno> {
    let desc = lookup(target, cmd)?;
    if target == Target::Session {
        let wrong = match session {
            SessionState::Inert => true,
            SessionState::Outgoing => {
                cmd == LIVEUPDATE_SESSION_RETRIEVE_FD || cmd == LIVEUPDATE_SESSION_FINISH
            }
            SessionState::Incoming => cmd == LIVEUPDATE_SESSION_PRESERVE_FD,
        };
        if wrong {
            return Err(Errno::EINVAL);
        }
    }
    let size = arg
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(Errno::EINVAL)?;
    if size < desc.min_size {
        return Err(Errno::EINVAL);
    }
    let given = &arg[..arg.len().min(size as usize)];
    let mut buf = [0u8; 72];
    copy_struct(&desc, given, &mut buf)?;
    if fds > usize::from(cmd == LIVEUPDATE_SESSION_PRESERVE_FD) {
        return Err(Errno::EINVAL);
    }
    Ok(Decoded {
        desc,
        buf,
        copy_back: size.min(desc.known_size) as usize,
    })
}

/// Steps 5 and 6 of the kernel's decoding: check `size` against the row and copy the caller's
/// bytes into a zero-filled buffer of the known size.
///
/// `arg` is what the caller sent (its length is the caller's `size`). Too short is `EINVAL`; a
/// non-zero byte past the known size is `E2BIG`.
pub fn copy_struct(desc: &IoctlDesc, arg: &[u8], out: &mut [u8]) -> Result<(), Errno> {
    let known = desc.known_size as usize;
    if arg.len() < desc.min_size as usize || out.len() < known {
        return Err(Errno::EINVAL);
    }
    if arg.len() > known && arg[known..].iter().any(|&b| b != 0) {
        return Err(Errno::E2BIG);
    }
    let n = arg.len().min(known);
    out[..n].copy_from_slice(&arg[..n]);
    out[n..known].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_in_the_kernels_order() {
        use SessionState::{Incoming, Inert, Outgoing};
        let mut preserve = [0u8; 16];
        preserve[..4].copy_from_slice(&16u32.to_le_bytes());
        let p = LIVEUPDATE_SESSION_PRESERVE_FD;
        let ok = decode(Target::Session, Outgoing, p, &preserve, 1).expect("valid");
        assert_eq!(ok.copy_back, 16);
        // Direction before size: an incoming session refuses PRESERVE_FD even with no size.
        assert_eq!(
            decode(Target::Session, Incoming, p, &[], 1).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            decode(Target::Session, Inert, p, &preserve, 1).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            decode(
                Target::Session,
                Outgoing,
                LIVEUPDATE_SESSION_FINISH,
                &preserve,
                0
            )
            .unwrap_err(),
            Errno::EINVAL
        );
        // The size: missing, or below the mandatory part.
        assert_eq!(
            decode(Target::Session, Outgoing, p, &[1, 0], 1).unwrap_err(),
            Errno::EINVAL
        );
        let mut short = preserve;
        short[..4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            decode(Target::Session, Outgoing, p, &short, 1).unwrap_err(),
            Errno::EINVAL
        );
        // A dirty tail past the known size, then the descriptors.
        let mut long = [0u8; 24];
        long[..4].copy_from_slice(&24u32.to_le_bytes());
        decode(Target::Session, Outgoing, p, &long, 1).expect("a clean tail is fine");
        long[20] = 1;
        assert_eq!(
            decode(Target::Session, Outgoing, p, &long, 1).unwrap_err(),
            Errno::E2BIG
        );
        assert_eq!(
            decode(Target::Session, Outgoing, p, &preserve, 2).unwrap_err(),
            Errno::EINVAL
        );
        let mut name = [0u8; 72];
        name[..4].copy_from_slice(&72u32.to_le_bytes());
        assert_eq!(
            decode(
                Target::Device,
                Inert,
                LIVEUPDATE_IOCTL_CREATE_SESSION,
                &name,
                1
            )
            .unwrap_err(),
            Errno::EINVAL,
            "a descriptor where none is expected"
        );
        // The table: outside it EINVAL, a wrong command word in it ENOTTY.
        assert_eq!(
            decode(Target::Device, Inert, 0xBA7F, &name, 0).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            decode(
                Target::Device,
                Inert,
                LIVEUPDATE_IOCTL_CREATE_SESSION ^ (1 << 30),
                &name,
                0
            )
            .unwrap_err(),
            Errno::ENOTTY
        );
    }

    #[test]
    fn out_of_range_is_einval_and_wrong_type_is_enotty() {
        assert_eq!(lookup(Target::Device, 0xBA02), Err(Errno::EINVAL));
        assert_eq!(lookup(Target::Device, 0xBA40), Err(Errno::EINVAL));
        assert_eq!(lookup(Target::Session, 0xBA00), Err(Errno::EINVAL));
        assert_eq!(lookup(Target::Session, 0xBA44), Err(Errno::EINVAL));
        assert_eq!(lookup(Target::Device, 0xBB00), Err(Errno::ENOTTY));
        assert_eq!(lookup(Target::Session, 0x4008_BA41), Err(Errno::ENOTTY));
        assert_eq!(lookup(Target::Session, 0xBA43).map(|d| d.min_size), Ok(72));
    }

    #[test]
    fn copy_struct_zero_extends_and_rejects_dirty_tails() {
        let desc = lookup(Target::Session, LIVEUPDATE_SESSION_FINISH).unwrap();
        let mut out = [0xffu8; 8];
        assert_eq!(
            copy_struct(&desc, &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0], &mut out),
            Ok(())
        );
        assert_eq!(
            copy_struct(&desc, &[8, 0, 0, 0, 0, 0, 0, 0, 1], &mut out),
            Err(Errno::E2BIG)
        );
        assert_eq!(
            copy_struct(&desc, &[8, 0, 0, 0], &mut out),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn session_name_rules() {
        let mut raw = [0u8; 64];
        assert_eq!(session_name(&raw), None);
        raw[0] = b'a';
        assert_eq!(session_name(&raw), Some(&b"a"[..]));
        let full = [b'x'; 64];
        assert_eq!(session_name(&full), None);
        let mut max = [b'x'; 64];
        max[63] = 0;
        assert_eq!(session_name(&max).map(|n| n.len()), Some(63));
        assert!(CreateSession::new(&[b'y'; 64]).is_none());
    }
}
