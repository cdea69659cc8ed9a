//! The `systemd` scenario's workload: one session through luod with systemd as PID 1, across
//! `systemctl restart luod`, a SIGKILL of the whole service (keeper, server and holders at
//! once) and `systemctl kexec` (`scripts/vm.d/scenarios/systemd.sh`, `docs/vm.md`).
//!
//! - `prepare`: a session of a patterned 64 MiB memfd and a small state memfd, handed off (the
//!   workload then exits, as a VMM does once its successor is to take over);
//! - `check`: luod lists the session, incoming, with both files and all their bytes;
//! - `retrieve`: the session retrieved, every byte checked, finished, and gone from luod;
//! - `kernel`: with luod stopped, the kernel has nothing left of it.

use crate::luod_kexec::{
    Options, STATE_SIZE, check_contents, check_pattern, client, find, kernel_has_none, memfd_with,
    patterned_memfd, sessions, state_contents, unexpected, wait_gone,
};
use crate::{Error, Report};

/// The session's name.
pub const SESSION: &str = "systemd-vm";
/// The memory memfd's size.
pub const SIZE: u64 = 64 << 20;
/// Its pattern's seed.
pub const SEED: u64 = 0x7379_7374_656d;
/// Its token.
pub const TOKEN_MEMORY: u64 = 1;
/// The state memfd's token.
pub const TOKEN_STATE: u64 = 2;

/// Creates, fills, preserves and hands off the session.
pub fn prepare(report: &mut Report, opts: &Options) -> Result<(), Error> {
    let dev = client("open the device", luo_client::Device::open_at(&opts.socket))?;
    let session = client("create session", dev.create_session(SESSION))?;
    let memory = patterned_memfd("systemd-vm-memory", SIZE, SEED)?;
    let state = memfd_with("systemd-vm-state", &state_contents())?;
    client("preserve memory", session.preserve(&memory, TOKEN_MEMORY))?;
    client("preserve state", session.preserve(&state, TOKEN_STATE))?;
    client("hand off", session.handoff())?;
    report.ok(&format!(
        "session {SESSION}: {SIZE} patterned bytes at token {TOKEN_MEMORY}, state at token \
         {TOKEN_STATE}, handed off"
    ));
    check(report, opts, "after the handoff")
}

/// luod lists the session, incoming, with both files and every byte.
pub fn check(report: &mut Report, opts: &Options, when: &str) -> Result<(), Error> {
    let list = sessions(opts)?;
    let s = find(&list, SESSION)?;
    if !s.incoming || s.retrieved || s.finished || s.files != 2 || s.bytes < SIZE + STATE_SIZE {
        return unexpected(format!("{when}: luod lists {s:?}"));
    }
    report.ok(&format!(
        "{when}: luod lists {SESSION}: incoming, 2 files, {} bytes",
        s.bytes
    ));
    Ok(())
}

/// Retrieves the session, checks every byte, finishes it; luod then lists it no more.
pub fn retrieve(report: &mut Report, opts: &Options) -> Result<(), Error> {
    check(report, opts, "before the retrieve")?;
    let dev = client("open the device", luo_client::Device::open_at(&opts.socket))?;
    let session = client("retrieve session", dev.retrieve_session(SESSION))?;
    let memory = client("retrieve memory", session.retrieve(TOKEN_MEMORY))?;
    check_pattern(&memory, "the memory", SIZE, SEED)?;
    let state = client("retrieve state", session.retrieve(TOKEN_STATE))?;
    check_contents(&state, "the state", &state_contents())?;
    report.ok(&format!(
        "{SESSION}: {SIZE} bytes, every one as written, and the state"
    ));
    client("finish", session.finish())?;
    drop(session);
    wait_gone(opts, SESSION)?;
    report.ok(&format!("{SESSION} finished: luod lists it no more"));
    Ok(())
}

/// After luod stopped: the kernel holds neither the session's kernel session nor luod's state
/// session (luod finished both).
pub fn kernel_empty(report: &mut Report) -> Result<(), Error> {
    kernel_has_none(report, &[SESSION])
}
