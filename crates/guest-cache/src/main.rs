//! Seed 003 (ARM-RULES.md section 3): a secondary vCPU writes data with its
//! MMU and caches off, turns them on, and must read its own data back.
//!
//! 1. vCPU 0 turns its MMU and caches on first, then reads the buffer through
//!    its cacheable mapping, so (on hardware) clean lines holding the old
//!    contents (zeroes) may now sit in the caches.
//! 2. vCPU 0 starts vCPU 1 with PSCI CPU_ON. vCPU 1, MMU and caches off,
//!    writes a pattern over the buffer: Non-cacheable writes that go to
//!    memory, under any stale lines.
//! 3. vCPU 1 turns its MMU and caches on and reads every word back. Without
//!    a VM-wide clean+invalidate by the hypervisor at that moment, it could
//!    hit vCPU 0's stale lines ("why flush only on vcpu0 fails"). The guest
//!    does no cache maintenance itself, as Linux secondaries do not.
//! 4. vCPU 1 reports; vCPU 0 reads the buffer too.
//! 5. With both vCPUs' caches on (the hypervisor no longer traps their
//!    SCTLR_EL1 writes), vCPU 0 does a data-cache set/way operation
//!    (DC CISW). The hypervisor cannot virtualise it: it cleans the whole VM
//!    and re-arms the TVM trap on every vCPU, not only vCPU 0.
//! 6. vCPU 1 then turns its data cache off and on again (as a guest does
//!    around set/way maintenance). Both writes must reach the hypervisor,
//!    and each flushes the VM again; the log shows it. vCPU 1 turns itself
//!    off and vCPU 0 powers the VM off.
//!
//! QEMU (TCG) does not model caches, so there the data always reads back;
//! the hypervisor's count of VM-wide flushes is what shows the flush
//! happened when vCPU 1 (the second vCPU) turned its caches on.
//!
//! vCPU 0 and vCPU 1 only share memory attributes once both have their
//! caches on, so they synchronise through flag words written after that
//! (vCPU 1's result, vCPU 0's set/way flag) and PSCI AFFINITY_INFO.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{mmu, println};
use smccc::psci;

/// Four pages.
const WORDS: usize = 4 * 4096 / 8;
const POLLS: u32 = 10_000_000;
/// How long a vCPU waits for the other's flag (ms of the virtual counter).
const WAIT_MS: u64 = 20_000;
const CONTEXT: u64 = 0xcac4e;

#[repr(C, align(4096))]
struct Buffer(UnsafeCell<[u64; WORDS]>);

// SAFETY: accessed with volatile word accesses by one vCPU at a time,
// handed over through PSCI CPU_ON and AFFINITY_INFO.
unsafe impl Sync for Buffer {}

static BUF: Buffer = Buffer(UnsafeCell::new([0; WORDS]));

/// vCPU 1's verdict, written once its caches are on: 0 none yet, 1 OK, 2 bad.
static RESULT: AtomicU64 = AtomicU64::new(0);

/// Set by vCPU 0 after its set/way operation (both vCPUs' caches are on).
static SET_WAY_DONE: AtomicU64 = AtomicU64::new(0);

fn word(i: usize) -> *mut u64 {
    // SAFETY: i < WORDS (callers iterate over 0..WORDS).
    unsafe { BUF.0.get().cast::<u64>().add(i) }
}

fn pattern(i: usize) -> u64 {
    0x5ca1_ab1e_0000_0000 | ((i as u64) << 8) | ((i as u64 & 0xff) ^ 0xa5)
}

/// Checks every word against `expect`; returns the first mismatch.
fn verify(expect: impl Fn(usize) -> u64) -> Option<(usize, u64, u64)> {
    (0..WORDS).find_map(|i| {
        // SAFETY: `word(i)` is inside BUF.
        let v = unsafe { core::ptr::read_volatile(word(i)) };
        (v != expect(i)).then_some((i, v, expect(i)))
    })
}

fn sctlr_bits(s: u64) -> (u64, u64, u64) {
    (s & 1, (s >> 2) & 1, (s >> 12) & 1)
}

fn secondary(cpu: usize) -> ! {
    let (m, c, _) = sctlr_bits(mmu::sctlr());
    println!("guest-cache: vCPU {cpu} up with MMU and caches off (SCTLR_EL1.M={m} C={c})");
    for i in 0..WORDS {
        // SAFETY: `word(i)` is inside BUF; vCPU 0 does not touch it now.
        unsafe { core::ptr::write_volatile(word(i), pattern(i)) };
    }
    println!(
        "guest-cache: vCPU {cpu} wrote {WORDS} words ({} pages) with its caches off",
        WORDS * 8 / 4096
    );
    let s = mmu::enable();
    let (m, c, i) = sctlr_bits(s);
    println!(
        "guest-cache: vCPU {cpu} turned its MMU and caches on (2nd vCPU to do so, SCTLR_EL1.M={m} C={c} I={i})"
    );
    match verify(pattern) {
        None => {
            println!("guest-cache: vCPU {cpu} read back {WORDS} words after enabling caches: OK");
            RESULT.store(1, Ordering::Release);
        }
        Some((i, got, want)) => {
            println!(
                "guest-cache: vCPU {cpu} read back {WORDS} words after enabling caches: word {i} at {:#x} is {got:#x}, expected {want:#x}",
                word(i) as usize
            );
            RESULT.store(2, Ordering::Release);
        }
    }
    if !guest_rt::gic::wait_until(WAIT_MS, || SET_WAY_DONE.load(Ordering::Acquire) != 0) {
        panic!("vCPU 0 never did its set/way operation");
    }
    // This line is an exit the hypervisor handles (the emulated UART), so
    // vCPU 1 has re-entered, and taken its re-armed TVM, before the SCTLR
    // writes below even if the kick the hypervisor sent has not landed.
    println!("guest-cache: vCPU {cpu} saw vCPU 0's set/way operation");
    let on = mmu::sctlr();
    mmu::set_sctlr(on & !mmu::SCTLR_C);
    let off_state = mmu::caches_on();
    mmu::set_sctlr(on);
    let (m, c, _) = sctlr_bits(mmu::sctlr());
    println!(
        "guest-cache: vCPU {cpu} turned its data cache off (caches on: {off_state}) and on again (SCTLR_EL1.M={m} C={c})"
    );
    guest_rt::cpu_off()
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, arg: u64) -> ! {
    if cpu != 0 {
        if arg != CONTEXT {
            panic!("vCPU {cpu} started with context {arg:#x}");
        }
        secondary(cpu);
    }
    let s = mmu::enable();
    let (m, c, i) = sctlr_bits(s);
    println!(
        "guest-cache: vCPU 0 turned its MMU and caches on (1st vCPU to do so, SCTLR_EL1.M={m} C={c} I={i})"
    );
    // Pull the buffer's old contents (zeroes) into the caches.
    match verify(|_| 0) {
        None => println!(
            "guest-cache: vCPU 0 read the {WORDS}-word buffer through its cacheable mapping: all zero"
        ),
        Some((i, got, _)) => panic!("buffer word {i} is {got:#x} before vCPU 1 ran"),
    }

    let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), CONTEXT)[0] as i64;
    if r != 0 {
        panic!("CPU_ON(1) = {r}");
    }
    if !guest_rt::gic::wait_until(WAIT_MS, || RESULT.load(Ordering::Acquire) != 0) {
        panic!("vCPU 1 gave no verdict");
    }
    let verdict = match RESULT.load(Ordering::Acquire) {
        1 => "OK",
        2 => "MISMATCH",
        _ => "no verdict",
    };
    println!(
        "guest-cache: caches were turned on by vCPU 0, then vCPU 1; vCPU 1 verdict: {verdict}"
    );
    match verify(pattern) {
        None => println!("guest-cache: vCPU 0 reads vCPU 1's {WORDS} words: OK"),
        Some((i, got, want)) => println!(
            "guest-cache: vCPU 0 reads vCPU 1's {WORDS} words: word {i} is {got:#x}, expected {want:#x}"
        ),
    }
    // Set 0, way 0 of level 1: which line does not matter, the hypervisor
    // turns any set/way operation into a VM-wide clean.
    mmu::clean_invalidate_set_way(0);
    println!("guest-cache: vCPU 0 did DC CISW (set/way) with its caches on");
    SET_WAY_DONE.store(1, Ordering::Release);
    let mut polls = 0;
    while guest_rt::hvc(psci::PSCI_AFFINITY_INFO_64, 1, 0, 0)[0] != 1 {
        polls += 1;
        if polls > POLLS {
            panic!("vCPU 1 never turned off");
        }
    }
    println!("guest-cache: done, powering off");
    guest_rt::system_off()
}
