//! A level-triggered SPI raised by a device the host emulates, taken on
//! another vCPU (issue 18 item 1). `tests/tests/guest_irq.rs` checks its
//! lines.
//!
//! The device (`guest_rt::demo::IRQ_DEV_*`) sits in the host's MMIO window;
//! the host raises SPI 40 with IRQ_LINE when vCPU 0 writes its REQUEST
//! register, and lowers it when the driver writes ACK: a level-sensitive
//! line held until acknowledged, as a virtio-mmio device holds its
//! interrupt until the driver writes InterruptACK.
//!
//! vCPU 0 sets up the distributor (SPI 40 level-sensitive, routed to vCPU
//! 1), starts vCPU 1 and then, [`ROUNDS`] times, requests an interrupt and
//! waits (bounded) until vCPU 1 has taken it. In even rounds vCPU 1 waits
//! in WFI (so the request finds it waiting, or running briefly); in odd
//! rounds it spins with interrupts unmasked and never exits on its own, so
//! only the hypervisor's kick (a physical SGI to the CPU running it) makes
//! it take the interrupt before its 10 ms time slice ends. The median
//! request-to-handler latency of each kind is printed. Its handler reads STATUS (the line must be
//! high), acknowledges the device and EOIs. In one round in [`HOLD_EVERY`]
//! the handler EOIs *without* acknowledging the first time: the line is
//! still high, so the interrupt must be taken again at once, and the second
//! time it acknowledges. At the end nothing may be pending or taken twice.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_rt::demo::{IRQ_DEV_ACK, IRQ_DEV_IPA, IRQ_DEV_REQUEST, IRQ_DEV_SPI, IRQ_DEV_STATUS};
use guest_rt::gic::{self, SPURIOUS};
use guest_rt::{mmu, println, Exception, Frame};
use smccc::psci;

/// Interrupts requested.
const ROUNDS: u32 = 1000;
/// Every this many rounds the handler leaves the line high once.
const HOLD_EVERY: u32 = 50;
/// Bound on each wait (ms of the virtual counter).
const WAIT_MS: u64 = 10_000;

/// Interrupts vCPU 1 has finished (acknowledged the device).
static DONE: AtomicU32 = AtomicU32::new(0);
/// SPI 40 taken while the line was low (STATUS 0): must stay 0.
static LOW: AtomicU32 = AtomicU32::new(0);
/// Times the handler left the line high, and times it was taken again
/// after that before being acknowledged.
static HELD: AtomicU32 = AtomicU32::new(0);
static REFIRED: AtomicU32 = AtomicU32::new(0);
/// Interrupts other than SPI 40, spurious acknowledgements, and SPI 40
/// taken on vCPU 0.
static OTHER: AtomicU32 = AtomicU32::new(0);
static SPURIOUS_ACKS: AtomicU32 = AtomicU32::new(0);
static WRONG_CPU: AtomicU32 = AtomicU32::new(0);
/// Set while the handler is leaving the line high for one round.
static HOLDING: AtomicU32 = AtomicU32::new(0);
/// vCPU 1 ready (1) and finished (2).
static STATE: AtomicU32 = AtomicU32::new(0);
/// 1 while vCPU 1 should spin instead of WFI.
static SPIN: AtomicU32 = AtomicU32::new(0);
/// Counter value when vCPU 0 made the current request (low 32 bits).
static REQUESTED_AT: AtomicU32 = AtomicU32::new(0);
/// Request-to-handler latency of each round, in counter ticks.
static LATENCY: [AtomicU32; ROUNDS as usize] = [const { AtomicU32::new(0) }; ROUNDS as usize];

fn reg(off: u64) -> *mut u64 {
    (IRQ_DEV_IPA + off) as *mut u64
}

fn dev_read(off: u64) -> u64 {
    // SAFETY: the device's register, an MMIO exit to the host.
    unsafe { reg(off).read_volatile() }
}

fn dev_write(off: u64, v: u64) {
    // SAFETY: as `dev_read`.
    unsafe { reg(off).write_volatile(v) }
}

fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    let a = gic::ack();
    let intid = a.intid();
    if intid == SPURIOUS {
        SPURIOUS_ACKS.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    if intid != IRQ_DEV_SPI {
        OTHER.fetch_add(1, Ordering::Relaxed);
        gic::eoi(a);
        return true;
    }
    if gic::affinity() & 0xff != 1 {
        WRONG_CPU.fetch_add(1, Ordering::Relaxed);
    }
    let now = gic::counter() as u32;
    if dev_read(IRQ_DEV_STATUS) != 1 {
        LOW.fetch_add(1, Ordering::Relaxed);
        gic::eoi(a);
        return true;
    }
    let done = DONE.load(Ordering::Relaxed);
    if HOLDING.load(Ordering::Relaxed) == 1 {
        // Taken again with the line still high: now acknowledge.
        REFIRED.fetch_add(1, Ordering::Relaxed);
        HOLDING.store(0, Ordering::Relaxed);
    } else if done % HOLD_EVERY == HOLD_EVERY - 1 {
        // Leave the line high: the vGIC must present it again after the EOI.
        HELD.fetch_add(1, Ordering::Relaxed);
        HOLDING.store(1, Ordering::Relaxed);
        gic::eoi(a);
        return true;
    }
    if let Some(l) = LATENCY.get(done as usize) {
        if l.load(Ordering::Relaxed) == 0 {
            let at = REQUESTED_AT.load(Ordering::Acquire);
            l.store(now.wrapping_sub(at).max(1), Ordering::Relaxed);
        }
    }
    dev_write(IRQ_DEV_ACK, 1);
    DONE.store(done + 1, Ordering::Release);
    gic::eoi(a);
    true
}

fn vcpu1() -> ! {
    gic::init_cpu();
    STATE.store(1, Ordering::Release);
    gic::irq_unmask();
    while DONE.load(Ordering::Acquire) < ROUNDS {
        if SPIN.load(Ordering::Acquire) == 0 {
            gic::wfi();
        } else {
            core::hint::spin_loop();
        }
    }
    // Late or duplicated interrupts would be taken here.
    gic::delay_us(10_000);
    gic::irq_mask();
    STATE.store(2, Ordering::Release);
    guest_rt::cpu_off();
}

/// The median latency of the rounds with `round % 2 == parity`, in us.
fn median_us(parity: u32, hz: u64) -> u64 {
    let mut v = [0u32; ROUNDS as usize / 2];
    let mut n = 0;
    for (r, l) in LATENCY.iter().enumerate() {
        if r as u32 % 2 == parity && n < v.len() {
            v[n] = l.load(Ordering::Relaxed);
            n += 1;
        }
    }
    let v = &mut v[..n];
    v.sort_unstable();
    v.get(n / 2).map_or(0, |t| u64::from(*t) * 1_000_000 / hz)
}

#[unsafe(no_mangle)]
fn guest_main(me: usize, _arg: u64) -> ! {
    mmu::enable();
    if me == 1 {
        vcpu1();
    }
    guest_rt::set_exception_hook(irq);
    if let Err(e) = guest_rt::mmio_guard_range(IRQ_DEV_IPA, 0x1000) {
        panic!("MMIO_GUARD of the device: {e}");
    }
    gic::irq_mask();
    gic::init_distributor();
    gic::configure_spi(IRQ_DEV_SPI, false);
    gic::route_spi(IRQ_DEV_SPI, 1);
    gic::set_priority(IRQ_DEV_SPI, 0x80);
    gic::enable(IRQ_DEV_SPI);
    let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 1)[0] as i64;
    if r != 0 {
        panic!("CPU_ON(1) = {r}");
    }
    if !gic::wait_until(WAIT_MS, || STATE.load(Ordering::Acquire) == 1) {
        panic!("vCPU 1 never came up");
    }
    let mut lost = 0;
    for round in 0..ROUNDS {
        SPIN.store(round % 2, Ordering::Release);
        // Let vCPU 1 settle into this round's way of waiting.
        gic::delay_us(200);
        REQUESTED_AT.store(gic::counter() as u32, Ordering::Release);
        dev_write(IRQ_DEV_REQUEST, 1);
        if !gic::wait_until(WAIT_MS, || DONE.load(Ordering::Acquire) > round) {
            lost += 1;
            break;
        }
    }
    if !gic::wait_until(WAIT_MS, || STATE.load(Ordering::Acquire) == 2) {
        panic!("vCPU 1 did not finish");
    }
    println!(
        "guest-irq: {} of {ROUNDS} interrupts taken on vCPU 1 (lost {lost}, on the wrong vCPU {}, \
         with the line low {}, other {}, spurious {})",
        DONE.load(Ordering::Relaxed),
        WRONG_CPU.load(Ordering::Relaxed),
        LOW.load(Ordering::Relaxed),
        OTHER.load(Ordering::Relaxed),
        SPURIOUS_ACKS.load(Ordering::Relaxed),
    );
    let hz = gic::counter_hz();
    println!(
        "guest-irq: median latency from request to handler: {} us with vCPU 1 spinning, {} us with it in WFI",
        median_us(1, hz),
        median_us(0, hz),
    );
    println!(
        "guest-irq: level held: left high {} times, taken again {} times before the acknowledgement",
        HELD.load(Ordering::Relaxed),
        REFIRED.load(Ordering::Relaxed),
    );
    guest_rt::system_off();
}
