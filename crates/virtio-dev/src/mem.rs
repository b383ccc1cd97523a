//! Guest memory as the device reaches it.

/// A guest address the host could not access: outside the guest's RAM, or a page the
/// hypervisor refused (the abort was caught, nothing crashed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The guest IPA of the access (its first byte, or the first byte of the refused page).
    pub ipa: u64,
}

/// The guest's memory at guest IPAs, as the host reaches it.
///
/// The host implements it over the RAM it gave the guest; a protected guest's private pages
/// are refused by the hypervisor, and the implementation must turn that refusal into a
/// [`Fault`] rather than crash. Methods take `&self`: an implementation over raw guest memory
/// needs no exclusive borrow, and a fake one uses interior mutability.
///
/// The driver updates the ring indexes while the device reads them (on another vCPU), so the
/// two 16-bit accessors must each be one single-copy-atomic access of a naturally aligned
/// halfword (one `ldrh`/`strh`); the queue code only calls them at 2-byte aligned addresses
/// (virtio 1.2 2.7: the driver area is 2-byte aligned, the device area 4-byte aligned).
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at `ipa`.
    ///
    /// # Errors
    ///
    /// [`Fault`] if any byte is not accessible (`buf` may then be partly written).
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), Fault>;

    /// Writes `data` at `ipa`.
    ///
    /// # Errors
    ///
    /// [`Fault`] if any byte is not accessible (a prefix may have been written).
    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), Fault>;

    /// One single-copy-atomic load of the little-endian halfword at `ipa` (2-byte aligned).
    ///
    /// # Errors
    ///
    /// [`Fault`] if it is not accessible.
    fn read_u16(&self, ipa: u64) -> Result<u16, Fault>;

    /// One single-copy-atomic store of `value` as a little-endian halfword at `ipa`
    /// (2-byte aligned).
    ///
    /// # Errors
    ///
    /// [`Fault`] if it is not accessible.
    fn write_u16(&self, ipa: u64, value: u16) -> Result<(), Fault>;
}
