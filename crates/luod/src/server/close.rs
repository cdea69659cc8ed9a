//! The kernel's synchronous close, emulated: a session closes when its last descriptor does,
//! and a close a client already did is seen before an answer that depends on it.

use luo_client::transport;
use luo_core::Direction;
use rustix::event::epoll;
use tracing::{debug, warn};

use super::Server;
use crate::conn::Kind;

impl Server {
    /// Closes connection `key`: a session connection closes its session (kernel semantics).
    pub fn close_conn(&mut self, key: u64) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.epoch += 1;
        self.metrics_conn_closed(key);
        let _ = epoll::delete(&self.epoll, &conn.fd);
        self.note_conn_closed(std::os::fd::AsRawFd::as_raw_fd(&conn.fd));
        self.tally
            .sub(conn.cred.uid, 1 + super::reply::waiting_fds(&conn));
        crate::handover::requester_gone(self, key);
        match conn.kind {
            Kind::Device => {
                if self.devices.get(&conn.cred.uid) == Some(&key) {
                    self.devices.remove(&conn.cred.uid);
                }
            }
            Kind::Session(id) => {
                self.sessions.remove(&id);
                let incoming = self.incoming_name(id);
                match self.engine.close_session(id) {
                    Ok(()) => self.incoming_finished(incoming),
                    Err(e) => warn!(error = %e, "closing a session left it behind"),
                }
            }
            Kind::Control | Kind::Detached => {}
        }
        self.bury(conn.fd);
        debug!(key, "connection closed");
    }

    /// Processes every pending message of the device and session connections that hung up,
    /// then closes them, so that a close the client already did is seen before EBUSY/EEXIST is
    /// answered.
    ///
    /// This runs inside another request, so it is fenced: it never nests (a reap inside a reap
    /// does nothing), it looks only at device and session connections (a control connection's
    /// pending requests wait for the loop), and the pending requests it runs are answered but
    /// never start an upgrade, a reboot or a migration (see `Server::on_message`): their
    /// requester is gone.
    pub(crate) fn reap_hung_up(&mut self, only: Option<u64>) -> bool {
        if self.reaping {
            return false;
        }
        self.reaping = true;
        let keys: Vec<u64> = match only {
            Some(k) => vec![k],
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.kind != Kind::Control)
                .map(|(&k, _)| k)
                .collect(),
        };
        let mut any = false;
        for key in keys {
            let hung = self
                .conns
                .get(&key)
                .is_some_and(|c| c.kind != Kind::Control && transport::peer_hung_up(&c.fd));
            if hung {
                self.on_conn(key, epoll::EventFlags::HUP);
                self.close_conn(key);
                any = true;
            }
        }
        self.reaping = false;
        any
    }

    /// Processes a pending hang-up of the connection holding `uid`'s incoming session `name`,
    /// so that an answer caused by that session (EINVAL for a double retrieve, EEXIST for a
    /// handoff) reflects a close the client already did. True if a hang-up was processed.
    pub(crate) fn reap_incoming_holder(&mut self, uid: u32, name: &[u8]) -> bool {
        let holder = self
            .engine
            .sessions()
            .into_iter()
            .find(|s| s.owner == uid && s.name == name && s.direction != Direction::Outgoing)
            .and_then(|s| self.sessions.get(&s.id).copied());
        holder.is_some_and(|key| self.reap_hung_up(Some(key)))
    }
}
