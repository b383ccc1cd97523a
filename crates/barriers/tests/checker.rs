//! The checker catches seeded mistakes (and reports each under the right invariant).

use barriers::check::{check, Violation};
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
        Insn::Use(Consumer::El1Access),
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
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
    ];
    assert_eq!(invariants(&check(&t)), vec![(7, 1)]);
    let t = [
        msr(SysReg::VttbrEl2, vttbr, vttbr),
        Insn::Isb,
        Insn::Use(Consumer::Stage2Edit { vmid: 3 }),
    ];
    assert_eq!(invariants(&check(&t)), vec![(7, 2)]);
    let t = [msr(SysReg::HcrEl2, TGE, TGE), Insn::Use(Consumer::At)];
    assert_eq!(invariants(&check(&t)), vec![(7, 1), (6, 1)]);
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
    assert_eq!(invariants(&check(&t)), vec![(11, 1)]);
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
    assert_eq!(invariants(&check(&t)), vec![(11, 3)]);
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
    assert_eq!(check(&good), vec![]);
}

#[test]
fn stage1_flush_after_ipas2() {
    let t = [st(0x10, 3, 0), ISHST, IPA, ISH];
    assert_eq!(invariants(&check(&t)), vec![(12, 4)]);
    let t = [st(0x10, 3, 0), ISHST, IPA, VMALLE1, ISH];
    assert_eq!(invariants(&check(&t)), vec![(12, 3)]);
    let t = [st(0x10, 3, 0), ISHST, Insn::Tlbi(Tlbi::Vmalls12e1is), ISH];
    assert_eq!(check(&t), vec![]);
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
    assert_eq!(invariants(&check(&t)), vec![(15, 3)]);
}

#[test]
fn duplicate_obligations() {
    let t = [st(0x10, 0, 3), ISHST, ISHST, Insn::Eret];
    assert_eq!(invariants(&check(&t)), vec![(23, 2)]);
    let t = [
        st(0x10, 3, 0),
        ISHST,
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        ISH,
    ];
    assert_eq!(invariants(&check(&t)), vec![(23, 3)]);
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
    assert_eq!(check(&t), vec![]);
    assert!(
        start.elapsed().as_secs() < 20,
        "checker too slow: {:?}",
        start.elapsed()
    );
    assert!(t.len() > 1_000_000);
}
