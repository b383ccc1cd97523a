//! Exact instruction sequences of page-table batches (ARM-RULES.md 2.2 and 4).

use barriers::check::{check, report};
use barriers::pt::{BatchStats, Inval, PtBatch};
use barriers::vttbr::Vttbr;
use barriers::{trace, DsbKind, Insn, Tlbi};
use core::sync::atomic::{AtomicU64, Ordering};

fn addr(s: &AtomicU64) -> u64 {
    s as *const AtomicU64 as u64
}

fn store(s: &AtomicU64, old: u64, new: u64, ia: Option<u64>, level: Option<u8>) -> Insn {
    Insn::Store {
        addr: addr(s),
        old,
        new,
        ia,
        level,
    }
}

/// This test thread's VTTBR owner with VMID `vmid` loaded and synchronised (records the marker
/// the checker starts from).
fn loaded(vmid: u64) -> Vttbr {
    // SAFETY: host test: the recording backend, one owner per test.
    unsafe { Vttbr::assume_loaded(vmid << 48) }
}

/// The instructions of a trace, without the checker's markers.
fn insns(t: &[Insn]) -> Vec<Insn> {
    t.iter()
        .filter(|i| !matches!(i, Insn::Use(_)))
        .cloned()
        .collect()
}

fn assert_clean(t: &[Insn]) {
    let v = check(t);
    assert!(v.is_empty(), "unexpected violations:\n{}", report(&v));
}

const VALID: u64 = 0x4000_0000_0000_0003 | 0x4000_0000;

#[test]
fn unmap_512_pages_one_dsb_before_one_after() {
    trace::reset();
    let slots: Vec<AtomicU64> = (0..512)
        .map(|i| AtomicU64::new(VALID + (i << 12)))
        .collect();
    let mut vt = loaded(7);
    let mut b = PtBatch::stage2(&mut vt, 7 << 48);
    for (i, s) in slots.iter().enumerate() {
        b.break_entry(
            s,
            0,
            Inval::Leaf {
                ia: 0x8000_0000 + ((i as u64) << 12),
                level: 3,
            },
        );
    }
    let stats = b.finish();
    let mut want = vec![];
    for (i, s) in slots.iter().enumerate() {
        let ia = 0x8000_0000 + ((i as u64) << 12);
        want.push(store(s, VALID + ((i as u64) << 12), 0, Some(ia), Some(3)));
    }
    want.push(Insn::Dsb(DsbKind::Ishst));
    for i in 0..512u64 {
        want.push(Insn::Tlbi(Tlbi::Ipas2e1is {
            ipa: 0x8000_0000 + (i << 12),
            level: Some(3),
        }));
    }
    want.extend([
        Insn::Dsb(DsbKind::Ish),
        Insn::Tlbi(Tlbi::Vmalle1is),
        Insn::Dsb(DsbKind::Ish),
    ]);
    let got = trace::take();
    assert_eq!(insns(&got), want);
    assert_eq!(
        stats,
        BatchStats {
            dsb: 3,
            tlbi: 513,
            isb: 0,
            dc: 0,
            vmid_switches: 0,
        }
    );
    assert_eq!(
        got.iter()
            .filter(|i| **i == Insn::Dsb(DsbKind::Ishst))
            .count(),
        1
    );
    assert!(slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    assert_clean(&got);
}

#[test]
fn break_sync_make_is_break_before_make() {
    trace::reset();
    let s = AtomicU64::new(VALID);
    let mut vt = loaded(1);
    let mut b = PtBatch::stage2(&mut vt, 1 << 48);
    b.break_entry(
        &s,
        0,
        Inval::Leaf {
            ia: 0x4000_0000,
            level: 2,
        },
    );
    b.sync();
    b.make(&s, VALID | 0x20_0000);
    let stats = b.finish();
    let want = vec![
        store(&s, VALID, 0, Some(0x4000_0000), Some(2)),
        Insn::Dsb(DsbKind::Ishst),
        Insn::Tlbi(Tlbi::Ipas2e1is {
            ipa: 0x4000_0000,
            level: Some(2),
        }),
        Insn::Dsb(DsbKind::Ish),
        Insn::Tlbi(Tlbi::Vmalle1is),
        Insn::Dsb(DsbKind::Ish),
        store(&s, 0, VALID | 0x20_0000, None, None),
        Insn::Dsb(DsbKind::Ishst),
    ];
    let got = trace::take();
    assert_eq!(insns(&got), want);
    assert_eq!(
        stats,
        BatchStats {
            dsb: 4,
            tlbi: 2,
            isb: 0,
            dc: 0,
            vmid_switches: 0,
        }
    );
    assert_clean(&got);
}

#[test]
fn map_batch_one_trailing_dsb_no_isb_for_stage2() {
    trace::reset();
    let slots: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    let mut vt = loaded(2);
    let mut b = PtBatch::stage2(&mut vt, 2 << 48);
    for (i, s) in slots.iter().enumerate() {
        b.make(s, VALID + ((i as u64) << 12));
    }
    b.sync(); // nothing queued: no-op
    let stats = b.finish();
    let mut want = vec![];
    for (i, s) in slots.iter().enumerate() {
        want.push(store(s, 0, VALID + ((i as u64) << 12), None, None));
    }
    want.push(Insn::Dsb(DsbKind::Ishst));
    want.push(Insn::Eret);
    barriers::trace::record(Insn::Eret);
    assert_eq!(insns(&trace::take()), want);
    assert_eq!(
        stats,
        BatchStats {
            dsb: 1,
            tlbi: 0,
            isb: 0,
            dc: 0,
            vmid_switches: 0,
        }
    );
    assert_clean(&want);
}

#[test]
fn el2_map_needs_dsb_and_isb() {
    trace::reset();
    let s = AtomicU64::new(0);
    let mut b = PtBatch::el2();
    b.make(&s, VALID);
    assert_eq!(
        b.finish(),
        BatchStats {
            dsb: 1,
            tlbi: 0,
            isb: 1,
            dc: 0,
            vmid_switches: 0,
        }
    );
    let want = vec![
        store(&s, 0, VALID, None, None),
        Insn::Dsb(DsbKind::Ishst),
        Insn::Isb,
    ];
    assert_eq!(trace::take(), want);
    assert_clean(&want);
}

#[test]
fn el2_unmap_uses_vae2is_and_isb() {
    trace::reset();
    let s = AtomicU64::new(VALID);
    let mut b = PtBatch::el2();
    b.break_entry(
        &s,
        0,
        Inval::Leaf {
            ia: 0xffff_0000_0040_0000,
            level: 3,
        },
    );
    b.finish();
    let want = vec![
        store(&s, VALID, 0, Some(0xffff_0000_0040_0000), Some(3)),
        Insn::Dsb(DsbKind::Ishst),
        Insn::Tlbi(Tlbi::Vae2is {
            va: 0xffff_0000_0040_0000,
        }),
        Insn::Dsb(DsbKind::Ish),
        Insn::Isb,
    ];
    assert_eq!(trace::take(), want);
    assert_clean(&want);
}

#[test]
fn over_limit_and_tables_invalidate_vmid_wide_without_stage1_flush() {
    trace::reset();
    let slots: Vec<AtomicU64> = (0..5).map(|_| AtomicU64::new(VALID)).collect();
    let mut vt = loaded(3);
    let mut b = PtBatch::stage2(&mut vt, 3 << 48).with_tlbi_limit(4);
    for (i, s) in slots.iter().enumerate() {
        b.break_entry(
            s,
            0,
            Inval::Leaf {
                ia: (i as u64) << 12,
                level: 3,
            },
        );
    }
    b.finish();
    let t = trace::take();
    assert_clean(&t);
    let got = insns(&t);
    assert_eq!(
        got[5..],
        [
            Insn::Dsb(DsbKind::Ishst),
            Insn::Tlbi(Tlbi::Vmalls12e1is),
            Insn::Dsb(DsbKind::Ish)
        ]
    );

    let t = AtomicU64::new(VALID);
    let mut vt = loaded(3);
    let mut b = PtBatch::stage2(&mut vt, 3 << 48);
    b.break_entry(&t, 0, Inval::Table { ia: 0x4000_0000 });
    b.sync();
    b.free(0x8765_0000);
    b.finish();
    let want = vec![
        store(&t, VALID, 0, Some(0x4000_0000), None),
        Insn::Dsb(DsbKind::Ishst),
        Insn::Tlbi(Tlbi::Vmalls12e1is),
        Insn::Dsb(DsbKind::Ish),
        Insn::Free { pa: 0x8765_0000 },
    ];
    let got = trace::take();
    assert_eq!(insns(&got), want);
    assert_clean(&got);
}

#[test]
fn restrict_queues_tlbi_without_bbm() {
    trace::reset();
    let s = AtomicU64::new(VALID | 0xc0);
    let mut vt = loaded(4);
    let mut b = PtBatch::stage2(&mut vt, 4 << 48);
    b.restrict(
        &s,
        VALID | 0x40,
        Inval::Leaf {
            ia: 0x1000,
            level: 3,
        },
    );
    b.make(&s, VALID | 0x40 | (1 << 55)); // SW-bit-only change: legal, no BBM
    b.finish();
    let want = vec![
        store(&s, VALID | 0xc0, VALID | 0x40, Some(0x1000), Some(3)),
        store(&s, VALID | 0x40, VALID | 0x40 | (1 << 55), None, None),
        Insn::Dsb(DsbKind::Ishst),
        Insn::Tlbi(Tlbi::Ipas2e1is {
            ipa: 0x1000,
            level: Some(3),
        }),
        Insn::Dsb(DsbKind::Ish),
        Insn::Tlbi(Tlbi::Vmalle1is),
        Insn::Dsb(DsbKind::Ish),
    ];
    let got = trace::take();
    assert_eq!(insns(&got), want);
    assert_clean(&got);
}

#[test]
fn clean_to_poc_by_line_then_dsb() {
    trace::reset();
    let mut b = PtBatch::el2();
    b.clean_to_poc(0x1010, 0x80);
    b.clean_to_poc(0x2000, 0);
    assert_eq!(
        b.finish(),
        BatchStats {
            dsb: 1,
            tlbi: 0,
            isb: 0,
            dc: 3,
            vmid_switches: 0,
        }
    );
    assert_eq!(
        trace::take(),
        vec![
            Insn::DcCivac { va: 0x1000 },
            Insn::DcCivac { va: 0x1040 },
            Insn::DcCivac { va: 0x1080 },
            Insn::Dsb(DsbKind::Ish)
        ]
    );
}

#[test]
fn empty_batch_emits_nothing() {
    trace::reset();
    assert_eq!(PtBatch::el2().finish(), BatchStats::default());
    assert_eq!(trace::take(), vec![]);
}

#[test]
#[should_panic(expected = "break-before-make")]
fn make_over_unsynced_break_panics() {
    let s = AtomicU64::new(VALID);
    let mut vt = loaded(1);
    let mut b = PtBatch::stage2(&mut vt, 1 << 48);
    b.break_entry(&s, 0, Inval::Leaf { ia: 0, level: 3 });
    b.make(&s, VALID);
}

#[test]
#[should_panic(expected = "unsynchronised break")]
fn free_before_sync_panics() {
    let s = AtomicU64::new(VALID);
    let mut vt = loaded(1);
    let mut b = PtBatch::stage2(&mut vt, 1 << 48);
    b.break_entry(&s, 0, Inval::Table { ia: 0 });
    b.free(0x1000);
}

#[test]
#[should_panic(expected = "is valid")]
fn break_with_valid_descriptor_panics() {
    let s = AtomicU64::new(VALID);
    let mut b = PtBatch::el2();
    b.break_entry(&s, 1, Inval::Leaf { ia: 0, level: 3 });
}

#[test]
#[should_panic(expected = "without finish")]
fn dropping_a_batch_is_caught() {
    let b = PtBatch::el2();
    drop(b);
}

/// An early return (`?`) out of a function with an open batch: the guard catches it too.
#[test]
#[should_panic(expected = "without finish")]
fn early_return_with_an_open_batch_is_caught() {
    fn edit(slot: &AtomicU64, fail: bool) -> Result<(), ()> {
        let mut b = PtBatch::el2();
        b.make(slot, VALID);
        if fail {
            return Err(());
        }
        b.finish();
        Ok(())
    }
    let slot = AtomicU64::new(0);
    let _ = edit(&slot, true);
}

#[test]
fn tlbi_operand_encoding() {
    use barriers::insn::{ipas2_operand, va_operand};
    // IPA[51:12] in bits [39:0]; TTL left 0 (RES0 without FEAT_TTL).
    assert_eq!(ipas2_operand(0x8_4020_1000), 0x84_0201);
    assert_eq!(ipas2_operand(0x000f_ffff_ffff_f000), 0xff_ffff_ffff);
    // VA[55:12] in bits [43:0].
    assert_eq!(va_operand(0xffff_0000_0040_0000), 0xff0_0000_0400);
}

/// Restricting far more leaves than fit in the queue: once the batch has gone
/// VMID-wide, restrictions are not queued, so the whole batch pays one
/// DSB ISHST, one VMALLS12E1IS and one DSB ISH (no sync per full queue).
#[test]
fn restrict_beyond_the_queue_pays_once() {
    trace::reset();
    let n = 2048u64;
    let slots: Vec<AtomicU64> = (0..n).map(|i| AtomicU64::new(VALID + (i << 12))).collect();
    let mut vt = loaded(3);
    let mut b = PtBatch::stage2(&mut vt, 3 << 48).with_tlbi_limit(32);
    for (i, s) in slots.iter().enumerate() {
        let ro = (VALID + ((i as u64) << 12)) & !(1 << 7);
        b.restrict(
            s,
            ro,
            Inval::Leaf {
                ia: (i as u64) << 12,
                level: 3,
            },
        );
    }
    let stats = b.finish();
    let t = trace::take();
    assert_clean(&t);
    let barriers: Vec<&Insn> = t
        .iter()
        .filter(|i| !matches!(i, Insn::Store { .. } | Insn::Use(_)))
        .collect();
    assert_eq!(
        barriers,
        [
            &Insn::Dsb(DsbKind::Ishst),
            &Insn::Tlbi(Tlbi::Vmalls12e1is),
            &Insn::Dsb(DsbKind::Ish),
        ]
    );
    assert_eq!(stats.dsb, 2);
    assert_eq!(stats.tlbi, 1);
    assert_eq!(slots[2047].load(Ordering::Relaxed) & (1 << 7), 0);
}

/// Filling the queue with breaks syncs before the store that would overflow
/// it, so every DSB ISHST orders a store (invariant 23).
#[test]
fn full_queue_syncs_before_the_next_store() {
    trace::reset();
    let n = 600u64;
    let slots: Vec<AtomicU64> = (0..n).map(|i| AtomicU64::new(VALID + (i << 12))).collect();
    let mut vt = loaded(3);
    let mut b = PtBatch::stage2(&mut vt, 3 << 48);
    for (i, s) in slots.iter().enumerate() {
        b.break_entry(
            s,
            0,
            Inval::Leaf {
                ia: (i as u64) << 12,
                level: 3,
            },
        );
    }
    let _ = b.finish();
    let t = trace::take();
    assert_clean(&t);
    let t = insns(&t);
    // The first sync comes right after the 512th store, before the 513th.
    let first_dsb = t
        .iter()
        .position(|i| matches!(i, Insn::Dsb(DsbKind::Ishst)))
        .expect("a DSB ISHST");
    assert_eq!(first_dsb, 512);
}

/// `finish_after` owes what `finish` owes: the same break and make, through either, leave the
/// same instructions and statistics (the queued TLBI and its DSBs; the make's store is published
/// by the DSB ISH after it, so no trailing DSB ISHST), and the closure's result comes back.
#[test]
fn finish_after_issues_what_finish_issues() {
    let run = |in_place: bool| {
        trace::reset();
        let broken = AtomicU64::new(VALID);
        let made = AtomicU64::new(0);
        let mut vt = loaded(5);
        let ops = |b: &mut PtBatch<'_>| {
            b.break_entry(
                &broken,
                0,
                Inval::Leaf {
                    ia: 0x4000_0000,
                    level: 3,
                },
            );
            b.make(&made, VALID | 0x1000);
            7u32
        };
        let mut b = PtBatch::stage2(&mut vt, 5 << 48);
        let stats = if in_place {
            let (r, stats) = b.finish_after(ops);
            assert_eq!(r, 7);
            stats
        } else {
            ops(&mut b);
            b.finish()
        };
        let got = trace::take();
        assert_clean(&got);
        // Compared by shape: the two runs' slots live at different addresses.
        let shape: Vec<String> = insns(&got)
            .iter()
            .map(|i| match i {
                Insn::Store { old, new, .. } => format!("store {old:#x}->{new:#x}"),
                other => format!("{other:?}"),
            })
            .collect();
        (shape, stats)
    };
    let (shape, stats) = run(true);
    assert_eq!((shape.clone(), stats), run(false));
    assert_eq!(
        shape,
        [
            format!("store {VALID:#x}->0x0"),
            format!("store 0x0->{:#x}", VALID | 0x1000),
            "Dsb(Ishst)".into(),
            format!(
                "{:?}",
                Insn::Tlbi(Tlbi::Ipas2e1is {
                    ipa: 0x4000_0000,
                    level: Some(3)
                })
            ),
            "Dsb(Ish)".into(),
            "Tlbi(Vmalle1is)".into(),
            "Dsb(Ish)".into(),
        ]
    );
    assert_eq!((stats.dsb, stats.tlbi), (3, 2));
}
