// Rule (invariant 1): an EL2 access that depends on an EL2 register write needs the write
// synchronised: EL2's EOI (ICC_EOIR1_EL1) follows ICC_CTLR_EL1.EOImode, so right after a
// CTLR write the pending token is not a proof.
// Source: Arm ARM D24.1.2.2; GICv3 ICC_CTLR_EL1.EOImode; issue "barriers" bullet 3.
// API: IccEoir1El1::write(
// API: IccCtlrEl1::write(
use barriers::regs::{IccCtlrEl1, IccEoir1El1, IccSreEl2};

fn main() {
    // SAFETY: compile test.
    let sre = barriers::isb(unsafe { IccSreEl2::write(0b1001) });
    let ctlr = IccCtlrEl1::write(&sre, 0);
    let _eoi = IccEoir1El1::write(&sre, &ctlr, 27);
}
