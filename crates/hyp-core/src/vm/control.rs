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
use s2mm::ownership::{self, CompState, PageOwnership, Requester, Transition};
use s2mm::{Attrs, Ipa, OwnerId, Pa, PageState, Stage2, TableAlloc, Vttbr, PAGE_SIZE};
use smccc::psci::error;
use spin::{Mutex, MutexGuard};

/// Guest VM slots (handles 1..=MAX_VMS).
pub const MAX_VMS: usize = 8;
/// Most vCPUs per VM.
pub const MAX_VCPUS: usize = 8;
/// Memory regions (donations or loans) per VM.
pub const MAX_REGIONS: usize = 32;
/// IPA size of every guest's stage 2.
pub const GUEST_IPA_BITS: u32 = 40;
/// Guest memory lies at or above this IPA; below it is device space
/// (the emulated UART, the GIC, virtio-mmio), as on QEMU virt.
pub use hyp_abi::layout::RAM_IPA as GUEST_RAM_IPA_MIN;
/// Largest single donation or loan (1 GiB).
pub const MAX_PAGES_PER_CALL: u64 = 1 << 18;

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
    /// Pages the guest currently shares with the host.
    pub shared: u64,
    /// VTTBR_EL2 value.
    pub vttbr: u64,
    /// Regions mapped at stage 2 on first touch (bit *i*: `regions[i]`).
    pub lazy: u32,
    /// While dying: pages of its first remaining region scrubbed (or, lent,
    /// cleaned) so far.
    pub scrubbed: u64,
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
    pub boot: Option<(u64, u64)>,
    /// A completed MMIO read: write the value to the access's register.
    pub mmio_value: Option<u64>,
    /// The VM's VTTBR_EL2.
    pub vttbr: u64,
}

/// The owner annotation a host entry carries while guest `slot` owns it.
#[must_use]
pub const fn owner_of_slot(slot: usize) -> OwnerId {
    OwnerId(2 + slot as u8)
}

/// The host's side of the control state, behind the host lock: its stage 2
/// and the scrubber of memory it gets back.
struct HostSide<M> {
    s2: Stage2,
    mem: M,
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
pub struct Control<A: TableAlloc + Clone, M: PhysMem> {
    alloc: A,
    host: Mutex<HostSide<M>>,
    vms: [Mutex<Option<VmMeta>>; MAX_VMS],
    host_ram: MemRegion,
    fwb: bool,
    parange: u64,
}

impl<A: TableAlloc + Clone, M: PhysMem> core::fmt::Debug for Control<A, M> {
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
pub struct VmRef<'a>(MutexGuard<'a, Option<VmMeta>>);

impl core::ops::Deref for VmRef<'_> {
    type Target = VmMeta;
    fn deref(&self) -> &VmMeta {
        // Built only over a slot holding a VM (`Control::lock_vm`), which
        // nothing can empty while the guard is held.
        self.0.as_ref().expect("a VmRef holds a VM")
    }
}

impl core::ops::DerefMut for VmRef<'_> {
    fn deref_mut(&mut self) -> &mut VmMeta {
        self.0.as_mut().expect("a VmRef holds a VM")
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

impl<A: TableAlloc + Clone, M: PhysMem> Control<A, M> {
    /// The host's stage 2: `host_ram` mapped by identity, owned by the host.
    /// `ipa_bits` is the host's IPA size; `parange` is ID_AA64MMFR0_EL1.PARange.
    ///
    /// # Errors
    ///
    /// No table memory, or a RAM range the IPA size cannot hold.
    pub fn new(
        mut alloc: A,
        mem: M,
        v: &mut Vttbr,
        host_ram: MemRegion,
        ipa_bits: u32,
        parange: u64,
        fwb: bool,
    ) -> Result<Self, s2mm::Error> {
        let mut s2 = Stage2::new(&mut alloc, 0, ipa_bits, fwb)?;
        s2.map(
            &mut alloc,
            v,
            Ipa(host_ram.base),
            Pa(host_ram.base),
            host_ram.size,
            Attrs::RAM_RWX,
            PageState::Owned,
        )?;
        Ok(Self {
            alloc,
            host: Mutex::new(HostSide { s2, mem }),
            vms: [const { Mutex::new(None) }; MAX_VMS],
            host_ram,
            fwb,
            parange,
        })
    }

    /// The table allocator.
    pub fn alloc(&self) -> &A {
        &self.alloc
    }

    /// `f` of the host's stage 2 (under the host lock).
    pub fn with_host_s2<T>(&self, f: impl FnOnce(&Stage2, &A) -> T) -> T {
        f(&self.host.lock().s2, &self.alloc)
    }

    /// `f` of the memory scrubber (under the host lock).
    pub fn with_mem<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
        f(&mut self.host.lock().mem)
    }

    /// Locks VM slot `slot` if it holds a VM.
    fn lock_vm(&self, slot: usize) -> HostResult<VmRef<'_>> {
        let g = self.vms[slot].lock();
        if g.is_none() {
            return Err(HostError::NoVm);
        }
        Ok(VmRef(g))
    }

    /// VM by handle (1..=MAX_VMS), locked while the result lives.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`].
    pub fn vm(&self, handle: u64) -> HostResult<VmRef<'_>> {
        self.lock_vm(slot_of(handle)?)
    }

    /// The host and VM `handle`, locked in the one order.
    fn both(&self, handle: u64) -> HostResult<Both<'_, A, M>> {
        let slot = slot_of(handle)?;
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
        let m = vm.s2.query(&self.alloc, Ipa(ipa))?;
        Some((m.pa.0, CompState::from_mapping(Some(m.state))))
    }

    /// VM_CREATE.
    ///
    /// # Errors
    ///
    /// [`HostError::Invalid`] for 0 or more than [`MAX_VCPUS`] vCPUs or an
    /// unknown flag; [`HostError::NoMemory`] when no slot or table is free.
    pub fn create(&self, v: &mut Vttbr, nr_vcpus: u64, flags: u64) -> HostResult<u64> {
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS as u64 || flags & !FLAG_PROTECTED != 0 {
            return Err(HostError::Invalid);
        }
        let (slot, mut free) = self
            .vms
            .iter()
            .enumerate()
            .find_map(|(i, m)| m.try_lock().filter(|g| g.is_none()).map(|g| (i, g)))
            .ok_or(HostError::NoMemory)?;
        let vmid = slot as u16 + 1;
        let mut alloc = self.alloc.clone();
        let s2 = Stage2::new(&mut alloc, vmid, GUEST_IPA_BITS, self.fwb).map_err(s2err)?;
        let vttbr = s2.root().0 | (u64::from(vmid) << 48);
        // The VTCR must be computable on this CPU; checked once here.
        if s2.vtcr(self.parange).is_err() {
            s2.destroy(&mut alloc, v);
            return Err(HostError::Range);
        }
        *free = Some(VmMeta {
            vmid,
            protected: flags & FLAG_PROTECTED != 0,
            nr_vcpus: nr_vcpus as usize,
            s2,
            regions: [None; MAX_REGIONS],
            vcpus: [VCPU_RESET; MAX_VCPUS],
            status: VmStatus::Live,
            shared: 0,
            vttbr,
            lazy: 0,
            scrubbed: 0,
        });
        Ok(slot as u64 + 1)
    }

    /// VTCR_EL2 for guests (the same for all of them).
    #[must_use]
    pub fn guest_vtcr(&self) -> Option<u64> {
        (0..MAX_VMS).find_map(|s| {
            self.lock_vm(s)
                .ok()
                .and_then(|vm| vm.s2.vtcr(self.parange).ok())
        })
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
        match ipa.checked_add(size) {
            Some(end) if end <= GUEST_RAM_IPA_MIN => {}
            _ => return Err(HostError::Range),
        }
        let mut vm = self.vm(handle)?;
        vm.s2
            .map(
                &mut self.alloc.clone(),
                v,
                Ipa(ipa),
                Pa(pa),
                size,
                Attrs::DEVICE_RW,
                PageState::Owned,
            )
            .map_err(s2err)?;
        Ok(())
    }

    /// A stage-2 fault of VM `handle` at `ipa`: when `ipa` lies in a lazy
    /// region (see [`Control::give_with`]) and is not mapped yet, maps its
    /// page in the state the give left it (owned when donated, borrowed
    /// when lent) so the access can be retried. Takes only the VM's lock.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Range`] (not in a lazy region),
    /// [`HostError::State`] (already mapped: the fault was something else),
    /// [`HostError::NoMemory`] (no table page).
    pub fn map_on_demand(&self, v: &mut Vttbr, handle: u64, ipa: u64) -> HostResult<()> {
        let mut vm = self.vm(handle)?;
        let ipa = ipa & !(PAGE_SIZE - 1);
        let (i, r) = vm
            .regions
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.filter(|r| r.pa_of(ipa).is_some()).map(|r| (i, r)))
            .ok_or(HostError::Range)?;
        if vm.lazy & (1 << i) == 0 {
            return Err(HostError::Range);
        }
        if vm.s2.query(&self.alloc, Ipa(ipa)).is_some() {
            return Err(HostError::State);
        }
        let state = match r.kind {
            RegionKind::Donated => PageState::Owned,
            RegionKind::Lent => PageState::SharedBorrowed,
        };
        let pa = r.pa_of(ipa).ok_or(HostError::Range)?;
        vm.s2
            .map(
                &mut self.alloc.clone(),
                v,
                Ipa(ipa),
                Pa(pa),
                PAGE_SIZE,
                Attrs::RAM_RWX,
                state,
            )
            .map(|_| ())
            .map_err(s2err)
    }

    /// VCPU_INIT: sets where a powered-off vCPU starts.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`] (vCPU index, unaligned
    /// entry), [`HostError::Range`] (entry not in guest memory),
    /// [`HostError::State`] (vCPU not off, VM stopped).
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
    pub fn begin_run(&self, handle: u64, vcpu: u64, cpu: usize) -> HostResult<RunStart> {
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
    ) -> HostResult<RunStart> {
        let mut vm = self.vm(handle)?;
        if let Some(value) = value {
            vm.mmio_complete(vcpu, value)?;
        }
        vm.begin_run(vcpu, cpu)
    }

    /// VCPU_RUN, second half: the vCPU left physical CPU `cpu`.
    ///
    /// # Panics
    ///
    /// If the vCPU was not claimed by `begin_run` on `cpu` (a hypervisor bug).
    pub fn end_run(&self, handle: u64, vcpu: u64, cpu: usize, end: RunEnd) {
        self.vm(handle)
            .expect("VM destroyed while running")
            .end_run(vcpu, cpu, end);
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
    /// call then scrubs up to [`DESTROY_CHUNK`] pages the host could not
    /// read, giving each region back once it is all scrubbed, and the last
    /// frees the VM's tables and slot. Between calls no lock is held, so other VMs' exits and the
    /// host's other calls go on.
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
            // Unmap the guest first so it can never see a scrubbed-then-reused
            // page. The whole IPA space: no block straddles its ends, so this
            // needs no table.
            let Both { alloc, vm, .. } = &mut b;
            let r = vm.s2.unmap(alloc, v, Ipa(0), 1 << GUEST_IPA_BITS);
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
        let more = b.vm.regions.iter().any(Option::is_some);
        if !more {
            let Both { mut alloc, vm, .. } = b;
            let mut slot = vm.0;
            if let Some(vm) = slot.take() {
                vm.s2.destroy(&mut alloc, v);
            }
        }
        Ok(Destroyed { scrubbed, more })
    }

    /// Handles (and VMIDs) of live VM slots.
    pub fn handles(&self) -> impl Iterator<Item = u64> + '_ {
        (0..MAX_VMS)
            .filter(|&s| self.vms[s].lock().is_some())
            .map(|s| s as u64 + 1)
    }
}

/// The host's view of page `pa` in its stage 2 `s2`.
fn host_state(s2: &Stage2, alloc: &impl TableAlloc, pa: u64) -> CompState {
    CompState::from_mapping(s2.query(alloc, Ipa(pa)).map(|m| m.state))
}

/// The host and one VM, locked in the one order, for an ownership
/// transition between them.
struct Both<'a, A: TableAlloc, M> {
    alloc: A,
    host: MutexGuard<'a, HostSide<M>>,
    vm: VmRef<'a>,
    slot: usize,
}

impl<A: TableAlloc, M: PhysMem> Both<'_, A, M> {
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
        let free = self
            .vm
            .regions
            .iter()
            .position(Option::is_none)
            .ok_or(HostError::NoMemory)?;
        let t = match kind {
            RegionKind::Donated => Transition::HostDonate,
            RegionKind::Lent => Transition::HostLend,
        };
        // Check every page before changing any.
        let mut after = None;
        for i in 0..pages {
            let cur = PageOwnership {
                host: self.host_state(pa + i * PAGE_SIZE),
                guest: CompState::NoAccess,
                hyp: CompState::NoAccess,
            };
            match ownership::transition(cur, t, Requester::Host) {
                Ok(next) => after = Some(next),
                Err(_) => return Err(HostError::Denied),
            }
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
            self.vm.regions[free] = Some(new);
            self.vm.lazy |= 1 << free;
            self.release_tables(reserve);
            return Ok(());
        }
        if let Err(e) = self.vm.s2.map(
            &mut self.alloc,
            v,
            Ipa(ipa),
            Pa(pa),
            size,
            Attrs::RAM_RWX,
            guest_state,
        ) {
            // The range was unmapped before (no overlap), so unmapping it
            // again frees what the partial map allocated.
            let _ = self.vm.s2.unmap(&mut self.alloc, v, Ipa(ipa), size);
            self.release_tables(reserve);
            self.restore_host(v, pa, size);
            return Err(s2err(e));
        }
        self.vm.regions[free] = Some(new);
        self.release_tables(reserve);
        #[cfg(feature = "test-leak-one-page")]
        if kind == RegionKind::Donated {
            // Deliberately broken isolation, for the demo's negative test
            // only: the first donated page stays mapped in the host.
            self.restore_host(v, pa, PAGE_SIZE);
        }
        Ok(())
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

    /// After a failed host change over `[pa, pa + size)` (pages that were all
    /// the host's): gives back every run of pages that is no longer owned.
    fn restore_changed(&mut self, v: &mut Vttbr, pa: u64, size: u64) {
        let end = pa + size;
        let mut p = pa;
        while p < end {
            if self.host_state(p) == CompState::Owned {
                p += PAGE_SIZE;
                continue;
            }
            let start = p;
            while p < end && self.host_state(p) != CompState::Owned {
                p += PAGE_SIZE;
            }
            self.restore_host(v, start, p - start);
        }
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
        let map = if cleaned {
            Stage2::map_cleaned::<A>
        } else {
            Stage2::map::<A>
        };
        let r = map(
            &mut self.host.s2,
            &mut self.alloc,
            v,
            Ipa(pa),
            Pa(pa),
            size,
            Attrs::RAM_RWX,
            PageState::Owned,
        );
        // Cannot fail: the pages were the host's before the change, so their
        // tables (split on the way) are still there; the model test's
        // table-exhaustion runs go through here. Checked in release builds:
        // a failure would leave host pages owned by nobody.
        assert!(r.is_ok(), "restoring host pages needs no tables");
    }

    /// [`Control::guest_share`] with both locks held.
    fn guest_share(&mut self, v: &mut Vttbr, ipa: u64, share: bool) -> HostResult<()> {
        let ipa = ipa & !(PAGE_SIZE - 1);
        let pa = self
            .vm
            .region_of(ipa)
            .and_then(|r| r.pa_of(ipa))
            .ok_or(HostError::Range)?;
        let guest =
            CompState::from_mapping(self.vm.s2.query(&self.alloc, Ipa(ipa)).map(|m| m.state));
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
        self.vm
            .s2
            .set_state(&mut self.alloc, v, Ipa(ipa), PAGE_SIZE, state)
            .map(|_| ())
            .map_err(s2err)
    }
}

/// Calls about one VM, made with its lock held.
impl VmMeta {
    fn vcpu_init(&mut self, vcpu: u64, entry: u64, ctx: u64) -> HostResult<()> {
        let idx = vcpu_idx(self, vcpu)?;
        if !entry.is_multiple_of(4) {
            return Err(HostError::Invalid);
        }
        if !self.is_ram(entry) {
            return Err(HostError::Range);
        }
        if self.status != VmStatus::Live || self.vcpus[idx].power != Power::Off {
            return Err(HostError::State);
        }
        self.vcpus[idx].power = Power::OnPending { entry, ctx };
        Ok(())
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
            Power::OnPending { entry, ctx } => Some((entry, ctx)),
            _ => None,
        };
        let mmio_value = match v.mmio {
            MmioWait::Completed(val) if boot.is_none() => Some(val),
            _ => None,
        };
        v.mmio = MmioWait::None;
        v.power = Power::On;
        v.running_on = Some(cpu);
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

fn slot_of(handle: u64) -> HostResult<usize> {
    if handle == 0 || handle > MAX_VMS as u64 {
        return Err(HostError::NoVm);
    }
    Ok(handle as usize - 1)
}

fn vcpu_idx(vm: &VmMeta, vcpu: u64) -> HostResult<usize> {
    if vcpu >= vm.nr_vcpus as u64 {
        return Err(HostError::Invalid);
    }
    Ok(vcpu as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2mm::host::SharedAlloc as HostAlloc;

    struct NoMem;
    impl PhysMem for NoMem {
        fn scrub(&mut self, _pa: u64, _len: u64) {}
        fn clean(&mut self, _pa: u64, _len: u64) {}
    }

    const RAM: MemRegion = MemRegion {
        base: 0x5000_0000,
        size: 0x100_0000,
    };

    fn ctl() -> Control<HostAlloc, NoMem> {
        Control::new(
            HostAlloc::new(),
            NoMem,
            &mut host_vttbr(),
            RAM,
            GUEST_IPA_BITS,
            2,
            false,
        )
        .expect("host s2")
    }

    /// This test thread's VTTBR owner, with the host's VMID loaded.
    fn host_vttbr() -> Vttbr {
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
            let h = c.create(&mut v, 1, flags).expect("create");
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
            c.map_on_demand(&mut v, h, ipa + 0x3008)
                .expect("first touch");
            assert_eq!(
                c.guest_state(h, ipa + 0x3000),
                Some((pa + 0x3000, CompState::from_mapping(Some(state))))
            );
            assert_eq!(c.guest_state(h, ipa + 0x2000), None);
            assert_eq!(c.guest_state(h, ipa + 0x4000), None);
            // A second fault there is not a lazy fault; outside the region neither.
            assert_eq!(
                c.map_on_demand(&mut v, h, ipa + 0x3000),
                Err(HostError::State)
            );
            assert_eq!(
                c.map_on_demand(&mut v, h, ipa + 0x10000),
                Err(HostError::Range)
            );
            assert_eq!(
                c.map_on_demand(&mut v, h, 0x0a00_0000),
                Err(HostError::Range)
            );
            // An eagerly given region never faults in.
            c.give(&mut v, h, pa + 0x10_0000, 0x4100_0000, 1, kind)
                .expect("give");
            assert_eq!(
                c.map_on_demand(&mut v, h, 0x4100_0000),
                Err(HostError::Range)
            );
            // Destroying gives every page back, mapped or not.
            while c.destroy(&mut v, h).expect("destroy").more {}
            assert_eq!(c.host_state(pa), CompState::Owned);
            assert_eq!(c.host_state(pa + 0x3000), CompState::Owned);
        }
    }
}
