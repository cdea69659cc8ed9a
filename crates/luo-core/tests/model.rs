//! Random operation sequences against the engine and against a plain model of the kernel's
//! rules; both must agree on every result and on the state after every step, including across
//! freeze, image write and restore.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{Fixture, fixture, memfd};
use luo_abi::Errno;
use luo_core::{Direction, Engine, SessionId};
use proptest::prelude::*;

const NAMES: [&[u8]; 3] = [b"alpha", b"beta", b"gamma"];
const MEMFDS: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    Preserve(usize, usize, u64),
    Handoff(usize),
    RetrieveSession(usize),
    RetrieveFd(usize, u64),
    Finish(usize),
    Close(usize),
    Reboot(Option<u64>),
    Upgrade,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NAMES.len()).prop_map(Op::Create),
        5 => (0..6usize, 0..MEMFDS, 0..4u64).prop_map(|(h, m, t)| Op::Preserve(h, m, t)),
        2 => (0..6usize).prop_map(Op::Handoff),
        2 => (0..NAMES.len()).prop_map(Op::RetrieveSession),
        3 => (0..6usize, 0..4u64).prop_map(|(h, t)| Op::RetrieveFd(h, t)),
        1 => (0..6usize).prop_map(Op::Finish),
        1 => (0..6usize).prop_map(Op::Close),
        1 => proptest::option::of(0..4u64).prop_map(Op::Reboot),
        1 => Just(Op::Upgrade),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum MStatus {
    New,
    Retrieved,
    Failed(Errno),
}

#[derive(Clone, Debug)]
struct MFile {
    token: u64,
    memfd: usize,
    status: MStatus,
    owns: bool,
}

#[derive(Clone, Debug)]
struct MSession {
    id: SessionId,
    name: usize,
    outgoing: bool,
    retrieved: bool,
    finished: bool,
    files: Vec<MFile>,
}

#[derive(Default, Debug)]
struct Model {
    /// In creation order; closed sessions are removed.
    sessions: Vec<MSession>,
    /// Handles the test holds (they may go stale).
    handles: Vec<SessionId>,
}

impl Model {
    fn owned(&self, m: usize) -> bool {
        self.sessions
            .iter()
            .flat_map(|s| &s.files)
            .any(|f| f.memfd == m && f.owns)
    }
    fn find(&mut self, id: SessionId) -> Option<usize> {
        self.sessions.iter().position(|s| s.id == id)
    }
}

type Outcome = Result<(), Errno>;

struct Harness {
    fx: Fixture,
    engine: Option<Engine>,
    model: Model,
    memfds: Vec<OwnedFd>,
}

impl Harness {
    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("engine present")
    }

    fn handle(&self, i: usize) -> Option<SessionId> {
        self.model.handles.get(i).copied()
    }

    fn step(&mut self, op: &Op) -> Option<(Outcome, Outcome)> {
        if let Op::Upgrade = op {
            return self.upgrade();
        }
        let m = &mut self.model;
        Some(match *op {
            Op::Create(n) => {
                let got = self.engine.as_mut()?.create_session(0, NAMES[n]);
                let want = if m.sessions.iter().any(|s| s.outgoing && s.name == n) {
                    Err(Errno::EEXIST)
                } else {
                    Ok(())
                };
                if let (Ok(id), Ok(())) = (&got, &want) {
                    m.sessions.push(MSession {
                        id: *id,
                        name: n,
                        outgoing: true,
                        retrieved: false,
                        finished: false,
                        files: vec![],
                    });
                    m.handles.push(*id);
                }
                (got.map(|_| ()).map_err(|e| e.errno()), want)
            }
            Op::Preserve(h, fd, token) => {
                let id = self.handle(h)?;
                let got =
                    self.engine
                        .as_mut()?
                        .preserve_fd(id, Some(self.memfds[fd].as_fd()), token);
                let m = &mut self.model;
                let owned = m.owned(fd);
                let want = match m.find(id) {
                    None => Err(Errno::ENOENT),
                    Some(i) if !m.sessions[i].outgoing => Err(Errno::EINVAL),
                    Some(i) if m.sessions[i].files.iter().any(|f| f.token == token) => {
                        Err(Errno::EEXIST)
                    }
                    Some(_) if owned => Err(Errno::EBUSY),
                    Some(i) => {
                        m.sessions[i].files.push(MFile {
                            token,
                            memfd: fd,
                            status: MStatus::New,
                            owns: true,
                        });
                        Ok(())
                    }
                };
                (got.map_err(|e| e.errno()), want)
            }
            Op::Handoff(h) => {
                let id = self.handle(h)?;
                let got = self.engine.as_mut()?.handoff(id);
                let m = &mut self.model;
                let want = match m.find(id) {
                    None => Err(Errno::ENOENT),
                    Some(i) if !m.sessions[i].outgoing => Err(Errno::EINVAL),
                    Some(i) => {
                        let name = m.sessions[i].name;
                        if m.sessions.iter().any(|s| !s.outgoing && s.name == name) {
                            Err(Errno::EEXIST)
                        } else {
                            m.sessions[i].outgoing = false;
                            Ok(())
                        }
                    }
                };
                (got.map_err(|e| e.errno()), want)
            }
            Op::RetrieveSession(n) => {
                let got = self.engine.as_mut()?.retrieve_session(0, NAMES[n]);
                let want = match m.sessions.iter_mut().find(|s| !s.outgoing && s.name == n) {
                    None => Err(Errno::ENOENT),
                    Some(s) if s.retrieved => Err(Errno::EINVAL),
                    Some(s) => {
                        s.retrieved = true;
                        Ok(())
                    }
                };
                if let (Ok(id), Ok(())) = (&got, &want) {
                    m.handles.push(*id);
                }
                (got.map(|_| ()).map_err(|e| e.errno()), want)
            }
            Op::RetrieveFd(h, token) => {
                let id = self.handle(h)?;
                let got = self.engine.as_mut()?.retrieve_fd(id, token);
                let m = &mut self.model;
                let want = match m.find(id) {
                    None => Err(Errno::ENOENT),
                    Some(i) if m.sessions[i].outgoing => Err(Errno::EINVAL),
                    Some(i) => match m.sessions[i].files.iter().position(|f| f.token == token) {
                        None => Err(Errno::ENOENT),
                        Some(j) => {
                            let file = m.sessions[i].files[j].clone();
                            match file.status {
                                MStatus::Failed(e) => Err(e),
                                MStatus::Retrieved => Ok(()),
                                MStatus::New if !file.owns && m.owned(file.memfd) => {
                                    m.sessions[i].files[j].status = MStatus::Failed(Errno::EBUSY);
                                    Err(Errno::EBUSY)
                                }
                                MStatus::New => {
                                    let f = &mut m.sessions[i].files[j];
                                    f.status = MStatus::Retrieved;
                                    f.owns = true;
                                    Ok(())
                                }
                            }
                        }
                    },
                };
                (got.map(|_| ()).map_err(|e| e.errno()), want)
            }
            Op::Finish(h) | Op::Close(h) => {
                let close = matches!(op, Op::Close(_));
                let id = self.handle(h)?;
                let e = self.engine.as_mut()?;
                let got = if close {
                    e.close_session(id)
                } else {
                    e.finish(id)
                };
                let m = &mut self.model;
                let want = match m.find(id) {
                    None => Err(Errno::ENOENT),
                    Some(i) if close => {
                        m.sessions.remove(i);
                        Ok(())
                    }
                    Some(i) if m.sessions[i].outgoing => Err(Errno::EINVAL),
                    Some(i) => {
                        m.sessions[i].files.clear();
                        m.sessions[i].finished = true;
                        Ok(())
                    }
                };
                (got.map_err(|e| e.errno()), want)
            }
            Op::Reboot(fail) => {
                self.fx.faults.lock().unwrap().freeze = fail.into_iter().collect();
                let result = self.engine.as_mut()?.freeze_all();
                self.fx.faults.lock().unwrap().freeze.clear();
                let m = &mut self.model;
                let fails = fail.is_some_and(|t| {
                    m.sessions
                        .iter()
                        .filter(|s| s.outgoing)
                        .any(|s| s.files.iter().any(|f| f.token == t))
                });
                let want = if fails { Err(Errno::EIO) } else { Ok(()) };
                let got = match result {
                    Err(e) => Err(e.errno()),
                    Ok(image) => {
                        let old = self.engine.take()?;
                        let mut fds: Vec<_> = old.into_image_fds().into_iter().map(Some).collect();
                        let restored = Engine::restore(self.fx.registry.clone(), &image, &mut fds)
                            .expect("restore of a freshly written image");
                        assert!(
                            fds.iter().all(Option::is_none),
                            "every descriptor was taken"
                        );
                        self.engine = Some(restored);
                        m.handles.clear();
                        m.sessions.retain(|s| s.outgoing);
                        for s in &mut m.sessions {
                            s.outgoing = false;
                            s.retrieved = false;
                            s.finished = false;
                            for f in &mut s.files {
                                f.status = MStatus::New;
                                f.owns = false;
                            }
                        }
                        // Session ids are new; match them by name (incoming names are unique).
                        let infos = self.engine.as_ref()?.sessions();
                        for s in &mut m.sessions {
                            if let Some(info) = infos.iter().find(|i| i.name == NAMES[s.name]) {
                                s.id = info.id;
                            }
                        }
                        Ok(())
                    }
                };
                (got, want)
            }
            Op::Upgrade => return None,
        })
    }

    /// An orchestrator upgrade: snapshot, hand duplicates of the descriptors to a new engine,
    /// drop the old one. The model does not change; session handles are renumbered.
    fn upgrade(&mut self) -> Option<(Outcome, Outcome)> {
        let old = self.engine.take()?;
        let mut w = luo_abi::image::ImageWriter::new(old.generation(), luo_core::WRITER_VERSION);
        let mut borrowed = Vec::new();
        old.write_snapshot(&mut w, &mut borrowed).expect("snapshot");
        let image = w.finish().expect("image");
        let mut fds: Vec<Option<OwnedFd>> = borrowed
            .iter()
            .map(|fd| Some(rustix::io::fcntl_dupfd_cloexec(fd, 0).expect("dup")))
            .collect();
        drop(borrowed);
        let before: Vec<_> = old.sessions();
        drop(old);
        let new = Engine::restore(self.fx.registry.clone(), &image, &mut fds).expect("restore");
        assert!(
            fds.iter().all(Option::is_none),
            "every descriptor was taken"
        );
        let after = new.sessions();
        let renumber: std::collections::HashMap<SessionId, SessionId> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (b.id, a.id))
            .collect();
        for s in &mut self.model.sessions {
            s.id = renumber[&s.id];
        }
        // Handles of closed sessions stay stale: give them an id no session has.
        for h in &mut self.model.handles {
            *h = renumber.get(h).copied().unwrap_or(SessionId(u64::MAX));
        }
        self.engine = Some(new);
        Some((Ok(()), Ok(())))
    }

    fn check_state(&mut self) {
        let infos = self.engine().sessions();
        let m = &self.model;
        let got: Vec<_> = infos
            .iter()
            .map(|i| {
                let outgoing = i.direction == Direction::Outgoing;
                (i.id, i.name.clone(), outgoing, i.files)
            })
            .collect();
        let want: Vec<_> = m
            .sessions
            .iter()
            .map(|s| (s.id, NAMES[s.name].to_vec(), s.outgoing, s.files.len()))
            .collect();
        assert_eq!(got, want, "sessions");
        for s in &m.sessions {
            let tokens: Vec<u64> = s.files.iter().map(|f| f.token).collect();
            assert_eq!(
                self.engine.as_ref().unwrap().tokens(s.id).unwrap(),
                tokens,
                "tokens of {:?}",
                s.id
            );
        }
        let owned = m
            .sessions
            .iter()
            .flat_map(|s| &s.files)
            .filter(|f| f.owns)
            .count();
        assert_eq!(
            self.engine.as_ref().unwrap().preserved_objects(),
            owned,
            "preserved objects"
        );
        // Every descriptor the engine holds is charged to exactly one uid.
        let engine = self.engine.as_ref().unwrap();
        let owners: std::collections::BTreeSet<u32> = infos.iter().map(|i| i.owner).collect();
        let charged: u64 = owners.iter().map(|&o| engine.fds_held_by(o)).sum();
        assert_eq!(charged, engine.fds_held(), "descriptors charged to uids");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let fx = fixture();
        let engine = fx.engine();
        let memfds = (0..MEMFDS).map(|i| memfd(&format!("b{i}"), b"model")).collect();
        let mut h = Harness { fx, engine: Some(engine), model: Model::default(), memfds };
        for op in &ops {
            if let Some((got, want)) = h.step(op) {
                prop_assert_eq!(got, want, "{:?}", op);
            }
            h.check_state();
        }
    }
}
