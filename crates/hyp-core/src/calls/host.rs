//! The host control interface at EL2: the host's calls in the range
//! `hyp_abi::FID_BASE..=FID_LAST` (numbers and arguments in `hyp-abi`),
//! checked against the control state (`vm::control`) and carried out.
//! VCPU_RUN belongs to the run loop: this module hands it back.

use crate::arch::gic;
use crate::stats;
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use crate::vm::control::{self, HostError};
use crate::vm::devices;
use crate::vm::state::{self, control};
use barriers::vttbr::Vttbr;
use barriers::GuestPending;

/// What a host call leaves to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answered (x0..x3 set): the host resumes.
    Done,
    /// VCPU_RUN with these arguments (handle, vCPU, flags, value).
    RunVcpu([u64; 4]),
    /// MACHINE_EXIT(0): the machine powers off.
    SystemOff,
}

/// The code x0 carries for `e`.
fn err(e: HostError) -> u64 {
    e.code()
}

/// A host control call (fid in the host range).
///
/// VCPU_RUN, the call on every exit path, is handed back here; the others
/// go to [`control_call`], out of line: its frame (tens of KiB, probed
/// page by page, for VM_CREATE's vGIC) and its saved registers are not
/// paid by every VCPU_RUN.
#[inline(always)]
pub fn call(c: &mut Cpu<'_>, host: &mut VcpuCtx, pending: &mut GuestPending) -> Reply {
    if let Some(a) = run_args(&host.regs.x) {
        return Reply::RunVcpu(a);
    }
    control_call(c, host, pending)
}

/// VCPU_RUN's arguments (handle, vCPU, flags, value) if the host's x0..x4
/// `x` are that call. The run loop asks this of every HVC of the host before
/// the general decode (`run::host_loop`): VCPU_RUN needs nothing else of it.
#[inline(always)]
pub fn run_args(x: &[u64; 31]) -> Option<[u64; 4]> {
    (x[0] as u32 == hyp_abi::VCPU_RUN).then(|| [x[1], x[2], x[3], x[4]])
}

/// [`call`] for every host call but VCPU_RUN.
#[inline(never)]
fn control_call(c: &mut Cpu<'_>, host: &mut VcpuCtx, pending: &mut GuestPending) -> Reply {
    let fid = host.regs.x[0] as u32;
    let a = [
        host.regs.x[1],
        host.regs.x[2],
        host.regs.x[3],
        host.regs.x[4],
    ];
    let mut out = [0u64; 4];
    out[0] = match fid {
        hyp_abi::VM_CREATE => create_vm(&mut c.vttbr, a).unwrap_or_else(err),
        hyp_abi::VM_TOPUP => match control().topup(&mut c.vttbr, a[0], a[1], a[2]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::DEVICE_ASSIGN => match devices::assign(&mut c.vttbr, a[0], a[1], a[2], a[3]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::IRQ_DECLARE => match devices::declare_spi(a[0], a[1]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::IRQ_LINE => match devices::irq_line(c, a[0], a[1], a[2], pending) {
            Ok(idle) => {
                out[1] = u64::from(idle);
                0
            }
            Err(e) => err(e),
        },
        // One bounded step per call: x0 pages scrubbed, x1 = 1 while more
        // remain (the host calls again).
        hyp_abi::CONSOLE_FOCUS => match crate::vm::console_in::set_focus(a[0]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::VM_DESTROY => match control().destroy(&mut c.vttbr, a[0]) {
            Ok(d) => {
                // From the first step on the VM is dying: its devices (and
                // the console focus) are taken back at once, before its
                // handle can be reused.
                devices::unassign(a[0]);
                crate::vm::console_in::destroyed(a[0]);
                out[1] = u64::from(d.more);
                d.scrubbed
            }
            Err(e) => err(e),
        },
        hyp_abi::MEM_DONATE | hyp_abi::MEM_LEND => {
            let kind = if fid == hyp_abi::MEM_DONATE {
                control::RegionKind::Donated
            } else {
                control::RegionKind::Lent
            };
            // x5: flags (bit 0: map at stage 2 on first touch).
            let flags = host.regs.x[5];
            if flags & !hyp_abi::MEM_FLAG_LAZY != 0 {
                err(HostError::Invalid)
            } else {
                let lazy = flags & hyp_abi::MEM_FLAG_LAZY != 0;
                match control().give_with(&mut c.vttbr, a[0], a[1], a[2], a[3], kind, lazy) {
                    Ok(()) => {
                        // The host may have written code there; the give's
                        // map cleaned it to PoC (no FWB): now the I-caches.
                        // A lazy give maps later (`map_on_demand`).
                        if !lazy {
                            barriers::maint::invalidate_icache_all_is();
                        }
                        0
                    }
                    Err(e) => err(e),
                }
            }
        }
        hyp_abi::VCPU_INIT => {
            // A protected VM starts in the firmware the hypervisor loads
            // (`vm::control::firmware`); an image without one boots
            // protected VMs at the host's entry.
            let r = match crate::platform::firmware() {
                Some(fw) => control().vcpu_init_firmware(&mut c.vttbr, a[0], a[1], a[2], a[3], fw),
                None => control().vcpu_init(a[0], a[1], a[2], a[3]),
            };
            match r {
                Ok(()) => {
                    // The firmware's pages were written at EL2 and cleaned to
                    // PoC by their map (no FWB): now the I-caches.
                    barriers::maint::invalidate_icache_all_is();
                    0
                }
                Err(e) => err(e),
            }
        }
        hyp_abi::VCPU_STATE => control().vcpu_state(a[0], a[1]).unwrap_or_else(err),
        hyp_abi::MMIO_COMPLETE => match control().mmio_complete(a[0], a[1], a[2]) {
            Ok(()) => 0,
            Err(e) => err(e),
        },
        hyp_abi::STATS => {
            let n = if a[0] == 0 {
                Ok(stats::HOST.read(a[1]))
            } else {
                control().vm(a[0]).map(|vm| vm.extra().stats.read(a[1]))
            };
            match n {
                Ok(Some(n)) => n,
                Ok(None) => err(HostError::Invalid),
                Err(e) => err(e),
            }
        }
        hyp_abi::VCPU_RUN => return Reply::RunVcpu(a),
        hyp_abi::HOST_IDLE => crate::vcpu::idle::host_idle(c, a[0], a[1]) as u64,
        hyp_abi::AUDIT => control().audit(),
        hyp_abi::MACHINE_EXIT => {
            if a[0] == 0 {
                return Reply::SystemOff;
            }
            log::error!("host VM exits with status {}", a[0]);
            log::info!("{}", state::exit_totals());
            crate::platform::fail_exit(a[0] as u32)
        }
        _ => err(HostError::NotSupported),
    };
    host.regs.x[..4].copy_from_slice(&out);
    Reply::Done
}

/// VM_CREATE(vcpus, flags, pa, pages): the VM with its vGIC (GICv3, or
/// GICv2 with the GIC-400's GICV frame mapped as the guest's GICC), made
/// before the handle is published, so no call can reach a VM without one
/// on a board with a GIC. Out of line: its frame (the vGIC is built on the
/// stack) would otherwise be every host call's.
#[inline(never)]
fn create_vm(vttbr: &mut Vttbr, [vcpus, flags, pa, pages]: [u64; 4]) -> Result<u64, HostError> {
    control().create_with(vttbr, vcpus, flags, pa, pages, |vm, v| match gic::phys() {
        Some(g) => state::new_vgic(vm, v, g, vcpus as usize),
        None => Ok(()),
    })
}
