//! The few raw system calls luod needs that rustix does not offer, each behind a safe function.
//!
//! Everything else in the workspace goes through rustix and forbids `unsafe`; this crate is
//! the exception, and each `unsafe` block in it says why it is sound.
//!
//! - [`heap`]: glibc's allocator told to keep freed memory ([`heap::keep_freed_memory`]), so
//!   that a server starting from an image does not fault in every buffer afresh.
//! - [`liveupdate`]: the kernel's `/dev/liveupdate` ([`liveupdate::Device`]) and its session
//!   descriptors ([`liveupdate::Session`]), through the real ioctls.
//! - [`holder`]: [`holder::Holder`], a process that shares the server's descriptor table
//!   (`clone(CLONE_FILES)` without exec) so that the table survives the server's death, and
//!   starts a new server from it when the keeper says so ([`holder::HolderControl`]), every
//!   descriptor inherited under its old number.
//! - [`mmap`]: [`mmap::SharedMap`], a whole memory file mapped shared and seen as a byte
//!   slice, for copying memory files (migrate).
//! - [`sockopt`]: integer socket options rustix has no wrapper for: `SO_PASSRIGHTS` (whether a
//!   Unix socket accepts descriptors, Linux 6.16 and later) and `SO_PEEK_OFF` (the offset at
//!   which `MSG_PEEK` reads).
//!
//! ```
//! use luo_sys::sockopt;
//! let (a, _b) = rustix::net::socketpair(
//!     rustix::net::AddressFamily::UNIX,
//!     rustix::net::SocketType::SEQPACKET,
//!     rustix::net::SocketFlags::CLOEXEC,
//!     None,
//! )?;
//! // `None` on a kernel without SO_PASSRIGHTS.
//! if let Some(on) = sockopt::passrights(&a)? {
//!     assert!(on, "a new socket accepts descriptors");
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
// Raw clone, getsockopt, setsockopt: every unsafe block says why it is sound.
#![allow(unsafe_code)]

pub mod heap;
pub mod holder;
pub mod liveupdate;
pub mod mmap;
pub mod sockopt;
