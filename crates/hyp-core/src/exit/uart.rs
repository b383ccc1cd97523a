//! A vCPU's access to the PL011 every VM sees (emulated at EL2): output
//! lines to the hypervisor's console, tagged and escaped; input from the
//! console focus (`vm::console_in`), with the VM's UART interrupt kept at
//! the emulated UART's level.

use crate::arch::esr::MmioAccess;
use crate::vcpu::ctx::{Cpu, VcpuCtx};
use crate::vcpu::Who;
use crate::vm::state::{self, VmView};
use barriers::GuestPending;

/// An access to the emulated PL011: output goes to the context's console
/// line buffer, and each line to the real console as `vm::uart::show_line`
/// shows it (`[vmN] ` and escaped for a guest); the transmitter is always
/// ready. Reads of the receive side take what was typed for the VM
/// (`vm::console_in`); when an access changes the UART's interrupt level,
/// the VM's vGIC hears it.
#[allow(clippy::too_many_arguments)]
pub(super) fn access(
    c: &mut Cpu<'_>,
    who: Who,
    ctx: &mut VcpuCtx,
    pending: &mut GuestPending,
    vm: VmView<'_>,
    off: u64,
    access: MmioAccess,
    value: u64,
) {
    // A guest's lines are tagged with its handle; the host's are not.
    let (vcpu, handle) = match who {
        Who::Host => (c.idx, None),
        Who::Guest { slot, vcpu } => (vcpu, Some(slot as u64 + 1)),
    };
    let mut console = vm.console.lock();
    let level = console.rx.irq();
    if access.write {
        if let Some(b) = console.write(off, value) {
            if let Some(line) = console.push(vcpu, b) {
                crate::arch::console::guest_line(|put| {
                    crate::vm::uart::show_line(handle, line, put);
                });
            }
        }
    } else {
        let v = console.read(off);
        if let Some(h) = handle {
            crate::vm::console_in::guest_read(h, &console);
        }
        if access.reg != 31 {
            ctx.regs.x[access.reg as usize] = access.load_result(v);
        }
    }
    if console.rx.irq() == level {
        return;
    }
    let (Some(vg), Who::Guest { slot, vcpu }) = (vm.vg, who) else {
        return;
    };
    let kick = crate::vm::console_in::update_level(&console, vg);
    drop(console);
    state::kick_vcpus(c, slot, vcpu, kick, pending);
}
