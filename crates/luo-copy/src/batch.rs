//! A batch and the memory it copies: the only module of luo-copy with `unsafe` code.
//!
//! A [`Batch`] is a list of units over a source and a destination buffer that the engine has
//! borrowed for the whole batch ([`Buffers`]: `&[u8]` and `&mut [u8]`, or a [`Mapping`] and a
//! `&mut Mapping`). A driver splits it into [`Run`]s,
//! contiguous stretches of the batch in unit order, one per channel. Runs are `Send`, so each
//! can be copied by a different thread at the same time, and that is sound because:
//!
//! - every unit is inside both buffers and no two units' destinations overlap
//!   ([`check_units`], run by [`Batch::new`]);
//! - the runs of one split cover disjoint stretches of the batch ([`Batch::split`] checks the
//!   cut positions are in order), so no byte of the destination is written by two runs;
//! - a run borrows the batch mutably, so nothing else touches the destination while runs
//!   exist, and the source is borrowed shared, so nothing in this process writes it;
//! - a `Run` is not `Sync`: one run is only ever copied by one thread at a time.
//!
//! A channel is a persistent thread, which cannot borrow a batch for a lifetime. [`scope`]
//! lends it a run anyway, as [`std::thread::scope`] lends borrowed data to the threads it
//! spawns: [`Scope::lend`] turns a run into a [`Lent`] (no lifetime) and `scope` does not
//! return, even when unwinding, until every `Lent` has been dropped. So a channel can never
//! touch a batch's memory after the driver's `copy_batch` has returned.
//!
//! Copies use streaming (non-temporal) stores where the CPU has them: a channel writes memory
//! it will not read again, the way a DMA engine does, and avoids reading every destination line
//! before writing it. Each copy ends with a store fence, so the bytes are visible to whichever
//! thread learns of the copy's completion.
//!
//! A [`Mapping`] is shared memory of a file (a memfd): another process may write the source
//! while it is copied, as a running guest writes its RAM during a live migration. Such memory
//! is only ever accessed through raw pointers here (never as a Rust slice), and what a unit's
//! copy holds is then what each byte was when it was read; finding the bytes that changed is
//! the caller's business (a dirty log).
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::driver::BatchInfo;
use crate::error::{Error, Result};
use crate::stats::ChannelStats;
use crate::unit::{Unit, check_units};

/// A position in a batch: byte `offset` of unit `unit`.
///
/// The end of the batch is `{ unit: units.len(), offset: 0 }`; the end of a unit is the same
/// position as the start of the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// The unit's index in the batch.
    pub unit: usize,
    /// The offset in the unit.
    pub offset: usize,
}

impl Pos {
    /// The start of unit `unit`.
    pub const fn unit(unit: usize) -> Pos {
        Pos { unit, offset: 0 }
    }
}

/// The part of one unit that a run covers: bytes `start..end` of unit `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The unit's index in the batch.
    pub unit: usize,
    /// First byte covered, in the unit.
    pub start: usize,
    /// End of the bytes covered, in the unit.
    pub end: usize,
    /// Whether the piece is the whole unit.
    pub whole: bool,
}

impl Piece {
    /// Bytes in the piece.
    pub const fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the piece is empty (never, for pieces of a run).
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The source and destination of one copy, borrowed for `'a`: the source for reading, the
/// destination for writing by this copy alone.
#[derive(Debug)]
pub(crate) struct Buffers<'a> {
    src: *const u8,
    src_len: usize,
    dst: *mut u8,
    dst_len: usize,
    _borrow: PhantomData<(&'a [u8], &'a mut [u8])>,
}

impl<'a> Buffers<'a> {
    /// Two slices.
    pub(crate) fn slices(src: &'a [u8], dst: &'a mut [u8]) -> Buffers<'a> {
        Buffers {
            src: src.as_ptr(),
            src_len: src.len(),
            dst: dst.as_mut_ptr(),
            dst_len: dst.len(),
            _borrow: PhantomData,
        }
    }

    /// Two mappings; fails unless the destination is writable.
    pub(crate) fn mappings(src: &'a Mapping, dst: &'a mut Mapping) -> Result<Buffers<'a>> {
        if !dst.writable {
            return Err(Error::ReadOnly);
        }
        Ok(Buffers {
            src: src.ptr.as_ptr(),
            src_len: src.len,
            dst: dst.ptr.as_ptr(),
            dst_len: dst.len,
            _borrow: PhantomData,
        })
    }

    /// The source's length.
    pub(crate) fn src_len(&self) -> usize {
        self.src_len
    }

    /// The destination's length.
    pub(crate) fn dst_len(&self) -> usize {
        self.dst_len
    }
}

/// A shared mapping of part of a file (a memfd, a hugetlb memfd), to copy from or into with
/// [`Engine::copy_mapped`](crate::Engine::copy_mapped). Unmapped when dropped.
///
/// Other processes may write the file while it is mapped; the engine only ever reads and
/// writes the mapping through raw pointers, so that is sound, and a copy then holds each byte
/// as it was when read. The mapping gives no other access to its bytes.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: a mapping is process memory that stays mapped until the `Mapping` is dropped; it has
// no thread affinity, and every access to it goes through the engine, which writes a
// destination only while holding it `&mut`.
unsafe impl Send for Mapping {}
// SAFETY: shared references allow only reading the source of a copy (and the length).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset` (`MAP_SHARED`), readable, and writable too if
    /// `writable` (the file must then be open for writing). `offset`, and for a hugetlb file
    /// `len`, must be multiples of the file's page size, as `mmap` requires.
    pub fn new(fd: impl AsFd, offset: u64, len: usize, writable: bool) -> Result<Mapping> {
        Mapping::map(fd, offset, len, writable, rustix::mm::MapFlags::empty())
    }

    /// [`new`](Self::new), with every page faulted in at once (`MAP_POPULATE`): far cheaper
    /// than a fault per page during a copy, when the whole mapping is going to be touched.
    pub fn populated(fd: impl AsFd, offset: u64, len: usize, writable: bool) -> Result<Mapping> {
        Mapping::map(fd, offset, len, writable, rustix::mm::MapFlags::POPULATE)
    }

    fn map(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        writable: bool,
        extra: rustix::mm::MapFlags,
    ) -> Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags};
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new mapping at an address the kernel chooses (null hint, no MAP_FIXED)
        // cannot replace any existing memory; the result is owned by the `Mapping` alone.
        let ptr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED | extra,
                fd,
                offset,
            )
        }
        .map_err(|source| Error::Map { len, source })?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Map {
            len,
            source: rustix::io::Errno::FAULT,
        })?;
        Ok(Mapping { ptr, len, writable })
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: `mmap` refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it can be copied into.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is exactly the mapping `new` made, which nothing else unmaps, and
        // no copy borrows `self` any more; nothing refers into it after this.
        // An error here would mean the range was not a mapping, which it is; nothing to do.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One batch of a copy, as a driver sees it: its units, their completion marks, and the
/// per-channel credits the driver reports.
///
/// The engine builds a batch over buffers it has borrowed for the batch, so the batch's units
/// are always inside them (see the module documentation for what makes that sound).
#[derive(Debug)]
pub struct Batch<'a> {
    src: *const u8,
    dst: *mut u8,
    units: &'a [Unit],
    marks: &'a [AtomicBool],
    credits: &'a mut Vec<ChannelStats>,
    info: BatchInfo,
    first_unit: u64,
    _mem: PhantomData<(&'a [u8], &'a mut [u8])>,
}

impl<'a> Batch<'a> {
    /// A batch of `units` from `src` to `dst`, with `marks` and `credits` as scratch space
    /// (cleared here). `first_unit` is the index of `units[0]` in the whole copy.
    pub(crate) fn new(
        buffers: &'a mut Buffers<'_>,
        units: &'a [Unit],
        marks: &'a mut Vec<AtomicBool>,
        credits: &'a mut Vec<ChannelStats>,
        info: BatchInfo,
        first_unit: u64,
    ) -> Result<Batch<'a>> {
        check_units(buffers.src_len, buffers.dst_len, units, info.unit_size)?;
        marks.clear();
        marks.resize_with(units.len(), AtomicBool::default);
        credits.clear();
        Ok(Batch {
            src: buffers.src,
            dst: buffers.dst,
            units,
            marks,
            credits,
            info,
            first_unit,
            _mem: PhantomData,
        })
    }

    /// What the policy was told about this batch.
    pub fn info(&self) -> &BatchInfo {
        &self.info
    }

    /// The batch's units, in destination order.
    pub fn units(&self) -> &[Unit] {
        self.units
    }

    /// The index of the batch's first unit in the whole copy (batches of one copy are
    /// numbered on from one another).
    pub fn first_unit(&self) -> u64 {
        self.first_unit
    }

    /// The end of the batch, as a position.
    pub fn end(&self) -> Pos {
        Pos::unit(self.units.len())
    }

    /// Marks unit `unit` as completely copied. Panics if there is no such unit.
    pub fn mark(&self, unit: usize) {
        self.marks[unit].store(true, Ordering::Relaxed);
    }

    /// Whether unit `unit` is marked as copied. Panics if there is no such unit.
    pub fn is_marked(&self, unit: usize) -> bool {
        self.marks[unit].load(Ordering::Relaxed)
    }

    /// Records that channel `channel` copied `units` units and `bytes` bytes of this batch.
    /// A unit split between channels counts for the channel that copied its first byte; its
    /// bytes count for the channel that copied them.
    pub fn credit(&mut self, channel: usize, units: u64, bytes: u64) {
        if self.credits.len() <= channel {
            self.credits.resize_with(channel + 1, ChannelStats::default);
        }
        let c = &mut self.credits[channel];
        c.units += units;
        c.bytes += bytes;
    }

    /// Normalizes a position: the end of a unit becomes the start of the next.
    fn normalize(&self, p: Pos) -> Option<Pos> {
        match self.units.get(p.unit) {
            Some(u) if p.offset < u.len => Some(p),
            Some(u) if p.offset == u.len => Some(Pos::unit(p.unit + 1)),
            None if p.unit == self.units.len() && p.offset == 0 => Some(p),
            _ => None,
        }
    }

    /// Splits the batch at `cuts` into `cuts.len() + 1` runs: the first from the start of the
    /// batch to `cuts[0]`, the last from the last cut to the end. Runs may be empty. Fails
    /// unless the cuts are in order and inside the batch.
    pub fn split(&mut self, cuts: &[Pos]) -> Result<Vec<Run<'_>>> {
        let mut runs = Vec::with_capacity(cuts.len() + 1);
        let mut start = Pos::unit(0);
        for &cut in cuts.iter().chain(std::iter::once(&self.end())) {
            let end = self.normalize(cut).ok_or(Error::BadSplit(cut))?;
            if end < start {
                return Err(Error::BadSplit(cut));
            }
            runs.push(Run {
                src: self.src,
                dst: self.dst,
                units: self.units.as_ptr(),
                n_units: self.units.len(),
                marks: self.marks.as_ptr(),
                start,
                end,
                _batch: PhantomData,
            });
            start = end;
        }
        Ok(runs)
    }

    /// Copies the whole batch on this thread, contiguous units as one stream. Returns the
    /// bytes copied.
    pub(crate) fn copy_all(&mut self) -> u64 {
        let end = self.end();
        match self.split(&[]) {
            Ok(runs) => runs
                .first()
                .and_then(|run| run.copy(Pos::unit(0), end).ok())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Copies unit `unit` on this thread. Panics if there is no such unit.
    pub(crate) fn copy_unit(&mut self, unit: usize) {
        let u = self.units[unit];
        // SAFETY: `check_units` (in `new`) put the unit inside both buffers, which the batch
        // borrows for 'a, the source shared and the destination exclusively; `&mut self`
        // means no run of this batch exists, so nothing else writes these bytes now, and
        // source and destination are different buffers.
        unsafe { stream_copy(self.dst.add(u.dst), self.src.add(u.src), u.len) };
    }
}

/// A contiguous stretch of a batch, from [`start`](Run::start) to [`end`](Run::end) in unit
/// order, that one thread copies. `Send`, not `Sync`.
#[derive(Debug)]
pub struct Run<'b> {
    src: *const u8,
    dst: *mut u8,
    units: *const Unit,
    n_units: usize,
    marks: *const AtomicBool,
    start: Pos,
    end: Pos,
    _batch: PhantomData<&'b mut ()>,
}

// SAFETY: a run writes only the destination bytes of its own stretch of the batch, which no
// other run of the same split covers (units' destinations do not overlap and the cuts are in
// order), and reads the source, the units and the marks, which nothing writes while the runs
// exist (the marks are atomics). Its pointers stay valid for 'b, which the batch's mutable
// borrow, or `scope` for a lent run, guarantees. It is not `Sync`, so one run is never copied
// by two threads at once.
unsafe impl Send for Run<'_> {}

impl Run<'_> {
    /// Where the run starts.
    pub fn start(&self) -> Pos {
        self.start
    }

    /// Where the run ends (exclusive).
    pub fn end(&self) -> Pos {
        self.end
    }

    /// Whether the run covers nothing.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The batch's units (all of them; the run covers some).
    pub fn units(&self) -> &[Unit] {
        // SAFETY: the pointer and length come from the batch's `&[Unit]`, which lives for 'b
        // (or, for a lent run, until `scope` returns, which it does not while the `Lent`
        // lending this run, and so this borrow of it, is alive). Nothing writes units.
        unsafe { std::slice::from_raw_parts(self.units, self.n_units) }
    }

    /// The run's part of every unit it covers, in order.
    pub fn pieces(&self) -> impl Iterator<Item = Piece> + '_ {
        let units = self.units();
        let last = if self.end.offset > 0 {
            self.end.unit + 1
        } else {
            self.end.unit
        };
        (self.start.unit..last).map(move |unit| {
            let len = units[unit].len;
            let start = if unit == self.start.unit {
                self.start.offset
            } else {
                0
            };
            let end = if unit == self.end.unit {
                self.end.offset
            } else {
                len
            };
            Piece {
                unit,
                start,
                end,
                whole: start == 0 && end == len,
            }
        })
    }

    /// Bytes in the run.
    pub fn bytes(&self) -> u64 {
        self.pieces().map(|p| p.len() as u64).sum()
    }

    /// Marks unit `unit` as completely copied. Panics if there is no such unit.
    pub fn mark(&self, unit: usize) {
        assert!(unit < self.n_units, "unit {unit} of {}", self.n_units);
        // SAFETY: in bounds (just checked) of the batch's marks, which live as long as its
        // units (see `units`); they are atomics, so sharing them between runs is sound.
        unsafe { &*self.marks.add(unit) }.store(true, Ordering::Relaxed);
    }

    fn normalize(&self, p: Pos) -> Option<Pos> {
        let units = self.units();
        match units.get(p.unit) {
            Some(u) if p.offset < u.len => Some(p),
            Some(u) if p.offset == u.len => Some(Pos::unit(p.unit + 1)),
            None if p.unit == units.len() && p.offset == 0 => Some(p),
            _ => None,
        }
    }

    /// Copies the part of the run from `from` to `to`, contiguous units as one stream, and
    /// returns the bytes copied. Fails, copying nothing, unless
    /// `start <= from <= to <= end`. Marks nothing.
    pub fn copy(&self, from: Pos, to: Pos) -> Result<u64> {
        let outside = || Error::OutsideRun { from, to };
        let from_n = self.normalize(from).ok_or_else(outside)?;
        let to_n = self.normalize(to).ok_or_else(outside)?;
        if from_n < self.start || to_n > self.end || from_n > to_n {
            return Err(outside());
        }
        let units = self.units();
        let mut total = 0u64;
        // The stream being gathered: source offset, destination offset, length.
        let mut stream: Option<(usize, usize, usize)> = None;
        let last = if to_n.offset > 0 {
            to_n.unit + 1
        } else {
            to_n.unit
        };
        for (unit, &u) in units.iter().enumerate().take(last).skip(from_n.unit) {
            let a = if unit == from_n.unit {
                from_n.offset
            } else {
                0
            };
            let b = if unit == to_n.unit {
                to_n.offset
            } else {
                u.len
            };
            let (s, d, l) = (u.src + a, u.dst + a, b - a);
            stream = match stream {
                Some((ss, sd, sl)) if ss + sl == s && sd + sl == d => Some((ss, sd, sl + l)),
                Some(prev) => {
                    self.copy_raw(prev);
                    Some((s, d, l))
                }
                None => Some((s, d, l)),
            };
            total += l as u64;
        }
        if let Some(s) = stream {
            self.copy_raw(s);
        }
        Ok(total)
    }

    /// Copies `len` bytes from source offset `s` to destination offset `d`, a stretch of this
    /// run's units (the caller, `copy`, derived it from positions inside the run).
    fn copy_raw(&self, (s, d, len): (usize, usize, usize)) {
        // SAFETY: `copy` built the stretch from units between two positions it checked are
        // inside this run, and `check_units` put every unit inside both buffers, so the
        // pointers are valid for `len` bytes for as long as the run may be used (see `units`).
        // The destination bytes belong to this run alone and the run is not `Sync`, so no
        // other thread reads or writes them meanwhile; nothing writes the source; source and
        // destination are different buffers.
        unsafe { stream_copy(self.dst.add(d), self.src.add(s), len) };
    }
}

/// Counts the runs lent out of a [`scope`] and not yet returned.
#[derive(Debug, Default)]
struct Latch {
    pending: Mutex<usize>,
    returned: Condvar,
}

impl Latch {
    /// Waits until nothing is pending or `timeout` passes (for ever if `None`); returns whether
    /// nothing is pending.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while *pending > 0 {
            match deadline {
                None => {
                    pending = self
                        .returned
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    pending = self
                        .returned
                        .wait_timeout(pending, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        true
    }
}

/// Waits for every lent run when dropped: at the end of [`scope`], and when it unwinds.
struct WaitAll<'l>(&'l Latch);

impl Drop for WaitAll<'_> {
    fn drop(&mut self) {
        self.0.wait(None);
    }
}

/// Lends runs of lifetime `'a` to other threads for the duration of one call to [`scope`].
/// Invariant in `'a`, so a run of a shorter lifetime cannot be lent.
#[derive(Debug)]
pub(crate) struct Scope<'a> {
    latch: Arc<Latch>,
    _invariant: PhantomData<&'a mut &'a ()>,
}

/// Calls `f` with a [`Scope`], then waits until every run lent through it has been returned
/// (its [`Lent`] dropped), also if `f` panics.
pub(crate) fn scope<'a, R>(f: impl FnOnce(&Scope<'a>) -> R) -> R {
    let scope = Scope {
        latch: Arc::new(Latch::default()),
        _invariant: PhantomData,
    };
    let _wait = WaitAll(&scope.latch);
    f(&scope)
}

impl<'a> Scope<'a> {
    /// Lends `run` out: the returned [`Lent`] can go to any thread, and `scope` will not return
    /// until it is dropped.
    pub(crate) fn lend(&self, run: Run<'a>) -> Lent {
        *self
            .latch
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        Lent {
            // The lifetime is erased here and held by `scope` instead (see `Lent`).
            run: Run {
                src: run.src,
                dst: run.dst,
                units: run.units,
                n_units: run.n_units,
                marks: run.marks,
                start: run.start,
                end: run.end,
                _batch: PhantomData,
            },
            latch: Arc::clone(&self.latch),
        }
    }

    /// Waits up to `timeout` for every lent run to be returned; returns whether they all are.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        self.latch.wait(Some(timeout))
    }
}

/// A run lent to another thread by a [`Scope`]. Its borrow of the batch is kept alive by
/// `scope`, which does not return before this is dropped; so the run is only reachable through
/// [`Lent::run`], for no longer than the `Lent` itself.
#[derive(Debug)]
pub(crate) struct Lent {
    run: Run<'static>,
    latch: Arc<Latch>,
}

impl Lent {
    /// The run lent.
    pub(crate) fn run(&self) -> &Run<'_> {
        &self.run
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut pending = self
            .latch
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *pending -= 1;
        if *pending == 0 {
            self.latch.returned.notify_all();
        }
    }
}

/// Copies below this many bytes use plain stores.
const STREAM_MIN: usize = 256;

/// Copies `len` bytes from `src` to `dst`, with streaming stores where the CPU has them, and
/// fences them.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes, the two ranges must not
/// overlap, and no other thread may access the destination range, or write the source range,
/// during the call.
unsafe fn stream_copy(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= STREAM_MIN {
        // SAFETY: the caller's guarantees are `x86::stream_copy`'s.
        unsafe { x86::stream_copy(dst, src, len) };
        return;
    }
    // SAFETY: the caller guarantees both ranges valid and not overlapping.
    unsafe { ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128, _mm256_loadu_si256,
        _mm256_stream_si256,
    };
    use std::ptr;

    /// One cache line.
    const LINE: usize = 64;

    /// Copies `len` bytes (at least one line's worth) with streaming stores: the head up to
    /// the destination's first line boundary and the tail after its last with plain stores,
    /// whole lines between with non-temporal ones (AVX2 if the CPU has it, else SSE2, which
    /// every x86_64 has), then a store fence.
    ///
    /// # Safety
    ///
    /// As `super::stream_copy`, and `len >= LINE`.
    pub(super) unsafe fn stream_copy(dst: *mut u8, src: *const u8, len: usize) {
        let head = ((LINE - dst.addr() % LINE) % LINE).min(len);
        let lines = (len - head) / LINE;
        let tail = len - head - lines * LINE;
        // SAFETY: `head <= len`, so both head ranges lie in the caller's valid ranges.
        unsafe { ptr::copy_nonoverlapping(src, dst, head) };
        // SAFETY: the lines start `head` bytes in, where `dst` is line-aligned, and end at most
        // `len` bytes in; the caller guarantees those ranges. AVX2 is checked first.
        unsafe {
            if std::arch::is_x86_feature_detected!("avx2") {
                lines_avx2(dst.add(head), src.add(head), lines);
            } else {
                lines_sse2(dst.add(head), src.add(head), lines);
            }
        }
        let done = head + lines * LINE;
        // SAFETY: `done + tail == len`, so the tail lies in the caller's valid ranges.
        unsafe { ptr::copy_nonoverlapping(src.add(done), dst.add(done), tail) };
        // SAFETY: `sfence` has no preconditions (SSE, which every x86_64 has).
        unsafe { _mm_sfence() };
    }

    /// Copies `lines` cache lines with 32-byte streaming stores.
    ///
    /// # Safety
    ///
    /// The CPU has AVX2; `dst` is 64-byte aligned; `src` is valid for reads and `dst` for
    /// writes of `lines * 64` bytes, not overlapping, not accessed by another thread meanwhile.
    #[target_feature(enable = "avx2")]
    unsafe fn lines_avx2(dst: *mut u8, src: *const u8, lines: usize) {
        for i in 0..lines {
            // SAFETY: line `i` is inside both ranges; the stores are 32-byte aligned because
            // `dst` is 64-byte aligned; the loads are unaligned loads.
            unsafe {
                let s = src.add(i * LINE);
                let d = dst.add(i * LINE);
                let a = _mm256_loadu_si256(s.cast::<__m256i>());
                let b = _mm256_loadu_si256(s.add(32).cast::<__m256i>());
                _mm256_stream_si256(d.cast::<__m256i>(), a);
                _mm256_stream_si256(d.add(32).cast::<__m256i>(), b);
            }
        }
    }

    /// Copies `lines` cache lines with 16-byte streaming stores.
    ///
    /// # Safety
    ///
    /// `dst` is 64-byte aligned; `src` is valid for reads and `dst` for writes of
    /// `lines * 64` bytes, not overlapping, not accessed by another thread meanwhile.
    unsafe fn lines_sse2(dst: *mut u8, src: *const u8, lines: usize) {
        for i in 0..lines {
            // SAFETY: line `i` is inside both ranges; the stores are 16-byte aligned because
            // `dst` is 64-byte aligned; the loads are unaligned loads. SSE2 is part of x86_64.
            unsafe {
                let s = src.add(i * LINE);
                let d = dst.add(i * LINE);
                let a = _mm_loadu_si128(s.cast::<__m128i>());
                let b = _mm_loadu_si128(s.add(16).cast::<__m128i>());
                let c = _mm_loadu_si128(s.add(32).cast::<__m128i>());
                let e = _mm_loadu_si128(s.add(48).cast::<__m128i>());
                _mm_stream_si128(d.cast::<__m128i>(), a);
                _mm_stream_si128(d.add(16).cast::<__m128i>(), b);
                _mm_stream_si128(d.add(32).cast::<__m128i>(), c);
                _mm_stream_si128(d.add(48).cast::<__m128i>(), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Reason;
    use crate::unit::UnitSize;

    fn info(units: &[Unit]) -> BatchInfo {
        BatchInfo {
            bytes: units.iter().map(|u| u.len as u64).sum(),
            units: units.len(),
            unit_size: UnitSize::Base4K,
            reason: Reason::Other,
        }
    }

    #[test]
    fn stream_copy_every_length_and_alignment() {
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 63, 64, 65, 255, 256, 257, 1000, 2048] {
            for s_off in [0, 1, 31, 64] {
                for d_off in [0, 5, 32, 63] {
                    let mut dst = vec![0u8; 4096];
                    // SAFETY: both ranges are inside their vectors, which do not overlap.
                    unsafe {
                        stream_copy(dst.as_mut_ptr().add(d_off), src.as_ptr().add(s_off), len)
                    };
                    assert_eq!(&dst[d_off..d_off + len], &src[s_off..s_off + len]);
                    assert!(dst[..d_off].iter().all(|&b| b == 0));
                    assert!(dst[d_off + len..].iter().all(|&b| b == 0));
                }
            }
        }
    }

    #[test]
    fn split_checks_cuts_and_runs_copy_inside_only() {
        let src: Vec<u8> = (0..64u8).collect();
        let mut dst = vec![0u8; 64];
        let units: Vec<Unit> = (0..4)
            .map(|i| Unit {
                src: i * 16,
                dst: i * 16,
                len: 16,
            })
            .collect();
        let (mut marks, mut credits) = (Vec::new(), Vec::new());
        let mut buffers = Buffers::slices(&src, &mut dst);
        let mut batch = Batch::new(
            &mut buffers,
            &units,
            &mut marks,
            &mut credits,
            info(&units),
            0,
        )
        .unwrap();
        assert!(matches!(
            batch.split(&[Pos::unit(2), Pos::unit(1)]),
            Err(Error::BadSplit(_))
        ));
        assert!(matches!(
            batch.split(&[Pos {
                unit: 1,
                offset: 17
            }]),
            Err(Error::BadSplit(_))
        ));
        assert!(matches!(
            batch.split(&[Pos::unit(5)]),
            Err(Error::BadSplit(_))
        ));
        {
            let runs = batch
                .split(&[Pos { unit: 1, offset: 8 }, Pos::unit(3)])
                .unwrap();
            assert_eq!(runs.len(), 3);
            assert_eq!(runs[0].bytes(), 24);
            assert_eq!(runs[1].bytes(), 24);
            assert_eq!(runs[2].bytes(), 16);
            let pieces: Vec<Piece> = runs[1].pieces().collect();
            assert_eq!(pieces.len(), 2);
            assert_eq!((pieces[0].unit, pieces[0].start, pieces[0].end), (1, 8, 16));
            assert!(!pieces[0].whole && pieces[1].whole);
            // Outside the run: refused.
            assert!(runs[1].copy(Pos::unit(0), Pos::unit(2)).is_err());
            assert!(runs[1].copy(Pos::unit(2), Pos::unit(4)).is_err());
            assert_eq!(runs[1].copy(runs[1].start(), runs[1].end()).unwrap(), 24);
            runs[1].mark(2);
        }
        assert_eq!(&dst[24..48], &src[24..48]);
        assert!(dst[..24].iter().all(|&b| b == 0));
        assert!(dst[48..].iter().all(|&b| b == 0));
    }

    #[test]
    fn scope_waits_for_every_lent_run() {
        let src = vec![7u8; 1 << 16];
        let mut dst = vec![0u8; 1 << 16];
        let units = [Unit {
            src: 0,
            dst: 0,
            len: 1 << 16,
        }];
        let (mut marks, mut credits) = (Vec::new(), Vec::new());
        let mut i = info(&units);
        i.unit_size = UnitSize::Huge2M;
        let mut buffers = Buffers::slices(&src, &mut dst);
        let mut batch = Batch::new(&mut buffers, &units, &mut marks, &mut credits, i, 0).unwrap();
        let mut runs = batch
            .split(&[Pos {
                unit: 0,
                offset: 4096,
            }])
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Lent>();
        let worker = std::thread::spawn(move || {
            for lent in rx {
                std::thread::sleep(Duration::from_millis(20));
                let run = lent.run();
                run.copy(run.start(), run.end()).unwrap();
            }
        });
        scope(|s| {
            for run in runs.drain(..) {
                tx.send(s.lend(run)).unwrap();
            }
            assert!(!s.wait(Duration::from_millis(1)));
        });
        // `scope` returned: both runs were copied and returned.
        drop(tx);
        worker.join().unwrap();
        assert!(dst.iter().all(|&b| b == 7));
    }
}
