//! The virtual PMU (Arm ARM D13, "The Performance Monitors Extension";
//! KVM's arch/arm64/kvm/pmu-emul.c and sys_regs.c for the same registers).
//!
//! Model: a normal VM's vCPU owns the CPU's PMU while it runs. Its counters
//! are the hardware counters, loaded when its run starts and saved (and the
//! hardware quiesced) when the run ends, so they count on whichever CPU it
//! runs and stand still while it does not. Every guest access to a PMU
//! register traps (MDCR_EL2.TPM and TPMCR stay set) and EL2 performs it on
//! the hardware ([`access`]), which is how:
//! - EL2 is never counted: a guest's event filters are masked to P, U and
//!   the event number (NSH, NSK, NSU, M, SH read as zero, as in KVM for a
//!   guest without EL2), so NSH = 0 leaves EL2 filtered out on every PMUv3
//!   CPU; where FEAT_PMUv3p1 exists MDCR_EL2.HPMD also prohibits counting
//!   at EL2, PMCR_EL0.DP is kept set in hardware so that covers the cycle
//!   counter, and FEAT_PMUv3p5's HCCD stops it at EL2 too;
//! - a counter index past PMCR_EL0.N, a PMSELR_EL0 naming one, a write to a
//!   read-only register or an encoding this PMU does not have is an
//!   injected UNDEF, never a hardware access;
//! - the PMU is lazy: a vCPU that never touched a PMU register has no PMU
//!   state to switch ([`PmuState::used`]), so its exits and runs cost what
//!   they cost without a PMU; its first access loads the reset state.
//!
//! The guest sees PMUv3 capped at FEAT_PMUv3p1 (32-bit event counters,
//! 16-bit event numbers), with PMCR_EL0.N counters: MDCR_EL2.HPMN = N, all
//! of them the guest's. The overflow interrupt is PPI 23 ([`PMU_PPI`]): the
//! physical one is taken at EL2 while the owner runs and masked, and its
//! level ([`irq_level`]) becomes the virtual PPI's when the physical one
//! is taken and after each of the vCPU's PMU accesses (`sync_level`).
//!
//! The host VM and protected VMs have no PMU (pKVM's policy, see
//! ARCHITECTURE.md): their accesses are UNDEFINED and their ID_AA64DFR0_EL1
//! reads PMUVer = 0. Nothing of a guest's PMU is left in the hardware after
//! its run: enables, interrupt enables and overflow flags are cleared, and
//! the next owner's first use loads every counter and type it can read.
//!
//! The decoding and the register effects are written against [`PmuHw`], so
//! they are host-tested with a model PMU (`tests/pmu.rs`).

use crate::arch::esr::SysRegEnc;
use barriers::pmu::PmuReg;
use core::sync::atomic::{AtomicU32, Ordering};

/// INTID of the virtual PMU's overflow interrupt (the guest device tree's
/// `arm,armv8-pmuv3` node).
pub const PMU_PPI: u32 = hyp_abi::layout::PMU_INTID;

/// PMCR_EL0.E: enable.
pub const PMCR_E: u64 = 1 << 0;
/// PMCR_EL0.P: reset the event counters (write-only action).
pub const PMCR_P: u64 = 1 << 1;
/// PMCR_EL0.C: reset the cycle counter (write-only action).
pub const PMCR_C: u64 = 1 << 2;
/// PMCR_EL0.D: cycle counter divider.
pub const PMCR_D: u64 = 1 << 3;
/// PMCR_EL0.X: export events.
pub const PMCR_X: u64 = 1 << 4;
/// PMCR_EL0.DP: cycle counter disabled where event counting is prohibited.
pub const PMCR_DP: u64 = 1 << 5;
/// PMCR_EL0.LC: the cycle counter overflows at 64 bits.
pub const PMCR_LC: u64 = 1 << 6;
/// PMCR_EL0 bits kept in hardware for the guest.
const PMCR_HW: u64 = PMCR_E | PMCR_D | PMCR_LC;
/// PMCR_EL0 bits the guest reads back from its own writes only.
const PMCR_SHADOW: u64 = PMCR_X | PMCR_DP;

/// PMEVTYPER/PMCCFILTR.P: do not count at EL1.
pub const FILTER_P: u64 = 1 << 31;
/// PMEVTYPER/PMCCFILTR.U: do not count at EL0.
pub const FILTER_U: u64 = 1 << 30;
/// PMEVTYPER.NSH: count at EL2 (never set in hardware for a guest).
pub const FILTER_NSH: u64 = 1 << 27;

/// The bit of the cycle counter in the enable, interrupt and overflow sets.
pub const CYCLE_BIT: u64 = 1 << 31;

/// MDCR_EL2.HPMN: counters below it belong to EL1/EL0.
const MDCR_HPMN_MASK: u64 = 0x1f;
/// MDCR_EL2.HPMD (FEAT_PMUv3p1): event counting prohibited at EL2.
pub const MDCR_HPMD: u64 = 1 << 17;
/// MDCR_EL2.HCCD (FEAT_PMUv3p5): the cycle counter stops at EL2.
pub const MDCR_HCCD: u64 = 1 << 23;

/// ID_AA64DFR0_EL1.PMUVer of FEAT_PMUv3p1, the highest level guests see.
pub const PMUV3P1: u8 = 4;
/// ID_AA64DFR0_EL1.PMUVer of FEAT_PMUv3p5.
const PMUV3P5: u8 = 6;
/// ID_AA64DFR0_EL1.PMUVer: IMPLEMENTATION DEFINED, not Arm's PMU.
const PMUVER_IMPDEF: u8 = 0xf;

/// The CPU's PMU as guests get it: the level they see and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmuInfo {
    /// ID_AA64DFR0_EL1.PMUVer of the hardware.
    pub hw_ver: u8,
    /// PMCR_EL0.N: event counters.
    pub n: u8,
}

impl PmuInfo {
    /// From the hardware's ID_AA64DFR0_EL1 and (with a PMU) PMCR_EL0;
    /// `None` without an Arm PMUv3, or with no event counter (MDCR_EL2.HPMN
    /// = 0 is CONSTRAINED UNPREDICTABLE without FEAT_HPMN0, so such a PMU is
    /// not offered).
    #[must_use]
    pub const fn new(dfr0: u64, pmcr: u64) -> Option<Self> {
        let hw_ver = ((dfr0 >> 8) & 0xf) as u8;
        let n = ((pmcr >> 11) & 0x1f) as u8;
        if hw_ver == 0 || hw_ver == PMUVER_IMPDEF || n == 0 {
            return None;
        }
        Some(Self { hw_ver, n })
    }

    /// The PMUVer a normal VM reads: the hardware's, capped at PMUv3p1.
    #[must_use]
    pub const fn guest_ver(&self) -> u8 {
        if self.hw_ver < PMUV3P1 {
            self.hw_ver
        } else {
            PMUV3P1
        }
    }

    /// Bits of the enable, interrupt and overflow sets that exist: the
    /// event counters and the cycle counter.
    #[must_use]
    pub const fn counter_mask(&self) -> u64 {
        ((1u64 << self.n) - 1) | CYCLE_BIT
    }

    /// PMEVTYPER bits a guest may set: P, U and the event number (10 bits
    /// before PMUv3p1, 16 from it).
    #[must_use]
    pub const fn evtyper_mask(&self) -> u64 {
        FILTER_P
            | FILTER_U
            | if self.guest_ver() >= PMUV3P1 {
                0xffff
            } else {
                0x3ff
            }
    }

    /// The PMU fields of MDCR_EL2 besides the traps: every counter to
    /// EL1/EL0 (HPMN = N, HPME = 0), counting prohibited at EL2 (HPMD)
    /// where PMUv3p1 defines it, and the cycle counter stopped at EL2
    /// (HCCD) where PMUv3p5 does.
    #[must_use]
    pub const fn mdcr(&self) -> u64 {
        let mut m = self.n as u64 & MDCR_HPMN_MASK;
        if self.hw_ver >= PMUV3P1 {
            m |= MDCR_HPMD;
        }
        if self.hw_ver >= PMUV3P5 {
            m |= MDCR_HCCD;
        }
        m
    }
}

/// The CPU's PMU, recorded at bring-up: `hw_ver | n << 8`, 0 for none.
static INFO: AtomicU32 = AtomicU32::new(0);

/// Records the PMU (every CPU's bring-up records the same facts).
pub fn set_info(info: Option<PmuInfo>) {
    let v = info.map_or(0, |i| u32::from(i.hw_ver) | u32::from(i.n) << 8);
    INFO.store(v, Ordering::Relaxed);
}

/// The PMU guests get, if the CPU has one.
#[must_use]
pub fn info() -> Option<PmuInfo> {
    let v = INFO.load(Ordering::Relaxed);
    (v != 0).then_some(PmuInfo {
        hw_ver: (v & 0xff) as u8,
        n: ((v >> 8) & 0x1f) as u8,
    })
}

/// The PMU fields of MDCR_EL2 ([`PmuInfo::mdcr`]; 0 without a PMU) that
/// every context's MDCR_EL2 carries besides its traps.
#[must_use]
pub fn mdcr_fields() -> u64 {
    info().map_or(0, |p| p.mdcr())
}

/// ID_AA64DFR0_EL1 as a VM reads it, from the value `idregs::sanitise`
/// gave (PMUVer hidden): with `pmu` (a normal VM on a CPU with one), PMUVer
/// is [`PmuInfo::guest_ver`].
#[must_use]
pub const fn dfr0_for_guest(sanitised: u64, pmu: Option<PmuInfo>) -> u64 {
    match pmu {
        Some(p) => (sanitised & !(0xf << 8)) | (p.guest_ver() as u64) << 8,
        None => sanitised,
    }
}

/// A PMU register as a guest names it (op0 = 3; Arm ARM D13 register
/// index: "Performance Monitors registers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestReg {
    /// PMCR_EL0 (3, 3, 9, 12, 0).
    Pmcr,
    /// PMCNTENSET_EL0 (3, 3, 9, 12, 1).
    Cntenset,
    /// PMCNTENCLR_EL0 (3, 3, 9, 12, 2).
    Cntenclr,
    /// PMOVSCLR_EL0 (3, 3, 9, 12, 3).
    Ovsclr,
    /// PMSWINC_EL0 (3, 3, 9, 12, 4).
    Swinc,
    /// PMSELR_EL0 (3, 3, 9, 12, 5).
    Selr,
    /// PMCEID0_EL0 (3, 3, 9, 12, 6).
    Ceid0,
    /// PMCEID1_EL0 (3, 3, 9, 12, 7).
    Ceid1,
    /// PMCCNTR_EL0 (3, 3, 9, 13, 0).
    Ccntr,
    /// PMXEVTYPER_EL0 (3, 3, 9, 13, 1).
    Xevtyper,
    /// PMXEVCNTR_EL0 (3, 3, 9, 13, 2).
    Xevcntr,
    /// PMUSERENR_EL0 (3, 3, 9, 14, 0).
    Userenr,
    /// PMINTENSET_EL1 (3, 0, 9, 14, 1).
    Intenset,
    /// PMINTENCLR_EL1 (3, 0, 9, 14, 2).
    Intenclr,
    /// PMOVSSET_EL0 (3, 3, 9, 14, 3).
    Ovsset,
    /// PMEVCNTR<n>_EL0 (3, 3, 14, 8 + n / 8, n % 8), n < 31.
    Evcntr(u8),
    /// PMEVTYPER<n>_EL0 (3, 3, 14, 12 + n / 8, n % 8), n < 31.
    Evtyper(u8),
    /// PMCCFILTR_EL0 (3, 3, 14, 15, 7).
    Ccfiltr,
    /// Another encoding of the PMU's space (PMMIR_EL1, PMICNTR_EL0, ...):
    /// not offered (UNDEFINED).
    Other,
}

/// Names a trapped encoding of the PMU's space: op0 = 3 with CRn = 9,
/// CRm = 12..14 (op1 = 3, or op1 = 0 for the EL1 registers), or op1 = 3,
/// CRn = 14, CRm = 8..15. `None` for everything else.
#[must_use]
pub const fn decode(enc: SysRegEnc) -> Option<GuestReg> {
    if enc.op0 != 3 {
        return None;
    }
    let idx = (enc.crm & 3) * 8 + enc.op2;
    Some(match (enc.op1, enc.crn, enc.crm, enc.op2) {
        (3, 9, 12, 0) => GuestReg::Pmcr,
        (3, 9, 12, 1) => GuestReg::Cntenset,
        (3, 9, 12, 2) => GuestReg::Cntenclr,
        (3, 9, 12, 3) => GuestReg::Ovsclr,
        (3, 9, 12, 4) => GuestReg::Swinc,
        (3, 9, 12, 5) => GuestReg::Selr,
        (3, 9, 12, 6) => GuestReg::Ceid0,
        (3, 9, 12, 7) => GuestReg::Ceid1,
        (3, 9, 13, 0) => GuestReg::Ccntr,
        (3, 9, 13, 1) => GuestReg::Xevtyper,
        (3, 9, 13, 2) => GuestReg::Xevcntr,
        (3, 9, 14, 0) => GuestReg::Userenr,
        (0, 9, 14, 1) => GuestReg::Intenset,
        (0, 9, 14, 2) => GuestReg::Intenclr,
        (3, 9, 14, 3) => GuestReg::Ovsset,
        (3, 14, 15, 7) => GuestReg::Ccfiltr,
        (3, 14, 8..=11, _) => GuestReg::Evcntr(idx),
        (3, 14, 12..=15, _) => GuestReg::Evtyper(idx),
        (3 | 0, 9, 12..=14, _) => GuestReg::Other,
        _ => return None,
    })
}

/// The hardware PMU, or a model of it.
pub trait PmuHw {
    /// Reads a register.
    fn read(&mut self, r: PmuReg) -> u64;
    /// Writes a register.
    fn write(&mut self, r: PmuReg, v: u64);
}

/// A vCPU's PMU: what is not in the hardware while it runs (PMSELR_EL0 and
/// PMCR_EL0's X and DP as the guest wrote them), and all of it while it
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmuState {
    /// The vCPU touched the PMU: its state is loaded with every run.
    pub used: bool,
    /// PMCR_EL0's E, D, LC.
    pub pmcr: u64,
    /// PMCR_EL0's X and DP as the guest wrote them.
    pub pmcr_shadow: u64,
    /// PMSELR_EL0.SEL.
    pub selr: u64,
    /// PMCNTENSET_EL0.
    pub cnten: u64,
    /// PMINTENSET_EL1.
    pub inten: u64,
    /// PMOVSSET_EL0.
    pub ovs: u64,
    /// PMCCNTR_EL0.
    pub ccntr: u64,
    /// PMCCFILTR_EL0.
    pub ccfiltr: u64,
    /// PMUSERENR_EL0.
    pub userenr: u64,
    /// PMEVCNTR<n>_EL0.
    pub evcntr: [u64; 31],
    /// PMEVTYPER<n>_EL0.
    pub evtyper: [u64; 31],
}

impl Default for PmuState {
    fn default() -> Self {
        Self::new()
    }
}

/// PMUSERENR_EL0's fields: EN, SW, CR, ER.
const USERENR_MASK: u64 = 0xf;

impl PmuState {
    /// The state after reset: nothing enabled, every counter zero.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            used: false,
            pmcr: 0,
            pmcr_shadow: 0,
            selr: 0,
            cnten: 0,
            inten: 0,
            ovs: 0,
            ccntr: 0,
            ccfiltr: 0,
            userenr: 0,
            evcntr: [0; 31],
            evtyper: [0; 31],
        }
    }
}

/// Loads `st` into the hardware: the counters are written with the PMU off
/// (PMCR_EL0.E = 0), then the enables and, last, PMCR_EL0.
pub fn load(hw: &mut impl PmuHw, st: &PmuState, p: PmuInfo) {
    let all = p.counter_mask();
    hw.write(PmuReg::Pmcr, (st.pmcr & !PMCR_E) | PMCR_DP);
    for i in 0..p.n {
        hw.write(PmuReg::Evtyper(i), st.evtyper[i as usize]);
        hw.write(PmuReg::Evcntr(i), st.evcntr[i as usize]);
    }
    hw.write(PmuReg::Ccfiltr, st.ccfiltr);
    hw.write(PmuReg::Ccntr, st.ccntr);
    hw.write(PmuReg::Cntenclr, all & !st.cnten);
    hw.write(PmuReg::Cntenset, st.cnten);
    hw.write(PmuReg::Intenclr, all & !st.inten);
    hw.write(PmuReg::Intenset, st.inten);
    hw.write(PmuReg::Ovsclr, all & !st.ovs);
    hw.write(PmuReg::Ovsset, st.ovs);
    hw.write(PmuReg::Userenr, st.userenr);
    hw.write(PmuReg::Pmcr, st.pmcr | PMCR_DP);
}

/// Saves the hardware's PMU into `st` and quiesces it: counting stops
/// first (PMCR_EL0.E = 0), and afterwards nothing is enabled, no interrupt
/// can be raised and no overflow flag or EL0 access is left for whoever
/// runs next. The counter values stay until the next owner's [`load`]
/// overwrites every one it can read.
pub fn save(hw: &mut impl PmuHw, st: &mut PmuState, p: PmuInfo) {
    let all = p.counter_mask();
    st.pmcr = hw.read(PmuReg::Pmcr) & PMCR_HW;
    hw.write(PmuReg::Pmcr, PMCR_DP);
    st.cnten = hw.read(PmuReg::Cntenset) & all;
    st.inten = hw.read(PmuReg::Intenset) & all;
    st.ovs = hw.read(PmuReg::Ovsset) & all;
    st.ccntr = hw.read(PmuReg::Ccntr);
    st.ccfiltr = hw.read(PmuReg::Ccfiltr);
    st.userenr = hw.read(PmuReg::Userenr) & USERENR_MASK;
    for i in 0..p.n {
        st.evcntr[i as usize] = hw.read(PmuReg::Evcntr(i));
        st.evtyper[i as usize] = hw.read(PmuReg::Evtyper(i));
    }
    hw.write(PmuReg::Cntenclr, all);
    hw.write(PmuReg::Intenclr, all);
    hw.write(PmuReg::Ovsclr, all);
    hw.write(PmuReg::Userenr, 0);
}

/// The level of the loaded PMU's overflow interrupt: PMCR_EL0.E and an
/// overflowed counter whose interrupt is enabled.
pub fn irq_level(hw: &mut impl PmuHw, p: PmuInfo) -> bool {
    hw.read(PmuReg::Pmcr) & PMCR_E != 0
        && hw.read(PmuReg::Ovsset) & hw.read(PmuReg::Intenset) & p.counter_mask() != 0
}

/// A guest access the architecture makes UNDEFINED (or, for the
/// CONSTRAINED UNPREDICTABLE cases, that this PMU makes UNDEFINED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undefined;

/// A trapped access of the vCPU whose PMU is loaded: `write` is `Some`
/// for an MSR; `el` is the Exception level it came from (0 or 1). Returns
/// the value an MRS reads.
///
/// # Errors
///
/// [`Undefined`]: a counter past PMCR_EL0.N (directly or through
/// PMSELR_EL0), a write of a read-only register or a read of a write-only
/// one, or an encoding this PMU does not offer.
pub fn access(
    hw: &mut impl PmuHw,
    st: &mut PmuState,
    p: PmuInfo,
    reg: GuestReg,
    write: Option<u64>,
    el: u8,
) -> Result<u64, Undefined> {
    let all = p.counter_mask();
    let counter = |n: u8| if n < p.n { Ok(n) } else { Err(Undefined) };
    // The register a read or write goes to, with the mask of what the
    // guest may write and read there.
    let (r, mask) = match reg {
        GuestReg::Pmcr => return Ok(pmcr(hw, st, p, write)),
        GuestReg::Selr => {
            if let Some(v) = write {
                st.selr = v & 0x1f;
            }
            return Ok(st.selr);
        }
        GuestReg::Swinc => {
            let v = write.ok_or(Undefined)?;
            swinc(hw, p, v, el);
            return Ok(0);
        }
        GuestReg::Ceid0 | GuestReg::Ceid1 if write.is_some() => return Err(Undefined),
        GuestReg::Ceid0 => (PmuReg::Ceid0, u64::MAX),
        GuestReg::Ceid1 => (PmuReg::Ceid1, u64::MAX),
        GuestReg::Cntenset => (PmuReg::Cntenset, all),
        GuestReg::Cntenclr => (PmuReg::Cntenclr, all),
        GuestReg::Intenset => (PmuReg::Intenset, all),
        GuestReg::Intenclr => (PmuReg::Intenclr, all),
        GuestReg::Ovsset => (PmuReg::Ovsset, all),
        GuestReg::Ovsclr => (PmuReg::Ovsclr, all),
        GuestReg::Ccntr => (PmuReg::Ccntr, u64::MAX),
        GuestReg::Userenr => (PmuReg::Userenr, USERENR_MASK),
        GuestReg::Ccfiltr => (PmuReg::Ccfiltr, FILTER_P | FILTER_U),
        GuestReg::Evcntr(n) => (PmuReg::Evcntr(counter(n)?), u64::from(u32::MAX)),
        GuestReg::Evtyper(n) => (PmuReg::Evtyper(counter(n)?), p.evtyper_mask()),
        GuestReg::Xevcntr => (PmuReg::Evcntr(counter(st.selr as u8)?), u64::from(u32::MAX)),
        GuestReg::Xevtyper if st.selr == 31 => (PmuReg::Ccfiltr, FILTER_P | FILTER_U),
        GuestReg::Xevtyper => (PmuReg::Evtyper(counter(st.selr as u8)?), p.evtyper_mask()),
        GuestReg::Other => return Err(Undefined),
    };
    match write {
        Some(v) => {
            hw.write(r, v & mask);
            Ok(0)
        }
        None => Ok(hw.read(r) & mask),
    }
}

/// PMCR_EL0: E, D and LC (and the P and C reset actions) go to the
/// hardware, which keeps DP set; X and DP read back as written; N and the
/// identification fields are the hardware's. LP (PMUv3p5) is RES0 here.
fn pmcr(hw: &mut impl PmuHw, st: &mut PmuState, p: PmuInfo, write: Option<u64>) -> u64 {
    if let Some(v) = write {
        st.pmcr_shadow = v & PMCR_SHADOW;
        hw.write(PmuReg::Pmcr, (v & (PMCR_HW | PMCR_P | PMCR_C)) | PMCR_DP);
        return 0;
    }
    let h = hw.read(PmuReg::Pmcr);
    (h & PMCR_HW) | st.pmcr_shadow | (u64::from(p.n) << 11) | (h & 0xffff_0000)
}

/// PMSWINC_EL0: a write at EL2 would count nothing (EL2 is filtered out),
/// so the increment is done here, for each counter the write names that
/// counts SW_INCR (event 0), is enabled, and is not filtered at `el`.
fn swinc(hw: &mut impl PmuHw, p: PmuInfo, v: u64, el: u8) {
    if hw.read(PmuReg::Pmcr) & PMCR_E == 0 {
        return;
    }
    let on = hw.read(PmuReg::Cntenset);
    let filter = if el == 0 { FILTER_U } else { FILTER_P };
    for i in 0..p.n {
        let bit = 1u64 << i;
        if v & on & bit == 0 {
            continue;
        }
        let t = hw.read(PmuReg::Evtyper(i));
        if t & 0xffff != 0 || t & filter != 0 {
            continue;
        }
        let c = (hw.read(PmuReg::Evcntr(i)).wrapping_add(1)) & u64::from(u32::MAX);
        hw.write(PmuReg::Evcntr(i), c);
        if c == 0 {
            hw.write(PmuReg::Ovsset, bit);
        }
    }
}

/// The CPU's PMU registers, through `barriers` (writes go into `pending`:
/// the guest's entry ERET is their only consumer).
pub struct Hw<'a>(pub &'a mut barriers::GuestPending);

impl PmuHw for Hw<'_> {
    #[inline]
    fn read(&mut self, r: PmuReg) -> u64 {
        r.read()
    }
    #[inline]
    fn write(&mut self, r: PmuReg, v: u64) {
        self.0.add(r.write(v));
    }
}

#[cfg(target_arch = "aarch64")]
mod cpu;
#[cfg(target_arch = "aarch64")]
pub use self::cpu::*;
