//! The register offsets this crate decodes, checked against `arm-gic`'s register structs (the
//! crate is not a runtime dependency: see the crate docs).

use arm_gic::gicv3::registers::{Gicd, Gicr, Sgi};
use core::mem::offset_of;

#[test]
fn gicd_offsets_match_arm_gic() {
    assert_eq!(offset_of!(Gicd, ctlr), 0x0);
    assert_eq!(offset_of!(Gicd, typer), 0x4);
    assert_eq!(offset_of!(Gicd, iidr), 0x8);
    assert_eq!(offset_of!(Gicd, typer2), 0xc);
    assert_eq!(offset_of!(Gicd, statusr), 0x10);
    assert_eq!(offset_of!(Gicd, setspi_nsr), 0x40);
    assert_eq!(offset_of!(Gicd, clrspi_sr), 0x58);
    assert_eq!(offset_of!(Gicd, igroupr), 0x80);
    assert_eq!(offset_of!(Gicd, isenabler), 0x100);
    assert_eq!(offset_of!(Gicd, icenabler), 0x180);
    assert_eq!(offset_of!(Gicd, ispendr), 0x200);
    assert_eq!(offset_of!(Gicd, icpendr), 0x280);
    assert_eq!(offset_of!(Gicd, isactiver), 0x300);
    assert_eq!(offset_of!(Gicd, icactiver), 0x380);
    assert_eq!(offset_of!(Gicd, ipriorityr), 0x400);
    assert_eq!(offset_of!(Gicd, itargetsr), 0x800);
    assert_eq!(offset_of!(Gicd, icfgr), 0xc00);
    assert_eq!(offset_of!(Gicd, igrpmodr), 0xd00);
    assert_eq!(offset_of!(Gicd, nsacr), 0xe00);
    assert_eq!(offset_of!(Gicd, sigr), 0xf00);
    assert_eq!(offset_of!(Gicd, cpendsgir), 0xf10);
    assert_eq!(offset_of!(Gicd, spendsgir), 0xf20);
    // arm-gic's array starts at IROUTER<32> (0x6100): IROUTER<n> = 0x6000 + 8n.
    assert_eq!(offset_of!(Gicd, irouter), 0x6100);
    assert_eq!(offset_of!(Gicd, pidr2), 0xffe8);
    assert_eq!(size_of::<Gicd>() as u64, vgic::DIST_SIZE_V3);
}

#[test]
fn gicr_offsets_match_arm_gic() {
    assert_eq!(offset_of!(Gicr, ctlr), 0x0);
    assert_eq!(offset_of!(Gicr, iidr), 0x4);
    assert_eq!(offset_of!(Gicr, typer), 0x8);
    assert_eq!(offset_of!(Gicr, statusr), 0x10);
    assert_eq!(offset_of!(Gicr, waker), 0x14);
    assert_eq!(offset_of!(Gicr, propbaser), 0x70);
    assert_eq!(offset_of!(Gicr, pendbaser), 0x78);
    assert_eq!(offset_of!(Gicr, pidr2), 0xffe8);
    assert_eq!(offset_of!(Sgi, igroupr), 0x80);
    assert_eq!(offset_of!(Sgi, isenabler), 0x100);
    assert_eq!(offset_of!(Sgi, icactiver), 0x380);
    assert_eq!(offset_of!(Sgi, ipriorityr), 0x400);
    assert_eq!(offset_of!(Sgi, icfgr), 0xc00);
    assert_eq!(offset_of!(Sgi, igrpmodr), 0xd00);
    assert_eq!(offset_of!(Sgi, nsacr), 0xe00);
    assert_eq!(
        (size_of::<Gicr>() + size_of::<Sgi>()) as u64,
        vgic::REDIST_FRAME_SIZE
    );
}
