//! The native STATUS and LIST operations.

use luo_abi::Errno;
use luo_abi::wire::{
    LIST_FINISHED, LIST_INCOMING, LIST_MAX, LIST_RETRIEVED, ListEntry, ListReply, ListRequest,
    StatusReply, WIRE_VERSION,
};
use luo_core::Direction;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::conn::Cred;
use crate::server::{Reply, Server};

/// The version luod reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The STATUS reply. Root and luod's own uid (`admin`) see the whole machine; any other uid
/// sees only its own sessions, files, bytes, connections and descriptors.
pub fn status(server: &Server, cred: Cred, admin: bool) -> Vec<u8> {
    let ((out, inc), usage, clients, fd_used, fd_limit) = if admin {
        (
            server.engine.session_counts(),
            server.engine.total_usage(),
            server.conns.len() as u64,
            server.fds_used(),
            server.fd_limit,
        )
    } else {
        let usage = server.engine.usage(cred.uid);
        let clients = server
            .conns
            .values()
            .filter(|c| c.cred.uid == cred.uid)
            .count() as u64;
        // What its descriptor budget counts, out of its share.
        (
            server.engine.session_counts_of(cred.uid),
            usage,
            clients,
            server.held(cred.uid).uid,
            server.budget.share,
        )
    };
    // The copy engine and the migration are machine-wide: an administrator's to see.
    let (migrating, copy) = if admin {
        (
            server.migration.as_ref().map_or((0, 0), |m| {
                (
                    m.progress.load(std::sync::atomic::Ordering::Relaxed),
                    m.total,
                )
            }),
            server.copy_stats(),
        )
    } else {
        ((0, 0), luo_copy::Stats::default())
    };
    let mut version = [0u8; 32];
    let v = VERSION.as_bytes();
    version[..v.len().min(31)].copy_from_slice(&v[..v.len().min(31)]);
    let reply = StatusReply {
        wire_version: U32::new(WIRE_VERSION),
        pid: U32::new(std::process::id()),
        generation: U64::new(server.engine.generation()),
        sessions_outgoing: U64::new(out),
        sessions_incoming: U64::new(inc),
        files: U64::new(usage.files),
        bytes: U64::new(usage.bytes),
        clients: U64::new(clients),
        uptime_ms: U64::new(server.started.elapsed().as_millis() as u64),
        fd_limit: U64::new(fd_limit),
        fd_used: U64::new(fd_used),
        upgrades: U64::new(server.upgrades),
        version,
        last_upgrade_rounds: U32::new(server.last_upgrade.0),
        last_upgrade_flags: U32::new(server.last_upgrade.1),
        migrate_done: U64::new(migrating.0),
        migrate_total: U64::new(migrating.1),
        copy_bytes: U64::new(copy.bytes),
        copy_units: U64::new(copy.units),
        copy_units_fallback: U64::new(copy.units_fallback),
        copy_batches_cpu: U64::new(copy.batches_cpu_policy + copy.batches_cpu_no_driver),
        keeper_pid: U32::new(server.keeper.pid),
        restarts: U32::new(server.keeper.restarts),
        last_recovery_us: U64::new(server.keeper.last_recovery_us),
    };
    reply.as_bytes().to_vec()
}

/// The LIST reply: the caller's sessions (root's and luod's own uid: every session), from
/// `start`, as many as fit.
pub fn list(server: &Server, cred: Cred, admin: bool, arg: &[u8]) -> Reply {
    let Ok(req) = ListRequest::read_from_bytes(arg) else {
        return Reply::err_msg(Errno::EINVAL, "LIST takes an 8-byte start index");
    };
    let visible: Vec<_> = server
        .engine
        .sessions()
        .into_iter()
        .filter(|s| admin || s.owner == cred.uid)
        .collect();
    let start = usize::try_from(req.start.get())
        .unwrap_or(usize::MAX)
        .min(visible.len());
    let page = &visible[start..visible.len().min(start.saturating_add(LIST_MAX))];
    let head = ListReply {
        count: U32::new(page.len() as u32),
        reserved: U32::new(0),
        total: U64::new(visible.len() as u64),
    };
    let mut out = head.as_bytes().to_vec();
    for s in page {
        let flags = match s.direction {
            Direction::Outgoing => 0,
            Direction::Incoming {
                retrieved,
                finished,
            } => {
                LIST_INCOMING
                    | if retrieved { LIST_RETRIEVED } else { 0 }
                    | if finished { LIST_FINISHED } else { 0 }
            }
        };
        let mut name = [0u8; 64];
        name[..s.name.len()].copy_from_slice(&s.name);
        let entry = ListEntry {
            owner: U32::new(s.owner),
            flags: U32::new(flags),
            files: U64::new(s.files as u64),
            bytes: U64::new(s.bytes),
            name,
        };
        out.extend_from_slice(entry.as_bytes());
    }
    Reply::ok(out)
}
