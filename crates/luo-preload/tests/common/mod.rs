//! The harness of luo-preload's tests: the binaries under test, the C programs of
//! `tests/c` built with the system's gcc in four ways, real luod processes on private sockets,
//! and C programs run against them through the preload library.
//!
//! Nothing here may hang: every luod has a watchdog that kills it, and every program run has a
//! deadline after which it is killed and the test fails.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

pub mod script;
pub mod selftests;

/// How long one luod may live before its watchdog kills it.
pub const WATCHDOG: Duration = Duration::from_secs(80);
/// Deadline of one program run.
pub const RUN_DEADLINE: Duration = Duration::from_secs(40);

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

/// The directory of the C suite.
pub fn c_dir() -> PathBuf {
    workspace().join("tests/c")
}

/// The binaries under test, built once per test process.
#[derive(Debug)]
pub struct Binaries {
    /// `luod`.
    pub luod: PathBuf,
    /// `luoctl`.
    pub luoctl: PathBuf,
    /// `libluo_preload.so`.
    pub preload: PathBuf,
    /// Where this process keeps what it builds.
    pub scratch: PathBuf,
}

/// The binaries of this build profile (`target/<profile>`, next to the test executable),
/// brought up to date with one `cargo build` (a test cannot depend on another crate's
/// binaries, and `cargo test -p luo-preload` alone does not build luod).
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> or target/<profile>/examples/<example>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(workspace()).args([
            "build",
            "--locked",
            "-p",
            "luod",
            "-p",
            "luoctl",
            "-p",
            "luo-preload",
        ]);
        if release {
            build.arg("--release");
        }
        let out = build.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of luod, luoctl and luo-preload failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        remove_stale_scratch();
        let scratch = std::env::temp_dir().join(format!("luo-preload-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let b = Binaries {
            luod: profile_dir.join("luod"),
            luoctl: profile_dir.join("luoctl"),
            preload: profile_dir.join("libluo_preload.so"),
            scratch,
        };
        for p in [&b.luod, &b.luoctl, &b.preload] {
            assert!(p.exists(), "{} was not built", p.display());
        }
        b
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
            .and_then(|n| n.strip_prefix("luo-preload-test-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One way of building the C programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `-O2`.
    O2,
    /// `-O2 -D_FORTIFY_SOURCE=2`: opens become `__open_2` where the compiler cannot see the
    /// flags.
    Fortify,
    /// `-D_FILE_OFFSET_BITS=64`: `open` becomes `open64`.
    FileOffset64,
    /// `-static`: LD_PRELOAD cannot act, the program must see ENOENT and skip.
    Static,
}

impl Flavor {
    /// Every flavor.
    pub const ALL: [Flavor; 4] = [
        Flavor::O2,
        Flavor::Fortify,
        Flavor::FileOffset64,
        Flavor::Static,
    ];

    fn name(self) -> &'static str {
        match self {
            Flavor::O2 => "o2",
            Flavor::Fortify => "fortify",
            Flavor::FileOffset64 => "fob64",
            Flavor::Static => "static",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Flavor::O2 => &["-O2"],
            Flavor::Fortify => &["-O2", "-D_FORTIFY_SOURCE=2"],
            Flavor::FileOffset64 => &["-O1", "-D_FILE_OFFSET_BITS=64"],
            Flavor::Static => &["-O2", "-static"],
        }
    }
}

/// True if gcc is there (else the test is skipped, or fails under `LUO_REQUIRE_ALL=1`).
pub fn have_gcc(test: &str) -> bool {
    let ok = Command::new("gcc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(test, "gcc is not installed (scripts/setup installs it)");
    }
    ok
}

/// Builds `tests/c/<program>.c` (with `luo_test.c`) in `flavor`, once per test process.
pub fn build(program: &str, flavor: Flavor) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, Flavor)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let dir = binaries().scratch.join(flavor.name());
    let out = dir.join(program);
    // One compiler run at a time per program: tests of one binary run in parallel threads.
    let mut done = built.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|(p, f)| p == program && *f == flavor) {
        return out;
    }
    std::fs::create_dir_all(&dir).expect("build dir");
    let c = c_dir();
    let result = Command::new("gcc")
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(flavor.flags())
        .arg("-I")
        .arg(&c)
        .arg("-o")
        .arg(&out)
        .arg(c.join(format!("{program}.c")))
        .arg(c.join("luo_test.c"))
        .arg("-pthread")
        .output()
        .expect("run gcc");
    assert!(
        result.status.success(),
        "gcc {program} ({flavor:?}) failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    done.push((program.to_owned(), flavor));
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

    /// Panics with the output unless the program printed TEST PASSED and exited 0.
    pub fn assert_passed(&self, what: &str) {
        assert!(
            self.status.success() && self.stdout.contains("TEST PASSED"),
            "{what} failed ({}):\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// The holder child a stage printed (`CHILD <pid>`).
    pub fn child(&self) -> Option<i32> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("CHILD ")?.trim().parse().ok())
    }
}

/// Runs `program` with `args` against luod at `socket`, through the preload library if
/// `preload`, with a deadline.
pub fn run(program: &Path, args: &[&str], socket: &Path, preload: bool) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LUOD_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if preload {
        cmd.env("LD_PRELOAD", &binaries().preload);
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    run_command(cmd, &format!("{}", program.display()))
}

/// Runs `cmd` (stdout and stderr piped) to its end, killing it after [`RUN_DEADLINE`].
pub fn run_command(mut cmd: Command, what: &str) -> Output {
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

/// Kills and reaps a holder child a stage left behind.
pub fn kill_holder(pid: i32) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
        // This process is a subreaper (see `Luod::start`), so the orphan is ours to reap.
        let _ = rustix::process::waitpid(Some(p), WaitOptions::empty());
    }
}

/// A temporary directory, removed by [`Luod`]'s drop.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = binaries()
        .scratch
        .join(format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A running luod on a private socket. Dropping it stops it and every successor a reboot
/// started.
pub struct Luod {
    /// Its socket.
    pub socket: PathBuf,
    /// Its directory.
    pub dir: PathBuf,
    log: PathBuf,
    pids: Arc<Mutex<Vec<i32>>>,
    first: Option<std::process::Child>,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Luod {
    /// Starts luod on `<scratch>/<tag>/luod.sock` and waits until it answers.
    pub fn start(tag: &str) -> Luod {
        // Holder children of the C programs and luod's successors are orphaned when their
        // parents exit; as a subreaper this process adopts and reaps them.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let dir = temp_dir(tag);
        let socket = dir.join("luod.sock");
        let log = dir.join("luod.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let first = Command::new(&binaries().luod)
            .arg("--socket")
            .arg(&socket)
            .args(["--log", "luod=debug"])
            .env_remove("LUOD_SOCKET")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn luod");
        let pids = Arc::new(Mutex::new(vec![first.id() as i32]));
        let (stop, stopped) = channel::<()>();
        let dog_pids = Arc::clone(&pids);
        let dog = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(WATCHDOG) {
                eprintln!("watchdog: luod still running after {WATCHDOG:?}; killing it");
                for &pid in dog_pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    if let Some(p) = Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(p, Signal::KILL);
                    }
                }
            }
        });
        let luod = Luod {
            socket,
            dir,
            log,
            pids,
            first: Some(first),
            watchdog: Some((stop, dog)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while luod.pid().is_none() {
            assert!(
                Instant::now() < deadline,
                "luod did not start:\n{}",
                luod.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }

    /// The pid of the luod process serving now, if it answers.
    pub fn pid(&self) -> Option<i32> {
        let control = luo_client::Control::connect_at(&self.socket).ok()?;
        Some(control.status().ok()?.pid as i32)
    }

    /// luod's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `luoctl --socket S reboot`: open outgoing sessions become incoming, every connection is
    /// cut, a new luod process serves.
    pub fn reboot(&self) {
        let mut cmd = Command::new(&binaries().luoctl);
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("reboot")
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run_command(cmd, "luoctl reboot");
        assert!(
            out.status.success(),
            "luoctl reboot failed: {}{}\n{}",
            out.stdout,
            out.stderr,
            self.log_text()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = self.pid() {
                let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no luod after reboot:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for &pid in pids.iter().rev() {
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, Signal::TERM);
            }
        }
        if let Some(mut first) = self.first.take() {
            let _ = first.wait();
        }
        for &pid in pids.iter().skip(1) {
            if let Some(p) = Pid::from_raw(pid) {
                let deadline = Instant::now() + Duration::from_secs(3);
                loop {
                    match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            let _ = rustix::process::kill_process(p, Signal::KILL);
                            let _ = rustix::process::waitpid(Some(p), WaitOptions::empty());
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
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
