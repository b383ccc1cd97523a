//! The PL011 a guest sees: an emulated data register that the hypervisor
//! forwards to the real console a line at a time.
//!
//! Emulated registers (PrimeCell UART PL011 TRM, DDI 0183): DR (0x000) takes
//! writes; FR (0x018) reads as "transmit FIFO empty, receive FIFO empty";
//! the PrimeCell/peripheral ID registers read their PL011 values so drivers
//! that probe them recognise the device; every other register reads as zero
//! and ignores writes.

use hw_regs::pl011::{FR_RXFE, FR_TXFE, UARTDR, UARTFR, UARTPERIPHID0};

/// Size of the emulated register window.
pub const WINDOW: u64 = hyp_abi::layout::UART_SIZE;

/// Flag register value: TXFE (bit 7) and RXFE (bit 4), never busy or full.
const FR_IDLE: u64 = (FR_TXFE | FR_RXFE) as u64;

/// Longest line printed in one piece; longer output is split. Long enough
/// for Linux's version banner.
pub const LINE_MAX: usize = 256;

/// Per-vCPU line buffer.
#[derive(Debug)]
pub struct LineBuffer {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    /// An empty buffer.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// Adds a byte; returns a complete line (without the newline) when the byte
    /// ends one or the buffer is full. Carriage returns are dropped.
    pub fn push(&mut self, b: u8) -> Option<&[u8]> {
        if b == b'\r' {
            return None;
        }
        if b != b'\n' {
            self.buf[self.len] = b;
            self.len += 1;
            if self.len < self.buf.len() {
                return None;
            }
        }
        let n = self.len;
        self.len = 0;
        Some(&self.buf[..n])
    }
}

/// Most vCPUs whose console output [`VmConsole`] assembles.
pub const CONSOLE_VCPUS: usize = 8;

/// One VM's console: a line buffer per vCPU, so vCPUs printing at the same
/// time each get whole lines. A newline written by a vCPU with nothing
/// buffered ends the line another vCPU of the VM left unfinished instead:
/// a guest kernel's console writer can move to another vCPU in the middle
/// of a line (Linux does, between the text and its newline).
#[derive(Debug)]
pub struct VmConsole {
    lines: [LineBuffer; CONSOLE_VCPUS],
}

impl Default for VmConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl VmConsole {
    /// No output buffered.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            lines: [const { LineBuffer::new() }; CONSOLE_VCPUS],
        }
    }

    /// Adds byte `b` written by `vcpu`; returns a complete line when one ends.
    pub fn push(&mut self, vcpu: usize, b: u8) -> Option<&[u8]> {
        let vcpu = vcpu % CONSOLE_VCPUS;
        let target = if b == b'\n' && self.lines[vcpu].len == 0 {
            (0..CONSOLE_VCPUS)
                .find(|&w| self.lines[w].len != 0)
                .unwrap_or(vcpu)
        } else {
            vcpu
        };
        self.lines[target].push(b)
    }
}

/// Result of a register read.
#[must_use]
pub fn read(offset: u64) -> u64 {
    match offset {
        UARTFR => FR_IDLE,
        // UARTPeriphID0..3 and UARTPCellID0..3, 4 bytes apart.
        id @ UARTPERIPHID0.. if id.is_multiple_of(4) => {
            const IDS: [u64; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];
            IDS.get(((id - UARTPERIPHID0) / 4) as usize)
                .copied()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// A register write: returns the byte to print for DR, nothing otherwise.
#[must_use]
pub fn write(offset: u64, value: u64) -> Option<u8> {
    (offset == UARTDR).then_some(value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_cr_dropped() {
        let mut l = LineBuffer::new();
        for b in b"hi\r" {
            assert!(l.push(*b).is_none());
        }
        assert_eq!(l.push(b'\n'), Some(&b"hi"[..]));
        assert_eq!(l.push(b'\n'), Some(&b""[..]));
    }

    #[test]
    fn full_buffer_flushes() {
        let mut l = LineBuffer::new();
        for _ in 0..LINE_MAX - 1 {
            assert!(l.push(b'x').is_none());
        }
        assert_eq!(l.push(b'y').map(<[u8]>::len), Some(LINE_MAX));
    }

    #[test]
    fn console_lines_per_vcpu_and_moved_newline() {
        let mut c = VmConsole::new();
        for b in b"ab" {
            assert!(c.push(0, *b).is_none());
        }
        for b in b"xy" {
            assert!(c.push(1, *b).is_none());
        }
        // Each vCPU's own newline ends its own line.
        assert_eq!(c.push(1, b'\n'), Some(&b"xy"[..]));
        // vCPU 2 has nothing buffered: its newline ends vCPU 0's line.
        assert_eq!(c.push(2, b'\n'), Some(&b"ab"[..]));
        // A newline with nothing buffered anywhere is an empty line.
        assert_eq!(c.push(3, b'\n'), Some(&b""[..]));
    }

    #[test]
    fn registers() {
        assert_eq!(read(0x18), 0x90);
        assert_eq!(read(0xfe0), 0x11);
        assert_eq!(read(0x30), 0);
        assert_eq!(write(0, 0x41), Some(b'A'));
        assert_eq!(write(0x30, 0x301), None);
    }
}
