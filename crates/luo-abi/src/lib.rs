//! Contracts that cross a process boundary.
//!
//! Everything in this crate is a layout that another process (or another version of luod) reads:
//!
//! - [`uapi`]: the kernel's `/dev/liveupdate` ioctl numbers and argument structs, byte for byte,
//!   and the errno vocabulary luod answers with.
//! - [`image`]: the handover image, the serialized state of luod that crosses an exec. It is
//!   documented as a contract in `docs/format.md`.
//! - [`daemon`]: the daemon's own part of that image (`luod-daemon-v2`): its settings, listener,
//!   lock and client connections with the replies they still wait for.
//! - [`journal`]: the append-only log of what luod did since its last checkpoint image, read
//!   after a crash; a torn last record is told apart from corruption.
//! - [`wire`]: the client <-> luod message framing.
//!
//! The crate is `no_std` (with `alloc`), has no `unsafe` and does no I/O: it only lays out and
//! validates bytes, so it can be used by the daemon, the client library and the preload library
//! alike.
//!
//! ```
//! use luo_abi::uapi::{CreateSession, LIVEUPDATE_IOCTL_CREATE_SESSION};
//! assert_eq!(LIVEUPDATE_IOCTL_CREATE_SESSION, 0xBA00);
//! let mut req = CreateSession::new(b"vm-42").unwrap();
//! assert_eq!(req.name_bytes(), Some(&b"vm-42"[..]));
//! req.fd.set(7);
//! assert_eq!(zerocopy::IntoBytes::as_bytes(&req).len(), 72);
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod daemon;
pub mod errno;
pub mod image;
pub mod journal;
pub mod uapi;
pub mod wire;

pub use errno::Errno;
