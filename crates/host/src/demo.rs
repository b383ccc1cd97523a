//! The protected-guest demo (issue 7): the host's half.
//!
//! * **Probes.** The host reads and writes guest pages with single `ldr` /
//!   `str` instructions while its exception hook is armed: an access the
//!   hypervisor refuses comes back as a synchronous external abort, which
//!   the hook counts and skips. Counts are compared with the hypervisor's
//!   own count of refused host accesses (STATS(0, 201)).
//! * **Devices.** Each guest gets a virtio-mmio console (device ID 3) and a
//!   virtio-blk device (ID 2) backed by a RAM disk in host memory: the
//!   `virtio-dev` crate's transports and devices ([`virtio`]), served from
//!   the MMIO exits the hypervisor forwards. They reach the guest's
//!   virtqueues at its IPAs through the host's knowledge of where it put
//!   the guest's memory; every such access is guarded too, so a guest that
//!   hands a device a private page (or a malformed queue) makes the demo
//!   fail instead of crashing the host.
//! * **Control register** ([`guest_rt::demo::CTL_IPA`]): a guest says when
//!   its bounce-buffer pool is shared (the host checks it can read it) and
//!   when it has unshared it (the host checks every access faults again).
//! * **Teardown checks.** Reclaimed protected pages must read as zero, and
//!   no guest's secret may be anywhere in host-readable RAM.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::{demo, println, Exception, Frame};
use virtio_dev::Fault;

mod copy;
mod virtio;

pub use virtio::Devices;
use virtio::Which;
pub use virtio::{declare_irqs, GuestRam};

use crate::{call, Guest, GUEST_RAM, PAGE};

const MAX_CPUS: usize = 8;
/// Value a probe's load leaves in its register when the load faulted.
const POISON: u64 = 0xdead_beef_dead_beef;
/// RAM disk per guest: 128 sectors.
pub const DISK_BYTES: u64 = 64 << 10;

static ARMED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static FAULTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Faults the probes expected (accesses to private pages), pages checked
/// readable while shared, and guests that reported success.
pub static EXPECT_DENIED: AtomicU64 = AtomicU64::new(0);
/// Pages guests shared that the host read successfully.
pub static SHARED: AtomicU64 = AtomicU64::new(0);
/// Guests that reported all their checks passed.
pub static GUESTS_OK: AtomicU64 = AtomicU64::new(0);

/// This host CPU (its vCPU's MPIDR Aff0).
fn cpu() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {0}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    ((mpidr & 0xff) as usize).min(MAX_CPUS - 1)
}

/// Installs the exception hook that turns refused accesses into counts.
pub fn install() {
    guest_rt::set_exception_hook(on_exception);
}

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    let c = cpu();
    // Vector 4: synchronous, current EL with SP_ELx; EC 0x25: data abort
    // taken without a change in exception level (what the hypervisor
    // injects for a refused stage-2 access).
    if e.vector == 4 && e.esr >> 26 == 0x25 && ARMED[c].load(Ordering::SeqCst) {
        FAULTS[c].fetch_add(1, Ordering::SeqCst);
        f.elr += 4;
        return true;
    }
    false
}

/// Runs `f` with this CPU's refused accesses counted and skipped; returns
/// its result and how many of its accesses faulted. `f` must access
/// possibly-refused memory only through the single-instruction helpers
/// below, so that skipping the faulting instruction skips exactly the
/// access.
fn guarded<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let c = cpu();
    let before = FAULTS[c].load(Ordering::SeqCst);
    ARMED[c].store(true, Ordering::SeqCst);
    let r = f();
    ARMED[c].store(false, Ordering::SeqCst);
    (r, FAULTS[c].load(Ordering::SeqCst) - before)
}

/// One `ldr` of the 8-byte word at `pa` (POISON if it faulted).
fn ldr64(pa: u64) -> u64 {
    let mut v = POISON;
    // SAFETY: a single load from host RAM (identity-mapped at stage 2); if
    // the hypervisor refuses it, the armed hook skips it.
    unsafe {
        asm!("ldr {v}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    v
}

/// One `str` of `v` to `pa`.
fn str64(pa: u64, v: u64) {
    // SAFETY: as `ldr64`; callers only store to guest memory the guest
    // shared or lent, or store back what they just read.
    unsafe {
        asm!("str {v}, [{a}]", v = in(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
}

fn ldrb(pa: u64) -> u8 {
    let mut v: u32 = 0;
    // SAFETY: as `ldr64`.
    unsafe {
        asm!("ldrb {v:w}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    v as u8
}

fn strb(pa: u64, v: u8) {
    // SAFETY: as `str64`.
    unsafe {
        asm!("strb {v:w}, [{a}]", v = in(reg) u32::from(v), a = in(reg) pa, options(nostack, preserves_flags))
    };
}

fn ldrh(pa: u64) -> u16 {
    let mut v: u32 = 0;
    // SAFETY: as `ldr64`.
    unsafe {
        asm!("ldrh {v:w}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    v as u16
}

fn strh(pa: u64, v: u16) {
    // SAFETY: as `str64`.
    unsafe {
        asm!("strh {v:w}, [{a}]", v = in(reg) u32::from(v), a = in(reg) pa, options(nostack, preserves_flags))
    };
}

/// Copies `n` bytes (a multiple of 16) from `src` to `dst`, both 8-byte
/// aligned, 16 at a time with `ldp`/`stp`: one of them is guest memory.
/// Inside [`guarded`], a refused access is skipped like a single-access
/// helper's (every instruction is 4 bytes, and a skipped `ldp` leaves its
/// registers as they were, so what is copied after a fault is garbage the
/// caller must throw away; a skipped `stp` writes nothing). The 8-byte
/// accesses keep the host's MMU-off alignment rule. A guest's 4 KiB block
/// read used to go a word at a time through [`str64`] and an 8-byte
/// `memcpy` per word: 37,000 instructions per page (`cargo xtask bench
/// --linux-io --profile blk`); this is 5 per 16 bytes.
fn copy16(dst: u64, src: u64, n: usize) {
    debug_assert!(n.is_multiple_of(16) && dst.is_multiple_of(8) && src.is_multiple_of(8));
    // SAFETY: `dst` and `src` are host RAM or guest memory the caller
    // checked is the guest's (`GuestRam::pa`), `n` bytes each; a refused
    // access is skipped by the armed hook.
    unsafe {
        asm!(
            "cbz {n}, 2f",
            "1:",
            "ldp {a}, {b}, [{s}], #16",
            "stp {a}, {b}, [{d}], #16",
            "subs {n}, {n}, #16",
            "b.ne 1b",
            "2:",
            d = inout(reg) dst => _,
            s = inout(reg) src => _,
            n = inout(reg) n => _,
            a = out(reg) _,
            b = out(reg) _,
            options(nostack)
        );
    }
}

/// The hypervisor's count of host accesses it refused.
pub fn hyp_denied() -> u64 {
    call(hyp_abi::STATS, [0, 201, 0, 0]).unwrap_or(u64::MAX)
}

/// Reads, then writes back what was read, the first word of each of
/// `pages` pages from `pa`: two accesses per page. Returns the faults.
/// (A page that reads back POISON because the load faulted is written
/// with POISON, which must fault too; a page wrongly left readable gets
/// its own value back, so a leak is reported without corrupting it.)
pub fn probe_rw(pa: u64, pages: u64) -> u64 {
    guarded(|| {
        for p in 0..pages {
            let a = pa + p * PAGE;
            let v = ldr64(a);
            str64(a, v);
        }
    })
    .1
}

/// Reads the first word of each page: returns the faults.
pub fn probe_r(pa: u64, pages: u64) -> u64 {
    guarded(|| {
        for p in 0..pages {
            core::hint::black_box(ldr64(pa + p * PAGE));
        }
    })
    .1
}

/// Probes a newly created VM's memory: a protected VM's must refuse every
/// read and write, a normal VM's must stay readable.
pub fn probe_new_vm(g: &Guest) {
    let pages = GUEST_RAM / PAGE;
    let h = g.handle.0;
    let before = hyp_denied();
    if g.protected {
        let faults = probe_rw(g.ram_pa, pages);
        let counted = hyp_denied() - before;
        println!(
            "demo: VM {h}: host read+write of each of its {pages} donated pages: {faults} of {} accesses faulted (hypervisor counted {counted})",
            2 * pages
        );
        if faults != 2 * pages || counted != faults {
            crate::fail(format_args!(
                "VM {h}: {} of {} host accesses to donated pages were not refused (hypervisor counted {counted})",
                2 * pages - faults,
                2 * pages
            ));
        }
        EXPECT_DENIED.fetch_add(2 * pages, Ordering::SeqCst);
    } else {
        let faults = probe_r(g.ram_pa, pages);
        println!(
            "demo: VM {h}: host read of each of its {pages} lent pages: {} readable (normal VM, for contrast)",
            pages - faults
        );
        if faults != 0 || hyp_denied() != before {
            crate::fail(format_args!(
                "VM {h}: {faults} reads of a normal VM's memory faulted"
            ));
        }
    }
}

/// Whether `ipa` belongs to the demo's devices.
pub fn is_demo_device(ipa: u64) -> bool {
    (demo::CONSOLE_IPA..demo::BLK_IPA + demo::VIRTIO_MMIO_SIZE).contains(&ipa)
        || (demo::CTL_IPA..demo::CTL_IPA + 0x100).contains(&ipa)
}

/// An MMIO access (`flags` as [`hyp_abi::mmio_flags`] encodes them) to one
/// of the demo's devices by guest `g`; the value of a read. A device error
/// (the guest handed it memory the host cannot access, or a malformed
/// queue) makes the demo fail.
pub fn mmio(g: &Guest, ipa: u64, flags: u64, value: u64) -> u64 {
    let mem = GuestRam::new(g.ram_pa, g.ram);
    let write = flags & (1 << 8) != 0;
    let size = (flags & 0xf) as u8;
    let mut d = g.devices.lock();
    if (demo::CTL_IPA..demo::CTL_IPA + 0x100).contains(&ipa) {
        if write {
            control(g, &mut d, mem, ipa - demo::CTL_IPA, value);
        }
        return 0;
    }
    let (which, off) = if ipa < demo::BLK_IPA {
        (Which::Console, ipa - demo::CONSOLE_IPA)
    } else {
        (Which::Blk, ipa - demo::BLK_IPA)
    };
    if !write {
        return match which {
            Which::Console => d.console.read(off, size),
            Which::Blk => d.blk.read(off, size),
        };
    }
    let (level, error) = match which {
        Which::Console => {
            let l = d.console.write(&mem, off, size, value);
            (l, d.console.take_error())
        }
        Which::Blk => {
            let l = d.blk.write(&mem, off, size, value);
            (l, d.blk.take_error())
        }
    };
    d.sync_irq(g, which, level);
    if let Some(e) = error {
        // What a guest's driver does wrong breaks its device (or fails the
        // request), never the host: said, counted (the demo's verdict fails
        // on any), and the guest carries on without the device.
        DEVICE_ERRORS.fetch_add(1, Ordering::SeqCst);
        let state = if d.broken(which) {
            "the device is broken until the guest resets it"
        } else {
            "the request failed"
        };
        match e {
            virtio_dev::Error::Fault(Fault { ipa: at }) => println!(
                "host: VM {}: virtio {which:?}: its virtqueue points at IPA {at:#x}, which the host cannot access; {state}",
                g.handle.0
            ),
            e => println!("host: VM {}: virtio {which:?}: {e}; {state}", g.handle.0),
        }
    }
    0
}

/// Errors the guests' drivers caused in the demo's devices.
pub static DEVICE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// A write to the demo control device.
fn control(g: &Guest, d: &mut Devices, mem: GuestRam, off: u64, v: u64) {
    let h = g.handle.0;
    match off {
        demo::CTL_POOL_IPA => d.pool_ipa = v,
        demo::CTL_POOL_PAGES => d.pool_pages = v,
        demo::CTL_CMD => match v {
            demo::CMD_SHARED | demo::CMD_UNSHARED => {
                let pages = d.pool_pages;
                let Some(Ok(pa)) = pages
                    .checked_mul(PAGE)
                    .filter(|_| d.pool_ipa.is_multiple_of(PAGE))
                    .map(|len| mem.pa(d.pool_ipa, len))
                else {
                    crate::fail(format_args!("VM {h}: its pool is not in its memory"));
                };
                if !g.protected {
                    crate::fail(format_args!("VM {h}: a normal VM reported sharing"));
                }
                let before = hyp_denied();
                if v == demo::CMD_SHARED {
                    let faults = probe_r(pa, pages);
                    println!(
                        "demo: VM {h}: the {pages} pages it shared (MEM_SHARE): {} readable by the host",
                        pages - faults
                    );
                    if faults != 0 {
                        crate::fail(format_args!(
                            "VM {h}: {faults} of {pages} shared pages were not readable"
                        ));
                    }
                    SHARED.fetch_add(pages, Ordering::SeqCst);
                } else {
                    let faults = probe_rw(pa, pages);
                    let counted = hyp_denied() - before;
                    println!(
                        "demo: VM {h}: after MEM_UNSHARE: {faults} of {} host reads+writes of those pages faulted (hypervisor counted {counted})",
                        2 * pages
                    );
                    if faults != 2 * pages || counted != faults {
                        crate::fail(format_args!(
                            "VM {h}: {} of {} accesses to unshared pages were not refused",
                            2 * pages - faults,
                            2 * pages
                        ));
                    }
                    EXPECT_DENIED.fetch_add(2 * pages, Ordering::SeqCst);
                }
            }
            demo::CMD_RESULT_OK => {
                GUESTS_OK.fetch_add(1, Ordering::SeqCst);
            }
            demo::CMD_RESULT_FAIL => {
                crate::fail(format_args!("VM {h} reported a failed check"));
            }
            _ => {}
        },
        _ => {}
    }
}

/// After VM_DESTROY of a protected VM: every reclaimed page must read zero.
pub fn check_scrubbed(g: &Guest, scrubbed: u64) {
    let h = g.handle.0;
    let pages = GUEST_RAM / PAGE;
    if scrubbed != pages {
        crate::fail(format_args!(
            "VM {h}: {scrubbed} pages scrubbed, {pages} donated"
        ));
    }
    let (nonzero, faults) = guarded(|| {
        let mut nonzero = 0u64;
        for w in 0..GUEST_RAM / 8 {
            if ldr64(g.ram_pa + 8 * w) != 0 {
                nonzero += 1;
            }
        }
        nonzero
    });
    println!(
        "demo: VM {h} destroyed: {scrubbed} pages scrubbed; the host read them back: {}",
        if nonzero == 0 && faults == 0 {
            "all zero"
        } else {
            "NOT ZERO"
        }
    );
    if nonzero != 0 || faults != 0 {
        crate::fail(format_args!(
            "VM {h}: {nonzero} non-zero words and {faults} faults in reclaimed memory"
        ));
    }
}

/// Searches all host RAM for the secrets of `handles` (8-byte aligned, as
/// the guests store them). The host holds each secret only XORed with a
/// mask, so the search cannot find its own needle.
pub fn scan_secrets(ram_base: u64, ram_size: u64, handles: &[u64]) {
    let mask = core::hint::black_box(0xa5c3_5a3c_9669_f00f_u64);
    let mut needles = [[0u64; 2]; 8];
    for (n, &h) in needles.iter_mut().zip(handles) {
        let s = demo::secret(h);
        *n = [s[0] ^ mask, s[1] ^ mask];
    }
    let needles = &needles[..handles.len().min(8)];
    // The search must be able to find a secret: plant VM handles[0]'s in a
    // scratch page, search that page, then erase it.
    if let (Some(&h), Some(page)) = (handles.first(), crate::alloc_pages(PAGE)) {
        let s = demo::secret(h);
        // SAFETY: a fresh page of host RAM nobody else uses.
        unsafe {
            ((page + 0x100) as *mut u64).write_volatile(s[0]);
            ((page + 0x108) as *mut u64).write_volatile(s[1]);
        }
        let hit = find(page, PAGE, needles, mask).0;
        for w in 0..PAGE / 8 {
            // SAFETY: as above.
            unsafe { ((page + 8 * w) as *mut u64).write_volatile(0) };
        }
        if hit != Some((0, page + 0x100)) {
            crate::fail(format_args!("the secret search missed a planted secret"));
        }
        println!(
            "demo: secret search self-test: found a planted copy of VM {h}'s secret, erased it"
        );
    }
    let (found, faults) = find(ram_base, ram_size, needles, mask);
    if let Some((i, at)) = found {
        crate::fail(format_args!(
            "the secret of VM {} is in host memory at {at:#x}",
            handles[i]
        ));
    }
    if faults != 0 {
        crate::fail(format_args!("{faults} faults reading the host's own RAM"));
    }
    println!(
        "demo: secrets of VM {} not found in {} MiB of host-readable RAM at {ram_base:#x}",
        Join(handles),
        ram_size >> 20
    );
}

struct Join<'a>(&'a [u64]);

impl core::fmt::Display for Join<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, h) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i + 1 == self.0.len() { " and " } else { ", " })?;
            }
            write!(f, "{h}")?;
        }
        Ok(())
    }
}

/// One `ldp` of the 16 bytes at `pa` (POISON twice if it faulted).
fn ldp(pa: u64) -> (u64, u64) {
    let (mut a, mut b) = (POISON, POISON);
    // SAFETY: as `ldr64`: a single load instruction.
    unsafe {
        asm!("ldp {a}, {b}, [{p}]", a = inout(reg) a, b = inout(reg) b, p = in(reg) pa, options(nostack, preserves_flags));
    }
    (a, b)
}

/// Searches `[base, base + size)` (8-byte steps) for any of the masked
/// `needles`: the needle index and address found, and the faults taken.
fn find(base: u64, size: u64, needles: &[[u64; 2]], mask: u64) -> (Option<(usize, u64)>, u64) {
    guarded(|| {
        let mut a = base;
        let end = base + size;
        // Two words per load; a secret starting at the second word of a
        // pair continues in the next pair.
        while a + 16 <= end {
            let (w0, w1) = ldp(a);
            let (x0, x1) = (w0 ^ mask, w1 ^ mask);
            for (i, n) in needles.iter().enumerate() {
                if x0 == n[0] && x1 == n[1] {
                    return Some((i, a));
                }
                if x1 == n[0] && a + 24 <= end && ldr64(a + 16) ^ mask == n[1] {
                    return Some((i, a + 8));
                }
            }
            a += 16;
        }
        None
    })
}
