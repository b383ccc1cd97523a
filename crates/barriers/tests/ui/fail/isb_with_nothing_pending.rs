// Rule (invariant 2): an ISB with nothing pending is a defect; `isb(())` does not type-check.
// Source: seed 000 (KVM __deactivate_traps: "no ISB where nothing depends on the write");
// Linux b1a9a9b96169.
// API: barriers::isb( | isb(
fn main() {
    barriers::isb(());
}
