//! Address and size newtypes: the unit is in the type, never a bare `u64` at the API.

use core::fmt;

/// Size of a translation granule (4 KiB) in bytes.
pub const PAGE_SIZE: u64 = 4096;
/// Largest output address we produce: 48-bit PA (4 KiB granule without FEAT_LPA2).
pub const MAX_PA_BITS: u32 = 48;

macro_rules! addr_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Whether the address is aligned to `align` (a power of two).
            #[must_use]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

addr_type!(
    /// Intermediate physical address (stage-2 input address).
    Ipa
);
addr_type!(
    /// Physical address (output address of the last stage).
    Pa
);
addr_type!(
    /// Virtual address (EL2 stage-1 input address, or a hypervisor pointer value).
    Va
);
