// Rule (invariant 7): only the CPU's one VTTBR owner knows which VMID is loaded and whether it
// is synchronised; safe code cannot make another (assume_loaded is unsafe, the fields private).
// Source: ARM-RULES.md 2.2 step 3 (the VMID must be known to be the target's).
// API: Vttbr::init(
use barriers::vttbr::Vttbr;

fn main() {
    let _a = Vttbr::assume_loaded(0);
    let _b = Vttbr { value: 0, synced: true, _cpu: core::marker::PhantomData };
}
