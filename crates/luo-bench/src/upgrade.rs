//! `upgrade`: luod's orchestrator upgrade under load, through the real daemon, and the RPC
//! rates of one client.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use luo_client::{Control, Device, Session};
use rustix::fs::MemfdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::{Result, check, ms, put, raise_nofile, ratio};

/// Control connections held open during the upgrades.
const CLIENTS: usize = 100;
/// Sessions, all created by one device.
const SESSIONS: usize = 2_000;
/// Descriptors preserved across them: half memfds, half socket-pair ends.
const FDS: usize = 15_000;
/// The big memfd of the first run.
const LARGE: u64 = 4 << 30;
/// The big memfd of the second run.
const SMALL: u64 = 16 << 20;
/// Its token (in session 0).
const BIG_TOKEN: u64 = 1 << 40;
/// Upgrades per run.
const UPGRADES: usize = 9;
/// Steady-state STATUS traffic before and after each upgrade.
const SETTLE: Duration = Duration::from_millis(300);
/// How long luod gets to start answering (and to drop what a closed client held).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);
const EMFILE: i32 = 24;

/// The release luod next to this program.
pub(crate) fn locate_luod() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("This program's path has no directory")?;
    let luod = dir.join("luod");
    if !luod.is_file() {
        return Err(format!(
            "{} is missing: the upgrade benchmark drives the real daemon; build it first with \
             `cargo build --release -p luod`",
            luod.display()
        )
        .into());
    }
    Ok(luod)
}

fn pid(raw: u32) -> Result<Pid> {
    i32::try_from(raw)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("Invalid pid {raw}").into())
}

/// Kilobytes of MemAvailable.
fn mem_available() -> Result<u64> {
    let mut text = String::new();
    File::open("/proc/meminfo")?.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .map(|kb: u64| kb * 1024)
        .ok_or_else(|| "No MemAvailable in /proc/meminfo".into())
}

/// A running luod, whichever process currently serves its socket.
#[derive(Debug)]
pub(crate) struct Daemon {
    luod: PathBuf,
    pub(crate) socket: PathBuf,
    log: PathBuf,
    /// The process this program started, until it is reaped.
    child: Option<Child>,
    /// The process serving now (a successor after an upgrade, reparented to this program,
    /// which is a child subreaper).
    pid: Pid,
    running: bool,
}

impl Daemon {
    pub(crate) fn start(luod: &Path, dir: &Path, tag: &str) -> Result<Daemon> {
        let socket = dir.join(format!("{tag}.sock"));
        let log = dir.join(format!("{tag}.log"));
        let stderr = File::options().create(true).append(true).open(&log)?;
        let filter = std::env::var("LUO_BENCH_LUOD_LOG").unwrap_or_else(|_| "warn".to_owned());
        let child = Command::new(luod)
            .arg("--socket")
            .arg(&socket)
            .arg("--log")
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("Cannot start {}: {e}", luod.display()))?;
        let pid = pid(child.id())?;
        let mut daemon = Daemon {
            luod: luod.to_owned(),
            socket,
            log,
            child: Some(child),
            pid,
            running: true,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if let Ok(c) = Control::connect_at(&self.socket)
                && c.ping().is_ok()
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.running = false;
                return Err(format!(
                    "{} exited ({status}) before answering:\n{}",
                    self.luod.display(),
                    self.log_tail()
                )
                .into());
            }
            if t0.elapsed() > START_TIMEOUT {
                return Err(format!("luod did not answer within {START_TIMEOUT:?}").into());
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    pub(crate) fn control(&self) -> Result<Control> {
        Ok(Control::connect_at(&self.socket)?)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Waits for process `pid` (which has exited or is exiting) and reaps it.
    fn reap(&mut self, pid: Pid) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && i32::try_from(child.id()).ok() == Some(pid.as_raw_nonzero().get())
        {
            child.wait()?;
            self.child = None;
            return Ok(());
        }
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(_) => Ok(()),
            // Not our child (no subreaper): wait until it is gone.
            Err(rustix::io::Errno::CHILD) => {
                let t0 = Instant::now();
                while rustix::process::test_kill_process(pid).is_ok() {
                    if t0.elapsed() > START_TIMEOUT {
                        return Err(format!("luod {pid:?} did not exit").into());
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The upgrade happened: `new` serves, `old` exits.
    fn upgraded(&mut self, old: Pid, new: Pid) -> Result<()> {
        self.pid = new;
        self.reap(old)
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        rustix::process::kill_process(self.pid, Signal::TERM)?;
        self.reap(self.pid)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
            let _ = self.reap(self.pid);
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct Run {
    blackouts: Vec<Duration>,
    calls: Vec<Duration>,
    /// Per upgrade: the longest wait between two STATUS answers of the old server while the
    /// upgrade call was open (the old server's own pause: image, start of the successor).
    stalls: Vec<Duration>,
    /// Per upgrade: successors started, and whether it fell back to stop and copy.
    rounds: Vec<(u32, bool)>,
    steady_gaps: Vec<Duration>,
    sessions: usize,
    fds: usize,
    luod_fds: u64,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn max(v: &[Duration]) -> Duration {
    v.iter().max().copied().unwrap_or_default()
}

pub(crate) fn memfd(name: &str, content: &[u8]) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
    let n = rustix::io::write(&fd, content)?;
    check(n == content.len(), || format!("short write to {name}"))?;
    Ok(fd)
}

/// A memfd of `len` bytes with every page written.
pub(crate) fn big_memfd(len: u64) -> Result<OwnedFd> {
    const CHUNK: usize = 1 << 20;
    let fd = rustix::fs::memfd_create("luo-bench-big", MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len)?;
    let mut chunk = vec![0xa5u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        chunk[..8].copy_from_slice(&off.to_le_bytes());
        let n = (len - off).min(CHUNK as u64) as usize;
        let written = rustix::io::pwrite(&fd, &chunk[..n], off)?;
        check(written > 0, || "pwrite wrote nothing".into())?;
        off += written as u64;
    }
    Ok(fd)
}

fn is_emfile(e: &luo_client::Error) -> bool {
    e.errno.raw() == EMFILE
}

/// The checks after setup and after each upgrade: the same sessions and files, every client
/// still connected.
fn verify(
    daemon: &Daemon,
    controls: &[Control],
    sessions: usize,
    files: u64,
    big: u64,
) -> Result<()> {
    let probe = daemon.control()?;
    let status = probe.status()?;
    check(status.sessions_outgoing == sessions as u64, || {
        format!(
            "luod has {} outgoing sessions, expected {sessions}",
            status.sessions_outgoing
        )
    })?;
    check(status.files == files, || {
        format!("luod has {} files, expected {files}", status.files)
    })?;
    check(status.bytes >= big, || {
        format!("luod holds {} bytes, expected at least {big}", status.bytes)
    })?;
    let listed = probe.sessions()?;
    check(listed.len() == sessions, || {
        format!("luod lists {} sessions, expected {sessions}", listed.len())
    })?;
    let listed_files: u64 = listed.iter().map(|s| s.files).sum();
    check(listed_files == files, || {
        format!("luod lists {listed_files} files, expected {files}")
    })?;
    for (i, c) in controls.iter().enumerate() {
        c.ping().map_err(|e| format!("client {i}: {e}"))?;
    }
    Ok(())
}

/// After the upgrades: hands session 0 off, retrieves it and checks every file in it (each
/// memfd's bytes, each socket's type, the big memfd's marks), then finishes it.
fn verify_contents(
    device: &Device,
    sessions: &[Session],
    preserved: usize,
    big_len: u64,
) -> Result<()> {
    const S_IFSOCK: u32 = 0o140000;
    let first = sessions.first().ok_or("no session")?;
    first.handoff()?;
    let incoming = device.retrieve_session("bench-0")?;
    let mut buf = [0u8; 32];
    let mut seen = 0;
    for i in (0..preserved).filter(|i| (i / 2) % sessions.len() == 0) {
        let fd = incoming.retrieve(i as u64)?;
        if i % 2 == 0 {
            let want = format!("file-{i}");
            let n = rustix::io::pread(&fd, &mut buf, 0)?;
            check(&buf[..n] == want.as_bytes(), || {
                format!("memfd {i} holds {:?}", String::from_utf8_lossy(&buf[..n]))
            })?;
        } else {
            let mode = rustix::fs::fstat(&fd)?.st_mode;
            check(mode & 0o170000 == S_IFSOCK, || {
                format!("descriptor {i} came back as mode {mode:o}")
            })?;
        }
        seen += 1;
    }
    check(seen > 0, || "session 0 had no file".into())?;
    let big = incoming.retrieve(BIG_TOKEN)?;
    check(rustix::fs::fstat(&big)?.st_size as u64 == big_len, || {
        "the big memfd changed size".into()
    })?;
    let mut off = 0u64;
    while off < big_len {
        let n = rustix::io::pread(&big, &mut buf[..8], off)?;
        check(n == 8 && buf[..8] == off.to_le_bytes(), || {
            format!("the big memfd lost its mark at {off}")
        })?;
        off += 256 << 20;
    }
    incoming.finish()?;
    Ok(())
}

/// One STATUS answer: when, and from which process.
type Sample = (Duration, u32);

/// STATUS in a loop until `stop`.
fn hammer(
    control: Control,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> std::result::Result<Vec<Sample>, String> {
    let mut samples = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        let status = control.status().map_err(|e| e.to_string())?;
        samples.push((epoch.elapsed(), status.pid));
    }
    Ok(samples)
}

/// Fills a fresh luod, then upgrades it [`UPGRADES`] times under STATUS traffic.
fn run_once(luod: &Path, dir: &Path, tag: &str, big_len: u64) -> Result<Run> {
    let mut daemon = Daemon::start(luod, dir, tag)?;
    let result = load_and_upgrade(&mut daemon, big_len);
    if result.is_err() || std::env::var_os("LUO_BENCH_LUOD_LOG").is_some() {
        eprintln!("luod's log (last lines):\n{}", daemon.log_tail());
    }
    daemon.stop()?;
    result
}

fn load_and_upgrade(daemon: &mut Daemon, big_len: u64) -> Result<Run> {
    let mut run = Run::default();
    let controls = (0..CLIENTS)
        .map(|_| {
            let c = daemon.control()?;
            c.ping()?;
            Ok(c)
        })
        .collect::<Result<Vec<Control>>>()?;
    let device = Device::open_at(&daemon.socket)?;
    let mut sessions: Vec<Session> = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        match device.create_session(&format!("bench-{i}")) {
            Ok(s) => sessions.push(s),
            Err(e) if is_emfile(&e) => {
                eprintln!("upgrade: luod refused session {i}: {e}");
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    check(!sessions.is_empty(), || "no session".into())?;
    let t0 = Instant::now();
    let mut spare: Option<OwnedFd> = None;
    let mut preserved = 0usize;
    for i in 0..FDS {
        let fd = if i % 2 == 0 {
            memfd("luo-bench", format!("file-{i}").as_bytes())?
        } else if let Some(b) = spare.take() {
            b
        } else {
            let (a, b) = rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?;
            spare = Some(b);
            a
        };
        // Session s holds tokens 2s, 2s + 1, 2s + 2n, 2s + 2n + 1...: memfds and sockets.
        let session = &sessions[(i / 2) % sessions.len()];
        match session.preserve(&fd, i as u64) {
            Ok(()) => preserved += 1,
            Err(e) if is_emfile(&e) => {
                eprintln!("upgrade: luod refused descriptor {i}: {e}");
                break;
            }
            Err(e) => return Err(e.into()),
        }
        // Only luod's copy remains.
        drop(fd);
    }
    drop(spare);
    eprintln!(
        "upgrade: {} sessions, {preserved} descriptors preserved in {}",
        sessions.len(),
        ms(t0.elapsed())
    );
    let t0 = Instant::now();
    let big = big_memfd(big_len)?;
    eprintln!(
        "upgrade: memfd of {big_len} bytes written in {} ms",
        ms(t0.elapsed())
    );
    sessions[0].preserve(&big, BIG_TOKEN)?;
    drop(big);
    let files = preserved as u64 + 1;
    run.sessions = sessions.len();
    run.fds = preserved;
    verify(daemon, &controls, sessions.len(), files, big_len)?;
    run.luod_fds = daemon.control()?.status()?.fd_used;

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let hammer_control = daemon.control()?;
    let hammer_thread = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || hammer(hammer_control, epoch, stop))
    };
    let mut pids = Vec::new();
    let mut windows: Vec<(Duration, Duration)> = Vec::new();
    let upgrades = (|| -> Result<()> {
        let admin = controls.first().ok_or("no control connection")?;
        for _ in 0..UPGRADES {
            thread::sleep(SETTLE);
            let old = admin.status()?.pid;
            let t = Instant::now();
            let opened = epoch.elapsed();
            admin.upgrade(None)?;
            run.calls.push(t.elapsed());
            windows.push((opened, epoch.elapsed()));
            let status = daemon.control()?.status()?;
            run.rounds.push((
                status.last_upgrade_rounds,
                status.last_upgrade_stop_and_copy,
            ));
            let new = status.pid;
            check(new != old, || {
                format!("still served by {old} after the upgrade")
            })?;
            daemon.upgraded(pid(old)?, pid(new)?)?;
            pids.push((old, new));
            verify(daemon, &controls, sessions.len(), files, big_len)?;
        }
        thread::sleep(SETTLE);
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let samples = hammer_thread
        .join()
        .map_err(|_| "the STATUS thread panicked")?
        .map_err(|e| format!("STATUS failed: {e}"))?;
    upgrades?;

    run.stalls = vec![Duration::ZERO; windows.len()];
    for pair in samples.windows(2) {
        if let [(t0, p0), (t1, p1)] = pair {
            let gap = t1.saturating_sub(*t0);
            if p0 == p1 {
                match windows.iter().position(|(a, b)| t1 > a && t0 < b) {
                    Some(i) => run.stalls[i] = run.stalls[i].max(gap),
                    None => run.steady_gaps.push(gap),
                }
            } else {
                check(pids.contains(&(*p0, *p1)), || {
                    format!("STATUS answered by {p0} then {p1}, which is no upgrade")
                })?;
                run.blackouts.push(gap);
            }
        }
    }
    check(run.blackouts.len() == UPGRADES, || {
        format!(
            "{} server changes seen by STATUS, expected {UPGRADES}",
            run.blackouts.len()
        )
    })?;
    eprintln!(
        "upgrade: {} STATUS answers; blackouts {:?} ms; old server's stalls {:?} ms; upgrade \
         calls {:?} ms; successors started (stop and copy) {:?}",
        samples.len(),
        run.blackouts.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        run.stalls.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        run.calls.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        run.rounds
    );
    verify_contents(&device, &sessions, preserved, big_len)?;
    drop(sessions);
    drop(device);
    drop(controls);
    Ok(run)
}

fn run_all(luod: &Path, dir: &Path) -> Result<()> {
    let need = LARGE + (1 << 30);
    let available = mem_available()?;
    check(available >= need, || {
        format!("{available} bytes of memory available, the 4 GiB run needs {need}")
    })?;
    let large = run_once(luod, dir, "large", LARGE)?;
    let small = run_once(luod, dir, "small", SMALL)?;

    let mut daemon = Daemon::start(luod, dir, "rpc")?;
    let rates = crate::rpc::measure(&daemon)?;
    // The baseline of a blackout: a plain restart (which loses every session).
    let t0 = Instant::now();
    daemon.stop()?;
    let mut daemon = Daemon::start(luod, dir, "rpc")?;
    let restart = t0.elapsed();
    daemon.stop()?;

    let blackout = median(&large.blackouts);
    let blackout_small = median(&small.blackouts);
    put("upgrade_sessions", large.sessions);
    put("upgrade_fds", large.fds);
    put("upgrade_clients", CLIENTS);
    put("upgrade_big_memfd_bytes", LARGE);
    put("upgrade_luod_fds", large.luod_fds);
    put("upgrade_blackout_ms", ms(blackout));
    put("upgrade_blackout_max_ms", ms(max(&large.blackouts)));
    put("upgrade_blackout_small_ms", ms(blackout_small));
    put("upgrade_blackout_small_max_ms", ms(max(&small.blackouts)));
    put(
        "upgrade_blackout_ratio",
        ratio(blackout.as_secs_f64(), blackout_small.as_secs_f64()),
    );
    put("upgrade_stall_ms", ms(median(&large.stalls)));
    put("upgrade_stall_max_ms", ms(max(&large.stalls)));
    let rounds: Vec<&(u32, bool)> = large.rounds.iter().chain(&small.rounds).collect();
    put(
        "upgrade_rounds_max",
        rounds.iter().map(|r| r.0).max().unwrap_or(0),
    );
    put(
        "upgrade_stop_and_copy",
        rounds.iter().filter(|r| r.1).count(),
    );
    put("upgrade_call_ms", ms(median(&large.calls)));
    put("upgrade_status_gap_ms", ms(median(&large.steady_gaps)));
    put("upgrade_status_gap_max_ms", ms(max(&large.steady_gaps)));
    rates.put();
    put("restart_ms", ms(restart));
    put(
        "upgrade_blackout_vs_restart_ratio",
        ratio(blackout.as_secs_f64(), restart.as_secs_f64()),
    );
    Ok(())
}

/// The `upgrade` benchmark.
pub(crate) fn run() -> Result<()> {
    let luod = locate_luod()?;
    let limit = raise_nofile()?;
    // Successors outlive the luod that started them: become their reaper.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let dir = std::env::temp_dir().join(format!("luo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "upgrade: {} in {} (fd limit {limit}); {UPGRADES} upgrades per run, blackout = median",
        luod.display(),
        dir.display()
    );
    let result = run_all(&luod, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
