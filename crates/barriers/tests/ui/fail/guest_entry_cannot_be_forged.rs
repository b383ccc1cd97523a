// Rule: only enter_guest() makes a GuestEntry, and only the world switch consumes it, in an
// unsafe call around its ERET: a path that does not enter a guest cannot pretend to, nor claim
// the proof of the exception entry that ends a guest run.
// Source: issue "barriers" bullet 7 (`let _ = enter_guest(..)` used as a proof); seed 000.
// API: entry.run(
use barriers::sync::GuestEntry;

fn main() {
    let e = GuestEntry { _cpu: core::marker::PhantomData };
    let (_, _cse) = e.run(|| ());
}
