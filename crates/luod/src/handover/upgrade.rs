//! The orchestrator upgrade: a successor prepares from an image while this server serves.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::anyhow;
use luo_abi::Errno;
use luo_abi::wire::UPGRADE_STOP_AND_COPY;
use luo_client::transport::{self, Recv};
use tracing::{info, warn};

use super::READY_TIMEOUT;
use super::image::upgrade_image;
use super::spawn::{Successor, await_verdict, refusal, spawn_successor};
use crate::server::{Ended, Reply, Server};

/// Orchestrator upgrade, stop and copy: hand everything, connections included, to `binary`
/// while this server waits. The last resort of [`begin_upgrade`]'s rounds.
pub fn upgrade(server: &mut Server, binary: &Path, round: u32) -> anyhow::Result<()> {
    // Stop and copy: this server serves nothing from here until its successor does.
    server.metrics_pause();
    let t0 = Instant::now();
    let (image, fds) = upgrade_image(server, round, UPGRADE_STOP_AND_COPY)?;
    let written = t0.elapsed().as_secs_f64() * 1e3;
    let (child, channel) = spawn_successor(binary, &image, &fds)?;
    drop(fds);
    let channel = await_verdict(binary, child, channel, READY_TIMEOUT)?;
    info!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        image_ms = written,
        bytes = image.len(),
        "successor ready (stop and copy)"
    );
    server.successor = Some(channel);
    Ok(())
}

/// An upgrade in progress: a successor prepares itself from an image of this server's state
/// while this server keeps serving. The image stays true as long as [`Server::epoch`] does not
/// move; the successor's "READY" is taken only then.
#[derive(Debug)]
pub struct Staging {
    /// The connection that asked for the upgrade, and its request id.
    requester: u64,
    id: u64,
    binary: PathBuf,
    /// 1 for the first successor, 2 for the next one after a change, …
    round: u32,
    /// [`Server::epoch`] when the image was written.
    epoch: u64,
    /// The handover channel, watched by the server's epoll loop.
    pub channel: OwnedFd,
    child: Successor,
    /// When the upgrade was asked for, and when this round's successor must have answered.
    started: Instant,
    deadline: Instant,
}

impl Staging {
    /// Time left before the successor of this round is given up on (rounded up to the next
    /// millisecond, so the loop wakes after the deadline, not just before it).
    pub fn time_left(&self) -> rustix::event::Timespec {
        let left = self.deadline.saturating_duration_since(Instant::now())
            + std::time::Duration::from_millis(1);
        rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    }
}

/// Rounds of preparation in the background before an upgrade falls back to stop and copy.
pub(crate) const STAGED_ROUNDS: u32 = 3;

/// Starts an upgrade asked for by request `id` of connection `requester`: writes the image,
/// starts `binary` on it and returns to serving. The answer is sent later, by
/// [`on_successor`] or [`on_timeout`].
pub fn begin_upgrade(server: &mut Server, requester: u64, id: u64, binary: PathBuf) {
    if server.staging.is_some() {
        server.send_reply(
            requester,
            id,
            Reply::err_msg(Errno::EBUSY, "An upgrade is already in progress"),
        );
        return;
    }
    crate::systemd::reloading(server);
    stage_round(server, requester, id, binary, 1, Instant::now());
}

pub(crate) fn stage_round(
    server: &mut Server,
    requester: u64,
    id: u64,
    binary: PathBuf,
    round: u32,
    started: Instant,
) {
    // Replies waiting in an outbox cannot travel in the image: deliver them first.
    server.deliver_waiting(None);
    let t0 = Instant::now();
    let mut image_ms = 0.0;
    let spawned = upgrade_image(server, round, 0).and_then(|(image, fds)| {
        image_ms = t0.elapsed().as_secs_f64() * 1e3;
        spawn_successor(&binary, &image, &fds)
    });
    match spawned {
        Ok((child, channel)) => {
            server.failpoints.pass("upgrade-staged");
            info!(
                round,
                image_ms,
                ms = t0.elapsed().as_secs_f64() * 1e3,
                "successor started; serving while it prepares"
            );
            let staging = Staging {
                requester,
                id,
                binary,
                round,
                epoch: server.epoch,
                channel,
                child,
                started,
                deadline: Instant::now() + READY_TIMEOUT,
            };
            if let Err(e) = server.watch_successor(&staging.channel) {
                fail(
                    server,
                    staging,
                    anyhow!("Cannot watch the handover channel: {e}"),
                );
                return;
            }
            server.staging = Some(staging);
        }
        Err(e) => refuse(server, requester, id, &e),
    }
}

/// The successor of the staged upgrade said something (or went away).
pub fn on_successor(server: &mut Server) {
    let Some(staging) = server.staging.take() else {
        return;
    };
    let msg = match transport::recv(staging.channel.as_fd(), false) {
        Ok(Recv::WouldBlock) => {
            server.staging = Some(staging);
            return;
        }
        Ok(Recv::Message(m)) => m,
        Ok(Recv::Closed) | Err(_) => {
            let status = staging.child.wait();
            let e = anyhow!("The new server exited before confirming ({status})");
            server.unwatch_successor(&staging.channel);
            refuse(server, staging.requester, staging.id, &e);
            return;
        }
    };
    server.unwatch_successor(&staging.channel);
    if msg.bytes != b"READY" {
        staging.child.wait();
        let e = refusal(&staging.binary, &msg.bytes);
        refuse(server, staging.requester, staging.id, &e);
        return;
    }
    server.failpoints.pass("upgrade-ready");
    // Replies that went to an outbox since the image (read-only requests do not move the
    // epoch) must leave before this server does; closing a connection that cannot take them
    // moves the epoch.
    server.deliver_waiting(None);
    if staging.epoch == server.epoch {
        // Nothing changed since the image was written: the successor is exact. Answer,
        // let it go, and leave.
        info!(
            round = staging.round,
            ms = staging.started.elapsed().as_secs_f64() * 1e3,
            binary = %staging.binary.display(),
            "upgrade confirmed by the new server; exiting"
        );
        // The successor first: from here on it serves. Then the answer (the requester waits
        // on its connection and sends nothing else meanwhile), at the lowest priority, so
        // that this process's exit (closing every descriptor) does not take a CPU from it.
        // The answer first, and the request taken off its socket, so that the successor
        // never reads it; then the successor serves, while this process exits at the lowest
        // priority (closing every descriptor takes time), so as not to take a CPU from it.
        server.metrics_pause();
        server.send_reply(staging.requester, staging.id, Reply::ok(Vec::new()));
        server.deliver_waiting(Some(staging.requester));
        let _ = transport::send(staging.channel.as_fd(), b"GO", &[]);
        server.failpoints.pass("upgrade-go");
        let _ = rustix::process::setpriority_process(None, 19);
        server.ended = Some(Ended::HandedOver);
        return;
    }
    // The state moved on while the successor prepared: its image is stale. Start over, or
    // stop and copy after enough rounds.
    info!(
        round = staging.round,
        "state changed while the successor prepared; discarding it"
    );
    let Staging {
        requester,
        id,
        binary,
        round,
        started,
        child,
        channel,
        ..
    } = staging;
    discard(server, child, channel);
    if round < STAGED_ROUNDS {
        stage_round(server, requester, id, binary, round + 1, started);
        return;
    }
    server.deliver_waiting(None);
    match upgrade(server, &binary, round + 1) {
        Ok(()) => {
            info!(binary = %binary.display(), "upgrade confirmed by the new server; exiting");
            server.send_reply(requester, id, Reply::ok(Vec::new()));
            server.deliver_waiting(Some(requester));
            server.ended = Some(Ended::HandedOver);
        }
        Err(e) => refuse(server, requester, id, &e),
    }
}

/// The successor of the staged upgrade did not answer in time.
pub fn on_timeout(server: &mut Server) {
    if let Some(staging) = server.staging.take_if(|s| s.deadline <= Instant::now()) {
        server.unwatch_successor(&staging.channel);
        let e = anyhow!(
            "The new server did not confirm within {} s",
            READY_TIMEOUT.as_secs()
        );
        fail(server, staging, e);
    }
}

/// Connection `key` closed: if it asked for the upgrade in progress, the upgrade is cancelled
/// (nobody waits for its answer any more; closing `luoctl upgrade` stops it).
pub fn requester_gone(server: &mut Server, key: u64) {
    if let Some(staging) = server.staging.take_if(|s| s.requester == key) {
        server.unwatch_successor(&staging.channel);
        info!(
            round = staging.round,
            "the upgrade's requester went away; upgrade cancelled"
        );
        discard(server, staging.child, staging.channel);
    }
}

/// Gives up on a staged successor and answers the requester with `e`.
pub(crate) fn fail(server: &mut Server, staging: Staging, e: anyhow::Error) {
    let (requester, id) = (staging.requester, staging.id);
    discard(server, staging.child, staging.channel);
    refuse(server, requester, id, &e);
}

/// Ends a successor that will not be used; it is reaped later, without waiting here.
pub(crate) fn discard(server: &mut Server, child: Successor, channel: OwnedFd) {
    child.kill();
    drop(channel);
    server.reap_later(child);
}

pub(crate) fn refuse(server: &mut Server, requester: u64, id: u64, e: &anyhow::Error) {
    server.metrics_upgrade_failed();
    warn!(error = %format!("{e:#}"), "upgrade refused; this server keeps running");
    server.send_reply(
        requester,
        id,
        Reply::err_msg(Errno::EAGAIN, &format!("{e:#}")),
    );
}
