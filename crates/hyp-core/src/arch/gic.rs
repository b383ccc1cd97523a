//! The physical interrupt controller as the hypervisor uses it: its own
//! time-slice timer (the EL2 physical timer, PPI 26), the virtual timer's
//! PPI 27 and the EL1 physical timer's PPI 30 while a guest runs, the vGIC maintenance interrupt (PPI 25) and
//! a kick SGI, all routed to EL2 (HCR_EL2.IMO), acknowledged and ended here.
//! Guests' interrupts are virtual (the `vgic` crate).
//!
//! GICv3 (QEMU virt): system-register CPU interface (ICC_*, through
//! `barriers`), redistributor per CPU. Offsets: GICv3 architecture
//! specification (IHI 0069) 12.9 (GICD_CTLR), 12.11 (GICR_WAKER, the SGI
//! frame's IGROUPR0, ISENABLER0, IPRIORITYR); all from `hw_regs::gic`.
//! GICv2 (GIC-400, Raspberry Pi 4): memory-mapped GICD/GICC; the board set
//! up groups and the CPU interface (`PlatformOps::init_cpu_interrupts`).
//! Offsets: GICv2 architecture specification (IHI 0048B) 4.3 and 4.4.
//!
//! The MMIO accesses are plain volatile accesses to device memory EL2 maps
//! nGnRE; the `arm-gic` crate's driver would also write ICC registers
//! directly, outside `barriers`, so only its layout knowledge is used (through
//! `hw_regs`, whose tests check it against `arm-gic`).

use crate::platform::GicLayout;
use barriers::regs;
use barriers::sync::{El2GicIf, GicSre, Includes};
use barriers::{GuestPending, Synced};
use hw_regs::gic::{
    GICC_EOIR, GICC_IAR, GICD_CTLR, GICD_ICENABLER, GICD_ICFGR, GICD_IGROUPR, GICD_IPRIORITYR,
    GICD_IROUTER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR, GICD_SGIR, GICR_ICENABLER0,
    GICR_IGROUPR0, GICR_IPRIORITYR, GICR_ISENABLER0, GICR_SGI_FRAME, GICR_STRIDE, GICR_WAKER,
};
use spin::Once;

/// INTID of the EL2 physical timer (CNTHP).
pub const HYP_TIMER_PPI: u32 = 26;
/// INTID of the EL1 virtual timer: taken at EL2 while a guest runs, then
/// masked here and delivered as a virtual interrupt (see `vm.rs`).
pub const VTIMER_PPI: u32 = 27;
/// INTID of the PMU overflow interrupt (QEMU virt and raspi4b wire each
/// CPU's PMU to its PPI 7): taken at EL2 while a guest vCPU's PMU is
/// loaded, then masked here and delivered as the virtual one (`vcpu::pmu`).
pub const PMU_PPI: u32 = 23;
/// INTID of the EL1 physical timer (the binding's non-secure physical
/// timer): the same for a guest vCPU that uses it (`vcpu::ptimer`).
pub const PTIMER_PPI: u32 = 30;
/// INTID of the virtual CPU interface's maintenance interrupt.
pub const MAINTENANCE_PPI: u32 = 25;
/// SGI the hypervisor sends to a CPU to make its running vCPU exit.
pub const KICK_SGI: u32 = 0;
/// INTID the CPU interface returns when nothing is pending.
pub const SPURIOUS: u32 = 1023;

/// ICC_CTLR_EL1.EOImode (bit 1): priority drop and deactivation are separate.
const EOIMODE_SPLIT: u64 = 1 << 1;

const MINE: [u32; 6] = [
    HYP_TIMER_PPI,
    VTIMER_PPI,
    PMU_PPI,
    PTIMER_PPI,
    MAINTENANCE_PPI,
    KICK_SGI,
];

fn write32(addr: u64, v: u32) {
    // SAFETY: `addr` is a GIC register EL2 maps as device memory (board
    // regions), and the register's side effects are the intended ones.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as `write32`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write8(addr: u64, v: u8) {
    // SAFETY: as `write32`; byte access to IPRIORITYR is architected.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

/// The board's physical GIC: the layout the board gave (`GicLayout`), with
/// the operations below.
pub type Phys = GicLayout;

static PHYS: Once<Phys> = Once::new();

/// Records the board's GIC and, for GICv3, enables the distributor
/// (affinity routing, both groups; QEMU virt runs it with security
/// disabled, GICD_CTLR.DS = 1). Boot CPU, once, before secondaries start.
pub fn init(layout: GicLayout) {
    if let GicLayout::V3 { gicd, .. } = layout {
        write32(gicd + GICD_CTLR, (1 << 4) | 0b11);
    }
    PHYS.call_once(|| layout);
}

/// The physical GIC, after [`init`].
pub fn phys() -> Option<&'static Phys> {
    PHYS.get()
}

impl Phys {
    /// The vGIC version guests get.
    pub fn version(&self) -> vgic::Version {
        match self {
            Phys::V3 { .. } => vgic::Version::V3,
            Phys::V2 { .. } => vgic::Version::V2,
        }
    }

    /// Enables the hypervisor's interrupts on this CPU: for GICv3 after
    /// waking its redistributor, as Group 1 at middle priority with the CPU
    /// interface on (ICC writes go into `pending`, synchronised by the next
    /// entry ERET: EL2 itself runs with interrupts masked).
    ///
    /// # Panics
    ///
    /// If a GICv3 redistributor does not wake within a bounded wait, or a
    /// GICv3 board has no ICC_SRE_EL2 proof (a boot bug).
    pub fn init_cpu(&self, cpu: usize, sre: Option<&Synced<GicSre>>, pending: &mut GuestPending) {
        let mask = MINE.iter().fold(0u32, |m, &i| m | (1 << i));
        match *self {
            Phys::V3 { gicr, .. } => {
                let sre = sre.expect("GICv3 needs ICC_SRE_EL2.SRE synchronised");
                let rd = gicr + cpu as u64 * GICR_STRIDE;
                // ProcessorSleep (bit 1) off, then wait for ChildrenAsleep (bit 2).
                write32(rd + GICR_WAKER, read32(rd + GICR_WAKER) & !(1 << 1));
                let mut spins = 0;
                while read32(rd + GICR_WAKER) & (1 << 2) != 0 {
                    spins += 1;
                    assert!(
                        spins < 10_000_000,
                        "GIC redistributor of CPU {cpu} does not wake"
                    );
                }
                let sgi = rd + GICR_SGI_FRAME;
                write32(sgi + GICR_IGROUPR0, read32(sgi + GICR_IGROUPR0) | mask);
                for i in MINE {
                    write8(sgi + GICR_IPRIORITYR + u64::from(i), 0x80);
                }
                write32(sgi + GICR_ISENABLER0, mask);
                pending.add(regs::IccPmrEl1::write(sre, 0xff));
                // EOImode (bit 1) = 1: an EOIR write only drops the running priority and
                // ICC_DIR_EL1 deactivates (IHI 0069, "Priority drop and interrupt
                // deactivation"), so the host's INTx lines can stay active until the host's
                // virtual EOI deactivates them through a hardware-linked list register.
                pending.add(regs::IccCtlrEl1::write(sre, EOIMODE_SPLIT));
                pending.add(regs::IccIgrpen1El1::write(sre, 1));
            }
            Phys::V2 { gicd, .. } => {
                // Banked per CPU: SGI/PPI enables and priorities.
                for i in MINE {
                    write8(gicd + GICD_IPRIORITYR + u64::from(i), 0x80);
                }
                write32(gicd + GICD_ISENABLER, mask);
            }
        }
    }

    /// Acknowledges the pending physical interrupt: the raw value to give
    /// back to [`Phys::eoi`] ([`Phys::intid`] extracts the INTID).
    ///
    /// `cpu_if`: the CPU interface's configuration (`init_cpu`) is
    /// synchronised, which the exit that delivered the interrupt proves.
    pub fn ack<K: Includes<El2GicIf>>(
        &self,
        sre: Option<&Synced<GicSre>>,
        cpu_if: &Synced<K>,
    ) -> u32 {
        match (*self, sre) {
            // INTIDs are 24 bits at most: the truncation keeps all of it.
            (Phys::V3 { .. }, Some(sre)) => regs::IccIar1El1::read(sre, cpu_if) as u32,
            (Phys::V2 { gicc, .. }, _) => read32(gicc + GICC_IAR),
            (Phys::V3 { .. }, None) => unreachable!("GICv3 without ICC_SRE_EL2"),
        }
    }

    /// The INTID of a raw acknowledge value.
    pub fn intid(&self, raw: u32) -> u32 {
        match self {
            Phys::V3 { .. } => raw & 0xff_ffff,
            Phys::V2 { .. } => raw & 0x3ff,
        }
    }

    /// Ends an interrupt: priority drop and deactivation (GICv3: EOIR then DIR, as EOImode is 1;
    /// GICv2: EOIR, EOImode 0).
    pub fn eoi<K: Includes<El2GicIf>>(
        &self,
        raw: u32,
        sre: Option<&Synced<GicSre>>,
        cpu_if: &Synced<K>,
        pending: &mut GuestPending,
    ) {
        match (*self, sre) {
            (Phys::V3 { .. }, Some(sre)) => {
                pending.add(regs::IccEoir1El1::write(sre, cpu_if, u64::from(raw)));
                // The priority drop comes first: DIR of an interrupt whose priority has not
                // been dropped is UNPREDICTABLE (IHI 0069, ICC_DIR_EL1). Both are writes to
                // this CPU's interface, which the GIC observes in program order (IHI 0069,
                // "Observability of the effects of accesses to the GIC registers"); nothing at
                // EL2 depends on them before the next ERET.
                pending.add(regs::IccDirEl1::write(sre, cpu_if, u64::from(raw)));
            }
            (Phys::V2 { gicc, .. }, _) => write32(gicc + GICC_EOIR, raw),
            (Phys::V3 { .. }, None) => unreachable!("GICv3 without ICC_SRE_EL2"),
        }
    }

    /// Drops the running priority of an acknowledged interrupt but leaves it active: a host
    /// INTx line handed to the host as a hardware-linked virtual interrupt, which the host's
    /// EOI deactivates (`vgic::HostIf`). GICv3 only (EOImode 1); `vm::host_intx::route`
    /// links no interrupt on GICv2, where this is a full EOI.
    pub fn drop_priority<K: Includes<El2GicIf>>(
        &self,
        raw: u32,
        sre: Option<&Synced<GicSre>>,
        cpu_if: &Synced<K>,
        pending: &mut GuestPending,
    ) {
        match (*self, sre) {
            (Phys::V3 { .. }, Some(sre)) => {
                pending.add(regs::IccEoir1El1::write(sre, cpu_if, u64::from(raw)));
            }
            (Phys::V2 { gicc, .. }, _) => write32(gicc + GICC_EOIR, raw),
            (Phys::V3 { .. }, None) => unreachable!("GICv3 without ICC_SRE_EL2"),
        }
    }

    /// Enables (`on`) or disables SGI/PPI `intid` on CPU `cpu` (which must
    /// be this CPU for GICv2, whose registers are banked).
    pub fn ppi_enable(&self, cpu: usize, intid: u32, on: bool) {
        match *self {
            Phys::V3 { gicr, .. } => {
                let sgi = gicr + cpu as u64 * GICR_STRIDE + GICR_SGI_FRAME;
                let reg = if on { GICR_ISENABLER0 } else { GICR_ICENABLER0 };
                write32(sgi + reg, 1 << intid);
            }
            Phys::V2 { gicd, .. } => {
                let reg = if on { GICD_ISENABLER } else { GICD_ICENABLER };
                write32(gicd + reg, 1 << intid);
            }
        }
    }

    /// Sends the kick SGI to physical CPU `cpu` (Aff0 = `cpu` on GICv3;
    /// CPU interface number `cpu` on GICv2).
    pub fn kick(&self, cpu: usize, sre: Option<&Synced<GicSre>>, pending: &mut GuestPending) {
        match (*self, sre) {
            (Phys::V3 { .. }, Some(sre)) => {
                let aff1 = (cpu as u64 >> 4) & 0xff;
                let target = 1u64 << (cpu & 0xf);
                let v = (aff1 << 16) | (u64::from(KICK_SGI) << 24) | target;
                pending.add(regs::IccSgi1rEl1::write(sre, v));
            }
            (Phys::V2 { gicd, .. }, _) => {
                // TargetListFilter 0 (list), CPUTargetList bit `cpu`.
                write32(gicd + GICD_SGIR, (1 << (16 + (cpu & 7))) | KICK_SGI);
            }
            (Phys::V3 { .. }, None) => unreachable!("GICv3 without ICC_SRE_EL2"),
        }
    }
}

impl Phys {
    fn gicd(&self) -> u64 {
        match *self {
            Phys::V3 { gicd, .. } | Phys::V2 { gicd, .. } => gicd,
        }
    }

    /// Configures SPI `intid` of an assigned device or of the host's INTx: group 1 (v3),
    /// middle priority, level-sensitive, delivered to CPU 0, enabled.
    pub fn spi_setup(&self, intid: u32) {
        let d = self.gicd();
        let (word, bit) = (u64::from(intid / 32) * 4, 1u32 << (intid % 32));
        write8(d + GICD_IPRIORITYR + u64::from(intid), 0x80);
        // GICD_ICFGR<n>: Int_config bit 2 * (intid % 16) + 1 clear = level-sensitive.
        let cfg = d + GICD_ICFGR + u64::from(intid / 16) * 4;
        write32(cfg, read32(cfg) & !(2 << (2 * (intid % 16))));
        match self {
            Phys::V3 { .. } => {
                write32(
                    d + GICD_IGROUPR + word,
                    read32(d + GICD_IGROUPR + word) | bit,
                );
                // IROUTER: Aff3.Aff2.Aff1.Aff0 = 0.0.0.0 (CPU 0), IRM = 0.
                let r = d + GICD_IROUTER + 8 * u64::from(intid);
                write32(r, 0);
                write32(r + 4, 0);
            }
            Phys::V2 { .. } => write8(d + GICD_ITARGETSR + u64::from(intid), 1),
        }
        self.spi_enable(intid, true);
    }

    /// Enables (`on`) or disables SPI `intid` at the distributor.
    pub fn spi_enable(&self, intid: u32, on: bool) {
        let reg = if on { GICD_ISENABLER } else { GICD_ICENABLER };
        write32(
            self.gicd() + reg + u64::from(intid / 32) * 4,
            1 << (intid % 32),
        );
    }

    /// Whether SPI `intid` is pending at the distributor: for a level-
    /// sensitive interrupt, whether its device still asserts the line
    /// (disabling does not stop the pending state from following it).
    pub fn spi_pending(&self, intid: u32) -> bool {
        read32(self.gicd() + GICD_ISPENDR + u64::from(intid / 32) * 4) & (1 << (intid % 32)) != 0
    }
}

/// Arms the hypervisor's time slice: the EL2 timer fires `ticks` counter
/// ticks from now.
pub fn arm_slice(ticks: u64, pending: &mut GuestPending) {
    let now = crate::arch::sysreg::cntpct_el0();
    pending.add(regs::CnthpCvalEl2::write(now.wrapping_add(ticks)));
    pending.add(regs::CnthpCtlEl2::write(1));
}

/// Stops the time-slice timer (ENABLE = 0, so its level interrupt drops).
pub fn stop_slice(pending: &mut GuestPending) {
    pending.add(regs::CnthpCtlEl2::write(0));
}
