//! The least of a GICv3 driver the benchmarks need: group 1 enabled in the
//! (virtual) distributor, SGI 1 and the virtual timer's PPI enabled in a
//! redistributor, the CPU interface on, acknowledge, end, send an SGI.
//! Layout: QEMU virt's, which the hypervisor's vGIC mirrors (GICD at
//! 0x0800_0000, one 128 KiB redistributor per vCPU from 0x080a_0000).

use core::arch::asm;

/// The distributor.
pub const GICD: usize = 0x0800_0000;
const GICR: usize = 0x080a_0000;
const GICR_STRIDE: usize = 0x2_0000;
const GICR_WAKER: usize = 0x14;
const SGI_FRAME: usize = 0x1_0000;
const IGROUPR0: usize = SGI_FRAME + 0x80;
const ISENABLER0: usize = SGI_FRAME + 0x100;
/// The EL1 virtual timer.
pub const VTIMER_PPI: u32 = 27;
/// The SGI the benchmark sends.
const BENCH_SGI: u32 = 1;

fn read(addr: usize) -> u32 {
    // SAFETY: a (virtual) GIC register.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write(addr: usize, v: u32) {
    // SAFETY: a (virtual) GIC register.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Whether the VM has a GICv3 distributor: GICD_PIDR2.ArchRev (bits 7:4)
/// is 3. Without a vGIC the read is aborted; the hook says so.
pub fn probe() -> bool {
    PROBING.store(true, core::sync::atomic::Ordering::Relaxed);
    guest_rt::set_exception_hook(probe_hook);
    let pidr2 = read(GICD + 0xffe8);
    PROBING.store(false, core::sync::atomic::Ordering::Relaxed);
    let aborted = ABORTED.load(core::sync::atomic::Ordering::Relaxed);
    crate::install_vectors();
    !aborted && (pidr2 >> 4) & 0xf == 3
}

static PROBING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static ABORTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn probe_hook(e: &guest_rt::Exception, frame: &mut guest_rt::Frame) -> bool {
    // A synchronous data abort (EC 0x25) during the probe: skip the load.
    if PROBING.load(core::sync::atomic::Ordering::Relaxed) && e.vector == 4 && e.esr >> 26 == 0x25 {
        ABORTED.store(true, core::sync::atomic::Ordering::Relaxed);
        frame.elr += 4;
        return true;
    }
    false
}

/// Enables group 1 interrupts in the distributor.
pub fn init_dist() {
    write(GICD, 1 << 1);
}

/// Wakes vCPU `cpu`'s redistributor, makes SGI 1 and the virtual timer
/// group 1 and enabled, and turns this vCPU's CPU interface on (priority
/// mask open, group 1 enabled).
pub fn init_cpu(cpu: usize) {
    let rd = GICR + cpu * GICR_STRIDE;
    write(rd + GICR_WAKER, read(rd + GICR_WAKER) & !(1 << 1));
    let bits = (1 << BENCH_SGI) | (1 << VTIMER_PPI);
    write(rd + IGROUPR0, read(rd + IGROUPR0) | bits);
    write(rd + ISENABLER0, bits);
    // SAFETY: ICC_PMR_EL1 = 0xff (every priority passes), ICC_IGRPEN1_EL1 = 1.
    unsafe {
        asm!(
            "mov {0}, #0xff",
            "msr s3_0_c4_c6_0, {0}",
            "mov {0}, #1",
            "msr s3_0_c12_c12_7, {0}",
            "isb",
            out(reg) _,
            options(nostack),
        );
    }
}

/// ICC_IAR1_EL1.
pub fn ack() -> u32 {
    let v: u64;
    // SAFETY: acknowledges the highest-priority pending interrupt.
    unsafe { asm!("mrs {0}, s3_0_c12_c12_0", out(reg) v, options(nostack)) };
    v as u32
}

/// ICC_EOIR1_EL1 (EOImode 0: also deactivates).
pub fn eoi(intid: u32) {
    // SAFETY: ends the interrupt acknowledged by `ack`.
    unsafe { asm!("msr s3_0_c12_c12_1, {0}", "isb", in(reg) u64::from(intid), options(nostack)) };
}

/// Sends SGI `intid` to vCPU `target` (Aff0; affinity 0.0.0.target).
#[inline(always)]
pub fn sgi(target: u32, intid: u32) {
    let v = (u64::from(intid) << 24) | (1 << target);
    // SAFETY: ICC_SGI1R_EL1 (trapped: the hypervisor's vGIC sends it).
    unsafe { asm!("msr s3_0_c12_c11_5, {0}", "isb", in(reg) v, options(nostack)) };
}
