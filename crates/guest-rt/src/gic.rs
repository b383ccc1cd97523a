//! A small GIC driver for test guests, for both interrupt controllers the
//! hypervisor's virtual GIC presents, chosen at run time from
//! `ID_AA64PFR0_EL1.GIC` (bits \[27:24\]; 0 = no system-register CPU
//! interface, see [`version`]):
//!
//! * **GICv3** (QEMU virt): the distributor (GICD), this vCPU's
//!   redistributor (GICR RD and SGI frames) and the `ICC_*_EL1`
//!   system-register CPU interface. All interrupts group 1.
//! * **GICv2** (the Raspberry Pi 4's GIC-400, or QEMU virt with
//!   `gic-version=2`): the distributor (GICD, with banked registers for
//!   INTIDs 0..32, `GICD_ITARGETSR`, `GICD_SGIR`, `GICD_{C,S}PENDSGIR`) and
//!   the memory-mapped CPU interface (GICC; under the hypervisor the GIC-400's
//!   GICV frame) at QEMU virt's GICv2 addresses. All interrupts group 0,
//!   signalled as IRQ (`GICC_CTLR.FIQEn` = 0).
//!
//! No LPIs, no ITS, one security state as seen from EL1.
//!
//! The programming model follows the GIC architecture specifications (Arm
//! IHI 0069, chapters 11 "Programmers' model" and 12 "GIC System register
//! descriptions"; Arm IHI 0048B, chapter 4 "Programmers' Model": 4.3
//! distributor and 4.4 CPU interface register descriptions), Arm's "GICv3
//! and GICv4 Software Overview" (DAI 0492B, section 4 "Configuring the GIC")
//! and Linux's `drivers/irqchip/irq-gic-v3.c` (`gic_dist_init`,
//! `gic_enable_redist`, `gic_cpu_sys_reg_init`, `gic_send_sgi`) and
//! `drivers/irqchip/irq-gic.c` (`gic_dist_init`, `gic_cpu_init`,
//! `gic_get_cpumask`, `gic_cpu_if_up`, `gic_ipi_send_mask`,
//! `gic_handle_irq`): they were read, not copied.
//!
//! Set-up order, as the architecture asks:
//! 1. once per VM, [`init_distributor`]: `GICD_CTLR` = 0 (v3: wait for RWP),
//!    every SPI disabled, not pending, level, default priority, routed to the
//!    caller (v3 `GICD_IROUTER`, v2 `GICD_ITARGETSR`), group 1 (v3) or 0
//!    (v2); then `GICD_CTLR` = ARE | EnableGrp1 (v3) or EnableGrp0 (v2);
//! 2. on every vCPU, [`init_cpu`]: v3 wakes the redistributor
//!    (`GICR_WAKER`); SGIs/PPIs disabled, not pending, default priority, in
//!    the group above; then the CPU interface: v3 `ICC_SRE_EL1.SRE`,
//!    `ICC_PMR_EL1`, `ICC_BPR1_EL1`, `ICC_CTLR_EL1.EOImode` = 0 and
//!    `ICC_IGRPEN1_EL1`; v2 `GICC_PMR`, `GICC_BPR` and `GICC_CTLR` =
//!    EnableGrp0 (EOImode 0).
//!
//! Interrupts are then enabled one by one ([`enable`]) and PSTATE.I is
//! cleared with [`irq_unmask`]. A handler (the guest-rt exception hook on
//! vector 5, "current EL with SPx, IRQ") calls [`ack`] and gives what it
//! returned back to [`eoi`] (EOImode 0: the EOI both drops the running
//! priority and deactivates). On GICv2 an SGI's acknowledge value carries
//! the sender's CPU number, which the EOI must repeat (IHI 0048B, 4.4.5
//! `GICC_EOIR`), so [`Ack`] keeps the raw value: handlers may nest.
//!
//! All MMIO accesses are single 8-, 32- or 64-bit loads and stores (one
//! instruction each, no writeback), so a hypervisor that traps them gets a
//! valid syndrome (ESR_EL2.ISV = 1).

use core::arch::asm;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Distributor base (IPA), both versions.
pub const GICD_BASE: usize = hyp_abi::layout::GICD_IPA as usize;
/// GICv3: first redistributor (IPA); redistributor *n* is at `GICR_BASE + n * GICR_STRIDE`.
pub const GICR_BASE: usize = hyp_abi::layout::GICR_IPA as usize;
/// GICv3: the SGI frame's offset from its redistributor's RD frame.
pub use hw_regs::gic::as_usize::GICR_SGI_FRAME as SGI_FRAME;
/// GICv3: one redistributor: RD frame + SGI frame (no VLPI frames).
pub use hw_regs::gic::as_usize::GICR_STRIDE;
/// GICv2: the memory-mapped CPU interface (IPA; QEMU virt's GICv2 GICC, where
/// the hypervisor maps the GIC-400's GICV frame).
pub const GICC_BASE: usize = hyp_abi::layout::GICC_V2_IPA as usize;
/// vCPUs this driver keeps per-CPU state for (GICv2's limit too).
pub const MAX_CPUS: usize = 8;

/// INTID returned by an acknowledge when nothing is pending.
pub const SPURIOUS: u32 = 1023;
/// The EL1 virtual timer's PPI.
pub const VTIMER_PPI: u32 = 27;
/// Priority [`init_distributor`] and [`init_cpu`] give every interrupt
/// (Linux's `GICD_INT_DEF_PRI`).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

// GICD, GICC and GICR register offsets (IHI 0069, 12.9-12.11; IHI 0048B,
// 4.3-4.4), from the one register map.
use hw_regs::gic::as_usize::{
    GICC_BPR, GICC_CTLR, GICC_EOIR, GICC_HPPIR, GICC_IAR, GICC_PMR, GICC_RPR, GICD_CPENDSGIR,
    GICD_CTLR, GICD_ICENABLER, GICD_ICFGR, GICD_ICPENDR, GICD_IGROUPR, GICD_IPRIORITYR,
    GICD_IROUTER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR, GICD_SGIR, GICD_SPENDSGIR,
    GICD_TYPER, GICR_CTLR, GICR_ICENABLER0, GICR_ICPENDR0, GICR_IGROUPR0, GICR_IPRIORITYR,
    GICR_ISENABLER0, GICR_ISPENDR0, GICR_TYPER, GICR_WAKER,
};

/// GICD_CTLR: EnableGrp1 (EnableGrp1NS in the Non-secure view), bit 1.
const GICD_CTLR_ENABLE_G1: u32 = 1 << 1;
/// GICD_CTLR: ARE (ARE_NS in the Non-secure view), bit 4.
const GICD_CTLR_ARE: u32 = 1 << 4;
/// GICD_CTLR: RWP, register write pending, bit 31.
const GICD_CTLR_RWP: u32 = 1 << 31;

/// GICv2 GICD_CTLR.EnableGrp0 (bit 0; the only enable without Security
/// Extensions, as a VM sees it).
const GICD_CTLR_ENABLE_G0: u32 = 1 << 0;
/// GICD_SGIR.TargetListFilter \[25:24\] = 1: every CPU interface but this one.
const GICD_SGIR_OTHERS: u32 = 1 << 24;

/// GICC_CTLR.EnableGrp0 (bit 0); FIQEn (bit 3) and EOImode (bit 9) stay 0:
/// group 0 is signalled as IRQ and an EOI also deactivates.
const GICC_CTLR_ENABLE_G0: u32 = 1 << 0;
/// GICC_IAR/HPPIR: InterruptID \[9:0\]; CPUID \[12:10\] is an SGI's sender.
const GICC_INTID_MASK: u32 = 0x3ff;

/// GICR_CTLR.RWP (bit 3): a write to GICR_ICENABLER0 is still in progress.
const GICR_CTLR_RWP: u32 = 1 << 3;
/// GICR_TYPER.Last (bit 4): the last redistributor of the region.
const GICR_TYPER_LAST: u64 = 1 << 4;
/// GICR_WAKER.ProcessorSleep (bit 1) and ChildrenAsleep (bit 2).
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// ICC_SRE_EL1.SRE: the system-register interface is in use.
const ICC_SRE_SRE: u64 = 1;
/// ICC_CTLR_EL1.EOImode (bit 1): 0 = EOIR drops priority and deactivates.
const ICC_CTLR_EOIMODE: u64 = 1 << 1;

/// Bound on every register-write-pending and wake-up poll.
const POLLS: u32 = 1_000_000;

// MMIO accessors in inline assembly: a plain `ldr`/`str` with a register
// base and no writeback, so a trapped access always has a valid syndrome
// (ESR ISV = 1). `read_volatile` in a loop may compile to post-indexed
// forms, which trap with ISV = 0 and cannot be emulated.
macro_rules! mmio {
    ($read:ident, $write:ident, $t:ty, $ld:literal, $st:literal) => {
        fn $read(addr: usize) -> $t {
            let v: u64;
            // SAFETY: callers pass GIC register addresses of the guest's
            // (emulated or real) GIC, Device memory. The only read with a
            // side effect is GICv2's GICC_IAR, which `ack` makes on purpose.
            unsafe { core::arch::asm!($ld, out(reg) v, in(reg) addr, options(nostack, preserves_flags)) };
            v as $t
        }

        fn $write(addr: usize, v: $t) {
            // SAFETY: as for reads; the writes are the configuration this
            // module documents.
            unsafe { core::arch::asm!($st, in(reg) v as u64, in(reg) addr, options(nostack, preserves_flags)) };
        }
    };
}

mmio!(read32, write32, u32, "ldr {0:w}, [{1}]", "str {0:w}, [{1}]");
mmio!(read64, write64, u64, "ldr {0}, [{1}]", "str {0}, [{1}]");
mmio!(read8, write8, u8, "ldrb {0:w}, [{1}]", "strb {0:w}, [{1}]");

macro_rules! sysreg_read {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading a GIC CPU interface, ID or timer system register;
        // the reads this module does (IAR aside, see `ack`) have no side effects.
        unsafe { asm!(concat!("mrs {0}, ", $name), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

macro_rules! sysreg_write {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writing a GIC CPU interface or timer system register with
        // a value this module documents; no memory is affected.
        unsafe { asm!(concat!("msr ", $name, ", {0}"), in(reg) v, options(nostack)) };
    }};
}

fn isb() {
    // SAFETY: a context synchronisation barrier has no other effect.
    unsafe { asm!("isb", options(nostack)) };
}

/// The GIC architecture this driver found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// GICv2: memory-mapped CPU interface.
    V2,
    /// GICv3: system-register CPU interface and redistributors.
    V3,
}

/// [`version`]'s answer once known: 0 unknown, else 2 or 3. Plain loads and
/// stores only (guests may run with their MMU off); every vCPU computes the
/// same value, so a race only repeats the ID register read.
static VERSION: AtomicU8 = AtomicU8::new(0);

/// The GIC version: `ID_AA64PFR0_EL1.GIC` (bits \[27:24\]) is 0 when the PE
/// has no GIC system-register interface, which leaves the memory-mapped
/// GICv2 CPU interface (Arm ARM D19.2.64; the hypervisor passes the field
/// through, QEMU reports it only with a GICv3). Read once (the register
/// traps to the hypervisor), then remembered.
pub fn version() -> Version {
    match VERSION.load(Ordering::Relaxed) {
        2 => Version::V2,
        3 => Version::V3,
        _ => {
            let gic = (sysreg_read!("id_aa64pfr0_el1") >> 24) & 0xf;
            let v = if gic == 0 { Version::V2 } else { Version::V3 };
            VERSION.store(if v == Version::V2 { 2 } else { 3 }, Ordering::Relaxed);
            v
        }
    }
}

fn v2() -> bool {
    version() == Version::V2
}

/// This vCPU's MPIDR_EL1 affinity fields, packed as Aff3.Aff2.Aff1.Aff0 in
/// 32 bits (the layout of `GICR_TYPER.Affinity_Value`).
pub fn affinity() -> u32 {
    let m = sysreg_read!("mpidr_el1");
    ((m & 0xff_ffff) | ((m >> 8) & 0xff00_0000)) as u32
}

/// `GICD_TYPER.ITLinesNumber`-derived number of INTIDs the distributor
/// implements (a multiple of 32, at most 1020 usable; same field on both
/// versions).
pub fn nr_intids() -> u32 {
    let lines = read32(GICD_BASE + GICD_TYPER) & 0x1f;
    ((lines + 1) * 32).min(1020)
}

fn wait_dist_rwp() {
    let mut polls = 0;
    while read32(GICD_BASE + GICD_CTLR) & GICD_CTLR_RWP != 0 {
        polls += 1;
        assert!(polls < POLLS, "GICD_CTLR.RWP stuck");
        core::hint::spin_loop();
    }
}

fn wait_redist_rwp(rd: usize) {
    let mut polls = 0;
    while read32(rd + GICR_CTLR) & GICR_CTLR_RWP != 0 {
        polls += 1;
        assert!(polls < POLLS, "GICR_CTLR.RWP stuck");
        core::hint::spin_loop();
    }
}

/// GICv2: each vCPU's CPU interface mask (bit *n* = CPU interface *n*), by
/// MPIDR Aff0, as its own `GICD_ITARGETSR0` read it ([`init_cpu`]); 0 =
/// not known yet.
static CPU_IF: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// GICv2: this CPU interface's mask, from the banked `GICD_ITARGETSR0..7`:
/// each byte of them reads as the mask of the CPU interface that reads it
/// (IHI 0048B, 4.3.12; Linux's `gic_get_cpumask` reads it the same way).
fn own_cpu_mask() -> u8 {
    let mask = read8(GICD_BASE + GICD_ITARGETSR);
    assert!(
        mask != 0,
        "GICD_ITARGETSR0 reads as 0: no CPU interface mask"
    );
    mask
}

/// GICv2: the CPU interface mask of the vCPU with Aff0 `cpu`: as that vCPU
/// read it in [`init_cpu`], or bit `cpu` before then (CPU interface *n* is
/// vCPU *n* under this hypervisor and on QEMU virt).
fn cpu_if_mask(cpu: usize) -> u8 {
    match CPU_IF.get(cpu).map(|m| m.load(Ordering::Relaxed)) {
        Some(0) | None => 1u8.checked_shl(cpu as u32).unwrap_or(0),
        Some(m) => m,
    }
}

/// Configures the distributor, once per VM, before any vCPU's [`init_cpu`]:
/// disables it, makes every SPI disabled, not pending, level sensitive,
/// [`DEFAULT_PRIORITY`], routed to the calling vCPU and group 1 (v3) or 0
/// (v2), then enables it (v3: with affinity routing).
pub fn init_distributor() {
    if v2() {
        init_distributor_v2();
        return;
    }
    write32(GICD_BASE + GICD_CTLR, 0);
    wait_dist_rwp();
    let n = nr_intids();
    let me = u64::from(affinity());
    let router = (me & 0xff_ffff) | ((me >> 24) << 32);
    for first in (32..n).step_by(32) {
        let r = (first / 32) as usize * 4;
        write32(GICD_BASE + GICD_ICENABLER + r, !0);
        write32(GICD_BASE + GICD_ICPENDR + r, !0);
        write32(GICD_BASE + GICD_IGROUPR + r, !0);
    }
    wait_dist_rwp();
    for intid in 32..n {
        write8(
            GICD_BASE + GICD_IPRIORITYR + intid as usize,
            DEFAULT_PRIORITY,
        );
        write64(GICD_BASE + GICD_IROUTER + 8 * intid as usize, router);
    }
    for first in (32..n).step_by(16) {
        write32(GICD_BASE + GICD_ICFGR + (first / 16) as usize * 4, 0);
    }
    write32(GICD_BASE + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_G1);
    wait_dist_rwp();
}

/// GICv2 [`init_distributor`] (Linux's `gic_dist_init`, with group 0
/// written explicitly): no RWP to wait for, SPIs target the caller's CPU
/// interface through `GICD_ITARGETSR`.
fn init_distributor_v2() {
    write32(GICD_BASE + GICD_CTLR, 0);
    let n = nr_intids();
    let me = own_cpu_mask();
    for first in (32..n).step_by(32) {
        let r = (first / 32) as usize * 4;
        write32(GICD_BASE + GICD_ICENABLER + r, !0);
        write32(GICD_BASE + GICD_ICPENDR + r, !0);
        write32(GICD_BASE + GICD_IGROUPR + r, 0);
    }
    for intid in 32..n as usize {
        write8(GICD_BASE + GICD_IPRIORITYR + intid, DEFAULT_PRIORITY);
        write8(GICD_BASE + GICD_ITARGETSR + intid, me);
    }
    for first in (32..n).step_by(16) {
        write32(GICD_BASE + GICD_ICFGR + (first / 16) as usize * 4, 0);
    }
    write32(GICD_BASE + GICD_CTLR, GICD_CTLR_ENABLE_G0);
}

/// RD frame base of each vCPU's redistributor, by MPIDR Aff0 (0 = unknown).
static REDIST: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// GICv3 only: this vCPU's redistributor RD frame: the one whose
/// `GICR_TYPER` affinity is this vCPU's MPIDR (Linux's
/// `gic_populate_rdist`), found once and then remembered.
pub fn redistributor() -> usize {
    assert!(!v2(), "GICv2 has no redistributors");
    let aff = affinity();
    let slot = (aff & 0xff) as usize % MAX_CPUS;
    let known = REDIST[slot].load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    for n in 0..MAX_CPUS {
        let rd = GICR_BASE + n * GICR_STRIDE;
        let typer = read64(rd + GICR_TYPER);
        if (typer >> 32) as u32 == aff {
            REDIST[slot].store(rd, Ordering::Relaxed);
            return rd;
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
    }
    panic!("no redistributor for affinity {aff:#x}");
}

fn sgi_frame() -> usize {
    redistributor() + SGI_FRAME
}

/// Configures this vCPU's private interrupts and CPU interface: every SGI
/// and PPI disabled, not pending, at [`DEFAULT_PRIORITY`], group 1 (v3) or
/// 0 (v2); priority mask `0xff` (nothing masked); the smallest binary point
/// (most preemption levels); EOImode 0; the group enabled. On GICv3 it
/// first wakes the redistributor and turns the system-register interface
/// on; on GICv2 it records this vCPU's CPU interface number. PSTATE.I is
/// left as it is.
pub fn init_cpu() {
    if v2() {
        init_cpu_v2();
        return;
    }
    let rd = redistributor();
    // GICR_WAKER: clear ProcessorSleep, wait for ChildrenAsleep to clear.
    let w = read32(rd + GICR_WAKER);
    write32(rd + GICR_WAKER, w & !GICR_WAKER_PROCESSOR_SLEEP);
    let mut polls = 0;
    while read32(rd + GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP != 0 {
        polls += 1;
        assert!(polls < POLLS, "GICR_WAKER.ChildrenAsleep stuck");
        core::hint::spin_loop();
    }
    let sgi = rd + SGI_FRAME;
    write32(sgi + GICR_ICENABLER0, !0);
    write32(sgi + GICR_ICPENDR0, !0);
    wait_redist_rwp(rd);
    write32(sgi + GICR_IGROUPR0, !0);
    for intid in 0..32 {
        write8(sgi + GICR_IPRIORITYR + intid, DEFAULT_PRIORITY);
    }

    let sre = sysreg_read!("icc_sre_el1");
    sysreg_write!("icc_sre_el1", sre | ICC_SRE_SRE);
    isb();
    assert!(
        sysreg_read!("icc_sre_el1") & ICC_SRE_SRE != 0,
        "ICC_SRE_EL1.SRE reads as 0: no system-register GIC interface"
    );
    set_priority_mask(0xff);
    // Writes below the minimum binary point set the minimum.
    sysreg_write!("icc_bpr1_el1", 0);
    let ctlr = sysreg_read!("icc_ctlr_el1");
    sysreg_write!("icc_ctlr_el1", ctlr & !ICC_CTLR_EOIMODE);
    sysreg_write!("icc_igrpen1_el1", 1);
    isb();
}

/// GICv2 [`init_cpu`] (Linux's `gic_cpu_init` and `gic_cpu_if_up`): the
/// banked `GICD_*R0` registers and `GICD_CPENDSGIR` for this CPU's SGIs and
/// PPIs, then the GICC frame.
fn init_cpu_v2() {
    let me = own_cpu_mask();
    if let Some(slot) = CPU_IF.get((affinity() & 0xff) as usize) {
        slot.store(me, Ordering::Relaxed);
    }
    write32(GICD_BASE + GICD_ICENABLER, !0);
    // ICPENDR0's SGI bits are WI on GICv2: SGIs are cleared per source in
    // GICD_CPENDSGIR0..3 (one byte per SGI, one bit per sender).
    write32(GICD_BASE + GICD_ICPENDR, !0);
    for r in (0..16).step_by(4) {
        write32(GICD_BASE + GICD_CPENDSGIR + r, !0);
    }
    write32(GICD_BASE + GICD_IGROUPR, 0);
    for intid in 0..32 {
        write8(GICD_BASE + GICD_IPRIORITYR + intid, DEFAULT_PRIORITY);
    }
    set_priority_mask(0xff);
    // Writes below the minimum binary point set the minimum (IHI 0048B,
    // 3.3.3: at most 7 - implemented priority bits for group 0).
    write32(GICC_BASE + GICC_BPR, 0);
    write32(GICC_BASE + GICC_CTLR, GICC_CTLR_ENABLE_G0);
}

/// Sets an interrupt's priority (lower is more urgent). The GIC keeps only
/// its implemented high-order bits: at least 5 on a virtual CPU interface
/// (IHI 0069, 4.8 "Interrupt prioritization", `ICH_VTR_EL2.PRIbits` + 1 >=
/// 5; the GIC-400's GICV implements exactly 5, GIC-400 TRM 3.3 and
/// `GICH_VTR.PRIbits`), so multiples of 8 survive everywhere.
pub fn set_priority(intid: u32, prio: u8) {
    write8(priority_reg(intid), prio);
}

/// An interrupt's priority as the GIC holds it.
pub fn priority(intid: u32) -> u8 {
    read8(priority_reg(intid))
}

/// The `IPRIORITYR` byte of `intid`: v3 private ones in the redistributor's
/// SGI frame, everything else (and every one on v2, banked) in the GICD.
fn priority_reg(intid: u32) -> usize {
    let i = intid as usize;
    if intid < 32 && !v2() {
        sgi_frame() + GICR_IPRIORITYR + i
    } else {
        GICD_BASE + GICD_IPRIORITYR + i
    }
}

fn bit_reg(intid: u32, dist_off: usize, sgi_off: usize) -> (usize, u32) {
    let bit = 1 << (intid % 32);
    if intid < 32 && !v2() {
        (sgi_frame() + sgi_off, bit)
    } else {
        (GICD_BASE + dist_off + (intid / 32) as usize * 4, bit)
    }
}

/// Enables an interrupt (this vCPU's, for an SGI or PPI).
pub fn enable(intid: u32) {
    let (reg, bit) = bit_reg(intid, GICD_ISENABLER, GICR_ISENABLER0);
    write32(reg, bit);
}

/// Disables an interrupt. On GICv3 it then waits until the GIC has stopped
/// forwarding it (RWP), as the architecture requires before relying on the
/// disable; GICv2 has no such indication.
pub fn disable(intid: u32) {
    let (reg, bit) = bit_reg(intid, GICD_ICENABLER, GICR_ICENABLER0);
    write32(reg, bit);
    match (version(), intid < 32) {
        (Version::V2, _) => {}
        (Version::V3, true) => wait_redist_rwp(redistributor()),
        (Version::V3, false) => wait_dist_rwp(),
    }
}

/// Makes an interrupt pending (this vCPU's, for an SGI or PPI; a GICv2 SGI
/// as if this vCPU sent it, through `GICD_SPENDSGIR`).
pub fn set_pending(intid: u32) {
    if v2() && intid < 16 {
        write8(GICD_BASE + GICD_SPENDSGIR + intid as usize, own_cpu_mask());
        return;
    }
    let (reg, bit) = bit_reg(intid, GICD_ISPENDR, GICR_ISPENDR0);
    write32(reg, bit);
}

/// Clears an interrupt's pending state (a GICv2 SGI's from every sender,
/// through `GICD_CPENDSGIR`).
pub fn clear_pending(intid: u32) {
    if v2() && intid < 16 {
        write8(GICD_BASE + GICD_CPENDSGIR + intid as usize, 0xff);
        return;
    }
    let (reg, bit) = bit_reg(intid, GICD_ICPENDR, GICR_ICPENDR0);
    write32(reg, bit);
}

/// This vCPU's `GICR_ISPENDR0` (v3) or banked `GICD_ISPENDR0` (v2): the
/// pending SGIs and PPIs, one bit each.
pub fn private_pending() -> u32 {
    read32(bit_reg(0, GICD_ISPENDR, GICR_ISPENDR0).0)
}

/// This vCPU's `GICR_ISENABLER0` (v3) or banked `GICD_ISENABLER0` (v2):
/// the enabled SGIs and PPIs, one bit each.
pub fn private_enabled() -> u32 {
    read32(bit_reg(0, GICD_ISENABLER, GICR_ISENABLER0).0)
}

/// Configures an SPI as edge-triggered (`true`) or level-sensitive.
pub fn configure_spi(intid: u32, edge: bool) {
    assert!(intid >= 32, "INTID {intid} is not an SPI");
    let reg = GICD_BASE + GICD_ICFGR + (intid / 16) as usize * 4;
    let bit = 2 << (2 * (intid % 16));
    let v = read32(reg);
    write32(reg, if edge { v | bit } else { v & !bit });
}

/// Routes an SPI to the vCPU with affinity `aff` (as [`affinity`] packs it;
/// v2: to that vCPU's CPU interface, by Aff0).
pub fn route_spi(intid: u32, aff: u32) {
    assert!(intid >= 32, "INTID {intid} is not an SPI");
    if v2() {
        let mask = cpu_if_mask((aff & 0xff) as usize);
        write8(GICD_BASE + GICD_ITARGETSR + intid as usize, mask);
        return;
    }
    let aff = u64::from(aff);
    let router = (aff & 0xff_ffff) | ((aff >> 24) << 32);
    write64(GICD_BASE + GICD_IROUTER + 8 * intid as usize, router);
}

/// Sets the priority mask (`ICC_PMR_EL1`, `GICC_PMR`): only interrupts with
/// a priority value strictly lower than `mask` are signalled.
pub fn set_priority_mask(mask: u8) {
    if v2() {
        write32(GICC_BASE + GICC_PMR, u32::from(mask));
        return;
    }
    sysreg_write!("icc_pmr_el1", u64::from(mask));
    isb();
}

/// The priority mask as the CPU interface holds it.
pub fn priority_mask() -> u8 {
    if v2() {
        return read32(GICC_BASE + GICC_PMR) as u8;
    }
    sysreg_read!("icc_pmr_el1") as u8
}

/// The running priority (`ICC_RPR_EL1`, `GICC_RPR`; 0xff when nothing is
/// active).
pub fn running_priority() -> u8 {
    if v2() {
        return read32(GICC_BASE + GICC_RPR) as u8;
    }
    sysreg_read!("icc_rpr_el1") as u8
}

/// The highest-priority pending interrupt forwarded to this CPU interface
/// (`ICC_HPPIR1_EL1`, or `GICC_HPPIR` without its CPUID bits), or
/// [`SPURIOUS`].
pub fn highest_pending() -> u32 {
    if v2() {
        return read32(GICC_BASE + GICC_HPPIR) & GICC_INTID_MASK;
    }
    (sysreg_read!("icc_hppir1_el1") & 0xff_ffff) as u32
}

/// An acknowledged interrupt, as [`ack`] read it; give it back to [`eoi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The raw `ICC_IAR1_EL1` or `GICC_IAR` value.
    raw: u32,
    v2: bool,
}

impl Ack {
    /// The INTID ([`SPURIOUS`] when nothing was pending).
    pub fn intid(self) -> u32 {
        if self.v2 {
            self.raw & GICC_INTID_MASK
        } else {
            self.raw & 0xff_ffff
        }
    }

    /// GICv2 SGIs: the sending CPU interface's number (`GICC_IAR.CPUID`
    /// \[12:10\]); `None` on GICv3 (`ICC_IAR1_EL1` does not name it) and for
    /// other interrupts.
    pub fn source(self) -> Option<usize> {
        (self.v2 && self.intid() < 16).then_some(((self.raw >> 10) & 7) as usize)
    }

    /// The raw acknowledge value.
    pub fn raw(self) -> u32 {
        self.raw
    }
}

/// Acknowledges the highest-priority pending interrupt (`ICC_IAR1_EL1` or
/// `GICC_IAR`): it becomes active and the running priority rises to its
/// priority. [`Ack::intid`] is [`SPURIOUS`] when there was none.
pub fn ack() -> Ack {
    let v2 = v2();
    let raw = if v2 {
        read32(GICC_BASE + GICC_IAR)
    } else {
        let v: u64;
        // SAFETY: reading ICC_IAR1_EL1 acknowledges an interrupt, which is
        // the purpose of this function; no memory is affected.
        unsafe { asm!("mrs {0}, icc_iar1_el1", out(reg) v, options(nomem, nostack)) };
        v as u32 & 0xff_ffff
    };
    // Linux's gic_read_iar (v3) and the barrier after GICC_IAR in
    // irq-gic.c's gic_handle_irq (v2): the read must complete before any
    // access the handler makes on its behalf (an SGI sender's data).
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb sy", options(nostack)) };
    Ack { raw, v2 }
}

/// Ends an acknowledged interrupt (EOImode 0: priority drop and
/// deactivation): `ICC_EOIR1_EL1` with the INTID, or `GICC_EOIR` with the
/// whole `GICC_IAR` value, an SGI's CPUID included (IHI 0048B, 4.4.5).
pub fn eoi(a: Ack) {
    if a.v2 {
        write32(GICC_BASE + GICC_EOIR, a.raw);
        return;
    }
    sysreg_write!("icc_eoir1_el1", u64::from(a.intid()));
    isb();
}

/// Where an SGI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgiTarget {
    /// The vCPUs whose Aff0 bits are set in the mask (0..16), sharing this
    /// vCPU's Aff3.Aff2.Aff1 (v2: 0..8, each its CPU interface).
    List(u16),
    /// Every vCPU but this one (`ICC_SGI1R_EL1.IRM` = 1, or
    /// `GICD_SGIR.TargetListFilter` = 1).
    Others,
}

/// The `ICC_SGI1R_EL1` value for SGI `intid` to `target` (IHI 0069,
/// 12.2.22): TargetList \[15:0\], Aff1 \[23:16\], INTID \[27:24\], Aff2
/// \[39:32\], IRM \[40\], RS \[47:44\] (0: Aff0 0..16), Aff3 \[55:48\].
pub fn sgi1r_value(intid: u32, target: SgiTarget) -> u64 {
    let intid = u64::from(intid & 0xf) << 24;
    match target {
        SgiTarget::Others => intid | (1 << 40),
        SgiTarget::List(list) => {
            let aff = u64::from(affinity());
            let aff1 = (aff >> 8) & 0xff;
            let aff2 = (aff >> 16) & 0xff;
            let aff3 = (aff >> 24) & 0xff;
            intid | u64::from(list) | (aff1 << 16) | (aff2 << 32) | (aff3 << 48)
        }
    }
}

/// The GICv2 `GICD_SGIR` value for SGI `intid` to `target` (IHI 0048B,
/// 4.3.15): TargetListFilter \[25:24\] (0: the list, 1: all but self),
/// CPUTargetList \[23:16\] (CPU interface numbers, here of the listed
/// vCPUs), NSATT \[15\] = 0, SGIINTID \[3:0\].
pub fn sgir_value(intid: u32, target: SgiTarget) -> u32 {
    let intid = intid & 0xf;
    match target {
        SgiTarget::Others => GICD_SGIR_OTHERS | intid,
        SgiTarget::List(list) => {
            let cpus = (0..MAX_CPUS)
                .filter(|&c| list & (1 << c) != 0)
                .fold(0u8, |m, c| m | cpu_if_mask(c));
            (u32::from(cpus) << 16) | intid
        }
    }
}

/// Sends SGI `intid` (0..16) to `target` through `ICC_SGI1R_EL1` or
/// `GICD_SGIR`. Memory writes made before the call are visible to the
/// targets before they can take the SGI (DSB before the write, as Linux's
/// `gic_ipi_send_mask` in both drivers).
pub fn send_sgi(intid: u32, target: SgiTarget) {
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb ish", options(nostack)) };
    if v2() {
        write32(GICD_BASE + GICD_SGIR, sgir_value(intid, target));
        return;
    }
    let v = sgi1r_value(intid, target);
    sysreg_write!("icc_sgi1r_el1", v);
    isb();
}

/// Sends SGI `intid` to the vCPU with Aff0 `cpu` (in this vCPU's cluster).
pub fn send_sgi_to(intid: u32, cpu: usize) {
    send_sgi(intid, SgiTarget::List(1 << cpu));
}

/// Clears PSTATE.I: IRQs can be taken.
pub fn irq_unmask() {
    // SAFETY: unmasking IRQs only lets the installed vectors run.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
}

/// Sets PSTATE.I: IRQs stay pending.
pub fn irq_mask() {
    // SAFETY: masking IRQs has no effect on memory.
    unsafe { asm!("msr daifset, #2", options(nostack)) };
}

/// Whether PSTATE.I is set.
pub fn irqs_masked() -> bool {
    sysreg_read!("daif") & (1 << 7) != 0
}

/// Waits for an interrupt (WFI): returns when one is pending even if
/// PSTATE.I masks it.
pub fn wfi() {
    // SAFETY: WFI only pauses the vCPU.
    unsafe { asm!("dsb sy", "wfi", options(nostack)) };
}

/// The virtual counter (`CNTVCT_EL0`), read after an ISB so it is not
/// speculated ahead of earlier instructions.
pub fn counter() -> u64 {
    isb();
    sysreg_read!("cntvct_el0")
}

/// The counter frequency (`CNTFRQ_EL0`), in Hz.
pub fn counter_hz() -> u64 {
    sysreg_read!("cntfrq_el0")
}

/// Busy-waits for `us` microseconds of the virtual counter.
pub fn delay_us(us: u64) {
    let end = counter() + counter_hz() * us / 1_000_000;
    while counter() < end {
        core::hint::spin_loop();
    }
}

/// Polls `cond` until it holds or `ms` milliseconds of the virtual counter
/// have passed; returns whether it held.
pub fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = counter() + counter_hz() * ms / 1000;
    loop {
        if cond() {
            return true;
        }
        if counter() >= end {
            return cond();
        }
        core::hint::spin_loop();
    }
}

/// The EL1 virtual timer (`CNTV_*_EL0`).
pub mod vtimer {
    use core::arch::asm;

    /// CNTV_CTL_EL0.ENABLE.
    pub const ENABLE: u64 = 1 << 0;
    /// CNTV_CTL_EL0.IMASK: the timer condition does not assert the interrupt.
    pub const IMASK: u64 = 1 << 1;
    /// CNTV_CTL_EL0.ISTATUS (read-only): the timer condition is met.
    pub const ISTATUS: u64 = 1 << 2;

    /// Writes `CNTV_CVAL_EL0`: the timer fires when `CNTVCT_EL0` >= `cval`.
    pub fn set_cval(cval: u64) {
        sysreg_write!("cntv_cval_el0", cval);
        super::isb();
    }

    /// Reads `CNTV_CVAL_EL0`.
    pub fn cval() -> u64 {
        sysreg_read!("cntv_cval_el0")
    }

    /// Writes `CNTV_CTL_EL0`.
    pub fn set_ctl(ctl: u64) {
        sysreg_write!("cntv_ctl_el0", ctl);
        super::isb();
    }

    /// Reads `CNTV_CTL_EL0`.
    pub fn ctl() -> u64 {
        sysreg_read!("cntv_ctl_el0")
    }
}
