//! What is made from the command definitions: the man pages committed in `man/` (which must
//! be what `luoctl man --dir` writes, and must render without a warning), the shell
//! completions (which must load and complete), and the exit statuses that `--help`, the man
//! page and `docs/luoctl.md` each list.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Luoctl, TempDir, skip};

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man")
}

fn read_pages(dir: &Path) -> Vec<(String, String)> {
    let mut pages: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).expect("read page"))
        })
        .collect();
    pages.sort();
    pages
}

#[test]
fn committed_man_pages_match_the_command_definitions() {
    let fresh = TempDir::new("man");
    let out = Luoctl::new().run(&["man", "--dir", fresh.path().to_str().expect("utf-8")]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let generated = read_pages(fresh.path());
    let committed = read_pages(&man_dir());
    let names = |p: &[(String, String)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let stale: Vec<&String> = generated
        .iter()
        .filter(|g| !committed.contains(g))
        .map(|(n, _)| n)
        .collect();
    assert!(
        names(&generated) == names(&committed) && stale.is_empty(),
        "crates/luoctl/man/ is out of date with the command definitions (pages that differ: \
         {stale:?}; generated {:?}, committed {:?}). Regenerate it from the workspace root with\n\
         \n    rm crates/luoctl/man/*.1 && cargo run -p luoctl -- man --dir crates/luoctl/man\n\n\
         and commit the result.",
        names(&generated),
        names(&committed)
    );
    // `luoctl man` prints luoctl.1.
    let out = Luoctl::new().run(&["man"]);
    let main = generated
        .iter()
        .find(|(n, _)| n == "luoctl.1")
        .expect("luoctl.1");
    assert_eq!(out.stdout, main.1, "luoctl man is luoctl.1");
    for (name, text) in &generated {
        assert!(text.contains(".SH \"EXIT STATUS\""), "{name}");
    }
}

#[test]
fn man_pages_render_without_warnings() {
    let groff = Command::new("groff")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !groff {
        skip(
            "man_pages_render_without_warnings",
            "groff is not installed (scripts/setup installs groff-base)",
        );
        return;
    }
    for (name, _) in read_pages(&man_dir()) {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(man_dir().join(&name))
            .output()
            .expect("groff");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff on {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const COMMANDS: [&str; 8] = [
    "status",
    "sessions",
    "upgrade",
    "reboot",
    "migrate",
    "version",
    "completions",
    "man",
];

#[test]
fn completion_scripts_name_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Luoctl::new().run(&["completions", shell]);
        assert_eq!(out.code(), Some(0), "{shell}: {out:?}");
        // Options are `--json` in most scripts, `-l json` in fish's; elvish's and
        // powershell's complete no option values.
        let values: &[&str] = match shell {
            "bash" | "zsh" | "fish" => &["4k", "1g"],
            _ => &[],
        };
        for word in COMMANDS.iter().chain(&["json", "socket"]).chain(values) {
            assert!(out.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
}

/// What bash offers after `words`, with the completion script loaded.
fn bash_completes(script: &Path, words: &[&str]) -> String {
    let line = words.join(" ");
    let program = format!(
        "source {script}; COMP_WORDS=({line}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
         COMP_POINT=${{#COMP_LINE}}; _luoctl luoctl '{cur}' '{prev}'; echo \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn bash_completes_commands_and_page_sizes() {
    let dir = TempDir::new("bash");
    let script = dir.path().join("luoctl.bash");
    let out = Luoctl::new().run(&["completions", "bash"]);
    std::fs::write(&script, &out.stdout).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert_eq!(bash_completes(&script, &["luoctl", "sta"]), "status");
    assert_eq!(bash_completes(&script, &["luoctl", "re"]), "reboot");
    assert_eq!(
        bash_completes(&script, &["luoctl", "migrate", "--to", ""]),
        "4k 2m 1g"
    );
    assert_eq!(
        bash_completes(&script, &["luoctl", "completions", "f"]),
        "fish"
    );
}

/// The exit statuses as `luoctl --help` lists them: (code, meaning).
fn help_statuses() -> Vec<(String, String)> {
    let out = Luoctl::new().run(&["--help"]);
    assert_eq!(out.code(), Some(0));
    let list = out
        .stdout
        .split_once("Exit status:\n")
        .expect("an exit status list in --help")
        .1;
    list.lines()
        .map(|l| {
            let (code, meaning) = l.trim_start().split_once("  ").expect("code  meaning");
            (code.to_owned(), meaning.to_owned())
        })
        .collect()
}

#[test]
fn exit_statuses_are_the_same_in_help_man_page_and_docs() {
    let statuses = help_statuses();
    assert_eq!(
        statuses.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4", "5"]
    );
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/luoctl.md"))
            .expect("docs/luoctl.md");
    let man = std::fs::read_to_string(man_dir().join("luoctl.1")).expect("luoctl.1");
    for (code, meaning) in &statuses {
        let row = format!("| {code} | {meaning} |");
        assert!(docs.contains(&row), "docs/luoctl.md lacks the row {row:?}");
        let entry = format!(
            ".TP\n\\fB{code}\\fR\n{}\n",
            meaning.replace('-', "\\-").replace('\'', "\\*(Aq")
        );
        assert!(man.contains(&entry), "luoctl.1 lacks {entry:?}");
    }
}

#[test]
fn help_lists_commands_and_exit_statuses() {
    insta::assert_snapshot!("help", Luoctl::new().run(&["--help"]).stdout);
}
