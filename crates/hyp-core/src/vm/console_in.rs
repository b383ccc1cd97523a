//! Console input: what is typed on the hypervisor's console (the physical
//! PL011, which only the hypervisor drives) goes to one VM, the one with
//! the console focus, which the host chooses (CONSOLE_FOCUS).
//!
//! The physical UART's receive interrupt (the board's
//! `Platform::uart_intid`) is routed to CPU 0 and taken at EL2 like the
//! other physical interrupts (an exit of whatever runs there). [`rx_irq`]
//! moves characters from the UART into the focused VM's emulated receive
//! FIFO (`vm::uart_rx::Rx`) while it has room, and sets the VM's UART interrupt ([`hyp_abi::layout::UART_INTID`]) in
//! its vGIC to the emulated UART's level, kicking the vCPUs that level
//! targets. A guest's own register accesses change the level too
//! (`exit::effects`). With no focus the characters are read and dropped.
//!
//! Nothing typed is lost to a slow guest: when the VM's FIFO is full and
//! the UART holds more, the UART's receive interrupt is masked
//! (throttled) and the characters wait in the UART (QEMU's serial back
//! end stops feeding a full PL011; on the Pi its 16-character FIFO is the
//! slack). The focused VM's read of UARTDR that makes room unmasks it
//! ([`guest_read`]). Never a wait at EL2, in either direction.

use crate::arch::{console, gic};
use crate::vcpu::ctx::Cpu;
use crate::vm::control::HostError;
use crate::vm::state::{self, control};
use crate::vm::uart::VmConsole;
use barriers::GuestPending;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hyp_abi::layout::UART_INTID;
use vgic::Vgic;

/// Handle of the VM with the console focus (0: none).
static FOCUS: AtomicU64 = AtomicU64::new(0);
/// The UART's receive interrupt is masked until the focused VM makes room.
static THROTTLED: AtomicBool = AtomicBool::new(false);
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
        unthrottle();
        return Ok(());
    }
    // Stored under the VM's lock, so a VM that exists is focused.
    let vm = control().vm(handle)?;
    FOCUS.store(handle, Ordering::Release);
    drop(vm);
    // What waited for the old focus goes to the new one.
    unthrottle();
    log::info!("console input goes to VM {handle}");
    Ok(())
}

/// Unmasks the UART's receive interrupt if it was throttled.
fn unthrottle() {
    if THROTTLED.swap(false, Ordering::AcqRel) {
        console::rx_unmask();
    }
}

/// VM `handle` read its receive side (`con`, locked): if it has the focus
/// and its FIFO has room again, input that waited in the UART may come.
pub fn guest_read(handle: u64, con: &VmConsole) {
    if THROTTLED.load(Ordering::Acquire)
        && FOCUS.load(Ordering::Acquire) == handle
        && con.rx.space() > 0
    {
        unthrottle();
    }
}

/// VM `handle` is being destroyed: it loses the focus, so a later VM in
/// its slot does not inherit it.
pub fn destroyed(handle: u64) {
    if FOCUS
        .compare_exchange(handle, 0, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // Whatever waited for it is read and dropped now.
        unthrottle();
    }
}

/// Sets the VM's UART interrupt to its console's level; returns the vCPUs
/// to kick. Called with the console locked, so level changes reach the
/// vGIC in the order they happen.
pub fn update_level(con: &VmConsole, vg: &Vgic) -> u8 {
    // An SPI ignores the vCPU argument; UART_INTID is one of the vGIC's.
    vg.set_level(0, UART_INTID, con.rx.irq()).unwrap_or(0)
}

/// The console UART's interrupt: moves what it received into the focused
/// VM's FIFO while there is room (throttling the UART when there is none),
/// or reads and drops it when no VM has the focus.
pub fn rx_irq(c: &Cpu<'_>, pending: &mut GuestPending) {
    let h = FOCUS.load(Ordering::Acquire);
    // The VM's lock keeps its state alive meanwhile.
    let Some(kick) = (h != 0).then(|| control().vm(h).ok()).flatten().map(|vm| {
        let x = vm.extra();
        let mut con = x.console.lock();
        let mut n = 0;
        while n < BURST && con.rx.space() > 0 {
            let Some(b) = console::rx_byte() else {
                break;
            };
            con.rx.push(b);
            n += 1;
        }
        if con.rx.space() == 0 && console::rx_ready() {
            // Under the console's lock: the guest's read that makes
            // room (`guest_read`) sees the flag.
            console::rx_mask();
            THROTTLED.store(true, Ordering::Release);
        }
        x.vgic.get().map_or(0, |vg| update_level(&con, vg))
    }) else {
        // Nobody to give it to: read (at most a burst) and drop.
        for _ in 0..BURST {
            if console::rx_byte().is_none() {
                break;
            }
        }
        return;
    };
    state::kick_vcpus(c, h as usize - 1, usize::MAX, kick, pending);
}
