//! The holder: a process that shares the server's descriptor table, so that the table outlives
//! the server, and starts a new server from it on command.
//!
//! # Why
//!
//! Every descriptor luod preserves lives in the server's descriptor table. If the server dies
//! (SIGKILL, OOM, a panic), the table dies with it, and so does everything preserved. Streaming
//! every descriptor to the keeper as it arrives would work but costs a message per descriptor
//! and a second copy of the bookkeeping. The holder costs nothing per descriptor: it is a
//! process created by `clone(CLONE_FILES)` without exec, so the server and the holder use *one*
//! table. Every descriptor the server opens, receives or closes is opened, received or closed in
//! the holder too, at the same number, at the same moment. The holder does nothing but wait on
//! its control channel; when the server dies, the table lives on in the holder.
//!
//! ```text
//!           keeper (supervisor; its pid never changes)
//!           |  holds: HolderControl (the keeper's end of the control channel)
//!           |
//!   fork +--+-------------------------------------+ clone(CLONE_FILES|CLONE_PARENT), no exec
//!        |                                        |
//!      server  ========= one descriptor table ==== holder ("luod-holder")
//!      (does the work)   memfds, sockets, ...      blocks in recv on the holder's end,
//!                        the holder's end (number   answers ping / start / exit
//!                        N, owned by the holder)
//!
//!  server dies: the table stays, held by the holder.
//!  keeper -> holder "start": clone(CLONE_VM|CLONE_VFORK|CLONE_PARENT) (a copy of the table);
//!    the child clears close-on-exec on the table's descriptors and execs the prepared argv and
//!    envp: the new server finds every descriptor under its old number.
//!  new server crashes at start-up: the holder still has the table; "start" again (crash loop).
//!  new server is up and has its own holder: keeper -> old holder "exit".
//! ```
//!
//! # The principal types
//!
//! - [`HolderConfig`]: what a `start` execs (program, argv, envp, prepared before the clone),
//!   whether the holder and the servers it starts are children of the server's parent
//!   ([`HolderConfig::clone_parent`]), and which descriptors cross the exec ([`Inherit`]).
//! - [`Holder`]: the server's handle, returned by [`Holder::spawn`]: the holder's pid and the
//!   number of the holder's end of the control channel in the shared table.
//! - [`HolderControl`]: the keeper's end of the control channel, with [`HolderControl::ping`],
//!   [`HolderControl::start`] and [`HolderControl::exit`]; [`channel`] makes a pair.
//! - [`Request`] and [`Reply`]: the control channel's messages, a contract (below).
//!
//! ```
//! use std::path::Path;
//! use luo_sys::holder::{self, Holder, HolderConfig};
//!
//! // The keeper makes the channel, keeps its end, and gives the server the holder's end.
//! let (mut control, holder_end) = holder::channel()?;
//!
//! // The server, right after it starts: prepare what a `start` execs, then spawn the holder.
//! let mut config = HolderConfig::new(Path::new("/bin/true"))?;
//! config.clone_parent = false; // This example has no keeper: keep the holder our child.
//! let holder = Holder::spawn(&config, holder_end)?;
//! let memfd = rustix::fs::memfd_create("state", rustix::fs::MemfdFlags::CLOEXEC)?;
//! // `memfd` is in the holder's table too, under the same number, without being sent.
//!
//! // The keeper, after the server died (or whenever it wants a new server):
//! assert_eq!(control.ping()?, holder.pid());
//! let new_server = control.start()?; // /bin/true, with `memfd` inherited
//! # let _ = (new_server, memfd);
//! control.exit()?;
//! rustix::process::waitpid(Some(holder.pid()), rustix::process::WaitOptions::empty())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Who owns which end of the control channel
//!
//! The control channel is an `AF_UNIX` `SOCK_SEQPACKET` pair. One end (the *holder's end*) must
//! be in the shared table, since the holder has no other table. The other end (the *keeper's
//! end*) must **not** stay in the shared table: the holder exits when the keeper's end hangs up
//! (the keeper is gone, so nobody can ever command it again), and a keeper's end that is also in
//! the shared table never hangs up, because the holder itself keeps it open.
//!
//! So the keeper makes the pair with [`channel`], keeps its end (created close-on-exec, it never
//! reaches a server), and gives the server only the holder's end: inherited at a number passed
//! in the server's argv, or sent by `SCM_RIGHTS`. The server passes it to [`Holder::spawn`],
//! which gives it to the holder: from then on the number ([`Holder::channel_fd`]) belongs to the
//! holder, and the server must never close it or `dup2` onto it; `spawn` sets close-on-exec on
//! it, so that no exec of the server's (an upgrade's successor) carries it. If the server has to
//! make the pair itself, it calls [`channel`], spawns the holder, sends the [`HolderControl`]'s
//! descriptor to the keeper ([`HolderControl::into_fd`], then `SCM_RIGHTS`) and closes it; a
//! server that dies between the spawn and that close leaves a holder that outlives its keeper
//! (nothing is lost, but the holder stays until it is killed), which is why the keeper-made pair
//! is the recommended order.
//!
//! A new server started by a holder inherits a *copy* of the table, not the table: it spawns a
//! holder of its own, with a new channel (the keeper makes one and sends the holder's end over
//! whatever connection the new server has to it, typically one inherited from the old server),
//! and once that holder answers, the keeper tells the old one to exit. Until then the old holder
//! keeps the table as it was when the old server died, so a new server that crashes at start-up
//! can be started again.
//!
//! The holder ends when:
//! - it is told [`exit`](HolderControl::exit): it answers, then exits with status 0;
//! - the keeper's end hangs up (EOF, or the keeper shut it down for writing): status 0. A crashed
//!   server does not end it: the server never holds the keeper's end;
//! - its own end is lost: before each receive the holder checks that its number still names the
//!   socket it was given (device and inode); if the server closed it, or closed it and opened
//!   something else under the number, the holder exits with status [`EXIT_CHANNEL_LOST`], since
//!   nobody can command it any more;
//! - a signal kills it: it runs no handler (every disposition is reset to the default and the
//!   mask emptied as it starts, so no handler inherited from the server ever runs in it), so
//!   SIGTERM, SIGINT or SIGHUP end it like SIGKILL does.
//!
//! The table is released when the last process sharing it (server or holder) goes.
//!
//! The sharing lasts as long as the server keeps its table: an `execve` of the server itself
//! (in place, not after a fork), `unshare(CLONE_FILES)` or `close_range(CLOSE_RANGE_UNSHARE)`
//! gives the server a private copy, and from then on the holder keeps the table as it was. A
//! fork of the server copies the table too, which is what an upgrade's successor wants; the
//! holder still shares the (old) server's.
//!
//! # `CLONE_PARENT`
//!
//! With [`HolderConfig::clone_parent`] (the default) the holder is made with `CLONE_PARENT`:
//! it is a child of the server's parent, the keeper, so the keeper learns of its death
//! (SIGCHLD) and reaps it, and it stays the keeper's child when the server dies. The servers it
//! starts are made with `CLONE_PARENT` too, so every server, first or restarted, is the
//! keeper's child and the keeper waits for it as for the first one (and reaps a child whose
//! exec failed: [`HolderError::Exec`] carries its pid). `CLONE_PARENT` is refused (`EINVAL`)
//! when the server is the init of a pid namespace; without it the holder is the server's child
//! (reparented to the nearest subreaper when the server dies), the servers it starts are its
//! own children, and it reaps them itself (`SA_NOCLDWAIT`), so the keeper must watch them with
//! a pidfd.
//!
//! # What a new server inherits
//!
//! `start` runs, in a child made with `clone(CLONE_VM | CLONE_VFORK [| CLONE_PARENT])`:
//! `CLONE_VM` so nothing of the holder's memory is copied (no page tables, whatever the server's
//! size was), `CLONE_VFORK` so the holder waits until the child has exec'd or failed, without
//! `CLONE_FILES` so the child works on a *copy* of the table. The child
//!
//! 1. makes close-on-exec say what [`Inherit`] selects, in its own copy of the table: with
//!    [`Inherit::All`], one `fcntl(F_SETFD)` on every number below the table's size (`FDSize`
//!    in `/proc/self/status`; `RLIMIT_NOFILE`'s soft limit, capped at 2^20, when `/proc`
//!    cannot be read), clearing the flag except on the listed numbers and the holder's end,
//!    where it sets it; with [`Inherit::Only`], one `close_range(CLOSE_RANGE_CLOEXEC)` over the
//!    whole table, then one `fcntl` clearing it on 0, 1, 2 and each listed number. Numbers that
//!    are not open are skipped. No allocation, no directory walk;
//! 2. execs the prepared program with the prepared argv and envp, to which the holder appends
//!    [`PID_ENV`]`=<the holder's pid>`: that is how a new server finds the holder of its
//!    predecessor (any `PID_ENV` entry of the configured envp is dropped first).
//!
//! The new server starts with every signal at its default disposition and none blocked, the
//! working directory and umask the server had when it spawned the holder. The holder's end is
//! never inherited. If the exec fails, the child records the step and errno in memory it shares
//! with the holder (`CLONE_VM`), exits with 127, and the holder answers the failure; a pipe is
//! not needed, so a `start` creates no descriptor in the shared table.
//!
//! **Cost.** Measured by `tests/holder.rs` (`start_with_17000_descriptors`, which prints the
//! figures; `cargo test -p luo-sys --test holder start_with -- --nocapture`) on a 2-core VM
//! (Linux 6.18) shared with other builds (load average 4 to 5): the time from sending `start`
//! to its reply, which the holder sends once the exec has succeeded, median (best) of 5 starts
//! of the same table, over 5 runs:
//!
//! | table                                   | release build           | debug build            |
//! |-----------------------------------------|-------------------------|------------------------|
//! | 9 descriptors (table size 256)          | 1.1-4.5 ms (0.1-2.7 ms) | 0.3-2.6 ms (0.2-1.5 ms)|
//! | 17,009 descriptors (table size 32,768)  | 3.8-8.4 ms (3.4-4.3 ms) | 7-14 ms (6.5-11 ms)    |
//!
//! Below a millisecond the figures are mostly the machine's noise. The difference is the
//! `fcntl` loop: about 0.1 µs per slot of the table, open or not (a C
//! loop of 32,768 `fcntl(F_SETFD)` took 3 to 12 ms on the same machine). The new server's own
//! start-up comes on top (the test also prints the time until the new process has sent its
//! first message: 5-15 ms in release with 17,009 descriptors, its test harness's start-up
//! included). Walking `/proc/self/fd` instead was measured at 27-150 ms for the same table
//! (procfs instantiates an entry per descriptor), so it is not used.
//!
//! # Memory
//!
//! The holder is a copy-on-write copy of the server at the moment of the spawn: the pages the
//! server later writes are copied, so the holder costs up to the server's private memory at that
//! moment, and it keeps every mapping the server had (a memory file mapped at that moment stays
//! mapped, and allocated, as long as the holder lives). Spawn it early, before mapping anything.
//! Everything the holder and the child use is allocated before the clone ([`Holder::spawn`]):
//! the child of a multithreaded process may only make async-signal-safe calls, so both make
//! system calls and nothing else.
//!
//! # The control channel's messages (a contract)
//!
//! The keeper's binary may be older or newer than the server's (the keeper is never replaced;
//! the holder runs the server's code), so the messages are a contract: one request and one reply
//! per `SOCK_SEQPACKET` packet, little-endian, exactly these sizes.
//!
//! ```text
//! Request (16 bytes)                     Reply (32 bytes)
//!  0  size   u32  16                      0  size   u32  32
//!  4  magic  u32  HOLDER_MAGIC            4  magic  u32  HOLDER_MAGIC
//!  8  op     u32  OP_PING|OP_START|OP_EXIT 8  op     u32  the request's op
//! 12  seq    u32  chosen by the keeper   12  seq    u32  the request's seq
//!                                        16  step   u32  STEP_OK or the step that failed
//!                                        20  errno  u32  0, or the errno of that step
//!                                        24  pid    u32  OP_START: the new server (also when
//!                                                        its exec failed); else the holder
//!                                        28  zero   u32  0
//! ```
//!
//! A request whose size field is not the packet's length, or is under 16, or whose magic is
//! wrong, is refused with [`STEP_REQUEST`] and `EINVAL`; a longer request whose bytes past 16 are
//! not all zero, or one longer than 64 bytes, with `E2BIG` (a longer request with a zero tail is
//! read as its first 16 bytes); an unknown op with `EOPNOTSUPP`. The keeper drops a reply whose
//! `seq` is not the one it is waiting for (the late answer to a request it gave up on). Changing
//! any of this bumps [`HOLDER_MAGIC`].

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::io::{Errno, FdFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::Pid;
use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[cfg(target_arch = "s390x")]
compile_error!("the raw clone below passes the flags first, which s390x does not");

/// The environment variable the holder adds to a new server's environment: its own pid, in
/// decimal. A server that finds it was started by a holder, and knows which one.
pub const PID_ENV: &str = "LUO_HOLDER_PID";

/// The control protocol's magic, `"LUH1"`; the digit is the version. Changing [`Request`] or
/// [`Reply`], an op or a step bumps it.
pub const HOLDER_MAGIC: u32 = u32::from_le_bytes(*b"LUH1");

/// Answer with the holder's pid; nothing else. For a keeper that received the control channel
/// by `SCM_RIGHTS` and wants to know whom it controls.
pub const OP_PING: u32 = 1;
/// Start a new server from the table; the reply carries its pid.
pub const OP_START: u32 = 2;
/// Answer, then exit with status 0.
pub const OP_EXIT: u32 = 3;

/// The request succeeded.
pub const STEP_OK: u32 = 0;
/// The request was malformed or unknown; nothing was done.
pub const STEP_REQUEST: u32 = 1;
/// Creating the new server's process failed (`EAGAIN`, `ENOMEM`…); nothing was started.
pub const STEP_CLONE: u32 = 2;
/// The new server's process failed to clear close-on-exec, or died, before its exec (`ECHILD`).
pub const STEP_INHERIT: u32 = 3;
/// The new server's exec failed (`ENOENT`, `EACCES`, `E2BIG`…); its process exited with 127.
pub const STEP_EXEC: u32 = 4;

/// The holder's exit status when its end of the control channel is gone (closed by the server,
/// or its number reused), or cannot be read.
pub const EXIT_CHANNEL_LOST: i32 = 2;

/// The longest packet either side reads; anything longer is refused.
const MAX_MESSAGE: usize = 64;
/// The new server's process runs on this stack between the clone and the exec.
const CHILD_STACK_LEN: usize = 256 * 1024;
/// The highest table size assumed when `/proc` cannot be read and `RLIMIT_NOFILE` is unlimited.
const FALLBACK_FD_BOUND: u64 = 1 << 20;
/// How long [`HolderControl`] waits for a reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The holder's name (`comm`), as `ps` shows it.
const HOLDER_NAME: &std::ffi::CStr = c"luod-holder";

/// A request from the keeper to the holder. Layout in the module docs. Changing this bumps
/// [`HOLDER_MAGIC`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Request {
    /// The size of this struct: 16.
    pub size: U32,
    /// [`HOLDER_MAGIC`].
    pub magic: U32,
    /// [`OP_PING`], [`OP_START`] or [`OP_EXIT`].
    pub op: U32,
    /// Any number; the reply carries it back.
    pub seq: U32,
}
const _: () = assert!(size_of::<Request>() == 16);

/// The holder's answer to one [`Request`]. Layout in the module docs. Changing this bumps
/// [`HOLDER_MAGIC`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Reply {
    /// The size of this struct: 32.
    pub size: U32,
    /// [`HOLDER_MAGIC`].
    pub magic: U32,
    /// The request's op (0 if the request was too short to have one).
    pub op: U32,
    /// The request's seq (0 if the request was too short to have one).
    pub seq: U32,
    /// [`STEP_OK`], or the step that failed: [`STEP_REQUEST`], [`STEP_CLONE`],
    /// [`STEP_INHERIT`], [`STEP_EXEC`].
    pub step: U32,
    /// 0, or the errno of the failed step.
    pub errno: U32,
    /// For [`OP_START`], the new server's pid (0 if `step` is [`STEP_CLONE`]); otherwise the
    /// holder's pid.
    pub pid: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<Reply>() == 32);

impl Request {
    /// A request for `op`, numbered `seq`.
    pub fn new(op: u32, seq: u32) -> Request {
        Request {
            size: U32::new(size_of::<Request>() as u32),
            magic: U32::new(HOLDER_MAGIC),
            op: U32::new(op),
            seq: U32::new(seq),
        }
    }

    /// Reads the request in `packet` (one whole packet), or says why it is refused: the reply
    /// to send back, with [`STEP_REQUEST`] and the errno. Allocates nothing and never panics:
    /// the holder runs it.
    pub fn parse(packet: &[u8]) -> Result<Request, Reply> {
        let Ok((req, tail)) = Request::read_from_prefix(packet) else {
            return Err(Reply::refusal(0, 0, Errno::INVAL));
        };
        let (op, seq) = (req.op.get(), req.seq.get());
        if req.magic.get() != HOLDER_MAGIC {
            return Err(Reply::refusal(op, seq, Errno::INVAL));
        }
        if packet.len() > MAX_MESSAGE {
            return Err(Reply::refusal(op, seq, Errno::TOOBIG));
        }
        if req.size.get() as usize != packet.len() {
            return Err(Reply::refusal(op, seq, Errno::INVAL));
        }
        if tail.iter().any(|&b| b != 0) {
            return Err(Reply::refusal(op, seq, Errno::TOOBIG));
        }
        if !matches!(op, OP_PING | OP_START | OP_EXIT) {
            return Err(Reply::refusal(op, seq, Errno::OPNOTSUPP));
        }
        Ok(req)
    }

    /// The refusal of a packet longer than [`MAX_MESSAGE`], of which `prefix` was read.
    fn oversized(prefix: &[u8]) -> Reply {
        let (op, seq) = Request::read_from_prefix(prefix)
            .map(|(r, _)| (r.op.get(), r.seq.get()))
            .unwrap_or((0, 0));
        Reply::refusal(op, seq, Errno::TOOBIG)
    }
}

impl Reply {
    fn new(op: u32, seq: u32, step: u32, errno: u32, pid: u32) -> Reply {
        Reply {
            size: U32::new(size_of::<Reply>() as u32),
            magic: U32::new(HOLDER_MAGIC),
            op: U32::new(op),
            seq: U32::new(seq),
            step: U32::new(step),
            errno: U32::new(errno),
            pid: U32::new(pid),
            reserved: U32::new(0),
        }
    }

    fn refusal(op: u32, seq: u32, errno: Errno) -> Reply {
        Reply::new(op, seq, STEP_REQUEST, errno.raw_os_error() as u32, 0)
    }

    /// Reads the reply in `packet` (one whole packet), or `None` if it is not one: too short,
    /// wrong magic, a size field that is not the packet's length, or a non-zero tail.
    pub fn parse(packet: &[u8]) -> Option<Reply> {
        let (reply, tail) = Reply::read_from_prefix(packet).ok()?;
        let ok = reply.magic.get() == HOLDER_MAGIC
            && reply.size.get() as usize == packet.len()
            && reply.reserved.get() == 0
            && tail.iter().all(|&b| b == 0);
        ok.then_some(reply)
    }
}

/// Which descriptors of the table a new server inherits. Exactly these cross the exec, whatever
/// their close-on-exec flag is in the table: the new server's process sets or clears the flag on
/// each (in its own copy of the table; the shared one is not touched). Numbers that are not open
/// when the new server starts are skipped. The holder's end of the control channel never
/// crosses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inherit {
    /// Every open descriptor except these numbers.
    All {
        /// Numbers that are not inherited.
        except: Vec<RawFd>,
    },
    /// Standard input, output and error (0, 1, 2) and these numbers, nothing else. May not
    /// include the holder's end of the control channel.
    Only(Vec<RawFd>),
}

/// What a holder starts, and how. Everything here is turned into C strings and pointer arrays
/// by [`Holder::spawn`], before the clone, and fixed from then on: the holder's memory is a copy
/// of the server's at that moment, so a later change in the server cannot reach it.
#[derive(Clone, Debug)]
pub struct HolderConfig {
    /// The program to exec (`execve`'s path: not searched in `PATH`).
    pub program: CString,
    /// Its argv, argv\[0\] included; at least one entry.
    pub argv: Vec<CString>,
    /// Its environment, `NAME=value` entries. The holder appends [`PID_ENV`].
    pub envp: Vec<CString>,
    /// Make the holder, and every server it starts, a child of the server's parent (the keeper)
    /// with `CLONE_PARENT`; see the module docs.
    pub clone_parent: bool,
    /// Which descriptors cross the exec.
    pub inherit: Inherit,
}

impl HolderConfig {
    /// Starts `program` with argv `[program]`, this process's environment, `CLONE_PARENT`, and
    /// every descriptor inherited.
    pub fn new(program: &Path) -> io::Result<HolderConfig> {
        let program = CString::new(program.as_os_str().as_bytes())
            .map_err(|_| invalid("NUL in the program's path"))?;
        let envp = std::env::vars_os()
            .map(|(name, value)| {
                let mut entry = name.into_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                CString::new(entry).map_err(|_| invalid("NUL in an environment variable"))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(HolderConfig {
            argv: vec![program.clone()],
            program,
            envp,
            clone_parent: true,
            inherit: Inherit::All { except: Vec::new() },
        })
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// The server's handle on its holder. Dropping it does nothing: the holder lives on, which is
/// its purpose. It ends as the module docs say.
#[derive(Debug)]
pub struct Holder {
    pid: Pid,
    channel: RawFd,
}

impl Holder {
    /// Creates the holder: a process that shares this process's descriptor table and answers
    /// requests on `channel`, the holder's end of an `AF_UNIX` `SOCK_SEQPACKET` pair (see
    /// [`channel`]). From now on `channel`'s number ([`Holder::channel_fd`]) belongs to the
    /// holder: this process must not close it.
    ///
    /// Fails with `EINVAL` if `channel` is not such a socket, the argv is empty, a listed number
    /// is negative, or [`Inherit::Only`] lists the channel; with the clone's errno otherwise
    /// (`EINVAL` for `CLONE_PARENT` in a namespace's init). On failure `channel` is closed.
    pub fn spawn(config: &HolderConfig, channel: OwnedFd) -> io::Result<Holder> {
        if rustix::net::sockopt::socket_domain(&channel)? != AddressFamily::UNIX
            || rustix::net::sockopt::socket_type(&channel)? != SocketType::SEQPACKET
        {
            return Err(invalid(
                "the holder's channel is not a Unix SOCK_SEQPACKET socket",
            ));
        }
        // The holder never execs, but the server may (an upgrade's successor): the holder's end
        // must not leak into it, even if it reached the server through an exec.
        rustix::io::fcntl_setfd(&channel, FdFlags::CLOEXEC)?;
        let st = rustix::fs::fstat(&channel)?;
        let mut prepared = Prepared::new(config, channel.as_raw_fd(), identity(&st))?;
        let flags = libc::CLONE_FILES
            | libc::SIGCHLD
            | if config.clone_parent {
                libc::CLONE_PARENT
            } else {
                0
            };
        // Block every signal in this thread across the clone (glibc's own two included, hence
        // the raw call), so that no handler of this process runs in the holder before the
        // holder has reset them all.
        let old = set_signal_mask(u64::MAX);
        // SAFETY: a raw clone with no new stack returns twice, like fork: in this process with
        // the child's pid, in the child with 0, on a copy of this memory (no CLONE_VM). Every
        // argument but the flags is 0 (no stack, no tid pointers, no TLS), so the argument
        // order, which differs between architectures, does not matter on those that take the
        // flags first (the others are refused at compile time). The child only runs
        // `holder_main`, which never returns, allocates nothing and takes no lock: it makes
        // system calls on memory prepared above, which is what a child of a multithreaded
        // process may do.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::c_long::from(flags),
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        };
        if rc == 0 {
            holder_main(&mut prepared);
        }
        let err = io::Error::last_os_error();
        set_signal_mask(old);
        if rc < 0 {
            return Err(err);
        }
        let pid = i32::try_from(rc)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EPROTO))?;
        Ok(Holder {
            pid,
            channel: channel.into_raw_fd(),
        })
    }

    /// The holder's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The number of the holder's end of the control channel in the shared table. It belongs
    /// to the holder: closing it, or `dup2` onto it, cuts the holder off (it then exits with
    /// [`EXIT_CHANNEL_LOST`] at its next request).
    pub fn channel_fd(&self) -> RawFd {
        self.channel
    }
}

/// Makes a control channel: the keeper's end, and the holder's end to give to the server for
/// [`Holder::spawn`]. Both are close-on-exec.
pub fn channel() -> io::Result<(HolderControl, OwnedFd)> {
    let (keeper, holder) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((HolderControl::from_fd(keeper), holder))
}

/// Why a request to the holder failed.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The request could not be sent.
    #[error("Cannot send the request to the holder")]
    Send(#[source] io::Error),
    /// The reply could not be received.
    #[error("Cannot receive the holder's reply")]
    Recv(#[source] io::Error),
    /// The holder's end is closed: the holder and every process sharing its table are gone.
    #[error("The holder hung up")]
    HungUp,
    /// No reply within the timeout ([`HolderControl::set_timeout`]).
    #[error("The holder did not answer in time")]
    Timeout,
    /// The reply is not a [`Reply`] to this request.
    #[error("The holder's reply is malformed")]
    BadReply,
    /// The holder refused the request ([`STEP_REQUEST`]).
    #[error("The holder refused the request")]
    Refused(#[source] io::Error),
    /// The new server's process could not be created ([`STEP_CLONE`]).
    #[error("The holder could not create the new server's process")]
    Clone(#[source] io::Error),
    /// The new server's process failed before its exec ([`STEP_INHERIT`]); it exited with 127.
    #[error("The new server (pid {pid}) failed before its exec")]
    Inherit {
        /// The process: the keeper's to reap with `CLONE_PARENT`, reaped by the holder without.
        pid: Pid,
        /// The errno of the failure (`ECHILD` if it died).
        #[source]
        source: io::Error,
    },
    /// The new server's exec failed ([`STEP_EXEC`]); its process exited with 127.
    #[error("The new server (pid {pid}) could not exec its program")]
    Exec {
        /// The process: the keeper's to reap with `CLONE_PARENT`, reaped by the holder without.
        pid: Pid,
        /// The exec's errno.
        #[source]
        source: io::Error,
    },
}

/// The keeper's end of a holder's control channel. Requests are answered one at a time, in
/// order; each call waits for its reply (up to the timeout, [`DEFAULT_TIMEOUT`] unless set).
///
/// A holder that died while the server still lives does not hang up (the server's table still
/// holds the holder's end), so a request to it times out: watch the holder's pid too.
#[derive(Debug)]
pub struct HolderControl {
    fd: OwnedFd,
    seq: u32,
    timeout: Option<Duration>,
}

impl HolderControl {
    /// Wraps the keeper's end of a control channel (for example received by `SCM_RIGHTS`).
    pub fn from_fd(fd: OwnedFd) -> HolderControl {
        HolderControl {
            fd,
            seq: 0,
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }

    /// The descriptor, to send it elsewhere; close every other copy of it (see the module docs
    /// on who owns which end).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// How long each request waits for its reply; `None` waits for ever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The holder's pid.
    pub fn ping(&mut self) -> Result<Pid, HolderError> {
        let reply = self.request(OP_PING)?;
        Self::outcome(&reply)
    }

    /// Starts a new server from the holder's table; returns its pid once its exec succeeded.
    /// The holder keeps the table, so this may be called again if the new server dies.
    pub fn start(&mut self) -> Result<Pid, HolderError> {
        let reply = self.request(OP_START)?;
        Self::outcome(&reply)
    }

    /// Tells the holder to exit. It answers first: the reply means it is exiting; the table
    /// is released when the last process sharing it is gone.
    pub fn exit(&mut self) -> Result<(), HolderError> {
        let reply = self.request(OP_EXIT)?;
        Self::outcome(&reply).map(|_| ())
    }

    fn outcome(reply: &Reply) -> Result<Pid, HolderError> {
        let err = || io::Error::from_raw_os_error(reply.errno.get() as i32);
        let pid = i32::try_from(reply.pid.get()).ok().and_then(Pid::from_raw);
        match (reply.step.get(), pid) {
            (STEP_OK, Some(pid)) => Ok(pid),
            (STEP_REQUEST, _) => Err(HolderError::Refused(err())),
            (STEP_CLONE, _) => Err(HolderError::Clone(err())),
            (STEP_INHERIT, Some(pid)) => Err(HolderError::Inherit { pid, source: err() }),
            (STEP_EXEC, Some(pid)) => Err(HolderError::Exec { pid, source: err() }),
            _ => Err(HolderError::BadReply),
        }
    }

    fn request(&mut self, op: u32) -> Result<Reply, HolderError> {
        self.seq = self.seq.wrapping_add(1);
        let request = Request::new(op, self.seq);
        match rustix::net::send(&self.fd, request.as_bytes(), SendFlags::NOSIGNAL) {
            Ok(_) => {}
            Err(Errno::PIPE | Errno::CONNRESET) => return Err(HolderError::HungUp),
            Err(e) => return Err(HolderError::Send(e.into())),
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        loop {
            self.wait_readable(deadline)?;
            let mut packet = [0u8; MAX_MESSAGE];
            let len = match rustix::net::recv(&self.fd, &mut packet[..], RecvFlags::TRUNC) {
                Ok((_, len)) => len,
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) => return Err(HolderError::HungUp),
                Err(e) => return Err(HolderError::Recv(e.into())),
            };
            if len == 0 {
                return Err(HolderError::HungUp);
            }
            let reply = packet
                .get(..len)
                .and_then(Reply::parse)
                .ok_or(HolderError::BadReply)?;
            if reply.seq.get() != self.seq {
                continue; // The late answer to a request that timed out.
            }
            if reply.op.get() != op {
                return Err(HolderError::BadReply);
            }
            return Ok(reply);
        }
    }

    fn wait_readable(&self, deadline: Option<Instant>) -> Result<(), HolderError> {
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let limit = left.map(|left| rustix::event::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            });
            let mut pfd = [rustix::event::PollFd::new(
                &self.fd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut pfd, limit.as_ref()) {
                Ok(0) => return Err(HolderError::Timeout),
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(HolderError::Recv(e.into())),
            }
        }
    }
}

impl AsFd for HolderControl {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `(st_dev, st_ino)`: which file a descriptor number names.
#[allow(clippy::unnecessary_cast)] // Their types are not u64 on every target.
fn identity(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Sets this thread's signal mask (the kernel's 64-bit set: bit `n - 1` for signal `n`) with the
/// raw system call, which unlike glibc's wrappers does not leave glibc's own signals out;
/// returns the previous mask. SIGKILL and SIGSTOP cannot be blocked; the kernel ignores them.
fn set_signal_mask(mask: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads 8 bytes (the size passed) from `mask` and writes 8 to `old`,
    // both valid locals; it cannot fail with these arguments.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::c_long::from(libc::SIG_SETMASK),
            &raw const mask,
            &raw mut old,
            size_of::<u64>(),
        );
    }
    old
}

/// `"LUO_HOLDER_PID="`, ten digits, NUL.
const PID_SLOT_LEN: usize = PID_ENV.len() + 1 + 10 + 1;

/// Everything the holder and the new server's process use, made before the clone: after it,
/// they only read it (the holder writes its pid into `pid_slot` once, before anything reads it).
struct Prepared {
    program: CString,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    /// `PID_ENV=<pid>`, filled in by the holder; `envp[pid_index]` points to it.
    pid_slot: Box<[u8; PID_SLOT_LEN]>,
    pid_index: usize,
    /// `Inherit::Only`: clear close-on-exec on `fds` alone; else on every number but these.
    only: bool,
    /// Sorted, without duplicates, none negative.
    fds: Vec<RawFd>,
    channel: RawFd,
    channel_id: (u64, u64),
    /// Flags of the clone that makes a new server's process.
    start_flags: c_int,
    stack: ChildStack,
    /// Written by the new server's process before its exec (shared memory): see `encode`.
    outcome: AtomicU64,
}

/// The new server's process has not reported yet: it died before its exec.
const PENDING: u64 = u64::MAX;

fn encode(step: u32, errno: i32) -> u64 {
    (u64::from(step) << 32) | u64::from(errno as u32)
}

impl Prepared {
    fn new(config: &HolderConfig, channel: RawFd, channel_id: (u64, u64)) -> io::Result<Prepared> {
        if config.argv.is_empty() {
            return Err(invalid("the new server's argv is empty"));
        }
        let (only, mut fds) = match &config.inherit {
            Inherit::All { except } => (false, except.clone()),
            Inherit::Only(list) => (true, list.clone()),
        };
        fds.sort_unstable();
        fds.dedup();
        if fds.first().is_some_and(|&fd| fd < 0) {
            return Err(invalid("a negative descriptor number"));
        }
        if only && fds.binary_search(&channel).is_ok() {
            return Err(invalid("the holder's channel cannot be inherited"));
        }
        let prefix = format!("{PID_ENV}=");
        let argv_owned = config.argv.clone();
        let envp_owned: Vec<CString> = config
            .envp
            .iter()
            .filter(|e| !e.as_bytes().starts_with(prefix.as_bytes()))
            .cloned()
            .collect();
        let mut pid_slot = Box::new([0u8; PID_SLOT_LEN]);
        pid_slot[..prefix.len()].copy_from_slice(prefix.as_bytes());
        let mut argv: Vec<*const c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const c_char> = envp_owned.iter().map(|e| e.as_ptr()).collect();
        let pid_index = envp.len();
        envp.push(pid_slot.as_ptr().cast());
        envp.push(std::ptr::null());
        let start_flags = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::SIGCHLD
            | if config.clone_parent {
                libc::CLONE_PARENT
            } else {
                0
            };
        Ok(Prepared {
            program: config.program.clone(),
            _argv: argv_owned,
            argv,
            _envp: envp_owned,
            envp,
            pid_slot,
            pid_index,
            only,
            fds,
            channel,
            channel_id,
            start_flags,
            stack: ChildStack::new(CHILD_STACK_LEN)?,
            outcome: AtomicU64::new(PENDING),
        })
    }

    /// Writes `PID_ENV=<pid>` into the slot the new servers' envp points to. Runs in the holder.
    fn fill_pid(&mut self, pid: u32) {
        let mut digits = [0u8; 10];
        let mut first = digits.len();
        let mut n = pid;
        while first > 0 {
            first -= 1;
            if let Some(d) = digits.get_mut(first) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let at = PID_ENV.len() + 1;
        let slot = &mut *self.pid_slot;
        let mut end = at;
        for (dst, &src) in slot.iter_mut().skip(at).zip(digits.iter().skip(first)) {
            *dst = src;
            end += 1;
        }
        if let Some(nul) = slot.get_mut(end) {
            *nul = 0;
        }
        // Point at the slot again, after writing it through `&mut`.
        if let Some(entry) = self.envp.get_mut(self.pid_index) {
            *entry = self.pid_slot.as_ptr().cast();
        }
    }
}

/// An anonymous private mapping with a guard page at its low end, for the new server's process
/// to run on between its clone and its exec.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    fn new(len: usize) -> io::Result<ChildStack> {
        // SAFETY: a new anonymous mapping chosen by the kernel (null hint) aliases nothing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::STACK,
            )
        }?;
        let stack = ChildStack { base, len };
        // SAFETY: the first page lies inside the mapping just made, which nothing uses yet.
        unsafe {
            rustix::mm::mprotect(
                base,
                rustix::param::page_size(),
                rustix::mm::MprotectFlags::empty(),
            )
        }?;
        Ok(stack)
    }

    /// The stack's initial top (stacks grow down), 16-byte aligned as page boundaries are.
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly what mmap returned; only the server drops a
        // ChildStack (the holder never returns), after its clone, and its copy is its own.
        let _ = unsafe { rustix::mm::munmap(self.base, self.len) };
    }
}

fn exit_now(status: i32) -> ! {
    // SAFETY: _exit is the exit_group system call: it runs no atexit handler, flushes nothing,
    // takes no lock, so it is what a child of a multithreaded process may call.
    unsafe { libc::_exit(status) }
}

/// The holder's whole life. Runs in the child of the raw clone, on its copy of the server's
/// memory and the shared table: system calls only, no allocation, no lock, no panic.
fn holder_main(p: &mut Prepared) -> ! {
    reset_signals();
    let _ = rustix::thread::set_name(HOLDER_NAME);
    let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
    p.fill_pid(me);
    // SAFETY: the number was the channel's when the server passed it to `spawn`, and by the
    // contract of `Holder::channel_fd` it stays the holder's. If the server breaks it, the calls
    // below reach another file or get EBADF; the identity check before each receive notices,
    // and the holder exits. No memory depends on it.
    let channel = unsafe { BorrowedFd::borrow_raw(p.channel) };
    let mut packet = [0u8; MAX_MESSAGE];
    loop {
        match rustix::fs::fstat(channel) {
            Ok(st) if identity(&st) == p.channel_id => {}
            _ => exit_now(EXIT_CHANNEL_LOST),
        }
        // No ancillary buffer: descriptors sent along with a request are dropped by the
        // kernel, never installed in the shared table.
        let len = match rustix::net::recv(channel, &mut packet[..], RecvFlags::TRUNC) {
            Ok((_, len)) => len,
            Err(Errno::INTR) => continue,
            Err(_) => exit_now(EXIT_CHANNEL_LOST),
        };
        if len == 0 {
            if hung_up(channel) {
                exit_now(0);
            }
            continue; // An empty packet: nothing to answer.
        }
        let request = match packet.get(..len) {
            Some(bytes) => Request::parse(bytes),
            None => Err(Request::oversized(&packet)),
        };
        let (reply, exit) = match request {
            Err(refusal) => (refusal, false),
            Ok(req) => {
                let (op, seq) = (req.op.get(), req.seq.get());
                match op {
                    OP_START => (start(p, seq), false),
                    OP_EXIT => (Reply::new(op, seq, STEP_OK, 0, me), true),
                    _ => (Reply::new(op, seq, STEP_OK, 0, me), false),
                }
            }
        };
        let _ = rustix::net::send(channel, reply.as_bytes(), SendFlags::NOSIGNAL);
        if exit {
            exit_now(0);
        }
    }
}

/// Whether the keeper's end is closed or shut down for writing (an empty read may also be an
/// empty packet).
fn hung_up(channel: BorrowedFd<'_>) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        &channel,
        rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut pfd, Some(&now)) {
        Ok(_) => pfd[0]
            .revents()
            .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::RDHUP),
        Err(_) => true,
    }
}

/// Every signal to its default disposition (SIGCHLD with `SA_NOCLDWAIT`, so the servers this
/// holder starts without `CLONE_PARENT` are reaped by the kernel), then an empty mask. Handlers
/// inherited from the server never run in the holder: every signal stayed blocked from before
/// the clone until here. Raw system calls: glibc's `sigaction` refuses its own two signals.
fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let flags = if sig == libc::SIGCHLD {
            libc::SA_NOCLDWAIT as libc::c_ulong
        } else {
            0
        };
        // The kernel's `struct sigaction`: handler, flags, then (where the architecture has
        // one) the restorer, then the mask. With SIG_DFL (0), no restorer and an empty mask,
        // every word but the flags is zero, so one array fits every layout; the padding covers
        // the longest.
        let action: [libc::c_ulong; 8] = [0, flags, 0, 0, 0, 0, 0, 0];
        // SAFETY: rt_sigaction reads at most the kernel's `struct sigaction` (at most 32 bytes)
        // from `action`, which holds 64, and writes no old action (null); the mask size is the
        // kernel's, 8 bytes. It only changes this process's dispositions.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                libc::c_long::from(sig),
                action.as_ptr(),
                std::ptr::null_mut::<libc::c_ulong>(),
                size_of::<u64>(),
            );
        }
    }
    set_signal_mask(0);
}

/// Runs `OP_START` in the holder: creates the new server's process, which shares the holder's
/// memory and runs `server_main` on the prepared stack while the holder waits (`CLONE_VFORK`).
fn start(p: &Prepared, seq: u32) -> Reply {
    p.outcome.store(PENDING, Ordering::SeqCst);
    // SAFETY: `server_main` runs on `p.stack`, a mapping of its own with a guard page, and
    // receives `p`, which stays valid: the holder is suspended until the child has exec'd or
    // exited (CLONE_VFORK) and never frees `p`. The child shares the holder's memory
    // (CLONE_VM) but writes only its own stack and `p.outcome`, an atomic; it has its own
    // descriptor table (no CLONE_FILES) and its own signal dispositions (no CLONE_SIGHAND),
    // all at their defaults, so no handler can run on the shared memory.
    let rc = unsafe {
        libc::clone(
            server_main,
            p.stack.top(),
            p.start_flags,
            std::ptr::from_ref(p).cast_mut().cast(),
        )
    };
    if rc < 0 {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EAGAIN);
        return Reply::new(OP_START, seq, STEP_CLONE, errno as u32, 0);
    }
    let pid = rc as u32;
    match p.outcome.load(Ordering::SeqCst) {
        0 => Reply::new(OP_START, seq, STEP_OK, 0, pid),
        PENDING => Reply::new(OP_START, seq, STEP_INHERIT, libc::ECHILD as u32, pid),
        out => Reply::new(OP_START, seq, (out >> 32) as u32, out as u32, pid),
    }
}

/// The new server's process, from its clone to its exec; on the holder's memory (CLONE_VM),
/// so system calls only.
extern "C" fn server_main(arg: *mut c_void) -> c_int {
    // SAFETY: `start` passes a pointer to the holder's `Prepared`, valid and unchanged while
    // this process runs (the holder waits for the exec).
    let p = unsafe { &*arg.cast_const().cast::<Prepared>() };
    if let Err(e) = inherit(p) {
        p.outcome
            .store(encode(STEP_INHERIT, e.raw_os_error()), Ordering::SeqCst);
        exit_now(127);
    }
    p.outcome.store(0, Ordering::SeqCst);
    // SAFETY: the path, argv and envp are NUL-terminated strings and NULL-terminated arrays of
    // them, made before the clone and alive in the shared memory.
    unsafe {
        libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
    }
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::ENOEXEC);
    p.outcome.store(encode(STEP_EXEC, errno), Ordering::SeqCst);
    exit_now(127)
}

/// Sets close-on-exec as [`Inherit`] says, in the new server's own copy of the table.
fn inherit(p: &Prepared) -> Result<(), Errno> {
    if p.only {
        set_cloexec_on_all()?;
        for fd in [0, 1, 2].iter().chain(&p.fds) {
            set_cloexec(*fd, false)?;
        }
        return Ok(());
    }
    let mut except = p.fds.iter().copied().peekable();
    for fd in 0..fd_bound() {
        while except.next_if(|&e| e < fd).is_some() {}
        let keep_out = fd == p.channel || except.next_if_eq(&fd).is_some();
        set_cloexec(fd, keep_out)?;
    }
    // Listed numbers beyond the table's size are not open.
    Ok(())
}

/// Sets or clears close-on-exec on `fd`; a number that is not open is skipped.
fn set_cloexec(fd: RawFd, on: bool) -> Result<(), Errno> {
    // SAFETY: `fd` is not negative; a number that is not open gives EBADF, which is skipped.
    // This process owns its copy of the table alone.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = if on {
        FdFlags::CLOEXEC
    } else {
        FdFlags::empty()
    };
    match rustix::io::fcntl_setfd(borrowed, flags) {
        Ok(()) | Err(Errno::BADF) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `CLOSE_RANGE_CLOEXEC` (`include/uapi/linux/close_range.h`, Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_long = 1 << 2;

/// Close-on-exec on every descriptor: one `close_range`, or one `fcntl` per number on a kernel
/// without `CLOSE_RANGE_CLOEXEC`.
fn set_cloexec_on_all() -> Result<(), Errno> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC takes three integers and only sets a flag in
    // this process's own table; it closes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            0 as libc::c_long,
            libc::c_long::from(u32::MAX),
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    (0..fd_bound()).try_for_each(|fd| set_cloexec(fd, true))
}

/// One past the highest descriptor number that can be open: the table's size, `FDSize` in
/// `/proc/self/status`, or `RLIMIT_NOFILE`'s soft limit (at most 2^20) without `/proc`.
fn fd_bound() -> RawFd {
    if let Some(size) = proc_fd_size() {
        return size;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(FALLBACK_FD_BOUND)
        .min(FALLBACK_FD_BOUND);
    limit as RawFd
}

fn proc_fd_size() -> Option<RawFd> {
    let status = rustix::fs::open(
        c"/proc/self/status",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while let Some(rest) = buf.get_mut(len..).filter(|r| !r.is_empty()) {
        match rustix::io::read(&status, rest) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
    drop(status);
    parse_fd_size(buf.get(..len)?)
}

/// The value of the `FDSize:` line of a `/proc/<pid>/status` text.
fn parse_fd_size(status: &[u8]) -> Option<RawFd> {
    const KEY: &[u8] = b"\nFDSize:";
    let at = status.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut value: RawFd = 0;
    let mut digits = 0;
    for &b in status
        .get(at..)?
        .iter()
        .skip_while(|&&b| b == b' ' || b == b'\t')
    {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(RawFd::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_hostile_ones_are_refused() {
        let req = Request::new(OP_START, 7);
        assert_eq!(Request::parse(req.as_bytes()), Ok(req));
        let refused = |bytes: &[u8]| {
            let r = Request::parse(bytes).expect_err("refused");
            assert_eq!(r.step.get(), STEP_REQUEST);
            r.errno.get() as i32
        };
        assert_eq!(refused(&req.as_bytes()[..15]), libc::EINVAL, "truncated");
        assert_eq!(refused(b""), libc::EINVAL, "empty");
        let mut bad = req;
        bad.magic = U32::new(0x1234);
        assert_eq!(refused(bad.as_bytes()), libc::EINVAL, "magic");
        let mut bad = req;
        bad.size = U32::new(20);
        assert_eq!(refused(bad.as_bytes()), libc::EINVAL, "size field");
        let mut bad = req;
        bad.op = U32::new(99);
        let r = Request::parse(bad.as_bytes()).expect_err("unknown op");
        assert_eq!(
            (r.errno.get() as i32, r.op.get(), r.seq.get()),
            (libc::EOPNOTSUPP, 99, 7)
        );
        // A longer request from a newer keeper: accepted if the tail is zero, refused if not.
        let mut long = [0u8; 24];
        long[..16].copy_from_slice(req.as_bytes());
        long[..4].copy_from_slice(&24u32.to_le_bytes());
        let read = Request::parse(&long).expect("zero tail");
        assert_eq!(read.op.get(), OP_START);
        long[20] = 1;
        assert_eq!(refused(&long), libc::E2BIG, "non-zero tail");
        let mut huge = [0u8; MAX_MESSAGE + 1];
        huge[..16].copy_from_slice(req.as_bytes());
        huge[..4].copy_from_slice(&((MAX_MESSAGE + 1) as u32).to_le_bytes());
        assert_eq!(refused(&huge), libc::E2BIG, "over the limit");
    }

    proptest::proptest! {
        /// The holder parses whatever the channel carries: a well-formed request, mutated
        /// anywhere, is read or refused, never anything else, and a refusal is a valid reply.
        #[test]
        fn any_packet_is_read_or_refused(
            op in 0u32..5,
            seq: u32,
            tail in proptest::collection::vec(0u8..2, 0..60),
            flip: Option<(usize, u8)>,
        ) {
            let mut packet = Request::new(op, seq).as_bytes().to_vec();
            packet.extend_from_slice(&tail);
            let len = packet.len() as u32;
            packet[..4].copy_from_slice(&len.to_le_bytes());
            if let Some((at, byte)) = flip {
                let at = at % packet.len();
                packet[at] = byte;
            }
            match Request::parse(&packet) {
                Ok(req) => {
                    proptest::prop_assert_eq!(req.magic.get(), HOLDER_MAGIC);
                    proptest::prop_assert_eq!(req.size.get() as usize, packet.len());
                    proptest::prop_assert!((16..=MAX_MESSAGE).contains(&packet.len()));
                    proptest::prop_assert!(packet[16..].iter().all(|&b| b == 0));
                    proptest::prop_assert!(matches!(req.op.get(), OP_PING | OP_START | OP_EXIT));
                }
                Err(reply) => {
                    proptest::prop_assert_eq!(reply.step.get(), STEP_REQUEST);
                    proptest::prop_assert!(Reply::parse(reply.as_bytes()).is_some());
                }
            }
            let _ = Reply::parse(&packet);
            for cut in 0..16 {
                let prefix = &packet[..cut];
                proptest::prop_assert!(Request::parse(prefix).is_err(), "a {cut}-byte prefix");
            }
        }
    }

    #[test]
    fn replies_are_checked() {
        let reply = Reply::new(OP_START, 3, STEP_EXEC, libc::ENOENT as u32, 42);
        assert_eq!(Reply::parse(reply.as_bytes()), Some(reply));
        assert_eq!(Reply::parse(&reply.as_bytes()[..31]), None);
        let mut bad = reply;
        bad.reserved = U32::new(1);
        assert_eq!(Reply::parse(bad.as_bytes()), None);
        let err = HolderControl::outcome(&reply).expect_err("exec failed");
        assert!(
            matches!(&err, HolderError::Exec { pid, source }
                if pid.as_raw_nonzero().get() == 42 && source.raw_os_error() == Some(libc::ENOENT)),
            "{err:?}"
        );
        let ok = Reply::new(OP_START, 3, STEP_OK, 0, 0);
        assert!(
            matches!(HolderControl::outcome(&ok), Err(HolderError::BadReply)),
            "pid 0"
        );
    }

    #[test]
    fn fd_size_is_read_from_proc_status() {
        assert_eq!(
            parse_fd_size(b"Name:\tx\nFDSize:\t256\nGroups:\n"),
            Some(256)
        );
        assert_eq!(parse_fd_size(b"Name:\tx\nFDSize:\t\nGroups:\n"), None);
        assert_eq!(
            parse_fd_size(b"FDSize:\t64\n"),
            None,
            "never the first line"
        );
        assert_eq!(parse_fd_size(b"\nFDSize:\t99999999999\n"), None, "overflow");
        let size = proc_fd_size().expect("/proc/self/status has FDSize");
        let fd = rustix::fs::memfd_create("probe", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        assert!(fd.as_raw_fd() < size, "{} < {size}", fd.as_raw_fd());
    }

    #[test]
    fn the_pid_slot_is_filled_in() {
        let mut config = HolderConfig::new(Path::new("/bin/true")).expect("config");
        config.envp = vec![
            CString::new("A=1").expect("c"),
            CString::new(format!("{PID_ENV}=5")).expect("c"),
        ];
        let mut p = Prepared::new(&config, 9, (0, 0)).expect("prepared");
        for pid in [1, 42, 4_194_304, u32::MAX] {
            p.fill_pid(pid);
            let envp: Vec<String> = p.envp[..p.envp.len() - 1]
                .iter()
                .map(|&e| {
                    // SAFETY: every entry points to a NUL-terminated string owned by `p`.
                    unsafe { std::ffi::CStr::from_ptr(e) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            assert_eq!(envp, ["A=1".to_string(), format!("{PID_ENV}={pid}")]);
        }
        assert!(p.envp.last().expect("terminator").is_null());
        assert!(p.argv.last().expect("terminator").is_null());
    }

    #[test]
    fn spawn_refuses_what_it_cannot_use() {
        let config = HolderConfig::new(Path::new("/bin/true")).expect("config");
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("pair");
        let e = Holder::spawn(&config, a).expect_err("a stream socket");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let (_control, end) = channel().expect("channel");
        let mut only = config.clone();
        only.inherit = Inherit::Only(vec![end.as_raw_fd()]);
        let e = Holder::spawn(&only, end).expect_err("the channel inherited");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let (_control, end) = channel().expect("channel");
        let mut empty = config.clone();
        empty.argv.clear();
        assert!(Holder::spawn(&empty, end).is_err());
    }
}
