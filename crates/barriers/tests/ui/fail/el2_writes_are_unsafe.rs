// Rule (item 1): writes of registers that control translation, routing or trapping are unsafe.
use barriers::regs::HcrEl2;

fn main() {
    let _p = HcrEl2::write(0);
}
