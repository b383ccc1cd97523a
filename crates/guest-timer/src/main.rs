//! The EL1 virtual timer as a periodic interrupt source, on vCPUs 0 and 1 at
//! once. `tests/tests/guest_timer.rs` checks every line.
//!
//! Each of the two vCPUs programs `CNTV_CVAL_EL0` one period (1 ms of
//! `CNTFRQ_EL0`) ahead, enables the timer (`CNTV_CTL_EL0.ENABLE`, IMASK
//! clear) and its PPI 27, and waits with WFI. The handler counts the tick
//! and re-arms the comparator one period further (CVAL += period, so ticks
//! do not drift); that moves the comparator into the future, so the
//! level-sensitive PPI drops before the EOI. At the 50th tick it disables
//! the timer instead. Because tick *k* fires no earlier than start + *k*
//! periods, the counter must have advanced by at least 50 periods.
//!
//! vCPU 1 reports through shared words (MMU off, so plain loads and stores
//! reach memory directly); only vCPU 0 prints, after vCPU 1 is done.
//!
//! With `arg=1` the same runs on the EL1 physical timer (PPI 30): vCPU 0
//! arms it through `CNTP_CVAL_EL0` (and checks that `CNTP_TVAL_EL0` then
//! reads CVAL - CNTPCT), vCPU 1 through `CNTP_TVAL_EL0` (and checks the
//! CVAL it implies), every tick must find `CNTP_CTL_EL0.ISTATUS` set, and
//! while waiting each vCPU checks that the physical counter never goes
//! back and lies between two reads of the virtual one (the hypervisor runs
//! guests with no counter offset).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_rt::gic::{self, ptimer, vtimer, PTIMER_PPI, SPURIOUS, VTIMER_PPI};
use guest_rt::{println, Exception, Frame};
use smccc::psci;

const TICKS: u32 = 50;
/// Ticks per second.
const HZ: u64 = 1000;
/// vCPUs running the timer.
const CPUS: usize = 2;
/// Bound on the whole run (ms of the counter).
const WAIT_MS: u64 = 20_000;

static PERIOD: AtomicU64 = AtomicU64::new(0);
static COUNT: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];
static START: [AtomicU64; CPUS] = [const { AtomicU64::new(0) }; CPUS];
static END: [AtomicU64; CPUS] = [const { AtomicU64::new(0) }; CPUS];
/// Non-timer INTIDs acknowledged, and spurious acknowledges.
static OTHER: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];
/// Set by vCPU 1 when it has finished (1) or timed out (2).
static DONE: AtomicU32 = AtomicU32::new(0);
/// The physical timer instead of the virtual one (`arg=1`).
static PHYS: AtomicU32 = AtomicU32::new(0);
/// Physical mode: counter checks made, and failed checks (counter or timer
/// registers inconsistent).
static CHECKS: [AtomicU64; CPUS] = [const { AtomicU64::new(0) }; CPUS];
static BAD: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];

fn phys() -> bool {
    PHYS.load(Ordering::Relaxed) != 0
}

fn ppi() -> u32 {
    if phys() {
        PTIMER_PPI
    } else {
        VTIMER_PPI
    }
}

fn bad(c: usize) {
    BAD[c].fetch_add(1, Ordering::Relaxed);
}

/// Arms the timer of this mode one period from `now` (physical: vCPU 0 by
/// CVAL, vCPU 1 by TVAL, each checking the other register's view).
fn arm(c: usize, now: u64, period: u64) {
    if !phys() {
        vtimer::set_cval(now + period);
        return;
    }
    if c == 0 {
        // TVAL reads CVAL - CNTPCT at the time of the read (Arm ARM
        // D12.8.x, "TimerValue view"), between the two counter reads.
        let cval = now + period;
        ptimer::set_cval(cval);
        let p1 = ptimer::counter();
        let t = i64::from(ptimer::tval());
        let p2 = ptimer::counter();
        if t < cval as i64 - p2 as i64 || t > cval as i64 - p1 as i64 {
            bad(c);
        }
    } else {
        let before = ptimer::counter();
        ptimer::set_tval(period as u32);
        let after = ptimer::counter();
        let cval = ptimer::cval();
        if cval < before + period || cval > after + period {
            bad(c);
        }
    }
}

/// Physical mode: CNTVCT <= CNTPCT <= CNTVCT, and CNTPCT never goes back.
fn check_counters(c: usize, last: &mut u64) {
    let v1 = gic::counter();
    let p = ptimer::counter();
    let v2 = gic::counter();
    if p < v1 || p > v2 || p < *last {
        bad(c);
    }
    *last = p;
    CHECKS[c].fetch_add(1, Ordering::Relaxed);
}

fn cpu() -> usize {
    (gic::affinity() & 0xff) as usize
}

fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    let c = cpu();
    let a = gic::ack();
    let intid = a.intid();
    if intid == SPURIOUS {
        OTHER[c].store(OTHER[c].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        return true;
    }
    if intid == ppi() {
        let n = COUNT[c].load(Ordering::Relaxed) + 1;
        COUNT[c].store(n, Ordering::Relaxed);
        let period = PERIOD.load(Ordering::Relaxed);
        if phys() && ptimer::ctl() & ptimer::ISTATUS == 0 {
            bad(c);
        }
        if n >= TICKS {
            END[c].store(gic::counter(), Ordering::Relaxed);
            if phys() {
                ptimer::set_ctl(0);
            } else {
                vtimer::set_ctl(0);
            }
        } else if phys() && c == 0 {
            ptimer::set_cval(ptimer::cval() + period);
        } else if phys() {
            arm(c, ptimer::counter(), period);
        } else {
            vtimer::set_cval(vtimer::cval() + period);
        }
    } else {
        OTHER[c].store(OTHER[c].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    gic::eoi(a);
    true
}

/// Runs TICKS timer periods on this vCPU; returns whether they all came.
fn run(c: usize) -> bool {
    gic::init_cpu();
    gic::set_priority(ppi(), 0x80);
    gic::enable(ppi());
    let period = PERIOD.load(Ordering::Relaxed);
    let start = gic::counter();
    START[c].store(start, Ordering::Relaxed);
    arm(c, start, period);
    if phys() {
        ptimer::set_ctl(ptimer::ENABLE);
    } else {
        vtimer::set_ctl(vtimer::ENABLE);
    }
    gic::irq_unmask();
    let deadline = start + gic::counter_hz() * WAIT_MS / 1000;
    let mut last = 0;
    while COUNT[c].load(Ordering::Relaxed) < TICKS && gic::counter() < deadline {
        if phys() {
            check_counters(c, &mut last);
        }
        gic::wfi();
    }
    // Five more periods: a stopped timer must not tick again.
    gic::delay_us(5 * 1_000_000 / HZ);
    gic::irq_mask();
    COUNT[c].load(Ordering::Relaxed) >= TICKS
}

#[unsafe(no_mangle)]
fn guest_main(c: usize, arg: u64) -> ! {
    guest_rt::set_exception_hook(irq);
    // x0: the VM handle in bits [7:0], the guest option `arg=N` above.
    if c == 0 {
        PHYS.store(u32::from(arg >> 8 == 1), Ordering::Relaxed);
    }
    if c != 0 {
        let ok = run(c);
        DONE.store(if ok { 1 } else { 2 }, Ordering::Release);
        guest_rt::cpu_off();
    }
    gic::irq_mask();
    gic::init_distributor();
    PERIOD.store(gic::counter_hz() / HZ, Ordering::Relaxed);
    let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 1)[0] as i64;
    if r != 0 {
        panic!("CPU_ON(1) = {r}");
    }
    run(0);
    if !gic::wait_until(WAIT_MS, || DONE.load(Ordering::Acquire) != 0) {
        panic!("vCPU 1 never finished");
    }

    let period = PERIOD.load(Ordering::Relaxed);
    let mut all_ok = true;
    for c in 0..CPUS {
        let n = COUNT[c].load(Ordering::Relaxed);
        let who = Who(c);
        let kind = match (phys(), c) {
            (false, _) => "virtual timer ticks",
            (true, 0) => "physical timer ticks (CVAL)",
            (true, _) => "physical timer ticks (TVAL)",
        };
        println!("guest-timer: {who}{n} {kind}");
        let elapsed = END[c]
            .load(Ordering::Relaxed)
            .wrapping_sub(START[c].load(Ordering::Relaxed));
        let ok = n == TICKS && elapsed >= u64::from(TICKS) * period;
        all_ok &= ok && OTHER[c].load(Ordering::Relaxed) == 0;
        println!(
            "guest-timer: {who}elapsed counter time {} {TICKS} periods of 1 ms",
            if ok { ">=" } else { "NOT >=" }
        );
        println!(
            "guest-timer: {who}{} other or spurious interrupts",
            OTHER[c].load(Ordering::Relaxed)
        );
        if phys() {
            let bad = BAD[c].load(Ordering::Relaxed);
            let checks = CHECKS[c].load(Ordering::Relaxed);
            all_ok &= bad == 0 && checks > 0;
            println!(
                "guest-timer: {who}physical counter = virtual counter, monotonic, timer registers consistent: {} failed checks",
                bad
            );
        }
    }
    println!(
        "guest-timer: {}",
        if all_ok {
            "done, powering off"
        } else {
            "FAILED"
        }
    );
    guest_rt::system_off()
}

/// "vCPU n: " for vCPUs other than 0, nothing for vCPU 0.
#[derive(Clone, Copy)]
struct Who(usize);

impl core::fmt::Display for Who {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == 0 {
            Ok(())
        } else {
            write!(f, "vCPU {}: ", self.0)
        }
    }
}
