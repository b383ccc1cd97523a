//! The control state's own invariant, checked on request (the host's AUDIT
//! call, `hyp_abi::AUDIT`, and the model test): every page the host gave
//! away is accounted for exactly once, and the stage-2 tables agree with the
//! book-keeping.
//!
//! Under the host lock (held throughout) and each VM's lock in turn:
//! - **Each VM's pages, seen from the host.** Every page of a donated region
//!   is unmapped in the host's stage 2 with this VM's owner annotation, or
//!   (shared back by the guest) mapped SHARED_BORROWED there while the guest
//!   maps it SHARED_OWNED; every page of a lent region is mapped
//!   SHARED_OWNED in the host's; every page of its runs (VM_CREATE,
//!   VM_TOPUP) is annotated as the hypervisor's. So no page a guest owns is
//!   host-mapped as the host's own.
//! - **Each VM's stage 2.** A live VM maps every page of its eager regions,
//!   and of its lazy ones at most, at the region's PA with the state its
//!   kind gives (donated: OWNED or SHARED_OWNED; lent: SHARED_BORROWED);
//!   every RAM mapping lies in one of its regions; a dying VM maps no RAM;
//!   `shared` counts its SHARED_OWNED pages.
//! - **A protected VM's firmware.** Every page mapped in its window
//!   (`hyp_abi::layout::PVMFW_IPA`) is a page of one of the VM's own runs,
//!   OWNED by the guest, and a dying VM maps none.
//! - **The host's stage 2.** It maps only by identity; every annotated or
//!   shared page belongs to exactly one VM's region or run of the matching
//!   kind (so no page is in two guests).

use super::{owner_of_slot, Control, PhysMem, RegionKind, VmExtra, VmStatus, OWNER_HYP};
use super::{GUEST_RAM_IPA_MIN, PAGE_SIZE};
use crate::vm::memcache::{HypAlloc, VmRead};
use s2mm::{Entry, Ipa, PageState};

/// How many VMs' regions and runs of each kind hold one host page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Claims {
    donated: u32,
    lent: u32,
    runs: u32,
    /// The slot of the (last) VM with a donated region holding it.
    donor_slot: usize,
}

/// Violations logged in detail per audit (the count covers all).
const LOGGED: u64 = 8;

impl<A: HypAlloc, M: PhysMem, X: VmExtra> Control<A, M, X> {
    /// Checks the control state's invariant (module docs); returns the
    /// number of violations (0: sound). Read-only; holds the host lock for
    /// the whole walk, so it is for tests and the host's fuzzer.
    #[must_use]
    pub fn audit(&self) -> u64 {
        let host = self.host.lock();
        let mut bad = 0u64;
        let mut flag = |what: &str, a: u64, b: u64| {
            bad += 1;
            if bad <= LOGGED {
                log::warn!("audit: {what} ({a:#x}, {b:#x})");
            }
        };
        let mut top = 0;
        for slot in 0..self.max_vms {
            if self.dir[slot / super::LEAF_SLOTS]
                .load(core::sync::atomic::Ordering::Acquire)
                .is_null()
            {
                continue;
            }
            let Ok(vm) = self.lock_vm(slot) else {
                continue;
            };
            top = slot + 1;
            let owner = owner_of_slot(slot);
            let read = VmRead(&self.alloc);
            let dying = vm.status == VmStatus::Dying;
            let mut shared = 0;
            for (i, r) in vm.regions.iter().enumerate() {
                let Some(r) = r else { continue };
                let lazy = vm.lazy & (1 << i) != 0;
                for k in 0..r.pages {
                    let (pa, ipa) = (r.pa + k * PAGE_SIZE, r.ipa + k * PAGE_SIZE);
                    let h = host.s2.query(&self.alloc, Ipa(pa));
                    let g = vm.s2.query(&read, Ipa(ipa));
                    let h_state = h.map(|m| m.state);
                    let g_state = g.map(|m| m.state);
                    if g.is_some_and(|m| m.pa.0 != pa) {
                        flag("guest maps a region page elsewhere", ipa, pa);
                    }
                    if g_state == Some(PageState::SharedOwned) {
                        shared += 1;
                    }
                    let host_ok = match r.kind {
                        RegionKind::Donated => match h_state {
                            None => host.s2.annotation(&self.alloc, Ipa(pa)) == Some(owner),
                            Some(PageState::SharedBorrowed) => {
                                dying || g_state == Some(PageState::SharedOwned)
                            }
                            Some(_) => false,
                        },
                        RegionKind::Lent => h_state == Some(PageState::SharedOwned),
                    };
                    if !host_ok {
                        flag("host's view of a VM's region page", pa, u64::from(owner.0));
                    }
                    let guest_ok = match (g_state, r.kind) {
                        (Some(_), _) if dying => false,
                        (None, _) => dying || lazy,
                        (Some(s), RegionKind::Donated) => {
                            matches!(s, PageState::Owned | PageState::SharedOwned)
                        }
                        (Some(s), RegionKind::Lent) => s == PageState::SharedBorrowed,
                    };
                    if !guest_ok {
                        flag("guest's view of its region page", ipa, pa);
                    }
                }
            }
            if !dying && shared != vm.shared {
                flag("shared pages miscounted", shared, vm.shared);
            }
            for run in vm.cache.runs() {
                for k in 0..run.pages {
                    let pa = run.pa + k * PAGE_SIZE;
                    if host.s2.annotation(&self.alloc, Ipa(pa)) != Some(OWNER_HYP) {
                        flag("a VM's own page is not the hypervisor's", pa, slot as u64);
                    }
                }
            }
            vm.s2.for_each_entry(&read, |ipa, size, e| {
                let Entry::Mapped(m) = e else { return };
                if super::firmware::in_firmware(ipa.0) {
                    // The firmware's pages: the VM's own (one of its runs),
                    // owned by it alone.
                    for k in 0..size / PAGE_SIZE {
                        let pa = m.pa.0 + k * PAGE_SIZE;
                        let own = vm
                            .cache
                            .runs()
                            .any(|r| pa >= r.pa && pa < r.pa + r.pages * PAGE_SIZE);
                        if dying || !own || m.state != PageState::Owned {
                            flag("firmware page not the VM's own", ipa.0 + k * PAGE_SIZE, pa);
                        }
                    }
                    return;
                }
                if ipa.0 < GUEST_RAM_IPA_MIN {
                    return; // devices: the vGIC's frame, assigned devices
                }
                for k in 0..size / PAGE_SIZE {
                    let (ipa, pa) = (ipa.0 + k * PAGE_SIZE, m.pa.0 + k * PAGE_SIZE);
                    if dying || vm.region_of(ipa).and_then(|r| r.pa_of(ipa)) != Some(pa) {
                        flag("guest RAM mapping outside its regions", ipa, pa);
                    }
                }
            });
        }
        let claims = |pa: u64| {
            let mut c = Claims::default();
            for slot in 0..top {
                let Ok(vm) = self.lock_vm(slot) else {
                    continue;
                };
                for r in vm.regions.iter().flatten() {
                    if pa >= r.pa && pa < r.pa + r.pages * PAGE_SIZE {
                        match r.kind {
                            RegionKind::Donated => {
                                c.donated += 1;
                                c.donor_slot = slot;
                            }
                            RegionKind::Lent => c.lent += 1,
                        }
                    }
                }
                c.runs += vm
                    .cache
                    .runs()
                    .filter(|r| pa >= r.pa && pa < r.pa + r.pages * PAGE_SIZE)
                    .count() as u32;
            }
            c
        };
        host.s2.for_each_entry(&self.alloc, |ipa, size, e| {
            let (kind, m_pa) = match e {
                Entry::Mapped(m) if m.state == PageState::Owned => {
                    if m.pa.0 != ipa.0 {
                        flag("host mapping is not the identity", ipa.0, m.pa.0);
                    }
                    return; // each VM's pages were checked above
                }
                Entry::Mapped(m) => (Some(m.state), m.pa.0),
                Entry::Annotated(_) => (None, ipa.0),
            };
            if m_pa != ipa.0 {
                flag("host mapping is not the identity", ipa.0, m_pa);
            }
            for k in 0..size / PAGE_SIZE {
                let pa = ipa.0 + k * PAGE_SIZE;
                let c = claims(pa);
                let one = |d, l, r| c.donated == d && c.lent == l && c.runs == r;
                let ok = match (kind, e) {
                    // Lent (a donated page the guest shared back is
                    // SHARED_BORROWED in the host's).
                    (Some(PageState::SharedOwned), _) => one(0, 1, 0),
                    (Some(_), _) => one(1, 0, 0),
                    (None, Entry::Annotated(o)) if o == OWNER_HYP => one(0, 0, 1),
                    (None, Entry::Annotated(o)) => one(1, 0, 0) && owner_of_slot(c.donor_slot) == o,
                    (None, Entry::Mapped(_)) => false,
                };
                if !ok {
                    flag(
                        "host page not claimed by exactly one VM",
                        pa,
                        u64::from(c.runs),
                    );
                }
            }
        });
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::vm::memcache::host::TestAlloc;

    use super::super::tests::{ctl, host_vttbr as vttbr, state_pa, NoMem, RAM};

    /// A protected VM with 16 donated pages (4 of them lazy, one shared
    /// back) and a normal VM with 16 lent pages.
    fn two_vms(c: &Control<TestAlloc, NoMem>, v: &mut Vttbr) -> (u64, u64) {
        let p = c
            .create(v, 1, FLAG_PROTECTED, state_pa(0), VM_CREATE_PAGES)
            .expect("create");
        let n = c
            .create(v, 1, 0, state_pa(1), VM_CREATE_PAGES)
            .expect("create");
        c.give(v, p, RAM.base, 0x4000_0000, 12, RegionKind::Donated)
            .expect("donate");
        c.give_with(
            v,
            p,
            RAM.base + 0xc000,
            0x4100_0000,
            4,
            RegionKind::Donated,
            true,
        )
        .expect("donate lazily");
        c.give(
            v,
            n,
            RAM.base + 0x10_0000,
            0x4000_0000,
            16,
            RegionKind::Lent,
        )
        .expect("lend");
        c.guest_share(v, p, 0x4000_2000, true).expect("share");
        (p, n)
    }

    #[test]
    fn a_sound_state_has_no_violations() {
        let c = ctl();
        let mut v = vttbr();
        assert_eq!(c.audit(), 0, "fresh");
        let (p, n) = two_vms(&c, &mut v);
        assert_eq!(c.audit(), 0, "two VMs");
        assert_eq!(c.map_on_demand(&mut v, p, 0x4100_1000), Ok(Fault::Mapped));
        assert_eq!(c.audit(), 0, "a lazy page mapped");
        // Half-way through a destroy, and after it.
        // A dying VM (stopped and unmapped, its pages not yet back).
        c.vm(p).expect("vm").status = VmStatus::Dying;
        {
            let mut vm = c.vm(p).expect("vm");
            let (s2, mut alloc) = vm.tables(&c.alloc);
            s2.unmap(&mut alloc, &mut v, Ipa(0), 1 << GUEST_IPA_BITS)
                .expect("unmap");
        }
        assert_eq!(c.audit(), 0, "dying");
        while c.destroy(&mut v, p).expect("destroy").more {
            assert_eq!(c.audit(), 0, "dying");
        }
        while c.destroy(&mut v, n).expect("destroy").more {}
        assert_eq!(c.audit(), 0, "all gone");
    }

    #[test]
    fn a_donated_page_mapped_in_the_host_is_a_violation() {
        let c = ctl();
        let mut v = vttbr();
        two_vms(&c, &mut v);
        // Corrupt: the host maps one donated page as its own again.
        {
            let mut host = c.host.lock();
            let mut alloc = c.alloc.clone();
            host.s2
                .map(
                    &mut alloc,
                    &mut v,
                    Ipa(RAM.base + 0x3000),
                    Pa(RAM.base + 0x3000),
                    PAGE_SIZE,
                    Attrs::RAM_RWX,
                    PageState::Owned,
                )
                .expect("map");
        }
        assert_eq!(c.audit(), 1);
    }

    #[test]
    fn a_page_in_two_guests_and_a_lost_region_are_violations() {
        let c = ctl();
        let mut v = vttbr();
        let (p, n) = two_vms(&c, &mut v);
        // Corrupt: the normal VM's book-keeping also claims two pages the
        // protected VM owns (and its stage 2 does not map them)...
        let stolen = Region {
            ipa: 0x4800_0000,
            pa: RAM.base + 0x4000,
            pages: 2,
            kind: RegionKind::Lent,
        };
        c.vm(n).expect("vm").regions[5] = Some(stolen);
        // 2 pages: host view wrong, guest view missing; each host page
        // claimed twice.
        assert_eq!(c.audit(), 2 + 2 + 2);
        c.vm(n).expect("vm").regions[5] = None;
        assert_eq!(c.audit(), 0);
        // ...and the protected VM forgets its lazy region: 4 annotated
        // host pages belong to nobody.
        let lost = c.vm(p).expect("vm").regions[1].take();
        assert!(lost.is_some());
        assert_eq!(c.audit(), 4);
    }
}
