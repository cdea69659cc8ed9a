//! luo-vmm: a small KVM VMM whose guest keeps running while the VMM binary is replaced.
//!
//! ```text
//! luo-vmm run --mem 64M --pages 1g --session vm1     boot the guest, serve its control socket
//! luo-vmm upgrade --session vm1 [--binary PATH]      replace the running VMM (or send SIGUSR1)
//! luo-vmm migrate --session vm1 --to 1g              move guest RAM onto 1 GiB pages, live
//! luo-vmm status --session vm1                       the guest's progress
//! luo-vmm stop --session vm1                         stop the guest
//! luo-vmm resume --session vm1                       take over a handed-off session
//! ```
//!
//! An upgrade: the running VMM starts `BINARY resume` with a socket to it; the successor
//! creates its VM and vCPU and says READY; only then does the predecessor stop its vCPU, save
//! the vCPU state into the state memfd and hand the luod session off (guest RAM, descriptor and
//! state were preserved at boot). The successor retrieves them, maps the same RAM (nothing is
//! copied), restores the vCPU, runs it, and reports the blackout the guest saw: the time from
//! the guest's last step under the old VMM to its first under the new one.
//!
//! A migrate moves the running guest's RAM onto new memory of another page size: pre-copy
//! rounds driven by KVM's dirty log while the guest runs, then a short pause to copy the last
//! dirty pages and switch the memory slot; luod's session then holds the new RAM, so the next
//! upgrade carries it. It reports the blackout the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use luo_client::Device;
use luo_guestmem::PageSize;
use luo_vmm::{Config, Outcome, Vm, Vmm};

mod alloc_count;
mod bench;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A KVM VMM whose guest survives the VMM's upgrade through luod"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct Where {
    /// The VM's name: its luod session.
    #[arg(long, default_value = "vm")]
    session: String,
    /// luod's socket (default: LUOD_SOCKET, or luod's default).
    #[arg(long, env = "LUOD_SOCKET")]
    luod_socket: Option<PathBuf>,
    /// This VM's control socket (default: $TMPDIR/luo-vmm-<session>.sock).
    #[arg(long)]
    control: Option<PathBuf>,
}

impl Where {
    fn config(&self) -> Config {
        Config {
            name: self.session.clone(),
            luod_socket: self
                .luod_socket
                .clone()
                .unwrap_or_else(luo_client::default_socket),
            control: self.control.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("luo-vmm-{}.sock", self.session))
            }),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot the guest and run it.
    Run {
        #[command(flatten)]
        at: Where,
        /// Guest RAM: a size with K, M or G.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        mem: u64,
        /// Page size of guest RAM: 4k, 2m or 1g.
        #[arg(long, default_value = "4k")]
        pages: PageSize,
        /// Back guest RAM with a KVM guest_memfd of the VM (4 KiB pages). It cannot cross an
        /// upgrade: `upgrade` is then refused and the guest keeps running.
        #[arg(long, conflicts_with = "pages")]
        guest_memfd: bool,
    },
    /// Take over a handed-off session (started by `upgrade`, or by hand after a handoff).
    Resume {
        #[command(flatten)]
        at: Where,
        /// The handshake socket from the predecessor.
        #[arg(long, hide = true)]
        handoff_fd: Option<i32>,
        /// Guest RAM size, if known: the memory slot is then prepared before the handoff.
        #[arg(long, value_parser = parse_size)]
        mem: Option<u64>,
        /// Page size of guest RAM, with --mem.
        #[arg(long, default_value = "4k")]
        pages: PageSize,
    },
    /// Replace the running VMM with BINARY (default: the running VMM's own binary).
    Upgrade {
        #[command(flatten)]
        at: Where,
        /// The new VMM binary.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Move the running guest's RAM onto new memory of another page size (the guest keeps
    /// running; luod's session then holds the new RAM).
    Migrate {
        #[command(flatten)]
        at: Where,
        /// The new page size: 4k, 2m or 1g.
        #[arg(long)]
        to: PageSize,
        /// Fail on purpose at this point (replace, pause), to test the way back.
        #[arg(long, hide = true)]
        fail_at: Option<luo_vmm::migrate::FailAt>,
    },
    /// Print the guest's progress.
    Status {
        #[command(flatten)]
        at: Where,
    },
    /// Stop the guest and the VMM.
    Stop {
        #[command(flatten)]
        at: Where,
    },
    /// Benchmarks: VMM upgrade blackouts and attribute conversions (starts its own luod: the
    /// `luod` beside this binary, or --luod).
    Bench(bench::BenchArgs),
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("invalid size {s:?}"))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("luo-vmm: {e:#}");
        std::process::exit(1);
    }
}

fn sigusr1() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&flag))?;
    Ok(flag)
}

fn run(args: Args) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("Cannot find luo-vmm's own binary")?;
    match args.cmd {
        Cmd::Run {
            at,
            mem,
            pages,
            guest_memfd,
        } => {
            let config = at.config();
            let flag = sigusr1()?;
            let vmm = if guest_memfd {
                Vmm::boot_guest_memfd(config.clone(), mem)
            } else {
                Vmm::boot(config.clone(), mem, pages)
            }
            .context("Cannot boot the guest")?;
            println!(
                "luo-vmm: guest running: {} MiB on {pages} pages, session {:?}, control {}",
                mem >> 20,
                config.name,
                config.control.display()
            );
            finish(vmm.serve(flag, binary)?)
        }
        Cmd::Resume {
            at,
            handoff_fd,
            mem,
            pages,
        } => {
            let config = at.config();
            let sock = match handoff_fd {
                Some(fd) => Some(luo_vmm::handoff::adopt(fd)?),
                None => None,
            };
            let flag = sigusr1()?;
            let vm = Vm::prepare().context("Cannot create the VM")?;
            let device = Device::open_at(&config.luod_socket).context("Cannot open luod")?;
            let (vmm, report) =
                Vmm::resume(config, vm, device, sock.as_ref(), mem.map(|m| (m, pages)))
                    .context("Cannot resume the guest")?;
            eprintln!("luo-vmm {}: resumed: {report}", std::process::id());
            drop(sock);
            finish(vmm.serve(flag, binary)?)
        }
        Cmd::Upgrade { at, binary } => {
            let cmd = match binary {
                Some(b) => format!("upgrade {}", b.display()),
                None => "upgrade".into(),
            };
            let reply = luo_vmm::control::call(&at.config().control, &cmd)?;
            if !reply.starts_with("RESUMED") {
                bail!("upgrade failed: {reply}");
            }
            println!("{reply}");
            Ok(())
        }
        Cmd::Migrate { at, to, fail_at } => {
            let cmd = match fail_at {
                Some(f) => format!("migrate {to} fail-at={f}"),
                None => format!("migrate {to}"),
            };
            let reply = luo_vmm::control::call(&at.config().control, &cmd)?;
            if !reply.starts_with("MIGRATED") {
                bail!("migrate failed: {reply}");
            }
            println!("{reply}");
            Ok(())
        }
        Cmd::Status { at } => {
            println!(
                "{}",
                luo_vmm::control::call(&at.config().control, "status")?
            );
            Ok(())
        }
        Cmd::Stop { at } => {
            println!("{}", luo_vmm::control::call(&at.config().control, "stop")?);
            Ok(())
        }
        Cmd::Bench(b) => bench::run(b),
    }
}

fn finish(outcome: Outcome) -> anyhow::Result<()> {
    match outcome {
        Outcome::HandedOff | Outcome::Stopped => Ok(()),
    }
}
