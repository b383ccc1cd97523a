//! The hypervisor's console: a PL011 transmitter behind the `log` crate.
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

use hw_regs::pl011::{FR_TXFF, UARTDR, UARTFR};

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
