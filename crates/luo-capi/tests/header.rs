//! The committed `include/luo.h` is what the code generates, it compiles as strict C, and it
//! declares exactly the functions `libluo.so` exports.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

const REGENERATE: &str = "cargo run -p luo-capi --example luo-h > crates/luo-capi/include/luo.h";

fn committed() -> String {
    std::fs::read_to_string(common::crate_dir().join("include/luo.h")).expect("read include/luo.h")
}

#[test]
fn committed_header_matches_the_code() {
    let generated = luo::header::generate();
    let committed = committed();
    if generated != committed {
        let line = generated
            .lines()
            .zip(committed.lines())
            .position(|(g, c)| g != c)
            .unwrap_or_else(|| generated.lines().count().min(committed.lines().count()));
        panic!(
            "crates/luo-capi/include/luo.h is out of date with the code (first difference at \
             line {}): regenerate it with\n\n    {REGENERATE}\n\nand commit it",
            line + 1
        );
    }
}

#[test]
fn header_compiles_as_strict_c() {
    if !common::have("header_compiles_as_strict_c", "gcc", "gcc") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("luo-capi-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let source = dir.join("use.c");
    // Every declaration used once, so that a wrong type would not compile.
    std::fs::write(
        &source,
        concat!(
            "#include <luo.h>\n",
            "static int each(const struct luo_session_info *i, void *a)\n",
            "{ (void)a; return (int)i->flags; }\n",
            "int main(void) {\n",
            "    struct luo_client *c = 0; struct luo_session *s = 0; int fd = -1;\n",
            "    struct luo_status st = { .size = sizeof st };\n",
            "    luo_connect(0, &c);\n",
            "    luo_session_create(c, \"x\", &s); luo_session_retrieve(c, \"x\", &s);\n",
            "    luo_preserve(s, 0, 1); luo_retrieve(s, 1, &fd);\n",
            "    luo_session_finish(s); luo_handoff(s);\n",
            "    luo_status(c, &st); luo_list(c, each, 0);\n",
            "    luo_session_fd(s); luo_session_from_fd(fd, &s);\n",
            "    luo_session_close(s); luo_close(c);\n",
            "    return luo_last_error()[0] + LUO_SESSION_NAME_MAX + LUO_SESSION_INCOMING;\n",
            "}\n",
        ),
    )
    .expect("write use.c");
    for std in ["-std=c99", "-std=c11"] {
        let out = Command::new("gcc")
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-fsyntax-only",
            ])
            .arg("-I")
            .arg(common::crate_dir().join("include"))
            .arg(&source)
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "luo.h does not compile with gcc {std}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The `luo_*` functions the header declares.
fn declared() -> BTreeSet<String> {
    committed()
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("typedef") && l.ends_with(");"))
        .filter_map(|l| {
            let name = l.split('(').next()?.rsplit([' ', '*']).next()?;
            name.starts_with("luo_").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn header_declares_exactly_what_libluo_so_exports() {
    if !common::have(
        "header_declares_exactly_what_libluo_so_exports",
        "nm",
        "binutils",
    ) {
        return;
    }
    let lib = common::built().profile_dir.join("libluo.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm");
    assert!(out.status.success(), "nm {}", lib.display());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T").then(|| name.to_owned())
        })
        .collect();
    let declared = declared();
    assert!(declared.len() >= 14, "{declared:?}");
    assert_eq!(
        exported, declared,
        "libluo.so exports (left) and luo.h declares (right) different functions"
    );
}
