//! luoctl: the command line of luod. A thin shell over `luo-client`.
//!
//! [`Args`] and [`Command`] define the command line (clap derive); the same definitions give
//! the help text, the shell completions (`luoctl completions`) and the man pages (`luoctl man`,
//! module [`man`]). Each command that asks luod something prints what luod said, as text for
//! a person or, with `--json`, as one JSON document (module [`json`]; the views are in
//! [`status`], [`sessions`] and [`migrate`], their text laid out by [`table`]). Whatever
//! happens ends in one of the statuses of [`exit::Exit`]; [`exit::Failure`] is what a failed
//! call becomes: its status, its message, and its JSON error document.
//!
//! `docs/luoctl.md` is the operator's guide, with the JSON fields of every command.
#![forbid(unsafe_code)]

mod exit;
mod json;
mod kexec;
mod man;
mod migrate;
mod sessions;
mod status;
mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use luo_client::Control;

use crate::exit::{Exit, Failure};

/// Inspect and steer luod, the userspace Live Update Orchestrator.
///
/// luod holds preserved file descriptors in named sessions so that a workload can be replaced
/// by a new version of itself and get them back. luoctl shows luod's state and sessions,
/// upgrades luod's binary, emulates a kernel live update, and moves preserved memory onto new
/// backing. Every command that prints takes --json for one JSON document instead of text.
#[derive(Debug, Parser)]
#[command(version, after_help = Exit::help())]
struct Args {
    /// luod's socket (default: $LUOD_SOCKET, else /run/luod/luod.sock for root,
    /// $XDG_RUNTIME_DIR/luod.sock otherwise, else /tmp/luod-<uid>/luod.sock). It must be
    /// served by root or by your own uid, or by the uid in $LUOD_SERVER_UID.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// The output format of a command that prints.
#[derive(Clone, Copy, Debug, clap::Args)]
struct Format {
    /// Print one JSON document instead of text (on failure: {"error": {...}}).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generation, sessions, files, preserved bytes, clients, descriptors, uptime.
    Status {
        #[command(flatten)]
        format: Format,
    },
    /// Every session you may see (root: all), one per line.
    ///
    /// Columns: UID (the owner), STATE (outgoing, incoming, retrieved or finished), FILES,
    /// BYTES (of memory the files keep alive), NAME. Names come last and are shown with
    /// control characters, bidi marks and backslashes escaped (\n, \x1b, \u{202e}, \\);
    /// --json gives them exactly.
    #[command(visible_alias = "list")]
    Sessions {
        #[command(flatten)]
        format: Format,
    },
    /// Replace luod's binary without losing a session or a connection (root).
    Upgrade {
        /// The new binary (default: the one luod runs).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        #[command(flatten)]
        format: Format,
    },
    /// Emulate a kernel live update: open sessions become incoming, connections are cut (root).
    Reboot {
        #[command(flatten)]
        format: Format,
    },
    /// Carry every session across a kexec of the host kernel, through the kernel's
    /// /dev/liveupdate (root).
    ///
    /// luod freezes its sessions, puts each into a kernel session (its shmem memfds under the
    /// same tokens) and its own state into one more, then kexecs into the kernel already loaded
    /// (kexec -s -l). After the boot luod restores every session as incoming. Hugetlb memfds,
    /// sockets, pipes, eventfds and PCI config files cannot cross: --check lists them (status 1
    /// if there are any), and a kexec with them is refused unless --drop-unpreservable.
    /// --convert re-backs every hugetlb memfd onto shmem first (its contents copied), so that
    /// it crosses; the workload must not write it after that.
    Kexec {
        /// Only list what would cross and what would be lost; change nothing.
        #[arg(long, conflicts_with_all = ["drop_unpreservable", "no_exec", "cancel"])]
        check: bool,
        /// Go ahead even if some files cannot cross: they are lost.
        #[arg(long)]
        drop_unpreservable: bool,
        /// Forward the sessions but do not kexec: the caller does (kexec -e, systemctl kexec).
        #[arg(long, conflicts_with = "cancel")]
        no_exec: bool,
        /// Undo a forward made with --no-exec.
        #[arg(long, conflicts_with = "drop_unpreservable")]
        cancel: bool,
        /// Re-back every hugetlb memfd onto shmem (4 KiB pages) before the forward, so that it
        /// crosses; with --check, report as if they were.
        #[arg(long, conflicts_with = "cancel")]
        convert: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Move a preserved memory file onto new backing (4 KiB, 2 MiB or 1 GiB pages).
    ///
    /// luod copies the file with its copy engine and puts the copy in its place in the
    /// session. The session is an incoming one nobody has retrieved, or your own outgoing one.
    Migrate {
        /// The session's name.
        session: String,
        /// The file's token.
        token: u64,
        /// The new page size.
        #[arg(long, value_name = "SIZE", ignore_case = true)]
        to: migrate::PageSize,
        /// The uid whose session it is (root only; default: yours).
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
        #[command(flatten)]
        format: Format,
    },
    /// luoctl's version and the daemon's.
    Version {
        #[command(flatten)]
        format: Format,
    },
    /// Print a completion script for a shell.
    ///
    /// bash: luoctl completions bash > /etc/bash_completion.d/luoctl;
    /// zsh: luoctl completions zsh > "${fpath[1]}/_luoctl";
    /// fish: luoctl completions fish > ~/.config/fish/completions/luoctl.fish
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page luoctl(1), or write every page of luoctl into a directory.
    Man {
        /// Write luoctl.1 and a luoctl-COMMAND.1 for each command into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// True if the command was asked for JSON.
    fn json(&self) -> bool {
        match self {
            Command::Status { format }
            | Command::Sessions { format }
            | Command::Upgrade { format, .. }
            | Command::Reboot { format }
            | Command::Kexec { format, .. }
            | Command::Migrate { format, .. }
            | Command::Version { format } => format.json,
            Command::Completions { .. } | Command::Man { .. } => false,
        }
    }
}

/// What a command printed, and how it failed if it did.
struct Done {
    stdout: String,
    failure: Option<Failure>,
}

impl Done {
    /// The usual outcome: the output, or the failure (and its JSON document if `json`).
    fn of(result: Result<String, Failure>, json: bool) -> Done {
        match result {
            Ok(stdout) => Done {
                stdout,
                failure: None,
            },
            Err(f) => Done {
                stdout: if json {
                    format!("{}\n", f.json())
                } else {
                    String::new()
                },
                failure: Some(f),
            },
        }
    }
}

fn connect(socket: &Path) -> Result<Control, Failure> {
    Control::connect_at(socket).map_err(|e| Failure::of(&e, socket))
}

/// `upgrade`: luod's pid before and after, and how the upgrade went.
fn upgrade(socket: &Path, binary: Option<&Path>, json: bool) -> Result<String, Failure> {
    let fail = |e: luo_client::Error| Failure::of(&e, socket);
    // luod resolves a relative path from its own directory, not from this one.
    let binary = match binary.map(std::path::absolute).transpose() {
        Ok(b) => b,
        Err(e) => {
            return Err(Failure::local(
                Exit::Usage,
                "upgrade",
                format!("--binary: {e}"),
            ));
        }
    };
    let control = connect(socket)?;
    let before = control.status().map_err(fail)?;
    control.upgrade(binary.as_deref()).map_err(fail)?;
    // The connection survives the upgrade: the new luod answers.
    let after = control.status().map_err(fail)?;
    Ok(status::upgraded(&before, &after, json))
}

fn reboot(socket: &Path, json: bool) -> Result<String, Failure> {
    connect(socket)?
        .reboot()
        .map_err(|e| Failure::of(&e, socket))?;
    Ok(if json {
        format!("{}\n", json::Object::new().bool("rebooted", true).finish())
    } else {
        "luod rebooted: open sessions are now incoming\n".to_owned()
    })
}

/// `version`: luoctl's own is printed even when luod cannot be reached.
fn version(socket: &Path, json: bool) -> Done {
    match connect(socket).and_then(|c| c.status().map_err(|e| Failure::of(&e, socket))) {
        Ok(s) => Done {
            stdout: status::version(Some(&s), None, json),
            failure: None,
        },
        Err(f) => Done {
            stdout: status::version(None, Some(&f), json),
            failure: Some(f),
        },
    }
}

fn completions(shell: clap_complete::Shell) -> Result<String, Failure> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "luoctl", &mut out);
    String::from_utf8(out).map_err(|_| {
        Failure::local(
            Exit::Failed,
            "completions",
            "the completion script is not UTF-8".to_owned(),
        )
    })
}

fn man_pages(dir: Option<&Path>) -> Result<String, Failure> {
    let pages = man::pages(Args::command());
    let Some(dir) = dir else {
        return Ok(pages
            .into_iter()
            .next()
            .map(|(_, text)| text)
            .unwrap_or_default());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::local(Exit::Failed, "man", format!("{}: {e}", dir.display())))?;
    for (name, text) in &pages {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Failure::local(Exit::Failed, "man", format!("{}: {e}", path.display())))?;
    }
    Ok(String::new())
}

fn run(command: Command, socket: &Path) -> Done {
    let json = command.json();
    let result = match command {
        Command::Status { .. } => connect(socket).and_then(|c| {
            c.status()
                .map(|s| status::show(&s, json))
                .map_err(|e| Failure::of(&e, socket))
        }),
        Command::Sessions { .. } => connect(socket).and_then(|c| {
            c.sessions()
                .map(|l| sessions::show(&l, json))
                .map_err(|e| Failure::of(&e, socket))
        }),
        Command::Upgrade { binary, .. } => upgrade(socket, binary.as_deref(), json),
        Command::Reboot { .. } => reboot(socket, json),
        Command::Kexec {
            check,
            drop_unpreservable,
            no_exec,
            cancel,
            convert,
            ..
        } => {
            let options = luo_client::KexecOptions {
                check,
                drop_unpreservable,
                no_exec,
                cancel,
                convert,
            };
            let (stdout, failure) = kexec::run(socket, options, json);
            return Done { stdout, failure };
        }
        Command::Migrate {
            session,
            token,
            to,
            owner,
            ..
        } => migrate::run(socket, &session, token, to, owner, json),
        Command::Version { .. } => return version(socket, json),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man_pages(dir.as_deref()),
    };
    Done::of(result, json)
}

/// Writes `text` to standard output in one piece. A reader that went away (`luoctl sessions |
/// head -1`) is not an error.
fn write_stdout(text: &str) -> Result<(), std::io::Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = args.socket.unwrap_or_else(luo_client::default_socket);
    let done = run(args.command, &socket);
    if let Err(e) = write_stdout(&done.stdout) {
        eprintln!("luoctl: cannot write the output: {e}");
        return ExitCode::from(Exit::Failed.code());
    }
    match done.failure {
        None => ExitCode::from(Exit::Ok.code()),
        Some(f) => {
            for line in &f.lines {
                eprintln!("luoctl: {line}");
            }
            ExitCode::from(f.exit.code())
        }
    }
}
