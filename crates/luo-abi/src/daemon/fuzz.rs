//! Support for the daemon part's fuzz target (`fuzz/fuzz_targets/daemon.rs`) and for tests that
//! build hostile parts. Hidden from the documentation: not part of the contract.

use alloc::collections::BTreeSet;

use zerocopy::FromBytes;
use zerocopy::byteorder::little_endian::U64;

use super::{CONN_NAME_MAX, DaemonError, DaemonHeader, DaemonPart, MAX_REPLY_ARG, MAX_REPLY_FDS};

/// Rewrites the header's `length` to `bytes.len()`, so that a truncated or extended part reaches
/// the checks behind the length. Does nothing to an input shorter than the header.
pub fn reseal(bytes: &mut [u8]) {
    let len = bytes.len() as u64;
    if let Ok((header, _)) = DaemonHeader::mut_from_prefix(bytes) {
        header.length = U64::new(len);
    }
}

/// Parses `data` against a huge and a small fd table and, when it is accepted, checks what the
/// parse returned against the rules and against the writer: writing the parsed part again gives
/// `data` back byte for byte (the encoding is canonical). Then does the same with a copy
/// resealed by [`reseal`]. Returns whether `data` itself was accepted with a huge fd table.
///
/// # Panics
///
/// When an accepted part breaks a rule or does not write back to itself: that is the bug a
/// fuzzer looks for.
pub fn fuzz_one(data: &[u8]) -> bool {
    let accepted = exercise(data);
    let mut copy = data.to_vec();
    reseal(&mut copy);
    if copy != data {
        exercise(&copy);
    }
    accepted
}

fn exercise(bytes: &[u8]) -> bool {
    let _ = DaemonPart::parse(bytes, 16).map(|p| check(bytes, &p, 16));
    let Ok(part) = DaemonPart::parse(bytes, usize::MAX) else {
        return false;
    };
    check(bytes, &part, usize::MAX);
    // The smallest fd table that holds every index the part uses accepts it; one slot less
    // refuses it, naming an index.
    let top = part.fd_uses().map(|(i, _)| i).max();
    if let Some(top) = top {
        let needed = top as usize + 1;
        assert!(DaemonPart::parse(bytes, needed).is_ok_and(|p| p == part));
        let refused = DaemonPart::parse(bytes, needed - 1);
        assert!(matches!(refused, Err(DaemonError::FdIndex { index, .. }) if index == top));
    }
    true
}

fn check(bytes: &[u8], part: &DaemonPart<'_>, fd_count: usize) {
    let mut seen = BTreeSet::new();
    for (index, _) in part.fd_uses() {
        assert!((index as usize) < fd_count);
        assert!(seen.insert(index), "fd slot {index} used twice");
    }
    let s = &part.settings;
    assert!(!s.socket.is_empty() && !s.binary.is_empty());
    assert!(!s.socket.contains('\0') && !s.binary.contains('\0'));
    for conn in &part.conns {
        assert!(conn.pid >= 0);
        if let super::ConnKind::Session { name, .. } = conn.kind {
            assert!(!name.is_empty() && name.len() <= CONN_NAME_MAX && !name.contains(&0));
        }
        for reply in &conn.outbox {
            assert!(reply.arg.len() <= MAX_REPLY_ARG && reply.fds.len() <= MAX_REPLY_FDS);
        }
    }
    let again = part.to_bytes();
    assert!(
        again.as_deref() == Ok(bytes),
        "an accepted part does not write back to itself: {again:?}"
    );
}
