//! Exit statistics: one counter per exit reason for the host (index 0) and
//! each guest VM slot (1..=MAX_VMS), printed on shutdown and readable by the
//! host (STATS call). Also counted: VM-wide cache flushes done for a VM's
//! MMU/cache changes and set/way operations, and host accesses the
//! hypervisor refused (aborts injected into the host).

use crate::arch::esr::ExitReason;
use crate::vm::control::MAX_VMS;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

const WHO: usize = MAX_VMS + 1;
/// STATS reason index of the VM-wide cache flush counter.
pub const CACHE_FLUSHES: u64 = 200;
/// STATS reason index of the host's refused accesses (host only).
pub const HOST_DENIED: u64 = 201;

static COUNTS: [[AtomicU64; ExitReason::COUNT]; WHO] =
    [const { [const { AtomicU64::new(0) }; ExitReason::COUNT] }; WHO];
static FLUSHES: [AtomicU64; WHO] = [const { AtomicU64::new(0) }; WHO];
static DENIED: AtomicU64 = AtomicU64::new(0);

/// Counts one exit of `who` (0 host, n guest slot n - 1).
pub fn record(who: usize, reason: ExitReason) {
    if let Some(c) = COUNTS.get(who) {
        c[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts `n` exits of `who` at once (HVCs the vector answered itself).
pub fn add(who: usize, reason: ExitReason, n: u64) {
    if let Some(c) = COUNTS.get(who) {
        c[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// Counts a VM-wide clean+invalidate for `who`.
pub fn cache_flush(who: usize) {
    if let Some(c) = FLUSHES.get(who) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a host access the hypervisor refused.
pub fn host_denied() {
    DENIED.fetch_add(1, Ordering::Relaxed);
}

/// Zeroes the counters of `who` (a new VM in that slot). The machine-wide
/// totals keep what the slot's previous VM did: [`snapshot`] sums live
/// counters only, so they are folded into slot 0's "retired" set first.
pub fn reset(who: usize) {
    if who == 0 || who >= WHO {
        return;
    }
    for (i, c) in COUNTS[who].iter().enumerate() {
        RETIRED[i].fetch_add(c.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }
    FLUSHES[who].store(0, Ordering::Relaxed);
}

static RETIRED: [AtomicU64; ExitReason::COUNT] = [const { AtomicU64::new(0) }; ExitReason::COUNT];

/// The STATS call: counter `reason` (an [`ExitReason`] index,
/// `hyp_abi::STATS_TOTAL`, [`CACHE_FLUSHES`] or [`HOST_DENIED`]) of `who`.
/// `None` for an unknown index.
#[must_use]
pub fn read(who: usize, reason: u64) -> Option<u64> {
    let c = COUNTS.get(who)?;
    match reason {
        hyp_abi::STATS_TOTAL => Some(c.iter().map(|a| a.load(Ordering::Relaxed)).sum()),
        CACHE_FLUSHES => Some(FLUSHES[who].load(Ordering::Relaxed)),
        HOST_DENIED if who == 0 => Some(DENIED.load(Ordering::Relaxed)),
        r if who == 0
            && (hyp_abi::STATS_BARRIERS
                ..hyp_abi::STATS_BARRIERS + hyp_abi::STATS_BARRIER_KINDS)
                .contains(&r) =>
        {
            Some(barriers::pt::totals()[(r - hyp_abi::STATS_BARRIERS) as usize])
        }
        r if (r as usize) < ExitReason::COUNT => Some(c[r as usize].load(Ordering::Relaxed)),
        _ => None,
    }
}

/// A snapshot of the machine-wide counters (all VMs and the host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot(pub [u64; ExitReason::COUNT]);

/// Sums every counter.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for (i, slot) in s.0.iter_mut().enumerate() {
        *slot = RETIRED[i].load(Ordering::Relaxed)
            + COUNTS
                .iter()
                .map(|c| c[i].load(Ordering::Relaxed))
                .sum::<u64>();
    }
    s
}

impl fmt::Display for Snapshot {
    /// `exits total=N hvc=.. smc=.. ...` (the shutdown line after `hyp: `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: u64 = self.0.iter().sum();
        write!(f, "exits total={total}")?;
        for r in ExitReason::ALL {
            f.write_char(' ')?;
            write!(f, "{}={}", r.name(), self.0[r as usize])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn display_lists_every_reason() {
        let mut s = Snapshot::default();
        s.0[ExitReason::Hvc as usize] = 5;
        s.0[ExitReason::DataAbort as usize] = 2;
        assert_eq!(
            s.to_string(),
            "exits total=7 hvc=5 smc=0 dabt=2 iabt=0 sysreg=0 wfx=0 fp=0 irq=0 other=0"
        );
    }

    #[test]
    fn per_vm_counters_and_reset() {
        record(3, ExitReason::Hvc);
        record(3, ExitReason::Hvc);
        cache_flush(3);
        assert_eq!(read(3, ExitReason::Hvc as u64), Some(2));
        assert_eq!(read(3, hyp_abi::STATS_TOTAL), Some(2));
        assert_eq!(read(3, CACHE_FLUSHES), Some(1));
        assert_eq!(read(3, 99), None);
        assert_eq!(read(42, 0), None);
        let before = snapshot().0[ExitReason::Hvc as usize];
        reset(3);
        assert_eq!(read(3, hyp_abi::STATS_TOTAL), Some(0));
        assert_eq!(snapshot().0[ExitReason::Hvc as usize], before);
    }
}
