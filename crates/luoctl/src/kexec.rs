//! `luoctl kexec`: the host kernel's live update through luod's kernel backend.

use std::path::Path;

use luo_client::{Control, KexecOptions, KexecReport};

use crate::exit::{Exit, Failure};
use crate::json::{self, Object};
use crate::table::{Align, Table, printable};

/// The report as `--json` prints it.
pub fn report_json(r: &KexecReport) -> String {
    let files = r.listed.iter().map(|f| {
        Object::new()
            .uint("owner", f.owner.into())
            .str("session", &f.session)
            .uint("token", f.token)
            .str("kind", f.kind)
            .uint("bytes", f.bytes)
            .finish()
    });
    Object::new()
        .uint("sessions", r.sessions)
        .uint("preservable", r.preservable)
        .uint("preservable_bytes", r.preservable_bytes)
        .uint("unpreservable", r.unpreservable)
        .bool("forwarded", r.forwarded)
        .raw("files", &json::array(files))
        .finish()
}

/// The report as text: a summary line, then a table of what cannot cross.
pub fn report_text(r: &KexecReport) -> String {
    let mut s = format!(
        "{} sessions cross: {} files ({} bytes) can, {} cannot{}\n",
        r.sessions,
        r.preservable,
        r.preservable_bytes,
        r.unpreservable,
        if r.forwarded {
            "; forwarded, waiting for the kexec"
        } else {
            ""
        }
    );
    if !r.listed.is_empty() {
        let mut t = Table::new(&[
            ("UID", Align::Right),
            ("TOKEN", Align::Right),
            ("KIND", Align::Left),
            ("BYTES", Align::Right),
            ("SESSION", Align::Left),
        ]);
        for f in &r.listed {
            t.row(vec![
                f.owner.to_string(),
                f.token.to_string(),
                f.kind.to_owned(),
                f.bytes.to_string(),
                printable(&f.session),
            ]);
        }
        s.push_str(&t.render());
        if (r.listed.len() as u64) < r.unpreservable {
            s.push_str(&format!(
                "... and {} more\n",
                r.unpreservable - r.listed.len() as u64
            ));
        }
    }
    s
}

/// Runs `luoctl kexec` with `options`. `--check` prints the report and fails (status 1) when
/// some file cannot cross.
pub fn run(socket: &Path, options: KexecOptions, json: bool) -> (String, Option<Failure>) {
    let result = Control::connect_at(socket)
        .and_then(|c| c.kexec(options))
        .map_err(|e| Failure::of(&e, socket));
    let report = match result {
        Ok(r) => r,
        Err(f) => {
            let out = if json {
                format!("{}\n", f.json())
            } else {
                String::new()
            };
            return (out, Some(f));
        }
    };
    let mut out = if json {
        format!("{}\n", report_json(&report))
    } else {
        report_text(&report)
    };
    if !json && !options.check {
        out.push_str(if options.cancel {
            "kexec cancelled: sessions are luod's alone again\n"
        } else if options.no_exec {
            "forwarded: run the kexec now (kexec -e, systemctl kexec), or luoctl kexec --cancel\n"
        } else {
            "forwarded: kexec in progress\n"
        });
    }
    let failure = (options.check && report.unpreservable > 0).then(|| {
        Failure::local(
            Exit::Failed,
            "kexec",
            format!(
                "{} preserved files cannot cross a kexec of this kernel",
                report.unpreservable
            ),
        )
    });
    (out, failure)
}
