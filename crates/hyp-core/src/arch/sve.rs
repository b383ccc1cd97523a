//! A vCPU's SVE registers in memory, and the only EL2 code that touches
//! them: `__sve_save`/`__sve_load`, run with CPTR_EL2.TFP and TZ clear and
//! ZCR_EL2.LEN at the VM's vector length (`vcpu::sve_vl`), synchronised
//! (`barriers::sync::uses::el2_fp`).
//!
//! The layout is fixed for the assembly: Z0-Z31 at a stride of the vector
//! length VL (`str zN, [x0, #N, MUL VL]`), P0-P15 from byte
//! [`SveState::P_OFF`] at a stride of VL/8, FFR at [`SveState::FFR_OFF`],
//! then FPSR, FPCR and ZCR_EL1. Every save and load of a VM's state runs
//! at its VM's VL (EL2's, which ZCR_EL2 also caps the VM's vCPUs at while
//! they run), so what is loaded is every bit the guest can reach (Arm ARM
//! C2.x "SVE vector length": the effective length at EL1/EL0 is never above
//! EL2's); the storage is sized for the largest cap, [`VL_MAX_BYTES`].

/// The largest vector length any guest gets, in bytes (512 bits): the
/// hypervisor's cap, whatever the CPU supports above it. Each VM's own
/// length is at most this (`vcpu::sve_vl`).
pub const VL_MAX_BYTES: usize = 64;

/// Z0-Z31, P0-P15, FFR, FPSR, FPCR and ZCR_EL1 of a vCPU.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy)]
pub struct SveState {
    /// Z0-Z31, each VL bytes, back to back.
    pub z: [u8; 32 * VL_MAX_BYTES],
    /// P0-P15, each VL/8 bytes, back to back.
    pub p: [u8; 16 * VL_MAX_BYTES / 8],
    /// FFR, VL/8 bytes.
    pub ffr: [u8; VL_MAX_BYTES / 8],
    /// FPSR.
    pub fpsr: u64,
    /// FPCR.
    pub fpcr: u64,
    /// ZCR_EL1.
    pub zcr_el1: u64,
}

impl SveState {
    /// Offset of P0.
    pub const P_OFF: usize = 32 * VL_MAX_BYTES;
    /// Offset of FFR.
    pub const FFR_OFF: usize = Self::P_OFF + 16 * VL_MAX_BYTES / 8;
    /// Offset of FPSR (then FPCR, ZCR_EL1).
    pub const FPSR_OFF: usize = Self::FFR_OFF + VL_MAX_BYTES / 8;

    /// All zero.
    pub const ZERO: Self = Self {
        z: [0; 32 * VL_MAX_BYTES],
        p: [0; 16 * VL_MAX_BYTES / 8],
        ffr: [0; VL_MAX_BYTES / 8],
        fpsr: 0,
        fpcr: 0,
        zcr_el1: 0,
    };

    /// The SVE state of a context whose FP/SIMD state is `q`, `fpsr`,
    /// `fpcr`, at vector length `vl` bytes: each Z register's low 128 bits
    /// are its V register (little-endian, as `str zN` stores element 0
    /// first), every other bit, P register and FFR zero, ZCR_EL1.LEN at
    /// `vl` (the VM's length: the largest its vCPU may have until it
    /// chooses another). `vl` above the cap is clamped (it cannot be:
    /// ZCR_EL2 caps it).
    #[must_use]
    pub fn from_fp(q: &[u128; 32], fpsr: u64, fpcr: u64, vl: usize) -> Self {
        let vl = vl.clamp(16, VL_MAX_BYTES);
        let mut s = Self::ZERO;
        for (i, v) in q.iter().enumerate() {
            s.z[i * vl..i * vl + 16].copy_from_slice(&v.to_le_bytes());
        }
        s.fpsr = fpsr;
        s.fpcr = fpcr;
        s.zcr_el1 = (vl / 16 - 1) as u64;
        s
    }
}

const _: () = {
    assert!(core::mem::offset_of!(SveState, p) == SveState::P_OFF);
    assert!(core::mem::offset_of!(SveState, ffr) == SveState::FFR_OFF);
    assert!(core::mem::offset_of!(SveState, fpsr) == SveState::FPSR_OFF);
    assert!(core::mem::offset_of!(SveState, fpcr) == SveState::FPSR_OFF + 8);
    assert!(core::mem::offset_of!(SveState, zcr_el1) == SveState::FPSR_OFF + 16);
    // The assembly's immediates.
    assert!(SveState::P_OFF == 2048 && SveState::FFR_OFF == 2176 && SveState::FPSR_OFF == 2184);
};

#[cfg(target_arch = "aarch64")]
pub use on_cpu::{sve_load, sve_save, vl_bytes};

#[cfg(target_arch = "aarch64")]
mod on_cpu {
    use super::SveState;
    use barriers::sync::{El2Fp, Includes};
    use barriers::Synced;
    use core::arch::global_asm;

    // ZCR_EL1 is S3_0_C1_C2_0 (the name needs the assembler's SVE
    // extension, which the encoding does not).
    global_asm!(
        r#"
    .arch_extension sve
    .global __sve_save
__sve_save:
    str     z0, [x0, #0, MUL VL]
    str     z1, [x0, #1, MUL VL]
    str     z2, [x0, #2, MUL VL]
    str     z3, [x0, #3, MUL VL]
    str     z4, [x0, #4, MUL VL]
    str     z5, [x0, #5, MUL VL]
    str     z6, [x0, #6, MUL VL]
    str     z7, [x0, #7, MUL VL]
    str     z8, [x0, #8, MUL VL]
    str     z9, [x0, #9, MUL VL]
    str     z10, [x0, #10, MUL VL]
    str     z11, [x0, #11, MUL VL]
    str     z12, [x0, #12, MUL VL]
    str     z13, [x0, #13, MUL VL]
    str     z14, [x0, #14, MUL VL]
    str     z15, [x0, #15, MUL VL]
    str     z16, [x0, #16, MUL VL]
    str     z17, [x0, #17, MUL VL]
    str     z18, [x0, #18, MUL VL]
    str     z19, [x0, #19, MUL VL]
    str     z20, [x0, #20, MUL VL]
    str     z21, [x0, #21, MUL VL]
    str     z22, [x0, #22, MUL VL]
    str     z23, [x0, #23, MUL VL]
    str     z24, [x0, #24, MUL VL]
    str     z25, [x0, #25, MUL VL]
    str     z26, [x0, #26, MUL VL]
    str     z27, [x0, #27, MUL VL]
    str     z28, [x0, #28, MUL VL]
    str     z29, [x0, #29, MUL VL]
    str     z30, [x0, #30, MUL VL]
    str     z31, [x0, #31, MUL VL]
    add     x1, x0, #2048
    str     p0, [x1, #0, MUL VL]
    str     p1, [x1, #1, MUL VL]
    str     p2, [x1, #2, MUL VL]
    str     p3, [x1, #3, MUL VL]
    str     p4, [x1, #4, MUL VL]
    str     p5, [x1, #5, MUL VL]
    str     p6, [x1, #6, MUL VL]
    str     p7, [x1, #7, MUL VL]
    str     p8, [x1, #8, MUL VL]
    str     p9, [x1, #9, MUL VL]
    str     p10, [x1, #10, MUL VL]
    str     p11, [x1, #11, MUL VL]
    str     p12, [x1, #12, MUL VL]
    str     p13, [x1, #13, MUL VL]
    str     p14, [x1, #14, MUL VL]
    str     p15, [x1, #15, MUL VL]
    add     x1, x0, #2176
    rdffr   p0.b
    str     p0, [x1]
    add     x1, x0, #2184
    mrs     x2, fpsr
    mrs     x3, fpcr
    mrs     x4, s3_0_c1_c2_0
    stp     x2, x3, [x1]
    str     x4, [x1, #16]
    ret

    .global __sve_load
__sve_load:
    add     x1, x0, #2176
    ldr     p0, [x1]
    wrffr   p0.b
    add     x1, x0, #2048
    ldr     p0, [x1, #0, MUL VL]
    ldr     p1, [x1, #1, MUL VL]
    ldr     p2, [x1, #2, MUL VL]
    ldr     p3, [x1, #3, MUL VL]
    ldr     p4, [x1, #4, MUL VL]
    ldr     p5, [x1, #5, MUL VL]
    ldr     p6, [x1, #6, MUL VL]
    ldr     p7, [x1, #7, MUL VL]
    ldr     p8, [x1, #8, MUL VL]
    ldr     p9, [x1, #9, MUL VL]
    ldr     p10, [x1, #10, MUL VL]
    ldr     p11, [x1, #11, MUL VL]
    ldr     p12, [x1, #12, MUL VL]
    ldr     p13, [x1, #13, MUL VL]
    ldr     p14, [x1, #14, MUL VL]
    ldr     p15, [x1, #15, MUL VL]
    ldr     z0, [x0, #0, MUL VL]
    ldr     z1, [x0, #1, MUL VL]
    ldr     z2, [x0, #2, MUL VL]
    ldr     z3, [x0, #3, MUL VL]
    ldr     z4, [x0, #4, MUL VL]
    ldr     z5, [x0, #5, MUL VL]
    ldr     z6, [x0, #6, MUL VL]
    ldr     z7, [x0, #7, MUL VL]
    ldr     z8, [x0, #8, MUL VL]
    ldr     z9, [x0, #9, MUL VL]
    ldr     z10, [x0, #10, MUL VL]
    ldr     z11, [x0, #11, MUL VL]
    ldr     z12, [x0, #12, MUL VL]
    ldr     z13, [x0, #13, MUL VL]
    ldr     z14, [x0, #14, MUL VL]
    ldr     z15, [x0, #15, MUL VL]
    ldr     z16, [x0, #16, MUL VL]
    ldr     z17, [x0, #17, MUL VL]
    ldr     z18, [x0, #18, MUL VL]
    ldr     z19, [x0, #19, MUL VL]
    ldr     z20, [x0, #20, MUL VL]
    ldr     z21, [x0, #21, MUL VL]
    ldr     z22, [x0, #22, MUL VL]
    ldr     z23, [x0, #23, MUL VL]
    ldr     z24, [x0, #24, MUL VL]
    ldr     z25, [x0, #25, MUL VL]
    ldr     z26, [x0, #26, MUL VL]
    ldr     z27, [x0, #27, MUL VL]
    ldr     z28, [x0, #28, MUL VL]
    ldr     z29, [x0, #29, MUL VL]
    ldr     z30, [x0, #30, MUL VL]
    ldr     z31, [x0, #31, MUL VL]
    add     x1, x0, #2184
    ldp     x2, x3, [x1]
    ldr     x4, [x1, #16]
    msr     fpsr, x2                // barrier: C5.1.5.1 — FPSR is special-purpose: program order, no ISB
    msr     fpcr, x3                // barrier: C5.1.5.1 — FPCR is special-purpose: program order, no ISB
    // barrier: D8.1.5 — ZCR_EL1 is an EL1 register only the guest uses: its entry ERET synchronises it
    msr     s3_0_c1_c2_0, x4
    ret

    .global __sve_vl
__sve_vl:
    rdvl    x0, #1
    ret
"#
    );

    unsafe extern "C" {
        fn __sve_save(to: *mut SveState);
        fn __sve_load(from: *const SveState);
        fn __sve_vl() -> u64;
    }

    /// Saves this CPU's SVE registers, FPSR, FPCR and ZCR_EL1 into `to`. The
    /// proof shows CPTR_EL2.TFP/TZ were cleared and ZCR_EL2 written at the
    /// VM's length, synchronised.
    pub fn sve_save<K: Includes<El2Fp>>(proof: &Synced<K>, to: &mut SveState) {
        barriers::sync::uses::el2_fp(proof);
        // SAFETY: SVE is enabled at EL2 at a length that fits `to` (proof);
        // `to` is valid for writes.
        unsafe { __sve_save(to) }
    }

    /// Loads this CPU's SVE registers, FPSR, FPCR and ZCR_EL1 from `from`.
    pub fn sve_load<K: Includes<El2Fp>>(proof: &Synced<K>, from: &SveState) {
        barriers::sync::uses::el2_fp(proof);
        // SAFETY: as `sve_save`; `from` is valid for reads.
        unsafe { __sve_load(from) }
    }

    /// EL2's SVE vector length in bytes (RDVL).
    pub fn vl_bytes<K: Includes<El2Fp>>(proof: &Synced<K>) -> usize {
        barriers::sync::uses::el2_fp(proof);
        // SAFETY: SVE is enabled at EL2 (proof); RDVL has no other effect.
        unsafe { __sve_vl() as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_fp_puts_v_in_the_low_bits_and_zeroes_the_rest() {
        let mut q = [0u128; 32];
        for (i, v) in q.iter_mut().enumerate() {
            *v = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10 ^ (i as u128) << 120;
        }
        for vl in [16, 32, 48, 64] {
            let s = SveState::from_fp(&q, 7, 9, vl);
            for (i, v) in q.iter().enumerate() {
                assert_eq!(s.z[i * vl..i * vl + 16], v.to_le_bytes());
                assert!(s.z[i * vl + 16..(i + 1) * vl].iter().all(|&b| b == 0));
            }
            assert!(s.z[32 * vl..].iter().all(|&b| b == 0));
            assert!(s.p.iter().chain(&s.ffr).all(|&b| b == 0));
            assert_eq!((s.fpsr, s.fpcr, s.zcr_el1), (7, 9, vl as u64 / 16 - 1));
        }
    }

    #[test]
    fn cap_is_512_bits() {
        assert_eq!(VL_MAX_BYTES * 8, 512);
    }
}
