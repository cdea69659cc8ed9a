//! luod's own operations (the `Op` range): handoff, status, list, replace, migrate, upgrade,
//! reboot.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use luo_abi::Errno;
use luo_abi::wire::{self, Op};
use luo_core::SessionId;
use tracing::info;

use super::{After, Reply, Server};
use crate::budget::Scope;
use crate::conn::{Cred, Kind};

impl Server {
    pub(crate) fn native_op(
        &mut self,
        key: u64,
        kind: Kind,
        cred: Cred,
        op: Op,
        arg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> (Reply, After) {
        if op == Op::ReplaceFd {
            return (self.replace_fd(kind, cred, arg, fds), After::Nothing);
        }
        if !fds.is_empty() {
            return (
                Reply::err_msg(Errno::EINVAL, "No descriptors expected"),
                After::Nothing,
            );
        }
        let admin = cred.uid == 0 || cred.uid == rustix::process::geteuid().as_raw();
        let reply = match op {
            Op::Ping => Reply::ok(Vec::new()),
            Op::OpenDevice => self.open_device(key, kind, cred),
            Op::Handoff => match kind {
                Kind::Session(id) => match self.handoff(id, cred.uid) {
                    Ok(()) => {
                        self.sessions.remove(&id);
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.kind = Kind::Detached;
                        }
                        self.note_conn(key);
                        info!(uid = cred.uid, session = %String::from_utf8_lossy(self.engine.session_name(id).unwrap_or_default()), "session handed off");
                        Reply::ok(Vec::new())
                    }
                    Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
                },
                _ => Reply::err_msg(Errno::EINVAL, "Handoff needs a session connection"),
            },
            Op::Status => Reply::ok(crate::status::status(self, cred, admin)),
            Op::ReplaceFd => Reply::err(Errno::EINVAL), // answered above
            Op::Migrate if self.migration.is_some() => {
                Reply::err_msg(Errno::EBUSY, "A migration is in progress")
            }
            Op::Migrate if self.staging.is_some() => {
                Reply::err_msg(Errno::EBUSY, "An upgrade is in progress")
            }
            Op::Migrate => match crate::migrate::start(self, key, 0, cred, admin, arg) {
                Ok(m) => return (Reply::default(), After::Migrate(Box::new(m))),
                Err(reply) => reply,
            },
            Op::List => crate::status::list(self, cred, admin, arg),
            Op::Failpoint => self.failpoint(admin, arg),
            Op::Upgrade => {
                if !admin {
                    return (
                        Reply::err_msg(Errno::EPERM, "Only root may upgrade luod"),
                        After::Nothing,
                    );
                }
                let path = match std::str::from_utf8(arg) {
                    Ok("") => self.settings.binary.clone(),
                    Ok(p) => PathBuf::from(p),
                    Err(_) => {
                        return (
                            Reply::err_msg(Errno::EINVAL, "Binary path is not UTF-8"),
                            After::Nothing,
                        );
                    }
                };
                return (Reply::default(), After::Upgrade(path));
            }
            Op::Kexec => {
                if !admin {
                    return (
                        Reply::err_msg(Errno::EPERM, "Only root may kexec through luod"),
                        After::Nothing,
                    );
                }
                return match super::kexec::parse(arg) {
                    Ok(flags) => (Reply::default(), After::Kexec(flags)),
                    Err(reply) => (reply, After::Nothing),
                };
            }
            Op::Reboot => {
                if !admin {
                    return (
                        Reply::err_msg(Errno::EPERM, "Only root may reboot luod"),
                        After::Nothing,
                    );
                }
                return (Reply::default(), After::Reboot);
            }
        };
        (reply, After::Nothing)
    }

    /// Handoff of session `id`; an `EEXIST` caused by an incoming session of the same name
    /// whose descriptor was already closed is resolved by processing that close first.
    pub(crate) fn handoff(&mut self, id: SessionId, uid: u32) -> Result<(), luo_core::Error> {
        let result = self.engine.handoff(id);
        if matches!(result, Err(luo_core::Error::NameTaken)) {
            let name = self.engine.session_name(id).map(<[u8]>::to_vec)?;
            if self.reap_incoming_holder(uid, &name) {
                return self.engine.handoff(id);
            }
        }
        result
    }

    /// REPLACE_FD: the file under the token of `arg` swapped for the one descriptor in `fds`.
    pub(crate) fn replace_fd(
        &mut self,
        kind: Kind,
        cred: Cred,
        arg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err_msg(Errno::EINVAL, "REPLACE_FD needs an outgoing session");
        };
        let Ok(req) = <wire::ReplaceFdRequest as zerocopy::FromBytes>::read_from_bytes(arg) else {
            return Reply::err_msg(Errno::EINVAL, "REPLACE_FD takes an 8-byte token");
        };
        if fds.len() != 1 {
            return Reply::err_msg(Errno::EINVAL, "REPLACE_FD takes exactly one descriptor");
        }
        if let Err(refusal) = self.may_hold(cred.uid, 1, Scope::Budget) {
            return Reply::err_msg(Errno::EMFILE, &refusal.to_string());
        }
        match self
            .engine
            .replace_fd(id, req.token.get(), fds.first().map(|f| f.as_fd()))
        {
            // The client holds the old file too (it replaced it): closing luod's copy is cheap.
            Ok(old) => {
                self.bury(old);
                Reply::ok(Vec::new())
            }
            Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
        }
    }

    /// FAILPOINT: arms a test failpoint (see [`crate::failpoint`]).
    pub(crate) fn failpoint(&mut self, admin: bool, arg: &[u8]) -> Reply {
        if !self.failpoints.enabled() || !admin {
            return Reply::err_msg(
                Errno::EPERM,
                "Failpoints need root and a luod started with LUOD_FAILPOINTS=1",
            );
        }
        let Some((hit, name)) = arg.split_first_chunk::<4>() else {
            return Reply::err_msg(Errno::EINVAL, "FAILPOINT takes a count and a name");
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return Reply::err_msg(Errno::EINVAL, "Failpoint name is not UTF-8");
        };
        match self.failpoints.arm(name, u32::from_le_bytes(*hit)) {
            Ok(()) => Reply::ok(Vec::new()),
            Err(msg) => Reply::err_msg(Errno::EINVAL, &msg),
        }
    }
}
