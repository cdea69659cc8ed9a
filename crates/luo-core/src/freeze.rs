//! Freezing: handoff of one session, and freezing every outgoing session into a handover image
//! for a reboot, both with the kernel's rollback.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use luo_abi::image::{
    FILE_FROZEN, FLB_INCOMING, FileSpec, ImageWriter, NO_FD, SESSION_INCOMING, SessionSpec,
};

use crate::engine::{Engine, Namespace};
use crate::error::Error;
use crate::registry::Registry;
use crate::session::{Direction, File, SessionId};

/// The writer version stored in images.
pub const WRITER_VERSION: &str = concat!("luod ", env!("CARGO_PKG_VERSION"));

/// Counts `file`'s memory again from its record (which `freeze` or `unfreeze` may have
/// rewritten), in the file and in its owner's usage.
fn recount(
    registry: &Registry,
    file: &mut File,
    namespaces: &mut HashMap<u32, Namespace>,
    owner: u32,
) {
    let now = registry.handlers[file.handler].record_bytes(&file.data.record);
    if now != file.bytes {
        if let Some(ns) = namespaces.get_mut(&owner) {
            ns.usage.bytes = ns
                .usage
                .bytes
                .saturating_sub(file.bytes)
                .saturating_add(now);
        }
        file.bytes = now;
    }
}

impl Engine {
    /// Freezes the files of session `id` in preservation order. On failure at file k, files
    /// 0..k are unfrozen (the failed one is not) and the error is returned.
    fn freeze_session(&mut self, id: SessionId) -> Result<(), Error> {
        let registry = Arc::clone(&self.registry);
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(Error::StaleSession);
        };
        let tokens = session.tokens_fifo();
        for (k, token) in tokens.iter().enumerate() {
            let Some(file) = session.files.get_mut(token) else {
                continue;
            };
            let handler = &registry.handlers[file.handler];
            let outcome = handler.freeze(&mut file.data);
            recount(&registry, file, &mut self.namespaces, session.owner);
            if let Err(e) = outcome {
                for done in &tokens[..k] {
                    if let Some(file) = session.files.get_mut(done) {
                        registry.handlers[file.handler].unfreeze(&mut file.data);
                        file.frozen = false;
                        recount(&registry, file, &mut self.namespaces, session.owner);
                    }
                }
                return Err(Error::Handler {
                    compatible: handler.compatible().to_owned(),
                    step: "freeze",
                    source: e,
                });
            }
            file.frozen = true;
        }
        Ok(())
    }

    /// Unfreezes every frozen file of session `id`, in preservation order.
    fn unfreeze_session(&mut self, id: SessionId) {
        let registry = Arc::clone(&self.registry);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        for token in session.tokens_fifo() {
            if let Some(file) = session.files.get_mut(&token)
                && file.frozen
            {
                registry.handlers[file.handler].unfreeze(&mut file.data);
                file.frozen = false;
                recount(&registry, file, &mut self.namespaces, session.owner);
            }
        }
    }

    /// Outgoing sessions in creation order.
    fn outgoing_in_order(&self) -> Vec<SessionId> {
        let mut ids: Vec<(u64, SessionId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_outgoing())
            .map(|(id, s)| (s.seq, *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Handoff (luod's workload update): freeze the outgoing session `id` and move it to the
    /// incoming set of its namespace, where a successor retrieves it by name.
    ///
    /// `EINVAL` on an incoming session; `EEXIST` if an incoming session of the namespace has
    /// the name. If a file fails to freeze, the files already frozen are unfrozen and the
    /// session stays outgoing, unchanged.
    pub fn handoff(&mut self, id: SessionId) -> Result<(), Error> {
        if self.frozen {
            return Err(Error::Frozen);
        }
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        if !session.is_outgoing() {
            return Err(Error::NotOutgoing);
        }
        let owner = session.owner;
        let name = session.name.clone();
        if self
            .namespaces
            .get(&owner)
            .is_some_and(|ns| ns.incoming.contains_key(&name))
        {
            return Err(Error::NameTaken);
        }
        self.freeze_session(id)?;
        let handlers: Vec<usize> = self
            .sessions
            .get(&id)
            .map(|s| {
                s.tokens_fifo()
                    .iter()
                    .filter_map(|t| s.files.get(t))
                    .map(|f| f.handler)
                    .collect()
            })
            .unwrap_or_default();
        for h in handlers {
            self.flb_hand_over(h);
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.direction = Direction::Incoming {
                retrieved: false,
                finished: false,
            };
        }
        self.note_session(id, true);
        let ns = self.namespaces.entry(owner).or_default();
        ns.outgoing.remove(&name);
        ns.incoming.insert(name, id);
        Ok(())
    }

    /// Reboot: freeze every outgoing session (sessions in creation order, files in
    /// preservation order) and write the handover image the next generation starts from.
    ///
    /// In the image, the outgoing sessions are incoming sessions of generation + 1; incoming
    /// sessions of this generation are left behind. If any `freeze` fails, every file already
    /// frozen is unfrozen (the failing session first, then earlier sessions in reverse creation
    /// order) and the engine is as it was. On success the engine stays frozen: every operation
    /// fails with `EBUSY` until [`thaw`](Self::thaw), and the descriptors the image lists are
    /// [`image_fds`](Self::image_fds).
    pub fn freeze_all(&mut self) -> Result<Vec<u8>, Error> {
        self.freeze()?;
        let mut w = ImageWriter::new(self.generation + 1, WRITER_VERSION);
        let mut fds = Vec::new();
        let written = self
            .write_reboot(&mut w, &mut fds)
            .and_then(|()| w.finish().map_err(Error::Image));
        drop(fds);
        if written.is_err() {
            self.thaw();
        }
        written
    }

    /// The first half of [`freeze_all`](Self::freeze_all): freeze every outgoing session, with
    /// the kernel's rollback, and refuse further operations.
    pub fn freeze(&mut self) -> Result<(), Error> {
        if self.frozen {
            return Err(Error::Frozen);
        }
        let order = self.outgoing_in_order();
        for (i, &id) in order.iter().enumerate() {
            if let Err(e) = self.freeze_session(id) {
                for &earlier in order[..i].iter().rev() {
                    self.unfreeze_session(earlier);
                }
                return Err(e);
            }
        }
        self.frozen = true;
        self.note_everything();
        Ok(())
    }

    /// The second half of [`freeze_all`](Self::freeze_all): write the outgoing sessions, as
    /// incoming ones, and the outgoing FLBs into `w`, whose generation should be this one + 1.
    /// The descriptors the image lists are pushed to `fds` in fd-table order (the caller may
    /// add its own after them).
    pub fn write_reboot<'a>(
        &'a self,
        w: &mut ImageWriter,
        fds: &mut Vec<BorrowedFd<'a>>,
    ) -> Result<(), Error> {
        let order = self.outgoing_in_order();
        let mut specs = Vec::new();
        for (seq, id) in order.iter().enumerate() {
            let Some(session) = self.sessions.get(id) else {
                continue;
            };
            specs.clear();
            for token in session.tokens_fifo() {
                let Some(file) = session.files.get(&token) else {
                    continue;
                };
                let mode = file.mode;
                let fd_index = w.add_fd(file.data.fd.as_raw_fd(), mode);
                fds.push(file.data.fd.as_fd());
                specs.push(FileSpec {
                    compatible: self.registry.handlers[file.handler].compatible(),
                    token,
                    fd_index,
                    open_fd_index: NO_FD,
                    status: 0,
                    flags: FILE_FROZEN,
                    record: &file.data.record,
                });
            }
            let spec = SessionSpec {
                name: &session.name,
                owner: session.owner,
                flags: SESSION_INCOMING,
                seq: seq as u64,
            };
            w.add_session(&spec, specs.iter().copied())
                .map_err(Error::Image)?;
        }
        for (f, state) in self.flbs.iter().enumerate() {
            if state.out_count > 0 {
                let flb = &self.registry.flbs[f];
                w.add_flb(
                    flb.compatible(),
                    state.out_count,
                    FLB_INCOMING,
                    &flb.serialize(),
                )
                .map_err(Error::Image)?;
            }
        }
        Ok(())
    }

    /// Orchestrator upgrade: write the whole live state — outgoing and incoming sessions, every
    /// file with its retrieve status, both halves of every FLB — into `w` (same generation),
    /// pushing the descriptors to `fds` in fd-table order. A retrieved file carries two: the
    /// held one and the open file its client got. Nothing is frozen or changed.
    pub fn write_snapshot<'a>(
        &'a self,
        w: &mut ImageWriter,
        fds: &mut Vec<BorrowedFd<'a>>,
    ) -> Result<(), Error> {
        let mut ids: Vec<(u64, SessionId)> =
            self.sessions.iter().map(|(id, s)| (s.seq, *id)).collect();
        ids.sort_unstable();
        let mut specs = Vec::new();
        let mut add = |w: &mut ImageWriter, fd: BorrowedFd<'a>, mode: Option<u32>| {
            let mode = match mode {
                Some(m) => m,
                None => fd_mode_type(fd)?,
            };
            fds.push(fd);
            Ok::<u32, Error>(w.add_fd(fd.as_raw_fd(), mode))
        };
        for (_, id) in ids {
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            specs.clear();
            for token in session.tokens_fifo() {
                let Some(file) = self.file_record(id, token) else {
                    continue;
                };
                let fd_index = add(w, file.fd, Some(file.mode))?;
                let open_fd_index = match file.open {
                    Some(open) => add(w, open, None)?,
                    None => NO_FD,
                };
                specs.push(FileSpec {
                    compatible: file.compatible,
                    token,
                    fd_index,
                    open_fd_index,
                    status: file.status,
                    flags: file.flags,
                    record: file.record,
                });
            }
            let spec = SessionSpec {
                name: &session.name,
                owner: session.owner,
                flags: crate::changes::session_flags(session.direction),
                seq: session.seq,
            };
            w.add_session(&spec, specs.iter().copied())
                .map_err(Error::Image)?;
        }
        for flb in self.flb_records() {
            w.add_flb(&flb.compatible, flb.count, flb.flags, &flb.data)
                .map_err(Error::Image)?;
        }
        Ok(())
    }

    /// After a failed reboot (the successor could not start): unfreeze every outgoing session,
    /// newest first, and accept operations again.
    pub fn thaw(&mut self) {
        if !self.frozen {
            return;
        }
        for id in self.outgoing_in_order().into_iter().rev() {
            self.unfreeze_session(id);
        }
        self.frozen = false;
        self.note_everything();
    }

    /// The descriptors a reboot image lists, in fd-table order: the held descriptor of every
    /// file of every outgoing session (sessions in creation order, files in preservation
    /// order). These are the descriptors that must cross the exec.
    pub fn image_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::new();
        for id in self.outgoing_in_order() {
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            for token in session.tokens_fifo() {
                if let Some(file) = session.files.get(&token) {
                    fds.push(file.data.fd.as_fd());
                }
            }
        }
        fds
    }

    /// Consumes a frozen engine and gives up the descriptors of its reboot image, in fd-table
    /// order, to hand to [`Engine::restore`] in the same process. Nothing is unpreserved:
    /// ownership of the files moves to the image.
    pub fn into_image_fds(mut self) -> Vec<OwnedFd> {
        let mut fds = Vec::new();
        for id in self.outgoing_in_order() {
            let Some(mut session) = self.sessions.remove(&id) else {
                continue;
            };
            for token in session.tokens_fifo() {
                if let Some(file) = session.files.remove(&token) {
                    fds.push(file.data.fd);
                }
            }
        }
        fds
    }
}

/// The file-type bits of `st_mode`: the image's definition.
pub(crate) use luo_abi::image::S_IFMT;

/// The `S_IFMT` bits of `fd`'s mode, as the image's fd table records them.
pub(crate) fn fd_mode_type(fd: BorrowedFd<'_>) -> Result<u32, Error> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::Handler {
        compatible: "engine".into(),
        step: "stat a held descriptor",
        source: crate::handler::HandlerError::from_io("fstat", e),
    })?;
    Ok(st.st_mode & S_IFMT)
}
