//! The daemon's own records in a handover image: settings, listener, lock, connections.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

use anyhow::{Context, anyhow};
use luo_abi::image::ImageWriter;
use luo_core::{Direction, WRITER_VERSION};

use super::records::{ConnState, DaemonState};
use crate::conn::Kind;
use crate::server::Server;

/// The upgrade image: the engine's state, the listener, the lock and every connection, as the
/// successor of an upgrade starts from it (one upgrade more, and how this one went).
pub(crate) fn upgrade_image(
    server: &Server,
    round: u32,
    flags: u32,
) -> anyhow::Result<(Vec<u8>, Vec<BorrowedFd<'_>>)> {
    daemon_image(server, server.upgrades + 1, (round, flags), 0)
}

/// The whole live state, as an upgrade image or a checkpoint writes it: the engine's state,
/// the daemon's settings with `upgrades` and `last_upgrade`, the listener, the lock, every
/// connection, the keeper's channel, and where the journal starts (`journal_from`).
pub(crate) fn daemon_image<'a>(
    server: &'a Server,
    upgrades: u64,
    last_upgrade: (u32, u32),
    journal_from: u64,
) -> anyhow::Result<(Vec<u8>, Vec<BorrowedFd<'a>>)> {
    let t0 = Instant::now();
    let mut w = ImageWriter::new(server.engine.generation(), WRITER_VERSION);
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    server
        .engine
        .write_snapshot(&mut w, &mut fds)
        .context("Cannot write the engine's state")?;
    let t1 = Instant::now();
    let state = daemon_state(server, &mut w, &mut fds, upgrades, last_upgrade, true)?;
    DaemonState {
        journal_from,
        ..state
    }
    .write(&mut w)?;
    let t2 = Instant::now();
    let image = w
        .finish()
        .map_err(|e| anyhow!("Cannot lay out the image: {e}"))?;
    tracing::debug!(
        engine_ms = (t1 - t0).as_secs_f64() * 1e3,
        daemon_ms = (t2 - t1).as_secs_f64() * 1e3,
        layout_ms = t2.elapsed().as_secs_f64() * 1e3,
        "image written"
    );
    Ok((image, fds))
}

/// The daemon's records of `server`: its settings, and the listener, the lock, the keeper's
/// channel and (`with_conns`: an upgrade) every connection, added to the fd table.
pub(crate) fn daemon_state<'a>(
    server: &'a Server,
    w: &mut ImageWriter,
    fds: &mut Vec<BorrowedFd<'a>>,
    upgrades: u64,
    last_upgrade: (u32, u32),
    with_conns: bool,
) -> anyhow::Result<DaemonState> {
    // Connections and the listener are sockets by construction; only the lock is looked at.
    use luo_abi::image::S_IFSOCK;
    let mut add = |fd: BorrowedFd<'a>, mode: Option<u32>| -> anyhow::Result<u32> {
        let mode = match mode {
            Some(m) => m,
            None => rustix::fs::fstat(fd)?.st_mode & luo_abi::image::S_IFMT,
        };
        let i = w.add_fd(fd.as_raw_fd(), mode);
        fds.push(fd);
        Ok(i)
    };
    let listener = add(server.listener.as_fd(), Some(S_IFSOCK))?;
    let lock = add(server.lock.as_fd(), None)?;
    let keeper = match &server.keeper_channel {
        Some(k) => Some(add(k.as_fd(), Some(S_IFSOCK))?),
        None => None,
    };
    let metrics = match &server.metrics {
        Some(m) => {
            let [listener, counters] = crate::metrics::image_fds(m);
            Some(crate::metrics::Record {
                listener: add(listener, Some(S_IFSOCK))?,
                counters: add(counters, Some(luo_abi::image::S_IFREG))?,
                addr: m.addr.clone(),
            })
        }
        None => None,
    };
    let mut conns = Vec::new();
    if with_conns {
        let mut keys: Vec<&u64> = server.conns.keys().collect();
        keys.sort();
        for key in keys {
            let conn = &server.conns[key];
            let index = add(conn.fd.as_fd(), Some(S_IFSOCK))?;
            let (incoming, name) = match conn.kind {
                Kind::Session(id) => {
                    let dir = server
                        .engine
                        .direction(id)
                        .context("session of a connection")?;
                    let name = server
                        .engine
                        .session_name(id)
                        .context("session of a connection")?;
                    (dir != Direction::Outgoing, name.to_vec())
                }
                _ => (false, Vec::new()),
            };
            conns.push(ConnState {
                index,
                kind: conn.kind.code(),
                cred: conn.cred,
                incoming,
                name,
            });
        }
    }
    Ok(DaemonState {
        settings: server.settings.clone(),
        upgrades,
        last_upgrade,
        listener,
        lock,
        keeper,
        journal_from: 0,
        conns,
        metrics,
    })
}
