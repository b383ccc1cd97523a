//! Descriptor encodings (VMSAv8-64, 4 KiB granule) for the two regimes this crate builds.
//!
//! Common layout of a block/page descriptor:
//!
//! | bits    | meaning                                                                    |
//! |---------|----------------------------------------------------------------------------|
//! | 0       | valid                                                                      |
//! | 1       | 1 = table (levels 0-2) or page (level 3); 0 = block (levels 1-2)           |
//! | 5:2     | stage 2: MemAttr\[3:0\]; EL2 stage 1: AttrIndx\[2:0\] (bits 4:2), NS (bit 5)   |
//! | 7:6     | stage 2: S2AP (bit 6 read, bit 7 write); EL2: AP\[2:1\] (01 RW, 11 RO)       |
//! | 9:8     | SH, always Inner Shareable (0b11)                                          |
//! | 10      | AF, always set (no hardware access-flag management)                        |
//! | 47:12   | output address                                                             |
//! | 54      | stage 2: XN\[1\] (execute never at EL1 and EL0); EL2: XN                  |
//! | 56:55   | software: page state, see [`PageState`]                                    |
//!
//! **Invalid entries** (bit 0 = 0) are ignored by hardware; this crate uses bits \[17:2\] of an
//! invalid entry as an *owner annotation* (pKVM's `KVM_INVALID_PTE_OWNER_MASK` idea, widened
//! from its 8 bits to 16 so that every 16-bit VMID's VM can own pages), see
//! [`OwnerId`]. An invalid entry at any level carries the annotation for its whole range. The
//! value 0 (owner 0 = the entry's own component) means "plain unmapped".
//!
//! **Stage-2 memory attributes** (`MemAttr`, bits 5:2), as KVM encodes them:
//!
//! | memory            | without FEAT_S2FWB | with FEAT_S2FWB (HCR_EL2.FWB=1) |
//! |-------------------|--------------------|---------------------------------|
//! | Normal write-back | 0b1111             | 0b0110 (forced write-back)      |
//! | Device-nGnRE      | 0b0001             | 0b0001                          |
//!
//! **EL2 stage-1**: AttrIndx selects a `MAIR_EL2` byte, see [`El2Format::MAIR_EL2`].

use crate::Error;

pub(crate) const VALID: u64 = 1 << 0;
pub(crate) const TABLE_OR_PAGE: u64 = 1 << 1;
pub(crate) const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;
pub(crate) const AF: u64 = 1 << 10;
pub(crate) const SH_INNER: u64 = 0b11 << 8;
pub(crate) const XN: u64 = 1 << 54;
/// Software bits holding the page state.
pub(crate) const STATE_SHIFT: u32 = 55;
pub(crate) const STATE_MASK: u64 = 0b11 << STATE_SHIFT;
pub(crate) const OWNER_SHIFT: u32 = 2;
pub(crate) const OWNER_MASK: u64 = 0xffff << OWNER_SHIFT;

const S2_MEMATTR_MASK: u64 = 0b1111 << 2;
const S2_MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
const S2_MEMATTR_FWB_NORMAL_WB: u64 = 0b0110 << 2;
const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << 2;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;

const EL2_ATTRIDX_MASK: u64 = 0b111 << 2;
const EL2_AP_RO: u64 = 0b11 << 6;
const EL2_AP_RW: u64 = 0b01 << 6;
const EL2_AP_MASK: u64 = 0b11 << 6;

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal memory, inner and outer write-back cacheable (RAM).
    Normal,
    /// Device-nGnRE (MMIO).
    Device,
}

/// Access permissions of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Perms {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Perms {
    /// Read-only, execute-never.
    pub const RO: Self = Self {
        read: true,
        write: false,
        exec: false,
    };
    /// Read/write, execute-never.
    pub const RW: Self = Self {
        read: true,
        write: true,
        exec: false,
    };
    /// Read and execute.
    pub const RX: Self = Self {
        read: true,
        write: false,
        exec: true,
    };
    /// Read, write and execute (stage 2 only).
    pub const RWX: Self = Self {
        read: true,
        write: true,
        exec: true,
    };
}

/// Memory type plus permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// Memory type.
    pub mem: MemType,
    /// Permissions.
    pub perms: Perms,
}

impl Attrs {
    /// Normal RAM, read/write/execute.
    pub const RAM_RWX: Self = Self {
        mem: MemType::Normal,
        perms: Perms::RWX,
    };
    /// Normal RAM, read/write, execute-never.
    pub const RAM_RW: Self = Self {
        mem: MemType::Normal,
        perms: Perms::RW,
    };
    /// Device memory, read/write, execute-never.
    pub const DEVICE_RW: Self = Self {
        mem: MemType::Device,
        perms: Perms::RW,
    };
}

/// Ownership state of a mapped page, from the point of view of the table's component.
///
/// Encoded in software bits \[56:55\] of a valid leaf, as pKVM does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// `0b00`: exclusively owned and accessible.
    Owned,
    /// `0b01`: owned, and shared with another component.
    SharedOwned,
    /// `0b10`: owned by another component, which shared (or lent) it with us.
    SharedBorrowed,
}

impl PageState {
    pub(crate) const fn bits(self) -> u64 {
        (match self {
            Self::Owned => 0b00u64,
            Self::SharedOwned => 0b01,
            Self::SharedBorrowed => 0b10,
        }) << STATE_SHIFT
    }

    pub(crate) fn from_desc(desc: u64) -> Self {
        match (desc & STATE_MASK) >> STATE_SHIFT {
            0b00 => Self::Owned,
            0b01 => Self::SharedOwned,
            0b10 => Self::SharedBorrowed,
            // Only this crate writes these bits, and never 0b11.
            _ => panic!("s2mm: corrupt page-state bits in descriptor {desc:#x}"),
        }
    }
}

/// Owner annotation stored in an invalid entry (bits \[17:2\]): the page belongs to component
/// `OwnerId(n)`. `OwnerId(0)` is "no annotation" (plain unmapped).
///
/// hyp-core assigns the numbers (e.g. 1 = hypervisor, 2.. = guests); this crate only stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u16);

impl OwnerId {
    /// The invalid descriptor carrying this annotation.
    #[must_use]
    pub const fn invalid_desc(self) -> u64 {
        (self.0 as u64) << OWNER_SHIFT
    }
}

/// A descriptor format: how one regime encodes leaves. Implemented by [`Stage2Format`] and
/// [`El2Format`]; the walker is generic over it.
pub trait Format {
    /// Leaf bits other than the output address, valid and type bits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAttrs`] when the regime cannot express `attrs`.
    fn leaf_bits(&self, attrs: Attrs, state: PageState) -> Result<u64, Error>;
    /// Permission bits for `perms` (a subset of [`Format::perm_mask`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAttrs`] when the regime cannot express `perms`.
    fn perm_bits(&self, perms: Perms) -> Result<u64, Error>;
    /// Mask of the permission bits.
    fn perm_mask(&self) -> u64;
    /// Decodes a valid leaf's attributes.
    fn decode(&self, desc: u64) -> Attrs;
    /// Whether going from leaf `old` to leaf `new` (same OA and memory type) removes any access.
    fn is_restriction(&self, old: u64, new: u64) -> bool;
    /// Whether a new cacheable mapping of this leaf needs D-cache maintenance to PoC first.
    fn needs_cmo(&self, desc: u64) -> bool;
}

/// Whether replacing valid leaf `old` by valid leaf `new` needs break-before-make
/// (\[ARM\] D8.17.1 R_WHZWS): anything except S2AP/AP, XN, AF and software bits changed.
pub(crate) fn requires_bbm(old: u64, new: u64, perm_mask: u64) -> bool {
    let allowed = perm_mask | XN | AF | STATE_MASK;
    (old ^ new) & !allowed != 0
}

/// Stage-2 descriptor format.
#[derive(Clone, Copy, Debug)]
pub struct Stage2Format {
    /// FEAT_S2FWB present and HCR_EL2.FWB set: use the forced-write-back encodings.
    pub fwb: bool,
    /// VMID the tables belong to (for TLB maintenance).
    pub vmid: u16,
}

impl Format for Stage2Format {
    fn leaf_bits(&self, attrs: Attrs, state: PageState) -> Result<u64, Error> {
        let mem = match (attrs.mem, self.fwb) {
            (MemType::Normal, false) => S2_MEMATTR_NORMAL_WB,
            (MemType::Normal, true) => S2_MEMATTR_FWB_NORMAL_WB,
            (MemType::Device, _) => S2_MEMATTR_DEVICE_NGNRE,
        };
        Ok(mem | SH_INNER | AF | self.perm_bits(attrs.perms)? | state.bits())
    }

    fn perm_bits(&self, p: Perms) -> Result<u64, Error> {
        let mut b = 0;
        if p.read {
            b |= S2AP_R;
        }
        if p.write {
            b |= S2AP_W;
        }
        if !p.exec {
            b |= XN;
        }
        Ok(b)
    }

    fn perm_mask(&self) -> u64 {
        S2AP_R | S2AP_W | XN
    }

    fn decode(&self, d: u64) -> Attrs {
        let mem = if d & S2_MEMATTR_MASK == S2_MEMATTR_DEVICE_NGNRE {
            MemType::Device
        } else {
            MemType::Normal
        };
        Attrs {
            mem,
            perms: Perms {
                read: d & S2AP_R != 0,
                write: d & S2AP_W != 0,
                exec: d & XN == 0,
            },
        }
    }

    fn is_restriction(&self, old: u64, new: u64) -> bool {
        let lost = (old & (S2AP_R | S2AP_W)) & !new;
        let gained_xn = new & XN & !old;
        lost != 0 || gained_xn != 0
    }

    fn needs_cmo(&self, desc: u64) -> bool {
        !self.fwb && desc & S2_MEMATTR_MASK == S2_MEMATTR_NORMAL_WB
    }
}

/// EL2 stage-1 descriptor format (HCR_EL2.E2H = 0: one VA range, no EL0).
#[derive(Clone, Copy, Debug, Default)]
pub struct El2Format;

impl El2Format {
    /// `MAIR_EL2`: Attr0 = Normal inner/outer write-back read/write-allocate (0xff),
    /// Attr1 = Device-nGnRE (0x04), Attr2 = Normal non-cacheable (0x44).
    pub const MAIR_EL2: u64 = 0xff | (0x04 << 8) | (0x44 << 16);
    const IDX_NORMAL: u64 = 0 << 2;
    const IDX_DEVICE: u64 = 1 << 2;
}

impl Format for El2Format {
    fn leaf_bits(&self, attrs: Attrs, state: PageState) -> Result<u64, Error> {
        let idx = match attrs.mem {
            MemType::Normal => Self::IDX_NORMAL,
            MemType::Device => {
                if attrs.perms.exec {
                    return Err(Error::InvalidAttrs);
                }
                Self::IDX_DEVICE
            }
        };
        Ok(idx | SH_INNER | AF | self.perm_bits(attrs.perms)? | state.bits())
    }

    fn perm_bits(&self, p: Perms) -> Result<u64, Error> {
        match (p.read, p.write, p.exec) {
            (true, true, false) => Ok(EL2_AP_RW | XN),
            (true, false, false) => Ok(EL2_AP_RO | XN),
            (true, false, true) => Ok(EL2_AP_RO),
            // W^X, and EL2 has no write-only or no-access valid mappings.
            _ => Err(Error::InvalidAttrs),
        }
    }

    fn perm_mask(&self) -> u64 {
        EL2_AP_MASK | XN
    }

    fn decode(&self, d: u64) -> Attrs {
        let mem = if d & EL2_ATTRIDX_MASK == Self::IDX_DEVICE {
            MemType::Device
        } else {
            MemType::Normal
        };
        Attrs {
            mem,
            perms: Perms {
                read: true,
                write: d & EL2_AP_MASK == EL2_AP_RW,
                exec: d & XN == 0,
            },
        }
    }

    fn is_restriction(&self, old: u64, new: u64) -> bool {
        let lost_write = old & EL2_AP_MASK == EL2_AP_RW && new & EL2_AP_MASK != EL2_AP_RW;
        let gained_xn = new & XN & !old != 0;
        lost_write || gained_xn
    }

    fn needs_cmo(&self, _desc: u64) -> bool {
        false
    }
}
