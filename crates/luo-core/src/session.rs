//! Sessions and the files they hold.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use crate::handler::{FileData, Identity, RetrieveStatus};

/// A handle to one session of an [`Engine`](crate::Engine). It plays the part of a session
/// descriptor: a handle stays valid until the session is closed, and is never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Which way a session is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Being filled by the current generation; PRESERVE_FD works, RETRIEVE_FD and FINISH don't.
    Outgoing,
    /// Handed over; waiting for, or held by, a successor.
    Incoming {
        /// A client retrieved it (RETRIEVE_SESSION succeeded).
        retrieved: bool,
        /// A FINISH succeeded; the session has no files left.
        finished: bool,
    },
}

/// One preserved file.
#[derive(Debug)]
pub(crate) struct File {
    /// Index of the handler in the registry.
    pub handler: usize,
    /// The held descriptor, the token and the handler's record.
    pub data: FileData,
    /// Memory the file keeps alive.
    pub bytes: u64,
    /// The `S_IFMT` bits of the held descriptor, recorded when it was taken.
    pub mode: u32,
    /// The identity this file holds in the engine's set, if any.
    pub identity: Option<Identity>,
    /// The handler's `freeze` ran.
    pub frozen: bool,
    /// Incoming files: how the retrieve went.
    pub status: RetrieveStatus,
    /// Incoming files: the open file a successful retrieve returned (later retrieves dup it).
    pub retrieved: Option<OwnedFd>,
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    pub owner: u32,
    pub name: Box<[u8]>,
    pub direction: Direction,
    /// Creation order, across the whole engine.
    pub seq: u64,
    /// Files by token.
    pub files: BTreeMap<u64, File>,
    /// Preservation order: sequence number -> token.
    pub order: BTreeMap<u64, u64>,
    pub next_order: u64,
}

impl Session {
    pub fn new(owner: u32, name: Box<[u8]>, direction: Direction, seq: u64) -> Self {
        Session {
            owner,
            name,
            direction,
            seq,
            files: BTreeMap::new(),
            order: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// Tokens in preservation order.
    pub fn tokens_fifo(&self) -> Vec<u64> {
        self.order.values().copied().collect()
    }

    pub fn insert_file(&mut self, file: File) {
        let token = file.data.token;
        self.order.insert(self.next_order, token);
        self.next_order += 1;
        self.files.insert(token, file);
    }

    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum()
    }

    pub fn is_outgoing(&self) -> bool {
        self.direction == Direction::Outgoing
    }
}

/// What [`Engine::sessions`](crate::Engine::sessions) reports about one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The handle.
    pub id: SessionId,
    /// The uid whose namespace holds it.
    pub owner: u32,
    /// Its name.
    pub name: Vec<u8>,
    /// Outgoing or incoming.
    pub direction: Direction,
    /// Creation order.
    pub seq: u64,
    /// Files it holds.
    pub files: usize,
    /// Memory its files keep alive.
    pub bytes: u64,
}
