//! The receive half of the PL011 a guest sees: a receive FIFO the
//! hypervisor fills with what is typed on its console (the physical UART,
//! for the VM that has the console focus), and the registers a PL011
//! driver reads it through. Pure: the FIFO and the register semantics are
//! tested on the host; `vm::console_in` feeds it at EL2.
//!
//! Registers (PrimeCell UART PL011 TRM, DDI 0183, 3.3):
//! - UARTDR (0x000) read: the oldest received character, taken out of the
//!   FIFO (bits 7:0; the error bits 11:8 read 0). With the FIFO empty it
//!   reads 0.
//! - UARTRSR (0x004) read: OE (bit 3) once a character arrived with the
//!   FIFO full (it was dropped and counted, [`Rx::dropped`]); a write to
//!   UARTECR (the same offset) clears it (3.3.2).
//! - UARTFR (0x018): RXFE (bit 4) while the FIFO is empty, RXFF (bit 6)
//!   while it is full; the transmit side is always idle (TXFE).
//! - UARTIMSC (0x038): the interrupt mask, bits 10:0, read/write.
//! - UARTRIS (0x03c): RXRIS (bit 4) and RTRIS (bit 6) are set when a
//!   character arrives and clear when the FIFO is emptied or the guest
//!   writes their bit to UARTICR; OERIS (bit 10) is set on an overrun and
//!   cleared by UARTICR. TXRIS stays 0: transmission never waits, so a
//!   driver never needs the transmit interrupt.
//! - UARTMIS (0x040): UARTRIS & UARTIMSC. UARTICR (0x044): write 1 to clear.
//!
//! There is no baud-rate timing: the receive interrupt's trigger level is
//! one character whatever UARTIFLS says (so a character never waits for a
//! timeout), and the receive-timeout bit is raised with it, so a driver
//! that unmasks either one (Linux's amba-pl011 unmasks both, and RTIM
//! alone while DMA runs) hears of every character. The UART's combined
//! interrupt (UARTINTR) is [`Rx::irq`]: UARTMIS != 0.

use hw_regs::pl011::{
    FR_RXFE, FR_RXFF, FR_TXFE, INT_ALL, INT_OE, INT_RT, INT_RX, RSR_OE, UARTDR, UARTFR, UARTICR,
    UARTIMSC, UARTMIS, UARTRIS, UARTRSR,
};

/// Characters the receive FIFO holds: twice the 32 of a real PL011's,
/// so a line typed in one go waits for the guest's driver.
pub const RX_FIFO: usize = 64;

/// One VM's receive side: its FIFO, interrupt mask and raw status.
#[derive(Debug, Clone)]
pub struct Rx {
    fifo: [u8; RX_FIFO],
    /// Index of the oldest character.
    head: usize,
    /// Characters held.
    len: usize,
    /// UARTIMSC.
    imsc: u32,
    /// The latched UARTRIS bits (RX, RT, OE).
    ris: u32,
    /// UARTRSR.OE.
    overrun: bool,
    /// Characters accepted into the FIFO, and dropped because it was full.
    received: u64,
    dropped: u64,
}

impl Default for Rx {
    fn default() -> Self {
        Self::new()
    }
}

impl Rx {
    /// Empty, every interrupt masked (the PL011's reset state).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            fifo: [0; RX_FIFO],
            head: 0,
            len: 0,
            imsc: 0,
            ris: 0,
            overrun: false,
            received: 0,
            dropped: 0,
        }
    }

    /// A character arrived: into the FIFO, or dropped and counted when the
    /// FIFO is full (never waits). Returns whether it was kept.
    pub fn push(&mut self, b: u8) -> bool {
        if self.len == RX_FIFO {
            self.dropped += 1;
            self.overrun = true;
            self.ris |= INT_OE;
            return false;
        }
        self.fifo[(self.head + self.len) % RX_FIFO] = b;
        self.len += 1;
        self.received += 1;
        self.ris |= INT_RX | INT_RT;
        true
    }

    /// Takes the oldest character out of the FIFO.
    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.fifo[self.head];
        self.head = (self.head + 1) % RX_FIFO;
        self.len -= 1;
        if self.len == 0 {
            // Below the trigger level and nothing left to time out on.
            self.ris &= !(INT_RX | INT_RT);
        }
        Some(b)
    }

    /// UARTRIS.
    #[must_use]
    pub fn ris(&self) -> u32 {
        self.ris
    }

    /// UARTMIS.
    #[must_use]
    pub fn mis(&self) -> u32 {
        self.ris & self.imsc
    }

    /// The UART's interrupt line (UARTINTR): some unmasked interrupt is pending.
    #[must_use]
    pub fn irq(&self) -> bool {
        self.mis() != 0
    }

    /// Characters waiting in the FIFO.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Room left in the FIFO.
    #[must_use]
    pub fn space(&self) -> usize {
        RX_FIFO - self.len
    }

    /// Characters dropped because the FIFO was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Characters accepted into the FIFO.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// UARTFR's receive bits: RXFE or RXFF, and TXFE (the transmitter is
    /// always empty).
    #[must_use]
    pub fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.len == 0 {
            fr |= FR_RXFE;
        }
        if self.len == RX_FIFO {
            fr |= FR_RXFF;
        }
        fr
    }

    /// A read of register `offset` if it belongs to the receive side
    /// (UARTDR pops a character); `None` for the others.
    pub fn read(&mut self, offset: u64) -> Option<u32> {
        Some(match offset {
            UARTDR => u32::from(self.pop().unwrap_or(0)),
            UARTRSR => {
                if self.overrun {
                    RSR_OE
                } else {
                    0
                }
            }
            UARTFR => self.flags(),
            UARTIMSC => self.imsc,
            UARTRIS => self.ris(),
            UARTMIS => self.mis(),
            _ => return None,
        })
    }

    /// A write of `value` to register `offset`: true if the receive side
    /// took it (UARTECR, UARTIMSC, UARTICR).
    pub fn write(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            // UARTECR: any value clears the error flags.
            UARTRSR => self.overrun = false,
            UARTIMSC => self.imsc = value & INT_ALL,
            UARTICR => self.ris &= !value,
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_uart_reads_idle() {
        let mut rx = Rx::new();
        assert_eq!(rx.read(UARTFR), Some(FR_TXFE | FR_RXFE));
        assert_eq!(rx.read(UARTDR), Some(0));
        assert_eq!(rx.read(UARTRIS), Some(0));
        assert_eq!(rx.read(UARTMIS), Some(0));
        assert_eq!(rx.read(UARTRSR), Some(0));
        assert!(!rx.irq());
        // Not receive-side registers.
        assert_eq!(rx.read(0x030), None);
        assert!(!rx.write(UARTDR, 0x41));
    }

    #[test]
    fn characters_come_out_in_order() {
        let mut rx = Rx::new();
        for b in b"hi\n" {
            assert!(rx.push(*b));
        }
        assert_eq!(rx.read(UARTFR), Some(FR_TXFE));
        let got: Vec<u32> = (0..3)
            .map(|_| rx.read(UARTDR).expect("a receive register"))
            .collect();
        assert_eq!(got, [u32::from(b'h'), u32::from(b'i'), u32::from(b'\n')]);
        assert_eq!(rx.read(UARTFR), Some(FR_TXFE | FR_RXFE));
        assert_eq!(rx.received(), 3);
    }

    #[test]
    fn full_fifo_drops_counts_and_flags_overrun() {
        let mut rx = Rx::new();
        for i in 0..RX_FIFO {
            assert!(rx.push(i as u8));
        }
        assert_eq!(rx.read(UARTFR), Some(FR_TXFE | FR_RXFF));
        assert!(!rx.push(0xaa));
        assert!(!rx.push(0xbb));
        assert_eq!(rx.dropped(), 2);
        assert_eq!(rx.pending(), RX_FIFO);
        assert_eq!(rx.read(UARTRSR), Some(RSR_OE));
        assert_eq!(rx.ris() & INT_OE, INT_OE);
        // The FIFO kept the first 64, unharmed; the ring wraps after.
        assert_eq!(rx.read(UARTDR), Some(0));
        assert!(rx.push(0xcc));
        for i in 1..RX_FIFO {
            assert_eq!(rx.read(UARTDR), Some(i as u32));
        }
        assert_eq!(rx.read(UARTDR), Some(0xcc));
        // UARTECR clears OE, UARTICR the overrun interrupt.
        assert!(rx.write(UARTRSR, 0));
        assert_eq!(rx.read(UARTRSR), Some(0));
        assert!(rx.write(UARTICR, INT_OE));
        assert_eq!(rx.ris(), 0);
    }

    #[test]
    fn receive_interrupt_follows_the_fifo_and_the_mask() {
        let mut rx = Rx::new();
        rx.push(b'a');
        // Raw status set, but masked: no interrupt.
        assert_eq!(rx.read(UARTRIS), Some(INT_RX | INT_RT));
        assert!(!rx.irq());
        // Linux's amba-pl011: IMSC = RTIM | RXIM.
        assert!(rx.write(UARTIMSC, INT_RX | INT_RT));
        assert_eq!(rx.read(UARTIMSC), Some(INT_RX | INT_RT));
        assert!(rx.irq());
        assert_eq!(rx.read(UARTMIS), Some(INT_RX | INT_RT));
        // Emptying the FIFO drops the line.
        rx.push(b'b');
        rx.read(UARTDR);
        assert!(rx.irq());
        rx.read(UARTDR);
        assert!(!rx.irq());
        assert_eq!(rx.read(UARTRIS), Some(0));
        // RTIM alone (Linux while RX DMA runs) still hears a character.
        rx.write(UARTIMSC, INT_RT);
        rx.push(b'c');
        assert!(rx.irq());
        assert_eq!(rx.read(UARTMIS), Some(INT_RT));
        // UARTICR clears the latched bits until the next character.
        rx.write(UARTICR, INT_RX | INT_RT);
        assert!(!rx.irq());
        assert_eq!(rx.pending(), 1);
        rx.push(b'd');
        assert!(rx.irq());
        // Masking everything drops the line; only bits 10:0 exist.
        rx.write(UARTIMSC, 0xffff_f800);
        assert_eq!(rx.read(UARTIMSC), Some(0));
        assert!(!rx.irq());
    }

    #[test]
    fn transmit_interrupt_is_never_raised() {
        let mut rx = Rx::new();
        rx.write(UARTIMSC, INT_ALL);
        assert!(!rx.irq());
        rx.push(b'x');
        assert_eq!(rx.read(UARTMIS), Some(INT_RX | INT_RT));
    }
}
