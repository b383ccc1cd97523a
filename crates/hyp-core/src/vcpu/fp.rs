//! FP/SIMD switched lazily: CPTR_EL2.TFP traps the first FP instruction of
//! a context that does not own the registers; only then are they saved and
//! loaded. A guest's FP state is saved when its run ends, so a vCPU can move
//! to another CPU.

use crate::arch::switch;
use crate::arch::world_switch::{self, FpState};
use crate::vcpu::ctx::{Cpu, FpOwner, VcpuCtx};
use crate::vcpu::traps::{CPTR_FP_ON, CPTR_TRAP_FP};
use crate::vcpu::MAX_CPUS;
use barriers::sync::{El2Fp, Synced};
use barriers::GuestPending;
use spin::Mutex;

/// Sets CPTR_EL2 for the context about to run: FP on only if it owns the
/// registers.
pub fn set_fp_traps(c: &mut Cpu<'_>, owns: bool, pending: &mut GuestPending) {
    if !owns {
        switch::trap_fp(c.sync, &mut c.fp_on, CPTR_TRAP_FP, pending);
    }
}

/// Clears CPTR_EL2.TFP and synchronises it, so EL2 may save/load FP state.
pub fn fp_enable<'c>(c: &'c mut Cpu<'_>) -> &'c Synced<El2Fp> {
    switch::enable_fp(c.sync, &mut c.fp_on, CPTR_FP_ON)
}

/// First FP/SIMD use by a context that does not own the registers: save
/// the owner's, load this context's.
pub fn fp_trap(c: &mut Cpu<'_>, ctx: &mut VcpuCtx, me: FpOwner) {
    let prev = c.fp_owner;
    let idx = c.idx;
    // Only the host's state can still be live here: a guest's is saved
    // when its run ends, and a guest never traps while it owns the FP.
    let on = fp_enable(c);
    if prev == me {
        // The host owns the registers (a guest run that used no FP left
        // them alone) but traps: the guest's entry set CPTR_EL2.TFP and the
        // host's entry leaves it. Its state is live: loading the copy saved
        // at an earlier switch would roll it back.
        return;
    }
    if prev == FpOwner::Host && me == FpOwner::Guest {
        // The host's context is not reachable from here; it was saved into
        // HOST_FP by this CPU's slot.
        world_switch::fp_save(on, &mut host_fp(idx).lock());
    }
    if me == FpOwner::Host {
        world_switch::fp_load(on, &host_fp(idx).lock());
    } else if ctx.sve_used {
        // A guest with SVE state gets all of it (`vcpu::sve`).
        crate::vcpu::sve::load(c, &mut ctx.sve);
    } else {
        world_switch::fp_load(on, &ctx.fp);
    }
    c.fp_owner = me;
}

static HOST_FP: [Mutex<FpState>; MAX_CPUS] = [const { Mutex::new(FpState::new()) }; MAX_CPUS];

fn host_fp(cpu: usize) -> &'static Mutex<FpState> {
    &HOST_FP[cpu]
}
