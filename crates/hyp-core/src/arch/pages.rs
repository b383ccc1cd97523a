//! The hypervisor's page pool: 4 KiB pages of its own memory (the board's
//! `hyp` region past the image) for translation tables.
//!
//! A bitmap with naturally aligned first-fit runs, because `s2mm` asks for
//! up to 16 contiguous pages aligned to their size (concatenated stage-2
//! root tables). Pool sizes are a few thousand pages and allocation happens
//! at VM set-up, so a linear scan is fine. The bookkeeping is pure and
//! tested on the host; only zeroing touches memory.

/// Largest pool, in pages (256 MiB).
pub const MAX_PAGES: usize = 65536;
const PAGE: u64 = 4096;

/// Allocation bookkeeping over `[base, base + pages * 4096)`.
#[derive(Debug)]
pub struct PagePool {
    base: u64,
    pages: usize,
    used: usize,
    bitmap: [u64; MAX_PAGES / 64],
}

impl PagePool {
    /// An empty pool (no pages).
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            base: 0,
            pages: 0,
            used: 0,
            bitmap: [0; MAX_PAGES / 64],
        }
    }

    /// Hands the page-aligned range `[base, base + size)` to the pool.
    ///
    /// # Panics
    ///
    /// If the range is unaligned or larger than [`MAX_PAGES`] (a board bug).
    pub fn init(&mut self, base: u64, size: u64) {
        assert!(
            base.is_multiple_of(PAGE) && size.is_multiple_of(PAGE),
            "page pool {base:#x}+{size:#x} not page aligned"
        );
        let pages = (size / PAGE) as usize;
        assert!(
            pages <= MAX_PAGES,
            "page pool of {pages} pages exceeds {MAX_PAGES}"
        );
        *self = Self::empty();
        self.base = base;
        self.pages = pages;
    }

    /// Pages not allocated.
    #[must_use]
    pub const fn free_pages(&self) -> usize {
        self.pages - self.used
    }

    fn bit(&self, i: usize) -> bool {
        self.bitmap[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, v: bool) {
        if v {
            self.bitmap[i / 64] |= 1 << (i % 64);
        } else {
            self.bitmap[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Reserves `n` contiguous pages whose first PA is aligned to `n` pages
    /// (`n` a power of two). Returns the PA, not zeroed.
    pub fn alloc(&mut self, n: usize) -> Option<u64> {
        if n == 0 || !n.is_power_of_two() {
            return None;
        }
        let align = n as u64 * PAGE;
        let first = (self.base.div_ceil(align) * align - self.base) / PAGE;
        let mut start = first as usize;
        while start + n <= self.pages {
            match (start..start + n).find(|&i| self.bit(i)) {
                None => {
                    for i in start..start + n {
                        self.set(i, true);
                    }
                    self.used += n;
                    return Some(self.base + start as u64 * PAGE);
                }
                Some(busy) => {
                    // Next aligned candidate past the busy page.
                    start = (busy / n + 1) * n + start % n;
                }
            }
        }
        None
    }

    /// Returns `n` pages at `pa`.
    ///
    /// # Panics
    ///
    /// On a double free or a range outside the pool: both are hypervisor bugs.
    pub fn free(&mut self, pa: u64, n: usize) {
        assert!(
            pa >= self.base && pa.is_multiple_of(PAGE),
            "free of {pa:#x} outside the page pool"
        );
        let start = ((pa - self.base) / PAGE) as usize;
        assert!(
            start + n <= self.pages,
            "free of {pa:#x}+{n} pages past the page pool"
        );
        for i in start..start + n {
            assert!(
                self.bit(i),
                "double free of page {:#x}",
                self.base + i as u64 * PAGE
            );
            self.set(i, false);
        }
        self.used -= n;
    }

    /// Pages in use.
    #[must_use]
    pub const fn used(&self) -> usize {
        self.used
    }

    /// First page of the pool.
    #[must_use]
    pub const fn base(&self) -> u64 {
        self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(base: u64, pages: u64) -> PagePool {
        let mut p = PagePool::empty();
        p.init(base, pages * PAGE);
        p
    }

    #[test]
    fn single_pages_until_full_then_reuse() {
        let mut p = pool(0x4000_0000, 8);
        let got: Vec<u64> = (0..8).map(|_| p.alloc(1).expect("room")).collect();
        assert_eq!(got[7], 0x4000_7000);
        assert_eq!(p.alloc(1), None);
        p.free(0x4000_3000, 1);
        assert_eq!(p.alloc(1), Some(0x4000_3000));
        assert_eq!(p.used(), 8);
    }

    #[test]
    fn runs_are_naturally_aligned() {
        // Base only 4 KiB aligned: a 2-page run must start on an 8 KiB boundary.
        let mut p = pool(0x4000_1000, 32);
        assert_eq!(p.alloc(1), Some(0x4000_1000));
        assert_eq!(p.alloc(2), Some(0x4000_2000));
        assert_eq!(p.alloc(16), Some(0x4001_0000));
        assert_eq!(p.alloc(4), Some(0x4000_4000));
    }

    #[test]
    fn skips_busy_pages_inside_a_candidate_run() {
        let mut p = pool(0, 16);
        assert_eq!(p.alloc(1), Some(0));
        assert_eq!(p.alloc(4), Some(0x4000));
        assert_eq!(p.alloc(8), Some(0x8000));
        assert_eq!(p.alloc(8), None);
        assert_eq!(p.alloc(0), None);
        assert_eq!(p.alloc(3), None);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_a_bug() {
        let mut p = pool(0, 4);
        let a = p.alloc(1).expect("room");
        p.free(a, 1);
        p.free(a, 1);
    }
}
