//! The Linux VM's disk (issue 18 items 2 and 4): QEMU's `virtio-blk-pci`,
//! which the host drives with `virtio-drivers` behind the hypervisor's SMMU
//! (`pci`), served to the guest as a virtio-mmio block device from the
//! `virtio-dev` crate, with a level-triggered SPI the host raises and
//! lowers with IRQ_LINE.
//!
//! The guest sees the device where QEMU `virt` puts its first virtio-mmio
//! transport ([`BLK_IPA`], interrupt SPI [`BLK_SPI`]), in the device tree
//! the host writes for it (`dtb::linux_dtb`). Every request is served
//! inside the MMIO exit of the guest's QueueNotify, on the host CPU that
//! took it: the guest's data goes through a bounce page on the host's
//! stack to the PCI device, one PCI request per page of the guest's
//! request (`BlockBackend::read_run`), and the completion raises the SPI before the exit
//! returns. What the guest's driver does wrong fails its request or breaks
//! the device (`virtio-dev`), never the host; a failing PCI request is an
//! I/O error for the guest.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::println;
use hyp_abi::{BootInfo, HostError};
use virtio_dev::blk::{Block, BlockBackend, IoError, SECTOR_SIZE};
use virtio_dev::MmioTransport;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::PciTransport;

use crate::demo::GuestRam;
use crate::dtb::VirtioMmio;
use crate::hostif::{call, call_full};
use crate::pci::HostHal;
use crate::Guest;

/// The block device's register window (QEMU virt's first virtio-mmio
/// transport) and its size.
pub const BLK_IPA: u64 = 0x0a00_0000;
pub const BLK_SIZE: u64 = 0x200;
/// Its interrupt: SPI 16, INTID 48 (QEMU virt's first virtio-mmio SPI).
pub const BLK_SPI: u32 = 16;
const BLK_INTID: u64 = BLK_SPI as u64 + 32;
/// virtio-mmio's Status register (4.2.2): writing 0 resets the device.
const STATUS: u64 = 0x070;

/// The host's PCI disk as the guest's block device's backend.
struct PciDisk {
    blk: VirtIOBlk<HostHal, PciTransport>,
    /// PCI requests that failed.
    errors: u64,
}

impl BlockBackend for PciDisk {
    fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), IoError> {
        let s = usize::try_from(sector).map_err(|_| IoError)?;
        self.blk.read_blocks(s, buf).map_err(|_| {
            self.errors += 1;
            IoError
        })
    }

    fn write(&mut self, sector: u64, data: &[u8; SECTOR_SIZE]) -> Result<(), IoError> {
        let s = usize::try_from(sector).map_err(|_| IoError)?;
        self.blk.write_blocks(s, data).map_err(|_| {
            self.errors += 1;
            IoError
        })
    }

    /// A run (up to a page) is one PCI request: 8 times fewer than
    /// sector by sector for a 4 KiB read.
    fn read_run(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let s = usize::try_from(sector).map_err(|_| IoError)?;
        self.blk.read_blocks(s, buf).map_err(|_| {
            self.errors += 1;
            IoError
        })
    }

    fn write_run(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError> {
        let s = usize::try_from(sector).map_err(|_| IoError)?;
        self.blk.write_blocks(s, data).map_err(|_| {
            self.errors += 1;
            IoError
        })
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.blk.flush().map_err(|_| {
            self.errors += 1;
            IoError
        })
    }
}

/// The disk, once the host found one.
struct Disk {
    dev: MmioTransport<Block<PciDisk>>,
    /// The SPI's level as last set.
    level: bool,
}

static DISK: spin::Once<spin::Mutex<Disk>> = spin::Once::new();
/// The VM the disk is attached to (0: none).
static OWNER: AtomicU64 = AtomicU64::new(0);
/// A device error was reported already (one line, not one per access).
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Finds QEMU's virtio-blk-pci, if the host has one, and makes it the
/// Linux VM's disk. Called once, before the VM is created.
pub fn init(info: &BootInfo, protected: bool) {
    let Some(mut pci) = crate::pci::init(info) else {
        return;
    };
    let Some(df) = pci.blk else {
        println!("host: linux: no virtio-blk-pci device: no disk");
        return;
    };
    let blk = match VirtIOBlk::<HostHal, _>::new(pci.transport(df)) {
        Ok(b) => b,
        Err(e) => crate::fail(format_args!("pci: {df}: virtio-blk: {e:?}")),
    };
    let cap = blk.capacity();
    println!(
        "host: linux: disk: virtio-blk-pci at {df}, {cap} sectors ({} MiB){}, as virtio-mmio at IPA {BLK_IPA:#x}, SPI {BLK_SPI}",
        (cap * SECTOR_SIZE as u64) >> 20,
        if blk.readonly() { ", read-only" } else { "" },
    );
    let dev = MmioTransport::new(Block::new(PciDisk { blk, errors: 0 }), protected);
    DISK.call_once(|| spin::Mutex::new(Disk { dev, level: false }));
}

/// The devices for the VM's device tree.
pub fn dt_nodes() -> &'static [VirtioMmio] {
    const BLK: [VirtioMmio; 1] = [VirtioMmio {
        ipa: BLK_IPA,
        size: BLK_SIZE,
        spi: BLK_SPI,
    }];
    if DISK.get().is_some() {
        &BLK
    } else {
        &[]
    }
}

/// Attaches the disk to VM `h` before its first run: the device reset
/// (a restarted VM's driver starts over), its SPI declared.
pub fn attach(h: u64, g_ram_pa: u64, ram: u64) {
    let Some(d) = DISK.get() else {
        return;
    };
    let mut d = d.lock();
    let mem = GuestRam::new(g_ram_pa, ram);
    d.dev.write(&mem, STATUS, 4, 0);
    d.level = false;
    if let Err(e) = call(hyp_abi::IRQ_DECLARE, [h, BLK_INTID, 0, 0]) {
        crate::fail(format_args!(
            "IRQ_DECLARE of SPI {BLK_SPI} for VM {h}: {e:?}"
        ));
    }
    OWNER.store(h, Ordering::Release);
}

/// Whether `ipa` of VM `h` is the disk's window.
pub fn owns(h: u64, ipa: u64) -> bool {
    OWNER.load(Ordering::Acquire) == h && (BLK_IPA..BLK_IPA + BLK_SIZE).contains(&ipa)
}

/// An MMIO access (`flags` as [`hyp_abi::mmio_flags`] encodes them) of
/// guest `g` to the disk's window; the value of a read.
pub fn mmio(g: &Guest, ipa: u64, flags: u64, value: u64) -> u64 {
    let Some(d) = DISK.get() else {
        return 0;
    };
    let write = flags & (1 << 8) != 0;
    let size = (flags & 0xf) as u8;
    let off = ipa - BLK_IPA;
    let mut d = d.lock();
    if !write {
        return d.dev.read(off, size);
    }
    let mem = GuestRam::new(g.ram_pa, g.ram);
    let level = d.dev.write(&mem, off, size, value);
    if let Some(e) = d.dev.take_error() {
        if !REPORTED.swap(true, Ordering::AcqRel) {
            println!("host: VM {} disk: {e} (first device error)", g.handle.0);
        }
    }
    if level != d.level {
        d.level = level;
        let r = call_full(
            hyp_abi::IRQ_LINE,
            [g.handle.0, BLK_INTID, u64::from(level), 0],
        );
        if let Some(e) = HostError::from_code(r[0]) {
            crate::fail(format_args!("IRQ_LINE of SPI {BLK_SPI}: {e:?}"));
        }
    }
    0
}

/// What the disk did, for the end of the run.
pub fn report() {
    if let Some(d) = DISK.get() {
        let d = d.lock();
        println!(
            "host: linux: disk: {} PCI requests failed; device {}",
            d.dev.device().backend().errors,
            if d.dev.is_broken() {
                "broken by its driver"
            } else {
                "sound"
            }
        );
    }
}
