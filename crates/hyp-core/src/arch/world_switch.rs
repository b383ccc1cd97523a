//! The world switch: guest register files, the per-CPU block the vectors
//! use, and the entry into `__guest_enter`. The register sequences around it
//! (EL1 context, VTTBR/HCR/VMPIDR, FP traps) are in `crate::arch::switch`; their
//! writes return guest-only tokens, which `barriers::enter_guest` consumes
//! for the `eret` in `__guest_enter`, a context synchronisation event because
//! SCTLR_EL2.EOS = 1 (checked at boot).

use crate::arch::switch::CpuSync;
use barriers::sync::{Cse, GuestEntry, Includes};
use barriers::Synced;
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
    /// This CPU's index and synchronisation state, for the fast path's
    /// kicks (set once, when the CPU starts running vCPUs).
    cpu: usize,
    /// A `*const CpuSync` (untyped: this struct is the assembly's).
    sync: *const (),
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
            cpu: 0,
            sync: core::ptr::null(),
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

    /// Records which CPU this is and its synchronisation state, for as
    /// long as it runs vCPUs (`run::run_cpu`, whose caller keeps `sync`).
    pub fn set_cpu(&mut self, cpu: usize, sync: &CpuSync) {
        self.cpu = cpu;
        self.sync = core::ptr::from_ref(sync).cast();
    }

    /// This CPU's index and synchronisation state ([`HostSave::set_cpu`]):
    /// valid while a guest runs (while [`HostSave::fast`] is non-null).
    pub fn cpu(&self) -> (usize, *const CpuSync) {
        (self.cpu, self.sync.cast())
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
    static __hyp_vectors_bp: u8;
}

/// Address of the EL2 vector table (for VBAR_EL2): the one whose lower-EL
/// entries invalidate the branch predictor first when `bp_invalidate`
/// (`arch::spectre::Assessment::bp_invalidate`), else the plain one.
pub fn vectors_address(bp_invalidate: bool) -> u64 {
    if bp_invalidate {
        core::ptr::addr_of!(__hyp_vectors_bp) as u64
    } else {
        core::ptr::addr_of!(__hyp_vectors) as u64
    }
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
    let guest = || {
        // SAFETY: the caller established the per-CPU and guest context the
        // assembly relies on; the assembly preserves the AAPCS64 callee-saved
        // registers and SP across the guest run.
        unsafe { __guest_enter(regs, host) }
    };
    // SAFETY: `__guest_enter` writes only ELR_EL2/SPSR_EL2 before its ERET,
    // returns only through the exception entry to EL2 that ends the guest's
    // run, and writes no system register after it.
    let (kind, cse) = unsafe { entry.run(guest) };
    let kind = match kind {
        0 => VectorKind::Sync,
        1 => VectorKind::Irq,
        2 => VectorKind::Fiq,
        _ => VectorKind::SError,
    };
    (kind, cse)
}

pub use crate::arch::switch::{El1Context, SCTLR_EL1_RESET};

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
