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
