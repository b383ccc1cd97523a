//! `linux-hostile=usedlen,irq,mmio` (issue 19 item 7): the host serves the Linux VM as a
//! hostile VMM would while the guest does its I/O, and counts what the hypervisor answered
//! (`tests/tests/linux_guest.rs`, `protected_linux_keeps_its_memory_from_a_hostile_host`).
//!
//! - `usedlen`: the disk and network devices report every used-ring length past the
//!   buffers (`virtio_dev::MmioTransport::overstate_used_lengths`), 64 KiB more and
//!   `u32::MAX` in turn. The devices still write only inside the buffers: what the guest's
//!   driver does with the length is its own check.
//! - `irq`: every [`IRQ_EVERY`]th MMIO exit of the VM, IRQ_LINE of INTIDs the host never
//!   declared (SGIs, PPIs such as the virtual timer's, the emulated UART's SPI, SPIs no device
//!   uses, INTIDs past the vGIC's), a declared line driven to level 2, and IRQ_DECLARE after the
//!   VM ran and of the UART's SPI: each must be refused with the error the ABI names.
//! - `mmio`: every [`MMIO_EVERY`]th MMIO exit, MMIO_COMPLETE of the exiting vCPU with no read
//!   outstanding (after a write, or a second time after the host answered a read itself),
//!   of a vCPU the VM does not have and of a VM that does not exist. The ABI names no
//!   address (a completion answers whatever read the vCPU has outstanding), so "another
//!   address" is another vCPU or none. Never the VM's other vCPUs: one may be waiting for
//!   its own read on another host CPU, and answering it is the host's right.
//!
//! An attempt that is accepted, or refused with another error, is counted and the first
//! is printed. At the guest's power-off the host prints one line of counts and then reads
//! the first word of every page of a protected guest's RAM (guarded: a refused read is
//! skipped and counted): every page it did not share must be refused, and the
//! hypervisor's count of refused host accesses must rise by as many.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::println;
use hyp_abi::{BootInfo, HostError, IRQ_DECLARE, IRQ_LINE, MMIO_COMPLETE};

use crate::hostif::call;
use crate::PAGE;

/// An IRQ round every this many MMIO exits of the VM.
const IRQ_EVERY: u64 = 16;
/// An MMIO_COMPLETE round every this many.
const MMIO_EVERY: u64 = 4;
/// A value no read of the guest asked for.
const JUNK: u64 = 0x0bad_c0de_0bad_c0de;

static USEDLEN: AtomicBool = AtomicBool::new(false);
static IRQ: AtomicBool = AtomicBool::new(false);
static MMIO: AtomicBool = AtomicBool::new(false);
/// MMIO exits of the VM seen so far (picks the rounds).
static EXITS: AtomicU64 = AtomicU64::new(0);
/// Used-length lies handed out (alternates the two sizes).
static LIES: AtomicU64 = AtomicU64::new(0);

/// What the hypervisor answered one kind of attempt.
struct Counts {
    /// Refused with the error the ABI names.
    refused: AtomicU64,
    /// Accepted: a hole.
    accepted: AtomicU64,
    /// Refused with another error.
    other: AtomicU64,
    /// The first accepted or otherwise answered attempt was printed.
    said: AtomicBool,
}

impl Counts {
    const fn new() -> Self {
        Self {
            refused: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            other: AtomicU64::new(0),
            said: AtomicBool::new(false),
        }
    }
}

static IRQS: Counts = Counts::new();
static COMPLETIONS: Counts = Counts::new();

/// Reads `linux-hostile=...` from the host's own boot arguments.
pub fn init(info: &BootInfo) {
    let Some(list) = hyp_abi::own_arg(info.bootargs(), "linux-hostile") else {
        return;
    };
    for what in list.split(',') {
        match what {
            "usedlen" => USEDLEN.store(true, Ordering::Relaxed),
            "irq" => IRQ.store(true, Ordering::Relaxed),
            "mmio" => MMIO.store(true, Ordering::Relaxed),
            _ => crate::fail(format_args!(
                "linux-hostile: unknown attack {what:?} (usedlen, irq, mmio)"
            )),
        }
    }
    println!("host: linux: hostile host: {list}");
}

fn active() -> bool {
    USEDLEN.load(Ordering::Relaxed) || IRQ.load(Ordering::Relaxed) || MMIO.load(Ordering::Relaxed)
}

/// The bytes a device adds to its next used lengths: 0 unless `usedlen`; else 64 KiB and
/// `u32::MAX` (saturating) in turn.
pub fn used_len_extra() -> u32 {
    if !USEDLEN.load(Ordering::Relaxed) {
        return 0;
    }
    if LIES.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
        0x1_0000
    } else {
        u32::MAX
    }
}

/// Makes host call `fid` with `a`, which must be refused with `want`.
fn attempt(c: &Counts, what: &str, fid: u32, a: [u64; 4], want: HostError) -> bool {
    let r = call(fid, a);
    let accepted = r.is_ok();
    match r {
        Err(e) if e == want => c.refused.fetch_add(1, Ordering::Relaxed),
        Err(_) => c.other.fetch_add(1, Ordering::Relaxed),
        Ok(_) => c.accepted.fetch_add(1, Ordering::Relaxed),
    };
    if r != Err(want) && !c.said.swap(true, Ordering::Relaxed) {
        println!(
            "host: linux: hostile: {what}({:#x}, {:#x}, {:#x}) answered {r:?}, expected {want:?}",
            a[0], a[1], a[2]
        );
    }
    accepted
}

/// INTIDs the host never declared for the VM, with the error IRQ_LINE owes each: SGIs,
/// PPIs (the PMU's 23, the virtual timer's 27), INTIDs past the vGIC's SPIs: Invalid; the
/// emulated UART's SPI 33 (the hypervisor's), the RTC's 34 (an assignable device's) and
/// SPIs no device uses: Denied.
const UNDECLARED: [u64; 18] = [
    0,
    1,
    15,
    16,
    23,
    26,
    27,
    31,
    33,
    34,
    47,
    50,
    63,
    95,
    96,
    1020,
    1023,
    u64::MAX,
];

fn irq_round(h: u64) {
    for intid in UNDECLARED {
        let want = if (32..96).contains(&intid) {
            HostError::Denied
        } else {
            HostError::Invalid
        };
        if attempt(&IRQS, "IRQ_LINE", IRQ_LINE, [h, intid, 1, 0], want) {
            // A hole: do not leave the line high.
            let _ = call(IRQ_LINE, [h, intid, 0, 0]);
        }
    }
    // The disk's SPI (declared when there is a disk) at a level that is not 0 or 1.
    for level in [2, u64::MAX] {
        attempt(
            &IRQS,
            "IRQ_LINE",
            IRQ_LINE,
            [h, 48, level, 0],
            HostError::Invalid,
        );
    }
    // Declarations are fixed once the VM has run; the UART's SPI is never the host's.
    attempt(
        &IRQS,
        "IRQ_DECLARE",
        IRQ_DECLARE,
        [h, 50, 0, 0],
        HostError::State,
    );
    attempt(
        &IRQS,
        "IRQ_DECLARE",
        IRQ_DECLARE,
        [h, 33, 0, 0],
        HostError::Denied,
    );
}

fn mmio_round(h: u64, vcpus: usize, v: u64, answer: &mut Option<u64>) {
    if let Some(val) = answer.take() {
        // The host answers the read itself (accepted: the vCPU's read is outstanding),
        // then once more, which must find none.
        if let Err(e) = call(MMIO_COMPLETE, [h, v, val, 0]) {
            crate::fail(format_args!(
                "MMIO_COMPLETE of VM {h} vCPU {v}'s read: {e:?}"
            ));
        }
    }
    // No read outstanding (this exit was a write, or it was answered above).
    attempt(
        &COMPLETIONS,
        "MMIO_COMPLETE",
        MMIO_COMPLETE,
        [h, v, JUNK, 0],
        HostError::State,
    );
    for bad in [vcpus as u64, 255, u64::MAX] {
        attempt(
            &COMPLETIONS,
            "MMIO_COMPLETE",
            MMIO_COMPLETE,
            [h, bad, JUNK, 0],
            HostError::Invalid,
        );
    }
    for no_vm in [0, u64::MAX] {
        attempt(
            &COMPLETIONS,
            "MMIO_COMPLETE",
            MMIO_COMPLETE,
            [no_vm, v, JUNK, 0],
            HostError::NoVm,
        );
    }
}

/// After an MMIO exit of vCPU `v` of the Linux VM `h` (`vcpus` vCPUs), which this CPU
/// serves and which is not running; `answer` is the value for its read, if it was one
/// (taken when the host completes the read itself).
pub fn mmio_exit(h: u64, vcpus: usize, v: u64, answer: &mut Option<u64>) {
    let (irq, mmio) = (IRQ.load(Ordering::Relaxed), MMIO.load(Ordering::Relaxed));
    if !irq && !mmio {
        return;
    }
    let n = EXITS.fetch_add(1, Ordering::Relaxed);
    if irq && n.is_multiple_of(IRQ_EVERY) {
        irq_round(h);
    }
    if mmio && n % MMIO_EVERY == 1 {
        mmio_round(h, vcpus, v, answer);
    }
}

/// At the VM's power-off (its memory still donated): the counts, then the read of every
/// page of a protected VM's RAM at host `ram_pa` (`ram` bytes; its DMA pool at IPA
/// `pool`).
pub fn powered_off(protected: bool, ram_pa: u64, ram: u64, pool: (u64, u64)) {
    if !active() {
        return;
    }
    let count = |c: &Counts| {
        (
            c.refused.load(Ordering::Relaxed),
            c.accepted.load(Ordering::Relaxed),
            c.other.load(Ordering::Relaxed),
        )
    };
    let (ir, ia, io) = count(&IRQS);
    let (mr, ma, mo) = count(&COMPLETIONS);
    println!(
        "host: linux: hostile: {} used lengths past the buffer, {ir} IRQ_LINE/IRQ_DECLARE refused ({ia} accepted, {io} other answers), {mr} MMIO_COMPLETE refused ({ma} accepted, {mo} other answers)",
        crate::linuxdev::overstated_used_lengths()
    );
    if !protected {
        return;
    }
    let pages = ram / PAGE;
    let before = crate::demo::hyp_denied();
    let (mut refused, mut in_pool, mut outside) = (0u64, 0u64, 0u64);
    for p in 0..pages {
        if crate::demo::probe_r(ram_pa + p * PAGE, 1) == 1 {
            refused += 1;
        } else if (pool.0..pool.0 + pool.1).contains(&(crate::GUEST_RAM_IPA + p * PAGE)) {
            in_pool += 1;
        } else {
            outside += 1;
        }
    }
    let counted = crate::demo::hyp_denied().wrapping_sub(before);
    println!(
        "host: linux: hostile: read every page of the guest's {pages}: {refused} refused (hypervisor counted {counted}), {} readable ({in_pool} in the DMA pool, {outside} outside it)",
        in_pool + outside
    );
}
