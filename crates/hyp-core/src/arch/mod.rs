//! AArch64-only parts of the core: vectors, world switch, EL2 MMU bring-up,
//! register access. Everything else in the crate builds and is tested on the host.

pub mod mmu;
pub mod sysreg;
pub mod vectors;
pub mod world_switch;

/// MIDR_EL1 of this CPU, shown to guests through VPIDR_EL2.
pub fn sysreg_midr() -> u64 {
    let v: u64;
    // SAFETY: reading MIDR_EL1 has no side effects.
    unsafe {
        core::arch::asm!("mrs {0}, midr_el1", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}
