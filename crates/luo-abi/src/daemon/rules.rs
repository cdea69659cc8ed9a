//! The rules a daemon part obeys, shared by the writer (which refuses input that breaks them)
//! and the reader (which refuses a part that breaks them), so that every part the writer makes
//! is one the reader accepts.

use alloc::collections::BTreeSet;

use super::{
    CONN_APPLIED, CONN_FLAGS_ALL, CONN_INCOMING, CONN_NAME_MAX, CONN_REPLY_SENT, CONN_SESSION,
    DaemonError, FdUse, LAST_UPGRADE_FLAGS_ALL, MAX_ERRNO, MAX_PIDS, MAX_REPLY_ARG, MAX_REPLY_FDS,
    PATH_MAX,
};

/// A socket or binary path: 1..=`PATH_MAX` bytes of UTF-8 without NUL.
pub(super) fn path<'a>(which: &'static str, bytes: &'a [u8]) -> Result<&'a str, DaemonError> {
    if bytes.is_empty() || bytes.len() > PATH_MAX {
        return Err(DaemonError::PathLength {
            path: which,
            len: bytes.len() as u64,
        });
    }
    let s = core::str::from_utf8(bytes).map_err(|_| DaemonError::PathUtf8 { path: which })?;
    if bytes.contains(&0) {
        return Err(DaemonError::PathNul { path: which });
    }
    Ok(s)
}

/// Known flag bits only, and none before any upgrade.
pub(super) fn last_upgrade(rounds: u32, flags: u32) -> Result<(), DaemonError> {
    if flags & !LAST_UPGRADE_FLAGS_ALL != 0 || (rounds == 0 && flags != 0) {
        return Err(DaemonError::LastUpgrade { rounds, flags });
    }
    Ok(())
}

/// Positive, distinct, at most `MAX_PIDS`.
pub(super) fn pids(pids: impl ExactSizeIterator<Item = i32>) -> Result<(), DaemonError> {
    if pids.len() > MAX_PIDS {
        return Err(DaemonError::TooManyPids {
            count: pids.len() as u64,
        });
    }
    let mut seen = BTreeSet::new();
    for (pid, index) in pids.zip(0u32..) {
        if pid <= 0 {
            return Err(DaemonError::Pid { index, pid });
        }
        if !seen.insert(pid) {
            return Err(DaemonError::DuplicatePid { index, pid });
        }
    }
    Ok(())
}

/// Known bits; incoming only on a session connection; reply sent only after a request applied.
pub(super) fn conn_flags(conn: u32, kind: u32, flags: u32) -> Result<(), DaemonError> {
    let bad = flags & !CONN_FLAGS_ALL != 0
        || (flags & CONN_INCOMING != 0 && kind != CONN_SESSION)
        || (flags & CONN_REPLY_SENT != 0 && flags & CONN_APPLIED == 0);
    if bad {
        return Err(DaemonError::ConnFlags { conn, flags });
    }
    Ok(())
}

/// A session connection's name as the writer takes it: 1..=63 bytes, no NUL.
pub(super) fn session_name(conn: u32, name: &[u8]) -> Result<(), DaemonError> {
    if name.is_empty() || name.len() > CONN_NAME_MAX || name.contains(&0) {
        return Err(DaemonError::ConnName { conn });
    }
    Ok(())
}

/// The length of the name in a NUL-padded field holding 1..=63 non-NUL bytes, if valid.
pub(super) fn name_field_len(field: &[u8]) -> Option<usize> {
    let n = field.iter().position(|&b| b == 0)?;
    let valid = (1..=CONN_NAME_MAX).contains(&n) && field.get(n..)?.iter().all(|&b| b == 0);
    valid.then_some(n)
}

/// A reply's errno, argument length and descriptor count.
pub(super) fn reply(
    conn: u32,
    reply: u32,
    errno: i32,
    arg_len: usize,
    fd_count: usize,
) -> Result<(), DaemonError> {
    if !(0..=MAX_ERRNO).contains(&errno) {
        return Err(DaemonError::ReplyErrno { conn, reply, errno });
    }
    if arg_len > MAX_REPLY_ARG {
        return Err(DaemonError::ReplyArg {
            conn,
            reply,
            len: arg_len as u64,
        });
    }
    if fd_count > MAX_REPLY_FDS {
        return Err(DaemonError::ReplyFds {
            conn,
            reply,
            count: fd_count as u64,
        });
    }
    Ok(())
}

/// The fd-table indices used so far: each below `fd_count`, each used once.
#[derive(Debug, Default)]
pub(super) struct Slots {
    used: BTreeSet<u32>,
}

impl Slots {
    /// Records that `used_by` uses `index`.
    pub(super) fn claim(
        &mut self,
        index: u32,
        used_by: FdUse,
        fd_count: u64,
    ) -> Result<(), DaemonError> {
        if u64::from(index) >= fd_count {
            return Err(DaemonError::FdIndex {
                used_by,
                index,
                fd_count,
            });
        }
        if !self.used.insert(index) {
            return Err(DaemonError::FdReused { used_by, index });
        }
        Ok(())
    }

    /// Forgets `index` (the writer undoing a connection it refused).
    pub(super) fn release(&mut self, index: u32) {
        self.used.remove(&index);
    }
}
