// Rule (invariant 7): a stage-2 batch's TLBIs run under its own VMID. While a batch is open
// it holds this CPU's VTTBR owner, so the world switch cannot load another VM's VTTBR_EL2 in
// the middle of it (the batch would then finish under that VM's VMID).
// Source: issue "barriers" bullet 2; ARM-RULES.md 2.2 step 3; KVM __tlb_switch_to_guest.
// API: PtBatch::stage2(
// API: vttbr.load(
use barriers::pt::{Inval, PtBatch};
use barriers::vttbr::Vttbr;
use core::sync::atomic::AtomicU64;

fn main() {
    let slot = AtomicU64::new(3);
    // SAFETY: compile test.
    let mut vttbr = unsafe { Vttbr::assume_loaded(0) };
    let mut b = PtBatch::stage2(&mut vttbr, 1 << 48);
    b.break_entry(&slot, 0, Inval::Leaf { ia: 0x1000, level: 3 });
    // SAFETY: compile test.
    let t = unsafe { vttbr.load(2 << 48) };
    b.finish();
    let _ = barriers::isb(t);
}
