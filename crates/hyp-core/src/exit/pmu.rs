//! A normal VM's PMU as the exit handlers see it: its trapped accesses
//! (`vcpu::pmu` performs them) and the PMUVer its ID_AA64DFR0_EL1 reads.

use crate::arch::esr::SysRegEnc;
use crate::arch::gic;
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use crate::vcpu::inject::Injected;
use crate::vcpu::pmu::{self, GuestReg, PmuInfo};
use crate::vcpu::Who;
use crate::vm::state;
use barriers::GuestPending;
use vgic::Vgic;

/// A normal VM's vCPU's access to PMU register `reg` (`write`: an MSR's
/// value, else an MRS into `rt`): performed and stepped past, or an UNDEF.
#[allow(clippy::too_many_arguments)]
#[cold]
#[inline(never)]
pub fn access(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    vg: Option<&Vgic>,
    reg: GuestReg,
    rt: u8,
    write: Option<u64>,
    pending: &mut GuestPending,
) {
    match pmu::trap(c, ctx, reg, write, pending) {
        Ok(v) => {
            if write.is_none() && rt != 31 {
                ctx.regs.x[rt as usize] = v;
            }
            ctx.regs.pc = ctx.regs.pc.wrapping_add(4);
        }
        Err(_) => super::effects::inject_into(c, ctx, Injected::Undefined, pending),
    }
    // The access may have lowered (or, enabling, raised) the overflow level.
    if let (Some(g), Some(vg), Who::Guest { vcpu, .. }) = (gic::phys(), vg, who) {
        pmu::sync_level(c, g, vg, vcpu, pending);
    }
}

/// ID register `enc` as `who` reads it, from its sanitised value: in
/// ID_AA64DFR0_EL1, PMUVer for a VM that has the PMU.
pub fn id_read(who: Who, enc: SysRegEnc, sanitised: u64) -> u64 {
    if (enc.crm, enc.op2) == (5, 0) {
        pmu::dfr0_for_guest(sanitised, guest_pmu(who))
    } else {
        sanitised
    }
}

/// The PMU `who` gets: a normal VM's vCPU on a CPU with one (pKVM gives
/// none to the host or to protected VMs).
#[cold]
#[inline(never)]
fn guest_pmu(who: Who) -> Option<PmuInfo> {
    let Who::Guest { slot, .. } = who else {
        return None;
    };
    let normal = state::control()
        .vm(slot as u64 + 1)
        .is_ok_and(|vm| !vm.protected);
    pmu::info().filter(|_| normal)
}
