//! Support for the image fuzz target (`fuzz/fuzz_targets/image.rs`) and for tests that build
//! hostile images. Hidden from the documentation: not part of the contract.

use alloc::vec::Vec;

use super::fdt::{Fdt, Token};
use super::reader::checksum_of;
use super::{COMPATIBLE_MAX, Image, ImageError, SESSION_NAME_MAX};

/// Rewrites the root's `image-length` to `bytes.len()` and its `checksum` to match, so that a
/// tampered image reaches the checks behind the checksum.
///
/// Fails if the FDT cannot be walked or lacks either property.
pub fn reseal(bytes: &mut [u8]) -> Result<(), ImageError> {
    let (length_at, checksum_at) = {
        let fdt = Fdt::parse(bytes)?;
        let mut depth = 0;
        let mut length_at = None;
        let mut checksum_at = None;
        for token in fdt.tokens() {
            match token? {
                Token::Begin { depth: d, .. } => depth = d,
                Token::End { depth: d } => depth = d - 1,
                Token::Prop {
                    name, value_offset, ..
                } if depth == 1 => match name {
                    b"image-length" => length_at = Some(value_offset),
                    b"checksum" => checksum_at = Some(value_offset),
                    _ => {}
                },
                Token::Prop { .. } => {}
            }
        }
        let missing = |property| ImageError::MissingProperty { node: 0, property };
        (
            length_at.ok_or(missing("image-length"))?,
            checksum_at.ok_or(missing("checksum"))?,
        )
    };
    let len = (bytes.len() as u64).to_be_bytes();
    if let Some(dst) = bytes.get_mut(length_at..length_at + 8) {
        dst.copy_from_slice(&len);
    }
    let crc = checksum_of(bytes, checksum_at).to_be_bytes();
    if let Some(dst) = bytes.get_mut(checksum_at..checksum_at + 4) {
        dst.copy_from_slice(&crc);
    }
    Ok(())
}

/// The image offset of the value of property `name` of the node at `path` below the root
/// (`&[]` for the root itself, `&["parts", "handlers", "memfd-v1"]` for a part), for tests that
/// tamper with the FDT.
pub fn property_offset(bytes: &[u8], path: &[&str], name: &str) -> Option<usize> {
    let fdt = Fdt::parse(bytes).ok()?;
    let mut stack: Vec<&[u8]> = Vec::new();
    for token in fdt.tokens() {
        match token.ok()? {
            Token::Begin { name, depth, .. } => {
                stack.truncate(depth - 1);
                stack.push(name);
            }
            Token::End { depth } => stack.truncate(depth - 1),
            Token::Prop {
                name: prop,
                value_offset,
                ..
            } => {
                let here = stack.get(1..).unwrap_or_default();
                if prop == name.as_bytes()
                    && here.len() == path.len()
                    && here.iter().zip(path).all(|(a, b)| *a == b.as_bytes())
                {
                    return Some(value_offset);
                }
            }
        }
    }
    None
}

/// Parses `data` and, if it is accepted, reads everything through every accessor, checking
/// that what they return agrees with what the image declares. Then does the same with a copy
/// resealed by [`reseal`], so that mutated inputs get past the checksum. Returns whether `data`
/// itself was accepted.
///
/// # Panics
///
/// When an accepted image's accessors disagree with its validation: that is the bug a fuzzer
/// looks for.
pub fn fuzz_one(data: &[u8]) -> bool {
    let accepted = exercise(data);
    let mut copy: Vec<u8> = data.to_vec();
    if reseal(&mut copy).is_ok() {
        exercise(&copy);
    }
    accepted
}

fn exercise(bytes: &[u8]) -> bool {
    let Ok(image) = Image::parse(bytes) else {
        return false;
    };
    let _ = (image.generation(), image.writer(), image.as_bytes().len());
    let mut sessions = 0u64;
    for s in image.sessions() {
        sessions += 1;
        let name = s.name();
        assert!(!name.is_empty() && name.len() <= SESSION_NAME_MAX && !name.contains(&0));
        let _ = (s.owner(), s.flags(), s.seq(), s.is_incoming(), s.entry());
        let mut files = 0u64;
        for f in s.files() {
            files += 1;
            assert!(!f.compatible.is_empty() && f.compatible.len() <= COMPATIBLE_MAX);
            for i in [f.fd_index, f.open_fd_index].into_iter().flatten() {
                assert!((i as usize) < image.fds().len());
            }
            assert!(f.open_fd_index.is_none() || f.status == 1);
            assert!(f.open_fd_index.is_none() || f.open_fd_index != f.fd_index);
            let sum = f.record.iter().fold(0u8, |a, &b| a ^ b);
            core::hint::black_box((f.token, f.status, f.flags, sum));
        }
        assert_eq!(files, s.file_count());
    }
    assert_eq!(sessions, image.session_count());
    let mut flbs = 0u64;
    for flb in image.flbs() {
        flbs += 1;
        assert!(!flb.compatible.is_empty() && flb.compatible.len() <= COMPATIBLE_MAX);
        core::hint::black_box((flb.count, flb.flags, flb.data.len()));
    }
    assert_eq!(flbs, image.flb_count());
    for fd in image.fds() {
        assert!(fd.fd.get() >= 0);
    }
    // Each lookup walks the FDT: check a bounded number, so a many-part input stays fast.
    for (name, part) in image.parts().take(64) {
        let found = image.part(&name);
        assert!(found.is_some_and(|p| p.compatible == part.compatible && p.data == part.data));
    }
    assert!(image.part("no/such/part").is_none());
    true
}
