//! `luo-vmtest`: the project's own test programs for the VM harness (`scripts/vm`,
//! `docs/vm.md`). They run inside the guest, against the kernel's real `/dev/liveupdate`, one
//! stage per boot; the harness's init script picks the stage from the kernel command line.
//!
//! The kernel's ioctls go through `luo_sys::liveupdate` (luo-abi's structs), the module luod's
//! own kernel backend uses.
//! - [`memfd_kexec`]: the `memfd-kexec` scenario.
//! - [`luod_kexec`]: the `luod-kexec` scenario, luod itself across a real kexec (through
//!   luo-client, as a workload would).
//! - [`luod_kexec_corrupt`]: the `luod-kexec-corrupt` scenario, luod refusing a corrupt state
//!   session.
//! - [`systemd`]: the `systemd` scenario, luod under systemd as PID 1.
//! - [`kexec_bench`]: the `luod-kexec-stress` and `kexec-bench` scenarios, 2,000 sessions (or
//!   one large memfd) through luod and straight through `/dev/liveupdate`, timed.
//!
//! Every check prints one `luo-vmtest: ok ...` line; the last line is `luo-vmtest: PASS` or
//! `luo-vmtest: FAIL <what>`, and the exit status says the same (0 or 1).
//!
//! ```text
//! luo-vmtest memfd-kexec --stage 1 [--kexec PATH]   # preserve, then kexec -e
//! luo-vmtest memfd-kexec --stage 2                  # retrieve, verify, finish
//! luo-vmtest memfd-kexec --stage 3                  # the finished session is gone
//! luo-vmtest luod-kexec --stage 1 [--socket PATH] [--size N[K|M|G]] [--luoctl PATH] [--kexec PATH]
//! luo-vmtest luod-kexec --stage 2 [--socket PATH] [--size N] [--luoctl PATH]  # through luod
//! luo-vmtest luod-kexec --stage 2-kernel            # luod stopped: the kernel has nothing left
//! luo-vmtest luod-kexec-corrupt --stage 1 [--kexec PATH]
//! luo-vmtest luod-kexec-corrupt --stage 2 [--luod PATH] [--socket PATH] [--kexec PATH]
//! luo-vmtest luod-kexec-corrupt --stage 3 [--luod PATH] [--socket PATH]
//! luo-vmtest systemd --stage prepare|check|retrieve|kernel [--socket PATH]
//! luo-vmtest kexec-bench --stage luod-before|luod-after|direct-before|direct-after
//!            --shape many|large [--size N] [--luod PATH] [--socket PATH] [--kexec PATH]
//! ```
#![deny(unsafe_code)]

mod kexec_bench;
mod luod_kexec;
mod luod_kexec_corrupt;
mod memfd_kexec;
mod pattern;
mod systemd;

use std::io::Write;
use std::process::ExitCode;

/// One failed step of a stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or ioctl that should have worked did not.
    #[error("{0}")]
    Call(&'static str, #[source] std::io::Error),
    /// A luod call that should have worked did not.
    #[error("{0}")]
    Client(&'static str, #[source] Box<luo_client::Error>),
    /// The kernel (or luod) answered, but not what it promises.
    #[error("{0}")]
    Unexpected(String),
    /// The command line is wrong.
    #[error(
        "usage: luo-vmtest memfd-kexec|luod-kexec|luod-kexec-corrupt|systemd|kexec-bench --stage N \
         [--shape many|large] [--kexec PATH] \
         [--socket PATH] [--size BYTES] [--luoctl PATH] [--luod PATH] ({0})"
    )]
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
    let mut shape = None;
    let mut kexec = None;
    let mut opts = luod_kexec::Options {
        socket: luod_kexec::DEFAULT_SOCKET.into(),
        size: 1 << 30,
        luoctl: "luoctl".into(),
        kexec: "luo-kexec".into(),
        luod: "luod".into(),
    };
    let mut it = args.iter();
    let scenario = it
        .next()
        .ok_or_else(|| Error::Usage("no scenario".into()))?;
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--stage" => stage = Some(value()?),
            "--kexec" => kexec = Some(value()?),
            "--socket" => opts.socket = value()?.into(),
            "--luoctl" => opts.luoctl = value()?,
            "--luod" => opts.luod = value()?,
            "--shape" => shape = Some(value()?),
            "--size" => {
                let v = value()?;
                opts.size = luod_kexec::parse_size(&v)
                    .ok_or_else(|| Error::Usage(format!("--size {v}")))?;
            }
            other => return Err(Error::Usage(format!("unknown argument {other}"))),
        }
    }
    if let Some(k) = &kexec {
        opts.kexec.clone_from(k);
    }
    let kexec = kexec.unwrap_or_else(|| "kexec".into());
    let socket = opts.socket.to_string_lossy().into_owned();
    match (scenario.as_str(), stage.as_deref()) {
        ("memfd-kexec", Some("1")) => memfd_kexec::stage1(report, &kexec),
        ("memfd-kexec", Some("2")) => memfd_kexec::stage2(report),
        ("memfd-kexec", Some("3")) => memfd_kexec::stage3(report),
        ("luod-kexec", Some("1")) => luod_kexec::stage1(report, &opts),
        ("luod-kexec", Some("2")) => luod_kexec::stage2(report, &opts),
        ("luod-kexec", Some("2-kernel")) => luod_kexec::stage2_kernel(report),
        ("luod-kexec-corrupt", Some("1")) => luod_kexec_corrupt::stage1(report, &kexec),
        ("luod-kexec-corrupt", Some("2")) => {
            luod_kexec_corrupt::stage2(report, &opts.luod, &socket, &kexec)
        }
        ("luod-kexec-corrupt", Some("3")) => {
            luod_kexec_corrupt::stage3(report, &opts.luod, &socket)
        }
        ("systemd", Some("prepare")) => systemd::prepare(report, &opts),
        ("systemd", Some("check")) => systemd::check(report, &opts, "now"),
        ("systemd", Some("retrieve")) => systemd::retrieve(report, &opts),
        ("systemd", Some("kernel")) => systemd::kernel_empty(report),
        ("kexec-bench", Some(st)) => {
            let shape = shape.as_deref().unwrap_or("many");
            let shape = kexec_bench::Shape::parse(shape, opts.size)
                .ok_or_else(|| Error::Usage(format!("--shape {shape}")))?;
            match st {
                "luod-before" => kexec_bench::luod_before(report, &opts, shape),
                "luod-after" => kexec_bench::luod_after(report, &opts, shape),
                "direct-before" => kexec_bench::direct_before(report, &kexec, shape),
                "direct-after" => kexec_bench::direct_after(report, shape),
                _ => Err(Error::Usage(format!(
                    "no stage {st} of scenario kexec-bench"
                ))),
            }
        }
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
