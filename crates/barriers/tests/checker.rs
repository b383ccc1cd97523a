//! The checker catches seeded mistakes (and reports each under the right invariant).

use barriers::check::{check, summary, Kind, Violation};
use barriers::{Consumer, DsbKind, Insn, SysReg, Tlbi};

fn msr(reg: SysReg, value: u64, changed: u64) -> Insn {
    Insn::Msr {
        reg,
        value,
        changed,
    }
}
fn st(addr: u64, old: u64, new: u64) -> Insn {
    Insn::Store {
        addr,
        old,
        new,
        ia: Some(0x1000),
        level: Some(3),
    }
}
/// Checks `t` as stage-2 maintenance of VM 1 with VMID 1 loaded (the markers a `PtBatch` records
/// before its TLBIs), reporting indices relative to `t`.
fn check_s2(t: &[Insn]) -> Vec<Violation> {
    let mut full = vec![
        Insn::Use(Consumer::VttbrIs {
            vmid: 1,
            synced: true,
        }),
        Insn::Use(Consumer::Stage2Edit { vmid: 1 }),
    ];
    full.extend_from_slice(t);
    check(&full)
        .into_iter()
        .map(|mut v| {
            v.index -= 2;
            v
        })
        .collect()
}

fn invariants(v: &[Violation]) -> Vec<(u8, usize)> {
    v.iter().map(|v| (v.invariant, v.index)).collect()
}

const TGE: u64 = 1 << 27;
const TWI: u64 = 1 << 13;
const ISHST: Insn = Insn::Dsb(DsbKind::Ishst);
const ISH: Insn = Insn::Dsb(DsbKind::Ish);
const IPA: Insn = Insn::Tlbi(Tlbi::Ipas2e1is {
    ipa: 0x1000,
    level: Some(3),
});
const VMALLE1: Insn = Insn::Tlbi(Tlbi::Vmalle1is);

#[test]
fn missing_isb_before_el1_access() {
    let t = [
        msr(SysReg::HcrEl2, TGE, TGE),
        msr(SysReg::SctlrEl1, 1, 1),
        Insn::Isb,
        Insn::Eret,
    ];
    assert_eq!(invariants(&check(&t)), vec![(6, 1)]);
    let t = [
        msr(SysReg::HcrEl2, TGE, TGE),
        Insn::Mrs {
            reg: SysReg::TcrEl1,
        },
    ];
    assert_eq!(invariants(&check(&t)), vec![(6, 1)]);
    let fixed = [
        msr(SysReg::HcrEl2, TGE, TGE),
        Insn::Isb,
        msr(SysReg::SctlrEl1, 1, 1),
        Insn::Eret,
    ];
    assert_eq!(check(&fixed), vec![]);
}

#[test]
fn needless_isb_after_trap_only_change() {
    let t = [
        msr(SysReg::HcrEl2, TWI, TWI),
        msr(SysReg::VbarEl2, 0x8000, 0x8000),
        Insn::Isb,
        Insn::Eret,
    ];
    assert_eq!(invariants(&check(&t)), vec![(2, 2)]);
    let fixed = [
        msr(SysReg::HcrEl2, TWI, TWI),
        msr(SysReg::VbarEl2, 0x8000, 0x8000),
        Insn::Eret,
    ];
    assert_eq!(check(&fixed), vec![]);
}

#[test]
fn eret_inputs_need_explicit_isb() {
    let rw = 1 << 31;
    let t = [msr(SysReg::HcrEl2, rw, rw), Insn::Eret];
    assert_eq!(invariants(&check(&t)), vec![(4, 1)]);
}

#[test]
fn tlbi_by_vmid_after_vttbr_needs_isb() {
    let vttbr = 2u64 << 48;
    let t = [
        msr(SysReg::VttbrEl2, vttbr, vttbr),
        Insn::Use(Consumer::Stage2Edit { vmid: 2 }),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
    ];
    let v = check(&t);
    assert_eq!(invariants(&v), vec![(7, 2)]);
    assert_eq!(v[0].kind, Kind::MissingIsb);
    let t = [
        msr(SysReg::VttbrEl2, vttbr, vttbr),
        Insn::Isb,
        Insn::Use(Consumer::Stage2Edit { vmid: 3 }),
    ];
    assert_eq!(invariants(&check(&t)), vec![(7, 2)]);
}

#[test]
fn fp_after_cptr_clear_needs_isb() {
    let t = [
        msr(SysReg::CptrEl2, 0x33ff, 0x400),
        Insn::Use(Consumer::El2Fp),
    ];
    assert_eq!(invariants(&check(&t)), vec![(8, 1)]);
    // Setting a trap needs nothing.
    let t = [
        msr(SysReg::CptrEl2, 0x37ff, 0x400),
        Insn::Use(Consumer::El2Fp),
        Insn::Eret,
    ];
    assert_eq!(check(&t), vec![]);
}

#[test]
fn gic_and_el2_memory_need_isb() {
    let t = [
        msr(SysReg::IccSreEl2, 0xf, 0xf),
        msr(SysReg::IchLr(0), 1, 1),
        Insn::Isb,
    ];
    assert_eq!(invariants(&check(&t)), vec![(1, 1)]);
    let t = [
        msr(SysReg::Ttbr0El2, 0x8000, 0x8000),
        Insn::Use(Consumer::El2Memory),
    ];
    assert_eq!(invariants(&check(&t)), vec![(1, 1)]);
}

#[test]
fn tlbi_before_dsb() {
    let t = [st(0x10, 3, 0), IPA, ISH, VMALLE1, ISH];
    assert_eq!(invariants(&check_s2(&t)), vec![(11, 1)]);
}

#[test]
fn make_before_break_completed() {
    // DSB ISHST and TLBI issued, but the make comes before the DSB ISH.
    let t = [
        st(0x10, 3, 0),
        ISHST,
        IPA,
        st(0x10, 0, 0x2003),
        ISH,
        VMALLE1,
        ISH,
    ];
    assert_eq!(invariants(&check_s2(&t)), vec![(11, 3)]);
    let good = [
        st(0x10, 3, 0),
        ISHST,
        IPA,
        ISH,
        VMALLE1,
        ISH,
        st(0x10, 0, 0x2003),
        ISHST,
        Insn::Eret,
    ];
    assert_eq!(check_s2(&good), vec![]);
}

#[test]
fn stage1_flush_after_ipas2() {
    let t = [st(0x10, 3, 0), ISHST, IPA, ISH];
    assert_eq!(invariants(&check_s2(&t)), vec![(12, 4)]);
    let t = [st(0x10, 3, 0), ISHST, IPA, VMALLE1, ISH];
    assert_eq!(invariants(&check_s2(&t)), vec![(12, 3)]);
    let t = [st(0x10, 3, 0), ISHST, Insn::Tlbi(Tlbi::Vmalls12e1is), ISH];
    assert_eq!(check_s2(&t), vec![]);
}

#[test]
fn make_must_be_published_before_eret_and_el2_use() {
    let t = [st(0x10, 0, 3), Insn::Eret];
    assert_eq!(invariants(&check(&t)), vec![(13, 1)]);
    let t = [st(0x10, 0, 3), ISHST, Insn::Use(Consumer::El2Memory)];
    assert_eq!(invariants(&check(&t)), vec![(13, 2)]);
    let t = [
        st(0x10, 0, 3),
        ISHST,
        Insn::Isb,
        Insn::Use(Consumer::El2Memory),
    ];
    assert_eq!(check(&t), vec![]);
}

#[test]
fn free_before_tlbi_completed() {
    let t = [
        st(0x10, 3, 0),
        ISHST,
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        Insn::Free { pa: 0x9000 },
        ISH,
    ];
    assert_eq!(invariants(&check_s2(&t)), vec![(15, 3)]);
}

#[test]
fn duplicate_obligations() {
    let t = [st(0x10, 0, 3), ISHST, ISHST, Insn::Eret];
    assert_eq!(invariants(&check_s2(&t)), vec![(23, 2)]);
    let t = [
        st(0x10, 3, 0),
        ISHST,
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
    ];
    assert_eq!(invariants(&check_s2(&t)), vec![(23, 3)]);
}

#[test]
fn checker_is_linear_on_large_traces() {
    // ~1.5 million entries: 1000 batches of 512 breaks + syncs + makes.
    let mut t = Vec::new();
    for b in 0..1000u64 {
        for i in 0..512u64 {
            t.push(st(b * 4096 + i * 8, 3, 0));
        }
        t.push(ISHST);
        t.push(Insn::Tlbi(Tlbi::Vmalls12e1is));
        t.push(ISH);
        for i in 0..512u64 {
            t.push(st(b * 4096 + i * 8, 0, 0x2003));
        }
        t.push(ISHST);
        t.push(Insn::Eret);
    }
    let start = std::time::Instant::now();
    assert_eq!(check_s2(&t), vec![]);
    assert!(
        start.elapsed().as_secs() < 20,
        "checker too slow: {:?}",
        start.elapsed()
    );
    assert!(t.len() > 1_000_000);
}

/// Invariant 7, second half: stage-2 maintenance runs under the VMID of the tables it edits.
#[test]
fn stage2_tlbi_under_another_vmid() {
    let host = 0u64;
    let vm5 = 5u64 << 48;
    // A VM's batch while the host's VMID is loaded (the MEM_UNSHARE / VM_DESTROY bug).
    let t = [
        Insn::Use(Consumer::VttbrIs {
            vmid: 0,
            synced: true,
        }),
        st(0x10, 3, 0),
        ISHST,
        Insn::Use(Consumer::Stage2Edit { vmid: 5 }),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
    ];
    let v = check(&t);
    assert_eq!(invariants(&v), vec![(7, 3), (7, 4)]);
    assert!(v.iter().all(|v| v.kind == Kind::WrongVmid));
    assert_eq!(summary(&t).wrong_vmid, 2);
    // A TLBI by VMID with no batch naming its tables (raw maintenance).
    let t = [
        Insn::Use(Consumer::VttbrIs {
            vmid: 0,
            synced: true,
        }),
        Insn::Tlbi(Tlbi::Vmalle1is),
        ISH,
    ];
    assert_eq!(invariants(&check(&t)), vec![(7, 1)]);
    // After the switch back, a TLBI is no longer covered by the batch's marker.
    let t = [
        msr(SysReg::VttbrEl2, vm5, vm5),
        Insn::Isb,
        Insn::Use(Consumer::Stage2Edit { vmid: 5 }),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
        msr(SysReg::VttbrEl2, host, vm5),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
    ];
    let v = check(&t);
    assert_eq!(invariants(&v), vec![(7, 6), (7, 6)]);
    // The switch done right: write, ISB, marker, TLBI, DSB, restore; the ERET synchronises it.
    let good = [
        Insn::Use(Consumer::VttbrIs {
            vmid: 0,
            synced: true,
        }),
        st(0x10, 3, 0),
        ISHST,
        msr(SysReg::VttbrEl2, vm5, vm5),
        Insn::Isb,
        Insn::Use(Consumer::Stage2Edit { vmid: 5 }),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
        msr(SysReg::VttbrEl2, host, vm5),
        Insn::Eret,
    ];
    assert_eq!(check(&good), vec![]);
    let s = summary(&good);
    assert_eq!(
        (s.isb, s.tlbi, s.wrong_vmid, s.missing_isb, s.needless_isb),
        (1, 1, 0, 0, 0)
    );
}

/// A VTTBR owner that starts unsynchronised (a load whose ERET has not happened) justifies one
/// ISB; a synchronised one does not.
#[test]
fn vttbr_state_marker_justifies_isb_only_when_pending() {
    let pending = [
        Insn::Use(Consumer::VttbrIs {
            vmid: 1,
            synced: false,
        }),
        Insn::Isb,
    ];
    assert_eq!(check(&pending), vec![]);
    let synced = [
        Insn::Use(Consumer::VttbrIs {
            vmid: 1,
            synced: true,
        }),
        Insn::Isb,
    ];
    let v = check(&synced);
    assert_eq!(invariants(&v), vec![(2, 1)]);
    assert_eq!(v[0].kind, Kind::NeedlessIsb);
}
