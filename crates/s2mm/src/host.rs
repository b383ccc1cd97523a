//! Host-only helpers: a [`TableAlloc`] backed by the process heap that counts live pages, for
//! tests, benchmarks and hyp-core's host tests.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;

use crate::addr::{Pa, PAGE_SIZE};
use crate::alloc::TableAlloc;

/// Heap-backed table allocator. The "physical address" of a table is its host address.
#[derive(Debug, Default)]
pub struct HostAlloc {
    live: HashMap<u64, usize>,
    live_pages: usize,
    /// Total allocations ever made.
    pub allocs: usize,
    /// Fail allocations once this many pages are live (for out-of-memory tests).
    pub limit: Option<usize>,
}

impl HostAlloc {
    /// A new, empty allocator.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages currently allocated.
    #[must_use]
    pub fn live_pages(&self) -> usize {
        self.live_pages
    }

    fn layout(pages: usize) -> Layout {
        let bytes = pages * PAGE_SIZE as usize;
        Layout::from_size_align(bytes, bytes).expect("s2mm host: bad layout")
    }
}

// SAFETY: allocations are zeroed, naturally aligned (align = size), exclusively ours until
// freed; `table_ptr` returns the allocation itself.
unsafe impl TableAlloc for HostAlloc {
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
        if self.limit.is_some_and(|l| self.live_pages + pages > l) {
            return None;
        }
        // SAFETY: non-zero size layout.
        let p = unsafe { alloc_zeroed(Self::layout(pages)) };
        if p.is_null() {
            return None;
        }
        let pa = p as u64;
        assert!(pa >> 48 == 0, "s2mm host: heap address above 2^48");
        self.live.insert(pa, pages);
        self.live_pages += pages;
        self.allocs += 1;
        Some(Pa(pa))
    }

    unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
        let n = self
            .live
            .remove(&pa.0)
            .expect("s2mm host: freeing a table that is not live");
        assert_eq!(n, pages, "s2mm host: freeing with the wrong page count");
        self.live_pages -= pages;
        // SAFETY: allocated by `alloc_tables` with the same layout, freed once (map removal).
        unsafe { dealloc(pa.0 as *mut u8, Self::layout(pages)) };
    }

    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
        NonNull::new(pa.0 as *mut AtomicU64).expect("s2mm host: null table")
    }
}

impl Drop for HostAlloc {
    fn drop(&mut self) {
        for (&pa, &pages) in &self.live {
            // SAFETY: still-live allocations made by us with this layout.
            unsafe { dealloc(pa as *mut u8, Self::layout(pages)) };
        }
    }
}

/// A [`HostAlloc`] shared by clones, as the hypervisor's pool is shared by
/// every lock holder: each allocation locks it.
#[derive(Debug, Clone, Default)]
pub struct SharedAlloc(std::sync::Arc<std::sync::Mutex<HostAlloc>>);

impl SharedAlloc {
    /// A new, empty allocator.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `f` of the allocator behind the handle.
    ///
    /// # Panics
    ///
    /// If a thread panicked while allocating.
    pub fn with<T>(&self, f: impl FnOnce(&mut HostAlloc) -> T) -> T {
        f(&mut self.0.lock().expect("s2mm host: allocator poisoned"))
    }

    /// Pages currently allocated.
    #[must_use]
    pub fn live_pages(&self) -> usize {
        self.with(|a| a.live_pages())
    }

    /// Fail allocations once this many pages are live (`None`: never).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.with(|a| a.limit = limit);
    }
}

// SAFETY: forwards to the one `HostAlloc` behind the handle, under its lock.
unsafe impl TableAlloc for SharedAlloc {
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
        self.with(|a| a.alloc_tables(pages))
    }

    unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
        // SAFETY: forwarded contract.
        self.with(|a| unsafe { a.free_tables(pa, pages) });
    }

    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
        self.with(|a| a.table_ptr(pa))
    }
}
