//! The `luod-kexec` scenario: luod forwards a workload's sessions into the kernel's own and
//! kexecs the machine itself; the next kernel's luod restores them and the workload's next
//! version retrieves them through luod as after `luoctl reboot`.
//!
//! Stage 1 (luod serving at the socket): the workload creates session [`SESSION`] with a large
//! shmem memfd filled with [`pattern`](crate::pattern) at [`TOKEN_MEMORY`] and a small state
//! memfd at [`TOKEN_STATE`]. A second session, [`UNPRESERVABLE`], holds a hugetlb memfd and a
//! socket: `luoctl kexec --check --json` must name both, `luoctl kexec` must refuse, and
//! afterwards every session, the memory and luod's service are as before. That session is
//! `luoctl kexec --check --convert` counts the hugetlb memfd as crossing and still names the
//! socket, and `luoctl kexec --convert` is refused with nothing converted. That session is
//! then closed (which discards an outgoing session), the check passes; session [`CONVERTED`]
//! gets a patterned hugetlb memfd (the check fails again, `--check --convert` passes), the
//! stage prints its PASS line (through `luo-kexec --by`) and `luoctl kexec --convert` has luod
//! re-back the hugetlb memfd onto shmem, forward and kexec, while the workload still holds its
//! sessions.
//!
//! Stage 2 (a new luod, which restored the sessions before serving): the workload retrieves
//! [`SESSION`] and both files, checks their size and every byte, finishes and closes it; it
//! retrieves [`CONVERTED`]'s memfd, now on shmem, with every byte as written; luod lists
//! neither any more. Then, once luod is stopped, the kernel's `/dev/liveupdate` itself has
//! neither the session's kernel session ([`kernel_session_name`]) nor luod's state session.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use luo_client::{Control, KexecOptions, KexecReport, SessionSummary};
use luo_sys::mmap::SharedMap;
use rustix::fs::MemfdFlags;
use rustix::io::Errno;

use crate::{Error, Report, pattern};

/// The workload's session.
pub const SESSION: &str = "vm-guest";
/// The token of its memory memfd.
pub const TOKEN_MEMORY: u64 = 1;
/// The token of its state memfd.
pub const TOKEN_STATE: u64 = 2;
/// The state memfd's size.
pub const STATE_SIZE: u64 = 4096;
/// The text the state memfd holds, repeated over its [`STATE_SIZE`] bytes.
pub const STATE_TEXT: &[u8] = b"luod-kexec state: generation 1, written before the kexec\n";
/// The seed of the memory memfd's pattern.
pub const MEMORY_SEED: u64 = 0x6b65_7865_6331;
/// The session whose files cannot cross a kexec.
pub const UNPRESERVABLE: &str = "unpreservable";
/// The hugetlb memfd's token in [`UNPRESERVABLE`].
pub const TOKEN_HUGETLB: u64 = 10;
/// The socket's token in [`UNPRESERVABLE`].
pub const TOKEN_SOCKET: u64 = 11;
/// The hugetlb memfd's size: two 2 MiB pages.
pub const HUGETLB_SIZE: u64 = 4 << 20;
/// The session whose hugetlb memfd crosses by `luoctl kexec --convert`.
pub const CONVERTED: &str = "vm-huge";
/// Its token.
pub const TOKEN_CONVERTED: u64 = 20;
/// The seed of its pattern.
pub const CONVERTED_SEED: u64 = 0x6875_6765_3231;
/// `statfs`'s `f_type` of hugetlbfs and of tmpfs (shmem).
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// luod's own state session in the kernel.
pub const STATE_SESSION: &str = "luod";

/// What the stages are given on the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// luod's socket.
    pub socket: PathBuf,
    /// The memory memfd's size.
    pub size: u64,
    /// The `luoctl` to run.
    pub luoctl: String,
    /// The program that prints the stage's PASS line and runs the command that kexecs
    /// (`luo-kexec`, from the harness).
    pub kexec: String,
    /// The `luod` to run (scenario `luod-kexec-corrupt`).
    pub luod: String,
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The kernel session luod forwards session `name` of uid `uid` into, the hash first:
/// `<FNV-1a 64 of the name, 16 hex digits>-<uid, 8 hex digits>-luod`.
pub fn kernel_session_name(uid: u32, name: &str) -> String {
    format!("{:016x}-{uid:08x}-luod", fnv1a64(name.as_bytes()))
}

/// The name an earlier luod gave that kernel session, which luod still restores from:
/// `luod-<uid, 8 hex digits>-<FNV-1a 64 of the name, 16 hex digits>`.
pub fn legacy_kernel_session_name(uid: u32, name: &str) -> String {
    format!("luod-{uid:08x}-{:016x}", fnv1a64(name.as_bytes()))
}

/// With luod stopped: the kernel holds no session of `names` (uid 0's luod sessions) under
/// either of the names luod gives them, nor luod's state session.
pub(crate) fn kernel_has_none(report: &mut Report, names: &[&str]) -> Result<(), Error> {
    let dev = open_device(report)?;
    let mut all: Vec<String> = names
        .iter()
        .flat_map(|n| [kernel_session_name(0, n), legacy_kernel_session_name(0, n)])
        .collect();
    all.push(STATE_SESSION.to_owned());
    for name in &all {
        match dev.retrieve_session(name) {
            Err(Errno::NOENT) => report.ok(&format!("kernel session {name}: ENOENT")),
            Err(e) => return unexpected(format!("kernel session {name}: {e}, expected ENOENT")),
            Ok(_) => return unexpected(format!("kernel session {name} is still there")),
        }
    }
    Ok(())
}

/// The state memfd's contents.
pub fn state_contents() -> Vec<u8> {
    STATE_TEXT
        .iter()
        .copied()
        .cycle()
        .take(len(STATE_SIZE))
        .collect()
}

pub(crate) fn len(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

pub(crate) fn client<T>(what: &'static str, r: Result<T, luo_client::Error>) -> Result<T, Error> {
    r.map_err(|e| Error::Client(what, Box::new(e)))
}

pub(crate) fn sys<T>(what: &'static str, r: rustix::io::Result<T>) -> Result<T, Error> {
    r.map_err(|e| Error::Call(what, e.into()))
}

pub(crate) fn unexpected<T>(msg: String) -> Result<T, Error> {
    Err(Error::Unexpected(msg))
}

/// Parses a size: bytes, or a number with K, M or G (binary).
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&v| v > 0)
}

/// A memfd of `size` bytes filled with the pattern of `seed`.
pub(crate) fn patterned_memfd(name: &str, size: u64, seed: u64) -> Result<OwnedFd, Error> {
    let fd = sys(
        "memfd_create",
        rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC),
    )?;
    sys("ftruncate", rustix::fs::ftruncate(&fd, size))?;
    let mut map =
        SharedMap::new(&fd, len(size), true, false).map_err(|e| Error::Call("mmap", e))?;
    let buf = map
        .as_mut_slice()
        .ok_or(Error::Unexpected("read-only mapping".into()))?;
    pattern::fill(seed, 0, buf);
    Ok(fd)
}

/// A hugetlb memfd of [`HUGETLB_SIZE`] bytes (2 MiB pages), written by `write`.
fn hugetlb_memfd(name: &str, write: impl FnOnce(&mut [u8])) -> Result<OwnedFd, Error> {
    let huge = sys(
        "memfd_create(MFD_HUGETLB)",
        rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB),
    )?;
    sys(
        "ftruncate hugetlb",
        rustix::fs::ftruncate(&huge, HUGETLB_SIZE),
    )?;
    let mut map = SharedMap::new(&huge, len(HUGETLB_SIZE), true, false)
        .map_err(|e| Error::Call("mmap hugetlb (nr_hugepages reserved?)", e))?;
    let buf = map
        .as_mut_slice()
        .ok_or(Error::Unexpected("read-only mapping".into()))?;
    write(buf);
    drop(map);
    Ok(huge)
}

/// A memfd of `size` bytes holding `contents`.
pub(crate) fn memfd_with(name: &str, contents: &[u8]) -> Result<OwnedFd, Error> {
    let fd = sys(
        "memfd_create",
        rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC),
    )?;
    let mut done = 0;
    while done < contents.len() {
        done += sys(
            "pwrite",
            rustix::io::pwrite(&fd, &contents[done..], done as u64),
        )?;
    }
    Ok(fd)
}

/// Checks that `fd` is `size` bytes long and holds the pattern of `seed` in every byte.
pub(crate) fn check_pattern(fd: impl AsFd, what: &str, size: u64, seed: u64) -> Result<(), Error> {
    let stat = sys("fstat", rustix::fs::fstat(fd.as_fd()))?;
    if stat.st_size as u64 != size {
        return unexpected(format!("{what}: size {}, expected {size}", stat.st_size));
    }
    let map = SharedMap::new(fd, len(size), false, false).map_err(|e| Error::Call("mmap", e))?;
    if let Some(m) = pattern::verify(seed, 0, map.as_slice()) {
        return unexpected(format!(
            "{what}: {} of {size} bytes differ, the first at {:#x}: {:#04x}, expected {:#04x}",
            m.count, m.offset, m.found, m.expected
        ));
    }
    Ok(())
}

/// Checks that `fd` holds exactly `contents`.
pub(crate) fn check_contents(fd: impl AsFd, what: &str, contents: &[u8]) -> Result<(), Error> {
    let stat = sys("fstat", rustix::fs::fstat(fd.as_fd()))?;
    if stat.st_size as u64 != contents.len() as u64 {
        return unexpected(format!(
            "{what}: size {}, expected {}",
            stat.st_size,
            contents.len()
        ));
    }
    let mut buf = vec![0u8; contents.len()];
    let mut done = 0;
    while done < buf.len() {
        let n = sys(
            "pread",
            rustix::io::pread(fd.as_fd(), &mut buf[done..], done as u64),
        )?;
        if n == 0 {
            return unexpected(format!("{what}: end of file at {done}"));
        }
        done += n;
    }
    if let Some(at) = buf.iter().zip(contents).position(|(a, b)| a != b) {
        return unexpected(format!(
            "{what}: byte {at} is {:#04x}, expected {:#04x}",
            buf[at], contents[at]
        ));
    }
    Ok(())
}

/// Runs `program args...`, its output captured and echoed on the console, each line prefixed
/// with the command.
fn run(program: &str, args: &[&str]) -> Result<Output, Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Call("run a program", e))?;
    let cmd = format!("{program} {}", args.join(" "));
    for (stream, bytes) in [("out", &out.stdout), ("err", &out.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            println!("luo-vmtest: [{cmd}: {stream}] {line}");
        }
    }
    println!("luo-vmtest: [{cmd}] {}", out.status);
    Ok(out)
}

fn luoctl(opts: &Options, args: &[&str]) -> Result<Output, Error> {
    let socket = opts.socket.to_string_lossy().into_owned();
    let mut all = vec!["--socket", socket.as_str()];
    all.extend_from_slice(args);
    run(&opts.luoctl, &all)
}

fn connect(opts: &Options) -> Result<Control, Error> {
    client("connect to luod", Control::connect_at(&opts.socket))
}

pub(crate) fn sessions(opts: &Options) -> Result<Vec<SessionSummary>, Error> {
    client("list sessions", connect(opts)?.sessions())
}

/// Waits up to 10 s for luod to list no session named `name`.
pub(crate) fn wait_gone(opts: &Options, name: &str) -> Result<Duration, Error> {
    let t0 = Instant::now();
    loop {
        if !sessions(opts)?.iter().any(|s| s.name == name) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return unexpected(format!("session {name} still listed 10 s after its close"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn find<'a>(
    list: &'a [SessionSummary],
    name: &str,
) -> Result<&'a SessionSummary, Error> {
    list.iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Unexpected(format!("luod does not list session {name}: {list:?}")))
}

/// The parsed output of `luoctl kexec --check --json`, checked against the expected counts.
fn check_json(
    out: &Output,
    sessions: u64,
    preservable: u64,
    min_bytes: u64,
    unpreservable: &[(u64, &str)],
) -> Result<serde_json::Value, Error> {
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| Error::Unexpected(format!("luoctl's JSON does not parse ({e}): {text}")))?;
    let num = |key: &str| {
        doc.get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::Unexpected(format!("luoctl's JSON has no number {key}: {doc}")))
    };
    let got = (num("sessions")?, num("preservable")?, num("unpreservable")?);
    if got != (sessions, preservable, unpreservable.len() as u64) {
        return unexpected(format!(
            "luoctl kexec --check: sessions, preservable, unpreservable {got:?}, expected \
             {:?}: {doc}",
            (sessions, preservable, unpreservable.len())
        ));
    }
    if num("preservable_bytes")? < min_bytes {
        return unexpected(format!(
            "luoctl kexec --check: preservable_bytes below {min_bytes}: {doc}"
        ));
    }
    if doc.get("forwarded") != Some(&serde_json::Value::Bool(false)) {
        return unexpected(format!(
            "luoctl kexec --check: forwarded is not false: {doc}"
        ));
    }
    let files = doc
        .get("files")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| Error::Unexpected(format!("luoctl's JSON has no files array: {doc}")))?;
    if files.len() != unpreservable.len() {
        return unexpected(format!(
            "luoctl kexec --check lists {} files, expected {}: {doc}",
            files.len(),
            unpreservable.len()
        ));
    }
    for &(token, kind) in unpreservable {
        let listed = files.iter().any(|f| {
            f.get("owner").and_then(serde_json::Value::as_u64) == Some(0)
                && f.get("session").and_then(serde_json::Value::as_str) == Some(UNPRESERVABLE)
                && f.get("token").and_then(serde_json::Value::as_u64) == Some(token)
                && f.get("kind").and_then(serde_json::Value::as_str) == Some(kind)
                && f.get("bytes").is_some_and(serde_json::Value::is_u64)
        });
        if !listed {
            return unexpected(format!(
                "luoctl kexec --check does not list {UNPRESERVABLE} token {token} as {kind}: \
                 {doc}"
            ));
        }
    }
    Ok(doc)
}

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// The session's files through the API's check, against `luoctl`'s JSON.
fn api_check(opts: &Options, doc: &serde_json::Value) -> Result<KexecReport, Error> {
    let report = client(
        "kexec check",
        connect(opts)?.kexec(KexecOptions {
            check: true,
            ..KexecOptions::default()
        }),
    )?;
    let same = Some(report.sessions) == doc["sessions"].as_u64()
        && Some(report.preservable) == doc["preservable"].as_u64()
        && Some(report.preservable_bytes) == doc["preservable_bytes"].as_u64()
        && Some(report.unpreservable) == doc["unpreservable"].as_u64()
        && !report.forwarded
        && report.listed.len() == doc["files"].as_array().map_or(usize::MAX, Vec::len)
        && report.listed.iter().all(|u| {
            doc["files"].as_array().is_some_and(|files| {
                files.iter().any(|f| {
                    f["owner"].as_u64() == Some(u64::from(u.owner))
                        && f["session"].as_str() == Some(u.session.as_str())
                        && f["token"].as_u64() == Some(u.token)
                        && f["kind"].as_str() == Some(u.kind)
                        && f["bytes"].as_u64() == Some(u.bytes)
                })
            })
        });
    if !same {
        return unexpected(format!(
            "Control::kexec(check) says {report:?}, luoctl's JSON {doc}"
        ));
    }
    Ok(report)
}

/// Stage 1: see the module's documentation. Returns only on failure.
pub fn stage1(report: &mut Report, opts: &Options) -> Result<(), Error> {
    let size = opts.size;
    let dev = client("open the device", luo_client::Device::open_at(&opts.socket))?;
    let session = client("create session", dev.create_session(SESSION))?;
    let t0 = Instant::now();
    let memory = patterned_memfd("vm-guest-memory", size, MEMORY_SEED)?;
    report.ok(&format!(
        "memory memfd of {size} bytes written, a different word at every 8 bytes, in {:.2} s",
        t0.elapsed().as_secs_f64()
    ));
    let state = memfd_with("vm-guest-state", &state_contents())?;
    client("preserve memory", session.preserve(&memory, TOKEN_MEMORY))?;
    client("preserve state", session.preserve(&state, TOKEN_STATE))?;
    report.ok(&format!(
        "session {SESSION}: memory at token {TOKEN_MEMORY}, state ({STATE_SIZE} bytes) at token \
         {TOKEN_STATE}"
    ));
    let list = sessions(opts)?;
    let s = find(&list, SESSION)?;
    if s.incoming || s.files != 2 || s.bytes < size + STATE_SIZE {
        return unexpected(format!("luod lists {s:?}"));
    }
    report.ok(&format!(
        "luod lists {SESSION}: outgoing, 2 files, {} bytes",
        s.bytes
    ));

    // (d) Files that cannot cross the kexec.
    let odd = client("create session", dev.create_session(UNPRESERVABLE))?;
    // Every huge page touched, so the memfd really holds them.
    let huge = hugetlb_memfd("vm-guest-huge", |buf| {
        for page in buf.chunks_mut(2 << 20) {
            page[0] = 0x48;
        }
    })?;
    let (sock, peer) = UnixStream::pair().map_err(|e| Error::Call("socketpair", e))?;
    client("preserve hugetlb memfd", odd.preserve(&huge, TOKEN_HUGETLB))?;
    client("preserve socket", odd.preserve(&sock, TOKEN_SOCKET))?;
    report.ok(&format!(
        "session {UNPRESERVABLE}: a hugetlb memfd ({HUGETLB_SIZE} bytes) at token \
         {TOKEN_HUGETLB}, a socket at token {TOKEN_SOCKET}"
    ));

    let out = luoctl(opts, &["kexec", "--check", "--json"])?;
    if exit_code(&out) != Some(1) {
        return unexpected(format!(
            "luoctl kexec --check: {}, expected exit status 1 (unpreservable files)",
            out.status
        ));
    }
    let doc = check_json(
        &out,
        2,
        2,
        size + STATE_SIZE,
        &[(TOKEN_HUGETLB, "hugetlb-memfd"), (TOKEN_SOCKET, "socket")],
    )?;
    report.ok("luoctl kexec --check --json exits 1, names the hugetlb memfd and the socket");
    api_check(opts, &doc)?;
    report.ok("Control::kexec(check) reports the same");

    let before = sessions(opts)?;
    let before_text = luoctl(opts, &["sessions"])?;
    let out = luoctl(opts, &["kexec"])?;
    if exit_code(&out) != Some(1) {
        return unexpected(format!(
            "luoctl kexec with unpreservable files: {}, expected exit status 1",
            out.status
        ));
    }
    if out.stderr.is_empty() {
        return unexpected("luoctl kexec refused without a message".into());
    }
    report.ok("luoctl kexec refuses (exit 1) while unpreservable files are held");
    match connect(opts)?.kexec(KexecOptions::default()) {
        Err(e) if e.errno.0 == Errno::OPNOTSUPP.raw_os_error() => {
            report.ok(&format!("Control::kexec refuses too: {e}"));
        }
        Err(e) => return unexpected(format!("Control::kexec: {e}, expected EOPNOTSUPP")),
        Ok(r) => return unexpected(format!("Control::kexec forwarded: {r:?}")),
    }

    // Nothing changed, and luod still serves.
    let after = sessions(opts)?;
    if after != before {
        return unexpected(format!(
            "the sessions changed after a refused kexec: {before:?} -> {after:?}"
        ));
    }
    let after_text = luoctl(opts, &["sessions"])?;
    if after_text.stdout != before_text.stdout || !after_text.status.success() {
        return unexpected("luoctl sessions shows something else after the refused kexec".into());
    }
    report.ok("the session list is the same after the refused kexec (API and luoctl)");
    let doc = check_json(
        &luoctl(opts, &["kexec", "--check", "--json"])?,
        2,
        2,
        size + STATE_SIZE,
        &[(TOKEN_HUGETLB, "hugetlb-memfd"), (TOKEN_SOCKET, "socket")],
    )?;
    drop(doc);
    report.ok("luod is not forwarded after the refusal");
    let t0 = Instant::now();
    check_pattern(&memory, "memory after the refused kexec", size, MEMORY_SEED)?;
    check_contents(&state, "state after the refused kexec", &state_contents())?;
    report.ok(&format!(
        "the memory memfd still holds its pattern, every byte ({:.2} s), the state its text",
        t0.elapsed().as_secs_f64()
    ));
    {
        let probe = client("create session", dev.create_session("vm-probe"))?;
        let small = memfd_with("vm-probe", b"probe")?;
        client("preserve in a new session", probe.preserve(&small, 1))?;
    }
    let took = wait_gone(opts, "vm-probe")?;
    report.ok(&format!(
        "luod still serves: a new session took a file and was discarded at its close ({} ms)",
        took.as_millis()
    ));

    // --convert: the hugetlb memfd would cross, the socket still cannot; the kexec is refused
    // before anything is converted.
    let out = luoctl(opts, &["kexec", "--check", "--convert", "--json"])?;
    if exit_code(&out) != Some(1) {
        return unexpected(format!(
            "luoctl kexec --check --convert: {}, expected exit status 1 (a socket)",
            out.status
        ));
    }
    check_json(
        &out,
        2,
        3,
        size + STATE_SIZE + HUGETLB_SIZE,
        &[(TOKEN_SOCKET, "socket")],
    )?;
    report.ok(
        "luoctl kexec --check --convert counts the hugetlb memfd as crossing, names the socket",
    );
    let out = luoctl(opts, &["kexec", "--convert"])?;
    if exit_code(&out) != Some(1) {
        return unexpected(format!(
            "luoctl kexec --convert with a socket held: {}, expected exit status 1",
            out.status
        ));
    }
    check_json(
        &luoctl(opts, &["kexec", "--check", "--json"])?,
        2,
        2,
        size + STATE_SIZE,
        &[(TOKEN_HUGETLB, "hugetlb-memfd"), (TOKEN_SOCKET, "socket")],
    )?;
    report.ok("luoctl kexec --convert refuses while a socket is held, and converted nothing");

    // Closing an outgoing session's connection discards it (luo-client's Session, luod's
    // close_conn): the unpreservable files go with it.
    drop((odd, huge, sock, peer));
    let took = wait_gone(opts, UNPRESERVABLE)?;
    report.ok(&format!(
        "session {UNPRESERVABLE} discarded by its close ({} ms)",
        took.as_millis()
    ));
    let out = luoctl(opts, &["kexec", "--check", "--json"])?;
    if !out.status.success() {
        return unexpected(format!(
            "luoctl kexec --check: {} with only shmem memfds held, expected exit status 0",
            out.status
        ));
    }
    check_json(&out, 1, 2, size + STATE_SIZE, &[])?;
    report.ok("luoctl kexec --check exits 0: every file can cross");

    // A hugetlb memfd that crosses by --convert: re-backed onto shmem by luod.
    let conv = client("create session", dev.create_session(CONVERTED))?;
    let huge = hugetlb_memfd("vm-huge", |buf| pattern::fill(CONVERTED_SEED, 0, buf))?;
    client(
        "preserve hugetlb memfd",
        conv.preserve(&huge, TOKEN_CONVERTED),
    )?;
    let out = luoctl(opts, &["kexec", "--check", "--json"])?;
    if exit_code(&out) != Some(1) {
        return unexpected(format!(
            "luoctl kexec --check with a hugetlb memfd: {}, expected exit status 1",
            out.status
        ));
    }
    let out = luoctl(opts, &["kexec", "--check", "--convert", "--json"])?;
    if !out.status.success() {
        return unexpected(format!(
            "luoctl kexec --check --convert: {} with shmem and hugetlb memfds, expected 0",
            out.status
        ));
    }
    report.ok(&format!(
        "session {CONVERTED}: a patterned hugetlb memfd ({HUGETLB_SIZE} bytes) at token \
         {TOKEN_CONVERTED}; --check exits 1, --check --convert 0"
    ));

    report.ok("stage 1 done; luoctl kexec --convert while the workload holds its sessions");
    report.flush();
    let socket = opts.socket.to_string_lossy().into_owned();
    let status = Command::new(&opts.kexec)
        .args([
            "--by",
            &opts.luoctl,
            "--socket",
            &socket,
            "kexec",
            "--convert",
        ])
        .status()
        .map_err(|e| Error::Call("run luo-kexec --by luoctl kexec --convert", e))?;
    drop((session, dev, memory, state, conv, huge));
    unexpected(format!("luoctl kexec did not kexec ({status})"))
}

/// Stage 2, luod running: retrieve, check every byte, finish.
pub fn stage2(report: &mut Report, opts: &Options) -> Result<(), Error> {
    let size = opts.size;
    let list = sessions(opts)?;
    let s = find(&list, SESSION)?;
    if !s.incoming || s.retrieved || s.finished || s.files != 2 || s.owner != 0 {
        return unexpected(format!("after the kexec luod lists {s:?}"));
    }
    if list.iter().any(|s| s.name == UNPRESERVABLE) {
        return unexpected(format!("session {UNPRESERVABLE} came back: {list:?}"));
    }
    report.ok(&format!(
        "after the kexec luod lists {SESSION}: incoming, 2 files, {} bytes, uid 0 (and only it: \
         {} sessions)",
        s.bytes,
        list.len()
    ));
    luoctl(opts, &["sessions"])?;
    if let Ok(status) = connect(opts)?.status() {
        report.ok(&format!(
            "luod status: generation {}, {} incoming, {} files",
            status.generation, status.sessions_incoming, status.files
        ));
    }

    let dev = client("open the device", luo_client::Device::open_at(&opts.socket))?;
    let session = client("retrieve session", dev.retrieve_session(SESSION))?;
    let name = client("GET_NAME", session.name())?;
    if name != SESSION {
        return unexpected(format!("GET_NAME gave {name:?}"));
    }
    report.ok(&format!("retrieved {SESSION} through luod"));
    match dev.retrieve_session(UNPRESERVABLE) {
        Err(e) if e.errno.0 == Errno::NOENT.raw_os_error() => {
            report.ok(&format!("{UNPRESERVABLE} did not cross: ENOENT"));
        }
        other => return unexpected(format!("retrieving {UNPRESERVABLE}: {other:?}")),
    }
    let t0 = Instant::now();
    let memory = client("retrieve memory", session.retrieve(TOKEN_MEMORY))?;
    check_pattern(&memory, "memory after the kexec", size, MEMORY_SEED)?;
    report.ok(&format!(
        "token {TOKEN_MEMORY}: {size} bytes, every byte as written ({:.2} s)",
        t0.elapsed().as_secs_f64()
    ));
    let state = client("retrieve state", session.retrieve(TOKEN_STATE))?;
    check_contents(&state, "state after the kexec", &state_contents())?;
    report.ok(&format!(
        "token {TOKEN_STATE}: {STATE_SIZE} bytes, its text"
    ));
    match session.retrieve(TOKEN_STATE + 1) {
        Err(e) if e.errno.0 == Errno::NOENT.raw_os_error() => {
            report.ok("an unknown token: ENOENT");
        }
        other => return unexpected(format!("an unknown token: {other:?}")),
    }
    client("finish", session.finish())?;
    drop(session);

    // The hugetlb memfd crossed on shmem (--convert), every byte as written.
    let conv = client("retrieve session", dev.retrieve_session(CONVERTED))?;
    let fd = client("retrieve converted", conv.retrieve(TOKEN_CONVERTED))?;
    let fs = sys("fstatfs", rustix::fs::fstatfs(&fd))?;
    let magic = fs.f_type as u64;
    if magic != TMPFS_MAGIC {
        return unexpected(format!(
            "{CONVERTED}: the file is on a filesystem of type {magic:#x}, expected shmem \
             ({TMPFS_MAGIC:#x}; hugetlbfs is {HUGETLBFS_MAGIC:#x})"
        ));
    }
    check_pattern(&fd, "the converted memfd", HUGETLB_SIZE, CONVERTED_SEED)?;
    client("finish", conv.finish())?;
    drop(conv);
    report.ok(&format!(
        "{CONVERTED}: the hugetlb memfd crossed on shmem, {HUGETLB_SIZE} bytes as written"
    ));
    drop(dev);
    wait_gone(opts, CONVERTED)?;
    let took = wait_gone(opts, SESSION)?;
    report.ok(&format!(
        "finished and closed: luod lists {SESSION} no more ({} ms)",
        took.as_millis()
    ));
    let out = luoctl(opts, &["sessions"])?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).contains(SESSION) {
        return unexpected(format!("luoctl sessions still shows {SESSION}"));
    }
    report.ok(&format!("luoctl sessions shows no {SESSION}"));

    // The files are the workload's now.
    let map =
        SharedMap::new(&memory, len(size), false, false).map_err(|e| Error::Call("mmap", e))?;
    let step = (1u64 << 20).min(size);
    for offset in (0..size).step_by(len(step)) {
        let end = (offset + 4096).min(size);
        if let Some(m) =
            pattern::verify(MEMORY_SEED, offset, &map.as_slice()[len(offset)..len(end)])
        {
            return unexpected(format!(
                "after finish: the memory differs at {:#x}",
                m.offset
            ));
        }
    }
    report.ok("the memory is still the workload's after the session is gone");
    Ok(())
}

/// Opens the kernel's device, waiting up to 10 s while a luod that is stopping still holds it.
pub(crate) fn open_device(report: &mut Report) -> Result<luo_sys::liveupdate::Device, Error> {
    let t0 = Instant::now();
    loop {
        match luo_sys::liveupdate::Device::open() {
            Ok(dev) => {
                report.ok(&format!(
                    "opened {} ({} ms)",
                    luo_sys::liveupdate::DEVICE,
                    t0.elapsed().as_millis()
                ));
                return Ok(dev);
            }
            Err(Errno::BUSY) if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return sys("open /dev/liveupdate", Err(e)),
        }
    }
}

/// Stage 2, after luod stopped: the kernel has neither the session nor luod's state session.
pub fn stage2_kernel(report: &mut Report) -> Result<(), Error> {
    kernel_has_none(report, &[SESSION, CONVERTED])
}

/// Where luod's socket is when none is given.
pub const DEFAULT_SOCKET: &str = "/run/luod.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn kernel_names() {
        assert_eq!(
            kernel_session_name(0, "a"),
            "af63dc4c8601ec8c-00000000-luod"
        );
        assert_eq!(
            kernel_session_name(0x3e8, "foobar"),
            "85944171f73967e8-000003e8-luod"
        );
        assert_eq!(
            legacy_kernel_session_name(0x3e8, "foobar"),
            "luod-000003e8-85944171f73967e8"
        );
        assert_eq!(kernel_session_name(0, SESSION).len(), 30);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("12345"), Some(12345));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn state_is_its_text() {
        let s = state_contents();
        assert_eq!(s.len(), 4096);
        assert!(s.starts_with(STATE_TEXT));
    }
}
