//! The crate's error: one variant per failed step, mapped once to the errno a client sees.
//!
//! Handlers return [`luo_core::HandlerError`] through the trait; every failure inside this crate
//! is first an [`Error`], and [`Error::errno`] is the single place that decides which errno the
//! client's ioctl returns.

use std::error::Error as _;

use luo_abi::Errno;
use luo_core::HandlerError;

use crate::pci::DeviceKey;

/// Something a handler or the PCI FLB could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed; the client sees its errno.
    #[error("{step} failed")]
    Sys {
        /// The call, as `fstat` or `F_ADD_SEALS`.
        step: &'static str,
        /// What the kernel answered.
        #[source]
        source: rustix::io::Errno,
    },
    /// `preserve` or `identity` was given a descriptor the handler's `can_preserve` refuses.
    #[error("Not a file this handler preserves")]
    NotPreservable,
    /// A Unix socket on a kernel without `SO_PASSRIGHTS`: nothing could stop descriptors being
    /// put in flight to it while luod holds it.
    #[error(
        "Unix sockets can be preserved only on a kernel with SO_PASSRIGHTS (Linux 6.16 or later)"
    )]
    Unguardable,
    /// What a Unix socket carries in flight could not all be checked.
    #[error("Cannot check the descriptors queued in the socket: {0}")]
    InFlightUnchecked(&'static str),
    /// A record has the wrong length.
    #[error("{record} record is {got} bytes, expected {expected}")]
    RecordLength {
        /// Which record (the handler's compatible string).
        record: &'static str,
        /// The length found.
        got: usize,
        /// The only length the layout allows.
        expected: usize,
    },
    /// A record field holds a value the layout does not allow (unknown flag bits, a reserved
    /// field that is not zero, an impossible size).
    #[error("{record} record has an invalid {field}")]
    RecordField {
        /// Which record.
        record: &'static str,
        /// The field.
        field: &'static str,
    },
    /// The descriptor the engine holds is not the object the record describes.
    #[error("Held descriptor is not the preserved {0}")]
    HeldMismatch(&'static str),
    /// Reopening the held memory file gave another inode.
    #[error("Reopened file is not the preserved inode")]
    ReopenMismatch,
    /// The memory file carries seals luod does not know how to restore.
    #[error("Unsupported seals {0:#x}")]
    UnsupportedSeals(u32),
    /// A hugetlb file's page size differs from the recorded one.
    #[error("Huge page size is {found} bytes, recorded {recorded}")]
    PageSize {
        /// The page size of the held file.
        found: u64,
        /// The page size in the record.
        recorded: u64,
    },
    /// Virtual functions are owned by their physical function and are never preserved alone.
    #[error("Device {0} is a virtual function")]
    VirtualFunction(DeviceKey),
    /// The device is already preserved by another file.
    #[error("Device {0} is already preserved")]
    AlreadyPreserved(DeviceKey),
    /// The device does not exist under the sysfs root.
    #[error("No device {0}")]
    NoDevice(DeviceKey),
    /// The PCI FLB's serialized device list is malformed.
    #[error("PCI FLB data has an invalid {0}")]
    FlbData(&'static str),
}

impl Error {
    /// A failed system call.
    pub(crate) fn sys(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
        move |source| Error::Sys { step, source }
    }

    /// The errno a client sees for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Sys { source, .. } => Errno(source.raw_os_error()),
            Error::NotPreservable
            | Error::RecordLength { .. }
            | Error::RecordField { .. }
            | Error::HeldMismatch(_)
            | Error::ReopenMismatch
            | Error::PageSize { .. }
            | Error::VirtualFunction(_)
            | Error::InFlightUnchecked(_)
            | Error::FlbData(_) => Errno::EINVAL,
            Error::UnsupportedSeals(_) | Error::Unguardable => Errno::EOPNOTSUPP,
            Error::AlreadyPreserved(_) => Errno::EBUSY,
            Error::NoDevice(_) => Errno::ENODEV,
        }
    }
}

impl From<Error> for HandlerError {
    fn from(err: Error) -> HandlerError {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HandlerError::new(err.errno(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_error_carries_errno_and_source() {
        let e: HandlerError = Error::Sys {
            step: "fstat",
            source: rustix::io::Errno::BADF,
        }
        .into();
        assert_eq!(e.errno, Errno::EBADF);
        assert!(e.message.starts_with("fstat failed: "), "{}", e.message);
        let e: HandlerError = Error::AlreadyPreserved(DeviceKey::Net(
            crate::pci::IfName::new("lo").expect("valid name"),
        ))
        .into();
        assert_eq!(e.errno, Errno::EBUSY);
    }
}
