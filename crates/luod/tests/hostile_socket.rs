//! Another user against a user's socket (issue 9, item 2, and the stale socket of item 7).
//!
//! With `XDG_RUNTIME_DIR` unset, luod used to bind `/tmp/luod-<uid>.sock`, and every client
//! connected there. Another user who got there first (a socket of their own, a symlink, a squat
//! after luod stopped) stopped the victim's luod from starting and received the victim's
//! requests and descriptors. Now the default socket is `/tmp/luod-<uid>/luod.sock` in a private
//! directory luod and the clients check, and every client checks who serves a socket
//! (`SO_PEERCRED`) before it sends anything.
//!
//! Every process here is real and runs as a real uid: the test (root) runs the victim's luod
//! and clients as a victim uid with no passwd entry, unique to this test process, and the
//! attacker as `nobody` (65534), this test binary re-executed in a role. The attacker reports
//! what its socket received, so "nothing was sent" is asserted on its side. The clients are
//! `luo-client` (a role), `luoctl`, and a C program under the preload library.

mod common;

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Proc, STEP, hear, memfd_with, raw_status, role_command, say};
use luo_client::transport::{self, Recv};
use luo_client::{Control, Device, ErrorKind};
use rustix::process::{Pid, Signal};

/// The attacker: `nobody`.
const ATTACKER: u32 = 65534;
/// EACCES, what every client answers for a socket it refuses.
const EACCES: i32 = 13;

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    common::child_entry(|role| match role {
        "victim-client" => victim_client_role(),
        "attacker" => attacker(),
        other => panic!("unknown role {other}"),
    });
}

// ---------------------------------------------------------------------------------------------
// The regressions.

/// Another uid created `/tmp/luod-<victim>` first, as its own directory with its own server in
/// it. Before, the victim's socket was `/tmp/luod-<uid>.sock`, right in /tmp, where this squat
/// made the victim's luod fail to bind and its clients talk to the attacker. Now luod refuses
/// the directory (owned by another uid) and says so, and every client refuses it before it
/// connects.
#[test]
fn foreign_private_dir_let_another_user_serve_the_victims_socket() {
    let test = "foreign_private_dir_let_another_user_serve_the_victims_socket";
    let Some(tools) = Tools::get(test) else {
        return;
    };
    let victim = victim_uid(1);
    let dir = private_dir(victim);
    let _clean = Cleanup::new(&[&dir]);
    let mut attacker = Attacker::start(Squat::Dir {
        dir: dir.clone(),
        mode: 0o755,
    });

    let log = luod_refuses(victim);
    assert_mentions(&log, &[&dir.display().to_string(), "owned by uid 65534"]);
    assert_only_attacker_files(&dir);

    victim_clients_refused(tools, victim, &[], "is owned by uid 65534");
    attacker.assert_got_nothing(false);
}

/// `/tmp/luod-<victim>` is a symlink another uid made to a directory of its own. Before, luod
/// followed the path through it (and `create_dir_all`, `open` of the lock and `bind` all did).
/// Now luod opens the directory with `O_NOFOLLOW` and refuses the symlink; clients `lstat` it
/// and refuse too.
#[test]
fn symlinked_private_dir_let_another_user_serve_the_victims_socket() {
    let test = "symlinked_private_dir_let_another_user_serve_the_victims_socket";
    let Some(tools) = Tools::get(test) else {
        return;
    };
    let victim = victim_uid(2);
    let link = private_dir(victim);
    let target = PathBuf::from(format!(
        "/tmp/luod-test-attack-{}-{victim}",
        std::process::id()
    ));
    let _clean = Cleanup::new(&[&link, &target]);
    let mut attacker = Attacker::start(Squat::Symlink {
        link: link.clone(),
        target: target.clone(),
    });

    let log = luod_refuses(victim);
    assert_mentions(&log, &[&link.display().to_string(), "is a symlink"]);
    assert_only_attacker_files(&target);

    victim_clients_refused(tools, victim, &[], "is a symlink");
    attacker.assert_got_nothing(false);
}

/// `/tmp/luod-<victim>` exists with mode 0777: first made by another uid, then (after root
/// gives it to the victim, as a careless setup might) owned by the victim but still open to
/// everyone. Either way anybody can put a socket in it. Before, nothing looked at the
/// directory's mode. Now luod refuses any group or other permission, and so do the clients.
#[test]
fn world_writable_private_dir_let_another_user_serve_the_victims_socket() {
    let test = "world_writable_private_dir_let_another_user_serve_the_victims_socket";
    let Some(tools) = Tools::get(test) else {
        return;
    };
    let victim = victim_uid(3);
    let dir = private_dir(victim);
    let _clean = Cleanup::new(&[&dir]);
    let mut attacker = Attacker::start(Squat::Dir {
        dir: dir.clone(),
        mode: 0o777,
    });

    // The attacker's own directory, open to all.
    let log = luod_refuses(victim);
    assert_mentions(&log, &["owned by uid 65534"]);
    victim_clients_refused(tools, victim, &[], "is owned by uid 65534");

    // The victim's own directory, still open to all (and the attacker's socket inside).
    std::os::unix::fs::chown(&dir, Some(victim), Some(victim)).expect("chown");
    assert_eq!(mode_of(&dir), 0o777);
    let log = luod_refuses(victim);
    assert_mentions(&log, &[&dir.display().to_string(), "has mode 0777"]);
    assert_only_attacker_files(&dir);
    victim_clients_refused(tools, victim, &[], "has mode 0777");
    attacker.assert_got_nothing(false);
}

/// An attacker's plain listening socket where the victim's clients look (here the old default
/// `/tmp/luod-<uid>.sock`, which a script may still name in `LUOD_SOCKET`). Before, luo-client,
/// luoctl and the preload library connected and sent their requests, and with them the
/// descriptors to preserve: the attacker read the victim's memfd. Now each checks the server's
/// uid right after connect and hangs up: the attacker sees connections, and no byte and no
/// descriptor on any of them.
#[test]
fn attacker_server_on_the_socket_path_received_the_victims_descriptors() {
    let test = "attacker_server_on_the_socket_path_received_the_victims_descriptors";
    let Some(tools) = Tools::get(test) else {
        return;
    };
    let victim = victim_uid(4);
    let socket = PathBuf::from(format!("/tmp/luod-{victim}.sock"));
    let _clean = Cleanup::new(&[&socket]);
    let mut attacker = Attacker::start(Squat::Socket(socket.clone()));

    let env = [("LUOD_SOCKET", socket.display().to_string())];
    victim_clients_refused(
        tools,
        victim,
        &env,
        &format!(
            "{} is served by uid 65534, not by root or uid {victim}",
            socket.display()
        ),
    );
    // luo-client (device and control), luoctl and the preload library each connected once.
    attacker.assert_got_nothing(true);
}

/// luod was killed with SIGKILL: its socket file stays behind, and no process holds its lock.
/// The next luod, on the default private directory and on an explicit path, must take the
/// socket over (not fail on the leftover, and not mistake it for a running luod) and serve.
#[test]
fn stale_socket_after_kill_9_is_replaced_by_the_next_luod() {
    if !common::require_root("stale_socket_after_kill_9_is_replaced_by_the_next_luod") {
        return;
    }
    // The default socket of a non-root user.
    let victim = victim_uid(5);
    let dir = private_dir(victim);
    let _clean = Cleanup::new(&[&dir]);
    let socket = dir.join("luod.sock");
    let first = UserLuod::start(victim, &[]);
    first.kill9(&socket);
    let st = std::fs::symlink_metadata(&socket).expect("the stale socket stays");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&st.file_type()));
    assert!(raw_status(&socket).is_none(), "nobody serves it");
    let second = UserLuod::start(victim, &[]);
    assert!(
        second
            .log()
            .contains("removed the socket a stopped luod left behind")
    );
    let said = victim_client(victim, &[]);
    assert_eq!(said.device, "SENT", "{said:?}");
    drop(second);

    // An explicit socket of root's.
    let tmp = common::temp_dir("stale");
    let _clean_tmp = Cleanup(vec![tmp.clone()]);
    let socket = tmp.join("luod.sock");
    let args = [
        "--socket".to_owned(),
        socket.display().to_string(),
        "--socket-mode".to_owned(),
        "0666".to_owned(),
    ];
    let first = UserLuod::start(0, &args);
    first.kill9(&socket);
    assert!(socket.exists());
    let second = UserLuod::start(0, &args);
    Device::open_at(&socket)
        .expect("open device")
        .create_session("after-kill")
        .expect("create");
    drop(second);
}

/// A luod run by a dedicated uid, serving others: clients refuse it by default (it is neither
/// root nor their own uid) and accept it once `LUOD_SERVER_UID` names its uid. Before the
/// server check existed there was nothing to override; this is the way out the refusal names.
#[test]
fn trusted_server_uid_lets_clients_use_a_luod_of_another_uid() {
    let test = "trusted_server_uid_lets_clients_use_a_luod_of_another_uid";
    let Some(tools) = Tools::get(test) else {
        return;
    };
    let service = victim_uid(6);
    let client = victim_uid(7);
    let tmp = common::temp_dir("trusted");
    let _clean_tmp = Cleanup(vec![tmp.clone()]);
    std::os::unix::fs::chown(&tmp, Some(service), Some(service)).expect("chown");
    let socket = tmp.join("luod.sock");
    let _luod = UserLuod::start(
        service,
        &[
            "--socket".to_owned(),
            socket.display().to_string(),
            "--socket-mode".to_owned(),
            "0666".to_owned(),
        ],
    );
    let mut env = vec![("LUOD_SOCKET", socket.display().to_string())];
    victim_clients_refused(
        tools,
        client,
        &env,
        &format!("is served by uid {service}, not by root or uid {client}"),
    );

    env.push(("LUOD_SERVER_UID", service.to_string()));
    let said = victim_client(client, &env);
    assert_eq!(
        (said.device.as_str(), said.control.as_str()),
        ("SENT", "OK")
    );
    let out = tools.luoctl(client, &env, &["status"]);
    assert!(out.status.success(), "luoctl status: {out:?}");
    assert!(out.stdout.contains("generation:"), "{out:?}");
    let out = tools.preload(client, &env);
    assert_eq!(out.stdout.trim(), "OPENED", "{out:?}");
}

/// A symlink at an explicit socket path. Before, luod removed whatever was at the path and
/// bound there; a symlink at the lock path was followed, so a luod run as root created a file
/// wherever the link pointed. Now luod refuses both, and the targets are untouched.
#[test]
fn symlink_at_socket_or_lock_was_followed() {
    if !common::require_root("symlink_at_socket_or_lock_was_followed") {
        return;
    }
    let tmp = common::temp_dir("links");
    let _clean_tmp = Cleanup(vec![tmp.clone()]);
    let socket = tmp.join("luod.sock");
    let args = ["--socket".to_owned(), socket.display().to_string()];

    // The socket path is a symlink to a file.
    let precious = tmp.join("precious");
    std::fs::write(&precious, b"keep me").expect("write");
    std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&precious, &socket).expect("symlink");
    let log = refuses(0, &args);
    assert_mentions(&log, &[&socket.display().to_string(), "is a symlink"]);
    assert!(std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_symlink()));
    assert_eq!(std::fs::read(&precious).expect("read"), b"keep me");
    assert_eq!(mode_of(&precious), 0o600);
    std::fs::remove_file(&socket).expect("rm link");

    // The lock path is a symlink to where root would create a file (the refusal above left
    // a lock file of its own).
    let lock = tmp.join("luod.lock");
    std::fs::remove_file(&lock).expect("rm lock");
    let elsewhere = tmp.join("created-by-luod");
    std::os::unix::fs::symlink(&elsewhere, &lock).expect("symlink");
    let log = refuses(0, &args);
    assert_mentions(&log, &[&lock.display().to_string(), "is a symlink"]);
    assert!(
        !elsewhere.exists(),
        "luod created the lock through the link"
    );
    assert!(!socket.exists());
    std::fs::remove_file(&lock).expect("rm link");

    // A regular file at the socket path is not removed either.
    std::fs::write(&socket, b"not a socket").expect("write");
    let log = refuses(0, &args);
    assert_mentions(&log, &["exists and is not a socket"]);
    assert_eq!(std::fs::read(&socket).expect("read"), b"not a socket");
}

/// The default of a user without `XDG_RUNTIME_DIR`, end to end: luod makes `/tmp/luod-<uid>`
/// with mode 0700, owned by the user, with the socket and the lock inside; luo-client, luoctl
/// and the preload library find it by the same rule and use it.
#[test]
fn default_private_dir_is_made_0700_and_every_client_finds_it() {
    let test = "default_private_dir_is_made_0700_and_every_client_finds_it";
    let Some(tools) = Tools::get(test) else {
        return;
    };
    let victim = victim_uid(8);
    let dir = private_dir(victim);
    let _clean = Cleanup::new(&[&dir]);
    let luod = UserLuod::start(victim, &[]);
    let meta = std::fs::symlink_metadata(&dir).expect("made");
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (victim, 0o700));
    for name in ["luod.sock", "luod.lock"] {
        let m = std::fs::symlink_metadata(dir.join(name)).expect(name);
        assert_eq!((m.uid(), m.mode() & 0o777), (victim, 0o600), "{name}");
    }
    let said = victim_client(victim, &[]);
    assert_eq!(
        (said.device.as_str(), said.control.as_str()),
        ("SENT", "OK")
    );
    let out = tools.luoctl(victim, &[], &["status"]);
    assert!(out.status.success(), "luoctl status: {out:?}");
    let out = tools.preload(victim, &[]);
    assert_eq!(out.stdout.trim(), "OPENED", "{out:?}");
    drop(luod);
    assert!(
        !dir.join("luod.sock").exists(),
        "luod removes its socket as it stops"
    );
}

// ---------------------------------------------------------------------------------------------
// The victim.

/// A victim uid: no passwd entry, unique to this test process and to `n`, so runs of the suite
/// side by side do not meet in /tmp.
fn victim_uid(n: u32) -> u32 {
    2_000_000_000 + std::process::id() * 16 + n
}

fn private_dir(uid: u32) -> PathBuf {
    luo_client::socket::private_dir(uid)
}

/// Sets a command up to run as `uid` (group the same), with no runtime directory, no home and
/// no socket in its environment unless `env` gives one.
fn as_user(cmd: &mut Command, uid: u32, env: &[(&str, String)]) {
    cmd.env_remove("XDG_RUNTIME_DIR")
        .env_remove("HOME")
        .env_remove("LUOD_SOCKET")
        .env_remove("LUOD_CONFIG")
        .env_remove("LUOD_SERVER_UID")
        .env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if uid != 0 {
        cmd.uid(uid).gid(uid);
    }
}

/// A luod of `uid` (root: 0) started by a test, stopped (SIGTERM, then SIGKILL) on drop.
struct UserLuod {
    child: Option<Child>,
    log: PathBuf,
    log_dir: PathBuf,
}

impl UserLuod {
    fn spawn(uid: u32, args: &[String]) -> UserLuod {
        let log_dir = common::temp_dir("userluod");
        let log = log_dir.join("luod.log");
        let file = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(common::luod_binary());
        cmd.args(["--log", "luod=debug"]).args(args);
        as_user(&mut cmd, uid, &[]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let child = common::spawn(&mut cmd).expect("spawn luod");
        UserLuod {
            child: Some(child),
            log,
            log_dir,
        }
    }

    /// Starts luod as `uid` with `args` (none: its default socket) and waits until it serves.
    fn start(uid: u32, args: &[String]) -> UserLuod {
        let mut luod = UserLuod::spawn(uid, args);
        let socket = socket_of(uid, args);
        let deadline = Instant::now() + STEP;
        while raw_status(&socket).is_none() {
            if let Some(status) = luod.try_wait() {
                panic!(
                    "luod of uid {uid} exited at start ({status}):\n{}",
                    luod.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "luod did not start:\n{}",
                luod.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and waits for it to be gone.
    /// SIGKILL of all of luod: the keeper (the process started) and its server, which the
    /// keeper would otherwise start again. The server's holder exits once the keeper is gone.
    fn kill9(mut self, socket: &Path) {
        let server = raw_status(socket).and_then(|s| Pid::from_raw(s.pid.get() as i32));
        // The keeper stopped first (so it starts no other server), then the server killed
        // (before it can see its keeper go and shut down cleanly), then the keeper.
        let keeper = self
            .child
            .as_ref()
            .and_then(|c| Pid::from_raw(c.id() as i32));
        if let Some(pid) = keeper {
            let _ = rustix::process::kill_process(pid, Signal::STOP);
        }
        if let Some(pid) = server {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Gone when no process holds the lock any more (the server and its holder).
        let lock = socket.with_extension("lock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let free = std::fs::File::open(&lock).is_ok_and(|f| {
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            });
            if free {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("luod's lock is still held 10 s after SIGKILL");
    }
}

impl Drop for UserLuod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- luod log -----\n{}-----", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// The socket luod of `uid` serves with `args`.
fn socket_of(uid: u32, args: &[String]) -> PathBuf {
    match args.iter().position(|a| a == "--socket") {
        Some(i) => PathBuf::from(&args[i + 1]),
        None => private_dir(uid).join("luod.sock"),
    }
}

/// Runs luod as `uid` with `args`; it must refuse to start (exit 1, promptly). Its log.
fn refuses(uid: u32, args: &[String]) -> String {
    let mut luod = UserLuod::spawn(uid, args);
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = luod.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "luod did not refuse to start:\n{}",
            luod.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(1), "{}", luod.log());
    luod.log()
}

/// The victim's luod on its default socket: it must refuse to start, saying why. Its log.
fn luod_refuses(victim: u32) -> String {
    let log = refuses(victim, &[]);
    assert_mentions(&log, &["Refusing the socket directory", "XDG_RUNTIME_DIR"]);
    log
}

fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "expected {n:?} in:\n{text}");
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// The attacker's directory holds only the attacker's socket: the victim's luod created
/// nothing there (no lock, no socket).
fn assert_only_attacker_files(dir: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["luod.sock"]);
    let meta = std::fs::symlink_metadata(dir.join("luod.sock")).expect("stat");
    assert_eq!(meta.uid(), ATTACKER, "the socket is still the attacker's");
}

/// What the `victim-client` role said.
#[derive(Debug)]
struct Said {
    /// `SENT` (device opened, a memfd preserved) or `REFUSED <errno> <kind> <message>`.
    device: String,
    /// `OK` (control connected, ping answered) or `REFUSED ...`.
    control: String,
}

/// Runs the luo-client role as `uid` with `env`.
fn victim_client(uid: u32, env: &[(&str, String)]) -> Said {
    let mut cmd = role_command("child_role", "victim-client", Path::new("/nonexistent"));
    as_user(&mut cmd, uid, env);
    let mut child = Proc::spawn(&format!("victim client (uid {uid})"), cmd);
    let device = child.expect("DEVICE");
    let control = child.expect("CONTROL");
    child.wait_ok(STEP);
    Said { device, control }
}

/// luo-client, luoctl and the preload library, each run as `uid` with `env`: every one must
/// refuse at once with `EACCES` and a message containing `why`.
fn victim_clients_refused(tools: &Tools, uid: u32, env: &[(&str, String)], why: &str) {
    let said = victim_client(uid, env);
    for (what, line) in [("device", &said.device), ("control", &said.control)] {
        assert!(
            line.starts_with(&format!("REFUSED {EACCES} ")),
            "luo-client {what}: {line}"
        );
        assert!(
            line.contains(why),
            "luo-client {what}: {line:?} lacks {why:?}"
        );
    }
    if why.contains("is served by uid") {
        assert!(said.device.contains("UntrustedServer"), "{said:?}");
        assert!(said.device.contains("LUOD_SERVER_UID="), "{said:?}");
    } else {
        assert!(said.device.contains("UnsafeDirectory"), "{said:?}");
    }

    let out = tools.luoctl(uid, env, &["status"]);
    assert_eq!(out.status.code(), Some(5), "luoctl status: {out:?}");
    assert!(out.stderr.contains("refused"), "luoctl: {out:?}");
    assert!(out.stderr.contains(why), "luoctl: {out:?} lacks {why:?}");

    let out = tools.preload(uid, env);
    assert_eq!(
        out.stdout.trim(),
        format!("ERRNO {EACCES}"),
        "preload: {out:?}"
    );
}

/// The `victim-client` role: opens the device at the default socket (`LUOD_SOCKET` if the
/// test set it) and preserves a memfd with a secret in a new session; then a control
/// connection and a ping. Says what happened.
fn victim_client_role() {
    let secret = memfd_with("secret", b"the victim's secret");
    let refused = |e: luo_client::Error| {
        let kind = match e.kind {
            ErrorKind::Call => "Call",
            ErrorKind::UntrustedServer { .. } => "UntrustedServer",
            ErrorKind::UnsafeDirectory { .. } => "UnsafeDirectory",
            _ => "other",
        };
        format!("REFUSED {} {kind} {e}", e.errno.0)
    };
    match Device::open() {
        Ok(dev) => {
            let session = dev.create_session("victim").expect("create");
            session.preserve(&secret, 1).expect("preserve");
            say("DEVICE SENT");
        }
        Err(e) => say(&format!("DEVICE {}", refused(e))),
    }
    match Control::connect().and_then(|c| c.ping()) {
        Ok(()) => say("CONTROL OK"),
        Err(e) => say(&format!("CONTROL {}", refused(e))),
    }
}

// ---------------------------------------------------------------------------------------------
// The attacker.

/// Where the attacker puts its server.
enum Squat {
    /// Creates `dir` with `mode` and listens at `dir/luod.sock`.
    Dir { dir: PathBuf, mode: u32 },
    /// Creates `target` (0755), listens at `target/luod.sock`, and links `link` to `target`.
    Symlink { link: PathBuf, target: PathBuf },
    /// Listens at this path.
    Socket(PathBuf),
}

/// The attacker's server, run as [`ATTACKER`].
struct Attacker {
    proc: Proc,
}

impl Attacker {
    fn start(squat: Squat) -> Attacker {
        let mut cmd = role_command("child_role", "attacker", Path::new("/nonexistent"));
        match squat {
            Squat::Dir { dir, mode } => {
                cmd.env("ATTACK_DIR", &dir)
                    .env("ATTACK_DIR_MODE", format!("{mode:o}"))
                    .env("ATTACK_SOCKET", dir.join("luod.sock"));
            }
            Squat::Symlink { link, target } => {
                cmd.env("ATTACK_DIR", &target)
                    .env("ATTACK_DIR_MODE", "755")
                    .env("ATTACK_LINK", link)
                    .env("ATTACK_SOCKET", target.join("luod.sock"));
            }
            Squat::Socket(path) => {
                cmd.env("ATTACK_SOCKET", path);
            }
        }
        cmd.uid(ATTACKER).gid(ATTACKER);
        let mut proc = Proc::spawn("attacker (uid 65534)", cmd);
        proc.expect("READY");
        Attacker { proc }
    }

    /// Asks the attacker what its socket received: no byte, no descriptor; and connections if
    /// `connected` (the clients reached it and hung up), none otherwise (they never connected).
    fn assert_got_nothing(&mut self, connected: bool) {
        self.proc.tell("REPORT");
        let got = self.proc.expect("GOT");
        let field = |name: &str| -> u64 {
            got.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {got:?}"))
        };
        assert_eq!(
            (field("bytes"), field("fds")),
            (0, 0),
            "the attacker got {got}"
        );
        if connected {
            // luo-client's device and control, luoctl and the preload library.
            assert_eq!(field("conns"), 4, "the attacker got {got}");
        } else {
            assert_eq!(field("conns"), 0, "the attacker got {got}");
        }
        self.proc.close_stdin();
        self.proc.wait_ok(STEP);
    }
}

/// The `attacker` role: sets up the squat, listens (every uid may connect) and accepts nothing
/// until asked; then takes every connection waiting and reads all that was sent on it.
fn attacker() {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    if let Some(dir) = var("ATTACK_DIR") {
        let mode = u32::from_str_radix(
            &std::env::var("ATTACK_DIR_MODE").expect("ATTACK_DIR_MODE"),
            8,
        )
        .expect("mode");
        std::fs::create_dir(&dir).expect("attacker mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    if let Some(link) = var("ATTACK_LINK") {
        std::os::unix::fs::symlink(var("ATTACK_DIR").expect("dir"), &link).expect("symlink");
    }
    let path = var("ATTACK_SOCKET").expect("ATTACK_SOCKET");
    let listener = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .expect("socket");
    let addr = rustix::net::SocketAddrUnix::new(&path).expect("address");
    rustix::net::bind(&listener, &addr).expect("attacker bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    rustix::net::listen(&listener, 64).expect("listen");
    say("READY");
    assert_eq!(hear().as_deref(), Some("REPORT"));
    let (mut conns, mut bytes, mut fds) = (0, 0, 0);
    while let Ok(conn) = rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC) {
        conns += 1;
        // Until the end of what was sent: the client closed, or left nothing more.
        while let Ok(Recv::Message(m)) = transport::recv(conn.as_fd(), false) {
            bytes += m.bytes.len();
            fds += m.fds.len();
        }
    }
    say(&format!("GOT conns={conns} bytes={bytes} fds={fds}"));
    while hear().is_some() {}
}

// ---------------------------------------------------------------------------------------------
// Tools: luoctl, and a C program under the preload library.

/// What a program run gave.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// The other clients under test, built once per test process.
struct Tools {
    luoctl: PathBuf,
    preload: PathBuf,
    /// A C program that opens `/dev/liveupdate` and prints `OPENED` or `ERRNO <n>`.
    open_device: PathBuf,
}

impl Tools {
    /// The tools, if this machine can run the test `test` (root, gcc); otherwise the skip is
    /// reported (a failure under `LUO_REQUIRE_ALL=1`).
    fn get(test: &str) -> Option<&'static Tools> {
        if !common::require_root(test) {
            return None;
        }
        static TOOLS: OnceLock<Option<Tools>> = OnceLock::new();
        let tools = TOOLS.get_or_init(Tools::build).as_ref();
        if tools.is_none() {
            common::skip(test, "gcc is not installed (scripts/setup installs it)");
        }
        tools
    }

    fn build() -> Option<Tools> {
        let gcc = Command::new("gcc")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !gcc {
            return None;
        }
        // luoctl and the preload library are other packages' artifacts: bring them up to date
        // next to luod (`cargo test -p luod` alone does not build them).
        let profile_dir = common::luod_binary()
            .parent()
            .expect("target/<profile>")
            .to_path_buf();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(&workspace).args([
            "build",
            "--locked",
            "-p",
            "luoctl",
            "-p",
            "luo-preload",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of luoctl and luo-preload failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Built where every uid can run it (cargo's scratch directory for tests, under
        // target/), kept for the life of this process and removed by the next one.
        remove_stale_tools();
        let dir = tools_root().join(format!("{TOOLS_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tools dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let source = dir.join("open_device.c");
        std::fs::write(&source, OPEN_DEVICE_C).expect("write C");
        let open_device = dir.join("open_device");
        let out = Command::new("gcc")
            .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2", "-o"])
            .arg(&open_device)
            .arg(&source)
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tools {
            luoctl: profile_dir.join("luoctl"),
            preload: profile_dir.join("libluo_preload.so"),
            open_device,
        })
    }

    /// `luoctl args` as `uid` with `env`.
    fn luoctl(&self, uid: u32, env: &[(&str, String)], args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.luoctl);
        cmd.args(args);
        as_user(&mut cmd, uid, env);
        run(cmd)
    }

    /// The C program under the preload library, as `uid` with `env`.
    fn preload(&self, uid: u32, env: &[(&str, String)]) -> Output {
        let mut cmd = Command::new(&self.open_device);
        as_user(&mut cmd, uid, env);
        cmd.env("LD_PRELOAD", &self.preload);
        run(cmd)
    }
}

/// Prefix of the directory a test process builds its tools in; its pid follows.
const TOOLS_PREFIX: &str = "luod-test-tools-";

/// Where the tools directories are.
fn tools_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Removes the tools directories of test processes that are gone.
fn remove_stale_tools() {
    let Ok(entries) = std::fs::read_dir(tools_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TOOLS_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

const OPEN_DEVICE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	int fd = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("ERRNO %d\n", errno);
		return 1;
	}
	printf("OPENED\n");
	close(fd);
	return 0;
}
"#;

/// Runs `cmd` to its end, killing it after [`STEP`]: a client that hangs fails the test.
fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = common::spawn(&mut cmd).expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().expect("stdout"),
        stderr: err.join().expect("stderr"),
    }
}

/// Removes its paths (a symlink itself, a directory with its contents) when made and when
/// dropped.
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn new<P: AsRef<Path>>(paths: &[P]) -> Cleanup {
        let c = Cleanup(paths.iter().map(|p| p.as_ref().to_path_buf()).collect());
        c.remove();
        c
    }

    fn remove(&self) {
        for p in &self.0 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir_all(p);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove();
    }
}
