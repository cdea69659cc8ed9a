//! luo-vmm: a small but real KVM VMM whose guest keeps running while the VMM is replaced.
//!
//! The guest ([`guest`]) is a real-mode program that counts forever in its own RAM and reports
//! every step on an I/O port, so the VMM ([`Progress`]) knows exactly how far it got and whether
//! a step was lost or repeated. Its RAM is a [`luo_guestmem::GuestMemory`]: a memfd of 4 KiB
//! pages or a hugetlb memfd of 2 MiB or 1 GiB pages, plus the descriptor that carries page
//! geometry and shared/private attributes.
//!
//! The principal types:
//!
//! - [`Vm`]: one KVM VM with one vCPU. KVM binds VM and vCPU descriptors to the process that
//!   created them, so each VMM generation builds its own; [`Vm::prepare`] and [`Vm::reserve`]
//!   do everything that needs no guest RAM, before the predecessor stops its guest.
//! - [`VmState`]: vCPU registers, special registers, FPU/XSAVE, XCRs, MSRs, LAPIC, pending
//!   events, MP state, debug registers, PIC/IOAPIC, the KVM clock and the progress device, and
//!   the state memfd that carries them (a versioned format).
//! - [`handoff`]: the session layout in luod (RAM, descriptor, state under tokens 1, 2, 3) and
//!   the READY / GO / RESUMED handshake between a VMM and its successor.
//! - [`Vmm`]: a running VMM: boot, serve its control socket, upgrade, resume, migrate.
//! - [`migrate`]: live re-backing — the running guest's RAM moved onto new guest memory of
//!   another page size, pre-copied under KVM's dirty log ([`vm::DirtyLog`]) by the batch copy
//!   engine ([`copy::Copier`], luo-copy), then a short pause to switch the memory slot.
//!
//! An upgrade, as `luo-vmm upgrade` (or SIGUSR1) drives it:
//!
//! ```text
//!  old VMM (guest running)                  new VMM
//!  start `luo-vmm resume` ---------------->  create VM, irqchip, vCPU, CPUID; open luod;
//!                                            register the memory slot on reserved space
//!                          <---------------- READY
//!  stop vCPU (immediate_exit), save state
//!  into the state memfd, luod handoff
//!                          ----------------> GO
//!                                            retrieve session, descriptor, RAM, state;
//!                                            mmap RAM over the slot; restore vCPU; KVM_RUN
//!                          <---------------- RESUMED blackout_ns=... last_before=... first_after=...
//!  exit                                      finish the session, preserve again (guest running)
//! ```
//!
//! Booting a guest and reading its progress, as the `luo-vmm run` command does (it needs
//! `/dev/kvm` and a luod):
//!
//! ```no_run
//! use luo_guestmem::PageSize;
//! use luo_vmm::{Config, Vmm};
//!
//! let config = Config {
//!     name: "vm1".into(),
//!     luod_socket: luo_client::default_socket(),
//!     control: "/tmp/luo-vmm-vm1.sock".into(),
//! };
//! let vmm = Vmm::boot(config, 64 << 20, PageSize::Huge2M)?;
//! let upgrade_on_sigusr1 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! vmm.serve(upgrade_on_sigusr1, std::env::current_exe()?)?; // until handed off or stopped
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A live migrate, as `luo-vmm migrate --to 1g` drives it (the guest counts throughout):
//!
//! ```text
//!  control thread                                vCPU thread
//!  new GuestMemory on 1 GiB pages (same size,
//!  same attributes); dirty logging on slot 0     guest running
//!  copy all of the old RAM, then rounds of the
//!  pages KVM_GET_DIRTY_LOG reports, until few
//!  luod: REPLACE_FD of RAM and descriptor
//!                          ---------------------> stop vCPU (immediate_exit); last dirty log,
//!                                                 copy those pages; slot 0 deleted and added
//!                                                 at the new memory; KVM_RUN
//!                          <--------------------- MIGRATED blackout_ns=... rounds=...
//!  drop the old memory                            guest running on 1 GiB pages
//! ```
//!
//! The blackout is measured as an upgrade's is, from the guest's last step on the old memory to
//! its first on the new; the counter in the new RAM must equal the last step reported. luod's
//! session then holds the new RAM and descriptor, so the next upgrade carries the new backing.
//! A failure anywhere before the switch (a pool with too few huge pages, luod refusing the new
//! files) leaves the guest on its old memory, and the session holding it.
//!
//! With `--guest-memfd`, guest RAM is a real KVM guest_memfd of the VM (mappable, initially
//! shared). It runs the same, but it cannot cross an upgrade — the kernel binds a guest_memfd
//! to the VM that created it — so the upgrade is refused and the guest keeps running. A migrate
//! is refused too: KVM keeps no dirty log of a guest_memfd.
//!
//! `unsafe` is allowed in this crate for what needs it — registering guest memory with KVM,
//! loading a full XSAVE area, adopting the handshake descriptor and the guest_memfd, handing
//! guest RAM to the copy engine — each block with its `SAFETY` argument.
#![allow(unsafe_code)]

pub mod control;
pub mod copy;
pub mod error;
pub mod guest;
pub mod handoff;
pub mod migrate;
pub mod progress;
pub mod state;
pub mod vm;
pub mod vmm;

pub use error::Error;
pub use progress::{Progress, now_ns};
pub use state::VmState;
pub use vm::Vm;
pub use vmm::{Config, Outcome, Vmm};
