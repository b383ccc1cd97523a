// Rule (seed 000), compile-pass: on guest exit an HCR_EL2 write that changes only trap bits, then
// CPTR_EL2 and VBAR_EL2 writes, then guest entry, with no ISB.
// API: write_traps_only(
// API: enter_guest(
// API: entry.run(
//
// Fields involved: HCR_EL2.{TVM, TWI} change (guest-only traps: only EL1/EL0 execution after the
// ERET reads them). CPTR_EL2's layout depends on HCR_EL2.E2H, which does not change here and was
// synchronised by the exit's exception entry (the `exit` proof). VBAR_EL2 is read by the next
// exception taken to EL2, i.e. the next guest exit, after the ERET. The ERET (SCTLR_EL2.EOS = 1,
// `eos`) is the context synchronisation event for all three.
use barriers::enter_guest;
use barriers::regs::{CptrEl2, HcrEl2, VbarEl2};
use barriers::sync::{check_eos, Cse, EosChecked, Synced};
use barriers::vttbr::Vttbr;

const TVM: u64 = 1 << 26;
const TWI: u64 = 1 << 13;

/// The world switch: enters the guest and returns the proof of the exception entry that ends its
/// run.
fn run_guest(
    eos: &EosChecked,
    vttbr: &mut Vttbr,
    tokens: impl barriers::sync::EretTokens,
) -> Synced<Cse> {
    let entry = enter_guest(eos, vttbr, tokens);
    // SAFETY: stands for the world switch's ERET and the guest's run.
    unsafe { entry.run(|| ()) }.1
}

fn exit_then_reenter(eos: &EosChecked, vttbr: &mut Vttbr, exit: &Synced<Cse>, guest_hcr: u64) {
    // SAFETY: only trap bits change; E2H stays 0.
    let hcr = unsafe { HcrEl2::write_traps_only(guest_hcr & !(TVM | TWI)) };
    // SAFETY: sets the FP trap for lazy FP switching; clears none.
    let cptr = unsafe { CptrEl2::write_setting_traps(exit, None, 0x37ff) };
    // SAFETY: both vector tables stay valid.
    let vbar = unsafe { VbarEl2::write(0x4008_0000) };
    run_guest(eos, vttbr, (hcr, cptr, vbar));
}

fn main() {
    barriers::trace::set_reg(
        barriers::SysReg::SctlrEl2,
        barriers::sync::SCTLR_EL2_EOS_EIS,
    );
    barriers::trace::set_reg(barriers::SysReg::HcrEl2, TVM | TWI | 0x8000_0001);
    let eos = check_eos();
    // SAFETY: test: the one VTTBR owner of this thread.
    let mut vttbr = unsafe { Vttbr::assume_loaded(1 << 48) };
    let exit = run_guest(&eos, &mut vttbr, ());
    exit_then_reenter(&eos, &mut vttbr, &exit, TVM | TWI | 0x8000_0001);
    assert!(!barriers::trace::take().contains(&barriers::Insn::Isb));
}
