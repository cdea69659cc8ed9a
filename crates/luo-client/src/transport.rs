//! One message, with its descriptors, over an `AF_UNIX` `SOCK_SEQPACKET` socket.
//!
//! Shared by the client and the daemon: both sides frame messages the same way
//! ([`luo_abi::wire`]). Every descriptor received is close-on-exec.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use luo_abi::wire::{MAX_FDS, MAX_MESSAGE};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// One received message.
#[derive(Debug, Default)]
pub struct Received {
    /// The bytes (at most [`MAX_MESSAGE`]).
    pub bytes: Vec<u8>,
    /// The descriptors attached, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The message was longer than [`MAX_MESSAGE`] and was cut.
    pub truncated: bool,
    /// More descriptors were attached than fit ([`MAX_FDS`]); the rest were closed by the kernel.
    pub fds_truncated: bool,
}

/// One message received into a caller's buffer by [`recv_into`]: everything but the bytes.
#[derive(Debug, Default)]
pub struct Incoming {
    /// Bytes written to the front of the buffer.
    pub len: usize,
    /// The descriptors attached, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer and was cut.
    pub truncated: bool,
    /// More descriptors were attached than fit ([`MAX_FDS`]); the rest were closed by the kernel.
    pub fds_truncated: bool,
}

/// What a receive found: a [`Received`] from [`recv`], an [`Incoming`] from [`recv_into`].
#[derive(Debug)]
pub enum Recv<M = Received> {
    /// A message.
    Message(M),
    /// Nothing to read on a non-blocking socket.
    WouldBlock,
    /// The peer closed the connection.
    Closed,
}

/// Receives one message. `blocking` false adds `MSG_DONTWAIT`.
pub fn recv(fd: BorrowedFd<'_>, blocking: bool) -> Result<Recv, Errno> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    Ok(match recv_into(fd, &mut buf, blocking)? {
        Recv::Message(m) => {
            buf.truncate(m.len);
            Recv::Message(Received {
                bytes: buf,
                fds: m.fds,
                truncated: m.truncated,
                fds_truncated: m.fds_truncated,
            })
        }
        Recv::WouldBlock => Recv::WouldBlock,
        Recv::Closed => Recv::Closed,
    })
}

/// Receives one message into `buf` (a message longer than `buf` is cut and says so), without
/// allocating for the bytes: for loops that receive many messages into one buffer. `blocking`
/// false adds `MSG_DONTWAIT`.
pub fn recv_into(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    blocking: bool,
) -> Result<Recv<Incoming>, Errno> {
    receive_into(fd, buf, blocking, false)
}

/// [`recv_into`] without taking the message off the socket (`MSG_PEEK`): the next receive
/// gets it again. Its descriptors are installed as copies. luod reads each request this way
/// and takes it off with [`discard`] only once it has answered it, so that a request is never
/// lost by a server that dies while handling it.
pub fn peek_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Recv<Incoming>, Errno> {
    receive_into(fd, buf, false, true)
}

/// Takes the next message off the socket without reading it: its bytes are dropped and its
/// descriptors released without being installed (no control buffer is offered). `false` if
/// there was none.
pub fn discard(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut none: [u8; 0] = [];
    loop {
        match rustix::net::recv(fd, &mut none, RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn receive_into(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    blocking: bool,
    peek: bool,
) -> Result<Recv<Incoming>, Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if !blocking {
        flags |= RecvFlags::DONTWAIT;
    }
    if peek {
        flags |= RecvFlags::PEEK;
    }
    let mut reset = false;
    let msg = loop {
        match recvmsg(fd, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Ok(m) => break m,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(Recv::WouldBlock),
            // A peer that closed with messages of ours unread leaves ECONNRESET, which the
            // kernel reports once, before the messages the peer sent and we have not read yet:
            // receive again to get them (or the end of the stream).
            Err(Errno::CONNRESET) if !reset => reset = true,
            Err(Errno::CONNRESET) | Err(Errno::PIPE) => return Ok(Recv::Closed),
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    // On `SOCK_SEQPACKET` an empty datagram and the end of the stream both read as 0 bytes.
    // It is the end only if the peer hung up and nothing but the end is left to read.
    if msg.bytes == 0 && fds.is_empty() && peer_hung_up(fd) && nothing_left(fd) {
        return Ok(Recv::Closed);
    }
    Ok(Recv::Message(Incoming {
        len: msg.bytes.min(buf.len()),
        fds,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    }))
}

/// Sends one message with `fds` attached (at most [`MAX_FDS`]). On a non-blocking socket this
/// may fail with `EAGAIN`.
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    if fds.len() > MAX_FDS {
        return Err(Errno::TOOMANYREFS);
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    loop {
        match sendmsg(
            fd,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends with [`send`], waiting up to `timeout_ms` for room when the socket is non-blocking
/// and full.
pub fn send_wait(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    timeout_ms: i32,
) -> Result<(), Errno> {
    loop {
        match send(fd, bytes, fds) {
            Err(Errno::AGAIN) => {
                let mut pfd = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::OUT,
                )];
                let timeout = rustix::event::Timespec {
                    tv_sec: i64::from(timeout_ms / 1000),
                    tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
                };
                if rustix::event::poll(&mut pfd, Some(&timeout))? == 0 {
                    return Err(Errno::TIMEDOUT);
                }
            }
            other => return other,
        }
    }
}

/// True if a peek at `fd` finds the end of the stream (or another empty datagram, which a peer
/// that hung up can no longer get an answer to).
fn nothing_left(fd: BorrowedFd<'_>) -> bool {
    let mut one = [0u8; 1];
    matches!(
        rustix::net::recv(fd, &mut one, RecvFlags::PEEK | RecvFlags::DONTWAIT),
        Ok((0, _)) | Err(Errno::CONNRESET) | Err(Errno::PIPE)
    )
}

/// True if the peer of `fd` has hung up (a pending close not yet read).
pub fn peer_hung_up(fd: impl AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut pfd = [PollFd::new(&fd, PollFlags::RDHUP | PollFlags::HUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut pfd, Some(&zero)), Ok(n) if n > 0)
        && pfd[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}
