//! [`Image::parse`]: every check of `docs/format.md`, in order, before anything is handed out.
//!
//! 1. Whole image: length bound, FDT header.
//! 2. Root: `compatible`, `image-length`, `checksum` (one walk of the structure block).
//! 3. Tree: every node and property known, present once, well-formed (a second walk).
//! 4. Payload, in payload order, each block, table and blob placed after the previous one: for
//!    each session block, the file blocks and records of its sessions and then the block; the
//!    FLB blocks and data; the fd table; the part data. Entry contents as they are met.
//! 5. Duplicates: sessions, FLBs, descriptor numbers.
//!
//! Every step is linear in the input (sorting aside) and allocates at most in proportion to it.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use zerocopy::FromBytes;

use super::chain::{self, Chain, Entry};
use super::fdt::{self, Fdt, Token};
use super::rules;
use super::{
    BLOCK_HEADER_LEN, BLOCK_SIZE, FDS_COMPATIBLE, FLBS_COMPATIBLE, FdEntry, FileEntry, FlbEntry,
    IMAGE_COMPATIBLE, Image, ImageError, MAX_CHAIN_BLOCKS, MAX_IMAGE_LEN, NO_FD, PART_NAME_MAX,
    PARTS_COMPATIBLE, PAYLOAD_ALIGN, PartView, SESSION_FINISHED, SESSION_NAME_MAX,
    SESSIONS_COMPATIBLE, SessionEntry, WRITER_MAX,
};

pub(super) fn parse(bytes: &[u8]) -> Result<Image<'_>, ImageError> {
    let len = bytes.len() as u64;
    if len > MAX_IMAGE_LEN {
        return Err(ImageError::TooLarge { len });
    }
    let fdt = Fdt::parse(bytes)?;
    check_root(bytes, &fdt)?;
    let tree = read_tree(&fdt)?;
    let payload = (fdt.total as u64).next_multiple_of(PAYLOAD_ALIGN);
    if payload > len {
        return Err(ImageError::FdtHeader { field: "totalsize" });
    }
    let fds = check_payload(bytes, payload, &tree)?;
    Ok(Image {
        bytes,
        generation: tree.generation,
        writer: tree.writer,
        sessions_head: tree.sessions.0,
        session_count: tree.sessions.1,
        flbs_head: tree.flbs.0,
        flb_count: tree.flbs.1,
        fds,
    })
}

// ---- Root ----

/// The root's `compatible`, `image-length` and `checksum`: is this a luod image at all, and is it
/// intact?
fn check_root(bytes: &[u8], fdt: &Fdt<'_>) -> Result<(), ImageError> {
    let mut depth = 0;
    let mut root = 0;
    let mut compatible = None;
    let mut image_length = None;
    let mut checksum = None;
    for token in fdt.tokens() {
        match token? {
            Token::Begin {
                offset, depth: d, ..
            } => {
                if d == 1 {
                    root = offset;
                }
                depth = d;
            }
            Token::End { depth: d } => depth = d - 1,
            Token::Prop {
                name,
                value,
                value_offset,
                offset,
            } if depth == 1 => {
                let slot = match name {
                    b"compatible" => &mut compatible,
                    b"image-length" => &mut image_length,
                    b"checksum" => &mut checksum,
                    _ => continue,
                };
                if slot.is_some() {
                    return Err(ImageError::DuplicateProperty { offset });
                }
                *slot = Some((value, value_offset));
            }
            Token::Prop { .. } => {}
        }
    }
    let missing = |property| ImageError::MissingProperty {
        node: root,
        property,
    };
    let (value, _) = compatible.ok_or(missing("compatible"))?;
    if fdt::prop_str(value) != Some(IMAGE_COMPATIBLE) {
        return Err(ImageError::RootCompatible);
    }
    let (value, at) = image_length.ok_or(missing("image-length"))?;
    let declared = fdt::prop_u64(value).ok_or(ImageError::PropertyValue { offset: at as u64 })?;
    let actual = bytes.len() as u64;
    if declared != actual {
        return Err(ImageError::ImageLength { declared, actual });
    }
    let (value, at) = checksum.ok_or(missing("checksum"))?;
    let stored = fdt::prop_u32(value).ok_or(ImageError::PropertyValue { offset: at as u64 })?;
    let computed = checksum_of(bytes, at);
    if stored != computed {
        return Err(ImageError::Checksum { stored, computed });
    }
    Ok(())
}

/// CRC-32 of `bytes` with the four bytes at `at` taken as zero.
pub(super) fn checksum_of(bytes: &[u8], at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes.get(..at).unwrap_or_default());
    h.update(&[0; 4]);
    h.update(bytes.get(at.saturating_add(4)..).unwrap_or_default());
    h.finalize()
}

// ---- Tree ----

/// What the tree says, once every node and property was checked.
struct Tree<'a> {
    generation: u64,
    writer: &'a str,
    /// `head`, `count`.
    sessions: (u64, u64),
    /// `head`, `count`.
    flbs: (u64, u64),
    /// `offset`, `count`.
    fds: (u64, u64),
    /// `data-offset`, `data-length` of every part, in tree order.
    parts: Vec<(u64, u64)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Root,
    Sessions,
    Flbs,
    Fds,
    Parts,
    Part,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    Compatible,
    A,
    B,
    Writer,
    Generation,
    ImageLength,
    BlockSize,
    Checksum,
}

/// The properties of each kind of node, and where their values go.
fn slot(kind: Kind, name: &[u8]) -> Option<Slot> {
    use Slot::*;
    Some(match (kind, name) {
        (_, b"compatible") => Compatible,
        (Kind::Root, b"writer") => Writer,
        (Kind::Root, b"generation") => Generation,
        (Kind::Root, b"image-length") => ImageLength,
        (Kind::Root, b"block-size") => BlockSize,
        (Kind::Root, b"checksum") => Checksum,
        (Kind::Sessions | Kind::Flbs, b"head") => A,
        (Kind::Fds, b"offset") => A,
        (Kind::Sessions | Kind::Flbs | Kind::Fds, b"count") => B,
        (Kind::Part, b"data-offset") => A,
        (Kind::Part, b"data-length") => B,
        _ => return None,
    })
}

/// Names of the `A` and `B` properties of a kind, for error messages.
fn ab_names(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Sessions | Kind::Flbs => ("head", "count"),
        Kind::Fds => ("offset", "count"),
        _ => ("data-offset", "data-length"),
    }
}

/// One open node during the walk.
struct Node<'a> {
    kind: Kind,
    offset: u64,
    seen: u8,
    compatible: Option<(&'a [u8], usize)>,
    a: Option<u64>,
    b: Option<u64>,
    children: u32,
    last_child: Option<&'a [u8]>,
    /// Length of the part name up to and including this node (parts: 0).
    name_len: usize,
    /// A part whose data was already recorded (at its first child).
    recorded: bool,
}

impl<'a> Node<'a> {
    fn new(kind: Kind, offset: u64, name_len: usize) -> Self {
        Node {
            kind,
            offset,
            seen: 0,
            compatible: None,
            a: None,
            b: None,
            children: 0,
            last_child: None,
            name_len,
            recorded: false,
        }
    }

    fn missing(&self, property: &'static str) -> ImageError {
        ImageError::MissingProperty {
            node: self.offset,
            property,
        }
    }

    /// Checks a fixed node's `compatible`, `A` and `B`.
    fn fixed(&self, expected: &str) -> Result<(u64, u64), ImageError> {
        let (value, at) = self.compatible.ok_or(self.missing("compatible"))?;
        if fdt::prop_str(value) != Some(expected) {
            return Err(ImageError::NodeCompatible { offset: at as u64 });
        }
        let (a, b) = ab_names(self.kind);
        Ok((
            self.a.ok_or(self.missing(a))?,
            self.b.ok_or(self.missing(b))?,
        ))
    }

    /// A part node's data, if it is a part (has a `compatible`).
    fn part(&self) -> Result<Option<(u64, u64)>, ImageError> {
        let Some((value, at)) = self.compatible else {
            if self.a.is_some() || self.b.is_some() {
                return Err(self.missing("compatible"));
            }
            return Ok(None);
        };
        let ok = fdt::prop_str(value).is_some_and(rules::compatible_ok);
        if !ok {
            return Err(ImageError::PartCompatible { offset: at as u64 });
        }
        Ok(Some((
            self.a.ok_or(self.missing("data-offset"))?,
            self.b.ok_or(self.missing("data-length"))?,
        )))
    }
}

const ROOT_CHILDREN: [(&[u8], Kind, &str); 4] = [
    (b"sessions", Kind::Sessions, "/sessions"),
    (b"flbs", Kind::Flbs, "/flbs"),
    (b"fds", Kind::Fds, "/fds"),
    (b"parts", Kind::Parts, "/parts"),
];

fn read_tree<'a>(fdt: &Fdt<'a>) -> Result<Tree<'a>, ImageError> {
    let mut stack: Vec<Node<'a>> = Vec::with_capacity(fdt::MAX_DEPTH);
    let mut tree = Tree {
        generation: 0,
        writer: "",
        sessions: (0, 0),
        flbs: (0, 0),
        fds: (0, 0),
        parts: Vec::new(),
    };
    let mut root_children = 0u8;
    let mut root_props: (Option<u64>, Option<&'a str>) = (None, None);
    for token in fdt.tokens() {
        match token? {
            Token::Begin { name, offset, .. } => {
                let node = match stack.last_mut() {
                    None => {
                        if !name.is_empty() {
                            return Err(ImageError::UnknownNode { offset });
                        }
                        Node::new(Kind::Root, offset, 0)
                    }
                    Some(parent) => match parent.kind {
                        Kind::Root => {
                            let (i, kind) = ROOT_CHILDREN
                                .iter()
                                .enumerate()
                                .find(|(_, c)| c.0 == name)
                                .map(|(i, c)| (i, c.1))
                                .ok_or(ImageError::UnknownNode { offset })?;
                            if root_children & (1 << i) != 0 {
                                return Err(ImageError::DuplicateNode { offset });
                            }
                            root_children |= 1 << i;
                            Node::new(kind, offset, 0)
                        }
                        Kind::Parts | Kind::Part => {
                            let sep = usize::from(parent.kind == Kind::Part);
                            let name_len = parent.name_len + sep + name.len();
                            if !rules::part_component_ok(name) || name_len > PART_NAME_MAX {
                                return Err(ImageError::PartNodeName { offset });
                            }
                            if parent.last_child.is_some_and(|last| last >= name) {
                                return Err(ImageError::PartOrder { offset });
                            }
                            if parent.kind == Kind::Part && !parent.recorded {
                                // Tree order: a part's data precedes its subparts' data.
                                parent.recorded = true;
                                if let Some(data) = parent.part()? {
                                    tree.parts.push(data);
                                }
                            }
                            Node::new(Kind::Part, offset, name_len)
                        }
                        Kind::Sessions | Kind::Flbs | Kind::Fds => {
                            return Err(ImageError::UnknownNode { offset });
                        }
                    },
                };
                if let Some(parent) = stack.last_mut() {
                    parent.children += 1;
                    parent.last_child = Some(name);
                }
                stack.push(node);
            }
            Token::Prop {
                name,
                value,
                value_offset,
                offset,
            } => {
                let Some(node) = stack.last_mut() else {
                    return Err(ImageError::FdtStructure { offset });
                };
                let slot = slot(node.kind, name).ok_or(ImageError::UnknownProperty { offset })?;
                let bit = 1u8 << (slot as u8);
                if node.seen & bit != 0 {
                    return Err(ImageError::DuplicateProperty { offset });
                }
                node.seen |= bit;
                let bad = ImageError::PropertyValue {
                    offset: value_offset as u64,
                };
                match slot {
                    Slot::Compatible => {
                        fdt::prop_str(value).ok_or(bad)?;
                        node.compatible = Some((value, value_offset));
                    }
                    Slot::A => node.a = Some(fdt::prop_u64(value).ok_or(bad)?),
                    Slot::B => node.b = Some(fdt::prop_u64(value).ok_or(bad)?),
                    Slot::Generation => root_props.0 = Some(fdt::prop_u64(value).ok_or(bad)?),
                    Slot::Writer => {
                        let s = fdt::prop_str(value).filter(|s| s.len() <= WRITER_MAX);
                        root_props.1 = Some(s.ok_or(bad)?);
                    }
                    Slot::ImageLength => {
                        fdt::prop_u64(value).ok_or(bad)?;
                    }
                    Slot::Checksum => {
                        fdt::prop_u32(value).ok_or(bad)?;
                    }
                    Slot::BlockSize => {
                        let found = fdt::prop_u32(value).ok_or(bad)?;
                        if found as usize != BLOCK_SIZE {
                            return Err(ImageError::BlockSize { found });
                        }
                    }
                }
            }
            Token::End { .. } => {
                let Some(node) = stack.pop() else {
                    return Err(ImageError::FdtStructure { offset: 0 });
                };
                match node.kind {
                    Kind::Root => {
                        if node.compatible.is_none() {
                            return Err(node.missing("compatible"));
                        }
                        tree.writer = root_props.1.ok_or(node.missing("writer"))?;
                        tree.generation = root_props.0.ok_or(node.missing("generation"))?;
                        let required = [
                            (Slot::ImageLength, "image-length"),
                            (Slot::BlockSize, "block-size"),
                            (Slot::Checksum, "checksum"),
                        ];
                        for (slot, property) in required {
                            if node.seen & (1 << (slot as u8)) == 0 {
                                return Err(node.missing(property));
                            }
                        }
                        for (i, (_, _, path)) in ROOT_CHILDREN.iter().enumerate() {
                            if root_children & (1 << i) == 0 {
                                return Err(ImageError::MissingNode { node: path });
                            }
                        }
                    }
                    Kind::Sessions => tree.sessions = node.fixed(SESSIONS_COMPATIBLE)?,
                    Kind::Flbs => tree.flbs = node.fixed(FLBS_COMPATIBLE)?,
                    Kind::Fds => tree.fds = node.fixed(FDS_COMPATIBLE)?,
                    Kind::Parts => {
                        let (value, at) = node.compatible.ok_or(node.missing("compatible"))?;
                        if fdt::prop_str(value) != Some(PARTS_COMPATIBLE) {
                            return Err(ImageError::NodeCompatible { offset: at as u64 });
                        }
                    }
                    Kind::Part => {
                        if node.compatible.is_none() && node.children == 0 {
                            return Err(ImageError::EmptyPartNode {
                                offset: node.offset,
                            });
                        }
                        if !node.recorded
                            && let Some(data) = node.part()?
                        {
                            tree.parts.push(data);
                        }
                    }
                }
            }
        }
    }
    Ok(tree)
}

// ---- Payload ----

/// Where the next block, table or blob may start, in payload order.
struct Cursor {
    at: u64,
    len: u64,
}

impl Cursor {
    /// Places `size` bytes at `off`: aligned, in bounds, and after what was placed before.
    fn place(&mut self, off: u64, size: u64) -> Result<(), ImageError> {
        if !off.is_multiple_of(PAYLOAD_ALIGN) {
            return Err(ImageError::Misaligned { offset: off });
        }
        let end = off.checked_add(size).filter(|&end| end <= self.len).ok_or(
            ImageError::OutOfBounds {
                offset: off,
                len: size,
            },
        )?;
        if off < self.at {
            return Err(ImageError::Overlap { offset: off });
        }
        self.at = end;
        Ok(())
    }

    /// Places a blob: nothing for an empty one, whose offset must be 0.
    fn place_blob(&mut self, off: u64, len: u64) -> Result<(), ImageError> {
        if len == 0 {
            if off != 0 {
                return Err(ImageError::EmptyBlobOffset { offset: off });
            }
            return Ok(());
        }
        self.place(off, len)
    }
}

/// Walks the chain at `head`, checking and placing each block; returns its number of entries.
fn walk_chain<T: Entry>(bytes: &[u8], head: u64, cursor: &mut Cursor) -> Result<u64, ImageError> {
    let mut off = head;
    let mut blocks = 0;
    let mut total = 0u64;
    while off != 0 {
        if blocks == MAX_CHAIN_BLOCKS {
            return Err(ImageError::ChainTooLong { head });
        }
        blocks += 1;
        let size = check_block::<T>(bytes, off)?;
        cursor.place(off, size)?;
        total += (size - BLOCK_HEADER_LEN as u64) / T::SIZE as u64;
        let next = chain::header(bytes, off).map_or(0, |h| h.next.get());
        if next != 0 && next <= off {
            return Err(ImageError::ChainBackward { block: off, next });
        }
        off = next;
    }
    Ok(total)
}

fn count_matches(head: u64, declared: u64, found: u64) -> Result<(), ImageError> {
    if declared != found {
        return Err(ImageError::CountMismatch {
            head,
            declared,
            found,
        });
    }
    Ok(())
}

/// Checks sessions, each with its file chain and records, placing them with `cursor`.
struct SessionChecker<'a> {
    bytes: &'a [u8],
    cursor: Cursor,
    fd_count: u64,
    fd_used: Vec<u64>,
    scratch: Vec<u64>,
    /// The last file compatible found valid (files of one handler repeat it).
    last_compatible: Option<&'a [u8; 48]>,
}

impl<'a> SessionChecker<'a> {
    /// One session: its entry, then its file blocks, files and records, in payload order.
    fn check(&mut self, session: u64, s: &'a SessionEntry) -> Result<(), ImageError> {
        if rules::padded_len(&s.name, SESSION_NAME_MAX).is_none() {
            return Err(ImageError::SessionName { session });
        }
        let flags = s.flags.get();
        if !rules::session_flags_ok(flags) {
            return Err(ImageError::SessionFlags { session, flags });
        }
        let head = s.files_head.get();
        let declared = s.files_count.get();
        let found = walk_chain::<FileEntry>(self.bytes, head, &mut self.cursor)?;
        count_matches(head, declared, found)?;
        if flags & SESSION_FINISHED != 0 && declared > 0 {
            return Err(ImageError::FinishedWithFiles { session });
        }
        for (i, (_, f)) in Chain::<FileEntry>::new(self.bytes, head).enumerate() {
            self.check_file(session, i as u64, f)?;
        }
        let tokens = Chain::<FileEntry>::new(self.bytes, head).map(|(_, f)| f.token.get());
        if let Some(token) = rules::duplicate_token(tokens, &mut self.scratch) {
            return Err(ImageError::DuplicateToken { session, token });
        }
        Ok(())
    }

    fn check_file(&mut self, session: u64, file: u64, f: &'a FileEntry) -> Result<(), ImageError> {
        if self.last_compatible != Some(&f.compatible) {
            if !rules::compatible_field_ok(&f.compatible) {
                return Err(ImageError::FileCompatible { session, file });
            }
            self.last_compatible = Some(&f.compatible);
        }
        let flags = f.flags.get();
        if !rules::file_flags_ok(flags) {
            return Err(ImageError::FileFlags {
                session,
                file,
                flags,
            });
        }
        let fd_index = f.fd_index.get();
        let open_fd_index = f.open_fd_index.get();
        let status = f.status.get();
        if !rules::status_ok(status, fd_index != NO_FD) {
            return Err(ImageError::FileStatus {
                session,
                file,
                status,
            });
        }
        if open_fd_index != NO_FD && status != 1 {
            return Err(ImageError::OpenFd { session, file });
        }
        for fd_index in [fd_index, open_fd_index] {
            if fd_index == NO_FD {
                continue;
            }
            let (word, bit) = (fd_index as usize / 64, 1u64 << (fd_index % 64));
            let slot = self.fd_used.get_mut(word);
            let Some(w) = slot.filter(|_| u64::from(fd_index) < self.fd_count) else {
                return Err(ImageError::FdIndex {
                    session,
                    file,
                    fd_index,
                });
            };
            if *w & bit != 0 {
                return Err(ImageError::FdReused {
                    session,
                    file,
                    fd_index,
                });
            }
            *w |= bit;
        }
        // The file's record, after the whole chain (placed by the caller) and the records
        // of the files before it.
        self.cursor
            .place_blob(f.record_off.get(), f.record_len.get())
    }
}

/// Checks everything after the FDT; returns the fd table.
fn check_payload<'a>(
    bytes: &'a [u8],
    payload: u64,
    tree: &Tree<'_>,
) -> Result<&'a [FdEntry], ImageError> {
    let len = bytes.len() as u64;

    // The fd table's bounds, before sizing anything by its count.
    let (fd_off, fd_count) = tree.fds;
    let fd_len = fd_count.checked_mul(size_of::<FdEntry>() as u64);
    let fd_end = fd_len
        .and_then(|l| fd_off.checked_add(l))
        .filter(|&end| end <= len);
    let (Some(fd_len), Some(_)) = (fd_len, fd_end) else {
        return Err(ImageError::OutOfBounds {
            offset: fd_off,
            len: fd_len.unwrap_or(u64::MAX),
        });
    };

    // Session blocks, each after the file blocks and records of its sessions.
    let mut checker = SessionChecker {
        bytes,
        cursor: Cursor { at: payload, len },
        fd_count,
        fd_used: vec![0u64; fd_count.div_ceil(64) as usize],
        scratch: Vec::new(),
        last_compatible: None,
    };
    let (head, declared) = tree.sessions;
    let mut off = head;
    let mut blocks = 0;
    let mut found = 0u64;
    while off != 0 {
        if blocks == MAX_CHAIN_BLOCKS {
            return Err(ImageError::ChainTooLong { head });
        }
        blocks += 1;
        let size = check_block::<SessionEntry>(bytes, off)?;
        let entries = chain::block::<SessionEntry>(bytes, off).map_or(&[][..], |(_, e)| e);
        for s in entries {
            checker.check(found, s)?;
            found += 1;
        }
        checker.cursor.place(off, size)?;
        let next = chain::header(bytes, off).map_or(0, |h| h.next.get());
        if next != 0 && next <= off {
            return Err(ImageError::ChainBackward { block: off, next });
        }
        off = next;
    }
    count_matches(head, declared, found)?;
    let mut cursor = checker.cursor;

    // FLB blocks, then their data.
    let (flbs_head, flb_count) = tree.flbs;
    let found = walk_chain::<FlbEntry>(bytes, flbs_head, &mut cursor)?;
    count_matches(flbs_head, flb_count, found)?;
    for (i, (_, e)) in Chain::<FlbEntry>::new(bytes, flbs_head).enumerate() {
        let flb = i as u64;
        if !rules::compatible_field_ok(&e.compatible) {
            return Err(ImageError::FlbCompatible { flb });
        }
        let flags = e.flags.get();
        if !rules::flb_flags_ok(flags) {
            return Err(ImageError::FlbFlags { flb, flags });
        }
        if e.reserved.get() != 0 {
            return Err(ImageError::FlbReserved { flb });
        }
        cursor.place_blob(e.data_off.get(), e.data_len.get())?;
    }

    // The fd table, then the parts' data.
    cursor.place_blob(fd_off, fd_len)?;
    let table = bytes.get(fd_off as usize..(fd_off + fd_len) as usize);
    let fds = table
        .and_then(|t| <[FdEntry]>::ref_from_bytes(t).ok())
        .unwrap_or_default();
    rules::check_fd_table(fds)?;
    for &(off, len) in &tree.parts {
        cursor.place_blob(off, len)?;
    }

    // Duplicates.
    let sessions = Chain::<SessionEntry>::new(bytes, head).map(|(off, e)| (off as u32, e));
    let get = |off: u32| {
        let off = off as usize;
        let entry = bytes.get(off..off.checked_add(size_of::<SessionEntry>())?)?;
        SessionEntry::ref_from_bytes(entry).ok()
    };
    if let Some(session) = rules::duplicate_session(sessions, get) {
        return Err(ImageError::DuplicateSession { session });
    }
    let flbs = Chain::<FlbEntry>::new(bytes, flbs_head).map(|(_, e)| e);
    if let Some(flb) = rules::duplicate_flb(flbs) {
        return Err(ImageError::DuplicateFlb { flb });
    }
    Ok(fds)
}

/// Checks the block at `off` (alignment, header in bounds, count, entries in bounds) without
/// placing it; returns its size.
fn check_block<T: Entry>(bytes: &[u8], off: u64) -> Result<u64, ImageError> {
    if !off.is_multiple_of(PAYLOAD_ALIGN) {
        return Err(ImageError::Misaligned { offset: off });
    }
    let h = chain::header(bytes, off).ok_or(ImageError::OutOfBounds {
        offset: off,
        len: BLOCK_HEADER_LEN as u64,
    })?;
    let count = h.count.get();
    if count == 0 || count > T::CAP {
        return Err(ImageError::BlockCount { block: off, count });
    }
    let size = BLOCK_HEADER_LEN as u64 + count * T::SIZE as u64;
    if off
        .checked_add(size)
        .is_none_or(|end| end > bytes.len() as u64)
    {
        return Err(ImageError::OutOfBounds {
            offset: off,
            len: size,
        });
    }
    Ok(size)
}

// ---- Parts, after validation ----

/// Calls `f` with the component path and view of every part, in tree order, until it returns
/// `false`. On an image that did not validate, it stops early rather than fail.
fn walk_parts<'a>(bytes: &'a [u8], mut f: impl FnMut(&[&'a [u8]], PartView<'a>) -> bool) {
    let Ok(fdt) = Fdt::parse(bytes) else {
        return;
    };
    let mut path: Vec<&'a [u8]> = Vec::with_capacity(fdt::MAX_DEPTH);
    // The compatible, data-offset and data-length of the node whose properties are being read.
    let mut props: (Option<&'a str>, Option<u64>, Option<u64>) = (None, None, None);
    let mut flush = |path: &[&'a [u8]], props: &mut (Option<&'a str>, Option<u64>, Option<u64>)| {
        let taken = core::mem::take(props);
        let in_parts = path.get(1) == Some(&&b"parts"[..]) && path.len() > 2;
        if let (true, (Some(compatible), Some(off), Some(len))) = (in_parts, taken) {
            let data = super::blob(bytes, off, len);
            return f(
                path.get(2..).unwrap_or_default(),
                PartView { compatible, data },
            );
        }
        true
    };
    for token in fdt.tokens() {
        let Ok(token) = token else {
            return;
        };
        match token {
            Token::Begin { name, depth, .. } => {
                if !flush(&path, &mut props) {
                    return;
                }
                path.truncate(depth - 1);
                path.push(name);
            }
            Token::End { depth } => {
                if !flush(&path, &mut props) {
                    return;
                }
                path.truncate(depth - 1);
            }
            Token::Prop { name, value, .. } => match name {
                b"compatible" => props.0 = fdt::prop_str(value),
                b"data-offset" => props.1 = fdt::prop_u64(value),
                b"data-length" => props.2 = fdt::prop_u64(value),
                _ => {}
            },
        }
    }
}

/// Every part, with its full name.
pub(super) fn all_parts(bytes: &[u8]) -> Vec<(String, PartView<'_>)> {
    let mut parts = Vec::new();
    walk_parts(bytes, |path, view| {
        let mut name = String::new();
        for (i, c) in path.iter().enumerate() {
            if i > 0 {
                name.push('/');
            }
            name.push_str(core::str::from_utf8(c).unwrap_or_default());
        }
        parts.push((name, view));
        true
    });
    parts
}

/// The part called `name`.
pub(super) fn find_part<'a>(bytes: &'a [u8], name: &str) -> Option<PartView<'a>> {
    let mut found = None;
    walk_parts(bytes, |path, view| {
        if path.iter().copied().eq(name.split('/').map(str::as_bytes)) {
            found = Some(view);
            return false;
        }
        true
    });
    found
}
