//! The PL011 a guest sees: an emulated data register that the hypervisor
//! forwards to the real console a line at a time.
//!
//! Emulated registers (PrimeCell UART PL011 TRM, DDI 0183): DR (0x000) takes
//! writes; the receive side (DR reads, RSR/ECR, FR, IMSC, RIS, MIS, ICR) is
//! [`super::uart_rx`], whose FIFO the hypervisor fills with what is typed on
//! its console while the VM has the console focus; FR's transmit bits say
//! "transmit FIFO empty, never busy or full"; the PrimeCell/peripheral ID
//! registers read their PL011 values so drivers that probe them recognise
//! the device; every other register (CR, IFLS, the baud-rate and line
//! control registers) reads as zero and ignores writes.
//!
//! What a guest prints cannot pass for the hypervisor (`hyp:` lines) or the
//! host VM (`host:`, `demo:` lines): [`show_line`] puts `[vmN] ` before
//! every guest line (each piece of a split long line too) and escapes
//! control characters, so no guest line starts with anything but its VM's
//! tag and none moves the cursor or rewrites the terminal.

use super::uart_rx::Rx;
use hw_regs::pl011::{UARTDR, UARTPERIPHID0};

/// Size of the emulated register window.
pub const WINDOW: u64 = hyp_abi::layout::UART_SIZE;

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
/// of a line (Linux does, between the text and its newline). Also the
/// receive side ([`Rx`]).
#[derive(Debug)]
pub struct VmConsole {
    lines: [LineBuffer; CONSOLE_VCPUS],
    /// What was typed for this VM, and the receive registers.
    pub rx: Rx,
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
            rx: Rx::new(),
        }
    }

    /// A read of register `offset` (a UARTDR read takes a received
    /// character out of the FIFO).
    pub fn read(&mut self, offset: u64) -> u64 {
        match self.rx.read(offset) {
            Some(v) => u64::from(v),
            None => fixed_read(offset),
        }
    }

    /// A write of `value` to register `offset`: the byte to print for
    /// UARTDR; the receive side's registers take theirs.
    pub fn write(&mut self, offset: u64, value: u64) -> Option<u8> {
        if offset == UARTDR {
            return Some(value as u8);
        }
        // The registers are 32 bits wide; the truncation keeps all of them.
        let _ = self.rx.write(offset, value as u32);
        None
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

/// Writes console line `line` of VM `vm` (a guest's handle; `None` for the
/// host VM, whose lines are the VMM's own and stay untagged) through `out`,
/// as it goes on the real console (without the line end): `[vmN] ` first
/// for a guest, then the text with every control character escaped.
pub fn show_line(vm: Option<u64>, line: &[u8], mut out: impl FnMut(u8)) {
    if let Some(h) = vm {
        out(b'[');
        out(b'v');
        out(b'm');
        decimal(h, &mut out);
        out(b']');
        out(b' ');
    }
    escape(line, &mut out);
}

/// `n` in decimal.
fn decimal(n: u64, out: &mut impl FnMut(u8)) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out(d);
    }
}

/// `line` with its control characters as `\xNN`: C0 (below 0x20, so
/// ESC, CR, BS, tab), DEL (0x7f), the C1 controls U+0080..U+009F (some
/// terminals take U+009B as CSI), and bytes that are not UTF-8 (a raw 0x9b
/// is CSI to an 8-bit terminal). Printable ASCII and other UTF-8 pass as
/// they are.
fn escape(line: &[u8], out: &mut impl FnMut(u8)) {
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            let control = c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c);
            for &b in bytes {
                if control {
                    hex_escape(b, out);
                } else {
                    out(b);
                }
            }
        }
        for &b in chunk.invalid() {
            hex_escape(b, out);
        }
    }
}

/// `\xNN`, lower-case hex.
fn hex_escape(b: u8, out: &mut impl FnMut(u8)) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out(b'\\');
    out(b'x');
    out(HEX[usize::from(b >> 4)]);
    out(HEX[usize::from(b & 0xf)]);
}

/// Result of a read of a register outside the receive side: the ID
/// registers, zero for the others.
#[must_use]
fn fixed_read(offset: u64) -> u64 {
    match offset {
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

    /// What `show_line` prints for `bytes` written by VM `vm`, line by line
    /// as the VM's console assembles them.
    fn shown(vm: Option<u64>, bytes: &[u8]) -> Vec<String> {
        let mut c = VmConsole::new();
        let mut lines = Vec::new();
        for &b in bytes {
            if let Some(line) = c.push(0, b) {
                let mut out = Vec::new();
                show_line(vm, line, |b| out.push(b));
                lines.push(String::from_utf8(out).expect("shown lines are UTF-8"));
            }
        }
        lines
    }

    #[test]
    fn guest_lines_tagged_and_escaped() {
        assert_eq!(shown(Some(3), b"hello\n"), ["[vm3] hello"]);
        assert_eq!(shown(Some(65534), b"\n"), ["[vm65534] "]);
        assert_eq!(shown(Some(1), b"tab\there\n"), ["[vm1] tab\\x09here"]);
        assert_eq!(shown(Some(1), b"del\x7f\x00\n"), ["[vm1] del\\x7f\\x00"]);
        // UTF-8 as it is; C1 controls (U+009B, CSI) and bytes that are not
        // UTF-8 escaped.
        assert_eq!(
            shown(Some(2), "caf\u{e9} \u{2713} \u{9b}2J\n".as_bytes()),
            ["[vm2] caf\u{e9} \u{2713} \\xc2\\x9b2J"]
        );
        assert_eq!(
            shown(Some(2), b"a\x9b2J\xe2\x9c\n"),
            ["[vm2] a\\x9b2J\\xe2\\x9c"]
        );
        // The host VM's lines stay untagged (still escaped).
        assert_eq!(shown(None, b"host: VM 1 up\n"), ["host: VM 1 up"]);
        assert_eq!(shown(None, b"\x1b[2Jx\n"), ["\\x1b[2Jx"]);
    }

    #[test]
    fn hostile_guest_lines() {
        let mut long = vec![b'x'; LINE_MAX];
        long.extend_from_slice(b"hyp: PANIC on CPU 0\n");
        let cases: [(&[u8], &[&str]); 6] = [
            (
                b"hyp: VM 1 vCPU 0 requested SYSTEM_OFF\n",
                &["[vm7] hyp: VM 1 vCPU 0 requested SYSTEM_OFF"],
            ),
            // CR is dropped by the line buffer: no return to column 0.
            (
                b"\rhost: VM 1 (guest-hello) powered off\r\n",
                &["[vm7] host: VM 1 (guest-hello) powered off"],
            ),
            (b"demo: PASS\n", &["[vm7] demo: PASS"]),
            // Erase the line, back to column 0, and a fake hypervisor line.
            (b"\x1b[2K\x1b[Ghyp: ok\n", &["[vm7] \\x1b[2K\\x1b[Ghyp: ok"]),
            (
                b"\x08\x08\x08\x08\x08hyp: ok\n",
                &["[vm7] \\x08\\x08\\x08\\x08\\x08hyp: ok"],
            ),
            // A line longer than the buffer is split, and its second piece
            // is tagged too.
            (
                &long,
                &[
                    &format!("[vm7] {}", "x".repeat(LINE_MAX)),
                    "[vm7] hyp: PANIC on CPU 0",
                ],
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                shown(Some(7), bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    /// Whatever the bytes, every line a guest prints starts with its tag, is
    /// printable, and so never starts with `hyp:`, `host:` or `demo:`.
    #[test]
    fn guest_lines_never_pass_for_hyp_or_host() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut bytes = Vec::new();
        for _ in 0..200_000 {
            // xorshift64: bytes weighted towards newlines, ESC and the tags.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 8 {
                0 => bytes.push(b'\n'),
                1 => bytes.push(b'\r'),
                2 => bytes.extend_from_slice(b"hyp: "),
                3 => bytes.extend_from_slice(b"\x1b[1Ghost: "),
                4 => bytes.extend_from_slice(b"demo:"),
                _ => bytes.push((x >> 8) as u8),
            }
        }
        bytes.push(b'\n');
        let lines = shown(Some(42), &bytes);
        assert!(lines.len() > 10_000);
        for l in lines {
            let text = l
                .strip_prefix("[vm42] ")
                .unwrap_or_else(|| panic!("untagged {l:?}"));
            assert!(!text.contains(['\r', '\n', '\x1b']), "{l:?}");
            assert!(!l.chars().any(char::is_control), "{l:?}");
            for tag in ["hyp:", "host:", "demo:"] {
                assert!(!l.starts_with(tag), "{l:?}");
            }
        }
    }

    #[test]
    fn registers() {
        let mut c = VmConsole::new();
        // Idle: transmit and receive FIFOs empty (what FR always read
        // before the receive side existed).
        assert_eq!(c.read(0x18), 0x90);
        assert_eq!(c.read(0xfe0), 0x11);
        assert_eq!(c.read(0xff0), 0x0d);
        assert_eq!(c.read(0x30), 0);
        assert_eq!(c.write(0, 0x41), Some(b'A'));
        assert_eq!(c.write(0x30, 0x301), None);
        assert_eq!(c.read(0x30), 0);
        // A received character: FR says so, DR hands it out, a DR write
        // still prints.
        c.rx.push(b'z');
        assert_eq!(c.read(0x18), 0x80);
        assert_eq!(c.write(0, 0x42), Some(b'B'));
        assert_eq!(c.read(0), u64::from(b'z'));
        assert_eq!(c.read(0x18), 0x90);
        // IMSC through the console.
        assert_eq!(c.write(0x38, 0x50), None);
        assert_eq!(c.read(0x38), 0x50);
    }
}
