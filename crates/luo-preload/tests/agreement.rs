//! The native client and the preload library agree, operation by operation, errno by errno.
//!
//! One scenario — device exclusivity, names, tokens, double preservation, decoding errors,
//! a reboot, retrieval, FINISH, close semantics — runs twice against two fresh luods: once
//! through `luo-client` (Rust, native protocol) and once through `tests/c/luo_script.c` (C,
//! `/dev/liveupdate` ioctls through `libluo_preload.so`). Every answer must be the same.

mod common;

use common::have_gcc;
use common::script::luod_answers;

#[test]
fn native_client_and_preload_library_agree() {
    if !have_gcc("native_client_and_preload_library_agree") {
        return;
    }
    let rows = luod_answers();
    let mut table = String::new();
    let mut mismatches = 0;
    let mut phase = 1;
    for row in &rows {
        if row.phase != phase {
            phase = row.phase;
            table.push_str("--- reboot ---\n");
        }
        let (a, b) = (&row.native, &row.preload);
        let mark = if a != b {
            "≠"
        } else if row.expected().is_some_and(|k| k != a) {
            "!"
        } else {
            " "
        };
        if mark != " " {
            mismatches += 1;
        }
        table.push_str(&format!(
            "{mark} {:<32} native={a:<8} preload={b:<8} {}\n",
            row.line, row.comment
        ));
    }
    eprintln!("{table}");
    assert_eq!(
        mismatches, 0,
        "the two paths disagree (≠), or differ from the kernel's errno (!):\n{table}"
    );
    assert!(
        rows.len() > 60,
        "the scenario ran {} operations",
        rows.len()
    );
}
