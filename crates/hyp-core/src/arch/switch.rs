//! The system-register sequences of a CPU: EL2 bring-up, loading a context
//! (the host's or a vCPU's) for the world switch, the lazy FP traps, and the
//! VM-wide clean of a cache toggle.
//!
//! These are the only register effects of the world switch outside its
//! assembly, and they are built on the host as well: there `barriers`
//! records every instruction, so `tests/barrier_paths.rs` runs the real
//! sequences and checks their traces (0 needless ISBs, 0 missing, 0 TLBIs
//! under a wrong VMID). `arch::mmu`, `boot` and `vm` call them on the CPU.
//!
//! EL1&0 registers written at EL2 need no synchronisation until the ERET
//! that enters the guest (Arm ARM D8.1.5 I_SFZVV; R_NRJPP: EL2 never uses
//! EL1&0 registers for its own accesses), so a context load issues no ISB:
//! its writes go into a [`GuestPending`] that `barriers::enter_guest`
//! discharges.

use aarch64_cpu::registers::{ICC_SRE_EL2, SCTLR_EL2};
use barriers::regs;
use barriers::sync::{El1Names, El2Fp, EosChecked, GicSre, HcrAny, Includes, Synced};
use barriers::vttbr::Vttbr;
use barriers::{isb, GuestPending};
use core::sync::atomic::{AtomicBool, Ordering};

/// What a CPU holds once its EL2 context is up: proof that HCR_EL2 (E2H,
/// TGE) is synchronised, which `*_EL1`-named accesses need, and proof that
/// exception entry and ERET are context synchronisation events.
#[derive(Debug)]
pub struct CpuSync {
    /// HCR_EL2 synchronised (E2H = TGE = 0 from here on).
    pub hcr: Synced<HcrAny>,
    /// SCTLR_EL2.EIS = EOS = 1, checked.
    pub eos: EosChecked,
    /// ICC_SRE_EL2.SRE = 1 synchronised (GICv3 boards only).
    pub gic: Option<Synced<GicSre>>,
    /// This CPU's list registers (ICH_VTR_EL2.ListRegs + 1, read once here
    /// rather than at every list-register access); 0 on GICv2 boards, whose
    /// backend reads GICH_VTR.
    pub nr_lrs: usize,
    /// The vGIC control bits this CPU's ICH_HCR_EL2 / GICH_HCR holds, as
    /// last written through `vcpu::gic::Lrs` (every write of it goes
    /// there: the guests' flushes and saves and the host's interface alike),
    /// or [`HCR_UNKNOWN`] since this CPU came up: an entry that would
    /// write the value already there skips the write.
    pub vgic_hcr: core::cell::Cell<u32>,
}

/// [`CpuSync::vgic_hcr`] before the first write: no value the vGIC writes.
pub const HCR_UNKNOWN: u32 = u32::MAX;

/// The EL2 registers one CPU's bring-up writes.
#[derive(Debug, Clone, Copy)]
pub struct El2Regs {
    /// HCR_EL2: the guests' value, written once and never changed while at EL2.
    pub hcr: u64,
    /// MAIR_EL2.
    pub mair: u64,
    /// TCR_EL2.
    pub tcr: u64,
    /// TTBR0_EL2.
    pub ttbr0: u64,
    /// SCTLR_EL2 with the MMU and caches on (EIS = EOS = 1).
    pub sctlr: u64,
    /// VBAR_EL2.
    pub vectors: u64,
    /// TPIDR_EL2: this CPU's per-CPU block.
    pub tpidr: u64,
    /// A GICv3 CPU interface exists (ICC_SRE_EL2 is defined).
    pub gic_v3: bool,
    /// FEAT_RAS is implemented: VDISR_EL2 exists and is switched with the
    /// EL1 context.
    pub ras: bool,
}

// SCTLR_EL2 with HCR_EL2.E2H = 0. `aarch64-cpu` 11.2 defines the fields this
// hypervisor sets (M, C, I, SA, EOS, EIS) but none of the RES1 bits, which
// are EL1&0 controls (SA0, CP15BEN, nTWI, nTWE, SPAN, nTLSMD, LSMAOE) that
// only the E2H = 1 layout gives a meaning: they stay a local mask.
/// SCTLR_EL2 RES1 bits (E2H = 0): 29, 28, 23, 18, 16, 5, 4.
const SCTLR_EL2_RES1: u64 =
    (1 << 29) | (1 << 28) | (1 << 23) | (1 << 18) | (1 << 16) | (1 << 5) | (1 << 4);

/// SCTLR_EL2 once EL2 runs: MMU (M), data and instruction caches (C, I) and
/// SP alignment checks (SA) on, exception entry and return context
/// synchronising (EIS, EOS), little-endian, RES1 bits set.
pub const SCTLR_EL2_ON: u64 = SCTLR_EL2_RES1
    | SCTLR_EL2::M::Enable.value
    | SCTLR_EL2::C::Cacheable.value
    | SCTLR_EL2::SA::Enable.value
    | SCTLR_EL2::EOS::IsSynch.value
    | SCTLR_EL2::I::Cacheable.value
    | SCTLR_EL2::EIS::IsSynch.value;

/// ICC_SRE_EL2 once EL2 runs: SRE (system-register CPU interface at EL2)
/// and Enable (EL1 may use ICC_SRE_EL1).
pub const ICC_SRE_EL2_ON: u64 = ICC_SRE_EL2::SRE::SET.value | ICC_SRE_EL2::ENABLE::SET.value;

/// Turns this CPU's EL2 context on: HCR_EL2, the EL2 translation regime and
/// MMU, VBAR_EL2, TPIDR_EL2, ICC_SRE_EL2 (ARM-RULES.md section 1: TTBR0, MAIR,
/// TCR, ISB, SCTLR, ISB).
///
/// # Safety
///
/// The MMU is off; `r.ttbr0` maps all of RAM (this code, stacks, the tables)
/// by identity with the attributes in `r.mair`; `r.vectors` is the vector
/// table; `r.tpidr` points at this CPU's per-CPU block, live forever;
/// `r.hcr` keeps E2H = TGE = 0.
pub unsafe fn el2_on(r: El2Regs) -> CpuSync {
    FEAT_RAS.store(r.ras, Ordering::Relaxed);
    // SAFETY: E2H = TGE = 0 (nVHE) and only guest traps and routing; EL2 is
    // not yet translating anything the change could affect.
    let hcr_token = unsafe { regs::HcrEl2::write(r.hcr) };
    // ISB: the TCR_EL2 layout below depends on E2H (invariant 6).
    let hcr = isb(hcr_token);
    // SAFETY: the MMU is still off; the contract's identity map.
    let translation = unsafe {
        (
            regs::MairEl2::write(r.mair),
            regs::TcrEl2::write(&hcr, r.tcr),
            regs::Ttbr0El2::write(r.ttbr0),
        )
    };
    // ISB: the translation turned on below uses MAIR/TCR/TTBR0_EL2.
    let _ = isb(translation);
    barriers::maint::flush_el2_tlb_before_mmu_on();
    // SAFETY: identity map, caches on, EIS/EOS set; VBAR_EL2 and TPIDR_EL2
    // per the contract.
    let (sctlr, vbar) = unsafe {
        regs::TpidrEl2::write(r.tpidr);
        (
            regs::SctlrEl2::write(r.sctlr),
            regs::VbarEl2::write(r.vectors),
        )
    };
    // ISB: every following EL2 access depends on SCTLR_EL2.M/C; exceptions
    // taken at EL2 from here on use VBAR_EL2.
    let (mmu_on, _) = isb((sctlr, vbar));
    barriers::sync::uses::el2_memory(&mmu_on);
    // ICC_SRE_EL2 ([`ICC_SRE_EL2_ON`]). Only where a GICv3 CPU interface
    // exists: on a GICv2 system the register is UNDEFINED.
    let gic = r.gic_v3.then(|| {
        // SAFETY: SRE = 1; EL1 gets the system register interface (its
        // accesses go to the virtual interface).
        isb(unsafe { regs::IccSreEl2::write(ICC_SRE_EL2_ON) })
    });
    let nr_lrs = gic.as_ref().map_or(0, vgic::V3Sysregs::count);
    CpuSync {
        hcr,
        eos: barriers::sync::check_eos(),
        gic,
        nr_lrs,
        vgic_hcr: core::cell::Cell::new(HCR_UNKNOWN),
    }
}

macro_rules! el1_context {
    ($($field:ident => $reg:ident),* $(,)?) => {
        /// A vCPU's EL1&0 system-register context.
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct El1Context {
            $(#[doc = stringify!($reg)] pub $field: u64,)*
            /// VDISR_EL2 (FEAT_RAS only): the DISR_EL1 this context reads and writes, since
            /// HCR_EL2.AMO = 1 redirects DISR_EL1 to it.
            pub vdisr: u64,
        }

        impl El1Context {
            /// All registers zero.
            pub const ZERO: Self = Self { $($field: 0,)* vdisr: 0 };

            /// Saves this CPU's EL1 context after a guest exit. The reads use
            /// `*_EL1` names, so they need HCR_EL2.E2H synchronised (`e2h`).
            #[inline(always)]
            pub fn save<K: Includes<El1Names>>(&mut self, e2h: &Synced<K>) {
                $(self.$field = regs::$reg::read(e2h);)*
                if FEAT_RAS.load(Ordering::Relaxed) {
                    self.vdisr = regs::VdisrEl2::read();
                }
            }

            /// Loads this context into the CPU's EL1 registers. The writes are
            /// guest-only (I_SFZVV), so they go into `pending` for the ERET.
            #[inline(always)]
            pub fn restore<K: Includes<El1Names>>(&self, e2h: &Synced<K>, pending: &mut GuestPending) {
                $(pending.add(regs::$reg::write(e2h, self.$field));)*
                if FEAT_RAS.load(Ordering::Relaxed) {
                    pending.add(regs::VdisrEl2::write(self.vdisr));
                }
            }
        }
    };
}

el1_context! {
    sctlr => SctlrEl1,
    ttbr0 => Ttbr0El1,
    ttbr1 => Ttbr1El1,
    tcr => TcrEl1,
    mair => MairEl1,
    amair => AmairEl1,
    vbar => VbarEl1,
    contextidr => ContextidrEl1,
    tpidr_el0 => TpidrEl0,
    tpidrro_el0 => TpidrroEl0,
    tpidr_el1 => TpidrEl1,
    sp_el0 => SpEl0,
    sp_el1 => SpEl1,
    elr => ElrEl1,
    spsr => SpsrEl1,
    esr => EsrEl1,
    far => FarEl1,
    afsr0 => Afsr0El1,
    afsr1 => Afsr1El1,
    par => ParEl1,
    cntkctl => CntkctlEl1,
    cpacr => CpacrEl1,
    cntv_ctl => CntvCtlEl0,
    cntv_cval => CntvCvalEl0,
    csselr => CsselrEl1,
}

/// FEAT_RAS is implemented (ID_AA64PFR0_EL1.RAS != 0), so VDISR_EL2 exists and
/// is part of every context ([`El1Context::vdisr`]). Set by [`el2_on`]; the
/// same on every CPU.
static FEAT_RAS: AtomicBool = AtomicBool::new(false);

// A literal: `aarch64-cpu` 11.2 has no SCTLR_EL1 field for any of these RES1
// bits (LSMAOE, nTLSMD, SPAN, EIS, TSCXT, EOS); the fields it has are clear.
/// SCTLR_EL1 at vCPU reset: MMU and caches off, RES1 bits set (Arm ARM
/// D24.2.161: bits 29, 28, 23, 22, 20, 11 are RES1 without the later features).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

impl El1Context {
    /// The architectural reset state a vCPU starts in.
    pub const RESET: Self = {
        let mut z = Self::ZERO;
        z.sctlr = SCTLR_EL1_RESET;
        z
    };
}

/// The EL2 registers that select which context runs next.
#[derive(Debug, Clone, Copy)]
pub struct ContextRegs {
    /// VTTBR_EL2: its stage 2 and VMID.
    pub vttbr: u64,
    /// HCR_EL2: differs from the boot value in trap bits only.
    pub hcr: u64,
    /// VMPIDR_EL2: the MPIDR_EL1 it reads.
    pub vmpidr: u64,
}

/// Loads a context (the host's or a vCPU's): its stage 2, traps, MPIDR and
/// EL1 registers. Every write is for the context only: the tokens go into
/// `pending`, and the entry ERET synchronises them (seed 000: no ISB).
///
/// # Safety
///
/// `r.vttbr`'s table maps only memory the context may access; `r.hcr` keeps
/// every non-trap field of the boot value.
#[inline(always)]
pub unsafe fn load_context(
    vttbr: &mut Vttbr,
    sync: &CpuSync,
    r: ContextRegs,
    el1: &El1Context,
    pending: &mut GuestPending,
) {
    // SAFETY: the contract.
    unsafe {
        pending.add(vttbr.load(r.vttbr));
        pending.add(regs::HcrEl2::write_traps_only(r.hcr));
    }
    pending.add(regs::VmpidrEl2::write(r.vmpidr));
    el1.restore(&sync.hcr, pending);
}

/// Sets the CPTR_EL2 FP/SIMD traps for a context that does not own the FP
/// registers (`trapped`: CPTR_EL2 with them set). The write consumes the
/// proof that EL2 could use FP, if there was one.
pub fn trap_fp(
    sync: &CpuSync,
    fp_on: &mut Option<Synced<El2Fp>>,
    trapped: u64,
    pending: &mut GuestPending,
) {
    let proof = fp_on.take();
    // SAFETY: only sets traps (they may already be set).
    pending.add(unsafe { regs::CptrEl2::write_setting_traps(&sync.hcr, proof, trapped) });
}

/// Clears the CPTR_EL2 FP/SIMD traps (`on`: CPTR_EL2 without them) and
/// synchronises the write, so EL2 may save and load FP state; no ISB if
/// they are clear already (`fp_on` holds the proof).
pub fn enable_fp<'a>(
    sync: &CpuSync,
    fp_on: &'a mut Option<Synced<El2Fp>>,
    on: u64,
) -> &'a Synced<El2Fp> {
    fp_on.get_or_insert_with(|| {
        // SAFETY: FP/SIMD is switched lazily by the world switch; the
        // hypervisor's own code never uses it (soft-float target).
        let t = unsafe { regs::CptrEl2::write(&sync.hcr, on) };
        isb(t)
    })
}

/// Clears the CPTR_EL2 FP/SIMD and SVE traps (`on`: CPTR_EL2 without TFP
/// and TZ), sets ZCR_EL2 to `zcr` if given (the running VM's vector-length
/// cap; `None` when this CPU's ZCR_EL2 holds it already) and synchronises
/// the writes, so EL2 may save and load SVE state at that length. Always
/// writes CPTR_EL2: it may be clear of TFP only (`fp_on` then holds a proof
/// for FP/SIMD, not for SVE), and this path runs only for guests that use
/// SVE.
///
/// # Safety
///
/// The CPU implements FEAT_SVE.
pub unsafe fn enable_sve<'a>(
    sync: &CpuSync,
    fp_on: &'a mut Option<Synced<El2Fp>>,
    on: u64,
    zcr: Option<u64>,
) -> &'a Synced<El2Fp> {
    let proof = match zcr {
        Some(zcr) => {
            // SAFETY: FP/SIMD and SVE are switched lazily by the world
            // switch; the hypervisor's own code never uses them (soft-float
            // target). ZCR_EL2: the caller's contract; every guest SVE state
            // is stored at its VM's length, which `zcr` sets.
            let t = unsafe {
                (
                    regs::CptrEl2::write(&sync.hcr, on),
                    regs::ZcrEl2::write(zcr),
                )
            };
            isb(t).0
        }
        // SAFETY: as above; ZCR_EL2 already holds the VM's length.
        None => isb(unsafe { regs::CptrEl2::write(&sync.hcr, on) }),
    };
    fp_on.insert(proof)
}

/// The maintenance of a VM-wide cache toggle (seed 003, ARM-RULES.md section
/// 3): clean and invalidate each of the VM's memory regions `(pa, len)` to
/// PoC, then invalidate the instruction caches of every CPU.
///
/// It works in steps of [`CLEAN_STEP`] bytes and calls `between` after each
/// one, where the caller may let other work run.
pub fn clean_vm(regions: impl Iterator<Item = (u64, u64)>, mut between: impl FnMut()) {
    for (pa, len) in regions {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(CLEAN_STEP);
            barriers::maint::clean_inval_to_poc(pa + off, n);
            off += n;
            if off < len {
                between();
            }
        }
    }
    barriers::maint::invalidate_icache_all_is();
}

/// Bytes [`clean_vm`] cleans between two calls of its `between` (1 MiB:
/// about 0.2 ms of DC CIVACs).
pub const CLEAN_STEP: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use aarch64_cpu::registers::SCTLR_EL1;

    /// The values built from `aarch64-cpu` fields are bit-for-bit the
    /// hand-written ones they replace.
    #[test]
    fn register_values_unchanged() {
        assert_eq!(SCTLR_EL2_ON, 0x30c5_0838 | 1 | (1 << 2) | (1 << 12));
        // RES1 | EIS | EOS is the MMU-off value the rpi4 entry code writes
        // (platform-rpi4 entry.S, SCTLR_EL2_OFF).
        assert_eq!(
            SCTLR_EL2_RES1 | SCTLR_EL2::EIS::IsSynch.value | SCTLR_EL2::EOS::IsSynch.value,
            0x30c5_0830
        );
        assert_eq!(ICC_SRE_EL2_ON, 0b1001);
        let on = SCTLR_EL1::M::Enable.value | SCTLR_EL1::C::Cacheable.value;
        assert_eq!(SCTLR_EL1_RESET & (on | SCTLR_EL1::I::Cacheable.value), 0);
    }
}
