//! Stage-2 translation tables for one VM (or the host) and the VTCR_EL2/VTTBR_EL2 values.

use crate::addr::{Ipa, Pa, MAX_PA_BITS, PAGE_SIZE};
use crate::alloc::TableAlloc;
use crate::batch::BatchStats;
use crate::desc::{
    Attrs, Format, OwnerId, PageState, Stage2Format, OA_MASK, OWNER_MASK, OWNER_SHIFT, STATE_MASK,
    VALID,
};
use crate::walk::{size, BatchRegime, Fault, Op, Tables};
use crate::{BlockSize, Entry, Error, Mapping};
use aarch64_cpu::registers::VTCR_EL2;
use barriers::vttbr::Vttbr;

/// Start level and root size for a stage-2 IPA size, concatenating up to 16 start-level tables
/// so that as few levels as possible are walked (KVM `stage2_pgtable_levels`:
/// levels = (ipa_bits - 4 - 4) / 9 with a 4 KiB granule).
///
/// Returns `(start_level, root_entries, root_pages)`.
///
/// # Errors
///
/// [`Error::UnsupportedIpaSize`] outside 32..=48 bits.
pub fn stage2_geometry(ipa_bits: u32) -> Result<(u8, usize, usize), Error> {
    if !(32..=48).contains(&ipa_bits) {
        return Err(Error::UnsupportedIpaSize);
    }
    let levels = (ipa_bits - 8) / 9;
    let start = (4 - levels) as u8;
    let root_bits = ipa_bits - crate::walk::shift(start);
    let entries = 1usize << root_bits;
    let pages = entries.div_ceil(512);
    // R_SRKBC: at most 16 concatenated tables, and none at level 0. Holds for every size the
    // range check above admits (32..=48 bits: 1..=16 pages at level 1 or 0); checked in release
    // builds too, at VM creation only.
    assert!(pages <= 16 && (start > 0 || pages == 1));
    Ok((start, entries, pages))
}

/// PA size in bits for an `ID_AA64MMFR0_EL1.PARange` value (0..=6).
///
/// # Errors
///
/// [`Error::UnsupportedPaRange`] for reserved values.
pub const fn parange_bits(parange: u64) -> Result<u32, Error> {
    match parange {
        0 => Ok(32),
        1 => Ok(36),
        2 => Ok(40),
        3 => Ok(42),
        4 => Ok(44),
        5 => Ok(48),
        6 => Ok(52),
        _ => Err(Error::UnsupportedPaRange),
    }
}

/// Stage-2 tables of one VMID.
#[derive(Debug)]
pub struct Stage2 {
    tables: Tables<Stage2Format>,
    fault: Fault,
}

impl Stage2 {
    /// Allocates an empty stage 2 covering `ipa_bits` of IPA space.
    ///
    /// `fwb`: FEAT_S2FWB is present and HCR_EL2.FWB will be set; selects the forced
    /// write-back MemAttr encodings and drops D-cache maintenance.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedIpaSize`] unless 32 <= `ipa_bits` <= 48; [`Error::OutOfMemory`]
    /// if the (possibly concatenated) root cannot be allocated.
    pub fn new<A: TableAlloc>(
        alloc: &mut A,
        vmid: u16,
        ipa_bits: u32,
        fwb: bool,
    ) -> Result<Self, Error> {
        let (start_level, root_entries, root_pages) = stage2_geometry(ipa_bits)?;
        let root = alloc.alloc_tables(root_pages).ok_or(Error::OutOfMemory)?;
        Ok(Self {
            tables: Tables {
                root,
                root_pages,
                root_entries,
                start_level,
                ia_bits: ipa_bits,
                fmt: Stage2Format { fwb, vmid },
                min_leaf_level: 1,
                keep_tables: false,
            },
            fault: Fault::None,
        })
    }

    /// VMID of these tables.
    #[must_use]
    pub const fn vmid(&self) -> u16 {
        self.tables.fmt.vmid
    }

    /// Pages of the root table (concatenated tables).
    #[must_use]
    pub const fn root_pages(&self) -> usize {
        self.tables.root_pages
    }

    /// Physical address of the root table.
    #[must_use]
    pub const fn root(&self) -> Pa {
        self.tables.root
    }

    /// Largest leaf this stage 2 creates (default 1 GiB). Existing larger leaves are kept
    /// until an operation touches them partially.
    pub fn set_block_policy(&mut self, largest: BlockSize) {
        self.tables.min_leaf_level = largest.level();
    }

    /// Keeps the tables a change leaves uniform (`true`) rather than freeing them or
    /// collapsing them into blocks (the default). For a stage 2 whose pages change one at a
    /// time over and over (the host's, as guests share and unshare): each change then touches
    /// one entry instead of splitting a block and collapsing it again. The cost is the tables
    /// kept: at most one per 2 MiB mapped.
    pub fn set_keep_tables(&mut self, keep: bool) {
        self.tables.keep_tables = keep;
    }

    #[cfg(test)]
    pub(crate) fn inject_fault(&mut self, fault: Fault) {
        self.fault = fault;
    }

    fn check_range(&self, ipa: Ipa, size: u64) -> Result<(), Error> {
        if size == 0 || !ipa.is_aligned(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned);
        }
        match ipa.0.checked_add(size) {
            Some(end) if end <= 1u64 << self.tables.ia_bits => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }

    /// One walk of `op` over `[ipa, ipa + size)` as one batch under these tables' VMID (no
    /// cleaning before the makes).
    fn run<A: TableAlloc>(
        &self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        op: Op,
        ipa: Ipa,
        size: u64,
    ) -> Result<BatchStats, Error> {
        let regime = BatchRegime::Stage2(vttbr, self.vttbr());
        self.tables
            .run(alloc, regime, op, ipa.0, size, self.fault, None)
    }

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)` with `attrs`, tagging every page with
    /// `state`. Existing mappings in the range are replaced (with break-before-make where the
    /// architecture requires it); 1 GiB and 2 MiB blocks are used wherever alignment and the
    /// block policy allow, and uniform tables are collapsed into blocks.
    ///
    /// # Errors
    ///
    /// [`Error::Unaligned`] (addresses or size not page-aligned, or size 0),
    /// [`Error::OutOfRange`] (IPA beyond the IPA size, PA beyond 48 bits),
    /// [`Error::OutOfMemory`] (a table could not be allocated: the range is then partly
    /// mapped, every page either old or new, and the tables are consistent).
    #[allow(
        clippy::too_many_arguments,
        reason = "the two contexts (table memory, this CPU's VTTBR) plus the mapping's five facts"
    )]
    pub fn map<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        ipa: Ipa,
        pa: Pa,
        size: u64,
        attrs: Attrs,
        state: PageState,
    ) -> Result<BatchStats, Error> {
        self.map_with(alloc, vttbr, ipa, pa, size, attrs, state, true)
    }

    /// [`Stage2::map`] of memory the caller has just cleaned and invalidated to PoC
    /// (`[pa, pa + size)`, e.g. scrubbed): without FEAT_S2FWB `map` would clean it again
    /// before the makes; this does not.
    ///
    /// # Errors
    ///
    /// As [`Stage2::map`].
    #[allow(
        clippy::too_many_arguments,
        reason = "the two contexts (table memory, this CPU's VTTBR) plus the mapping's five facts"
    )]
    pub fn map_cleaned<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        ipa: Ipa,
        pa: Pa,
        size: u64,
        attrs: Attrs,
        state: PageState,
    ) -> Result<BatchStats, Error> {
        self.map_with(alloc, vttbr, ipa, pa, size, attrs, state, false)
    }

    /// [`Stage2::map`], with the no-FWB pre-clean of the memory (`clean`) or
    /// without it ([`Stage2::map_cleaned`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "map's arguments plus whether to clean"
    )]
    fn map_with<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        ipa: Ipa,
        pa: Pa,
        size: u64,
        attrs: Attrs,
        state: PageState,
        clean: bool,
    ) -> Result<BatchStats, Error> {
        self.check_range(ipa, size)?;
        if !pa.is_aligned(PAGE_SIZE) {
            return Err(Error::Unaligned);
        }
        match pa.0.checked_add(size) {
            Some(end) if end <= 1u64 << MAX_PA_BITS => {}
            _ => return Err(Error::OutOfRange),
        }
        let bits = self.tables.fmt.leaf_bits(attrs, state)?;
        let pre_clean =
            (clean && self.tables.fmt.needs_cmo(bits)).then(|| (alloc.cmo_va(pa).0, size));
        let op = Op::Map {
            delta: pa.0.wrapping_sub(ipa.0),
            bits,
        };
        let batch = BatchRegime::Stage2(vttbr, self.vttbr());
        self.tables
            .run(alloc, batch, op, ipa.0, size, self.fault, pre_clean)
    }

    /// Unmaps `[ipa, ipa + size)` (plain invalid entries; annotations in the range are
    /// dropped). Tables that become empty are freed after their invalidation completed.
    ///
    /// # Errors
    ///
    /// [`Error::Unaligned`], [`Error::OutOfRange`]; [`Error::OutOfMemory`] when a partly
    /// covered annotated block needs a table.
    pub fn unmap<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        ipa: Ipa,
        size: u64,
    ) -> Result<BatchStats, Error> {
        self.set_annotation(alloc, vttbr, ipa, size, OwnerId(0))
    }

    /// Unmaps `[ipa, ipa + size)` and stores `owner` in the invalid entries ("owned by
    /// component N"; `OwnerId(0)` is a plain unmap). Query with [`Stage2::annotation`].
    ///
    /// # Errors
    ///
    /// As [`Stage2::unmap`].
    pub fn set_annotation<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        ipa: Ipa,
        size: u64,
        owner: OwnerId,
    ) -> Result<BatchStats, Error> {
        self.check_range(ipa, size)?;
        let op = Op::Unmap {
            inval: owner.invalid_desc(),
        };
        self.run(alloc, vttbr, op, ipa, size)
    }

    /// Sets the page state (software bits only, no TLBI) of every mapped page in the range;
    /// unmapped pages are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Unaligned`], [`Error::OutOfRange`]; [`Error::OutOfMemory`] when a partly
    /// covered block must be split.
    pub fn set_state<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        vttbr: &mut Vttbr,
        ipa: Ipa,
        size: u64,
        state: PageState,
    ) -> Result<BatchStats, Error> {
        self.check_range(ipa, size)?;
        let op = Op::Modify {
            mask: STATE_MASK,
            bits: state.bits(),
        };
        self.run(alloc, vttbr, op, ipa, size)
    }

    /// Translation of the page containing `ipa`, or `None` if it is unmapped.
    #[must_use]
    pub fn query<A: TableAlloc>(&self, alloc: &A, ipa: Ipa) -> Option<Mapping> {
        let (d, level) = self.tables.lookup(alloc, ipa.0)?;
        if d & VALID == 0 {
            return None;
        }
        let off = ipa.0 & (size(level) - 1) & !(PAGE_SIZE - 1);
        Some(Mapping {
            pa: Pa((d & OA_MASK) + off),
            attrs: self.tables.fmt.decode(d),
            state: PageState::from_desc(d),
            level,
        })
    }

    /// [`Self::query`], and the size of the naturally aligned range around `ipa` that the
    /// same entry translates (a page, a block, or an unmapped entry's whole range): every
    /// page in it has the same state. `None` past the input range. One walk for a range that
    /// a per-page [`Self::query`] would walk once per page.
    #[must_use]
    pub fn query_span<A: TableAlloc>(&self, alloc: &A, ipa: Ipa) -> Option<(Option<Mapping>, u64)> {
        let (_, level) = self.tables.lookup(alloc, ipa.0)?;
        Some((self.query(alloc, ipa), size(level)))
    }

    /// Owner annotation of an unmapped `ipa` (`None` when mapped or not annotated).
    #[must_use]
    pub fn annotation<A: TableAlloc>(&self, alloc: &A, ipa: Ipa) -> Option<OwnerId> {
        let (d, _) = self.tables.lookup(alloc, ipa.0)?;
        let owner = ((d & OWNER_MASK) >> OWNER_SHIFT) as u16;
        (d & VALID == 0 && owner != 0).then_some(OwnerId(owner))
    }

    /// Calls `f(ipa, size, entry)` for every leaf and every annotated invalid entry, in IPA
    /// order (`size` is the entry's block size). For tests, debugging and hyp-core's audits.
    pub fn for_each_entry<A: TableAlloc>(&self, alloc: &A, mut f: impl FnMut(Ipa, u64, Entry)) {
        let fmt = self.tables.fmt;
        self.tables.visit(alloc, &mut |ia, level, d| {
            let e = if d & VALID != 0 {
                Entry::Mapped(Mapping {
                    pa: Pa(d & OA_MASK),
                    attrs: fmt.decode(d),
                    state: PageState::from_desc(d),
                    level,
                })
            } else {
                Entry::Annotated(OwnerId(((d & OWNER_MASK) >> OWNER_SHIFT) as u16))
            };
            f(Ipa(ia), size(level), e);
        });
    }

    /// VTTBR_EL2: BADDR = root PA (aligned to the concatenated root size), VMID in \[63:48\]
    /// (\[55:48\] is enough for 8-bit VMIDs), CnP = 0.
    #[must_use]
    pub const fn vttbr(&self) -> u64 {
        self.tables.root.0 | ((self.tables.fmt.vmid as u64) << 48)
    }

    /// VTCR_EL2 for these tables given `ID_AA64MMFR0_EL1.PARange`.
    ///
    /// T0SZ = 64 - IPA bits; SL0 from the start level (4 KiB granule: 0b00 = level 2,
    /// 0b01 = level 1, 0b10 = level 0); IRGN0/ORGN0 = write-back write-allocate, SH0 = inner
    /// shareable (table walks are cacheable and coherent); TG0 = 4 KiB; PS = the PA size
    /// (capped at 48 bits: no FEAT_LPA2); VS = `vmid16` (16-bit VMIDs, which need
    /// FEAT_VMID16: VTCR_EL2 is one register for every stage 2, so VS is the CPU's VMID width,
    /// not this table's VMID); bit 31 RES1.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedPaRange`] for a reserved PARange or when the IPA size exceeds the
    /// implemented PA size (the configuration would be CONSTRAINED UNPREDICTABLE);
    /// [`Error::OutOfRange`] when this table's VMID does not fit 8 bits and `vmid16` is false
    /// (the TLBs would alias it with another VMID).
    pub fn vtcr(&self, parange_field: u64, vmid16: bool) -> Result<u64, Error> {
        if self.tables.fmt.vmid > 0xff && !vmid16 {
            return Err(Error::OutOfRange);
        }
        let pa_bits = parange_bits(parange_field)?;
        let ipa_bits = self.tables.ia_bits;
        if ipa_bits > pa_bits.min(MAX_PA_BITS) {
            return Err(Error::UnsupportedPaRange);
        }
        let ps = parange_field.min(5);
        let t0sz = u64::from(64 - ipa_bits);
        let sl0 = match self.tables.start_level {
            2 => VTCR_EL2::SL0::Granule4KBLevel2,
            1 => VTCR_EL2::SL0::Granule4KBLevel1,
            0 => VTCR_EL2::SL0::Granule4KBLevel0,
            _ => unreachable!("s2mm: stage-2 start level is 0..=2"),
        };
        // Concatenation check (Arm ARM, VTCR_EL2.SL0 / T0SZ): the start level resolves
        // between 1 and 13 bits (at most 16 concatenated tables), and level 0 cannot be
        // concatenated.
        let root_bits = ipa_bits - crate::walk::shift(self.tables.start_level);
        if !(1..=13).contains(&root_bits) || (self.tables.start_level == 0 && root_bits > 9) {
            return Err(Error::UnsupportedIpaSize);
        }
        let vs = if vmid16 {
            VTCR_EL2::VS::Bits16
        } else {
            VTCR_EL2::VS::Bits8
        };
        Ok((VTCR_EL2::T0SZ.val(t0sz)
            + sl0
            + VTCR_EL2::IRGN0::NormalWBRAWA
            + VTCR_EL2::ORGN0::NormalWBRAWA
            + VTCR_EL2::SH0::Inner
            + VTCR_EL2::TG0::Granule4KB
            + VTCR_EL2::PS.val(ps)
            + vs
            + VTCR_EL2::RES1::SET)
            .value)
    }

    /// Frees every table, root included, after breaking all root entries and completing a
    /// VMID-wide invalidation. The caller must no longer have this root in VTTBR_EL2 on any PE.
    pub fn destroy<A: TableAlloc>(self, alloc: &mut A, vttbr: &mut Vttbr) -> BatchStats {
        let batch = BatchRegime::Stage2(vttbr, self.vttbr());
        self.tables.destroy(alloc, batch)
    }
}
