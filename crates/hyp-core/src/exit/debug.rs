//! A guest's trapped debug-register access: performed on its own debug
//! state (`vcpu::debug::trap`), or refused with an UNDEF taken at the
//! instruction.

use super::effects::inject_into;
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use crate::vcpu::debug::{self, Access};
use crate::vcpu::inject::Injected;
use barriers::GuestPending;

/// The access `a`; `pc_step`: how far the PC already moved past it.
pub(super) fn access(
    c: &mut Cpu<'_>,
    ctx: &mut VcpuCtx,
    a: Access,
    pc_step: u64,
    pending: &mut GuestPending,
) {
    if !debug::trap(c, ctx, a, pending) {
        ctx.regs.pc = ctx.regs.pc.wrapping_sub(pc_step);
        inject_into(c, ctx, Injected::Undefined, pending);
    }
}
