//! Speculation across the host/guest and guest/guest boundary: what each CPU
//! needs, what the hypervisor does about it, and the verdict behind the SMCCC
//! ARCH_WORKAROUND_1/2/3 answers (`calls::smccc::arch_features`).
//!
//! Three attacks cross a world switch:
//! - **Spectre v2**, branch-target injection (CVE-2017-5715): one context
//!   trains the indirect predictor, another (or EL2) follows it speculatively.
//!   CPUs with FEAT_CSV2 (ID_AA64PFR0_EL1.CSV2 >= 1) keep predictions from one
//!   context out of another and are unaffected; so are the in-order
//!   Cortex-A35/A53/A55, whatever they report (Linux's `spectre_v2_safe_list`).
//!   Cortex-A57 and A72 (the Pi 4) are affected, and their branch predictor is
//!   invalidated by turning the MMU off and on: Trusted Firmware-A does it at
//!   EL3 on every entry (`wa_cve_2017_5715_mmu_vbar.S`); this hypervisor does
//!   the same at EL2 in its lower-EL vectors (`vectors.rs`,
//!   `__hyp_vectors_bp`), before any branch. Every switch between the host
//!   and a guest or between two guests passes through such an entry, and so
//!   does every exit EL2 handles, so no context's training reaches EL2 or the
//!   next context.
//! - **Spectre-BHB** (CVE-2022-23960), the same through branch history.
//!   Unaffected: FEAT_CSV2_3 (CSV2 >= 3), FEAT_ECBHB (ID_AA64MMFR1_EL1.ECBHB)
//!   or the in-order cores. On A57/A72 the MMU off/on invalidation covers it:
//!   TF-A installs no separate BHB sequence where it applies that one
//!   (`cortex_a72_reset_func`), and answers ARCH_WORKAROUND_3 as implemented.
//! - **Speculative store bypass** (Spectre v4, CVE-2018-3639). A CPU with
//!   FEAT_SSBS lets each context choose with PSTATE.SSBS (EL2 enters with
//!   SCTLR_EL2.DSSBS = 0, so SSBS = 0: no bypass at EL2), and firmware help is
//!   not required, as KVM answers. Cortex-A72 has no SSBS; its mitigation is
//!   static, CPUACTLR_EL1[55] "disable load pass store", set once per CPU at
//!   boot as TF-A's `CVE_2018_3639` workaround does, so ARCH_WORKAROUND_2 is
//!   not required either. Writing CPUACTLR_EL1 at EL2 needs
//!   ACTLR_EL3.CPUACTLR_EL1 = 1, which the Pi 4's armstub (ACTLR_EL3 = 0x73)
//!   and our own QEMU entry (`platform-rpi4/src/entry.S`) set.
//!
//! A CPU this file does not know and whose ID registers do not clear it is
//! reported `Vulnerable`, and the answer is NOT_SUPPORTED: never a claim
//! without a mechanism behind it.
//!
//! The answers are for the system, not the CPU a vCPU happens to run on (it
//! migrates), as KVM answers: the worst state over the CPUs online. Every CPU
//! comes online at boot, before the host runs (`boot::primary`), so the
//! verdict is fixed before any VM can ask.
//!
//! [`assess`] is pure and tested on the host with each core's ID values.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// How exposed the system (or one CPU) is to one attack. Ordered: the
/// system's state is the maximum over its CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    /// The CPU is not affected.
    Unaffected = 0,
    /// Affected, and the hypervisor applies the mitigation.
    Mitigated = 1,
    /// Affected (or unknown), and no mitigation is applied.
    Vulnerable = 2,
}

impl State {
    const fn from_u8(v: u8) -> State {
        match v {
            0 => State::Unaffected,
            1 => State::Mitigated,
            _ => State::Vulnerable,
        }
    }

    /// A word for the boot log.
    pub const fn name(self) -> &'static str {
        match self {
            State::Unaffected => "unaffected",
            State::Mitigated => "mitigated",
            State::Vulnerable => "vulnerable",
        }
    }
}

/// The ID register values [`assess`] reads.
#[derive(Debug, Clone, Copy)]
pub struct CpuIds {
    /// MIDR_EL1.
    pub midr: u64,
    /// ID_AA64PFR0_EL1 (CSV2 in [59:56]).
    pub pfr0: u64,
    /// ID_AA64PFR1_EL1 (SSBS in [7:4]).
    pub pfr1: u64,
    /// ID_AA64MMFR1_EL1 (ECBHB in [63:60]).
    pub mmfr1: u64,
}

/// The three states for one CPU or for the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Spectre v2 (ARCH_WORKAROUND_1).
    pub v2: State,
    /// Speculative store bypass (ARCH_WORKAROUND_2).
    pub ssb: State,
    /// Spectre-BHB (ARCH_WORKAROUND_3).
    pub bhb: State,
}

impl Verdict {
    /// The verdict before any CPU was assessed: nothing is claimed.
    pub const UNKNOWN: Verdict = Verdict {
        v2: State::Vulnerable,
        ssb: State::Vulnerable,
        bhb: State::Vulnerable,
    };
}

/// What one CPU needs, and what the hypervisor does on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// The core's name, when this file knows it.
    pub core: Option<&'static str>,
    /// The states after the mitigations below.
    pub verdict: Verdict,
    /// The lower-EL vectors invalidate the branch predictor (SCTLR_EL2.M off
    /// and on) before anything else: `__hyp_vectors_bp`.
    pub bp_invalidate: bool,
    /// Bits to set in CPUACTLR_EL1 at boot (an IMPLEMENTATION DEFINED
    /// register; only for the core named).
    pub cpuactlr_set: u64,
}

/// MIDR_EL1 implementer Arm.
const ARM: u64 = 0x41;
/// Arm part numbers (MIDR_EL1[15:4]).
const CORTEX_A35: u64 = 0xd04;
const CORTEX_A53: u64 = 0xd03;
const CORTEX_A55: u64 = 0xd05;
const CORTEX_A57: u64 = 0xd07;
const CORTEX_A72: u64 = 0xd08;
/// Cortex-A72 CPUACTLR_EL1 bit 55, "disable load pass store" (A72 TRM;
/// TF-A's CORTEX_A72_CPUACTLR_EL1_DIS_LOAD_PASS_STORE).
pub const A72_DIS_LOAD_PASS_STORE: u64 = 1 << 55;

fn field(v: u64, shift: u32) -> u64 {
    (v >> shift) & 0xf
}

/// The core this file knows by MIDR, if any.
#[must_use]
pub fn core_name(midr: u64) -> Option<&'static str> {
    if (midr >> 24) & 0xff != ARM {
        return None;
    }
    Some(match (midr >> 4) & 0xfff {
        CORTEX_A35 => "Cortex-A35",
        CORTEX_A53 => "Cortex-A53",
        CORTEX_A55 => "Cortex-A55",
        CORTEX_A57 => "Cortex-A57",
        CORTEX_A72 => "Cortex-A72",
        _ => return None,
    })
}

/// What the CPU with these ID values needs and gets. Pure.
#[must_use]
pub fn assess(ids: CpuIds) -> Assessment {
    let arm_part = ((ids.midr >> 24) & 0xff == ARM).then_some((ids.midr >> 4) & 0xfff);
    let in_order = matches!(arm_part, Some(CORTEX_A35 | CORTEX_A53 | CORTEX_A55));
    let mmu_toggle = matches!(arm_part, Some(CORTEX_A57 | CORTEX_A72));
    let csv2 = field(ids.pfr0, 56);
    let v2 = if csv2 >= 1 || in_order {
        State::Unaffected
    } else if mmu_toggle {
        State::Mitigated
    } else {
        State::Vulnerable
    };
    let bhb = if csv2 >= 3 || field(ids.mmfr1, 60) >= 1 || in_order {
        State::Unaffected
    } else if mmu_toggle {
        State::Mitigated
    } else {
        State::Vulnerable
    };
    let a72 = arm_part == Some(CORTEX_A72);
    let ssb = if in_order || field(ids.pfr1, 4) >= 1 {
        State::Unaffected
    } else if a72 {
        State::Mitigated
    } else {
        State::Vulnerable
    };
    Assessment {
        core: core_name(ids.midr),
        verdict: Verdict { v2, ssb, bhb },
        bp_invalidate: v2 == State::Mitigated || bhb == State::Mitigated,
        cpuactlr_set: if a72 { A72_DIS_LOAD_PASS_STORE } else { 0 },
    }
}

static V2: AtomicU8 = AtomicU8::new(0);
static SSB: AtomicU8 = AtomicU8::new(0);
static BHB: AtomicU8 = AtomicU8::new(0);
static ASSESSED: AtomicUsize = AtomicUsize::new(0);

/// Adds one CPU's verdict to the system's (each CPU once, at its boot).
pub fn record(v: Verdict) {
    V2.fetch_max(v.v2 as u8, Ordering::AcqRel);
    SSB.fetch_max(v.ssb as u8, Ordering::AcqRel);
    BHB.fetch_max(v.bhb as u8, Ordering::AcqRel);
    ASSESSED.fetch_add(1, Ordering::AcqRel);
}

/// The system's verdict: the worst over the CPUs recorded, or
/// [`Verdict::UNKNOWN`] before any was.
#[must_use]
pub fn system() -> Verdict {
    if ASSESSED.load(Ordering::Acquire) == 0 {
        return Verdict::UNKNOWN;
    }
    Verdict {
        v2: State::from_u8(V2.load(Ordering::Acquire)),
        ssb: State::from_u8(SSB.load(Ordering::Acquire)),
        bhb: State::from_u8(BHB.load(Ordering::Acquire)),
    }
}

/// This CPU's ID values.
#[cfg(target_arch = "aarch64")]
#[must_use]
pub fn this_cpu() -> CpuIds {
    use crate::arch::sysreg;
    CpuIds {
        midr: sysreg::midr_el1(),
        pfr0: sysreg::id_aa64pfr0_el1(),
        pfr1: sysreg::id_aa64pfr1_el1(),
        mmfr1: sysreg::id_aa64mmfr1_el1(),
    }
}

/// Applies what `a` asks of this CPU at boot (the CPUACTLR_EL1 chicken bits;
/// the predictor invalidation is the vector table the caller installs), and
/// adds its verdict to the system's.
///
/// # Safety
///
/// `a` must be [`assess`] of this CPU's own ID values, and EL3 must have
/// granted EL2 access to CPUACTLR_EL1 where `a.cpuactlr_set` is non-zero.
#[cfg(target_arch = "aarch64")]
pub unsafe fn apply(a: &Assessment) {
    if a.cpuactlr_set != 0 {
        let v: u64;
        // SAFETY: reading CPUACTLR_EL1 on the core that defines it (the
        // caller's contract).
        unsafe {
            core::arch::asm!("mrs {0}, s3_1_c15_c2_0", out(reg) v, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: the caller's contract; the bits only restrict speculation.
        let t = unsafe { barriers::regs::CpuactlrEl1::write(v | a.cpuactlr_set) };
        // ISB: the new speculation controls apply to everything after.
        let _ = barriers::isb(t);
    }
    record(a.verdict);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(midr: u64, pfr0: u64, pfr1: u64, mmfr1: u64) -> Assessment {
        assess(CpuIds {
            midr,
            pfr0,
            pfr1,
            mmfr1,
        })
    }

    /// The Pi 4's Cortex-A72 r0p3 as QEMU raspi4b and the silicon report it:
    /// CSV2 = 0, no SSBS, no ECBHB.
    #[test]
    fn cortex_a72_is_mitigated_by_the_mmu_toggle_and_the_chicken_bit() {
        let a = ids(0x410f_d083, 0x0000_0000_0000_2222, 0, 0);
        assert_eq!(a.core, Some("Cortex-A72"));
        assert_eq!(
            a.verdict,
            Verdict {
                v2: State::Mitigated,
                ssb: State::Mitigated,
                bhb: State::Mitigated
            }
        );
        assert!(a.bp_invalidate);
        assert_eq!(a.cpuactlr_set, 1 << 55);
    }

    /// QEMU `-cpu max` (MIDR implementer 0): CSV2 = 3, SSBS = 2: nothing to do.
    #[test]
    fn csv2_3_and_ssbs_need_nothing() {
        let a = ids(0x000f_0510, 3 << 56, 2 << 4, 0);
        assert_eq!(a.core, None);
        assert_eq!(
            a.verdict,
            Verdict {
                v2: State::Unaffected,
                ssb: State::Unaffected,
                bhb: State::Unaffected
            }
        );
        assert!(!a.bp_invalidate);
        assert_eq!(a.cpuactlr_set, 0);
    }

    /// CSV2 = 1 clears v2 but not BHB; ECBHB clears BHB.
    #[test]
    fn csv2_1_leaves_bhb_to_ecbhb() {
        let a = ids(0x000f_0510, 1 << 56, 1 << 4, 0);
        assert_eq!(a.verdict.v2, State::Unaffected);
        assert_eq!(a.verdict.bhb, State::Vulnerable);
        assert!(!a.bp_invalidate);
        let a = ids(0x000f_0510, 1 << 56, 1 << 4, 1 << 60);
        assert_eq!(a.verdict.bhb, State::Unaffected);
    }

    #[test]
    fn in_order_cores_are_unaffected_whatever_they_report() {
        for midr in [0x410f_d034, 0x410f_d042, 0x410f_d050] {
            let a = ids(midr, 0, 0, 0);
            assert_eq!(
                a.verdict,
                Verdict {
                    v2: State::Unaffected,
                    ssb: State::Unaffected,
                    bhb: State::Unaffected
                },
                "{midr:#x}"
            );
            assert!(!a.bp_invalidate);
        }
    }

    /// A57: the MMU toggle works as on the A72, but its SSB chicken bits are
    /// not applied here, so v4 stays vulnerable rather than claimed.
    #[test]
    fn cortex_a57_gets_the_toggle_but_no_ssb_claim() {
        let a = ids(0x411f_d071, 0, 0, 0);
        assert_eq!(a.verdict.v2, State::Mitigated);
        assert_eq!(a.verdict.bhb, State::Mitigated);
        assert_eq!(a.verdict.ssb, State::Vulnerable);
        assert_eq!(a.cpuactlr_set, 0);
    }

    /// An unknown core that reports nothing is vulnerable to all three, and
    /// nothing is applied (the answers will say NOT_SUPPORTED).
    #[test]
    fn unknown_cores_are_never_claimed_safe() {
        // Cortex-A73 (0xd09): affected, needs BPIALL from AArch32, not done here.
        for midr in [0x410f_d090, 0x510f_8000, 0] {
            let a = ids(midr, 0, 0, 0);
            assert_eq!(a.verdict, Verdict::UNKNOWN, "{midr:#x}");
            assert!(!a.bp_invalidate);
        }
    }

    #[test]
    fn state_order_is_worst_last() {
        assert!(State::Unaffected < State::Mitigated);
        assert!(State::Mitigated < State::Vulnerable);
        assert_eq!(State::from_u8(State::Mitigated as u8), State::Mitigated);
    }
}
