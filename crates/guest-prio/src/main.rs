//! GIC masking, priorities and preemption on one vCPU (vCPU 0; the VM's
//! other vCPUs stay off). `tests/tests/guest_prio.rs` checks every line.
//!
//! The register names below are GICv3's; on GICv2 (Raspberry Pi 4) the lines
//! name the equivalents instead ([`Names`]): `GICD_IPRIORITYR`,
//! `GICD_ISPENDR0` (banked per CPU), `GICC_HPPIR` and `GICC_PMR`, and SGIs
//! are sent through `GICD_SGIR`. The values are the same.
//!
//! 1. Four SGIs with distinct priorities (SGI 1 = 0x80, 2 = 0x40, 3 = 0xa0,
//!    4 = 0x20) are made pending to itself while PSTATE.I masks IRQs: they
//!    show in `GICR_ISPENDR0` and `ICC_HPPIR1_EL1` but none is taken.
//! 2. Disabled (`GICR_ICENABLER0`) with IRQs unmasked: still pending, not
//!    forwarded (`ICC_HPPIR1_EL1` = 1023), none taken.
//! 3. Enabled again under `ICC_PMR_EL1` = 0x10: forwarded, none taken.
//! 4. The priority mask is raised in steps (0x30, 0x90, 0xf0): each step
//!    lets exactly the SGIs below it through, most urgent first.
//! 5. All four pending at once, then unmasked: taken 4, 2, 1, 3.
//! 6. Preemption: the handler of SGI 5 (0xc0) re-enables IRQs, sends itself
//!    SGI 7 (0xe0, less urgent: must wait until SGI 5's EOI) and SGI 6
//!    (0x40, more urgent: taken at once, nested inside SGI 5's handler).
//!    guest-rt's vectors keep ELR_EL1/SPSR_EL1 in each exception's frame,
//!    so a handler may unmask IRQs once it has acknowledged its interrupt.
//!
//! The vCPU runs with its MMU off: the event log is written by the handler
//! and read by the main loop on the same vCPU with plain loads and stores.
#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use guest_rt::gic::{self, SPURIOUS};
use guest_rt::{println, Exception, Frame, Line};

/// The SGIs of parts 1-5 and their priorities.
const SGIS: [(u32, u8); 4] = [(1, 0x80), (2, 0x40), (3, 0xa0), (4, 0x20)];
/// Part 6: the handler of OUTER is preempted by HIGH, not by LOW.
const OUTER: (u32, u8) = (5, 0xc0);
const HIGH: (u32, u8) = (6, 0x40);
const LOW: (u32, u8) = (7, 0xe0);
/// How long "none taken" waits, and the bound on every wait for an interrupt.
const QUIET_MS: u64 = 20;
const WAIT_MS: u64 = 5_000;

const EXIT: u32 = 1 << 31;
const MAX_EVENTS: usize = 64;
/// Handler events: INTID on entry, INTID | EXIT before its EOI.
static EVENTS: [AtomicU32; MAX_EVENTS] = [const { AtomicU32::new(0) }; MAX_EVENTS];
/// `ICC_RPR_EL1` at each entry event.
static RPR: [AtomicU32; MAX_EVENTS] = [const { AtomicU32::new(0) }; MAX_EVENTS];
static NEVENTS: AtomicUsize = AtomicUsize::new(0);
static SPURIOUS_ACKS: AtomicU32 = AtomicU32::new(0);
/// Part 6: events logged while SGI 7 was pending inside SGI 5's handler.
static LOW_INSIDE: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Part 6: whether SGI 6's entry and exit were logged inside SGI 5's handler.
static HIGH_INSIDE: AtomicU32 = AtomicU32::new(0);

/// The register names the lines print, for the GIC version in use.
struct Names {
    ipriorityr: &'static str,
    ispendr0: &'static str,
    hppir: &'static str,
    pmr: &'static str,
}

fn names() -> Names {
    match gic::version() {
        gic::Version::V3 => Names {
            ipriorityr: "GICR_IPRIORITYR",
            ispendr0: "GICR_ISPENDR0",
            hppir: "ICC_HPPIR1_EL1",
            pmr: "ICC_PMR_EL1",
        },
        gic::Version::V2 => Names {
            ipriorityr: "GICD_IPRIORITYR",
            ispendr0: "GICD_ISPENDR0",
            hppir: "GICC_HPPIR",
            pmr: "GICC_PMR",
        },
    }
}

fn record(ev: u32) {
    let n = NEVENTS.load(Ordering::Relaxed);
    if n < MAX_EVENTS {
        EVENTS[n].store(ev, Ordering::Relaxed);
        if ev & EXIT == 0 {
            RPR[n].store(u32::from(gic::running_priority()), Ordering::Relaxed);
        }
    }
    NEVENTS.store(n + 1, Ordering::Release);
}

fn nevents() -> usize {
    NEVENTS.load(Ordering::Acquire)
}

fn event(i: usize) -> u32 {
    EVENTS[i].load(Ordering::Relaxed)
}

fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    // Vector 5: IRQ from the current EL with SP_ELx.
    if e.vector != 5 {
        return false;
    }
    let a = gic::ack();
    let intid = a.intid();
    if intid == SPURIOUS {
        SPURIOUS_ACKS.store(SPURIOUS_ACKS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        return true;
    }
    record(intid);
    if intid == OUTER.0 {
        preempt_inside();
    }
    record(intid | EXIT);
    gic::eoi(a);
    true
}

/// Part 6, inside SGI 5's handler (SGI 5 active, running priority 0xc0).
fn preempt_inside() {
    gic::irq_unmask();
    let before = nevents();
    gic::send_sgi_to(LOW.0, 0);
    gic::delay_us(QUIET_MS * 1000);
    LOW_INSIDE.store(nevents() - before, Ordering::Relaxed);
    let before = nevents();
    gic::send_sgi_to(HIGH.0, 0);
    let ok = gic::wait_until(WAIT_MS, || nevents() >= before + 2);
    HIGH_INSIDE.store(
        (ok && event(before) == HIGH.0 && event(before + 1) == HIGH.0 | EXIT) as u32,
        Ordering::Relaxed,
    );
    gic::irq_mask();
}

/// Entry events from `from` on, as "a, b, c".
fn taken_since(from: usize) -> Line {
    let mut s = Line::new();
    let mut first = true;
    for i in from..nevents().min(MAX_EVENTS) {
        let ev = event(i);
        if ev & EXIT == 0 {
            let _ = write!(s, "{}{ev}", if first { "" } else { ", " });
            first = false;
        }
    }
    s
}

/// Entry events from `from` on, as INTIDs.
fn entries_since(from: usize, out: &mut [u32]) -> usize {
    let mut n = 0;
    for i in from..nevents().min(MAX_EVENTS) {
        let ev = event(i);
        if ev & EXIT == 0 && n < out.len() {
            out[n] = ev;
            n += 1;
        }
    }
    n
}

fn check(cond: bool, what: &str) {
    if !cond {
        panic!("guest-prio: check failed: {what}");
    }
}

/// SGIs 1-4's pending bits in `GICR_ISPENDR0`.
fn pending_1_4() -> u32 {
    gic::private_pending() & 0x1e
}

fn pmr_step(pmr: u8, expect: &[u32]) {
    let from = nevents();
    gic::set_priority_mask(pmr);
    check(gic::priority_mask() == pmr, "the priority mask reads back");
    let ok = gic::wait_until(WAIT_MS, || {
        let mut got = [0; 8];
        entries_since(from, &mut got) >= expect.len()
    });
    gic::delay_us(QUIET_MS * 1000);
    let mut got = [0; 8];
    let n = entries_since(from, &mut got);
    check(
        ok && n == expect.len(),
        "the SGIs below the mask, and only they, were taken",
    );
    let list = taken_since(from);
    let plural = if n == 1 { "" } else { "s" };
    println!(
        "guest-prio: {} = {pmr:#x}: took SGI{plural} {}",
        names().pmr,
        list.as_str()
    );
    check(&got[..n] == expect, "taken by priority");
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, _arg: u64) -> ! {
    if cpu != 0 {
        guest_rt::cpu_off();
    }
    gic::irq_mask();
    guest_rt::set_exception_hook(irq);
    gic::init_distributor();
    gic::init_cpu();

    // Part 1: masked by PSTATE.I.
    for (intid, prio) in SGIS.into_iter().chain([OUTER, HIGH, LOW]) {
        gic::set_priority(intid, prio);
        gic::enable(intid);
    }
    let mut line = Line::new();
    for (i, (intid, _)) in SGIS.into_iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(line, "{sep}{intid} = {:#x}", gic::priority(intid));
    }
    let n = names();
    println!("guest-prio: {}: SGI {}", n.ipriorityr, line.as_str());
    for (intid, prio) in SGIS.into_iter().chain([OUTER, HIGH, LOW]) {
        check(gic::priority(intid) == prio, "priorities read back");
    }
    check(gic::private_enabled() & 0xfe == 0xfe, "SGIs 1-7 enabled");
    for (intid, _) in SGIS {
        gic::send_sgi_to(intid, 0);
    }
    gic::delay_us(QUIET_MS * 1000);
    println!(
        "guest-prio: IRQs masked: {} = {:#x}, {} = {}, taken {}",
        n.ispendr0,
        pending_1_4(),
        n.hppir,
        gic::highest_pending(),
        nevents()
    );
    check(pending_1_4() == 0x1e && nevents() == 0, "masked");

    // Part 2: disabled, IRQs unmasked. Whether SGIs can be disabled is
    // IMPLEMENTATION DEFINED on GICv2 (IHI 0048B, 4.3.5 and 4.3.6): the
    // hypervisor's vGIC lets them be, QEMU's own GICv2 (a bare run) does not.
    for (intid, _) in SGIS {
        gic::disable(intid);
    }
    if gic::private_enabled() & 0x1e != 0 {
        println!("guest-prio: SGI enables are RAO/WI: part 2 skipped");
    } else {
        gic::irq_unmask();
        gic::delay_us(QUIET_MS * 1000);
        println!(
            "guest-prio: SGIs disabled, IRQs unmasked: {} = {:#x}, {} = {}, taken {}",
            n.ispendr0,
            pending_1_4(),
            n.hppir,
            gic::highest_pending(),
            nevents()
        );
        check(pending_1_4() == 0x1e && nevents() == 0, "disabled");
    }

    // Part 3: enabled, but all above the priority mask.
    gic::set_priority_mask(0x10);
    for (intid, _) in SGIS {
        gic::enable(intid);
    }
    gic::irq_unmask();
    gic::delay_us(QUIET_MS * 1000);
    println!(
        "guest-prio: enabled, {} = {:#x}: {} = {:#x}, {} = {}, taken {}",
        n.pmr,
        gic::priority_mask(),
        n.ispendr0,
        pending_1_4(),
        n.hppir,
        gic::highest_pending(),
        nevents()
    );
    check(pending_1_4() == 0x1e && nevents() == 0, "priority mask");

    // Part 4: raise the mask step by step.
    pmr_step(0x30, &[4]);
    pmr_step(0x90, &[2, 1]);
    pmr_step(0xf0, &[3]);
    let mut order = Line::new();
    let mut got = [0; 8];
    let n = entries_since(0, &mut got);
    for (i, intid) in got[..n].iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(order, "{sep}SGI {intid} ({:#x})", gic::priority(*intid));
    }
    println!("guest-prio: taken in this order: {}", order.as_str());
    check(
        pending_1_4() == 0 && gic::running_priority() == 0xff,
        "nothing left pending or active",
    );

    // Part 5: all four at once.
    gic::irq_mask();
    let from = nevents();
    for (intid, _) in SGIS {
        gic::send_sgi_to(intid, 0);
    }
    gic::delay_us(QUIET_MS * 1000);
    check(pending_1_4() == 0x1e && nevents() == from, "pending again");
    gic::irq_unmask();
    let ok = gic::wait_until(WAIT_MS, || nevents() >= from + 8);
    gic::delay_us(QUIET_MS * 1000);
    println!(
        "guest-prio: all four pending, then unmasked: took SGIs {}",
        taken_since(from).as_str()
    );
    let mut got = [0; 8];
    let n = entries_since(from, &mut got);
    check(ok && got[..n] == [4, 2, 1, 3], "priority order");

    // Part 6: preemption.
    let from = nevents();
    gic::send_sgi_to(OUTER.0, 0);
    let ok = gic::wait_until(WAIT_MS, || nevents() >= from + 6);
    gic::delay_us(QUIET_MS * 1000);
    check(ok && nevents() == from + 6, "six nesting events");
    let mut seq = Line::new();
    for i in from..from + 6 {
        let ev = event(i);
        let sep = if i == from { "" } else { ", " };
        let what = if ev & EXIT == 0 { "enter" } else { "exit" };
        let _ = write!(seq, "{sep}{what} {}", ev & !EXIT);
    }
    println!(
        "guest-prio: inside SGI 5 ({:#x}): SGI 7 ({:#x}) taken {} times, SGI 6 ({:#x}) nested: {}",
        OUTER.1,
        LOW.1,
        LOW_INSIDE.load(Ordering::Relaxed),
        HIGH.1,
        if HIGH_INSIDE.load(Ordering::Relaxed) == 1 {
            "yes"
        } else {
            "no"
        },
    );
    println!("guest-prio: preemption: {}", seq.as_str());
    let rpr_outer = RPR[from].load(Ordering::Relaxed);
    let rpr_high = RPR[from + 1].load(Ordering::Relaxed);
    println!("guest-prio: running priority {rpr_outer:#x} in SGI 5, {rpr_high:#x} in nested SGI 6");
    let want = [
        OUTER.0,
        HIGH.0,
        HIGH.0 | EXIT,
        OUTER.0 | EXIT,
        LOW.0,
        LOW.0 | EXIT,
    ];
    check((0..6).all(|i| event(from + i) == want[i]), "nesting order");
    println!(
        "guest-prio: {} spurious acknowledges",
        SPURIOUS_ACKS.load(Ordering::Relaxed)
    );
    println!("guest-prio: done, powering off");
    guest_rt::system_off()
}
