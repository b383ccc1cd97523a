//! A fake list-register backend that also plays the guest's virtual CPU interface: acknowledge,
//! EOI (priority drop, plus deactivation in EOImode 0) and DIR, as the GIC does with list
//! registers (IHI 0069 "Virtual CPU interface"; simplified: no preemption check against the
//! running priority).
#![allow(dead_code)]

use vgic::lr::{hcr, vmcr};
use vgic::{ListRegs, Lr, LrState, Version, Vgic};

/// `N` list registers stored in their hardware encoding, so every test also exercises the
/// encoders.
#[derive(Debug)]
pub struct Fake {
    pub version: Version,
    pub raw: [u64; 16],
    pub n: usize,
    pub hcr: u32,
    pub vmcr: u32,
    pub aprs: [u32; 2],
    pub writes: usize,
}

impl Fake {
    pub fn new(version: Version, n: usize) -> Self {
        let mut f = Fake {
            version,
            raw: [0; 16],
            n,
            hcr: 0,
            vmcr: 0,
            aprs: [0; 2],
            writes: 0,
        };
        f.set_pmr(0xff);
        f
    }

    pub fn lr(&self, i: usize) -> Lr {
        match self.version {
            Version::V3 => Lr::decode_v3(self.raw[i]),
            Version::V2 => Lr::decode_v2(self.raw[i] as u32),
        }
    }

    fn put(&mut self, i: usize, lr: &Lr) {
        self.raw[i] = match self.version {
            Version::V3 => lr.encode_v3(),
            Version::V2 => lr.encode_v2() as u64,
        };
    }

    pub fn set_pmr(&mut self, pmr: u8) {
        self.vmcr = match self.version {
            Version::V3 => (self.vmcr & 0x00ff_ffff) | ((pmr as u32) << 24),
            Version::V2 => (self.vmcr & 0x07ff_ffff) | (((pmr >> 3) as u32) << 27),
        };
    }

    pub fn set_eoimode(&mut self, on: bool) {
        self.vmcr = (self.vmcr & !vmcr::EOIM) | if on { vmcr::EOIM } else { 0 };
    }

    /// Valid (non-invalid) list registers as (vINTID, state).
    pub fn valid(&self) -> Vec<(u32, LrState)> {
        (0..self.n)
            .map(|i| self.lr(i))
            .filter(|l| l.state != LrState::Invalid)
            .map(|l| (l.vintid, l.state))
            .collect()
    }

    /// The guest acknowledges: the pending list register with the highest priority (lowest
    /// value, then lowest index) under the priority mask becomes active. Returns its vINTID.
    pub fn ack(&mut self) -> Option<u32> {
        let pmr = vmcr::pmr(self.version, self.vmcr);
        let i = (0..self.n)
            .filter(|&i| self.lr(i).state.pending() && self.lr(i).priority < pmr)
            .min_by_key(|&i| self.lr(i).priority)?;
        let mut lr = self.lr(i);
        lr.state = LrState::Active;
        self.put(i, &lr);
        self.aprs[lr.group1 as usize] |= 1 << (lr.priority >> 3);
        Some(lr.vintid)
    }

    /// The guest writes EOIR: priority drop, and deactivation in EOImode 0.
    pub fn eoi(&mut self, intid: u32) {
        let g = (0..self.n)
            .map(|i| self.lr(i))
            .find(|l| l.vintid == intid && l.state.active())
            .map_or(1, |l| l.group1 as usize);
        let a = self.aprs[g];
        self.aprs[g] = a & a.wrapping_sub(1);
        if self.vmcr & vmcr::EOIM == 0 {
            self.deactivate(intid);
        }
    }

    /// The guest writes DIR (EOImode 1).
    pub fn dir(&mut self, intid: u32) {
        self.deactivate(intid);
    }

    fn deactivate(&mut self, intid: u32) {
        for i in 0..self.n {
            let mut lr = self.lr(i);
            if lr.vintid == intid && lr.state.active() {
                lr.state = LrState::new(lr.state.pending(), false);
                self.put(i, &lr);
                return;
            }
        }
    }

    /// Whether a maintenance interrupt is asserted: underflow, or an EOI-maintenance list
    /// register that was deactivated (EISR).
    pub fn maintenance(&self) -> bool {
        let valid = self.valid().len();
        let eisr = (0..self.n).any(|i| {
            let l = self.lr(i);
            l.state == LrState::Invalid && l.eoi_maint
        });
        self.hcr & hcr::EN != 0 && ((self.hcr & hcr::UIE != 0 && valid <= 1) || eisr)
    }

    /// Guest takes one interrupt, handles it and EOIs it (EOImode 0).
    pub fn take_one(&mut self) -> Option<u32> {
        let i = self.ack()?;
        self.eoi(i);
        Some(i)
    }
}

impl ListRegs for Fake {
    fn nr_lrs(&self) -> usize {
        self.n
    }
    fn read_lr(&mut self, i: usize) -> Lr {
        self.lr(i)
    }
    fn write_lr(&mut self, i: usize, lr: &Lr) {
        assert!(i < self.n, "LR {i} out of range");
        self.writes += 1;
        self.put(i, lr);
    }
    fn empty_lrs(&mut self) -> u16 {
        (0..self.n)
            .filter(|&i| self.lr(i).state == LrState::Invalid && !self.lr(i).eoi_maint)
            .fold(0, |m, i| m | 1 << i)
    }
    fn write_hcr(&mut self, hcr: u32) {
        self.hcr = hcr;
    }
    fn read_vmcr(&mut self) -> u32 {
        self.vmcr
    }
    fn write_vmcr(&mut self, vmcr: u32) {
        self.vmcr = vmcr;
    }
    fn read_aprs(&mut self) -> [u32; 2] {
        self.aprs
    }
    fn write_aprs(&mut self, aprs: [u32; 2]) {
        self.aprs = aprs;
    }
}

/// GICD write helper.
pub fn dw(g: &Vgic, vcpu: usize, off: u64, v: u64) -> u8 {
    g.mmio(vcpu, vgic::Region::Dist, off, 4, Some(v))
        .expect("GICD write")
        .kick
}

/// GICD read helper.
pub fn dr(g: &Vgic, vcpu: usize, off: u64) -> u64 {
    g.mmio(vcpu, vgic::Region::Dist, off, 4, None)
        .expect("GICD read")
        .value
}

/// Enables both groups in GICD_CTLR, enables `intid` and sets its priority (v3 private INTIDs
/// through vCPU `vcpu`'s redistributor).
pub fn setup(g: &Vgic, vcpu: usize, intid: u32, prio: u8) {
    let v3 = g.version() == Version::V3;
    dw(g, vcpu, 0, 3);
    let (region, base) = if v3 && intid < 32 {
        (
            vgic::Region::Redist,
            vcpu as u64 * vgic::REDIST_FRAME_SIZE + 0x1_0000,
        )
    } else {
        (vgic::Region::Dist, 0)
    };
    let word = (intid / 32) as u64 * 4;
    g.mmio(
        vcpu,
        region,
        base + 0x100 + word,
        4,
        Some(1 << (intid % 32)),
    )
    .expect("ISENABLER");
    g.mmio(
        vcpu,
        region,
        base + 0x400 + intid as u64,
        1,
        Some(prio as u64),
    )
    .expect("IPRIORITYR");
}
