//! Write an image, parse it, read everything back: every field must come back equal.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use luo_abi::image::{
    FILE_BLOCK_CAP, FILE_FROZEN, FLB_INCOMING, FLB_RETRIEVED, FileSpec, IMAGE_COMPATIBLE, Image,
    ImageError, ImageWriter, NO_FD, SESSION_BLOCK_CAP, SESSION_FINISHED, SESSION_INCOMING,
    SESSION_RETRIEVED, SessionSpec,
};
use proptest::prelude::*;

fn round_trip(m: &Model) {
    let bytes = m.write().unwrap();
    assert_eq!(bytes.len() % 8, 0);
    let back = Model::read(&bytes).unwrap();
    assert_eq!(back, m.normalized());
    // Writing is deterministic.
    assert_eq!(m.write().unwrap(), bytes);
}

#[test]
fn empty_image() {
    let m = Model::empty();
    round_trip(&m);
    let bytes = m.write().unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.session_count(), 0);
    assert_eq!(image.sessions().count(), 0);
    assert_eq!(image.flbs().count(), 0);
    assert!(image.fds().is_empty());
    assert!(image.part("luod").is_none());
    assert_eq!(image.parts().count(), 0);
    // Nothing but the FDT and the space kept for it.
    assert!(bytes.len() <= 4096);
}

#[test]
fn sample_image() {
    round_trip(&sample_model());
    let bytes = sample();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.generation(), 7);
    assert_eq!(image.writer(), "luod 0.1.0");
    assert_eq!(image.part("luod").unwrap().data, b"state");
    assert_eq!(image.part("handlers/memfd-v1").unwrap().data, b"global");
    assert!(image.part("handlers").is_none());
    assert!(image.part("handlers/memfd-v2").is_none());
    assert!(image.part("").is_none());
    let s: Vec<_> = image.sessions().collect();
    assert!(!s[0].is_incoming() && s[1].is_incoming());
    assert!(format!("{image:?}").contains("generation: 7"));
    assert!(format!("{:?}", s[0]).contains("alpha"));
}

#[test]
fn sample_layout_is_as_documented() {
    let bytes = sample();
    let b = base(&bytes);
    assert!(b >= fdt_end(&bytes));
    // alpha's file block: {next 0, count 2}, then its record.
    assert_eq!(get_u64(&bytes, b), 0);
    assert_eq!(get_u64(&bytes, b + 8), 2);
    assert_eq!(&bytes[b + 192..b + 200], b"record-0");
    assert_eq!(get_u64(&bytes, b + 16 + 56), (b + 192) as u64);
    // beta's file block and record.
    assert_eq!(files_head(&bytes, 1), b + 200);
    assert_eq!(&bytes[b + 304..b + 312], b"record-7");
    // The session block, after the files of its sessions.
    assert_eq!(prop(&bytes, &["sessions"], "head"), (b + 312) as u64);
    assert_eq!(get_u64(&bytes, b + 312), 0);
    assert_eq!(get_u64(&bytes, b + 312 + 8), 2);
    assert_eq!(&bytes[b + 328..b + 333], b"alpha");
    // FLB block and data, fd table, part data.
    assert_eq!(prop(&bytes, &["flbs"], "head"), (b + 520) as u64);
    assert_eq!(&bytes[b + 616..b + 624], b"pci-data");
    assert_eq!(prop(&bytes, &["fds"], "offset"), (b + 624) as u64);
    assert_eq!(&bytes[b + 624..b + 628], &10i32.to_le_bytes());
    let memfd = &["parts", "handlers", "memfd-v1"][..];
    assert_eq!(prop(&bytes, memfd, "data-offset"), (b + 648) as u64);
    assert_eq!(
        prop(&bytes, &["parts", "luod"], "data-offset"),
        (b + 656) as u64
    );
    assert_eq!(bytes.len(), b + 664);
    assert_eq!(&bytes[..4], &0xd00d_feedu32.to_be_bytes());
}

#[test]
fn sessions_without_files() {
    let mut m = Model::empty();
    m.sessions = (0..5)
        .map(|i| session(&format!("s{i}"), 0, vec![]))
        .collect();
    round_trip(&m);
}

#[test]
fn finished_retrieved_and_errno_states() {
    let mut m = Model::empty();
    m.fds = vec![(3, S_IFREG), (4, 0), (5, S_IFREG)];
    m.sessions = vec![
        session(
            "done",
            SESSION_INCOMING | SESSION_RETRIEVED | SESSION_FINISHED,
            vec![],
        ),
        session(
            "taken",
            SESSION_INCOMING | SESSION_RETRIEVED,
            vec![
                ModelFile {
                    status: 1,
                    flags: FILE_FROZEN,
                    open_fd_index: Some(2),
                    ..file("memfd-v1", 5, Some(1), b"x")
                },
                ModelFile {
                    status: -5,
                    ..file("memfd-v1", 3, Some(0), b"")
                },
                ModelFile {
                    status: -4095,
                    ..file("memfd-v1", 4, None, b"")
                },
            ],
        ),
    ];
    m.flbs = vec![
        ModelFlb {
            compatible: "a".into(),
            count: 0,
            flags: FLB_INCOMING | FLB_RETRIEVED,
            data: vec![],
        },
        ModelFlb {
            compatible: "a".into(),
            count: 9,
            flags: 0,
            data: vec![1; 13],
        },
    ];
    round_trip(&m);
}

#[test]
fn same_name_in_other_direction_or_owner() {
    let mut m = Model::empty();
    m.sessions = vec![
        session("vm", 0, vec![]),
        session("vm", SESSION_INCOMING, vec![]),
        ModelSession {
            owner: 0,
            ..session("vm", 0, vec![])
        },
    ];
    round_trip(&m);
}

#[test]
fn many_files_in_one_session_span_blocks() {
    let mut m = Model::empty();
    m.fds = (0..2000).map(|i| (i + 3, S_IFREG)).collect();
    let files = (0..2000u32)
        .map(|i| {
            let record = if i % 3 == 0 {
                vec![i as u8; (i % 17) as usize]
            } else {
                vec![]
            };
            file("memfd-v1", u64::from(i) * 3, Some(i), &record)
        })
        .collect();
    m.sessions = vec![session("big", 0, files)];
    round_trip(&m);
    // Three blocks: 744 + 744 + 512, linked forward.
    let bytes = m.write().unwrap();
    let head = files_head(&bytes, 0);
    assert_eq!(get_u64(&bytes, head + 8), FILE_BLOCK_CAP as u64);
    let second = get_u64(&bytes, head) as usize;
    assert_eq!(second, head + 16 + FILE_BLOCK_CAP * 88);
    let third = get_u64(&bytes, second) as usize;
    assert_eq!(get_u64(&bytes, third + 8), 2000 - 2 * FILE_BLOCK_CAP as u64);
    assert_eq!(get_u64(&bytes, third), 0);
}

#[test]
fn tokens_in_any_order() {
    let mut m = Model::empty();
    m.sessions = vec![session(
        "s",
        0,
        vec![
            file("c", 9, None, b""),
            file("c", 1, None, b""),
            file("c", u64::MAX, None, b""),
            file("c", 0, None, b""),
        ],
    )];
    round_trip(&m);
}

#[test]
fn many_sessions_span_blocks() {
    let mut m = Model::empty();
    m.sessions = (0..(SESSION_BLOCK_CAP * 2 + 5))
        .map(|i| ModelSession {
            seq: i as u64,
            ..session(
                &format!("session-{i:06}"),
                (i % 2) as u32,
                vec![file("c", 1, None, b"r")],
            )
        })
        .collect();
    round_trip(&m);
}

#[test]
fn parts_nest_and_sort() {
    let mut m = Model::empty();
    m.parts = vec![
        ("z".into(), "z-v1".into(), vec![1]),
        ("a-b".into(), "x".into(), vec![]),
        ("a/b".into(), "x".into(), vec![2; 9]),
        ("a".into(), "x".into(), vec![3]),
        ("a/b/c/d/e/f".into(), "deep".into(), vec![4]),
        ("handlers/memfd-v1".into(), "memfd-g".into(), vec![5]),
        ("handlers/hugetlb-v1".into(), "h".into(), vec![6]),
    ];
    round_trip(&m);
    let bytes = m.write().unwrap();
    let names: Vec<String> = Image::parse(&bytes).unwrap().parts().map(|p| p.0).collect();
    assert_eq!(
        names,
        [
            "a",
            "a/b",
            "a/b/c/d/e/f",
            "a-b",
            "handlers/hugetlb-v1",
            "handlers/memfd-v1",
            "z"
        ]
    );
}

#[test]
fn parse_rejects_nothing_the_writer_made_from_long_names() {
    let name = "n".repeat(63);
    let compatible = "c".repeat(47);
    let mut m = Model::empty();
    m.sessions = vec![session(&name, 0, vec![file(&compatible, 1, None, b"")])];
    m.flbs = vec![ModelFlb {
        compatible: compatible.clone(),
        count: 1,
        flags: 0,
        data: vec![],
    }];
    m.parts = vec![(
        format!("{}/{}", "p".repeat(31), "q".repeat(31)),
        compatible,
        vec![],
    )];
    m.writer = "w".repeat(255);
    round_trip(&m);
}

#[test]
fn writer_refuses_bad_input() {
    let spec = |name: &'static [u8], flags| SessionSpec {
        name,
        owner: 0,
        flags,
        seq: 0,
    };
    let f = |compatible: &'static str, fd_index, status, flags| FileSpec {
        compatible,
        token: 1,
        fd_index,
        open_fd_index: NO_FD,
        status,
        flags,
        record: b"",
    };
    let mut w = ImageWriter::new(0, "t");
    let fd = w.add_fd(3, S_IFREG);
    assert_eq!(
        w.add_session(&spec(b"", 0), []),
        Err(ImageError::SessionName { session: 0 })
    );
    static LONG: [u8; 64] = [b'a'; 64];
    assert_eq!(
        w.add_session(&spec(&LONG, 0), []),
        Err(ImageError::SessionName { session: 0 })
    );
    assert_eq!(
        w.add_session(&spec(b"a\0b", 0), []),
        Err(ImageError::SessionName { session: 0 })
    );
    assert_eq!(
        w.add_session(&spec(b"a", 8), []),
        Err(ImageError::SessionFlags {
            session: 0,
            flags: 8
        })
    );
    assert_eq!(
        w.add_session(&spec(b"a", SESSION_RETRIEVED), []),
        Err(ImageError::SessionFlags {
            session: 0,
            flags: SESSION_RETRIEVED
        })
    );
    assert_eq!(
        w.add_session(
            &spec(b"a", SESSION_INCOMING | SESSION_FINISHED),
            [f("c", NO_FD, 0, 0)]
        ),
        Err(ImageError::FinishedWithFiles { session: 0 })
    );
    let bad_files = [
        (
            f("", NO_FD, 0, 0),
            ImageError::FileCompatible {
                session: 0,
                file: 0,
            },
        ),
        (
            f(
                "0123456789012345678901234567890123456789012345678",
                NO_FD,
                0,
                0,
            ),
            ImageError::FileCompatible {
                session: 0,
                file: 0,
            },
        ),
        (
            f("a\0", NO_FD, 0, 0),
            ImageError::FileCompatible {
                session: 0,
                file: 0,
            },
        ),
        (
            f("c", NO_FD, 0, 4),
            ImageError::FileFlags {
                session: 0,
                file: 0,
                flags: 4,
            },
        ),
        (
            f("c", NO_FD, 1, 0),
            ImageError::FileStatus {
                session: 0,
                file: 0,
                status: 1,
            },
        ),
        (
            f("c", fd, 2, 0),
            ImageError::FileStatus {
                session: 0,
                file: 0,
                status: 2,
            },
        ),
        (
            f("c", fd, -4096, 0),
            ImageError::FileStatus {
                session: 0,
                file: 0,
                status: -4096,
            },
        ),
        (
            f("c", 1, 0, 0),
            ImageError::FdIndex {
                session: 0,
                file: 0,
                fd_index: 1,
            },
        ),
    ];
    for (file, err) in bad_files {
        assert_eq!(w.add_session(&spec(b"a", 0), [file]), Err(err), "{file:?}");
    }
    // A file that fails after good ones leaves nothing behind: the fd slot is free again.
    let two = [f("c", fd, 0, 0), f("c", fd, 0, 0)];
    assert_eq!(
        w.add_session(&spec(b"a", 0), two),
        Err(ImageError::FdReused {
            session: 0,
            file: 1,
            fd_index: fd
        })
    );
    let dup = [f("c", NO_FD, 0, 0), f("c", fd, 0, 0)];
    assert_eq!(
        w.add_session(&spec(b"a", 0), dup),
        Err(ImageError::DuplicateToken {
            session: 0,
            token: 1
        })
    );
    // The retrieved open file: only with status 1, in its own slot.
    let open = w.add_fd(4, S_IFREG);
    let with_open = |status| FileSpec {
        open_fd_index: open,
        ..f("c", fd, status, 0)
    };
    assert_eq!(
        w.add_session(&spec(b"a", 0), [with_open(0)]),
        Err(ImageError::OpenFd {
            session: 0,
            file: 0
        })
    );
    let same = FileSpec {
        open_fd_index: fd,
        ..f("c", fd, 1, 0)
    };
    assert_eq!(
        w.add_session(&spec(b"a", 0), [same]),
        Err(ImageError::FdReused {
            session: 0,
            file: 0,
            fd_index: fd
        })
    );
    let nowhere = FileSpec {
        open_fd_index: 9,
        ..f("c", fd, 1, 0)
    };
    assert_eq!(
        w.add_session(&spec(b"a", 0), [nowhere]),
        Err(ImageError::FdIndex {
            session: 0,
            file: 0,
            fd_index: 9
        })
    );
    w.add_session(&spec(b"a", 0), [with_open(1)]).unwrap();
    w.add_session(&spec(b"b", 0), []).unwrap();
    assert_eq!(
        w.add_flb("", 0, 0, b""),
        Err(ImageError::FlbCompatible { flb: 0 })
    );
    assert_eq!(
        w.add_flb("f", 0, FLB_RETRIEVED, b""),
        Err(ImageError::FlbFlags {
            flb: 0,
            flags: FLB_RETRIEVED
        })
    );
    for name in [
        "",
        "/a",
        "a/",
        "a//b",
        "a b",
        "a@1",
        "a/b/c/d/e/f/g",
        &"x".repeat(64),
    ] {
        assert_eq!(
            w.add_part(name, "c", b""),
            Err(ImageError::PartName),
            "{name:?}"
        );
    }
    assert_eq!(
        w.add_part("p", "", b""),
        Err(ImageError::InvalidPartCompatible)
    );
    w.add_part("p", "c", b"1").unwrap();
    assert_eq!(w.add_part("p", "c", b"2"), Err(ImageError::DuplicatePart));
    let bytes = w.finish().unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.session_count(), 2);
    assert_eq!(image.part("p").unwrap().data, b"1");

    let finish_err = |build: &dyn Fn(&mut ImageWriter)| {
        let mut w = ImageWriter::new(0, "t");
        build(&mut w);
        w.finish().unwrap_err()
    };
    assert_eq!(
        finish_err(&|w| {
            w.add_session(&spec(b"a", 0), []).unwrap();
            w.add_session(&spec(b"b", 0), []).unwrap();
            w.add_session(&spec(b"a", 0), []).unwrap();
        }),
        ImageError::DuplicateSession { session: 2 }
    );
    assert_eq!(
        finish_err(&|w| {
            w.add_flb("f", 0, 0, b"").unwrap();
            w.add_flb("f", 0, 0, b"").unwrap();
        }),
        ImageError::DuplicateFlb { flb: 1 }
    );
    assert_eq!(
        finish_err(&|w| {
            w.add_fd(-1, S_IFREG);
        }),
        ImageError::FdNumber { index: 0, fd: -1 }
    );
    assert_eq!(
        finish_err(&|w| {
            w.add_fd(3, 0o100644);
        }),
        ImageError::FdType {
            index: 0,
            mode_type: 0o100644
        }
    );
    assert_eq!(
        finish_err(&|w| {
            w.add_fd(3, S_IFREG);
            w.add_fd(4, S_IFREG);
            w.add_fd(3, S_IFREG);
        }),
        ImageError::DuplicateFd { index: 2, fd: 3 }
    );
    let mut w = ImageWriter::new(0, "a\0b");
    w.add_fd(3, S_IFREG);
    assert_eq!(w.finish(), Err(ImageError::WriterVersion));
    assert_eq!(
        ImageWriter::new(0, &"w".repeat(256)).finish(),
        Err(ImageError::WriterVersion)
    );
}

#[test]
fn writer_refuses_an_image_over_the_size_limit() {
    let mut w = ImageWriter::new(0, "t");
    let big = vec![0u8; 1 << 29];
    w.add_part("a", "c", &big).unwrap();
    w.add_part("b", "c", &big).unwrap();
    assert!(matches!(w.finish(), Err(ImageError::TooLarge { .. })));
}

#[test]
fn root_compatible_is_the_contract() {
    let bytes = sample();
    let needle = format!("{IMAGE_COMPATIBLE}\0");
    assert!(bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
}

// ---- Property-based round trip ----

fn arb_model() -> impl Strategy<Value = Model> {
    let file = (
        prop::sample::select(vec!["memfd-v1", "fdref-v1", "x", "c".repeat(47).leak()]),
        any::<bool>(),
        prop::sample::select(vec![0i32, 1, -1, -4095]),
        0u32..2,
        prop::collection::vec(any::<u8>(), 0..24),
    );
    let sess = (
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..40),
        0u32..3,
        prop::sample::select(vec![
            0,
            SESSION_INCOMING,
            SESSION_INCOMING | SESSION_RETRIEVED,
            SESSION_INCOMING | SESSION_FINISHED,
        ]),
        any::<u64>(),
        prop::collection::btree_set(any::<u64>(), 0..12),
        prop::collection::vec(file, 12),
        any::<bool>(),
    );
    let flb = (
        "[a-z0-9-]{1,47}",
        any::<u64>(),
        prop::sample::select(vec![0, FLB_INCOMING, FLB_INCOMING | FLB_RETRIEVED]),
        prop::collection::vec(any::<u8>(), 0..20),
    );
    let part = (
        "[a-z]{1,8}(/[a-z0-9,._+-]{1,8}){0,2}",
        "[a-z0-9-]{1,47}",
        prop::collection::vec(any::<u8>(), 0..20),
    );
    (
        any::<u64>(),
        "[ -~]{0,40}",
        prop::collection::vec(sess, 0..8),
        prop::collection::vec(flb, 0..4),
        prop::collection::vec(part, 0..5),
    )
        .prop_map(|(generation, writer, sessions, flbs, parts)| {
            let mut m = Model::empty();
            m.generation = generation;
            m.writer = writer;
            let mut names = std::collections::HashSet::new();
            for (i, (mut name, owner, flags, seq, tokens, files, reverse)) in
                sessions.into_iter().enumerate()
            {
                name.truncate(60);
                if !names.insert((owner, flags & SESSION_INCOMING, name.clone())) {
                    name.extend_from_slice(format!("{i}").as_bytes());
                    name.truncate(63);
                    if !names.insert((owner, flags & SESSION_INCOMING, name.clone())) {
                        continue;
                    }
                }
                let mut tokens: Vec<u64> = tokens.into_iter().collect();
                if reverse {
                    tokens.reverse();
                }
                let mut out = vec![];
                if flags & SESSION_FINISHED == 0 {
                    for (token, (compatible, has_fd, status, fflags, record)) in
                        tokens.into_iter().zip(files)
                    {
                        let fd_index = has_fd.then(|| {
                            let fd = 100 + m.fds.len() as i32;
                            m.fds.push((fd, S_IFREG));
                            (m.fds.len() - 1) as u32
                        });
                        let status = if status == 1 && fd_index.is_none() {
                            0
                        } else {
                            status
                        };
                        let open_fd_index = (status == 1 && token % 2 == 0).then(|| {
                            let fd = 100 + m.fds.len() as i32;
                            m.fds.push((fd, S_IFSOCK));
                            (m.fds.len() - 1) as u32
                        });
                        out.push(ModelFile {
                            compatible: compatible.into(),
                            token,
                            fd_index,
                            open_fd_index,
                            status,
                            flags: fflags,
                            record,
                        });
                    }
                }
                m.sessions.push(ModelSession {
                    name,
                    owner,
                    flags,
                    seq,
                    files: out,
                });
            }
            let mut seen = std::collections::HashSet::new();
            for (compatible, count, flags, data) in flbs {
                if seen.insert((compatible.clone(), flags & FLB_INCOMING)) {
                    m.flbs.push(ModelFlb {
                        compatible,
                        count,
                        flags,
                        data,
                    });
                }
            }
            let mut seen = std::collections::HashSet::new();
            for (name, compatible, data) in parts {
                if seen.insert(name.clone()) {
                    m.parts.push((name, compatible, data));
                }
            }
            // An extra fd that no file uses is fine.
            m.fds.push((3, 0));
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_images_round_trip(m in arb_model()) {
        let bytes = m.write().unwrap();
        prop_assert_eq!(Model::read(&bytes).unwrap(), m.normalized());
        prop_assert!(luo_abi::image::fuzz_one(&bytes));
    }
}

#[test]
fn many_parts_outgrow_the_fdt_reserve() {
    // About 150 bytes of FDT per part: 100 parts need far more than the 4 KiB the writer
    // keeps for the FDT, so it lays the image out again behind a larger one.
    let mut m = sample_model();
    for i in 0..100 {
        m.parts.push((
            format!("handlers/{}-{i:03}", "h".repeat(40)),
            format!("handler-global-{i:03}"),
            vec![i as u8; i % 13],
        ));
    }
    round_trip(&m);
    let bytes = m.write().unwrap();
    assert!(fdt_end(&bytes) > 4096);
    assert_eq!(base(&bytes), fdt_end(&bytes));
}
