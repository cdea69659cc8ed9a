//! The daemon part: what the writer writes the parser reads back (proptest), and every damaged
//! or forged part is refused with its own error, never a panic.
//!
//! Most hostile cases tamper with one field of the sample part (layout in `records::`), keeping
//! its length right, so that the check under test is the one that fires.
#![allow(clippy::unwrap_used)]

mod records;

use luo_abi::daemon::{
    AppliedRequest, CONN_APPLIED, CONN_INCOMING, CONN_REPLY_SENT, ConnKind, DAEMON_COMPATIBLE,
    DaemonConn, DaemonError, DaemonLimits, DaemonPart, DaemonSettings, DaemonWriter, Direction,
    FdUse, LastUpgrade, MAX_PIDS, OutboxReply, PATH_MAX, reseal,
};
use proptest::prelude::*;
use records::*;

/// Tampers with the sample and parses it with the sample's fd table.
fn tamper(f: impl FnOnce(&mut Vec<u8>)) -> Result<(), DaemonError> {
    let mut b = sample_daemon();
    f(&mut b);
    DaemonPart::parse(&b, SAMPLE_FDS).map(|_| ())
}

#[test]
fn sample_reads_back() {
    let bytes = sample_daemon();
    let part = DaemonPart::parse(&bytes, SAMPLE_FDS).unwrap();
    assert_eq!(part.settings, sample_settings());
    assert_eq!((part.listener, part.lock), (0, 1));
    assert_eq!(part.conns, sample_conns());
    assert_eq!(part.to_bytes().unwrap(), bytes);
    let uses: Vec<(u32, FdUse)> = part.fd_uses().collect();
    assert_eq!(uses.len(), SAMPLE_FDS);
    assert_eq!(uses[5], (5, FdUse::Reply { conn: 2, reply: 0 }));
    // The same part through the image's part node.
    let again = DaemonPart::parse_part(DAEMON_COMPATIBLE, &bytes, SAMPLE_FDS).unwrap();
    assert_eq!(again, part);
    // Resealing a part that is whole changes nothing.
    let mut copy = bytes.clone();
    reseal(&mut copy);
    assert_eq!(copy, bytes);
}

#[test]
fn minimal_and_big_parts_read_back() {
    let min = minimal_daemon();
    assert_eq!(min.len(), 104 + 8 + 8);
    let part = DaemonPart::parse(&min, 6).unwrap();
    assert_eq!(part.settings, DaemonSettings::new("/s", "/b"));
    assert_eq!((part.listener, part.lock), (5, 3));
    assert!(part.conns.is_empty());
    let big = big_daemon();
    let part = DaemonPart::parse(&big, 202).unwrap();
    assert_eq!(part.conns.len(), 100);
    assert_eq!(part.to_bytes().unwrap(), big);
}

// ---- Whole part ----

#[test]
fn every_truncation_is_refused() {
    let bytes = sample_daemon();
    for len in 0..bytes.len() {
        let err = DaemonPart::parse(&bytes[..len], SAMPLE_FDS).unwrap_err();
        let want = if len < 104 {
            DaemonError::TooShort { len: len as u64 }
        } else {
            DaemonError::Length {
                declared: SAMPLE_LEN as u64,
                actual: len as u64,
            }
        };
        assert_eq!(err, want, "length {len}");
        // With the length field repaired, the part still falls short of what it counts.
        let mut cut = bytes[..len].to_vec();
        reseal(&mut cut);
        if len >= 104 {
            let err = DaemonPart::parse(&cut, SAMPLE_FDS).unwrap_err();
            assert!(
                matches!(err, DaemonError::Truncated { .. }),
                "length {len}: {err}"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut b = sample_daemon();
    b.extend_from_slice(&[0; 8]);
    assert_eq!(
        DaemonPart::parse(&b, SAMPLE_FDS).unwrap_err(),
        DaemonError::Length {
            declared: SAMPLE_LEN as u64,
            actual: SAMPLE_LEN as u64 + 8
        }
    );
    reseal(&mut b);
    assert_eq!(
        DaemonPart::parse(&b, SAMPLE_FDS).unwrap_err(),
        DaemonError::TrailingBytes {
            offset: SAMPLE_LEN as u64
        }
    );
}

#[test]
fn bad_magic_is_refused() {
    assert_eq!(tamper(|b| b[0] ^= 1), Err(DaemonError::Magic));
    assert_eq!(tamper(|b| b[7] = b'!'), Err(DaemonError::Magic));
}

#[test]
fn the_text_form_and_unknown_versions_are_refused() {
    // Version 1 was `key=value` text: its bytes are not a v2 part.
    let text = b"socket=/run/luod.sock\nbinary=/usr/bin/luod\nupgrades=1\n";
    assert_eq!(DaemonPart::parse(text, 4).unwrap_err(), DaemonError::Magic);
    let err = DaemonPart::parse_part("luod-daemon-v1", text, 4).unwrap_err();
    assert_eq!(
        err,
        DaemonError::Compatible {
            found: "luod-daemon-v1".into()
        }
    );
    assert!(err.to_string().contains("luod-daemon-v2"), "{err}");
    // A binary part that says version 1, or a later version than this reader knows.
    let err = tamper(|b| put_u32(b, H_VERSION, 1)).unwrap_err();
    assert_eq!(err, DaemonError::Version { found: 1 });
    assert!(err.to_string().contains("text form"), "{err}");
    let err = tamper(|b| put_u32(b, H_VERSION, 3)).unwrap_err();
    assert_eq!(err, DaemonError::Version { found: 3 });
    assert!(err.to_string().contains("version 3"), "{err}");
    // A later version is named as such even when it is shorter than a v2 header.
    let mut short = sample_daemon()[..40].to_vec();
    put_u32(&mut short, H_VERSION, 3);
    assert_eq!(
        DaemonPart::parse(&short, 4).unwrap_err(),
        DaemonError::Version { found: 3 }
    );
}

#[test]
fn length_field_must_match() {
    assert_eq!(
        tamper(|b| put_u64(b, H_LENGTH, 1 << 40)),
        Err(DaemonError::Length {
            declared: 1 << 40,
            actual: SAMPLE_LEN as u64
        })
    );
}

// ---- Settings ----

#[test]
fn unknown_limit_bits_are_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, H_LIMITS, 0b10_0101)),
        Err(DaemonError::LimitFlags { flags: 0b10_0101 })
    );
}

#[test]
fn a_value_for_an_absent_limit_is_refused() {
    // The sample has no file limit.
    assert_eq!(
        tamper(|b| put_u64(b, H_LIMIT_FILES, 9)),
        Err(DaemonError::AbsentLimit {
            field: "limit_files"
        })
    );
    // Declaring it present makes it valid.
    let mut b = sample_daemon();
    put_u64(&mut b, H_LIMIT_FILES, 9);
    put_u32(&mut b, H_LIMITS, 0b111);
    let part = DaemonPart::parse(&b, SAMPLE_FDS).unwrap();
    assert_eq!(part.settings.limits.files, Some(9));
}

#[test]
fn bad_last_upgrade_is_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, H_UP_FLAGS, 2)),
        Err(DaemonError::LastUpgrade {
            rounds: 2,
            flags: 2
        })
    );
    assert_eq!(
        tamper(|b| put_u32(b, H_ROUNDS, 0)),
        Err(DaemonError::LastUpgrade {
            rounds: 0,
            flags: 1
        })
    );
}

#[test]
fn bad_path_lengths_are_refused() {
    for len in [0, PATH_MAX as u32 + 1, u32::MAX] {
        assert_eq!(
            tamper(|b| put_u32(b, H_SOCKET_LEN, len)),
            Err(DaemonError::PathLength {
                path: "socket",
                len: u64::from(len)
            })
        );
    }
    // A socket path that runs into its padding, and one that leaves a byte of it out.
    assert_eq!(
        tamper(|b| put_u32(b, H_SOCKET_LEN, 20)),
        Err(DaemonError::PathNul { path: "socket" })
    );
    assert_eq!(
        tamper(|b| put_u32(b, H_SOCKET_LEN, 18)),
        Err(DaemonError::Padding {
            offset: SOCKET_AT as u64 + 18
        })
    );
    // One that claims more than the part holds.
    assert_eq!(
        tamper(|b| put_u32(b, H_SOCKET_LEN, 4000)),
        Err(DaemonError::Truncated {
            what: "socket path",
            offset: SOCKET_AT as u64,
            len: 4000
        })
    );
}

#[test]
fn paths_must_be_utf8_without_nul() {
    assert_eq!(
        tamper(|b| b[SOCKET_AT + 3] = 0xff),
        Err(DaemonError::PathUtf8 { path: "socket" })
    );
    assert_eq!(
        tamper(|b| b[BINARY_AT + 4] = 0),
        Err(DaemonError::PathNul { path: "binary" })
    );
}

#[test]
fn non_zero_padding_is_refused() {
    assert_eq!(
        tamper(|b| b[SOCKET_PAD_AT] = b'x'),
        Err(DaemonError::Padding {
            offset: SOCKET_PAD_AT as u64
        })
    );
    // After the pids (three of them, 12 bytes, padded to 16).
    assert_eq!(
        tamper(|b| b[PIDS_AT + 13] = 1),
        Err(DaemonError::Padding {
            offset: PIDS_AT as u64 + 13
        })
    );
    // After a reply ("hello" and two descriptors: 29 bytes, padded to 32).
    assert_eq!(
        tamper(|b| b[OUTBOX_AT + 31] = 1),
        Err(DaemonError::Padding {
            offset: OUTBOX_AT as u64 + 31
        })
    );
}

#[test]
fn bad_pids_are_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, H_PID_COUNT, MAX_PIDS as u32 + 1)),
        Err(DaemonError::TooManyPids {
            count: MAX_PIDS as u64 + 1
        })
    );
    assert_eq!(
        tamper(|b| put_u32(b, H_PID_COUNT, 1000)),
        Err(DaemonError::Truncated {
            what: "pid list",
            offset: PIDS_AT as u64,
            len: 4000
        })
    );
    assert_eq!(
        tamper(|b| put_u32(b, PIDS_AT + 4, 0)),
        Err(DaemonError::Pid { index: 1, pid: 0 })
    );
    assert_eq!(
        tamper(|b| put_u32(b, PIDS_AT + 4, -7i32 as u32)),
        Err(DaemonError::Pid { index: 1, pid: -7 })
    );
    assert_eq!(
        tamper(|b| put_u32(b, PIDS_AT + 8, 100)),
        Err(DaemonError::DuplicatePid { index: 2, pid: 100 })
    );
}

// ---- Connections ----

#[test]
fn a_connection_count_past_the_end_is_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, H_CONN_COUNT, u32::MAX)),
        Err(DaemonError::Truncated {
            what: "connection table",
            offset: CONNS_AT as u64,
            len: u64::from(u32::MAX) * 104
        })
    );
}

#[test]
fn unknown_connection_kinds_are_refused() {
    for kind in [4, 0x100, u32::MAX] {
        assert_eq!(
            tamper(|b| put_u32(b, conn_at(0) + C_KIND, kind)),
            Err(DaemonError::ConnKind { conn: 0, kind })
        );
    }
}

#[test]
fn bad_connection_flags_are_refused() {
    // Incoming on a control connection.
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(0) + C_FLAGS, CONN_INCOMING)),
        Err(DaemonError::ConnFlags {
            conn: 0,
            flags: CONN_INCOMING
        })
    );
    // Reply sent without a request applied.
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(0) + C_FLAGS, CONN_REPLY_SENT)),
        Err(DaemonError::ConnFlags {
            conn: 0,
            flags: CONN_REPLY_SENT
        })
    );
    // An undefined bit.
    let flags = CONN_APPLIED | CONN_REPLY_SENT | 1 << 3;
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(1) + C_FLAGS, flags)),
        Err(DaemonError::ConnFlags { conn: 1, flags })
    );
}

#[test]
fn a_negative_peer_pid_is_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(3) + C_PID, u32::MAX)),
        Err(DaemonError::ConnPid { conn: 3, pid: -1 })
    );
}

#[test]
fn bad_session_names_are_refused() {
    let name = conn_at(2) + C_NAME;
    // Empty.
    assert_eq!(
        tamper(|b| b[name] = 0),
        Err(DaemonError::ConnName { conn: 2 })
    );
    // Not NUL-terminated within 64 bytes.
    assert_eq!(
        tamper(|b| b[name..name + 64].fill(b'x')),
        Err(DaemonError::ConnName { conn: 2 })
    );
    // 63 bytes and the NUL is fine.
    let mut b = sample_daemon();
    b[name..name + 63].fill(b'y');
    let part = DaemonPart::parse(&b, SAMPLE_FDS).unwrap();
    assert!(matches!(part.conns[2].kind, ConnKind::Session { name, .. } if name == [b'y'; 63]));
    // Garbage after the NUL.
    assert_eq!(
        tamper(|b| b[name + 40] = 1),
        Err(DaemonError::ConnName { conn: 2 })
    );
    // A name on a connection that is not a session's.
    assert_eq!(
        tamper(|b| b[conn_at(4) + C_NAME] = b'a'),
        Err(DaemonError::ConnName { conn: 4 })
    );
}

#[test]
fn a_non_zero_reserved_field_is_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(1) + C_RESERVED, 1)),
        Err(DaemonError::ConnReserved { conn: 1 })
    );
}

#[test]
fn a_last_request_without_the_applied_flag_is_refused() {
    // Connection 1 applied request 5 and sent its reply; clear both flags, keep the id.
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(1) + C_FLAGS, 0)),
        Err(DaemonError::LastRequest { conn: 1 })
    );
}

// ---- Outbox replies ----

#[test]
fn bad_reply_errnos_are_refused() {
    for errno in [-1, -4095, 4096, i32::MAX] {
        assert_eq!(
            tamper(|b| put_u32(b, REPLY1_AT + R_ERRNO, errno as u32)),
            Err(DaemonError::ReplyErrno {
                conn: 2,
                reply: 1,
                errno
            })
        );
    }
}

#[test]
fn oversized_replies_are_refused() {
    assert_eq!(
        tamper(|b| put_u16(b, OUTBOX_AT + R_ARG_LEN, 4081)),
        Err(DaemonError::ReplyArg {
            conn: 2,
            reply: 0,
            len: 4081
        })
    );
    assert_eq!(
        tamper(|b| put_u16(b, OUTBOX_AT + R_FD_COUNT, 254)),
        Err(DaemonError::ReplyFds {
            conn: 2,
            reply: 0,
            count: 254
        })
    );
    // Within the limits but past the end of the part.
    assert_eq!(
        tamper(|b| put_u16(b, REPLY1_AT + R_ARG_LEN, 100)),
        Err(DaemonError::Truncated {
            what: "reply argument",
            offset: REPLY1_AT as u64 + 16,
            len: 100
        })
    );
}

#[test]
fn an_outbox_count_past_the_end_is_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(4) + C_OUTBOX_COUNT, 1)),
        Err(DaemonError::Truncated {
            what: "outbox reply",
            offset: SAMPLE_LEN as u64,
            len: 16
        })
    );
    // Moving connection 2's second reply to connection 4 is fine: replies are read in
    // connection order.
    let mut b = sample_daemon();
    put_u32(&mut b, conn_at(2) + C_OUTBOX_COUNT, 1);
    put_u32(&mut b, conn_at(4) + C_OUTBOX_COUNT, 1);
    let part = DaemonPart::parse(&b, SAMPLE_FDS).unwrap();
    assert_eq!(part.conns[4].outbox[0].id, 8);
}

// ---- fd-table indices ----

#[test]
fn fd_indices_outside_the_table_are_refused() {
    let b = sample_daemon();
    // The last index used is connection 4's, 8.
    assert_eq!(
        DaemonPart::parse(&b, 8).unwrap_err(),
        DaemonError::FdIndex {
            used_by: FdUse::Conn { conn: 4 },
            index: 8,
            fd_count: 8
        }
    );
    assert_eq!(
        DaemonPart::parse(&b, 0).unwrap_err(),
        DaemonError::FdIndex {
            used_by: FdUse::Listener,
            index: 0,
            fd_count: 0
        }
    );
    assert_eq!(
        tamper(|b| put_u32(b, OUTBOX_AT + 16 + 5 + 4, 9)),
        Err(DaemonError::FdIndex {
            used_by: FdUse::Reply { conn: 2, reply: 0 },
            index: 9,
            fd_count: 9
        })
    );
    let err = DaemonPart::parse(&b, 8).unwrap_err().to_string();
    assert_eq!(
        err,
        "fd slot 8 of connection 4 is outside the image's fd table of 8 slots"
    );
}

#[test]
fn fd_indices_used_twice_are_refused() {
    assert_eq!(
        tamper(|b| put_u32(b, H_LOCK, 0)),
        Err(DaemonError::FdReused {
            used_by: FdUse::Lock,
            index: 0
        })
    );
    assert_eq!(
        tamper(|b| put_u32(b, conn_at(0) + C_FD, 1)),
        Err(DaemonError::FdReused {
            used_by: FdUse::Conn { conn: 0 },
            index: 1
        })
    );
    // A reply's descriptor that is also a connection (reply fds 5 and 6; connection 3 is 7).
    assert_eq!(
        tamper(|b| put_u32(b, OUTBOX_AT + 16 + 5 + 4, 7)),
        Err(DaemonError::FdReused {
            used_by: FdUse::Reply { conn: 2, reply: 0 },
            index: 7
        })
    );
    // Both descriptors of one reply.
    assert_eq!(
        tamper(|b| put_u32(b, OUTBOX_AT + 16 + 5 + 4, 5)),
        Err(DaemonError::FdReused {
            used_by: FdUse::Reply { conn: 2, reply: 0 },
            index: 5
        })
    );
    assert_eq!(
        tamper(|b| put_u32(b, H_LISTENER, 8)),
        Err(DaemonError::FdReused {
            used_by: FdUse::Conn { conn: 4 },
            index: 8
        })
    );
}

#[test]
fn the_listener_and_connections_must_be_sockets() {
    use luo_abi::image::{FdEntry, S_IFREG, S_IFSOCK};
    let b = sample_daemon();
    let part = DaemonPart::parse(&b, SAMPLE_FDS).unwrap();
    let entry = |i: i32, mode: u32| FdEntry {
        fd: (i + 3).into(),
        mode_type: mode.into(),
    };
    // Slot 1 (the lock) and 5, 6 (a reply's) may be files.
    let mut fds: Vec<FdEntry> = (0..9)
        .map(|i| {
            entry(
                i,
                if [1, 5, 6].contains(&i) {
                    S_IFREG
                } else {
                    S_IFSOCK
                },
            )
        })
        .collect();
    part.check_fd_types(&fds).unwrap();
    fds[7] = entry(7, 0);
    assert_eq!(
        part.check_fd_types(&fds),
        Err(DaemonError::FdType {
            used_by: FdUse::Conn { conn: 3 },
            index: 7,
            mode_type: 0
        })
    );
    assert!(matches!(
        part.check_fd_types(&fds[..3]),
        Err(DaemonError::FdIndex { index: 3, .. })
    ));
    fds[0] = entry(0, S_IFREG);
    let err = part.check_fd_types(&fds).unwrap_err();
    assert_eq!(
        err.to_string(),
        "fd slot 0 of the listener is not a socket (file type 0o100000)"
    );
}

// ---- The writer refuses what the reader would ----

#[test]
fn writer_refuses_bad_settings() {
    let s = |socket, binary| DaemonSettings::new(socket, binary);
    let long = "/".repeat(PATH_MAX + 1);
    let cases = [
        (
            s("", "/b"),
            DaemonError::PathLength {
                path: "socket",
                len: 0,
            },
        ),
        (
            s("/s", &long),
            DaemonError::PathLength {
                path: "binary",
                len: PATH_MAX as u64 + 1,
            },
        ),
        (s("/s\0x", "/b"), DaemonError::PathNul { path: "socket" }),
    ];
    for (settings, err) in cases {
        assert_eq!(DaemonWriter::new(&settings, 0, 1).unwrap_err(), err);
    }
    let mut settings = s("/s", "/b");
    settings.pids = vec![1, 2, 1];
    assert_eq!(
        DaemonWriter::new(&settings, 0, 1).unwrap_err(),
        DaemonError::DuplicatePid { index: 2, pid: 1 }
    );
    settings.pids = vec![0];
    assert_eq!(
        DaemonWriter::new(&settings, 0, 1).unwrap_err(),
        DaemonError::Pid { index: 0, pid: 0 }
    );
    settings.pids = vec![];
    settings.last_upgrade = LastUpgrade {
        rounds: 0,
        flags: 1,
    };
    assert_eq!(
        DaemonWriter::new(&settings, 0, 1).unwrap_err(),
        DaemonError::LastUpgrade {
            rounds: 0,
            flags: 1
        }
    );
    settings.last_upgrade = LastUpgrade::default();
    assert_eq!(
        DaemonWriter::new(&settings, 4, 4).unwrap_err(),
        DaemonError::FdReused {
            used_by: FdUse::Lock,
            index: 4
        }
    );
}

#[test]
fn writer_refuses_bad_connections_and_stays_unchanged() {
    let settings = sample_settings();
    let good = || {
        let mut w = DaemonWriter::new(&settings, 0, 1).unwrap();
        w.add_conn(&sample_conns()[2]).unwrap();
        w
    };
    let expected = good().finish();
    let base = DaemonConn {
        fd_index: 20,
        kind: ConnKind::Control,
        pid: 1,
        uid: 0,
        gid: 0,
        last_request: None,
        outbox: vec![],
    };
    let session = |name| ConnKind::Session {
        direction: Direction::Incoming,
        name,
    };
    let reply = |errno, arg, fds| OutboxReply {
        id: 1,
        errno,
        arg,
        fds,
    };
    let big_arg = [0u8; 4081];
    let cases: Vec<(DaemonConn<'_>, DaemonError)> = vec![
        (
            DaemonConn {
                pid: -1,
                ..base.clone()
            },
            DaemonError::ConnPid { conn: 1, pid: -1 },
        ),
        (
            DaemonConn {
                kind: session(b""),
                ..base.clone()
            },
            DaemonError::ConnName { conn: 1 },
        ),
        (
            DaemonConn {
                kind: session(&[b'n'; 64]),
                ..base.clone()
            },
            DaemonError::ConnName { conn: 1 },
        ),
        (
            DaemonConn {
                kind: session(b"a\0b"),
                ..base.clone()
            },
            DaemonError::ConnName { conn: 1 },
        ),
        (
            DaemonConn {
                fd_index: 5,
                ..base.clone()
            },
            DaemonError::FdReused {
                used_by: FdUse::Conn { conn: 1 },
                index: 5,
            },
        ),
        (
            DaemonConn {
                outbox: vec![reply(0, b"", vec![21]), reply(-5, b"", vec![])],
                ..base.clone()
            },
            DaemonError::ReplyErrno {
                conn: 1,
                reply: 1,
                errno: -5,
            },
        ),
        (
            DaemonConn {
                outbox: vec![reply(0, &big_arg, vec![])],
                ..base.clone()
            },
            DaemonError::ReplyArg {
                conn: 1,
                reply: 0,
                len: 4081,
            },
        ),
        (
            DaemonConn {
                outbox: vec![reply(0, b"", (100..354).collect())],
                ..base.clone()
            },
            DaemonError::ReplyFds {
                conn: 1,
                reply: 0,
                count: 254,
            },
        ),
        (
            DaemonConn {
                outbox: vec![reply(0, b"", vec![21, 22, 21])],
                ..base.clone()
            },
            DaemonError::FdReused {
                used_by: FdUse::Reply { conn: 1, reply: 0 },
                index: 21,
            },
        ),
    ];
    for (conn, err) in cases {
        let mut w = good();
        assert_eq!(w.add_conn(&conn).unwrap_err(), err);
        // Nothing of the refused connection stays, not even the indices it claimed.
        assert_eq!(w.finish(), expected);
        let mut w = good();
        let _ = w.add_conn(&conn);
        w.add_conn(&DaemonConn {
            outbox: vec![reply(0, b"", vec![21, 22])],
            ..base.clone()
        })
        .unwrap();
    }
}

#[test]
fn messages_read_well() {
    let cases = [
        (
            DaemonError::Version { found: 1 },
            "Daemon part version 1 (the text form) is not supported; this luod reads version 2",
        ),
        (
            DaemonError::FdReused {
                used_by: FdUse::Reply { conn: 3, reply: 1 },
                index: 9,
            },
            "fd slot 9 of reply 1 of connection 3 is already used in the daemon part",
        ),
        (
            DaemonError::Truncated {
                what: "pid list",
                offset: 152,
                len: 4000,
            },
            "Daemon part's pid list at offset 152 (4000 bytes) runs past its end",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

// ---- Round trips ----

/// Owned storage for a generated part.
#[derive(Clone, Debug)]
struct Model {
    socket: String,
    binary: String,
    upgrades: u64,
    last_upgrade: (u32, u32),
    pids: Vec<i32>,
    limits: [Option<u64>; 5],
    conns: Vec<ConnModel>,
    /// First fd-table index and the stride between two.
    fd_base: u32,
    fd_stride: u32,
}

#[derive(Clone, Debug)]
struct ConnModel {
    kind: u32,
    incoming: bool,
    name: Vec<u8>,
    pid: i32,
    uid: u32,
    gid: u32,
    last: Option<(u64, bool)>,
    outbox: Vec<(u64, i32, Vec<u8>, usize)>,
}

impl Model {
    /// The settings, the listener and the lock, and the connections; and the smallest fd table
    /// that holds every index.
    fn build(&self) -> (DaemonSettings<'_>, u32, u32, Vec<DaemonConn<'_>>, usize) {
        let mut next = 0u32;
        let mut slot = || {
            let i = self.fd_base + next * self.fd_stride;
            next += 1;
            i
        };
        let [sessions, files, bytes, fd_share, fd_reserve] = self.limits;
        let settings = DaemonSettings {
            socket: &self.socket,
            binary: &self.binary,
            upgrades: self.upgrades,
            last_upgrade: LastUpgrade {
                rounds: self.last_upgrade.0,
                flags: self.last_upgrade.1,
            },
            pids: self.pids.clone(),
            limits: DaemonLimits {
                sessions,
                files,
                bytes,
                fd_share,
                fd_reserve,
            },
        };
        let (listener, lock) = (slot(), slot());
        let conns = self
            .conns
            .iter()
            .map(|c| DaemonConn {
                fd_index: slot(),
                kind: match c.kind {
                    0 => ConnKind::Control,
                    1 => ConnKind::Device,
                    2 => ConnKind::Session {
                        direction: if c.incoming {
                            Direction::Incoming
                        } else {
                            Direction::Outgoing
                        },
                        name: &c.name,
                    },
                    _ => ConnKind::Detached,
                },
                pid: c.pid,
                uid: c.uid,
                gid: c.gid,
                last_request: c
                    .last
                    .map(|(id, reply_sent)| AppliedRequest { id, reply_sent }),
                outbox: c
                    .outbox
                    .iter()
                    .map(|(id, errno, arg, fds)| OutboxReply {
                        id: *id,
                        errno: *errno,
                        arg,
                        fds: (0..*fds).map(|_| slot()).collect(),
                    })
                    .collect(),
            })
            .collect();
        let fd_count = (self.fd_base + (next - 1) * self.fd_stride) as usize + 1;
        (settings, listener, lock, conns, fd_count)
    }
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 1..40)
        .prop_map(String::from_iter)
}

fn model() -> impl Strategy<Value = Model> {
    let reply = (
        any::<u64>(),
        prop_oneof![Just(0), 1..=4095i32],
        prop::collection::vec(any::<u8>(), 0..40),
        0..4usize,
    );
    let conn = (
        0..4u32,
        any::<bool>(),
        prop::collection::vec(1..=255u8, 1..=63),
        0..=i32::MAX,
        any::<(u32, u32)>(),
        prop::option::of(any::<(u64, bool)>()),
        prop::collection::vec(reply, 0..3),
    )
        .prop_map(
            |(kind, incoming, name, pid, (uid, gid), last, outbox)| ConnModel {
                kind,
                incoming,
                name,
                pid,
                uid,
                gid,
                last,
                outbox,
            },
        );
    (
        (path(), path(), any::<u64>()),
        prop::sample::select(vec![(0, 0), (1, 0), (3, 1), (u32::MAX, 1)]),
        prop::collection::btree_set(1..=i32::MAX, 0..8),
        prop::array::uniform5(prop::option::of(any::<u64>())),
        prop::collection::vec(conn, 0..6),
        (0..1000u32, 1..50u32),
    )
        .prop_map(
            |(
                (socket, binary, upgrades),
                last_upgrade,
                pids,
                limits,
                conns,
                (fd_base, fd_stride),
            )| {
                Model {
                    socket,
                    binary,
                    upgrades,
                    last_upgrade,
                    pids: pids.into_iter().rev().collect(),
                    limits,
                    conns,
                    fd_base,
                    fd_stride,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Writer then parser gives back every value, and the smallest fd table that holds every
    /// index is the smallest that accepts the part.
    #[test]
    fn writer_and_parser_agree(m in model()) {
        let (settings, listener, lock, conns, fd_count) = m.build();
        let mut w = DaemonWriter::new(&settings, listener, lock).unwrap();
        for c in &conns {
            w.add_conn(c).unwrap();
        }
        let bytes = w.finish();
        let part = DaemonPart::parse(&bytes, fd_count).unwrap();
        prop_assert_eq!(&part.settings, &settings);
        prop_assert_eq!((part.listener, part.lock), (listener, lock));
        prop_assert_eq!(&part.conns, &conns);
        prop_assert_eq!(part.to_bytes().unwrap(), bytes.clone());
        let refused = DaemonPart::parse(&bytes, fd_count - 1);
        prop_assert!(matches!(refused, Err(DaemonError::FdIndex { .. })), "{:?}", refused);
    }
}
