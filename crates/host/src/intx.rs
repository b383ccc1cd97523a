//! The host's device interrupts: the INTx lines of its PCIe functions, which the hypervisor
//! routes to host vCPU 0 (physical CPU 0) as hardware-linked virtual interrupts (`BootInfo.pci
//! .intx`; `hyp-core` `vm/host_intx.rs`, `vgic::HostIf`). With HCR_EL2.IMO set, the host's
//! `ICC_*_EL1` accesses reach its virtual CPU interface: acknowledging one (`ICC_IAR1_EL1`)
//! makes it active, and its EOI (`ICC_EOIR1_EL1`, EOImode 0) deactivates it and the physical
//! line with it; a line its device still asserts comes again.
//!
//! How the host takes them: [`serve`] reads `ICC_IAR1_EL1` from the serving loop of host CPU 0,
//! after every VCPU_RUN, instead of taking an IRQ exception. The read acknowledges a pending
//! virtual interrupt with PSTATE.I still masked, so no handler ever interrupts the host's own
//! code: the devices' state sits behind spin locks (`linuxdev`) that the serving loop and the
//! MMIO exits on other CPUs take, and an IRQ handler on a CPU that already holds one would
//! deadlock (an IRQ vector that only noted the interrupt would still need the loop to do the
//! work). The latency is the same: the loop comes back after every VCPU_RUN, and a guest that
//! runs on CPU 0 when a line fires is made to yield by the hypervisor.
//!
//! Each acknowledged INTID goes to the handlers [`register`]ed for it (devices may share a
//! line), then is ended. An INTID nobody registered is ended at once and counted.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Most handlers (one per device).
const MAX_HANDLERS: usize = 4;
/// At most this many interrupts per [`serve`] call, so a line that keeps coming cannot keep
/// the loop from running vCPUs.
const PER_SERVE: usize = 8;
/// INTIDs 1020..1023 are special (1023: nothing pending).
const SPECIAL: u64 = 1020;

/// Interrupts acknowledged, per handler slot, and ones nobody handles.
static TAKEN: AtomicU64 = AtomicU64::new(0);
static UNHANDLED: AtomicU64 = AtomicU64::new(0);
/// [`init`] ran: the host has device interrupts (without them, on GICv2 say,
/// its `ICC_*` registers may not even exist).
static ON: AtomicBool = AtomicBool::new(false);

/// A device's interrupt handler: called with the line acknowledged and before its EOI, so it
/// reads (and so clears) the device's interrupt status first, then serves the device.
pub type Handler = fn();

static HANDLERS: spin::Mutex<[(u32, Option<Handler>); MAX_HANDLERS]> =
    spin::Mutex::new([(0, None); MAX_HANDLERS]);

/// Turns on the virtual CPU interface's group 1 with no priority mask on this CPU (CPU 0). Only
/// once the hypervisor gave the host INTx lines (`BootInfo.pci.intx`), which it does on GICv3.
pub fn init() {
    // SAFETY: ICC_PMR_EL1 (S3_0_C4_C6_0) and ICC_IGRPEN1_EL1 (S3_0_C12_C12_7) reach the host's
    // virtual CPU interface (ICH_VMCR_EL2.VPMR and VENG1, IHI 0069 "ICH_VMCR_EL2"): they only
    // decide which virtual interrupts this vCPU is signalled. The ISB makes them take effect
    // before the first acknowledge (IHI 0069, "Observability of the effects of accesses to the
    // GIC registers").
    unsafe {
        core::arch::asm!(
            "msr s3_0_c4_c6_0, {pmr}",
            "msr s3_0_c12_c12_7, {en}",
            "isb",
            pmr = in(reg) 0xffu64,
            en = in(reg) 1u64,
            options(nostack, preserves_flags)
        );
    }
    ON.store(true, Ordering::Release);
}

/// Calls `handler` for every interrupt on line `intid`.
pub fn register(intid: u32, handler: Handler) {
    let mut h = HANDLERS.lock();
    match h.iter_mut().find(|(_, f)| f.is_none()) {
        Some(slot) => *slot = (intid, Some(handler)),
        None => crate::fail(format_args!("intx: more than {MAX_HANDLERS} handlers")),
    }
}

/// `ICC_IAR1_EL1`: acknowledges the host's highest-priority pending virtual interrupt.
pub fn acknowledge() -> u64 {
    let iar: u64;
    // SAFETY: reads ICC_IAR1_EL1 (S3_0_C12_C12_0), the virtual CPU interface's (IMO set): the
    // interrupt becomes active, nothing else changes. The DSB completes the read before the
    // handler's device accesses (Linux `gic_read_iar` does the same).
    unsafe {
        core::arch::asm!(
            "mrs {iar}, s3_0_c12_c12_0",
            "dsb sy",
            iar = out(reg) iar,
            options(nostack, preserves_flags)
        );
    }
    iar & 0xff_ffff
}

/// `ICC_EOIR1_EL1`: ends `intid` (EOImode 0: priority drop and deactivation).
pub fn end(intid: u64) {
    // SAFETY: writes ICC_EOIR1_EL1 (S3_0_C12_C12_1) of the virtual CPU interface; the ISB makes
    // the deactivation take effect before the next acknowledge.
    unsafe {
        core::arch::asm!(
            "msr s3_0_c12_c12_1, {v}",
            "isb",
            v = in(reg) intid,
            options(nostack, preserves_flags)
        );
    }
}

/// Takes and serves the pending device interrupts (CPU 0 only: the lines go to host vCPU 0),
/// at most [`PER_SERVE`] of them.
pub fn serve() {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    for _ in 0..PER_SERVE {
        let intid = acknowledge();
        if intid >= SPECIAL {
            return;
        }
        TAKEN.fetch_add(1, Ordering::Relaxed);
        let mut any = false;
        // Copied out: a handler may take other locks, not this one.
        let handlers = *HANDLERS.lock();
        for (i, f) in handlers {
            if let (true, Some(f)) = (u64::from(i) == intid, f) {
                f();
                any = true;
            }
        }
        if !any {
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
        }
        end(intid);
    }
}

/// Interrupts taken, and of those ones no handler was registered for.
pub fn counts() -> (u64, u64) {
    (
        TAKEN.load(Ordering::Relaxed),
        UNHANDLED.load(Ordering::Relaxed),
    )
}
