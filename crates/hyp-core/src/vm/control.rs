//! The host control interface and the state it guards: VMs, their vCPUs'
//! power and run state, and who owns every page the host gives away.
//!
//! This is the pKVM model (ARCHITECTURE.md sections 4–6): the host VM is the
//! VMM. It creates VMs, gives them memory from its own RAM (donated to a
//! protected VM: the host loses access; lent to a normal VM: the host keeps
//! it), sets a vCPU's entry and runs vCPUs until an exit it must handle. The
//! hypervisor validates every argument against the page-ownership state and
//! answers with an error code, never a panic. Page states live in the
//! software bits of the stage-2 entries (`s2mm`); the transitions are
//! `s2mm::ownership::transition`.
//!
//! Everything here is pure bookkeeping over `s2mm` tables, so the whole
//! interface runs on the host under `cargo test`, where a property test
//! drives it with random calls against a reference model
//! (`tests/control_model.rs`). The CPU-facing half (running a vCPU) lives in
//! `run/` and asks this module for permission through [`Control::begin_run`]
//! and [`Control::end_run`]. Locking: see [`Control`].
//!
//! The host calls and their numbers are listed in `hyp-abi` (crate docs).

use crate::platform::MemRegion;
use crate::vcpu::sve_vl;
use crate::vm::memcache::{HypAlloc, MemCache, VmAlloc, VmRead, MAX_TOPUP_PAGES};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};
use s2mm::ownership::{self, CompState, PageOwnership, Requester, Transition};
use s2mm::{Attrs, Ipa, OwnerId, Pa, PageState, Stage2, TableAlloc, Vttbr, PAGE_SIZE};
use smccc::psci::error;
use spin::{Mutex, MutexGuard};

mod audit;
pub mod firmware;
mod host_devices;
mod spis;

/// Most vCPUs per VM: as many as the virtual GIC serves.
pub const MAX_VCPUS: usize = vgic::MAX_VCPUS;
/// Most guest VMs with 16-bit VMIDs: VMIDs 1..=65534 (0 is the host's),
/// so that every VM's owner annotation ([`owner_of_slot`]) fits 16 bits
/// beside the hypervisor's. With 8-bit VMIDs: 255.
pub const MAX_VMS_VMID16: usize = 65534;
/// Most guest VMs with 8-bit VMIDs.
pub const MAX_VMS_VMID8: usize = 255;
/// Pages VM_CREATE needs at least (`hyp_abi::VM_CREATE_PAGES`): the VM's
/// state and its stage-2 root, and the tables to map the GICv2 CPU
/// interface.
pub use hyp_abi::VM_CREATE_PAGES;
/// Memory regions (donations or loans) per VM.
pub const MAX_REGIONS: usize = 32;
/// IPA size of every guest's stage 2.
pub const GUEST_IPA_BITS: u32 = 40;
/// Guest memory lies at or above this IPA; below it is device space
/// (the emulated UART, the GIC, virtio-mmio), as on QEMU virt.
pub use firmware::Measurement;
pub use hyp_abi::layout::RAM_IPA as GUEST_RAM_IPA_MIN;
/// Largest single donation or loan (2 MiB), so that one call's checks and
/// table changes stay bounded; the host gives a larger range in
/// consecutive calls, each extending the region the one before made.
pub use hyp_abi::MAX_GIVE_PAGES as MAX_PAGES_PER_CALL;

/// Table pages `give` holds back while it changes the tables, so that
/// undoing a part-done change can always split the blocks it needs to (two
/// ends of the range, a level-1 and a level-2 split each).
const ROLLBACK_TABLES: usize = 4;

/// PSCI INVALID_ADDRESS (-9).
pub const PSCI_INVALID_ADDRESS: u64 = psci(error::INVALID_ADDRESS);

/// A PSCI error code (`smccc`'s i32) as x0 carries it.
#[must_use]
pub const fn psci(e: i32) -> u64 {
    e as i64 as u64
}

// The host ABI's numbers (function IDs, flags, error codes) are written
// once, in `hyp-abi`, which the host VM shares.
pub use hyp_abi::{HostError, FLAG_PROTECTED};

/// Result of a host call.
pub type HostResult<T> = Result<T, HostError>;

/// Scrubbing of physical memory before the host gets a protected page back.
pub trait PhysMem {
    /// Zeroes `[pa, pa + len)` and cleans it to the point of coherency, so no
    /// cache line or alias keeps the old contents.
    fn scrub(&mut self, pa: u64, len: u64);
    /// Cleans and invalidates `[pa, pa + len)` to the point of coherency:
    /// memory a guest wrote that goes back to the host as it is (lent).
    fn clean(&mut self, pa: u64, len: u64);
}

/// How a region reached the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Donated: the host lost access.
    Donated,
    /// Lent: the host kept access.
    Lent,
}

/// Guest memory given by one donate or lend call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First IPA.
    pub ipa: u64,
    /// First PA.
    pub pa: u64,
    /// Number of pages.
    pub pages: u64,
    /// Donated or lent.
    pub kind: RegionKind,
}

impl Region {
    fn ipa_end(&self) -> u64 {
        self.ipa + self.pages * PAGE_SIZE
    }
    fn pa_of(&self, ipa: u64) -> Option<u64> {
        (ipa >= self.ipa && ipa < self.ipa_end()).then(|| self.pa + (ipa - self.ipa))
    }
}

/// A vCPU's power state (PSCI's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Off: runs only after CPU_ON or VCPU_INIT.
    Off,
    /// Started (entry and x0 set); its next run begins at the entry.
    OnPending {
        /// Entry IPA.
        entry: u64,
        /// x0 at entry.
        ctx: u64,
    },
    /// Running or runnable.
    On,
}

/// An MMIO read the host must complete before the vCPU runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioWait {
    /// No read outstanding.
    None,
    /// The host has not answered yet.
    Awaiting,
    /// The host answered with this value; applied at the next run.
    Completed(u64),
}

/// Book-keeping of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuMeta {
    /// Power state.
    pub power: Power,
    /// Physical CPU it runs on right now.
    pub running_on: Option<usize>,
    /// Outstanding MMIO read.
    pub mmio: MmioWait,
}

const VCPU_RESET: VcpuMeta = VcpuMeta {
    power: Power::Off,
    running_on: None,
    mmio: MmioWait::None,
};

/// Why a VM stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    /// Its vCPUs may run.
    Live,
    /// A vCPU called SYSTEM_OFF.
    Off,
    /// A vCPU called SYSTEM_RESET.
    Reset,
    /// VM_DESTROY has begun: no vCPU runs again.
    Dying,
}

/// One guest VM.
#[derive(Debug)]
pub struct VmMeta {
    /// VMID tagging its TLB entries (slot + 1; the host is VMID 0).
    pub vmid: u16,
    /// Protected (donated memory, pKVM services) or normal (lent memory).
    pub protected: bool,
    /// Its SVE vector length in quadwords (`vcpu::sve_vl::choose`): its
    /// vCPUs run with ZCR_EL2.LEN = this - 1.
    pub sve_vq: u8,
    /// Number of vCPUs.
    pub nr_vcpus: usize,
    /// Stage-2 tables.
    pub s2: Stage2,
    /// Memory given by the host.
    pub regions: [Option<Region>; MAX_REGIONS],
    /// vCPUs.
    pub vcpus: [VcpuMeta; MAX_VCPUS],
    /// Live or stopped.
    pub status: VmStatus,
    /// The host set the boot entry (VCPU_INIT of vCPU 0); for a protected
    /// VM the host may do so once.
    pub boot_entry_set: bool,
    /// A vCPU of this VM has run; from then on the host may start none of a
    /// protected VM's vCPUs (only the guest's own CPU_ON does).
    pub has_run: bool,
    /// Pages the guest currently shares with the host.
    pub shared: u64,
    /// MMIO guard: the pages of the host's MMIO window a protected VM
    /// guard-mapped (MMIO_GUARD), bit *i* for page *i* of
    /// `hyp_abi::layout::HOST_MMIO_IPA`. A fixed bitmap rather than a
    /// set of IPAs: only accesses in that window are ever forwarded to the
    /// host, and the window is [`MMIO_GUARD_PAGES`] pages, so one word
    /// holds every answer, needs no allocation and no table, and cannot run
    /// out. Empty at VM_CREATE (so a protected VM's accesses there abort
    /// from its first instruction until it guards their page); nothing
    /// clears a bit: upstream's MMIO guard has no unmap call.
    pub mmio_guard: u64,
    /// The SPIs the host declared for its emulated devices (IRQ_DECLARE),
    /// bit *i* for INTID 32 + *i*: the only INTIDs IRQ_LINE may drive.
    pub device_spis: u64,
    /// A protected VM's vCPU 0 enters its firmware with these in x1..x4
    /// (the host's kernel entry, the VM's RAM base and size, its vCPUs),
    /// set by VCPU_INIT and taken at that vCPU's first run
    /// ([`Control::take_boot_args`]).
    pub boot_args: [u64; 4],
    /// What the VM's firmware measured (MEASUREMENT_SET), once.
    pub measurement: Option<Measurement>,
    /// VTTBR_EL2 value.
    pub vttbr: u64,
    /// Regions mapped at stage 2 on first touch (bit *i*: `regions[i]`).
    pub lazy: u32,
    /// While dying: pages of its first remaining region (then of its last
    /// remaining run of donated hypervisor pages) scrubbed so far.
    pub scrubbed: u64,
    /// Pages the host donated for this VM's state and tables.
    pub cache: MemCache,
    /// Pages at the start of the first run that hold this structure and
    /// the stage-2 root (given back at the last VM_DESTROY step).
    keep_pages: u64,
}

impl VmMeta {
    /// The region holding `ipa`.
    #[must_use]
    pub fn region_of(&self, ipa: u64) -> Option<&Region> {
        self.regions
            .iter()
            .flatten()
            .find(|r| r.pa_of(ipa).is_some())
    }
    /// Whether `ipa` is guest memory.
    #[must_use]
    pub fn is_ram(&self, ipa: u64) -> bool {
        self.region_of(ipa).is_some()
    }
    /// Whether the page of `ipa` is in the VM's MMIO guard set (false
    /// outside the host's MMIO window).
    #[must_use]
    pub fn mmio_guarded(&self, ipa: u64) -> bool {
        mmio_guard_bit(ipa).is_some_and(|b| self.mmio_guard & b != 0)
    }
}

/// Pages in the host's MMIO window: one bit each in [`VmMeta::mmio_guard`].
pub const MMIO_GUARD_PAGES: u64 = hyp_abi::layout::HOST_MMIO_SIZE / PAGE_SIZE;
const _: () = assert!(
    MMIO_GUARD_PAGES <= u64::BITS as u64
        && hyp_abi::layout::HOST_MMIO_IPA.is_multiple_of(PAGE_SIZE)
        && hyp_abi::layout::HOST_MMIO_SIZE.is_multiple_of(PAGE_SIZE),
    "the MMIO guard bitmap is one word over whole pages of the host's window"
);

/// The bit of `ipa`'s page in [`VmMeta::mmio_guard`]; `None` outside the
/// host's MMIO window.
#[must_use]
pub const fn mmio_guard_bit(ipa: u64) -> Option<u64> {
    match ipa.checked_sub(hyp_abi::layout::HOST_MMIO_IPA) {
        Some(off) if off < hyp_abi::layout::HOST_MMIO_SIZE => Some(1 << (off / PAGE_SIZE)),
        _ => None,
    }
}

impl VmMeta {
    /// [`Control::map_device`] with the VM's lock held.
    fn map_device<A: HypAlloc>(
        &mut self,
        hyp: &A,
        v: &mut Vttbr,
        ipa: u64,
        pa: u64,
        size: u64,
    ) -> HostResult<()> {
        match ipa.checked_add(size) {
            Some(end) if end <= GUEST_RAM_IPA_MIN => {}
            _ => return Err(HostError::Range),
        }
        let (s2, mut alloc) = self.tables(hyp);
        s2.map(
            &mut alloc,
            v,
            Ipa(ipa),
            Pa(pa),
            size,
            Attrs::DEVICE_RW,
            PageState::Owned,
        )
        .map(|_| ())
        .map_err(s2err)
    }

    /// The VM's stage 2 and an allocator over its own pages.
    fn tables<'a, A: HypAlloc>(&'a mut self, hyp: &'a A) -> (&'a mut Stage2, VmAlloc<'a, A>) {
        (
            &mut self.s2,
            VmAlloc {
                cache: &mut self.cache,
                hyp,
            },
        )
    }
}

/// A VM being created, before its handle is published
/// ([`Control::create_with`]).
pub struct NewVm<'a, A, X> {
    meta: &'a mut VmMeta,
    alloc: &'a A,
    /// Its extra state.
    pub extra: &'a X,
    /// The handle it will have.
    pub handle: u64,
}

impl<A: HypAlloc, X> NewVm<'_, A, X> {
    /// Maps a device frame into the VM, as [`Control::map_device`].
    ///
    /// # Errors
    ///
    /// As [`Control::map_device`].
    pub fn map_device(&mut self, v: &mut Vttbr, ipa: u64, pa: u64, size: u64) -> HostResult<()> {
        self.meta.map_device(self.alloc, v, ipa, pa, size)
    }
}

/// Per-VM state that lives beside the control state's [`VmMeta`] in the
/// VM's own pages but is used without the VM's lock (at EL2: its vGIC,
/// console, vCPU contexts, exit counters). Built at VM_CREATE, dropped at
/// the last VM_DESTROY step.
pub trait VmExtra: Sync + Sized {
    /// The state of a new VM with `nr_vcpus` vCPUs.
    fn new(nr_vcpus: usize) -> Self;
}

impl VmExtra for () {
    fn new(_: usize) -> Self {}
}

/// One VM's memory: the metadata (behind the slot's lock) and the extra
/// state (shared), at the start of the pages the host donated at VM_CREATE.
struct VmBox<X> {
    meta: UnsafeCell<VmMeta>,
    extra: X,
}

/// A slot's pointer to its VM.
struct VmPtr<X>(NonNull<VmBox<X>>);

// SAFETY: the box's metadata is reached only through the slot's lock, its
// extra state only as `&X` (X: Sync); the memory is the hypervisor's own.
unsafe impl<X: Sync> Send for VmPtr<X> {}

type Slot<X> = Mutex<Option<VmPtr<X>>>;

/// Slots per leaf of the VM table (one page).
const LEAF_SLOTS: usize = 256;
/// Leaves: 256 × 256 slots cover every 16-bit VMID.
const DIR_LEAVES: usize = 256;
const _: () = assert!(core::mem::size_of::<Slot<()>>() * LEAF_SLOTS <= PAGE_SIZE as usize);
const _: () = assert!(LEAF_SLOTS * DIR_LEAVES > MAX_VMS_VMID16);

/// Pages VM_CREATE needs for a VM whose extra state is `X`: its structure,
/// the two-page root of a 40-bit stage 2 with the gap that aligns it, and
/// the two tables that map the GICv2 CPU interface.
#[must_use]
pub const fn create_pages_needed<X>() -> u64 {
    (core::mem::size_of::<VmBox<X>>() as u64).div_ceil(PAGE_SIZE) + 3 + 2
}

/// What [`Control::map_on_demand`] did about a translation fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It mapped the page (given lazily): retry the access.
    Mapped,
    /// The page was mapped already (the fault raced with a change under the
    /// VM's lock): retry the access.
    Retry,
}

/// What a finished run tells the control state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The vCPU stays on (an exit for the host, preemption, WFI).
    Runnable,
    /// The vCPU stays on and waits for an MMIO read completion.
    AwaitMmio,
    /// The vCPU called CPU_OFF.
    CpuOff,
    /// SYSTEM_OFF.
    SystemOff,
    /// SYSTEM_RESET.
    SystemReset,
}

/// What the CPU must do when a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStart {
    /// The vCPU was started: reset its registers to this entry and x0.
    /// With the VM's SVE vector length in quadwords ([`VmMeta::sve_vq`]),
    /// which a booting vCPU's context takes (only here: a run that is not a
    /// boot pays nothing for it).
    pub boot: Option<(u64, u64, u8)>,
    /// A completed MMIO read: write the value to the access's register.
    pub mmio_value: Option<u64>,
    /// The VM's VTTBR_EL2.
    pub vttbr: u64,
}

/// The owner annotation a host entry carries while guest `slot` owns it
/// (`slot` < [`MAX_VMS_VMID16`], so it fits).
#[must_use]
pub const fn owner_of_slot(slot: usize) -> OwnerId {
    OwnerId(2 + slot as u16)
}

/// The owner annotation of host pages donated to the hypervisor for a VM's
/// state and tables (VM_CREATE, VM_TOPUP).
pub const OWNER_HYP: OwnerId = OwnerId(1);

/// The host's side of the control state, behind the host lock: its stage 2
/// and the scrubber of memory it gets back.
struct HostSide<M> {
    s2: Stage2,
    mem: M,
}

impl<M> HostSide<M> {
    /// After a failed host change over `[pa, pa + size)` (pages that were all
    /// the host's): gives back every run of pages that is no longer owned.
    /// Restoring pages the host owned before needs no table.
    fn restore_changed<A: TableAlloc>(&mut self, alloc: &mut A, v: &mut Vttbr, pa: u64, size: u64) {
        let end = pa + size;
        let mut p = pa;
        while p < end {
            if host_state(&self.s2, alloc, p) == CompState::Owned {
                p += PAGE_SIZE;
                continue;
            }
            let start = p;
            while p < end && host_state(&self.s2, alloc, p) != CompState::Owned {
                p += PAGE_SIZE;
            }
            self.restore(alloc, v, start, p - start, false);
        }
    }

    /// Gives the host back `[pa, pa + size)` as its own (identity, owned);
    /// with `cleaned`, memory just cleaned to PoC is not cleaned again.
    /// Mapping over split tables needs no new table, so this cannot fail
    /// when it restores pages the host owned before.
    fn restore<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        v: &mut Vttbr,
        pa: u64,
        size: u64,
        cleaned: bool,
    ) {
        let map = if cleaned {
            Stage2::map_cleaned::<A>
        } else {
            Stage2::map::<A>
        };
        // Pages coming back whole (a VM's end, a rolled-back change): the
        // tables they leave uniform collapse into blocks again, so the
        // tables one-page changes kept go once their VM is gone.
        self.s2.set_keep_tables(false);
        let r = map(
            &mut self.s2,
            alloc,
            v,
            Ipa(pa),
            Pa(pa),
            size,
            Attrs::RAM_RWX,
            PageState::Owned,
        );
        self.s2.set_keep_tables(true);
        // Cannot fail: the pages were the host's before the change, so their
        // tables (split on the way) are still there; the model test's
        // table-exhaustion runs go through here. Checked in release builds:
        // a failure would leave host pages owned by nobody.
        assert!(r.is_ok(), "restoring host pages needs no tables");
    }
}

/// Pages [`Control::destroy`] gives back per call.
pub const DESTROY_CHUNK: u64 = 256;

/// The control state: the host's stage 2 behind the host lock, each VM
/// behind its own lock.
///
/// Lock order, the one order every operation follows: the host lock first,
/// then one VM's lock; nothing holds two VMs' locks. Calls about one VM
/// (running its vCPUs, PSCI, lazy faults) take only that VM's lock;
/// ownership transitions (give, guest share/unshare, destroy) take the
/// host's and then the VM's. The table allocator `A` is a handle each lock
/// holder clones; it serialises its own allocations.
///
/// VMs live in slots (handle = slot + 1 = VMID): a two-level table whose
/// leaves (one page of [`LEAF_SLOTS`] slots each) come from the
/// hypervisor's pool the first time a slot in them is used and stay. A slot
/// holds a pointer into the VM's own pages (see `vm::memcache`).
pub struct Control<A: HypAlloc, M: PhysMem, X: VmExtra = ()> {
    alloc: A,
    host: Mutex<HostSide<M>>,
    dir: [AtomicPtr<Slot<X>>; DIR_LEAVES],
    max_vms: usize,
    host_ram: MemRegion,
    fwb: bool,
    vtcr: u64,
}

// SAFETY: the leaves are the hypervisor's own pages, reached through atomic
// pointers; everything in them is behind the slots' locks.
unsafe impl<A: HypAlloc + Sync + Send, M: PhysMem + Send, X: VmExtra> Sync for Control<A, M, X> {}
// SAFETY: as above.
unsafe impl<A: HypAlloc + Sync + Send, M: PhysMem + Send, X: VmExtra> Send for Control<A, M, X> {}

impl<A: HypAlloc, M: PhysMem, X: VmExtra> core::fmt::Debug for Control<A, M, X> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Control")
            .field("host_ram", &self.host_ram)
            .finish_non_exhaustive()
    }
}

fn s2err(e: s2mm::Error) -> HostError {
    match e {
        s2mm::Error::OutOfMemory => HostError::NoMemory,
        s2mm::Error::Unaligned => HostError::Invalid,
        _ => HostError::Range,
    }
}

/// A locked, live VM ([`Control::vm`]).
pub struct VmRef<'a, X>(MutexGuard<'a, Option<VmPtr<X>>>);

impl<X> VmRef<'_, X> {
    fn ptr(&self) -> NonNull<VmBox<X>> {
        // Built only over a slot holding a VM (`Control::lock_vm`), which
        // nothing can empty while the guard is held.
        self.0.as_ref().expect("a VmRef holds a VM").0
    }

    /// The VM's state used without its lock.
    #[must_use]
    pub fn extra(&self) -> &X {
        // SAFETY: the box lives while its slot holds it (the guard keeps
        // it there); `extra` is only ever shared.
        unsafe { &(*self.ptr().as_ptr()).extra }
    }
}

impl<X> core::ops::Deref for VmRef<'_, X> {
    type Target = VmMeta;
    fn deref(&self) -> &VmMeta {
        // SAFETY: as `extra`; the metadata is reached only with the slot's
        // lock, which the guard holds.
        unsafe { &*(*self.ptr().as_ptr()).meta.get() }
    }
}

impl<X> core::ops::DerefMut for VmRef<'_, X> {
    fn deref_mut(&mut self) -> &mut VmMeta {
        // SAFETY: as `Deref`; the guard is held exclusively.
        unsafe { &mut *(*self.ptr().as_ptr()).meta.get() }
    }
}

/// A vCPU claimed by [`Control::begin_run`] for one run: the VM's extra
/// state stays reachable until [`Control::end_run`] takes the claim back
/// (VM_DESTROY refuses a VM with a running vCPU, so the VM's pages cannot go
/// meanwhile).
#[must_use = "a claim ends with Control::end_run"]
pub struct Claim<'c, X> {
    extra: &'c X,
    handle: u64,
    vcpu: u64,
}

impl<X> core::fmt::Debug for Claim<'_, X> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Claim(VM {} vCPU {})", self.handle, self.vcpu)
    }
}

impl<X> Claim<'_, X> {
    /// The VM's state used without its lock.
    #[must_use]
    pub fn extra(&self) -> &X {
        self.extra
    }
}

/// What one [`Control::destroy`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destroyed {
    /// Pages scrubbed by this call.
    pub scrubbed: u64,
    /// Pages remain: call again.
    pub more: bool,
}

impl<A: HypAlloc, M: PhysMem, X: VmExtra> Control<A, M, X> {
    /// The host's stage 2: `host_ram` mapped by identity, owned by the host.
    /// `ipa_bits` is the host's IPA size; `parange` is ID_AA64MMFR0_EL1.PARange;
    /// `vmid16`: the CPU has 16-bit VMIDs (FEAT_VMID16), which VTCR_EL2 then
    /// selects, and VMs may number [`MAX_VMS_VMID16`] (else [`MAX_VMS_VMID8`]).
    ///
    /// # Errors
    ///
    /// No table memory, a RAM range the IPA size cannot hold, or a PA size
    /// too small for the guests' IPA size.
    #[allow(
        clippy::too_many_arguments,
        reason = "the board's facts, each used once here"
    )]
    pub fn new(
        mut alloc: A,
        mem: M,
        v: &mut Vttbr,
        host_ram: MemRegion,
        ipa_bits: u32,
        parange: u64,
        fwb: bool,
        vmid16: bool,
    ) -> Result<Self, s2mm::Error> {
        let mut s2 = Stage2::new(&mut alloc, 0, ipa_bits, fwb)?;
        let vtcr = match s2.vtcr(parange, vmid16) {
            Ok(vtcr) if ipa_bits == GUEST_IPA_BITS => vtcr,
            Ok(_) | Err(_) => {
                s2.destroy(&mut alloc, v);
                return Err(s2mm::Error::UnsupportedPaRange);
            }
        };
        s2.map(
            &mut alloc,
            v,
            Ipa(host_ram.base),
            Pa(host_ram.base),
            host_ram.size,
            Attrs::RAM_RWX,
            PageState::Owned,
        )?;
        // From now on the host's pages change one at a time (given to VMs,
        // shared back): a table one change made uniform stays, so that a
        // one-page share and unshare never split and collapse a 2 MiB block
        // (issue 21). The pool holds the host's stage 2 at page granularity.
        s2.set_keep_tables(true);
        Ok(Self {
            alloc,
            host: Mutex::new(HostSide { s2, mem }),
            dir: [const { AtomicPtr::new(core::ptr::null_mut()) }; DIR_LEAVES],
            max_vms: if vmid16 {
                MAX_VMS_VMID16
            } else {
                MAX_VMS_VMID8
            },
            host_ram,
            fwb,
            vtcr,
        })
    }

    /// The table allocator.
    pub fn alloc(&self) -> &A {
        &self.alloc
    }

    /// VTCR_EL2 for every stage 2 (the host's and the guests').
    #[must_use]
    pub const fn vtcr(&self) -> u64 {
        self.vtcr
    }

    /// How many VMs may exist at once (the VMID width's limit).
    #[must_use]
    pub const fn max_vms(&self) -> usize {
        self.max_vms
    }

    /// `f` of the host's stage 2 (under the host lock).
    pub fn with_host_s2<T>(&self, f: impl FnOnce(&Stage2, &A) -> T) -> T {
        f(&self.host.lock().s2, &self.alloc)
    }

    /// `f` of the memory scrubber (under the host lock).
    pub fn with_mem<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
        f(&mut self.host.lock().mem)
    }

    /// Slot `slot`, when its leaf exists.
    fn slot(&self, slot: usize) -> Option<&Slot<X>> {
        let leaf = self.dir.get(slot / LEAF_SLOTS)?.load(Ordering::Acquire);
        // SAFETY: a published leaf is an initialised page of slots that is
        // never freed while `self` lives (`Drop` frees the leaves).
        (!leaf.is_null()).then(|| unsafe { &*leaf.add(slot % LEAF_SLOTS) })
    }

    /// Slot `slot`, making its leaf if needed (from the hypervisor's pool).
    fn slot_or_make(&self, slot: usize) -> HostResult<&Slot<X>> {
        if let Some(s) = self.slot(slot) {
            return Ok(s);
        }
        let mut alloc = self.alloc.clone();
        let pa = alloc.alloc_table().ok_or(HostError::NoMemory)?;
        let leaf: *mut Slot<X> = alloc.table_ptr(pa).as_ptr().cast();
        for i in 0..LEAF_SLOTS {
            // SAFETY: a fresh zeroed table page, ours alone, large enough
            // (checked above) and aligned for a slot.
            unsafe { leaf.add(i).write(Mutex::new(None)) };
        }
        let d = &self.dir[slot / LEAF_SLOTS];
        if d.compare_exchange(
            core::ptr::null_mut(),
            leaf,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
        {
            // Another CPU published this leaf first.
            // SAFETY: never published, so nobody else uses it.
            unsafe { alloc.free_tables(pa, 1) };
        }
        self.slot(slot).ok_or(HostError::NoMemory)
    }

    /// Locks VM slot `slot` if it holds a VM.
    fn lock_vm(&self, slot: usize) -> HostResult<VmRef<'_, X>> {
        let g = self.slot(slot).ok_or(HostError::NoVm)?.lock();
        if g.is_none() {
            return Err(HostError::NoVm);
        }
        Ok(VmRef(g))
    }

    /// VM by handle, locked while the result lives.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`].
    pub fn vm(&self, handle: u64) -> HostResult<VmRef<'_, X>> {
        self.lock_vm(self.slot_of(handle)?)
    }

    /// The slot of `handle`.
    fn slot_of(&self, handle: u64) -> HostResult<usize> {
        if handle == 0 || handle > self.max_vms as u64 {
            return Err(HostError::NoVm);
        }
        Ok(handle as usize - 1)
    }

    /// The host and VM `handle`, locked in the one order.
    fn both(&self, handle: u64) -> HostResult<Both<'_, A, M, X>> {
        let slot = self.slot_of(handle)?;
        let host = self.host.lock();
        let vm = self.lock_vm(slot)?;
        Ok(Both {
            alloc: self.alloc.clone(),
            host,
            vm,
            slot,
        })
    }

    /// The host's view of one of its RAM pages.
    #[must_use]
    pub fn host_state(&self, pa: u64) -> CompState {
        host_state(&self.host.lock().s2, &self.alloc, pa)
    }

    /// The owner annotation of an unmapped host page.
    #[must_use]
    pub fn host_annotation(&self, pa: u64) -> Option<OwnerId> {
        self.host.lock().s2.annotation(&self.alloc, Ipa(pa))
    }

    /// The guest's view of one of its IPAs.
    #[must_use]
    pub fn guest_state(&self, handle: u64, ipa: u64) -> Option<(u64, CompState)> {
        let vm = self.vm(handle).ok()?;
        let m = vm.s2.query(&VmRead(&self.alloc), Ipa(ipa))?;
        Some((m.pa.0, CompState::from_mapping(Some(m.state))))
    }

    /// Checks that `[pa, pa + pages)` is host RAM the host owns alone.
    fn check_for_hyp(&self, host: &HostSide<M>, pa: u64, pages: u64) -> HostResult<()> {
        if pages == 0 || !pa.is_multiple_of(PAGE_SIZE) {
            return Err(HostError::Invalid);
        }
        let size = pages * PAGE_SIZE;
        if pa < self.host_ram.base || pa.checked_add(size).is_none_or(|e| e > self.host_ram.end()) {
            return Err(HostError::Range);
        }
        for i in 0..pages {
            if host_state(&host.s2, &self.alloc, pa + i * PAGE_SIZE) != CompState::Owned {
                return Err(HostError::Denied);
            }
        }
        Ok(())
    }

    /// Takes `[pa, pa + pages)` (checked by [`Control::check_for_hyp`])
    /// from the host for the hypervisor (annotated [`OWNER_HYP`]).
    fn take_for_hyp(
        &self,
        host: &mut HostSide<M>,
        v: &mut Vttbr,
        pa: u64,
        pages: u64,
    ) -> HostResult<()> {
        let size = pages * PAGE_SIZE;
        let mut alloc = self.alloc.clone();
        if let Err(e) = host
            .s2
            .set_annotation(&mut alloc, v, Ipa(pa), size, OWNER_HYP)
        {
            // Out of tables part-way (the pool's own limit): give back what
            // changed.
            host.restore_changed(&mut alloc, v, pa, size);
            return Err(s2err(e));
        }
        self.alloc.adopt(pa, size);
        Ok(())
    }

    /// VM_CREATE: a VM with `nr_vcpus` vCPUs whose state and tables live in
    /// `[pa, pa + pages)`, host pages the hypervisor takes (at least
    /// [`VM_CREATE_PAGES`]; the rest serves its tables, as VM_TOPUP's).
    ///
    /// # Errors
    ///
    /// [`HostError::Invalid`] for 0 or more than [`MAX_VCPUS`] vCPUs, an
    /// unknown flag, an SVE vector length that is not a power of two up to
    /// 2048 bits (`vcpu::sve_vl::choose`), an unaligned PA or fewer than [`VM_CREATE_PAGES`]
    /// pages (or more than VM_TOPUP's limit); [`HostError::Range`],
    /// [`HostError::Denied`] (pages not the host's alone);
    /// [`HostError::NoMemory`] when every VMID is in use.
    pub fn create(
        &self,
        v: &mut Vttbr,
        nr_vcpus: u64,
        flags: u64,
        pa: u64,
        pages: u64,
    ) -> HostResult<u64> {
        self.create_with(v, nr_vcpus, flags, pa, pages, |_, _| Ok(()))
    }

    /// [`Control::create`], with `setup` run on the new VM before its handle
    /// is published: until it returns, no other call can reach the VM (its
    /// slot stays locked), so nothing runs a VM whose set-up (at EL2: its
    /// vGIC) is unfinished. If `setup` fails, the VM is taken apart again
    /// and its pages go back to the host.
    ///
    /// # Errors
    ///
    /// As [`Control::create`], and `setup`'s.
    pub fn create_with(
        &self,
        v: &mut Vttbr,
        nr_vcpus: u64,
        flags: u64,
        pa: u64,
        pages: u64,
        setup: impl FnOnce(&mut NewVm<'_, A, X>, &mut Vttbr) -> HostResult<()>,
    ) -> HostResult<u64> {
        if nr_vcpus == 0
            || nr_vcpus > MAX_VCPUS as u64
            || flags & !hyp_abi::FLAGS_CREATE != 0
            || !(VM_CREATE_PAGES..=MAX_TOPUP_PAGES).contains(&pages)
        {
            return Err(HostError::Invalid);
        }
        let sve_vq = sve_vl::choose(flags, sve_vl::cpu_max_vq())?;
        let mut host = self.host.lock();
        self.check_for_hyp(&host, pa, pages)?;
        // A free slot, leaves made on the way.
        let mut found = None;
        for i in 0..self.max_vms {
            let slot = self.slot_or_make(i)?;
            if let Some(g) = slot.try_lock().filter(|g| g.is_none()) {
                found = Some((i, g));
                break;
            }
        }
        let (slot, mut free) = found.ok_or(HostError::NoMemory)?;
        self.take_for_hyp(&mut host, v, pa, pages)?;
        let vmid = slot as u16 + 1;
        let mut cache = MemCache::new(pa, pages);
        let obj_pages = core::mem::size_of::<VmBox<X>>().div_ceil(PAGE_SIZE as usize) as u64;
        let obj = cache.alloc(&self.alloc, obj_pages, 1);
        let obj = obj.expect("VM_CREATE_PAGES holds the VM's state");
        let s2 = Stage2::new(
            &mut VmAlloc {
                cache: &mut cache,
                hyp: &self.alloc,
            },
            vmid,
            GUEST_IPA_BITS,
            self.fwb,
        );
        let s2 = s2.expect("VM_CREATE_PAGES holds the stage-2 root");
        let root_end = s2.root().0 + s2.root_pages() as u64 * PAGE_SIZE;
        let keep_pages = (root_end - pa) / PAGE_SIZE;
        let vttbr = s2.root().0 | (u64::from(vmid) << 48);
        let meta = VmMeta {
            vmid,
            protected: flags & FLAG_PROTECTED != 0,
            sve_vq,
            nr_vcpus: nr_vcpus as usize,
            s2,
            regions: [None; MAX_REGIONS],
            vcpus: [VCPU_RESET; MAX_VCPUS],
            status: VmStatus::Live,
            boot_entry_set: false,
            has_run: false,
            shared: 0,
            mmio_guard: 0,
            device_spis: 0,
            boot_args: [0; 4],
            measurement: None,
            vttbr,
            lazy: 0,
            scrubbed: 0,
            cache,
            keep_pages,
        };
        let b: *mut VmBox<X> = self.alloc.hyp_ptr(obj).as_ptr().cast();
        // SAFETY: `obj_pages` zeroed pages of the VM's own memory, page
        // aligned (enough for `VmBox`), used by nothing else.
        unsafe {
            b.write(VmBox {
                meta: UnsafeCell::new(meta),
                extra: X::new(nr_vcpus as usize),
            });
        }
        // SAFETY: just written; the slot is still locked and empty, so this
        // is the only reference until the VM is published below.
        let (meta, extra) = unsafe { (&mut *(*b).meta.get(), &(*b).extra) };
        let mut new = NewVm {
            meta,
            alloc: &self.alloc,
            extra,
            handle: slot as u64 + 1,
        };
        if let Err(e) = setup(&mut new, v) {
            // SAFETY: never published; read out and dropped once each.
            let meta = unsafe { core::ptr::addr_of!((*b).meta).read().into_inner() };
            // SAFETY: as above.
            unsafe { core::ptr::drop_in_place(core::ptr::addr_of_mut!((*b).extra)) };
            let VmMeta { s2, mut cache, .. } = meta;
            s2.destroy(
                &mut VmAlloc {
                    cache: &mut cache,
                    hyp: &self.alloc,
                },
                v,
            );
            host.mem.scrub(pa, pages * PAGE_SIZE);
            host.restore(&mut self.alloc.clone(), v, pa, pages * PAGE_SIZE, true);
            self.alloc.release(pa, pages * PAGE_SIZE);
            return Err(e);
        }
        *free = Some(VmPtr(NonNull::new(b).expect("hyp_ptr is never null")));
        Ok(slot as u64 + 1)
    }

    /// VM_TOPUP: host pages `[pa, pa + pages)` for VM `handle`'s tables
    /// (pKVM's memcache top-up). A call that needs a table the VM's pages
    /// cannot give fails with [`HostError::NoMemory`] (a guest's lazy
    /// fault: VCPU_RUN's `MEMORY` exit); the host tops up and tries again.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`] (unaligned, 0 or more
    /// than [`MAX_TOPUP_PAGES`] pages), [`HostError::Range`],
    /// [`HostError::Denied`], [`HostError::State`] (VM being destroyed),
    /// [`HostError::NoMemory`] (the VM holds its most runs already).
    pub fn topup(&self, v: &mut Vttbr, handle: u64, pa: u64, pages: u64) -> HostResult<()> {
        if pages > MAX_TOPUP_PAGES {
            return Err(HostError::Invalid);
        }
        let mut b = self.both(handle)?;
        if b.vm.status == VmStatus::Dying {
            return Err(HostError::State);
        }
        if b.vm
            .cache
            .last_run()
            .is_some_and(|i| i + 1 >= crate::vm::memcache::MAX_HYP_RUNS)
        {
            return Err(HostError::NoMemory);
        }
        self.check_for_hyp(&b.host, pa, pages)?;
        self.take_for_hyp(&mut b.host, v, pa, pages)?;
        let added = b.vm.cache.add(pa, pages);
        assert!(added, "a run slot was checked free");
        Ok(())
    }

    /// Pages VM `handle` can still use for tables.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`].
    pub fn cache_available(&self, handle: u64) -> HostResult<u64> {
        Ok(self.vm(handle)?.cache.available())
    }

    /// MEM_DONATE (`kind` Donated) or MEM_LEND (`kind` Lent): gives host
    /// pages `[pa, pa + pages * 4K)` to the VM at `ipa`.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`] (unaligned, zero or too
    /// many pages, donating to a normal VM or lending to a protected one),
    /// [`HostError::Range`] (outside host RAM or guest IPA space),
    /// [`HostError::Denied`] (a page not owned by the host alone, or an IPA
    /// already in use), [`HostError::NoMemory`] (no region slot or tables;
    /// nothing changed).
    pub fn give(
        &self,
        v: &mut Vttbr,
        handle: u64,
        pa: u64,
        ipa: u64,
        pages: u64,
        kind: RegionKind,
    ) -> HostResult<()> {
        self.give_with(v, handle, pa, ipa, pages, kind, false)
    }

    /// [`Control::give`], and with `lazy` the guest's stage 2 is left
    /// empty: ownership changes at once (the host loses or shares the pages
    /// now), but each page is mapped for the guest only when it first
    /// touches it ([`Control::map_on_demand`]).
    ///
    /// # Errors
    ///
    /// As [`Control::give`].
    #[allow(
        clippy::too_many_arguments,
        reason = "the host call's five arguments, the lazy flag and this CPU's VTTBR"
    )]
    pub fn give_with(
        &self,
        v: &mut Vttbr,
        handle: u64,
        pa: u64,
        ipa: u64,
        pages: u64,
        kind: RegionKind,
        lazy: bool,
    ) -> HostResult<()> {
        let region = Region {
            ipa,
            pa,
            pages,
            kind,
        };
        self.both(handle)?.give(v, self.host_ram, region, lazy)
    }

    /// Maps a device frame the hypervisor hands the VM directly (the
    /// GICv2 virtual CPU interface) at `ipa`, below guest RAM. Not host
    /// memory, so no ownership changes.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Range`] (not below guest RAM),
    /// [`HostError::NoMemory`].
    pub fn map_device(
        &self,
        v: &mut Vttbr,
        handle: u64,
        ipa: u64,
        pa: u64,
        size: u64,
    ) -> HostResult<()> {
        self.map_device_with(v, handle, ipa, pa, size, |_| Ok(()))
    }

    /// [`Control::map_device`] after `check` of the VM's extra state, both
    /// under the VM's lock (DEVICE_ASSIGN: the VM that passed the check is
    /// the one the frame is mapped into).
    ///
    /// # Errors
    ///
    /// As [`Control::map_device`], and `check`'s.
    pub fn map_device_with(
        &self,
        v: &mut Vttbr,
        handle: u64,
        ipa: u64,
        pa: u64,
        size: u64,
        check: impl FnOnce(&X) -> HostResult<()>,
    ) -> HostResult<()> {
        let mut vm = self.vm(handle)?;
        if vm.status == VmStatus::Dying {
            return Err(HostError::State);
        }
        check(vm.extra())?;
        vm.map_device(&self.alloc, v, ipa, pa, size)
    }

    /// A stage-2 translation fault of VM `handle` at `ipa` in its RAM: the
    /// access is retried ([`Fault::Retry`]) when the page is mapped by the
    /// time this holds the VM's lock, and when `ipa` lies in a lazy region
    /// (see [`Control::give_with`]) its page is first mapped in the state the
    /// give left it (owned when donated, borrowed when lent). Takes only the
    /// VM's lock.
    ///
    /// The page is mapped already when the fault raced with a change made
    /// under this lock: another vCPU's fault on the same lazy page, or the
    /// break-before-make window of a split, collapse or share on another
    /// CPU (the entry was invalid for a moment). The guest must never see
    /// such a fault.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Range`] (not mapped and not in a
    /// lazy region: a real fault), [`HostError::NoMemory`] (no table page).
    pub fn map_on_demand(&self, v: &mut Vttbr, handle: u64, ipa: u64) -> HostResult<Fault> {
        let mut vm = self.vm(handle)?;
        let ipa = ipa & !(PAGE_SIZE - 1);
        if vm.s2.query(&VmRead(&self.alloc), Ipa(ipa)).is_some() {
            return Ok(Fault::Retry);
        }
        let (i, r) = vm
            .regions
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.filter(|r| r.pa_of(ipa).is_some()).map(|r| (i, r)))
            .ok_or(HostError::Range)?;
        if vm.lazy & (1 << i) == 0 {
            return Err(HostError::Range);
        }
        let state = match r.kind {
            RegionKind::Donated => PageState::Owned,
            RegionKind::Lent => PageState::SharedBorrowed,
        };
        let pa = r.pa_of(ipa).ok_or(HostError::Range)?;
        let (s2, mut alloc) = vm.tables(&self.alloc);
        s2.map(
            &mut alloc,
            v,
            Ipa(ipa),
            Pa(pa),
            PAGE_SIZE,
            Attrs::RAM_RWX,
            state,
        )
        .map(|_| Fault::Mapped)
        .map_err(s2err)
    }

    /// VCPU_INIT: sets where a powered-off vCPU starts.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`] (vCPU index, unaligned
    /// entry), [`HostError::Denied`] (a protected VM: any vCPU but 0, a
    /// second VCPU_INIT, or any once a vCPU has run), [`HostError::Range`]
    /// (entry not in guest memory), [`HostError::State`] (vCPU not off, VM
    /// stopped).
    pub fn vcpu_init(&self, handle: u64, vcpu: u64, entry: u64, ctx: u64) -> HostResult<()> {
        self.vm(handle)?.vcpu_init(vcpu, entry, ctx)
    }

    /// VCPU_STATE: 0 on, 1 off, 2 on pending (AFFINITY_INFO's encoding).
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`].
    pub fn vcpu_state(&self, handle: u64, vcpu: u64) -> HostResult<u64> {
        self.vm(handle)?.vcpu_state(vcpu)
    }

    /// VCPU_RUN, first half: claims the vCPU for physical CPU `cpu`.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`], [`HostError::Busy`]
    /// (running elsewhere), [`HostError::State`] (VM stopped or being
    /// destroyed, vCPU off, or an MMIO read not yet completed).
    pub fn begin_run(
        &self,
        handle: u64,
        vcpu: u64,
        cpu: usize,
    ) -> HostResult<(RunStart, Claim<'_, X>)> {
        self.complete_and_run(handle, vcpu, None, cpu)
    }

    /// [`Control::begin_run`], first completing the vCPU's outstanding MMIO
    /// read with `value` (as [`Control::mmio_complete`]) under the same lock.
    ///
    /// # Errors
    ///
    /// As [`Control::mmio_complete`] and [`Control::begin_run`].
    pub fn complete_and_run(
        &self,
        handle: u64,
        vcpu: u64,
        value: Option<u64>,
        cpu: usize,
    ) -> HostResult<(RunStart, Claim<'_, X>)> {
        let mut vm = self.vm(handle)?;
        if let Some(value) = value {
            vm.mmio_complete(vcpu, value)?;
        }
        let start = vm.begin_run(vcpu, cpu)?;
        // SAFETY: the box lives until the claim ends: the vCPU is now
        // running, and VM_DESTROY refuses a VM with a running vCPU.
        let extra = unsafe { &(*vm.ptr().as_ptr()).extra };
        Ok((
            start,
            Claim {
                extra,
                handle,
                vcpu,
            },
        ))
    }

    /// VCPU_RUN, second half: the vCPU left physical CPU `cpu`.
    ///
    /// # Panics
    ///
    /// If the vCPU was not claimed by `begin_run` on `cpu` (a hypervisor bug).
    pub fn end_run(&self, claim: Claim<'_, X>, cpu: usize, end: RunEnd) {
        self.vm(claim.handle)
            .expect("VM destroyed while running")
            .end_run(claim.vcpu, cpu, end);
    }

    /// MMIO_COMPLETE: the host's answer to the vCPU's outstanding read.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`], [`HostError::Busy`],
    /// [`HostError::State`] (no read outstanding).
    pub fn mmio_complete(&self, handle: u64, vcpu: u64, value: u64) -> HostResult<()> {
        self.vm(handle)?.mmio_complete(vcpu, value)
    }

    /// PSCI CPU_ON from a running vCPU of VM `handle`: returns the PSCI code.
    pub fn psci_cpu_on(&self, handle: u64, target: usize, entry: u64, ctx: u64) -> u64 {
        match self.vm(handle) {
            Ok(mut vm) => vm.psci_cpu_on(target, entry, ctx),
            Err(_) => psci(error::INVALID_PARAMETERS),
        }
    }

    /// PSCI AFFINITY_INFO (level 0) for VM `handle`.
    pub fn psci_affinity_info(&self, handle: u64, target: usize) -> u64 {
        match self.vm(handle) {
            Ok(vm) if target < vm.nr_vcpus => vm.vcpu_state(target as u64).unwrap_or(1),
            _ => psci(error::INVALID_PARAMETERS),
        }
    }

    /// Guest MMIO_GUARD of the page at `ipa` in the host's MMIO window:
    /// from now on the VM's accesses there are forwarded to the host.
    /// Takes only the VM's lock.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Denied`] (not a protected VM: a
    /// normal VM's accesses in the window always go to the host),
    /// [`HostError::Range`] (outside the window, or guest memory).
    pub fn mmio_guard(&self, handle: u64, ipa: u64) -> HostResult<()> {
        let mut vm = self.vm(handle)?;
        if !vm.protected {
            return Err(HostError::Denied);
        }
        match mmio_guard_bit(ipa) {
            Some(bit) if !vm.is_ram(ipa) => {
                vm.mmio_guard |= bit;
                Ok(())
            }
            _ => Err(HostError::Range),
        }
    }

    /// Guest MEM_SHARE (`share`) or MEM_UNSHARE of the page at `ipa`.
    ///
    /// # Errors
    ///
    /// [`HostError::Range`] (not guest memory), [`HostError::Denied`] (the
    /// page is not in a state the transition starts from: not owned, already
    /// shared, lent), [`HostError::NoMemory`].
    pub fn guest_share(&self, v: &mut Vttbr, handle: u64, ipa: u64, share: bool) -> HostResult<()> {
        self.both(handle)?.guest_share(v, ipa, share)
    }

    /// VM_DESTROY, one bounded step at a time: the first call stops the VM
    /// for good (no vCPU may run again) and unmaps all of its memory; each
    /// call then scrubs up to [`DESTROY_CHUNK`] pages, first the guest's
    /// regions (donated pages scrubbed, lent ones cleaned to PoC), then the
    /// pages the host donated for the VM's state and tables, giving each
    /// run back once it is all scrubbed; the last call frees the VM's slot
    /// and gives back the pages that held its state. Between calls no lock
    /// is held, so other VMs' exits and the host's other calls go on.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Busy`] (a vCPU is running).
    pub fn destroy(&self, v: &mut Vttbr, handle: u64) -> HostResult<Destroyed> {
        let mut b = self.both(handle)?;
        if b.vm.status != VmStatus::Dying {
            if b.vm.vcpus.iter().any(|v| v.running_on.is_some()) {
                return Err(HostError::Busy);
            }
            b.vm.status = VmStatus::Dying;
            if b.vm.protected {
                log_owned(handle, &b.vm);
            }
            // Unmap the guest first so it can never see a scrubbed-then-reused
            // page. The whole IPA space: no block straddles its ends, so this
            // needs no table, and it frees every table but the root.
            let Both { alloc, vm, .. } = &mut b;
            let (s2, mut valloc) = vm.tables(alloc);
            let r = s2.unmap(&mut valloc, v, Ipa(0), 1 << GUEST_IPA_BITS);
            assert!(r.is_ok(), "unmapping a whole stage 2 needs no tables");
        }
        // Each region is scrubbed (donated) or cleaned to PoC (lent) in steps
        // and given back to the host whole after its last step: restoring the
        // whole range maps back exactly what was taken away and needs no
        // table (restoring a part of a block the host lost would have to
        // split it), and needs no further clean.
        let mut budget = DESTROY_CHUNK;
        let mut scrubbed = 0;
        while budget > 0 {
            let Some(i) = b.vm.regions.iter().position(Option::is_some) else {
                break;
            };
            let Some(r) = b.vm.regions[i] else {
                break;
            };
            let done = b.vm.scrubbed;
            let n = (r.pages - done).min(budget);
            let (pa, len) = (r.pa + done * PAGE_SIZE, n * PAGE_SIZE);
            if r.kind == RegionKind::Donated {
                // Every donated page was private to the guest at some point:
                // shared ones too may hold its data after unsharing races.
                b.host.mem.scrub(pa, len);
                scrubbed += n;
            } else {
                b.host.mem.clean(pa, len);
            }
            budget -= n;
            b.vm.scrubbed += n;
            if b.vm.scrubbed < r.pages {
                break;
            }
            b.restore_host_cleaned(v, r.pa, r.pages * PAGE_SIZE);
            b.vm.regions[i] = None;
            b.vm.scrubbed = 0;
        }
        if b.vm.regions.iter().any(Option::is_some) {
            return Ok(Destroyed {
                scrubbed,
                more: true,
            });
        }
        // Then the hypervisor's pages for this VM, last run first. They held
        // its tables and vCPU registers, so they are scrubbed too. The first
        // run starts with this structure and the stage-2 root, which stay
        // to the last step.
        let keep = b.vm.keep_pages;
        while budget > 0 {
            let Some(i) = b.vm.cache.last_run() else {
                break;
            };
            let Some(run) = b.vm.cache.runs().nth(i) else {
                break;
            };
            let from = if i == 0 { keep } else { 0 };
            let done = from + b.vm.scrubbed;
            if done >= run.pages {
                break;
            }
            let n = (run.pages - done).min(budget);
            b.host.mem.scrub(run.pa + done * PAGE_SIZE, n * PAGE_SIZE);
            budget -= n;
            b.vm.scrubbed += n;
            if i == 0 || from + b.vm.scrubbed < run.pages {
                continue;
            }
            b.restore_host_cleaned(v, run.pa, run.pages * PAGE_SIZE);
            self.alloc.release(run.pa, run.pages * PAGE_SIZE);
            b.vm.cache.take_run(i);
            b.vm.scrubbed = 0;
        }
        let last = b.vm.cache.last_run();
        let run0_done =
            b.vm.cache
                .runs()
                .next()
                .is_some_and(|r| keep + b.vm.scrubbed >= r.pages);
        if last != Some(0) || !run0_done || budget < keep {
            return Ok(Destroyed {
                scrubbed,
                more: true,
            });
        }
        // The last step: the slot lets go of the VM, whose state is dropped,
        // and its first run is scrubbed and given back.
        let Both {
            mut alloc,
            mut host,
            vm,
            ..
        } = b;
        let mut guard = vm.0;
        let p = guard.take().expect("a VmRef holds a VM").0.as_ptr();
        // SAFETY: the slot no longer holds the box, and nothing else
        // reaches it: no vCPU runs (checked above), every VmRef and claim
        // needs the slot. Read out once and dropped in place once.
        let mut meta: VmMeta = unsafe { core::ptr::addr_of!((*p).meta).read().into_inner() };
        // SAFETY: as above.
        unsafe { core::ptr::drop_in_place(core::ptr::addr_of_mut!((*p).extra)) };
        drop(guard);
        // The root alone is left; freeing it writes into the first run,
        // which is scrubbed next.
        meta.s2.destroy(
            &mut VmAlloc {
                cache: &mut meta.cache,
                hyp: &alloc,
            },
            v,
        );
        let run = meta
            .cache
            .runs()
            .next()
            .expect("the first run stays to the end");
        host.mem.scrub(run.pa, keep.min(run.pages) * PAGE_SIZE);
        host.restore(&mut alloc, v, run.pa, run.pages * PAGE_SIZE, true);
        self.alloc.release(run.pa, run.pages * PAGE_SIZE);
        Ok(Destroyed {
            scrubbed,
            more: false,
        })
    }

    /// Pool pages the VM table's leaves hold (made on first use, kept).
    #[must_use]
    pub fn registry_pages(&self) -> usize {
        self.dir
            .iter()
            .filter(|d| !d.load(Ordering::Acquire).is_null())
            .count()
    }

    /// Handles (and VMIDs) of live VMs, in order (a walk of every slot:
    /// for tests and the shutdown report).
    pub fn handles(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.max_vms)
            .filter(|&s| self.slot(s).is_some_and(|m| m.lock().is_some()))
            .map(|s| s as u64 + 1)
    }
}

/// The host's view of page `pa` in its stage 2 `s2`.
fn host_state(s2: &Stage2, alloc: &impl TableAlloc, pa: u64) -> CompState {
    CompState::from_mapping(s2.query(alloc, Ipa(pa)).map(|m| m.state))
}

/// The host and one VM, locked in the one order, for an ownership
/// transition between them.
struct Both<'a, A: HypAlloc, M, X> {
    alloc: A,
    host: MutexGuard<'a, HostSide<M>>,
    vm: VmRef<'a, X>,
    slot: usize,
}

impl<A: HypAlloc, M: PhysMem, X> Both<'_, A, M, X> {
    fn host_state(&self, pa: u64) -> CompState {
        host_state(&self.host.s2, &self.alloc, pa)
    }

    /// [`Control::give_with`] with both locks held.
    fn give(
        &mut self,
        v: &mut Vttbr,
        host_ram: MemRegion,
        new: Region,
        lazy: bool,
    ) -> HostResult<()> {
        let Region {
            ipa,
            pa,
            pages,
            kind,
        } = new;
        if self.vm.protected != (kind == RegionKind::Donated) {
            return Err(HostError::Invalid);
        }
        if pages == 0
            || pages > MAX_PAGES_PER_CALL
            || !pa.is_multiple_of(PAGE_SIZE)
            || !ipa.is_multiple_of(PAGE_SIZE)
        {
            return Err(HostError::Invalid);
        }
        let size = pages * PAGE_SIZE;
        // Checked sums: a PA or IPA near 2^64 from the host must be a range
        // error, not an overflow (a panic in debug builds; in release a
        // wrapped end would pass the check).
        if pa < host_ram.base || pa.checked_add(size).is_none_or(|e| e > host_ram.end()) {
            return Err(HostError::Range);
        }
        if ipa < GUEST_RAM_IPA_MIN
            || ipa
                .checked_add(size)
                .is_none_or(|e| e > 1 << GUEST_IPA_BITS)
        {
            return Err(HostError::Range);
        }
        if self.vm.status != VmStatus::Live {
            return Err(HostError::State);
        }
        if self
            .vm
            .regions
            .iter()
            .flatten()
            .any(|r| r.ipa < new.ipa_end() && new.ipa < r.ipa_end())
        {
            return Err(HostError::Denied);
        }
        // A give that continues a region (same kind, how it is mapped, and
        // contiguous in both PA and IPA) extends it; any other takes a free
        // region slot.
        let extends = self.vm.regions.iter().position(|r| {
            r.is_some_and(|r| {
                r.kind == kind && r.ipa_end() == ipa && r.pa + r.pages * PAGE_SIZE == pa
            })
        });
        let extends = extends.filter(|&i| (self.vm.lazy & (1 << i) != 0) == lazy);
        let free = extends
            .or_else(|| self.vm.regions.iter().position(Option::is_none))
            .ok_or(HostError::NoMemory)?;
        let t = match kind {
            RegionKind::Donated => Transition::HostDonate,
            RegionKind::Lent => Transition::HostLend,
        };
        // Check every page before changing any: one lookup per entry of the
        // host's stage 2 (a 2 MiB block's pages share its state), not per
        // page.
        let mut after = None;
        let mut at = pa;
        while at < pa + size {
            let Some((m, span)) = self.host.s2.query_span(&self.alloc, Ipa(at)) else {
                return Err(HostError::Range);
            };
            let cur = PageOwnership {
                host: CompState::from_mapping(m.map(|m| m.state)),
                guest: CompState::NoAccess,
                hyp: CompState::NoAccess,
            };
            match ownership::transition(cur, t, Requester::Host) {
                Ok(next) => after = Some(next),
                Err(_) => return Err(HostError::Denied),
            }
            at = (at & !(span - 1)) + span;
        }
        let Some(after) = after else {
            return Err(HostError::Invalid);
        };
        // Undoing a part-done change may itself split a block (at either end
        // of the range, at levels 1 and 2: at most ROLLBACK_TABLES tables)
        // when the change merged tables on its way. Those tables are taken
        // now and handed back just before an undo, so an undo never runs out
        // of memory and no page stays given away. (Found by the model test:
        // the undo after a failed guest map found no table for a split and
        // left the host's pages lent to nobody.)
        let Some(reserve) = self.reserve_tables() else {
            return Err(HostError::NoMemory);
        };
        // Host first (a block split may run out of tables), then the guest.
        let host_change = match after.host.page_state() {
            None => self.host.s2.set_annotation(
                &mut self.alloc,
                v,
                Ipa(pa),
                size,
                owner_of_slot(self.slot),
            ),
            Some(state) => self
                .host
                .s2
                .set_state(&mut self.alloc, v, Ipa(pa), size, state),
        };
        if let Err(e) = host_change {
            // Out of tables part-way: only the pages changed so far go back.
            // Remapping the whole range would split the untouched block the
            // failed split left behind, which needs the very table that was
            // missing.
            self.release_tables(reserve);
            self.restore_changed(v, pa, size);
            return Err(s2err(e));
        }
        let guest_state = after.guest.page_state().unwrap_or(PageState::Owned);
        if lazy {
            self.record_region(free, new);
            self.vm.lazy |= 1 << free;
            self.release_tables(reserve);
            return Ok(());
        }
        let (s2, mut valloc) = self.vm.tables(&self.alloc);
        if let Err(e) = s2.map(
            &mut valloc,
            v,
            Ipa(ipa),
            Pa(pa),
            size,
            Attrs::RAM_RWX,
            guest_state,
        ) {
            // The range was unmapped before (no overlap), so unmapping it
            // again frees what the partial map allocated.
            let _ = s2.unmap(&mut valloc, v, Ipa(ipa), size);
            self.release_tables(reserve);
            self.restore_host(v, pa, size);
            return Err(s2err(e));
        }
        self.record_region(free, new);
        self.release_tables(reserve);
        #[cfg(feature = "test-leak-one-page")]
        if kind == RegionKind::Donated && extends.is_none() {
            // Deliberately broken isolation, for the demo's negative test
            // only: the first page of each donated region stays mapped in
            // the host.
            self.restore_host(v, pa, PAGE_SIZE);
        }
        Ok(())
    }

    /// Puts `new` in region slot `i`: a new region, or the continuation of
    /// the one there.
    fn record_region(&mut self, i: usize, new: Region) {
        self.vm.regions[i] = Some(match self.vm.regions[i] {
            Some(r) => Region {
                pages: r.pages + new.pages,
                ..r
            },
            None => new,
        });
    }

    /// Takes [`ROLLBACK_TABLES`] table pages from the allocator (all or none).
    fn reserve_tables(&mut self) -> Option<[Pa; ROLLBACK_TABLES]> {
        let mut got = [Pa(0); ROLLBACK_TABLES];
        for i in 0..ROLLBACK_TABLES {
            let Some(p) = self.alloc.alloc_table() else {
                self.release_tables_n(&got[..i]);
                return None;
            };
            got[i] = p;
        }
        Some(got)
    }

    fn release_tables(&mut self, tables: [Pa; ROLLBACK_TABLES]) {
        self.release_tables_n(&tables);
    }

    fn release_tables_n(&mut self, tables: &[Pa]) {
        for &p in tables {
            // SAFETY: allocated by `reserve_tables` as single pages and never
            // linked into any table or used otherwise, so no walker or TLB
            // can hold them.
            unsafe { self.alloc.free_tables(p, 1) };
        }
    }

    /// [`HostSide::restore_changed`] with both locks held.
    fn restore_changed(&mut self, v: &mut Vttbr, pa: u64, size: u64) {
        self.host.restore_changed(&mut self.alloc, v, pa, size);
    }

    /// Gives the host back `[pa, pa + size)` as its own (identity, owned).
    /// Mapping over split tables needs no new table, so this cannot fail
    /// when it restores pages the host owned before.
    fn restore_host(&mut self, v: &mut Vttbr, pa: u64, size: u64) {
        self.restore_host_with(v, pa, size, false);
    }

    /// [`Both::restore_host`] of memory just cleaned to PoC (scrubbed, or a
    /// lent region cleaned), without cleaning it again.
    fn restore_host_cleaned(&mut self, v: &mut Vttbr, pa: u64, size: u64) {
        self.restore_host_with(v, pa, size, true);
    }

    fn restore_host_with(&mut self, v: &mut Vttbr, pa: u64, size: u64, cleaned: bool) {
        self.host.restore(&mut self.alloc, v, pa, size, cleaned);
    }

    /// [`Control::guest_share`] with both locks held.
    fn guest_share(&mut self, v: &mut Vttbr, ipa: u64, share: bool) -> HostResult<()> {
        let ipa = ipa & !(PAGE_SIZE - 1);
        let pa = self
            .vm
            .region_of(ipa)
            .and_then(|r| r.pa_of(ipa))
            .ok_or(HostError::Range)?;
        let guest = CompState::from_mapping(
            self.vm
                .s2
                .query(&VmRead(&self.alloc), Ipa(ipa))
                .map(|m| m.state),
        );
        let cur = PageOwnership {
            host: self.host_state(pa),
            guest,
            hyp: CompState::NoAccess,
        };
        let t = if share {
            Transition::GuestShare
        } else {
            Transition::GuestUnshare
        };
        let next =
            ownership::transition(cur, t, Requester::Guest).map_err(|_| HostError::Denied)?;
        // Either change may need a table (splitting a block), so either may
        // fail with NoMemory; the one made first is then undone (undoing
        // re-merges what it split and needs no table). The host loses access
        // first (unshare) and gains it last (share), so it never reads a page
        // the guest still holds private.
        let gstate = next.guest.page_state().unwrap_or(PageState::Owned);
        let gold = cur.guest.page_state().unwrap_or(PageState::Owned);
        if share {
            self.guest_set_state(v, ipa, gstate)?;
            if let Err(e) = self.host_set(v, pa, next.host) {
                let undo = self.guest_set_state(v, ipa, gold);
                // Cannot fail: undoing re-merges what the change split (no
                // table needed). Checked in release builds: a failure would
                // leave the page's two views disagreeing.
                assert!(undo.is_ok(), "undoing a guest state change needs no tables");
                return Err(e);
            }
        } else {
            self.host_set(v, pa, next.host)?;
            if let Err(e) = self.guest_set_state(v, ipa, gstate) {
                let undo = self.host_set(v, pa, cur.host);
                // Cannot fail, as above; checked in release builds.
                assert!(undo.is_ok(), "undoing a host state change needs no tables");
                return Err(e);
            }
        }
        if share {
            self.vm.shared += 1;
        } else {
            self.vm.shared -= 1;
        }
        Ok(())
    }

    /// Sets the host's state of page `pa`: mapped (identity) in `state`, or
    /// unmapped with this VM's owner annotation.
    fn host_set(&mut self, v: &mut Vttbr, pa: u64, state: CompState) -> HostResult<()> {
        match state.page_state() {
            Some(st) => self.host.s2.map(
                &mut self.alloc,
                v,
                Ipa(pa),
                Pa(pa),
                PAGE_SIZE,
                Attrs::RAM_RW,
                st,
            ),
            None => self.host.s2.set_annotation(
                &mut self.alloc,
                v,
                Ipa(pa),
                PAGE_SIZE,
                owner_of_slot(self.slot),
            ),
        }
        .map(|_| ())
        .map_err(s2err)
    }

    /// Sets the guest state of the (mapped) page at `ipa`.
    fn guest_set_state(&mut self, v: &mut Vttbr, ipa: u64, state: PageState) -> HostResult<()> {
        let (s2, mut valloc) = self.vm.tables(&self.alloc);
        s2.set_state(&mut valloc, v, Ipa(ipa), PAGE_SIZE, state)
            .map(|_| ())
            .map_err(s2err)
    }
}

/// Logs the physical memory a protected VM owned when its destroy began:
/// its RAM (the regions the host donated, shared pages included) and the
/// runs that held its state and tables, four ranges a line. Outside these
/// the host owns everything it gave; a search of host memory for the VM's
/// secrets (tests/tests/linux_guest.rs, through QEMU's `pmemsave`) tells
/// the VM's own pages from the host's by them. Cold: once per VM.
#[cold]
fn log_owned(handle: u64, vm: &VmMeta) {
    let ram = vm.regions.iter().flatten().map(|r| (r.pa, r.pages, "RAM"));
    let state = vm.cache.runs().map(|r| (r.pa, r.pages, "state"));
    let mut line = [(0, 0, ""); 4];
    let mut n = 0;
    /// One line's ranges: ` PA+SIZE (what)` each.
    struct Ranges<'a>(&'a [(u64, u64, &'a str)]);
    impl core::fmt::Display for Ranges<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            for (pa, pages, what) in self.0 {
                write!(f, " {pa:#x}+{:#x} ({what})", pages * PAGE_SIZE)?;
            }
            Ok(())
        }
    }
    let flush = |line: &[(u64, u64, &str)]| {
        log::info!(
            "VM {handle} (protected) is destroyed; it owned PA{}",
            Ranges(line)
        );
    };
    for r in ram.chain(state) {
        line[n] = r;
        n += 1;
        if n == line.len() {
            flush(&line);
            n = 0;
        }
    }
    if n > 0 {
        flush(&line[..n]);
    }
}

/// Calls about one VM, made with its lock held.
impl VmMeta {
    fn vcpu_init(&mut self, vcpu: u64, entry: u64, ctx: u64) -> HostResult<()> {
        let idx = self.check_init(vcpu, entry)?;
        self.vcpus[idx].power = Power::OnPending { entry, ctx };
        self.boot_entry_set |= idx == 0;
        Ok(())
    }

    /// VCPU_INIT's checks: the vCPU index it may start.
    fn check_init(&self, vcpu: u64, entry: u64) -> HostResult<usize> {
        let idx = vcpu_idx(self, vcpu)?;
        // The trust model's first rule (ARCHITECTURE.md): the host picks a
        // protected VM's boot entry once, for vCPU 0, before anything of it
        // ran; every other start is the guest's own CPU_ON. A host that
        // could start (or restart, after CPU_OFF) any vCPU at any entry
        // would run code of its choice inside the VM.
        if self.protected && (idx != 0 || self.boot_entry_set || self.has_run) {
            return Err(HostError::Denied);
        }
        if !entry.is_multiple_of(4) {
            return Err(HostError::Invalid);
        }
        if !self.is_ram(entry) {
            return Err(HostError::Range);
        }
        if self.status != VmStatus::Live || self.vcpus[idx].power != Power::Off {
            return Err(HostError::State);
        }
        Ok(idx)
    }

    fn vcpu_state(&self, vcpu: u64) -> HostResult<u64> {
        let idx = vcpu_idx(self, vcpu)?;
        Ok(match self.vcpus[idx].power {
            Power::On => 0,
            Power::Off => 1,
            Power::OnPending { .. } => 2,
        })
    }

    fn begin_run(&mut self, vcpu: u64, cpu: usize) -> HostResult<RunStart> {
        let idx = vcpu_idx(self, vcpu)?;
        let live = self.status == VmStatus::Live;
        let v = &mut self.vcpus[idx];
        if v.running_on.is_some() {
            return Err(HostError::Busy);
        }
        if !live || v.power == Power::Off || v.mmio == MmioWait::Awaiting {
            return Err(HostError::State);
        }
        let boot = match v.power {
            Power::OnPending { entry, ctx } => Some((entry, ctx, self.sve_vq)),
            _ => None,
        };
        let mmio_value = match v.mmio {
            MmioWait::Completed(val) if boot.is_none() => Some(val),
            _ => None,
        };
        v.mmio = MmioWait::None;
        v.power = Power::On;
        v.running_on = Some(cpu);
        self.has_run = true;
        Ok(RunStart {
            boot,
            mmio_value,
            vttbr: self.vttbr,
        })
    }

    fn end_run(&mut self, vcpu: u64, cpu: usize, end: RunEnd) {
        let v = &mut self.vcpus[vcpu as usize];
        assert_eq!(v.running_on, Some(cpu), "vCPU ran elsewhere");
        v.running_on = None;
        match end {
            RunEnd::Runnable => {}
            RunEnd::AwaitMmio => v.mmio = MmioWait::Awaiting,
            RunEnd::CpuOff => v.power = Power::Off,
            RunEnd::SystemOff => self.status = VmStatus::Off,
            RunEnd::SystemReset => self.status = VmStatus::Reset,
        }
    }

    fn mmio_complete(&mut self, vcpu: u64, value: u64) -> HostResult<()> {
        let idx = vcpu_idx(self, vcpu)?;
        let v = &mut self.vcpus[idx];
        if v.running_on.is_some() {
            return Err(HostError::Busy);
        }
        if v.mmio != MmioWait::Awaiting {
            return Err(HostError::State);
        }
        v.mmio = MmioWait::Completed(value);
        Ok(())
    }

    fn psci_cpu_on(&mut self, target: usize, entry: u64, ctx: u64) -> u64 {
        if target >= self.nr_vcpus {
            return psci(error::INVALID_PARAMETERS);
        }
        if !entry.is_multiple_of(4) || !self.is_ram(entry) {
            return PSCI_INVALID_ADDRESS;
        }
        match self.vcpus[target].power {
            Power::Off => {
                self.vcpus[target].power = Power::OnPending { entry, ctx };
                0
            }
            Power::On => psci(error::ALREADY_ON),
            Power::OnPending { .. } => psci(error::ON_PENDING),
        }
    }
}

fn vcpu_idx(vm: &VmMeta, vcpu: u64) -> HostResult<usize> {
    if vcpu >= vm.nr_vcpus as u64 {
        return Err(HostError::Invalid);
    }
    Ok(vcpu as usize)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::vm::memcache::host::TestAlloc;

    pub(crate) struct NoMem;
    impl PhysMem for NoMem {
        fn scrub(&mut self, _pa: u64, _len: u64) {}
        fn clean(&mut self, _pa: u64, _len: u64) {}
    }

    pub(crate) const RAM: MemRegion = MemRegion {
        base: 0x5000_0000,
        size: 0x100_0000,
    };

    pub(crate) fn ctl() -> Control<TestAlloc, NoMem> {
        Control::new(
            TestAlloc::new(),
            NoMem,
            &mut host_vttbr(),
            RAM,
            GUEST_IPA_BITS,
            2,
            false,
            true,
        )
        .expect("host s2")
    }

    /// Host RAM for VM state: the last `VM_CREATE_PAGES` pages per slot.
    pub(crate) fn state_pa(n: u64) -> u64 {
        RAM.end() - (n + 1) * VM_CREATE_PAGES * PAGE_SIZE
    }

    /// This test thread's VTTBR owner, with the host's VMID loaded.
    pub(crate) fn host_vttbr() -> Vttbr {
        // SAFETY: host test: the recording backend, one owner per test.
        unsafe { Vttbr::assume_loaded(0) }
    }

    #[test]
    fn lazy_region_maps_one_page_per_fault() {
        for (flags, kind, state) in [
            (FLAG_PROTECTED, RegionKind::Donated, PageState::Owned),
            (0, RegionKind::Lent, PageState::SharedBorrowed),
        ] {
            let c = ctl();
            let mut v = host_vttbr();
            let h = c
                .create(&mut v, 1, flags, state_pa(0), VM_CREATE_PAGES)
                .expect("create");
            let (pa, ipa) = (RAM.base + 0x20_0000, 0x4000_0000);
            c.give_with(&mut v, h, pa, ipa, 16, kind, true)
                .expect("give lazily");
            // Ownership changed at once; the guest sees nothing yet.
            let host = if kind == RegionKind::Donated {
                CompState::NoAccess
            } else {
                CompState::SharedOwned
            };
            assert_eq!(c.host_state(pa + 0x3000), host);
            assert!(c.vm(h).expect("vm").is_ram(ipa + 0x3000));
            assert_eq!(c.guest_state(h, ipa + 0x3000), None);
            // A fault maps exactly its page.
            assert_eq!(c.map_on_demand(&mut v, h, ipa + 0x3008), Ok(Fault::Mapped));
            assert_eq!(
                c.guest_state(h, ipa + 0x3000),
                Some((pa + 0x3000, CompState::from_mapping(Some(state))))
            );
            assert_eq!(c.guest_state(h, ipa + 0x2000), None);
            assert_eq!(c.guest_state(h, ipa + 0x4000), None);
            // A second fault there (another vCPU's on the same page) is
            // retried; outside the region it is a real fault.
            assert_eq!(c.map_on_demand(&mut v, h, ipa + 0x3000), Ok(Fault::Retry));
            assert_eq!(
                c.map_on_demand(&mut v, h, ipa + 0x10000),
                Err(HostError::Range)
            );
            assert_eq!(
                c.map_on_demand(&mut v, h, 0x0a00_0000),
                Err(HostError::Range)
            );
            // An eagerly given region is mapped: a translation fault there
            // can only be one taken in a break-before-make window (item 7,
            // `bbm`), retried.
            c.give(&mut v, h, pa + 0x10_0000, 0x4100_0000, 1, kind)
                .expect("give");
            assert_eq!(c.map_on_demand(&mut v, h, 0x4100_0000), Ok(Fault::Retry));
            // Destroying gives every page back, mapped or not.
            while c.destroy(&mut v, h).expect("destroy").more {}
            assert_eq!(c.host_state(pa), CompState::Owned);
            assert_eq!(c.host_state(pa + 0x3000), CompState::Owned);
        }
    }

    /// MMIO guard state: empty at VM_CREATE, one bit per guarded page of
    /// the host's window, RAM and addresses outside the window refused,
    /// normal VMs refused, and a VM created again in the slot starts empty.
    #[test]
    fn mmio_guard_set_per_vm() {
        use hyp_abi::layout::{HOST_MMIO_IPA, HOST_MMIO_SIZE};
        let c = ctl();
        let mut v = host_vttbr();
        let p = c
            .create(&mut v, 1, FLAG_PROTECTED, state_pa(0), VM_CREATE_PAGES)
            .expect("create protected");
        let n = c
            .create(&mut v, 1, 0, state_pa(1), VM_CREATE_PAGES)
            .expect("create normal");
        c.give(
            &mut v,
            p,
            RAM.base + 0x20_0000,
            0x4000_0000,
            4,
            RegionKind::Donated,
        )
        .expect("give");
        let last = HOST_MMIO_IPA + HOST_MMIO_SIZE - PAGE_SIZE;
        let guarded = |h, ipa| c.vm(h).expect("vm").mmio_guarded(ipa);
        for ipa in (HOST_MMIO_IPA..HOST_MMIO_IPA + HOST_MMIO_SIZE).step_by(0x800) {
            assert!(!guarded(p, ipa), "{ipa:#x} guarded at creation");
        }
        assert_eq!(c.mmio_guard(p, last), Ok(()));
        assert!(guarded(p, last) && guarded(p, last + 0xfff));
        assert!(!guarded(p, last - 1) && !guarded(p, HOST_MMIO_IPA));
        assert!(!guarded(p, last + PAGE_SIZE), "past the window");
        assert_eq!(c.mmio_guard(p, HOST_MMIO_IPA), Ok(()));
        assert_eq!(
            c.vm(p).expect("vm").mmio_guard,
            1 | 1 << (MMIO_GUARD_PAGES - 1)
        );
        // Guest RAM, outside the window, a normal VM, no VM.
        assert_eq!(c.mmio_guard(p, 0x4000_1000), Err(HostError::Range));
        assert_eq!(c.mmio_guard(p, last + PAGE_SIZE), Err(HostError::Range));
        assert_eq!(c.mmio_guard(n, HOST_MMIO_IPA), Err(HostError::Denied));
        assert!(!guarded(n, HOST_MMIO_IPA));
        assert_eq!(c.mmio_guard(3, HOST_MMIO_IPA), Err(HostError::NoVm));
        // A VM created again in the slot guards nothing.
        while c.destroy(&mut v, p).expect("destroy").more {}
        let p2 = c
            .create(&mut v, 1, FLAG_PROTECTED, state_pa(0), VM_CREATE_PAGES)
            .expect("create again");
        assert_eq!(p2, p);
        assert_eq!(c.vm(p2).expect("vm").mmio_guard, 0);
    }
}
