//! The GIC offsets of this crate, checked against `arm-gic`'s register structs (the crate is not
//! a runtime dependency: see the crate docs). Not in those structs, so not checked here: the
//! GICv2 distributor's ID registers (`GICD_ID_V2`, `GICD_PIDR2_V2`) and `GICD_SIZE_V2`.

use arm_gic::gicv2::registers::{Gicc, Gicd as GicdV2};
use arm_gic::gicv3::registers::{Gicd, Gicr, Sgi};
use core::mem::offset_of;
use hw_regs::gic::*;

fn at(off: usize) -> u64 {
    off as u64
}

#[test]
fn gicd_v3_offsets_match_arm_gic() {
    assert_eq!(at(offset_of!(Gicd, ctlr)), GICD_CTLR);
    assert_eq!(at(offset_of!(Gicd, typer)), GICD_TYPER);
    assert_eq!(at(offset_of!(Gicd, iidr)), GICD_IIDR);
    assert_eq!(at(offset_of!(Gicd, typer2)), GICD_TYPER2);
    assert_eq!(at(offset_of!(Gicd, statusr)), GICD_STATUSR);
    assert_eq!(at(offset_of!(Gicd, setspi_nsr)), GICD_SETSPI_NSR);
    assert_eq!(at(offset_of!(Gicd, clrspi_nsr)), GICD_CLRSPI_NSR);
    assert_eq!(at(offset_of!(Gicd, setspi_sr)), GICD_SETSPI_SR);
    assert_eq!(at(offset_of!(Gicd, clrspi_sr)), GICD_CLRSPI_SR);
    assert_eq!(at(offset_of!(Gicd, igroupr)), GICD_IGROUPR);
    assert_eq!(at(offset_of!(Gicd, isenabler)), GICD_ISENABLER);
    assert_eq!(at(offset_of!(Gicd, icenabler)), GICD_ICENABLER);
    assert_eq!(at(offset_of!(Gicd, ispendr)), GICD_ISPENDR);
    assert_eq!(at(offset_of!(Gicd, icpendr)), GICD_ICPENDR);
    assert_eq!(at(offset_of!(Gicd, isactiver)), GICD_ISACTIVER);
    assert_eq!(at(offset_of!(Gicd, icactiver)), GICD_ICACTIVER);
    assert_eq!(at(offset_of!(Gicd, ipriorityr)), GICD_IPRIORITYR);
    assert_eq!(at(offset_of!(Gicd, itargetsr)), GICD_ITARGETSR);
    assert_eq!(at(offset_of!(Gicd, icfgr)), GICD_ICFGR);
    assert_eq!(at(offset_of!(Gicd, igrpmodr)), GICD_IGRPMODR);
    assert_eq!(at(offset_of!(Gicd, nsacr)), GICD_NSACR);
    assert_eq!(at(offset_of!(Gicd, sigr)), GICD_SGIR);
    assert_eq!(at(offset_of!(Gicd, cpendsgir)), GICD_CPENDSGIR);
    assert_eq!(at(offset_of!(Gicd, spendsgir)), GICD_SPENDSGIR);
    // arm-gic's array starts at IROUTER<32>: IROUTER<n> = 0x6000 + 8n.
    assert_eq!(at(offset_of!(Gicd, irouter)), GICD_IROUTER + 8 * 32);
    assert_eq!(at(offset_of!(Gicd, id_registers0)), GICD_ID_V3);
    assert_eq!(at(offset_of!(Gicd, pidr2)), GICD_PIDR2_V3);
    assert_eq!(at(size_of::<Gicd>()), GICD_SIZE_V3);
}

#[test]
fn gicd_v2_and_gicc_offsets_match_arm_gic() {
    assert_eq!(at(offset_of!(GicdV2, ctlr)), GICD_CTLR);
    assert_eq!(at(offset_of!(GicdV2, typer)), GICD_TYPER);
    assert_eq!(at(offset_of!(GicdV2, igroupr)), GICD_IGROUPR);
    assert_eq!(at(offset_of!(GicdV2, isenabler)), GICD_ISENABLER);
    assert_eq!(at(offset_of!(GicdV2, icenabler)), GICD_ICENABLER);
    assert_eq!(at(offset_of!(GicdV2, ispendr)), GICD_ISPENDR);
    assert_eq!(at(offset_of!(GicdV2, icpendr)), GICD_ICPENDR);
    assert_eq!(at(offset_of!(GicdV2, icactiver)), GICD_ICACTIVER);
    assert_eq!(at(offset_of!(GicdV2, ipriorityr)), GICD_IPRIORITYR);
    assert_eq!(at(offset_of!(GicdV2, itargetsr)), GICD_ITARGETSR);
    assert_eq!(at(offset_of!(GicdV2, icfgr)), GICD_ICFGR);
    assert_eq!(at(offset_of!(GicdV2, sgir)), GICD_SGIR);
    assert_eq!(at(offset_of!(Gicc, ctlr)), GICC_CTLR);
    assert_eq!(at(offset_of!(Gicc, pmr)), GICC_PMR);
    assert_eq!(at(offset_of!(Gicc, bpr)), GICC_BPR);
    assert_eq!(at(offset_of!(Gicc, iar)), GICC_IAR);
    assert_eq!(at(offset_of!(Gicc, eoir)), GICC_EOIR);
}

#[test]
fn gicr_offsets_match_arm_gic() {
    assert_eq!(at(offset_of!(Gicr, ctlr)), GICR_CTLR);
    assert_eq!(at(offset_of!(Gicr, iidr)), GICR_IIDR);
    assert_eq!(at(offset_of!(Gicr, typer)), GICR_TYPER);
    assert_eq!(at(offset_of!(Gicr, statusr)), GICR_STATUSR);
    assert_eq!(at(offset_of!(Gicr, waker)), GICR_WAKER);
    assert_eq!(at(offset_of!(Gicr, propbaser)), GICR_PROPBASER);
    assert_eq!(at(offset_of!(Gicr, pendbaser)), GICR_PENDBASER);
    assert_eq!(at(offset_of!(Gicr, id_registers0)), GICR_ID);
    assert_eq!(at(size_of::<Gicr>()), GICR_SGI_FRAME);
    assert_eq!(at(offset_of!(Sgi, igroupr)), GICR_IGROUPR0);
    assert_eq!(at(offset_of!(Sgi, isenabler)), GICR_ISENABLER0);
    assert_eq!(at(offset_of!(Sgi, icenabler)), GICR_ICENABLER0);
    assert_eq!(at(offset_of!(Sgi, ispendr)), GICR_ISPENDR0);
    assert_eq!(at(offset_of!(Sgi, icpendr)), GICR_ICPENDR0);
    assert_eq!(at(offset_of!(Sgi, isactiver)), GICR_ISACTIVER0);
    assert_eq!(at(offset_of!(Sgi, icactiver)), GICR_ICACTIVER0);
    assert_eq!(at(offset_of!(Sgi, ipriorityr)), GICR_IPRIORITYR);
    assert_eq!(at(offset_of!(Sgi, icfgr)), GICR_ICFGR);
    assert_eq!(at(offset_of!(Sgi, igrpmodr)), GICR_IGRPMODR0);
    assert_eq!(at(offset_of!(Sgi, nsacr)), GICR_NSACR);
    assert_eq!(at(size_of::<Gicr>() + size_of::<Sgi>()), GICR_STRIDE);
}

#[test]
fn usize_mirror_matches() {
    assert_eq!(as_usize::GICD_IROUTER as u64, GICD_IROUTER);
    assert_eq!(as_usize::GICR_STRIDE as u64, GICR_STRIDE);
    assert_eq!(
        hw_regs::pl011::as_usize::UARTFR as u64,
        hw_regs::pl011::UARTFR
    );
}
