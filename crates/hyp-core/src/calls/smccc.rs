//! Guest hypercall ABI: decoding SMCCC calls (HVC or trapped SMC) into typed
//! requests, and the answers that need no VM state.
//!
//! Function IDs come from the `smccc` crate (PSCI 1.1, SMCCC 1.1 arch calls)
//! and, for the KVM vendor-hypervisor service (owner 6) that pKVM guests use,
//! from [`vendor`] (checked against Linux's include/linux/arm-smccc.h,
//! Documentation/virt/kvm/arm/hypercalls.rst and the pKVM hypervisor's
//! arch/arm64/kvm/hyp/nvhe/pkvm.c `kvm_handle_pvm_hvc64`).
//! Pure code: tested on the host with every call and bad arguments.
//!
//! Two return-code spaces meet here and must not be mixed up: PSCI's
//! (`INVALID_PARAMETERS` = -2, `ALREADY_ON` = -4, ...) for PSCI functions,
//! and SMCCC's ([`SMCCC_RET_INVALID_PARAMETER`] = -3, ...) for the vendor
//! service. Both agree on SUCCESS (0) and NOT_SUPPORTED (-1).

use crate::arch::spectre::{self, State, Verdict};
use crate::vm::control::psci;
use smccc::arch::{
    SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2, SMCCC_ARCH_WORKAROUND_3,
    SMCCC_VERSION,
};
use smccc::psci::{
    PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_CPU_SUSPEND_64, PSCI_FEATURES,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// SMCCC NOT_SUPPORTED (-1), returned in x0 for unknown functions.
pub const NOT_SUPPORTED: u64 = psci(smccc::psci::error::NOT_SUPPORTED);
/// PSCI INVALID_PARAMETERS (-2).
pub const INVALID_PARAMETERS: u64 = psci(smccc::psci::error::INVALID_PARAMETERS);
/// PSCI SUCCESS (0).
pub const SUCCESS: u64 = 0;

/// SMCCC return code SUCCESS (0) (SMCCC, DEN0028, "Return codes").
pub const SMCCC_RET_SUCCESS: u64 = 0;
/// SMCCC return code NOT_SUPPORTED (-1).
pub const SMCCC_RET_NOT_SUPPORTED: u64 = -1i64 as u64;
/// SMCCC return code NOT_REQUIRED (-2). Not PSCI's INVALID_PARAMETERS, which
/// has the same value in PSCI's own space.
pub const SMCCC_RET_NOT_REQUIRED: u64 = -2i64 as u64;
/// SMCCC return code INVALID_PARAMETER (-3), what the vendor-hypervisor
/// calls return for bad arguments.
pub const SMCCC_RET_INVALID_PARAMETER: u64 = -3i64 as u64;
/// SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED (1): what ARCH_FEATURES answers for
/// ARCH_WORKAROUND_1/3 on a system no CPU of which needs them (SMCCC 1.4,
/// DEN0028, section 7; Linux's `SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED`).
pub const SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED: u64 = 1;

/// The KVM vendor-hypervisor service (SMCCC owner 6): function IDs, UID and
/// feature bits, as Linux's include/linux/arm-smccc.h defines them.
pub mod vendor {
    /// VENDOR_HYP_CALL_UID: fast, SMC32, owner 6, function 0xFF01.
    pub const CALL_UID: u32 = 0x8600_ff01;
    /// VENDOR_HYP_KVM_FEATURES: fast, SMC32, owner 6, function 0.
    pub const KVM_FEATURES: u32 = 0x8600_0000;
    /// HYP_MEMINFO: fast, SMC64, function 2.
    pub const HYP_MEMINFO: u32 = 0xc600_0002;
    /// MEM_SHARE: function 3.
    pub const MEM_SHARE: u32 = 0xc600_0003;
    /// MEM_UNSHARE: function 4.
    pub const MEM_UNSHARE: u32 = 0xc600_0004;
    /// MMIO_GUARD: fast, SMC64, function 7 (upstream Linux's
    /// ARM_SMCCC_VENDOR_HYP_KVM_MMIO_GUARD_FUNC_ID; x1 = the IPA of one
    /// granule, x2 and x3 reserved). Android's older numbering (5..8 =
    /// MMIO_GUARD_INFO/ENROLL/MAP/UNMAP) was never upstream and is not
    /// implemented: functions 5, 6 and 8 answer NOT_SUPPORTED.
    pub const MMIO_GUARD: u32 = 0xc600_0007;

    /// The KVM UID 28b46fb6-2ec5-11e9-a9ca-4b564d003a74 as CALL_UID returns
    /// it in x0..x3 (ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_0..3).
    pub const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

    /// KVM_FEATURES bit numbers (ARM_SMCCC_KVM_FUNC_*): a bit is set when the
    /// vendor function with that number is available.
    pub const FUNC_FEATURES: u32 = 0;
    /// HYP_MEMINFO.
    pub const FUNC_HYP_MEMINFO: u32 = 2;
    /// MEM_SHARE.
    pub const FUNC_MEM_SHARE: u32 = 3;
    /// MEM_UNSHARE.
    pub const FUNC_MEM_UNSHARE: u32 = 4;
    /// MMIO_GUARD (ARM_SMCCC_KVM_FUNC_MMIO_GUARD).
    pub const FUNC_MMIO_GUARD: u32 = 7;

    /// The KVM_FEATURES bitmap (x0) this hypervisor answers to a protected
    /// VM: functions 0, 2, 3, 4 and 7. PTP (1) is not implemented.
    pub const FEATURES_BITMAP: u64 = (1 << FUNC_FEATURES)
        | (1 << FUNC_HYP_MEMINFO)
        | (1 << FUNC_MEM_SHARE)
        | (1 << FUNC_MEM_UNSHARE)
        | (1 << FUNC_MMIO_GUARD);

    /// KVM_FEATURES bits reported to protected VMs only (memory sharing
    /// with the host, MMIO guard: "pKVM protected guests only" in
    /// hypercalls.rst); a normal VM sees `FEATURES_BITMAP` without them.
    pub const PROTECTED_ONLY: u64 =
        (1 << FUNC_MEM_SHARE) | (1 << FUNC_MEM_UNSHARE) | (1 << FUNC_MMIO_GUARD);

    /// The memory-protection granule HYP_MEMINFO reports (and the size of
    /// what one MMIO_GUARD call guards): stage 2 is managed in 4 KiB pages.
    pub const GRANULE: u64 = 4096;
}

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
    /// SMCCC_ARCH_WORKAROUND_1, _2 or _3 itself ([`arch_workaround`]).
    ArchWorkaround {
        /// Which of the three.
        fid: u32,
    },
    /// VENDOR_HYP_CALL_UID: answered with [`vendor::KVM_UID`].
    VendorUid,
    /// VENDOR_HYP_KVM_FEATURES: answered with [`vendor::FEATURES_BITMAP`].
    VendorFeatures,
    /// HYP_MEMINFO (arguments checked to be zero): answered with the granule.
    HypMemInfo,
    /// MEM_SHARE of the granule at `ipa` with the host (page-aligned; the
    /// reserved arguments were zero). Ownership is checked by the VM.
    MemShare {
        /// Base IPA of the page.
        ipa: u64,
    },
    /// MEM_UNSHARE of the granule at `ipa` (same checks as MEM_SHARE).
    MemUnshare {
        /// Base IPA of the page.
        ipa: u64,
    },
    /// MMIO_GUARD of the granule at `ipa` (page-aligned; the reserved
    /// arguments were zero): accesses there may be forwarded to the host.
    /// Whether `ipa` may be guarded is the VM's business.
    MmioGuard {
        /// Base IPA of the MMIO page.
        ipa: u64,
    },
    /// An SMCCC TRNG call (answered with entropy the CPU draws, so not
    /// stateless: [`super::trng`]).
    Trng(super::trng::TrngCall),
    /// MEASUREMENT_SET (`hyp_abi::pvmfw`): the firmware's report, in x1..x9
    /// (read by the effect: more registers than a decode sees).
    MeasurementSet,
    /// MEASUREMENT_GET of half `half` of item `item` (both checked to be 0
    /// or 1, x3 zero).
    MeasurementGet {
        /// [`hyp_abi::pvmfw::ITEM_KERNEL`] or [`hyp_abi::pvmfw::ITEM_INITRD`].
        item: u64,
        /// 0: bytes 0..16, 1: bytes 16..32.
        half: u64,
    },
    /// YIELD ([`hyp_abi::GUEST_YIELD`]): back to the host at once.
    Yield,
    /// A known vendor call whose arguments fail the stateless checks:
    /// answered [`SMCCC_RET_INVALID_PARAMETER`].
    InvalidParameter {
        /// The function id the guest passed.
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
        SMCCC_ARCH_WORKAROUND_1 | SMCCC_ARCH_WORKAROUND_2 | SMCCC_ARCH_WORKAROUND_3 => {
            Hypercall::ArchWorkaround { fid }
        }
        vendor::CALL_UID => Hypercall::VendorUid,
        vendor::KVM_FEATURES => Hypercall::VendorFeatures,
        // x1..x3 reserved, must be zero (hypercalls.rst; pKVM's
        // pkvm_meminfo_call serves both calls with this check).
        vendor::HYP_MEMINFO => {
            if x[1] != 0 || x[2] != 0 || x[3] != 0 {
                Hypercall::InvalidParameter { fid }
            } else {
                Hypercall::HypMemInfo
            }
        }
        // x1 = IPA of one granule, x2 and x3 reserved, must be zero (the
        // same for MMIO_GUARD: hypercalls.rst; Linux's
        // arm_smccc_do_one_page passes (ipa, 0, 0) for all three).
        vendor::MEM_SHARE | vendor::MEM_UNSHARE | vendor::MMIO_GUARD => {
            let ipa = x[1];
            if x[2] != 0 || x[3] != 0 || !ipa.is_multiple_of(vendor::GRANULE) {
                Hypercall::InvalidParameter { fid }
            } else if fid == vendor::MEM_SHARE {
                Hypercall::MemShare { ipa }
            } else if fid == vendor::MEM_UNSHARE {
                Hypercall::MemUnshare { ipa }
            } else {
                Hypercall::MmioGuard { ipa }
            }
        }
        hyp_abi::pvmfw::MEASUREMENT_SET => Hypercall::MeasurementSet,
        hyp_abi::GUEST_YIELD => Hypercall::Yield,
        hyp_abi::pvmfw::MEASUREMENT_GET => {
            let (item, half) = (x[1], x[2]);
            if item > hyp_abi::pvmfw::ITEM_INITRD || half > 1 || x[3] != 0 {
                Hypercall::InvalidParameter { fid }
            } else {
                Hypercall::MeasurementGet { item, half }
            }
        }
        _ => match super::trng::decode(fid, x[1]) {
            Some(t) => Hypercall::Trng(t),
            None => Hypercall::Unknown { fid },
        },
    }
}

/// The full answer (x0..x3) to a call that needs no VM state, or `None` for
/// calls the VM must handle (CPU_ON, CPU_OFF, AFFINITY_INFO, CPU_SUSPEND,
/// SYSTEM_OFF/RESET, MEM_SHARE/UNSHARE, MMIO_GUARD).
/// Registers a call does not define are returned as zero, as pKVM does.
#[must_use]
pub fn stateless_answer(call: Hypercall) -> Option<[u64; 4]> {
    let x0 = match call {
        Hypercall::PsciVersion => PSCI_VERSION_1_1,
        Hypercall::PsciFeatures { fid } => psci_features(fid),
        Hypercall::SmcccVersion => SMCCC_VERSION_1_1,
        Hypercall::ArchFeatures { fid } => arch_features(fid, spectre::system()),
        Hypercall::ArchWorkaround { fid } => arch_workaround(fid, spectre::system()),
        Hypercall::VendorUid => return Some(vendor::KVM_UID),
        Hypercall::VendorFeatures => vendor::FEATURES_BITMAP,
        Hypercall::HypMemInfo => vendor::GRANULE,
        Hypercall::InvalidParameter { .. } => SMCCC_RET_INVALID_PARAMETER,
        Hypercall::Unknown { .. } => NOT_SUPPORTED,
        Hypercall::CpuOn { .. }
        | Hypercall::CpuOff
        | Hypercall::AffinityInfo { .. }
        | Hypercall::CpuSuspend
        | Hypercall::SystemOff
        | Hypercall::SystemReset
        | Hypercall::MemShare { .. }
        | Hypercall::MemUnshare { .. }
        | Hypercall::MmioGuard { .. }
        | Hypercall::MeasurementSet
        | Hypercall::MeasurementGet { .. }
        | Hypercall::Yield
        | Hypercall::Trng(_) => return None,
    };
    Some([x0, 0, 0, 0])
}

/// PSCI_FEATURES answer: 0 for implemented functions, NOT_SUPPORTED otherwise.
/// It answers for PSCI functions and SMCCC_VERSION (PSCI 1.1 section 5.1.14:
/// SMCCC_VERSION is discovered through PSCI_FEATURES); vendor-hypervisor
/// calls are NOT_SUPPORTED here, they are discovered through CALL_UID and
/// KVM_FEATURES (as pKVM's pvm_psci_features answers). CPU_SUSPEND reports the original power-state format (bit 1 = 0) without
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

/// SMCCC_ARCH_FEATURES answer for the system whose speculation verdict is
/// `v`. It covers Arm Architecture Service calls (owner 0) only, so PSCI and
/// vendor-hypervisor IDs are NOT_SUPPORTED here. The ARCH_WORKAROUND_*
/// answers are KVM's (arch/arm64/kvm/hypercalls.c), and Linux reads them so
/// (arch/arm64/kernel/proton-pack.c):
/// - WORKAROUND_1 (Spectre v2) and WORKAROUND_3 (Spectre-BHB): SUCCESS when
///   the mitigation is applied (the call is then worth making),
///   [`SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED`] when no CPU needs it,
///   NOT_SUPPORTED when some CPU is affected and nothing is applied.
/// - WORKAROUND_2 (speculative store bypass): [`SMCCC_RET_NOT_REQUIRED`]
///   when no CPU needs a dynamic mitigation (unaffected, SSBS, or a static
///   mitigation always on), NOT_SUPPORTED otherwise.
#[must_use]
pub fn arch_features(fid: u32, v: Verdict) -> u64 {
    let bp = |s: State| match s {
        State::Unaffected => SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED,
        State::Mitigated => SUCCESS,
        State::Vulnerable => NOT_SUPPORTED,
    };
    match fid {
        SMCCC_VERSION | SMCCC_ARCH_FEATURES => SUCCESS,
        SMCCC_ARCH_WORKAROUND_1 => bp(v.v2),
        SMCCC_ARCH_WORKAROUND_3 => bp(v.bhb),
        SMCCC_ARCH_WORKAROUND_2 => match v.ssb {
            State::Unaffected | State::Mitigated => SMCCC_RET_NOT_REQUIRED,
            State::Vulnerable => NOT_SUPPORTED,
        },
        _ => NOT_SUPPORTED,
    }
}

/// The answer to a call of ARCH_WORKAROUND_1/3 itself: the work is done by
/// then, because every entry to EL2 from a guest runs the mitigation
/// (`arch::spectre`), so it returns 0 at once, as KVM's fast path does; on a
/// system where the call is not implemented (NOT_SUPPORTED above) it says so.
/// ARCH_WORKAROUND_2 is never needed dynamically here (NOT_REQUIRED or
/// NOT_SUPPORTED above), and its calls answer NOT_SUPPORTED, as KVM's do.
#[must_use]
pub fn arch_workaround(fid: u32, v: Verdict) -> u64 {
    let state = match fid {
        SMCCC_ARCH_WORKAROUND_1 => v.v2,
        SMCCC_ARCH_WORKAROUND_3 => v.bhb,
        _ => return NOT_SUPPORTED,
    };
    if state == State::Vulnerable {
        NOT_SUPPORTED
    } else {
        SUCCESS
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
        assert_eq!(
            arch_features(SMCCC_ARCH_FEATURES, Verdict::UNKNOWN),
            SUCCESS
        );
    }

    /// The ARCH_WORKAROUND answers for each state (KVM's, as Linux's
    /// proton-pack.c reads them), and the calls themselves.
    #[test]
    fn workaround_answers_follow_the_verdict() {
        let all = |s| Verdict {
            v2: s,
            ssb: s,
            bhb: s,
        };
        let (w1, w2, w3) = (
            SMCCC_ARCH_WORKAROUND_1,
            SMCCC_ARCH_WORKAROUND_2,
            SMCCC_ARCH_WORKAROUND_3,
        );
        // Nothing assessed (or affected and unmitigated): no claim.
        for fid in [w1, w2, w3] {
            assert_eq!(arch_features(fid, Verdict::UNKNOWN), NOT_SUPPORTED);
            assert_eq!(arch_workaround(fid, Verdict::UNKNOWN), NOT_SUPPORTED);
        }
        // The Pi 4's Cortex-A72: v2 and BHB mitigated, SSB statically.
        let a72 = all(State::Mitigated);
        assert_eq!(arch_features(w1, a72), SUCCESS);
        assert_eq!(arch_features(w3, a72), SUCCESS);
        assert_eq!(arch_features(w2, a72), SMCCC_RET_NOT_REQUIRED);
        assert_eq!(arch_workaround(w1, a72), SUCCESS);
        assert_eq!(arch_workaround(w3, a72), SUCCESS);
        assert_eq!(arch_workaround(w2, a72), NOT_SUPPORTED);
        // QEMU -cpu max: CSV2_3 and SSBS.
        let max = all(State::Unaffected);
        assert_eq!(arch_features(w1, max), SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED);
        assert_eq!(arch_features(w3, max), SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED);
        assert_eq!(arch_features(w2, max), SMCCC_RET_NOT_REQUIRED);
        assert_eq!(arch_workaround(w1, max), SUCCESS);
        // Mixed: one state does not leak into another's answer.
        let mixed = Verdict {
            v2: State::Unaffected,
            ssb: State::Vulnerable,
            bhb: State::Mitigated,
        };
        assert_eq!(
            arch_features(w1, mixed),
            SMCCC_ARCH_WORKAROUND_RET_UNAFFECTED
        );
        assert_eq!(arch_features(w2, mixed), NOT_SUPPORTED);
        assert_eq!(arch_features(w3, mixed), SUCCESS);
        // Decoding: 32-bit IDs, upper half ignored.
        assert_eq!(
            decode([0xffff_0000_0000_0000 | u64::from(w1), 0, 0, 0]),
            Hypercall::ArchWorkaround { fid: w1 }
        );
        assert_eq!(call(w2, 1, 0, 0), Hypercall::ArchWorkaround { fid: w2 });
    }

    fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> Hypercall {
        decode([u64::from(fid), a1, a2, a3])
    }

    #[test]
    fn vendor_uid_and_features() {
        assert_eq!(call(0x8600_ff01, 0, 0, 0), Hypercall::VendorUid);
        assert_eq!(
            stateless_answer(Hypercall::VendorUid),
            Some([0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d])
        );
        assert_eq!(call(0x8600_0000, 0, 0, 0), Hypercall::VendorFeatures);
        // Bits 0, 2, 3, 4 and 7: FEATURES, HYP_MEMINFO, MEM_SHARE/UNSHARE,
        // MMIO_GUARD (the policy hides 3, 4 and 7 from normal VMs).
        assert_eq!(
            stateless_answer(Hypercall::VendorFeatures),
            Some([0x9d, 0, 0, 0])
        );
        assert_eq!(vendor::FEATURES_BITMAP & !vendor::PROTECTED_ONLY, 0x5);
        // 32-bit IDs: the upper half of x0 is ignored.
        assert_eq!(
            decode([0xdead_0000_8600_ff01, 0, 0, 0]),
            Hypercall::VendorUid
        );
    }

    #[test]
    fn meminfo() {
        assert_eq!(call(0xc600_0002, 0, 0, 0), Hypercall::HypMemInfo);
        assert_eq!(
            stateless_answer(Hypercall::HypMemInfo),
            Some([4096, 0, 0, 0])
        );
        let fid = vendor::HYP_MEMINFO;
        for args in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (u64::MAX, 0, 0)] {
            let c = call(fid, args.0, args.1, args.2);
            assert_eq!(c, Hypercall::InvalidParameter { fid }, "{args:?}");
            assert_eq!(stateless_answer(c), Some([(-3i64) as u64, 0, 0, 0]));
        }
    }

    #[test]
    fn mem_share_and_unshare() {
        assert_eq!(
            call(0xc600_0003, 0x4000_1000, 0, 0),
            Hypercall::MemShare { ipa: 0x4000_1000 }
        );
        assert_eq!(
            call(0xc600_0004, 0x4000_1000, 0, 0),
            Hypercall::MemUnshare { ipa: 0x4000_1000 }
        );
        // IPA 0 is page-aligned: ownership (not decoding) rejects it.
        assert_eq!(call(0xc600_0003, 0, 0, 0), Hypercall::MemShare { ipa: 0 });
        assert_eq!(stateless_answer(Hypercall::MemShare { ipa: 0 }), None);
        assert_eq!(stateless_answer(Hypercall::MemUnshare { ipa: 0 }), None);
        for fid in [vendor::MEM_SHARE, vendor::MEM_UNSHARE] {
            for (a1, a2, a3) in [
                (0x4000_1001, 0, 0),
                (0x4000_1800, 0, 0),
                (0x4000_1000, 1, 0),
                (0x4000_1000, 0, 1),
            ] {
                assert_eq!(
                    call(fid, a1, a2, a3),
                    Hypercall::InvalidParameter { fid },
                    "{fid:#x} {a1:#x} {a2} {a3}"
                );
            }
        }
    }

    #[test]
    fn mmio_guard_call() {
        assert_eq!(
            call(0xc600_0007, 0x0a00_0000, 0, 0),
            Hypercall::MmioGuard { ipa: 0x0a00_0000 }
        );
        assert_eq!(stateless_answer(Hypercall::MmioGuard { ipa: 0 }), None);
        let fid = vendor::MMIO_GUARD;
        for (a1, a2, a3) in [
            (0x0a00_0004, 0, 0),
            (0x0a00_0800, 0, 0),
            (0x0a00_0000, 1, 0),
            (0x0a00_0000, 0, 1),
        ] {
            assert_eq!(
                call(fid, a1, a2, a3),
                Hypercall::InvalidParameter { fid },
                "{a1:#x} {a2} {a3}"
            );
        }
        // Android's numbering (INFO = 5, ENROLL = 6, UNMAP = 8) is gone.
        for fid in [0xc600_0005, 0xc600_0006, 0xc600_0008] {
            assert_eq!(call(fid, 0x0a00_0000, 0, 0), Hypercall::Unknown { fid });
        }
        // Unnumbered vendor functions (PTP = 1, MEM_RELINQUISH = 9) stay unknown.
        assert_eq!(
            call(0x8600_0001, 0, 0, 0),
            Hypercall::Unknown { fid: 0x8600_0001 }
        );
        assert_eq!(
            call(0xc600_0009, 0x4000_0000, 0, 0),
            Hypercall::Unknown { fid: 0xc600_0009 }
        );
    }

    #[test]
    fn return_code_spaces() {
        assert_eq!(SMCCC_RET_SUCCESS, SUCCESS);
        assert_eq!(SMCCC_RET_NOT_SUPPORTED, NOT_SUPPORTED);
        assert_eq!(SMCCC_RET_NOT_REQUIRED as i64, -2);
        assert_eq!(SMCCC_RET_INVALID_PARAMETER as i64, -3);
        // Same value, different services.
        assert_eq!(SMCCC_RET_NOT_REQUIRED, INVALID_PARAMETERS);
    }

    #[test]
    fn features_calls_do_not_advertise_vendor_functions() {
        for fid in [
            vendor::CALL_UID,
            vendor::KVM_FEATURES,
            vendor::HYP_MEMINFO,
            vendor::MEM_SHARE,
            vendor::MEM_UNSHARE,
            vendor::MMIO_GUARD,
        ] {
            assert_eq!(psci_features(fid), NOT_SUPPORTED, "{fid:#x}");
            assert_eq!(
                arch_features(fid, Verdict::UNKNOWN),
                NOT_SUPPORTED,
                "{fid:#x}"
            );
        }
        // ARCH_FEATURES is for arch calls only: PSCI functions are not its business.
        assert_eq!(
            arch_features(PSCI_CPU_ON_64, Verdict::UNKNOWN),
            NOT_SUPPORTED
        );
        assert_eq!(arch_features(SMCCC_VERSION, Verdict::UNKNOWN), SUCCESS);
        assert_eq!(psci_features(SMCCC_VERSION), SUCCESS);
    }

    #[test]
    fn stateless_answers_for_psci_and_arch() {
        assert_eq!(
            stateless_answer(Hypercall::PsciVersion),
            Some([0x1_0001, 0, 0, 0])
        );
        assert_eq!(
            stateless_answer(Hypercall::Unknown { fid: 1 }),
            Some([NOT_SUPPORTED, 0, 0, 0])
        );
        assert_eq!(
            stateless_answer(Hypercall::ArchFeatures {
                fid: SMCCC_ARCH_FEATURES
            }),
            Some([0, 0, 0, 0])
        );
        assert_eq!(stateless_answer(Hypercall::CpuOff), None);
        assert_eq!(
            stateless_answer(Hypercall::CpuOn {
                target: 1,
                entry: 0,
                context: 0
            }),
            None
        );
    }

    #[test]
    fn measurement_calls() {
        use hyp_abi::pvmfw::{MEASUREMENT_GET, MEASUREMENT_SET};
        assert_eq!(call(MEASUREMENT_SET, 1, 2, 3), Hypercall::MeasurementSet);
        assert_eq!(
            call(MEASUREMENT_GET, 1, 1, 0),
            Hypercall::MeasurementGet { item: 1, half: 1 }
        );
        for (a1, a2, a3) in [(2, 0, 0), (0, 2, 0), (0, 0, 1)] {
            assert_eq!(
                call(MEASUREMENT_GET, a1, a2, a3),
                Hypercall::InvalidParameter {
                    fid: MEASUREMENT_GET
                }
            );
        }
        // Outside KVM's vendor function numbers (0..=127).
        const { assert!(MEASUREMENT_SET & 0xffff > 127 && MEASUREMENT_GET & 0xffff > 127) };
        assert_eq!(stateless_answer(Hypercall::MeasurementSet), None);
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
