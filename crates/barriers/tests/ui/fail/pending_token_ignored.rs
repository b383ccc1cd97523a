// Rule (item 1): a write's pending token is #[must_use]; ignoring it is an error under deny.
#![deny(unused_must_use)]
use barriers::regs::VbarEl2;

fn main() {
    // SAFETY: compile test.
    unsafe { VbarEl2::write(0x4000_0000) };
}
