// Rule (seed 000): guest-only writes collected for the entry ERET are synchronised by that ERET;
// discharging them with an ISB instead is the needless ISB seed 000 removed.
// Source: seed 000; Arm ARM D8.1.5 I_SFZVV; D24.1.2.2 (ERET is a CSE when SCTLR_EL2.EOS = 1).
// API: GuestPending::new(
use barriers::regs::CntvoffEl2;
use barriers::GuestPending;

fn main() {
    let mut pending = GuestPending::new();
    pending.add(CntvoffEl2::write(0));
    barriers::isb(pending);
}
