// Rule (item 2, invariant 6): a proof that VTTBR_EL2 was synchronised says nothing about
// HCR_EL2.E2H/TGE; an EL1-named access needs a proof that includes El1Names.
use barriers::isb;
use barriers::regs::{TcrEl1, VttbrEl2};

fn main() {
    // SAFETY: compile test.
    let vmid = isb(unsafe { VttbrEl2::write(5 << 48) });
    let _ = TcrEl1::read(&vmid);
}
