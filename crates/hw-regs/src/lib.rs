//! Register maps of the devices that more than one crate drives or emulates, written once: the
//! GIC (GICv3 distributor, redistributor and SGI frame; GICv2 distributor and CPU interface) and
//! the PL011 UART.
//!
//! Users: the hypervisor's physical GIC and console (`hyp-core`), the Raspberry Pi 4's GIC-400
//! and PL011 set-up (`platform-rpi4`), the emulated GIC (`vgic`) and UART (`hyp-core`'s
//! `vm::uart`), and the guests' GIC driver (`guest-rt`).
//!
//! Offsets are `u64`, the type of the physical addresses and trapped offsets they are added to;
//! each module's `as_usize` holds the same offsets as `usize` for code that does pointer
//! arithmetic (the guests). Both come from the one list in each module.
//!
//! Why not `arm-gic`'s register structs: `vgic` decodes trapped offsets rather than accessing a
//! mapped block, and the other users poke a few registers with plain volatile accesses (see
//! `vgic`'s crate docs); this crate's tests check these offsets against `arm-gic`'s structs.
#![no_std]

/// Declares offset constants as `u64` and, in a child module `as_usize`, the same as `usize`.
macro_rules! offsets {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        $( $(#[$doc])* pub const $name: u64 = $value; )*
        /// The same offsets as `usize`, for pointer arithmetic.
        pub mod as_usize {
            $( $(#[$doc])* pub const $name: usize = super::$name as usize; )*
        }
    };
}

/// The GIC: GICv3 architecture specification (IHI 0069) chapter 12, GICv2 (IHI 0048B) chapter
/// 4; the same offsets as Linux's `include/linux/irqchip/arm-gic{,-v3}.h`. The distributor
/// registers up to `GICD_ICFGR` have the same offsets on both versions.
pub mod gic {
    offsets! {
        // Distributor (GICD), from its base.
        /// `GICD_CTLR`.
        GICD_CTLR = 0x000;
        /// `GICD_TYPER`.
        GICD_TYPER = 0x004;
        /// `GICD_IIDR`.
        GICD_IIDR = 0x008;
        /// `GICD_TYPER2` (v3).
        GICD_TYPER2 = 0x00c;
        /// `GICD_STATUSR` (v3).
        GICD_STATUSR = 0x010;
        /// `GICD_SETSPI_NSR` (v3).
        GICD_SETSPI_NSR = 0x040;
        /// `GICD_CLRSPI_NSR` (v3).
        GICD_CLRSPI_NSR = 0x048;
        /// `GICD_SETSPI_SR` (v3).
        GICD_SETSPI_SR = 0x050;
        /// `GICD_CLRSPI_SR` (v3).
        GICD_CLRSPI_SR = 0x058;
        /// `GICD_IGROUPR<n>`, one bit per INTID.
        GICD_IGROUPR = 0x080;
        /// `GICD_ISENABLER<n>`.
        GICD_ISENABLER = 0x100;
        /// `GICD_ICENABLER<n>`.
        GICD_ICENABLER = 0x180;
        /// `GICD_ISPENDR<n>`.
        GICD_ISPENDR = 0x200;
        /// `GICD_ICPENDR<n>`.
        GICD_ICPENDR = 0x280;
        /// `GICD_ISACTIVER<n>`.
        GICD_ISACTIVER = 0x300;
        /// `GICD_ICACTIVER<n>`.
        GICD_ICACTIVER = 0x380;
        /// `GICD_IPRIORITYR<n>`, one byte per INTID.
        GICD_IPRIORITYR = 0x400;
        /// `GICD_ITARGETSR<n>` (v2), one byte per INTID.
        GICD_ITARGETSR = 0x800;
        /// `GICD_ICFGR<n>`, two bits per INTID.
        GICD_ICFGR = 0xc00;
        /// `GICD_IGRPMODR<n>` (v3).
        GICD_IGRPMODR = 0xd00;
        /// `GICD_NSACR<n>`.
        GICD_NSACR = 0xe00;
        /// `GICD_SGIR` (v2).
        GICD_SGIR = 0xf00;
        /// `GICD_CPENDSGIR<n>` (v2), one byte per SGI.
        GICD_CPENDSGIR = 0xf10;
        /// `GICD_SPENDSGIR<n>` (v2), one byte per SGI.
        GICD_SPENDSGIR = 0xf20;
        /// `GICD_IROUTER<n>` (v3): INTID n's at `GICD_IROUTER + 8 * n` (SPIs only).
        GICD_IROUTER = 0x6000;
        /// GICv3: the distributor's ID registers (`GICD_PIDR4` .. `GICD_CIDR3`).
        GICD_ID_V3 = 0xffd0;
        /// GICv3 `GICD_PIDR2` (ArchRev in bits \[7:4\]).
        GICD_PIDR2_V3 = 0xffe8;
        /// GICv2: the distributor's ID registers (`GICD_PIDR4` .. `GICD_CIDR3`).
        GICD_ID_V2 = 0xfd0;
        /// GICv2 `GICD_PIDR2` (ArchRev in bits \[7:4\]).
        GICD_PIDR2_V2 = 0xfe8;
        /// GICv3 distributor frame size (64 KiB).
        GICD_SIZE_V3 = 0x1_0000;
        /// GICv2 distributor frame size (4 KiB).
        GICD_SIZE_V2 = 0x1000;

        // GICv3 redistributor: RD frame, then SGI frame.
        /// One redistributor: RD frame + SGI frame (2 x 64 KiB, no VLPI frames); redistributor
        /// n is at `n * GICR_STRIDE` from the first.
        GICR_STRIDE = 0x2_0000;
        /// The SGI frame's offset from its redistributor's RD frame.
        GICR_SGI_FRAME = 0x1_0000;
        /// `GICR_CTLR` (RD frame).
        GICR_CTLR = 0x00;
        /// `GICR_IIDR` (RD frame).
        GICR_IIDR = 0x04;
        /// `GICR_TYPER` (RD frame, 64-bit).
        GICR_TYPER = 0x08;
        /// `GICR_STATUSR` (RD frame).
        GICR_STATUSR = 0x10;
        /// `GICR_WAKER` (RD frame).
        GICR_WAKER = 0x14;
        /// `GICR_PROPBASER` (RD frame, 64-bit).
        GICR_PROPBASER = 0x70;
        /// `GICR_PENDBASER` (RD frame, 64-bit).
        GICR_PENDBASER = 0x78;
        /// The RD frame's ID registers (`GICR_PIDR4` .. `GICR_CIDR3`).
        GICR_ID = 0xffd0;
        /// `GICR_IGROUPR0`, from the SGI frame.
        GICR_IGROUPR0 = 0x080;
        /// `GICR_ISENABLER0`, from the SGI frame.
        GICR_ISENABLER0 = 0x100;
        /// `GICR_ICENABLER0`, from the SGI frame.
        GICR_ICENABLER0 = 0x180;
        /// `GICR_ISPENDR0`, from the SGI frame.
        GICR_ISPENDR0 = 0x200;
        /// `GICR_ICPENDR0`, from the SGI frame.
        GICR_ICPENDR0 = 0x280;
        /// `GICR_ISACTIVER0`, from the SGI frame.
        GICR_ISACTIVER0 = 0x300;
        /// `GICR_ICACTIVER0`, from the SGI frame.
        GICR_ICACTIVER0 = 0x380;
        /// `GICR_IPRIORITYR<n>`, from the SGI frame (INTIDs 0..32, one byte each).
        GICR_IPRIORITYR = 0x400;
        /// `GICR_ICFGR0` (SGIs) and `GICR_ICFGR1` (PPIs), from the SGI frame.
        GICR_ICFGR = 0xc00;
        /// `GICR_IGRPMODR0`, from the SGI frame.
        GICR_IGRPMODR0 = 0xd00;
        /// `GICR_NSACR`, from the SGI frame.
        GICR_NSACR = 0xe00;

        // GICv2 CPU interface (GICC), IHI 0048B 4.4 table 4-2.
        /// `GICC_CTLR`.
        GICC_CTLR = 0x00;
        /// `GICC_PMR`.
        GICC_PMR = 0x04;
        /// `GICC_BPR`.
        GICC_BPR = 0x08;
        /// `GICC_IAR`.
        GICC_IAR = 0x0c;
        /// `GICC_EOIR`.
        GICC_EOIR = 0x10;
    }
}

/// The PL011 UART: PrimeCell UART (PL011) Technical Reference Manual (DDI 0183) 3.2.
pub mod pl011 {
    offsets! {
        /// `UARTDR`, the data register.
        UARTDR = 0x000;
        /// `UARTRSR` (read) / `UARTECR` (write), receive status and error clear.
        UARTRSR = 0x004;
        /// `UARTFR`, the flag register.
        UARTFR = 0x018;
        /// `UARTIBRD`, integer baud rate divisor.
        UARTIBRD = 0x024;
        /// `UARTFBRD`, fractional baud rate divisor.
        UARTFBRD = 0x028;
        /// `UARTLCR_H`, line control.
        UARTLCR_H = 0x02c;
        /// `UARTCR`, control.
        UARTCR = 0x030;
        /// `UARTIFLS`, FIFO interrupt level select.
        UARTIFLS = 0x034;
        /// `UARTIMSC`, interrupt mask set/clear (1 = enabled).
        UARTIMSC = 0x038;
        /// `UARTRIS`, raw interrupt status.
        UARTRIS = 0x03c;
        /// `UARTMIS`, masked interrupt status (`UARTRIS & UARTIMSC`).
        UARTMIS = 0x040;
        /// `UARTICR`, interrupt clear.
        UARTICR = 0x044;
        /// `UARTPeriphID0`; `UARTPeriphID1..3` and `UARTPCellID0..3` follow, 4 bytes apart.
        UARTPERIPHID0 = 0xfe0;
    }

    /// `UARTFR.BUSY` (bit 3): transmitting.
    pub const FR_BUSY: u32 = 1 << 3;
    /// `UARTFR.RXFE` (bit 4): receive FIFO empty.
    pub const FR_RXFE: u32 = 1 << 4;
    /// `UARTFR.TXFF` (bit 5): transmit FIFO full.
    pub const FR_TXFF: u32 = 1 << 5;
    /// `UARTFR.RXFF` (bit 6): receive FIFO full.
    pub const FR_RXFF: u32 = 1 << 6;
    /// `UARTFR.TXFE` (bit 7): transmit FIFO empty.
    pub const FR_TXFE: u32 = 1 << 7;
    /// `UARTCR.UARTEN` (bit 0): UART enable.
    pub const CR_UARTEN: u32 = 1 << 0;
    /// `UARTCR.TXE` (bit 8): transmit enable.
    pub const CR_TXE: u32 = 1 << 8;
    /// `UARTCR.RXE` (bit 9): receive enable.
    pub const CR_RXE: u32 = 1 << 9;
    /// `UARTRSR.OE` (bit 3): overrun, a character arrived with the receive FIFO full.
    pub const RSR_OE: u32 = 1 << 3;
    /// Receive interrupt (bit 4 of `UARTIMSC`, `UARTRIS`, `UARTMIS`, `UARTICR`): the receive
    /// FIFO reached its trigger level.
    pub const INT_RX: u32 = 1 << 4;
    /// Transmit interrupt (bit 5 of the same registers).
    pub const INT_TX: u32 = 1 << 5;
    /// Receive timeout interrupt (bit 6): data waits in the receive FIFO.
    pub const INT_RT: u32 = 1 << 6;
    /// Overrun error interrupt (bit 10).
    pub const INT_OE: u32 = 1 << 10;
    /// The interrupt bits the interrupt registers implement (10:0).
    pub const INT_ALL: u32 = 0x7ff;
}
