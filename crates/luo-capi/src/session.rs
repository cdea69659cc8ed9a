//! `struct luo_session`: one session, outgoing (preserve, hand off) or incoming (retrieve,
//! finish).
//!
//! A session is its own connection to luod. Closing its last copy — the handle's descriptor
//! and any duplicate of it, in any process — closes the session: an outgoing one is discarded
//! with every file in it, an incoming one finished. After luo_handoff() the session waits in
//! luod for a successor, whatever becomes of the handle.

use std::ffi::c_int;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use luo_client::Session;

use crate::arg;
use crate::c_functions;
use crate::error::{Error, guard, guard_void};
use crate::header::{CType, Opaque};

/// `struct luo_session`.
#[derive(Debug)]
pub struct LuoSession {
    session: Session,
    /// Held for each request: replies come back in order on the connection, and two threads
    /// must not read each other's.
    lock: Mutex<()>,
}

impl LuoSession {
    pub(crate) fn new(session: Session) -> LuoSession {
        LuoSession {
            session,
            lock: Mutex::new(()),
        }
    }

    /// The session, for one request.
    fn lock(&self) -> (MutexGuard<'_, ()>, &Session) {
        (
            self.lock.lock().unwrap_or_else(PoisonError::into_inner),
            &self.session,
        )
    }
}

impl CType for LuoSession {
    fn c_type() -> String {
        "struct luo_session".to_owned()
    }
}

pub(crate) const OPAQUE: Opaque = Opaque {
    doc: &[
        " One session: made by luo_session_create() (outgoing) or luo_session_retrieve()",
        " (incoming), freed by luo_session_close(). It is a connection of its own: it does",
        " not need the client that made it.",
    ],
    tag: "luo_session",
};

/// A descriptor number the caller lends for one call.
fn borrowed(fd: c_int) -> Result<BorrowedFd<'static>, Error> {
    if fd < 0 {
        return Err(Error::BadFd { fd });
    }
    // SAFETY: `fd` is not -1 (it is not negative). The caller lends it for the call, whose
    // end this borrow does not outlive in practice (it is used for one sendmsg); a number
    // that is not open makes that sendmsg fail with EBADF, which is reported.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

c_functions! { FUNCTIONS;
    /// PRESERVE_FD: preserves fd under token in this outgoing session. luod keeps its own
    /// reference: the caller may close fd at once (the memory of a memfd stays). -EEXIST
    /// if token is taken in this session; -EBUSY if the file (for a memfd: its inode,
    /// through any descriptor) is preserved already, in any session; -EINVAL on an
    /// incoming session; -EBADF if fd is not open; -EOPNOTSUPP for a kind of file no
    /// handler of luod takes; -EDQUOT or -EMFILE over the uid's quotas.
    ///
    /// # Safety
    ///
    /// session comes from luo_session_create() or luo_session_retrieve().
    pub unsafe extern "C" fn luo_preserve(
        session: *mut LuoSession,
        fd: c_int,
        token: u64,
    ) -> c_int {
        guard("luo_preserve", || {
            // SAFETY: the caller's contract: NULL or a live session.
            let session = unsafe { arg::object(session, "session") }?;
            let file = borrowed(fd)?;
            let (_lock, s) = session.lock();
            s.preserve(file, token).map_err(Error::file(token))?;
            Ok(0)
        })
    }

    /// RETRIEVE_FD: the file preserved under token, in *fd_out: a new descriptor
    /// (close-on-exec) of a new open file description, with the size, seals and position the
    /// predecessor left; the same memory, not a copy. The caller owns it. Retrieving again
    /// gives another descriptor. -ENOENT for a token not in the session; -EINVAL on an
    /// outgoing session.
    ///
    /// # Safety
    ///
    /// session comes from luo_session_retrieve(); fd_out points to writable storage.
    pub unsafe extern "C" fn luo_retrieve(
        session: *mut LuoSession,
        token: u64,
        fd_out: *mut c_int,
    ) -> c_int {
        guard("luo_retrieve", || {
            // SAFETY: the caller's contract: NULL or a live session.
            let session = unsafe { arg::object(session, "session") }?;
            if fd_out.is_null() {
                return Err(Error::Null("fd_out"));
            }
            let (_lock, s) = session.lock();
            let fd = s.retrieve(token).map_err(Error::file(token))?;
            // SAFETY: not NULL, and writable by the caller's contract.
            unsafe { fd_out.write(fd.into_raw_fd()) };
            Ok(0)
        })
    }

    /// FINISH: ends this incoming session once the successor has what it needs: every file
    /// not retrieved is discarded. The handle stays to be closed. -EINVAL on an outgoing
    /// session; -EBUSY if a handler refused (nothing was finished).
    ///
    /// # Safety
    ///
    /// session comes from luo_session_retrieve().
    pub unsafe extern "C" fn luo_session_finish(session: *mut LuoSession) -> c_int {
        guard("luo_session_finish", || {
            // SAFETY: the caller's contract: NULL or a live session.
            let session = unsafe { arg::object(session, "session") }?;
            let (_lock, s) = session.lock();
            s.finish()?;
            Ok(0)
        })
    }

    /// Handoff: freezes this outgoing session's files (recording each memfd's size, position
    /// and seals) and moves the session to the incoming set, where a successor of the same
    /// uid retrieves it by name; the process may then exit. The handle becomes inert (every
    /// session call on it is -EINVAL) and stays to be closed. -EEXIST if an incoming session
    /// of the uid has the name; -EINVAL on an incoming session; a handler's error if a file
    /// cannot be frozen (nothing changed).
    ///
    /// # Safety
    ///
    /// session comes from luo_session_create().
    pub unsafe extern "C" fn luo_handoff(session: *mut LuoSession) -> c_int {
        guard("luo_handoff", || {
            // SAFETY: the caller's contract: NULL or a live session.
            let session = unsafe { arg::object(session, "session") }?;
            let (_lock, s) = session.lock();
            s.handoff()?;
            Ok(0)
        })
    }

    /// Closes the handle and frees it. Unless another copy of its descriptor is open (see
    /// luo_session_fd()), this closes the session: an outgoing one not handed off is
    /// discarded with its files, an incoming one is finished. NULL is allowed.
    ///
    /// # Safety
    ///
    /// session is NULL or came from this library and is not used after this, by this thread
    /// or any other.
    pub unsafe extern "C" fn luo_session_close(session: *mut LuoSession) {
        guard_void("luo_session_close", || {
            if !session.is_null() {
                // SAFETY: it came from Box::into_raw in this library, and the caller gives it
                // back for good.
                drop(unsafe { Box::from_raw(session) });
            }
        });
    }
}

c_functions! { FD_FUNCTIONS;
    /// The session's descriptor (>= 0), or -EINVAL for NULL. It stays the handle's: do not
    /// close it. To hand the open session to a child process, dup() it (without
    /// close-on-exec) and give the child the number; the child adopts it with
    /// luo_session_from_fd(). The session lives while any copy is open.
    ///
    /// # Safety
    ///
    /// session is NULL or a live session.
    pub unsafe extern "C" fn luo_session_fd(session: *mut LuoSession) -> c_int {
        guard("luo_session_fd", || {
            // SAFETY: the caller's contract: NULL or a live session.
            let session = unsafe { arg::object(session, "session") }?;
            Ok(session.session.as_fd().as_raw_fd())
        })
    }

    /// A handle for a session descriptor obtained some other way (inherited, received over
    /// a socket), in *out. On success the handle owns fd; on failure fd is left alone.
    /// -EBADF if fd is not open. Whether it is a session shows at the first call.
    ///
    /// # Safety
    ///
    /// fd is not owned by anything else that will close it; out points to writable storage.
    pub unsafe extern "C" fn luo_session_from_fd(fd: c_int, out: *mut *mut LuoSession) -> c_int {
        guard("luo_session_from_fd", || {
            // SAFETY: the caller's contract: `out` is NULL or writable.
            let out = unsafe { arg::out_ptr(out, "out") }?;
            let file = borrowed(fd)?;
            rustix::io::fcntl_getfd(file).map_err(|_| Error::BadFd { fd })?;
            // SAFETY: `fd` is open (F_GETFD succeeded), and the caller hands its ownership
            // over: nothing else will close it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            out.set(Box::new(LuoSession::new(Session::from_fd(owned))));
            Ok(0)
        })
    }
}
