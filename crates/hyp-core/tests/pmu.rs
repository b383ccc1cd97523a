//! The virtual PMU's decoding and register effects (`vcpu::pmu`) against a
//! model PMU: what reaches the hardware for each guest access, what a guest
//! reads back, the accesses that must be UNDEFINED, and that a save leaves
//! nothing of one vCPU's PMU for the next.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use barriers::pmu::PmuReg;
use hyp_core::arch::esr::SysRegEnc;
use hyp_core::vcpu::pmu::{self, GuestReg, PmuHw, PmuInfo, PmuState, Undefined};

/// A PMUv3 with `n` event counters: the set/clear pairs share one
/// register, PMCR_EL0.P and C reset counters, N is read-only.
#[derive(Debug, Default)]
struct Model {
    n: u8,
    pmcr: u64,
    cnten: u64,
    inten: u64,
    ovs: u64,
    ccntr: u64,
    ccfiltr: u64,
    userenr: u64,
    evcntr: [u64; 31],
    evtyper: [u64; 31],
    writes: Vec<(PmuReg, u64)>,
}

impl Model {
    fn new(n: u8) -> Self {
        Self {
            n,
            ..Self::default()
        }
    }
}

impl PmuHw for Model {
    fn read(&mut self, r: PmuReg) -> u64 {
        match r {
            PmuReg::Pmcr => self.pmcr | u64::from(self.n) << 11 | 0x4100_0000,
            PmuReg::Cntenset | PmuReg::Cntenclr => self.cnten,
            PmuReg::Intenset | PmuReg::Intenclr => self.inten,
            PmuReg::Ovsset | PmuReg::Ovsclr => self.ovs,
            PmuReg::Ccntr => self.ccntr,
            PmuReg::Ccfiltr => self.ccfiltr,
            PmuReg::Userenr => self.userenr,
            PmuReg::Ceid0 => 0x6000_0000_0000_403f,
            PmuReg::Ceid1 => 0xf,
            PmuReg::Evcntr(i) => {
                assert!(i < self.n, "hardware access to PMEVCNTR{i}");
                self.evcntr[i as usize]
            }
            PmuReg::Evtyper(i) => {
                assert!(i < self.n, "hardware access to PMEVTYPER{i}");
                self.evtyper[i as usize]
            }
        }
    }

    fn write(&mut self, r: PmuReg, v: u64) {
        self.writes.push((r, v));
        match r {
            PmuReg::Pmcr => {
                if v & pmu::PMCR_P != 0 {
                    self.evcntr = [0; 31];
                }
                if v & pmu::PMCR_C != 0 {
                    self.ccntr = 0;
                }
                self.pmcr = v & 0xff & !(pmu::PMCR_P | pmu::PMCR_C);
            }
            PmuReg::Cntenset => self.cnten |= v,
            PmuReg::Cntenclr => self.cnten &= !v,
            PmuReg::Intenset => self.inten |= v,
            PmuReg::Intenclr => self.inten &= !v,
            PmuReg::Ovsset => self.ovs |= v,
            PmuReg::Ovsclr => self.ovs &= !v,
            PmuReg::Ccntr => self.ccntr = v,
            PmuReg::Ccfiltr => self.ccfiltr = v,
            PmuReg::Userenr => self.userenr = v,
            PmuReg::Ceid0 | PmuReg::Ceid1 => panic!("write of a read-only register"),
            PmuReg::Evcntr(i) => {
                assert!(i < self.n, "hardware access to PMEVCNTR{i}");
                self.evcntr[i as usize] = v;
            }
            PmuReg::Evtyper(i) => {
                assert!(i < self.n, "hardware access to PMEVTYPER{i}");
                self.evtyper[i as usize] = v;
            }
        }
    }
}

const P1: PmuInfo = PmuInfo { hw_ver: 4, n: 6 };

fn enc(op1: u8, crn: u8, crm: u8, op2: u8) -> SysRegEnc {
    SysRegEnc {
        op0: 3,
        op1,
        crn,
        crm,
        op2,
    }
}

fn write(m: &mut Model, st: &mut PmuState, r: GuestReg, v: u64) -> Result<u64, Undefined> {
    pmu::access(m, st, P1, r, Some(v), 1)
}

fn read(m: &mut Model, st: &mut PmuState, r: GuestReg) -> Result<u64, Undefined> {
    pmu::access(m, st, P1, r, None, 1)
}

#[test]
fn decode_names_every_register_and_nothing_else() {
    let cases = [
        ((3, 9, 12, 0), GuestReg::Pmcr),
        ((3, 9, 12, 1), GuestReg::Cntenset),
        ((3, 9, 12, 2), GuestReg::Cntenclr),
        ((3, 9, 12, 3), GuestReg::Ovsclr),
        ((3, 9, 12, 4), GuestReg::Swinc),
        ((3, 9, 12, 5), GuestReg::Selr),
        ((3, 9, 12, 6), GuestReg::Ceid0),
        ((3, 9, 12, 7), GuestReg::Ceid1),
        ((3, 9, 13, 0), GuestReg::Ccntr),
        ((3, 9, 13, 1), GuestReg::Xevtyper),
        ((3, 9, 13, 2), GuestReg::Xevcntr),
        ((3, 9, 14, 0), GuestReg::Userenr),
        ((0, 9, 14, 1), GuestReg::Intenset),
        ((0, 9, 14, 2), GuestReg::Intenclr),
        ((3, 9, 14, 3), GuestReg::Ovsset),
        ((0, 9, 14, 6), GuestReg::Other), // PMMIR_EL1 (PMUv3p4): not offered
        ((3, 14, 8, 0), GuestReg::Evcntr(0)),
        ((3, 14, 11, 6), GuestReg::Evcntr(30)),
        ((3, 14, 11, 7), GuestReg::Evcntr(31)), // does not exist: refused later
        ((3, 14, 12, 0), GuestReg::Evtyper(0)),
        ((3, 14, 15, 6), GuestReg::Evtyper(30)),
        ((3, 14, 15, 7), GuestReg::Ccfiltr),
    ];
    for ((op1, crn, crm, op2), want) in cases {
        assert_eq!(
            pmu::decode(enc(op1, crn, crm, op2)),
            Some(want),
            "{op1} {crn} {crm} {op2}"
        );
    }
    // The generic timer (CRn = 14, CRm = 0..3), debug (op0 = 2), SPE
    // (CRn = 9, CRm = 9/10) are not the PMU's.
    for (op1, crn, crm, op2) in [
        (3, 14, 0, 0),
        (3, 14, 3, 1),
        (3, 14, 2, 2),
        (0, 9, 9, 0),
        (0, 9, 10, 7),
    ] {
        assert_eq!(pmu::decode(enc(op1, crn, crm, op2)), None);
    }
    let mut debug = enc(0, 0, 2, 2);
    debug.op0 = 2;
    assert_eq!(pmu::decode(debug), None);
}

#[test]
fn counters_past_n_are_undefined_and_never_reach_the_hardware() {
    let mut m = Model::new(P1.n);
    let mut st = PmuState::new();
    for n in P1.n..31 {
        assert_eq!(read(&mut m, &mut st, GuestReg::Evcntr(n)), Err(Undefined));
        assert_eq!(
            write(&mut m, &mut st, GuestReg::Evtyper(n), 0x11),
            Err(Undefined)
        );
        // Through PMSELR_EL0.
        write(&mut m, &mut st, GuestReg::Selr, u64::from(n)).unwrap();
        assert_eq!(write(&mut m, &mut st, GuestReg::Xevcntr, 5), Err(Undefined));
        assert_eq!(read(&mut m, &mut st, GuestReg::Xevtyper), Err(Undefined));
    }
    assert_eq!(
        write(&mut m, &mut st, GuestReg::Evcntr(31), 1),
        Err(Undefined)
    );
    // SEL = 31 is the cycle counter's filter for PMXEVTYPER only.
    write(&mut m, &mut st, GuestReg::Selr, 31).unwrap();
    write(&mut m, &mut st, GuestReg::Xevtyper, u64::MAX).unwrap();
    assert_eq!(m.ccfiltr, pmu::FILTER_P | pmu::FILTER_U);
    assert_eq!(read(&mut m, &mut st, GuestReg::Xevcntr), Err(Undefined));
    // PMSELR_EL0 keeps SEL only.
    write(&mut m, &mut st, GuestReg::Selr, u64::MAX).unwrap();
    assert_eq!(read(&mut m, &mut st, GuestReg::Selr), Ok(31));
    // Read-only and write-only registers, and what is not offered.
    assert_eq!(write(&mut m, &mut st, GuestReg::Ceid0, 1), Err(Undefined));
    assert_eq!(write(&mut m, &mut st, GuestReg::Ceid1, 1), Err(Undefined));
    assert_eq!(read(&mut m, &mut st, GuestReg::Swinc), Err(Undefined));
    assert_eq!(read(&mut m, &mut st, GuestReg::Other), Err(Undefined));
    assert_eq!(write(&mut m, &mut st, GuestReg::Other, 0), Err(Undefined));
    assert!(m.writes.iter().all(|(r, _)| *r == PmuReg::Ccfiltr));
}

#[test]
fn el2_is_never_counted_whatever_the_guest_writes() {
    let mut m = Model::new(P1.n);
    let mut st = PmuState::new();
    // P, U, NSK (29), NSU (28), NSH (27), M (26), SH (24), all events bits.
    let hostile = u64::MAX;
    for i in 0..P1.n {
        write(&mut m, &mut st, GuestReg::Evtyper(i), hostile).unwrap();
        assert_eq!(m.evtyper[i as usize], P1.evtyper_mask());
        assert_eq!(m.evtyper[i as usize] & pmu::FILTER_NSH, 0);
        assert_eq!(
            read(&mut m, &mut st, GuestReg::Evtyper(i)),
            Ok(P1.evtyper_mask())
        );
    }
    write(&mut m, &mut st, GuestReg::Ccfiltr, hostile).unwrap();
    assert_eq!(m.ccfiltr, pmu::FILTER_P | pmu::FILTER_U);
    // PMCR_EL0.DP stays set in hardware (HPMD then covers the cycle
    // counter), while the guest reads its own DP back.
    write(&mut m, &mut st, GuestReg::Pmcr, pmu::PMCR_E).unwrap();
    assert_eq!(m.pmcr & pmu::PMCR_DP, pmu::PMCR_DP);
    let r = read(&mut m, &mut st, GuestReg::Pmcr).unwrap();
    assert_eq!(r & pmu::PMCR_DP, 0);
    assert_eq!(r & pmu::PMCR_E, pmu::PMCR_E);
    assert_eq!((r >> 11) & 0x1f, u64::from(P1.n), "N");
    // LP (bit 7, PMUv3p5) is not offered.
    write(&mut m, &mut st, GuestReg::Pmcr, 0xff).unwrap();
    assert_eq!(m.pmcr & (1 << 7), 0);
    assert_eq!(read(&mut m, &mut st, GuestReg::Pmcr).unwrap() & 0x7f, 0x79);
    // The MDCR_EL2 fields: all counters to the guest, EL2 prohibited.
    assert_eq!(P1.mdcr(), 6 | pmu::MDCR_HPMD);
    assert_eq!(
        PmuInfo { hw_ver: 1, n: 6 }.mdcr(),
        6,
        "no HPMD before PMUv3p1"
    );
    assert_eq!(
        PmuInfo { hw_ver: 6, n: 20 }.mdcr(),
        20 | pmu::MDCR_HPMD | pmu::MDCR_HCCD
    );
}

#[test]
fn enable_interrupt_and_overflow_sets_keep_to_the_counters_that_exist() {
    let mut m = Model::new(P1.n);
    let mut st = PmuState::new();
    for r in [GuestReg::Cntenset, GuestReg::Intenset, GuestReg::Ovsset] {
        write(&mut m, &mut st, r, u64::MAX).unwrap();
    }
    assert_eq!(
        (m.cnten, m.inten, m.ovs),
        (0x8000_003f, 0x8000_003f, 0x8000_003f)
    );
    write(&mut m, &mut st, GuestReg::Ovsclr, 1).unwrap();
    assert_eq!(read(&mut m, &mut st, GuestReg::Ovsset), Ok(0x8000_003e));
    // 32-bit event counters (PMUv3p1), 64-bit cycle counter.
    write(&mut m, &mut st, GuestReg::Evcntr(2), u64::MAX).unwrap();
    assert_eq!(m.evcntr[2], 0xffff_ffff);
    write(&mut m, &mut st, GuestReg::Ccntr, u64::MAX).unwrap();
    assert_eq!(m.ccntr, u64::MAX);
    write(&mut m, &mut st, GuestReg::Userenr, u64::MAX).unwrap();
    assert_eq!(m.userenr, 0xf);
}

#[test]
fn save_quiesces_and_load_leaves_nothing_of_the_previous_owner() {
    let mut m = Model::new(P1.n);
    let mut a = PmuState::new();
    pmu::load(&mut m, &a, P1);
    for i in 0..P1.n {
        write(&mut m, &mut a, GuestReg::Evtyper(i), 0x11).unwrap();
        write(
            &mut m,
            &mut a,
            GuestReg::Evcntr(i),
            0xffff_fff0 + u64::from(i),
        )
        .unwrap();
    }
    write(&mut m, &mut a, GuestReg::Ccntr, 12345).unwrap();
    write(&mut m, &mut a, GuestReg::Cntenset, u64::MAX).unwrap();
    write(&mut m, &mut a, GuestReg::Intenset, 1).unwrap();
    write(&mut m, &mut a, GuestReg::Ovsset, 1).unwrap();
    write(&mut m, &mut a, GuestReg::Userenr, 1).unwrap();
    write(&mut m, &mut a, GuestReg::Pmcr, pmu::PMCR_E | pmu::PMCR_LC).unwrap();
    assert!(pmu::irq_level(&mut m, P1));
    pmu::save(&mut m, &mut a, P1);
    // Nothing counts, interrupts or is readable at EL0 afterwards.
    assert_eq!(m.pmcr & pmu::PMCR_E, 0);
    assert_eq!((m.cnten, m.inten, m.ovs, m.userenr), (0, 0, 0, 0));
    assert!(!pmu::irq_level(&mut m, P1));
    assert_eq!(a.cnten, 0x8000_003f);
    assert_eq!(a.ccntr, 12345);
    assert_eq!(a.evcntr[5], 0xffff_fff5);
    assert_eq!(a.pmcr, pmu::PMCR_E | pmu::PMCR_LC);

    // Another vCPU's first use: every counter and type it can read is its
    // own (zero), not A's.
    let mut b = PmuState::new();
    pmu::load(&mut m, &b, P1);
    for i in 0..P1.n {
        assert_eq!(read(&mut m, &mut b, GuestReg::Evcntr(i)), Ok(0));
        assert_eq!(read(&mut m, &mut b, GuestReg::Evtyper(i)), Ok(0));
    }
    assert_eq!(read(&mut m, &mut b, GuestReg::Ccntr), Ok(0));
    assert_eq!(read(&mut m, &mut b, GuestReg::Ovsset), Ok(0));
    assert_eq!(read(&mut m, &mut b, GuestReg::Pmcr).unwrap() & 0x7f, 0);
    pmu::save(&mut m, &mut b, P1);

    // A again: exactly where it stopped.
    pmu::load(&mut m, &a, P1);
    assert_eq!(m.evcntr[5], 0xffff_fff5);
    assert_eq!(m.ccntr, 12345);
    assert_eq!((m.cnten, m.inten, m.ovs, m.userenr), (0x8000_003f, 1, 1, 1));
    assert_eq!(m.pmcr, pmu::PMCR_E | pmu::PMCR_LC | pmu::PMCR_DP);
    // PMCR_EL0.E is written last: nothing counts while loading.
    assert_eq!(m.writes.last(), Some(&(PmuReg::Pmcr, m.pmcr)));
    assert!(pmu::irq_level(&mut m, P1));
}

#[test]
fn software_increment_counts_sw_incr_counters_only() {
    let mut m = Model::new(P1.n);
    let mut st = PmuState::new();
    write(&mut m, &mut st, GuestReg::Evtyper(0), 0).unwrap(); // SW_INCR
    write(&mut m, &mut st, GuestReg::Evtyper(1), 0x11).unwrap(); // CPU_CYCLES
    write(&mut m, &mut st, GuestReg::Evtyper(2), pmu::FILTER_P).unwrap(); // SW_INCR, not at EL1
    write(&mut m, &mut st, GuestReg::Evcntr(0), 0xffff_ffff).unwrap();
    write(&mut m, &mut st, GuestReg::Cntenset, 0b111).unwrap();
    // PMCR_EL0.E clear: nothing.
    write(&mut m, &mut st, GuestReg::Swinc, 0b111).unwrap();
    assert_eq!(m.evcntr[0], 0xffff_ffff);
    write(&mut m, &mut st, GuestReg::Pmcr, pmu::PMCR_E).unwrap();
    write(&mut m, &mut st, GuestReg::Swinc, u64::MAX).unwrap();
    assert_eq!(m.evcntr[..3], [0, 0, 0]);
    assert_eq!(m.ovs, 1, "counter 0 wrapped at 32 bits");
    pmu::access(&mut m, &mut st, P1, GuestReg::Swinc, Some(0b100), 0).unwrap();
    assert_eq!(m.evcntr[2], 1, "counted at EL0");
}

#[test]
fn id_register_and_levels() {
    assert_eq!(
        PmuInfo::new(0x6 << 8, 6 << 11),
        Some(PmuInfo { hw_ver: 6, n: 6 })
    );
    assert_eq!(PmuInfo::new(0, 6 << 11), None);
    assert_eq!(
        PmuInfo::new(0xf << 8, 6 << 11),
        None,
        "IMPLEMENTATION DEFINED PMU"
    );
    assert_eq!(
        PmuInfo::new(0x4 << 8, 0),
        None,
        "no event counter: HPMN = 0"
    );
    assert_eq!(PmuInfo { hw_ver: 9, n: 6 }.guest_ver(), pmu::PMUV3P1);
    assert_eq!(PmuInfo { hw_ver: 1, n: 6 }.guest_ver(), 1);
    assert_eq!(
        PmuInfo { hw_ver: 1, n: 6 }.evtyper_mask(),
        (3 << 30) | 0x3ff
    );
    let sanitised = 0x0000_0000_0030_5006; // PMUVer hidden by `idregs`
    assert_eq!(pmu::dfr0_for_guest(sanitised, None), sanitised);
    assert_eq!(pmu::dfr0_for_guest(sanitised, Some(P1)), sanitised | 4 << 8);
}
