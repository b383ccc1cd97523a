//! Exits: every synchronous exit goes through [`policy::decode`] (syndrome
//! and registers to an [`policy::Exit`]), [`policy::decide`] (pure: exit
//! and facts to an [`policy::Action`]) and `effects` (AArch64: the only
//! part that touches registers; `vm_calls` for the calls that need a CPU's
//! random number generator or the VM's measurement; `pmu` for a normal
//! VM's PMU accesses, `debug` for a guest's debug-register accesses). `fast` answers the cheapest exits from the
//! vector itself; `sysreg` and `idregs` are the pure rules for trapped
//! system registers.

pub mod idregs;
pub mod policy;
pub mod sysreg;

#[cfg(target_arch = "aarch64")]
mod debug;
#[cfg(target_arch = "aarch64")]
pub mod effects;
#[cfg(target_arch = "aarch64")]
pub mod fast;
#[cfg(target_arch = "aarch64")]
mod pmu;
#[cfg(target_arch = "aarch64")]
mod uart;
#[cfg(target_arch = "aarch64")]
mod vm_calls;
