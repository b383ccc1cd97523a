//! The instructions this crate emits, and the two backends that emit them.
//!
//! [`Insn`] names every instruction (plus a few host-only markers) the crate can issue. On the
//! hypervisor target (`aarch64`, `target_os = "none"`, not `cfg(test)`) the private `hw` backend
//! executes them with inline assembly. Everywhere else the recording backend appends them to a
//! per-thread trace (see [`crate::trace`]) and keeps a shadow register file, so tests in this and
//! other crates can assert exact sequences and run [`crate::check::check`] over them.

/// The domain/type operand of a `DSB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DsbKind {
    /// Full system, loads and stores.
    Sy,
    /// Inner Shareable, loads and stores (completes TLBIs: R_PSMWS).
    Ish,
    /// Inner Shareable, stores only (makes descriptor stores visible to walkers).
    Ishst,
}

impl DsbKind {
    /// Whether this DSB orders (and completes) earlier stores for other PEs' walkers.
    pub const fn covers_ish_stores(self) -> bool {
        matches!(self, DsbKind::Sy | DsbKind::Ish | DsbKind::Ishst)
    }

    /// Whether this DSB completes earlier broadcast TLB maintenance (loads and stores, Inner
    /// Shareable or wider).
    pub const fn completes_tlbi(self) -> bool {
        matches!(self, DsbKind::Sy | DsbKind::Ish)
    }
}

/// A TLB maintenance operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tlbi {
    /// `TLBI IPAS2E1IS`: stage-2 entries for one IPA, current VMID (VTTBR_EL2), Inner Shareable.
    /// `level` is the TTL hint (the level of the old leaf), if known.
    Ipas2e1is {
        /// The intermediate physical address.
        ipa: u64,
        /// Translation table level of the old leaf.
        level: Option<u8>,
    },
    /// `TLBI VMALLS12E1IS`: all stage-1 and stage-2 entries of the current VMID.
    Vmalls12e1is,
    /// `TLBI VMALLE1IS`: all stage-1 entries of the current VMID (including combined S1+S2).
    Vmalle1is,
    /// `TLBI ALLE2IS`: all EL2 regime entries, Inner Shareable.
    Alle2is,
    /// `TLBI ALLE2`: all EL2 regime entries, this PE only.
    Alle2,
    /// `TLBI VAE2IS`: EL2 entries for one VA, Inner Shareable.
    Vae2is {
        /// The virtual address.
        va: u64,
    },
}

impl Tlbi {
    /// Whether the operation is "by VMID", i.e. depends on VTTBR_EL2.VMID (and HCR_EL2.TGE) being
    /// synchronised first (ARM-RULES.md section 1, invariant 7).
    pub const fn by_vmid(self) -> bool {
        matches!(
            self,
            Tlbi::Ipas2e1is { .. } | Tlbi::Vmalls12e1is | Tlbi::Vmalle1is
        )
    }
}

/// An EL2 behaviour that depends on earlier system-register writes. Recorded on the host only
/// (they are not instructions) so that [`crate::check`] can see the consumer of a pending write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer {
    /// EL2 executed FP/SIMD/SVE instructions (trapped by CPTR_EL2).
    El2Fp,
    /// EL2 started to rely on its own translation regime (SCTLR/TCR/TTBR0/MAIR_EL2).
    El2Memory,
    /// What this CPU's VTTBR owner knows at the start of a trace: `vmid` is loaded, and whether
    /// the write was synchronised.
    VttbrIs {
        /// The VMID in VTTBR_EL2.
        vmid: u16,
        /// A context synchronisation event happened since it was written.
        synced: bool,
    },
    /// A stage-2 batch is about to issue TLB maintenance for the tables of `vmid`.
    Stage2Edit {
        /// The VMID whose tables are edited.
        vmid: u16,
    },
}

macro_rules! sysregs {
    ($($(#[$m:meta])* $v:ident => $asm:literal,)*) => {
        /// A system register this crate writes or reads.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum SysReg {
            $($(#[$m])* $v,)*
            /// `ICH_LR<n>_EL2`, n in 0..16.
            IchLr(u8),
            /// `DBGBVR<n>_EL1`, n in 0..16: breakpoint value.
            DbgBvr(u8),
            /// `DBGBCR<n>_EL1`, n in 0..16: breakpoint control.
            DbgBcr(u8),
            /// `DBGWVR<n>_EL1`, n in 0..16: watchpoint value.
            DbgWvr(u8),
            /// `DBGWCR<n>_EL1`, n in 0..16: watchpoint control.
            DbgWcr(u8),
            /// `PMEVCNTR<n>_EL0`, n in 0..31.
            PmEvCntr(u8),
            /// `PMEVTYPER<n>_EL0`, n in 0..31.
            PmEvTyper(u8),
        }

        impl SysReg {
            /// The assembler name of the register (`ICH_LR<n>_EL2` reports `"ich_lr<n>_el2"`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(SysReg::$v => $asm,)*
                    SysReg::IchLr(_) => "ich_lr<n>_el2",
                    SysReg::DbgBvr(_) => "dbgbvr<n>_el1",
                    SysReg::DbgBcr(_) => "dbgbcr<n>_el1",
                    SysReg::DbgWvr(_) => "dbgwvr<n>_el1",
                    SysReg::DbgWcr(_) => "dbgwcr<n>_el1",
                    SysReg::PmEvCntr(_) => "pmevcntr<n>_el0",
                    SysReg::PmEvTyper(_) => "pmevtyper<n>_el0",
                }
            }
        }

        #[cfg(all(barriers_hw, not(test)))]
        pub(crate) mod hw_sysreg {
            use super::SysReg;
            use core::arch::asm;

            /// Writes `value` to `reg`.
            ///
            /// # Safety
            ///
            /// The caller upholds the contract of the typed writer that called it.
            #[inline(always)]
            pub(crate) unsafe fn msr(reg: SysReg, value: u64) {
                match reg {
                    // SAFETY: the typed writer's contract covers the effect of the write; the
                    // instruction itself touches no memory and no stack.
                    $(SysReg::$v => unsafe {
                        asm!(concat!("msr ", $asm, ", {0}"), in(reg) value, options(nostack, preserves_flags))
                    },)*
                    // SAFETY: as above.
                    SysReg::IchLr(n) => unsafe { super::hw_ich::write_lr(n, value) },
                    // SAFETY: as above.
                    SysReg::DbgBvr(_) | SysReg::DbgBcr(_) | SysReg::DbgWvr(_) | SysReg::DbgWcr(_) => unsafe {
                        super::hw_dbg::write(reg, value)
                    },
                    // SAFETY: as above.
                    SysReg::PmEvCntr(n) => unsafe { super::hw_pmu::write_evcntr(n, value) },
                    // SAFETY: as above.
                    SysReg::PmEvTyper(n) => unsafe { super::hw_pmu::write_evtyper(n, value) },
                }
            }

            /// Reads `reg`. Reads have no side effects on the registers this crate names.
            #[inline(always)]
            pub(crate) fn mrs(reg: SysReg) -> u64 {
                let value: u64;
                match reg {
                    // SAFETY: reading these registers at EL2 has no side effects and touches no
                    // memory.
                    $(SysReg::$v => unsafe {
                        asm!(concat!("mrs {0}, ", $asm), out(reg) value, options(nomem, nostack, preserves_flags))
                    },)*
                    SysReg::IchLr(n) => value = super::hw_ich::read_lr(n),
                    SysReg::DbgBvr(_) | SysReg::DbgBcr(_) | SysReg::DbgWvr(_) | SysReg::DbgWcr(_) => {
                        value = super::hw_dbg::read(reg)
                    }
                    SysReg::PmEvCntr(n) => value = super::hw_pmu::read_evcntr(n),
                    SysReg::PmEvTyper(n) => value = super::hw_pmu::read_evtyper(n),
                }
                value
            }
        }
    };
}

sysregs! {
    /// HCR_EL2.
    HcrEl2 => "hcr_el2",
    /// VTTBR_EL2.
    VttbrEl2 => "vttbr_el2",
    /// VTCR_EL2.
    VtcrEl2 => "vtcr_el2",
    /// VBAR_EL2.
    VbarEl2 => "vbar_el2",
    /// SCTLR_EL2.
    SctlrEl2 => "sctlr_el2",
    /// TCR_EL2.
    TcrEl2 => "tcr_el2",
    /// TTBR0_EL2.
    Ttbr0El2 => "ttbr0_el2",
    /// MAIR_EL2.
    MairEl2 => "mair_el2",
    /// CPTR_EL2.
    CptrEl2 => "cptr_el2",
    /// CNTHCTL_EL2.
    CnthctlEl2 => "cnthctl_el2",
    /// CNTVOFF_EL2.
    CntvoffEl2 => "cntvoff_el2",
    /// VPIDR_EL2.
    VpidrEl2 => "vpidr_el2",
    /// VMPIDR_EL2.
    VmpidrEl2 => "vmpidr_el2",
    /// MDCR_EL2.
    MdcrEl2 => "mdcr_el2",
    /// TPIDR_EL2.
    TpidrEl2 => "tpidr_el2",
    /// ICC_SRE_EL2 (S3_4_C12_C9_5).
    IccSreEl2 => "s3_4_c12_c9_5",
    /// ICH_HCR_EL2 (S3_4_C12_C11_0).
    IchHcrEl2 => "s3_4_c12_c11_0",
    /// ICH_VMCR_EL2 (S3_4_C12_C11_7).
    IchVmcrEl2 => "s3_4_c12_c11_7",
    /// ICC_PMR_EL1 (S3_0_C4_C6_0), physical CPU interface at EL2.
    IccPmrEl1 => "s3_0_c4_c6_0",
    /// ICC_IGRPEN1_EL1 (S3_0_C12_C12_7).
    IccIgrpen1El1 => "s3_0_c12_c12_7",
    /// ICC_EOIR1_EL1 (S3_0_C12_C12_1).
    IccEoir1El1 => "s3_0_c12_c12_1",
    /// ICC_IAR1_EL1 (S3_0_C12_C12_0), read-only: acknowledges an interrupt.
    IccIar1El1 => "s3_0_c12_c12_0",
    /// ICC_CTLR_EL1 (S3_0_C12_C12_4).
    IccCtlrEl1 => "s3_0_c12_c12_4",
    /// ICC_DIR_EL1 (S3_0_C12_C11_1) at EL2: deactivates a physical interrupt (EOImode 1).
    IccDirEl1 => "s3_0_c12_c11_1",
    /// ICC_SGI1R_EL1 (S3_0_C12_C11_5) at EL2: physical SGIs (vCPU kicks).
    IccSgi1rEl1 => "s3_0_c12_c11_5",
    /// CNTHP_CTL_EL2: the EL2 physical timer's control.
    CnthpCtlEl2 => "cnthp_ctl_el2",
    /// CNTHP_CVAL_EL2: the EL2 physical timer's compare value.
    CnthpCvalEl2 => "cnthp_cval_el2",
    /// ICH_VTR_EL2 (S3_4_C12_C11_1), read-only.
    IchVtrEl2 => "s3_4_c12_c11_1",
    /// ICH_ELRSR_EL2 (S3_4_C12_C11_5), read-only.
    IchElrsrEl2 => "s3_4_c12_c11_5",
    /// ICH_AP0R0_EL2 (S3_4_C12_C8_0).
    IchAp0r0El2 => "s3_4_c12_c8_0",
    /// ICH_AP1R0_EL2 (S3_4_C12_C9_0).
    IchAp1r0El2 => "s3_4_c12_c9_0",
    /// SCTLR_EL1.
    SctlrEl1 => "sctlr_el1",
    /// TTBR0_EL1.
    Ttbr0El1 => "ttbr0_el1",
    /// TTBR1_EL1.
    Ttbr1El1 => "ttbr1_el1",
    /// TCR_EL1.
    TcrEl1 => "tcr_el1",
    /// MAIR_EL1.
    MairEl1 => "mair_el1",
    /// AMAIR_EL1.
    AmairEl1 => "amair_el1",
    /// VBAR_EL1.
    VbarEl1 => "vbar_el1",
    /// CONTEXTIDR_EL1.
    ContextidrEl1 => "contextidr_el1",
    /// TPIDR_EL0.
    TpidrEl0 => "tpidr_el0",
    /// TPIDRRO_EL0.
    TpidrroEl0 => "tpidrro_el0",
    /// TPIDR_EL1.
    TpidrEl1 => "tpidr_el1",
    /// SP_EL0.
    SpEl0 => "sp_el0",
    /// SP_EL1.
    SpEl1 => "sp_el1",
    /// ELR_EL1.
    ElrEl1 => "elr_el1",
    /// SPSR_EL1.
    SpsrEl1 => "spsr_el1",
    /// ESR_EL1.
    EsrEl1 => "esr_el1",
    /// FAR_EL1.
    FarEl1 => "far_el1",
    /// AFSR0_EL1.
    Afsr0El1 => "afsr0_el1",
    /// AFSR1_EL1.
    Afsr1El1 => "afsr1_el1",
    /// PAR_EL1.
    ParEl1 => "par_el1",
    /// CNTKCTL_EL1.
    CntkctlEl1 => "cntkctl_el1",
    /// CPACR_EL1.
    CpacrEl1 => "cpacr_el1",
    /// CNTV_CTL_EL0.
    CntvCtlEl0 => "cntv_ctl_el0",
    /// CNTV_CVAL_EL0.
    CntvCvalEl0 => "cntv_cval_el0",
    /// CNTP_CTL_EL0: the EL1 physical timer's control.
    CntpCtlEl0 => "cntp_ctl_el0",
    /// CNTP_CVAL_EL0: the EL1 physical timer's compare value.
    CntpCvalEl0 => "cntp_cval_el0",
    /// CSSELR_EL1.
    CsselrEl1 => "csselr_el1",
    /// VDISR_EL2 (S3_4_C12_C1_1, FEAT_RAS): the DISR_EL1 a lower EL reads and writes while
    /// HCR_EL2.AMO = 1.
    VdisrEl2 => "s3_4_c12_c1_1",
    /// HFGRTR_EL2 (S3_4_C1_C1_4, FEAT_FGT).
    HfgrtrEl2 => "s3_4_c1_c1_4",
    /// HFGWTR_EL2 (S3_4_C1_C1_5, FEAT_FGT).
    HfgwtrEl2 => "s3_4_c1_c1_5",
    /// HFGITR_EL2 (S3_4_C1_C1_6, FEAT_FGT).
    HfgitrEl2 => "s3_4_c1_c1_6",
    /// HDFGRTR_EL2 (S3_4_C3_C1_4, FEAT_FGT).
    HdfgrtrEl2 => "s3_4_c3_c1_4",
    /// HDFGWTR_EL2 (S3_4_C3_C1_5, FEAT_FGT).
    HdfgwtrEl2 => "s3_4_c3_c1_5",
    /// HCRX_EL2 (S3_4_C1_C2_2, FEAT_HCX).
    HcrxEl2 => "s3_4_c1_c2_2",
    /// ZCR_EL2 (S3_4_C1_C2_0, FEAT_SVE): the SVE vector length at EL2 and the cap of EL1's.
    ZcrEl2 => "s3_4_c1_c2_0",
    /// CPUACTLR_EL1 (S3_1_C15_C2_0): Cortex-A57/A72 IMPLEMENTATION DEFINED auxiliary control.
    CpuactlrEl1 => "s3_1_c15_c2_0",
    /// MDSCR_EL1 (S2_0_C0_C2_2): the guest's self-hosted debug controls.
    MdscrEl1 => "s2_0_c0_c2_2",
    /// OSLAR_EL1 (S2_0_C1_C0_4): the OS lock (write-only).
    OslarEl1 => "s2_0_c1_c0_4",
    /// PMCR_EL0.
    PmcrEl0 => "pmcr_el0",
    /// PMCNTENSET_EL0.
    PmcntensetEl0 => "pmcntenset_el0",
    /// PMCNTENCLR_EL0.
    PmcntenclrEl0 => "pmcntenclr_el0",
    /// PMINTENSET_EL1.
    PmintensetEl1 => "pmintenset_el1",
    /// PMINTENCLR_EL1.
    PmintenclrEl1 => "pmintenclr_el1",
    /// PMOVSSET_EL0.
    PmovssetEl0 => "pmovsset_el0",
    /// PMOVSCLR_EL0.
    PmovsclrEl0 => "pmovsclr_el0",
    /// PMCCNTR_EL0.
    PmccntrEl0 => "pmccntr_el0",
    /// PMCCFILTR_EL0.
    PmccfiltrEl0 => "pmccfiltr_el0",
    /// PMUSERENR_EL0.
    PmuserenrEl0 => "pmuserenr_el0",
    /// PMCEID0_EL0 (S3_3_C9_C12_6, read-only: the generic name, so the `msr` arm the macro
    /// generates assembles; nothing calls it).
    Pmceid0El0 => "s3_3_c9_c12_6",
    /// PMCEID1_EL0 (S3_3_C9_C12_7, read-only).
    Pmceid1El0 => "s3_3_c9_c12_7",
}

#[cfg(all(barriers_hw, not(test)))]
mod hw_pmu {
    use core::arch::asm;

    macro_rules! indexed {
        ($write:ident, $read:ident, $name:literal, $($i:literal),*) => {
            /// # Safety
            ///
            /// As for [`super::hw_sysreg::msr`].
            pub(crate) unsafe fn $write(n: u8, v: u64) {
                match n {
                    // SAFETY: the typed writer's contract covers the write; the instruction
                    // touches no memory.
                    $($i => unsafe { asm!(concat!("msr ", $name, $i, "_el0, {0}"), in(reg) v, options(nostack, preserves_flags)) },)*
                    _ => panic!("PMU counter index out of range (0..31)"),
                }
            }

            pub(crate) fn $read(n: u8) -> u64 {
                let v: u64;
                match n {
                    // SAFETY: reading a counter or its type has no side effects.
                    $($i => unsafe { asm!(concat!("mrs {0}, ", $name, $i, "_el0"), out(reg) v, options(nomem, nostack, preserves_flags)) },)*
                    _ => panic!("PMU counter index out of range (0..31)"),
                }
                v
            }
        };
    }

    indexed!(
        write_evcntr,
        read_evcntr,
        "pmevcntr",
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
        18,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        29,
        30
    );
    indexed!(
        write_evtyper,
        read_evtyper,
        "pmevtyper",
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
        18,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        29,
        30
    );
}

impl SysReg {
    /// Whether EL2 reaches this register through a `*_EL1`/`*_EL0` name, so that the access is
    /// redirected when HCR_EL2.E2H changes (ARM-RULES.md section 1, invariant 6).
    pub const fn is_el1_named(self) -> bool {
        matches!(
            self,
            SysReg::SctlrEl1
                | SysReg::Ttbr0El1
                | SysReg::Ttbr1El1
                | SysReg::TcrEl1
                | SysReg::MairEl1
                | SysReg::AmairEl1
                | SysReg::VbarEl1
                | SysReg::ContextidrEl1
                | SysReg::TpidrEl0
                | SysReg::TpidrroEl0
                | SysReg::TpidrEl1
                | SysReg::SpEl0
                | SysReg::SpEl1
                | SysReg::ElrEl1
                | SysReg::SpsrEl1
                | SysReg::EsrEl1
                | SysReg::FarEl1
                | SysReg::Afsr0El1
                | SysReg::Afsr1El1
                | SysReg::ParEl1
                | SysReg::CntkctlEl1
                | SysReg::CpacrEl1
                | SysReg::CntvCtlEl0
                | SysReg::CntvCvalEl0
                | SysReg::CntpCtlEl0
                | SysReg::CntpCvalEl0
                | SysReg::CsselrEl1
        )
    }

    /// Whether the register is an EL2 register whose *layout* depends on HCR_EL2.E2H (TCR_EL2,
    /// CPTR_EL2), so a write to it needs E2H synchronised first (invariant 6).
    pub const fn is_e2h_layout(self) -> bool {
        matches!(self, SysReg::TcrEl2 | SysReg::CptrEl2)
    }

    /// Whether the register belongs to the GIC CPU or virtual CPU interface (depends on
    /// ICC_SRE_EL2.SRE).
    pub const fn is_gic(self) -> bool {
        matches!(
            self,
            SysReg::IchHcrEl2
                | SysReg::IchVmcrEl2
                | SysReg::IchVtrEl2
                | SysReg::IchElrsrEl2
                | SysReg::IchAp0r0El2
                | SysReg::IchAp1r0El2
                | SysReg::IchLr(_)
        )
    }
}

/// One recorded instruction (or host-only marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insn {
    /// `ISB`.
    Isb,
    /// `DSB <kind>`.
    Dsb(DsbKind),
    /// `TLBI <op>`.
    Tlbi(Tlbi),
    /// `MSR <reg>, x`. `changed` is the set of bits that differ from the previous value (from the
    /// recording backend's shadow register file), so a checker can tell which fields changed.
    Msr {
        /// The register written.
        reg: SysReg,
        /// The value written.
        value: u64,
        /// Bits that differ from the register's previous value.
        changed: u64,
    },
    /// `MRS x, <reg>` issued through a typed reader.
    Mrs {
        /// The register read.
        reg: SysReg,
    },
    /// The world switch's `ERET` into a guest (a marker: the ERET itself is in assembly).
    Eret,
    /// `DC CIVAC, <va>`.
    DcCivac {
        /// The (cache-line aligned) virtual address.
        va: u64,
    },
    /// `IC IALLUIS`.
    IcIalluis,
    /// A translation-table descriptor store (release semantics).
    Store {
        /// Address of the descriptor.
        addr: u64,
        /// Previous descriptor.
        old: u64,
        /// New descriptor.
        new: u64,
        /// Input address the entry maps, when known (breaks and restrictions).
        ia: Option<u64>,
        /// Level of the entry, when known (`None` for a table entry or an unknown level).
        level: Option<u8>,
    },
    /// A translation table or page was released for reuse.
    Free {
        /// Its physical address.
        pa: u64,
    },
    /// A consumer of earlier writes (host-only marker).
    Use(Consumer),
}

/// Operand of `TLBI IPAS2E1IS`: IPA\[51:12\] in bits \[39:0\]. The TTL hint (bits \[47:44\]) is
/// left 0 because it is RES0 without FEAT_TTL.
pub const fn ipas2_operand(ipa: u64) -> u64 {
    (ipa >> 12) & ((1 << 40) - 1)
}

/// Operand of `TLBI VAE2IS`: VA\[55:12\] in bits \[43:0\].
pub const fn va_operand(va: u64) -> u64 {
    (va >> 12) & ((1 << 44) - 1)
}

#[cfg(all(barriers_hw, not(test)))]
mod hw_ich {
    use core::arch::asm;

    macro_rules! lr {
        ($n:expr, $v:ident, $($i:literal => $enc:literal),*) => {
            match $n {
                // SAFETY: ICH_LR<n>_EL2 writes affect only the virtual CPU interface; the caller
                // (the typed writer) holds a proof that ICC_SRE_EL2 is synchronised.
                $($i => unsafe { asm!(concat!("msr ", $enc, ", {0}"), in(reg) $v, options(nostack, preserves_flags)) },)*
                _ => panic!("ICH_LR index out of range (0..16)"),
            }
        };
    }
    macro_rules! lr_read {
        ($n:expr, $($i:literal => $enc:literal),*) => {{
            let v: u64;
            match $n {
                // SAFETY: reading a list register has no side effects.
                $($i => unsafe { asm!(concat!("mrs {0}, ", $enc), out(reg) v, options(nomem, nostack, preserves_flags)) },)*
                _ => panic!("ICH_LR index out of range (0..16)"),
            }
            v
        }};
    }

    /// # Safety
    ///
    /// As for [`super::hw_sysreg::msr`].
    pub(crate) unsafe fn write_lr(n: u8, v: u64) {
        lr!(n, v,
            0 => "s3_4_c12_c12_0", 1 => "s3_4_c12_c12_1", 2 => "s3_4_c12_c12_2", 3 => "s3_4_c12_c12_3",
            4 => "s3_4_c12_c12_4", 5 => "s3_4_c12_c12_5", 6 => "s3_4_c12_c12_6", 7 => "s3_4_c12_c12_7",
            8 => "s3_4_c12_c13_0", 9 => "s3_4_c12_c13_1", 10 => "s3_4_c12_c13_2", 11 => "s3_4_c12_c13_3",
            12 => "s3_4_c12_c13_4", 13 => "s3_4_c12_c13_5", 14 => "s3_4_c12_c13_6", 15 => "s3_4_c12_c13_7")
    }

    pub(crate) fn read_lr(n: u8) -> u64 {
        lr_read!(n,
            0 => "s3_4_c12_c12_0", 1 => "s3_4_c12_c12_1", 2 => "s3_4_c12_c12_2", 3 => "s3_4_c12_c12_3",
            4 => "s3_4_c12_c12_4", 5 => "s3_4_c12_c12_5", 6 => "s3_4_c12_c12_6", 7 => "s3_4_c12_c12_7",
            8 => "s3_4_c12_c13_0", 9 => "s3_4_c12_c13_1", 10 => "s3_4_c12_c13_2", 11 => "s3_4_c12_c13_3",
            12 => "s3_4_c12_c13_4", 13 => "s3_4_c12_c13_5", 14 => "s3_4_c12_c13_6", 15 => "s3_4_c12_c13_7")
    }
}

/// The self-hosted debug registers by number: `S2_0_C0_C<n>_<op2>` with op2 4 (DBGBVR), 5
/// (DBGBCR), 6 (DBGWVR), 7 (DBGWCR) (Arm ARM D24.3, "Debug registers").
#[cfg(all(barriers_hw, not(test)))]
mod hw_dbg {
    use super::SysReg;
    use core::arch::asm;

    macro_rules! each_n {
        ($m:ident, $($args:tt)*) => {
            $m!($($args)*, 0 => "c0", 1 => "c1", 2 => "c2", 3 => "c3", 4 => "c4", 5 => "c5",
                6 => "c6", 7 => "c7", 8 => "c8", 9 => "c9", 10 => "c10", 11 => "c11",
                12 => "c12", 13 => "c13", 14 => "c14", 15 => "c15")
        };
    }
    macro_rules! w {
        ($n:expr, $v:ident, $op2:literal, $($i:literal => $crm:literal),*) => {
            match $n {
                // SAFETY: a debug register only holds EL1&0 debug state; with MDCR_EL2.TDE = 0
                // and HCR_EL2.TGE = 0 it never generates an exception at EL2 (the caller's
                // typed writer documents why).
                $($i => unsafe { asm!(concat!("msr s2_0_c0_", $crm, "_", $op2, ", {0}"), in(reg) $v, options(nostack, preserves_flags)) },)*
                _ => panic!("debug register index out of range (0..16)"),
            }
        };
    }
    macro_rules! r {
        ($n:expr, $op2:literal, $($i:literal => $crm:literal),*) => {{
            let v: u64;
            match $n {
                // SAFETY: reading a debug register has no side effects.
                $($i => unsafe { asm!(concat!("mrs {0}, s2_0_c0_", $crm, "_", $op2), out(reg) v, options(nomem, nostack, preserves_flags)) },)*
                _ => panic!("debug register index out of range (0..16)"),
            }
            v
        }};
    }

    /// # Safety
    ///
    /// As for [`super::hw_sysreg::msr`]; `reg` is one of the four debug register kinds.
    pub(crate) unsafe fn write(reg: SysReg, v: u64) {
        match reg {
            SysReg::DbgBvr(n) => each_n!(w, n, v, "4"),
            SysReg::DbgBcr(n) => each_n!(w, n, v, "5"),
            SysReg::DbgWvr(n) => each_n!(w, n, v, "6"),
            SysReg::DbgWcr(n) => each_n!(w, n, v, "7"),
            _ => unreachable!("not a debug register"),
        }
    }

    pub(crate) fn read(reg: SysReg) -> u64 {
        match reg {
            SysReg::DbgBvr(n) => each_n!(r, n, "4"),
            SysReg::DbgBcr(n) => each_n!(r, n, "5"),
            SysReg::DbgWvr(n) => each_n!(r, n, "6"),
            SysReg::DbgWcr(n) => each_n!(r, n, "7"),
            _ => unreachable!("not a debug register"),
        }
    }
}

/// The hardware backend: real instructions.
#[cfg(all(barriers_hw, not(test)))]
pub(crate) mod emit {
    use super::{ipas2_operand, va_operand, Consumer, DsbKind, SysReg, Tlbi};
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    #[inline(always)]
    pub(crate) fn isb() {
        // SAFETY: ISB only flushes this PE's pipeline; no memory or register effects.
        unsafe { asm!("isb", options(nostack, preserves_flags)) }
    }

    #[inline(always)]
    pub(crate) fn dsb(kind: DsbKind) {
        // SAFETY: DSB only orders memory accesses; it is modelled as a memory clobber so the
        // compiler does not move accesses across it.
        unsafe {
            match kind {
                DsbKind::Sy => asm!("dsb sy", options(nostack, preserves_flags)),
                DsbKind::Ish => asm!("dsb ish", options(nostack, preserves_flags)),
                DsbKind::Ishst => asm!("dsb ishst", options(nostack, preserves_flags)),
            }
        }
    }

    #[inline(always)]
    pub(crate) fn tlbi(op: Tlbi) {
        // SAFETY: TLB invalidation only removes cached translations; the walker refills them from
        // the tables, so it cannot break memory safety by itself.
        unsafe {
            match op {
                Tlbi::Ipas2e1is { ipa, .. } => {
                    asm!("tlbi ipas2e1is, {0}", in(reg) ipas2_operand(ipa), options(nostack, preserves_flags))
                }
                Tlbi::Vmalls12e1is => asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)),
                Tlbi::Vmalle1is => asm!("tlbi vmalle1is", options(nostack, preserves_flags)),
                Tlbi::Alle2is => asm!("tlbi alle2is", options(nostack, preserves_flags)),
                Tlbi::Alle2 => asm!("tlbi alle2", options(nostack, preserves_flags)),
                Tlbi::Vae2is { va } => {
                    asm!("tlbi vae2is, {0}", in(reg) va_operand(va), options(nostack, preserves_flags))
                }
            }
        }
    }

    /// # Safety
    ///
    /// The typed writer calling this upholds the register's contract.
    #[inline(always)]
    pub(crate) unsafe fn msr(reg: SysReg, value: u64) {
        // SAFETY: forwarded contract.
        unsafe { super::hw_sysreg::msr(reg, value) }
    }

    #[inline(always)]
    pub(crate) fn mrs(reg: SysReg) -> u64 {
        super::hw_sysreg::mrs(reg)
    }

    /// Reads a register for an internal check (not part of any trace).
    #[inline(always)]
    pub(crate) fn peek(reg: SysReg) -> u64 {
        super::hw_sysreg::mrs(reg)
    }

    #[inline(always)]
    pub(crate) fn eret() {}

    #[inline(always)]
    pub(crate) fn dc_civac(va: u64) {
        // SAFETY: clean+invalidate by VA to PoC writes back dirty data and never loses it; the
        // address is only used as a cache index, a fault on it is the caller's bug.
        unsafe { asm!("dc civac, {0}", in(reg) va, options(nostack, preserves_flags)) }
    }

    /// The `DC ZVA` block in bytes, or `None` when `DC ZVA` is prohibited
    /// (DCZID_EL0.DZP).
    #[inline(always)]
    pub(crate) fn zva_block() -> Option<u64> {
        let dczid: u64;
        // SAFETY: DCZID_EL0 is a read-only ID register.
        unsafe {
            asm!("mrs {0}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags))
        }
        (dczid & 0x10 == 0).then(|| 4 << (dczid & 0xf))
    }

    /// Zeroes the `DC ZVA` block holding `va`.
    ///
    /// # Safety
    ///
    /// `va` is in Normal memory mapped writable at this EL that nobody else
    /// uses (it is overwritten with zeroes).
    #[inline(always)]
    pub(crate) unsafe fn dc_zva(va: u64) {
        // SAFETY: forwarded contract.
        unsafe { asm!("dc zva, {0}", in(reg) va, options(nostack, preserves_flags)) }
    }

    #[inline(always)]
    pub(crate) fn ic_ialluis() {
        // SAFETY: invalidating the instruction caches has no architectural data effect.
        unsafe { asm!("ic ialluis", options(nostack, preserves_flags)) }
    }

    #[inline(always)]
    pub(crate) fn store(slot: &AtomicU64, new: u64, _ia: Option<u64>, _level: Option<u8>) {
        slot.store(new, Ordering::Release);
    }

    #[inline(always)]
    pub(crate) fn free(_pa: u64) {}

    #[inline(always)]
    pub(crate) fn mark(_c: Consumer) {}

    /// Smallest data cache line in bytes (CTR_EL0.DminLine).
    pub(crate) fn dcache_line() -> u64 {
        let ctr: u64;
        // SAFETY: CTR_EL0 is a read-only ID register.
        unsafe { asm!("mrs {0}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) }
        4 << ((ctr >> 16) & 0xf)
    }
}

/// The recording backend: a per-thread trace and shadow register file.
#[cfg(not(all(barriers_hw, not(test))))]
pub(crate) mod emit {
    use super::{Consumer, DsbKind, Insn, SysReg, Tlbi};
    use core::cell::RefCell;
    use core::sync::atomic::{AtomicU64, Ordering};
    use std::collections::BTreeMap;
    use std::vec::Vec;

    std::thread_local! {
        pub(crate) static TRACE: RefCell<Vec<Insn>> = const { RefCell::new(Vec::new()) };
        pub(crate) static REGS: RefCell<BTreeMap<SysReg, u64>> = const { RefCell::new(BTreeMap::new()) };
        /// Whether `push` appends (`crate::trace::set_recording`).
        pub(crate) static RECORDING: core::cell::Cell<bool> = const { core::cell::Cell::new(true) };
    }

    pub(crate) fn push(i: Insn) {
        if RECORDING.with(|r| r.get()) {
            TRACE.with(|t| t.borrow_mut().push(i));
        }
    }

    pub(crate) fn isb() {
        push(Insn::Isb);
    }

    pub(crate) fn dsb(kind: DsbKind) {
        push(Insn::Dsb(kind));
    }

    pub(crate) fn tlbi(op: Tlbi) {
        push(Insn::Tlbi(op));
    }

    /// # Safety
    ///
    /// None on the host (kept `unsafe` so both backends have the same signature).
    pub(crate) unsafe fn msr(reg: SysReg, value: u64) {
        let old = REGS
            .with(|r| r.borrow_mut().insert(reg, value))
            .unwrap_or(0);
        push(Insn::Msr {
            reg,
            value,
            changed: old ^ value,
        });
    }

    pub(crate) fn mrs(reg: SysReg) -> u64 {
        push(Insn::Mrs { reg });
        peek(reg)
    }

    pub(crate) fn peek(reg: SysReg) -> u64 {
        REGS.with(|r| r.borrow().get(&reg).copied()).unwrap_or(0)
    }

    pub(crate) fn eret() {
        push(Insn::Eret);
    }

    pub(crate) fn dc_civac(va: u64) {
        push(Insn::DcCivac { va });
    }

    pub(crate) fn ic_ialluis() {
        push(Insn::IcIalluis);
    }

    /// No `DC ZVA` in the recording backend: [`crate::maint::scrub_to_poc`]
    /// zeroes with ordinary stores there.
    pub(crate) fn zva_block() -> Option<u64> {
        None
    }

    /// Never called ([`zva_block`] is `None`).
    pub(crate) unsafe fn dc_zva(_va: u64) {
        unreachable!("the recording backend has no DC ZVA")
    }

    pub(crate) fn store(slot: &AtomicU64, new: u64, ia: Option<u64>, level: Option<u8>) {
        if !RECORDING.with(|r| r.get()) {
            // The hardware backend's store: the swap below (an exchange, a full barrier on
            // some hosts) is only there to record the old value.
            slot.store(new, Ordering::Release);
            return;
        }
        let old = slot.swap(new, Ordering::Release);
        push(Insn::Store {
            addr: slot as *const AtomicU64 as u64,
            old,
            new,
            ia,
            level,
        });
    }

    pub(crate) fn free(pa: u64) {
        push(Insn::Free { pa });
    }

    pub(crate) fn mark(c: Consumer) {
        push(Insn::Use(c));
    }

    pub(crate) fn dcache_line() -> u64 {
        64
    }
}
