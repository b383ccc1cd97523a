//! Calls into the hypervisor's host control interface, and a random-call
//! exerciser that checks the hypervisor survives any argument.

use guest_rt::println;
use hyp_abi::{BootInfo, HostError};

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
            return Ok(scrubbed);
        }
        // Between steps this CPU may do other work; say so (on QEMU's
        // round-robin TCG, YIELD also hands the turn to the next CPU).
        // SAFETY: a hint; no memory or register effects.
        unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
    }
    crate::fail(format_args!("VM_DESTROY {h}: no end after 2^20 steps"))
}

/// VM_CREATE.
pub fn vm_create(vcpus: u64, flags: u64) -> Result<Handle, HostError> {
    call(hyp_abi::VM_CREATE, [vcpus, flags, 0, 0]).map(Handle)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Issues `n` random control calls (valid and invalid handles, vCPUs,
/// addresses, sizes and orders) over a scratch area of host RAM, then
/// destroys every VM and checks the host can use every scratch page again.
/// VCPU_RUN is only issued where it must fail (a random guest image is
/// garbage); the well-formed runs are the guests that follow.
pub fn fuzz(n: u64, seed: u64, info: &BootInfo) {
    const SCRATCH: u64 = 4 << 20;
    let Some(base) = crate::alloc_pages(SCRATCH) else {
        crate::fail(format_args!("no scratch memory for fuzzing"));
    };
    println!(
        "host: fuzz: {n} random control calls over {SCRATCH:#x} bytes at {base:#x}, seed {seed}"
    );
    let mut rng = Rng(seed | 1);
    let mut ok = 0u64;
    let mut errs = [0u64; 9];
    let pick_pa = |rng: &mut Rng| -> u64 {
        match rng.below(10) {
            0 => rng.next() & !0xfff,                                 // anywhere
            1 => base + rng.below(SCRATCH),                           // unaligned
            2 => info.ram_base + info.ram_size - 4096 * rng.below(4), // at the end
            _ => base + 4096 * rng.below(SCRATCH / 4096),
        }
    };
    let pick_ipa = |rng: &mut Rng| -> u64 {
        match rng.below(8) {
            0 => rng.next() & !0xfff,
            1 => rng.below(0x4000_0000) & !0xfff,
            2 => (1 << 40) - 4096 * rng.below(4),
            _ => 0x4000_0000 + 4096 * rng.below(2048),
        }
    };
    for _ in 0..n {
        let h = rng.below(11);
        let v = rng.below(10);
        let (fid, args) = match rng.below(12) {
            0 | 1 => {
                let flags = if rng.below(8) == 0 {
                    rng.below(4)
                } else {
                    rng.below(2)
                };
                (hyp_abi::VM_CREATE, [rng.below(10), flags, 0, 0])
            }
            2 => (hyp_abi::VM_DESTROY, [h, 0, 0, 0]),
            3 | 4 => (
                hyp_abi::MEM_DONATE,
                [h, pick_pa(&mut rng), pick_ipa(&mut rng), rng.below(20)],
            ),
            5 | 6 => (
                hyp_abi::MEM_LEND,
                [h, pick_pa(&mut rng), pick_ipa(&mut rng), rng.below(20)],
            ),
            7 => (
                hyp_abi::VCPU_INIT,
                [h, v, pick_ipa(&mut rng) | rng.below(2), rng.next()],
            ),
            8 => (hyp_abi::VCPU_STATE, [h, v, 0, 0]),
            9 => (hyp_abi::MMIO_COMPLETE, [h, v, rng.next(), 0]),
            10 => (
                hyp_abi::STATS,
                [h, rng.below(12) | (rng.below(2) * 255), 0, 0],
            ),
            // Runs that must fail: no such VM, or flags that must be refused
            // before anything runs (an unknown bit, or completing an MMIO
            // read that no vCPU here can have outstanding: none ever ran).
            _ => match rng.below(2) {
                0 => (hyp_abi::VCPU_RUN, [0, v, 0, 0]),
                _ => (hyp_abi::VCPU_RUN, [h, v, 1 + 2 * rng.below(2), rng.next()]),
            },
        };
        match call(fid, args) {
            Ok(_) => ok += 1,
            Err(e) => errs[(-(e as i64)) as usize] += 1,
        }
    }
    let mut scrubbed = 0;
    for h in 1..=8 {
        if let Ok(s) = destroy_vm(h) {
            scrubbed += s;
        }
    }
    // Every scratch page must be the host's again: write and read each.
    for p in (base..base + SCRATCH).step_by(4096) {
        // SAFETY: scratch pages are host RAM; if the hypervisor had kept one
        // the access would fault and the host would panic with its address.
        unsafe {
            (p as *mut u64).write_volatile(p);
            if (p as *const u64).read_volatile() != p {
                crate::fail(format_args!("scratch page {p:#x} lost its contents"));
            }
        }
    }
    println!(
        "host: fuzz: ok={ok} NotSupported={} Invalid={} NoVm={} Busy={} NoMemory={} Denied={} Range={} State={}",
        errs[1], errs[2], errs[3], errs[4], errs[5], errs[6], errs[7], errs[8]
    );
    println!(
        "host: fuzz: all VMs destroyed ({scrubbed} pages scrubbed), {} scratch pages usable again",
        SCRATCH / 4096
    );
    run_flag_checks();
}

/// VCPU_RUN's flags on a fresh VM: an unknown bit is `Invalid`, and
/// completing an MMIO read that is not outstanding is `State`; neither runs
/// the vCPU.
fn run_flag_checks() {
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
