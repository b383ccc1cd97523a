//! The world switch: guest register files, the per-CPU block the vectors
//! use, and saving/restoring a vCPU's EL1 system-register context.
//!
//! EL1&0 registers written at EL2 during a switch need no synchronisation
//! until the ERET that enters the guest (Arm ARM D8.1.5 I_SFZVV; R_NRJPP: EL2
//! never uses EL1&0 registers for its own speculative accesses), so the
//! restore below issues no ISB: the `eret` in `__guest_enter` is the context
//! synchronisation event, with SCTLR_EL2.EOS = 1 asserted at boot.

use core::arch::asm;
use core::mem::offset_of;

/// A guest's general-purpose registers, PC (ELR_EL2) and PSTATE (SPSR_EL2).
/// Layout is fixed: the vectors address these fields by offset.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestRegs {
    /// x0..x30.
    pub x: [u64; 31],
    /// Where the guest resumes.
    pub pc: u64,
    /// PSTATE at resume.
    pub pstate: u64,
}

/// The hypervisor state `__guest_enter` saves: callee-saved registers, SP and
/// the register file of the guest being run.
#[repr(C)]
#[derive(Debug)]
pub struct HostSave {
    callee: [u64; 12],
    sp: u64,
    guest: *mut GuestRegs,
}

const _: () = {
    assert!(offset_of!(GuestRegs, pc) == 248);
    assert!(offset_of!(GuestRegs, pstate) == 256);
    assert!(offset_of!(HostSave, sp) == 96);
    assert!(offset_of!(HostSave, guest) == 104);
};

impl HostSave {
    /// An empty save area.
    pub const fn new() -> Self {
        Self {
            callee: [0; 12],
            sp: 0,
            guest: core::ptr::null_mut(),
        }
    }
}

impl Default for HostSave {
    fn default() -> Self {
        Self::new()
    }
}

/// How the guest left: the vector that took the exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// Synchronous exception (ESR_EL2 says which).
    Sync,
    /// Physical IRQ routed to EL2.
    Irq,
    /// Physical FIQ routed to EL2.
    Fiq,
    /// SError.
    SError,
}

unsafe extern "C" {
    fn __guest_enter(regs: *mut GuestRegs, host: *mut HostSave) -> u64;
    static __hyp_vectors: u8;
}

/// Address of the EL2 vector table (for VBAR_EL2).
pub fn vectors_address() -> u64 {
    core::ptr::addr_of!(__hyp_vectors) as u64
}

/// Runs the guest whose registers are `regs` until it takes an exception to EL2.
///
/// # Safety
///
/// TPIDR_EL2 must point at a `HostSave` (the per-CPU block) equal to `host`,
/// the vCPU's stage 2, HCR_EL2 and EL1 context must be loaded on this CPU,
/// and `regs` must stay valid and unaliased until this returns.
pub unsafe fn enter(regs: &mut GuestRegs, host: &mut HostSave) -> VectorKind {
    // SAFETY: the caller established the per-CPU and guest context the
    // assembly relies on; the assembly preserves the AAPCS64 callee-saved
    // registers and SP across the guest run.
    let kind = unsafe { __guest_enter(regs, host) };
    match kind {
        0 => VectorKind::Sync,
        1 => VectorKind::Irq,
        2 => VectorKind::Fiq,
        _ => VectorKind::SError,
    }
}

macro_rules! el1_context {
    ($($field:ident => $reg:literal),* $(,)?) => {
        /// A vCPU's EL1&0 system-register context.
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct El1Context {
            $(#[doc = $reg] pub $field: u64,)*
        }

        impl El1Context {
            /// Saves this CPU's EL1 context after a guest exit.
            pub fn save(&mut self) {
                $(
                    // SAFETY: reading an EL1 register at EL2 has no side effects.
                    unsafe { asm!(concat!("mrs {0}, ", $reg), out(reg) self.$field, options(nomem, nostack, preserves_flags)) };
                )*
            }

            /// Loads this context into the CPU's EL1 registers.
            ///
            /// # Safety
            ///
            /// Must run at EL2 between exits and the next `enter` of the vCPU
            /// owning this context: the values take effect for the guest at the
            /// ERET (I_SFZVV); EL2 itself must not depend on them before then.
            pub unsafe fn restore(&self) {
                $(
                    // SAFETY: per the contract above, only the guest consumes
                    // these registers, after the ERET.
                    unsafe { asm!(concat!("msr ", $reg, ", {0}"), in(reg) self.$field, options(nomem, nostack, preserves_flags)) };
                )*
            }
        }
    };
}

el1_context! {
    sctlr => "sctlr_el1",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    vbar => "vbar_el1",
    contextidr => "contextidr_el1",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    tpidr_el1 => "tpidr_el1",
    sp_el0 => "sp_el0",
    sp_el1 => "sp_el1",
    elr => "elr_el1",
    spsr => "spsr_el1",
    esr => "esr_el1",
    far => "far_el1",
    afsr0 => "afsr0_el1",
    afsr1 => "afsr1_el1",
    par => "par_el1",
    cntkctl => "cntkctl_el1",
    cpacr => "cpacr_el1",
    cntv_ctl => "cntv_ctl_el0",
    cntv_cval => "cntv_cval_el0",
}

/// SCTLR_EL1 at vCPU reset: MMU and caches off, RES1 bits set (Arm ARM
/// D24.2.161: bits 29, 28, 23, 22, 20, 11 are RES1 without the later features).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

impl El1Context {
    /// The architectural reset state a vCPU starts in.
    pub fn reset() -> Self {
        Self {
            sctlr: SCTLR_EL1_RESET,
            ..Self::default()
        }
    }
}
