//! What a guest sees when it reads an ID register trapped by HCR_EL2.TID3.
//!
//! TID3 traps EL1 reads of the whole "ID group 3" space: op0 = 3, op1 = 0,
//! CRn = 0, CRm = 1..7, any op2 (Arm ARM DDI 0487 D24.2.x HCR_EL2.TID3, and
//! table D23-2 "System instruction encodings for non-Debug System register
//! accesses"). [`sanitise`] maps the hardware value of each of these to the
//! value the guest gets. The rule is an allow-list, field by field:
//!
//! - every 4-bit field of a described AArch64 register has a [`Rule`] in
//!   [`ID_REGS`]; bits outside the listed fields read as zero, so a feature
//!   this table does not know about (added by a later architecture version)
//!   is hidden until someone decides otherwise;
//! - features whose state the hypervisor does not context-switch or whose
//!   traps it does not handle are hidden: SVE, SME, AMU, MPAM, MTE, PAuth
//!   (the APxKey registers are not switched), SPE, TRBE, BRBE, trace, PMU,
//!   TME, nested virtualisation (EL2), GCS, the FEAT_*2 EL1 registers
//!   (TCR2, SCTLR2, PIE/POE, ...), and every field that only describes EL2;
//! - features that are facts about the hardware, or whose state lives in
//!   registers the hypervisor already switches (PSTATE, SCTLR_EL1, FPCR,
//!   ...), are passed through, capped where a later level would need more
//!   (e.g. RAS at v1, GIC at the v3 system-register interface);
//! - the AArch32 ID registers read as zero: guests' EL0 and EL1 are
//!   AArch64-only (ID_AA64PFR0_EL1.EL0/EL1 are capped at 0b0001), and the Arm
//!   ARM makes them UNKNOWN when AArch32 is not implemented at any EL, so 0
//!   is an allowed value that leaks nothing about the host;
//! - every other (unallocated or not described) encoding of the space reads
//!   as zero (RAZ), as the Arm ARM reserves them.
//!
//! Pure and table-driven; host-tested.

use crate::arch::esr::SysRegEnc;

/// What happens to one 4-bit ID field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Pass the hardware value through.
    Keep,
    /// Report "not implemented": 0b0000 for unsigned fields, 0b1111 for
    /// signed ones (Arm ARM D19.1.3 "Principles of the ID scheme").
    Hide,
    /// Unsigned field: the smaller of the hardware value and this level.
    Cap(u8),
    /// Report this value whatever the hardware says.
    Force(u8),
}

/// One 4-bit field of an ID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The Arm ARM field name.
    pub name: &'static str,
    /// Lowest bit of the field.
    pub shift: u8,
    /// Signed field (0b1111 = not implemented).
    pub signed: bool,
    /// What the guest sees.
    pub rule: Rule,
}

/// An ID register and the rules for its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdReg {
    /// Architectural name.
    pub name: &'static str,
    /// Encoding (op0, op1, CRn, CRm, op2).
    pub enc: SysRegEnc,
    /// Its fields; bits outside them read as zero. Empty: the register is RAZ.
    pub fields: &'static [Field],
}

/// PARange (ID_AA64MMFR0_EL1) the guest sees: 0b0010, 40 bits, the IPA size
/// of every VM's stage 2 (`vm::IPA_BITS`). A guest must not place anything
/// above the IPA space it is told about.
pub const GUEST_PARANGE: u8 = 0b0010;

const fn u(name: &'static str, shift: u8, rule: Rule) -> Field {
    Field {
        name,
        shift,
        signed: false,
        rule,
    }
}

const fn s(name: &'static str, shift: u8, rule: Rule) -> Field {
    Field {
        name,
        shift,
        signed: true,
        rule,
    }
}

const fn reg(name: &'static str, crm: u8, op2: u8, fields: &'static [Field]) -> IdReg {
    IdReg {
        name,
        enc: SysRegEnc::new(3, 0, 0, crm, op2),
        fields,
    }
}

use Rule::{Cap, Force, Hide, Keep};

/// ID_AA64PFR0_EL1 (D24.2.x).
const PFR0: &[Field] = &[
    // AArch64 only at EL0 and EL1: the hypervisor handles no AArch32 traps.
    u("EL0", 0, Cap(1)),
    u("EL1", 4, Cap(1)),
    // No nested virtualisation.
    u("EL2", 8, Hide),
    // SMC is trapped and answered (PSCI/SMCCC conduit), so the guest sees
    // an AArch64 EL3 behind it, as pKVM reports.
    u("EL3", 12, Cap(1)),
    // FP/SIMD registers are the guest's (switched by the hypervisor).
    s("FP", 16, Keep),
    s("AdvSIMD", 20, Keep),
    // GICv3 system-register CPU interface (the ICV_* registers under
    // HCR_EL2.IMO/FMO); no GICv4.1 features.
    u("GIC", 24, Cap(1)),
    // RAS v1 only (RAS_frac hidden in PFR1): the v1p1 error-record
    // additions are not virtualised.
    u("RAS", 28, Cap(1)),
    // SVE state is not switched (CPTR_EL2.TZ traps it).
    u("SVE", 32, Hide),
    u("SEL2", 36, Hide),
    u("MPAM", 40, Hide),
    u("AMU", 44, Hide),
    // PSTATE.DIT travels in SPSR.
    u("DIT", 48, Keep),
    u("RME", 52, Hide),
    // Statements about the hardware's speculation behaviour.
    u("CSV2", 56, Keep),
    u("CSV3", 60, Keep),
];

/// ID_AA64PFR1_EL1.
const PFR1: &[Field] = &[
    // BTI: PSTATE.BTYPE and SCTLR_EL1.BT* are switched.
    u("BT", 0, Keep),
    // PSTATE.SSBS.
    u("SSBS", 4, Keep),
    // Allocation tags and the MTE registers are not switched.
    u("MTE", 8, Hide),
    u("RAS_frac", 12, Hide),
    u("MPAM_frac", 16, Hide),
    u("SME", 24, Hide),
    u("RNDR_trap", 28, Hide),
    u("CSV2_frac", 32, Keep),
    // FEAT_NMI needs a virtual GIC with NMI support.
    u("NMI", 36, Hide),
    u("MTE_frac", 40, Hide),
    // GCS registers are not switched.
    u("GCS", 44, Hide),
    // FEAT_THE: RCWMASK/RCWSMASK registers not switched.
    u("THE", 48, Hide),
    u("MTEX", 52, Hide),
    u("DF2", 56, Hide),
    u("PFAR", 60, Hide),
];

/// ID_AA64DFR0_EL1.
const DFR0: &[Field] = &[
    // Armv8.0 debug architecture: the later debug features are not offered.
    u("DebugVer", 0, Force(6)),
    u("TraceVer", 4, Hide),
    // No PMU: PMUVer = 0 (not implemented).
    u("PMUVer", 8, Hide),
    // Breakpoint and watchpoint counts describe the hardware.
    u("BRPs", 12, Keep),
    u("PMSS", 16, Hide),
    u("WRPs", 20, Keep),
    u("SEBEP", 24, Hide),
    u("CTX_CMPs", 28, Keep),
    // SPE.
    u("PMSVer", 32, Hide),
    // OS Double Lock is not emulated: 0b1111, not implemented.
    s("DoubleLock", 36, Hide),
    u("TraceFilt", 40, Hide),
    // TRBE.
    u("TraceBuffer", 44, Hide),
    // No PMU, so no multi-threaded PMU: 0 (not implemented).
    u("MTPMU", 48, Hide),
    u("BRBE", 52, Hide),
    u("ExtTrcBuff", 56, Hide),
    u("HPMN0", 60, Hide),
];

/// ID_AA64ISAR0_EL1. Instructions that touch only general-purpose or FP
/// registers are passed through.
const ISAR0: &[Field] = &[
    u("AES", 4, Keep),
    u("SHA1", 8, Keep),
    u("SHA2", 12, Keep),
    u("CRC32", 16, Keep),
    u("Atomic", 20, Keep),
    // Transactional memory: its state is not switched.
    u("TME", 24, Hide),
    u("RDM", 28, Keep),
    u("SHA3", 32, Keep),
    u("SM3", 36, Keep),
    u("SM4", 40, Keep),
    u("DP", 44, Keep),
    u("FHM", 48, Keep),
    u("TS", 52, Keep),
    u("TLB", 56, Keep),
    u("RNDR", 60, Keep),
];

/// ID_AA64ISAR1_EL1.
const ISAR1: &[Field] = &[
    u("DPB", 0, Keep),
    // Pointer authentication: the APxKey_EL1 registers are not switched, so
    // one guest's keys would be another's.
    u("APA", 4, Hide),
    u("API", 8, Hide),
    u("JSCVT", 12, Keep),
    u("FCMA", 16, Keep),
    u("LRCPC", 20, Keep),
    u("GPA", 24, Hide),
    u("GPI", 28, Hide),
    u("FRINTTS", 32, Keep),
    u("SB", 36, Keep),
    u("SPECRES", 40, Keep),
    u("BF16", 44, Keep),
    u("DGH", 48, Keep),
    u("I8MM", 52, Keep),
    u("XS", 56, Keep),
    // 64-byte loads/stores to device memory cannot be emulated as MMIO.
    u("LS64", 60, Hide),
];

/// ID_AA64ISAR2_EL1.
const ISAR2: &[Field] = &[
    // WFET/WFIT: the WFx trap handling knows only WFI/WFE.
    u("WFxT", 0, Hide),
    u("RPRES", 4, Keep),
    u("GPA3", 8, Hide),
    u("APA3", 12, Hide),
    // FEAT_MOPS needs HCRX_EL2.MSCEn and MOPS exception handling.
    u("MOPS", 16, Hide),
    u("BC", 20, Keep),
    u("PAC_frac", 24, Hide),
    u("CLRBHB", 28, Keep),
    u("SYSREG_128", 32, Hide),
    u("SYSINSTR_128", 36, Hide),
    u("PRFMSLC", 40, Keep),
    u("PCDPHINT", 44, Keep),
    u("RPRFM", 48, Keep),
    u("CSSC", 52, Keep),
    u("LUT", 56, Keep),
    u("ATS1A", 60, Keep),
];

/// ID_AA64MMFR0_EL1.
const MMFR0: &[Field] = &[
    // The IPA space the VM has, not the host's PA space.
    u("PARange", 0, Force(GUEST_PARANGE)),
    u("ASIDBits", 4, Keep),
    u("BigEnd", 8, Keep),
    u("SNSMem", 12, Hide),
    u("BigEndEL0", 16, Keep),
    // Stage-1 granules are the guest's business.
    u("TGran16", 20, Keep),
    s("TGran64", 24, Keep),
    s("TGran4", 28, Keep),
    // Stage-2 granules describe EL2: 0 = "as the stage-1 field".
    u("TGran16_2", 32, Hide),
    u("TGran64_2", 36, Hide),
    u("TGran4_2", 40, Hide),
    // SCTLR_EL1.EIS/EOS are switched with SCTLR_EL1.
    u("ExS", 44, Keep),
    u("FGT", 56, Hide),
    // Self-synchronised counter reads (ECV = 1); no CNTPOFF (an EL2 feature).
    u("ECV", 60, Cap(1)),
];

/// ID_AA64MMFR1_EL1.
const MMFR1: &[Field] = &[
    // Hardware AF and dirty-state management in the guest's stage 1; no HAFT.
    u("HAFDBS", 0, Cap(2)),
    u("VMIDBits", 4, Hide),
    u("VH", 8, Hide),
    u("HPDS", 12, Keep),
    // LORegions: the LOR* registers are not switched.
    u("LO", 16, Hide),
    u("PAN", 20, Keep),
    u("SpecSEI", 24, Keep),
    u("XNX", 28, Hide),
    u("TWED", 32, Hide),
    u("ETS", 36, Keep),
    u("HCX", 40, Hide),
    // FPCR.AH/FIZ/NEP are guest FP state.
    u("AFP", 44, Keep),
    u("nTLBPA", 48, Keep),
    u("TIDCP1", 52, Keep),
    u("CMOW", 56, Keep),
    u("ECBHB", 60, Keep),
];

/// ID_AA64MMFR2_EL1.
const MMFR2: &[Field] = &[
    u("CnP", 0, Keep),
    u("UAO", 4, Keep),
    u("LSM", 8, Keep),
    u("IESB", 12, Keep),
    u("VARange", 16, Keep),
    u("CCIDX", 20, Keep),
    // Nested virtualisation.
    u("NV", 24, Hide),
    u("ST", 28, Keep),
    u("AT", 32, Keep),
    u("IDS", 36, Keep),
    // EL2 features.
    u("FWB", 40, Hide),
    u("TTL", 48, Keep),
    u("BBM", 52, Keep),
    u("EVT", 56, Hide),
    u("E0PD", 60, Keep),
];

/// ID_AA64MMFR3_EL1: every feature but one adds EL1 registers the
/// hypervisor does not switch (TCR2, SCTLR2, PIRE0/PIR, POR, MAIR2, ...).
const MMFR3: &[Field] = &[
    u("TCRX", 0, Hide),
    u("SCTLRX", 4, Hide),
    u("S1PIE", 8, Hide),
    u("S2PIE", 12, Hide),
    u("S1POE", 16, Hide),
    u("S2POE", 20, Hide),
    u("AIE", 24, Hide),
    u("MEC", 28, Hide),
    u("D128", 32, Hide),
    u("D128_2", 36, Hide),
    u("SNERR", 40, Hide),
    u("ANERR", 44, Hide),
    u("SDERR", 52, Hide),
    u("ADERR", 56, Hide),
    // A statement about speculation.
    u("Spec_FPACC", 60, Keep),
];

/// The AArch64 ID registers with field rules. Registers of the TID3 space
/// not listed here (ID_AA64ZFR0/SMFR0, PFR2, FPFR0, DFR1/DFR2, AFR0/AFR1,
/// ISAR3, MMFR4, the AArch32 registers, unallocated encodings) read as zero.
pub const ID_REGS: &[IdReg] = &[
    reg("ID_AA64PFR0_EL1", 4, 0, PFR0),
    reg("ID_AA64PFR1_EL1", 4, 1, PFR1),
    reg("ID_AA64DFR0_EL1", 5, 0, DFR0),
    reg("ID_AA64ISAR0_EL1", 6, 0, ISAR0),
    reg("ID_AA64ISAR1_EL1", 6, 1, ISAR1),
    reg("ID_AA64ISAR2_EL1", 6, 2, ISAR2),
    reg("ID_AA64MMFR0_EL1", 7, 0, MMFR0),
    reg("ID_AA64MMFR1_EL1", 7, 1, MMFR1),
    reg("ID_AA64MMFR2_EL1", 7, 2, MMFR2),
    reg("ID_AA64MMFR3_EL1", 7, 3, MMFR3),
    // Hidden whole, and named here so the choice is visible:
    // SVE and SME feature registers (no SVE/SME).
    reg("ID_AA64ZFR0_EL1", 4, 4, &[]),
    reg("ID_AA64SMFR0_EL1", 4, 5, &[]),
    // MTE store-only/permission/FAR and FPMR: not switched.
    reg("ID_AA64PFR2_EL1", 4, 2, &[]),
    // FP8 (FPMR not switched).
    reg("ID_AA64FPFR0_EL1", 4, 7, &[]),
    // Extended debug/PMU (SPMU, PMICNTR, ABLE, EBEP, >16 breakpoints).
    reg("ID_AA64DFR1_EL1", 5, 1, &[]),
    reg("ID_AA64DFR2_EL1", 5, 2, &[]),
    // IMPLEMENTATION DEFINED features: nothing to promise.
    reg("ID_AA64AFR0_EL1", 5, 4, &[]),
    reg("ID_AA64AFR1_EL1", 5, 5, &[]),
    // FEAT_CPA, FAMINMAX, TLBIW, ...: later features, not reviewed.
    reg("ID_AA64ISAR3_EL1", 6, 3, &[]),
    // EL2-only features (E2H0, NV_frac, ...).
    reg("ID_AA64MMFR4_EL1", 7, 4, &[]),
];

/// Whether `enc` lies in the ID group 3 space HCR_EL2.TID3 traps
/// (op0 = 3, op1 = 0, CRn = 0, CRm = 1..7).
#[must_use]
pub const fn is_tid3(enc: SysRegEnc) -> bool {
    enc.op0 == 3 && enc.op1 == 0 && enc.crn == 0 && enc.crm >= 1 && enc.crm <= 7 && enc.op2 <= 7
}

/// Whether `enc` is one of the AArch32 ID registers (CRm = 1..3 of the TID3
/// space, plus ID_MMFR4/ID_ISAR6 and ID_PFR2/ID_DFR1/ID_MMFR5 there).
#[must_use]
pub const fn is_aarch32_id(enc: SysRegEnc) -> bool {
    is_tid3(enc) && enc.crm <= 3
}

/// The table entry for `enc`, if it has one.
#[must_use]
pub fn lookup(enc: SysRegEnc) -> Option<&'static IdReg> {
    ID_REGS.iter().find(|r| r.enc == enc)
}

fn apply(fields: &[Field], hw: u64) -> u64 {
    let mut out = 0u64;
    for f in fields {
        let hw_val = ((hw >> f.shift) & 0xf) as u8;
        let v = match f.rule {
            Rule::Keep => hw_val,
            Rule::Hide if f.signed => 0xf,
            Rule::Hide => 0,
            Rule::Cap(max) => hw_val.min(max),
            Rule::Force(v) => v,
        };
        out |= u64::from(v & 0xf) << f.shift;
    }
    out
}

/// The value a guest's MRS of the ID register `enc` returns, given the
/// hardware's value `hw`; `None` when `enc` is not in the TID3 space (the
/// caller handles it otherwise).
#[must_use]
pub fn sanitise(enc: SysRegEnc, hw: u64) -> Option<u64> {
    if !is_tid3(enc) {
        return None;
    }
    Some(lookup(enc).map_or(0, |r| apply(r.fields, hw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: u64, shift: u8) -> u64 {
        (v >> shift) & 0xf
    }

    fn enc(name: &str) -> SysRegEnc {
        ID_REGS
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} not in ID_REGS"))
            .enc
    }

    #[test]
    fn table_is_well_formed() {
        for (i, r) in ID_REGS.iter().enumerate() {
            assert!(is_tid3(r.enc), "{} outside the TID3 space", r.name);
            assert!(!is_aarch32_id(r.enc), "{} is AArch32", r.name);
            for o in &ID_REGS[i + 1..] {
                assert_ne!(r.enc, o.enc, "{} and {} share an encoding", r.name, o.name);
            }
            let mut seen = 0u64;
            for f in r.fields {
                assert!(f.shift % 4 == 0 && f.shift < 64, "{}.{}", r.name, f.name);
                let mask = 0xfu64 << f.shift;
                assert_eq!(seen & mask, 0, "{}.{} overlaps", r.name, f.name);
                seen |= mask;
                // Capping a signed field would turn "not implemented" (0b1111) into a level.
                assert!(
                    !(f.signed && matches!(f.rule, Rule::Cap(_))),
                    "{}.{} is signed and capped",
                    r.name,
                    f.name
                );
                if let Rule::Cap(v) | Rule::Force(v) = f.rule {
                    assert!(v <= 0xf);
                }
            }
        }
    }

    #[test]
    fn pfr0_hides_sve_el2_amu_mpam_and_caps_the_rest() {
        // A CPU with everything: EL0-3 AArch64+AArch32 (2), FP/AdvSIMD with
        // FP16 (1), GICv4.1 (3), RASv2 (2), SVE (1), SEL2, MPAM, AMU, DIT, RME,
        // CSV2 = 2, CSV3 = 1.
        let hw: u64 = 0x1211_1111_3211_2222;
        let v = sanitise(enc("ID_AA64PFR0_EL1"), hw).expect("TID3 register");
        assert_eq!(field(v, 0), 1, "EL0 AArch64 only");
        assert_eq!(field(v, 4), 1, "EL1 AArch64 only");
        assert_eq!(field(v, 8), 0, "EL2 hidden");
        assert_eq!(field(v, 12), 1, "EL3");
        assert_eq!(field(v, 16), 1, "FP kept");
        assert_eq!(field(v, 20), 1, "AdvSIMD kept");
        assert_eq!(field(v, 24), 1, "GIC capped at the v3 sysreg interface");
        assert_eq!(field(v, 28), 1, "RAS v1");
        assert_eq!(field(v, 32), 0, "SVE");
        assert_eq!(field(v, 36), 0, "SEL2");
        assert_eq!(field(v, 40), 0, "MPAM");
        assert_eq!(field(v, 44), 0, "AMU");
        assert_eq!(field(v, 48), 1, "DIT");
        assert_eq!(field(v, 52), 0, "RME");
        assert_eq!(field(v, 56), 2, "CSV2");
        assert_eq!(field(v, 60), 1, "CSV3");
        // FP not implemented (signed 0b1111) stays not implemented.
        let v = sanitise(enc("ID_AA64PFR0_EL1"), 0x00ff_0011).expect("TID3");
        assert_eq!(field(v, 16), 0xf);
        assert_eq!(field(v, 20), 0xf);
    }

    #[test]
    fn pfr1_hides_mte_sme_gcs() {
        let v = sanitise(enc("ID_AA64PFR1_EL1"), u64::MAX).expect("TID3");
        assert_eq!(field(v, 0), 0xf, "BT kept");
        assert_eq!(field(v, 4), 0xf, "SSBS kept");
        for (shift, name) in [(8, "MTE"), (24, "SME"), (44, "GCS"), (12, "RAS_frac")] {
            assert_eq!(field(v, shift), 0, "{name}");
        }
        // Bits [23:20] are RES0 and not listed: zero.
        assert_eq!(field(v, 20), 0);
    }

    #[test]
    fn dfr0_no_pmu_no_spe_no_trbe_debug_v8_0() {
        // DebugVer 0xa, TraceVer 1, PMUVer 8, BRPs 5, PMSS 1, WRPs 3,
        // SEBEP 1, CTX_CMPs 1, PMSVer 3, DoubleLock 0 (implemented), and 1 in
        // every field above.
        let hw: u64 = 0x1111_1103_1131_581a;
        let v = sanitise(enc("ID_AA64DFR0_EL1"), hw).expect("TID3");
        assert_eq!(field(v, 0), 6, "DebugVer v8.0");
        assert_eq!(field(v, 4), 0, "TraceVer");
        assert_eq!(field(v, 8), 0, "PMUVer");
        assert_eq!(field(v, 12), 5, "BRPs kept");
        assert_eq!(field(v, 16), 0, "PMSS");
        assert_eq!(field(v, 20), 3, "WRPs kept");
        assert_eq!(field(v, 24), 0, "SEBEP");
        assert_eq!(field(v, 28), 1, "CTX_CMPs kept");
        assert_eq!(field(v, 32), 0, "PMSVer (SPE)");
        assert_eq!(field(v, 36), 0xf, "DoubleLock not implemented");
        assert_eq!(field(v, 44), 0, "TraceBuffer (TRBE)");
        assert_eq!(field(v, 52), 0, "BRBE");
        assert_eq!(
            v >> 40,
            0,
            "TraceFilt, TRBE, MTPMU, BRBE, ExtTrcBuff, HPMN0"
        );
    }

    #[test]
    fn isar_hides_pauth_tme_ls64_mops() {
        let v = sanitise(enc("ID_AA64ISAR0_EL1"), u64::MAX).expect("TID3");
        assert_eq!(field(v, 24), 0, "TME");
        assert_eq!(field(v, 0), 0, "RES0 bits");
        assert_eq!(field(v, 4), 0xf, "AES kept");
        let v = sanitise(enc("ID_AA64ISAR1_EL1"), u64::MAX).expect("TID3");
        for (shift, name) in [
            (4, "APA"),
            (8, "API"),
            (24, "GPA"),
            (28, "GPI"),
            (60, "LS64"),
        ] {
            assert_eq!(field(v, shift), 0, "{name}");
        }
        assert_eq!(field(v, 16), 0xf, "FCMA kept");
        let v = sanitise(enc("ID_AA64ISAR2_EL1"), u64::MAX).expect("TID3");
        for (shift, name) in [
            (0, "WFxT"),
            (8, "GPA3"),
            (12, "APA3"),
            (16, "MOPS"),
            (24, "PAC_frac"),
        ] {
            assert_eq!(field(v, shift), 0, "{name}");
        }
        assert_eq!(field(v, 28), 0xf, "CLRBHB kept");
    }

    #[test]
    fn mmfr_parange_nested_virt_and_el2_fields() {
        let v = sanitise(enc("ID_AA64MMFR0_EL1"), 0x1100_0110_0010_1126).expect("TID3");
        assert_eq!(field(v, 0), u64::from(GUEST_PARANGE), "PARange = IPA size");
        assert_eq!(field(v, 4), 2, "ASIDBits kept");
        assert_eq!(field(v, 56), 0, "FGT");
        assert_eq!(field(v, 60), 1, "ECV capped");
        // TGran4 not implemented (signed 0b1111) is kept as such.
        let v = sanitise(enc("ID_AA64MMFR0_EL1"), 0xf000_0000).expect("TID3");
        assert_eq!(field(v, 28), 0xf);
        let v = sanitise(enc("ID_AA64MMFR1_EL1"), u64::MAX).expect("TID3");
        assert_eq!(field(v, 0), 2, "HAFDBS capped");
        for (shift, name) in [(4, "VMIDBits"), (8, "VH"), (16, "LO"), (40, "HCX")] {
            assert_eq!(field(v, shift), 0, "{name}");
        }
        let v = sanitise(enc("ID_AA64MMFR2_EL1"), u64::MAX).expect("TID3");
        assert_eq!(field(v, 24), 0, "NV");
        assert_eq!(field(v, 40), 0, "FWB");
        assert_eq!(field(v, 44), 0, "RES0");
        assert_eq!(field(v, 60), 0xf, "E0PD kept");
        let v = sanitise(enc("ID_AA64MMFR3_EL1"), u64::MAX).expect("TID3");
        assert_eq!(v, 0xf << 60, "only Spec_FPACC");
    }

    #[test]
    fn whole_registers_read_as_zero() {
        for name in [
            "ID_AA64ZFR0_EL1",
            "ID_AA64SMFR0_EL1",
            "ID_AA64PFR2_EL1",
            "ID_AA64FPFR0_EL1",
            "ID_AA64DFR1_EL1",
            "ID_AA64AFR0_EL1",
            "ID_AA64ISAR3_EL1",
            "ID_AA64MMFR4_EL1",
        ] {
            assert_eq!(sanitise(enc(name), u64::MAX), Some(0), "{name}");
        }
    }

    #[test]
    fn aarch32_and_unallocated_encodings_are_raz() {
        // ID_PFR0_EL1 (c1, 0), ID_ISAR0_EL1 (c2, 0), MVFR0_EL1 (c3, 0), ID_MMFR5_EL1 (c3, 6).
        for (crm, op2) in [(1, 0), (2, 0), (3, 0), (3, 6)] {
            let e = SysRegEnc::new(3, 0, 0, crm, op2);
            assert!(is_aarch32_id(e));
            assert_eq!(sanitise(e, u64::MAX), Some(0));
        }
        // Every encoding of the space answers; none outside it does.
        for crm in 1..=7 {
            for op2 in 0..=7 {
                let e = SysRegEnc::new(3, 0, 0, crm, op2);
                assert!(sanitise(e, 0).is_some());
                if lookup(e).is_none() {
                    assert_eq!(sanitise(e, u64::MAX), Some(0), "c{crm} {op2}");
                }
            }
        }
        // Unallocated AArch64 slots: c4 3, c5 3, c6 7, c7 7.
        for (crm, op2) in [(4, 3), (5, 3), (6, 7), (7, 7)] {
            assert_eq!(
                sanitise(SysRegEnc::new(3, 0, 0, crm, op2), u64::MAX),
                Some(0)
            );
        }
        // MIDR_EL1 (c0), CTR_EL0 (op1 3), SCTLR_EL1 (CRn 1): not TID3.
        assert_eq!(sanitise(SysRegEnc::new(3, 0, 0, 0, 0), 1), None);
        assert_eq!(sanitise(SysRegEnc::new(3, 3, 0, 0, 1), 1), None);
        assert_eq!(sanitise(SysRegEnc::new(3, 0, 1, 0, 0), 1), None);
    }

    #[test]
    fn qemu_max_values() {
        // What `-cpu max` (QEMU 9) reports, as guest-faults printed it
        // without TID3, and what tests/tests/guest_faults.rs expects with it.
        let v = sanitise(enc("ID_AA64PFR0_EL1"), 0x1301_0011_2111_0222).expect("TID3");
        assert_eq!(v, 0x1301_0000_1111_0011);
        let v = sanitise(enc("ID_AA64DFR0_EL1"), 0x1000_0000_1030_560a).expect("TID3");
        assert_eq!(v, 0x0000_00f0_1030_5006);
        let v = sanitise(enc("ID_AA64ISAR1_EL1"), 0x0111_2111_1021_1502).expect("TID3");
        assert_eq!(v, 0x0111_2111_0021_1002);
        let v = sanitise(enc("ID_AA64MMFR0_EL1"), 0x2100_0323_1020_1126).expect("TID3");
        assert_eq!(v, 0x1000_0000_1020_0122);
    }

    #[test]
    fn zero_hardware_value_stays_minimal() {
        // A CPU reporting nothing still gets DebugVer v8.0, the guest
        // PARange and "not implemented" signed fields.
        let v = sanitise(enc("ID_AA64DFR0_EL1"), 0).expect("TID3");
        assert_eq!(v, 6 | (0xf << 36));
        let v = sanitise(enc("ID_AA64MMFR0_EL1"), 0).expect("TID3");
        assert_eq!(v, u64::from(GUEST_PARANGE));
        assert_eq!(sanitise(enc("ID_AA64PFR0_EL1"), 0), Some(0));
    }
}
