//! Exit statistics: one counter per exit reason, and the VM-wide cache
//! flushes done for MMU/cache changes and set/way operations, for the host
//! ([`HOST`]) and for each guest VM (a [`Counts`] in the VM's own state);
//! also the host accesses the hypervisor refused (aborts injected into the
//! host). Printed on shutdown and readable by the host (STATS call).

use crate::arch::esr::ExitReason;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// STATS reason index of the VM-wide cache flush counter.
pub const CACHE_FLUSHES: u64 = 200;
/// STATS reason index of the host's refused accesses (host only).
pub const HOST_DENIED: u64 = 201;
/// STATS reason index of the DMA transactions the SMMU refused (host only).
/// Reading it first logs every new SMMU event record (`arch::smmu`).
pub const SMMU_FAULTS: u64 = 202;

#[cfg(target_arch = "aarch64")]
fn smmu_faults() -> u64 {
    crate::arch::smmu::drain_events()
}

#[cfg(not(target_arch = "aarch64"))]
fn smmu_faults() -> u64 {
    0
}

/// The pKVM guest calls a VM made that took effect, each counted: read
/// with STATS index [`GUEST_CALLS`] + the variant's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestCall {
    /// MEM_SHARE of one page.
    MemShare = 0,
    /// MEM_UNSHARE of one page.
    MemUnshare = 1,
    /// MMIO_GUARD of one granule.
    MmioGuard = 2,
}

/// STATS reason index of the first [`GuestCall`] counter (three of them).
pub const GUEST_CALLS: u64 = hyp_abi::STATS_GUEST_CALLS;

/// One VM's (or the host's) counters.
#[derive(Debug)]
pub struct Counts {
    exits: [AtomicU64; ExitReason::COUNT],
    flushes: AtomicU64,
    calls: [AtomicU64; 3],
}

impl Default for Counts {
    fn default() -> Self {
        Self::new()
    }
}

/// The host's counters.
pub static HOST: Counts = Counts::new();
static DENIED: AtomicU64 = AtomicU64::new(0);
/// What destroyed VMs counted: machine-wide totals keep it.
static RETIRED: [AtomicU64; ExitReason::COUNT] = [const { AtomicU64::new(0) }; ExitReason::COUNT];

impl Counts {
    /// All zero.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            exits: [const { AtomicU64::new(0) }; ExitReason::COUNT],
            flushes: AtomicU64::new(0),
            calls: [const { AtomicU64::new(0) }; 3],
        }
    }

    /// Counts a pKVM guest call that took effect.
    pub fn guest_call(&self, what: GuestCall) {
        self.calls[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one exit.
    pub fn record(&self, reason: ExitReason) {
        self.exits[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` exits at once (HVCs the vector answered itself).
    pub fn add(&self, reason: ExitReason, n: u64) {
        self.exits[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a VM-wide clean+invalidate.
    pub fn cache_flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// The STATS call: counter `reason` (an [`ExitReason`] index,
    /// `hyp_abi::STATS_TOTAL`, [`CACHE_FLUSHES`], or for the host
    /// [`HOST_DENIED`] and the barrier totals). `None` for an unknown index.
    #[must_use]
    pub fn read(&self, reason: u64) -> Option<u64> {
        let host = core::ptr::eq(self, &HOST);
        match reason {
            hyp_abi::STATS_TOTAL => {
                Some(self.exits.iter().map(|a| a.load(Ordering::Relaxed)).sum())
            }
            CACHE_FLUSHES => Some(self.flushes.load(Ordering::Relaxed)),
            r if !host && (GUEST_CALLS..GUEST_CALLS + 3).contains(&r) => {
                Some(self.calls[(r - GUEST_CALLS) as usize].load(Ordering::Relaxed))
            }
            HOST_DENIED if host => Some(DENIED.load(Ordering::Relaxed)),
            SMMU_FAULTS if host => Some(smmu_faults()),
            r if host
                && (hyp_abi::STATS_BARRIERS
                    ..hyp_abi::STATS_BARRIERS + hyp_abi::STATS_BARRIER_KINDS)
                    .contains(&r) =>
            {
                Some(barriers::pt::totals()[(r - hyp_abi::STATS_BARRIERS) as usize])
            }
            r if (r as usize) < ExitReason::COUNT => {
                Some(self.exits[r as usize].load(Ordering::Relaxed))
            }
            _ => None,
        }
    }
}

impl Drop for Counts {
    /// A VM's counters go with it; the machine-wide totals keep them.
    fn drop(&mut self) {
        for (i, c) in self.exits.iter().enumerate() {
            RETIRED[i].fetch_add(c.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Counts a host access the hypervisor refused.
pub fn host_denied() {
    DENIED.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the machine-wide counters (all VMs and the host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot(pub [u64; ExitReason::COUNT]);

impl Snapshot {
    /// The host's and the destroyed VMs' counters; [`Snapshot::add`] each
    /// live VM's.
    #[must_use]
    pub fn base() -> Self {
        let mut s = Self::default();
        for (i, slot) in s.0.iter_mut().enumerate() {
            *slot = RETIRED[i].load(Ordering::Relaxed) + HOST.exits[i].load(Ordering::Relaxed);
        }
        s
    }

    /// Adds a live VM's counters.
    pub fn add(&mut self, c: &Counts) {
        for (i, slot) in self.0.iter_mut().enumerate() {
            *slot += c.exits[i].load(Ordering::Relaxed);
        }
    }
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
    fn per_vm_counters_retire_into_the_totals() {
        let vm = Counts::new();
        vm.record(ExitReason::Hvc);
        vm.record(ExitReason::Hvc);
        vm.cache_flush();
        assert_eq!(vm.read(ExitReason::Hvc as u64), Some(2));
        assert_eq!(vm.read(hyp_abi::STATS_TOTAL), Some(2));
        assert_eq!(vm.read(CACHE_FLUSHES), Some(1));
        assert_eq!(vm.read(99), None);
        assert_eq!(
            vm.read(HOST_DENIED),
            None,
            "a guest has no refused accesses"
        );
        let mut s = Snapshot::base();
        let base = s.0[ExitReason::Hvc as usize];
        s.add(&vm);
        assert_eq!(s.0[ExitReason::Hvc as usize], base + 2);
        drop(vm);
        // The destroyed VM's exits stay in the machine-wide totals.
        assert!(Snapshot::base().0[ExitReason::Hvc as usize] >= base + 2);
    }

    #[test]
    fn guest_calls_are_counted_per_kind_for_vms_only() {
        let vm = Counts::new();
        vm.guest_call(GuestCall::MemShare);
        vm.guest_call(GuestCall::MemShare);
        vm.guest_call(GuestCall::MmioGuard);
        assert_eq!(vm.read(GUEST_CALLS), Some(2));
        assert_eq!(vm.read(GUEST_CALLS + 1), Some(0));
        assert_eq!(vm.read(GUEST_CALLS + 2), Some(1));
        assert_eq!(vm.read(GUEST_CALLS + 3), None);
        assert_eq!(HOST.read(GUEST_CALLS), None, "the host makes no pKVM calls");
    }
}
