//! The world switch: guest register files, the per-CPU block the vectors
//! use, and saving/restoring a vCPU's EL1 system-register context.
//!
//! EL1&0 registers written at EL2 during a switch need no synchronisation
//! until the ERET that enters the guest (Arm ARM D8.1.5 I_SFZVV; R_NRJPP: EL2
//! never uses EL1&0 registers for its own speculative accesses), so the
//! restore issues no ISB. Its writes go through `barriers` and return
//! guest-only tokens, which `barriers::enter_guest` consumes for the `eret`
//! in `__guest_enter`, a context synchronisation event because SCTLR_EL2.EOS
//! = 1 (checked at boot).

use barriers::regs;
use barriers::sync::{Cse, El1Names, GuestEntry, Includes};
use barriers::{GuestPending, Synced};
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
    /// HVCs answered in the vector itself (`__hvc_fast`) since the last
    /// [`HostSave::take_fast_hvcs`].
    fast_hvcs: u64,
    /// What `vm::hyp_fast_sync` needs about the guest now running (opaque
    /// here), or null while the host runs: then every exit is a full one.
    fast: *const (),
}

const _: () = {
    assert!(offset_of!(GuestRegs, pc) == 248);
    assert!(offset_of!(GuestRegs, pstate) == 256);
    assert!(offset_of!(HostSave, sp) == 96);
    assert!(offset_of!(HostSave, guest) == 104);
    assert!(offset_of!(HostSave, fast_hvcs) == 112);
    assert!(offset_of!(HostSave, fast) == 120);
};

impl HostSave {
    /// An empty save area.
    pub const fn new() -> Self {
        Self {
            callee: [0; 12],
            sp: 0,
            guest: core::ptr::null_mut(),
            fast_hvcs: 0,
            fast: core::ptr::null(),
        }
    }
}

impl HostSave {
    /// Returns and clears the count of HVCs the vector answered by itself,
    /// so the caller can add them to the exit statistics of whoever ran.
    pub fn take_fast_hvcs(&mut self) -> u64 {
        core::mem::take(&mut self.fast_hvcs)
    }

    /// Sets the fast-exit context of the guest about to run (null: none).
    pub fn set_fast(&mut self, fast: *const ()) {
        self.fast = fast;
    }

    /// The fast-exit context set by [`HostSave::set_fast`].
    pub fn fast(&self) -> *const () {
        self.fast
    }

    /// The register file of the guest running (or that ran last).
    pub fn guest_regs(&self) -> *mut GuestRegs {
        self.guest
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
/// `entry` is the `barriers` permission for the ERET: every system-register
/// write since the last exit was guest-only and is synchronised by it.
///
/// # Safety
///
/// TPIDR_EL2 must point at a `HostSave` (the per-CPU block) equal to `host`,
/// the vCPU's stage 2, HCR_EL2 and EL1 context must be loaded on this CPU,
/// and `regs` must stay valid and unaliased until this returns.
///
/// Returns the kind of exit and the proof of the context synchronisation
/// event that the exception entry was (SCTLR_EL2.EIS = 1, checked at boot):
/// every write made before the run is synchronised for the exit's handler.
pub unsafe fn enter(
    regs: &mut GuestRegs,
    host: &mut HostSave,
    entry: GuestEntry,
) -> (VectorKind, Synced<Cse>) {
    // SAFETY: `__guest_enter` writes only ELR_EL2/SPSR_EL2 before its ERET.
    unsafe { entry.eret() };
    // SAFETY: the caller established the per-CPU and guest context the
    // assembly relies on; the assembly preserves the AAPCS64 callee-saved
    // registers and SP across the guest run.
    let kind = unsafe { __guest_enter(regs, host) };
    // SAFETY: `__guest_enter` returns through an exception entry to EL2,
    // a context synchronisation event with SCTLR_EL2.EIS = 1 (D24.1.2.2),
    // and no system register was written since.
    let cse = unsafe { Synced::<Cse>::assume() };
    let kind = match kind {
        0 => VectorKind::Sync,
        1 => VectorKind::Irq,
        2 => VectorKind::Fiq,
        _ => VectorKind::SError,
    };
    (kind, cse)
}

macro_rules! el1_context {
    ($($field:ident => $reg:ident),* $(,)?) => {
        /// A vCPU's EL1&0 system-register context.
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct El1Context {
            $(#[doc = stringify!($reg)] pub $field: u64,)*
        }

        impl El1Context {
            /// All registers zero.
            pub const ZERO: Self = Self { $($field: 0,)* };

            /// Saves this CPU's EL1 context after a guest exit. The reads use
            /// `*_EL1` names, so they need HCR_EL2.E2H synchronised (`e2h`).
            pub fn save<K: Includes<El1Names>>(&mut self, e2h: &Synced<K>) {
                $(self.$field = regs::$reg::read(e2h);)*
            }

            /// Loads this context into the CPU's EL1 registers. The writes are
            /// guest-only (I_SFZVV), so they go into `pending` for the ERET.
            pub fn restore<K: Includes<El1Names>>(&self, e2h: &Synced<K>, pending: &mut GuestPending) {
                $(pending.add(regs::$reg::write(e2h, self.$field));)*
            }
        }
    };
}

el1_context! {
    sctlr => SctlrEl1,
    ttbr0 => Ttbr0El1,
    ttbr1 => Ttbr1El1,
    tcr => TcrEl1,
    mair => MairEl1,
    amair => AmairEl1,
    vbar => VbarEl1,
    contextidr => ContextidrEl1,
    tpidr_el0 => TpidrEl0,
    tpidrro_el0 => TpidrroEl0,
    tpidr_el1 => TpidrEl1,
    sp_el0 => SpEl0,
    sp_el1 => SpEl1,
    elr => ElrEl1,
    spsr => SpsrEl1,
    esr => EsrEl1,
    far => FarEl1,
    afsr0 => Afsr0El1,
    afsr1 => Afsr1El1,
    par => ParEl1,
    cntkctl => CntkctlEl1,
    cpacr => CpacrEl1,
    cntv_ctl => CntvCtlEl0,
    cntv_cval => CntvCvalEl0,
}

/// SCTLR_EL1 at vCPU reset: MMU and caches off, RES1 bits set (Arm ARM
/// D24.2.161: bits 29, 28, 23, 22, 20, 11 are RES1 without the later features).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

impl El1Context {
    /// The architectural reset state a vCPU starts in.
    pub const RESET: Self = {
        let mut z = Self::ZERO;
        z.sctlr = SCTLR_EL1_RESET;
        z
    };
}

/// A vCPU's FP/SIMD registers. Layout fixed for `__fp_save`/`__fp_load`.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy)]
pub struct FpState {
    /// q0..q31.
    pub q: [u128; 32],
    /// FPCR.
    pub fpcr: u64,
    /// FPSR.
    pub fpsr: u64,
}

const _: () = assert!(offset_of!(FpState, fpcr) == 512);

impl FpState {
    /// Reset state: all zero.
    pub const fn new() -> Self {
        Self {
            q: [0; 32],
            fpcr: 0,
            fpsr: 0,
        }
    }
}

impl Default for FpState {
    fn default() -> Self {
        Self::new()
    }
}

unsafe extern "C" {
    fn __fp_save(to: *mut FpState);
    fn __fp_load(from: *const FpState);
}

/// Saves this CPU's FP/SIMD registers into `to`. The proof shows CPTR_EL2.TFP
/// was cleared and synchronised.
pub fn fp_save<K: Includes<barriers::sync::El2Fp>>(proof: &Synced<K>, to: &mut FpState) {
    barriers::sync::uses::el2_fp(proof);
    // SAFETY: FP access is enabled at EL2 (proof); `to` is valid for writes.
    unsafe { __fp_save(to) }
}

/// Loads this CPU's FP/SIMD registers from `from`.
pub fn fp_load<K: Includes<barriers::sync::El2Fp>>(proof: &Synced<K>, from: &FpState) {
    barriers::sync::uses::el2_fp(proof);
    // SAFETY: FP access is enabled at EL2 (proof); `from` is valid for reads.
    unsafe { __fp_load(from) }
}
