//! Calls into the hypervisor's host control interface (the random-call
//! fuzzer is `fuzz.rs`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use guest_rt::println;
use hyp_abi::HostError;

/// A VM handle returned by VM_CREATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u64);

/// Issues host call `fid` and returns x0..x3.
pub fn call_full(fid: u32, a: [u64; 4]) -> [u64; 4] {
    let mut args = [0u64; 17];
    args[..4].copy_from_slice(&a);
    let r = <smccc::Hvc as smccc::Call>::call64(fid, args);
    [r[0], r[1], r[2], r[3]]
}

/// Issues host call `fid`: x0 as a value or an error.
pub fn call(fid: u32, a: [u64; 4]) -> Result<u64, HostError> {
    let x0 = call_full(fid, a)[0];
    match HostError::from_code(x0) {
        Some(e) => Err(e),
        None => Ok(x0),
    }
}

/// Pages per run the host donates to the hypervisor for a VM's own state
/// and tables (VM_CREATE, VM_TOPUP): 80 KiB.
const RUN_PAGES: u64 = hyp_abi::VM_CREATE_PAGES;
const RUN_BYTES: u64 = RUN_PAGES * 4096;
/// Runs not in use (the hypervisor gave them back), carved from 2 MiB
/// host allocations.
static FREE_RUNS: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());
/// Each VM's runs, given back to `FREE_RUNS` when it is destroyed.
static VM_RUNS: spin::Mutex<BTreeMap<u64, Vec<u64>>> = spin::Mutex::new(BTreeMap::new());

fn take_run() -> Result<u64, HostError> {
    let mut free = FREE_RUNS.lock();
    if free.is_empty() {
        let base = crate::alloc_pages(2 << 20).ok_or(HostError::NoMemory)?;
        free.extend(
            (0..(2 << 20) / RUN_BYTES)
                .rev()
                .map(|i| base + i * RUN_BYTES),
        );
    }
    free.pop().ok_or(HostError::NoMemory)
}

/// Donates one run to the hypervisor with `fid` (VM_CREATE or VM_TOPUP);
/// returns x0 and records the run for VM `x0` (create) or `args[0]`.
fn donate_run(fid: u32, args: impl FnOnce(u64) -> [u64; 4]) -> Result<u64, HostError> {
    let pa = take_run()?;
    let a = args(pa);
    match call(fid, a) {
        Ok(x0) => {
            let h = if fid == hyp_abi::VM_CREATE { x0 } else { a[0] };
            VM_RUNS.lock().entry(h).or_default().push(pa);
            Ok(x0)
        }
        Err(e) => {
            FREE_RUNS.lock().push(pa);
            Err(e)
        }
    }
}

/// VM_TOPUP: one more run of pages for VM `h`'s stage-2 tables (after a
/// call failed with `NoMemory`, or a vCPU's `MEMORY` exit).
pub fn topup(h: u64) -> Result<(), HostError> {
    donate_run(hyp_abi::VM_TOPUP, |pa| [h, pa, RUN_PAGES, 0]).map(|_| ())
}

/// `op` on VM `h`, topping its table pages up while it fails with
/// `NoMemory` (at most the hypervisor's limit of runs per VM).
pub fn with_topup<T>(h: u64, mut op: impl FnMut() -> Result<T, HostError>) -> Result<T, HostError> {
    loop {
        match op() {
            Err(HostError::NoMemory) => topup(h)?,
            r => return r,
        }
    }
}

/// VCPU_INIT of vCPU `vcpu` of VM `h` at `entry` with `x0`, topping the
/// VM's own pages up while it fails with `NoMemory`: a protected VM's
/// first VCPU_INIT takes pages for the firmware the hypervisor loads into
/// it (`hyp_abi::layout::PVMFW_SIZE`).
pub fn vcpu_init(h: u64, vcpu: u64, entry: u64, x0: u64) -> Result<u64, HostError> {
    with_topup(h, || call(hyp_abi::VCPU_INIT, [h, vcpu, entry, x0]))
}

/// MEM_DONATE (protected) or MEM_LEND of `pages` pages at `pa` to VM
/// `handle` at `ipa`, in steps of at most `hyp_abi::MAX_GIVE_PAGES` (each
/// extends the region the one before made), topping the VM's table pages
/// up when a step needs it; with `lazy` ([`hyp_abi::MEM_FLAG_LAZY`], guest
/// option `lazy`), mapped for the guest page by page on first touch.
pub fn give(
    handle: u64,
    pa: u64,
    ipa: u64,
    pages: u64,
    protected: bool,
    lazy: bool,
) -> Result<(), HostError> {
    let fid = if protected {
        hyp_abi::MEM_DONATE
    } else {
        hyp_abi::MEM_LEND
    };
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(hyp_abi::MAX_GIVE_PAGES);
        let off = done * 4096;
        let mut args = [0u64; 17];
        args[..5].copy_from_slice(&[
            handle,
            pa + off,
            ipa + off,
            n,
            u64::from(lazy) * hyp_abi::MEM_FLAG_LAZY,
        ]);
        with_topup(handle, || {
            let x0 = <smccc::Hvc as smccc::Call>::call64(fid, args)[0];
            match HostError::from_code(x0) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })?;
        done += n;
    }
    Ok(())
}

/// VM_DESTROY to the end: the hypervisor gives a VM's memory back in bounded
/// steps (x1 = 1 while more remain); returns the pages scrubbed in all.
pub fn destroy_vm(h: u64) -> Result<u64, HostError> {
    let mut scrubbed = 0;
    // Each step gives back up to 512 pages of at most 1 TiB of guest memory.
    for _ in 0..(1u64 << 20) {
        let r = call_full(hyp_abi::VM_DESTROY, [h, 0, 0, 0]);
        if let Some(e) = HostError::from_code(r[0]) {
            return Err(e);
        }
        scrubbed += r[0];
        if r[1] == 0 {
            // The pages that held its state are the host's again.
            if let Some(runs) = VM_RUNS.lock().remove(&h) {
                FREE_RUNS.lock().extend(runs);
            }
            return Ok(scrubbed);
        }
        // Between steps this CPU may do other work; say so (on QEMU's
        // round-robin TCG, YIELD also hands the turn to the next CPU).
        // SAFETY: a hint; no memory or register effects.
        unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
    }
    crate::fail(format_args!("VM_DESTROY {h}: no end after 2^20 steps"))
}

/// VM_CREATE, donating one run of pages for the VM's state and tables.
pub fn vm_create(vcpus: u64, flags: u64) -> Result<Handle, HostError> {
    donate_run(hyp_abi::VM_CREATE, |pa| [vcpus, flags, pa, RUN_PAGES]).map(Handle)
}

/// VCPU_RUN's flags on a fresh VM: an unknown bit is `Invalid`, and
/// completing an MMIO read that is not outstanding is `State`; neither runs
/// the vCPU.
pub fn run_flag_checks() {
    let h = match vm_create(1, 0) {
        Ok(h) => h,
        Err(e) => crate::fail(format_args!(
            "VM_CREATE for the VCPU_RUN flag checks: {e:?}"
        )),
    };
    let unknown = call(hyp_abi::VCPU_RUN, [h.0, 0, 2, 0]);
    let early = call(hyp_abi::VCPU_RUN, [h.0, 0, hyp_abi::RUN_COMPLETE_MMIO, 7]);
    let after = call(hyp_abi::VCPU_STATE, [h.0, 0, 0, 0]);
    if let Err(e) = destroy_vm(h.0) {
        crate::fail(format_args!(
            "VM_DESTROY after the VCPU_RUN flag checks: {e:?}"
        ));
    }
    if unknown != Err(HostError::Invalid) || early != Err(HostError::State) || after != Ok(1) {
        crate::fail(format_args!(
            "VCPU_RUN flags: unknown bit {unknown:?} (want Invalid), completion with no read outstanding {early:?} (want State), vCPU state after {after:?} (want Ok(1), off)"
        ));
    }
    println!(
        "host: fuzz: VCPU_RUN flags: unknown bit {unknown:?}, completion with no read outstanding {early:?}, vCPU still off"
    );
}
