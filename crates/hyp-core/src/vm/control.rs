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
//! `vm.rs` and asks this module for permission through [`Control::begin_run`]
//! and [`Control::end_run`].
//!
//! The host calls and their numbers are listed in `hyp-abi` (crate docs).

use crate::platform::MemRegion;
use s2mm::ownership::{self, CompState, PageOwnership, Requester, Transition};
use s2mm::{Attrs, Ipa, OwnerId, Pa, PageState, Stage2, TableAlloc, Vttbr, PAGE_SIZE};
use smccc::psci::error;

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
const fn psci(e: i32) -> u64 {
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

/// The hypervisor's VM table, the host's stage 2, and the allocators behind
/// them. Callers serialise access (one lock on the target).
pub struct Control<A: TableAlloc, M: PhysMem> {
    /// Table memory.
    pub alloc: A,
    /// Memory scrubbing.
    pub mem: M,
    host_ram: MemRegion,
    host_s2: Stage2,
    vms: [Option<VmMeta>; MAX_VMS],
    fwb: bool,
    parange: u64,
}

impl<A: TableAlloc, M: PhysMem> core::fmt::Debug for Control<A, M> {
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

impl<A: TableAlloc, M: PhysMem> Control<A, M> {
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
        let mut host_s2 = Stage2::new(&mut alloc, 0, ipa_bits, fwb)?;
        host_s2.map(
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
            mem,
            host_ram,
            host_s2,
            vms: [const { None }; MAX_VMS],
            fwb,
            parange,
        })
    }

    /// The host's stage 2.
    #[must_use]
    pub fn host_s2(&self) -> &Stage2 {
        &self.host_s2
    }

    /// VM by handle (1..=MAX_VMS).
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`].
    pub fn vm(&self, handle: u64) -> HostResult<&VmMeta> {
        let slot = slot_of(handle)?;
        self.vms[slot].as_ref().ok_or(HostError::NoVm)
    }

    fn vm_mut(&mut self, handle: u64) -> HostResult<&mut VmMeta> {
        let slot = slot_of(handle)?;
        self.vms[slot].as_mut().ok_or(HostError::NoVm)
    }

    /// The host's view of one of its RAM pages.
    #[must_use]
    pub fn host_state(&self, pa: u64) -> CompState {
        CompState::from_mapping(self.host_s2.query(&self.alloc, Ipa(pa)).map(|m| m.state))
    }

    /// The owner annotation of an unmapped host page.
    #[must_use]
    pub fn host_annotation(&self, pa: u64) -> Option<OwnerId> {
        self.host_s2.annotation(&self.alloc, Ipa(pa))
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
    pub fn create(&mut self, v: &mut Vttbr, nr_vcpus: u64, flags: u64) -> HostResult<u64> {
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS as u64 || flags & !FLAG_PROTECTED != 0 {
            return Err(HostError::Invalid);
        }
        let slot = self
            .vms
            .iter()
            .position(Option::is_none)
            .ok_or(HostError::NoMemory)?;
        let vmid = slot as u16 + 1;
        let s2 = Stage2::new(&mut self.alloc, vmid, GUEST_IPA_BITS, self.fwb).map_err(s2err)?;
        let vttbr = s2.root().0 | (u64::from(vmid) << 48);
        // The VTCR must be computable on this CPU; checked once here.
        if s2.vtcr(self.parange).is_err() {
            s2.destroy(&mut self.alloc, v);
            return Err(HostError::Range);
        }
        self.vms[slot] = Some(VmMeta {
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
        });
        Ok(slot as u64 + 1)
    }

    /// VTCR_EL2 for guests (the same for all of them).
    #[must_use]
    pub fn guest_vtcr(&self) -> Option<u64> {
        self.vms
            .iter()
            .flatten()
            .next()
            .and_then(|vm| vm.s2.vtcr(self.parange).ok())
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
        &mut self,
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
        &mut self,
        v: &mut Vttbr,
        handle: u64,
        pa: u64,
        ipa: u64,
        pages: u64,
        kind: RegionKind,
        lazy: bool,
    ) -> HostResult<()> {
        let slot = slot_of(handle)?;
        let vm = self.vms[slot].as_ref().ok_or(HostError::NoVm)?;
        if vm.protected != (kind == RegionKind::Donated) {
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
        if pa < self.host_ram.base || pa.checked_add(size).is_none_or(|e| e > self.host_ram.end()) {
            return Err(HostError::Range);
        }
        if ipa < GUEST_RAM_IPA_MIN
            || ipa
                .checked_add(size)
                .is_none_or(|e| e > 1 << GUEST_IPA_BITS)
        {
            return Err(HostError::Range);
        }
        if vm.status != VmStatus::Live {
            return Err(HostError::State);
        }
        let new = Region {
            ipa,
            pa,
            pages,
            kind,
        };
        if vm
            .regions
            .iter()
            .flatten()
            .any(|r| r.ipa < new.ipa_end() && new.ipa < r.ipa_end())
        {
            return Err(HostError::Denied);
        }
        let free = vm
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
            None => {
                self.host_s2
                    .set_annotation(&mut self.alloc, v, Ipa(pa), size, owner_of_slot(slot))
            }
            Some(state) => self
                .host_s2
                .set_state(&mut self.alloc, v, Ipa(pa), size, state),
        };
        if let Err(e) = host_change {
            // Out of tables part-way: only the pages changed so far go back.
            // Remapping the whole range would split the untouched block the
            // failed split left behind, which needs the very table that was
            // missing (it panicked in the debug assertion below, and left
            // pages unowned in release builds).
            self.release_tables(reserve);
            self.restore_changed(v, pa, size);
            return Err(s2err(e));
        }
        let guest_state = after.guest.page_state().unwrap_or(PageState::Owned);
        let vm = self.vms[slot].as_mut().ok_or(HostError::NoVm)?;
        if lazy {
            vm.regions[free] = Some(new);
            vm.lazy |= 1 << free;
            self.release_tables(reserve);
            return Ok(());
        }
        if let Err(e) = vm.s2.map(
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
            let _ = vm.s2.unmap(&mut self.alloc, v, Ipa(ipa), size);
            self.release_tables(reserve);
            self.restore_host(v, pa, size);
            return Err(s2err(e));
        }
        vm.regions[free] = Some(new);
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
        let r = self.host_s2.map(
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

    /// Maps a device frame the hypervisor hands the VM directly (the
    /// GICv2 virtual CPU interface) at `ipa`, below guest RAM. Not host
    /// memory, so no ownership changes.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Range`] (not below guest RAM),
    /// [`HostError::NoMemory`].
    pub fn map_device(
        &mut self,
        v: &mut Vttbr,
        handle: u64,
        ipa: u64,
        pa: u64,
        size: u64,
    ) -> HostResult<()> {
        let slot = slot_of(handle)?;
        match ipa.checked_add(size) {
            Some(end) if end <= GUEST_RAM_IPA_MIN => {}
            _ => return Err(HostError::Range),
        }
        let vm = self.vms[slot].as_mut().ok_or(HostError::NoVm)?;
        vm.s2
            .map(
                &mut self.alloc,
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
    /// when lent) so the access can be retried.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Range`] (not in a lazy region),
    /// [`HostError::State`] (already mapped: the fault was something else),
    /// [`HostError::NoMemory`] (no table page).
    pub fn map_on_demand(&mut self, v: &mut Vttbr, handle: u64, ipa: u64) -> HostResult<()> {
        let slot = slot_of(handle)?;
        let vm = self.vms[slot].as_mut().ok_or(HostError::NoVm)?;
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
                &mut self.alloc,
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
    pub fn vcpu_init(&mut self, handle: u64, vcpu: u64, entry: u64, ctx: u64) -> HostResult<()> {
        let vm = self.vm_mut(handle)?;
        let idx = vcpu_idx(vm, vcpu)?;
        if !entry.is_multiple_of(4) {
            return Err(HostError::Invalid);
        }
        if !vm.is_ram(entry) {
            return Err(HostError::Range);
        }
        if vm.status != VmStatus::Live || vm.vcpus[idx].power != Power::Off {
            return Err(HostError::State);
        }
        vm.vcpus[idx].power = Power::OnPending { entry, ctx };
        Ok(())
    }

    /// VCPU_STATE: 0 on, 1 off, 2 on pending (AFFINITY_INFO's encoding).
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`].
    pub fn vcpu_state(&self, handle: u64, vcpu: u64) -> HostResult<u64> {
        let vm = self.vm(handle)?;
        let idx = vcpu_idx(vm, vcpu)?;
        Ok(match vm.vcpus[idx].power {
            Power::On => 0,
            Power::Off => 1,
            Power::OnPending { .. } => 2,
        })
    }

    /// VCPU_RUN, first half: claims the vCPU for physical CPU `cpu`.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`], [`HostError::Busy`]
    /// (running elsewhere), [`HostError::State`] (VM stopped, vCPU off, or an
    /// MMIO read not yet completed).
    pub fn begin_run(&mut self, handle: u64, vcpu: u64, cpu: usize) -> HostResult<RunStart> {
        let vm = self.vm_mut(handle)?;
        let idx = vcpu_idx(vm, vcpu)?;
        let v = &mut vm.vcpus[idx];
        if v.running_on.is_some() {
            return Err(HostError::Busy);
        }
        if vm.status != VmStatus::Live || v.power == Power::Off || v.mmio == MmioWait::Awaiting {
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
            vttbr: vm.vttbr,
        })
    }

    /// VCPU_RUN, second half: the vCPU left physical CPU `cpu`.
    ///
    /// # Panics
    ///
    /// If the vCPU was not claimed by `begin_run` on `cpu` (a hypervisor bug).
    pub fn end_run(&mut self, handle: u64, vcpu: u64, cpu: usize, end: RunEnd) {
        let slot = slot_of(handle).expect("end_run of a VM never run");
        let vm = self.vms[slot].as_mut().expect("VM destroyed while running");
        let v = &mut vm.vcpus[vcpu as usize];
        assert_eq!(v.running_on, Some(cpu), "vCPU ran elsewhere");
        v.running_on = None;
        match end {
            RunEnd::Runnable => {}
            RunEnd::AwaitMmio => v.mmio = MmioWait::Awaiting,
            RunEnd::CpuOff => v.power = Power::Off,
            RunEnd::SystemOff => vm.status = VmStatus::Off,
            RunEnd::SystemReset => vm.status = VmStatus::Reset,
        }
    }

    /// MMIO_COMPLETE: the host's answer to the vCPU's outstanding read.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Invalid`], [`HostError::Busy`],
    /// [`HostError::State`] (no read outstanding).
    pub fn mmio_complete(&mut self, handle: u64, vcpu: u64, value: u64) -> HostResult<()> {
        let vm = self.vm_mut(handle)?;
        let idx = vcpu_idx(vm, vcpu)?;
        let v = &mut vm.vcpus[idx];
        if v.running_on.is_some() {
            return Err(HostError::Busy);
        }
        if v.mmio != MmioWait::Awaiting {
            return Err(HostError::State);
        }
        v.mmio = MmioWait::Completed(value);
        Ok(())
    }

    /// PSCI CPU_ON from a running vCPU of VM `handle`: returns the PSCI code.
    pub fn psci_cpu_on(&mut self, handle: u64, target: usize, entry: u64, ctx: u64) -> u64 {
        let Ok(vm) = self.vm_mut(handle) else {
            return psci(error::INVALID_PARAMETERS);
        };
        if target >= vm.nr_vcpus {
            return psci(error::INVALID_PARAMETERS);
        }
        if !entry.is_multiple_of(4) || !vm.is_ram(entry) {
            return PSCI_INVALID_ADDRESS;
        }
        match vm.vcpus[target].power {
            Power::Off => {
                vm.vcpus[target].power = Power::OnPending { entry, ctx };
                0
            }
            Power::On => psci(error::ALREADY_ON),
            Power::OnPending { .. } => psci(error::ON_PENDING),
        }
    }

    /// PSCI AFFINITY_INFO (level 0) for VM `handle`.
    pub fn psci_affinity_info(&self, handle: u64, target: usize) -> u64 {
        match self.vm(handle) {
            Ok(vm) if target < vm.nr_vcpus => self.vcpu_state(handle, target as u64).unwrap_or(1),
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
    pub fn guest_share(
        &mut self,
        v: &mut Vttbr,
        handle: u64,
        ipa: u64,
        share: bool,
    ) -> HostResult<()> {
        let slot = slot_of(handle)?;
        let ipa = ipa & !(PAGE_SIZE - 1);
        let vm = self.vms[slot].as_ref().ok_or(HostError::NoVm)?;
        let pa = vm
            .region_of(ipa)
            .and_then(|r| r.pa_of(ipa))
            .ok_or(HostError::Range)?;
        let guest = CompState::from_mapping(vm.s2.query(&self.alloc, Ipa(ipa)).map(|m| m.state));
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
        // the guest still holds private. (Before, the host was changed first
        // in both directions: a failed guest change after a share left the
        // host mapping a guest-private page.)
        let gstate = next.guest.page_state().unwrap_or(PageState::Owned);
        let gold = cur.guest.page_state().unwrap_or(PageState::Owned);
        if share {
            self.guest_set_state(v, slot, ipa, gstate)?;
            if let Err(e) = self.host_set(v, pa, next.host, slot) {
                let undo = self.guest_set_state(v, slot, ipa, gold);
                // Cannot fail: undoing re-merges what the change split (no
                // table needed). Checked in release builds: a failure would
                // leave the page's two views disagreeing.
                assert!(undo.is_ok(), "undoing a guest state change needs no tables");
                return Err(e);
            }
        } else {
            self.host_set(v, pa, next.host, slot)?;
            if let Err(e) = self.guest_set_state(v, slot, ipa, gstate) {
                let undo = self.host_set(v, pa, cur.host, slot);
                // Cannot fail, as above; checked in release builds.
                assert!(undo.is_ok(), "undoing a host state change needs no tables");
                return Err(e);
            }
        }
        let vm = self.vms[slot].as_mut().ok_or(HostError::NoVm)?;
        if share {
            vm.shared += 1;
        } else {
            vm.shared -= 1;
        }
        Ok(())
    }

    /// Sets the host's state of page `pa`: mapped (identity) in `state`, or
    /// unmapped with guest `slot`'s owner annotation.
    fn host_set(
        &mut self,
        v: &mut Vttbr,
        pa: u64,
        state: CompState,
        slot: usize,
    ) -> HostResult<()> {
        match state.page_state() {
            Some(st) => self.host_s2.map(
                &mut self.alloc,
                v,
                Ipa(pa),
                Pa(pa),
                PAGE_SIZE,
                Attrs::RAM_RW,
                st,
            ),
            None => self.host_s2.set_annotation(
                &mut self.alloc,
                v,
                Ipa(pa),
                PAGE_SIZE,
                owner_of_slot(slot),
            ),
        }
        .map(|_| ())
        .map_err(s2err)
    }

    /// Sets the guest state of the (mapped) page at `ipa` of guest `slot`.
    fn guest_set_state(
        &mut self,
        v: &mut Vttbr,
        slot: usize,
        ipa: u64,
        state: PageState,
    ) -> HostResult<()> {
        let vm = self.vms[slot].as_mut().ok_or(HostError::NoVm)?;
        vm.s2
            .set_state(&mut self.alloc, v, Ipa(ipa), PAGE_SIZE, state)
            .map(|_| ())
            .map_err(s2err)
    }

    /// VM_DESTROY: scrubs every page the host could not read, gives all the
    /// VM's memory back to the host and frees its tables. Returns the number
    /// of pages scrubbed.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Busy`] (a vCPU is running).
    pub fn destroy(&mut self, v: &mut Vttbr, handle: u64) -> HostResult<u64> {
        let slot = slot_of(handle)?;
        let vm = self.vms[slot].as_ref().ok_or(HostError::NoVm)?;
        if vm.vcpus.iter().any(|v| v.running_on.is_some()) {
            return Err(HostError::Busy);
        }
        let Some(vm) = self.vms[slot].take() else {
            return Err(HostError::NoVm);
        };
        // Unmap the guest first so it can never see a scrubbed-then-reused
        // page; destroying the tables invalidates the whole VMID.
        let regions = vm.regions;
        vm.s2.destroy(&mut self.alloc, v);
        let mut scrubbed = 0;
        for r in regions.iter().flatten() {
            if r.kind == RegionKind::Donated {
                // Every donated page was private to the guest at some point:
                // shared ones too may hold its data after unsharing races.
                self.mem.scrub(r.pa, r.pages * PAGE_SIZE);
                scrubbed += r.pages;
            }
            self.restore_host(v, r.pa, r.pages * PAGE_SIZE);
        }
        Ok(scrubbed)
    }

    /// Handles (and VMIDs) of live VM slots.
    pub fn handles(&self) -> impl Iterator<Item = u64> + '_ {
        self.vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .map(|(i, _)| i as u64 + 1)
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
    use s2mm::host::HostAlloc;

    struct NoMem;
    impl PhysMem for NoMem {
        fn scrub(&mut self, _pa: u64, _len: u64) {}
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
            let mut c = ctl();
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
            c.destroy(&mut v, h).expect("destroy");
            assert_eq!(c.host_state(pa), CompState::Owned);
            assert_eq!(c.host_state(pa + 0x3000), CompState::Owned);
        }
    }
}
