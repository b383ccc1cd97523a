//! SMCCC TRNG (Arm DEN 0098, "True Random Number Generator Firmware
//! Interface" 1.0): entropy for guests and the host from a source no other
//! VM and not the host can read. Pure: the decisions are tested on the
//! host with a fake source; the hypervisor's source is the CPU's `RNDRRS`
//! (FEAT_RNG, reseeded before each read, the closest the architecture has
//! to a true random number), read by `arch::sysreg::rndrrs` on the CPU the
//! call traps to. Each value goes only to the caller's x1..x3.
//!
//! A CPU without FEAT_RNG (the Pi 4's Cortex-A72) offers no TRNG: every
//! call answers NOT_SUPPORTED, TRNG_VERSION included, which is how DEN0098
//! 2.1 says a caller learns the interface is absent (Linux's
//! `smccc_probe_trng` then leaves `smccc_trng_available` false). The Pi 4's
//! SoC has a random number generator (the BCM2711's RNG200), but QEMU's
//! raspi4b does not model it, so it is not used.

/// TRNG_VERSION: fast, SMC32, owner 4 (standard secure), function 0x50.
pub const VERSION: u32 = 0x8400_0050;
/// TRNG_FEATURES(function id).
pub const FEATURES: u32 = 0x8400_0051;
/// TRNG_GET_UUID.
pub const GET_UUID: u32 = 0x8400_0052;
/// TRNG_RND32(N): up to 96 bits in w1..w3.
pub const RND32: u32 = 0x8400_0053;
/// TRNG_RND64(N): up to 192 bits in x1..x3.
pub const RND64: u32 = 0xc400_0053;

/// Version 1.0: major in bits [30:16], minor in [15:0] (DEN0098 2.1).
pub const VERSION_1_0: u64 = 1 << 16;
/// Return codes (DEN0098 2.2), as 64-bit two's complement.
pub const SUCCESS: u64 = 0;
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
pub const NO_ENTROPY: u64 = -3i64 as u64;

/// This back end's UUID, f3e1b2c0-5a9d-4b6e-8c71-2d4f0e9a3b57 (made for it),
/// as TRNG_GET_UUID returns it: w0 = bytes 0-3, ..., w3 = bytes 12-15, each
/// word little-endian (DEN0098 2.4; w0 is never 0xffffffff, the error value).
pub const UUID: [u64; 4] = [0xc0b2_e1f3, 0x6e4b_9d5a, 0x4f2d_718c, 0x573b_9a0e];

/// A decoded TRNG call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrngCall {
    /// TRNG_VERSION.
    Version,
    /// TRNG_FEATURES(fid).
    Features {
        /// The function asked about.
        fid: u32,
    },
    /// TRNG_GET_UUID.
    Uuid,
    /// TRNG_RND32 (`wide` false) or TRNG_RND64 (true) of `bits` bits.
    Rnd {
        /// The number of bits asked for (x1).
        bits: u64,
        /// RND64: 64-bit registers, up to 192 bits; RND32: 32-bit, up to 96.
        wide: bool,
    },
}

/// The TRNG call `fid` is, with its argument `x1`, or `None`. Bits [63:32]
/// of x0 are ignored for the SMC32 IDs (SMCCC 1.1 2.6), as the decoder of
/// the other calls does.
#[must_use]
pub fn decode(fid: u32, x1: u64) -> Option<TrngCall> {
    Some(match fid {
        VERSION => TrngCall::Version,
        FEATURES => TrngCall::Features { fid: x1 as u32 },
        GET_UUID => TrngCall::Uuid,
        RND32 => TrngCall::Rnd {
            bits: x1 & 0xffff_ffff,
            wide: false,
        },
        RND64 => TrngCall::Rnd {
            bits: x1,
            wide: true,
        },
        _ => return None,
    })
}

/// The answer (x0..x3) to `call`, drawing 64-bit values from `source` (a
/// failed draw is `None`); `source` is `None` on a CPU without a random
/// number generator. Registers a call does not define are zero.
///
/// RND: N bits in the low N bits of the concatenation x1:x2:x3 (RND64,
/// 192 bits) or w1:w2:w3 (RND32, 96 bits), the least significant in x3;
/// every bit above N is zero, and the upper halves of x1..x3 for RND32.
/// N = 0 or above the maximum is INVALID_PARAMETERS; a source that fails
/// is NO_ENTROPY with x1..x3 zero (no partial value leaks).
pub fn answer(call: TrngCall, source: Option<&mut dyn FnMut() -> Option<u64>>) -> [u64; 4] {
    let Some(draw) = source else {
        return [NOT_SUPPORTED, 0, 0, 0];
    };
    match call {
        TrngCall::Version => [VERSION_1_0, 0, 0, 0],
        TrngCall::Features { fid } => [
            if matches!(fid, VERSION | FEATURES | GET_UUID | RND32 | RND64) {
                SUCCESS
            } else {
                NOT_SUPPORTED
            },
            0,
            0,
            0,
        ],
        TrngCall::Uuid => UUID,
        TrngCall::Rnd { bits, wide } => {
            let width: u64 = if wide { 64 } else { 32 };
            if bits == 0 || bits > 3 * width {
                return [INVALID_PARAMETERS, 0, 0, 0];
            }
            // x3 first (least significant), then x2, then x1.
            let mut out = [SUCCESS, 0, 0, 0];
            let mut left = bits;
            for reg in [3, 2, 1] {
                if left == 0 {
                    break;
                }
                let Some(v) = draw() else {
                    return [NO_ENTROPY, 0, 0, 0];
                };
                let take = left.min(width);
                out[reg] = if take == 64 { v } else { v & ((1 << take) - 1) };
                left -= take;
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source counting up from 0xa5a5..., every draw different and all
    /// 64 bits set somewhere.
    fn counter() -> impl FnMut() -> Option<u64> {
        let mut n = 0xa5a5_a5a5_a5a5_a5a5u64;
        move || {
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            Some(n | 1 << 63)
        }
    }

    fn ask(fid: u32, x1: u64) -> [u64; 4] {
        let mut s = counter();
        answer(decode(fid, x1).expect("a TRNG call"), Some(&mut s))
    }

    #[test]
    fn version_features_and_uuid() {
        assert_eq!(ask(VERSION, 0), [VERSION_1_0, 0, 0, 0]);
        for f in [VERSION, FEATURES, GET_UUID, RND32, RND64] {
            assert_eq!(ask(FEATURES, u64::from(f))[0], SUCCESS, "{f:#x}");
        }
        for f in [0x8400_0054, 0xc400_0050, 0x8400_0000, 0] {
            assert_eq!(ask(FEATURES, f)[0], NOT_SUPPORTED, "{f:#x}");
        }
        let u = ask(GET_UUID, 0);
        assert_eq!(u, UUID);
        assert_ne!(u[0], 0xffff_ffff);
        assert!(u.iter().all(|w| w >> 32 == 0), "32-bit words");
        assert_eq!(decode(0x8400_0054, 0), None);
        assert_eq!(decode(0xc400_0050, 0), None);
    }

    #[test]
    fn rnd64_fills_from_x3_up_and_masks_above_n() {
        // A source of all ones shows exactly which bits each register keeps.
        let mut ones = || Some(u64::MAX);
        let mask = |len: u64| if len >= 64 { u64::MAX } else { (1 << len) - 1 };
        for bits in [1, 7, 63, 64, 65, 100, 128, 129, 191, 192] {
            let r = answer(TrngCall::Rnd { bits, wide: true }, Some(&mut ones));
            let hi = bits.saturating_sub(128).min(64);
            let mid = bits.saturating_sub(64).min(64);
            let lo = bits.min(64);
            assert_eq!(r, [SUCCESS, mask(hi), mask(mid), mask(lo)], "{bits}");
        }
        // Real draws differ from call to call.
        assert_ne!(ask(RND64, 192), ask(RND64, 192).map(|w| !w));
    }

    #[test]
    fn rnd32_uses_only_the_low_words() {
        let mut ones = || Some(u64::MAX);
        let mask = |len: u64| (1u64 << len) - 1;
        for bits in [1, 31, 32, 33, 64, 95, 96] {
            let r = answer(TrngCall::Rnd { bits, wide: false }, Some(&mut ones));
            let hi = bits.saturating_sub(64).min(32);
            let mid = bits.saturating_sub(32).min(32);
            let lo = bits.min(32);
            assert_eq!(r, [SUCCESS, mask(hi), mask(mid), mask(lo)], "{bits}");
        }
        // Bits [63:32] of x1 are ignored for the SMC32 call.
        assert_eq!(ask(RND32, 1 << 32 | 8)[0], SUCCESS);
    }

    #[test]
    fn bad_lengths_are_invalid_and_a_failing_source_leaks_nothing() {
        for (fid, bits) in [
            (RND64, 0),
            (RND64, 193),
            (RND64, u64::MAX),
            (RND32, 0),
            (RND32, 97),
        ] {
            assert_eq!(
                ask(fid, bits),
                [INVALID_PARAMETERS, 0, 0, 0],
                "{fid:#x} {bits}"
            );
        }
        // The first draw succeeds, the second fails: nothing of the first
        // is returned.
        let mut n = 0;
        let mut flaky = || {
            n += 1;
            (n == 1).then_some(0x1234_5678_9abc_def0)
        };
        assert_eq!(
            answer(
                TrngCall::Rnd {
                    bits: 128,
                    wide: true
                },
                Some(&mut flaky)
            ),
            [NO_ENTROPY, 0, 0, 0]
        );
    }

    #[test]
    fn without_a_source_everything_is_not_supported() {
        for c in [
            TrngCall::Version,
            TrngCall::Features { fid: RND64 },
            TrngCall::Uuid,
            TrngCall::Rnd {
                bits: 64,
                wide: true,
            },
        ] {
            assert_eq!(answer(c, None), [NOT_SUPPORTED, 0, 0, 0], "{c:?}");
        }
    }
}
