//! Property test: the scheduler against a reference model of "the guest always takes the
//! highest-priority pending enabled interrupt", whatever the number of list registers.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod common;
use common::{dw, Fake};
use proptest::prelude::*;
use vgic::{Region, VcpuIf, Version, Vgic};

const N: usize = 12;
const FIRST: u32 = 32;

#[derive(Debug, Clone)]
enum Op {
    Inject(usize),
    Enable(usize, bool),
    /// Enter the guest, which takes (acks and EOIs) one interrupt if it can, then exit.
    Run,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..N).prop_map(Op::Inject),
        1 => (0..N, any::<bool>()).prop_map(|(i, e)| Op::Enable(i, e)),
        4 => Just(Op::Run),
    ]
}

/// The reference: per interrupt, priority, enabled, pending.
#[derive(Debug)]
struct Model {
    prio: [u8; N],
    enabled: [bool; N],
    pending: [bool; N],
}

impl Model {
    fn best(&self) -> Option<u8> {
        (0..N)
            .filter(|&i| self.enabled[i] && self.pending[i])
            .map(|i| self.prio[i])
            .min()
    }
}

fn check(
    version: Version,
    nr_lrs: usize,
    prio: [u8; N],
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let g = Vgic::new(version, 1).unwrap();
    dw(&g, 0, 0, 3);
    for (i, p) in prio.iter().enumerate() {
        let intid = FIRST as u64 + i as u64;
        g.mmio(0, Region::Dist, 0x400 + intid, 1, Some(*p as u64))
            .unwrap();
        if version == Version::V2 {
            g.mmio(0, Region::Dist, 0x800 + intid, 1, Some(1)).unwrap();
        }
    }
    dw(&g, 0, 0xc08, 0xaaaa_aaaa); // INTIDs 32..48 edge-triggered
    let mut m = Model {
        prio: prio.map(|p| p & 0xf8),
        enabled: [false; N],
        pending: [false; N],
    };
    let mut f = Fake::new(version, nr_lrs);
    let mut cpu = VcpuIf::new(0);
    let run = |cpu: &mut VcpuIf, f: &mut Fake, m: &mut Model| -> Result<bool, TestCaseError> {
        cpu.flush(&g, f);
        prop_assert!(f.valid().len() <= nr_lrs);
        let took = f.take_one();
        cpu.sync(&g, f);
        match (took, m.best()) {
            (Some(intid), Some(best)) => {
                let i = (intid - FIRST) as usize;
                prop_assert!(
                    m.enabled[i] && m.pending[i],
                    "took {intid}, not pending+enabled"
                );
                prop_assert_eq!(m.prio[i], best, "took {} over a higher priority", intid);
                m.pending[i] = false;
                Ok(true)
            }
            (None, None) => Ok(false),
            (took, best) => Err(TestCaseError::fail(format!(
                "took {took:?}, model {best:?}"
            ))),
        }
    };
    for op in ops {
        match op {
            Op::Inject(i) => {
                g.inject(0, FIRST + i as u32).unwrap();
                m.pending[i] = true;
            }
            Op::Enable(i, on) => {
                let off = if on { 0x104 } else { 0x184 };
                dw(&g, 0, off, 1 << i);
                m.enabled[i] = on;
            }
            Op::Run => {
                run(&mut cpu, &mut f, &mut m)?;
            }
        }
    }
    // Drain: everything enabled and pending comes out, in priority order.
    while run(&mut cpu, &mut f, &mut m)? {}
    prop_assert_eq!(m.best(), None);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn scheduler_matches_priority_model(
        v3 in any::<bool>(),
        nr_lrs in 1usize..=4,
        // Below 0xf8: the lowest v2 priority is always masked (GICV_PMR keeps 5 bits).
        prio in proptest::array::uniform12(0u8..0xf0),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let version = if v3 { Version::V3 } else { Version::V2 };
        check(version, nr_lrs, prio, ops)?;
    }
}
