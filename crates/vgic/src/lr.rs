//! List registers: an encoding-independent [`Lr`] and its two hardware encodings.
//!
//! A list register presents one virtual interrupt to the guest's virtual CPU interface. The
//! hardware moves it from pending to active when the guest acknowledges it, and clears the active
//! state when the guest deactivates it (EOI with EOImode 0, or DIR with EOImode 1).
//!
//! Layouts (GIC architecture specification IHI 0069, "ICH_LR<n>_EL2"; IHI 0048B, "GICH_LRn"; the
//! same fields as Linux's `include/linux/irqchip/arm-gic-v3.h` and `arm-gic.h`):
//!
//! | field | GICv3 `ICH_LR<n>_EL2` (64-bit) | GICv2 `GICH_LR<n>` (32-bit) |
//! |---|---|---|
//! | virtual INTID | \[31:0\] | \[9:0\] |
//! | physical INTID (HW = 1) | \[44:32\] | \[19:10\] |
//! | EOI maintenance (HW = 0) | \[41\] | \[19\] |
//! | SGI source CPU (HW = 0) | — | \[12:10\] |
//! | priority | \[55:48\] (8 bits) | \[27:23\] (top 5 bits) |
//! | group 1 | \[60\] | \[30\] |
//! | HW | \[61\] | \[31\] |
//! | state (1 = pending, 2 = active) | \[63:62\] | \[29:28\] |

/// The state of a list register. Each variant's value is the register's two state bits (bit 0
/// pending, bit 1 active: the same in both encodings), so converting to and from them is a mask,
/// not a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LrState {
    /// Empty (or the interrupt was deactivated).
    Invalid = 0,
    /// Pending.
    Pending = 1,
    /// Active (acknowledged, not yet deactivated).
    Active = 2,
    /// Active and pending again (edge-triggered, re-asserted while active).
    PendingActive = 3,
}

impl LrState {
    /// From the pending and active bits.
    pub const fn new(pending: bool, active: bool) -> Self {
        Self::from_bits(pending as u64 | (active as u64) << 1)
    }

    /// Whether the pending bit is set.
    pub const fn pending(self) -> bool {
        self as u8 & 1 != 0
    }

    /// Whether the active bit is set.
    pub const fn active(self) -> bool {
        self as u8 & 2 != 0
    }

    const fn bits(self) -> u64 {
        self as u64
    }

    /// The state of bits \[1:0\] of `b` (higher bits ignored).
    const fn from_bits(b: u64) -> Self {
        // Each arm maps a value to the variant of that value: the compiler drops the match.
        match b & 3 {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }
}

/// One list register, independent of the GIC version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lr {
    /// The virtual INTID the guest sees.
    pub vintid: u32,
    /// Pending/active state.
    pub state: LrState,
    /// Priority (8-bit; GICv2 keeps the top 5 bits).
    pub priority: u8,
    /// Group 1 (else group 0).
    pub group1: bool,
    /// Ask for a maintenance interrupt when the guest deactivates it.
    pub eoi_maint: bool,
    /// GICv2 SGIs: the sending CPU (GICv3 has no such field; ignored there).
    pub source: u8,
    /// Hardware-linked (HW = 1): the physical INTID the guest's deactivation of this virtual
    /// interrupt deactivates (IHI 0069, "ICH_LR<n>_EL2": pINTID; IHI 0048B 5.3.10 "GICH_LRn":
    /// PhysicalID). `eoi_maint` and `source` share its bits and are ignored when it is set.
    /// Never 0: a hardware-linked interrupt is an SPI or PPI (IHI 0069: pINTID 0..15 is
    /// reserved), so the field costs no more than the flags beside it.
    pub hw: Option<core::num::NonZeroU16>,
}

impl Lr {
    /// An empty list register.
    pub const EMPTY: Lr = Lr {
        vintid: 0,
        state: LrState::Invalid,
        priority: 0,
        group1: false,
        eoi_maint: false,
        source: 0,
        hw: None,
    };

    /// GICv3 `ICH_LR<n>_EL2` encoding.
    pub const fn encode_v3(&self) -> u64 {
        let link = match self.hw {
            Some(p) => (1 << 61) | ((p.get() as u64 & 0x1fff) << 32),
            None => (self.eoi_maint as u64) << 41,
        };
        self.vintid as u64
            | link
            | ((self.priority as u64) << 48)
            | ((self.group1 as u64) << 60)
            | (self.state.bits() << 62)
    }

    /// Decodes a GICv3 `ICH_LR<n>_EL2` value.
    pub const fn decode_v3(v: u64) -> Lr {
        let hw = v & (1 << 61) != 0;
        Lr {
            vintid: v as u32,
            state: LrState::from_bits(v >> 62),
            priority: (v >> 48) as u8,
            group1: v & (1 << 60) != 0,
            eoi_maint: !hw && v & (1 << 41) != 0,
            source: 0,
            hw: if hw {
                core::num::NonZeroU16::new(((v >> 32) & 0x1fff) as u16)
            } else {
                None
            },
        }
    }

    /// GICv2 `GICH_LR<n>` encoding (priority keeps its top 5 bits).
    pub const fn encode_v2(&self) -> u32 {
        let link = match self.hw {
            Some(p) => (1 << 31) | ((p.get() as u32 & 0x3ff) << 10),
            None => (((self.source & 7) as u32) << 10) | ((self.eoi_maint as u32) << 19),
        };
        (self.vintid & 0x3ff)
            | link
            | (((self.priority >> 3) as u32) << 23)
            | ((self.state.bits() as u32) << 28)
            | ((self.group1 as u32) << 30)
    }

    /// Decodes a GICv2 `GICH_LR<n>` value.
    pub const fn decode_v2(v: u32) -> Lr {
        let hw = v & (1 << 31) != 0;
        Lr {
            vintid: v & 0x3ff,
            state: LrState::from_bits((v >> 28) as u64),
            priority: (((v >> 23) & 0x1f) << 3) as u8,
            group1: v & (1 << 30) != 0,
            eoi_maint: !hw && v & (1 << 19) != 0,
            source: if hw { 0 } else { ((v >> 10) & 7) as u8 },
            hw: if hw {
                core::num::NonZeroU16::new(((v >> 10) & 0x3ff) as u16)
            } else {
                None
            },
        }
    }
}

/// `ICH_HCR_EL2` / `GICH_HCR` bits (the low byte is the same in both versions).
pub mod hcr {
    /// Virtual CPU interface enable.
    pub const EN: u32 = 1 << 0;
    /// Underflow: maintenance interrupt while at most one list register is valid.
    pub const UIE: u32 = 1 << 1;
    /// List register entry not present: maintenance while EOIcount is non-zero.
    pub const LRENPIE: u32 = 1 << 2;
    /// No pending: maintenance while no list register is pending.
    pub const NPIE: u32 = 1 << 3;
}

/// `ICH_VMCR_EL2` / `GICH_VMCR` fields the vGIC reads.
pub mod vmcr {
    use crate::Version;

    /// EOImode (VEOIM in v3, VEM in v2): bit 9 in both.
    pub const EOIM: u32 = 1 << 9;

    /// The guest's priority mask (8-bit scale). v3: VPMR \[31:24\]; v2: VMPriMask \[31:27\]
    /// (5 bits, the top of an 8-bit priority).
    pub const fn pmr(version: Version, vmcr: u32) -> u8 {
        match version {
            Version::V3 => (vmcr >> 24) as u8,
            Version::V2 => (((vmcr >> 27) & 0x1f) << 3) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::num::NonZeroU16;

    const V3_SAMPLE: Lr = Lr {
        vintid: 27,
        state: LrState::Pending,
        priority: 0xa0,
        group1: true,
        eoi_maint: true,
        source: 0,
        hw: None,
    };

    #[test]
    fn v3_hand_checked_patterns() {
        // State 01 (bits 63:62), Group 1 (bit 60), priority 0xa0 (55:48), EOI (41), vINTID 27.
        assert_eq!(V3_SAMPLE.encode_v3(), 0x50a0_0200_0000_001b);
        assert_eq!(Lr::decode_v3(0x50a0_0200_0000_001b), V3_SAMPLE);
        // Active + pending (11), group 1, priority 0x80, no EOI maintenance.
        let pa = Lr {
            vintid: 27,
            state: LrState::PendingActive,
            priority: 0x80,
            group1: true,
            eoi_maint: false,
            source: 0,
            hw: None,
        };
        assert_eq!(pa.encode_v3(), 0xd080_0000_0000_001b);
        assert_eq!(Lr::decode_v3(0xd080_0000_0000_001b), pa);
        // Active only, group 0, priority 0, vINTID 8192 (beyond GICv2's 10 bits).
        let a = Lr {
            vintid: 8192,
            state: LrState::Active,
            ..Lr::EMPTY
        };
        assert_eq!(a.encode_v3(), 0x8000_0000_0000_2000);
        assert_eq!(Lr::EMPTY.encode_v3(), 0);
    }

    #[test]
    fn v2_hand_checked_patterns() {
        // SGI 3 from CPU 2: pending (bit 28), priority 0xa0 >> 3 = 0x14 in 27:23, source in 12:10.
        let sgi = Lr {
            vintid: 3,
            state: LrState::Pending,
            priority: 0xa0,
            group1: false,
            eoi_maint: false,
            source: 2,
            hw: None,
        };
        assert_eq!(sgi.encode_v2(), 0x1a00_0803);
        assert_eq!(Lr::decode_v2(0x1a00_0803), sgi);
        // Active (29), group 1 (30), priority 0xf8, vINTID 27.
        let a = Lr {
            vintid: 27,
            state: LrState::Active,
            priority: 0xf8,
            group1: true,
            eoi_maint: false,
            source: 0,
            hw: None,
        };
        assert_eq!(a.encode_v2(), 0x6f80_001b);
        assert_eq!(Lr::decode_v2(0x6f80_001b), a);
        // EOI maintenance bit 19, SPI 40.
        let eoi = Lr {
            vintid: 40,
            state: LrState::Pending,
            eoi_maint: true,
            ..Lr::EMPTY
        };
        assert_eq!(eoi.encode_v2(), 0x1008_0028);
        // v2 keeps only the top 5 priority bits.
        let low = Lr {
            priority: 0x07,
            ..eoi
        };
        assert_eq!(Lr::decode_v2(low.encode_v2()).priority, 0);
    }

    #[test]
    fn hardware_linked_patterns() {
        // v3: pending (63:62 = 01), group 1 (60), HW (61), priority 0x80, pINTID 35 in 44:32,
        // vINTID 35; the EOI bit (41) is part of pINTID and not set from `eoi_maint`.
        let l = Lr {
            vintid: 35,
            state: LrState::Pending,
            priority: 0x80,
            group1: true,
            eoi_maint: true,
            source: 5,
            hw: NonZeroU16::new(35),
        };
        assert_eq!(l.encode_v3(), 0x7080_0023_0000_0023);
        let back = Lr::decode_v3(0x7080_0023_0000_0023);
        assert_eq!(back.hw, NonZeroU16::new(35));
        assert!(!back.eoi_maint);
        // pINTID 0x1fff fills 44:32 and no more (bit 45 up is reserved, 48 up priority).
        let wide = Lr {
            hw: NonZeroU16::new(0xffff),
            ..Lr::EMPTY
        };
        assert_eq!(wide.encode_v3(), (1 << 61) | (0x1fff << 32));
        // v2: HW (31), pINTID 35 in 19:10, pending (28), group 1 (30), priority 0x80 >> 3.
        let v2 = Lr { source: 0, ..l };
        assert_eq!(v2.encode_v2(), 0xd800_8c23);
        assert_eq!(Lr::decode_v2(0xd800_8c23).hw, NonZeroU16::new(35));
        assert_eq!(Lr::decode_v2(0xd800_8c23).source, 0);
    }

    #[test]
    fn vmcr_priority_mask() {
        assert_eq!(vmcr::pmr(crate::Version::V3, 0xf000_0000), 0xf0);
        assert_eq!(vmcr::pmr(crate::Version::V2, 0xf800_0000), 0xf8);
        assert_eq!(vmcr::pmr(crate::Version::V2, 0x0800_0000), 0x08);
    }
}
