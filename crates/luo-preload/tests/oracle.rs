//! The kernel as the oracle of luod's emulation.
//!
//! The VM scenario `oracle` (`scripts/vm.d/scenarios/oracle.sh`, `docs/vm.md`) runs, against
//! the real `/dev/liveupdate` of the test kernel and across real kexecs: the kernel's own
//! liveupdate selftests, the C suite of `tests/c` and the agreement script
//! (`tests/c/agreement.script`). This test runs the same programs in the same order against
//! luod through the preload library, with `luoctl reboot` where the VM kexecs, and the script
//! through the library and through luo-client; then it compares every result with the
//! kernel's.
//!
//! The comparison is the table in `docs/compat.md` between the `oracle:begin` and `oracle:end`
//! marks: the test fails when the run's table is not the one written there
//! (`LUO_BLESS=1 cargo test -p luo-preload --test oracle` writes it), and when luod differs
//! from the kernel in a row that the list under "Differences the oracle shows" does not name.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::script::{Row, luod_answers};
use common::selftests::{
    self, Check, Holders, Outcome, SUITE, TWO_STAGE, holder, parse_suite, raise_nofile, run_path,
};
use common::{Flavor, Luod, build, have_gcc, workspace};

/// The C suite's two-stage programs, in the scenario's order.
const C_TWO_STAGE: [&str; 3] = [
    "luo_update_simple",
    "luo_stress_sessions",
    "luo_stress_files",
];
/// The label of the selftests' suite run after the live update.
const SUITE_AFTER: &str = "liveupdate-after-kexec";
/// The marks around the generated part of docs/compat.md.
const BEGIN: &str = "<!-- oracle:begin";
const END: &str = "<!-- oracle:end -->";
/// The heading of the hand-written list of accepted differences in docs/compat.md.
const DIFFERENCES: &str = "### Differences the oracle shows";

/// What the kernel did, read from the scenario's console.
#[derive(Debug, Default)]
struct Kernel {
    /// `uname -r` of the guest.
    version: String,
    /// Every check, in the console's order.
    checks: Vec<Check>,
    /// The script's answers by (phase, line number within the phase, from 1).
    answers: HashMap<(u32, usize), String>,
}

/// Reads the oracle scenario's console log.
fn parse_console(text: &str) -> Kernel {
    let mut kernel = Kernel::default();
    let mut segment: Option<(String, String)> = None;
    let mut suites = Vec::new();
    for raw in text.lines() {
        let raw = raw.trim_end_matches('\r');
        if let Some((name, body)) = segment.as_mut() {
            if raw.contains(&format!("LUO-OUTPUT-END {name}")) {
                kernel.checks.extend(parse_suite(name, body));
                suites.push(name.clone());
                segment = None;
            } else {
                body.push_str(raw);
                body.push('\n');
            }
            continue;
        }
        // A kernel message may precede a line on the shared console: look for the mark.
        let Some(at) = raw.find("LUO-") else { continue };
        let line = &raw[at..];
        let mut words = line.split_whitespace();
        match words.next() {
            Some("LUO-BOOT") => {
                if let Some(v) = words.find_map(|w| w.strip_prefix("kernel=")) {
                    kernel.version = v.to_owned();
                }
            }
            Some("LUO-OUTPUT-BEGIN") => {
                segment = words.next().map(|n| (n.to_owned(), String::new()));
            }
            Some("LUO-CHECK") => {
                let (Some(name), Some(result)) = (words.next(), words.next()) else {
                    continue;
                };
                // A suite is checked case by case, the script line by line.
                if suites.iter().any(|s| s == name) || name.starts_with("agreement/") {
                    continue;
                }
                let outcome = if result == "PASS" {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                };
                kernel.checks.push(Check {
                    name: name.to_owned(),
                    outcome,
                });
            }
            Some("LUO-AGREE") => {
                let (Some(phase), Some(n)) = (
                    words.next().and_then(|w| w.parse().ok()),
                    words.next().and_then(|w| w.parse().ok()),
                ) else {
                    continue;
                };
                let answer: Vec<&str> = words.collect();
                kernel.answers.insert((phase, n), answer.join(" "));
            }
            _ => {}
        }
    }
    kernel
}

/// Boots the oracle scenario; its console log, or None when it cannot run here (said why, and
/// a failure under `LUO_REQUIRE_ALL=1`, by scripts/vm).
fn run_vm() -> Option<PathBuf> {
    let status = Command::new("bash")
        .arg(workspace().join("scripts/vm"))
        .args(["run", "oracle"])
        .env("LUO_VM_BUILD", "never")
        .status()
        .expect("run scripts/vm");
    match status.code() {
        Some(0) => {}
        Some(77) => {
            eprintln!("SKIP oracle: the VM cannot run here (see above)");
            return None;
        }
        _ => panic!("vm scenario oracle failed ({status}): see its console log"),
    }
    let cache = std::env::var_os("LUO_VM_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/luod-vm"), PathBuf::from);
    Some(cache.join("work/oracle.console.log"))
}

/// The same programs as the scenario, in its order, through the preload library against one
/// luod, `luoctl reboot` at each kexec: every check, and the programs' output.
fn luod_checks() -> (Vec<Check>, String) {
    let programs = selftests::programs().unwrap_or_else(|why| panic!("the selftests: {why}"));
    raise_nofile();
    let luod = Luod::start("oracle");
    let mut checks = Vec::new();
    let mut log = String::new();
    let mut holders = Holders::default();
    let mut step =
        |checks: &mut Vec<Check>, holders: &mut Holders, name: &str, path: &Path, args: &[&str]| {
            let (out, text) = run_path(path, args, &luod);
            log.push_str(&format!("==== {name}\n{text}\n"));
            if name == SUITE || name == SUITE_AFTER {
                checks.extend(parse_suite(name, &out.stdout));
                return;
            }
            if let Some(pid) = holder(&out) {
                holders.0.push(pid);
            }
            let outcome = if out.status.success() {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
            checks.push(Check {
                name: name.to_owned(),
                outcome,
            });
        };
    let c = |p: &str| build(p, Flavor::O2);

    // Stage 1.
    step(
        &mut checks,
        &mut holders,
        SUITE,
        &programs.program(SUITE),
        &[],
    );
    for t in TWO_STAGE {
        step(
            &mut checks,
            &mut holders,
            &format!("{t}/stage-1"),
            &programs.program(t),
            &["--stage", "1"],
        );
    }
    step(
        &mut checks,
        &mut holders,
        "c/luo_open_family",
        &c("luo_open_family"),
        &[],
    );
    step(
        &mut checks,
        &mut holders,
        "c/luo_foreign",
        &c("luo_foreign"),
        &[],
    );
    step(
        &mut checks,
        &mut holders,
        "c/luo_rules/stage-1",
        &c("luo_rules"),
        &["1"],
    );
    for p in C_TWO_STAGE {
        step(
            &mut checks,
            &mut holders,
            &format!("c/{p}/stage-1"),
            &c(p),
            &[],
        );
    }
    luod.reboot();
    drop(std::mem::take(&mut holders));

    // Stage 2.
    for t in TWO_STAGE {
        step(
            &mut checks,
            &mut holders,
            &format!("{t}/stage-2"),
            &programs.program(t),
            &["--stage", "2"],
        );
    }
    step(
        &mut checks,
        &mut holders,
        SUITE_AFTER,
        &programs.program(SUITE),
        &[],
    );
    step(
        &mut checks,
        &mut holders,
        "c/luo_rules/stage-2",
        &c("luo_rules"),
        &["2"],
    );
    for p in C_TWO_STAGE {
        step(
            &mut checks,
            &mut holders,
            &format!("c/{p}/stage-2"),
            &c(p),
            &[],
        );
    }
    luod.reboot();
    drop(std::mem::take(&mut holders));

    // Stage 3.
    step(
        &mut checks,
        &mut holders,
        "c/luo_rules/stage-3",
        &c("luo_rules"),
        &["3"],
    );
    (checks, log)
}

/// The generated part of docs/compat.md, and the rows where luod differs from the kernel.
fn table(kernel: &Kernel, checks: &[Check], rows: &[Row]) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut differ = Vec::new();
    let version = &kernel.version;
    text.push_str(&format!(
        "{BEGIN}: made by crates/luo-preload/tests/oracle.rs; LUO_BLESS=1 rewrites it -->\n\n\
         Programs: kernel {version} in the VM, across real kexecs; luod through the preload \
         library, across `luoctl reboot`.\n\n\
         | | check | kernel {version} | luod |\n|---|---|---|---|\n"
    ));
    let luod: HashMap<&str, Outcome> = checks
        .iter()
        .map(|c| (c.name.as_str(), c.outcome))
        .collect();
    let mut names: Vec<&str> = kernel.checks.iter().map(|c| c.name.as_str()).collect();
    for c in checks {
        if !names.contains(&c.name.as_str()) {
            names.push(&c.name);
        }
    }
    let kernel_of: HashMap<&str, Outcome> = kernel
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.outcome))
        .collect();
    for name in names {
        let k = kernel_of
            .get(name)
            .map_or("missing".to_owned(), ToString::to_string);
        let l = luod
            .get(name)
            .map_or("missing".to_owned(), ToString::to_string);
        let mark = if k == l { "" } else { "≠" };
        if k != l {
            differ.push(name.to_owned());
        }
        text.push_str(&format!("| {mark} | `{name}` | {k} | {l} |\n"));
    }
    text.push_str(&format!(
        "\nThe agreement script, line by line: the answer is `0` (with the name, for `getname`), \
         an errno number, or `BAD` for bytes that differ; \"rule\" is the script's comment.\n\n\
         | | line | operation | kernel {version} | luod, library | luod, luo-client | rule |\n\
         |---|---|---|---|---|---|---|\n"
    ));
    let mut n = 0;
    let mut phase = 1;
    for row in rows {
        if row.phase != phase {
            phase = row.phase;
            n = 0;
        }
        n += 1;
        let id = format!("agreement: {}", row.line);
        let k = kernel
            .answers
            .get(&(phase, n))
            .map_or("missing", String::as_str);
        let same = k == row.preload && k == row.native;
        if !same {
            differ.push(id.clone());
        }
        text.push_str(&format!(
            "| {} | {phase}.{n} | `{}` | {k} | {} | {} | {} |\n",
            if same { "" } else { "≠" },
            row.line,
            row.preload,
            row.native,
            row.comment.replace('|', "\\|"),
        ));
    }
    text.push('\n');
    text.push_str(END);
    (text, differ)
}

/// The rows docs/compat.md accepts as differences: the `` `name` `` that starts each item of
/// the list under [`DIFFERENCES`].
fn accepted(doc: &str) -> Vec<String> {
    let Some(at) = doc.find(DIFFERENCES) else {
        return Vec::new();
    };
    doc[at + DIFFERENCES.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#') && !l.starts_with(BEGIN))
        .filter_map(|l| {
            l.strip_prefix("- `")?
                .split_once('`')
                .map(|(n, _)| n.to_owned())
        })
        .collect()
}

#[test]
fn console_and_differences_are_read() {
    let console = "\
[    0.9] LUO-BOOT scenario=oracle stage=1 uptime=1.2 kernel=7.2.13\r
LUO-OUTPUT-BEGIN liveupdate
ok 1 liveupdate_device.basic_open_close
[    1.0] noise
not ok 2 liveupdate_device.exclusive_open
LUO-OUTPUT-END liveupdate
LUO-CHECK liveupdate FAIL exit 1 0.3s
junk LUO-CHECK c/luo_rules/stage-1 PASS 0.1s
LUO-AGREE 1 1 0
LUO-AGREE 1 2 0 beta
LUO-CHECK agreement/phase-1 PASS 0.1s
";
    let k = parse_console(console);
    assert_eq!(k.version, "7.2.13");
    let got: Vec<(String, Outcome)> = k
        .checks
        .iter()
        .map(|c| (c.name.clone(), c.outcome))
        .collect();
    assert_eq!(
        got,
        [
            (
                "liveupdate/liveupdate_device.basic_open_close".to_owned(),
                Outcome::Pass
            ),
            (
                "liveupdate/liveupdate_device.exclusive_open".to_owned(),
                Outcome::Fail
            ),
            ("c/luo_rules/stage-1".to_owned(), Outcome::Pass),
        ]
    );
    assert_eq!(k.answers.get(&(1, 2)).map(String::as_str), Some("0 beta"));
    assert_eq!(k.answers.len(), 2);

    let doc = "x\n### Differences the oracle shows\n\n- `c/a`: why\n- `agreement: open d`: why\n\n## Next\n- `c/b`: no\n";
    assert_eq!(accepted(doc), ["c/a", "agreement: open d"]);
    assert!(accepted("nothing").is_empty());
}

#[test]
fn luod_agrees_with_the_kernel() {
    if !have_gcc("luod_agrees_with_the_kernel")
        || !selftests::available("luod_agrees_with_the_kernel")
    {
        return;
    }
    let Some(console) = run_vm() else { return };
    let text =
        std::fs::read_to_string(&console).unwrap_or_else(|e| panic!("{}: {e}", console.display()));
    let kernel = parse_console(&text);
    assert!(
        !kernel.version.is_empty(),
        "no LUO-BOOT line in {}",
        console.display()
    );
    let (checks, log) = luod_checks();
    let rows = luod_answers();
    let (generated, differ) = table(&kernel, &checks, &rows);

    let doc_path = workspace().join("docs/compat.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/compat.md");
    let accept = accepted(&doc);
    let unexplained: Vec<&String> = differ.iter().filter(|d| !accept.contains(d)).collect();
    let stale: Vec<&String> = accept.iter().filter(|a| !differ.contains(a)).collect();

    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/compat.md has no {BEGIN} ... {END} marks");
    };
    let current = &doc[b..e + END.len()];
    if current != generated {
        if std::env::var("LUO_BLESS").as_deref() == Ok("1") {
            let updated = format!("{}{generated}{}", &doc[..b], &doc[e + END.len()..]);
            std::fs::write(&doc_path, updated).expect("write docs/compat.md");
            eprintln!("docs/compat.md: the oracle's table rewritten");
        } else {
            panic!(
                "docs/compat.md's oracle table is not this run's (LUO_BLESS=1 rewrites it):\n{generated}"
            );
        }
    }
    assert!(
        unexplained.is_empty(),
        "luod differs from the kernel in {unexplained:?}, and docs/compat.md does not list them \
         under \"{DIFFERENCES}\":\n{generated}\n{log}"
    );
    assert!(
        stale.is_empty(),
        "docs/compat.md lists {stale:?} as differences, but luod and the kernel agree there"
    );
    // The run covered what the scenario covers.
    assert!(
        kernel.checks.len() >= 49,
        "the kernel's checks: {}",
        kernel.checks.len()
    );
    assert_eq!(
        kernel.answers.len(),
        rows.len(),
        "the kernel answered every script line"
    );
}
