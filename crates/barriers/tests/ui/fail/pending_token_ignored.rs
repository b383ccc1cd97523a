// Rule (item 1): a write's pending token is #[must_use]; ignoring it is an error under deny.
// Source: Arm ARM D24.1.2.2 (every write has a consumer that needs synchronisation).
// API: VbarEl2::write(
#![deny(unused_must_use)]
use barriers::regs::VbarEl2;

fn main() {
    // SAFETY: compile test.
    unsafe { VbarEl2::write(0x4000_0000) };
}
