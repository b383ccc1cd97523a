//! EL1 runtime for the project's small Rust guests: entry, exception
//! vectors, console, the global allocator (`heap`), and SMCCC/PSCI calls
//! through HVC.
//!
//! A guest crate provides `guest_main(cpu, arg)` and, optionally, an
//! exception hook set with [`set_exception_hook`]. Guests run with the MMU
//! off, so their accesses are Device-nGnRnE: the target is built with
//! strict alignment, and guests avoid exclusives (the console needs no lock
//! because the hypervisor buffers each vCPU's output a line at a time).
//! A guest that wants cacheable memory turns its MMU on with `mmu::enable`;
//! one that takes interrupts drives the (virtual) GICv3 or GICv2 with `gic`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod demo;
#[cfg(target_arch = "aarch64")]
pub mod fpregs;
#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod heap;
#[cfg(target_arch = "aarch64")]
pub mod mmu;
#[cfg(target_arch = "aarch64")]
mod rt;
#[cfg(target_arch = "aarch64")]
pub use rt::*;
