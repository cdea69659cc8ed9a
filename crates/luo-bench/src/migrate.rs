//! `luo-bench migrate`: MIGRATE end to end through a release luod: a 1 GiB memfd of 4 KiB
//! pages, handed off, moved onto one 1 GiB page and back, timed from the client's call to its
//! reply, every move checked (page size, and one word per MiB).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::upgrade::{Daemon, big_memfd, locate_luod};
use crate::{Result, check, ms, put};

const GIB: u64 = 1 << 30;
/// Moves each way.
const ROUNDS: usize = 5;
/// The 1 GiB pool's control file.
const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages";

/// The 1 GiB pool grown by one page for the run, put back on drop.
struct OneGigPage {
    previous: u64,
}

impl OneGigPage {
    fn reserve() -> Result<OneGigPage> {
        let read = || -> Result<u64> { Ok(std::fs::read_to_string(POOL)?.trim().parse()?) };
        let previous = read()?;
        std::fs::write(POOL, format!("{}\n", previous + 1))
            .map_err(|e| format!("Cannot grow {POOL} (needs root): {e}"))?;
        let guard = OneGigPage { previous };
        if read()? < previous + 1 {
            let _ = std::fs::write("/proc/sys/vm/compact_memory", "1\n");
            std::fs::write(POOL, format!("{}\n", previous + 1))?;
        }
        check(read()? > previous, || {
            "No 1 GiB page could be reserved (memory too fragmented)".into()
        })?;
        Ok(guard)
    }
}

impl Drop for OneGigPage {
    fn drop(&mut self) {
        let _ = std::fs::write(POOL, format!("{}\n", self.previous));
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Checks the file behind `fd`: one word per MiB, as `big_memfd` wrote it, and the page size.
fn verify(fd: &std::os::fd::OwnedFd, page: u64) -> Result<()> {
    let bsize = rustix::fs::fstatfs(fd)?.f_bsize as u64;
    check(bsize == page, || {
        format!("page size {bsize}, expected {page}")
    })?;
    let mut word = [0u8; 8];
    for off in (0..GIB).step_by(1 << 20) {
        rustix::io::pread(fd, &mut word, off)?;
        check(u64::from_le_bytes(word) == off, || {
            format!("wrong bytes at {off}")
        })?;
    }
    Ok(())
}

pub(crate) fn run() -> Result<()> {
    let luod = locate_luod()?;
    let _page = OneGigPage::reserve()?;
    let dir = std::env::temp_dir().join(format!("luo-bench-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&luod, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(luod: &Path, dir: &Path) -> Result<()> {
    let mut daemon = Daemon::start(luod, dir, "migrate")?;
    let ctl = daemon.control()?;
    let dev = luo_client::Device::open_at(&daemon.socket)?;
    let mut fd = big_memfd(GIB)?;
    let (mut up, mut down, mut copy_up) = (Vec::new(), Vec::new(), Vec::new());
    let mut channels = 0;
    for _ in 0..ROUNDS {
        for (page, times) in [(GIB, &mut up), (4096, &mut down)] {
            let s = dev.create_session("bench")?;
            s.preserve(&fd, 1)?;
            s.handoff()?;
            drop((s, fd));
            let t0 = Instant::now();
            let m = ctl.migrate("bench", 1, page, None)?;
            times.push(t0.elapsed());
            check(m.bytes == GIB && m.page_size == page, || format!("{m:?}"))?;
            if page == GIB {
                copy_up.push(m.copy_time);
            }
            channels = m.channels;
            let s = dev.retrieve_session("bench")?;
            fd = s.retrieve(1)?;
            verify(&fd, page)?;
            s.finish()?;
        }
    }
    let copy = median(&mut copy_up);
    put("migrate_1g_ms", ms(median(&mut up)));
    put("migrate_1g_copy_ms", ms(copy));
    put(
        "migrate_1g_gb_per_s",
        format!("{:.2}", GIB as f64 / copy.as_secs_f64() / 1e9),
    );
    put("migrate_1g_to_4k_ms", ms(median(&mut down)));
    put("migrate_channels", channels);
    drop(fd);
    daemon.stop()?;
    Ok(())
}
