//! Replies and back-pressure: a reply the socket has no room for waits in its connection's
//! outbox, and the connection is not read until the outbox drains.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use luo_abi::Errno;
use luo_abi::wire;
use luo_client::transport;
use rustix::event::epoll;
use tracing::{debug, warn};

use super::{HANDOVER_FLUSH_MS, Server};
use crate::conn::{Conn, Outgoing};

/// A reply to send: errno, argument bytes and descriptors.
#[derive(Debug, Default)]
pub struct Reply {
    pub errno: i32,
    pub arg: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    pub fn ok(arg: Vec<u8>) -> Reply {
        Reply {
            errno: 0,
            arg,
            fds: Vec::new(),
        }
    }
    pub fn err(e: Errno) -> Reply {
        Reply {
            errno: e.raw(),
            arg: Vec::new(),
            fds: Vec::new(),
        }
    }
    pub fn err_msg(e: Errno, msg: &str) -> Reply {
        Reply {
            errno: e.raw(),
            arg: msg.as_bytes().to_vec(),
            fds: Vec::new(),
        }
    }
}

impl Server {
    /// Sends what waits in connection `key`'s outbox, as far as the socket takes it. True if
    /// nothing waits any more (the connection is read again); false if something still does,
    /// or the connection failed and was closed.
    pub(crate) fn flush(&mut self, key: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        if !conn.paused() {
            return true;
        }
        while let Some(out) = conn.outbox.front() {
            let sent = {
                let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
                transport::send(conn.fd.as_fd(), &out.bytes, &fds)
            };
            match sent {
                Ok(()) => {
                    // The request it answers is at the head of the socket: take it off.
                    let _ = transport::discard(conn.fd.as_fd());
                    if let Some(out) = conn.outbox.pop_front() {
                        self.tally.sub(conn.cred.uid, out.fds.len() as u64);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return false,
                Err(e) => {
                    debug!(key, error = %e, "reply not delivered; dropping connection");
                    self.close_conn(key);
                    return false;
                }
            }
        }
        self.resume(key);
        true
    }

    /// Stops reading connection `key` and watches it for room for its waiting replies.
    pub(crate) fn pause(&mut self, key: u64) {
        if let Some(conn) = self.conns.get(&key) {
            debug!(key, "client does not read its replies; pausing it");
            // Only OUT: a hang-up is reported anyway (EPOLLHUP), and a peer that shut down
            // its sending side only must not wake the loop while it does not read.
            let _ = epoll::modify(
                &self.epoll,
                &conn.fd,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::OUT,
            );
        }
    }

    /// Reads connection `key` again: its outbox is empty.
    pub(crate) fn resume(&mut self, key: u64) {
        if let Some(conn) = self.conns.get(&key) {
            debug!(key, "client read its replies; resuming it");
            let _ = epoll::modify(
                &self.epoll,
                &conn.fd,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            );
        }
    }

    /// Before luod hands itself over or exits: delivers the replies waiting in the outboxes
    /// (of connection `only`, or of every connection), waiting for room up to
    /// [`HANDOVER_FLUSH_MS`] in all. A connection whose replies cannot be delivered by then is
    /// closed.
    pub fn deliver_waiting(&mut self, only: Option<u64>) {
        let deadline = Instant::now() + std::time::Duration::from_millis(HANDOVER_FLUSH_MS);
        let keys: Vec<u64> = match only {
            Some(k) => vec![k],
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.paused())
                .map(|(&k, _)| k)
                .collect(),
        };
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let mut failed = None;
            while let Some(out) = conn.outbox.pop_front() {
                self.tally.sub(conn.cred.uid, out.fds.len() as u64);
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(AsFd::as_fd).collect();
                if let Err(e) = transport::send_wait(conn.fd.as_fd(), &out.bytes, &fds, ms) {
                    failed = Some(e);
                    break;
                }
                let _ = transport::discard(conn.fd.as_fd());
            }
            match failed {
                Some(e) => {
                    warn!(key, error = %e, "replies not delivered before the handover; dropping connection");
                    self.close_conn(key);
                }
                None => self.resume(key),
            }
        }
    }

    /// Sends a reply without waiting. If the socket has no room (its peer does not read), or
    /// earlier replies still wait, the reply joins the connection's outbox and the connection
    /// is paused until the outbox drains (see [`on_conn`](Self::on_conn)). A connection whose
    /// peer is gone is closed.
    /// The request just answered on connection `key` leaves its socket (it was only peeked),
    /// and the connection may be read again.
    fn consume(&mut self, key: u64) {
        if let Some(conn) = self.conns.get(&key) {
            let _ = transport::discard(conn.fd.as_fd());
        }
        self.set_busy(key, false);
    }

    pub fn send_reply(&mut self, key: u64, id: u64, reply: Reply) {
        self.metrics_reply(key, reply.errno);
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut out = std::mem::take(&mut self.tx);
        out.clear();
        wire::write_reply(&mut out, reply.errno, id, &reply.arg);
        let sent = if conn.paused() {
            Err(rustix::io::Errno::AGAIN)
        } else {
            let fds: Vec<BorrowedFd<'_>> = reply.fds.iter().map(AsFd::as_fd).collect();
            transport::send(conn.fd.as_fd(), &out, &fds)
        };
        match sent {
            Ok(()) => {
                self.tx = out;
                if self.replying_to_change {
                    self.failpoints.pass("after-reply");
                }
                self.consume(key);
            }
            Err(rustix::io::Errno::AGAIN) => {
                self.tally.add(conn.cred.uid, reply.fds.len() as u64);
                conn.outbox.push_back(Outgoing {
                    bytes: out,
                    fds: reply.fds,
                });
                if conn.outbox.len() == 1 {
                    self.pause(key);
                }
            }
            Err(e) => {
                debug!(key, error = %e, "reply not delivered; dropping connection");
                self.tx = out;
                self.close_conn(key);
            }
        }
    }
}

/// Descriptors of the replies waiting in `conn`'s outbox.
pub(crate) fn waiting_fds(conn: &Conn) -> u64 {
    conn.outbox.iter().map(|o| o.fds.len() as u64).sum()
}
