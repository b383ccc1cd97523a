//! The generic table walker shared by stage 2 and the EL2 stage 1.
//!
//! One operation (map, unmap/annotate, modify permissions or state) is applied to an input
//! range in a single depth-first walk. Per live table the walk has two phases, as
//! ARM-RULES.md §4 asks ("all breaks, DSB, TLBIs, DSB, all makes"): entries that need
//! break-before-make are broken in the first pass, the batch is synced once, and a second pass
//! makes them. Splits of live blocks build the replacement subtree off-line in fresh tables
//! (plain stores are fine there: nothing can walk them yet) and link it with one BBM.
//! After returning from a live child table, the walker checks whether the child became
//! empty (freed) or a fully populated uniform run (collapsed into a block: break, sync, CMO
//! when FWB is absent, make). Detached tables are freed only after the sync that completed
//! their TLBI (ARM-RULES.md 2.4, invariant 15).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Pa;
use crate::alloc::TableAlloc;
use crate::batch::{BatchStats, Inval, PtBatch, MAX_QUEUED};
use crate::desc::{requires_bbm, Format, OA_MASK, STATE_MASK, TABLE_OR_PAGE, VALID};
use crate::Error;

/// Entries in one 4 KiB table.
pub(crate) const ENTRIES: usize = 512;

/// log2 of the range covered by one entry at `level`.
pub(crate) const fn shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

/// Bytes covered by one entry at `level`.
pub(crate) const fn size(level: u8) -> u64 {
    1u64 << shift(level)
}

pub(crate) const fn is_table(d: u64, level: u8) -> bool {
    level < 3 && d & 3 == 3
}

pub(crate) const fn is_leaf(d: u64, level: u8) -> bool {
    d & VALID != 0 && (level == 3 || d & TABLE_OR_PAGE == 0)
}

/// Valid and type bits of a leaf at `level`.
pub(crate) const fn leaf_type(level: u8) -> u64 {
    if level == 3 {
        VALID | TABLE_OR_PAGE
    } else {
        VALID
    }
}

/// Views the table at `pa` as `n` atomic slots.
///
/// # Safety
///
/// `pa` must be a live allocation of `alloc` of at least `n` entries, and the returned slice
/// must not be used after that allocation is freed.
pub(crate) unsafe fn slots<'t, A: TableAlloc + ?Sized>(
    alloc: &A,
    pa: Pa,
    n: usize,
) -> &'t [AtomicU64] {
    let p = alloc.table_ptr(pa);
    // SAFETY: `TableAlloc`'s contract makes `p` valid, aligned atomic storage for the
    // allocation; the caller keeps the slice within the allocation's lifetime.
    unsafe { core::slice::from_raw_parts(p.as_ptr(), n) }
}

/// One operation over a range.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// Map: output address = input address + `delta` (wrapping), leaf bits `bits`.
    Map { delta: u64, bits: u64 },
    /// Replace everything by the invalid descriptor `inval` (0 or an owner annotation).
    Unmap { inval: u64 },
    /// On valid leaves only: `(old & !mask) | bits` (permissions or page state).
    Modify { mask: u64, bits: u64 },
}

/// Geometry and policy of one set of tables.
#[derive(Debug)]
pub(crate) struct Tables<F> {
    pub root: Pa,
    pub root_pages: usize,
    pub root_entries: usize,
    pub start_level: u8,
    pub ia_bits: u32,
    pub fmt: F,
    /// Smallest level number at which a leaf may be placed (1: 1 GiB blocks, 2: 2 MiB, 3: pages).
    pub min_leaf_level: u8,
    /// Keep a child table an operation made uniform (all invalid with one annotation, or a
    /// block's worth of pages) instead of freeing or collapsing it: a page-granular window
    /// that the next one-page change reuses rather than splitting a block again.
    pub keep_tables: bool,
}

const DETACH_CAP: usize = 32;

/// Tables detached from live tables whose invalidation has not completed yet (freed at the
/// next sync). Left uninitialised past `n`: zeroing the 32 slots was 64 stores in every walk,
/// most of which detach nothing.
struct Detached {
    n: usize,
    items: [core::mem::MaybeUninit<(u64, u8)>; DETACH_CAP],
}

impl Detached {
    const fn new() -> Self {
        Self {
            n: 0,
            items: [const { core::mem::MaybeUninit::uninit() }; DETACH_CAP],
        }
    }

    fn is_full(&self) -> bool {
        self.n == DETACH_CAP
    }

    /// Adds one; the caller makes room first ([`Self::is_full`]).
    fn push(&mut self, pa: u64, level: u8) {
        self.items[self.n] = core::mem::MaybeUninit::new((pa, level));
        self.n += 1;
    }

    /// Empties the list, returning the last entry pushed.
    fn pop(&mut self) -> Option<(u64, u8)> {
        self.n = self.n.checked_sub(1)?;
        // SAFETY: entries below the old `n` were written by `push`.
        Some(unsafe { self.items[self.n].assume_init() })
    }
}

/// TLBI policy: up to this many leaf invalidations per batch are issued one by one (IPAS2E1IS
/// with a level hint, or VAE2IS); more become one VMID-wide VMALLS12E1IS (EL2: ALLE2IS).
const TLBI_LIMIT: usize = 32;

/// Test-only fault injection, to show the barriers checker catches a broken collapse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Fault {
    #[default]
    None,
    /// Install the collapsed block before the table break was synced (the Yanan Wang RFC).
    #[cfg(test)]
    CollapseWithoutSync,
}

/// Which regime a walk's batch is for (the batch itself is built where it is used).
pub(crate) enum BatchRegime<'v> {
    /// Stage 2: this CPU's VTTBR owner and the tables' VTTBR value.
    Stage2(&'v mut crate::Vttbr, u64),
    /// The hypervisor's EL2 stage 1.
    El2,
}

impl<'v> BatchRegime<'v> {
    fn open(self) -> PtBatch<'v> {
        match self {
            BatchRegime::Stage2(v, target) => PtBatch::stage2(v, target),
            BatchRegime::El2 => PtBatch::el2(),
        }
    }
}

struct Walker<'a, 'v, A: TableAlloc, F: Format> {
    alloc: &'a mut A,
    fmt: &'a F,
    /// Borrowed, never owned: the batch (~8.3 KiB with its queue) stays in the frame of
    /// [`Tables::run`] from its construction to its `finish`, so no walk copies it.
    batch: &'a mut PtBatch<'v>,
    op: Op,
    min_leaf_level: u8,
    keep_tables: bool,
    /// Breaks or restricts queued since the last sync.
    unsynced: bool,
    /// Number of them (the batch queue holds at most `barriers::pt::MAX_QUEUED`).
    queued: usize,
    detached: Detached,
    #[cfg_attr(not(test), allow(dead_code, reason = "only test builds inject faults"))]
    fault: Fault,
}

enum Want {
    Keep,
    Value(u64),
    Descend,
}

impl<F: Format> Tables<F> {
    /// Runs `op` over `[start, start + len)`.
    #[allow(
        clippy::too_many_arguments,
        reason = "one walk's inputs; callers are the few public operations"
    )]
    pub(crate) fn run<A: TableAlloc>(
        &self,
        alloc: &mut A,
        regime: BatchRegime<'_>,
        op: Op,
        start: u64,
        len: u64,
        fault: Fault,
        pre_clean: Option<(u64, u64)>,
    ) -> Result<BatchStats, Error> {
        // Built here and only lent to the walker: the batch is ~8.3 KiB, and a move of it is a
        // call to `memcpy` of that size (moving it into the walker and out into `finish` was 68%
        // of a one-page fault), besides the stack it costs. `finish_after` finishes it in place.
        let (r, stats) = regime
            .open()
            .with_tlbi_limit(TLBI_LIMIT)
            .finish_after(|batch| {
                let mut w = Walker {
                    alloc,
                    fmt: &self.fmt,
                    batch,
                    op,
                    min_leaf_level: self.min_leaf_level.max(1),
                    keep_tables: self.keep_tables,
                    unsynced: false,
                    queued: 0,
                    detached: Detached::new(),
                    fault,
                };
                if let Some((va, n)) = pre_clean {
                    // ARM-RULES.md §3 / KVM `stage2_map_walker_try_leaf`: without FWB, clean new
                    // cacheable memory to PoC before it becomes visible to a guest that may run
                    // with its MMU off (non-cacheable accesses would miss dirty lines).
                    w.batch.clean_to_poc(va, n);
                }
                // SAFETY: the root is a live allocation of `root_entries` slots owned by `self`.
                let root = unsafe { slots(&*w.alloc, self.root, self.root_entries) };
                let r = w.apply(root, self.start_level, 0, start, start + len, true);
                w.settle();
                r
            });
        r.map(|()| stats)
    }

    /// The entry that translates `ia`: `(descriptor, level)`; the descriptor is a valid leaf or
    /// an invalid entry (possibly annotated).
    pub(crate) fn lookup<A: TableAlloc>(&self, alloc: &A, ia: u64) -> Option<(u64, u8)> {
        if ia >> self.ia_bits != 0 {
            return None;
        }
        let mut level = self.start_level;
        // SAFETY: the root is live for the lifetime of `self`.
        let mut t = unsafe { slots(alloc, self.root, self.root_entries) };
        let mut idx = (ia >> shift(level)) as usize;
        loop {
            let d = t[idx].load(Ordering::Acquire);
            if !is_table(d, level) {
                return Some((d, level));
            }
            level += 1;
            // SAFETY: a table descriptor in a live table points at a live table.
            t = unsafe { slots(alloc, Pa(d & OA_MASK), ENTRIES) };
            idx = ((ia >> shift(level)) as usize) & (ENTRIES - 1);
        }
    }

    /// Calls `f(ia, level, desc)` for every non-zero non-table entry (valid leaves and annotated
    /// invalid entries), in address order.
    pub(crate) fn visit<A: TableAlloc>(&self, alloc: &A, f: &mut dyn FnMut(u64, u8, u64)) {
        fn rec<A: TableAlloc>(
            alloc: &A,
            t: &[AtomicU64],
            level: u8,
            base: u64,
            f: &mut dyn FnMut(u64, u8, u64),
        ) {
            for (i, s) in t.iter().enumerate() {
                let d = s.load(Ordering::Acquire);
                let ia = base + ((i as u64) << shift(level));
                if is_table(d, level) {
                    // SAFETY: a table descriptor in a live table points at a live table.
                    let c = unsafe { slots(alloc, Pa(d & OA_MASK), ENTRIES) };
                    rec(alloc, c, level + 1, ia, f);
                } else if d != 0 {
                    f(ia, level, d);
                }
            }
        }
        // SAFETY: the root is live for the lifetime of `self`.
        let root = unsafe { slots(alloc, self.root, self.root_entries) };
        rec(alloc, root, self.start_level, 0, f);
    }

    /// Breaks every root entry, completes the invalidation and frees every table, root
    /// included.
    pub(crate) fn destroy<A: TableAlloc>(
        &self,
        alloc: &mut A,
        regime: BatchRegime<'_>,
    ) -> BatchStats {
        let ((), stats) = regime.open().with_tlbi_limit(0).finish_after(|batch| {
            let mut w = Walker {
                alloc,
                fmt: &self.fmt,
                batch,
                op: Op::Unmap { inval: 0 },
                min_leaf_level: 1,
                keep_tables: false,
                unsynced: false,
                queued: 0,
                detached: Detached::new(),
                fault: Fault::None,
            };
            // SAFETY: the root is live until freed at the end of this closure.
            let root = unsafe { slots(&*w.alloc, self.root, self.root_entries) };
            let level = self.start_level;
            for (i, slot) in root.iter().enumerate() {
                let d = slot.load(Ordering::Relaxed);
                let ia = (i as u64) << shift(level);
                if is_table(d, level) {
                    w.break_(slot, 0, Inval::Table { ia });
                    w.detach(Pa(d & OA_MASK), level + 1);
                } else if d != 0 || i == 0 {
                    // Entry 0 is always "broken" with a table-class invalidation, so destroy
                    // ends with a VMID-wide (regime-wide) TLBI even for empty tables: walk
                    // caches may hold the root itself (R_ZYZYK), and the VMID may then be reused
                    // (invariant 20).
                    w.break_(slot, 0, Inval::Table { ia });
                }
            }
            w.sync_now();
            w.batch.free(self.root.0);
            // SAFETY: every entry of the root was broken and the invalidation completed; the
            // caller no longer has the root in VTTBR/TTBR (documented on the public `destroy`).
            unsafe { w.alloc.free_tables(self.root, self.root_pages) };
            w.settle();
        });
        stats
    }
}

impl<A: TableAlloc, F: Format> Walker<'_, '_, A, F> {
    /// Completes the queued breaks and frees the detached tables: what the walk owes before
    /// its batch is finished.
    fn settle(&mut self) {
        if self.detached.n > 0 || self.unsynced {
            self.sync_now();
        }
    }

    /// Keeps the batch queue from overflowing: we sync ourselves when it is full, so every
    /// queued invalidation is issued exactly once (the batch's own overflow path would store
    /// the new entry before its internal sync and then queue it again).
    fn reserve_queue(&mut self) {
        if self.queued == MAX_QUEUED {
            self.sync_now();
        }
        self.queued += 1;
        self.unsynced = true;
    }

    fn break_(&mut self, slot: &AtomicU64, invalid: u64, inv: Inval) {
        self.reserve_queue();
        self.batch.break_entry(slot, invalid, inv);
    }

    /// Restrictions do not count against the queue: once the batch has gone
    /// VMID-wide it stops queuing them (one flush covers all), and it syncs a
    /// full queue before the next store itself.
    fn restrict(&mut self, slot: &AtomicU64, new: u64, inv: Inval) {
        self.unsynced = true;
        self.batch.restrict(slot, new, inv);
    }

    /// Completes queued breaks, then frees detached tables (safe only now, invariant 15).
    fn sync_now(&mut self) {
        if self.unsynced {
            self.batch.sync();
            self.unsynced = false;
            self.queued = 0;
        }
        while let Some((pa, level)) = self.detached.pop() {
            self.free_live_subtree(Pa(pa), level);
        }
    }

    fn detach(&mut self, pa: Pa, level: u8) {
        if self.detached.is_full() {
            self.sync_now();
        }
        self.detached.push(pa.0, level);
    }

    /// Frees a subtree that was linked into a live table and whose invalidation completed.
    fn free_live_subtree(&mut self, pa: Pa, level: u8) {
        if level < 3 {
            // SAFETY: detached tables stay allocated until freed below.
            let t = unsafe { slots(&*self.alloc, pa, ENTRIES) };
            for s in t {
                let d = s.load(Ordering::Relaxed);
                if is_table(d, level) {
                    self.free_live_subtree(Pa(d & OA_MASK), level + 1);
                }
            }
        }
        self.batch.free(pa.0);
        // SAFETY: unreachable since the parent's break was synced (TLBI + DSB ISH done).
        unsafe { self.alloc.free_tables(pa, 1) };
    }

    /// Frees a subtree that was never linked into a live table.
    fn free_unlinked(&mut self, pa: Pa, level: u8) {
        if level < 3 {
            // SAFETY: the fresh table is allocated until freed below.
            let t = unsafe { slots(&*self.alloc, pa, ENTRIES) };
            for s in t {
                let d = s.load(Ordering::Relaxed);
                if is_table(d, level) {
                    self.free_unlinked(Pa(d & OA_MASK), level + 1);
                }
            }
        }
        // SAFETY: no hardware walker ever saw this table.
        unsafe { self.alloc.free_tables(pa, 1) };
    }

    fn leaf_allowed(&self, level: u8) -> bool {
        level >= self.min_leaf_level
    }

    fn want(&self, old: u64, ia: u64, level: u8) -> Want {
        match self.op {
            Op::Map { delta, bits } => {
                let oa = ia.wrapping_add(delta);
                if self.leaf_allowed(level) && oa & (size(level) - 1) == 0 {
                    Want::Value(oa | bits | leaf_type(level))
                } else {
                    Want::Descend
                }
            }
            Op::Unmap { inval } => Want::Value(inval),
            Op::Modify { mask, bits } => {
                if is_table(old, level) {
                    Want::Descend
                } else if old & VALID != 0 {
                    Want::Value((old & !mask) | bits)
                } else {
                    Want::Keep
                }
            }
        }
    }

    /// For a non-table entry that is only partly covered (or cannot take a leaf): nothing to do?
    fn partial_noop(&self, old: u64) -> bool {
        match self.op {
            Op::Map { .. } => false,
            Op::Unmap { inval } => old == inval,
            Op::Modify { .. } => old & VALID == 0,
        }
    }

    /// Applies the op to `t` (a table at `level` whose entry 0 translates `base`) over `[s, e)`.
    ///
    /// While the range lies inside one entry of a live table that it only partly covers and
    /// that entry is a table, the walk goes straight down to it, which is what
    /// [`Self::apply_range`] would do for that one entry (descend, then [`Self::post_check`]
    /// the child on the way back), without a call and that loop's set-up per level: a one-page
    /// share, fault or unmap meets the general loop only at its last level.
    fn apply(
        &mut self,
        t: &[AtomicU64],
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        live: bool,
    ) -> Result<(), Error> {
        if !live {
            return self.apply_level(t, level, base, s, e, live);
        }
        // The entries gone through, root side first: (entry, child table, its range, level).
        let mut path: [Option<(&AtomicU64, Pa, u64, u8)>; 4] = [None; 4];
        let mut depth = 0;
        let (mut t, mut level, mut base) = (t, level, base);
        while depth < path.len() {
            let sz = size(level);
            let i = ((s - base) >> shift(level)) as usize;
            let ia = base + (i as u64) * sz;
            if e > ia + sz || (s == ia && e == ia + sz) {
                break;
            }
            let Some(slot) = t.get(i) else {
                break;
            };
            let old = slot.load(Ordering::Relaxed);
            if !is_table(old, level) {
                break;
            }
            let cpa = Pa(old & OA_MASK);
            path[depth] = Some((slot, cpa, ia, level));
            depth += 1;
            // SAFETY: as in `apply_range`: a table descriptor in a live table points at a live
            // table, freed only via `detach` after this walk stops using it.
            t = unsafe { slots(&*self.alloc, cpa, ENTRIES) };
            level += 1;
            base = ia;
        }
        self.apply_level(t, level, base, s, e, live)?;
        for &(slot, cpa, ia, level) in path[..depth].iter().rev().flatten() {
            self.post_check(slot, cpa, ia, level, s);
        }
        Ok(())
    }

    /// [`Self::apply`] at one level: the entries of `t` over `[s, e)`.
    fn apply_level(
        &mut self,
        t: &[AtomicU64],
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        live: bool,
    ) -> Result<(), Error> {
        let sz = size(level);
        let i0 = ((s - base) >> shift(level)) as usize;
        let i1 = ((e - 1 - base) >> shift(level)) as usize;
        let (mut plo, mut phi) = (usize::MAX, 0usize);
        let mut i = i0;
        if let (false, Op::Map { delta, bits }) = (live, self.op) {
            // Fast path for a fresh (unlinked) table: every fully covered entry becomes a leaf
            // at this level, written with plain stores (nothing can walk this table yet).
            let first_full = if s == base + (i0 as u64) * sz {
                i0
            } else {
                i0 + 1
            };
            let end_full = if e == base + ((i1 as u64) + 1) * sz {
                i1 + 1
            } else {
                i1
            };
            let oa0 = (base + (first_full as u64) * sz).wrapping_add(delta);
            if self.leaf_allowed(level) && oa0 & (sz - 1) == 0 && first_full < end_full {
                // Partly covered head entry first, through the general path.
                if first_full > i0 {
                    self.apply_range(t, level, base, s, e, live, i0, i0, &mut plo, &mut phi)?;
                }
                let mut d = oa0 | bits | leaf_type(level);
                for slot in &t[first_full..end_full] {
                    slot.store(d, Ordering::Relaxed);
                    d = d.wrapping_add(sz);
                }
                i = end_full;
            }
        }
        if let (true, Op::Modify { mask, bits }) = (live, self.op) {
            if (mask | bits) & !STATE_MASK == 0 {
                return self.set_states(t, level, base, s, e, i, i1, mask, bits);
            }
        }
        if i <= i1 {
            self.apply_range(t, level, base, s, e, live, i, i1, &mut plo, &mut phi)?;
        }
        if plo <= phi {
            self.second_pass(t, level, base, plo, phi);
        }
        Ok(())
    }

    /// [`Self::apply_level`] for a page-state change (`Op::Modify` of state bits only) of
    /// entries `i..=i1` of the live table `t`. On a valid leaf it rewrites software bits only,
    /// which needs neither break-before-make nor a TLBI (R_WHZWS; no walker reads them), so each
    /// such leaf is one make. Anything else (a table, an invalid entry, an entry only partly
    /// covered) goes through the general loop, one entry at a time. Out of line: the other
    /// operations' walks (a fault's map) do not carry it.
    #[allow(
        clippy::too_many_arguments,
        reason = "walker state threaded through one recursion"
    )]
    #[inline(never)]
    fn set_states(
        &mut self,
        t: &[AtomicU64],
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        mut i: usize,
        i1: usize,
        mask: u64,
        bits: u64,
    ) -> Result<(), Error> {
        let sz = size(level);
        let (mut plo, mut phi) = (usize::MAX, 0usize);
        let last = i1.min(t.len().saturating_sub(1));
        while i <= last {
            let ia = base + (i as u64) * sz;
            let old = t[i].load(Ordering::Relaxed);
            if s <= ia && ia + sz <= e && is_leaf(old, level) {
                let new = (old & !mask) | bits;
                if new != old {
                    self.batch.make(&t[i], new);
                }
            } else {
                self.apply_range(t, level, base, s, e, true, i, i, &mut plo, &mut phi)?;
            }
            i += 1;
        }
        // Only a map breaks entries to make them again in a second pass.
        debug_assert!(plo > phi, "s2mm: a state change left a make pending");
        Ok(())
    }

    /// The general per-entry loop of [`Self::apply`] over entries `i0..=i1`.
    #[allow(
        clippy::too_many_arguments,
        reason = "walker state threaded through one recursion"
    )]
    fn apply_range(
        &mut self,
        t: &[AtomicU64],
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        live: bool,
        i0: usize,
        i1: usize,
        plo: &mut usize,
        phi: &mut usize,
    ) -> Result<(), Error> {
        let sz = size(level);
        // Indexing rather than `iter().enumerate().take().skip()`: the skip was an out-of-line
        // `nth` call per level of every walk.
        for (i, slot) in (i0..=i1.min(t.len().saturating_sub(1))).map(|i| (i, &t[i])) {
            let ia = base + (i as u64) * sz;
            let (ss, ee) = (s.max(ia), e.min(ia + sz));
            let full = ss == ia && ee == ia + sz;
            let old = slot.load(Ordering::Relaxed);
            let want = if full {
                self.want(old, ia, level)
            } else {
                Want::Descend
            };
            match want {
                Want::Keep => {}
                Want::Value(new) => {
                    if is_table(old, level) {
                        let child = Pa(old & OA_MASK);
                        if !live {
                            // Fresh tables hold no tables; handled for completeness.
                            self.free_unlinked(child, level + 1);
                            slot.store(new, Ordering::Relaxed);
                        } else if new & VALID != 0 {
                            // Map over a whole table: collapse it. Break now (VMID-wide TLBI
                            // for a table, R_ZYZYK), make in the second pass after the sync.
                            self.break_(slot, 0, Inval::Table { ia });
                            self.detach(child, level + 1);
                            *plo = (*plo).min(i);
                            *phi = i;
                        } else {
                            self.break_(slot, new, Inval::Table { ia });
                            self.detach(child, level + 1);
                        }
                    } else if self.replace_leaf(slot, old, new, ia, level, live) {
                        *plo = (*plo).min(i);
                        *phi = i;
                    }
                }
                Want::Descend => {
                    if is_table(old, level) {
                        let cpa = Pa(old & OA_MASK);
                        // SAFETY: a table descriptor in a live table points at a live table; it
                        // is freed only via `detach` after this frame stops using it.
                        let child = unsafe { slots(&*self.alloc, cpa, ENTRIES) };
                        self.apply(child, level + 1, ia, ss, ee, live)?;
                        self.post_check(slot, cpa, ia, level, ss);
                    } else if !self.partial_noop(old) {
                        self.split(slot, old, ia, level, ss, ee, live)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the entries broken in the first pass (only `Map` breaks-then-makes).
    fn second_pass(&mut self, t: &[AtomicU64], level: u8, base: u64, plo: usize, phi: usize) {
        let Op::Map { delta, bits } = self.op else {
            unreachable!("s2mm: only Map defers makes")
        };
        // R_DDMVT: the break must be complete (DSB, TLBI, DSB) before the make.
        self.sync_now();
        let sz = size(level);
        let pending = |slot: &AtomicU64| slot.load(Ordering::Relaxed) & VALID == 0;
        if level < 3 && self.fmt.needs_cmo(bits) {
            // Invariant 19: a collapse without FWB cleans the whole block to PoC between
            // break and make. Adjacent blocks are cleaned in one call.
            let (mut start, mut len) = (0u64, 0u64);
            for (i, slot) in (plo..=phi.min(t.len().saturating_sub(1))).map(|i| (i, &t[i])) {
                if !pending(slot) {
                    continue;
                }
                let oa = (base + (i as u64) * sz).wrapping_add(delta);
                if len != 0 && start + len == oa {
                    len += sz;
                } else {
                    self.flush_cmo(start, len);
                    (start, len) = (oa, sz);
                }
            }
            self.flush_cmo(start, len);
        }
        for (i, slot) in (plo..=phi.min(t.len().saturating_sub(1))).map(|i| (i, &t[i])) {
            if pending(slot) {
                let oa = (base + (i as u64) * sz).wrapping_add(delta);
                self.batch.make(slot, oa | bits | leaf_type(level));
            }
        }
    }

    fn flush_cmo(&mut self, pa: u64, len: u64) {
        if len != 0 {
            let va = self.alloc.cmo_va(Pa(pa)).0;
            self.batch.clean_to_poc(va, len);
        }
    }

    /// Replaces leaf-or-invalid `old` by `new`; returns whether it was broken and awaits a make.
    fn replace_leaf(
        &mut self,
        slot: &AtomicU64,
        old: u64,
        new: u64,
        ia: u64,
        level: u8,
        live: bool,
    ) -> bool {
        if old == new {
            return false;
        }
        if !live {
            slot.store(new, Ordering::Relaxed);
            return false;
        }
        let inv = Inval::Leaf { ia, level };
        if old & VALID == 0 {
            // Invalid -> valid (R_XCLRD: faulting entries are not cached) or an annotation
            // change of an invalid entry: no TLBI.
            self.batch.make(slot, new);
            false
        } else if new & VALID == 0 {
            self.break_(slot, new, inv);
            false
        } else if requires_bbm(old, new, self.fmt.perm_mask()) {
            self.break_(slot, 0, inv);
            true
        } else if self.fmt.is_restriction(old, new) {
            // §2.2 "Permissions": restricting needs TLBI + DSB, no BBM.
            self.restrict(slot, new, inv);
            false
        } else {
            // Relaxing permissions or changing SW bits only: exempt from BBM (R_WHZWS).
            self.batch.make(slot, new);
            false
        }
    }

    /// Entry `old` (invalid or a block) is partly covered: build its replacement in a fresh
    /// table, apply the op there with plain stores, then install it.
    #[allow(
        clippy::too_many_arguments,
        reason = "walker state threaded through one recursion"
    )]
    fn split(
        &mut self,
        slot: &AtomicU64,
        old: u64,
        ia: u64,
        level: u8,
        s: u64,
        e: u64,
        live: bool,
    ) -> Result<(), Error> {
        // Release check (split path only): a level-3 entry maps one page and every range is
        // page-aligned, so a split below level 3 means a walker bug that would index past the
        // table.
        assert!(level < 3, "s2mm: level-3 entries are always fully covered");
        let cpa = self.alloc.alloc_table().ok_or(Error::OutOfMemory)?;
        // SAFETY: freshly allocated table, freed only through `free_unlinked`/`detach`.
        let child = unsafe { slots(&*self.alloc, cpa, ENTRIES) };
        let cl = level + 1;
        if old & VALID != 0 {
            // Replicate the block one level down: same attributes, consecutive OAs.
            let first = (old & !3) | leaf_type(cl);
            let step = size(cl);
            let mut d = first;
            for c in child {
                c.store(d, Ordering::Relaxed);
                d += step;
            }
        } else if old != 0 {
            for c in child {
                c.store(old, Ordering::Relaxed);
            }
        }
        if let Err(err) = self.apply(child, cl, ia, s, e, false) {
            self.free_unlinked(cpa, cl);
            return Err(err);
        }
        if let Some(v) = self.evaluate(child, level, probe(ia, level, s)) {
            let bbm =
                old & VALID != 0 && v & VALID != 0 && requires_bbm(old, v, self.fmt.perm_mask());
            if !bbm {
                self.free_unlinked(cpa, cl);
                let pending = self.replace_leaf(slot, old, v, ia, level, live);
                // Release check: without break-before-make nothing is left to invalidate; a
                // pending invalidation here would be a lost TLBI.
                assert!(
                    !pending,
                    "s2mm: a no-BBM replacement left an invalidation pending"
                );
                return Ok(());
            }
        }
        let link = cpa.0 | VALID | TABLE_OR_PAGE;
        if !live {
            slot.store(link, Ordering::Relaxed);
        } else if old & VALID == 0 {
            // The zeroed-then-filled table is published by the batch's DSB ISHST (inv. 17).
            self.batch.make(slot, link);
        } else {
            // Splitting a live block changes the block size: full BBM (§2.1, FEAT_BBM L0).
            self.break_(slot, 0, Inval::Leaf { ia, level });
            self.sync_now();
            self.batch.make(slot, link);
        }
        Ok(())
    }

    /// After changing a live child table: free it if it became uniformly invalid, or collapse
    /// it into a block if it became a fully populated, uniform run.
    /// `s` is the first address the walk changed in the child.
    fn post_check(&mut self, slot: &AtomicU64, cpa: Pa, ia: u64, level: u8, s: u64) {
        if self.keep_tables {
            return;
        }
        // SAFETY: the child is live (still linked from `slot`).
        let child = unsafe { slots(&*self.alloc, cpa, ENTRIES) };
        let Some(v) = self.evaluate(child, level, probe(ia, level, s)) else {
            return;
        };
        if v & VALID == 0 {
            // Empty (or uniformly annotated): unlink; freed after the table TLBI completes.
            self.break_(slot, v, Inval::Table { ia });
            self.detach(cpa, level + 1);
            return;
        }
        // Collapse with full break-before-make (ARM-RULES.md 2.4, what landed upstream):
        // break the table entry, VMID-wide TLBI (walk caches, R_ZYZYK), DSB; CMO without
        // FWB (invariant 19); make the block; the old table is freed only after the sync.
        self.break_(slot, 0, Inval::Table { ia });
        self.detach(cpa, level + 1);
        #[cfg(test)]
        if self.fault == Fault::CollapseWithoutSync {
            // The 2021 RFC's order: the block goes in while the table break is still
            // uncompleted. `PtBatch::make` refuses this (it panics), so the fault bypasses the
            // batch and records the store itself, as hand-written code would.
            let old = slot.swap(v, Ordering::Release);
            barriers::trace::record(barriers::Insn::Store {
                addr: slot.as_ptr() as u64,
                old,
                new: v,
                ia: Some(ia),
                level: Some(level),
            });
            return;
        }
        self.sync_now();
        if self.fmt.needs_cmo(v) {
            self.flush_cmo(v & OA_MASK, size(level));
        }
        self.batch.make(slot, v);
    }

    /// If all 512 entries of `child` (a table at `level + 1`) can be expressed by a single
    /// entry at `level`, returns that entry.
    ///
    /// Entry `probe` (one the walk just changed) and the last entry are compared first: a table
    /// that is not uniform almost always differs there (a page mapped into a table filled in
    /// address order, a page carved out of a full run), so most checks end after three loads
    /// instead of scanning up to 512 entries. The answer is the same as a scan in order.
    fn evaluate(&self, child: &[AtomicU64], level: u8, probe: usize) -> Option<u64> {
        let e0 = child[0].load(Ordering::Relaxed);
        let cl = level + 1;
        let step = size(cl);
        // What entry `i` must hold for the table to be uniform.
        let (want, scan_step) = if e0 & VALID == 0 {
            (e0, 0)
        } else {
            if !is_leaf(e0, cl)
                || !self.leaf_allowed(level)
                || e0 & OA_MASK & (size(level) - 1) != 0
            {
                return None;
            }
            (e0, step)
        };
        let expect = |i: usize| want.wrapping_add(scan_step.wrapping_mul(i as u64));
        let last = ENTRIES - 1;
        for i in [probe, last] {
            if child[i].load(Ordering::Relaxed) != expect(i) {
                return None;
            }
        }
        let mut d = want;
        for c in child {
            if c.load(Ordering::Relaxed) != d {
                return None;
            }
            d = d.wrapping_add(scan_step);
        }
        Some(if e0 & VALID == 0 {
            e0
        } else {
            (e0 & !3) | leaf_type(level)
        })
    }
}

/// In the table below the entry at `level` whose range starts at `ia`: the index of the entry
/// that translates `s` (clamped to the range), the first one a walk over `[s, ..)` changed.
fn probe(ia: u64, level: u8, s: u64) -> usize {
    (((s.max(ia) - ia) >> shift(level + 1)) as usize) & (ENTRIES - 1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::Fault;
    use crate::host::HostAlloc;
    use crate::{Attrs, Ipa, Pa, PageState, Stage2};
    use barriers::{check, trace, DsbKind, Insn, Tlbi};
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    const K4: u64 = 4096;
    const M2: u64 = 1 << 21;

    /// 511 pages of a 2 MiB-aligned run, then the last page: the table becomes uniform and
    /// collapses into a 2 MiB block.
    fn collapse_scenario(attrs: Attrs, fault: Fault) -> (Vec<Insn>, HostAlloc, Stage2) {
        let mut a = HostAlloc::new();
        let mut s2 = Stage2::new(&mut a, 3, 40, false).expect("stage 2");
        // SAFETY: host test: the recording backend, one owner per test.
        let mut v = unsafe { crate::Vttbr::assume_loaded(s2.vttbr()) };
        s2.map(
            &mut a,
            &mut v,
            Ipa(M2),
            Pa(8 * M2),
            M2 - K4,
            attrs,
            PageState::Owned,
        )
        .expect("map");
        assert_eq!(s2.query(&a, Ipa(M2)).expect("mapped").level, 3);
        s2.inject_fault(fault);
        trace::clear();
        v.record_state();
        s2.map(
            &mut a,
            &mut v,
            Ipa(2 * M2 - K4),
            Pa(9 * M2 - K4),
            K4,
            attrs,
            PageState::Owned,
        )
        .expect("map");
        (trace::take(), a, s2)
    }

    #[test]
    fn collapse_is_full_break_before_make() {
        let (t, a, s2) = collapse_scenario(Attrs::DEVICE_RW, Fault::None);
        assert_eq!(s2.query(&a, Ipa(M2 + 5 * K4)).expect("mapped").level, 2);
        assert!(
            check::check(&t).is_empty(),
            "{}",
            check::report(&check::check(&t))
        );
        // Exact shape: page make, table break, DSB ISHST, VMALLS12E1IS, DSB ISH, free the old
        // table (only now), block make, trailing DSB ISHST.
        let t: Vec<Insn> = t
            .into_iter()
            .filter(|i| !matches!(i, Insn::Use(_)))
            .collect();
        let shape: Vec<String> = t
            .iter()
            .map(|i| match i {
                Insn::Store { old, new, .. } => format!("store {}->{}", old & 3, new & 3),
                Insn::Free { .. } => "free".into(),
                other => format!("{other:?}"),
            })
            .collect();
        let want = [
            "store 0->3",
            "store 3->0",
            "Dsb(Ishst)",
            "Tlbi(Vmalls12e1is)",
            "Dsb(Ish)",
            "free",
            "store 0->1",
            "Dsb(Ishst)",
        ];
        assert_eq!(shape, want);
        assert!(matches!(t[3], Insn::Tlbi(Tlbi::Vmalls12e1is)));
        assert!(matches!(t[7], Insn::Dsb(DsbKind::Ishst)));
    }

    #[test]
    fn collapse_without_fwb_cleans_the_block_between_break_and_make() {
        let (t, _, _) = collapse_scenario(Attrs::RAM_RWX, Fault::None);
        assert!(
            check::check(&t).is_empty(),
            "{}",
            check::report(&check::check(&t))
        );
        let tlbi = t
            .iter()
            .position(|i| matches!(i, Insn::Tlbi(Tlbi::Vmalls12e1is)))
            .expect("table TLBI");
        let make = t
            .iter()
            .rposition(|i| matches!(i, Insn::Store { new, .. } if new & 3 == 1))
            .expect("block make");
        let dcs: Vec<u64> = t[tlbi..make]
            .iter()
            .filter_map(|i| {
                if let Insn::DcCivac { va } = i {
                    Some(*va)
                } else {
                    None
                }
            })
            .collect();
        // The whole 2 MiB block, by cache line, and completed by a DSB ISH before the make.
        assert_eq!(dcs.first().copied(), Some(8 * M2));
        let line = dcs[1] - dcs[0];
        assert_eq!(dcs.len() as u64, M2 / line);
        assert!(matches!(t[make - 1], Insn::Dsb(DsbKind::Ish)));
    }

    #[test]
    fn checker_catches_block_installed_before_break_completed() {
        let (t, a, s2) = collapse_scenario(Attrs::DEVICE_RW, Fault::CollapseWithoutSync);
        // The walk result looks right...
        assert_eq!(s2.query(&a, Ipa(M2 + 5 * K4)).expect("mapped").level, 2);
        // ...but the trace shows the make over the broken entry before its TLBI completed.
        let v = check::check(&t);
        assert!(
            v.iter()
                .any(|v| v.invariant == 11 && v.what.contains("before its break")),
            "{}",
            check::report(&v)
        );
    }

    #[test]
    #[should_panic(expected = "break-before-make")]
    fn batch_refuses_make_before_sync() {
        let slot = core::sync::atomic::AtomicU64::new(0x4000_0003);
        // SAFETY: host test: the recording backend.
        let mut v = unsafe { crate::Vttbr::assume_loaded(1 << 48) };
        let mut b = barriers::pt::PtBatch::stage2(&mut v, 1 << 48);
        b.break_entry(&slot, 0, barriers::pt::Inval::Table { ia: 0 });
        b.make(&slot, 0x4000_0001);
    }

    /// Every descriptor store in `t`, as (address, old, new).
    fn stores(t: &[Insn]) -> Vec<(u64, u64, u64)> {
        t.iter()
            .filter_map(|i| match i {
                Insn::Store { addr, old, new, .. } => Some((*addr, *old, *new)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn set_state_changes_only_state_bits_without_tlbi() {
        use crate::desc::STATE_MASK;
        use crate::BlockSize;
        let mut a = HostAlloc::new();
        let mut s2 = Stage2::new(&mut a, 3, 40, true).expect("stage 2");
        // SAFETY: host test: the recording backend, one owner per test.
        let mut v = unsafe { crate::Vttbr::assume_loaded(s2.vttbr()) };
        s2.set_block_policy(BlockSize::Page4K);
        s2.map(
            &mut a,
            &mut v,
            Ipa(M2),
            Pa(M2),
            2 * M2,
            Attrs::RAM_RW,
            PageState::Owned,
        )
        .expect("map pages");
        s2.set_block_policy(BlockSize::Block2M);
        s2.map(
            &mut a,
            &mut v,
            Ipa(4 * M2),
            Pa(4 * M2),
            2 * M2,
            Attrs::RAM_RW,
            PageState::Owned,
        )
        .expect("map blocks");
        let state = |a: &HostAlloc, s2: &Stage2, ia: u64| s2.query(a, Ipa(ia)).expect("mapped");

        // Pages across the boundary of two level-3 tables, then one whole 2 MiB block: only the
        // state bits of those 9 leaves change, with no break, no TLBI, one trailing DSB ISHST.
        trace::clear();
        let (lo, n) = (2 * M2 - 3 * K4, 8);
        let st = s2
            .set_state(&mut a, &mut v, Ipa(lo), n * K4, PageState::SharedOwned)
            .expect("pages");
        let st2 = s2
            .set_state(&mut a, &mut v, Ipa(5 * M2), M2, PageState::SharedBorrowed)
            .expect("block");
        let t = trace::take();
        assert!(
            check::check(&t).is_empty(),
            "{}",
            check::report(&check::check(&t))
        );
        let w = stores(&t);
        assert_eq!(w.len(), 9);
        assert!(w
            .iter()
            .all(|(_, old, new)| (old ^ new) & !STATE_MASK == 0 && old != new));
        assert!(!t.iter().any(|i| matches!(i, Insn::Tlbi(_) | Insn::Isb)));
        for s in [st, st2] {
            assert_eq!((s.dsb, s.tlbi, s.isb), (1, 0, 0));
        }
        for p in 0..2 * M2 / K4 {
            let ia = M2 + p * K4;
            let want = if (lo..lo + n * K4).contains(&ia) {
                PageState::SharedOwned
            } else {
                PageState::Owned
            };
            assert_eq!(state(&a, &s2, ia).state, want, "page {ia:#x}");
        }
        assert_eq!(state(&a, &s2, 4 * M2).state, PageState::Owned);
        let b = state(&a, &s2, 5 * M2 + 7 * K4);
        assert_eq!((b.state, b.level), (PageState::SharedBorrowed, 2));

        // One page inside the other block: the block is split (break-before-make of the block
        // entry), and only that page changes state.
        trace::clear();
        v.record_state();
        s2.set_state(&mut a, &mut v, Ipa(4 * M2 + K4), K4, PageState::SharedOwned)
            .expect("split");
        let t = trace::take();
        assert!(
            check::check(&t).is_empty(),
            "{}",
            check::report(&check::check(&t))
        );
        for (ia, want) in [
            (4 * M2, PageState::Owned),
            (4 * M2 + K4, PageState::SharedOwned),
            (4 * M2 + 2 * K4, PageState::Owned),
        ] {
            let m = state(&a, &s2, ia);
            assert_eq!((m.state, m.level, m.pa), (want, 3, Pa(ia)));
        }
    }
}
