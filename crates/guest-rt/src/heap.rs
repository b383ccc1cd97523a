//! The guests' global allocator: a bump allocator over memory the guest
//! hands it with [`give`]. Until then every allocation fails; nothing is
//! ever freed.
//!
//! Every guest binary links it, whether it allocates or not: `gic` is built
//! on `arm-gic`, which depends on `zerocopy`, and when several guests are
//! built in one cargo run (the bare-metal clippy of `cargo xtask test`)
//! `guest-virtio`'s `virtio-drivers` turns `zerocopy`'s `alloc` feature on
//! for all of them. A binary in which any crate uses `alloc` must have a
//! global allocator.
//!
//! Guests may run with the MMU off, so there are only plain loads and stores
//! here: one vCPU at a time allocates.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static BASE: AtomicPtr<u8> = AtomicPtr::new(null_mut());
static SIZE: AtomicUsize = AtomicUsize::new(0);
/// Bytes of the heap handed out so far.
static USED: AtomicUsize = AtomicUsize::new(0);

/// Gives the allocator `heap` for good (replacing an earlier, empty one).
pub fn give(heap: &'static mut [u8]) {
    SIZE.store(0, Ordering::Relaxed);
    USED.store(0, Ordering::Relaxed);
    BASE.store(heap.as_mut_ptr(), Ordering::Relaxed);
    SIZE.store(heap.len(), Ordering::Release);
}

struct Bump;

// SAFETY: `alloc` returns null or a block of `layout`'s size and alignment
// inside the heap `give` handed over for good, past every block returned
// before: blocks never overlap. One vCPU at a time allocates (module docs).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = SIZE.load(Ordering::Acquire);
        let base = BASE.load(Ordering::Relaxed);
        let used = USED.load(Ordering::Relaxed);
        let start = (base.addr() + used).next_multiple_of(layout.align()) - base.addr();
        match start.checked_add(layout.size()) {
            Some(end) if end <= size => {
                USED.store(end, Ordering::Relaxed);
                base.wrapping_add(start)
            }
            _ => null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static BUMP: Bump = Bump;
