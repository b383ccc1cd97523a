//! Raw EL2 register access used during bring-up.
//!
//! TRANSITIONAL: every write here moves to the `barriers` crate's typed
//! writes (issue 3, item 8), whose tidy test rejects this file until then.

use core::arch::asm;

macro_rules! read_sysreg {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Reads ", $reg, ".")]
        #[inline(always)]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading this register has no side effects.
            unsafe { asm!(concat!("mrs {0}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! write_sysreg {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Writes ", $reg, ".")]
        ///
        /// # Safety
        ///
        /// The caller synchronises the write before anything that depends on it.
        #[inline(always)]
        pub unsafe fn $name(v: u64) {
            // SAFETY: per the caller's contract.
            unsafe { asm!(concat!("msr ", $reg, ", {0}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
        }
    };
}

read_sysreg!(current_el, "currentel");
read_sysreg!(esr_el2, "esr_el2");
read_sysreg!(far_el2, "far_el2");
read_sysreg!(hpfar_el2, "hpfar_el2");
read_sysreg!(mpidr_el1, "mpidr_el1");
read_sysreg!(sctlr_el2, "sctlr_el2");
read_sysreg!(id_aa64mmfr0_el1, "id_aa64mmfr0_el1");
read_sysreg!(id_aa64mmfr2_el1, "id_aa64mmfr2_el1");
read_sysreg!(cntpct_el0, "cntpct_el0");

write_sysreg!(write_hcr_el2, "hcr_el2");
write_sysreg!(write_vttbr_el2, "vttbr_el2");
write_sysreg!(write_vtcr_el2, "vtcr_el2");
write_sysreg!(write_vbar_el2, "vbar_el2");
write_sysreg!(write_sctlr_el2, "sctlr_el2");
write_sysreg!(write_tcr_el2, "tcr_el2");
write_sysreg!(write_ttbr0_el2, "ttbr0_el2");
write_sysreg!(write_mair_el2, "mair_el2");
write_sysreg!(write_cptr_el2, "cptr_el2");
write_sysreg!(write_cnthctl_el2, "cnthctl_el2");
write_sysreg!(write_cntvoff_el2, "cntvoff_el2");
write_sysreg!(write_vmpidr_el2, "vmpidr_el2");
write_sysreg!(write_vpidr_el2, "vpidr_el2");
write_sysreg!(write_tpidr_el2, "tpidr_el2");

/// Instruction synchronisation barrier.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no memory-safety preconditions.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Full-system DSB.
#[inline(always)]
pub fn dsb_sy() {
    // SAFETY: a barrier has no memory-safety preconditions.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidate all EL2 TLB entries, inner shareable.
#[inline(always)]
pub fn tlbi_alle2is() {
    // SAFETY: TLB invalidation only removes cached translations.
    unsafe { asm!("tlbi alle2is", options(nostack, preserves_flags)) };
}

/// Invalidate all stage-1 and stage-2 EL1&0 TLB entries, inner shareable.
#[inline(always)]
pub fn tlbi_alle1is() {
    // SAFETY: TLB invalidation only removes cached translations.
    unsafe { asm!("tlbi alle1is", options(nostack, preserves_flags)) };
}

/// Clean and invalidate a range to the point of coherency, by VA.
pub fn dc_civac_range(start: u64, len: u64) {
    let mut a = start & !63;
    while a < start + len {
        // SAFETY: cache maintenance on mapped memory does not change its contents.
        unsafe { asm!("dc civac, {0}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    dsb_sy();
}

/// Wait for event.
#[inline(always)]
pub fn wfe() {
    // SAFETY: WFE only pauses the CPU.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// Send event (after a DSB so the woken CPUs see prior stores).
#[inline(always)]
pub fn dsb_sev() {
    // SAFETY: barriers and SEV have no memory-safety preconditions.
    unsafe { asm!("dsb ish", "sev", options(nostack, preserves_flags)) };
}
