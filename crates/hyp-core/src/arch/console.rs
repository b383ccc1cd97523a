//! The hypervisor's console: a PL011 transmitter behind the `log` crate,
//! and its receiver, whose characters go to the VM with the console focus
//! (`vm::console_in`).
//!
//! Hand-written rather than `arm-pl011-uart`: EL2 needs only polled
//! transmission, usable before the MMU is on, and the crate's driver wants
//! ownership of a mapped `UniqueMmioPointer` that the boot path does not yet
//! have when the first line is printed.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

static UART_BASE: AtomicU64 = AtomicU64::new(0);
static LOCK: Mutex<()> = Mutex::new(());

use hw_regs::pl011::{
    FR_RXFE, FR_TXFF, INT_ALL, INT_RT, INT_RX, UARTDR, UARTFR, UARTICR, UARTIMSC,
};

struct Pl011;

impl Pl011 {
    fn put(&mut self, b: u8) {
        let base = UART_BASE.load(Ordering::Relaxed);
        if base == 0 {
            return;
        }
        // SAFETY: `base` is the board's PL011 (set once by `init` from the board
        // description), mapped as device memory; these are its FR and DR.
        unsafe {
            while core::ptr::read_volatile((base + UARTFR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile((base + UARTDR) as *mut u32, u32::from(b));
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let _g = LOCK.lock();
        let mut u = Pl011;
        let _ = match r.level() {
            log::Level::Info => writeln!(u, "hyp: {}", r.args()),
            l => writeln!(u, "hyp: {l}: {}", r.args()),
        };
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Starts the console on the PL011 at `base` and installs the logger.
pub fn init(base: u64) {
    UART_BASE.store(base, Ordering::Relaxed);
    // A second call (there is none) would only fail to replace the logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Prints a VM's console line under the console lock: `show` writes its
/// bytes (tagged and escaped by `vm::uart::show_line`) through the function
/// it is given, and the line end follows.
pub fn guest_line(show: impl FnOnce(&mut dyn FnMut(u8))) {
    let _g = LOCK.lock();
    let mut u = Pl011;
    show(&mut |b| u.put(b));
    u.put(b'\r');
    u.put(b'\n');
}

/// Prints without taking the lock: for the panic path, which may have
/// interrupted a holder.
pub fn emergency(args: fmt::Arguments<'_>) {
    let _ = Pl011.write_fmt(args);
}

/// Unmasks the console PL011's receive interrupts: RXIM (the FIFO reached
/// its trigger level) and RTIM (characters wait below it), PL011 TRM
/// (DDI 0183) 3.3.10, after clearing any stale interrupt (UARTICR,
/// 3.3.13). Both clear again once the FIFO is read empty, which
/// [`rx_byte`] does. The board set the receiver up (the Pi's
/// `pl011::init` turns RXE on; QEMU's PL011 receives whatever its enable
/// bits say).
pub fn rx_enable() {
    let base = UART_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: `base` is the board's PL011, mapped as device memory; UARTICR
    // and UARTIMSC only change its interrupt state.
    unsafe {
        core::ptr::write_volatile((base + UARTICR) as *mut u32, INT_ALL);
        core::ptr::write_volatile((base + UARTIMSC) as *mut u32, INT_RX | INT_RT);
    }
}

/// Masks the console PL011's receive interrupts (flow control: the
/// focused VM's FIFO is full; what arrives meanwhile waits in the UART's
/// own FIFO, and QEMU's serial back end stops feeding a full UART).
/// [`rx_unmask`] unmasks them again.
pub fn rx_mask() {
    set_imsc(0);
}

/// Unmasks the receive interrupts after [`rx_mask`], without clearing
/// them: the raw status of what waits in the UART must stay set (QEMU's
/// PL011 raises RXRIS only when a character arrives, and none arrives
/// while its FIFO is full; clearing it here would leave the waiting
/// characters unannounced for good).
pub fn rx_unmask() {
    set_imsc(INT_RX | INT_RT);
}

fn set_imsc(mask: u32) {
    let base = UART_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: as in `rx_enable`; UARTIMSC only changes the interrupt mask.
    unsafe { core::ptr::write_volatile((base + UARTIMSC) as *mut u32, mask) };
}

/// Whether the console PL011 holds a received character (UARTFR.RXFE
/// clear).
pub fn rx_ready() -> bool {
    let base = UART_BASE.load(Ordering::Relaxed);
    // SAFETY: as in `rx_enable`; reading UARTFR has no side effect.
    base != 0 && unsafe { core::ptr::read_volatile((base + UARTFR) as *const u32) } & FR_RXFE == 0
}

/// The oldest character the console PL011 received, if any (UARTFR.RXFE
/// clear: UARTDR holds it, and reading UARTDR takes it out, TRM 3.3.1).
/// Error bits (11:8) are dropped with nothing to report them to.
pub fn rx_byte() -> Option<u8> {
    let base = UART_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return None;
    }
    // SAFETY: as in `rx_enable`; reading UARTDR takes the character out of
    // the receive FIFO, which is the intent, and only this CPU reads it
    // (the UART's interrupt goes to CPU 0).
    unsafe {
        if core::ptr::read_volatile((base + UARTFR) as *const u32) & FR_RXFE != 0 {
            return None;
        }
        Some(core::ptr::read_volatile((base + UARTDR) as *const u32) as u8)
    }
}
