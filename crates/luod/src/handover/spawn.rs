//! Starting a successor: fork, inherit exactly the listed descriptors, exec.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use luo_client::transport::{self, Recv};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tracing::info;

/// A started successor process, which this server may still have to stop and reap. Its
/// parent is this server; once this server exits it is reparented.
#[derive(Debug)]
pub struct Successor {
    pid: rustix::process::Pid,
}

impl Successor {
    pub(crate) fn kill(&self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
    }

    /// Waits for it to exit and says how it did.
    pub(crate) fn wait(&self) -> String {
        loop {
            match rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => return describe(status),
                Ok(None) => return String::new(),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return format!("cannot wait for it: {e}"),
            }
        }
    }

    /// Reaps it if it has exited; true once it is gone.
    pub fn try_reap(&self) -> bool {
        !matches!(
            rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::NOHANG),
            Ok(None)
        )
    }
}

pub(crate) fn describe(status: rustix::process::WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exit status: {code}")
    } else if let Some(sig) = status.terminating_signal() {
        format!("signal: {sig}")
    } else {
        format!("wait status {:#x}", status.as_raw())
    }
}

/// First bytes of the message a child whose exec failed leaves on the channel, followed by
/// the errno (4 bytes, little endian).
pub(crate) const EXEC_FAILED: &[u8] = b"EXEC-FAILED ";

/// The error for a successor's message other than "READY".
pub(crate) fn refusal(binary: &Path, bytes: &[u8]) -> anyhow::Error {
    if let Some(errno) = bytes
        .strip_prefix(EXEC_FAILED)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    {
        let e = std::io::Error::from_raw_os_error(i32::from_le_bytes(errno));
        return anyhow!("Cannot start {}: {e}", binary.display());
    }
    anyhow!(
        "The new server refused the image: {}",
        String::from_utf8_lossy(bytes)
    )
}

/// Starts `binary --takeover` with `fds` inherited and tells it where the image is. Returns
/// right after the fork: this server does not wait for the child's exec (the child clears
/// close-on-exec on one descriptor after another, which takes milliseconds with thousands of
/// them); a failed exec is reported on the channel.
pub(crate) fn spawn_successor(
    binary: &Path,
    image: &[u8],
    fds: &[BorrowedFd<'_>],
) -> anyhow::Result<(Successor, OwnedFd)> {
    use std::os::unix::ffi::OsStrExt;
    let memfd = rustix::fs::memfd_create(
        "luod-image",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(image)?;
    let memfd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let devnull = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut inherit: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    inherit.push(memfd.as_raw_fd());
    inherit.push(theirs.as_raw_fd());
    // Everything the child needs is made before the fork: it allocates nothing.
    let path = std::ffi::CString::new(binary.as_os_str().as_bytes())
        .with_context(|| format!("Cannot start {}: NUL in the path", binary.display()))?;
    let channel_arg = std::ffi::CString::new(theirs.as_raw_fd().to_string())?;
    // The successor carries the keeper's argv[0] on, as every luod process does.
    let argv0 = std::ffi::CString::new(crate::keeper::argv0().into_encoded_bytes())
        .context("Cannot start the successor: NUL in argv[0]")?;
    let argv = [
        argv0.as_ptr(),
        c"--takeover".as_ptr(),
        channel_arg.as_ptr(),
        std::ptr::null(),
    ];
    let (theirs_raw, devnull_raw) = (theirs.as_raw_fd(), devnull.as_raw_fd());
    let t_spawn = Instant::now();
    // SAFETY: luod is single-threaded, so the child is a full copy with no lock held by another
    // thread. The child only makes system calls (fcntl, dup2, execv, send, _exit: all
    // async-signal-safe) on descriptor numbers open in it (it inherited the whole table) and
    // on memory prepared above, and leaves with execv or _exit, never returning into Rust.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; this is the child, which never returns from this block.
        unsafe {
            let mut failed = 0;
            for &raw in &inherit {
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    failed = *libc::__errno_location();
                }
            }
            if failed == 0 && libc::dup2(devnull_raw, 0) == 0 {
                libc::execv(path.as_ptr(), argv.as_ptr());
                failed = *libc::__errno_location();
            }
            let mut msg = [0u8; EXEC_FAILED.len() + 4];
            msg[..EXEC_FAILED.len()].copy_from_slice(EXEC_FAILED);
            msg[EXEC_FAILED.len()..].copy_from_slice(&failed.to_le_bytes());
            libc::send(
                theirs_raw,
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            );
            libc::_exit(127);
        }
    }
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| {
        anyhow!(
            "Cannot start {}: {}",
            binary.display(),
            std::io::Error::last_os_error()
        )
    })?;
    let child = Successor { pid };
    info!(
        ms = t_spawn.elapsed().as_secs_f64() * 1e3,
        "successor forked"
    );
    drop((theirs, devnull));
    let header = format!("IMAGE {}", memfd.as_raw_fd());
    if let Err(e) = transport::send(ours.as_fd(), header.as_bytes(), &[]) {
        // Usually the new binary already exited (EPIPE). If it said why before exiting, that
        // is the answer; otherwise report how it exited, as when it exits later.
        child.kill();
        let status = child.wait();
        if let Ok(Recv::Message(m)) = transport::recv(ours.as_fd(), false) {
            return Err(refusal(binary, &m.bytes));
        }
        bail!("The new server exited before confirming ({status}; {e})");
    }
    Ok((child, ours))
}

/// Waits up to `timeout` for the successor's verdict on `channel`: the channel back on
/// "READY", the reason otherwise.
pub(crate) fn await_verdict(
    binary: &Path,
    child: Successor,
    ours: OwnedFd,
    timeout: std::time::Duration,
) -> anyhow::Result<OwnedFd> {
    let mut pfd = [rustix::event::PollFd::new(
        &ours,
        rustix::event::PollFlags::IN,
    )];
    // A signal interrupts the wait (EINTR): wait again for what is left, since an interrupted
    // poll is not a timeout.
    let deadline = std::time::Instant::now() + timeout;
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let limit = rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut pfd, Some(&limit)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.unwrap_or(0),
        }
    };
    if ready == 0 {
        child.kill();
        child.wait();
        bail!(
            "The new server did not confirm within {} s",
            timeout.as_secs()
        );
    }
    match transport::recv(ours.as_fd(), true) {
        // Reaped by whoever adopts it once this server exits; never waited for here.
        Ok(Recv::Message(m)) if m.bytes == b"READY" => Ok(ours),
        Ok(Recv::Message(m)) => {
            child.wait();
            Err(refusal(binary, &m.bytes))
        }
        _ => {
            let status = child.wait();
            bail!("The new server exited before confirming ({status})")
        }
    }
}
