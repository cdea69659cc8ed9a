//! `rpc`: the request rates of one client through the real luod, against a bare socket pair
//! measured in the same run.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use luo_abi::wire::MAX_MESSAGE;
use luo_client::transport::{self, Recv};
use luo_client::{Device, PRESERVE_WINDOW};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::upgrade::{Daemon, START_TIMEOUT, locate_luod, memfd};
use crate::{Result, check, put, raise_nofile, ratio};

/// PRESERVE_FD calls per run (and PINGs, and round trips of the baselines).
const RPC_OPS: usize = 5_000;
/// Runs of each rate measurement; the best counts.
const RATE_RUNS: usize = 3;

/// What [`measure`] found, in operations per second.
#[derive(Debug)]
pub(crate) struct Rates {
    /// Round trips over a bare socket pair to an echo thread.
    raw: f64,
    /// The same with a descriptor on each request.
    raw_fd: f64,
    /// The same, pipelined: [`PRESERVE_WINDOW`] requests in flight.
    raw_fd_pipelined: f64,
    /// PING through luod, one at a time.
    ping: f64,
    /// PRESERVE_FD through luod, one `Session::preserve` at a time.
    preserve_sequential: f64,
    /// PRESERVE_FD through luod with `Session::preserve_many`.
    preserve: f64,
}

impl Rates {
    /// Prints the figures and their ratios.
    pub(crate) fn put(&self) {
        put("rpc_raw_roundtrip_per_s", format!("{:.0}", self.raw));
        put("rpc_raw_fd_roundtrip_per_s", format!("{:.0}", self.raw_fd));
        put(
            "rpc_raw_fd_pipelined_per_s",
            format!("{:.0}", self.raw_fd_pipelined),
        );
        put("rpc_ping_per_s", format!("{:.0}", self.ping));
        put(
            "rpc_preserve_sequential_per_s",
            format!("{:.0}", self.preserve_sequential),
        );
        put("rpc_preserve_per_s", format!("{:.0}", self.preserve));
        put("rpc_ping_vs_raw_ratio", ratio(self.ping, self.raw));
        put(
            "rpc_preserve_sequential_vs_raw_fd_ratio",
            ratio(self.preserve_sequential, self.raw_fd),
        );
        put(
            "rpc_preserve_vs_raw_fd_pipelined_ratio",
            ratio(self.preserve, self.raw_fd_pipelined),
        );
        put(
            "rpc_preserve_vs_raw_fd_ratio",
            ratio(self.preserve, self.raw_fd),
        );
        put(
            "rpc_preserve_vs_sequential_ratio",
            ratio(self.preserve, self.preserve_sequential),
        );
        put(
            "rpc_preserve_vs_ping_ratio",
            ratio(self.preserve, self.ping),
        );
    }
}

/// The `rpc` benchmark: [`measure`] against a fresh luod.
pub(crate) fn run() -> Result<()> {
    let luod = locate_luod()?;
    let limit = raise_nofile()?;
    let dir = std::env::temp_dir().join(format!("luo-bench-rpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "rpc: {} in {} (fd limit {limit}); {RPC_OPS} operations per run, best of {RATE_RUNS}",
        luod.display(),
        dir.display()
    );
    let result = Daemon::start(&luod, &dir, "rpc").and_then(|mut daemon| {
        let rates = measure(&daemon)?;
        daemon.stop()?;
        Ok(rates)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result?.put();
    Ok(())
}

/// The baselines, then the rates of one client of `daemon` (which must hold nothing).
pub(crate) fn measure(daemon: &Daemon) -> Result<Rates> {
    let raw = best_rate(|| raw_roundtrips(false, 1))?;
    let raw_fd = best_rate(|| raw_roundtrips(true, 1))?;
    let raw_fd_pipelined = best_rate(|| raw_roundtrips(true, PRESERVE_WINDOW))?;

    let control = daemon.control()?;
    let ping = best_rate(|| {
        let t0 = Instant::now();
        for _ in 0..RPC_OPS {
            control.ping()?;
        }
        Ok(RPC_OPS as f64 / t0.elapsed().as_secs_f64())
    })?;

    let device = Device::open_at(&daemon.socket)?;
    let mut round = 0;
    let mut preserve_rate = |pipelined: bool| {
        best_rate(|| {
            round += 1;
            let session = device.create_session(&format!("rpc-{round}"))?;
            let memfds = (0..RPC_OPS)
                .map(|i| memfd("luo-bench-rpc", format!("rpc-{i}").as_bytes()))
                .collect::<Result<Vec<OwnedFd>>>()?;
            let batch: Vec<(BorrowedFd<'_>, u64)> = memfds
                .iter()
                .zip(0u64..)
                .map(|(f, t)| (f.as_fd(), t))
                .collect();
            let t0 = Instant::now();
            if pipelined {
                session.preserve_many(&batch)?;
            } else {
                for &(fd, token) in &batch {
                    session.preserve(fd, token)?;
                }
            }
            let rate = RPC_OPS as f64 / t0.elapsed().as_secs_f64();
            let status = control.status()?;
            check(status.files == RPC_OPS as u64, || {
                format!("luod holds {} files, expected {RPC_OPS}", status.files)
            })?;
            drop(session);
            drop(batch);
            drop(memfds);
            // Closing the session discards it; luod sees the close asynchronously.
            let t0 = Instant::now();
            loop {
                let status = control.status()?;
                if status.files == 0 && status.sessions_outgoing == 0 {
                    break;
                }
                check(t0.elapsed() < START_TIMEOUT, || {
                    format!("luod still holds {} files after the close", status.files)
                })?;
                thread::sleep(Duration::from_millis(1));
            }
            Ok(rate)
        })
    };
    let preserve_sequential = preserve_rate(false)?;
    let preserve = preserve_rate(true)?;
    Ok(Rates {
        raw,
        raw_fd,
        raw_fd_pipelined,
        ping,
        preserve_sequential,
        preserve,
    })
}

/// Round trips per second over a bare `SOCK_SEQPACKET` socket pair to an echo thread, with
/// luod's framing helpers; with `with_fd`, one descriptor rides on each request as on
/// PRESERVE_FD; up to `window` requests are in flight, as in `Session::preserve_many`. The
/// floor under any luod request on this machine.
fn raw_roundtrips(with_fd: bool, window: usize) -> Result<f64> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let echo = thread::spawn(move || -> std::result::Result<(), String> {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            match transport::recv_into(theirs.as_fd(), &mut buf, true) {
                Ok(Recv::Message(m)) => {
                    drop(m.fds);
                    transport::send(theirs.as_fd(), &buf[..m.len], &[])
                        .map_err(|e| e.to_string())?;
                }
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let file = memfd("luo-bench-raw", b"raw")?;
    let attached = [file.as_fd()];
    let fds: &[_] = if with_fd { &attached } else { &[] };
    let request = [0u8; 32];
    let mut buf = [0u8; MAX_MESSAGE];
    let mut receive = || -> Result<()> {
        match transport::recv_into(ours.as_fd(), &mut buf, true)? {
            Recv::Message(m) => check(buf[..m.len] == request, || "echo garbled".into()),
            _ => Err("The echo thread hung up".into()),
        }
    };
    let t0 = Instant::now();
    let mut in_flight = 0;
    for _ in 0..RPC_OPS {
        if in_flight == window {
            receive()?;
            in_flight -= 1;
        }
        transport::send(ours.as_fd(), &request, fds)?;
        in_flight += 1;
    }
    for _ in 0..in_flight {
        receive()?;
    }
    let rate = RPC_OPS as f64 / t0.elapsed().as_secs_f64();
    drop(ours);
    echo.join()
        .map_err(|_| "the echo thread panicked")?
        .map_err(|e| format!("echo: {e}"))?;
    Ok(rate)
}

/// The best of [`RATE_RUNS`] rates.
fn best_rate(mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = 0.0f64;
    for _ in 0..RATE_RUNS {
        best = best.max(f()?);
    }
    Ok(best)
}
