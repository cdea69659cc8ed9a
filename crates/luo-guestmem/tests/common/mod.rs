//! Helpers of luo-guestmem's tests: skipping (a failure under `LUO_REQUIRE_ALL=1`), reserving
//! huge pages under the shared pool lock, and a real luod on a private socket.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use luo_guestmem::PageSize;

/// Reports that `test` cannot run here; under `LUO_REQUIRE_ALL=1` (CI) that is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// The pool of one huge page size grown by some pages for one test, under an exclusive
/// `flock` on `/tmp/luo-hugepages.lock` (every test touching the pool takes it), and put back
/// to its previous size on drop, also when the test fails.
pub struct HugePages {
    control: PathBuf,
    previous: u64,
    _lock: File,
}

fn read_num(p: &Path) -> Result<u64, String> {
    std::fs::read_to_string(p)
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("cannot parse {}: {e}", p.display()))
}

fn write_num(p: &Path, v: u64) -> Result<(), String> {
    File::options()
        .write(true)
        .open(p)
        .and_then(|mut f| f.write_all(format!("{v}\n").as_bytes()))
        .map_err(|e| format!("cannot write {v} to {} (needs root): {e}", p.display()))
}

impl HugePages {
    /// Grows the pool of `page` pages by `count` (a no-op guard for 4 KiB pages).
    pub fn reserve(page: PageSize, count: u64) -> Result<Option<HugePages>, String> {
        if !page.is_huge() {
            return Ok(None);
        }
        let kib = page.bytes() >> 10;
        let dir = PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"));
        if !dir.is_dir() {
            return Err(format!("the kernel has no {kib} KiB huge pages"));
        }
        const LOCK: &str = "/tmp/luo-hugepages.lock";
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .or_else(|_| File::open(LOCK))
            .map_err(|e| format!("cannot open {LOCK}: {e}"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("cannot lock {LOCK}: {e}"))?;
        let control = dir.join("nr_hugepages");
        let previous = read_num(&control)?;
        let free = read_num(&dir.join("free_hugepages"))?;
        write_num(&control, previous + count)?;
        let guard = HugePages {
            control: control.clone(),
            previous,
            _lock: lock,
        };
        if read_num(&dir.join("free_hugepages"))? < free + count {
            let _ = write_num(Path::new("/proc/sys/vm/compact_memory"), 1);
            write_num(&control, previous)?;
            write_num(&control, previous + count)?;
            if read_num(&dir.join("free_hugepages"))? < free + count {
                // Still short: the page cache may hold the memory. Drop the clean cache,
                // compact, and try a last time.
                let _ = write_num(Path::new("/proc/sys/vm/drop_caches"), 3);
                let _ = write_num(Path::new("/proc/sys/vm/compact_memory"), 1);
                write_num(&control, previous)?;
                write_num(&control, previous + count)?;
            }
            let now = read_num(&dir.join("free_hugepages"))?;
            if now < free + count {
                return Err(format!(
                    "the {kib} KiB pool could not grow by {count} (free {now}): not enough \
                     contiguous memory"
                ));
            }
        }
        Ok(Some(guard))
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Err(e) = write_num(&self.control, self.previous) {
            eprintln!("could not restore the huge page pool: {e}");
        }
    }
}

/// The luod binary: `target/<profile>/luod` next to this test's `deps/` directory, built with
/// cargo if it is missing.
pub fn luod_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let bin = dir.join("luod");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "luod"])
            .status()
            .expect("run cargo build -p luod");
        assert!(status.success(), "cargo build -p luod failed");
    }
    bin
}

/// A luod serving a socket in its own directory; dropping it stops it and every successor an
/// upgrade started.
pub struct Luod {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pids: Vec<i32>,
}

impl Luod {
    pub fn start(tag: &str) -> Luod {
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let dir = std::env::temp_dir().join(format!("luo-gm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("luod.sock");
        let log = File::create(dir.join("luod.log")).expect("log");
        let child = Command::new(luod_binary())
            .arg("--socket")
            .arg(&socket)
            .env_remove("LUOD_SOCKET")
            .env_remove("LUOD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn luod");
        let pid = child.id() as i32;
        let luod = Luod {
            child,
            dir,
            socket,
            pids: vec![pid],
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !luo_client::Control::connect_at(&luod.socket).is_ok_and(|c| c.ping().is_ok()) {
            assert!(
                Instant::now() < deadline,
                "luod did not start: {}",
                luod.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        luod
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("luod.log")).unwrap_or_default()
    }

    /// Upgrades luod to its own binary; remembers the new pid.
    pub fn upgrade(&mut self) {
        let c = luo_client::Control::connect_at(&self.socket).expect("control");
        c.upgrade(None).expect("upgrade luod");
        let pid = c.status().expect("status").pid as i32;
        self.pids.push(pid);
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(20));
        for &pid in &self.pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
        if std::thread::panicking() {
            eprintln!("luod log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
