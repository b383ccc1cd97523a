//! The host's PCIe devices: QEMU's virtio-blk and virtio-net on the
//! generic ECAM host bridge, driven with `virtio-drivers`.
//!
//! The hypervisor maps the bridge's windows into the host's stage 2 only
//! when an SMMU confines what its devices can reach (`hyp_abi::PciWindows`
//! in the boot information; zero otherwise). Nothing else assigns BARs on
//! QEMU `virt` without firmware, so the host does: each memory BAR of each
//! function on bus 0 gets a naturally aligned range of the 32-bit window,
//! then memory decoding and bus mastering are turned on.
//!
//! DMA memory is host RAM, identity-mapped: the address a device is given
//! is the host's IPA, which the SMMU translates through the host's stage 2.
//! [`redirect_next`] makes the next buffer of one request point somewhere
//! else: the hostile host of `attack=dma`.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::println;
use hyp_abi::BootInfo;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, DeviceFunction, MemoryBarType, MmioCam, PciRoot,
};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// DMA memory: one 2 MiB run of host RAM, handed out a page at a time and
/// never reused (the host's drivers live as long as the host). The Linux
/// VM's devices take about 60 KiB of it: virtio-blk's queue (2 pages),
/// virtio-net's two queues of 16 (4 pages), its 16 receive buffers of
/// 2 KiB (8 pages) and its transmit buffer (1 page).
static DMA_NEXT: AtomicU64 = AtomicU64::new(0);
static DMA_END: AtomicU64 = AtomicU64::new(0);
const DMA_POOL: u64 = 2 << 20;

/// `attack=dma`: the buffer whose address `share` replaces, and with what.
static REDIRECT_FROM: AtomicU64 = AtomicU64::new(0);
static REDIRECT_TO: AtomicU64 = AtomicU64::new(0);

/// Makes the device address of `buffer` (when it is next shared) `to`
/// instead of the buffer's own: a driver that lies to its device.
pub fn redirect_next(buffer: *const u8, to: u64) {
    REDIRECT_TO.store(to, Ordering::Release);
    REDIRECT_FROM.store(buffer as u64, Ordering::Release);
}

/// `virtio-drivers`' platform interface for the host.
pub struct HostHal;

// SAFETY: dma_alloc returns zeroed, page-aligned host RAM nobody else uses;
// the host's RAM is identity-mapped at stage 2 and (through the SMMU) for
// its devices, so a buffer's address is its device address; `share` lies
// only for the buffer `redirect_next` named, which is the attack.
unsafe impl Hal for HostHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let bytes = (pages * PAGE_SIZE) as u64;
        if DMA_NEXT.load(Ordering::Acquire) == 0 {
            let Some(base) = crate::alloc_pages(DMA_POOL) else {
                crate::fail(format_args!("no host memory for DMA"));
            };
            DMA_END.store(base + DMA_POOL, Ordering::Release);
            DMA_NEXT.store(base, Ordering::Release);
        }
        let at = DMA_NEXT.fetch_add(bytes, Ordering::AcqRel);
        if at + bytes > DMA_END.load(Ordering::Acquire) {
            crate::fail(format_args!("the host's DMA pool is exhausted"));
        }
        // SAFETY: fresh pages of host RAM, identity-mapped.
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, bytes as usize) };
        (
            at as PhysAddr,
            NonNull::new(at as *mut u8).expect("RAM is not at 0"),
        )
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("no device at 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let at = buffer.cast::<u8>().as_ptr() as u64;
        if at != 0
            && REDIRECT_FROM
                .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return REDIRECT_TO.load(Ordering::Acquire) as PhysAddr;
        }
        at as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The host's PCI bus 0.
pub struct Pci {
    root: PciRoot<MmioCam<'static>>,
    /// The windows and INTx lines the hypervisor gave.
    windows: hyp_abi::PciWindows,
    /// The virtio-blk function, if any.
    pub blk: Option<DeviceFunction>,
    /// The virtio-net function, if any.
    pub net: Option<DeviceFunction>,
}

/// Finds the bridge, assigns BARs and lists bus 0; `None` when the
/// hypervisor gave the host no PCIe windows.
pub fn init(info: &BootInfo) -> Option<Pci> {
    let w = info.pci;
    if w.ecam[1] == 0 {
        println!("host: pci: no PCIe windows (no SMMU confines device DMA)");
        return None;
    }
    // SAFETY: the hypervisor mapped the whole ECAM window (256 MiB) into
    // our stage 2; nothing else in the host touches it.
    let cam = unsafe { MmioCam::new(w.ecam[0] as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
    let (mut next, end) = (w.mmio[0], w.mmio[0] + w.mmio[1]);
    let (mut blk, mut net) = (None, None);
    let found: alloc::vec::Vec<_> = root.enumerate_bus(0).collect();
    for (df, dfi) in found {
        let mut bar = 0u8;
        while bar < 6 {
            let info = match root.bar_info(df, bar) {
                Ok(Some(i)) => i,
                Ok(None) | Err(_) => {
                    bar += 1;
                    continue;
                }
            };
            let two = info.takes_two_entries();
            if let BarInfo::Memory {
                address_type, size, ..
            } = info
            {
                let at = next.next_multiple_of(size.max(4096));
                if at + size > end {
                    crate::fail(format_args!("pci: the memory window is full at {df}"));
                }
                next = at + size;
                match address_type {
                    MemoryBarType::Width64 => root.set_bar_64(df, bar, at),
                    _ => root.set_bar_32(df, bar, at as u32),
                }
            }
            bar += if two { 2 } else { 1 };
        }
        root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        println!(
            "host: pci: {df} vendor {:#06x} device {:#06x} class {:#04x}",
            dfi.vendor_id, dfi.device_id, dfi.class
        );
        // virtio 1.x: vendor 0x1af4, device 0x1040 + type: 2 block, 1
        // network (only modern devices: `disable-legacy=on`).
        match (dfi.vendor_id, dfi.device_id) {
            (0x1af4, 0x1042) => blk = blk.or(Some(df)),
            (0x1af4, 0x1041) => net = net.or(Some(df)),
            _ => {}
        }
    }
    Some(Pci {
        root,
        windows: w,
        blk,
        net,
    })
}

impl Pci {
    /// The INTID of `df`'s INTx line: its configuration space's Interrupt
    /// Pin (offset 0x3d, PCI Local Bus 6.2.4; 0 = none) through the lines the
    /// hypervisor routes to the host (`PciWindows::intx_of`). `None` when the
    /// function has no pin or the host gets no device interrupts.
    pub fn intx(&self, df: DeviceFunction) -> Option<u32> {
        let at = self.windows.ecam[0]
            + (u64::from(df.bus) << 20)
            + (u64::from(df.device) << 15)
            + (u64::from(df.function) << 12)
            + 0x3c;
        // SAFETY: inside the ECAM window the hypervisor mapped (bus 0, and
        // device and function below 32 and 8); a 32-bit aligned read of
        // configuration space has no side effect.
        let word = unsafe { core::ptr::read_volatile(at as *const u32) };
        self.windows.intx_of(df.device, (word >> 8) as u8)
    }

    /// A transport to `df` (a fresh one resets the device when its driver
    /// is built).
    pub fn transport(&mut self, df: DeviceFunction) -> HostTransport {
        match PciTransport::new::<HostHal, _>(&mut self.root, df) {
            Ok(inner) => HostTransport { inner, offered: 0 },
            Err(e) => crate::fail(format_args!("pci: {df}: no virtio transport: {e:?}")),
        }
    }
}

/// VIRTIO_F_ACCESS_PLATFORM (virtio 1.2 section 6): the device's DMA goes
/// through a platform IOMMU (here the SMMU; QEMU's `iommu_platform=on`).
const ACCESS_PLATFORM: u64 = 1 << 33;

/// A PCI transport whose driver accepts VIRTIO_F_ACCESS_PLATFORM when the
/// device offers it. `virtio-drivers`' device drivers never list it, and a
/// device that offers it refuses FEATURES_OK from a driver that does not
/// accept it (QEMU: `virtio_validate_features`): its status would stay
/// ACKNOWLEDGE | DRIVER, which QEMU's virtio-net honours (it transmits
/// nothing) and its virtio-blk happens to ignore. The host's addresses
/// are what the SMMU translates, so accepting it changes nothing else.
pub struct HostTransport {
    inner: PciTransport,
    /// The device's features, as last read.
    offered: u64,
}

impl Transport for HostTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.offered = self.inner.read_device_features();
        self.offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner
            .write_driver_features(driver_features | (self.offered & ACCESS_PLATFORM));
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue);
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size);
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
