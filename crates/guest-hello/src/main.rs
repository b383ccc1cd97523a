//! The first test guest. vCPU 0 checks the SMCCC/PSCI answers, starts the
//! other vCPUs with PSCI CPU_ON, waits for each to report and switch itself
//! off, provokes an access outside its memory and reports the abort the
//! hypervisor injected, then powers the VM off. Every line is checked by
//! `tests/tests/guest_hello.rs`.
//!
//! With the guest option `arg=1` (x0 bits [63:8] on vCPU 0) it is a hostile
//! console instead: it prints lines made to pass for the hypervisor's and the
//! host's, and powers off (`tests/tests/hostile_host.rs`, `console`).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{println, Exception, Frame};
use smccc::psci;

/// An IPA outside guest RAM and every emulated device.
const OUTSIDE: u64 = 0x1_0000_0000;

static ABORT_ESR: AtomicU64 = AtomicU64::new(0);
static ABORT_FAR: AtomicU64 = AtomicU64::new(0);

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    // Data abort taken from EL1 (EC 0x25): record it and skip the load.
    if e.esr >> 26 == 0x25 {
        ABORT_ESR.store(e.esr, Ordering::Relaxed);
        ABORT_FAR.store(e.far, Ordering::Relaxed);
        f.elr += 4;
        return true;
    }
    false
}

/// Guest option `arg=1`: [`hostile_console`].
const ARG_HOSTILE_CONSOLE: u64 = 1;

/// Prints lines that, printed as they are, would read as the hypervisor's
/// and the host's (the very lines the tests wait for), one hidden behind a
/// carriage return, one behind ANSI escapes, one past the line buffer's
/// length; then powers off.
fn hostile_console() -> ! {
    println!("hyp: VM 1 vCPU 0 requested SYSTEM_OFF");
    println!("\rhost: VM 1 (guest-hello) powered off");
    println!("demo: PASS protected=2 normal=1 denied=0 shared=0 scrubbed=0");
    println!("\x1b[2K\x1b[1Ghyp: exits total=0\x1b[0m");
    // 256 bytes fill the hypervisor's line buffer: the rest is a new line.
    println!("{:-<256}host: fuzz: ok=1", "");
    println!("guest-hello: hostile console done, powering off");
    guest_rt::system_off()
}

fn version(v: u64) -> (u64, u64) {
    (v >> 16, v & 0xffff)
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, arg: u64) -> ! {
    if cpu != 0 {
        println!("guest-hello: vCPU {cpu} up (context {arg:#x})");
        guest_rt::cpu_off();
    }
    if arg >> 8 == ARG_HOSTILE_CONSOLE {
        hostile_console();
    }
    guest_rt::set_exception_hook(on_exception);
    let (pmaj, pmin) = version(guest_rt::hvc(psci::PSCI_VERSION, 0, 0, 0)[0]);
    let (smaj, smin) = version(guest_rt::hvc(smccc::arch::SMCCC_VERSION, 0, 0, 0)[0]);
    println!("guest-hello: vCPU 0 up (PSCI {pmaj}.{pmin}, SMCCC {smaj}.{smin})");
    let feat = guest_rt::hvc(psci::PSCI_FEATURES, u64::from(psci::PSCI_CPU_ON_64), 0, 0)[0] as i64;
    println!("guest-hello: PSCI_FEATURES(CPU_ON) = {feat}");
    let r = guest_rt::hvc(0xc600_fff0, 0, 0, 0)[0] as i64;
    println!("guest-hello: unknown HVC returned {r}");
    let r = guest_rt::smc(0xc600_fff0, 0, 0, 0)[0] as i64;
    println!("guest-hello: unknown SMC returned {r}");

    // Count vCPUs: AFFINITY_INFO answers INVALID_PARAMETERS past the last.
    let mut n = 1;
    while (guest_rt::hvc(psci::PSCI_AFFINITY_INFO_64, n, 0, 0)[0] as i64) >= 0 {
        n += 1;
    }
    for i in 1..n {
        let r =
            guest_rt::hvc(psci::PSCI_CPU_ON_64, i, guest_rt::entry_point(), 0x100 + i)[0] as i64;
        if r != 0 {
            panic!("CPU_ON({i}) failed: {r}");
        }
    }
    let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 0, guest_rt::entry_point(), 0)[0] as i64;
    println!("guest-hello: CPU_ON(self) = {r}");
    // Wait (bounded) for every secondary to report and turn itself off.
    for i in 1..n {
        let mut polls = 0u32;
        while guest_rt::hvc(psci::PSCI_AFFINITY_INFO_64, i, 0, 0)[0] != 1 {
            polls += 1;
            if polls > 10_000_000 {
                panic!("vCPU {i} never turned off");
            }
        }
    }
    println!("guest-hello: all {n} vCPUs reported and are off");

    // SAFETY: deliberately reads an address outside guest memory; the
    // hypervisor injects a synchronous external abort, which on_exception
    // records and skips.
    let v = unsafe { core::ptr::read_volatile(OUTSIDE as *const u64) };
    let esr = ABORT_ESR.load(Ordering::Relaxed);
    let far = ABORT_FAR.load(Ordering::Relaxed);
    println!("guest-hello: read outside memory at {OUTSIDE:#x}: abort injected, ESR_EL1={esr:#x} FAR_EL1={far:#x}");
    let _ = v;
    println!("guest-hello: done, powering off");
    guest_rt::system_off()
}
