//! A test handler and FLB on real memfds, with injectable failures and a call log.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use luo_abi::Errno;
use luo_core::{
    Engine, FileData, FileHandler, Flb, HandlerError, Preserved, Registry, RetrieveStatus,
};
use rustix::fs::{MemfdFlags, memfd_create};

/// Failures to inject, by token (or for every preserve).
#[derive(Debug, Default)]
pub struct Faults {
    pub preserve: bool,
    pub freeze: HashSet<u64>,
    pub retrieve: HashSet<u64>,
    pub veto: HashSet<u64>,
    pub flb_preserve: bool,
}

pub type Log = Arc<Mutex<Vec<String>>>;

pub fn log_take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// Accepts memfds whose name starts with `prefix`.
#[derive(Debug)]
pub struct TestHandler {
    pub compatible: String,
    pub prefix: String,
    pub log: Log,
    pub faults: Arc<Mutex<Faults>>,
}

fn link(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl TestHandler {
    fn note(&self, what: String) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{what}", self.compatible));
    }
}

/// The size a test record starts with (`"<size>:..."`).
fn record_size(record: &[u8]) -> u64 {
    std::str::from_utf8(record)
        .ok()
        .and_then(|r| r.split(':').next()?.parse().ok())
        .unwrap_or(0)
}

impl FileHandler for TestHandler {
    fn compatible(&self) -> &str {
        &self.compatible
    }
    fn can_preserve(&self, fd: BorrowedFd<'_>) -> bool {
        link(fd).starts_with(&format!("/memfd:{}", self.prefix))
    }
    fn preserve(&self, fd: BorrowedFd<'_>) -> Result<Preserved, HandlerError> {
        if self.faults.lock().unwrap().preserve {
            self.note("preserve-fail".into());
            return Err(HandlerError::new(
                Errno::ENOMEM,
                "injected preserve failure",
            ));
        }
        let held =
            rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| HandlerError::from_io("dup", e))?;
        let size = rustix::fs::fstat(fd)
            .map_err(|e| HandlerError::from_io("fstat", e))?
            .st_size;
        self.note("preserve".into());
        Ok(Preserved {
            fd: held,
            record: format!("{size}:test-record").into_bytes(),
            bytes: size as u64,
        })
    }
    fn record_bytes(&self, record: &[u8]) -> u64 {
        record_size(record)
    }
    fn unpreserve(&self, file: &mut FileData) {
        self.note(format!("unpreserve {}", file.token));
    }
    fn freeze(&self, file: &mut FileData) -> Result<(), HandlerError> {
        if self.faults.lock().unwrap().freeze.contains(&file.token) {
            self.note(format!("freeze-fail {}", file.token));
            return Err(HandlerError::new(Errno::EIO, "injected freeze failure"));
        }
        self.note(format!("freeze {}", file.token));
        file.record = format!("{}:frozen {}", record_size(&file.record), file.token).into_bytes();
        Ok(())
    }
    fn unfreeze(&self, file: &mut FileData) {
        self.note(format!("unfreeze {}", file.token));
        file.record = format!("{}:test-record", record_size(&file.record)).into_bytes();
    }
    fn retrieve(&self, file: &FileData) -> Result<OwnedFd, HandlerError> {
        if self.faults.lock().unwrap().retrieve.contains(&file.token) {
            self.note(format!("retrieve-fail {}", file.token));
            return Err(HandlerError::new(Errno::EIO, "injected retrieve failure"));
        }
        self.note(format!("retrieve {}", file.token));
        rustix::io::fcntl_dupfd_cloexec(file.fd.as_fd(), 0)
            .map_err(|e| HandlerError::from_io("dup", e))
    }
    fn can_finish(&self, file: &FileData, status: RetrieveStatus) -> bool {
        self.note(format!("can_finish {} {:?}", file.token, status));
        !self.faults.lock().unwrap().veto.contains(&file.token)
    }
    fn finish(&self, file: &mut FileData, status: RetrieveStatus) {
        self.note(format!("finish {} {:?}", file.token, status));
    }
}

/// An FLB that logs and serializes a counter of its preserves.
#[derive(Debug)]
pub struct TestFlb {
    pub compatible: String,
    pub log: Log,
    pub faults: Arc<Mutex<Faults>>,
    pub incoming: Mutex<Option<Vec<u8>>>,
}

impl TestFlb {
    fn note(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{what}", self.compatible));
    }
}

impl Flb for TestFlb {
    fn compatible(&self) -> &str {
        &self.compatible
    }
    fn preserve(&self) -> Result<(), HandlerError> {
        if self.faults.lock().unwrap().flb_preserve {
            self.note("preserve-fail");
            return Err(HandlerError::new(Errno::ENODEV, "injected FLB failure"));
        }
        self.note("preserve");
        Ok(())
    }
    fn unpreserve(&self) {
        self.note("unpreserve");
    }
    fn serialize(&self) -> Vec<u8> {
        self.compatible.as_bytes().to_vec()
    }
    fn retrieve(&self, data: &[u8]) -> Result<(), HandlerError> {
        self.note(&format!("retrieve {}", String::from_utf8_lossy(data)));
        *self.incoming.lock().unwrap() = Some(data.to_vec());
        Ok(())
    }
    fn finish(&self) {
        self.note("finish");
    }
}

/// A registry with handlers "test-a" (memfds named a*) and "test-b" (memfds named b* and a*,
/// registered second) and FLB "flb-x" linked to test-a.
pub struct Fixture {
    pub registry: Arc<Registry>,
    pub log: Log,
    pub faults: Arc<Mutex<Faults>>,
}

pub fn fixture() -> Fixture {
    let log: Log = Arc::default();
    let faults: Arc<Mutex<Faults>> = Arc::default();
    let mut registry = Registry::new();
    for (c, p) in [("test-a", "a"), ("test-b", "")] {
        registry
            .register_handler(Arc::new(TestHandler {
                compatible: c.into(),
                prefix: p.into(),
                log: log.clone(),
                faults: faults.clone(),
            }))
            .unwrap();
    }
    registry
        .register_flb(
            "test-a",
            Arc::new(TestFlb {
                compatible: "flb-x".into(),
                log: log.clone(),
                faults: faults.clone(),
                incoming: Mutex::new(None),
            }),
        )
        .unwrap();
    Fixture {
        registry: Arc::new(registry),
        log,
        faults,
    }
}

impl Fixture {
    pub fn engine(&self) -> Engine {
        Engine::new(self.registry.clone())
    }
    pub fn log(&self) -> Vec<String> {
        log_take(&self.log)
    }
}

/// A memfd named `name` holding `data`.
pub fn memfd(name: &str, data: &[u8]) -> OwnedFd {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::io::write(&fd, data).unwrap();
    fd
}

pub fn errno<T: std::fmt::Debug>(r: Result<T, luo_core::Error>) -> Errno {
    r.expect_err("expected an error").errno()
}
