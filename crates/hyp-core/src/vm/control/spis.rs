//! The interrupts the host's emulated devices raise in a VM: which SPIs the
//! host may drive (IRQ_DECLARE, before the VM first runs) and the check
//! IRQ_LINE makes before it touches the vGIC (`vm::devices::irq_line`).
//!
//! A host that could set any INTID could fake the guest's timer (PPI 27),
//! its PMU (PPI 23), another vCPU's SGIs, or the interrupt of a device the
//! hypervisor assigned to the VM, and make the guest act on events that
//! never happened. So the host names its devices' SPIs before the guest
//! runs, as crosvm and QEMU fix a VM's interrupt map at creation, and every
//! other INTID is refused.

use super::{Control, HostError, HostResult, PhysMem, VmExtra, VmMeta};
use crate::vm::memcache::HypAlloc;

/// First SPI INTID.
pub const FIRST_SPI: u64 = 32;
/// SPIs a VM's devices may use: the vGIC's (`vgic::NR_SPIS`).
pub const DEVICE_SPIS: u64 = 64;
const _: () = assert!(
    DEVICE_SPIS as usize == vgic::NR_SPIS,
    "one bit per vGIC SPI"
);

/// The bit of `intid` in [`VmMeta::device_spis`], or `Invalid` for an SGI,
/// a PPI or an INTID past the vGIC's SPIs.
fn spi_bit(intid: u64) -> HostResult<u64> {
    if !(FIRST_SPI..FIRST_SPI + DEVICE_SPIS).contains(&intid) {
        return Err(HostError::Invalid);
    }
    Ok(1 << (intid - FIRST_SPI))
}

impl VmMeta {
    /// IRQ_DECLARE on this VM. `reserved`: the INTIDs of the board's
    /// assignable devices, which only DEVICE_ASSIGN routes.
    fn declare_spi(&mut self, intid: u64, reserved: &[u32]) -> HostResult<()> {
        let bit = spi_bit(intid)?;
        if reserved.iter().any(|r| u64::from(*r) == intid) {
            return Err(HostError::Denied);
        }
        if self.has_run {
            return Err(HostError::State);
        }
        self.device_spis |= bit;
        Ok(())
    }

    /// Whether the host declared `intid` (IRQ_LINE's check).
    fn spi_declared(&self, intid: u64) -> HostResult<()> {
        if self.device_spis & spi_bit(intid)? == 0 {
            return Err(HostError::Denied);
        }
        Ok(())
    }
}

impl<A: HypAlloc, M: PhysMem, X: VmExtra> Control<A, M, X> {
    /// IRQ_DECLARE(handle, intid): lets the host drive SPI `intid` of VM
    /// `handle` with IRQ_LINE. Only before any vCPU of the VM has run.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`]; [`HostError::Invalid`] for an INTID that is not
    /// one of the vGIC's SPIs; [`HostError::Denied`] for an assignable
    /// device's INTID (`reserved`); [`HostError::State`] once the VM ran.
    pub fn declare_spi(&self, handle: u64, intid: u64, reserved: &[u32]) -> HostResult<()> {
        self.vm(handle)?.declare_spi(intid, reserved)
    }

    /// Runs `f` with VM `handle`'s extra state if the host declared
    /// `intid` for it, under the VM's lock (so the VM stays alive and its
    /// declarations fixed meanwhile).
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`]; [`HostError::Invalid`] (not an SPI);
    /// [`HostError::Denied`] (not declared); what `f` returns.
    pub fn with_declared_spi<T>(
        &self,
        handle: u64,
        intid: u64,
        f: impl FnOnce(&VmMeta, &X) -> HostResult<T>,
    ) -> HostResult<T> {
        let vm = self.vm(handle)?;
        vm.spi_declared(intid)?;
        f(&vm, vm.extra())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spis_of_the_vgic() {
        assert_eq!(spi_bit(0), Err(HostError::Invalid)); // SGI
        assert_eq!(spi_bit(27), Err(HostError::Invalid)); // vtimer PPI
        assert_eq!(spi_bit(23), Err(HostError::Invalid)); // PMU PPI
        assert_eq!(spi_bit(31), Err(HostError::Invalid));
        assert_eq!(spi_bit(32), Ok(1));
        assert_eq!(spi_bit(95), Ok(1 << 63));
        assert_eq!(spi_bit(96), Err(HostError::Invalid));
        assert_eq!(spi_bit(u64::MAX), Err(HostError::Invalid));
    }
}
