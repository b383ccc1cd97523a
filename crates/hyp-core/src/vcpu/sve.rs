//! SVE for guest vCPUs, switched lazily with FP/SIMD (`vcpu::fp`): the
//! same ownership, the same trap design.
//!
//! - A guest vCPU starts without SVE state (`VcpuCtx::sve_used` false) and
//!   runs with CPTR_EL2.TZ set. Its first SVE instruction or ZCR_EL1 access
//!   traps (EC 0x19, [`trap`]): its FP/SIMD state becomes its SVE state
//!   (`SveState::from_fp`: each V register in the low 128 bits of its Z
//!   register, every other bit, P register and FFR zero, ZCR_EL1.LEN at its
//!   VM's length),
//!   which is loaded into the CPU, and TZ is cleared with TFP for as long
//!   as it owns the registers.
//! - From then on an FP or SVE trap of the vCPU loads its whole SVE state
//!   (`vcpu::fp::fp_trap`), and the end of its run saves it ([`save`]).
//!   Every save and load runs at EL2 with ZCR_EL2.LEN at the VM's length
//!   (`vcpu::sve_vl`: chosen at VM_CREATE, at most 512 bits), which is also
//!   the cap its vCPUs run under: ZCR_EL2 is set here, before any load,
//!   save or first use, so a vCPU only ever has SVE untrapped (TZ clear)
//!   with its own VM's length in ZCR_EL2. A load overwrites every Z bit the
//!   VM can reach; bits past its length, another VM's, stay out of its
//!   reach, and a VM with a longer length loads all of its own over them
//!   before it can read them (the KVM approach: save and restore at the
//!   VM's maximum length, ZCR_EL2 set to it, `__hyp_sve_restore_guest`).
//!   ZCR_EL2 is written only when the length changes on this CPU
//!   (`ZCR_EL2_LEN`): VMs of one length pay no write, VMs without SVE
//!   never reach this code.
//! - The host never gets SVE: its ID registers hide it and TZ stays set
//!   while it runs, so its SVE and ZCR_EL1 accesses are UNDEFINED, and it
//!   can reach only the low 128 bits of a Z register (its V registers),
//!   which its own FP/SIMD load overwrites (`__fp_load`).
//! - A guest's ZCR_EL1 write asking for more than its VM's length (LEN up
//!   to 15, or RES0 bits) is the hardware's to constrain: the effective
//!   length at EL1 is the largest supported one not above ZCR_EL2.LEN (Arm
//!   ARM C2.x "Effective SVE vector length"), so it never exceeds the VM's
//!   length or the storage; it reads back what it wrote.
//! - SME stays hidden and trapped (CPTR_EL2.TSM, `vcpu::traps`).
//!
//! A vCPU that does not use SVE pays one flag test when its FP/SIMD state
//! is loaded or saved, nothing on other exits.

use crate::arch::sve::{self as hw, SveState};
use crate::arch::{switch, sysreg, world_switch};
use crate::vcpu::ctx::{Cpu, FpOwner, VcpuCtx};
use crate::vcpu::fp;
use crate::vcpu::sve_id;
use crate::vcpu::sve_vl;
use crate::vcpu::traps::CPTR_SVE_ON;
use crate::vcpu::MAX_CPUS;
use barriers::sync::{El2Fp, Synced};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};

/// A guest vCPU's SVE state in its VM (`vm::state::GuestVm::sve`), and the
/// ZCR_EL2.LEN of its VM's vector length (set at the vCPU's boot), reached
/// only through the vCPU's context ([`SvePtr`]), whose lock guards them.
/// The length lives here, not in the context: the context's layout, which
/// every VCPU_RUN touches, stays as it was without SVE.
pub struct SveSlot {
    state: UnsafeCell<SveState>,
    len: UnsafeCell<u8>,
}

// SAFETY: only accessed through the one `SvePtr` of its vCPU's context,
// under that context's lock (`SvePtr::get`).
unsafe impl Sync for SveSlot {}

impl SveSlot {
    /// All zero (a vCPU's state is made whole at its first SVE use).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: UnsafeCell::new(SveState::ZERO),
            len: UnsafeCell::new(0),
        }
    }
}

impl Default for SveSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a vCPU's SVE state is ([`VcpuCtx::sve`]): its VM's slot for it,
/// set when the vCPU boots; null for the host.
#[derive(Debug)]
pub struct SvePtr(*const SveSlot);

// SAFETY: the address of a `SveSlot` in the same VM as the context that
// holds it; see `get`.
unsafe impl Send for SvePtr {}

impl SvePtr {
    /// None (the host).
    pub const NULL: Self = Self(core::ptr::null());

    /// The state in `slot`, which lives (and does not move) as long as the
    /// context that will hold this: both are in the same `GuestVm`, whose
    /// vector length is `vq` quadwords (`VmMeta::sve_vq`), recorded in the
    /// slot. Called with the vCPU's context locked (its boot).
    #[must_use]
    pub fn new(slot: &SveSlot, vq: u8) -> Self {
        // SAFETY: the slot is reached only through its vCPU's context,
        // whose lock the caller holds.
        unsafe { *slot.len.get() = sve_vl::len(vq) as u8 };
        Self(slot)
    }

    /// The state, and its VM's ZCR_EL2.LEN.
    fn get(&mut self) -> Option<(&mut SveState, u8)> {
        // SAFETY: null, or the slot of this context's vCPU in the same VM
        // (`new`), which nothing else reaches: `&mut self` is a borrow of the
        // context, held under its lock.
        unsafe { self.0.as_ref().map(|s| (&mut *s.state.get(), *s.len.get())) }
    }
}

/// The CPU implements SVE, so guests get it.
#[must_use]
pub fn available() -> bool {
    sve_id::implemented(sysreg::id_aa64pfr0_el1())
}

/// The LEN each CPU's ZCR_EL2 holds, [`ZCR_UNKNOWN`] until it is first
/// written; each CPU's entry is used by that CPU only. Kept here, not in
/// `Cpu`, so the state every VCPU_RUN touches is unchanged by SVE. A CPU
/// never loses its ZCR_EL2: the hypervisor never powers a CPU down (the
/// host's CPU_OFF and CPU_SUSPEND are its vCPU's, emulated).
static ZCR_EL2_LEN: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(ZCR_UNKNOWN) }; MAX_CPUS];

/// [`ZCR_EL2_LEN`] before ZCR_EL2 is written (its reset value is UNKNOWN).
const ZCR_UNKNOWN: u8 = 0xff;

/// Clears TFP and TZ and sets ZCR_EL2.LEN to `len` (a VM's length, or 15 to
/// probe the CPU's), synchronised; ZCR_EL2 is written only if this CPU's
/// holds another value ([`ZCR_EL2_LEN`]).
fn enable<'c>(c: &'c mut Cpu<'_>, len: u8) -> &'c Synced<El2Fp> {
    let held = &ZCR_EL2_LEN[c.idx];
    let zcr = (held.load(Ordering::Relaxed) != len).then_some(u64::from(len));
    held.store(len, Ordering::Relaxed);
    // SAFETY: only reached for a guest that took an SVE trap or has SVE
    // state, or at boot on a CPU with SVE (`probe`), which needs FEAT_SVE.
    unsafe { switch::enable_sve(c.sync, &mut c.fp_on, CPTR_SVE_ON, zcr) }
}

/// At a CPU's boot, before it runs any vCPU: its largest vector length
/// (RDVL at EL2 with ZCR_EL2.LEN = 15) lowers the machine's
/// (`sve_vl::note_cpu_vl`). Leaves CPTR_EL2.TFP and TZ clear (the host's
/// first entry sets them: no context owns the registers).
pub fn probe(c: &mut Cpu<'_>) {
    if available() {
        let on = enable(c, 15);
        sve_vl::note_cpu_vl(hw::vl_bytes(on));
    }
}

/// A guest vCPU's SVE instruction or ZCR_EL1 access trapped (CPTR_EL2.TZ):
/// gives it its SVE state (made from its FP/SIMD state the first time).
/// Returns false when the CPU has no SVE (the caller injects UNDEF).
#[cold]
#[inline(never)]
pub fn trap(c: &mut Cpu<'_>, ctx: &mut VcpuCtx) -> bool {
    let Some((_, len)) = ctx.sve.get() else {
        return false;
    };
    if !available() {
        return false;
    }
    if ctx.sve_used {
        // Its state is saved (a vCPU that owns the registers with SVE state
        // runs with TZ clear): load it as an FP trap would.
        fp::fp_trap(c, ctx, FpOwner::Guest);
        return true;
    }
    // Its FP/SIMD state on the CPU (loaded if another context had it),
    // then back into memory, to become the SVE state at this length.
    fp::fp_trap(c, ctx, FpOwner::Guest);
    let on = fp::fp_enable(c);
    world_switch::fp_save(on, &mut ctx.fp);
    let on = enable(c, len);
    let vl = hw::vl_bytes(on);
    let state = SveState::from_fp(&ctx.fp.q, ctx.fp.fpsr, ctx.fp.fpcr, vl);
    if let Some((s, _)) = ctx.sve.get() {
        *s = state;
        ctx.sve_used = true;
        hw::sve_load(on, s);
    }
    true
}

/// Loads a guest vCPU's SVE state (it owns the registers from now on).
/// Out of line, as [`save`]: the paths of vCPUs without SVE state only test
/// the flag.
#[cold]
#[inline(never)]
pub fn load(c: &mut Cpu<'_>, sve: &mut SvePtr) {
    if let Some((s, len)) = sve.get() {
        let on = enable(c, len);
        hw::sve_load(on, s);
    }
}

/// Saves a guest vCPU's SVE state at the end of its run.
#[cold]
#[inline(never)]
pub fn save(c: &mut Cpu<'_>, sve: &mut SvePtr) {
    if let Some((s, len)) = sve.get() {
        let on = enable(c, len);
        hw::sve_save(on, s);
    }
}
