//! The Performance Monitors registers (Arm ARM D13, "The Performance Monitors Extension"), as
//! EL2 reads and writes them for a vCPU: loading and saving its counters on the world switch and
//! performing the guest's trapped accesses (MDCR_EL2.TPM) on its behalf.
//!
//! EL2 never counts anything for itself, so no EL2 instruction depends on these registers: every
//! write is [`GuestOnly`] (the entry ERET synchronises it) and safe. Reads have no side effects.
//! The PMU's overflow interrupt is the one effect outside the guest, and EL2 handles that
//! interrupt like any other (it never trusts the level).

use crate::insn::SysReg;
use crate::regs::write_pmu;
use crate::sync::{GuestOnly, Pending};

/// A PMU register EL2 accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmuReg {
    /// PMCR_EL0: control (E, P, C, D, X, DP, LC), N.
    Pmcr,
    /// PMCNTENSET_EL0: counter enables (read, or write 1s to set).
    Cntenset,
    /// PMCNTENCLR_EL0: write 1s to clear counter enables.
    Cntenclr,
    /// PMINTENSET_EL1: overflow interrupt enables (write 1s to set).
    Intenset,
    /// PMINTENCLR_EL1: write 1s to clear interrupt enables.
    Intenclr,
    /// PMOVSSET_EL0: overflow status (write 1s to set).
    Ovsset,
    /// PMOVSCLR_EL0: write 1s to clear overflow status.
    Ovsclr,
    /// PMCCNTR_EL0: the cycle counter.
    Ccntr,
    /// PMCCFILTR_EL0: the cycle counter's filter.
    Ccfiltr,
    /// PMUSERENR_EL0: EL0 access enables.
    Userenr,
    /// PMCEID0_EL0: common events implemented (read-only).
    Ceid0,
    /// PMCEID1_EL0: common events implemented (read-only).
    Ceid1,
    /// PMEVCNTR<n>_EL0, n < 31.
    Evcntr(u8),
    /// PMEVTYPER<n>_EL0, n < 31.
    Evtyper(u8),
}

impl PmuReg {
    /// The register's [`SysReg`] name.
    ///
    /// # Panics
    ///
    /// A counter index of 31 or more.
    #[must_use]
    pub fn sysreg(self) -> SysReg {
        match self {
            PmuReg::Pmcr => SysReg::PmcrEl0,
            PmuReg::Cntenset => SysReg::PmcntensetEl0,
            PmuReg::Cntenclr => SysReg::PmcntenclrEl0,
            PmuReg::Intenset => SysReg::PmintensetEl1,
            PmuReg::Intenclr => SysReg::PmintenclrEl1,
            PmuReg::Ovsset => SysReg::PmovssetEl0,
            PmuReg::Ovsclr => SysReg::PmovsclrEl0,
            PmuReg::Ccntr => SysReg::PmccntrEl0,
            PmuReg::Ccfiltr => SysReg::PmccfiltrEl0,
            PmuReg::Userenr => SysReg::PmuserenrEl0,
            PmuReg::Ceid0 => SysReg::Pmceid0El0,
            PmuReg::Ceid1 => SysReg::Pmceid1El0,
            PmuReg::Evcntr(n) => {
                assert!(n < 31, "PMEVCNTR{n}_EL0 does not exist");
                SysReg::PmEvCntr(n)
            }
            PmuReg::Evtyper(n) => {
                assert!(n < 31, "PMEVTYPER{n}_EL0 does not exist");
                SysReg::PmEvTyper(n)
            }
        }
    }

    /// Reads the register (only on a CPU with FEAT_PMUv3; counters below PMCR_EL0.N).
    #[must_use]
    pub fn read(self) -> u64 {
        crate::insn::emit::mrs(self.sysreg())
    }

    /// Writes the register; only the guest consumes the write (EL2 counts nothing).
    ///
    /// # Panics
    ///
    /// PMCEID0/1_EL0, which are read-only (the write would be UNDEFINED at EL2).
    pub fn write(self, value: u64) -> Pending<GuestOnly> {
        assert!(
            !matches!(self, PmuReg::Ceid0 | PmuReg::Ceid1),
            "PMCEID<n>_EL0 is read-only"
        );
        write_pmu(self.sysreg(), value)
    }
}
