//! The rules an image's contents obey, shared by the writer (which refuses input that breaks
//! them) and the reader (which refuses an image that breaks them), so that every image the
//! writer makes is one the reader accepts.

use alloc::vec::Vec;

use super::{
    COMPATIBLE_MAX, FILE_FLAGS_ALL, FLB_FLAGS_ALL, FLB_INCOMING, FLB_RETRIEVED, FdEntry, FlbEntry,
    ImageError, MAX_ERRNO, PART_NAME_DEPTH, PART_NAME_MAX, SESSION_FINISHED, SESSION_FLAGS_ALL,
    SESSION_INCOMING, SESSION_NAME_MAX, SESSION_RETRIEVED, SessionEntry,
};

/// Defined bits only, and retrieved/finished only on an incoming session.
pub(crate) fn session_flags_ok(flags: u32) -> bool {
    flags & !SESSION_FLAGS_ALL == 0
        && (flags & (SESSION_RETRIEVED | SESSION_FINISHED) == 0 || flags & SESSION_INCOMING != 0)
}

/// Defined bits only.
pub(crate) fn file_flags_ok(flags: u32) -> bool {
    flags & !FILE_FLAGS_ALL == 0
}

/// Defined bits only, and retrieved only on an incoming FLB.
pub(crate) fn flb_flags_ok(flags: u32) -> bool {
    flags & !FLB_FLAGS_ALL == 0 && (flags & FLB_RETRIEVED == 0 || flags & FLB_INCOMING != 0)
}

/// 0 (never retrieved), 1 (retrieved: needs a descriptor) or `-MAX_ERRNO..=-1`.
pub(crate) fn status_ok(status: i32, has_fd: bool) -> bool {
    match status {
        0 => true,
        1 => has_fd,
        s => (-MAX_ERRNO..=-1).contains(&s),
    }
}

/// One of the seven `S_IFMT` file types, or 0: an anonymous inode (eventfd, epoll, timerfd,
/// KVM and other `anon_inode` descriptors have no file type bits).
pub(crate) fn fd_type_ok(mode_type: u32) -> bool {
    matches!(
        mode_type,
        0 | 0o140000 | 0o120000 | 0o100000 | 0o060000 | 0o040000 | 0o020000 | 0o010000
    )
}

/// A session name as the writer takes it: 1..=63 bytes, no NUL.
pub(crate) fn session_name_ok(name: &[u8]) -> bool {
    (1..=SESSION_NAME_MAX).contains(&name.len()) && !name.contains(&0)
}

/// A compatible as the writer takes it: 1..=47 bytes, no NUL.
pub(crate) fn compatible_ok(compatible: &str) -> bool {
    (1..=COMPATIBLE_MAX).contains(&compatible.len()) && !compatible.as_bytes().contains(&0)
}

/// A NUL-terminated, zero-padded field holding 1..=`max` non-NUL bytes: the length, if valid.
pub(crate) fn padded_len(field: &[u8], max: usize) -> Option<usize> {
    let n = field.iter().position(|&b| b == 0)?;
    if n == 0 || n > max {
        return None;
    }
    let pad = field.get(n..)?;
    pad.iter().all(|&b| b == 0).then_some(n)
}

/// A compatible field as the reader takes it: 1..=47 bytes of UTF-8, NUL-terminated, padded.
pub(crate) fn compatible_field_ok(field: &[u8]) -> bool {
    padded_len(field, COMPATIBLE_MAX)
        .and_then(|n| field.get(..n))
        .is_some_and(|s| core::str::from_utf8(s).is_ok())
}

/// One component of a part name (one node under `/parts`).
pub(crate) fn part_component_ok(c: &[u8]) -> bool {
    !c.is_empty()
        && c.len() <= PART_NAME_MAX
        && c.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b',' | b'.' | b'_' | b'+' | b'-'))
}

/// A full part name: 1..=63 bytes, at most six valid `/`-separated components.
pub(crate) fn part_name_ok(name: &str) -> bool {
    (1..=PART_NAME_MAX).contains(&name.len())
        && name.split('/').count() <= PART_NAME_DEPTH
        && name.split('/').all(|c| part_component_ok(c.as_bytes()))
}

/// What makes a session unique: owner, direction and name (the name field is zero-padded, so
/// comparing the whole field compares the names).
fn session_key(e: &SessionEntry) -> (u32, bool, &[u8; 64]) {
    (
        e.owner.get(),
        e.flags.get() & SESSION_INCOMING != 0,
        &e.name,
    )
}

fn session_hash(e: &SessionEntry) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let (owner, incoming, name) = session_key(e);
    let mut h = (u64::from(owner) << 1 | u64::from(incoming)).wrapping_mul(K);
    let (words, _) = name.as_chunks::<8>();
    for w in words {
        h = (h ^ u64::from_le_bytes(*w)).wrapping_mul(K).rotate_left(29);
    }
    (h >> 32) as u32 ^ h as u32
}

/// Sorts `v` stably by a 32-bit key: four counting passes of 8 bits (a comparison sort for
/// short inputs). Linear whatever the keys, so a crafted input cannot slow it down.
pub(crate) fn radix_sort<T: Copy>(v: &mut Vec<T>, key: impl Fn(&T) -> u32) {
    if v.len() <= 64 {
        v.sort_by_key(&key);
        return;
    }
    let mut from = core::mem::take(v);
    let mut to = from.clone();
    for shift in [0, 8, 16, 24] {
        let digit = |x: &T| ((key(x) >> shift) & 0xff) as usize;
        let mut starts = [0usize; 256];
        for x in &from {
            if let Some(c) = starts.get_mut(digit(x)) {
                *c += 1;
            }
        }
        if starts.contains(&from.len()) {
            continue; // every key has the same digit here
        }
        let mut sum = 0;
        for c in starts.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for x in &from {
            if let Some(pos) = starts.get_mut(digit(x)) {
                if let Some(slot) = to.get_mut(*pos) {
                    *slot = *x;
                }
                *pos += 1;
            }
        }
        core::mem::swap(&mut from, &mut to);
    }
    *v = from;
}

/// The index of the first session (in image order) that repeats the (owner, direction, name) of
/// an earlier one.
///
/// `entries` yields each session with a locator that `get` turns back into the entry. Sessions
/// are sorted by a 32-bit hash (radix sort), then only sessions with equal hashes are compared
/// in full (sorted, so even a flood of colliding hashes costs O(n log n)).
pub(crate) fn duplicate_session<'a>(
    entries: impl Iterator<Item = (u32, &'a SessionEntry)>,
    get: impl Fn(u32) -> Option<&'a SessionEntry>,
) -> Option<u64> {
    // (hash, index, locator)
    let mut keys: Vec<(u32, u32, u32)> = entries
        .enumerate()
        .map(|(i, (loc, e))| (session_hash(e), i as u32, loc))
        .collect();
    radix_sort(&mut keys, |k| k.0);
    let mut first: Option<u64> = None;
    let mut rest = keys.as_mut_slice();
    while let Some((k, _)) = rest.split_first() {
        let hash = k.0;
        let run_len = rest.iter().position(|k| k.0 != hash).unwrap_or(rest.len());
        let (run, tail) = rest.split_at_mut(run_len);
        if run.len() > 1 {
            let key = |k: &(u32, u32, u32)| get(k.2).map(session_key);
            run.sort_unstable_by(|a, b| key(a).cmp(&key(b)).then(a.1.cmp(&b.1)));
            for pair in run.windows(2) {
                if let [a, b] = pair
                    && key(a) == key(b)
                {
                    let later = u64::from(b.1);
                    first = Some(first.map_or(later, |f| f.min(later)));
                }
            }
        }
        rest = tail;
    }
    first
}

/// The index of the first FLB (in image order) that repeats the (direction, compatible) of an
/// earlier one.
pub(crate) fn duplicate_flb<'a>(entries: impl Iterator<Item = &'a FlbEntry>) -> Option<u64> {
    let mut keys: Vec<(bool, &[u8; 48], u64)> = entries
        .enumerate()
        .map(|(i, e)| (e.flags.get() & FLB_INCOMING != 0, &e.compatible, i as u64))
        .collect();
    keys.sort_unstable();
    keys.windows(2)
        .filter_map(|w| match w {
            [a, b] if (a.0, a.1) == (b.0, b.1) => Some(b.2),
            _ => None,
        })
        .min()
}

/// Checks the fd table: descriptor numbers non-negative and unique, types valid.
pub(crate) fn check_fd_table(fds: &[FdEntry]) -> Result<(), ImageError> {
    for (i, e) in fds.iter().enumerate() {
        let index = i as u64;
        if e.fd.get() < 0 {
            return Err(ImageError::FdNumber {
                index,
                fd: e.fd.get(),
            });
        }
        if !fd_type_ok(e.mode_type.get()) {
            return Err(ImageError::FdType {
                index,
                mode_type: e.mode_type.get(),
            });
        }
    }
    let mut numbers: Vec<(i32, u32)> = fds
        .iter()
        .enumerate()
        .map(|(i, e)| (e.fd.get(), i as u32))
        .collect();
    // Descriptor numbers are non-negative here; a stable sort keeps indexes in order.
    radix_sort(&mut numbers, |n| n.0 as u32);
    let dup = numbers
        .windows(2)
        .filter_map(|w| match w {
            [a, b] if a.0 == b.0 => Some((u64::from(b.1), b.0)),
            _ => None,
        })
        .min();
    match dup {
        Some((index, fd)) => Err(ImageError::DuplicateFd { index, fd }),
        None => Ok(()),
    }
}

/// Whether the tokens (in file order) repeat one, and which. Costs one pass when the tokens are
/// strictly increasing (the usual case), a sort otherwise.
pub(crate) fn duplicate_token(
    tokens: impl Iterator<Item = u64> + Clone,
    scratch: &mut Vec<u64>,
) -> Option<u64> {
    let mut last: Option<u64> = None;
    let mut sorted = true;
    for t in tokens.clone() {
        if last.is_some_and(|l| l >= t) {
            sorted = false;
            break;
        }
        last = Some(t);
    }
    if sorted {
        return None;
    }
    scratch.clear();
    scratch.extend(tokens);
    scratch.sort_unstable();
    scratch.windows(2).find_map(|w| match w {
        [a, b] if a == b => Some(*a),
        _ => None,
    })
}

/// Whether `tokens` repeats one, and which; sorts `tokens` unless it is strictly increasing.
pub(crate) fn duplicate_in(tokens: &mut [u64]) -> Option<u64> {
    if tokens.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
        return None;
    }
    tokens.sort_unstable();
    tokens.windows(2).find_map(|w| match w {
        [a, b] if a == b => Some(*a),
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::format;
    use zerocopy::FromZeros;

    #[test]
    fn radix_sort_is_a_stable_sort() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for n in [0, 1, 63, 64, 65, 1000, 70_000] {
            let v: Vec<(u32, usize)> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Few distinct keys, so stability shows.
                    ((x as u32 % 5000).wrapping_mul(0x0101_0101), i)
                })
                .collect();
            let mut a = v.clone();
            radix_sort(&mut a, |e| e.0);
            let mut b = v;
            b.sort_by_key(|e| e.0);
            assert_eq!(a, b);
        }
    }

    fn entry(name: &[u8], owner: u32, flags: u32) -> SessionEntry {
        let mut e = SessionEntry::new_zeroed();
        e.name[..name.len()].copy_from_slice(name);
        e.owner.set(owner);
        e.flags.set(flags);
        e
    }

    #[test]
    fn duplicate_session_finds_the_first_repeat() {
        let mut v: Vec<SessionEntry> = (0..1000u32)
            .map(|i| entry(format!("s{i}").as_bytes(), i % 3, 0))
            .collect();
        let find = |v: &[SessionEntry]| {
            let it = v.iter().enumerate().map(|(i, e)| (i as u32, e));
            duplicate_session(it, |i| v.get(i as usize))
        };
        assert_eq!(find(&v), None);
        v[700] = entry(b"s10", 1, 0);
        v[900] = entry(b"s10", 1, 0);
        assert_eq!(find(&v), Some(700));
        v[800] = entry(b"s5", 2, 0);
        assert_eq!(find(&v), Some(700));
        v[700] = entry(b"s10", 1, SESSION_INCOMING);
        assert_eq!(find(&v), Some(800));
    }
}
