//! The handover image: luod's state, serialized to cross an exec.
//!
//! **This module is a contract.** An image is written by one version of luod and read by
//! another (the next binary after an upgrade, or the same one after a crash), so its layout is
//! fixed by `luod-image-v1` and documented byte for byte in `docs/format.md`. Any change to the
//! layout, to a node, a property or an entry struct bumps [`IMAGE_COMPATIBLE`] (or the
//! compatible of the node concerned); a reader refuses an image whose compatible strings it does
//! not know.
//!
//! # Layout
//!
//! ```text
//!  0                    totalsize   P = align8(totalsize)                         image-length
//!  +--------------------+----------+---------------------------------------------------+
//!  | FDT root index     | zero gap | payload, little-endian, in payload order:         |
//!  | (dtb v17, BE)      |          |  per session block: its sessions' file blocks and |
//!  |                    |          |  records, then the block; FLB blocks, FLB data;   |
//!  |                    |          |  fd table; part data                              |
//!  +--------------------+----------+---------------------------------------------------+
//!
//!  / {                                          a block:
//!      compatible = "luod-image-v1";            +----------+-----------+---------+-----+
//!      writer = "<luod version>";               | next u64 | count u64 | entry 0 | ... |
//!      generation = <u64>;                      +----------+-----------+---------+-----+
//!      image-length = <u64>;                    next: offset of the next block of the
//!      block-size = <0x10000>;                  chain, 0 for the last, always forward;
//!      checksum = <crc32>;                      count: 1..=capacity entries follow
//!      sessions { compatible = "luod-sessions-v1"; head = <u64>; count = <u64>; };
//!      flbs     { compatible = "luod-flbs-v1";     head = <u64>; count = <u64>; };
//!      fds      { compatible = "luod-fds-v1";      offset = <u64>; count = <u64>; };
//!      parts    { compatible = "luod-parts-v1";
//!          <name> { compatible = "..."; data-offset = <u64>; data-length = <u64>; };
//!      };
//!  };
//! ```
//!
//! - The image starts with a flattened device tree (the root index), so `dtc -I dtb -O dts`
//!   prints it. FDT integers are big-endian, as in every dtb; everything after the FDT is
//!   little-endian.
//! - `sessions` heads a chain of blocks of [`SessionEntry`] (96 bytes); each session heads its
//!   own chain of [`FileEntry`] (88 bytes); `flbs` heads a chain of [`FlbEntry`] (80 bytes).
//!   A block holds `1..=`[`block_capacity`]`(entry size)` entries (682, 744 and 819: what fits
//!   in [`BLOCK_SIZE`] after the header) and is stored trimmed to its count. A chain has at most
//!   [`MAX_CHAIN_BLOCKS`] blocks.
//! - `fds` locates a flat array of [`FdEntry`], the descriptors that travel with the image.
//! - Records, FLB data and part data are byte blobs, 8-byte aligned.
//! - *Payload order*: every block, the fd table and every blob starts at or after the end of the
//!   one before it in this order, so nothing overlaps and no chain can loop: for each session
//!   block (chain order), the file blocks (chain order) then the records (file order) of each
//!   of its sessions, then the session block itself; the FLB blocks, then the FLB data; the fd
//!   table; the part data (tree order). A writer can thus stream sessions out as they come.
//! - `checksum` is the CRC-32 (IEEE) of the whole image, its own four bytes taken as zero.
//!
//! # Using it
//!
//! [`ImageWriter`] builds an image from sessions, files, FLBs, descriptors and named parts;
//! [`Image::parse`] validates an image completely (see `docs/format.md` for every rule) before
//! anything can be read from it, after which every accessor is infallible.
//!
//! ```
//! use luo_abi::image::{FileSpec, Image, ImageWriter, SessionSpec, NO_FD, SESSION_INCOMING};
//!
//! # fn main() -> Result<(), luo_abi::image::ImageError> {
//! let mut writer = ImageWriter::new(3, "0.1.0");
//! let fd = writer.add_fd(7, 0o100000); // S_IFREG
//! let session = SessionSpec { name: b"vm-42", owner: 1000, flags: SESSION_INCOMING, seq: 1 };
//! let file = FileSpec {
//!     compatible: "memfd-v1",
//!     token: 42,
//!     fd_index: fd,
//!     open_fd_index: NO_FD,
//!     status: 0,
//!     flags: 0,
//!     record: b"size=4096",
//! };
//! writer.add_session(&session, [file])?;
//! let bytes = writer.finish()?;
//!
//! let image = Image::parse(&bytes)?;
//! assert_eq!(image.generation(), 3);
//! assert_eq!(image.session_count(), 1);
//! for session in image.sessions() {
//!     assert_eq!(session.name(), b"vm-42");
//!     for file in session.files() {
//!         assert_eq!(file.compatible, "memfd-v1");
//!         assert_eq!(file.token, 42);
//!         assert_eq!(file.record, b"size=4096");
//!         let slot = file.fd_index.map(|i| i as usize);
//!         assert_eq!(slot.and_then(|i| image.fds().get(i)).map(|e| e.fd.get()), Some(7));
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

mod chain;
pub mod entry;
mod error;
mod fdt;
mod fuzz;
mod reader;
mod rules;
mod writer;

pub use entry::*;
pub use error::ImageError;
#[doc(hidden)]
pub use fuzz::{fuzz_one, property_offset, reseal};

use chain::Chain;

/// Root `compatible` of the image. Any layout change bumps it.
pub const IMAGE_COMPATIBLE: &str = "luod-image-v1";
/// `compatible` of the `sessions` node. Changing the session chain bumps it.
pub const SESSIONS_COMPATIBLE: &str = "luod-sessions-v1";
/// `compatible` of the `flbs` node. Changing the FLB chain bumps it.
pub const FLBS_COMPATIBLE: &str = "luod-flbs-v1";
/// `compatible` of the `fds` node. Changing the fd table bumps it.
pub const FDS_COMPATIBLE: &str = "luod-fds-v1";
/// `compatible` of the `parts` node. Changing how parts are stored bumps it.
pub const PARTS_COMPATIBLE: &str = "luod-parts-v1";

/// The block size a chain's capacity is computed from (the root's `block-size`). Blocks are
/// stored trimmed to their count, so no block in an image is necessarily this long.
pub const BLOCK_SIZE: usize = 65536;
/// Bytes in a [`BlockHeader`].
pub const BLOCK_HEADER_LEN: usize = core::mem::size_of::<BlockHeader>();
/// Most blocks in one chain, as the kernel's `KHO_MAX_BLOCKS`.
pub const MAX_CHAIN_BLOCKS: u64 = 10_000;
/// Longest image accepted or written (1 GiB).
pub const MAX_IMAGE_LEN: u64 = 1 << 30;
/// Longest session name, without the NUL.
pub const SESSION_NAME_MAX: usize = 63;
/// Longest part name, without the NUL (components and `/` separators included).
pub const PART_NAME_MAX: usize = 63;
/// Most `/`-separated components in a part name.
pub const PART_NAME_DEPTH: usize = 6;
/// Longest writer version string, in bytes.
pub const WRITER_MAX: usize = 255;
/// Largest errno a file's `status` may carry (as the kernel's `MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;
/// `S_IFMT`: the file type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// `S_IFSOCK`: the file type of a socket.
pub const S_IFSOCK: u32 = 0o140000;
/// `S_IFREG`: the file type of a regular file.
pub const S_IFREG: u32 = 0o100000;
/// Alignment of every block, the fd table and every blob.
pub const PAYLOAD_ALIGN: u64 = 8;

/// Entries of `entry_size` bytes that fit in one block: `(BLOCK_SIZE - 16) / entry_size`.
pub const fn block_capacity(entry_size: usize) -> usize {
    (BLOCK_SIZE - BLOCK_HEADER_LEN) / entry_size
}

/// [`SessionEntry`]s per block (682).
pub const SESSION_BLOCK_CAP: usize = block_capacity(core::mem::size_of::<SessionEntry>());
/// [`FileEntry`]s per block (744).
pub const FILE_BLOCK_CAP: usize = block_capacity(core::mem::size_of::<FileEntry>());
/// [`FlbEntry`]s per block (819).
pub const FLB_BLOCK_CAP: usize = block_capacity(core::mem::size_of::<FlbEntry>());
const _: () = assert!(SESSION_BLOCK_CAP == 682);
const _: () = assert!(FILE_BLOCK_CAP == 744);
const _: () = assert!(FLB_BLOCK_CAP == 819);
const _: () = assert!(BLOCK_HEADER_LEN == 16);

/// What the writer says about one session.
#[derive(Clone, Copy, Debug)]
pub struct SessionSpec<'a> {
    /// 1..=63 bytes, no NUL.
    pub name: &'a [u8],
    /// Namespace (uid).
    pub owner: u32,
    /// `SESSION_*` bits.
    pub flags: u32,
    /// Creation order.
    pub seq: u64,
}

/// What the writer says about one file.
#[derive(Clone, Copy, Debug)]
pub struct FileSpec<'a> {
    /// The handler's compatible, 1..=47 bytes.
    pub compatible: &'a str,
    /// The client's token.
    pub token: u64,
    /// Index returned by [`ImageWriter::add_fd`], or [`NO_FD`].
    pub fd_index: u32,
    /// Index returned by [`ImageWriter::add_fd`] for the open file a client retrieved (status 1
    /// only), or [`NO_FD`].
    pub open_fd_index: u32,
    /// 0, 1 or a negative errno.
    pub status: i32,
    /// `FILE_*` bits.
    pub flags: u32,
    /// The handler's record.
    pub record: &'a [u8],
}

/// Builds an image.
///
/// Each session's file blocks and records are written into the image buffer as the session is
/// added, in their final place, so the writer holds the image about once in memory;
/// [`finish`](Self::finish) appends the FLBs, the fd table and the parts, writes the FDT in
/// front and computes the checksum. Each `add_*` validates its input and leaves the writer
/// unchanged on error; checks that need the whole picture (duplicate sessions and FLBs, the fd
/// table) run in `finish`.
#[derive(Debug)]
pub struct ImageWriter {
    generation: u64,
    writer: String,
    /// The image so far: `reserve` bytes for the FDT, then the payload in its final form.
    out: Vec<u8>,
    reserve: usize,
    /// Sessions of the session block being filled.
    pending: Vec<SessionEntry>,
    session_count: u64,
    sessions_head: u64,
    last_session_block: Option<usize>,
    /// Scratch for one `add_session`: its tokens, its records, the fd slots it claimed.
    tokens: Vec<u64>,
    records: Vec<u8>,
    claimed: Vec<u32>,
    flbs: Vec<FlbEntry>,
    flb_data: Vec<u8>,
    parts: alloc::collections::BTreeMap<String, writer::PendingPart>,
    part_data: Vec<u8>,
    fds: Vec<FdEntry>,
    fd_used: Vec<u64>,
}

impl ImageWriter {
    /// A writer for generation `generation`, written by luod version `writer` (at most
    /// [`WRITER_MAX`] bytes without NUL, checked by [`finish`](Self::finish)).
    pub fn new(generation: u64, writer: &str) -> Self {
        Self::new_impl(generation, writer)
    }
    /// Adds a descriptor to the fd table and returns its index. `mode_type` is the `S_IFMT`
    /// bits of its `st_mode` (0 for an anonymous inode such as an eventfd).
    /// [`finish`](Self::finish) refuses a negative `fd`, a `mode_type` that is not one file
    /// type, and a descriptor number listed twice.
    pub fn add_fd(&mut self, fd: i32, mode_type: u32) -> u32 {
        self.add_fd_impl(fd, mode_type)
    }
    /// Adds a session and its files, in order.
    ///
    /// Checks the name (1..=63 bytes, no NUL), the flags, and each file: compatible (1..=47
    /// bytes, no NUL), flags, status (0, 1 with a descriptor, or `-4095..=-1`), `fd_index` and
    /// `open_fd_index` (an index already returned by [`add_fd`](Self::add_fd) and used nowhere
    /// else, or [`NO_FD`]; an open file only with status 1) and token (unique in the session).
    /// On error nothing is added.
    pub fn add_session<'f>(
        &mut self,
        session: &SessionSpec<'_>,
        files: impl IntoIterator<Item = FileSpec<'f>>,
    ) -> Result<(), ImageError> {
        self.add_session_impl(session, files)
    }
    /// Adds an FLB: its compatible (1..=47 bytes, no NUL), the number of files that depend on
    /// it, its `FLB_*` flags and its serialized data.
    pub fn add_flb(
        &mut self,
        compatible: &str,
        count: u64,
        flags: u32,
        data: &[u8],
    ) -> Result<(), ImageError> {
        self.add_flb_impl(compatible, count, flags, data)
    }
    /// Adds a named part (`handlers/<compatible>`, `connections`, ...) with its own compatible.
    ///
    /// The name is 1..=63 bytes of at most six `/`-separated non-empty components made of
    /// `[A-Za-z0-9,._+-]`; each component is a node under `/parts`. The compatible is 1..=47
    /// bytes without NUL. Names are unique.
    pub fn add_part(
        &mut self,
        name: &str,
        compatible: &str,
        data: &[u8],
    ) -> Result<(), ImageError> {
        self.add_part_impl(name, compatible, data)
    }
    /// Lays the image out and returns its bytes.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        self.finish_impl()
    }
}

/// A validated image.
#[derive(Clone, Copy)]
pub struct Image<'a> {
    bytes: &'a [u8],
    generation: u64,
    writer: &'a str,
    sessions_head: u64,
    session_count: u64,
    flbs_head: u64,
    flb_count: u64,
    fds: &'a [FdEntry],
}

impl fmt::Debug for Image<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("len", &self.bytes.len())
            .field("generation", &self.generation)
            .field("writer", &self.writer)
            .field("sessions", &self.session_count)
            .field("flbs", &self.flb_count)
            .field("fds", &self.fds.len())
            .finish()
    }
}

impl<'a> Image<'a> {
    /// Validates everything; nothing is usable before this succeeds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        reader::parse(bytes)
    }
    /// Generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Writer version.
    pub fn writer(&self) -> &'a str {
        self.writer
    }
    /// Number of sessions.
    pub fn session_count(&self) -> u64 {
        self.session_count
    }
    /// Sessions in image order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'a>> + 'a {
        let bytes = self.bytes;
        Chain::<SessionEntry>::new(bytes, self.sessions_head)
            .map(move |(_, entry)| SessionView { bytes, entry })
    }
    /// The fd table.
    pub fn fds(&self) -> &'a [FdEntry] {
        self.fds
    }
    /// FLBs.
    pub fn flbs(&self) -> impl Iterator<Item = FlbView<'a>> + 'a {
        let bytes = self.bytes;
        Chain::<FlbEntry>::new(bytes, self.flbs_head).map(move |(_, e)| FlbView {
            compatible: compatible_str(&e.compatible),
            count: e.count.get(),
            flags: e.flags.get(),
            data: blob(bytes, e.data_off.get(), e.data_len.get()),
        })
    }
    /// A named part.
    pub fn part(&self, name: &str) -> Option<PartView<'a>> {
        reader::find_part(self.bytes, name)
    }

    /// Number of FLBs.
    pub fn flb_count(&self) -> u64 {
        self.flb_count
    }
    /// Every part with its full name (`handlers/memfd-v1`), in tree order (sorted by
    /// components).
    pub fn parts(&self) -> impl Iterator<Item = (String, PartView<'a>)> + 'a {
        reader::all_parts(self.bytes).into_iter()
    }
    /// The image's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// One validated session.
#[derive(Clone, Copy)]
pub struct SessionView<'a> {
    bytes: &'a [u8],
    entry: &'a SessionEntry,
}

impl fmt::Debug for SessionView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionView")
            .field("name", &format_args!("\"{}\"", self.name().escape_ascii()))
            .field("owner", &self.owner())
            .field("flags", &self.flags())
            .field("seq", &self.seq())
            .field("files", &self.file_count())
            .finish()
    }
}

impl<'a> SessionView<'a> {
    /// Name without NUL.
    pub fn name(&self) -> &'a [u8] {
        let name = &self.entry.name;
        let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.get(..n).unwrap_or_default()
    }
    /// Owner uid.
    pub fn owner(&self) -> u32 {
        self.entry.owner.get()
    }
    /// `SESSION_*` bits.
    pub fn flags(&self) -> u32 {
        self.entry.flags.get()
    }
    /// Creation order.
    pub fn seq(&self) -> u64 {
        self.entry.seq.get()
    }
    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.entry.files_count.get()
    }
    /// Files in order.
    pub fn files(&self) -> impl Iterator<Item = FileView<'a>> + 'a {
        let bytes = self.bytes;
        Chain::<FileEntry>::new(bytes, self.entry.files_head.get()).map(move |(_, e)| {
            let fd = |i: u32| (i != NO_FD).then_some(i);
            FileView {
                compatible: compatible_str(&e.compatible),
                token: e.token.get(),
                fd_index: fd(e.fd_index.get()),
                open_fd_index: fd(e.open_fd_index.get()),
                status: e.status.get(),
                flags: e.flags.get(),
                record: blob(bytes, e.record_off.get(), e.record_len.get()),
            }
        })
    }

    /// The session is incoming (handed over, waiting to be retrieved).
    pub fn is_incoming(&self) -> bool {
        self.flags() & SESSION_INCOMING != 0
    }
    /// The raw entry.
    pub fn entry(&self) -> &'a SessionEntry {
        self.entry
    }
}

/// The string in a NUL-padded compatible field (empty if the field is not valid, which a parsed
/// image rules out).
fn compatible_str(field: &[u8; COMPATIBLE_LEN]) -> &str {
    let n = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(field.get(..n).unwrap_or_default()).unwrap_or_default()
}

/// The bytes of a blob (empty if out of bounds, which a parsed image rules out).
fn blob(bytes: &[u8], off: u64, len: u64) -> &[u8] {
    if len == 0 {
        return &[];
    }
    let range = usize::try_from(off)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(o, l)| Some(o..o.checked_add(l)?));
    range.and_then(|r| bytes.get(r)).unwrap_or_default()
}

/// One validated file.
#[derive(Clone, Copy, Debug)]
pub struct FileView<'a> {
    /// Handler compatible.
    pub compatible: &'a str,
    /// Token.
    pub token: u64,
    /// fd table index, `None` for [`NO_FD`].
    pub fd_index: Option<u32>,
    /// fd table index of the retrieved open file, `None` for [`NO_FD`].
    pub open_fd_index: Option<u32>,
    /// Retrieve status.
    pub status: i32,
    /// `FILE_*` bits.
    pub flags: u32,
    /// The handler's record.
    pub record: &'a [u8],
}

/// One validated FLB.
#[derive(Clone, Copy, Debug)]
pub struct FlbView<'a> {
    /// FLB compatible.
    pub compatible: &'a str,
    /// Dependent files.
    pub count: u64,
    /// `FLB_*` bits.
    pub flags: u32,
    /// Serialized data.
    pub data: &'a [u8],
}

/// One validated part.
#[derive(Clone, Copy, Debug)]
pub struct PartView<'a> {
    /// The part's compatible.
    pub compatible: &'a str,
    /// Its data.
    pub data: &'a [u8],
}
