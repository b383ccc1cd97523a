//! Property tests: random operation sequences against a reference model, with the barriers
//! checker run over every recorded trace and table-leak checks.
//!
//! Case count: `S2MM_CASES` (default 800 = 600 with FEAT_S2FWB + 200 without), 250 operations
//! each: 200,000 random operations per `cargo test`.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use s2mm::Vttbr;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

static OPS_RUN: AtomicUsize = AtomicUsize::new(0);
static INSNS_CHECKED: AtomicUsize = AtomicUsize::new(0);

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use s2mm::host::HostAlloc;
use s2mm::{Attrs, El2Stage1, Entry, Ipa, MemType, OwnerId, Pa, PageState, Perms, Stage2, Va};

const PAGE: u64 = 4096;
/// IPA space exercised: 4 GiB (four level-1 entries of a 40-bit stage 2).
const SPACE: u64 = 1 << 20;
const P2M: u64 = 512;
const P1G: u64 = 512 * 512;
const OPS: usize = 250;

const ATTRS: [Attrs; 4] = [
    Attrs::RAM_RWX,
    Attrs::RAM_RW,
    Attrs::DEVICE_RW,
    Attrs {
        mem: MemType::Normal,
        perms: Perms::RO,
    },
];
const STATES: [PageState; 3] = [
    PageState::Owned,
    PageState::SharedOwned,
    PageState::SharedBorrowed,
];

#[derive(Clone, Copy, Debug)]
enum Op {
    Map {
        s: u64,
        n: u64,
        delta: u64,
        attrs: usize,
        state: usize,
    },
    Unmap {
        s: u64,
        n: u64,
    },
    Annotate {
        s: u64,
        n: u64,
        owner: u16,
    },
    SetState {
        s: u64,
        n: u64,
        state: usize,
    },
}

/// A page range `(start, count)` mixing single pages and 1 GiB-scale ranges.
fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        3 => (0..SPACE).prop_map(|s| (s, 1)),
        2 => (0..SPACE, 1..32u64),
        2 => (0..SPACE / P2M, 1..=512u64).prop_map(|(b, k)| (b * P2M, k * P2M)),
        1 => (0..SPACE / P1G).prop_map(|g| (g * P1G, P1G)),
        1 => (0..SPACE, 1..=P1G),
    ]
    .prop_map(|(s, n)| (s, n.min(SPACE - s)))
}

/// Output-address offset (in pages) of a mapping: block-compatible most of the time.
fn delta() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => (0..8u64).prop_map(|k| k * P1G),
        2 => (0..4096u64).prop_map(|k| k * P2M),
        1 => 0..(1u64 << 24),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (range(), delta(), 0..ATTRS.len(), 0..STATES.len()).prop_map(|((s, n), delta, attrs, state)| {
            // Page-granular output offsets over huge ranges would only repeat the same work
            // 262,144 times; keep them to 8 MiB.
            let n = if delta % P2M != 0 { n.min(2048) } else { n };
            Op::Map { s, n, delta, attrs, state }
        }),
        2 => range().prop_map(|(s, n)| Op::Unmap { s, n }),
        1 => (range(), prop::sample::select(vec![1u16, 2, 3, 0x100, 0xffff])).prop_map(|((s, n), owner)| Op::Annotate { s, n, owner }),
        1 => (range(), 0..STATES.len()).prop_map(|((s, n), state)| Op::SetState { s, n, state }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    /// `pa` is the page address of the interval's first page.
    Map {
        pa: u64,
        attrs: Attrs,
        state: PageState,
    },
    Ann(u16),
}

impl V {
    fn advance(self, pages: u64) -> Self {
        match self {
            V::Map { pa, attrs, state } => V::Map {
                pa: pa + pages * PAGE,
                attrs,
                state,
            },
            a => a,
        }
    }
}

/// Reference model: disjoint page intervals `start -> (end, value)`.
#[derive(Default)]
struct Model {
    m: BTreeMap<u64, (u64, V)>,
}

impl Model {
    fn split_at(&mut self, p: u64) {
        if let Some((&s, &(e, v))) = self.m.range(..p).next_back() {
            if e > p {
                self.m.insert(s, (p, v));
                self.m.insert(p, (e, v.advance(p - s)));
            }
        }
    }
    fn set(&mut self, s: u64, e: u64, v: Option<V>) {
        self.split_at(s);
        self.split_at(e);
        let keys: Vec<u64> = self.m.range(s..e).map(|(&k, _)| k).collect();
        for k in keys {
            self.m.remove(&k);
        }
        if let Some(v) = v {
            self.m.insert(s, (e, v));
        }
    }
    fn modify(&mut self, s: u64, e: u64, f: impl Fn(&mut Attrs, &mut PageState)) {
        self.split_at(s);
        self.split_at(e);
        for (_, (_, v)) in self.m.range_mut(s..e) {
            if let V::Map { attrs, state, .. } = v {
                f(attrs, state);
            }
        }
    }
    fn get(&self, p: u64) -> Option<V> {
        let (&s, &(e, v)) = self.m.range(..=p).next_back()?;
        (p < e).then(|| v.advance(p - s))
    }
    /// Coalesced runs `(start, end, value)`.
    fn runs(&self) -> Vec<(u64, u64, V)> {
        coalesce(self.m.iter().map(|(&s, &(e, v))| (s, e, v)))
    }
}

fn coalesce(it: impl Iterator<Item = (u64, u64, V)>) -> Vec<(u64, u64, V)> {
    let mut out: Vec<(u64, u64, V)> = Vec::new();
    for (s, e, v) in it {
        if let Some(last) = out.last_mut() {
            if last.1 == s && last.2.advance(last.1 - last.0) == v {
                last.1 = e;
                continue;
            }
        }
        out.push((s, e, v));
    }
    out
}

type R = Result<s2mm::BatchStats, s2mm::Error>;

/// The operations both regimes share, so one model test drives stage 2 and EL2 stage 1.
/// `None`: the regime has no such operation (the op is skipped, the model unchanged).
trait Tables {
    fn adapt(&self, a: Attrs) -> Attrs;
    fn map(
        &mut self,
        a: &mut HostAlloc,
        ia: u64,
        pa: u64,
        size: u64,
        at: Attrs,
        st: PageState,
    ) -> R;
    fn unmap(&mut self, a: &mut HostAlloc, ia: u64, size: u64) -> R;
    fn annotate(&mut self, a: &mut HostAlloc, ia: u64, size: u64, owner: u16) -> Option<R>;
    fn set_state(&mut self, a: &mut HostAlloc, ia: u64, size: u64, st: PageState) -> Option<R>;
    fn query(&self, a: &HostAlloc, ia: u64) -> Option<s2mm::Mapping>;
    fn annotation(&self, a: &HostAlloc, ia: u64) -> Option<OwnerId>;
    fn entries(&self, a: &HostAlloc, f: &mut dyn FnMut(u64, u64, V));
    fn destroy(self, a: &mut HostAlloc);
}

/// A stage 2 with the VTTBR owner its batches need.
struct S2 {
    t: Stage2,
    v: Vttbr,
}

impl Tables for S2 {
    fn adapt(&self, a: Attrs) -> Attrs {
        a
    }
    fn map(
        &mut self,
        a: &mut HostAlloc,
        ia: u64,
        pa: u64,
        size: u64,
        at: Attrs,
        st: PageState,
    ) -> R {
        Stage2::map(&mut self.t, a, &mut self.v, Ipa(ia), Pa(pa), size, at, st)
    }
    fn unmap(&mut self, a: &mut HostAlloc, ia: u64, size: u64) -> R {
        Stage2::unmap(&mut self.t, a, &mut self.v, Ipa(ia), size)
    }
    fn annotate(&mut self, a: &mut HostAlloc, ia: u64, size: u64, owner: u16) -> Option<R> {
        Some(
            self.t
                .set_annotation(a, &mut self.v, Ipa(ia), size, OwnerId(owner)),
        )
    }
    fn set_state(&mut self, a: &mut HostAlloc, ia: u64, size: u64, st: PageState) -> Option<R> {
        Some(Stage2::set_state(
            &mut self.t,
            a,
            &mut self.v,
            Ipa(ia),
            size,
            st,
        ))
    }
    fn query(&self, a: &HostAlloc, ia: u64) -> Option<s2mm::Mapping> {
        Stage2::query(&self.t, a, Ipa(ia))
    }
    fn annotation(&self, a: &HostAlloc, ia: u64) -> Option<OwnerId> {
        Stage2::annotation(&self.t, a, Ipa(ia))
    }
    fn entries(&self, a: &HostAlloc, f: &mut dyn FnMut(u64, u64, V)) {
        self.t.for_each_entry(a, |ipa, size, e| {
            let val = match e {
                Entry::Mapped(m) => V::Map {
                    pa: m.pa.0,
                    attrs: m.attrs,
                    state: m.state,
                },
                Entry::Annotated(o) => V::Ann(o.0),
            };
            f(ipa.0, size, val);
        });
    }
    fn destroy(mut self, a: &mut HostAlloc) {
        Stage2::destroy(self.t, a, &mut self.v);
    }
}

/// EL2 permissions: readable, W^X, device never executable.
fn el2_perms(mem: MemType, p: Perms) -> Perms {
    let exec = p.exec && !p.write && mem == MemType::Normal;
    Perms {
        read: true,
        write: p.write && !exec,
        exec,
    }
}

impl Tables for El2Stage1 {
    fn adapt(&self, a: Attrs) -> Attrs {
        Attrs {
            mem: a.mem,
            perms: el2_perms(a.mem, a.perms),
        }
    }
    fn map(
        &mut self,
        a: &mut HostAlloc,
        ia: u64,
        pa: u64,
        size: u64,
        at: Attrs,
        st: PageState,
    ) -> R {
        self.map_state(a, Va(ia), Pa(pa), size, at, st)
    }
    fn unmap(&mut self, a: &mut HostAlloc, ia: u64, size: u64) -> R {
        El2Stage1::unmap(self, a, Va(ia), size)
    }
    fn annotate(&mut self, _: &mut HostAlloc, _: u64, _: u64, _: u16) -> Option<R> {
        None
    }
    fn set_state(&mut self, _: &mut HostAlloc, _: u64, _: u64, _: PageState) -> Option<R> {
        None
    }
    fn query(&self, a: &HostAlloc, ia: u64) -> Option<s2mm::Mapping> {
        El2Stage1::query(self, a, Va(ia))
    }
    fn annotation(&self, _: &HostAlloc, _: u64) -> Option<OwnerId> {
        None
    }
    fn entries(&self, a: &HostAlloc, f: &mut dyn FnMut(u64, u64, V)) {
        self.for_each_entry(a, |va, size, m| {
            f(
                va.0,
                size,
                V::Map {
                    pa: m.pa.0,
                    attrs: m.attrs,
                    state: m.state,
                },
            )
        });
    }
    fn destroy(self, a: &mut HostAlloc) {
        El2Stage1::destroy(self, a);
    }
}

fn s2_runs<T: Tables>(s2: &T, a: &HostAlloc) -> Vec<(u64, u64, V)> {
    let mut v = Vec::new();
    s2.entries(a, &mut |ia, size, val| {
        let s = ia / PAGE;
        v.push((s, s + size / PAGE, val));
    });
    coalesce(v.into_iter())
}

fn check_page<T: Tables>(
    s2: &T,
    a: &HostAlloc,
    model: &Model,
    p: u64,
) -> Result<(), TestCaseError> {
    if p >= SPACE {
        return Ok(());
    }
    let ipa = p * PAGE;
    let got = match (s2.query(a, ipa), s2.annotation(a, ipa)) {
        (Some(m), None) => Some(V::Map {
            pa: m.pa.0,
            attrs: m.attrs,
            state: m.state,
        }),
        (None, Some(o)) => Some(V::Ann(o.0)),
        (None, None) => None,
        (m, o) => {
            return Err(TestCaseError::fail(format!(
                "page {p:#x}: both {m:?} and {o:?}"
            )))
        }
    };
    prop_assert_eq!(got, model.get(p), "page {:#x}", p);
    Ok(())
}

fn run_case(fwb: bool, el2: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    barriers::trace::clear();
    let mut a = HostAlloc::new();
    if el2 {
        let t = El2Stage1::new(&mut a, 39).expect("el2");
        run_ops(t, a, true, ops)
    } else {
        let t = Stage2::new(&mut a, 5, 40, fwb).expect("stage 2");
        // SAFETY: host test: the recording backend, one owner per test. The host's VMID is
        // loaded, so every TLBI runs under a switch to VMID 5 (and the checker sees the VMIDs).
        let v = unsafe { Vttbr::assume_loaded(0) };
        run_ops(S2 { t, v }, a, fwb, ops)
    }
}

fn run_ops<T: Tables>(
    mut s2: T,
    mut a: HostAlloc,
    fwb: bool,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let root_pages = a.live_pages();
    let mut model = Model::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for (k, &op) in ops.iter().enumerate() {
        let (s, n) = match op {
            Op::Map { s, n, .. }
            | Op::Unmap { s, n }
            | Op::Annotate { s, n, .. }
            | Op::SetState { s, n, .. } => (s, n),
        };
        let (ipa, size) = (s * PAGE, n * PAGE);
        match op {
            Op::Map {
                delta,
                attrs,
                state,
                ..
            } => {
                let mut at = s2.adapt(ATTRS[attrs]);
                // Without FWB every cacheable map cleans its range to PoC line by line; keep
                // those to small ranges so the recorded trace stays small.
                if !fwb && n > 64 && at.mem == MemType::Normal {
                    at.mem = MemType::Device;
                }
                let pa = (s + delta) * PAGE;
                s2.map(&mut a, ipa, pa, size, at, STATES[state])
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                model.set(
                    s,
                    s + n,
                    Some(V::Map {
                        pa,
                        attrs: at,
                        state: STATES[state],
                    }),
                );
                if s % P1G == 0 && delta % P1G == 0 && n == P1G {
                    prop_assert_eq!(
                        s2.query(&a, ipa).map(|m| m.level),
                        Some(1),
                        "1 GiB block expected"
                    );
                }
                if s % P2M == 0 && delta % P2M == 0 && n >= P2M {
                    prop_assert!(
                        s2.query(&a, ipa).is_some_and(|m| m.level <= 2),
                        "block expected"
                    );
                }
            }
            Op::Unmap { .. } => {
                s2.unmap(&mut a, ipa, size)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                model.set(s, s + n, None);
            }
            Op::Annotate { owner, .. } => {
                if let Some(r) = s2.annotate(&mut a, ipa, size, owner) {
                    r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    model.set(s, s + n, Some(V::Ann(owner)));
                }
            }
            Op::SetState { state, .. } => {
                if let Some(r) = s2.set_state(&mut a, ipa, size, STATES[state]) {
                    r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    model.modify(s, s + n, |_, st| *st = STATES[state]);
                }
            }
        }
        // The barriers checker over this operation's batch.
        let trace = barriers::trace::take();
        OPS_RUN.fetch_add(1, Ordering::Relaxed);
        INSNS_CHECKED.fetch_add(trace.len(), Ordering::Relaxed);
        let v = barriers::check::check(&trace);
        if !v.is_empty() {
            let at = v[0].index;
            let lo = at.saturating_sub(12);
            let window: Vec<String> = trace[lo..(at + 3).min(trace.len())]
                .iter()
                .enumerate()
                .map(|(j, i)| format!("{}: {i:?}", lo + j))
                .collect();
            return Err(TestCaseError::fail(format!(
                "op {k} {op:?}: barrier violations:\n{}\n{}",
                barriers::check::report(&v),
                window.join("\n")
            )));
        }
        // Invariant 10 oracle (requires_bbm): no live valid->valid store changes anything but
        // S2AP, XN, AF or software bits.
        let allowed: u64 = (0b11 << 6) | (1 << 54) | (1 << 10) | (0xf << 55);
        for i in &trace {
            if let barriers::Insn::Store { old, new, .. } = *i {
                if old & 1 == 1 && new & 1 == 1 {
                    prop_assert_eq!(
                        (old ^ new) & !allowed,
                        0,
                        "op {} {:?}: valid->valid store {:#x} -> {:#x} needs BBM",
                        k,
                        op,
                        old,
                        new
                    );
                }
            }
        }
        // Boundaries of the operation, plus random pages.
        for p in [
            s.wrapping_sub(1),
            s,
            s + 1,
            s + n / 2,
            s + n - 1,
            s + n,
            s + n + 1,
        ] {
            check_page(&s2, &a, &model, p)?;
        }
        for _ in 0..8 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            check_page(&s2, &a, &model, rng % SPACE)?;
        }
        if k % 16 == 15 {
            prop_assert_eq!(s2_runs(&s2, &a), model.runs(), "structure after op {}", k);
        }
    }
    prop_assert_eq!(s2_runs(&s2, &a), model.runs(), "final structure");
    // Tables emptied by unmap are freed: back to the bare root.
    s2.unmap(&mut a, 0, SPACE * PAGE)
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(
        a.live_pages(),
        root_pages,
        "tables leaked after unmapping everything"
    );
    s2.destroy(&mut a);
    let trace = barriers::trace::take();
    let v = barriers::check::check(&trace);
    prop_assert!(
        v.is_empty(),
        "barrier violations (unmap all + destroy):\n{}",
        barriers::check::report(&v)
    );
    prop_assert_eq!(a.live_pages(), 0, "tables leaked after destroy");
    barriers::trace::clear();
    Ok(())
}

fn cases(share: u32) -> u32 {
    let total: u32 = std::env::var("S2MM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(800);
    (total * share / 4).max(1)
}

fn run(fwb: bool, el2: bool, n: u32) {
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let strat = proptest::collection::vec(op(), OPS);
    runner
        .run(&strat, |ops| run_case(fwb, el2, &ops))
        .expect("model test failed");
    eprintln!(
        "s2mm model (fwb={fwb}, el2={el2}): {n} cases, {} operations so far in this process, {} traced instructions checked",
        OPS_RUN.load(Ordering::Relaxed),
        INSNS_CHECKED.load(Ordering::Relaxed)
    );
}

#[test]
fn random_ops_match_model_with_fwb() {
    run(true, false, cases(3));
}

/// The EL2 stage-1 regime through the same walker (W^X permissions, no annotations).
#[test]
fn random_ops_match_model_el2_stage1() {
    run(true, true, cases(1) / 2);
}

#[test]
fn random_ops_match_model_without_fwb() {
    run(false, false, cases(1));
}
