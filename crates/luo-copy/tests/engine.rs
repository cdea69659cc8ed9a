//! The engine's rules: one active driver, requests refused before anything is copied, counters
//! that add up over copies, copies from several threads at once, channels that go away.
#![allow(clippy::unwrap_used)] // The helpers below are test code too.

use std::sync::Arc;

use luo_copy::{
    ChannelConfig, Channels, Engine, EngineConfig, Error, FaultDriver, FaultPlan, Reason, Unit,
    UnitSize,
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
    let before = named("luo-copy-7");
    let d = Channels::new(ChannelConfig::new(8)).unwrap();
    assert_eq!(named("luo-copy-7"), before + 1);
    drop(d);
    assert_eq!(named("luo-copy-7"), before);
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
