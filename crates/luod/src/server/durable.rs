//! Making changes durable: the journal each changing request appends to before its reply, and
//! the checkpoints that start it afresh (see [`crate::journal`] and [`crate::recover`]).

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;
use luo_core::{Changes, Engine};
use rustix::fs::MemfdFlags;
use tracing::{debug, warn};

use super::Server;
use crate::conn::Kind;
use crate::journal::{ConnRec, Delta, FileRec, Writer};

/// A journal longer than this is folded into a new checkpoint.
const CHECKPOINT_BYTES: u64 = 16 << 20;

/// The memfds a server's state survives it in.
#[derive(Debug)]
pub struct Durable {
    /// The last checkpoint image (replaced whole, by `dup2`, at each checkpoint).
    pub state: OwnedFd,
    /// What changed since.
    pub journal: Writer,
    /// Connection records waiting for the next batch.
    pub(crate) pending: Vec<Delta>,
}

/// A new, empty memfd for the daemon's state.
pub fn state_memfd(name: &str) -> anyhow::Result<OwnedFd> {
    rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)
        .with_context(|| format!("Cannot create the {name} memfd"))
}

impl Server {
    /// Starts journaling into `state` and `journal` (both emptied): a checkpoint of the state
    /// now, then a record of every change.
    pub fn make_durable(
        &mut self,
        state: OwnedFd,
        journal: OwnedFd,
        next_seq: u64,
    ) -> anyhow::Result<()> {
        self.engine.track_changes(true);
        self.engine.defer_closes(true);
        self.durable = Some(Durable {
            state,
            journal: Writer::new(journal, next_seq)?,
            pending: Vec::new(),
        });
        self.checkpoint()
    }

    /// Records connection `key` as it is now (opened, or its kind changed).
    pub(crate) fn note_conn(&mut self, key: u64) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let session = match conn.kind {
            Kind::Session(id) => self.engine.session_record(id).map_or(u64::MAX, |r| r.seq),
            _ => u64::MAX,
        };
        let rec = ConnRec {
            fd: conn.fd.as_raw_fd(),
            kind: conn.kind.code(),
            pid: conn.cred.pid,
            uid: conn.cred.uid,
            gid: conn.cred.gid,
            session,
        };
        if let Some(d) = self.durable.as_mut() {
            d.pending.push(Delta::ConnPut(rec));
        }
    }

    /// Closes `fd`, which left the state, once the journal says it did: until then its number
    /// must not be closed, or it could be reused for another file while the journal still
    /// names it. Without a journal it is closed at once.
    pub(crate) fn bury(&mut self, fd: OwnedFd) {
        if self.durable.is_some() {
            self.graveyard.push(fd);
        }
    }

    /// [`bury`](Self::bury) for a descriptor whose close may take long (the last reference to
    /// a large memory file): closed on a thread once journaled.
    pub(crate) fn bury_later(&mut self, fd: OwnedFd) {
        if self.durable.is_some() {
            self.graveyard_later.push(fd);
        } else {
            crate::migrate::release_later(fd);
        }
    }

    /// After a journal write: closes what it recorded as gone.
    fn close_buried(&mut self) {
        self.graveyard.extend(self.engine.take_doomed());
        if self.systemd.storing() {
            let numbers: Vec<i32> = self
                .graveyard
                .iter()
                .chain(self.graveyard_later.iter())
                .map(AsRawFd::as_raw_fd)
                .collect();
            crate::systemd::closing(&mut self.systemd, &numbers);
        }
        self.graveyard.clear();
        for fd in self.graveyard_later.drain(..) {
            crate::migrate::release_later(fd);
        }
    }

    /// Records that the connection on descriptor `fd` is closed.
    pub(crate) fn note_conn_closed(&mut self, fd: i32) {
        if let Some(d) = self.durable.as_mut() {
            d.pending.push(Delta::ConnDel { fd });
        }
    }

    /// Writes what changed since the last call (and `applied`, the record of the request that
    /// changed it) in one batch. On return the changes survive this process. A failure to write
    /// is fatal: a server that cannot journal must not answer as if it had.
    pub(crate) fn commit_changes(&mut self, applied: Option<Delta>) {
        if self.durable.is_none() {
            return;
        }
        let changes = self.engine.take_changes();
        if changes.everything {
            if let Err(e) = self.checkpoint() {
                self.journal_failed(&e);
            }
            return;
        }
        let deltas = deltas_of(&self.engine, &changes);
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let pending: Vec<Delta> = d.pending.drain(..).collect();
        // Whatever the records name is in systemd's store before they are written.
        crate::systemd::before_journal(&mut self.systemd, &deltas);
        crate::systemd::before_journal(&mut self.systemd, &pending);
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        for delta in deltas.iter().chain(pending.iter()) {
            d.journal.push(delta);
        }
        if let Some(a) = &applied {
            d.journal.push(a);
        }
        if d.journal.is_pending_empty() {
            self.close_buried();
            return;
        }
        let long = d.journal.len() > CHECKPOINT_BYTES;
        if let Err(e) = d.journal.commit() {
            self.journal_failed(&e);
            return;
        }
        self.close_buried();
        if long && let Err(e) = self.checkpoint() {
            self.journal_failed(&e);
        }
    }

    fn journal_failed(&mut self, e: &anyhow::Error) {
        // The state is in memory and correct; only its copy is behind. Dying here lets the
        // keeper rebuild from the last good checkpoint and journal, which answered requests
        // never got ahead of.
        warn!(error = %format!("{e:#}"), "cannot journal a change; this server stops");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }

    /// Writes a checkpoint: the whole state as an image, put in place of the last one in one
    /// step (`dup2` onto its number), then an empty journal that starts where it ends.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        let Some(d) = self.durable.as_ref() else {
            return Ok(());
        };
        let t0 = std::time::Instant::now();
        let from = d.journal.next_seq();
        let (image, fds) =
            crate::handover::daemon_image(self, self.upgrades, self.last_upgrade, from)?;
        let numbers: Vec<i32> = if self.systemd.storing() {
            fds.iter().map(AsRawFd::as_raw_fd).collect()
        } else {
            Vec::new()
        };
        drop(fds);
        let fresh = state_memfd("luod-checkpoint")?;
        let mut done = 0;
        while done < image.len() {
            done += rustix::io::pwrite(&fresh, &image[done..], done as u64)
                .context("Cannot write the checkpoint")?;
        }
        // In systemd's store before it replaces the last one (see `crate::systemd`).
        let keeper = self.keeper_channel.as_ref().map(AsRawFd::as_raw_fd);
        let old_slot = match self.durable.as_ref() {
            Some(d) => crate::systemd::checkpoint_written(
                &mut self.systemd,
                &fresh,
                d.journal.fd(),
                &numbers,
                keeper,
            ),
            None => None,
        };
        let Some(d) = self.durable.as_mut() else {
            return Ok(());
        };
        rustix::io::dup2(&fresh, &mut d.state).context("Cannot install the checkpoint")?;
        // dup2 clears close-on-exec on the new number; the state memfd crosses an exec only
        // when a holder or a handover says so.
        rustix::io::fcntl_setfd(&d.state, rustix::io::FdFlags::CLOEXEC)?;
        d.journal.reset()?;
        // Every record now lives in the image: what is pending is stale.
        d.pending.clear();
        let _ = self.engine.take_changes();
        crate::systemd::checkpoint_installed(&self.systemd, old_slot);
        self.close_buried();
        debug!(
            bytes = image.len(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            from,
            "checkpoint written"
        );
        Ok(())
    }
}

/// The journal records of `changes`, read from the engine as it is now.
pub(crate) fn deltas_of(engine: &Engine, changes: &Changes) -> Vec<Delta> {
    let mut out = Vec::new();
    for (&seq, &(id, whole)) in &changes.sessions {
        match engine.session_record(id) {
            None => out.push(Delta::SessionDel { seq }),
            Some(rec) => {
                if whole {
                    out.push(Delta::SessionDel { seq });
                }
                out.push(Delta::SessionPut(rec));
                if whole {
                    for token in engine.file_tokens(id) {
                        if let Some(f) = file_rec(engine, id, token) {
                            out.push(Delta::FilePut { seq, file: f });
                        }
                    }
                }
            }
        }
    }
    for &(seq, id, token) in &changes.files {
        if changes.sessions.get(&seq).is_some_and(|&(_, whole)| whole) {
            continue;
        }
        if engine.session_record(id).is_none() {
            continue;
        }
        out.push(match file_rec(engine, id, token) {
            Some(file) => Delta::FilePut { seq, file },
            None => Delta::FileDel { seq, token },
        });
    }
    if changes.flbs {
        out.push(Delta::Flbs(engine.flb_records()));
    }
    out
}

fn file_rec(engine: &Engine, id: luo_core::SessionId, token: u64) -> Option<FileRec> {
    let f = engine.file_record(id, token)?;
    let open_mode = f
        .open
        .and_then(|o| rustix::fs::fstat(o).ok())
        .map_or(0, |st| st.st_mode & luo_abi::image::S_IFMT);
    Some(FileRec {
        compatible: f.compatible.to_owned(),
        token,
        fd: f.fd.as_raw_fd(),
        mode: f.mode,
        open_fd: f.open.map_or(-1, |o| o.as_raw_fd()),
        open_mode,
        status: f.status,
        flags: f.flags,
        record: f.record.to_vec(),
    })
}
