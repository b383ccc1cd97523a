//! The fast path, run from the lower-EL synchronous vector while a guest
//! runs: exits answered without the full world switch (stateless SMCCC
//! calls, vGIC reads that change no interrupt state, GICv3 SGIs to other
//! vCPUs).

use crate::arch::esr::{self, DataAbort, Esr, ExitReason};
use crate::arch::switch::CpuSync;
use crate::arch::sysreg;
use crate::arch::world_switch::{GuestRegs, HostSave};
use crate::calls::smccc::{self as call, Hypercall};
use crate::exit::effects::read_trap;
use crate::exit::policy::VgicFrames;
use crate::exit::sysreg as sysreg_policy;
use crate::vcpu::Who;
use crate::vm::state::{self, VmView};
use barriers::GuestPending;
use hw_regs::gic::GICD_SGIR;
use hyp_abi::layout::{GICD_IPA, GICR_IPA};

/// What the vector's fast path needs about the guest running on this CPU
/// (`HostSave::fast` points at it while the guest runs).
pub struct FastCtx<'a> {
    /// The guest vCPU running.
    pub who: Who,
    /// Its VM.
    pub vm: VmView<'a>,
}

/// Called by the lower-EL synchronous vector (`__fast_sync` in
/// `arch/vectors.rs`) while a guest runs, on the hypervisor stack, with the
/// guest's x0..x18, x30 and PC in its register file `regs` and x19..x29
/// still in their registers; `save` is this CPU's `HostSave`, whose `fast`
/// the vector found non-null. True: answered, the vector returns to the
/// guest with the register file's x0..x18, x30 and PC. False: nothing
/// changed, the vector takes the full exit.
#[unsafe(no_mangle)]
extern "C" fn hyp_fast_sync(regs: *mut GuestRegs, save: *const HostSave) -> bool {
    // SAFETY: `save` is this CPU's HostSave (TPIDR_EL2); `regs` is the
    // register file of the vCPU running (`HostSave::guest`), which nothing
    // else touches during the run.
    let (regs, save) = unsafe { (&mut *regs, &*save) };
    // A cheap first look, so exits that cannot be fast (MMIO for the host,
    // stage-2 faults, WFI, ...) pay little before their full exit: HVC/SMC,
    // or a data abort in the vGIC's frames (the redistributor region at its
    // largest; `VgicFrames::region` checks exactly).
    let esr = Esr(sysreg::esr_el2());
    match ExitReason::from_ec(esr.ec()) {
        ExitReason::Hvc | ExitReason::Smc => fast_call(regs, save),
        ExitReason::DataAbort => {
            let hpfar = sysreg::hpfar_el2();
            let ipa = esr::fault_ipa(hpfar, 0);
            let end = GICR_IPA + vgic::MAX_VCPUS as u64 * vgic::REDIST_FRAME_SIZE;
            if !(GICD_IPA..end).contains(&ipa) {
                false
            } else if esr.iss() & esr::dabt::WNR != 0 {
                fast_sgir(regs, save)
            } else {
                vgic_read(regs, save, esr, hpfar)
            }
        }
        ExitReason::SysReg => {
            sysreg_policy::is_sgi1r_write(&esr::decode_sysreg(esr))
                && fast_sync_sgi(regs, save, esr)
        }
        _ => false,
    }
}

/// The `FastCtx` of the guest running, from this CPU's `save`. Each fast
/// path reads it itself: arguments in the order the vector passes them cost
/// no register moves before the tail calls.
///
/// # Safety
///
/// `save` is the HostSave the vector passed to [`hyp_fast_sync`], whose
/// `fast` the vector checked non-null: it points at the `FastCtx` of
/// `guest_loop`, which is suspended in `world_switch::enter` for this
/// guest's run and keeps it (and the vGIC read guard it borrows) alive.
unsafe fn fast_ctx(save: &HostSave) -> &FastCtx<'_> {
    // SAFETY: as the caller guarantees.
    unsafe { &*save.fast().cast::<FastCtx<'_>>() }
}

/// A read of the virtual distributor or a redistributor (which changes no
/// interrupt state). A register that never changes once the VM exists
/// (`Vgic::fixed_read`: GICD_TYPER, IIDR, the ID registers, GICR_TYPER,
/// ...) is answered here with no lock; inlined into [`hyp_fast_sync`] and
/// calling nothing on that path, so that function keeps no frame (no
/// callee-saved register saved) and its other paths stay tail calls. Other
/// registers: [`locked_read`]. False: nothing changed.
#[inline(always)]
fn vgic_read(regs: &mut GuestRegs, save: &HostSave, esr: Esr, hpfar: u64) -> bool {
    // SAFETY: the vector passes this CPU's HostSave.
    let fast = unsafe { fast_ctx(save) };
    // Only a guest's VmView has a vGIC.
    let Some(vg) = fast.vm.vg else {
        return false;
    };
    // A load with a valid syndrome into a register of the file (x19..x29
    // are not in it on this path).
    let Some(m) = esr::syndrome_load(esr, esr::fault_ipa(hpfar, sysreg::far_el2()))
        .filter(|m| !(19..=29).contains(&m.reg))
    else {
        return false;
    };
    let frames = VgicFrames {
        version: vg.version(),
        nr_vcpus: vg.nr_vcpus(),
    };
    let Some((region, off)) = frames.region(m.ipa) else {
        return false;
    };
    // A zero-extending load of a value that fits the access, as
    // `Vgic::fixed_read`'s do, puts the value itself in the register
    // (`load_result` returns it unchanged); a sign-extending one (LDRSW,
    // LDRSH, ...) takes the locked read, which extends it.
    let fixed = match m.sign_extend {
        false => vg.fixed_read(region, off, m.size.bytes() as u8),
        true => None,
    };
    let Some(value) = fixed else {
        return locked_read(regs, save, esr, m.ipa, region, off);
    };
    // Register 31 is XZR here: the value is dropped.
    if let Some(x) = regs.x.get_mut(m.reg as usize) {
        *x = value;
    }
    regs.pc += esr.insn_len();
    fast.vm.stats.record(ExitReason::DataAbort);
    true
}

/// A vGIC read at `ipa` (ESR `esr`; `off` in `region`) that [`vgic_read`]
/// did not answer: emulated under the vGIC's lock by the vCPU running.
/// Pending and active state may sit in the list registers until the next
/// sync: those reads take the full path. The access is decoded again from
/// `esr` (arguments in registers; an `MmioAccess` would go through the
/// stack and give [`hyp_fast_sync`] a frame).
#[inline(never)]
fn locked_read(
    regs: &mut GuestRegs,
    save: &HostSave,
    esr: Esr,
    ipa: u64,
    region: vgic::Region,
    off: u64,
) -> bool {
    // SAFETY: the vector passes this CPU's HostSave.
    let fast = unsafe { fast_ctx(save) };
    let Some(m) = esr::syndrome_load(esr, ipa) else {
        return false;
    };
    let (Some(vg), Who::Guest { vcpu, .. }) = (fast.vm.vg, fast.who) else {
        return false;
    };
    let lr_state = match region {
        vgic::Region::Dist => (0x200..0x400).contains(&off) || (0xf10..0xf30).contains(&off),
        vgic::Region::Redist => (0x1_0200..0x1_0400).contains(&(off % vgic::REDIST_FRAME_SIZE)),
    };
    if lr_state {
        return false;
    }
    let Ok(out) = vg.mmio(vcpu, region, off, m.size.bytes() as u8, None) else {
        return false;
    };
    if let Some(x) = regs.x.get_mut(m.reg as usize) {
        *x = m.load_result(out.value);
    }
    regs.pc += esr.insn_len();
    fast.vm.stats.record(ExitReason::DataAbort);
    true
}

/// A GICv2 SGI (a 32-bit write of GICD_SGIR) to other vCPUs only, as
/// [`fast_sgi`] takes GICv3's. Anything else: false, nothing changed.
#[inline(never)]
fn fast_sgir(regs: &mut GuestRegs, save: &HostSave) -> bool {
    // SAFETY: the vector passes this CPU's HostSave.
    let fast = unsafe { fast_ctx(save) };
    let (Some(vg), Who::Guest { slot, vcpu }) = (fast.vm.vg, fast.who) else {
        return false;
    };
    let trap = read_trap();
    if vg.version() != vgic::Version::V2 {
        return false;
    }
    let DataAbort::Mmio(m) = esr::decode_data_abort(trap.esr, trap.hpfar, trap.far) else {
        return false;
    };
    if !m.write || m.ipa != GICD_IPA + GICD_SGIR || m.size.bytes() != 4 {
        return false;
    }
    let Some(value) = reg_in_file(regs, m.reg).map(|v| v & 0xffff_ffff) else {
        return false;
    };
    if vcpu >= 8 || vg.sgir_targets(vcpu, value) & (1 << vcpu) != 0 {
        return false;
    }
    let Some((cpu, sync)) = this_cpu(save) else {
        return false;
    };
    let Ok(out) = vg.mmio(vcpu, vgic::Region::Dist, GICD_SGIR, 4, Some(value)) else {
        return false;
    };
    let sgi = Sgi {
        slot,
        vcpu,
        kick: out.kick,
    };
    // 2 bytes for a 16-bit Thumb store (AArch32 EL0).
    let step = trap.esr.insn_len();
    kick_and_resume(fast, regs, (cpu, sync), sgi, step, ExitReason::DataAbort)
}

/// An SGI the fast path made pending: the sender and the vCPUs to kick.
struct Sgi {
    slot: usize,
    vcpu: usize,
    kick: u8,
}

/// The end of a fast SGI: the targets kicked, their tokens discharged for
/// the vector's ERET, the sender's PC stepped by `step` and the exit counted.
fn kick_and_resume(
    fast: &FastCtx<'_>,
    regs: &mut GuestRegs,
    (cpu, sync): (usize, &CpuSync),
    sgi: Sgi,
    step: u64,
    reason: ExitReason,
) -> bool {
    let mut pending = GuestPending::new();
    state::kick_vcpus_from(cpu, sync, sgi.slot, sgi.vcpu, sgi.kick, &mut pending);
    // The vector's ERET (EOS = 1) is what the kicks must precede.
    barriers::fast_return(&sync.eos, pending);
    regs.pc += step;
    fast.vm.stats.record(reason);
    true
}

/// Register `r` of a trapped write as the fast path has it: x19..x29 are
/// not in the register file on this path (None), XZR reads as 0.
fn reg_in_file(regs: &GuestRegs, r: u8) -> Option<u64> {
    match r {
        31 => Some(0),
        19..=29 => None,
        r => Some(regs.x[r as usize]),
    }
}

/// This CPU's index and synchronisation state, as `run_cpu` left them in
/// its `HostSave`: set before any guest of this CPU ran, alive while one
/// runs (which is when the fast path runs).
fn this_cpu(save: &HostSave) -> Option<(usize, &CpuSync)> {
    let (cpu, sync) = save.cpu();
    // SAFETY: null or `run_cpu`'s `CpuSync`, alive while a guest runs.
    unsafe { sync.as_ref() }.map(|s| (cpu, s))
}

/// An ICC_SGI1R_EL1 write (ESR `esr`): [`fast_sgi`] with this CPU.
#[inline(never)]
fn fast_sync_sgi(regs: &mut GuestRegs, save: &HostSave, esr: Esr) -> bool {
    // SAFETY: the vector passes this CPU's HostSave.
    let fast = unsafe { fast_ctx(save) };
    let Some(cpu) = this_cpu(save) else {
        return false;
    };
    fast_sgi(fast, regs, esr, cpu)
}

/// A GICv3 SGI (ICC_SGI1R_EL1 written, as `hyp_fast_sync` checked) to
/// other vCPUs only: their state changes under the vGIC's lock and they are
/// kicked, as `effects::apply` does for `Action::Sgi1r`; this vCPU's list
/// registers stay as they are. An SGI to itself must reach its list
/// registers before it runs again: the full path. Out of line, so the other
/// fast exits do not carry it.
#[inline(never)]
fn fast_sgi(fast: &FastCtx<'_>, regs: &mut GuestRegs, esr: Esr, cpu: (usize, &CpuSync)) -> bool {
    let (Some(vg), Who::Guest { slot, vcpu }) = (fast.vm.vg, fast.who) else {
        return false;
    };
    let Some(value) = reg_in_file(regs, esr::decode_sysreg(esr).reg) else {
        return false;
    };
    if vcpu >= 16 || vg.sgi1r_targets(vcpu, value) & (1 << vcpu) != 0 {
        return false;
    }
    let Ok(kick) = vg.sgi1r(vcpu, value) else {
        return false;
    };
    kick_and_resume(
        fast,
        regs,
        cpu,
        Sgi { slot, vcpu, kick },
        4,
        ExitReason::SysReg,
    )
}

/// A stateless SMCCC/PSCI/vendor call (VERSION, FEATURES, the KVM UID,
/// ...), answered without touching the vGIC's list registers, the control
/// lock or any system register, so the guest is re-entered at once. `regs`
/// holds x0..x18, x30 and the PC only. Everything else (and every error)
/// returns false with `regs` unchanged and takes the full path in
/// `effects::sync_exit`. Counted like any exit.
#[inline(never)]
fn fast_call(regs: &mut GuestRegs, save: &HostSave) -> bool {
    // SAFETY: the vector passes this CPU's HostSave.
    let fast = unsafe { fast_ctx(save) };
    // Read again rather than passed: passing the syndrome measured more
    // instructions per fast exit (it goes through the stack).
    let reason = ExitReason::from_ec(Esr(sysreg::esr_el2()).ec());
    let x = [regs.x[0], regs.x[1], regs.x[2], regs.x[3]];
    // A YIELD always goes to the host: no decode here.
    if x[0] as u32 == hyp_abi::GUEST_YIELD {
        return false;
    }
    let call = call::decode(x);
    // KVM_FEATURES depends on the VM (protected or not): full path.
    if call == Hypercall::VendorFeatures {
        return false;
    }
    let Some(r) = call::stateless_answer(call) else {
        return false;
    };
    if reason == ExitReason::Smc {
        // A trapped SMC's preferred return address is the SMC itself.
        regs.pc += 4;
    }
    regs.x[..4].copy_from_slice(&r);
    fast.vm.stats.record(reason);
    true
}
