//! Register reads the core needs, and WFE. Every system-register write and
//! every barrier goes through the `barriers` crate instead.

use core::arch::asm;

macro_rules! read_sysreg {
    ($name:ident, $reg:literal) => {
        #[doc = concat!("Reads ", $reg, ".")]
        #[inline(always)]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading this register has no side effects.
            unsafe { asm!(concat!("mrs {0}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

read_sysreg!(current_el, "currentel");
read_sysreg!(esr_el2, "esr_el2");
read_sysreg!(far_el2, "far_el2");
read_sysreg!(hpfar_el2, "hpfar_el2");
read_sysreg!(mpidr_el1, "mpidr_el1");
read_sysreg!(midr_el1, "midr_el1");
read_sysreg!(id_aa64mmfr0_el1, "id_aa64mmfr0_el1");

/// Wait for event.
#[inline(always)]
pub fn wfe() {
    // SAFETY: WFE only pauses the CPU.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}
