// Rule (invariant 23): a PtBatch owes barriers until finish(); a batch expression whose value is
// dropped is an error under deny(unused_must_use) (and a panic at run time in every build).
// Source: seed 002; ARM-RULES.md 2.2; issue "barriers" bullet 5.
// API: PtBatch::el2( | PtBatch::stage2(
#![deny(unused_must_use)]
use barriers::pt::PtBatch;

fn main() {
    PtBatch::el2();
}
