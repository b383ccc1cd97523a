//! Each VM's SVE vector length (issue 22): the host asks for a cap at
//! VM_CREATE ([`hyp_abi::FLAG_SVE_VQ_SHIFT`]), the VM gets the least of
//! that, the hypervisor's cap ([`VQ_CAP`], the storage `arch::sve` has
//! room for) and the CPU's largest length ([`cpu_max_vq`], probed at each
//! CPU's boot by `vcpu::sve::probe`). The VM keeps it in its metadata
//! (`vm::control::VmMeta::sve_vq`); its vCPUs run, and their SVE state is
//! saved and loaded, with ZCR_EL2.LEN = vq - 1 (`vcpu::sve`), and a vCPU's
//! ZCR_EL1 starts at the same LEN. Pure but for the probed maximum;
//! host-tested.
//!
//! Lengths are powers of two: the Arm ARM requires an SVE CPU to implement
//! every power-of-two length up to its largest, so the least of three
//! powers of two is one the CPU implements, and what the VM gets is exactly
//! what it reads back with RDVL. Other lengths may not be implemented (the
//! CPU would give the next smaller one), so a request for one is refused.

use crate::arch::sve::VL_MAX_BYTES;
use core::sync::atomic::{AtomicU8, Ordering};
use hyp_abi::{HostError, FLAG_SVE_VQ_MASK, FLAG_SVE_VQ_SHIFT};

/// The hypervisor's cap in quadwords (4: 512 bits).
pub const VQ_CAP: u8 = (VL_MAX_BYTES / 16) as u8;

/// The architecture's largest vector length in quadwords (2048 bits).
pub const VQ_ARCH_MAX: u64 = 16;

/// The largest power-of-two vector length, in quadwords, every CPU probed
/// so far implements (at most [`VQ_CAP`]): lowered by [`note_cpu_vl`].
static CPU_MAX_VQ: AtomicU8 = AtomicU8::new(VQ_CAP);

/// What the CPUs implement, in quadwords, capped at [`VQ_CAP`].
#[must_use]
pub fn cpu_max_vq() -> u8 {
    CPU_MAX_VQ.load(Ordering::Relaxed)
}

/// A CPU's largest vector length, `bytes` (RDVL at EL2 with ZCR_EL2.LEN =
/// 15), lowers [`cpu_max_vq`] to its largest power of two in quadwords if
/// it is smaller. CPUs whose lengths differ would make a vCPU's length
/// depend on where it runs, so the machine offers what all of them have.
pub fn note_cpu_vl(bytes: usize) {
    CPU_MAX_VQ.fetch_min(pow2_floor_vq(bytes), Ordering::Relaxed);
}

/// The largest power of two not above `bytes / 16`, at least 1 (every SVE
/// CPU has 128-bit vectors).
#[must_use]
pub const fn pow2_floor_vq(bytes: usize) -> u8 {
    let q = bytes / 16;
    if q <= 1 {
        1
    } else if q >= 1 << 7 {
        1 << 7
    } else {
        1 << (usize::BITS - 1 - q.leading_zeros())
    }
}

/// The vector length, in quadwords, a VM created with VM_CREATE `flags`
/// gets on CPUs that implement up to `cpu_vq` (a power of two): the
/// request's field (0: the cap) against [`VQ_CAP`] and `cpu_vq`.
///
/// # Errors
///
/// [`HostError::Invalid`] for a request that is not a power of two up to
/// [`VQ_ARCH_MAX`]. (Bits outside the field are VM_CREATE's to check.)
pub const fn choose(flags: u64, cpu_vq: u8) -> Result<u8, HostError> {
    let req = (flags & FLAG_SVE_VQ_MASK) >> FLAG_SVE_VQ_SHIFT;
    if req > VQ_ARCH_MAX || (req != 0 && !req.is_power_of_two()) {
        return Err(HostError::Invalid);
    }
    let mut vq = VQ_CAP;
    if req != 0 && (req as u8) < vq {
        vq = req as u8;
    }
    if cpu_vq < vq {
        vq = cpu_vq;
    }
    Ok(vq)
}

/// ZCR_ELx.LEN for `vq` quadwords (bits [3:0]).
#[must_use]
pub const fn len(vq: u8) -> u64 {
    (vq as u64).saturating_sub(1) & 0xf
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyp_abi::flag_sve_vq;

    #[test]
    fn zero_asks_for_the_cap() {
        assert_eq!(choose(0, 4), Ok(4));
        assert_eq!(choose(hyp_abi::FLAG_PROTECTED, 4), Ok(4));
        assert_eq!(choose(0, 16), Ok(VQ_CAP), "the CPU's 2048 bits are capped");
        assert_eq!(choose(0, 2), Ok(2), "a 256-bit CPU gives 256");
    }

    #[test]
    fn the_least_of_request_cap_and_cpu() {
        for (req, cpu, want) in [
            (1, 4, 1),
            (2, 4, 2),
            (4, 4, 4),
            (8, 4, 4),
            (16, 4, 4),
            (16, 16, 4),
            (4, 2, 2),
            (1, 1, 1),
            (2, 1, 1),
        ] {
            assert_eq!(
                choose(flag_sve_vq(req), cpu),
                Ok(want),
                "req {req}, cpu {cpu}"
            );
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        for req in [3, 5, 6, 7, 9, 12, 15, 17, 24, 31] {
            assert_eq!(
                choose(flag_sve_vq(req), 4),
                Err(HostError::Invalid),
                "{req}"
            );
        }
        // Past the field: not this function's bits (VM_CREATE refuses them).
        assert_eq!(choose(flag_sve_vq(32), 4), Ok(4));
    }

    #[test]
    fn probed_lengths_round_down_to_a_power_of_two() {
        assert_eq!(pow2_floor_vq(16), 1);
        assert_eq!(pow2_floor_vq(0), 1);
        assert_eq!(pow2_floor_vq(32), 2);
        assert_eq!(
            pow2_floor_vq(48),
            2,
            "384 bits: 256 is the largest power of two"
        );
        assert_eq!(pow2_floor_vq(64), 4);
        assert_eq!(pow2_floor_vq(256), 16);
    }

    #[test]
    fn zcr_len_is_quadwords_minus_one() {
        assert_eq!(len(1), 0);
        assert_eq!(len(4), 3);
        assert_eq!(len(16), 15);
        assert_eq!(len(0), 0);
    }
}
