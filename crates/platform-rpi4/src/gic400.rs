//! The physical GIC-400 (GICv2) as EL2 uses it: distributor and CPU-interface
//! set-up, SGIs, acknowledge and end of interrupt. The virtual interface
//! (GICH/GICV) belongs to the vGIC, not here.
//!
//! Register map: Arm GIC Architecture Specification v2 (IHI 0048B), 4.1.2
//! (distributor) and 4.1.3 (CPU interface). EL2 is non-secure: on a real Pi
//! the firmware's armstub, and under QEMU `entry.S`, put every interrupt in
//! group 1 from the secure side, and EL2 sees the non-secure register views.
//! QEMU's raspi4b models a GIC-400 without the Security Extensions
//! (GICD_TYPER.SecurityExtn = 0): there is one view, and EL2 owns the groups,
//! so it puts its interrupts in group 0 and enables that.
//!
//! EL2 runs with interrupts masked (ARCHITECTURE.md), so for now interrupts
//! are only ever polled through GICC_IAR; the next step routes the EL2 timer
//! (PPI 10, INTID 26) through here.

use core::sync::atomic::{AtomicBool, Ordering};

use hw_regs::gic::{
    GICC_BPR, GICC_CTLR, GICC_EOIR, GICC_IAR, GICC_PMR, GICD_CTLR, GICD_ICACTIVER, GICD_ICENABLER,
    GICD_ICFGR, GICD_ICPENDR, GICD_IGROUPR, GICD_IPRIORITYR, GICD_ISENABLER, GICD_ITARGETSR,
    GICD_SGIR, GICD_TYPER,
};

/// GICD_TYPER.SecurityExtn.
const TYPER_SECURITY_EXTN: u32 = 1 << 10;
/// Interrupt IDs 1020..1023 are special; 1023 = nothing pending.
pub const SPURIOUS: u32 = 1023;
/// Priority given to every interrupt: the middle of the non-secure range.
const PRIORITY: u8 = 0xa0;
/// Priority mask: everything above the lowest non-secure priorities is signalled.
const PMR_OPEN: u32 = 0xf0;
/// GICC_CTLR: FIQBypDisGrp1 and IRQBypDisGrp1 (non-secure view), or their
/// group-0 counterparts FIQBypDisGrp0/IRQBypDisGrp0 (single view).
const CTLR_BYPASS_DISABLE: u32 = (1 << 5) | (1 << 6);

/// A GIC-400 at the board's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Gic400 {
    gicd: u64,
    gicc: u64,
}

/// Set once the distributor is on (CPU 0), before any secondary starts.
static DIST_READY: AtomicBool = AtomicBool::new(false);

impl Gic400 {
    /// The GIC whose distributor is at `gicd` and CPU interface at `gicc`.
    pub const fn new(gicd: u64, gicc: u64) -> Gic400 {
        Gic400 { gicd, gicc }
    }

    fn rd(addr: u64) -> u32 {
        // SAFETY: `addr` is a register of the board's GIC-400 (a device
        // region of board.toml, mapped Device-nGnRE at EL2).
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    fn wr(addr: u64, value: u32) {
        // SAFETY: as in `rd`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }

    /// Whether the GIC has the Security Extensions (a real GIC-400 does;
    /// QEMU's raspi4b model does not).
    pub fn has_security(&self) -> bool {
        Self::rd(self.gicd + GICD_TYPER) & TYPER_SECURITY_EXTN != 0
    }

    /// Number of interrupt IDs the distributor implements (SGIs and PPIs included).
    pub fn lines(&self) -> u32 {
        32 * ((Self::rd(self.gicd + GICD_TYPER) & 0x1f) + 1)
    }

    /// Group register value for interrupts EL2 takes: group 1 where the
    /// secure side exists (it set them so), group 0 in the single view.
    fn group_bits(&self) -> u32 {
        if self.has_security() {
            !0
        } else {
            0
        }
    }

    /// Distributor set-up, once, on CPU 0 before secondaries start: every SPI
    /// disabled, inactive, not pending, level-triggered, priority
    /// [`PRIORITY`], routed to CPU 0; then the distributor enabled.
    pub fn init_distributor(&self) {
        let d = self.gicd;
        Self::wr(d + GICD_CTLR, 0);
        let lines = self.lines();
        let group = self.group_bits();
        let prio4 = u32::from_ne_bytes([PRIORITY; 4]);
        for n in 1..lines / 32 {
            let off = u64::from(n) * 4;
            Self::wr(d + GICD_ICENABLER + off, !0);
            Self::wr(d + GICD_ICPENDR + off, !0);
            Self::wr(d + GICD_ICACTIVER + off, !0);
            Self::wr(d + GICD_IGROUPR + off, group);
        }
        for n in 8..lines / 4 {
            let off = u64::from(n) * 4;
            Self::wr(d + GICD_IPRIORITYR + off, prio4);
            Self::wr(d + GICD_ITARGETSR + off, 0x0101_0101);
        }
        for n in 2..lines / 16 {
            Self::wr(d + GICD_ICFGR + u64::from(n) * 4, 0);
        }
        // Non-secure view: bit 0 = EnableGrp1. Single view: bit 0 = EnableGrp0.
        Self::wr(d + GICD_CTLR, 1);
        DIST_READY.store(true, Ordering::Release);
    }

    /// This CPU's banked distributor registers (SGIs and PPIs disabled,
    /// priority [`PRIORITY`]) and its CPU interface: priority mask open,
    /// no preemption groups, signalling on, bypass off.
    pub fn init_cpu(&self) {
        assert!(
            DIST_READY.load(Ordering::Acquire),
            "GIC-400 CPU interface set up before the distributor"
        );
        let (d, c) = (self.gicd, self.gicc);
        Self::wr(d + GICD_ICENABLER, !0);
        Self::wr(d + GICD_ICPENDR, !0);
        Self::wr(d + GICD_ICACTIVER, !0);
        Self::wr(d + GICD_IGROUPR, self.group_bits());
        let prio4 = u32::from_ne_bytes([PRIORITY; 4]);
        for n in 0..8 {
            Self::wr(d + GICD_IPRIORITYR + n * 4, prio4);
        }
        Self::wr(c + GICC_PMR, PMR_OPEN);
        Self::wr(c + GICC_BPR, 0);
        // Bit 0: EnableGrp1 (non-secure view) or EnableGrp0 (single view);
        // EOImode 0: a write to GICC_EOIR drops priority and deactivates.
        Self::wr(c + GICC_CTLR, 1 | CTLR_BYPASS_DISABLE);
    }

    /// Enables interrupt `intid` (for a PPI or SGI: on this CPU only).
    pub fn enable(&self, intid: u32) {
        let off = u64::from(intid / 32) * 4;
        Self::wr(self.gicd + GICD_ISENABLER + off, 1 << (intid % 32));
    }

    /// Disables interrupt `intid`.
    pub fn disable(&self, intid: u32) {
        let off = u64::from(intid / 32) * 4;
        Self::wr(self.gicd + GICD_ICENABLER + off, 1 << (intid % 32));
    }

    /// Sends SGI `intid` (0..15) to this CPU (TargetListFilter = 0b10).
    pub fn send_sgi_to_self(&self, intid: u32) {
        Self::wr(self.gicd + GICD_SGIR, (0b10 << 24) | (intid & 0xf));
    }

    /// Acknowledges the highest-priority pending interrupt: the raw GICC_IAR
    /// value (ID in bits 9:0, for SGIs the source CPU in 12:10), to be given
    /// back to [`Gic400::eoi`]; ID [`SPURIOUS`] when nothing is pending.
    pub fn ack(&self) -> u32 {
        Self::rd(self.gicc + GICC_IAR)
    }

    /// Ends the interrupt `iar` returned by [`Gic400::ack`].
    pub fn eoi(&self, iar: u32) {
        Self::wr(self.gicc + GICC_EOIR, iar);
    }

    /// Boot self-test on this CPU: SGI `intid` sent to self must be
    /// acknowledged with its ID and source CPU `cpu`, and after EOI nothing
    /// may be pending. Leaves the SGI disabled. Returns what went wrong.
    pub fn self_test(&self, intid: u32, cpu: u32) -> Result<(), &'static str> {
        self.enable(intid);
        self.send_sgi_to_self(intid);
        // Bounded poll: the SGI becomes pending within a few accesses.
        let mut iar = SPURIOUS;
        for _ in 0..100_000 {
            iar = self.ack();
            if iar & 0x3ff != SPURIOUS {
                break;
            }
            core::hint::spin_loop();
        }
        self.disable(intid);
        if iar & 0x3ff == SPURIOUS {
            return Err("the SGI never became pending");
        }
        self.eoi(iar);
        if iar & 0x3ff != intid || (iar >> 10) & 7 != cpu {
            return Err("GICC_IAR named another interrupt or source");
        }
        if self.ack() & 0x3ff != SPURIOUS {
            return Err("an interrupt is still pending after EOI");
        }
        Ok(())
    }
}
