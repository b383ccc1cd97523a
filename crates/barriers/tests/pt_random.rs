//! Randomised batches (deterministic xorshift): whatever sequence of legal calls a caller makes,
//! the trace satisfies every invariant the checker knows, and each batch issues at most one
//! trailing DSB ISHST.

use barriers::check::{check, report};
use barriers::pt::{Inval, PtBatch};
use barriers::sync::{check_eos, SCTLR_EL2_EOS_EIS};
use barriers::vttbr::Vttbr;
use barriers::{enter_guest, trace, SysReg};
use core::sync::atomic::{AtomicU64, Ordering};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_legal_batches_pass_the_checker() {
    trace::reset();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let slots: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
    trace::set_reg(SysReg::SctlrEl2, SCTLR_EL2_EOS_EIS);
    let eos = check_eos();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut vt = unsafe { Vttbr::assume_loaded(0) };
    for round in 0..400 {
        let stage2 = round % 3 != 0;
        let b = if !stage2 {
            PtBatch::el2()
        } else {
            // Now and then another VMID is loaded (as the world switch does) and left
            // unsynchronised (its ERET never came): the batch's maintenance must synchronise it
            // itself. (Right before the batch, as in the hypervisor: an EL2 batch's ISB in
            // between would synchronise it behind the owner's back, and its own ISB would then be
            // redundant; see `barriers::vttbr`.)
            if rng.below(4) == 0 {
                // SAFETY: host test.
                let t = unsafe { vt.load(rng.below(3) << 48) };
                // The token's ERET is what this test leaves out.
                core::mem::forget(t);
            }
            // Tables of VMID 0, 1 or 2, whatever is loaded.
            let vmid = rng.below(3);
            PtBatch::stage2(&mut vt, (vmid << 48) | 0x1000)
        };
        let mut b = b.with_tlbi_limit(rng.below(20) as usize);
        let mut broken = vec![false; slots.len()];
        let ops = rng.below(40);
        for _ in 0..ops {
            let i = rng.below(slots.len() as u64) as usize;
            let s = &slots[i];
            let ia = (i as u64) << 21;
            let valid = s.load(Ordering::Relaxed) & 1 == 1;
            match rng.below(7) {
                0 | 1 if valid => {
                    let inv = if rng.below(4) == 0 {
                        Inval::Table { ia }
                    } else {
                        Inval::Leaf { ia, level: 2 }
                    };
                    b.break_entry(s, 0, inv);
                    broken[i] = true;
                }
                2 if valid => b.restrict(
                    s,
                    s.load(Ordering::Relaxed) & !0x80,
                    Inval::Leaf { ia, level: 2 },
                ),
                3 => b.sync(),
                4 => {
                    b.sync();
                    broken.iter_mut().for_each(|x| *x = false);
                    b.free(0x9000_0000 + ia);
                }
                5 => b.clean_to_poc(ia, 1 + rng.below(256)),
                _ if !valid => {
                    if broken[i] {
                        b.sync();
                        broken.iter_mut().for_each(|x| *x = false);
                    }
                    b.make(s, (0x4000_0000 + ia) | 0x4c3);
                }
                _ => {}
            }
        }
        b.finish();
        if stage2 {
            // The guest entry that follows a stage-2 change.
            let e = enter_guest(&eos, &mut vt, ());
            // SAFETY: host test: the recording stands for the world switch's ERET and the guest's
            // run.
            let _ = unsafe { e.run(|| ()) };
        }
    }
    let t = trace::take();
    assert!(t.len() > 1000, "trace too short: {}", t.len());
    let v = check(&t);
    if let Some(f) = v.first() {
        for (k, i) in t[f.index.saturating_sub(12)..=f.index].iter().enumerate() {
            eprintln!("{} {:?}", f.index.saturating_sub(12) + k, i);
        }
    }
    assert!(v.is_empty(), "{}", report(&v));
}
