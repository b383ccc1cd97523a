//! The per-vCPU virtual CPU interface: list-register scheduling around each guest run.
//!
//! [`VcpuIf::flush`] before entry, [`VcpuIf::sync`] after exit (see the crate docs for the
//! model). Maintenance interrupts used:
//!
//! * **underflow** (`UIE`) when more interrupts wait than there are list registers: the guest
//!   exits once at most one list register is still valid, and the next flush refills them;
//! * **EOI** (the list register's EOI bit) on level-sensitive interrupts without a physical
//!   mapping, so their line is re-sampled when the guest deactivates them, and on GICv2 SGIs
//!   with more sources waiting, so the next source is delivered.
//!
//! No-pending (`NPIE`) is not used: the flush never evicts active interrupts, so when every list
//! register holds an active interrupt there is nothing to do on that exit, and NPIE would fire at
//! once and keep firing while the guest handles them.

use crate::dist::NOT_LOADED;
use crate::lr::{hcr, vmcr};
use crate::{Lr, LrState, Version, Vgic, MAX_LRS};

/// The hardware (or a fake) behind one physical CPU's virtual CPU interface. List registers are
/// exchanged as [`Lr`]; each backend encodes them in its own format.
pub trait ListRegs {
    /// Number of implemented list registers (at most [`MAX_LRS`] are used).
    fn nr_lrs(&self) -> usize;
    /// Reads list register `i`.
    fn read_lr(&mut self, i: usize) -> Lr;
    /// Writes list register `i`.
    fn write_lr(&mut self, i: usize, lr: &Lr);
    /// `ELRSR`: bit *i* set when list register *i* is empty (invalid and needs no EOI
    /// maintenance), so it need not be read.
    fn empty_lrs(&mut self) -> u16;
    /// Writes the hypervisor control register's [`hcr`] bits (a backend may add trap bits).
    fn write_hcr(&mut self, hcr: u32);
    /// Reads `VMCR` (the guest's enables, EOImode, binary points, priority mask).
    fn read_vmcr(&mut self) -> u32;
    /// Writes `VMCR`.
    fn write_vmcr(&mut self, vmcr: u32);
    /// Reads the active-priority registers: \[group 0, group 1\] (v3 `ICH_AP0R0`/`ICH_AP1R0`;
    /// v2 `GICH_APR` and 0).
    fn read_aprs(&mut self) -> [u32; 2];
    /// Writes the active-priority registers.
    fn write_aprs(&mut self, aprs: [u32; 2]);
}

/// One vCPU's virtual CPU interface state, owned by the CPU that runs the vCPU.
#[derive(Debug, Clone)]
pub struct VcpuIf {
    vcpu: usize,
    /// INTIDs in list registers `0..nr_loaded`, as written by the last flush.
    loaded: [u8; MAX_LRS],
    nr_loaded: usize,
    /// A flush happened and no sync since.
    live: bool,
    hcr: u32,
    vmcr: u32,
    aprs: [u32; 2],
}

impl VcpuIf {
    /// The interface of vCPU `vcpu`, with VMCR and the active priorities at reset (zero).
    pub const fn new(vcpu: usize) -> Self {
        VcpuIf {
            vcpu,
            loaded: [0; MAX_LRS],
            nr_loaded: 0,
            live: false,
            hcr: 0,
            vmcr: 0,
            aprs: [0; 2],
        }
    }

    /// The vCPU.
    pub fn vcpu(&self) -> usize {
        self.vcpu
    }

    /// The control bits the last flush wrote ([`hcr`]).
    pub fn hcr(&self) -> u32 {
        self.hcr
    }

    /// The INTIDs the last flush put in list registers, in list-register order.
    pub fn loaded(&self) -> &[u8] {
        &self.loaded[..self.nr_loaded]
    }

    /// Before entering the guest: fills the list registers with this vCPU's active interrupts,
    /// then its deliverable pending ones in priority order (lower value first, then lower
    /// INTID), clears list registers the previous run used and this one does not, and writes the
    /// control register (enable, plus underflow when interrupts are left waiting).
    ///
    /// Calling it twice without [`VcpuIf::sync`] in between syncs first.
    #[inline]
    pub fn flush(&mut self, vgic: &Vgic, lrs: &mut impl ListRegs) {
        self.flush_with_line(vgic, lrs, None);
    }

    /// [`VcpuIf::flush`], after driving one of this vCPU's PPIs (`line`: INTID 16..32 and its
    /// level, sampled by the CPU that runs the vCPU, e.g. its virtual timer's output) as
    /// [`Vgic::set_level`] does, under the same lock, without working out a kick: the only
    /// vCPU it could name is this one, which is about to run. Anything but a PPI is ignored.
    pub fn flush_with_line(
        &mut self,
        vgic: &Vgic,
        lrs: &mut impl ListRegs,
        line: Option<(u32, bool)>,
    ) {
        if self.live {
            self.sync(vgic, lrs);
        }
        let mut s = vgic.state.lock();
        if let Some((intid, level)) = line.filter(|(intid, _)| (16..32).contains(intid)) {
            // Only an unimplemented vCPU fails, and this interface's vCPU exists.
            let _ = Vgic::drive(&mut s, self.vcpu, intid, level);
        }
        let busy = s.busy(self.vcpu);
        // The common case: nothing pending or active, nothing loaded before.
        if self.nr_loaded == 0 && busy == [0; 2] {
            drop(s);
            self.live = true;
            self.hcr = hcr::EN;
            lrs.write_hcr(self.hcr);
            return;
        }
        let nr_lrs = lrs.nr_lrs().min(MAX_LRS);

        // Candidates, keyed so that an ascending order is the load order: active first (they
        // can never leave the list registers: KVM's `vgic_irq_cmp` has the same rule), then by
        // priority, then by INTID. Only the busy INTIDs (maybe pending or active) are looked at;
        // `best` keeps the `nr_lrs` smallest keys in order, `count` counts them all. The key's
        // bit 0 carries whether the interrupt is deliverable (it never decides an order: INTIDs
        // differ), so the loading below need not work it out again.
        const _: () = assert!(crate::NR_INTIDS <= 0x80, "the key's INTID field is 7 bits");
        let mut best = [0u32; MAX_LRS];
        let mut nr = 0;
        let mut count = 0;
        // The private word, then the SPIs' (written out rather than iterated over the array,
        // which keeps the iterator in memory).
        let (mut word, mut base) = (busy[0], 0);
        loop {
            if word == 0 {
                if base != 0 {
                    break;
                }
                (word, base) = (busy[1], 32);
                continue;
            }
            let intid = base + word.trailing_zeros();
            word &= word - 1;
            let Some(irq) = s.irq(self.vcpu, intid) else {
                continue;
            };
            if !irq.active && !irq.pending() {
                s.settle(self.vcpu, intid);
                continue;
            }
            let ours = vgic.target(self.vcpu, intid, irq) == Some(self.vcpu);
            let free = irq.loaded_on == NOT_LOADED || irq.loaded_on as usize == self.vcpu;
            let deliverable = s.deliverable(irq);
            if !(ours && free && (irq.active || deliverable)) {
                continue;
            }
            let key = ((!irq.active as u32) << 17)
                | ((irq.priority as u32) << 9)
                | (intid << 1)
                | deliverable as u32;
            count += 1;
            let mut j = if nr < nr_lrs {
                nr += 1;
                nr - 1
            } else if nr > 0 && key < best[nr - 1] {
                nr - 1
            } else {
                continue;
            };
            best[j] = key;
            while j > 0 && best[j - 1] > best[j] {
                best.swap(j - 1, j);
                j -= 1;
            }
        }
        let v2 = vgic.version() == Version::V2;
        for (i, key) in best[..nr].iter().enumerate() {
            let intid = (key >> 1) & 0x7f;
            let Some(irq) = s.irq_mut(self.vcpu, intid) else {
                continue;
            };
            let mut pending = key & 1 != 0;
            // An active level-sensitive interrupt is not also made pending: its line was sampled
            // before this entry, and the guest's handler usually drops it (e.g. writes the
            // timer's compare value) before deactivating, which an LR's pending bit would not
            // follow: the guest would take it a second time. Its LR carries EOI maintenance
            // instead, so the deactivation exits and the line is re-sampled before the next
            // entry.
            if irq.active && !irq.edge {
                pending = false;
            }
            let mut source = 0;
            let mut more_sources = false;
            if v2 && intid < 16 {
                // One source per list register: the active one if active, else the lowest.
                source = if irq.active {
                    irq.active_source
                } else {
                    irq.sources.trailing_zeros() as u8 & 7
                };
                pending &= irq.sources & (1 << source) != 0;
                if pending {
                    irq.sources &= !(1 << source);
                }
                more_sources = irq.sources != 0;
            } else if pending && irq.edge {
                // The list register now holds the edge; sync gives it back if still pending.
                irq.latch = false;
            }
            irq.loaded_on = self.vcpu as u8;
            let lr = Lr {
                vintid: intid,
                state: LrState::new(pending, irq.active),
                priority: irq.priority,
                group1: irq.group1,
                eoi_maint: !irq.edge || more_sources,
                source,
                hw: None,
            };
            lrs.write_lr(i, &lr);
            self.loaded[i] = intid as u8;
        }
        for i in nr..self.nr_loaded {
            lrs.write_lr(i, &Lr::EMPTY);
        }
        self.nr_loaded = nr;
        self.live = true;
        self.hcr = hcr::EN
            | if count > nr && nr_lrs >= 2 {
                hcr::UIE
            } else {
                0
            };
        lrs.write_hcr(self.hcr);
    }

    /// After the guest exited: folds the list registers the last flush wrote back into the
    /// distributor state. Active interrupts stay active (and stay with this vCPU), deactivated
    /// ones leave, an edge still pending goes back to the pending latch, and a level-sensitive
    /// interrupt that is no longer pending drops its `ISPENDR` latch (its line is re-sampled at
    /// the next flush). Interrupts whose state the guest rewrote through MMIO meanwhile keep the
    /// written state.
    #[inline]
    pub fn sync(&mut self, vgic: &Vgic, lrs: &mut impl ListRegs) {
        if self.take_loaded() {
            self.sync_loaded(vgic, lrs);
        }
    }

    /// [`VcpuIf::sync`], with the list registers' backend made by `lrs` only when there is
    /// something to read back (`None`: no backend, nothing read). Nothing loaded, nothing to fold
    /// back (and no lock to take): tested inline, so an exit with empty list registers (most)
    /// neither calls nor builds a backend.
    #[inline]
    pub fn sync_with<L: ListRegs>(&mut self, vgic: &Vgic, lrs: impl FnOnce() -> Option<L>) {
        if self.take_loaded() {
            if let Some(mut lrs) = lrs() {
                self.sync_loaded(vgic, &mut lrs);
            }
        }
    }

    /// Ends the flush's validity (`live`); whether the list registers it wrote hold anything to
    /// fold back.
    #[inline]
    fn take_loaded(&mut self) -> bool {
        let loaded = self.live && self.nr_loaded != 0;
        self.live = false;
        loaded
    }

    /// [`VcpuIf::sync`] once list registers were loaded.
    #[inline(never)]
    fn sync_loaded(&mut self, vgic: &Vgic, lrs: &mut impl ListRegs) {
        let v2 = vgic.version() == Version::V2;
        let empty = lrs.empty_lrs();
        let mut s = vgic.state.lock();
        for i in 0..self.nr_loaded {
            let intid = self.loaded[i] as u32;
            let lr = if empty & (1 << i) != 0 {
                Lr::EMPTY
            } else {
                lrs.read_lr(i)
            };
            let Some(irq) = s.irq_mut(self.vcpu, intid) else {
                continue;
            };
            irq.loaded_on = NOT_LOADED;
            if irq.overridden {
                irq.overridden = false;
                continue;
            }
            irq.active = lr.state.active();
            irq.active_on = if irq.active {
                self.vcpu as u8
            } else {
                NOT_LOADED
            };
            if v2 && intid < 16 {
                if lr.state.pending() {
                    irq.sources |= 1 << (lr.source & 7);
                }
                if irq.active {
                    irq.active_source = lr.source & 7;
                }
            } else if irq.edge {
                if lr.state.pending() {
                    irq.latch = true;
                }
            } else if !lr.state.pending() {
                irq.latch = false;
            }
        }
    }

    /// When the vCPU leaves this physical CPU (after [`VcpuIf::sync`]): saves VMCR and the active
    /// priorities, turns the virtual CPU interface off, and leaves none of this vCPU's state in it
    /// for the next context on this CPU (the host, whose `ICC_*` accesses reach the same virtual
    /// interface, or another VM's vCPU): VMCR and the active priorities go back to their reset
    /// value (zero) and the list registers the last flush wrote are emptied (their interrupts
    /// were folded back by the sync, so the next flush, here or on another CPU, reloads them).
    pub fn save(&mut self, lrs: &mut impl ListRegs) {
        self.vmcr = lrs.read_vmcr();
        self.aprs = lrs.read_aprs();
        self.hcr = 0;
        lrs.write_hcr(0);
        lrs.write_vmcr(0);
        lrs.write_aprs([0; 2]);
        for i in 0..self.nr_loaded {
            lrs.write_lr(i, &Lr::EMPTY);
        }
        self.nr_loaded = 0;
    }

    /// When the vCPU arrives on a physical CPU (before [`VcpuIf::flush`]): restores VMCR and the
    /// active priorities (zero for a new vCPU).
    pub fn restore(&self, lrs: &mut impl ListRegs) {
        lrs.write_vmcr(self.vmcr);
        lrs.write_aprs(self.aprs);
    }

    /// The guest's current priority mask (8-bit scale), read from the live VMCR; for
    /// [`Vgic::has_pending`] on WFI.
    pub fn priority_mask(&self, version: Version, lrs: &mut impl ListRegs) -> u8 {
        vmcr::pmr(version, lrs.read_vmcr())
    }
}
