//! luod connections: opening the device, telling luod's descriptors from any other, and one
//! request with its reply.
//!
//! # The mark
//!
//! The library keeps no table of its descriptors: a table would be wrong after `dup2`, lost
//! across `execve`, and stale after `fork`. Instead the socket itself carries the mark: the
//! library sets its `SO_PEEK_OFF` to a negative magic value, one for the device and one for
//! sessions, right after it obtains the socket. A peek offset lives on the socket, so every
//! copy of the descriptor in every process sees it; the kernel only ever changes a peek offset
//! that is non-negative, and nothing reads it but `MSG_PEEK` receives, which luod's protocol
//! does not use. Classifying a descriptor is then one `getsockopt`, and a socket of the program's
//! own can only be mistaken for luod's if it carries one of those exact values.
//!
//! If a kernel ever refuses the value, the socket is instead bound to an abstract name,
//! `\0luo-preload/<d|s>/<inode>`, and recognised by `getsockname`. (`LUO_PRELOAD_NAME_MARK`
//! set in the environment forces this fallback, so the tests can exercise it.)

use core::ffi::c_int;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use luo_abi::wire::Op;
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// What a luod descriptor stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An open `/dev/liveupdate`.
    Device,
    /// A session.
    Session,
}

/// `SO_PEEK_OFF` of a device connection.
const MARK_DEVICE: c_int = -0x4C55_4400;
/// `SO_PEEK_OFF` of a session connection.
const MARK_SESSION: c_int = -0x4C55_5300;
/// Prefix of the abstract name of the fallback mark.
const NAME_PREFIX: &[u8] = b"luo-preload/";

/// Most bytes of a reply this library reads: the header and the largest uapi struct. A longer
/// reply (an error with luod's explanation) is cut by the kernel (`MSG_TRUNC`), which is fine:
/// only its header matters then.
const REPLY_MAX: usize = 16 + 72;
/// Most descriptors taken from one reply; luod attaches at most one.
const REPLY_FDS: usize = 4;

fn raw(e: Errno) -> i32 {
    e.raw_os_error()
}

/// Borrows a descriptor number the caller passed.
///
/// # Safety
///
/// `fd` must be non-negative and is only used for the call the borrow is passed to: the
/// system call fails with `EBADF` if the number is not open, and the library never closes it.
pub(crate) unsafe fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: forwarded from this function's contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn peek_off(fd: RawFd) -> Result<c_int, i32> {
    let mut value: c_int = 0;
    let mut len = core::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given; the kernel checks `fd`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(crate::user::errno())
    }
}

/// Marks `fd` as a luod connection of `kind` (see the module doc).
pub(crate) fn mark(fd: BorrowedFd<'_>, kind: Kind) -> Result<(), i32> {
    let value = match kind {
        Kind::Device => MARK_DEVICE,
        Kind::Session => MARK_SESSION,
    };
    // SAFETY: a NUL-terminated name; the result is only compared with NULL.
    if !unsafe { libc::getenv(c"LUO_PRELOAD_NAME_MARK".as_ptr()) }.is_null() {
        // The tests' way to exercise the fallback on a kernel that accepts the peek offset.
        return mark_by_name(fd, kind);
    }
    // SAFETY: `value` is a valid c_int for the size given; the kernel checks the descriptor.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&raw const value).cast(),
            core::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if r == 0 && peek_off(fd.as_raw_fd()) == Ok(value) {
        return Ok(());
    }
    mark_by_name(fd, kind)
}

/// The fallback mark: bind to `\0luo-preload/<d|s>/<inode>[-n]`.
fn mark_by_name(fd: BorrowedFd<'_>, kind: Kind) -> Result<(), i32> {
    let ino = rustix::fs::fstat(fd).map_err(raw)?.st_ino;
    for attempt in 0u64..8 {
        let mut name = Writer::new();
        name.push(NAME_PREFIX);
        name.push(if kind == Kind::Device { b"d/" } else { b"s/" });
        name.push_decimal(ino);
        if attempt > 0 {
            name.push(b"-");
            name.push_decimal(attempt);
        }
        let addr = SocketAddrUnix::new_abstract_name(name.bytes().ok_or(libc::ENAMETOOLONG)?)
            .map_err(raw)?;
        match rustix::net::bind(fd, &addr) {
            Ok(()) => return Ok(()),
            Err(Errno::ADDRINUSE) => continue,
            Err(e) => return Err(raw(e)),
        }
    }
    Err(libc::EADDRINUSE)
}

/// Builds a short byte string on the stack.
struct Writer {
    buf: [u8; 128],
    len: usize,
    overflow: bool,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            buf: [0; 128],
            len: 0,
            overflow: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = b;
                    self.len = self.len.saturating_add(1);
                }
                None => self.overflow = true,
            }
        }
    }

    fn push_decimal(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at = at.saturating_sub(1);
            if let Some(d) = digits.get_mut(at) {
                *d = b'0'.wrapping_add((n % 10) as u8);
            }
            n /= 10;
            if n == 0 || at == 0 {
                break;
            }
        }
        self.push(digits.get(at..).unwrap_or_default());
    }

    /// The bytes written, or `None` if they did not fit.
    fn bytes(&self) -> Option<&[u8]> {
        if self.overflow {
            None
        } else {
            self.buf.get(..self.len)
        }
    }
}

/// What `fd` is: a luod device or session connection made by this library, or `None`.
///
/// One `getsockopt` for any descriptor; a socket without the peek-offset mark also gets a
/// `getsockname` (the fallback mark).
pub(crate) fn classify(fd: RawFd) -> Option<Kind> {
    if fd < 0 {
        return None;
    }
    match peek_off(fd) {
        Ok(MARK_DEVICE) => return Some(Kind::Device),
        Ok(MARK_SESSION) => return Some(Kind::Session),
        Ok(_) => {}
        Err(_) => return None, // not a socket, or not one with a peek offset
    }
    // SAFETY: non-negative, used for this getsockname only.
    let addr = rustix::net::getsockname(unsafe { borrow(fd) }).ok()?;
    let addr = SocketAddrUnix::try_from(addr).ok()?;
    let name = addr.abstract_name()?;
    let rest = name.strip_prefix(NAME_PREFIX)?;
    match rest.get(..2)? {
        b"d/" => Some(Kind::Device),
        b"s/" => Some(Kind::Session),
        _ => None,
    }
}

/// The value of environment variable `name`, if set.
fn env(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv returns NULL or a pointer into the environment, NUL-terminated; the
    // bytes are copied out or parsed before this hook returns (a setenv racing with it is the
    // program's own data race, as with any libc call reading the environment).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated (see above).
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

/// `/tmp/luod-<uid>`, the private directory of `uid` (`luo_client::socket::private_dir`),
/// not NUL-terminated.
fn private_dir(uid: u32) -> Writer {
    let mut dir = Writer::new();
    dir.push(b"/tmp/luod-");
    dir.push_decimal(u64::from(uid));
    dir
}

/// luod's socket, as `luo_client::default_socket` finds it: `LUOD_SOCKET`, else
/// `/run/luod/luod.sock` for root, else `$XDG_RUNTIME_DIR/luod.sock` (an absolute path), else
/// `/tmp/luod-<uid>/luod.sock`; NUL-terminated.
fn socket_path(uid: u32) -> Writer {
    let mut path = Writer::new();
    if let Some(p) = env(c"LUOD_SOCKET") {
        path.push(p);
    } else if uid == 0 {
        path.push(b"/run/luod/luod.sock");
    } else if let Some(dir) = env(c"XDG_RUNTIME_DIR").filter(|d| d.starts_with(b"/")) {
        path.push(dir);
        path.push(b"/luod.sock");
    } else {
        path.push(private_dir(uid).bytes().unwrap_or_default());
        path.push(b"/luod.sock");
    }
    path.push(b"\0");
    path
}

/// `EACCES` if `path` (NUL-terminated) is the private default socket of `uid` and its
/// directory is not a directory owned by `uid` without permission for group or other, as
/// `luo_client::connect` checks. A directory that does not exist passes (the connect then
/// finds no luod).
fn check_private_dir(path: &[u8], uid: u32) -> Result<(), i32> {
    let dir = private_dir(uid);
    let mut socket = Writer::new();
    socket.push(dir.bytes().unwrap_or_default());
    socket.push(b"/luod.sock\0");
    if socket.bytes() != Some(path) {
        return Ok(());
    }
    let mut dir_z = Writer::new();
    dir_z.push(dir.bytes().unwrap_or_default());
    dir_z.push(b"\0");
    let Some(dir_z) = dir_z
        .bytes()
        .and_then(|b| core::ffi::CStr::from_bytes_with_nul(b).ok())
    else {
        return Err(libc::EACCES);
    };
    let st = match rustix::fs::statat(
        rustix::fs::CWD,
        dir_z,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(_) => return Err(libc::EACCES),
    };
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    if !is_dir || st.st_uid != uid || st.st_mode & 0o077 != 0 {
        return Err(libc::EACCES);
    }
    Ok(())
}

/// True if a server running as `server` may serve a client of effective uid `client`: root,
/// the client itself, or the decimal uid in `LUOD_SERVER_UID` (`luo_client::socket::trusted`).
fn trusted(server: u32, client: u32) -> bool {
    server == 0 || server == client || env(c"LUOD_SERVER_UID").and_then(parse_uid) == Some(server)
}

/// A decimal uid, surrounding spaces allowed (as Rust's `str::trim` and `parse::<u32>`).
fn parse_uid(text: &[u8]) -> Option<u32> {
    let text = text.trim_ascii();
    let digits = text.strip_prefix(b"+").unwrap_or(text);
    if digits.is_empty() {
        return None;
    }
    let mut uid: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        uid = uid
            .checked_mul(10)?
            .checked_add(u32::from(b.wrapping_sub(b'0')))?;
    }
    Some(uid)
}

/// Opens the device: connects to luod with `SOCK_SEQPACKET`, close-on-exec if `flags` has
/// `O_CLOEXEC`, checks who serves the socket, and asks for the caller's device connection.
/// luod not running → `ENOENT`, as on a kernel without LUO; the device already open → `EBUSY`;
/// a socket served by a uid other than root, the caller's effective uid and `LUOD_SERVER_UID`,
/// or a private default directory `/tmp/luod-<uid>` that is not the caller's own → `EACCES`,
/// with nothing sent.
pub(crate) fn open_device(flags: c_int) -> Result<c_int, i32> {
    let uid = rustix::process::geteuid().as_raw();
    let path = socket_path(uid);
    let path = path
        .bytes()
        .and_then(|b| core::ffi::CStr::from_bytes_with_nul(b).ok())
        .ok_or(libc::ENOENT)?;
    check_private_dir(path.to_bytes_with_nul(), uid)?;
    let addr = SocketAddrUnix::new(path).map_err(|_| libc::ENOENT)?;
    let mut sock_flags = SocketFlags::empty();
    if flags & libc::O_CLOEXEC != 0 {
        sock_flags |= SocketFlags::CLOEXEC;
    }
    // Connected blocking (an AF_UNIX connect waits only for room in the listen backlog), made
    // non-blocking afterwards if the caller asked: the ioctls wait for their replies anyway.
    let sock =
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, sock_flags, None)
            .map_err(raw)?;
    loop {
        match rustix::net::connect(&sock, &addr) {
            Ok(()) | Err(Errno::ISCONN) => break,
            Err(Errno::INTR) => continue,
            // No socket file, a stale one, or a path through a non-directory: no luod here.
            Err(Errno::NOENT | Errno::CONNREFUSED | Errno::NOTDIR) => return Err(libc::ENOENT),
            Err(e) => return Err(raw(e)),
        }
    }
    // Before anything is sent: the server must be luod, as far as its uid tells.
    match rustix::net::sockopt::socket_peercred(&sock) {
        Ok(cred) if trusted(cred.uid.as_raw(), uid) => {}
        _ => return Err(libc::EACCES),
    }
    if flags & libc::O_NONBLOCK != 0 {
        rustix::io::ioctl_fionbio(&sock, true).map_err(raw)?;
    }
    mark(sock.as_fd(), Kind::Device)?;
    let guard = crate::lock::lock()?;
    let reply = call(&guard, sock.as_fd(), Op::OpenDevice as u32, &[], None).map_err(|e| {
        if e == libc::ECONNRESET {
            libc::ENOENT
        } else {
            e
        }
    })?;
    match reply.errno {
        0 => Ok(sock.into_raw_fd()),
        libc::EBUSY => Err(libc::EBUSY),
        libc::EACCES | libc::EPERM => Err(reply.errno),
        _ => Err(libc::EIO),
    }
}

/// A reply: errno, the argument bytes (cut to [`REPLY_MAX`]) and the descriptors received.
#[derive(Debug)]
pub(crate) struct Reply {
    /// 0 or the errno luod answered.
    pub errno: i32,
    /// The argument (first `len` bytes).
    pub arg: [u8; REPLY_MAX],
    /// Bytes of `arg` received.
    pub len: usize,
    /// The descriptors attached, close-on-exec.
    pub fds: FdList,
    /// Descriptors were attached that could not be received (`MSG_CTRUNC`).
    pub fds_lost: bool,
}

/// Descriptors received with one reply; closed on drop unless taken.
#[derive(Debug, Default)]
pub(crate) struct FdList {
    fds: [Option<OwnedFd>; REPLY_FDS],
}

impl FdList {
    fn push(&mut self, fd: OwnedFd) {
        if let Some(slot) = self.fds.iter_mut().find(|s| s.is_none()) {
            *slot = Some(fd);
        }
        // More than REPLY_FDS: dropped, i.e. closed.
    }

    /// Takes the first descriptor.
    pub fn take(&mut self) -> Option<OwnedFd> {
        self.fds.iter_mut().find_map(Option::take)
    }
}

/// Waits until `fd` is ready for `what` (for a socket the program made non-blocking).
fn wait(fd: BorrowedFd<'_>, what: PollFlags) {
    let mut pfd = [PollFd::new(&fd, what)];
    loop {
        match rustix::event::poll(&mut pfd, None) {
            Err(Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// Sends one request (`op`, `arg`, and `pass` as `SCM_RIGHTS`) on `sock` and waits for its
/// reply, under the request lock `guard`.
///
/// A `pass` descriptor that is not open fails the send with `EBADF` (nothing is sent); the
/// caller decides what that means. A closed connection is `ECONNRESET`.
pub(crate) fn call(
    guard: &crate::lock::Guard,
    sock: BorrowedFd<'_>,
    op: u32,
    arg: &[u8],
    pass: Option<BorrowedFd<'_>>,
) -> Result<Reply, i32> {
    let id = guard.next_id();
    let arg_len = u32::try_from(arg.len()).map_err(|_| libc::E2BIG)?;
    let mut header = [0u8; 16];
    for (dst, src) in header.iter_mut().zip(
        op.to_le_bytes()
            .into_iter()
            .chain(arg_len.to_le_bytes())
            .chain(id.to_le_bytes()),
    ) {
        *dst = src;
    }
    send(sock, &header, arg, pass)?;
    loop {
        let reply = recv(sock)?;
        let Some(reply) = reply else { continue };
        if reply.1 != id && reply.1 != 0 {
            continue; // a stale reply: its descriptors are closed as it drops
        }
        return Ok(reply.0);
    }
}

fn send(
    sock: BorrowedFd<'_>,
    header: &[u8],
    arg: &[u8],
    pass: Option<BorrowedFd<'_>>,
) -> Result<(), i32> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let pass_list;
    if let Some(fd) = pass {
        pass_list = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&pass_list)) {
            return Err(libc::ENOBUFS);
        }
    }
    let iov = [IoSlice::new(header), IoSlice::new(arg)];
    loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => wait(sock, PollFlags::OUT),
            Err(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN) => return Err(libc::ECONNRESET),
            Err(e) => return Err(raw(e)),
        }
    }
}

/// Receives one message: `None` for one too short to be a reply (ignored), else the reply and
/// its id.
fn recv(sock: BorrowedFd<'_>) -> Result<Option<(Reply, u64)>, i32> {
    let mut buf = [0u8; REPLY_MAX.wrapping_add(16)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(REPLY_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => wait(sock, PollFlags::IN),
            Err(Errno::CONNRESET | Errno::PIPE | Errno::NOTCONN) => return Err(libc::ECONNRESET),
            Err(e) => return Err(raw(e)),
        }
    };
    let mut fds = FdList::default();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            for fd in rights {
                fds.push(fd);
            }
        }
    }
    let got = msg.bytes.min(buf.len());
    if got == 0 && fds.is_empty() {
        return Err(libc::ECONNRESET); // the peer closed the connection
    }
    let field = |at: usize| -> Option<[u8; 4]> { buf.get(at..at.checked_add(4)?)?.try_into().ok() };
    let (Some(errno), Some(len)) = (field(0), field(4)) else {
        return Ok(None);
    };
    let Some(id) = buf
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
    else {
        return Ok(None);
    };
    let mut arg = [0u8; REPLY_MAX];
    let body = buf.get(16..got).unwrap_or_default();
    let n = body
        .len()
        .min(arg.len())
        .min(u32::from_le_bytes(len) as usize);
    if let (Some(dst), Some(src)) = (arg.get_mut(..n), body.get(..n)) {
        dst.copy_from_slice(src);
    }
    Ok(Some((
        Reply {
            errno: i32::from_le_bytes(errno),
            arg,
            len: n,
            fds,
            fds_lost: msg.flags.contains(ReturnFlags::CTRUNC),
        },
        id,
    )))
}

impl FdList {
    /// True if the list holds no descriptor.
    fn is_empty(&self) -> bool {
        self.fds.iter().all(Option::is_none)
    }
}
