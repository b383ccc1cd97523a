//! The hypervisor's own EL2 stage-1 translation and per-CPU EL2 bring-up:
//! an identity map of the board's RAM (normal write-back) and devices
//! (Device-nGnRE) built with `s2mm`'s EL2 regime, the same walker as stage 2.

use super::switch::SCTLR_EL2_ON;
use super::{sysreg, tables};
use crate::platform::Platform;
use aarch64_cpu::registers::ID_AA64MMFR0_EL1;
use s2mm::desc::El2Format;
use s2mm::{Attrs, El2Stage1, MemType, Pa, Perms};
use spin::Once;

/// EL2 virtual address size: 39 bits, three levels from level 1.
const VA_BITS: u32 = 39;

/// TTBR0_EL2 and TCR_EL2 for every CPU, set by `build`.
static EL2_REGS: Once<(u64, u64)> = Once::new();

unsafe extern "C" {
    /// First byte of the image and end of its text, from the board's linker script.
    static __image_start: u8;
    static __text_end: u8;
}

/// Builds the hypervisor's EL2 stage-1 with `s2mm`'s EL2 regime, on the boot
/// CPU with the MMU off: RAM identity-mapped read/write and execute-never,
/// except the image's text, which is read/execute (W^X); device regions as
/// Device-nGnRE. Tables come from the page pool (`tables::init` first).
///
/// # Panics
///
/// If the board's regions cannot be mapped (a board bug).
pub fn build(p: &Platform) {
    let text = (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__text_end) as u64,
    );
    let mut pool = tables::POOL.lock();
    let mut alloc = tables::Tables(&mut pool);
    let mut el2 = El2Stage1::new(&mut alloc, VA_BITS).expect("EL2 root table");
    let mut map = |base: u64, end: u64, attrs: Attrs| {
        if end > base {
            if let Err(e) = el2.map_identity(&mut alloc, Pa(base), end - base, attrs) {
                panic!("EL2 map {base:#x}..{end:#x}: {e:?}");
            }
        }
    };
    for r in p.ram {
        if r.base <= text.0 && text.1 <= r.end() {
            map(r.base, text.0, Attrs::RAM_RW);
            map(
                text.0,
                text.1,
                Attrs {
                    mem: MemType::Normal,
                    perms: Perms::RX,
                },
            );
            map(text.1, r.end(), Attrs::RAM_RW);
        } else {
            map(r.base, r.end(), Attrs::RAM_RW);
        }
    }
    for d in p.devices {
        map(d.base, d.end(), Attrs::DEVICE_RW);
    }
    let tcr = el2
        .tcr_el2(ID_AA64MMFR0_EL1::PARange.read(sysreg::id_aa64mmfr0_el1()))
        .expect("CPU reports a reserved PARange");
    EL2_REGS.call_once(|| (el2.ttbr0_el2(), tcr));
    // The tables were written with the MMU (and so the data cache) off: make
    // sure no stale line shadows them once walks are cacheable. At boot the
    // pool has handed out a contiguous run from its base.
    let (base, used) = (alloc.0.base(), alloc.0.used() as u64);
    barriers::maint::clean_inval_to_poc(base, used * 4096);
}

pub use crate::arch::switch::CpuSync;

/// Sets up this CPU's EL2 context: HCR_EL2 (the guests' value, written once
/// and never changed while at EL2), MMU and caches on, VBAR_EL2, TPIDR_EL2
/// (the sequence is `switch::el2_on`).
///
/// # Safety
///
/// `tpidr` must point at this CPU's per-CPU block, live forever; `build` must
/// have run.
pub unsafe fn cpu_on(hcr: u64, vectors: u64, tpidr: u64, gic_v3: bool) -> CpuSync {
    let &(ttbr0, tcr) = EL2_REGS
        .get()
        .expect("mmu::build runs before any CPU turns its MMU on");
    // SAFETY: `build` made TTBR0/TCR an identity map of RAM with
    // El2Format's MAIR; the rest is the caller's contract.
    unsafe {
        crate::arch::switch::el2_on(crate::arch::switch::El2Regs {
            hcr,
            mair: El2Format::MAIR_EL2,
            tcr,
            ttbr0,
            sctlr: SCTLR_EL2_ON,
            vectors,
            tpidr,
            gic_v3,
            // ID_AA64PFR0_EL1.RAS (bits [31:28]).
            ras: (crate::arch::sysreg::id_aa64pfr0_el1() >> 28) & 0xf != 0,
        })
    }
}
