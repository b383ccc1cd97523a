//! A minimal EL1 stage-1 MMU for test guests: an identity map of the low
//! 4 GiB with 4 KiB granule and 1 GiB blocks, one level-1 table.
//!
//! | VA = IPA                    | attributes                            |
//! |-----------------------------|---------------------------------------|
//! | 0x0000_0000..0x4000_0000    | Device-nGnRE, execute-never (devices) |
//! | 0x4000_0000..0x8000_0000    | Normal WB RA/WA, inner shareable (RAM)|
//! | 0x8000_0000..0x1_0000_0000  | invalid (translation fault)           |
//!
//! The table is a `static` built at compile time, so it reaches RAM with the
//! image (which the hypervisor cleans to PoC before the first entry) and is
//! never written at run time: the table walker reads the same data whether
//! it looks in the caches or in memory.
//!
//! The enable sequence follows the Arm ARM (DDI 0487, D8.2 "Translation
//! tables", D24.2 TCR_EL1/MAIR_EL1/SCTLR_EL1) and Linux's
//! `__cpu_setup`/`__enable_mmu`: program MAIR_EL1, TCR_EL1, TTBR0_EL1; ISB so
//! the translation registers are in effect; invalidate the EL1&0 TLB
//! (TLBI VMALLE1, DSB NSH: entries from an earlier life of this vCPU must
//! not survive); then set SCTLR_EL1.M, C and I and ISB, after which
//! instruction fetches and data accesses use the new regime.
//!
//! The guest performs no cache maintenance of its own around the switch:
//! data it wrote with the MMU off must still read back correctly afterwards,
//! which is the hypervisor's job without FEAT_S2FWB (ARM-RULES.md section 3).

use core::arch::asm;

/// MAIR_EL1 attribute index of Normal write-back memory.
pub const ATTR_NORMAL: u64 = 0;
/// MAIR_EL1 attribute index of Device-nGnRE memory.
pub const ATTR_DEVICE: u64 = 1;

/// MAIR_EL1: Attr0 = 0xff (Normal, inner/outer write-back non-transient,
/// read- and write-allocate), Attr1 = 0x04 (Device-nGnRE).
pub const MAIR: u64 = 0xff | (0x04 << 8);

/// TCR_EL1: T0SZ = 32 (4 GiB, walks start at level 1), IRGN0 = ORGN0 = 0b01
/// (write-back, write-allocate walks), SH0 = 0b11 (inner shareable),
/// TG0 = 0b00 (4 KiB), EPD1 = 1 (no TTBR1 walks), IPS = 0b010 (40 bits, the
/// guest's IPA size).
pub const TCR: u64 = 32 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23) | (0b010 << 32);

/// SCTLR_EL1.M: stage-1 MMU enable.
pub const SCTLR_M: u64 = 1 << 0;
/// SCTLR_EL1.C: data and unified caches enable.
pub const SCTLR_C: u64 = 1 << 2;
/// SCTLR_EL1.I: instruction cache enable.
pub const SCTLR_I: u64 = 1 << 12;

/// Block descriptor bits (D8.3 "Translation table descriptor formats").
const VALID_BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const GIB: u64 = 1 << 30;

const fn device_block(pa: u64) -> u64 {
    pa | VALID_BLOCK | (ATTR_DEVICE << 2) | AF | PXN | UXN
}

const fn normal_block(pa: u64) -> u64 {
    pa | VALID_BLOCK | (ATTR_NORMAL << 2) | AF | SH_INNER
}

#[repr(C, align(4096))]
struct Table([u64; 512]);

static LEVEL1: Table = {
    let mut t = [0u64; 512];
    t[0] = device_block(0);
    t[1] = normal_block(GIB);
    Table(t)
};

/// Reads SCTLR_EL1.
pub fn sctlr() -> u64 {
    let v: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects.
    unsafe { asm!("mrs {0}, sctlr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// Whether this vCPU runs with its MMU and data caches on.
pub fn caches_on() -> bool {
    sctlr() & (SCTLR_M | SCTLR_C) == SCTLR_M | SCTLR_C
}

/// Turns on this vCPU's MMU and caches with the identity map above and
/// returns the new SCTLR_EL1. Code, stack and data of the guest lie in
/// RAM, which the map keeps at the same addresses, so execution continues.
pub fn enable() -> u64 {
    let table = LEVEL1.0.as_ptr() as u64;
    let sctlr = sctlr() | SCTLR_M | SCTLR_C | SCTLR_I;
    // SAFETY: the identity map covers the guest's code, data, stacks and
    // console with the attributes they already had in effect (RAM and
    // devices), so no access changes meaning; the barriers are the ones the
    // module documentation lists.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            "msr sctlr_el1, {sctlr}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            ttbr = in(reg) table,
            sctlr = in(reg) sctlr,
            options(nostack),
        );
    }
    sctlr
}

/// Writes SCTLR_EL1 and synchronises it (ISB): e.g. clears or sets C with
/// the MMU kept on. Without FEAT_S2FWB the hypervisor traps the write
/// (HCR_EL2.TVM) while it watches this vCPU's cache enables.
pub fn set_sctlr(sctlr: u64) {
    // SAFETY: the caller keeps M set or clear as the identity map allows:
    // every address means the same with the MMU on or off, and toggling C
    // changes only cacheability.
    unsafe { asm!("msr sctlr_el1, {0}", "isb", in(reg) sctlr, options(nostack)) };
}

/// `DC CISW` on `set_way` (level in bits 3:1, set and way above: the Arm
/// ARM's data cache maintenance by set/way), then `DSB SY`. The
/// hypervisor traps it (HCR_EL2.TSW): set/way operations cannot be
/// virtualised, so it cleans all of the VM's memory instead.
pub fn clean_invalidate_set_way(set_way: u64) {
    // SAFETY: clean+invalidate writes dirty lines back and loses no data.
    unsafe { asm!("dc cisw, {0}", "dsb sy", in(reg) set_way, options(nostack)) };
}
