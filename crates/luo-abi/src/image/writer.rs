//! [`ImageWriter`]: entries streamed straight into the image buffer as they arrive.
//!
//! The buffer starts with [`FDT_RESERVE`] zero bytes for the root index, then the payload in
//! its final form. Each session's file blocks and records are appended as soon as the session
//! is added; the session entry waits in a block of at most 682 that is appended when full. Every
//! offset written is therefore final, and `finish` only appends the FLBs, the fd table and the
//! part data, writes the FDT into the reserved space and computes the checksum. In the rare
//! case that the FDT does not fit (many parts), `finish` lays the image out again with a larger
//! reserve.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use zerocopy::byteorder::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::chain::{Chain, Entry};
use super::fdt::FdtWriter;
use super::rules;
use super::{
    BLOCK_HEADER_LEN, BLOCK_SIZE, BlockHeader, COMPATIBLE_LEN, FDS_COMPATIBLE, FLBS_COMPATIBLE,
    FdEntry, FileEntry, FileSpec, FlbEntry, IMAGE_COMPATIBLE, ImageError, ImageWriter,
    MAX_CHAIN_BLOCKS, MAX_IMAGE_LEN, NO_FD, PARTS_COMPATIBLE, SESSION_FINISHED,
    SESSIONS_COMPATIBLE, SessionEntry, SessionSpec, WRITER_MAX, blob, compatible_str,
};

/// Bytes reserved for the FDT at the start of the image: the FDT without parts takes about
/// 700 bytes (plus the writer string), each part about 100 more.
pub(crate) const FDT_RESERVE: usize = 4096;

/// A part waiting for [`ImageWriter::finish`]: its data is `part_data[off..off + len]`.
#[derive(Debug)]
pub(crate) struct PendingPart {
    compatible: String,
    off: usize,
    len: usize,
}

/// Appends `data` to `region` at an 8-aligned offset and returns that offset (0 for no data).
fn push_blob(region: &mut Vec<u8>, data: &[u8]) -> u64 {
    if data.is_empty() {
        return 0;
    }
    let off = region.len();
    region.extend_from_slice(data);
    region.resize(region.len().next_multiple_of(8), 0);
    off as u64
}

fn compatible_field(s: &str) -> [u8; COMPATIBLE_LEN] {
    let mut field = [0u8; COMPATIBLE_LEN];
    for (d, s) in field.iter_mut().zip(s.as_bytes()) {
        *d = *s;
    }
    field
}

/// Most entries a chain of `T` can hold.
fn chain_max<T: Entry>() -> u64 {
    MAX_CHAIN_BLOCKS * T::CAP
}

/// Appends `entries` as a chain of blocks starting at `out.len()`, fixing each entry with `fix`.
fn write_chain<T: Entry + IntoBytes + Immutable + Copy>(
    out: &mut Vec<u8>,
    entries: &[T],
    mut fix: impl FnMut(&mut T),
) {
    let cap = T::CAP as usize;
    let blocks = entries.len().div_ceil(cap);
    for (i, chunk) in entries.chunks(cap).enumerate() {
        let here = out.len() as u64;
        let next = if i + 1 == blocks {
            0
        } else {
            here + (BLOCK_HEADER_LEN + chunk.len() * T::SIZE) as u64
        };
        push_header(out, next, chunk.len() as u64);
        for e in chunk {
            let mut e = *e;
            fix(&mut e);
            out.extend_from_slice(e.as_bytes());
        }
    }
}

fn push_header(out: &mut Vec<u8>, next: u64, count: u64) {
    let header = BlockHeader {
        next: U64::new(next),
        count: U64::new(count),
    };
    out.extend_from_slice(header.as_bytes());
}

/// Rewrites the header of the block at `at` (which the writer itself appended).
fn set_header(out: &mut [u8], at: usize, next: u64, count: u64) {
    if let Some(h) = out
        .get_mut(at..at + BLOCK_HEADER_LEN)
        .and_then(|b| BlockHeader::mut_from_bytes(b).ok())
    {
        h.next = U64::new(next);
        h.count = U64::new(count);
    }
}

impl ImageWriter {
    pub(super) fn new_impl(generation: u64, writer: &str) -> Self {
        Self::with_reserve(generation, writer, FDT_RESERVE)
    }

    fn with_reserve(generation: u64, writer: &str, reserve: usize) -> Self {
        ImageWriter {
            generation,
            writer: String::from(writer),
            out: alloc::vec![0; reserve],
            reserve,
            pending: Vec::new(),
            session_count: 0,
            sessions_head: 0,
            last_session_block: None,
            tokens: Vec::new(),
            records: Vec::new(),
            claimed: Vec::new(),
            flbs: Vec::new(),
            flb_data: Vec::new(),
            parts: BTreeMap::new(),
            part_data: Vec::new(),
            fds: Vec::new(),
            fd_used: Vec::new(),
        }
    }

    pub(super) fn add_fd_impl(&mut self, fd: i32, mode_type: u32) -> u32 {
        let index = self.fds.len();
        self.fds.push(FdEntry {
            fd: I32::new(fd),
            mode_type: U32::new(mode_type),
        });
        if index / 64 >= self.fd_used.len() {
            self.fd_used.push(0);
        }
        // An index that does not fit makes the image larger than MAX_IMAGE_LEN: finish fails.
        u32::try_from(index).unwrap_or(NO_FD)
    }

    fn fd_is_used(&self, index: u32) -> bool {
        let i = index as usize;
        self.fd_used
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set_fd_used(&mut self, index: u32, used: bool) {
        let i = index as usize;
        if let Some(w) = self.fd_used.get_mut(i / 64) {
            if used {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    pub(super) fn add_session_impl<'f>(
        &mut self,
        spec: &SessionSpec<'_>,
        files: impl IntoIterator<Item = FileSpec<'f>>,
    ) -> Result<(), ImageError> {
        let session = self.session_count;
        if session >= chain_max::<SessionEntry>() {
            return Err(ImageError::TooManySessions);
        }
        if !rules::session_name_ok(spec.name) {
            return Err(ImageError::SessionName { session });
        }
        if !rules::session_flags_ok(spec.flags) {
            return Err(ImageError::SessionFlags {
                session,
                flags: spec.flags,
            });
        }
        let start = self.out.len();
        self.claimed.clear();
        let (files_head, files_count) = match self.push_files(session, spec, files) {
            Ok(chain) => chain,
            Err(e) => {
                self.out.truncate(start);
                for i in core::mem::take(&mut self.claimed) {
                    self.set_fd_used(i, false);
                }
                return Err(e);
            }
        };
        let mut name = [0u8; 64];
        for (d, s) in name.iter_mut().zip(spec.name) {
            *d = *s;
        }
        self.pending.push(SessionEntry {
            name,
            owner: U32::new(spec.owner),
            flags: U32::new(spec.flags),
            files_head: U64::new(files_head),
            files_count: U64::new(files_count),
            seq: U64::new(spec.seq),
        });
        self.session_count += 1;
        if self.pending.len() as u64 == SessionEntry::CAP {
            self.flush_sessions();
        }
        Ok(())
    }

    /// Appends the file chain and records of session `session` and returns the chain's head and
    /// count; on error the caller rolls back.
    fn push_files<'f>(
        &mut self,
        session: u64,
        spec: &SessionSpec<'_>,
        files: impl IntoIterator<Item = FileSpec<'f>>,
    ) -> Result<(u64, u64), ImageError> {
        let chain_start = self.out.len();
        self.tokens.clear();
        self.records.clear();
        let mut block: Option<usize> = None;
        let mut in_block = 0u64;
        let mut count = 0u64;
        for f in files {
            let file = count;
            if file >= chain_max::<FileEntry>() {
                return Err(ImageError::TooManyFiles { session });
            }
            if !rules::compatible_ok(f.compatible) {
                return Err(ImageError::FileCompatible { session, file });
            }
            if !rules::file_flags_ok(f.flags) {
                return Err(ImageError::FileFlags {
                    session,
                    file,
                    flags: f.flags,
                });
            }
            if !rules::status_ok(f.status, f.fd_index != NO_FD) {
                return Err(ImageError::FileStatus {
                    session,
                    file,
                    status: f.status,
                });
            }
            if f.open_fd_index != NO_FD && f.status != 1 {
                return Err(ImageError::OpenFd { session, file });
            }
            for fd_index in [f.fd_index, f.open_fd_index] {
                if fd_index == NO_FD {
                    continue;
                }
                if fd_index as usize >= self.fds.len() {
                    return Err(ImageError::FdIndex {
                        session,
                        file,
                        fd_index,
                    });
                }
                if self.fd_is_used(fd_index) {
                    return Err(ImageError::FdReused {
                        session,
                        file,
                        fd_index,
                    });
                }
                self.set_fd_used(fd_index, true);
                self.claimed.push(fd_index);
            }
            if block.is_none() || in_block == FileEntry::CAP {
                let here = self.out.len();
                if let Some(prev) = block {
                    set_header(&mut self.out, prev, here as u64, in_block);
                }
                push_header(&mut self.out, 0, 0);
                block = Some(here);
                in_block = 0;
            }
            // Relative to the records area for now; made absolute below.
            let record_off = push_blob(&mut self.records, f.record);
            let entry = FileEntry {
                compatible: compatible_field(f.compatible),
                token: U64::new(f.token),
                record_off: U64::new(record_off),
                record_len: U64::new(f.record.len() as u64),
                fd_index: U32::new(f.fd_index),
                status: I32::new(f.status),
                flags: U32::new(f.flags),
                open_fd_index: U32::new(f.open_fd_index),
            };
            self.out.extend_from_slice(entry.as_bytes());
            self.tokens.push(f.token);
            in_block += 1;
            count += 1;
            if self.out.len() + self.records.len() > MAX_IMAGE_LEN as usize {
                return Err(ImageError::TooLarge {
                    len: (self.out.len() + self.records.len()) as u64,
                });
            }
        }
        if let Some(b) = block {
            set_header(&mut self.out, b, 0, in_block);
        }
        if spec.flags & SESSION_FINISHED != 0 && count > 0 {
            return Err(ImageError::FinishedWithFiles { session });
        }
        if let Some(token) = rules::duplicate_in(&mut self.tokens) {
            return Err(ImageError::DuplicateToken { session, token });
        }
        // The records follow the chain: entry j sits after j / CAP + 1 block headers.
        if !self.records.is_empty() {
            let base = self.out.len() as u64;
            let cap = FileEntry::CAP as usize;
            for j in 0..count as usize {
                let at = chain_start + (j / cap + 1) * BLOCK_HEADER_LEN + j * FileEntry::SIZE;
                let entry = self
                    .out
                    .get_mut(at..at + FileEntry::SIZE)
                    .and_then(|b| FileEntry::mut_from_bytes(b).ok());
                if let Some(e) = entry
                    && e.record_len.get() > 0
                {
                    e.record_off = U64::new(e.record_off.get() + base);
                }
            }
            self.out.extend_from_slice(&self.records);
        }
        let head = if count > 0 { chain_start as u64 } else { 0 };
        Ok((head, count))
    }

    /// Appends the block of pending sessions and links the previous session block to it.
    fn flush_sessions(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let here = self.out.len();
        match self.last_session_block {
            Some(prev) => {
                let count = SessionEntry::CAP;
                set_header(&mut self.out, prev, here as u64, count);
            }
            None => self.sessions_head = here as u64,
        }
        push_header(&mut self.out, 0, self.pending.len() as u64);
        self.out.extend_from_slice(self.pending.as_bytes());
        self.last_session_block = Some(here);
        self.pending.clear();
    }

    pub(super) fn add_flb_impl(
        &mut self,
        compatible: &str,
        count: u64,
        flags: u32,
        data: &[u8],
    ) -> Result<(), ImageError> {
        let flb = self.flbs.len() as u64;
        if flb >= chain_max::<FlbEntry>() {
            return Err(ImageError::TooManyFlbs);
        }
        if !rules::compatible_ok(compatible) {
            return Err(ImageError::FlbCompatible { flb });
        }
        if !rules::flb_flags_ok(flags) {
            return Err(ImageError::FlbFlags { flb, flags });
        }
        let data_off = push_blob(&mut self.flb_data, data);
        self.flbs.push(FlbEntry {
            compatible: compatible_field(compatible),
            count: U64::new(count),
            data_off: U64::new(data_off),
            data_len: U64::new(data.len() as u64),
            flags: U32::new(flags),
            reserved: U32::new(0),
        });
        Ok(())
    }

    pub(super) fn add_part_impl(
        &mut self,
        name: &str,
        compatible: &str,
        data: &[u8],
    ) -> Result<(), ImageError> {
        if !rules::part_name_ok(name) {
            return Err(ImageError::PartName);
        }
        if !rules::compatible_ok(compatible) {
            return Err(ImageError::InvalidPartCompatible);
        }
        if self.parts.contains_key(name) {
            return Err(ImageError::DuplicatePart);
        }
        let off = self.part_data.len();
        self.part_data.extend_from_slice(data);
        self.parts.insert(
            String::from(name),
            PendingPart {
                compatible: String::from(compatible),
                off,
                len: data.len(),
            },
        );
        Ok(())
    }

    pub(super) fn finish_impl(self) -> Result<Vec<u8>, ImageError> {
        self.finish_with(true)
    }

    fn finish_with(mut self, may_relayout: bool) -> Result<Vec<u8>, ImageError> {
        if self.writer.len() > WRITER_MAX || self.writer.as_bytes().contains(&0) {
            return Err(ImageError::WriterVersion);
        }
        rules::check_fd_table(&self.fds)?;
        self.flush_sessions();
        let out = &self.out;
        let sessions =
            Chain::<SessionEntry>::new(out, self.sessions_head).map(|(off, e)| (off as u32, e));
        let get = |off: u32| {
            let off = off as usize;
            SessionEntry::ref_from_bytes(out.get(off..off + SessionEntry::SIZE)?).ok()
        };
        if let Some(session) = rules::duplicate_session(sessions, get) {
            return Err(ImageError::DuplicateSession { session });
        }
        if let Some(flb) = rules::duplicate_flb(self.flbs.iter()) {
            return Err(ImageError::DuplicateFlb { flb });
        }
        let too_large = |len: usize| ImageError::TooLarge { len: len as u64 };

        // FLB blocks and their data, the fd table, the parts' data (in tree order).
        let flbs_head = if self.flbs.is_empty() {
            0
        } else {
            self.out.len()
        };
        let blocks = self.flbs.len().div_ceil(FlbEntry::CAP as usize);
        let flb_data = flbs_head + blocks * BLOCK_HEADER_LEN + self.flbs.len() * FlbEntry::SIZE;
        write_chain(&mut self.out, &self.flbs, |e| {
            if e.data_len.get() > 0 {
                e.data_off = U64::new(e.data_off.get() + flb_data as u64);
            }
        });
        self.out.extend_from_slice(&self.flb_data);
        let fds_offset = if self.fds.is_empty() {
            0
        } else {
            self.out.len()
        };
        self.out.extend_from_slice(self.fds.as_bytes());
        let mut parts: Vec<(&String, &PendingPart)> = self.parts.iter().collect();
        parts.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        let mut part_offsets = Vec::with_capacity(parts.len());
        for (_, part) in &parts {
            let data = self
                .part_data
                .get(part.off..part.off + part.len)
                .unwrap_or_default();
            part_offsets.push(if data.is_empty() { 0 } else { self.out.len() });
            self.out.extend_from_slice(data);
            self.out.resize(self.out.len().next_multiple_of(8), 0);
        }
        let total = self.out.len();
        if total as u64 > MAX_IMAGE_LEN {
            return Err(too_large(total));
        }

        let (fdt, checksum_at) = self.build_fdt(&parts, &part_offsets, flbs_head, fds_offset);
        if fdt.len() > self.reserve {
            if !may_relayout {
                return Err(too_large(total));
            }
            drop(parts);
            return self.relayout(fdt.len().next_multiple_of(8));
        }
        let mut out = self.out;
        if let Some(dst) = out.get_mut(..fdt.len()) {
            dst.copy_from_slice(&fdt);
        }
        let crc = crc32fast::hash(&out);
        if let Some(dst) = out.get_mut(checksum_at..checksum_at + 4) {
            dst.copy_from_slice(&crc.to_be_bytes());
        }
        Ok(out)
    }

    /// The root index for the laid-out payload, and where its checksum goes.
    fn build_fdt(
        &self,
        parts: &[(&String, &PendingPart)],
        part_offsets: &[usize],
        flbs_head: usize,
        fds_offset: usize,
    ) -> (Vec<u8>, usize) {
        let mut w = FdtWriter::new();
        w.begin_node(b"");
        w.prop_str("compatible", IMAGE_COMPATIBLE);
        w.prop_str("writer", &self.writer);
        w.prop_u64("generation", self.generation);
        w.prop_u64("image-length", self.out.len() as u64);
        w.prop_u32("block-size", BLOCK_SIZE as u32);
        let checksum_at = w.prop_u32("checksum", 0);

        w.begin_node(b"sessions");
        w.prop_str("compatible", SESSIONS_COMPATIBLE);
        w.prop_u64("head", self.sessions_head);
        w.prop_u64("count", self.session_count);
        w.end_node();

        w.begin_node(b"flbs");
        w.prop_str("compatible", FLBS_COMPATIBLE);
        w.prop_u64("head", flbs_head as u64);
        w.prop_u64("count", self.flbs.len() as u64);
        w.end_node();

        w.begin_node(b"fds");
        w.prop_str("compatible", FDS_COMPATIBLE);
        w.prop_u64("offset", fds_offset as u64);
        w.prop_u64("count", self.fds.len() as u64);
        w.end_node();

        w.begin_node(b"parts");
        w.prop_str("compatible", PARTS_COMPATIBLE);
        let mut open: Vec<&str> = Vec::new();
        for ((name, part), &offset) in parts.iter().zip(part_offsets) {
            let comps: Vec<&str> = name.split('/').collect();
            let common = open.iter().zip(&comps).take_while(|(a, b)| a == b).count();
            while open.len() > common {
                open.pop();
                w.end_node();
            }
            for c in comps.get(common..).unwrap_or_default() {
                w.begin_node(c.as_bytes());
                open.push(c);
            }
            w.prop_str("compatible", &part.compatible);
            w.prop_u64("data-offset", offset as u64);
            w.prop_u64("data-length", part.len as u64);
        }
        for _ in open {
            w.end_node();
        }
        w.end_node(); // parts
        w.end_node(); // root
        (w.finish(), checksum_at)
    }

    /// Writes everything again behind a larger FDT reserve.
    fn relayout(self, reserve: usize) -> Result<Vec<u8>, ImageError> {
        let mut w = ImageWriter::with_reserve(self.generation, &self.writer, reserve);
        w.fd_used = alloc::vec![0; self.fd_used.len()];
        w.fds = self.fds;
        let out = &self.out;
        for (_, s) in Chain::<SessionEntry>::new(out, self.sessions_head) {
            let name_len = s.name.iter().position(|&b| b == 0).unwrap_or(s.name.len());
            let spec = SessionSpec {
                name: s.name.get(..name_len).unwrap_or_default(),
                owner: s.owner.get(),
                flags: s.flags.get(),
                seq: s.seq.get(),
            };
            let files = Chain::<FileEntry>::new(out, s.files_head.get()).map(|(_, e)| FileSpec {
                compatible: compatible_str(&e.compatible),
                token: e.token.get(),
                fd_index: e.fd_index.get(),
                open_fd_index: e.open_fd_index.get(),
                status: e.status.get(),
                flags: e.flags.get(),
                record: blob(out, e.record_off.get(), e.record_len.get()),
            });
            w.add_session(&spec, files)?;
        }
        w.flbs = self.flbs;
        w.flb_data = self.flb_data;
        w.parts = self.parts;
        w.part_data = self.part_data;
        w.finish_with(false)
    }
}
