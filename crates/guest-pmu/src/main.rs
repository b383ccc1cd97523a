//! The virtual PMU from a guest's side. x0 at entry: the VM handle in bits
//! [7:0], the guest option `arg=N` above: N's low 4 bits pick the mode, the
//! rest is the work per round in thousands of loop iterations (0: 10).
//!
//! - Mode 0, counting (vCPU 0 only): a VM offered no PMU (ID_AA64DFR0_EL1
//!   PMUVer 0: a protected VM) checks that its registers are UNDEFINED and
//!   stops there. Otherwise, first the hostile accesses (a counter
//!   past PMCR_EL0.N directly and through PMSELR_EL0, a write of PMCEID0,
//!   an event number that does not exist) must be UNDEFINED or harmless;
//!   then the PMU as the vCPU first sees it must be all zero (nothing left
//!   by another VM); then event counter 0 counts INST_RETIRED, counter 1
//!   CPU_CYCLES and the cycle counter runs, each filter asking for EL2 too
//!   (NSH set: the hypervisor must drop it). [`ROUNDS`] times it does its
//!   work and yields. Each round's work must be counted (>= the loop's
//!   instructions), and what a yield adds must be tiny: while the vCPU is
//!   out (the hypervisor's switch, the host, another VM on this CPU, a move
//!   to another CPU) its counters stand still. Instructions are only
//!   counted where the CPU counts them (QEMU: under `-icount`); PMCEID0
//!   says so, and then the instruction checks are skipped and said to be.
//! - Mode 1, overflow (vCPUs 0 and 1): vCPU 1 sets event counter 0 to
//!   CPU_CYCLES 2^32 - 200000 with its overflow interrupt enabled; vCPU 0
//!   counts cycles with no interrupt. Each waits with PPI 23 enabled: vCPU
//!   1 must take exactly one PMU interrupt, with PMOVSSET bit 0, and vCPU 0
//!   none.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_rt::gic::{self, SPURIOUS};
use guest_rt::{println, Exception, Frame};
use smccc::psci;

/// Rounds of work and yield in mode 0.
const ROUNDS: u64 = 20;
/// Most instructions (and cycles) a yield may add to the vCPU's counts:
/// the guest's own few instructions around the HVC. The hypervisor's switch
/// and the host's run are thousands.
const YIELD_MAX: u64 = 200;
/// The PMU's overflow interrupt.
const PMU_PPI: u32 = 23;
/// INST_RETIRED, CPU_CYCLES, SW_INCR.
const INST_RETIRED: u64 = 0x08;
const CPU_CYCLES: u64 = 0x11;
/// PMEVTYPER.NSH: count at EL2 (a guest must not get it).
const NSH: u64 = 1 << 27;

macro_rules! mrs {
    ($r:literal) => {{
        let v: u64;
        // SAFETY: a PMU or ID register read; the hypervisor traps it.
        unsafe { asm!(concat!("mrs {0}, ", $r), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

macro_rules! msr {
    ($r:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: a PMU register write; it only configures counting.
        unsafe { asm!(concat!("msr ", $r, ", {0}"), "isb", in(reg) v, options(nomem, nostack)) };
    }};
}

/// Synchronous exceptions from EL1 (UNDEFs of the hostile accesses).
static UNDEFS: AtomicU32 = AtomicU32::new(0);
/// PMU interrupts per vCPU, and PMOVSSET as each saw it.
static PMU_IRQS: [AtomicU32; 2] = [const { AtomicU32::new(0) }; 2];
static OVS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static OTHER_IRQS: [AtomicU32; 2] = [const { AtomicU32::new(0) }; 2];
/// vCPU 1 finished (1) or gave up (2).
static DONE: AtomicU32 = AtomicU32::new(0);

fn cpu() -> usize {
    (gic::affinity() & 0xff) as usize
}

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    let c = cpu().min(1);
    match e.vector {
        // Synchronous, current EL: one of the hostile accesses. No RMW
        // atomics: the MMU is off.
        4 if e.esr >> 26 == 0 => {
            UNDEFS.store(UNDEFS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            f.elr += 4;
            true
        }
        5 => {
            let a = gic::ack();
            match a.intid() {
                SPURIOUS => {}
                PMU_PPI => {
                    let n = PMU_IRQS[c].load(Ordering::Relaxed) + 1;
                    PMU_IRQS[c].store(n, Ordering::Relaxed);
                    let ovs = mrs!("pmovsclr_el0");
                    OVS[c].store(ovs, Ordering::Relaxed);
                    // Stop counting and clear the overflow: the level drops.
                    msr!("pmcntenclr_el0", u64::MAX);
                    msr!("pmovsclr_el0", ovs);
                }
                _ => OTHER_IRQS[c]
                    .store(OTHER_IRQS[c].load(Ordering::Relaxed) + 1, Ordering::Relaxed),
            }
            if a.intid() != SPURIOUS {
                gic::eoi(a);
            }
            true
        }
        _ => false,
    }
}

/// Runs `f`; whether it took an UNDEF.
fn undefined(f: impl FnOnce()) -> bool {
    let before = UNDEFS.load(Ordering::Relaxed);
    f();
    UNDEFS.load(Ordering::Relaxed) != before
}

fn verdict(undef: bool) -> &'static str {
    if undef {
        "undefined"
    } else {
        "NOT undefined"
    }
}

/// `n` iterations of a 2-instruction loop.
#[inline(never)]
fn work(n: u64) {
    // SAFETY: register-only loop.
    unsafe {
        asm!("1: subs {0}, {0}, #1", "b.ne 1b", inout(reg) n.max(1) => _, options(nomem, nostack));
    }
}

/// The accesses a hostile guest makes: each is UNDEFINED or changes only
/// this vCPU's PMU. Returns whether all behaved.
fn hostile(vm: u64, n: u64) -> bool {
    let mut ok = true;
    // PMEVCNTR30_EL0 exists only with N = 31.
    let past = n < 31
        && undefined(|| {
            let _ = mrs!("pmevcntr30_el0");
        });
    println!(
        "guest-pmu: VM {vm}: PMEVCNTR30_EL0 (N = {n}): {}",
        verdict(past || n == 31)
    );
    ok &= past || n == 31;
    msr!("pmselr_el0", n);
    let sel = undefined(|| {
        let _ = mrs!("pmxevcntr_el0");
    }) && undefined(|| msr!("pmxevtyper_el0", CPU_CYCLES));
    println!(
        "guest-pmu: VM {vm}: PMXEVCNTR/PMXEVTYPER with PMSELR_EL0 = N: {}",
        verdict(sel)
    );
    ok &= sel;
    let ro = undefined(|| msr!("s3_3_c9_c12_6", u64::MAX));
    println!("guest-pmu: VM {vm}: write of PMCEID0_EL0: {}", verdict(ro));
    ok &= ro;
    // An event number no PMU has, and every filter bit: accepted, counts
    // nothing the guest may not see.
    msr!("pmevtyper0_el0", u64::MAX);
    let t = mrs!("pmevtyper0_el0");
    let masked = t & NSH == 0 && t & 0x3f00_0000 == 0;
    println!(
        "guest-pmu: VM {vm}: PMEVTYPER0_EL0 all ones reads {t:#x}{}",
        if masked {
            ""
        } else {
            " (EL2 filter bits kept!)"
        }
    );
    ok &= masked;
    msr!("pmevtyper0_el0", 0);
    ok
}

fn count(vm: u64, per_round: u64) -> bool {
    let dfr0 = mrs!("id_aa64dfr0_el1");
    if (dfr0 >> 8) & 0xf == 0 {
        // No PMU offered (a protected VM): its registers must be UNDEFINED.
        let undef = undefined(|| {
            let _ = mrs!("pmcr_el0");
        }) && undefined(|| msr!("pmcntenset_el0", u64::MAX))
            && undefined(|| {
                let _ = mrs!("pmccntr_el0");
            });
        println!(
            "guest-pmu: VM {vm}: no PMU (PMUVer 0); PMCR_EL0, PMCNTENSET_EL0, PMCCNTR_EL0: {}",
            verdict(undef)
        );
        return undef;
    }
    let pmcr = mrs!("pmcr_el0");
    let n = (pmcr >> 11) & 0x1f;
    println!(
        "guest-pmu: VM {vm}: PMUVer {} with {n} event counters",
        (dfr0 >> 8) & 0xf
    );
    if n < 2 {
        println!("guest-pmu: VM {vm}: FAILED: fewer than 2 event counters");
        return false;
    }
    let mut ok = hostile(vm, n);
    // Nothing of anyone else's PMU (the hostile checks only wrote a type).
    let mut fresh = mrs!("pmccntr_el0")
        | mrs!("pmovsset_el0")
        | mrs!("pmcntenset_el0")
        | mrs!("pmintenset_el1");
    for i in 0..n {
        msr!("pmselr_el0", i);
        fresh |= mrs!("pmxevcntr_el0");
    }
    println!(
        "guest-pmu: VM {vm}: first look at the PMU: {}",
        if fresh == 0 {
            "all zero"
        } else {
            "NOT all zero (another VM's counts?)"
        }
    );
    ok &= fresh == 0;
    let insts = mrs!("pmceid0_el0") & (1 << INST_RETIRED) != 0;
    msr!("pmevtyper0_el0", INST_RETIRED | NSH);
    msr!("pmevtyper1_el0", CPU_CYCLES | NSH);
    msr!("pmccfiltr_el0", NSH);
    msr!("pmcntenset_el0", 0b11 | 1 << 31);
    // E, P and C: enabled, counters reset; LC: 64-bit cycle counter.
    msr!("pmcr_el0", 1 | 2 | 4 | 1 << 6);
    let iters = per_round * 1000;
    let (mut min_work, mut max_yield, mut max_yield_cyc) = (u64::MAX, 0, 0);
    let mut last = (0, 0);
    let mut monotonic = true;
    for _ in 0..ROUNDS {
        let i0 = mrs!("pmevcntr0_el0");
        work(iters);
        let i1 = mrs!("pmevcntr0_el0");
        let c1 = mrs!("pmccntr_el0");
        guest_rt::yield_cpu();
        let c2 = mrs!("pmccntr_el0");
        let i2 = mrs!("pmevcntr0_el0");
        min_work = min_work.min(i1.wrapping_sub(i0));
        max_yield = max_yield.max(i2.wrapping_sub(i1));
        max_yield_cyc = max_yield_cyc.max(c2.wrapping_sub(c1));
        monotonic &= i2 >= last.0 && c2 > last.1 && i1 >= i0;
        last = (i2, c2);
    }
    let cycles = mrs!("pmevcntr1_el0");
    println!("guest-pmu: VM {vm}: {ROUNDS} rounds of {iters} iterations, each followed by a yield");
    if insts {
        let w = min_work >= 2 * iters;
        let y = max_yield <= YIELD_MAX;
        println!(
            "guest-pmu: VM {vm}: instructions: every round's work counted: {}; at most {max_yield} across a yield: {}",
            if w { "yes" } else { "NO" },
            if y { "ok" } else { "TOO MANY" }
        );
        ok &= w && y;
    } else {
        println!(
            "guest-pmu: VM {vm}: instructions: INST_RETIRED not implemented here, not checked"
        );
    }
    let y = max_yield_cyc <= YIELD_MAX;
    println!(
        "guest-pmu: VM {vm}: cycles: {} in all, at most {max_yield_cyc} across a yield: {}",
        if cycles > 0 { "counted" } else { "NONE" },
        if y { "ok" } else { "TOO MANY" }
    );
    ok &= cycles > 0 && monotonic;
    // The cycle counter only stands still across a yield where cycles are
    // a function of instructions (QEMU: -icount); elsewhere time passes.
    if insts {
        ok &= y;
    }
    ok
}

/// Mode 1 on vCPU `c`: vCPU 1 overflows, vCPU 0 only counts.
fn overflow(c: usize) -> bool {
    gic::init_cpu();
    gic::set_priority(PMU_PPI, 0x80);
    gic::enable(PMU_PPI);
    msr!("pmevtyper0_el0", CPU_CYCLES);
    if c == 1 {
        msr!("pmevcntr0_el0", (1 << 32) - 200_000);
        msr!("pmintenset_el1", 1);
    }
    msr!("pmcntenset_el0", 1);
    msr!("pmcr_el0", 1);
    gic::irq_unmask();
    let me = c.min(1);
    let want = u32::from(c == 1);
    // Two seconds of counter time, or until vCPU 1's interrupt came.
    gic::wait_until(2000, || PMU_IRQS[me].load(Ordering::Relaxed) >= want.max(1));
    if c == 0 {
        // vCPU 0 waits for vCPU 1 too, still able to take a stray one.
        gic::wait_until(4000, || DONE.load(Ordering::Acquire) != 0);
    }
    gic::irq_mask();
    PMU_IRQS[me].load(Ordering::Relaxed) == want
}

#[unsafe(no_mangle)]
fn guest_main(c: usize, x0: u64) -> ! {
    guest_rt::set_exception_hook(on_exception);
    if c == 1 {
        let ok = overflow(1);
        DONE.store(if ok { 1 } else { 2 }, Ordering::Release);
        guest_rt::cpu_off();
    }
    if c != 0 {
        guest_rt::cpu_off();
    }
    let (vm, arg) = (x0 & 0xff, x0 >> 8);
    let ok = match arg & 0xf {
        0 => count(
            vm,
            match arg >> 4 {
                0 => 10,
                k => k,
            },
        ),
        _ => {
            gic::irq_mask();
            gic::init_distributor();
            let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 1)[0] as i64;
            if r != 0 {
                panic!("CPU_ON(1) = {r}");
            }
            let mine = overflow(0);
            if !gic::wait_until(4000, || DONE.load(Ordering::Acquire) != 0) {
                println!("guest-pmu: VM {vm}: vCPU 1 never finished");
            }
            for v in 0..2 {
                println!(
                    "guest-pmu: VM {vm}: vCPU {v}: {} PMU interrupts, PMOVSSET {:#x}, {} other interrupts",
                    PMU_IRQS[v].load(Ordering::Relaxed),
                    OVS[v].load(Ordering::Relaxed),
                    OTHER_IRQS[v].load(Ordering::Relaxed)
                );
            }
            mine && DONE.load(Ordering::Acquire) == 1 && OVS[1].load(Ordering::Relaxed) & 1 == 1
        }
    };
    println!("guest-pmu: VM {vm}: {}", if ok { "PASS" } else { "FAILED" });
    guest_rt::system_off()
}
