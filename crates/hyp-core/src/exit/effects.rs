//! Exit effects: carries out what [`super::policy`] decided, and is the only
//! part of exit handling that touches registers, locks and tables.
//!
//! [`sync_exit`] handles one synchronous exit of the host or a guest:
//! counts it, decodes it, asks the policy, applies the [`Action`]. Where an
//! effect can fail in a way the policy must hear about (a lazy mapping that
//! finds nothing to map), the effect asks the policy again with
//! [`policy::decide_unmapped`].

use super::policy::{self, Action, Decision, Exit, Facts, Trap, VgicFrames};
use crate::arch::esr::{Esr, ExitReason, MmioAccess};
use crate::arch::gic;
use crate::arch::sysreg;
use crate::exit::sysreg::{self as sysreg_policy, VmReg};
use crate::stats;
use crate::vcpu::ctx::{Cpu, FpOwner, VcpuCtx};
use crate::vcpu::gic as vcpu_gic;
use crate::vcpu::inject::{self, Injected};
use crate::vcpu::traps::HCR_TVM;
use crate::vcpu::{debug, fp, ptimer, sve, sve_id, Who};
use crate::vm::control::{Fault, HostError, RunEnd};
use crate::vm::state::VmView;
use crate::vm::{host as host_vcpus, state};
use barriers::sync::{Cse, Synced};
use barriers::{regs, GuestPending};
use vgic::Vgic;

/// What the run loop does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Re-enter the same context.
    Resume,
    /// Back to the host with this VCPU_RUN result (guests only).
    ToHost(RunEnd, [u64; 4]),
    /// The host asked to run a guest vCPU (VCPU_RUN's arguments: handle,
    /// vCPU, flags, MMIO value).
    RunVcpu([u64; 4]),
    /// The machine powers off (host SYSTEM_OFF).
    SystemOff,
    /// The host vCPU turned itself off.
    HostCpuOff,
}

/// The facts of the exiting context, asked lazily: the VM's entry in the
/// control state is looked up only for the exits that need it.
struct ContextFacts<'a> {
    who: Who,
    nr_cpus: usize,
    vg: Option<&'a Vgic>,
}

impl ContextFacts<'_> {
    /// `f` of the exiting VM's metadata (under the control lock).
    fn vm<T>(&self, f: impl FnOnce(&crate::vm::control::VmMeta) -> T, none: T) -> T {
        match self.who {
            Who::Host => none,
            Who::Guest { slot, .. } => state::control()
                .vm(slot as u64 + 1)
                .map(|vm| f(&vm))
                .unwrap_or(none),
        }
    }
}

impl Facts for ContextFacts<'_> {
    fn who(&self) -> Who {
        self.who
    }
    fn nr_vcpus(&self) -> usize {
        match self.who {
            Who::Host => self.nr_cpus,
            Who::Guest { .. } => self.vm(|vm| vm.nr_vcpus, 0),
        }
    }
    fn protected(&self) -> bool {
        self.vm(|vm| vm.protected, false)
    }
    fn is_ram(&self, ipa: u64) -> bool {
        // Unknown VM: refuse, as for RAM.
        self.vm(|vm| vm.is_ram(ipa), true)
    }
    fn vgic(&self) -> Option<VgicFrames> {
        self.vg.map(|vg| VgicFrames {
            version: vg.version(),
            nr_vcpus: vg.nr_vcpus(),
        })
    }
    fn mmio_to_host(&self, ipa: u64) -> bool {
        // Unknown VM: nothing is forwarded.
        self.vm(|vm| !vm.protected || vm.mmio_guarded(ipa), false)
    }
}

/// Reads the syndrome registers of the exit being handled.
pub fn read_trap() -> Trap {
    Trap {
        esr: Esr(sysreg::esr_el2()),
        far: sysreg::far_el2(),
        hpfar: sysreg::hpfar_el2(),
    }
}

/// Handles a synchronous exit of `who` (whose registers are in `ctx`, EL1
/// state live on this CPU; `vm` what the exit needs of its VM).
pub fn sync_exit(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
    vm: VmView<'_>,
    trap: Trap,
) -> Next {
    vm.stats.record(ExitReason::from_ec(trap.esr.ec()));
    let facts = ContextFacts {
        who,
        nr_cpus: c.nr_cpus,
        vg: vm.vg,
    };
    let exit = policy::decode(&trap, &ctx.regs.x);
    let d = policy::decide(&exit, &facts);
    let d = match d.action {
        Action::MapOnDemand { ipa } => match map_on_demand(c, who, ipa) {
            Ok(()) => return Next::Resume,
            // The VM's own pages for tables are used up: the host tops them
            // up (VM_TOPUP) and runs the vCPU again, which retries.
            Err(HostError::NoMemory) => {
                return Next::ToHost(RunEnd::Runnable, [hyp_abi::exit::MEMORY, ipa, 0, 0]);
            }
            Err(_) => decide_unmapped_cold(&exit, &facts),
        },
        _ => d,
    };
    apply(c, who, ctx, pending, vm, &exit, d)
}

/// [`policy::decide_unmapped`] for a lazy fault that found nothing to map:
/// rare, so out of line, which leaves the one call on every exit (in
/// [`policy::decide`]) free to be inlined into [`sync_exit`].
#[cold]
#[inline(never)]
fn decide_unmapped_cold(exit: &Exit, facts: &ContextFacts<'_>) -> Decision {
    policy::decide_unmapped(exit, facts)
}

/// Carries out decision `d` about `exit`.
///
/// Inlined into [`sync_exit`], its one caller, which saves a call and the
/// [`Decision`]'s trip through memory on every exit. A recursive function
/// cannot be inlined, so a lazy fault with nothing to map is decided again
/// in the loop below rather than by a call to itself.
#[inline(always)]
fn apply(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
    vm: VmView<'_>,
    exit: &Exit,
    mut d: Decision,
) -> Next {
    let vg = vm.vg;
    loop {
        ctx.regs.pc = ctx.regs.pc.wrapping_add(d.pc_step);
        // `sync_exit` tries the mapping before it gets here.
        let Action::MapOnDemand { .. } = d.action else {
            break;
        };
        d = decide_unmapped_cold(
            exit,
            &ContextFacts {
                who,
                nr_cpus: c.nr_cpus,
                vg,
            },
        );
    }
    debug::stepped_past(&ctx.debug, &mut ctx.regs.pstate, d.pc_step);
    match d.action {
        Action::Resume => {}
        Action::Return(r) => ctx.regs.x[..4].copy_from_slice(&r),
        Action::ReturnX0(r) => ctx.regs.x[0] = r,
        Action::Trng(t) => super::vm_calls::trng(ctx, t),
        Action::Load { rt, value } => ctx.regs.x[rt as usize] = value,
        Action::Inject(what) => inject_into(c, ctx, what, pending),
        Action::DenyHost(what) => {
            if host_fault_raced(exit) {
                return Next::Resume;
            }
            stats::host_denied();
            inject_into(c, ctx, what, pending);
        }
        Action::MapOnDemand { .. } => unreachable!("a lazy fault is decided again above"),
        Action::Uart { off, access, value } => {
            super::uart::access(c, who, ctx, pending, vm, off, access, value);
        }
        Action::Vgic {
            region,
            off,
            access,
            value,
        } => {
            if !vgic_mmio(c, who, ctx, pending, vg, (region, off), access, value) {
                // The frame refused the access: an abort, taken at it.
                ctx.regs.pc = ctx.regs.pc.wrapping_sub(d.pc_step);
                let far = match *exit {
                    Exit::DataAbort { far, .. } => far,
                    _ => 0,
                };
                let write = access.write;
                inject_into(c, ctx, Injected::DataAbort { far, write }, pending);
            }
        }
        Action::AwaitMmio { access, record } => {
            ctx.mmio = Some(access);
            // The completion steps past the load: 2 bytes for Thumb.
            ctx.mmio_len = match *exit {
                Exit::DataAbort { len, .. } => len,
                _ => 4,
            };
            return Next::ToHost(RunEnd::AwaitMmio, record);
        }
        Action::ToHost(end, record) => {
            if let Who::Guest { slot, vcpu } = who {
                match end {
                    RunEnd::SystemOff => {
                        log::info!("VM {} vCPU {vcpu} requested SYSTEM_OFF", slot + 1)
                    }
                    RunEnd::SystemReset => {
                        log::info!("VM {} vCPU {vcpu} requested SYSTEM_RESET", slot + 1);
                    }
                    _ => {}
                }
            }
            return Next::ToHost(end, record);
        }
        Action::Wfi => {
            if !vgic_wakes(c, who, ctx, vg, pending) {
                let deadline = ptimer::wake_deadline(c, &ctx.ptimer);
                let wait = [1, deadline, crate::vcpu::idle::generation()];
                return Next::ToHost(
                    RunEnd::Runnable,
                    [hyp_abi::exit::YIELD, wait[0], wait[1], wait[2]],
                );
            }
        }
        Action::Fp => {
            let me = if who == Who::Host {
                FpOwner::Host
            } else {
                FpOwner::Guest
            };
            fp::fp_trap(c, ctx, me);
        }
        Action::Sve => {
            if !sve::trap(c, ctx) {
                inject_into(c, ctx, Injected::Undefined, pending);
            }
        }
        Action::PTimerFirstUse => ptimer::first_use(c, &mut ctx.ptimer, pending),
        Action::Sgi1r { value } => {
            if let (Some(vg), Who::Guest { slot, vcpu }) = (vg, who) {
                if let Ok(kick) = vg.sgi1r(vcpu, value) {
                    // Kicks are asynchronous SGIs; the guest's entry ERET follows.
                    state::kick_vcpus(c, slot, vcpu, kick, pending);
                }
            }
        }
        Action::IdRead { enc, rt } => {
            let hw = sysreg::read_id(enc.crm, enc.op2);
            let v = super::idregs::sanitise(enc, hw).unwrap_or(0);
            let sve = who != Who::Host && sve::available();
            let v = sve_id::view(enc, hw, v, sve);
            ctx.regs.x[rt as usize] = super::pmu::id_read(who, enc, v);
        }
        Action::SetWay => set_way_trap(c, who, vm, ctx, pending),
        Action::Debug(a) => super::debug::access(c, ctx, a, d.pc_step, pending),
        Action::Pmu { reg, rt, write } => {
            super::pmu::access(c, who, ctx, vg, reg, rt, write, pending);
        }
        Action::TvmWrite { reg, value } => tvm_write(c, who, vm, ctx, reg, value, pending),
        Action::CpuOn {
            target,
            entry,
            context,
        } => {
            ctx.regs.x[0] = match who {
                Who::Host => host_vcpus::cpu_on(target, entry, context),
                Who::Guest { slot, .. } => {
                    let r = state::control().psci_cpu_on(slot as u64 + 1, target, entry, context);
                    // The host CPU that runs the new vCPU may be asleep.
                    crate::vcpu::idle::event(c, pending);
                    r
                }
            };
        }
        Action::AffinityInfo { target } => {
            ctx.regs.x[0] = match who {
                Who::Host => host_vcpus::affinity_info(target),
                Who::Guest { slot, .. } => {
                    state::control().psci_affinity_info(slot as u64 + 1, target)
                }
            };
        }
        Action::Yield => {
            ctx.regs.x[..4].fill(0);
            return Next::ToHost(RunEnd::Runnable, [hyp_abi::exit::YIELD, 0, 0, 0]);
        }
        Action::MeasurementSet => super::vm_calls::measurement_set(who, ctx),
        Action::MeasurementGet { item, half } => {
            super::vm_calls::measurement_get(who, ctx, item, half);
        }
        Action::MmioGuard { ipa } => super::vm_calls::mmio_guard(who, ctx, vm.stats, ipa),
        Action::Share { ipa, share } => {
            super::vm_calls::share(c, who, ctx, vm.stats, ipa, share);
        }
        Action::HostCall => {
            return match crate::calls::host::call(c, ctx, pending) {
                crate::calls::host::Reply::Done => Next::Resume,
                crate::calls::host::Reply::RunVcpu(a) => Next::RunVcpu(a),
                crate::calls::host::Reply::SystemOff => Next::SystemOff,
            };
        }
        Action::HostCpuOff => return Next::HostCpuOff,
        Action::SystemOff => {
            log::info!("host vCPU {} requested system power-off", c.idx);
            return Next::SystemOff;
        }
    }
    Next::Resume
}

/// Whether a host translation fault hit a page the host may access by now:
/// it was taken in the break-before-make window of a change to the host's
/// stage 2 on another CPU (those changes hold the host lock, which this
/// waits for), and is retried rather than refused.
#[cold]
fn host_fault_raced(exit: &Exit) -> bool {
    exit.translation_fault_ipa()
        .is_some_and(|ipa| state::control().host_state(ipa) != s2mm::ownership::CompState::NoAccess)
}

/// A stage-2 translation fault in guest RAM: maps the page if it was given
/// lazily (MEM_FLAG_LAZY), so the access is retried; retried too when the
/// page is mapped by now (break-before-make on another CPU).
fn map_on_demand(c: &mut Cpu<'_>, who: Who, ipa: u64) -> Result<(), HostError> {
    let Who::Guest { slot, .. } = who else {
        return Err(HostError::Range);
    };
    if state::control().map_on_demand(&mut c.vttbr, slot as u64 + 1, ipa)? == Fault::Mapped {
        // The page may hold code the host wrote; the map cleaned it to PoC
        // (no FWB): invalidate the I-caches before the guest fetches from it.
        barriers::maint::invalidate_icache_all_is();
    }
    Ok(())
}

/// A guest's access to the virtual distributor or a redistributor; false
/// when the frame refuses it.
#[allow(clippy::too_many_arguments)]
fn vgic_mmio(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
    vg: Option<&Vgic>,
    (region, off): (vgic::Region, u64),
    access: MmioAccess,
    value: u64,
) -> bool {
    let (Some(vg), Who::Guest { slot, vcpu }) = (vg, who) else {
        return false;
    };
    let write = access.write.then_some(value);
    match vg.mmio(vcpu, region, off, access.size.bytes() as u8, write) {
        Ok(out) => {
            if !access.write && access.reg != 31 {
                ctx.regs.x[access.reg as usize] = access.load_result(out.value);
            }
            state::kick_vcpus(c, slot, vcpu, out.kick, pending);
            true
        }
        Err(_) => false,
    }
}

/// Whether a WFI should complete at once because the vCPU has a virtual
/// interrupt to take.
fn vgic_wakes(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    vg: Option<&Vgic>,
    pending: &mut GuestPending,
) -> bool {
    let (Some(vg), Who::Guest { vcpu, .. }) = (vg, who) else {
        return false;
    };
    let Some(mut lrs) = crate::vcpu::gic::Lrs::new(c.sync, pending) else {
        return false;
    };
    let pmr = ctx.vif.priority_mask(vg.version(), &mut lrs);
    vg.has_pending(vcpu, pmr)
}

/// Sets the vCPU's HCR_EL2 TVM bit as `tvm` says; writes HCR_EL2 if it changed.
fn set_tvm(ctx: &mut VcpuCtx, tvm: bool, pending: &mut GuestPending) {
    let hcr = if tvm {
        ctx.hcr | HCR_TVM
    } else {
        ctx.hcr & !HCR_TVM
    };
    if hcr != ctx.hcr {
        ctx.hcr = hcr;
        // SAFETY: changes a trap only this module relies on.
        pending.add(unsafe { regs::HcrEl2::write_traps_only(hcr) });
    }
}

/// Before entering a guest vCPU: sets its TVM trap again if another vCPU's
/// set/way operation asked for it ([`set_way_trap`]).
pub fn cache_traps_before_entry(
    who: Who,
    vm: VmView<'_>,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
) {
    if let (Who::Guest { vcpu, .. }, Some(tvm)) = (who, vm.tvm) {
        if tvm.take(vcpu) {
            set_tvm(ctx, true, pending);
        }
    }
}

/// A data-cache set/way operation trapped by HCR_EL2.TSW
/// ([`sysreg_policy::set_way`]): while the vCPU's TVM is clear, a
/// VM-wide clean+invalidate, and TVM set again on this vCPU and on every
/// other vCPU of the VM (those running on other CPUs are kicked, so they
/// take it at their next entry, which the kick forces; a vCPU that toggles
/// its caches before the kick lands is not trapped), so the next MMU/cache
/// toggle of any vCPU is seen and flushes again.
fn set_way_trap(
    c: &mut Cpu<'_>,
    who: Who,
    vm: VmView<'_>,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
) {
    let (Who::Guest { slot, vcpu }, Some(tvm)) = (who, vm.tvm) else {
        return;
    };
    let t = sysreg_policy::set_way(ctx.hcr & HCR_TVM != 0);
    if t.flush_vm {
        state::flush_vm(slot);
        vm.stats.cache_flush();
    }
    set_tvm(ctx, t.tvm, pending);
    if t.rearm_others {
        let asked = tvm.request(vcpu);
        state::kick_vcpus(c, slot, vcpu, asked, pending);
        log::info!(
            "VM {}: vCPU {vcpu} did a set/way operation: VM-wide clean+invalidate, TVM re-armed on every vCPU",
            slot + 1
        );
    }
}

/// A write trapped by HCR_EL2.TVM: performs it on the vCPU's behalf. For
/// SCTLR_EL1 ([`sysreg_policy::sctlr_write`]): when "MMU and data
/// cache on" changes, cleans and invalidates all of the VM's memory to PoC
/// (by VA, through EL2's identity map) so no vCPU sees stale lines for
/// data written with its caches off; once its MMU and caches are on, the
/// vCPU's TVM trap is dropped.
fn tvm_write(
    c: &mut Cpu<'_>,
    who: Who,
    vm: VmView<'_>,
    ctx: &mut VcpuCtx,
    r: VmReg,
    val: u64,
    pending: &mut GuestPending,
) {
    use sysreg_policy::VmReg;
    let h = &c.sync.hcr;
    match r {
        VmReg::Sctlr => {
            let old = regs::SctlrEl1::read(h);
            pending.add(regs::SctlrEl1::write(h, val));
            let t = sysreg_policy::sctlr_write(old, val, ctx.hcr & HCR_TVM != 0);
            if t.flush_vm {
                if let Who::Guest { slot, vcpu } = who {
                    state::flush_vm(slot);
                    vm.stats.cache_flush();
                    let how = if sysreg_policy::caches_on(val) {
                        "turned its caches on"
                    } else {
                        "turned its caches off"
                    };
                    log::info!(
                        "VM {}: vCPU {vcpu} {how}: VM-wide clean+invalidate",
                        slot + 1
                    );
                }
            }
            set_tvm(ctx, t.tvm, pending);
        }
        VmReg::Ttbr0 => pending.add(regs::Ttbr0El1::write(h, val)),
        VmReg::Ttbr1 => pending.add(regs::Ttbr1El1::write(h, val)),
        VmReg::Tcr => pending.add(regs::TcrEl1::write(h, val)),
        VmReg::Afsr0 => pending.add(regs::Afsr0El1::write(h, val)),
        VmReg::Afsr1 => pending.add(regs::Afsr1El1::write(h, val)),
        VmReg::Esr => pending.add(regs::EsrEl1::write(h, val)),
        VmReg::Far => pending.add(regs::FarEl1::write(h, val)),
        VmReg::Mair => pending.add(regs::MairEl1::write(h, val)),
        VmReg::Amair => pending.add(regs::AmairEl1::write(h, val)),
        VmReg::Contextidr => pending.add(regs::ContextidrEl1::write(h, val)),
    }
}

/// Injects `what` into the vCPU's EL1 (its EL1 registers are live on this CPU).
pub(super) fn inject_into(
    c: &mut Cpu<'_>,
    ctx: &mut VcpuCtx,
    what: Injected,
    pending: &mut GuestPending,
) {
    let e2h = &c.sync.hcr;
    let vbar = regs::VbarEl1::read(e2h);
    let i = inject::inject(what, ctx.regs.pc, ctx.regs.pstate, vbar);
    pending.add(regs::EsrEl1::write(e2h, i.esr_el1));
    if let Some(far) = i.far_el1 {
        pending.add(regs::FarEl1::write(e2h, far));
    }
    pending.add(regs::ElrEl1::write(e2h, i.elr_el1));
    pending.add(regs::SpsrEl1::write(e2h, i.spsr_el1));
    ctx.regs.pc = i.pc;
    ctx.regs.pstate = i.pstate;
}

/// Handles a physical interrupt taken at EL2; true when the running guest
/// should give the CPU back to the host: the end of its time slice, or one of
/// the host's INTx lines.
pub fn physical_irq(c: &mut Cpu<'_>, exit: &Synced<Cse>, pending: &mut GuestPending) -> bool {
    let Some(g) = gic::phys() else {
        return false;
    };
    let raw = g.ack(c.sync.gic.as_ref(), exit);
    let intid = g.intid(raw);
    if intid == gic::SPURIOUS {
        return false;
    }
    let to_host = intid == gic::HYP_TIMER_PPI;
    match intid {
        gic::HYP_TIMER_PPI => gic::stop_slice(pending),
        gic::VTIMER_PPI => {
            // The running vCPU's virtual timer fired: mask the physical
            // PPI until the guest has dealt with it (its level is sampled
            // into the vGIC before each entry).
            g.ppi_enable(c.idx, intid, false);
            c.timers_masked |= crate::vcpu::ctx::TIMER_V;
        }
        // Maintenance (the vGIC re-syncs after every exit) and kicks (the
        // exit itself was the point).
        gic::MAINTENANCE_PPI | gic::KICK_SGI => {}
        _ if intid == gic::PMU_PPI => crate::vcpu::pmu::overflow_irq(c, g),
        _ if crate::vm::console_in::is_console_irq(intid) => {
            crate::vm::console_in::rx_irq(c, pending);
        }
        _ if crate::vm::host_intx::is_host_intx(intid) => {
            // One of the host's PCIe INTx lines (routed to CPU 0, host vCPU
            // 0's): pending for the host as a hardware-linked virtual
            // interrupt; its EOI deactivates the physical one. A guest
            // running here yields, so the host serves its device now.
            match vcpu_gic::host_inject(c, intid, pending) {
                Ok(()) => {
                    g.drop_priority(raw, c.sync.gic.as_ref(), exit, pending);
                    return true;
                }
                Err(e) => {
                    // Every list register busy: cannot happen while the
                    // lines (4) fit the list registers (each line is in at
                    // most one). Keep the line off rather than let it storm.
                    g.spi_enable(intid, false);
                    log::warn!(
                        "CPU {}: host INTx {intid} not delivered ({e:?}): disabled",
                        c.idx
                    );
                }
            }
        }
        _ if intid >= 32 && crate::vm::devices::forward_irq(c, intid, pending) => {}
        // The running vCPU's physical timer (`vcpu::ptimer`), as the virtual
        // timer's; tested late, so the other interrupts' paths are unchanged.
        _ if intid == gic::PTIMER_PPI => ptimer::fired(c, g),
        _ => log::warn!("CPU {}: unexpected physical interrupt {intid}", c.idx),
    }
    g.eoi(raw, c.sync.gic.as_ref(), exit, pending);
    to_host
}
