//! The agreement script (`tests/c/agreement.script`) through luod, two ways: through
//! luo-client (Rust, native protocol) and through `tests/c/luo_script.c` (C, `/dev/liveupdate`
//! ioctls through `libluo_preload.so`), each against its own luod. The agreement test compares
//! the two; the oracle test compares both with the real kernel's answers from the VM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use super::{Flavor, Luod, binaries, build};
use luo_abi::uapi::PreserveFd;
use luo_client::{Device, Session};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{I32, U32, U64};

/// The scenario. `reboot` lines are carried out by the driver between the two phases; every
/// other line is one operation (see `luo_script.c` for the language). A comment that starts
/// with an errno name is the kernel's answer, and both paths must give it.
pub const SCENARIO: &str = include_str!("../../../../tests/c/agreement.script");

enum Slot {
    Device(Device),
    Session(Session),
    File(OwnedFd),
}

impl Slot {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Slot::Device(d) => d.as_fd(),
            Slot::Session(s) => s.as_fd(),
            Slot::File(f) => f.as_fd(),
        }
    }
}

/// `luo_pattern` of `luo_test.h`.
fn pattern(seed: u64, i: u64) -> u8 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i);
    x ^= x >> 29;
    (x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 56) as u8
}

fn answer<T>(r: Result<T, luo_client::Error>) -> (String, Option<T>) {
    match r {
        Ok(v) => ("0".into(), Some(v)),
        Err(e) => (e.errno.raw().to_string(), None),
    }
}

/// A system call's answer: "0", or its errno number.
fn sys<T>(r: rustix::io::Result<T>) -> String {
    match r {
        Ok(_) => "0".into(),
        Err(e) => e.raw_os_error().to_string(),
    }
}

/// The scenario through luo-client.
struct Native {
    socket: std::path::PathBuf,
    slots: HashMap<String, Slot>,
}

impl Native {
    fn session(&self, name: &str) -> &Session {
        match self.slots.get(name) {
            Some(Slot::Session(s)) => s,
            _ => panic!("no session {name}"),
        }
    }

    fn fd(&self, name: &str) -> std::os::fd::BorrowedFd<'_> {
        self.slots
            .get(name)
            .unwrap_or_else(|| panic!("no slot {name}"))
            .fd()
    }

    fn op(&mut self, line: &str) -> String {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| -> u64 {
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).expect("hex"),
                None => s.parse().expect("number"),
            }
        };
        let name = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.to_owned()
            }
        };
        match w[0] {
            "open" => {
                let (a, d) = answer(Device::open_at(&self.socket));
                if let Some(d) = d {
                    self.slots.insert(w[1].into(), Slot::Device(d));
                }
                a
            }
            "create" | "retrieve" => {
                let Some(Slot::Device(dev)) = self.slots.get(w[1]) else {
                    panic!("no device {}", w[1])
                };
                let r = if w[0] == "create" {
                    dev.create_session(&name(w[3]))
                } else {
                    dev.retrieve_session(&name(w[3]))
                };
                let (a, s) = answer(r);
                if let Some(s) = s {
                    self.slots.insert(w[2].into(), Slot::Session(s));
                }
                a
            }
            "memfd" | "smemfd" => {
                let mut flags = rustix::fs::MemfdFlags::CLOEXEC;
                if w[0] == "smemfd" {
                    flags |= rustix::fs::MemfdFlags::ALLOW_SEALING;
                }
                let fd = rustix::fs::memfd_create(w[1], flags).expect("memfd");
                let (seed, size) = (num(w[2]), num(w[3]));
                let bytes: Vec<u8> = (0..size).map(|i| pattern(seed, i)).collect();
                std::fs::File::from(fd.try_clone().expect("dup"))
                    .write_all(&bytes)
                    .expect("write");
                self.slots.insert(w[1].into(), Slot::File(fd));
                "0".into()
            }
            "devnull" => {
                let f = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .expect("/dev/null");
                self.slots.insert(w[1].into(), Slot::File(f.into()));
                "0".into()
            }
            "preserve" => answer(self.session(w[1]).preserve(self.fd(w[2]), num(w[3]))).0,
            "preserve_nofd" => {
                let req = PreserveFd {
                    size: U32::new(16),
                    fd: I32::new(-1),
                    token: U64::new(num(w[2])),
                };
                answer(luo_client::call(
                    self.fd(w[1]),
                    "PRESERVE_FD",
                    luo_abi::uapi::LIVEUPDATE_SESSION_PRESERVE_FD,
                    req.as_bytes(),
                    &[],
                ))
                .0
            }
            "retrieve_fd" => {
                let (a, f) = answer(self.session(w[1]).retrieve(num(w[3])));
                if let Some(f) = f {
                    self.slots.insert(w[2].into(), Slot::File(f));
                }
                a
            }
            "verify" => {
                let (seed, size) = (num(w[2]), num(w[3]));
                let mut got = vec![0u8; size as usize + 1];
                let n = rustix::io::pread(self.fd(w[1]), &mut got, 0).expect("pread");
                let want: Vec<u8> = (0..size).map(|i| pattern(seed, i)).collect();
                if got[..n] == want[..] {
                    "0".into()
                } else {
                    "BAD".into()
                }
            }
            "finish" => answer(self.session(w[1]).finish()).0,
            "getname" => match self.session(w[1]).name() {
                Ok(n) => format!("0 {n}"),
                Err(e) => e.errno.raw().to_string(),
            },
            "raw" => {
                let (cmd, size, tail) = (num(w[2]) as u32, num(w[3]) as usize, num(w[4]) as u8);
                let mut arg = vec![0u8; size.max(4)];
                arg[..4].copy_from_slice(&(size as u32).to_le_bytes());
                if size > 4 {
                    arg[size - 1] = tail;
                }
                answer(luo_client::call(
                    self.fd(w[1]),
                    "raw",
                    cmd,
                    &arg[..size],
                    &[],
                ))
                .0
            }
            "close" => {
                self.slots.remove(w[1]);
                "0".into()
            }
            "pipe" => {
                let (r, w_end) =
                    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
                self.slots.insert(w[1].into(), Slot::File(r));
                // The write end stays open, unnamed, as in luo_script.
                self.slots.insert(format!("{}.w", w[1]), Slot::File(w_end));
                "0".into()
            }
            "seek" => sys(rustix::fs::seek(
                self.fd(w[1]),
                rustix::fs::SeekFrom::Start(num(w[2])),
            )),
            "addseals" => sys(rustix::fs::fcntl_add_seals(
                self.fd(w[1]),
                rustix::fs::SealFlags::from_bits_retain(num(w[2]) as u32),
            )),
            "reopen_ro" => {
                let path = format!("/proc/self/fd/{}", self.fd(w[2]).as_raw_fd());
                match std::fs::File::open(path) {
                    Ok(f) => {
                        self.slots.insert(w[1].into(), Slot::File(f.into()));
                        "0".into()
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1).to_string(),
                }
            }
            "info" => {
                let fd = self.fd(w[1]);
                let st = rustix::fs::fstat(fd).expect("fstat");
                let pos = rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0)).expect("lseek");
                let seals = rustix::fs::fcntl_get_seals(fd).map_or(0, |s| s.bits());
                let fl = rustix::fs::fcntl_getfl(fd).expect("F_GETFL");
                let acc = match fl & rustix::fs::OFlags::ACCMODE {
                    a if a == rustix::fs::OFlags::RDWR => "rw",
                    a if a == rustix::fs::OFlags::WRONLY => "wo",
                    _ => "ro",
                };
                let append = if fl.contains(rustix::fs::OFlags::APPEND) {
                    "+append"
                } else {
                    ""
                };
                // C's "%#x" prints 0 without the prefix.
                let seals = if seals == 0 {
                    "0".to_owned()
                } else {
                    format!("{seals:#x}")
                };
                format!(
                    "0 size={} pos={pos} seals={seals} access={acc}{append}",
                    st.st_size
                )
            }
            other => panic!("unknown operation {other}"),
        }
    }
}

/// The scenario through `luo_script` and the preload library: one line out, one line back.
struct Preloaded {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Preloaded {
    fn start(socket: &Path) -> Preloaded {
        let prog = build("luo_script", Flavor::O2);
        let mut child = Command::new(prog)
            .env("LD_PRELOAD", &binaries().preload)
            .env("LUOD_SOCKET", socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn luo_script");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Preloaded {
            child,
            stdin,
            lines,
        }
    }

    fn op(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to luo_script");
        self.stdin.flush().expect("flush");
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("luo_script gave no answer to `{line}`: {e}"))
    }
}

impl Drop for Preloaded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One operation of the script and what each path answered.
pub struct Row {
    /// The operation, without its comment.
    pub line: String,
    /// Its comment: a leading errno name is the kernel's rule.
    pub comment: String,
    /// Which side of the live update it is on (1 before, 2 after).
    pub phase: u32,
    /// The answer through luo-client: "0" (or "0 NAME"), an errno number, or "BAD".
    pub native: String,
    /// The answer through the preload library.
    pub preload: String,
}

impl Row {
    /// The errno number the comment names, if it starts with one.
    pub fn expected(&self) -> Option<&'static str> {
        match self
            .comment
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
        {
            Some("EBUSY") => Some("16"),
            Some("EEXIST") => Some("17"),
            Some("EINVAL") => Some("22"),
            Some("ENOENT") => Some("2"),
            Some("EBADF") => Some("9"),
            Some("E2BIG") => Some("7"),
            Some("ENOTTY") => Some("25"),
            _ => None,
        }
    }
}

/// The script's operations with their comments and phases; `reboot` separates the phases.
pub fn script() -> Vec<(String, String, u32)> {
    let mut phase = 1;
    let mut ops = Vec::new();
    for raw_line in SCENARIO.lines() {
        let (line, comment) = match raw_line.split_once('#') {
            Some((l, c)) => (l.trim(), c.trim()),
            None => (raw_line.trim(), ""),
        };
        if line.is_empty() {
            continue;
        }
        if line == "reboot" {
            phase += 1;
            continue;
        }
        ops.push((line.to_owned(), comment.to_owned(), phase));
    }
    ops
}

/// The script through luo-client and through the preload library, each against its own luod.
/// At the live update, as across a real kexec, the process that ran the first phase is gone
/// once the update is done: its slots are dropped and `luo_script` is started again.
pub fn luod_answers() -> Vec<Row> {
    let luod_native = Luod::start("agree-native");
    let luod_preload = Luod::start("agree-preload");
    let mut native = Native {
        socket: luod_native.socket.clone(),
        slots: HashMap::new(),
    };
    let mut preloaded = Preloaded::start(&luod_preload.socket);
    let mut rows = Vec::new();
    let mut phase = 1;
    for (line, comment, p) in script() {
        if p != phase {
            phase = p;
            luod_native.reboot();
            luod_preload.reboot();
            native.slots.clear();
            preloaded = Preloaded::start(&luod_preload.socket);
        }
        let native = native.op(&line);
        let preload = preloaded.op(&line);
        rows.push(Row {
            line,
            comment,
            phase,
            native,
            preload,
        });
    }
    rows
}
