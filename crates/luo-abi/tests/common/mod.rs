//! Helpers shared by the image tests: a model of an image's contents that can be written and
//! read back, a small sample image with a known layout, and byte-level tampering.
#![allow(dead_code, clippy::unwrap_used)]

use luo_abi::image::{
    FLB_INCOMING, FileSpec, Image, ImageError, ImageWriter, NO_FD, SESSION_INCOMING, SessionSpec,
};

/// Everything an image holds, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub generation: u64,
    pub writer: String,
    pub fds: Vec<(i32, u32)>,
    pub sessions: Vec<ModelSession>,
    pub flbs: Vec<ModelFlb>,
    /// (name, compatible, data), in tree order once read back.
    pub parts: Vec<(String, String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSession {
    pub name: Vec<u8>,
    pub owner: u32,
    pub flags: u32,
    pub seq: u64,
    pub files: Vec<ModelFile>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    pub compatible: String,
    pub token: u64,
    pub fd_index: Option<u32>,
    pub open_fd_index: Option<u32>,
    pub status: i32,
    pub flags: u32,
    pub record: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFlb {
    pub compatible: String,
    pub count: u64,
    pub flags: u32,
    pub data: Vec<u8>,
}

impl Model {
    pub fn empty() -> Self {
        Model {
            generation: 0,
            writer: String::new(),
            fds: vec![],
            sessions: vec![],
            flbs: vec![],
            parts: vec![],
        }
    }

    pub fn write(&self) -> Result<Vec<u8>, ImageError> {
        let mut w = ImageWriter::new(self.generation, &self.writer);
        for &(fd, mode) in &self.fds {
            w.add_fd(fd, mode);
        }
        for s in &self.sessions {
            let spec = SessionSpec {
                name: &s.name,
                owner: s.owner,
                flags: s.flags,
                seq: s.seq,
            };
            let files = s.files.iter().map(|f| FileSpec {
                compatible: &f.compatible,
                token: f.token,
                fd_index: f.fd_index.unwrap_or(NO_FD),
                open_fd_index: f.open_fd_index.unwrap_or(NO_FD),
                status: f.status,
                flags: f.flags,
                record: &f.record,
            });
            w.add_session(&spec, files)?;
        }
        for f in &self.flbs {
            w.add_flb(&f.compatible, f.count, f.flags, &f.data)?;
        }
        for (name, compatible, data) in &self.parts {
            w.add_part(name, compatible, data)?;
        }
        w.finish()
    }

    pub fn read(bytes: &[u8]) -> Result<Self, ImageError> {
        let image = Image::parse(bytes)?;
        let sessions: Vec<ModelSession> = image
            .sessions()
            .map(|s| ModelSession {
                name: s.name().to_vec(),
                owner: s.owner(),
                flags: s.flags(),
                seq: s.seq(),
                files: s
                    .files()
                    .map(|f| ModelFile {
                        compatible: f.compatible.to_owned(),
                        token: f.token,
                        fd_index: f.fd_index,
                        open_fd_index: f.open_fd_index,
                        status: f.status,
                        flags: f.flags,
                        record: f.record.to_vec(),
                    })
                    .collect(),
            })
            .collect();
        for (s, view) in sessions.iter().zip(image.sessions()) {
            assert_eq!(s.files.len() as u64, view.file_count());
        }
        assert_eq!(sessions.len() as u64, image.session_count());
        let parts: Vec<_> = image
            .parts()
            .map(|(name, p)| (name, p.compatible.to_owned(), p.data.to_vec()))
            .collect();
        for (name, compatible, data) in &parts {
            let p = image.part(name).unwrap();
            assert_eq!(
                (p.compatible, p.data),
                (compatible.as_str(), data.as_slice())
            );
        }
        Ok(Model {
            generation: image.generation(),
            writer: image.writer().to_owned(),
            fds: image
                .fds()
                .iter()
                .map(|e| (e.fd.get(), e.mode_type.get()))
                .collect(),
            sessions,
            flbs: image
                .flbs()
                .map(|f| ModelFlb {
                    compatible: f.compatible.to_owned(),
                    count: f.count,
                    flags: f.flags,
                    data: f.data.to_vec(),
                })
                .collect(),
            parts,
        })
    }

    /// The model as it reads back: parts sorted by name components.
    pub fn normalized(&self) -> Self {
        let mut m = self.clone();
        m.parts.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        m
    }
}

pub fn file(compatible: &str, token: u64, fd_index: Option<u32>, record: &[u8]) -> ModelFile {
    ModelFile {
        compatible: compatible.into(),
        token,
        fd_index,
        open_fd_index: None,
        status: 0,
        flags: 0,
        record: record.to_vec(),
    }
}

pub fn session(name: &str, flags: u32, files: Vec<ModelFile>) -> ModelSession {
    ModelSession {
        name: name.as_bytes().to_vec(),
        owner: 1000,
        flags,
        seq: 0,
        files,
    }
}

pub const S_IFREG: u32 = 0o100000;
pub const S_IFSOCK: u32 = 0o140000;

/// The sample image. Its payload, from `B = base(bytes)` (the first byte after the space the
/// writer keeps for the FDT), in payload order:
///
/// | offset | what                                                                |
/// |--------|---------------------------------------------------------------------|
/// | B      | alpha's file block: 2 files (token 1, fd slot 0, record; token 2)   |
/// | B+192  | alpha's record (8 bytes)                                            |
/// | B+200  | beta's file block: 1 file (token 7, fd slots 1 and 2, status 1)    |
/// | B+304  | beta's record (8 bytes)                                             |
/// | B+312  | session block: "alpha" (outgoing), "beta" (incoming)                |
/// | B+520  | FLB block: 1 FLB                                                    |
/// | B+616  | FLB data (8 bytes)                                                  |
/// | B+624  | fd table: fd 10, fd 11, fd 12                                       |
/// | B+648  | part data: "handlers/memfd-v1" (8), "luod" (8)                      |
pub fn sample_model() -> Model {
    Model {
        generation: 7,
        writer: "luod 0.1.0".into(),
        fds: vec![(10, S_IFREG), (11, S_IFSOCK), (12, S_IFSOCK)],
        sessions: vec![
            session(
                "alpha",
                0,
                vec![
                    file("memfd-v1", 1, Some(0), b"record-0"),
                    file("fdref-v1", 2, None, b""),
                ],
            ),
            session(
                "beta",
                SESSION_INCOMING,
                vec![ModelFile {
                    status: 1,
                    open_fd_index: Some(2),
                    ..file("memfd-v1", 7, Some(1), b"record-7")
                }],
            ),
        ],
        flbs: vec![ModelFlb {
            compatible: "pci-v1".into(),
            count: 1,
            flags: FLB_INCOMING,
            data: b"pci-data".to_vec(),
        }],
        parts: vec![
            ("luod".into(), "luod-daemon-v1".into(), b"state".to_vec()),
            (
                "handlers/memfd-v1".into(),
                "memfd-global-v1".into(),
                b"global".to_vec(),
            ),
        ],
    }
}

pub fn sample() -> Vec<u8> {
    sample_model().write().unwrap()
}

/// Where the payload may start: the FDT's `totalsize`, rounded up to 8.
pub fn fdt_end(bytes: &[u8]) -> usize {
    (u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize).next_multiple_of(8)
}

/// A big-endian `u64` property of the node at `path`.
pub fn prop(bytes: &[u8], path: &[&str], name: &str) -> u64 {
    let at = luo_abi::image::property_offset(bytes, path, name).unwrap();
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Offset of the entry of session `i` (in the first session block).
pub fn session_entry(bytes: &[u8], i: usize) -> usize {
    prop(bytes, &["sessions"], "head") as usize + 16 + i * 96
}

/// `files_head` of session `i` (in the first session block).
pub fn files_head(bytes: &[u8], i: usize) -> usize {
    get_u64(bytes, session_entry(bytes, i) + 72) as usize
}

/// The first byte of the sample's payload: its first session's first file block.
pub fn base(bytes: &[u8]) -> usize {
    files_head(bytes, 0)
}

pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

pub fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_be64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Applies `f` to a copy of `bytes`, reseals it (length and checksum) and parses it.
pub fn tampered(bytes: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Result<(), ImageError> {
    let mut b = bytes.to_vec();
    f(&mut b);
    luo_abi::image::reseal(&mut b).unwrap();
    Image::parse(&b).map(|_| ())
}
