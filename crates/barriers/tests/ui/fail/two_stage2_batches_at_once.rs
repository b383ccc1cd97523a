// Rule (invariant 7): one CPU edits one stage 2 at a time. Two open batches (the host's and a
// guest's, say) would switch VTTBR_EL2 under each other's TLBIs.
// Source: ARM-RULES.md 2.2 step 3; KVM enter_vmid_context (one context at a time per CPU).
// API: PtBatch::stage2(
use barriers::pt::PtBatch;
use barriers::vttbr::Vttbr;

fn main() {
    // SAFETY: compile test.
    let mut vttbr = unsafe { Vttbr::assume_loaded(0) };
    let host = PtBatch::stage2(&mut vttbr, 0);
    let guest = PtBatch::stage2(&mut vttbr, 1 << 48);
    host.finish();
    guest.finish();
}
