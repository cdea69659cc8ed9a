//! The crate's error: one variant per failed step.

/// Something the VMM could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("KVM {step} failed")]
    Kvm {
        /// The ioctl, as `KVM_CREATE_VM` or `KVM_GET_SREGS`.
        step: &'static str,
        /// What the kernel answered.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A system call failed.
    #[error("{step} failed")]
    Sys {
        /// The call.
        step: &'static str,
        /// What the kernel answered.
        #[source]
        source: rustix::io::Errno,
    },
    /// The guest memory object refused.
    #[error("Guest memory")]
    GuestMemory(#[from] luo_guestmem::Error),
    /// luod refused a request.
    #[error("luod")]
    Luod(#[source] luo_client::Error),
    /// The guest stopped in a way it never should (halt, shutdown, an unexpected exit).
    #[error("Guest stopped unexpectedly: {0}")]
    GuestExit(String),
    /// The saved vCPU state is malformed.
    #[error("Saved state has an invalid {0}")]
    State(&'static str),
    /// The guest's progress did not continue where it stopped.
    #[error("Guest progress broken: {0}")]
    Progress(String),
    /// The handoff partner said something unexpected or went away.
    #[error("Handoff: {0}")]
    Handoff(String),
    /// The copy engine refused a copy (its units did not fit the memory).
    #[error("Copy of guest memory")]
    Copy(#[source] luo_copy::Error),
    /// A live migrate of guest memory cannot be done here, or was refused.
    #[error("Migrate: {0}")]
    Migrate(String),
}

impl Error {
    pub(crate) fn kvm(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { step, source }
    }

    pub(crate) fn sys(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
        move |source| Error::Sys { step, source }
    }
}

impl From<luo_client::Error> for Error {
    fn from(e: luo_client::Error) -> Error {
        Error::Luod(e)
    }
}
