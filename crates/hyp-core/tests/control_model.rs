//! Property test of the host control interface (`hyp_core::control`) against a reference model
//! of VMs, vCPUs and page ownership.
//!
//! Random call sequences mix valid and invalid handles (0..=10 and `u64::MAX`), vCPU indices,
//! unaligned, out-of-range and overflowing PAs/IPAs, overlapping IPA ranges, double donations,
//! lends to protected and donations to normal VMs, destroys while a vCPU is claimed, runs on two
//! CPUs, MMIO completions without a read, every `RunEnd`, guest share/unshare of every kind of
//! page, PSCI CPU_ON / AFFINITY_INFO. After every call the return value equals the model's
//! (exact `HostError` variant or value), the VM metadata (handles, vCPUs, regions, share count,
//! status) equals the model's and the barriers checker passes over the recorded trace; after
//! every give / share / destroy the touched host pages (`host_state`, `host_annotation`) and
//! guest IPAs (`guest_state`) equal the model; every [`FULL_CHECK_EVERY`] calls all of host RAM
//! and all guest memory is compared. Each destroy must scrub exactly the VM's donated pages. At
//! the end every VM is destroyed: the host owns every page again (identity, RWX, `Owned`),
//! every page was scrubbed once per donation, and no table page leaked.
//!
//! A quarter of the cases run out of table memory: most calls get only 0..=6 pages of
//! headroom (`give` holds 4 back for undoing), so splits fail; a call may then return
//! `NoMemory` where the model says `Ok`, and must have changed nothing. Their teardown gets no
//! headroom at all.
//!
//! Case count: `CONTROL_CASES` (default 100), [`OPS`] calls each: 120,000 random calls per
//! `cargo test`.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyp_core::calls::smccc as psci;
use hyp_core::platform::MemRegion;
use hyp_core::vm::control::{
    owner_of_slot, Claim, Control, HostError, HostResult, MmioWait, PhysMem, Power, Region,
    RegionKind, RunEnd, RunStart, VcpuMeta, VmStatus, DESTROY_CHUNK, GUEST_IPA_BITS,
    GUEST_RAM_IPA_MIN, MAX_PAGES_PER_CALL, MAX_REGIONS, MAX_VCPUS, MAX_VMS_VMID8, OWNER_HYP,
    PSCI_INVALID_ADDRESS, VM_CREATE_PAGES,
};
use hyp_core::vm::memcache::host::TestAlloc;
use hyp_core::vm::memcache::{MAX_HYP_RUNS, MAX_TOPUP_PAGES};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use s2mm::ownership::CompState;
use s2mm::{Attrs, Ipa, OwnerId, PageState, Vttbr, PAGE_SIZE};
use std::collections::HashMap;

const PAGE: u64 = PAGE_SIZE;
/// The highest page-aligned address.
const LAST_PAGE: u64 = !(PAGE - 1);
/// Host RAM: 8 MiB (four 2 MiB blocks) at 1 GiB.
const RAM_BASE: u64 = 0x4000_0000;
const RAM_PAGES: u64 = 2048;
const RAM_END: u64 = RAM_BASE + RAM_PAGES * PAGE;
/// Guest IPAs are mostly drawn from a 16 MiB window at `GUEST_RAM_IPA_MIN`.
const WIN_PAGES: u64 = 4096;
const BLOCK_PAGES: u64 = 512;
/// VM slots with 8-bit VMIDs (the model's `Control` is built without FEAT_VMID16).
const MAX_VMS: usize = MAX_VMS_VMID8;
/// Below this many pages of a VM's own memory, a call that needs its tables may fail with
/// `NoMemory` (the most tables one give or share can need, with margin).
const LOW_CACHE: u64 = 8;
/// Calls per case.
const OPS: usize = 1200;
/// Full comparison of all memory every this many calls.
const FULL_CHECK_EVERY: usize = 64;
/// Physical CPUs begin_run picks from.
const CPUS: u64 = 4;
/// What a guest "writes" into its donated pages (fake memory), tagged with the slot.
const SECRET: u64 = 0x5ec0_0000_0000_0000;

static CALLS: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// Outcomes per call kind (for the summary printed with `--nocapture`).
    static STATS: std::cell::RefCell<std::collections::BTreeMap<String, usize>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

fn stat(call: &Call, outcome: String) {
    let name = format!("{call:?}");
    let name = name.split([' ', '{']).next().unwrap_or("?").to_owned();
    STATS.with(|s| {
        *s.borrow_mut()
            .entry(format!("{name} {outcome}"))
            .or_default() += 1
    });
}

/// Fake physical memory: one word per host RAM page standing for its contents, and a log of
/// scrubbed ranges.
#[derive(Debug)]
struct FakeMem {
    data: Vec<u64>,
    log: Vec<(u64, u64)>,
    /// Scrubs outside host RAM or unaligned.
    bad: Vec<(u64, u64)>,
}

impl FakeMem {
    fn new() -> Self {
        Self {
            data: vec![0; RAM_PAGES as usize],
            log: Vec::new(),
            bad: Vec::new(),
        }
    }
}

impl PhysMem for FakeMem {
    fn scrub(&mut self, pa: u64, len: u64) {
        if !self.check(pa, len) {
            return;
        }
        self.log.push((pa, len));
        for p in (pa - RAM_BASE) / PAGE..(pa + len - RAM_BASE) / PAGE {
            self.data[p as usize] = 0;
        }
    }

    fn clean(&mut self, pa: u64, len: u64) {
        self.check(pa, len);
    }
}

impl FakeMem {
    /// Whether `[pa, pa + len)` is whole pages of RAM; records it in `bad`
    /// if not.
    fn check(&mut self, pa: u64, len: u64) -> bool {
        let ok = pa >= RAM_BASE
            && pa.is_multiple_of(PAGE)
            && len.is_multiple_of(PAGE)
            && pa.checked_add(len).is_some_and(|e| e <= RAM_END);
        if !ok {
            self.bad.push((pa, len));
        }
        ok
    }
}

type Ctl = Control<TestAlloc, FakeMem>;

/// VM_DESTROY to the end, as the host loops on it: the pages scrubbed in
/// all. Each step gives back at most `DESTROY_CHUNK` pages.
fn destroy_all(c: &Ctl, v: &mut Vttbr, h: u64) -> Result<u64, HostError> {
    let mut total = 0;
    loop {
        let log = c.with_mem(|m| m.log.len());
        let d = c.destroy(v, h)?;
        let given: u64 = c.with_mem(|m| m.log[log..].iter().map(|&(_, len)| len / PAGE).sum());
        assert!(
            given <= DESTROY_CHUNK,
            "one destroy step scrubbed {given} pages"
        );
        total += d.scrubbed;
        if !d.more {
            return Ok(total);
        }
    }
}

/// The host's view of one RAM page in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostPage {
    Owned,
    Donated(usize),
    Lent(usize),
    /// Donated to the slot, then shared back to the host by the guest.
    SharedBack(usize),
    /// Donated to the hypervisor for the slot's state and tables.
    Hyp(usize),
}

#[derive(Clone, Debug)]
struct MVm {
    protected: bool,
    /// The SVE vector length it was given, in quadwords.
    sve_vq: u8,
    nr_vcpus: usize,
    status: VmStatus,
    vcpus: [VcpuMeta; MAX_VCPUS],
    regions: Vec<Region>,
    shared: u64,
    /// Pages donated for the VM's state and tables: (PA, pages) per call.
    runs: Vec<(u64, u64)>,
    /// The host set vCPU 0's entry.
    boot_entry_set: bool,
    /// A vCPU ran.
    has_run: bool,
}

const RESET: VcpuMeta = VcpuMeta {
    power: Power::Off,
    running_on: None,
    mmio: MmioWait::None,
};

impl MVm {
    fn region_of(&self, ipa: u64) -> Option<&Region> {
        self.regions
            .iter()
            .find(|r| ipa >= r.ipa && ipa - r.ipa < r.pages * PAGE)
    }
}

#[derive(Debug)]
struct Model {
    vms: [Option<MVm>; MAX_VMS],
    host: Vec<HostPage>,
    /// Per page: successful donations to a protected VM so far.
    donated: Vec<u32>,
}

fn slot(h: u64) -> Option<usize> {
    (1..=MAX_VMS as u64).contains(&h).then(|| h as usize - 1)
}

fn page_idx(pa: u64) -> usize {
    ((pa - RAM_BASE) / PAGE) as usize
}

fn power_code(p: Power) -> u64 {
    match p {
        Power::On => 0,
        Power::Off => 1,
        Power::OnPending { .. } => 2,
    }
}

impl Model {
    fn new() -> Self {
        Self {
            vms: [const { None }; MAX_VMS],
            host: vec![HostPage::Owned; RAM_PAGES as usize],
            donated: vec![0; RAM_PAGES as usize],
        }
    }

    fn vm(&self, h: u64) -> HostResult<&MVm> {
        slot(h)
            .and_then(|s| self.vms[s].as_ref())
            .ok_or(HostError::NoVm)
    }

    fn vm_mut(&mut self, h: u64) -> HostResult<&mut MVm> {
        slot(h)
            .and_then(|s| self.vms[s].as_mut())
            .ok_or(HostError::NoVm)
    }

    fn live(&self) -> Vec<u64> {
        (0..MAX_VMS)
            .filter(|&s| self.vms[s].is_some())
            .map(|s| s as u64 + 1)
            .collect()
    }

    fn running(&self) -> Vec<(u64, u64, usize)> {
        let mut v = Vec::new();
        for (s, vm) in self.vms.iter().enumerate() {
            if let Some(vm) = vm {
                for (i, c) in vm.vcpus.iter().enumerate() {
                    if let Some(cpu) = c.running_on {
                        v.push((s as u64 + 1, i as u64, cpu));
                    }
                }
            }
        }
        v
    }

    /// (state, annotation) `host_state` / `host_annotation` must report for a RAM page.
    fn host_expect(&self, pa: u64) -> (CompState, Option<OwnerId>) {
        if !(RAM_BASE..RAM_END).contains(&pa) {
            return (CompState::NoAccess, None);
        }
        match self.host[page_idx(pa)] {
            HostPage::Owned => (CompState::Owned, None),
            HostPage::Donated(s) => (CompState::NoAccess, Some(OwnerId(2 + s as u16))),
            HostPage::Lent(_) => (CompState::SharedOwned, None),
            HostPage::SharedBack(_) => (CompState::SharedBorrowed, None),
            HostPage::Hyp(_) => (CompState::NoAccess, Some(OWNER_HYP)),
        }
    }

    /// What `guest_state(h, ipa)` must return.
    fn guest_expect(&self, h: u64, ipa: u64) -> Option<(u64, CompState)> {
        let vm = self.vm(h).ok()?;
        let ipa = ipa & !(PAGE - 1);
        let r = vm.region_of(ipa)?;
        let pa = r.pa + (ipa - r.ipa);
        let st = match self.host[page_idx(pa)] {
            HostPage::Donated(_) => CompState::Owned,
            HostPage::SharedBack(_) => CompState::SharedOwned,
            HostPage::Lent(_) => CompState::SharedBorrowed,
            HostPage::Owned | HostPage::Hyp(_) => {
                panic!("model: region page {pa:#x} not the guest's")
            }
        };
        Some((pa, st))
    }

    // ---- The calls: what each must return, and its effect on the model. ----

    fn create(&mut self, nr: u64, flags: u64, pa: u64, pages: u64) -> HostResult<u64> {
        if nr == 0
            || nr > MAX_VCPUS as u64
            || flags & !0x1f1 != 0
            || !(VM_CREATE_PAGES..=MAX_TOPUP_PAGES).contains(&pages)
        {
            return Err(HostError::Invalid);
        }
        // Bits [8:4]: 0 (the cap, 4 quadwords: the host tests probe no CPU)
        // or one of 1, 2, 4, 8, 16 quadwords, capped at 4.
        let sve_vq = match (flags >> 4) & 0x1f {
            0 | 4 | 8 | 16 => 4,
            q @ (1 | 2) => q as u8,
            _ => return Err(HostError::Invalid),
        };
        self.hyp_check(pa, pages)?;
        let s = self
            .vms
            .iter()
            .position(Option::is_none)
            .ok_or(HostError::NoMemory)?;
        self.vms[s] = Some(MVm {
            protected: flags & 1 != 0,
            sve_vq,
            nr_vcpus: nr as usize,
            status: VmStatus::Live,
            vcpus: [RESET; MAX_VCPUS],
            regions: Vec::new(),
            shared: 0,
            runs: Vec::new(),
            boot_entry_set: false,
            has_run: false,
        });
        self.hyp_apply(s, pa, pages);
        Ok(s as u64 + 1)
    }

    /// Checks of host pages donated to the hypervisor.
    fn hyp_check(&self, pa: u64, pages: u64) -> HostResult<()> {
        if pages == 0 || !pa.is_multiple_of(PAGE) {
            return Err(HostError::Invalid);
        }
        if pa < RAM_BASE || pa.checked_add(pages * PAGE).is_none_or(|e| e > RAM_END) {
            return Err(HostError::Range);
        }
        if (0..pages).any(|i| self.host[page_idx(pa + i * PAGE)] != HostPage::Owned) {
            return Err(HostError::Denied);
        }
        Ok(())
    }

    fn hyp_apply(&mut self, s: usize, pa: u64, pages: u64) {
        for i in 0..pages {
            let p = page_idx(pa + i * PAGE);
            self.host[p] = HostPage::Hyp(s);
            self.donated[p] += 1;
        }
        self.vms[s].as_mut().unwrap().runs.push((pa, pages));
    }

    fn topup(&mut self, h: u64, pa: u64, pages: u64) -> HostResult<()> {
        if pages > MAX_TOPUP_PAGES {
            return Err(HostError::Invalid);
        }
        let vm = self.vm(h)?;
        if vm.runs.len() >= MAX_HYP_RUNS {
            return Err(HostError::NoMemory);
        }
        self.hyp_check(pa, pages)?;
        self.hyp_apply(slot(h).unwrap(), pa, pages);
        Ok(())
    }

    /// Checks of VM_DESTROY; on `Ok` the caller applies [`Model::destroy_apply`].
    fn destroy_check(&self, h: u64) -> HostResult<u64> {
        let vm = self.vm(h)?;
        if vm.vcpus.iter().any(|v| v.running_on.is_some()) {
            return Err(HostError::Busy);
        }
        Ok(vm
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::Donated)
            .map(|r| r.pages)
            .sum())
    }

    /// Removes the VM; returns its regions and the runs of its own pages.
    fn destroy_apply(&mut self, h: u64) -> (Vec<Region>, Vec<(u64, u64)>) {
        let vm = self.vms[slot(h).unwrap()].take().unwrap();
        for r in &vm.regions {
            for i in 0..r.pages {
                self.host[page_idx(r.pa + i * PAGE)] = HostPage::Owned;
            }
        }
        for &(pa, pages) in &vm.runs {
            for i in 0..pages {
                self.host[page_idx(pa + i * PAGE)] = HostPage::Owned;
            }
        }
        (vm.regions, vm.runs)
    }

    fn give_check(
        &self,
        h: u64,
        pa: u64,
        ipa: u64,
        pages: u64,
        kind: RegionKind,
    ) -> HostResult<()> {
        let vm = self.vm(h)?;
        if vm.protected != (kind == RegionKind::Donated) {
            return Err(HostError::Invalid);
        }
        if pages == 0
            || pages > MAX_PAGES_PER_CALL
            || !pa.is_multiple_of(PAGE)
            || !ipa.is_multiple_of(PAGE)
        {
            return Err(HostError::Invalid);
        }
        let size = pages * PAGE;
        // Overflowing ranges are out of range, like any other range past the end.
        if pa < RAM_BASE || pa.checked_add(size).is_none_or(|e| e > RAM_END) {
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
        if vm
            .regions
            .iter()
            .any(|r| r.ipa < ipa + size && ipa < r.ipa + r.pages * PAGE)
        {
            return Err(HostError::Denied);
        }
        let extends = vm.regions.iter().any(|r| {
            r.kind == kind && r.ipa + r.pages * PAGE == ipa && r.pa + r.pages * PAGE == pa
        });
        if vm.regions.len() >= MAX_REGIONS && !extends {
            return Err(HostError::NoMemory);
        }
        if (0..pages).any(|i| self.host[page_idx(pa + i * PAGE)] != HostPage::Owned) {
            return Err(HostError::Denied);
        }
        Ok(())
    }

    fn give_apply(&mut self, h: u64, pa: u64, ipa: u64, pages: u64, kind: RegionKind) {
        let s = slot(h).unwrap();
        for i in 0..pages {
            let p = page_idx(pa + i * PAGE);
            self.host[p] = match kind {
                RegionKind::Donated => {
                    self.donated[p] += 1;
                    HostPage::Donated(s)
                }
                RegionKind::Lent => HostPage::Lent(s),
            };
        }
        let vm = self.vms[s].as_mut().unwrap();
        // A give continuing a region of the same kind (in PA and IPA) extends it.
        if let Some(r) = vm.regions.iter_mut().find(|r| {
            r.kind == kind && r.ipa + r.pages * PAGE == ipa && r.pa + r.pages * PAGE == pa
        }) {
            r.pages += pages;
            return;
        }
        vm.regions.push(Region {
            ipa,
            pa,
            pages,
            kind,
        });
    }

    fn vcpu_init(&mut self, h: u64, vcpu: u64, entry: u64, ctx: u64) -> HostResult<()> {
        let vm = self.vm_mut(h)?;
        if vcpu >= vm.nr_vcpus as u64 {
            return Err(HostError::Invalid);
        }
        // Protected: only vCPU 0's entry, once, before anything ran.
        if vm.protected && (vcpu != 0 || vm.boot_entry_set || vm.has_run) {
            return Err(HostError::Denied);
        }
        if !entry.is_multiple_of(4) {
            return Err(HostError::Invalid);
        }
        if vm.region_of(entry).is_none() {
            return Err(HostError::Range);
        }
        let v = &mut vm.vcpus[vcpu as usize];
        if vm.status != VmStatus::Live || v.power != Power::Off {
            return Err(HostError::State);
        }
        v.power = Power::OnPending { entry, ctx };
        vm.boot_entry_set |= vcpu == 0;
        Ok(())
    }

    fn vcpu_state(&self, h: u64, vcpu: u64) -> HostResult<u64> {
        let vm = self.vm(h)?;
        if vcpu >= vm.nr_vcpus as u64 {
            return Err(HostError::Invalid);
        }
        Ok(power_code(vm.vcpus[vcpu as usize].power))
    }

    /// Expected `RunStart` without the VTTBR (checked separately).
    fn begin_run(&mut self, h: u64, vcpu: u64, cpu: usize) -> HostResult<Started> {
        let vm = self.vm_mut(h)?;
        if vcpu >= vm.nr_vcpus as u64 {
            return Err(HostError::Invalid);
        }
        let live = vm.status == VmStatus::Live;
        let v = &mut vm.vcpus[vcpu as usize];
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
        let mmio = match v.mmio {
            MmioWait::Completed(x) if boot.is_none() => Some(x),
            _ => None,
        };
        *v = VcpuMeta {
            power: Power::On,
            running_on: Some(cpu),
            mmio: MmioWait::None,
        };
        vm.has_run = true;
        Ok((boot, mmio))
    }

    fn end_run(&mut self, h: u64, vcpu: u64, end: RunEnd) {
        let vm = self.vm_mut(h).unwrap();
        let v = &mut vm.vcpus[vcpu as usize];
        v.running_on = None;
        match end {
            RunEnd::Runnable => {}
            RunEnd::AwaitMmio => v.mmio = MmioWait::Awaiting,
            RunEnd::CpuOff => v.power = Power::Off,
            RunEnd::SystemOff => vm.status = VmStatus::Off,
            RunEnd::SystemReset => vm.status = VmStatus::Reset,
        }
    }

    fn mmio_complete(&mut self, h: u64, vcpu: u64, value: u64) -> HostResult<()> {
        let vm = self.vm_mut(h)?;
        if vcpu >= vm.nr_vcpus as u64 {
            return Err(HostError::Invalid);
        }
        let v = &mut vm.vcpus[vcpu as usize];
        if v.running_on.is_some() {
            return Err(HostError::Busy);
        }
        if v.mmio != MmioWait::Awaiting {
            return Err(HostError::State);
        }
        v.mmio = MmioWait::Completed(value);
        Ok(())
    }

    fn cpu_on(&mut self, h: u64, target: usize, entry: u64, ctx: u64) -> u64 {
        let Ok(vm) = self.vm_mut(h) else {
            return psci::INVALID_PARAMETERS;
        };
        if target >= vm.nr_vcpus {
            return psci::INVALID_PARAMETERS;
        }
        if !entry.is_multiple_of(4) || vm.region_of(entry).is_none() {
            return PSCI_INVALID_ADDRESS;
        }
        let v = &mut vm.vcpus[target];
        match v.power {
            Power::Off => {
                v.power = Power::OnPending { entry, ctx };
                psci::SUCCESS
            }
            Power::On => hyp_core::vm::control::psci(smccc::psci::error::ALREADY_ON),
            Power::OnPending { .. } => hyp_core::vm::control::psci(smccc::psci::error::ON_PENDING),
        }
    }

    fn affinity_info(&self, h: u64, target: usize) -> u64 {
        match self.vm(h) {
            Ok(vm) if target < vm.nr_vcpus => power_code(vm.vcpus[target].power),
            _ => psci::INVALID_PARAMETERS,
        }
    }

    /// Checks of a guest share/unshare; returns the page's PA on `Ok`.
    fn share_check(&self, h: u64, ipa: u64, share: bool) -> HostResult<u64> {
        let vm = self.vm(h)?;
        let ipa = ipa & !(PAGE - 1);
        let r = vm.region_of(ipa).ok_or(HostError::Range)?;
        let pa = r.pa + (ipa - r.ipa);
        match (self.host[page_idx(pa)], share) {
            (HostPage::Donated(_), true) | (HostPage::SharedBack(_), false) => Ok(pa),
            _ => Err(HostError::Denied),
        }
    }

    fn share_apply(&mut self, h: u64, pa: u64, share: bool) {
        let s = slot(h).unwrap();
        let vm = self.vms[s].as_mut().unwrap();
        self.host[page_idx(pa)] = if share {
            vm.shared += 1;
            HostPage::SharedBack(s)
        } else {
            vm.shared -= 1;
            HostPage::Donated(s)
        };
    }
}

/// What `begin_run` must return, without the VTTBR: (boot entry and x0, MMIO value).
type Started = (Option<(u64, u64)>, Option<u64>);

/// A decoded call, kept for failure reports.
#[derive(Clone, Copy, Debug)]
enum Call {
    Create {
        nr: u64,
        flags: u64,
        pa: u64,
        pages: u64,
    },
    Topup {
        h: u64,
        pa: u64,
        pages: u64,
    },
    Destroy {
        h: u64,
    },
    Give {
        h: u64,
        pa: u64,
        ipa: u64,
        pages: u64,
        kind: RegionKind,
    },
    VcpuInit {
        h: u64,
        vcpu: u64,
        entry: u64,
        ctx: u64,
    },
    VcpuState {
        h: u64,
        vcpu: u64,
    },
    BeginRun {
        h: u64,
        vcpu: u64,
        cpu: usize,
    },
    EndRun {
        h: u64,
        vcpu: u64,
        cpu: usize,
        end: RunEnd,
    },
    MmioComplete {
        h: u64,
        vcpu: u64,
        value: u64,
    },
    CpuOn {
        h: u64,
        target: usize,
        entry: u64,
        ctx: u64,
    },
    AffinityInfo {
        h: u64,
        target: usize,
    },
    Share {
        h: u64,
        ipa: u64,
        share: bool,
    },
}

/// Raw random input of one call, decoded against the current model state.
type Raw = (u32, u64, u64, u64, u64);

/// Call kinds and their weights.
const KINDS: [(u8, u32); 12] = [
    (0, 6),   // create
    (1, 2),   // destroy
    (2, 20),  // give
    (3, 8),   // vcpu_init
    (4, 3),   // vcpu_state
    (5, 12),  // begin_run
    (6, 12),  // end_run
    (7, 6),   // mmio_complete
    (8, 5),   // psci_cpu_on
    (9, 3),   // affinity_info
    (10, 14), // guest share/unshare
    (11, 4),  // VM_TOPUP
];

fn kind_of(k: u32) -> u8 {
    let total: u32 = KINDS.iter().map(|&(_, w)| w).sum();
    let mut k = k % total;
    for &(kind, w) in &KINDS {
        if k < w {
            return kind;
        }
        k -= w;
    }
    unreachable!()
}

/// Pages donated to the hypervisor: mostly enough, sometimes too few, zero or too many.
fn hyp_pages_of(r: u64, least: u64) -> u64 {
    let x = r >> 8;
    match r % 16 {
        0 => 0,
        1 => least.saturating_sub(1 + x % 2),
        2 => MAX_TOPUP_PAGES + 1 + x % 2,
        3 => MAX_TOPUP_PAGES,
        _ => least + x % 8,
    }
}

/// A handle: mostly a live VM, sometimes 0, 9, 10, `u64::MAX` or a free slot.
fn handle(m: &Model, r: u64) -> u64 {
    let live = m.live();
    let x = r >> 8;
    match r % 16 {
        0 => 0,
        1 => [9, 10, u64::MAX][(x % 3) as usize],
        2 => x % MAX_VMS as u64 + 1,
        _ if !live.is_empty() => live[(x % live.len() as u64) as usize],
        _ => x % 11,
    }
}

fn nr_vcpus_of(m: &Model, h: u64) -> u64 {
    m.vm(h).map_or(2, |v| v.nr_vcpus as u64)
}

/// A vCPU index: mostly valid, sometimes just past the end or wild.
fn vcpu_of(nr: u64, r: u64) -> u64 {
    let x = r >> 8;
    match r % 10 {
        0 => nr,
        1 => [x % 16, u64::MAX, 1 << 32][(x % 3) as usize],
        _ => x % nr,
    }
}

/// An entry point: mostly in one of the VM's regions, sometimes unaligned or outside.
fn entry_of(m: &Model, h: u64, r: u64) -> u64 {
    let x = r >> 8;
    let regions = m.vm(h).map(|v| v.regions.clone()).unwrap_or_default();
    let inside = |x: u64| {
        regions
            .get((x % regions.len().max(1) as u64) as usize)
            .map_or(GUEST_RAM_IPA_MIN + (x >> 8) % (WIN_PAGES * PAGE), |r| {
                r.ipa + (x >> 8) % (r.pages * PAGE)
            })
    };
    match r % 10 {
        0 => inside(x) | 2,
        1 => [
            0x0900_0000,
            GUEST_RAM_IPA_MIN - 4,
            u64::MAX - 3,
            1 << GUEST_IPA_BITS,
        ][(x % 4) as usize],
        2 => (GUEST_RAM_IPA_MIN + (x % (WIN_PAGES * PAGE))) & !3,
        _ => inside(x) & !3,
    }
}

/// A page count: mostly small, sometimes a 2 MiB block, zero or too many.
fn pages_of(r: u64) -> u64 {
    let x = r >> 8;
    match r % 16 {
        0 => 0,
        1 => MAX_PAGES_PER_CALL + 1 + x % 2,
        2 => MAX_PAGES_PER_CALL,
        3..=5 => BLOCK_PAGES,
        6 => BLOCK_PAGES + 1 + x % 16,
        7 => 2 * BLOCK_PAGES,
        _ => 1 + x % 32,
    }
}

/// A PA: mostly a page of host RAM (often 2 MiB aligned or inside an existing region),
/// sometimes unaligned, below or across the end of RAM, or overflowing.
fn pa_of(m: &Model, r: u64, pages: u64) -> u64 {
    let x = r >> 8;
    let size = pages.min(RAM_PAGES) * PAGE;
    match r % 16 {
        0 => RAM_BASE + (x % RAM_PAGES) * PAGE + 1 + x % 0xfff,
        1 => RAM_BASE - (1 + x % 4) * PAGE,
        2 => RAM_END.saturating_sub(size) + (1 + x % 2) * PAGE,
        3 => [LAST_PAGE, LAST_PAGE - size.max(PAGE) + PAGE, 0][(x % 3) as usize],
        4 | 5 => {
            // Inside (or straddling) an existing region of any VM: double donation.
            let all: Vec<Region> = m
                .vms
                .iter()
                .flatten()
                .flat_map(|v| v.regions.clone())
                .collect();
            if all.is_empty() {
                RAM_BASE
            } else {
                let reg = all[(x % all.len() as u64) as usize];
                let off = (x >> 16) % (reg.pages + 2);
                (reg.pa + off * PAGE).saturating_sub(PAGE)
            }
        }
        6 | 7 => RAM_BASE + (x % (RAM_PAGES / BLOCK_PAGES)) * BLOCK_PAGES * PAGE,
        _ => RAM_BASE + (x % RAM_PAGES) * PAGE,
    }
}

/// An IPA: mostly in the window, sometimes overlapping an existing region, unaligned, below
/// `GUEST_RAM_IPA_MIN`, across the end of the IPA space, or overflowing.
fn ipa_of(m: &Model, h: u64, r: u64, pages: u64) -> u64 {
    let x = r >> 8;
    let size = pages.min(1 << 20) * PAGE;
    let top = 1u64 << GUEST_IPA_BITS;
    match r % 16 {
        0 => GUEST_RAM_IPA_MIN + (x % WIN_PAGES) * PAGE + 8,
        1 => GUEST_RAM_IPA_MIN - (1 + x % 4) * PAGE,
        2 => [top - size + PAGE, top - size, top, LAST_PAGE][(x % 4) as usize],
        3 | 4 => {
            let regions = m.vm(h).map(|v| v.regions.clone()).unwrap_or_default();
            if regions.is_empty() {
                GUEST_RAM_IPA_MIN
            } else {
                let reg = regions[(x % regions.len() as u64) as usize];
                let off = (x >> 16) % (reg.pages + 2);
                (reg.ipa + off * PAGE).saturating_sub(pages.min(4) * PAGE)
            }
        }
        5 | 6 => GUEST_RAM_IPA_MIN + (x % (WIN_PAGES / BLOCK_PAGES)) * BLOCK_PAGES * PAGE,
        _ => GUEST_RAM_IPA_MIN + (x % WIN_PAGES) * PAGE,
    }
}

fn decode(m: &Model, raw: Raw) -> Call {
    let (k, a, b, c, d) = raw;
    match kind_of(k) {
        0 => Call::Create {
            nr: match a % 16 {
                0 => 0,
                1 => MAX_VCPUS as u64 + 1 + (a >> 8) % 3,
                2 => u64::MAX,
                _ => 1 + (a >> 8) % MAX_VCPUS as u64,
            },
            flags: match b % 16 {
                0 => 2 + (b >> 8) % 4,
                1 => 1 << 63,
                // An SVE vector-length request, malformed or not.
                2 | 3 => (((b >> 8) % 32) << 4) | ((b >> 13) % 2),
                x => x % 2,
            },
            pa: pa_of(m, c, hyp_pages_of(d, VM_CREATE_PAGES)),
            pages: hyp_pages_of(d, VM_CREATE_PAGES),
        },
        11 => {
            let pages = hyp_pages_of(d, 1);
            Call::Topup {
                h: handle(m, a),
                pa: pa_of(m, c, pages),
                pages,
            }
        }
        1 => Call::Destroy { h: handle(m, a) },
        2 => {
            let h = handle(m, a);
            let pages = pages_of(d);
            let protected = m.vm(h).map_or(c % 2 == 0, |v| v.protected);
            let matching = if protected {
                RegionKind::Donated
            } else {
                RegionKind::Lent
            };
            let other = if protected {
                RegionKind::Lent
            } else {
                RegionKind::Donated
            };
            let kind = if (a >> 40) % 8 == 0 { other } else { matching };
            let regions = m.vm(h).map(|v| v.regions.clone()).unwrap_or_default();
            if (a >> 48) % 4 == 0 && !regions.is_empty() {
                // The next 2 MiB step of a larger give: continues a region.
                let r = regions[((a >> 52) as usize) % regions.len()];
                return Call::Give {
                    h,
                    pa: r.pa + r.pages * PAGE,
                    ipa: r.ipa + r.pages * PAGE,
                    pages,
                    kind,
                };
            }
            Call::Give {
                h,
                pa: pa_of(m, b, pages),
                ipa: ipa_of(m, h, c, pages),
                pages,
                kind,
            }
        }
        3 => {
            let h = handle(m, a);
            Call::VcpuInit {
                h,
                vcpu: vcpu_of(nr_vcpus_of(m, h), b),
                entry: entry_of(m, h, c),
                ctx: d,
            }
        }
        4 => {
            let h = handle(m, a);
            Call::VcpuState {
                h,
                vcpu: vcpu_of(nr_vcpus_of(m, h), b),
            }
        }
        5 => {
            let h = handle(m, a);
            Call::BeginRun {
                h,
                vcpu: vcpu_of(nr_vcpus_of(m, h), b),
                cpu: (c % CPUS) as usize,
            }
        }
        6 => {
            let running = m.running();
            if running.is_empty() {
                // Nothing to end: ask a vCPU's state instead.
                let h = handle(m, a);
                return Call::VcpuState {
                    h,
                    vcpu: vcpu_of(nr_vcpus_of(m, h), b),
                };
            }
            let (h, vcpu, cpu) = running[(a % running.len() as u64) as usize];
            let end = match b % 12 {
                0..=3 => RunEnd::Runnable,
                4..=7 => RunEnd::AwaitMmio,
                8 | 9 => RunEnd::CpuOff,
                10 => RunEnd::SystemOff,
                _ => RunEnd::SystemReset,
            };
            Call::EndRun { h, vcpu, cpu, end }
        }
        7 => {
            let awaiting: Vec<(u64, u64)> = m
                .live()
                .into_iter()
                .flat_map(|h| {
                    let vm = m.vm(h).unwrap();
                    (0..vm.nr_vcpus as u64)
                        .filter(move |&i| vm.vcpus[i as usize].mmio == MmioWait::Awaiting)
                        .map(move |i| (h, i))
                })
                .collect();
            if a % 2 == 0 && !awaiting.is_empty() {
                let (h, vcpu) = awaiting[((a >> 8) % awaiting.len() as u64) as usize];
                return Call::MmioComplete { h, vcpu, value: c };
            }
            let h = handle(m, a);
            Call::MmioComplete {
                h,
                vcpu: vcpu_of(nr_vcpus_of(m, h), b),
                value: c,
            }
        }
        8 => {
            let h = handle(m, a);
            let t = vcpu_of(nr_vcpus_of(m, h), b);
            Call::CpuOn {
                h,
                target: usize::try_from(t).unwrap_or(usize::MAX),
                entry: entry_of(m, h, c),
                ctx: d,
            }
        }
        9 => {
            let h = handle(m, a);
            let t = vcpu_of(nr_vcpus_of(m, h), b);
            Call::AffinityInfo {
                h,
                target: usize::try_from(t).unwrap_or(usize::MAX),
            }
        }
        _ => {
            let h = handle(m, a);
            let regions = m.vm(h).map(|v| v.regions.clone()).unwrap_or_default();
            let ipa = match (b % 8, regions.is_empty()) {
                (0, _) | (_, true) => entry_of(m, h, b >> 8),
                _ => {
                    let r = regions[((b >> 8) % regions.len() as u64) as usize];
                    r.ipa + (b >> 16) % (r.pages * PAGE)
                }
            };
            // Unshare mostly where something is shared.
            let shared: Vec<u64> = regions
                .iter()
                .flat_map(|r| (0..r.pages).map(move |i| (r.ipa + i * PAGE, r.pa + i * PAGE)))
                .filter(|&(_, pa)| matches!(m.host[page_idx(pa)], HostPage::SharedBack(_)))
                .map(|(ipa, _)| ipa)
                .collect();
            if c % 4 == 3 && !shared.is_empty() {
                let ipa = shared[((c >> 8) % shared.len() as u64) as usize] + (d % PAGE);
                return Call::Share {
                    h,
                    ipa,
                    share: false,
                };
            }
            let share = match c % 4 {
                0 => false,
                1 => true,
                _ => m.share_check(h, ipa, true).is_ok(),
            };
            Call::Share { h, ipa, share }
        }
    }
}

struct Run {
    /// Leaked: the claims of running vCPUs borrow it.
    ctl: &'static Ctl,
    /// Running vCPUs' claims, by (handle, vCPU).
    claims: HashMap<(u64, u64), Claim<'static, ()>>,
    /// The test thread's VTTBR owner (the host's VMID loaded, as on a host call).
    v: Vttbr,
    m: Model,
    base_pages: usize,
    oom: bool,
    recent: VecDeque<Call>,
    k: usize,
    /// Per page: times scrubbed.
    scrubbed: Vec<u32>,
}

macro_rules! ensure {
    ($self:ident, $cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err($self.fail(format!($($fmt)*)));
        }
    };
}

impl Run {
    fn new(limit: Option<usize>) -> Self {
        let mut v = host_vttbr();
        let ctl: &'static Ctl = Box::leak(Box::new(new_ctl(TestAlloc::new(), &mut v, 2).unwrap()));
        let base_pages = ctl.alloc().tables.live_pages();
        let run = Self {
            ctl,
            claims: HashMap::new(),
            v,
            m: Model::new(),
            base_pages,
            oom: limit.is_some(),
            recent: VecDeque::new(),
            k: 0,
            scrubbed: vec![0; RAM_PAGES as usize],
        };
        run.ctl
            .alloc()
            .tables
            .set_limit(limit.map(|l| base_pages + l));
        run
    }

    fn fail(&self, what: String) -> TestCaseError {
        TestCaseError::fail(format!(
            "after call {} (oom={}): {what}\nlast calls (oldest first):\n{:#?}",
            self.k, self.oom, self.recent
        ))
    }

    fn check_host_page(&self, pa: u64) -> Result<(), TestCaseError> {
        let (st, ann) = self.m.host_expect(pa);
        let got = self.ctl.host_state(pa);
        ensure!(
            self,
            got == st,
            "host page {pa:#x}: state {got:?}, model {st:?}"
        );
        let got = self.ctl.host_annotation(pa);
        ensure!(
            self,
            got == ann,
            "host page {pa:#x}: annotation {got:?}, model {ann:?}"
        );
        if let Some(map) = self.ctl.with_host_s2(|s2, a| s2.query(a, Ipa(pa))) {
            ensure!(
                self,
                map.pa.0 == pa,
                "host page {pa:#x} maps {:#x}",
                map.pa.0
            );
        }
        Ok(())
    }

    fn check_guest(&self, h: u64, ipa: u64) -> Result<(), TestCaseError> {
        let want = self.m.guest_expect(h, ipa);
        let got = self.ctl.guest_state(h, ipa);
        ensure!(
            self,
            got == want,
            "guest {h} IPA {ipa:#x}: {got:x?}, model {want:x?}"
        );
        Ok(())
    }

    /// Host pages `[pa, pa + pages)` (clipped to RAM, plus the neighbours).
    fn check_host_range(&self, pa: u64, pages: u64) -> Result<(), TestCaseError> {
        let lo = pa.saturating_sub(PAGE).clamp(RAM_BASE - PAGE, RAM_END) & !(PAGE - 1);
        let hi = pa
            .saturating_add(pages.saturating_add(1).saturating_mul(PAGE))
            .clamp(RAM_BASE - PAGE, RAM_END);
        let mut p = lo;
        while p <= hi {
            self.check_host_page(p)?;
            p += PAGE;
        }
        Ok(())
    }

    fn check_guest_range(&self, h: u64, ipa: u64, pages: u64) -> Result<(), TestCaseError> {
        let lo = ipa.saturating_sub(PAGE) & !(PAGE - 1);
        for i in 0..pages.min(2 * BLOCK_PAGES + 2) + 2 {
            self.check_guest(h, lo.saturating_add(i * PAGE))?;
        }
        Ok(())
    }

    /// VM metadata: handles, slots, vCPUs, regions, share count.
    fn check_meta(&self) -> Result<(), TestCaseError> {
        let handles: Vec<u64> = self.ctl.handles().collect();
        ensure!(
            self,
            handles == self.m.live(),
            "handles {handles:?}, model {:?}",
            self.m.live()
        );
        for h in 0..=MAX_VMS as u64 + 1 {
            match (self.ctl.vm(h), self.m.vm(h)) {
                (Err(e), Err(_)) => ensure!(self, e == HostError::NoVm, "vm({h}): {e:?}"),
                (Ok(vm), Ok(mv)) => {
                    ensure!(self, vm.vmid == h as u16, "VM {h}: VMID {}", vm.vmid);
                    ensure!(self, vm.vttbr == vm.s2.vttbr(), "VM {h}: VTTBR");
                    ensure!(self, vm.vttbr >> 48 == h, "VM {h}: VTTBR VMID");
                    ensure!(
                        self,
                        vm.protected == mv.protected
                            && vm.nr_vcpus == mv.nr_vcpus
                            && vm.status == mv.status
                            && vm.shared == mv.shared
                            && vm.boot_entry_set == mv.boot_entry_set
                            && vm.has_run == mv.has_run,
                        "VM {h}: protected {} nr {} status {:?} shared {}, model {:?}",
                        vm.protected,
                        vm.nr_vcpus,
                        vm.status,
                        vm.shared,
                        mv
                    );
                    ensure!(
                        self,
                        vm.vcpus == mv.vcpus,
                        "VM {h}: vCPUs {:?}, model {:?}",
                        vm.vcpus,
                        mv.vcpus
                    );
                    let mut got: Vec<Region> = vm.regions.iter().flatten().copied().collect();
                    let mut want = mv.regions.clone();
                    got.sort_by_key(|r| r.ipa);
                    want.sort_by_key(|r| r.ipa);
                    ensure!(
                        self,
                        got == want,
                        "VM {h}: regions {got:x?}, model {want:x?}"
                    );
                    let runs: Vec<(u64, u64)> = vm.cache.runs().map(|r| (r.pa, r.pages)).collect();
                    ensure!(
                        self,
                        runs == mv.runs,
                        "VM {h}: own pages {runs:x?}, model {:x?}",
                        mv.runs
                    );
                }
                (a, b) => {
                    return Err(self.fail(format!(
                        "vm({h}): {:?} vs model {:?}",
                        a.map(|_| ()),
                        b.map(|_| ())
                    )))
                }
            }
        }
        // The hypervisor's own audit (the host's AUDIT call) agrees that
        // every random state the model reaches is sound.
        let violations = self.ctl.audit();
        ensure!(self, violations == 0, "audit: {violations} violations");
        Ok(())
    }

    /// All host RAM and all guest memory (plus the edges of every region and the window).
    fn check_all(&self) -> Result<(), TestCaseError> {
        for p in 0..RAM_PAGES {
            self.check_host_page(RAM_BASE + p * PAGE)?;
        }
        for pa in [0, RAM_BASE - PAGE, RAM_END, RAM_END + (2 << 20)] {
            self.check_host_page(pa)?;
        }
        for h in 1..=MAX_VMS as u64 {
            let Ok(vm) = self.m.vm(h) else {
                ensure!(
                    self,
                    self.ctl.guest_state(h, GUEST_RAM_IPA_MIN).is_none(),
                    "dead VM {h} answers"
                );
                continue;
            };
            for r in &vm.regions {
                for i in 0..r.pages {
                    self.check_guest(h, r.ipa + i * PAGE)?;
                }
                self.check_guest(h, r.ipa - PAGE)?;
                self.check_guest(h, r.ipa + r.pages * PAGE)?;
            }
            for ipa in [
                0,
                0x0900_0000,
                GUEST_RAM_IPA_MIN,
                GUEST_RAM_IPA_MIN + WIN_PAGES * PAGE,
            ] {
                self.check_guest(h, ipa)?;
            }
        }
        Ok(())
    }

    /// The barrier checker over what the call recorded.
    fn check_trace(&self) -> Result<(), TestCaseError> {
        let trace = barriers::trace::take();
        // The next call's trace starts from what this CPU has loaded.
        self.v.record_state();
        let v = barriers::check::check(&trace);
        ensure!(
            self,
            v.is_empty(),
            "barrier violations:\n{}",
            barriers::check::report(&v)
        );
        Ok(())
    }

    /// A result that may also be `NoMemory` when the model expects `Ok` and tables are
    /// limited; returns whether the call took effect.
    fn took_effect<T: PartialEq + core::fmt::Debug>(
        &self,
        got: &HostResult<T>,
        want: &HostResult<T>,
        what: &str,
    ) -> Result<bool, TestCaseError> {
        self.took_effect_low(got, want, what, false)
    }

    /// [`Run::took_effect`], where `low` says the VM's own pages for tables ran low before
    /// the call (so it may be `NoMemory` even with unlimited pool tables).
    fn took_effect_low<T: PartialEq + core::fmt::Debug>(
        &self,
        got: &HostResult<T>,
        want: &HostResult<T>,
        what: &str,
        low: bool,
    ) -> Result<bool, TestCaseError> {
        if got == want {
            return Ok(want.is_ok());
        }
        if (self.oom || low) && want.is_ok() && *got == Err(HostError::NoMemory) {
            return Ok(false);
        }
        Err(self.fail(format!("{what}: got {got:?}, model {want:?}")))
    }

    /// Whether VM `h`'s own pages for tables run low.
    fn low_cache(&self, h: u64) -> bool {
        self.ctl.cache_available(h).is_ok_and(|n| n < LOW_CACHE)
    }

    fn step(&mut self, call: Call) -> Result<(), TestCaseError> {
        if self.recent.len() == 24 {
            self.recent.pop_front();
        }
        self.recent.push_back(call);
        CALLS.fetch_add(1, Ordering::Relaxed);
        match call {
            Call::Create {
                nr,
                flags,
                pa,
                pages,
            } => {
                let before = self.ctl.alloc().tables.live_pages();
                let leaves = self.ctl.registry_pages();
                let got = self.ctl.create(&mut self.v, nr, flags, pa, pages);
                stat(&call, format!("{:?}", got.map(|_| ())));
                let m2 = self.m.vms.clone();
                let host2 = self.m.host.clone();
                let donated2 = self.m.donated.clone();
                let want = self.m.create(nr, flags, pa, pages);
                if !self.took_effect(&got, &want, "create")? {
                    self.m.vms = m2;
                    self.m.host = host2;
                    self.m.donated = donated2;
                    ensure!(
                        self,
                        self.ctl.alloc().tables.live_pages()
                            == before + self.ctl.registry_pages() - leaves,
                        "failed create leaked tables"
                    );
                }
                if want.is_ok() {
                    self.check_host_range(pa, pages)?;
                }
            }
            Call::Topup { h, pa, pages } => {
                let got = self.ctl.topup(&mut self.v, h, pa, pages);
                stat(&call, format!("{got:?}"));
                let host2 = self.m.host.clone();
                let donated2 = self.m.donated.clone();
                let runs2 = self.m.vm(h).map(|v| v.runs.clone());
                let want = self.m.topup(h, pa, pages);
                if !self.took_effect(&got, &want, "topup")? && want.is_ok() {
                    self.m.host = host2;
                    self.m.donated = donated2;
                    self.m.vm_mut(h).unwrap().runs = runs2.unwrap();
                }
                if want.is_ok() {
                    self.check_host_range(pa, pages)?;
                }
            }
            Call::Destroy { h } => {
                let want = self.m.destroy_check(h);
                let got = destroy_all(self.ctl, &mut self.v, h);
                stat(&call, format!("{:?}", got.map(|n| n > 0)));
                ensure!(self, got == want, "destroy: got {got:?}, model {want:?}");
                let scrubs = self.ctl.with_mem(|m| std::mem::take(&mut m.log));
                if want.is_ok() {
                    let (regions, runs) = self.m.destroy_apply(h);
                    // Exactly the donated pages (to the guest, and to the hypervisor for its
                    // state and tables) were scrubbed, each once; none holds a secret.
                    let mut got_pages: Vec<u64> = scrubs
                        .iter()
                        .flat_map(|&(pa, len)| (0..len / PAGE).map(move |i| pa + i * PAGE))
                        .collect();
                    let mut want_pages: Vec<u64> = regions
                        .iter()
                        .filter(|r| r.kind == RegionKind::Donated)
                        .flat_map(|r| (0..r.pages).map(move |i| r.pa + i * PAGE))
                        .chain(
                            runs.iter()
                                .flat_map(|&(pa, n)| (0..n).map(move |i| pa + i * PAGE)),
                        )
                        .collect();
                    got_pages.sort_unstable();
                    want_pages.sort_unstable();
                    for &pa in &got_pages {
                        self.scrubbed[page_idx(pa)] += 1;
                    }
                    ensure!(
                        self,
                        got_pages == want_pages,
                        "destroy {h} scrubbed {scrubs:x?}, model {regions:x?}"
                    );
                    for r in &regions {
                        for i in 0..r.pages {
                            let pa = r.pa + i * PAGE;
                            ensure!(
                                self,
                                self.ctl.with_mem(|m| m.data[page_idx(pa)]) & SECRET != SECRET
                                    || r.kind == RegionKind::Lent,
                                "page {pa:#x} back to the host unscrubbed"
                            );
                            self.check_host_page(pa)?;
                        }
                        self.check_guest_range(h, r.ipa, r.pages)?;
                    }
                    for &(pa, n) in &runs {
                        self.check_host_range(pa, n)?;
                    }
                } else {
                    ensure!(
                        self,
                        scrubs.is_empty(),
                        "failed destroy scrubbed {scrubs:x?}"
                    );
                }
                ensure!(
                    self,
                    self.ctl.with_mem(|m| m.bad.is_empty()),
                    "bad scrubs {:x?}",
                    self.ctl.with_mem(|m| m.bad.clone())
                );
            }
            Call::Give {
                h,
                pa,
                ipa,
                pages,
                kind,
            } => {
                let want = self.m.give_check(h, pa, ipa, pages, kind);
                let low = self.low_cache(h);
                let got = self.ctl.give(&mut self.v, h, pa, ipa, pages, kind);
                stat(&call, format!("{got:?} {kind:?}"));
                if self.took_effect_low(&got, &want, "give", low)? {
                    self.m.give_apply(h, pa, ipa, pages, kind);
                    if kind == RegionKind::Donated {
                        // The guest writes its secrets.
                        self.ctl.with_mem(|m| {
                            for i in 0..pages {
                                m.data[page_idx(pa + i * PAGE)] = SECRET | h;
                            }
                        });
                    }
                }
                if want.is_ok() {
                    self.check_host_range(pa, pages)?;
                    self.check_guest_range(h, ipa, pages)?;
                } else {
                    // Boundaries only: nothing may have changed.
                    self.check_host_range(pa, 0)?;
                    self.check_guest_range(h, ipa, 0)?;
                }
                if got.is_err() && want.is_ok() {
                    self.check_all()?;
                }
            }
            Call::VcpuInit {
                h,
                vcpu,
                entry,
                ctx,
            } => {
                let got = self.ctl.vcpu_init(h, vcpu, entry, ctx);
                stat(&call, format!("{got:?}"));
                let want = self.m.vcpu_init(h, vcpu, entry, ctx);
                ensure!(self, got == want, "vcpu_init: got {got:?}, model {want:?}");
            }
            Call::VcpuState { h, vcpu } => {
                let got = self.ctl.vcpu_state(h, vcpu);
                let want = self.m.vcpu_state(h, vcpu);
                ensure!(self, got == want, "vcpu_state: got {got:?}, model {want:?}");
            }
            Call::BeginRun { h, vcpu, cpu } => {
                let got = self.ctl.begin_run(h, vcpu, cpu).map(|(start, claim)| {
                    self.claims.insert((h, vcpu), claim);
                    start
                });
                stat(
                    &call,
                    format!(
                        "{:?}",
                        got.map(|r| (r.boot.is_some(), r.mmio_value.is_some()))
                    ),
                );
                let want = self.m.begin_run(h, vcpu, cpu);
                let got2 = got.map(
                    |RunStart {
                         boot,
                         mmio_value,
                         vttbr,
                     }| { (boot, mmio_value, vttbr) },
                );
                // A boot carries the VM's SVE length.
                let vq = self.m.vm(h).map_or(0, |v| v.sve_vq);
                let want2 = want.map(|(boot, mmio)| {
                    (
                        boot.map(|(entry, x0)| (entry, x0, vq)),
                        mmio,
                        self.ctl.vm(h).map_or(0, |v| v.vttbr),
                    )
                });
                ensure!(
                    self,
                    got2 == want2,
                    "begin_run: got {got2:x?}, model {want2:x?}"
                );
            }
            Call::EndRun { h, vcpu, cpu, end } => {
                let claim = self
                    .claims
                    .remove(&(h, vcpu))
                    .expect("a running vCPU's claim");
                self.ctl.end_run(claim, cpu, end);
                stat(&call, format!("{end:?}"));
                self.m.end_run(h, vcpu, end);
            }
            Call::MmioComplete { h, vcpu, value } => {
                let got = self.ctl.mmio_complete(h, vcpu, value);
                stat(&call, format!("{got:?}"));
                let want = self.m.mmio_complete(h, vcpu, value);
                ensure!(
                    self,
                    got == want,
                    "mmio_complete: got {got:?}, model {want:?}"
                );
            }
            Call::CpuOn {
                h,
                target,
                entry,
                ctx,
            } => {
                let got = self.ctl.psci_cpu_on(h, target, entry, ctx);
                stat(&call, format!("{}", got as i64));
                let want = self.m.cpu_on(h, target, entry, ctx);
                ensure!(
                    self,
                    got == want,
                    "psci_cpu_on: got {got:#x}, model {want:#x}"
                );
            }
            Call::AffinityInfo { h, target } => {
                let got = self.ctl.psci_affinity_info(h, target);
                let want = self.m.affinity_info(h, target);
                ensure!(
                    self,
                    got == want,
                    "affinity_info: got {got:#x}, model {want:#x}"
                );
            }
            Call::Share { h, ipa, share } => {
                let want = self.m.share_check(h, ipa, share);
                let low = self.low_cache(h);
                let got = self.ctl.guest_share(&mut self.v, h, ipa, share);
                stat(&call, format!("{got:?} share={share}"));
                if self.took_effect_low(&got, &want.map(|_| ()), "guest_share", low)? {
                    self.m.share_apply(h, want.unwrap(), share);
                }
                if let Ok(pa) = want {
                    self.check_host_range(pa, 1)?;
                    self.check_guest(h, ipa)?;
                    if got.is_err() {
                        self.check_all()?;
                    }
                }
            }
        }
        self.check_meta()?;
        self.check_trace()?;
        self.k += 1;
        if self.k.is_multiple_of(FULL_CHECK_EVERY) {
            self.check_all()?;
        }
        Ok(())
    }

    /// Stops every vCPU, destroys every VM and checks that the host got everything back.
    fn finish(mut self) -> Result<(), TestCaseError> {
        self.check_all()?;
        for (h, vcpu, cpu) in self.m.running() {
            self.step(Call::EndRun {
                h,
                vcpu,
                cpu,
                end: RunEnd::Runnable,
            })?;
        }
        for h in self.m.live() {
            self.step(Call::Destroy { h })?;
        }
        ensure!(self, self.ctl.handles().next().is_none(), "VMs left");
        for p in 0..RAM_PAGES {
            let pa = RAM_BASE + p * PAGE;
            let m = self.ctl.with_host_s2(|s2, a| s2.query(a, Ipa(pa)));
            ensure!(
                self,
                m.is_some_and(|m| m.pa.0 == pa
                    && m.state == PageState::Owned
                    && m.attrs == Attrs::RAM_RWX),
                "host page {pa:#x} not back: {m:?}"
            );
        }
        // Every page was scrubbed once per donation to a (now destroyed) protected VM.
        for p in 0..RAM_PAGES as usize {
            ensure!(
                self,
                self.scrubbed[p] == self.m.donated[p],
                "page {:#x} scrubbed {} times, donated {} times",
                RAM_BASE + p as u64 * PAGE,
                self.scrubbed[p],
                self.m.donated[p]
            );
        }
        ensure!(
            self,
            self.ctl.alloc().tables.live_pages() == self.base_pages + self.ctl.registry_pages(),
            "table pages leaked: {} live, {} after Control::new, {} for the VM table",
            self.ctl.alloc().tables.live_pages(),
            self.base_pages,
            self.ctl.registry_pages()
        );
        ensure!(
            self,
            self.ctl.alloc().adopted_pages() == 0,
            "{} pages donated for VM state never given back",
            self.ctl.alloc().adopted_pages()
        );
        Ok(())
    }
}

/// With `CONTROL_TRACE` set, a panic inside a call prints the calls that led to it (the
/// last one printed is the shrunk case's).
impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("CONTROL_TRACE").is_some() {
            eprintln!(
                "panic in call {} (oom={}, {} tables live, base {}); last calls:\n{:#x?}",
                self.k,
                self.oom,
                self.ctl.alloc().tables.live_pages(),
                self.base_pages,
                self.recent
            );
        }
    }
}

fn run_case(limit: Option<usize>, ops: &[Raw]) -> Result<(), TestCaseError> {
    barriers::trace::clear();
    let mut run = Run::new(limit);
    for &raw in ops {
        let call = decode(&run.m, raw);
        if let (Some(l), true) = (limit, raw.0 >> 30 != 0) {
            // Out-of-memory cases: mostly only 0..=6 table pages of headroom for this call
            // (`give` holds 4 back for undoing),
            // so any split may fail, sometimes a fixed ceiling of `l` pages above the start.
            let headroom = (raw.0 >> 28) as usize % 7;
            let t = &run.ctl.alloc().tables;
            t.set_limit(Some(t.live_pages() + headroom));
            run.step(call)?;
            let t = &run.ctl.alloc().tables;
            t.set_limit(Some(run.base_pages + run.ctl.registry_pages() + l));
        } else {
            run.step(call)?;
        }
    }
    if limit.is_some() {
        // Tearing down needs no table memory.
        let t = &run.ctl.alloc().tables;
        t.set_limit(Some(t.live_pages()));
    }
    run.finish()
}

fn cases() -> u32 {
    std::env::var("CONTROL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn raw() -> impl Strategy<Value = Raw> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
}

#[test]
fn random_host_calls_match_model() {
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    // A quarter of the cases run with the table allocator limited to a few pages.
    let limit = prop_oneof![3 => Just(None), 1 => (0..24usize).prop_map(Some)];
    let strat = (limit, proptest::collection::vec(raw(), OPS));
    // The raw input says little (calls are decoded against the model): report the reason,
    // which lists the decoded calls.
    if let Err(e) = runner.run(&strat, |(limit, ops)| run_case(limit, &ops)) {
        match e {
            TestError::Fail(reason, (limit, _)) => {
                panic!("control model test failed (limit {limit:?}): {reason}")
            }
            TestError::Abort(reason) => panic!("control model test aborted: {reason}"),
        }
    }
    let calls = CALLS.load(Ordering::Relaxed);
    STATS.with(|s| {
        for (k, v) in s.borrow().iter() {
            eprintln!("  {v:>7}  {k}");
        }
    });
    eprintln!("control model: {n} cases, {calls} host calls");
    if n >= 100 {
        assert!(calls >= 100_000, "only {calls} calls");
    }
}

// ---- Targeted corner cases. ----

/// This test thread's VTTBR owner, with the host's VMID loaded.
fn host_vttbr() -> Vttbr {
    // SAFETY: host test: the recording backend, one owner per test.
    unsafe { Vttbr::assume_loaded(0) }
}

/// The control state over the model's RAM: 40-bit guest IPAs, FEAT_S2FWB, 8-bit VMIDs.
fn new_ctl(a: TestAlloc, v: &mut Vttbr, parange: u64) -> Result<Ctl, s2mm::Error> {
    Control::new(
        a,
        FakeMem::new(),
        v,
        MemRegion {
            base: RAM_BASE,
            size: RAM_PAGES * PAGE,
        },
        40,
        parange,
        true,
        false,
    )
}

fn ctl(parange: u64) -> Ctl {
    new_ctl(TestAlloc::new(), &mut host_vttbr(), parange).unwrap()
}

/// VM_CREATE with `VM_CREATE_PAGES` host pages from the top of RAM (the first free run there).
fn create(c: &Ctl, v: &mut Vttbr, nr: u64, flags: u64) -> HostResult<u64> {
    let run = VM_CREATE_PAGES * PAGE;
    let pa = (1..RAM_PAGES / VM_CREATE_PAGES)
        .map(|k| RAM_END - k * run)
        .find(|&pa| (0..VM_CREATE_PAGES).all(|i| c.host_state(pa + i * PAGE) == CompState::Owned))
        .expect("free host pages for VM state");
    c.create(v, nr, flags, pa, VM_CREATE_PAGES)
}

#[test]
fn owner_annotation_is_slot_plus_two() {
    for s in 0..MAX_VMS {
        assert_eq!(owner_of_slot(s), OwnerId(2 + s as u16));
    }
}

/// A PA or IPA whose end wraps past 2^64 is out of range: the range checks compute the end
/// without overflowing (a wrapped end would panic in debug builds and pass a naive check in
/// release builds).
#[test]
fn overflowing_ranges_are_range_errors() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 1, 1).unwrap();
    let top = LAST_PAGE;
    assert_eq!(
        c.give(&mut v, h, top, GUEST_RAM_IPA_MIN, 1, RegionKind::Donated),
        Err(HostError::Range)
    );
    assert_eq!(
        c.give(&mut v, h, RAM_BASE, top, 1, RegionKind::Donated),
        Err(HostError::Range)
    );
    assert_eq!(
        c.give(&mut v, h, RAM_BASE, top - PAGE, 2, RegionKind::Donated),
        Err(HostError::Range)
    );
    assert_eq!(c.host_state(RAM_BASE), CompState::Owned);
}

/// Out of tables while splitting the host's block: nothing changes, nothing panics, and the
/// same call succeeds once tables are available.
#[test]
fn give_out_of_tables_changes_nothing() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 1, 1).unwrap();
    let live = c.alloc().tables.live_pages();
    let host_only = c.alloc().tables.live_pages();
    c.alloc().tables.set_limit(Some(live));
    let pa = RAM_BASE + 3 * PAGE;
    assert_eq!(
        c.give(&mut v, h, pa, GUEST_RAM_IPA_MIN, 4, RegionKind::Donated),
        Err(HostError::NoMemory)
    );
    assert_eq!(c.alloc().tables.live_pages(), live);
    for p in 0..16 {
        assert_eq!(c.host_state(RAM_BASE + p * PAGE), CompState::Owned);
        assert_eq!(c.host_annotation(RAM_BASE + p * PAGE), None);
    }
    assert!(c.vm(h).unwrap().regions.iter().all(Option::is_none));
    c.alloc().tables.set_limit(None);
    c.give(&mut v, h, pa, GUEST_RAM_IPA_MIN, 4, RegionKind::Donated)
        .unwrap();
    assert_eq!(c.host_state(pa), CompState::NoAccess);
    assert_eq!(destroy_all(&c, &mut v, h), Ok(4));
    assert!(
        c.alloc().tables.live_pages() <= host_only,
        "the guest's tables never came from the pool"
    );
}

/// Donates the 2 MiB block at RAM + 2 MiB to VM `h` at `GUEST_RAM_IPA_MIN` (a block in the
/// guest, an annotated block in the host); returns its PA.
fn donate_block(c: &Ctl, v: &mut Vttbr, h: u64) -> u64 {
    let pa = RAM_BASE + (2 << 20);
    c.give(
        v,
        h,
        pa,
        GUEST_RAM_IPA_MIN,
        BLOCK_PAGES,
        RegionKind::Donated,
    )
    .unwrap();
    pa
}

/// A whole 2 MiB block donated (a block in the guest, an annotated block in the host): sharing
/// one page splits both. If the second split fails, the first is undone: the host never maps
/// a page the guest still owns.
#[test]
fn share_out_of_tables_never_leaves_the_host_a_private_page() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 1, 1).unwrap();
    let pa = donate_block(&c, &mut v, h);
    let ipa = GUEST_RAM_IPA_MIN + 5 * PAGE;
    let live = c.alloc().tables.live_pages();
    // The guest's split comes from its own pages; the host's needs one pool table.
    for headroom in 0..1 {
        c.alloc().tables.set_limit(Some(live + headroom));
        assert_eq!(
            c.guest_share(&mut v, h, ipa, true),
            Err(HostError::NoMemory)
        );
        assert_eq!(c.host_state(pa + 5 * PAGE), CompState::NoAccess);
        assert_eq!(c.host_annotation(pa + 5 * PAGE), Some(owner_of_slot(0)));
        assert_eq!(
            c.guest_state(h, ipa),
            Some((pa + 5 * PAGE, CompState::Owned))
        );
        assert_eq!(c.vm(h).unwrap().shared, 0);
        assert_eq!(c.alloc().tables.live_pages(), live);
    }
    c.alloc().tables.set_limit(Some(live + 1));
    c.guest_share(&mut v, h, ipa, true).unwrap();
    assert_eq!(c.host_state(pa + 5 * PAGE), CompState::SharedBorrowed);
    assert_eq!(
        c.guest_state(h, ipa),
        Some((pa + 5 * PAGE, CompState::SharedOwned))
    );
    // Unsharing needs no table; the guest's block re-merges, the host keeps
    // its page-granular table (`Stage2::set_keep_tables`), so sharing the
    // page again needs no new table either.
    c.alloc()
        .tables
        .set_limit(Some(c.alloc().tables.live_pages()));
    c.guest_share(&mut v, h, ipa, false).unwrap();
    assert_eq!(c.alloc().tables.live_pages(), live + 1);
    c.guest_share(&mut v, h, ipa, true).unwrap();
    assert_eq!(c.alloc().tables.live_pages(), live + 1);
    c.guest_share(&mut v, h, ipa, false).unwrap();
    assert_eq!(c.host_state(pa + 5 * PAGE), CompState::NoAccess);
    let state = c.vm(h).unwrap().cache.runs().next().unwrap();
    assert_eq!(destroy_all(&c, &mut v, h), Ok(BLOCK_PAGES));
    // Scrubbed in steps, in order, each page once: the guest's memory, then the pages that
    // held its state (their start, with the VM's own structure, last).
    let log = c.with_mem(|m| m.log.clone());
    let mut next = pa;
    let mut i = 0;
    while next < pa + BLOCK_PAGES * PAGE {
        assert_eq!(log[i].0, next);
        next += log[i].1;
        i += 1;
    }
    assert_eq!(next, pa + BLOCK_PAGES * PAGE);
    let mut rest: Vec<(u64, u64)> = log[i..].to_vec();
    rest.sort_unstable();
    let end = rest.iter().fold(state.pa, |at, &(p, len)| {
        assert_eq!(p, at);
        p + len
    });
    assert_eq!(end, state.pa + state.pages * PAGE);
}

/// A VM with a claimed vCPU cannot be destroyed; after `end_run` it can.
#[test]
fn destroy_while_running_is_busy() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 2, 0).unwrap();
    c.give(&mut v, h, RAM_BASE, GUEST_RAM_IPA_MIN, 1, RegionKind::Lent)
        .unwrap();
    c.vcpu_init(h, 1, GUEST_RAM_IPA_MIN, 7).unwrap();
    let (start, claim) = c.begin_run(h, 1, 0).unwrap();
    assert_eq!(start.boot, Some((GUEST_RAM_IPA_MIN, 7, 4)));
    assert_eq!(c.begin_run(h, 1, 1).err(), Some(HostError::Busy));
    assert_eq!(destroy_all(&c, &mut v, h), Err(HostError::Busy));
    assert_eq!(c.mmio_complete(h, 1, 0), Err(HostError::Busy));
    c.end_run(claim, 0, RunEnd::AwaitMmio);
    assert_eq!(c.begin_run(h, 1, 1).err(), Some(HostError::State));
    c.mmio_complete(h, 1, 42).unwrap();
    assert_eq!(c.mmio_complete(h, 1, 43), Err(HostError::State));
    let (start, claim) = c.begin_run(h, 1, 1).unwrap();
    assert_eq!(start.mmio_value, Some(42));
    c.end_run(claim, 1, RunEnd::SystemOff);
    assert_eq!(c.begin_run(h, 0, 0).err(), Some(HostError::State));
    assert_eq!(
        c.give(
            &mut v,
            h,
            RAM_BASE + PAGE,
            GUEST_RAM_IPA_MIN + PAGE,
            1,
            RegionKind::Lent
        ),
        Err(HostError::State)
    );
    let state: Vec<(u64, u64)> = c
        .vm(h)
        .unwrap()
        .cache
        .runs()
        .map(|r| (r.pa, r.pages * PAGE))
        .collect();
    assert_eq!(destroy_all(&c, &mut v, h), Ok(0));
    let mut log = c.with_mem(|m| m.log.clone());
    log.sort_unstable();
    let end = log.iter().fold(state[0].0, |at, &(pa, len)| {
        assert_eq!(pa, at, "scrubs cover the state pages once, in pieces");
        pa + len
    });
    assert_eq!(
        (state.len(), end),
        (1, state[0].0 + state[0].1),
        "only the VM's state pages are scrubbed, not the lent ones"
    );
    assert_eq!(c.host_state(RAM_BASE), CompState::Owned);
}

/// A CPU whose PA size cannot hold the guest IPA size: the control state refuses to start
/// and frees its tables.
#[test]
fn small_parange_is_refused_at_start() {
    let a = TestAlloc::new();
    let r = new_ctl(a.clone(), &mut host_vttbr(), 1);
    assert!(matches!(r, Err(s2mm::Error::UnsupportedPaRange)));
    assert_eq!(a.tables.live_pages(), 0);
}

/// The region table is full after MAX_REGIONS calls; the next give changes nothing.
#[test]
fn region_slots_run_out() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 1, 1).unwrap();
    for i in 0..MAX_REGIONS as u64 {
        c.give(
            &mut v,
            h,
            RAM_BASE + 2 * i * PAGE,
            GUEST_RAM_IPA_MIN + 2 * i * PAGE,
            1,
            RegionKind::Donated,
        )
        .unwrap();
    }
    let pa = RAM_BASE + 1024 * PAGE;
    assert_eq!(
        c.give(
            &mut v,
            h,
            pa,
            GUEST_RAM_IPA_MIN + (1 << 20),
            1,
            RegionKind::Donated
        ),
        Err(HostError::NoMemory)
    );
    assert_eq!(c.host_state(pa), CompState::Owned);
    // A give that continues a region needs no slot: it extends that region (how a
    // large range is given, 2 MiB per call).
    c.give(
        &mut v,
        h,
        RAM_BASE + PAGE,
        GUEST_RAM_IPA_MIN + PAGE,
        1,
        RegionKind::Donated,
    )
    .unwrap();
    let vm = c.vm(h).unwrap();
    let r0 = vm.region_of(GUEST_RAM_IPA_MIN + PAGE).copied().unwrap();
    assert_eq!((r0.ipa, r0.pa, r0.pages), (GUEST_RAM_IPA_MIN, RAM_BASE, 2));
    drop(vm);
    // Not contiguous in PA, or of the other kind: a new region, and none is free.
    assert_eq!(
        c.give(
            &mut v,
            h,
            RAM_BASE + 100 * PAGE,
            GUEST_RAM_IPA_MIN + 2 * PAGE,
            1,
            RegionKind::Donated
        ),
        Err(HostError::Denied),
        "IPA in use by region 1"
    );
    assert_eq!(
        c.give(
            &mut v,
            h,
            RAM_BASE + 100 * PAGE,
            GUEST_RAM_IPA_MIN + (64 << 20),
            1,
            RegionKind::Donated
        ),
        Err(HostError::NoMemory)
    );
    assert_eq!(destroy_all(&c, &mut v, h), Ok(MAX_REGIONS as u64 + 1));
}

/// PSCI calls with wild targets and entries answer with PSCI error codes.
#[test]
fn psci_wild_arguments() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 2, 0).unwrap();
    c.give(&mut v, h, RAM_BASE, GUEST_RAM_IPA_MIN, 1, RegionKind::Lent)
        .unwrap();
    assert_eq!(
        c.psci_cpu_on(h, usize::MAX, GUEST_RAM_IPA_MIN, 0),
        psci::INVALID_PARAMETERS
    );
    assert_eq!(
        c.psci_cpu_on(h, 1, GUEST_RAM_IPA_MIN + PAGE, 0),
        PSCI_INVALID_ADDRESS
    );
    assert_eq!(
        c.psci_cpu_on(h, 1, GUEST_RAM_IPA_MIN + 2, 0),
        PSCI_INVALID_ADDRESS
    );
    assert_eq!(
        c.psci_cpu_on(0, 0, GUEST_RAM_IPA_MIN, 0),
        psci::INVALID_PARAMETERS
    );
    assert_eq!(c.psci_cpu_on(h, 1, GUEST_RAM_IPA_MIN, 0), psci::SUCCESS);
    assert_eq!(
        c.psci_cpu_on(h, 1, GUEST_RAM_IPA_MIN, 0),
        hyp_core::vm::control::psci(smccc::psci::error::ON_PENDING)
    );
    assert_eq!(c.psci_affinity_info(h, 1), 2);
    assert_eq!(c.psci_affinity_info(h, 2), psci::INVALID_PARAMETERS);
    assert_eq!(c.psci_affinity_info(9, 0), psci::INVALID_PARAMETERS);
    assert_eq!(c.vcpu_state(h, u64::MAX), Err(HostError::Invalid));
}

/// VM_DESTROY works in bounded steps and holds no lock between them: while
/// VM A is taken apart step by step, VM B keeps running its vCPU, faulting
/// in lazy pages and sharing memory, and A itself can no longer run, get
/// memory or be replaced in its slot until the last step.
#[test]
fn destroy_in_steps_leaves_other_vms_alone() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let a = create(&c, &mut v, 1, hyp_core::vm::control::FLAG_PROTECTED).unwrap();
    let b = create(&c, &mut v, 1, hyp_core::vm::control::FLAG_PROTECTED).unwrap();
    // A: 3 * DESTROY_CHUNK + 5 pages in two regions; B: a lazy region.
    let big = 2 * DESTROY_CHUNK;
    let small = DESTROY_CHUNK + 5;
    c.give(
        &mut v,
        a,
        RAM_BASE,
        GUEST_RAM_IPA_MIN,
        big,
        RegionKind::Donated,
    )
    .unwrap();
    let a2 = RAM_BASE + big * PAGE;
    c.give(
        &mut v,
        a,
        a2,
        GUEST_RAM_IPA_MIN + 0x1000_0000,
        small,
        RegionKind::Donated,
    )
    .unwrap();
    let bpa = a2 + small * PAGE;
    c.give_with(
        &mut v,
        b,
        bpa,
        GUEST_RAM_IPA_MIN,
        16,
        RegionKind::Donated,
        true,
    )
    .unwrap();
    c.vcpu_init(b, 0, GUEST_RAM_IPA_MIN, 0).unwrap();
    let mut steps = 0;
    let mut scrubbed = 0;
    loop {
        let d = c.destroy(&mut v, a).unwrap();
        steps += 1;
        scrubbed += d.scrubbed;
        assert!(d.scrubbed <= DESTROY_CHUNK);
        if !d.more {
            break;
        }
        // A is dying: it cannot run or take memory, its slot is not free.
        assert_eq!(c.begin_run(a, 0, 0).err(), Some(HostError::State));
        assert_eq!(
            c.give(
                &mut v,
                a,
                bpa + 16 * PAGE,
                GUEST_RAM_IPA_MIN + (1 << 30),
                1,
                RegionKind::Donated
            ),
            Err(HostError::State)
        );
        // (Its memory is going: the entry is no longer its RAM.)
        assert!(c.vcpu_init(a, 0, GUEST_RAM_IPA_MIN, 0).is_err());
        // B goes on.
        let (_, claim) = c.begin_run(b, 0, 1).unwrap();
        c.map_on_demand(&mut v, b, GUEST_RAM_IPA_MIN + steps * PAGE)
            .unwrap();
        c.guest_share(&mut v, b, GUEST_RAM_IPA_MIN + steps * PAGE, true)
            .unwrap();
        c.guest_share(&mut v, b, GUEST_RAM_IPA_MIN + steps * PAGE, false)
            .unwrap();
        c.end_run(claim, 1, RunEnd::Runnable);
    }
    assert_eq!(
        steps,
        4,
        "{} pages in steps of {DESTROY_CHUNK}",
        big + small
    );
    assert_eq!(scrubbed, big + small);
    assert_eq!(c.vm(a).err(), Some(HostError::NoVm));
    for p in [RAM_BASE, a2 - PAGE, a2, bpa - PAGE] {
        assert_eq!(c.host_state(p), CompState::Owned);
    }
    assert_eq!(
        c.host_state(bpa),
        CompState::NoAccess,
        "B's memory stays B's"
    );
    assert_eq!(destroy_all(&c, &mut v, b), Ok(16));
}

/// Hostile host, item 1 (`vcpu_init`): the host starts a protected VM's vCPU 0 once, before
/// anything of it ran; it can neither start another vCPU nor restart one after CPU_OFF (that
/// would run code of its choice inside the VM). The guest's own CPU_ON still works, and a
/// normal VM keeps the old rules.
#[test]
fn vcpu_init_of_a_protected_vm_only_once_before_it_runs() {
    let c = ctl(2);
    let mut v = host_vttbr();
    let p = create(&c, &mut v, 2, 1).unwrap();
    c.give(
        &mut v,
        p,
        RAM_BASE,
        GUEST_RAM_IPA_MIN,
        4,
        RegionKind::Donated,
    )
    .unwrap();
    let entry = GUEST_RAM_IPA_MIN;
    assert_eq!(
        c.vcpu_init(p, 1, entry, 0),
        Err(HostError::Denied),
        "not vCPU 0"
    );
    assert_eq!(
        c.vcpu_init(p, 2, entry, 0),
        Err(HostError::Invalid),
        "no vCPU 2"
    );
    assert_eq!(c.vcpu_init(p, 0, entry + 2, 0), Err(HostError::Invalid));
    c.vcpu_init(p, 0, entry, 7).unwrap();
    assert_eq!(
        c.vcpu_init(p, 0, entry, 8),
        Err(HostError::Denied),
        "a second time"
    );
    let (start, claim) = c.begin_run(p, 0, 0).unwrap();
    assert_eq!(start.boot, Some((entry, 7, 4)));
    // The guest starts vCPU 1 itself; once it is off, only the guest restarts it.
    assert_eq!(c.psci_cpu_on(p, 1, entry + PAGE, 9), psci::SUCCESS);
    c.end_run(claim, 0, RunEnd::Runnable);
    let (_, claim) = c.begin_run(p, 1, 1).unwrap();
    c.end_run(claim, 1, RunEnd::CpuOff);
    assert_eq!(c.vcpu_state(p, 1), Ok(1));
    assert_eq!(
        c.vcpu_init(p, 1, entry, 0),
        Err(HostError::Denied),
        "after CPU_OFF"
    );
    assert_eq!(c.vcpu_init(p, 0, entry, 0), Err(HostError::Denied));
    assert_eq!(c.psci_cpu_on(p, 1, entry, 10), psci::SUCCESS);
    // A normal VM: the host starts any vCPU, again after CPU_OFF.
    let n = create(&c, &mut v, 2, 0).unwrap();
    c.give(
        &mut v,
        n,
        RAM_BASE + 8 * PAGE,
        GUEST_RAM_IPA_MIN,
        4,
        RegionKind::Lent,
    )
    .unwrap();
    c.vcpu_init(n, 1, entry, 0).unwrap();
    let (_, claim) = c.begin_run(n, 1, 0).unwrap();
    c.end_run(claim, 0, RunEnd::CpuOff);
    c.vcpu_init(n, 1, entry, 0).unwrap();
    c.vcpu_init(n, 0, entry, 0).unwrap();
}

/// Hostile host, item 7 (`bbm`): a translation fault taken in the break-before-make window of
/// a split or collapse (under the VM's lock, on another CPU) reaches `map_on_demand` only
/// after the window closed, when the page is mapped again: it is retried, never turned into
/// an abort. A fault where nothing is mapped and nothing was given lazily stays a fault.
#[test]
fn bbm_fault_on_a_page_mapped_again_is_retried() {
    use hyp_core::vm::control::Fault;
    let c = ctl(2);
    let mut v = host_vttbr();
    let h = create(&c, &mut v, 2, 1).unwrap();
    donate_block(&c, &mut v, h);
    let other = GUEST_RAM_IPA_MIN + 7 * PAGE;
    for share in [true, false] {
        // The share splits the block (unshare re-merges it): entries of the whole block
        // were broken and made again.
        c.guest_share(&mut v, h, GUEST_RAM_IPA_MIN + 5 * PAGE, share)
            .unwrap();
        assert_eq!(c.map_on_demand(&mut v, h, other), Ok(Fault::Retry));
        assert_eq!(
            c.map_on_demand(&mut v, h, GUEST_RAM_IPA_MIN + 5 * PAGE),
            Ok(Fault::Retry)
        );
    }
    assert_eq!(
        c.map_on_demand(&mut v, h, GUEST_RAM_IPA_MIN + (BLOCK_PAGES + 1) * PAGE),
        Err(HostError::Range)
    );
    assert_eq!(destroy_all(&c, &mut v, h), Ok(BLOCK_PAGES));
}

#[test]
fn sve_vector_length_requests() {
    use hyp_abi::{flag_sve_vq, FLAG_PROTECTED};
    let c = ctl(2);
    let mut v = host_vttbr();
    // Not powers of two, or past 2048 bits: refused, nothing taken.
    for q in [3, 5, 6, 7, 12, 17, 31] {
        assert_eq!(
            create(&c, &mut v, 1, flag_sve_vq(q)),
            Err(HostError::Invalid),
            "{q}"
        );
    }
    // Past the field.
    assert_eq!(
        create(&c, &mut v, 1, flag_sve_vq(32)),
        Err(HostError::Invalid)
    );
    // The least of the request and the cap (512 bits; the host tests probe no CPU).
    for (flags, want) in [
        (0, 4),
        (flag_sve_vq(1), 1),
        (flag_sve_vq(2) | FLAG_PROTECTED, 2),
        (flag_sve_vq(4), 4),
        (flag_sve_vq(16), 4),
    ] {
        let h = create(&c, &mut v, 1, flags).unwrap();
        assert_eq!(c.vm(h).unwrap().sve_vq, want, "flags {flags:#x}");
    }
}
