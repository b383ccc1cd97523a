//! Host tests of the debug decisions and, on the recording backend, of
//! the register effects.

use super::*;
use barriers::GuestPending;

const N: Counts = Counts { brps: 6, wrps: 4 };

fn enc(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysRegEnc {
    SysRegEnc::new(op0, op1, crn, crm, op2)
}

#[test]
fn counts_from_id_aa64dfr0() {
    // BRPs [15:12] = 5, WRPs [23:20] = 3: 6 and 4 (QEMU max, A72).
    assert_eq!(Counts::from_dfr0(0x0030_5000), N);
    assert_eq!(
        Counts::from_dfr0(0x00f0_f000),
        Counts { brps: 16, wrps: 16 }
    );
}

#[test]
fn classify_names_the_debug_space() {
    assert_eq!(classify(enc(2, 0, 0, 2, 2)), Some(DebugReg::Mdscr));
    assert_eq!(
        classify(enc(2, 0, 0, 5, 4)),
        Some(DebugReg::Point(DbgKind::Bvr, 5))
    );
    assert_eq!(
        classify(enc(2, 0, 0, 15, 5)),
        Some(DebugReg::Point(DbgKind::Bcr, 15))
    );
    assert_eq!(
        classify(enc(2, 0, 0, 3, 6)),
        Some(DebugReg::Point(DbgKind::Wvr, 3))
    );
    assert_eq!(
        classify(enc(2, 0, 0, 0, 7)),
        Some(DebugReg::Point(DbgKind::Wcr, 0))
    );
    assert_eq!(classify(enc(2, 0, 1, 0, 4)), Some(DebugReg::Oslar));
    assert_eq!(classify(enc(2, 0, 1, 1, 4)), Some(DebugReg::Oslsr));
    // OSDLR_EL1, DBGPRCR_EL1, MDRAR_EL1, MDCCSR_EL0: RAZ/WI.
    for e in [
        enc(2, 0, 1, 3, 4),
        enc(2, 0, 1, 4, 4),
        enc(2, 0, 1, 0, 0),
        enc(2, 3, 0, 1, 0),
    ] {
        assert_eq!(classify(e), Some(DebugReg::RazWi));
    }
    // PMCR_EL0 is not the debug space.
    assert_eq!(classify(enc(3, 3, 9, 12, 0)), None);
}

#[test]
fn a_first_access_makes_an_owner_and_values_are_masked() {
    let mut d = DebugRegs::new();
    assert!(!d.wants_cpu());
    // A read is enough (a debugger reading the registers first).
    assert_eq!(
        emulate(&mut d, DebugReg::Point(DbgKind::Bcr, 0), true, 0, N),
        Outcome::Done(0)
    );
    assert!(d.owner && d.wants_cpu());
    // Reserved bits of a control register and BVR[1:0] read as zero.
    emulate(&mut d, DebugReg::Point(DbgKind::Bcr, 5), false, u64::MAX, N);
    assert_eq!(d.bcr[5], BCR_WRITABLE);
    emulate(
        &mut d,
        DebugReg::Point(DbgKind::Bvr, 1),
        false,
        0x4000_1237,
        N,
    );
    assert_eq!(d.bvr[1], 0x4000_1234);
    emulate(&mut d, DebugReg::Point(DbgKind::Wcr, 3), false, u64::MAX, N);
    assert_eq!(d.wcr[3], WCR_WRITABLE);
    emulate(&mut d, DebugReg::Mdscr, false, u64::MAX, N);
    assert_eq!(d.mdscr, MDSCR_WRITABLE);
}

#[test]
fn a_missing_breakpoint_or_watchpoint_is_undefined() {
    let mut d = DebugRegs::new();
    for (kind, i) in [
        (DbgKind::Bvr, 6),
        (DbgKind::Bcr, 15),
        (DbgKind::Wvr, 4),
        (DbgKind::Wcr, 9),
    ] {
        for read in [true, false] {
            assert_eq!(
                emulate(&mut d, DebugReg::Point(kind, i), read, 1, N),
                Outcome::Undefined
            );
        }
    }
    // Nothing was written, and nothing made it an owner.
    assert_eq!(d, DebugRegs::new());
    // 16 of each: n = 15 exists.
    let all = Counts { brps: 16, wrps: 16 };
    assert_eq!(
        emulate(&mut d, DebugReg::Point(DbgKind::Wcr, 15), false, 1, all),
        Outcome::Done(0)
    );
}

#[test]
fn the_os_lock_keeps_the_registers_out_of_the_cpu() {
    let mut d = DebugRegs::new();
    emulate(&mut d, DebugReg::Mdscr, false, MDSCR_MDE | MDSCR_KDE, N);
    assert!(d.wants_cpu());
    assert_eq!(
        emulate(&mut d, DebugReg::Oslsr, true, 0, N),
        Outcome::Done(OSLSR_OSLM)
    );
    emulate(&mut d, DebugReg::Oslar, false, 1, N);
    assert!(!d.wants_cpu());
    assert_eq!(
        emulate(&mut d, DebugReg::Oslsr, true, 0, N),
        Outcome::Done(OSLSR_OSLM | OSLSR_OSLK)
    );
    emulate(&mut d, DebugReg::Oslar, false, 0, N);
    assert!(d.wants_cpu());
    // OSLAR_EL1 is write-only, OSLSR_EL1 read-only.
    assert_eq!(
        emulate(&mut d, DebugReg::Oslar, true, 0, N),
        Outcome::Undefined
    );
    assert_eq!(
        emulate(&mut d, DebugReg::Oslsr, false, 0, N),
        Outcome::Undefined
    );
    assert_eq!(
        emulate(&mut d, DebugReg::RazWi, true, 0, N),
        Outcome::Done(0)
    );
}

#[test]
fn ownership_ends_with_a_run_that_enables_nothing() {
    let mut d = DebugRegs::new();
    emulate(&mut d, DebugReg::Point(DbgKind::Bcr, 0), false, 0, N);
    d.after_run();
    assert!(!d.wants_cpu(), "Linux's boot-time reset of the registers");
    for bit in [MDSCR_MDE, MDSCR_KDE, MDSCR_SS] {
        d.mdscr = bit;
        d.after_run();
        assert!(d.wants_cpu(), "{bit:#x}");
    }
}

#[test]
fn stepping_past_clears_pstate_ss_only_for_a_live_vcpu() {
    let mut d = DebugRegs::new();
    let mut p = PSTATE_SS | 0x3c5;
    stepped_past(&d, &mut p, 4);
    assert_eq!(p, PSTATE_SS | 0x3c5, "not live: untouched");
    d.live = true;
    stepped_past(&d, &mut p, 0);
    assert_eq!(
        p,
        PSTATE_SS | 0x3c5,
        "not stepped past (retried): untouched"
    );
    stepped_past(&d, &mut p, 4);
    assert_eq!(p, 0x3c5);
}

/// The register effects, on the recording backend: a load writes every
/// implemented register and clears only MDCR_EL2.TDA; an unload reads
/// them back, zeroes MDSCR_EL1 and every control, and sets TDA.
#[test]
fn load_and_unload_write_every_register() {
    use barriers::{Insn, SysReg};
    let mut d = DebugRegs::new();
    for i in 0..6 {
        d.bvr[i] = 0x1000 * (i as u64 + 1);
        d.bcr[i] = BCR_WRITABLE;
    }
    d.mdscr = MDSCR_MDE;
    let mut p = GuestPending::new();
    barriers::trace::reset();
    barriers::trace::set_reg(SysReg::MdcrEl2, 0x0e60);
    load(&mut d, N, &mut p);
    let t = barriers::trace::take();
    let writes = |t: &[Insn], f: &dyn Fn(SysReg) -> bool| {
        t.iter()
            .filter(|i| matches!(i, Insn::Msr { reg, .. } if f(*reg)))
            .count()
    };
    assert_eq!(
        writes(&t, &|r| matches!(r, SysReg::DbgBvr(_) | SysReg::DbgBcr(_))),
        12
    );
    assert_eq!(
        writes(&t, &|r| matches!(r, SysReg::DbgWvr(_) | SysReg::DbgWcr(_))),
        8
    );
    assert!(t.contains(&Insn::Msr {
        reg: SysReg::MdcrEl2,
        value: 0x0c60,
        changed: MDCR_TDA
    }));
    assert!(d.live);
    unload(&mut d, N, &mut p);
    let t = barriers::trace::take();
    assert_eq!(
        writes(&t, &|r| matches!(r, SysReg::DbgBcr(_) | SysReg::DbgWcr(_))),
        10
    );
    assert!(t.iter().any(|i| matches!(
        i,
        Insn::Msr {
            reg: SysReg::MdscrEl1,
            value: 0,
            ..
        }
    )));
    assert!(t.iter().any(|i| matches!(
        i,
        Insn::Msr {
            reg: SysReg::MdcrEl2,
            value: 0x0e60,
            ..
        }
    )));
    assert_eq!(d.bvr[5], 0x6000, "saved back");
    assert_eq!(d.mdscr, MDSCR_MDE);
    assert!(!d.live);
    p.power_off();
}

#[test]
fn el0_dcc_access_is_refused_only_under_the_guests_tdcc() {
    let mut d = DebugRegs::new();
    let (el0t, el1h) = (0x0, 0x5);
    assert!(!el0_dcc_refused(&d, el0t), "TDCC clear: RAZ/WI");
    d.mdscr = MDSCR_TDCC;
    assert!(el0_dcc_refused(&d, el0t));
    assert!(!el0_dcc_refused(&d, el1h), "EL1 is not affected by TDCC");
}
