//! The luod engine: handlers, FLBs, sessions, files, and the handover image.
//!
//! This crate is the orchestrator's core, with no sockets and no `unsafe`. Its principal types:
//!
//! - [`FileHandler`]: one kind of preservable file (memfd, hugetlb memfd, socket...), with the
//!   lifecycle of the kernel's `liveupdate_file_ops`. [`Flb`] is global state bound to the
//!   lifetime of a handler's files (`liveupdate_flb_ops`).
//! - [`Registry`]: the handlers, tried in registration order, and the FLBs linked to them.
//! - [`Engine`]: the sessions of every uid. It applies the kernel's rules — names, tokens,
//!   the double-preserve check, which operation fits which direction, finish with veto,
//!   close semantics — with the kernel's errno for every failure, and leaves itself unchanged
//!   when an operation fails. Sessions are found by name in a hash map, files by token in an
//!   ordered map, preserved objects in a hash set.
//! - Three ways state crosses: [`Engine::handoff`] (one session, inside the process),
//!   [`Engine::freeze_all`] (a reboot: every outgoing session, frozen with rollback, into a
//!   handover image) and [`Engine::write_snapshot`] (an orchestrator upgrade: everything, live).
//!   [`Engine::restore`] builds an engine from either image after validating all of it.
//!
//! A reboot, start to finish, with a toy handler that preserves pipes:
//!
//! ```
//! use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
//! use std::sync::Arc;
//! use luo_core::{Engine, FileData, FileHandler, HandlerError, Preserved, Registry, RetrieveStatus};
//!
//! #[derive(Debug)]
//! struct Pipes;
//! impl FileHandler for Pipes {
//!     fn compatible(&self) -> &str { "pipe-example-v1" }
//!     fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
//!         rustix::fs::fstat(fd).is_ok_and(|st| st.st_mode & 0o170000 == 0o010000)
//!     }
//!     fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
//!         let held = rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| HandlerError::from_io("dup", e))?;
//!         Ok(Preserved { fd: held, record: Vec::new(), bytes: 0 })
//!     }
//!     fn unpreserve(&self, _file: &mut FileData) {}
//!     fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError> {
//!         rustix::io::fcntl_dupfd_cloexec(&file.fd, 0).map_err(|e| HandlerError::from_io("dup", e))
//!     }
//!     fn finish(&self, _file: &mut FileData, _status: RetrieveStatus) {}
//! }
//!
//! let mut registry = Registry::new();
//! registry.register_handler(Arc::new(Pipes)).unwrap();
//! let registry = Arc::new(registry);
//!
//! // Generation 0: preserve the read end of a pipe that holds a message.
//! let (rx, tx) = rustix::pipe::pipe().unwrap();
//! rustix::io::write(&tx, b"hello").unwrap();
//! let mut engine = Engine::new(registry.clone());
//! let session = engine.create_session(0, b"demo").unwrap();
//! engine.preserve_fd(session, Some(rx.as_fd()), 7).unwrap();
//! drop(rx);
//!
//! // Reboot: freeze, write the image, hand the descriptors over.
//! let image = engine.freeze_all().unwrap();
//! let mut fds: Vec<_> = engine.into_image_fds().into_iter().map(Some).collect();
//!
//! // Generation 1: restore, retrieve, finish.
//! let mut engine = Engine::restore(registry, &image, &mut fds).unwrap();
//! assert_eq!(engine.generation(), 1);
//! let session = engine.retrieve_session(0, b"demo").unwrap();
//! let rx = engine.retrieve_fd(session, 7).unwrap();
//! let mut buf = [0u8; 5];
//! rustix::io::read(&rx, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! engine.finish(session).unwrap();
//! ```
#![forbid(unsafe_code)]

pub mod changes;
mod engine;
pub mod error;
pub mod flb;
mod freeze;
pub mod handler;
mod registry;
mod restore;
pub mod session;

pub use changes::{Changes, FileRecord, FlbRecord, SessionRecord};
pub use engine::{Engine, FileView, Limits, Usage};
pub use error::Error;
pub use flb::Flb;
pub use freeze::WRITER_VERSION;
pub use handler::{FileData, FileHandler, HandlerError, Identity, Preserved, RetrieveStatus};
pub use registry::Registry;
pub use session::{Direction, SessionId, SessionInfo};
