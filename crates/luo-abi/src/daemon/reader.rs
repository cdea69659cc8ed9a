//! [`DaemonPart::parse`]: every check of `docs/format.md` ("Validation" of the daemon part), in
//! byte order, before anything is handed out.
//!
//! 1. Whole part: length bound, magic, version, header, `length`.
//! 2. Settings: limit bits, last upgrade, the listener's and lock's fd-table indices, the
//!    paths and their padding, the pids.
//! 3. The connection table, record by record.
//! 4. The outbox replies, in connection order.
//! 5. Nothing after the last reply.
//!
//! Every count is checked against the bytes left before anything is allocated for it, and each
//! step moves forward, so the reader is linear in the input (the fd-index set aside, which is
//! `O(n log n)`).

use alloc::vec::Vec;

use zerocopy::FromBytes;
use zerocopy::byteorder::little_endian::{I32, U32};

use super::rules::{self, Slots};
use super::{
    AppliedRequest, CONN_APPLIED, CONN_CONTROL, CONN_DETACHED, CONN_DEVICE, CONN_INCOMING,
    CONN_RECORD_LEN, CONN_REPLY_SENT, CONN_SESSION, ConnKind, ConnRecord, DAEMON_ALIGN,
    DAEMON_HEADER_LEN, DAEMON_MAGIC, DAEMON_VERSION, DaemonConn, DaemonError, DaemonHeader,
    DaemonLimits, DaemonPart, DaemonSettings, Direction, FdUse, LIMIT_BYTES, LIMIT_FD_RESERVE,
    LIMIT_FD_SHARE, LIMIT_FILES, LIMIT_SESSIONS, LIMITS_ALL, LastUpgrade, MAX_DAEMON_LEN, MAX_PIDS,
    OUTBOX_HEADER_LEN, OutboxHeader, OutboxReply, PATH_MAX,
};

/// Where the reader is in the part.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The next `len` bytes, or `Truncated` naming `what`.
    fn take(&mut self, what: &'static str, len: u64) -> Result<&'a [u8], DaemonError> {
        let truncated = DaemonError::Truncated {
            what,
            offset: self.at as u64,
            len,
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.at.checked_add(l))
            .ok_or(truncated.clone())?;
        let taken = self.bytes.get(self.at..end).ok_or(truncated)?;
        self.at = end;
        Ok(taken)
    }

    /// The zero padding up to the next multiple of 8.
    fn pad(&mut self) -> Result<(), DaemonError> {
        let len = self.at.next_multiple_of(DAEMON_ALIGN) - self.at;
        let start = self.at;
        let pad = self.take("padding", len as u64)?;
        if let Some(i) = pad.iter().position(|&b| b != 0) {
            return Err(DaemonError::Padding {
                offset: (start + i) as u64,
            });
        }
        Ok(())
    }
}

pub(super) fn parse(bytes: &[u8], fd_count: usize) -> Result<DaemonPart<'_>, DaemonError> {
    let len = bytes.len() as u64;
    if len > MAX_DAEMON_LEN {
        return Err(DaemonError::TooLarge { len });
    }
    // Magic and version first, so that a part of another version is named as such even if its
    // header is shorter than this version's.
    let (magic, rest) = bytes
        .split_at_checked(8)
        .ok_or(DaemonError::TooShort { len })?;
    if magic != DAEMON_MAGIC {
        return Err(DaemonError::Magic);
    }
    let (version, _) = U32::read_from_prefix(rest).map_err(|_| DaemonError::TooShort { len })?;
    if version.get() != DAEMON_VERSION {
        return Err(DaemonError::Version {
            found: version.get(),
        });
    }
    let (header, _) =
        DaemonHeader::ref_from_prefix(bytes).map_err(|_| DaemonError::TooShort { len })?;
    if header.length.get() != len {
        return Err(DaemonError::Length {
            declared: header.length.get(),
            actual: len,
        });
    }
    let fd_count = fd_count as u64;
    let mut slots = Slots::default();
    let settings = settings(header)?;
    slots.claim(header.listener.get(), FdUse::Listener, fd_count)?;
    slots.claim(header.lock.get(), FdUse::Lock, fd_count)?;

    let mut cur = Cursor {
        bytes,
        at: DAEMON_HEADER_LEN,
    };
    let socket = path(&mut cur, "socket", "socket path", header.socket_len.get())?;
    let binary = path(&mut cur, "binary", "binary path", header.binary_len.get())?;
    let pid_count = header.pid_count.get();
    if pid_count as usize > MAX_PIDS {
        return Err(DaemonError::TooManyPids {
            count: u64::from(pid_count),
        });
    }
    let raw = cur.take("pid list", u64::from(pid_count) * 4)?;
    let pids = <[I32]>::ref_from_bytes(raw).map_err(|_| DaemonError::Truncated {
        what: "pid list",
        offset: cur.at as u64,
        len: raw.len() as u64,
    })?;
    rules::pids(pids.iter().map(|p| p.get()))?;
    cur.pad()?;

    let conn_count = header.conn_count.get();
    let table_at = cur.at;
    let raw = cur.take(
        "connection table",
        u64::from(conn_count) * CONN_RECORD_LEN as u64,
    )?;
    let records = <[ConnRecord]>::ref_from_bytes(raw).map_err(|_| DaemonError::Truncated {
        what: "connection table",
        offset: table_at as u64,
        len: raw.len() as u64,
    })?;
    let mut conns = Vec::with_capacity(records.len());
    for (record, conn) in records.iter().zip(0u32..) {
        conns.push(conn_record(record, conn, &mut slots, fd_count)?);
    }
    for ((record, c), conn) in records.iter().zip(conns.iter_mut()).zip(0u32..) {
        for reply in 0..record.outbox_count.get() {
            c.outbox
                .push(outbox_reply(&mut cur, conn, reply, &mut slots, fd_count)?);
        }
    }
    if cur.at != bytes.len() {
        return Err(DaemonError::TrailingBytes {
            offset: cur.at as u64,
        });
    }
    Ok(DaemonPart {
        settings: DaemonSettings {
            socket,
            binary,
            pids: pids.iter().map(|p| p.get()).collect(),
            ..settings
        },
        listener: header.listener.get(),
        lock: header.lock.get(),
        conns,
    })
}

/// The settings held in the header itself (the paths and pids are filled in later).
fn settings(h: &DaemonHeader) -> Result<DaemonSettings<'static>, DaemonError> {
    let bits = h.limits.get();
    if bits & !LIMITS_ALL != 0 {
        return Err(DaemonError::LimitFlags { flags: bits });
    }
    let limit = |bit: u32, field: &'static str, value: u64| {
        if bits & bit != 0 {
            Ok(Some(value))
        } else if value != 0 {
            Err(DaemonError::AbsentLimit { field })
        } else {
            Ok(None)
        }
    };
    let limits = DaemonLimits {
        sessions: limit(LIMIT_SESSIONS, "limit_sessions", h.limit_sessions.get())?,
        files: limit(LIMIT_FILES, "limit_files", h.limit_files.get())?,
        bytes: limit(LIMIT_BYTES, "limit_bytes", h.limit_bytes.get())?,
        fd_share: limit(LIMIT_FD_SHARE, "fd_share", h.fd_share.get())?,
        fd_reserve: limit(LIMIT_FD_RESERVE, "fd_reserve", h.fd_reserve.get())?,
    };
    let last_upgrade = LastUpgrade {
        rounds: h.last_upgrade_rounds.get(),
        flags: h.last_upgrade_flags.get(),
    };
    rules::last_upgrade(last_upgrade.rounds, last_upgrade.flags)?;
    Ok(DaemonSettings {
        socket: "",
        binary: "",
        upgrades: h.upgrades.get(),
        last_upgrade,
        pids: Vec::new(),
        limits,
    })
}

/// A path of `len` bytes and its padding.
fn path<'a>(
    cur: &mut Cursor<'a>,
    which: &'static str,
    what: &'static str,
    len: u32,
) -> Result<&'a str, DaemonError> {
    if len == 0 || len as usize > PATH_MAX {
        return Err(DaemonError::PathLength {
            path: which,
            len: u64::from(len),
        });
    }
    let path = rules::path(which, cur.take(what, u64::from(len))?)?;
    cur.pad()?;
    Ok(path)
}

/// One connection record, without its outbox.
fn conn_record<'a>(
    r: &'a ConnRecord,
    conn: u32,
    slots: &mut Slots,
    fd_count: u64,
) -> Result<DaemonConn<'a>, DaemonError> {
    let code = r.kind.get();
    let flags = r.flags.get();
    if !matches!(
        code,
        CONN_CONTROL | CONN_DEVICE | CONN_SESSION | CONN_DETACHED
    ) {
        return Err(DaemonError::ConnKind { conn, kind: code });
    }
    rules::conn_flags(conn, code, flags)?;
    let pid = r.pid.get();
    if pid < 0 {
        return Err(DaemonError::ConnPid { conn, pid });
    }
    let kind = match code {
        CONN_CONTROL => ConnKind::Control,
        CONN_DEVICE => ConnKind::Device,
        CONN_SESSION => {
            let n = rules::name_field_len(&r.name).ok_or(DaemonError::ConnName { conn })?;
            let direction = if flags & CONN_INCOMING != 0 {
                Direction::Incoming
            } else {
                Direction::Outgoing
            };
            ConnKind::Session {
                direction,
                name: r.name.get(..n).unwrap_or_default(),
            }
        }
        _ => ConnKind::Detached,
    };
    if code != CONN_SESSION && r.name.iter().any(|&b| b != 0) {
        return Err(DaemonError::ConnName { conn });
    }
    if r.reserved.get() != 0 {
        return Err(DaemonError::ConnReserved { conn });
    }
    let last_request = if flags & CONN_APPLIED != 0 {
        Some(AppliedRequest {
            id: r.last_request.get(),
            reply_sent: flags & CONN_REPLY_SENT != 0,
        })
    } else if r.last_request.get() != 0 {
        return Err(DaemonError::LastRequest { conn });
    } else {
        None
    };
    slots.claim(r.fd_index.get(), FdUse::Conn { conn }, fd_count)?;
    Ok(DaemonConn {
        fd_index: r.fd_index.get(),
        kind,
        pid,
        uid: r.uid.get(),
        gid: r.gid.get(),
        last_request,
        outbox: Vec::new(),
    })
}

/// One outbox reply and its padding.
fn outbox_reply<'a>(
    cur: &mut Cursor<'a>,
    conn: u32,
    reply: u32,
    slots: &mut Slots,
    fd_count: u64,
) -> Result<OutboxReply<'a>, DaemonError> {
    let at = cur.at as u64;
    let raw = cur.take("outbox reply", OUTBOX_HEADER_LEN as u64)?;
    let h = OutboxHeader::ref_from_bytes(raw).map_err(|_| DaemonError::Truncated {
        what: "outbox reply",
        offset: at,
        len: OUTBOX_HEADER_LEN as u64,
    })?;
    let arg_len = usize::from(h.arg_len.get());
    let fd_count_here = usize::from(h.fd_count.get());
    rules::reply(conn, reply, h.errno.get(), arg_len, fd_count_here)?;
    let arg = cur.take("reply argument", arg_len as u64)?;
    let at = cur.at as u64;
    let raw = cur.take("reply descriptors", fd_count_here as u64 * 4)?;
    let indices = <[U32]>::ref_from_bytes(raw).map_err(|_| DaemonError::Truncated {
        what: "reply descriptors",
        offset: at,
        len: raw.len() as u64,
    })?;
    let mut fds = Vec::with_capacity(indices.len());
    for i in indices {
        slots.claim(i.get(), FdUse::Reply { conn, reply }, fd_count)?;
        fds.push(i.get());
    }
    cur.pad()?;
    Ok(OutboxReply {
        id: h.id.get(),
        errno: h.errno.get(),
        arg,
        fds,
    })
}
