//! [`DaemonWriter`]: the header, paths and pids at once, then one connection record and its
//! outbox replies at a time, concatenated by `finish`.

use alloc::vec::Vec;

use zerocopy::byteorder::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::rules::{self, Slots};
use super::{
    CONN_APPLIED, CONN_INCOMING, CONN_NAME_LEN, CONN_RECORD_LEN, CONN_REPLY_SENT, ConnKind,
    ConnRecord, DAEMON_ALIGN, DAEMON_HEADER_LEN, DAEMON_MAGIC, DAEMON_VERSION, DaemonConn,
    DaemonError, DaemonHeader, DaemonSettings, DaemonWriter, Direction, FdUse, LIMIT_BYTES,
    LIMIT_FD_RESERVE, LIMIT_FD_SHARE, LIMIT_FILES, LIMIT_SESSIONS, MAX_DAEMON_LEN, OutboxHeader,
};

/// Pads `out` with zeros to a multiple of 8.
fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(DAEMON_ALIGN), 0);
}

/// A limit's presence bit and value.
fn limit(bit: u32, value: Option<u64>) -> (u32, U64) {
    value.map_or((0, U64::ZERO), |v| (bit, U64::new(v)))
}

impl DaemonWriter {
    pub(super) fn new_impl(
        settings: &DaemonSettings<'_>,
        listener: u32,
        lock: u32,
    ) -> Result<Self, DaemonError> {
        let socket = settings.socket.as_bytes();
        let binary = settings.binary.as_bytes();
        rules::path("socket", socket)?;
        rules::path("binary", binary)?;
        let up = settings.last_upgrade;
        rules::last_upgrade(up.rounds, up.flags)?;
        rules::pids(settings.pids.iter().copied())?;
        let mut slots = Slots::default();
        slots.claim(listener, FdUse::Listener, u64::MAX)?;
        slots.claim(lock, FdUse::Lock, u64::MAX)?;

        let l = &settings.limits;
        let (b0, limit_sessions) = limit(LIMIT_SESSIONS, l.sessions);
        let (b1, limit_files) = limit(LIMIT_FILES, l.files);
        let (b2, limit_bytes) = limit(LIMIT_BYTES, l.bytes);
        let (b3, fd_share) = limit(LIMIT_FD_SHARE, l.fd_share);
        let (b4, fd_reserve) = limit(LIMIT_FD_RESERVE, l.fd_reserve);
        // Bounded by the checks above: paths of at most PATH_MAX bytes, at most MAX_PIDS pids.
        let header = DaemonHeader {
            magic: DAEMON_MAGIC,
            version: U32::new(DAEMON_VERSION),
            limits: U32::new(b0 | b1 | b2 | b3 | b4),
            length: U64::ZERO,
            upgrades: U64::new(settings.upgrades),
            last_upgrade_rounds: U32::new(up.rounds),
            last_upgrade_flags: U32::new(up.flags),
            listener: U32::new(listener),
            lock: U32::new(lock),
            socket_len: U32::new(socket.len() as u32),
            binary_len: U32::new(binary.len() as u32),
            pid_count: U32::new(settings.pids.len() as u32),
            conn_count: U32::ZERO,
            limit_sessions,
            limit_files,
            limit_bytes,
            fd_share,
            fd_reserve,
        };
        let mut head = Vec::with_capacity(DAEMON_HEADER_LEN + 2 * 64 + 4 * settings.pids.len());
        head.extend_from_slice(header.as_bytes());
        head.extend_from_slice(socket);
        pad(&mut head);
        head.extend_from_slice(binary);
        pad(&mut head);
        for &pid in &settings.pids {
            head.extend_from_slice(I32::new(pid).as_bytes());
        }
        pad(&mut head);
        Ok(DaemonWriter {
            head,
            conns: Vec::new(),
            conn_count: 0,
            outboxes: Vec::new(),
            slots,
        })
    }

    pub(super) fn add_conn_impl(&mut self, conn: &DaemonConn<'_>) -> Result<(), DaemonError> {
        let index = self.conn_count;
        let mut claimed = Vec::new();
        let result = self.encode_conn(index, conn, &mut claimed);
        match result {
            Ok((record, replies)) => {
                let len = self.head.len() + self.conns.len() + self.outboxes.len();
                let total = (len + CONN_RECORD_LEN + replies.len()) as u64;
                if total > MAX_DAEMON_LEN || index == u32::MAX {
                    for i in claimed {
                        self.slots.release(i);
                    }
                    return Err(DaemonError::TooLarge { len: total });
                }
                self.conns.extend_from_slice(record.as_bytes());
                self.outboxes.extend_from_slice(&replies);
                self.conn_count += 1;
                Ok(())
            }
            Err(e) => {
                for i in claimed {
                    self.slots.release(i);
                }
                Err(e)
            }
        }
    }

    /// The record of connection `index` and its outbox replies, claiming each fd-table index
    /// (pushed to `claimed`, so that the caller can release them if anything fails).
    fn encode_conn(
        &mut self,
        index: u32,
        conn: &DaemonConn<'_>,
        claimed: &mut Vec<u32>,
    ) -> Result<(ConnRecord, Vec<u8>), DaemonError> {
        if conn.pid < 0 {
            return Err(DaemonError::ConnPid {
                conn: index,
                pid: conn.pid,
            });
        }
        let mut name = [0u8; CONN_NAME_LEN];
        let mut flags = 0;
        if let ConnKind::Session {
            direction,
            name: session,
        } = conn.kind
        {
            rules::session_name(index, session)?;
            name.get_mut(..session.len())
                .ok_or(DaemonError::ConnName { conn: index })?
                .copy_from_slice(session);
            if direction == Direction::Incoming {
                flags |= CONN_INCOMING;
            }
        }
        let mut last_request = 0;
        if let Some(applied) = conn.last_request {
            flags |= CONN_APPLIED;
            if applied.reply_sent {
                flags |= CONN_REPLY_SENT;
            }
            last_request = applied.id;
        }
        let kind = conn.kind.code();
        rules::conn_flags(index, kind, flags)?;
        self.slots
            .claim(conn.fd_index, FdUse::Conn { conn: index }, u64::MAX)?;
        claimed.push(conn.fd_index);

        let mut replies = Vec::new();
        for (r, reply) in conn.outbox.iter().zip(0u32..) {
            rules::reply(index, reply, r.errno, r.arg.len(), r.fds.len())?;
            // Bounded by the check above: at most 4080 bytes and 253 descriptors.
            let header = OutboxHeader {
                id: U64::new(r.id),
                errno: I32::new(r.errno),
                arg_len: U16::new(r.arg.len() as u16),
                fd_count: U16::new(r.fds.len() as u16),
            };
            replies.extend_from_slice(header.as_bytes());
            replies.extend_from_slice(r.arg);
            for &fd in &r.fds {
                let used_by = FdUse::Reply { conn: index, reply };
                self.slots.claim(fd, used_by, u64::MAX)?;
                claimed.push(fd);
                replies.extend_from_slice(U32::new(fd).as_bytes());
            }
            pad(&mut replies);
        }
        let outbox_count = u32::try_from(conn.outbox.len())
            .map_err(|_| DaemonError::TooLarge { len: u64::MAX })?;
        let record = ConnRecord {
            fd_index: U32::new(conn.fd_index),
            kind: U32::new(kind),
            pid: I32::new(conn.pid),
            uid: U32::new(conn.uid),
            gid: U32::new(conn.gid),
            flags: U32::new(flags),
            last_request: U64::new(last_request),
            outbox_count: U32::new(outbox_count),
            reserved: U32::ZERO,
            name,
        };
        Ok((record, replies))
    }

    pub(super) fn finish_impl(self) -> Vec<u8> {
        let DaemonWriter {
            mut head,
            conns,
            conn_count,
            outboxes,
            ..
        } = self;
        let len = head.len() + conns.len() + outboxes.len();
        debug_assert_eq!(conns.len(), conn_count as usize * CONN_RECORD_LEN);
        if let Some(bytes) = head.get_mut(..DAEMON_HEADER_LEN)
            && let Ok(header) = DaemonHeader::mut_from_bytes(bytes)
        {
            header.length = U64::new(len as u64);
            header.conn_count = U32::new(conn_count);
        }
        head.reserve_exact(conns.len() + outboxes.len());
        head.extend_from_slice(&conns);
        head.extend_from_slice(&outboxes);
        head
    }
}
