//! Client connections: who is on the other end and what the connection stands for.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use luo_core::SessionId;

/// What a connection plays the part of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A fresh connection: status, list, upgrade, reboot; [`luo_abi::wire::Op::OpenDevice`]
    /// turns it into a device.
    Control,
    /// An open `/dev/liveupdate` of its uid (exclusive per uid).
    Device,
    /// A session descriptor.
    Session(SessionId),
    /// A session descriptor whose session was handed off: closing it does nothing.
    Detached,
}

impl Kind {
    /// Stable encoding for the handover image.
    pub fn code(self) -> u32 {
        match self {
            Kind::Control => 0,
            Kind::Device => 1,
            Kind::Session(_) => 2,
            Kind::Detached => 3,
        }
    }
}

/// The peer's credentials, from `SO_PEERCRED` at accept time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cred {
    /// Process id.
    pub pid: i32,
    /// User id: the namespace the connection works in.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// luod's end of the socket.
    pub fd: OwnedFd,
    /// What it stands for.
    pub kind: Kind,
    /// Who is on the other end.
    pub cred: Cred,
    /// Replies the socket had no room for, oldest first, sent when it has (see
    /// `Server::send_reply`). While any wait here the connection is not read: its peer left
    /// replies unread, and stops being served until it reads.
    pub outbox: VecDeque<Outgoing>,
    /// A request of this connection is in progress (a migration, an upgrade): its reply comes
    /// later, and until then the connection is not read (the request stays at the head of the
    /// socket until its reply is sent).
    pub busy: bool,
}

impl Conn {
    /// True while replies wait in the [`outbox`](Conn::outbox): luod watches the socket for
    /// room instead of reading it.
    pub fn paused(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// True while luod must not read the connection: replies wait, or a request is in
    /// progress.
    pub fn held(&self) -> bool {
        self.busy || self.paused()
    }
}

/// A reply waiting for room in its connection's socket: the message and its descriptors.
#[derive(Debug)]
pub struct Outgoing {
    /// The framed reply.
    pub bytes: Vec<u8>,
    /// The descriptors it carries (a session connection, a retrieved file).
    pub fds: Vec<OwnedFd>,
}
