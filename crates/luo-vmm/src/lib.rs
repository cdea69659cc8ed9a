//! luo-vmm: a small real KVM VMM whose guest keeps running while the VMM is replaced.
//!
//! See `crates/luo-vmm/src/main.rs` for the command line and the upgrade protocol.
//!
//! - [`Vm`]: one VM, one vCPU, guest RAM from a [`luo_guestmem::GuestMemory`].
//! - [`guest`]: the guest program, which counts in guest RAM and reports every step on an I/O
//!   port.
//! - [`Progress`]: what the VMM saw of the guest's steps (the one device).
//! - [`VmState`]: the vCPU and VM state saved into a memfd at an upgrade, and its format.
//! - [`handoff`]: the session layout in luod and the messages between a VMM and its successor.
//!
//! `unsafe` is allowed in this crate for the two calls that need it — registering guest memory
//! with KVM and loading a full XSAVE area — each with its `SAFETY` argument.
#![allow(unsafe_code)]

pub mod control;
pub mod error;
pub mod guest;
pub mod handoff;
pub mod progress;
pub mod state;
pub mod vm;
pub mod vmm;

pub use error::Error;
pub use progress::{Progress, now_ns};
pub use state::VmState;
pub use vm::Vm;
pub use vmm::{Config, Outcome, Vmm};
