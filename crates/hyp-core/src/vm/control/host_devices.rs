//! Device windows in the host's stage 2: the PCIe configuration space and
//! BAR windows the host's drivers need (`vm::state::map_host_devices`),
//! mapped by identity as Device memory. Only at boot, once an SMMU confines
//! what those devices can reach; never RAM, never an address the host's RAM
//! covers.

use super::{s2err, Control, HostError, HostResult, PhysMem, VmExtra, GUEST_IPA_BITS};
use crate::vm::memcache::HypAlloc;
use barriers::vttbr::Vttbr;
use s2mm::{Attrs, Ipa, Pa, PageState, PAGE_SIZE};

impl<A: HypAlloc, M: PhysMem, X: VmExtra> Control<A, M, X> {
    /// Maps `[pa, pa + size)` into the host's stage 2 at the same address,
    /// as Device-nGnRE read/write.
    ///
    /// # Errors
    ///
    /// [`HostError::Invalid`] for an unaligned or empty range;
    /// [`HostError::Range`] for one past the host's IPA space or touching
    /// its RAM; [`HostError::NoMemory`] when the pool has no table.
    pub fn map_host_device(&self, v: &mut Vttbr, pa: u64, size: u64) -> HostResult<()> {
        if size == 0 || !pa.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(HostError::Invalid);
        }
        let end = pa.checked_add(size).ok_or(HostError::Range)?;
        if end > 1 << GUEST_IPA_BITS || (pa < self.host_ram.end() && self.host_ram.base < end) {
            return Err(HostError::Range);
        }
        let mut host = self.host.lock();
        let mut alloc = self.alloc.clone();
        host.s2
            .map(
                &mut alloc,
                v,
                Ipa(pa),
                Pa(pa),
                size,
                Attrs::DEVICE_RW,
                PageState::Owned,
            )
            .map(|_| ())
            .map_err(s2err)
    }
}
