//! What the protected-guest demo's host VM and its guests (`guest-virtio`)
//! agree on: where the devices are, the demo control register, and how a
//! guest's secret is derived (so the host can search for it without ever
//! holding it in memory).
//!
//! The devices sit in the host's MMIO window (`hyp_abi::layout::HOST_MMIO_IPA`,
//! 0x0a000000..0x0a004000; the hypervisor forwards accesses there to the
//! host, a protected VM's only on the pages it guarded with MMIO_GUARD),
//! 0x200 apart as on QEMU virt's virtio-mmio transports.

use hyp_abi::layout::HOST_MMIO_IPA;

/// virtio-mmio console (device ID 3).
pub const CONSOLE_IPA: u64 = HOST_MMIO_IPA;
/// virtio-mmio block device (device ID 2).
pub const BLK_IPA: u64 = HOST_MMIO_IPA + VIRTIO_MMIO_SIZE;
/// Size of one virtio-mmio transport's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// The console's and the block device's interrupts (INTIDs: SPIs 16 and
/// 17, QEMU virt's first virtio-mmio SPIs), level-triggered: the host
/// declares them before a guest's first run (IRQ_DECLARE) and holds each
/// high (IRQ_LINE) while its device's InterruptStatus is non-zero.
pub const CONSOLE_INTID: u32 = 48;
pub const BLK_INTID: u32 = 49;

/// Read: how many VMs the host has begun (bits [15:0]) and finished (bits
/// [31:16]) destroying while others ran (guest option `reap`); the
/// neighbour-latency probe (guest-bench) polls it.
pub const REAPED_IPA: u64 = HOST_MMIO_IPA + 0x3ff8;

/// The demo control device: a guest tells the host about its bounce
/// buffers so the host can check their visibility at known points.
pub const CTL_IPA: u64 = HOST_MMIO_IPA + 0x3000;
/// Write: first IPA of the guest's bounce-buffer pool.
pub const CTL_POOL_IPA: u64 = 0x00;
/// Write: pages in the pool.
pub const CTL_POOL_PAGES: u64 = 0x08;
/// Write: a command ([`CMD_SHARED`], [`CMD_UNSHARED`], [`CMD_RESULT_OK`],
/// [`CMD_RESULT_FAIL`]).
pub const CTL_CMD: u64 = 0x10;
/// The pool is shared (MEM_SHARE): the host checks it can read every page.
pub const CMD_SHARED: u64 = 1;
/// The pool was unshared (MEM_UNSHARE): the host checks every read and
/// write of it faults.
pub const CMD_UNSHARED: u64 = 2;
/// The guest checked everything it does and all was well.
pub const CMD_RESULT_OK: u64 = 3;
/// The guest found a problem (it printed it on its console).
pub const CMD_RESULT_FAIL: u64 = 4;

/// The host's interrupt test device (guest `guest-irq`): writing
/// [`IRQ_DEV_REQUEST`] makes the host raise SPI [`IRQ_DEV_SPI`] of the VM
/// (IRQ_LINE, level 1); the line stays high until the guest writes
/// [`IRQ_DEV_ACK`]; [`IRQ_DEV_STATUS`] reads 1 while it is high.
pub const IRQ_DEV_IPA: u64 = HOST_MMIO_IPA + 0x2000;
/// The SPI the interrupt test device raises (declared with IRQ_DECLARE).
pub const IRQ_DEV_SPI: u32 = 40;
/// Write: raise the line.
pub const IRQ_DEV_REQUEST: u64 = 0x00;
/// Read: 1 while the line is high.
pub const IRQ_DEV_STATUS: u64 = 0x08;
/// Write: lower the line (the driver's acknowledgement).
pub const IRQ_DEV_ACK: u64 = 0x10;

/// splitmix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number
/// generators", OOPSLA 2014).
#[must_use]
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 16-byte secret protected VM `handle` writes into its private
/// memory, as two words. It is computed, never stored in an image, so the
/// only copies in RAM are the ones the guest writes.
#[must_use]
pub fn secret(handle: u64) -> [u64; 2] {
    let seed = core::hint::black_box(0x5ec2_e7ed_u64) ^ (handle << 40);
    [splitmix64(seed), splitmix64(seed ^ 0xffff)]
}
