//! Calls into the hypervisor: the SMCCC/PSCI/KVM-vendor ABI guests (and the
//! host's PSCI) use ([`smccc`], pure), and the host control interface
//! (`host`, AArch64).

pub mod smccc;
pub mod trng;

#[cfg(target_arch = "aarch64")]
pub mod host;
