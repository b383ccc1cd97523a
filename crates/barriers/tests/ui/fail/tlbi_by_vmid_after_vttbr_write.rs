// Rule (item 2, invariant 7): TLBI by VMID after a VTTBR_EL2 write needs the write synchronised.
use barriers::regs::VttbrEl2;
use barriers::sync::uses;

fn main() {
    // SAFETY: compile test.
    let vttbr = unsafe { VttbrEl2::write(5 << 48) };
    uses::tlbi_by_vmid(&vttbr);
}
