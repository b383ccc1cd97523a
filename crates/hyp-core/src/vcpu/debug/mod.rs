//! Self-hosted debug for guest vCPUs: breakpoints (DBGBVR/DBGBCR<n>_EL1),
//! watchpoints (DBGWVR/DBGWCR<n>_EL1), software step (MDSCR_EL1.SS), the OS
//! lock (OSLAR/OSLSR_EL1), switched lazily as KVM does
//! (arch/arm64/kvm/debug.c, sys_regs.c `trap_bvr`/`trap_oslar_el1`).
//!
//! A vCPU starts with MDCR_EL2.TDA set: every access to MDSCR_EL1 and the
//! breakpoint/watchpoint registers traps and is emulated on the copy here
//! ([`emulate`]). The first access makes the vCPU an *owner*: from the next
//! entry its registers are loaded into the CPU and TDA is cleared, so its
//! debugging runs at full speed. When its run ends (back to the host) they
//! are saved, every breakpoint/watchpoint enable and MDSCR_EL1 cleared (so
//! nothing of it can fire in the host or in another VM), and TDA set again;
//! the vCPU stays an owner for its next run only while MDSCR_EL1 enables
//! something (MDE, KDE or SS), as KVM's `kvm_vcpu_load_debug` decides. A
//! guest that never debugs pays nothing: no register is touched on its world
//! switch beyond one flag test.
//!
//! MDCR_EL2.TDOSA stays set: the OS lock is emulated per vCPU (KVM's
//! `trap_oslar_el1`); while the guest holds it locked its registers are
//! kept out of the CPU (TDA set, MDSCR_EL1 = 0), which disables breakpoint,
//! watchpoint and step exceptions as the lock does architecturally (Arm ARM
//! D2, "The OS Lock"); BRK is not affected by either. The CPU's own OS lock
//! is cleared once at bring-up ([`cpu_init`]): it resets locked.
//!
//! Nothing here can reach EL2: with MDCR_EL2.TDE = 0 and HCR_EL2.TGE = 0 the
//! debug target is EL1, and no breakpoint, watchpoint or step exception is
//! generated from an Exception level above it (`DebugTargetFrom()` and
//! `AArch64.GenerateDebugExceptionsFrom()`, Arm ARM shared pseudocode), so
//! a guest's DBGBCR.HMC (match at EL2) or a watchpoint over the
//! hypervisor's memory has no effect at EL2.
//!
//! The decisions ([`emulate`], [`DebugRegs::wants_cpu`],
//! [`DebugRegs::after_run`]) are pure; [`load`] and [`unload`] are the
//! register effects, built on `barriers::regs` (recorded on the host).

use crate::arch::esr::SysRegEnc;
use barriers::regs::DbgKind;

mod switch;
pub use switch::*;

#[cfg(test)]
mod tests;

/// MDSCR_EL1.SS (bit 0): software step enable.
pub const MDSCR_SS: u64 = 1 << 0;
/// MDSCR_EL1.KDE (bit 13): debug exceptions at the debug target EL (EL1).
pub const MDSCR_KDE: u64 = 1 << 13;
/// MDSCR_EL1.MDE (bit 15): breakpoint and watchpoint exceptions.
pub const MDSCR_MDE: u64 = 1 << 15;
/// MDSCR_EL1 bits a guest may set while its copy is emulated (Armv8.0
/// debug, the DebugVer the guest is shown): SS, TDCC (12), KDE, HDE (14),
/// MDE, SC2 (19), TDA (21), INTdis (23:22). The rest read as zero.
pub const MDSCR_WRITABLE: u64 = MDSCR_SS | (0xf << 12) | (1 << 19) | (0b111 << 21);
/// DBGBCR<n>_EL1 fields: E, PMC, BAS, HMC, SSC, LBN, BT (Arm ARM D24.3).
pub const BCR_WRITABLE: u64 = 0x00ff_e1e7;
/// DBGWCR<n>_EL1 fields: E, PAC, LSC, BAS, HMC, SSC, LBN, WT, MASK.
pub const WCR_WRITABLE: u64 = 0x1f1f_ffff;
/// DBGBVR/DBGWVR<n>_EL1 bits \[1:0\] are RES0.
pub const VR_WRITABLE: u64 = !0b11;
/// OSLSR_EL1.OSLM = 0b10 (bit 3): the OS lock is implemented.
pub const OSLSR_OSLM: u64 = 1 << 3;
/// OSLSR_EL1.OSLK (bit 1): the OS lock is locked.
pub const OSLSR_OSLK: u64 = 1 << 1;
/// Breakpoints or watchpoints the architecture allows at most (BRPs and
/// WRPs are 4-bit fields holding the count minus one).
const BANK: usize = 16;

/// MDCR_EL2.TDA (bit 9): the debug registers trap.
pub const MDCR_TDA: u64 = 1 << 9;

/// PSTATE.SS (SPSR bit 21): the software-step state machine is
/// active-not-pending (Arm ARM D2, "Software Step exceptions").
pub const PSTATE_SS: u64 = 1 << 21;

/// EL2 emulated the trapped instruction and moved the PC `step` bytes past
/// it: the instruction completed, so a step in progress becomes
/// active-pending (PSTATE.SS = 0) and the step exception is taken at the
/// next instruction, before it executes (KVM's `kvm_skip_instr` does the
/// same). Without this, a guest stepping over an emulated access would
/// execute one more instruction unstepped. Only a vCPU whose registers are
/// live can be stepping (MDSCR_EL1.SS is 0 in the CPU otherwise, and an
/// ERET with step disabled leaves PSTATE.SS clear): one flag test for the
/// others.
#[inline(always)]
pub fn stepped_past(d: &DebugRegs, pstate: &mut u64, step: u64) {
    // The step first: it is in a register, and most exits that go back to
    // the host (HVCs, WFI, MMIO for the host) step nothing.
    if step != 0 && d.live {
        *pstate &= !PSTATE_SS;
    }
}

/// The same for an MMIO read the host completed, at the start of the
/// vCPU's next run (its registers are not live yet; they will be if it
/// [`DebugRegs::wants_cpu`]).
#[inline(always)]
pub fn completed_past(d: &DebugRegs, pstate: &mut u64) {
    if d.want {
        *pstate &= !PSTATE_SS;
    }
}

/// How many breakpoints and watchpoints the CPU has (ID_AA64DFR0_EL1.BRPs
/// and WRPs, each the count minus one; the guest is shown the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Breakpoints (2..=16).
    pub brps: u8,
    /// Watchpoints (2..=16).
    pub wrps: u8,
}

impl Counts {
    /// The counts ID_AA64DFR0_EL1 value `dfr0` describes.
    #[must_use]
    pub const fn from_dfr0(dfr0: u64) -> Self {
        Self {
            brps: ((dfr0 >> 12) & 0xf) as u8 + 1,
            wrps: ((dfr0 >> 20) & 0xf) as u8 + 1,
        }
    }
}

/// A vCPU's self-hosted debug state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugRegs {
    /// DBGBVR<n>_EL1.
    pub bvr: [u64; BANK],
    /// DBGBCR<n>_EL1.
    pub bcr: [u64; BANK],
    /// DBGWVR<n>_EL1.
    pub wvr: [u64; BANK],
    /// DBGWCR<n>_EL1.
    pub wcr: [u64; BANK],
    /// MDSCR_EL1.
    pub mdscr: u64,
    /// The vCPU's OS lock (OSLSR_EL1.OSLK).
    pub oslk: bool,
    /// The vCPU uses its debug registers: they go into the CPU at its
    /// entries (unless its OS lock is set).
    pub owner: bool,
    /// `owner && !oslk` ([`DebugRegs::wants_cpu`]), kept so the world
    /// switch tests one flag against `live`.
    want: bool,
    /// They are in this CPU now (TDA clear): the copy above is stale until
    /// [`unload`].
    pub live: bool,
}

impl DebugRegs {
    /// Reset: everything zero, the OS lock clear (KVM resets OSLSR_EL1 to
    /// OSLM = 0b10, unlocked).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            bvr: [0; BANK],
            bcr: [0; BANK],
            wvr: [0; BANK],
            wcr: [0; BANK],
            mdscr: 0,
            oslk: false,
            owner: false,
            want: false,
            live: false,
        }
    }

    /// Recomputes [`DebugRegs::wants_cpu`] after `owner` or `oslk` changed.
    fn update(&mut self) {
        self.want = self.owner && !self.oslk;
    }

    /// Whether the registers should be in the CPU while the vCPU runs.
    #[must_use]
    pub const fn wants_cpu(&self) -> bool {
        self.want
    }

    /// At the end of a run (after [`unload`]): whether the vCPU stays an
    /// owner for its next one. Only while MDSCR_EL1 enables breakpoints,
    /// watchpoints or step: otherwise its next access traps again (KVM's
    /// `kvm_vcpu_load_debug`).
    pub fn after_run(&mut self) {
        self.owner = self.mdscr & (MDSCR_MDE | MDSCR_KDE | MDSCR_SS) != 0;
        self.update();
    }
}

impl Default for DebugRegs {
    fn default() -> Self {
        Self::new()
    }
}

/// A register of the op0 = 2 (debug) space a guest accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugReg {
    /// MDSCR_EL1 (2, 0, 0, 2, 2).
    Mdscr,
    /// DBGBVR/DBGBCR/DBGWVR/DBGWCR<n>_EL1 (2, 0, 0, n, 4..=7).
    Point(DbgKind, u8),
    /// OSLAR_EL1 (2, 0, 1, 0, 4): write-only.
    Oslar,
    /// OSLSR_EL1 (2, 0, 1, 1, 4): read-only.
    Oslsr,
    /// Anything else of the debug space: RAZ/WI (OSDLR_EL1 without
    /// FEAT_DoubleLock, DBGPRCR_EL1, MDRAR_EL1, the claim tags,
    /// DBGAUTHSTATUS_EL1, the DCC registers, ...), as KVM's `trap_raz_wi`.
    RazWi,
}

/// Names a debug-space register (`None`: not op0 = 2).
#[must_use]
pub const fn classify(enc: SysRegEnc) -> Option<DebugReg> {
    if enc.op0 != 2 {
        return None;
    }
    Some(match (enc.op1, enc.crn, enc.crm, enc.op2) {
        (0, 0, 2, 2) => DebugReg::Mdscr,
        (0, 0, n, 4) => DebugReg::Point(DbgKind::Bvr, n),
        (0, 0, n, 5) => DebugReg::Point(DbgKind::Bcr, n),
        (0, 0, n, 6) => DebugReg::Point(DbgKind::Wvr, n),
        (0, 0, n, 7) => DebugReg::Point(DbgKind::Wcr, n),
        (0, 1, 0, 4) => DebugReg::Oslar,
        (0, 1, 1, 4) => DebugReg::Oslsr,
        _ => DebugReg::RazWi,
    })
}

/// MDSCR_EL1.TDCC (bit 12): EL0 accesses to the DCC registers trap to EL1.
pub const MDSCR_TDCC: u64 = 1 << 12;

/// Whether a trapped access from PSTATE `pstate` is one the guest's own
/// MDSCR_EL1.TDCC forbids: EL0 reaches EL2 here only through the DCC
/// registers (MDCCSR_EL0, DBGDTR*_EL0; every other debug register is
/// UNDEFINED at EL0, taken to EL1 before any EL2 trap), and TDCC traps
/// those to EL1 first, which the CPU cannot do while the guest's MDSCR_EL1
/// is only a copy (TDA set). Linux sets TDCC at boot (`__cpu_setup`). The
/// hypervisor injects an UNDEF (the CPU would report EC 0x18 to EL1).
#[must_use]
pub const fn el0_dcc_refused(d: &DebugRegs, pstate: u64) -> bool {
    // PSTATE.M[3:2] = 0: EL0 (AArch64; AArch32 EL0 uses other ECs).
    pstate & 0b1100 == 0 && d.mdscr & MDSCR_TDCC != 0
}

/// A guest's trapped access, as the exit policy decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The register.
    pub reg: DebugReg,
    /// A read (into `rt`), else a write of `value`.
    pub read: bool,
    /// The register read into (31: XZR, the value is dropped).
    pub rt: u8,
    /// The value written.
    pub value: u64,
}

/// What a trapped debug-register access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (a write, or a read of this value into Rt).
    Done(u64),
    /// UNDEFINED: a breakpoint or watchpoint the CPU does not have, a read
    /// of OSLAR_EL1 or a write of OSLSR_EL1.
    Undefined,
}

/// Carries out a trapped access of `reg` (`read`, or a write of `value`) on
/// the vCPU's copy, which is current: the access trapped, so the registers
/// are not in the CPU (MDCR_EL2.TDOSA traps OSLAR/OSLSR whether they are or
/// not; those touch only `oslk`). Any access makes the vCPU an owner (KVM
/// marks the debug registers dirty on writes; a read is the same sign of a
/// debugger at work and costs one more trap otherwise).
pub fn emulate(d: &mut DebugRegs, reg: DebugReg, read: bool, value: u64, n: Counts) -> Outcome {
    let out = emulate_on(d, reg, read, value, n);
    d.update();
    out
}

fn emulate_on(d: &mut DebugRegs, reg: DebugReg, read: bool, value: u64, n: Counts) -> Outcome {
    match reg {
        DebugReg::Mdscr => {
            d.owner = true;
            if read {
                return Outcome::Done(d.mdscr);
            }
            d.mdscr = value & MDSCR_WRITABLE;
            Outcome::Done(0)
        }
        DebugReg::Point(kind, i) => {
            let (count, mask) = match kind {
                DbgKind::Bvr => (n.brps, VR_WRITABLE),
                DbgKind::Bcr => (n.brps, BCR_WRITABLE),
                DbgKind::Wvr => (n.wrps, VR_WRITABLE),
                DbgKind::Wcr => (n.wrps, WCR_WRITABLE),
            };
            if i >= count.min(16) {
                return Outcome::Undefined;
            }
            d.owner = true;
            let r = &mut bank(d, kind)[i as usize];
            if read {
                return Outcome::Done(*r);
            }
            *r = value & mask;
            Outcome::Done(0)
        }
        DebugReg::Oslar if !read => {
            d.oslk = value & 1 != 0;
            Outcome::Done(0)
        }
        DebugReg::Oslsr if read => Outcome::Done(OSLSR_OSLM | if d.oslk { OSLSR_OSLK } else { 0 }),
        DebugReg::Oslar | DebugReg::Oslsr => Outcome::Undefined,
        DebugReg::RazWi => Outcome::Done(0),
    }
}

/// Every implemented breakpoint and watchpoint register, in the order the
/// switch writes them.
fn each_point(n: Counts) -> impl Iterator<Item = (DbgKind, u8)> {
    let b = (0..n.brps.min(16)).flat_map(|i| [(DbgKind::Bvr, i), (DbgKind::Bcr, i)]);
    let w = (0..n.wrps.min(16)).flat_map(|i| [(DbgKind::Wvr, i), (DbgKind::Wcr, i)]);
    b.chain(w)
}

fn bank(d: &mut DebugRegs, kind: DbgKind) -> &mut [u64; BANK] {
    match kind {
        DbgKind::Bvr => &mut d.bvr,
        DbgKind::Bcr => &mut d.bcr,
        DbgKind::Wvr => &mut d.wvr,
        DbgKind::Wcr => &mut d.wcr,
    }
}
