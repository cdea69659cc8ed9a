//! The journal: what changed since the last checkpoint image, so that a server that dies at
//! any instant is rebuilt exactly (see `docs/format.md`, "The journal", and `docs/protocol.md`,
//! "Exactly once").
//!
//! Every request that changes something appends, before its reply is sent, one batch of
//! records in one `pwrite` to a memfd that outlives the server (the holder shares the
//! server's descriptor table, see [`crate::keeper`]): the new records of the sessions, files
//! and FLBs the request changed (the engine says which, [`luo_core::Changes`]), the
//! connections it opened or closed, and [`Delta::Applied`]: the request's id and its reply.
//! Records are in the vocabulary of the handover image, so a successor applies them to the
//! last checkpoint image and restores from the result with the ordinary restore path
//! ([`crate::recover`]).
//!
//! A frame is `type u16 | zero u16 | len u32 | seq u64 | payload | crc32 u32` (the CRC covers
//! the header and the payload), little-endian. `seq` grows by one per record across the
//! server's lifetime; a checkpoint image says from which `seq` on the journal applies to it.
//! A frame cut short or whose CRC is wrong ends the journal: the server died while writing
//! it, before the reply that depended on it was sent.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, bail, ensure};
use luo_core::{FlbRecord, SessionRecord};

/// Most bytes one record's payload may have.
pub const MAX_PAYLOAD: usize = 1 << 20;

const T_SESSION_PUT: u16 = 1;
const T_SESSION_DEL: u16 = 2;
const T_FILE_PUT: u16 = 3;
const T_FILE_DEL: u16 = 4;
const T_FLBS: u16 = 5;
const T_CONN_PUT: u16 = 6;
const T_CONN_DEL: u16 = 7;
const T_APPLIED: u16 = 8;

/// A file's record with the numbers of its descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRec {
    pub compatible: String,
    pub token: u64,
    pub fd: i32,
    pub mode: u32,
    /// The retrieved open file, -1 if none.
    pub open_fd: i32,
    pub open_mode: u32,
    pub status: i32,
    pub flags: u32,
    pub record: Vec<u8>,
}

/// One connection, by its descriptor number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRec {
    pub fd: i32,
    /// [`crate::conn::Kind::code`].
    pub kind: u32,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The session of a session connection (its creation sequence number), else `u64::MAX`.
    pub session: u64,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// A session's record is now this (new, or changed).
    SessionPut(SessionRecord),
    /// The session is gone, with its files.
    SessionDel { seq: u64 },
    /// A file of session `seq` is now this (new: appended to the session's order).
    FilePut { seq: u64, file: FileRec },
    /// The file is gone.
    FileDel { seq: u64, token: u64 },
    /// Every FLB record is now this list.
    Flbs(Vec<FlbRecord>),
    /// A connection is open with this record (new, or its kind changed).
    ConnPut(ConnRec),
    /// The connection is closed.
    ConnDel { fd: i32 },
    /// The request `id` of the connection on descriptor `conn` was applied, and this is its
    /// reply (its descriptors stay open until the request is consumed).
    Applied {
        conn: i32,
        id: u64,
        errno: i32,
        arg: Vec<u8>,
        fds: Vec<i32>,
    },
}

/// Appends to a journal memfd, one batch per `pwrite`.
#[derive(Debug)]
pub struct Writer {
    fd: OwnedFd,
    len: u64,
    next_seq: u64,
    buf: Vec<u8>,
}

impl Writer {
    /// A writer appending to `fd` (emptied), numbering records from `next_seq`.
    pub fn new(fd: OwnedFd, next_seq: u64) -> anyhow::Result<Writer> {
        rustix::fs::ftruncate(&fd, 0).context("Cannot empty the journal")?;
        Ok(Writer {
            fd,
            len: 0,
            next_seq,
            buf: Vec::with_capacity(4096),
        })
    }

    /// The journal memfd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing waits to be written.
    pub fn is_pending_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Adds `delta` to the batch being built.
    pub fn push(&mut self, delta: &Delta) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 16]);
        let kind = encode(delta, &mut self.buf);
        let len = (self.buf.len() - start - 16) as u32;
        self.buf[start..start + 2].copy_from_slice(&kind.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 8..start + 16].copy_from_slice(&self.next_seq.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.next_seq += 1;
    }

    /// Writes the batch: once this returns, the changes survive the server.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let mut done = 0;
        while done < self.buf.len() {
            let n = rustix::io::pwrite(&self.fd, &self.buf[done..], self.len + done as u64)
                .context("Cannot write the journal")?;
            done += n;
        }
        self.len += done as u64;
        self.buf.clear();
        Ok(())
    }

    /// Empties the journal after a checkpoint: the image covers everything before
    /// [`next_seq`](Self::next_seq).
    pub fn reset(&mut self) -> anyhow::Result<()> {
        rustix::fs::ftruncate(&self.fd, 0).context("Cannot empty the journal")?;
        self.len = 0;
        Ok(())
    }
}

/// Reads every whole record of the journal in `fd`, in order, with its sequence number.
pub fn read_all(fd: impl AsFd) -> anyhow::Result<Vec<(u64, Delta)>> {
    let size = rustix::fs::fstat(&fd)?.st_size as u64;
    let mut bytes = vec![0u8; size as usize];
    let mut done = 0;
    while done < bytes.len() {
        let n = rustix::io::pread(&fd, &mut bytes[done..], done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    bytes.truncate(done);
    parse(&bytes)
}

/// The records of a journal's bytes. A torn last frame ends it; a record that is whole but
/// malformed, or out of sequence, is an error.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Vec<(u64, Delta)>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut last_seq: Option<u64> = None;
    while bytes.len() - at >= 20 {
        let h = &bytes[at..at + 16];
        let kind = u16::from_le_bytes([h[0], h[1]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        if len > MAX_PAYLOAD || bytes.len() - at < 16 + len + 4 {
            break;
        }
        let end = at + 16 + len;
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap_or_default());
        if crc32fast::hash(&bytes[at..end]) != crc {
            break;
        }
        if let Some(last) = last_seq {
            ensure!(
                seq == last + 1,
                "journal record {seq} follows {last}: records are missing"
            );
        }
        let delta = decode(kind, &bytes[at + 16..end])
            .with_context(|| format!("journal record {seq} (type {kind})"))?;
        out.push((seq, delta));
        last_seq = Some(seq);
        at = end + 4;
    }
    Ok(out)
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_i32(b: &mut Vec<u8>, v: i32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}

fn encode(delta: &Delta, b: &mut Vec<u8>) -> u16 {
    match delta {
        Delta::SessionPut(s) => {
            put_u64(b, s.seq);
            put_u32(b, s.owner);
            put_u32(b, s.flags);
            put_bytes(b, &s.name);
            T_SESSION_PUT
        }
        Delta::SessionDel { seq } => {
            put_u64(b, *seq);
            T_SESSION_DEL
        }
        Delta::FilePut { seq, file } => {
            put_u64(b, *seq);
            put_u64(b, file.token);
            put_i32(b, file.fd);
            put_u32(b, file.mode);
            put_i32(b, file.open_fd);
            put_u32(b, file.open_mode);
            put_i32(b, file.status);
            put_u32(b, file.flags);
            put_bytes(b, file.compatible.as_bytes());
            put_bytes(b, &file.record);
            T_FILE_PUT
        }
        Delta::FileDel { seq, token } => {
            put_u64(b, *seq);
            put_u64(b, *token);
            T_FILE_DEL
        }
        Delta::Flbs(flbs) => {
            put_u32(b, flbs.len() as u32);
            for f in flbs {
                put_bytes(b, f.compatible.as_bytes());
                put_u64(b, f.count);
                put_u32(b, f.flags);
                put_bytes(b, &f.data);
            }
            T_FLBS
        }
        Delta::ConnPut(c) => {
            put_i32(b, c.fd);
            put_u32(b, c.kind);
            put_i32(b, c.pid);
            put_u32(b, c.uid);
            put_u32(b, c.gid);
            put_u64(b, c.session);
            T_CONN_PUT
        }
        Delta::ConnDel { fd } => {
            put_i32(b, *fd);
            T_CONN_DEL
        }
        Delta::Applied {
            conn,
            id,
            errno,
            arg,
            fds,
        } => {
            put_i32(b, *conn);
            put_u64(b, *id);
            put_i32(b, *errno);
            put_bytes(b, arg);
            put_u32(b, fds.len() as u32);
            for &fd in fds {
                put_i32(b, fd);
            }
            T_APPLIED
        }
    }
}

/// A bounds-checked reader of one payload.
struct Payload<'a> {
    b: &'a [u8],
}

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        ensure!(self.b.len() >= n, "record cut short");
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn bytes(&mut self) -> anyhow::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> anyhow::Result<String> {
        Ok(std::str::from_utf8(self.bytes()?)
            .context("text is not UTF-8")?
            .to_owned())
    }
    fn end(&self) -> anyhow::Result<()> {
        ensure!(self.b.is_empty(), "{} bytes after the record", self.b.len());
        Ok(())
    }
}

fn decode(kind: u16, b: &[u8]) -> anyhow::Result<Delta> {
    let mut p = Payload { b };
    let d = match kind {
        T_SESSION_PUT => Delta::SessionPut(SessionRecord {
            seq: p.u64()?,
            owner: p.u32()?,
            flags: p.u32()?,
            name: p.bytes()?.to_vec(),
        }),
        T_SESSION_DEL => Delta::SessionDel { seq: p.u64()? },
        T_FILE_PUT => {
            let seq = p.u64()?;
            let token = p.u64()?;
            let fd = p.i32()?;
            let mode = p.u32()?;
            let open_fd = p.i32()?;
            let open_mode = p.u32()?;
            let status = p.i32()?;
            let flags = p.u32()?;
            let compatible = p.text()?;
            let record = p.bytes()?.to_vec();
            Delta::FilePut {
                seq,
                file: FileRec {
                    compatible,
                    token,
                    fd,
                    mode,
                    open_fd,
                    open_mode,
                    status,
                    flags,
                    record,
                },
            }
        }
        T_FILE_DEL => Delta::FileDel {
            seq: p.u64()?,
            token: p.u64()?,
        },
        T_FLBS => {
            let n = p.u32()? as usize;
            ensure!(n <= 1024, "{n} FLB records");
            let mut flbs = Vec::with_capacity(n);
            for _ in 0..n {
                flbs.push(FlbRecord {
                    compatible: p.text()?,
                    count: p.u64()?,
                    flags: p.u32()?,
                    data: p.bytes()?.to_vec(),
                });
            }
            Delta::Flbs(flbs)
        }
        T_CONN_PUT => Delta::ConnPut(ConnRec {
            fd: p.i32()?,
            kind: p.u32()?,
            pid: p.i32()?,
            uid: p.u32()?,
            gid: p.u32()?,
            session: p.u64()?,
        }),
        T_CONN_DEL => Delta::ConnDel { fd: p.i32()? },
        T_APPLIED => {
            let conn = p.i32()?;
            let id = p.u64()?;
            let errno = p.i32()?;
            let arg = p.bytes()?.to_vec();
            let n = p.u32()? as usize;
            ensure!(n <= luo_abi::wire::MAX_FDS, "{n} descriptors in a reply");
            let mut fds = Vec::with_capacity(n);
            for _ in 0..n {
                fds.push(p.i32()?);
            }
            Delta::Applied {
                conn,
                id,
                errno,
                arg,
                fds,
            }
        }
        other => bail!("unknown record type {other}"),
    };
    p.end()?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Vec<Delta> {
        vec![
            Delta::SessionPut(SessionRecord {
                seq: 3,
                owner: 1000,
                flags: 0,
                name: b"vm".to_vec(),
            }),
            Delta::FilePut {
                seq: 3,
                file: FileRec {
                    compatible: "memfd-v1".into(),
                    token: 7,
                    fd: 12,
                    mode: 0o100000,
                    open_fd: -1,
                    open_mode: 0,
                    status: 0,
                    flags: 2,
                    record: vec![1, 2, 3],
                },
            },
            Delta::Flbs(vec![FlbRecord {
                compatible: "pci".into(),
                count: 2,
                flags: 0,
                data: vec![9],
            }]),
            Delta::ConnPut(ConnRec {
                fd: 20,
                kind: 2,
                pid: 5,
                uid: 1000,
                gid: 1000,
                session: 3,
            }),
            Delta::Applied {
                conn: 20,
                id: 44,
                errno: 0,
                arg: vec![0; 16],
                fds: vec![21],
            },
            Delta::FileDel { seq: 3, token: 7 },
            Delta::ConnDel { fd: 20 },
            Delta::SessionDel { seq: 3 },
        ]
    }

    fn written(deltas: &[Delta]) -> Vec<u8> {
        let fd = rustix::fs::memfd_create("journal-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut w = Writer::new(fd, 100).unwrap();
        for d in deltas {
            w.push(d);
        }
        w.commit().unwrap();
        let got = read_all(w.fd()).unwrap();
        assert_eq!(got.len(), deltas.len());
        let mut bytes = vec![0u8; w.len() as usize];
        rustix::io::pread(w.fd(), &mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let deltas = sample();
        let bytes = written(&deltas);
        let got = parse(&bytes).unwrap();
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (100..100 + deltas.len() as u64).collect::<Vec<_>>());
        let back: Vec<Delta> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(back, deltas);
    }

    #[test]
    fn a_torn_tail_ends_the_journal_and_keeps_what_came_before() {
        let deltas = sample();
        let bytes = written(&deltas);
        // Every cut: the whole records before the cut, never an error.
        for cut in 0..bytes.len() {
            let got = parse(&bytes[..cut]).unwrap();
            assert!(got.len() < deltas.len());
            for (i, (_, d)) in got.iter().enumerate() {
                assert_eq!(d, &deltas[i]);
            }
        }
        // A flipped bit in the last record: it is dropped, the others stay.
        let mut torn = bytes.clone();
        let last = torn.len() - 6;
        torn[last] ^= 0x40;
        assert_eq!(parse(&torn).unwrap().len(), deltas.len() - 1);
    }

    #[test]
    fn a_gap_in_the_sequence_is_refused() {
        let fd = rustix::fs::memfd_create("journal-gap", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut w = Writer::new(fd, 1).unwrap();
        w.push(&Delta::ConnDel { fd: 4 });
        w.next_seq += 1;
        w.push(&Delta::ConnDel { fd: 5 });
        w.commit().unwrap();
        let e = read_all(w.fd()).unwrap_err();
        assert!(format!("{e:#}").contains("records are missing"), "{e:#}");
    }
}
