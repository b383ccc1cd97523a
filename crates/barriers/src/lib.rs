//! Typed AArch64 system-register writes with synchronisation proofs, and page-table barrier batching.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(all(barriers_hw, not(test))))]
extern crate std;

pub mod insn;
pub mod pt;
#[cfg(not(all(barriers_hw, not(test))))]
pub mod trace;

pub use insn::{Consumer, DsbKind, Insn, SysReg, Tlbi};
pub mod regs;
pub mod sync;

pub use sync::{enter_guest, isb, EosChecked, GuestPending, Pending, Synced};
