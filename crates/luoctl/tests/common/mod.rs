//! What luoctl's tests share: a real luod on a private socket ([`Luod`]), luoctl run as any
//! uid ([`Luoctl`]), and the redaction of what changes from run to run ([`Redact`]).
//!
//! luod is built by the first test that needs it (`cargo build -p luod`, the same profile as
//! this test), so `cargo test -p luoctl` runs against the luod of this tree.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use luo_client::Control;
use rustix::process::{Pid, Signal, WaitOptions};

/// How long any one step may take: luod's start, one luoctl run.
pub const STEP: Duration = Duration::from_secs(20);

/// `nobody`: the other user of the tests that need one.
pub const NOBODY: u32 = 65534;

/// Reports that `test` cannot run here. Under `LUO_REQUIRE_ALL=1` (CI) that is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// True if the test runs as root; otherwise reports the skip.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root to run a process as another uid");
    false
}

/// The luoctl under test.
pub fn luoctl_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_luoctl"))
}

/// luod, built next to luoctl from this tree (once per test process).
pub fn luod_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = luoctl_binary()
                .parent()
                .expect("target/<profile>")
                .to_path_buf();
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .current_dir(&workspace)
                .args(["build", "--locked", "-p", "luod"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let out = build.output().expect("run cargo build -p luod");
            assert!(
                out.status.success(),
                "cargo build -p luod failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            profile_dir.join("luod")
        })
        .clone()
}

/// Every spawn of a test process goes through this lock: a child forked by one test holds a
/// copy of the other tests' descriptors until it execs.
static FORK_LOCK: Mutex<()> = Mutex::new(());

pub fn spawn(cmd: &mut Command) -> Child {
    let _guard = FORK_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// A directory under /tmp that every uid may traverse (0755), removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "luoctl-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets `cmd` up to run as `uid` (its group the same), with none of luod's variables unless
/// the test sets them.
pub fn as_user(cmd: &mut Command, uid: u32) {
    for var in [
        "LUOD_SOCKET",
        "LUOD_CONFIG",
        "LUOD_SERVER_UID",
        "XDG_RUNTIME_DIR",
        "LD_PRELOAD",
    ] {
        cmd.env_remove(var);
    }
    if uid != rustix::process::geteuid().as_raw() {
        cmd.uid(uid).gid(uid);
    }
}

/// A luod on a private socket, run as a given uid; stopped (SIGTERM, then SIGKILL) when
/// dropped, with any successor an upgrade or reboot started.
pub struct Luod {
    child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    log: PathBuf,
    pids: Vec<i32>,
}

impl Luod {
    /// luod as this process's uid, socket mode 0600.
    pub fn start(tag: &str) -> Luod {
        Luod::start_as(tag, rustix::process::geteuid().as_raw(), &[])
    }

    /// luod as `uid` with `extra` flags; its directory belongs to `uid`.
    pub fn start_as(tag: &str, uid: u32, extra: &[&str]) -> Luod {
        // Successors of an upgraded or rebooted luod are orphaned when their predecessor
        // exits; as a subreaper this process adopts and reaps them.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let dir = TempDir::new(tag);
        if uid != rustix::process::geteuid().as_raw() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown");
        }
        let socket = dir.path().join("luod.sock");
        // Beside the directory, not in it: the directory may belong to another uid.
        let log = dir.path().with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(luod_binary());
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--log", "luod=debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        as_user(&mut cmd, uid);
        let child = spawn(&mut cmd);
        let pids = vec![child.id() as i32];
        let mut luod = Luod {
            child: Some(child),
            dir,
            socket,
            log,
            pids,
        };
        let deadline = Instant::now() + STEP;
        loop {
            // A luod of another uid is not trusted by this process: it is up once it accepts
            // the connection that luo-client then refuses.
            let up = match Control::connect_at(&luod.socket) {
                Ok(c) => c.ping().is_ok(),
                Err(e) => matches!(e.kind, luo_client::ErrorKind::UntrustedServer { .. }),
            };
            if up {
                break;
            }
            if let Some(Ok(Some(status))) = luod.child.as_mut().map(Child::try_wait) {
                panic!("luod exited at start ({status}):\n{}", luod.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "luod did not start:\n{}",
                luod.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// luod's status (luo-client); its pid is remembered, so a successor is stopped too.
    pub fn status(&mut self) -> luo_client::Status {
        let s = Control::connect_at(&self.socket)
            .and_then(|c| c.status())
            .expect("status");
        self.note(s.pid as i32);
        s
    }

    pub fn note(&mut self, pid: i32) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }

    fn all_gone(&mut self) -> bool {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(_)) = child.try_wait()
        {
            self.child = None;
        }
        for &pid in &self.pids {
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), WaitOptions::NOHANG);
            }
        }
        self.child.is_none() && !self.pids.iter().any(|&p| is_luod(p))
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        if let Ok(s) = Control::connect_at(&self.socket).and_then(|c| c.status()) {
            self.note(s.pid as i32);
        }
        for sig in [Signal::TERM, Signal::KILL] {
            for &pid in &self.pids {
                if is_luod(pid)
                    && let Some(p) = Pid::from_raw(pid)
                {
                    let _ = rustix::process::kill_process(p, sig);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.all_gone() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- luod log -----\n{}-----", self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// True while `pid` is a running luod (not a zombie, not a reused pid).
fn is_luod(pid: i32) -> bool {
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    });
    running
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|&b| b == 0)
                .next()
                .is_some_and(|argv0| argv0.ends_with(b"luod"))
        })
}

/// What one luoctl run gave.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Standard output parsed as the one JSON document it must be.
    pub fn json(&self) -> serde_json::Value {
        assert!(
            self.stdout.ends_with('\n') && self.stdout.trim_end().lines().count() == 1,
            "not one document on one line: {:?}",
            self.stdout
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.stdout))
    }
}

/// luoctl, run as a uid with an environment.
pub struct Luoctl {
    uid: u32,
    env: Vec<(String, String)>,
}

impl Luoctl {
    /// As this process's uid.
    pub fn new() -> Luoctl {
        Luoctl::as_uid(rustix::process::geteuid().as_raw())
    }

    pub fn as_uid(uid: u32) -> Luoctl {
        Luoctl {
            uid,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Luoctl {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `luoctl --socket SOCKET args...`.
    pub fn at(&self, socket: &Path, args: &[&str]) -> Output {
        let mut full = vec!["--socket", socket.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// `luoctl args...`, within [`STEP`].
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(luoctl_binary());
        cmd.args(args);
        as_user(&mut cmd, self.uid);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd);
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).expect("utf-8 stdout");
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            err.read_to_string(&mut s).expect("utf-8 stderr");
            s
        });
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("luoctl {args:?} did not finish within {STEP:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Output {
            status,
            stdout: out.join().expect("stdout"),
            stderr: err.join().expect("stderr"),
        }
    }
}

/// Replaces what changes from run to run with placeholders, before a snapshot.
#[derive(Debug, Default)]
pub struct Redact {
    texts: Vec<(String, String)>,
    numbers: Vec<(u64, String)>,
    labels: Vec<String>,
    fields: Vec<String>,
}

impl Redact {
    pub fn new() -> Redact {
        Redact::default().text(env!("CARGO_PKG_VERSION"), "[VERSION]")
    }

    /// Every occurrence of `text`.
    pub fn text(mut self, text: impl AsRef<Path>, with: &str) -> Redact {
        let text = text.as_ref().display().to_string();
        self.texts.push((text, with.to_owned()));
        // Longest first, so a path is replaced before a part of it.
        self.texts.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        self
    }

    /// `n` where it stands as a whole number.
    pub fn number(mut self, n: u64, with: &str) -> Redact {
        self.numbers.push((n, with.to_owned()));
        self
    }

    /// Every number on the text lines that start with `label` (`"uptime:"`).
    pub fn line(mut self, label: &str) -> Redact {
        self.labels.push(label.to_owned());
        self
    }

    /// The number after `"field":` in JSON.
    pub fn field(mut self, field: &str) -> Redact {
        self.fields.push(field.to_owned());
        self
    }

    pub fn apply(&self, text: &str) -> String {
        let mut s = text.to_owned();
        for (t, with) in &self.texts {
            s = s.replace(t.as_str(), with);
        }
        for field in &self.fields {
            s = replace_after(&s, &format!("\"{field}\":"), "\"[N]\"");
        }
        let mut out = Vec::new();
        for line in s.split_inclusive('\n') {
            let digits = self.labels.iter().any(|l| line.starts_with(l.as_str()));
            out.push(map_numbers(line, |n| {
                if digits {
                    return Some("[N]".to_owned());
                }
                let v: u64 = n.parse().ok()?;
                self.numbers
                    .iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, w)| w.clone())
            }));
        }
        out.concat()
    }
}

/// `text` with each whole number (a run of digits and points not inside a word) replaced
/// where `f` says.
fn map_numbers(text: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if !starts {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
            j += 1;
        }
        // A trailing point ends a sentence, not the number.
        while chars[j - 1] == '.' {
            j -= 1;
        }
        let run: String = chars[i..j].iter().collect();
        let inside_word = j < chars.len() && (chars[j].is_alphabetic() || chars[j] == '_');
        match (!inside_word).then(|| f(&run)).flatten() {
            Some(with) => out.push_str(&with),
            None => out.push_str(&run),
        }
        i = j;
    }
    out
}

/// `text` with the number after each `key` replaced by `with`.
fn replace_after(text: &str, key: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(key) {
        let (head, tail) = rest.split_at(at + key.len());
        out.push_str(head);
        let end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(with);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
