//! What changed in an engine since it was last asked: the sessions and files a journal must
//! write again for a successor to rebuild the engine from the last image plus the journal.
//!
//! Tracking is off until [`Engine::track_changes`] turns it on, and costs a set insertion per
//! mutation when on. [`Engine::take_changes`] hands out what changed and starts afresh; the
//! records of each changed session and file are then read with [`Engine::session_record`],
//! [`Engine::file_record`] and [`Engine::flb_records`], in the image's own vocabulary (the
//! `SESSION_*` and `FILE_*` bits, handler records, FLB data), so that applying them to an
//! image gives the image [`Engine::write_snapshot`] would write.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd};

use luo_abi::image::{
    FILE_BUSY, FILE_FROZEN, FLB_INCOMING, FLB_RETRIEVED, SESSION_FINISHED, SESSION_INCOMING,
    SESSION_RETRIEVED,
};

use crate::engine::Engine;
use crate::session::{Direction, Session, SessionId};

/// What changed since the last [`Engine::take_changes`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sessions (by creation sequence number) whose own record changed or that are gone, with
    /// the id they had and whether every file of theirs must be written again too (a handoff
    /// froze them all; a finish or a close removed them).
    pub sessions: BTreeMap<u64, (SessionId, bool)>,
    /// Files added, changed or gone: (session sequence number, session id, token).
    pub files: BTreeSet<(u64, SessionId, u64)>,
    /// Some FLB's counts or data changed: every FLB record must be written again.
    pub flbs: bool,
    /// Something changed that only a whole image describes well (a reboot's freeze or thaw).
    pub everything: bool,
}

impl Changes {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.files.is_empty() && !self.flbs && !self.everything
    }
}

/// A session's record, as the image holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Creation order: the session's identity across images and journals.
    pub seq: u64,
    /// Namespace (uid).
    pub owner: u32,
    /// The `SESSION_*` bits.
    pub flags: u32,
    /// 1..=63 bytes.
    pub name: Vec<u8>,
}

/// A file's record, as the image holds it, with the descriptors it lists.
#[derive(Clone, Copy, Debug)]
pub struct FileRecord<'a> {
    /// The handler's compatible.
    pub compatible: &'a str,
    /// The client's token.
    pub token: u64,
    /// The held descriptor and its `S_IFMT` bits.
    pub fd: BorrowedFd<'a>,
    /// The `S_IFMT` bits of `fd`.
    pub mode: u32,
    /// The open file a client retrieved, if it did.
    pub open: Option<BorrowedFd<'a>>,
    /// 0, 1 or a negative errno (the image's status).
    pub status: i32,
    /// The `FILE_*` bits.
    pub flags: u32,
    /// The handler's record.
    pub record: &'a [u8],
}

/// An FLB's record, as the image holds it (an FLB may have an outgoing and an incoming one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlbRecord {
    /// The FLB's compatible.
    pub compatible: String,
    /// Files linked to it.
    pub count: u64,
    /// The `FLB_*` bits.
    pub flags: u32,
    /// Its serialized state.
    pub data: Vec<u8>,
}

impl Engine {
    /// Turns change tracking on or off (off: nothing is recorded, and what was is dropped).
    pub fn track_changes(&mut self, on: bool) {
        self.changes = on.then(Changes::default);
    }

    /// What changed since the last call (or since tracking was turned on), and a fresh start.
    pub fn take_changes(&mut self) -> Changes {
        match &mut self.changes {
            Some(c) => std::mem::take(c),
            None => Changes::default(),
        }
    }

    /// Notes that session `id`'s own record changed (and, with `whole`, every file of it).
    pub(crate) fn note_session(&mut self, id: SessionId, whole: bool) {
        if let (Some(c), Some(s)) = (self.changes.as_mut(), self.sessions.get(&id)) {
            let entry = c.sessions.entry(s.seq).or_insert((id, false));
            entry.1 |= whole;
        }
    }

    /// Notes that the file under `token` in session `id` was added, changed or removed.
    pub(crate) fn note_file(&mut self, id: SessionId, token: u64) {
        if let (Some(c), Some(s)) = (self.changes.as_mut(), self.sessions.get(&id)) {
            c.files.insert((s.seq, id, token));
        }
    }

    /// Notes that an FLB changed.
    pub(crate) fn note_flbs(&mut self) {
        if let Some(c) = self.changes.as_mut() {
            c.flbs = true;
        }
    }

    /// Notes a change only a whole image describes.
    pub(crate) fn note_everything(&mut self) {
        if let Some(c) = self.changes.as_mut() {
            c.everything = true;
        }
    }

    /// Session `id`'s record, or `None` if it is gone.
    pub fn session_record(&self, id: SessionId) -> Option<SessionRecord> {
        self.sessions.get(&id).map(session_record)
    }

    /// The tokens of session `id` in preservation order (empty if it is gone).
    pub fn file_tokens(&self, id: SessionId) -> Vec<u64> {
        self.sessions
            .get(&id)
            .map(Session::tokens_fifo)
            .unwrap_or_default()
    }

    /// The record of the file under `token` in session `id`, or `None` if there is none.
    pub fn file_record(&self, id: SessionId, token: u64) -> Option<FileRecord<'_>> {
        let file = self.sessions.get(&id)?.files.get(&token)?;
        Some(FileRecord {
            compatible: self.registry.handlers[file.handler].compatible(),
            token,
            fd: file.data.fd.as_fd(),
            mode: file.mode,
            open: file.retrieved.as_ref().map(AsFd::as_fd),
            status: file.status.to_raw(),
            flags: if file.frozen { FILE_FROZEN } else { 0 }
                | if file.identity.is_some() {
                    FILE_BUSY
                } else {
                    0
                },
            record: &file.data.record,
        })
    }

    /// Every FLB record, as [`Engine::write_snapshot`] writes them.
    pub fn flb_records(&self) -> Vec<FlbRecord> {
        let mut out = Vec::new();
        for (f, state) in self.flbs.iter().enumerate() {
            let flb = &self.registry.flbs[f];
            if state.out_count > 0 {
                out.push(FlbRecord {
                    compatible: flb.compatible().to_owned(),
                    count: state.out_count,
                    flags: 0,
                    data: flb.serialize(),
                });
            }
            if state.in_count > 0 {
                let (flags, data) = if state.in_retrieved {
                    (FLB_INCOMING | FLB_RETRIEVED, flb.serialize_incoming())
                } else {
                    (FLB_INCOMING, state.in_data.clone().unwrap_or_default())
                };
                out.push(FlbRecord {
                    compatible: flb.compatible().to_owned(),
                    count: state.in_count,
                    flags,
                    data,
                });
            }
        }
        out
    }
}

/// The image's record of `session`.
pub(crate) fn session_record(session: &Session) -> SessionRecord {
    SessionRecord {
        seq: session.seq,
        owner: session.owner,
        flags: session_flags(session.direction),
        name: session.name.to_vec(),
    }
}

/// The image's `SESSION_*` bits for a direction.
pub(crate) fn session_flags(direction: Direction) -> u32 {
    match direction {
        Direction::Outgoing => 0,
        Direction::Incoming {
            retrieved,
            finished,
        } => {
            SESSION_INCOMING
                | if retrieved { SESSION_RETRIEVED } else { 0 }
                | if finished { SESSION_FINISHED } else { 0 }
        }
    }
}
