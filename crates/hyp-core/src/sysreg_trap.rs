//! Which trapped system-register access (EC 0x18) is which: the dispatch
//! key for the handlers of HCR_EL2.TID3 (ID registers), TVM (writes to the
//! EL1 MMU and fault registers), TSW (data-cache set/way operations) and
//! the GICv3 SGI-generation registers.
//!
//! The ISS itself is decoded by [`crate::exit::decode_sysreg`] (op0, op2,
//! op1, CRn, Rt, CRm, direction; Arm ARM D24.2.40 "ISS encoding for an
//! exception from MSR, MRS, or System instruction execution in AArch64
//! state"). Here only the encodings are named. Pure; host-tested.

use crate::exit::{SysRegAccess, SysRegEnc};
use crate::idregs;

/// An EL1 register whose writes HCR_EL2.TVM traps (Arm ARM D24.2.x
/// HCR_EL2.TVM; the FEAT_AIE/S1PIE/TCR2/SCTLR2 additions are not offered to
/// guests, see `idregs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmReg {
    /// SCTLR_EL1 (3, 0, 1, 0, 0): the MMU and cache enables.
    Sctlr,
    /// TTBR0_EL1 (3, 0, 2, 0, 0).
    Ttbr0,
    /// TTBR1_EL1 (3, 0, 2, 0, 1).
    Ttbr1,
    /// TCR_EL1 (3, 0, 2, 0, 2).
    Tcr,
    /// AFSR0_EL1 (3, 0, 5, 1, 0).
    Afsr0,
    /// AFSR1_EL1 (3, 0, 5, 1, 1).
    Afsr1,
    /// ESR_EL1 (3, 0, 5, 2, 0).
    Esr,
    /// FAR_EL1 (3, 0, 6, 0, 0).
    Far,
    /// MAIR_EL1 (3, 0, 10, 2, 0).
    Mair,
    /// AMAIR_EL1 (3, 0, 10, 3, 0).
    Amair,
    /// CONTEXTIDR_EL1 (3, 0, 13, 0, 1).
    Contextidr,
}

/// A data-cache maintenance by set/way, trapped by HCR_EL2.TSW (op0 = 1,
/// op1 = 0, CRn = 7, op2 = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetWayOp {
    /// DC ISW (CRm = 6): invalidate.
    Invalidate,
    /// DC CSW (CRm = 10): clean.
    Clean,
    /// DC CISW (CRm = 14): clean and invalidate.
    CleanInvalidate,
}

/// What a trapped MSR/MRS/SYS instruction accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrappedSysReg {
    /// An ID register of the TID3 space (answer reads with
    /// [`idregs::sanitise`]; writes are UNDEFINED).
    IdReg(SysRegEnc),
    /// A TVM-trapped EL1 register.
    Vm(VmReg),
    /// A DC set/way operation.
    SetWay(SetWayOp),
    /// ICC_SGI1R_EL1 (3, 0, 12, 11, 5): generate a Group 1 SGI.
    IccSgi1r,
    /// ICC_ASGI1R_EL1 (3, 0, 12, 11, 6): generate an SGI for the other
    /// Security state's Group 1.
    IccAsgi1r,
    /// ICC_SGI0R_EL1 (3, 0, 12, 11, 7): generate a Group 0 SGI.
    IccSgi0r,
    /// Anything else: the hypervisor injects an undefined-instruction
    /// exception (IMPLEMENTATION DEFINED registers, PMU, debug, ...).
    Other(SysRegEnc),
}

/// Names the register or instruction of a trapped access.
#[must_use]
pub fn classify(enc: SysRegEnc) -> TrappedSysReg {
    if idregs::is_tid3(enc) {
        return TrappedSysReg::IdReg(enc);
    }
    let SysRegEnc {
        op0,
        op1,
        crn,
        crm,
        op2,
    } = enc;
    match (op0, op1, crn, crm, op2) {
        (3, 0, 1, 0, 0) => TrappedSysReg::Vm(VmReg::Sctlr),
        (3, 0, 2, 0, 0) => TrappedSysReg::Vm(VmReg::Ttbr0),
        (3, 0, 2, 0, 1) => TrappedSysReg::Vm(VmReg::Ttbr1),
        (3, 0, 2, 0, 2) => TrappedSysReg::Vm(VmReg::Tcr),
        (3, 0, 5, 1, 0) => TrappedSysReg::Vm(VmReg::Afsr0),
        (3, 0, 5, 1, 1) => TrappedSysReg::Vm(VmReg::Afsr1),
        (3, 0, 5, 2, 0) => TrappedSysReg::Vm(VmReg::Esr),
        (3, 0, 6, 0, 0) => TrappedSysReg::Vm(VmReg::Far),
        (3, 0, 10, 2, 0) => TrappedSysReg::Vm(VmReg::Mair),
        (3, 0, 10, 3, 0) => TrappedSysReg::Vm(VmReg::Amair),
        (3, 0, 13, 0, 1) => TrappedSysReg::Vm(VmReg::Contextidr),
        (1, 0, 7, 6, 2) => TrappedSysReg::SetWay(SetWayOp::Invalidate),
        (1, 0, 7, 10, 2) => TrappedSysReg::SetWay(SetWayOp::Clean),
        (1, 0, 7, 14, 2) => TrappedSysReg::SetWay(SetWayOp::CleanInvalidate),
        (3, 0, 12, 11, 5) => TrappedSysReg::IccSgi1r,
        (3, 0, 12, 11, 6) => TrappedSysReg::IccAsgi1r,
        (3, 0, 12, 11, 7) => TrappedSysReg::IccSgi0r,
        _ => TrappedSysReg::Other(enc),
    }
}

/// Classifies a decoded access, for handlers that also need Rt and the
/// direction.
#[must_use]
pub fn classify_access(a: &SysRegAccess) -> TrappedSysReg {
    classify(a.enc)
}

/// The value a guest reads from a trapped debug register, or `None` when
/// `enc` is not one.
///
/// Debug registers are the op0 = 2 space (Arm ARM C5.1.2 "op0 == 0b10,
/// Moves to and from debug and trace System registers": MDSCR_EL1,
/// OSLAR_EL1, OSDLR_EL1, DBGBVR<n>_EL1, DBGWCR<n>_EL1, MDCCINT_EL1, ...);
/// MDCR_EL2.TDA/TDOSA/TDRA trap them all. Nothing is virtualised, so they
/// are RAZ/WI rather than UNDEFINED: Linux's `__cpu_setup`
/// (arch/arm64/mm/proc.S) writes MDSCR_EL1 unconditionally with its MMU
/// off, and `debug-monitors.c` clears the OS lock on every CPU, so an
/// injected UNDEF there kills the kernel (issue #9). The one exception is
/// OSLSR_EL1 (2, 0, 1, 1, 4), which reads OSLM = 0b10 ("OS lock
/// implemented", bit 3) with the lock clear, as FEAT_DoubleLock-less
/// Armv8 requires. PMU registers (op0 = 3) stay UNDEFINED.
#[must_use]
pub fn debug_read(enc: SysRegEnc) -> Option<u64> {
    if enc.op0 != 2 {
        return None;
    }
    Some(match (enc.op1, enc.crn, enc.crm, enc.op2) {
        (0, 1, 1, 4) => 1 << 3,
        _ => 0,
    })
}

/// SCTLR_EL1.M (bit 0): stage-1 MMU enable.
pub const SCTLR_M: u64 = 1 << 0;
/// SCTLR_EL1.C (bit 2): data cache enable.
pub const SCTLR_C: u64 = 1 << 2;

/// Whether an SCTLR_EL1 value has the MMU and data caches both on: the
/// condition whose change needs a VM-wide clean+invalidate (ARM-RULES.md
/// section 3, KVM's `vcpu_has_cache_enabled`).
#[must_use]
pub const fn caches_on(sctlr: u64) -> bool {
    sctlr & (SCTLR_M | SCTLR_C) == SCTLR_M | SCTLR_C
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{decode_sysreg, Esr};

    /// ESR_EL2 for a trapped access with this encoding, Rt and direction.
    fn esr(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> Esr {
        let iss = (op0 << 20)
            | (op2 << 17)
            | (op1 << 14)
            | (crn << 10)
            | (rt << 5)
            | (crm << 1)
            | u64::from(read);
        Esr((0x18 << 26) | (1 << 25) | iss)
    }

    fn c(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> TrappedSysReg {
        classify_access(&decode_sysreg(esr(op0, op1, crn, crm, op2, 0, false)))
    }

    #[test]
    fn id_registers() {
        // MRS x3, ID_AA64PFR0_EL1.
        let a = decode_sysreg(esr(3, 0, 0, 4, 0, 3, true));
        assert!(a.read);
        assert_eq!(a.reg, 3);
        assert_eq!(
            classify_access(&a),
            TrappedSysReg::IdReg(SysRegEnc::new(3, 0, 0, 4, 0))
        );
        // ID_PFR0_EL1 (AArch32) and an unallocated slot are ID registers too.
        assert!(matches!(c(3, 0, 0, 1, 0), TrappedSysReg::IdReg(_)));
        assert!(matches!(c(3, 0, 0, 7, 7), TrappedSysReg::IdReg(_)));
        // MIDR_EL1 is not (VPIDR_EL2 virtualises it).
        assert!(matches!(c(3, 0, 0, 0, 0), TrappedSysReg::Other(_)));
    }

    #[test]
    fn tvm_registers() {
        let cases = [
            ((3, 0, 1, 0, 0), VmReg::Sctlr),
            ((3, 0, 2, 0, 0), VmReg::Ttbr0),
            ((3, 0, 2, 0, 1), VmReg::Ttbr1),
            ((3, 0, 2, 0, 2), VmReg::Tcr),
            ((3, 0, 5, 1, 0), VmReg::Afsr0),
            ((3, 0, 5, 1, 1), VmReg::Afsr1),
            ((3, 0, 5, 2, 0), VmReg::Esr),
            ((3, 0, 6, 0, 0), VmReg::Far),
            ((3, 0, 10, 2, 0), VmReg::Mair),
            ((3, 0, 10, 3, 0), VmReg::Amair),
            ((3, 0, 13, 0, 1), VmReg::Contextidr),
        ];
        for ((op0, op1, crn, crm, op2), r) in cases {
            assert_eq!(c(op0, op1, crn, crm, op2), TrappedSysReg::Vm(r), "{r:?}");
        }
        // MSR SCTLR_EL1, x2: Rt and the direction come through.
        let a = decode_sysreg(esr(3, 0, 1, 0, 0, 2, false));
        assert_eq!(a.reg, 2);
        assert!(!a.read);
        // SCTLR_EL12 style neighbours are not SCTLR_EL1: ACTLR_EL1 (3,0,1,0,1).
        assert!(matches!(c(3, 0, 1, 0, 1), TrappedSysReg::Other(_)));
    }

    #[test]
    fn set_way_and_sgi() {
        assert_eq!(
            c(1, 0, 7, 6, 2),
            TrappedSysReg::SetWay(SetWayOp::Invalidate)
        );
        assert_eq!(c(1, 0, 7, 10, 2), TrappedSysReg::SetWay(SetWayOp::Clean));
        assert_eq!(
            c(1, 0, 7, 14, 2),
            TrappedSysReg::SetWay(SetWayOp::CleanInvalidate)
        );
        // DC CIVAC (1, 3, 7, 14, 1) is by VA, not set/way.
        assert!(matches!(c(1, 3, 7, 14, 1), TrappedSysReg::Other(_)));
        assert_eq!(c(3, 0, 12, 11, 5), TrappedSysReg::IccSgi1r);
        assert_eq!(c(3, 0, 12, 11, 6), TrappedSysReg::IccAsgi1r);
        assert_eq!(c(3, 0, 12, 11, 7), TrappedSysReg::IccSgi0r);
    }

    #[test]
    fn impdef_and_pmu_are_other() {
        // S3_0_C15_C0_0 (IMPLEMENTATION DEFINED) and PMCR_EL0 (3, 3, 9, 12, 0).
        assert!(matches!(c(3, 0, 15, 0, 0), TrappedSysReg::Other(_)));
        assert!(matches!(c(3, 3, 9, 12, 0), TrappedSysReg::Other(_)));
    }

    #[test]
    fn cache_state() {
        assert!(!caches_on(0x30d0_0800));
        assert!(!caches_on(0x30d0_0801));
        assert!(!caches_on(0x30d0_0804));
        assert!(caches_on(0x30d0_0805));
        assert!(caches_on(0x30d0_1805));
    }

    #[test]
    fn debug_registers_are_raz_wi() {
        let enc = |op0, op1, crn, crm, op2| SysRegEnc {
            op0,
            op1,
            crn,
            crm,
            op2,
        };
        // MDSCR_EL1 (2, 0, 0, 2, 2), OSLAR_EL1 (2, 0, 1, 0, 4), DBGBCR0_EL1.
        assert_eq!(debug_read(enc(2, 0, 0, 2, 2)), Some(0));
        assert_eq!(debug_read(enc(2, 0, 1, 0, 4)), Some(0));
        assert_eq!(debug_read(enc(2, 0, 0, 0, 5)), Some(0));
        // OSLSR_EL1: OSLM = 0b10, unlocked.
        assert_eq!(debug_read(enc(2, 0, 1, 1, 4)), Some(8));
        // PMCR_EL0 (3, 3, 9, 12, 0) is not a debug register.
        assert_eq!(debug_read(enc(3, 3, 9, 12, 0)), None);
    }
}
