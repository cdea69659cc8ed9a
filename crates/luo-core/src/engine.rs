//! The engine: sessions by name, files by token, the double-preserve set, FLB refcounts, and
//! every operation with the kernel's ordering and rollback rules.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use luo_abi::Errno;
use luo_abi::uapi::SESSION_NAME_MAX;

use crate::error::Error;
use crate::handler::{FileData, HandlerError, Identity, RetrieveStatus};
use crate::registry::Registry;
use crate::session::{Direction, File, Session, SessionId, SessionInfo};

/// The sessions of one uid.
#[derive(Debug, Default)]
pub(crate) struct Namespace {
    pub outgoing: HashMap<Box<[u8]>, SessionId>,
    pub incoming: HashMap<Box<[u8]>, SessionId>,
    pub usage: Usage,
    /// Descriptors the engine holds for this uid's files (see [`Engine::fds_held_by`]).
    pub fds: u64,
}

/// What one uid holds: the quantities [`Limits`] bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sessions, outgoing and incoming.
    pub sessions: u64,
    /// Preserved files not yet finished.
    pub files: u64,
    /// Memory those files keep alive.
    pub bytes: u64,
}

/// Per-uid quotas; `None` is unlimited. Exceeding one is `ENOSPC` with [`Error::Quota`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most sessions a uid may hold.
    pub sessions: Option<u64>,
    /// Most preserved files a uid may hold.
    pub files: Option<u64>,
    /// Most bytes of preserved memory a uid may hold.
    pub bytes: Option<u64>,
}

/// The two halves of one FLB's state.
#[derive(Debug, Default)]
pub(crate) struct FlbState {
    /// Outgoing files of the linked handlers.
    pub out_count: u64,
    /// Incoming files of the linked handlers not yet finished.
    pub in_count: u64,
    /// Data to retrieve the incoming half from, until it is retrieved.
    pub in_data: Option<Vec<u8>>,
    /// The incoming half is live in this process.
    pub in_retrieved: bool,
}

/// The orchestrator engine. See the [crate documentation](crate) for an overview.
#[derive(Debug)]
pub struct Engine {
    pub(crate) registry: Arc<Registry>,
    pub(crate) generation: u64,
    pub(crate) sessions: HashMap<SessionId, Session>,
    pub(crate) namespaces: HashMap<u32, Namespace>,
    pub(crate) identities: HashSet<Identity>,
    pub(crate) flbs: Vec<FlbState>,
    pub(crate) next_id: u64,
    pub(crate) next_seq: u64,
    pub(crate) frozen: bool,
    pub(crate) limits: Limits,
    /// Descriptors the engine holds (held files and retrieved open files).
    pub(crate) fds_held: u64,
    pub(crate) excluded: Excluded,
    /// What changed since [`Engine::take_changes`], while tracking is on.
    pub(crate) changes: Option<crate::changes::Changes>,
    /// Descriptors of files that left the engine, kept open until [`Engine::take_doomed`]
    /// while [`Engine::defer_closes`] is on.
    pub(crate) doomed: Option<Vec<OwnedFd>>,
}

/// One preserved file, as [`Engine::file_view`] shows it.
#[derive(Debug)]
pub struct FileView<'a> {
    /// The compatible string of its handler.
    pub compatible: &'a str,
    /// The handler's record.
    pub record: &'a [u8],
    /// The descriptor the engine holds.
    pub held: BorrowedFd<'a>,
    /// How its retrieve went (incoming files).
    pub status: RetrieveStatus,
    /// Memory it keeps alive, as counted.
    pub bytes: u64,
}

/// The file a [`Engine::replace_fd`] replaces, as the checks of the new one see it.
#[derive(Clone, Copy)]
struct Replacing {
    identity: Option<Identity>,
    bytes: u64,
}

/// A predicate over descriptors.
type FdPredicate = Box<dyn Fn(BorrowedFd<'_>, &rustix::fs::Stat) -> bool + Send + Sync>;

/// Descriptors no handler may take, whatever the handlers say (see [`Engine::set_excluded`]).
#[derive(Default)]
pub(crate) struct Excluded(Option<FdPredicate>);

impl std::fmt::Debug for Excluded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Excluded(set)"
        } else {
            "Excluded(none)"
        })
    }
}

fn handler_err(compatible: &str, step: &'static str, source: HandlerError) -> Error {
    Error::Handler {
        compatible: compatible.to_owned(),
        step,
        source,
    }
}

fn flb_err(compatible: &str, step: &'static str, source: HandlerError) -> Error {
    Error::Flb {
        compatible: compatible.to_owned(),
        step,
        source,
    }
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= SESSION_NAME_MAX && !name.contains(&0)
}

impl Engine {
    /// A fresh engine (generation 0, no sessions) over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        let flbs = registry.flbs.iter().map(|_| FlbState::default()).collect();
        Engine {
            registry,
            generation: 0,
            sessions: HashMap::new(),
            namespaces: HashMap::new(),
            identities: HashSet::new(),
            flbs,
            next_id: 1,
            next_seq: 0,
            frozen: false,
            limits: Limits::default(),
            fds_held: 0,
            excluded: Excluded::default(),
            changes: None,
            doomed: None,
        }
    }

    /// Descriptors for which `exclude` (given the descriptor and its `fstat`) says yes are
    /// refused by PRESERVE_FD with `ENOENT`, as if no handler took them. The daemon uses it
    /// for its own connections: the kernel does not preserve session descriptors either.
    pub fn set_excluded(
        &mut self,
        exclude: impl Fn(BorrowedFd<'_>, &rustix::fs::Stat) -> bool + Send + Sync + 'static,
    ) {
        self.excluded = Excluded(Some(Box::new(exclude)));
    }

    /// Sets the per-uid quotas (they apply to every uid, root included).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The per-uid quotas.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What `owner` holds now.
    pub fn usage(&self, owner: u32) -> Usage {
        self.namespaces
            .get(&owner)
            .map(|ns| ns.usage)
            .unwrap_or_default()
    }

    /// What every uid holds together.
    pub fn total_usage(&self) -> Usage {
        self.namespaces
            .values()
            .fold(Usage::default(), |a, ns| Usage {
                sessions: a.sessions + ns.usage.sessions,
                files: a.files + ns.usage.files,
                bytes: a.bytes + ns.usage.bytes,
            })
    }

    /// Descriptors the engine holds: one per preserved file, plus one per retrieved open file.
    pub fn fds_held(&self) -> u64 {
        self.fds_held
    }

    /// The part of [`fds_held`](Self::fds_held) that holds `owner`'s files: what the daemon
    /// charges to the uid's descriptor budget.
    pub fn fds_held_by(&self, owner: u32) -> u64 {
        self.namespaces.get(&owner).map_or(0, |ns| ns.fds)
    }

    /// The outgoing session `name` of `owner`, if any.
    pub fn outgoing_session(&self, owner: u32, name: &[u8]) -> Option<SessionId> {
        self.namespaces.get(&owner)?.outgoing.get(name).copied()
    }

    /// The registry the engine was built with.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// How many reboots (emulated or restored) led to this engine.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True between a successful [`freeze_all`](Self::freeze_all) and [`thaw`](Self::thaw).
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn check_thawed(&self) -> Result<(), Error> {
        if self.frozen {
            Err(Error::Frozen)
        } else {
            Ok(())
        }
    }

    pub(crate) fn alloc_id(&mut self) -> SessionId {
        let id = SessionId(self.next_id);
        self.next_id += 1;
        id
    }

    /// CREATE_SESSION: a new outgoing session `name` in `owner`'s namespace.
    ///
    /// `EINVAL` unless the name is 1..=63 bytes without NUL; `EEXIST` if an outgoing session of
    /// the namespace has it (an incoming one may).
    pub fn create_session(&mut self, owner: u32, name: &[u8]) -> Result<SessionId, Error> {
        self.check_thawed()?;
        if !valid_name(name) {
            return Err(Error::InvalidName);
        }
        let ns = self.namespaces.entry(owner).or_default();
        if ns.outgoing.contains_key(name) {
            return Err(Error::NameTaken);
        }
        if self
            .limits
            .sessions
            .is_some_and(|max| ns.usage.sessions >= max)
        {
            return Err(Error::Quota("sessions"));
        }
        let id = SessionId(self.next_id);
        self.next_id += 1;
        ns.outgoing.insert(name.into(), id);
        ns.usage.sessions += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sessions.insert(
            id,
            Session::new(owner, name.into(), Direction::Outgoing, seq),
        );
        self.note_session(id, false);
        Ok(id)
    }

    /// RETRIEVE_SESSION: take the incoming session `name` of `owner`'s namespace.
    ///
    /// `ENOENT` if there is none; `EINVAL` if it was retrieved already.
    pub fn retrieve_session(&mut self, owner: u32, name: &[u8]) -> Result<SessionId, Error> {
        self.check_thawed()?;
        let id = *self
            .namespaces
            .get(&owner)
            .and_then(|ns| ns.incoming.get(name))
            .ok_or(Error::NoSession)?;
        let session = self.sessions.get_mut(&id).ok_or(Error::NoSession)?;
        match &mut session.direction {
            Direction::Incoming {
                retrieved: true, ..
            } => Err(Error::AlreadyRetrieved),
            Direction::Incoming { retrieved, .. } => {
                *retrieved = true;
                self.note_session(id, false);
                Ok(id)
            }
            Direction::Outgoing => Err(Error::NoSession),
        }
    }

    /// PRESERVE_FD: preserve `fd` under `token` in the outgoing session `id`.
    ///
    /// The checks come in the kernel's order: `EINVAL` on an incoming session, `EEXIST` for a
    /// token already in the session, `EBADF` without a descriptor, `ENOENT` when no handler
    /// accepts it, `EBUSY` when the same object is preserved (or retrieved and unfinished)
    /// anywhere, then the FLBs' and the handler's own errors. A failure undoes every step.
    pub fn preserve_fd(
        &mut self,
        id: SessionId,
        fd: Option<BorrowedFd<'_>>,
        token: u64,
    ) -> Result<(), Error> {
        self.check_thawed()?;
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        if !session.is_outgoing() {
            return Err(Error::NotOutgoing);
        }
        if session.files.contains_key(&token) {
            return Err(Error::TokenTaken);
        }
        let owner = session.owner;
        let usage = self.usage(owner);
        let full = self.limits.files.is_some_and(|max| usage.files >= max);
        let file = self.take(
            owner,
            fd,
            token,
            None,
            full.then_some(Error::Quota("files")),
        )?;
        if let Some(identity) = file.identity {
            self.identities.insert(identity);
        }
        if let Some(ns) = self.namespaces.get_mut(&owner) {
            ns.usage.files += 1;
            ns.usage.bytes += file.bytes;
            ns.fds += 1;
        }
        self.fds_held += 1;
        if let Some(session) = self.sessions.get_mut(&id) {
            session.insert_file(file);
        }
        self.note_file(id, token);
        Ok(())
    }

    /// Replaces the file preserved under `token` in the outgoing session `id` with `fd`, in one
    /// step: the new descriptor goes through every check of PRESERVE_FD (a handler chosen
    /// afresh, the double-preserve check, the FLBs, the byte quota counted without the old
    /// file), then takes the old file's place in the session and in the preservation order, and
    /// the old file is unpreserved. On any failure the old file stays, untouched. This is how
    /// memory moves to new backing (a live VMM re-backing its RAM, `migrate`).
    ///
    /// `EINVAL` on an incoming session, `ENOENT` for an unknown token, then PRESERVE_FD's
    /// errors for the new descriptor. Returns the old file's held descriptor, for the caller to
    /// close where it likes: closing the last reference to a large memory file frees it, which
    /// takes time.
    pub fn replace_fd(
        &mut self,
        id: SessionId,
        token: u64,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<OwnedFd, Error> {
        self.swap_file(id, token, fd, false)
    }

    /// [`replace_fd`](Self::replace_fd) for luod's own use (`migrate`): also takes a file of an
    /// incoming session that nobody retrieved yet, if neither its handler nor the new one has
    /// FLBs (an incoming FLB's counts are not the engine's to move). `EBUSY` for a file
    /// retrieved (someone may have it mapped) or with FLBs.
    pub fn reback_fd(
        &mut self,
        id: SessionId,
        token: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<OwnedFd, Error> {
        self.swap_file(id, token, Some(fd), true)
    }

    fn swap_file(
        &mut self,
        id: SessionId,
        token: u64,
        fd: Option<BorrowedFd<'_>>,
        incoming_too: bool,
    ) -> Result<OwnedFd, Error> {
        self.check_thawed()?;
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        let outgoing = session.is_outgoing();
        if !outgoing && !incoming_too {
            return Err(Error::NotOutgoing);
        }
        let old = session.files.get(&token).ok_or(Error::NoToken)?;
        if !outgoing
            && (old.status != RetrieveStatus::NotRetrieved
                || !self.registry.handler_flbs[old.handler].is_empty())
        {
            return Err(Error::Busy("the file was retrieved or has FLBs"));
        }
        let owner = session.owner;
        let replacing = Replacing {
            identity: old.identity,
            bytes: old.bytes,
        };
        let new = self.take(owner, fd, token, Some(replacing), None)?;
        let registry = Arc::clone(&self.registry);
        if !outgoing && !registry.handler_flbs[new.handler].is_empty() {
            let mut new = new;
            registry.handlers[new.handler].unpreserve(&mut new.data);
            self.flb_unpreserve(new.handler);
            return Err(Error::Busy("the new file's handler has FLBs"));
        }
        let new_identity = new.identity;
        let new_bytes = new.bytes;
        let Some(mut old) = self
            .sessions
            .get_mut(&id)
            .and_then(|s| s.files.insert(token, new))
        else {
            return Err(Error::NoToken);
        };
        if outgoing {
            registry.handlers[old.handler].unpreserve(&mut old.data);
            self.flb_unpreserve(old.handler);
        } else {
            registry.handlers[old.handler].finish(&mut old.data, RetrieveStatus::NotRetrieved);
        }
        if let Some(identity) = old.identity {
            self.identities.remove(&identity);
        }
        if let Some(identity) = new_identity {
            self.identities.insert(identity);
        }
        if let Some(ns) = self.namespaces.get_mut(&owner) {
            ns.usage.bytes = ns.usage.bytes.saturating_sub(old.bytes) + new_bytes;
        }
        self.note_file(id, token);
        Ok(old.data.fd)
    }

    /// PRESERVE_FD from the descriptor on, for a file of `owner` under `token`: picks the
    /// handler, checks the identity, preserves the FLBs and the file, checks the byte quota
    /// and what the file carries. Returns the file, not yet in any session or count; on
    /// failure every step is undone. With `replacing`, that file's identity is no conflict
    /// and its bytes do not count against the quota. `refuse`, if given, is returned once the
    /// descriptor passed the handler and identity checks (the kernel's order puts the files
    /// quota there), with nothing preserved.
    fn take(
        &mut self,
        owner: u32,
        fd: Option<BorrowedFd<'_>>,
        token: u64,
        replacing: Option<Replacing>,
        refuse: Option<Error>,
    ) -> Result<File, Error> {
        let fd = fd.ok_or(Error::BadFd)?;
        let st = rustix::fs::fstat(fd).map_err(|_| Error::BadFd)?;
        if self
            .excluded
            .0
            .as_ref()
            .is_some_and(|exclude| exclude(fd, &st))
        {
            return Err(Error::NoHandler);
        }
        let registry = Arc::clone(&self.registry);
        let h = registry
            .handlers
            .iter()
            .position(|h| h.can_preserve_with_stat(fd, &st))
            .ok_or(Error::NoHandler)?;
        let handler = &registry.handlers[h];
        let mode = st.st_mode & crate::freeze::S_IFMT;
        let identity = if handler.inode_identity() {
            Identity {
                dev: st.st_dev,
                ino: st.st_ino,
            }
        } else {
            handler
                .identity(fd)
                .map_err(|e| handler_err(handler.compatible(), "identify", e))?
        };
        let ours = replacing.and_then(|r| r.identity);
        if self.identities.contains(&identity) && ours != Some(identity) {
            return Err(Error::AlreadyPreserved);
        }
        if let Some(err) = refuse {
            return Err(err);
        }
        let usage_bytes = self
            .usage(owner)
            .bytes
            .saturating_sub(replacing.map_or(0, |r| r.bytes));
        self.flb_preserve(h)?;
        let mut preserved = match handler.preserve_with_stat(fd, &st) {
            Ok(p) => p,
            Err(e) => {
                self.flb_unpreserve(h);
                return Err(handler_err(handler.compatible(), "preserve", e));
            }
        };
        let refused = if self
            .limits
            .bytes
            .is_some_and(|max| usage_bytes.saturating_add(preserved.bytes) > max)
        {
            Some(Error::Quota("bytes"))
        } else if let Some(exclude) = self.excluded.0.as_ref() {
            let mut visit =
                |f: BorrowedFd<'_>| rustix::fs::fstat(f).is_ok_and(|st| exclude(f, &st));
            match handler.carries(preserved.fd.as_fd(), &mut visit) {
                Ok(false) => None,
                Ok(true) => Some(Error::CarriesExcluded),
                Err(e) => Some(handler_err(handler.compatible(), "inspect", e)),
            }
        } else {
            None
        };
        if let Some(err) = refused {
            let mut data = FileData {
                token,
                fd: preserved.fd,
                record: std::mem::take(&mut preserved.record),
            };
            handler.unpreserve(&mut data);
            self.flb_unpreserve(h);
            return Err(err);
        }
        Ok(File {
            handler: h,
            data: FileData {
                token,
                fd: preserved.fd,
                record: preserved.record,
            },
            bytes: preserved.bytes,
            mode,
            identity: Some(identity),
            frozen: false,
            status: RetrieveStatus::NotRetrieved,
            retrieved: None,
        })
    }

    /// RETRIEVE_FD: the open file preserved under `token` in the incoming session `id`.
    ///
    /// `EINVAL` on an outgoing session, `ENOENT` for an unknown token (or after FINISH). The
    /// first retrieve asks the handler; later ones return another descriptor of the same open
    /// file; a failed retrieve fails again with the same errno, without asking the handler.
    pub fn retrieve_fd(&mut self, id: SessionId, token: u64) -> Result<OwnedFd, Error> {
        self.check_thawed()?;
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        if session.is_outgoing() {
            return Err(Error::NotIncoming);
        }
        let file = session.files.get(&token).ok_or(Error::NoToken)?;
        match file.status {
            RetrieveStatus::Failed(e) => return Err(Error::RetrieveFailed(e)),
            RetrieveStatus::Retrieved => {
                let open = file.retrieved.as_ref().ok_or(Error::NoToken)?;
                return dup(open).map_err(|e| handler_err("engine", "duplicate", e));
            }
            RetrieveStatus::NotRetrieved => {}
        }
        let h = file.handler;
        let registry = Arc::clone(&self.registry);
        let handler = &registry.handlers[h];
        let outcome = self.flb_access(h).and_then(|()| {
            let file = self.file(id, token)?;
            let open = handler
                .retrieve(&file.data)
                .map_err(|e| handler_err(handler.compatible(), "retrieve", e))?;
            let identity = handler
                .identity(open.as_fd())
                .map_err(|e| handler_err(handler.compatible(), "identify", e))?;
            if file.identity.is_none() && self.identities.contains(&identity) {
                return Err(Error::AlreadyPreserved);
            }
            let copy = dup(&open).map_err(|e| handler_err("engine", "duplicate", e))?;
            Ok((open, copy, identity))
        });
        let owner = self.sessions.get(&id).map(|s| s.owner);
        self.note_file(id, token);
        let file = self.file_mut(id, token)?;
        match outcome {
            Ok((open, copy, identity)) => {
                file.status = RetrieveStatus::Retrieved;
                file.retrieved = Some(open);
                let newly_held = file.identity.is_none();
                file.identity = Some(file.identity.unwrap_or(identity));
                if newly_held {
                    self.identities.insert(identity);
                }
                self.fds_held += 1;
                if let Some(ns) = owner.and_then(|o| self.namespaces.get_mut(&o)) {
                    ns.fds += 1;
                }
                Ok(copy)
            }
            Err(e) => {
                file.status = RetrieveStatus::Failed(e.errno());
                Err(e)
            }
        }
    }

    fn file(&self, id: SessionId, token: u64) -> Result<&File, Error> {
        self.sessions
            .get(&id)
            .and_then(|s| s.files.get(&token))
            .ok_or(Error::NoToken)
    }

    fn file_mut(&mut self, id: SessionId, token: u64) -> Result<&mut File, Error> {
        self.sessions
            .get_mut(&id)
            .and_then(|s| s.files.get_mut(&token))
            .ok_or(Error::NoToken)
    }

    /// FINISH: end the incoming session `id`.
    ///
    /// Every file's `can_finish` is asked first, in preservation order; any veto is `EBUSY` and
    /// nothing changes. Then every file is finished, newest first, whether it was retrieved or
    /// not. The session stays, empty; FINISH may be repeated.
    pub fn finish(&mut self, id: SessionId) -> Result<(), Error> {
        self.check_thawed()?;
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        if session.is_outgoing() {
            return Err(Error::NotIncoming);
        }
        self.note_session(id, true);
        self.finish_files(id)?;
        if let Some(Session {
            direction: Direction::Incoming { finished, .. },
            ..
        }) = self.sessions.get_mut(&id)
        {
            *finished = true;
        }
        Ok(())
    }

    fn finish_files(&mut self, id: SessionId) -> Result<(), Error> {
        let registry = Arc::clone(&self.registry);
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        let tokens = session.tokens_fifo();
        for token in &tokens {
            if let Some(file) = session.files.get(token) {
                let handler = &registry.handlers[file.handler];
                if !handler.can_finish(&file.data, file.status) {
                    return Err(Error::FinishVetoed(handler.compatible().to_owned()));
                }
            }
        }
        for token in tokens.iter().rev() {
            let Some(session) = self.sessions.get_mut(&id) else {
                break;
            };
            let Some(mut file) = session.files.remove(token) else {
                continue;
            };
            let owner = session.owner;
            let handler = &registry.handlers[file.handler];
            handler.finish(&mut file.data, file.status);
            self.flb_file_finish(file.handler);
            self.release_file(owner, &file);
            self.bury(file);
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.order.clear();
        }
        Ok(())
    }

    /// Closing the last descriptor of session `id`.
    ///
    /// An outgoing session unpreserves its files, newest first, and is gone. An incoming
    /// session is finished implicitly; if a handler vetoes, the session stays, retrieved and
    /// unreachable (as in the kernel), and the veto is returned for the log.
    pub fn close_session(&mut self, id: SessionId) -> Result<(), Error> {
        self.check_thawed()?;
        self.note_session(id, true);
        let session = self.sessions.get(&id).ok_or(Error::StaleSession)?;
        if session.is_outgoing() {
            let registry = Arc::clone(&self.registry);
            let tokens = session.tokens_fifo();
            for token in tokens.iter().rev() {
                let Some(session) = self.sessions.get_mut(&id) else {
                    break;
                };
                let Some(mut file) = session.files.remove(token) else {
                    continue;
                };
                let owner = session.owner;
                registry.handlers[file.handler].unpreserve(&mut file.data);
                self.flb_unpreserve(file.handler);
                self.release_file(owner, &file);
                self.bury(file);
            }
        } else {
            self.finish_files(id)?;
        }
        self.remove_session(id);
        Ok(())
    }

    /// Closes the descriptors of a file that left the engine, or keeps them for
    /// [`Engine::take_doomed`].
    fn bury(&mut self, file: File) {
        if let Some(doomed) = self.doomed.as_mut() {
            doomed.push(file.data.fd);
            doomed.extend(file.retrieved);
        }
    }

    /// Keeps (or stops keeping) the descriptors of files that leave the engine open until
    /// [`take_doomed`](Self::take_doomed): a daemon that journals its changes closes them only
    /// once the journal says they are gone, so that a number the journal still names is never
    /// closed (or reused) first.
    pub fn defer_closes(&mut self, on: bool) {
        self.doomed = on.then(Vec::new);
    }

    /// The descriptors kept by [`defer_closes`](Self::defer_closes) since the last call.
    pub fn take_doomed(&mut self) -> Vec<OwnedFd> {
        self.doomed.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Forgets a file that left the engine: its identity, its share of the owner's usage and
    /// the descriptors it held.
    fn release_file(&mut self, owner: u32, file: &File) {
        if let Some(identity) = file.identity {
            self.identities.remove(&identity);
        }
        let held = 1 + u64::from(file.retrieved.is_some());
        if let Some(ns) = self.namespaces.get_mut(&owner) {
            ns.usage.files = ns.usage.files.saturating_sub(1);
            ns.usage.bytes = ns.usage.bytes.saturating_sub(file.bytes);
            ns.fds = ns.fds.saturating_sub(held);
        }
        self.fds_held = self.fds_held.saturating_sub(held);
    }

    pub(crate) fn remove_session(&mut self, id: SessionId) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        if let Some(ns) = self.namespaces.get_mut(&session.owner) {
            ns.usage.sessions = ns.usage.sessions.saturating_sub(1);
            let map = if session.is_outgoing() {
                &mut ns.outgoing
            } else {
                &mut ns.incoming
            };
            if map.get(&session.name) == Some(&id) {
                map.remove(&session.name);
            }
            if ns.outgoing.is_empty() && ns.incoming.is_empty() {
                self.namespaces.remove(&session.owner);
            }
        }
        Some(session)
    }

    /// GET_NAME: the name of session `id`.
    pub fn session_name(&self, id: SessionId) -> Result<&[u8], Error> {
        self.sessions
            .get(&id)
            .map(|s| &*s.name)
            .ok_or(Error::StaleSession)
    }

    /// One preserved file as it is now: its handler, record, held descriptor and retrieve
    /// status, for a daemon that works on the memory itself (`migrate`).
    pub fn file_view(&self, id: SessionId, token: u64) -> Option<FileView<'_>> {
        let file = self.sessions.get(&id)?.files.get(&token)?;
        Some(FileView {
            compatible: self.registry.handlers[file.handler].compatible(),
            record: &file.data.record,
            held: file.data.fd.as_fd(),
            status: file.status,
            bytes: file.bytes,
        })
    }

    /// What one session looks like now.
    pub fn session_info(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| SessionInfo {
            id,
            owner: s.owner,
            name: s.name.to_vec(),
            direction: s.direction,
            seq: s.seq,
            files: s.files.len(),
            bytes: s.bytes(),
        })
    }

    /// The direction of session `id` (O(1)), `None` for a stale handle.
    pub fn direction(&self, id: SessionId) -> Option<Direction> {
        self.sessions.get(&id).map(|s| s.direction)
    }

    /// How many sessions are (outgoing, incoming), without building a list.
    pub fn session_counts(&self) -> (u64, u64) {
        let outgoing = self.sessions.values().filter(|s| s.is_outgoing()).count() as u64;
        (outgoing, self.sessions.len() as u64 - outgoing)
    }

    /// [`session_counts`](Self::session_counts) of `owner`'s sessions alone (O(1)).
    pub fn session_counts_of(&self, owner: u32) -> (u64, u64) {
        self.namespaces.get(&owner).map_or((0, 0), |ns| {
            (ns.outgoing.len() as u64, ns.incoming.len() as u64)
        })
    }

    /// The session `name` of `owner` going the given way, if any (O(1)).
    pub fn find_session(&self, owner: u32, incoming: bool, name: &[u8]) -> Option<SessionId> {
        let ns = self.namespaces.get(&owner)?;
        let map = if incoming { &ns.incoming } else { &ns.outgoing };
        map.get(name).copied()
    }

    /// Every session, in creation order.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut ids: Vec<(u64, SessionId)> =
            self.sessions.iter().map(|(id, s)| (s.seq, *id)).collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|(_, id)| self.session_info(id))
            .collect()
    }

    /// The tokens of session `id`, in preservation order.
    pub fn tokens(&self, id: SessionId) -> Result<Vec<u64>, Error> {
        self.sessions
            .get(&id)
            .map(Session::tokens_fifo)
            .ok_or(Error::StaleSession)
    }

    /// How many objects are preserved (or retrieved and not finished).
    pub fn preserved_objects(&self) -> usize {
        self.identities.len()
    }

    /// The (outgoing, incoming) dependent-file counts of the FLB `compatible`.
    pub fn flb_counts(&self, compatible: &str) -> Option<(u64, u64)> {
        let f = self.registry.flb_by_compatible(compatible)?;
        self.flbs.get(f).map(|s| (s.out_count, s.in_count))
    }

    /// First access to the incoming half of FLB `compatible`: retrieves it from the data that
    /// crossed the update if nobody did yet. `ENODATA` when it has no incoming half.
    pub fn flb_incoming(&mut self, compatible: &str) -> Result<(), Error> {
        let f = self
            .registry
            .flb_by_compatible(compatible)
            .ok_or_else(|| Error::UnknownCompatible(compatible.to_owned()))?;
        let state = &self.flbs[f];
        if state.in_count == 0 || (!state.in_retrieved && state.in_data.is_none()) {
            return Err(Error::Flb {
                compatible: compatible.to_owned(),
                step: "find incoming data",
                source: HandlerError::new(Errno::ENODATA, "no incoming data"),
            });
        }
        self.flb_retrieve(f)
    }

    // ---- FLB refcounting -------------------------------------------------------------------

    fn flb_preserve(&mut self, h: usize) -> Result<(), Error> {
        let registry = Arc::clone(&self.registry);
        let linked = &registry.handler_flbs[h];
        for (i, &f) in linked.iter().enumerate() {
            if self.flbs[f].out_count == 0
                && let Err(e) = registry.flbs[f].preserve()
            {
                for &g in linked[..i].iter().rev() {
                    self.flb_drop_out(g);
                }
                return Err(flb_err(registry.flbs[f].compatible(), "preserve", e));
            }
            self.flbs[f].out_count += 1;
            self.note_flbs();
        }
        Ok(())
    }

    fn flb_drop_out(&mut self, f: usize) {
        self.note_flbs();
        let state = &mut self.flbs[f];
        state.out_count = state.out_count.saturating_sub(1);
        if state.out_count == 0 {
            self.registry.flbs[f].unpreserve();
        }
    }

    fn flb_unpreserve(&mut self, h: usize) {
        let registry = Arc::clone(&self.registry);
        for &f in registry.handler_flbs[h].iter().rev() {
            self.flb_drop_out(f);
        }
    }

    fn flb_retrieve(&mut self, f: usize) -> Result<(), Error> {
        let state = &mut self.flbs[f];
        if state.in_retrieved {
            return Ok(());
        }
        let data = state.in_data.as_deref().unwrap_or_default();
        self.registry.flbs[f]
            .retrieve(data)
            .map_err(|e| flb_err(self.registry.flbs[f].compatible(), "retrieve", e))?;
        state.in_retrieved = true;
        state.in_data = None;
        self.note_flbs();
        Ok(())
    }

    /// First access to every incoming FLB linked to handler `h`.
    fn flb_access(&mut self, h: usize) -> Result<(), Error> {
        let registry = Arc::clone(&self.registry);
        for &f in &registry.handler_flbs[h] {
            if self.flbs[f].in_count > 0 {
                self.flb_retrieve(f)?;
            }
        }
        Ok(())
    }

    fn flb_file_finish(&mut self, h: usize) {
        let registry = Arc::clone(&self.registry);
        for &f in registry.handler_flbs[h].iter().rev() {
            if self.flbs[f].in_count == 0 {
                continue;
            }
            self.flbs[f].in_count -= 1;
            self.note_flbs();
            if self.flbs[f].in_count == 0 {
                // Retrieve first if nobody did, so finish always sees a live object; a failed
                // retrieve is logged by the FLB itself and finish still runs.
                let _ = self.flb_retrieve(f);
                registry.flbs[f].finish();
                let state = &mut self.flbs[f];
                state.in_retrieved = false;
                state.in_data = None;
            }
        }
    }

    /// Moves the FLB counts of handler `h`'s file from the outgoing to the incoming half, for a
    /// handoff inside this process.
    pub(crate) fn flb_hand_over(&mut self, h: usize) {
        let registry = Arc::clone(&self.registry);
        for &f in &registry.handler_flbs[h] {
            if self.flbs[f].in_count == 0 && !self.flbs[f].in_retrieved {
                self.flbs[f].in_data = Some(registry.flbs[f].serialize());
            }
            self.flbs[f].in_count += 1;
            self.note_flbs();
        }
        for &f in registry.handler_flbs[h].iter().rev() {
            self.flb_drop_out(f);
        }
    }
}

pub(crate) fn dup(fd: &OwnedFd) -> Result<OwnedFd, HandlerError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| HandlerError::from_io("dup", e))
}
