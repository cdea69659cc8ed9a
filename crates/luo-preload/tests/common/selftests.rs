//! The Linux kernel's own liveupdate selftests (`tools/testing/selftests/liveupdate`), built
//! dynamic on the host and run through the preload library against a real luod, with
//! `luoctl reboot` (luod's rehearsal of a kernel live update) between the two stages of the
//! two-stage programs: the host-side mirror of the VM scenario
//! `scripts/vm.d/scenarios/selftests.sh`.
//!
//! [`available`] finds the sources (`scripts/vm sources`) and builds the programs once per
//! test process; [`run_through_luod`] runs the whole sequence and gives one [`Check`] per
//! result; [`parse_suite`] reads a kselftest-harness (KTAP) run, also out of a VM's serial
//! console log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{Luod, Output, binaries, kill_holder, run_command, skip, workspace};

/// The single-boot suite (kselftest harness, 15 cases).
pub const SUITE: &str = "liveupdate";
/// The name of the single-boot suite's second run, after the reboot.
pub const SUITE_AFTER_REBOOT: &str = "liveupdate-after-reboot";
/// The two-stage programs, in the order they run.
pub const TWO_STAGE: [&str; 4] = [
    "luo_kexec_simple",
    "luo_multi_session",
    "luo_stress_sessions",
    "luo_stress_files",
];
/// The soft RLIMIT_NOFILE the stress programs get (they hold 2,000 sessions each; they raise
/// the limit themselves only as far as the hard limit allows an unprivileged process).
pub const NOFILE: u64 = 20_000;

/// What one check gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// Skipped.
    Skip,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        })
    }
}

/// One check: a case of a suite (`liveupdate/liveupdate_device.basic_open_close`) or one stage
/// of a two-stage program (`luo_kexec_simple/stage-1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `<prefix>/<name>`.
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
}

/// Parses a kselftest-harness (KTAP) run: one [`Check`] per `ok N NAME` / `not ok N NAME`
/// line, in order; a `# SKIP` directive after the name makes it [`Outcome::Skip`]. Names are
/// prefixed with `prefix` + "/" (a result line without a name is named by its number).
///
/// Every other line is ignored (`# ...` diagnostics, `1..N`, `TAP version`, and on a serial
/// console, kernel messages); a line may end in `\r` and may start with a printk timestamp
/// (`[    1.234567] `).
pub fn parse_suite(prefix: &str, output: &str) -> Vec<Check> {
    output
        .lines()
        .filter_map(|line| {
            let line = strip_timestamp(line.trim()).trim_start();
            let (ok, rest) = if let Some(rest) = line.strip_prefix("ok ") {
                (true, rest)
            } else if let Some(rest) = line.strip_prefix("not ok ") {
                (false, rest)
            } else {
                return None;
            };
            let rest = rest.trim_start();
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return None;
            }
            let (number, rest) = rest.split_at(digits);
            // The number must end there: `ok 12abc` is no result line.
            if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
                return None;
            }
            let (name, directive) = match rest.find('#') {
                Some(i) => (&rest[..i], Some(rest[i + 1..].trim_start())),
                None => (rest, None),
            };
            let name = name.trim();
            let name = if name.is_empty() { number } else { name };
            let skipped = directive.is_some_and(|d| {
                d.get(..4)
                    .is_some_and(|word| word.eq_ignore_ascii_case("skip"))
            });
            let outcome = if skipped {
                Outcome::Skip
            } else if ok {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
            Some(Check {
                name: format!("{prefix}/{name}"),
                outcome,
            })
        })
        .collect()
}

/// `line` without a leading printk timestamp (`[    1.234567] `), if it has one.
fn strip_timestamp(line: &str) -> &str {
    let Some(rest) = line.strip_prefix('[') else {
        return line;
    };
    let Some(end) = rest.find(']') else {
        return line;
    };
    let stamp = rest[..end].trim();
    if !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.') {
        &rest[end + 1..]
    } else {
        line
    }
}

/// The selftests, built.
#[derive(Debug)]
pub struct Programs {
    /// Where the sources are (`tools/testing/selftests/liveupdate`).
    pub source: PathBuf,
    /// The uAPI include directory they were built against.
    pub include: PathBuf,
    /// Where the programs are (one executable per name, in the scratch directory).
    pub dir: PathBuf,
}

impl Programs {
    /// The executable of `name`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The selftests built, once per test process, or why they cannot be (the kernel's sources
/// are not there: `scripts/vm kernel` has not run; or there is no gcc). A build that fails
/// is no reason to skip: it panics with gcc's output.
pub fn programs() -> Result<&'static Programs, String> {
    static PROGRAMS: OnceLock<Result<Programs, String>> = OnceLock::new();
    PROGRAMS
        .get_or_init(build_programs)
        .as_ref()
        .map_err(Clone::clone)
}

/// True if the selftests are built and can run; else `test` is skipped (a failure under
/// `LUO_REQUIRE_ALL=1`).
pub fn available(test: &str) -> bool {
    match programs() {
        Ok(_) => true,
        Err(why) => {
            skip(test, &why);
            false
        }
    }
}

fn build_programs() -> Result<Programs, String> {
    let gcc = Command::new("gcc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !gcc {
        return Err("gcc is not installed (scripts/setup installs it)".into());
    }
    let (source, include) = sources()?;
    let dir = binaries().scratch.join("kernel-selftests");
    std::fs::create_dir_all(&dir).expect("selftests build dir");
    let selftests = source.parent().expect("tools/testing/selftests");
    for name in std::iter::once(SUITE).chain(TWO_STAGE) {
        // As the Makefile does (lib.mk's CFLAGS, KHDR_INCLUDES, and luo_test_utils.c linked
        // into every program), but dynamic, so that LD_PRELOAD acts.
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-Wno-unused-function", "-D_GNU_SOURCE="])
            .arg("-isystem")
            .arg(&include)
            .arg("-I")
            .arg(&source)
            .arg("-I")
            .arg(selftests)
            .arg("-o")
            .arg(dir.join(name))
            .arg(source.join(format!("{name}.c")))
            .arg(source.join("luo_test_utils.c"))
            .stdin(Stdio::null())
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "gcc of the kernel's selftest {name} ({}) failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Programs {
        source,
        include,
        dir,
    })
}

/// `scripts/vm sources`: the selftests' source directory and the uAPI include directory.
fn sources() -> Result<(PathBuf, PathBuf), String> {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/vm"))
        .arg("sources")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scripts/vm sources: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the kernel's sources are not there (scripts/vm sources: {}{}); scripts/vm kernel \
             unpacks and builds them",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(source), Some(include)) = (lines.next(), lines.next()) else {
        return Err(format!(
            "scripts/vm sources printed no two lines: {stdout:?}"
        ));
    };
    let (source, include) = (PathBuf::from(source), PathBuf::from(include));
    for file in std::iter::once(SUITE)
        .chain(TWO_STAGE)
        .chain(["luo_test_utils"])
        .map(|n| source.join(format!("{n}.c")))
        .chain([
            source.join("luo_test_utils.h"),
            include.join("linux/liveupdate.h"),
        ])
    {
        if !file.exists() {
            return Err(format!("{} is missing", file.display()));
        }
    }
    Ok((source, include))
}

/// What [`run_through_luod`] gave.
#[derive(Debug)]
pub struct Run {
    /// Every check, in order (see [`run_through_luod`]).
    pub checks: Vec<Check>,
    /// Each program run's combined output (its command, exit status, stdout and stderr),
    /// in order, labelled `liveupdate`, `luo_kexec_simple/stage-1`, ...,
    /// `luo_kexec_simple/stage-2`, ..., `liveupdate-after-reboot`.
    pub outputs: Vec<(String, String)>,
}

impl Run {
    /// The output of the program run `check` came from.
    pub fn output_of(&self, check: &Check) -> &str {
        self.outputs
            .iter()
            .find(|(label, _)| {
                check.name == *label
                    || check
                        .name
                        .strip_prefix(label.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map_or("", |(_, output)| output.as_str())
    }

    /// Every program run's output, one after another.
    pub fn log(&self) -> String {
        self.outputs
            .iter()
            .map(|(label, output)| format!("==== {label}\n{output}\n"))
            .collect()
    }

    /// The checks that did not pass, each with its program run's output.
    pub fn failures(&self) -> String {
        let mut text = String::new();
        let mut shown = Vec::new();
        for check in self.checks.iter().filter(|c| c.outcome != Outcome::Pass) {
            text.push_str(&format!("{}: {}\n", check.name, check.outcome));
            let output = self.output_of(check);
            if !shown.contains(&output) {
                shown.push(output);
                text.push_str(&format!("---- output\n{output}\n----\n"));
            }
        }
        text
    }
}

/// The holder children stage 1 left behind (each holds its program's sessions, as until a
/// kexec in the kernel): killed and reaped when this is dropped, on failure paths too.
#[derive(Debug, Default)]
pub struct Holders(pub Vec<i32>);

impl Drop for Holders {
    fn drop(&mut self) {
        for pid in self.0.drain(..) {
            kill_holder(pid);
        }
    }
}

/// The holder child a stage 1 printed (`# [STAGE 1] Child PID: N. Resources are pinned.`, or
/// the C suite's `CHILD N`).
pub fn holder(output: &Output) -> Option<i32> {
    output.child().or_else(|| {
        output
            .stdout
            .lines()
            .chain(output.stderr.lines())
            .find_map(|l| {
                let rest = l.split_once("Child PID:")?.1.trim_start();
                let digits =
                    rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                rest[..digits].parse().ok()
            })
    })
}

/// Raises this process's soft RLIMIT_NOFILE to [`NOFILE`] (or the hard limit, if lower), so
/// that luod and the programs, which inherit it, can hold thousands of sessions. (A pre_exec
/// hook would be `unsafe`, which the workspace denies.)
pub fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(NOFILE, |max| max.min(NOFILE));
    if limit.current.is_some_and(|cur| cur < want) {
        limit.current = Some(want);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("cannot raise RLIMIT_NOFILE to {want}: {e}");
        }
    }
}

/// Runs `name` with `args` through the preload library against `luod`, with the deadline of
/// [`run_command`].
fn run_program(programs: &Programs, name: &str, args: &[&str], luod: &Luod) -> (Output, String) {
    run_path(&programs.program(name), args, luod)
}

/// Runs program `path` with `args` through the preload library against `luod`, with the
/// deadline of [`run_command`]: its output, and a text of its command, status and output.
pub fn run_path(path: &Path, args: &[&str], luod: &Luod) -> (Output, String) {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("LD_PRELOAD", &binaries().preload)
        .env("LUOD_SOCKET", &luod.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_command(cmd, &format!("{name} {}", args.join(" ")));
    let text = format!(
        "$ {name} {} ({})\n{}{}",
        args.join(" "),
        out.status,
        out.stdout,
        if out.stderr.is_empty() {
            String::new()
        } else {
            format!("[stderr]\n{}", out.stderr)
        }
    );
    (out, text)
}

/// Runs the kernel's selftests through the preload library against a fresh luod, as the VM
/// scenario runs them against the kernel, with `luoctl reboot` in place of the kexec:
///
/// 1. the single-boot suite: `liveupdate/<case>` for each of its 15 cases;
/// 2. each two-stage program's `--stage 1` (each leaves a child holding its sessions):
///    `luo_kexec_simple/stage-1`, `luo_multi_session/stage-1`, `luo_stress_sessions/stage-1`,
///    `luo_stress_files/stage-1`;
/// 3. `luoctl reboot`;
/// 4. each one's `--stage 2`: `.../stage-2` for the same four, in the same order;
/// 5. the single-boot suite again: `liveupdate-after-reboot/<case>` x15.
///
/// A two-stage program's check is Pass when it exits 0, else Fail; a suite's checks are its
/// result lines ([`parse_suite`]). The holder children are killed after stage 2 (or when
/// anything panics on the way). Panics if the selftests are not [`available`] (check that
/// first), if a program overruns its deadline, or if the reboot fails.
pub fn run_through_luod() -> Run {
    let programs = programs().unwrap_or_else(|why| panic!("the kernel's selftests: {why}"));
    raise_nofile();
    let luod = Luod::start("kernel-selftests");
    let mut run = Run {
        checks: Vec::new(),
        outputs: Vec::new(),
    };
    let mut holders = Holders::default();

    let suite = |run: &mut Run, label: &str| {
        let (out, text) = run_program(programs, SUITE, &[], &luod);
        run.checks.extend(parse_suite(label, &out.stdout));
        run.outputs.push((label.to_owned(), text));
    };

    suite(&mut run, SUITE);
    for stage in ["1", "2"] {
        if stage == "2" {
            luod.reboot();
        }
        for name in TWO_STAGE {
            let label = format!("{name}/stage-{stage}");
            let (out, mut text) = run_program(programs, name, &["--stage", stage], &luod);
            if stage == "1" {
                match holder(&out) {
                    Some(pid) => holders.0.push(pid),
                    None if out.status.success() => {
                        text.push_str("(note: stage 1 printed no \"Child PID\" line)\n");
                    }
                    None => {}
                }
            }
            run.checks.push(Check {
                name: label.clone(),
                outcome: if out.status.success() {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                },
            });
            run.outputs.push((label, text));
        }
    }
    drop(holders);
    suite(&mut run, SUITE_AFTER_REBOOT);
    run
}
