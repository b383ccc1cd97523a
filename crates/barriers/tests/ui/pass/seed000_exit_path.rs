// Rule (seed 000), compile-pass: on guest exit an HCR_EL2 write that changes only trap bits, then
// CPTR_EL2 and VBAR_EL2 writes, then guest entry, with no ISB.
// API: write_traps_only(
// API: enter_guest(
//
// Fields involved: HCR_EL2.{TVM, TWI} change (guest-only traps: only EL1/EL0 execution after the
// ERET reads them). CPTR_EL2's layout depends on HCR_EL2.E2H, which does not change here and was
// synchronised by the exit's exception entry (the `cse` proof). VBAR_EL2 is read by the next
// exception taken to EL2, i.e. the next guest exit, after the ERET. The ERET (SCTLR_EL2.EOS = 1,
// `eos`) is the context synchronisation event for all three.
use barriers::enter_guest;
use barriers::regs::{CptrEl2, HcrEl2, VbarEl2};
use barriers::sync::{check_eos, Cse, Synced};

const TVM: u64 = 1 << 26;
const TWI: u64 = 1 << 13;

fn exit_then_reenter(eos: &barriers::EosChecked, guest_hcr: u64) {
    // SAFETY: called at the top of the exit handler: the exception entry was a CSE (EIS = 1) and
    // nothing was written since.
    let cse = unsafe { Synced::<Cse>::assume() };
    // SAFETY: only trap bits change; E2H stays 0.
    let hcr = unsafe { HcrEl2::write_traps_only(guest_hcr & !(TVM | TWI)) };
    // SAFETY: sets the FP trap for lazy FP switching; clears none.
    let cptr = unsafe { CptrEl2::write_setting_traps(&cse, None, 0x37ff) };
    // SAFETY: both vector tables stay valid.
    let vbar = unsafe { VbarEl2::write(0x4008_0000) };
    // SAFETY: test: the one VTTBR owner of this thread.
    let mut vttbr = unsafe { barriers::vttbr::Vttbr::assume_loaded(1 << 48) };
    let entry = enter_guest(eos, &mut vttbr, (hcr, cptr, vbar));
    // SAFETY: stands for the world switch's ERET.
    unsafe { entry.eret() };
}

fn main() {
    barriers::trace::set_reg(barriers::SysReg::SctlrEl2, barriers::sync::SCTLR_EL2_EOS_EIS);
    barriers::trace::set_reg(barriers::SysReg::HcrEl2, TVM | TWI | 0x8000_0001);
    let eos = check_eos();
    exit_then_reenter(&eos, TVM | TWI | 0x8000_0001);
    assert!(!barriers::trace::take().contains(&barriers::Insn::Isb));
}
