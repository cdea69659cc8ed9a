//! Restore: build an engine from a handover image and the descriptors it lists.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use luo_abi::image::{FLB_INCOMING, Image, SESSION_FINISHED, SESSION_INCOMING, SESSION_RETRIEVED};

use crate::engine::{Engine, FlbState};
use crate::error::Error;
use crate::freeze::fd_mode_type;
use crate::handler::{FileData, RetrieveStatus};
use crate::registry::Registry;
use crate::session::{Direction, File, Session};

/// A refused restore: why, and the descriptors given back untouched.
pub struct RestoreError {
    /// What was wrong.
    pub error: Error,
    /// The descriptors passed to [`Engine::restore`], in the same order: nothing was closed.
    pub fds: Vec<OwnedFd>,
}

impl fmt::Debug for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreError")
            .field("error", &self.error)
            .field("fds", &self.fds.len())
            .finish()
    }
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for RestoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Engine {
    /// Builds an engine from a handover image.
    ///
    /// `fds` are the descriptors of the image's fd table, in order: each must have the number
    /// and file type the table records. Every file is bound to the handler whose compatible
    /// matches exactly. Everything is checked before anything is built: on any error the
    /// descriptors come back in the [`RestoreError`] and nothing is half-restored.
    pub fn restore(
        registry: Arc<Registry>,
        image: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Engine, RestoreError> {
        match plan(&registry, image, &fds) {
            Ok(plan) => Ok(build(registry, image, plan, fds)),
            Err(error) => Err(RestoreError { error, fds }),
        }
    }
}

/// What the checking pass found: the handler of every file, in image order, and the FLB of
/// every FLB entry.
struct Plan {
    handlers: Vec<usize>,
    flbs: Vec<usize>,
}

fn plan(registry: &Registry, bytes: &[u8], fds: &[OwnedFd]) -> Result<Plan, Error> {
    let image = Image::parse(bytes).map_err(Error::Image)?;
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
    for (index, (entry, fd)) in table.iter().zip(fds).enumerate() {
        if entry.fd.get() != fd.as_raw_fd() {
            return Err(Error::FdMismatch {
                index,
                reason: format!(
                    "expected descriptor {}, got {}",
                    entry.fd.get(),
                    fd.as_raw_fd()
                ),
            });
        }
        let mode = fd_mode_type(fd.as_fd())?;
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
    let mut handlers = Vec::new();
    let mut names = HashSet::new();
    for session in image.sessions() {
        if !names.insert((
            session.owner(),
            session.flags() & SESSION_INCOMING,
            session.name(),
        )) {
            return Err(Error::NameTaken);
        }
        for file in session.files() {
            let h = registry
                .handler_by_compatible(file.compatible)
                .ok_or_else(|| Error::UnknownCompatible(file.compatible.to_owned()))?;
            if file.fd_index.is_none() {
                return Err(Error::FdMismatch {
                    index: usize::MAX,
                    reason: format!("file {} of a session has no descriptor", file.token),
                });
            }
            handlers.push(h);
        }
    }
    let mut flbs = Vec::new();
    for flb in image.flbs() {
        let f = registry
            .flb_by_compatible(flb.compatible)
            .ok_or_else(|| Error::UnknownCompatible(flb.compatible.to_owned()))?;
        if flb.flags & FLB_INCOMING == 0 {
            return Err(Error::UnknownCompatible(format!(
                "outgoing half of {}",
                flb.compatible
            )));
        }
        flbs.push(f);
    }
    Ok(Plan { handlers, flbs })
}

fn build(registry: Arc<Registry>, bytes: &[u8], plan: Plan, fds: Vec<OwnedFd>) -> Engine {
    let mut engine = Engine::new(registry);
    // `plan` parsed this image already; parsing cannot fail now.
    let Ok(image) = Image::parse(bytes) else {
        return engine;
    };
    engine.generation = image.generation();
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut handlers = plan.handlers.into_iter();
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
        for file in view.files() {
            let (Some(h), Some(fd)) = (
                handlers.next(),
                file.fd_index.and_then(|i| fds.get_mut(i as usize)?.take()),
            ) else {
                continue;
            };
            session.insert_file(File {
                handler: h,
                data: FileData {
                    token: file.token,
                    fd,
                    record: file.record.to_vec(),
                },
                bytes: 0,
                identity: None,
                frozen: false,
                status: RetrieveStatus::from_raw(file.status),
                retrieved: None,
            });
        }
        let id = engine.alloc_id();
        let ns = engine.namespaces.entry(session.owner).or_default();
        let map = if session.is_outgoing() {
            &mut ns.outgoing
        } else {
            &mut ns.incoming
        };
        map.insert(session.name.clone(), id);
        engine.sessions.insert(id, session);
    }
    engine.next_seq = max_seq + 1;
    let mut counts: HashMap<usize, FlbState> = HashMap::new();
    for (view, f) in image.flbs().zip(plan.flbs) {
        let state = counts.entry(f).or_default();
        state.in_count = view.count;
        state.in_data = Some(view.data.to_vec());
    }
    for (f, state) in counts {
        if let Some(slot) = engine.flbs.get_mut(f) {
            *slot = state;
        }
    }
    engine
}
