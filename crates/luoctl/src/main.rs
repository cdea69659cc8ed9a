//! luoctl: the command line of luod. A thin shell over `luo-client`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use luo_client::{Control, ErrorKind, SessionSummary, Status};

/// Inspect and steer luod, the userspace Live Update Orchestrator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// luod's socket (default: $LUOD_SOCKET, else /run/luod/luod.sock for root,
    /// $XDG_RUNTIME_DIR/luod.sock otherwise, else /tmp/luod-<uid>/luod.sock). It must be
    /// served by root or by your own uid, or by the uid in $LUOD_SERVER_UID.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generation, sessions, files, preserved bytes, clients, descriptors, uptime.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every session you may see (root: all), one per line.
    Sessions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace luod's binary without losing a session or a connection.
    Upgrade {
        /// The new binary (default: the one luod runs).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Emulate a kernel live update: open sessions become incoming, connections are cut.
    Reboot,
    /// Move a preserved memory file onto new backing (4 KiB, 2 MiB or 1 GiB pages), copying it
    /// with luod's copy engine; the session is incoming (not retrieved) or your own outgoing one.
    Migrate {
        /// The session's name.
        session: String,
        /// The file's token.
        token: u64,
        /// The new page size: 4k, 2m or 1g.
        #[arg(long, value_name = "4k|2m|1g")]
        to: String,
        /// The uid whose session it is (root only; default: yours).
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// luoctl's version and the daemon's.
    Version,
}

/// The page size `4k`, `2m` or `1g` names, in bytes.
fn page_size(name: &str) -> Option<u64> {
    match name.to_ascii_lowercase().as_str() {
        "4k" => Some(4 << 10),
        "2m" => Some(2 << 20),
        "1g" => Some(1 << 30),
        _ => None,
    }
}

/// Runs MIGRATE; on a terminal, a progress bar from luod's STATUS while the copy runs.
fn migrate(
    socket: &std::path::Path,
    control: &Control,
    session: &str,
    token: u64,
    to: &str,
    owner: Option<u32>,
    json: bool,
) -> Result<(), luo_client::Error> {
    let Some(page) = page_size(to) else {
        eprintln!("luoctl: --to takes 4k, 2m or 1g, not {to:?}");
        std::process::exit(2);
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let done = std::sync::Arc::clone(&done);
        let socket = socket.to_owned();
        std::thread::spawn(move || progress_bar(&socket, &done))
    });
    let result = control.migrate(session, token, page, owner);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    let m = result?;
    let secs = m.copy_time.as_secs_f64();
    let gbps = if secs > 0.0 {
        m.bytes as f64 / secs / 1e9
    } else {
        0.0
    };
    if json {
        println!(
            "{{\"session\":{},\"token\":{},\"bytes\":{},\"page_size\":{},\"copy_ms\":{:.3},\"gb_per_s\":{:.2},\"units\":{},\"units_fallback\":{},\"channels\":{}}}",
            json_str(session),
            token,
            m.bytes,
            m.page_size,
            secs * 1e3,
            gbps,
            m.units,
            m.units_fallback,
            m.channels
        );
    } else {
        println!(
            "{session} token {token}: {} MiB onto {} pages in {:.1} ms ({gbps:.2} GB/s), {} channels, {} of {} units fell back to the CPU",
            m.bytes >> 20,
            to.to_ascii_lowercase(),
            secs * 1e3,
            m.channels,
            m.units_fallback,
            m.units
        );
    }
    Ok(())
}

/// Draws `[#####     ] 42%` on standard error from luod's STATUS until `done`.
fn progress_bar(socket: &std::path::Path, done: &std::sync::atomic::AtomicBool) {
    let Ok(ctl) = Control::connect_at(socket) else {
        return;
    };
    let mut drawn = false;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
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
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if drawn {
        eprintln!();
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn print_status(s: &Status, json: bool) {
    if json {
        println!(
            "{{\"pid\":{},\"version\":{},\"generation\":{},\"sessions_outgoing\":{},\"sessions_incoming\":{},\"files\":{},\"bytes\":{},\"clients\":{},\"uptime_ms\":{},\"fd_limit\":{},\"fd_used\":{},\"upgrades\":{},\"last_upgrade_rounds\":{},\"last_upgrade_stop_and_copy\":{},\"migrate_done\":{},\"migrate_total\":{},\"copy_bytes\":{},\"copy_units\":{},\"copy_units_fallback\":{},\"copy_batches_cpu\":{}}}",
            s.pid,
            json_str(&s.version),
            s.generation,
            s.sessions_outgoing,
            s.sessions_incoming,
            s.files,
            s.bytes,
            s.clients,
            s.uptime_ms,
            s.fd_limit,
            s.fd_used,
            s.upgrades,
            s.last_upgrade_rounds,
            s.last_upgrade_stop_and_copy,
            s.migrate_done,
            s.migrate_total,
            s.copy_bytes,
            s.copy_units,
            s.copy_units_fallback,
            s.copy_batches_cpu
        );
        return;
    }
    println!("luod {} (pid {})", s.version, s.pid);
    println!("generation:  {}", s.generation);
    println!(
        "sessions:    {} outgoing, {} incoming",
        s.sessions_outgoing, s.sessions_incoming
    );
    println!("files:       {}", s.files);
    println!("preserved:   {} bytes", s.bytes);
    println!("clients:     {}", s.clients);
    println!("descriptors: {} of {}", s.fd_used, s.fd_limit);
    println!("upgrades:    {}", s.upgrades);
    if s.last_upgrade_rounds > 0 {
        let how = if s.last_upgrade_stop_and_copy {
            "stop and copy"
        } else {
            "prepared while serving"
        };
        println!(
            "last upgrade: {how}, {} successor(s) started",
            s.last_upgrade_rounds
        );
    }
    if s.migrate_total > 0 {
        println!(
            "migrating:   {} of {} MiB copied",
            s.migrate_done >> 20,
            s.migrate_total >> 20
        );
    }
    if s.copy_bytes > 0 {
        println!(
            "copies:      {} MiB in {} units, {} fell back to the CPU, {} batches kept on the CPU",
            s.copy_bytes >> 20,
            s.copy_units,
            s.copy_units_fallback,
            s.copy_batches_cpu
        );
    }
    println!("uptime:      {:.1} s", s.uptime_ms as f64 / 1000.0);
}

fn state(s: &SessionSummary) -> &'static str {
    match (s.incoming, s.retrieved, s.finished) {
        (false, _, _) => "outgoing",
        (true, _, true) => "finished",
        (true, true, false) => "retrieved",
        (true, false, false) => "incoming",
    }
}

fn print_sessions(list: &[SessionSummary], json: bool) {
    if json {
        let items: Vec<String> = list
            .iter()
            .map(|s| {
                format!(
                    "{{\"owner\":{},\"name\":{},\"state\":\"{}\",\"files\":{},\"bytes\":{}}}",
                    s.owner,
                    json_str(&s.name),
                    state(s),
                    s.files,
                    s.bytes
                )
            })
            .collect();
        println!("[{}]", items.join(","));
        return;
    }
    println!(
        "{:>6}  {:<10} {:>6} {:>14}  NAME",
        "UID", "STATE", "FILES", "BYTES"
    );
    for s in list {
        println!(
            "{:>6}  {:<10} {:>6} {:>14}  {}",
            s.owner,
            state(s),
            s.files,
            s.bytes,
            s.name
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = args.socket.unwrap_or_else(luo_client::default_socket);
    let control = match Control::connect_at(&socket) {
        Ok(c) => c,
        Err(e) => {
            if matches!(&args.command, Command::Version) {
                println!("luoctl {}", env!("CARGO_PKG_VERSION"));
            }
            if e.kind == ErrorKind::Call {
                eprintln!(
                    "luoctl: cannot reach luod at {} ({}): is luod running? Start it with `luod`.",
                    socket.display(),
                    e.errno
                );
            } else {
                // A socket luoctl refused: the error names it, its server and the way out.
                eprintln!("luoctl: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Command::Status { json } => control.status().map(|s| print_status(&s, json)),
        Command::Sessions { json } => control.sessions().map(|l| print_sessions(&l, json)),
        Command::Upgrade { binary } => control.upgrade(binary.as_deref()).map(|()| {
            println!("luod upgraded");
        }),
        Command::Reboot => control
            .reboot()
            .map(|()| println!("luod rebooted: open sessions are now incoming")),
        Command::Migrate {
            session,
            token,
            to,
            owner,
            json,
        } => migrate(&socket, &control, &session, token, &to, owner, json),
        Command::Version => control.status().map(|s| {
            println!("luoctl {}", env!("CARGO_PKG_VERSION"));
            println!("luod {} (pid {})", s.version, s.pid);
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luoctl: {e}");
            ExitCode::FAILURE
        }
    }
}
