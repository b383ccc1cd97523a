//! Virtual GICv3 (QEMU virt) and GICv2 (the Pi 4's GIC-400), enough for Linux.
//!
//! # The model
//!
//! A VM has one [`Vgic`]: the *distributor state* of every interrupt it can see, behind one
//! `spin::Mutex` because vCPUs on several physical CPUs share it. Per interrupt it keeps enable,
//! group, priority, trigger (edge/level), routing, the pending latch and input level, and the
//! active bit; no guest interrupt is hardware-mapped (the host's device interrupts are, through
//! [`HostIf`], which has no distributor). INTIDs 0..32 (SGIs and PPIs)
//! are private to each vCPU; INTIDs 32..[`NR_INTIDS`] are shared SPIs.
//!
//! Each vCPU has a [`VcpuIf`], owned by the CPU that runs it. Around every guest run:
//!
//! * [`VcpuIf::flush`] (before entry) writes the list registers from the distributor state: the
//!   active interrupts first (they must stay visible so the guest can deactivate them), then the
//!   pending ones by priority. If more are waiting than there are list registers, it enables the
//!   underflow maintenance interrupt, so the guest exits when the list registers drain and the
//!   next flush refills them.
//! * [`VcpuIf::sync`] (after exit) folds every list register it wrote back into the distributor
//!   state: acknowledged interrupts become active, deactivated ones leave, level-sensitive ones are
//!   re-sampled from their input line at the next flush.
//!
//! Between a flush and the next sync the list registers hold the truth for the interrupts they
//! carry; the distributor marks those interrupts as loaded on that vCPU so no other vCPU takes
//! them. Everything is rebuilt on each entry, so list registers need no separate save/restore:
//! only VMCR and the active-priority registers do ([`VcpuIf::save`], [`VcpuIf::restore`]).
//!
//! The guest's distributor (and on v3 its redistributors) are trapped MMIO: [`Vgic::mmio`]
//! emulates them. GICv3 SGIs come from trapped `ICC_SGI1R_EL1` writes ([`Vgic::sgi1r`]), GICv2
//! SGIs from `GICD_SGIR`. Devices and the timer drive interrupt lines with [`Vgic::set_level`]
//! and [`Vgic::inject`]. Every call that can make work for a vCPU returns a [`KickMask`]: the
//! vCPUs that should exit (or wake from WFI) so that their next flush sees it.
//!
//! The hardware sits behind the [`ListRegs`] trait: [`V3Sysregs`] (the `ICH_*_EL2` system
//! registers through `barriers`) and [`V2Mmio`] (the GICH frame). Host tests use a fake.
//!
//! # Limits
//!
//! * No LPIs/ITS, no GICv2 GICC emulation (a v2 guest uses the GICV frame mapped at its GICC
//!   address), no 1-of-N SPI routing (`GICD_TYPER.No1N` = 1), single security state (DS = 1).
//! * Active interrupts are never evicted from the list registers, so a guest can nest at most
//!   as many active interrupts as there are list registers (the same rule as KVM's
//!   `vgic_irq_cmp`); further pending interrupts wait for one to be deactivated.
//!
//! # Why not `arm-gic`
//!
//! `arm-gic` is a driver: its register blocks are for MMIO through `safe-mmio` pointers, not for
//! decoding trapped offsets; its system-register writes go through `arm-sysregs` and would bypass
//! `barriers`' pending-token discipline; and its `GicdCtlr` flags describe the Secure view of
//! `GICD_CTLR` (ARE_S at bit 4, ARE_NS at bit 5), whereas our guests see the single-security-state
//! view (DS = 1, ARE at bit 4). The offsets come from `hw-regs`, whose tests cross-check them
//! against its register structs instead.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

mod cpuif;
mod dist;
pub mod host;
mod hw;
pub mod lr;
mod mmio;

pub use cpuif::{ListRegs, VcpuIf};
pub use dist::Vgic;
pub use host::HostIf;
pub use hw::{V2Mmio, V3Sysregs};
pub use lr::{Lr, LrState};
pub use mmio::{MmioOutcome, Region, DIST_SIZE_V2, DIST_SIZE_V3, REDIST_FRAME_SIZE};

/// Number of SPIs: INTIDs 32..96, so `GICD_TYPER.ITLinesNumber` = 2.
pub const NR_SPIS: usize = 64;
/// Number of INTIDs the vGIC implements (SGIs, PPIs, SPIs).
pub const NR_INTIDS: usize = 32 + NR_SPIS;
/// Maximum vCPUs per VM (GICv2's limit; vCPU *i* has MPIDR Aff0 = *i*).
pub const MAX_VCPUS: usize = 8;
/// Maximum list registers the architecture allows (16 for both versions).
pub const MAX_LRS: usize = 16;
/// The EL1 virtual timer PPI.
pub const VTIMER_PPI: u32 = 27;
/// The GIC maintenance interrupt PPI (physical; the hypervisor acknowledges it).
pub const MAINTENANCE_PPI: u32 = 25;

/// A bitmask of vCPUs (bit *i* = vCPU *i*) that have new work and should be kicked.
pub type KickMask = u8;

/// The GIC architecture the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// GICv2: memory-mapped GICD, GICH list registers, 8 CPUs max.
    V2,
    /// GICv3: GICD + one GICR per vCPU, `ICH_*_EL2` list registers, affinity routing.
    V3,
}

/// Errors from the vGIC. The hypervisor turns MMIO errors into an abort injected into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VgicError {
    /// No register at this offset (or the offset is outside the region).
    BadOffset,
    /// The access size or alignment is not allowed for this register.
    BadSize,
    /// The vCPU (or redistributor) does not exist.
    BadVcpu,
    /// The INTID is not implemented or cannot be used that way (e.g. a level on an SGI).
    BadIntid,
}
