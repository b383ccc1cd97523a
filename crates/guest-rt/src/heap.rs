//! The one global allocator of every binary built on guest-rt (the guests
//! and the host): `linked_list_allocator`'s heap over memory the binary
//! hands it once with [`give`]. Until then every allocation fails.
//!
//! Every such binary links it, whether it allocates or not: `gic` is built
//! on `arm-gic`, which depends on `zerocopy`, and when several guests are
//! built in one cargo run (the bare-metal clippy of `cargo xtask test`)
//! `guest-virtio`'s `virtio-drivers` turns `zerocopy`'s `alloc` feature on
//! for all of them; a binary in which any crate uses `alloc` must have a
//! global allocator.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the allocator `heap` for good. Call once, before anything
/// allocates; a second call is ignored.
pub fn give(heap: &'static mut [u8]) {
    let mut h = HEAP.lock();
    if h.size() == 0 {
        // SAFETY: `heap` is 'static and handed over for good: nothing else
        // uses it from now on.
        unsafe { h.init(heap.as_mut_ptr(), heap.len()) };
    }
}
