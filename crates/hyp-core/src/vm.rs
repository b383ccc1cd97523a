//! VMs, vCPUs and the per-CPU run loop that handles their exits.
//!
//! Model (this scope): one VM; vCPU *i* runs on physical CPU *i*, so
//! a vCPU's register file lives on its CPU's stack and only cross-CPU power
//! state (PSCI) is shared, through atomics.

use crate::arch::mmu::CpuSync;
use crate::arch::sysreg;
use crate::arch::world_switch::{self, El1Context, GuestRegs, HostSave, VectorKind};
use crate::exit::{self, DataAbort, Esr, ExitReason};
use crate::hypercall::{self, Hypercall};
use crate::inject::{self, Injected};
use crate::platform::{GuestImage, MemRegion, Platform};
use crate::{stats, uart_emul};
use barriers::{regs, GuestPending};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use spin::{Mutex, Once};

/// Most vCPUs a VM may have (and physical CPUs the hypervisor drives).
pub const MAX_VCPUS: usize = 8;
/// Guest RAM starts at this IPA, as on QEMU virt.
pub const GUEST_RAM_IPA: u64 = 0x4000_0000;
/// The guest's emulated PL011, at QEMU virt's UART address.
pub const GUEST_UART_IPA: u64 = 0x0900_0000;

const OFF: u8 = 0;
const CLAIMED: u8 = 1;
const ON_PENDING: u8 = 2;
const ON: u8 = 3;

/// A VM shared by the CPUs running its vCPUs.
pub struct Vm {
    /// VMID tagging its stage-2 TLB entries.
    pub vmid: u16,
    /// The VM's stage-2 tables.
    pub stage2: Mutex<s2mm::Stage2>,
    /// VTTBR_EL2 value.
    pub vttbr: u64,
    /// VTCR_EL2 value.
    pub vtcr: u64,
    /// Guest RAM: IPA GUEST_RAM_IPA maps to `ram.base`.
    pub ram: MemRegion,
    /// Number of vCPUs.
    pub nr_vcpus: usize,
    power: [AtomicU8; MAX_VCPUS],
    boot: [Mutex<(u64, u64)>; MAX_VCPUS],
    running: AtomicUsize,
}

impl core::fmt::Debug for Vm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vm")
            .field("vmid", &self.vmid)
            .finish_non_exhaustive()
    }
}

/// HCR_EL2 for guests: VM (stage 2 on), SWIO, FMO/IMO/AMO (physical
/// interrupts to EL2, virtual ones to the guest), FB + BSU=IS (broadcast the
/// guest's TLBIs and barriers), TWI (WFI exits), TSC (SMC exits), RW (EL1 is
/// AArch64).
pub const HCR_GUEST: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 9)
    | (1 << 10)
    | (1 << 13)
    | (1 << 19)
    | (1 << 31);

static VM: Once<Vm> = Once::new();

/// The VM, once created.
pub fn vm() -> Option<&'static Vm> {
    VM.get()
}

/// IPA size of every VM's stage 2 (VTCR_EL2.T0SZ = 24, concatenated roots).
pub const IPA_BITS: u32 = 40;

/// Builds the VM's stage 2 with `s2mm`: guest RAM at GUEST_RAM_IPA as normal
/// write-back memory (2 MiB / 1 GiB blocks where aligned), owned by the
/// guest. With `fwb = false` the map cleans the whole range to PoC, which is
/// what a guest starting with its MMU off needs. Nothing else is mapped, so every other access exits (the emulated
/// UART included). Returns (VTTBR_EL2, VTCR_EL2).
fn build_stage2(vmid: u16, ram: MemRegion) -> Result<(s2mm::Stage2, u64, u64), &'static str> {
    let mut pool = crate::arch::tables::POOL.lock();
    let mut alloc = crate::arch::tables::Tables(&mut pool);
    let mut s2 = s2mm::Stage2::new(&mut alloc, vmid, IPA_BITS, false)
        .map_err(|_| "no memory for the stage-2 root")?;
    s2.map(
        &mut alloc,
        s2mm::Ipa(GUEST_RAM_IPA),
        s2mm::Pa(ram.base),
        ram.size,
        s2mm::Attrs::RAM_RWX,
        s2mm::PageState::Owned,
    )
    .map_err(|_| "cannot map guest RAM at stage 2")?;
    let vtcr = s2
        .vtcr(sysreg::id_aa64mmfr0_el1() & 0xf)
        .map_err(|_| "CPU's PARange too small for the IPA size")?;
    let vttbr = s2.root().0 | (u64::from(vmid) << 48);
    Ok((s2, vttbr, vtcr))
}

/// Creates the VM from a guest payload with `nr_vcpus` vCPUs and `ram_size`
/// bytes of RAM taken from the board's VM pool, and powers on vCPU 0 at the
/// payload's entry.
///
/// # Errors
///
/// A message naming what does not fit.
pub fn create(
    p: &Platform,
    image: &GuestImage,
    nr_vcpus: usize,
    ram_size: u64,
) -> Result<&'static Vm, &'static str> {
    if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
        return Err("vCPU count out of range");
    }
    if ram_size > p.vm_pool.size || !ram_size.is_multiple_of(2 << 20) || ram_size > (1 << 30) {
        return Err("guest RAM size does not fit the VM pool");
    }
    let off = image
        .load_ipa
        .checked_sub(GUEST_RAM_IPA)
        .ok_or("payload below guest RAM")?;
    if off + image.bytes.len() as u64 > ram_size {
        return Err("payload larger than guest RAM");
    }
    let ram = MemRegion {
        base: p.vm_pool.base,
        size: ram_size,
    };
    // SAFETY: the VM pool is RAM owned by the hypervisor, mapped at EL2 by
    // identity, and not yet given to any guest.
    unsafe {
        core::ptr::write_bytes(ram.base as *mut u8, 0, ram.size as usize);
        core::ptr::copy_nonoverlapping(
            image.bytes.as_ptr(),
            (ram.base + off) as *mut u8,
            image.bytes.len(),
        );
    }
    // The guest starts with its MMU off, so its accesses are non-cacheable and
    // go to RAM: the image and zeroes must be clean to PoC (ARM-RULES.md
    // section 3). Mapping cacheable RAM without FEAT_S2FWB does exactly that:
    // s2mm cleans the range to PoC in the same batch (see `build_stage2`).
    let vmid = 1;
    let (s2, vttbr, vtcr) = build_stage2(vmid, ram)?;
    let vm = VM.call_once(|| Vm {
        vmid,
        stage2: Mutex::new(s2),
        vttbr,
        vtcr,
        ram,
        nr_vcpus,
        power: [const { AtomicU8::new(OFF) }; MAX_VCPUS],
        boot: [const { Mutex::new((0, 0)) }; MAX_VCPUS],
        running: AtomicUsize::new(0),
    });
    *vm.boot[0].lock() = (image.entry, 0);
    vm.power[0].store(ON_PENDING, Ordering::Release);
    Ok(vm)
}

impl Vm {
    fn ipa_in_ram(&self, ipa: u64) -> bool {
        ipa >= GUEST_RAM_IPA && ipa < GUEST_RAM_IPA + self.ram.size
    }

    fn cpu_on(&self, target: u64, entry: u64, context: u64) -> u64 {
        let Some(idx) = hypercall::mpidr_to_index(target, self.nr_vcpus) else {
            return hypercall::INVALID_PARAMETERS;
        };
        if !self.ipa_in_ram(entry) || !entry.is_multiple_of(4) {
            // PSCI INVALID_ADDRESS.
            return -9i64 as u64;
        }
        match self.power[idx].compare_exchange(OFF, CLAIMED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                *self.boot[idx].lock() = (entry, context);
                self.power[idx].store(ON_PENDING, Ordering::Release);
                barriers::maint::publish_and_wake();
                hypercall::SUCCESS
            }
            Err(ON) => hypercall::ALREADY_ON,
            Err(_) => hypercall::ON_PENDING,
        }
    }

    fn affinity_info(&self, target: u64, level: u64) -> u64 {
        if level != 0 {
            return hypercall::INVALID_PARAMETERS;
        }
        let Some(idx) = hypercall::mpidr_to_index(target, self.nr_vcpus) else {
            return hypercall::INVALID_PARAMETERS;
        };
        match self.power[idx].load(Ordering::Acquire) {
            ON => 0,
            OFF => 1,
            _ => 2,
        }
    }
}

/// What the run loop does after an exit.
enum Next {
    Resume,
    CpuOff,
    SystemOff,
}

/// A vCPU's private state, owned by the CPU that runs it.
struct Vcpu {
    idx: usize,
    regs: GuestRegs,
    el1: El1Context,
    uart: uart_emul::LineBuffer,
}

/// Runs vCPU `cpu` of the VM on this CPU for as long as the system lives.
/// Returns when the guest asks for the system to power off.
pub fn run_cpu(cpu: usize, vm: &'static Vm, host: &mut HostSave, sync: &CpuSync) {
    if cpu >= vm.nr_vcpus {
        // No vCPU for this CPU: idle until power-off.
        loop {
            sysreg::wfe();
        }
    }
    let mut load = GuestPending::new();
    // SAFETY: the VM's stage 2 is complete and maps only the VM's memory;
    // VTCR describes it. EL2 issues no TLBI by VMID or AT before the ERET
    // that synchronises them (VmidCtx, discharged by the entry).
    unsafe {
        load.add(regs::VtcrEl2::write(vm.vtcr));
        load.add(regs::VttbrEl2::write(vm.vttbr));
        // EL1PCTEN | EL1PCEN: the guest reads the physical counter and uses
        // the physical timer directly (no timer is virtualised yet).
        load.add(regs::CnthctlEl2::write(0b11));
    }
    load.add(regs::VmpidrEl2::write((1 << 31) | cpu as u64));
    load.add(regs::VpidrEl2::write(sysreg::midr_el1()));
    load.add(regs::CntvoffEl2::write(0));
    // CPTR_EL2 (E2H = 0): RES1 bits 13, 12, 9..0; TFP (bit 10) clear so the
    // guest uses FP/SIMD directly. Its El2Fp token is discharged by the ERET:
    // the hypervisor itself never uses FP (softfloat target).
    // SAFETY: no trap the hypervisor relies on for isolation is cleared.
    load.add(unsafe { regs::CptrEl2::write(&sync.hcr, 0x33ff & !(1 << 10)) });
    let mut load = Some(load);
    loop {
        while vm.power[cpu].load(Ordering::Acquire) != ON_PENDING {
            sysreg::wfe();
        }
        let (entry, ctx) = *vm.boot[cpu].lock();
        let mut v = Vcpu {
            idx: cpu,
            regs: GuestRegs::default(),
            el1: El1Context::reset(),
            uart: uart_emul::LineBuffer::new(),
        };
        v.regs.x[0] = ctx;
        v.regs.pc = entry;
        v.regs.pstate = inject::PSTATE_DAIF | inject::PSTATE_EL1H;
        vm.running.fetch_add(1, Ordering::AcqRel);
        vm.power[cpu].store(ON, Ordering::Release);
        let mut pending = load.take().unwrap_or_default();
        v.el1.restore(&sync.hcr, &mut pending);
        match run_vcpu(vm, &mut v, host, sync, pending) {
            Next::CpuOff => {
                vm.power[cpu].store(OFF, Ordering::Release);
                if vm.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    log::info!("all vCPUs are off");
                    return;
                }
            }
            Next::SystemOff => return,
            Next::Resume => unreachable!("run_vcpu returns only to stop"),
        }
    }
}

fn run_vcpu(
    vm: &Vm,
    v: &mut Vcpu,
    host: &mut HostSave,
    sync: &CpuSync,
    first: GuestPending,
) -> Next {
    let mut pending = first;
    loop {
        let entry = barriers::enter_guest(&sync.eos, pending);
        // SAFETY: TPIDR_EL2 points at `host` (set at CPU bring-up), the VM's
        // stage 2 and HCR_EL2 are loaded, and `v.regs` lives across the call.
        let kind = unsafe { world_switch::enter(&mut v.regs, host, entry) };
        pending = GuestPending::new();
        let next = match kind {
            VectorKind::Sync => handle_sync(vm, v, sync, &mut pending),
            VectorKind::Irq | VectorKind::Fiq => {
                stats::record(ExitReason::Irq);
                Next::Resume
            }
            VectorKind::SError => {
                stats::record(ExitReason::Other);
                log::warn!("vCPU {}: SError from guest at {:#x}", v.idx, v.regs.pc);
                Next::Resume
            }
        };
        match next {
            Next::Resume => {}
            other => {
                v.el1.save(&sync.hcr);
                // Nothing was written for a guest that will not run again
                // on this entry; the accumulator is empty.
                let _ = barriers::enter_guest(&sync.eos, pending);
                return other;
            }
        }
    }
}

fn handle_sync(vm: &Vm, v: &mut Vcpu, sync: &CpuSync, pending: &mut GuestPending) -> Next {
    let esr = Esr(sysreg::esr_el2());
    let reason = ExitReason::from_ec(esr.ec());
    stats::record(reason);
    match reason {
        ExitReason::Hvc => hypercall(vm, v),
        ExitReason::Smc => {
            // A trapped SMC's preferred return address is the SMC itself.
            v.regs.pc += 4;
            hypercall(vm, v)
        }
        ExitReason::DataAbort => {
            data_abort(vm, v, esr, sync, pending);
            Next::Resume
        }
        ExitReason::InstAbort => {
            let far = sysreg::far_el2();
            inject_into(v, Injected::InstAbort { far }, sync, pending);
            Next::Resume
        }
        ExitReason::Wfx => {
            v.regs.pc += 4;
            Next::Resume
        }
        ExitReason::SysReg | ExitReason::Fp | ExitReason::Irq | ExitReason::Other => {
            inject_into(v, Injected::Undefined, sync, pending);
            Next::Resume
        }
    }
}

fn hypercall(vm: &Vm, v: &mut Vcpu) -> Next {
    let x = [v.regs.x[0], v.regs.x[1], v.regs.x[2], v.regs.x[3]];
    let ret = match hypercall::decode(x) {
        Hypercall::PsciVersion => hypercall::PSCI_VERSION_1_1,
        Hypercall::PsciFeatures { fid } => hypercall::psci_features(fid),
        Hypercall::SmcccVersion => hypercall::SMCCC_VERSION_1_1,
        Hypercall::ArchFeatures { fid } => hypercall::arch_features(fid),
        Hypercall::CpuOn {
            target,
            entry,
            context,
        } => vm.cpu_on(target, entry, context),
        Hypercall::AffinityInfo {
            target,
            lowest_level,
        } => vm.affinity_info(target, lowest_level),
        Hypercall::CpuSuspend => hypercall::SUCCESS,
        Hypercall::CpuOff => return Next::CpuOff,
        Hypercall::SystemOff => {
            log::info!("guest vCPU {} requested SYSTEM_OFF", v.idx);
            return Next::SystemOff;
        }
        Hypercall::SystemReset => {
            log::info!(
                "guest vCPU {} requested SYSTEM_RESET; powering off instead",
                v.idx
            );
            return Next::SystemOff;
        }
        Hypercall::Unknown { .. } => hypercall::NOT_SUPPORTED,
        // The vendor-hypervisor calls decoded by hypercall.rs are not wired
        // in yet (the VM rewrite answers them): NOT_SUPPORTED, as before.
        _ => hypercall::NOT_SUPPORTED,
    };
    v.regs.x[0] = ret;
    Next::Resume
}

fn data_abort(vm: &Vm, v: &mut Vcpu, esr: Esr, sync: &CpuSync, pending: &mut GuestPending) {
    let far = sysreg::far_el2();
    match exit::decode_data_abort(esr, sysreg::hpfar_el2(), far) {
        DataAbort::Mmio(m)
            if (GUEST_UART_IPA..GUEST_UART_IPA + uart_emul::WINDOW).contains(&m.ipa) =>
        {
            let off = m.ipa - GUEST_UART_IPA;
            if m.write {
                let val = if m.reg == 31 {
                    0
                } else {
                    v.regs.x[m.reg as usize]
                };
                if let Some(b) = uart_emul::write(off, val) {
                    if let Some(line) = v.uart.push(b) {
                        crate::console::guest_line(line);
                    }
                }
            } else if m.reg != 31 {
                v.regs.x[m.reg as usize] = m.load_result(uart_emul::read(off));
            }
            v.regs.pc += 4;
        }
        DataAbort::Mmio(m) => {
            let _ = vm;
            let write = m.write;
            inject_into(v, Injected::DataAbort { far, write }, sync, pending);
        }
        DataAbort::NoSyndrome { write, .. } => {
            inject_into(v, Injected::DataAbort { far, write }, sync, pending)
        }
        DataAbort::Stage1Walk { .. } => {
            inject_into(v, Injected::DataAbort { far, write: false }, sync, pending)
        }
    }
}

/// Injects `what` into the vCPU's EL1 (its EL1 registers are live on this CPU).
fn inject_into(v: &mut Vcpu, what: Injected, sync: &CpuSync, pending: &mut GuestPending) {
    let e2h = &sync.hcr;
    let vbar = regs::VbarEl1::read(e2h);
    let i = inject::inject(what, v.regs.pc, v.regs.pstate, vbar);
    pending.add(regs::EsrEl1::write(e2h, i.esr_el1));
    if let Some(far) = i.far_el1 {
        pending.add(regs::FarEl1::write(e2h, far));
    }
    pending.add(regs::ElrEl1::write(e2h, i.elr_el1));
    pending.add(regs::SpsrEl1::write(e2h, i.spsr_el1));
    v.regs.pc = i.pc;
    v.regs.pstate = i.pstate;
}
