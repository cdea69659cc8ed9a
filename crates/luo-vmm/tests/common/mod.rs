//! Helpers of luo-vmm's tests: skipping (a failure under `LUO_REQUIRE_ALL=1`), a real luod and
//! VMM in a private directory, reading reports, and huge pages reserved under the shared pool
//! lock.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../luo-handlers/tests/common/hugepages.rs"]
mod hugepages;

pub use hugepages::HugePages;

pub fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// Skips a test whose subject is a feature of the host kernel that the machine's kernel was
/// built without (guest_memfd, for one): `LUO_REQUIRE_ALL=1` covers what a machine can be given
/// (`/dev/kvm`, huge pages, root), not what its kernel lacks. The line is printed under every
/// setting so that a CI log shows what did not run and why.
pub fn skip_kernel_lacks(test: &str, why: &str) {
    eprintln!("SKIP {test}: the host kernel lacks it: {why}");
}

pub fn vmm_binary() -> &'static str {
    env!("CARGO_BIN_EXE_luo-vmm")
}

/// `target/<profile>/luod`, built with cargo if missing.
pub fn luod_binary() -> PathBuf {
    let bin = Path::new(vmm_binary()).with_file_name("luod");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "luod"])
            .status()
            .expect("cargo build -p luod")
            .success();
        assert!(ok, "cargo build -p luod failed");
    }
    bin
}

/// luod and a VMM in a private directory; dropping stops the VMM, then luod (by pid).
pub struct Setup {
    pub dir: PathBuf,
    luod: Child,
    pub luod_pids: Vec<u32>,
    /// The first VMM (its successors are orphans this process adopts as subreaper).
    first_vmm: Option<Child>,
}

impl Setup {
    pub fn new(tag: &str) -> Setup {
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let dir = std::env::temp_dir().join(format!("luo-vmm-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let luod = Command::new(luod_binary())
            .arg("--socket")
            .arg(dir.join("luod.sock"))
            .env_remove("LUOD_SOCKET")
            .stdin(Stdio::null())
            .stderr(File::create(dir.join("luod.log")).expect("log"))
            .spawn()
            .expect("luod");
        let pid = luod.id();
        let s = Setup {
            dir,
            luod,
            luod_pids: vec![pid],
            first_vmm: None,
        };
        s.wait_for(&s.dir.join("luod.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while luo_client::Control::connect_at(&s.dir.join("luod.sock"))
            .and_then(|c| c.ping())
            .is_err()
        {
            assert!(Instant::now() < deadline, "luod did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    pub fn wait_for(&self, p: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.exists() {
            assert!(Instant::now() < deadline, "{} did not appear", p.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn vmm(&self, args: &[&str]) -> std::process::Output {
        Command::new(vmm_binary())
            .args(args)
            .arg("--session")
            .arg("vm-test")
            .arg("--control")
            .arg(self.dir.join("vmm.sock"))
            .env("LUOD_SOCKET", self.dir.join("luod.sock"))
            .stdin(Stdio::null())
            .output()
            .expect("luo-vmm")
    }

    pub fn boot(&mut self, mem: &str, pages: &str) {
        self.boot_with(&["--mem", mem, "--pages", pages]);
    }

    pub fn boot_with(&mut self, args: &[&str]) {
        let log = File::create(self.dir.join("vmm.log")).expect("log");
        let child = Command::new(vmm_binary())
            .args(["run", "--session", "vm-test"])
            .args(args)
            .arg("--control")
            .arg(self.dir.join("vmm.sock"))
            .env("LUOD_SOCKET", self.dir.join("luod.sock"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("luo-vmm run");
        self.first_vmm = Some(child);
        self.wait_for(&self.dir.join("vmm.sock"));
    }

    pub fn status(&self) -> String {
        let out = self.vmm(&["status"]);
        assert!(out.status.success(), "status: {}", self.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Stop the VMM and wait until it is gone: its guest RAM goes back to the pool.
        let out = self.vmm(&["stop"]);
        let reply = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(pid) = reply
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("pid=")?.parse::<u32>().ok())
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                let _ = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(mut c) = self.first_vmm.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &pid in &self.luod_pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
        let _ = self.luod.wait();
        std::thread::sleep(Duration::from_millis(50));
        while rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
            .is_ok_and(|r| r.is_some())
        {}
        if std::thread::panicking() {
            eprintln!("VMM log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn field(s: &str, key: &str) -> u64 {
    s.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {s:?}"))
}

/// Checks one upgrade's report: the guest continued exactly where it stopped.
pub fn check_report(r: &str, upgrades: u64) {
    assert!(r.starts_with("RESUMED"), "{r}");
    let before = field(r, "last_before");
    assert_eq!(
        field(r, "first_after"),
        before + 1,
        "next step after the upgrade: {r}"
    );
    assert_eq!(field(r, "counter_at_pause"), before, "{r}");
    assert_eq!(
        field(r, "counter_at_resume"),
        before,
        "guest RAM is the same memory: {r}"
    );
    assert_eq!(field(r, "lost"), 0, "{r}");
    assert_eq!(field(r, "repeated"), 0, "{r}");
    assert_eq!(field(r, "anomalies"), 0, "{r}");
    assert_eq!(field(r, "upgrades"), upgrades, "{r}");
    assert!(field(r, "blackout_ns") > 0);
}

pub fn luo_size(s: &str) -> u64 {
    let (n, m) = s.split_at(s.len() - 1);
    n.parse::<u64>().expect("size")
        * match m {
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => panic!("size"),
        }
}

/// True if this process can use `/dev/kvm`; otherwise says why `test` skips.
pub fn kvm_usable(test: &str) -> bool {
    if !Path::new("/dev/kvm").exists() {
        skip(test, "no /dev/kvm");
        return false;
    }
    if rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_err()
    {
        skip(test, "/dev/kvm is not accessible to this user");
        return false;
    }
    true
}

/// Runs `f` with the pool of `kib`-KiB huge pages grown by `count` (under the shared pool
/// lock), and puts the pool back afterwards, also on failure; skips if the pool cannot grow.
pub fn with_huge_pages(test: &str, kib: u64, count: u64, f: impl FnOnce()) {
    match HugePages::reserve(kib, count) {
        Ok(_pages) => f(),
        Err(why) => skip(test, &why),
    }
}

/// The text value of `key` in a `key=value ...` line.
pub fn text<'a>(s: &'a str, key: &str) -> &'a str {
    s.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {s:?}"))
}

/// Free pages in the pool of `kib`-KiB huge pages.
pub fn free_huge_pages(kib: u64) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages"
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}
