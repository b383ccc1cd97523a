// Rule (invariant 4): HCR_EL2.RW/E2H/TGE/NV* cannot be carried into the ERET unsynchronised;
// only guest-only tokens are discharged by the entry ERET.
// Source: Arm ARM D24.1.2.2 (an ERET reads current-context registers before its own
// synchronisation point); seed 000.
// API: HcrEl2::write(
// API: VbarEl2::write(
use barriers::enter_guest;
use barriers::regs::{HcrEl2, VbarEl2};
use barriers::sync::check_eos;
use barriers::vttbr::Vttbr;

fn main() {
    let eos = check_eos();
    // SAFETY: compile test.
    let mut vttbr = unsafe { Vttbr::assume_loaded(0) };
    // SAFETY: compile test.
    let (hcr, vbar) = unsafe { (HcrEl2::write(1 << 31), VbarEl2::write(0x4000_0000)) };
    let entry = enter_guest(&eos, &mut vttbr, (vbar, hcr));
    // SAFETY: compile test.
    let _ = unsafe { entry.run(|| ()) };
}
