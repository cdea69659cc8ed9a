//! The README's "Five minutes with luod", run as a new user runs it: in a fresh clone of this
//! repository's HEAD, luod started as the README's "Set up" says, then every command of the
//! walkthrough's code block typed into one bash, as written, comments and aliases included,
//! one at a time, each after the one before has finished (or, for the one sent to the
//! background, once it says it is holding its session), as a person reading the comments would.
//!
//! The commands come from the README itself, so the test fails when the README changes and no
//! longer matches [`STEPS`]; each step checks what the README's comment promises.
//!
//! As root, luod serves `/run/luod/luod.sock`, as it would on a fresh machine; the test gives
//! it (and the walkthrough's shell) a mount namespace of their own with an empty tmpfs on
//! `/run`, so it meets no other luod of the machine. As another user, luod serves
//! `$XDG_RUNTIME_DIR/luod.sock`, in a private directory.
//!
//! The clone has its own `target/` (the README's aliases name `target/debug/...`), but shares
//! the compiled dependencies of this workspace through cargo's build directory, so only the
//! workspace's own crates are compiled again. Cargo names a workspace crate's artifacts by a
//! hash of the crate that does not depend on where the workspace is, so the clone's crates
//! would take the place of this tree's own (and a later build of this tree could take them,
//! built from HEAD, for its own uncommitted work); a profile setting for each of them, one
//! that changes nothing but that hash, keeps them apart. Both settings are in a cargo config
//! file beside the clone, not in it: the clone stays as `git clone` made it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::{BUILD, Group, STEP, TempDir, have};

const TEST: &str = "readme_walkthrough_runs_verbatim_from_a_fresh_clone";

/// Each command of the walkthrough (the text before its comment), and what it must show.
const STEPS: &[(&str, Check)] = &[
    (
        "cargo build -p luoctl -p luo-client --bins --examples",
        Check::Done(&[]),
    ),
    (
        "alias luoctl=target/debug/luoctl workload=target/debug/examples/workload",
        Check::Done(&[]),
    ),
    (
        "luoctl status",
        Check::Done(&["generation:   0", "sessions:     0 outgoing, 0 incoming"]),
    ),
    (
        "workload v1 counter",
        Check::Done(&["counter=1 preserved in session \"counter\" and handed off"]),
    ),
    ("luoctl sessions", Check::Session("incoming", "counter")),
    (
        "workload v2 counter --keep &",
        Check::Background(
            "holding it",
            &[
                "counter was 1, now 2",
                "counter preserved again in outgoing session \"counter\"",
            ],
        ),
    ),
    ("luoctl upgrade", Check::Done(&["luod upgraded: pid "])),
    (
        "luoctl reboot",
        Check::Done(&["luod rebooted: open sessions are now incoming"]),
    ),
    ("kill %1", Check::Done(&[])),
    (
        "workload v3 counter",
        Check::Done(&["counter was 2, now 3"]),
    ),
    ("luoctl status", Check::Done(&["generation:   1"])),
];

/// What a step must show.
#[derive(Debug)]
enum Check {
    /// It exits 0, and its output has each of these texts.
    Done(&'static [&'static str]),
    /// It exits 0, and one line of its output has this state and ends with this session name.
    Session(&'static str, &'static str),
    /// Sent to the background: it says the first text (within a step's time), and by then has
    /// said each of the others.
    Background(&'static str, &'static [&'static str]),
}

/// The walkthrough's lines as the README has them, each with its command (the text before
/// the comment); lines that are only a comment are left out.
fn walkthrough(readme: &str) -> Vec<(String, String)> {
    let blocks = luo_package::code_blocks(readme, "Five minutes with luod");
    assert_eq!(
        blocks.len(),
        1,
        "README.md's \"Five minutes with luod\" should have one code block: {blocks:?}"
    );
    blocks[0]
        .lines()
        .filter_map(|line| {
            let command = line.split(" #").next().unwrap_or("").trim();
            (!command.is_empty() && !command.starts_with('#'))
                .then(|| (line.to_owned(), command.to_owned()))
        })
        .collect()
}

/// The command of "Set up" that starts luod: the first line of its first code block.
fn start_luod(readme: &str) -> String {
    let blocks = luo_package::code_blocks(readme, "Set up");
    let line = blocks
        .first()
        .and_then(|b| b.lines().next())
        .expect("README.md's \"Set up\" has a code block");
    let command = line.split(" #").next().unwrap_or("").trim().to_owned();
    assert!(
        command.contains("luod"),
        "the first command of README.md's \"Set up\" should start luod: {line:?}"
    );
    command
}

/// The walkthrough's shell: bash reading commands from a pipe, its output read line by line.
struct Shell {
    stdin: std::process::ChildStdin,
    lines: Receiver<String>,
    /// Everything the shell printed, for the failure messages.
    transcript: String,
    _group: Group,
}

impl Shell {
    fn send(&mut self, text: &str) {
        self.transcript.push_str(&format!("$ {text}\n"));
        writeln!(self.stdin, "{text}").expect("write to the shell");
        self.stdin.flush().expect("flush");
    }

    /// Reads lines until one equal to `marker`-something, returning the text before it and
    /// what followed the marker on its line.
    fn until_marker(&mut self, marker: &str, deadline: Duration) -> (String, String) {
        let mut text = String::new();
        let end = Instant::now() + deadline;
        loop {
            let line = self.next_line(end, &format!("the end of the step ({marker})"));
            if let Some(rest) = line.strip_prefix(marker) {
                return (text, rest.trim().to_owned());
            }
            text.push_str(&line);
            text.push('\n');
        }
    }

    /// Reads lines until one contains `wanted`, returning everything read.
    fn until_text(&mut self, wanted: &str, deadline: Duration) -> String {
        let mut text = String::new();
        let end = Instant::now() + deadline;
        loop {
            let line = self.next_line(end, wanted);
            text.push_str(&line);
            text.push('\n');
            if line.contains(wanted) {
                return text;
            }
        }
    }

    fn next_line(&mut self, end: Instant, waiting_for: &str) -> String {
        let left = end.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.transcript.push_str(&line);
                self.transcript.push('\n');
                line
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "waited in vain for {waiting_for:?}; the shell so far:\n{}",
                self.transcript
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "the shell exited while waiting for {waiting_for:?}:\n{}",
                self.transcript
            ),
        }
    }

    /// Runs one line and returns its output and exit status.
    fn step(&mut self, line: &str, deadline: Duration) -> (String, i32) {
        const MARKER: &str = "@@luo-walkthrough-step-done";
        self.send(line);
        self.send(&format!("echo \"{MARKER} $?\""));
        let (text, status) = self.until_marker(MARKER, deadline);
        (text, status.parse().unwrap_or(-1))
    }
}

/// Writes `dir/.cargo/config.toml` (cargo reads it for the clone in `dir`): the build
/// directory of this workspace for the clone's intermediate artifacts, and for each crate of
/// the clone a number of codegen units one less than the default, which gives the crate's
/// artifacts names of their own (see the module's doc).
fn share_dependencies(clone: &Path, dir: &Path) {
    let mut config = format!(
        "[build]\nbuild-dir = \"{}\"\n",
        common::target_dir().display()
    );
    let members = std::fs::read_dir(clone.join("crates")).expect("crates/");
    for member in members {
        let manifest = member.expect("entry").path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|n| n.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{}: no name", manifest.display()));
        // The defaults are 256 (dev) and 16 (release).
        config.push_str(&format!(
            "[profile.dev.package.{name}]\ncodegen-units = 255\n\
             [profile.release.package.{name}]\ncodegen-units = 15\n"
        ));
    }
    std::fs::create_dir_all(dir.join(".cargo")).expect(".cargo");
    std::fs::write(dir.join(".cargo/config.toml"), config).expect("config.toml");
}

#[test]
fn readme_walkthrough_runs_verbatim_from_a_fresh_clone() {
    if !have(TEST, &["git"], "git") {
        return;
    }
    let root = rustix::process::geteuid().is_root();
    if root && !have(TEST, &["unshare", "--version"], "util-linux") {
        return;
    }
    let started = Instant::now();
    let workspace = common::workspace();
    let scratch = TempDir::new("walkthrough");
    let clone = scratch.path().join("luod");

    // A fresh clone of HEAD: what a new user gets, whatever this work tree has uncommitted.
    let head = common::run(
        Command::new("git")
            .arg("-C")
            .arg(&workspace)
            .args(["rev-parse", "HEAD"]),
        STEP,
    );
    head.assert_success("git rev-parse HEAD");
    common::run(
        Command::new("git")
            .args(["clone", "--quiet", "--no-checkout"])
            .arg(&workspace)
            .arg(&clone),
        STEP,
    )
    .assert_success("git clone");
    common::run(
        Command::new("git").arg("-C").arg(&clone).args([
            "checkout",
            "--quiet",
            "--detach",
            head.stdout.trim(),
        ]),
        STEP,
    )
    .assert_success("git checkout");
    let readme = std::fs::read_to_string(clone.join("README.md")).expect("README.md");

    // The README's commands must be the ones this test knows what to expect of.
    let lines = walkthrough(&readme);
    let commands: Vec<&str> = lines.iter().map(|(_, c)| c.as_str()).collect();
    let expected: Vec<&str> = STEPS.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        commands, expected,
        "README.md's \"Five minutes with luod\" changed: its commands are not the ones this \
         test checks. Update STEPS in crates/luo-package/tests/walkthrough.rs with what the \
         new commands must show."
    );
    let luod_command = start_luod(&readme);
    share_dependencies(&clone, scratch.path());

    // The shell, in a mount namespace with an empty /run as root; with a private runtime
    // directory otherwise.
    let runtime = scratch.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let socket = if root {
        Path::new("/run/luod/luod.sock").to_path_buf()
    } else {
        runtime.join("luod.sock")
    };
    let mut cmd = if root {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--"]);
        c.arg("bash");
        c
    } else {
        Command::new("bash")
    };
    cmd.args(["--norc", "--noprofile", "-s"])
        .current_dir(&clone)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TERM_PROGRESS_WHEN", "never");
    for var in [
        "LUOD_SOCKET",
        "LUOD_CONFIG",
        "LUOD_SERVER_UID",
        "LD_PRELOAD",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut group = Group::spawn(&mut cmd);
    let stdin = group.0.stdin.take().expect("stdin");
    let stdout = group.0.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut shell = Shell {
        stdin,
        lines: rx,
        transcript: String::new(),
        _group: group,
    };

    // The test's own set-up, not the README's: one output stream, aliases as in an
    // interactive shell, the mount namespace's /run.
    shell.send("exec 2>&1");
    shell.send("shopt -s expand_aliases");
    if root {
        let (out, status) = shell.step("mount -t tmpfs -o mode=0755 luod-walkthrough /run", STEP);
        assert_eq!(status, 0, "mount a tmpfs on /run: {out}");
    }

    // "In one terminal, start luod": not a job of the walkthrough's shell (its `kill %1` means
    // the workload), so started from a subshell that exits at once.
    let log = scratch.path().join("luod.log");
    let pid_file = scratch.path().join("luod.pid");
    let (out, status) = shell.step(
        &format!(
            "( ( exec {luod_command} ) >{log} 2>&1 </dev/null & echo $! >{pid} )",
            log = log.display(),
            pid = pid_file.display()
        ),
        STEP,
    );
    assert_eq!(status, 0, "start luod: {out}");
    let (out, status) = shell.step(
        &format!(
            "until [ -S {sock} ]; do kill -0 $(cat {pid}) 2>/dev/null || break; sleep 0.2; done; \
             [ -S {sock} ]",
            sock = socket.display(),
            pid = pid_file.display()
        ),
        BUILD,
    );
    assert!(
        status == 0,
        "`{luod_command}` did not serve {} ({out}):\n{}",
        socket.display(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let luod_ready = started.elapsed();

    // "In another": the walkthrough, line by line.
    for ((line, command), (_, check)) in lines.iter().zip(STEPS) {
        let deadline = if command.starts_with("cargo ") {
            BUILD
        } else {
            STEP
        };
        let (mut out, status) = shell.step(line, deadline);
        let context = |out: &str, shell: &Shell| {
            format!(
                "README.md's walkthrough, at `{line}`:\n{out}\nthe shell:\n{}\nluod's log:\n{}",
                shell.transcript,
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        assert_eq!(status, 0, "{}", context(&out, &shell));
        match check {
            Check::Done(texts) => {
                for text in *texts {
                    assert!(
                        out.contains(text),
                        "expected {text:?}; {}",
                        context(&out, &shell)
                    );
                }
            }
            Check::Session(state, name) => {
                assert!(
                    out.lines()
                        .any(|l| l.split_whitespace().nth(1) == Some(state)
                            && l.ends_with(&format!("  {name}"))),
                    "expected session {name:?} {state}; {}",
                    context(&out, &shell)
                );
            }
            Check::Background(until, texts) => {
                out.push_str(&shell.until_text(until, STEP));
                for text in *texts {
                    assert!(
                        out.contains(text),
                        "expected {text:?}; {}",
                        context(&out, &shell)
                    );
                }
            }
        }
    }

    // Stop luod as the first terminal would (Ctrl-C); the process group goes when dropped.
    let _ = shell.step(
        &format!("kill -INT $(cat {}) 2>/dev/null; true", pid_file.display()),
        STEP,
    );
    eprintln!(
        "walkthrough: luod built and serving after {:.1} s, whole walkthrough {:.1} s",
        luod_ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("LUO_WALKTHROUGH_SHOW").is_some() {
        eprintln!("{}", shell.transcript);
    }
}
