//! The FP/SIMD isolation probe of guest-fp and of the host VM: loads a
//! pattern into all 32 Q registers, FPCR and FPSR, makes one exit to the
//! hypervisor (a WFI, or an HVC with four arguments), and stores what the
//! registers hold afterwards. Written in assembly as one function, so no
//! compiled code can use an FP/SIMD register between the load and the
//! store; FPCR and FPSR are zeroed before it returns (what Rust code
//! expects), and d8-d15, callee-saved, are restored.

use core::arch::global_asm;

/// The registers the probe loads and stores.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpRegs {
    /// q0..q31.
    pub q: [u128; 32],
    /// FPCR.
    pub fpcr: u64,
    /// FPSR.
    pub fpsr: u64,
}

impl FpRegs {
    /// All zero.
    #[must_use]
    pub const fn zero() -> Self {
        Self {
            q: [0; 32],
            fpcr: 0,
            fpsr: 0,
        }
    }
}

/// FPCR bits every Armv8-A FPU implements (Arm ARM FPCR): AHP (26), DN (25),
/// FZ (24), RMode (23:22).
pub const FPCR_MASK: u64 = 0b1_1111 << 22;
/// FPSR's cumulative exception bits: QC (27), IDC (7), IXC, UFC, OFC, DZC,
/// IOC (4:0).
pub const FPSR_MASK: u64 = (1 << 27) | (1 << 7) | 0b1_1111;

unsafe extern "C" {
    /// `src` into the registers; with `hvc` null a WFI, else an HVC with
    /// x0..x3 from `*hvc`, whose x0..x3 are stored back; the registers into
    /// `dst`.
    fn __fp_probe(src: *const FpRegs, dst: *mut FpRegs, hvc: *mut [u64; 4]);
}

global_asm!(
    ".section .text.__fp_probe, \"ax\"",
    ".global __fp_probe",
    "__fp_probe:",
    "stp d8, d9, [sp, #-80]!",
    "stp d10, d11, [sp, #16]",
    "stp d12, d13, [sp, #32]",
    "stp d14, d15, [sp, #48]",
    "stp x1, x2, [sp, #64]",
    "ldp q0, q1, [x0, #0]",
    "ldp q2, q3, [x0, #32]",
    "ldp q4, q5, [x0, #64]",
    "ldp q6, q7, [x0, #96]",
    "ldp q8, q9, [x0, #128]",
    "ldp q10, q11, [x0, #160]",
    "ldp q12, q13, [x0, #192]",
    "ldp q14, q15, [x0, #224]",
    "ldp q16, q17, [x0, #256]",
    "ldp q18, q19, [x0, #288]",
    "ldp q20, q21, [x0, #320]",
    "ldp q22, q23, [x0, #352]",
    "ldp q24, q25, [x0, #384]",
    "ldp q26, q27, [x0, #416]",
    "ldp q28, q29, [x0, #448]",
    "ldp q30, q31, [x0, #480]",
    "add x3, x0, #512",
    "ldp x3, x4, [x3]",
    "msr fpcr, x3",
    "msr fpsr, x4",
    "cbz x2, 1f",
    "mov x9, x2",
    "ldp x0, x1, [x9]",
    "ldp x2, x3, [x9, #16]",
    "hvc #0",
    "ldr x9, [sp, #72]",
    "stp x0, x1, [x9]",
    "stp x2, x3, [x9, #16]",
    "b 2f",
    "1: wfi",
    "2: ldr x1, [sp, #64]",
    "stp q0, q1, [x1, #0]",
    "stp q2, q3, [x1, #32]",
    "stp q4, q5, [x1, #64]",
    "stp q6, q7, [x1, #96]",
    "stp q8, q9, [x1, #128]",
    "stp q10, q11, [x1, #160]",
    "stp q12, q13, [x1, #192]",
    "stp q14, q15, [x1, #224]",
    "stp q16, q17, [x1, #256]",
    "stp q18, q19, [x1, #288]",
    "stp q20, q21, [x1, #320]",
    "stp q22, q23, [x1, #352]",
    "stp q24, q25, [x1, #384]",
    "stp q26, q27, [x1, #416]",
    "stp q28, q29, [x1, #448]",
    "stp q30, q31, [x1, #480]",
    "mrs x3, fpcr",
    "mrs x4, fpsr",
    "add x5, x1, #512",
    "stp x3, x4, [x5]",
    "msr fpcr, xzr",
    "msr fpsr, xzr",
    "ldp d10, d11, [sp, #16]",
    "ldp d12, d13, [sp, #32]",
    "ldp d14, d15, [sp, #48]",
    "ldp d8, d9, [sp], #80",
    "ret",
    ".text",
);

/// Loads `src`, executes WFI (one exit), returns what the registers hold.
#[must_use]
pub fn across_wfi(src: &FpRegs) -> FpRegs {
    let mut dst = FpRegs::zero();
    // SAFETY: `__fp_probe` reads `src` and writes `dst` (both FpRegs,
    // 16-byte aligned), follows AAPCS64 (d8-d15 restored, FPCR/FPSR zeroed
    // on return); WFI only pauses the vCPU.
    unsafe { __fp_probe(src, &mut dst, core::ptr::null_mut()) };
    dst
}

/// Loads `src`, yields the CPU to the host ([`hyp_abi::GUEST_YIELD`], one
/// exit, after which the host may run another VM on this CPU), returns what
/// the registers hold.
#[must_use]
pub fn across_yield(src: &FpRegs) -> FpRegs {
    across_hvc(src, [u64::from(hyp_abi::GUEST_YIELD), 0, 0, 0]).0
}

/// Loads `src`, makes the SMCCC call `args` (x0..x3) with HVC, returns what
/// the FP/SIMD registers hold after it and the call's x0..x3.
#[must_use]
pub fn across_hvc(src: &FpRegs, args: [u64; 4]) -> (FpRegs, [u64; 4]) {
    let mut dst = FpRegs::zero();
    let mut x = args;
    // SAFETY: as `across_wfi`; the HVC may clobber x0..x17, which the
    // probe, an AAPCS64 function, may clobber anyway.
    unsafe { __fp_probe(src, &mut dst, &mut x) };
    (dst, x)
}
