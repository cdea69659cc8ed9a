//! Integer socket options rustix has no wrapper for.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `SO_PASSRIGHTS` (`include/uapi/asm-generic/socket.h`): 1 if the socket accepts `SCM_RIGHTS`
/// messages, 0 if a sender trying to pass it descriptors gets `EPERM`. Linux 6.16 and later.
pub const SO_PASSRIGHTS: i32 = 83;

/// `SO_PEEK_OFF`: the offset `MSG_PEEK` reads at, or -1 (the default) for the front.
pub const SO_PEEK_OFF: i32 = libc::SO_PEEK_OFF;

/// Reads the `SOL_SOCKET` integer option `opt` of `fd`.
pub fn get_int(fd: impl AsFd, opt: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a live descriptor for the duration of the call (borrowed through
    // `AsFd`); `value` and `len` are valid for writes, and `len` holds the size of `value`,
    // so the kernel writes at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets the `SOL_SOCKET` integer option `opt` of `fd` to `value`.
pub fn set_int(fd: impl AsFd, opt: i32, value: i32) -> io::Result<()> {
    let value: libc::c_int = value;
    // SAFETY: `fd` is a live descriptor for the duration of the call (borrowed through
    // `AsFd`); `value` is valid for reads of the length passed, and the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the Unix socket `fd` accepts descriptors (`SO_PASSRIGHTS`), or `None` if the kernel
/// does not have the option.
pub fn passrights(fd: impl AsFd) -> io::Result<Option<bool>> {
    match get_int(fd, SO_PASSRIGHTS) {
        Ok(v) => Ok(Some(v != 0)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lets the Unix socket `fd` accept descriptors, or not (`SO_PASSRIGHTS`).
pub fn set_passrights(fd: impl AsFd, on: bool) -> io::Result<()> {
    set_int(fd, SO_PASSRIGHTS, i32::from(on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    fn pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair")
    }

    #[test]
    fn passrights_off_refuses_descriptors() {
        let (a, b) = pair();
        let Some(on) = passrights(&a).expect("getsockopt") else {
            return; // An older kernel: nothing to check.
        };
        assert!(on);
        set_passrights(&a, false).expect("setsockopt");
        assert_eq!(passrights(&a).expect("getsockopt"), Some(false));
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        let fds = [b.as_fd()];
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        let sent = rustix::net::sendmsg(
            &b,
            &[std::io::IoSlice::new(b"x")],
            &mut control,
            rustix::net::SendFlags::empty(),
        );
        assert_eq!(sent, Err(rustix::io::Errno::PERM));
    }

    #[test]
    fn peek_offset_round_trips() {
        let (a, _b) = pair();
        assert_eq!(get_int(&a, SO_PEEK_OFF).expect("get"), -1);
        set_int(&a, SO_PEEK_OFF, 0).expect("set");
        assert_eq!(get_int(&a, SO_PEEK_OFF).expect("get"), 0);
        assert!(
            get_int(&a, 0x7fff).is_err(),
            "an unknown option is an error"
        );
    }
}
