// Rule (invariant 8): setting the CPTR_EL2 FP traps again makes the proof that FP was enabled
// stale; the write consumes it, so EL2 FP use through it no longer compiles.
// Source: Arm ARM D24.1.2.2; Linux 257d0aa8e250; issue "barriers" bullet 4 (proof reused after a
// later write to the same register).
// API: write_setting_traps(
// API: fp_save( | el2_fp(
use barriers::regs::{CptrEl2, HcrEl2};
use barriers::sync::uses;

fn main() {
    // SAFETY: compile test.
    let hcr = barriers::isb(unsafe { HcrEl2::write(0x8000_0001) });
    // SAFETY: compile test.
    let fp = barriers::isb(unsafe { CptrEl2::write(&hcr, 0x33ff) });
    // SAFETY: compile test.
    let t = unsafe { CptrEl2::write_setting_traps(&hcr, Some(fp), 0x37ff) };
    uses::el2_fp(&fp);
    let _ = barriers::isb(t);
}
