//! A vCPU's saved context, and the per-CPU state the run loop switches with.

use crate::arch::esr::MmioAccess;
use crate::arch::switch::CpuSync;
use crate::arch::world_switch::{El1Context, FpState, GuestRegs, HostSave};
use crate::vcpu::debug::DebugRegs;
use crate::vcpu::inject;
use crate::vcpu::pmu::PmuState;
use crate::vcpu::ptimer::PTimer;
use crate::vcpu::sve::SvePtr;
use crate::vcpu::traps::HCR_BASE;
use barriers::sync::{El2Fp, Synced};
use barriers::vttbr::Vttbr;
use vgic::VcpuIf;

/// A vCPU's saved state (host or guest).
///
/// `repr(C)`, the FP/SIMD state last: the fields every exit uses stay near
/// the start, within the reach of one load's immediate offset.
#[derive(Debug)]
#[repr(C)]
pub struct VcpuCtx {
    pub regs: GuestRegs,
    pub el1: El1Context,
    /// HCR_EL2 trap bits for this vCPU (HCR_BASE plus cache traps).
    pub hcr: u64,
    /// An MMIO read the host is answering.
    pub mmio: Option<MmioAccess>,
    /// Length of that read's instruction (4, or 2 in Thumb): what its
    /// completion steps the PC by.
    pub mmio_len: u64,
    /// The vCPU's virtual GIC CPU interface state.
    pub vif: VcpuIf,
    /// Its EL1 physical timer (guest vCPUs only).
    pub ptimer: PTimer,
    /// The virtual timer's level as last given to the vGIC (PPI 27), or
    /// true when unknown (a reset): `vcpu::gic::vgic_before_entry` skips
    /// the vGIC's lock while the line stays low.
    pub vtimer_high: bool,
    /// The vCPU has used SVE: its SVE state, not `fp`, holds its FP/SIMD and
    /// SVE registers (`vcpu::sve`).
    pub sve_used: bool,
    /// Where its SVE state is while it runs (its VM's `GuestVm::sve` slot,
    /// locked by VCPU_RUN); null for the host and between runs. Not here
    /// itself: 2.2 KiB in the host's context, on its CPU's stack, would push
    /// the run loop's stack slots past the reach of one instruction.
    pub sve: SvePtr,
    /// Its PMU (`vcpu::pmu`), switched only once it has used it.
    pub pmu: PmuState,
    /// Breakpoints, watchpoints, MDSCR_EL1 and the OS lock (guests only;
    /// switched lazily by `vcpu::debug`).
    pub debug: DebugRegs,
    pub fp: FpState,
}

impl Default for VcpuCtx {
    fn default() -> Self {
        Self::new()
    }
}

impl VcpuCtx {
    /// A context that has not run.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            regs: GuestRegs {
                x: [0; 31],
                pc: 0,
                pstate: 0,
            },
            el1: El1Context::RESET,
            fp: FpState::new(),
            debug: DebugRegs::new(),
            sve_used: false,
            sve: SvePtr::NULL,
            hcr: HCR_BASE,
            mmio: None,
            mmio_len: 4,
            vif: VcpuIf::new(0),
            pmu: PmuState::new(),
            ptimer: PTimer::RESET,
            vtimer_high: true,
        }
    }

    /// Resets the context to start at `entry` with `x0`, trapping with `hcr`.
    pub fn reset(&mut self, vcpu: usize, entry: u64, x0: u64, hcr: u64) {
        *self = Self::new();
        self.vif = VcpuIf::new(vcpu);
        self.regs.x[0] = x0;
        self.regs.pc = entry;
        self.regs.pstate = inject::PSTATE_DAIF | inject::PSTATE_EL1H;
        self.hcr = hcr;
    }
}

/// Who holds the FP/SIMD registers of this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpOwner {
    /// Nobody: saved away.
    None,
    /// The host vCPU.
    Host,
    /// The guest vCPU running (or last run) here.
    Guest,
}

/// [`Cpu::timers_masked`]: the virtual timer's PPI.
pub const TIMER_V: u8 = 1;
/// [`Cpu::timers_masked`]: the EL1 physical timer's PPI.
pub const TIMER_P: u8 = 2;

/// This CPU's switching state.
pub struct Cpu<'a> {
    pub idx: usize,
    pub nr_cpus: usize,
    pub save: &'a mut HostSave,
    pub sync: &'a CpuSync,
    /// This CPU's VTTBR_EL2: every stage-2 load and every stage-2 TLB
    /// maintenance goes through it.
    pub vttbr: Vttbr,
    pub fp_owner: FpOwner,
    /// Present while CPTR_EL2.TFP is clear and synchronised.
    pub fp_on: Option<Synced<El2Fp>>,
    /// The running guest vCPU's PMU state is in the hardware (`vcpu::pmu`).
    pub pmu_loaded: bool,
    /// The PMU's PPI is disabled at this CPU's redistributor because its
    /// level is being delivered as a virtual interrupt.
    pub pmu_masked: bool,
    /// [`TIMER_V`]: the virtual timer's PPI is disabled at this CPU's
    /// redistributor because its level is being delivered as a virtual
    /// interrupt. [`TIMER_P`]: the same for the EL1 physical timer's
    /// (`vcpu::ptimer`), or a vCPU that uses it was loaded: its level is
    /// sampled before each entry until it is low. One byte, so an entry
    /// with neither tests once.
    pub timers_masked: u8,
    /// The host vCPU's virtual CPU interface (its hardware-linked INTx
    /// interrupts, VMCR, active priorities), kept here while it runs a guest.
    pub host_if: vgic::HostIf,
    /// A guest's time slice in counter ticks (CNTFRQ_EL0 read once, at
    /// the CPU's start: a division per VCPU_RUN otherwise).
    pub slice_ticks: u64,
}
