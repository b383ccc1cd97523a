// Rule (item 3): only isb() and GuestEntry::run (the exception entry that ends a guest run) mint
// proofs; safe code cannot make one any other way (the constructor and the fields are private).
// Source: Arm ARM D24.1.2.2 (a proof stands for a context synchronisation event).
// API: isb(
// API: entry.run(
use barriers::sync::{El1Names, Synced};

fn main() {
    let _a = Synced::<El1Names>::new();
    let _b: Synced<El1Names> = Synced { _k: core::marker::PhantomData };
}
