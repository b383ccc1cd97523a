// Rule (item 2, invariant 8): EL2 FP/SIMD use after clearing CPTR_EL2 traps needs an ISB.
use barriers::regs::CptrEl2;
use barriers::sync::{uses, Cse, Synced};

fn main() {
    // SAFETY: compile test.
    let cse = unsafe { Synced::<Cse>::assume() };
    // SAFETY: compile test.
    let cptr = unsafe { CptrEl2::write(&cse, 0x33ff) };
    uses::el2_fp(&cptr);
}
