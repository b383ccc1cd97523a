// Rule (item 3): EL2's own translation registers are consumed by EL2 at once; the ERET may not
// discharge them.
use barriers::enter_guest;
use barriers::regs::SctlrEl2;
use barriers::sync::check_eos;

fn main() {
    let eos = check_eos();
    // SAFETY: compile test.
    let sctlr = unsafe { SctlrEl2::write(0x30c5_0c3d) };
    let _ = enter_guest(&eos, sctlr);
}
