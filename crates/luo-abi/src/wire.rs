//! The client <-> luod message framing.
//!
//! This module is a contract between luod and its clients (luo-client, luo-preload, luoctl),
//! which may be built from different versions: it only grows, and any change to an existing
//! layout bumps [`WIRE_VERSION`].
//!
//! # Transport
//!
//! An `AF_UNIX` `SOCK_SEQPACKET` socket: one datagram is one message, at most [`MAX_MESSAGE`]
//! bytes, with at most [`MAX_FDS`] descriptors attached as `SCM_RIGHTS`. A client connects to
//! luod's socket and gets a *control* connection; [`Op::OpenDevice`] turns it into the
//! *device* connection of its uid (the part of an open `/dev/liveupdate`). CREATE_SESSION and
//! RETRIEVE_SESSION answer with a new *session* connection: one end of a socket pair, attached
//! to the reply. Closing the last copy of that descriptor, in any process, closes the session.
//!
//! # Messages
//!
//! ```text
//!  request                                   reply
//!  0       4       8              16         0       4       8              16
//!  +-------+-------+--------------+----      +-------+-------+--------------+----
//!  |  op   |  len  |      id      | arg      | errno |  len  |      id      | arg
//!  +-------+-------+--------------+----      +-------+-------+--------------+----
//! ```
//!
//! - `op`: for the kernel's operations, the ioctl command word itself (`0xBA00`...), so luod
//!   decodes it exactly as the kernel does ([`crate::uapi::lookup`]); luod's own operations are
//!   in the [`NATIVE_BASE`] range.
//! - `len`: bytes of `arg` that follow. For a kernel operation, `arg` is the caller's struct and
//!   `len` equals its `size` field: luod applies the kernel's size rules to it.
//! - `id`: chosen by the client, echoed in the reply.
//! - `errno`: 0 on success, else a positive errno; `arg` of a failed native operation may hold
//!   a UTF-8 message saying why.
//! - A reply's `arg` for a kernel operation is the struct as the kernel copies it back:
//!   `min(size, known size)` bytes. A returned descriptor travels as `SCM_RIGHTS`, and the
//!   struct's `fd` field is rewritten by the client with the number it received.
//!
//! All integers are little-endian.

use zerocopy::byteorder::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::Errno;

/// Version of this framing. Changing any layout here, or an errno rule of `docs/protocol.md`,
/// bumps it. 2 added the upgrade fields of [`StatusReply`]; 3 added MIGRATE; 4 answers a
/// descriptor luod could not receive with `EMFILE` (was `EINVAL`), and refuses over a uid's
/// descriptor budget; 5 added the keeper's fields of [`StatusReply`] and FAILPOINT, and
/// requires a request's id to differ from the previous request's on the same connection
/// (exactly-once delivery, `docs/protocol.md`).
pub const WIRE_VERSION: u32 = 6;
/// Largest message, header included.
pub const MAX_MESSAGE: usize = 4096;
/// Most descriptors attached to one message (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;
/// First opcode of luod's own operations.
pub const NATIVE_BASE: u32 = 0x4C55_0000;

/// Header of every request.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RequestHeader {
    /// The operation: an ioctl command word or an [`Op`].
    pub op: U32,
    /// Bytes of argument that follow the header.
    pub len: U32,
    /// Chosen by the client, echoed in the reply.
    pub id: U64,
}
const _: () = assert!(core::mem::size_of::<RequestHeader>() == 16);

/// Header of every reply.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReplyHeader {
    /// 0 on success, else a positive errno.
    pub errno: I32,
    /// Bytes of argument that follow the header.
    pub len: U32,
    /// The request's id.
    pub id: U64,
}
const _: () = assert!(core::mem::size_of::<ReplyHeader>() == 16);

/// Largest argument of one message.
pub const MAX_ARG: usize = MAX_MESSAGE - core::mem::size_of::<RequestHeader>();

/// luod's own operations (the kernel's travel as their ioctl command word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// Control connection -> device connection of the caller's uid. `EBUSY` while another is
    /// open. No argument.
    OpenDevice = NATIVE_BASE + 1,
    /// On a session connection: hand the outgoing session off (freeze it and move it to the
    /// incoming set). No argument.
    Handoff = NATIVE_BASE + 2,
    /// List sessions: argument [`ListRequest`], reply [`ListReply`] then entries.
    List = NATIVE_BASE + 3,
    /// Status: no argument, reply [`StatusReply`].
    Status = NATIVE_BASE + 4,
    /// Upgrade luod: argument the new binary's path (UTF-8, may be empty for the current one).
    Upgrade = NATIVE_BASE + 5,
    /// Emulate a reboot. No argument.
    Reboot = NATIVE_BASE + 6,
    /// Liveness: no argument, empty reply.
    Ping = NATIVE_BASE + 7,
    /// On a session connection: replace the file preserved under a token of the outgoing
    /// session with the one descriptor attached, in one step (the old file stays if anything
    /// fails). Argument [`ReplaceFdRequest`], empty reply.
    ReplaceFd = NATIVE_BASE + 8,
    /// Move a preserved memory file onto new backing (another page size), copying it with
    /// luod's copy engine: argument [`MigrateRequest`], reply [`MigrateReply`].
    Migrate = NATIVE_BASE + 9,
    /// Test-only: arm a failpoint of the server (argument [`FailpointRequest`], empty reply).
    /// Refused with `EPERM` unless luod was started with `LUOD_FAILPOINTS=1`, and for every
    /// uid but root and luod's own. Wire version 5.
    Failpoint = NATIVE_BASE + 10,
    /// Host kernel live update through the kernel's `/dev/liveupdate`: check which preserved
    /// files can cross a kexec, or forward every session into kernel sessions (and kexec), or
    /// cancel a forward. Argument [`KexecRequest`], reply [`KexecReply`] then one
    /// [`KexecEntry`] per file that cannot cross. Root and luod's own uid only. Wire version 6.
    Kexec = NATIVE_BASE + 11,
}

impl Op {
    /// The native operation with this opcode.
    pub fn from_raw(op: u32) -> Option<Op> {
        Some(match op.checked_sub(NATIVE_BASE)? {
            1 => Op::OpenDevice,
            2 => Op::Handoff,
            3 => Op::List,
            4 => Op::Status,
            5 => Op::Upgrade,
            6 => Op::Reboot,
            7 => Op::Ping,
            8 => Op::ReplaceFd,
            9 => Op::Migrate,
            10 => Op::Failpoint,
            11 => Op::Kexec,
            _ => return None,
        })
    }
}

/// Argument of [`Op::ReplaceFd`]: the token whose file is replaced.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReplaceFdRequest {
    /// The token, as given to PRESERVE_FD.
    pub token: U64,
}

const _: () = assert!(size_of::<ReplaceFdRequest>() == 8);

/// [`MigrateRequest::owner`] for the caller's own namespace.
pub const MIGRATE_OWN: u32 = u32::MAX;

/// Argument of [`Op::Migrate`]: which file, and onto what.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MigrateRequest {
    /// The session's name, 1..=63 bytes, NUL-terminated, zero-padded.
    pub name: [u8; 64],
    /// The file's token.
    pub token: U64,
    /// The page size of the new backing: 4096, 2 MiB or 1 GiB.
    pub page_size: U64,
    /// The namespace (uid) of the session, or [`MIGRATE_OWN`]; another uid's is root's only.
    pub owner: U32,
    /// Zero.
    pub flags: U32,
}

const _: () = assert!(size_of::<MigrateRequest>() == 88);

/// Reply of [`Op::Migrate`]: what was copied and how.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MigrateReply {
    /// Bytes copied (the file's size).
    pub bytes: U64,
    /// The new backing's page size.
    pub page_size: U64,
    /// Nanoseconds the copy took.
    pub copy_ns: U64,
    /// Units copied.
    pub units: U64,
    /// Units a copy channel did not complete, copied by the CPU instead.
    pub units_fallback: U64,
    /// Copy channels of the driver (0: the CPU alone).
    pub channels: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = assert!(size_of::<MigrateReply>() == 48);

/// Argument of [`Op::List`]: the first session to list (0 for the start).
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ListRequest {
    /// Index of the first session wanted.
    pub start: U64,
}
const _: () = assert!(core::mem::size_of::<ListRequest>() == 8);

/// Head of the reply to [`Op::List`], followed by `count` [`ListEntry`].
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ListReply {
    /// Entries in this reply.
    pub count: U32,
    /// Zero.
    pub reserved: U32,
    /// Sessions visible to the caller in all.
    pub total: U64,
}
const _: () = assert!(core::mem::size_of::<ListReply>() == 16);

/// `ListEntry::flags`: the session is incoming.
pub const LIST_INCOMING: u32 = 1 << 0;
/// `ListEntry::flags`: an incoming session a client retrieved.
pub const LIST_RETRIEVED: u32 = 1 << 1;
/// `ListEntry::flags`: an incoming session that was finished.
pub const LIST_FINISHED: u32 = 1 << 2;

/// One session in a [`ListReply`].
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ListEntry {
    /// Namespace (uid).
    pub owner: U32,
    /// `LIST_*` bits.
    pub flags: U32,
    /// Files held.
    pub files: U64,
    /// Bytes of memory the files keep alive.
    pub bytes: U64,
    /// NUL-terminated name.
    pub name: [u8; 64],
}
const _: () = assert!(core::mem::size_of::<ListEntry>() == 88);

/// Most entries in one list reply.
pub const LIST_MAX: usize =
    (MAX_MESSAGE - core::mem::size_of::<ReplyHeader>() - core::mem::size_of::<ListReply>())
        / core::mem::size_of::<ListEntry>();

/// Reply to [`Op::Status`].
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct StatusReply {
    /// `WIRE_VERSION` of the daemon.
    pub wire_version: U32,
    /// Daemon pid.
    pub pid: U32,
    /// Generation (reboots since the first start).
    pub generation: U64,
    /// Outgoing sessions.
    pub sessions_outgoing: U64,
    /// Incoming sessions.
    pub sessions_incoming: U64,
    /// Preserved files.
    pub files: U64,
    /// Bytes of memory preserved files keep alive.
    pub bytes: U64,
    /// Connected clients (device, control and session connections).
    pub clients: U64,
    /// Milliseconds since this generation started.
    pub uptime_ms: U64,
    /// The daemon's descriptor limit.
    pub fd_limit: U64,
    /// Descriptors the daemon holds.
    pub fd_used: U64,
    /// Orchestrator upgrades since this generation started.
    pub upgrades: U64,
    /// The daemon's version, NUL-padded.
    pub version: [u8; 32],
    /// How the last upgrade went: successors started for it (1 when the first one, prepared
    /// while the old server kept serving, was taken; 0 before any upgrade).
    pub last_upgrade_rounds: U32,
    /// [`UPGRADE_STOP_AND_COPY`] if the last upgrade fell back to stopping the old server
    /// while its successor prepared.
    pub last_upgrade_flags: U32,
    /// The migration in progress: bytes copied so far (0 when none). Wire version 3.
    pub migrate_done: U64,
    /// The migration in progress: bytes to copy (0 when none).
    pub migrate_total: U64,
    /// The copy engine since start: bytes copied.
    pub copy_bytes: U64,
    /// The copy engine since start: units copied.
    pub copy_units: U64,
    /// The copy engine since start: units a copy channel left undone, copied by the CPU.
    pub copy_units_fallback: U64,
    /// The copy engine since start: batches the policy kept on the CPU.
    pub copy_batches_cpu: U64,
    /// The keeper's pid: luod's main process, which never changes while luod runs (the
    /// server, [`pid`](Self::pid), is its child and changes at an upgrade or a crash). Wire
    /// version 5.
    pub keeper_pid: U32,
    /// Servers the keeper started because the one before died (not upgrades).
    pub restarts: U32,
    /// How long the last recovery took, in microseconds: from the keeper seeing the server
    /// die to the new server ready to answer (0 before any).
    pub last_recovery_us: U64,
}
const _: () = assert!(core::mem::size_of::<StatusReply>() == 192);

/// Argument of [`Op::Failpoint`]: the server dies (SIGKILL of itself) the `hit`-th time it
/// passes the point named `name` (UTF-8, the rest of the argument), counting from the request;
/// `hit` 0 disarms it. Points are listed in `docs/protocol.md`.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FailpointRequest {
    /// Which pass kills the server (1: the next one); 0 disarms.
    pub hit: U32,
}

/// [`KexecRequest::flags`]: only report which files can cross; change nothing.
pub const KEXEC_CHECK: u32 = 1 << 0;
/// [`KexecRequest::flags`]: forward even if some files cannot cross; they are lost.
pub const KEXEC_DROP_UNPRESERVABLE: u32 = 1 << 1;
/// [`KexecRequest::flags`]: forward, but leave the kexec to the caller (`kexec -e`,
/// `systemctl kexec`); luod stays frozen until then or until a cancel.
pub const KEXEC_NO_EXEC: u32 = 1 << 2;
/// [`KexecRequest::flags`]: undo a forward made with [`KEXEC_NO_EXEC`]: the kernel sessions are
/// closed (unpreserved) and the sessions thawed.
pub const KEXEC_CANCEL: u32 = 1 << 3;
/// [`KexecRequest::flags`]: re-back every hugetlb memfd that would cross onto shmem first
/// (this kernel preserves shmem memfds only), its contents copied by luod's copy engine; with
/// [`KEXEC_CHECK`], report as if they were.
pub const KEXEC_CONVERT: u32 = 1 << 4;
/// Every [`KexecRequest::flags`] bit; any other is `EINVAL`.
pub const KEXEC_FLAGS: u32 =
    KEXEC_CHECK | KEXEC_DROP_UNPRESERVABLE | KEXEC_NO_EXEC | KEXEC_CANCEL | KEXEC_CONVERT;

/// Argument of [`Op::Kexec`].
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct KexecRequest {
    /// `KEXEC_*` bits.
    pub flags: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<KexecRequest>() == 8);

/// [`KexecReply::state`]: nothing is forwarded.
pub const KEXEC_STATE_IDLE: u32 = 0;
/// [`KexecReply::state`]: every session is in kernel sessions; luod waits for the kexec.
pub const KEXEC_STATE_FORWARDED: u32 = 1;

/// Reply to [`Op::Kexec`], followed by [`KexecReply::listed`] entries.
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct KexecReply {
    /// Sessions that would cross (outgoing, and incoming not yet retrieved).
    pub sessions: U64,
    /// Their files that can cross.
    pub preservable: U64,
    /// Bytes of memory those files hold.
    pub preservable_bytes: U64,
    /// Their files that cannot cross this kernel's LUO.
    pub unpreservable: U64,
    /// `KEXEC_STATE_*` after the request.
    pub state: U32,
    /// Entries that follow (at most [`KEXEC_LIST_MAX`]; the rest are only counted).
    pub listed: U32,
}
const _: () = assert!(core::mem::size_of::<KexecReply>() == 40);

/// [`KexecEntry::kind`]: a hugetlb memfd (this kernel's memfd handler takes shmem only).
pub const KEXEC_KIND_HUGETLB: u32 = 1;
/// [`KexecEntry::kind`]: a socket.
pub const KEXEC_KIND_SOCKET: u32 = 2;
/// [`KexecEntry::kind`]: a pipe or FIFO.
pub const KEXEC_KIND_PIPE: u32 = 3;
/// [`KexecEntry::kind`]: an eventfd.
pub const KEXEC_KIND_EVENTFD: u32 = 4;
/// [`KexecEntry::kind`]: a PCI device's config file.
pub const KEXEC_KIND_PCI: u32 = 5;
/// [`KexecEntry::kind`]: any other file (a regular file, a guest-memory descriptor...).
pub const KEXEC_KIND_OTHER: u32 = 6;

/// One preserved file that cannot cross a kexec, in a [`KexecReply`].
///
/// Changing this struct bumps `WIRE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct KexecEntry {
    /// The session's namespace (uid).
    pub owner: U32,
    /// `KEXEC_KIND_*`.
    pub kind: U32,
    /// The file's token.
    pub token: U64,
    /// Bytes of memory it holds.
    pub bytes: U64,
    /// The session's name, NUL-terminated.
    pub session: [u8; 64],
}
const _: () = assert!(core::mem::size_of::<KexecEntry>() == 88);

/// Most entries in one kexec reply.
pub const KEXEC_LIST_MAX: usize =
    (MAX_MESSAGE - core::mem::size_of::<ReplyHeader>() - core::mem::size_of::<KexecReply>())
        / core::mem::size_of::<KexecEntry>();

/// The length of a [`StatusReply`] of wire version 2 (before the migration and copy fields);
/// a reader pads a shorter reply with zeros.
pub const STATUS_REPLY_V2_LEN: usize = 128;

/// [`StatusReply::last_upgrade_flags`]: the state kept changing while successors prepared in
/// the background, so the last one prepared with the old server stopped.
pub const UPGRADE_STOP_AND_COPY: u32 = 1;

/// Splits a message into its request header and argument; `EPROTO` for a message too short,
/// longer than [`MAX_MESSAGE`], or whose `len` disagrees with its length.
pub fn parse_request(msg: &[u8]) -> Result<(RequestHeader, &[u8]), Errno> {
    if msg.len() > MAX_MESSAGE {
        return Err(Errno::EPROTO);
    }
    let (hdr, arg) = RequestHeader::read_from_prefix(msg).map_err(|_| Errno::EPROTO)?;
    if hdr.len.get() as usize != arg.len() {
        return Err(Errno::EPROTO);
    }
    Ok((hdr, arg))
}

/// Splits a reply into its header and argument, with the same checks as [`parse_request`].
pub fn parse_reply(msg: &[u8]) -> Result<(ReplyHeader, &[u8]), Errno> {
    if msg.len() > MAX_MESSAGE {
        return Err(Errno::EPROTO);
    }
    let (hdr, arg) = ReplyHeader::read_from_prefix(msg).map_err(|_| Errno::EPROTO)?;
    if hdr.len.get() as usize != arg.len() {
        return Err(Errno::EPROTO);
    }
    Ok((hdr, arg))
}

/// Appends a request for `op` with `arg` to `out`; `E2BIG` if it would not fit in a message.
pub fn write_request(
    out: &mut alloc::vec::Vec<u8>,
    op: u32,
    id: u64,
    arg: &[u8],
) -> Result<(), Errno> {
    if arg.len() > MAX_ARG {
        return Err(Errno::E2BIG);
    }
    let hdr = RequestHeader {
        op: U32::new(op),
        len: U32::new(arg.len() as u32),
        id: U64::new(id),
    };
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(arg);
    Ok(())
}

/// Appends a reply to `out`; an argument too long for a message is cut to fit.
pub fn write_reply(out: &mut alloc::vec::Vec<u8>, errno: i32, id: u64, arg: &[u8]) {
    let arg = &arg[..arg.len().min(MAX_ARG)];
    let hdr = ReplyHeader {
        errno: I32::new(errno),
        len: U32::new(arg.len() as u32),
        id: U64::new(id),
    };
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(arg);
}

/// The body of the `wire` fuzz target: decode `data` the way luod decodes a request (framing,
/// then the kernel's table lookup and size rules for both kinds of descriptor) and the way a
/// client decodes a reply. Must never panic. Returns whether the request framing was accepted.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) -> bool {
    let _ = parse_reply(data);
    let Ok((hdr, arg)) = parse_request(data) else {
        return false;
    };
    let op = hdr.op.get();
    if Op::from_raw(op).is_some() {
        let _ = ListRequest::read_from_bytes(arg);
        return true;
    }
    use crate::uapi::{SessionState, Target, decode, session_name};
    for target in [Target::Device, Target::Session] {
        for state in [
            SessionState::Outgoing,
            SessionState::Incoming,
            SessionState::Inert,
        ] {
            for fds in [0, 1, 2] {
                if let Ok(d) = decode(target, state, op, arg, fds) {
                    let mut name = [0u8; 64];
                    name.copy_from_slice(&d.buf[8..72]);
                    let _ = session_name(&name);
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn round_trip_and_bounds() {
        let mut m = Vec::new();
        write_request(&mut m, 0xBA00, 9, &[1, 2, 3]).unwrap();
        let (h, a) = parse_request(&m).unwrap();
        assert_eq!((h.op.get(), h.id.get(), a), (0xBA00, 9, &[1u8, 2, 3][..]));
        assert_eq!(parse_request(&m[..15]).unwrap_err(), Errno::EPROTO);
        assert_eq!(parse_request(&m[..18]).unwrap_err(), Errno::EPROTO);
        assert_eq!(
            write_request(&mut m, 1, 1, &[0; MAX_ARG + 1]),
            Err(Errno::E2BIG)
        );
        assert_eq!(Op::from_raw(NATIVE_BASE + 4), Some(Op::Status));
        assert_eq!(Op::from_raw(NATIVE_BASE + 99), None);
        assert_eq!(Op::from_raw(0xBA00), None);
    }

    const _: () = assert!(LIST_MAX >= 40);
}
