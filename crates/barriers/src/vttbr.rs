//! VTTBR_EL2 ownership: which stage 2 (and VMID) this CPU has loaded, and TLB maintenance under
//! the right VMID.
//!
//! TLBI operations "by VMID" (`IPAS2E1IS`, `VMALLS12E1IS`, `VMALLE1IS`) act on the VMID in
//! VTTBR_EL2 *as last synchronised* (Arm ARM D8.17, "TLB maintenance instructions": the VMID
//! is the current one; D24.1.2.2: an MSR is seen by later instructions only after a context
//! synchronisation event). So stage-2 maintenance for VM B issued while VM A (or the host) is
//! loaded invalidates A's entries and leaves B's stale.
//!
//! Each CPU owns one [`Vttbr`]. It is the only writer of VTTBR_EL2 ([`Vttbr::load`] for the world
//! switch) and it knows whether the loaded value has been synchronised. A stage-2
//! [`crate::pt::PtBatch`] borrows it mutably for its whole life and, when it has TLBIs to issue,
//! makes VTTBR hold the batch's VMID first, as KVM's `__tlb_switch_to_guest` /
//! `enter_vmid_context` does: write the batch's VTTBR, `ISB`, invalidate, `DSB ISH`, write the
//! old value back. The restored value is synchronised by the next ERET into a guest (which
//! [`crate::enter_guest`] records) or by the `ISB` of the next maintenance that needs it; nothing
//! else at EL2 reads it. When the batch's VMID is already loaded no switch happens, and the `ISB`
//! is issued only if the last load has not been synchronised yet.
//!
//! The owner counts only the synchronisation events it sees: its own `ISB`s and the guest-entry
//! ERET. An unrelated `ISB` between a load and the next maintenance would make the owner's own
//! `ISB` redundant (one too many, never one too few); in the hypervisor a load is always followed
//! by its ERET or by the maintenance itself, and the trace checker (invariant 2) would report a
//! redundant one.
//!
//! A stage-2 batch borrows the `Vttbr` mutably, so no [`Vttbr::load`] (which needs `&mut`) can
//! happen while a batch is open: its TLBIs cannot end up under another VMID.

use crate::insn::{emit, Consumer, SysReg};
use crate::regs::vttbr_vmid;
use crate::sync::{Pending, VmidCtx};
use core::marker::PhantomData;

/// This CPU's VTTBR_EL2. One per CPU; neither `Send` nor `Sync`.
pub struct Vttbr {
    value: u64,
    synced: bool,
    _cpu: PhantomData<*const ()>,
}

impl core::fmt::Debug for Vttbr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Vttbr({:#x}, vmid {}, {})",
            self.value,
            self.vmid(),
            if self.synced { "synced" } else { "pending" }
        )
    }
}

impl Vttbr {
    /// Takes ownership of this CPU's VTTBR_EL2, which holds `value`.
    ///
    /// # Safety
    ///
    /// At most one `Vttbr` exists per CPU, it stays on that CPU, VTTBR_EL2 holds `value`, and a
    /// context synchronisation event happened after it was written (VTTBR_EL2 resets to an
    /// UNKNOWN value: write it first and `ISB`, or pass the value written before an exception
    /// entry).
    pub unsafe fn assume_loaded(value: u64) -> Self {
        emit::mark(Consumer::VttbrIs {
            vmid: vttbr_vmid(value),
            synced: true,
        });
        Vttbr {
            value,
            synced: true,
            _cpu: PhantomData,
        }
    }

    /// Writes VTTBR_EL2 at boot, before anything else on this CPU uses it, and synchronises it.
    ///
    /// # Safety
    ///
    /// As for [`Vttbr::assume_loaded`] (one per CPU), and `value`'s table (if any guest runs with
    /// it) is a valid stage 2 for its VMID.
    pub unsafe fn init(value: u64) -> Self {
        // SAFETY: forwarded contract.
        unsafe { emit::msr(SysReg::VttbrEl2, value) };
        // The owner's maintenance relies on this value at once.
        emit::isb();
        // SAFETY: written and synchronised just above.
        unsafe { Self::assume_loaded(value) }
    }

    /// Records what this owner knows (the loaded VMID) in the trace again, for host tests that
    /// cleared the trace after creating it.
    #[cfg(not(all(barriers_hw, not(test))))]
    pub fn record_state(&self) {
        emit::mark(Consumer::VttbrIs {
            vmid: self.vmid(),
            synced: self.synced,
        });
    }

    /// The VMID loaded.
    pub fn vmid(&self) -> u16 {
        vttbr_vmid(self.value)
    }

    /// Whether the loaded value has been synchronised (an ERET into a guest or an ISB since).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Loads the stage 2 of the context about to run (the world switch). The token is discharged
    /// by the ERET into it ([`crate::enter_guest`]) or by [`crate::isb`].
    ///
    /// # Safety
    ///
    /// The table at BADDR must be a valid stage-2 table for the VMID that maps only memory the VM
    /// may access, and stay so while the VMID runs.
    ///
    /// Loading the value already loaded writes nothing: this owner is VTTBR_EL2's only writer, so
    /// the register holds it, and whatever synchronised it still does.
    #[inline]
    pub unsafe fn load(&mut self, value: u64) -> Pending<VmidCtx> {
        let changed = self.value ^ value;
        if changed != 0 {
            // SAFETY: forwarded contract.
            unsafe { emit::msr(SysReg::VttbrEl2, value) };
            self.value = value;
            self.synced = false;
        }
        Pending::new(SysReg::VttbrEl2, changed)
    }

    /// The entry ERET synchronises the loaded value (called by [`crate::enter_guest`]).
    #[inline]
    pub(crate) fn eret(&mut self) {
        self.synced = true;
    }

    /// Makes VTTBR_EL2 hold `target` (a stage-2 root and VMID), synchronised, for TLB maintenance,
    /// and records the VMID for the checker. Returns the value to restore if it switched, and
    /// whether it issued an `ISB`.
    pub(crate) fn enter_vmid(&mut self, target: u64) -> (Option<u64>, bool) {
        let switch = vttbr_vmid(target) != self.vmid();
        if switch {
            // SAFETY: `target` is the VTTBR of the batch's own stage 2 (a valid table for its
            // VMID); no lower EL runs before `exit_vmid` restores the old value.
            unsafe { emit::msr(SysReg::VttbrEl2, target) };
        }
        let isb = switch || !self.synced;
        if isb {
            // D24.1.2.2 / KVM enter_vmid_context: the TLBIs that follow use the new VMID.
            emit::isb();
        }
        if !switch {
            // The loaded value is synchronised now; after a switch `exit_vmid` restores it
            // unsynchronised.
            self.synced = true;
        }
        emit::mark(Consumer::Stage2Edit {
            vmid: vttbr_vmid(target),
        });
        (switch.then_some(self.value), isb)
    }

    /// Restores what [`Self::enter_vmid`] switched from. Not synchronised here: the next guest
    /// entry's ERET or the next maintenance's `ISB` does it.
    pub(crate) fn exit_vmid(&mut self, restore: Option<u64>) {
        if let Some(old) = restore {
            // SAFETY: the value that was loaded before the switch.
            unsafe { emit::msr(SysReg::VttbrEl2, old) };
            self.value = old;
            self.synced = false;
        }
    }
}
