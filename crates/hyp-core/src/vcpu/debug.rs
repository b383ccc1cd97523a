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
use barriers::regs::{DbgKind, DbgReg, MdcrEl2, MdscrEl1, OslarEl1};
use barriers::GuestPending;

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
    if d.live && step != 0 {
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

/// Puts the vCPU's registers into the CPU and clears MDCR_EL2.TDA (leaving
/// every other MDCR_EL2 bit as it is). Every implemented register is
/// written, so nothing of the previous owner remains readable. All writes
/// are guest-only (the debug target is EL1): the entry ERET synchronises
/// them.
pub fn load(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    for (kind, i) in each_point(n) {
        pending.add(DbgReg::new(kind, i).write(bank(d, kind)[i as usize]));
    }
    pending.add(MdscrEl1::write(d.mdscr));
    // SAFETY: clears TDA only: the vCPU's accesses to the registers just
    // loaded stop trapping; TDOSA/TDRA and the PMU traps stay as they are.
    pending.add(unsafe { MdcrEl2::write(MdcrEl2::read() & !MDCR_TDA) });
    d.live = true;
}

/// Saves the vCPU's registers from the CPU, disables every breakpoint,
/// watchpoint and step there (MDSCR_EL1 = 0, every DBGBCR/DBGWCR = 0: the
/// host and the next vCPU see none of them) and sets MDCR_EL2.TDA again.
pub fn unload(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    d.mdscr = MdscrEl1::read();
    pending.add(MdscrEl1::write(0));
    for (kind, i) in each_point(n) {
        let r = DbgReg::new(kind, i);
        bank(d, kind)[i as usize] = r.read();
        if matches!(kind, DbgKind::Bcr | DbgKind::Wcr) {
            pending.add(r.write(0));
        }
    }
    // SAFETY: sets TDA only (a trap).
    pending.add(unsafe { MdcrEl2::write(MdcrEl2::read() | MDCR_TDA) });
    d.live = false;
}

/// Brings the CPU in line with what the vCPU wants after a trapped access
/// or at its entry: loads or unloads its registers if
/// [`DebugRegs::wants_cpu`] changed. Nothing when it did not (one test).
#[inline(always)]
pub fn reconcile(d: &mut DebugRegs, n: impl FnOnce() -> Counts, pending: &mut GuestPending) {
    if d.want != d.live {
        reconcile_cold(d, n(), pending);
    }
}

#[cold]
#[inline(never)]
fn reconcile_cold(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    if d.live {
        unload(d, n, pending);
    } else {
        load(d, n, pending);
    }
}

/// The start of a vCPU's run: its registers go into the CPU if it wants
/// them there (they are never live yet: [`end_run`] unloads them). One
/// flag test for a vCPU that does not debug.
#[inline(always)]
pub fn start_run(d: &mut DebugRegs, n: impl FnOnce() -> Counts, pending: &mut GuestPending) {
    if d.want {
        reconcile_cold(d, n(), pending);
    }
}

/// The end of a vCPU's run (back to the host): its registers leave the CPU
/// and it stays an owner only if it is debugging ([`DebugRegs::after_run`]).
#[inline(always)]
pub fn end_run(d: &mut DebugRegs, n: impl FnOnce() -> Counts, pending: &mut GuestPending) {
    if d.live {
        end_run_cold(d, n(), pending);
    }
}

#[cold]
#[inline(never)]
fn end_run_cold(d: &mut DebugRegs, n: Counts, pending: &mut GuestPending) {
    unload(d, n, pending);
    d.after_run();
}

/// A CPU's bring-up: its OS lock unlocked (it resets locked, which would
/// disable every guest's breakpoints), MDSCR_EL1 and every breakpoint and
/// watchpoint control zero (their reset values are UNKNOWN).
pub fn cpu_init(n: Counts, pending: &mut GuestPending) {
    pending.add(OslarEl1::write(0));
    pending.add(MdscrEl1::write(0));
    for (kind, i) in each_point(n) {
        if matches!(kind, DbgKind::Bcr | DbgKind::Wcr) {
            pending.add(DbgReg::new(kind, i).write(0));
        }
    }
}

/// This CPU's breakpoint and watchpoint counts.
#[cfg(target_arch = "aarch64")]
#[must_use]
pub fn counts() -> Counts {
    Counts::from_dfr0(crate::arch::sysreg::read_id(5, 0))
}

/// A guest vCPU's trapped debug-register access: emulated on its copy, then
/// its registers go into the CPU if it now wants them there. The value read
/// (0 for a write), or `None` for UNDEFINED.
#[cfg(target_arch = "aarch64")]
pub fn trap(
    ctx: &mut crate::vcpu::ctx::VcpuCtx,
    reg: DebugReg,
    read: bool,
    value: u64,
    pending: &mut GuestPending,
) -> Option<u64> {
    let n = counts();
    let d = &mut ctx.debug;
    match emulate(d, reg, read, value, n) {
        Outcome::Done(v) => {
            reconcile(d, || n, pending);
            Some(v)
        }
        Outcome::Undefined => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Counts = Counts { brps: 6, wrps: 4 };

    fn enc(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysRegEnc {
        SysRegEnc::new(op0, op1, crn, crm, op2)
    }

    #[test]
    fn counts_from_id_aa64dfr0() {
        // BRPs [15:12] = 5, WRPs [23:20] = 3: 6 and 4 (QEMU max, A72).
        assert_eq!(Counts::from_dfr0(0x0030_5000), N);
        assert_eq!(
            Counts::from_dfr0(0x00f0_f000),
            Counts { brps: 16, wrps: 16 }
        );
    }

    #[test]
    fn classify_names_the_debug_space() {
        assert_eq!(classify(enc(2, 0, 0, 2, 2)), Some(DebugReg::Mdscr));
        assert_eq!(
            classify(enc(2, 0, 0, 5, 4)),
            Some(DebugReg::Point(DbgKind::Bvr, 5))
        );
        assert_eq!(
            classify(enc(2, 0, 0, 15, 5)),
            Some(DebugReg::Point(DbgKind::Bcr, 15))
        );
        assert_eq!(
            classify(enc(2, 0, 0, 3, 6)),
            Some(DebugReg::Point(DbgKind::Wvr, 3))
        );
        assert_eq!(
            classify(enc(2, 0, 0, 0, 7)),
            Some(DebugReg::Point(DbgKind::Wcr, 0))
        );
        assert_eq!(classify(enc(2, 0, 1, 0, 4)), Some(DebugReg::Oslar));
        assert_eq!(classify(enc(2, 0, 1, 1, 4)), Some(DebugReg::Oslsr));
        // OSDLR_EL1, DBGPRCR_EL1, MDRAR_EL1, MDCCSR_EL0: RAZ/WI.
        for e in [
            enc(2, 0, 1, 3, 4),
            enc(2, 0, 1, 4, 4),
            enc(2, 0, 1, 0, 0),
            enc(2, 3, 0, 1, 0),
        ] {
            assert_eq!(classify(e), Some(DebugReg::RazWi));
        }
        // PMCR_EL0 is not the debug space.
        assert_eq!(classify(enc(3, 3, 9, 12, 0)), None);
    }

    #[test]
    fn a_first_access_makes_an_owner_and_values_are_masked() {
        let mut d = DebugRegs::new();
        assert!(!d.wants_cpu());
        // A read is enough (a debugger reading the registers first).
        assert_eq!(
            emulate(&mut d, DebugReg::Point(DbgKind::Bcr, 0), true, 0, N),
            Outcome::Done(0)
        );
        assert!(d.owner && d.wants_cpu());
        // Reserved bits of a control register and BVR[1:0] read as zero.
        emulate(&mut d, DebugReg::Point(DbgKind::Bcr, 5), false, u64::MAX, N);
        assert_eq!(d.bcr[5], BCR_WRITABLE);
        emulate(
            &mut d,
            DebugReg::Point(DbgKind::Bvr, 1),
            false,
            0x4000_1237,
            N,
        );
        assert_eq!(d.bvr[1], 0x4000_1234);
        emulate(&mut d, DebugReg::Point(DbgKind::Wcr, 3), false, u64::MAX, N);
        assert_eq!(d.wcr[3], WCR_WRITABLE);
        emulate(&mut d, DebugReg::Mdscr, false, u64::MAX, N);
        assert_eq!(d.mdscr, MDSCR_WRITABLE);
    }

    #[test]
    fn a_missing_breakpoint_or_watchpoint_is_undefined() {
        let mut d = DebugRegs::new();
        for (kind, i) in [
            (DbgKind::Bvr, 6),
            (DbgKind::Bcr, 15),
            (DbgKind::Wvr, 4),
            (DbgKind::Wcr, 9),
        ] {
            for read in [true, false] {
                assert_eq!(
                    emulate(&mut d, DebugReg::Point(kind, i), read, 1, N),
                    Outcome::Undefined
                );
            }
        }
        // Nothing was written, and nothing made it an owner.
        assert_eq!(d, DebugRegs::new());
        // 16 of each: n = 15 exists.
        let all = Counts { brps: 16, wrps: 16 };
        assert_eq!(
            emulate(&mut d, DebugReg::Point(DbgKind::Wcr, 15), false, 1, all),
            Outcome::Done(0)
        );
    }

    #[test]
    fn the_os_lock_keeps_the_registers_out_of_the_cpu() {
        let mut d = DebugRegs::new();
        emulate(&mut d, DebugReg::Mdscr, false, MDSCR_MDE | MDSCR_KDE, N);
        assert!(d.wants_cpu());
        assert_eq!(
            emulate(&mut d, DebugReg::Oslsr, true, 0, N),
            Outcome::Done(OSLSR_OSLM)
        );
        emulate(&mut d, DebugReg::Oslar, false, 1, N);
        assert!(!d.wants_cpu());
        assert_eq!(
            emulate(&mut d, DebugReg::Oslsr, true, 0, N),
            Outcome::Done(OSLSR_OSLM | OSLSR_OSLK)
        );
        emulate(&mut d, DebugReg::Oslar, false, 0, N);
        assert!(d.wants_cpu());
        // OSLAR_EL1 is write-only, OSLSR_EL1 read-only.
        assert_eq!(
            emulate(&mut d, DebugReg::Oslar, true, 0, N),
            Outcome::Undefined
        );
        assert_eq!(
            emulate(&mut d, DebugReg::Oslsr, false, 0, N),
            Outcome::Undefined
        );
        assert_eq!(
            emulate(&mut d, DebugReg::RazWi, true, 0, N),
            Outcome::Done(0)
        );
    }

    #[test]
    fn ownership_ends_with_a_run_that_enables_nothing() {
        let mut d = DebugRegs::new();
        emulate(&mut d, DebugReg::Point(DbgKind::Bcr, 0), false, 0, N);
        d.after_run();
        assert!(!d.wants_cpu(), "Linux's boot-time reset of the registers");
        for bit in [MDSCR_MDE, MDSCR_KDE, MDSCR_SS] {
            d.mdscr = bit;
            d.after_run();
            assert!(d.wants_cpu(), "{bit:#x}");
        }
    }

    #[test]
    fn stepping_past_clears_pstate_ss_only_for_a_live_vcpu() {
        let mut d = DebugRegs::new();
        let mut p = PSTATE_SS | 0x3c5;
        stepped_past(&d, &mut p, 4);
        assert_eq!(p, PSTATE_SS | 0x3c5, "not live: untouched");
        d.live = true;
        stepped_past(&d, &mut p, 0);
        assert_eq!(
            p,
            PSTATE_SS | 0x3c5,
            "not stepped past (retried): untouched"
        );
        stepped_past(&d, &mut p, 4);
        assert_eq!(p, 0x3c5);
    }

    /// The register effects, on the recording backend: a load writes every
    /// implemented register and clears only MDCR_EL2.TDA; an unload reads
    /// them back, zeroes MDSCR_EL1 and every control, and sets TDA.
    #[test]
    fn load_and_unload_write_every_register() {
        use barriers::{Insn, SysReg};
        let mut d = DebugRegs::new();
        for i in 0..6 {
            d.bvr[i] = 0x1000 * (i as u64 + 1);
            d.bcr[i] = BCR_WRITABLE;
        }
        d.mdscr = MDSCR_MDE;
        let mut p = GuestPending::new();
        barriers::trace::reset();
        barriers::trace::set_reg(SysReg::MdcrEl2, 0x0e60);
        load(&mut d, N, &mut p);
        let t = barriers::trace::take();
        let writes = |t: &[Insn], f: &dyn Fn(SysReg) -> bool| {
            t.iter()
                .filter(|i| matches!(i, Insn::Msr { reg, .. } if f(*reg)))
                .count()
        };
        assert_eq!(
            writes(&t, &|r| matches!(r, SysReg::DbgBvr(_) | SysReg::DbgBcr(_))),
            12
        );
        assert_eq!(
            writes(&t, &|r| matches!(r, SysReg::DbgWvr(_) | SysReg::DbgWcr(_))),
            8
        );
        assert!(t.contains(&Insn::Msr {
            reg: SysReg::MdcrEl2,
            value: 0x0c60,
            changed: MDCR_TDA
        }));
        assert!(d.live);
        unload(&mut d, N, &mut p);
        let t = barriers::trace::take();
        assert_eq!(
            writes(&t, &|r| matches!(r, SysReg::DbgBcr(_) | SysReg::DbgWcr(_))),
            10
        );
        assert!(t.iter().any(|i| matches!(
            i,
            Insn::Msr {
                reg: SysReg::MdscrEl1,
                value: 0,
                ..
            }
        )));
        assert!(t.iter().any(|i| matches!(
            i,
            Insn::Msr {
                reg: SysReg::MdcrEl2,
                value: 0x0e60,
                ..
            }
        )));
        assert_eq!(d.bvr[5], 0x6000, "saved back");
        assert_eq!(d.mdscr, MDSCR_MDE);
        assert!(!d.live);
        p.power_off();
    }
}
