//! luod's Debian package, as `scripts/package` builds it (cargo-deb) and as it lands on a
//! machine: unpacked with `dpkg-deb -x` into a scratch root, every file checked where the
//! systemd units, the pkg-config files, the man pages and the docs say it is, and the
//! installed programs run: luod and luoctl from the root, on the socket of the unit, with the
//! installed config; the C example compiled with `pkg-config --cflags --libs luo` against the
//! installed header and library, doing a workload update against the installed luod.
//!
//! The package is built once per test process (a release build of luod, luoctl and libluo,
//! then cargo-deb) into this test's target directory, and unpacked under it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{BUILD, Group, STEP, TempDir, have, run, skip};
use luo_package::unit_values;

/// The package, built and unpacked.
struct Package {
    deb: PathBuf,
    /// What `dpkg-deb -x` unpacked.
    root: PathBuf,
    /// What `dpkg-deb -e` unpacked: control, conffiles, maintainer scripts.
    control: PathBuf,
}

impl Package {
    fn path(&self, installed: &str) -> PathBuf {
        self.root.join(installed.trim_start_matches('/'))
    }

    fn read(&self, installed: &str) -> String {
        let path = self.path(installed);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn control_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.control.join(name)).unwrap_or_default()
    }
}

/// The package, built by `scripts/package` once per test process; None (after the skip is
/// reported) without cargo-deb or dpkg-deb.
fn package(test: &str) -> Option<&'static Package> {
    static PACKAGE: OnceLock<Option<Package>> = OnceLock::new();
    let package = PACKAGE.get_or_init(|| {
        let tools = Command::new(common::cargo())
            .args(["deb", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !tools || !have(test, &["dpkg-deb"], "dpkg") {
            return None;
        }
        let target = common::target_dir();
        let out = run(
            Command::new(common::workspace().join("scripts/package"))
                .current_dir(common::workspace())
                .env("CARGO_TARGET_DIR", &target),
            BUILD,
        );
        out.assert_success("scripts/package");
        let deb = PathBuf::from(out.stdout.lines().last().unwrap_or("").trim());
        assert!(
            deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
            "scripts/package's last line is not the package: {out:?}"
        );
        let scratch = target.join("luo-package-test");
        let _ = std::fs::remove_dir_all(&scratch);
        let (root, control) = (scratch.join("root"), scratch.join("control"));
        std::fs::create_dir_all(&scratch).expect("scratch");
        for (how, dir) in [("-x", &root), ("-e", &control)] {
            run(Command::new("dpkg-deb").arg(how).arg(&deb).arg(dir), STEP)
                .assert_success(&format!("dpkg-deb {how}"));
        }
        Some(Package { deb, root, control })
    });
    if package.is_none() {
        skip(
            test,
            "cargo-deb is not installed (scripts/setup installs it: cargo install cargo-deb)",
        );
    }
    package.as_ref()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The workspace's version, as the package has it.
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[test]
fn package_has_every_file_where_its_units_and_docs_say() {
    let test = "package_has_every_file_where_its_units_and_docs_say";
    let Some(p) = package(test) else { return };

    // The control file and the conffile.
    let field = |name: &str| {
        let out = run(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(&p.deb)
                .arg(name),
            STEP,
        );
        out.assert_success("dpkg-deb --field");
        out.stdout.trim().to_owned()
    };
    assert_eq!(field("Package"), "luod");
    assert_eq!(field("Version"), format!("{}-1", version()));
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    assert_eq!(p.control_file("conffiles").trim(), "/etc/luod/luod.toml");
    // An upgrade of the package never stops or restarts luod (that would drop every
    // preserved session): prerm stops the units only on remove, postinst never restarts.
    let prerm = p.control_file("prerm");
    assert!(
        prerm.contains("[ \"$1\" = remove ]") && !prerm.contains("upgrade"),
        "{prerm}"
    );
    let postinst = p.control_file("postinst");
    assert!(
        postinst.contains("deb-systemd-helper enable luod.socket")
            && postinst.contains("deb-systemd-helper enable luod-kexec.service")
            && !postinst.contains("restart"),
        "{postinst}"
    );

    // libluo.so.0 is in the dynamic linker's cache once the package is installed.
    let triggers = p.control_file("triggers");
    assert!(
        triggers
            .lines()
            .any(|l| l.trim() == "activate-noawait ldconfig"),
        "triggers:\n{triggers}"
    );

    // Programs, libraries, header, pkg-config, config, completions.
    for bin in ["/usr/bin/luod", "/usr/bin/luoctl"] {
        assert!(is_executable(&p.path(bin)), "{bin} is not an executable");
    }
    let lib = format!("/usr/lib/libluo.so.{}", version());
    assert!(p.path(&lib).is_file(), "{lib}");
    let major = version().split('.').next().expect("major");
    let soname = format!("libluo.so.{major}");
    for (link, to) in [
        (
            format!("/usr/lib/{soname}"),
            format!("libluo.so.{}", version()),
        ),
        ("/usr/lib/libluo.so".to_owned(), soname.clone()),
    ] {
        let target = std::fs::read_link(p.path(&link)).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(target, Path::new(&to), "{link}");
    }
    if have(test, &["readelf", "--version"], "binutils") {
        let out = run(Command::new("readelf").arg("-d").arg(p.path(&lib)), STEP);
        assert!(
            out.stdout.contains(&format!("[{soname}]")),
            "the soname of {lib} is not {soname}:\n{}",
            out.stdout
        );
    }
    assert!(p.path("/usr/lib/libluo.a").is_file());
    let workspace = common::workspace();
    for (installed, source) in [
        ("/usr/include/luo.h", "crates/luo-capi/include/luo.h"),
        (
            "/usr/share/doc/luod/examples/workload.c",
            "crates/luo-capi/examples/workload.c",
        ),
        ("/usr/share/doc/luod/README.md", "README.md"),
    ] {
        let want = std::fs::read_to_string(workspace.join(source)).expect(source);
        assert_eq!(p.read(installed), want, "{installed} is not {source}");
    }
    for pc in ["luo", "luo-static"] {
        let text = p.read(&format!("/usr/lib/pkgconfig/{pc}.pc"));
        assert!(text.contains("\nprefix=/usr\n"), "{pc}.pc:\n{text}");
        assert!(
            text.contains(&format!("\nVersion: {}\n", version())),
            "{pc}.pc:\n{text}"
        );
        assert!(
            !text.contains('@'),
            "{pc}.pc has a placeholder left:\n{text}"
        );
    }
    for completion in [
        "/usr/share/bash-completion/completions/luoctl",
        "/usr/share/zsh/vendor-completions/_luoctl",
        "/usr/share/fish/vendor_completions.d/luoctl.fish",
    ] {
        assert!(p.read(completion).contains("luoctl"), "{completion}");
    }
    let config = std::fs::metadata(p.path("/etc/luod/luod.toml")).expect("the config");
    assert_eq!(config.mode() & 0o7777, 0o644);

    // Every man page of luoctl, compressed as Debian has them.
    let man_dir = workspace.join("crates/luoctl/man");
    for page in std::fs::read_dir(&man_dir).expect("man pages") {
        let name = page.expect("entry").file_name();
        let name = name.to_string_lossy();
        let installed = format!("/usr/share/man/man1/{name}.gz");
        assert!(p.path(&installed).is_file(), "{installed} is missing");
    }

    // luod's own, made from its --help: every flag it takes is in it.
    assert!(
        p.path("/usr/share/man/man8/luod.8.gz").is_file(),
        "no luod.8"
    );

    // The units: where they are, and every file they name is in the package.
    let service = p.read("/usr/lib/systemd/system/luod.service");
    let socket = p.read("/usr/lib/systemd/system/luod.socket");
    let kexec = p.read("/usr/lib/systemd/system/luod-kexec.service");
    let units: Vec<String> = std::fs::read_dir(p.path("/usr/lib/systemd/system"))
        .expect("the units' directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut units = units;
    units.sort();
    assert_eq!(
        units,
        ["luod-kexec.service", "luod.service", "luod.socket"],
        "the package's units"
    );
    for (installed, source) in [
        (&service, "packaging/systemd/luod.service"),
        (&socket, "packaging/systemd/luod.socket"),
        (&kexec, "packaging/systemd/kexec/luod-kexec.service"),
    ] {
        let want = std::fs::read_to_string(workspace.join(source)).expect(source);
        assert_eq!(installed, &want, "the package's unit is not {source}");
    }
    let mut commands = unit_values(&service, "Service", "ExecStart");
    assert_eq!(
        commands.len(),
        1,
        "ExecStart= of luod.service: {commands:?}"
    );
    commands.extend(unit_values(&service, "Service", "ExecReload"));
    commands.extend(unit_values(&kexec, "Service", "ExecStart"));
    assert_eq!(
        unit_values(&kexec, "Install", "WantedBy"),
        ["kexec.target"],
        "luod-kexec.service runs on the way into a kexec"
    );
    for command in &commands {
        // A prefix such as `-` or `@` is not part of the path.
        let program = command
            .split_whitespace()
            .next()
            .expect("a program")
            .trim_start_matches(['-', '@', ':', '+', '!']);
        assert!(program.starts_with('/'), "{command}: not an absolute path");
        assert!(
            is_executable(&p.path(program)),
            "luod.service runs {program}, which the package does not install as an executable"
        );
    }
    for doc in unit_values(&service, "Unit", "Documentation")
        .iter()
        .flat_map(|d| d.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    {
        if let Some(file) = doc.strip_prefix("file://") {
            assert!(
                p.path(file).is_file(),
                "Documentation={doc}: not in the package"
            );
        } else if let Some(page) = doc.strip_prefix("man:") {
            let (name, section) = page
                .strip_suffix(')')
                .and_then(|p| p.split_once('('))
                .unwrap_or_else(|| panic!("Documentation={doc}"));
            let file = format!("/usr/share/man/man{section}/{name}.{section}.gz");
            assert!(p.path(&file).is_file(), "Documentation={doc}: no {file}");
        }
    }
    for key in ["Requires", "After", "Also"] {
        for section in ["Unit", "Install"] {
            for unit in unit_values(&service, section, key)
                .iter()
                .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .filter(|u| u.starts_with("luod."))
            {
                assert!(
                    p.path(&format!("/usr/lib/systemd/system/{unit}")).is_file(),
                    "luod.service names {unit}, which the package does not have"
                );
            }
        }
    }
    let listen = unit_values(&socket, "Socket", "ListenSequentialPacket");
    assert_eq!(
        listen,
        ["/run/luod/luod.sock"],
        "luod.socket: the default socket of luod run as root (docs/operations.md), which \
         installed_luod_serves_the_socket_its_unit_names checks"
    );
}

/// The installed luod, run as root with nothing but the installed config, serves the socket
/// luod.socket names, and the installed luoctl finds it there with no flag; ExecReload= of
/// luod.service (`luoctl upgrade`) upgrades it in place. Both run in a mount namespace with a
/// tmpfs on /run, so no other luod of the machine is met.
#[test]
fn installed_luod_serves_the_socket_its_unit_names() {
    let test = "installed_luod_serves_the_socket_its_unit_names";
    let Some(p) = package(test) else { return };
    if !common::require_root(
        test,
        "needs root to serve /run/luod/luod.sock in a namespace",
    ) || !have(test, &["unshare", "--version"], "util-linux")
    {
        return;
    }
    let service = p.read("/usr/lib/systemd/system/luod.service");
    let socket = unit_values(
        &p.read("/usr/lib/systemd/system/luod.socket"),
        "Socket",
        "ListenSequentialPacket",
    )
    .pop()
    .expect("ListenSequentialPacket=");
    // The unit's commands, with the installed paths moved into the scratch root.
    let in_root = |command: &str| {
        command
            .split_whitespace()
            .map(|w| {
                if w.starts_with("/usr/") {
                    p.path(w).display().to_string()
                } else {
                    w.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // `@PATH ARGV0 ARGS...`: systemd runs PATH with argv[0] ARGV0 (bash's exec -a does too).
    let exec_start = unit_values(&service, "Service", "ExecStart")[0].clone();
    let start = match exec_start.strip_prefix('@') {
        Some(rest) => {
            let mut words = rest.split_whitespace();
            let path = words.next().expect("ExecStart=@PATH");
            let argv0 = words.next().expect("ExecStart=@PATH ARGV0");
            let args: Vec<&str> = words.collect();
            format!(
                "bash -c 'exec -a {argv0} \"$0\" \"$@\"' {} {}",
                in_root(path),
                args.join(" ")
            )
        }
        None => in_root(&exec_start),
    };
    let reload = in_root(&unit_values(&service, "Service", "ExecReload")[0]);
    let luoctl = p.path("/usr/bin/luoctl");
    let config = p.path("/etc/luod/luod.toml");
    let script = format!(
        "set -e
mount -t tmpfs -o mode=0755 luod-package-test /run
LUOD_CONFIG={config} {start} --log warn &
luod=$!
for i in $(seq 500); do [ -S {socket} ] && break; sleep 0.02; done
{luoctl} status
{reload}
{luoctl} status --json
kill -TERM $luod
wait $luod
echo stopped $?
",
        config = config.display(),
        luoctl = luoctl.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "bash",
        "-c",
        &script,
    ])
    .env_remove("LUOD_SOCKET")
    .env_remove("LUOD_CONFIG");
    let out = run(&mut cmd, STEP * 2);
    out.assert_success("the installed luod and luoctl on the unit's socket");
    assert!(
        out.stdout.contains("generation:   0"),
        "luoctl status:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("luod upgraded: pid "),
        "ExecReload= ({reload}):\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\"upgrades\":1"),
        "luoctl status --json after the reload:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("stopped 0"), "{}", out.stdout);
}

/// Starts the installed luod on `socket` with `config`; its log goes to `log`.
fn start_installed(p: &Package, config: &Path, socket: &Path, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log");
    Command::new(p.path("/usr/bin/luod"))
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .args(["--log", "warn"])
        .env_remove("LUOD_SOCKET")
        .env_remove("LUOD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn the installed luod")
}

fn stop(mut luod: Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(luod.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = luod.wait();
}

/// The installed luod prints its version, and takes the installed config: as shipped (every
/// setting commented out), with every commented setting turned on, and — the control — it
/// refuses the same file with a key it does not know.
#[test]
fn installed_luod_runs_and_takes_the_installed_config() {
    let test = "installed_luod_runs_and_takes_the_installed_config";
    let Some(p) = package(test) else { return };
    for bin in ["luod", "luoctl"] {
        let out = run(
            Command::new(p.path(&format!("/usr/bin/{bin}"))).arg("--version"),
            STEP,
        );
        out.assert_success(&format!("{bin} --version"));
        assert_eq!(out.stdout.trim(), format!("{bin} {}", version()));
    }

    let scratch = TempDir::new("config");
    let shipped = p.path("/etc/luod/luod.toml");
    let text = p.read("/etc/luod/luod.toml");
    // Every setting, turned on: the lines `#key = value`.
    let mut settings = 0;
    let all_on: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(setting)
                if setting.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }) =>
            {
                settings += 1;
                format!("{setting}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(
        settings >= 7,
        "the config shows only {settings} settings:\n{text}"
    );
    let on = scratch.path().join("all-on.toml");
    std::fs::write(&on, &all_on).expect("write");
    for (what, config) in [("as shipped", shipped.clone()), ("every setting on", on)] {
        let socket = scratch.path().join("luod.sock");
        let log = scratch.path().join("luod.log");
        let mut luod = start_installed(p, &config, &socket, &log);
        common::wait_for_luod(&socket, &mut luod, &log);
        let mode = std::fs::metadata(&socket).expect("socket").mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket's mode with the config {what}");
        stop(luod);
    }

    let bad = scratch.path().join("bad.toml");
    std::fs::write(&bad, format!("{all_on}no_such_key = 1\n")).expect("write");
    let socket = scratch.path().join("bad.sock");
    let out = run(
        Command::new(p.path("/usr/bin/luod"))
            .arg("--config")
            .arg(&bad)
            .arg("--socket")
            .arg(&socket),
        STEP,
    );
    assert!(!out.status.success(), "luod took an unknown key: {out:?}");
    assert!(out.stderr.contains("no_such_key"), "{}", out.stderr);
}

/// The installed man pages render without a warning, with man(1) where it is installed, and
/// the bash completion loads.
#[test]
fn installed_man_pages_render_and_completions_load() {
    let test = "installed_man_pages_render_and_completions_load";
    let Some(p) = package(test) else { return };
    if !have(test, &["groff", "--version"], "groff-base") {
        return;
    }
    // man(1) is not on every machine (man-db); groff, which it runs, is.
    let man = common::runs(&["man", "--version"]);
    let mut pages = Vec::new();
    for section in ["man1", "man8"] {
        let dir = p.path(&format!("/usr/share/man/{section}"));
        for page in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{section}: {e}")) {
            pages.push(page.expect("entry").path());
        }
    }
    for page in &pages {
        let out = run(
            Command::new("sh").arg("-c").arg(format!(
                "zcat '{}' | groff -man -Tutf8 -ww -z",
                page.display()
            )),
            STEP,
        );
        out.assert_success("groff");
        assert!(
            out.stderr.is_empty(),
            "{} warns:\n{}",
            page.display(),
            out.stderr
        );
        if man {
            let out = run(
                Command::new("man")
                    .arg("-l")
                    .arg(page)
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "80"),
                STEP,
            );
            out.assert_success("man -l");
            assert!(
                out.stdout.contains("NAME") && out.stdout.contains("luo"),
                "man -l {}:\n{}",
                page.display(),
                out.stdout
            );
        }
    }
    assert!(pages.len() >= 3, "{pages:?}");
    // luod's page has every flag `luod --help` lists.
    let help = run(Command::new(p.path("/usr/bin/luod")).arg("--help"), STEP);
    let page = run(
        Command::new("sh").arg("-c").arg(format!(
            "zcat '{}' | groff -man -Tutf8 -P-cbou",
            p.path("/usr/share/man/man8/luod.8.gz").display()
        )),
        STEP,
    );
    let page_text = page.stdout.replace('\u{2010}', "-");
    for flag in help
        .stdout
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
    {
        let flag = flag.trim_end_matches([',', '.']);
        assert!(
            page_text.contains(flag),
            "luod.8 does not document {flag}:\n{page_text}"
        );
    }

    let bash = p.path("/usr/share/bash-completion/completions/luoctl");
    let out = run(
        Command::new("bash")
            .arg("-c")
            .arg(format!("source '{}' && complete -p luoctl", bash.display())),
        STEP,
    );
    out.assert_success("the bash completion");
    assert!(out.stdout.contains("luoctl"), "{}", out.stdout);
}

/// The C example, compiled against the installed header with `pkg-config --cflags --libs
/// luo` (and `luo-static`) from the scratch root, does a workload update against the
/// installed luod: v1 built against libluo.so hands off, v2 built with libluo.a retrieves.
#[test]
fn c_example_builds_against_the_installed_library_and_runs_against_installed_luod() {
    let test = "c_example_builds_against_the_installed_library_and_runs_against_installed_luod";
    let Some(p) = package(test) else { return };
    if !have(test, &["gcc", "--version"], "gcc")
        || !have(test, &["pkg-config", "--version"], "pkg-config")
    {
        return;
    }
    let scratch = TempDir::new("c-example");
    let pkg_config = |module: &str| {
        let out = run(
            Command::new("pkg-config")
                .args(["--cflags", "--libs", module])
                .env("PKG_CONFIG_SYSROOT_DIR", &p.root)
                // Only the scratch root's files, none of the machine's.
                .env("PKG_CONFIG_LIBDIR", p.path("/usr/lib/pkgconfig"))
                .env_remove("PKG_CONFIG_PATH"),
            STEP,
        );
        out.assert_success(&format!("pkg-config {module}"));
        let flags: Vec<String> = out.stdout.split_whitespace().map(str::to_owned).collect();
        assert!(
            flags.contains(&format!("-I{}", p.path("/usr/include").display())),
            "pkg-config {module} does not point into the scratch root: {flags:?}"
        );
        flags
    };
    let source = common::workspace().join("crates/luo-capi/examples/workload.c");
    let compile = |module: &str| {
        let program = scratch.path().join(format!("workload-{module}"));
        let out = run(
            Command::new("gcc")
                .args(["-std=c99", "-Wall", "-Werror", "-o"])
                .arg(&program)
                .arg(&source)
                .args(pkg_config(module)),
            STEP,
        );
        out.assert_success(&format!("gcc workload.c with pkg-config {module}"));
        program
    };
    let shared = compile("luo");
    let static_ = compile("luo-static");

    let config = p.path("/etc/luod/luod.toml");
    let socket = scratch.path().join("luod.sock");
    let log = scratch.path().join("luod.log");
    let luod = Group::spawn(
        Command::new(p.path("/usr/bin/luod"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .args(["--log", "warn"])
            .env_remove("LUOD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let mut luod = luod;
    common::wait_for_luod(&socket, &mut luod.0, &log);
    let workload = |program: &Path, stage: &str| {
        let out = run(
            Command::new(program)
                .args([stage, "c-from-the-package"])
                .env("LUOD_SOCKET", &socket)
                .env("LD_LIBRARY_PATH", p.path("/usr/lib")),
            STEP,
        );
        out.assert_success(&format!("workload {stage}"));
        out.stdout
    };
    let v1 = workload(&shared, "v1");
    assert!(v1.contains("handed off"), "{v1}");
    let v2 = workload(&static_, "v2");
    assert!(v2.contains("all 4194304 bytes intact"), "{v2}");
    // v1 ran on the installed libluo.so.
    let out = run(
        Command::new("ldd")
            .arg(&shared)
            .env("LD_LIBRARY_PATH", p.path("/usr/lib")),
        STEP,
    );
    let lib = p.path("/usr/lib/libluo.so.0");
    assert!(
        out.stdout
            .contains(&format!("libluo.so.0 => {}", lib.display())),
        "{}",
        out.stdout
    );
    drop(luod);
}
