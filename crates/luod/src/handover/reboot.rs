//! The reboot emulation: freeze, hand the outgoing sessions to a fresh generation, cut every
//! connection.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, anyhow};
use luo_abi::image::ImageWriter;
use luo_client::transport;
use luo_core::WRITER_VERSION;

use super::READY_TIMEOUT;
use super::image::daemon_state;
use super::spawn::{await_verdict, spawn_successor};
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
        daemon_state(server, &mut w, &mut fds, 0, (0, 0), false)?.write(&mut w)?;
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
