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
    /// luoctl's version and the daemon's.
    Version,
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
            "{{\"pid\":{},\"version\":{},\"generation\":{},\"sessions_outgoing\":{},\"sessions_incoming\":{},\"files\":{},\"bytes\":{},\"clients\":{},\"uptime_ms\":{},\"fd_limit\":{},\"fd_used\":{},\"upgrades\":{},\"last_upgrade_rounds\":{},\"last_upgrade_stop_and_copy\":{}}}",
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
            s.last_upgrade_stop_and_copy
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
