//! A workload that survives its own replacement through luod.
//!
//! ```text
//! cargo run -p luo-client --example workload -- v1 counter    # preserve state, hand off, exit
//! cargo run -p luo-client --example workload -- v2 counter    # retrieve, print, finish
//! ```
//!
//! Version 1 keeps a counter in a memfd, preserves it in session `<name>` and hands the session
//! off. Version 2, a new process, retrieves the memfd (the same memory, not a copy), increments
//! the counter and finishes the session. `--keep` makes version 2 preserve the new value in a
//! fresh outgoing session instead, which a `luoctl reboot` then carries to a version 3.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;

use luo_client::Device;

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (stage, name) = match args.as_slice() {
        [stage, name, ..] => (stage.as_str(), name.as_str()),
        _ => return Err("usage: workload v1|v2|v3 NAME [--keep]".into()),
    };
    let keep = args.iter().any(|a| a == "--keep");
    let device = Device::open()?;
    match stage {
        "v1" => {
            let memfd = rustix::fs::memfd_create("counter", rustix::fs::MemfdFlags::CLOEXEC)?;
            let mut file = std::fs::File::from(memfd);
            file.write_all(b"1")?;
            let session = device.create_session(name)?;
            session.preserve(&file, 1)?;
            session.handoff()?;
            println!(
                "v1 (pid {}): counter=1 preserved in session {name:?} and handed off",
                std::process::id()
            );
        }
        "v2" | "v3" => {
            let session = device.retrieve_session(name)?;
            let mut file = std::fs::File::from(session.retrieve(1)?);
            let mut text = String::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_string(&mut text)?;
            let value: u64 = text.trim().parse()?;
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            write!(file, "{}", value + 1)?;
            println!(
                "{stage} (pid {}): counter was {value}, now {}",
                std::process::id(),
                value + 1
            );
            session.finish()?;
            drop(session);
            if keep {
                let next = device.create_session(name)?;
                next.preserve(&file, 1)?;
                println!(
                    "{stage}: counter preserved again in outgoing session {name:?}; holding it"
                );
                println!(
                    "{stage}: run `luoctl reboot` in another terminal, then press Ctrl-C here"
                );
                // Hold the session open until killed: an open outgoing session survives a reboot.
                loop {
                    std::thread::park();
                }
            }
        }
        other => return Err(format!("unknown stage {other:?}").into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::FAILURE
        }
    }
}
