// Rule (invariant 7): VTTBR_EL2 is written only through its owner. A raw write would leave the
// owner believing another VMID is loaded, and a TLBI could follow it with no ISB (the TLBI
// would then act on the old VMID). `regs` has no VTTBR_EL2 type at all.
// Source: Arm ARM D24.1.2.2; issue "barriers" bullet 1; KVM __load_stage2 + isb.
// API: vttbr.load(
use barriers::regs::VttbrEl2;

fn main() {
    // SAFETY: compile test.
    let _t = unsafe { VttbrEl2::write(5 << 48) };
}
