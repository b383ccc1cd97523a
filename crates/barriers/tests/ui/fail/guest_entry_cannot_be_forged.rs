// Rule: only enter_guest() makes a GuestEntry, and only the world switch consumes it, in an
// unsafe call right before its ERET: a path that does not enter a guest cannot pretend to.
// Source: issue "barriers" bullet 7 (`let _ = enter_guest(..)` used as a proof); seed 000.
// API: entry.eret()
use barriers::sync::GuestEntry;

fn main() {
    let e = GuestEntry { _cpu: core::marker::PhantomData };
    e.eret();
}
