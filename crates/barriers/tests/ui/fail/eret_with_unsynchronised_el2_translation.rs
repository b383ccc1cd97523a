// Rule (invariant 1): EL2's own translation registers are consumed by EL2 at once; the ERET
// may not discharge them (an explicit ISB must come first).
// Source: Arm ARM D24.1.2.2; ARM-RULES.md section 1 (SCTLR/TCR/TTBR0/MAIR_EL2 rows).
// API: SctlrEl2::write(
// API: enter_guest(
use barriers::enter_guest;
use barriers::regs::SctlrEl2;
use barriers::sync::check_eos;
use barriers::vttbr::Vttbr;

fn main() {
    let eos = check_eos();
    // SAFETY: compile test.
    let mut vttbr = unsafe { Vttbr::assume_loaded(0) };
    // SAFETY: compile test.
    let sctlr = unsafe { SctlrEl2::write(0x30c5_0c3d) };
    let entry = enter_guest(&eos, &mut vttbr, sctlr);
    // SAFETY: compile test.
    let _ = unsafe { entry.run(|| ()) };
}
