//! The `luod-kexec-corrupt` scenario: luod finds a state session it cannot trust and refuses to
//! start, leaving the workload's kernel sessions untouched.
//!
//! Stage 1, without luod, plants two kernel sessions: [`STATE_SESSION`], where luod keeps its
//! state, with a memfd of garbage ([`GARBAGE`] bytes of [`GARBAGE_BYTE`]) at token 0, sealed as
//! luod seals its own state (so that what luod refuses is the content), and
//! [`workload_kernel_name`] (luod's name for uid 0's session [`WORKLOAD`]) with a patterned
//! memfd at [`TOKEN`]; it runs the kexec while it holds both. Stage 2 runs luod: it must exit
//! non-zero within [`LUOD_LIMIT`], its stderr naming the `state session`; then the workload's
//! kernel session is retrieved straight from `/dev/liveupdate` and its memfd checked byte for
//! byte. Stage 2 then plants the same garbage again, unsealed this time, and kexecs; stage 3
//! checks that luod refuses that too, with the workload's session again intact.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::luod_kexec::{
    STATE_SESSION, check_pattern, kernel_session_name, open_device, patterned_memfd, sys,
};
use crate::{Error, Report};

/// The luod session whose kernel session stage 1 makes by hand.
pub const WORKLOAD: &str = "w";
/// Its memfd's token.
pub const TOKEN: u64 = 1;
/// Its memfd's size: not a whole number of pages.
pub const SIZE: u64 = (256 << 10) + 4096 + 77;
/// The seed of its pattern.
pub const SEED: u64 = 0x0063_6f72_7275_7074;
/// The size of the garbage state.
pub const GARBAGE: usize = 4096;
/// The garbage state's every byte.
pub const GARBAGE_BYTE: u8 = 0xa5;
/// How long luod may take to refuse.
pub const LUOD_LIMIT: Duration = Duration::from_secs(30);

/// `<fnv1a64("w")>-00000000-luod`, luod's name for it in the kernel.
pub fn workload_kernel_name() -> String {
    kernel_session_name(0, WORKLOAD)
}

/// Makes the two kernel sessions of a round (1: the garbage sealed, 2: unsealed) and runs the
/// kexec while holding them. Returns only on failure.
fn plant_and_kexec(report: &mut Report, round: u64, kexec: &str) -> Result<(), Error> {
    let sealed = round == 1;
    let dev = open_device(report)?;
    let state = sys(
        "create the state session",
        dev.create_session(STATE_SESSION),
    )?;
    let garbage = sys(
        "memfd_create",
        rustix::fs::memfd_create(
            "luod-state-garbage",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        ),
    )?;
    let bytes = [GARBAGE_BYTE; GARBAGE];
    let mut done = 0;
    while done < bytes.len() {
        done += sys(
            "pwrite",
            rustix::io::pwrite(&garbage, &bytes[done..], done as u64),
        )?;
    }
    if sealed {
        sys(
            "seal the garbage",
            rustix::fs::fcntl_add_seals(
                &garbage,
                SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
            ),
        )?;
    }
    sys("preserve the garbage", state.preserve_fd(&garbage, 0))?;
    report.ok(&format!(
        "kernel session {STATE_SESSION}: {GARBAGE} bytes of {GARBAGE_BYTE:#04x} at token 0, {}",
        if sealed {
            "sealed as luod seals its state (write, grow, shrink, seal)"
        } else {
            "not sealed"
        }
    ));
    let name = workload_kernel_name();
    let work = sys("create the workload's session", dev.create_session(&name))?;
    let memfd = patterned_memfd("luod-corrupt-w", SIZE, SEED + round)?;
    sys(
        "preserve the workload's memfd",
        work.preserve_fd(&memfd, TOKEN),
    )?;
    report.ok(&format!(
        "kernel session {name}: a patterned memfd of {SIZE} bytes at token {TOKEN}"
    ));
    drop((garbage, memfd, dev));
    report.ok("kexec -e while holding both sessions");
    report.flush();
    let status = Command::new(kexec)
        .arg("-e")
        .status()
        .map_err(|e| Error::Call("run kexec -e", e))?;
    drop((state, work));
    Err(Error::Unexpected(format!("kexec -e returned ({status})")))
}

/// Stage 1: the first round's sessions (the garbage sealed), then the kexec. Returns only on
/// failure.
pub fn stage1(report: &mut Report, kexec: &str) -> Result<(), Error> {
    plant_and_kexec(report, 1, kexec)
}

/// Stage 2: luod refuses the sealed garbage, the workload's session is intact; then the second
/// round's sessions (the garbage unsealed) and the kexec. Returns only on failure.
pub fn stage2(report: &mut Report, luod: &str, socket: &str, kexec: &str) -> Result<(), Error> {
    refused(report, luod, socket, 1)?;
    plant_and_kexec(report, 2, kexec)
}

/// Stage 3: luod refuses the unsealed garbage, the workload's session is intact.
pub fn stage3(report: &mut Report, luod: &str, socket: &str) -> Result<(), Error> {
    refused(report, luod, socket, 2)
}

/// luod refuses the state; the workload's kernel session of `round` is as it was.
fn refused(report: &mut Report, luod: &str, socket: &str, round: u64) -> Result<(), Error> {
    let log_path = "/run/luod-corrupt.log";
    let log = File::create(log_path).map_err(|e| Error::Call("create luod's log", e))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::Call("dup luod's log", e))?;
    let t0 = Instant::now();
    let mut child = Command::new(luod)
        .args(["--socket", socket])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| Error::Call("start luod", e))?;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::Call("wait for luod", e))?
        {
            break status;
        }
        if t0.elapsed() > LUOD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            show_log(log_path);
            return Err(Error::Unexpected(format!(
                "luod still ran {} s after its start on a corrupt state session",
                LUOD_LIMIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    let text = show_log(log_path);
    if status.success() || status.code().is_none() {
        return Err(Error::Unexpected(format!(
            "luod on a corrupt state session: {status}, expected a non-zero exit"
        )));
    }
    if !text.contains("state session") {
        return Err(Error::Unexpected(
            "luod's refusal does not mention the state session".into(),
        ));
    }
    report.ok(&format!(
        "luod refused the corrupt state: {status} after {} ms, its stderr names the state \
         session",
        took.as_millis()
    ));

    let dev = open_device(report)?;
    let name = workload_kernel_name();
    let work = sys(
        "retrieve the workload's kernel session",
        dev.retrieve_session(&name),
    )?;
    let memfd = sys("retrieve its memfd", work.retrieve_fd(TOKEN))?;
    check_pattern(&memfd, "the workload's memfd", SIZE, SEED + round)?;
    report.ok(&format!(
        "kernel session {name} is intact: retrieved, {SIZE} bytes, every byte as written"
    ));
    sys("finish", work.finish())?;
    drop(work);
    report.ok("finished it");
    // Not a check: what luod left of its own state session after reading it.
    match dev.retrieve_session(STATE_SESSION) {
        Ok(_) => report.ok("(luod's state session is still in the kernel, not retrieved)"),
        Err(Errno::NOENT) => report.ok("(luod's state session is gone: luod retrieved it)"),
        Err(e) => report.ok(&format!("(luod's state session: {e})")),
    }
    Ok(())
}

/// Prints luod's log on the console and returns it.
fn show_log(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        println!("luo-vmtest: [luod] {line}");
    }
    text
}
