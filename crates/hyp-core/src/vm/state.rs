//! The hypervisor's VM state at EL2: the control state (`control::Control`),
//! and each VM's state beside its metadata, in the pages its host donated
//! ([`GuestVm`]: vGIC, console, vCPU contexts, exit counters).

use crate::arch::gic::{self, Phys};
use crate::arch::switch;
use crate::arch::sysreg;
use crate::platform::{AssignableDevice, MemRegion, Platform};
use crate::stats::{self, Counts, Snapshot};
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use crate::vcpu::sve::SveSlot;
use crate::vcpu::traps::TvmRearm;
use crate::vm::control::{
    self, Control, HostError, NewVm, PhysMem, VmExtra, MAX_VCPUS, VM_CREATE_PAGES,
};
use crate::vm::devices::ASSIGNABLE;
use crate::vm::memcache::HypAlloc;
use crate::vm::uart;
use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1};
use barriers::vttbr::Vttbr;
use barriers::GuestPending;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use hyp_abi::layout::GICC_V2_SIZE;
use s2mm::{Pa, TableAlloc};
use spin::{Mutex, Once};
use vgic::Vgic;

/// Table memory for the control state: the hypervisor's page pool.
#[derive(Debug, Clone, Copy)]
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

// SAFETY: EL2 maps all RAM by identity (`arch::mmu`), donated pages
// included, so a PA is a pointer to it; the host lost access when it
// donated them (`Control::create`, `Control::topup`).
unsafe impl HypAlloc for PoolAlloc {
    fn hyp_ptr(&self, pa: u64) -> NonNull<u8> {
        NonNull::new(pa as *mut u8).expect("donated page at PA 0")
    }
    fn adopt(&self, _pa: u64, _len: u64) {}
    fn release(&self, _pa: u64, _len: u64) {}
}

/// A guest VM's state at EL2 that its vCPUs use without the VM's lock.
pub struct GuestVm {
    /// Its virtual GIC (set once at VM_CREATE, on boards with a GIC).
    pub vgic: Once<Vgic>,
    /// Its console's line buffer.
    pub console: Mutex<uart::VmConsole>,
    /// vCPUs whose TVM trap a set/way operation re-armed.
    pub tvm: TvmRearm,
    /// Its exit counters.
    pub stats: Counts,
    /// Its vCPUs' saved contexts.
    pub ctx: [Mutex<VcpuCtx>; MAX_VCPUS],
    /// Its vCPUs' SVE state (`vcpu::sve`): each used only through its
    /// vCPU's context ([`VcpuCtx::sve`]), under that context's lock.
    pub sve: [SveSlot; MAX_VCPUS],
}

impl VmExtra for GuestVm {
    fn new(_nr_vcpus: usize) -> Self {
        Self {
            vgic: Once::new(),
            console: Mutex::new(uart::VmConsole::new()),
            tvm: TvmRearm::new(),
            stats: Counts::new(),
            ctx: [const { Mutex::new(VcpuCtx::new()) }; MAX_VCPUS],
            sve: [const { SveSlot::new() }; MAX_VCPUS],
        }
    }
}

const _: () = assert!(
    control::create_pages_needed::<GuestVm>() <= VM_CREATE_PAGES,
    "hyp_abi::VM_CREATE_PAGES must hold a VM's state"
);

/// What an exit needs of the VM it came from (or of the host).
#[derive(Clone, Copy)]
pub struct VmView<'a> {
    /// The vGIC (none for the host).
    pub vg: Option<&'a Vgic>,
    /// The console line buffer.
    pub console: &'a Mutex<uart::VmConsole>,
    /// The exit counters.
    pub stats: &'a Counts,
    /// TVM re-arm requests (guests only).
    pub tvm: Option<&'a TvmRearm>,
}

impl GuestVm {
    /// This VM's view for its exits.
    #[must_use]
    pub fn view(&self) -> VmView<'_> {
        VmView {
            vg: self.vgic.get(),
            console: &self.console,
            stats: &self.stats,
            tvm: Some(&self.tvm),
        }
    }
}

static HOST_CONSOLE: Mutex<uart::VmConsole> = Mutex::new(uart::VmConsole::new());

/// The host's view for its exits.
#[must_use]
pub fn host_view() -> VmView<'static> {
    VmView {
        vg: None,
        console: &HOST_CONSOLE,
        stats: &stats::HOST,
        tvm: None,
    }
}

/// Machine-wide exit counts: the host's, destroyed VMs' and every live VM's.
#[must_use]
pub fn exit_totals() -> Snapshot {
    let mut s = Snapshot::base();
    let ctl = control();
    for h in ctl.handles() {
        if let Ok(vm) = ctl.vm(h) {
            s.add(&vm.extra().stats);
        }
    }
    s
}

/// Scrubbing through EL2's identity map of RAM.
#[derive(Debug)]
pub struct HypMem;

impl PhysMem for HypMem {
    fn scrub(&mut self, pa: u64, len: u64) {
        // SAFETY: the range is RAM a destroyed VM owned and nobody maps now
        // (its stage 2 is gone, the host's is not yet restored); EL2 maps all
        // RAM by identity.
        unsafe { barriers::maint::scrub_to_poc(pa, len) };
    }

    fn clean(&mut self, pa: u64, len: u64) {
        barriers::maint::clean_inval_to_poc(pa, len);
    }
}

/// The control state.
pub type Ctl = Control<PoolAlloc, HypMem, GuestVm>;

static CONTROL: Once<Ctl> = Once::new();
static HOST_VTTBR: AtomicU64 = AtomicU64::new(0);
static VTCR: AtomicU64 = AtomicU64::new(0);
static FWB: AtomicU8 = AtomicU8::new(0);

/// The control state (after [`init`]).
pub fn control() -> &'static Ctl {
    CONTROL.get().expect("vm::state::init runs before any VM")
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
    let parange = ID_AA64MMFR0_EL1::PARange.read(sysreg::id_aa64mmfr0_el1());
    // FEAT_VMID16: VMIDBits = 0b0010.
    let vmid16 = ID_AA64MMFR1_EL1::VMIDBits.read(sysreg::id_aa64mmfr1_el1()) == 0b0010;
    // The host's stage 2 comes from the pool and must never run out while
    // VMs take pages from the host (their own tables come from the pages
    // they are given): enough for all of host RAM mapped by 4 KiB pages.
    let need = host_ram.size.div_ceil(2 << 20) + host_ram.size.div_ceil(1 << 30) + 8;
    if (crate::arch::tables::POOL.lock().free_pages() as u64) < need {
        return Err("the hyp region cannot hold the host's stage 2 at page granularity");
    }
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
        vmid16,
    )
    .map_err(|_| "cannot build the host's stage 2 (or PARange too small for guests' IPA size)")?;
    let host_vttbr = ctl.with_host_s2(|s2, _| s2.vttbr());
    let vtcr = ctl.vtcr();
    log::info!(
        "VMs: up to {} ({}-bit VMIDs)",
        ctl.max_vms(),
        if vmid16 { 16 } else { 8 }
    );
    HOST_VTTBR.store(host_vttbr, Ordering::Relaxed);
    VTCR.store(vtcr, Ordering::Relaxed);
    FWB.store(u8::from(fwb), Ordering::Relaxed);
    CONTROL.call_once(|| ctl);
    Ok(())
}

/// Puts the host's DMA-capable devices behind the SMMU, then maps the PCIe
/// windows (`Platform::pci`) into the host's stage 2 and returns them for
/// its boot information. Without an SMMU (`smmu_listed` false, or one that
/// cannot translate through a stage 2) the windows stay unmapped and this
/// returns `None`: a device the host could program would reach any memory,
/// so the host gets none.
pub fn confine_host_devices(p: &Platform, smmu_listed: bool) -> Option<hyp_abi::PciWindows> {
    let pci = p.pci?;
    let Some(frame) = p.smmu.filter(|_| smmu_listed) else {
        log::info!("no SMMU in the device tree: the host gets no DMA-capable device");
        return None;
    };
    match crate::arch::smmu::init(frame.base, host_vttbr(), vtcr()) {
        Ok(e) => log::info!(
            "SMMUv3 at {:#x}: streams 0..{} translate through the host's stage 2 \
             ({}-bit stream IDs, OAS field {}), others refused",
            frame.base,
            e.streams,
            e.features.sid_bits,
            e.features.oas
        ),
        Err(why) => {
            log::warn!(
                "SMMUv3 at {:#x} not used ({why}): the host gets no DMA-capable device",
                frame.base
            );
            return None;
        }
    }
    // SAFETY: boot CPU, before any CPU runs a guest, after `init` dropped
    // its owner: the only owner of VTTBR_EL2 on this CPU while it lives.
    let mut vttbr = unsafe { Vttbr::init(0) };
    for (name, w) in [("ECAM", pci.ecam), ("I/O", pci.pio), ("memory", pci.mmio)] {
        if let Err(e) = control().map_host_device(&mut vttbr, w.base, w.size) {
            panic!(
                "cannot map the PCIe {name} window {:#x}..{:#x}: {e:?}",
                w.base,
                w.end()
            );
        }
    }
    log::info!(
        "host PCIe: ECAM {:#x}, memory window {:#x}..{:#x}, I/O window {:#x} mapped",
        pci.ecam.base,
        pci.mmio.base,
        pci.mmio.end(),
        pci.pio.base
    );
    Some(pci.windows())
}

/// Gives a VM being created its vGIC. On GICv2 the guest's CPU interface is
/// the GICV frame itself, mapped at the guest's GICC address.
///
/// # Errors
///
/// The GICV frame's mapping (NoMemory: VM_CREATE's pages could not hold
/// its tables), or a vCPU count the vGIC cannot serve (Invalid).
pub fn new_vgic(
    vm: &mut NewVm<'_, PoolAlloc, GuestVm>,
    vttbr: &mut Vttbr,
    g: &Phys,
    nr_vcpus: usize,
) -> Result<(), HostError> {
    if let Phys::V2 { gicv, .. } = *g {
        vm.map_device(vttbr, VGICC_V2_IPA, gicv, GICC_V2_SIZE)?;
    }
    let vg = Vgic::new(g.version(), nr_vcpus).map_err(|_| HostError::Invalid)?;
    vm.extra.vgic.call_once(|| vg);
    Ok(())
}

/// Guest IPA of the GICv2 CPU interface (QEMU virt's GICv2 layout).
pub use hyp_abi::layout::GICC_V2_IPA as VGICC_V2_IPA;

/// Cleans and invalidates all memory of VM `slot` to PoC, then invalidates
/// the instruction caches (inner shareable): code the guest wrote with its
/// caches off must not be shadowed by stale instruction-cache lines either.
///
/// The VM's lock is held only to copy its region list: the clean itself,
/// which may take milliseconds for a large VM, holds no lock, so other
/// VMs' exits and the host's calls go on meanwhile. (A vCPU of this VM is
/// running, so the VM cannot be destroyed under the clean; memory given to
/// it meanwhile was cleaned when it was mapped.)
pub fn flush_vm(slot: usize) {
    let regions = match control().vm(slot as u64 + 1) {
        Ok(vm) => vm.regions,
        Err(_) => return,
    };
    switch::clean_vm(
        regions
            .iter()
            .flatten()
            .map(|r| (r.pa, r.pages * s2mm::PAGE_SIZE)),
        // A hint between steps: on QEMU's round-robin TCG it hands the turn
        // to the next CPU, as an interrupt window would on a shared CPU.
        sysreg::yield_hint,
    );
}

/// Makes the vCPUs in `kick` (of VM `slot`) notice new virtual interrupts
/// (`me`: the vCPU that caused them, or `usize::MAX`):
/// one running on another physical CPU gets a physical SGI and exits; one
/// not running sees them at its next entry.
pub fn kick_vcpus(c: &Cpu<'_>, slot: usize, me: usize, kick: u8, pending: &mut GuestPending) {
    kick_vcpus_from(c.idx, c.sync, slot, me, kick, pending);
}

/// [`kick_vcpus`] from CPU `cpu` with its `sync` (the vector's fast path,
/// which has no [`Cpu`]).
pub fn kick_vcpus_from(
    cpu: usize,
    sync: &switch::CpuSync,
    slot: usize,
    me: usize,
    kick: u8,
    pending: &mut GuestPending,
) {
    let Some(g) = gic::phys() else {
        return;
    };
    // `me` (the vCPU that caused the kick) needs none; `usize::MAX`: none is.
    let me_bit = u8::try_from(me)
        .ok()
        .and_then(|m| 1u8.checked_shl(u32::from(m)));
    let mut todo = kick & !me_bit.unwrap_or(0);
    if todo == 0 {
        return;
    }
    let ctl = control();
    let Ok(vm) = ctl.vm(slot as u64 + 1) else {
        return;
    };
    // The named vCPUs only, lowest first (not every vCPU of the VM).
    let mut waiting = false;
    while todo != 0 {
        let v = todo.trailing_zeros() as usize;
        todo &= todo - 1;
        if v >= vm.nr_vcpus {
            break;
        }
        match vm.vcpus[v].running_on {
            Some(other) if other != cpu => g.kick(other, sync.gic.as_ref(), pending),
            Some(_) => {}
            None => waiting = true,
        }
    }
    drop(vm);
    if waiting {
        // Not running: its host CPU may sleep in HOST_IDLE.
        crate::vcpu::idle::event_from(cpu, sync, pending);
    }
}

/// The host's VTTBR_EL2 (after [`init`]).
pub fn host_vttbr() -> u64 {
    HOST_VTTBR.load(Ordering::Relaxed)
}

/// VTCR_EL2 for every stage 2 (after [`init`]).
pub fn vtcr() -> u64 {
    VTCR.load(Ordering::Relaxed)
}

/// Whether stage 2 forces write-back (FEAT_S2FWB in use).
pub fn fwb() -> bool {
    FWB.load(Ordering::Relaxed) != 0
}
