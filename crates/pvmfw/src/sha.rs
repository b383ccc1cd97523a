//! SHA-256 of guest memory: the `sha2` crate's, or, on a CPU with the
//! SHA-256 instructions (FEAT_SHA256, ID_AA64ISAR0_EL1.SHA2 != 0), a
//! compression loop written with them.
//!
//! Why not only the crate: `sha2` picks its hardware backend through
//! `cpufeatures`, which on a bare-metal target can only see compile-time
//! target features, and the guest target cannot assume FEAT_SHA256 (the
//! Pi 4's Cortex-A72 has no crypto extension). The firmware hashes a whole
//! Linux kernel (tens of MiB) before every protected boot, and the software
//! rounds cost about ten times the instructions of the hardware ones. The
//! hardware path is checked against the crate on a test vector before its
//! first use, and the crate does the work if they ever differ.

use sha2::{Digest, Sha256};

/// 16-byte aligned, so four constants load with one aligned vector load
/// (the target's strict alignment would split an unaligned one).
#[repr(C, align(16))]
struct Aligned([u32; 64]);

/// The SHA-256 round constants (FIPS 180-4, 4.2.2).
static K: Aligned = Aligned([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/// The initial hash value (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Whether the CPU has the SHA-256 instructions (as the hypervisor's
/// sanitised ID_AA64ISAR0_EL1 says).
fn has_sha256() -> bool {
    let isar0: u64;
    // SAFETY: reads an ID register (trapped and answered by the
    // hypervisor); no memory, no side effects.
    unsafe {
        core::arch::asm!("mrs {0}, id_aa64isar0_el1", out(reg) isar0, options(nomem, nostack))
    };
    (isar0 >> 12) & 0xf != 0
}

/// Compresses 64-byte `blocks` into `state` with the SHA-256 instructions.
///
/// # Safety
///
/// The CPU implements FEAT_SHA256 and FP/SIMD is enabled at EL1
/// (guest-rt's entry sets CPACR_EL1.FPEN).
#[target_feature(enable = "sha2")]
unsafe fn compress_hw(state: &mut [u32; 8], blocks: &[u8]) {
    use core::arch::aarch64::{
        uint8x16_t, vaddq_u32, vld1q_u32, vreinterpretq_u32_u8, vrev32q_u8, vsha256h2q_u32,
        vsha256hq_u32, vsha256su0q_u32, vsha256su1q_u32, vst1q_u32,
    };
    // SAFETY: `state` and `K` are read and written through pointers to
    // their own elements, four u32 at a time, in bounds; each block's 64
    // bytes are read by one LD1 of byte elements (no alignment needed),
    // in bounds of `blocks` (whole 64-byte chunks); the SHA-256
    // instructions exist (the caller's contract).
    unsafe {
        let mut abcd = vld1q_u32(state.as_ptr());
        let mut efgh = vld1q_u32(state.as_ptr().add(4));
        for b in blocks.chunks_exact(64) {
            // One LD1 of four byte vectors: byte elements need no alignment,
            // even with the MMU off (Device memory), where the target's
            // strict alignment would otherwise make the compiler load the
            // block a byte at a time.
            let (m0, m1, m2, m3): (uint8x16_t, uint8x16_t, uint8x16_t, uint8x16_t);
            core::arch::asm!(
                "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{p}]",
                p = in(reg) b.as_ptr(),
                out("v0") m0,
                out("v1") m1,
                out("v2") m2,
                out("v3") m3,
                options(readonly, nostack, preserves_flags),
            );
            let be = |m| vreinterpretq_u32_u8(vrev32q_u8(m));
            let (mut w0, mut w1, mut w2, mut w3) = (be(m0), be(m1), be(m2), be(m3));
            let (abcd0, efgh0) = (abcd, efgh);
            // Four rounds with the schedule words `w` and constants
            // `K[4 * r..]`.
            macro_rules! rounds {
                ($r:expr, $w:expr) => {{
                    let wk = vaddq_u32($w, vld1q_u32(K.0.as_ptr().add(4 * $r)));
                    let prev = abcd;
                    abcd = vsha256hq_u32(abcd, efgh, wk);
                    efgh = vsha256h2q_u32(efgh, prev, wk);
                }};
            }
            // The next four schedule words from the last sixteen.
            macro_rules! schedule {
                ($a:ident, $b:ident, $c:ident, $d:ident) => {
                    $a = vsha256su1q_u32(vsha256su0q_u32($a, $b), $c, $d);
                };
            }
            for g in 0..3 {
                rounds!(4 * g, w0);
                schedule!(w0, w1, w2, w3);
                rounds!(4 * g + 1, w1);
                schedule!(w1, w2, w3, w0);
                rounds!(4 * g + 2, w2);
                schedule!(w2, w3, w0, w1);
                rounds!(4 * g + 3, w3);
                schedule!(w3, w0, w1, w2);
            }
            rounds!(12, w0);
            rounds!(13, w1);
            rounds!(14, w2);
            rounds!(15, w3);
            abcd = vaddq_u32(abcd, abcd0);
            efgh = vaddq_u32(efgh, efgh0);
        }
        vst1q_u32(state.as_mut_ptr(), abcd);
        vst1q_u32(state.as_mut_ptr().add(4), efgh);
    }
}

/// SHA-256 of `data` with the SHA-256 instructions.
///
/// # Safety
///
/// As [`compress_hw`].
unsafe fn sha256_hw(data: &[u8]) -> [u8; 32] {
    let mut state = H0;
    let full = data.len() / 64 * 64;
    // SAFETY: the caller's contract.
    unsafe { compress_hw(&mut state, &data[..full]) };
    // The padding: 0x80, zeros, the length in bits (big-endian), in one or
    // two blocks.
    let rest = &data[full..];
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let n = if rest.len() < 56 { 64 } else { 128 };
    tail[n - 8..n].copy_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    // SAFETY: as above.
    unsafe { compress_hw(&mut state, &tail[..n]) };
    let mut out = [0u8; 32];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_be_bytes());
    }
    out
}

/// How the firmware hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The SHA-256 instructions (checked against the crate).
    Instructions,
    /// The `sha2` crate's software rounds.
    Software,
}

impl Engine {
    /// The instructions if the CPU has them and they agree with the crate
    /// on a test vector that needs both padding shapes; else software.
    pub fn pick() -> Self {
        if !has_sha256() {
            return Self::Software;
        }
        let mut v = [0u8; 183];
        for (i, b) in v.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        let agrees = [&v[..], &v[..57], &v[..55], &[][..]].into_iter().all(|d| {
            let soft: [u8; 32] = Sha256::digest(d).into();
            // SAFETY: the CPU has FEAT_SHA256 (checked above); guest-rt
            // enabled FP/SIMD.
            soft == unsafe { sha256_hw(d) }
        });
        if agrees {
            Self::Instructions
        } else {
            Self::Software
        }
    }

    /// SHA-256 of `data`.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            // SAFETY: `pick` chose this engine on a CPU with FEAT_SHA256.
            Self::Instructions => unsafe { sha256_hw(data) },
            Self::Software => Sha256::digest(data).into(),
        }
    }
}
