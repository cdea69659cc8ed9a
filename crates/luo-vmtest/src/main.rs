//! `luo-vmtest`: the project's own test programs for the VM harness (`scripts/vm`,
//! `docs/vm.md`). They run inside the guest, against the kernel's real `/dev/liveupdate`, one
//! stage per boot; the harness's init script picks the stage from the kernel command line.
//!
//! The kernel's ioctls go through `luo_sys::liveupdate` (luo-abi's structs), the module luod's
//! own kernel backend uses.
//! - [`memfd_kexec`]: the `memfd-kexec` scenario.
//!
//! Every check prints one `luo-vmtest: ok ...` line; the last line is `luo-vmtest: PASS` or
//! `luo-vmtest: FAIL <what>`, and the exit status says the same (0 or 1).
//!
//! ```text
//! luo-vmtest memfd-kexec --stage 1 [--kexec PATH]   # preserve, then kexec -e
//! luo-vmtest memfd-kexec --stage 2                  # retrieve, verify, finish
//! luo-vmtest memfd-kexec --stage 3                  # the finished session is gone
//! ```
#![deny(unsafe_code)]

mod memfd_kexec;

use std::io::Write;
use std::process::ExitCode;

/// One failed step of a stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or ioctl that should have worked did not.
    #[error("{0}")]
    Call(&'static str, #[source] std::io::Error),
    /// The kernel answered, but not what the uAPI promises.
    #[error("{0}")]
    Unexpected(String),
    /// The command line is wrong.
    #[error("usage: luo-vmtest memfd-kexec --stage 1|2|3 [--kexec PATH] ({0})")]
    Usage(String),
}

/// The stage's progress on stdout (the guest's serial console), one line per check.
#[derive(Debug, Default)]
pub struct Report {
    checks: u32,
}

impl Report {
    fn ok(&mut self, what: &str) {
        self.checks += 1;
        println!("luo-vmtest: ok {what}");
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

fn run(args: &[String], report: &mut Report) -> Result<(), Error> {
    let mut stage = None;
    let mut kexec = String::from("kexec");
    let mut it = args.iter();
    let scenario = it
        .next()
        .ok_or_else(|| Error::Usage("no scenario".into()))?;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--stage" => stage = it.next().cloned(),
            "--kexec" => {
                kexec = it
                    .next()
                    .cloned()
                    .ok_or_else(|| Error::Usage("--kexec PATH".into()))?
            }
            other => return Err(Error::Usage(format!("unknown argument {other}"))),
        }
    }
    match (scenario.as_str(), stage.as_deref()) {
        ("memfd-kexec", Some("1")) => memfd_kexec::stage1(report, &kexec),
        ("memfd-kexec", Some("2")) => memfd_kexec::stage2(report),
        ("memfd-kexec", Some("3")) => memfd_kexec::stage3(report),
        (s, st) => Err(Error::Usage(format!("no stage {st:?} of scenario {s}"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut report = Report::default();
    match run(&args, &mut report) {
        Ok(()) => {
            println!("luo-vmtest: PASS ({} checks)", report.checks);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            println!("luo-vmtest: FAIL {msg} (after {} checks)", report.checks);
            ExitCode::FAILURE
        }
    }
}
