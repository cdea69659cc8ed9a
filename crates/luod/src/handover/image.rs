//! The daemon's own records in a handover image: settings, listener, lock, connections.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

use anyhow::{Context, anyhow};
use luo_abi::image::ImageWriter;
use luo_core::{Direction, WRITER_VERSION};

use super::{DAEMON_PART, DAEMON_PART_COMPATIBLE};
use crate::conn::Kind;
use crate::server::{Server, Settings};

/// The upgrade image: the engine's state, the listener, the lock and every connection, as the
/// successor of an upgrade starts from it (one upgrade more, and how this one went).
pub(crate) fn upgrade_image(
    server: &Server,
    round: u32,
    flags: u32,
) -> anyhow::Result<(Vec<u8>, Vec<BorrowedFd<'_>>)> {
    daemon_image(
        server,
        server.upgrades + 1,
        &format!("last_upgrade={round} {flags}\n"),
    )
}

/// The whole live state, as an upgrade image or a checkpoint writes it: the engine's state,
/// the daemon's settings with `upgrades` and the `extra` lines, the listener, the lock, every
/// connection, and the keeper's channel and the journal's memfds when the server has them.
pub(crate) fn daemon_image<'a>(
    server: &'a Server,
    upgrades: u64,
    extra: &str,
) -> anyhow::Result<(Vec<u8>, Vec<BorrowedFd<'a>>)> {
    let t0 = Instant::now();
    let mut w = ImageWriter::new(server.engine.generation(), WRITER_VERSION);
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    server
        .engine
        .write_snapshot(&mut w, &mut fds)
        .context("Cannot write the engine's state")?;
    let t1 = Instant::now();
    let mut text = settings_text(&server.settings, upgrades, true);
    text.push_str(extra);
    add_daemon_fds(server, &mut w, &mut fds, &mut text, true)?;
    w.add_part(DAEMON_PART, DAEMON_PART_COMPATIBLE, text.as_bytes())
        .map_err(|e| anyhow!("{e}"))?;
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

pub(crate) fn settings_text(s: &Settings, upgrades: u64, _keep_conns: bool) -> String {
    let mut t = String::new();
    t.push_str(&format!("socket={}\n", s.socket.display()));
    t.push_str(&format!("binary={}\n", s.binary.display()));
    t.push_str(&format!("upgrades={upgrades}\n"));
    let pids: Vec<String> = s.pids.iter().map(i32::to_string).collect();
    t.push_str(&format!("pids={}\n", pids.join(",")));
    for (k, v) in [
        ("sessions", s.limits.sessions),
        ("files", s.limits.files),
        ("bytes", s.limits.bytes),
        ("fds", s.fds.share),
        ("fd_reserve", s.fds.reserve),
    ] {
        if let Some(v) = v {
            t.push_str(&format!("limit.{k}={v}\n"));
        }
    }
    t
}

/// Adds the listener, the lock and (for an upgrade) every connection to the fd table, and
/// describes them in the daemon part's text.
pub(crate) fn add_daemon_fds<'a>(
    server: &'a Server,
    w: &mut ImageWriter,
    fds: &mut Vec<BorrowedFd<'a>>,
    text: &mut String,
    with_conns: bool,
) -> anyhow::Result<()> {
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
    text.push_str(&format!(
        "listener={}\n",
        add(server.listener.as_fd(), Some(S_IFSOCK))?
    ));
    text.push_str(&format!("lock={}\n", add(server.lock.as_fd(), None)?));
    if let Some(keeper) = &server.keeper_channel {
        text.push_str(&format!(
            "keeper={}\n",
            add(keeper.as_fd(), Some(S_IFSOCK))?
        ));
    }
    if with_conns {
        let mut keys: Vec<&u64> = server.conns.keys().collect();
        keys.sort();
        for key in keys {
            let conn = &server.conns[key];
            let index = add(conn.fd.as_fd(), Some(S_IFSOCK))?;
            let (owner_dir, name) = match conn.kind {
                Kind::Session(id) => {
                    let dir = server
                        .engine
                        .direction(id)
                        .context("session of a connection")?;
                    let name = server
                        .engine
                        .session_name(id)
                        .context("session of a connection")?;
                    (
                        if dir == Direction::Outgoing {
                            "out"
                        } else {
                            "in"
                        },
                        name,
                    )
                }
                _ => ("-", &[][..]),
            };
            use std::fmt::Write as _;
            let _ = write!(
                text,
                "conn={index} {} {} {} {} {owner_dir} ",
                conn.kind.code(),
                conn.cred.pid,
                conn.cred.uid,
                conn.cred.gid
            );
            push_hex(text, name);
            text.push('\n');
        }
    }
    Ok(())
}

/// Appends `b` in lowercase hex.
pub(crate) fn push_hex(text: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    text.reserve(b.len() * 2);
    for &x in b {
        text.push(char::from(DIGITS[usize::from(x >> 4)]));
        text.push(char::from(DIGITS[usize::from(x & 15)]));
    }
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}
