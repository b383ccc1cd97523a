//! Typed AArch64 system-register writes with synchronisation proofs, and page-table barrier batching.
//!
//! The hypervisor (nVHE: EL2 with HCR_EL2.E2H = 0, 4 KiB granule) writes every system register and
//! issues every barrier, TLBI and cache-maintenance instruction through this crate, except the
//! vector and world-switch assembly in `hyp-core` (a tidy test enforces it). `s2mm` edits stage-2
//! tables through [`pt::PtBatch`]; `hyp-core` uses [`regs`], [`isb`] and [`enter_guest`]. On the
//! host every instruction is recorded instead of executed, so all of them are testable, and
//! [`check::check`] verifies recorded traces against ARM-RULES.md section 5.
//!
//! # The model
//!
//! **Core rule (Arm ARM D24.1.2.2, Table D24-1).** An `MSR` is not self-synchronising: an
//! *indirect read* of the new value (translation, trapping, routing) needs a context
//! synchronisation event (CSE) first. The CSEs used here are `ISB`, exception entry and `ERET`
//! (both only when SCTLR_EL2.EIS = EOS = 1; [`sync::check_eos`] asserts it at boot).
//!
//! **Tokens keyed to consumers (ARM-RULES.md sections 0 and 1).** A write returns a `#[must_use]`
//! [`Pending<K>`](sync::Pending), where `K` is the *class of consumer* that depends on the fields
//! that changed, and carries the changed-bit mask:
//!
//! | class | produced by | consumer that needs a [`Synced<K>`](sync::Synced) proof | ERET may discharge |
//! |---|---|---|---|
//! | [`sync::GuestOnly`] | HCR_EL2 trap bits ([`regs::HcrEl2::write_traps_only`]), EL1 context, VBAR_EL2, CNTHCTL/CNTVOFF/VPIDR/VMPIDR/MDCR_EL2, ICH_*, the PMU registers ([`pmu`]) (I_SFZVV) | none at EL2 | yes |
//! | [`sync::El1Names`] | HCR_EL2.E2H/TGE ([`regs::HcrEl2::write`]) | `*_EL1`-named accesses, TCR_EL2/CPTR_EL2 writes (invariant 6) | — |
//! | [`sync::VmidCtx`] | VTTBR_EL2 ([`vttbr::Vttbr::load`]), VTCR_EL2, HCR_EL2.TGE/VM | TLBI by VMID (the stage-2 batch synchronises it itself) | yes |
//! | [`sync::El2Fp`] | CPTR_EL2 clearing FP traps | EL2 FP/SIMD use (invariant 8) | yes |
//! | [`sync::GicSre`] | ICC_SRE_EL2 | ICC_*/ICH_* accesses | yes |
//! | [`sync::El2GicIf`] | ICC_PMR/CTLR/IGRPEN1_EL1 at EL2 | EL2's own ICC_IAR1/EOIR1 accesses | yes |
//! | [`sync::El2Translation`] | SCTLR/TCR/TTBR0/MAIR_EL2 | EL2 memory accesses | no |
//! | [`sync::HcrAny`] | any HCR_EL2 change ([`regs::HcrEl2::write`]): RW/E2H/TGE/NV/NV1 are read by the ERET itself (invariant 4) | everything above | no |
//!
//! [`isb`] turns tokens into proofs; `isb(())` does not type-check (an ISB with nothing pending).
//! [`enter_guest`] (the world switch's ERET) consumes only tokens whose class is
//! [`sync::EretOk`], with no ISB, and returns a [`sync::GuestEntry`] that only the world switch
//! consumes, right before its ERET. So the seed-000 exit path (HCR_EL2 trap bits, CPTR_EL2,
//! VBAR_EL2, enter the guest) compiles without an ISB, while carrying an E2H/TGE change into the
//! ERET, or using an EL1-named register after it without an ISB, does not compile. Tokens and
//! proofs are per CPU (`!Send`, `!Sync`). The special-purpose registers ELR_EL2 and SPSR_EL2 are
//! written only by the world-switch assembly, in program order before its ERET (C5.1.5.1), so
//! they have no type here. Reads are safe; writes of registers that control translation,
//! exception routing or trapping are `unsafe` with a `# Safety` contract.
//!
//! **VMIDs ([`vttbr`]).** Each CPU has one [`vttbr::Vttbr`], VTTBR_EL2's only writer. A stage-2
//! [`pt::PtBatch`] borrows it for its whole life and issues its TLBIs under the tables' own VMID,
//! switching VTTBR_EL2 around them when another VM (or the host) is loaded.
//!
//! **Page-table batches (ARM-RULES.md sections 2.2 and 4; R_DDMVT, D8.17.6.1).** [`pt::PtBatch`]
//! queues DSB/TLBI/ISB obligations and discharges each exactly once, by phase: breaks, `DSB
//! ISHST`, TLBIs, `DSB ISH`, the stage-1 flush after `IPAS2E1IS`, makes, then `DSB ISHST` before
//! the next ERET (stage 2) or `DSB ISHST; ISB` before EL2 uses its own mappings. A multi-page
//! operation is one batch (seed 002). An unfinished batch panics when dropped, in every build.
//!
//! **Backends.** With `target_arch = "aarch64"`, `target_os = "none"` and not `cfg(test)`, the
//! crate emits real instructions. Otherwise it appends [`Insn`]s to a per-thread trace
//! ([`trace::take`]) and keeps a shadow register file, so other crates' host tests see exactly
//! what would run.
//!
//! **Limits of the types.** A proof kept across a later write is caught by ownership for the
//! registers whose proofs the hypervisor keeps (CPTR_EL2: re-trapping consumes the FP proof;
//! VTTBR_EL2: a load needs `&mut Vttbr`). HCR_EL2's proof is minted once at bring-up; every later
//! HCR write is trap-only, checked in release builds. Other staleness is caught by the checker
//! on traces. A `let _ = enter_guest(..)` compiles; the dropped `GuestEntry` panics.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(all(barriers_hw, not(test))))]
extern crate std;

#[cfg(not(all(barriers_hw, not(test))))]
pub mod check;
pub mod insn;
pub mod maint;
pub mod pmu;
pub mod pt;
pub mod regs;
pub mod sync;
#[cfg(not(all(barriers_hw, not(test))))]
pub mod trace;
pub mod vttbr;

pub use insn::{Consumer, DsbKind, Insn, SysReg, Tlbi};
pub use sync::{enter_guest, fast_return, isb, EosChecked, GuestPending, Pending, Synced};
