//! Each VM's state and stage-2 tables live in pages its host donated for it (VM_CREATE,
//! VM_TOPUP), never in the hypervisor's pool: one VM running out cannot make another VM's
//! calls or faults fail, the pages come back scrubbed, and the number of VMs is limited by
//! the VMID width, not by a table.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use hyp_core::platform::MemRegion;
use hyp_core::vm::control::{
    owner_of_slot, Control, HostError, PhysMem, RegionKind, GUEST_RAM_IPA_MIN, MAX_VMS_VMID8,
    OWNER_HYP, VM_CREATE_PAGES,
};
use hyp_core::vm::memcache::host::TestAlloc;
use s2mm::ownership::CompState;
use s2mm::{Vttbr, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE;

/// Scrubs recorded, by page.
#[derive(Default)]
struct Log(Vec<u64>);

impl PhysMem for Log {
    fn scrub(&mut self, pa: u64, len: u64) {
        self.0.extend((0..len / PAGE).map(|i| pa + i * PAGE));
    }
    fn clean(&mut self, _pa: u64, _len: u64) {}
}

fn host_vttbr() -> Vttbr {
    // SAFETY: host test: the recording backend, one owner per test.
    unsafe { Vttbr::assume_loaded(0) }
}

fn ctl(ram: MemRegion, vmid16: bool) -> Control<TestAlloc, Log> {
    Control::new(
        TestAlloc::new(),
        Log::default(),
        &mut host_vttbr(),
        ram,
        40,
        2,
        true,
        vmid16,
    )
    .unwrap()
}

fn destroy(c: &Control<TestAlloc, Log>, v: &mut Vttbr, h: u64) {
    while c.destroy(v, h).unwrap().more {}
}

/// A VM given only `VM_CREATE_PAGES` runs out of table pages; the NoMemory changes nothing,
/// the hypervisor's pool gives it nothing, another VM is not affected, and a VM_TOPUP lets
/// the same give (and a lazy fault) succeed.
#[test]
fn a_vm_runs_out_of_its_own_pages_only() {
    let ram = MemRegion {
        base: 0x4000_0000,
        size: 64 << 20,
    };
    let c = ctl(ram, false);
    let mut v = host_vttbr();
    let a_state = ram.end() - VM_CREATE_PAGES * PAGE;
    let b_state = a_state - 64 * PAGE;
    let a = c.create(&mut v, 1, 1, a_state, VM_CREATE_PAGES).unwrap();
    let b = c.create(&mut v, 1, 1, b_state, 64).unwrap();
    assert_eq!(c.host_annotation(a_state), Some(OWNER_HYP));
    assert_eq!(c.host_state(a_state + 3 * PAGE), CompState::NoAccess);
    // The host cannot give those pages to anyone else.
    assert_eq!(
        c.give(
            &mut v,
            b,
            a_state,
            GUEST_RAM_IPA_MIN,
            1,
            RegionKind::Donated
        ),
        Err(HostError::Denied)
    );
    let pool = c.alloc().tables.live_pages();
    // One page per GiB of IPA space: each needs a level-2 and a level-3 table.
    let mut pa = ram.base;
    let mut gib = 1;
    let failed_at = loop {
        let ipa = gib << 30;
        match c.give(&mut v, a, pa, ipa, 1, RegionKind::Donated) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, HostError::NoMemory);
                break ipa;
            }
        }
        pa += 2 << 20;
        gib += 1;
        assert!(gib < 64, "a VM_CREATE_PAGES VM never ran out");
    };
    assert!(gib > 3, "only {gib} gives fit");
    assert_eq!(
        c.host_state(pa),
        CompState::Owned,
        "the failed give changed nothing"
    );
    assert!(
        c.cache_available(a).unwrap() < 2,
        "fewer pages left than one give needs"
    );
    // The pool only grew by the host's own splits (one table per 2 MiB block given).
    assert!(c.alloc().tables.live_pages() - pool <= gib as usize);
    // B is not affected.
    c.give(&mut v, b, pa + (1 << 20), 1 << 30, 1, RegionKind::Donated)
        .unwrap();
    // A lazy region of A faults in only after a top-up.
    let lazy_pa = pa + (4 << 20);
    let lazy_ipa = 40 << 30;
    assert_eq!(
        c.give(&mut v, a, pa, failed_at, 1, RegionKind::Donated),
        Err(HostError::NoMemory)
    );
    let top = b_state - 4 * PAGE;
    c.topup(&mut v, a, top, 2).unwrap();
    assert_eq!(c.host_annotation(top + PAGE), Some(OWNER_HYP));
    assert_eq!(c.host_annotation(top + 2 * PAGE), None);
    c.give(&mut v, a, pa, failed_at, 1, RegionKind::Donated)
        .unwrap();
    c.give_with(&mut v, a, lazy_pa, lazy_ipa, 4, RegionKind::Donated, true)
        .unwrap();
    assert_eq!(
        c.map_on_demand(&mut v, a, lazy_ipa),
        Err(HostError::NoMemory)
    );
    c.topup(&mut v, a, top - 4 * PAGE, 4).unwrap();
    c.map_on_demand(&mut v, a, lazy_ipa).unwrap();
    // Bad top-ups.
    assert_eq!(
        c.topup(&mut v, a, top, 1),
        Err(HostError::Denied),
        "already the hypervisor's"
    );
    assert_eq!(c.topup(&mut v, a, top + 1, 1), Err(HostError::Invalid));
    assert_eq!(c.topup(&mut v, a, ram.end(), 1), Err(HostError::Range));
    assert_eq!(c.topup(&mut v, a, ram.base, 513), Err(HostError::Invalid));
    assert_eq!(c.topup(&mut v, 99, ram.base, 1), Err(HostError::NoVm));
    // Destroying A gives every one of its pages back, scrubbed; B's stay.
    let donated = c.vm(a).unwrap().cache.runs().map(|r| r.pages).sum::<u64>();
    destroy(&c, &mut v, a);
    let scrubbed = c.with_mem(|m| core::mem::take(&mut m.0));
    for p in [
        a_state,
        a_state + 15 * PAGE,
        top,
        top + PAGE,
        top - 4 * PAGE,
    ] {
        assert!(scrubbed.contains(&p), "{p:#x} not scrubbed");
        assert_eq!(c.host_state(p), CompState::Owned);
    }
    assert_eq!(donated, VM_CREATE_PAGES + 6);
    assert_eq!(c.host_annotation(b_state), Some(OWNER_HYP));
    destroy(&c, &mut v, b);
    assert_eq!(c.alloc().adopted_pages(), 0);
}

/// With 16-bit VMIDs, VMs past 255 get their own VMID and owner annotation; with 8-bit
/// VMIDs, the 256th VM_CREATE is refused with NoMemory and changes nothing.
#[test]
fn vm_count_is_the_vmid_width() {
    let n = MAX_VMS_VMID8 as u64 + 45;
    let ram = MemRegion {
        base: 0x4000_0000,
        size: (n + 8) * VM_CREATE_PAGES * PAGE,
    };
    for vmid16 in [false, true] {
        let c = ctl(ram, vmid16);
        let mut v = host_vttbr();
        let mut handles = Vec::new();
        for i in 0..n {
            let pa = ram.base + i * VM_CREATE_PAGES * PAGE;
            match c.create(&mut v, 1, 1, pa, VM_CREATE_PAGES) {
                Ok(h) => handles.push((h, pa)),
                Err(e) => {
                    assert!(!vmid16 && i == MAX_VMS_VMID8 as u64, "VM {i}: {e:?}");
                    assert_eq!(e, HostError::NoMemory);
                    assert_eq!(c.host_state(pa), CompState::Owned);
                    break;
                }
            }
        }
        let want = if vmid16 { n } else { MAX_VMS_VMID8 as u64 };
        assert_eq!(handles.len() as u64, want);
        assert_eq!(c.handles().count() as u64, want);
        // Each VM's memory carries its own owner, and its VTTBR its own VMID.
        let data = ram.base + (n + 4) * VM_CREATE_PAGES * PAGE;
        let last = handles.last().unwrap().0;
        c.give(
            &mut v,
            last,
            data,
            GUEST_RAM_IPA_MIN,
            1,
            RegionKind::Donated,
        )
        .unwrap();
        assert_eq!(
            c.host_annotation(data),
            Some(owner_of_slot(last as usize - 1))
        );
        for &(h, _) in &handles {
            let vm = c.vm(h).unwrap();
            assert_eq!(u64::from(vm.vmid), h);
            assert_eq!(vm.vttbr >> 48, h);
        }
        for &(h, pa) in &handles {
            destroy(&c, &mut v, h);
            assert_eq!(c.host_state(pa), CompState::Owned);
        }
        assert_eq!(c.host_state(data), CompState::Owned);
        assert!(c.handles().next().is_none());
        assert_eq!(c.alloc().adopted_pages(), 0);
    }
}

/// Hostile host, item 9: VM_CREATE publishes a VM only once its set-up (at EL2: the vGIC) is
/// done. A call about the new handle made during the set-up does not answer until the VM is
/// complete; a set-up that fails leaves no VM and gives every page back.
#[test]
fn vm_create_publishes_only_a_finished_vm() {
    use std::sync::mpsc;
    use std::time::Duration;
    let ram = MemRegion {
        base: 0x4000_0000,
        size: 16 << 20,
    };
    let c: &'static Control<TestAlloc, Log> = Box::leak(Box::new(ctl(ram, true)));
    let mut v = host_vttbr();
    let state = ram.end() - VM_CREATE_PAGES * PAGE;
    let (tx, rx) = mpsc::channel();
    let h = c
        .create_with(&mut v, 1, 1, state, VM_CREATE_PAGES, |vm, _| {
            let h = vm.handle;
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(c.vcpu_state(h, 0)).expect("send"));
            // Another CPU's call on the handle waits for the set-up.
            assert!(
                rx.recv_timeout(Duration::from_millis(100)).is_err(),
                "a call reached the VM during its set-up"
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(
        rx.recv().unwrap(),
        Ok(1),
        "answered once the VM is complete"
    );
    destroy(c, &mut v, h);
    // A set-up that fails: no VM, the pages are the host's again, nothing adopted.
    let pool = c.alloc().tables.live_pages();
    let r = c.create_with(&mut v, 1, 1, state, VM_CREATE_PAGES, |vm, v| {
        vm.map_device(v, 0x0801_0000, 0x0801_0000, 0x2000)?;
        Err(HostError::NoMemory)
    });
    assert_eq!(r, Err(HostError::NoMemory));
    assert!(c.handles().next().is_none());
    assert_eq!(c.host_state(state), CompState::Owned);
    assert_eq!(c.host_annotation(state), None);
    assert_eq!(c.alloc().adopted_pages(), 0);
    assert!(c.alloc().tables.live_pages() <= pool);
    assert!(
        c.with_mem(|m| m.0.contains(&state)),
        "its pages were scrubbed"
    );
}
