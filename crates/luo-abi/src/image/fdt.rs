//! A minimal flattened device tree: a writer for the image's root index and a reader that treats
//! its input as hostile.
//!
//! The blob is standard dtb version 17 (devicetree specification, chapter 5), which is what
//! `dtc -I dtb -O dts` prints:
//!
//! ```text
//!  0        40             56                      56+S            56+S+T
//!  +--------+--------------+-----------------------+---------------+
//!  | header | rsvmap: one  | structure block (S)   | strings (T)   |
//!  | 40 B   | empty entry  | tokens, 4-aligned     | NUL-terminated|
//!  +--------+--------------+-----------------------+---------------+
//! ```
//!
//! Header fields and tokens are big-endian `u32`s. The reader bounds everything: every length
//! and offset is checked against the blob, names are searched for their NUL only within
//! [`MAX_NAME`] bytes, nodes nest at most [`MAX_DEPTH`] deep, and every token advances the
//! cursor, so a walk is linear in the size of the structure block.

use alloc::vec::Vec;

use super::ImageError;

/// `magic`.
pub(crate) const MAGIC: u32 = 0xd00d_feed;
/// `version` written and required.
pub(crate) const VERSION: u32 = 17;
/// `last_comp_version` written and required.
pub(crate) const LAST_COMP_VERSION: u32 = 16;
/// Bytes in the header.
pub(crate) const HEADER_LEN: usize = 40;
/// Offset of the memory reservation map, right after the header.
const RSVMAP_OFF: usize = HEADER_LEN;
/// One reservation map entry (`address`, `size`, both `u64`).
const RSVMAP_ENTRY: usize = 16;
/// Offset of the structure block in the blobs this writer makes.
const STRUCT_OFF: usize = RSVMAP_OFF + RSVMAP_ENTRY;

const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;

/// Deepest node nesting accepted, the root counting as 1.
pub(crate) const MAX_DEPTH: usize = 8;
/// Longest node or property name, without the NUL.
pub(crate) const MAX_NAME: usize = 63;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds a dtb. Names and values are taken as given; the caller keeps them valid.
#[derive(Debug, Default)]
pub(crate) struct FdtWriter {
    structure: Vec<u8>,
    strings: Vec<u8>,
    names: Vec<(&'static str, u32)>,
}

impl FdtWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn token(&mut self, token: u32) {
        self.structure.extend_from_slice(&token.to_be_bytes());
    }

    fn pad(&mut self) {
        let len = align4(self.structure.len());
        self.structure.resize(len, 0);
    }

    /// Opens a node. The root's name is empty.
    pub(crate) fn begin_node(&mut self, name: &[u8]) {
        self.token(TOKEN_BEGIN_NODE);
        self.structure.extend_from_slice(name);
        self.structure.push(0);
        self.pad();
    }

    /// Closes the innermost open node.
    pub(crate) fn end_node(&mut self) {
        self.token(TOKEN_END_NODE);
    }

    fn name_offset(&mut self, name: &'static str) -> u32 {
        if let Some(&(_, off)) = self.names.iter().find(|(n, _)| *n == name) {
            return off;
        }
        // The strings block stays far below 4 GiB: it holds a handful of fixed names.
        let off = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.names.push((name, off));
        off
    }

    /// Adds a property to the innermost open node and returns the offset of its value in the
    /// finished blob.
    pub(crate) fn prop(&mut self, name: &'static str, value: &[u8]) -> usize {
        let nameoff = self.name_offset(name);
        self.token(TOKEN_PROP);
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.structure.extend_from_slice(&len.to_be_bytes());
        self.structure.extend_from_slice(&nameoff.to_be_bytes());
        let at = STRUCT_OFF + self.structure.len();
        self.structure.extend_from_slice(value);
        self.pad();
        at
    }

    /// A big-endian `u32` property.
    pub(crate) fn prop_u32(&mut self, name: &'static str, value: u32) -> usize {
        self.prop(name, &value.to_be_bytes())
    }

    /// A big-endian `u64` property.
    pub(crate) fn prop_u64(&mut self, name: &'static str, value: u64) -> usize {
        self.prop(name, &value.to_be_bytes())
    }

    /// A string property (the NUL is added).
    pub(crate) fn prop_str(&mut self, name: &'static str, value: &str) -> usize {
        let nameoff = self.name_offset(name);
        self.token(TOKEN_PROP);
        let len = u32::try_from(value.len() + 1).unwrap_or(u32::MAX);
        self.structure.extend_from_slice(&len.to_be_bytes());
        self.structure.extend_from_slice(&nameoff.to_be_bytes());
        let at = STRUCT_OFF + self.structure.len();
        self.structure.extend_from_slice(value.as_bytes());
        self.structure.push(0);
        self.pad();
        at
    }

    /// Ends the structure block and returns the blob.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.token(TOKEN_END);
        let size_struct = self.structure.len();
        let off_strings = STRUCT_OFF + size_struct;
        let total = off_strings + self.strings.len();
        let mut out = Vec::with_capacity(total);
        let be = |v: usize| u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&be(total));
        out.extend_from_slice(&be(STRUCT_OFF));
        out.extend_from_slice(&be(off_strings));
        out.extend_from_slice(&be(RSVMAP_OFF));
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&LAST_COMP_VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // boot_cpuid_phys
        out.extend_from_slice(&be(self.strings.len()));
        out.extend_from_slice(&be(size_struct));
        out.extend_from_slice(&[0; RSVMAP_ENTRY]);
        out.extend_from_slice(&self.structure);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Reads a big-endian `u32` at `at`, `None` when out of bounds.
pub(crate) fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    Some(u32::from_be_bytes(a))
}

/// Reads a big-endian `u64` property value (exactly 8 bytes).
pub(crate) fn prop_u64(value: &[u8]) -> Option<u64> {
    let a: [u8; 8] = value.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// Reads a big-endian `u32` property value (exactly 4 bytes).
pub(crate) fn prop_u32(value: &[u8]) -> Option<u32> {
    let a: [u8; 4] = value.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

/// Reads a string property value: one NUL-terminated UTF-8 string, no other NUL.
pub(crate) fn prop_str(value: &[u8]) -> Option<&str> {
    let (last, body) = value.split_last()?;
    if *last != 0 || body.contains(&0) {
        return None;
    }
    core::str::from_utf8(body).ok()
}

/// The bounds of a dtb whose header was checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fdt<'a> {
    /// `totalsize`.
    pub(crate) total: usize,
    structure: &'a [u8],
    struct_off: usize,
    strings: &'a [u8],
}

impl<'a> Fdt<'a> {
    /// Checks the header of the dtb at the start of `bytes`.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let field = |at: usize| be32(bytes, at).unwrap_or(0) as usize;
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::TooShort {
                len: bytes.len() as u64,
            });
        }
        let magic = be32(bytes, 0).unwrap_or(0);
        if magic != MAGIC {
            return Err(ImageError::FdtMagic { found: magic });
        }
        let version = be32(bytes, 20).unwrap_or(0);
        let last_comp_version = be32(bytes, 24).unwrap_or(0);
        if version != VERSION || last_comp_version != LAST_COMP_VERSION {
            return Err(ImageError::FdtVersion {
                version,
                last_comp_version,
            });
        }
        let total = field(4);
        let off_struct = field(8);
        let off_strings = field(12);
        let off_rsvmap = field(16);
        let size_strings = field(32);
        let size_struct = field(36);
        if total < HEADER_LEN || total > bytes.len() {
            return Err(ImageError::FdtHeader { field: "totalsize" });
        }
        let blob = bytes.get(..total).unwrap_or_default();
        // The reservation map: 8-aligned after the header, exactly one all-zero entry.
        let rsv_end = off_rsvmap.checked_add(RSVMAP_ENTRY);
        if off_rsvmap < HEADER_LEN || off_rsvmap % 8 != 0 || rsv_end.is_none_or(|e| e > total) {
            return Err(ImageError::FdtHeader {
                field: "off_mem_rsvmap",
            });
        }
        let rsv = blob.get(off_rsvmap..off_rsvmap + RSVMAP_ENTRY);
        if rsv.is_none_or(|r| r.iter().any(|&b| b != 0)) {
            return Err(ImageError::FdtReserveMap);
        }
        if off_struct < HEADER_LEN || off_struct % 4 != 0 {
            return Err(ImageError::FdtHeader {
                field: "off_dt_struct",
            });
        }
        let structure = match off_struct.checked_add(size_struct) {
            Some(end) if size_struct % 4 == 0 && end <= total => {
                blob.get(off_struct..end).unwrap_or_default()
            }
            _ => {
                return Err(ImageError::FdtHeader {
                    field: "size_dt_struct",
                });
            }
        };
        if off_strings < HEADER_LEN {
            return Err(ImageError::FdtHeader {
                field: "off_dt_strings",
            });
        }
        let strings = match off_strings.checked_add(size_strings) {
            Some(end) if end <= total => blob.get(off_strings..end).unwrap_or_default(),
            _ => {
                return Err(ImageError::FdtHeader {
                    field: "size_dt_strings",
                });
            }
        };
        Ok(Fdt {
            total,
            structure,
            struct_off: off_struct,
            strings,
        })
    }

    /// The tokens of the structure block, checked as they are read.
    pub(crate) fn tokens(&self) -> Tokens<'a> {
        Tokens {
            structure: self.structure,
            strings: self.strings,
            base: self.struct_off,
            pos: 0,
            depth: 0,
            props_allowed: false,
            root_closed: false,
            done: false,
        }
    }
}

/// One token of the structure block. Offsets are image offsets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Token<'a> {
    /// `FDT_BEGIN_NODE`; `depth` is the new node's depth (the root is 1).
    Begin {
        name: &'a [u8],
        offset: u64,
        depth: usize,
    },
    /// `FDT_PROP` of the innermost open node.
    Prop {
        name: &'a [u8],
        value: &'a [u8],
        value_offset: usize,
        offset: u64,
    },
    /// `FDT_END_NODE`; `depth` is the depth of the node being closed.
    End { depth: usize },
}

/// Iterator over the tokens of a structure block. Yields at most one error, then stops; ends
/// (`None`) only at a well-placed `FDT_END` that closes the block.
#[derive(Clone, Debug)]
pub(crate) struct Tokens<'a> {
    structure: &'a [u8],
    strings: &'a [u8],
    base: usize,
    pos: usize,
    depth: usize,
    props_allowed: bool,
    root_closed: bool,
    done: bool,
}

impl<'a> Tokens<'a> {
    fn fail(&mut self, e: ImageError) -> Option<Result<Token<'a>, ImageError>> {
        self.done = true;
        Some(Err(e))
    }

    /// Finds a name's NUL within `MAX_NAME + 1` bytes of `from`.
    fn name(bytes: &'a [u8], from: usize) -> Option<&'a [u8]> {
        let rest = bytes.get(from..)?;
        let window = rest.get(..MAX_NAME + 1).unwrap_or(rest);
        let n = window.iter().position(|&b| b == 0)?;
        window.get(..n)
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Result<Token<'a>, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let at = self.pos;
            let offset = (self.base + at) as u64;
            let Some(token) = be32(self.structure, at) else {
                return self.fail(ImageError::FdtTruncated { offset });
            };
            self.pos = at + 4;
            match token {
                TOKEN_NOP => continue,
                TOKEN_BEGIN_NODE => {
                    if self.root_closed {
                        return self.fail(ImageError::FdtStructure { offset });
                    }
                    if self.depth >= MAX_DEPTH {
                        return self.fail(ImageError::FdtTooDeep { offset });
                    }
                    let Some(name) = Self::name(self.structure, self.pos) else {
                        return self.fail(ImageError::FdtNodeName { offset });
                    };
                    self.pos = align4(self.pos + name.len() + 1);
                    self.depth += 1;
                    self.props_allowed = true;
                    return Some(Ok(Token::Begin {
                        name,
                        offset,
                        depth: self.depth,
                    }));
                }
                TOKEN_END_NODE => {
                    if self.depth == 0 {
                        return self.fail(ImageError::FdtStructure { offset });
                    }
                    let depth = self.depth;
                    self.depth -= 1;
                    self.props_allowed = false;
                    if self.depth == 0 {
                        self.root_closed = true;
                    }
                    return Some(Ok(Token::End { depth }));
                }
                TOKEN_PROP => {
                    if self.depth == 0 || !self.props_allowed {
                        return self.fail(ImageError::FdtStructure { offset });
                    }
                    let (Some(len), Some(nameoff)) = (
                        be32(self.structure, self.pos),
                        be32(self.structure, self.pos + 4),
                    ) else {
                        return self.fail(ImageError::FdtTruncated { offset });
                    };
                    let start = self.pos + 8;
                    let value = start
                        .checked_add(len as usize)
                        .and_then(|end| self.structure.get(start..end));
                    let Some(value) = value else {
                        return self.fail(ImageError::FdtTruncated { offset });
                    };
                    let Some(name) = Self::name(self.strings, nameoff as usize) else {
                        return self.fail(ImageError::FdtPropName { offset });
                    };
                    self.pos = align4(start + value.len());
                    return Some(Ok(Token::Prop {
                        name,
                        value,
                        value_offset: self.base + start,
                        offset,
                    }));
                }
                TOKEN_END => {
                    if self.depth != 0 || !self.root_closed || self.pos != self.structure.len() {
                        return self.fail(ImageError::FdtStructure { offset });
                    }
                    self.done = true;
                    return None;
                }
                _ => return self.fail(ImageError::FdtToken { offset, token }),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tree() -> Vec<u8> {
        let mut w = FdtWriter::new();
        w.begin_node(b"");
        w.prop_str("compatible", "x");
        w.prop_u64("n", 5);
        w.begin_node(b"child");
        w.prop_u32("n", 7);
        w.end_node();
        w.end_node();
        w.finish()
    }

    #[test]
    fn round_trip() {
        let blob = tree();
        let fdt = Fdt::parse(&blob).unwrap();
        assert_eq!(fdt.total, blob.len());
        let toks: Vec<_> = fdt.tokens().collect::<Result<_, _>>().unwrap();
        assert_eq!(toks.len(), 7);
        match toks[2] {
            Token::Prop {
                name,
                value,
                value_offset,
                ..
            } => {
                assert_eq!(name, b"n");
                assert_eq!(prop_u64(value), Some(5));
                assert_eq!(&blob[value_offset..value_offset + 8], value);
            }
            _ => panic!("expected a property"),
        }
    }

    #[test]
    fn every_truncation_of_the_structure_fails() {
        let blob = tree();
        let fdt = Fdt::parse(&blob).unwrap();
        let size = fdt.structure.len();
        for cut in 0..size / 4 {
            let mut b = blob.clone();
            // Shrink size_dt_struct; the walk must fail, never panic or succeed.
            b[36..40].copy_from_slice(&((cut * 4) as u32).to_be_bytes());
            let fdt = Fdt::parse(&b).unwrap();
            assert!(fdt.tokens().any(|t| t.is_err()), "cut at {cut}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let mut w = FdtWriter::new();
        for _ in 0..=MAX_DEPTH {
            w.begin_node(b"n");
        }
        for _ in 0..=MAX_DEPTH {
            w.end_node();
        }
        let blob = w.finish();
        let fdt = Fdt::parse(&blob).unwrap();
        let err = fdt.tokens().find_map(|t| t.err()).unwrap();
        assert!(matches!(err, ImageError::FdtTooDeep { .. }));
    }
}
