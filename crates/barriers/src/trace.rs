//! The per-thread instruction trace of the recording backend (host builds only).
//!
//! Every instruction the crate would emit on the hypervisor target is appended here instead, in
//! program order. Tests take the trace and compare it with an exact expected `Vec<Insn>`, or run
//! [`crate::check::check`] over it. The shadow register file gives reads and the `changed` field
//! of [`Insn::Msr`] their values; it starts at zero and can be preset with [`set_reg`] (which
//! records nothing).

use crate::insn::{emit, Insn, SysReg};
use std::vec::Vec;

/// Returns the trace recorded so far on this thread and empties it.
pub fn take() -> Vec<Insn> {
    emit::TRACE.with(|t| core::mem::take(&mut *t.borrow_mut()))
}

/// Empties this thread's trace (the shadow registers are kept).
pub fn clear() {
    emit::TRACE.with(|t| t.borrow_mut().clear());
}

/// Empties this thread's trace and resets every shadow register to zero.
pub fn reset() {
    clear();
    emit::REGS.with(|r| r.borrow_mut().clear());
}

/// Turns this thread's trace on or off (on at the start). Off, the backend still performs every
/// store and keeps the shadow registers, but appends nothing: for host benchmarks that measure
/// the code the hypervisor runs (which records nothing) rather than the recording. Tests leave
/// it on.
pub fn set_recording(on: bool) {
    emit::RECORDING.with(|r| r.set(on));
}

/// Presets a shadow register without recording anything (models state from before the trace).
pub fn set_reg(reg: SysReg, value: u64) {
    emit::REGS.with(|r| r.borrow_mut().insert(reg, value));
}

/// Appends an entry as if the crate had emitted it (for building traces in other crates' tests).
pub fn record(insn: Insn) {
    emit::push(insn);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Off, a page-table store still happens and nothing is logged; on again, it is logged.
    #[test]
    fn recording_off_stores_without_logging() {
        reset();
        let slot = AtomicU64::new(1);
        set_recording(false);
        emit::store(&slot, 2, None, None);
        set_recording(true);
        assert_eq!(slot.load(Ordering::Relaxed), 2);
        assert!(take().is_empty());
        emit::store(&slot, 3, None, None);
        assert_eq!(slot.load(Ordering::Relaxed), 3);
        assert_eq!(take().len(), 1);
    }
}
