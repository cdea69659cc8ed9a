//! The luod engine (being written).
#![forbid(unsafe_code)]

pub mod flb;
pub mod handler;

pub use flb::Flb;
pub use handler::{FileData, FileHandler, HandlerError, Identity, Preserved, RetrieveStatus};
