//! The native client and the preload library agree, operation by operation, errno by errno.
//!
//! One scenario — device exclusivity, names, tokens, double preservation, decoding errors,
//! a reboot, retrieval, FINISH, close semantics — runs twice against two fresh luods: once
//! through `luo-client` (Rust, native protocol) and once through `tests/c/luo_script.c` (C,
//! `/dev/liveupdate` ioctls through `libluo_preload.so`). Every answer must be the same.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use common::{Flavor, Luod, binaries, build, have_gcc};
use luo_abi::uapi::PreserveFd;
use luo_client::{Device, Session};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{I32, U32, U64};

/// The scenario. `reboot` lines are carried out by the driver between the two phases; every
/// other line is one operation (see `luo_script.c` for the language). A comment that starts
/// with an errno name is the kernel's answer, and both paths must give it.
const SCENARIO: &str = "
open d
open d2                      # EBUSY
create d a alpha
create d b alpha             # EEXIST
create d x -                 # EINVAL: empty name
create d c beta
memfd m1 1 5000
memfd m2 2 100
memfd m3 3 0
devnull null
preserve a m1 1
preserve a m1 2              # EBUSY: same memfd
preserve c m1 1              # EBUSY: in another session
preserve a m2 1              # EEXIST: token
preserve_nofd a 1            # EEXIST: token before the descriptor
preserve_nofd a 3            # EBADF
preserve a null 4            # ENOENT: no handler
preserve c m2 0
retrieve_fd a f 1            # EINVAL: outgoing
finish a                     # EINVAL: outgoing
getname c
raw a 0xBA40 15 0            # EINVAL: size
raw a 0xBA40 24 1            # E2BIG
raw a 0xBA41 24 1            # EINVAL: direction before size
raw a 0xBA42 8 0             # EINVAL: FINISH on outgoing
raw a 0xBA43 16 0            # EINVAL: GET_NAME minimum is 72
raw a 0xBA43 80 0            # ok
raw a 0xBA44 16 0            # EINVAL: out of range
raw a 0xBA00 72 0            # EINVAL: device command on a session
raw d 0xBA02 72 0            # EINVAL: out of range
raw d 0xBA40 16 0            # EINVAL: session command on the device
raw d 0xBA01 71 0            # EINVAL: size
raw d 0xBA00 80 9            # E2BIG
raw d 0x4048BA00 72 0        # ENOTTY: size bits
retrieve d r alpha           # ENOENT: nothing incoming
close c
create d c2 beta             # the close was seen: the name is free
preserve c2 m2 0             # and so is the memfd
close d
open d3
create d3 e gamma
preserve e m3 9
create d3 tmp delta
preserve tmp m3 1            # EBUSY
close tmp
reboot
open d4
retrieve d4 a alpha
retrieve d4 a2 alpha         # EINVAL: already retrieved
retrieve d4 zz delta         # ENOENT: closed before the reboot
retrieve_fd a f1 1
verify f1 1 5000
retrieve_fd a f1b 1          # again: ok
retrieve_fd a f9 9           # ENOENT
preserve a m2 5              # EINVAL: incoming
raw a 0xBA41 24 1            # E2BIG
raw a 0xBA42 16 0            # ok: FINISH with a zero tail
finish a
retrieve_fd a f1c 1          # ENOENT after FINISH
getname a
create d4 n alpha            # an outgoing session may take an incoming name
preserve n f1 1              # a finished file may be preserved again
retrieve d4 g gamma
finish g                     # before retrieving anything
retrieve_fd g f3 9           # ENOENT: discarded
retrieve d4 b2 beta
retrieve_fd b2 fb 0
verify fb 2 100
create d4 n2 epsilon
preserve n2 fb 1             # EBUSY: retrieved, not finished
close b2                     # an implicit FINISH
preserve n2 fb 1             # now it can
retrieve d4 b3 beta          # ENOENT: finished by the close
close a
retrieve d4 a3 alpha         # ENOENT
getname n
";

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
            "memfd" => {
                let fd =
                    rustix::fs::memfd_create(w[1], rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
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

#[test]
fn native_client_and_preload_library_agree() {
    if !have_gcc("native_client_and_preload_library_agree") {
        return;
    }
    let luod_native = Luod::start("agree-native");
    let luod_preload = Luod::start("agree-preload");
    let mut native = Native {
        socket: luod_native.socket.clone(),
        slots: HashMap::new(),
    };
    let mut preloaded = Preloaded::start(&luod_preload.socket);
    let mut table = String::new();
    let mut mismatches = 0;
    let mut ops = 0;
    for raw_line in SCENARIO.lines() {
        let (line, comment) = match raw_line.split_once('#') {
            Some((l, c)) => (l.trim(), c.trim()),
            None => (raw_line.trim(), ""),
        };
        if line.is_empty() {
            continue;
        }
        if line == "reboot" {
            luod_native.reboot();
            luod_preload.reboot();
            table.push_str("--- reboot ---\n");
            continue;
        }
        let a = native.op(line);
        let b = preloaded.op(line);
        ops += 1;
        // The comment's leading errno name, if any, is what the kernel answers.
        let kernel = match comment.split(|c: char| !c.is_ascii_alphanumeric()).next() {
            Some("EBUSY") => Some("16"),
            Some("EEXIST") => Some("17"),
            Some("EINVAL") => Some("22"),
            Some("ENOENT") => Some("2"),
            Some("EBADF") => Some("9"),
            Some("E2BIG") => Some("7"),
            Some("ENOTTY") => Some("25"),
            _ => None,
        };
        let mark = if a != b {
            "≠"
        } else if kernel.is_some_and(|k| k != a) {
            "!"
        } else {
            " "
        };
        if mark != " " {
            mismatches += 1;
        }
        table.push_str(&format!(
            "{mark} {line:<32} native={a:<8} preload={b:<8} {comment}\n"
        ));
    }
    eprintln!("{table}");
    assert_eq!(
        mismatches, 0,
        "the two paths disagree (≠), or differ from the kernel's errno (!):\n{table}"
    );
    assert!(ops > 60, "the scenario ran {ops} operations");
}
