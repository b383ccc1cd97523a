//! Which trapped system-register access (EC 0x18) is which: the dispatch
//! key for the handlers of HCR_EL2.TID3 (ID registers), TVM (writes to the
//! EL1 MMU and fault registers), TSW (data-cache set/way operations) and
//! the GICv3 SGI-generation registers.
//!
//! The ISS itself is decoded by [`crate::arch::esr::decode_sysreg`] (op0, op2,
//! op1, CRn, Rt, CRm, direction; Arm ARM D24.2.40 "ISS encoding for an
//! exception from MSR, MRS, or System instruction execution in AArch64
//! state"). Here only the encodings are named. Pure; host-tested.

use crate::arch::esr::{SysRegAccess, SysRegEnc};
use crate::exit::idregs;
use crate::vcpu::pmu;
use aarch64_cpu::registers::SCTLR_EL1;

/// An EL1 register whose writes HCR_EL2.TVM traps (Arm ARM D24.2.x
/// HCR_EL2.TVM; the FEAT_AIE/S1PIE/TCR2/SCTLR2 additions are not offered to
/// guests, see `idregs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmReg {
    /// SCTLR_EL1 (3, 0, 1, 0, 0): the MMU and cache enables.
    Sctlr,
    /// TTBR0_EL1 (3, 0, 2, 0, 0).
    Ttbr0,
    /// TTBR1_EL1 (3, 0, 2, 0, 1).
    Ttbr1,
    /// TCR_EL1 (3, 0, 2, 0, 2).
    Tcr,
    /// AFSR0_EL1 (3, 0, 5, 1, 0).
    Afsr0,
    /// AFSR1_EL1 (3, 0, 5, 1, 1).
    Afsr1,
    /// ESR_EL1 (3, 0, 5, 2, 0).
    Esr,
    /// FAR_EL1 (3, 0, 6, 0, 0).
    Far,
    /// MAIR_EL1 (3, 0, 10, 2, 0).
    Mair,
    /// AMAIR_EL1 (3, 0, 10, 3, 0).
    Amair,
    /// CONTEXTIDR_EL1 (3, 0, 13, 0, 1).
    Contextidr,
}

/// A data-cache maintenance by set/way, trapped by HCR_EL2.TSW (op0 = 1,
/// op1 = 0, CRn = 7, op2 = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetWayOp {
    /// DC ISW (CRm = 6): invalidate.
    Invalidate,
    /// DC CSW (CRm = 10): clean.
    Clean,
    /// DC CISW (CRm = 14): clean and invalidate.
    CleanInvalidate,
}

/// What a trapped MSR/MRS/SYS instruction accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrappedSysReg {
    /// An ID register of the TID3 space (answer reads with
    /// [`idregs::sanitise`]; writes are UNDEFINED).
    IdReg(SysRegEnc),
    /// A TVM-trapped EL1 register.
    Vm(VmReg),
    /// A DC set/way operation.
    SetWay(SetWayOp),
    /// ICC_SGI1R_EL1 (3, 0, 12, 11, 5): generate a Group 1 SGI.
    IccSgi1r,
    /// ICC_ASGI1R_EL1 (3, 0, 12, 11, 6): generate an SGI for the other
    /// Security state's Group 1.
    IccAsgi1r,
    /// ICC_SGI0R_EL1 (3, 0, 12, 11, 7): generate a Group 0 SGI.
    IccSgi0r,
    /// A PMU register (MDCR_EL2.TPM/TPMCR): a normal VM's vCPU gets it
    /// from the virtual PMU (`vcpu::pmu`).
    Pmu(pmu::GuestReg),
    /// CNTP_TVAL_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0 (3, 3, 14, 2, 0..=2): the
    /// EL1 physical timer, trapped by CNTHCTL_EL2.EL1PCEN = 0.
    PhysTimer,
    /// Anything else: the hypervisor injects an undefined-instruction
    /// exception (IMPLEMENTATION DEFINED registers, PMU, debug, ...).
    Other(SysRegEnc),
}

/// ICC_SGI1R_EL1's encoding: the one trapped write on the IPI hot path,
/// which [`is_sgi1r_write`] tests without the full [`classify`].
pub const ICC_SGI1R: SysRegEnc = SysRegEnc {
    op0: 3,
    op1: 0,
    crn: 12,
    crm: 11,
    op2: 5,
};

/// Whether a trapped access is a write of ICC_SGI1R_EL1 (what
/// [`classify_access`] names [`TrappedSysReg::IccSgi1r`], written).
#[must_use]
pub fn is_sgi1r_write(a: &SysRegAccess) -> bool {
    !a.read && a.enc == ICC_SGI1R
}

/// Names the register or instruction of a trapped access.
#[must_use]
pub fn classify(enc: SysRegEnc) -> TrappedSysReg {
    if idregs::is_tid3(enc) {
        return TrappedSysReg::IdReg(enc);
    }
    if let Some(r) = pmu::decode(enc) {
        return TrappedSysReg::Pmu(r);
    }
    let SysRegEnc {
        op0,
        op1,
        crn,
        crm,
        op2,
    } = enc;
    match (op0, op1, crn, crm, op2) {
        (3, 0, 1, 0, 0) => TrappedSysReg::Vm(VmReg::Sctlr),
        (3, 0, 2, 0, 0) => TrappedSysReg::Vm(VmReg::Ttbr0),
        (3, 0, 2, 0, 1) => TrappedSysReg::Vm(VmReg::Ttbr1),
        (3, 0, 2, 0, 2) => TrappedSysReg::Vm(VmReg::Tcr),
        (3, 0, 5, 1, 0) => TrappedSysReg::Vm(VmReg::Afsr0),
        (3, 0, 5, 1, 1) => TrappedSysReg::Vm(VmReg::Afsr1),
        (3, 0, 5, 2, 0) => TrappedSysReg::Vm(VmReg::Esr),
        (3, 0, 6, 0, 0) => TrappedSysReg::Vm(VmReg::Far),
        (3, 0, 10, 2, 0) => TrappedSysReg::Vm(VmReg::Mair),
        (3, 0, 10, 3, 0) => TrappedSysReg::Vm(VmReg::Amair),
        (3, 0, 13, 0, 1) => TrappedSysReg::Vm(VmReg::Contextidr),
        (1, 0, 7, 6, 2) => TrappedSysReg::SetWay(SetWayOp::Invalidate),
        (1, 0, 7, 10, 2) => TrappedSysReg::SetWay(SetWayOp::Clean),
        (1, 0, 7, 14, 2) => TrappedSysReg::SetWay(SetWayOp::CleanInvalidate),
        (3, 0, 12, 11, 5) => TrappedSysReg::IccSgi1r,
        (3, 0, 12, 11, 6) => TrappedSysReg::IccAsgi1r,
        (3, 0, 12, 11, 7) => TrappedSysReg::IccSgi0r,
        (3, 3, 14, 2, 0..=2) => TrappedSysReg::PhysTimer,
        _ => TrappedSysReg::Other(enc),
    }
}

/// Classifies a decoded access, for handlers that also need Rt and the
/// direction.
#[must_use]
pub fn classify_access(a: &SysRegAccess) -> TrappedSysReg {
    classify(a.enc)
}

/// The value a guest reads from a trapped debug register, or `None` when
/// `enc` is not one.
///
/// Debug registers are the op0 = 2 space (Arm ARM C5.1.2 "op0 == 0b10,
/// Moves to and from debug and trace System registers": MDSCR_EL1,
/// OSLAR_EL1, OSDLR_EL1, DBGBVR<n>_EL1, DBGWCR<n>_EL1, MDCCINT_EL1, ...);
/// MDCR_EL2.TDA/TDOSA/TDRA trap them all. Nothing is virtualised, so they
/// are RAZ/WI rather than UNDEFINED: Linux's `__cpu_setup`
/// (arch/arm64/mm/proc.S) writes MDSCR_EL1 unconditionally with its MMU
/// off, and `debug-monitors.c` clears the OS lock on every CPU, so an
/// injected UNDEF there kills the kernel (issue #9). The one exception is
/// OSLSR_EL1 (2, 0, 1, 1, 4), which reads OSLM = 0b10 ("OS lock
/// implemented", bit 3) with the lock clear, as FEAT_DoubleLock-less
/// Armv8 requires. PMU registers (op0 = 3) stay UNDEFINED.
#[must_use]
pub fn debug_read(enc: SysRegEnc) -> Option<u64> {
    if enc.op0 != 2 {
        return None;
    }
    Some(match (enc.op1, enc.crn, enc.crm, enc.op2) {
        (0, 1, 1, 4) => 1 << 3,
        _ => 0,
    })
}

/// SCTLR_EL1.M: stage-1 MMU enable.
pub const SCTLR_M: u64 = SCTLR_EL1::M::Enable.value;
/// SCTLR_EL1.C: data cache enable.
pub const SCTLR_C: u64 = SCTLR_EL1::C::Cacheable.value;

/// Whether an SCTLR_EL1 value has the MMU and data caches both on: the
/// condition whose change needs a VM-wide clean+invalidate (ARM-RULES.md
/// section 3, KVM's `vcpu_has_cache_enabled`).
#[must_use]
pub const fn caches_on(sctlr: u64) -> bool {
    sctlr & (SCTLR_M | SCTLR_C) == SCTLR_M | SCTLR_C
}

/// What the hypervisor does about a trapped cache-relevant operation of a
/// vCPU (guests without FEAT_S2FWB; ARM-RULES.md section 3, seed 003).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTrap {
    /// Clean and invalidate all of the VM's memory to PoC (then invalidate
    /// the instruction caches).
    pub flush_vm: bool,
    /// The vCPU's HCR_EL2.TVM afterwards.
    pub tvm: bool,
    /// Set TVM again on every other vCPU of the VM too.
    pub rearm_others: bool,
}

/// A trapped SCTLR_EL1 write from `old` to `new` by a vCPU whose TVM is
/// `tvm` (it is, or the write would not trap): KVM's `kvm_toggle_cache`.
/// Any change of "MMU and caches on", in either direction, flushes the
/// VM; once they are on, the vCPU's TVM is dropped (until a set/way
/// operation re-arms it).
#[must_use]
pub const fn sctlr_write(old: u64, new: u64, tvm: bool) -> CacheTrap {
    CacheTrap {
        flush_vm: caches_on(old) != caches_on(new),
        tvm: tvm && !caches_on(new),
        rearm_others: false,
    }
}

/// A trapped data-cache set/way operation (HCR_EL2.TSW) by a vCPU whose
/// TVM is `tvm`: KVM's `kvm_set_way_flush`. Set/way operations cannot be
/// virtualised, so the first one while TVM is clear becomes a VM-wide
/// flush and re-arms TVM, so that the guest's next MMU/cache toggle is
/// trapped and flushes again. TVM is re-armed on every vCPU of the VM, not
/// only this one (KVM does only this one): the toggle that follows may come
/// from any vCPU, and the stale lines it could expose are anywhere in the
/// VM's memory. With TVM already set the next toggle is trapped anyway:
/// nothing to do.
#[must_use]
pub const fn set_way(tvm: bool) -> CacheTrap {
    CacheTrap {
        flush_vm: !tvm,
        tvm: true,
        rearm_others: !tvm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::esr::{decode_sysreg, Esr};
    use crate::vcpu::traps::TvmRearm;

    /// ESR_EL2 for a trapped access with this encoding, Rt and direction.
    fn esr(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> Esr {
        let iss = (op0 << 20)
            | (op2 << 17)
            | (op1 << 14)
            | (crn << 10)
            | (rt << 5)
            | (crm << 1)
            | u64::from(read);
        Esr((0x18 << 26) | (1 << 25) | iss)
    }

    fn c(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> TrappedSysReg {
        classify_access(&decode_sysreg(esr(op0, op1, crn, crm, op2, 0, false)))
    }

    #[test]
    fn id_registers() {
        // MRS x3, ID_AA64PFR0_EL1.
        let a = decode_sysreg(esr(3, 0, 0, 4, 0, 3, true));
        assert!(a.read);
        assert_eq!(a.reg, 3);
        assert_eq!(
            classify_access(&a),
            TrappedSysReg::IdReg(SysRegEnc::new(3, 0, 0, 4, 0))
        );
        // ID_PFR0_EL1 (AArch32) and an unallocated slot are ID registers too.
        assert!(matches!(c(3, 0, 0, 1, 0), TrappedSysReg::IdReg(_)));
        assert!(matches!(c(3, 0, 0, 7, 7), TrappedSysReg::IdReg(_)));
        // MIDR_EL1 is not (VPIDR_EL2 virtualises it).
        assert!(matches!(c(3, 0, 0, 0, 0), TrappedSysReg::Other(_)));
    }

    /// The IPI fast test agrees with the full classification for every
    /// encoding near ICC_SGI1R_EL1, reads and writes.
    #[test]
    fn sgi1r_fast_test_matches_classify() {
        for op0 in 2..=3 {
            for op1 in 0..=1 {
                for crn in 11..=12 {
                    for crm in 10..=12 {
                        for op2 in 4..=6 {
                            for read in [false, true] {
                                let a = decode_sysreg(esr(op0, op1, crn, crm, op2, 1, read));
                                let full =
                                    !a.read && classify_access(&a) == TrappedSysReg::IccSgi1r;
                                assert_eq!(is_sgi1r_write(&a), full, "{a:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tvm_registers() {
        let cases = [
            ((3, 0, 1, 0, 0), VmReg::Sctlr),
            ((3, 0, 2, 0, 0), VmReg::Ttbr0),
            ((3, 0, 2, 0, 1), VmReg::Ttbr1),
            ((3, 0, 2, 0, 2), VmReg::Tcr),
            ((3, 0, 5, 1, 0), VmReg::Afsr0),
            ((3, 0, 5, 1, 1), VmReg::Afsr1),
            ((3, 0, 5, 2, 0), VmReg::Esr),
            ((3, 0, 6, 0, 0), VmReg::Far),
            ((3, 0, 10, 2, 0), VmReg::Mair),
            ((3, 0, 10, 3, 0), VmReg::Amair),
            ((3, 0, 13, 0, 1), VmReg::Contextidr),
        ];
        for ((op0, op1, crn, crm, op2), r) in cases {
            assert_eq!(c(op0, op1, crn, crm, op2), TrappedSysReg::Vm(r), "{r:?}");
        }
        // MSR SCTLR_EL1, x2: Rt and the direction come through.
        let a = decode_sysreg(esr(3, 0, 1, 0, 0, 2, false));
        assert_eq!(a.reg, 2);
        assert!(!a.read);
        // SCTLR_EL12 style neighbours are not SCTLR_EL1: ACTLR_EL1 (3,0,1,0,1).
        assert!(matches!(c(3, 0, 1, 0, 1), TrappedSysReg::Other(_)));
    }

    #[test]
    fn set_way_and_sgi() {
        assert_eq!(
            c(1, 0, 7, 6, 2),
            TrappedSysReg::SetWay(SetWayOp::Invalidate)
        );
        assert_eq!(c(1, 0, 7, 10, 2), TrappedSysReg::SetWay(SetWayOp::Clean));
        assert_eq!(
            c(1, 0, 7, 14, 2),
            TrappedSysReg::SetWay(SetWayOp::CleanInvalidate)
        );
        // DC CIVAC (1, 3, 7, 14, 1) is by VA, not set/way.
        assert!(matches!(c(1, 3, 7, 14, 1), TrappedSysReg::Other(_)));
        assert_eq!(c(3, 0, 12, 11, 5), TrappedSysReg::IccSgi1r);
        assert_eq!(c(3, 0, 12, 11, 6), TrappedSysReg::IccAsgi1r);
        assert_eq!(c(3, 0, 12, 11, 7), TrappedSysReg::IccSgi0r);
    }

    #[test]
    fn impdef_is_other_and_pmu_is_the_pmus() {
        // S3_0_C15_C0_0 (IMPLEMENTATION DEFINED); PMCR_EL0 (3, 3, 9, 12, 0);
        // the timer's CNTV_CTL_EL0 (3, 3, 14, 3, 1) beside the PMU's CRn.
        assert!(matches!(c(3, 0, 15, 0, 0), TrappedSysReg::Other(_)));
        assert_eq!(c(3, 3, 9, 12, 0), TrappedSysReg::Pmu(pmu::GuestReg::Pmcr));
        assert!(matches!(c(3, 3, 14, 3, 1), TrappedSysReg::Other(_)));
    }

    #[test]
    fn cache_state() {
        assert_eq!((SCTLR_M, SCTLR_C), (1 << 0, 1 << 2));
        assert!(!caches_on(0x30d0_0800));
        assert!(!caches_on(0x30d0_0801));
        assert!(!caches_on(0x30d0_0804));
        assert!(caches_on(0x30d0_0805));
        assert!(caches_on(0x30d0_1805));
    }

    /// One VM's vCPUs as the trap handlers see them: SCTLR_EL1, TVM, and
    /// the VM-wide flushes done, driven through the pure decisions the way
    /// `vm::sysreg_trap` and `vm::cache_traps_before_entry` drive them.
    struct Vm {
        sctlr: [u64; 2],
        tvm: [bool; 2],
        rearm: TvmRearm,
        flushes: u32,
    }

    const ON: u64 = 0x30d0_1805;
    const OFF: u64 = 0x30d0_0800;

    impl Vm {
        fn new() -> Self {
            // Reset without FWB: caches off, TVM (and TSW) set.
            Self {
                sctlr: [OFF; 2],
                tvm: [true; 2],
                rearm: TvmRearm::new(),
                flushes: 0,
            }
        }
        /// vCPU `v` enters the guest.
        fn enter(&mut self, v: usize) {
            if self.rearm.take(v) {
                self.tvm[v] = true;
            }
        }
        fn apply(&mut self, v: usize, t: CacheTrap) {
            self.flushes += u32::from(t.flush_vm);
            self.tvm[v] = t.tvm;
            if t.rearm_others {
                self.rearm.request(v);
            }
        }
        /// vCPU `v` writes SCTLR_EL1; returns whether the hypervisor saw it.
        fn write_sctlr(&mut self, v: usize, new: u64) -> bool {
            self.enter(v);
            let seen = self.tvm[v];
            if seen {
                let t = sctlr_write(self.sctlr[v], new, self.tvm[v]);
                self.apply(v, t);
            }
            self.sctlr[v] = new;
            seen
        }
        /// vCPU `v` does DC CISW (always trapped: TSW).
        fn set_way(&mut self, v: usize) {
            self.enter(v);
            let t = set_way(self.tvm[v]);
            self.apply(v, t);
        }
    }

    #[test]
    fn toggle_flushes_both_ways_and_drops_tvm_once_on() {
        assert_eq!(
            sctlr_write(OFF, ON, true),
            CacheTrap {
                flush_vm: true,
                tvm: false,
                rearm_others: false
            }
        );
        // Caches off again (TVM set by a set/way op): flush, keep trapping.
        assert_eq!(
            sctlr_write(ON, OFF, true),
            CacheTrap {
                flush_vm: true,
                tvm: true,
                rearm_others: false
            }
        );
        // M alone, or C alone, is not "caches on": no flush, TVM stays.
        assert_eq!(
            sctlr_write(OFF, OFF | SCTLR_M, true),
            CacheTrap {
                flush_vm: false,
                tvm: true,
                rearm_others: false
            }
        );
        assert!(sctlr_write(OFF | SCTLR_C, ON, true).flush_vm);
        // Unrelated bits (here I, bit 12) with caches on: no flush.
        assert!(!sctlr_write(ON, ON & !(1 << 12), true).flush_vm);
    }

    #[test]
    fn set_way_flushes_and_rearms_only_when_tvm_is_clear() {
        assert_eq!(
            set_way(false),
            CacheTrap {
                flush_vm: true,
                tvm: true,
                rearm_others: true
            }
        );
        assert_eq!(
            set_way(true),
            CacheTrap {
                flush_vm: false,
                tvm: true,
                rearm_others: false
            }
        );
    }

    #[test]
    fn rearm_requests_every_other_vcpu_once() {
        let r = TvmRearm::new();
        assert!(!r.take(0));
        assert_eq!(r.request(1), 0xfd);
        assert!(!r.take(1));
        assert!(r.take(0));
        assert!(!r.take(0));
        assert!(r.take(7));
        // Out of range: nothing to take.
        assert!(!r.take(8));
    }

    /// Seed 003 with a set/way operation: vCPU 0's DC CISW re-arms TVM on
    /// vCPU 1 too, so vCPU 1's cache disable and re-enable that follow are
    /// trapped and each flushes the VM.
    #[test]
    fn set_way_on_vcpu0_makes_vcpu1_cache_enable_seen() {
        let mut vm = Vm::new();
        assert!(vm.write_sctlr(0, ON));
        assert!(vm.write_sctlr(1, ON));
        assert_eq!(vm.flushes, 2);
        assert_eq!(vm.tvm, [false, false]);
        // Without a set/way op, vCPU 1 toggles unseen (TVM dropped).
        vm.set_way(0);
        assert_eq!(vm.flushes, 3);
        assert_eq!(vm.tvm, [true, false]);
        // A second set/way op (any vCPU) while TVM is set: no new flush.
        vm.set_way(0);
        assert_eq!(vm.flushes, 3);
        // vCPU 1 picks the re-arm up at its next entry.
        assert!(vm.write_sctlr(1, OFF));
        assert_eq!(vm.flushes, 4);
        assert!(vm.write_sctlr(1, ON));
        assert_eq!(vm.flushes, 5);
        assert_eq!(vm.tvm, [true, false]);
        // vCPU 0 is still armed: its cache-off is seen as well.
        assert!(vm.write_sctlr(0, OFF));
        assert_eq!(vm.flushes, 6);
    }

    #[test]
    fn without_rearm_vcpu1_toggle_would_go_unseen() {
        // The bug this guards against: vCPU 0's set/way op arming only
        // vCPU 0 (as KVM does) leaves vCPU 1's toggle untrapped.
        let mut vm = Vm::new();
        vm.write_sctlr(0, ON);
        vm.write_sctlr(1, ON);
        let t = set_way(vm.tvm[0]);
        vm.flushes += u32::from(t.flush_vm);
        vm.tvm[0] = t.tvm;
        assert!(!vm.write_sctlr(1, OFF));
        assert!(!vm.write_sctlr(1, ON));
        assert_eq!(vm.flushes, 3);
    }

    #[test]
    fn debug_registers_are_raz_wi() {
        let enc = |op0, op1, crn, crm, op2| SysRegEnc {
            op0,
            op1,
            crn,
            crm,
            op2,
        };
        // MDSCR_EL1 (2, 0, 0, 2, 2), OSLAR_EL1 (2, 0, 1, 0, 4), DBGBCR0_EL1.
        assert_eq!(debug_read(enc(2, 0, 0, 2, 2)), Some(0));
        assert_eq!(debug_read(enc(2, 0, 1, 0, 4)), Some(0));
        assert_eq!(debug_read(enc(2, 0, 0, 0, 5)), Some(0));
        // OSLSR_EL1: OSLM = 0b10, unlocked.
        assert_eq!(debug_read(enc(2, 0, 1, 1, 4)), Some(8));
        // PMCR_EL0 (3, 3, 9, 12, 0) is not a debug register.
        assert_eq!(debug_read(enc(3, 3, 9, 12, 0)), None);
    }
}
