//! Huge pages reserved for one test and given back after it. Shared by the test suites of
//! several crates (`#[path]`), so that every test touching the global pool takes one lock.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Huge pages reserved for one test: the pool of one page size grown by `count`, shrunk back to
/// its previous size on drop (also when the test fails). An exclusive `flock` on
/// `/tmp/luo-hugepages.lock` serializes every test that touches the global pool.
pub struct HugePages {
    control: PathBuf,
    previous: u64,
    _lock: File,
}

impl HugePages {
    /// The default huge page size in KiB (`Hugepagesize` in /proc/meminfo).
    fn default_kib() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("Hugepagesize:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Grows the pool of `kib`-KiB pages by `count`. The 2 MiB pool goes through
    /// `/proc/sys/vm/nr_hugepages` when it is the default size. `Err` says why it cannot.
    pub fn reserve(kib: u64, count: u64) -> Result<HugePages, String> {
        let sysfs = PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"));
        if !sysfs.is_dir() {
            return Err(format!("the kernel has no {kib} KiB huge pages"));
        }
        let control = if Self::default_kib() == Some(kib) {
            PathBuf::from("/proc/sys/vm/nr_hugepages")
        } else {
            sysfs.join("nr_hugepages")
        };
        const LOCK: &str = "/tmp/luo-hugepages.lock";
        // Another user may own the lock file; flock works on a read-only descriptor too.
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .or_else(|_| File::open(LOCK))
            .map_err(|e| format!("cannot open the hugepage lock {LOCK}: {e}"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("cannot lock the hugepage lock: {e}"))?;
        let read = |p: &Path| -> Result<u64, String> {
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?
                .trim()
                .parse()
                .map_err(|e| format!("cannot parse {}: {e}", p.display()))
        };
        let previous = read(&control)?;
        let free_before = read(&sysfs.join("free_hugepages"))?;
        let grow = || {
            write_value(&control, previous + count).map_err(|e| {
                format!(
                    "cannot grow the {kib} KiB pool through {} (needs root): {e}",
                    control.display()
                )
            })
        };
        grow()?;
        // From here on the pool was touched: the guard puts it back, also on the errors below.
        let guard = HugePages {
            control: control.clone(),
            previous,
            _lock: lock,
        };
        let grown = || -> Result<bool, String> {
            Ok(read(&control)? >= previous + count
                && read(&sysfs.join("free_hugepages"))? >= free_before + count)
        };
        if !grown()? {
            // A gigantic page needs contiguous memory: compact once and try again.
            let _ = write_value(Path::new("/proc/sys/vm/compact_memory"), 1);
            write_value(&control, previous).map_err(|e| e.to_string())?;
            grow()?;
        }
        if !grown()? {
            // Still short: the page cache (a build's, say) may hold the memory. Drop the clean
            // cache, compact, and try a last time.
            let _ = write_value(Path::new("/proc/sys/vm/drop_caches"), 3);
            let _ = write_value(Path::new("/proc/sys/vm/compact_memory"), 1);
            write_value(&control, previous).map_err(|e| e.to_string())?;
            grow()?;
        }
        if !grown()? {
            let now = read(&control)?;
            let free = read(&sysfs.join("free_hugepages"))?;
            return Err(format!(
                "the {kib} KiB pool could not grow by {count} (now {now}, free {free}): \
                 not enough contiguous memory"
            ));
        }
        Ok(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Err(e) = write_value(&self.control, self.previous) {
            eprintln!(
                "could not restore {} to {}: {e}",
                self.control.display(),
                self.previous
            );
        }
    }
}

/// Writes a number to a sysctl or sysfs file.
fn write_value(path: &Path, value: u64) -> std::io::Result<()> {
    File::options()
        .write(true)
        .open(path)?
        .write_all(format!("{value}\n").as_bytes())
}
