//! Console input (issue 18 item 5): reads lines typed on the hypervisor's
//! console from its emulated PL011, through the UART's receive interrupt
//! (SPI [`UART_INTID`] in its vGIC, GICv3 or GICv2), and answers each one.
//! `tests/tests/guest_console.rs` types at it.
//!
//! The interrupt handler empties the receive FIFO (UARTDR while UARTFR.RXFE
//! is clear) into a buffer; vCPU 0 waits in WFI in between, so a character
//! reaches it only through the interrupt. A line (ended by CR or LF) is
//! answered with `guest-console: got "LINE" (N bytes, K interrupts so
//! far)`; the line `reset` makes the guest call PSCI SYSTEM_RESET (the
//! host restarts a normal VM: it boots again from its image), `off` PSCI
//! SYSTEM_OFF.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use guest_rt::gic::{self, SPURIOUS};
use guest_rt::{mmu, println, Exception, Frame, UART_BASE};
use hw_regs::pl011::{FR_RXFE, FR_RXFF, INT_RT, INT_RX, UARTDR, UARTFR, UARTIMSC, UARTMIS};
use hyp_abi::layout::UART_INTID;
use smccc::psci;

/// Characters the handler keeps until vCPU 0 takes them.
const BUF: usize = 256;
/// Longest line answered (longer ones are cut).
const LINE: usize = 128;

/// What the handler read, as a ring: written at `HEAD`, read at `TAIL`.
static RING: [AtomicU32; BUF] = [const { AtomicU32::new(0) }; BUF];
static HEAD: AtomicUsize = AtomicUsize::new(0);
static TAIL: AtomicUsize = AtomicUsize::new(0);
/// UART interrupts taken, and characters dropped because the ring was full.
static IRQS: AtomicU32 = AtomicU32::new(0);
static LOST: AtomicU32 = AtomicU32::new(0);
/// Interrupts other than the UART's, and UART interrupts with nothing
/// pending at the UART (UARTMIS 0).
static OTHER: AtomicU32 = AtomicU32::new(0);
static EMPTY: AtomicU32 = AtomicU32::new(0);

fn uart_read(off: u64) -> u32 {
    // SAFETY: a register of the PL011 the hypervisor emulates for every
    // guest; reading UARTDR takes a character out, which is the intent.
    unsafe { ((UART_BASE as u64 + off) as *const u32).read_volatile() }
}

fn uart_write(off: u64, v: u32) {
    // SAFETY: as `uart_read`.
    unsafe { ((UART_BASE as u64 + off) as *mut u32).write_volatile(v) }
}

fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    let a = gic::ack();
    match a.intid() {
        SPURIOUS => return true,
        UART_INTID => {
            IRQS.fetch_add(1, Ordering::Relaxed);
            if uart_read(UARTMIS) == 0 {
                EMPTY.fetch_add(1, Ordering::Relaxed);
            }
            // Reading the FIFO empty lowers the UART's interrupt.
            while uart_read(UARTFR) & FR_RXFE == 0 {
                let c = uart_read(UARTDR) & 0xff;
                let h = HEAD.load(Ordering::Relaxed);
                if h - TAIL.load(Ordering::Acquire) == BUF {
                    LOST.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                RING[h % BUF].store(c, Ordering::Relaxed);
                HEAD.store(h + 1, Ordering::Release);
            }
        }
        _ => {
            OTHER.fetch_add(1, Ordering::Relaxed);
        }
    }
    gic::eoi(a);
    true
}

/// The next character the handler read, waiting (in WFI) for one.
fn getc() -> u8 {
    loop {
        let t = TAIL.load(Ordering::Relaxed);
        if HEAD.load(Ordering::Acquire) != t {
            let c = RING[t % BUF].load(Ordering::Relaxed) as u8;
            TAIL.store(t + 1, Ordering::Release);
            return c;
        }
        gic::wfi();
    }
}

/// The next non-empty line (CR or LF ends it); its length.
fn read_line(buf: &mut [u8; LINE]) -> usize {
    loop {
        let mut n = 0;
        loop {
            match getc() {
                b'\r' | b'\n' => break,
                c if n < LINE => {
                    buf[n] = c;
                    n += 1;
                }
                _ => {}
            }
        }
        if n != 0 {
            return n;
        }
    }
}

#[unsafe(no_mangle)]
fn guest_main(me: usize, _arg: u64) -> ! {
    if me != 0 {
        guest_rt::cpu_off();
    }
    mmu::enable();
    guest_rt::set_exception_hook(irq);
    gic::irq_mask();
    gic::init_distributor();
    gic::init_cpu();
    gic::configure_spi(UART_INTID, false);
    gic::route_spi(UART_INTID, 0);
    gic::set_priority(UART_INTID, 0x80);
    gic::enable(UART_INTID);
    // PL011 TRM 3.3.10: receive and receive-timeout interrupts unmasked.
    uart_write(UARTIMSC, INT_RX | INT_RT);
    gic::irq_unmask();
    println!(
        "guest-console: reading my PL011 through its interrupt (INTID {UART_INTID}); type a line"
    );
    let mut buf = [0u8; LINE];
    loop {
        let n = read_line(&mut buf);
        let line = core::str::from_utf8(&buf[..n]).unwrap_or("(not UTF-8)");
        match line {
            "reset" => {
                println!("guest-console: resetting (PSCI SYSTEM_RESET)");
                let r = guest_rt::hvc(psci::PSCI_SYSTEM_RESET, 0, 0, 0)[0] as i64;
                panic!("SYSTEM_RESET returned {r}");
            }
            "hold" => {
                // Stop reading until the hypervisor's receive FIFO for this
                // VM is full (RXFF), then a while longer: what is typed
                // meanwhile must wait (flow control), not be dropped.
                uart_write(UARTIMSC, 0);
                println!("guest-console: holding my input until the FIFO is full");
                while uart_read(UARTFR) & FR_RXFF == 0 {
                    core::hint::spin_loop();
                }
                let t0 = gic::counter();
                while gic::counter() - t0 < gic::counter_hz() / 20 {
                    core::hint::spin_loop();
                }
                println!("guest-console: FIFO full (RXFF); reading again");
                uart_write(UARTIMSC, INT_RX | INT_RT);
            }
            "off" => {
                println!(
                    "guest-console: powering off ({} interrupts, {} lost characters, {} other interrupts, {} with nothing pending)",
                    IRQS.load(Ordering::Relaxed),
                    LOST.load(Ordering::Relaxed),
                    OTHER.load(Ordering::Relaxed),
                    EMPTY.load(Ordering::Relaxed),
                );
                guest_rt::system_off();
            }
            _ => println!(
                "guest-console: got \"{line}\" ({n} bytes, {} interrupts so far)",
                IRQS.load(Ordering::Relaxed)
            ),
        }
    }
}
