// Rule (item 2, invariant 8): EL2 FP/SIMD use after clearing CPTR_EL2 traps needs an ISB.
// Source: Arm ARM D24.1.2.2; Linux 257d0aa8e250 (ISB after clearing CPTR traps).
// API: CptrEl2::write(
// API: fp_save( | el2_fp(
use barriers::regs::CptrEl2;
use barriers::sync::{uses, Cse, Synced};

fn main() {
    // SAFETY: compile test.
    let cse = unsafe { Synced::<Cse>::assume() };
    // SAFETY: compile test.
    let cptr = unsafe { CptrEl2::write(&cse, 0x33ff) };
    uses::el2_fp(&cptr);
}
