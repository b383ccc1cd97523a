//! The hypervisor's VM state at EL2: the control state (`control::Control`)
//! behind its lock, and per VM slot its vGIC, console and vCPU contexts.

use crate::arch::gic::{self, Phys};
use crate::arch::switch;
use crate::arch::sysreg;
use crate::platform::{AssignableDevice, MemRegion};
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use crate::vm::control::{self, Control, PhysMem, MAX_VCPUS, MAX_VMS};
use crate::vm::devices::ASSIGNABLE;
use crate::vm::uart;
use aarch64_cpu::registers::ID_AA64MMFR0_EL1;
use barriers::vttbr::Vttbr;
use barriers::GuestPending;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use s2mm::{Pa, TableAlloc};
use spin::{Mutex, Once, RwLock};
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

    fn clean(&mut self, pa: u64, len: u64) {
        barriers::maint::clean_inval_to_poc(pa, len);
    }
}

/// The control state.
pub type Ctl = Control<PoolAlloc, HypMem>;

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
    let (host_vttbr, vtcr) = ctl.with_host_s2(|s2, _| (s2.vttbr(), s2.vtcr(parange)));
    let vtcr = vtcr.map_err(|_| "CPU's PARange too small for the IPA size")?;
    HOST_VTTBR.store(host_vttbr, Ordering::Relaxed);
    VTCR.store(vtcr, Ordering::Relaxed);
    FWB.store(u8::from(fwb), Ordering::Relaxed);
    CONTROL.call_once(|| ctl);
    Ok(())
}

/// Each VM slot's virtual GIC (GICv3 boards). Written at VM_CREATE and
/// VM_DESTROY, when none of the VM's vCPUs runs; read while they run.
static VGIC: [RwLock<Option<Vgic>>; MAX_VMS] = [const { RwLock::new(None) }; MAX_VMS];

/// Console output of the host (index 0) and each VM slot (slot + 1).
static CONSOLES: [Mutex<uart::VmConsole>; MAX_VMS + 1] =
    [const { Mutex::new(uart::VmConsole::new()) }; MAX_VMS + 1];

static GUEST_CTX: [[Mutex<VcpuCtx>; MAX_VCPUS]; MAX_VMS] =
    [const { [const { Mutex::new(VcpuCtx::new()) }; MAX_VCPUS] }; MAX_VMS];

/// The vGIC of a new VM. On GICv2 the guest's CPU interface is the GICV
/// frame itself, mapped at the guest's GICC address.
pub fn new_vgic(vttbr: &mut Vttbr, g: &Phys, handle: u64, nr_vcpus: usize) -> Option<Vgic> {
    if let Phys::V2 { gicv, .. } = *g {
        if let Err(e) = control().map_device(vttbr, handle, VGICC_V2_IPA, gicv, GICV_SIZE) {
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
    let ctl = control();
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

/// VM slot `slot`'s virtual GIC.
pub fn vgic(slot: usize) -> &'static RwLock<Option<Vgic>> {
    &VGIC[slot]
}

/// The console line buffer of the host (0) or VM slot `slot` (`slot + 1`).
pub fn console(who: usize) -> &'static Mutex<uart::VmConsole> {
    &CONSOLES[who]
}

/// The saved context of vCPU `vcpu` of VM slot `slot`.
pub fn guest_ctx(slot: usize, vcpu: usize) -> &'static Mutex<VcpuCtx> {
    &GUEST_CTX[slot][vcpu]
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
