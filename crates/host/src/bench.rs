//! What the benchmarks (`cargo xtask bench`, guest-bench) need from the
//! host: memory given with [`hyp_abi::MEM_FLAG_LAZY`] (guest option
//! `lazy`), so the guest's stage 2 is filled on demand and `s2_fault` has
//! faults to measure.

use hyp_abi::HostError;

/// MEM_DONATE (protected) or MEM_LEND of `pages` pages at `pa` to VM
/// `handle` at `ipa`; with `lazy`, mapped for the guest page by page on
/// first touch.
pub fn give(
    handle: u64,
    pa: u64,
    ipa: u64,
    pages: u64,
    protected: bool,
    lazy: bool,
) -> Result<u64, HostError> {
    let fid = if protected {
        hyp_abi::MEM_DONATE
    } else {
        hyp_abi::MEM_LEND
    };
    let mut args = [0u64; 17];
    args[..5].copy_from_slice(&[
        handle,
        pa,
        ipa,
        pages,
        u64::from(lazy) * hyp_abi::MEM_FLAG_LAZY,
    ]);
    let x0 = <smccc::Hvc as smccc::Call>::call64(fid, args)[0];
    match HostError::from_code(x0) {
        Some(e) => Err(e),
        None => Ok(x0),
    }
}
