//! `luoctl migrate`: MIGRATE, with a progress bar on a terminal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use luo_client::Control;

use crate::exit::Failure;
use crate::json::Object;
use crate::table::printable;

/// The page sizes a file can move onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PageSize {
    /// 4 KiB pages (shmem).
    #[value(name = "4k")]
    K4,
    /// 2 MiB huge pages.
    #[value(name = "2m")]
    M2,
    /// 1 GiB huge pages.
    #[value(name = "1g")]
    G1,
}

impl PageSize {
    /// In bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::K4 => 4 << 10,
            PageSize::M2 => 2 << 20,
            PageSize::G1 => 1 << 30,
        }
    }

    /// As the command line names it.
    pub fn name(self) -> &'static str {
        match self {
            PageSize::K4 => "4k",
            PageSize::M2 => "2m",
            PageSize::G1 => "1g",
        }
    }
}

/// Runs MIGRATE; on a terminal (and without `--json`), a progress bar from luod's STATUS on
/// standard error while the copy runs.
pub fn run(
    socket: &Path,
    session: &str,
    token: u64,
    to: PageSize,
    owner: Option<u32>,
    json: bool,
) -> Result<String, Failure> {
    let control = Control::connect_at(socket).map_err(|e| Failure::of(&e, socket))?;
    let done = Arc::new(AtomicBool::new(false));
    let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let done = Arc::clone(&done);
        let socket = socket.to_owned();
        std::thread::spawn(move || progress_bar(&socket, &done))
    });
    let result = control.migrate(session, token, to.bytes(), owner);
    done.store(true, Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    let m = result.map_err(|e| Failure::of(&e, socket))?;
    let secs = m.copy_time.as_secs_f64();
    let gbps = if secs > 0.0 {
        m.bytes as f64 / secs / 1e9
    } else {
        0.0
    };
    if json {
        let o = Object::new()
            .str("session", session)
            .uint("token", token)
            .uint("bytes", m.bytes)
            .uint("page_size", m.page_size)
            .fixed("copy_ms", secs * 1e3, 3)
            .fixed("gb_per_s", gbps, 2)
            .uint("units", m.units)
            .uint("units_fallback", m.units_fallback)
            .uint("channels", m.channels.into());
        return Ok(format!("{}\n", o.finish()));
    }
    Ok(format!(
        "{} token {token}: {} MiB onto {} pages in {:.1} ms ({gbps:.2} GB/s), {} channels, {} of \
         {} units fell back to the CPU\n",
        printable(session),
        m.bytes >> 20,
        to.name(),
        secs * 1e3,
        m.channels,
        m.units_fallback,
        m.units
    ))
}

/// Draws `[#####     ] 42%` on standard error from luod's STATUS until `done`.
fn progress_bar(socket: &Path, done: &AtomicBool) {
    let Ok(ctl) = Control::connect_at(socket) else {
        return;
    };
    let mut drawn = false;
    while !done.load(Ordering::Relaxed) {
        if let Ok(s) = ctl.status()
            && s.migrate_total >= 64 << 20
        {
            let pct = s.migrate_done.saturating_mul(100) / s.migrate_total;
            let filled = (pct / 5) as usize;
            eprint!(
                "\r[{}{}] {pct:>3}% {}/{} MiB",
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20)),
                s.migrate_done >> 20,
                s.migrate_total >> 20
            );
            drawn = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if drawn {
        eprintln!();
    }
}
