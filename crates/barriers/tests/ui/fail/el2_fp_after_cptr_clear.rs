// Rule (item 2, invariant 8): EL2 FP/SIMD use after clearing CPTR_EL2 traps needs an ISB.
// Source: Arm ARM D24.1.2.2; Linux 257d0aa8e250 (ISB after clearing CPTR traps).
// API: CptrEl2::write(
// API: fp_save( | el2_fp(
use barriers::regs::{CptrEl2, HcrEl2};
use barriers::sync::uses;

fn main() {
    // SAFETY: compile test.
    let hcr = barriers::isb(unsafe { HcrEl2::write(0x8000_0001) });
    // SAFETY: compile test.
    let cptr = unsafe { CptrEl2::write(&hcr, 0x33ff) };
    uses::el2_fp(&cptr);
}
