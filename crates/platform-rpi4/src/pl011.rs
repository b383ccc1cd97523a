//! Bringing up the PL011 (UART0) on GPIO 14/15 at 115200 8N1 before the
//! hypervisor's console uses it, with the MMU off.
//!
//! The Pi firmware routes UART0 to the header pins only with
//! `dtoverlay=disable-bt` (otherwise the mini UART is there and UART0 drives
//! Bluetooth), and sets its baud rate only with `enable_uart=1`. Doing the pin
//! mux and the baud rate here makes the console independent of both. Register
//! offsets: BCM2711 ARM Peripherals, sections 5.2 (GPIO: GPFSEL1,
//! GPIO_PUP_PDN_CNTRL_REG0) and 11.5 (PL011); the PL011's reference clock is
//! 48 MHz (the firmware's `init_uart_clock` default on the Pi 4).
//! QEMU's raspi4b models the same registers, so this runs there too.

use hw_regs::pl011::{FR_BUSY, UARTCR, UARTFBRD, UARTFR, UARTIBRD, UARTICR, UARTLCR_H};

/// GPIO block in the low-peripheral map (ARM physical 0xfe20_0000).
const GPIO_BASE: u64 = 0xfe20_0000;
const GPFSEL1: u64 = 0x04;
const GPIO_PUP_PDN_CNTRL_REG0: u64 = 0xe4;

/// 8 data bits, FIFOs on, 1 stop bit, no parity.
const LCRH_8N1_FIFO: u32 = (0b11 << 5) | (1 << 4);
/// UARTEN, TXE, RXE.
const CR_ON: u32 = (1 << 0) | (1 << 8) | (1 << 9);
/// 48 MHz / (16 * 115200) = 26.042: integer part 26, fraction 0.042 * 64 = 3.
const IBRD_115200: u32 = 26;
const FBRD_115200: u32 = 3;

fn read(addr: u64) -> u32 {
    // SAFETY: `addr` is one of the board's GPIO or PL011 registers (constants
    // above); with the MMU off every access is Device-nGnRnE.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write(addr: u64, value: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Routes GPIO 14/15 to UART0 (ALT0, no pulls) and programs the PL011 at
/// `base` for 115200 8N1 with FIFOs, transmitter and receiver on.
pub fn init(base: u64) {
    // GPIO 14 is GPFSEL1 bits 14:12, GPIO 15 bits 17:15; ALT0 = 0b100.
    let fsel = read(GPIO_BASE + GPFSEL1) & !((0b111 << 12) | (0b111 << 15));
    write(GPIO_BASE + GPFSEL1, fsel | (0b100 << 12) | (0b100 << 15));
    // Two bits a pin from GPIO 0 on; 0 = no pull-up or pull-down.
    let pulls = read(GPIO_BASE + GPIO_PUP_PDN_CNTRL_REG0) & !(0b1111 << 28);
    write(GPIO_BASE + GPIO_PUP_PDN_CNTRL_REG0, pulls);

    // PL011 TRM 3.3.8: disable, let the current character finish, flush the
    // transmit FIFO (LCR_H.FEN = 0), program, then enable.
    write(base + UARTCR, 0);
    let mut spins = 0u32;
    while read(base + UARTFR) & FR_BUSY != 0 && spins < 1_000_000 {
        spins += 1;
    }
    write(base + UARTLCR_H, 0);
    write(base + UARTICR, 0x7ff);
    write(base + UARTIBRD, IBRD_115200);
    write(base + UARTFBRD, FBRD_115200);
    write(base + UARTLCR_H, LCRH_8N1_FIFO);
    write(base + UARTCR, CR_ON);
}
