//! The event loop: one thread, one epoll, every connection non-blocking.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use luo_abi::wire;
use luo_client::transport::{self, Recv};
use rustix::event::epoll;
use tracing::{info, warn};

use super::{BURST, KEY_KEEPER, KEY_MIGRATION, KEY_SIGNAL, KEY_SUCCESSOR, Server};
use crate::listener::KEY_LISTENER;

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM or SIGINT: luod shuts down, and every preserved file goes with it.
    Shutdown,
    /// A successor serves from here on (an upgrade or a reboot). The process must exit at once
    /// without running destructors: the successor holds the same open files, and nothing of
    /// theirs may be undone on the way out.
    HandedOver,
}

impl Server {
    /// Runs until SIGTERM/SIGINT or a handover, and says which.
    pub fn run(&mut self) -> anyhow::Result<Ended> {
        let mut events = Vec::with_capacity(256);
        while self.ended.is_none() {
            events.clear();
            self.reap_zombies();
            crate::listener::resume(self);
            self.metrics_tick();
            let timeout = self.wait_timeout();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                let key = ev.data.u64();
                match key {
                    KEY_LISTENER => crate::listener::accept_all(self),
                    KEY_SIGNAL => self.on_signal(),
                    KEY_SUCCESSOR => crate::handover::on_successor(self),
                    KEY_MIGRATION => self.on_migrated(),
                    KEY_KEEPER => self.on_keeper(),
                    k if crate::metrics::owns_key(k) => crate::metrics::on_event(self, k, ev.flags),
                    _ => self.on_conn(key, ev.flags),
                }
                // What changed outside a request (a connection accepted or closed, a session
                // closed with it) is journaled before anything else happens.
                self.commit_changes(None);
                if self.ended.is_some() {
                    break;
                }
            }
            crate::handover::on_timeout(self);
            crate::systemd::tick(self);
        }
        let ended = self.ended.unwrap_or(Ended::Shutdown);
        match ended {
            Ended::Shutdown => self.shutdown(),
            Ended::HandedOver => crate::handover::release_successor(self),
        }
        Ok(ended)
    }

    /// The migration in progress finished copying: swap the file in and answer.
    pub(crate) fn on_migrated(&mut self) {
        let Some(m) = self.migration.take() else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &m.done);
        let (key, id) = (m.key, m.id);
        let reply = crate::migrate::finish(self, m);
        self.metrics_fold_copy();
        if reply.errno == 0 {
            info!(key, "migration done");
        } else {
            warn!(
                key,
                errno = reply.errno,
                "migration failed; the old file stays"
            );
        }
        self.epoch += 1;
        self.journal_reply(key, id, &reply);
        self.send_reply(key, id, reply);
    }

    /// Watches the handover channel of a staged upgrade.
    pub fn watch_successor(&self, channel: &OwnedFd) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            channel,
            epoll::EventData::new_u64(KEY_SUCCESSOR),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
    }

    /// Stops watching it.
    pub fn unwatch_successor(&self, channel: &OwnedFd) {
        let _ = epoll::delete(&self.epoll, channel);
    }

    /// Keeps a discarded successor until it has exited.
    pub fn reap_later(&mut self, child: crate::handover::Successor) {
        self.zombies.push(child);
    }

    pub(crate) fn reap_zombies(&mut self) {
        if !self.zombies.is_empty() {
            self.zombies.retain(|c| !c.try_reap());
        }
    }

    /// Watches the keeper's channel: a keeper that is gone leaves nobody to start a server
    /// after a crash, and nobody for a service manager to stop; this server then stops too.
    pub fn watch_keeper(&self) {
        if let Some(k) = &self.keeper_channel {
            let _ = epoll::add(
                &self.epoll,
                k,
                epoll::EventData::new_u64(KEY_KEEPER),
                // A hang-up only: this end is shared with every server of the lineage (a
                // successor gets its HOLDER answer on it), so this server never reads it.
                epoll::EventFlags::RDHUP,
            );
        }
    }

    fn on_keeper(&mut self) {
        let Some(k) = &self.keeper_channel else {
            return;
        };
        if transport::peer_hung_up(k) {
            warn!("the keeper is gone (killed?); this server stops, as after SIGTERM");
            self.ended = Some(Ended::Shutdown);
        } else {
            // Not a hang-up (spurious): stop listening rather than spin.
            let _ = epoll::delete(&self.epoll, k);
        }
    }

    pub(crate) fn on_signal(&mut self) {
        let mut buf = [0u8; 64];
        let _ = rustix::io::read(&self.signals, &mut buf);
        info!("SIGTERM received: shutting down");
        self.ended = Some(Ended::Shutdown);
    }

    pub(crate) fn shutdown(&mut self) {
        let usage = self.engine.total_usage();
        if crate::systemd::stopping(self) {
            info!(
                sessions = usage.sessions,
                files = usage.files,
                bytes = usage.bytes,
                "Shutting down; every preserved session and file stays in systemd's descriptor store"
            );
            return;
        }
        if usage.sessions > 0 {
            warn!(
                sessions = usage.sessions,
                files = usage.files,
                bytes = usage.bytes,
                "Shutting down drops every preserved session and file"
            );
        }
        if !crate::systemd::socket_activated() {
            let _ = std::fs::remove_file(&self.settings.socket);
        }
        self.metrics_shutdown();
    }

    /// How long the loop may wait: until a staged upgrade's deadline or the end of the
    /// listener's pause, whichever comes first.
    pub(crate) fn wait_timeout(&self) -> Option<rustix::event::Timespec> {
        let staging = self
            .staging
            .as_ref()
            .map(crate::handover::Staging::time_left);
        let paused = self
            .admission
            .time_left(Instant::now())
            .map(|left| rustix::event::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            });
        let systemd = crate::systemd::timeout(self).map(|left| rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        });
        let scrapes = self
            .metrics
            .as_ref()
            .and_then(|m| m.time_left(Instant::now()))
            .map(|left| rustix::event::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            });
        [staging, paused, scrapes, systemd]
            .into_iter()
            .flatten()
            .min_by_key(|t| (t.tv_sec, t.tv_nsec))
    }

    pub(crate) fn on_conn(&mut self, key: u64, flags: epoll::EventFlags) {
        // Replies waiting for room go first; until they are all out the connection is not
        // read, so a client that does not read its replies stops being served instead of
        // stalling everyone.
        if !self.flush(key) {
            if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                self.close_conn(key);
            }
            return;
        }
        // A nested call (`reap_hung_up` while a message is handled) finds the buffer taken.
        let mut rx = std::mem::take(&mut self.rx);
        if rx.len() != wire::MAX_MESSAGE {
            rx = vec![0; wire::MAX_MESSAGE];
        }
        for _ in 0..BURST {
            let Some(conn) = self.conns.get(&key) else {
                break;
            };
            if conn.held() {
                if conn.busy
                    && flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP)
                    && transport::peer_hung_up(&conn.fd)
                {
                    self.close_conn(key);
                }
                break;
            }
            // Peeked, not taken: the request leaves the socket once its reply is sent.
            match transport::peek_into(conn.fd.as_fd(), &mut rx) {
                Ok(Recv::Message(msg)) => self.on_message(key, &rx[..msg.len], msg),
                Ok(Recv::WouldBlock) => {
                    if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP)
                        && transport::peer_hung_up(&conn.fd)
                    {
                        self.close_conn(key);
                    }
                    break;
                }
                Ok(Recv::Closed) | Err(_) => {
                    self.close_conn(key);
                    break;
                }
            }
        }
        self.rx = rx;
    }
}
