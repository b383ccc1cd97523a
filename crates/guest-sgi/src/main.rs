//! SGIs between 4 vCPUs, counted exactly per (sender, INTID).
//! `tests/tests/guest_sgi.rs` checks every line.
//!
//! vCPU 0 sets up the distributor and starts vCPUs 1-3 with PSCI CPU_ON.
//! Once all four have woken their redistributors and enabled SGIs 1-4, each
//! vCPU, IRQs unmasked:
//! * sends [`N`] SGIs to each of the other three, one at a time per target,
//!   with INTIDs 1, 2, 3 in turns (`ICC_SGI1R_EL1` with a target list), and
//! * broadcasts [`M`] SGIs with INTID 4 to all the others (`IRM` = 1),
//!
//! then waits (bounded) until it has taken 3 × ([`N`] + [`M`]) SGIs itself.
//! vCPU 0 then checks every count and prints them.
//!
//! On GICv2 (Raspberry Pi 4) the SGIs go through `GICD_SGIR` instead, and
//! the handler also checks the sender CPU number `GICC_IAR` carries against
//! the slot's claimant (a mismatch counts as an SGI without a sender).
//!
//! GICv3's `ICC_IAR1_EL1` does not name an SGI's sender, and SGIs of the
//! same INTID pending at one target merge into one. So each (target, INTID)
//! has a slot: a sender claims it (compare-and-swap, 0 to sender + 1) before
//! sending, and the target's handler reads the sender from it and frees it
//! after acknowledging. An SGI is thus never sent while the previous one of
//! the same INTID to the same target is still pending, and every one is
//! attributed exactly. A broadcast claims its three slots in ascending
//! target order, so claims cannot deadlock.
//!
//! The slots need atomic read-modify-write, which needs Normal cacheable
//! memory, so every vCPU turns its MMU and caches on first (`mmu::enable`).
#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use guest_rt::gic::{self, SgiTarget, SPURIOUS};
use guest_rt::{mmu, println, Exception, Frame, Line};
use smccc::psci;

const CPUS: usize = 4;
/// SGIs each vCPU sends to each other vCPU (INTIDs 1, 2, 3 in turns).
const N: u32 = 100;
/// Broadcasts (INTID 4) each vCPU sends to all the others.
const M: u32 = 20;
const BCAST: u32 = 4;
/// INTIDs 0..5 are counted (0 unused).
const INTIDS: usize = 5;
/// Bound on each wait (ms of the virtual counter).
const WAIT_MS: u64 = 30_000;

/// COUNT\[target\]\[sender\]\[intid\], written only by the target's handler.
static COUNT: [[[AtomicU32; INTIDS]; CPUS]; CPUS] =
    [const { [const { [const { AtomicU32::new(0) }; INTIDS] }; CPUS] }; CPUS];
/// SGIs each vCPU has taken.
static TAKEN: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];
/// SGIs a vCPU could not attribute (free slot, unknown INTID).
static BAD: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];
static SPURIOUS_ACKS: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];
/// SLOT\[target\]\[intid\]: 0 free, else the claiming sender + 1.
static SLOT: [[AtomicU8; INTIDS]; CPUS] = [const { [const { AtomicU8::new(0) }; INTIDS] }; CPUS];
/// Set by each vCPU once its GIC is ready (1), and once it has taken all
/// its SGIs (2) or timed out (3).
static STATE: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];

fn cpu() -> usize {
    (gic::affinity() & 0xff) as usize
}

fn bump(a: &AtomicU32) {
    a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    let me = cpu();
    let a = gic::ack();
    let intid = a.intid();
    if intid == SPURIOUS {
        bump(&SPURIOUS_ACKS[me]);
        return true;
    }
    let i = intid as usize;
    let sender = if (1..INTIDS).contains(&i) {
        let s = SLOT[me][i].load(Ordering::Acquire);
        // Free the slot only now that the SGI is active: a new one may
        // become pending behind it and is taken after the EOI.
        SLOT[me][i].store(0, Ordering::Release);
        s
    } else {
        0
    };
    // GICv2 names the sender in GICC_IAR: it must be the slot's claimant.
    let named = a.source().is_some_and(|src| src + 1 != sender as usize);
    if sender == 0 || sender as usize > CPUS || named {
        bump(&BAD[me]);
    } else {
        bump(&COUNT[me][sender as usize - 1][i]);
    }
    TAKEN[me].store(TAKEN[me].load(Ordering::Relaxed) + 1, Ordering::Release);
    gic::eoi(a);
    true
}

/// Claims slot (target, intid) for `me`.
fn claim(me: usize, target: usize, intid: u32) {
    let slot = &SLOT[target][intid as usize];
    let tag = me as u8 + 1;
    let ok = gic::wait_until(WAIT_MS, || {
        slot.compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    });
    if !ok {
        panic!("vCPU {me}: slot (vCPU {target}, SGI {intid}) never freed");
    }
}

fn wait_all(state: u32) {
    let ok = gic::wait_until(WAIT_MS, || {
        STATE.iter().all(|s| s.load(Ordering::Acquire) >= state)
    });
    if !ok {
        panic!("vCPU {}: not every vCPU reached state {state}", cpu());
    }
}

/// The part every vCPU runs once the distributor is set up.
fn run(me: usize) {
    gic::init_cpu();
    for intid in 1..=BCAST {
        gic::set_priority(intid, 0x80);
        gic::enable(intid);
    }
    STATE[me].store(1, Ordering::Release);
    wait_all(1);
    gic::irq_unmask();
    for k in 0..N {
        for d in 1..CPUS {
            let target = (me + d) % CPUS;
            let intid = 1 + k % 3;
            claim(me, target, intid);
            gic::send_sgi_to(intid, target);
        }
    }
    for _ in 0..M {
        for target in (0..CPUS).filter(|&t| t != me) {
            claim(me, target, BCAST);
        }
        gic::send_sgi(BCAST, SgiTarget::Others);
    }
    let want = (CPUS as u32 - 1) * (N + M);
    let ok = gic::wait_until(WAIT_MS, || TAKEN[me].load(Ordering::Acquire) >= want);
    STATE[me].store(if ok { 2 } else { 3 }, Ordering::Release);
}

#[unsafe(no_mangle)]
fn guest_main(me: usize, _arg: u64) -> ! {
    mmu::enable();
    if me != 0 {
        run(me);
        gic::irq_mask();
        guest_rt::cpu_off();
    }
    gic::irq_mask();
    guest_rt::set_exception_hook(irq);
    gic::init_distributor();
    for t in 1..CPUS as u64 {
        let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, t, guest_rt::entry_point(), t)[0] as i64;
        if r != 0 {
            panic!("CPU_ON({t}) = {r}");
        }
    }
    run(0);
    wait_all(2);
    // Late or duplicated SGIs would show up here.
    gic::delay_us(10_000);
    gic::irq_mask();

    // Per INTID, what each sender must have sent each target: N split over
    // INTIDs 1, 2, 3 in turns, and M broadcasts.
    let expect = |i: usize| match i {
        1..=3 => (N + 3 - i as u32) / 3,
        BCAST_USIZE => M,
        _ => 0,
    };
    let mut exact = true;
    for t in 0..CPUS {
        let mut line = Line::new();
        let _ = write!(
            line,
            "guest-sgi: vCPU {t} took {} SGIs (INTIDs 1/2/3/4):",
            TAKEN[t].load(Ordering::Relaxed)
        );
        for (k, s) in (0..CPUS).filter(|&s| s != t).enumerate() {
            let c = |i: usize| COUNT[t][s][i].load(Ordering::Relaxed);
            let sep = if k == 0 { "" } else { "," };
            let _ = write!(line, "{sep} from {s} {}/{}/{}/{}", c(1), c(2), c(3), c(4));
            exact &= (0..INTIDS).all(|i| c(i) == expect(i));
        }
        exact &= (0..INTIDS).all(|i| COUNT[t][t][i].load(Ordering::Relaxed) == 0);
        exact &= BAD[t].load(Ordering::Relaxed) == 0;
        println!("{}", line.as_str());
    }
    let total: u32 = TAKEN.iter().map(|t| t.load(Ordering::Relaxed)).sum();
    let bad: u32 = BAD.iter().map(|t| t.load(Ordering::Relaxed)).sum();
    println!("guest-sgi: {bad} SGIs without a sender");
    println!(
        "guest-sgi: {CPUS} vCPUs took {total} SGIs: {N} targeted (INTIDs 1/2/3 = {}/{}/{}) + {M} broadcast (INTID 4) per sender and target: {}",
        expect(1),
        expect(2),
        expect(3),
        if exact { "exact" } else { "WRONG" }
    );
    self_sgis();
    println!("guest-sgi: done, powering off");
    guest_rt::system_off()
}

/// SGIs vCPU 0 sends itself, one at a time: each must be taken right after
/// the write that sends it (IRQs unmasked), within [`SELF_SPINS`] polls.
/// The hypervisor answers SGIs to other vCPUs in its vector's fast path,
/// which leaves the sender's list registers alone; an SGI to the sender
/// itself must be in them before it runs again, or it would wait for the
/// vCPU's next exit (up to a 10 ms time slice).
fn self_sgis() {
    gic::irq_unmask();
    let mut prompt = 0;
    for _ in 0..SELF_SGIS {
        let before = TAKEN[0].load(Ordering::Acquire);
        claim(0, 0, 1);
        gic::send_sgi_to(1, 0);
        let mut spins = 0;
        while TAKEN[0].load(Ordering::Acquire) == before && spins < SELF_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        if TAKEN[0].load(Ordering::Acquire) != before {
            prompt += 1;
        }
        // A late one still arrives before the next is sent.
        let ok = gic::wait_until(WAIT_MS, || TAKEN[0].load(Ordering::Acquire) != before);
        if !ok {
            panic!("vCPU 0: an SGI to itself never arrived");
        }
    }
    gic::irq_mask();
    println!(
        "guest-sgi: vCPU 0 took {prompt} of {SELF_SGIS} SGIs to itself at once ({} in all)",
        COUNT[0][0][1].load(Ordering::Relaxed)
    );
}

/// SGIs vCPU 0 sends itself ([`self_sgis`]).
const SELF_SGIS: u32 = 50;
/// Polls within which an SGI to itself must have been taken.
const SELF_SPINS: u32 = 100;

const BCAST_USIZE: usize = BCAST as usize;
