//! luoctl's man pages, made from the command definitions: `luoctl.1`, and one
//! `luoctl-COMMAND.1` per command.
//!
//! clap_mangen writes the name, synopsis, description, options and commands of each page; the
//! sections it cannot know — exit status (from [`Exit::ALL`]), JSON output, environment, see
//! also — are added here. The pages are committed in `crates/luoctl/man/`, and a test checks
//! that they are what `luoctl man --dir crates/luoctl/man` writes.

use clap_mangen::roff::{Roff, bold, italic, roman};

use crate::exit::Exit;

/// Every page, `luoctl.1` first: (file name, roff text).
pub fn pages(cmd: clap::Command) -> Vec<(String, String)> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let sub_pages: Vec<String> = subs
        .iter()
        .map(|s| format!("luoctl-{}", s.get_name()))
        .collect();
    let mut pages = vec![page(cmd, true, &sub_pages)];
    for sub in subs {
        pages.push(page(sub, false, &["luoctl".to_owned()]));
    }
    pages
}

/// One page; `top` for luoctl's own, which also says what `--json` prints.
fn page(cmd: clap::Command, top: bool, see_also: &[String]) -> (String, String) {
    // The exit statuses get a section of their own instead of the help text's list.
    let man = clap_mangen::Man::new(cmd.after_help(None::<&str>))
        .source(format!("luoctl {}", env!("CARGO_PKG_VERSION")))
        .manual("luod");
    let name = man.get_filename();
    let mut out = Vec::new();
    // Rendering into memory cannot fail.
    let _ = man.render(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let extra = sections(top, see_also);
    // Before the VERSION section (luoctl's own page has one), else at the end.
    let text = match text.find(".SH VERSION") {
        Some(at) => format!("{}{extra}{}", &text[..at], &text[at..]),
        None => format!("{text}{extra}"),
    };
    (name, text)
}

fn sections(top: bool, see_also: &[String]) -> String {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for e in Exit::ALL {
        r.control("TP", []);
        r.text([bold(e.code().to_string())]);
        r.text([roman(e.meaning())]);
    }
    if top {
        r.control("SH", ["JSON OUTPUT"]);
        r.text([roman(
            "With --json a command prints one JSON document on standard output: an object \
             (an array for sessions) whose field names are stable. When the command fails, the \
             document is {\"error\": {...}} with the fields exit, kind, op, errno, errno_name, \
             reason and message, and the message is also printed on standard error. A usage \
             error prints no JSON. The fields of each command are listed in docs/luoctl.md.",
        )]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold("LUOD_SOCKET")]);
    r.text([roman("luod's socket, when --socket does not name one.")]);
    r.control("TP", []);
    r.text([bold("LUOD_SERVER_UID")]);
    r.text([roman(
        "One more uid trusted to serve the socket, besides root and your own (a luod that \
         runs as a dedicated user).",
    )]);
    r.control("TP", []);
    r.text([bold("XDG_RUNTIME_DIR")]);
    r.text([roman(
        "Where a user other than root finds luod's default socket (luod.sock in it).",
    )]);
    r.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for (i, p) in see_also.iter().enumerate() {
        if i > 0 {
            refs.push(roman(", "));
        }
        refs.push(bold(p.clone()));
        refs.push(roman("(1)"));
    }
    refs.push(roman("; "));
    refs.push(italic("docs/luoctl.md"));
    refs.push(roman(" and "));
    refs.push(italic("docs/operations.md"));
    refs.push(roman(" in luod's source."));
    r.text(refs);
    // The page's preamble defines \*(Aq, an upright apostrophe (a plain one is typeset as a
    // closing quote); this text has no apostrophe where roff would read it as a control.
    r.to_roff().replace('\'', "\\*(Aq")
}
