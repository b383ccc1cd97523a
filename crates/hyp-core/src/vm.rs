//! The per-CPU run loop: the host VM's vCPU on every physical CPU, guest
//! vCPUs run on behalf of the host (VCPU_RUN), and every exit handled here.
//!
//! Model (pKVM): physical CPU *i* runs host vCPU *i*. The host drives guests
//! through the control interface ([`crate::control`]); VCPU_RUN switches
//! this CPU from the host to a guest vCPU and back when the guest exits for
//! something only the host can do (MMIO to a device it emulates, a yield, a
//! power event). Everything else is handled at EL2 and the guest resumes.
//!
//! State: the control state (VMs, vCPU power and run claims, page
//! ownership) sits behind one lock, taken briefly. A guest vCPU's registers
//! live in a static slot whose lock is uncontended because
//! `Control::begin_run` lets only one CPU claim a vCPU. The host vCPU's
//! registers live on its CPU's stack.
//!
//! FP/SIMD is switched lazily: CPTR_EL2.TFP traps the first FP instruction
//! of a context that does not own the registers; only then are they saved
//! and loaded. A guest's FP state is saved when its run ends, so a vCPU can
//! move to another CPU.

use crate::arch::sysreg;
use crate::arch::world_switch::{self, El1Context, FpState, GuestRegs, HostSave, VectorKind};
use crate::control::{self, Control, HostError, PhysMem, RunEnd, MAX_VMS};
use crate::exit::{self, DataAbort, Esr, ExitReason, MmioAccess};
use crate::hypercall::{self, Hypercall};
use crate::inject::{self, Injected};
use crate::platform::{AssignableDevice, MemRegion};
use crate::switch::{self, CpuSync};
use crate::{stats, uart_emul};
use barriers::sync::{Cse, El2Fp};
use barriers::vttbr::Vttbr;
use barriers::{regs, GuestPending, Synced};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use hyp_abi::exit as run_exit;
use s2mm::{Pa, TableAlloc};
use spin::{Mutex, Once, RwLock};
use vgic::{VcpuIf, Vgic};

/// Most vCPUs a VM may have (and physical CPUs the hypervisor drives).
pub const MAX_VCPUS: usize = control::MAX_VCPUS;
/// The emulated PL011 every VM (the host included) sees at QEMU virt's UART address.
pub use hyp_abi::layout::UART_IPA as GUEST_UART_IPA;
/// Guest IPAs whose accesses are forwarded to the host (QEMU virt's
/// virtio-mmio window; the host emulates devices there).
pub const HOST_MMIO: MemRegion = MemRegion {
    base: hyp_abi::layout::HOST_MMIO_IPA,
    size: hyp_abi::layout::HOST_MMIO_SIZE,
};

const HCR_VM: u64 = 1 << 0;
const HCR_SWIO: u64 = 1 << 1;
const HCR_FMO: u64 = 1 << 3;
const HCR_IMO: u64 = 1 << 4;
const HCR_AMO: u64 = 1 << 5;
const HCR_FB: u64 = 1 << 9;
const HCR_BSU_IS: u64 = 1 << 10;
const HCR_TWI: u64 = 1 << 13;
const HCR_TID3: u64 = 1 << 18;
const HCR_TSC: u64 = 1 << 19;
const HCR_TIDCP: u64 = 1 << 20;
const HCR_TSW: u64 = 1 << 22;
const HCR_TVM: u64 = 1 << 26;
const HCR_RW: u64 = 1 << 31;

/// HCR_EL2 while any VM runs (written once per CPU at bring-up): stage 2
/// on, physical interrupts to EL2, the guest's TLBIs and barriers broadcast
/// inner-shareable, WFI and SMC trapped, ID registers (TID3) and
/// implementation-defined registers (TIDCP) trapped, EL1 in AArch64. Only
/// trap bits ([`regs::HCR_GUEST_ONLY_FIELDS`]) change per vCPU after that.
pub const HCR_BASE: u64 = HCR_VM
    | HCR_SWIO
    | HCR_FMO
    | HCR_IMO
    | HCR_AMO
    | HCR_FB
    | HCR_BSU_IS
    | HCR_TWI
    | HCR_TID3
    | HCR_TSC
    | HCR_TIDCP
    | HCR_RW;

/// Cache-maintenance traps of a guest vCPU without FEAT_S2FWB (seed 003,
/// ARM-RULES.md section 3): TVM catches its MMU/cache enable, TSW its
/// set/way operations.
pub const HCR_CACHE_TRAPS: u64 = HCR_TVM | HCR_TSW;

/// CPTR_EL2 (E2H = 0) with FP/SIMD usable: RES1 bits 13 and 9..0 set, TSM
/// (bit 12: SME trapped) and TZ (bit 8: SVE trapped) set, TFP (bit 10) clear.
const CPTR_FP_ON: u64 = 0x33ff;
/// The same with TFP (bit 10) set: FP/SIMD accesses trap to EL2.
const CPTR_TRAP_FP: u64 = CPTR_FP_ON | (1 << 10);

/// MDCR_EL2: trap PMU (TPM, TPMCR) and debug (TDA, TDOSA, TDRA) accesses;
/// nothing is virtualised, so they are answered with UNDEF.
const MDCR: u64 = (1 << 6) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 11);

/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN (counter reads allowed); EL1PCEN clear,
/// so the physical timer traps (and is refused): VMs use the virtual timer.
const CNTHCTL: u64 = 1;

/// Table memory for the control state: the hypervisor's page pool.
#[derive(Debug)]
pub struct PoolAlloc;

// SAFETY: as `arch::tables::Tables`, whose allocation this forwards under the
// pool lock; the pool's pages are identity-mapped at EL2.
unsafe impl TableAlloc for PoolAlloc {
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
        crate::arch::tables::Tables(&mut crate::arch::tables::POOL.lock()).alloc_tables(pages)
    }
    unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
        // SAFETY: forwarded contract.
        unsafe {
            crate::arch::tables::Tables(&mut crate::arch::tables::POOL.lock())
                .free_tables(pa, pages);
        }
    }
    fn table_ptr(&self, pa: Pa) -> core::ptr::NonNull<core::sync::atomic::AtomicU64> {
        core::ptr::NonNull::new(pa.0 as *mut core::sync::atomic::AtomicU64).expect("table at PA 0")
    }
}

/// Scrubbing through EL2's identity map of RAM.
#[derive(Debug)]
pub struct HypMem;

impl PhysMem for HypMem {
    fn scrub(&mut self, pa: u64, len: u64) {
        // SAFETY: the range is RAM a destroyed VM owned and nobody maps now
        // (its stage 2 is gone, the host's is not yet restored); EL2 maps all
        // RAM by identity.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, len as usize) };
        barriers::maint::clean_inval_to_poc(pa, len);
    }
}

/// The control state.
pub type Ctl = Control<PoolAlloc, HypMem>;

static CONTROL: Once<Mutex<Ctl>> = Once::new();
use crate::arch::gic::{self, Phys};
/// Exits that ended a guest's time slice.
static PREEMPTIONS: AtomicU64 = AtomicU64::new(0);

/// Number of guest runs ended by the time-slice timer.
pub fn preemptions() -> u64 {
    PREEMPTIONS.load(Ordering::Relaxed)
}
static HOST_VTTBR: AtomicU64 = AtomicU64::new(0);
static VTCR: AtomicU64 = AtomicU64::new(0);
static FWB: AtomicU8 = AtomicU8::new(0);

/// The control state (after [`init`]).
pub fn control() -> &'static Mutex<Ctl> {
    CONTROL.get().expect("vm::init runs before any VM")
}

/// Builds the host's stage 2 over `host_ram` and the control state.
///
/// # Errors
///
/// A message naming what failed.
pub fn init(
    host_ram: MemRegion,
    fwb: bool,
    assignable: &'static [AssignableDevice],
) -> Result<(), &'static str> {
    ASSIGNABLE.call_once(|| assignable);
    let parange = sysreg::id_aa64mmfr0_el1() & 0xf;
    // SAFETY: boot CPU, before any CPU runs a guest: no other owner of
    // VTTBR_EL2 exists on this CPU while this one lives (dropped below;
    // `run_cpu` makes the CPU's own). VMID 0 with no table: the host's
    // stage 2 does not exist yet, and no lower EL runs before `run_cpu`.
    let mut vttbr = unsafe { Vttbr::init(0) };
    let ctl = Control::new(
        PoolAlloc,
        HypMem,
        &mut vttbr,
        host_ram,
        control::GUEST_IPA_BITS,
        parange,
        fwb,
    )
    .map_err(|_| "cannot build the host's stage 2")?;
    let s2 = ctl.host_s2();
    let vtcr = s2
        .vtcr(parange)
        .map_err(|_| "CPU's PARange too small for the IPA size")?;
    HOST_VTTBR.store(s2.vttbr(), Ordering::Relaxed);
    VTCR.store(vtcr, Ordering::Relaxed);
    FWB.store(u8::from(fwb), Ordering::Relaxed);
    CONTROL.call_once(|| Mutex::new(ctl));
    Ok(())
}

/// A vCPU's saved state (host or guest).
#[derive(Debug)]
pub struct VcpuCtx {
    regs: GuestRegs,
    el1: El1Context,
    fp: FpState,
    /// HCR_EL2 trap bits for this vCPU (HCR_BASE plus cache traps).
    hcr: u64,
    /// An MMIO read the host is answering.
    mmio: Option<MmioAccess>,
    /// The vCPU's virtual GIC CPU interface state.
    vif: VcpuIf,
}

impl VcpuCtx {
    const fn new() -> Self {
        Self {
            regs: GuestRegs {
                x: [0; 31],
                pc: 0,
                pstate: 0,
            },
            el1: El1Context::RESET,
            fp: FpState::new(),
            hcr: HCR_BASE,
            mmio: None,
            vif: VcpuIf::new(0),
        }
    }

    fn reset(&mut self, vcpu: usize, entry: u64, x0: u64, hcr: u64) {
        *self = Self::new();
        self.vif = VcpuIf::new(vcpu);
        self.regs.x[0] = x0;
        self.regs.pc = entry;
        self.regs.pstate = inject::PSTATE_DAIF | inject::PSTATE_EL1H;
        self.hcr = hcr;
    }
}

/// The board's assignable devices.
static ASSIGNABLE: Once<&'static [AssignableDevice]> = Once::new();
/// Most assignable devices tracked.
const MAX_ASSIGNED: usize = 4;
/// Per assignable device: the VM slot + 1 it belongs to (0: none).
static ASSIGNED: [AtomicU8; MAX_ASSIGNED] = [const { AtomicU8::new(0) }; MAX_ASSIGNED];
/// Per assignable device: its SPI is disabled at the physical distributor
/// while the VM handles it (re-enabled once the line drops).
static ASSIGNED_MASKED: [AtomicU8; MAX_ASSIGNED] = [const { AtomicU8::new(0) }; MAX_ASSIGNED];

fn assignable() -> &'static [AssignableDevice] {
    let a = ASSIGNABLE.get().copied().unwrap_or(&[]);
    &a[..a.len().min(MAX_ASSIGNED)]
}

/// DEVICE_ASSIGN: maps one of the board's assignable devices into VM
/// `handle` (same address) and routes its SPI to the VM's vGIC. A device
/// goes to one VM at a time, and only to a VM with a vGIC.
fn assign_device(
    vttbr: &mut Vttbr,
    handle: u64,
    pa: u64,
    size: u64,
    intid: u64,
) -> Result<(), HostError> {
    let (i, dev) = assignable()
        .iter()
        .enumerate()
        .find(|(_, d)| d.region.base == pa && d.region.size == size && u64::from(d.intid) == intid)
        .ok_or(HostError::Invalid)?;
    let slot = control().lock().vm(handle)?.vmid as usize - 1;
    if VGIC[slot].read().is_none() {
        return Err(HostError::State);
    }
    if ASSIGNED[i]
        .compare_exchange(0, slot as u8 + 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(HostError::Denied);
    }
    if let Err(e) = control().lock().map_device(vttbr, handle, pa, pa, size) {
        ASSIGNED[i].store(0, Ordering::Release);
        return Err(e);
    }
    ASSIGNED_MASKED[i].store(0, Ordering::Release);
    if let Some(g) = gic::phys() {
        g.spi_setup(dev.intid);
    }
    log::info!(
        "VM {handle}: device {} assigned (SPI {})",
        dev.name,
        dev.intid
    );
    Ok(())
}

/// Takes back the devices of VM slot `slot` (destroyed).
fn unassign_devices(slot: usize) {
    for (i, dev) in assignable().iter().enumerate() {
        if ASSIGNED[i].load(Ordering::Acquire) == slot as u8 + 1 {
            if let Some(g) = gic::phys() {
                g.spi_enable(dev.intid, false);
            }
            ASSIGNED[i].store(0, Ordering::Release);
        }
    }
}

/// A physical interrupt of an assigned device: disabled at the distributor
/// until its line drops, and raised as the same INTID in the owner's vGIC.
/// True when `intid` belonged to an assigned device.
fn forward_device_irq(c: &mut Cpu<'_>, intid: u32, pending: &mut GuestPending) -> bool {
    let Some(i) = assignable().iter().position(|d| d.intid == intid) else {
        return false;
    };
    let owner = ASSIGNED[i].load(Ordering::Acquire);
    if let Some(g) = gic::phys() {
        g.spi_enable(intid, false);
    }
    if owner == 0 {
        return true;
    }
    ASSIGNED_MASKED[i].store(1, Ordering::Release);
    let slot = owner as usize - 1;
    let kick = VGIC[slot]
        .read()
        .as_ref()
        .and_then(|vg| vg.set_level(0, intid, true).ok())
        .unwrap_or(0);
    kick_vcpus(c, slot, usize::MAX, kick, pending);
    true
}

/// Before VM `slot` runs: for each of its devices whose interrupt was
/// forwarded, samples the line (the distributor's pending bit) into the
/// vGIC, and re-enables the physical SPI once the device dropped it.
fn resample_devices(slot: usize, vg: &Vgic) {
    for (i, dev) in assignable().iter().enumerate() {
        if ASSIGNED[i].load(Ordering::Acquire) != slot as u8 + 1
            || ASSIGNED_MASKED[i].load(Ordering::Acquire) == 0
        {
            continue;
        }
        let Some(g) = gic::phys() else {
            return;
        };
        let level = g.spi_pending(dev.intid);
        let _ = vg.set_level(0, dev.intid, level);
        if !level {
            ASSIGNED_MASKED[i].store(0, Ordering::Release);
            g.spi_enable(dev.intid, true);
        }
    }
}

/// Each VM slot's virtual GIC (GICv3 boards). Written at VM_CREATE and
/// VM_DESTROY, when none of the VM's vCPUs runs; read while they run.
static VGIC: [RwLock<Option<Vgic>>; MAX_VMS] = [const { RwLock::new(None) }; MAX_VMS];

/// Guest IPA of the virtual distributor (QEMU virt's layout).
pub use hyp_abi::layout::GICD_IPA as VGICD_IPA;
/// Guest IPA of the first virtual redistributor.
pub use hyp_abi::layout::GICR_IPA as VGICR_IPA;

/// Console output of the host (index 0) and each VM slot (slot + 1).
static CONSOLES: [Mutex<uart_emul::VmConsole>; MAX_VMS + 1] =
    [const { Mutex::new(uart_emul::VmConsole::new()) }; MAX_VMS + 1];

static GUEST_CTX: [[Mutex<VcpuCtx>; MAX_VCPUS]; MAX_VMS] =
    [const { [const { Mutex::new(VcpuCtx::new()) }; MAX_VCPUS] }; MAX_VMS];

const OFF: u8 = 0;
const ON_PENDING: u8 = 2;
const ON: u8 = 3;
static HOST_POWER: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(OFF) }; MAX_VCPUS];
static HOST_BOOT: [Mutex<(u64, u64)>; MAX_VCPUS] = [const { Mutex::new((0, 0)) }; MAX_VCPUS];

/// Powers on host vCPU `cpu` at `entry` with `x0`.
pub fn start_host(cpu: usize, entry: u64, x0: u64) {
    *HOST_BOOT[cpu].lock() = (entry, x0);
    HOST_POWER[cpu].store(ON_PENDING, Ordering::Release);
    barriers::maint::publish_and_wake();
}

/// Who holds the FP/SIMD registers of this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FpOwner {
    None,
    Host,
    Guest,
}

/// This CPU's switching state.
struct Cpu<'a> {
    idx: usize,
    nr_cpus: usize,
    save: &'a mut HostSave,
    sync: &'a CpuSync,
    /// This CPU's VTTBR_EL2: every stage-2 load and every stage-2 TLB
    /// maintenance goes through it.
    vttbr: Vttbr,
    fp_owner: FpOwner,
    /// Present while CPTR_EL2.TFP is clear and synchronised.
    fp_on: Option<Synced<El2Fp>>,
    /// The virtual timer's PPI is disabled at this CPU's redistributor
    /// because its level is being delivered as a virtual interrupt.
    vtimer_masked: bool,
}

/// Whose exit is being handled: the host or guest `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Host,
    Guest { slot: usize, vcpu: usize },
}

impl Who {
    fn stats_index(self) -> usize {
        match self {
            Who::Host => 0,
            Who::Guest { slot, .. } => slot + 1,
        }
    }
}

/// What the run loop does after an exit.
enum Next {
    Resume,
    /// Back to the host with this VCPU_RUN result (guests only).
    ToHost(RunEnd, [u64; 4]),
    /// The machine powers off (host SYSTEM_OFF).
    SystemOff,
    /// The host vCPU turned itself off.
    HostCpuOff,
}

/// Runs host vCPU `cpu` on this CPU (and the guest vCPUs it asks for) for as
/// long as the system lives. Returns when the machine should power off.
pub fn run_cpu(cpu: usize, nr_cpus: usize, save: &mut HostSave, sync: &CpuSync) {
    let mut c = Cpu {
        idx: cpu,
        nr_cpus,
        save,
        sync,
        // SAFETY: the one owner for this CPU, for as long as it runs
        // vCPUs; the host's stage 2 is complete (`init`).
        vttbr: unsafe { Vttbr::init(HOST_VTTBR.load(Ordering::Relaxed)) },
        fp_owner: FpOwner::None,
        fp_on: None,
        vtimer_masked: false,
    };
    let mut host = VcpuCtx::new();
    let mut first = GuestPending::new();
    // SAFETY: traps only; nothing at EL2 uses the PMU, debug or timers.
    unsafe {
        first.add(regs::MdcrEl2::write(MDCR));
        first.add(regs::CnthctlEl2::write(CNTHCTL));
        first.add(regs::VtcrEl2::write(VTCR.load(Ordering::Relaxed)));
    }
    first.add(regs::VpidrEl2::write(sysreg::midr_el1()));
    first.add(regs::CntvoffEl2::write(0));
    if let Some(g) = gic::phys() {
        g.init_cpu(cpu, sync.gic.as_ref(), &mut first);
    }
    let mut first = Some(first);
    loop {
        while HOST_POWER[cpu].load(Ordering::Acquire) != ON_PENDING {
            sysreg::wfe();
        }
        let (entry, x0) = *HOST_BOOT[cpu].lock();
        host.reset(cpu, entry, x0, HCR_BASE);
        HOST_POWER[cpu].store(ON, Ordering::Release);
        let mut pending = first.take().unwrap_or_default();
        load_host(&mut c, &host, &mut pending);
        let (next, left) = host_loop(&mut c, &mut host, pending);
        match next {
            Next::SystemOff => {
                // The machine powers off: no ERET will ever consume them.
                left.power_off();
                return;
            }
            // The host's next entry (after its CPU_ON) synchronises them.
            _ => {
                first = Some(left);
                HOST_POWER[cpu].store(OFF, Ordering::Release);
            }
        }
    }
}

/// Loads the host vCPU's context: its stage 2, traps, MPIDR, EL1 registers.
fn load_host(c: &mut Cpu<'_>, host: &VcpuCtx, pending: &mut GuestPending) {
    let r = switch::ContextRegs {
        vttbr: HOST_VTTBR.load(Ordering::Relaxed),
        hcr: host.hcr,
        vmpidr: (1 << 31) | c.idx as u64,
    };
    // SAFETY: the host's stage 2 maps only host-owned RAM; its HCR differs
    // from the boot value in trap bits only.
    unsafe { switch::load_context(&mut c.vttbr, c.sync, r, &host.el1, pending) };
    set_fp_traps(c, c.fp_owner == FpOwner::Host, pending);
}

/// Sets CPTR_EL2 for the context about to run: FP on only if it owns the
/// registers.
fn set_fp_traps(c: &mut Cpu<'_>, owns: bool, pending: &mut GuestPending) {
    if !owns {
        switch::trap_fp(c.sync, &mut c.fp_on, CPTR_TRAP_FP, pending);
    }
}

/// Clears CPTR_EL2.TFP and synchronises it, so EL2 may save/load FP state.
fn fp_enable<'c>(c: &'c mut Cpu<'_>) -> &'c Synced<El2Fp> {
    switch::enable_fp(c.sync, &mut c.fp_on, CPTR_FP_ON)
}

/// Returns what ended the host vCPU's run, with the guest-only writes made
/// since its last entry (its next entry's ERET discharges them).
fn host_loop(c: &mut Cpu<'_>, host: &mut VcpuCtx, first: GuestPending) -> (Next, GuestPending) {
    let mut pending = first;
    loop {
        let entry = barriers::enter_guest(&c.sync.eos, &mut c.vttbr, pending);
        // SAFETY: TPIDR_EL2 points at `c.save`; the host's stage 2, HCR and
        // EL1 context are loaded; `host.regs` outlives the call.
        let (kind, cse) = unsafe { world_switch::enter(&mut host.regs, &mut *c.save, entry) };
        pending = GuestPending::new();
        let fast = c.save.take_fast_hvcs();
        if fast != 0 {
            stats::add(0, ExitReason::Hvc, fast);
        }
        let next = match kind {
            VectorKind::Sync => host_sync(c, host, &mut pending),
            VectorKind::Irq | VectorKind::Fiq => {
                stats::record(0, ExitReason::Irq);
                let _ = physical_irq(c, &cse, &mut pending);
                Next::Resume
            }
            VectorKind::SError => {
                stats::record(0, ExitReason::Other);
                log::warn!("host vCPU {}: SError at {:#x}", c.idx, host.regs.pc);
                Next::Resume
            }
        };
        match next {
            Next::Resume => {}
            Next::ToHost(..) => unreachable!("only guests return to the host"),
            other => {
                host.el1.save(&c.sync.hcr);
                return (other, pending);
            }
        }
    }
}

fn host_sync(c: &mut Cpu<'_>, host: &mut VcpuCtx, pending: &mut GuestPending) -> Next {
    let esr = Esr(sysreg::esr_el2());
    let reason = ExitReason::from_ec(esr.ec());
    stats::record(0, reason);
    match reason {
        ExitReason::Hvc | ExitReason::Smc => {
            if reason == ExitReason::Smc {
                host.regs.pc += 4;
            }
            let fid = host.regs.x[0] as u32;
            if (hyp_abi::FID_BASE..=hyp_abi::FID_LAST).contains(&fid) {
                host_call(c, host, pending)
            } else {
                host_hypercall(c, host)
            }
        }
        ExitReason::DataAbort => {
            data_abort(c, Who::Host, host, Trap::read(), pending);
            Next::Resume
        }
        ExitReason::InstAbort => {
            let far = sysreg::far_el2();
            inject_into(c, host, Injected::InstAbort { far }, pending);
            Next::Resume
        }
        ExitReason::Wfx => {
            host.regs.pc += 4;
            Next::Resume
        }
        ExitReason::Fp => {
            fp_trap(c, host, FpOwner::Host, None);
            Next::Resume
        }
        ExitReason::SysReg => {
            sysreg_trap(c, Who::Host, host, esr, pending);
            Next::Resume
        }
        ExitReason::Irq | ExitReason::Other => {
            inject_into(c, host, Injected::Undefined, pending);
            Next::Resume
        }
    }
}

/// The host's own PSCI/SMCCC calls: CPU_ON of other host vCPUs (one per
/// physical CPU), CPU_OFF, SYSTEM_OFF for the machine.
fn host_hypercall(c: &mut Cpu<'_>, host: &mut VcpuCtx) -> Next {
    let x = [
        host.regs.x[0],
        host.regs.x[1],
        host.regs.x[2],
        host.regs.x[3],
    ];
    let call = hypercall::decode(x);
    if let Some(r) = hypercall::stateless_answer(call) {
        host.regs.x[..4].copy_from_slice(&r);
        return Next::Resume;
    }
    let ret = match call {
        Hypercall::CpuOn {
            target,
            entry,
            context,
        } => match hypercall::mpidr_to_index(target, c.nr_cpus) {
            None => hypercall::INVALID_PARAMETERS,
            Some(i) => {
                match HOST_POWER[i].compare_exchange(OFF, 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        start_host(i, entry, context);
                        hypercall::SUCCESS
                    }
                    Err(ON) => hypercall::ALREADY_ON,
                    Err(_) => hypercall::ON_PENDING,
                }
            }
        },
        Hypercall::AffinityInfo {
            target,
            lowest_level,
        } => match hypercall::mpidr_to_index(target, c.nr_cpus) {
            Some(i) if lowest_level == 0 => match HOST_POWER[i].load(Ordering::Acquire) {
                ON => 0,
                OFF => 1,
                _ => 2,
            },
            _ => hypercall::INVALID_PARAMETERS,
        },
        Hypercall::CpuSuspend => hypercall::SUCCESS,
        Hypercall::CpuOff => return Next::HostCpuOff,
        Hypercall::SystemOff | Hypercall::SystemReset => {
            log::info!("host vCPU {} requested system power-off", c.idx);
            return Next::SystemOff;
        }
        // Memory sharing and MMIO guard are guest services: the host owns
        // its memory already.
        _ => hypercall::NOT_SUPPORTED,
    };
    host.regs.x[0] = ret;
    Next::Resume
}

fn err(e: HostError) -> u64 {
    e.code()
}

/// A host control call (fid in the host range).
fn host_call(c: &mut Cpu<'_>, host: &mut VcpuCtx, pending: &mut GuestPending) -> Next {
    let fid = host.regs.x[0] as u32;
    let a = [
        host.regs.x[1],
        host.regs.x[2],
        host.regs.x[3],
        host.regs.x[4],
    ];
    let mut out = [0u64; 4];
    out[0] = match fid {
        hyp_abi::VM_CREATE => match create_vm(&mut c.vttbr, a[0], a[1]) {
            Ok(h) => {
                stats::reset(h as usize);
                // Nothing a previous VM in this slot left unfinished.
                *CONSOLES[h as usize].lock() = uart_emul::VmConsole::new();
                // The vGIC: GICv3, or GICv2 with the GIC-400's GICV frame
                // mapped as the guest's GICC (`new_vgic`).
                *VGIC[h as usize - 1].write() =
                    gic::phys().and_then(|g| new_vgic(&mut c.vttbr, g, h, a[0] as usize));
                h
            }
            Err(e) => err(e),
        },
        hyp_abi::DEVICE_ASSIGN => match assign_device(&mut c.vttbr, a[0], a[1], a[2], a[3]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::VM_DESTROY => match control().lock().destroy(&mut c.vttbr, a[0]) {
            Ok(n) => {
                unassign_devices(a[0] as usize - 1);
                *VGIC[a[0] as usize - 1].write() = None;
                n
            }
            Err(e) => err(e),
        },
        hyp_abi::MEM_DONATE | hyp_abi::MEM_LEND => {
            let kind = if fid == hyp_abi::MEM_DONATE {
                control::RegionKind::Donated
            } else {
                control::RegionKind::Lent
            };
            // x5: flags (bit 0: map at stage 2 on first touch).
            let flags = host.regs.x[5];
            if flags & !hyp_abi::MEM_FLAG_LAZY != 0 {
                err(HostError::Invalid)
            } else {
                let lazy = flags & hyp_abi::MEM_FLAG_LAZY != 0;
                match control()
                    .lock()
                    .give_with(&mut c.vttbr, a[0], a[1], a[2], a[3], kind, lazy)
                {
                    Ok(()) => {
                        // The host may have written code there; the give's
                        // map cleaned it to PoC (no FWB): now the I-caches.
                        // A lazy give maps later (`map_on_demand`).
                        if !lazy {
                            barriers::maint::invalidate_icache_all_is();
                        }
                        0
                    }
                    Err(e) => err(e),
                }
            }
        }
        hyp_abi::VCPU_INIT => match control().lock().vcpu_init(a[0], a[1], a[2], a[3]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::VCPU_STATE => control().lock().vcpu_state(a[0], a[1]).unwrap_or_else(err),
        hyp_abi::MMIO_COMPLETE => match control().lock().mmio_complete(a[0], a[1], a[2]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::STATS => {
            if a[0] == 0 || control().lock().vm(a[0]).is_ok() {
                stats::read(a[0] as usize, a[1]).unwrap_or(err(HostError::Invalid))
            } else {
                err(HostError::NoVm)
            }
        }
        hyp_abi::VCPU_RUN => {
            match vcpu_run(c, host, pending, a[0], a[1], a[2], a[3]) {
                Ok(r) => {
                    out = r;
                    // The guest changed this CPU's EL1 registers and stage 2.
                    load_host(c, host, pending);
                }
                Err(e) => out[0] = err(e),
            }
            out[0]
        }
        hyp_abi::MACHINE_EXIT => {
            if a[0] == 0 {
                return Next::SystemOff;
            }
            log::error!("host VM exits with status {}", a[0]);
            log::info!("{}", stats::snapshot());
            crate::boot::fail_exit(a[0] as u32)
        }
        _ => err(HostError::NotSupported),
    };
    host.regs.x[..4].copy_from_slice(&out);
    Next::Resume
}

/// VM_CREATE's control half, releasing the control lock before the vGIC
/// set-up takes it again.
fn create_vm(vttbr: &mut Vttbr, vcpus: u64, flags: u64) -> Result<u64, HostError> {
    control().lock().create(vttbr, vcpus, flags)
}

/// VCPU_RUN: switches this CPU to guest vCPU `vcpu` of VM `handle` until an
/// exit for the host; returns the exit record (x0..x3). With
/// [`hyp_abi::RUN_COMPLETE_MMIO`] in `flags`, the outstanding MMIO read is
/// completed with `value` first, under the same lock.
fn vcpu_run(
    c: &mut Cpu<'_>,
    host: &mut VcpuCtx,
    host_pending: &mut GuestPending,
    handle: u64,
    vcpu: u64,
    flags: u64,
    value: u64,
) -> Result<[u64; 4], HostError> {
    if flags & !hyp_abi::RUN_COMPLETE_MMIO != 0 {
        return Err(HostError::Invalid);
    }
    let start = {
        let mut ctl = control().lock();
        if flags & hyp_abi::RUN_COMPLETE_MMIO != 0 {
            ctl.mmio_complete(handle, vcpu, value)?;
        }
        ctl.begin_run(handle, vcpu, c.idx)?
    };
    let slot = handle as usize - 1;
    let v = vcpu as usize;
    let mut ctx = GUEST_CTX[slot][v]
        .try_lock()
        .expect("a claimed vCPU's context is free");
    if let Some((entry, x0)) = start.boot {
        let fwb = FWB.load(Ordering::Relaxed) != 0;
        ctx.reset(
            v,
            entry,
            x0,
            if fwb {
                HCR_BASE
            } else {
                HCR_BASE | HCR_CACHE_TRAPS
            },
        );
    }
    if let Some(value) = start.mmio_value {
        if let Some(m) = ctx.mmio.take() {
            if m.reg != 31 {
                ctx.regs.x[m.reg as usize] = m.load_result(value);
            }
            ctx.regs.pc += 4;
        }
    }
    host.el1.save(&c.sync.hcr);
    let mut pending = GuestPending::new();
    let r = switch::ContextRegs {
        vttbr: start.vttbr,
        hcr: ctx.hcr,
        vmpidr: (1 << 31) | vcpu,
    };
    // SAFETY: the VM's stage 2 maps only memory it owns or borrows; its HCR
    // differs from the boot value in trap bits only.
    unsafe { switch::load_context(&mut c.vttbr, c.sync, r, &ctx.el1, &mut pending) };
    let vg = VGIC[slot].read();
    if vg.is_some() {
        if let Some(mut lrs) = Lrs::new(c.sync, &mut pending) {
            ctx.vif.restore(&mut lrs);
        }
    }
    let who = Who::Guest { slot, vcpu: v };
    let (end, record, left) = guest_loop(c, who, &mut ctx, pending, vg.as_ref());
    host_pending.append(left);
    drop(vg);
    ctx.el1.save(&c.sync.hcr);
    if c.fp_owner == FpOwner::Guest {
        let on = fp_enable(c);
        world_switch::fp_save(on, &mut ctx.fp);
        c.fp_owner = FpOwner::None;
    }
    drop(ctx);
    control().lock().end_run(handle, vcpu, c.idx, end);
    Ok(record)
}

fn guest_loop(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    first: GuestPending,
    vg: Option<&Vgic>,
) -> (RunEnd, [u64; 4], GuestPending) {
    let mut pending = first;
    set_fp_traps(c, c.fp_owner == FpOwner::Guest, &mut pending);
    if gic::phys().is_some() {
        // A guest that never exits still gives the CPU back to the host.
        gic::arm_slice(sysreg::cntfrq_el0() / SLICES_PER_SECOND, &mut pending);
    }
    // For the vector's fast path (`hyp_fast_sync`) while the guest runs.
    let fast_ctx = FastCtx { who, vg };
    loop {
        cache_traps_before_entry(who, ctx, &mut pending);
        if let Some(vg) = vg {
            vgic_before_entry(c, who, ctx, vg, &mut pending);
        }
        let entry = barriers::enter_guest(&c.sync.eos, &mut c.vttbr, pending);
        c.save.set_fast(core::ptr::from_ref(&fast_ctx).cast());
        // SAFETY: TPIDR_EL2 points at `c.save`; the VM's stage 2, HCR and
        // EL1 context are loaded; `ctx.regs` outlives the call. `fast_ctx`
        // outlives the run and is withdrawn right after it.
        let (kind, cse) = unsafe { world_switch::enter(&mut ctx.regs, &mut *c.save, entry) };
        c.save.set_fast(core::ptr::null());
        pending = GuestPending::new();
        // HVCs the vector answered by itself during this run (`__hvc_fast`).
        let fast = c.save.take_fast_hvcs();
        if fast != 0 {
            stats::add(who.stats_index(), ExitReason::Hvc, fast);
        }
        // ESR, FAR and HPFAR, read once for every path below (meaningful
        // for synchronous exits only).
        let trap = Trap::read();
        if let Some(vg) = vg {
            if let Some(mut lrs) = Lrs::new(c.sync, &mut pending) {
                ctx.vif.sync(vg, &mut lrs);
            }
        }
        let next = match kind {
            VectorKind::Sync => guest_sync(c, who, ctx, &mut pending, vg, trap),
            VectorKind::Irq | VectorKind::Fiq => {
                stats::record(who.stats_index(), ExitReason::Irq);
                if physical_irq(c, &cse, &mut pending) {
                    PREEMPTIONS.fetch_add(1, Ordering::Relaxed);
                    Next::ToHost(RunEnd::Runnable, [run_exit::YIELD, 0, 0, 0])
                } else {
                    Next::Resume
                }
            }
            VectorKind::SError => {
                stats::record(who.stats_index(), ExitReason::Other);
                log::warn!("{who:?}: SError at {:#x}", ctx.regs.pc);
                Next::Resume
            }
        };
        match next {
            Next::Resume => {}
            Next::ToHost(end, record) => {
                if gic::phys().is_some() {
                    gic::stop_slice(&mut pending);
                    if vg.is_some() {
                        if let Some(mut lrs) = Lrs::new(c.sync, &mut pending) {
                            ctx.vif.save(&mut lrs);
                        }
                    }
                }
                // The host's entry ERET synchronises these writes.
                return (end, record, pending);
            }
            Next::SystemOff | Next::HostCpuOff => unreachable!("host-only outcomes"),
        }
    }
}

fn guest_sync(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
    vg: Option<&Vgic>,
    trap: Trap,
) -> Next {
    let esr = trap.esr;
    let reason = ExitReason::from_ec(esr.ec());
    stats::record(who.stats_index(), reason);
    match reason {
        ExitReason::Hvc => guest_hypercall(&mut c.vttbr, who, ctx),
        ExitReason::Smc => {
            // A trapped SMC's preferred return address is the SMC itself.
            ctx.regs.pc += 4;
            guest_hypercall(&mut c.vttbr, who, ctx)
        }
        ExitReason::DataAbort | ExitReason::InstAbort if map_on_demand(&mut c.vttbr, who, trap) => {
            Next::Resume
        }
        ExitReason::DataAbort => {
            if let Some(next) = vgic_mmio(c, who, ctx, trap, pending, vg) {
                return next;
            }
            data_abort(c, who, ctx, trap, pending)
        }
        ExitReason::InstAbort => {
            inject_into(c, ctx, Injected::InstAbort { far: trap.far }, pending);
            Next::Resume
        }
        ExitReason::Wfx => {
            ctx.regs.pc += 4;
            // WFI (ISS bit 0 clear) with no interrupt to take yields the CPU
            // to the host; WFE resumes.
            if esr.iss() & 1 == 0 && !vgic_wakes(c, who, ctx, vg, pending) {
                Next::ToHost(RunEnd::Runnable, [run_exit::YIELD, 0, 0, 0])
            } else {
                Next::Resume
            }
        }
        ExitReason::Fp => {
            fp_trap(c, ctx, FpOwner::Guest, Some(who));
            Next::Resume
        }
        ExitReason::SysReg => {
            if !sgi1r_trap(c, who, ctx, esr, vg, pending) {
                sysreg_trap(c, who, ctx, esr, pending);
            }
            Next::Resume
        }
        ExitReason::Irq | ExitReason::Other => {
            inject_into(c, ctx, Injected::Undefined, pending);
            Next::Resume
        }
    }
}

/// This CPU's list registers, whichever GIC the board has.
enum Lrs<'a> {
    V3(vgic::V3Sysregs<'a, barriers::sync::GicSre>),
    V2(vgic::V2Mmio),
}

impl<'a> Lrs<'a> {
    /// The backend for this CPU; GICv3 writes go into `pending` (guest-only
    /// tokens for the entry ERET).
    fn new(sync: &'a CpuSync, pending: &'a mut GuestPending) -> Option<Self> {
        match (gic::phys()?, sync.gic.as_ref()) {
            (Phys::V3 { .. }, Some(sre)) => {
                // SAFETY: no ICH_HCR_EL2 trap is relied on: SGI writes trap
                // through HCR_EL2.IMO, GICD/GICR accesses through stage 2.
                let b = unsafe { vgic::V3Sysregs::new(sre, pending, 0) };
                Some(Lrs::V3(b))
            }
            (Phys::V2 { gich, .. }, _) => {
                // SAFETY: `gich` is the board's GICH frame, which EL2 maps
                // as device memory; on GIC-400 it is banked per CPU, so this
                // CPU's backend is its only user.
                let b = unsafe { vgic::V2Mmio::new(*gich as usize) };
                Some(Lrs::V2(b))
            }
            (Phys::V3 { .. }, None) => None,
        }
    }
}

macro_rules! lrs_dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Lrs::V3($b) => $e,
            Lrs::V2($b) => $e,
        }
    };
}

impl vgic::ListRegs for Lrs<'_> {
    fn nr_lrs(&self) -> usize {
        lrs_dispatch!(self, b => b.nr_lrs())
    }
    fn read_lr(&mut self, i: usize) -> vgic::Lr {
        lrs_dispatch!(self, b => b.read_lr(i))
    }
    fn write_lr(&mut self, i: usize, lr: &vgic::Lr) {
        lrs_dispatch!(self, b => b.write_lr(i, lr))
    }
    fn empty_lrs(&mut self) -> u16 {
        lrs_dispatch!(self, b => b.empty_lrs())
    }
    fn write_hcr(&mut self, hcr: u32) {
        lrs_dispatch!(self, b => b.write_hcr(hcr))
    }
    fn read_vmcr(&mut self) -> u32 {
        lrs_dispatch!(self, b => b.read_vmcr())
    }
    fn write_vmcr(&mut self, vmcr: u32) {
        lrs_dispatch!(self, b => b.write_vmcr(vmcr))
    }
    fn read_aprs(&mut self) -> [u32; 2] {
        lrs_dispatch!(self, b => b.read_aprs())
    }
    fn write_aprs(&mut self, aprs: [u32; 2]) {
        lrs_dispatch!(self, b => b.write_aprs(aprs))
    }
}

/// The vGIC of a new VM. On GICv2 the guest's CPU interface is the GICV
/// frame itself, mapped at the guest's GICC address.
fn new_vgic(vttbr: &mut Vttbr, g: &Phys, handle: u64, nr_vcpus: usize) -> Option<Vgic> {
    if let Phys::V2 { gicv, .. } = *g {
        if let Err(e) = control()
            .lock()
            .map_device(vttbr, handle, VGICC_V2_IPA, gicv, GICV_SIZE)
        {
            log::warn!("VM {handle}: cannot map the GICV frame: {e:?}");
            return None;
        }
    }
    Vgic::new(g.version(), nr_vcpus).ok()
}

/// Guest IPA of the GICv2 CPU interface (QEMU virt's GICv2 layout).
pub use hyp_abi::layout::GICC_V2_IPA as VGICC_V2_IPA;
/// Size of the GIC-400's GICV frame (two 4 KiB pages).
const GICV_SIZE: u64 = 0x2000;

/// The syndrome registers of a synchronous exit, read once per exit.
#[derive(Debug, Clone, Copy)]
struct Trap {
    esr: Esr,
    far: u64,
    hpfar: u64,
}

impl Trap {
    fn read() -> Self {
        Trap {
            esr: Esr(sysreg::esr_el2()),
            far: sysreg::far_el2(),
            hpfar: sysreg::hpfar_el2(),
        }
    }

    /// The faulting IPA of a stage-2 abort.
    fn ipa(&self) -> u64 {
        exit::fault_ipa(self.hpfar, self.far)
    }

    /// A data abort, decoded.
    fn data_abort(&self) -> DataAbort {
        exit::decode_data_abort(self.esr, self.hpfar, self.far)
    }
}

/// What the vector's fast path needs about the guest running on this CPU
/// (`HostSave::fast` points at it while the guest runs).
struct FastCtx<'a> {
    who: Who,
    vg: Option<&'a Vgic>,
}

/// Called by the lower-EL synchronous vector (`__fast_sync` in
/// `arch/vectors.rs`) while a guest runs, on the hypervisor stack, with the
/// guest's x0..x18, x30 and PC in its register file and x19..x29 still in
/// their registers. True: answered, the vector returns to the guest with the
/// register file's x0..x18, x30 and PC. False: nothing changed, the vector
/// takes the full exit.
#[unsafe(no_mangle)]
extern "C" fn hyp_fast_sync(save: *mut HostSave) -> bool {
    // A cheap first look, so exits that cannot be fast (MMIO for the host,
    // stage-2 faults, WFI, ...) pay little before their full exit: HVC/SMC,
    // or a data abort in the vGIC's frames (the redistributor region at its
    // largest; `vgic_region` checks exactly).
    let esr = Esr(sysreg::esr_el2());
    let maybe = match ExitReason::from_ec(esr.ec()) {
        ExitReason::Hvc | ExitReason::Smc => true,
        ExitReason::DataAbort => {
            let ipa = exit::fault_ipa(sysreg::hpfar_el2(), 0);
            let end = VGICR_IPA + vgic::MAX_VCPUS as u64 * vgic::REDIST_FRAME_SIZE;
            (VGICD_IPA..end).contains(&ipa)
        }
        _ => false,
    };
    maybe && fast_sync(save)
}

/// [`hyp_fast_sync`] past its first look. It reads the syndrome registers
/// again rather than taking them from the caller: passing a `Trap` measured 8
/// instructions more per fast exit (it goes through the stack).
#[inline(never)]
fn fast_sync(save: *mut HostSave) -> bool {
    // SAFETY: the vector passes this CPU's HostSave (TPIDR_EL2). `fast` is
    // null or points at the `FastCtx` of `guest_loop`, which is suspended in
    // `world_switch::enter` for this guest's run and keeps it (and the vGIC
    // read guard it borrows) alive; `guest` points at that vCPU's register
    // file, which nothing else touches during the run.
    let (fast, regs) = unsafe {
        let save = &*save;
        let Some(fast) = save.fast().cast::<FastCtx<'_>>().as_ref() else {
            return false;
        };
        (fast, &mut *save.guest_regs())
    };
    fast_exit(fast.who, regs, fast.vg, Trap::read())
}

/// The fast path, run from the vector (`hyp_fast_sync`): exits answered
/// without touching the vGIC's list registers, the control lock or any
/// system register, so the guest is re-entered at once: stateless
/// SMCCC/PSCI/vendor calls (VERSION, FEATURES, the KVM UID, ...) and reads of
/// the virtual distributor or redistributors (which change no interrupt
/// state). `regs` holds x0..x18, x30 and the PC only. Everything else (and
/// every error) returns false with `regs` unchanged and takes the full path
/// in `guest_sync`. Counted like any exit.
fn fast_exit(who: Who, regs: &mut GuestRegs, vg: Option<&Vgic>, trap: Trap) -> bool {
    let esr = trap.esr;
    let reason = ExitReason::from_ec(esr.ec());
    match reason {
        ExitReason::Hvc | ExitReason::Smc => {
            let x = [regs.x[0], regs.x[1], regs.x[2], regs.x[3]];
            let call = hypercall::decode(x);
            // KVM_FEATURES depends on the VM (protected or not): full path.
            if call == Hypercall::VendorFeatures {
                return false;
            }
            let Some(r) = hypercall::stateless_answer(call) else {
                return false;
            };
            if reason == ExitReason::Smc {
                // A trapped SMC's preferred return address is the SMC itself.
                regs.pc += 4;
            }
            regs.x[..4].copy_from_slice(&r);
        }
        ExitReason::DataAbort => {
            let (Some(vg), Who::Guest { vcpu, .. }) = (vg, who) else {
                return false;
            };
            let DataAbort::Mmio(m) = trap.data_abort() else {
                return false;
            };
            // x19..x29 are not in `regs` on this path.
            if m.write || (19..=29).contains(&m.reg) {
                return false;
            }
            let Some((region, off)) = vgic_region(vg, m.ipa) else {
                return false;
            };
            // Pending and active state may sit in the list registers until
            // the next sync: those reads take the full path.
            let lr_state = match region {
                vgic::Region::Dist => {
                    (0x200..0x400).contains(&off) || (0xf10..0xf30).contains(&off)
                }
                vgic::Region::Redist => {
                    (0x1_0200..0x1_0400).contains(&(off % vgic::REDIST_FRAME_SIZE))
                }
            };
            if lr_state {
                return false;
            }
            let Ok(out) = vg.mmio(vcpu, region, off, m.size.bytes() as u8, None) else {
                return false;
            };
            if m.reg != 31 {
                regs.x[m.reg as usize] = m.load_result(out.value);
            }
            regs.pc += 4;
        }
        _ => return false,
    }
    stats::record(who.stats_index(), reason);
    true
}

/// A stage-2 translation fault in guest RAM given lazily (MEM_FLAG_LAZY):
/// maps the page and returns true, so the access is retried. Every other
/// abort (device IPAs lie below guest RAM and are never looked up here)
/// goes on to the MMIO and injection paths.
fn map_on_demand(vttbr: &mut Vttbr, who: Who, trap: Trap) -> bool {
    let Who::Guest { slot, .. } = who else {
        return false;
    };
    // DFSC/IFSC 0b0001xx: translation fault, level xx.
    if trap.esr.iss() & 0x3c != 0x04 {
        return false;
    }
    let ipa = trap.ipa();
    if ipa < control::GUEST_RAM_IPA_MIN {
        return false;
    }
    let mapped = control()
        .lock()
        .map_on_demand(vttbr, slot as u64 + 1, ipa)
        .is_ok();
    if mapped {
        // The page may hold code the host wrote; the map cleaned it to PoC
        // (no FWB): invalidate the I-caches before the guest fetches from it.
        barriers::maint::invalidate_icache_all_is();
    }
    mapped
}

/// Before entering a guest: samples its virtual timer's output into the
/// vGIC (level-sensitive PPI 27), re-enables the physical timer PPI once the
/// level dropped, and loads the list registers.
fn vgic_before_entry(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    vg: &Vgic,
    pending: &mut GuestPending,
) {
    let Some(g) = gic::phys() else {
        return;
    };
    if let Who::Guest { slot, .. } = who {
        resample_devices(slot, vg);
    }
    // CNTV_CTL_EL0: ENABLE (bit 0), IMASK (bit 1), ISTATUS (bit 2).
    let ctl = regs::CntvCtlEl0::read(&c.sync.hcr);
    let level = ctl & 0b111 == 0b101;
    let _ = vg.set_level(ctx.vif.vcpu(), vgic::VTIMER_PPI, level);
    if c.vtimer_masked && !level {
        g.ppi_enable(c.idx, gic::VTIMER_PPI, true);
        c.vtimer_masked = false;
    }
    if let Some(mut lrs) = Lrs::new(c.sync, pending) {
        ctx.vif.flush(vg, &mut lrs);
    }
}

/// Which vGIC frame `ipa` falls in, and the offset in it.
fn vgic_region(vg: &Vgic, ipa: u64) -> Option<(vgic::Region, u64)> {
    let v3 = vg.version() == vgic::Version::V3;
    let (dist_size, redist_end) = if v3 {
        (
            vgic::DIST_SIZE_V3,
            VGICR_IPA + vg.nr_vcpus() as u64 * vgic::REDIST_FRAME_SIZE,
        )
    } else {
        (vgic::DIST_SIZE_V2, VGICR_IPA)
    };
    if (VGICD_IPA..VGICD_IPA + dist_size).contains(&ipa) {
        Some((vgic::Region::Dist, ipa - VGICD_IPA))
    } else if (VGICR_IPA..redist_end).contains(&ipa) {
        Some((vgic::Region::Redist, ipa - VGICR_IPA))
    } else {
        None
    }
}

/// A trapped guest access to the virtual distributor or redistributors.
/// `None` when the address is not the vGIC's.
fn vgic_mmio(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    trap: Trap,
    pending: &mut GuestPending,
    vg: Option<&Vgic>,
) -> Option<Next> {
    let (vg, Who::Guest { slot, vcpu }) = (vg?, who) else {
        return None;
    };
    let far = trap.far;
    let (region, off) = vgic_region(vg, trap.ipa())?;
    let DataAbort::Mmio(m) = trap.data_abort() else {
        // No syndrome (ISV = 0): the access cannot be emulated.
        let write = trap.esr.iss() & (1 << 6) != 0;
        inject_into(c, ctx, Injected::DataAbort { far, write }, pending);
        return Some(Next::Resume);
    };
    let write = m.write.then(|| {
        if m.reg == 31 {
            0
        } else {
            ctx.regs.x[m.reg as usize]
        }
    });
    match vg.mmio(vcpu, region, off, m.size.bytes() as u8, write) {
        Ok(out) => {
            if !m.write && m.reg != 31 {
                ctx.regs.x[m.reg as usize] = m.load_result(out.value);
            }
            ctx.regs.pc += 4;
            kick_vcpus(c, slot, vcpu, out.kick, pending);
        }
        Err(_) => {
            inject_into(
                c,
                ctx,
                Injected::DataAbort {
                    far,
                    write: m.write,
                },
                pending,
            );
        }
    }
    Some(Next::Resume)
}

/// A guest's write to ICC_SGI1R_EL1 (trapped because HCR_EL2.IMO = 1).
fn sgi1r_trap(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    esr: Esr,
    vg: Option<&Vgic>,
    pending: &mut GuestPending,
) -> bool {
    let acc = exit::decode_sysreg(esr);
    let (Some(vg), Who::Guest { slot, vcpu }) = (vg, who) else {
        return false;
    };
    if !crate::sysreg_trap::is_sgi1r_write(&acc) {
        return false;
    }
    let val = if acc.reg == 31 {
        0
    } else {
        ctx.regs.x[acc.reg as usize]
    };
    if let Ok(kick) = vg.sgi1r(vcpu, val) {
        // Kicks are asynchronous SGIs; the guest's entry ERET follows.
        kick_vcpus(c, slot, vcpu, kick, pending);
    }
    ctx.regs.pc += 4;
    true
}

/// Makes the vCPUs in `kick` (of VM `slot`) notice new virtual interrupts
/// (`me`: the vCPU that caused them, or `usize::MAX`):
/// one running on another physical CPU gets a physical SGI and exits; one
/// not running sees them at its next entry.
fn kick_vcpus(c: &mut Cpu<'_>, slot: usize, me: usize, kick: u8, pending: &mut GuestPending) {
    let Some(g) = gic::phys() else {
        return;
    };
    // `me` (the vCPU that caused the kick) needs none; `usize::MAX`: none is.
    let me_bit = u8::try_from(me)
        .ok()
        .and_then(|m| 1u8.checked_shl(u32::from(m)));
    if kick & !me_bit.unwrap_or(0) == 0 {
        return;
    }
    let ctl = control().lock();
    let Ok(vm) = ctl.vm(slot as u64 + 1) else {
        return;
    };
    for v in 0..vm.nr_vcpus {
        if v != me && kick & (1 << v) != 0 {
            if let Some(cpu) = vm.vcpus[v].running_on {
                if cpu != c.idx {
                    g.kick(cpu, c.sync.gic.as_ref(), pending);
                }
            }
        }
    }
}

/// Whether a WFI should complete at once because the vCPU has a virtual
/// interrupt to take.
fn vgic_wakes(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    vg: Option<&Vgic>,
    pending: &mut GuestPending,
) -> bool {
    let (Some(vg), Who::Guest { vcpu, .. }) = (vg, who) else {
        return false;
    };
    let Some(mut lrs) = Lrs::new(c.sync, pending) else {
        return false;
    };
    let pmr = ctx.vif.priority_mask(vg.version(), &mut lrs);
    vg.has_pending(vcpu, pmr)
}

/// Time slices per second a guest vCPU gets before the host runs again.
const SLICES_PER_SECOND: u64 = 100;

/// Handles a physical interrupt taken at EL2; true when it was the end of
/// the running guest's time slice.
fn physical_irq(c: &mut Cpu<'_>, exit: &Synced<Cse>, pending: &mut GuestPending) -> bool {
    let Some(g) = gic::phys() else {
        return false;
    };
    let raw = g.ack(c.sync.gic.as_ref(), exit);
    let intid = g.intid(raw);
    if intid == gic::SPURIOUS {
        return false;
    }
    let slice = intid == gic::HYP_TIMER_PPI;
    match intid {
        gic::HYP_TIMER_PPI => gic::stop_slice(pending),
        gic::VTIMER_PPI => {
            // The running vCPU's virtual timer fired: mask the physical
            // PPI until the guest has dealt with it (its level is sampled
            // into the vGIC before each entry).
            g.ppi_enable(c.idx, intid, false);
            c.vtimer_masked = true;
        }
        // Maintenance (the vGIC re-syncs after every exit) and kicks (the
        // exit itself was the point).
        gic::MAINTENANCE_PPI | gic::KICK_SGI => {}
        _ if intid >= 32 && forward_device_irq(c, intid, pending) => {}
        _ => log::warn!("CPU {}: unexpected physical interrupt {intid}", c.idx),
    }
    g.eoi(raw, c.sync.gic.as_ref(), exit, pending);
    slice
}

/// First FP/SIMD use by a context that does not own the registers: save
/// the owner's, load this context's.
fn fp_trap(c: &mut Cpu<'_>, ctx: &mut VcpuCtx, me: FpOwner, _who: Option<Who>) {
    let prev = c.fp_owner;
    let idx = c.idx;
    // Only the host's state can still be live here: a guest's is saved
    // when its run ends, and a guest never traps while it owns the FP.
    let on = fp_enable(c);
    if prev == FpOwner::Host && me == FpOwner::Guest {
        // The host's context is not reachable from here; it was saved into
        // HOST_FP by this CPU's slot.
        world_switch::fp_save(on, &mut host_fp(idx).lock());
    }
    if me == FpOwner::Host {
        world_switch::fp_load(on, &host_fp(idx).lock());
    } else {
        world_switch::fp_load(on, &ctx.fp);
    }
    c.fp_owner = me;
}

static HOST_FP: [Mutex<FpState>; MAX_VCPUS] = [const { Mutex::new(FpState::new()) }; MAX_VCPUS];

fn host_fp(cpu: usize) -> &'static Mutex<FpState> {
    &HOST_FP[cpu]
}

fn guest_hypercall(vttbr: &mut Vttbr, who: Who, ctx: &mut VcpuCtx) -> Next {
    let Who::Guest { slot, vcpu } = who else {
        unreachable!("guest calls come from guests");
    };
    let handle = slot as u64 + 1;
    let x = [ctx.regs.x[0], ctx.regs.x[1], ctx.regs.x[2], ctx.regs.x[3]];
    let (nr, protected) = control()
        .lock()
        .vm(handle)
        .map(|vm| (vm.nr_vcpus, vm.protected))
        .unwrap_or((0, false));
    let call = hypercall::decode(x);
    if let Some(mut r) = hypercall::stateless_answer(call) {
        if call == Hypercall::VendorFeatures && !protected {
            // MEM_SHARE/MEM_UNSHARE are protected-VM services (as in pKVM,
            // where only protected VMs get them): a normal VM's memory is
            // the host's already. A guest learns whether it is protected
            // from this bitmap, as Linux's pkvm_init_hyp_services does.
            r[0] &= !hypercall::vendor::PROTECTED_ONLY;
        }
        ctx.regs.x[..4].copy_from_slice(&r);
        return Next::Resume;
    }
    let ret = match call {
        Hypercall::CpuOn {
            target,
            entry,
            context,
        } => match hypercall::mpidr_to_index(target, nr) {
            None => hypercall::INVALID_PARAMETERS,
            Some(t) => control().lock().psci_cpu_on(handle, t, entry, context),
        },
        Hypercall::AffinityInfo {
            target,
            lowest_level,
        } => match hypercall::mpidr_to_index(target, nr) {
            Some(t) if lowest_level == 0 => control().lock().psci_affinity_info(handle, t),
            _ => hypercall::INVALID_PARAMETERS,
        },
        Hypercall::CpuSuspend => hypercall::SUCCESS,
        Hypercall::CpuOff => {
            return Next::ToHost(RunEnd::CpuOff, [run_exit::CPU_OFF, 0, 0, 0]);
        }
        Hypercall::SystemOff => {
            log::info!("VM {handle} vCPU {vcpu} requested SYSTEM_OFF");
            return Next::ToHost(RunEnd::SystemOff, [run_exit::SYSTEM_OFF, 0, 0, 0]);
        }
        Hypercall::SystemReset => {
            log::info!("VM {handle} vCPU {vcpu} requested SYSTEM_RESET");
            return Next::ToHost(RunEnd::SystemReset, [run_exit::SYSTEM_RESET, 0, 0, 0]);
        }
        Hypercall::MemShare { ipa } | Hypercall::MemUnshare { ipa } => {
            let share = matches!(call, Hypercall::MemShare { .. });
            match control().lock().guest_share(vttbr, handle, ipa, share) {
                Ok(()) => hypercall::SMCCC_RET_SUCCESS,
                Err(_) => hypercall::SMCCC_RET_INVALID_PARAMETER,
            }
        }
        // MMIO guard: every access outside guest memory already exits to
        // EL2 and is forwarded only within the host's MMIO window, so
        // enrolling and (un)mapping device pages succeed for IPAs outside
        // guest memory and are refused for its RAM.
        Hypercall::MmioGuardEnroll => hypercall::SMCCC_RET_SUCCESS,
        Hypercall::MmioGuardMap { ipa } | Hypercall::MmioGuardUnmap { ipa } => {
            let ram = control()
                .lock()
                .vm(handle)
                .map(|vm| vm.is_ram(ipa))
                .unwrap_or(true);
            if ram {
                hypercall::SMCCC_RET_INVALID_PARAMETER
            } else {
                hypercall::SMCCC_RET_SUCCESS
            }
        }
        _ => hypercall::NOT_SUPPORTED,
    };
    ctx.regs.x[0] = ret;
    Next::Resume
}

fn data_abort(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    trap: Trap,
    pending: &mut GuestPending,
) -> Next {
    let far = trap.far;
    match trap.data_abort() {
        DataAbort::Mmio(m)
            if (GUEST_UART_IPA..GUEST_UART_IPA + uart_emul::WINDOW).contains(&m.ipa) =>
        {
            let off = m.ipa - GUEST_UART_IPA;
            if m.write {
                let val = if m.reg == 31 {
                    0
                } else {
                    ctx.regs.x[m.reg as usize]
                };
                if let Some(b) = uart_emul::write(off, val) {
                    let vcpu = match who {
                        Who::Host => c.idx,
                        Who::Guest { vcpu, .. } => vcpu,
                    };
                    let mut console = CONSOLES[who.stats_index()].lock();
                    if let Some(line) = console.push(vcpu, b) {
                        crate::console::guest_line(line);
                    }
                }
            } else if m.reg != 31 {
                ctx.regs.x[m.reg as usize] = m.load_result(uart_emul::read(off));
            }
            ctx.regs.pc += 4;
            Next::Resume
        }
        DataAbort::Mmio(m)
            if matches!(who, Who::Guest { .. })
                && (HOST_MMIO.base..HOST_MMIO.end()).contains(&m.ipa) =>
        {
            let flags = hyp_abi::mmio_flags(m.size.bytes(), m.write);
            if m.write {
                let val = if m.reg == 31 {
                    0
                } else {
                    ctx.regs.x[m.reg as usize] & size_mask(m.size.bytes())
                };
                ctx.regs.pc += 4;
                Next::ToHost(RunEnd::Runnable, [run_exit::MMIO, m.ipa, flags, val])
            } else {
                ctx.mmio = Some(m);
                Next::ToHost(RunEnd::AwaitMmio, [run_exit::MMIO, m.ipa, flags, 0])
            }
        }
        DataAbort::Mmio(m) => {
            let write = m.write;
            if who == Who::Host {
                stats::host_denied();
            }
            inject_into(c, ctx, Injected::DataAbort { far, write }, pending);
            Next::Resume
        }
        DataAbort::NoSyndrome { write, .. } => {
            if who == Who::Host {
                stats::host_denied();
            }
            inject_into(c, ctx, Injected::DataAbort { far, write }, pending);
            Next::Resume
        }
        DataAbort::Stage1Walk { .. } => {
            inject_into(c, ctx, Injected::DataAbort { far, write: false }, pending);
            Next::Resume
        }
    }
}

fn size_mask(bytes: u64) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1 << (bytes * 8)) - 1
    }
}

/// Trapped MSR/MRS and system instructions: ID registers (TID3), the
/// virtual-memory controls (TVM), set/way cache maintenance (TSW); anything
/// else (implementation-defined registers, PMU, debug) is UNDEF.
fn sysreg_trap(c: &mut Cpu<'_>, who: Who, ctx: &mut VcpuCtx, esr: Esr, pending: &mut GuestPending) {
    use crate::sysreg_trap::{classify_access, debug_read, TrappedSysReg};
    let acc = exit::decode_sysreg(esr);
    let rt = acc.reg as usize;
    let val = if rt == 31 { 0 } else { ctx.regs.x[rt] };
    match classify_access(&acc) {
        TrappedSysReg::IdReg(e) if acc.read => {
            let v = crate::idregs_emul::read(e);
            if rt != 31 {
                ctx.regs.x[rt] = v;
            }
        }
        TrappedSysReg::SetWay(_) => set_way_trap(c, who, ctx, pending),
        TrappedSysReg::Vm(r) if !acc.read => tvm_write(c, who, ctx, r, val, pending),
        // Debug registers (op0 = 2, trapped by MDCR_EL2.TDA/TDOSA): RAZ/WI
        // instead of UNDEF, because Linux writes MDSCR_EL1 and the OS lock
        // registers at boot (issue #9; see `sysreg_trap::debug_read`).
        _ => match debug_read(acc.enc) {
            Some(v) => {
                if acc.read && rt != 31 {
                    ctx.regs.x[rt] = v;
                }
            }
            None => return inject_into(c, ctx, Injected::Undefined, pending),
        },
    }
    ctx.regs.pc += 4;
}

/// Per VM: vCPUs whose TVM trap a set/way operation of another vCPU
/// re-armed ([`cache_traps_before_entry`] applies it).
static TVM_REARM: [crate::sysreg_trap::TvmRearm; MAX_VMS] =
    [const { crate::sysreg_trap::TvmRearm::new() }; MAX_VMS];

/// Sets the vCPU's HCR_EL2 TVM bit as `tvm` says; writes HCR_EL2 if it changed.
fn set_tvm(ctx: &mut VcpuCtx, tvm: bool, pending: &mut GuestPending) {
    let hcr = if tvm {
        ctx.hcr | HCR_TVM
    } else {
        ctx.hcr & !HCR_TVM
    };
    if hcr != ctx.hcr {
        ctx.hcr = hcr;
        // SAFETY: changes a trap only this module relies on.
        pending.add(unsafe { regs::HcrEl2::write_traps_only(hcr) });
    }
}

/// Before entering a guest vCPU: sets its TVM trap again if another vCPU's
/// set/way operation asked for it ([`set_way_trap`]).
fn cache_traps_before_entry(who: Who, ctx: &mut VcpuCtx, pending: &mut GuestPending) {
    if let Who::Guest { slot, vcpu } = who {
        if TVM_REARM[slot].take(vcpu) {
            set_tvm(ctx, true, pending);
        }
    }
}

/// A data-cache set/way operation trapped by HCR_EL2.TSW
/// ([`crate::sysreg_trap::set_way`]): while the vCPU's TVM is clear, a
/// VM-wide clean+invalidate, and TVM set again on this vCPU and on every
/// other vCPU of the VM (those running on other CPUs are kicked, so they
/// take it at their next entry, which the kick forces; a vCPU that toggles
/// its caches before the kick lands is not trapped), so the next MMU/cache
/// toggle of any vCPU is seen and flushes again.
fn set_way_trap(c: &mut Cpu<'_>, who: Who, ctx: &mut VcpuCtx, pending: &mut GuestPending) {
    let Who::Guest { slot, vcpu } = who else {
        return;
    };
    let t = crate::sysreg_trap::set_way(ctx.hcr & HCR_TVM != 0);
    if t.flush_vm {
        flush_vm(slot);
    }
    set_tvm(ctx, t.tvm, pending);
    if t.rearm_others {
        let asked = TVM_REARM[slot].request(vcpu);
        kick_vcpus(c, slot, vcpu, asked, pending);
        log::info!(
            "VM {}: vCPU {vcpu} did a set/way operation: VM-wide clean+invalidate, TVM re-armed on every vCPU",
            slot + 1
        );
    }
}

/// A write trapped by HCR_EL2.TVM: performs it on the vCPU's behalf. For
/// SCTLR_EL1 ([`crate::sysreg_trap::sctlr_write`]): when "MMU and data
/// cache on" changes, cleans and invalidates all of the VM's memory to PoC
/// (by VA, through EL2's identity map) so no vCPU sees stale lines for
/// data written with its caches off; once its MMU and caches are on, the
/// vCPU's TVM trap is dropped.
fn tvm_write(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    r: crate::sysreg_trap::VmReg,
    val: u64,
    pending: &mut GuestPending,
) {
    use crate::sysreg_trap::VmReg;
    let h = &c.sync.hcr;
    match r {
        VmReg::Sctlr => {
            let old = regs::SctlrEl1::read(h);
            pending.add(regs::SctlrEl1::write(h, val));
            let t = crate::sysreg_trap::sctlr_write(old, val, ctx.hcr & HCR_TVM != 0);
            if t.flush_vm {
                if let Who::Guest { slot, vcpu } = who {
                    flush_vm(slot);
                    let how = if crate::sysreg_trap::caches_on(val) {
                        "turned its caches on"
                    } else {
                        "turned its caches off"
                    };
                    log::info!(
                        "VM {}: vCPU {vcpu} {how}: VM-wide clean+invalidate",
                        slot + 1
                    );
                }
            }
            set_tvm(ctx, t.tvm, pending);
        }
        VmReg::Ttbr0 => pending.add(regs::Ttbr0El1::write(h, val)),
        VmReg::Ttbr1 => pending.add(regs::Ttbr1El1::write(h, val)),
        VmReg::Tcr => pending.add(regs::TcrEl1::write(h, val)),
        VmReg::Afsr0 => pending.add(regs::Afsr0El1::write(h, val)),
        VmReg::Afsr1 => pending.add(regs::Afsr1El1::write(h, val)),
        VmReg::Esr => pending.add(regs::EsrEl1::write(h, val)),
        VmReg::Far => pending.add(regs::FarEl1::write(h, val)),
        VmReg::Mair => pending.add(regs::MairEl1::write(h, val)),
        VmReg::Amair => pending.add(regs::AmairEl1::write(h, val)),
        VmReg::Contextidr => pending.add(regs::ContextidrEl1::write(h, val)),
    }
}

/// Cleans and invalidates all memory of VM `slot` to PoC, then invalidates
/// the instruction caches (inner shareable): code the guest wrote with its
/// caches off must not be shadowed by stale instruction-cache lines either.
fn flush_vm(slot: usize) {
    let ctl = control().lock();
    if let Ok(vm) = ctl.vm(slot as u64 + 1) {
        switch::clean_vm(
            vm.regions
                .iter()
                .flatten()
                .map(|r| (r.pa, r.pages * s2mm::PAGE_SIZE)),
        );
    }
    drop(ctl);
    stats::cache_flush(slot + 1);
}

/// Injects `what` into the vCPU's EL1 (its EL1 registers are live on this CPU).
fn inject_into(c: &mut Cpu<'_>, ctx: &mut VcpuCtx, what: Injected, pending: &mut GuestPending) {
    let e2h = &c.sync.hcr;
    let vbar = regs::VbarEl1::read(e2h);
    let i = inject::inject(what, ctx.regs.pc, ctx.regs.pstate, vbar);
    pending.add(regs::EsrEl1::write(e2h, i.esr_el1));
    if let Some(far) = i.far_el1 {
        pending.add(regs::FarEl1::write(e2h, far));
    }
    pending.add(regs::ElrEl1::write(e2h, i.elr_el1));
    pending.add(regs::SpsrEl1::write(e2h, i.spsr_el1));
    ctx.regs.pc = i.pc;
    ctx.regs.pstate = i.pstate;
}
