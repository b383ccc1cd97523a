//! The virtual GIC on this CPU: the list registers (GICv3 system registers
//! or the GIC-400's GICH frame), loaded before each guest entry, and the
//! host vCPU's own virtual interface (its hardware-linked INTx interrupts),
//! put aside while it runs a guest.

use crate::arch::gic::{self, Phys};
use crate::arch::switch::CpuSync;
use crate::vcpu::ctx::{Cpu, VcpuCtx, TIMER_P, TIMER_V};
use barriers::{regs, GuestPending};
use core::cell::Cell;
use vgic::Vgic;

/// This CPU's list registers, whichever GIC the board has, and what its
/// control register holds (`CpuSync::vgic_hcr`).
pub struct Lrs<'a> {
    regs: Regs<'a>,
    hcr: &'a Cell<u32>,
}

enum Regs<'a> {
    V3(vgic::V3Sysregs<'a, barriers::sync::GicSre>),
    V2(vgic::V2Mmio),
}

impl<'a> Lrs<'a> {
    /// The backend for this CPU; GICv3 writes go into `pending` (guest-only
    /// tokens for the entry ERET).
    pub fn new(sync: &'a CpuSync, pending: &'a mut GuestPending) -> Option<Self> {
        Self::of(gic::phys()?, sync, pending)
    }

    /// [`Lrs::new`] for the physical GIC `g` (`gic::phys`, looked up once
    /// by a caller that makes several).
    #[inline]
    pub fn of(g: &Phys, sync: &'a CpuSync, pending: &'a mut GuestPending) -> Option<Self> {
        let regs = match (g, sync.gic.as_ref()) {
            (Phys::V3 { .. }, Some(sre)) => {
                // SAFETY: no ICH_HCR_EL2 trap is relied on: SGI writes trap
                // through HCR_EL2.IMO, GICD/GICR accesses through stage 2;
                // `nr_lrs` is this CPU's ICH_VTR_EL2 count (`el2_on`).
                let b = unsafe { vgic::V3Sysregs::with_lrs(sre, pending, 0, sync.nr_lrs) };
                Regs::V3(b)
            }
            (Phys::V2 { gich, .. }, _) => {
                // SAFETY: `gich` is the board's GICH frame, which EL2 maps
                // as device memory; on GIC-400 it is banked per CPU, so this
                // CPU's backend is its only user.
                let b = unsafe { vgic::V2Mmio::new(*gich as usize) };
                Regs::V2(b)
            }
            (Phys::V3 { .. }, None) => return None,
        };
        Some(Lrs {
            regs,
            hcr: &sync.vgic_hcr,
        })
    }
}

macro_rules! lrs_dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &mut $self.regs {
            Regs::V3($b) => $e,
            Regs::V2($b) => $e,
        }
    };
}

impl vgic::ListRegs for Lrs<'_> {
    fn nr_lrs(&self) -> usize {
        match &self.regs {
            Regs::V3(b) => b.nr_lrs(),
            Regs::V2(b) => b.nr_lrs(),
        }
    }
    fn read_lr(&mut self, i: usize) -> vgic::Lr {
        lrs_dispatch!(self, b => b.read_lr(i))
    }
    fn write_lr(&mut self, i: usize, lr: &vgic::Lr) {
        lrs_dispatch!(self, b => b.write_lr(i, lr))
    }
    fn empty_lrs(&mut self) -> u16 {
        lrs_dispatch!(self, b => b.empty_lrs())
    }
    /// Skipped when the register already holds `hcr`: it is this CPU's
    /// (banked per CPU on GIC-400, a system register on GICv3), every write
    /// of it comes through here (with no trap bits added on GICv3: `of`), and
    /// the cache starts unknown whenever the CPU comes up (`el2_on`), so the
    /// cached value is the register's. Most entries write the same enable bit
    /// as the last one.
    fn write_hcr(&mut self, hcr: u32) {
        if self.hcr.get() == hcr {
            return;
        }
        self.hcr.set(hcr);
        lrs_dispatch!(self, b => b.write_hcr(hcr))
    }
    fn read_vmcr(&mut self) -> u32 {
        lrs_dispatch!(self, b => b.read_vmcr())
    }
    fn write_vmcr(&mut self, vmcr: u32) {
        lrs_dispatch!(self, b => b.write_vmcr(vmcr))
    }
    fn read_aprs(&mut self) -> [u32; 2] {
        lrs_dispatch!(self, b => b.read_aprs())
    }
    fn write_aprs(&mut self, aprs: [u32; 2]) {
        lrs_dispatch!(self, b => b.write_aprs(aprs))
    }
}

/// Before entering a guest on a board with GIC `g` (after its devices' lines were sampled,
/// `vm::devices::resample`): samples its virtual timer's output into the
/// vGIC (level-sensitive PPI 27; PPI 30 for the physical timer,
/// `vcpu::ptimer`), re-enables the physical timer PPI once the
/// level dropped, and loads the list registers. Inlined into the run loop,
/// its one caller, on every guest entry.
#[inline(always)]
pub fn vgic_before_entry(
    c: &mut Cpu<'_>,
    g: &Phys,
    ctx: &mut VcpuCtx,
    vg: &Vgic,
    pending: &mut GuestPending,
) {
    // CNTV_CTL_EL0: ENABLE (bit 0), IMASK (bit 1), ISTATUS (bit 2).
    let ctl = regs::CntvCtlEl0::read(&c.sync.hcr);
    let level = ctl & 0b111 == 0b101;
    // A line that was low and stays low changes nothing in the vGIC
    // (`Vgic::set_level`), so it is driven only while it is or was high
    // (`VcpuCtx::vtimer_high` starts true: the first entry after a reset
    // always syncs); the flush drives it, under the lock it takes anyway.
    let line = (level || ctx.vtimer_high).then_some((vgic::VTIMER_PPI, level));
    ctx.vtimer_high = level;
    // The virtual timer's PPI alone masked (the common case) inline; with
    // the physical timer's to sample (`vcpu::ptimer`) out of line.
    let masked = c.timers_masked;
    if masked == TIMER_V {
        if !level {
            g.ppi_enable(c.idx, gic::VTIMER_PPI, true);
            c.timers_masked = 0;
        }
    } else if masked != 0 {
        timers_masked(c, g, level, vg, ctx.vif.vcpu());
    }
    match Lrs::of(g, c.sync, pending) {
        Some(mut lrs) => ctx.vif.flush_with_line(vg, &mut lrs, line),
        None => {
            if let Some((intid, level)) = line {
                let _ = vg.set_level(ctx.vif.vcpu(), intid, level);
            }
        }
    }
}

/// After a guest exit on a board with GIC `g`: folds the list registers
/// back into the vGIC (`vgic::VcpuIf::sync`), the backend built only when
/// the last entry loaded any. Inlined into the run loop, its one caller.
#[inline(always)]
pub fn vgic_after_exit(
    c: &Cpu<'_>,
    g: &Phys,
    ctx: &mut VcpuCtx,
    vg: &Vgic,
    pending: &mut GuestPending,
) {
    ctx.vif.sync_with(vg, || Lrs::of(g, c.sync, pending));
}

/// [`vgic_before_entry`] with the physical timer's level to sample
/// (`Cpu::timers_masked` has TIMER_P), and maybe the virtual timer's PPI
/// masked (its level `vlevel`).
#[cold]
#[inline(never)]
fn timers_masked(c: &mut Cpu<'_>, g: &Phys, vlevel: bool, vg: &Vgic, vcpu: usize) {
    if c.timers_masked & TIMER_V != 0 && !vlevel {
        g.ppi_enable(c.idx, gic::VTIMER_PPI, true);
        c.timers_masked &= !TIMER_V;
    }
    if c.timers_masked & TIMER_P != 0 {
        crate::vcpu::ptimer::sample(c, g, vg, vcpu);
    }
}

/// The host's list registers on GICv3 (`None` on GICv2, where the host has
/// no virtual CPU interface: `vm::host_intx` links nothing there).
fn host_lrs<'a>(sync: &'a CpuSync, pending: &'a mut GuestPending) -> Option<Lrs<'a>> {
    let g = gic::phys()?;
    if g.version() != vgic::Version::V3 {
        return None;
    }
    Lrs::of(g, sync, pending)
}

/// VCPU_RUN loads a guest vCPU (`vif`: its virtual CPU interface, if its VM
/// has a vGIC): the host's virtual interface state leaves the CPU
/// (`vgic::HostIf::save`, GICv3), then the guest's VMCR and active priorities
/// are loaded (`vgic::VcpuIf::restore`). Both sets of writes go into the
/// guest's `pending`: its entry ERET is what they must precede.
#[inline]
pub fn load_guest(c: &mut Cpu<'_>, vif: Option<&vgic::VcpuIf>, pending: &mut GuestPending) {
    let sync = c.sync;
    let Some(g) = gic::phys() else {
        return;
    };
    let Some(mut lrs) = Lrs::of(g, sync, pending) else {
        return;
    };
    if g.version() == vgic::Version::V3 {
        c.host_if.save(&mut lrs, vif.is_some());
    }
    if let Some(vif) = vif {
        vif.restore(&mut lrs);
    }
}

/// The host is loaded again (after a guest's run, whose own state is saved,
/// or at its first entry): its virtual interface state comes back.
#[inline]
pub fn host_restore(c: &mut Cpu<'_>, pending: &mut GuestPending) {
    if c.host_if.restore_idle() {
        return;
    }
    let sync = c.sync;
    if let Some(mut lrs) = host_lrs(sync, pending) {
        c.host_if.restore(&mut lrs);
    }
}

/// Makes host INTx line `intid` (acknowledged, priority dropped, still
/// active) pending for the host vCPU of this CPU, whether the host or a guest
/// is loaded.
///
/// # Errors
///
/// No list register free, or no GICv3: the caller deactivates it.
pub fn host_inject(
    c: &mut Cpu<'_>,
    intid: u32,
    pending: &mut GuestPending,
) -> Result<(), vgic::host::InjectError> {
    let sync = c.sync;
    match host_lrs(sync, pending) {
        Some(mut lrs) => c.host_if.inject(intid, &mut lrs),
        None => Err(vgic::host::InjectError::NoInterface),
    }
}
