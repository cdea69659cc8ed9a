//! [`Error`], its one mapping to a negative errno, the thread's last error message, and
//! `guard`, which every exported function runs its body under.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use luo_abi::Errno;

/// Why a call of the C interface failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pointer argument was NULL.
    #[error("{0} is NULL")]
    Null(&'static str),
    /// A string argument was not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A session name longer than the kernel's limit.
    #[error("session name is {len} bytes long; the limit is {max}")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A descriptor argument that is not an open descriptor.
    #[error("{fd} is not an open descriptor")]
    BadFd {
        /// The descriptor number.
        fd: c_int,
    },
    /// A `struct luo_status` whose `size` is too small to hold anything.
    #[error("struct luo_status has size {size}; set size = sizeof(struct luo_status)")]
    StatusSize {
        /// The size the caller gave.
        size: u32,
    },
    /// luod, or the system call carrying the request, refused.
    #[error(transparent)]
    Call(Box<luo_client::Error>),
    /// luod refused an operation on the session `name`.
    #[error("session {name:?}")]
    Session {
        /// The session's name.
        name: String,
        /// What luod answered.
        #[source]
        source: Box<luo_client::Error>,
    },
    /// luod refused an operation on the file of `token`.
    #[error("token {token}")]
    File {
        /// The file's token.
        token: u64,
        /// What luod answered.
        #[source]
        source: Box<luo_client::Error>,
    },
    /// A panic inside the library, caught at the boundary.
    #[error("internal error: {0}")]
    Panic(String),
}

impl From<luo_client::Error> for Error {
    fn from(e: luo_client::Error) -> Error {
        Error::Call(Box::new(e))
    }
}

impl Error {
    /// A refusal of an operation on the session `name`.
    pub(crate) fn session(name: &str) -> impl FnOnce(luo_client::Error) -> Error {
        move |source| Error::Session {
            name: name.to_owned(),
            source: Box::new(source),
        }
    }

    /// A refusal of an operation on the file of `token`.
    pub(crate) fn file(token: u64) -> impl FnOnce(luo_client::Error) -> Error {
        move |source| Error::File {
            token,
            source: Box::new(source),
        }
    }

    /// The errno the C caller gets (negated).
    pub fn errno(&self) -> Errno {
        match self {
            Error::Null(_)
            | Error::NotUtf8(_)
            | Error::NameTooLong { .. }
            | Error::StatusSize { .. } => Errno::EINVAL,
            Error::BadFd { .. } => Errno::EBADF,
            Error::Call(e) | Error::Session { source: e, .. } | Error::File { source: e, .. } => {
                e.errno
            }
            Error::Panic(_) => Errno::EIO,
        }
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
fn set_last_error(message: String) {
    // An interior NUL would cut the message short; it cannot come from luod's UTF-8 text
    // decoded lossily, but a name given by the caller could carry one in its Debug form.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// The message of the last failed call on this thread (empty before any), valid until the
/// next failed call on this thread.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Runs `body` for the exported function `func`: its value on success; on failure, or if it
/// panics, records the message and returns the negative errno.
pub(crate) fn guard(func: &'static str, body: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    let error = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(e)) => e,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Error::Panic(what)
        }
    };
    let errno = error.errno();
    let mut message = format!("{func}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    set_last_error(message);
    -errno.raw()
}

/// Runs `body`, which returns nothing, for `func`: a panic is caught and recorded.
pub(crate) fn guard_void(func: &'static str, body: impl FnOnce()) {
    let _ = guard(func, || {
        body();
        Ok(0)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: `last_error` points into this thread's CString, which nothing replaces
        // before the copy below is made.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_eio_with_its_message() {
        let rc = guard("luo_test", || panic!("boom"));
        assert_eq!(rc, -Errno::EIO.raw());
        assert_eq!(last(), "luo_test: internal error: boom");
        let rc = guard("luo_test", || panic!("{}", String::from("formatted")));
        assert_eq!(rc, -Errno::EIO.raw());
        assert_eq!(last(), "luo_test: internal error: formatted");
    }

    #[test]
    fn success_leaves_the_last_error_alone() {
        assert_eq!(guard("luo_test", || Err(Error::Null("out"))), -22);
        assert_eq!(guard("luo_test", || Ok(7)), 7);
        assert_eq!(last(), "luo_test: out is NULL");
    }

    #[test]
    fn the_last_error_is_per_thread() {
        assert_eq!(guard("luo_test", || Err(Error::BadFd { fd: -1 })), -9);
        let other = std::thread::spawn(last).join().expect("thread");
        assert_eq!(other, "");
        assert_eq!(last(), "luo_test: -1 is not an open descriptor");
    }
}
