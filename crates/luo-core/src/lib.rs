//! The luod engine (being written).
#![forbid(unsafe_code)]

mod engine;
pub mod error;
pub mod flb;
mod freeze;
pub mod handler;
mod registry;
mod restore;
pub mod session;

pub use engine::{Engine, Limits, Usage};
pub use error::Error;
pub use flb::Flb;
pub use freeze::WRITER_VERSION;
pub use handler::{FileData, FileHandler, HandlerError, Identity, Preserved, RetrieveStatus};
pub use registry::Registry;
pub use session::{Direction, SessionId, SessionInfo};
