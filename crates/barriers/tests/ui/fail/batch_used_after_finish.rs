// Rule (invariant 23): finish_after() consumes the batch, so no descriptor can be stored through
// it after its barriers were issued (that store would have no DSB).
// Source: seed 002; ARM-RULES.md 2.2 step 9.
// API: .finish_after(
use barriers::pt::PtBatch;
use core::sync::atomic::AtomicU64;

fn main() {
    let slot = AtomicU64::new(0);
    let mut b = PtBatch::el2();
    let _ = b.finish_after(|b| b.make(&slot, 0x4000_0403));
    b.make(&slot, 0x4020_0403);
}
