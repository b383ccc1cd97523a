//! The VM-wide distributor state and the interrupt inputs (lines, edges, SGIs).

use crate::{KickMask, Version, VgicError, MAX_VCPUS, NR_INTIDS, NR_SPIS};
use spin::Mutex;

/// Priority bits kept: 5, as a GICv2 list register holds (KVM's `VGIC_PRI_BITS` makes the same
/// choice for both versions), so the guest sees the same priorities the list registers carry.
pub(crate) const PRI_MASK: u8 = 0xf8;

/// "Not loaded in any vCPU's list registers."
pub(crate) const NOT_LOADED: u8 = 0xff;

/// The state of one interrupt as the distributor (or redistributor) holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Irq {
    pub enabled: bool,
    /// Group 1 (`IGROUPR` bit).
    pub group1: bool,
    /// Edge-triggered (`ICFGR`), else level-sensitive.
    pub edge: bool,
    /// Pending latch: an edge, or `ISPENDR`. Not used for GICv2 SGIs (see `sources`).
    pub latch: bool,
    /// Input line level (level-sensitive interrupts).
    pub level: bool,
    pub active: bool,
    pub priority: u8,
    /// GICv3 SPIs: `GICD_IROUTER` (Aff3 and Aff2.Aff1.Aff0; IRM reads as zero).
    pub irouter: u64,
    /// GICv2 SPIs: `GICD_ITARGETSR` byte.
    pub targets: u8,
    /// The vCPU whose list registers hold it, or [`NOT_LOADED`].
    pub loaded_on: u8,
    /// The vCPU that acknowledged it while it stays active (an active SPI must be deactivated
    /// where it was taken, whatever its routing says now), or [`NOT_LOADED`].
    pub active_on: u8,
    /// Pending/active were written through MMIO while loaded: the next sync keeps these values
    /// instead of the list register's.
    pub overridden: bool,
    /// GICv2 SGIs: pending sources (bit *i* = sent by vCPU *i*).
    pub sources: u8,
    /// GICv2 SGIs: the source of the active instance.
    pub active_source: u8,
}

impl Irq {
    const RESET: Irq = Irq {
        enabled: false,
        group1: false,
        edge: false,
        latch: false,
        level: false,
        active: false,
        priority: 0,
        irouter: 0,
        targets: 0,
        loaded_on: NOT_LOADED,
        active_on: NOT_LOADED,
        overridden: false,
        sources: 0,
        active_source: 0,
    };

    /// Whether the interrupt is pending (edge latch, level line, or a GICv2 SGI source).
    pub fn pending(&self) -> bool {
        self.latch || (!self.edge && self.level) || self.sources != 0
    }
}

/// Everything behind the lock.
pub(crate) struct State {
    /// `GICD_CTLR` group enables: bit 0 = group 0, bit 1 = group 1.
    pub ctlr: u32,
    private: [[Irq; 32]; MAX_VCPUS],
    spis: [Irq; NR_SPIS],
    /// Per vCPU, bit *i*: private INTID *i* may be pending or active. Set whenever
    /// [`State::irq_mut`] hands the interrupt out for writing (the only way to change it), cleared
    /// by [`State::settle`] once it is seen neither pending nor active. So the flush and WFI scan
    /// only these bits instead of every INTID.
    busy_private: [u32; MAX_VCPUS],
    /// The same for the SPIs: bit *i* is INTID 32 + *i*.
    busy_spis: u64,
    /// GICv3 `GICR_WAKER.ProcessorSleep` per redistributor.
    pub asleep: [bool; MAX_VCPUS],
}

impl State {
    pub fn irq(&self, vcpu: usize, intid: u32) -> Option<&Irq> {
        match intid as usize {
            i @ 0..32 => self.private.get(vcpu).map(|p| &p[i]),
            i @ 32..NR_INTIDS => Some(&self.spis[i - 32]),
            _ => None,
        }
    }

    /// The interrupt, for writing; marks it busy (see `busy_private`).
    pub fn irq_mut(&mut self, vcpu: usize, intid: u32) -> Option<&mut Irq> {
        match intid as usize {
            i @ 0..32 => {
                let p = self.private.get_mut(vcpu)?;
                self.busy_private[vcpu] |= 1 << i;
                Some(&mut p[i])
            }
            i @ 32..NR_INTIDS => {
                self.busy_spis |= 1 << (i - 32);
                Some(&mut self.spis[i - 32])
            }
            _ => None,
        }
    }

    /// The INTIDs `vcpu` may have pending or active: \[its own SGIs and PPIs (bit *i* = INTID
    /// *i*), the SPIs (bit *i* = INTID 32 + *i*)\]. A superset, never missing one. Two words
    /// rather than one `u128`: a scan's `trailing_zeros` is then two instructions, not sixteen.
    #[inline]
    pub fn busy(&self, vcpu: usize) -> [u64; 2] {
        let private = self.busy_private.get(vcpu).copied().unwrap_or(0);
        [u64::from(private), self.busy_spis]
    }

    /// Clears `intid`'s busy bit, once it was seen neither pending nor active (in the
    /// distributor's view; a list register that still holds it marks it again at its sync).
    #[inline]
    pub fn settle(&mut self, vcpu: usize, intid: u32) {
        match intid {
            0..32 => {
                if let Some(b) = self.busy_private.get_mut(vcpu) {
                    *b &= !(1 << intid);
                }
            }
            _ => self.busy_spis &= !(1u64 << ((intid - 32) & 63)),
        }
    }

    pub fn group_enabled(&self, irq: &Irq) -> bool {
        self.ctlr & (1 << irq.group1 as u32) != 0
    }

    /// Pending, enabled, and its group enabled: it may be signalled to the guest.
    pub fn deliverable(&self, irq: &Irq) -> bool {
        irq.enabled && irq.pending() && self.group_enabled(irq)
    }
}

/// A VM's virtual GIC: the distributor state shared by its vCPUs.
pub struct Vgic {
    version: Version,
    nr_vcpus: usize,
    pub(crate) state: Mutex<State>,
}

impl core::fmt::Debug for Vgic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vgic")
            .field("version", &self.version)
            .field("nr_vcpus", &self.nr_vcpus)
            .finish_non_exhaustive()
    }
}

impl Vgic {
    /// A vGIC in its reset state: everything disabled and inactive, SGIs enabled and
    /// edge-triggered, PPIs level-sensitive, SPIs level-sensitive and routed to vCPU 0 (v3) or to
    /// no CPU (v2: `ITARGETSR` resets to 0). Interrupts are group 1 on v3 and group 0 on v2
    /// (what Linux uses on each; KVM resets them the same way).
    ///
    /// # Errors
    ///
    /// [`VgicError::BadVcpu`] if `nr_vcpus` is 0 or more than [`MAX_VCPUS`].
    pub fn new(version: Version, nr_vcpus: usize) -> Result<Self, VgicError> {
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
            return Err(VgicError::BadVcpu);
        }
        let group1 = version == Version::V3;
        let mut private = [Irq {
            group1,
            ..Irq::RESET
        }; 32];
        for sgi in &mut private[..16] {
            sgi.enabled = true;
            sgi.edge = true;
        }
        Ok(Vgic {
            version,
            nr_vcpus,
            state: Mutex::new(State {
                ctlr: 0,
                private: [private; MAX_VCPUS],
                spis: [Irq {
                    group1,
                    ..Irq::RESET
                }; NR_SPIS],
                busy_private: [0; MAX_VCPUS],
                busy_spis: 0,
                asleep: [true; MAX_VCPUS],
            }),
        })
    }

    /// The GIC version the guest sees.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    pub(crate) fn check_vcpu(&self, vcpu: usize) -> Result<(), VgicError> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(VgicError::BadVcpu)
        }
    }

    /// The vCPU an SPI is routed to, if any. GICv3: `IROUTER` must name Aff3.Aff2.Aff1 = 0 and
    /// Aff0 < nr_vcpus. GICv2: the lowest CPU in `ITARGETSR` (KVM picks the same one).
    pub(crate) fn spi_target(&self, irq: &Irq) -> Option<usize> {
        let t = match self.version {
            Version::V3 if irq.irouter & !0xff == 0 => irq.irouter as usize,
            Version::V3 => return None,
            Version::V2 if irq.targets != 0 => irq.targets.trailing_zeros() as usize,
            Version::V2 => return None,
        };
        (t < self.nr_vcpus).then_some(t)
    }

    /// The vCPU whose list registers should carry `intid` (`vcpu`'s own if private): for an
    /// active SPI the vCPU that took it, else its routing.
    pub(crate) fn target(&self, vcpu: usize, intid: u32, irq: &Irq) -> Option<usize> {
        if intid < 32 {
            Some(vcpu)
        } else if irq.active && irq.active_on != NOT_LOADED {
            Some(irq.active_on as usize)
        } else {
            self.spi_target(irq)
        }
    }

    /// The vCPUs that should be told about a change to `intid` (seen from `vcpu` for private
    /// ones): its target if it is deliverable, and the vCPU holding it in a list register.
    pub(crate) fn kick_for(&self, s: &State, vcpu: usize, intid: u32) -> KickMask {
        let Some(irq) = s.irq(vcpu, intid) else {
            return 0;
        };
        let mut k = 0;
        if let Some(t) = self.target(vcpu, intid, irq) {
            if s.deliverable(irq) {
                k |= 1 << t;
            }
        }
        if irq.loaded_on != NOT_LOADED {
            k |= 1 << irq.loaded_on;
        }
        k
    }

    /// Drives the input line of a level-sensitive PPI (`vcpu`'s own, e.g. the timer, INTID 27)
    /// or SPI (`vcpu` ignored). Returns the vCPUs to kick.
    ///
    /// # Errors
    ///
    /// [`VgicError::BadIntid`] for SGIs and unimplemented INTIDs, [`VgicError::BadVcpu`].
    pub fn set_level(&self, vcpu: usize, intid: u32, level: bool) -> Result<KickMask, VgicError> {
        self.check_vcpu(vcpu)?;
        if intid < 16 {
            return Err(VgicError::BadIntid);
        }
        let mut s = self.state.lock();
        if Self::drive(&mut s, vcpu, intid, level)? {
            Ok(self.kick_for(&s, vcpu, intid))
        } else {
            Ok(0)
        }
    }

    /// Sets `intid`'s line level; false when nothing changed that needs a kick.
    #[inline]
    pub(crate) fn drive(
        s: &mut State,
        vcpu: usize,
        intid: u32,
        level: bool,
    ) -> Result<bool, VgicError> {
        // A line that stays low changes nothing (the virtual timer's, sampled at every entry,
        // mostly): it stays out of the busy set, and nobody needs a kick.
        if s.irq(vcpu, intid).ok_or(VgicError::BadIntid)?.level == level && !level {
            return Ok(false);
        }
        s.irq_mut(vcpu, intid).ok_or(VgicError::BadIntid)?.level = level;
        Ok(true)
    }

    /// Makes an interrupt pending as an edge (an SGI or PPI of `vcpu`, or an SPI). Returns the
    /// vCPUs to kick.
    ///
    /// # Errors
    ///
    /// [`VgicError::BadIntid`], [`VgicError::BadVcpu`].
    pub fn inject(&self, vcpu: usize, intid: u32) -> Result<KickMask, VgicError> {
        self.check_vcpu(vcpu)?;
        let v2_sgi = self.version == Version::V2 && intid < 16;
        let mut s = self.state.lock();
        let irq = s.irq_mut(vcpu, intid).ok_or(VgicError::BadIntid)?;
        if v2_sgi {
            irq.sources |= 1 << vcpu;
        } else {
            irq.latch = true;
        }
        Ok(self.kick_for(&s, vcpu, intid))
    }

    /// The vCPUs a write of `value` to `ICC_SGI1R_EL1` by `vcpu` targets (bit *i*: vCPU *i*),
    /// as [`Vgic::sgi1r`] decodes it: with IRM every vCPU but `vcpu`, else TargetList when
    /// Aff3.Aff2.Aff1 and RS are 0, else nobody.
    #[must_use]
    pub fn sgi1r_targets(&self, vcpu: usize, value: u64) -> u16 {
        let all = self.all_vcpus();
        if value & (1 << 40) != 0 {
            (all & !(1 << vcpu)) as u16
        } else {
            let aff1 = (value >> 16) & 0xff;
            let aff2 = (value >> 32) & 0xff;
            let rs = (value >> 44) & 0xf;
            let aff3 = (value >> 48) & 0xff;
            if aff1 | aff2 | rs | aff3 != 0 {
                0
            } else {
                (value & 0xffff) as u16 & all as u16
            }
        }
    }

    /// A trapped write of `value` to `ICC_SGI1R_EL1` by `vcpu` (GICv3). Decodes TargetList
    /// \[15:0\], Aff1 \[23:16\], INTID \[27:24\], Aff2 \[39:32\], IRM \[40\], RS \[47:44\] and
    /// Aff3 \[55:48\]; vCPU *i* has Aff0 = *i* and Aff3.Aff2.Aff1 = 0, so other affinities or
    /// range selectors target nobody. A group-1 SGI is only made pending at targets that have that
    /// SGI in group 1. Returns the vCPUs to kick.
    ///
    /// # Errors
    ///
    /// [`VgicError::BadVcpu`].
    pub fn sgi1r(&self, vcpu: usize, value: u64) -> Result<KickMask, VgicError> {
        self.check_vcpu(vcpu)?;
        let intid = ((value >> 24) & 0xf) as u32;
        let targets = self.sgi1r_targets(vcpu, value);
        let mut s = self.state.lock();
        let mut kick = 0;
        // Only the targets' bits (`sgi1r_targets` keeps them below `nr_vcpus`): mostly one.
        let mut rest = targets;
        while rest != 0 {
            let t = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let Some(irq) = s.irq_mut(t, intid).filter(|irq| irq.group1) else {
                continue;
            };
            irq.latch = true;
            kick |= self.kick_for(&s, t, intid);
        }
        Ok(kick)
    }

    /// Makes GICv2 SGI `intid` pending from `sender` at every vCPU in `targets`.
    pub(crate) fn send_v2_sgi(
        &self,
        s: &mut State,
        sender: usize,
        targets: u8,
        intid: u32,
    ) -> KickMask {
        let mut kick = 0;
        for t in 0..self.nr_vcpus {
            if targets & (1 << t) != 0 {
                if let Some(irq) = s.irq_mut(t, intid) {
                    irq.sources |= 1 << sender;
                }
                kick |= self.kick_for(s, t, intid);
            }
        }
        kick
    }

    pub(crate) fn all_vcpus(&self) -> KickMask {
        ((1u16 << self.nr_vcpus) - 1) as u8
    }

    /// Whether `vcpu` has an interrupt it would take with priority mask `pmr` (8-bit scale):
    /// pending, enabled, group-enabled, routed to it, and of higher priority than the mask. For
    /// WFI: call it after [`crate::VcpuIf::sync`], with [`crate::VcpuIf::priority_mask`].
    pub fn has_pending(&self, vcpu: usize, pmr: u8) -> bool {
        if vcpu >= self.nr_vcpus {
            return false;
        }
        let s = self.state.lock();
        for (mut busy, base) in s.busy(vcpu).into_iter().zip([0, 32]) {
            while busy != 0 {
                let intid = base + busy.trailing_zeros();
                busy &= busy - 1;
                if s.irq(vcpu, intid).is_some_and(|irq| {
                    self.target(vcpu, intid, irq) == Some(vcpu)
                        && s.deliverable(irq)
                        && irq.priority < pmr
                }) {
                    return true;
                }
            }
        }
        false
    }
}
