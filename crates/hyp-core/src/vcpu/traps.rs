//! The trap configuration every vCPU runs with: HCR_EL2, CPTR_EL2,
//! MDCR_EL2 and CNTHCTL_EL2 values.

const HCR_VM: u64 = 1 << 0;
const HCR_SWIO: u64 = 1 << 1;
const HCR_FMO: u64 = 1 << 3;
const HCR_IMO: u64 = 1 << 4;
const HCR_AMO: u64 = 1 << 5;
const HCR_FB: u64 = 1 << 9;
const HCR_BSU_IS: u64 = 1 << 10;
const HCR_TWI: u64 = 1 << 13;
const HCR_TID3: u64 = 1 << 18;
const HCR_TSC: u64 = 1 << 19;
const HCR_TIDCP: u64 = 1 << 20;
const HCR_TSW: u64 = 1 << 22;
pub const HCR_TVM: u64 = 1 << 26;
const HCR_RW: u64 = 1 << 31;

/// HCR_EL2 while any VM runs (written once per CPU at bring-up): stage 2
/// on, physical interrupts to EL2, the guest's TLBIs and barriers broadcast
/// inner-shareable, WFI and SMC trapped, ID registers (TID3) and
/// implementation-defined registers (TIDCP) trapped, EL1 in AArch64. Only
/// trap bits ([`regs::HCR_GUEST_ONLY_FIELDS`]) change per vCPU after that.
pub const HCR_BASE: u64 = HCR_VM
    | HCR_SWIO
    | HCR_FMO
    | HCR_IMO
    | HCR_AMO
    | HCR_FB
    | HCR_BSU_IS
    | HCR_TWI
    | HCR_TID3
    | HCR_TSC
    | HCR_TIDCP
    | HCR_RW;

/// Cache-maintenance traps of a guest vCPU without FEAT_S2FWB (seed 003,
/// ARM-RULES.md section 3): TVM catches its MMU/cache enable, TSW its
/// set/way operations.
pub const HCR_CACHE_TRAPS: u64 = HCR_TVM | HCR_TSW;

/// CPTR_EL2 (E2H = 0) with FP/SIMD usable: RES1 bits 13 and 9..0 set, TSM
/// (bit 12: SME trapped) and TZ (bit 8: SVE trapped) set, TFP (bit 10) clear.
pub const CPTR_FP_ON: u64 = 0x33ff;
/// The same with TFP (bit 10) set: FP/SIMD accesses trap to EL2.
pub const CPTR_TRAP_FP: u64 = CPTR_FP_ON | (1 << 10);

/// MDCR_EL2: trap PMU (TPM, TPMCR) and debug (TDA, TDOSA, TDRA) accesses;
/// nothing is virtualised, so they are answered with UNDEF.
pub const MDCR: u64 = (1 << 6) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 11);

/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN (counter reads allowed); EL1PCEN clear,
/// so the physical timer traps (and is refused): VMs use the virtual timer.
pub const CNTHCTL: u64 = 1;
