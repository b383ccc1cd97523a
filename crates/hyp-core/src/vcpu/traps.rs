//! The trap configuration every vCPU runs with: HCR_EL2, CPTR_EL2,
//! MDCR_EL2 and CNTHCTL_EL2 values, built from `aarch64-cpu`'s field
//! definitions (CPTR_EL2's E2H = 0 fields are local to `barriers::regs`,
//! which says why).

use aarch64_cpu::registers::{CNTHCTL_EL2, HCR_EL2, MDCR_EL2};
use barriers::regs::{CPTR_EL2_RES1, CPTR_EL2_TFP, CPTR_EL2_TSM, CPTR_EL2_TZ};

/// HCR_EL2 while any VM runs (written once per CPU at bring-up): stage 2
/// on, physical interrupts to EL2, the guest's TLBIs and barriers broadcast
/// inner-shareable, WFI and SMC trapped, ID registers (TID3),
/// implementation-defined registers (TIDCP) and ACTLR_EL1 (TACR) trapped,
/// EL1 in AArch64. Only trap bits ([`regs::HCR_GUEST_ONLY_FIELDS`]) change
/// per vCPU after that.
///
/// Left clear on purpose, so the registers they guard trap to EL2 and are
/// refused (UNDEFINED) rather than switched (ARCHITECTURE.md, "EL1 and GIC
/// state between VMs"): APK/API (pointer-authentication keys and
/// instructions), ATA (MTE's GCR/RGSR/TFSR/TFSRE0), EnSCXT (SCXTNUM_EL0/EL1).
///
/// [`regs::HCR_GUEST_ONLY_FIELDS`]: barriers::regs::HCR_GUEST_ONLY_FIELDS
pub const HCR_BASE: u64 = HCR_EL2::VM::Enable.value
    | HCR_EL2::SWIO::SET.value
    | HCR_EL2::FMO::EnableVirtualFIQ.value
    | HCR_EL2::IMO::EnableVirtualIRQ.value
    | HCR_EL2::AMO::SET.value
    | HCR_EL2::FB::SET.value
    | HCR_EL2::BSU::InnerShareable.value
    | HCR_EL2::TWI::SET.value
    | HCR_EL2::TID3::SET.value
    | HCR_EL2::TSC::EnableTrapEl1SmcToEl2.value
    | HCR_EL2::TIDCP::SET.value
    | HCR_EL2::TACR::SET.value
    | HCR_EL2::RW::EL1IsAarch64.value;

/// HCR_EL2.TLOR: the LORegion registers (LORSA/LOREA/LORN/LORC/LORID_EL1)
/// trap to EL2 and are refused. Only with FEAT_LOR (the bit is RES0
/// without it), so it is added at boot ([`set_feature_traps`]).
pub const HCR_TLOR: u64 = HCR_EL2::TLOR::SET.value;

/// Trap bits that depend on the CPU's features (only [`HCR_TLOR`]), set once
/// at boot before any CPU is brought up, part of every context's HCR_EL2.
static FEATURE_TRAPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Records the feature-dependent HCR_EL2 trap bits (boot, before any CPU's
/// bring-up).
pub fn set_feature_traps(bits: u64) {
    FEATURE_TRAPS.store(bits, core::sync::atomic::Ordering::Relaxed);
}

/// The feature-dependent HCR_EL2 trap bits ([`set_feature_traps`]).
#[must_use]
pub fn feature_traps() -> u64 {
    FEATURE_TRAPS.load(core::sync::atomic::Ordering::Relaxed)
}

/// HFGRTR_EL2, HFGWTR_EL2, HFGITR_EL2, HDFGRTR_EL2 and HDFGWTR_EL2 (FEAT_FGT;
/// reset value UNKNOWN, so written at every CPU's set-up): 0. Every
/// positive fine-grained trap is off (the coarse traps above decide), and
/// every `n*` trap is on: the registers of later features that nothing
/// else traps and the world switch does not switch (TPIDR2_EL0, SMPRI_EL1,
/// ACCDATA_EL1, PIR/PIRE0_EL1, POR_EL0/EL1, MAIR2/AMAIR2_EL1,
/// GCSCR/GCSPR_EL0/EL1, RCWMASK/RCWSMASK_EL1, BRBE, PMSNEVFR_EL1) are
/// refused.
pub const FGT: u64 = 0;

/// HCRX_EL2 (FEAT_HCX; reset value UNKNOWN): 0. TCR2_EL1 and SCTLR2_EL1
/// (TCR2En, SCTLR2En) trap and are refused; FPMR (EnFPM), GCS (GCSEn), the
/// memory-copy instructions (MSCEn), LS64 (EnAS0/EnALS/EnASR) and NMI
/// (TALLINT, VINMI) stay off for the lower ELs.
pub const HCRX: u64 = 0;

/// HCR_EL2.TVM: EL1 writes of the virtual-memory controls (SCTLR_EL1, ...)
/// trap to EL2.
pub const HCR_TVM: u64 = HCR_EL2::TVM::EnableTrapTVM.value;

/// Cache-maintenance traps of a guest vCPU without FEAT_S2FWB (seed 003,
/// ARM-RULES.md section 3): TVM catches its MMU/cache enable, TSW its
/// set/way operations.
pub const HCR_CACHE_TRAPS: u64 = HCR_TVM | HCR_EL2::TSW::SET.value;

/// HCR_EL2.FWB: stage-2 attributes force write-back (FEAT_S2FWB); added to
/// [`HCR_BASE`] at boot when stage 2 uses it.
pub const HCR_FWB: u64 = HCR_EL2::FWB::Enabled.value;

/// HCR_EL2 of the host's vCPUs: with FEAT_S2FWB in use, FWB stays set (it is
/// not a trap bit; a world switch that dropped it would change how every
/// stage-2 attribute combines, so `HcrEl2::write_traps_only` refuses).
#[must_use]
pub fn host_hcr(fwb: bool) -> u64 {
    feature_traps() | if fwb { HCR_BASE | HCR_FWB } else { HCR_BASE }
}

/// HCR_EL2 a guest vCPU starts with: FWB when stage 2 uses FEAT_S2FWB,
/// else the cache-maintenance traps that stand in for it.
#[must_use]
pub fn guest_hcr(fwb: bool) -> u64 {
    feature_traps()
        | if fwb {
            HCR_BASE | HCR_FWB
        } else {
            HCR_BASE | HCR_CACHE_TRAPS
        }
}

/// CPTR_EL2 (E2H = 0) with FP/SIMD usable: RES1 bits set, TSM (SME trapped)
/// and TZ (SVE trapped) set, TFP clear.
pub const CPTR_FP_ON: u64 = CPTR_EL2_RES1 | CPTR_EL2_TSM | CPTR_EL2_TZ;
/// The same with TFP set: FP/SIMD accesses trap to EL2.
pub const CPTR_TRAP_FP: u64 = CPTR_FP_ON | CPTR_EL2_TFP;
/// CPTR_EL2 with FP/SIMD and SVE usable (TFP, TZ clear; TSM set): a guest
/// vCPU that uses SVE while it owns the registers, and EL2 saving or
/// loading them (`vcpu::sve`).
pub const CPTR_SVE_ON: u64 = CPTR_FP_ON & !CPTR_EL2_TZ;

/// MDCR_EL2: trap PMU (TPM, TPMCR) and debug (TDA, TDOSA, TDRA) accesses;
/// nothing is virtualised, so they are answered with UNDEF.
pub const MDCR: u64 = MDCR_EL2::TPM::SET.value
    | MDCR_EL2::TPMCR::SET.value
    | MDCR_EL2::TDA::SET.value
    | MDCR_EL2::TDOSA::SET.value
    | MDCR_EL2::TDRA::SET.value;

/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN (counter reads allowed); EL1PCEN clear,
/// so the physical timer traps: the host's accesses are refused, a guest
/// vCPU's first access gives it the timer (`vcpu::ptimer`).
pub const CNTHCTL: u64 = CNTHCTL_EL2::EL1PCTEN::SET.value;
/// CNTHCTL_EL2 while a guest vCPU that uses the EL1 physical timer runs:
/// EL1PCEN set too, its CNTP_* accesses reach the timer.
pub const CNTHCTL_PTIMER: u64 = CNTHCTL | CNTHCTL_EL2::EL1PCEN::SET.value;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value is bit-for-bit what the hand-written bit constants gave.
    #[test]
    fn values_unchanged_by_field_definitions() {
        // VM, SWIO, FMO, IMO, AMO, FB, BSU = IS, TWI, TID3, TSC, TIDCP,
        // TACR, RW.
        assert_eq!(HCR_BASE, 0x801c_263b | (1 << 21));
        assert_eq!(HCR_TLOR, 1 << 35);
        assert_eq!(HCR_TVM, 1 << 26);
        assert_eq!(HCR_CACHE_TRAPS, (1 << 26) | (1 << 22));
        assert_eq!(HCR_FWB, 1 << 46);
        assert_eq!(CPTR_FP_ON, 0x33ff);
        assert_eq!(CPTR_TRAP_FP, 0x33ff | (1 << 10));
        assert_eq!(CPTR_SVE_ON, 0x32ff);
        assert_eq!(MDCR, (1 << 6) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 11));
        assert_eq!(CNTHCTL, 1);
        assert_eq!(CNTHCTL_PTIMER, 0b11);
    }

    /// Per-vCPU trap changes stay within the fields `barriers` lets change
    /// without an ISB.
    #[test]
    fn cache_traps_are_guest_only_fields() {
        assert_eq!(HCR_CACHE_TRAPS & !barriers::regs::HCR_GUEST_ONLY_FIELDS, 0);
        assert_eq!(HCR_TLOR & !barriers::regs::HCR_GUEST_ONLY_FIELDS, 0);
    }
}

/// Per VM: the vCPUs whose HCR_EL2.TVM must be set again at their next
/// entry because another vCPU did a set/way operation (`exit::sysreg::set_way`'s
/// `rearm_others`). One bit per vCPU; a vCPU's HCR is its own (it may be
/// running on another CPU), so each vCPU applies its bit itself with
/// [`TvmRearm::take`] before it enters the guest.
#[derive(Debug)]
pub struct TvmRearm(core::sync::atomic::AtomicU8);

impl TvmRearm {
    /// No requests.
    #[must_use]
    pub const fn new() -> Self {
        Self(core::sync::atomic::AtomicU8::new(0))
    }

    /// Asks every vCPU but `me` to set TVM at its next entry; returns the
    /// vCPUs asked (to kick those running elsewhere). A request left for a
    /// vCPU that never enters, or that boots with TVM set anyway, is
    /// harmless: it only sets a trap.
    pub fn request(&self, me: usize) -> u8 {
        let others = !(1u8.checked_shl(me as u32).unwrap_or(0));
        self.0
            .fetch_or(others, core::sync::atomic::Ordering::AcqRel);
        others
    }

    /// At vCPU `v`'s entry: whether it must set TVM (consuming the request).
    /// One load when there is none.
    pub fn take(&self, v: usize) -> bool {
        use core::sync::atomic::Ordering;
        let bit = 1u8.checked_shl(v as u32).unwrap_or(0);
        self.0.load(Ordering::Acquire) & bit != 0
            && self.0.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }
}

impl Default for TvmRearm {
    fn default() -> Self {
        Self::new()
    }
}
