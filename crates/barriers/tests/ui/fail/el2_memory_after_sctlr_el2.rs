// Rule (item 2): EL2 memory accesses after SCTLR_EL2/TCR_EL2/TTBR0_EL2/MAIR_EL2 changes need an ISB.
// Source: Arm ARM D24.1.2.2; ARM-RULES.md section 1 (TTBR0/MAIR/TCR, DSB, ISB, SCTLR, ISB).
// API: Ttbr0El2::write(
// API: el2_memory(
use barriers::regs::Ttbr0El2;
use barriers::sync::uses;

fn main() {
    // SAFETY: compile test.
    let ttbr = unsafe { Ttbr0El2::write(0x8000_0000) };
    uses::el2_memory(&ttbr);
}
