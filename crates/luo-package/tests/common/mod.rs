//! What the tests of this crate share: where the workspace and its target directory are,
//! skipping (a failure under `LUO_REQUIRE_ALL=1`), scratch directories, commands run with a
//! deadline, luod built from this tree, and waiting for a luod to answer.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long one short step may take: a luod's start, one command of a client.
pub const STEP: Duration = Duration::from_secs(30);
/// How long a cargo build may take (release, on 2 loaded cores, from nothing).
pub const BUILD: Duration = Duration::from_secs(30 * 60);

/// Reports that `test` cannot run here. Under `LUO_REQUIRE_ALL=1` (CI) that is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// True if `tool --version` (or `tool ARGS...`) runs and succeeds.
pub fn runs(tool: &[&str]) -> bool {
    Command::new(tool[0])
        .args(if tool.len() > 1 {
            &tool[1..]
        } else {
            &["--version"]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if `tool` [`runs`]; otherwise reports the skip, naming the Debian package that has it.
pub fn have(test: &str, tool: &[&str], package: &str) -> bool {
    let ok = runs(tool);
    if !ok {
        skip(
            test,
            &format!(
                "{} is not installed (scripts/setup installs it: {package})",
                tool.join(" ")
            ),
        );
    }
    ok
}

/// True if the test runs as root; otherwise reports the skip.
pub fn require_root(test: &str, why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, why);
    false
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The target directory this test was built in (`target/`, or `$CARGO_TARGET_DIR`): the test
/// binary is `TARGET/PROFILE/deps/NAME-HASH`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("TARGET/PROFILE/deps")
        .to_path_buf()
}

/// The profile directory this test was built in (`TARGET/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("TARGET/PROFILE/deps")
        .to_path_buf()
}

/// The path of `cargo` that runs the tests.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The binaries of this tree built in this test's profile, once per test process.
pub struct Built {
    pub luod: PathBuf,
    pub luoctl: PathBuf,
    pub workload: PathBuf,
}

pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let mut cmd = Command::new(cargo());
        cmd.current_dir(workspace()).args([
            "build",
            "--locked",
            "-p",
            "luod",
            "-p",
            "luoctl",
            "-p",
            "luo-client",
            "--bins",
            "--example",
            "workload",
        ]);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = run(&mut cmd, BUILD);
        out.assert_success("cargo build -p luod -p luoctl");
        Built {
            luod: profile.join("luod"),
            luoctl: profile.join("luoctl"),
            workload: profile.join("examples/workload"),
        }
    })
}

/// A scratch directory under the system's temp directory, mode 0755, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "luo-package-{}-{}-{tag}",
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

/// What a finished command said.
#[derive(Debug)]
pub struct Output {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what}: {} exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `cmd` to its end, its output captured, killing it (and failing the test) after
/// `deadline`.
pub fn run(cmd: &mut Command, deadline: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        what,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Waits until a luod answers a ping on `socket` (trusting `server_uid` too, for a luod run by
/// another user), failing the test with `log` if `child` exits first or `STEP` passes.
pub fn wait_for_luod(socket: &Path, child: &mut Child, log: &Path) {
    let end = Instant::now() + STEP;
    loop {
        if luo_client::Control::connect_at(socket)
            .and_then(|c| c.ping())
            .is_ok()
        {
            return;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "luod exited at start ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < end,
            "luod did not answer on {} within {STEP:?}:\n{}",
            socket.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process this test started, with its process group: SIGTERM then SIGKILL to the group
/// when dropped, so luod's successors, helpers and clients go with it.
pub struct Group(pub Child);

impl Group {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> Group {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Group(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::TERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal(rustix::process::Signal::KILL);
        let _ = self.0.wait();
    }
}
