//! The fixed-size entries of the handover image's block chains.
//!
//! Every struct here is part of the `luod-image-v1` contract (`docs/format.md`): changing any of
//! them bumps [`IMAGE_COMPATIBLE`](super::IMAGE_COMPATIBLE).

use zerocopy::byteorder::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes in a handler or FLB compatible string, including the NUL (as the kernel's 48).
pub const COMPATIBLE_LEN: usize = 48;
/// Longest compatible string, without the NUL.
pub const COMPATIBLE_MAX: usize = COMPATIBLE_LEN - 1;

/// The header of every block: the offset of the next block of the chain (0 = last) and the
/// number of valid entries that follow it.
///
/// Changing this struct bumps `IMAGE_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct BlockHeader {
    /// Image offset of the next block of this chain, 0 for the last one. Always greater than the
    /// offset of this block.
    pub next: U64,
    /// Entries in this block, `1..=capacity`.
    pub count: U64,
}
const _: () = assert!(core::mem::size_of::<BlockHeader>() == 16);

/// `SessionEntry::flags`: the session was handed over to be retrieved (incoming).
pub const SESSION_INCOMING: u32 = 1 << 0;
/// `SessionEntry::flags`: an incoming session that a client has retrieved.
pub const SESSION_RETRIEVED: u32 = 1 << 1;
/// `SessionEntry::flags`: an incoming session that was finished (its file chain is empty).
pub const SESSION_FINISHED: u32 = 1 << 2;
/// Every defined `SessionEntry::flags` bit; any other bit makes the image invalid.
pub const SESSION_FLAGS_ALL: u32 = SESSION_INCOMING | SESSION_RETRIEVED | SESSION_FINISHED;

/// One session.
///
/// Changing this struct bumps `IMAGE_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SessionEntry {
    /// The name, 1..=63 bytes, NUL-terminated, zero-padded.
    pub name: [u8; 64],
    /// The uid whose namespace holds the session.
    pub owner: U32,
    /// `SESSION_*` bits.
    pub flags: U32,
    /// Image offset of the first block of the session's file chain, 0 when it has no files.
    pub files_head: U64,
    /// Total number of file entries in that chain.
    pub files_count: U64,
    /// Creation order: sessions are frozen in increasing `seq`.
    pub seq: U64,
}
const _: () = assert!(core::mem::size_of::<SessionEntry>() == 96);

/// `FileEntry::flags`: the handler's `freeze` ran on this file.
pub const FILE_FROZEN: u32 = 1 << 0;
/// `FileEntry::flags`: the file's object counts as preserved for the double-preserve check
/// although it was not retrieved (a session handed off inside one luod keeps its objects busy).
pub const FILE_BUSY: u32 = 1 << 1;
/// Every defined `FileEntry::flags` bit.
pub const FILE_FLAGS_ALL: u32 = FILE_FROZEN | FILE_BUSY;
/// `FileEntry::fd_index` of a file that holds no descriptor.
pub const NO_FD: u32 = u32::MAX;

/// One preserved file.
///
/// Changing this struct bumps `IMAGE_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FileEntry {
    /// The handler's compatible string, NUL-terminated, zero-padded.
    pub compatible: [u8; COMPATIBLE_LEN],
    /// The client's token.
    pub token: U64,
    /// Image offset of the handler's record for this file.
    pub record_off: U64,
    /// Length of that record (0 allowed; then `record_off` is 0).
    pub record_len: U64,
    /// Index into the fd table of the descriptor that carries the file, or [`NO_FD`].
    pub fd_index: U32,
    /// Retrieve status: 0 never retrieved, 1 retrieved, negative: the errno of a failed
    /// retrieve (sticky).
    pub status: I32,
    /// `FILE_*` bits.
    pub flags: U32,
    /// Index into the fd table of the open file a client retrieved (only with status 1), or
    /// [`NO_FD`]. A slot distinct from `fd_index`.
    pub open_fd_index: U32,
}
const _: () = assert!(core::mem::size_of::<FileEntry>() == 88);

/// `FlbEntry::flags`: the incoming half (data carried from a previous generation).
pub const FLB_INCOMING: u32 = 1 << 0;
/// `FlbEntry::flags`: an incoming FLB already retrieved.
pub const FLB_RETRIEVED: u32 = 1 << 1;
/// Every defined `FlbEntry::flags` bit.
pub const FLB_FLAGS_ALL: u32 = FLB_INCOMING | FLB_RETRIEVED;

/// One file-lifecycle-bound global object.
///
/// Changing this struct bumps `IMAGE_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FlbEntry {
    /// The FLB's compatible string, NUL-terminated, zero-padded.
    pub compatible: [u8; COMPATIBLE_LEN],
    /// Number of dependent files.
    pub count: U64,
    /// Image offset of the FLB's serialized data.
    pub data_off: U64,
    /// Length of that data.
    pub data_len: U64,
    /// `FLB_*` bits.
    pub flags: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<FlbEntry>() == 80);

/// One descriptor that travels with the image.
///
/// Changing this struct bumps `IMAGE_COMPATIBLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FdEntry {
    /// The descriptor number in the writing process (inherited across exec).
    pub fd: I32,
    /// The `S_IFMT` bits of `st_mode` the descriptor had when the image was written; the reader
    /// refuses a descriptor of another type.
    pub mode_type: U32,
}
const _: () = assert!(core::mem::size_of::<FdEntry>() == 8);
