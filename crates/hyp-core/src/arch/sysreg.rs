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
read_sysreg!(id_aa64mmfr2_el1, "id_aa64mmfr2_el1");
read_sysreg!(id_aa64mmfr1_el1, "id_aa64mmfr1_el1");
read_sysreg!(id_aa64pfr0_el1, "id_aa64pfr0_el1");
read_sysreg!(id_aa64pfr1_el1, "id_aa64pfr1_el1");

/// Wait for event.
#[inline(always)]
pub fn wfe() {
    // SAFETY: WFE only pauses the CPU.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// Wait for interrupt: returns when a physical interrupt for this CPU is
/// pending, taken or not (EL2 runs with them masked), or spuriously.
#[inline(always)]
pub fn wfi() {
    // SAFETY: WFI only pauses the CPU.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

read_sysreg!(isr_el1, "isr_el1");

/// A physical IRQ or FIQ is pending for this CPU (ISR_EL1.I or .F, which
/// show physical interrupts at EL2).
#[must_use]
pub fn irq_pending() -> bool {
    isr_el1() & 0xc0 != 0
}

/// YIELD: a hint that this CPU could do other work now.
pub fn yield_hint() {
    // SAFETY: a hint; no memory or register effects.
    unsafe { asm!("yield", options(nomem, nostack, preserves_flags)) };
}

macro_rules! id_regs {
    ($crm:expr, $op2:expr; $($c:literal $o:literal),* $(,)?) => {
        match ($crm, $op2) {
            $(($c, $o) => {
                let v: u64;
                // SAFETY: reading an ID register has no side effects.
                unsafe { asm!(concat!("mrs {0}, s3_0_c0_c", $c, "_", $o), out(reg) v, options(nomem, nostack, preserves_flags)) };
                v
            })*
            _ => 0,
        }
    };
}

/// Reads the ID register with encoding op0 = 3, op1 = 0, CRn = 0, `crm`
/// (1..=7), `op2` (0..=7); 0 for anything else.
pub fn read_id(crm: u8, op2: u8) -> u64 {
    id_regs!(crm, op2;
        1 0, 1 1, 1 2, 1 3, 1 4, 1 5, 1 6, 1 7,
        2 0, 2 1, 2 2, 2 3, 2 4, 2 5, 2 6, 2 7,
        3 0, 3 1, 3 2, 3 3, 3 4, 3 5, 3 6, 3 7,
        4 0, 4 1, 4 2, 4 3, 4 4, 4 5, 4 6, 4 7,
        5 0, 5 1, 5 2, 5 3, 5 4, 5 5, 5 6, 5 7,
        6 0, 6 1, 6 2, 6 3, 6 4, 6 5, 6 6, 6 7,
        7 0, 7 1, 7 2, 7 3, 7 4, 7 5, 7 6, 7 7,
    )
}

/// Whether this CPU has FEAT_RNG (ID_AA64ISAR0_EL1.RNDR, bits [63:60]).
#[must_use]
pub fn has_rng() -> bool {
    read_id(6, 0) >> 60 != 0
}

/// One `RNDRRS` read (FEAT_RNG; the generator is reseeded from its true
/// entropy source first): `None` when the CPU reports failure (PSTATE.Z
/// set, value 0; Arm ARM D23.2.133). Only on a CPU with [`has_rng`].
#[must_use]
pub fn rndrrs() -> Option<u64> {
    let v: u64;
    let ok: u64;
    // SAFETY: reads a random number and sets NZCV; no memory effects. The
    // caller checked FEAT_RNG, without which the encoding is UNDEFINED.
    unsafe {
        asm!(
            "mrs {v}, s3_3_c2_c4_1",
            "cset {ok}, ne",
            v = out(reg) v,
            ok = out(reg) ok,
            options(nomem, nostack)
        )
    };
    (ok != 0).then_some(v)
}

read_sysreg!(cntpct_el0, "cntpct_el0");
read_sysreg!(cntfrq_el0, "cntfrq_el0");
