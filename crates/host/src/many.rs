//! Many VMs at once. `vms=N`: N VMs of one vCPU each (guest-hello, 1 MiB,
//! protected and normal in turn) alive together: all are created, each runs
//! to its SYSTEM_OFF, then all are destroyed and one more is created in a
//! freed slot. `idle=N`: N VMs that are created and never run, so the
//! bench can measure exit costs with many VMs present.

use crate::hostif::{self, call};
use crate::{alloc_pages, fail, GUEST_RAM_IPA, PAGE};
use alloc::vec::Vec;
use guest_rt::println;
use hyp_abi::{exit, BootInfo, HostError, Module};

/// Guest RAM of each VM in `vms=N`.
const RAM: u64 = 1 << 20;
/// VCPU_RUN calls one VM may take to power off.
const MAX_RUNS: u32 = 100_000;

/// Creates `n` one-vCPU VMs that never run; returns their handles.
pub fn idle(n: u64) -> Vec<u64> {
    let v: Vec<u64> = (0..n)
        .map(|i| match hostif::vm_create(1, i % 2) {
            Ok(h) => h.0,
            Err(e) => fail(format_args!("VM_CREATE of idle VM {i}: {e:?}")),
        })
        .collect();
    println!("host: {n} idle VMs created (never run)");
    v
}

/// guest-hello's image.
pub fn hello(info: &BootInfo) -> &Module {
    match info.modules().iter().find(|m| m.name() == "guest-hello") {
        Some(m) => m,
        None => fail(format_args!("no guest-hello image")),
    }
}

/// A VM with `vcpus` vCPUs running `module` in [`RAM`] of host memory
/// (donated when `protected`, else lent); vCPU 0 not yet started. Returns
/// the handle and the entry.
pub fn load(module: &Module, protected: bool, vcpus: u64) -> (u64, u64) {
    let (h, entry, _) = load_at(module, protected, vcpus);
    (h, entry)
}

/// [`load`], also returning the host physical address of the VM's RAM.
pub fn load_at(module: &Module, protected: bool, vcpus: u64) -> (u64, u64, u64) {
    let h = match hostif::vm_create(vcpus, u64::from(protected)) {
        Ok(h) => h.0,
        Err(e) => fail(format_args!("VM_CREATE: {e:?}")),
    };
    let Some(pa) = alloc_pages(RAM) else {
        fail(format_args!("no host memory for VM {h}"));
    };
    // SAFETY: [pa, pa + RAM) is host RAM nobody else uses (bump allocated).
    unsafe { crate::load_image(module, pa) };
    if let Err(e) = hostif::give(h, pa, GUEST_RAM_IPA, RAM / PAGE, protected, false) {
        fail(format_args!("giving memory to VM {h}: {e:?}"));
    }
    (h, module.entry, pa)
}

/// `vms=N` (see the module docs).
pub fn run(info: &BootInfo, n: u64) {
    let module = hello(info);
    let mut handles = Vec::new();
    for i in 0..n {
        let (h, entry) = load(module, i % 2 == 0, 1);
        if let Err(e) = crate::hostif::vcpu_init(h, 0, entry, h) {
            fail(format_args!("VCPU_INIT of VM {h}: {e:?}"));
        }
        handles.push(h);
    }
    println!(
        "host: vms: {n} VMs alive at once (handles {}..={})",
        handles[0],
        handles[handles.len() - 1]
    );
    let mut exits = 0;
    for &h in &handles {
        power_off(h, 1);
        exits += call(hyp_abi::STATS, [h, hyp_abi::STATS_TOTAL, 0, 0]).unwrap_or(0);
    }
    println!("host: vms: all {n} ran to SYSTEM_OFF ({exits} exits), all still alive");
    let mut scrubbed = 0;
    for &h in &handles {
        match hostif::destroy_vm(h) {
            Ok(s) => scrubbed += s,
            Err(e) => fail(format_args!("VM_DESTROY {h}: {e:?}")),
        }
    }
    // A freed slot (and VMID) is used again.
    let again = hostif::vm_create(1, 0);
    let reused = matches!(again, Ok(h) if handles.contains(&h.0));
    if let Ok(h) = again {
        let _ = hostif::destroy_vm(h.0);
    }
    if !reused {
        fail(format_args!(
            "vms: VM_CREATE after destroying all: {again:?}"
        ));
    }
    println!(
        "host: vms: all {n} destroyed ({scrubbed} pages scrubbed), a new VM took a freed slot"
    );
}

/// Runs VM `h`'s `vcpus` vCPUs in turn until the VM powers off (bounded).
pub fn power_off(h: u64, vcpus: u64) {
    for i in 0..MAX_RUNS {
        let v = u64::from(i) % vcpus;
        let r = hostif::call_full(hyp_abi::VCPU_RUN, [h, v, 0, 0]);
        match r[0] {
            exit::YIELD | exit::CPU_OFF => {}
            exit::MEMORY => {
                if let Err(e) = hostif::topup(h) {
                    fail(format_args!("VM_TOPUP of VM {h}: {e:?}"));
                }
            }
            exit::SYSTEM_OFF => return,
            code => match HostError::from_code(code) {
                // A vCPU that is off (not started yet, or CPU_OFF).
                Some(HostError::State) => {}
                Some(e) => fail(format_args!("VCPU_RUN of VM {h}: {e:?}")),
                None => fail(format_args!("VM {h}: unexpected exit {code} ({:#x})", r[1])),
            },
        }
    }
    fail(format_args!("VM {h} did not power off"))
}
