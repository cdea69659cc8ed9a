//! Times writing and parsing large handover images.
//!
//! `cargo run --release -p luo-abi --example image_bench [N]` (N defaults to 1,000,000) prints,
//! for N sessions without files, N sessions with one file each and one session with N files,
//! the image size and the time to write it, to parse it, and to read every entry back.

use std::time::{Duration, Instant};

use luo_abi::image::{
    FileSpec, Image, ImageError, ImageWriter, NO_FD, SESSION_INCOMING, SessionSpec,
};

fn spec(name: &[u8], seq: u64) -> SessionSpec<'_> {
    SessionSpec {
        name,
        owner: 1000,
        flags: SESSION_INCOMING,
        seq,
    }
}

fn file(token: u64, fd_index: u32) -> FileSpec<'static> {
    FileSpec {
        compatible: "memfd-v1",
        token,
        fd_index,
        open_fd_index: NO_FD,
        status: 0,
        flags: 0,
        record: b"0123456789abcdef",
    }
}

fn sessions(n: u64, files_each: u64) -> Result<Vec<u8>, ImageError> {
    let mut w = ImageWriter::new(1, "bench");
    let mut name = *b"session-00000000";
    let mut fd = 3;
    for i in 0..n {
        // "session-<i in 8 digits>", without a per-session allocation.
        let mut v = i;
        for d in name[8..].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let first = fd as u32 - 3;
        for _ in 0..files_each {
            w.add_fd(fd, 0o100000);
            fd += 1;
        }
        let files = (0..files_each).map(|t| file(t, first + t as u32));
        w.add_session(&spec(&name, i), files)?;
    }
    w.finish()
}

fn one_session(n: u64) -> Result<Vec<u8>, ImageError> {
    let mut w = ImageWriter::new(1, "bench");
    let files = (0..n).map(|t| file(t, NO_FD));
    w.add_session(&spec(b"big", 0), files)?;
    w.finish()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(label: &str, build: impl Fn() -> Result<Vec<u8>, ImageError>) -> Result<(), ImageError> {
    let t = Instant::now();
    let bytes = build()?;
    let write = t.elapsed();
    let t = Instant::now();
    let image = Image::parse(&bytes)?;
    let parse = t.elapsed();
    let t = Instant::now();
    let mut files = 0u64;
    let mut sum = 0u64;
    for s in image.sessions() {
        sum = sum
            .wrapping_add(s.seq())
            .wrapping_add(s.name().len() as u64);
        for f in s.files() {
            files += 1;
            sum = sum
                .wrapping_add(f.token)
                .wrapping_add(f.record.len() as u64);
        }
    }
    let read = t.elapsed();
    println!(
        "{label:<32} {:>7.1} MB  write {:>7.1} ms  parse {:>7.1} ms  read {:>6.1} ms  \
         write+parse {:>7.1} ms  ({} sessions, {files} files, checksum {sum})",
        bytes.len() as f64 / 1e6,
        ms(write),
        ms(parse),
        ms(read),
        ms(write + parse),
        image.session_count(),
    );
    Ok(())
}

fn main() -> Result<(), ImageError> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let crc = {
        let data = vec![0x5au8; 64 << 20];
        let t = Instant::now();
        std::hint::black_box(crc32fast::hash(&data));
        (64 << 20) as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    println!("crc32fast: {crc:.2} GB/s");
    run(&format!("{n} sessions, no files"), || sessions(n, 0))?;
    run(&format!("{n} sessions, 1 file each"), || sessions(n, 1))?;
    run(&format!("1 session, {n} files"), || one_session(n))?;
    Ok(())
}
