//! A real KVM guest across VMM upgrades through a real luod: the guest counts in its RAM and
//! reports every step; each upgrade must continue exactly where the guest stopped — no step
//! lost, none repeated, the counter in RAM the same — also across an upgrade of luod itself.
//!
//! Needs `/dev/kvm` (and root for the huge page variant); otherwise the tests say why and skip,
//! and fail under `LUO_REQUIRE_ALL=1`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn skip(test: &str, why: &str) {
    if std::env::var("LUO_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (LUO_REQUIRE_ALL=1 turns this skip into a failure)");
    }
    eprintln!("SKIP {test}: {why}");
}

fn vmm_binary() -> &'static str {
    env!("CARGO_BIN_EXE_luo-vmm")
}

/// `target/<profile>/luod`, built with cargo if missing.
fn luod_binary() -> PathBuf {
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
struct Setup {
    dir: PathBuf,
    luod: Child,
    luod_pids: Vec<u32>,
    /// The first VMM (its successors are orphans this process adopts as subreaper).
    first_vmm: Option<Child>,
}

impl Setup {
    fn new(tag: &str) -> Setup {
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

    fn wait_for(&self, p: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.exists() {
            assert!(Instant::now() < deadline, "{} did not appear", p.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn vmm(&self, args: &[&str]) -> std::process::Output {
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

    fn boot(&mut self, mem: &str, pages: &str) {
        self.boot_with(&["--mem", mem, "--pages", pages]);
    }

    fn boot_with(&mut self, args: &[&str]) {
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

    fn status(&self) -> String {
        let out = self.vmm(&["status"]);
        assert!(out.status.success(), "status: {}", self.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
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

fn field(s: &str, key: &str) -> u64 {
    s.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {s:?}"))
}

/// Checks one upgrade's report: the guest continued exactly where it stopped.
fn check_report(r: &str, upgrades: u64) {
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

fn upgrade_many(test: &str, mem: &str, pages: &str) {
    if !Path::new("/dev/kvm").exists() {
        return skip(test, "no /dev/kvm");
    }
    if rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_err()
    {
        return skip(test, "/dev/kvm is not accessible to this user");
    }
    let mut setup = Setup::new(test);
    setup.boot(mem, pages);
    let first = setup.status();
    let mut last = field(&first, "last");
    for n in 1..=4 {
        if n == 3 {
            // luod itself is replaced while the guest runs.
            let c = luo_client::Control::connect_at(&setup.dir.join("luod.sock")).expect("control");
            c.upgrade(None).expect("upgrade luod");
            setup.luod_pids.push(c.status().expect("status").pid);
        }
        let out = setup.vmm(&["upgrade"]);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "upgrade {n}: {report} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            setup.log()
        );
        check_report(&report, n);
        assert!(
            field(&report, "last_before") >= last,
            "progress went backwards"
        );
        last = field(&report, "first_after");
        assert_eq!(field(&report, "mem"), luo_size(mem));
    }
    std::thread::sleep(Duration::from_millis(100));
    let end = setup.status();
    assert!(
        field(&end, "steps") > last,
        "the guest keeps running: {end}"
    );
    assert_eq!(field(&end, "anomalies"), 0, "{end}");
    assert_eq!(field(&end, "upgrades"), 4, "{end}");
}

fn luo_size(s: &str) -> u64 {
    let (n, m) = s.split_at(s.len() - 1);
    n.parse::<u64>().expect("size")
        * match m {
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => panic!("size"),
        }
}

#[test]
fn guest_survives_vmm_and_luod_upgrades_4k() {
    upgrade_many("guest_survives_vmm_and_luod_upgrades_4k", "64M", "4k");
}

/// Runs `f` with the pool of `kib`-KiB huge pages grown by `count`, under the shared pool lock
/// (`/tmp/luo-hugepages.lock`), and puts the pool back afterwards, also on failure.
fn with_huge_pages(test: &str, kib: u64, count: u64, f: impl FnOnce()) {
    const LOCK: &str = "/tmp/luo-hugepages.lock";
    let Ok(lock) = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
    else {
        return skip(test, "cannot open the huge page lock");
    };
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).is_err() {
        return skip(test, "cannot lock the huge page pool");
    }
    let dir = PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"));
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (Some(prev), Some(free)) = (read("nr_hugepages"), read("free_hugepages")) else {
        return skip(test, &format!("no {kib} KiB huge pages"));
    };
    let nr = dir.join("nr_hugepages");
    if std::fs::write(&nr, format!("{}", prev + count)).is_err() {
        return skip(
            test,
            &format!("cannot grow the {kib} KiB pool (needs root)"),
        );
    }
    struct Restore(PathBuf, u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, format!("{}", self.1));
        }
    }
    let _restore = Restore(nr.clone(), prev);
    if read("free_hugepages").unwrap_or(0) < free + count {
        let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
        let _ = std::fs::write(&nr, format!("{prev}"));
        let _ = std::fs::write(&nr, format!("{}", prev + count));
        if read("free_hugepages").unwrap_or(0) < free + count {
            return skip(test, "not enough contiguous free memory for the huge pages");
        }
    }
    f();
}

#[test]
fn guest_survives_vmm_upgrades_2m() {
    const TEST: &str = "guest_survives_vmm_upgrades_2m";
    with_huge_pages(TEST, 2048, 32, || upgrade_many(TEST, "64M", "2m"));
}

/// A 1 GiB guest on one 1 GiB page.
#[test]
fn guest_survives_vmm_upgrades_1g() {
    const TEST: &str = "guest_survives_vmm_upgrades_1g";
    with_huge_pages(TEST, 1 << 20, 1, || upgrade_many(TEST, "1G", "1g"));
}

/// A guest whose RAM is a real KVM guest_memfd runs, but cannot be upgraded: the kernel binds
/// the guest_memfd to its VM. The upgrade is refused with the reason and the guest keeps
/// running, untouched.
#[test]
fn guest_memfd_guest_runs_and_refuses_upgrade() {
    const TEST: &str = "guest_memfd_guest_runs_and_refuses_upgrade";
    if !Path::new("/dev/kvm").exists() {
        return skip(TEST, "no /dev/kvm");
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    if !kvm.check_extension(kvm_ioctls::Cap::GuestMemfd) {
        return skip(TEST, "KVM has no KVM_CAP_GUEST_MEMFD");
    }
    let vm = kvm.create_vm().expect("vm");
    if vm.check_extension_raw(244) & 1 == 0 {
        return skip(
            TEST,
            "KVM's guest_memfd has no mmap flag (KVM_CAP_GUEST_MEMFD_FLAGS)",
        );
    }
    drop(vm);
    let mut setup = Setup::new("gmem");
    setup.boot_with(&["--mem", "16M", "--guest-memfd"]);
    let before = setup.status();
    assert!(before.contains("backing=GuestMemfd"), "{before}");
    let out = setup.vmm(&["upgrade"]);
    assert!(!out.status.success(), "upgrade must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest_memfd"), "{err}");
    std::thread::sleep(Duration::from_millis(50));
    let after = setup.status();
    assert_eq!(field(&after, "pid"), field(&before, "pid"));
    assert!(
        field(&after, "steps") > field(&before, "steps"),
        "still running: {after}"
    );
    assert_eq!(field(&after, "anomalies"), 0);
}
