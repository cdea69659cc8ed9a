//! The crate's error: one variant per failed step, and the errno each one means.

/// Something a guest memory object could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{step} failed")]
    Sys {
        /// The call, as `memfd_create` or `mmap`.
        step: &'static str,
        /// What the kernel answered.
        #[source]
        source: rustix::io::Errno,
    },
    /// The size is zero, not a whole number of pages, or too large.
    #[error(
        "Size {size:#x} is not a positive multiple of the {page:#x}-byte page (at most {max:#x})"
    )]
    Size {
        /// The size asked for.
        size: u64,
        /// The page size.
        page: u64,
        /// The largest size allowed.
        max: u64,
    },
    /// The huge page pool has too few free pages of the size asked for.
    #[error(
        "{needed} free {kib} KiB huge pages are needed, the pool has {free}; reserve them with \
         `echo {suggest} > /sys/kernel/mm/hugepages/hugepages-{kib}kB/nr_hugepages` (as root)"
    )]
    NoHugePages {
        /// Huge page size in KiB.
        kib: u64,
        /// Pages the object needs.
        needed: u64,
        /// Pages free in the pool.
        free: u64,
        /// A pool size that would do (the current total plus what is missing).
        suggest: u64,
    },
    /// A range is empty, not aligned to the unit it must be aligned to, or outside the object.
    #[error("Range {start:#x}..{end:#x} is not {align:#x}-aligned inside 0..{size:#x}")]
    BadRange {
        /// Start offset.
        start: u64,
        /// End offset (exclusive).
        end: u64,
        /// The alignment required.
        align: u64,
        /// The object's size.
        size: u64,
    },
    /// Converting to private while the host has a live mapping of part of the range.
    #[error("Range {start:#x}..{end:#x} is mapped by the host")]
    Mapped {
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// Mapping a range that holds private pages (the faultability rule).
    #[error("Range {start:#x}..{end:#x} holds private pages")]
    Private {
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// The attribute map would exceed the number of ranges a descriptor may carry.
    #[error("More than {0} attribute ranges")]
    TooManyRanges(usize),
    /// A descriptor is malformed (its bytes break the layout in `docs/format.md`).
    #[error("Descriptor has an invalid {0}")]
    Descriptor(&'static str),
    /// A descriptor was being rewritten whenever it was read.
    #[error("Descriptor is being updated")]
    DescriptorBusy,
    /// The RAM file does not match the descriptor.
    #[error("RAM file does not match the descriptor: {0}")]
    Mismatch(&'static str),
}

impl Error {
    pub(crate) fn sys(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
        move |source| Error::Sys { step, source }
    }

    /// The errno this failure means: `EINVAL` for bad arguments and malformed state, `EBUSY`
    /// for a range the host maps, `ENOMEM` for an empty huge page pool, and the kernel's own
    /// for a failed system call.
    pub fn errno(&self) -> rustix::io::Errno {
        use rustix::io::Errno as E;
        match self {
            Error::Sys { source, .. } => *source,
            Error::Size { .. }
            | Error::BadRange { .. }
            | Error::Descriptor(_)
            | Error::Mismatch(_) => E::INVAL,
            Error::NoHugePages { .. } => E::NOMEM,
            Error::Mapped { .. } | Error::DescriptorBusy => E::BUSY,
            Error::Private { .. } => E::ACCESS,
            Error::TooManyRanges(_) => E::NOSPC,
        }
    }
}
