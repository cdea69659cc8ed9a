//! Pointer and string arguments from C, checked before anything is sent.

use std::ffi::{CStr, c_char};

use luo_abi::uapi::SESSION_NAME_MAX;

use crate::error::Error;

/// The object `ptr` points to; `Error::Null(name)` for NULL.
///
/// # Safety
///
/// `ptr` is NULL or points to a live `T` that stays valid and is not mutated through another
/// pointer for `'a`.
pub(crate) unsafe fn object<'a, T>(ptr: *const T, name: &'static str) -> Result<&'a T, Error> {
    // SAFETY: the caller's contract: NULL or a live, unaliased-for-writes `T`.
    unsafe { ptr.as_ref() }.ok_or(Error::Null(name))
}

/// A checked output pointer: set to NULL at once, so that a failure leaves `*out` NULL.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for a `*mut T`.
pub(crate) unsafe fn out_ptr<T>(out: *mut *mut T, name: &'static str) -> Result<Out<T>, Error> {
    if out.is_null() {
        return Err(Error::Null(name));
    }
    // SAFETY: `out` is not NULL and, by the caller's contract, writable.
    unsafe { out.write(std::ptr::null_mut()) };
    Ok(Out(out))
}

/// An output pointer checked by [`out_ptr`].
pub(crate) struct Out<T>(*mut *mut T);

impl<T> Out<T> {
    /// Hands `value` to the caller: `*out` takes ownership of it.
    pub(crate) fn set(self, value: Box<T>) {
        // SAFETY: `out_ptr` checked that the pointer is not NULL, and its caller promised it
        // is writable for as long as the call lasts, which this is still part of.
        unsafe { self.0.write(Box::into_raw(value)) };
    }
}

/// The NUL-terminated string at `ptr`, as UTF-8.
///
/// # Safety
///
/// `ptr` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn string<'a>(ptr: *const c_char, name: &'static str) -> Result<&'a str, Error> {
    if ptr.is_null() {
        return Err(Error::Null(name));
    }
    // SAFETY: not NULL, and NUL-terminated and valid for 'a by the caller's contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| Error::NotUtf8(name))
}

/// A session name at `ptr`: UTF-8, at most [`SESSION_NAME_MAX`] bytes.
///
/// # Safety
///
/// As [`string`].
pub(crate) unsafe fn session_name<'a>(ptr: *const c_char) -> Result<&'a str, Error> {
    // SAFETY: forwarded: the caller's contract is `string`'s.
    let name = unsafe { string(ptr, "name") }?;
    if name.len() > SESSION_NAME_MAX {
        return Err(Error::NameTooLong {
            len: name.len(),
            max: SESSION_NAME_MAX,
        });
    }
    Ok(name)
}

/// Copies `text` into `buf` as a NUL-terminated C string, cut to fit.
pub(crate) fn copy_c_string(text: &str, buf: &mut [c_char]) {
    let Some(room) = buf.len().checked_sub(1) else {
        return;
    };
    let n = text.len().min(room);
    for (dst, &src) in buf.iter_mut().zip(&text.as_bytes()[..n]) {
        *dst = src as c_char;
    }
    for dst in &mut buf[n..] {
        *dst = 0;
    }
}
