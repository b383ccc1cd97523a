//! `attack=intx`: the host tries to use its device-interrupt path to reach interrupts that are
//! not its own (`tests/tests/hostile_host.rs`).
//!
//! The host drives QEMU's virtio-blk-pci with its used-buffer interrupts on, so every request
//! raises the function's INTx line, which the hypervisor hands to host vCPU 0 as a
//! hardware-linked virtual interrupt. Each round, on host CPU 0, with its virtual CPU interface in
//! EOImode 1 (EOIR drops the priority, DIR deactivates):
//!
//! 1. a disk read raises the line; the host acknowledges it (`ICC_IAR1_EL1`) and drops its
//!    priority, or (odd rounds) leaves it pending and runs guest-timer's vCPUs on this CPU, then
//!    acknowledges it: a pending interrupt survives the guest's runs;
//! 2. it writes `ICC_EOIR1_EL1` and `ICC_DIR_EL1` with every INTID it was not given (the
//!    hypervisor's kick SGI, maintenance, EL2 timer and virtual timer PPIs, the UART's and RTC's
//!    SPIs, a guest SPI, the other INTx lines), in EOImode 1 and in EOImode 0;
//! 3. it runs guest-timer (1 ms virtual-timer ticks on both vCPUs, which counts any other
//!    interrupt and then fails) on this CPU while its own interrupt is active;
//! 4. its interrupt must still be active: the line is still asserted, so had anything
//!    deactivated it, it would be pending again; then the host deactivates it itself, and it
//!    must come again (the device still asserts it); then the host reads the device's interrupt
//!    status (the line drops), ends it, and it must not come again.
//!
//! Any interrupt other than its own that the host ever acknowledges is counted.

use crate::intx::{acknowledge, end};
use crate::many;
use guest_rt::println;
use hyp_abi::BootInfo;

/// Rounds of the attack.
const ROUNDS: u32 = 20;
/// How long the host waits for its interrupt to arrive (or not), in ms.
const WAIT_MS: u64 = 50;
/// VCPU_RUN calls per round (the guest's two vCPUs in turn).
const RUNS: u64 = 6;

/// `ICC_DIR_EL1` (S3_0_C12_C11_1), of the host's virtual CPU interface.
fn deactivate(intid: u32) {
    // SAFETY: a write to the virtual CPU interface (HCR_EL2.IMO set); the ISB orders it before
    // the next access of this interface.
    unsafe {
        core::arch::asm!(
            "msr s3_0_c12_c11_1, {v}",
            "isb",
            v = in(reg) u64::from(intid),
            options(nostack, preserves_flags)
        );
    }
}

/// `ICC_CTLR_EL1.EOImode` (bit 1) of the host's virtual CPU interface (ICH_VMCR_EL2.VEOIM).
fn eoi_mode(split: bool) {
    // SAFETY: as `deactivate`; the other fields of ICV_CTLR_EL1 are 0 at reset (CBPR, VHM).
    unsafe {
        core::arch::asm!(
            "msr s3_0_c12_c12_4, {v}",
            "isb",
            v = in(reg) u64::from(split) << 1,
            options(nostack, preserves_flags)
        );
    }
}

/// `ICC_HPPIR1_EL1` (S3_0_C12_C12_2): the highest-priority pending interrupt, not acknowledged.
fn highest_pending() -> u64 {
    let v: u64;
    // SAFETY: reads the virtual CPU interface; no side effect.
    unsafe {
        core::arch::asm!(
            "mrs {v}, s3_0_c12_c12_2",
            v = out(reg) v,
            options(nostack, preserves_flags)
        );
    }
    v & 0xff_ffff
}

/// Waits up to [`WAIT_MS`] for `cond`.
fn within(mut cond: impl FnMut() -> bool) -> bool {
    guest_rt::gic::wait_until(WAIT_MS, &mut cond)
}

/// The attack (see the module's text).
pub fn intx(info: &BootInfo) {
    use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
    let Some(mut pci) = crate::pci::init(info) else {
        crate::fail(format_args!("attack intx: the host has no PCIe"));
    };
    let Some(df) = pci.blk else {
        crate::fail(format_args!("attack intx: no virtio-blk-pci device"));
    };
    let Some(mine) = pci.intx(df) else {
        crate::fail(format_args!("attack intx: {df} has no INTx line"));
    };
    let mut blk = match VirtIOBlk::<crate::pci::HostHal, _>::new(pci.transport(df)) {
        Ok(b) => b,
        Err(e) => crate::fail(format_args!("attack intx: virtio-blk: {e:?}")),
    };
    crate::intx::init();
    let Some(module) = info.modules().iter().find(|m| m.name() == "guest-timer") else {
        crate::fail(format_args!("attack intx: no guest-timer image"));
    };
    let (h, entry) = many::load(module, true, 2);
    // Through hostif: a protected VM's first VCPU_INIT takes pages for its
    // firmware, topped up as needed.
    if let Err(e) = crate::hostif::vcpu_init(h, 0, entry, h) {
        crate::fail(format_args!("attack intx: VCPU_INIT: {e:?}"));
    }
    // The INTIDs it was not given.
    let mut foreign = alloc::vec![0u32, 25, 26, 27, 33, 34, 48];
    foreign.extend(
        info.pci
            .intx
            .iter()
            .copied()
            .filter(|&i| i != mine && i != 0),
    );
    println!(
        "host: attack intx: {df} on INTID {mine}; EOIR and DIR of {foreign:?} while it is active"
    );
    let (mut run, mut off) = (0u64, false);
    let mut guest = |n: u64| {
        for _ in 0..n {
            if off {
                return;
            }
            let r = crate::hostif::call_full(hyp_abi::VCPU_RUN, [h, run % 2, 0, 0]);
            run += 1;
            off = r[0] == hyp_abi::exit::SYSTEM_OFF;
        }
    };
    let (mut taken, mut others) = (0u32, 0u32);
    let mut take = |want_mine: bool| {
        let mut got = 1023;
        let arrived = within(|| {
            got = acknowledge();
            got < 1020
        });
        if arrived && got == u64::from(mine) {
            taken += 1;
        } else if arrived {
            others += 1;
        }
        arrived && (got == u64::from(mine)) == want_mine
    };
    let (mut survived, mut active, mut again, mut quiet) = (0, 0, 0, 0);
    let mut buf = [0u8; SECTOR_SIZE];
    eoi_mode(true);
    for round in 0..ROUNDS {
        if blk.read_blocks(round as usize, &mut buf).is_err() {
            crate::fail(format_args!("attack intx: disk read {round} failed"));
        }
        if round % 2 == 1 {
            // Pending through the guest's runs on this CPU.
            if !within(|| highest_pending() == u64::from(mine)) {
                crate::fail(format_args!("attack intx: round {round}: no interrupt"));
            }
            guest(RUNS);
            survived += u32::from(highest_pending() == u64::from(mine));
        }
        if !take(true) {
            crate::fail(format_args!(
                "attack intx: round {round}: INTID {mine} not taken"
            ));
        }
        // Priority drop only (EOImode 1): the interrupt stays active.
        end(u64::from(mine));
        for split in [true, false] {
            eoi_mode(split);
            for &id in &foreign {
                end(u64::from(id));
                deactivate(id);
            }
        }
        eoi_mode(true);
        guest(RUNS);
        // Still active: the device still asserts the line, so a deactivation anywhere would
        // have made it pending again.
        active += u32::from(!within(|| highest_pending() < 1020));
        deactivate(mine);
        again += u32::from(take(true));
        end(u64::from(mine));
        // The device's status read drops the line; then it must stay quiet.
        let _ = blk.ack_interrupt();
        deactivate(mine);
        quiet += u32::from(!within(|| highest_pending() < 1020));
    }
    eoi_mode(false);
    let odd = ROUNDS / 2;
    println!(
        "host: attack intx: {ROUNDS} rounds: INTID {mine} taken {taken} times, other INTIDs taken {others}; pending through guest runs {survived}/{odd}; still active after the foreign EOIRs/DIRs and guest runs {active}/{ROUNDS}; came again while asserted {again}/{ROUNDS}; quiet once its status was read {quiet}/{ROUNDS}"
    );
    if !off {
        many::power_off(h, 2);
    }
    if let Err(e) = crate::hostif::destroy_vm(h) {
        crate::fail(format_args!("attack intx: VM_DESTROY: {e:?}"));
    }
}
