//! Trapped MMIO: the emulated distributor (GICD) and, on GICv3, the redistributors (GICR).
//!
//! Offsets follow the GIC architecture specifications (IHI 0069 chapter 12 for v3, IHI 0048B
//! chapter 4 for v2) and match Linux's `include/linux/irqchip/arm-gic{,-v3}.h`. On GICv3 the
//! distributor runs with affinity routing (ARE = 1, RAO/WI) and one security state (DS = 1), so
//! its registers for INTIDs 0..32, `ITARGETSR`, `IGRPMODR`, `NSACR` and the SGI registers are
//! RAZ/WI; the private interrupts live in each redistributor's SGI frame. Registers of
//! unimplemented INTIDs are RAZ/WI, as the architecture requires; an offset with no register at
//! all, or a size the register does not support, is an error.

use crate::dist::{State, NOT_LOADED, PRI_MASK};
use crate::{KickMask, Version, Vgic, VgicError, NR_INTIDS};
use hw_regs::gic::GICR_SGI_FRAME as SGI_FRAME;
use hw_regs::gic::{
    GICD_CLRSPI_NSR, GICD_CLRSPI_SR, GICD_CPENDSGIR, GICD_CTLR, GICD_ICACTIVER, GICD_ICENABLER,
    GICD_ICFGR, GICD_ICPENDR, GICD_ID_V2, GICD_ID_V3, GICD_IGROUPR, GICD_IGRPMODR, GICD_IIDR,
    GICD_IPRIORITYR, GICD_IROUTER, GICD_ISACTIVER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR,
    GICD_NSACR, GICD_SETSPI_NSR, GICD_SETSPI_SR, GICD_SGIR, GICD_SPENDSGIR, GICD_STATUSR,
    GICD_TYPER, GICD_TYPER2, GICR_CTLR, GICR_ICACTIVER0, GICR_ICENABLER0, GICR_ICFGR,
    GICR_ICPENDR0, GICR_ID, GICR_IGROUPR0, GICR_IGRPMODR0, GICR_IIDR, GICR_IPRIORITYR,
    GICR_ISACTIVER0, GICR_ISENABLER0, GICR_ISPENDR0, GICR_NSACR, GICR_PENDBASER, GICR_PROPBASER,
    GICR_STATUSR, GICR_TYPER, GICR_WAKER,
};

/// GICv2 distributor region size (4 KiB).
pub use hw_regs::gic::GICD_SIZE_V2 as DIST_SIZE_V2;
/// GICv3 distributor region size (64 KiB).
pub use hw_regs::gic::GICD_SIZE_V3 as DIST_SIZE_V3;
/// One GICv3 redistributor: RD frame + SGI frame (2 × 64 KiB, no VLPI frames). vCPU *n*'s
/// redistributor is at `n * REDIST_FRAME_SIZE` in the redistributor region.
pub use hw_regs::gic::GICR_STRIDE as REDIST_FRAME_SIZE;

/// `GICD_IIDR` / `GICR_IIDR`: implementer Arm (JEP106 0x43B), product 0, revision 0.
const IIDR: u64 = 0x43b;
/// The peripheral and component ID registers: twelve words ending each frame.
const ID_BLOCK: u64 = 0x30;
/// `GICD_IROUTER` bits kept: Aff3 \[39:32\] and Aff2.Aff1.Aff0 \[23:0\]; IRM (bit 31) is RAZ/WI
/// because `GICD_TYPER.No1N` = 1.
const IROUTER_MASK: u64 = 0xff_00ff_ffff;

/// Which emulated frame a trapped access hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The distributor; the offset is from its base ([`DIST_SIZE_V3`] or [`DIST_SIZE_V2`]).
    Dist,
    /// GICv3 only: the redistributor region of all vCPUs; the offset is from the region's base
    /// (`nr_vcpus * REDIST_FRAME_SIZE` bytes).
    Redist,
}

/// The result of an emulated access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmioOutcome {
    /// The value read (0 for writes).
    pub value: u64,
    /// vCPUs that now have new work (kick them).
    pub kick: KickMask,
}

/// The set/clear-bit register families (one bit per INTID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// The family at `off` (0x80..0x400 in both GICD and the GICR SGI frame).
    fn at(off: u64) -> Option<Self> {
        Some(match off & !0x7f {
            GICD_IGROUPR => BitReg::Group,
            GICD_ISENABLER => BitReg::SetEnable,
            GICD_ICENABLER => BitReg::ClearEnable,
            GICD_ISPENDR => BitReg::SetPending,
            GICD_ICPENDR => BitReg::ClearPending,
            GICD_ISACTIVER => BitReg::SetActive,
            GICD_ICACTIVER => BitReg::ClearActive,
            _ => return None,
        })
    }
}

/// One access: its size in bytes and, for a write, the value.
#[derive(Debug, Clone, Copy)]
struct Acc {
    size: u8,
    write: Option<u64>,
}

impl Acc {
    fn need(&self, sizes: &[u8]) -> Result<(), VgicError> {
        if sizes.contains(&self.size) {
            Ok(())
        } else {
            Err(VgicError::BadSize)
        }
    }

    /// RAZ/WI for a 32-bit register.
    fn raz_wi(&self) -> Result<u64, VgicError> {
        self.need(&[4]).map(|()| 0)
    }

    /// A read-only 32-bit register (writes ignored).
    fn ro(&self, value: u64) -> Result<u64, VgicError> {
        self.need(&[4]).map(|()| value)
    }
}

impl Vgic {
    /// Emulates a trapped access by `vcpu` to `offset` in `region`, of `size` bytes (1, 2, 4 or
    /// 8, naturally aligned); `write` is `Some(value)` for a store. Reads return the value in
    /// [`MmioOutcome::value`]; [`MmioOutcome::kick`] names vCPUs with new work.
    ///
    /// # Errors
    ///
    /// [`VgicError::BadOffset`] for offsets with no register (or a redistributor that does not
    /// exist, or `Redist` on GICv2), [`VgicError::BadSize`] for sizes or alignments the register
    /// does not allow, [`VgicError::BadVcpu`]. Never panics on guest input.
    pub fn mmio(
        &self,
        vcpu: usize,
        region: Region,
        offset: u64,
        size: u8,
        write: Option<u64>,
    ) -> Result<MmioOutcome, VgicError> {
        self.check_vcpu(vcpu)?;
        if !matches!(size, 1 | 2 | 4 | 8) || !offset.is_multiple_of(size as u64) {
            return Err(VgicError::BadSize);
        }
        let write = write.map(|v| {
            if size == 8 {
                v
            } else {
                v & ((1 << (size * 8)) - 1)
            }
        });
        let acc = Acc { size, write };
        let mut kick = 0;
        let mut s = self.state.lock();
        let value = match (region, self.version()) {
            (Region::Dist, _) => self.dist(&mut s, vcpu, offset, acc, &mut kick)?,
            (Region::Redist, Version::V3) => {
                let n = (offset / REDIST_FRAME_SIZE) as usize;
                if n >= self.nr_vcpus() {
                    return Err(VgicError::BadOffset);
                }
                match offset % REDIST_FRAME_SIZE {
                    off @ ..SGI_FRAME => self.rd_frame(&mut s, n, off, acc)?,
                    off => self.sgi_frame(&mut s, n, off - SGI_FRAME, acc, &mut kick)?,
                }
            }
            (Region::Redist, Version::V2) => return Err(VgicError::BadOffset),
        };
        Ok(MmioOutcome {
            value: if write.is_some() { 0 } else { value },
            kick,
        })
    }

    /// The value a read of `size` bytes at `offset` in `region` returns when the register read
    /// never changes once the vGIC exists: the identification registers (`GICD_TYPER`, `IIDR`,
    /// `TYPER2`, the peripheral and component IDs; each redistributor's `IIDR`, `TYPER` and IDs),
    /// which depend on the version and the vCPU count alone. So it takes no lock, and the fast
    /// path answers these reads without it. The value fits in `size` bytes. `None` for every
    /// other access, including a size or alignment the register refuses: [`Vgic::mmio`] answers
    /// those (and writes, all ignored here). For every access this answers, [`Vgic::mmio`] reads
    /// the same value whatever was written before (tested): this is the one list of those
    /// registers.
    #[inline(always)]
    #[must_use]
    pub fn fixed_read(&self, region: Region, offset: u64, size: u8) -> Option<u64> {
        let v3 = self.version() == Version::V3;
        match region {
            Region::Dist => {
                // All 32-bit registers (GIC v3 12.9, v2 4.3: word access only), matched by word
                // index: a small compare of the offset the caller computed.
                if size != 4 || !offset.is_multiple_of(4) {
                    return None;
                }
                const TYPER: u64 = GICD_TYPER / 4;
                const IIDR_WORD: u64 = GICD_IIDR / 4;
                const TYPER2: u64 = GICD_TYPER2 / 4;
                let id = if v3 { GICD_ID_V3 } else { GICD_ID_V2 } / 4;
                match offset / 4 {
                    TYPER => Some(self.gicd_typer()),
                    IIDR_WORD => Some(IIDR),
                    TYPER2 if v3 => Some(0),
                    w if (id..id + ID_BLOCK / 4).contains(&w) => Some(self.id_reg(offset - id * 4)),
                    _ => None,
                }
            }
            Region::Redist => {
                let n = (offset / REDIST_FRAME_SIZE) as usize;
                if !v3 || n >= self.nr_vcpus() {
                    return None;
                }
                let typer = self.gicr_typer(n);
                match (offset % REDIST_FRAME_SIZE, size) {
                    (GICR_IIDR, 4) => Some(IIDR),
                    (GICR_TYPER, 8) => Some(typer),
                    (GICR_TYPER, 4) => Some(typer & 0xffff_ffff),
                    (0x0c, 4) => Some(typer >> 32),
                    (o, 4) if (GICR_ID..GICR_ID + ID_BLOCK).contains(&o) && o.is_multiple_of(4) => {
                        Some(self.id_reg(o - GICR_ID))
                    }
                    _ => None,
                }
            }
        }
    }

    fn dist(
        &self,
        s: &mut State,
        vcpu: usize,
        off: u64,
        acc: Acc,
        kick: &mut KickMask,
    ) -> Result<u64, VgicError> {
        let v3 = self.version() == Version::V3;
        // On v3 (ARE = 1) the distributor's registers for INTIDs 0..32 are RAZ/WI.
        let private_raz = |first: u64| v3 && first < 32;
        match off {
            GICD_CTLR => self.gicd_ctlr(s, acc),
            GICD_TYPER => acc.ro(self.gicd_typer()),
            GICD_IIDR => acc.ro(IIDR),
            // TYPER2, STATUSR; SETSPI/CLRSPI (no message-based SPIs: MBIS = 0).
            GICD_TYPER2 | GICD_STATUSR | GICD_SETSPI_NSR | GICD_CLRSPI_NSR | GICD_SETSPI_SR
            | GICD_CLRSPI_SR
                if v3 =>
            {
                acc.raz_wi()
            }
            GICD_IGROUPR..GICD_IPRIORITYR => {
                acc.need(&[4])?;
                let first = (off & 0x7f) * 8;
                if private_raz(first) {
                    return Ok(0);
                }
                let op = BitReg::at(off).ok_or(VgicError::BadOffset)?;
                Ok(self.bits(s, vcpu, first as u32, op, acc.write, kick))
            }
            GICD_IPRIORITYR..GICD_ITARGETSR => {
                acc.need(&[1, 4])?;
                if private_raz(off - GICD_IPRIORITYR) {
                    return Ok(0);
                }
                Ok(self.priority(s, vcpu, (off - GICD_IPRIORITYR) as u32, acc, kick))
            }
            GICD_ITARGETSR..GICD_ICFGR if v3 => acc.need(&[1, 4]).map(|()| 0),
            GICD_ITARGETSR..GICD_ICFGR => {
                acc.need(&[1, 4])?;
                Ok(self.itargets(s, vcpu, (off - GICD_ITARGETSR) as u32, acc, kick))
            }
            GICD_ICFGR..GICD_IGRPMODR => {
                acc.need(&[4])?;
                let first = (off - GICD_ICFGR) * 4;
                if private_raz(first) {
                    return Ok(0);
                }
                Ok(self.icfgr(s, vcpu, first as u32, acc.write))
            }
            // IGRPMODR (v3, DS = 1; 32 registers), NSACR: RAZ/WI.
            GICD_IGRPMODR..0xd80 if v3 => acc.raz_wi(),
            GICD_NSACR..GICD_SGIR => acc.raz_wi(),
            // SGIR, CPENDSGIR, SPENDSGIR (4 registers each): RES0 with ARE = 1.
            GICD_SGIR | GICD_CPENDSGIR..0xf30 if v3 => acc.need(&[1, 4]).map(|()| 0),
            GICD_SGIR => {
                acc.need(&[4])?;
                if let Some(v) = acc.write {
                    *kick |= self.gicd_sgir(s, vcpu, v);
                }
                Ok(0)
            }
            GICD_CPENDSGIR..0xf30 => {
                acc.need(&[1, 4])?;
                Ok(self.sgi_pend(s, vcpu, off, acc, kick))
            }
            // IROUTER<0..1020>.
            GICD_IROUTER..0x7fe0 if v3 => self.irouter(s, off - GICD_IROUTER, acc, kick),
            GICD_ID_V3..DIST_SIZE_V3 if v3 => acc.ro(self.id_reg(off - GICD_ID_V3)),
            GICD_ID_V2..DIST_SIZE_V2 if !v3 => acc.ro(self.id_reg(off - GICD_ID_V2)),
            _ => Err(VgicError::BadOffset),
        }
    }

    fn gicd_ctlr(&self, s: &mut State, acc: Acc) -> Result<u64, VgicError> {
        acc.need(&[4])?;
        if let Some(v) = acc.write {
            // EnableGrp0 (bit 0), EnableGrp1 (bit 1). ARE and DS are RAO/WI on v3.
            s.ctlr = v as u32 & 3;
        }
        // v3: ARE (bit 4) and DS (bit 6) read as one; RWP (bit 31) is always 0 because writes
        // take effect at once.
        let fixed = if self.version() == Version::V3 {
            (1 << 4) | (1 << 6)
        } else {
            0
        };
        Ok((s.ctlr | fixed) as u64)
    }

    /// `GICD_TYPER`: ITLinesNumber \[4:0\] = NR_INTIDS / 32 - 1. v3: IDbits \[23:19\] = 9 (10-bit
    /// INTIDs), No1N \[25\] = 1, no LPIs/MBIS. v2: CPUNumber \[7:5\] = nr_vcpus - 1.
    #[inline]
    fn gicd_typer(&self) -> u64 {
        let lines = (NR_INTIDS / 32 - 1) as u64;
        match self.version() {
            Version::V3 => lines | (9 << 19) | (1 << 25),
            Version::V2 => lines | (((self.nr_vcpus() - 1) as u64) << 5),
        }
    }

    /// Peripheral and component ID registers at 0xFFD0 (v3) / 0xFD0 (v2): PIDR2 carries the
    /// architecture revision in \[7:4\] and, with PIDR1 \[7:4\], Arm's JEP106 code (0x3B).
    #[inline]
    fn id_reg(&self, idx: u64) -> u64 {
        let arch = match self.version() {
            Version::V3 => 3,
            Version::V2 => 2,
        };
        match idx {
            0x14 => 0xb0,              // PIDR1
            0x18 => (arch << 4) | 0xb, // PIDR2
            0x20 => 0x0d,              // CIDR0..3
            0x24 => 0xf0,
            0x28 => 0x05,
            0x2c => 0xb1,
            _ => 0,
        }
    }

    /// One 32-bit set/clear register covering INTIDs `first..first + 32`, private ones being
    /// `vcpu`'s.
    fn bits(
        &self,
        s: &mut State,
        vcpu: usize,
        first: u32,
        op: BitReg,
        write: Option<u64>,
        kick: &mut KickMask,
    ) -> u64 {
        let v2 = self.version() == Version::V2;
        let mut value = 0;
        for i in 0..32 {
            let intid = first + i;
            let Some(irq) = s.irq_mut(vcpu, intid) else {
                continue;
            };
            let Some(w) = write else {
                let bit = match op {
                    BitReg::Group => irq.group1,
                    BitReg::SetEnable | BitReg::ClearEnable => irq.enabled,
                    BitReg::SetPending | BitReg::ClearPending => irq.pending(),
                    BitReg::SetActive | BitReg::ClearActive => irq.active,
                };
                value |= (bit as u64) << i;
                continue;
            };
            let set = w & (1 << i) != 0;
            if !set && op != BitReg::Group {
                continue;
            }
            // GICv2 SGI pending state goes through SPENDSGIR/CPENDSGIR (KVM skips them too).
            let v2_sgi = v2 && intid < 16;
            let loaded = irq.loaded_on != NOT_LOADED;
            match op {
                BitReg::Group => irq.group1 = set,
                BitReg::SetEnable => irq.enabled = true,
                BitReg::ClearEnable => irq.enabled = false,
                BitReg::SetPending if !v2_sgi => irq.latch = true,
                BitReg::ClearPending if !v2_sgi => irq.latch = false,
                BitReg::SetActive => irq.active = true,
                BitReg::ClearActive => irq.active = false,
                _ => continue,
            }
            if loaded && !matches!(op, BitReg::Group | BitReg::SetEnable | BitReg::ClearEnable) {
                irq.overridden = true;
            }
            *kick |= self.kick_for(s, vcpu, intid);
        }
        value
    }

    /// `IPRIORITYR`: one byte per INTID from `first`, byte or word access.
    fn priority(
        &self,
        s: &mut State,
        vcpu: usize,
        first: u32,
        acc: Acc,
        kick: &mut KickMask,
    ) -> u64 {
        let mut value = 0;
        for b in 0..acc.size as u32 {
            let Some(irq) = s.irq_mut(vcpu, first + b) else {
                continue;
            };
            match acc.write {
                Some(w) => {
                    irq.priority = (w >> (8 * b)) as u8 & PRI_MASK;
                    *kick |= self.kick_for(s, vcpu, first + b);
                }
                None => value |= (irq.priority as u64) << (8 * b),
            }
        }
        value
    }

    /// GICv2 `ITARGETSR`: one byte per INTID. Private INTIDs read as the accessing CPU and
    /// ignore writes; SPIs keep the bits of existing vCPUs.
    fn itargets(
        &self,
        s: &mut State,
        vcpu: usize,
        first: u32,
        acc: Acc,
        kick: &mut KickMask,
    ) -> u64 {
        let mut value = 0;
        for b in 0..acc.size as u32 {
            let intid = first + b;
            let all = self.all_vcpus();
            let Some(irq) = s.irq_mut(vcpu, intid) else {
                continue;
            };
            if intid < 32 {
                value |= 1 << (vcpu as u64 + 8 * b as u64);
                continue;
            }
            match acc.write {
                Some(w) => {
                    irq.targets = (w >> (8 * b)) as u8 & all;
                    *kick |= self.kick_for(s, vcpu, intid);
                }
                None => value |= (irq.targets as u64) << (8 * b),
            }
        }
        value
    }

    /// `ICFGR`: two bits per INTID from `first`; bit 2k+1 = edge. SGIs are edge and PPIs level,
    /// both read-only (KVM also keeps PPIs level-sensitive).
    fn icfgr(&self, s: &mut State, vcpu: usize, first: u32, write: Option<u64>) -> u64 {
        let mut value = 0;
        for k in 0..16 {
            let intid = first + k;
            let Some(irq) = s.irq_mut(vcpu, intid) else {
                continue;
            };
            match write {
                Some(w) if intid >= 32 => irq.edge = w & (2 << (2 * k)) != 0,
                Some(_) => {}
                None => value |= (irq.edge as u64) << (2 * k + 1),
            }
        }
        value
    }

    /// GICv2 `GICD_SGIR`: TargetListFilter \[25:24\] (0: CPUTargetList \[23:16\], 1: all but
    /// self, 2: self, 3: reserved), SGIINTID \[3:0\].
    fn gicd_sgir(&self, s: &mut State, vcpu: usize, v: u64) -> KickMask {
        let targets = self.sgir_targets(vcpu, v);
        self.send_v2_sgi(s, vcpu, targets, (v & 0xf) as u32)
    }

    /// The vCPUs a write of `v` to GICv2's `GICD_SGIR` by `vcpu` targets (bit *i*: vCPU *i*):
    /// TargetListFilter \[25:24\] 0 names CPUTargetList \[23:16\], 1 every vCPU but `vcpu`, 2
    /// `vcpu` itself, 3 nobody.
    #[must_use]
    pub fn sgir_targets(&self, vcpu: usize, v: u64) -> u8 {
        let all = self.all_vcpus();
        match (v >> 24) & 3 {
            0 => (v >> 16) as u8 & all,
            1 => all & !(1 << vcpu),
            2 => 1 << vcpu,
            _ => 0,
        }
    }

    /// GICv2 `CPENDSGIR` (0xF10) / `SPENDSGIR` (0xF20): one byte per SGI, one bit per source.
    fn sgi_pend(&self, s: &mut State, vcpu: usize, off: u64, acc: Acc, kick: &mut KickMask) -> u64 {
        let set = off >= GICD_SPENDSGIR;
        let first = (off & 0xf) as u32;
        let all = self.all_vcpus();
        let mut value = 0;
        for b in 0..acc.size as u32 {
            let intid = first + b;
            let Some(irq) = s.irq_mut(vcpu, intid) else {
                continue;
            };
            match acc.write {
                Some(w) => {
                    let bits = (w >> (8 * b)) as u8 & all;
                    if bits == 0 {
                        continue;
                    }
                    if set {
                        irq.sources |= bits;
                    } else {
                        irq.sources &= !bits;
                    }
                    if irq.loaded_on != NOT_LOADED {
                        irq.overridden = true;
                    }
                    *kick |= self.kick_for(s, vcpu, intid);
                }
                None => value |= (irq.sources as u64) << (8 * b),
            }
        }
        value
    }

    /// `GICD_IROUTER<n>` at 0x6000 + 8n (SPIs only), 64-bit or 32-bit halves.
    fn irouter(
        &self,
        s: &mut State,
        off: u64,
        acc: Acc,
        kick: &mut KickMask,
    ) -> Result<u64, VgicError> {
        acc.need(&[4, 8])?;
        let intid = (off / 8) as u32;
        let shift = (off % 8) * 8;
        let Some(irq) = s.irq_mut(0, intid).filter(|_| intid >= 32) else {
            return Ok(0);
        };
        let mask = if acc.size == 8 {
            u64::MAX
        } else {
            0xffff_ffff << shift
        };
        let Some(w) = acc.write else {
            return Ok((irq.irouter & mask) >> shift);
        };
        irq.irouter = ((irq.irouter & !mask) | ((w << shift) & mask)) & IROUTER_MASK;
        *kick |= self.kick_for(s, 0, intid);
        Ok(0)
    }

    /// A redistributor's RD frame (redistributor `n`).
    fn rd_frame(&self, s: &mut State, n: usize, off: u64, acc: Acc) -> Result<u64, VgicError> {
        match off {
            // CTLR (no LPIs: EnableLPIs RAZ/WI, RWP = 0), STATUSR.
            GICR_CTLR | GICR_STATUSR => acc.raz_wi(),
            GICR_IIDR => acc.ro(IIDR),
            // TYPER, 64-bit or 32-bit halves (the upper at 0x0c).
            GICR_TYPER | 0x0c => {
                acc.need(if off == GICR_TYPER { &[4, 8] } else { &[4] })?;
                let typer = self.gicr_typer(n);
                Ok(if acc.size == 8 {
                    typer
                } else {
                    (typer >> ((off - GICR_TYPER) * 8)) & 0xffff_ffff
                })
            }
            GICR_WAKER => {
                // WAKER: ProcessorSleep (bit 1) is writable; ChildrenAsleep (bit 2) follows it at
                // once, so the guest's wake-up poll ends on its first read.
                acc.need(&[4])?;
                if let Some(v) = acc.write {
                    s.asleep[n] = v & 2 != 0;
                }
                Ok(if s.asleep[n] { 0b110 } else { 0 })
            }
            // PROPBASER, PENDBASER (their upper halves at 0x74, 0x7c): no LPIs.
            GICR_PROPBASER | GICR_PENDBASER => acc.need(&[4, 8]).map(|()| 0),
            0x74 | 0x7c => acc.raz_wi(),
            GICR_ID..SGI_FRAME => acc.ro(self.id_reg(off - GICR_ID)),
            _ => Err(VgicError::BadOffset),
        }
    }

    /// `GICR_TYPER` of redistributor `n`: Affinity_Value \[63:32\] = Aff0 `n`, Processor_Number
    /// \[23:8\] = `n`, Last \[4\] on the last one; no LPIs.
    #[inline]
    pub(crate) fn gicr_typer(&self, n: usize) -> u64 {
        let last = (n + 1 == self.nr_vcpus()) as u64;
        ((n as u64) << 32) | ((n as u64) << 8) | (last << 4)
    }

    /// A redistributor's SGI frame (redistributor `n`, at +64 KiB): the private interrupts.
    fn sgi_frame(
        &self,
        s: &mut State,
        n: usize,
        off: u64,
        acc: Acc,
        kick: &mut KickMask,
    ) -> Result<u64, VgicError> {
        match off {
            GICR_IGROUPR0 | GICR_ISENABLER0 | GICR_ICENABLER0 | GICR_ISPENDR0 | GICR_ICPENDR0
            | GICR_ISACTIVER0 | GICR_ICACTIVER0 => {
                acc.need(&[4])?;
                let op = BitReg::at(off).ok_or(VgicError::BadOffset)?;
                Ok(self.bits(s, n, 0, op, acc.write, kick))
            }
            // IPRIORITYR0..7: INTIDs 0..32.
            GICR_IPRIORITYR..0x420 => {
                acc.need(&[1, 4])?;
                Ok(self.priority(s, n, (off - GICR_IPRIORITYR) as u32, acc, kick))
            }
            // ICFGR0 (SGIs), ICFGR1 (PPIs).
            GICR_ICFGR | 0xc04 => {
                acc.need(&[4])?;
                Ok(self.icfgr(s, n, ((off - GICR_ICFGR) * 4) as u32, acc.write))
            }
            // IGRPMODR0, NSACR: RAZ/WI with DS = 1.
            GICR_IGRPMODR0 | GICR_NSACR => acc.raz_wi(),
            _ => Err(VgicError::BadOffset),
        }
    }
}
