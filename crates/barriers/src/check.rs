//! A trace checker for the invariants of ARM-RULES.md section 5 (host builds only).
//!
//! [`check`] walks a recorded trace once (linear time; one hash map keyed by descriptor address)
//! and reports every violation it finds. It models what the trace shows: `MSR` writes with their
//! changed bits, consumers ([`Insn::Use`], `*_EL1`-named and GIC register accesses, TLBI by VMID), CSEs
//! (`ISB`, the guest-entry `ERET`), descriptor stores, DSBs, TLBIs and frees.
//!
//! Checked invariants:
//!
//! | # | what |
//! |---|---|
//! | 1 | an in-context write (ICC_SRE_EL2, SCTLR/TCR/TTBR0/MAIR_EL2) is followed by an ISB before its consumer |
//! | 2 | an ISB has a pending in-context reason (sysreg write, EL2 mapping change) |
//! | 4 | a change of HCR_EL2.{RW,E2H,TGE,NV,NV1} gets an explicit ISB before the next ERET |
//! | 6 | an E2H/TGE change gets an ISB before any `*_EL1`-named access or TCR_EL2/CPTR_EL2 write |
//! | 7 | a TGE/VTTBR/VTCR/VM change gets an ISB before TLBI by VMID; a stage-2 batch's VMID equals VTTBR_EL2's |
//! | 8 | clearing a CPTR_EL2 FP/SVE/SME trap gets an ISB before EL2 FP use |
//! | 11 | a break is published by a DSB before its TLBI, and completed (TLBI, DSB ISH) before a make over the same descriptor, before the ERET and by the end of the trace |
//! | 12 | TLBI IPAS2E1IS is followed by DSB ISH and then TLBI VMALLE1IS (completed by a DSB), unless VMALLS12E1IS covered it |
//! | 13 | a valid descriptor store is followed by a DSB before the next ERET, and by DSB + ISB before EL2 relies on its memory |
//! | 15 | nothing is freed while a break is not completed |
//! | 23 | no duplicate obligation: no DSB with nothing to order since the previous DSB, no TLBI repeated before its completing DSB |

use crate::insn::{Consumer, DsbKind, Insn, SysReg, Tlbi};
use crate::regs::{
    vttbr_vmid, CPTR_EL2_FP_TRAPS, HCR_E2H_TGE, HCR_ERET_FIELDS, HCR_GUEST_ONLY_FIELDS,
};
use std::collections::{HashMap, HashSet};
use std::format;
use std::string::String;
use std::vec::Vec;

/// What kind of defect a violation is, for the per-path counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A consumer (or an ERET) ran before the context synchronisation it needed.
    MissingIsb,
    /// An ISB with nothing pending for it to synchronise (invariant 2).
    NeedlessIsb,
    /// TLB maintenance by VMID under a VMID other than the edited tables' (invariant 7).
    WrongVmid,
    /// Anything else (break-before-make, DSB/TLBI order, duplicate obligations).
    Other,
}

/// One violated invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant number in ARM-RULES.md section 5.
    pub invariant: u8,
    /// Its kind.
    pub kind: Kind,
    /// Index of the offending trace entry (the trace length for end-of-trace findings).
    pub index: usize,
    /// What went wrong.
    pub what: String,
}

// In-context classes pending since the last CSE.
const E2H_TGE: u8 = 0;
const VMID: u8 = 1;
const FP: u8 = 2;
const GIC: u8 = 3;
const EL2MEM: u8 = 4;
const ERET_IN: u8 = 5;
const OTHER: u8 = 6;
const NCLASS: usize = 7;

const HCR_VM: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum S1Flush {
    None,
    /// IPAS2E1IS issued; needs DSB ISH.
    NeedDsb,
    /// Needs TLBI VMALLE1IS.
    NeedVmalle1,
    /// VMALLE1IS issued; needs DSB ISH.
    NeedFinalDsb,
}

struct State {
    out: Vec<Violation>,
    /// Per class: index of the write pending since the last CSE.
    pending: [Option<usize>; NCLASS],
    vttbr_vmid: Option<u16>,
    /// The VMID of the stage-2 batch whose maintenance is under way (since its `Stage2Edit`
    /// marker, until the next VTTBR_EL2 write).
    batch_vmid: Option<u16>,
    /// Index of the last descriptor store of each address that broke a valid entry.
    breaks: HashMap<u64, usize>,
    /// Index of the newest break store.
    last_break: Option<usize>,
    /// Breaks with index <= these watermarks are DSB-published / TLBI-issued / completed.
    published: Option<usize>,
    invalidated: Option<usize>,
    completed: Option<usize>,
    last_store: Option<usize>,
    /// A valid descriptor store not yet followed by a DSB.
    make_undsb: Option<usize>,
    /// A valid store (or EL2 TLBI) DSB'd but no ISB since: justifies an ISB; EL2 memory use needs it.
    need_isb_for_mappings: bool,
    s1flush: (S1Flush, usize),
    /// Anything for a DSB to order since the last DSB.
    work_since_dsb: bool,
    tlbis_since_dsb: HashSet<Tlbi>,
}

impl State {
    fn v(&mut self, invariant: u8, index: usize, what: String) {
        self.vk(invariant, Kind::Other, index, what);
    }

    fn vk(&mut self, invariant: u8, kind: Kind, index: usize, what: String) {
        self.out.push(Violation {
            invariant,
            kind,
            index,
            what,
        });
    }

    fn need(&mut self, class: u8, inv: u8, i: usize, what: &str) {
        if let Some(w) = self.pending[class as usize] {
            self.vk(
                inv,
                Kind::MissingIsb,
                i,
                format!("{what} at {i} without an ISB after the write at {w}"),
            );
        }
    }

    fn msr(&mut self, i: usize, reg: SysReg, value: u64, changed: u64) {
        // Consumers first: the write itself may read E2H (layout) or SRE.
        if reg.is_el1_named() || reg.is_e2h_layout() {
            self.need(E2H_TGE, 6, i, &format!("{reg:?} (E2H-dependent) access"));
        }
        if reg.is_gic() {
            self.need(GIC, 1, i, &format!("{reg:?} access after ICC_SRE_EL2"));
        }
        if changed == 0 {
            return;
        }
        let set = |s: &mut Self, c: u8| s.pending[c as usize] = Some(i);
        match reg {
            SysReg::HcrEl2 => {
                if changed & HCR_E2H_TGE != 0 {
                    set(self, E2H_TGE);
                    set(self, VMID);
                }
                if changed & HCR_ERET_FIELDS != 0 {
                    set(self, ERET_IN);
                }
                if changed & HCR_VM != 0 {
                    set(self, VMID);
                }
                if changed & !(HCR_GUEST_ONLY_FIELDS | HCR_E2H_TGE | HCR_ERET_FIELDS | HCR_VM) != 0
                {
                    set(self, OTHER);
                }
            }
            SysReg::VttbrEl2 => {
                self.vttbr_vmid = Some(vttbr_vmid(value));
                self.batch_vmid = None;
                set(self, VMID);
            }
            SysReg::VtcrEl2 => set(self, VMID),
            SysReg::CptrEl2 if changed & !value & CPTR_EL2_FP_TRAPS != 0 => set(self, FP),
            SysReg::ZcrEl2 if changed != 0 => set(self, FP),
            SysReg::IccSreEl2 => set(self, GIC),
            SysReg::SctlrEl2 | SysReg::TcrEl2 | SysReg::Ttbr0El2 | SysReg::MairEl2 => {
                set(self, EL2MEM)
            }
            _ => {}
        }
    }

    fn cse(&mut self) {
        self.pending = [None; NCLASS];
    }

    fn isb(&mut self, i: usize) {
        let reason = self.pending.iter().any(Option::is_some) || self.need_isb_for_mappings;
        if !reason {
            self.vk(
                2,
                Kind::NeedlessIsb,
                i,
                format!("ISB at {i} with no pending in-context write or EL2 mapping change"),
            );
        }
        self.cse();
        self.need_isb_for_mappings = false;
    }

    fn eret(&mut self, i: usize) {
        if let Some(w) = self.pending[ERET_IN as usize] {
            self.vk(
                4,
                Kind::MissingIsb,
                i,
                format!(
                    "ERET at {i}: HCR_EL2.RW/E2H/TGE/NV change at {w} needs an explicit ISB first"
                ),
            );
        }
        if let Some(w) = self.make_undsb {
            self.v(
                13,
                i,
                format!("ERET at {i}: descriptor store at {w} not published by a DSB"),
            );
        }
        self.breaks_done(11, i, "ERET");
        if self.s1flush.0 != S1Flush::None {
            let at = self.s1flush.1;
            self.v(
                12,
                i,
                format!("ERET at {i}: stage-1 flush after IPAS2E1IS at {at} incomplete"),
            );
            self.s1flush = (S1Flush::None, i);
        }
        self.cse();
        self.work_since_dsb = true;
    }

    fn breaks_done(&mut self, inv: u8, i: usize, what: &str) {
        if let Some(b) = self.last_break {
            if self.completed.is_none_or(|c| c < b) {
                self.v(inv, i, format!("{what} at {i} while the break at {b} is not completed (DSB, TLBI, DSB ISH)"));
                // Report once per break.
                self.completed = Some(b);
            }
        }
    }

    fn dsb(&mut self, i: usize, kind: DsbKind) {
        if !self.work_since_dsb {
            self.v(
                23,
                i,
                format!("DSB {kind:?} at {i} with nothing to order since the previous DSB"),
            );
        }
        self.work_since_dsb = false;
        self.tlbis_since_dsb.clear();
        if kind.covers_ish_stores() {
            self.published = self.last_store;
            if self.make_undsb.take().is_some() {
                self.need_isb_for_mappings = true;
            }
        }
        if kind.completes_tlbi() {
            self.completed = self.invalidated;
            self.s1flush.0 = match self.s1flush.0 {
                S1Flush::NeedDsb => S1Flush::NeedVmalle1,
                S1Flush::NeedFinalDsb => S1Flush::None,
                s => s,
            };
        }
    }

    fn tlbi(&mut self, i: usize, op: Tlbi) {
        if op.by_vmid() {
            self.need(VMID, 7, i, &format!("TLBI {op:?} by VMID"));
            match (self.batch_vmid, self.vttbr_vmid) {
                (Some(b), Some(v)) if b == v => {}
                (Some(b), v) => self.vk(
                    7,
                    Kind::WrongVmid,
                    i,
                    format!("TLBI {op:?} at {i} for VMID {b}'s tables while VTTBR_EL2 holds {v:?}"),
                ),
                (None, _) => self.vk(
                    7,
                    Kind::WrongVmid,
                    i,
                    format!("TLBI {op:?} at {i} by VMID outside a stage-2 batch (no VMID named)"),
                ),
            }
        }
        if let Some(b) = self.last_break {
            if self.published.is_none_or(|p| p < b) {
                self.v(
                    11,
                    i,
                    format!("TLBI at {i} before a DSB published the break at {b}"),
                );
                self.published = Some(b);
            }
        }
        self.invalidated = self.published;
        if !self.tlbis_since_dsb.insert(op) {
            self.v(
                23,
                i,
                format!("TLBI {op:?} at {i} repeated before its completing DSB"),
            );
        }
        self.work_since_dsb = true;
        match op {
            Tlbi::Ipas2e1is { .. } => self.s1flush = (S1Flush::NeedDsb, i),
            Tlbi::Vmalls12e1is => self.s1flush = (S1Flush::None, i),
            Tlbi::Vmalle1is => {
                match self.s1flush.0 {
                    S1Flush::NeedDsb => {
                        let at = self.s1flush.1;
                        self.v(12, i, format!("TLBI VMALLE1IS at {i} before the DSB ISH completing IPAS2E1IS at {at}"));
                        self.s1flush.0 = S1Flush::NeedFinalDsb;
                    }
                    S1Flush::NeedVmalle1 => self.s1flush.0 = S1Flush::NeedFinalDsb,
                    _ => {}
                }
            }
            Tlbi::Alle2is | Tlbi::Alle2 | Tlbi::Vae2is { .. } => self.need_isb_for_mappings = true,
        }
    }

    fn store(&mut self, i: usize, addr: u64, old: u64, new: u64) {
        let (was, is) = (old & 1 == 1, new & 1 == 1);
        if was && !is {
            self.breaks.insert(addr, i);
            self.last_break = Some(i);
        }
        if is && !was {
            if let Some(&b) = self.breaks.get(&addr) {
                if self.completed.is_none_or(|c| c < b) {
                    self.v(11, i, format!("make at {i} over descriptor {addr:#x} before its break at {b} completed"));
                }
            }
        }
        if is {
            self.make_undsb.get_or_insert(i);
        }
        self.last_store = Some(i);
        self.work_since_dsb = true;
    }

    fn use_(&mut self, i: usize, c: Consumer) {
        match c {
            Consumer::El2Fp => self.need(FP, 8, i, "EL2 FP/SIMD use"),
            Consumer::El2Memory => {
                self.need(EL2MEM, 1, i, "EL2 memory access");
                if let Some(w) = self.make_undsb {
                    self.v(13, i, format!("EL2 relies on mappings at {i}: store at {w} not published by DSB ISHST"));
                } else if self.need_isb_for_mappings {
                    self.vk(
                        13,
                        Kind::MissingIsb,
                        i,
                        format!("EL2 relies on mappings at {i} without an ISB after their DSB"),
                    );
                }
            }
            Consumer::VttbrIs { vmid, synced } => {
                self.vttbr_vmid = Some(vmid);
                if !synced {
                    self.pending[VMID as usize] = Some(i);
                }
            }
            Consumer::Stage2Edit { vmid } => {
                self.batch_vmid = Some(vmid);
                if self.vttbr_vmid != Some(vmid) {
                    let v = self.vttbr_vmid;
                    self.vk(
                        7,
                        Kind::WrongVmid,
                        i,
                        format!("stage-2 batch for VMID {vmid} while VTTBR_EL2 holds VMID {v:?}"),
                    );
                }
            }
        }
    }
}

/// Checks `trace` against the invariants listed in the [module documentation](self). Returns every
/// violation, in trace order (end-of-trace findings last). Linear in the trace length.
pub fn check(trace: &[Insn]) -> Vec<Violation> {
    let mut s = State {
        out: Vec::new(),
        pending: [None; NCLASS],
        vttbr_vmid: None,
        batch_vmid: None,
        breaks: HashMap::new(),
        last_break: None,
        published: None,
        invalidated: None,
        completed: None,
        last_store: None,
        make_undsb: None,
        need_isb_for_mappings: false,
        s1flush: (S1Flush::None, 0),
        work_since_dsb: true,
        tlbis_since_dsb: HashSet::new(),
    };
    for (i, insn) in trace.iter().enumerate() {
        match *insn {
            Insn::Isb => s.isb(i),
            Insn::Dsb(k) => s.dsb(i, k),
            Insn::Tlbi(op) => s.tlbi(i, op),
            Insn::Msr {
                reg,
                value,
                changed,
            } => s.msr(i, reg, value, changed),
            Insn::Mrs { reg } => {
                if reg.is_el1_named() {
                    s.need(E2H_TGE, 6, i, &format!("{reg:?} read"));
                }
                if reg.is_gic() {
                    s.need(GIC, 1, i, &format!("{reg:?} read after ICC_SRE_EL2"));
                }
            }
            Insn::Eret => s.eret(i),
            Insn::DcCivac { .. } | Insn::IcIalluis | Insn::Free { .. } => {
                if let Insn::Free { pa } = *insn {
                    s.breaks_done(15, i, &format!("free of {pa:#x}"));
                }
                s.work_since_dsb = true;
            }
            Insn::Store { addr, old, new, .. } => s.store(i, addr, old, new),
            Insn::Use(c) => s.use_(i, c),
        }
    }
    let n = trace.len();
    s.breaks_done(11, n, "end of trace");
    if s.s1flush.0 != S1Flush::None {
        let at = s.s1flush.1;
        s.v(
            12,
            n,
            format!("end of trace: stage-1 flush after IPAS2E1IS at {at} incomplete"),
        );
    }
    s.out
}

/// Instruction and defect counts of one traced scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// ISBs.
    pub isb: usize,
    /// DSBs.
    pub dsb: usize,
    /// TLBIs.
    pub tlbi: usize,
    /// DC and IC operations.
    pub cache: usize,
    /// ERETs (guest entries).
    pub eret: usize,
    /// Needless ISBs found.
    pub needless_isb: usize,
    /// Missing synchronisations found.
    pub missing_isb: usize,
    /// TLB maintenance under the wrong VMID found.
    pub wrong_vmid: usize,
    /// Every other violation.
    pub other: usize,
}

impl core::fmt::Display for Summary {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "isb {} dsb {} tlbi {} dc/ic {} eret {} | needless isb {} missing isb {} wrong vmid {} other {}",
            self.isb,
            self.dsb,
            self.tlbi,
            self.cache,
            self.eret,
            self.needless_isb,
            self.missing_isb,
            self.wrong_vmid,
            self.other
        )
    }
}

/// Checks `trace` and counts its barriers and defects.
pub fn summary(trace: &[Insn]) -> Summary {
    let mut s = Summary::default();
    for i in trace {
        match i {
            Insn::Isb => s.isb += 1,
            Insn::Dsb(_) => s.dsb += 1,
            Insn::Tlbi(_) => s.tlbi += 1,
            Insn::DcCivac { .. } => s.cache += 1,
            Insn::Eret => s.eret += 1,
            _ => {}
        }
    }
    for v in check(trace) {
        match v.kind {
            Kind::NeedlessIsb => s.needless_isb += 1,
            Kind::MissingIsb => s.missing_isb += 1,
            Kind::WrongVmid => s.wrong_vmid += 1,
            Kind::Other => s.other += 1,
        }
    }
    s
}

/// Formats violations one per line, for assertion messages.
pub fn report(violations: &[Violation]) -> String {
    let mut s = String::new();
    for v in violations {
        s.push_str(&format!(
            "invariant {} at {}: {}\n",
            v.invariant, v.index, v.what
        ));
    }
    s
}
