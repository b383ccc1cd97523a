//! The register effects of the lazy debug switch: loading a vCPU's
//! registers into the CPU, saving and clearing them, a CPU's bring-up, and
//! the trapped-access handler that drives them.

use super::{bank, each_point, Counts, DebugRegs, MDCR_TDA};
#[cfg(target_arch = "aarch64")]
use super::{emulate, Access, Outcome};
use barriers::regs::{DbgKind, DbgReg, MdcrEl2, MdscrEl1, OslarEl1};
use barriers::GuestPending;

/// Puts the vCPU's registers into the CPU and clears MDCR_EL2.TDA (leaving
/// every other MDCR_EL2 bit as it is). Every implemented register is
/// written, so nothing of the previous owner remains readable. All writes
/// are guest-only (the debug target is EL1): the entry ERET synchronises
/// them.
pub fn load(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    for (kind, i) in each_point(n) {
        pending.add(DbgReg::new(kind, i).write(bank(d, kind)[i as usize]));
    }
    pending.add(MdscrEl1::write(d.mdscr));
    // SAFETY: clears TDA only: the vCPU's accesses to the registers just
    // loaded stop trapping; TDOSA/TDRA and the PMU traps stay as they are.
    pending.add(unsafe { MdcrEl2::write(MdcrEl2::read() & !MDCR_TDA) });
    d.live = true;
}

/// Saves the vCPU's registers from the CPU, disables every breakpoint,
/// watchpoint and step there (MDSCR_EL1 = 0, every DBGBCR/DBGWCR = 0: the
/// host and the next vCPU see none of them) and sets MDCR_EL2.TDA again.
pub fn unload(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    d.mdscr = MdscrEl1::read();
    pending.add(MdscrEl1::write(0));
    for (kind, i) in each_point(n) {
        let r = DbgReg::new(kind, i);
        bank(d, kind)[i as usize] = r.read();
        if matches!(kind, DbgKind::Bcr | DbgKind::Wcr) {
            pending.add(r.write(0));
        }
    }
    // SAFETY: sets TDA only (a trap).
    pending.add(unsafe { MdcrEl2::write(MdcrEl2::read() | MDCR_TDA) });
    d.live = false;
}

/// Brings the CPU in line with what the vCPU wants after a trapped access
/// or at its entry: loads or unloads its registers if
/// [`DebugRegs::wants_cpu`] changed. Nothing when it did not (one test).
#[inline(always)]
pub fn reconcile(d: &mut DebugRegs, n: impl FnOnce() -> Counts, pending: &mut GuestPending) {
    if d.want != d.live {
        reconcile_cold(d, n(), pending);
    }
}

#[cold]
#[inline(never)]
fn reconcile_cold(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    if d.live {
        unload(d, n, pending);
    } else {
        load(d, n, pending);
    }
}

/// The start of a vCPU's run: its registers go into the CPU if it wants
/// them there (they are never live yet: [`end_run`] unloads them). One
/// flag test for a vCPU that does not debug. Returns whether they are live.
#[inline(always)]
pub fn start_run(
    d: &mut DebugRegs,
    n: impl FnOnce() -> Counts,
    pending: &mut GuestPending,
) -> bool {
    if d.want {
        reconcile_cold(d, n(), pending);
        return d.live;
    }
    false
}

/// The end of a vCPU's run (back to the host): its registers leave the CPU
/// and it stays an owner only if it is debugging ([`DebugRegs::after_run`]).
#[inline(always)]
pub fn end_run(d: &mut DebugRegs, n: impl FnOnce() -> Counts, pending: &mut GuestPending) {
    if d.live {
        end_run_cold(d, n(), pending);
    }
}

#[cold]
#[inline(never)]
fn end_run_cold(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    unload(d, n, pending);
    d.after_run();
}

/// A CPU's bring-up: its OS lock unlocked (it resets locked, which would
/// disable every guest's breakpoints), MDSCR_EL1 and every breakpoint and
/// watchpoint control zero (their reset values are UNKNOWN).
pub fn cpu_init(n: Counts, pending: &mut GuestPending) {
    pending.add(OslarEl1::write(0));
    pending.add(MdscrEl1::write(0));
    for (kind, i) in each_point(n) {
        if matches!(kind, DbgKind::Bcr | DbgKind::Wcr) {
            pending.add(DbgReg::new(kind, i).write(0));
        }
    }
}

/// This CPU's breakpoint and watchpoint counts.
#[cfg(target_arch = "aarch64")]
#[must_use]
pub fn counts() -> Counts {
    Counts::from_dfr0(crate::arch::sysreg::read_id(5, 0))
}

/// A guest vCPU's trapped debug-register access: emulated on its copy
/// (a read lands in `rt`), then its registers go into the CPU if it now
/// wants them there; the vector's fast path is withdrawn for the rest of
/// the run once they are live (it steps the PC without clearing
/// SPSR_EL2.SS, see `run::guest_loop`). False: UNDEFINED.
#[cfg(target_arch = "aarch64")]
pub fn trap(
    c: &mut crate::vcpu::ctx::Cpu<'_>,
    ctx: &mut crate::vcpu::ctx::VcpuCtx,
    Access {
        reg,
        read,
        rt,
        value,
    }: Access,
    pending: &mut GuestPending,
) -> bool {
    let n = counts();
    let d = &mut ctx.debug;
    if super::el0_dcc_refused(d, ctx.regs.pstate) {
        return false;
    }
    let Outcome::Done(v) = emulate(d, reg, read, value, n) else {
        return false;
    };
    reconcile(d, || n, pending);
    if d.live {
        c.save.set_fast(core::ptr::null());
    }
    if read && rt != 31 {
        ctx.regs.x[rt as usize] = v;
    }
    true
}
