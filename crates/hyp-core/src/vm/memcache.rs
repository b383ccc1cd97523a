//! Memory the host donates to the hypervisor for one VM: the VM's own state
//! and its stage-2 tables come from it, never from the hypervisor's pool, so
//! one VM's allocations cannot make another VM's calls or faults fail.
//!
//! This is pKVM's model: `__pkvm_init_vm` takes host pages for the VM's
//! structure and its stage-2 root, and the tables come from a per-VM
//! "memcache" the host tops up (`topup_hyp_memcache`). Here the host gives
//! a run of pages at VM_CREATE and more with VM_TOPUP; the hypervisor hands
//! them out (a bump pointer per run, then a free list of returned pages)
//! and gives every page back, scrubbed, when the VM is destroyed.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use s2mm::{Pa, TableAlloc, PAGE_SIZE};

/// Runs of donated pages one VM may hold (VM_CREATE's and VM_TOPUP's).
pub const MAX_HYP_RUNS: usize = 64;
pub use hyp_abi::MAX_TOPUP_PAGES;

/// The hypervisor's table allocator, which also reaches memory donated for
/// VM state.
///
/// # Safety
///
/// `hyp_ptr(pa)` returns, for every byte of a run passed to `adopt` and not
/// yet to `release`, a pointer valid for reads and writes (to the end of the
/// run), stable for the run's lifetime, and 4 KiB aligned for a page-aligned
/// `pa`; nothing else uses that memory.
pub unsafe trait HypAlloc: TableAlloc + Clone {
    /// Pointer to byte `pa` of an adopted run.
    fn hyp_ptr(&self, pa: u64) -> NonNull<u8>;
    /// `[pa, pa + len)` now belongs to the hypervisor (the host donated it).
    fn adopt(&self, pa: u64, len: u64);
    /// `[pa, pa + len)` goes back to the host; no pointer into it is used
    /// again.
    fn release(&self, pa: u64, len: u64);
}

/// One run of donated pages: `used` pages from its start are handed out
/// (or were skipped to align an allocation, and sit on the free list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypRun {
    /// First page.
    pub pa: u64,
    /// Pages in the run.
    pub pages: u64,
    used: u64,
}

/// A VM's donated pages: the runs, and a free list of pages returned to it
/// (each free page holds the PA of the next in its first word; 0 ends it).
#[derive(Debug)]
pub struct MemCache {
    runs: [Option<HypRun>; MAX_HYP_RUNS],
    free: u64,
    free_pages: u64,
}

impl MemCache {
    /// A cache over one run.
    #[must_use]
    pub const fn new(pa: u64, pages: u64) -> Self {
        let mut runs = [None; MAX_HYP_RUNS];
        runs[0] = Some(HypRun { pa, pages, used: 0 });
        Self {
            runs,
            free: 0,
            free_pages: 0,
        }
    }

    /// The runs, in the order they were given.
    pub fn runs(&self) -> impl Iterator<Item = HypRun> + '_ {
        self.runs.iter().flatten().copied()
    }

    /// Pages not handed out.
    #[must_use]
    pub fn available(&self) -> u64 {
        self.free_pages + self.runs().map(|r| r.pages - r.used).sum::<u64>()
    }

    /// Adds a run; false when every run slot is taken.
    #[must_use]
    pub fn add(&mut self, pa: u64, pages: u64) -> bool {
        let Some(slot) = self.runs.iter_mut().find(|r| r.is_none()) else {
            return false;
        };
        *slot = Some(HypRun { pa, pages, used: 0 });
        true
    }

    /// Takes run `i` out (VM_DESTROY gives it back).
    pub fn take_run(&mut self, i: usize) -> Option<HypRun> {
        self.runs.get_mut(i)?.take()
    }

    /// Index of the last run held.
    #[must_use]
    pub fn last_run(&self) -> Option<usize> {
        self.runs.iter().rposition(Option::is_some)
    }

    /// `n` zeroed contiguous pages aligned to `align` pages (a power of
    /// two), from the free list (single pages) or a run's unused end.
    pub fn alloc<A: HypAlloc>(&mut self, hyp: &A, n: u64, align: u64) -> Option<u64> {
        let pa = if n == 1 && self.free != 0 {
            let pa = self.free;
            // SAFETY: a free page of an adopted run (HypAlloc contract);
            // its first word is the link `free` wrote.
            self.free = unsafe { hyp.hyp_ptr(pa).cast::<u64>().read() };
            self.free_pages -= 1;
            pa
        } else {
            let (i, start) = self.runs.iter().enumerate().find_map(|(i, r)| {
                let r = r.as_ref()?;
                let start = (r.pa + r.used * PAGE_SIZE).next_multiple_of(align * PAGE_SIZE);
                (start + n * PAGE_SIZE <= r.pa + r.pages * PAGE_SIZE).then_some((i, start))
            })?;
            let r = self.runs[i].as_mut()?;
            let skipped_from = r.pa + r.used * PAGE_SIZE;
            r.used = (start - r.pa) / PAGE_SIZE + n;
            let mut p = skipped_from;
            while p < start {
                self.free(hyp, p, 1);
                p += PAGE_SIZE;
            }
            start
        };
        // SAFETY: `n` pages of an adopted run, ours alone from now on.
        unsafe { core::ptr::write_bytes(hyp.hyp_ptr(pa).as_ptr(), 0, (n * PAGE_SIZE) as usize) };
        Some(pa)
    }

    /// Returns `n` pages at `pa` (from [`MemCache::alloc`]) to the free list.
    pub fn free<A: HypAlloc>(&mut self, hyp: &A, pa: u64, n: u64) {
        for i in 0..n {
            let p = pa + i * PAGE_SIZE;
            // SAFETY: a page of an adopted run that its user gave back.
            unsafe { hyp.hyp_ptr(p).cast::<u64>().write(self.free) };
            self.free = p;
            self.free_pages += 1;
        }
    }
}

/// A VM's stage-2 tables' allocator: its [`MemCache`].
pub struct VmAlloc<'a, A> {
    /// The VM's pages.
    pub cache: &'a mut MemCache,
    /// How the hypervisor reaches them.
    pub hyp: &'a A,
}

// SAFETY: `MemCache::alloc` hands out zeroed pages of adopted runs, aligned
// to their count, each once until freed; `hyp_ptr` reaches them (HypAlloc).
unsafe impl<A: HypAlloc> TableAlloc for VmAlloc<'_, A> {
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
        let n = pages as u64;
        self.cache.alloc(self.hyp, n, n).map(Pa)
    }

    unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
        self.cache.free(self.hyp, pa.0, pages as u64);
    }

    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
        self.hyp.hyp_ptr(pa.0).cast()
    }
}

/// Read-only access to a VM's stage-2 tables (queries, walks).
pub struct VmRead<'a, A>(pub &'a A);

// SAFETY: allocates nothing; `table_ptr` as `VmAlloc`'s.
unsafe impl<A: HypAlloc> TableAlloc for VmRead<'_, A> {
    fn alloc_tables(&mut self, _pages: usize) -> Option<Pa> {
        None
    }

    unsafe fn free_tables(&mut self, _pa: Pa, _pages: usize) {
        unreachable!("a read-only walk frees nothing");
    }

    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
        self.0.hyp_ptr(pa.0).cast()
    }
}

/// Host builds: memory for adopted runs from the process heap, and tables
/// from `s2mm`'s heap allocator, for hyp-core's host tests.
#[cfg(not(target_arch = "aarch64"))]
pub mod host {
    extern crate std;
    use super::HypAlloc;
    use core::ptr::NonNull;
    use core::sync::atomic::AtomicU64;
    use s2mm::host::SharedAlloc;
    use s2mm::{Pa, TableAlloc};
    use std::boxed::Box;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::vec;

    /// A 4 KiB-aligned page of backing memory.
    #[derive(Clone, Copy)]
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// Table pages from the heap (`SharedAlloc`) and, per adopted run,
    /// heap memory standing for the donated pages.
    #[derive(Clone, Default)]
    pub struct TestAlloc {
        /// The hypervisor pool's stand-in.
        pub tables: SharedAlloc,
        runs: Arc<Mutex<BTreeMap<u64, Box<[Page]>>>>,
    }

    impl core::fmt::Debug for TestAlloc {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("TestAlloc").finish_non_exhaustive()
        }
    }

    impl TestAlloc {
        /// A new allocator with nothing adopted.
        #[must_use]
        pub fn new() -> Self {
            Self::default()
        }

        /// Bytes of adopted runs still held.
        ///
        /// # Panics
        ///
        /// If a thread panicked holding the map.
        #[must_use]
        pub fn adopted_pages(&self) -> u64 {
            let runs = self.runs.lock().expect("runs");
            runs.values().map(|r| r.len() as u64).sum()
        }
    }

    // SAFETY: forwards to `SharedAlloc`.
    unsafe impl TableAlloc for TestAlloc {
        fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
            self.tables.alloc_tables(pages)
        }
        unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
            // SAFETY: forwarded contract.
            unsafe { self.tables.free_tables(pa, pages) }
        }
        fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
            self.tables.table_ptr(pa)
        }
    }

    // SAFETY: each adopted run is a boxed slice of pages, kept until
    // released; `hyp_ptr` points into the run holding `pa` (panics outside
    // any: a test bug).
    unsafe impl HypAlloc for TestAlloc {
        fn hyp_ptr(&self, pa: u64) -> NonNull<u8> {
            let runs = self.runs.lock().expect("runs");
            let (&base, run) = runs
                .range(..=pa)
                .next_back()
                .expect("hyp_ptr outside adopted memory");
            let off = (pa - base) as usize;
            assert!(
                off < run.len() * 4096,
                "hyp_ptr {pa:#x} outside adopted memory"
            );
            // SAFETY: inside the boxed run.
            NonNull::new(unsafe { run.as_ptr().cast::<u8>().cast_mut().add(off) })
                .expect("boxed memory")
        }
        fn adopt(&self, pa: u64, len: u64) {
            let pages = vec![Page([0xa5; 4096]); (len / 4096) as usize].into_boxed_slice();
            let old = self.runs.lock().expect("runs").insert(pa, pages);
            assert!(old.is_none(), "run {pa:#x} adopted twice");
        }
        fn release(&self, pa: u64, len: u64) {
            let run = self.runs.lock().expect("runs").remove(&pa);
            let run = run.expect("releasing a run never adopted");
            assert_eq!(
                run.len() as u64 * 4096,
                len,
                "release with the wrong length"
            );
        }
    }
}
