//! Test-only failpoints: named places where the server kills itself on request, so that the
//! crash tests can stop it exactly between two steps of a request or an upgrade.
//!
//! Off unless luod is started with `LUOD_FAILPOINTS=1`; then root (or luod's own uid) arms a
//! point with `Op::Failpoint`, and the server sends itself SIGKILL the chosen time it passes
//! there. A server started after a crash begins with every point disarmed. The points are
//! listed in [`POINTS`] and in `docs/protocol.md`.

use std::collections::HashMap;

/// Every failpoint, and where it is.
pub const POINTS: &[(&str, &str)] = &[
    (
        "after-apply",
        "a changing request applied, before its journal record is written",
    ),
    (
        "after-journal",
        "its journal record written, before its reply is sent",
    ),
    (
        "after-reply",
        "its reply sent, before the request is consumed from the socket",
    ),
    (
        "upgrade-staged",
        "upgrade, old server: the successor started, before its READY",
    ),
    (
        "upgrade-ready",
        "upgrade, old server: the successor is READY, before GO",
    ),
    (
        "upgrade-go",
        "upgrade, old server: GO sent, before it exits",
    ),
    (
        "reboot-frozen",
        "reboot: the sessions frozen, before the successor is started",
    ),
];

/// The armed failpoints of this server.
#[derive(Debug, Default)]
pub struct Failpoints {
    enabled: bool,
    armed: HashMap<&'static str, u32>,
}

impl Failpoints {
    /// Failpoints as the environment allows them (`LUOD_FAILPOINTS=1`).
    pub fn from_env() -> Failpoints {
        Failpoints {
            enabled: std::env::var_os("LUOD_FAILPOINTS").is_some_and(|v| v == "1"),
            armed: HashMap::new(),
        }
    }

    /// True if failpoints may be armed.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Arms `name` to fire at its `hit`-th pass (0 disarms). Unknown names are refused.
    pub fn arm(&mut self, name: &str, hit: u32) -> Result<(), String> {
        let Some(&(point, _)) = POINTS.iter().find(|(p, _)| *p == name) else {
            let known: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
            return Err(format!(
                "Unknown failpoint {name:?}; known: {}",
                known.join(", ")
            ));
        };
        if hit == 0 {
            self.armed.remove(point);
        } else {
            self.armed.insert(point, hit);
        }
        Ok(())
    }

    /// Passes point `name`: if it is armed and this is the chosen pass, the process dies here.
    pub fn pass(&mut self, name: &'static str) {
        if self.armed.is_empty() {
            return;
        }
        if let Some(left) = self.armed.get_mut(name) {
            *left -= 1;
            if *left == 0 {
                tracing::warn!(failpoint = name, "failpoint reached: killing this server");
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
        }
    }
}

/// Test-only: a server started after a crash dies here, before it serves, as many times as the
/// number in the file named by `LUOD_FAILPOINT_RECOVER` says (each time one less), when
/// failpoints are allowed (`LUOD_FAILPOINTS=1`). This is how the tests make a server that
/// crashes at start-up.
pub fn recovery_start() {
    recovery_crash();
}

/// A successor that got GO waits as long as `LUOD_FAILPOINT_GO_DELAY_MS` says before it says
/// SERVING, when failpoints are allowed: so that a test can have the keeper see its
/// predecessor's death first, and start a server from the dead one's holder meanwhile.
pub fn after_go() {
    delay("LUOD_FAILPOINT_GO_DELAY_MS");
}

/// Waits as long as the environment variable `var` says (milliseconds), when failpoints are
/// allowed: so that a test can order two servers' steps as a race would. The keeper's join
/// uses `LUOD_FAILPOINT_HELLO_DELAY_MS` (a successor waits before its HELLO) and
/// `LUOD_FAILPOINT_HOLDER_DELAY_MS` (a server started after a crash waits between its HELLO and
/// reading the keeper's answer).
pub fn delay(var: &str) {
    if !Failpoints::from_env().enabled() {
        return;
    }
    let ms = std::env::var(var)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    if ms > 0 {
        tracing::warn!(ms, var, "failpoint: waiting");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn recovery_crash() {
    if !Failpoints::from_env().enabled() {
        return;
    }
    let Some(path) = std::env::var_os("LUOD_FAILPOINT_RECOVER") else {
        return;
    };
    let left: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if left == 0 {
        return;
    }
    let _ = std::fs::write(&path, format!("{}\n", left - 1));
    tracing::warn!(left, "failpoint: the recovered server dies at start-up");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
}
