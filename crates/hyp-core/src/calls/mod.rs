//! Calls into the hypervisor: the SMCCC/PSCI/KVM-vendor ABI guests (and the
//! host's PSCI) use ([`smccc`], pure; [`known`]: the IDs anybody implements,
//! which the HVC vector looks up), and the host control interface
//! (`host`, AArch64).

pub mod known;
pub mod smccc;
pub mod trng;

#[cfg(target_arch = "aarch64")]
pub mod host;
