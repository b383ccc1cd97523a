// Rule (item 1): writes of registers that control translation, routing or trapping are unsafe.
// Source: STYLE.md (writes that control translation, routing or trapping are unsafe).
// API: HcrEl2::write(
use barriers::regs::HcrEl2;

fn main() {
    let _p = HcrEl2::write(0);
}
