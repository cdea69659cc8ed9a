//! Live re-backing of a real KVM guest's RAM (`luo-vmm migrate`) through a real luod: the guest
//! counts in its RAM while its memory moves onto other pages, and every check is made from the
//! outside — the guest's next step is exactly its last plus one, a pattern written into RAM the
//! guest never touches reads back byte for byte from the new RAM file, the new file is on the
//! pages asked for (`fstatfs` of the file, `KernelPageSize` of the VMM's mapping), the old
//! memory goes back to the pool, and the next VMM upgrade resumes on the new memory.
//!
//! Needs `/dev/kvm` and root (huge page pools); otherwise the tests say why and skip, and fail
//! under `LUO_REQUIRE_ALL=1`.

mod common;

use std::fs::File;
use std::time::Duration;

use common::{
    HugePages, Setup, check_report, field, free_huge_pages, kvm_usable, skip, skip_kernel_lacks,
    text, with_huge_pages,
};
use luo_sys::mmap::SharedMap;

const PAGE: u64 = 4096;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The guest RAM file of the running VMM, opened through `/proc/<pid>/fd` (a new open file
/// description of the same memory) and mapped shared.
struct Ram {
    file: File,
    map: SharedMap,
}

impl Ram {
    fn open(setup: &Setup) -> Ram {
        let st = setup.status();
        let path = format!("/proc/{}/fd/{}", field(&st, "pid"), field(&st, "ram_fd"));
        let link = std::fs::read_link(&path).expect("readlink");
        assert!(
            link.to_string_lossy()
                .starts_with("/memfd:luo-guestmem-ram"),
            "{path} is {link:?}"
        );
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open guest RAM");
        let len = field(&st, "mem") as usize;
        let map = SharedMap::new(&file, len, true, false).expect("map guest RAM");
        Ram { file, map }
    }

    /// The page size of the file, from `fstatfs`.
    fn page_size(&self) -> u64 {
        let sfs = rustix::fs::fstatfs(&self.file).expect("fstatfs");
        match sfs.f_type {
            HUGETLBFS_MAGIC => sfs.f_bsize as u64,
            TMPFS_MAGIC => PAGE,
            other => panic!("guest RAM on an unexpected file system {other:#x}"),
        }
    }
}

/// The regions of the pattern: none touches the guest's own pages (counter page 0, program
/// page 1). One crosses the first 2 MiB boundary, one page or a few lies in every 4 MiB, and the
/// last page of memory.
fn regions(size: u64) -> Vec<(u64, u64)> {
    let mut r = vec![((2 << 20) - 2 * PAGE, 4 * PAGE)];
    for k in 1..size / (4 << 20) {
        r.push((k * (4 << 20) + (k % 5) * PAGE, PAGE * (1 + k % 3)));
    }
    r.push((size - PAGE, PAGE));
    r
}

/// The pattern's bytes at `offset`, `len` long (whole 8-byte words).
fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset / 8..(offset + len) / 8)
        .flat_map(|w| (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_0f0f_3c3c_a5a5).to_le_bytes())
        .collect()
}

fn write_pattern(ram: &mut Ram) {
    let size = ram.map.len() as u64;
    let bytes = ram.map.as_mut_slice().expect("writable");
    for (off, len) in regions(size) {
        bytes[off as usize..(off + len) as usize].copy_from_slice(&pattern(off, len));
    }
}

/// Checks every byte of guest RAM: the pattern where it was written, the guest's program in
/// page 1, zeros everywhere else (page 0 apart from the counter, which moves).
fn check_bytes(ram: &Ram) {
    let size = ram.map.len() as u64;
    let bytes = ram.map.as_slice();
    let zero = vec![0u8; PAGE as usize];
    let mut expected = vec![0u8; size as usize / PAGE as usize];
    for (off, len) in regions(size) {
        for p in off / PAGE..(off + len) / PAGE {
            expected[p as usize] = 1;
        }
    }
    for (p, &kind) in expected.iter().enumerate() {
        let at = p * PAGE as usize;
        let page = &bytes[at..at + PAGE as usize];
        match (p, kind) {
            (0, _) => {
                let counter = luo_vmm::guest::COUNTER as usize;
                assert!(
                    page[..counter] == zero[..counter],
                    "page 0 below the counter"
                );
                assert!(
                    page[counter + 4..] == zero[counter + 4..],
                    "page 0 above the counter"
                );
            }
            (1, _) => {
                let prog = (luo_vmm::guest::ENTRY as usize) % PAGE as usize;
                let n = luo_vmm::guest::PROGRAM.len();
                assert_eq!(page[prog..prog + n], luo_vmm::guest::PROGRAM, "the program");
                assert!(page[prog + n..] == zero[prog + n..], "after the program");
            }
            (_, 1) => assert!(
                page == pattern(at as u64, PAGE).as_slice(),
                "pattern page at {at:#x}"
            ),
            _ => assert!(page == zero.as_slice(), "page at {at:#x} is not zero"),
        }
    }
}

/// `KernelPageSize` (KiB) of every mapping of guest RAM in process `pid`.
fn mapped_page_kib(pid: u64) -> Vec<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut out = Vec::new();
    let mut in_ram = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_ram = line.contains("/memfd:luo-guestmem-ram");
        } else if in_ram && let Some(v) = line.strip_prefix("KernelPageSize:") {
            out.push(
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .expect("KernelPageSize"),
            );
        }
    }
    out
}

/// Runs `luo-vmm migrate --to <to>` (with `extra` arguments); returns its report, or its error.
fn migrate(setup: &Setup, to: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["migrate", "--to", to];
    args.extend_from_slice(extra);
    let out = setup.vmm(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Checks a migrate's report: the guest continued exactly where it stopped, on `to` pages.
fn check_migrated(r: &str, from: &str, to: &str) {
    assert!(r.starts_with("MIGRATED"), "{r}");
    let before = field(r, "last_before");
    assert_eq!(
        field(r, "first_after"),
        before + 1,
        "next step after the switch: {r}"
    );
    assert_eq!(field(r, "counter_at_pause"), before, "{r}");
    assert_eq!(
        field(r, "counter_at_resume"),
        before,
        "the counter arrived in the new RAM: {r}"
    );
    assert_eq!(field(r, "lost"), 0, "{r}");
    assert_eq!(field(r, "repeated"), 0, "{r}");
    assert_eq!(field(r, "anomalies"), 0, "{r}");
    assert_eq!(text(r, "from"), from, "{r}");
    assert_eq!(text(r, "to"), to, "{r}");
    assert_eq!(text(r, "pages"), to, "{r}");
    assert!(field(r, "blackout_ns") > 0, "{r}");
    assert!(field(r, "rounds") >= 1, "{r}");
    assert!(
        field(r, "steps_during_precopy") > 0,
        "the guest kept running during the pre-copy: {r}"
    );
}

/// The VMM's state after a migrate onto `to` (`page` bytes): the new file and the VMM's only
/// mapping of guest RAM are on those pages, every byte is as written, and the guest runs.
fn check_backing(setup: &Setup, to: &str, page: u64) {
    let st = setup.status();
    assert_eq!(text(&st, "pages"), to, "{st}");
    assert_eq!(field(&st, "anomalies"), 0, "{st}");
    let ram = Ram::open(setup);
    assert_eq!(ram.page_size(), page, "page size of the new RAM file");
    let kib = mapped_page_kib(field(&st, "pid"));
    assert!(!kib.is_empty(), "no mapping of guest RAM");
    assert!(
        kib.iter().all(|&k| k == page >> 10),
        "the VMM maps guest RAM with pages of {kib:?} KiB, not only {} KiB (old memory left?)",
        page >> 10
    );
    check_bytes(&ram);
    let later = setup.status();
    assert!(
        field(&later, "steps") > field(&st, "steps"),
        "still running: {later}"
    );
}

fn upgrade(setup: &Setup, n: u64) -> String {
    let out = setup.vmm(&["upgrade"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "upgrade: {report} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        setup.log()
    );
    check_report(&report, n);
    report
}

/// 4 KiB → 2 MiB pages under the running guest, an upgrade that resumes on the 2 MiB pages,
/// then 2 MiB → 4 KiB under the upgraded VMM; the huge pages go back to the pool.
#[test]
fn live_migrate_4k_to_2m_and_back_keeps_every_step_and_byte() {
    const TEST: &str = "live_migrate_4k_to_2m_and_back_keeps_every_step_and_byte";
    if !kvm_usable(TEST) {
        return;
    }
    with_huge_pages(TEST, 2048, 32, || {
        let free = free_huge_pages(2048);
        let mut setup = Setup::new("mig-2m");
        setup.boot("64M", "4k");
        write_pattern(&mut Ram::open(&setup));

        let r = migrate(&setup, "2m", &[]).expect("migrate to 2m");
        check_migrated(&r, "4k", "2m");
        check_backing(&setup, "2m", 2 << 20);
        assert_eq!(free_huge_pages(2048), free - 32, "the new memory's pages");

        // The next upgrade carries the new backing: luod's session holds it.
        let u = upgrade(&setup, 1);
        assert_eq!(text(&u, "pages"), "2m", "{u}");
        assert!(field(&u, "first_after") > field(&r, "first_after"), "{u}");
        check_backing(&setup, "2m", 2 << 20);

        let r = migrate(&setup, "4k", &[]).expect("migrate back to 4k");
        check_migrated(&r, "2m", "4k");
        check_backing(&setup, "4k", PAGE);
        // The old memory goes once luod and the previous VMM (exiting) let go of it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while free_huge_pages(2048) < free && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            free_huge_pages(2048),
            free,
            "the 2 MiB pages went back to the pool"
        );
        upgrade(&setup, 2);
        check_backing(&setup, "4k", PAGE);
    });
}

/// A 1 GiB guest on 4 KiB pages moved onto one 1 GiB page while it counts, then upgraded.
#[test]
fn live_migrate_1g_guest_onto_a_1g_page() {
    const TEST: &str = "live_migrate_1g_guest_onto_a_1g_page";
    if !kvm_usable(TEST) {
        return;
    }
    with_huge_pages(TEST, 1 << 20, 1, || {
        let mut setup = Setup::new("mig-1g");
        setup.boot("1G", "4k");
        write_pattern(&mut Ram::open(&setup));
        let r = migrate(&setup, "1g", &[]).expect("migrate to 1g");
        check_migrated(&r, "4k", "1g");
        assert_eq!(field(&r, "mem"), 1 << 30);
        check_backing(&setup, "1g", 1 << 30);
        assert_eq!(free_huge_pages(1 << 20), 0, "the guest has the page");
        let u = upgrade(&setup, 1);
        assert_eq!(text(&u, "pages"), "1g", "{u}");
        check_backing(&setup, "1g", 1 << 30);
    });
}

/// The guest's state after a migrate that failed: the same VMM, the old memory (4 KiB pages,
/// every byte), still counting, and luod's session still holding the old memory (an upgrade
/// resumes on it).
fn check_untouched(setup: &Setup, before: &str, upgrades: u64) {
    let st = setup.status();
    assert_eq!(field(&st, "pid"), field(before, "pid"), "{st}");
    assert_eq!(field(&st, "migrations"), 0, "{st}");
    check_backing(setup, "4k", PAGE);
    let u = upgrade(setup, upgrades);
    assert_eq!(text(&u, "pages"), "4k", "{u}");
    check_backing(setup, "4k", PAGE);
}

/// Too few huge pages: the migrate says how many are needed and how to reserve them, and the
/// guest keeps running on its memory, untouched.
#[test]
fn migrate_without_enough_huge_pages_leaves_the_guest_on_its_memory() {
    const TEST: &str = "migrate_without_enough_huge_pages_leaves_the_guest_on_its_memory";
    if !kvm_usable(TEST) {
        return;
    }
    // 8 pages where 32 are needed, under the pool lock (nobody else changes the pool).
    let _pages = match HugePages::reserve(2048, 8) {
        Ok(p) => p,
        Err(why) => return skip(TEST, &why),
    };
    let free = free_huge_pages(2048);
    assert!(free < 32, "the pool already has {free} free 2 MiB pages");
    let mut setup = Setup::new("mig-short");
    setup.boot("64M", "4k");
    write_pattern(&mut Ram::open(&setup));
    let before = setup.status();
    let e = migrate(&setup, "2m", &[]).expect_err("too few huge pages");
    assert!(
        e.contains(&format!(
            "32 free 2048 KiB huge pages are needed, the pool has {free}"
        )),
        "{e}"
    );
    assert!(
        e.contains("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "{e}"
    );
    assert_eq!(free_huge_pages(2048), free, "nothing kept from the pool");
    check_untouched(&setup, &before, 1);
}

/// A migrate that fails after luod took the new files, or in the pause after the last copy:
/// dirty logging goes off, luod's session gets the old files back, the guest continues on its
/// old memory — and a migrate after that succeeds.
#[test]
fn migrate_failing_after_the_precopy_leaves_the_guest_on_its_memory() {
    const TEST: &str = "migrate_failing_after_the_precopy_leaves_the_guest_on_its_memory";
    if !kvm_usable(TEST) {
        return;
    }
    let mut setup = Setup::new("mig-fail");
    setup.boot("64M", "4k");
    write_pattern(&mut Ram::open(&setup));
    for (n, at) in [(1, "replace"), (2, "pause")] {
        let before = setup.status();
        let e = migrate(&setup, "4k", &["--fail-at", at]).expect_err("fails on purpose");
        assert!(e.contains("on purpose"), "{e}");
        assert!(e.contains("the guest continues on its old memory"), "{e}");
        assert!(!e.contains("could not take it back"), "{e}");
        check_untouched(&setup, &before, n);
    }
    // The same page size is a re-backing too: a new memfd.
    let r = migrate(&setup, "4k", &[]).expect("migrate after the failures");
    check_migrated(&r, "4k", "4k");
    check_backing(&setup, "4k", PAGE);
    upgrade(&setup, 3);
    check_backing(&setup, "4k", PAGE);
}

/// A guest whose RAM is a KVM guest_memfd has no dirty log: the migrate is refused, and the
/// guest keeps running.
#[test]
fn migrate_of_a_guest_memfd_guest_is_refused() {
    const TEST: &str = "migrate_of_a_guest_memfd_guest_is_refused";
    if !kvm_usable(TEST) {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("vm");
    if !kvm.check_extension(kvm_ioctls::Cap::GuestMemfd) || vm.check_extension_raw(244) & 1 == 0 {
        return skip_kernel_lacks(TEST, "KVM has no mappable guest_memfd");
    }
    drop(vm);
    let mut setup = Setup::new("mig-gmem");
    setup.boot_with(&["--mem", "16M", "--guest-memfd"]);
    let before = setup.status();
    let e = migrate(&setup, "4k", &[]).expect_err("refused");
    assert!(e.contains("guest_memfd") && e.contains("dirty log"), "{e}");
    std::thread::sleep(Duration::from_millis(50));
    let after = setup.status();
    assert_eq!(field(&after, "pid"), field(&before, "pid"));
    assert!(field(&after, "steps") > field(&before, "steps"), "{after}");
    assert_eq!(field(&after, "anomalies"), 0, "{after}");
}
