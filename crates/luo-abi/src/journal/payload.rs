//! The payloads of the record types this version defines: how each is decoded, encoded and
//! checked. Adding a type means one arm in each function here (see the module doc of
//! [`journal`](super)).

use alloc::vec::Vec;

use zerocopy::byteorder::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::{
    Checkpoint, CheckpointPayload, ConnClose, ConnClosePayload, ConnOpen, ConnOpenPayload, Entry,
    PayloadError, RecordType, ReplySent, ReplySentPayload, RequestApplied, RequestAppliedHead,
};
use crate::daemon::{CONN_DETACHED, MAX_ERRNO, MAX_REPLY_ARG, MAX_REPLY_FDS};

/// Bytes in a [`RequestAppliedHead`].
const APPLIED_HEAD_LEN: usize = core::mem::size_of::<RequestAppliedHead>();

/// A fixed-size payload, exactly.
fn fixed<T: FromBytes>(payload: &[u8]) -> Result<T, PayloadError> {
    T::read_from_bytes(payload).map_err(|_| PayloadError::Length {
        expected: core::mem::size_of::<T>() as u64,
        found: payload.len() as u64,
    })
}

/// The entry in a payload of type `rtype`, checked; `None` for a type this version does not
/// define.
pub(super) fn decode(rtype: RecordType, payload: &[u8]) -> Option<Result<Entry<'_>, PayloadError>> {
    let entry = match rtype {
        RecordType::CONN_OPEN => fixed::<ConnOpenPayload>(payload).map(|p| {
            Entry::ConnOpen(ConnOpen {
                fd: p.fd.get(),
                kind: p.kind.get(),
                pid: p.pid.get(),
                uid: p.uid.get(),
                gid: p.gid.get(),
            })
        }),
        RecordType::CONN_CLOSE => fixed::<ConnClosePayload>(payload)
            .map(|p| Entry::ConnClose(ConnClose { fd: p.fd.get() })),
        RecordType::REQUEST_APPLIED => request_applied(payload),
        RecordType::REPLY_SENT => fixed::<ReplySentPayload>(payload).map(|p| {
            Entry::ReplySent(ReplySent {
                conn_fd: p.conn_fd.get(),
                request_id: p.request_id.get(),
            })
        }),
        RecordType::CHECKPOINT => fixed::<CheckpointPayload>(payload).map(|p| {
            Entry::Checkpoint(Checkpoint {
                covers: p.covers.get(),
            })
        }),
        _ => return None,
    };
    Some(entry.and_then(|e| check(&e).map(|()| e)))
}

fn request_applied(payload: &[u8]) -> Result<Entry<'_>, PayloadError> {
    let (head, rest) =
        RequestAppliedHead::ref_from_prefix(payload).map_err(|_| PayloadError::Length {
            expected: APPLIED_HEAD_LEN as u64,
            found: payload.len() as u64,
        })?;
    let arg_len = usize::from(head.arg_len.get());
    let fd_count = usize::from(head.fd_count.get());
    if arg_len > MAX_REPLY_ARG {
        return Err(PayloadError::ArgTooLong {
            len: arg_len as u64,
        });
    }
    if fd_count > MAX_REPLY_FDS {
        return Err(PayloadError::TooManyFds {
            count: fd_count as u64,
        });
    }
    let expected = APPLIED_HEAD_LEN + arg_len + 4 * fd_count;
    let length = PayloadError::Length {
        expected: expected as u64,
        found: payload.len() as u64,
    };
    let (arg, fds) = rest.split_at_checked(arg_len).ok_or(length)?;
    let fds = <[I32]>::ref_from_bytes(fds).map_err(|_| length)?;
    if fds.len() != fd_count {
        return Err(length);
    }
    Ok(Entry::RequestApplied(RequestApplied {
        conn_fd: head.conn_fd.get(),
        request_id: head.request_id.get(),
        errno: head.errno.get(),
        arg,
        fds: fds.iter().map(|f| f.get()).collect(),
    }))
}

/// Appends the payload of `entry` (already [`check`]ed) to `out`.
pub(super) fn encode(entry: &Entry<'_>, out: &mut Vec<u8>) {
    match entry {
        Entry::ConnOpen(c) => out.extend_from_slice(
            ConnOpenPayload {
                fd: I32::new(c.fd),
                kind: U32::new(c.kind),
                pid: I32::new(c.pid),
                uid: U32::new(c.uid),
                gid: U32::new(c.gid),
            }
            .as_bytes(),
        ),
        Entry::ConnClose(c) => {
            out.extend_from_slice(ConnClosePayload { fd: I32::new(c.fd) }.as_bytes())
        }
        Entry::RequestApplied(r) => {
            // Bounded by `check`: at most 4080 bytes and 253 descriptors.
            let head = RequestAppliedHead {
                request_id: U64::new(r.request_id),
                conn_fd: I32::new(r.conn_fd),
                errno: I32::new(r.errno),
                arg_len: U16::new(r.arg.len() as u16),
                fd_count: U16::new(r.fds.len() as u16),
            };
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(r.arg);
            for &fd in &r.fds {
                out.extend_from_slice(I32::new(fd).as_bytes());
            }
        }
        Entry::ReplySent(r) => out.extend_from_slice(
            ReplySentPayload {
                request_id: U64::new(r.request_id),
                conn_fd: I32::new(r.conn_fd),
            }
            .as_bytes(),
        ),
        Entry::Checkpoint(c) => out.extend_from_slice(
            CheckpointPayload {
                covers: U64::new(c.covers),
            }
            .as_bytes(),
        ),
        Entry::Skipped { payload, .. } => out.extend_from_slice(payload),
    }
}

/// The rules of each entry's fields (a checkpoint's place in the sequence is checked by
/// [`checkpoint`]).
pub(super) fn check(entry: &Entry<'_>) -> Result<(), PayloadError> {
    let fd = |fd: i32| {
        if fd < 0 {
            Err(PayloadError::Fd { fd })
        } else {
            Ok(())
        }
    };
    match entry {
        Entry::ConnOpen(c) => {
            fd(c.fd)?;
            if c.kind > CONN_DETACHED {
                return Err(PayloadError::ConnKind { kind: c.kind });
            }
            if c.pid < 0 {
                return Err(PayloadError::Pid { pid: c.pid });
            }
        }
        Entry::ConnClose(c) => fd(c.fd)?,
        Entry::RequestApplied(r) => {
            fd(r.conn_fd)?;
            if !(0..=MAX_ERRNO).contains(&r.errno) {
                return Err(PayloadError::Errno { errno: r.errno });
            }
            if r.arg.len() > MAX_REPLY_ARG {
                return Err(PayloadError::ArgTooLong {
                    len: r.arg.len() as u64,
                });
            }
            if r.fds.len() > MAX_REPLY_FDS {
                return Err(PayloadError::TooManyFds {
                    count: r.fds.len() as u64,
                });
            }
            let mut sorted = [0i32; MAX_REPLY_FDS];
            let sorted = sorted.get_mut(..r.fds.len()).unwrap_or_default();
            for (d, &s) in sorted.iter_mut().zip(&r.fds) {
                fd(s)?;
                *d = s;
            }
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(PayloadError::DuplicateFd { fd: w[0] });
            }
        }
        Entry::ReplySent(r) => fd(r.conn_fd)?,
        Entry::Checkpoint(_) | Entry::Skipped { .. } => {}
    }
    Ok(())
}

/// A checkpoint in record `seq` covering `covers`, after `covered` was covered: strictly
/// before its own record, and not behind.
pub(super) fn checkpoint(covers: u64, seq: u64, covered: u64) -> Result<(), PayloadError> {
    if covers >= seq {
        return Err(PayloadError::CheckpointAhead { covers });
    }
    if covers < covered {
        return Err(PayloadError::CheckpointBehind { covers, covered });
    }
    Ok(())
}
