//! Devices of the board the host may assign to a VM (DEVICE_ASSIGN): their
//! MMIO mapped into the VM, their SPI forwarded to its vGIC.

use crate::arch::gic;
use crate::platform::AssignableDevice;
use crate::vcpu::ctx::Cpu;
use crate::vm::control::HostError;
use crate::vm::state::{self, control};
use barriers::vttbr::Vttbr;
use barriers::GuestPending;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use spin::Once;
use vgic::Vgic;

/// The board's assignable devices.
pub(crate) static ASSIGNABLE: Once<&'static [AssignableDevice]> = Once::new();
/// Most assignable devices tracked.
const MAX_ASSIGNED: usize = 4;
/// Per assignable device: the handle of the VM it belongs to (0: none).
static ASSIGNED: [AtomicU64; MAX_ASSIGNED] = [const { AtomicU64::new(0) }; MAX_ASSIGNED];
/// Bit i set: assignable device i's SPI is disabled at the physical
/// distributor while the VM handles it (cleared, and the SPI re-enabled,
/// once the line drops). One word, so a guest entry with no such device
/// (the common case) costs [`resample`] one load.
static MASKED: AtomicU8 = AtomicU8::new(0);
const _: () = assert!(MAX_ASSIGNED <= 8, "MASKED holds one bit per device");

fn assignable() -> &'static [AssignableDevice] {
    let a = ASSIGNABLE.get().copied().unwrap_or(&[]);
    &a[..a.len().min(MAX_ASSIGNED)]
}

/// DEVICE_ASSIGN: maps one of the board's assignable devices into VM
/// `handle` (same address) and routes its SPI to the VM's vGIC. A device
/// goes to one VM at a time, and only to a VM with a vGIC.
pub fn assign(
    vttbr: &mut Vttbr,
    handle: u64,
    pa: u64,
    size: u64,
    intid: u64,
) -> Result<(), HostError> {
    let (i, dev) = assignable()
        .iter()
        .enumerate()
        .find(|(_, d)| d.region.base == pa && d.region.size == size && u64::from(d.intid) == intid)
        .ok_or(HostError::Invalid)?;
    // The check, the claim and the map under one hold of the VM's lock, so
    // the device goes to the VM that passed the check (not to another that
    // took the handle meanwhile).
    let mut claimed = false;
    let r = control().map_device_with(vttbr, handle, pa, pa, size, |vm| {
        if vm.vgic.get().is_none() {
            return Err(HostError::State);
        }
        // IRQ_DECLARE refuses these INTIDs, so the host never drives an
        // assigned device's line.
        ASSIGNED[i]
            .compare_exchange(0, handle, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| HostError::Denied)?;
        claimed = true;
        Ok(())
    });
    if let Err(e) = r {
        if claimed {
            ASSIGNED[i].store(0, Ordering::Release);
        }
        return Err(e);
    }
    MASKED.fetch_and(!(1 << i), Ordering::Release);
    if let Some(g) = gic::phys() {
        g.spi_setup(dev.intid);
    }
    log::info!(
        "VM {handle}: device {} assigned (SPI {})",
        dev.name,
        dev.intid
    );
    Ok(())
}

/// The INTIDs IRQ_DECLARE refuses: the board's assignable devices' (only
/// DEVICE_ASSIGN routes them) and the emulated UART's (the hypervisor
/// drives it, `vm::console_in`).
fn reserved_intids() -> ([u32; MAX_ASSIGNED + 1], usize) {
    let mut out = [hyp_abi::layout::UART_INTID; MAX_ASSIGNED + 1];
    let a = assignable();
    for (o, d) in out[1..].iter_mut().zip(a) {
        *o = d.intid;
    }
    (out, a.len() + 1)
}

/// IRQ_DECLARE: the host's devices of VM `handle` may raise SPI `intid`.
pub fn declare_spi(handle: u64, intid: u64) -> Result<(), HostError> {
    let (r, n) = reserved_intids();
    control().declare_spi(handle, intid, &r[..n])
}

/// IRQ_LINE: sets declared SPI `intid` of VM `handle` to `level`, kicks the
/// targeted vCPUs running on other CPUs, and returns those not running (for
/// the host to run).
pub fn irq_line(
    c: &Cpu<'_>,
    handle: u64,
    intid: u64,
    level: u64,
    pending: &mut GuestPending,
) -> Result<u8, HostError> {
    if level > 1 {
        return Err(HostError::Invalid);
    }
    let (kick, idle) = control().with_declared_spi(handle, intid, |vm, x| {
        let vg = x.vgic.get().ok_or(HostError::State)?;
        // An SPI ignores the vCPU argument; `intid` is an SPI (checked).
        let kick = vg
            .set_level(0, intid as u32, level == 1)
            .map_err(|_| HostError::Invalid)?;
        let mut idle = 0u8;
        for v in 0..vm.nr_vcpus.min(8) {
            if kick & (1 << v) != 0 && vm.vcpus[v].running_on.is_none() {
                idle |= 1 << v;
            }
        }
        Ok((kick, idle))
    })?;
    state::kick_vcpus(c, handle as usize - 1, usize::MAX, kick, pending);
    Ok(idle)
}

/// Takes back the devices of VM `handle` (destroyed).
pub fn unassign(handle: u64) {
    for (i, dev) in assignable().iter().enumerate() {
        if ASSIGNED[i].load(Ordering::Acquire) == handle {
            if let Some(g) = gic::phys() {
                g.spi_enable(dev.intid, false);
            }
            ASSIGNED[i].store(0, Ordering::Release);
        }
    }
}

/// A physical interrupt of an assigned device: disabled at the distributor
/// until its line drops, and raised as the same INTID in the owner's vGIC.
/// True when `intid` belonged to an assigned device.
pub fn forward_irq(c: &Cpu<'_>, intid: u32, pending: &mut GuestPending) -> bool {
    let Some(i) = assignable().iter().position(|d| d.intid == intid) else {
        return false;
    };
    let owner = ASSIGNED[i].load(Ordering::Acquire);
    if let Some(g) = gic::phys() {
        g.spi_enable(intid, false);
    }
    if owner == 0 {
        return true;
    }
    MASKED.fetch_or(1 << i, Ordering::Release);
    // The owner's vGIC, under its lock only to keep the VM alive meanwhile.
    let kick = control().vm(owner).map_or(0, |vm| {
        vm.extra()
            .vgic
            .get()
            .and_then(|vg| vg.set_level(0, intid, true).ok())
            .unwrap_or(0)
    });
    state::kick_vcpus(c, owner as usize - 1, usize::MAX, kick, pending);
    true
}

/// Before VM `slot` runs: for each of its devices whose interrupt was
/// forwarded, samples the line (the distributor's pending bit) into the
/// vGIC, and re-enables the physical SPI once the device dropped it.
#[inline]
pub fn resample(slot: usize, vg: &Vgic) {
    if MASKED.load(Ordering::Acquire) != 0 {
        resample_masked(slot, vg);
    }
}

/// [`resample`] while some device's SPI is masked.
#[inline(never)]
fn resample_masked(slot: usize, vg: &Vgic) {
    for (i, dev) in assignable().iter().enumerate() {
        if ASSIGNED[i].load(Ordering::Acquire) != slot as u64 + 1
            || MASKED.load(Ordering::Acquire) & (1 << i) == 0
        {
            continue;
        }
        let Some(g) = gic::phys() else {
            return;
        };
        let level = g.spi_pending(dev.intid);
        let _ = vg.set_level(0, dev.intid, level);
        if !level {
            MASKED.fetch_and(!(1 << i), Ordering::Release);
            g.spi_enable(dev.intid, true);
        }
    }
}
