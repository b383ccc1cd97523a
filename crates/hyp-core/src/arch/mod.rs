//! Everything that touches the CPU: vectors, world switch, EL2 MMU bring-up,
//! register access, the physical GIC and the hypervisor's console. `esr`
//! (syndrome decoding), `fid_hash` (the HVC vector's function-ID lookup),
//! `pages` (the hypervisor's page pool) and `switch` (the barrier-typed context switch) build
//! on the host too, where tests drive them; the rest is AArch64 only.

pub mod esr;
pub mod fid_hash;
pub mod pages;
pub mod spectre;
pub mod sve;
pub mod switch;

#[cfg(target_arch = "aarch64")]
pub mod console;
#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod mmu;
#[cfg(target_arch = "aarch64")]
pub mod smmu;
#[cfg(target_arch = "aarch64")]
pub mod sysreg;
#[cfg(target_arch = "aarch64")]
pub mod tables;
#[cfg(target_arch = "aarch64")]
pub mod vectors;
#[cfg(target_arch = "aarch64")]
pub mod world_switch;
