//! ID-register sanitisation (HCR_EL2.TID3): what a guest reads instead of
//! the hardware value. Minimal version: hides SVE, SME, nested
//! virtualisation, AMU, MPAM and the PMU, none of which the hypervisor
//! context-switches.

use crate::exit::SysRegEnc;

const fn field_clear(v: u64, shift: u32) -> u64 {
    v & !(0xf << shift)
}

/// Sanitises hardware value `hw` of ID register `e`.
#[must_use]
pub fn sanitise(e: SysRegEnc, hw: u64) -> u64 {
    match (e.crm, e.op2) {
        // ID_AA64PFR0_EL1: EL2 [11:8], SVE [35:32], MPAM [43:40], AMU [47:44].
        (4, 0) => [8, 32, 40, 44].iter().fold(hw, |v, &s| field_clear(v, s)),
        // ID_AA64PFR1_EL1: SME [27:24], MTE [11:8].
        (4, 1) => field_clear(field_clear(hw, 24), 8),
        // ID_AA64ZFR0_EL1, ID_AA64SMFR0_EL1.
        (4, 4) | (4, 5) => 0,
        // ID_AA64DFR0_EL1: PMUVer [11:8].
        (5, 0) => field_clear(hw, 8),
        _ => hw,
    }
}
