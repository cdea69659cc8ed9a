//! Helpers shared by the daemon part and journal tests: sample inputs with a known layout, the
//! fuzz seeds, a deterministic random generator, and a record framer that skips the writer's
//! checks (to forge hostile journals).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use luo_abi::daemon::{
    AppliedRequest, ConnKind, DaemonConn, DaemonLimits, DaemonSettings, DaemonWriter, Direction,
    LastUpgrade, OutboxReply,
};
use luo_abi::journal::{
    Checkpoint, ConnClose, ConnOpen, Entry, JournalWriter, RecordType, ReplySent, RequestApplied,
};

// ---- The sample daemon part ----
//
//  0    header (104)
//  104  socket path "/run/luod/luod.sock" (19) + 5 padding
//  128  binary path "/usr/libexec/luod" (17) + 7 padding
//  152  pids 100, 200, 300 (12) + 4 padding
//  168  5 connection records (104 each)
//  688  connection 2, reply 0: header, "hello", fds 5 and 6, 3 padding (32)
//  720  connection 2, reply 1: header only (16)
//  736  end

pub const SOCKET_AT: usize = 104;
pub const SOCKET_PAD_AT: usize = SOCKET_AT + 19;
pub const BINARY_AT: usize = 128;
pub const PIDS_AT: usize = 152;
pub const CONNS_AT: usize = 168;
pub const OUTBOX_AT: usize = 688;
pub const REPLY1_AT: usize = 720;
pub const SAMPLE_LEN: usize = 736;
/// Slots in the sample's fd table: 0 to 8 are used.
pub const SAMPLE_FDS: usize = 9;

/// Offset of connection `i`'s record in the sample.
pub fn conn_at(i: usize) -> usize {
    CONNS_AT + 104 * i
}

// Field offsets in the header.
pub const H_VERSION: usize = 8;
pub const H_LIMITS: usize = 12;
pub const H_LENGTH: usize = 16;
pub const H_ROUNDS: usize = 32;
pub const H_UP_FLAGS: usize = 36;
pub const H_LISTENER: usize = 40;
pub const H_LOCK: usize = 44;
pub const H_SOCKET_LEN: usize = 48;
pub const H_PID_COUNT: usize = 56;
pub const H_CONN_COUNT: usize = 60;
pub const H_LIMIT_FILES: usize = 72;
// Field offsets in a connection record.
pub const C_FD: usize = 0;
pub const C_KIND: usize = 4;
pub const C_PID: usize = 8;
pub const C_FLAGS: usize = 20;
pub const C_OUTBOX_COUNT: usize = 32;
pub const C_RESERVED: usize = 36;
pub const C_NAME: usize = 40;
// Field offsets in an outbox reply.
pub const R_ERRNO: usize = 8;
pub const R_ARG_LEN: usize = 12;
pub const R_FD_COUNT: usize = 14;

pub fn sample_settings() -> DaemonSettings<'static> {
    DaemonSettings {
        socket: "/run/luod/luod.sock",
        binary: "/usr/libexec/luod",
        upgrades: 3,
        last_upgrade: LastUpgrade {
            rounds: 2,
            flags: luo_abi::wire::UPGRADE_STOP_AND_COPY,
        },
        pids: vec![100, 200, 300],
        limits: DaemonLimits {
            sessions: Some(8),
            bytes: Some(1 << 30),
            ..DaemonLimits::default()
        },
    }
}

pub fn sample_conns() -> Vec<DaemonConn<'static>> {
    let conn = |fd_index, kind, pid, uid| DaemonConn {
        fd_index,
        kind,
        pid,
        uid,
        gid: uid,
        last_request: None,
        outbox: vec![],
    };
    let mut device = conn(3, ConnKind::Device, 11, 1000);
    device.last_request = Some(AppliedRequest {
        id: 5,
        reply_sent: true,
    });
    let session = ConnKind::Session {
        direction: Direction::Outgoing,
        name: b"vm-42",
    };
    let mut outgoing = conn(4, session, 12, 1000);
    outgoing.last_request = Some(AppliedRequest {
        id: 7,
        reply_sent: false,
    });
    outgoing.outbox = vec![
        OutboxReply {
            id: 7,
            errno: 0,
            arg: b"hello",
            fds: vec![5, 6],
        },
        OutboxReply {
            id: 8,
            errno: 16,
            arg: b"",
            fds: vec![],
        },
    ];
    let incoming = ConnKind::Session {
        direction: Direction::Incoming,
        name: b"db",
    };
    vec![
        conn(2, ConnKind::Control, 10, 0),
        device,
        outgoing,
        conn(7, incoming, 0, 2000),
        conn(8, ConnKind::Detached, 13, 1000),
    ]
}

/// The sample daemon part (layout above).
pub fn sample_daemon() -> Vec<u8> {
    let mut w = DaemonWriter::new(&sample_settings(), 0, 1).unwrap();
    for c in sample_conns() {
        w.add_conn(&c).unwrap();
    }
    let bytes = w.finish();
    assert_eq!(bytes.len(), SAMPLE_LEN);
    bytes
}

/// The smallest part: no pid, no limit, no connection.
pub fn minimal_daemon() -> Vec<u8> {
    let s = DaemonSettings::new("/s", "/b");
    DaemonWriter::new(&s, 5, 3).unwrap().finish()
}

/// A part with many connections, each with a reply carrying a descriptor.
pub fn big_daemon() -> Vec<u8> {
    let mut s = sample_settings();
    s.pids = (1..=64).collect();
    let mut w = DaemonWriter::new(&s, 0, 1).unwrap();
    for i in 0..100u32 {
        let name = [b'a' + (i % 26) as u8; 63];
        w.add_conn(&DaemonConn {
            fd_index: 2 + 2 * i,
            kind: ConnKind::Session {
                direction: Direction::Incoming,
                name: &name[..1 + (i as usize % 63)],
            },
            pid: i as i32,
            uid: i,
            gid: i,
            last_request: Some(AppliedRequest {
                id: u64::from(i),
                reply_sent: i % 2 == 0,
            }),
            outbox: vec![OutboxReply {
                id: u64::from(i),
                errno: (i % 40) as i32,
                arg: &name[..i as usize % 63],
                fds: vec![3 + 2 * i],
            }],
        })
        .unwrap();
    }
    w.finish()
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

// ---- The sample journal ----

pub const GENERATION: u64 = 7;
pub const CHECKPOINT_SEQ: u64 = 100;
/// The type of the sample's skippable record, which this version does not define.
pub const FUTURE: RecordType = RecordType(RecordType::MAY_SKIP | 0x42);

/// The entries of the sample journal, seq 101 to 107.
pub fn sample_entries() -> Vec<Entry<'static>> {
    vec![
        Entry::ConnOpen(ConnOpen {
            fd: 10,
            kind: 0,
            pid: 5,
            uid: 0,
            gid: 0,
        }),
        Entry::ConnOpen(ConnOpen {
            fd: 11,
            kind: 1,
            pid: 6,
            uid: 1000,
            gid: 1000,
        }),
        Entry::RequestApplied(RequestApplied {
            conn_fd: 11,
            request_id: 1,
            errno: 0,
            arg: b"abc",
            fds: vec![12, 13],
        }),
        Entry::ReplySent(ReplySent {
            conn_fd: 11,
            request_id: 1,
        }),
        Entry::Skipped {
            rtype: FUTURE,
            payload: b"future",
        },
        Entry::Checkpoint(Checkpoint { covers: 103 }),
        Entry::ConnClose(ConnClose { fd: 10 }),
    ]
}

/// The sample journal and the offset of each record, then the end.
pub fn sample_journal() -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut w = JournalWriter::create(&mut out, GENERATION, CHECKPOINT_SEQ).unwrap();
    let mut offsets = vec![];
    for e in sample_entries() {
        offsets.push(out.len());
        w.append(&mut out, &e).unwrap();
    }
    offsets.push(out.len());
    (out, offsets)
}

/// A record framed by hand: any type, flags, seq and payload, with a correct CRC.
pub fn raw_record(rtype: u16, flags: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&rtype.to_le_bytes());
    r.extend_from_slice(&flags.to_le_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(payload);
    let crc = crc32fast::hash(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    r
}

/// A journal header followed by `records`.
pub fn journal_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    JournalWriter::create(&mut out, GENERATION, CHECKPOINT_SEQ).unwrap();
    for r in records {
        out.extend_from_slice(r);
    }
    out
}

/// A journal with one record of each kind per connection, many connections.
pub fn big_journal() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = JournalWriter::create(&mut out, 1, 0).unwrap();
    let arg = [0x5a; 200];
    for i in 0..60 {
        let fd = 10 + i;
        w.append(
            &mut out,
            &Entry::ConnOpen(ConnOpen {
                fd,
                kind: (i % 4) as u32,
                pid: i,
                uid: i as u32,
                gid: 0,
            }),
        )
        .unwrap();
        let applied = RequestApplied {
            conn_fd: fd,
            request_id: i as u64,
            errno: i % 3,
            arg: &arg[..i as usize * 3],
            fds: (0..i % 5).map(|k| 1000 + 10 * i + k).collect(),
        };
        w.append(&mut out, &Entry::RequestApplied(applied)).unwrap();
        let sent = ReplySent {
            conn_fd: fd,
            request_id: i as u64,
        };
        w.append(&mut out, &Entry::ReplySent(sent)).unwrap();
        if i % 10 == 9 {
            let covers = w.next_seq() - 1;
            w.append(&mut out, &Entry::Checkpoint(Checkpoint { covers }))
                .unwrap();
        }
    }
    w.append(&mut out, &Entry::ConnClose(ConnClose { fd: 10 }))
        .unwrap();
    out
}

// ---- Fuzz seeds ----

/// The directory of a fuzz target's seeds.
pub fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target)
}

/// Checks that `fuzz/seeds/<target>` holds exactly `seeds`, or writes them there when
/// `LUO_WRITE_SEEDS=1`.
pub fn check_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = seed_dir(target);
    if std::env::var("LUO_WRITE_SEEDS").as_deref() == Ok("1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = seeds.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(on_disk, names, "seeds in {}", dir.display());
    for (name, bytes) in seeds {
        let stored = std::fs::read(dir.join(name)).unwrap();
        assert!(
            &stored == bytes,
            "{}/{name} is not what the writer makes now; run \
             LUO_WRITE_SEEDS=1 cargo test -p luo-abi --test {target}_fuzz_corpus",
            dir.display()
        );
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
