//! Benchmark guest: what exits, calls and interrupts cost, in instructions.
//!
//! Under QEMU `-icount shift=0` the virtual counter (CNTVCT_EL0, 1 GHz on
//! QEMU virt) advances exactly one tick per instruction executed by the
//! machine (all CPUs together), so counter deltas are exact, repeatable
//! instruction counts. On slower counters (raspi4b: one tick per 16
//! instructions) see [`Clock`] for how the counts stay exact. `cargo xtask bench` boots it twice and parses one line per
//! metric: on one CPU with `guests=guest-bench:p:lazy,guest-bench:arg=131` (every
//! metric but `sgi_latency`; one CPU, so the counter sees no other CPU's
//! instructions) and on two CPUs with `guests=guest-bench:v2` (a VM with a
//! second vCPU measures only `sgi_latency`):
//!
//! ```text
//! bench: hvc_null instructions=NN iterations=10000
//! ```
//!
//! Method (1 GHz counter): every iteration is timed alone (`isb; mrs cntvct_el0` before and
//! after) and the metric is the median of the per-iteration deltas minus the
//! median of an empty timed body (the counter reads themselves). The median
//! rather than the mean keeps rare events out of the figure (the
//! hypervisor's 10 ms time slice, QEMU switching to the other CPU).
//!
//! The first VM (protected, its memory mapped at stage 2 on first touch,
//! for `mem_share_unshare` and `s2_fault`) measures; the second (guest
//! option `arg=131`, [`PARTNER`]) is the partner for `vcpu_switch`: it
//! yields in a loop (each `guest_rt::yield_cpu`, the hypervisor's YIELD
//! call, gives its CPU to the host, which runs VM 1 again), enough times
//! for VM 1's round trips ([`partner_yields`]; `cargo xtask profile
//! vcpu_switch` passes its iterations in the option's upper bytes), then
//! powers off. A WFI would wait for an interrupt (the host may sleep until
//! one is due); these VMs only hand the CPU over.
//!
//! `cargo xtask profile` runs one metric of [`PROFILE_METRICS`] in a boot of
//! its own (guest option `arg=` index | iterations << 8; see `profile`).
//!
//! Metrics (see also xtask's `bench` documentation):
//! - `hvc_null`: HVC SMCCC_VERSION, answered at EL2;
//! - `psci_version`: HVC PSCI_VERSION, answered at EL2;
//! - `hvc_unknown`: HVC of a function ID no caller knows ([`UNKNOWN_FID`]),
//!   answered NOT_SUPPORTED at EL2;
//! - `mmio_hyp`: a 32-bit read of GICD_TYPER, emulated at EL2 by the vGIC
//!   (GICv3 on QEMU virt, GICv2 on raspi4b: the same register offset);
//! - `mmio_host`: a 32-bit read of the host's test device at 0x0a000000,
//!   forwarded to the host VM, answered with MMIO_COMPLETE, resumed;
//! - `s2_fault`: first write to a page of a lazily mapped region: stage-2
//!   translation fault, the hypervisor maps that page, the write is retried;
//! - `mem_share_unshare`: MEM_SHARE then MEM_UNSHARE of one page (both HVCs);
//! - `sgi_latency`: from just before vCPU 0 writes ICC_SGI1R_EL1 (GICv2:
//!   GICD_SGIR) until vCPU
//!   1 (running on the other physical CPU, waiting in a WFE loop) executes
//!   the first instruction of its IRQ vector;
//! - `vtimer_latency`: from the virtual timer's compare value (the moment
//!   it fires) until the first instruction of the IRQ vector;
//! - `vcpu_switch`: half the round trip of a YIELD in VM 1 while VM 2 shares
//!   the physical CPU: VM 1 yields to the host, the host runs VM 2, which
//!   yields at once, and the host runs VM 1 again. One switch is
//!   VM -> host -> other VM, including the host's scheduling loop.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::gic;
use guest_rt::println;
use hw_regs::gic::as_usize::{GICD_PIDR2_V2, GICD_PIDR2_V3, GICD_TYPER};

mod profile_metrics;
use profile_metrics::PROFILE_METRICS;

/// Iterations of the cheap metrics.
const ITERS: usize = 10_000;
/// Iterations of the metrics that need another vCPU, a timer or fresh pages.
const ITERS_SLOW: usize = 1_000;
/// Untimed iterations before each measurement (first touches, stack pages).
const WARMUP: usize = 16;
/// Yields VM 2 makes before it powers off when VM 1 times `iters`
/// `vcpu_switch` round trips: enough for the warm-up and the iterations, and
/// the exits VM 1 makes while booting.
const fn partner_yields(iters: usize) -> usize {
    iters + WARMUP + 200
}
/// How far ahead the virtual timer is programmed (ticks = instructions).
const TIMER_DELTA: u64 = 5_000;
/// The host's test device (reads return the last value written + 1).
const HOST_DEVICE: usize = hyp_abi::layout::HOST_MMIO_IPA as usize;
/// Fresh pages for `s2_fault`: the top half of the VM's 16 MiB, never
/// touched otherwise (the image, BSS and stacks lie in the first MiB).
const LAZY_AREA: u64 = hyp_abi::layout::RAM_IPA + (8 << 20);
const PAGE: u64 = 4096;

const SMCCC_VERSION: u64 = 0x8000_0000;
const PSCI_VERSION: u64 = 0x8400_0000;
const PSCI_CPU_ON_64: u32 = 0xc400_0003;
const MEM_SHARE: u64 = 0xc600_0003;
const MEM_UNSHARE: u64 = 0xc600_0004;
/// `hvc_unknown`'s function ID: fast, SMC64, owner 6 (vendor hypervisor),
/// a function number neither KVM's vendor service nor the host's interface
/// defines (guest-faults calls it too and expects NOT_SUPPORTED).
const UNKNOWN_FID: u64 = 0xc600_fff0;

/// Per-iteration deltas.
struct Samples(UnsafeCell<[u32; ITERS]>);
// SAFETY: only vCPU 0 of VM 1 touches the samples.
unsafe impl Sync for Samples {}
static SAMPLES: Samples = Samples(UnsafeCell::new([0; ITERS]));

/// A page for MEM_SHARE/MEM_UNSHARE.
#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: only its address is used, and one write touches it.
unsafe impl Sync for Page {}
static SHARE_PAGE: Page = Page(UnsafeCell::new([0; 4096]));

/// Counter value stamped by the IRQ vector's first instructions.
#[unsafe(no_mangle)]
static BENCH_IRQ_STAMP: AtomicU64 = AtomicU64::new(0);
/// Interrupts handled (acknowledged and ended) per vCPU.
static IRQS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// vCPU 1 is set up and waiting for SGIs.
static SECONDARY_READY: AtomicU64 = AtomicU64::new(0);
/// vCPU 1 may turn itself off.
static SECONDARY_STOP: AtomicU64 = AtomicU64::new(0);

// The vector table: guest-rt's, except that an IRQ taken at EL1 first
// stamps the counter (exception entry is context synchronising, so no ISB),
// then continues in guest-rt's vector (which calls the exception hook).
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 0x800
    .global bench_vectors
bench_vectors:
    .irp i, 0,1,2,3,4
    .balign 0x80
    b       __guest_vectors + \i * 0x80
    .endr
    .balign 0x80
    sub     sp, sp, #16
    stp     x0, x1, [sp]
    mrs     x0, cntvct_el0
    adrp    x1, BENCH_IRQ_STAMP
    str     x0, [x1, :lo12:BENCH_IRQ_STAMP]
    ldp     x0, x1, [sp]
    add     sp, sp, #16
    b       __guest_vectors + 5 * 0x80
    .irp i, 6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    b       __guest_vectors + \i * 0x80
    .endr
"#
);

// For counters slower than one tick per instruction (raspi4b; see
// `Clock`): the same table, except that the IRQ vector first executes
// BENCH_DITHER NOPs (a computed branch into a NOP sled) and only then stamps
// the counter. Its `mrs` comes DITHER_EXTRA + BENCH_DITHER instructions
// later than bench_vectors' (the `b`, adrp, ldr, adr, sub, br).
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 0x800
    .global bench_vectors_dither
bench_vectors_dither:
    .irp i, 0,1,2,3,4
    .balign 0x80
    b       __guest_vectors + \i * 0x80
    .endr
    .balign 0x80
    b       bench_irq_dither
    .irp i, 6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    b       __guest_vectors + \i * 0x80
    .endr

    .text
bench_irq_dither:
    sub     sp, sp, #16
    stp     x0, x1, [sp]
    adrp    x0, BENCH_DITHER
    ldr     x0, [x0, :lo12:BENCH_DITHER]
    adr     x1, 1f
    sub     x1, x1, x0, lsl #2
    br      x1
    .rept   32
    nop
    .endr
1:  mrs     x0, cntvct_el0
    adrp    x1, BENCH_IRQ_STAMP
    str     x0, [x1, :lo12:BENCH_IRQ_STAMP]
    ldp     x0, x1, [sp]
    add     sp, sp, #16
    b       __guest_vectors + 5 * 0x80
"#
);

// void bench_align(u64 target, u64 period): returns at a fixed position
// within the counter's tick: the instruction after the NOP sled lies exactly
// `target` (0..period-1) instructions past a tick edge, for a counter that
// advances once every `period` (<= 23) instructions under -icount. 24
// back-to-back reads r0..r23 (QEMU makes every CNTVCT read exact under
// icount) find the first tick edge: r0 is e = 1 + #{i >= 1 : r_i == r0}
// instructions before it. Label 2 comes K = 80 instructions after r0 plus n
// NOPs, n = (target + e - K) mod period, so its phase is -e + K + n = target
// (mod period). Every instruction count here is fixed by construction;
// `Clock::check` measures a loop of known length through it.
global_asm!(
    r#"
    .text
    .global bench_align
bench_align:
    stp     x19, x20, [sp, #-64]!
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    .irp r, 2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,19,20,21,22,23,24,25,26
    mrs     x\r, cntvct_el0
    .endr
    cmp     x3, x2
    cset    x3, eq
    .irp r, 4,5,6,7,8,9,10,11,12,13,14,15,16,17,19,20,21,22,23,24,25,26
    cmp     x\r, x2
    cinc    x3, x3, eq
    .endr
    add     x3, x3, #1
    add     x4, x0, x3
    mov     x6, #80
    sub     x7, x1, #1
    madd    x4, x7, x6, x4
    udiv    x5, x4, x1
    msub    x5, x5, x1, x4
    adr     x6, 2f
    sub     x6, x6, x5, lsl #2
    br      x6
    .rept   32
    nop
    .endr
2:  ldp     x25, x26, [sp, #48]
    ldp     x23, x24, [sp, #32]
    ldp     x21, x22, [sp, #16]
    ldp     x19, x20, [sp], #64
    ret
"#
);

/// Instructions bench_irq_dither executes before its `mrs` beyond the
/// three of bench_vectors (sub, stp, mrs), NOPs not counted.
const DITHER_EXTRA: u64 = 6;
/// NOPs the dithering IRQ vector executes before stamping.
#[unsafe(no_mangle)]
static BENCH_DITHER: AtomicU64 = AtomicU64::new(0);
/// Largest counter period (instructions per tick) `bench_align`
/// handles: it needs a tick edge among 23 consecutive reads.
const MAX_PERIOD: u64 = 23;

unsafe extern "C" {
    fn bench_align(target: u64, period: u64);
}

/// Returns at phase `target` (plus a constant) of the counter's tick (see
/// the assembly above): a counter read that follows at a fixed distance
/// lands at phase `target` + that distance.
#[inline(always)]
fn align(target: u64, period: u64) {
    // SAFETY: the routine reads the counter and touches only caller-saved
    // registers and the callee-saved ones it restores.
    unsafe { bench_align(target, period) }
}

unsafe extern "C" {
    fn bench_vectors();
    fn bench_vectors_dither();
}

/// Points VBAR_EL1 at `table`, then synchronises (the next exception uses it).
///
/// # Safety
///
/// `table` must be a complete EL1 vector table.
unsafe fn set_vbar(table: unsafe extern "C" fn()) {
    let v = table as *const () as usize as u64;
    // SAFETY: forwarded contract.
    unsafe { asm!("msr vbar_el1, {0}", "isb", in(reg) v, options(nostack)) };
}

fn install_dither_vectors() {
    // SAFETY: a complete EL1 vector table (above).
    unsafe { set_vbar(bench_vectors_dither) };
}

fn install_vectors() {
    // SAFETY: the table above is a complete EL1 vector table.
    unsafe { set_vbar(bench_vectors) };
    guest_rt::set_exception_hook(irq_hook);
}

/// Acknowledges and ends every pending IRQ; the virtual timer is disabled
/// (its level would otherwise stay high).
fn irq_hook(e: &guest_rt::Exception, _frame: &mut guest_rt::Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    loop {
        let a = gic::ack();
        let intid = a.intid();
        if intid >= 1020 {
            return true;
        }
        if intid == gic::VTIMER_PPI {
            gic::vtimer::set_ctl(0);
        }
        gic::eoi(a);
        IRQS[cpu_index()].fetch_add_plain(1);
    }
}

/// Plain (non-exclusive) increments: each counter has one writer, and
/// guests run with their MMUs off, where exclusives are best avoided.
trait PlainAdd {
    fn fetch_add_plain(&self, v: u64);
}
impl PlainAdd for AtomicU64 {
    fn fetch_add_plain(&self, v: u64) {
        self.store(self.load(Ordering::Relaxed) + v, Ordering::Release);
    }
}

fn cpu_index() -> usize {
    let mpidr: u64;
    // SAFETY: reads MPIDR_EL1.
    unsafe { asm!("mrs {0}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    (mpidr & 1) as usize
}

#[inline(always)]
fn now() -> u64 {
    let t: u64;
    // SAFETY: reads the virtual counter after an ISB, so earlier
    // instructions have completed.
    unsafe { asm!("isb", "mrs {0}, cntvct_el0", out(reg) t, options(nomem, nostack)) };
    t
}

#[inline(always)]
fn hvc1(fid: u64, a1: u64) -> u64 {
    let r: u64;
    // SAFETY: an SMCCC call; x0..x17 may be clobbered (SMCCC 1.1 preserves
    // x4..x17, but the hypervisor is not trusted to here).
    unsafe {
        asm!("hvc #0", inout("x0") fid => r, inout("x1") a1 => _,
             inout("x2") 0u64 => _, inout("x3") 0u64 => _, options(nostack));
    }
    r
}

#[inline(always)]
fn read32(addr: usize) -> u32 {
    // SAFETY: device registers of the VM (emulated by the hypervisor or
    // the host); reads have no side effects but the exit being measured.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn samples() -> &'static mut [u32; ITERS] {
    // SAFETY: only vCPU 0 of VM 1 calls this, and never holds two at once.
    unsafe { &mut *SAMPLES.0.get() }
}

/// Median of `s` (sorted in place).
fn median(s: &mut [u32]) -> u64 {
    s.sort_unstable();
    u64::from(s[s.len() / 2])
}

/// Times `f` alone `n` times; the median delta.
fn time(n: usize, mut f: impl FnMut(usize)) -> u64 {
    for i in 0..WARMUP {
        f(i);
    }
    let s = &mut samples()[..n];
    for (i, d) in s.iter_mut().enumerate() {
        let t0 = now();
        f(WARMUP + i);
        let t1 = now();
        *d = (t1 - t0) as u32;
    }
    median(s)
}

/// How counter ticks become instructions.
///
/// QEMU virt's counter runs at 1 GHz: under `-icount shift=0` one tick is
/// one instruction, and every iteration is timed alone ([`time`]).
///
/// Slower counters advance once every `period` instructions: QEMU 10's
/// raspi4b keeps the Cortex-A72's default CNTFRQ_EL0 of 62.5 MHz (16 ns;
/// a real Pi's firmware sets 54 MHz), and QEMU derives the tick from whole
/// nanoseconds (1e9 / CNTFRQ truncated, so 54 MHz would tick every 18
/// instructions, not 18.52). [`Clock::new`] reads CNTFRQ_EL0 and measures
/// the period with a loop of known length rather than trusting it. A single delta is then only
/// good to a tick, so [`time_phased`] starts the iterations of a group of
/// `period` at counter phases 0, 1, .., period-1 ([`align`]): by
/// Hermite's identity (sum over d of floor((L + d) / p) = L) the group's
/// tick deltas add up to exactly the span's instruction count L, provided
/// all `period` iterations cost the same (else the group's mean, to
/// within a tick). The metric is the median over groups, which keeps
/// rare events (the hypervisor's time slice) out as on virt.
#[derive(Clone, Copy)]
struct Clock {
    /// Instructions per counter tick (1 on QEMU virt).
    period: u64,
}

impl Clock {
    fn new() -> Self {
        let hz: u64;
        // SAFETY: reads CNTFRQ_EL0.
        unsafe { asm!("mrs {0}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
        if hz == 1_000_000_000 {
            return Clock { period: 1 };
        }
        if hz == 0 || hz > 1_000_000_000 {
            fail(format_args!(
                "CNTFRQ_EL0 = {hz} Hz: cannot time in instructions"
            ));
        }
        // Calibration: a loop of exactly 2 * CAL_LOOPS instructions, timed
        // alone; the median of 7 runs (a time slice may hit one).
        const CAL_LOOPS: u64 = 100_000;
        let mut ticks = [0u32; 7];
        for t in ticks.iter_mut() {
            let t0 = now();
            spin(CAL_LOOPS);
            *t = (now() - t0) as u32;
        }
        let ticks = median(&mut ticks).max(1);
        // Instructions per tick, in thousandths.
        let milli = 2 * CAL_LOOPS * 1000 / ticks;
        let period = (milli + 500) / 1000;
        if period == 0 || period > MAX_PERIOD || milli.abs_diff(period * 1000) > 5 {
            fail(format_args!(
                "counter at {hz} Hz advances every {}.{:03} instructions: not a whole number <= {MAX_PERIOD}",
                milli / 1000,
                milli % 1000
            ));
        }
        println!(
            "bench: clock hz={hz} insns_per_tick={period} (measured {}.{:03}; 1e9/CNTFRQ = {}.{:03})",
            milli / 1000,
            milli % 1000,
            1_000_000_000 / hz,
            1_000_000_000_000 / hz % 1000
        );
        let c = Clock { period };
        c.check();
        c
    }

    /// Times a loop of exactly 2001 instructions against an empty body:
    /// the phased method must find 2001 (it does on raspi4b).
    fn check(self) {
        let empty = time_phased(self.period, 64, |_| {});
        let known = time_phased(self.period, 64, |_| {
            // SAFETY: a counted loop on a scratch register: 1 + 2 * 1000
            // instructions.
            unsafe {
                asm!("mov x17, #1000", "1: subs x17, x17, #1", "b.ne 1b", out("x17") _, options(nomem, nostack));
            }
        });
        let got = known.saturating_sub(empty);
        println!("bench: clock check: a 2001-instruction loop measured {got}");
        // The compiler's code around the loop may differ from the empty
        // body's by a register move; a broken method would be off by up to
        // a tick.
        if got.abs_diff(2001) > 2 {
            fail(format_args!(
                "phased timing measured {got} for a 2001-instruction loop"
            ));
        }
    }

    /// Median instructions of `f`'s span over `n` iterations (rounded down
    /// to whole groups on slow counters), and the iterations used.
    fn time(self, n: usize, f: impl FnMut(usize)) -> (u64, usize) {
        if self.period == 1 {
            (time(n, f), n)
        } else {
            let groups = n / self.period as usize;
            (
                time_phased(self.period, groups, f),
                groups * self.period as usize,
            )
        }
    }
}

/// A loop of exactly `2 * n` instructions (`n` >= 1).
#[inline(always)]
fn spin(n: u64) {
    // SAFETY: counts a register down; nothing else.
    unsafe { asm!("1: subs {0}, {0}, #1", "b.ne 1b", inout(reg) n => _, options(nomem, nostack)) };
}

/// [`Clock`]'s method: `groups` groups of `period` iterations of `f`, the
/// d-th timed from a counter read at phase d (plus a constant: `align`,
/// then the same code before the read every time); the median over groups
/// of the summed tick deltas (= instructions of one iteration's span).
fn time_phased(period: u64, groups: usize, mut f: impl FnMut(usize)) -> u64 {
    for i in 0..WARMUP {
        f(i);
    }
    let s = &mut samples()[..groups.max(1)];
    let mut i = WARMUP;
    for g in s.iter_mut() {
        let mut sum = 0;
        for d in 0..period {
            align(d, period);
            let t0 = now();
            f(i);
            let t1 = now();
            sum += t1 - t0;
            i += 1;
        }
        *g = sum as u32;
    }
    median(s)
}

fn report(name: &str, instructions: u64, iterations: usize) {
    println!("bench: {name} instructions={instructions} iterations={iterations}");
}

fn fail(why: core::fmt::Arguments<'_>) -> ! {
    println!("bench: FAIL {why}");
    guest_rt::system_off()
}

/// MMIO guard (a protected VM, where the hypervisor offers it): guards
/// the pages of the host's window this guest touches, the test device's
/// (`mmio_host`) and the reap counter's (neighbour modes), before any
/// access; without the guard a protected VM's access there is an abort.
fn guard_host_pages() {
    for ipa in [HOST_DEVICE as u64, guest_rt::demo::REAPED_IPA] {
        if let Err(e) = guest_rt::mmio_guard_range(ipa, 8) {
            fail(format_args!("MMIO_GUARD of {ipa:#x} refused: {e}"));
        }
    }
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    if cpu != 0 {
        secondary();
    }
    // x0: the VM handle in bits [7:0]; above, the host's guest option
    // `arg=N` (`cargo xtask profile`: metric index | iterations << 8).
    let handle = x0 & 0xff;
    let profile_request = x0 >> 8;
    if profile_request == IDLER {
        // Marker 2 (`HINT #0x7a`, a NOP to the architecture): the bench's
        // `boot_to_guest`, every instruction from power-on to here (the
        // insn-count plugin's count at the marker; the idle boot is the one
        // with the plugin and a single VM).
        // SAFETY: a hint; no memory, stack or flags.
        unsafe { asm!("hint #0x7a", options(nomem, nostack, preserves_flags)) };
    }
    guard_host_pages();
    if profile_request & 0xff == TOGGLER {
        toggler(handle, profile_request >> 8);
    }
    if let Some(name) = neighbour_metric(profile_request & 0xff) {
        neighbour(handle, name, (profile_request >> 8) as usize);
    }
    if profile_request & 0xff == PARTNER {
        partner(handle, (profile_request >> 8) as usize);
    }
    if profile_request == IDLER {
        idler(handle);
    }
    install_vectors();
    let gic = probe_gic();
    println!(
        "guest-bench: VM {handle}, {}",
        match gic {
            Some(gic::Version::V3) => "GICv3 present",
            Some(gic::Version::V2) => "GICv2 present",
            None => "GICv3 absent",
        }
    );
    let has_gic = gic.is_some();
    let clock = Clock::new();
    // Counter reads and the loop around an empty body.
    let (base, _) = clock.time(ITERS, |_| {});
    println!("guest-bench: timing overhead {base} instructions (subtracted)");
    // A VM with a second vCPU measures only `sgi_latency` (booted on two
    // physical CPUs); every other metric runs in a one-vCPU VM on one
    // physical CPU, where the counter sees no other CPU's instructions.
    if profile_request != 0 {
        profile(clock, base, has_gic, profile_request);
    }
    let r = guest_rt::hvc(PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 0)[0];
    if r == 0 {
        if has_gic {
            gic::init_distributor();
            init_gic_cpu();
            sgi_latency(clock, base, ITERS_SLOW);
        } else {
            println!("bench: sgi_latency skipped (no GIC for guests on this board)");
        }
        println!("guest-bench: done");
        guest_rt::system_off()
    }
    let cost = |m: u64| m.saturating_sub(base);

    // First: VM 2 is still alive and yielding.
    if !vcpu_switch(clock, base, ITERS_SLOW) {
        println!("bench: vcpu_switch skipped (no partner VM: guests=guest-bench:p:lazy,guest-bench:arg=131)");
    }

    let (m, n) = clock.time(ITERS, |_| {
        hvc1(SMCCC_VERSION, 0);
    });
    report("hvc_null", cost(m), n);
    let (m, n) = clock.time(ITERS, |_| {
        hvc1(PSCI_VERSION, 0);
    });
    report("psci_version", cost(m), n);
    let (m, n) = clock.time(ITERS, |_| {
        hvc1(UNKNOWN_FID, 0);
    });
    report("hvc_unknown", cost(m), n);
    if has_gic {
        // GICD_TYPER: the same offset on GICv3 and GICv2.
        let (m, n) = clock.time(ITERS, |_| {
            read32(gic::GICD_BASE + GICD_TYPER);
        });
        report("mmio_hyp", cost(m), n);
    }
    let (m, n) = clock.time(ITERS, |_| {
        read32(HOST_DEVICE);
    });
    report("mmio_host", cost(m), n);
    s2_fault(clock, base, ITERS_SLOW);
    mem_share_unshare(clock, base, ITERS_SLOW);
    if has_gic {
        gic::init_distributor();
        init_gic_cpu();
        vtimer_latency(clock, ITERS_SLOW);
    } else {
        println!("bench: vtimer_latency skipped (no GIC for guests on this board)");
    }
    println!("guest-bench: done");
    guest_rt::system_off()
}

/// `cargo xtask profile`: measures only metric `request & 0xff` (an index
/// into [`PROFILE_METRICS`], from 1) over `request >> 8` iterations, reports
/// it like the bench does (the same functions the bench calls, `base`
/// the timing overhead it subtracts), and powers off. xtask boots this twice
/// with different iteration counts and divides the difference of QEMU's
/// execution traces by the difference in iterations. `vcpu_switch` needs
/// the partner VM (told the same iterations), `sgi_latency` this VM's
/// second vCPU on a second physical CPU.
fn profile(clock: Clock, base: u64, has_gic: bool, request: u64) -> ! {
    let cost = |m: u64| m.saturating_sub(base);
    let iters = (request >> 8) as usize;
    let metric = (request & 0xff) as usize;
    let name = metric
        .checked_sub(1)
        .and_then(|i| PROFILE_METRICS.get(i))
        .copied()
        .unwrap_or("?");
    // s2_fault uses a fresh page per iteration (the lazy area's 2048, less
    // the warm-up); the others keep their samples in SAMPLES.
    let max = if name == "s2_fault" { 2000 } else { ITERS };
    let needs_gic = matches!(name, "mmio_hyp" | "vtimer_latency" | "sgi_latency");
    if iters == 0 || iters > max || name == "?" || (needs_gic && !has_gic) {
        fail(format_args!(
            "bad profile request {request:#x}: metric {metric} ({name}), {iters} iterations (1..={max})"
        ));
    }
    println!("guest-bench: profiling {name} over {iters} iterations");
    fn simple(
        clock: Clock,
        cost: &impl Fn(u64) -> u64,
        name: &str,
        iters: usize,
        mut f: impl FnMut(),
    ) {
        let (m, n) = clock.time(iters, |_| f());
        report(name, cost(m), n);
    }
    match name {
        "hvc_null" => simple(clock, &cost, name, iters, || {
            hvc1(SMCCC_VERSION, 0);
        }),
        "psci_version" => simple(clock, &cost, name, iters, || {
            hvc1(PSCI_VERSION, 0);
        }),
        "mmio_hyp" => simple(clock, &cost, name, iters, || {
            read32(gic::GICD_BASE + GICD_TYPER);
        }),
        "mmio_host" => simple(clock, &cost, name, iters, || {
            read32(HOST_DEVICE);
        }),
        "hvc_unknown" => simple(clock, &cost, name, iters, || {
            hvc1(UNKNOWN_FID, 0);
        }),
        "s2_fault" => s2_fault(clock, base, iters),
        "mem_share_unshare" => mem_share_unshare(clock, base, iters),
        "vtimer_latency" => {
            gic::init_distributor();
            init_gic_cpu();
            vtimer_latency(clock, iters);
        }
        "vcpu_switch" => {
            if !vcpu_switch(clock, base, iters) {
                fail(format_args!(
                    "vcpu_switch: no partner VM (guest-bench:arg={})",
                    PARTNER | (iters as u64) << 8
                ));
            }
        }
        _ => {
            // sgi_latency: vCPU 1 waits for the SGIs on the other CPU.
            let r = guest_rt::hvc(PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 0)[0];
            if r != 0 {
                fail(format_args!(
                    "sgi_latency: CPU_ON of vCPU 1 refused ({r:#x}; guest option v2)"
                ));
            }
            gic::init_distributor();
            init_gic_cpu();
            sgi_latency(clock, base, iters);
        }
    }
    println!("guest-bench: done");
    guest_rt::system_off()
}

/// `vcpu_switch` over `iters` round trips, while VM 2 ([`partner`], told
/// the same `iters`) yields; then yields until VM 2 has powered off, so it
/// stays out of what follows: a yield's round trip then no longer includes
/// it. False (nothing reported) without a partner: the round trip never
/// drops.
#[inline(never)]
fn vcpu_switch(clock: Clock, base: u64, iters: usize) -> bool {
    let (round_trip, n) = clock.time(iters, |_| {
        guest_rt::yield_cpu();
    });
    let mut partner = false;
    for _ in 0..2 * partner_yields(iters) {
        let t0 = now();
        guest_rt::yield_cpu();
        if (now() - t0) * clock.period * 4 < round_trip * 3 {
            partner = true;
            break;
        }
    }
    if partner {
        report("vcpu_switch", round_trip.saturating_sub(base) / 2, n);
    }
    partner
}

#[inline(never)]
fn s2_fault(clock: Clock, base: u64, iters: usize) {
    let page = |i: usize| (LAZY_AREA + i as u64 * PAGE) as *mut u64;
    let (m, n) = clock.time(iters, |i| {
        // SAFETY: the page lies in the VM's RAM, above everything it uses.
        unsafe { page(i).write_volatile(1) };
    });
    // A write to a mapped page costs a couple of instructions; a fault
    // hundreds. Without on-demand mapping (no `lazy` region) nothing faulted.
    if m < 50 {
        println!("bench: s2_fault skipped (memory not mapped on demand: guest option `lazy`)");
    } else {
        report("s2_fault", m.saturating_sub(base), n);
    }
}

#[inline(never)]
fn mem_share_unshare(clock: Clock, base: u64, iters: usize) {
    let ipa = SHARE_PAGE.0.get() as u64;
    // Touch it (mapped on demand).
    // SAFETY: our own page.
    unsafe { (ipa as *mut u64).write_volatile(0) };
    if hvc1(MEM_SHARE, ipa) != 0 {
        println!("bench: mem_share_unshare skipped (MEM_SHARE refused: not a protected VM)");
        return;
    }
    if hvc1(MEM_UNSHARE, ipa) != 0 {
        fail(format_args!("MEM_UNSHARE refused"));
    }
    let mut bad = 0;
    let (m, n) = clock.time(iters, |_| {
        bad |= hvc1(MEM_SHARE, ipa) | hvc1(MEM_UNSHARE, ipa);
    });
    if bad != 0 {
        fail(format_args!("MEM_SHARE/MEM_UNSHARE failed in the loop"));
    }
    report("mem_share_unshare", m.saturating_sub(base), n);
}

/// The SGI `sgi_latency` sends.
const BENCH_SGI: u32 = 1;

/// This vCPU's GIC CPU interface (`guest_rt::gic`), with the benchmark's
/// SGI and the virtual timer enabled.
fn init_gic_cpu() {
    gic::init_cpu();
    gic::enable(BENCH_SGI);
    gic::enable(gic::VTIMER_PPI);
}

static PROBING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static ABORTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The VM's GIC, if it has one: the CPU interface `guest_rt::gic` finds
/// (ID_AA64PFR0_EL1.GIC), confirmed by the distributor's GICD_PIDR2.ArchRev
/// (bits 7:4; at 0xffe8 on GICv3, 0xfe8 on GICv2). Without a vGIC the read
/// is aborted; the hook says so.
fn probe_gic() -> Option<gic::Version> {
    let v = gic::version();
    let (pidr2, rev) = match v {
        gic::Version::V3 => (GICD_PIDR2_V3, 3),
        gic::Version::V2 => (GICD_PIDR2_V2, 2),
    };
    PROBING.store(true, Ordering::Relaxed);
    guest_rt::set_exception_hook(probe_hook);
    let pidr2 = read32(gic::GICD_BASE + pidr2);
    PROBING.store(false, Ordering::Relaxed);
    install_vectors();
    (!ABORTED.load(Ordering::Relaxed) && (pidr2 >> 4) & 0xf == rev).then_some(v)
}

fn probe_hook(e: &guest_rt::Exception, frame: &mut guest_rt::Frame) -> bool {
    // A synchronous data abort (EC 0x25) during the probe: skip the load.
    if PROBING.load(Ordering::Relaxed) && e.vector == 4 && e.esr >> 26 == 0x25 {
        ABORTED.store(true, Ordering::Relaxed);
        frame.elr += 4;
        return true;
    }
    false
}

/// vCPU 1: takes SGIs until told to stop.
fn secondary() -> ! {
    install_vectors();
    init_gic_cpu();
    gic::irq_unmask();
    SECONDARY_READY.store(1, Ordering::Release);
    while SECONDARY_STOP.load(Ordering::Acquire) == 0 {
        // SAFETY: WFE only waits (QEMU: lets the other CPU run).
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
    // IRQs masked again before turning off.
    gic::irq_mask();
    guest_rt::cpu_off()
}

/// Sends the benchmark's SGI to vCPU 1 and waits until its IRQ vector has
/// stamped the counter; the stamp. `t0` is read just before the send.
fn sgi_round(i: usize, t0: impl FnOnce() -> u64) -> (u64, u64) {
    let seen = IRQS[1].load(Ordering::Acquire);
    let t0 = t0();
    gic::send_sgi_to(BENCH_SGI, 1);
    let mut spins = 0u64;
    while IRQS[1].load(Ordering::Acquire) == seen {
        spins += 1;
        if spins > 10_000_000 {
            fail(format_args!("SGI {i} never reached vCPU 1"));
        }
        // SAFETY: WFE only waits.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
    (t0, BENCH_IRQ_STAMP.load(Ordering::Acquire))
}

/// `sgi_latency` over `iters` SGIs (rounded down to whole groups on slow
/// counters).
fn sgi_latency(clock: Clock, base: u64, iters: usize) {
    let mut spins = 0u64;
    while SECONDARY_READY.load(Ordering::Acquire) == 0 {
        spins += 1;
        if spins > 100_000_000 {
            fail(format_args!("vCPU 1 never became ready"));
        }
        // SAFETY: WFE only waits.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
    let s = samples();
    let p = clock.period;
    let n = if p == 1 {
        for i in 0..WARMUP + iters {
            let (t0, stamp) = sgi_round(i, now);
            if i >= WARMUP {
                s[i - WARMUP] = (stamp - t0) as u32;
            }
        }
        iters
    } else {
        // Clock's phased method: a group's sends start at phases 0..p-1.
        for i in 0..WARMUP {
            sgi_round(i, now);
        }
        let groups = iters / p as usize;
        for (g, slot) in s[..groups].iter_mut().enumerate() {
            let mut sum = 0;
            for d in 0..p {
                align(d, p);
                let (t0, stamp) = sgi_round(g, now);
                sum += stamp - t0;
            }
            *slot = sum as u32;
        }
        groups * p as usize
    };
    let m = median(&mut s[..n / p as usize]);
    // The timed span holds one counter read (and its ISB) too many.
    report("sgi_latency", m.saturating_sub(base / 2), n);
    SECONDARY_STOP.store(1, Ordering::Release);
}

/// Programs the virtual timer `delta` ticks ahead and waits for its IRQ;
/// the stamp minus the compare value (ticks).
fn vtimer_round(i: usize, delta: u64) -> u64 {
    let seen = IRQS[0].load(Ordering::Acquire);
    let cval = now() + delta;
    gic::vtimer::set_cval(cval);
    gic::vtimer::set_ctl(gic::vtimer::ENABLE);
    let mut spins = 0u64;
    while IRQS[0].load(Ordering::Acquire) == seen {
        spins += 1;
        if spins > 10_000_000 {
            fail(format_args!("virtual timer {i} never fired"));
        }
    }
    BENCH_IRQ_STAMP.load(Ordering::Acquire) - cval
}

/// `vtimer_latency` over `iters` timer interrupts (rounded down to whole
/// groups on slow counters).
fn vtimer_latency(clock: Clock, iters: usize) {
    gic::irq_unmask();
    let s = samples();
    let p = clock.period;
    let n = if p == 1 {
        for i in 0..WARMUP + iters {
            let d = vtimer_round(i, TIMER_DELTA);
            if i >= WARMUP {
                s[i - WARMUP] = d as u32;
            }
        }
        iters
    } else {
        // The timer fires exactly on a tick edge (QEMU: at compare value
        // * period ns), so the phase is moved at the other end: the
        // dithering vector executes d NOPs before its stamp, d = 0..p-1
        // within a group, and the group's sum of deltas is exactly the
        // instructions up to that stamp (Hermite's identity, see Clock).
        install_dither_vectors();
        let delta = (TIMER_DELTA / p).max(1);
        for i in 0..WARMUP {
            vtimer_round(i, delta);
        }
        let groups = iters / p as usize;
        for (g, slot) in s[..groups].iter_mut().enumerate() {
            let mut sum = 0;
            for d in 0..p {
                BENCH_DITHER.store(d, Ordering::Release);
                sum += vtimer_round(g, delta);
            }
            // The dithering vector's own instructions before the stamp.
            *slot = (sum - DITHER_EXTRA) as u32;
        }
        BENCH_DITHER.store(0, Ordering::Release);
        install_vectors();
        groups * p as usize
    };
    gic::irq_mask();
    report("vtimer_latency", median(&mut s[..n / p as usize]), n);
}

/// Guest option `arg=` values (low byte) that make this VM the neighbour
/// probe, and the metric each reports: 0x80 while the other VM is
/// destroyed, 0x81 while it toggles its caches ([`TOGGLER`]) and then is
/// destroyed. The bytes above are the iterations after the destroy.
fn neighbour_metric(kind: u64) -> Option<&'static str> {
    match kind {
        0x80 => Some("neighbour_destroy_ns"),
        0x81 => Some("neighbour_cache_toggle_ns"),
        _ => None,
    }
}

/// The neighbour probe: while another VM on another CPU is destroyed, times
/// round trips of an exit that goes through EL2 and the host (an MMIO read
/// of the host's count of VMs it began and finished destroying,
/// `guest_rt::demo::REAPED_IPA`), from the start of the destroy to its end
/// and `iters` more, and reports the longest in nanoseconds of the virtual
/// counter (under `-icount shift=0` on QEMU virt, one instruction each). A
/// lock the other VM's long operation held across the round trip, or a
/// step that kept its CPU too long, would show here.
fn neighbour(handle: u64, name: &str, iters: usize) -> ! {
    // While the other VM toggles its caches, from the start; else from the
    // destroy's start.
    let always = name == "neighbour_cache_toggle_ns";
    /// Bound on the round trips before the host reports the end.
    const MAX_ROUND_TRIPS: usize = 20_000_000;
    println!("guest-bench: VM {handle} probes exit round trips while the other VM is destroyed");
    let mut longest = 0;
    let mut timed = 0;
    let mut after = None;
    let mut n = 0;
    while after.is_none_or(|a| n < a + iters) {
        let t0 = now();
        let state = read32(guest_rt::demo::REAPED_IPA as usize);
        let dt = now() - t0;
        n += 1;
        if always || state & 0xffff != 0 {
            longest = longest.max(dt);
            timed += 1;
        }
        if state >> 16 != 0 && after.is_none() {
            after = Some(n);
        }
        if after.is_none() && n == MAX_ROUND_TRIPS {
            fail(format_args!(
                "{name}: the other VM was not destroyed in {n} round trips"
            ));
        }
    }
    let ns = u128::from(longest) * 1_000_000_000 / u128::from(guest_rt::gic::counter_hz());
    report(name, ns as u64, timed);
    guest_rt::system_off()
}

/// Guest option `arg=` value (low byte) that makes this VM toggle its
/// caches: `arg >> 8` rounds of a set/way clean, caches off, caches on.
/// Without FEAT_S2FWB each of the three traps and makes the hypervisor
/// clean all of the VM's memory.
const TOGGLER: u64 = 0x82;

/// The cache toggler (see [`TOGGLER`]); powers the VM off at the end.
fn toggler(handle: u64, rounds: u64) -> ! {
    let on = guest_rt::mmu::enable();
    for _ in 0..rounds {
        guest_rt::mmu::clean_invalidate_set_way(0);
        guest_rt::mmu::set_sctlr(on & !guest_rt::mmu::SCTLR_C);
        guest_rt::mmu::set_sctlr(on);
    }
    println!("guest-bench: VM {handle} toggled its caches {rounds} times");
    guest_rt::system_off()
}

/// Guest option `arg=` of the `idle_cost` VM ([`idler`]).
const IDLER: u64 = 0x84;

/// Timer waits of [`idler`], each a tenth of a second: one second in all.
const IDLE_WAITS: u64 = 10;

/// The `idle_cost` VM: between the insn-count plugin's markers 0 and 1
/// (`HINT #0x78`, `#0x79`: NOPs to the architecture), waits one second in
/// WFI, its virtual timer 100 ms away each time, so xtask's bench can count
/// what the host and the hypervisor execute meanwhile on every CPU (the
/// plugin's counts; the guest's own few hundred instructions are in them).
fn idler(handle: u64) -> ! {
    install_vectors();
    if probe_gic().is_none() {
        println!("bench: idle_cost skipped (no GIC for guests on this board)");
        guest_rt::system_off()
    }
    gic::init_distributor();
    init_gic_cpu();
    gic::irq_unmask();
    let step = guest_rt::gic::counter_hz() / 10;
    println!("guest-bench: VM {handle} waits {IDLE_WAITS} times 100 ms in WFI (idle_cost)");
    // SAFETY: a NOP hint the insn-count plugin watches for.
    unsafe { asm!("hint #0x78", options(nomem, nostack, preserves_flags)) };
    for i in 0..IDLE_WAITS {
        let seen = IRQS[0].load(Ordering::Acquire);
        gic::vtimer::set_cval(now() + step);
        gic::vtimer::set_ctl(gic::vtimer::ENABLE);
        let mut wakes = 0u64;
        while IRQS[0].load(Ordering::Acquire) == seen {
            wakes += 1;
            if wakes > 1_000_000 {
                fail(format_args!("idle wait {i}: the timer never fired"));
            }
            guest_rt::gic::wfi();
        }
    }
    // SAFETY: as above.
    unsafe { asm!("hint #0x79", options(nomem, nostack, preserves_flags)) };
    println!("guest-bench: VM {handle} idled 1 s");
    guest_rt::system_off()
}

/// Guest option `arg=` (low byte) of the `vcpu_switch` partner VM; the
/// bytes above are the round trips VM 1 times (0: the bench's
/// [`ITERS_SLOW`]; `cargo xtask profile vcpu_switch` passes its own).
const PARTNER: u64 = 0x83;

/// VM 2: yields its CPU [`partner_yields`]`(iters)` times, then powers off.
fn partner(handle: u64, iters: usize) -> ! {
    let iters = if iters == 0 { ITERS_SLOW } else { iters };
    println!("guest-bench: VM {handle} is the vcpu_switch partner");
    for _ in 0..partner_yields(iters) {
        guest_rt::yield_cpu();
    }
    guest_rt::system_off()
}
