// Rule (invariant 7): the VTTBR owner describes one CPU's VTTBR_EL2; moved to another CPU it
// would make that CPU's batches trust a VMID it never loaded.
// Source: ARM-RULES.md 2.2 step 3; issue "barriers" bullet 4.
// API: Vttbr::init(
use barriers::vttbr::Vttbr;

fn main() {
    // SAFETY: compile test.
    let vttbr = unsafe { Vttbr::assume_loaded(0) };
    std::thread::spawn(move || drop(vttbr));
}
