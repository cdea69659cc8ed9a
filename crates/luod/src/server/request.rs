//! One request: framing checks, then the kernel uAPI or a native operation, then what the loop
//! does after it.

use super::{After, Ended, KEY_MIGRATION, Reply, Server};
use luo_abi::Errno;
use luo_abi::uapi;
use luo_abi::wire::{self, Op};
use luo_client::transport::Incoming;
use rustix::event::epoll;
use std::os::fd::{AsFd, AsRawFd};
use tracing::{debug, info, warn};

impl Server {
    pub(crate) fn on_message(&mut self, key: u64, bytes: &[u8], msg: Incoming) {
        let (hdr, arg) = match wire::parse_request(bytes) {
            Ok(v) => v,
            Err(e) => {
                let e = if msg.truncated { Errno::EMSGSIZE } else { e };
                self.metrics_request(key, None);
                self.send_reply(key, 0, Reply::err(e));
                return;
            }
        };
        let id = hdr.id.get();
        self.metrics_request(key, Some(hdr.op.get()));
        if msg.truncated || msg.fds_truncated {
            let reply = if msg.truncated {
                Reply::err(Errno::EMSGSIZE)
            } else if msg.fds.len() < wire::MAX_FDS {
                // The kernel could not install a descriptor in luod's table (MSG_CTRUNC with
                // fewer than the most a message carries): luod's problem, not the request's.
                Reply::err_msg(Errno::EMFILE, FDS_NOT_RECEIVED)
            } else {
                Reply::err(Errno::EINVAL)
            };
            self.send_reply(key, id, reply);
            return;
        }
        let op = hdr.op.get();
        if self.reaping
            && matches!(
                Op::from_raw(op),
                Some(Op::Upgrade | Op::Reboot | Op::Migrate | Op::Kexec)
            )
        {
            // Read while a hung-up connection is reaped inside another request: its requester
            // is gone, and a handover or a migration must not start nested in a request.
            debug!(key, op, "request of a closed connection dropped");
            if let Some(conn) = self.conns.get(&key) {
                let _ = luo_client::transport::discard(conn.fd.as_fd());
            }
            return;
        }
        if !read_only(op) {
            self.epoch += 1;
        }
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let (kind, cred) = (conn.kind, conn.cred);
        let (reply, after) = if let Some(native) = Op::from_raw(op) {
            self.native_op(key, kind, cred, native, arg, msg.fds)
        } else {
            (self.kernel_op(kind, cred, op, arg, msg.fds), After::Nothing)
        };
        match after {
            After::Nothing if read_only(op) => self.send_reply(key, id, reply),
            After::Nothing => {
                self.failpoints.pass("after-apply");
                self.journal_reply(key, id, &reply);
                self.replying_to_change = true;
                self.send_reply(key, id, reply);
                self.replying_to_change = false;
            }
            // Migrate, upgrade and reboot answer once they have run; until then the
            // connection is not read.
            after => {
                self.set_busy(key, true);
                self.after(key, id, after);
            }
        }
    }

    /// Makes the reply to request `id` of connection `key` durable with the changes the
    /// request made: after this, a server that dies does not apply the request again, and
    /// its successor sends this reply if the request is still unread.
    pub(crate) fn journal_reply(&mut self, key: u64, id: u64, reply: &Reply) {
        if self.durable.is_none() {
            return;
        }
        let Some(conn) = self.conns.get(&key) else {
            self.commit_changes(None);
            return;
        };
        let applied = crate::journal::Delta::Applied {
            conn: conn.fd.as_raw_fd(),
            id,
            errno: reply.errno,
            arg: reply.arg.clone(),
            fds: reply.fds.iter().map(AsRawFd::as_raw_fd).collect(),
        };
        self.commit_changes(Some(applied));
        self.failpoints.pass("after-journal");
    }

    /// Marks connection `key` as having a request in progress (not read meanwhile), or not.
    pub(crate) fn set_busy(&mut self, key: u64, busy: bool) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.busy == busy {
            return;
        }
        conn.busy = busy;
        let events = if busy {
            // Only a hang-up: the unread request would wake the loop for ever.
            epoll::EventFlags::RDHUP
        } else if conn.paused() {
            epoll::EventFlags::OUT
        } else {
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP
        };
        let _ = epoll::modify(
            &self.epoll,
            &conn.fd,
            epoll::EventData::new_u64(key),
            events,
        );
    }

    pub(crate) fn after(&mut self, key: u64, id: u64, after: After) {
        match after {
            After::Nothing => {}
            After::Upgrade(_) | After::Reboot if self.migration.is_some() => self.send_reply(
                key,
                id,
                Reply::err_msg(Errno::EBUSY, "A migration is in progress"),
            ),
            After::Migrate(m) => {
                let mut m = *m;
                m.id = id;
                match epoll::add(
                    &self.epoll,
                    &m.done,
                    epoll::EventData::new_u64(KEY_MIGRATION),
                    epoll::EventFlags::IN,
                ) {
                    Ok(()) => self.migration = Some(m),
                    Err(e) => {
                        // Cannot learn when it ends: wait for it here.
                        warn!(error = %e, "cannot watch the migration; waiting for it");
                        let reply = crate::migrate::finish(self, m);
                        self.send_reply(key, id, reply);
                    }
                }
            }
            After::Upgrade(path) => crate::handover::begin_upgrade(self, key, id, path),
            After::Kexec(flags) => self.kexec(key, id, flags),
            After::Reboot if self.staging.is_some() => self.send_reply(
                key,
                id,
                Reply::err_msg(Errno::EBUSY, "An upgrade is in progress"),
            ),
            After::Reboot => {
                let reply = match crate::handover::reboot(self) {
                    Ok(()) => {
                        info!("reboot handed over; cutting every connection and exiting");
                        self.metrics_hand_over();
                        self.send_reply(key, id, Reply::ok(Vec::new()));
                        self.deliver_waiting(Some(key));
                        // A reboot cuts every connection. Exiting does not close them: this
                        // server's holder shares its descriptor table until the successor
                        // serves. Closing them here does (nothing else holds them).
                        self.conns.clear();
                        self.ended = Some(Ended::HandedOver);
                        return;
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "reboot failed; sessions unfrozen, this server keeps running");
                        Reply::err_msg(Errno::EAGAIN, &format!("{e:#}"))
                    }
                };
                self.send_reply(key, id, reply);
            }
        }
    }
}

/// The answer to a request whose descriptor luod could not receive.
pub const FDS_NOT_RECEIVED: &str =
    "luod could not receive the descriptor: its descriptor table is full";

/// True for the requests that change nothing an upgrade image records.
pub(crate) fn read_only(op: u32) -> bool {
    matches!(
        Op::from_raw(op),
        Some(Op::Ping | Op::Status | Op::List | Op::Upgrade | Op::Failpoint)
    ) || op == uapi::LIVEUPDATE_SESSION_GET_NAME
}
