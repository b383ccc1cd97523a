//! The per-CPU run loop: the host VM's vCPU on every physical CPU, guest
//! vCPUs run on behalf of the host (VCPU_RUN), and every exit handled here.
//!
//! Model (pKVM): physical CPU *i* runs host vCPU *i*. The host drives guests
//! through the control interface ([`crate::vm::control`], [`crate::calls::host`]); VCPU_RUN switches
//! this CPU from the host to a guest vCPU and back when the guest exits for
//! something only the host can do (MMIO to a device it emulates, a yield, a
//! power event). Everything else is handled at EL2 and the guest resumes.
//!
//! State: the control state (VMs, vCPU power and run claims, page
//! ownership) sits behind one lock, taken briefly. A guest vCPU's registers
//! live in a static slot whose lock is uncontended because
//! `Control::begin_run` lets only one CPU claim a vCPU. The host vCPU's
//! registers live on its CPU's stack.
//!
//! FP/SIMD is switched lazily: CPTR_EL2.TFP traps the first FP instruction
//! of a context that does not own the registers; only then are they saved
//! and loaded. A guest's FP state is saved when its run ends, so a vCPU can
//! move to another CPU.

use crate::arch::esr::{self, ExitReason};
use crate::arch::gic;
use crate::arch::switch::{self, CpuSync};
use crate::arch::sysreg;
use crate::arch::world_switch::{self, HostSave, VectorKind};
use crate::calls;
use crate::exit::effects::{self, Next};
use crate::exit::fast;
use crate::stats;
use crate::vcpu::ctx::{Cpu, FpOwner, VcpuCtx};
use crate::vcpu::gic as vcpu_gic;
use crate::vcpu::traps::{self, CNTHCTL, MDCR};
use crate::vcpu::{debug, fp, pmu, ptimer, sve, Who};
use crate::vm::control::{HostError, RunEnd};
use crate::vm::state::VmView;
use crate::vm::{devices, host as host_vcpus, state};
use barriers::vttbr::Vttbr;
use barriers::{regs, GuestPending};
use hyp_abi::exit as run_exit;

/// Time slices per second a guest vCPU gets before the host runs again.
const SLICES_PER_SECOND: u64 = 100;

/// Runs host vCPU `cpu` on this CPU (and the guest vCPUs it asks for) for as
/// long as the system lives. Returns when the machine should power off.
pub fn run_cpu(cpu: usize, nr_cpus: usize, save: &mut HostSave, sync: &CpuSync) {
    // For the vector's fast path (`exit::fast`), while guests run here.
    save.set_cpu(cpu, sync);
    let mut c = Cpu {
        idx: cpu,
        nr_cpus,
        save,
        sync,
        // SAFETY: the one owner for this CPU, for as long as it runs
        // vCPUs; the host's stage 2 is complete (`init`).
        vttbr: unsafe { Vttbr::init(state::host_vttbr()) },
        fp_owner: FpOwner::None,
        fp_on: None,
        timers_masked: 0,
        pmu_loaded: false,
        pmu_masked: false,
        host_if: vgic::HostIf::new(),
        slice_ticks: sysreg::cntfrq_el0() / SLICES_PER_SECOND,
    };
    let mut host = VcpuCtx::new();
    let mut first = GuestPending::new();
    // SAFETY: traps, and the PMU's counters all given to EL1/EL0 with
    // counting at EL2 prohibited (`pmu::probe`); nothing at EL2 uses the
    // PMU, debug or timers.
    unsafe {
        first.add(regs::MdcrEl2::write(MDCR | pmu::probe()));
        first.add(regs::CnthctlEl2::write(CNTHCTL));
        first.add(regs::VtcrEl2::write(state::vtcr()));
    }
    // FEAT_FGT (ID_AA64MMFR0_EL1.FGT, bits [59:56]) and FEAT_HCX
    // (ID_AA64MMFR1_EL1.HCX, bits [43:40]): known values (their reset
    // values are UNKNOWN); see `traps::FGT` and `traps::HCRX`.
    if (sysreg::id_aa64mmfr0_el1() >> 56) & 0xf != 0 {
        // SAFETY: traps only: every `n*` fine-grained trap set.
        unsafe {
            first.add(regs::HfgrtrEl2::write(traps::FGT));
            first.add(regs::HfgwtrEl2::write(traps::FGT));
            first.add(regs::HfgitrEl2::write(traps::FGT));
            first.add(regs::HdfgrtrEl2::write(traps::FGT));
            first.add(regs::HdfgwtrEl2::write(traps::FGT));
        }
    }
    if (sysreg::id_aa64mmfr1_el1() >> 40) & 0xf != 0 {
        // SAFETY: every enable clear.
        first.add(unsafe { regs::HcrxEl2::write(traps::HCRX) });
    }
    debug::cpu_init(debug::counts(), &mut first);
    first.add(regs::VpidrEl2::write(sysreg::midr_el1()));
    first.add(regs::CntvoffEl2::write(0));
    // The EL1 physical timer off (its ENABLE resets UNKNOWN): only a guest
    // vCPU that uses it turns it on (`vcpu::ptimer`).
    first.add(regs::CntpCtlEl0::write(&sync.hcr, 0));
    if let Some(g) = gic::phys() {
        g.init_cpu(cpu, sync.gic.as_ref(), &mut first);
    }
    // The CPU's SVE vector lengths, before it runs any vCPU (`vcpu::sve_vl`).
    sve::probe(&mut c);
    let mut first = Some(first);
    loop {
        let (entry, x0) = host_vcpus::wait_for_power_on(cpu);
        host.reset(cpu, entry, x0, traps::host_hcr(state::fwb()));
        let mut pending = first.take().unwrap_or_default();
        load_host(&mut c, &host, &mut pending);
        let (next, left) = host_loop(&mut c, &mut host, pending);
        match next {
            Next::SystemOff => {
                // The machine powers off: no ERET will ever consume them.
                left.power_off();
                return;
            }
            // The host's next entry (after its CPU_ON) synchronises them.
            _ => {
                first = Some(left);
                host_vcpus::powered_off(cpu);
            }
        }
    }
}

/// Loads the host vCPU's context: its stage 2, traps, MPIDR, EL1 registers.
fn load_host(c: &mut Cpu<'_>, host: &VcpuCtx, pending: &mut GuestPending) {
    let r = switch::ContextRegs {
        vttbr: state::host_vttbr(),
        hcr: host.hcr,
        vmpidr: (1 << 31) | c.idx as u64,
    };
    // SAFETY: the host's stage 2 maps only host-owned RAM; its HCR differs
    // from the boot value in trap bits only.
    unsafe { switch::load_context(&mut c.vttbr, c.sync, r, &host.el1, pending) };
    fp::set_fp_traps(c, c.fp_owner == FpOwner::Host, pending);
    vcpu_gic::host_restore(c, pending);
}

/// Returns what ended the host vCPU's run, with the guest-only writes made
/// since its last entry (its next entry's ERET discharges them).
fn host_loop(c: &mut Cpu<'_>, host: &mut VcpuCtx, first: GuestPending) -> (Next, GuestPending) {
    let mut pending = first;
    loop {
        let entry = barriers::enter_guest(&c.sync.eos, &mut c.vttbr, pending);
        // SAFETY: TPIDR_EL2 points at `c.save`; the host's stage 2, HCR and
        // EL1 context are loaded; `host.regs` outlives the call.
        let (kind, cse) = unsafe { world_switch::enter(&mut host.regs, &mut *c.save, entry) };
        pending = GuestPending::new();
        let fast = c.save.take_fast_hvcs();
        if fast != 0 {
            stats::HOST.add(ExitReason::Hvc, fast);
        }
        let next = match kind {
            VectorKind::Sync => {
                let trap = effects::read_trap();
                // VCPU_RUN, the host's call on every exit path, straight to
                // the run below: as a host call through `sync_exit` it
                // comes to the same (an HVC's PC needs no step, and the host
                // is never single-stepped), after the general decode.
                match calls::host::run_args(&host.regs.x) {
                    Some(a) if trap.esr.ec() == esr::ec::HVC64 => {
                        stats::HOST.record(ExitReason::Hvc);
                        Next::RunVcpu(a)
                    }
                    _ => effects::sync_exit(
                        c,
                        Who::Host,
                        host,
                        &mut pending,
                        state::host_view(),
                        trap,
                    ),
                }
            }
            VectorKind::Irq | VectorKind::Fiq => {
                stats::HOST.record(ExitReason::Irq);
                let _ = effects::physical_irq(c, &cse, &mut pending);
                Next::Resume
            }
            VectorKind::SError => {
                stats::HOST.record(ExitReason::Other);
                log::warn!("host vCPU {}: SError at {:#x}", c.idx, host.regs.pc);
                Next::Resume
            }
        };
        match next {
            Next::Resume => {}
            Next::RunVcpu([handle, vcpu, flags, value]) => {
                match vcpu_run(c, host, &mut pending, handle, vcpu, flags, value) {
                    Ok(record) => {
                        host.regs.x[..4].copy_from_slice(&record);
                        // The guest changed this CPU's EL1 registers and stage 2.
                        load_host(c, host, &mut pending);
                    }
                    Err(e) => host.regs.x[..4].copy_from_slice(&[e.code(), 0, 0, 0]),
                }
            }
            Next::ToHost(..) => unreachable!("only guests return to the host"),
            other => {
                host.el1.save(&c.sync.hcr);
                return (other, pending);
            }
        }
    }
}

/// VCPU_RUN: switches this CPU to guest vCPU `vcpu` of VM `handle` until an
/// exit for the host; returns the exit record (x0..x3). With
/// [`hyp_abi::RUN_COMPLETE_MMIO`] in `flags`, the outstanding MMIO read is
/// completed with `value` first, under the same lock.
fn vcpu_run(
    c: &mut Cpu<'_>,
    host: &mut VcpuCtx,
    host_pending: &mut GuestPending,
    handle: u64,
    vcpu: u64,
    flags: u64,
    value: u64,
) -> Result<[u64; 4], HostError> {
    if flags & !hyp_abi::RUN_COMPLETE_MMIO != 0 {
        return Err(HostError::Invalid);
    }
    let complete = (flags & hyp_abi::RUN_COMPLETE_MMIO != 0).then_some(value);
    let ctl = state::control();
    let (start, claim) = ctl.complete_and_run(handle, vcpu, complete, c.idx)?;
    let slot = handle as usize - 1;
    let v = vcpu as usize;
    let guest = claim.extra();
    let mut ctx = guest.ctx[v]
        .try_lock()
        .expect("a claimed vCPU's context is free");
    if let Some((entry, x0, sve_vq)) = start.boot {
        ctx.reset(v, entry, x0, traps::guest_hcr(state::fwb()));
        // A protected VM's firmware boot facts (`vm::control::firmware`),
        // fetched on this boot path only (out of line, cold).
        ctx.regs.x[1..5].copy_from_slice(&ctl.take_boot_args(handle, vcpu));
        // Its SVE state's slot, beside its context in the VM (never moves).
        ctx.sve = sve::SvePtr::new(&guest.sve[v], sve_vq);
    }

    if let Some(value) = start.mmio_value {
        if let Some(m) = ctx.mmio.take() {
            if m.reg != 31 {
                ctx.regs.x[m.reg as usize] = m.load_result(value);
            }
            let cx = &mut *ctx;
            cx.regs.pc += cx.mmio_len;
            debug::completed_past(&cx.debug, &mut cx.regs.pstate);
        }
    }
    host.el1.save(&c.sync.hcr);
    let mut pending = GuestPending::new();
    let r = switch::ContextRegs {
        vttbr: start.vttbr,
        hcr: ctx.hcr,
        vmpidr: (1 << 31) | vcpu,
    };
    // SAFETY: the VM's stage 2 maps only memory it owns or borrows; its HCR
    // differs from the boot value in trap bits only.
    unsafe { switch::load_context(&mut c.vttbr, c.sync, r, &ctx.el1, &mut pending) };
    pmu::run_start(c, &ctx, &mut pending);
    ptimer::load(c, &ctx.ptimer, &mut pending);
    let view = guest.view();
    // The host's list registers, VMCR and active priorities are its own:
    // none of them may reach the guest, and they come back in `load_host`.
    vcpu_gic::load_guest(c, view.vg.map(|_| &ctx.vif), &mut pending);
    let debug_live = debug::start_run(&mut ctx.debug, debug::counts, &mut pending);
    let who = Who::Guest { slot, vcpu: v };
    let (end, record, left) = guest_loop(c, who, &mut ctx, pending, view, debug_live);
    host_pending.append(left);
    debug::end_run(&mut ctx.debug, debug::counts, host_pending);
    pmu::run_end(c, &mut ctx, host_pending);
    ctx.el1.save(&c.sync.hcr);
    ptimer::put(c, &mut ctx.ptimer, host_pending);
    if c.fp_owner == FpOwner::Guest {
        if ctx.sve_used {
            sve::save(c, &mut ctx.sve);
        } else {
            let on = fp::fp_enable(c);
            world_switch::fp_save(on, &mut ctx.fp);
        }
        c.fp_owner = FpOwner::None;
    }
    drop(ctx);
    ctl.end_run(claim, c.idx, end);
    Ok(record)
}

/// Runs guest vCPU `who` until an exit for the host: returns how the run
/// ended, the VCPU_RUN record, and the guest-only writes made since its last
/// entry (the host's entry ERET discharges them). `debug_live`: its debug
/// registers are in the CPU (`debug::start_run`).
///
/// Out of line: inlined into `run_cpu` (its one caller), its per-exit
/// values shared registers with the whole VCPU_RUN path and were spilled
/// around every exit; its own frame took 25 instructions off
/// vtimer_latency and 45 off sgi_latency (`cargo xtask bench`).
#[inline(never)]
fn guest_loop(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    first: GuestPending,
    vm: VmView<'_>,
    debug_live: bool,
) -> (RunEnd, [u64; 4], GuestPending) {
    // The vGIC and the physical GIC, looked up once for the run: both are
    // set before any vCPU of the VM runs and never change.
    let vg = vm.vg;
    let phys = gic::phys();
    let vgic = phys.zip(vg);
    let mut pending = first;
    fp::set_fp_traps(c, c.fp_owner == FpOwner::Guest, &mut pending);
    if phys.is_some() {
        // A guest that never exits still gives the CPU back to the host.
        gic::arm_slice(c.slice_ticks, &mut pending);
    }
    // For the vector's fast path (`hyp_fast_sync`) while the guest runs:
    // set for the whole run (only the lower-EL vector reads it) and
    // withdrawn when the run ends. Not while the guest's debug registers are
    // live (`exit::effects` withdraws it when they go live mid-run): the
    // fast path steps the PC without clearing SPSR_EL2.SS
    // (`debug::stepped_past`).
    let fast_ctx = fast::FastCtx { who, vm };
    c.save.set_fast(if debug_live {
        core::ptr::null()
    } else {
        core::ptr::from_ref(&fast_ctx).cast()
    });
    loop {
        effects::cache_traps_before_entry(who, vm, ctx, &mut pending);
        if let Some(vg) = vg {
            if let Who::Guest { slot, .. } = who {
                devices::resample(slot, vg);
            }
        }
        if let Some((g, vg)) = vgic {
            vcpu_gic::vgic_before_entry(c, g, ctx, vg, &mut pending);
        }
        let entry = barriers::enter_guest(&c.sync.eos, &mut c.vttbr, pending);

        // SAFETY: TPIDR_EL2 points at `c.save`; the VM's stage 2, HCR and
        // EL1 context are loaded; `ctx.regs` outlives the call. `fast_ctx`
        // outlives the run and is withdrawn when it ends.
        let (kind, cse) = unsafe { world_switch::enter(&mut ctx.regs, &mut *c.save, entry) };
        pending = GuestPending::new();
        // HVCs the vector answered by itself during this run (`__hvc_fast`).
        let fast = c.save.take_fast_hvcs();
        if fast != 0 {
            vm.stats.add(ExitReason::Hvc, fast);
        }
        if let Some((g, vg)) = vgic {
            vcpu_gic::vgic_after_exit(c, g, ctx, vg, &mut pending);
        }
        let next = match kind {
            VectorKind::Sync => {
                // ESR, FAR and HPFAR (nothing at EL2 since the exit took
                // an exception that would change them).
                let trap = effects::read_trap();
                effects::sync_exit(c, who, ctx, &mut pending, vm, trap)
            }
            VectorKind::Irq | VectorKind::Fiq => {
                vm.stats.record(ExitReason::Irq);
                let to_host = effects::physical_irq(c, &cse, &mut pending);
                if c.pmu_masked {
                    // The PMU overflowed: its level to the vGIC.
                    if let (Some((g, vg)), Who::Guest { vcpu, .. }) = (vgic, who) {
                        pmu::sync_level(c, g, vg, vcpu, &mut pending);
                    }
                }
                if to_host {
                    Next::ToHost(RunEnd::Runnable, [run_exit::YIELD, 0, 0, 0])
                } else {
                    Next::Resume
                }
            }
            VectorKind::SError => {
                vm.stats.record(ExitReason::Other);
                log::warn!("{who:?}: SError at {:#x}", ctx.regs.pc);
                Next::Resume
            }
        };
        match next {
            Next::Resume => {}
            Next::ToHost(end, record) => {
                if phys.is_some() {
                    gic::stop_slice(&mut pending);
                    if let Some((g, _)) = vgic {
                        if let Some(mut lrs) = vcpu_gic::Lrs::of(g, c.sync, &mut pending) {
                            ctx.vif.save(&mut lrs);
                        }
                    }
                }
                c.save.set_fast(core::ptr::null());
                // The host's entry ERET synchronises these writes.
                return (end, record, pending);
            }
            Next::SystemOff | Next::HostCpuOff | Next::RunVcpu(_) => {
                unreachable!("host-only outcomes")
            }
        }
    }
}
