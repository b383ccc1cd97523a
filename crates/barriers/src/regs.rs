//! Typed system-register accessors. Each register is a zero-sized type with the accessors the
//! hypervisor uses; reads are safe, writes return a [`Pending`] token of the register's consumer
//! class (see [`crate::sync`]). Writes of registers that control translation, exception routing
//! or trapping are `unsafe`. VTTBR_EL2 has no type here: its one writer is
//! [`crate::vttbr::Vttbr`].
//!
//! Field masks come from `aarch64-cpu` where it defines them.

use crate::insn::{emit, SysReg};
use crate::sync::{
    El1Names, El2Fp, El2GicIf, El2Translation, GicSre, GuestOnly, HcrAny, Includes, Pending,
    Synced, VmidCtx,
};
use aarch64_cpu::registers::{HCR_EL2, VTTBR_EL2};

/// The in-place mask of an `aarch64-cpu` field.
macro_rules! mask {
    ($f:expr) => {
        ($f.mask << $f.shift)
    };
}

/// Writes `value` to `reg` and returns the changed bits (exact on the host; on the target the old
/// value is not read, so every bit counts as changed).
///
/// # Safety
///
/// The caller's typed writer upholds the register's contract.
#[inline(always)]
unsafe fn write_raw(reg: SysReg, value: u64) -> u64 {
    #[cfg(not(all(barriers_hw, not(test))))]
    let changed = emit::peek(reg) ^ value;
    #[cfg(all(barriers_hw, not(test)))]
    let changed = u64::MAX;
    // SAFETY: forwarded contract.
    unsafe { emit::msr(reg, value) };
    changed
}

/// A PMU register write ([`crate::pmu::PmuReg::write`]): guest-only, like the EL1 context.
pub(crate) fn write_pmu(reg: SysReg, value: u64) -> Pending<GuestOnly> {
    // SAFETY: the PMU registers only configure counting and the overflow interrupt; EL2 counts
    // nothing for itself (its event filters exclude EL2, `hyp-core`'s `vcpu::pmu`) and takes the
    // interrupt like any other.
    let changed = unsafe { write_raw(reg, value) };
    Pending::new(reg, changed)
}

macro_rules! el2_reg {
    ($(#[$m:meta])* $name:ident, $reg:ident, $class:ty, safety = $safety:literal) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name;
        impl $name {
            /// Writes the register.
            ///
            /// # Safety
            ///
            #[doc = $safety]
            #[inline]
            pub unsafe fn write(value: u64) -> Pending<$class> {
                // SAFETY: forwarded contract.
                let changed = unsafe { write_raw(SysReg::$reg, value) };
                Pending::new(SysReg::$reg, changed)
            }
        }
    };
    ($(#[$m:meta])* $name:ident, $reg:ident, $class:ty, safe) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name;
        impl $name {
            /// Writes the register (it affects only the guest or an asynchronous timer, so the
            /// write is safe).
            #[inline]
            pub fn write(value: u64) -> Pending<$class> {
                // SAFETY: the register only holds guest-visible state (identification, counter
                // offset) or the EL2 timer, whose interrupt EL2 takes only from a guest; no EL2
                // instruction depends on it.
                let changed = unsafe { write_raw(SysReg::$reg, value) };
                Pending::new(SysReg::$reg, changed)
            }
        }
    };
}

el2_reg!(
    /// VTCR_EL2: stage-2 translation control (TLB-cacheable: change only for a VMID with no live
    /// TLB entries, or TLBI it afterwards, invariant 9).
    VtcrEl2, VtcrEl2, VmidCtx,
    safety = "The value must describe the stage-2 tables of every VMID that will run with it (granule, T0SZ, start level, PS)."
);
el2_reg!(
    /// VBAR_EL2. Its in-context consumer is an exception taken at EL2 before the next CSE; the
    /// contract keeps both vector tables valid across that gap, so the token is [`GuestOnly`]
    /// (exits from the guest happen after the ERET).
    VbarEl2, VbarEl2, GuestOnly,
    safety = "`value` must be the address of a valid EL2 vector table, and the previous table must stay valid until the next context synchronisation event."
);
el2_reg!(
    /// SCTLR_EL2. Consumer: every EL2 access ([`El2Translation`]); ISB at once.
    SctlrEl2, SctlrEl2, El2Translation,
    safety = "The new value must keep EL2's code, data and stack accessible (M/C/EE/WXN/A consistent with TTBR0/TCR/MAIR_EL2), keep EIS = EOS = 1, and be followed by `isb()` before any EL2 memory access that relies on it."
);
el2_reg!(
    /// TTBR0_EL2. Consumer: EL2 translation ([`El2Translation`]).
    Ttbr0El2, Ttbr0El2, El2Translation,
    safety = "The table must map EL2's code, data and stack as before (or the MMU must be off), and be followed by `isb()` before EL2 relies on the new tables; with the MMU on, stale entries need TLBI ALLE2."
);
el2_reg!(
    /// MAIR_EL2 (TLB-cacheable). Consumer: EL2 translation ([`El2Translation`]).
    MairEl2, MairEl2, El2Translation,
    safety = "Attribute indices used by live EL2 mappings must keep their meaning (or the MMU must be off); follow with `isb()` (and TLBI ALLE2 with the MMU on)."
);
el2_reg!(
    /// CNTHCTL_EL2 (E2H = 0: the EL1* bits trap the guest's timer/counter accesses).
    CnthctlEl2, CnthctlEl2, GuestOnly,
    safety = "Traps that the hypervisor relies on for isolation (physical timer/counter access) must stay set for guests that must not use them."
);
el2_reg!(
    /// MDCR_EL2: debug/PMU traps (KVM writes it with no ISB).
    MdcrEl2, MdcrEl2, GuestOnly,
    safety = "Debug/PMU traps the hypervisor relies on for isolation must stay set, and EL2 must not use PMU/SPE/TRBE resources these fields reassign before the next CSE."
);
impl MdcrEl2 {
    /// Reads the register (the lazy debug switch toggles TDA alone, whatever else is set).
    #[inline]
    pub fn read() -> u64 {
        emit::mrs(SysReg::MdcrEl2)
    }
}
el2_reg!(
    /// ICC_SRE_EL2. Consumer: following ICC_*/ICH_* accesses ([`GicSre`]).
    IccSreEl2, IccSreEl2, GicSre,
    safety = "SRE must be 1 (this hypervisor uses system-register GIC access) and Enable must match the intended EL1 access policy; ICC/ICH accesses need a `Synced<GicSre>` proof afterwards."
);
el2_reg!(
    /// ZCR_EL2 (FEAT_SVE): LEN caps the SVE vector length of EL2 and of the lower ELs. Consumer:
    /// EL2's own SVE instructions ([`El2Fp`], as the CPTR_EL2 write that enables them).
    ZcrEl2, ZcrEl2, El2Fp,
    safety = "FEAT_SVE must be implemented; EL2 must not execute SVE instructions that rely on the new length before the token is synchronised, and a guest's SVE state must not be saved or loaded at a length other than the one it was stored at."
);
el2_reg!(
    /// CNTVOFF_EL2: the guest's virtual counter offset.
    CntvoffEl2, CntvoffEl2, GuestOnly, safe
);
el2_reg!(
    /// VPIDR_EL2: the MIDR_EL1 value the guest reads.
    VpidrEl2, VpidrEl2, GuestOnly, safe
);
el2_reg!(
    /// VMPIDR_EL2: the MPIDR_EL1 value the guest reads.
    VmpidrEl2, VmpidrEl2, GuestOnly, safe
);

/// HCR_EL2 fields that only trap or configure the guest (EL1/EL0 traps, virtual interrupt
/// pending bits): changing only these needs no ISB before the ERET (ARM-RULES.md section 1,
/// "HCR.TVM/TRVM/TSW/TWI/TWE/TSC/TID*/API/APK" row; seed 000).
pub const HCR_GUEST_ONLY_FIELDS: u64 = mask!(HCR_EL2::TVM)
    | mask!(HCR_EL2::TRVM)
    | mask!(HCR_EL2::TSW)
    | mask!(HCR_EL2::TWI)
    | mask!(HCR_EL2::TWE)
    | mask!(HCR_EL2::TSC)
    | mask!(HCR_EL2::TID0)
    | mask!(HCR_EL2::TID1)
    | mask!(HCR_EL2::TID2)
    | mask!(HCR_EL2::TID3)
    | mask!(HCR_EL2::TID4)
    | mask!(HCR_EL2::TID5)
    | mask!(HCR_EL2::TIDCP)
    | mask!(HCR_EL2::TACR)
    | mask!(HCR_EL2::TTLB)
    | mask!(HCR_EL2::TTLBIS)
    | mask!(HCR_EL2::TTLBOS)
    | mask!(HCR_EL2::TPU)
    | mask!(HCR_EL2::TPCP)
    | mask!(HCR_EL2::TOCU)
    | mask!(HCR_EL2::TICAB)
    | mask!(HCR_EL2::TDZ)
    | mask!(HCR_EL2::TERR)
    | mask!(HCR_EL2::TLOR)
    | mask!(HCR_EL2::TEA)
    | mask!(HCR_EL2::API)
    | mask!(HCR_EL2::APK)
    | mask!(HCR_EL2::VI)
    | mask!(HCR_EL2::VF)
    | mask!(HCR_EL2::VSE);

/// HCR_EL2 fields the ERET itself reads before its synchronisation point (invariant 4).
pub const HCR_ERET_FIELDS: u64 = mask!(HCR_EL2::RW)
    | mask!(HCR_EL2::E2H)
    | mask!(HCR_EL2::TGE)
    | mask!(HCR_EL2::NV)
    | mask!(HCR_EL2::NV1);

/// HCR_EL2.E2H | TGE: redirect `*_EL1` names and select the regime of TLBI/AT (invariants 6, 7).
pub const HCR_E2H_TGE: u64 = mask!(HCR_EL2::E2H) | mask!(HCR_EL2::TGE);

/// HCR_EL2.
#[derive(Debug)]
pub struct HcrEl2;

impl HcrEl2 {
    /// Writes any HCR_EL2 value. The token ([`HcrAny`]) needs an [`crate::isb`] before any
    /// in-context consumer *and* before the ERET.
    ///
    /// # Safety
    ///
    /// The value must keep E2H = 0 (this hypervisor is nVHE), keep the traps the hypervisor relies
    /// on for isolation, and route physical interrupts as the interrupt code expects. VM and RW
    /// are TLB-cacheable (invariant 9): change them only for a VMID with no live TLB entries.
    pub unsafe fn write(value: u64) -> Pending<HcrAny> {
        // SAFETY: forwarded contract.
        let changed = unsafe { write_raw(SysReg::HcrEl2, value) };
        Pending::new(SysReg::HcrEl2, changed)
    }

    /// Writes HCR_EL2 when only [`HCR_GUEST_ONLY_FIELDS`] differ from the current value (trap
    /// bits, virtual interrupt pending). The token is [`GuestOnly`]: the entry ERET synchronises
    /// it, no ISB (seed 000).
    ///
    /// # Safety
    ///
    /// As for [`HcrEl2::write`].
    ///
    /// # Panics
    ///
    /// In every build, if any other field changes: a hypervisor bug (an E2H/TGE/RW/VM change
    /// carried into the ERET without its ISB). The check costs one MRS per world switch.
    #[inline]
    pub unsafe fn write_traps_only(value: u64) -> Pending<GuestOnly> {
        let old = emit::peek(SysReg::HcrEl2);
        let other = (old ^ value) & !HCR_GUEST_ONLY_FIELDS;
        if other != 0 {
            non_trap_hcr_change(old, value);
        }
        // SAFETY: forwarded contract.
        let changed = unsafe { write_raw(SysReg::HcrEl2, value) };
        Pending::new(SysReg::HcrEl2, changed)
    }
}

#[cold]
#[inline(never)]
fn non_trap_hcr_change(old: u64, value: u64) -> ! {
    panic!(
        "HcrEl2::write_traps_only: non-trap fields {:#x} change ({old:#x} -> {value:#x}); use HcrEl2::write and isb()",
        (old ^ value) & !HCR_GUEST_ONLY_FIELDS
    )
}

// CPTR_EL2 with HCR_EL2.E2H = 0 (this hypervisor is nVHE). `aarch64-cpu` 11.2 defines only TAM
// (bit 30) for CPTR_EL2: neither these trap bits nor the RES1 bits (and E2H = 1 replaces them with
// the CPACR-style FPEN/ZEN/SMEN fields), so the nVHE fields are local.
/// CPTR_EL2.TZ (bit 8, E2H = 0): SVE accesses trap to EL2.
pub const CPTR_EL2_TZ: u64 = 1 << 8;
/// CPTR_EL2.TFP (bit 10, E2H = 0): FP/SIMD accesses trap to EL2.
pub const CPTR_EL2_TFP: u64 = 1 << 10;
/// CPTR_EL2.TSM (bit 12, E2H = 0): SME accesses trap to EL2.
pub const CPTR_EL2_TSM: u64 = 1 << 12;
/// CPTR_EL2 RES1 bits with E2H = 0: 13, 9 and 7..0.
pub const CPTR_EL2_RES1: u64 = (1 << 13) | (1 << 9) | 0xff;

/// CPTR_EL2 (E2H = 0 layout) trap bits for FP/SIMD (TFP), SVE (TZ) and SME (TSM).
pub const CPTR_EL2_FP_TRAPS: u64 = CPTR_EL2_TFP | CPTR_EL2_TZ | CPTR_EL2_TSM;

/// CPTR_EL2. Its layout depends on HCR_EL2.E2H, so writes need a `Synced<El1Names>` proof
/// (invariant 6).
#[derive(Debug)]
pub struct CptrEl2;

impl CptrEl2 {
    /// Writes CPTR_EL2, possibly clearing FP/SVE/SME traps: EL2 FP use then needs an ISB
    /// ([`El2Fp`], invariant 8). The guest side is discharged by the ERET.
    ///
    /// # Safety
    ///
    /// EL2 must not execute FP/SIMD/SVE instructions before the token is synchronised (the
    /// hypervisor is built soft-float; FP state belongs to the guest and is switched lazily), and
    /// traps the hypervisor relies on for lazy FP switching must be set while another vCPU's FP
    /// state is live.
    pub unsafe fn write<K: Includes<El1Names>>(_e2h: &Synced<K>, value: u64) -> Pending<El2Fp> {
        // SAFETY: forwarded contract.
        let changed = unsafe { write_raw(SysReg::CptrEl2, value) };
        Pending::new(SysReg::CptrEl2, changed)
    }

    /// Writes CPTR_EL2 when no FP/SVE/SME trap is cleared (setting traps needs no ISB before the
    /// ERET, ARM-RULES.md section 1). Takes this CPU's proof that FP was enabled, if there is one:
    /// once the traps are set again it is stale, and consuming it makes any later EL2 FP use
    /// through it a compile error.
    ///
    /// # Safety
    ///
    /// As for [`CptrEl2::write`].
    ///
    /// # Panics
    ///
    /// In every build, if a trap in [`CPTR_EL2_FP_TRAPS`] is cleared: a hypervisor bug that would
    /// let a guest use another context's FP registers. The check reads the old value (one MRS on
    /// a path that already switches FP ownership).
    #[inline]
    pub unsafe fn write_setting_traps<K: Includes<El1Names>>(
        _e2h: &Synced<K>,
        fp_on: Option<Synced<El2Fp>>,
        value: u64,
    ) -> Pending<GuestOnly> {
        let _ = fp_on;
        let old = emit::peek(SysReg::CptrEl2);
        let cleared = old & !value & CPTR_EL2_FP_TRAPS;
        if cleared != 0 {
            fp_trap_cleared(cleared);
        }
        // SAFETY: forwarded contract.
        let changed = unsafe { write_raw(SysReg::CptrEl2, value) };
        Pending::new(SysReg::CptrEl2, changed)
    }
}

#[cold]
#[inline(never)]
fn fp_trap_cleared(cleared: u64) -> ! {
    panic!("CptrEl2::write_setting_traps clears FP traps {cleared:#x}; use CptrEl2::write")
}

/// TCR_EL2. Layout depends on HCR_EL2.E2H (proof required, invariant 6); consumer: EL2
/// translation ([`El2Translation`]).
#[derive(Debug)]
pub struct TcrEl2;

impl TcrEl2 {
    /// Writes TCR_EL2.
    ///
    /// # Safety
    ///
    /// The value must describe the tables in TTBR0_EL2 (or the MMU must be off), and `isb()` must
    /// follow before EL2 relies on it; with the MMU on, stale entries need TLBI ALLE2 (TCR_EL2 is
    /// TLB-cacheable).
    pub unsafe fn write<K: Includes<El1Names>>(
        _e2h: &Synced<K>,
        value: u64,
    ) -> Pending<El2Translation> {
        // SAFETY: forwarded contract.
        let changed = unsafe { write_raw(SysReg::TcrEl2, value) };
        Pending::new(SysReg::TcrEl2, changed)
    }
}

/// The VMID field of a VTTBR_EL2 value.
pub const fn vttbr_vmid(vttbr: u64) -> u16 {
    ((vttbr & mask!(VTTBR_EL2::VMID)) >> 48) as u16
}

/// Adds a reader to a GIC register type (needs ICC_SRE_EL2 synchronised).
macro_rules! gic_read {
    ($($name:ident => $reg:ident,)*) => {$(
        impl $name {
            /// Reads the register (needs ICC_SRE_EL2 synchronised).
            pub fn read<K: Includes<GicSre>>(_sre: &Synced<K>) -> u64 {
                emit::mrs(SysReg::$reg)
            }
        }
    )*};
}

macro_rules! gic_reg {
    ($(#[$m:meta])* $name:ident, $reg:ident, $($unsafety:ident)?, safety = $safety:literal) => {
        gic_reg!($(#[$m])* $name, $reg, $($unsafety)?, GuestOnly, safety = $safety);
    };
    ($(#[$m:meta])* $name:ident, $reg:ident, $($unsafety:ident)?, $class:ty, safety = $safety:literal) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name;
        impl $name {
            /// Writes the register (needs ICC_SRE_EL2 synchronised). Only the guest's virtual CPU
            /// interface depends on it; the ERET synchronises it (KVM: no ISB).
            ///
            #[doc = $safety]
            pub $($unsafety)? fn write<K: Includes<GicSre>>(_sre: &Synced<K>, value: u64) -> Pending<$class> {
                // SAFETY: see the writer's contract; the register configures the virtual CPU
                // interface, or the physical one whose EL2 consumers need the class's proof.
                let changed = unsafe { write_raw(SysReg::$reg, value) };
                Pending::new(SysReg::$reg, changed)
            }
        }
    };
}

gic_reg!(
    /// ICH_HCR_EL2: virtual CPU interface control and traps.
    IchHcrEl2, IchHcrEl2, unsafe,
    safety = "# Safety\n\nTraps of the guest's GIC system-register accesses that the hypervisor relies on must stay set."
);
gic_reg!(
    /// ICH_VMCR_EL2: the guest's virtual CPU interface state.
    IchVmcrEl2, IchVmcrEl2, ,
    safety = ""
);
gic_reg!(
    /// ICH_AP0R0_EL2: the guest's group 0 active priorities (saved and restored with the vCPU).
    IchAp0r0El2, IchAp0r0El2, ,
    safety = ""
);
gic_reg!(
    /// ICH_AP1R0_EL2: the guest's group 1 active priorities (saved and restored with the vCPU).
    IchAp1r0El2, IchAp1r0El2, ,
    safety = ""
);

// The virtual CPU interface state the world switch saves and restores.
gic_read! {
    IchVmcrEl2 => IchVmcrEl2,
    IchAp0r0El2 => IchAp0r0El2,
    IchAp1r0El2 => IchAp1r0El2,
}

/// A read-only GIC register: a type with only the `gic_read!` reader.
macro_rules! gic_ro_reg {
    ($(#[$m:meta])* $name:ident, $reg:ident) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name;
        gic_read! { $name => $reg, }
    };
}

gic_ro_reg!(
    /// ICH_VTR_EL2: ListRegs \[4:0\] (number of list registers minus one), PREbits, PRIbits.
    IchVtrEl2, IchVtrEl2
);
gic_ro_reg!(
    /// ICH_ELRSR_EL2: empty list registers (bit per list register).
    IchElrsrEl2, IchElrsrEl2
);

gic_reg!(
    /// ICC_PMR_EL1 at EL2: the physical CPU interface's priority mask. EL2 runs with interrupts
    /// masked (PSTATE.I), so the change matters only once a guest runs: the entry ERET
    /// synchronises it.
    IccPmrEl1, IccPmrEl1, , El2GicIf,
    safety = ""
);
gic_reg!(
    /// ICC_IGRPEN1_EL1 at EL2: enables Group 1 interrupts at the physical CPU interface
    /// (observed, like PMR, from the next guest entry on).
    IccIgrpen1El1, IccIgrpen1El1, , El2GicIf,
    safety = ""
);
gic_reg!(
    /// ICC_CTLR_EL1 at EL2 (EOImode 1 on GICv3: EOIR drops the priority, DIR deactivates).
    IccCtlrEl1, IccCtlrEl1, , El2GicIf,
    safety = ""
);
/// ICC_IAR1_EL1 and ICC_EOIR1_EL1 at EL2: the hypervisor acknowledges and ends the physical
/// interrupts it takes. Both depend on the CPU interface's configuration (group enable, priority
/// mask, EOImode), so both need that configuration synchronised ([`El2GicIf`]) as well as
/// ICC_SRE_EL2 ([`GicSre`]).
#[derive(Debug)]
pub struct IccIar1El1;

impl IccIar1El1 {
    /// Acknowledges the highest-priority pending Group 1 interrupt (1023: none). The read
    /// changes the GIC's state (the interrupt becomes active).
    pub fn read<S: Includes<GicSre>, G: Includes<El2GicIf>>(
        _sre: &Synced<S>,
        _cpu_if: &Synced<G>,
    ) -> u64 {
        emit::mrs(SysReg::IccIar1El1)
    }
}

/// ICC_EOIR1_EL1 at EL2; see [`IccIar1El1`].
#[derive(Debug)]
pub struct IccEoir1El1;

impl IccEoir1El1 {
    /// Ends the interrupt `value` acknowledged. The next interrupt can only be taken after the
    /// ERET (EL2 runs masked), which synchronises the write.
    pub fn write<S: Includes<GicSre>, G: Includes<El2GicIf>>(
        _sre: &Synced<S>,
        _cpu_if: &Synced<G>,
        value: u64,
    ) -> Pending<GuestOnly> {
        // SAFETY: ends an interrupt this CPU acknowledged; no memory is touched.
        let changed = unsafe { write_raw(SysReg::IccEoir1El1, value) };
        Pending::new(SysReg::IccEoir1El1, changed)
    }
}

/// ICC_DIR_EL1 at EL2: with ICC_CTLR_EL1.EOImode = 1 an ICC_EOIR1_EL1 write only drops the
/// running priority and this write deactivates the interrupt (GIC architecture specification IHI
/// 0069, "Priority drop and interrupt deactivation", and the ICC_DIR_EL1 and ICC_CTLR_EL1
/// register descriptions). Like [`IccEoir1El1`], it depends on
/// the CPU interface's configuration, and nothing at EL2 consumes it before the ERET (EL2 runs
/// masked).
#[derive(Debug)]
pub struct IccDirEl1;

impl IccDirEl1 {
    /// Deactivates interrupt `value` (its INTID), whose priority an earlier
    /// [`IccEoir1El1::write`] dropped.
    pub fn write<S: Includes<GicSre>, G: Includes<El2GicIf>>(
        _sre: &Synced<S>,
        _cpu_if: &Synced<G>,
        value: u64,
    ) -> Pending<GuestOnly> {
        // SAFETY: deactivates an interrupt this CPU acknowledged; no memory is touched.
        let changed = unsafe { write_raw(SysReg::IccDirEl1, value) };
        Pending::new(SysReg::IccDirEl1, changed)
    }
}

gic_reg!(
    /// ICC_SGI1R_EL1 at EL2: sends a physical SGI (the hypervisor kicks a CPU running a vCPU
    /// that has new virtual interrupts). The SGI is asynchronous; nothing at EL2 consumes it.
    IccSgi1rEl1, IccSgi1rEl1, ,
    safety = ""
);
el2_reg!(
    /// CNTHP_CTL_EL2: the EL2 physical timer (the hypervisor's time slice). Its interrupt is
    /// taken only from a guest (EL2 runs masked), after the entry ERET.
    CnthpCtlEl2, CnthpCtlEl2, GuestOnly, safe
);
el2_reg!(
    /// CNTHP_CVAL_EL2: the EL2 physical timer's compare value.
    CnthpCvalEl2, CnthpCvalEl2, GuestOnly, safe
);

/// `ICH_LR<n>_EL2`, n in 0..16: list registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IchLrEl2(u8);

impl IchLrEl2 {
    /// List register `n`.
    ///
    /// # Panics
    ///
    /// If `n >= 16`.
    #[inline]
    pub const fn new(n: u8) -> Self {
        assert!(n < 16, "ICH_LR<n>_EL2: n must be < 16");
        IchLrEl2(n)
    }

    /// Reads the list register (needs ICC_SRE_EL2 synchronised).
    pub fn read<K: Includes<GicSre>>(self, _sre: &Synced<K>) -> u64 {
        emit::mrs(SysReg::IchLr(self.0))
    }

    /// Writes the list register; the guest is the only consumer (ERET synchronises it).
    pub fn write<K: Includes<GicSre>>(self, _sre: &Synced<K>, value: u64) -> Pending<GuestOnly> {
        // SAFETY: list registers only hold virtual interrupts presented to the guest.
        let changed = unsafe { write_raw(SysReg::IchLr(self.0), value) };
        Pending::new(SysReg::IchLr(self.0), changed)
    }
}

macro_rules! el1_reg {
    ($($name:ident => $reg:ident,)*) => {$(
        #[doc = concat!("`", stringify!($reg), "`: EL1&0 context the world switch saves and restores. ")]
        #[doc = "Accessed from EL2 through an `*_EL1`/`*_EL0` name, so every access needs HCR_EL2.E2H/TGE "]
        #[doc = "synchronised ([`El1Names`]); writes are [`GuestOnly`] (D8.1.5 I_SFZVV, R_NRJPP: EL2 never "]
        #[doc = "uses EL1&0 registers for its own accesses)."]
        #[derive(Debug)]
        pub struct $name;
        impl $name {

            /// Reads the register.
            pub fn read<K: Includes<El1Names>>(_e2h: &Synced<K>) -> u64 {
                emit::mrs(SysReg::$reg)
            }

            /// Writes the register.
            pub fn write<K: Includes<El1Names>>(_e2h: &Synced<K>, value: u64) -> Pending<GuestOnly> {
                // SAFETY: EL1&0 context only affects the guest (R_NRJPP); E2H redirection is
                // synchronised (proof), so the write reaches the EL1 register.
                let changed = unsafe { write_raw(SysReg::$reg, value) };
                Pending::new(SysReg::$reg, changed)
            }
        }
    )*};
}

el1_reg! {
    SctlrEl1 => SctlrEl1,
    Ttbr0El1 => Ttbr0El1,
    Ttbr1El1 => Ttbr1El1,
    TcrEl1 => TcrEl1,
    MairEl1 => MairEl1,
    AmairEl1 => AmairEl1,
    VbarEl1 => VbarEl1,
    ContextidrEl1 => ContextidrEl1,
    TpidrEl0 => TpidrEl0,
    TpidrroEl0 => TpidrroEl0,
    TpidrEl1 => TpidrEl1,
    SpEl0 => SpEl0,
    SpEl1 => SpEl1,
    ElrEl1 => ElrEl1,
    SpsrEl1 => SpsrEl1,
    EsrEl1 => EsrEl1,
    FarEl1 => FarEl1,
    Afsr0El1 => Afsr0El1,
    Afsr1El1 => Afsr1El1,
    ParEl1 => ParEl1,
    CntkctlEl1 => CntkctlEl1,
    CpacrEl1 => CpacrEl1,
    CntvCtlEl0 => CntvCtlEl0,
    CntvCvalEl0 => CntvCvalEl0,
    CntpCtlEl0 => CntpCtlEl0,
    CntpCvalEl0 => CntpCvalEl0,
    CsselrEl1 => CsselrEl1,
}

el2_reg!(
    /// VDISR_EL2 (FEAT_RAS): with HCR_EL2.AMO = 1 (always, here) it is the DISR_EL1 the host and
    /// the guests read and write, so the world switch saves and restores it with the EL1
    /// context. Only the lower ELs read it (ESB, DISR_EL1).
    VdisrEl2, VdisrEl2, GuestOnly, safe
);

impl VdisrEl2 {
    /// Reads the register (FEAT_RAS only: the caller checks ID_AA64PFR0_EL1.RAS).
    #[inline]
    pub fn read() -> u64 {
        emit::mrs(SysReg::VdisrEl2)
    }
}

el2_reg!(
    /// HFGRTR_EL2 (FEAT_FGT): fine-grained read traps of EL1/EL0 registers. Its `n*` bits trap
    /// when clear (the registers of later features: TPIDR2_EL0, ACCDATA_EL1, PIR/PIRE0, POR,
    /// MAIR2/AMAIR2, GCS, RCWMASK, SMPRI), so 0 traps every one of them and nothing else.
    HfgrtrEl2, HfgrtrEl2, GuestOnly,
    safety = "The fine-grained traps the hypervisor relies on (the `n*` bits clear) must stay in place for every context that must not reach those registers."
);
el2_reg!(
    /// HFGWTR_EL2 (FEAT_FGT): fine-grained write traps; see [`HfgrtrEl2`].
    HfgwtrEl2, HfgwtrEl2, GuestOnly,
    safety = "As for [`HfgrtrEl2::write`]."
);
el2_reg!(
    /// HFGITR_EL2 (FEAT_FGT): fine-grained instruction traps (0: only the `n*` ones, BRBE).
    HfgitrEl2, HfgitrEl2, GuestOnly,
    safety = "As for [`HfgrtrEl2::write`]."
);
el2_reg!(
    /// HDFGRTR_EL2 (FEAT_FGT): fine-grained debug/PMU read traps (0: only the `n*` ones).
    HdfgrtrEl2, HdfgrtrEl2, GuestOnly,
    safety = "As for [`HfgrtrEl2::write`]."
);
el2_reg!(
    /// HDFGWTR_EL2 (FEAT_FGT): fine-grained debug/PMU write traps (0: only the `n*` ones).
    HdfgwtrEl2, HdfgwtrEl2, GuestOnly,
    safety = "As for [`HfgrtrEl2::write`]."
);
el2_reg!(
    /// HCRX_EL2 (FEAT_HCX): its enables are 0 = trapped or UNDEFINED at EL1/EL0 (TCR2En,
    /// SCTLR2En, EnFPM, GCSEn, MSCEn, EnAS0/EnALS/EnASR, ...).
    HcrxEl2, HcrxEl2, GuestOnly,
    safety = "Enables the hypervisor relies on being clear (the registers and instructions of features it does not switch) must stay clear."
);

el2_reg!(
    /// CPUACTLR_EL1 of Cortex-A57/A72 (IMPLEMENTATION DEFINED; S3_1_C15_C2_0): chicken bits
    /// that change how the core speculates, for every EL. Consumer: everything after it
    /// ([`El2Translation`]); ISB at once.
    CpuactlrEl1, CpuactlrEl1, El2Translation,
    safety = "Only on the core whose TRM defines the bits written (MIDR checked), with EL3 having granted access (ACTLR_EL3.CPUACTLR_EL1 = 1), and followed by `isb()`."
);

/// MDSCR_EL1, and why a write of a self-hosted debug register from EL2 is safe: with MDCR_EL2.TDE = 0 and
/// HCR_EL2.TGE = 0 (always, here) the debug target is EL1 (`DebugTargetFrom()`, Arm ARM shared
/// pseudocode "shared/debug/DebugTarget"), and `AArch64.GenerateDebugExceptionsFrom()` generates
/// no breakpoint, watchpoint or software-step exception from an Exception level above the debug
/// target: none is ever taken at EL2, whatever the registers hold (DBGBCR<n>.HMC included). The
/// registers hold only EL1&0 debug state; the entry ERET synchronises them ([`GuestOnly`]).
///
/// MDSCR_EL1 itself holds the lower ELs' self-hosted debug controls (MDE, KDE, SS, TDCC). It is
/// not redirected by HCR_EL2.E2H (no `_EL12` alias), so no proof is needed.
#[derive(Debug)]
pub struct MdscrEl1;

impl MdscrEl1 {
    /// Reads the register.
    pub fn read() -> u64 {
        emit::mrs(SysReg::MdscrEl1)
    }

    /// Writes the register (guest-only: the debug target is EL1).
    pub fn write(value: u64) -> Pending<GuestOnly> {
        // SAFETY: EL1&0 debug state only; no debug exception is generated at EL2 (see [`MdscrEl1`]).
        let changed = unsafe { write_raw(SysReg::MdscrEl1, value) };
        Pending::new(SysReg::MdscrEl1, changed)
    }
}

/// OSLAR_EL1: writing 0 unlocks the OS lock, which resets to locked on a cold reset (Arm ARM
/// D24.3 OSLSR_EL1.OSLK) and, while locked, disables breakpoint, watchpoint and software-step
/// exceptions for the lower ELs.
#[derive(Debug)]
pub struct OslarEl1;

impl OslarEl1 {
    /// Writes the register (guest-only: the OS lock gates only EL1&0 debug exceptions here).
    pub fn write(value: u64) -> Pending<GuestOnly> {
        // SAFETY: as for `MdscrEl1::write`.
        let changed = unsafe { write_raw(SysReg::OslarEl1, value) };
        Pending::new(SysReg::OslarEl1, changed)
    }
}

/// Which bank of self-hosted debug registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbgKind {
    /// DBGBVR<n>_EL1: breakpoint value.
    Bvr,
    /// DBGBCR<n>_EL1: breakpoint control.
    Bcr,
    /// DBGWVR<n>_EL1: watchpoint value.
    Wvr,
    /// DBGWCR<n>_EL1: watchpoint control.
    Wcr,
}

/// One breakpoint or watchpoint register, `DBG{B,W}{V,C}R<n>_EL1`, n in 0..16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbgReg(SysReg);

impl DbgReg {
    /// Register `n` of bank `kind`.
    ///
    /// # Panics
    ///
    /// If `n >= 16`.
    pub const fn new(kind: DbgKind, n: u8) -> Self {
        assert!(n < 16, "debug registers: n must be < 16");
        DbgReg(match kind {
            DbgKind::Bvr => SysReg::DbgBvr(n),
            DbgKind::Bcr => SysReg::DbgBcr(n),
            DbgKind::Wvr => SysReg::DbgWvr(n),
            DbgKind::Wcr => SysReg::DbgWcr(n),
        })
    }

    /// Reads the register.
    pub fn read(self) -> u64 {
        emit::mrs(self.0)
    }

    /// Writes the register (guest-only: the debug target is EL1).
    pub fn write(self, value: u64) -> Pending<GuestOnly> {
        // SAFETY: as for `MdscrEl1::write`.
        let changed = unsafe { write_raw(self.0, value) };
        Pending::new(self.0, changed)
    }
}

/// TPIDR_EL2: the hypervisor's per-CPU pointer, read by the exit vectors.
///
/// Returns no token. Its only consumers are `MRS TPIDR_EL2` instructions, which
/// are direct reads. An MSR followed by an MRS of the same encoding needs no
/// synchronisation (Arm ARM D24.1.2.2).
#[derive(Debug)]
pub struct TpidrEl2;

impl TpidrEl2 {
    /// Writes the register.
    ///
    /// # Safety
    ///
    /// `value` must point at this CPU's per-CPU block, which the exit vectors
    /// dereference, and the block must live as long as guests can exit.
    pub unsafe fn write(value: u64) {
        // SAFETY: forwarded contract.
        let _ = unsafe { write_raw(SysReg::TpidrEl2, value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local CPTR_EL2 (E2H = 0) fields are the bits the hand-written masks had.
    #[test]
    fn cptr_el2_nvhe_fields() {
        assert_eq!(CPTR_EL2_FP_TRAPS, (1 << 10) | (1 << 8) | (1 << 12));
        assert_eq!(CPTR_EL2_RES1 | CPTR_EL2_TZ | CPTR_EL2_TSM, 0x33ff);
    }
}
