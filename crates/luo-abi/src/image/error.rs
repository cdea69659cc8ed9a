//! [`ImageError`]: why an image could not be written or read.
//!
//! One variant per check. Reader errors carry the image offset (`offset`, `block`, `head`) or the
//! index (`session`, `file`, `flb`, `index`, in image order) of what failed, so a refused image
//! can be looked at with `dtc` and a hex dump. Writer errors carry the index of the offending
//! input, counted in the order the writer received it (which is also image order).

use core::fmt;

/// Why an image could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    // ---- Whole image ----
    /// The image is longer than [`MAX_IMAGE_LEN`](super::MAX_IMAGE_LEN) (also returned by the
    /// writer when the image it would build is).
    TooLarge {
        /// Length of the image.
        len: u64,
    },
    /// Shorter than the FDT header.
    TooShort {
        /// Length of the image.
        len: u64,
    },

    // ---- FDT header and structure ----
    /// The FDT header does not start with `0xd00dfeed`.
    FdtMagic {
        /// The first four bytes, big-endian.
        found: u32,
    },
    /// The FDT is not version 17 with last compatible version 16.
    FdtVersion {
        /// `version`.
        version: u32,
        /// `last_comp_version`.
        last_comp_version: u32,
    },
    /// An FDT header field is out of bounds or misaligned.
    FdtHeader {
        /// The header field's name, as in the devicetree specification.
        field: &'static str,
    },
    /// The memory reservation map is not exactly one terminating empty entry.
    FdtReserveMap,
    /// An unknown structure token.
    FdtToken {
        /// Image offset of the token.
        offset: u64,
        /// The token.
        token: u32,
    },
    /// A token, name or property value runs past the end of the structure block.
    FdtTruncated {
        /// Image offset of the token.
        offset: u64,
    },
    /// A node name is not NUL-terminated within its bound.
    FdtNodeName {
        /// Image offset of the `FDT_BEGIN_NODE` token.
        offset: u64,
    },
    /// A property name offset is outside the strings block, or the name is not NUL-terminated
    /// within its bound.
    FdtPropName {
        /// Image offset of the `FDT_PROP` token.
        offset: u64,
    },
    /// Nodes nest deeper than the format allows.
    FdtTooDeep {
        /// Image offset of the `FDT_BEGIN_NODE` token.
        offset: u64,
    },
    /// A token in the wrong place: unbalanced nodes, a property after a subnode or outside the
    /// root, a second root, or anything but `FDT_END` ending the structure block.
    FdtStructure {
        /// Image offset of the token.
        offset: u64,
    },

    // ---- Tree ----
    /// The root `compatible` is not [`IMAGE_COMPATIBLE`](super::IMAGE_COMPATIBLE): this is not
    /// a luod image, or one of an incompatible version.
    RootCompatible,
    /// A node's `compatible` is not the one this version of the format expects.
    NodeCompatible {
        /// Image offset of the property's value.
        offset: u64,
    },
    /// A node the format does not define (or the root node has a name).
    UnknownNode {
        /// Image offset of the `FDT_BEGIN_NODE` token.
        offset: u64,
    },
    /// A node appears twice.
    DuplicateNode {
        /// Image offset of the second `FDT_BEGIN_NODE` token.
        offset: u64,
    },
    /// A required node is missing.
    MissingNode {
        /// The node's path.
        node: &'static str,
    },
    /// A property the format does not define for its node.
    UnknownProperty {
        /// Image offset of the `FDT_PROP` token.
        offset: u64,
    },
    /// A property appears twice in a node.
    DuplicateProperty {
        /// Image offset of the second `FDT_PROP` token.
        offset: u64,
    },
    /// A required property is missing.
    MissingProperty {
        /// Image offset of the node's `FDT_BEGIN_NODE` token.
        node: u64,
        /// The property's name.
        property: &'static str,
    },
    /// A property value has the wrong length, or a string property is not one NUL-terminated
    /// UTF-8 string within its bound.
    PropertyValue {
        /// Image offset of the property's value.
        offset: u64,
    },
    /// `image-length` differs from the length of the image.
    ImageLength {
        /// The root's `image-length`.
        declared: u64,
        /// The actual length.
        actual: u64,
    },
    /// The CRC-32 does not match: the image was damaged or truncated.
    Checksum {
        /// The root's `checksum`.
        stored: u32,
        /// The CRC-32 computed over the image.
        computed: u32,
    },
    /// `block-size` is not [`BLOCK_SIZE`](super::BLOCK_SIZE).
    BlockSize {
        /// The root's `block-size`.
        found: u32,
    },
    /// A part node's name is not made of allowed characters, or the part's full name is too long.
    PartNodeName {
        /// Image offset of the `FDT_BEGIN_NODE` token.
        offset: u64,
    },
    /// Part nodes under one parent are not in strictly increasing name order (this is also how
    /// a duplicated part name shows).
    PartOrder {
        /// Image offset of the `FDT_BEGIN_NODE` token of the out-of-order node.
        offset: u64,
    },
    /// A part node with neither a `compatible` nor subnodes.
    EmptyPartNode {
        /// Image offset of the `FDT_BEGIN_NODE` token.
        offset: u64,
    },
    /// A part's `compatible` is not 1 to 47 bytes.
    PartCompatible {
        /// Image offset of the property's value.
        offset: u64,
    },

    // ---- Payload placement ----
    /// A block, table or blob is not 8-byte aligned.
    Misaligned {
        /// Its image offset.
        offset: u64,
    },
    /// A block, table or blob does not lie within the payload (or its end overflows).
    OutOfBounds {
        /// Its image offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// A block, table or blob starts before the end of the one that precedes it in the
    /// format's payload order (so two of them would overlap or share bytes).
    Overlap {
        /// Its image offset.
        offset: u64,
    },
    /// A block's `next` does not point past the block itself: a cycle or a backward link.
    ChainBackward {
        /// Image offset of the block.
        block: u64,
        /// Its `next`.
        next: u64,
    },
    /// A chain is longer than [`MAX_CHAIN_BLOCKS`](super::MAX_CHAIN_BLOCKS).
    ChainTooLong {
        /// Image offset of the chain's first block.
        head: u64,
    },
    /// A block's `count` is 0 or more than its capacity.
    BlockCount {
        /// Image offset of the block.
        block: u64,
        /// Its `count`.
        count: u64,
    },
    /// A chain holds a different number of entries than its owner says.
    CountMismatch {
        /// Image offset of the chain's first block (0 for an empty chain).
        head: u64,
        /// The count the owner (node property or session entry) declares.
        declared: u64,
        /// The entries found in the chain.
        found: u64,
    },
    /// A blob of length 0 with a non-zero offset.
    EmptyBlobOffset {
        /// The offset.
        offset: u64,
    },

    // ---- Sessions ----
    /// A session name is not 1 to 63 bytes, NUL-terminated and zero-padded (writer: not 1 to
    /// 63 bytes, or contains a NUL).
    SessionName {
        /// Index of the session.
        session: u64,
    },
    /// Undefined or contradictory `SESSION_*` bits (retrieved or finished without incoming).
    SessionFlags {
        /// Index of the session.
        session: u64,
        /// The flags.
        flags: u32,
    },
    /// A finished session that still has files.
    FinishedWithFiles {
        /// Index of the session.
        session: u64,
    },
    /// Two sessions of the same direction (incoming or outgoing) share an owner and a name.
    DuplicateSession {
        /// Index of the later of the two.
        session: u64,
    },
    /// More sessions than [`MAX_CHAIN_BLOCKS`](super::MAX_CHAIN_BLOCKS) blocks can hold.
    TooManySessions,

    // ---- Files ----
    /// A file's handler compatible is not 1 to 47 bytes of UTF-8, NUL-terminated and
    /// zero-padded (writer: not 1 to 47 bytes, or contains a NUL).
    FileCompatible {
        /// Index of the session.
        session: u64,
        /// Index of the file within the session.
        file: u64,
    },
    /// Undefined `FILE_*` bits.
    FileFlags {
        /// Index of the session.
        session: u64,
        /// Index of the file within the session.
        file: u64,
        /// The flags.
        flags: u32,
    },
    /// A file has a retrieved open file (`open_fd_index`) but its status is not 1.
    OpenFd {
        /// Index of the session.
        session: u64,
        /// Index of the file within the session.
        file: u64,
    },
    /// A file's status is not 0, 1 or an errno in `-4095..=-1`, or is 1 without a descriptor.
    FileStatus {
        /// Index of the session.
        session: u64,
        /// Index of the file within the session.
        file: u64,
        /// The status.
        status: i32,
    },
    /// A file's `fd_index` or `open_fd_index` is neither [`NO_FD`](super::NO_FD) nor an index
    /// into the fd table.
    FdIndex {
        /// Index of the session.
        session: u64,
        /// Index of the file within the session.
        file: u64,
        /// The index.
        fd_index: u32,
    },
    /// Two files, or the two descriptors of one file, use the same fd table slot.
    FdReused {
        /// Index of the session of the second file.
        session: u64,
        /// Index of the second file within its session.
        file: u64,
        /// The slot.
        fd_index: u32,
    },
    /// Two files of one session share a token.
    DuplicateToken {
        /// Index of the session.
        session: u64,
        /// The token.
        token: u64,
    },
    /// More files in one session than [`MAX_CHAIN_BLOCKS`](super::MAX_CHAIN_BLOCKS) blocks can
    /// hold.
    TooManyFiles {
        /// Index of the session.
        session: u64,
    },

    // ---- FLBs ----
    /// An FLB compatible is not 1 to 47 bytes of UTF-8, NUL-terminated and zero-padded (writer:
    /// not 1 to 47 bytes, or contains a NUL).
    FlbCompatible {
        /// Index of the FLB.
        flb: u64,
    },
    /// Undefined or contradictory `FLB_*` bits (retrieved without incoming).
    FlbFlags {
        /// Index of the FLB.
        flb: u64,
        /// The flags.
        flags: u32,
    },
    /// An FLB's reserved field is not zero.
    FlbReserved {
        /// Index of the FLB.
        flb: u64,
    },
    /// Two FLBs of the same direction share a compatible.
    DuplicateFlb {
        /// Index of the later of the two.
        flb: u64,
    },
    /// More FLBs than [`MAX_CHAIN_BLOCKS`](super::MAX_CHAIN_BLOCKS) blocks can hold.
    TooManyFlbs,

    // ---- fd table ----
    /// A negative descriptor number in the fd table.
    FdNumber {
        /// Index in the fd table.
        index: u64,
        /// The descriptor number.
        fd: i32,
    },
    /// An fd table entry whose `mode_type` is neither one `S_IFMT` file type nor 0 (an
    /// anonymous inode).
    FdType {
        /// Index in the fd table.
        index: u64,
        /// The `mode_type`.
        mode_type: u32,
    },
    /// One descriptor number listed twice in the fd table.
    DuplicateFd {
        /// Index in the fd table of the later entry.
        index: u64,
        /// The descriptor number.
        fd: i32,
    },

    // ---- Writer input only ----
    /// The writer version string is longer than 255 bytes or contains a NUL.
    WriterVersion,
    /// A part name is not 1 to 63 bytes of `/`-separated, non-empty components of
    /// `[A-Za-z0-9,._+-]`, at most six deep.
    PartName,
    /// A part compatible is not 1 to 47 bytes, or contains a NUL.
    InvalidPartCompatible,
    /// Two parts with the same name.
    DuplicatePart,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ImageError::*;
        match *self {
            TooLarge { len } => write!(f, "Image of {len} bytes exceeds the size limit"),
            TooShort { len } => write!(f, "Image of {len} bytes is shorter than an FDT header"),
            FdtMagic { found } => write!(f, "Not a flattened device tree (magic {found:#010x})"),
            FdtVersion {
                version,
                last_comp_version,
            } => write!(
                f,
                "Unsupported FDT version {version} (last compatible {last_comp_version})"
            ),
            FdtHeader { field } => write!(f, "FDT header field {field} is out of bounds"),
            FdtReserveMap => write!(f, "FDT memory reservation map is not empty"),
            FdtToken { offset, token } => {
                write!(f, "Unknown FDT token {token:#x} at offset {offset}")
            }
            FdtTruncated { offset } => {
                write!(
                    f,
                    "FDT token at offset {offset} runs past the structure block"
                )
            }
            FdtNodeName { offset } => write!(f, "Bad FDT node name at offset {offset}"),
            FdtPropName { offset } => write!(f, "Bad FDT property name at offset {offset}"),
            FdtTooDeep { offset } => write!(f, "FDT nodes nest too deep at offset {offset}"),
            FdtStructure { offset } => write!(f, "Misplaced FDT token at offset {offset}"),
            RootCompatible => write!(f, "Not a luod-image-v1 image"),
            NodeCompatible { offset } => {
                write!(f, "Unexpected node compatible at offset {offset}")
            }
            UnknownNode { offset } => write!(f, "Unknown node at offset {offset}"),
            DuplicateNode { offset } => write!(f, "Duplicate node at offset {offset}"),
            MissingNode { node } => write!(f, "Missing node {node}"),
            UnknownProperty { offset } => write!(f, "Unknown property at offset {offset}"),
            DuplicateProperty { offset } => write!(f, "Duplicate property at offset {offset}"),
            MissingProperty { node, property } => {
                write!(f, "Node at offset {node} lacks property {property}")
            }
            PropertyValue { offset } => write!(f, "Bad property value at offset {offset}"),
            ImageLength { declared, actual } => {
                write!(f, "Image is {actual} bytes long but declares {declared}")
            }
            Checksum { stored, computed } => write!(
                f,
                "Checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            BlockSize { found } => write!(f, "Unsupported block size {found}"),
            PartNodeName { offset } => write!(f, "Bad part name at offset {offset}"),
            PartOrder { offset } => {
                write!(f, "Part at offset {offset} is duplicated or out of order")
            }
            EmptyPartNode { offset } => write!(f, "Empty part node at offset {offset}"),
            PartCompatible { offset } => write!(f, "Bad part compatible at offset {offset}"),
            Misaligned { offset } => write!(f, "Offset {offset} is not 8-byte aligned"),
            OutOfBounds { offset, len } => {
                write!(f, "{len} bytes at offset {offset} lie outside the payload")
            }
            Overlap { offset } => write!(
                f,
                "Data at offset {offset} overlaps what precedes it in payload order"
            ),
            ChainBackward { block, next } => write!(
                f,
                "Block at offset {block} links backward to {next} (cycle)"
            ),
            ChainTooLong { head } => write!(f, "Chain at offset {head} has too many blocks"),
            BlockCount { block, count } => {
                write!(f, "Block at offset {block} has a bad count {count}")
            }
            CountMismatch {
                head,
                declared,
                found,
            } => write!(
                f,
                "Chain at offset {head} holds {found} entries, {declared} declared"
            ),
            EmptyBlobOffset { offset } => {
                write!(f, "Empty data with a non-zero offset {offset}")
            }
            SessionName { session } => write!(f, "Session {session} has a bad name"),
            SessionFlags { session, flags } => {
                write!(f, "Session {session} has bad flags {flags:#x}")
            }
            FinishedWithFiles { session } => {
                write!(f, "Finished session {session} still has files")
            }
            DuplicateSession { session } => {
                write!(f, "Session {session} duplicates an earlier session's name")
            }
            TooManySessions => write!(f, "Too many sessions"),
            FileCompatible { session, file } => {
                write!(f, "File {file} of session {session} has a bad compatible")
            }
            FileFlags {
                session,
                file,
                flags,
            } => write!(
                f,
                "File {file} of session {session} has bad flags {flags:#x}"
            ),
            OpenFd { session, file } => write!(
                f,
                "File {file} of session {session} has an open file but was not retrieved"
            ),
            FileStatus {
                session,
                file,
                status,
            } => write!(
                f,
                "File {file} of session {session} has bad status {status}"
            ),
            FdIndex {
                session,
                file,
                fd_index,
            } => write!(
                f,
                "File {file} of session {session} refers to fd slot {fd_index}, which does not exist"
            ),
            FdReused {
                session,
                file,
                fd_index,
            } => write!(
                f,
                "File {file} of session {session} reuses fd slot {fd_index}"
            ),
            DuplicateToken { session, token } => {
                write!(f, "Session {session} has token {token} twice")
            }
            TooManyFiles { session } => write!(f, "Too many files in session {session}"),
            FlbCompatible { flb } => write!(f, "FLB {flb} has a bad compatible"),
            FlbFlags { flb, flags } => write!(f, "FLB {flb} has bad flags {flags:#x}"),
            FlbReserved { flb } => write!(f, "FLB {flb} has a non-zero reserved field"),
            DuplicateFlb { flb } => write!(f, "FLB {flb} duplicates an earlier FLB"),
            TooManyFlbs => write!(f, "Too many FLBs"),
            FdNumber { index, fd } => write!(f, "fd table entry {index} has bad fd {fd}"),
            FdType { index, mode_type } => {
                write!(f, "fd table entry {index} has bad file type {mode_type:#o}")
            }
            DuplicateFd { index, fd } => {
                write!(f, "fd table entry {index} repeats fd {fd}")
            }
            WriterVersion => write!(f, "Bad writer version string"),
            PartName => write!(f, "Bad part name"),
            InvalidPartCompatible => write!(f, "Bad part compatible"),
            DuplicatePart => write!(f, "Duplicate part name"),
        }
    }
}

impl core::error::Error for ImageError {}
