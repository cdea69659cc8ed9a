//! The client side of a VMM's control socket: one line out, one line back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::Error;

/// Sends `cmd` to the VMM at `path` and returns its reply.
pub fn call(path: &Path, cmd: &str) -> Result<String, Error> {
    let io = |step| {
        move |e: std::io::Error| Error::Sys {
            step,
            source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
        }
    };
    let mut s = UnixStream::connect(path).map_err(io("connect to the VMM's control socket"))?;
    s.set_read_timeout(Some(Duration::from_secs(180)))
        .map_err(io("set timeout"))?;
    s.write_all(cmd.as_bytes()).map_err(io("write"))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(io("shutdown"))?;
    let mut out = String::new();
    s.take(1 << 16)
        .read_to_string(&mut out)
        .map_err(io("read"))?;
    Ok(out.trim().to_owned())
}
