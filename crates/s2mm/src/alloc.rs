//! Where translation-table memory comes from.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use crate::addr::{Pa, Va};

/// Source of translation-table pages, and the PA→VA view the walker uses to reach them.
///
/// The walker never assumes a memory layout: it asks for tables by physical address and
/// touches them only through [`TableAlloc::table_ptr`]. On the host the "physical address"
/// can simply be the address of a heap allocation (see `host::HostAlloc`), so the whole
/// walker runs under `cargo test`.
///
/// # Safety
///
/// Implementors promise that:
/// - `alloc_tables(n)` returns the PA of `n` physically contiguous 4 KiB pages, aligned to
///   `n * 4096` bytes (n is a power of two, at most 16), zero-filled, below 2^48, and not
///   used by anything else until passed to `free_tables` with the same `n`;
/// - for such a PA (and for any page inside the allocation), `table_ptr` returns a pointer that
///   is valid for atomic reads and writes of the rest of the allocation, 8-byte aligned,
///   for as long as the allocation is live.
pub unsafe trait TableAlloc {
    /// Allocates `pages` contiguous zeroed table pages (naturally aligned). `None` when out of
    /// memory.
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa>;

    /// Returns pages obtained from [`TableAlloc::alloc_tables`].
    ///
    /// # Safety
    ///
    /// `pa` and `pages` must match a live allocation, and no translation regime, TLB walk
    /// cache or pointer may still use it (the walker frees only after the TLBI completed).
    unsafe fn free_tables(&mut self, pa: Pa, pages: usize);

    /// Pointer through which the hypervisor reads and writes the table at `pa`.
    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64>;

    /// Virtual address used for data-cache maintenance of the memory at `pa` (the target
    /// memory of a mapping, not a table). The default is an identity map; on the host the
    /// recorded address is never dereferenced.
    fn cmo_va(&self, pa: Pa) -> Va {
        Va(pa.0)
    }

    /// Allocates one zeroed table page.
    fn alloc_table(&mut self) -> Option<Pa> {
        self.alloc_tables(1)
    }
}
