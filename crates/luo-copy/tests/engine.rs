//! The engine's rules: one active driver, requests refused before anything is copied, counters
//! that add up over copies, copies from several threads at once, channels that go away.
#![allow(clippy::unwrap_used)] // The helpers below are test code too.

use std::sync::Arc;

use luo_copy::{
    ChannelConfig, Channels, Engine, EngineConfig, Error, FaultDriver, FaultPlan, Mapping, Reason,
    SLICE_BYTES, Stall, Unit, UnitSize,
};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn channels(n: usize) -> Arc<Channels> {
    Arc::new(Channels::new(ChannelConfig::new(n).min_offload_bytes(0)).unwrap())
}

#[test]
fn a_second_driver_is_refused_until_the_first_is_unregistered() {
    let engine = Engine::default();
    assert!(engine.driver().is_none());
    engine.register(channels(1)).unwrap();
    let faulty = Arc::new(FaultDriver::new(ChannelConfig::new(1), FaultPlan::default()).unwrap());
    let err = engine.register(faulty.clone()).unwrap_err();
    assert!(
        matches!(&err, Error::DriverActive { active, refused } if active == "channels" && refused == "faulty"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Copy driver \"channels\" is active; unregister it before registering \"faulty\""
    );
    // Only the active driver can be unregistered, and only once.
    assert!(matches!(
        engine.unregister("faulty"),
        Err(Error::NotActive { .. })
    ));
    assert_eq!(engine.unregister("channels").unwrap().name(), "channels");
    assert!(matches!(
        engine.unregister("channels"),
        Err(Error::NotActive { .. })
    ));
    engine.register(faulty).unwrap();
    assert_eq!(engine.stats().driver.as_deref(), Some("faulty"));
}

#[test]
fn bad_requests_are_refused_before_anything_is_copied() {
    let engine = Engine::default();
    engine.register(channels(2)).unwrap();
    let src = data(1 << 20);
    let mut dst = vec![0u8; 1 << 20];
    assert!(matches!(
        engine.copy(&src, &mut dst[1..], UnitSize::Base4K, Reason::Other),
        Err(Error::LengthMismatch { .. })
    ));
    let ok = Unit {
        src: 0,
        dst: 0,
        len: 4096,
    };
    type Expect = fn(&Error) -> bool;
    let cases: [(Unit, Expect); 4] = [
        (Unit { len: 4097, ..ok }, |e| {
            matches!(e, Error::UnitLength { index: 1, .. })
        }),
        (Unit { len: 0, ..ok }, |e| {
            matches!(e, Error::UnitLength { index: 1, .. })
        }),
        (
            Unit {
                src: (1 << 20) - 1,
                ..ok
            },
            |e| matches!(e, Error::UnitOutOfBounds { index: 1 }),
        ),
        (Unit { dst: 4095, ..ok }, |e| {
            matches!(e, Error::UnitOrder { index: 1 })
        }),
    ];
    for (bad, expect) in cases {
        // The bad unit comes second: the first must not have been copied either.
        let err = engine
            .copy_units(&src, &mut dst, &[ok, bad], UnitSize::Base4K, Reason::Other)
            .unwrap_err();
        assert!(expect(&err), "{bad:?}: {err:?}");
        assert!(dst.iter().all(|&b| b == 0), "{bad:?}: something was copied");
    }
    assert_eq!(engine.stats().copies, 0);
}

#[test]
fn counters_add_up_over_copies_and_drivers() {
    let engine = Engine::new(EngineConfig::default().max_batch_bytes(1 << 20));
    let src = data(4 << 20);
    let mut dst = vec![0u8; 4 << 20];
    // No driver: 4 batches on the CPU.
    let a = engine
        .copy(&src, &mut dst, UnitSize::Base4K, Reason::Rebacking)
        .unwrap();
    assert_eq!(
        (a.batches, a.batches_cpu_no_driver, a.units_cpu),
        (4, 4, 1024)
    );
    // Two channels: 4 more batches offloaded.
    engine.register(channels(2)).unwrap();
    dst.fill(0);
    let b = engine
        .copy(&src, &mut dst, UnitSize::Base4K, Reason::Rebacking)
        .unwrap();
    assert_eq!(dst, src);
    assert_eq!((b.batches, b.batches_offloaded), (4, 4));
    assert_eq!(b.channels.len(), 2);
    assert_eq!(b.channels.iter().map(|c| c.batches).sum::<u64>(), 8);
    assert_eq!(b.units_offloaded(), 1024);
    let total = engine.stats();
    assert_eq!(total.copies, 2);
    assert_eq!(total.batches, 8);
    assert_eq!(total.units, 2048);
    assert_eq!(total.bytes, 8 << 20);
    assert_eq!(total.units_cpu, 1024);
    assert_eq!(total.units_offloaded(), 1024);
    assert!(total.time >= a.time + b.time);
    assert!(total.gb_per_s() > 0.0);
}

#[test]
fn the_default_policy_keeps_small_batches_on_the_cpu() {
    let engine = Engine::default();
    engine
        .register(Arc::new(Channels::new(ChannelConfig::new(2)).unwrap()))
        .unwrap();
    let src = data(64 << 10);
    let mut dst = vec![0u8; 64 << 10];
    let s = engine
        .copy(&src, &mut dst, UnitSize::Base4K, Reason::Blackout)
        .unwrap();
    assert_eq!(dst, src);
    assert_eq!((s.batches_cpu_policy, s.units_cpu), (1, 16));
}

#[test]
fn copies_from_several_threads_at_once_all_arrive() {
    let engine = Arc::new(Engine::new(
        EngineConfig::default().max_batch_bytes(1 << 20),
    ));
    engine.register(channels(2)).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let src: Vec<u8> = data(8 << 20).iter().map(|b| b ^ t as u8).collect();
                let mut dst = vec![0u8; src.len()];
                for _ in 0..3 {
                    dst.fill(0);
                    engine
                        .copy(&src, &mut dst, UnitSize::Base4K, Reason::Other)
                        .unwrap();
                    assert!(dst == src, "thread {t}: bytes differ");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(engine.stats().copies, 9);
}

#[test]
fn dropping_the_driver_stops_its_threads() {
    // Other tests start channels concurrently, so look for this driver's own threads by name.
    let named = |n: &str| {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == n)
            .count()
    };
    // 23 channels: no other test makes that many, so no other test has a "luo-copy-22".
    let before = named("luo-copy-22");
    let d = Channels::new(ChannelConfig::new(23)).unwrap();
    assert_eq!(named("luo-copy-22"), before + 1);
    drop(d);
    assert_eq!(named("luo-copy-22"), before);
}

#[test]
fn channels_can_be_pinned() {
    let cpus: Vec<usize> = {
        let set = rustix::thread::sched_getaffinity(None).unwrap();
        (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect()
    };
    let engine = Engine::default();
    engine
        .register(Arc::new(
            Channels::new(
                ChannelConfig::new(2)
                    .pinned(cpus.clone())
                    .min_offload_bytes(0),
            )
            .unwrap(),
        ))
        .unwrap();
    let src = data(4 << 20);
    let mut dst = vec![0u8; 4 << 20];
    let s = engine
        .copy(&src, &mut dst, UnitSize::Huge2M, Reason::Other)
        .unwrap();
    assert_eq!(dst, src);
    assert_eq!(s.units_offloaded(), 2);
}

#[test]
fn a_channel_that_panics_falls_back_and_keeps_serving() {
    let engine = Engine::new(EngineConfig::default().max_batch_bytes(1 << 20));
    let plan = FaultPlan {
        panic_channel: Some(0),
        ..FaultPlan::default()
    };
    let config = ChannelConfig::new(2).min_offload_bytes(0);
    engine
        .register(Arc::new(FaultDriver::new(config, plan).unwrap()))
        .unwrap();
    let src = data(4 << 20);
    for _ in 0..2 {
        let mut dst = vec![0u8; 4 << 20];
        let s = engine
            .copy(&src, &mut dst, UnitSize::Base4K, Reason::Other)
            .unwrap();
        assert_eq!(dst, src);
        // Channel 0 panicked in each of the 4 batches; channel 1 copied its half of each.
        assert_eq!(s.batches_failed, 4);
        assert_eq!(s.units_fallback, 512);
        assert_eq!(s.channels[1].units, 512);
        assert_eq!(s.last_error.as_deref(), Some("Copy channel 0 panicked"));
    }
}

#[test]
fn an_idle_channel_takes_slices_from_a_slow_one() {
    // Channel 1 sleeps 300 ms before it starts on its share of the one 64 MiB batch: channel
    // 0 copies its own share, then every slice of channel 1's that channel 1 has not started.
    let engine = Engine::new(EngineConfig::default().max_batch_bytes(64 << 20));
    let plan = FaultPlan {
        stall: Some(Stall {
            channel: 1,
            duration: std::time::Duration::from_millis(300),
            batches: 1,
        }),
        ..FaultPlan::default()
    };
    let config = ChannelConfig::new(2)
        .min_offload_bytes(0)
        .stall_timeout(std::time::Duration::from_secs(10));
    engine
        .register(Arc::new(FaultDriver::new(config, plan).unwrap()))
        .unwrap();
    let src = data(64 << 20);
    let mut dst = vec![0u8; 64 << 20];
    let s = engine
        .copy(&src, &mut dst, UnitSize::Base4K, Reason::Other)
        .unwrap();
    assert_eq!(dst, src);
    assert_eq!((s.units_fallback, s.batches_failed), (0, 0), "{s:?}");
    let (c0, c1) = (s.channels[0].bytes, s.channels[1].bytes);
    assert_eq!(c0 + c1, 64 << 20);
    // Channel 1 keeps the slice it was handed with the job; channel 0 takes the rest (unless
    // it was itself held off the CPU for most of the 300 ms).
    assert!(c1 >= SLICE_BYTES, "{s:?}");
    assert!(
        c0 >= 48 << 20,
        "channel 0 copied {c0} bytes, channel 1 {c1}: {s:?}"
    );
}

/// A memfd of `len` bytes holding `data` (or zeros).
fn memfd(len: usize, data: Option<&[u8]>) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("luo-copy-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    if let Some(data) = data {
        let mut off = 0;
        while off < data.len() {
            off += rustix::io::pwrite(&fd, &data[off..], off as u64).unwrap();
        }
    }
    fd
}

fn read_memfd(fd: &std::os::fd::OwnedFd, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut off = 0;
    while off < len {
        off += rustix::io::pread(fd, &mut out[off..], off as u64).unwrap();
    }
    out
}

#[test]
fn memfds_are_copied_through_mappings() {
    let len = 8 << 20;
    let src_data = data(len);
    let (a, b) = (memfd(len, Some(&src_data)), memfd(len, None));
    let src = Mapping::new(&a, 0, len, false).unwrap();
    let mut dst = Mapping::new(&b, 0, len, true).unwrap();
    let engine = Engine::new(EngineConfig::default().max_batch_bytes(1 << 20));
    engine.register(channels(2)).unwrap();
    let s = engine
        .copy_mapped(&src, &mut dst, UnitSize::Base4K, Reason::Rebacking)
        .unwrap();
    assert_eq!(s.units_offloaded(), 2048);
    assert!(read_memfd(&b, len) == src_data, "bytes differ");

    // Scatter-gather: pages 1, 5 and 7 of the source onto pages 0, 2 and 3 of a fresh file.
    let c = memfd(len, None);
    let mut dst = Mapping::new(&c, 0, len, true).unwrap();
    let page = |i: usize| i * 4096;
    let units = [(1, 0), (5, 2), (7, 3)].map(|(s, d)| Unit {
        src: page(s),
        dst: page(d),
        len: 4096,
    });
    engine
        .copy_units_mapped(&src, &mut dst, &units, UnitSize::Base4K, Reason::PreCopy)
        .unwrap();
    let got = read_memfd(&c, 4 * 4096);
    for (s, d) in [(1, 0), (5, 2), (7, 3)] {
        assert_eq!(got[page(d)..page(d + 1)], src_data[page(s)..page(s + 1)]);
    }
    assert!(got[page(1)..page(2)].iter().all(|&b| b == 0));
}

#[test]
fn a_read_only_or_short_destination_mapping_is_refused() {
    let len = 1 << 20;
    let (a, b) = (memfd(len, Some(&data(len))), memfd(len, None));
    let src = Mapping::new(&a, 0, len, false).unwrap();
    let mut read_only = Mapping::new(&b, 0, len, false).unwrap();
    let engine = Engine::default();
    assert!(matches!(
        engine.copy_mapped(&src, &mut read_only, UnitSize::Base4K, Reason::Other),
        Err(Error::ReadOnly)
    ));
    let mut short = Mapping::new(&b, 0, len / 2, true).unwrap();
    assert!(matches!(
        engine.copy_mapped(&src, &mut short, UnitSize::Base4K, Reason::Other),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(read_memfd(&b, len).iter().all(|&b| b == 0));
    assert!(matches!(
        Mapping::new(&a, 0, 0, false),
        Err(Error::Map { len: 0, .. })
    ));
}
