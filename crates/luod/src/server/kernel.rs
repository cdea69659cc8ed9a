//! The kernel's uAPI over a device or a session connection: CREATE/RETRIEVE_SESSION,
//! PRESERVE_FD, RETRIEVE_FD, FINISH, GET_NAME, decoded by `luo_abi::uapi` as the kernel does.

use std::os::fd::{AsFd, OwnedFd};

use luo_abi::Errno;
use luo_abi::uapi::{self, Target};
use luo_core::{Direction, SessionId};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::{Reply, Server};
use crate::conn::{Cred, Kind};

impl Server {
    pub(crate) fn open_device(&mut self, key: u64, kind: Kind, cred: Cred) -> Reply {
        if kind != Kind::Control {
            return Reply::err_msg(Errno::EINVAL, "Only a fresh connection can become a device");
        }
        if let Some(&holder) = self.devices.get(&cred.uid)
            && holder != key
            && self.conns.contains_key(&holder)
        {
            self.reap_hung_up(Some(holder));
            if self.devices.contains_key(&cred.uid) {
                return Reply::err(Errno::EBUSY);
            }
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.kind = Kind::Device;
        }
        self.note_conn(key);
        self.devices.insert(cred.uid, key);
        Reply::ok(Vec::new())
    }

    pub(crate) fn kernel_op(
        &mut self,
        kind: Kind,
        cred: Cred,
        op: u32,
        arg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Reply {
        let target = match kind {
            Kind::Device => Target::Device,
            Kind::Session(_) | Kind::Detached => Target::Session,
            Kind::Control => return Reply::err(Errno::ENOTTY),
        };
        let session = match kind {
            Kind::Session(id) => match self.engine.direction(id) {
                Some(Direction::Outgoing) => uapi::SessionState::Outgoing,
                Some(_) => uapi::SessionState::Incoming,
                None => uapi::SessionState::Inert,
            },
            // A handed-off session's descriptor accepts nothing.
            _ => uapi::SessionState::Inert,
        };
        let uapi::Decoded { buf, copy_back, .. } =
            match uapi::decode(target, session, op, arg, fds.len()) {
                Ok(d) => d,
                Err(e) => return Reply::err(e),
            };
        if let Some((n, scope)) = Server::fds_needed(op)
            && let Err(refusal) = self.may_hold(cred.uid, n, scope)
        {
            return Reply::err_msg(Errno::EMFILE, &refusal.to_string());
        }
        let mut reply = match op {
            uapi::LIVEUPDATE_IOCTL_CREATE_SESSION => self.create_session(cred, &buf),
            uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION => self.retrieve_session(cred, &buf),
            uapi::LIVEUPDATE_SESSION_PRESERVE_FD => self.preserve_fd(kind, &buf, fds),
            uapi::LIVEUPDATE_SESSION_RETRIEVE_FD => self.retrieve_fd(kind, &buf),
            uapi::LIVEUPDATE_SESSION_FINISH => self.finish(kind, &buf),
            uapi::LIVEUPDATE_SESSION_GET_NAME => self.get_name(kind, &buf),
            _ => Reply::err(Errno::ENOTTY),
        };
        if reply.errno == 0 {
            reply.arg.truncate(copy_back);
        }
        reply
    }

    pub(crate) fn session_socket(&mut self, id: SessionId, cred: Cred) -> Result<OwnedFd, Errno> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Errno(e.raw_os_error()))?;
        rustix::io::ioctl_fionbio(&ours, true).map_err(|e| Errno(e.raw_os_error()))?;
        self.add_conn(ours, Kind::Session(id), cred)
            .map_err(|_| Errno::ENOMEM)?;
        Ok(theirs)
    }

    pub(crate) fn create_session(&mut self, cred: Cred, buf: &[u8; 72]) -> Reply {
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&buf[8..72]);
        let Some(name) = uapi::session_name(&raw) else {
            return Reply::err(Errno::EINVAL);
        };
        let mut result = self.engine.create_session(cred.uid, name);
        if matches!(result, Err(luo_core::Error::NameTaken))
            && let Some(holder) = self
                .engine
                .outgoing_session(cred.uid, name)
                .and_then(|s| self.sessions.get(&s).copied())
            && self.reap_hung_up(Some(holder))
        {
            result = self.engine.create_session(cred.uid, name);
        }
        let id = match result {
            Ok(id) => id,
            Err(e) => return Reply::err_msg(e.errno(), &e.to_string()),
        };
        self.session_reply(id, cred, buf)
    }

    pub(crate) fn retrieve_session(&mut self, cred: Cred, buf: &[u8; 72]) -> Reply {
        let raw = &buf[8..72];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        let mut result = self.engine.retrieve_session(cred.uid, name);
        if matches!(result, Err(luo_core::Error::AlreadyRetrieved))
            && self.reap_incoming_holder(cred.uid, name)
        {
            // The holder had closed it: the close finished it, and the name is gone (ENOENT).
            result = self.engine.retrieve_session(cred.uid, name);
        }
        let id = match result {
            Ok(id) => id,
            Err(e) => return Reply::err(e.errno()),
        };
        self.session_reply(id, cred, buf)
    }

    /// The reply to CREATE/RETRIEVE_SESSION: the struct with `fd` -1 (the client writes the
    /// number it receives) and the client's end of the new session connection. If that cannot
    /// be made the session is closed again (for a retrieved one, as in the kernel: finished).
    pub(crate) fn session_reply(&mut self, id: SessionId, cred: Cred, buf: &[u8; 72]) -> Reply {
        match self.session_socket(id, cred) {
            Ok(theirs) => {
                let mut arg = buf.to_vec();
                arg[4..8].copy_from_slice(&(-1i32).to_le_bytes());
                Reply {
                    errno: 0,
                    arg,
                    fds: vec![theirs],
                }
            }
            Err(e) => {
                let _ = self.engine.close_session(id);
                Reply::err(e)
            }
        }
    }

    pub(crate) fn preserve_fd(&mut self, kind: Kind, buf: &[u8; 72], fds: Vec<OwnedFd>) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err(Errno::EINVAL);
        };
        let token = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        let fd = fds.first().map(|f| f.as_fd());
        let mut result = self.engine.preserve_fd(id, fd, token);
        if matches!(result, Err(luo_core::Error::AlreadyPreserved)) && self.reap_hung_up(None) {
            let fd = fds.first().map(|f| f.as_fd());
            result = if self.engine.session_info(id).is_some() {
                self.engine.preserve_fd(id, fd, token)
            } else {
                Err(luo_core::Error::StaleSession)
            };
        }
        match result {
            Ok(()) => Reply::ok(buf[..16].to_vec()),
            Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
        }
    }

    pub(crate) fn retrieve_fd(&mut self, kind: Kind, buf: &[u8; 72]) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err(Errno::EINVAL);
        };
        let token = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        match self.engine.retrieve_fd(id, token) {
            Ok(fd) => {
                let mut arg = buf[..16].to_vec();
                arg[4..8].copy_from_slice(&(-1i32).to_le_bytes());
                Reply {
                    errno: 0,
                    arg,
                    fds: vec![fd],
                }
            }
            Err(e) => Reply::err(e.errno()),
        }
    }

    pub(crate) fn finish(&mut self, kind: Kind, buf: &[u8; 72]) -> Reply {
        let Kind::Session(id) = kind else {
            return Reply::err(Errno::EINVAL);
        };
        if buf[4..8] != [0; 4] {
            return Reply::err(Errno::EINVAL);
        }
        let incoming = self.incoming_name(id);
        match self.engine.finish(id) {
            Ok(()) => {
                self.incoming_finished(incoming);
                Reply::ok(buf[..8].to_vec())
            }
            Err(e) => Reply::err_msg(e.errno(), &e.to_string()),
        }
    }

    pub(crate) fn get_name(&mut self, kind: Kind, buf: &[u8; 72]) -> Reply {
        if buf[4..8] != [0; 4] {
            return Reply::err(Errno::EINVAL);
        }
        let name = match kind {
            Kind::Session(id) => self
                .engine
                .session_name(id)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            _ => return Reply::err(Errno::EINVAL),
        };
        let mut arg = buf.to_vec();
        arg[8..72].fill(0);
        arg[8..8 + name.len()].copy_from_slice(&name);
        Reply::ok(arg)
    }
}
