//! EL2 core of the hypervisor: vectors, world switch, exits, VMs and vCPUs,
//! and the hypercall ABIs.
//!
//! Board crates (`platform-*`) enter [`boot::primary`] on the boot CPU and
//! [`boot::secondary`] on the others, passing a [`platform::Platform`]. The
//! decision logic — exit decoding ([`exit`], [`sysreg_trap`]), ID-register
//! sanitisation ([`idregs`]), the SMCCC/PSCI/vendor ABI
//! ([`hypercall`]), exception injection ([`inject`]), the emulated console
//! ([`uart_emul`]) — is pure and tested on the host; the parts that touch
//! the CPU live in `arch` and the modules built only for AArch64.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod control;
pub mod exit;
pub mod hypercall;
pub mod idregs;
pub mod inject;
pub mod pages;
pub mod platform;
pub mod stats;
pub mod switch;
pub mod sysreg_trap;
pub mod uart_emul;

#[cfg(target_arch = "aarch64")]
pub mod arch;
#[cfg(target_arch = "aarch64")]
pub mod boot;
#[cfg(target_arch = "aarch64")]
pub mod console;
#[cfg(target_arch = "aarch64")]
pub mod idregs_emul;
#[cfg(target_arch = "aarch64")]
pub mod vm;
