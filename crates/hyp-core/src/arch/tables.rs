//! Translation-table memory for `s2mm`: pages of the hypervisor's own memory
//! (the board's `hyp` region past the image), identity-mapped at EL2.

use crate::arch::pages::PagePool;
use crate::platform::Platform;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use s2mm::{Pa, TableAlloc};
use spin::Mutex;

/// The pool every table comes from.
pub static POOL: Mutex<PagePool> = Mutex::new(PagePool::empty());

unsafe extern "C" {
    /// End of the image (BSS and stacks included), from the board's linker script.
    static __image_end: u8;
}

/// Gives the pool the board's `hyp` region from the end of the image on.
///
/// # Panics
///
/// If the image does not leave room in the region (a board bug).
pub fn init(p: &Platform) {
    let start = core::ptr::addr_of!(__image_end) as u64;
    let start = start.next_multiple_of(4096);
    assert!(
        start >= p.hyp.base && start < p.hyp.end(),
        "image end {start:#x} outside the hyp region"
    );
    let size = (p.hyp.end() - start).min(crate::arch::pages::MAX_PAGES as u64 * 4096);
    POOL.lock().init(start, size);
}

/// `TableAlloc` over a locked pool.
pub struct Tables<'a>(pub &'a mut PagePool);

// SAFETY: the pool hands out pages of the hypervisor's own memory that
// nothing else uses until freed; `alloc` returns naturally aligned runs
// (PagePool::alloc) and zeroes them; EL2 maps that memory by identity, so a
// table's PA is also a valid pointer to it.
unsafe impl TableAlloc for Tables<'_> {
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
        let pa = self.0.alloc(pages)?;
        // SAFETY: the run is ours (just allocated), identity-mapped RAM.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, pages * 4096) };
        Some(Pa(pa))
    }

    unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
        self.0.free(pa.0, pages);
    }

    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
        NonNull::new(pa.0 as *mut AtomicU64).expect("table at PA 0")
    }
}
