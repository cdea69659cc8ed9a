//! luoctl against a real luod: `status`, `sessions` (table and `--json`), `version`, and the
//! error when no luod runs at the socket.
//!
//! luod is the binary built next to luoctl (`cargo test -p luod -p luoctl` or `--workspace`
//! builds both); without it the tests say why they skip, and fail under `LUO_REQUIRE_ALL=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use luo_client::{Control, Device};

fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

fn luoctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_luoctl"))
}

/// luod, built into the same directory as luoctl.
fn luod_binary() -> Option<PathBuf> {
    let path = luoctl().with_file_name("luod");
    path.exists().then_some(path)
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "luoctl-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A luod on a private socket; stopped with SIGTERM (then SIGKILL) when dropped.
struct Luod {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Luod {
    fn start(binary: &Path, tag: &str) -> Luod {
        let dir = temp_dir(tag);
        let socket = dir.join("luod.sock");
        let child = Command::new(binary)
            .arg("--socket")
            .arg(&socket)
            .args(["--log", "warn"])
            .env_remove("LUOD_SOCKET")
            .env_remove("LUOD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn luod");
        let luod = Luod { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Control::connect_at(&luod.socket).is_ok_and(|c| c.ping().is_ok()) {
            assert!(Instant::now() < deadline, "luod did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs luoctl with `args`, within 10 s.
fn run(socket: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(luoctl())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("LUOD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn luoctl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(None) = child.try_wait() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("luoctl {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf8")
}

/// Replaces every run of digits after `key` on its line with `N`.
fn normalize(text: &str, keys: &[&str]) -> String {
    text.lines()
        .map(|line| {
            if keys.iter().any(|k| line.starts_with(k)) {
                let mut out = String::new();
                let mut in_digits = false;
                for c in line.chars() {
                    if c.is_ascii_digit() || (in_digits && c == '.') {
                        if !in_digits {
                            out.push('N');
                            in_digits = true;
                        }
                    } else {
                        in_digits = false;
                        out.push(c);
                    }
                }
                out
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn status_sessions_and_version_show_luods_state() {
    let Some(binary) = luod_binary() else {
        skip(
            "status_sessions_and_version_show_luods_state",
            "luod is not built next to luoctl (run cargo test -p luod -p luoctl)",
        );
        return;
    };
    let luod = Luod::start(&binary, "state");
    let uid = rustix::process::getuid().as_raw();
    let dev = Device::open_at(&luod.socket).expect("open");
    let s = dev.create_session("cli-session").expect("create");
    let m = rustix::fs::memfd_create("m", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&m, 8192).expect("size");
    s.preserve(&m, 1).expect("preserve");
    let h = dev.create_session("handed \"quoted\"").expect("create");
    h.handoff().expect("handoff");

    let out = run(&luod.socket, &["status"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        normalize(&stdout(&out), &["luod", "clients", "descriptors", "uptime"]),
        "luod N (pid N)\n\
         generation:  0\n\
         sessions:    1 outgoing, 1 incoming\n\
         files:       1\n\
         preserved:   8192 bytes\n\
         clients:     N\n\
         descriptors: N of N\n\
         upgrades:    0\n\
         uptime:      N s"
    );
    assert!(stdout(&out).starts_with(&format!("luod {version} (pid ")));

    let out = run(&luod.socket, &["status", "--json"]);
    assert!(out.status.success());
    let json = stdout(&out);
    for field in [
        "\"generation\":0",
        "\"sessions_outgoing\":1",
        "\"sessions_incoming\":1",
        "\"files\":1",
        "\"bytes\":8192",
        "\"upgrades\":0",
        &format!("\"version\":\"{version}\""),
    ] {
        assert!(json.contains(field), "{field} missing from {json}");
    }

    let out = run(&luod.socket, &["sessions", "--json"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim_end(),
        format!(
            "[{{\"owner\":{uid},\"name\":\"cli-session\",\"state\":\"outgoing\",\"files\":1,\"bytes\":8192}},\
             {{\"owner\":{uid},\"name\":\"handed \\\"quoted\\\"\",\"state\":\"incoming\",\"files\":0,\"bytes\":0}}]"
        )
    );

    let out = run(&luod.socket, &["sessions"]);
    assert!(out.status.success());
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("UID") && lines[0].ends_with("NAME"),
        "{table}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [&uid.to_string(), "outgoing", "1", "8192", "cli-session"]
    );
    assert!(lines[2].contains("incoming") && lines[2].ends_with("handed \"quoted\""));

    let out = run(&luod.socket, &["version"]);
    assert!(out.status.success());
    let pid = Control::connect_at(&luod.socket)
        .expect("connect")
        .status()
        .expect("status")
        .pid;
    assert_eq!(
        stdout(&out),
        format!("luoctl {version}\nluod {version} (pid {pid})\n")
    );

    // The socket may come from the environment too.
    let out = Command::new(luoctl())
        .arg("status")
        .env("LUOD_SOCKET", &luod.socket)
        .output()
        .expect("luoctl");
    assert!(out.status.success(), "LUOD_SOCKET: {}", stderr(&out));
    drop((s, h, dev));
}

#[test]
fn no_luod_at_the_socket_is_a_clear_error_with_exit_code_2() {
    let dir = temp_dir("absent");
    let socket = dir.join("luod.sock");
    for args in [
        &["status"][..],
        &["sessions", "--json"],
        &["upgrade"],
        &["reboot"],
    ] {
        let out = run(&socket, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("is luod running?") && err.contains(&socket.display().to_string()),
            "{args:?}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{args:?} printed {}", stdout(&out));
    }
    // `version` still says its own version.
    let out = run(&socket, &["version"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stdout(&out),
        format!("luoctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    // A socket file nobody listens on: the same.
    let stale = dir.join("stale.sock");
    let fd = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .expect("socket");
    rustix::net::bind(
        &fd,
        &rustix::net::SocketAddrUnix::new(&stale).expect("addr"),
    )
    .expect("bind");
    drop(fd);
    let out = run(&stale, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is luod running?"));
    let _ = std::fs::remove_dir_all(&dir);
}
