//! The parts of an Arm SMMUv3 (IHI 0070) that the hypervisor programs, as pure
//! encodings: the register offsets, what the ID registers must offer, a
//! stream table entry that translates a stream through one stage-2 table, the
//! commands (invalidation, synchronisation), the queues' index arithmetic and
//! the event records the SMMU writes when it stops a transaction.
//!
//! The hypervisor owns the SMMU and gives every stream the host's stage 2 as
//! its own (pKVM's hypervisor-owned IOMMU model): a device the host programs
//! reaches exactly the memory the host's CPUs reach. The MMIO and memory side
//! is `hyp-core`'s (`arch/smmu.rs`); everything here is a value, so the host
//! tests check each field against the specification.
//!
//! Field positions: IHI 0070 section 5.2 (STE), 4.x (commands), 7.3 (event
//! records), 6.3 (registers); cross-checked with Linux's
//! `drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h`.
#![cfg_attr(not(test), no_std)]

/// Register offsets (IHI 0070 section 6.3), from the SMMU's base. The event
/// queue's PROD and CONS are in register page 1 (base + 64 KiB).
pub mod regs {
    /// SMMU_IDR0: features.
    pub const IDR0: u64 = 0x0;
    /// SMMU_IDR1: table and queue sizes.
    pub const IDR1: u64 = 0x4;
    /// SMMU_IDR5: granules, output address size.
    pub const IDR5: u64 = 0x14;
    /// SMMU_CR0: enables.
    pub const CR0: u64 = 0x20;
    /// SMMU_CR0ACK.
    pub const CR0ACK: u64 = 0x24;
    /// SMMU_CR1: table and queue memory attributes.
    pub const CR1: u64 = 0x28;
    /// SMMU_CR2.
    pub const CR2: u64 = 0x2c;
    /// SMMU_GBPA: what happens to traffic while the SMMU is disabled.
    pub const GBPA: u64 = 0x44;
    /// SMMU_GERROR.
    pub const GERROR: u64 = 0x60;
    /// SMMU_GERRORN.
    pub const GERRORN: u64 = 0x64;
    /// SMMU_STRTAB_BASE (64-bit).
    pub const STRTAB_BASE: u64 = 0x80;
    /// SMMU_STRTAB_BASE_CFG.
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    /// SMMU_CMDQ_BASE (64-bit).
    pub const CMDQ_BASE: u64 = 0x90;
    /// SMMU_CMDQ_PROD.
    pub const CMDQ_PROD: u64 = 0x98;
    /// SMMU_CMDQ_CONS.
    pub const CMDQ_CONS: u64 = 0x9c;
    /// SMMU_EVTQ_BASE (64-bit).
    pub const EVTQ_BASE: u64 = 0xa0;
    /// SMMU_EVTQ_PROD (page 1).
    pub const EVTQ_PROD: u64 = 0x1_00a8;
    /// SMMU_EVTQ_CONS (page 1).
    pub const EVTQ_CONS: u64 = 0x1_00ac;
    /// Size of the register frame the hypervisor maps (pages 0 and 1).
    pub const FRAME_SIZE: u64 = 0x2_0000;

    /// CR0.SMMUEN.
    pub const CR0_SMMUEN: u32 = 1 << 0;
    /// CR0.EVTQEN.
    pub const CR0_EVTQEN: u32 = 1 << 2;
    /// CR0.CMDQEN.
    pub const CR0_CMDQEN: u32 = 1 << 3;
    /// GBPA.ABORT: with the SMMU disabled, traffic is aborted, not passed.
    pub const GBPA_ABORT: u32 = 1 << 20;
    /// GBPA.Update: set with a new value; the SMMU clears it once applied.
    pub const GBPA_UPDATE: u32 = 1 << 31;
    /// CR2.RECINVSID: record C_BAD_STREAMID events.
    pub const CR2_RECINVSID: u32 = 1 << 1;
    /// CR2.PTM: private TLB maintenance (broadcast TLBIs from the PEs are
    /// ignored; the hypervisor invalidates with commands).
    pub const CR2_PTM: u32 = 1 << 2;
    /// CR1 value: tables and queues Inner Shareable, Write-Back cacheable
    /// (SH = 0b11, OC = IC = 0b01 for both).
    pub const CR1_WB_ISH: u32 = (3 << 10) | (1 << 8) | (1 << 6) | (3 << 4) | (1 << 2) | 1;
    /// STRTAB_BASE.RA / CMDQ_BASE.RA / EVTQ_BASE.WA (bit 62): allocate hint.
    pub const BASE_ALLOC_HINT: u64 = 1 << 62;
    /// Mask of a table or queue base address (bits [51:6] / [51:5]).
    pub const BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x1f;
}

/// What the hypervisor needs of an SMMU, read from its ID registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Stream ID bits (IDR1.SIDSIZE).
    pub sid_bits: u32,
    /// Output address size field (IDR5.OAS, the STE's S2PS encoding).
    pub oas: u8,
    /// 16-bit VMIDs (IDR0.VMID16).
    pub vmid16: bool,
    /// Coherent table walks and queue accesses (IDR0.COHACC).
    pub coherent: bool,
}

/// Why an SMMU cannot confine the host's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// No stage-2 translation (IDR0.S2P = 0).
    NoStage2,
    /// No AArch64 translation tables (IDR0.TTF).
    NoAarch64Tables,
    /// No 4 KiB granule (IDR5.GRAN4K = 0).
    No4kGranule,
    /// Fewer stream ID bits than a PCI bus needs (8).
    FewStreamIds,
    /// Little-endian tables unsupported (IDR0.TTENDIAN = 0b11).
    BigEndianOnly,
}

impl Features {
    /// Checks the ID registers.
    ///
    /// # Errors
    ///
    /// What the SMMU lacks.
    pub fn from_idr(idr0: u32, idr1: u32, idr5: u32) -> Result<Features, Unsupported> {
        if idr0 & 1 == 0 {
            return Err(Unsupported::NoStage2);
        }
        // TTF [3:2]: 0b10 AArch64, 0b11 both.
        if (idr0 >> 2) & 0b10 == 0 {
            return Err(Unsupported::NoAarch64Tables);
        }
        // TTENDIAN [22:21]: 0b00 mixed, 0b10 LE, 0b11 BE.
        if (idr0 >> 21) & 0b11 == 0b11 {
            return Err(Unsupported::BigEndianOnly);
        }
        if idr5 & (1 << 4) == 0 {
            return Err(Unsupported::No4kGranule);
        }
        let sid_bits = idr1 & 0x3f;
        if sid_bits < 8 {
            return Err(Unsupported::FewStreamIds);
        }
        Ok(Features {
            sid_bits,
            oas: (idr5 & 0b111) as u8,
            vmid16: idr0 & (1 << 18) != 0,
            coherent: idr0 & (1 << 4) != 0,
        })
    }
}

/// VTCR_EL2 fields the STE's S2 "VTCR" field takes in the same layout:
/// T0SZ [5:0], SL0 [7:6], IRGN0 [9:8], ORGN0 [11:10], SH0 [13:12], TG0
/// [15:14], PS [18:16] (IHI 0070 5.2: STE.S2T0SZ..S2PS at bits 160..178).
const VTCR_FIELDS: u64 = (1 << 19) - 1;
/// The PS field within those.
const VTCR_PS: u64 = 0b111 << 16;

/// A stream table entry (64 bytes) that translates every transaction of its
/// stream through the stage-2 table at `ttb` (bypassing stage 1), with the
/// CPU's `vtcr` for that table (its PS clamped to the SMMU's `oas`), under
/// SMMU VMID `vmid`, recording faults (S2R) so each refused access leaves an
/// event. Shareability, cacheability and privilege are the incoming ones.
#[must_use]
pub fn ste_stage2(vmid: u16, vtcr: u64, oas: u8, ttb: u64) -> [u64; 8] {
    let ps = ((vtcr & VTCR_PS) >> 16).min(u64::from(oas));
    let vtcr = (vtcr & VTCR_FIELDS & !VTCR_PS) | (ps << 16);
    let mut ste = [0u64; 8];
    // Word 0: V [0], Config [3:1] = 0b110 (stage 1 bypass, stage 2 translate).
    ste[0] = 1 | (0b110 << 1);
    // Word 1: SHCFG [45:44] = 0b01, use the incoming shareability.
    ste[1] = 1 << 44;
    // Word 2: S2VMID [15:0], VTCR [50:32], S2AA64 [51], S2R [58].
    ste[2] = u64::from(vmid) | (vtcr << 32) | (1 << 51) | (1 << 58);
    // Word 3: S2TTB [51:4].
    ste[3] = ttb & (((1 << 52) - 1) & !0xf);
    ste
}

/// A command (16 bytes) for the command queue (IHI 0070 chapter 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// CMD_CFGI_ALL: forget every cached STE and CD.
    CfgiAll,
    /// CMD_TLBI_NSNH_ALL: forget every non-secure, non-EL2 TLB entry.
    TlbiNsnhAll,
    /// CMD_TLBI_S12_VMALL: forget every TLB entry of a VMID.
    TlbiS12Vmall {
        /// The VMID.
        vmid: u16,
    },
    /// CMD_TLBI_S2_IPA: forget the stage-2 entries of one page (and, with
    /// `leaf` false, walk caches over it).
    TlbiS2Ipa {
        /// The VMID.
        vmid: u16,
        /// The page's IPA.
        ipa: u64,
        /// Only the last-level entry changed.
        leaf: bool,
    },
    /// CMD_SYNC: completes every earlier command; no interrupt or MSI (the
    /// hypervisor polls CMDQ_CONS).
    Sync,
}

impl Cmd {
    /// The command's two words.
    #[must_use]
    pub fn encode(self) -> [u64; 2] {
        match self {
            Cmd::CfgiAll => [0x04, 31], // Range = 31: every stream.
            Cmd::TlbiNsnhAll => [0x30, 0],
            Cmd::TlbiS12Vmall { vmid } => [0x28 | (u64::from(vmid) << 32), 0],
            Cmd::TlbiS2Ipa { vmid, ipa, leaf } => [
                0x2a | (u64::from(vmid) << 32),
                (ipa & (((1 << 52) - 1) & !0xfff)) | u64::from(leaf),
            ],
            Cmd::Sync => [0x46, 0],
        }
    }
}

/// Bytes per command-queue entry.
pub const CMD_BYTES: usize = 16;
/// Bytes per event-queue entry.
pub const EVT_BYTES: usize = 32;
/// Bytes per stream table entry.
pub const STE_BYTES: usize = 64;

/// One queue's producer and consumer indices: `log2` bits of index and a
/// wrap bit above them (IHI 0070 3.5.1). Full when the indices are equal and
/// the wrap bits differ; empty when both are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueIdx {
    log2: u32,
}

impl QueueIdx {
    /// A queue of `1 << log2` entries.
    #[must_use]
    pub const fn new(log2: u32) -> Self {
        QueueIdx { log2 }
    }

    fn mask(self) -> u32 {
        (2 << self.log2) - 1
    }

    /// The entry an index names.
    #[must_use]
    pub fn slot(self, idx: u32) -> usize {
        (idx & ((1 << self.log2) - 1)) as usize
    }

    /// The index after `idx` (wrap bit flips at the end).
    #[must_use]
    pub fn next(self, idx: u32) -> u32 {
        idx.wrapping_add(1) & self.mask()
    }

    /// Whether a queue with these indices is full. Bits above the wrap bit
    /// (CONS.ERR, the overflow flags) are ignored.
    #[must_use]
    pub fn full(self, prod: u32, cons: u32) -> bool {
        let (p, c) = (prod & self.mask(), cons & self.mask());
        p != c && self.slot(p) == self.slot(c)
    }

    /// Whether it is empty.
    #[must_use]
    pub fn empty(self, prod: u32, cons: u32) -> bool {
        prod & self.mask() == cons & self.mask()
    }
}

/// CMDQ_CONS.ERR [30:24]: the error of the command at CONS, 0 for none.
#[must_use]
pub fn cmdq_error(cons: u32) -> u32 {
    (cons >> 24) & 0x7f
}

/// An event record (IHI 0070 7.3), as far as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event type (F_TRANSLATION = 0x10, F_PERMISSION = 0x13, C_BAD_STE =
    /// 0x04, C_BAD_STREAMID = 0x02, ...).
    pub id: u8,
    /// The stream.
    pub sid: u32,
    /// The transaction's input address (for stage-2-only streams, the IPA).
    pub addr: u64,
    /// A read (true) or a write.
    pub read: bool,
    /// The fault was at stage 2.
    pub stage2: bool,
}

impl Event {
    /// Decodes a record.
    #[must_use]
    pub fn decode(w: [u64; 4]) -> Event {
        Event {
            id: w[0] as u8,
            sid: (w[0] >> 32) as u32,
            addr: w[2],
            read: w[1] & (1 << 35) != 0,
            stage2: w[1] & (1 << 39) != 0,
        }
    }

    /// A short name for the log.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self.id {
            0x01 => "F_UUT",
            0x02 => "C_BAD_STREAMID",
            0x03 => "F_STE_FETCH",
            0x04 => "C_BAD_STE",
            0x10 => "F_TRANSLATION",
            0x11 => "F_ADDR_SIZE",
            0x12 => "F_ACCESS",
            0x13 => "F_PERMISSION",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU virt's SMMU: S2P, S1P, TTF = both, COHACC, VMID16, SIDSIZE 16,
    /// GRAN4K/64K, OAS 44 bits.
    #[test]
    fn features_of_qemus_smmu_and_what_is_refused() {
        let idr0 = 1 | 2 | (0b11 << 2) | (1 << 4) | (1 << 18) | (0b10 << 21);
        let f = Features::from_idr(idr0, 16, (1 << 4) | (1 << 6) | 4)
            .expect("QEMU-like IDRs are accepted");
        assert_eq!(
            f,
            Features {
                sid_bits: 16,
                oas: 4,
                vmid16: true,
                coherent: true
            }
        );
        assert_eq!(
            Features::from_idr(idr0 & !1, 16, 0x14),
            Err(Unsupported::NoStage2)
        );
        assert_eq!(
            Features::from_idr(idr0 & !(0b11 << 2) | (0b01 << 2), 16, 0x14),
            Err(Unsupported::NoAarch64Tables)
        );
        assert_eq!(
            Features::from_idr(idr0, 16, 0x40 | 4),
            Err(Unsupported::No4kGranule)
        );
        assert_eq!(
            Features::from_idr(idr0, 7, 0x14),
            Err(Unsupported::FewStreamIds)
        );
        assert_eq!(
            Features::from_idr(idr0 | (0b11 << 21), 16, 0x14),
            Err(Unsupported::BigEndianOnly)
        );
    }

    /// Every field of the stage-2 STE at its IHI 0070 5.2 position.
    #[test]
    fn stage2_ste_fields() {
        // The host's VTCR: T0SZ 24 (40-bit IPA), SL0 1, IRGN/ORGN WB, SH
        // inner, TG0 4K, PS 0b101 (48 bits), plus bits outside the 19.
        let vtcr = 24 | (1 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (0b101 << 16) | (1 << 31);
        let ste = ste_stage2(0, vtcr, 4, 0x4123_4000 | 0xfff);
        assert_eq!(ste[0] & 1, 1, "V");
        assert_eq!(
            (ste[0] >> 1) & 0b111,
            0b110,
            "Config: S1 bypass, S2 translate"
        );
        assert_eq!((ste[1] >> 44) & 0b11, 1, "SHCFG incoming");
        assert_eq!(ste[2] & 0xffff, 0, "S2VMID");
        assert_eq!((ste[2] >> 32) & 0x3f, 24, "S2T0SZ");
        assert_eq!((ste[2] >> 38) & 0b11, 1, "S2SL0");
        assert_eq!((ste[2] >> 44) & 0b11, 3, "S2SH0");
        assert_eq!((ste[2] >> 46) & 0b11, 0, "S2TG 4K");
        assert_eq!(
            (ste[2] >> 48) & 0b111,
            4,
            "S2PS clamped to the OAS (44 bits)"
        );
        assert_eq!((ste[2] >> 51) & 1, 1, "S2AA64");
        assert_eq!((ste[2] >> 58) & 1, 1, "S2R: faults recorded");
        assert_eq!(ste[2] & (1 << 63), 0, "nothing past the VTCR field leaks");
        assert_eq!(ste[3], 0x4123_4000 | 0xff0, "S2TTB [51:4]");
        assert_eq!(&ste[4..], &[0; 4]);
        // A PS below the OAS stays.
        let ste = ste_stage2(7, 0b010 << 16, 5, 0);
        assert_eq!((ste[2] >> 48) & 0b111, 0b010);
        assert_eq!(ste[2] & 0xffff, 7);
    }

    #[test]
    fn commands() {
        assert_eq!(Cmd::CfgiAll.encode(), [0x04, 31]);
        assert_eq!(Cmd::TlbiNsnhAll.encode(), [0x30, 0]);
        assert_eq!(Cmd::Sync.encode(), [0x46, 0]);
        assert_eq!(
            Cmd::TlbiS12Vmall { vmid: 0x1234 }.encode(),
            [0x28 | (0x1234 << 32), 0]
        );
        assert_eq!(
            Cmd::TlbiS2Ipa {
                vmid: 1,
                ipa: 0x4000_1fff,
                leaf: true
            }
            .encode(),
            [0x2a | (1 << 32), 0x4000_1001]
        );
    }

    #[test]
    fn queue_indices_wrap_and_fill() {
        let q = QueueIdx::new(2); // 4 entries
        assert!(q.empty(0, 0));
        let mut p = 0;
        for _ in 0..4 {
            assert!(!q.full(p, 0));
            p = q.next(p);
        }
        assert_eq!(p, 0b100, "wrap bit set after 4");
        assert!(q.full(p, 0));
        assert!(!q.empty(p, 0));
        assert_eq!(q.slot(p), 0);
        // CONS.ERR bits above the wrap bit do not confuse the comparisons.
        assert!(q.empty(p, p | (1 << 24)));
        assert_eq!(cmdq_error(p | (2 << 24)), 2);
        // Wrapping twice returns to 0.
        for _ in 0..4 {
            p = q.next(p);
        }
        assert_eq!(p, 0);
    }

    #[test]
    fn event_records() {
        let e = Event::decode([0x10 | (0x8 << 32), 1 << 39, 0x4800_0000, 0x4800_0000]);
        assert_eq!(
            e,
            Event {
                id: 0x10,
                sid: 8,
                addr: 0x4800_0000,
                read: false,
                stage2: true
            }
        );
        assert_eq!(e.name(), "F_TRANSLATION");
        assert!(Event::decode([0x13, 1 << 35, 0, 0]).read);
    }
}
