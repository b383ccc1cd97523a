//! The host vCPU's virtual CPU interface: the host has no virtual distributor, only the board's
//! wired device interrupts (PCIe INTx), each put straight into a list register as a
//! hardware-linked virtual interrupt (HW = 1, pINTID = vINTID = the physical SPI).
//!
//! The hypervisor acknowledges such an SPI at EL2 and only drops its running priority
//! (ICC_CTLR_EL1.EOImode = 1), so the physical interrupt stays active; [`HostIf::inject`] puts it in
//! a list register of the host. The host acknowledges it through `ICC_IAR1_EL1` (with
//! HCR_EL2.IMO set, the virtual CPU interface), and its EOI deactivates the virtual interrupt
//! and with it the physical one (IHI 0069, "ICH_LR<n>_EL2": HW; "Virtual interrupt handling
//! and prioritization"). A level-sensitive line still asserted then becomes pending again at the
//! distributor and comes back. Until then the physical SPI is active and cannot be signalled
//! again, so an INTID is in at most one list register.
//!
//! The host's list registers, VMCR and active priorities are its own vCPU state: while the host
//! runs they live in the CPU; when it runs a guest on that CPU ([`HostIf::save`]) they are kept
//! here and the CPU's virtual interface is emptied for the guest, and after the run
//! ([`HostIf::restore`]) they go back. An interrupt that arrives while a guest runs is injected
//! into the saved copy.
//!
//! Cost: VMCR, the active priorities and the empty-list-register mask are read at every save;
//! a host that has not turned its interface on (all zero, no list register: every host that
//! drives no device) costs nothing more, and a host that has writes VMCR and the control
//! register back after the run. The guest's own restore and save (`VcpuIf`) write its VMCR and
//! active priorities and leave them at zero, so the host's are not zeroed here for a guest with
//! a vGIC, and are written back only when not zero.
//!
//! The host can only reach list registers through the virtual CPU interface (`ICH_*_EL2` are
//! EL2 registers), so the only physical interrupts it can deactivate are the ones this module
//! linked: an `ICC_EOIR1_EL1` or `ICC_DIR_EL1` write of any other INTID finds no list register
//! and changes nothing outside the host's own virtual interface.

use crate::cpuif::ListRegs;
use crate::lr::hcr;
use crate::{Lr, LrState, MAX_LRS};

/// The priority the host's device interrupts get (middle of the range, so a host priority mask
/// of 0xff lets them through and the host may still mask them).
pub const HOST_IRQ_PRIORITY: u8 = 0x80;

/// Why an interrupt could not be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectError {
    /// Every list register holds an interrupt.
    Full,
    /// The CPU has no virtual CPU interface for the host (GICv2 boards, where the host has
    /// none).
    NoInterface,
}

/// The host vCPU's virtual CPU interface on its physical CPU.
#[derive(Debug, Clone)]
pub struct HostIf {
    /// The host's state is in the CPU (it runs, or EL2 handles one of its exits).
    loaded: bool,
    /// While a guest runs: the host's list registers (bit *i* of `saved` set: `lrs[i]` valid).
    lrs: [Lr; MAX_LRS],
    saved: u16,
    vmcr: u32,
    aprs: [u32; 2],
}

impl Default for HostIf {
    fn default() -> Self {
        Self::new()
    }
}

impl HostIf {
    /// A host vCPU at reset, loaded on its CPU (the hypervisor enters the host first).
    pub const fn new() -> Self {
        HostIf {
            loaded: true,
            lrs: [Lr::EMPTY; MAX_LRS],
            saved: 0,
            vmcr: 0,
            aprs: [0; 2],
        }
    }

    /// Whether the host's state is in the CPU.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// The list register for device interrupt `intid` (an SPI: 32..1020): pending, group 1,
    /// hardware-linked to the same physical INTID.
    pub const fn lr(intid: u32) -> Lr {
        Lr {
            vintid: intid,
            state: LrState::Pending,
            priority: HOST_IRQ_PRIORITY,
            group1: true,
            eoi_maint: false,
            source: 0,
            hw: core::num::NonZeroU16::new(intid as u16),
        }
    }

    /// Makes device interrupt `intid` (a physical SPI acknowledged and priority-dropped at EL2,
    /// still active) pending for the host: in a free list register of the CPU if the host is
    /// loaded (turning the interface on: a restore of an idle host leaves it as the guest's
    /// save did), else in the saved copy. An `intid` already in a list register is left as it is.
    ///
    /// # Errors
    ///
    /// [`InjectError::Full`] when no list register is free: the caller deactivates the physical
    /// interrupt itself.
    pub fn inject(&mut self, intid: u32, lrs: &mut impl ListRegs) -> Result<(), InjectError> {
        let nr = lrs.nr_lrs().min(MAX_LRS);
        let all = if nr >= 16 { u16::MAX } else { (1u16 << nr) - 1 };
        if self.loaded {
            let empty = lrs.empty_lrs() & all;
            let mut used = !empty & all;
            while used != 0 {
                let i = used.trailing_zeros() as usize;
                used &= used - 1;
                if lrs.read_lr(i).vintid == intid {
                    return Ok(());
                }
            }
            if empty == 0 {
                return Err(InjectError::Full);
            }
            lrs.write_lr(empty.trailing_zeros() as usize, &Self::lr(intid));
            lrs.write_hcr(hcr::EN);
            return Ok(());
        }
        let mut used = self.saved;
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            if self.lrs[i].vintid == intid {
                return Ok(());
            }
        }
        let free = !self.saved & all;
        if free == 0 {
            return Err(InjectError::Full);
        }
        let i = free.trailing_zeros() as usize;
        self.lrs[i] = Self::lr(intid);
        self.saved |= 1 << i;
        Ok(())
    }

    /// Before a guest runs on this CPU: keeps the host's list registers (those not empty), VMCR
    /// and active priorities, and leaves the virtual interface empty for the guest. With
    /// `guest_vgic` the guest's restore and flush write its own VMCR, active priorities and
    /// control register next; without, they are set to zero here (interface off).
    #[inline]
    pub fn save(&mut self, lrs: &mut impl ListRegs, guest_vgic: bool) {
        if !self.loaded {
            return;
        }
        self.loaded = false;
        let nr = lrs.nr_lrs().min(MAX_LRS);
        let all = if nr >= 16 { u16::MAX } else { (1u16 << nr) - 1 };
        let mut used = !lrs.empty_lrs() & all;
        self.saved = used;
        self.vmcr = lrs.read_vmcr();
        self.aprs = lrs.read_aprs();
        if self.idle() {
            // Nothing of the host's for the guest to see, nothing to keep.
            return;
        }
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            self.lrs[i] = lrs.read_lr(i);
            lrs.write_lr(i, &Lr::EMPTY);
        }
        if !guest_vgic {
            lrs.write_hcr(0);
            lrs.write_vmcr(0);
            lrs.write_aprs([0; 2]);
        }
    }

    /// The host comes back with nothing to restore (its save found the reset state): marks it
    /// loaded and returns true, so the caller need not reach the list registers at all.
    /// Otherwise returns false and [`HostIf::restore`] must run.
    #[inline]
    pub fn restore_idle(&mut self) -> bool {
        let idle = self.idle();
        if idle {
            self.loaded = true;
        }
        idle
    }

    /// Whether the saved state is the reset state (interface never turned on, nothing held).
    fn idle(&self) -> bool {
        self.saved == 0 && self.vmcr == 0 && self.aprs == [0; 2]
    }

    /// After the guest's run, whose own save left VMCR, the active priorities and the control
    /// register at zero and its list registers empty (`VcpuIf::save`, or this type's save for a
    /// guest without a vGIC): puts the host's list registers, VMCR and active priorities back
    /// and turns the virtual interface on. Also the first load of the host on its CPU.
    #[inline]
    pub fn restore(&mut self, lrs: &mut impl ListRegs) {
        self.loaded = true;
        if self.idle() {
            return;
        }
        let mut used = self.saved;
        self.saved = 0;
        while used != 0 {
            let i = used.trailing_zeros() as usize;
            used &= used - 1;
            lrs.write_lr(i, &self.lrs[i]);
            self.lrs[i] = Lr::EMPTY;
        }
        lrs.write_vmcr(self.vmcr);
        if self.aprs != [0; 2] {
            lrs.write_aprs(self.aprs);
        }
        lrs.write_hcr(hcr::EN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four list registers, VMCR, APRs and HCR in memory; empty = invalid (HW ignores EOI).
    #[derive(Default)]
    struct Fake {
        lrs: [Option<Lr>; 4],
        vmcr: u32,
        aprs: [u32; 2],
        hcr: u32,
        writes: usize,
    }

    impl ListRegs for Fake {
        fn nr_lrs(&self) -> usize {
            4
        }
        fn read_lr(&mut self, i: usize) -> Lr {
            self.lrs[i].unwrap_or(Lr::EMPTY)
        }
        fn write_lr(&mut self, i: usize, lr: &Lr) {
            self.writes += 1;
            self.lrs[i] = (lr.state != LrState::Invalid).then_some(*lr);
        }
        fn empty_lrs(&mut self) -> u16 {
            (0..4)
                .filter(|&i| self.lrs[i].is_none())
                .fold(0, |m, i| m | 1 << i)
        }
        fn write_hcr(&mut self, hcr: u32) {
            self.hcr = hcr;
        }
        fn read_vmcr(&mut self) -> u32 {
            self.vmcr
        }
        fn write_vmcr(&mut self, vmcr: u32) {
            self.vmcr = vmcr;
        }
        fn read_aprs(&mut self) -> [u32; 2] {
            self.aprs
        }
        fn write_aprs(&mut self, aprs: [u32; 2]) {
            self.aprs = aprs;
        }
    }

    #[test]
    fn injected_while_loaded_goes_into_a_free_list_register() {
        let (mut h, mut f) = (HostIf::new(), Fake::default());
        h.restore(&mut f);
        f.lrs[0] = Some(HostIf::lr(36));
        assert_eq!(h.inject(35, &mut f), Ok(()));
        assert_eq!(f.hcr, hcr::EN, "the interface is on once it holds one");
        let lr = f.lrs[1].expect("LR 1");
        assert_eq!(
            (lr.vintid, lr.hw.map(|p| p.get()), lr.state),
            (35, Some(35), LrState::Pending)
        );
        assert!(lr.group1);
        // Already there: no second copy.
        let writes = f.writes;
        assert_eq!(h.inject(35, &mut f), Ok(()));
        assert_eq!(f.writes, writes);
        f.lrs[2] = Some(HostIf::lr(37));
        f.lrs[3] = Some(HostIf::lr(38));
        assert_eq!(h.inject(34, &mut f), Err(InjectError::Full));
    }

    #[test]
    fn a_guest_run_sees_none_of_the_host_state_and_the_host_gets_it_back() {
        let (mut h, mut f) = (HostIf::new(), Fake::default());
        h.restore(&mut f);
        f.vmcr = 0xff00_0002; // VPMR 0xff, VENG1.
        f.aprs = [0, 1 << 16];
        assert_eq!(h.inject(35, &mut f), Ok(()));
        f.lrs[0] = Some(Lr {
            state: LrState::Active,
            ..HostIf::lr(35)
        });
        h.save(&mut f, false);
        assert!(!h.loaded());
        assert!(
            f.lrs.iter().all(Option::is_none),
            "LRs emptied for the guest"
        );
        assert_eq!((f.vmcr, f.aprs, f.hcr), (0, [0; 2], 0));
        // An interrupt while the guest runs goes into the saved copy, not the CPU's LRs.
        assert_eq!(h.inject(37, &mut f), Ok(()));
        assert!(f.lrs.iter().all(Option::is_none));
        // The guest leaves its own LRs empty (VcpuIf::save), then the host comes back.
        h.restore(&mut f);
        assert!(h.loaded());
        assert_eq!(
            f.lrs[0].map(|l| (l.vintid, l.state)),
            Some((35, LrState::Active))
        );
        assert_eq!(
            f.lrs[1].map(|l| (l.vintid, l.hw.map(|p| p.get()))),
            Some((37, Some(37)))
        );
        assert_eq!(
            (f.vmcr, f.aprs, f.hcr),
            (0xff00_0002, [0, 1 << 16], hcr::EN)
        );
        // Saving twice (no restore in between) keeps the first copy.
        h.save(&mut f, true);
        h.save(&mut f, true);
        // A guest with a vGIC writes its own VMCR and APRs, and zeroes them at its exit.
        (f.vmcr, f.aprs, f.hcr) = (0, [0; 2], 0);
        h.restore(&mut f);
        assert_eq!(f.lrs[1].map(|l| l.vintid), Some(37));
        assert_eq!(
            (f.vmcr, f.aprs, f.hcr),
            (0xff00_0002, [0, 1 << 16], hcr::EN)
        );
    }

    #[test]
    fn an_idle_host_costs_no_write() {
        let (mut h, mut f) = (HostIf::new(), Fake::default());
        h.restore(&mut f);
        h.save(&mut f, true);
        assert!(h.restore_idle());
        assert_eq!(f.writes, 0);
        assert!(h.loaded());
        // Its first interrupt turns the interface on.
        assert_eq!(h.inject(35, &mut f), Ok(()));
        assert_eq!(f.hcr, hcr::EN);
        // A host that turned its group on (VMCR) is no longer idle.
        f.lrs[0] = None;
        f.vmcr = 0xff00_0002;
        h.save(&mut f, false);
        assert_eq!((f.vmcr, f.hcr), (0, 0));
        assert!(!h.restore_idle());
        assert!(!h.loaded());
        h.restore(&mut f);
        assert_eq!((f.vmcr, f.hcr), (0xff00_0002, hcr::EN));
    }

    #[test]
    fn saved_copy_full() {
        let (mut h, mut f) = (HostIf::new(), Fake::default());
        h.restore(&mut f);
        h.save(&mut f, true);
        for intid in 35..39 {
            assert_eq!(h.inject(intid, &mut f), Ok(()));
        }
        assert_eq!(h.inject(36, &mut f), Ok(()), "already pending");
        assert_eq!(h.inject(40, &mut f), Err(InjectError::Full));
    }
}
