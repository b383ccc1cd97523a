//! The effects of the guest calls whose answers need more than the
//! decision: SMCCC TRNG (this CPU's random number generator), and the
//! lookup of the exiting guest's VM in the control state. Called from
//! `effects::apply`.

use crate::arch::sysreg;
use crate::calls::trng::{self, TrngCall};
use crate::vcpu::ctx::VcpuCtx;
use crate::vcpu::Who;
use crate::vm::state;

/// An SMCCC TRNG call: answered with draws of this CPU's `RNDRRS`, or
/// NOT_SUPPORTED on a CPU without FEAT_RNG.
pub(super) fn trng(ctx: &mut VcpuCtx, t: TrngCall) {
    let mut draw = sysreg::rndrrs;
    let source: Option<&mut dyn FnMut() -> Option<u64>> = sysreg::has_rng().then_some(&mut draw);
    ctx.regs.x[..4].copy_from_slice(&trng::answer(t, source));
}

/// `f` on the control state for the exiting guest's handle; `None` for the host.
pub(super) fn guest_vm<T>(who: Who, f: impl FnOnce(&state::Ctl, u64) -> T) -> Option<T> {
    match who {
        Who::Host => None,
        Who::Guest { slot, .. } => Some(f(state::control(), slot as u64 + 1)),
    }
}
