// Rule (item 2, invariant 7): AT after a TGE write needs a proof that covers VmidCtx; a proof of
// another class (here El2Fp, from an ISB after a CPTR_EL2 write) does not.
use barriers::isb;
use barriers::regs::{CptrEl2, HcrEl2};
use barriers::sync::{uses, Cse, Synced};

fn main() {
    // SAFETY: compile test.
    let cse = unsafe { Synced::<Cse>::assume() };
    // SAFETY: compile test.
    let fp = isb(unsafe { CptrEl2::write(&cse, 0) });
    // SAFETY: compile test.
    let hcr = unsafe { HcrEl2::write(1 << 27) };
    let _ = uses::at_s12e1r(&fp, &cse, 0x1000);
    let _ = isb(hcr);
}
