//! The crash-injection harness: luod's server is killed while clients work, and everything luod
//! acknowledged is checked afterwards.
//!
//! [`run`] starts a luod (with `LUOD_FAILPOINTS=1`) on a private socket and drives it with:
//!
//! - **clients**: threads, each switched to a uid of its own (so each has its own namespace and
//!   its own device), doing a random mix of CREATE_SESSION, PRESERVE_FD of a memfd holding a
//!   per-file random pattern (the client's copy is closed at once: only luod holds the bytes),
//!   HANDOFF, RETRIEVE_SESSION, RETRIEVE_FD (every byte checked), FINISH and closing an outgoing
//!   session;
//! - **a load**: root's sessions and memfds, held for the whole run (2,000 sessions and 15,000
//!   descriptors in the long form), so that a recovery has something to recover;
//! - **a probe**: a thread sending STATUS in a loop on one connection, which must survive every
//!   kill;
//! - **the killer** (the thread that called [`run`]): after a random instant it sends SIGKILL to
//!   the server (`Status::pid`), or arms one of the server's failpoints ([`FAILPOINTS`]) and lets
//!   the server kill itself there; now and then it upgrades luod and emulates a reboot.
//!
//! **The model.** The harness keeps its own record of what luod acknowledged: per uid, each
//! session (name, stage: outgoing, incoming or retrieved) and each of its files (token, pattern
//! seed, length). A request changes the record only when its reply arrives and says success.
//! Every request has an id of its own, increasing; a reply whose id is not the one awaited is a
//! second reply to an earlier request (`crash_duplicated`). A request whose reply does not come
//! within the timeout, or whose connection closes instead, has lost its reply (`crash_lost`):
//! after a kill the new server must answer it.
//!
//! **The checks.** After each kill the killer measures the recovery — from the kill to the first
//! STATUS answered by a server with a new pid, on a fresh connection or on the probe's — then
//! stops the clients between two requests and verifies: every connection is read for replies
//! nobody asked for, LIST must show exactly the sessions of the record (owner, name, stage, file
//! count, bytes), STATUS must agree with LIST (sessions each way, files, bytes) and count exactly
//! the connections the harness holds. A session that is missing, or behind the record, is lost;
//! one that is ahead of it, or that nobody created, is an unacknowledged change applied
//! (`crash_unexpected`); an answer that shows a request applied twice (EEXIST for a name or token
//! used once, EINVAL for a second HANDOFF...) is a duplicate. At the end every session is handed
//! off, retrieved, every file checked byte for byte, and finished; luod must then hold nothing.
//!
//! A reboot is modelled as `docs/operations.md` says: every connection is cut, open outgoing
//! sessions become incoming, every other session is gone.
//!
//! A luod without a keeper (one whose `keeper_pid` is its server's pid) dies whole at the first
//! kill: the harness then counts everything it had acknowledged as lost, starts a fresh luod and
//! goes on (`crash_keeper_deaths`), so a run against such a luod still ends, with its losses.
//!
//! Nothing here can hang: every socket has send and receive timeouts, every wait a deadline.
//!
//! This file is shared by `luo-bench crash` (the long form) and `crates/luod/tests/crash.rs`
//! (the short form, which includes it with `#[path]`); it uses only luo-abi, luo-client, rustix
//! and std. As root:
//!
//! ```ignore
//! let report = crash::run(&crash::Options::short(luod_binary, dir))?;
//! for (key, value) in report.keys() {
//!     println!("{key}={value}");
//! }
//! assert!(report.clean(), "{}", report.failures());
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use luo_abi::Errno;
use luo_abi::uapi::{self, CreateSession, Finish, PreserveFd};
use luo_abi::wire::{self, LIST_INCOMING, LIST_RETRIEVED, ListEntry, ListReply, Op, StatusReply};
use luo_client::transport::{self, Recv};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno as SysErrno;
use rustix::process::{Pid, PidfdFlags, Signal};

/// The server's failpoints, in the order the first kills at failpoints go through them.
/// (`upgrade-go` is not one of them: when the old server dies after GO its successor usually
/// serves before the keeper sees the death, so from outside the round looks like an upgrade
/// without a kill. The keeper's tests stop a server there.)
pub const FAILPOINTS: [&str; 6] = [
    "after-apply",
    "after-journal",
    "after-reply",
    "upgrade-staged",
    "upgrade-ready",
    "reboot-frozen",
];

/// How a run goes.
#[derive(Clone, Debug)]
pub struct Options {
    /// The luod binary.
    pub luod: PathBuf,
    /// A directory for luod's socket and log (0755, so every client uid can reach the socket).
    pub dir: PathBuf,
    /// Rounds: each waits a random instant, kills the server once (if `kill`) and verifies.
    pub rounds: u64,
    /// Kill the server in each round (false: a run of the same mix with no kill, which must
    /// find nothing).
    pub kill: bool,
    /// Client threads.
    pub clients: u32,
    /// Sessions of the held load.
    pub load_sessions: usize,
    /// Memfds of the held load, spread over its sessions.
    pub load_files: usize,
    /// The kill comes at an instant uniform in this window after the clients resume.
    pub window: Duration,
    /// No server is killed before it has served this long (from the first answer the harness
    /// saw from it): luod's keeper restarts a server that dies sooner after a back-off, as a
    /// crash loop, which the harness is not testing.
    pub min_life: Duration,
    /// Share of the kills made at a failpoint rather than at a random instant, in percent.
    pub failpoint_percent: u64,
    /// An upgrade (with the clients running) after every this many rounds; 0: none.
    pub upgrade_every: u64,
    /// A reboot after every this many rounds; 0: none.
    pub reboot_every: u64,
    /// A verification after every this many rounds (there is always one at the end).
    pub verify_every: u64,
    /// How long a reply may take, a recovery included.
    pub reply_timeout: Duration,
    /// How long an armed failpoint gets to fire before the server is killed at random instead.
    pub failpoint_wait: Duration,
    /// No new round starts after this.
    pub deadline: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// luod's log filter (`--log`).
    pub log_filter: String,
    /// Commentary on stderr.
    pub progress: bool,
}

impl Options {
    /// The short form: tens of kills, a small load, every failpoint at least once, upgrades and
    /// reboots in the mix (the integration test).
    #[allow(
        dead_code,
        reason = "luo-bench uses it for `crash short`, the test for its runs"
    )]
    pub fn short(luod: PathBuf, dir: PathBuf) -> Options {
        Options {
            luod,
            dir,
            rounds: 24,
            kill: true,
            clients: 3,
            load_sessions: 40,
            load_files: 300,
            window: Duration::from_millis(40),
            min_life: Duration::from_millis(150),
            failpoint_percent: 50,
            upgrade_every: 6,
            reboot_every: 10,
            verify_every: 1,
            reply_timeout: Duration::from_secs(10),
            failpoint_wait: Duration::from_secs(2),
            deadline: Duration::from_secs(55),
            seed: clock_seed(),
            log_filter: "warn".to_owned(),
            progress: false,
        }
    }

    /// The long form: 1,000 kills with 2,000 sessions and 15,000 descriptors held.
    #[allow(dead_code, reason = "the long form is luo-bench's alone")]
    pub fn long(luod: PathBuf, dir: PathBuf) -> Options {
        Options {
            rounds: 1_000,
            clients: 4,
            load_sessions: 2_000,
            load_files: 15_000,
            window: Duration::from_millis(100),
            failpoint_percent: 30,
            upgrade_every: 25,
            reboot_every: 100,
            reply_timeout: Duration::from_secs(20),
            failpoint_wait: Duration::from_secs(3),
            deadline: Duration::from_secs(3 * 3600),
            progress: true,
            ..Options::short(luod, dir)
        }
    }
}

/// A seed from the clock.
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed it ran with.
    pub seed: u64,
    /// Rounds run (fewer than asked if the deadline came first).
    pub rounds: u64,
    /// Servers killed: at a random instant or at a failpoint.
    pub kills: u64,
    /// Kills at a failpoint (the server killed itself there).
    pub failpoint_kills: u64,
    /// Kills at each failpoint.
    pub failpoints_fired: BTreeMap<&'static str, u64>,
    /// Failpoints armed that did not fire in time (the server was killed at random instead).
    pub failpoints_unreached: u64,
    /// Upgrades luod completed.
    pub upgrades: u64,
    /// Upgrades luod refused or abandoned (not a crash-safety failure).
    pub upgrades_refused: u64,
    /// Reboots luod completed.
    pub reboots: u64,
    /// Kills after which luod was gone as a whole (no keeper): a fresh luod was started.
    pub keeper_deaths: u64,
    /// Kills after which no new server answered within the reply timeout.
    pub unrecovered: u64,
    /// Acknowledged sessions and files missing, behind the record, or with wrong bytes.
    pub lost_state: u64,
    /// Requests whose reply never came (their connection closed, or the timeout passed).
    pub lost_replies: u64,
    /// Second replies, and effects applied twice.
    pub duplicated: u64,
    /// Replies that arrived twice on the wire (second copies of an answer, with no second
    /// effect): `crash_replies_resent`.
    pub resent: u64,
    /// Connections luod closed outside a reboot.
    pub connections_cut: u64,
    /// Anything else that disagrees: unacknowledged changes applied, an errno the record does
    /// not explain, STATUS disagreeing with LIST or with the connections held.
    pub unexpected: u64,
    /// Recovery times: from the kill to the first request answered by the new server.
    pub recoveries: Vec<Duration>,
    /// Requests acknowledged.
    pub ops: u64,
    /// Files whose bytes were read back and compared.
    pub files_checked: u64,
    /// The held load.
    pub load_sessions: u64,
    /// The held load's descriptors.
    pub load_files: u64,
    /// `restarts` as luod reported it last.
    pub restarts: u64,
    /// luod reported a keeper distinct from its server.
    pub keeper: bool,
    /// The whole run.
    pub elapsed: Duration,
    /// The first failures, described.
    pub notes: Vec<String>,
    /// The end of luod's log, when something failed.
    pub log_tail: String,
}

impl Report {
    /// Everything acknowledged and lost: state and replies.
    pub fn lost(&self) -> u64 {
        self.lost_state + self.lost_replies
    }

    /// Nothing lost, duplicated, cut or otherwise wrong, and every kill recovered from.
    pub fn clean(&self) -> bool {
        self.lost() == 0
            && self.duplicated == 0
            && self.connections_cut == 0
            && self.unexpected == 0
            && self.unrecovered == 0
            && self.keeper_deaths == 0
    }

    /// A recovery percentile, in milliseconds.
    fn recovery_ms(&self, percent: usize) -> String {
        let mut v = self.recoveries.clone();
        v.sort();
        if v.is_empty() {
            return "-".to_owned();
        }
        let at = (v.len() * percent).div_ceil(100).clamp(1, v.len()) - 1;
        format!("{:.1}", v[at].as_secs_f64() * 1e3)
    }

    /// The figures, as `key=value` pairs.
    pub fn keys(&self) -> Vec<(&'static str, String)> {
        let fired: Vec<String> = FAILPOINTS
            .iter()
            .map(|p| format!("{p}:{}", self.failpoints_fired.get(p).copied().unwrap_or(0)))
            .collect();
        vec![
            ("crash_kills", self.kills.to_string()),
            ("crash_lost", self.lost().to_string()),
            ("crash_duplicated", self.duplicated.to_string()),
            ("crash_replies_resent", self.resent.to_string()),
            ("crash_recovery_ms_p50", self.recovery_ms(50)),
            ("crash_recovery_ms_p99", self.recovery_ms(99)),
            ("crash_recovery_ms_max", self.recovery_ms(100)),
            ("crash_failpoint_kills", self.failpoint_kills.to_string()),
            ("crash_failpoints_fired", fired.join(",")),
            (
                "crash_failpoints_unreached",
                self.failpoints_unreached.to_string(),
            ),
            ("crash_upgrades", self.upgrades.to_string()),
            ("crash_upgrades_refused", self.upgrades_refused.to_string()),
            ("crash_reboots", self.reboots.to_string()),
            ("crash_lost_state", self.lost_state.to_string()),
            ("crash_lost_replies", self.lost_replies.to_string()),
            ("crash_connections_cut", self.connections_cut.to_string()),
            ("crash_unexpected", self.unexpected.to_string()),
            ("crash_keeper_deaths", self.keeper_deaths.to_string()),
            ("crash_unrecovered", self.unrecovered.to_string()),
            ("crash_recoveries", self.recoveries.len().to_string()),
            ("crash_ops", self.ops.to_string()),
            ("crash_files_checked", self.files_checked.to_string()),
            ("crash_load_sessions", self.load_sessions.to_string()),
            ("crash_load_files", self.load_files.to_string()),
            ("crash_restarts", self.restarts.to_string()),
            ("crash_keeper", u8::from(self.keeper).to_string()),
            ("crash_rounds", self.rounds.to_string()),
            (
                "crash_seconds",
                format!("{:.1}", self.elapsed.as_secs_f64()),
            ),
            ("crash_seed", self.seed.to_string()),
        ]
    }

    /// The failures found, one per line, and the end of luod's log.
    pub fn failures(&self) -> String {
        let mut out = self.notes.join("\n");
        if !self.log_tail.is_empty() {
            out.push_str("\n----- luod's log (end) -----\n");
            out.push_str(&self.log_tail);
        }
        out
    }
}

/// Runs the harness. An error means it could not run (luod did not start, failpoints are
/// refused, a client hung); what it found is in the [`Report`].
pub fn run(opts: &Options) -> Result<Report, String> {
    if !rustix::process::geteuid().is_root() {
        return Err(
            "The crash harness needs root: it arms luod's failpoints and runs its \
                    clients under uids of their own"
                .to_owned(),
        );
    }
    // Successors of an upgrade outlive the luod that started them: reap them here.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("Cannot become a child subreaper: {e}"))?;
    std::fs::create_dir_all(&opts.dir).map_err(|e| format!("{}: {e}", opts.dir.display()))?;
    let started = Instant::now();
    let shared = Arc::new(Shared::new(opts.reply_timeout));
    let socket = opts.dir.join("luod.sock");
    let daemon = Daemon::start(opts, &socket, &shared)?;
    let mut owners = vec![Arc::new(Owner::new(0))];
    owners.extend((0..opts.clients).map(|i| Arc::new(Owner::new(CLIENT_UID + i))));
    let ctx = Arc::new(Ctx {
        shared,
        socket,
        gate: Gate::default(),
        owners,
        probe: Probe::default(),
    });
    let mut run = Harness {
        opts: opts.clone(),
        ctx,
        daemon,
        control: None,
        rng: Rng(opts.seed),
        report: Report {
            seed: opts.seed,
            ..Report::default()
        },
        threads: Vec::new(),
        load_builds: 0,
        failpoint_turn: 0,
        new_server: None,
        last_kill: "none",
    };
    let result = run.go();
    run.ctx.gate.stop();
    for t in run.threads.drain(..) {
        let _ = t.join();
    }
    let mut report = run.finish(started);
    if let Err(e) = result {
        report.notes.push(format!("The run stopped: {e}"));
        report.log_tail = run.daemon.log_tail();
        return Err(format!("{e}\n{}", report.failures()));
    }
    if !report.clean() {
        report.log_tail = run.daemon.log_tail();
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Limits and names.

/// The first client's uid; client `i` runs as `CLIENT_UID + i`.
const CLIENT_UID: u32 = 47_000;
/// Sessions one client holds at most.
const CLIENT_SESSIONS: usize = 8;
/// Files one client session holds at most.
const SESSION_FILES: usize = 6;
/// Largest memfd a client preserves.
const CLIENT_FILE_MAX: u64 = 32 << 10;
/// Largest memfd of the load.
const LOAD_FILE_MAX: u64 = 4 << 10;
/// How long a blocking receive sleeps before the caller looks at its deadline.
const SLICE: Duration = Duration::from_millis(20);
/// Requests of one pipelined batch in flight at a time.
const WINDOW: usize = 32;
/// How long LIST and STATUS get to agree with the record after the clients stop (a connection
/// the harness closed reaches luod asynchronously).
const CONVERGE: Duration = Duration::from_secs(3);
/// How long luod gets to start.
const START: Duration = Duration::from_secs(10);
/// Connections done with that one owner keeps for a last read (the oldest is read and closed
/// when another comes).
const LINGER: usize = 16;
/// Failures described in the report, of each kind.
const MAX_NOTES: u64 = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Counters shared by every thread.

/// What can go wrong, each with its counter.
#[derive(Clone, Copy, Debug)]
enum Fault {
    LostState,
    LostReply,
    Duplicated,
    /// A second reply to a request answered already, with no second effect: the window after
    /// a reply is sent and before its request leaves the socket (`docs/protocol.md`, "Exactly
    /// once"), which luo-client and luo-preload skip by id.
    Resent,
    Cut,
    Unexpected,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::LostState => "lost",
            Fault::LostReply => "lost reply",
            Fault::Duplicated => "duplicated",
            Fault::Resent => "reply resent",
            Fault::Cut => "connection cut",
            Fault::Unexpected => "unexpected",
        }
    }
}

#[derive(Debug)]
struct Shared {
    next_id: AtomicU64,
    /// Connections to luod this process holds (every [`Conn`] alive).
    open: AtomicI64,
    reply_timeout: Duration,
    faults: [AtomicU64; 6],
    ops: AtomicU64,
    checked: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Shared {
    fn new(reply_timeout: Duration) -> Shared {
        Shared {
            next_id: AtomicU64::new(0),
            open: AtomicI64::new(0),
            reply_timeout,
            faults: Default::default(),
            ops: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// A request id never used before (ids only grow, so a reply older than the one awaited is
    /// a second reply).
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn fault(&self, f: Fault, n: u64, what: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        if self.faults[f as usize].fetch_add(n, Ordering::Relaxed) < MAX_NOTES {
            lock(&self.notes).push(format!("{}: {}", f.name(), what()));
        }
    }

    fn count(&self, f: Fault) -> u64 {
        self.faults[f as usize].load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// The wire, spoken directly: every reply is seen, so a second one is counted.

/// One connection to luod (control, device or session), with timeouts.
#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    shared: Arc<Shared>,
}

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    Reply {
        errno: i32,
        body: Vec<u8>,
        fds: Vec<OwnedFd>,
    },
    /// The connection was gone before the request left: nothing was asked.
    Cut,
    /// The connection closed before the reply came.
    Closed,
    /// No reply within the timeout.
    Timeout,
    Failed(SysErrno),
}

impl Conn {
    /// Connects to luod at `socket` (luo-client's checks of who serves it included).
    fn connect(socket: &Path, shared: &Arc<Shared>) -> Option<Conn> {
        let fd = luo_client::connect(socket).ok()?;
        Some(Conn::adopt(fd, shared))
    }

    /// A connection luod handed over (a session's), or one just connected.
    fn adopt(fd: OwnedFd, shared: &Arc<Shared>) -> Conn {
        use rustix::net::sockopt::{Timeout, set_socket_timeout};
        let _ = set_socket_timeout(&fd, Timeout::Recv, Some(SLICE));
        let _ = set_socket_timeout(&fd, Timeout::Send, Some(shared.reply_timeout));
        shared.open.fetch_add(1, Ordering::Relaxed);
        Conn {
            fd,
            shared: Arc::clone(shared),
        }
    }

    fn call(&self, op: u32, arg: &[u8], fds: &[BorrowedFd<'_>]) -> Outcome {
        self.call_within(op, arg, fds, self.shared.reply_timeout)
    }

    fn call_within(
        &self,
        op: u32,
        arg: &[u8],
        fds: &[BorrowedFd<'_>],
        within: Duration,
    ) -> Outcome {
        match self.send(op, arg, fds) {
            Ok(id) => self.await_reply(id, Instant::now() + within),
            Err(o) => o,
        }
    }

    /// Sends one request; its id.
    fn send(&self, op: u32, arg: &[u8], fds: &[BorrowedFd<'_>]) -> Result<u64, Outcome> {
        let id = self.shared.id();
        let mut msg = Vec::with_capacity(16 + arg.len());
        if wire::write_request(&mut msg, op, id, arg).is_err() {
            return Err(Outcome::Failed(SysErrno::TOOBIG));
        }
        match transport::send(self.fd.as_fd(), &msg, fds) {
            Ok(()) => Ok(id),
            Err(SysErrno::PIPE | SysErrno::CONNRESET | SysErrno::NOTCONN) => Err(Outcome::Cut),
            Err(SysErrno::AGAIN) => Err(Outcome::Timeout),
            Err(e) => Err(Outcome::Failed(e)),
        }
    }

    /// Waits for the reply to request `id` until `deadline`, counting any other reply.
    fn await_reply(&self, id: u64, deadline: Instant) -> Outcome {
        loop {
            match transport::recv(self.fd.as_fd(), true) {
                Ok(Recv::Message(m)) => {
                    let Ok((hdr, body)) = wire::parse_reply(&m.bytes) else {
                        self.shared.fault(Fault::Unexpected, 1, || {
                            format!("a malformed reply ({} bytes)", m.bytes.len())
                        });
                        continue;
                    };
                    if hdr.id.get() == id {
                        return Outcome::Reply {
                            errno: hdr.errno.get(),
                            body: body.to_vec(),
                            fds: m.fds,
                        };
                    }
                    self.stray(hdr.id.get(), Some(id));
                }
                Ok(Recv::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Outcome::Timeout;
                    }
                }
                Ok(Recv::Closed) | Err(SysErrno::CONNRESET) => return Outcome::Closed,
                Err(SysErrno::INTR) => {}
                Err(e) => return Outcome::Failed(e),
            }
        }
    }

    /// A reply with id `got` while `waiting` for another (or for none).
    fn stray(&self, got: u64, waiting: Option<u64>) {
        if got != 0 && waiting.is_none_or(|w| got < w) {
            self.shared.fault(Fault::Resent, 1, || {
                format!("a second reply to request {got}")
            });
        } else {
            self.shared.fault(Fault::Unexpected, 1, || {
                format!("a reply with id {got} while waiting for {waiting:?}")
            });
        }
    }

    /// Reads every reply waiting though no request is: each is a second reply. False if the
    /// connection is closed.
    fn drain(&self) -> bool {
        loop {
            match transport::recv(self.fd.as_fd(), false) {
                Ok(Recv::Message(m)) => match wire::parse_reply(&m.bytes) {
                    Ok((hdr, _)) => self.stray(hdr.id.get(), None),
                    Err(_) => self.shared.fault(Fault::Unexpected, 1, || {
                        "a malformed message nobody asked for".to_owned()
                    }),
                },
                Ok(Recv::WouldBlock) | Err(SysErrno::INTR) => return true,
                Ok(Recv::Closed) | Err(_) => return false,
            }
        }
    }

    /// Pipelined requests, each with at most one descriptor, [`WINDOW`] in flight: their
    /// outcomes, in order (once the connection fails, the rest have no reply).
    fn call_many(&self, reqs: &[(u32, Vec<u8>, Option<BorrowedFd<'_>>)]) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = reqs.iter().map(|_| None).collect();
        let mut waiting: VecDeque<(usize, u64)> = VecDeque::new();
        let mut alive = true;
        let settle_one = |waiting: &mut VecDeque<(usize, u64)>, out: &mut [Option<Outcome>]| {
            let Some((i, id)) = waiting.pop_front() else {
                return true;
            };
            let o = self.await_reply(id, self.deadline());
            let ok = matches!(o, Outcome::Reply { .. });
            out[i] = Some(o);
            ok
        };
        for (i, (op, arg, fd)) in reqs.iter().enumerate() {
            while alive && waiting.len() >= WINDOW {
                alive = settle_one(&mut waiting, &mut out);
            }
            if !alive {
                break;
            }
            let fds: Vec<BorrowedFd<'_>> = fd.iter().copied().collect();
            match self.send(*op, arg, &fds) {
                Ok(id) => waiting.push_back((i, id)),
                Err(o) => {
                    out[i] = Some(o);
                    alive = false;
                }
            }
        }
        while alive && !waiting.is_empty() {
            alive = settle_one(&mut waiting, &mut out);
        }
        out.into_iter()
            .map(|o| o.unwrap_or(Outcome::Closed))
            .collect()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.reply_timeout
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the record takes an outcome.
enum Answer {
    /// Success: the reply's argument and descriptors.
    Ok(Vec<u8>, Vec<OwnedFd>),
    /// luod refused with this errno (already counted unless the caller's to count).
    Refused(Errno),
    /// The request never left: nothing changed.
    Cut,
    /// No reply (counted): whether it was applied is unknown.
    NoReply,
}

/// Takes `out` of the request `what`: success, or a fault counted. An errno in `duplicate`
/// shows the request (or an earlier one) applied twice; one in `lost` is the caller's to count;
/// any other is unexpected.
fn answer(
    shared: &Shared,
    out: Outcome,
    what: &str,
    duplicate: &[Errno],
    lost: &[Errno],
) -> Answer {
    match out {
        Outcome::Reply {
            errno: 0,
            body,
            fds,
        } => {
            shared.ops.fetch_add(1, Ordering::Relaxed);
            Answer::Ok(body, fds)
        }
        Outcome::Reply { errno, body, .. } => {
            let e = Errno(errno);
            let why = || format!("{what}: {e} ({})", String::from_utf8_lossy(&body));
            if duplicate.contains(&e) {
                shared.fault(Fault::Duplicated, 1, why);
            } else if !lost.contains(&e) {
                shared.fault(Fault::Unexpected, 1, why);
            }
            Answer::Refused(e)
        }
        Outcome::Cut => {
            shared.fault(Fault::Cut, 1, || {
                format!("{what}: the connection was closed by luod")
            });
            Answer::Cut
        }
        Outcome::Closed => {
            shared.fault(Fault::LostReply, 1, || {
                format!("{what}: the connection closed instead of a reply")
            });
            Answer::NoReply
        }
        Outcome::Timeout => {
            shared.fault(Fault::LostReply, 1, || {
                format!("{what}: no reply within {:?}", shared.reply_timeout)
            });
            Answer::NoReply
        }
        Outcome::Failed(e) => {
            shared.fault(Fault::Unexpected, 1, || format!("{what}: {e}"));
            Answer::NoReply
        }
    }
}

/// CREATE_SESSION's and RETRIEVE_SESSION's argument.
fn name_arg(name: &str) -> Vec<u8> {
    use std::mem::offset_of;
    let size = size_of::<CreateSession>();
    let mut a = vec![0u8; size];
    put(
        &mut a,
        offset_of!(CreateSession, size),
        &(size as u32).to_le_bytes(),
    );
    put(
        &mut a,
        offset_of!(CreateSession, fd),
        &(-1i32).to_le_bytes(),
    );
    put(&mut a, offset_of!(CreateSession, name), name.as_bytes());
    a
}

/// PRESERVE_FD's and RETRIEVE_FD's argument.
fn token_arg(token: u64) -> Vec<u8> {
    use std::mem::offset_of;
    let size = size_of::<PreserveFd>();
    let mut a = vec![0u8; size];
    put(
        &mut a,
        offset_of!(PreserveFd, size),
        &(size as u32).to_le_bytes(),
    );
    put(&mut a, offset_of!(PreserveFd, token), &token.to_le_bytes());
    a
}

/// FINISH's argument.
fn finish_arg() -> Vec<u8> {
    let size = size_of::<Finish>();
    let mut a = vec![0u8; size];
    put(
        &mut a,
        std::mem::offset_of!(Finish, size),
        &(size as u32).to_le_bytes(),
    );
    a
}

/// FAILPOINT's argument.
fn failpoint_arg(name: &str, hit: u32) -> Vec<u8> {
    let mut a = hit.to_le_bytes().to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// What the harness reads of a STATUS reply.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    pid: u32,
    keeper_pid: u32,
    generation: u64,
    restarts: u32,
    outgoing: u64,
    incoming: u64,
    files: u64,
    bytes: u64,
    clients: u64,
}

/// A STATUS reply's fields (what a shorter reply lacks reads as zero).
fn parse_status(body: &[u8]) -> Option<Snapshot> {
    use std::mem::offset_of;
    if body.len() < wire::STATUS_REPLY_V2_LEN {
        return None;
    }
    Some(Snapshot {
        pid: u32_at(body, offset_of!(StatusReply, pid)),
        keeper_pid: u32_at(body, offset_of!(StatusReply, keeper_pid)),
        generation: u64_at(body, offset_of!(StatusReply, generation)),
        restarts: u32_at(body, offset_of!(StatusReply, restarts)),
        outgoing: u64_at(body, offset_of!(StatusReply, sessions_outgoing)),
        incoming: u64_at(body, offset_of!(StatusReply, sessions_incoming)),
        files: u64_at(body, offset_of!(StatusReply, files)),
        bytes: u64_at(body, offset_of!(StatusReply, bytes)),
        clients: u64_at(body, offset_of!(StatusReply, clients)),
    })
}

/// One session as LIST shows it, or as the record says LIST must.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listed {
    flags: u32,
    files: u64,
    bytes: u64,
}

/// Every session by owner and name, read page by page; `None` if a page did not come.
fn list(conn: &Conn) -> Option<BTreeMap<(u32, String), Listed>> {
    use std::mem::offset_of;
    let mut all = BTreeMap::new();
    let mut start = 0u64;
    loop {
        let out = conn.call(Op::List as u32, &start.to_le_bytes(), &[]);
        let Answer::Ok(body, _) = answer(&conn.shared, out, "LIST", &[], &[]) else {
            return None;
        };
        let count = u32_at(&body, offset_of!(ListReply, count)) as usize;
        let total = u64_at(&body, offset_of!(ListReply, total));
        let entries = body.get(size_of::<ListReply>()..).unwrap_or_default();
        for e in entries.chunks_exact(size_of::<ListEntry>()).take(count) {
            let name = &e[offset_of!(ListEntry, name)..];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            all.insert(
                (
                    u32_at(e, offset_of!(ListEntry, owner)),
                    String::from_utf8_lossy(&name[..len]).into_owned(),
                ),
                Listed {
                    flags: u32_at(e, offset_of!(ListEntry, flags)),
                    files: u64_at(e, offset_of!(ListEntry, files)),
                    bytes: u64_at(e, offset_of!(ListEntry, bytes)),
                },
            );
        }
        start += count as u64;
        if count == 0 || start >= total {
            return Some(all);
        }
    }
}

/// STATUS on `conn`.
fn status(conn: &Conn, within: Duration) -> Option<Snapshot> {
    let out = conn.call_within(Op::Status as u32, &[], &[], within);
    match answer(&conn.shared, out, "STATUS", &[], &[]) {
        Answer::Ok(body, _) => parse_status(&body),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Memory with known bytes.

/// A small, fast generator (splitmix64): every random choice of a run comes from its seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes of file `seed`, `len` long.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(&mix(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)).to_le_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

/// A memfd holding `pattern(seed, len)`.
fn memfd(seed: u64, len: usize) -> Result<OwnedFd, SysErrno> {
    let fd = rustix::fs::memfd_create("luo-crash", rustix::fs::MemfdFlags::CLOEXEC)?;
    let bytes = pattern(seed, len);
    let mut done = 0;
    while done < len {
        let n = rustix::io::pwrite(&fd, &bytes[done..], done as u64)?;
        if n == 0 {
            return Err(SysErrno::IO);
        }
        done += n;
    }
    Ok(fd)
}

/// Checks that `fd` holds exactly `pattern(seed, len)`.
fn holds(fd: &OwnedFd, file: &FileModel) -> Result<(), String> {
    let size = rustix::fs::fstat(fd)
        .map_err(|e| format!("fstat: {e}"))?
        .st_size as u64;
    if size != file.len as u64 {
        return Err(format!("{size} bytes, {} preserved", file.len));
    }
    let want = pattern(file.seed, file.len);
    let mut got = vec![0u8; file.len];
    let mut done = 0;
    while done < file.len {
        match rustix::io::pread(fd, &mut got[done..], done as u64) {
            Ok(0) => return Err(format!("ends at {done}")),
            Ok(n) => done += n,
            Err(e) => return Err(format!("pread: {e}")),
        }
    }
    match got.iter().zip(&want).position(|(a, b)| a != b) {
        Some(at) => Err(format!("differs from byte {at} on")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The record.

/// Where a session is, as acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Outgoing,
    /// Handed off (or carried over by a reboot), not retrieved.
    Incoming,
    Retrieved,
}

impl Stage {
    /// LIST's flags for it.
    fn flags(self) -> u32 {
        match self {
            Stage::Outgoing => 0,
            Stage::Incoming => LIST_INCOMING,
            Stage::Retrieved => LIST_INCOMING | LIST_RETRIEVED,
        }
    }
}

/// One preserved file: its bytes are `pattern(seed, len)`.
#[derive(Clone, Copy, Debug)]
struct FileModel {
    seed: u64,
    len: usize,
}

#[derive(Debug)]
struct SessionModel {
    stage: Stage,
    /// The session's connection (none once handed off, or after a reboot).
    conn: Option<Conn>,
    files: BTreeMap<u64, FileModel>,
    /// Files retrieved (and checked) since the session was retrieved.
    retrieved: BTreeSet<u64>,
    next_token: u64,
}

impl SessionModel {
    fn listed(&self) -> Listed {
        Listed {
            flags: self.stage.flags(),
            files: self.files.len() as u64,
            bytes: self.files.values().map(|f| f.len as u64).sum(),
        }
    }
}

/// One uid's part of the record.
#[derive(Debug, Default)]
struct OwnerState {
    device: Option<Conn>,
    sessions: BTreeMap<String, SessionModel>,
    /// Names whose fate is unknown (a request on them went unanswered or was refused): not
    /// checked any more.
    ignored: BTreeSet<String>,
    /// Connections done with (handed off, finished) kept until the next drain, so that a
    /// second reply on them is still seen.
    lingering: Vec<Conn>,
    created: u64,
}

#[derive(Debug)]
struct Owner {
    uid: u32,
    state: Mutex<OwnerState>,
}

impl Owner {
    fn new(uid: u32) -> Owner {
        Owner {
            uid,
            state: Mutex::new(OwnerState::default()),
        }
    }
}

/// What every thread of a run shares.
#[derive(Debug)]
struct Ctx {
    shared: Arc<Shared>,
    socket: PathBuf,
    gate: Gate,
    /// Owner 0 is the load (root); then the clients.
    owners: Vec<Arc<Owner>>,
    probe: Probe,
}

impl OwnerState {
    /// Opens the device if there is none; false if luod did not give one.
    fn ensure_device(&mut self, ctx: &Ctx) -> bool {
        if self.device.is_some() {
            return true;
        }
        let Some(conn) = Conn::connect(&ctx.socket, &ctx.shared) else {
            return false;
        };
        let out = conn.call(Op::OpenDevice as u32, &[], &[]);
        if let Answer::Ok(..) = answer(&ctx.shared, out, "OPEN_DEVICE", &[], &[]) {
            self.device = Some(conn);
        }
        self.device.is_some()
    }

    /// Keeps a connection done with (a handed-off or finished session's) for a last read, so
    /// that a second reply on it is still seen.
    fn linger(&mut self, conn: Conn, shared: &Shared) {
        if self.lingering.len() >= LINGER {
            last_read(self.lingering.remove(0), shared);
        }
        self.lingering.push(conn);
    }

    /// The sessions `f` selects.
    fn names(&self, f: impl Fn(&SessionModel) -> bool) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Drops `name` from the record: what luod did with it is unknown.
    fn forget(&mut self, name: &str) {
        self.sessions.remove(name);
        self.ignored.insert(name.to_owned());
    }

    /// After a request on the device went unanswered.
    fn device_failed(&mut self, a: &Answer) {
        if matches!(a, Answer::Cut | Answer::NoReply) {
            self.device = None;
        }
    }

    fn create(&mut self, ctx: &Ctx, name: String) {
        if !self.ensure_device(ctx) {
            return;
        }
        let Some(dev) = self.device.as_ref() else {
            return;
        };
        let out = dev.call(uapi::LIVEUPDATE_IOCTL_CREATE_SESSION, &name_arg(&name), &[]);
        match answer(&ctx.shared, out, "CREATE_SESSION", &[Errno::EEXIST], &[]) {
            Answer::Ok(_, mut fds) => match fds.pop() {
                Some(fd) => {
                    let conn = Conn::adopt(fd, &ctx.shared);
                    self.sessions.insert(
                        name,
                        SessionModel {
                            stage: Stage::Outgoing,
                            conn: Some(conn),
                            files: BTreeMap::new(),
                            retrieved: BTreeSet::new(),
                            next_token: 1,
                        },
                    );
                }
                None => {
                    ctx.shared.fault(Fault::Unexpected, 1, || {
                        format!("CREATE_SESSION {name}: no session descriptor")
                    });
                    self.ignored.insert(name);
                }
            },
            Answer::Cut => self.device = None,
            a => {
                self.device_failed(&a);
                self.ignored.insert(name);
            }
        }
    }

    fn preserve(&mut self, ctx: &Ctx, name: &str, rng: &mut Rng, max_len: u64) {
        let file = FileModel {
            seed: rng.next(),
            len: 1 + rng.below(max_len) as usize,
        };
        let fd = match memfd(file.seed, file.len) {
            Ok(fd) => fd,
            Err(e) => {
                ctx.shared
                    .fault(Fault::Unexpected, 1, || format!("memfd_create: {e}"));
                return;
            }
        };
        let Some(s) = self.sessions.get_mut(name) else {
            return;
        };
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        let token = s.next_token;
        s.next_token += 1;
        let out = conn.call(
            uapi::LIVEUPDATE_SESSION_PRESERVE_FD,
            &token_arg(token),
            &[fd.as_fd()],
        );
        // Only luod's copy is left.
        drop(fd);
        let what = format!("PRESERVE_FD {name}/{token}");
        match answer(&ctx.shared, out, &what, &[Errno::EEXIST, Errno::EBUSY], &[]) {
            Answer::Ok(..) => {
                s.files.insert(token, file);
            }
            Answer::Cut => s.conn = None,
            _ => self.forget(name),
        }
    }

    /// Preserves `files` new memfds in `name` with pipelined requests (the load).
    fn preserve_many(&mut self, ctx: &Ctx, name: &str, files: usize, rng: &mut Rng) {
        let Some(s) = self.sessions.get_mut(name) else {
            return;
        };
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        let mut made = Vec::with_capacity(files);
        for _ in 0..files {
            let file = FileModel {
                seed: rng.next(),
                len: 1 + rng.below(LOAD_FILE_MAX) as usize,
            };
            match memfd(file.seed, file.len) {
                Ok(fd) => made.push((s.next_token, file, fd)),
                Err(e) => ctx
                    .shared
                    .fault(Fault::Unexpected, 1, || format!("memfd_create: {e}")),
            }
            s.next_token += 1;
        }
        let reqs: Vec<(u32, Vec<u8>, Option<BorrowedFd<'_>>)> = made
            .iter()
            .map(|(token, _, fd)| {
                (
                    uapi::LIVEUPDATE_SESSION_PRESERVE_FD,
                    token_arg(*token),
                    Some(fd.as_fd()),
                )
            })
            .collect();
        let outcomes = conn.call_many(&reqs);
        drop(reqs);
        let mut doubtful = false;
        for ((token, file, _), out) in made.iter().zip(outcomes) {
            let what = format!("PRESERVE_FD {name}/{token}");
            match answer(&ctx.shared, out, &what, &[Errno::EEXIST, Errno::EBUSY], &[]) {
                Answer::Ok(..) => {
                    s.files.insert(*token, *file);
                }
                _ => doubtful = true,
            }
        }
        if doubtful {
            self.forget(name);
        }
    }

    fn handoff(&mut self, ctx: &Ctx, name: &str) {
        let Some(s) = self.sessions.get_mut(name) else {
            return;
        };
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        let out = conn.call(Op::Handoff as u32, &[], &[]);
        match answer(
            &ctx.shared,
            out,
            &format!("HANDOFF {name}"),
            &[Errno::EINVAL],
            &[],
        ) {
            Answer::Ok(..) => {
                s.stage = Stage::Incoming;
                if let Some(c) = s.conn.take() {
                    self.linger(c, &ctx.shared);
                }
            }
            Answer::Cut => s.conn = None,
            _ => self.forget(name),
        }
    }

    fn retrieve_session(&mut self, ctx: &Ctx, uid: u32, name: &str) {
        if !self.ensure_device(ctx) {
            return;
        }
        let Some(dev) = self.device.as_ref() else {
            return;
        };
        let out = dev.call(
            uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            &name_arg(name),
            &[],
        );
        let what = format!("RETRIEVE_SESSION {name}");
        match answer(&ctx.shared, out, &what, &[Errno::EINVAL], &[Errno::ENOENT]) {
            Answer::Ok(_, mut fds) => {
                let Some(s) = self.sessions.get_mut(name) else {
                    return;
                };
                match fds.pop() {
                    Some(fd) => {
                        s.stage = Stage::Retrieved;
                        s.conn = Some(Conn::adopt(fd, &ctx.shared));
                        s.retrieved.clear();
                    }
                    None => {
                        ctx.shared.fault(Fault::Unexpected, 1, || {
                            format!("{what}: no session descriptor")
                        });
                        self.forget(name);
                    }
                }
            }
            Answer::Refused(Errno::ENOENT) => {
                if let Some(s) = self.sessions.remove(name) {
                    ctx.shared
                        .fault(Fault::LostState, 1 + s.files.len() as u64, || {
                            format!(
                                "session {uid}/{name} (handed off, {} files) is gone",
                                s.files.len()
                            )
                        });
                }
            }
            Answer::Cut => self.device = None,
            a => {
                self.device_failed(&a);
                self.forget(name);
            }
        }
    }

    /// RETRIEVE_FD of `token`, and its bytes checked.
    fn retrieve_file(&mut self, ctx: &Ctx, uid: u32, name: &str, token: u64) {
        let Some(s) = self.sessions.get_mut(name) else {
            return;
        };
        let (Some(conn), Some(file)) = (s.conn.as_ref(), s.files.get(&token).copied()) else {
            return;
        };
        let out = conn.call(uapi::LIVEUPDATE_SESSION_RETRIEVE_FD, &token_arg(token), &[]);
        let what = format!("RETRIEVE_FD {uid}/{name}/{token}");
        match answer(&ctx.shared, out, &what, &[], &[Errno::ENOENT]) {
            Answer::Ok(_, mut fds) => {
                let Some(fd) = fds.pop() else {
                    ctx.shared
                        .fault(Fault::Unexpected, 1, || format!("{what}: no descriptor"));
                    return;
                };
                ctx.shared.checked.fetch_add(1, Ordering::Relaxed);
                s.retrieved.insert(token);
                if let Err(e) = holds(&fd, &file) {
                    ctx.shared
                        .fault(Fault::LostState, 1, || format!("{what}: {e}"));
                }
            }
            Answer::Refused(Errno::ENOENT) => {
                ctx.shared
                    .fault(Fault::LostState, 1, || format!("{what}: the file is gone"));
                s.files.remove(&token);
            }
            Answer::Cut => s.conn = None,
            _ => self.forget(name),
        }
    }

    /// FINISH: the session leaves the record; its connection lingers until the next drain.
    fn finish(&mut self, ctx: &Ctx, name: &str) {
        let Some(s) = self.sessions.get_mut(name) else {
            return;
        };
        let Some(conn) = s.conn.as_ref() else {
            return;
        };
        let out = conn.call(uapi::LIVEUPDATE_SESSION_FINISH, &finish_arg(), &[]);
        let what = format!("FINISH {name}");
        match answer(
            &ctx.shared,
            out,
            &what,
            &[Errno::EINVAL, Errno::ENOENT],
            &[],
        ) {
            Answer::Ok(..) => {
                if let Some(c) = self.sessions.remove(name).and_then(|s| s.conn) {
                    self.linger(c, &ctx.shared);
                }
            }
            Answer::Cut => s.conn = None,
            _ => self.forget(name),
        }
    }

    /// One random request of a client.
    fn step(&mut self, ctx: &Ctx, uid: u32, rng: &mut Rng) -> bool {
        if !self.ensure_device(ctx) {
            return false;
        }
        let with_conn = |stage: Stage, s: &SessionModel| s.stage == stage && s.conn.is_some();
        let open = self.names(|s| with_conn(Stage::Outgoing, s));
        let roomy = self.names(|s| with_conn(Stage::Outgoing, s) && s.files.len() < SESSION_FILES);
        let waiting = self.names(|s| s.stage == Stage::Incoming);
        let retrieved = self.names(|s| with_conn(Stage::Retrieved, s));
        // (weight, sessions it applies to): create, preserve, handoff, close, retrieve the
        // session, retrieve a file (or finish once every file is), finish.
        let room = self.sessions.len() < CLIENT_SESSIONS;
        let choices: [(u64, &[String]); 7] = [
            (if room { 3 } else { 0 }, &[]),
            (8, &roomy),
            (2, &open),
            (1, &open),
            (3, &waiting),
            (6, &retrieved),
            (1, &retrieved),
        ];
        let weights: Vec<u64> = choices
            .iter()
            .enumerate()
            .map(|(i, (w, n))| if i == 0 || !n.is_empty() { *w } else { 0 })
            .collect();
        let mut pick = rng.below(weights.iter().sum());
        let Some(choice) = weights.iter().position(|&w| {
            let here = pick < w;
            pick = pick.saturating_sub(w);
            here
        }) else {
            return false;
        };
        let one =
            |list: &[String], rng: &mut Rng| list[rng.below(list.len() as u64) as usize].clone();
        match choice {
            0 => {
                self.created += 1;
                let name = format!("c{uid}-{}", self.created);
                self.create(ctx, name);
            }
            1 => self.preserve(ctx, &one(&roomy, rng), rng, CLIENT_FILE_MAX),
            2 => self.handoff(ctx, &one(&open, rng)),
            3 => {
                // Closing an outgoing session discards it: no request, no reply.
                self.sessions.remove(&one(&open, rng));
            }
            4 => self.retrieve_session(ctx, uid, &one(&waiting, rng)),
            5 => {
                let name = one(&retrieved, rng);
                let left: Vec<u64> = self
                    .sessions
                    .get(&name)
                    .map(|s| {
                        s.files
                            .keys()
                            .filter(|t| !s.retrieved.contains(t))
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default();
                match left.get(rng.below(left.len() as u64) as usize) {
                    Some(&token) => self.retrieve_file(ctx, uid, &name, token),
                    None => self.finish(ctx, &name),
                }
            }
            // Finish, discarding the files not retrieved.
            _ => self.finish(ctx, &one(&retrieved, rng)),
        }
        true
    }

    /// Hands off, retrieves, checks every file of, and finishes every session.
    fn settle(&mut self, ctx: &Ctx, uid: u32) {
        for _ in 0..100 {
            if self.ensure_device(ctx) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for name in self.names(|s| s.stage == Stage::Outgoing) {
            self.handoff(ctx, &name);
        }
        for name in self.names(|s| s.stage == Stage::Incoming) {
            self.retrieve_session(ctx, uid, &name);
        }
        for name in self.names(|s| s.stage == Stage::Retrieved) {
            let tokens: Vec<u64> = self
                .sessions
                .get(&name)
                .map(|s| s.files.keys().copied().collect())
                .unwrap_or_default();
            for token in tokens {
                self.retrieve_file(ctx, uid, &name, token);
            }
            self.finish(ctx, &name);
        }
    }

    /// Reads every connection for replies nobody asked for; a connection luod closed is
    /// counted and dropped (its session stays in the record, to be checked).
    fn drain(&mut self, shared: &Shared) {
        let cut = |what: String| shared.fault(Fault::Cut, 1, || what);
        if self.device.as_ref().is_some_and(|d| !d.drain()) {
            cut("the device connection".to_owned());
            self.device = None;
        }
        for (name, s) in &mut self.sessions {
            if s.conn.as_ref().is_some_and(|c| !c.drain()) {
                cut(format!("the connection of session {name}"));
                s.conn = None;
            }
        }
        for c in self.lingering.drain(..) {
            last_read(c, shared);
        }
    }

    /// A reboot as `docs/operations.md` describes it: every connection cut, outgoing sessions
    /// incoming, every other one gone.
    fn rebooted(&mut self) {
        self.device = None;
        self.lingering.clear();
        self.sessions.retain(|_, s| s.stage == Stage::Outgoing);
        for s in self.sessions.values_mut() {
            s.stage = Stage::Incoming;
            s.conn = None;
        }
    }
}

/// Reads a handed-off or finished session's connection one last time (luod keeps those open
/// too), and closes it.
fn last_read(conn: Conn, shared: &Shared) {
    if !conn.drain() {
        shared.fault(Fault::Cut, 1, || {
            "a handed-off or finished session's connection".to_owned()
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Threads: the clients, the probe, and the gate that stops them between two requests.

/// Stops the clients and the probe between two requests, so that the killer can verify (and
/// reboot) against a record nobody changes.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    stopping: bool,
    members: usize,
    parked: usize,
}

impl Gate {
    fn join(&self) {
        lock(&self.state).members += 1;
    }

    fn leave(&self) {
        lock(&self.state).members -= 1;
        self.cv.notify_all();
    }

    /// A member's turn: waits while paused. False when the run stops.
    fn enter(&self) -> bool {
        let mut g = lock(&self.state);
        if g.paused && !g.stopping {
            g.parked += 1;
            self.cv.notify_all();
            while g.paused && !g.stopping {
                g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            g.parked -= 1;
        }
        !g.stopping
    }

    /// Stops every member at its next turn; false if one did not stop `within`.
    fn pause(&self, within: Duration) -> bool {
        let mut g = lock(&self.state);
        g.paused = true;
        let (g, _) = self
            .cv
            .wait_timeout_while(g, within, |g| g.parked < g.members)
            .unwrap_or_else(PoisonError::into_inner);
        g.parked >= g.members
    }

    fn resume(&self) {
        lock(&self.state).paused = false;
        self.cv.notify_all();
    }

    fn stop(&self) {
        lock(&self.state).stopping = true;
        self.cv.notify_all();
    }

    /// Waits until every member has left; false if one did not `within`.
    fn wait_empty(&self, within: Duration) -> bool {
        let g = lock(&self.state);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, within, |g| g.members > 0)
            .unwrap_or_else(PoisonError::into_inner);
        g.members == 0
    }
}

/// A client: random requests until the run stops, then its sessions settled.
fn client(ctx: Arc<Ctx>, owner: Arc<Owner>, seed: u64) {
    let uid = rustix::process::Uid::from_raw(owner.uid);
    // Credentials are per thread in Linux: only this thread changes uid.
    if let Err(e) = rustix::thread::set_thread_res_uid(uid, uid, uid) {
        ctx.shared.fault(Fault::Unexpected, 1, || {
            format!("client {}: setresuid: {e}", owner.uid)
        });
        ctx.gate.leave();
        return;
    }
    let mut rng = Rng(seed);
    while ctx.gate.enter() {
        let progressed = lock(&owner.state).step(&ctx, owner.uid, &mut rng);
        if !progressed {
            // No luod to talk to at the moment.
            thread::sleep(Duration::from_millis(5));
        }
    }
    lock(&owner.state).settle(&ctx, owner.uid);
    ctx.gate.leave();
}

/// STATUS in a loop on one connection, which must survive every kill: when each server pid
/// first answered.
#[derive(Debug, Default)]
struct Probe {
    conn: Mutex<Option<Conn>>,
    seen: Mutex<Vec<(Instant, u32)>>,
}

impl Probe {
    /// When a server other than `old` first answered the probe after `t0`.
    fn first_after(&self, t0: Instant, old: u32) -> Option<Instant> {
        lock(&self.seen)
            .iter()
            .find(|(t, pid)| *t >= t0 && *pid != old)
            .map(|(t, _)| *t)
    }
}

fn prober(ctx: Arc<Ctx>) {
    while ctx.gate.enter() {
        let mut conn = lock(&ctx.probe.conn);
        if conn.is_none() {
            *conn = Conn::connect(&ctx.socket, &ctx.shared);
        }
        let Some(c) = conn.as_ref() else {
            drop(conn);
            thread::sleep(Duration::from_millis(2));
            continue;
        };
        let out = c.call(Op::Status as u32, &[], &[]);
        match answer(&ctx.shared, out, "STATUS (the probe)", &[], &[]) {
            Answer::Ok(body, _) => {
                if let Some(s) = parse_status(&body) {
                    let mut seen = lock(&ctx.probe.seen);
                    if seen.last().is_none_or(|(_, pid)| *pid != s.pid) {
                        seen.push((Instant::now(), s.pid));
                    }
                }
            }
            Answer::Refused(_) => {}
            Answer::Cut | Answer::NoReply => *conn = None,
        }
        drop(conn);
        thread::sleep(Duration::from_millis(1));
    }
    ctx.gate.leave();
}

// ---------------------------------------------------------------------------------------------
// luod's processes.

/// A process watched through a pidfd (no pid reuse can fool it).
#[derive(Debug)]
struct Watched {
    pid: u32,
    fd: OwnedFd,
}

impl Watched {
    fn open(pid: u32) -> Option<Watched> {
        let p = Pid::from_raw(i32::try_from(pid).ok()?)?;
        let fd = rustix::process::pidfd_open(p, PidfdFlags::empty()).ok()?;
        Some(Watched { pid, fd })
    }

    /// True once the process has exited (waiting up to `within`).
    fn exited(&self, within: Duration) -> bool {
        let mut pfd = [PollFd::new(&self.fd, PollFlags::IN)];
        let t = Timespec {
            tv_sec: within.as_secs() as i64,
            tv_nsec: i64::from(within.subsec_nanos()),
        };
        matches!(poll(&mut pfd, Some(&t)), Ok(n) if n > 0)
    }

    fn kill(&self) -> bool {
        rustix::process::pidfd_send_signal(&self.fd, Signal::KILL).is_ok()
    }
}

/// The luod this run drives: the process it started, and every luod process seen since, each
/// held by a pidfd, so that no signal ever reaches a process that merely reused a pid.
#[derive(Debug)]
struct Daemon {
    luod: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    filter: String,
    shared: Arc<Shared>,
    child: Option<Child>,
    /// luod's main process: its keeper (or, without one, its only process).
    keeper: Option<Watched>,
    /// Every luod process seen (servers, successors) that has not exited yet.
    procs: Vec<Watched>,
}

impl Daemon {
    fn start(opts: &Options, socket: &Path, shared: &Arc<Shared>) -> Result<Daemon, String> {
        let mut d = Daemon {
            luod: opts.luod.clone(),
            socket: socket.to_owned(),
            log: opts.dir.join("luod.log"),
            filter: opts.log_filter.clone(),
            shared: Arc::clone(shared),
            child: None,
            keeper: None,
            procs: Vec::new(),
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(&self.luod)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--socket-mode", "0666", "--log", &self.filter])
            // A successor started by an upgrade gets `--takeover` only: the environment
            // carries the filter to it.
            .env("LUOD_LOG", &self.filter)
            .env("LUOD_FAILPOINTS", "1")
            .env_remove("LUOD_SOCKET")
            .env_remove("LUOD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("Cannot start {}: {e}", self.luod.display()))?;
        // Not reaped yet, so its pid is still its own.
        self.keeper = Watched::open(child.id());
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(s) = Conn::connect(&self.socket, &self.shared)
                .and_then(|c| status(&c, Duration::from_secs(2)))
            {
                self.note(&s);
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("luod exited at start ({st}):\n{}", self.log_tail()));
            }
            if t0.elapsed() > START {
                return Err(format!("luod did not answer within {START:?}"));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Takes note of the processes a STATUS names (it came from them: they ran just now).
    fn note(&mut self, s: &Snapshot) {
        let keeper = if s.keeper_pid != 0 {
            s.keeper_pid
        } else {
            s.pid
        };
        if self.keeper.as_ref().is_none_or(|k| k.pid != keeper) {
            self.keeper = Watched::open(keeper);
        }
        for pid in [s.pid, keeper] {
            if !self.procs.iter().any(|w| w.pid == pid)
                && let Some(w) = Watched::open(pid)
            {
                self.procs.push(w);
            }
        }
    }

    fn keeper_alive(&self) -> bool {
        self.keeper
            .as_ref()
            .is_some_and(|k| !k.exited(Duration::ZERO))
    }

    /// Reaps every exited luod process that is this process's child (the one it started, and
    /// successors orphaned by their server's end, adopted as their subreaper), and forgets
    /// the exited ones.
    fn reap(&mut self) {
        if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
            self.child = None;
        }
        let first = self.child.as_ref().map(Child::id);
        let mut zombies: Vec<u32> = self
            .procs
            .iter()
            .filter(|w| Some(w.pid) != first && w.exited(Duration::ZERO))
            .map(|w| w.pid)
            .collect();
        zombies.extend(zombie_luod_children());
        for pid in zombies {
            if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
        self.procs.retain(|w| !w.exited(Duration::ZERO));
    }

    /// True once every luod process of this run has exited, reaping them, within `within`.
    fn gone_within(&mut self, within: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            self.reap();
            if self.procs.is_empty() && !self.keeper_alive() {
                return true;
            }
            if t0.elapsed() > within {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops every luod process of this run: SIGTERM to its main process, then SIGKILL to
    /// whatever is left.
    fn stop(&mut self) {
        if let Some(k) = &self.keeper {
            let _ = rustix::process::pidfd_send_signal(&k.fd, Signal::TERM);
        }
        if !self.gone_within(Duration::from_secs(5)) {
            for w in self.procs.iter().chain(&self.keeper) {
                w.kill();
            }
            self.gone_within(Duration::from_secs(5));
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
        self.keeper = None;
    }

    /// A fresh luod on the same socket, after this one died.
    fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This process's zombie children that were luod processes (a successor an upgrade started,
/// orphaned when the server that started it died, lands here).
fn zombie_luod_children() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains("(luod") && stat.contains(") Z") {
                out.push(pid);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The killer.

/// What a request made by a helper thread (an UPGRADE or a REBOOT that a failpoint interrupts)
/// got.
#[derive(Debug)]
enum Told {
    Errno(i32),
    Nothing(&'static str),
}

fn tell(out: Outcome) -> Told {
    match out {
        Outcome::Reply { errno, .. } => Told::Errno(errno),
        Outcome::Cut => Told::Nothing("the connection was cut before the request"),
        Outcome::Closed => Told::Nothing("the connection closed instead of a reply"),
        Outcome::Timeout => Told::Nothing("no reply in time"),
        Outcome::Failed(_) => Told::Nothing("the request failed"),
    }
}

/// An UPGRADE or REBOOT sent past a failpoint ([`Harness::send_past`]).
struct Sent {
    /// luod's status before.
    before: Snapshot,
    /// The server it was sent to.
    server: Watched,
    death: Death,
    told: Told,
}

/// How the end of a server was taken.
enum Death {
    /// Not a kill: the request that passes the failpoint ended the server itself.
    None,
    /// A kill, and a new server answered.
    Recovered,
    /// A kill, and luod is gone (or does not answer): a fresh one is needed.
    Gone,
}

/// How a kill ended.
enum Recovery {
    /// A new server answered, this long after the kill.
    Answered(Duration, Snapshot),
    /// luod is gone as a whole.
    Gone,
    /// Nobody answered in time.
    Stuck,
}

#[derive(Debug)]
struct Harness {
    opts: Options,
    ctx: Arc<Ctx>,
    daemon: Daemon,
    /// The killer's own connection.
    control: Option<Conn>,
    rng: Rng,
    report: Report,
    threads: Vec<JoinHandle<()>>,
    load_builds: u64,
    failpoint_turn: usize,
    /// When the harness last saw a new server answer (after a kill, an upgrade or a reboot).
    new_server: Option<Instant>,
    /// How the last kill came (a failpoint's name, or "random"), for the progress notes.
    last_kill: &'static str,
}

impl Harness {
    fn go(&mut self) -> Result<(), String> {
        let first = self.need_status("at the start")?;
        self.report.keeper = first.keeper_pid != 0 && first.keeper_pid != first.pid;
        if self.opts.progress {
            eprintln!(
                "crash: luod {} (keeper {}), seed {}",
                first.pid, first.keeper_pid, self.opts.seed
            );
        }
        self.arm("after-apply", 0)
            .map_err(|e| format!("luod refuses failpoints: {e}"))?;
        self.build_load()?;
        for (i, owner) in self.ctx.owners.iter().enumerate().skip(1) {
            self.ctx.gate.join();
            let (ctx, owner) = (Arc::clone(&self.ctx), Arc::clone(owner));
            let seed = mix(self.opts.seed ^ i as u64);
            self.threads
                .push(thread::spawn(move || client(ctx, owner, seed)));
        }
        self.ctx.gate.join();
        let ctx = Arc::clone(&self.ctx);
        self.threads.push(thread::spawn(move || prober(ctx)));
        let t0 = Instant::now();
        let faults = |h: &Harness| {
            [
                Fault::LostState,
                Fault::LostReply,
                Fault::Cut,
                Fault::Unexpected,
            ]
            .map(|f| h.ctx.shared.count(f))
        };
        let mut before = faults(self);
        for round in 1..=self.opts.rounds {
            if t0.elapsed() > self.opts.deadline {
                self.note(format!("deadline reached after {} rounds", round - 1));
                break;
            }
            self.round(round)?;
            self.report.rounds = round;
            // Where things went wrong first is what a reader of the progress needs.
            let now = faults(self);
            if now != before {
                let d: Vec<u64> = now.iter().zip(before).map(|(a, b)| a - b).collect();
                self.note(format!(
                    "round {round} ({:.1} s): lost state +{}, lost replies +{}, cut +{}, \
                     unexpected +{} (last kill: {})",
                    t0.elapsed().as_secs_f64(),
                    d[0],
                    d[1],
                    d[2],
                    d[3],
                    self.last_kill
                ));
                before = now;
            }
            if self.opts.progress && round % 50 == 0 {
                eprintln!(
                    "crash: {round} rounds, {} kills, lost {}, duplicated {}, {:.0} s",
                    self.report.kills,
                    self.ctx.shared.count(Fault::LostState)
                        + self.ctx.shared.count(Fault::LostReply),
                    self.ctx.shared.count(Fault::Duplicated),
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        // The end: every client settles its sessions, then the load is settled, and luod must
        // hold nothing the record does not.
        self.ctx.gate.stop();
        if !self.ctx.gate.wait_empty(self.stuck_after()) {
            return Err("a client did not finish".to_owned());
        }
        let load = Arc::clone(&self.ctx.owners[0]);
        lock(&load.state).settle(&self.ctx, 0);
        self.verify();
        Ok(())
    }

    /// Waits until the newest server has served [`Options::min_life`].
    fn let_live(&self) {
        if let Some(t) = self.new_server {
            thread::sleep(self.opts.min_life.saturating_sub(t.elapsed()));
        }
    }

    fn round(&mut self, round: u64) -> Result<(), String> {
        if self.opts.kill {
            self.let_live();
        }
        self.ctx.gate.resume();
        let wait = self.rng.below(self.opts.window.as_micros() as u64);
        thread::sleep(Duration::from_micros(wait));
        if self.opts.kill {
            // Failpoint kills spread evenly over the rounds; the first go through every point.
            let pct = self.opts.failpoint_percent;
            let at_failpoint = round * pct / 100 > (round - 1) * pct / 100;
            let killed = if at_failpoint {
                let point = if self.failpoint_turn < FAILPOINTS.len() {
                    FAILPOINTS[self.failpoint_turn]
                } else {
                    FAILPOINTS[self.rng.below(FAILPOINTS.len() as u64) as usize]
                };
                self.failpoint_turn += 1;
                match point {
                    "reboot-frozen" => self.reboot(Some(point))?,
                    "upgrade-staged" | "upgrade-ready" => self.upgrade(Some(point))?,
                    _ => self.kill_at(point)?,
                }
            } else {
                false
            };
            // A failpoint that did not fire: the round's kill comes at random.
            if !killed {
                self.kill_random()?;
            }
        }
        if round.is_multiple_of(self.opts.upgrade_every) {
            self.upgrade(None)?;
            self.new_server = Some(Instant::now());
        }
        if round.is_multiple_of(self.opts.reboot_every) {
            self.reboot(None)?;
            self.new_server = Some(Instant::now());
        }
        if round.is_multiple_of(self.opts.verify_every) {
            self.pause()?;
            self.verify();
        }
        Ok(())
    }

    fn note(&mut self, what: String) {
        if self.opts.progress {
            eprintln!("crash: {what}");
        }
    }

    /// How long a member may take to reach its next turn: a reply's timeout and some.
    fn stuck_after(&self) -> Duration {
        self.opts.reply_timeout * 2 + Duration::from_secs(5)
    }

    fn pause(&mut self) -> Result<(), String> {
        if self.ctx.gate.pause(self.stuck_after()) {
            Ok(())
        } else {
            Err("a client or the probe did not stop between two requests".to_owned())
        }
    }

    fn control(&mut self) -> Option<&Conn> {
        if self.control.is_none() {
            self.control = Conn::connect(&self.ctx.socket, &self.ctx.shared);
        }
        self.control.as_ref()
    }

    /// STATUS on the killer's connection, or on a new one if that one fails (a cut counts).
    fn status(&mut self) -> Option<Snapshot> {
        let within = self.opts.reply_timeout;
        for _ in 0..2 {
            let Some(conn) = self.control() else {
                continue;
            };
            match status(conn, within) {
                Some(s) => {
                    self.daemon.note(&s);
                    return Some(s);
                }
                None => self.control = None,
            }
        }
        None
    }

    /// [`status`](Self::status), or why there is none.
    fn need_status(&mut self, when: &str) -> Result<Snapshot, String> {
        self.status().ok_or_else(|| {
            let gone = if self.daemon.keeper_alive() {
                "its main process runs"
            } else {
                "its main process is gone"
            };
            format!("luod did not answer STATUS {when} ({gone})")
        })
    }

    fn arm(&mut self, point: &str, hit: u32) -> Result<(), String> {
        let conn = self.control().ok_or("no connection to luod")?;
        match conn.call(Op::Failpoint as u32, &failpoint_arg(point, hit), &[]) {
            Outcome::Reply { errno: 0, .. } => Ok(()),
            Outcome::Reply { errno, body, .. } => Err(format!(
                "FAILPOINT {point}: {} ({})",
                Errno(errno),
                String::from_utf8_lossy(&body)
            )),
            other => {
                self.control = None;
                Err(format!("FAILPOINT {point}: {other:?}"))
            }
        }
    }

    /// The server now, watched.
    fn server(&mut self) -> Result<Watched, String> {
        let s = self.need_status("before a kill")?;
        Watched::open(s.pid).ok_or_else(|| format!("server {} is gone", s.pid))
    }

    /// SIGKILL to the server at this instant.
    fn kill_random(&mut self) -> Result<(), String> {
        self.let_live();
        let server = self.server()?;
        let t0 = Instant::now();
        if !server.kill() {
            return Err(format!("cannot kill server {}", server.pid));
        }
        server.exited(Duration::from_secs(5));
        if let Death::Gone = self.died(t0, server.pid, None, None) {
            self.revive()?;
        }
        Ok(())
    }

    /// Arms `point` to fire within a few of the clients' requests and waits for the server to
    /// die there. False if it did not in time (it is disarmed).
    fn kill_at(&mut self, point: &'static str) -> Result<bool, String> {
        let server = self.server()?;
        let hit = 1 + self.rng.below(4) as u32;
        self.arm(point, hit)?;
        if !server.exited(self.opts.failpoint_wait) {
            // Disarm; it may fire meanwhile.
            let _ = self.arm(point, 0);
            if !server.exited(Duration::from_millis(50)) {
                self.unreached(point);
                return Ok(false);
            }
        }
        if let Death::Gone = self.died(Instant::now(), server.pid, Some(point), None) {
            self.revive()?;
        }
        Ok(true)
    }

    fn unreached(&mut self, point: &str) {
        self.report.failpoints_unreached += 1;
        self.note(format!("failpoint {point} did not fire"));
    }

    /// After server `pid` exited at `t0`: waits for the next server and counts the kill (at
    /// `point`, if one). With `restarts` (luod's count before an upgrade or a reboot, which end
    /// the old server themselves) the exit is a kill only if luod counts one more restart, or
    /// is gone.
    fn died(
        &mut self,
        t0: Instant,
        pid: u32,
        point: Option<&'static str>,
        restarts: Option<u32>,
    ) -> Death {
        self.last_kill = point.unwrap_or("random");
        let death = match self.recover(t0, pid) {
            Recovery::Answered(d, s) => {
                self.daemon.note(&s);
                self.daemon.reap();
                if restarts.is_some_and(|r| s.restarts <= r) {
                    // The request went through: its old server ended as it should.
                    self.new_server = Some(Instant::now());
                    self.unreached(point.unwrap_or("?"));
                    return Death::None;
                }
                self.report.recoveries.push(d);
                self.new_server = Some(Instant::now());
                Death::Recovered
            }
            Recovery::Gone => {
                self.report.keeper_deaths += 1;
                Death::Gone
            }
            Recovery::Stuck => {
                self.report.unrecovered += 1;
                self.ctx.shared.fault(Fault::Unexpected, 1, || {
                    format!(
                        "no server answered within {:?} of the end of {pid}",
                        self.opts.reply_timeout
                    )
                });
                Death::Gone
            }
        };
        self.report.kills += 1;
        if let Some(p) = point {
            self.report.failpoint_kills += 1;
            *self.report.failpoints_fired.entry(p).or_default() += 1;
        }
        death
    }

    /// Waits for a server other than `old` to answer STATUS on a fresh connection.
    fn recover(&mut self, t0: Instant, old: u32) -> Recovery {
        let deadline = t0 + self.opts.reply_timeout;
        let mut conn: Option<Conn> = None;
        let mut waiting: Option<u64> = None;
        while Instant::now() < deadline {
            if conn.is_none() {
                conn = Conn::connect(&self.ctx.socket, &self.ctx.shared);
                if conn.is_none() {
                    // Nobody holds the listening socket: without its keeper, luod is gone.
                    if !self.daemon.keeper_alive() {
                        return Recovery::Gone;
                    }
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            let Some(c) = conn.as_ref() else { continue };
            let id = match waiting {
                Some(id) => id,
                None => match c.send(Op::Status as u32, &[], &[]) {
                    Ok(id) => {
                        waiting = Some(id);
                        id
                    }
                    Err(_) => {
                        conn = None;
                        continue;
                    }
                },
            };
            match c.await_reply(id, Instant::now() + SLICE) {
                Outcome::Reply { errno: 0, body, .. } => {
                    waiting = None;
                    let at = Instant::now();
                    match parse_status(&body) {
                        Some(s) if s.pid != old => {
                            let first = self
                                .ctx
                                .probe
                                .first_after(t0, old)
                                .map_or(at, |p| p.min(at));
                            return Recovery::Answered(first - t0, s);
                        }
                        _ => thread::sleep(Duration::from_millis(1)),
                    }
                }
                // Still waiting (a successor that holds the socket may yet answer).
                Outcome::Timeout => {}
                _ => {
                    waiting = None;
                    conn = None;
                }
            }
        }
        Recovery::Stuck
    }

    /// After luod died as a whole: count what it had acknowledged (all of it is gone), start a
    /// fresh luod, and build the load again.
    fn revive(&mut self) -> Result<(), String> {
        self.pause()?;
        self.drain_all();
        self.daemon.restart()?;
        self.control = None;
        *lock(&self.ctx.probe.conn) = None;
        self.verify();
        for owner in &self.ctx.owners {
            let mut st = lock(&owner.state);
            st.device = None;
            st.sessions.clear();
            st.ignored.clear();
        }
        self.build_load()
    }

    /// An upgrade, with the clients running; with `point`, the old server dies at it. True if
    /// it did.
    fn upgrade(&mut self, point: Option<&'static str>) -> Result<bool, String> {
        let Sent { death, told, .. } = self.send_past(Op::Upgrade, "UPGRADE", point)?;
        match told {
            Told::Errno(0) => self.report.upgrades += 1,
            Told::Errno(e) => {
                self.report.upgrades_refused += 1;
                self.note(format!("upgrade refused: {}", Errno(e)));
            }
            Told::Nothing(why) => self
                .ctx
                .shared
                .fault(Fault::LostReply, 1, || format!("UPGRADE: {why}")),
        }
        if let Death::Gone = death {
            self.revive()?;
        } else {
            self.need_status("after an upgrade")?;
        }
        self.daemon.reap();
        Ok(!matches!(death, Death::None))
    }

    /// Sends `op` (UPGRADE or REBOOT, `name`) from a thread of its own, with `point` armed first, and
    /// waits for the point and for the reply.
    fn send_past(
        &mut self,
        op: Op,
        name: &str,
        point: Option<&'static str>,
    ) -> Result<Sent, String> {
        let before = self.need_status(&format!("before {name}"))?;
        let server = Watched::open(before.pid).ok_or("the server is gone")?;
        if let Some(p) = point {
            self.arm(p, 1)?;
        }
        let (socket, shared) = (self.ctx.socket.clone(), Arc::clone(&self.ctx.shared));
        let helper = thread::spawn(move || match Conn::connect(&socket, &shared) {
            Some(c) => tell(c.call(op as u32, &[], &[])),
            None => Told::Nothing("no connection"),
        });
        let death = self.await_point(point, &server, before.restarts);
        // The helper's connection counts until it is joined: before any fresh luod.
        let told = helper
            .join()
            .map_err(|_| format!("the thread sending {name} panicked"))?;
        Ok(Sent {
            before,
            server,
            death,
            told,
        })
    }

    /// With `point` armed and the request that passes it on its way: waits for `server` to
    /// end, and tells a kill at the point from the request's own end of it.
    fn await_point(
        &mut self,
        point: Option<&'static str>,
        server: &Watched,
        restarts: u32,
    ) -> Death {
        let Some(p) = point else {
            return Death::None;
        };
        if !server.exited(self.opts.reply_timeout) {
            self.unreached(p);
            return Death::None;
        }
        self.died(Instant::now(), server.pid, Some(p), Some(restarts))
    }

    /// A reboot, with the clients stopped; with `point`, the server dies at it. True if it
    /// did.
    fn reboot(&mut self, point: Option<&'static str>) -> Result<bool, String> {
        self.pause()?;
        self.verify();
        let Sent {
            before,
            server,
            death,
            told,
        } = self.send_past(Op::Reboot, "REBOOT", point)?;
        if let Death::Gone = death {
            if let Told::Nothing(why) = told {
                self.ctx
                    .shared
                    .fault(Fault::LostReply, 1, || format!("REBOOT: {why}"));
            }
            self.revive()?;
            return Ok(true);
        }
        if let Told::Errno(0) = told {
            // The old server ends once its successor serves; a connection it accepted in the
            // meantime would be cut with every other: reconnect after.
            server.exited(self.opts.reply_timeout);
        }
        // Every connection was cut (if the reboot happened): reconnect.
        self.control = None;
        let after = self.need_status("after a reboot")?;
        let rebooted = after.generation > before.generation;
        match (&told, rebooted) {
            (Told::Errno(0), true) => {}
            // Refused: nothing changed.
            (Told::Errno(e), false) if *e != 0 => {
                if point.is_none() {
                    self.note(format!("reboot refused: {}", Errno(*e)));
                }
            }
            (Told::Errno(e), _) => self.ctx.shared.fault(Fault::Unexpected, 1, || {
                format!(
                    "REBOOT answered {}, generation {} -> {}",
                    Errno(*e),
                    before.generation,
                    after.generation
                )
            }),
            (Told::Nothing(why), _) => self
                .ctx
                .shared
                .fault(Fault::LostReply, 1, || format!("REBOOT: {why}")),
        }
        if rebooted {
            self.report.reboots += 1;
            for owner in &self.ctx.owners {
                lock(&owner.state).rebooted();
            }
            *lock(&self.ctx.probe.conn) = None;
        }
        self.daemon.reap();
        self.verify();
        if rebooted {
            // The load's sessions came over as incoming: check and finish them, then hold a
            // fresh load.
            let load = Arc::clone(&self.ctx.owners[0]);
            lock(&load.state).settle(&self.ctx, 0);
            self.build_load()?;
        }
        Ok(!matches!(death, Death::None))
    }

    /// The load: root's sessions and memfds, held by luod.
    fn build_load(&mut self) -> Result<(), String> {
        let (sessions, files) = (self.opts.load_sessions, self.opts.load_files);
        self.load_builds += 1;
        let load = Arc::clone(&self.ctx.owners[0]);
        let mut st = lock(&load.state);
        if sessions == 0 {
            return Ok(());
        }
        if !st.ensure_device(&self.ctx) {
            return Err("root's device did not open".to_owned());
        }
        let names: Vec<String> = (0..sessions)
            .map(|i| format!("load-{}-{i}", self.load_builds))
            .collect();
        for name in &names {
            st.create(&self.ctx, name.clone());
        }
        for (i, name) in names.iter().enumerate() {
            let n = files / sessions + usize::from(i < files % sessions);
            st.preserve_many(&self.ctx, name, n, &mut self.rng);
        }
        self.report.load_sessions = st.sessions.len() as u64;
        self.report.load_files = st.sessions.values().map(|s| s.files.len() as u64).sum();
        Ok(())
    }

    fn drain_all(&mut self) {
        for owner in &self.ctx.owners {
            lock(&owner.state).drain(&self.ctx.shared);
        }
        let cut = |what: &str| {
            self.ctx
                .shared
                .fault(Fault::Cut, 1, || format!("{what}'s connection"))
        };
        let mut probe = lock(&self.ctx.probe.conn);
        if probe.as_ref().is_some_and(|c| !c.drain()) {
            cut("the probe");
            *probe = None;
        }
        drop(probe);
        if self.control.as_ref().is_some_and(|c| !c.drain()) {
            cut("the killer");
            self.control = None;
        }
    }

    /// The record against LIST and STATUS, with the clients stopped: differences are counted
    /// once (then the record follows luod).
    fn verify(&mut self) {
        self.drain_all();
        let t0 = Instant::now();
        loop {
            let diffs = self.compare();
            if diffs.is_empty() {
                return;
            }
            // A loss is final (luod applies a request before it answers); anything else may
            // be a close that has not reached luod yet.
            let fin = diffs.iter().all(|d| matches!(d.fault, Fault::LostState));
            if fin || t0.elapsed() > CONVERGE {
                for d in diffs {
                    self.ctx.shared.fault(d.fault, d.n, || d.what.clone());
                    let owner = self.ctx.owners.iter().find(|o| o.uid == d.uid);
                    if let (Some(owner), Some(name)) = (owner, d.name) {
                        let mut st = lock(&owner.state);
                        if d.gone {
                            st.sessions.remove(&name);
                        } else {
                            st.forget(&name);
                        }
                    }
                }
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// What LIST and STATUS show that the record does not.
    fn compare(&mut self) -> Vec<Diff> {
        let mut diffs = Vec::new();
        if self.control.is_none() {
            self.control = Conn::connect(&self.ctx.socket, &self.ctx.shared);
        }
        let Some(conn) = self.control.as_ref() else {
            diffs.push(Diff::luod("no connection to luod for LIST"));
            return diffs;
        };
        let Some(listed) = list(conn) else {
            diffs.push(Diff::luod("LIST did not answer"));
            return diffs;
        };
        let Some(s) = status(conn, self.opts.reply_timeout) else {
            diffs.push(Diff::luod("STATUS did not answer"));
            return diffs;
        };
        let mut expected = BTreeMap::new();
        let mut ignored = BTreeSet::new();
        for owner in &self.ctx.owners {
            let st = lock(&owner.state);
            for (name, m) in &st.sessions {
                expected.insert((owner.uid, name.clone()), m.listed());
            }
            ignored.extend(st.ignored.iter().map(|n| (owner.uid, n.clone())));
        }
        for ((uid, name), want) in &expected {
            let what = |w: &str| format!("session {uid}/{name}: {w}");
            let d = |fault, n, w: String, gone| Diff {
                fault,
                n,
                what: w,
                uid: *uid,
                name: Some(name.clone()),
                gone,
            };
            match listed.get(&(*uid, name.clone())) {
                None => diffs.push(d(
                    Fault::LostState,
                    1 + want.files,
                    what(&format!("gone with its {} files", want.files)),
                    true,
                )),
                Some(got) if got == want => {}
                Some(got) => {
                    let behind = got.flags < want.flags || got.files < want.files;
                    let w = what(&format!("luod shows {got:?}, acknowledged {want:?}"));
                    if behind || got.bytes != want.bytes {
                        let n = 1 + want.files.saturating_sub(got.files);
                        diffs.push(d(Fault::LostState, n, w, false));
                    } else {
                        diffs.push(d(Fault::Unexpected, 1, w, false));
                    }
                }
            }
        }
        for ((uid, name), got) in &listed {
            let key = (*uid, name.clone());
            if !expected.contains_key(&key) && !ignored.contains(&key) {
                diffs.push(Diff {
                    fault: Fault::Unexpected,
                    n: 1,
                    what: format!("session {uid}/{name} ({got:?}) was never acknowledged"),
                    uid: *uid,
                    name: Some(name.clone()),
                    gone: false,
                });
            }
        }
        // STATUS against LIST, and against the connections this process holds.
        let outgoing = listed.values().filter(|l| l.flags == 0).count() as u64;
        let totals = (
            outgoing,
            listed.len() as u64 - outgoing,
            listed.values().map(|l| l.files).sum::<u64>(),
            listed.values().map(|l| l.bytes).sum::<u64>(),
        );
        if (s.outgoing, s.incoming, s.files, s.bytes) != totals {
            diffs.push(Diff::luod(&format!(
                "STATUS shows (outgoing, incoming, files, bytes) {:?}, LIST {totals:?}",
                (s.outgoing, s.incoming, s.files, s.bytes)
            )));
        }
        let held = self.ctx.shared.open.load(Ordering::Relaxed);
        if s.clients as i64 != held {
            diffs.push(Diff::luod(&format!(
                "STATUS counts {} connections, the harness holds {held}",
                s.clients
            )));
        }
        self.report.restarts = u64::from(s.restarts);
        diffs
    }

    /// The report, with the counters of every thread.
    fn finish(&mut self, started: Instant) -> Report {
        let shared = &self.ctx.shared;
        let mut r = std::mem::take(&mut self.report);
        r.lost_state = shared.count(Fault::LostState);
        r.lost_replies = shared.count(Fault::LostReply);
        r.duplicated = shared.count(Fault::Duplicated);
        r.resent = shared.count(Fault::Resent);
        r.connections_cut = shared.count(Fault::Cut);
        r.unexpected = shared.count(Fault::Unexpected);
        r.ops = shared.ops.load(Ordering::Relaxed);
        r.files_checked = shared.checked.load(Ordering::Relaxed);
        r.notes = lock(&shared.notes).clone();
        r.elapsed = started.elapsed();
        r
    }
}

/// One disagreement between luod and the record.
#[derive(Debug)]
struct Diff {
    fault: Fault,
    n: u64,
    what: String,
    uid: u32,
    /// The session concerned, if one is.
    name: Option<String>,
    /// The session is gone from luod (else its fate is unknown).
    gone: bool,
}

impl Diff {
    fn luod(what: &str) -> Diff {
        Diff {
            fault: Fault::Unexpected,
            n: 1,
            what: what.to_owned(),
            uid: 0,
            name: None,
            gone: false,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The detectors alone, against a fake luod on a socket pair: a harness that cannot see a
    //! second reply, a missing one or a changed byte would pass against anything.

    use super::*;

    fn pair() -> (Conn, OwnedFd, Arc<Shared>) {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
        let shared = Arc::new(Shared::new(Duration::from_millis(200)));
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        (Conn::adopt(a, &shared), b, shared)
    }

    /// The fake luod: reads one request and answers it `times` times.
    fn answer_times(peer: &OwnedFd, times: usize) {
        let Ok(Recv::Message(m)) = transport::recv(peer.as_fd(), true) else {
            panic!("no request");
        };
        let (hdr, _) = wire::parse_request(&m.bytes).expect("request");
        for _ in 0..times {
            let mut reply = Vec::new();
            wire::write_reply(&mut reply, 0, hdr.id.get(), &[]);
            transport::send(peer.as_fd(), &reply, &[]).expect("send");
        }
    }

    #[test]
    fn a_second_reply_is_counted_as_resent() {
        let (conn, peer, shared) = pair();
        let server = thread::spawn(move || {
            answer_times(&peer, 2);
            answer_times(&peer, 1);
            peer
        });
        let first = conn.call(Op::Ping as u32, &[], &[]);
        assert!(matches!(first, Outcome::Reply { errno: 0, .. }));
        // The second reply to the first request arrives while the next one waits.
        let second = conn.call(Op::Ping as u32, &[], &[]);
        assert!(matches!(second, Outcome::Reply { errno: 0, .. }));
        let _peer = server.join().expect("server");
        assert_eq!(shared.count(Fault::Resent), 1);
        assert!(conn.drain(), "nothing more, and still open");
        assert_eq!(shared.count(Fault::Resent), 1);
    }

    #[test]
    fn a_second_reply_after_the_last_request_is_found_by_the_drain() {
        let (conn, peer, shared) = pair();
        let server = thread::spawn(move || {
            answer_times(&peer, 2);
            peer
        });
        assert!(matches!(
            conn.call(Op::Ping as u32, &[], &[]),
            Outcome::Reply { .. }
        ));
        let peer = server.join().expect("server");
        assert!(conn.drain());
        assert_eq!(shared.count(Fault::Resent), 1);
        drop(peer);
        assert!(!conn.drain(), "the fake luod hung up");
    }

    #[test]
    fn a_missing_reply_is_lost() {
        let (conn, peer, shared) = pair();
        let out = conn.call(Op::Ping as u32, &[], &[]);
        assert!(matches!(out, Outcome::Timeout), "{out:?}");
        assert!(matches!(
            answer(&shared, out, "PING", &[], &[]),
            Answer::NoReply
        ));
        drop(peer);
        let out = conn.call(Op::Ping as u32, &[], &[]);
        assert!(matches!(out, Outcome::Closed | Outcome::Cut), "{out:?}");
        answer(&shared, out, "PING", &[], &[]);
        assert_eq!(shared.count(Fault::LostReply) + shared.count(Fault::Cut), 2);
    }

    #[test]
    fn a_changed_byte_is_found() {
        let file = FileModel {
            seed: 7,
            len: 10_001,
        };
        let fd = memfd(file.seed, file.len).expect("memfd");
        assert_eq!(holds(&fd, &file), Ok(()));
        rustix::io::pwrite(&fd, &[0x5a ^ pattern(7, 4_001)[4_000]], 4_000).expect("pwrite");
        assert_eq!(
            holds(&fd, &file),
            Err("differs from byte 4000 on".to_owned())
        );
        let short = FileModel {
            len: 10_000,
            ..file
        };
        assert!(holds(&fd, &short).is_err());
    }
}
