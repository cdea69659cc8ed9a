//! luod's status as `luoctl status`, `version` and `upgrade` print it.

use luo_client::Status;

use crate::exit::Failure;
use crate::json::Object;
use crate::table::Fields;

/// Every label of the status text, so the values line up the same in every output.
const LABELS: [&str; 11] = [
    "generation",
    "sessions",
    "files",
    "preserved",
    "clients",
    "descriptors",
    "upgrades",
    "last upgrade",
    "migrating",
    "copies",
    "uptime",
];

/// `luoctl status`.
pub fn show(s: &Status, json: bool) -> String {
    if json {
        return format!("{}\n", status_json(s).finish());
    }
    let mut f = Fields::new();
    f.add("generation", s.generation.to_string());
    f.add(
        "sessions",
        format!(
            "{} outgoing, {} incoming",
            s.sessions_outgoing, s.sessions_incoming
        ),
    );
    f.add("files", s.files.to_string());
    f.add("preserved", format!("{} bytes", s.bytes));
    f.add("clients", s.clients.to_string());
    f.add("descriptors", format!("{} of {}", s.fd_used, s.fd_limit));
    f.add("upgrades", s.upgrades.to_string());
    if s.last_upgrade_rounds > 0 {
        f.add(
            "last upgrade",
            format!(
                "{}, {} successor(s) started",
                how(s.last_upgrade_stop_and_copy),
                s.last_upgrade_rounds
            ),
        );
    }
    if s.migrate_total > 0 {
        f.add(
            "migrating",
            format!(
                "{} of {} MiB copied",
                s.migrate_done >> 20,
                s.migrate_total >> 20
            ),
        );
    }
    if s.copy_bytes > 0 {
        f.add(
            "copies",
            format!(
                "{} MiB in {} units, {} fell back to the CPU, {} batches kept on the CPU",
                s.copy_bytes >> 20,
                s.copy_units,
                s.copy_units_fallback,
                s.copy_batches_cpu
            ),
        );
    }
    f.add("uptime", format!("{:.1} s", s.uptime_ms as f64 / 1000.0));
    format!("luod {} (pid {})\n{}", s.version, s.pid, f.render(&LABELS))
}

fn how(stop_and_copy: bool) -> &'static str {
    if stop_and_copy {
        "stop and copy"
    } else {
        "prepared while serving"
    }
}

/// The fields of `luoctl status --json`, in this order. Changing a name breaks scripts.
fn status_json(s: &Status) -> Object {
    Object::new()
        .uint("pid", s.pid.into())
        .str("version", &s.version)
        .uint("generation", s.generation)
        .uint("sessions_outgoing", s.sessions_outgoing)
        .uint("sessions_incoming", s.sessions_incoming)
        .uint("files", s.files)
        .uint("bytes", s.bytes)
        .uint("clients", s.clients)
        .uint("uptime_ms", s.uptime_ms)
        .uint("fd_limit", s.fd_limit)
        .uint("fd_used", s.fd_used)
        .uint("upgrades", s.upgrades)
        .uint("last_upgrade_rounds", s.last_upgrade_rounds.into())
        .bool("last_upgrade_stop_and_copy", s.last_upgrade_stop_and_copy)
        .uint("migrate_done", s.migrate_done)
        .uint("migrate_total", s.migrate_total)
        .uint("copy_bytes", s.copy_bytes)
        .uint("copy_units", s.copy_units)
        .uint("copy_units_fallback", s.copy_units_fallback)
        .uint("copy_batches_cpu", s.copy_batches_cpu)
}

/// `luoctl version`: luoctl's, and luod's if it answered (else the failure, in JSON).
pub fn version(luod: Option<&Status>, failure: Option<&Failure>, json: bool) -> String {
    let own = env!("CARGO_PKG_VERSION");
    if json {
        let mut o = Object::new().str("luoctl", own);
        o = match luod {
            Some(s) => o.raw(
                "luod",
                &Object::new()
                    .str("version", &s.version)
                    .uint("pid", s.pid.into())
                    .finish(),
            ),
            None => o.null("luod"),
        };
        if let Some(f) = failure {
            o = o.raw("error", &f.json_fields());
        }
        return format!("{}\n", o.finish());
    }
    match luod {
        Some(s) => format!("luoctl {own}\nluod {} (pid {})\n", s.version, s.pid),
        None => format!("luoctl {own}\n"),
    }
}

/// `luoctl upgrade`: the status before and after.
pub fn upgraded(before: &Status, after: &Status, json: bool) -> String {
    if json {
        let o = Object::new()
            .uint("pid_before", before.pid.into())
            .uint("pid", after.pid.into())
            .str("version_before", &before.version)
            .str("version", &after.version)
            .uint("upgrades", after.upgrades)
            .uint("rounds", after.last_upgrade_rounds.into())
            .bool("stop_and_copy", after.last_upgrade_stop_and_copy);
        return format!("{}\n", o.finish());
    }
    format!(
        "luod upgraded: pid {} -> {}, version {} -> {}, {}, {} successor(s) started\n",
        before.pid,
        after.pid,
        before.version,
        after.version,
        how(after.last_upgrade_stop_and_copy),
        after.last_upgrade_rounds
    )
}
