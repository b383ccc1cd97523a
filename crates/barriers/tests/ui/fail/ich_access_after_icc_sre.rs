// Rule (item 2): ICC/ICH accesses after an ICC_SRE_EL2 write need it synchronised.
// Source: Arm ARM D24.1.2.2; GICv3 ICC_SRE_EL2.SRE (KVM: ISB after each SRE write).
// API: IchLrEl2::new(
// API: IccSreEl2::write(
use barriers::regs::{IccSreEl2, IchLrEl2};

fn main() {
    // SAFETY: compile test.
    let sre = unsafe { IccSreEl2::write(0xf) };
    let _ = IchLrEl2::new(0).write(&sre, 0x5000_0000_0000_0020);
}
