//! `arg=1` (a protected VM with 2 vCPUs): break-before-make must be
//! invisible. vCPU 1 reads and writes every page of a 2 MiB block of its
//! RAM in a loop while vCPU 0 shares and unshares pages inside that block
//! (each splits or re-merges the block's stage-2 entries, with a break
//! window); any abort vCPU 1 takes is counted. The hypervisor must retry a
//! fault taken in that window, never inject it.

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::println;

/// The block: the last 2 MiB of the guest's 16 MiB (the image sits at the
/// start).
const BLOCK: u64 = 0x4000_0000 + (14 << 20);
const BLOCK_PAGES: u64 = 512;
/// At least this many share/unshare pairs, and on until vCPU 1 made
/// `MIN_PASSES` passes (a loaded host may run vCPU 1 rarely), within
/// `MAX_PAIRS`.
const PAIRS: u64 = 1000;
const MIN_PASSES: u64 = 200;
const MAX_PAIRS: u64 = 200 * PAIRS;
/// MEM_SHARE, MEM_UNSHARE (KVM vendor hypervisor service).
const MEM_SHARE: u32 = 0xc600_0003;
const MEM_UNSHARE: u32 = 0xc600_0004;

/// Aborts taken by vCPU 1 (only it writes this).
pub static ABORTS: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);

/// vCPU 1's loop.
pub fn toucher() -> ! {
    STARTED.store(1, Ordering::Release);
    let mut pass = 0u64;
    while STOP.load(Ordering::Acquire) == 0 {
        for i in 0..BLOCK_PAGES {
            let p = (BLOCK + i * 4096 + (pass % 512) * 8) as *mut u64;
            // SAFETY: guest RAM this vCPU alone uses; volatile so every
            // access reaches memory.
            unsafe {
                let v = p.read_volatile();
                p.write_volatile(v.wrapping_add(1));
            }
        }
        pass += 1;
        PASSES.store(pass, Ordering::Release);
    }
    guest_rt::cpu_off()
}

/// vCPU 0: starts vCPU 1, shares and unshares pages of the block at least
/// `PAIRS` times and until vCPU 1 made `MIN_PASSES` passes, stops vCPU 1
/// and reports.
pub fn run() {
    let r = guest_rt::hvc(smccc::psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 0)[0];
    if r != 0 {
        println!("guest-faults: bbm: CPU_ON(1) failed: {}", r as i64);
        return;
    }
    while STARTED.load(Ordering::Acquire) == 0 {
        core::hint::spin_loop();
    }
    let mut failed = 0;
    let mut pairs = 0;
    while pairs < MAX_PAIRS && (pairs < PAIRS || PASSES.load(Ordering::Acquire) < MIN_PASSES) {
        let i = pairs;
        pairs += 1;
        let ipa = BLOCK + (i * 37 % BLOCK_PAGES) * 4096;
        for fid in [MEM_SHARE, MEM_UNSHARE] {
            if guest_rt::hvc(fid, ipa, 0, 0)[0] != 0 {
                failed += 1;
            }
        }
    }
    STOP.store(1, Ordering::Release);
    while guest_rt::hvc(smccc::psci::PSCI_AFFINITY_INFO_64, 1, 0, 0)[0] != 1 {
        core::hint::spin_loop();
    }
    println!(
        "guest-faults: bbm: {pairs} share/unshare pairs inside a 2 MiB block ({failed} failed) while vCPU 1 made {} passes over it: {} aborts",
        PASSES.load(Ordering::Acquire),
        ABORTS.load(Ordering::Acquire)
    );
}
