//! The physical GICv3 as the hypervisor uses it: its own time-slice timer
//! (the EL2 physical timer, PPI 26) routed to EL2, acknowledged and ended
//! through the ICC system registers. Guests' interrupts are virtual (the
//! `vgic` crate); this module only keeps the physical side working.
//!
//! Register offsets: GICv3 architecture specification (IHI 0069) sections
//! 12.9 (GICD_CTLR), 12.11 (GICR_WAKER, the SGI frame's IGROUPR0,
//! ISENABLER0, IPRIORITYR). The MMIO accesses are plain volatile writes to
//! device memory EL2 maps nGnRE; the `arm-gic` crate's driver would also
//! write ICC registers directly, outside `barriers`, so only its layout
//! knowledge is mirrored here.

use barriers::regs;
use barriers::sync::GicSre;
use barriers::{GuestPending, Synced};

/// INTID of the EL2 physical timer (CNTHP).
pub const HYP_TIMER_PPI: u32 = 26;
/// INTID of the EL1 virtual timer: taken at EL2 while a guest runs, then
/// masked here and delivered as a virtual interrupt (see `vm.rs`).
pub const VTIMER_PPI: u32 = 27;
/// INTID of the virtual CPU interface's maintenance interrupt.
pub const MAINTENANCE_PPI: u32 = 25;
/// SGI the hypervisor sends to a CPU to make its running vCPU exit.
pub const KICK_SGI: u32 = 0;
/// INTID the CPU interface returns when nothing is pending.
pub const SPURIOUS: u32 = 1023;

const GICD_CTLR: u64 = 0x0;
const GICR_WAKER: u64 = 0x14;
const SGI_FRAME: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = SGI_FRAME + 0x80;
const GICR_ISENABLER0: u64 = SGI_FRAME + 0x100;
const GICR_IPRIORITYR: u64 = SGI_FRAME + 0x400;
/// Each redistributor: RD and SGI frames, 64 KiB each.
const GICR_STRIDE: u64 = 0x2_0000;

fn write32(addr: u64, v: u32) {
    // SAFETY: `addr` is a GIC register EL2 maps as device memory (board
    // regions), and the register's side effects are the intended ones.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as `write32`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Enables the distributor (affinity routing, Group 1). Boot CPU, once.
pub fn init_distributor(gicd: u64) {
    // ARE (bit 4) | EnableGrp1 (bit 1) | EnableGrp0 (bit 0); QEMU virt runs
    // the GIC with security disabled (GICD_CTLR.DS = 1).
    write32(gicd + GICD_CTLR, (1 << 4) | 0b11);
}

/// Wakes this CPU's redistributor and enables the hypervisor timer's PPI
/// as Group 1 at middle priority; enables the CPU interface.
///
/// # Panics
///
/// If the redistributor does not wake within a bounded wait.
pub fn init_cpu(gicr: u64, cpu: usize, sre: &Synced<GicSre>, pending: &mut GuestPending) {
    let rd = gicr + cpu as u64 * GICR_STRIDE;
    // ProcessorSleep (bit 1) off, then wait for ChildrenAsleep (bit 2).
    write32(rd + GICR_WAKER, read32(rd + GICR_WAKER) & !(1 << 1));
    let mut spins = 0;
    while read32(rd + GICR_WAKER) & (1 << 2) != 0 {
        spins += 1;
        assert!(
            spins < 10_000_000,
            "GIC redistributor of CPU {cpu} does not wake"
        );
    }
    // Group 1, middle priority, enabled: the time slice, and what makes a
    // running guest exit for its virtual interrupts: the kick SGI, the
    // maintenance interrupt (EOI of a level-sensitive virtual interrupt, list
    // register underflow) and the virtual timer (masked while its level is
    // delivered; see `vm.rs`). Before, only the time slice was enabled, so
    // a guest's timer and SGIs reached it only at its next time slice.
    let ppis = [HYP_TIMER_PPI, KICK_SGI, MAINTENANCE_PPI, VTIMER_PPI];
    let bits = ppis.iter().fold(0, |b, i| b | (1 << i));
    write32(rd + GICR_IGROUPR0, read32(rd + GICR_IGROUPR0) | bits);
    for intid in ppis {
        let prio = rd + GICR_IPRIORITYR + u64::from(intid);
        // SAFETY: byte access to IPRIORITYR is architected; device memory.
        unsafe { core::ptr::write_volatile(prio as *mut u8, 0x80) };
    }
    write32(rd + GICR_ISENABLER0, bits);
    pending.add(regs::IccPmrEl1::write(sre, 0xff));
    pending.add(regs::IccCtlrEl1::write(sre, 0));
    pending.add(regs::IccIgrpen1El1::write(sre, 1));
}

/// Enables (`on`) or disables PPI `intid` at this CPU's redistributor.
pub fn ppi_enable(gicr: u64, cpu: usize, intid: u32, on: bool) {
    let rd = gicr + cpu as u64 * GICR_STRIDE;
    // ICENABLER0 is ISENABLER0 + 0x80.
    let reg = if on {
        GICR_ISENABLER0
    } else {
        GICR_ISENABLER0 + 0x80
    };
    write32(rd + reg, 1 << intid);
}

/// Sends the kick SGI to physical CPU `cpu` (Aff0 = `cpu`, as on QEMU virt).
pub fn kick(cpu: usize, sre: &Synced<GicSre>, pending: &mut GuestPending) {
    let aff1 = (cpu as u64 >> 4) & 0xff;
    let target = 1u64 << (cpu & 0xf);
    let v = (aff1 << 16) | (u64::from(KICK_SGI) << 24) | target;
    pending.add(regs::IccSgi1rEl1::write(sre, v));
}

/// Acknowledges the pending physical interrupt (INTID, or [`SPURIOUS`]).
pub fn ack() -> u32 {
    crate::arch::sysreg::icc_iar1()
}

/// Ends interrupt `intid` (priority drop and deactivation, EOImode 0).
pub fn eoi(intid: u32, sre: &Synced<GicSre>, pending: &mut GuestPending) {
    pending.add(regs::IccEoir1El1::write(sre, u64::from(intid)));
}

/// Arms the hypervisor's time slice: the EL2 timer fires `ticks` counter
/// ticks from now.
pub fn arm_slice(ticks: u64, pending: &mut GuestPending) {
    let now = crate::arch::sysreg::cntpct_el0();
    pending.add(regs::CnthpCvalEl2::write(now.wrapping_add(ticks)));
    pending.add(regs::CnthpCtlEl2::write(1));
}

/// Stops the time-slice timer (ENABLE = 0, so its level interrupt drops).
pub fn stop_slice(pending: &mut GuestPending) {
    pending.add(regs::CnthpCtlEl2::write(0));
}
