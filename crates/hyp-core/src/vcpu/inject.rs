//! Injecting synchronous exceptions into a guest's EL1.
//!
//! The arithmetic of exception entry (Arm ARM D1.3.1 "Exception entry" and
//! D1.3.2 "Exception vectors"): where the vector is, what ESR_EL1 says, and
//! which PSTATE the handler starts with. Pure, so it is tested on the host;
//! the world switch applies the result to the vCPU's registers.

use crate::arch::esr::{dabt, ec};
use aarch64_cpu::registers::ESR_EL1;

/// Exception kinds the hypervisor injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Synchronous external abort on a data access at `far`.
    DataAbort {
        /// Faulting virtual address (becomes FAR_EL1).
        far: u64,
        /// Whether the access was a write (ESR_EL1.ISS.WnR).
        write: bool,
    },
    /// Synchronous external abort on an instruction fetch at `far`.
    InstAbort {
        /// Faulting virtual address.
        far: u64,
    },
    /// Undefined instruction (EC 0).
    Undefined,
}

/// Register values after injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// New ESR_EL1.
    pub esr_el1: u64,
    /// New FAR_EL1 (None: left unchanged, which is UNKNOWN for UNDEF).
    pub far_el1: Option<u64>,
    /// New ELR_EL1: the preferred return address, the faulting instruction.
    pub elr_el1: u64,
    /// New SPSR_EL1: the interrupted PSTATE.
    pub spsr_el1: u64,
    /// Where the guest resumes: VBAR_EL1 + vector offset.
    pub pc: u64,
    /// PSTATE the handler runs with: EL1h, D, A, I and F masked.
    pub pstate: u64,
}

/// PSTATE.M value for EL1 using SP_EL1 (EL1h).
pub const PSTATE_EL1H: u64 = 0b0101;
/// PSTATE.M value for EL1 using SP_EL0 (EL1t).
pub const PSTATE_EL1T: u64 = 0b0100;
/// SPSR.M\[4\]: the interrupted state was AArch32.
const SPSR_NRW: u64 = 1 << 4;
/// PSTATE D, A, I, F mask bits.
pub const PSTATE_DAIF: u64 = 0b1111 << 6;
/// DFSC/IFSC for a synchronous external abort, not on a translation table walk.
const FSC_SYNC_EXTERNAL: u64 = 0x10;

/// ESR_EL1 for exception class `class` from a 32-bit instruction (IL = 1)
/// with syndrome `iss`.
const fn esr_el1(class: u8, iss: u64) -> u64 {
    ESR_EL1::EC.val(class as u64).value | ESR_EL1::IL::SET.value | ESR_EL1::ISS.val(iss).value
}

/// Computes the register state that enters the guest's EL1 handler for `what`,
/// interrupted at `pc` with PSTATE `spsr` (SPSR_EL2 of the exit).
#[must_use]
pub fn inject(what: Injected, pc: u64, spsr: u64, vbar_el1: u64) -> Injection {
    let mode = spsr & 0xf;
    // SPSR.M[4] (nRW): the interrupted code ran in AArch32, which at EL1 (an
    // AArch64 EL, HCR_EL2.RW) can only be EL0.
    let aarch32 = spsr & SPSR_NRW != 0;
    let from_el0 = aarch32 || mode == 0;
    // D1.3.2: 0x000 current EL with SP_EL0, 0x200 current EL with SP_ELx,
    // 0x400 lower EL using AArch64, 0x600 lower EL using AArch32. The
    // synchronous entry is at +0.
    let offset = match mode {
        _ if aarch32 => 0x600,
        PSTATE_EL1T => 0x000,
        PSTATE_EL1H => 0x200,
        _ => 0x400,
    };
    let (esr, far) = match what {
        Injected::DataAbort { far, write } => {
            let class = if from_el0 { ec::DABT_LOW } else { ec::DABT_CUR };
            let wnr = if write { u64::from(dabt::WNR) } else { 0 };
            (esr_el1(class, wnr | FSC_SYNC_EXTERNAL), Some(far))
        }
        Injected::InstAbort { far } => {
            let class = if from_el0 { ec::IABT_LOW } else { ec::IABT_CUR };
            (esr_el1(class, FSC_SYNC_EXTERNAL), Some(far))
        }
        Injected::Undefined => (esr_el1(ec::UNKNOWN, 0), None),
    };
    Injection {
        esr_el1: esr,
        far_el1: far,
        elr_el1: pc,
        spsr_el1: spsr,
        pc: vbar_el1 + offset,
        pstate: PSTATE_DAIF | PSTATE_EL1H,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VBAR: u64 = 0x4000_0800;

    #[test]
    fn data_abort_from_el1h() {
        let i = inject(
            Injected::DataAbort {
                far: 0x1_0000_0000,
                write: false,
            },
            0x4000_1234,
            0x3c5,
            VBAR,
        );
        assert_eq!(i.esr_el1, 0x9600_0010);
        assert_eq!(i.far_el1, Some(0x1_0000_0000));
        assert_eq!(i.elr_el1, 0x4000_1234);
        assert_eq!(i.spsr_el1, 0x3c5);
        assert_eq!(i.pc, VBAR + 0x200);
        assert_eq!(i.pstate, 0x3c5);
    }

    #[test]
    fn write_abort_sets_wnr_and_el1t_uses_sp0_vector() {
        let i = inject(
            Injected::DataAbort {
                far: 8,
                write: true,
            },
            0x10,
            PSTATE_EL1T,
            VBAR,
        );
        assert_eq!(i.esr_el1, 0x9600_0050);
        assert_eq!(i.pc, VBAR);
    }

    #[test]
    fn from_el0_uses_lower_el_vector_and_class() {
        let i = inject(
            Injected::DataAbort {
                far: 8,
                write: false,
            },
            0x10,
            0,
            VBAR,
        );
        assert_eq!(i.esr_el1 >> 26, 0x24);
        assert_eq!(i.pc, VBAR + 0x400);
        let i = inject(Injected::InstAbort { far: 8 }, 0x10, 0, VBAR);
        assert_eq!(i.esr_el1, 0x8200_0010);
        let i = inject(Injected::InstAbort { far: 8 }, 0x10, 0x3c5, VBAR);
        assert_eq!(i.esr_el1, 0x8600_0010);
    }

    /// Hostile host, item 9 (`aarch32`): an exception from AArch32 EL0 (a
    /// 32-bit process under an AArch64 guest kernel) enters the lower-EL
    /// AArch32 vector at +0x600, not the AArch64 one at +0x400, as a
    /// lower-EL exception; ELR is the faulting instruction, SPSR keeps the
    /// AArch32 state (Thumb bit included).
    #[test]
    fn aarch32_el0_uses_the_aarch32_lower_el_vector() {
        for spsr in [0x10, 0x30, 0x1d0] {
            let i = inject(Injected::Undefined, 0x8000, spsr, VBAR);
            assert_eq!(i.pc, VBAR + 0x600, "SPSR {spsr:#x}");
            assert_eq!(i.elr_el1, 0x8000);
            assert_eq!(i.spsr_el1, spsr);
            assert_eq!(i.pstate, PSTATE_DAIF | PSTATE_EL1H);
            let i = inject(
                Injected::DataAbort {
                    far: 0x10,
                    write: true,
                },
                0x8000,
                spsr,
                VBAR,
            );
            assert_eq!(i.esr_el1 >> 26, 0x24, "a lower-EL data abort");
            assert_eq!(i.pc, VBAR + 0x600);
        }
    }

    #[test]
    fn undefined() {
        let i = inject(Injected::Undefined, 0x4000_0000, 0x3c5, VBAR);
        assert_eq!(i.esr_el1, 0x0200_0000);
        assert_eq!(i.far_el1, None);
        assert_eq!(i.elr_el1, 0x4000_0000);
        assert_eq!(i.pc, VBAR + 0x200);
    }
}
