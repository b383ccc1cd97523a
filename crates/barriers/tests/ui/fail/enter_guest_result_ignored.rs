// Rule: the GuestEntry returned by enter_guest() must reach the world switch. Ignoring it is a
// compile error under deny(unused_must_use); `let _ = ...` is caught when it is dropped (the
// drop guard panics in every build).
// Source: issue "barriers" bullet 7; seed 000.
// API: enter_guest(
#![deny(unused_must_use)]
use barriers::enter_guest;
use barriers::sync::check_eos;
use barriers::vttbr::Vttbr;

fn main() {
    let eos = check_eos();
    // SAFETY: compile test.
    let mut vttbr = unsafe { Vttbr::assume_loaded(0) };
    enter_guest(&eos, &mut vttbr, ());
}
