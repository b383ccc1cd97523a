//! The hypervisor's own EL2 stage-1 translation: an identity map of the
//! board's RAM (normal write-back) and devices (Device-nGnRE), with 1 GiB
//! blocks, built before the MMU is on.
//!
//! TRANSITIONAL: moves to `s2mm`'s EL2 regime (issue 4, item 7).

use super::sysreg;
use crate::platform::Platform;

const GIB: u64 = 1 << 30;
/// MAIR_EL2: attr0 normal WB RA/WA inner+outer, attr1 Device-nGnRE.
pub const MAIR_EL2: u64 = 0x04_ff;
const ATTR_NORMAL: u64 = 0 << 2;
const ATTR_DEVICE: u64 = 1 << 2;
/// Block descriptor, AF, AP[1] (RES1 at EL2), inner shareable.
const BLOCK: u64 = 0b01 | (1 << 10) | (1 << 6) | (0b11 << 8);
/// XN (bit 54) for device blocks.
const XN: u64 = 1 << 54;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut L1: Table = Table([0; 512]);

/// TCR_EL2 (E2H = 0 layout, Arm ARM D24.2.185): T0SZ = 25 (39-bit VA, start
/// at level 1), inner/outer WB RA/WA walks, inner shareable, 4 KiB granule,
/// PS from ID_AA64MMFR0_EL1.PARange; bits 31 and 23 are RES1.
fn tcr_el2() -> u64 {
    let ps = (sysreg::id_aa64mmfr0_el1() & 0xf).min(0b101);
    25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (ps << 16) | (1 << 23) | (1 << 31)
}

/// SCTLR_EL2 with M, C, I, SA, EOS and EIS set (RES1 bits included; E2H = 0 layout).
pub const SCTLR_EL2_ON: u64 = 0x30c5_0838 | 1 | (1 << 2) | (1 << 12);
/// SCTLR_EL2.EOS and EIS.
pub const SCTLR_EIS_EOS: u64 = (1 << 11) | (1 << 22);

/// Fills the level-1 table from the board description. Runs once, on the boot
/// CPU, with the MMU off.
pub fn build(p: &Platform) {
    // SAFETY: single-threaded boot, before any CPU walks the table.
    let t = unsafe { &mut *core::ptr::addr_of_mut!(L1) };
    for (i, e) in t.0.iter_mut().enumerate() {
        let slot = crate::platform::MemRegion {
            base: i as u64 * GIB,
            size: GIB,
        };
        *e = if p.ram.iter().any(|r| r.overlaps(&slot)) {
            slot.base | BLOCK | ATTR_NORMAL
        } else if p.devices.iter().any(|r| r.overlaps(&slot)) {
            slot.base | BLOCK | ATTR_DEVICE | XN
        } else {
            0
        };
    }
    // The table was written with the MMU (and so the data cache) off; make
    // sure no stale line for it shadows RAM once walks are cacheable.
    sysreg::dc_civac_range(t.0.as_ptr() as u64, 4096);
}

/// Turns on the EL2 MMU and caches on this CPU.
pub fn enable() {
    // SAFETY: the table maps all of RAM (including this code, its stack and the
    // table itself) by identity, so enabling translation changes no address the
    // CPU is using. Order as in ARM-RULES.md section 1 (TCR/TTBR0/MAIR, then
    // ISB so the walk uses them, TLBI, SCTLR, ISB).
    unsafe {
        sysreg::write_mair_el2(MAIR_EL2);
        sysreg::write_tcr_el2(tcr_el2());
        sysreg::write_ttbr0_el2(core::ptr::addr_of!(L1) as u64);
        // ISB: the translation enabled below depends on MAIR/TCR/TTBR0_EL2.
        sysreg::isb();
        // Stale EL2 entries from firmware must not survive (D8.16).
        sysreg::tlbi_alle2is();
        sysreg::dsb_sy();
        sysreg::write_sctlr_el2(SCTLR_EL2_ON);
        // ISB: every following EL2 access depends on SCTLR_EL2.M/C.
        sysreg::isb();
    }
}
