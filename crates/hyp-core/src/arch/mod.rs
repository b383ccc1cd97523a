//! AArch64-only parts of the core: vectors, world switch, EL2 MMU bring-up,
//! register access. Everything else in the crate builds and is tested on the host.

pub mod gic;
pub mod mmu;
pub mod sysreg;
pub mod tables;
pub mod vectors;
pub mod world_switch;
