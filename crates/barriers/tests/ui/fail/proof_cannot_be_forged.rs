// Rule (item 3): only isb() mints proofs; `Synced::assume` is unsafe and the fields are private.
// Source: Arm ARM D24.1.2.2 (a proof stands for a context synchronisation event).
// API: isb(
use barriers::sync::{El1Names, Synced};

fn main() {
    let _a = Synced::<El1Names>::assume();
    let _b: Synced<El1Names> = Synced { _k: core::marker::PhantomData };
}
