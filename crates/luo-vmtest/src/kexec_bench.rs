//! Scenarios `luod-kexec-stress` and `kexec-bench`: many sessions (or one large memfd)
//! across a real kexec, through luod and, for comparison, straight through `/dev/liveupdate`.
//!
//! Two shapes of workload:
//! - [`Shape::Many`], the kernel's stress sizes: [`SESSIONS`] sessions each holding one small
//!   memfd, plus session [`FILES_SESSION`] holding [`FILES`] memfds; every memfd holds a text
//!   naming its session and token, so a file that lands in the wrong place is caught.
//! - [`Shape::Large`]: one session holding one patterned memfd of the given size (1 GiB).
//!
//! Four stages, each run in its own boot by the scenario scripts:
//! - `luod-before`: starts luod (its log in [`LUOD_LOG`]), preserves the shape through
//!   luo-client (timed: `luod_preserve`), times `Control::kexec` with `no_exec` (luod forwards every session into the
//!   kernel's), then runs `luo-kexec -e` while it holds everything.
//! - `luod-after`: starts luod, which restores before it serves, and times from the moment
//!   before luod is started to the first file retrieved through it, then to every file
//!   retrieved; checks every byte, finishes every session, stops luod, and checks that the
//!   kernel holds neither the workload's kernel sessions nor luod's state session.
//! - `direct-before`: the same shape preserved straight into kernel sessions (timed:
//!   `direct_preserve`, the kernel's own work that luod does when it forwards), then `kexec -e`.
//! - `direct-after`: from the moment before `/dev/liveupdate` is opened to the first file
//!   retrieved, then to every file; every byte checked, every session finished.
//!
//! Each timing is printed as `LUO-BENCH <shape>_<what>_ms=<N>` (`luo-bench kexec` reads them
//! from the console). Times are `CLOCK_MONOTONIC` differences within one boot, so the kernel's
//! own boot is in none of them.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use luo_client::{Control, KexecOptions};
use rustix::io::Errno;

use crate::luod_kexec::{
    Options, check_contents, check_pattern, client, kernel_session_name,
    legacy_kernel_session_name, memfd_with, open_device, patterned_memfd, sys,
};
use crate::{Error, Report};

/// Sessions of [`Shape::Many`] (the kernel's `luo_stress_sessions`).
pub const SESSIONS: usize = 2000;
/// Files in [`FILES_SESSION`] (the kernel's `luo_stress_files`).
pub const FILES: usize = 500;
/// The session of [`Shape::Many`] that holds [`FILES`] files.
pub const FILES_SESSION: &str = "bench-files";
/// The session of [`Shape::Large`].
pub const LARGE_SESSION: &str = "bench-large";
/// The seed of [`Shape::Large`]'s pattern.
pub const LARGE_SEED: u64 = 0x6265_6e63_6831;
/// Each small memfd's size.
pub const SMALL_SIZE: usize = 4096;
/// Where luod's log goes (a file: the serial console is slow enough to slow luod down).
pub const LUOD_LOG: &str = "/run/luod-bench.log";
/// The descriptor limit the stages set for themselves and the luod they start.
pub const NOFILE: u64 = 65536;

/// What crosses the kexec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// [`SESSIONS`] sessions of one small memfd, and [`FILES`] files in one session.
    Many,
    /// One session, one patterned memfd of this many bytes.
    Large(u64),
}

impl Shape {
    /// `many`, or `large` of `size` bytes.
    pub fn parse(s: &str, size: u64) -> Option<Shape> {
        match s {
            "many" => Some(Shape::Many),
            "large" => Some(Shape::Large(size)),
            _ => None,
        }
    }

    /// The prefix of this shape's `LUO-BENCH` keys.
    fn key(self) -> String {
        match self {
            Shape::Many => format!("s{SESSIONS}"),
            Shape::Large(size) => format!("large_{}m", size >> 20),
        }
    }

    /// Every session with its files: (session, [(token, contents)]). The large memfd has no
    /// contents here (it is patterned).
    fn plan(self) -> Vec<(String, Vec<u64>)> {
        match self {
            Shape::Many => {
                let mut v: Vec<(String, Vec<u64>)> =
                    (0..SESSIONS).map(|i| (session_name(i), vec![1])).collect();
                v.push((FILES_SESSION.to_owned(), (1..=FILES as u64).collect()));
                v
            }
            Shape::Large(_) => vec![(LARGE_SESSION.to_owned(), vec![1])],
        }
    }

    fn files(self) -> usize {
        self.plan().iter().map(|(_, t)| t.len()).sum()
    }
}

/// The name of session `i` of [`Shape::Many`].
pub fn session_name(i: usize) -> String {
    format!("bench-{i:04}")
}

/// The contents of the small memfd at `token` of `session`: a line naming both, repeated.
pub fn small_contents(session: &str, token: u64) -> Vec<u8> {
    let line = format!("{session} token {token}\n");
    line.bytes().cycle().take(SMALL_SIZE).collect()
}

/// One session's files before the kexec: (name, [(token, file)]).
type Made = (String, Vec<(u64, OwnedFd)>);

/// One retrieved session with its files: (name, session, [(token, file)]).
type Retrieved<S> = (String, S, Vec<(u64, OwnedFd)>);

fn unexpected<T>(msg: String) -> Result<T, Error> {
    Err(Error::Unexpected(msg))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn figure(shape: Shape, what: &str, d: Duration) {
    println!("LUO-BENCH {}_{what}_ms={:.2}", shape.key(), ms(d));
}

/// Raises this process's descriptor limit (and so that of everything it starts) to
/// [`NOFILE`]: 2,000 sessions are 2,000 descriptors here and more in luod.
fn raise_nofile(report: &mut Report) -> Result<(), Error> {
    let want = rustix::process::Rlimit {
        current: Some(NOFILE),
        maximum: Some(NOFILE),
    };
    sys(
        "setrlimit(RLIMIT_NOFILE)",
        rustix::process::setrlimit(rustix::process::Resource::Nofile, want),
    )?;
    report.ok(&format!("descriptor limit {NOFILE}"));
    Ok(())
}

/// The file at `token` of `session`, as created before the kexec.
fn make_file(shape: Shape, session: &str, token: u64) -> Result<OwnedFd, Error> {
    match shape {
        Shape::Many => memfd_with("bench", &small_contents(session, token)),
        Shape::Large(size) => patterned_memfd("bench-large", size, LARGE_SEED),
    }
}

fn check_file(shape: Shape, fd: impl AsFd, session: &str, token: u64) -> Result<(), Error> {
    let what = format!("{session} token {token}");
    match shape {
        Shape::Many => check_contents(fd, &what, &small_contents(session, token)),
        Shape::Large(size) => check_pattern(fd, &what, size, LARGE_SEED),
    }
}

/// Every file of `shape`, made and filled (not timed).
fn make_files(report: &mut Report, shape: Shape) -> Result<Vec<Made>, Error> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for (name, tokens) in shape.plan() {
        let files = tokens
            .iter()
            .map(|&t| make_file(shape, &name, t).map(|fd| (t, fd)))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((name, files));
    }
    report.ok(&format!(
        "{} files made and written ({:.2} s)",
        shape.files(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(out)
}

/// luod, started with its log in [`LUOD_LOG`]; waits until a device can be opened through it.
fn start_luod(opts: &Options) -> Result<(Child, luo_client::Device), Error> {
    let _ = std::fs::remove_file(&opts.socket);
    let log = File::create(LUOD_LOG).map_err(|e| Error::Call("create luod's log", e))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::Call("dup luod's log", e))?;
    let mut child = Command::new(&opts.luod)
        .arg("--socket")
        .arg(&opts.socket)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Call("start luod", e))?;
    let t0 = Instant::now();
    loop {
        if opts.socket.exists() {
            match luo_client::Device::open_at(&opts.socket) {
                Ok(dev) => return Ok((child, dev)),
                Err(e) if t0.elapsed() > Duration::from_secs(120) => {
                    return Err(Error::Client("open the device through luod", Box::new(e)));
                }
                Err(_) => {}
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            print_log();
            return unexpected(format!("luod exited before serving: {status}"));
        }
        if t0.elapsed() > Duration::from_secs(120) {
            print_log();
            return unexpected("luod did not serve within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// luod's log, on the console.
fn print_log() {
    if let Ok(text) = std::fs::read_to_string(LUOD_LOG) {
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(40);
        if skip > 0 {
            println!("luod: ... ({skip} lines left out)");
        }
        for l in &lines[skip..] {
            println!("luod: {l}");
        }
    }
}

/// SIGTERM to luod; it must exit 0.
fn stop_luod(report: &mut Report, mut child: Child) -> Result<(), Error> {
    let pid = rustix::process::Pid::from_child(&child);
    sys(
        "kill luod",
        rustix::process::kill_process(pid, rustix::process::Signal::TERM),
    )?;
    let status = child.wait().map_err(|e| Error::Call("wait for luod", e))?;
    print_log();
    if !status.success() {
        return unexpected(format!("luod exited {status} after SIGTERM"));
    }
    report.ok("luod stopped (SIGTERM, exit 0)");
    Ok(())
}

/// Runs `kexec -e` (through the harness's `kexec`) while the caller holds everything.
fn kexec_holding(kexec: &str) -> Result<(), Error> {
    let status = Command::new(kexec)
        .arg("-e")
        .status()
        .map_err(|e| Error::Call("run kexec -e", e))?;
    unexpected(format!("kexec -e returned ({status})"))
}

/// Stage `luod-before`. Returns only on failure.
pub fn luod_before(report: &mut Report, opts: &Options, shape: Shape) -> Result<(), Error> {
    raise_nofile(report)?;
    let (luod, dev) = start_luod(opts)?;
    report.ok("luod serves");
    let files = make_files(report, shape)?;
    let t0 = Instant::now();
    let mut sessions = Vec::new();
    for (name, files) in &files {
        let s = client("create session", dev.create_session(name))?;
        let borrowed: Vec<_> = files.iter().map(|(t, fd)| (fd.as_fd(), *t)).collect();
        s.preserve_many(&borrowed)
            .map_err(|e| Error::Unexpected(format!("preserve in {name}: {e:?}")))?;
        sessions.push(s);
    }
    let took = t0.elapsed();
    figure(shape, "luod_preserve", took);
    report.ok(&format!(
        "{} sessions, {} files preserved through luod ({:.2} ms)",
        sessions.len(),
        shape.files(),
        ms(took)
    ));
    drop(files);
    let control = client("connect", Control::connect_at(&opts.socket))?;
    let t0 = Instant::now();
    let rep = client(
        "kexec (no_exec)",
        control.kexec(KexecOptions {
            no_exec: true,
            ..KexecOptions::default()
        }),
    )?;
    let took = t0.elapsed();
    if !rep.forwarded
        || rep.sessions != sessions.len() as u64
        || rep.preservable != shape.files() as u64
        || rep.unpreservable != 0
    {
        return unexpected(format!("luod's kexec reply: {rep:?}"));
    }
    figure(shape, "luod_forward", took);
    report.ok(&format!(
        "luod forwarded {} sessions, {} files, {} bytes into the kernel's in {:.2} ms",
        rep.sessions,
        rep.preservable,
        rep.preservable_bytes,
        ms(took)
    ));
    report.flush();
    let r = kexec_holding(&opts.kexec);
    drop((sessions, dev, luod));
    r
}

/// Retrieves every session and file of `shape` through `get_session`/`get_file`, timing the
/// first file and all of them from `t0`; returns the files for checking.
fn retrieve_all<S>(
    shape: Shape,
    t0: Instant,
    how: &str,
    mut get_session: impl FnMut(&str) -> Result<S, Error>,
    mut get_file: impl FnMut(&S, u64) -> Result<OwnedFd, Error>,
) -> Result<Vec<Retrieved<S>>, Error> {
    let mut out = Vec::new();
    let mut first = None;
    for (name, tokens) in shape.plan() {
        let s = get_session(&name)?;
        let mut files = Vec::new();
        for t in tokens {
            files.push((t, get_file(&s, t)?));
            first.get_or_insert_with(|| t0.elapsed());
        }
        out.push((name, s, files));
    }
    let all = t0.elapsed();
    if let Some(first) = first {
        figure(shape, &format!("{how}_first_retrieve"), first);
    }
    figure(shape, &format!("{how}_all_retrieved"), all);
    Ok(out)
}

fn check_all<S>(report: &mut Report, shape: Shape, got: &[Retrieved<S>]) -> Result<(), Error> {
    let t0 = Instant::now();
    let mut n = 0;
    for (name, _, files) in got {
        for (t, fd) in files {
            check_file(shape, fd, name, *t)?;
            n += 1;
        }
    }
    if n != shape.files() {
        return unexpected(format!("{n} files retrieved, expected {}", shape.files()));
    }
    report.ok(&format!(
        "{} sessions, {n} files: every byte as written ({:.2} s)",
        got.len(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Stage `luod-after`.
pub fn luod_after(report: &mut Report, opts: &Options, shape: Shape) -> Result<(), Error> {
    raise_nofile(report)?;
    let t0 = Instant::now();
    let (luod, dev) = start_luod(opts)?;
    let got = retrieve_all(
        shape,
        t0,
        "luod",
        |name| client("retrieve session", dev.retrieve_session(name)),
        |s: &luo_client::Session, t| client("retrieve file", s.retrieve(t)),
    )?;
    report.ok(&format!(
        "luod started and every session retrieved through it ({:.2} ms)",
        ms(t0.elapsed())
    ));
    check_all(report, shape, &got)?;
    match dev.retrieve_session("bench-none") {
        Err(e) if e.errno.0 == Errno::NOENT.raw_os_error() => {}
        other => return unexpected(format!("an unknown session: {other:?}")),
    }
    let control = client("connect", Control::connect_at(&opts.socket))?;
    let listed = client("list sessions", control.sessions())?;
    if listed.len() != got.len() || listed.iter().any(|s| !s.incoming || !s.retrieved) {
        return unexpected(format!(
            "luod lists {} sessions (expected {} incoming, retrieved)",
            listed.len(),
            got.len()
        ));
    }
    for (name, s, _) in &got {
        client("finish", s.finish())
            .map_err(|e| Error::Unexpected(format!("finish {name}: {e}")))?;
    }
    drop(got);
    drop(dev);
    // Finished and closed: luod lists nothing (its close handling is asynchronous).
    let w = Instant::now();
    loop {
        let n = client("list sessions", control.sessions())?.len();
        if n == 0 {
            break;
        }
        if w.elapsed() > Duration::from_secs(30) {
            return unexpected(format!("{n} sessions still listed 30 s after their finish"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    report.ok("every session finished and closed: luod lists none");
    drop(control);
    stop_luod(report, luod)?;
    kernel_clean(report, shape)
}

/// With luod stopped, the kernel holds none of the shape's kernel sessions (under either of the
/// names luod has given them) and no `luod`.
fn kernel_clean(report: &mut Report, shape: Shape) -> Result<(), Error> {
    let dev = open_device(report)?;
    let mut names: Vec<String> = shape
        .plan()
        .iter()
        .flat_map(|(n, _)| [kernel_session_name(0, n), legacy_kernel_session_name(0, n)])
        .collect();
    let sessions = names.len() / 2;
    names.push("luod".into());
    for name in &names {
        match dev.retrieve_session(name) {
            Err(Errno::NOENT) => {}
            Err(e) => return unexpected(format!("kernel session {name}: {e}, expected ENOENT")),
            Ok(_) => return unexpected(format!("kernel session {name} is still there")),
        }
    }
    report.ok(&format!(
        "the kernel holds none of the {sessions} kernel sessions, nor luod's state session"
    ));
    Ok(())
}

/// Stage `direct-before`. Returns only on failure.
pub fn direct_before(report: &mut Report, kexec: &str, shape: Shape) -> Result<(), Error> {
    raise_nofile(report)?;
    let dev = open_device(report)?;
    let files = make_files(report, shape)?;
    let t0 = Instant::now();
    let mut sessions = Vec::new();
    for (name, files) in &files {
        let s = sys("CREATE_SESSION", dev.create_session(name))?;
        for (t, fd) in files {
            sys("PRESERVE_FD", s.preserve_fd(fd, *t))?;
        }
        sessions.push(s);
    }
    let took = t0.elapsed();
    figure(shape, "direct_preserve", took);
    report.ok(&format!(
        "{} sessions, {} files preserved into the kernel directly ({:.2} ms)",
        sessions.len(),
        shape.files(),
        ms(took)
    ));
    drop(files);
    report.flush();
    let r = kexec_holding(kexec);
    drop((sessions, dev));
    r
}

/// Stage `direct-after`.
pub fn direct_after(report: &mut Report, shape: Shape) -> Result<(), Error> {
    raise_nofile(report)?;
    let t0 = Instant::now();
    let dev = sys("open /dev/liveupdate", luo_sys::liveupdate::Device::open())?;
    let got = retrieve_all(
        shape,
        t0,
        "direct",
        |name| sys("RETRIEVE_SESSION", dev.retrieve_session(name)),
        |s: &luo_sys::liveupdate::Session, t| sys("RETRIEVE_FD", s.retrieve_fd(t)),
    )?;
    report.ok(&format!(
        "every session retrieved from /dev/liveupdate ({:.2} ms)",
        ms(t0.elapsed())
    ));
    check_all(report, shape, &got)?;
    for (name, s, _) in &got {
        sys("FINISH", s.finish()).map_err(|e| Error::Unexpected(format!("finish {name}: {e}")))?;
    }
    report.ok("every session finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let many = Shape::Many.plan();
        assert_eq!(many.len(), SESSIONS + 1);
        assert_eq!(Shape::Many.files(), SESSIONS + FILES);
        assert_eq!(many[0].0, "bench-0000");
        assert_eq!(many[SESSIONS - 1].0, "bench-1999");
        assert_eq!(Shape::Large(1 << 30).files(), 1);
        assert_eq!(Shape::Large(1 << 30).key(), "large_1024m");
        assert_eq!(Shape::Many.key(), "s2000");
        assert_eq!(Shape::parse("many", 0), Some(Shape::Many));
        assert_eq!(Shape::parse("x", 0), None);
    }

    #[test]
    fn small_contents_name_their_place() {
        let a = small_contents("bench-0001", 1);
        assert_eq!(a.len(), SMALL_SIZE);
        assert!(a.starts_with(b"bench-0001 token 1\n"));
        assert_ne!(a, small_contents("bench-0010", 1));
        assert_ne!(a, small_contents("bench-0001", 2));
    }

    #[test]
    fn kernel_names_fit() {
        for (name, _) in Shape::Many.plan() {
            assert_eq!(kernel_session_name(0, &name).len(), 30);
            assert!(legacy_kernel_session_name(0, &name).len() <= 63);
        }
        // luod's own (crates/luod/src/liveupdate.rs, `kernel_name`).
        assert_eq!(
            kernel_session_name(0, "a"),
            "af63dc4c8601ec8c-00000000-luod"
        );
    }
}
