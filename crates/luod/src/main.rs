//! luod, the userspace Live Update Orchestrator daemon.
//!
//! One process serves every client of the machine over an `AF_UNIX` `SOCK_SEQPACKET` socket:
//! workloads preserve descriptors into named sessions, hand them off, and their successors
//! retrieve them. luod can replace its own binary (`luoctl upgrade`) and emulate a kernel live
//! update (`luoctl reboot`) without losing a preserved file. See `docs/operations.md`.

mod budget;
mod config;
mod conn;
mod failpoint;
mod handover;
mod journal;
mod keeper;
mod listener;
mod liveupdate;
mod metrics;
mod migrate;
mod recover;
mod server;
mod socket;
mod status;
mod systemd;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use luo_core::{Limits, Registry};
use tracing::info;

use crate::config::{FileConfig, parse_mode};
use crate::server::{Ended, Server, Settings};
use crate::socket::Place;

/// luod: keeps descriptors (memfds, hugetlb memfds, sockets...) alive across the replacement of
/// the processes that own them, and speaks the kernel's /dev/liveupdate protocol.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Socket to serve. Default: /run/luod/luod.sock for root, $XDG_RUNTIME_DIR/luod.sock
    /// otherwise, else /tmp/luod-<uid>/luod.sock (a private directory luod creates, mode 0700).
    /// Overrides the config file.
    #[arg(long, env = "LUOD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// TOML config file (keys: socket, socket_mode, metrics, [limits] sessions/files/bytes/
    /// fds/fd_reserve).
    #[arg(long, env = "LUOD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// Permissions of the socket, octal. Default 0600: only luod's own user may connect; use
    /// 0666 to let every uid have its own namespace of sessions.
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,

    /// Most sessions one uid may hold (default: unlimited).
    #[arg(long, value_name = "N")]
    max_sessions: Option<u64>,

    /// Most preserved files one uid may hold (default: unlimited).
    #[arg(long, value_name = "N")]
    max_files: Option<u64>,

    /// Most bytes of preserved memory one uid may hold (default: unlimited).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,

    /// Most of luod's descriptors (connections and preserved files) one uid other than root
    /// and luod's own may hold (default: a quarter of luod's descriptor limit less 64).
    #[arg(long, value_name = "N")]
    max_fds: Option<u64>,

    /// luod's descriptors that only root and luod's own uid may use (default: a quarter of
    /// luod's descriptor limit less 64).
    #[arg(long, value_name = "N")]
    fd_reserve: Option<u64>,

    /// Serve Prometheus metrics on GET /metrics at ADDR: a loopback TCP address
    /// (127.0.0.1:9464, [::1]:9464, localhost:9464) or a Unix socket (unix:/PATH, with the
    /// socket's mode). Off by default; any other address is refused. The endpoint survives
    /// upgrades and server restarts; see docs/operations.md, "Metrics".
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,

    /// Park every preserved descriptor and luod's state in systemd's file descriptor store, so
    /// that a restart of the whole service (`systemctl restart luod`) loses nothing. On by
    /// itself when systemd says the store is there (`FDSTORE=`, systemd 254 and later).
    #[arg(long)]
    fdstore: bool,

    /// The kernel's live update device: its path, or "none" for no kernel backend. Default:
    /// /dev/liveupdate when this kernel has it. luod opens it at start and keeps it (the kernel
    /// allows one process), restores the sessions a previous kernel's luod forwarded, and
    /// forwards every session at `luoctl kexec`; see docs/operations.md, "Kernel live update".
    #[arg(long, env = "LUOD_LIVEUPDATE", value_name = "PATH|none")]
    liveupdate: Option<String>,

    /// Log filter, as RUST_LOG (e.g. "info", "luod=debug").
    #[arg(long, env = "LUOD_LOG", default_value = "info", value_name = "FILTER")]
    log: String,

    /// Internal: start as the successor of a running luod, from the handover channel FD.
    #[arg(long, hide = true, value_name = "FD")]
    takeover: Option<i32>,

    /// Internal: continue as the keeper after it re-executed itself (SIGUSR2).
    #[arg(long, hide = true, value_name = "SPEC")]
    keeper_resume: Option<String>,

    /// Internal: start as the keeper's first server, its channel to the keeper at FD.
    #[arg(long, hide = true, value_name = "FD")]
    serve: Option<i32>,

    /// Internal: start as the server after one that died, from its checkpoint and journal
    /// (descriptor numbers STATE,JOURNAL of the inherited table).
    #[arg(long, hide = true, value_name = "STATE,JOURNAL")]
    recover: Option<String>,
}

/// The handlers and FLBs every luod registers, in this order.
pub fn registry() -> anyhow::Result<Arc<Registry>> {
    Ok(Arc::new(luo_handlers::default_registry()?))
}

fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn signal_pipe() -> anyhow::Result<OwnedFd> {
    let (read, write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let write2 = rustix::io::fcntl_dupfd_cloexec(&write, 0)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write2)?;
    Ok(read)
}

fn main() {
    // Before any thread: megabyte buffers come from the heap and freed ones stay there (a
    // recovery or a successor then reuses pages it already touched; `luo_sys::heap`).
    luo_sys::heap::keep_freed_memory();
    let args = server_args(std::env::args_os().skip(1), |k| {
        std::env::var_os(k).is_some()
    })
    .unwrap_or_else(Args::parse);
    // What systemd (or the keeper) put in the environment is read and cleared before any
    // thread exists.
    let role = if args.serve.is_some() {
        systemd::Role::FirstServer
    } else if args.takeover.is_none() && args.recover.is_none() && args.keeper_resume.is_none() {
        systemd::Role::Keeper
    } else {
        systemd::Role::Other
    };
    let handed = match systemd::take_environment(role, args.fdstore) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("luod: {e:#}");
            std::process::exit(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(args, handed) {
        if e.downcast_ref::<keeper::Refused>().is_some() {
            // Another server serves; this one answered nobody and leaves quietly.
            info!("{e}");
            std::process::exit(keeper::EXIT_REFUSED);
        }
        eprintln!("luod: {e:#}");
        std::process::exit(1);
    }
}

/// The arguments of the keeper (luod's own plain options) and of its first server (`--serve FD`
/// first, then the keeper's options), read without clap, or `None` for anything else: clap then
/// reads them as usual. A keeper and its server start on every boot, and in an emulated guest
/// clap's parser took a good part of the time luod needs to serve after a kexec
/// (`docs/PERFORMANCE.md`, "Kernel live update through luod"). Only the plain forms are read
/// here (`--name VALUE`, `--name=VALUE`, `--fdstore`, each option at most once, numbers in
/// decimal) and only when no option's environment variable is set; whatever else (a repeated
/// option, a bad number, `--help`, a hidden option other than a leading `--serve`, ...) goes to
/// clap, which then accepts or refuses it as it always did.
fn server_args(
    argv: impl Iterator<Item = std::ffi::OsString>,
    env_set: impl Fn(&str) -> bool,
) -> Option<Args> {
    if ["LUOD_SOCKET", "LUOD_CONFIG", "LUOD_LIVEUPDATE", "LUOD_LOG"]
        .iter()
        .any(|k| env_set(k))
    {
        return None;
    }
    let argv: Vec<String> = argv.map(|a| a.into_string().ok()).collect::<Option<_>>()?;
    let mut it = argv.iter().peekable();
    let serve = if it.peek().map(|a| a.as_str()) == Some("--serve") {
        it.next();
        Some(number(it.next()?)?)
    } else {
        None
    };
    let mut args = Args {
        socket: None,
        config: None,
        socket_mode: None,
        max_sessions: None,
        max_files: None,
        max_bytes: None,
        max_fds: None,
        fd_reserve: None,
        metrics: None,
        fdstore: false,
        liveupdate: None,
        log: "info".into(),
        takeover: None,
        keeper_resume: None,
        serve,
        recover: None,
    };
    let mut seen = std::collections::HashSet::new();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        if !seen.insert(name) {
            return None;
        }
        if name == "--fdstore" {
            if inline.is_some() {
                return None;
            }
            args.fdstore = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next()?.clone(),
        };
        // A value that looks like an option is clap's to judge.
        if value.is_empty() || value.starts_with('-') {
            return None;
        }
        match name {
            "--socket" => args.socket = Some(value.into()),
            "--config" => args.config = Some(value.into()),
            "--socket-mode" => args.socket_mode = Some(value),
            "--max-sessions" => args.max_sessions = Some(number(&value)?),
            "--max-files" => args.max_files = Some(number(&value)?),
            "--max-bytes" => args.max_bytes = Some(number(&value)?),
            "--max-fds" => args.max_fds = Some(number(&value)?),
            "--fd-reserve" => args.fd_reserve = Some(number(&value)?),
            "--metrics" => args.metrics = Some(value),
            "--liveupdate" => args.liveupdate = Some(value),
            "--log" => args.log = value,
            _ => return None,
        }
    }
    Some(args)
}

/// A decimal number, digits only.
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn run(args: Args, handed: systemd::Handed) -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit();
    if let Some(fd) = args.takeover {
        let mut holder = None;
        let inherited = handover::take_over(fd, fd_limit, signal_pipe, |server| {
            // The store stays the predecessor's until this one serves.
            server.systemd.defer();
            make_durable(server, 1)?;
            holder = keeper::prepare(server, &args.log, keeper::Role::Successor)?;
            Ok(())
        })?;
        handover::wait_go(&inherited.channel)?;
        failpoint::after_go();
        drop(inherited.channel);
        let mut server = inherited.server;
        server.liveupdate =
            liveupdate::Backend::lazy(&liveupdate::Setting::parse(args.liveupdate.as_deref()));
        if let Some(holder) = holder {
            keeper::serving(&mut server, holder)?;
        }
        info!(
            generation = server.engine.generation(),
            sessions = server.engine.sessions().len(),
            clients = server.conns.len(),
            "took over"
        );
        server.metrics_took_over();
        return serve(server);
    }
    if let Some(numbers) = &args.recover {
        let t0 = std::time::Instant::now();
        let (state, journal) = numbers
            .split_once(',')
            .and_then(|(s, j)| Some((s.parse().ok()?, j.parse().ok()?)))
            .context("--recover takes STATE,JOURNAL")?;
        let (mut server, mut recovery) = handover::recover(state, journal, fd_limit, signal_pipe)?;
        server.systemd.assume_stored();
        server.liveupdate =
            liveupdate::Backend::lazy(&liveupdate::Setting::parse(args.liveupdate.as_deref()));
        failpoint::recovery_start();
        let rebuilt = t0.elapsed();
        make_durable(&mut server, recovery.next_seq)?;
        let durable = t0.elapsed();
        keeper::join(&mut server, &args.log, keeper::Role::Recovered)?;
        handover::send_again(&mut server, std::mem::take(&mut recovery.replies));
        info!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            rebuild_ms = rebuilt.as_secs_f64() * 1e3,
            checkpoint_ms = (durable - rebuilt).as_secs_f64() * 1e3,
            grant_ms = (t0.elapsed() - durable).as_secs_f64() * 1e3,
            records = recovery.records,
            replies_sent_again = recovery.resent,
            sessions = server.engine.sessions().len(),
            clients = server.conns.len(),
            "recovered the state of the server that died"
        );
        server.metrics_recovered(t0);
        return serve(server);
    }
    if let Some(spec) = &args.keeper_resume {
        return keeper::resume(spec, signal_pipe()?);
    }
    let Some(serve_fd) = args.serve else {
        // The process started by hand or by a service manager: the keeper. A metrics address
        // that would be refused is refused here, before any server starts.
        if let Some(addr) = &args.metrics {
            metrics::Addr::parse(addr)?;
        }
        let server_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return keeper::keep(server_args, signal_pipe()?, handed);
    };
    if systemd::holds_state(&handed) {
        // A restart of the whole service: the state comes back from systemd's store. Done
        // before this process opens anything, as a recovery.
        let t0 = std::time::Instant::now();
        let channel = handover::adopt_inherited(serve_fd)?;
        let (mut server, mut recovery) = systemd::restore(handed, channel, fd_limit, signal_pipe)?;
        server.liveupdate =
            liveupdate::Backend::lazy(&liveupdate::Setting::parse(args.liveupdate.as_deref()));
        become_durable(&mut server, recovery.next_seq, &args.log)?;
        handover::send_again(&mut server, std::mem::take(&mut recovery.replies));
        info!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            records = recovery.records,
            sessions = server.engine.sessions().len(),
            clients = server.conns.len(),
            "restored the state kept in systemd's descriptor store"
        );
        return serve(server);
    }
    let activated = systemd::activated_listener(handed)?;
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let place = match (&activated, args.socket.or(file.socket)) {
        (Some((_, path)), _) => Place::explicit(path.clone()),
        (None, Some(path)) => Place::explicit(path),
        (None, None) => Place::default_for_caller(),
    };
    let mode = match args.socket_mode.as_deref().or(file.socket_mode.as_deref()) {
        Some(m) => parse_mode(m)?,
        None => 0o600,
    };
    let limits = Limits {
        sessions: args.max_sessions.or(file.limits.sessions),
        files: args.max_files.or(file.limits.files),
        bytes: args.max_bytes.or(file.limits.bytes),
    };
    let metrics = args
        .metrics
        .as_deref()
        .or(file.metrics.as_deref())
        .map(metrics::Addr::parse)
        .transpose()?;
    let signals = signal_pipe()?;
    let binary = std::env::current_exe().context("Cannot find luod's own binary")?;
    let (listener, lock) = match activated {
        // systemd bound it (luod.socket): luod takes the lock beside it and serves it.
        Some((listener, _)) => (listener, socket::lock(&place)?),
        None => socket::bind(&place, mode)?,
    };
    let socket = place.socket;
    // On a kernel with /dev/liveupdate: the sessions a previous kernel's luod forwarded come
    // back here, before anything is served.
    let boot = liveupdate::boot(
        &liveupdate::Setting::parse(args.liveupdate.as_deref()),
        registry()?,
    )?;
    let mut engine = boot.engine;
    engine.set_limits(limits);
    let settings = Settings {
        socket: socket.clone(),
        limits,
        fds: budget::FdSettings {
            share: args.max_fds.or(file.limits.fds),
            reserve: args.fd_reserve.or(file.limits.fd_reserve),
        },
        binary,
        pids: Vec::new(),
    };
    let mut server = Server::new(engine, settings, listener, lock, signals, fd_limit)?;
    server.liveupdate = boot.backend;
    if boot.restored > 0 {
        info!(
            sessions = boot.restored,
            "sessions from before the kexec are incoming"
        );
    }
    server.keeper_channel = Some(handover::adopt_inherited(serve_fd)?);
    if let Some(addr) = metrics {
        let listener = metrics::bind(&addr, mode)?;
        metrics::attach(
            &mut server,
            metrics::Metrics::new(addr.to_string(), listener)?,
        )?;
        info!(metrics = %addr, "serving metrics on GET /metrics");
    }
    become_durable(&mut server, 1, &args.log)?;
    info!(socket = %socket.display(), fd_limit, "luod serving");
    serve(server)
}

/// Serves until the loop ends. After a handover the process exits here and now: the successor
/// holds the same open files, and dropping the server's state would undo what it relies on
/// (a socket option a handler set while it held the socket, say).
fn serve(mut server: Server) -> anyhow::Result<()> {
    systemd::serving(&mut server);
    match server.run()? {
        Ended::Shutdown => Ok(()),
        Ended::HandedOver => std::process::exit(keeper::EXIT_HANDED_OVER),
    }
}

/// Gives the server fresh memfds for its checkpoint and journal (never the ones it may have
/// inherited: those stay as they are for a recovery from the predecessor's holder, until this
/// server serves), writes its first checkpoint, and joins the keeper.
fn become_durable(server: &mut Server, next_seq: u64, log: &str) -> anyhow::Result<()> {
    make_durable(server, next_seq)?;
    keeper::join(server, log, keeper::Role::First)
}

/// Fresh checkpoint and journal memfds, and the first checkpoint in them.
fn make_durable(server: &mut Server, next_seq: u64) -> anyhow::Result<()> {
    let state = server::state_memfd("luod-state")?;
    let journal = server::state_memfd("luod-journal")?;
    server.make_durable(state, journal, next_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ')
            .filter(|a| !a.is_empty())
            .map(Into::into)
            .collect()
    }

    /// What clap makes of `line` (with no environment variable set), as text.
    fn clap(line: &str) -> String {
        let mut full = vec![std::ffi::OsString::from("luod")];
        full.extend(argv(line));
        format!("{:?}", Args::try_parse_from(full).expect("clap accepts it"))
    }

    #[test]
    fn the_keepers_and_first_servers_arguments_read_as_clap_reads_them() {
        for line in [
            "--serve 5",
            "--serve 5 --socket /run/luod.sock",
            "--serve 7 --socket=/run/x.sock --fdstore --log luod=debug",
            "--serve 3 --max-sessions 10 --max-files=20 --max-bytes 30 --max-fds 40 --fd-reserve 50",
            "--serve 3 --socket-mode 0666 --metrics 127.0.0.1:9464 --liveupdate none",
            "--serve 3 --config /etc/luod.toml --liveupdate=/dev/liveupdate",
            "",
            "--socket /x",
            "--socket=/run/luod.sock --fdstore --log warn --max-sessions 7",
            "--config /etc/luod.toml --liveupdate none --metrics 127.0.0.1:9464",
        ] {
            let fast = server_args(argv(line).into_iter(), |_| false)
                .unwrap_or_else(|| panic!("{line}: not read"));
            assert_eq!(format!("{fast:?}"), clap(line), "{line}");
        }
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        for line in [
            "--socket /x --serve 5",
            "--serve=5",
            "--help",
            "--socket /a --socket=/b",
            "--takeover 3",
            "--keeper-resume x",
            "--recover 3",
            "--serve x",
            "--serve 5 --help",
            "--serve 5 --socket /a --socket /b",
            "--serve 5 --max-files +3",
            "--serve 5 --max-files 0x10",
            "--serve 5 --socket",
            "--serve 5 --socket --fdstore",
            "--serve 5 --fdstore=true",
            "--serve 5 --takeover 3",
            "--serve 5 -h",
            "--serve 5 extra",
        ] {
            assert!(
                server_args(argv(line).into_iter(), |_| false).is_none(),
                "{line}"
            );
        }
        assert!(server_args(argv("--serve 5").into_iter(), |k| k == "LUOD_LOG").is_none());
        assert!(server_args(argv("--fdstore").into_iter(), |k| k == "LUOD_SOCKET").is_none());
    }
}
