//! Rebuilding the state of a server that died: the last checkpoint image with the journal
//! applied to it gives one image, which the new server restores from exactly as a successor
//! restores from an upgrade image ([`crate::handover`]). The descriptors are all still open
//! at the numbers the records name: the holder kept the dead server's descriptor table, and
//! the new server inherited it whole.
//!
//! The model below is plain data (numbers, not descriptors): applying a record never opens or
//! closes anything, so a number the journal shows closed and later reused for another file
//! names that file in the result, as it does in the table.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::image::{Image, ImageWriter, NO_FD, SESSION_INCOMING, SessionSpec};
use luo_core::{FlbRecord, WRITER_VERSION};

use crate::handover::{ConnState, DaemonState};
use crate::journal::{ConnRec, Delta, FileRec};

/// A reply the dead server made durable but whose request may still be unread: sent again if
/// the request is still at the head of its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The connection's descriptor number.
    pub conn: i32,
    pub id: u64,
    pub errno: i32,
    pub arg: Vec<u8>,
    pub fds: Vec<i32>,
}

/// What a recovery starts from.
#[derive(Debug)]
pub struct Rebuilt {
    /// The image to restore from.
    pub image: Vec<u8>,
    /// The last reply of each connection, from the journal.
    pub pending: Vec<Pending>,
    /// The sequence number the new server's journal continues from.
    pub next_seq: u64,
    /// Records applied.
    pub applied: usize,
}

#[derive(Debug, Default)]
struct Session {
    owner: u32,
    flags: u32,
    name: Vec<u8>,
    files: Vec<FileRec>,
}

/// A descriptor of the daemon part: number and file type.
type Fd = (i32, u32);

#[derive(Debug, Default)]
struct Model {
    generation: u64,
    sessions: BTreeMap<u64, Session>,
    flbs: Vec<FlbRecord>,
    /// The daemon's records (its settings; the slots in it are the checkpoint's).
    daemon: Option<DaemonState>,
    listener: Option<Fd>,
    lock: Option<Fd>,
    keeper: Option<Fd>,
    /// The metrics listener and counters, and the address (see [`crate::metrics::Record`]).
    metrics: Option<(Fd, Fd, String)>,
    conns: BTreeMap<i32, ConnRec>,
    journal_from: u64,
    pending: BTreeMap<i32, Pending>,
}

/// Applies `journal` (its records from the checkpoint's `journal_from` on) to `checkpoint`.
pub fn rebuild(checkpoint: &[u8], journal: &[(u64, Delta)]) -> anyhow::Result<Rebuilt> {
    let t0 = std::time::Instant::now();
    let image = Image::parse(checkpoint).map_err(|e| anyhow!("Invalid checkpoint image: {e}"))?;
    let t_parse = t0.elapsed();
    let mut m = model_of(&image)?;
    let t_model = t0.elapsed();
    let mut next_seq = m.journal_from;
    let mut applied = 0;
    for (seq, delta) in journal {
        if *seq < m.journal_from {
            continue;
        }
        ensure!(
            *seq == next_seq,
            "The journal starts at record {seq}, the checkpoint needs {next_seq}"
        );
        apply(&mut m, delta).with_context(|| format!("journal record {seq}"))?;
        next_seq = seq + 1;
        applied += 1;
    }
    let t_apply = t0.elapsed();
    let image = write(&m)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    tracing::debug!(
        parse_ms = ms(t_parse),
        model_ms = ms(t_model - t_parse),
        apply_ms = ms(t_apply - t_model),
        write_ms = ms(t0.elapsed() - t_apply),
        "recovery: checkpoint and journal merged"
    );
    Ok(Rebuilt {
        image,
        pending: m.pending.into_values().collect(),
        next_seq,
        applied,
    })
}

fn model_of(image: &Image<'_>) -> anyhow::Result<Model> {
    let table = image.fds();
    let fd_at = |i: Option<u32>| -> anyhow::Result<Fd> {
        let Some(i) = i else {
            return Ok((-1, 0));
        };
        let e = table
            .get(i as usize)
            .with_context(|| format!("descriptor index {i} out of the table"))?;
        Ok((e.fd.get(), e.mode_type.get()))
    };
    let mut m = Model {
        generation: image.generation(),
        ..Model::default()
    };
    for s in image.sessions() {
        let mut files = Vec::new();
        for f in s.files() {
            let (fd, mode) = fd_at(f.fd_index)?;
            let (open_fd, open_mode) = fd_at(f.open_fd_index)?;
            files.push(FileRec {
                compatible: f.compatible.to_owned(),
                token: f.token,
                fd,
                mode,
                open_fd,
                open_mode,
                status: f.status,
                flags: f.flags,
                record: f.record.to_vec(),
            });
        }
        m.sessions.insert(
            s.seq(),
            Session {
                owner: s.owner(),
                flags: s.flags(),
                name: s.name().to_vec(),
                files,
            },
        );
    }
    for f in image.flbs() {
        m.flbs.push(FlbRecord {
            compatible: f.compatible.to_owned(),
            count: f.count,
            flags: f.flags,
            data: f.data.to_vec(),
        });
    }
    let d = DaemonState::read(image)?;
    m.listener = Some(fd_at(Some(d.listener))?);
    m.lock = Some(fd_at(Some(d.lock))?);
    m.keeper = d.keeper.map(|k| fd_at(Some(k))).transpose()?;
    m.metrics = match &d.metrics {
        Some(r) => Some((
            fd_at(Some(r.listener))?,
            fd_at(Some(r.counters))?,
            r.addr.clone(),
        )),
        None => None,
    };
    m.journal_from = d.journal_from;
    // A session connection names its session by owner, direction and name: looked up through
    // an index, as thousands of connections may each hold one of thousands of sessions.
    let by_name: HashMap<(u32, bool, &[u8]), u64> = m
        .sessions
        .iter()
        .map(|(&seq, s)| ((s.owner, s.flags & SESSION_INCOMING != 0, &s.name[..]), seq))
        .collect();
    for c in &d.conns {
        let (fd, _) = fd_at(Some(c.index))?;
        let session = if c.kind == 2 {
            *by_name
                .get(&(c.cred.uid, c.incoming, &c.name[..]))
                .context("A connection's session is not in the checkpoint")?
        } else {
            u64::MAX
        };
        m.conns.insert(
            fd,
            ConnRec {
                fd,
                kind: c.kind,
                pid: c.cred.pid,
                uid: c.cred.uid,
                gid: c.cred.gid,
                session,
            },
        );
    }
    m.daemon = Some(d);
    Ok(m)
}

fn apply(m: &mut Model, delta: &Delta) -> anyhow::Result<()> {
    match delta {
        Delta::SessionPut(r) => {
            let s = m.sessions.entry(r.seq).or_default();
            s.owner = r.owner;
            s.flags = r.flags;
            s.name.clone_from(&r.name);
        }
        Delta::SessionDel { seq } => {
            m.sessions.remove(seq);
        }
        Delta::FilePut { seq, file } => {
            let s = m
                .sessions
                .get_mut(seq)
                .with_context(|| format!("a file of session {seq}, which is not there"))?;
            match s.files.iter_mut().find(|f| f.token == file.token) {
                Some(f) => *f = file.clone(),
                None => s.files.push(file.clone()),
            }
        }
        Delta::FileDel { seq, token } => {
            if let Some(s) = m.sessions.get_mut(seq) {
                s.files.retain(|f| f.token != *token);
            }
        }
        Delta::Flbs(flbs) => m.flbs.clone_from(flbs),
        Delta::ConnPut(c) => {
            m.conns.insert(c.fd, *c);
        }
        Delta::ConnDel { fd } => {
            m.conns.remove(fd);
            m.pending.remove(fd);
        }
        Delta::Applied {
            conn,
            id,
            errno,
            arg,
            fds,
        } => {
            m.pending.insert(
                *conn,
                Pending {
                    conn: *conn,
                    id: *id,
                    errno: *errno,
                    arg: arg.clone(),
                    fds: fds.clone(),
                },
            );
        }
    }
    Ok(())
}

fn write(m: &Model) -> anyhow::Result<Vec<u8>> {
    let mut w = ImageWriter::new(m.generation, WRITER_VERSION);
    let add = |w: &mut ImageWriter, fd: i32, mode: u32| {
        if fd < 0 { NO_FD } else { w.add_fd(fd, mode) }
    };
    for (&seq, s) in &m.sessions {
        let mut specs = Vec::with_capacity(s.files.len());
        for f in &s.files {
            let fd_index = add(&mut w, f.fd, f.mode);
            let open_fd_index = add(&mut w, f.open_fd, f.open_mode);
            specs.push(luo_abi::image::FileSpec {
                compatible: &f.compatible,
                token: f.token,
                fd_index,
                open_fd_index,
                status: f.status,
                flags: f.flags,
                record: &f.record,
            });
        }
        let spec = SessionSpec {
            name: &s.name,
            owner: s.owner,
            flags: s.flags,
            seq,
        };
        w.add_session(&spec, specs.iter().copied())
            .map_err(|e| anyhow!("Session {seq}: {e}"))?;
    }
    for f in &m.flbs {
        w.add_flb(&f.compatible, f.count, f.flags, &f.data)
            .map_err(|e| anyhow!("FLB {}: {e}", f.compatible))?;
    }
    let (Some(listener), Some(lock), Some(daemon)) = (m.listener, m.lock, m.daemon.as_ref()) else {
        bail!("The checkpoint names no listener or no lock");
    };
    let listener = add(&mut w, listener.0, listener.1);
    let lock = add(&mut w, lock.0, lock.1);
    let keeper = m.keeper.map(|(fd, mode)| add(&mut w, fd, mode));
    let metrics = m
        .metrics
        .as_ref()
        .map(|(l, c, addr)| crate::metrics::Record {
            listener: add(&mut w, l.0, l.1),
            counters: add(&mut w, c.0, c.1),
            addr: addr.clone(),
        });
    let mut conns = Vec::with_capacity(m.conns.len());
    for c in m.conns.values() {
        let index = add(&mut w, c.fd, luo_abi::image::S_IFSOCK);
        let (incoming, name) = if c.kind == 2 {
            let s = m
                .sessions
                .get(&c.session)
                .with_context(|| format!("connection {} names session {}", c.fd, c.session))?;
            (s.flags & SESSION_INCOMING != 0, s.name.clone())
        } else {
            (false, Vec::new())
        };
        conns.push(ConnState {
            index,
            kind: c.kind,
            cred: crate::conn::Cred {
                pid: c.pid,
                uid: c.uid,
                gid: c.gid,
            },
            incoming,
            name,
        });
    }
    DaemonState {
        listener,
        lock,
        keeper,
        journal_from: m.journal_from,
        conns,
        metrics,
        ..daemon.clone()
    }
    .write(&mut w)?;
    w.finish()
        .map_err(|e| anyhow!("Cannot lay out the recovered image: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! The property the journal rests on: the checkpoint with the journal applied gives the
    //! image a snapshot of the engine would write, after any sequence of operations.

    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::sync::Arc;

    use luo_abi::image::{Image, ImageWriter, S_IFREG, S_IFSOCK};
    use luo_core::{Engine, SessionId, WRITER_VERSION};

    use super::rebuild;
    use crate::handover::DaemonState;
    use crate::journal::Delta;
    use crate::server::Settings;

    struct Fixed {
        listener: OwnedFd,
        lock: OwnedFd,
    }

    fn image_of(engine: &Engine, fixed: &Fixed, journal_from: u64) -> Vec<u8> {
        let mut w = ImageWriter::new(engine.generation(), WRITER_VERSION);
        let mut fds = Vec::new();
        engine.write_snapshot(&mut w, &mut fds).unwrap();
        let listener = w.add_fd(fixed.listener.as_raw_fd(), S_IFSOCK);
        let lock = w.add_fd(fixed.lock.as_raw_fd(), S_IFREG);
        DaemonState {
            settings: Settings {
                socket: "/run/luod/luod.sock".into(),
                limits: Default::default(),
                fds: Default::default(),
                binary: "/usr/sbin/luod".into(),
                pids: vec![1],
            },
            upgrades: 0,
            last_upgrade: (0, 0),
            listener,
            lock,
            keeper: None,
            journal_from,
            conns: Vec::new(),
            metrics: None,
        }
        .write(&mut w)
        .unwrap();
        w.finish().unwrap()
    }

    /// What two images say about sessions, files (with their descriptor numbers) and FLBs.
    fn contents(bytes: &[u8]) -> String {
        let image = Image::parse(bytes).unwrap();
        let fd = |i: Option<u32>| i.map(|i| image.fds()[i as usize].fd.get());
        let mut out = String::new();
        for s in image.sessions() {
            out += &format!(
                "S{} {} {:#x} {:?}\n",
                s.seq(),
                s.owner(),
                s.flags(),
                s.name()
            );
            for f in s.files() {
                out += &format!(
                    "  F{} {} fd={:?} open={:?} st={} fl={:#x} rec={:?}\n",
                    f.token,
                    f.compatible,
                    fd(f.fd_index),
                    fd(f.open_fd_index),
                    f.status,
                    f.flags,
                    f.record
                );
            }
        }
        for f in image.flbs() {
            out += &format!(
                "FLB {} {} {:#x} {:?}\n",
                f.compatible, f.count, f.flags, f.data
            );
        }
        out
    }

    fn memfd(bytes: &[u8]) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("journal-model", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&fd, bytes).unwrap();
        fd
    }

    #[test]
    fn the_checkpoint_with_the_journal_is_the_snapshot_after_any_operations() {
        let registry = Arc::new(luo_handlers::default_registry().unwrap());
        let (listener, _peer) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let fixed = Fixed {
            listener,
            lock: memfd(b""),
        };
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..20 {
            let mut engine = Engine::new(Arc::clone(&registry));
            engine.track_changes(true);
            let checkpoint = image_of(&engine, &fixed, 1);
            let mut journal: Vec<(u64, Delta)> = Vec::new();
            let mut seq = 1;
            let mut sessions: Vec<(SessionId, u32, String)> = Vec::new();
            let mut retrieved: Vec<OwnedFd> = Vec::new();
            for step in 0..120 {
                let owner = next(3) as u32;
                match next(8) {
                    0 | 1 => {
                        let name = format!("s{}", next(6));
                        if let Ok(id) = engine.create_session(owner, name.as_bytes()) {
                            sessions.push((id, owner, name));
                        }
                    }
                    2..=4 if !sessions.is_empty() => {
                        let (id, ..) = sessions[next(sessions.len() as u64) as usize];
                        let fd = memfd(format!("{round}-{step}").as_bytes());
                        let _ = engine.preserve_fd(id, Some(fd.as_fd()), next(5));
                    }
                    5 if !sessions.is_empty() => {
                        let (id, ..) = sessions[next(sessions.len() as u64) as usize];
                        let _ = engine.handoff(id);
                    }
                    6 if !sessions.is_empty() => {
                        let (_, owner, ref name) = sessions[next(sessions.len() as u64) as usize];
                        if let Ok(id) = engine.retrieve_session(owner, name.as_bytes()) {
                            for t in engine.file_tokens(id) {
                                if next(2) == 0
                                    && let Ok(fd) = engine.retrieve_fd(id, t)
                                {
                                    retrieved.push(fd);
                                }
                            }
                            if next(2) == 0 {
                                let _ = engine.finish(id);
                            }
                        }
                    }
                    7 if !sessions.is_empty() => {
                        let i = next(sessions.len() as u64) as usize;
                        let (id, ..) = sessions.swap_remove(i);
                        let _ = engine.close_session(id);
                    }
                    _ => {}
                }
                let changes = engine.take_changes();
                for d in crate::server::deltas_of(&engine, &changes) {
                    journal.push((seq, d));
                    seq += 1;
                }
            }
            let rebuilt = rebuild(&checkpoint, &journal).unwrap();
            assert_eq!(rebuilt.next_seq, seq);
            let expected = image_of(&engine, &fixed, seq);
            assert_eq!(
                contents(&rebuilt.image),
                contents(&expected),
                "round {round}: the journal does not rebuild the engine's state"
            );
            drop(retrieved);
        }
    }
}
