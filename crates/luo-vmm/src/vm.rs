//! [`Vm`]: one KVM VM with one vCPU, whose RAM is a luo-guestmem object.
//!
//! KVM's VM and vCPU descriptors are bound to the process that created them (ioctls from
//! another `mm` fail), so every VMM generation builds its own `Vm`. Only guest RAM crosses an
//! upgrade. [`Vm::prepare`] does everything that needs no guest memory — and so can run while
//! the predecessor's guest is still running.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, kvm_create_guest_memfd,
    kvm_userspace_memory_region, kvm_userspace_memory_region2,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use luo_guestmem::{GuestMemory, HostMapping, PageSize, Reservation};

use crate::error::Error;
use crate::guest;
use crate::progress::{Progress, now_ns};
use crate::state::{self, VmState};

/// Where the TSS goes (a page KVM needs on Intel; the top of the 32-bit space, as QEMU).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// What one run of the vCPU ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The guest reported a step.
    Progress(u32),
    /// A signal interrupted `KVM_RUN` (SIGUSR1 asking for an upgrade): nothing happened.
    Interrupted,
}

/// What memory slot 0 is registered as: host address, size, flags (`None`: no slot).
type SlotCell = Arc<Mutex<Option<Region>>>;

/// A registration of memory slot 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    addr: u64,
    size: u64,
    flags: u32,
}

/// A VM, its vCPU and (once attached) its guest memory mapping.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    vm: Arc<VmFd>,
    /// Slot 0 as last registered. Every change of the slot happens under this lock, so
    /// a [`DirtyLog`] on another thread only ever re-registers what is there.
    slot: SlotCell,
    vcpu: VcpuFd,
    msrs: Vec<u32>,
    xsave: bool,
    // Dropped after `vm`: the VM goes before the memory it could touch.
    mapping: Option<HostMapping>,
    reservation: Option<(Reservation, PageSize)>,
}

impl Vm {
    /// Creates the VM, its interrupt controllers and its vCPU (with the CPUID KVM supports).
    /// No guest memory yet.
    pub fn prepare() -> Result<Vm, Error> {
        let kvm = Kvm::new().map_err(Error::kvm("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        let supported = kvm
            .get_msr_index_list()
            .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?;
        let msrs = state::MSRS
            .into_iter()
            .filter(|m| supported.as_slice().contains(m))
            .collect();
        // The legacy 4 KiB XSAVE area holds everything unless KVM says it needs more.
        let xsave_size = kvm.check_extension_int(Cap::Xsave2);
        let xsave = kvm.check_extension(Cap::Xsave) && (xsave_size == 0 || xsave_size <= 4096);
        Ok(Vm {
            kvm,
            vm: Arc::new(vm),
            slot: Arc::new(Mutex::new(None)),
            vcpu,
            msrs,
            xsave,
            mapping: None,
            reservation: None,
        })
    }

    /// True if this KVM can create a guest_memfd the host can map (`KVM_CAP_GUEST_MEMFD` and
    /// the mmap flag).
    pub fn guest_memfd_mmap_supported(&self) -> bool {
        /// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18): the flags `KVM_CREATE_GUEST_MEMFD` takes.
        const CAP_GUEST_MEMFD_FLAGS: u64 = 244;
        self.vm.check_extension(Cap::GuestMemfd)
            && self.vm.check_extension_raw(CAP_GUEST_MEMFD_FLAGS as _) & 1 != 0
    }

    /// Creates a KVM guest_memfd of `size` bytes for this VM, mappable by the host and
    /// initially shared (`GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED`).
    pub fn create_guest_memfd(&self, size: u64) -> Result<OwnedFd, Error> {
        /// `GUEST_MEMFD_FLAG_MMAP` (Linux 6.18).
        const FLAG_MMAP: u64 = 1 << 0;
        /// `GUEST_MEMFD_FLAG_INIT_SHARED` (Linux 6.18).
        const FLAG_INIT_SHARED: u64 = 1 << 1;
        if !self.guest_memfd_mmap_supported() {
            return Err(Error::GuestExit(
                "this KVM has no mappable guest_memfd (KVM_CAP_GUEST_MEMFD with the mmap flag)"
                    .into(),
            ));
        }
        let raw = self
            .vm
            .create_guest_memfd(kvm_create_guest_memfd {
                size,
                flags: FLAG_MMAP | FLAG_INIT_SHARED,
                reserved: [0; 6],
            })
            .map_err(Error::kvm("KVM_CREATE_GUEST_MEMFD"))?;
        // SAFETY: `raw` is a new descriptor the ioctl just returned; nothing else owns it.
        #[allow(unsafe_code)]
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Maps all of `mem`, a guest_memfd of this VM, and registers it as guest memory from
    /// address 0 with `KVM_SET_USER_MEMORY_REGION2` (guest_memfd slot, host mapping for shared
    /// pages).
    pub fn attach_guest_memfd(&mut self, mem: &GuestMemory) -> Result<(), Error> {
        let mapping = mem.map(0..mem.size())?;
        let region = kvm_userspace_memory_region2 {
            slot: 0,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mapping.as_ptr() as u64,
            guest_memfd_offset: 0,
            guest_memfd: mem.ram_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the slot is exactly the live `HostMapping` of the guest_memfd, which this
        // `Vm` keeps for as long as the VM exists, and the guest_memfd itself (held open by
        // `mem` and the mapping) belongs to this VM.
        #[allow(unsafe_code)]
        unsafe { self.vm.set_user_memory_region2(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION2"))?;
        self.mapping = Some(mapping);
        Ok(())
    }

    /// Registers guest memory slot 0 for `size` bytes of `page` pages on reserved address
    /// space, before the RAM itself is at hand: [`attach`](Self::attach) then only maps the
    /// RAM over the reservation. This is what a successor does while its predecessor's guest
    /// still runs.
    pub fn reserve(&mut self, size: u64, page: PageSize) -> Result<(), Error> {
        let len = usize::try_from(size).map_err(|_| Error::State("memory size"))?;
        let mut r = Reservation::new(len, page.bytes() as usize)?;
        // SAFETY: the slot covers exactly the reservation, which this `Vm` owns: first an
        // inaccessible placeholder, then (vacated) a hole that `attach` fills with the guest RAM
        // mapping, which the `Vm` keeps for as long as the VM exists. The vCPU never runs before
        // `attach`: until then KVM has no reason to touch the range, and if something else was
        // mapped into the hole meanwhile, `attach` deletes the slot instead of running on it.
        #[allow(unsafe_code)]
        unsafe { self.set_slot(r.as_ptr() as u64, size) }?;
        // The slot's invalidation walk happens now, while the predecessor's guest still runs,
        // rather than when the RAM is mapped during the pause.
        r.vacate();
        self.reservation = Some((r, page));
        Ok(())
    }

    /// Maps all of `mem` (over the reservation if it fits, else anywhere) and registers it as
    /// guest-physical memory from address 0.
    pub fn attach(&mut self, mem: &GuestMemory) -> Result<(), Error> {
        if let Some((r, page)) = self.reservation.take() {
            if r.len() as u64 == mem.size() && page == mem.page_size() {
                match mem.map_into(r) {
                    Ok(m) => {
                        self.mapping = Some(m);
                        return Ok(());
                    }
                    // Something took the hole (or the mapping failed): no slot on it.
                    Err(_) => {
                        // SAFETY: deleting the slot (size 0) makes KVM forget the range.
                        #[allow(unsafe_code)]
                        unsafe { self.set_slot(0, 0) }?;
                    }
                }
                return self.attach(mem);
            }
            // SAFETY: deleting the slot (size 0) makes KVM forget the reservation before it
            // is unmapped below.
            #[allow(unsafe_code)]
            unsafe { self.set_slot(0, 0) }?;
            drop(r);
        }
        let mapping = mem.map(0..mem.size())?;
        // SAFETY: the slot is exactly the live `HostMapping` of `mem.size()` bytes, which this
        // `Vm` keeps (in `self.mapping`) for as long as the VM exists: the guest can only ever
        // touch memory that stays mapped. KVM does not alias it with Rust objects.
        #[allow(unsafe_code)]
        unsafe { self.set_slot(mapping.as_ptr() as u64, mem.size()) }?;
        self.mapping = Some(mapping);
        Ok(())
    }

    /// Sets memory slot 0 to `size` bytes at host address `addr` (size 0 deletes it), without
    /// dirty logging.
    ///
    /// # Safety
    ///
    /// `addr..addr + size` must stay mapped (or reserved inaccessible) for as long as the slot
    /// exists, and must not be memory Rust code relies on being untouched.
    #[allow(unsafe_code)]
    unsafe fn set_slot(&self, addr: u64, size: u64) -> Result<(), Error> {
        let mut slot = lock(&self.slot);
        let region = Region {
            addr,
            size,
            flags: 0,
        };
        // SAFETY: the caller guarantees the range's lifetime and exclusivity.
        unsafe { register(&self.vm, region) }?;
        *slot = (size > 0).then_some(region);
        Ok(())
    }

    /// A handle on slot 0's dirty log for another thread, while the vCPU keeps running here.
    pub fn dirty_log(&self) -> DirtyLog {
        DirtyLog {
            vm: Arc::clone(&self.vm),
            slot: Arc::clone(&self.slot),
        }
    }

    /// Moves slot 0 onto `mapping`, a mapping of new guest memory of the same size, and keeps
    /// it for as long as the VM exists; returns the mapping it replaces. The slot is deleted
    /// and added again at the new address, without dirty logging (KVM does not move a slot's
    /// host address in place). The vCPU is stopped meanwhile: this takes `&mut self`, and only
    /// [`run`](Self::run) enters the guest. If anything is refused, the old slot is put back,
    /// the guest continues on the old memory, and `mapping` comes back with the error (boxed:
    /// it is large).
    pub fn switch_memory(
        &mut self,
        mapping: HostMapping,
    ) -> Result<HostMapping, Box<(Error, HostMapping)>> {
        let Some(old) = self.mapping.take() else {
            return Err(Box::new((
                Error::GuestExit("no guest memory attached".into()),
                mapping,
            )));
        };
        let (old_addr, size) = (old.as_ptr() as u64, old.len() as u64);
        let back = |vm: &mut Vm, old, e, mapping| {
            vm.mapping = Some(old);
            Err(Box::new((e, mapping)))
        };
        if mapping.len() as u64 != size {
            return back(
                self,
                old,
                Error::State("size of the new guest memory"),
                mapping,
            );
        }
        // SAFETY: deleting the slot (size 0) makes KVM forget the old mapping.
        #[allow(unsafe_code)]
        if let Err(e) = unsafe { self.set_slot(0, 0) } {
            return back(self, old, e, mapping);
        }
        // SAFETY: the slot is exactly the live `HostMapping` of `size` bytes, which this `Vm`
        // keeps (in `self.mapping`, below) for as long as the VM exists.
        #[allow(unsafe_code)]
        if let Err(e) = unsafe { self.set_slot(mapping.as_ptr() as u64, size) } {
            // SAFETY: the old mapping, alive in `old` and kept in `self.mapping` again, as it
            // was registered before. If even that is refused the guest has no memory: its next
            // run fails.
            #[allow(unsafe_code)]
            let _ = unsafe { self.set_slot(old_addr, size) };
            return back(self, old, e, mapping);
        }
        self.mapping = Some(mapping);
        Ok(old)
    }

    /// The guest's counter, read from guest RAM.
    pub fn guest_counter(&self) -> Option<u32> {
        let m = self.mapping.as_ref()?;
        m.read_u64(guest::COUNTER as usize).map(|v| v as u32)
    }

    /// Loads the guest program and points the vCPU at it in real mode.
    pub fn boot(&mut self) -> Result<(), Error> {
        let m = self
            .mapping
            .as_mut()
            .ok_or(Error::GuestExit("no guest memory attached".into()))?;
        m.write(guest::ENTRY as usize, &guest::PROGRAM)
            .ok_or(Error::State("guest memory too small"))?;
        m.write(guest::COUNTER as usize, &0u64.to_le_bytes())
            .ok_or(Error::State("guest memory too small"))?;
        let mut sregs = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        let mut regs = self.vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        regs.rip = guest::ENTRY;
        regs.rflags = 2;
        self.vcpu
            .set_regs(&regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        Ok(())
    }

    /// Runs the vCPU until its next exit.
    pub fn run(&mut self) -> Result<Exit, Error> {
        match self.vcpu.run() {
            Ok(VcpuExit::IoOut(guest::PROGRESS_PORT, data)) if data.len() == 4 => {
                Ok(Exit::Progress(u32::from_le_bytes([
                    data[0], data[1], data[2], data[3],
                ])))
            }
            Ok(other) => Err(Error::GuestExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc_eintr() => Ok(Exit::Interrupted),
            Err(e) => Err(Error::Kvm {
                step: "KVM_RUN",
                source: e,
            }),
        }
    }

    /// Stops the vCPU cleanly after an exit: re-enters KVM with `immediate_exit` set, which
    /// completes the pending I/O instruction without running another one, so the saved state
    /// is consistent (KVM's rule before migrating).
    pub fn quiesce(&mut self) -> Result<(), Error> {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run();
        let out = match r {
            Err(e) if e.errno() == libc_eintr() => Ok(()),
            Err(e) => Err(Error::Kvm {
                step: "KVM_RUN (immediate exit)",
                source: e,
            }),
            Ok(exit) => Err(Error::GuestExit(format!("ran while quiescing: {exit:?}"))),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        out
    }

    /// Saves the stopped VM's state.
    pub fn save(&self, progress: Progress) -> Result<VmState, Error> {
        VmState::save(&self.vm, &self.vcpu, &self.msrs, self.xsave, progress)
    }

    /// Restores a predecessor's state into this (prepared, attached) VM.
    pub fn restore(&self, s: &VmState) -> Result<(), Error> {
        let mut s = s.clone();
        // MSRs this KVM does not know are dropped rather than refused.
        s.msrs.retain(|(i, _)| self.msrs.contains(i));
        if !self.xsave {
            s.xsave = None;
        }
        s.restore(&self.vm, &self.vcpu)
    }

    /// The KVM system descriptor.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers `region` as slot 0.
///
/// # Safety
///
/// As [`Vm::set_slot`]: the range must stay mapped for as long as the slot exists.
#[allow(unsafe_code)]
unsafe fn register(vm: &VmFd, region: Region) -> Result<(), Error> {
    let r = kvm_userspace_memory_region {
        slot: 0,
        flags: region.flags,
        guest_phys_addr: 0,
        memory_size: region.size,
        userspace_addr: region.addr,
    };
    // SAFETY: the caller guarantees the range's lifetime and exclusivity.
    unsafe { vm.set_user_memory_region(r) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))
}

/// Slot 0's dirty log (`KVM_MEM_LOG_DIRTY_PAGES`, `KVM_GET_DIRTY_LOG`), driven from a thread
/// other than the vCPU's while the guest runs: a live migrate's pre-copy. It only ever changes
/// the flags of the slot as currently registered (under the `Vm`'s slot lock), never its
/// address, so it cannot outlive or misplace the memory the slot points at.
#[derive(Clone, Debug)]
pub struct DirtyLog {
    vm: Arc<VmFd>,
    slot: SlotCell,
}

impl DirtyLog {
    /// Turns dirty logging on: from now on every page the guest writes is recorded until
    /// [`take`](Self::take) fetches it.
    pub fn start(&self) -> Result<(), Error> {
        self.set_flags(KVM_MEM_LOG_DIRTY_PAGES)
    }

    /// Turns dirty logging off (a migrate that gives up).
    pub fn stop(&self) -> Result<(), Error> {
        self.set_flags(0)
    }

    fn set_flags(&self, flags: u32) -> Result<(), Error> {
        let mut slot = lock(&self.slot);
        let region = slot.ok_or(Error::Migrate("no guest memory slot".into()))?;
        let region = Region { flags, ..region };
        // SAFETY: the same slot at the same address and size, only the flags differ: the `Vm`
        // keeps that memory mapped while the slot exists, and moves or deletes the slot only
        // under the lock held here.
        #[allow(unsafe_code)]
        unsafe { register(&self.vm, region) }?;
        *slot = Some(region);
        Ok(())
    }

    /// Fetches and clears the dirty bitmap (`KVM_GET_DIRTY_LOG`): one bit per 4 KiB page of
    /// the slot, set if the guest wrote the page since the last fetch (or since
    /// [`start`](Self::start)).
    pub fn take(&self) -> Result<Vec<u64>, Error> {
        let slot = lock(&self.slot);
        let region = slot.ok_or(Error::Migrate("no guest memory slot".into()))?;
        if region.flags & KVM_MEM_LOG_DIRTY_PAGES == 0 {
            return Err(Error::Migrate("dirty logging is off".into()));
        }
        let size = usize::try_from(region.size).map_err(|_| Error::State("memory size"))?;
        self.vm
            .get_dirty_log(0, size)
            .map_err(Error::kvm("KVM_GET_DIRTY_LOG"))
    }
}

fn libc_eintr() -> i32 {
    rustix::io::Errno::INTR.raw_os_error()
}

/// Runs until the next progress report and records it; false if the step was out of order.
/// A run interrupted by a signal records nothing.
pub fn step(vm: &mut Vm, progress: &mut Progress) -> Result<bool, Error> {
    match vm.run()? {
        Exit::Progress(v) => Ok(progress.report(v, now_ns())),
        Exit::Interrupted => Ok(true),
    }
}
