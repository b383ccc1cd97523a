// Rule (invariant 1): an EL2 access that depends on an EL2 register write needs the write
// synchronised: whether EL2's ICC_DIR_EL1 deactivates at all follows ICC_CTLR_EL1.EOImode
// (with EOImode 0 the EOIR already deactivated), so right after a CTLR write the pending
// token is not a proof.
// Source: Arm ARM D24.1.2.2; GICv3 (IHI 0069) ICC_DIR_EL1 and ICC_CTLR_EL1.EOImode.
// API: IccDirEl1::write(
// API: IccCtlrEl1::write(
use barriers::regs::{IccCtlrEl1, IccDirEl1, IccSreEl2};

fn main() {
    // SAFETY: compile test.
    let sre = barriers::isb(unsafe { IccSreEl2::write(0b1001) });
    let ctlr = IccCtlrEl1::write(&sre, 1 << 1);
    let _dir = IccDirEl1::write(&sre, &ctlr, 35);
}
