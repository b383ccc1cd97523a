//! EL2 core of the hypervisor: vectors, world switch, exits, VMs and vCPUs,
//! and the hypercall ABIs.
//!
//! Board crates (`platform-*`) enter [`boot::primary`] on the boot CPU and
//! [`boot::secondary`] on the others, passing a [`platform::Platform`].
//! Modules, each depending only on those listed before it:
//!
//! - [`platform`]: the board description;
//! - [`arch`]: everything that touches the CPU (registers, vectors, world
//!   switch, the physical GIC, the console);
//! - [`stats`]: exit counters;
//! - [`vcpu`]: a vCPU's context, FP switching, list registers, injection,
//!   trap configuration;
//! - [`vm`]: the control state (VMs, page ownership, each VM's memory from
//!   the host), per-VM state at EL2;
//! - [`calls`]: the SMCCC/PSCI/vendor ABI and the host control interface;
//! - [`exit`]: decode, policy (pure) and effects of every exit;
//! - `run`: the per-CPU run loop; `boot`: bring-up.
//!
//! Everything outside `run`, `boot` and the AArch64 halves of the others
//! builds on the host, where it is tested.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod calls;
pub mod exit;
pub mod platform;
pub mod stats;
pub mod vcpu;
pub mod vm;

#[cfg(target_arch = "aarch64")]
pub mod boot;
#[cfg(target_arch = "aarch64")]
pub mod run;
