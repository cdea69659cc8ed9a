//! Crash safety: luod's server is killed with SIGKILL — at random instants, and at each of its
//! failpoints (after a request is applied, after it is journaled, after it is answered, on
//! either side of an upgrade's READY, in the middle of a reboot) — while clients create, preserve,
//! hand off, retrieve and finish, and everything luod acknowledged is checked after every kill.
//!
//! The harness is `crates/luo-bench/src/crash.rs`, included here; its module doc says what it
//! records and checks. `luo-bench crash` runs its long form (1,000 kills, 2,000 sessions and
//! 15,000 memfds held). Here: the short form (24 kills, a small load, every failpoint, upgrades
//! and reboots in the mix), and the same mix without kills, which must find nothing, so that a
//! failure of the first is luod's and not the harness's.
//!
//! Both need root: the harness arms luod's failpoints and runs its clients under uids of their
//! own. `LUO_CRASH_SEED=<n>` repeats a run's random choices (each run prints its seed).

mod common;
#[path = "../../luo-bench/src/crash.rs"]
mod crash;

use std::sync::{Mutex, PoisonError};

use crash::{FAILPOINTS, Options, Report};

/// One harness at a time: each drives a luod of its own as hard as two cores allow.
static ONE: Mutex<()> = Mutex::new(());

/// Runs the short form, changed by `tune`; `None` if the test cannot run here.
fn harness(test: &str, tune: impl FnOnce(&mut Options)) -> Option<Report> {
    if !common::require_root(test) {
        return None;
    }
    let _one = ONE.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = common::temp_dir(test);
    let mut opts = Options::short(common::luod_binary(), dir.clone());
    if let Some(seed) = std::env::var("LUO_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        opts.seed = seed;
    }
    tune(&mut opts);
    let result = crash::run(&opts);
    // Either way the directory goes: an error carries the end of luod's log.
    let _ = std::fs::remove_dir_all(&dir);
    let report = result.unwrap_or_else(|e| panic!("{test}: the harness could not run: {e}"));
    let keys: Vec<String> = report
        .keys()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!("{test}: {}", keys.join(" "));
    Some(report)
}

fn assert_clean(test: &str, r: &Report) {
    assert!(
        r.lost() == 0 && r.duplicated == 0,
        "{test}: over {} kills luod lost {} (acknowledged sessions and files: {}, replies: {}) \
         and duplicated {} (seed {}):\n{}",
        r.kills,
        r.lost(),
        r.lost_state,
        r.lost_replies,
        r.duplicated,
        r.seed,
        r.failures()
    );
    assert!(
        r.clean(),
        "{test}: over {} kills luod cut {} connections, disagreed {} times with what it had \
         acknowledged, did not recover {} times and was gone {} times (seed {}):\n{}",
        r.kills,
        r.connections_cut,
        r.unexpected,
        r.unrecovered,
        r.keeper_deaths,
        r.seed,
        r.failures()
    );
}

#[test]
fn crash_kills_lose_nothing_and_answer_every_request_once() {
    let test = "crash_kills_lose_nothing_and_answer_every_request_once";
    let Some(r) = harness(test, |_| {}) else {
        return;
    };
    assert_clean(test, &r);
    for point in FAILPOINTS {
        assert!(
            r.failpoints_fired.get(point).copied().unwrap_or(0) > 0,
            "{test}: failpoint {point} never fired ({} armed without firing)",
            r.failpoints_unreached
        );
    }
    assert!(r.kills >= 12, "{test}: only {} kills", r.kills);
    assert!(
        r.upgrades > 0 && r.reboots > 0,
        "{test}: {} upgrades and {} reboots in the mix",
        r.upgrades,
        r.reboots
    );
}

#[test]
fn crash_harness_without_kills_finds_nothing() {
    let test = "crash_harness_without_kills_finds_nothing";
    let Some(r) = harness(test, |o| o.kill = false) else {
        return;
    };
    assert_clean(test, &r);
    assert_eq!(r.kills, 0);
    assert!(
        r.upgrades > 0 && r.reboots > 0 && r.files_checked > 0,
        "{test}: {} upgrades, {} reboots, {} files checked",
        r.upgrades,
        r.reboots,
        r.files_checked
    );
}
