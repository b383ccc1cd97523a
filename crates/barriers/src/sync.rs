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
//!   (any HCR_EL2 change, [`HcrAny`], D24.1.2.2 note) or that EL2 depends on at once ([`El2Translation`]) are not
//!   `EretOk` and must go through [`isb`] first.
//!
//! Proofs are zero-sized, not `Clone`, and belong to the CPU that made them (`!Send + !Sync`:
//! an ISB synchronises only its own PE). Two things mint them: [`isb`], and [`GuestEntry::run`],
//! which returns a [`Synced<Cse>`] for the exception entry that ends a guest run (a CSE because
//! SCTLR_EL2.EIS = 1, which the [`EosChecked`] behind every [`GuestEntry`] proves).
//! Where the hypervisor keeps a proof, a later write of its register consumes it (CPTR_EL2) or
//! needs the owner mutably (VTTBR_EL2, [`crate::vttbr`]); the trace checker
//! ([`crate::check`], invariants 1, 6, 7, 8) catches other staleness in tests.

use crate::insn::{emit, SysReg};
use crate::vttbr::Vttbr;
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
    /// ICC_PMR_EL1/ICC_CTLR_EL1/ICC_IGRPEN1_EL1 changed at EL2: EL2's own acknowledge
    /// (ICC_IAR1_EL1: group enable, priority mask) and end of interrupt (ICC_EOIR1_EL1: EOImode)
    /// depend on them. Interrupts reach EL2 only from a lower EL, so the entry ERET (and the exit
    /// that delivers the interrupt) synchronise them.
    El2GicIf,
    "D24.1.2.2; GICv3 12.1.7 (ICC_CTLR_EL1.EOImode governs the following EOIR write; Linux: isb() after ICC_CTLR/IGRPEN1 writes)",
    eret_ok = true
);
class!(
    /// SCTLR_EL2/TCR_EL2/TTBR0_EL2/MAIR_EL2 changed: every EL2 memory access depends on it.
    El2Translation,
    "D24.1.2.2; ARM-RULES.md section 1 (HF order: TTBR0/MAIR/TCR, DSB, ISB, SCTLR, ISB)",
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
includes!(HcrAny: GuestOnly, El1Names, VmidCtx, El2Translation);
includes!(Cse: GuestOnly, El1Names, VmidCtx, El2Fp, GicSre, El2GicIf, El2Translation, HcrAny);

/// A write whose consumers have not been synchronised yet. Discharge it with [`isb`] or (for
/// [`EretOk`] classes) [`enter_guest`]; dropping it is a bug (debug panic on the host).
#[must_use = "a pending write must be discharged by isb() or enter_guest()"]
pub struct Pending<K: Class> {
    reg: SysReg,
    changed: u64,
    _k: PhantomData<(K, PerCpu)>,
}

/// Marks a type as belonging to the CPU that made it: `*const ()` makes it neither `Send` nor
/// `Sync`, so a token or proof cannot move to (or be shared with) another CPU, whose registers it
/// says nothing about.
type PerCpu = *const ();

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

    fn consume(self) {
        core::mem::forget(self);
    }
}

impl<K: Class> Drop for Pending<K> {
    /// A dropped token is a write whose consumers were never synchronised: a hypervisor bug.
    /// Every build panics, release included (a `Pending` is consumed with `mem::forget` on every
    /// legitimate path, so this costs nothing there).
    fn drop(&mut self) {
        #[cfg(not(all(barriers_hw, not(test))))]
        if std::thread::panicking() {
            return;
        }
        panic!(
            "Pending<{}> for {:?} dropped without isb() or enter_guest()",
            K::NAME,
            self.reg
        );
    }
}

/// Proof that class `K` has been synchronised since its last write. Zero-sized, not `Clone`.
#[derive(Debug)]
pub struct Synced<K: Class> {
    _k: PhantomData<(K, PerCpu)>,
}

impl<K: Class> Synced<K> {
    const fn new() -> Self {
        Synced { _k: PhantomData }
    }
}

/// A non-empty set of pending tokens that [`isb`] can discharge: a single [`Pending`], or a tuple
/// of up to eight such sets. There is no empty set: an ISB with nothing pending does not compile.
pub trait Tokens: sealed::Tokens {}

/// A set of tokens the guest-entry ERET may discharge (every class [`EretOk`]): `()`, a
/// [`Pending`] of such a class, tuples of them, or a [`GuestPending`] accumulator.
pub trait EretTokens: sealed::Tokens {}

impl<K: Class> sealed::Tokens for Pending<K> {
    type Proof = Synced<K>;
    fn discharge(self) -> Synced<K> {
        self.consume();
        Synced::new()
    }
}
impl<K: Class> Tokens for Pending<K> {}
impl<K: EretOk> EretTokens for Pending<K> {}

// `()` (nothing written) may go into an ERET, but it is not a `Tokens` set: `isb(())` would be an
// ISB with nothing pending (seed 000), so it does not type-check.
impl sealed::Tokens for () {
    type Proof = ();
    fn discharge(self) {}
}
impl EretTokens for () {}

macro_rules! tuple_tokens {
    ($($t:ident),+) => {
        impl<$($t: sealed::Tokens),+> sealed::Tokens for ($($t,)+) {
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
    _cpu: PhantomData<PerCpu>,
}

impl GuestPending {
    /// An empty set.
    pub const fn new() -> Self {
        GuestPending {
            count: 0,
            _cpu: PhantomData,
        }
    }

    /// Moves every token of `other` into this set (a run-loop path that returns without entering
    /// a guest hands its writes to the caller's next entry).
    pub fn append(&mut self, other: GuestPending) {
        self.count += other.count;
        core::mem::forget(other);
    }

    /// Discards the set because this CPU powers off: no lower EL will run again, so nothing
    /// depends on the writes.
    pub fn power_off(self) {
        core::mem::forget(self);
    }

    /// Adds a token whose class the entry ERET may discharge.
    pub fn add<K: EretOk>(&mut self, token: Pending<K>) {
        token.consume();
        self.count += 1;
    }
}

impl Drop for GuestPending {
    /// Like a dropped [`Pending`]: guest-only writes that no ERET will synchronise. Panics in
    /// every build when the set is not empty.
    fn drop(&mut self) {
        #[cfg(not(all(barriers_hw, not(test))))]
        if std::thread::panicking() {
            return;
        }
        if self.count != 0 {
            panic!(
                "GuestPending with {} token(s) dropped without enter_guest()",
                self.count
            );
        }
    }
}

impl sealed::Tokens for GuestPending {
    type Proof = ();
    fn discharge(self) {
        core::mem::forget(self);
    }
}
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

/// Permission for the world switch to execute the ERET into the guest. Exists only between
/// [`enter_guest`] and the world switch, which consumes it with [`GuestEntry::run`] around its
/// `ERET`. Dropping it panics in every build: a path that "enters" without an ERET would treat
/// the guest-only writes as synchronised when they are not.
#[must_use = "pass the GuestEntry to the world switch"]
pub struct GuestEntry {
    _cpu: PhantomData<PerCpu>,
}

impl core::fmt::Debug for GuestEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("GuestEntry")
    }
}

impl GuestEntry {
    /// Runs the guest: `world_switch` executes the `ERET` into it and returns once the guest's
    /// run has ended with an exception taken to EL2. Returns what `world_switch` returned and the
    /// proof of that exception entry, a context synchronisation event because SCTLR_EL2.EIS = 1
    /// (checked by the [`EosChecked`] that [`enter_guest`] took): every write made before the run
    /// is synchronised for the exit's handler.
    ///
    /// On the host nothing runs: `enter_guest` has recorded the [`crate::Insn::Eret`], and a test
    /// passes a closure that stands for the guest.
    ///
    /// # Safety
    ///
    /// `world_switch` executes the `ERET` into the guest, writing no system register (other than
    /// the special-purpose ELR_EL2/SPSR_EL2) before it, and returns only from the exception entry
    /// to EL2 that ends the guest's run, writing no system register after that entry.
    #[inline(always)]
    pub unsafe fn run<R>(self, world_switch: impl FnOnce() -> R) -> (R, Synced<Cse>) {
        core::mem::forget(self);
        (world_switch(), Synced::new())
    }
}

impl Drop for GuestEntry {
    fn drop(&mut self) {
        #[cfg(not(all(barriers_hw, not(test))))]
        if std::thread::panicking() {
            return;
        }
        panic!("GuestEntry dropped: enter_guest() is only for a path that executes the ERET");
    }
}

/// Enters a guest: consumes guest-only tokens with no ISB, because the world switch's ERET is a
/// CSE (`eos`) and only the guest depends on those fields (I_SFZVV). `vttbr` records that its
/// loaded value is synchronised from here on (the ERET is the CSE; nothing between this call and
/// the ERET writes it). Records [`crate::Insn::Eret`] on the host; on the target it emits nothing
/// (the ERET is in the world-switch assembly, which consumes the [`GuestEntry`]).
pub fn enter_guest<T: EretTokens>(eos: &EosChecked, vttbr: &mut Vttbr, tokens: T) -> GuestEntry {
    let _ = eos;
    sealed::Tokens::discharge(tokens);
    vttbr.eret();
    emit::eret();
    GuestEntry { _cpu: PhantomData }
}

/// Returns to the guest from the lower-EL vector's fast path (an exit answered without the world
/// switch): consumes guest-only `tokens` (a kick SGI sent at EL2) with no ISB, because the
/// vector's ERET is a CSE (`eos`) and only the guest depends on them. Nothing on that path
/// changes VTTBR_EL2. Records [`crate::Insn::Eret`] on the host; on the target it emits nothing
/// (the ERET is in the vector's assembly).
pub fn fast_return<T: EretTokens>(eos: &EosChecked, tokens: T) {
    let _ = eos;
    sealed::Tokens::discharge(tokens);
    emit::eret();
}

/// Declarations of in-context consumers: call them where EL2 starts to depend on synchronised
/// state. On the host they record a [`crate::Consumer`] marker for the checker; on the target they emit
/// nothing (the proof is the point).
pub mod uses {
    use super::{El2Fp, El2Translation, Includes, Synced};
    use crate::insn::{emit, Consumer};

    /// EL2 is about to execute FP/SIMD/SVE instructions (needs CPTR_EL2 trap clears synchronised).
    pub fn el2_fp<K: Includes<El2Fp>>(_proof: &Synced<K>) {
        emit::mark(Consumer::El2Fp);
    }

    /// EL2 starts relying on its translation regime (SCTLR/TCR/TTBR0/MAIR_EL2 synchronised).
    pub fn el2_memory<K: Includes<El2Translation>>(_proof: &Synced<K>) {
        emit::mark(Consumer::El2Memory);
    }
}
