//! `arg=1`: a protected guest whose driver keeps its virtqueue in private
//! memory (never shared with MEM_SHARE), as a broken or hostile driver
//! would, and notifies the device anyway. The host serving the device then
//! reads pages the hypervisor refuses it: the host must survive that (the
//! device goes to DEVICE_NEEDS_RESET, nothing else happens), not crash and
//! take every other VM down with it. This guest drives the console's
//! virtio-mmio registers itself (virtio 1.2, 4.2.2, 4.2.3) so that its own
//! waits are bounded, and prints what the device's status says.

use core::cell::UnsafeCell;
use guest_rt::{demo, println};

/// The console's transmitq (virtio 1.2, 5.3.2).
const TXQ: u32 = 1;
/// Device status bits (2.1).
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 0x40;

/// One private page: descriptor table at 0, available ring at 0x100, used
/// ring at 0x200, the buffer at 0x400.
#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: only vCPU 0 touches it, in `run`.
unsafe impl Sync for Page {}
static RINGS: Page = Page(UnsafeCell::new([0; 4096]));

fn reg(off: u64) -> *mut u32 {
    (demo::CONSOLE_IPA + off) as *mut u32
}

fn wr(off: u64, v: u32) {
    // SAFETY: a register of the console's virtio-mmio window, guarded.
    unsafe { reg(off).write_volatile(v) }
}

fn rd(off: u64) -> u32 {
    // SAFETY: as `wr`.
    unsafe { reg(off).read_volatile() }
}

/// Sets up the transmitq over private memory, queues one buffer, notifies,
/// and returns the device status the driver then reads.
pub fn run(handle: u64) -> u32 {
    let base = RINGS.0.get() as u64;
    // SAFETY: this guest's own page; the device is not live yet.
    let page = unsafe { &mut *RINGS.0.get() };
    // Descriptor 0: 5 bytes at +0x400, device-readable, no next.
    page[0..8].copy_from_slice(&(base + 0x400).to_le_bytes());
    page[8..12].copy_from_slice(&5u32.to_le_bytes());
    page[0x400..0x405].copy_from_slice(b"leak\n");
    // Available ring: flags 0, ring[0] = 0, idx = 1.
    page[0x102..0x104].copy_from_slice(&1u16.to_le_bytes());
    wr(0x070, 0);
    wr(0x070, ACKNOWLEDGE | DRIVER);
    // Accept what the device offers in the high word (VERSION_1, and
    // ACCESS_PLATFORM for a protected VM); nothing of the low word.
    wr(0x014, 1);
    let high = rd(0x010);
    wr(0x024, 1);
    wr(0x020, high);
    wr(0x024, 0);
    wr(0x020, 0);
    wr(0x070, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    wr(0x030, TXQ);
    wr(0x038, 4);
    for (lo, addr) in [(0x080, base), (0x090, base + 0x100), (0x0a0, base + 0x200)] {
        wr(lo, addr as u32);
        wr(lo + 4, (addr >> 32) as u32);
    }
    wr(0x044, 1);
    wr(0x070, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    println!(
        "guest-virtio: VM {handle}: arg=1: console transmitq in private memory at {base:#x}, notifying"
    );
    wr(0x050, TXQ);
    let status = rd(0x070);
    println!(
        "guest-virtio: VM {handle}: device status {status:#x}{}",
        if status & NEEDS_RESET != 0 {
            " (DEVICE_NEEDS_RESET)"
        } else {
            ""
        }
    );
    status
}
