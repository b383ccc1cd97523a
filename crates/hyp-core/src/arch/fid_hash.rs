//! The hash the HVC vector uses to tell a function ID nobody implements
//! from one that somebody may (`__hvc_fast` in `vectors.rs`), so an unknown
//! call is answered NOT_SUPPORTED before any register is saved.
//!
//! The set itself (`calls::known::HVC_KNOWN_FIDS`) lives with the ABI; this
//! module fixes only the slot function, because the vector's assembly takes
//! the multiplier and shift as immediates: slot = (fid * MUL mod 2^32) >>
//! SHIFT, a multiplicative hash into [`SLOTS`] slots, four instructions
//! (movz, movk, mul, lsr). The table holds, in each slot, the one known ID
//! that hashes there (or an ID that hashes elsewhere when none does), so a
//! single load and compare decides: different means unknown to every
//! caller. The table is built at compile time and the build fails if two
//! known IDs share a slot (see `calls::known`): then pick another odd
//! multiplier here (`cargo test -p hyp-core --lib fid_multiplier_search --
//! --ignored --nocapture` prints some that separate today's IDs).
//! Pure: builds and is tested on the host.

/// Bits of the slot index.
pub const SLOT_BITS: u32 = 7;
/// Slots in the table (`1 << SLOT_BITS`).
pub const SLOTS: usize = 1 << SLOT_BITS;
/// The multiplier (odd; found by the search below for today's ID set).
pub const MUL: u32 = 0xac5c_0dff;
/// The right shift that keeps the product's top `SLOT_BITS` bits.
pub const SHIFT: u32 = 32 - SLOT_BITS;
/// `MUL`'s low half, for the vector's `movz`.
pub const MUL_LO: u32 = MUL & 0xffff;
/// `MUL`'s high half, for the vector's `movk ..., lsl #16`.
pub const MUL_HI: u32 = MUL >> 16;

/// The slot of `fid` (the low 32 bits of x0: SMCCC 1.1 section 2.6 has
/// callees ignore bits [63:32] of a 32-bit function ID, and every ID
/// implemented here is one), exactly as the vector computes it.
#[must_use]
pub const fn slot(fid: u32) -> usize {
    (fid.wrapping_mul(MUL) >> SHIFT) as usize
}

/// Whether `fids` occupy distinct slots under `mul`.
#[must_use]
pub const fn separates(fids: &[u32], mul: u32) -> bool {
    let mut used: u128 = 0;
    let mut i = 0;
    while i < fids.len() {
        let s = fids[i].wrapping_mul(mul) >> SHIFT;
        if used & (1 << s) != 0 {
            return false;
        }
        used |= 1 << s;
        i += 1;
    }
    true
}

/// The table for `fids` (distinct slots, checked: a collision fails the
/// build when called in a constant). Empty slots hold `fids[0]`, which
/// hashes to its own slot, so no ID that lands in an empty slot equals
/// what is there.
#[must_use]
pub const fn table<const N: usize>(fids: &[u32; N]) -> [u32; SLOTS] {
    assert!(N > 0 && N <= SLOTS, "fid_hash: 1..=SLOTS function IDs");
    assert!(
        separates(fids, MUL),
        "fid_hash: two known function IDs share a slot: choose another MUL (see the module doc)"
    );
    let mut t = [fids[0]; SLOTS];
    let mut i = 0;
    while i < N {
        t[slot(fids[i])] = fids[i];
        i += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_in_range_and_empty_slots_never_match() {
        let fids = [0x8400_0000, 0x8000_0000, 0xc600_0040, 0xc600_0041];
        let t = table(&fids);
        for f in fids {
            assert_eq!(t[slot(f)], f);
        }
        // Every slot holds an ID that hashes to it, or fids[0] (which
        // hashes to its own slot, where it is).
        for (s, &v) in t.iter().enumerate() {
            assert!(slot(v) == s || v == fids[0], "slot {s}: {v:#x}");
        }
        for f in [0u32, 1, u32::MAX, 0xc600_fff0, 0x8400_00ff] {
            assert!(slot(f) < SLOTS);
            assert_ne!(t[slot(f)], f, "{f:#x}");
        }
    }

    #[test]
    fn a_collision_is_seen() {
        // Two IDs that share a slot under MUL, found by search (among
        // SLOTS + 1 IDs two always do), so the test holds for any MUL.
        let a = 0x8400_0000u32;
        let b = (1..=SLOTS as u32)
            .map(|d| a.wrapping_add(d))
            .find(|&b| slot(b) == slot(a));
        let b = b.expect("pigeonhole: SLOTS + 1 IDs share a slot");
        assert!(!separates(&[a, b], MUL));
        assert!(separates(&[a], MUL));
        assert!(separates(&[a, b], MUL) == (slot(a) != slot(b)));
    }
}
