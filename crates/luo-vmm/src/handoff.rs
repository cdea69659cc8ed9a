//! How a VM crosses luod, and what a VMM and its successor say to each other.
//!
//! **Session layout.** A running VMM keeps one outgoing session (named by the operator) with
//! three files, preserved at boot so that an upgrade only has to freeze them:
//!
//! | token | file | luod handler |
//! |---|---|---|
//! | [`RAM_TOKEN`] (1) | guest RAM (memfd or hugetlb memfd) | `memfd-v1` / `memfd-hugetlb-v1`: held, never copied |
//! | [`DESCRIPTOR_TOKEN`] (2) | the guest memory descriptor | `guestmem-v1`: validated and recorded at freeze |
//! | [`STATE_TOKEN`] (3) | the state memfd ([`VmState`]) | `memfd-v1`: size recorded at freeze |
//!
//! A live migrate ([`migrate`](crate::migrate)) swaps RAM and descriptor for the new memory's
//! under the same tokens (`Session::replace`, luod's `REPLACE_FD`), so the layout never changes.
//!
//! **Handshake.** The predecessor starts its successor with one end of a `SOCK_SEQPACKET`
//! socket pair and they exchange one-line messages:
//!
//! ```text
//!  successor                              predecessor (guest running)
//!  prepare VM + vCPU, open luod device
//!  READY  ------------------------------>
//!                                         stop vCPU, save state, handoff session
//!         <------------------------------ GO <stamps>      (or ABORT <why>: keeps running)
//!  retrieve session + files, map RAM,
//!  restore state, run until first step
//!  RESUMED <report> -------------------->
//!                                         forward the report, exit
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use luo_client::{Device, Session};
use luo_guestmem::GuestMemory;
use rustix::fs::MemfdFlags;

use crate::error::Error;
use crate::state::{self, VmState};

/// Token of the guest RAM file.
pub const RAM_TOKEN: u64 = 1;
/// Token of the guest memory descriptor.
pub const DESCRIPTOR_TOKEN: u64 = 2;
/// Token of the state memfd.
pub const STATE_TOKEN: u64 = 3;
/// The longest handshake message.
const MAX_MESSAGE: usize = 4096;

/// An outgoing session holding a VM's three files.
#[derive(Debug)]
pub struct Outgoing {
    /// The session.
    pub session: Session,
    /// The state memfd (written at an upgrade).
    pub state: OwnedFd,
}

/// Creates session `name` and preserves guest RAM, descriptor and an empty state memfd. The
/// descriptor must already record [`RAM_TOKEN`] (`GuestMemory::set_ram_token`).
pub fn preserve(
    device: &Device,
    name: &str,
    ram: BorrowedFd<'_>,
    descriptor: BorrowedFd<'_>,
) -> Result<Outgoing, Error> {
    let session = device.create_session(name)?;
    let state = rustix::fs::memfd_create("luo-vmm-state", MemfdFlags::CLOEXEC)
        .map_err(Error::sys("memfd_create"))?;
    session.preserve(ram, RAM_TOKEN)?;
    session.preserve(descriptor, DESCRIPTOR_TOKEN)?;
    session.preserve(&state, STATE_TOKEN)?;
    Ok(Outgoing { session, state })
}

/// Writes the state memfd.
pub fn write_state(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<(), Error> {
    rustix::fs::ftruncate(fd, bytes.len() as u64).map_err(Error::sys("ftruncate"))?;
    let mut done = 0;
    while done < bytes.len() {
        done +=
            rustix::io::pwrite(fd, &bytes[done..], done as u64).map_err(Error::sys("pwrite"))?;
    }
    Ok(())
}

fn read_state(fd: BorrowedFd<'_>) -> Result<VmState, Error> {
    let st = rustix::fs::fstat(fd).map_err(Error::sys("fstat"))?;
    let len = usize::try_from(st.st_size).map_err(|_| Error::State("length"))?;
    if len > state::MAX_LEN {
        return Err(Error::State("length"));
    }
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n =
            rustix::io::pread(fd, &mut buf[done..], done as u64).map_err(Error::sys("pread"))?;
        if n == 0 {
            return Err(Error::State("length"));
        }
        done += n;
    }
    VmState::decode(&buf)
}

/// What a successor gets back from luod.
#[derive(Debug)]
pub struct Incoming {
    /// The incoming session (finish it once running).
    pub session: Session,
    /// Guest memory, rebuilt on the same RAM.
    pub mem: GuestMemory,
    /// The saved VM state.
    pub state: VmState,
}

/// Retrieves session `name` and rebuilds guest memory and state from it.
pub fn retrieve(device: &Device, name: &str) -> Result<Incoming, Error> {
    let session = device.retrieve_session(name)?;
    let desc = session.retrieve(DESCRIPTOR_TOKEN)?;
    let d = luo_guestmem::Descriptor::read(desc.as_fd())?;
    let ram = session.retrieve(d.ram_token.unwrap_or(RAM_TOKEN))?;
    let state_fd = session.retrieve(STATE_TOKEN)?;
    let mem = GuestMemory::open(ram, desc.as_fd())?;
    let state = read_state(state_fd.as_fd())?;
    Ok(Incoming {
        session,
        mem,
        state,
    })
}

/// A connected pair for the handshake: (ours, the child's).
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(Error::sys("socketpair"))
}

/// Sends one message.
pub fn send(sock: BorrowedFd<'_>, msg: &str) -> Result<(), Error> {
    rustix::net::send(sock, msg.as_bytes(), rustix::net::SendFlags::NOSIGNAL)
        .map_err(Error::sys("send"))?;
    Ok(())
}

/// Receives one message within `timeout`.
pub fn recv(sock: BorrowedFd<'_>, timeout: Duration) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Handoff("timed out".into()));
        }
        let mut fds = [rustix::event::PollFd::new(
            &sock,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(Error::sys("poll")(e)),
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = match rustix::net::recv(sock, &mut buf, rustix::net::RecvFlags::empty()) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(Error::sys("recv")(e)),
        };
        if n == 0 {
            return Err(Error::Handoff("the other VMM went away".into()));
        }
        buf.truncate(n);
        return String::from_utf8(buf).map_err(|_| Error::Handoff("message is not UTF-8".into()));
    }
}

/// The value of `key` in a `key=value ...` message.
pub fn field(msg: &str, key: &str) -> Option<u64> {
    msg.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Takes ownership of the handshake descriptor a predecessor passed by number, and marks it
/// close-on-exec.
pub fn adopt(fd: i32) -> Result<OwnedFd, Error> {
    if fd < 3 {
        return Err(Error::Handoff(format!("bad handshake descriptor {fd}")));
    }
    // SAFETY: the predecessor started this process with `fd` open, as the other end of its
    // handshake socket pair, and nothing else in this process owns or closes that number; it is
    // checked to be a socket before use.
    #[allow(unsafe_code)]
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let st = rustix::fs::fstat(&owned).map_err(Error::sys("fstat handshake descriptor"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(Error::Handoff(format!("descriptor {fd} is not a socket")));
    }
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(Error::sys("F_SETFD"))?;
    Ok(owned)
}
