// Rule (item 2, invariant 6): a `*_EL1`-named access at EL2 after an HCR_EL2.E2H/TGE change needs
// a proof that the change was synchronised. The pending token is not a proof.
// Source: Arm ARM D24.1.2.2 (indirect read of E2H/TGE); ARM-RULES.md invariant 6.
// API: SctlrEl1::write( | el1.restore(
// API: HcrEl2::write(
use barriers::regs::{HcrEl2, SctlrEl1};

fn main() {
    // SAFETY: compile test.
    let hcr = unsafe { HcrEl2::write(1 << 27) };
    let _ = SctlrEl1::write(&hcr, 0x30d0_0800);
}
