//! The harness of libluo's tests: luod and libluo built once per test process, libluo
//! installed into a temporary prefix by `scripts/install-capi`, C programs compiled with the
//! flags `pkg-config` gives for the installed `luo.pc` (or `luo-static.pc`), real luod
//! processes on private sockets, and programs run against them with a deadline.
//!
//! Nothing here may hang: every luod has a watchdog that kills it, and every program run has a
//! deadline after which it is killed and the test fails.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one luod may live before its watchdog kills it.
pub const WATCHDOG: Duration = Duration::from_secs(60);
/// Deadline of one program run.
pub const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// Reports that `test` cannot run here; under `LUO_REQUIRE_ALL=1` (CI) that is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// This crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True if `tool --version` runs; otherwise reports the skip.
pub fn have(test: &str, tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            &format!("{tool} is not installed (scripts/setup installs {package})"),
        );
    }
    ok
}

/// True if gcc and pkg-config are there; otherwise reports the skip.
pub fn have_c_tools(test: &str) -> bool {
    have(test, "gcc", "gcc") && have(test, "pkg-config", "pkg-config")
}

/// What this test process built and installed.
#[derive(Debug)]
pub struct Built {
    /// `luod`.
    pub luod: PathBuf,
    /// `target/<profile>`, where libluo.so and libluo.a are.
    pub profile_dir: PathBuf,
    /// Where this process keeps what it makes (a later test process removes it once this
    /// one is gone).
    pub scratch: PathBuf,
    /// The prefix `scripts/install-capi` installed libluo into.
    pub prefix: PathBuf,
}

/// luod and libluo of this build profile (`target/<profile>`, next to the test executable),
/// brought up to date with one `cargo build` (a test cannot depend on another crate's
/// binary), and libluo installed into a fresh prefix, once per test process.
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace())
            .args(["build", "--locked", "-p", "luod", "-p", "luo-capi"]);
        if release {
            build.arg("--release");
        }
        let out = build.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of luod and luo-capi failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        remove_stale_scratch();
        let scratch = std::env::temp_dir().join(format!("luo-capi-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let prefix = scratch.join("prefix");
        let install = Command::new(workspace().join("scripts/install-capi"))
            .arg("--from")
            .arg(&profile_dir)
            .arg(&prefix)
            .output()
            .expect("run scripts/install-capi");
        assert!(
            install.status.success(),
            "scripts/install-capi failed:\n{}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let luod = profile_dir.join("luod");
        assert!(luod.exists(), "{} was not built", luod.display());
        Built {
            luod,
            profile_dir,
            scratch,
            prefix,
        }
    })
}

/// Removes the scratch directories of earlier test processes that are gone.
fn remove_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("luo-capi-test-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `pkg-config ARGS` against the installed prefix: its output, split into words.
pub fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .env("PKG_CONFIG_PATH", built().prefix.join("lib/pkgconfig"))
        .output()
        .expect("run pkg-config");
    assert!(
        out.status.success(),
        "pkg-config {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// How a C program links libluo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// `pkg-config --cflags --libs luo`: against libluo.so.
    Dynamic,
    /// `pkg-config --cflags --libs luo-static`: libluo.a linked in.
    Static,
}

impl Link {
    fn module(self) -> &'static str {
        match self {
            Link::Dynamic => "luo",
            Link::Static => "luo-static",
        }
    }
}

/// Compiles the C program `source` against the installed header and library, as `link`
/// says, once per test process; returns the executable.
pub fn compile(source: &Path, link: Link) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(PathBuf, Link)>>> = OnceLock::new();
    let done = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let stem = source.file_stem().expect("file name").to_string_lossy();
    let out = built().scratch.join(format!("{stem}-{}", link.module()));
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|(s, l)| s == source && *l == link) {
        return out;
    }
    let flags = pkg_config(&["--cflags", "--libs", link.module()]);
    let result = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-o")
        .arg(&out)
        .arg(source)
        .args(&flags)
        .arg("-pthread")
        .output()
        .expect("run gcc");
    assert!(
        result.status.success(),
        "gcc {} {flags:?} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    done.push((source.to_path_buf(), link));
    out
}

/// What a program run gave.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Output {
    /// The exit code (-1 for a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics with the output unless the program exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `program` with `args` against luod at `socket`: with libluo.so on the library path
/// if `with_lib`, else with none (a program linked against it then cannot start).
pub fn run(program: &Path, args: &[&str], socket: &Path, with_lib: bool) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LUOD_SOCKET", socket)
        .env_remove("LD_PRELOAD")
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if with_lib {
        cmd.env("LD_LIBRARY_PATH", built().prefix.join("lib"));
    }
    let what = format!("{} {}", program.display(), args.join(" "));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// A running luod on a private socket; dropping it stops it.
pub struct Luod {
    /// Its socket.
    pub socket: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    child: Child,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Luod {
    /// Starts luod on `<scratch>/<tag>-N/luod.sock` and waits until it answers.
    pub fn start(tag: &str) -> Luod {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = built()
            .scratch
            .join(format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("luod dir");
        let socket = dir.join("luod.sock");
        let log = dir.join("luod.log");
        let child = Command::new(&built().luod)
            .arg("--socket")
            .arg(&socket)
            .args(["--log", "luod=debug"])
            .env_remove("LUOD_SOCKET")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn luod");
        let pid = child.id();
        let (stop, stopped) = channel::<()>();
        let dog = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(WATCHDOG) {
                eprintln!("watchdog: luod {pid} still running after {WATCHDOG:?}; killing it");
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        });
        let luod = Luod {
            socket,
            dir,
            log,
            child,
            watchdog: Some((stop, dog)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while luo_client::Control::connect_at(&luod.socket)
            .and_then(|c| c.ping())
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "luod did not start:\n{}",
                luod.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }

    /// A control connection, for the test's own checks.
    pub fn control(&self) -> luo_client::Control {
        luo_client::Control::connect_at(&self.socket).expect("connect to luod")
    }

    /// luod's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some((stop, dog)) = self.watchdog.take() {
            let _ = stop.send(());
            let _ = dog.join();
        }
        if std::thread::panicking() {
            eprintln!("luod log ({}):\n{}", self.log.display(), self.log_text());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
