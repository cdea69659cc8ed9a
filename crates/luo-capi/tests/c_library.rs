//! libluo as a C program uses it: installed by `scripts/install-capi` into a temporary
//! prefix, compiled with `pkg-config --cflags --libs luo` (and `luo-static`), run against a
//! real luod.

mod common;

use std::path::PathBuf;

use common::{Link, Luod, built, compile, have_c_tools, pkg_config, run};

fn workload_c() -> PathBuf {
    common::crate_dir().join("examples/workload.c")
}

/// The C example's workload update: v1 (built one way) fills a memfd, preserves it and
/// hands off; luod holds the incoming session; v2 (a new process, built the other way)
/// retrieves it, checks every byte and finishes; a second v2 finds nothing.
fn workload_update(v1_link: Link, v2_link: Link) {
    let test = format!("workload_update({v1_link:?} -> {v2_link:?})");
    if !have_c_tools(&test) {
        return;
    }
    let v1 = compile(&workload_c(), v1_link);
    let v2 = compile(&workload_c(), v2_link);
    let luod = Luod::start("workload");
    let name = "c-workload";

    let out = run(&v1, &["v1", name], &luod.socket, true);
    out.assert_success(&format!("{test}: v1"));
    assert!(out.stdout.contains("handed off"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("session c-workload: incoming, 1 file(s), 4194304 bytes"),
        "v1 lists its handed-off session:\n{}",
        out.stdout
    );

    // Between the two processes luod alone holds the state.
    let sessions = luod.control().sessions().expect("list");
    let s = sessions
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no session {name:?} in {sessions:?}"));
    assert!(s.incoming && !s.retrieved, "{s:?}");
    assert_eq!((s.files, s.bytes), (1, 4 << 20), "{s:?}");

    let out = run(&v2, &["v2", name], &luod.socket, true);
    out.assert_success(&format!("{test}: v2"));
    assert!(
        out.stdout.contains("all 4194304 bytes intact"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("generation 0"), "{}", out.stdout);

    // Finished: nothing is left to retrieve, and the error says so.
    let again = run(&v2, &["v2", name], &luod.socket, true);
    assert_eq!(
        again.code(),
        1,
        "v2 again:\n{}{}",
        again.stdout,
        again.stderr
    );
    assert!(
        again.stderr.contains(
            "luo_session_retrieve: session \"c-workload\": RETRIEVE_SESSION failed: ENOENT"
        ),
        "{}",
        again.stderr
    );
    assert!(
        luod.control()
            .sessions()
            .expect("list")
            .iter()
            .all(|s| s.name != name),
        "the finished session is gone"
    );
}

#[test]
fn workload_update_dynamic_then_static() {
    workload_update(Link::Dynamic, Link::Static);
}

#[test]
fn workload_update_static_then_dynamic() {
    workload_update(Link::Static, Link::Dynamic);
}

/// The dynamic build really uses libluo.so (it cannot start without it), the static one
/// does not need it.
#[test]
fn dynamic_build_loads_libluo_so_and_static_build_needs_none() {
    if !have_c_tools("dynamic_build_loads_libluo_so") {
        return;
    }
    let luod = Luod::start("linkage");
    let dynamic = run(
        &compile(&workload_c(), Link::Dynamic),
        &["v2", "none"],
        &luod.socket,
        false,
    );
    assert_eq!(dynamic.code(), 127, "{}{}", dynamic.stdout, dynamic.stderr);
    assert!(
        dynamic.stderr.contains("libluo.so.0"),
        "the program asks for the soname:\n{}",
        dynamic.stderr
    );
    let fixed = run(
        &compile(&workload_c(), Link::Static),
        &["v2", "none"],
        &luod.socket,
        false,
    );
    // It starts, connects, and finds no session "none".
    assert_eq!(fixed.code(), 1, "{}{}", fixed.stdout, fixed.stderr);
    assert!(fixed.stderr.contains("ENOENT"), "{}", fixed.stderr);
}

/// `tests/c/bad_input.c`: NULL handles, bad names, sizes and descriptors, tokens that do not
/// exist, operations on the wrong kind of session — each a negative errno with a message —
/// and the session and file those calls touched still work afterwards.
#[test]
fn bad_input_is_a_negative_errno_with_a_message_and_loses_nothing() {
    if !have_c_tools("bad_input") {
        return;
    }
    let program = compile(
        &common::crate_dir().join("tests/c/bad_input.c"),
        Link::Dynamic,
    );
    let luod = Luod::start("bad-input");
    let out = run(&program, &[], &luod.socket, true);
    assert!(
        out.status.success() && out.stdout.contains("TEST PASSED"),
        "bad_input ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    // The program left nothing preserved: once luod has seen its connections close (a
    // hang-up reaches it asynchronously), it holds no file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = luod.control().status().expect("status");
        if status.files == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "luod still holds files: {status:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `tests/c/threads.c`: one client and one session shared by 8 threads at once, to preserve
/// 320 files and retrieve them again, each with its own content.
#[test]
fn one_client_and_one_session_shared_by_threads() {
    if !have_c_tools("one_client_and_one_session_shared_by_threads") {
        return;
    }
    let program = compile(
        &common::crate_dir().join("tests/c/threads.c"),
        Link::Dynamic,
    );
    let luod = Luod::start("threads");
    let out = run(&program, &[], &luod.socket, true);
    assert!(
        out.status.success() && out.stdout.contains("TEST PASSED"),
        "threads ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// What `scripts/install-capi` puts under the prefix, and what pkg-config makes of it.
#[test]
fn install_lays_out_lib_header_and_pkg_config() {
    if !have_c_tools("install_lays_out_lib_header_and_pkg_config") {
        return;
    }
    let prefix = &built().prefix;
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    for f in [
        format!("lib/libluo.so.{version}"),
        "lib/libluo.a".to_owned(),
        "include/luo.h".to_owned(),
        "lib/pkgconfig/luo.pc".to_owned(),
        "lib/pkgconfig/luo-static.pc".to_owned(),
    ] {
        assert!(prefix.join(&f).is_file(), "{f} is not installed");
    }
    let link = |name: &str| {
        std::fs::read_link(prefix.join("lib").join(name))
            .unwrap_or_else(|e| panic!("lib/{name}: {e}"))
    };
    assert_eq!(
        link(&format!("libluo.so.{major}")),
        PathBuf::from(format!("libluo.so.{version}"))
    );
    assert_eq!(
        link("libluo.so"),
        PathBuf::from(format!("libluo.so.{major}"))
    );
    assert_eq!(
        std::fs::read(prefix.join("include/luo.h")).expect("installed header"),
        std::fs::read(common::crate_dir().join("include/luo.h")).expect("committed header"),
    );
    assert_eq!(pkg_config(&["--modversion", "luo"]), [version]);
    let lib = prefix.join("lib").display().to_string();
    let include = prefix.join("include").display().to_string();
    assert_eq!(
        pkg_config(&["--cflags", "--libs", "luo"]),
        [
            format!("-I{include}"),
            format!("-L{lib}"),
            "-lluo".to_owned()
        ]
    );
    let static_libs = pkg_config(&["--libs", "luo-static"]);
    assert_eq!(static_libs.first(), Some(&format!("{lib}/libluo.a")));
}
