//! The reboot emulation: freeze, hand the outgoing sessions to a fresh generation, cut every
//! connection.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, anyhow};
use luo_abi::image::ImageWriter;
use luo_client::transport;
use luo_core::WRITER_VERSION;

use super::image::{add_daemon_fds, settings_text};
use super::spawn::{await_verdict, spawn_successor};
use super::{DAEMON_PART, DAEMON_PART_COMPATIBLE, READY_TIMEOUT};
use crate::server::Server;

/// Reboot emulation: freeze every outgoing session, hand them (and only them) to a fresh
/// server of the next generation, and cut every connection.
pub fn reboot(server: &mut Server) -> anyhow::Result<()> {
    server
        .engine
        .freeze()
        .context("Freezing the outgoing sessions failed; nothing changed")?;
    server.failpoints.pass("reboot-frozen");
    let result = (|| {
        let mut w = ImageWriter::new(server.engine.generation() + 1, WRITER_VERSION);
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        server
            .engine
            .write_reboot(&mut w, &mut fds)
            .context("Cannot write the sessions")?;
        let mut text = settings_text(&server.settings, 0, false);
        add_daemon_fds(server, &mut w, &mut fds, &mut text, false)?;
        w.add_part(DAEMON_PART, DAEMON_PART_COMPATIBLE, text.as_bytes())
            .map_err(|e| anyhow!("{e}"))?;
        let image = w
            .finish()
            .map_err(|e| anyhow!("Cannot lay out the image: {e}"))?;
        let (child, channel) = spawn_successor(&server.settings.binary, &image, &fds)?;
        drop(fds);
        await_verdict(&server.settings.binary, child, channel, READY_TIMEOUT)
    })();
    match result {
        Ok(channel) => {
            server.successor = Some(channel);
            Ok(())
        }
        Err(e) => {
            server.engine.thaw();
            Err(e)
        }
    }
}

/// Tells the successor that waits for this server to end (a stop-and-copy upgrade, a reboot)
/// to start serving.
pub fn release_successor(server: &mut Server) {
    if let Some(channel) = server.successor.take() {
        let _ = transport::send(channel.as_fd(), b"GO", &[]);
    }
}
