//! What the VMM does when a guest resets (PSCI SYSTEM_RESET, Linux's
//! `reboot`): a normal VM is destroyed and created again from the same
//! image and configuration (its `guests=` entry, or the kernel, initrd and
//! command line of `linux=`), over the same RAM, and boots again. Its
//! handle stays the same: VM_CREATE takes the lowest free slot, which the
//! VM_DESTROY just freed, and the host creates no other VM meanwhile
//! (checked: a different handle fails the run). The VM keeps the console
//! focus if it had it.
//!
//! A protected VM's reset stays a stop: its memory was donated, and
//! VM_DESTROY scrubs it before the host sees it again, so the host cannot
//! reload the VM's private memory, only boot a new VM from the images,
//! which the host's user can ask for instead.
//!
//! While a VM restarts it is `stopped` for the other host CPUs (they do
//! not run its vCPUs) but still counts as live ([`restarting`]), so they
//! keep serving; a VCPU_RUN that raced with the destroy gets NoVm, which
//! the caller accepts for a VM that [`restarted`].

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::hostif::{self, call};
use crate::{fail, Guest};
use guest_rt::println;
use hyp_abi::{BootInfo, HostError};

/// Handles (bit h) being restarted now, and restarted at least once.
static RESTARTING: AtomicU64 = AtomicU64::new(0);
static RESTARTED: AtomicU64 = AtomicU64::new(0);
/// The handle with the console focus (0: none).
static FOCUS: AtomicU64 = AtomicU64::new(0);
/// Boots of each handle's VM so far (index = handle).
static BOOTS: [AtomicU32; 64] = [const { AtomicU32::new(1) }; 64];
/// The boot information (modules, for `guests=` entries).
static INFO: spin::Once<&'static BootInfo> = spin::Once::new();
/// The `guests=` entry (and the list's length) of each handle.
static SPECS: spin::Mutex<[Option<(&'static str, usize)>; 64]> = spin::Mutex::new([None; 64]);

/// Bit of handle `h` in the masks above (0 for handles past 63, which are
/// not restarted).
fn bit(h: u64) -> u64 {
    if (1..64).contains(&h) {
        1 << h
    } else {
        0
    }
}

/// Records the boot information, for reloading guest images.
pub fn set_boot_info(info: &'static BootInfo) {
    INFO.call_once(|| info);
}

/// Records VM `h`'s `guests=` entry (one of `count`).
pub fn remember(h: u64, spec: &'static str, count: usize) {
    if let Some(s) = SPECS.lock().get_mut(h as usize) {
        *s = Some((spec, count));
    }
}

/// Gives VM `h` the console focus (CONSOLE_FOCUS): what is typed on the
/// hypervisor's console goes to its PL011.
pub fn focus(h: u64) {
    match call(hyp_abi::CONSOLE_FOCUS, [h, 0, 0, 0]) {
        Ok(_) => FOCUS.store(h, Ordering::Release),
        Err(e) => fail(format_args!("CONSOLE_FOCUS({h}): {e:?}")),
    }
}

/// Whether VM `h` is being restarted.
pub fn restarting(h: u64) -> bool {
    RESTARTING.load(Ordering::Acquire) & bit(h) != 0
}

/// Whether VM `h` has been (or is being) restarted.
pub fn restarted(h: u64) -> bool {
    RESTARTED.load(Ordering::Acquire) & bit(h) != 0
}

/// Whether a SYSTEM_RESET of `g` restarts it (else it stops, as
/// SYSTEM_OFF): normal VMs only (see the module's documentation), not
/// ones the host destroys as soon as they stop (`:reap`).
pub fn can_restart(g: &Guest) -> bool {
    !g.protected && !g.reap && bit(g.handle.0) != 0
}

/// Counter ticks to wait for the VM's other vCPUs to leave their CPUs
/// before its destruction is given up: 10 s.
fn busy_limit() -> u64 {
    10 * guest_rt::gic::counter_hz()
}

/// `g` reset: destroys it, creates it again from the same images and lets
/// it boot. Called by the host CPU whose VCPU_RUN returned SYSTEM_RESET.
pub fn reset(g: &Guest) {
    let h = g.handle.0;
    let b = bit(h);
    if RESTARTING.fetch_or(b, Ordering::AcqRel) & b != 0 {
        // Another of its vCPUs reset too; that CPU restarts it.
        return;
    }
    RESTARTED.fetch_or(b, Ordering::AcqRel);
    if g.stopped.swap(true, Ordering::AcqRel) {
        // It powered off meanwhile (another vCPU's SYSTEM_OFF).
        RESTARTING.fetch_and(!b, Ordering::AcqRel);
        return;
    }
    let boot = BOOTS[h as usize].fetch_add(1, Ordering::AcqRel) + 1;
    println!(
        "host: VM {h} ({}) reset: restarting it (boot {boot})",
        g.name
    );
    // Its other vCPUs may still be running (until their next exit, at the
    // latest the end of their time slice): VM_DESTROY is Busy until then.
    let t0 = guest_rt::gic::counter();
    loop {
        match hostif::destroy_vm(h) {
            Ok(_) => break,
            Err(HostError::Busy) if guest_rt::gic::counter() - t0 < busy_limit() => {
                // SAFETY: a hint; no memory or register effects.
                unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
            }
            Err(e) => fail(format_args!("VM_DESTROY {h} for its restart: {e:?}")),
        }
    }
    let new = if g.name == "linux" {
        crate::linux::reload(g, boot)
    } else {
        let Some((spec, count)) = SPECS.lock().get(h as usize).copied().flatten() else {
            fail(format_args!("VM {h} ({}) has no guest entry", g.name));
        };
        let Some(info) = INFO.get() else {
            fail(format_args!("no boot information to restart VM {h}"));
        };
        crate::load_guest(info, &crate::parse_spec(spec, count), g.ram_pa)
    };
    if new.0 != h {
        fail(format_args!(
            "VM {h} ({}) came back as VM {} (the host created another VM meanwhile)",
            g.name, new.0
        ));
    }
    if FOCUS.load(Ordering::Acquire) == h {
        // VM_DESTROY took the focus away.
        focus(h);
    }
    g.stopped.store(false, Ordering::Release);
    RESTARTING.fetch_and(!b, Ordering::AcqRel);
}
