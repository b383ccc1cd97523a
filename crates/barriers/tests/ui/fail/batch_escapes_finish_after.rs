// Rule (invariant 23): the batch finish_after() lends cannot leave the closure, so no descriptor
// can be stored through it after finish_after() issued its barriers (that store would have no
// DSB).
// Source: seed 002; ARM-RULES.md 2.2 step 9.
// API: .finish_after(
use barriers::pt::PtBatch;
use core::sync::atomic::AtomicU64;

fn main() {
    let slot = AtomicU64::new(0);
    let mut kept = None;
    let _ = PtBatch::el2().finish_after(|b| kept = Some(b));
    if let Some(b) = kept {
        b.make(&slot, 0x4020_0403);
    }
}
