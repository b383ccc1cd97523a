//! Exact sequences of typed system-register writes and their discharge.

use barriers::check::{check, report};
use barriers::regs::*;
use barriers::sync::{check_eos, uses, Cse, SCTLR_EL2_EOS_EIS};
use barriers::{enter_guest, isb, trace, GuestPending, Insn, Synced, SysReg};

const TGE: u64 = 1 << 27;
const RW: u64 = 1 << 31;
const VM: u64 = 1;
const TWI: u64 = 1 << 13;
const TVM: u64 = 1 << 26;
const TSW: u64 = 1 << 22;
const GUEST_HCR: u64 = RW | VM | TVM | TSW | TWI | (1 << 3) | (1 << 4) | (1 << 5);

fn boot() {
    trace::reset();
    trace::set_reg(SysReg::SctlrEl2, SCTLR_EL2_EOS_EIS | 0x30c5_0830);
}

fn assert_clean(t: &[Insn]) {
    let v = check(t);
    assert!(v.is_empty(), "unexpected violations:\n{}", report(&v));
}

fn msr(reg: SysReg, value: u64, changed: u64) -> Insn {
    Insn::Msr {
        reg,
        value,
        changed,
    }
}

/// E2H/TGE change, then an EL1-named access: the ISB is there.
#[test]
fn tge_change_then_el1_access_has_isb() {
    boot();
    let eos = check_eos();
    // SAFETY: host trace only.
    let p = unsafe { HcrEl2::write(TGE) };
    assert_eq!(p.changed(), TGE);
    let s = isb(p);
    let w = SctlrEl1::write(&s, 0x30d0_0800);
    let r = TcrEl1::read(&s);
    // SAFETY: host trace only.
    let p = unsafe { HcrEl2::write(GUEST_HCR) };
    let _s = isb(p);
    let _entry = enter_guest(&eos, w);
    let want = vec![
        Insn::Mrs {
            reg: SysReg::SctlrEl2,
        },
        msr(SysReg::HcrEl2, TGE, TGE),
        Insn::Isb,
        msr(SysReg::SctlrEl1, 0x30d0_0800, 0x30d0_0800),
        Insn::Mrs {
            reg: SysReg::TcrEl1,
        },
        msr(SysReg::HcrEl2, GUEST_HCR, GUEST_HCR ^ TGE),
        Insn::Isb,
        Insn::Eret,
    ];
    let got = trace::take();
    assert_eq!(got, want);
    assert_eq!(r, 0);
    assert_clean(&got);
}

/// Seed 000: on guest exit, an HCR_EL2 write that changes only trap bits, then CPTR_EL2 and
/// VBAR_EL2 writes, then guest entry: no ISB. HCR_EL2.{TVM, TWI} change; CPTR_EL2's layout reads
/// HCR_EL2.E2H, which is unchanged (the exit's exception entry synchronised it); VBAR_EL2 is read
/// by the next exit, after the ERET.
#[test]
fn seed000_trap_only_exit_path_has_no_isb() {
    boot();
    trace::set_reg(SysReg::HcrEl2, GUEST_HCR);
    trace::set_reg(SysReg::CptrEl2, 0x33ff);
    let eos = check_eos();
    trace::clear();
    // SAFETY: exception entry (the guest exit) is a CSE with EIS = 1, and nothing was written since.
    let cse = unsafe { Synced::<Cse>::assume() };
    let new_hcr = GUEST_HCR & !(TVM | TWI);
    // SAFETY: host trace only.
    let hcr = unsafe { HcrEl2::write_traps_only(new_hcr) };
    // SAFETY: host trace only; sets TFP (no trap cleared).
    let cptr = unsafe { CptrEl2::write_setting_traps(&cse, 0x37ff) };
    // SAFETY: host trace only.
    let vbar = unsafe { VbarEl2::write(0x4008_0000) };
    let _entry = enter_guest(&eos, (hcr, cptr, vbar));
    let want = vec![
        msr(SysReg::HcrEl2, new_hcr, TVM | TWI),
        msr(SysReg::CptrEl2, 0x37ff, 0x0400),
        msr(SysReg::VbarEl2, 0x4008_0000, 0x4008_0000),
        Insn::Eret,
    ];
    let got = trace::take();
    assert_eq!(got, want);
    assert!(!got.contains(&Insn::Isb));
    assert_clean(&got);
}

#[test]
#[should_panic(expected = "non-trap fields")]
fn traps_only_write_rejects_other_fields() {
    boot();
    trace::set_reg(SysReg::HcrEl2, GUEST_HCR);
    // SAFETY: host trace only.
    let p = unsafe { HcrEl2::write_traps_only(GUEST_HCR & !RW) };
    let _ = isb(p);
}

#[test]
#[should_panic(expected = "clears FP traps")]
fn setting_traps_write_rejects_clears() {
    boot();
    trace::set_reg(SysReg::CptrEl2, 0x37ff);
    // SAFETY: host trace only.
    let cse = unsafe { Synced::<Cse>::assume() };
    // SAFETY: host trace only.
    let p = unsafe { CptrEl2::write_setting_traps(&cse, 0x33ff) };
    let _ = isb(p);
}

/// VTTBR_EL2 write, ISB, then a stage-2 batch's TLBIs (KVM enter_vmid_context); the world
/// switch restores EL1 context into a GuestPending and enters the guest.
#[test]
fn vttbr_isb_tlbi_then_context_restore_and_entry() {
    boot();
    let eos = check_eos();
    trace::clear();
    // SAFETY: exception entry.
    let cse = unsafe { Synced::<Cse>::assume() };
    let vttbr = (5u64 << 48) | 0x8000_0000;
    // SAFETY: host trace only.
    let v = unsafe { VttbrEl2::write(vttbr) };
    let vmid = isb(v);
    uses::tlbi_by_vmid(&vmid);
    uses::stage2_tables(&vmid, 5);
    let slot = core::sync::atomic::AtomicU64::new(3);
    let mut b = barriers::pt::PtBatch::begin(barriers::pt::Regime::Stage2 { vmid: 5 });
    b.break_entry(
        &slot,
        0,
        barriers::pt::Inval::Leaf {
            ia: 0x1000,
            level: 3,
        },
    );
    b.finish();
    let mut g = GuestPending::new();
    g.add(SctlrEl1::write(&cse, 1));
    g.add(ElrEl1::write(&cse, 2));
    g.add(IchLrEl2::new(3).write(&cse, 0x5000_0000_0000_0020));
    g.add(CntvoffEl2::write(9));
    assert_eq!(g.len(), 4);
    // SAFETY: host trace only.
    unsafe { ElrEl2::write(0x4000_0000) };
    let _e = enter_guest(&eos, g);
    let got = trace::take();
    assert_eq!(
        got[..3],
        [
            msr(SysReg::VttbrEl2, vttbr, vttbr),
            Insn::Isb,
            Insn::Use(barriers::Consumer::Stage2Edit { vmid: 5 })
        ]
    );
    assert_eq!(
        got[got.len() - 6..],
        [
            msr(SysReg::SctlrEl1, 1, 1),
            msr(SysReg::ElrEl1, 2, 2),
            msr(
                SysReg::IchLr(3),
                0x5000_0000_0000_0020,
                0x5000_0000_0000_0020
            ),
            msr(SysReg::CntvoffEl2, 9, 9),
            msr(SysReg::ElrEl2, 0x4000_0000, 0x4000_0000),
            Insn::Eret
        ]
    );
    assert_clean(&got);
}

/// CPTR_EL2 trap clear, ISB, EL2 FP use; ICC_SRE_EL2, ISB, ICH access; SCTLR_EL2, ISB, memory.
#[test]
fn in_context_consumers_after_isb() {
    boot();
    trace::set_reg(SysReg::CptrEl2, 0x37ff);
    // SAFETY: exception entry.
    let cse = unsafe { Synced::<Cse>::assume() };
    // SAFETY: host trace only.
    let (c, s, m) = unsafe {
        (
            CptrEl2::write(&cse, 0x33ff),
            IccSreEl2::write(0xf),
            SctlrEl2::write(SCTLR_EL2_EOS_EIS | 0x30c5_0835),
        )
    };
    let (fp, sre, mem) = isb((c, s, m));
    uses::el2_fp(&fp);
    uses::gic_sysreg(&sre);
    let v = IchVmcrEl2::read(&sre);
    uses::el2_memory(&mem);
    assert_eq!(v, 0);
    let got = trace::take();
    assert_eq!(
        got,
        vec![
            msr(SysReg::CptrEl2, 0x33ff, 0x0400),
            msr(SysReg::IccSreEl2, 0xf, 0xf),
            msr(SysReg::SctlrEl2, SCTLR_EL2_EOS_EIS | 0x30c5_0835, 0x5),
            Insn::Isb,
            Insn::Use(barriers::Consumer::El2Fp),
            Insn::Use(barriers::Consumer::GicSysreg),
            Insn::Mrs {
                reg: SysReg::IchVmcrEl2
            },
            Insn::Use(barriers::Consumer::El2Memory),
        ]
    );
    assert_clean(&got);
}

#[test]
fn at_translation_isb_before_par() {
    boot();
    // SAFETY: exception entry.
    let cse = unsafe { Synced::<Cse>::assume() };
    let par = uses::at_s12e1r(&cse, &cse, 0x1234_5000);
    assert_eq!(par, 0);
    let got = trace::take();
    assert_eq!(
        got,
        vec![
            Insn::Use(barriers::Consumer::At),
            Insn::Isb,
            Insn::Mrs {
                reg: SysReg::ParEl1
            }
        ]
    );
    assert_clean(&got);
}

#[test]
#[should_panic(expected = "EIS and EOS")]
fn eos_clear_is_a_boot_bug() {
    trace::reset();
    let _ = check_eos();
}

#[test]
#[should_panic(expected = "dropped without isb")]
fn dropping_a_pending_token_is_caught() {
    trace::reset();
    let p = VpidrEl2::write(1);
    drop(p);
}
