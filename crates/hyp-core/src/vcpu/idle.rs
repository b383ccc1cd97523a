//! Idle CPUs sleep (issue 21: "idle costs nothing").
//!
//! A guest vCPU that executes WFI with nothing to take returns to the host
//! (VCPU_RUN's `YIELD` with x1 = 1) with the counter value its virtual timer
//! fires at (x2; `u64::MAX` when it is off or masked) and the current
//! *event generation* (x3). When every vCPU a host CPU serves waits so, the
//! host calls HOST_IDLE with the earliest of those deadlines and the
//! generation of its first such exit; the hypervisor then executes WFI at
//! EL2 until the deadline (its EL2 physical timer), a physical interrupt
//! for this CPU (a device's, a kick), or an *event*, and returns to the
//! host, which runs its vCPUs again.
//!
//! An event is anything that may make a waiting vCPU runnable without the
//! host's own CPU doing it: an interrupt made pending for a vCPU that is not
//! running (`vm::state::kick_vcpus`) or a guest's PSCI
//! CPU_ON. Each bumps the generation and kicks every CPU in HOST_IDLE. The
//! generation closes the race between the host's decision and its sleep:
//! an event after the host's exit but before HOST_IDLE finds it changed,
//! and HOST_IDLE returns at once. Both sides use sequentially consistent
//! accesses: either the event sees the sleeper's bit and kicks it (a kick
//! pending before the WFI makes the WFI return at once), or the sleeper
//! sees the new generation.
//!
//! A sleep is at most [`MAX_SLEEP_HZ_DIV`]-th of a second, so host work
//! another host CPU does not announce (a VM stopped) waits no longer.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::switch::CpuSync;
use crate::arch::{gic, sysreg};
use crate::vcpu::ctx::Cpu;
use barriers::sync::{GuestOnly, Synced};
use barriers::{regs, GuestPending};

/// The event generation ([`event`]).
static GEN: AtomicU64 = AtomicU64::new(0);
/// Bit *i*: CPU *i* is in HOST_IDLE.
static SLEEPING: AtomicU64 = AtomicU64::new(0);

/// A sleep lasts at most 1 / this of a second (10 ms).
pub const MAX_SLEEP_HZ_DIV: u64 = 100;

/// The current event generation (VCPU_RUN's `YIELD` x3).
#[must_use]
pub fn generation() -> u64 {
    GEN.load(Ordering::SeqCst)
}

/// Something may have made a waiting vCPU runnable: a new generation, and
/// a kick to every sleeping CPU but this one.
pub fn event(c: &Cpu<'_>, pending: &mut GuestPending) {
    event_from(c.idx, c.sync, pending);
}

/// [`event`] from CPU `me` with its `sync` (the vector's fast path, which
/// has no [`Cpu`]).
pub fn event_from(me: usize, sync: &CpuSync, pending: &mut GuestPending) {
    GEN.fetch_add(1, Ordering::SeqCst);
    let mut sleepers = SLEEPING.load(Ordering::SeqCst) & !(1 << me);
    let Some(g) = gic::phys() else {
        return;
    };
    while sleepers != 0 {
        let cpu = sleepers.trailing_zeros() as usize;
        sleepers &= sleepers - 1;
        g.kick(cpu, sync.gic.as_ref(), pending);
    }
}

/// Why HOST_IDLE returned (its x0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// An event came after the host's generation (nothing slept).
    Event = 0,
    /// The deadline (or the longest sleep) passed.
    Deadline = 1,
    /// A physical interrupt for this CPU is pending.
    Interrupt = 2,
}

/// HOST_IDLE on CPU `c`: sleeps until counter `deadline` (at most
/// 1/[`MAX_SLEEP_HZ_DIV`] s from now), a physical interrupt, or an event
/// after generation `gen` (`u64::MAX`: any event, counted from now).
pub fn host_idle(c: &Cpu<'_>, deadline: u64, gen: u64) -> Woken {
    let now = sysreg::cntpct_el0();
    let until = deadline.min(now.saturating_add(sysreg::cntfrq_el0() / MAX_SLEEP_HZ_DIV));
    let bit = 1u64 << c.idx;
    let gen = if gen == u64::MAX { generation() } else { gen };
    SLEEPING.fetch_or(bit, Ordering::SeqCst);
    let why = sleep(until, gen);
    SLEEPING.fetch_and(!bit, Ordering::SeqCst);
    why
}

fn sleep(until: u64, gen: u64) -> Woken {
    if GEN.load(Ordering::SeqCst) != gen {
        return Woken::Event;
    }
    // The EL2 physical timer (the guests' time slice, idle while the host
    // runs) wakes the WFI at the deadline; the ISB makes its new compare
    // value and enable take effect before the WFI waits on them.
    let _: (Synced<GuestOnly>, Synced<GuestOnly>) = barriers::isb((
        regs::CnthpCvalEl2::write(until),
        regs::CnthpCtlEl2::write(1),
    ));
    let why = loop {
        if GEN.load(Ordering::SeqCst) != gen {
            break Woken::Event;
        }
        if sysreg::cntpct_el0() >= until {
            break Woken::Deadline;
        }
        if sysreg::irq_pending() {
            break Woken::Interrupt;
        }
        sysreg::wfi();
    };
    // Disabled, its level interrupt drops before the host runs again.
    let _: Synced<GuestOnly> = barriers::isb(regs::CnthpCtlEl2::write(0));
    why
}
