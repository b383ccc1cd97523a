//! What a guest vCPU reads of SVE in its ID registers (HCR_EL2.TID3): the
//! hardware's ID_AA64PFR0_EL1.SVE and ID_AA64ZFR0_EL1 when the CPU has SVE
//! (`vcpu::sve` switches the state), nothing otherwise; the host always
//! reads neither (its SVE accesses stay trapped and UNDEFINED). SME stays
//! hidden for everyone (`exit::idregs`, CPTR_EL2.TSM), as upstream KVM
//! keeps it. Pure; host-tested.

use crate::arch::esr::SysRegEnc;

/// ID_AA64PFR0_EL1 (3, 0, 0, 4, 0).
pub const ID_AA64PFR0_EL1: SysRegEnc = SysRegEnc::new(3, 0, 0, 4, 0);
/// ID_AA64ZFR0_EL1 (3, 0, 0, 4, 4).
pub const ID_AA64ZFR0_EL1: SysRegEnc = SysRegEnc::new(3, 0, 0, 4, 4);

/// ID_AA64PFR0_EL1.SVE, bits [35:32].
pub const PFR0_SVE: u64 = 0xf << 32;

/// The ID_AA64ZFR0_EL1 fields a guest with SVE reads as the hardware has
/// them: instruction-set features whose only state is the Z/P/FFR
/// registers the hypervisor switches. SVEver [3:0], AES [7:4], BitPerm
/// [19:16], BF16 [23:20], B16B16 [27:24], SHA3 [35:32], SM4 [43:40], I8MM
/// [47:44], F32MM [55:52], F64MM [59:56]; everything else reads 0.
pub const ZFR0_KEPT: u64 = 0xf
    | 0xf << 4
    | 0xf << 16
    | 0xf << 20
    | 0xf << 24
    | 0xf << 32
    | 0xf << 40
    | 0xf << 44
    | 0xf << 52
    | 0xf << 56;

/// The CPU implements SVE (ID_AA64PFR0_EL1.SVE != 0).
#[must_use]
pub const fn implemented(pfr0: u64) -> bool {
    pfr0 & PFR0_SVE != 0
}

/// The value a context reads from ID register `enc`: `sanitised` (the
/// `exit::idregs` table's value, which hides SVE) with SVE shown again for a
/// guest (`sve`: a guest vCPU on a CPU with SVE). `hw` is the hardware value
/// of `enc`.
#[must_use]
pub const fn view(enc: SysRegEnc, hw: u64, sanitised: u64, sve: bool) -> u64 {
    if !sve {
        return sanitised;
    }
    if enc.crm == ID_AA64PFR0_EL1.crm && enc.op2 == ID_AA64PFR0_EL1.op2 {
        (sanitised & !PFR0_SVE) | (hw & PFR0_SVE)
    } else if enc.crm == ID_AA64ZFR0_EL1.crm && enc.op2 == ID_AA64ZFR0_EL1.op2 {
        hw & ZFR0_KEPT
    } else {
        sanitised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: SysRegEnc = SysRegEnc::new(3, 0, 0, 4, 1);

    #[test]
    fn host_and_sveless_cpus_see_the_table_value() {
        for enc in [ID_AA64PFR0_EL1, ID_AA64ZFR0_EL1, OTHER] {
            assert_eq!(view(enc, u64::MAX, 0x1234, false), 0x1234);
        }
    }

    #[test]
    fn guest_sees_the_hardware_sve_fields_only() {
        let pfr0 = view(ID_AA64PFR0_EL1, 0x1_0000_0011 | 0xf << 40, 0x11, true);
        assert_eq!(pfr0, 0x1_0000_0011, "SVE = 1 added, nothing else");
        // SVEver 1, AES 2, bits outside the kept fields (e.g. [15:8], [63:60]) dropped.
        let zfr0 = view(ID_AA64ZFR0_EL1, 0xf000_0000_0000_ff21, 0, true);
        assert_eq!(zfr0, 0x21);
        assert_eq!(view(OTHER, u64::MAX, 5, true), 5);
        assert!(implemented(1 << 32) && !implemented(0xffff_ffff));
    }
}
