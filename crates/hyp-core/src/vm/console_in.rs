//! Console input: what is typed on the hypervisor's console (the physical
//! PL011, which only the hypervisor drives) goes to one VM, the one with
//! the console focus, which the host chooses (CONSOLE_FOCUS).
//!
//! The physical UART's receive interrupt (the board's
//! `Platform::uart_intid`) is routed to CPU 0 and taken at EL2 like the
//! other physical interrupts (an exit of whatever runs there). [`rx_irq`]
//! reads the UART's FIFO empty, which lowers its interrupt, puts the
//! characters into the focused VM's emulated receive FIFO
//! (`vm::uart_rx::Rx`: full means dropped and counted, never a wait),
//! and sets the VM's UART interrupt ([`hyp_abi::layout::UART_INTID`]) in
//! its vGIC to the emulated UART's level, kicking the vCPUs that level
//! targets. A guest's own register accesses change the level too
//! (`exit::effects`). With no focus the characters are read and dropped.

use crate::arch::{console, gic};
use crate::vcpu::ctx::Cpu;
use crate::vm::control::HostError;
use crate::vm::state::{self, control};
use crate::vm::uart::VmConsole;
use barriers::GuestPending;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use hyp_abi::layout::UART_INTID;
use vgic::Vgic;

/// Handle of the VM with the console focus (0: none).
static FOCUS: AtomicU64 = AtomicU64::new(0);
/// The physical UART's INTID (0: input not enabled).
static PHYS_INTID: AtomicU32 = AtomicU32::new(0);
/// Characters read in one interrupt at most; more keep the UART's
/// interrupt up and are read at the next one (the exit stays bounded).
const BURST: usize = 64;

/// Turns console input on: the UART's receive interrupts unmasked and its
/// SPI `intid` routed to CPU 0 (boot CPU, after the GIC's set-up).
pub fn init(intid: u32) {
    let Some(g) = gic::phys() else {
        return;
    };
    console::rx_enable();
    PHYS_INTID.store(intid, Ordering::Release);
    g.spi_setup(intid);
}

/// Whether physical INTID `intid` is the console UART's.
#[inline]
pub fn is_console_irq(intid: u32) -> bool {
    intid != 0 && PHYS_INTID.load(Ordering::Relaxed) == intid
}

/// CONSOLE_FOCUS: typed characters go to VM `handle` from now on (0: to
/// nobody).
///
/// # Errors
///
/// NoVm: no VM with that handle.
pub fn set_focus(handle: u64) -> Result<(), HostError> {
    if handle == 0 {
        FOCUS.store(0, Ordering::Release);
        return Ok(());
    }
    // Stored under the VM's lock, so a VM that exists is focused.
    let vm = control().vm(handle)?;
    FOCUS.store(handle, Ordering::Release);
    drop(vm);
    log::info!("console input goes to VM {handle}");
    Ok(())
}

/// VM `handle` is being destroyed: it loses the focus, so a later VM in
/// its slot does not inherit it.
pub fn destroyed(handle: u64) {
    let _ = FOCUS.compare_exchange(handle, 0, Ordering::AcqRel, Ordering::Acquire);
}

/// Sets the VM's UART interrupt to its console's level; returns the vCPUs
/// to kick. Called with the console locked, so level changes reach the
/// vGIC in the order they happen.
pub fn update_level(con: &VmConsole, vg: &Vgic) -> u8 {
    // An SPI ignores the vCPU argument; UART_INTID is one of the vGIC's.
    vg.set_level(0, UART_INTID, con.rx.irq()).unwrap_or(0)
}

/// The console UART's interrupt: reads what it received and hands it to
/// the focused VM.
pub fn rx_irq(c: &Cpu<'_>, pending: &mut GuestPending) {
    let mut buf = [0u8; BURST];
    let mut n = 0;
    while n < BURST {
        let Some(b) = console::rx_byte() else {
            break;
        };
        buf[n] = b;
        n += 1;
    }
    let h = FOCUS.load(Ordering::Acquire);
    if h == 0 || n == 0 {
        return;
    }
    // The VM's lock keeps its state alive meanwhile; no VM is no input.
    let kick = control().vm(h).map_or(0, |vm| {
        let x = vm.extra();
        let mut con = x.console.lock();
        for &b in &buf[..n] {
            let _ = con.rx.push(b);
        }
        x.vgic.get().map_or(0, |vg| update_level(&con, vg))
    });
    state::kick_vcpus(c, h as usize - 1, usize::MAX, kick, pending);
}
