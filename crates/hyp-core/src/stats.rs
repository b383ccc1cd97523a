//! Exit statistics: one counter per exit reason, printed on shutdown.

use crate::exit::ExitReason;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

static COUNTS: [AtomicU64; ExitReason::COUNT] = [const { AtomicU64::new(0) }; ExitReason::COUNT];

/// Counts one exit.
pub fn record(reason: ExitReason) {
    COUNTS[reason as usize].fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot(pub [u64; ExitReason::COUNT]);

/// Reads every counter.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for (slot, c) in s.0.iter_mut().zip(COUNTS.iter()) {
        *slot = c.load(Ordering::Relaxed);
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
}
