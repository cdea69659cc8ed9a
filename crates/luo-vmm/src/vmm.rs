//! [`Vmm`]: a running VMM — its VM, guest memory, progress device and luod session — the
//! upgrade (starting the successor, stopping the guest, handing off, reporting) and the live
//! migrate of guest RAM onto new backing ([`migrate`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use luo_client::{Device, Session};
use luo_guestmem::{Backing, GuestMemory, HostMapping, PageSize};

use crate::copy::Copier;
use crate::error::Error;
use crate::guest;
use crate::handoff::{self, Outgoing};
use crate::migrate::{self, FailAt, Prepared, Source};
use crate::progress::{Progress, now_ns};
use crate::vm::{Vm, step};

/// How long a predecessor waits for its successor to be ready, and then to resume the guest.
const SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a VMM lives: its session, luod's socket, its control socket.
#[derive(Clone, Debug)]
pub struct Config {
    /// The luod session (and VM) name.
    pub name: String,
    /// luod's socket.
    pub luod_socket: PathBuf,
    /// This VMM's control socket.
    pub control: PathBuf,
}

/// A request to the vCPU loop.
#[derive(Debug)]
enum Request {
    Status(Sender<String>),
    Handoff(OwnedFd, Sender<Result<String, String>>),
    Stop(Sender<String>),
    /// A migrate begins: a mapping of the guest's RAM to copy from, and the rest of the source.
    MigrateBegin(Sender<Result<(HostMapping, Source), String>>),
    /// A migrate's pause: finish the copy, switch the memory slot, run the guest again (or,
    /// if true, fail on purpose before the switch).
    MigrateSwitch(Box<Prepared>, bool, Sender<Switched>),
}

/// How a migrate's pause ended: the report and the old memory (for the migrating thread to
/// drop, outside the vCPU loop), or why not and the new memory back (the guest runs on the
/// old).
type Switched = Result<(String, Retired), (String, Box<Prepared>)>;

/// Guest memory a migrate moved off, with its mappings, and the copy engine (whose channel
/// threads are joined when it goes).
#[derive(Debug)]
struct Retired {
    _mem: GuestMemory,
    _slot: HostMapping,
    _src: HostMapping,
    _copier: Arc<Copier>,
}

#[derive(Debug)]
struct Shared {
    attention: AtomicBool,
    requests: Mutex<Vec<Request>>,
    /// The outgoing session; empty while a resumed VMM is still creating it.
    out: Mutex<Option<Outgoing>>,
    out_ready: Condvar,
    /// Guest memory size and page size, for the successor to prepare its memory slot.
    geometry: Mutex<(u64, PageSize)>,
    /// Why this VM cannot be upgraded, if it cannot.
    refuse: Option<String>,
    /// An upgrade or a migrate is under way (one at a time).
    busy: AtomicBool,
}

impl Shared {
    fn new(size: u64, page: PageSize) -> Shared {
        Shared {
            attention: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            out: Mutex::new(None),
            out_ready: Condvar::new(),
            geometry: Mutex::new((size, page)),
            refuse: None,
            busy: AtomicBool::new(false),
        }
    }

    /// Claims the VMM for an upgrade or a migrate, until the guard is dropped.
    fn claim(&self) -> Result<Busy<'_>, String> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err("another upgrade or migrate is under way".into());
        }
        Ok(Busy(&self.busy))
    }

    fn geometry(&self) -> (u64, PageSize) {
        *self.geometry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_out(&self, out: Outgoing) {
        *self.out.lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
        self.out_ready.notify_all();
    }

    /// Waits until the outgoing session exists.
    fn wait_out(&self, within: Duration) -> bool {
        let guard = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .out_ready
            .wait_timeout_while(guard, within, |o| o.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.is_some()
    }
}

/// An upgrade or migrate under way; dropping it ends the claim.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Shared {
    fn post(&self, r: Request) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r);
        self.attention.store(true, Ordering::Release);
    }
}

/// A running VMM.
#[derive(Debug)]
pub struct Vmm {
    config: Config,
    vm: Vm,
    mem: GuestMemory,
    progress: Progress,
    shared: Arc<Shared>,
    listener: OwnedFd,
    /// The longest interval between two guest steps since this VMM resumed the guest (the
    /// blackouts themselves excluded): proof that nothing else paused it.
    max_gap_ns: u64,
    /// The longest interval between two guest steps since the last migrate began: how much
    /// the pre-copy slowed the guest.
    recent_gap_ns: u64,
    /// Live migrates of guest RAM this VMM did.
    migrations: u64,
}

/// How the vCPU loop ended.
#[derive(Debug)]
pub enum Outcome {
    /// Handed off to a successor.
    HandedOff,
    /// Stopped by request.
    Stopped,
}

impl Vmm {
    /// Boots a new guest with `size` bytes of RAM on `page` pages and preserves it into a new
    /// session.
    pub fn boot(config: Config, size: u64, page: PageSize) -> Result<Vmm, Error> {
        let mut vm = Vm::prepare()?;
        let mut mem = GuestMemory::create(size, page)?;
        mem.set_ram_token(handoff::RAM_TOKEN)?;
        vm.attach(&mem)?;
        vm.boot()?;
        let device = Device::open_at(&config.luod_socket)?;
        let out = handoff::preserve(&device, &config.name, mem.ram_fd(), mem.descriptor_fd())?;
        drop(device); // one device per uid: the successor opens its own
        let shared = Arc::new(Shared::new(size, page));
        shared.set_out(out);
        let control = ControlSocket::bind(&config.control)?;
        let listener = control.publish()?;
        Ok(Vmm {
            config,
            vm,
            mem,
            progress: Progress::boot(),
            shared,
            listener,
            max_gap_ns: 0,
            recent_gap_ns: 0,
            migrations: 0,
        })
    }

    /// Boots a guest whose RAM is a KVM guest_memfd of its VM (4 KiB pages). Such memory
    /// cannot outlive the VM, so nothing is preserved in luod and an upgrade is refused (the
    /// guest keeps running); see the `luo_guestmem` crate doc.
    pub fn boot_guest_memfd(config: Config, size: u64) -> Result<Vmm, Error> {
        let mut vm = Vm::prepare()?;
        let gmem = vm.create_guest_memfd(size)?;
        let mem = GuestMemory::from_guest_memfd(gmem, size)?;
        vm.attach_guest_memfd(&mem)?;
        vm.boot()?;
        let mut shared = Shared::new(size, PageSize::Base4K);
        shared.refuse = Some(
            "guest RAM is a KVM guest_memfd, bound to this VM: it cannot cross a VMM upgrade \
             (boot with a memfd or hugetlb memfd to upgrade)"
                .into(),
        );
        let control = ControlSocket::bind(&config.control)?;
        let listener = control.publish()?;
        Ok(Vmm {
            config,
            vm,
            mem,
            progress: Progress::boot(),
            shared: Arc::new(shared),
            listener,
            max_gap_ns: 0,
            recent_gap_ns: 0,
            migrations: 0,
        })
    }

    /// Takes over from a predecessor: `vm` was prepared before the guest stopped; `sock` (if
    /// any) is the handshake with the predecessor. Returns the VMM, running, and the report.
    pub fn resume(
        config: Config,
        mut vm: Vm,
        device: Device,
        sock: Option<&OwnedFd>,
        expect: Option<(u64, PageSize)>,
    ) -> Result<(Vmm, String), Error> {
        if let Some((size, page)) = expect {
            vm.reserve(size, page)?;
        }
        // Bound now, published (renamed over the predecessor's) once the guest runs here.
        let control = ControlSocket::bind(&config.control)?;
        let go = match sock {
            Some(s) => {
                handoff::send(s.as_fd(), "READY")?;
                let go = handoff::recv(s.as_fd(), SUCCESSOR_TIMEOUT)?;
                if !go.starts_with("GO") {
                    return Err(Error::Handoff(format!("predecessor said {go:?}")));
                }
                go
            }
            None => String::new(),
        };
        let t_go = now_ns();
        let stamp = |k: &str| handoff::field(&go, k).unwrap_or(0);
        let inc = handoff::retrieve(&device, &config.name)?;
        let t_retrieved = now_ns();
        vm.attach(&inc.mem)?;
        let t_attached = now_ns();
        let before = inc.state.progress;
        let counter = vm.guest_counter().unwrap_or(0);
        if u64::from(counter) != before.last.get() {
            return Err(Error::Progress(format!(
                "guest RAM counter {counter} but the last step reported was {}",
                before.last
            )));
        }
        vm.restore(&inc.state)?;
        let t_restored = now_ns();
        let mut progress = before;
        progress.upgrades = (progress.upgrades.get() + 1).into();
        let steps = progress.steps.get();
        let mut in_order = true;
        while progress.steps.get() == steps {
            in_order = step(&mut vm, &mut progress)?;
        }
        let first = progress.last.get();
        let t_first = progress.last_ns.get();
        let blackout = t_first.saturating_sub(before.last_ns.get());
        let report = format!(
            "RESUMED blackout_ns={blackout} last_before={} first_after={first} \
             counter_at_pause={} counter_at_resume={counter} lost={} repeated={} \
             pause_to_go_ns={} notice_ns={} save_ns={} handoff_ns={} \
             go_to_retrieved_ns={} attach_ns={} restore_ns={} \
             restored_to_first_ns={} steps={} anomalies={} upgrades={} mem={} pages={} pid={}",
            before.last,
            handoff::field(&go, "counter").unwrap_or(u64::from(counter)),
            u64::from(!in_order && first > before.last.get() + 1),
            u64::from(!in_order && first <= before.last.get()),
            t_go.saturating_sub(before.last_ns.get()),
            stamp("pause_ns").saturating_sub(before.last_ns.get()),
            stamp("saved_ns").saturating_sub(stamp("pause_ns")),
            stamp("handoff_ns").saturating_sub(stamp("saved_ns")),
            t_retrieved.saturating_sub(t_go),
            t_attached.saturating_sub(t_retrieved),
            t_restored.saturating_sub(t_attached),
            t_first.saturating_sub(t_restored),
            progress.steps,
            progress.anomalies,
            progress.upgrades,
            inc.mem.size(),
            inc.mem.page_size(),
            std::process::id(),
        );
        let listener = control.publish()?;
        if let Some(s) = sock {
            let _ = handoff::send(s.as_fd(), &report);
        }
        // Outside the blackout and while the guest runs: end the incoming session, start the
        // next outgoing one. An upgrade waits for it.
        let shared = Arc::new(Shared::new(inc.mem.size(), inc.mem.page_size()));
        let ram =
            rustix::io::fcntl_dupfd_cloexec(inc.mem.ram_fd(), 3).map_err(Error::sys("dup"))?;
        let desc = rustix::io::fcntl_dupfd_cloexec(inc.mem.descriptor_fd(), 3)
            .map_err(Error::sys("dup"))?;
        {
            let shared = Arc::clone(&shared);
            let name = config.name.clone();
            let session = inc.session;
            std::thread::spawn(move || {
                let r = session
                    .finish()
                    .map_err(Error::from)
                    .and_then(|()| handoff::preserve(&device, &name, ram.as_fd(), desc.as_fd()));
                match r {
                    Ok(out) => shared.set_out(out),
                    Err(e) => eprintln!("luo-vmm: cannot preserve the guest again: {e}"),
                }
            });
        }
        Ok((
            Vmm {
                config,
                vm,
                mem: inc.mem,
                progress,
                shared,
                listener,
                max_gap_ns: 0,
                recent_gap_ns: 0,
                migrations: 0,
            },
            report,
        ))
    }

    /// Serves the control socket and runs the guest until it is handed off or stopped.
    pub fn serve(mut self, sigusr1: Arc<AtomicBool>, binary: PathBuf) -> Result<Outcome, Error> {
        let shared = Arc::clone(&self.shared);
        let (done_tx, done_rx) = channel::<()>();
        let listener =
            rustix::io::fcntl_dupfd_cloexec(&self.listener, 3).map_err(Error::sys("dup"))?;
        {
            let shared = Arc::clone(&shared);
            let config = self.config.clone();
            let binary = binary.clone();
            let done_tx = done_tx.clone();
            std::thread::spawn(move || control_loop(listener, shared, config, binary, done_tx));
        }
        loop {
            let prev = self.progress.last_ns.get();
            let in_order = step(&mut self.vm, &mut self.progress)?;
            let gap = self.progress.last_ns.get() - prev;
            self.max_gap_ns = self.max_gap_ns.max(gap);
            self.recent_gap_ns = self.recent_gap_ns.max(gap);
            if !in_order {
                eprintln!(
                    "luo-vmm: guest step out of order at {} (anomaly {})",
                    self.progress.last, self.progress.anomalies
                );
            }
            if sigusr1.swap(false, Ordering::Relaxed) {
                let shared = Arc::clone(&shared);
                let config = self.config.clone();
                let binary = binary.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    let r = upgrade(&shared, &config, &binary);
                    eprintln!("luo-vmm: upgrade on SIGUSR1: {}", r.unwrap_or_else(|e| e));
                    let _ = done_tx.send(());
                });
            }
            if !shared.attention.swap(false, Ordering::Acquire) {
                continue;
            }
            let reqs: Vec<Request> = std::mem::take(
                &mut *shared
                    .requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            for r in reqs {
                match r {
                    Request::Status(tx) => {
                        let _ = tx.send(self.status());
                    }
                    Request::Stop(tx) => {
                        let _ = tx.send(format!("STOPPED {}", self.status()));
                        // Let the control thread write the reply before the process ends.
                        let _ = done_rx.recv_timeout(Duration::from_secs(2));
                        return Ok(Outcome::Stopped);
                    }
                    Request::MigrateBegin(tx) => {
                        self.recent_gap_ns = 0;
                        let _ = tx.send(self.migrate_source().map_err(|e| chain(&e)));
                    }
                    Request::MigrateSwitch(p, fail, tx) => match self.migrate_switch(p, fail)? {
                        Ok(done) => {
                            self.migrations += 1;
                            let _ = tx.send(Ok(done));
                        }
                        Err((e, p)) => {
                            let _ = tx.send(Err((chain(&e), p)));
                        }
                    },
                    Request::Handoff(sock, tx) => match self.hand_off(&sock) {
                        Ok(go) => {
                            let _ = tx.send(Ok(go));
                            drop(sock);
                            // Wait for the control thread to forward the report, then go.
                            let _ = done_rx.recv_timeout(SUCCESSOR_TIMEOUT * 2);
                            return Ok(Outcome::HandedOff);
                        }
                        Err(e) => {
                            let _ = handoff::send(sock.as_fd(), &format!("ABORT {e}"));
                            let _ = tx.send(Err(format!("{e}")));
                        }
                    },
                }
            }
        }
    }

    fn status(&self) -> String {
        format!(
            "pid={} steps={} last={} counter={} anomalies={} upgrades={} migrations={} max_gap_ns={} mem={} pages={} backing={:?} ram_fd={}",
            std::process::id(),
            self.progress.steps,
            self.progress.last,
            self.vm.guest_counter().unwrap_or(0),
            self.progress.anomalies,
            self.progress.upgrades,
            self.migrations,
            self.max_gap_ns,
            self.mem.size(),
            self.mem.page_size(),
            self.mem.backing(),
            self.mem.ram_fd().as_raw_fd(),
        )
    }

    /// A migrate begins (on the vCPU loop, between two guest steps): a new mapping of all of
    /// guest RAM to copy from, the dirty log, and the old memory's descriptor and files.
    fn migrate_source(&self) -> Result<(HostMapping, Source), Error> {
        if self.mem.backing() == Backing::GuestMemfd {
            return Err(Error::Migrate(
                "guest RAM is a KVM guest_memfd: KVM keeps no dirty log of it, so it cannot be \
                 re-backed under a running guest"
                    .into(),
            ));
        }
        let dup = |fd| rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(Error::sys("dup"));
        let map = self.mem.map(0..self.mem.size())?;
        Ok((
            map,
            Source {
                log: self.vm.dirty_log(),
                descriptor: self.mem.to_descriptor(),
                ram: dup(self.mem.ram_fd())?,
                descriptor_fd: dup(self.mem.descriptor_fd())?,
                steps: self.progress.steps.get(),
            },
        ))
    }

    /// A migrate's pause: stop the vCPU, copy the pages the guest dirtied since the last round,
    /// check the guest's counter arrived, switch slot 0 onto the new memory, and run the guest
    /// until its next step. The inner error (with the new memory back) leaves the guest
    /// running on the old memory, untouched; the outer one is the guest failing to run.
    #[allow(clippy::type_complexity)]
    fn migrate_switch(
        &mut self,
        mut p: Box<Prepared>,
        fail: bool,
    ) -> Result<Result<(String, Retired), (Error, Box<Prepared>)>, Error> {
        let before = self.progress;
        let t_pause = now_ns();
        if let Err(e) = self.vm.quiesce() {
            return Ok(Err((e, p)));
        }
        let counter_old = self.vm.guest_counter().unwrap_or(0);
        let t_quiesced = now_ns();
        let final_pages = match p.finish_copy() {
            Ok(n) => n,
            Err(e) => return Ok(Err((e, p))),
        };
        let t_copied = now_ns();
        let counter_new = p
            .dst
            .read_u64(guest::COUNTER as usize)
            .map_or(0, |v| v as u32);
        if u64::from(counter_new) != before.last.get() {
            let e = Error::Progress(format!(
                "the new guest RAM holds counter {counter_new} but the last step reported was {}",
                before.last
            ));
            return Ok(Err((e, p)));
        }
        if fail {
            let e = Error::Migrate("failed on purpose in the pause, before the switch".into());
            return Ok(Err((e, p)));
        }
        let Prepared {
            mem,
            dst,
            src,
            log,
            copier,
            stats,
        } = *p;
        let old_slot = match self.vm.switch_memory(dst) {
            Ok(m) => m,
            Err(refused) => {
                let (e, dst) = *refused;
                let p = Prepared {
                    mem,
                    dst,
                    src,
                    log,
                    copier,
                    stats,
                };
                return Ok(Err((e, Box::new(p))));
            }
        };
        let t_switched = now_ns();
        let old_mem = std::mem::replace(&mut self.mem, mem);
        *self
            .shared
            .geometry
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (self.mem.size(), self.mem.page_size());
        let steps = self.progress.steps.get();
        let mut in_order = true;
        while self.progress.steps.get() == steps {
            in_order = step(&mut self.vm, &mut self.progress)?;
        }
        let first = self.progress.last.get();
        let t_first = self.progress.last_ns.get();
        let rounds: Vec<String> = stats.round_pages.iter().map(u64::to_string).collect();
        let report = format!(
            "MIGRATED blackout_ns={} last_before={} first_after={first} \
             counter_at_pause={counter_old} counter_at_resume={counter_new} lost={} repeated={} \
             from={} to={} rounds={} round_pages={} final_pages={final_pages} \
             full_bytes={} units={} units_fallback={} driver={} \
             create_ns={} log_on_ns={} full_copy_ns={} precopy_ns={} steps_during_precopy={} \
             precopy_max_gap_ns={} \
             notice_ns={} quiesce_ns={} final_copy_ns={} switch_ns={} switched_to_first_ns={} \
             steps={} anomalies={} migrations={} mem={} pages={} pid={}",
            t_first.saturating_sub(before.last_ns.get()),
            before.last,
            u64::from(!in_order && first > before.last.get() + 1),
            u64::from(!in_order && first <= before.last.get()),
            old_mem.page_size(),
            self.mem.page_size(),
            stats.rounds(),
            if rounds.is_empty() {
                "-".to_owned()
            } else {
                rounds.join(",")
            },
            stats.full_bytes,
            stats.units,
            stats.units_fallback,
            copier.stats().driver.as_deref().unwrap_or("cpu"),
            stats.create_ns,
            stats.log_on_ns,
            stats.full_ns,
            stats.precopy_ns,
            steps.saturating_sub(stats.steps_at_start),
            self.recent_gap_ns,
            t_pause.saturating_sub(before.last_ns.get()),
            t_quiesced - t_pause,
            t_copied - t_quiesced,
            t_switched - t_copied,
            t_first.saturating_sub(t_switched),
            self.progress.steps,
            self.progress.anomalies,
            self.migrations + 1,
            self.mem.size(),
            self.mem.page_size(),
            std::process::id(),
        );
        drop(log);
        Ok(Ok((
            report,
            Retired {
                _mem: old_mem,
                _slot: old_slot,
                _src: src,
                _copier: copier,
            },
        )))
    }

    /// The pause: stop the vCPU, save its state, hand the session off, tell the successor.
    /// On failure before the handoff, the guest keeps running here.
    fn hand_off(&mut self, sock: &OwnedFd) -> Result<String, Error> {
        let t_pause = now_ns();
        self.vm.quiesce()?;
        let counter = self.vm.guest_counter().unwrap_or(0);
        let st = self.vm.save(self.progress)?;
        let mut slot = self
            .shared
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let out = slot
            .as_ref()
            .ok_or(Error::Handoff("no outgoing session yet".into()))?;
        handoff::write_state(out.state.as_fd(), &st.encode())?;
        let t_saved = now_ns();
        out.session.handoff()?;
        *slot = None;
        let t_handoff = now_ns();
        let go = format!(
            "GO last_ns={} pause_ns={t_pause} saved_ns={t_saved} handoff_ns={t_handoff} counter={counter}",
            self.progress.last_ns
        );
        handoff::send(sock.as_fd(), &go)?;
        Ok(go)
    }
}

/// A control socket bound and listening beside its final path, until [`publish`] renames it
/// over the path (atomically replacing a predecessor's).
///
/// [`publish`]: ControlSocket::publish
#[derive(Debug)]
struct ControlSocket {
    fd: OwnedFd,
    tmp: PathBuf,
    path: PathBuf,
}

impl ControlSocket {
    fn bind(path: &Path) -> Result<ControlSocket, Error> {
        let tmp = path.with_extension(format!("{}.new", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let fd = bind_at(&tmp)?;
        Ok(ControlSocket {
            fd,
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn publish(self) -> Result<OwnedFd, Error> {
        rustix::fs::rename(&self.tmp, &self.path).map_err(Error::sys("rename"))?;
        Ok(self.fd)
    }
}

fn bind_at(tmp: &Path) -> Result<OwnedFd, Error> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(Error::sys("socket"))?;
    let addr = rustix::net::SocketAddrUnix::new(tmp).map_err(Error::sys("control socket path"))?;
    rustix::net::bind(&fd, &addr).map_err(Error::sys("bind"))?;
    rustix::net::listen(&fd, 16).map_err(Error::sys("listen"))?;
    Ok(fd)
}

fn control_loop(
    listener: OwnedFd,
    shared: Arc<Shared>,
    config: Config,
    binary: PathBuf,
    done_tx: Sender<()>,
) {
    loop {
        let Ok(conn) = rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC)
        else {
            continue;
        };
        let mut buf = vec![0u8; 4096];
        let n = rustix::io::read(&conn, &mut buf).unwrap_or(0);
        let line = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("status") => ask(&shared, Request::Status),
            Some("stop") => {
                let reply = ask(&shared, Request::Stop);
                let _ = write_all(&conn, format!("{reply}\n").as_bytes());
                let _ = done_tx.send(());
                return;
            }
            Some("migrate") => {
                let to = words.next().map(str::parse::<PageSize>);
                let fail_at = words
                    .next()
                    .and_then(|w| w.strip_prefix("fail-at="))
                    .map(str::parse::<FailAt>);
                match (to, fail_at) {
                    (Some(Ok(to)), None) => migrate(&shared, to, None),
                    (Some(Ok(to)), Some(Ok(f))) => migrate(&shared, to, Some(f)),
                    (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
                    (None, _) => Err("migrate needs a page size: migrate 4k|2m|1g".into()),
                }
                .unwrap_or_else(|e| format!("ERROR {e}"))
            }
            Some("upgrade") => {
                let bin = words.next().map_or_else(|| binary.clone(), PathBuf::from);
                let r = upgrade(&shared, &config, &bin);
                let ok = r.is_ok();
                let text = r.unwrap_or_else(|e| format!("ERROR {e}"));
                let _ = write_all(&conn, format!("{text}\n").as_bytes());
                if ok {
                    let _ = done_tx.send(());
                    return;
                }
                continue;
            }
            _ => format!(
                "ERROR unknown command {line:?} (status, upgrade [BINARY], migrate 4k|2m|1g, stop)"
            ),
        };
        let _ = write_all(&conn, format!("{reply}\n").as_bytes());
    }
}

fn ask(shared: &Shared, make: impl FnOnce(Sender<String>) -> Request) -> String {
    let (tx, rx) = channel();
    shared.post(make(tx));
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| "ERROR the vCPU loop did not answer".into())
}

fn write_all(fd: &OwnedFd, mut b: &[u8]) -> rustix::io::Result<()> {
    while !b.is_empty() {
        let n = rustix::io::write(fd, b)?;
        b = &b[n..];
    }
    Ok(())
}

/// Starts `binary resume` as the successor, waits until it is ready, has the vCPU loop hand
/// off, and returns the successor's report. Runs on a thread other than the vCPU's.
fn upgrade(shared: &Shared, config: &Config, binary: &Path) -> Result<String, String> {
    if let Some(why) = &shared.refuse {
        return Err(why.clone());
    }
    let _busy = shared.claim()?;
    if !shared.wait_out(SUCCESSOR_TIMEOUT) {
        return Err("the guest is not preserved in luod (no outgoing session)".into());
    }
    let geometry = shared.geometry();
    let (ours, theirs) = handoff::socket_pair().map_err(|e| e.to_string())?;
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    let mut child = Command::new(binary)
        .arg("resume")
        .arg("--session")
        .arg(&config.name)
        .arg("--luod-socket")
        .arg(&config.luod_socket)
        .arg("--control")
        .arg(&config.control)
        .arg("--handoff-fd")
        .arg(theirs.as_raw_fd().to_string())
        .arg("--mem")
        .arg(geometry.0.to_string())
        .arg("--pages")
        .arg(geometry.1.name())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    drop(theirs);
    let ready = handoff::recv(ours.as_fd(), SUCCESSOR_TIMEOUT);
    if !matches!(ready.as_deref(), Ok("READY")) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("successor not ready: {ready:?}"));
    }
    let sock = rustix::io::fcntl_dupfd_cloexec(&ours, 3).map_err(|e| e.to_string())?;
    let (tx, rx): (Sender<Result<String, String>>, Receiver<_>) = channel();
    shared.post(Request::Handoff(sock, tx));
    let go = rx
        .recv_timeout(SUCCESSOR_TIMEOUT)
        .map_err(|_| "the vCPU loop did not hand off".to_string())??;
    let report = handoff::recv(ours.as_fd(), SUCCESSOR_TIMEOUT).map_err(|e| {
        format!("handed off ({go}) but the successor did not report: {e}; the session waits in luod for `luo-vmm resume`")
    })?;
    Ok(report)
}

/// An error with its sources: `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut at = e.source();
    while let Some(src) = at {
        s.push_str(": ");
        s.push_str(&src.to_string());
        at = src.source();
    }
    s
}

/// Moves the running guest's RAM onto new memory of `to` pages (see [`migrate`](crate::migrate))
/// and returns the pause's report. Runs on a thread other than the vCPU's. Every failure before
/// the switch leaves the guest on its old memory, and luod's session holding the old files.
/// `fail_at` makes it fail on purpose there (tests of the way back).
fn migrate(shared: &Shared, to: PageSize, fail_at: Option<FailAt>) -> Result<String, String> {
    let _busy = shared.claim()?;
    let t_start = now_ns();
    let (tx, rx) = channel();
    shared.post(Request::MigrateBegin(tx));
    let (src, source) = rx
        .recv_timeout(SUCCESSOR_TIMEOUT)
        .map_err(|_| "the vCPU loop did not answer".to_string())??;
    if !shared.wait_out(SUCCESSOR_TIMEOUT) {
        return Err("the guest is not preserved in luod (no outgoing session)".into());
    }
    let copier = Arc::new(Copier::new());
    let prepared = migrate::precopy(src, &source, to, copier).map_err(|e| chain(&e))?;
    let t_copied = now_ns();
    // luod's session gets the new files before the pause, the old ones back if it fails.
    {
        let out = shared.out.lock().unwrap_or_else(PoisonError::into_inner);
        let replaced = out
            .as_ref()
            .ok_or_else(|| "the guest is not preserved in luod (no outgoing session)".to_owned())
            .and_then(|out| {
                replace_files(
                    &out.session,
                    prepared.mem.ram_fd(),
                    prepared.mem.descriptor_fd(),
                    &source,
                )
            });
        if let Err(e) = replaced {
            let _ = prepared.log.stop();
            return Err(format!("{e}; the guest continues on its old memory"));
        }
    }
    if fail_at == Some(FailAt::Replace) {
        return Err(undo(
            shared,
            &source,
            &prepared,
            "failed on purpose after luod took the new files".into(),
        ));
    }
    let t_replaced = now_ns();
    let (tx, rx) = channel();
    let fail = fail_at == Some(FailAt::Pause);
    shared.post(Request::MigrateSwitch(Box::new(prepared), fail, tx));
    match rx.recv_timeout(SUCCESSOR_TIMEOUT) {
        Ok(Ok((report, retired))) => {
            let t_done = now_ns();
            drop(retired);
            Ok(format!(
                "{report} replace_ns={} total_ns={} release_ns={}",
                t_replaced - t_copied,
                t_done - t_start,
                now_ns() - t_done
            ))
        }
        Ok(Err((e, prepared))) => Err(undo(shared, &source, &prepared, e)),
        // The vCPU loop holds the new memory: whether it switched is unknown, so luod's session
        // stays as it is (it has the new files, which the loop uses if it switched).
        Err(_) => Err("the vCPU loop did not pause for the switch".into()),
    }
}

/// The way back from a migrate that failed before the switch: dirty logging off, luod's
/// session holding the old files again. Returns the message for `why`.
fn undo(shared: &Shared, old: &Source, prepared: &Prepared, why: String) -> String {
    let _ = prepared.log.stop();
    let out = shared.out.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(out) = out.as_ref()
        && let Err(b) = replace_files(
            &out.session,
            old.ram.as_fd(),
            old.descriptor_fd.as_fd(),
            old,
        )
    {
        return format!(
            "{why}; the guest continues on its old memory, but luod's session could not take it back: {b}"
        );
    }
    format!("{why}; the guest continues on its old memory")
}

/// Swaps guest RAM and descriptor in luod's session for `ram` and `descriptor`; if the second
/// swap fails, puts the old RAM (from `old`) back.
fn replace_files(
    session: &Session,
    ram: std::os::fd::BorrowedFd<'_>,
    descriptor: std::os::fd::BorrowedFd<'_>,
    old: &Source,
) -> Result<(), String> {
    let token = old.descriptor.ram_token.unwrap_or(handoff::RAM_TOKEN);
    session
        .replace(token, ram)
        .map_err(|e| format!("luod did not take the new guest RAM: {}", chain(&e)))?;
    if let Err(e) = session.replace(handoff::DESCRIPTOR_TOKEN, descriptor) {
        let _ = session.replace(token, old.ram.as_fd());
        return Err(format!(
            "luod did not take the new guest memory descriptor: {}",
            chain(&e)
        ));
    }
    Ok(())
}
