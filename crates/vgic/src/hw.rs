//! The hardware backends of [`ListRegs`]: GICv3 system registers and the GICv2 GICH frame.
//!
//! These are the only places in the crate that touch hardware. [`V3Sysregs`] goes through
//! `barriers`' typed accessors, so every write yields a guest-only pending token; the backend
//! collects them in the caller's [`GuestPending`], which the world switch hands to
//! `barriers::enter_guest` (the ERET synchronises them; KVM issues no ISB here either).

use crate::cpuif::ListRegs;
use crate::lr::hcr;
use crate::{Lr, MAX_LRS};
use barriers::regs::{
    IchAp0r0El2, IchAp1r0El2, IchElrsrEl2, IchHcrEl2, IchLrEl2, IchVmcrEl2, IchVtrEl2,
};
use barriers::sync::{GicSre, Includes};
use barriers::{GuestPending, Synced};

/// GICv3: the `ICH_*_EL2` system registers of this physical CPU.
///
/// Only `ICH_AP0R0`/`ICH_AP1R0` are saved: they cover 5 preemption bits (32 levels), which is
/// what the vGIC's 5-bit priorities can use; `ICH_AP*R1..3` exist only with more.
pub struct V3Sysregs<'a, K: Includes<GicSre>> {
    sre: &'a Synced<K>,
    pending: &'a mut GuestPending,
    nr: usize,
    traps: u32,
}

impl<K: Includes<GicSre>> core::fmt::Debug for V3Sysregs<'_, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("V3Sysregs")
            .field("nr", &self.nr)
            .finish_non_exhaustive()
    }
}

impl<'a, K: Includes<GicSre>> V3Sysregs<'a, K> {
    /// The backend for this CPU. `sre` proves ICC_SRE_EL2 is synchronised; `pending` collects
    /// the guest-only tokens of every write for the entry ERET. The number of list registers
    /// comes from `ICH_VTR_EL2.ListRegs`.
    ///
    /// # Safety
    ///
    /// `traps` must hold every `ICH_HCR_EL2` trap bit (TC, TALL0, TALL1, TDIR, ...) the
    /// hypervisor relies on: the backend writes `ICH_HCR_EL2` as `traps` plus the vGIC's
    /// enable/maintenance bits, as [`IchHcrEl2::write`]'s contract requires.
    pub unsafe fn new(sre: &'a Synced<K>, pending: &'a mut GuestPending, traps: u32) -> Self {
        // SAFETY: `traps` is the caller's (this function's contract); the count is this CPU's.
        unsafe { Self::with_lrs(sre, pending, traps, Self::count(sre)) }
    }

    /// This CPU's list registers: `ICH_VTR_EL2.ListRegs` \[4:0\] + 1 (what
    /// [`V3Sysregs::with_lrs`] takes, read once per CPU).
    pub fn count(sre: &Synced<K>) -> usize {
        ((IchVtrEl2::read(sre) & 0x1f) + 1) as usize
    }

    /// [`V3Sysregs::new`] for a CPU with `nr` list registers, as its `ICH_VTR_EL2.ListRegs + 1`
    /// was read once (a register read fewer on every use).
    ///
    /// # Safety
    ///
    /// As for [`V3Sysregs::new`]; and `nr` is at most this CPU's list registers (writing one past
    /// them is UNDEFINED).
    pub unsafe fn with_lrs(
        sre: &'a Synced<K>,
        pending: &'a mut GuestPending,
        traps: u32,
        nr: usize,
    ) -> Self {
        V3Sysregs {
            sre,
            pending,
            nr: nr.min(MAX_LRS),
            traps,
        }
    }
}

impl<K: Includes<GicSre>> ListRegs for V3Sysregs<'_, K> {
    fn nr_lrs(&self) -> usize {
        self.nr
    }

    fn read_lr(&mut self, i: usize) -> Lr {
        Lr::decode_v3(IchLrEl2::new(i as u8).read(self.sre))
    }

    fn write_lr(&mut self, i: usize, lr: &Lr) {
        self.pending
            .add(IchLrEl2::new(i as u8).write(self.sre, lr.encode_v3()));
    }

    fn empty_lrs(&mut self) -> u16 {
        IchElrsrEl2::read(self.sre) as u16
    }

    fn write_hcr(&mut self, bits: u32) {
        let value = (bits & (hcr::EN | hcr::UIE | hcr::LRENPIE | hcr::NPIE)) | self.traps;
        // SAFETY: `traps` holds every trap the hypervisor relies on (contract of `new`); the
        // other bits only enable the virtual CPU interface and its maintenance interrupts.
        let token = unsafe { IchHcrEl2::write(self.sre, value as u64) };
        self.pending.add(token);
    }

    fn read_vmcr(&mut self) -> u32 {
        IchVmcrEl2::read(self.sre) as u32
    }

    fn write_vmcr(&mut self, vmcr: u32) {
        self.pending.add(IchVmcrEl2::write(self.sre, vmcr as u64));
    }

    fn read_aprs(&mut self) -> [u32; 2] {
        [
            IchAp0r0El2::read(self.sre) as u32,
            IchAp1r0El2::read(self.sre) as u32,
        ]
    }

    fn write_aprs(&mut self, aprs: [u32; 2]) {
        self.pending
            .add(IchAp0r0El2::write(self.sre, aprs[0] as u64));
        self.pending
            .add(IchAp1r0El2::write(self.sre, aprs[1] as u64));
    }
}

/// GICv2: this CPU's GICH frame (GIC-400: the per-CPU "virtual interface control" page).
///
/// Register offsets (IHI 0048B section 5.3; Linux `include/linux/irqchip/arm-gic.h`): HCR 0x0,
/// VTR 0x4, VMCR 0x8, MISR 0x10, EISR0 0x20, ELRSR0 0x30, APR 0xF0, LR*n* 0x100 + 4*n*.
#[derive(Debug)]
pub struct V2Mmio {
    base: *mut u32,
    nr: usize,
}

impl V2Mmio {
    const HCR: usize = 0x0;
    const VTR: usize = 0x4;
    const VMCR: usize = 0x8;
    const ELRSR0: usize = 0x30;
    const APR: usize = 0xf0;
    const LR0: usize = 0x100;

    /// The backend for the GICH frame at `gich_base` (a virtual address in the hypervisor's
    /// mapping). The number of list registers comes from `GICH_VTR.ListRegs` \[5:0\].
    ///
    /// # Safety
    ///
    /// `gich_base` must be this CPU's GICH frame, mapped as device memory (or, in tests, 0x200
    /// bytes of memory aligned to 4), valid for as long as the backend is used, and used by
    /// nothing else meanwhile.
    pub unsafe fn new(gich_base: usize) -> Self {
        let mut b = V2Mmio {
            base: gich_base as *mut u32,
            nr: 0,
        };
        b.nr = ((b.read(Self::VTR) & 0x3f) as usize + 1).min(MAX_LRS);
        b
    }

    fn read(&self, off: usize) -> u32 {
        // SAFETY: `off` is one of the GICH register offsets above (< 0x140), inside the frame
        // that `new`'s contract makes valid and exclusive.
        unsafe { self.base.byte_add(off).read_volatile() }
    }

    fn write(&mut self, off: usize, v: u32) {
        // SAFETY: as in `read`.
        unsafe { self.base.byte_add(off).write_volatile(v) }
    }
}

impl ListRegs for V2Mmio {
    fn nr_lrs(&self) -> usize {
        self.nr
    }

    fn read_lr(&mut self, i: usize) -> Lr {
        Lr::decode_v2(self.read(Self::LR0 + 4 * i))
    }

    fn write_lr(&mut self, i: usize, lr: &Lr) {
        self.write(Self::LR0 + 4 * i, lr.encode_v2());
    }

    fn empty_lrs(&mut self) -> u16 {
        self.read(Self::ELRSR0) as u16
    }

    fn write_hcr(&mut self, bits: u32) {
        self.write(Self::HCR, bits);
    }

    fn read_vmcr(&mut self) -> u32 {
        self.read(Self::VMCR)
    }

    fn write_vmcr(&mut self, vmcr: u32) {
        self.write(Self::VMCR, vmcr);
    }

    fn read_aprs(&mut self) -> [u32; 2] {
        [self.read(Self::APR), 0]
    }

    fn write_aprs(&mut self, aprs: [u32; 2]) {
        self.write(Self::APR, aprs[0]);
    }
}
