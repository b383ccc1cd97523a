//! vCPUs: their saved context, the per-CPU switching state, FP/SIMD
//! switching, self-hosted debug switching, the list-register side of the
//! virtual GIC, exception injection, the trap configuration they run with,
//! the virtual PMU, and idle CPUs' sleep.

pub mod debug;
pub mod inject;
pub mod pmu;
pub mod ptimer;
#[cfg(target_arch = "aarch64")]
pub mod sve;
pub mod sve_id;
pub mod sve_vl;
pub mod traps;

#[cfg(target_arch = "aarch64")]
pub mod ctx;
#[cfg(target_arch = "aarch64")]
pub mod fp;
#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod idle;

/// Most physical CPUs the hypervisor drives (one host vCPU each).
pub const MAX_CPUS: usize = 8;

/// Whose exit is being handled: the host's vCPU or guest vCPU `vcpu` of VM
/// slot `slot` (handle `slot + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The host VM.
    Host,
    /// A guest vCPU.
    Guest {
        /// VM slot (handle - 1).
        slot: usize,
        /// vCPU index.
        vcpu: usize,
    },
}
