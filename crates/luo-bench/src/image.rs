//! `image`: writing and reading the handover image, without any engine or descriptor.

use std::process::Command;
use std::time::{Duration, Instant};

use luo_abi::image::{FileSpec, Image, ImageWriter, NO_FD, SessionSpec};

use crate::{Result, best_of, check, ms, put, ratio};

const RUNS: usize = 3;
const OWNER: u32 = 1000;
const WRITER: &str = "luo-bench";
const COMPATIBLE: &str = "memfd-v1";
/// A record the size of a `memfd-v1` one.
const RECORD: [u8; 40] = *b"size....pos.....seals...dev.....ino.....";
/// The descriptor number the first file of the files image says it has.
const FAKE_FD: i32 = 3;
const S_IFREG: u32 = 0o100000;

/// `n` in decimal, in `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Write and read times, and the image length.
#[derive(Debug, Clone, Copy)]
struct Run {
    write: Duration,
    read: Duration,
    len: usize,
}

/// `n` sessions named by their index, no files.
fn sessions(n: u64) -> Result<Run> {
    let t0 = Instant::now();
    let mut w = ImageWriter::new(1, WRITER);
    let mut buf = [0u8; 20];
    for i in 0..n {
        let spec = SessionSpec {
            name: decimal(i, &mut buf),
            owner: OWNER,
            flags: 0,
            seq: i,
        };
        w.add_session(&spec, std::iter::empty::<FileSpec<'static>>())?;
    }
    let bytes = w.finish()?;
    let write = t0.elapsed();

    let t1 = Instant::now();
    let image = Image::parse(&bytes)?;
    check(image.session_count() == n, || {
        format!("{} sessions, expected {n}", image.session_count())
    })?;
    check(image.fds().is_empty(), || "an fd table".into())?;
    let mut seen = 0u64;
    for (i, s) in (0..).zip(image.sessions()) {
        let ok = s.seq() == i
            && s.owner() == OWNER
            && s.flags() == 0
            && s.file_count() == 0
            && s.files().next().is_none()
            && s.name() == decimal(i, &mut buf);
        check(ok, || format!("session {i} reads back as {s:?}"))?;
        seen += 1;
    }
    check(seen == n, || {
        format!("walked {seen} sessions, expected {n}")
    })?;
    let read = t1.elapsed();
    Ok(Run {
        write,
        read,
        len: bytes.len(),
    })
}

/// One session with `n` files, token = index, each with a 40-byte record; file 0 holds the
/// only descriptor of the fd table.
fn files(n: u64) -> Result<Run> {
    let t0 = Instant::now();
    let mut w = ImageWriter::new(1, WRITER);
    let fd = w.add_fd(FAKE_FD, S_IFREG);
    let spec = SessionSpec {
        name: b"files",
        owner: OWNER,
        flags: 0,
        seq: 0,
    };
    let specs = (0..n).map(|i| FileSpec {
        compatible: COMPATIBLE,
        token: i,
        fd_index: if i == 0 { fd } else { NO_FD },
        open_fd_index: NO_FD,
        status: 0,
        flags: 0,
        record: &RECORD,
    });
    w.add_session(&spec, specs)?;
    let bytes = w.finish()?;
    let write = t0.elapsed();

    let t1 = Instant::now();
    let image = Image::parse(&bytes)?;
    check(image.session_count() == 1, || {
        format!("{} sessions, expected 1", image.session_count())
    })?;
    let table = image.fds();
    check(
        table.len() == 1 && table.first().is_some_and(|e| e.fd.get() == FAKE_FD),
        || format!("fd table {table:?}"),
    )?;
    let mut seen = 0u64;
    for s in image.sessions() {
        check(s.name() == b"files" && s.file_count() == n, || {
            format!("session reads back as {s:?}")
        })?;
        for (i, f) in (0..).zip(s.files()) {
            let ok = f.token == i
                && f.compatible == COMPATIBLE
                && f.record == RECORD
                && f.status == 0
                && f.open_fd_index.is_none()
                && f.fd_index == (i == 0).then_some(fd);
            check(ok, || format!("file {i} reads back as {f:?}"))?;
            seen += 1;
        }
    }
    check(seen == n, || format!("walked {seen} files, expected {n}"))?;
    let read = t1.elapsed();
    Ok(Run {
        write,
        read,
        len: bytes.len(),
    })
}

/// One run of `kind` (`sessions` or `files`) at `n`, in a fresh process of this program, so
/// that every run starts from cold memory as luod does: each luod process writes or reads one
/// image. (Within one process, glibc hands a freed buffer of up to 32 MiB back to the next run
/// already faulted in, while a larger one is always fresh from `mmap`: repeated runs would
/// compare warm small images against cold large ones.)
fn measure(kind: &str, n: u64) -> Result<Run> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["image-run", kind, &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "image-run {kind} {n} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    match fields[..] {
        [write, read, len] => Ok(Run {
            write: Duration::from_nanos(write),
            read: Duration::from_nanos(read),
            len: usize::try_from(len)?,
        }),
        _ => Err(format!("image-run {kind} {n} printed {text:?}").into()),
    }
}

/// The child side of [`measure`]: `image-run <sessions|files> <n>` prints the write and read
/// times in nanoseconds and the image length.
pub(crate) fn run_one(args: &[String]) -> Result<()> {
    let (kind, n) = match args {
        [kind, n] => (kind.as_str(), n.parse::<u64>()?),
        _ => return Err("usage: luo-bench image-run <sessions|files> <n>".into()),
    };
    let r = match kind {
        "sessions" => sessions(n)?,
        "files" => files(n)?,
        _ => return Err(format!("unknown image kind {kind}").into()),
    };
    println!("{} {} {}", r.write.as_nanos(), r.read.as_nanos(), r.len);
    Ok(())
}

fn best(kind: &str, n: u64) -> Result<Run> {
    let (_, run) = best_of(RUNS, || {
        let r = measure(kind, n)?;
        Ok((r.write + r.read, r))
    })?;
    Ok(run)
}

fn report(kind: &str, n: u64, r: &Run) {
    put(&format!("image_{kind}_{n}_ms"), ms(r.write + r.read));
    put(&format!("image_{kind}_{n}_write_ms"), ms(r.write));
    put(&format!("image_{kind}_{n}_read_ms"), ms(r.read));
    put(&format!("image_{kind}_{n}_bytes"), r.len);
}

fn total(r: &Run) -> f64 {
    (r.write + r.read).as_secs_f64()
}

/// The `image` benchmark.
pub(crate) fn run() -> Result<()> {
    eprintln!(
        "image: write + parse + walk, best of {RUNS} runs each, every run in a fresh process"
    );
    let s100k = best("sessions", 100_000)?;
    let s1m = best("sessions", 1_000_000)?;
    let f100k = best("files", 100_000)?;
    let f1m = best("files", 1_000_000)?;
    report("sessions", 1_000_000, &s1m);
    report("files", 1_000_000, &f1m);
    report("sessions", 100_000, &s100k);
    report("files", 100_000, &f100k);
    put("image_bytes_per_session", s1m.len / 1_000_000);
    put("image_bytes_per_file", f1m.len / 1_000_000);
    put("image_linearity_ratio", ratio(total(&s1m), total(&s100k)));
    put(
        "image_files_linearity_ratio",
        ratio(total(&f1m), total(&f100k)),
    );
    Ok(())
}
