// Rule (invariant 6): a proof that VTCR_EL2 was synchronised says nothing about
// HCR_EL2.E2H/TGE; an EL1-named access needs a proof that includes El1Names.
// Source: Arm ARM D24.1.2.2 (each consumer needs its own write synchronised).
// API: TcrEl1::read( | el1.save(
// API: VtcrEl2::write(
use barriers::isb;
use barriers::regs::{TcrEl1, VtcrEl2};

fn main() {
    // SAFETY: compile test.
    let vtcr = isb(unsafe { VtcrEl2::write(0x8002_3558) });
    let _ = TcrEl1::read(&vtcr);
}
