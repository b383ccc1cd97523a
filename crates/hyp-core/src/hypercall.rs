//! Guest hypercall ABI: decoding SMCCC calls (HVC or trapped SMC) into typed
//! requests, and the answers that need no VM state.
//!
//! Function IDs come from the `smccc` crate (PSCI 1.1, SMCCC 1.1 arch calls).
//! Pure code: tested on the host with every call and bad arguments.

use smccc::arch::{SMCCC_ARCH_FEATURES, SMCCC_VERSION};
use smccc::psci::{
    PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_CPU_SUSPEND_64, PSCI_FEATURES,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// SMCCC NOT_SUPPORTED (-1), returned in x0 for unknown functions.
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
/// PSCI INVALID_PARAMETERS (-2).
pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
/// PSCI ALREADY_ON (-4).
pub const ALREADY_ON: u64 = -4i64 as u64;
/// PSCI ON_PENDING (-5).
pub const ON_PENDING: u64 = -5i64 as u64;
/// PSCI SUCCESS (0).
pub const SUCCESS: u64 = 0;

/// PSCI version implemented: 1.1 (major in [31:16], minor in [15:0]).
pub const PSCI_VERSION_1_1: u64 = 0x0001_0001;
/// SMCCC version implemented: 1.1.
pub const SMCCC_VERSION_1_1: u64 = 0x0001_0001;

/// A decoded guest call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// PSCI_VERSION.
    PsciVersion,
    /// PSCI_FEATURES(function id).
    PsciFeatures {
        /// The function asked about.
        fid: u32,
    },
    /// CPU_ON (64-bit).
    CpuOn {
        /// Target MPIDR.
        target: u64,
        /// Entry point (IPA).
        entry: u64,
        /// Context id placed in the target's x0.
        context: u64,
    },
    /// CPU_OFF.
    CpuOff,
    /// AFFINITY_INFO (64-bit).
    AffinityInfo {
        /// Target MPIDR.
        target: u64,
        /// Lowest affinity level; only 0 is supported.
        lowest_level: u64,
    },
    /// CPU_SUSPEND (64-bit): treated as a WFI, which PSCI allows for
    /// standby power states.
    CpuSuspend,
    /// SYSTEM_OFF.
    SystemOff,
    /// SYSTEM_RESET.
    SystemReset,
    /// SMCCC_VERSION.
    SmcccVersion,
    /// SMCCC_ARCH_FEATURES(function id).
    ArchFeatures {
        /// The function asked about.
        fid: u32,
    },
    /// Anything else: answered NOT_SUPPORTED.
    Unknown {
        /// The function id the guest passed.
        fid: u32,
    },
}

/// Decodes x0..x3 of an SMCCC call. Bits [63:32] of x0 are ignored for
/// 32-bit function IDs as SMCCC 1.1 section 2.6 requires of callees.
#[must_use]
pub fn decode(x: [u64; 4]) -> Hypercall {
    let fid = x[0] as u32;
    match fid {
        PSCI_VERSION => Hypercall::PsciVersion,
        PSCI_FEATURES => Hypercall::PsciFeatures { fid: x[1] as u32 },
        PSCI_CPU_ON_64 => Hypercall::CpuOn {
            target: x[1],
            entry: x[2],
            context: x[3],
        },
        PSCI_CPU_OFF => Hypercall::CpuOff,
        PSCI_AFFINITY_INFO_64 => Hypercall::AffinityInfo {
            target: x[1],
            lowest_level: x[2],
        },
        PSCI_CPU_SUSPEND_64 => Hypercall::CpuSuspend,
        PSCI_SYSTEM_OFF => Hypercall::SystemOff,
        PSCI_SYSTEM_RESET => Hypercall::SystemReset,
        SMCCC_VERSION => Hypercall::SmcccVersion,
        SMCCC_ARCH_FEATURES => Hypercall::ArchFeatures { fid: x[1] as u32 },
        _ => Hypercall::Unknown { fid },
    }
}

/// PSCI_FEATURES answer: 0 for implemented functions, NOT_SUPPORTED otherwise.
/// CPU_SUSPEND reports the original power-state format (bit 1 = 0) without
/// OS-initiated mode (bit 0 = 0).
#[must_use]
pub fn psci_features(fid: u32) -> u64 {
    match fid {
        PSCI_VERSION
        | PSCI_FEATURES
        | PSCI_CPU_ON_64
        | PSCI_CPU_OFF
        | PSCI_AFFINITY_INFO_64
        | PSCI_CPU_SUSPEND_64
        | PSCI_SYSTEM_OFF
        | PSCI_SYSTEM_RESET
        | SMCCC_VERSION => SUCCESS,
        _ => NOT_SUPPORTED,
    }
}

/// SMCCC_ARCH_FEATURES answer. The ARCH_WORKAROUND_* calls are answered
/// NOT_SUPPORTED: the hypervisor implements none of the mitigations they
/// name, and saying otherwise would be a lie the guest relies on.
#[must_use]
pub fn arch_features(fid: u32) -> u64 {
    match fid {
        SMCCC_VERSION | SMCCC_ARCH_FEATURES => SUCCESS,
        _ => NOT_SUPPORTED,
    }
}

/// Checks that an MPIDR names affinity level 0 only, as our flat vCPU
/// topology (Aff0 = vCPU index) requires; returns the vCPU index.
#[must_use]
pub fn mpidr_to_index(mpidr: u64, vcpus: usize) -> Option<usize> {
    let aff = mpidr & 0xff_00ff_ffff;
    if aff & !0xff != 0 {
        return None;
    }
    let idx = (aff & 0xff) as usize;
    (idx < vcpus).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_psci_call() {
        assert_eq!(
            decode([u64::from(PSCI_VERSION), 0, 0, 0]),
            Hypercall::PsciVersion
        );
        assert_eq!(
            decode([u64::from(PSCI_CPU_ON_64), 2, 0x4000_1000, 7]),
            Hypercall::CpuOn {
                target: 2,
                entry: 0x4000_1000,
                context: 7
            }
        );
        assert_eq!(
            decode([u64::from(PSCI_CPU_OFF), 0, 0, 0]),
            Hypercall::CpuOff
        );
        assert_eq!(
            decode([u64::from(PSCI_AFFINITY_INFO_64), 1, 0, 0]),
            Hypercall::AffinityInfo {
                target: 1,
                lowest_level: 0
            }
        );
        assert_eq!(
            decode([u64::from(PSCI_SYSTEM_OFF), 0, 0, 0]),
            Hypercall::SystemOff
        );
        assert_eq!(
            decode([u64::from(PSCI_SYSTEM_RESET), 0, 0, 0]),
            Hypercall::SystemReset
        );
        assert_eq!(
            decode([u64::from(PSCI_CPU_SUSPEND_64), 0, 0, 0]),
            Hypercall::CpuSuspend
        );
        assert_eq!(
            decode([u64::from(PSCI_FEATURES), u64::from(PSCI_CPU_ON_64), 0, 0]),
            Hypercall::PsciFeatures {
                fid: PSCI_CPU_ON_64
            }
        );
        assert_eq!(
            decode([u64::from(SMCCC_VERSION), 0, 0, 0]),
            Hypercall::SmcccVersion
        );
    }

    #[test]
    fn upper_bits_of_function_id_are_ignored() {
        assert_eq!(
            decode([0xffff_ffff_0000_0000 | u64::from(PSCI_VERSION), 0, 0, 0]),
            Hypercall::PsciVersion
        );
    }

    #[test]
    fn unknown_calls() {
        assert_eq!(
            decode([0xc600_1234, 0, 0, 0]),
            Hypercall::Unknown { fid: 0xc600_1234 }
        );
        // 32-bit CPU_ON is not implemented; a 64-bit guest must use CPU_ON_64.
        assert_eq!(
            decode([0x8400_0003, 0, 0, 0]),
            Hypercall::Unknown { fid: 0x8400_0003 }
        );
    }

    #[test]
    fn features() {
        assert_eq!(psci_features(PSCI_CPU_ON_64), SUCCESS);
        assert_eq!(psci_features(PSCI_SYSTEM_OFF), SUCCESS);
        assert_eq!(psci_features(0x8400_0003), NOT_SUPPORTED);
        assert_eq!(psci_features(0xdead_beef), NOT_SUPPORTED);
        assert_eq!(arch_features(SMCCC_ARCH_FEATURES), SUCCESS);
        assert_eq!(
            arch_features(smccc::arch::SMCCC_ARCH_WORKAROUND_1),
            NOT_SUPPORTED
        );
    }

    #[test]
    fn mpidr_validation() {
        assert_eq!(mpidr_to_index(0, 4), Some(0));
        assert_eq!(mpidr_to_index(3, 4), Some(3));
        assert_eq!(mpidr_to_index(0x8000_0002, 4), Some(2)); // bit 31 (RES1) ignored
        assert_eq!(mpidr_to_index(4, 4), None);
        assert_eq!(mpidr_to_index(0x100, 4), None); // Aff1 != 0
        assert_eq!(mpidr_to_index(0x1_0000_0000, 4), None); // Aff3 != 0
    }
}
