//! Stage-2 and EL2 stage-1 translation tables with break-before-make and page ownership.
//!
//! `s2mm` is the memory-management core of the hypervisor: hyp-core keeps one [`Stage2`] per
//! VM (and one for the host) plus one [`El2Stage1`] for itself, and changes them only through
//! map / unmap / set-state / annotation calls that each run as one `barriers` page-table batch
//! (all breaks, DSB, TLBIs, DSB, all makes, one trailing DSB ISHST). Table memory comes from a
//! [`TableAlloc`], so the whole walker runs on the host under `cargo test`, where the recorded
//! barrier trace is checked by `barriers::check`. Page ownership lives in the software bits of
//! the entries ([`PageState`]) and in owner annotations of invalid entries ([`OwnerId`]); the
//! legal transitions are the pure function [`ownership::transition`].
//!
//! The API:
//! - [`Stage2::new`], [`Stage2::map`], [`Stage2::unmap`], [`Stage2::query`],
//!   [`Stage2::set_annotation`] / [`Stage2::annotation`], [`Stage2::set_state`] (SW-bit-only
//!   change used by ownership transitions), [`Stage2::vttbr`], [`Stage2::vtcr`] (a method: it
//!   needs the start level and VMID), [`Stage2::destroy`]: what hyp-core calls.
//! - [`Stage2::set_block_policy`] limits leaf size, so that tests and the `s2bench` example can
//!   build page-level tables; [`Stage2::for_each_entry`] lists every entry, which the model
//!   tests compare with their reference; [`stage2::stage2_geometry`].
//! - [`El2Stage1`] for the hypervisor's own tables, with `tcr_el2` and `ttbr0_el2` (MAIR_EL2 is
//!   [`desc::El2Format::MAIR_EL2`]).
//! - `host::HostAlloc` (host builds only): a heap [`TableAlloc`] that counts live pages.
//! - TLBI policy: a batch with up to 32 leaf invalidations issues IPAS2E1IS per
//!   leaf (with the level hint) followed by DSB ISH, VMALLE1IS, DSB ISH; more, or any table
//!   invalidation, becomes one VMALLS12E1IS. Every call returns the [`BatchStats`] it issued.
//! - On `OutOfMemory` an operation may be partly applied (every page old or new, tables
//!   consistent, all barriers discharged).
//!
//! Concurrency: every mutating call takes `&mut self`; hyp-core serialises the callers of one
//! table set (its per-VM lock). The only concurrent readers are hardware table walkers, which is
//! what the break-before-make sequences and the release stores of the batch are for. There is
//! therefore no CAS-to-locked-marker protocol (ARM-RULES.md invariant 18 does not apply).
//!
//! Module map: [`addr`] (units), [`alloc`] (table memory), [`desc`] (descriptor encodings),
//! `walk` (the generic walker), [`stage2`], [`el2`], [`ownership`], `host` (heap allocator for
//! host tests and benches, not built for bare metal).

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod addr;
pub mod alloc;
pub mod desc;
pub mod el2;
pub mod ownership;
pub mod stage2;
mod walk;

#[cfg(not(target_os = "none"))]
pub mod host;

/// The barrier batch this crate drives (re-exported from `barriers::pt`).
pub mod batch {
    pub use barriers::pt::{BatchStats, Inval, PtBatch, Regime, MAX_QUEUED};
    pub use barriers::vttbr::Vttbr;
}

pub use addr::{Ipa, Pa, Va, PAGE_SIZE};
pub use alloc::TableAlloc;
pub use batch::{BatchStats, Vttbr};
pub use desc::{Attrs, MemType, OwnerId, PageState, Perms};
pub use el2::El2Stage1;
pub use stage2::Stage2;

/// Errors of table operations. All are the caller's fault except `OutOfMemory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No table page available.
    OutOfMemory,
    /// Address or size not 4 KiB aligned, or size zero.
    Unaligned,
    /// Range beyond the input-address size, or output address beyond 48 bits.
    OutOfRange,
    /// IPA/VA size not supported (stage 2: 32..=48 bits; EL2: 25..=48).
    UnsupportedIpaSize,
    /// Reserved PARange value, or IPA size larger than the PA size.
    UnsupportedPaRange,
    /// Attributes the regime cannot express (EL2: W+X, not readable, executable device).
    InvalidAttrs,
}

/// Largest leaf a table may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSize {
    /// 4 KiB pages only.
    Page4K,
    /// Up to 2 MiB blocks (level 2).
    Block2M,
    /// Up to 1 GiB blocks (level 1).
    Block1G,
}

impl BlockSize {
    pub(crate) const fn level(self) -> u8 {
        match self {
            Self::Page4K => 3,
            Self::Block2M => 2,
            Self::Block1G => 1,
        }
    }
}

/// Result of a successful translation lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Output address of the 4 KiB page containing the queried address.
    pub pa: Pa,
    /// Memory type and permissions.
    pub attrs: Attrs,
    /// Page state from the software bits.
    pub state: PageState,
    /// Level of the leaf (1: 1 GiB block, 2: 2 MiB block, 3: page).
    pub level: u8,
}

/// A non-empty entry reported by [`Stage2::for_each_entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A valid leaf; `pa` is the block's base.
    Mapped(Mapping),
    /// An invalid entry carrying an owner annotation.
    Annotated(OwnerId),
}
