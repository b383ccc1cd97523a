//! Pending tokens, synchronisation proofs and their discharge.
//!
//! A typed system-register write returns a [`Pending<K>`]. `K` is a *consumer class*: it names
//! what depends on the fields that changed, not the register (ARM-RULES.md section 0, "key each
//! token to its consumer"). There are two ways to discharge a token:
//!
//! * [`isb`] consumes tokens and returns [`Synced<K>`] proofs. Consumers that run at EL2 before
//!   the next CSE take `&Synced<K>` for the class they read, so a consumer without the ISB does not
//!   compile;
//! * [`enter_guest`] consumes tokens whose class implements [`EretOk`]: the world switch's ERET is
//!   a context synchronisation event (with SCTLR_EL2.EOS = 1, checked by [`check_eos`]), and only
//!   the guest depends on those fields (D8.1.5 I_SFZVV). Classes whose fields the ERET itself reads
//!   ([`EretInputs`], D24.1.2.2 note) or that EL2 depends on at once ([`El2Translation`]) are not
//!   `EretOk` and must go through [`isb`] first.
//!
//! Proofs are zero-sized and not `Clone`. Outside [`isb`] they can only be minted by the `unsafe`
//! [`Synced::assume`] (for example after an exception entry, which is a CSE). The types cannot see
//! a proof going stale after a *later* write of the same class; the trace checker
//! ([`crate::check`], invariants 1, 6, 7, 8) catches that in tests.

use crate::insn::{emit, SysReg};
use aarch64_cpu::registers::SCTLR_EL2;
use core::marker::PhantomData;

mod sealed {
    pub trait Class {}
    pub trait Tokens: Sized {
        type Proof;
        fn discharge(self) -> Self::Proof;
    }
}

/// A consumer class: what depends on a changed field. Each class names the Arm ARM rule it models.
pub trait Class: sealed::Class {
    /// Short name.
    const NAME: &'static str;
    /// The rule this class models.
    const RULE: &'static str;
}

/// `Synced<Self>` proves that class `C` is synchronised.
pub trait Includes<C: Class>: Class {}

/// Tokens of this class may be carried into the ERET that enters a guest without an ISB.
pub trait EretOk: Class {}

macro_rules! class {
    ($(#[$m:meta])* $name:ident, $rule:literal, eret_ok = $ok:tt) => {
        $(#[$m])*
        ///
        #[doc = concat!("Rule: ", $rule)]
        #[derive(Debug)]
        pub enum $name {}
        impl sealed::Class for $name {}
        impl Class for $name {
            const NAME: &'static str = stringify!($name);
            const RULE: &'static str = $rule;
        }
        impl Includes<$name> for $name {}
        class!(@ok $name $ok);
    };
    (@ok $name:ident true) => { impl EretOk for $name {} };
    (@ok $name:ident false) => {};
}

class!(
    /// Only the guest depends on the changed fields (EL1&0 context, trap bits, virtual
    /// interrupts, guest IDs, VBAR_EL2 for exits). The entry ERET synchronises them.
    GuestOnly,
    "D8.1.5 I_SFZVV; D24.1.2.2 (ERET is a CSE when SCTLR_EL2.EOS=1)",
    eret_ok = true
);
class!(
    /// HCR_EL2.E2H/TGE changed: `*_EL1`-named accesses at EL2 and the layout of TCR_EL2/CPTR_EL2
    /// depend on it (ARM-RULES.md invariant 6).
    El1Names,
    "D24.1.2.2 Table D24-1 (indirect read); E2H redirection: X_EL2 and X_EL1 accesses are unordered without a CSE",
    eret_ok = true
);
class!(
    /// VTTBR_EL2/VTCR_EL2 or HCR_EL2.TGE/VM changed: TLBI by VMID and AT use the new value
    /// (invariant 7).
    VmidCtx,
    "D24.1.2.2; ARM-RULES.md 2.2 step 3 (VTTBR, ISB, TLBI: KVM enter_vmid_context)",
    eret_ok = true
);
class!(
    /// CPTR_EL2 FP/SIMD/SVE traps were cleared: EL2 may use FP only after a CSE (invariant 8).
    El2Fp,
    "D24.1.2.2; Linux 257d0aa8e250 (ISB after clearing CPTR traps before EL2 FP use)",
    eret_ok = true
);
class!(
    /// ICC_SRE_EL2 changed: the following ICC_*/ICH_* accesses depend on SRE.
    GicSre,
    "D24.1.2.2; GICv3 ICC_SRE_EL2.SRE governs system-register access (KVM: ISB after each SRE write)",
    eret_ok = true
);
class!(
    /// SCTLR_EL2/TCR_EL2/TTBR0_EL2/MAIR_EL2 changed: every EL2 memory access depends on it.
    El2Translation,
    "D24.1.2.2; ARM-RULES.md section 1 (HF order: TTBR0/MAIR/TCR, DSB, ISB, SCTLR, ISB)",
    eret_ok = false
);
class!(
    /// HCR_EL2.RW/E2H/TGE/NV/NV1 changed: the ERET reads them before its own synchronisation
    /// point, so an explicit ISB must precede it (invariant 4).
    EretInputs,
    "D24.1.2.2 (an ERET reads current-context registers before its synchronisation point)",
    eret_ok = false
);
class!(
    /// Any HCR_EL2 change (may include E2H, TGE, RW, NV*, VM, routing): everything above.
    HcrAny,
    "D24.1.2.2; ARM-RULES.md section 1, HCR_EL2 rows",
    eret_ok = false
);
class!(
    /// Everything: what a context synchronisation event (ISB, exception entry) proves.
    Cse,
    "D24.1.2.2 (context synchronisation events)",
    eret_ok = false
);

macro_rules! includes {
    ($k:ident: $($c:ident),*) => { $(impl Includes<$c> for $k {})* };
}
includes!(HcrAny: GuestOnly, El1Names, VmidCtx, EretInputs, El2Translation);
includes!(Cse: GuestOnly, El1Names, VmidCtx, El2Fp, GicSre, El2Translation, EretInputs, HcrAny);

/// A write whose consumers have not been synchronised yet. Discharge it with [`isb`] or (for
/// [`EretOk`] classes) [`enter_guest`]; dropping it is a bug (debug panic on the host).
#[must_use = "a pending write must be discharged by isb() or enter_guest()"]
pub struct Pending<K: Class> {
    reg: SysReg,
    changed: u64,
    _k: PhantomData<K>,
}

impl<K: Class> core::fmt::Debug for Pending<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Pending<{}>({:?}, changed {:#x})",
            K::NAME,
            self.reg,
            self.changed
        )
    }
}

impl<K: Class> Pending<K> {
    pub(crate) fn new(reg: SysReg, changed: u64) -> Self {
        Pending {
            reg,
            changed,
            _k: PhantomData,
        }
    }

    /// The register written.
    pub fn reg(&self) -> SysReg {
        self.reg
    }

    /// The bits that changed (from the previous value; exact on the host, and on the target for
    /// writers that read the old value, otherwise all bits).
    pub fn changed(&self) -> u64 {
        self.changed
    }

    /// Widens the class to one that includes it (e.g. a [`GuestOnly`] token into a set that is
    /// discharged by one ISB together with an [`HcrAny`] token).
    pub fn widen<W: Includes<K>>(self) -> Pending<W> {
        let p = Pending {
            reg: self.reg,
            changed: self.changed,
            _k: PhantomData,
        };
        core::mem::forget(self);
        p
    }

    fn consume(self) {
        core::mem::forget(self);
    }
}

impl<K: Class> Drop for Pending<K> {
    fn drop(&mut self) {
        #[cfg(not(all(barriers_hw, not(test))))]
        if !std::thread::panicking() {
            debug_assert!(
                false,
                "Pending<{}> for {:?} dropped without isb() or enter_guest()",
                K::NAME,
                self.reg
            );
        }
    }
}

/// Proof that class `K` has been synchronised since its last write. Zero-sized, not `Clone`.
#[derive(Debug)]
pub struct Synced<K: Class> {
    _k: PhantomData<K>,
}

impl<K: Class> Synced<K> {
    const fn new() -> Self {
        Synced { _k: PhantomData }
    }

    /// Mints a proof without an ISB.
    ///
    /// # Safety
    ///
    /// A context synchronisation event (ISB, or exception entry with SCTLR_EL2.EIS = 1) must have
    /// happened after the last write of any field of class `K`, and no write of such a field may
    /// happen while the proof is used. Typical use: `Synced::<Cse>::assume()` at the top of the
    /// exception vector's Rust handler, before any typed write.
    pub const unsafe fn assume() -> Self {
        Self::new()
    }
}

/// A set of pending tokens: a single [`Pending`], `()`, a tuple of up to eight sets, an array, or a
/// [`GuestPending`] accumulator.
pub trait Tokens: sealed::Tokens {}

/// A set of tokens the guest-entry ERET may discharge (every class [`EretOk`]).
pub trait EretTokens: Tokens {}

impl<K: Class> sealed::Tokens for Pending<K> {
    type Proof = Synced<K>;
    fn discharge(self) -> Synced<K> {
        self.consume();
        Synced::new()
    }
}
impl<K: Class> Tokens for Pending<K> {}
impl<K: EretOk> EretTokens for Pending<K> {}

impl sealed::Tokens for () {
    type Proof = ();
    fn discharge(self) {}
}
impl Tokens for () {}
impl EretTokens for () {}

impl<T: Tokens, const N: usize> sealed::Tokens for [T; N] {
    type Proof = [T::Proof; N];
    fn discharge(self) -> Self::Proof {
        self.map(sealed::Tokens::discharge)
    }
}
impl<T: Tokens, const N: usize> Tokens for [T; N] {}
impl<T: EretTokens, const N: usize> EretTokens for [T; N] {}

macro_rules! tuple_tokens {
    ($($t:ident),+) => {
        impl<$($t: Tokens),+> sealed::Tokens for ($($t,)+) {
            type Proof = ($($t::Proof,)+);
            #[allow(non_snake_case, reason = "type parameters reused as bindings")]
            fn discharge(self) -> Self::Proof {
                let ($($t,)+) = self;
                ($($t.discharge(),)+)
            }
        }
        impl<$($t: Tokens),+> Tokens for ($($t,)+) {}
        impl<$($t: EretTokens),+> EretTokens for ($($t,)+) {}
    };
}
tuple_tokens!(A);
tuple_tokens!(A, B);
tuple_tokens!(A, B, C);
tuple_tokens!(A, B, C, D);
tuple_tokens!(A, B, C, D, E);
tuple_tokens!(A, B, C, D, E, F);
tuple_tokens!(A, B, C, D, E, F, G);
tuple_tokens!(A, B, C, D, E, F, G, H);

/// Accumulates [`EretOk`] tokens written over several functions (e.g. the vCPU context restore)
/// so they can be handed to [`enter_guest`] as one set.
#[must_use = "accumulated guest-only writes must be discharged by enter_guest()"]
#[derive(Debug, Default)]
pub struct GuestPending {
    count: u32,
}

impl GuestPending {
    /// An empty set.
    pub const fn new() -> Self {
        GuestPending { count: 0 }
    }

    /// Adds a token whose class the entry ERET may discharge.
    pub fn add<K: EretOk>(&mut self, token: Pending<K>) {
        token.consume();
        self.count += 1;
    }

    /// Number of tokens accumulated.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no token was accumulated.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl sealed::Tokens for GuestPending {
    type Proof = ();
    fn discharge(self) {}
}
impl Tokens for GuestPending {}
impl EretTokens for GuestPending {}

/// `ISB`: a context synchronisation event (D24.1.2.2). Consumes `tokens` and returns one proof per
/// token. Emit it only when an in-context consumer follows (invariant 2: an ISB with no pending
/// in-context token is a defect, see [`crate::check`]).
pub fn isb<T: Tokens>(tokens: T) -> T::Proof {
    emit::isb();
    sealed::Tokens::discharge(tokens)
}

/// Proof that SCTLR_EL2.EIS = EOS = 1, so exception entry and ERET are context synchronisation
/// events (D24.1.2.2; FEAT_ExS: both RES1 without it). Obtained from [`check_eos`] at boot.
#[derive(Debug, Clone, Copy)]
pub struct EosChecked {
    _p: (),
}

/// SCTLR_EL2.EOS (bit 11) and EIS (bit 22).
pub const SCTLR_EL2_EOS_EIS: u64 =
    (SCTLR_EL2::EOS.mask << SCTLR_EL2::EOS.shift) | (SCTLR_EL2::EIS.mask << SCTLR_EL2::EIS.shift);

/// Reads SCTLR_EL2 and checks EIS = EOS = 1 (ARM-RULES.md invariant 3).
///
/// # Panics
///
/// If either bit is clear: ERET would then not synchronise guest-only writes (hypervisor bug:
/// boot must set them).
pub fn check_eos() -> EosChecked {
    let v = emit::mrs(SysReg::SctlrEl2);
    assert!(
        v & SCTLR_EL2_EOS_EIS == SCTLR_EL2_EOS_EIS,
        "SCTLR_EL2 = {v:#x}: EIS and EOS must be 1 so exception entry and ERET are CSEs"
    );
    EosChecked { _p: () }
}

/// Permission for the world switch to execute the ERET into the guest.
#[must_use = "pass the GuestEntry to the world switch"]
#[derive(Debug)]
pub struct GuestEntry {
    _p: (),
}

/// Enters a guest: consumes guest-only tokens with no ISB, because the world switch's ERET is a
/// CSE (`eos`) and only the guest depends on those fields (I_SFZVV). Records [`crate::Insn::Eret`]
/// on the host; on the target it emits nothing (the ERET is in the world-switch assembly, which
/// must not write system registers through other paths after this call).
pub fn enter_guest<T: EretTokens>(eos: &EosChecked, tokens: T) -> GuestEntry {
    let _ = eos;
    sealed::Tokens::discharge(tokens);
    emit::eret();
    GuestEntry { _p: () }
}

/// Declarations of in-context consumers: call them where EL2 starts to depend on synchronised
/// state. On the host they record a [`crate::Consumer`] marker for the checker; on the target they emit
/// nothing (the proof is the point).
pub mod uses {
    use super::{El1Names, El2Fp, El2Translation, GicSre, Includes, Synced, VmidCtx};
    use crate::insn::{emit, Consumer, SysReg};

    /// EL2 is about to execute FP/SIMD/SVE instructions (needs CPTR_EL2 trap clears synchronised).
    pub fn el2_fp<K: Includes<El2Fp>>(_proof: &Synced<K>) {
        emit::mark(Consumer::El2Fp);
    }

    /// EL2 starts relying on its translation regime (SCTLR/TCR/TTBR0/MAIR_EL2 synchronised).
    pub fn el2_memory<K: Includes<El2Translation>>(_proof: &Synced<K>) {
        emit::mark(Consumer::El2Memory);
    }

    /// EL2 accesses ICC_* registers (ICC_SRE_EL2 synchronised).
    pub fn gic_sysreg<K: Includes<GicSre>>(_proof: &Synced<K>) {
        emit::mark(Consumer::GicSysreg);
    }

    /// A stage-2 [`crate::pt::PtBatch`] for `vmid` follows: VTTBR_EL2 holds `vmid` and is
    /// synchronised (ARM-RULES.md 2.2 step 3). Records a [`Consumer::Stage2Edit`] marker so the
    /// checker compares `vmid` with the last VTTBR_EL2 write (invariant 7).
    pub fn stage2_tables<K: Includes<VmidCtx>>(_proof: &Synced<K>, vmid: u16) {
        emit::mark(Consumer::Stage2Edit { vmid });
    }

    /// EL2 is about to issue TLB maintenance by VMID (VTTBR_EL2 and HCR_EL2.TGE synchronised).
    /// Use before a stage-2 [`crate::pt::PtBatch`] when VTTBR_EL2 was just written.
    pub fn tlbi_by_vmid<K: Includes<VmidCtx>>(_proof: &Synced<K>) {}

    /// `AT S12E1R, va`; `ISB`; `MRS PAR_EL1`: translates a guest VA through both stages of the
    /// current VMID. Needs VTTBR_EL2/TGE (`vmid`) and the EL1 translation registers (`el1`)
    /// synchronised. The ISB is required before reading PAR_EL1 (its consumer).
    pub fn at_s12e1r<V: Includes<VmidCtx>, E: Includes<El1Names>>(
        _vmid: &Synced<V>,
        _el1: &Synced<E>,
        va: u64,
    ) -> u64 {
        emit::mark(Consumer::At);
        #[cfg(all(barriers_hw, not(test)))]
        // SAFETY: AT only writes PAR_EL1; the VMID and EL1 context are synchronised (proofs).
        unsafe {
            core::arch::asm!("at s12e1r, {0}", in(reg) va, options(nostack, preserves_flags));
        }
        #[cfg(not(all(barriers_hw, not(test))))]
        let _ = va;
        // PAR_EL1 is written by the AT: the read needs a CSE first (D24.1.2.2, KVM
        // __translate_far_to_hpfar).
        emit::isb();
        emit::mrs(SysReg::ParEl1)
    }
}
