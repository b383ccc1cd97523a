//! The hypervisor's own EL2 stage-1 tables (HCR_EL2.E2H = 0), built by the same walker with
//! the EL2 descriptor format, and the TCR_EL2 / MAIR_EL2 values.

use crate::addr::{Pa, Va, MAX_PA_BITS, PAGE_SIZE};
use crate::alloc::TableAlloc;
use crate::batch::BatchStats;
use crate::desc::{Attrs, El2Format, Format, PageState, OA_MASK, VALID};
use crate::stage2::parange_bits;
use crate::walk::{shift, size, BatchRegime, Fault, Op, Tables};
use crate::{Error, Mapping};
use aarch64_cpu::registers::TCR_EL2;

// `aarch64-cpu` 11.2 defines TCR_EL2's E2H = 0 fields but not its RES1 bits.
/// TCR_EL2 RES1 bits (E2H = 0): 31 and 23.
const TCR_EL2_RES1: u64 = (1 << 31) | (1 << 23);

/// EL2 stage-1 tables.
///
/// Changes that need break-before-make on a live EL2 mapping (splitting a block, changing an
/// output address or memory type) leave the range briefly unmapped *for EL2 itself*: never
/// apply them to memory EL2 touches during the call (its code, stack, these tables). Mapping
/// new ranges and unmapping have no such window.
#[derive(Debug)]
pub struct El2Stage1 {
    tables: Tables<El2Format>,
}

impl El2Stage1 {
    /// Allocates empty tables covering `va_bits` of VA (TCR_EL2.T0SZ = 64 - `va_bits`).
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedIpaSize`] unless 25 <= `va_bits` <= 48; [`Error::OutOfMemory`].
    pub fn new<A: TableAlloc>(alloc: &mut A, va_bits: u32) -> Result<Self, Error> {
        if !(25..=48).contains(&va_bits) {
            return Err(Error::UnsupportedIpaSize);
        }
        // Stage 1 has no concatenation: start at the level whose table covers the rest.
        let levels = (va_bits - 12).div_ceil(9);
        let start_level = (4 - levels) as u8;
        let root_entries = 1usize << (va_bits - shift(start_level));
        let root = alloc.alloc_table().ok_or(Error::OutOfMemory)?;
        Ok(Self {
            tables: Tables {
                root,
                root_pages: 1,
                root_entries,
                start_level,
                ia_bits: va_bits,
                fmt: El2Format,
                min_leaf_level: 1,
                keep_tables: false,
            },
        })
    }

    fn check(&self, va: Va, size: u64) -> Result<(), Error> {
        if size == 0 || !va.is_aligned(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned);
        }
        match va.0.checked_add(size) {
            Some(end) if end <= 1u64 << self.tables.ia_bits => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }

    /// Maps `[va, va + size)` to `[pa, pa + size)`. `attrs.perms` must be RW, RX or RO
    /// (W^X); device memory must not be executable. The batch ends with DSB ISHST + ISB,
    /// since EL2 itself consumes the mapping (§2.2 "Invalid→valid", KVM `kvm_pgtable_hyp_map`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAttrs`], [`Error::Unaligned`], [`Error::OutOfRange`],
    /// [`Error::OutOfMemory`].
    pub fn map<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        va: Va,
        pa: Pa,
        size: u64,
        attrs: Attrs,
    ) -> Result<BatchStats, Error> {
        self.map_state(alloc, va, pa, size, attrs, PageState::Owned)
    }

    /// [`El2Stage1::map`] with an explicit page state (e.g. `SharedBorrowed` for a page the
    /// host shared with the hypervisor).
    ///
    /// # Errors
    ///
    /// As [`El2Stage1::map`].
    pub fn map_state<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        va: Va,
        pa: Pa,
        size: u64,
        attrs: Attrs,
        state: PageState,
    ) -> Result<BatchStats, Error> {
        self.check(va, size)?;
        if !pa.is_aligned(PAGE_SIZE)
            || pa
                .0
                .checked_add(size)
                .is_none_or(|e| e > 1u64 << MAX_PA_BITS)
        {
            return Err(Error::OutOfRange);
        }
        let bits = self.tables.fmt.leaf_bits(attrs, state)?;
        let op = Op::Map {
            delta: pa.0.wrapping_sub(va.0),
            bits,
        };
        self.tables
            .run(alloc, BatchRegime::El2, op, va.0, size, Fault::None, None)
    }

    /// Identity-maps `[pa, pa + size)`.
    ///
    /// # Errors
    ///
    /// As [`El2Stage1::map`].
    pub fn map_identity<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        pa: Pa,
        size: u64,
        attrs: Attrs,
    ) -> Result<BatchStats, Error> {
        self.map(alloc, Va(pa.0), pa, size, attrs)
    }

    /// Unmaps `[va, va + size)`; emptied tables are freed after TLBI VAE2IS/ALLE2IS completed.
    ///
    /// # Errors
    ///
    /// [`Error::Unaligned`], [`Error::OutOfRange`], [`Error::OutOfMemory`].
    pub fn unmap<A: TableAlloc>(
        &mut self,
        alloc: &mut A,
        va: Va,
        size: u64,
    ) -> Result<BatchStats, Error> {
        self.check(va, size)?;
        self.tables.run(
            alloc,
            BatchRegime::El2,
            Op::Unmap { inval: 0 },
            va.0,
            size,
            Fault::None,
            None,
        )
    }

    /// Translation of `va`.
    #[must_use]
    pub fn query<A: TableAlloc>(&self, alloc: &A, va: Va) -> Option<Mapping> {
        let (d, level) = self.tables.lookup(alloc, va.0)?;
        if d & VALID == 0 {
            return None;
        }
        let off = va.0 & (size(level) - 1) & !(PAGE_SIZE - 1);
        Some(Mapping {
            pa: Pa((d & OA_MASK) + off),
            attrs: self.tables.fmt.decode(d),
            state: PageState::from_desc(d),
            level,
        })
    }

    /// Calls `f(va, size, mapping)` for every leaf, in VA order.
    pub fn for_each_entry<A: TableAlloc>(&self, alloc: &A, mut f: impl FnMut(Va, u64, Mapping)) {
        let fmt = self.tables.fmt;
        self.tables.visit(alloc, &mut |ia, level, d| {
            if d & VALID != 0 {
                let m = Mapping {
                    pa: Pa(d & OA_MASK),
                    attrs: fmt.decode(d),
                    state: PageState::from_desc(d),
                    level,
                };
                f(Va(ia), size(level), m);
            }
        });
    }

    /// TTBR0_EL2 (root PA; CnP = 0).
    #[must_use]
    pub const fn ttbr0_el2(&self) -> u64 {
        self.tables.root.0
    }

    /// TCR_EL2 (E2H = 0 layout): T0SZ, IRGN0/ORGN0 write-back write-allocate, SH0 inner,
    /// TG0 = 4 KiB, PS from `parange_field` (capped at 48 bits), RES1 bits 31 and 23.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedPaRange`] for reserved PARange values.
    pub fn tcr_el2(&self, parange_field: u64) -> Result<u64, Error> {
        parange_bits(parange_field)?;
        let t0sz = u64::from(64 - self.tables.ia_bits);
        Ok((TCR_EL2::T0SZ.val(t0sz)
            + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::SH0::Inner
            + TCR_EL2::TG0::KiB_4
            + TCR_EL2::PS.val(parange_field.min(5)))
        .value
            | TCR_EL2_RES1)
    }

    /// Frees every table after breaking the root entries and completing TLBI ALLE2-class
    /// invalidation. EL2 must no longer run on these tables.
    pub fn destroy<A: TableAlloc>(self, alloc: &mut A) -> BatchStats {
        self.tables.destroy(alloc, BatchRegime::El2)
    }
}
