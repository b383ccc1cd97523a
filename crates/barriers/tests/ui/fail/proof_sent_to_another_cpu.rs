// Rule: proofs are per CPU. An ISB synchronises only the PE that executes it (Arm ARM
// D24.1.2.2, K11.5.3.2), so a proof moved to another CPU (thread) proves nothing there.
// Source: issue "barriers" bullet 4.
// API: fp_save( | el2_fp(
// API: CptrEl2::write(
use barriers::regs::{CptrEl2, HcrEl2};
use barriers::sync::uses;

fn main() {
    // SAFETY: compile test.
    let hcr = barriers::isb(unsafe { HcrEl2::write(0x8000_0001) });
    // SAFETY: compile test.
    let fp = barriers::isb(unsafe { CptrEl2::write(&hcr, 0x33ff) });
    std::thread::spawn(move || uses::el2_fp(&fp));
}
