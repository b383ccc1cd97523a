//! A deliberately misbehaving guest (one vCPU). It makes calls nobody
//! implements (by HVC and SMC, which must answer alike: `calls`), touches IPAs outside its RAM and devices (with and without a
//! valid syndrome), reads system registers a guest must not reach, reads the
//! ID registers the hypervisor sanitises, and asks to share memory it does
//! not own. Each exception the hypervisor injects is recorded by the
//! exception hook, which skips the faulting instruction; the guest prints
//! what its EL1 saw. `tests/tests/guest_faults.rs` checks the lines.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{println, Exception, Frame};

mod bbm;
mod calls;
mod leak;

/// An IPA outside guest RAM and every device.
const OUTSIDE: u64 = 0x1_0000_0000;
/// An IPA in the device range below RAM that neither the hypervisor nor the
/// host emulates (the host's window is 0x0a000000..0x0a004000): MMIO nobody
/// answers, so the hypervisor injects an abort.
const UNMAPPED_MMIO: u64 = 0x0c00_0000;
/// MEM_SHARE (KVM vendor hypervisor service, Linux arm-smccc.h).
const MEM_SHARE: u32 = 0xc600_0003;

static COUNT: AtomicU64 = AtomicU64::new(0);
/// The `bbm` mode (guest option `arg=1`) runs.
static BBM: AtomicU64 = AtomicU64::new(0);
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
static LAST_FAR: AtomicU64 = AtomicU64::new(0);

macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading an ID register has no side effects.
        unsafe { asm!(concat!("mrs {0}, ", $reg), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    // Synchronous exceptions from EL1 itself (vector 4: current EL, SPx).
    if e.vector != 4 {
        return false;
    }
    if BBM.load(Ordering::Relaxed) != 0 && mrs!("mpidr_el1") & 0xff == 1 {
        // `bbm`'s vCPU 1: count it and retry the access.
        bbm::ABORTS.store(bbm::ABORTS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        return true;
    }
    // No read-modify-write atomics: with the MMU off they would be
    // exclusives on Device memory. One vCPU takes these exceptions.
    COUNT.store(COUNT.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    LAST_ESR.store(e.esr, Ordering::Relaxed);
    LAST_FAR.store(e.far, Ordering::Relaxed);
    f.elr += 4;
    true
}

/// Runs `f`, then describes the exception it caused (if any).
fn outcome(what: &str, f: impl FnOnce()) {
    let before = COUNT.load(Ordering::Relaxed);
    f();
    if COUNT.load(Ordering::Relaxed) == before {
        println!("guest-faults: {what}: no exception");
        return;
    }
    let esr = LAST_ESR.load(Ordering::Relaxed);
    let far = LAST_FAR.load(Ordering::Relaxed);
    match esr >> 26 {
        0x25 => {
            println!("guest-faults: {what}: data abort injected, ESR_EL1={esr:#x} FAR_EL1={far:#x}")
        }
        0x00 => println!("guest-faults: {what}: undefined instruction, ESR_EL1={esr:#x}"),
        ec => println!("guest-faults: {what}: exception class {ec:#x}, ESR_EL1={esr:#x}"),
    }
}

/// Displays " NAME=value" for each 4-bit field of an ID register value.
struct Fields<'a>(u64, &'a [(&'a str, u32)]);

impl core::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (name, shift) in self.1 {
            write!(f, " {name}={}", (self.0 >> shift) & 0xf)?;
        }
        Ok(())
    }
}

fn fields<'a>(v: u64, names: &'a [(&'a str, u32)]) -> Fields<'a> {
    Fields(v, names)
}

/// The test device's register in the host's window (page 0, past the
/// demo's virtio-mmio transports): reads return the last value written + 1.
const GUARDED: u64 = hyp_abi::layout::HOST_MMIO_IPA + 0x800;
/// A page of the host's window this guest never guards.
const UNGUARDED: u64 = hyp_abi::layout::HOST_MMIO_IPA + 0x1000;

/// `arg=2` (run as a protected VM): upstream MMIO guard, both directions.
/// Its accesses to the host's window abort until it guards their page
/// (MMIO_GUARD), and only there do they reach the host; guarding its own
/// RAM or an unaligned address is refused.
fn mmio_guard() -> ! {
    let features = guest_rt::kvm_features();
    println!(
        "guest-faults: mmio_guard: KVM_FEATURES {features:#x}, MMIO_GUARD offered: {}",
        guest_rt::mmio_guard_offered()
    );
    outcome("mmio_guard: read of 0xa000800 before guarding it", || {
        // SAFETY: an MMIO read in the host's window; the hook skips it if
        // it aborts.
        let _ = unsafe { core::ptr::read_volatile(GUARDED as *const u32) };
    });
    outcome("mmio_guard: write to unguarded 0xa001000", || {
        // SAFETY: as above, a write.
        unsafe { core::ptr::write_volatile(UNGUARDED as *mut u32, 0x11) };
    });
    let ram = guest_rt::entry_point() & !0xfff;
    let r = guest_rt::mmio_guard(ram);
    println!("guest-faults: mmio_guard: MMIO_GUARD({ram:#x}), my own RAM = {r}");
    let r = guest_rt::mmio_guard(GUARDED + 8);
    println!("guest-faults: mmio_guard: MMIO_GUARD(0xa000808), unaligned = {r}");
    let r = guest_rt::mmio_guard(GUARDED & !0xfff);
    println!("guest-faults: mmio_guard: MMIO_GUARD(0xa000000) = {r}");
    let mut got = 0;
    outcome("mmio_guard: write 41 to guarded 0xa000800", || {
        // SAFETY: the host's test device; a write has no effect on memory.
        unsafe { core::ptr::write_volatile(GUARDED as *mut u32, 41) };
    });
    outcome("mmio_guard: read of guarded 0xa000800", || {
        // SAFETY: as above, a read.
        got = unsafe { core::ptr::read_volatile(GUARDED as *const u32) };
    });
    println!("guest-faults: mmio_guard: the host's test device read {got}");
    outcome(
        "mmio_guard: read of unguarded 0xa001000 after guarding 0xa000000",
        || {
            // SAFETY: as for the write above.
            let _ = unsafe { core::ptr::read_volatile(UNGUARDED as *const u32) };
        },
    );
    println!(
        "guest-faults: mmio_guard: {} exceptions taken, powering off",
        COUNT.load(Ordering::Relaxed)
    );
    guest_rt::system_off()
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    if cpu == 1 && BBM.load(Ordering::Acquire) != 0 {
        bbm::toucher();
    }
    if cpu != 0 {
        guest_rt::cpu_off();
    }
    guest_rt::set_exception_hook(on_exception);
    // x0: the VM handle in bits [7:0], the guest option `arg=N` above.
    if x0 >> 8 == 1 {
        BBM.store(1, Ordering::Release);
        bbm::run();
        guest_rt::system_off()
    }
    if x0 >> 8 == 2 {
        mmio_guard();
    }
    if x0 >> 8 == 3 {
        leak::run(x0 & 0xff);
    }
    println!("guest-faults: up");

    // First, hog the CPU: two seconds of busy looping with interrupts masked. The
    // hypervisor's time slice (its own EL2 timer, not maskable by the guest)
    // still gives the physical CPU back to the host, so a guest sharing it
    // keeps running (tests/tests/two_guests.rs).
    println!("guest-faults: spinning for 2 s with interrupts masked");
    guest_rt::gic::irq_mask();
    let freq = guest_rt::gic::counter_hz();
    let start = guest_rt::gic::counter();
    while guest_rt::gic::counter().wrapping_sub(start) < 2 * freq {}
    println!("guest-faults: spun for 2 s with interrupts masked");

    let r = guest_rt::hvc(0xc600_fff0, 0, 0, 0)[0] as i64;
    println!("guest-faults: unknown HVC 0xc600fff0 returned {r}");
    let r = guest_rt::hvc(0x8400_00ff, 0, 0, 0)[0] as i64;
    println!("guest-faults: unknown HVC 0x840000ff returned {r}");
    let r = guest_rt::smc(0xc600_fff0, 0, 0, 0)[0] as i64;
    println!("guest-faults: unknown SMC 0xc600fff0 returned {r}");
    calls::hvc_equals_smc();

    outcome("read at 0x100000000", || {
        // SAFETY: deliberately faults; the hook skips the load.
        let _ = unsafe { core::ptr::read_volatile(OUTSIDE as *const u64) };
    });
    outcome("write at 0x100000008", || {
        // SAFETY: deliberately faults; the hook skips the store.
        unsafe { core::ptr::write_volatile((OUTSIDE + 8) as *mut u64, 0x5a) };
    });
    outcome("ldp at 0xc000000 (no syndrome)", || {
        // SAFETY: a load pair has no valid ISS (ISV = 0); deliberately faults.
        unsafe {
            asm!("ldp {a}, {b}, [{p}]", p = in(reg) UNMAPPED_MMIO, a = out(reg) _, b = out(reg) _, options(nostack));
        }
    });
    outcome("post-indexed ldr at 0xc000010 (no syndrome)", || {
        // SAFETY: writeback addressing has no valid ISS; deliberately faults.
        unsafe {
            asm!("ldr {v}, [{p}], #8", p = inout(reg) UNMAPPED_MMIO + 0x10 => _, v = out(reg) _, options(nostack));
        }
    });
    outcome("str at 0xc000020", || {
        // SAFETY: a syndrome-valid store to MMIO nobody emulates; deliberately faults.
        unsafe { core::ptr::write_volatile((UNMAPPED_MMIO + 0x20) as *mut u32, 1) };
    });
    outcome("mrs s3_0_c15_c0_0 (IMPLEMENTATION DEFINED)", || {
        // SAFETY: deliberately executes an IMPLEMENTATION DEFINED register
        // read; the hook skips it if it is UNDEFINED.
        unsafe { asm!("mrs {0}, s3_0_c15_c0_0", out(reg) _, options(nomem, nostack)) };
    });
    outcome("mrs PMCR_EL0", || {
        // SAFETY: deliberately reads a PMU register; the hook skips it if
        // it is UNDEFINED.
        unsafe { asm!("mrs {0}, pmcr_el0", out(reg) _, options(nomem, nostack)) };
    });
    outcome("mrs PMEVCNTR30_EL0", || {
        // SAFETY: deliberately reads a counter past PMCR_EL0.N; the hook
        // skips it if it is UNDEFINED.
        unsafe { asm!("mrs {0}, pmevcntr30_el0", out(reg) _, options(nomem, nostack)) };
    });

    let pfr0 = mrs!("id_aa64pfr0_el1");
    let l = fields(
        pfr0,
        &[
            ("EL0", 0),
            ("EL1", 4),
            ("EL2", 8),
            ("EL3", 12),
            ("FP", 16),
            ("AdvSIMD", 20),
            ("GIC", 24),
            ("RAS", 28),
            ("SVE", 32),
            ("MPAM", 40),
            ("AMU", 44),
            ("RME", 52),
        ],
    );
    println!("guest-faults: ID_AA64PFR0_EL1={pfr0:#x}{l}");
    let pfr1 = mrs!("id_aa64pfr1_el1");
    let l = fields(
        pfr1,
        &[("MTE", 8), ("RAS_frac", 12), ("SME", 24), ("GCS", 44)],
    );
    println!("guest-faults: ID_AA64PFR1_EL1={pfr1:#x}{l}");
    let dfr0 = mrs!("id_aa64dfr0_el1");
    let l = fields(
        dfr0,
        &[
            ("DebugVer", 0),
            ("TraceVer", 4),
            ("PMUVer", 8),
            ("PMSVer", 32),
            ("DoubleLock", 36),
            ("TraceBuffer", 44),
            ("BRBE", 52),
        ],
    );
    println!("guest-faults: ID_AA64DFR0_EL1={dfr0:#x}{l}");
    let isar1 = mrs!("id_aa64isar1_el1");
    let l = fields(
        isar1,
        &[
            ("APA", 4),
            ("API", 8),
            ("GPA", 24),
            ("GPI", 28),
            ("LS64", 60),
        ],
    );
    println!("guest-faults: ID_AA64ISAR1_EL1={isar1:#x}{l}");
    let mmfr0 = mrs!("id_aa64mmfr0_el1");
    let l = fields(mmfr0, &[("PARange", 0), ("FGT", 56)]);
    println!("guest-faults: ID_AA64MMFR0_EL1={mmfr0:#x}{l}");

    let r = guest_rt::hvc(MEM_SHARE, OUTSIDE, 0, 0)[0] as i64;
    println!("guest-faults: MEM_SHARE(0x100000000) = {r}");
    let r = guest_rt::hvc(MEM_SHARE, 0x4000_0001, 0, 0)[0] as i64;
    println!("guest-faults: MEM_SHARE(0x40000001) = {r}");

    println!(
        "guest-faults: {} exceptions taken, powering off",
        COUNT.load(Ordering::Relaxed)
    );
    guest_rt::system_off()
}
