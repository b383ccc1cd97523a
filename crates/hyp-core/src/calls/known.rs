//! Every SMCCC function ID some caller may get an answer other than
//! NOT_SUPPORTED for, and the table the HVC vector looks them up in
//! (`__hvc_fast` in `arch/vectors.rs`, slot function in `arch::fid_hash`).
//!
//! An HVC whose function ID (the low 32 bits of x0) is not in [`KNOWN`] is
//! unknown to every caller: [`super::smccc::decode`] makes it
//! `Hypercall::Unknown`, which a guest (normal or protected, pvmfw
//! included) and the host are all answered with x0 = NOT_SUPPORTED (-1),
//! x1..x3 = 0 and every other register unchanged (`exit::policy`'s
//! `guest_call` and `host_call`). So the vector answers those exactly so,
//! at once, for any caller; everything in [`KNOWN`] (and so every call
//! whose answer depends on who calls) goes on to the decoder. The tests
//! check that [`KNOWN`] holds every ID the decoder or the host interface
//! knows.

use super::smccc::vendor;
use super::trng;
use smccc::arch::{
    SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2, SMCCC_ARCH_WORKAROUND_3,
    SMCCC_VERSION,
};
use smccc::psci::{
    PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_CPU_SUSPEND_64, PSCI_FEATURES,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// The IDs [`super::smccc::decode`] names that the vector's fast path may
/// answer (`exit::fast::fast_call` answers what
/// [`super::smccc::stateless_answer`] answers).
const MAYBE_FAST: [u32; 9] = [
    PSCI_VERSION,
    PSCI_FEATURES,
    SMCCC_VERSION,
    SMCCC_ARCH_FEATURES,
    SMCCC_ARCH_WORKAROUND_1,
    SMCCC_ARCH_WORKAROUND_2,
    SMCCC_ARCH_WORKAROUND_3,
    vendor::CALL_UID,
    vendor::HYP_MEMINFO,
];

/// The decoded IDs whose answer is never the vector's fast path
/// (`exit::fast::fast_call` answers only what
/// [`super::smccc::stateless_answer`] answers): calls that change state or
/// depend on the caller (PSCI power calls, the pKVM memory and guard calls,
/// KVM_FEATURES, YIELD, the firmware measurement, the TRNG's entropy) and
/// the host's control interface (the host never has a fast path). The
/// vector sends these straight to the full exit, without saving the
/// caller-saved registers and decoding the call twice. Any call may take the
/// full path (it answers everything the fast path does, the same way), so
/// this list only has to leave out the stateless calls, which a test checks.
const FULL_PATH: [u32; 18] = [
    PSCI_CPU_ON_64,
    PSCI_CPU_OFF,
    PSCI_AFFINITY_INFO_64,
    PSCI_CPU_SUSPEND_64,
    PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_RESET,
    vendor::KVM_FEATURES,
    vendor::MEM_SHARE,
    vendor::MEM_UNSHARE,
    vendor::MMIO_GUARD,
    hyp_abi::pvmfw::MEASUREMENT_SET,
    hyp_abi::pvmfw::MEASUREMENT_GET,
    hyp_abi::GUEST_YIELD,
    trng::VERSION,
    trng::FEATURES,
    trng::GET_UUID,
    trng::RND32,
    trng::RND64,
];

/// The IDs [`super::smccc::decode`] names (everything but `Unknown`):
/// [`MAYBE_FAST`] and [`FULL_PATH`].
const DECODED: [u32; MAYBE_FAST.len() + FULL_PATH.len()] = {
    let mut k = [0; MAYBE_FAST.len() + FULL_PATH.len()];
    let mut i = 0;
    while i < MAYBE_FAST.len() {
        k[i] = MAYBE_FAST[i];
        i += 1;
    }
    while i < k.len() {
        k[i] = FULL_PATH[i - MAYBE_FAST.len()];
        i += 1;
    }
    k
};

/// The host's control interface (`hyp_abi::FID_BASE..=FID_LAST`).
const HOST_CALLS: usize = (hyp_abi::FID_LAST - hyp_abi::FID_BASE + 1) as usize;

/// Every ID some caller knows: [`DECODED`] and the host's calls.
pub const KNOWN: [u32; DECODED.len() + HOST_CALLS] = {
    let mut k = [0; DECODED.len() + HOST_CALLS];
    let mut i = 0;
    while i < DECODED.len() {
        k[i] = DECODED[i];
        i += 1;
    }
    let mut h = 0;
    while h < HOST_CALLS {
        k[DECODED.len() + h] = hyp_abi::FID_BASE + h as u32;
        h += 1;
    }
    k
};

/// Bit 32 of a [`HVC_KNOWN_FIDS`] entry: the ID in its low 32 bits takes
/// the full exit at once ([`FULL_PATH`], or a host call).
pub const FULL_PATH_BIT: u64 = 1 << 32;

/// Whether `fid` is sent to the full exit by the vector.
const fn full_path(fid: u32) -> bool {
    if fid >= hyp_abi::FID_BASE && fid <= hyp_abi::FID_LAST {
        return true;
    }
    let mut i = 0;
    while i < FULL_PATH.len() {
        if FULL_PATH[i] == fid {
            return true;
        }
        i += 1;
    }
    false
}

/// [`KNOWN`] by slot (`arch::fid_hash::table`; the build fails if two
/// share one), each with [`FULL_PATH_BIT`] when the vector sends it to the
/// full exit. Read by the HVC vector, under this name.
#[unsafe(no_mangle)]
pub static HVC_KNOWN_FIDS: [u64; crate::arch::fid_hash::SLOTS] = {
    let ids = crate::arch::fid_hash::table(&KNOWN);
    let mut t = [0u64; crate::arch::fid_hash::SLOTS];
    let mut i = 0;
    while i < t.len() {
        let fid = ids[i];
        // An empty slot holds an ID that hashes elsewhere: never matched,
        // so its bit does not matter; set it only for the ID's own slot.
        let own = crate::arch::fid_hash::slot(fid) == i;
        t[i] = fid as u64
            | if own && full_path(fid) {
                FULL_PATH_BIT
            } else {
                0
            };
        i += 1;
    }
    t
};

/// What the vector decides for an HVC with `fid` in w0: true when it
/// answers NOT_SUPPORTED itself (the same lookup, in Rust).
#[must_use]
pub fn unknown_to_all(fid: u32) -> bool {
    HVC_KNOWN_FIDS[crate::arch::fid_hash::slot(fid)] as u32 != fid
}

/// Whether the vector sends an HVC with `fid` straight to the full exit
/// (the same lookup, in Rust).
#[must_use]
pub fn straight_to_full_exit(fid: u32) -> bool {
    let e = HVC_KNOWN_FIDS[crate::arch::fid_hash::slot(fid)];
    e as u32 == fid && e & FULL_PATH_BIT != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::fid_hash;
    use crate::calls::smccc::{decode, Hypercall};

    /// Whether some caller knows `fid`: the decoder names it (whatever x1..x3
    /// hold: a bad argument makes a known call InvalidParameter, not
    /// Unknown), or it is a host call.
    fn known_somewhere(fid: u32) -> bool {
        let named = [[0u64; 3], [1, 2, 3], [u64::MAX; 3]].iter().any(|a| {
            !matches!(
                decode([u64::from(fid), a[0], a[1], a[2]]),
                Hypercall::Unknown { .. }
            )
        });
        named || (hyp_abi::FID_BASE..=hyp_abi::FID_LAST).contains(&fid)
    }

    #[test]
    fn every_known_id_is_in_the_table() {
        for f in KNOWN {
            assert!(known_somewhere(f), "{f:#x} is in KNOWN but nobody knows it");
            assert!(!unknown_to_all(f), "{f:#x}");
            assert_eq!(HVC_KNOWN_FIDS[fid_hash::slot(f)] as u32, f);
        }
        let mut sorted = KNOWN;
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[0] != w[1]),
            "KNOWN repeats an ID"
        );
    }

    /// The vector answers an ID itself only if nobody knows it. Every ID the
    /// decoder names has bits [23:16] clear (SMCCC: reserved, zero), so all
    /// of those, 2^24 IDs, are tried, and a spread of the rest.
    #[test]
    fn what_the_vector_answers_nobody_knows() {
        let mut unknown = 0u64;
        let check = |fid: u32, unknown: &mut u64| {
            let fast = unknown_to_all(fid);
            assert_eq!(fast, !known_somewhere(fid), "{fid:#x}");
            *unknown += u64::from(fast);
        };
        for hi in 0..=0xffu32 {
            for lo in 0..=0xffffu32 {
                check(hi << 24 | lo, &mut unknown);
            }
        }
        // Bits [23:16] set, and the rest: a multiplicative walk of 2^22 IDs.
        let mut f = 0x1234_5678u32;
        for _ in 0..1u32 << 22 {
            f = f.wrapping_mul(0x0019_660d).wrapping_add(0x3c6e_f35f);
            check(f, &mut unknown);
        }
        assert!(unknown > (1 << 24) - 100, "{unknown}");
        // The IDs guest-faults and guest-bench call as unknown ones.
        for f in [
            0xc600_fff0,
            0x8400_00ff,
            0x8600_0001,
            0xc600_0005,
            0xc600_003f,
        ] {
            assert!(unknown_to_all(f), "{f:#x}");
        }
    }

    /// Prints odd multipliers that separate [`KNOWN`] (run by hand when the
    /// set grows and the build says two IDs share a slot).
    #[test]
    #[ignore = "a search tool, not a check"]
    fn fid_multiplier_search() {
        let mut x: u32 = 0x9e37_79b9;
        let mut found = 0;
        for _ in 0..10_000_000u32 {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if fid_hash::separates(&KNOWN, x | 1) {
                println!("MUL = {:#010x}", x | 1);
                found += 1;
                if found == 5 {
                    break;
                }
            }
        }
        assert!(found > 0, "no multiplier: more SLOT_BITS");
    }

    /// The calls the fast path answers are never sent past it: for every
    /// known ID and a few argument patterns, a call with a stateless answer
    /// (other than the InvalidParameter/NOT_SUPPORTED errors, which the
    /// full path gives the same way) is not marked for the full exit.
    #[test]
    fn stateless_calls_keep_the_fast_path() {
        use crate::calls::smccc::stateless_answer;
        for &fid in &KNOWN {
            for a in [[0u64; 3], [1, 2, 3], [u64::from(PSCI_VERSION), 0, 0]] {
                let call = decode([u64::from(fid), a[0], a[1], a[2]]);
                let fast = !matches!(
                    call,
                    Hypercall::InvalidParameter { .. }
                        | Hypercall::Unknown { .. }
                        | Hypercall::VendorFeatures
                ) && stateless_answer(call).is_some();
                assert!(
                    !(fast && straight_to_full_exit(fid)),
                    "{fid:#x} has a fast answer but is sent to the full exit"
                );
            }
        }
        assert!(straight_to_full_exit(vendor::MEM_SHARE));
        assert!(straight_to_full_exit(hyp_abi::GUEST_YIELD));
        assert!(straight_to_full_exit(hyp_abi::FID_BASE));
        assert!(!straight_to_full_exit(SMCCC_VERSION));
        assert!(!straight_to_full_exit(0xc600_fff0));
    }
}
