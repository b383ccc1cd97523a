//! Cache and TLB maintenance outside page-table batches, each with its
//! consumer named (STYLE.md convention 4).

use crate::insn::{emit, DsbKind, Tlbi};

/// Cleans and invalidates `[va, va + len)` to the point of coherency, then
/// `DSB SY`.
///
/// Consumer: an observer that does not look through the data cache, which here
/// means a guest running with its MMU or caches off (its accesses are
/// non-cacheable). Without FEAT_S2FWB, memory the hypervisor wrote through a
/// cacheable alias (a loaded image, zeroes) must reach PoC before such a guest
/// reads it (ARM-RULES.md section 3; Arm ARM D7.5.9 "Data cache maintenance").
/// The DSB completes the maintenance before the ERET that lets the guest run.
pub fn clean_inval_to_poc(va: u64, len: u64) {
    dc_civac_range(va, len);
    emit::dsb(DsbKind::Sy);
}

/// Zeroes `[va, va + len)` and cleans it to the point of coherency, then
/// `DSB SY`: a destroyed VM's page before anyone else may map it.
///
/// Zeroing uses `DC ZVA` (one instruction per block, 64 bytes on the CPUs
/// here) where DCZID_EL0 permits it and the range is block-aligned, else
/// ordinary stores. Consumer of the clean: as [`clean_inval_to_poc`], the
/// next owner may read the range with its caches off, and must see zeroes,
/// not the old owner's data still in memory (Arm ARM D7.5.9; `DC ZVA` is a
/// data write like any other, so its zeroes are cleaned the same way).
///
/// # Safety
///
/// `[va, va + len)` is Normal memory mapped writable at this EL that nobody
/// else uses while this runs.
pub unsafe fn scrub_to_poc(va: u64, len: u64) {
    match emit::zva_block() {
        Some(b) if va.is_multiple_of(b) && len.is_multiple_of(b) => {
            let mut a = va;
            while a < va + len {
                // SAFETY: the caller's contract; `a` starts a whole block of
                // the range (both ends are block-aligned).
                unsafe { emit::dc_zva(a) };
                a += b;
            }
        }
        // SAFETY: the caller's contract.
        _ => unsafe { core::ptr::write_bytes(va as *mut u8, 0, len as usize) },
    }
    clean_inval_to_poc(va, len);
}

/// `DC CIVAC` on every data-cache line that `[va, va + len)` touches, without a barrier; returns
/// how many. The one clean-to-PoC loop: [`clean_inval_to_poc`] and `PtBatch::clean_to_poc` add
/// their own DSBs.
pub(crate) fn dc_civac_range(va: u64, len: u64) -> u32 {
    let line = emit::dcache_line();
    let mut a = va & !(line - 1);
    let mut lines = 0;
    while a < va + len {
        emit::dc_civac(a);
        lines += 1;
        a += line;
    }
    lines
}

/// Invalidates all instruction caches of the Inner Shareable domain to the point of
/// unification (`IC IALLUIS`), then `DSB ISH`.
///
/// Consumer: a guest that will execute code written through a data-side alias: an image the host
/// gave (after the give's clean to PoC), or guest memory after a VM-wide clean on a cache toggle.
/// Inner-shareable because the guest's vCPUs may run on any CPU. The `DSB ISH` completes the
/// invalidation; no ISB is needed because the ERET into the guest is the context synchronisation
/// event that discards already fetched instructions.
// Arm ARM D7.5.9 "Instruction cache maintenance" (IC IALLUIS, completed by DSB); ERET is a CSE.
pub fn invalidate_icache_all_is() {
    emit::ic_ialluis();
    emit::dsb(DsbKind::Ish);
}

/// Invalidates every EL2 translation cached by this PE, and waits for it.
///
/// Consumer: EL2's first translated access after it turns its MMU on. Firmware
/// may leave EL2 TLB entries behind, and nothing but a TLBI removes them
/// (Arm ARM D8.16). The `DSB ISH` completes the TLBI. The caller's ISB after
/// its SCTLR_EL2 write orders the first translated fetch.
pub fn flush_el2_tlb_before_mmu_on() {
    emit::tlbi(Tlbi::Alle2);
    emit::dsb(DsbKind::Ish);
}

/// Orders memory against a device that reads or writes it by DMA (an SMMU's stream table and
/// queues): `DSB SY`. Before the MMIO write that tells the device to look, earlier stores to the
/// memory are complete (Linux's `dma_wmb()` before `writel()`); after the MMIO read that says the
/// device wrote, later loads of the memory see it (`dma_rmb()`). Consumer: the device.
pub fn device_memory_barrier() {
    emit::dsb(DsbKind::Sy);
}

/// Makes this CPU's earlier stores visible to other CPUs, then wakes every CPU
/// waiting in WFE.
///
/// Consumer: a CPU that wakes and re-reads the state it waits on. SEV is not
/// ordered after earlier stores, so without the `DSB ISH` a waiter could wake,
/// see the old value and sleep again with no event left to wake it (Arm ARM
/// D1.6.1, "Wait for Event mechanism").
pub fn publish_and_wake() {
    emit::dsb(DsbKind::Ish);
    #[cfg(all(barriers_hw, not(test)))]
    // SAFETY: SEV only sets the event register of every PE.
    unsafe {
        core::arch::asm!("sev", options(nomem, nostack, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::Insn;
    use crate::trace;

    #[test]
    fn icache_invalidation_is_inner_shareable_and_completed() {
        trace::reset();
        invalidate_icache_all_is();
        assert_eq!(
            trace::take(),
            [Insn::IcIalluis, Insn::Dsb(DsbKind::Ish)].to_vec()
        );
    }

    #[test]
    fn clean_to_poc_covers_every_line_then_dsb() {
        trace::reset();
        clean_inval_to_poc(0x1030, 0x50);
        assert_eq!(
            trace::take(),
            [
                Insn::DcCivac { va: 0x1000 },
                Insn::DcCivac { va: 0x1040 },
                Insn::Dsb(DsbKind::Sy),
            ]
            .to_vec()
        );
    }
}
