//! The effects of the guest calls whose answers need more than the
//! decision: SMCCC TRNG (this CPU's random number generator), the pKVM
//! memory and MMIO-guard calls and the firmware's measurement (the VM's
//! control state). Called from `effects::apply`.

use crate::arch::sysreg;
use crate::calls::smccc as call;
use crate::calls::trng::{self, TrngCall};
use crate::stats::{Counts, GuestCall};
use crate::vcpu::ctx::Cpu;
use crate::vcpu::ctx::VcpuCtx;
use crate::vcpu::Who;
use crate::vm::control::firmware;
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

/// x0 of a pKVM call that did (`SUCCESS`) or did not (`INVALID_PARAMETER`)
/// change anything.
fn pkvm_answer(done: Option<bool>) -> u64 {
    if done == Some(true) {
        call::SMCCC_RET_SUCCESS
    } else {
        call::SMCCC_RET_INVALID_PARAMETER
    }
}

/// MMIO_GUARD of the granule at `ipa`, counted in the VM's `stats` when
/// it is accepted.
pub(super) fn mmio_guard(who: Who, ctx: &mut VcpuCtx, stats: &Counts, ipa: u64) {
    let done = guest_vm(who, |ctl, h| ctl.mmio_guard(h, ipa).is_ok());
    if done == Some(true) {
        stats.guest_call(GuestCall::MmioGuard);
    }
    ctx.regs.x[0] = pkvm_answer(done);
}

/// MEM_SHARE (`share`) or MEM_UNSHARE of the page at `ipa`, counted in the
/// VM's `stats` when it is done.
pub(super) fn share(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    stats: &Counts,
    ipa: u64,
    share: bool,
) {
    let done = guest_vm(who, |ctl, h| {
        ctl.guest_share(&mut c.vttbr, h, ipa, share).is_ok()
    });
    if done == Some(true) {
        stats.guest_call(if share {
            GuestCall::MemShare
        } else {
            GuestCall::MemUnshare
        });
    }
    ctx.regs.x[0] = pkvm_answer(done);
}

/// MEASUREMENT_SET: records the digests in x1..x9 of a protected VM whose
/// PC is in its firmware (the only code that runs there before the kernel),
/// once; x0 = SUCCESS or INVALID_PARAMETER. Out of line and cold (once per
/// VM): inlined, it grew the frame of every exit's effects.
#[cold]
#[inline(never)]
pub(super) fn measurement_set(who: Who, ctx: &mut VcpuCtx) {
    let done = firmware::in_firmware(ctx.regs.pc) && {
        let m = firmware::measurement_from_regs(&ctx.regs.x[1..10]);
        guest_vm(who, |ctl, h| ctl.measurement_set(h, m).is_ok()) == Some(true)
    };
    ctx.regs.x[0] = if done {
        call::SMCCC_RET_SUCCESS
    } else {
        call::SMCCC_RET_INVALID_PARAMETER
    };
}

/// MEASUREMENT_GET: half `half` of item `item` of what the VM's firmware
/// reported, into x0..x3. Out of line and cold, as [`measurement_set`].
#[cold]
#[inline(never)]
pub(super) fn measurement_get(who: Who, ctx: &mut VcpuCtx, item: u64, half: u64) {
    let m = guest_vm(who, |ctl, h| ctl.measurement(h).ok().flatten()).flatten();
    let r = match m {
        Some(m) => firmware::measurement_answer(&m, item, half),
        None => [call::NOT_SUPPORTED, 0, 0, 0],
    };
    ctx.regs.x[..4].copy_from_slice(&r);
}
