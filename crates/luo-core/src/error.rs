//! The engine's error type and its single mapping to errno.

use luo_abi::Errno;
use luo_abi::image::ImageError;

use crate::handler::HandlerError;

/// Why an engine operation failed. Every failure leaves the engine as it was before the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A session name must be 1 to 63 bytes with no NUL.
    #[error("Session name must be 1 to 63 bytes without NUL")]
    InvalidName,
    /// An outgoing session (or, for handoff, an incoming one) already has the name.
    #[error("Session name already in use")]
    NameTaken,
    /// No incoming session has the name.
    #[error("No such session")]
    NoSession,
    /// The session handle is stale: the session was closed.
    #[error("Session handle is stale")]
    StaleSession,
    /// The incoming session was retrieved already (or is stuck after a vetoed close).
    #[error("Session already retrieved")]
    AlreadyRetrieved,
    /// PRESERVE_FD or handoff on an incoming session.
    #[error("Operation needs an outgoing session")]
    NotOutgoing,
    /// RETRIEVE_FD or FINISH on an outgoing session.
    #[error("Operation needs an incoming session")]
    NotIncoming,
    /// The token is already used in this session.
    #[error("Token already in use in this session")]
    TokenTaken,
    /// No descriptor came with the request.
    #[error("Not an open file descriptor")]
    BadFd,
    /// No registered handler accepts the file.
    #[error("No handler can preserve this file")]
    NoHandler,
    /// The same underlying object is already preserved (or retrieved and not finished).
    #[error("Object already preserved")]
    AlreadyPreserved,
    /// The file cannot be moved to new backing now (retrieved, or bound to FLBs).
    #[error("File is busy: {0}")]
    Busy(&'static str),
    /// The file carries in flight a descriptor no handler may take (a Unix socket with one of
    /// luod's own connections queued in it): holding it could keep that descriptor alive
    /// forever.
    #[error(
        "File carries a descriptor that cannot be preserved (a luod connection queued in a socket)"
    )]
    CarriesExcluded,
    /// No file with the token (or the session was finished).
    #[error("No file with this token")]
    NoToken,
    /// A handler method failed.
    #[error("Handler {compatible} failed to {step}")]
    Handler {
        /// The handler's compatible string.
        compatible: String,
        /// The method that failed.
        step: &'static str,
        /// What it reported.
        #[source]
        source: HandlerError,
    },
    /// An FLB method failed.
    #[error("FLB {compatible} failed to {step}")]
    Flb {
        /// The FLB's compatible string.
        compatible: String,
        /// The method that failed.
        step: &'static str,
        /// What it reported.
        #[source]
        source: HandlerError,
    },
    /// A retrieve of this file failed before; the failure is sticky.
    #[error("Retrieve failed earlier with {0}")]
    RetrieveFailed(Errno),
    /// A handler's `can_finish` said no.
    #[error("Handler {0} vetoed the finish")]
    FinishVetoed(String),
    /// The engine froze for a reboot; only `thaw` undoes it.
    #[error("Engine is frozen for a reboot")]
    Frozen,
    /// A handler or FLB compatible string is empty, too long or has a NUL.
    #[error("Compatible string must be 1 to 47 bytes without NUL")]
    InvalidCompatible,
    /// A handler or FLB with this compatible is already registered or linked.
    #[error("Compatible {0} already registered")]
    DuplicateCompatible(String),
    /// An FLB was linked to a handler that is not registered.
    #[error("No handler {0} to link the FLB to")]
    UnknownHandler(String),
    /// The handover image is invalid.
    #[error("Invalid handover image")]
    Image(#[source] ImageError),
    /// The image names a handler or FLB this engine does not have.
    #[error("Image needs {0}, which is not registered")]
    UnknownCompatible(String),
    /// A per-uid quota (sessions, files or bytes) would be exceeded.
    #[error("Quota of {0} exceeded")]
    Quota(&'static str),
    /// The descriptors handed to restore do not match the image's fd table.
    #[error("Descriptor {index} of the image does not match: {reason}")]
    FdMismatch {
        /// Index in the fd table.
        index: usize,
        /// What differs.
        reason: String,
    },
}

impl Error {
    /// The errno a client sees for this error (the kernel's where the kernel has one).
    pub fn errno(&self) -> Errno {
        match self {
            Error::InvalidName
            | Error::AlreadyRetrieved
            | Error::NotOutgoing
            | Error::NotIncoming
            | Error::InvalidCompatible
            | Error::CarriesExcluded
            | Error::UnknownHandler(_) => Errno::EINVAL,
            Error::NameTaken | Error::TokenTaken | Error::DuplicateCompatible(_) => Errno::EEXIST,
            Error::NoSession | Error::NoHandler | Error::NoToken | Error::StaleSession => {
                Errno::ENOENT
            }
            Error::BadFd => Errno::EBADF,
            Error::Quota(_) => Errno::ENOSPC,
            Error::AlreadyPreserved | Error::FinishVetoed(_) | Error::Frozen | Error::Busy(_) => {
                Errno::EBUSY
            }
            Error::Handler { source, .. } | Error::Flb { source, .. } => source.errno,
            Error::RetrieveFailed(e) => *e,
            Error::Image(_) | Error::UnknownCompatible(_) | Error::FdMismatch { .. } => Errno::EIO,
        }
    }
}
