//! The device-TLB hook (an SMMU over a CPU stage 2): every stage-2 `sync` calls it once, with
//! the batch's VMID, after its TLBIs completed (`DSB ISH`) and before the makes that follow; an
//! EL2 batch or a batch with nothing to invalidate never calls it.

use barriers::pt::{set_device_tlb_hook, Inval, PtBatch};
use barriers::vttbr::Vttbr;
use barriers::{trace, DsbKind, Insn};
use core::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// (VMID, trace length when called).
static CALLS: Mutex<Vec<(u16, usize)>> = Mutex::new(Vec::new());

fn hook(vmid: u16) {
    let n = trace::take();
    let len = n.len();
    // Put the trace back: `take` drained it.
    for i in n {
        trace::record(i);
    }
    CALLS.lock().expect("calls").push((vmid, len));
}

#[test]
fn called_once_per_stage2_sync_after_the_tlbis_complete() {
    set_device_tlb_hook(hook);
    trace::reset();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut vt = unsafe { Vttbr::assume_loaded(0) };
    let a = AtomicU64::new(0x4000_0000_0000_0003 | 0x4000_0000);
    let b2 = AtomicU64::new(0);
    let mut b = PtBatch::stage2(&mut vt, 0);
    b.break_entry(
        &a,
        0,
        Inval::Leaf {
            ia: 0x4000_0000,
            level: 3,
        },
    );
    b.sync();
    b.make(&b2, 0x4000_0000_0000_0003 | 0x5000_0000);
    let _ = b.finish();
    let t = trace::take();
    let calls = CALLS.lock().expect("calls").clone();
    assert_eq!(calls.len(), 1, "one call for one sync: {calls:?}");
    let (vmid, at) = calls[0];
    assert_eq!(vmid, 0);
    // Everything before the call ends with the DSB ISH that completed the TLBIs; the make's
    // store comes after it.
    assert_eq!(t[at - 1], Insn::Dsb(DsbKind::Ish), "{t:?}");
    let make = t
        .iter()
        .position(|i| matches!(i, Insn::Store { new, .. } if *new != 0))
        .expect("the make");
    assert!(
        make >= at,
        "the make was stored before the device TLBs were invalidated: {t:?}"
    );

    // A batch with only makes owes no invalidation: no call.
    CALLS.lock().expect("calls").clear();
    let c = AtomicU64::new(0);
    let mut b = PtBatch::stage2(&mut vt, 0);
    b.make(&c, 0x4000_0000_0000_0003 | 0x6000_0000);
    let _ = b.finish();
    // EL2 stage 1: not a stage 2 any device walks.
    let d = AtomicU64::new(0x4000_0000_0000_0003);
    let mut b = PtBatch::el2();
    b.break_entry(
        &d,
        0,
        Inval::Leaf {
            ia: 0x1000,
            level: 3,
        },
    );
    let _ = b.finish();
    assert!(CALLS.lock().expect("calls").is_empty());
}
