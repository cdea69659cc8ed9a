//! The errno vocabulary luod answers with.
//!
//! The values are Linux's (x86_64 and aarch64 share them). They are spelled out here so the
//! contracts in this crate do not depend on a libc.

use core::fmt;

/// A Linux errno value, always positive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $text:expr;)*) => {
        impl Errno {
            $(#[doc = $text] pub const $name: Errno = Errno($val);)*

            /// The symbolic name (`"EINVAL"`), or `None` for a value outside the vocabulary.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted.";
    ENOENT = 2, "No such session, token, handler or file.";
    EIO = 5, "Input/output error (the kernel's answer when incoming state could not be read).";
    E2BIG = 7, "A request struct larger than known with a non-zero tail.";
    ENOEXEC = 8, "No kernel is loaded for kexec (luod's kernel backend).";
    EBADF = 9, "Not an open file descriptor.";
    EAGAIN = 11, "Try again.";
    ENOMEM = 12, "Out of memory.";
    EACCES = 13, "Permission denied.";
    EFAULT = 14, "Bad address.";
    EBUSY = 16, "Device or object in use, or a finish vetoed.";
    EEXIST = 17, "Name or token already taken.";
    ENODEV = 19, "No such device.";
    EINVAL = 22, "Invalid argument, or the wrong kind of session for the operation.";
    EMFILE = 24, "Too many open files.";
    ENOTTY = 25, "Inappropriate ioctl for the descriptor.";
    EFBIG = 27, "File too large.";
    ENOSPC = 28, "No space left (block or quota limit).";
    ENODATA = 61, "No data available.";
    EPROTO = 71, "Protocol error.";
    EMSGSIZE = 90, "Message too long (longer than the largest message of the protocol).";
    EOPNOTSUPP = 95, "Operation not supported.";
    ECONNRESET = 104, "Connection reset by the peer.";
    EDQUOT = 122, "Quota exceeded.";
}

impl Errno {
    /// The raw value.
    pub const fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Errno;

    #[test]
    fn names_match_values() {
        assert_eq!(Errno::EINVAL.name(), Some("EINVAL"));
        assert_eq!(Errno::E2BIG.raw(), 7);
        assert_eq!(Errno::ENOTTY.raw(), 25);
        assert_eq!(Errno(4242).name(), None);
    }
}
