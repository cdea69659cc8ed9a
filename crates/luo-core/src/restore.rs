//! Restore: build an engine from a handover image and the descriptors it lists.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use luo_abi::image::{
    FILE_BUSY, FILE_FROZEN, FLB_INCOMING, FLB_RETRIEVED, Image, SESSION_FINISHED, SESSION_INCOMING,
    SESSION_RETRIEVED,
};

use crate::engine::{Engine, FlbState};
use crate::error::Error;
use crate::freeze::S_IFMT;
use crate::handler::{FileData, HandlerError, Identity, RetrieveStatus};
use crate::registry::Registry;
use crate::session::{Direction, File, Session};
use rustix::fs::Stat;

impl Engine {
    /// Builds an engine from a handover image: a reboot image (every session incoming) or an
    /// upgrade snapshot (the whole live state).
    ///
    /// `fds[i]` is the descriptor of the image's fd-table slot `i`, if the caller has it. Each
    /// present descriptor must have the file type the table records. (Their numbers may differ
    /// from the table's: a successor that received them over a socket has new numbers.) Every
    /// file is bound to the handler whose compatible matches exactly, and takes its descriptors
    /// out of `fds`; slots no file uses (the caller's own) are left in place.
    ///
    /// Everything is checked before anything is taken: on any error `fds` is untouched and
    /// nothing is half-restored.
    pub fn restore(
        registry: Arc<Registry>,
        image: &[u8],
        fds: &mut [Option<OwnedFd>],
    ) -> Result<Engine, Error> {
        let stats = fds
            .iter()
            .map(|fd| fd.as_ref().map(rustix::fs::fstat).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Handler {
                compatible: "engine".into(),
                step: "stat an inherited descriptor",
                source: HandlerError::from_io("fstat", e),
            })?;
        Engine::restore_with_stats(registry, image, fds, &stats)
    }

    /// [`restore`](Self::restore) for a caller that has just `fstat`ed every descriptor
    /// (`stats[i]` of `fds[i]`, `None` where the slot is empty): the engine uses those instead
    /// of asking again, which matters when tens of thousands of descriptors cross an upgrade.
    pub fn restore_with_stats(
        registry: Arc<Registry>,
        image: &[u8],
        fds: &mut [Option<OwnedFd>],
        stats: &[Option<Stat>],
    ) -> Result<Engine, Error> {
        let image = Image::parse(image).map_err(Error::Image)?;
        Engine::restore_parsed(registry, &image, fds, stats)
    }

    /// [`restore_with_stats`](Self::restore_with_stats) from an image the caller has already
    /// parsed (and so validated): a successor that reads its descriptor table and its own part
    /// from the same image validates it once.
    pub fn restore_parsed(
        registry: Arc<Registry>,
        image: &Image<'_>,
        fds: &mut [Option<OwnedFd>],
        stats: &[Option<Stat>],
    ) -> Result<Engine, Error> {
        let plan = plan(&registry, image, fds, stats)?;
        Ok(build(registry, image, plan, fds, stats))
    }
}

/// What the checking pass found, in image order.
struct Plan {
    /// Handler and identity (for files that hold one) of every file.
    files: Vec<(usize, Option<Identity>)>,
    /// FLB index and state of every FLB entry.
    flbs: Vec<(usize, FlbState)>,
    /// Every identity `files` holds, checked unique: the engine's set from the start.
    identities: HashSet<Identity>,
}

fn plan(
    registry: &Registry,
    image: &Image<'_>,
    fds: &[Option<OwnedFd>],
    stats: &[Option<Stat>],
) -> Result<Plan, Error> {
    let table = image.fds();
    if table.len() != fds.len() {
        return Err(Error::FdMismatch {
            index: fds.len().min(table.len()),
            reason: format!(
                "image lists {} descriptors, {} were given",
                table.len(),
                fds.len()
            ),
        });
    }
    if stats.len() != fds.len() {
        return Err(Error::FdMismatch {
            index: stats.len().min(fds.len()),
            reason: "one stat per descriptor is needed".into(),
        });
    }
    for (index, ((entry, fd), st)) in table.iter().zip(fds).zip(stats).enumerate() {
        let (Some(_), Some(st)) = (fd, st) else {
            continue;
        };
        let mode = st.st_mode & S_IFMT;
        if mode != entry.mode_type.get() {
            return Err(Error::FdMismatch {
                index,
                reason: format!(
                    "file type {:o}, the image expects {:o}",
                    mode,
                    entry.mode_type.get()
                ),
            });
        }
    }
    let fd_at = |index: Option<u32>, token: u64| -> Result<(usize, &OwnedFd), Error> {
        index
            .and_then(|i| Some((i as usize, fds.get(i as usize)?.as_ref()?)))
            .ok_or_else(|| Error::FdMismatch {
                index: index.map_or(usize::MAX, |i| i as usize),
                reason: format!("the descriptor of file {token} is missing"),
            })
    };
    let mut files = Vec::new();
    let mut names = HashSet::new();
    let mut identities = HashSet::new();
    for session in image.sessions() {
        let incoming = session.flags() & SESSION_INCOMING != 0;
        if !names.insert((session.owner(), incoming, session.name())) {
            return Err(Error::NameTaken);
        }
        for file in session.files() {
            let h = registry
                .handler_by_compatible(file.compatible)
                .ok_or_else(|| Error::UnknownCompatible(file.compatible.to_owned()))?;
            let handler = &registry.handlers[h];
            let held = fd_at(file.fd_index, file.token)?;
            // Outgoing files hold their identity; incoming ones only once retrieved.
            let holder = if !incoming {
                Some(held)
            } else if RetrieveStatus::from_raw(file.status) == RetrieveStatus::Retrieved {
                Some(fd_at(file.open_fd_index, file.token)?)
            } else if file.flags & FILE_BUSY != 0 {
                Some(held)
            } else {
                None
            };
            let held_slot = file.fd_index.map(|i| i as usize);
            let identity = match holder {
                Some((slot, fd)) => {
                    let recorded = (Some(slot) == held_slot)
                        .then(|| handler.recorded_identity(file.record))
                        .flatten();
                    let id = match (recorded, stats.get(slot).and_then(Option::as_ref)) {
                        (Some(id), _) => id,
                        (None, Some(st)) if handler.inode_identity() => Identity {
                            dev: st.st_dev,
                            ino: st.st_ino,
                        },
                        _ => handler.identity(fd.as_fd()).map_err(|e| Error::Handler {
                            compatible: handler.compatible().to_owned(),
                            step: "identify",
                            source: e,
                        })?,
                    };
                    if !identities.insert(id) {
                        return Err(Error::AlreadyPreserved);
                    }
                    Some(id)
                }
                None => None,
            };
            files.push((h, identity));
        }
    }
    let mut flbs = Vec::new();
    for flb in image.flbs() {
        let f = registry
            .flb_by_compatible(flb.compatible)
            .ok_or_else(|| Error::UnknownCompatible(flb.compatible.to_owned()))?;
        let mut state = FlbState::default();
        if flb.flags & FLB_INCOMING != 0 {
            state.in_count = flb.count;
            state.in_data = Some(flb.data.to_vec());
        } else {
            state.out_count = flb.count;
            state.in_data = Some(flb.data.to_vec());
        }
        state.in_retrieved = flb.flags & FLB_RETRIEVED != 0;
        flbs.push((f, state));
    }
    // Last, the FLBs whose live state must be rebuilt now; undone if a later one fails.
    for (i, (f, state)) in flbs.iter().enumerate() {
        let flb = &registry.flbs[*f];
        let data = state.in_data.as_deref().unwrap_or_default();
        let result = if state.out_count > 0 {
            flb.restore_outgoing(data)
        } else if state.in_retrieved {
            flb.retrieve(data)
        } else {
            Ok(())
        };
        if let Err(e) = result {
            for (g, done) in flbs[..i].iter().rev() {
                if done.out_count > 0 {
                    registry.flbs[*g].unpreserve();
                } else if done.in_retrieved {
                    registry.flbs[*g].finish();
                }
            }
            return Err(Error::Flb {
                compatible: flb.compatible().to_owned(),
                step: "restore",
                source: e,
            });
        }
    }
    Ok(Plan {
        files,
        flbs,
        identities,
    })
}

fn build(
    registry: Arc<Registry>,
    image: &Image<'_>,
    plan: Plan,
    fds: &mut [Option<OwnedFd>],
    stats: &[Option<Stat>],
) -> Engine {
    let mut engine = Engine::new(registry);
    engine.generation = image.generation();
    engine.identities = plan.identities;
    let mut planned = plan.files.into_iter();
    let mut max_seq = 0;
    for view in image.sessions() {
        let flags = view.flags();
        let direction = if flags & SESSION_INCOMING != 0 {
            Direction::Incoming {
                retrieved: flags & SESSION_RETRIEVED != 0,
                finished: flags & SESSION_FINISHED != 0,
            }
        } else {
            Direction::Outgoing
        };
        max_seq = max_seq.max(view.seq());
        let mut session = Session::new(view.owner(), view.name().into(), direction, view.seq());
        let mut held = 0;
        for file in view.files() {
            let p = planned.next();
            let slot = file.fd_index.map_or(usize::MAX, |i| i as usize);
            let fd = fds.get_mut(slot).and_then(Option::take);
            let st = stats.get(slot).and_then(Option::as_ref);
            let Some((h, identity)) = p else {
                continue;
            };
            let Some(fd) = fd else {
                if let Some(id) = identity {
                    engine.identities.remove(&id);
                }
                continue;
            };
            let status = RetrieveStatus::from_raw(file.status);
            let retrieved = match status {
                RetrieveStatus::Retrieved => file
                    .open_fd_index
                    .and_then(|i| fds.get_mut(i as usize)?.take()),
                _ => None,
            };
            let mode = st.map_or(0, |st| st.st_mode & S_IFMT);
            let bytes = engine.registry.handlers[h].record_bytes(file.record);
            held += 1 + u64::from(retrieved.is_some());
            session.insert_file(File {
                handler: h,
                data: FileData {
                    token: file.token,
                    fd,
                    record: file.record.to_vec(),
                },
                bytes,
                mode,
                identity,
                frozen: file.flags & FILE_FROZEN != 0 && direction == Direction::Outgoing,
                status,
                retrieved,
            });
        }
        let id = engine.alloc_id();
        engine.fds_held += held;
        let ns = engine.namespaces.entry(session.owner).or_default();
        ns.usage.sessions += 1;
        ns.usage.files += session.files.len() as u64;
        ns.usage.bytes += session.bytes();
        ns.fds += held;
        let map = if session.is_outgoing() {
            &mut ns.outgoing
        } else {
            &mut ns.incoming
        };
        map.insert(session.name.clone(), id);
        engine.sessions.insert(id, session);
    }
    engine.next_seq = max_seq + 1;
    for (f, state) in plan.flbs {
        let Some(slot) = engine.flbs.get_mut(f) else {
            continue;
        };
        if state.out_count > 0 {
            slot.out_count = state.out_count;
        } else {
            slot.in_count = state.in_count;
            slot.in_retrieved = state.in_retrieved;
            slot.in_data = if state.in_retrieved {
                None
            } else {
                state.in_data
            };
        }
    }
    engine
}
