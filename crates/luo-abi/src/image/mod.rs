//! The handover image: luod's state, serialized to cross an exec.
//!
//! STUB: the API below is fixed; the bodies are being written (see docs/format.md).

use alloc::vec::Vec;
use core::fmt;

pub mod entry;

pub use entry::*;

/// Root `compatible` of the image. Any layout change bumps it.
pub const IMAGE_COMPATIBLE: &str = "luod-image-v1";

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
    /// 0, 1 or a negative errno.
    pub status: i32,
    /// `FILE_*` bits.
    pub flags: u32,
    /// The handler's record.
    pub record: &'a [u8],
}

/// Why an image could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    /// Placeholder.
    Unimplemented,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl core::error::Error for ImageError {}

/// Builds an image.
#[derive(Debug)]
pub struct ImageWriter {
    _p: (),
}

impl ImageWriter {
    /// A writer for generation `generation`, written by luod version `writer`.
    pub fn new(generation: u64, writer: &str) -> Self {
        let _ = (generation, writer);
        ImageWriter { _p: () }
    }
    /// Adds a descriptor to the fd table and returns its index.
    pub fn add_fd(&mut self, fd: i32, mode_type: u32) -> u32 {
        let _ = (fd, mode_type);
        todo!()
    }
    /// Adds a session and its files, in order.
    pub fn add_session<'f>(
        &mut self,
        session: &SessionSpec<'_>,
        files: impl IntoIterator<Item = FileSpec<'f>>,
    ) -> Result<(), ImageError> {
        let _ = (session, files.into_iter());
        todo!()
    }
    /// Adds an FLB.
    pub fn add_flb(
        &mut self,
        compatible: &str,
        count: u64,
        flags: u32,
        data: &[u8],
    ) -> Result<(), ImageError> {
        let _ = (compatible, count, flags, data);
        todo!()
    }
    /// Adds a named part (`handlers/<compatible>`, `connections`, ...) with its own compatible.
    pub fn add_part(&mut self, name: &str, compatible: &str, data: &[u8]) -> Result<(), ImageError> {
        let _ = (name, compatible, data);
        todo!()
    }
    /// Lays the image out and returns its bytes.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        todo!()
    }
}

/// A validated image.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    _b: &'a [u8],
}

impl<'a> Image<'a> {
    /// Validates everything; nothing is usable before this succeeds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let _ = bytes;
        Err(ImageError::Unimplemented)
    }
    /// Generation.
    pub fn generation(&self) -> u64 {
        todo!()
    }
    /// Writer version.
    pub fn writer(&self) -> &'a str {
        todo!()
    }
    /// Number of sessions.
    pub fn session_count(&self) -> u64 {
        todo!()
    }
    /// Sessions in image order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'a>> + 'a {
        core::iter::empty()
    }
    /// The fd table.
    pub fn fds(&self) -> &'a [FdEntry] {
        todo!()
    }
    /// FLBs.
    pub fn flbs(&self) -> impl Iterator<Item = FlbView<'a>> + 'a {
        core::iter::empty()
    }
    /// A named part.
    pub fn part(&self, name: &str) -> Option<PartView<'a>> {
        let _ = name;
        todo!()
    }
}

/// One validated session.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'a> {
    _b: &'a [u8],
}

impl<'a> SessionView<'a> {
    /// Name without NUL.
    pub fn name(&self) -> &'a [u8] {
        todo!()
    }
    /// Owner uid.
    pub fn owner(&self) -> u32 {
        todo!()
    }
    /// `SESSION_*` bits.
    pub fn flags(&self) -> u32 {
        todo!()
    }
    /// Creation order.
    pub fn seq(&self) -> u64 {
        todo!()
    }
    /// Number of files.
    pub fn file_count(&self) -> u64 {
        todo!()
    }
    /// Files in order.
    pub fn files(&self) -> impl Iterator<Item = FileView<'a>> + 'a {
        core::iter::empty()
    }
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
