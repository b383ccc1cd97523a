//! Translation-table update batches: every DSB, TLBI and ISB a set of descriptor updates needs,
//! each issued exactly once, in the order of ARM-RULES.md section 2.2 (R_DDMVT, D8.17.6.1).
//!
//! A [`PtBatch`] is opened for one translation regime. Descriptor stores go through it:
//!
//! * [`PtBatch::break_entry`] / [`PtBatch::restrict`] store at once and *queue* a TLBI;
//! * [`PtBatch::sync`] completes every queued break: `DSB ISHST` (the invalid descriptors reach the
//!   walkers, R_DDMVT), the TLBIs, `DSB ISH` (completes them, R_PSMWS), and for stage 2 after
//!   `TLBI IPAS2E1IS` the stage-1 flush `TLBI VMALLE1IS; DSB ISH` (D8.17.6.1);
//! * [`PtBatch::make`] stores a new valid descriptor (invalid→valid needs no TLBI, R_XCLRD) and
//!   queues the trailing `DSB ISHST` (stage 2: the next ERET is the CSE) or `DSB ISHST; ISB`
//!   (EL2 stage 1: EL2 itself is the consumer);
//! * [`PtBatch::finish`] issues whatever is still owed, once.
//!
//! Break-before-make is enforced: a `make` over a slot broken in this batch before `sync()`
//! panics (a hypervisor bug), and so does `free` while breaks are unsynchronised (invariant 15).
//!
//! Seed 002 (Linux 5fdd05efa1cd, batching the barriers of many PTE updates) is the batch itself:
//! a multi-page operation (donate, destroy, share of a range) is one walk and one batch, so it
//! owes one `DSB ISHST` for all its stores, not one per page.
//!
//! **Stage-2 TLBIs under the right VMID.** A stage-2 batch holds this CPU's
//! [`Vttbr`](crate::vttbr::Vttbr) mutably for its whole life. When it has TLBIs to issue it makes
//! VTTBR_EL2 hold the batch's VMID (switching and restoring around them if another is loaded), so
//! no caller can issue stage-2 maintenance under another VM's VMID (ARM-RULES.md 2.2 step 3).
//!
//! **A batch cannot be lost.** [`PtBatch::finish`] consumes the batch; the type is `#[must_use]`,
//! and dropping an unfinished batch (early return, `?`) panics in every build, release included:
//! its TLBIs and trailing barriers would otherwise silently never be issued. (`mem::forget`
//! escapes any drop guard; the trace checker's end-of-trace rule catches that in tests.)

use crate::insn::{emit, DsbKind, Tlbi};
use crate::regs::vttbr_vmid;
use crate::vttbr::Vttbr;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// **Device TLBs over a CPU stage 2.** An SMMU that translates devices through the same
/// stage-2 tables as the CPUs (the host's, pKVM's hypervisor-owned IOMMU model) caches their
/// entries in TLBs that `TLBI` does not reach (the hypervisor sets SMMU_CR2.PTM: no broadcast
/// maintenance). [`set_device_tlb_hook`] registers the function that invalidates them; every
/// stage-2 [`PtBatch::sync`] calls it with the batch's VMID right after its own TLBIs completed
/// (step 5), before any make that follows, so no device keeps a translation the CPUs lost.
static DEVICE_TLB_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Registers the device-TLB invalidation of [`DEVICE_TLB_HOOK`]: `f(vmid)` must invalidate
/// every device TLB entry of stage-2 VMID `vmid` and return only once that is complete.
pub fn set_device_tlb_hook(f: fn(u16)) {
    DEVICE_TLB_HOOK.store(f as usize, Ordering::Release);
}

fn device_tlb_sync(vmid: u16) {
    let h = DEVICE_TLB_HOOK.load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `set_device_tlb_hook` stores here, and it stores an `fn(u16)`.
        let f = unsafe { core::mem::transmute::<usize, fn(u16)>(h) };
        f(vmid);
    }
}

/// The translation regime whose tables a batch edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    /// Stage 2 of the EL1&0 regime for `vmid`. VTTBR_EL2 must hold `vmid` (and have been
    /// synchronised) when TLBIs are issued: the caller's obligation (ARM-RULES.md 2.2 step 3).
    Stage2 {
        /// The VMID of the tables.
        vmid: u16,
    },
    /// The hypervisor's own EL2 stage-1 regime.
    El2,
}

/// What a break or restriction has to invalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inval {
    /// An old leaf (page or block) mapping `ia` at `level`.
    Leaf {
        /// Input address (IPA for stage 2, VA for EL2).
        ia: u64,
        /// Level of the old leaf (TTL hint).
        level: u8,
    },
    /// An old table entry covering `ia`: walk caches may be indexed by IA or PA (R_ZYZYK), so the
    /// whole VMID (stage 2) or regime (EL2) is invalidated.
    Table {
        /// Input address covered by the table.
        ia: u64,
    },
}

/// Instructions one batch emitted.
///
/// Aligned to 8: with 4-byte alignment the hypervisor's build (strict
/// alignment) copied these 20 bytes with a call to `memcpy`, about 100
/// instructions per page-table operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(align(8))]
pub struct BatchStats {
    /// DSBs.
    pub dsb: u32,
    /// TLBIs.
    pub tlbi: u32,
    /// ISBs.
    pub isb: u32,
    /// DC operations.
    pub dc: u32,
    /// Times VTTBR_EL2 was switched to the batch's VMID and back around its TLBIs.
    pub vmid_switches: u32,
}

/// Barriers issued by every finished batch since boot, machine wide: DSB, TLBI, ISB, DC, VMID
/// switches (for the hypervisor's statistics and the bench; a few relaxed additions per batch).
static TOTALS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The sum of every finished batch's [`BatchStats`] since boot (on the host: every thread's),
/// in 64 bits: `[dsb, tlbi, isb, dc, vmid_switches]`.
pub fn totals() -> [u64; 5] {
    core::array::from_fn(|i| TOTALS[i].load(Ordering::Relaxed))
}

/// Queue capacity, and the default leaf-TLBI limit (Linux `MAX_TLBI_OPS` = 512: beyond one
/// table's worth of pages a VMID-wide invalidation is cheaper).
pub const MAX_QUEUED: usize = 512;

/// A queued break or restriction, packed in 16 bytes (the queue is 8 KiB): the descriptor address,
/// and the page-aligned input address with flags in bits [11:0].
#[derive(Clone, Copy)]
struct Queued {
    slot: usize,
    packed: u64,
}

const Q_LEVEL: u64 = 0x3;
const Q_TABLE: u64 = 1 << 2;
const Q_BREAK: u64 = 1 << 3;

impl Queued {
    fn new(slot: usize, inv: Inval, is_break: bool) -> Self {
        // Release check: the level becomes the TLBI's TTL hint, and a wrong hint may leave the
        // real entry in the TLB (D8.17.4). One compare per queued invalidation.
        assert!(
            !matches!(inv, Inval::Leaf { level, .. } if level > 3),
            "Inval::Leaf level must be 0..=3"
        );
        let brk = if is_break { Q_BREAK } else { 0 };
        let packed = match inv {
            Inval::Leaf { ia, level } => (ia & !0xfff) | u64::from(level) & Q_LEVEL | brk,
            Inval::Table { ia } => (ia & !0xfff) | Q_TABLE | brk,
        };
        Queued { slot, packed }
    }

    fn is_break(self) -> bool {
        self.packed & Q_BREAK != 0
    }

    fn inv(self) -> Inval {
        let ia = self.packed & !0xfff;
        if self.packed & Q_TABLE != 0 {
            Inval::Table { ia }
        } else {
            Inval::Leaf {
                ia,
                level: (self.packed & Q_LEVEL) as u8,
            }
        }
    }
}

/// A translation-table update batch. See the [module documentation](self).
#[must_use = "a PtBatch owes barriers: call finish()"]
pub struct PtBatch<'v> {
    regime: Regime,
    limit: usize,
    queue: [MaybeUninit<Queued>; MAX_QUEUED],
    len: usize,
    /// A table invalidation is queued, or more leaves than `limit`: invalidate VMID/regime-wide.
    wide: bool,
    /// Address range of queued breaks (fast reject for the make check).
    lo: usize,
    hi: usize,
    /// A descriptor store not yet followed by an Inner Shareable DSB (published to walkers).
    store_owed: bool,
    /// Something since the last ISB needs one before EL2 relies on it (EL2 regime only).
    isb_owed: bool,
    /// Stage 2: this CPU's VTTBR owner and the VTTBR value (root and VMID) of the tables.
    vttbr: Option<(&'v mut Vttbr, u64)>,
    stats: BatchStats,
    done: bool,
}

impl core::fmt::Debug for PtBatch<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PtBatch")
            .field("regime", &self.regime)
            .field("queued", &self.len)
            .field("wide", &self.wide)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'v> PtBatch<'v> {
    /// Opens a batch for the stage-2 tables whose VTTBR_EL2 value (root and VMID) is `target`.
    /// Emits nothing; its TLBIs are issued under `target`'s VMID whatever `vttbr` holds.
    pub fn stage2(vttbr: &'v mut Vttbr, target: u64) -> Self {
        Self::new(
            Regime::Stage2 {
                vmid: vttbr_vmid(target),
            },
            Some((vttbr, target)),
        )
    }

    /// Opens a batch for the hypervisor's own EL2 stage-1 tables. Emits nothing.
    pub fn el2() -> Self {
        Self::new(Regime::El2, None)
    }

    fn new(regime: Regime, vttbr: Option<(&'v mut Vttbr, u64)>) -> Self {
        PtBatch {
            regime,
            limit: MAX_QUEUED,
            queue: [const { MaybeUninit::uninit() }; MAX_QUEUED],
            len: 0,
            wide: false,
            lo: usize::MAX,
            hi: 0,
            store_owed: false,
            isb_owed: false,
            vttbr,
            stats: BatchStats::default(),
            done: false,
        }
    }

    /// Sets the number of queued leaf TLBIs above which the batch invalidates VMID-wide
    /// (`VMALLS12E1IS` for stage 2, `ALLE2IS` for EL2) instead. Clamped to [`MAX_QUEUED`].
    pub fn with_tlbi_limit(mut self, max_leaf_tlbis: usize) -> Self {
        self.limit = max_leaf_tlbis.min(MAX_QUEUED);
        self
    }

    /// Stores a descriptor that needs no TLBI: invalid→valid, a permission relaxation, or a
    /// change of software bits only (ARM-RULES.md 2.1 exemptions, R_XCLRD). Queues the trailing
    /// `DSB ISHST` (+ `ISB` for EL2).
    ///
    /// # Panics
    ///
    /// If `slot` was broken in this batch and the break has not been completed by [`Self::sync`]:
    /// break-before-make requires the TLBI to complete before the new entry is stored (R_DDMVT).
    pub fn make(&mut self, slot: &AtomicU64, new: u64) {
        let addr = slot as *const AtomicU64 as usize;
        if self.len != 0
            && addr >= self.lo
            && addr <= self.hi
            && self.queued().any(|q| q.is_break() && q.slot == addr)
        {
            panic!(
                "PtBatch::make over slot {addr:#x} broken in this batch before sync(): \
                 break-before-make requires the break's TLBI to complete first (R_DDMVT)"
            );
        }
        emit::store(slot, new, None, None);
        self.store_owed = true;
        if self.regime == Regime::El2 {
            self.isb_owed = true;
        }
    }

    /// Break: stores `invalid` (bit 0 clear; may carry software annotation bits) and queues the
    /// invalidation `inv` (step 1 of ARM-RULES.md 2.2).
    ///
    /// # Panics
    ///
    /// If `invalid` has bit 0 (valid) set.
    pub fn break_entry(&mut self, slot: &AtomicU64, invalid: u64, inv: Inval) {
        assert!(
            invalid & 1 == 0,
            "PtBatch::break_entry: descriptor {invalid:#x} is valid (bit 0 set)"
        );
        self.store_and_queue(slot, invalid, inv, true);
    }

    /// Permission restriction (e.g. RW→RO for dirty logging): stores `new` and queues the TLBI; no
    /// break-before-make is needed (2.1 exemptions) but the TLBI must complete before the
    /// hypervisor relies on it (invariant 14).
    pub fn restrict(&mut self, slot: &AtomicU64, new: u64, inv: Inval) {
        self.store_and_queue(slot, new, inv, false);
    }

    fn store_and_queue(&mut self, slot: &AtomicU64, new: u64, inv: Inval, is_break: bool) {
        let (ia, level) = match inv {
            Inval::Leaf { ia, level } => (ia, Some(level)),
            Inval::Table { ia } => (ia, None),
        };
        if self.len == MAX_QUEUED {
            // The queue is full: complete what is queued now, before this store, rather than
            // lose track of broken slots. Syncing after the store would leave its DSB ISHST with
            // nothing queued to order (invariant 23).
            self.sync();
        }
        emit::store(slot, new, Some(ia), level);
        self.store_owed = true;
        if self.wide && !is_break {
            // The batch already ends in a VMID-wide (or ALLE2IS) flush, which covers this
            // restriction. A restriction is not a break, so no later make depends on it, and
            // nothing needs to be tracked (otherwise restricting 1 GiB of 4 KiB pages would
            // sync once per MAX_QUEUED entries).
            return;
        }
        let addr = slot as *const AtomicU64 as usize;
        let q = Queued::new(addr, inv, is_break);
        if self.len != 0 && addr >= self.lo && addr <= self.hi {
            // The same descriptor queued again with the same invalidation (e.g. restrict, then
            // break): one TLBI covers both (invariant 23).
            let same = |e: &Queued| e.slot == addr && (e.packed | Q_BREAK) == (q.packed | Q_BREAK);
            if let Some(i) = (0..self.len).find(|&i| {
                // SAFETY: i < len, initialised below before len was raised.
                same(unsafe { self.queue[i].assume_init_ref() })
            }) {
                // SAFETY: as above.
                unsafe { self.queue[i].assume_init_mut() }.packed |= q.packed & Q_BREAK;
                return;
            }
        }
        self.queue[self.len] = MaybeUninit::new(q);
        self.len += 1;
        self.lo = self.lo.min(addr);
        self.hi = self.hi.max(addr);
        if matches!(inv, Inval::Table { .. }) || self.len > self.limit {
            self.wide = true;
        }
    }

    fn queued(&self) -> impl Iterator<Item = Queued> + '_ {
        self.queue[..self.len].iter().map(|q| {
            // SAFETY: entries 0..len were initialised by store_and_queue before len was raised.
            unsafe { q.assume_init() }
        })
    }

    fn dsb(&mut self, kind: DsbKind) {
        emit::dsb(kind);
        if kind.covers_ish_stores() {
            // Any Inner Shareable DSB publishes the stores before it: no trailing DSB owed for them.
            self.store_owed = false;
        }
        self.stats.dsb += 1;
    }

    fn tlbi(&mut self, op: Tlbi) {
        emit::tlbi(op);
        self.stats.tlbi += 1;
    }

    fn isb(&mut self) {
        emit::isb();
        self.stats.isb += 1;
    }

    /// Completes every queued break and restriction now (ARM-RULES.md 2.2 steps 2–6). No-op if
    /// nothing is queued. Afterwards, makes over the broken slots are legal.
    pub fn sync(&mut self) {
        if self.len == 0 {
            return;
        }
        // R_DDMVT / 2.2 step 2: the invalid descriptors must be visible to every walker before the
        // TLBI, or a walk could refill the TLB from the old entry after it. This DSB also covers
        // any make stored before it.
        // Skipped when an Inner Shareable DSB (e.g. after clean_to_poc) already followed every store.
        if self.store_owed {
            self.dsb(DsbKind::Ishst);
        }
        let wide = self.wide;
        let n = self.len;
        match self.regime {
            Regime::Stage2 { .. } => {
                // 2.2 step 3: the TLBIs act on the VMID in VTTBR_EL2; make it the batch's.
                let (vttbr, target) = self
                    .vttbr
                    .as_mut()
                    .expect("a stage-2 batch is opened with its VTTBR (PtBatch::stage2)");
                let (restore, isb) = vttbr.enter_vmid(*target);
                self.stats.vmid_switches += u32::from(restore.is_some());
                self.stats.isb += u32::from(isb);
                if wide {
                    // 2.2 step 4: an old table (walk caches, R_ZYZYK) or more leaves than the
                    // limit: all stage-1 and stage-2 entries of the VMID.
                    self.tlbi(Tlbi::Vmalls12e1is);
                } else {
                    for i in 0..n {
                        // SAFETY: i < len, initialised by store_and_queue.
                        let q = unsafe { self.queue[i].assume_init() };
                        if let Inval::Leaf { ia, level } = q.inv() {
                            // 2.2 step 4: the old leaf, with its level as TTL hint.
                            self.tlbi(Tlbi::Ipas2e1is {
                                ipa: ia,
                                level: Some(level),
                            });
                        }
                    }
                }
                // 2.2 step 5 (R_PSMWS): completes the TLBIs; must precede the stage-1 flush so no
                // PE refills a combined S1+S2 entry from the old stage 2.
                self.dsb(DsbKind::Ish);
                // The same for device TLBs over this stage 2 (an SMMU), before any make.
                if let Regime::Stage2 { vmid } = self.regime {
                    device_tlb_sync(vmid);
                }
                if !wide {
                    // D8.17.6.1 / 2.2 step 6: IPAS2E1IS leaves combined S1+S2 entries; flush
                    // stage 1 of the VMID (not needed after VMALLS12E1IS).
                    self.tlbi(Tlbi::Vmalle1is);
                    // Completes the stage-1 flush before the makes that follow.
                    self.dsb(DsbKind::Ish);
                }
                if let Some((vttbr, _)) = self.vttbr.as_mut() {
                    vttbr.exit_vmid(restore);
                }
            }
            Regime::El2 => {
                if wide {
                    self.tlbi(Tlbi::Alle2is);
                } else {
                    for i in 0..n {
                        // SAFETY: i < len, initialised by store_and_queue.
                        let q = unsafe { self.queue[i].assume_init() };
                        if let Inval::Leaf { ia, .. } = q.inv() {
                            self.tlbi(Tlbi::Vae2is { va: ia });
                        }
                    }
                }
                // R_PSMWS: completes the TLBIs. EL2 relies on the result: ISB owed (2.2 step 7).
                self.dsb(DsbKind::Ish);
                self.isb_owed = true;
            }
        }
        self.len = 0;
        self.wide = false;
        self.lo = usize::MAX;
        self.hi = 0;
    }

    /// Records that the page or table at `pa` is released.
    ///
    /// # Panics
    ///
    /// If breaks are queued but not synchronised: a detached page or table must not be reused
    /// before its TLBI completed (invariant 15).
    pub fn free(&mut self, pa: u64) {
        assert!(
            self.len == 0,
            "PtBatch::free({pa:#x}) with {} unsynchronised break(s): call sync() first (invariant 15)",
            self.len
        );
        emit::free(pa);
    }

    /// Cleans and invalidates `[va, va + len)` to the Point of Coherency, by data-cache line, then
    /// `DSB ISH` (ARM-RULES.md 2.2 step 8, section 3: a guest with its MMU off must not see stale
    /// lines). No-op for `len == 0`.
    pub fn clean_to_poc(&mut self, va: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.stats.dc += crate::maint::dc_civac_range(va, len);
        // Completes the cache maintenance before the make that exposes the memory (2.2 step 8).
        self.dsb(DsbKind::Ish);
    }

    fn trailing(&mut self) {
        if self.store_owed {
            // 2.2 step 9 / R_XCLRD: the new descriptors reach the walkers. Stage 2: the ERET into
            // the guest is the CSE. EL2: ISB below.
            self.dsb(DsbKind::Ishst);
            self.store_owed = false;
        }
        if self.isb_owed {
            // EL2 uses its own new mappings: discard speculative "invalid translation" results in
            // this PE's pipeline (2.2 invalid→valid, Linux emit_pte_barriers; K11.5.3.2).
            self.isb();
            self.isb_owed = false;
        }
    }

    /// Completes the batch: [`Self::sync`] if needed, then the trailing `DSB ISHST` (stage 2,
    /// consumed by the next ERET) or `DSB ISHST; ISB` (EL2). Each obligation is issued once and
    /// only if something owes it.
    pub fn finish(mut self) -> BatchStats {
        self.complete()
    }

    /// Lends the batch to `f`, then finishes it where it is: what [`Self::finish`] does, without
    /// moving the batch. A batch is ~8.3 KiB (its queue), and passing it by value to `finish`
    /// once it has been borrowed is a call to `memcpy` of that size, which the compiler cannot
    /// elide; a one-page stage-2 fault spent most of its instructions there. `f` cannot keep,
    /// finish or lose the batch: it only has `&mut`.
    #[inline]
    pub fn finish_after<R>(mut self, f: impl FnOnce(&mut Self) -> R) -> (R, BatchStats) {
        let r = f(&mut self);
        (r, self.complete())
    }

    fn complete(&mut self) -> BatchStats {
        self.sync();
        self.trailing();
        self.done = true;
        let s = self.stats;
        for (i, n) in [s.dsb, s.tlbi, s.isb, s.dc, s.vmid_switches]
            .into_iter()
            .enumerate()
        {
            if n != 0 {
                TOTALS[i].fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        s
    }
}

impl Drop for PtBatch<'_> {
    /// The drop guard stays in release builds: an unfinished batch has stored descriptors whose
    /// TLBIs or trailing DSB were never issued, so other CPUs may keep stale translations (a
    /// hypervisor bug, never the result of guest or host input). Stopping loudly beats running on.
    fn drop(&mut self) {
        #[cfg(not(all(barriers_hw, not(test))))]
        if std::thread::panicking() {
            return;
        }
        if !self.done {
            panic!("PtBatch dropped without finish(): its barriers were never issued");
        }
    }
}
