//! The virtual PMU on the world switch and in trapped accesses: the
//! register effects of [`super`] on this CPU, and its PPI (AArch64 only).

use super::{access, info, irq_level, load, save, GuestReg, Hw, PmuInfo, Undefined, PMU_PPI};
use crate::arch::gic;
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use barriers::pmu::PmuReg;
use barriers::GuestPending;

/// This CPU's PMU (read at every CPU's bring-up; PMCR_EL0 only where
/// ID_AA64DFR0_EL1 says it exists, as it is UNDEFINED otherwise), recorded
/// for every vCPU; returns the MDCR_EL2 fields it needs ([`PmuInfo::mdcr`]).
pub fn probe() -> u64 {
    let dfr0 = crate::arch::sysreg::read_id(5, 0);
    // PMCR_EL0 is read only where the PMU exists (PMUVer, with any N).
    let pmu = PmuInfo::new(dfr0, 1 << 11).is_some();
    let p = if pmu {
        PmuInfo::new(dfr0, PmuReg::Pmcr.read())
    } else {
        None
    };
    super::set_info(p);
    super::mdcr_fields()
}

/// The physical PMU interrupt was taken: the loaded vCPU's PMU overflowed.
/// The PPI is masked until its level, which the run loop gives the vGIC
/// now ([`sync_level`]), drops. With none loaded the PMU is quiesced and
/// its level low: nothing to do.
pub fn overflow_irq(c: &mut Cpu<'_>, g: &gic::Phys) {
    if c.pmu_loaded {
        g.ppi_enable(c.idx, gic::PMU_PPI, false);
        c.pmu_masked = true;
    }
}

/// VCPU_RUN of a vCPU that has used the PMU: its state goes into the
/// hardware for the run. Nothing for one that has not.
#[inline(always)]
pub fn run_start(c: &mut Cpu<'_>, ctx: &VcpuCtx, pending: &mut GuestPending) {
    if ctx.pmu.used {
        start(c, ctx, pending);
    }
}

#[cold]
#[inline(never)]
fn start(c: &mut Cpu<'_>, ctx: &VcpuCtx, pending: &mut GuestPending) {
    if let Some(p) = info() {
        load(&mut Hw(pending), &ctx.pmu, p);
        c.pmu_loaded = true;
    }
}

/// The end of a run: the vCPU's PMU leaves the hardware (saved, and the
/// hardware quiesced) so nobody else counts on it or sees its
/// overflows; the physical PPI, if masked for it, is enabled again (its
/// level is low now). `pending`: the host's entry ERET discharges it.
#[inline(always)]
pub fn run_end(c: &mut Cpu<'_>, ctx: &mut VcpuCtx, pending: &mut GuestPending) {
    if c.pmu_loaded {
        end(c, ctx, pending);
    }
}

#[cold]
#[inline(never)]
fn end(c: &mut Cpu<'_>, ctx: &mut VcpuCtx, pending: &mut GuestPending) {
    if let Some(p) = info() {
        save(&mut Hw(pending), &mut ctx.pmu, p);
    }
    c.pmu_loaded = false;
    if c.pmu_masked {
        if let Some(g) = gic::phys() {
            g.ppi_enable(c.idx, gic::PMU_PPI, true);
        }
        c.pmu_masked = false;
    }
}

/// A trapped access of a normal VM's vCPU to PMU register `reg`
/// (`write`: the value of an MSR): its first one loads the reset state.
/// Returns the value an MRS reads.
///
/// # Errors
///
/// [`Undefined`]: no PMU, or what [`access`] refuses.
pub fn trap(
    c: &mut Cpu<'_>,
    ctx: &mut VcpuCtx,
    reg: GuestReg,
    write: Option<u64>,
    pending: &mut GuestPending,
) -> Result<u64, Undefined> {
    let p = info().ok_or(Undefined)?;
    if !c.pmu_loaded {
        ctx.pmu.used = true;
        load(&mut Hw(pending), &ctx.pmu, p);
        c.pmu_loaded = true;
    }
    // PSTATE.M[3:2]: the Exception level the access came from.
    let el = ((ctx.regs.pstate >> 2) & 3) as u8;
    access(&mut Hw(pending), &mut ctx.pmu, p, reg, write, el)
}

/// The overflow level of vCPU `vcpu` (vGIC `vg`), whose PMU is loaded,
/// becomes its virtual PPI's, and once it is low the physical PPI is
/// enabled again. Called where the level can change: the physical PPI
/// was taken (only the hardware raises it), and after each of the
/// vCPU's PMU accesses (only those lower it: every one traps). So no
/// guest entry pays for sampling it.
#[cold]
#[inline(never)]
pub fn sync_level(
    c: &mut Cpu<'_>,
    g: &gic::Phys,
    vg: &vgic::Vgic,
    vcpu: usize,
    pending: &mut GuestPending,
) {
    if !c.pmu_loaded {
        return;
    }
    let level = info().is_some_and(|p| irq_level(&mut Hw(pending), p));
    let _ = vg.set_level(vcpu, PMU_PPI, level);
    if c.pmu_masked && !level {
        g.ppi_enable(c.idx, gic::PMU_PPI, true);
        c.pmu_masked = false;
    }
}
