// Rule (item 3, invariant 4): HCR_EL2.RW/E2H/TGE/NV* cannot be carried into the ERET
// unsynchronised; only guest-only tokens are discharged by the entry ERET.
use barriers::enter_guest;
use barriers::regs::{HcrEl2, VbarEl2};
use barriers::sync::check_eos;

fn main() {
    let eos = check_eos();
    // SAFETY: compile test.
    let (hcr, vbar) = unsafe { (HcrEl2::write(1 << 31), VbarEl2::write(0x4000_0000)) };
    let _ = enter_guest(&eos, (vbar, hcr));
}
