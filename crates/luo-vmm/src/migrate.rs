//! Live re-backing: a running guest's RAM moved onto new guest memory of another page size
//! (`luo-vmm migrate --to 4k|2m|1g`) while the guest keeps counting.
//!
//! ```text
//!  control thread                               vCPU thread (guest running)
//!  ask for the source  ------------------------> map the old RAM once more, dirty log handle
//!  new GuestMemory (same size and attributes,
//!  new page size); map it
//!  dirty logging on (slot 0)
//!  copy every data run of the old RAM            (guest writes: logged)
//!  rounds: KVM_GET_DIRTY_LOG, copy those pages,
//!  until few are dirty or MAX_ROUNDS
//!  luod: replace RAM and descriptor
//!  pause  -------------------------------------> stop the vCPU (immediate_exit)
//!                                                last dirty log, copy those pages
//!                                                counter in new RAM == last step?
//!                                                slot 0: delete, add at the new mapping
//!                                                run until the guest's next step
//!         <------------------------------------- MIGRATED blackout_ns=... (old memory back)
//!  drop the old memory
//! ```
//!
//! The principal types: [`Source`] (what the vCPU thread hands out about the memory the guest
//! runs on), [`Prepared`] (the new memory, filled while the guest ran, with what the pause
//! needs) and [`PreCopy`] (what the rounds did). The copying itself is [`Copier`]'s.
//!
//! Only the guest's writes are in KVM's dirty log: the host must not write guest RAM during a
//! migrate (luo-vmm's device model never writes it). Every failure before the switch leaves
//! the guest running on the old memory, intact: dirty logging is turned off again, luod's
//! session gets the old files back, and the new memory is dropped.

use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use luo_copy::Reason;
use luo_guestmem::{Attr, Descriptor, GuestMemory, HostMapping, PageSize, UNIT};

use crate::copy::Copier;
use crate::error::Error;
use crate::progress::now_ns;
use crate::vm::DirtyLog;

/// The most pre-copy rounds before the pause, however many pages the guest keeps dirtying.
pub const MAX_ROUNDS: u32 = 16;

/// A dirty set this small (1 MiB) is left for the pause: it copies in well under a
/// millisecond.
pub const SMALL_PAGES: u64 = 256;

/// Where a migrate is made to fail on purpose, to test the way back (`luo-vmm migrate
/// --fail-at`, hidden; the control socket's `migrate 2m fail-at=pause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailAt {
    /// After luod's session took the new files, before the pause.
    Replace,
    /// In the pause, after the last copy, before the memory slot is switched.
    Pause,
}

impl std::str::FromStr for FailAt {
    type Err = String;
    fn from_str(s: &str) -> Result<FailAt, String> {
        match s {
            "replace" => Ok(FailAt::Replace),
            "pause" => Ok(FailAt::Pause),
            _ => Err(format!("unknown failure point {s:?} (replace, pause)")),
        }
    }
}

impl std::fmt::Display for FailAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailAt::Replace => "replace",
            FailAt::Pause => "pause",
        })
    }
}

/// What the vCPU thread hands the migrating thread about the memory the guest runs on (with
/// a mapping of all of it, for reading, that goes to [`precopy`]).
#[derive(Debug)]
pub struct Source {
    /// Slot 0's dirty log.
    pub log: DirtyLog,
    /// The old memory as its descriptor says: size, page size, attributes, RAM token.
    pub descriptor: Descriptor,
    /// The old RAM file (a duplicate).
    pub ram: OwnedFd,
    /// The old descriptor memfd (a duplicate).
    pub descriptor_fd: OwnedFd,
    /// Guest steps so far, when the source was handed out.
    pub steps: u64,
}

/// What the pre-copy did.
#[derive(Clone, Debug, Default)]
pub struct PreCopy {
    /// Guest steps when the migrate began.
    pub steps_at_start: u64,
    /// Creating (and for huge pages allocating) the new memory, ns.
    pub create_ns: u64,
    /// Turning dirty logging on (KVM write-protects the slot, splitting huge mappings), ns.
    pub log_on_ns: u64,
    /// The first pass over every data run of the old RAM, ns.
    pub full_ns: u64,
    /// Bytes the first pass copied (holes of a sparse memfd are skipped).
    pub full_bytes: u64,
    /// Dirty pages found by each round after the first pass.
    pub round_pages: Vec<u64>,
    /// Everything from the first pass to the end of the last round, ns.
    pub precopy_ns: u64,
    /// Units the copy engine copied, and those of them that fell back to the CPU.
    pub units: u64,
    /// Units that fell back to the CPU.
    pub units_fallback: u64,
}

impl PreCopy {
    /// Rounds after the first pass.
    pub fn rounds(&self) -> u32 {
        self.round_pages.len() as u32
    }
}

/// New memory, filled while the guest ran: what the pause needs to finish the copy and switch.
#[derive(Debug)]
pub struct Prepared {
    /// The new guest memory.
    pub mem: GuestMemory,
    /// Its mapping: copied into, then the memory slot's.
    pub dst: HostMapping,
    /// The mapping of the old RAM that is copied from.
    pub src: HostMapping,
    /// Slot 0's dirty log (on).
    pub log: DirtyLog,
    /// The copy engine.
    pub copier: Arc<Copier>,
    /// What the pre-copy did.
    pub stats: PreCopy,
}

/// A new guest memory object like `d` on `page` pages: the same size, the same private
/// ranges (and so the same split pages), the same RAM token. Fails with the pool's shortage
/// (how many pages are needed, how to reserve them) if the huge page pool is too small.
pub fn new_memory_like(d: &Descriptor, page: PageSize) -> Result<GuestMemory, Error> {
    let mut mem = GuestMemory::create(d.size, page)?;
    for r in d.attrs.private_ranges() {
        mem.convert(r, Attr::Private)?;
    }
    if let Some(token) = d.ram_token {
        mem.set_ram_token(token)?;
    }
    Ok(mem)
}

/// Creates the new memory and copies the old into it while the guest runs: dirty logging on,
/// every data run once, then rounds of dirty pages until a round finds at most
/// [`SMALL_PAGES`] or [`MAX_ROUNDS`] are done. On failure dirty logging is off again and
/// nothing of the old memory has changed.
///
/// `src` maps the old RAM; the old memory's other parts stay with the caller's [`Source`].
pub fn precopy(
    src: HostMapping,
    source: &Source,
    to: PageSize,
    copier: Arc<Copier>,
) -> Result<Prepared, Error> {
    let (d, log, ram) = (&source.descriptor, source.log.clone(), source.ram.as_fd());
    let mut stats = PreCopy {
        steps_at_start: source.steps,
        ..PreCopy::default()
    };
    let t0 = now_ns();
    let mem = new_memory_like(d, to)?;
    let mut dst = mem.map(0..mem.size())?;
    stats.create_ns = now_ns() - t0;
    let t_log = now_ns();
    log.start()?;
    stats.log_on_ns = now_ns() - t_log;
    let r = (|| -> Result<(), Error> {
        let t1 = now_ns();
        let runs = data_runs(ram, d.size);
        let s = copier.copy_runs(&src, &mut dst, &runs, Reason::Rebacking)?;
        stats.full_bytes = s.bytes;
        stats.units += s.units;
        stats.units_fallback += s.units_fallback;
        stats.full_ns = now_ns() - t1;
        for _ in 0..MAX_ROUNDS {
            let (runs, pages) = dirty_runs(&log.take()?, d.size);
            let s = copier.copy_runs(&src, &mut dst, &runs, Reason::PreCopy)?;
            stats.units += s.units;
            stats.units_fallback += s.units_fallback;
            stats.round_pages.push(pages);
            if pages <= SMALL_PAGES {
                break;
            }
        }
        stats.precopy_ns = now_ns() - t1;
        Ok(())
    })();
    if let Err(e) = r {
        let _ = log.stop();
        return Err(e);
    }
    Ok(Prepared {
        mem,
        dst,
        src,
        log,
        copier,
        stats,
    })
}

impl Prepared {
    /// The last copy, with the vCPU stopped: fetches the dirty log once more and copies those
    /// pages. Returns how many there were.
    pub fn finish_copy(&mut self) -> Result<u64, Error> {
        let (runs, pages) = dirty_runs(&self.log.take()?, self.mem.size());
        self.copier
            .copy_runs(&self.src, &mut self.dst, &runs, Reason::Blackout)?;
        Ok(pages)
    }
}

/// The dirty pages of a `KVM_GET_DIRTY_LOG` bitmap (bit `i`: the 4 KiB page at `i * 4096`) as
/// byte runs, adjacent pages merged, clipped to `size`; and how many pages were dirty.
pub fn dirty_runs(bitmap: &[u64], size: u64) -> (Vec<Range<u64>>, u64) {
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut pages = 0;
    for (w, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let b = u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            let start = (w as u64 * 64 + b) * UNIT;
            if start >= size {
                break;
            }
            pages += 1;
            match runs.last_mut() {
                Some(r) if r.end == start => r.end += UNIT,
                _ => runs.push(start..start + UNIT),
            }
        }
    }
    (runs, pages)
}

/// The runs of `fd`'s first `size` bytes that hold data (`SEEK_DATA` / `SEEK_HOLE`): a sparse
/// memfd's holes read as zeros, as the new memory already is, so they need no copy. A hugetlb
/// file is data throughout. Seeks on a new open file description of the file (the RAM's own is
/// shared with luod, which records its position); if that cannot be opened, everything is data.
pub fn data_runs(fd: BorrowedFd<'_>, size: u64) -> Vec<Range<u64>> {
    #[allow(clippy::single_range_in_vec_init)] // one run: all of it
    let whole = vec![0..size];
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let Ok(own) = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return whole;
    };
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match rustix::fs::seek(&own, rustix::fs::SeekFrom::Data(at)) {
            Ok(s) => s.min(size),
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return whole,
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(&own, rustix::fs::SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => return whole,
        };
        // Runs of whole 4 KiB pages (shmem reports page-granular data anyway).
        let (s, e) = (start / UNIT * UNIT, end.div_ceil(UNIT) * UNIT);
        match runs.last_mut() {
            Some(r) if r.end >= s => r.end = r.end.max(e.min(size)),
            _ => runs.push(s..e.min(size)),
        }
        at = end.max(start + 1);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_bits_become_merged_runs() {
        let mut bm = vec![0u64; 3];
        bm[0] = 0b1011 | 1 << 63;
        bm[1] = 1; // page 64 continues the run ending at page 63
        bm[2] = 1 << 5;
        let (runs, pages) = dirty_runs(&bm, 192 * UNIT);
        assert_eq!(pages, 6);
        assert_eq!(
            runs,
            vec![
                0..2 * UNIT,
                3 * UNIT..4 * UNIT,
                63 * UNIT..65 * UNIT,
                133 * UNIT..134 * UNIT
            ]
        );
        // Bits beyond the memory are ignored.
        let (runs, pages) = dirty_runs(&bm, 100 * UNIT);
        assert_eq!(pages, 5);
        assert_eq!(runs.last(), Some(&(63 * UNIT..65 * UNIT)));
        assert_eq!(dirty_runs(&[0, 0], 128 * UNIT), (vec![], 0));
    }

    #[test]
    fn data_runs_skip_holes_of_a_sparse_memfd() {
        let mem = GuestMemory::create(64 << 20, PageSize::Base4K).expect("memory");
        let mut m = mem.map(0..mem.size()).expect("map");
        m.write(0x3000, &[1]).expect("write");
        m.write(0x10_0000, &[1; 3 * 4096]).expect("write");
        m.write((64 << 20) - 1, &[1]).expect("write");
        let runs = data_runs(mem.ram_fd(), mem.size());
        assert_eq!(
            runs,
            vec![
                0x3000..0x4000,
                0x10_0000..0x10_3000,
                (64 << 20) - 0x1000..64 << 20
            ]
        );
        // The RAM's own file position is untouched.
        assert_eq!(rustix::fs::tell(mem.ram_fd()).expect("tell"), 0);
        let empty = GuestMemory::create(8 << 20, PageSize::Base4K).expect("memory");
        assert!(data_runs(empty.ram_fd(), empty.size()).is_empty());
    }

    #[test]
    fn new_memory_keeps_size_attributes_and_token() {
        let mut old = GuestMemory::create(8 << 20, PageSize::Base4K).expect("memory");
        old.convert(0x1000..0x3000, Attr::Private).expect("convert");
        old.convert(0x40_0000..0x60_0000, Attr::Private)
            .expect("convert");
        old.set_ram_token(7).expect("token");
        let new = new_memory_like(&old.to_descriptor(), PageSize::Base4K).expect("new");
        assert_eq!(new.size(), old.size());
        assert_eq!(new.attrs(), old.attrs());
        assert_eq!(new.ram_token(), Some(7));
        let d = Descriptor::read(new.descriptor_fd()).expect("descriptor");
        assert_eq!(d.attrs, *old.attrs());
        assert_eq!(d.ram_token, Some(7));
    }

    #[test]
    fn new_memory_on_missing_huge_pages_says_how_to_reserve_them() {
        // More 1 GiB pages than any test machine has free.
        let d = GuestMemory::create(1 << 40, PageSize::Base4K)
            .expect("sparse 1 TiB")
            .to_descriptor();
        let e = new_memory_like(&d, PageSize::Huge1G).expect_err("no pool that large");
        let text = format!(
            "{e} {}",
            std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
        );
        assert!(
            text.contains("1024 free 1048576 KiB huge pages are needed"),
            "{text}"
        );
        assert!(text.contains("nr_hugepages"), "{text}");
    }
}
