//! Exact sequences of typed system-register writes and their discharge.

use barriers::check::{check, report};
use barriers::regs::*;
use barriers::sync::{check_eos, uses, Cse, EosChecked, GuestEntry, SCTLR_EL2_EOS_EIS};
use barriers::vttbr::Vttbr;
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

/// This test thread's VTTBR owner, with the host's VMID 0 loaded.
fn host_vttbr() -> Vttbr {
    // SAFETY: host test: the recording backend, one owner per test.
    unsafe { Vttbr::assume_loaded(0) }
}

/// The trace so far, without the VTTBR owner's starting-state markers (which `host_vttbr()`
/// records where these tests create one).
fn take_without_vttbr_state() -> Vec<Insn> {
    trace::take()
        .into_iter()
        .filter(|i| !matches!(i, Insn::Use(barriers::Consumer::VttbrIs { .. })))
        .collect()
}

/// The world switch's part: run the guest and return the proof of the exception entry that ends
/// its run.
fn run(e: GuestEntry) -> Synced<Cse> {
    // SAFETY: host test: nothing runs; the recorded `Eret` stands for the guest's run.
    unsafe { e.run(|| ()) }.1
}

/// A guest exit, as the world switch returns it to its caller: enters a guest with nothing
/// pending and returns the exit's proof, with the trace cleared and `vt`'s state recorded again.
fn guest_exit(eos: &EosChecked, vt: &mut Vttbr) -> Synced<Cse> {
    let cse = run(enter_guest(eos, vt, ()));
    trace::clear();
    vt.record_state();
    cse
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
    let s = isb(p);
    let w = SctlrEl1::write(&s, 0x30d0_0800);
    let r = TcrEl1::read(&s);
    // SAFETY: host trace only.
    let p = unsafe { HcrEl2::write(GUEST_HCR) };
    let _s = isb(p);
    run(enter_guest(&eos, &mut host_vttbr(), w));
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
    let got = take_without_vttbr_state();
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
    let mut vt = host_vttbr();
    let cse = guest_exit(&eos, &mut vt);
    let new_hcr = GUEST_HCR & !(TVM | TWI);
    // SAFETY: host trace only.
    let hcr = unsafe { HcrEl2::write_traps_only(new_hcr) };
    // SAFETY: host trace only; sets TFP (no trap cleared).
    let cptr = unsafe { CptrEl2::write_setting_traps(&cse, None, 0x37ff) };
    // SAFETY: host trace only.
    let vbar = unsafe { VbarEl2::write(0x4008_0000) };
    run(enter_guest(&eos, &mut vt, (hcr, cptr, vbar)));
    let want = vec![
        msr(SysReg::HcrEl2, new_hcr, TVM | TWI),
        msr(SysReg::CptrEl2, 0x37ff, 0x0400),
        msr(SysReg::VbarEl2, 0x4008_0000, 0x4008_0000),
        Insn::Eret,
    ];
    let got = take_without_vttbr_state();
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
    let cse = guest_exit(&check_eos(), &mut host_vttbr());
    // SAFETY: host trace only.
    let p = unsafe { CptrEl2::write_setting_traps(&cse, None, 0x33ff) };
    let _ = isb(p);
}

/// A stage-2 batch for VMID 5 while the host's VMID 0 is loaded: VTTBR_EL2 is switched to VM 5's
/// tables, synchronised, the TLBIs issued and completed, and VMID 0 restored (KVM
/// enter_vmid_context / exit_vmid_context). Then the world switch loads VM 5, restores EL1
/// context into a GuestPending and enters the guest: the entry ERET synchronises both.
#[test]
fn stage2_batch_switches_vmid_then_context_restore_and_entry() {
    boot();
    let eos = check_eos();
    let mut vt = host_vttbr();
    let cse = guest_exit(&eos, &mut vt);
    let vttbr = (5u64 << 48) | 0x8000_0000;
    let slot = core::sync::atomic::AtomicU64::new(3);
    let mut b = barriers::pt::PtBatch::stage2(&mut vt, vttbr);
    b.break_entry(
        &slot,
        0,
        barriers::pt::Inval::Leaf {
            ia: 0x1000,
            level: 3,
        },
    );
    let stats = b.finish();
    assert_eq!((stats.vmid_switches, stats.isb), (1, 1));
    assert_eq!(vt.vmid(), 0, "the host's VMID is back");
    assert!(!vt.is_synced(), "the restore is left for the next CSE");
    let mut g = GuestPending::new();
    // SAFETY: host trace only.
    g.add(unsafe { vt.load(vttbr) });
    g.add(SctlrEl1::write(&cse, 1));
    g.add(ElrEl1::write(&cse, 2));
    g.add(IchLrEl2::new(3).write(&cse, 0x5000_0000_0000_0020));
    g.add(CntvoffEl2::write(9));
    run(enter_guest(&eos, &mut vt, g));
    assert!(vt.is_synced());
    let got = trace::take();
    assert_eq!(
        got[..6],
        [
            Insn::Use(barriers::Consumer::VttbrIs {
                vmid: 0,
                synced: true
            }),
            store(&slot, 3, 0, 0x1000),
            Insn::Dsb(barriers::DsbKind::Ishst),
            msr(SysReg::VttbrEl2, vttbr, vttbr),
            Insn::Isb,
            Insn::Use(barriers::Consumer::Stage2Edit { vmid: 5 })
        ]
    );
    assert_eq!(
        got[got.len() - 7..],
        [
            msr(SysReg::VttbrEl2, 0, vttbr),
            msr(SysReg::VttbrEl2, vttbr, vttbr),
            msr(SysReg::SctlrEl1, 1, 1),
            msr(SysReg::ElrEl1, 2, 2),
            msr(
                SysReg::IchLr(3),
                0x5000_0000_0000_0020,
                0x5000_0000_0000_0020
            ),
            msr(SysReg::CntvoffEl2, 9, 9),
            Insn::Eret
        ]
    );
    assert_clean(&got);
}

fn store(slot: &core::sync::atomic::AtomicU64, old: u64, new: u64, ia: u64) -> Insn {
    Insn::Store {
        addr: slot as *const _ as u64,
        old,
        new,
        ia: Some(ia),
        level: Some(3),
    }
}

/// CPTR_EL2 trap clear, ISB, EL2 FP use; ICC_SRE_EL2, ISB, ICH access; SCTLR_EL2, ISB, memory.
#[test]
fn in_context_consumers_after_isb() {
    boot();
    trace::set_reg(SysReg::CptrEl2, 0x37ff);
    let cse = guest_exit(&check_eos(), &mut host_vttbr());
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
    let v = IchVmcrEl2::read(&sre);
    uses::el2_memory(&mem);
    assert_eq!(v, 0);
    let got = take_without_vttbr_state();
    assert_eq!(
        got,
        vec![
            msr(SysReg::CptrEl2, 0x33ff, 0x0400),
            msr(SysReg::IccSreEl2, 0xf, 0xf),
            msr(SysReg::SctlrEl2, SCTLR_EL2_EOS_EIS | 0x30c5_0835, 0x5),
            Insn::Isb,
            Insn::Use(barriers::Consumer::El2Fp),
            Insn::Mrs {
                reg: SysReg::IchVmcrEl2
            },
            Insn::Use(barriers::Consumer::El2Memory),
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

/// `let _ = enter_guest(..)` on a path that never executes the ERET: the GuestEntry's drop guard
/// fires (in every build: the guard has no debug-only part).
#[test]
#[should_panic(expected = "GuestEntry dropped")]
fn let_underscore_enter_guest_is_caught() {
    boot();
    let eos = check_eos();
    let mut vt = host_vttbr();
    let _ = enter_guest(&eos, &mut vt, ());
}

/// Guest-only writes collected and then dropped (no ERET will synchronise them).
#[test]
#[should_panic(expected = "GuestPending with 1 token(s) dropped")]
fn dropping_collected_guest_writes_is_caught() {
    boot();
    let mut g = GuestPending::new();
    g.add(VpidrEl2::write(1));
    drop(g);
}
