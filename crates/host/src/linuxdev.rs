//! The Linux VM's disk and network (issue 18 items 2, 4 and 6): QEMU's
//! `virtio-blk-pci` and `virtio-net-pci`, which the host drives with
//! `virtio-drivers` behind the hypervisor's SMMU (`pci`), served to the
//! guest as virtio-mmio devices from the `virtio-dev` crate, each with a
//! level-triggered SPI the host raises and lowers with IRQ_LINE.
//!
//! The guest sees the devices where QEMU `virt` puts its first two
//! virtio-mmio transports ([`BLK_IPA`], SPI [`BLK_SPI`]; [`NET_IPA`], SPI
//! [`NET_SPI`]), in the device tree the host writes for it
//! (`dtb::linux_dtb`).
//!
//! Disk: every request is served inside the MMIO exit of the guest's
//! QueueNotify, on the host CPU that took it: the guest's data goes
//! through a bounce page on the host's stack to the PCI device, one PCI
//! request per page of the guest's request (`BlockBackend::read_run`), and
//! the completion raises the SPI before the exit returns. What the guest's driver does wrong
//! fails its request or breaks the device (`virtio-dev`), never the host; a
//! failing PCI request is an I/O error for the guest.
//!
//! The disk's PCI requests complete while the host waits for them, so its
//! used-buffer interrupts are suppressed (VIRTQ_AVAIL_F_NO_INTERRUPT); its
//! INTx handler only reads (and so clears) its interrupt status, e.g. a
//! configuration change.
//!
//! Network: a frame the guest transmits is copied into one of 8 DMA
//! buffers and handed to the PCI device inside the MMIO exit of its
//! transmitq notification, and the guest's buffer goes back at once: the
//! host does not wait for QEMU to send it (it reaps sent buffers at the
//! next transmission). While all 8 are still QEMU's, the guest's frames
//! stay in its transmitq (back-pressure: its driver sees the queue fill and
//! waits) until the card's INTx says QEMU sent some, and [`net_irq`] takes
//! them up again: nothing waits and nothing is dropped. Received
//! frames come with the PCI device's INTx interrupt, which the hypervisor
//! routes to host vCPU 0 (`intx`): its handler ([`net_irq`]) reads the
//! device's interrupt status (which lowers the line), then moves what the
//! receive queue holds into the guest. Nothing polls the device. A frame goes straight into
//! the guest's next posted receive buffer and raises the SPI. While the
//! guest's running driver has no buffer posted, frames stay in the PCI
//! device's receive ring (16 of them; then QEMU queues or drops) and go in
//! when the guest posts buffers (its receiveq notification), so a burst is
//! not lost; frames for a driver that is not running, or that its buffer
//! cannot hold, are dropped and counted ([`report`]). The host never waits
//! for the guest.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::println;
use hyp_abi::{BootInfo, HostError};
use virtio_dev::blk::{Block, BlockBackend, IoError, SECTOR_SIZE};
use virtio_dev::net::{Net, NetBackend, RxError, NET_HDR_LEN};
use virtio_dev::{DeviceStatus, MmioTransport};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};

use crate::demo::GuestRam;
use crate::dtb::VirtioMmio;
use crate::hostif::{call, call_full};
use crate::pci::{HostHal, HostTransport};
use crate::Guest;
use virtio_drivers::transport::pci::bus::DeviceFunction;

/// The block device's register window (QEMU virt's first virtio-mmio
/// transport) and its size.
pub const BLK_IPA: u64 = 0x0a00_0000;
pub const BLK_SIZE: u64 = 0x200;
/// Its interrupt: SPI 16, INTID 48 (QEMU virt's first virtio-mmio SPI).
pub const BLK_SPI: u32 = 16;
const BLK_INTID: u64 = BLK_SPI as u64 + 32;
/// The network device's window (QEMU virt's second virtio-mmio
/// transport) and its size.
pub const NET_IPA: u64 = 0x0a00_0200;
pub const NET_SIZE: u64 = 0x200;
/// Its interrupt: SPI 17, INTID 49.
pub const NET_SPI: u32 = 17;
const NET_INTID: u64 = NET_SPI as u64 + 32;
/// virtio-mmio's Status register (4.2.2): writing 0 resets the device.
const STATUS: u64 = 0x070;

/// The host's PCI disk as the guest's block device's backend.
struct PciDisk {
    blk: VirtIOBlk<HostHal, HostTransport>,
    /// PCI requests that failed.
    errors: u64,
    /// PCI requests made.
    requests: u64,
    /// Counter ticks spent inside them: virtio-drivers' calls wait for
    /// the device by spinning on its used ring, so under `-icount
    /// shift=0` this is the instructions the host spent per request
    /// (`report`; the I/O bench's breakdown).
    ticks: u64,
}

impl PciDisk {
    /// Makes one PCI request with `f`, counted, timed, failures counted.
    fn request(
        &mut self,
        f: impl FnOnce(&mut VirtIOBlk<HostHal, HostTransport>) -> virtio_drivers::Result,
    ) -> Result<(), IoError> {
        let start = guest_rt::gic::counter();
        let r = f(&mut self.blk);
        self.ticks += guest_rt::gic::counter().wrapping_sub(start);
        self.requests += 1;
        r.map_err(|_| {
            self.errors += 1;
            IoError
        })
    }
}

/// A run (up to a page) is one PCI request: 8 times fewer than sector by
/// sector for a 4 KiB read; a single sector is a run of one.
impl BlockBackend for PciDisk {
    fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), IoError> {
        self.read_run(sector, buf)
    }

    fn write(&mut self, sector: u64, data: &[u8; SECTOR_SIZE]) -> Result<(), IoError> {
        self.write_run(sector, data)
    }

    fn read_run(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let s = usize::try_from(sector).map_err(|_| IoError)?;
        self.request(|b| b.read_blocks(s, buf))
    }

    fn write_run(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError> {
        let s = usize::try_from(sector).map_err(|_| IoError)?;
        self.request(|b| b.write_blocks(s, data))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.request(|b| b.flush())
    }
}

/// The disk, once the host found one.
struct Disk {
    dev: MmioTransport<Block<PciDisk>>,
    /// The SPI's level as last set.
    level: bool,
    /// Its INTx interrupts (status reads only).
    irqs: u64,
}

static DISK: spin::Once<spin::Mutex<Disk>> = spin::Once::new();
/// The VM the disk is attached to (0: none).
static OWNER: AtomicU64 = AtomicU64::new(0);
/// A device error was reported already (one line, not one per access).
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Finds QEMU's virtio-blk-pci and virtio-net-pci, if the host has them,
/// and makes them the Linux VM's disk and network. Called once, before the
/// VM is created.
pub fn init(info: &BootInfo, protected: bool) {
    let Some(mut pci) = crate::pci::init(info) else {
        return;
    };
    if info.pci.intx != [0; 4] && (pci.blk.is_some() || pci.net.is_some()) {
        crate::intx::init();
    }
    match pci.blk {
        Some(df) => {
            init_disk(&mut pci, df, protected);
            irq_line(&pci, df, "disk", disk_irq);
        }
        None => println!("host: linux: no virtio-blk-pci device: no disk"),
    }
    match pci.net {
        Some(df) => {
            init_net(&mut pci, df, protected);
            irq_line(&pci, df, "network", net_irq);
        }
        None => println!("host: linux: no virtio-net-pci device: no network"),
    }
}

/// Registers `handler` for `df`'s INTx line. Without one the network's
/// received frames would never reach the guest: that fails the host.
fn irq_line(pci: &crate::pci::Pci, df: DeviceFunction, what: &str, handler: crate::intx::Handler) {
    match pci.intx(df) {
        Some(intid) => {
            crate::intx::register(intid, handler);
            println!("host: linux: {what}: {df} interrupts on INTx INTID {intid}");
        }
        None if what == "network" => crate::fail(format_args!(
            "pci: {df}: no INTx line routed to the host: received frames would never be seen"
        )),
        None => println!("host: linux: {what}: {df} has no INTx line routed to the host"),
    }
}

#[inline(never)]
fn init_disk(pci: &mut crate::pci::Pci, df: DeviceFunction, protected: bool) {
    let blk = match VirtIOBlk::<HostHal, _>::new(pci.transport(df)) {
        Ok(b) => b,
        Err(e) => crate::fail(format_args!("pci: {df}: virtio-blk: {e:?}")),
    };
    let mut blk = blk;
    // Served synchronously: the host waits for each completion.
    blk.disable_interrupts();
    let cap = blk.capacity();
    println!(
        "host: linux: disk: virtio-blk-pci at {df}, {cap} sectors ({} MiB){}, as virtio-mmio at IPA {BLK_IPA:#x}, SPI {BLK_SPI}",
        (cap * SECTOR_SIZE as u64) >> 20,
        if blk.readonly() { ", read-only" } else { "" },
    );
    let dev = MmioTransport::new(
        Block::new(PciDisk {
            blk,
            errors: 0,
            requests: 0,
            ticks: 0,
        }),
        protected,
    );
    DISK.call_once(|| {
        spin::Mutex::new(Disk {
            dev,
            level: false,
            irqs: 0,
        })
    });
}

/// The disk's INTx: reads its interrupt status, which lowers the line.
fn disk_irq() {
    if let Some(d) = DISK.get() {
        let mut d = d.lock();
        d.irqs += 1;
        let _ = d.dev.device_mut().backend_mut().blk.ack_interrupt();
    }
}

/// The network device's queue size on the PCI side, and so how many
/// receive buffers the host keeps posted there. Small: `virtio-drivers`
/// keeps two arrays of this many entries per queue inside the driver,
/// which is built on the host's stack and moved into its static; 16 frames
/// in flight are plenty, as the host drains them at every interrupt.
const NIC_QUEUE: usize = 16;
/// One receive buffer: the 12-byte `virtio_net_hdr` and a 1518-byte frame
/// fit (virtio-drivers wants at least 1526 bytes).
const RX_BUF: usize = 2048;

/// The host's PCI network card as the guest's network device's backend.
struct PciNic {
    raw: VirtIONetRaw<HostHal, HostTransport, NIC_QUEUE>,
    /// The receive buffers: [`NIC_QUEUE`] of [`RX_BUF`] bytes of DMA
    /// memory from here, never freed.
    rx_base: usize,
    /// Which buffer each receive token (a descriptor head) holds.
    slot_of: [u16; NIC_QUEUE],
    /// The transmit buffers: [`TX_BUFS`] of [`TX_BUF`] bytes of DMA
    /// memory from here, never freed.
    tx_base: usize,
    /// The transmission each buffer holds while QEMU has it: its token and
    /// length. A frame goes out without waiting for QEMU to send it (the
    /// guest's buffer is returned once copied); a buffer is reaped when
    /// QEMU is done, at the next transmission.
    tx_inflight: [Option<(u16, usize)>; TX_BUFS],
    /// All buffers were in flight when the guest had frames to send: they
    /// wait in its transmitq until the card's INTx says one was sent.
    tx_blocked: bool,
    /// Times that happened.
    tx_waits: u64,
    tx_frames: u64,
    tx_bytes: u64,
    /// Frames the PCI device refused, or did not take in time.
    tx_errors: u64,
}

/// Transmit buffers in flight at most (a burst the guest sends goes out
/// without waiting for QEMU, up to this many frames).
const TX_BUFS: usize = 8;
/// One transmit buffer: the header and the largest frame fit.
const TX_BUF: usize = 2048;
const _: () = assert!(NET_HDR_LEN + virtio_dev::net::MAX_FRAME <= TX_BUF && TX_BUFS <= NIC_QUEUE);

impl PciNic {
    /// Receive buffer `slot`.
    fn rx_buf(&mut self, slot: u16) -> &'static mut [u8] {
        let at = self.rx_base + usize::from(slot) * RX_BUF;
        // SAFETY: [rx_base, rx_base + NIC_QUEUE * RX_BUF) is DMA memory
        // this device alone uses for as long as the host lives, and `slot`
        // is below NIC_QUEUE (tokens are checked against it). Only the PCI
        // device and this code touch buffer `slot`, one at a time: the
        // slice is used while the buffer is not posted, or handed back to
        // `receive_begin`, which owns it until the next completion.
        unsafe { core::slice::from_raw_parts_mut(at as *mut u8, RX_BUF) }
    }

    /// Transmit buffer `i`'s first `len` bytes.
    fn tx_buf(&mut self, i: usize, len: usize) -> &'static mut [u8] {
        let at = self.tx_base + i.min(TX_BUFS - 1) * TX_BUF;
        // SAFETY: [tx_base, tx_base + TX_BUFS * TX_BUF) is DMA memory this
        // device alone uses; buffer `i` is used only while it is not in
        // flight (`tx_inflight`), `len` is at most TX_BUF.
        unsafe { core::slice::from_raw_parts_mut(at as *mut u8, len.min(TX_BUF)) }
    }

    /// Posts buffer `slot` to the PCI device's receive queue.
    fn post(&mut self, slot: u16) -> bool {
        let buf = self.rx_buf(slot);
        // SAFETY: the buffer is DMA memory that outlives the queue and is
        // not touched again before its completion (`rx_buf`).
        match unsafe { self.raw.receive_begin(buf) } {
            Ok(token) if usize::from(token) < NIC_QUEUE => {
                self.slot_of[usize::from(token)] = slot;
                true
            }
            _ => false,
        }
    }

    /// Completes every transmission QEMU is done with (in the order it
    /// returns them); the index of a free buffer, if there is one now.
    fn tx_reap(&mut self) -> Option<usize> {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(i) = self
                .tx_inflight
                .iter()
                .position(|t| t.is_some_and(|(k, _)| k == token))
            else {
                // A token this host never sent: QEMU's used ring is
                // corrupt; stop reaping (those buffers stay in flight).
                self.tx_errors += 1;
                break;
            };
            let len = self.tx_inflight[i].map_or(0, |(_, l)| l);
            let buf = self.tx_buf(i, len);
            // SAFETY: the buffer and token of that transmission.
            let r = unsafe { self.raw.transmit_complete(token, buf) };
            self.tx_inflight[i] = None;
            if r.is_err() {
                self.tx_errors += 1;
            }
        }
        self.tx_inflight.iter().position(Option::is_none)
    }
}

impl NetBackend for PciNic {
    fn transmit(&mut self, frame: &[u8]) {
        let len = NET_HDR_LEN + frame.len();
        // `can_transmit` said a buffer is free just before.
        let Some(free) = self.tx_inflight.iter().position(Option::is_none) else {
            self.tx_errors += 1;
            return;
        };
        if len > TX_BUF {
            self.tx_errors += 1;
            return;
        }
        let buf = self.tx_buf(free, len);
        // The header asks for nothing (no offloads are negotiated).
        buf[..NET_HDR_LEN].fill(0);
        buf[NET_HDR_LEN..].copy_from_slice(frame);
        // SAFETY: the buffer is DMA memory that is not touched again until
        // the transmission completes (`tx_inflight`).
        match unsafe { self.raw.transmit_begin(buf) } {
            Ok(token) => {
                self.tx_inflight[free] = Some((token, len));
                self.tx_frames += 1;
                self.tx_bytes += frame.len() as u64;
            }
            Err(_) => self.tx_errors += 1,
        }
    }

    /// A buffer is free (after reaping what QEMU sent). If none is, the
    /// guest's frames wait in its transmitq, and the card's next INTx
    /// ([`net_irq`]: QEMU sent one) takes them up again.
    fn can_transmit(&mut self) -> bool {
        let free = self.tx_reap().is_some();
        if !free {
            self.tx_blocked = true;
            self.tx_waits += 1;
        }
        free
    }
}

/// What happened to received frames.
#[derive(Default)]
struct RxCounts {
    frames: u64,
    bytes: u64,
    /// Dropped: the guest's driver was not running (or the device broken).
    no_driver: u64,
    /// Dropped: the guest's buffer was too small, malformed or inaccessible.
    bad_buffer: u64,
    /// Dropped: the PCI device gave a runt or oversized frame.
    bad_frame: u64,
    /// Times frames had to wait in the PCI ring for guest buffers.
    waits: u64,
    /// PCI receive completions that failed (the buffer is lost).
    pci_errors: u64,
}

/// The network device, once the host found one.
struct Nic {
    dev: MmioTransport<Net<PciNic>>,
    /// The SPI's level as last set.
    level: bool,
    rx: RxCounts,
    /// Whether frames are waiting for guest buffers now.
    waiting: bool,
    /// The attached VM and its RAM (handle, host PA, size), while it runs.
    guest: Option<(u64, u64, u64)>,
    /// INTx interrupts taken for this device.
    irqs: u64,
}

static NET: spin::Once<spin::Mutex<Nic>> = spin::Once::new();
/// The VM the network device is attached to (0: none).
static NET_OWNER: AtomicU64 = AtomicU64::new(0);
static NET_REPORTED: AtomicBool = AtomicBool::new(false);

/// Not inlined: its frame holds the driver (twice, while it is moved), and
/// need not be part of `init`'s.
#[inline(never)]
fn init_net(pci: &mut crate::pci::Pci, df: DeviceFunction, protected: bool) {
    let raw = match VirtIONetRaw::<HostHal, _, NIC_QUEUE>::new(pci.transport(df)) {
        Ok(n) => n,
        Err(e) => crate::fail(format_args!("pci: {df}: virtio-net: {e:?}")),
    };
    let mac = raw.mac_address();
    let pages = (NIC_QUEUE * RX_BUF).div_ceil(PAGE_SIZE);
    let (base, _) = HostHal::dma_alloc(pages, BufferDirection::DeviceToDriver);
    let (tx, _) = HostHal::dma_alloc(
        (TX_BUFS * TX_BUF).div_ceil(PAGE_SIZE),
        BufferDirection::DriverToDevice,
    );
    let mut nic = PciNic {
        raw,
        rx_base: base as usize,
        slot_of: [0; NIC_QUEUE],
        tx_base: tx as usize,
        tx_inflight: [None; TX_BUFS],
        tx_blocked: false,
        tx_waits: 0,
        tx_frames: 0,
        tx_bytes: 0,
        tx_errors: 0,
    };
    for slot in 0..NIC_QUEUE as u16 {
        if !nic.post(slot) {
            crate::fail(format_args!(
                "pci: {df}: virtio-net: cannot post receive buffer {slot}"
            ));
        }
    }
    println!(
        "host: linux: network: virtio-net-pci at {df}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, as virtio-mmio at IPA {NET_IPA:#x}, SPI {NET_SPI}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    // The guest gets the PCI card's address: QEMU's user network answers
    // whatever the frames carry, and its virtio-net starts promiscuous.
    let dev = MmioTransport::new(Net::new(nic, mac), protected);
    NET.call_once(|| {
        spin::Mutex::new(Nic {
            dev,
            level: false,
            rx: RxCounts::default(),
            waiting: false,
            guest: None,
            irqs: 0,
        })
    });
}

/// The network card's INTx: reads its interrupt status first (which lowers
/// the line: a frame that arrives after it raises it again, so none is
/// missed), then delivers the received frames to the attached VM. Frames
/// for no VM stay in the PCI ring until one attaches and posts buffers.
fn net_irq() {
    let Some(n) = NET.get() else {
        return;
    };
    let mut n = n.lock();
    n.irqs += 1;
    let _ = n.dev.device_mut().backend_mut().raw.ack_interrupt();
    let Some((h, ram_pa, ram)) = n.guest else {
        return;
    };
    let mem = GuestRam::new(ram_pa, ram);
    deliver(&mut n, &mem);
    // Frames the guest could not send for want of a buffer: QEMU may have
    // sent some since (that is an INTx too).
    let nic = n.dev.device_mut().backend_mut();
    if nic.tx_blocked && nic.tx_reap().is_some() {
        nic.tx_blocked = false;
        n.dev.resume_transmit(&mem);
    }
    net_finish(h, &mut n);
}

/// The devices for the VM's device tree.
pub fn dt_nodes() -> &'static [VirtioMmio] {
    const BLK: VirtioMmio = VirtioMmio {
        ipa: BLK_IPA,
        size: BLK_SIZE,
        spi: BLK_SPI,
    };
    const NET_NODE: VirtioMmio = VirtioMmio {
        ipa: NET_IPA,
        size: NET_SIZE,
        spi: NET_SPI,
    };
    const BOTH: [VirtioMmio; 2] = [BLK, NET_NODE];
    match (DISK.get().is_some(), NET.get().is_some()) {
        (true, true) => &BOTH,
        (true, false) => &BOTH[..1],
        (false, true) => &BOTH[1..],
        (false, false) => &[],
    }
}

/// Declares SPI `intid` of VM `h` for the host's device.
fn declare(h: u64, intid: u64) {
    if let Err(e) = call(hyp_abi::IRQ_DECLARE, [h, intid, 0, 0]) {
        crate::fail(format_args!(
            "IRQ_DECLARE of SPI {} for VM {h}: {e:?}",
            intid - 32
        ));
    }
}

/// Sets the line of SPI `intid` of VM `h` to `level` if `*current` differs.
fn set_line(h: u64, intid: u64, level: bool, current: &mut bool) {
    if level == *current {
        return;
    }
    *current = level;
    let r = call_full(hyp_abi::IRQ_LINE, [h, intid, u64::from(level), 0]);
    if let Some(e) = HostError::from_code(r[0]) {
        crate::fail(format_args!("IRQ_LINE of SPI {}: {e:?}", intid - 32));
    }
}

/// Attaches the devices to VM `h` before its first run: each reset (a
/// restarted VM's driver starts over), its SPI declared.
pub fn attach(h: u64, g_ram_pa: u64, ram: u64) {
    let mem = GuestRam::new(g_ram_pa, ram);
    if let Some(d) = DISK.get() {
        let mut d = d.lock();
        d.dev.write(&mem, STATUS, 4, 0);
        d.level = false;
        declare(h, BLK_INTID);
        OWNER.store(h, Ordering::Release);
    }
    if let Some(n) = NET.get() {
        let mut n = n.lock();
        n.dev.write(&mem, STATUS, 4, 0);
        n.level = false;
        n.waiting = false;
        n.guest = Some((h, g_ram_pa, ram));
        declare(h, NET_INTID);
        NET_OWNER.store(h, Ordering::Release);
    }
}

/// VM `h` powered off or is being restarted: received frames no longer go
/// into its memory (they wait in the PCI ring).
pub fn detach(h: u64) {
    if let Some(n) = NET.get() {
        let mut n = n.lock();
        if n.guest.is_some_and(|(g, _, _)| g == h) {
            n.guest = None;
        }
    }
}

/// Whether `ipa` of VM `h` is one of the devices' windows.
pub fn owns(h: u64, ipa: u64) -> bool {
    (OWNER.load(Ordering::Acquire) == h && (BLK_IPA..BLK_IPA + BLK_SIZE).contains(&ipa))
        || (NET_OWNER.load(Ordering::Acquire) == h && (NET_IPA..NET_IPA + NET_SIZE).contains(&ipa))
}

/// An MMIO access (`flags` as [`hyp_abi::mmio_flags`] encodes them) of
/// guest `g` to a device's window; the value of a read.
pub fn mmio(g: &Guest, ipa: u64, flags: u64, value: u64) -> u64 {
    let write = flags & (1 << 8) != 0;
    let size = (flags & 0xf) as u8;
    if (NET_IPA..NET_IPA + NET_SIZE).contains(&ipa) {
        return net_mmio(g, ipa - NET_IPA, write, size, value);
    }
    let Some(d) = DISK.get() else {
        return 0;
    };
    let off = ipa - BLK_IPA;
    let mut d = d.lock();
    if !write {
        return d.dev.read(off, size);
    }
    let mem = GuestRam::new(g.ram_pa, g.ram);
    d.dev
        .overstate_used_lengths(crate::attack_linux::used_len_extra());
    let level = d.dev.write(&mem, off, size, value);
    if let Some(e) = d.dev.take_error() {
        if !REPORTED.swap(true, Ordering::AcqRel) {
            println!("host: VM {} disk: {e} (first device error)", g.handle.0);
        }
    }
    let d = &mut *d;
    set_line(g.handle.0, BLK_INTID, level, &mut d.level);
    0
}

/// An access to the network device's window at `off`. A write may be a
/// transmitq notification (the frames go out now) or a receiveq one (the
/// guest posted buffers: frames waiting in the PCI ring go in).
fn net_mmio(g: &Guest, off: u64, write: bool, size: u8, value: u64) -> u64 {
    let Some(n) = NET.get() else {
        return 0;
    };
    let mut n = n.lock();
    if !write {
        return n.dev.read(off, size);
    }
    let mem = GuestRam::new(g.ram_pa, g.ram);
    n.dev
        .overstate_used_lengths(crate::attack_linux::used_len_extra());
    n.dev.write(&mem, off, size, value);
    deliver(&mut n, &mem);
    net_finish(g.handle.0, &mut n);
    0
}

/// Logs the device's first error and sets VM `h`'s line.
fn net_finish(h: u64, n: &mut Nic) {
    if let Some(e) = n.dev.take_error() {
        if !NET_REPORTED.swap(true, Ordering::AcqRel) {
            println!("host: VM {h} network: {e} (first device error)");
        }
    }
    let level = n.dev.interrupt_pending();
    set_line(h, NET_INTID, level, &mut n.level);
}

/// Moves the frames the PCI device received into the guest's receive
/// buffers, at most one ring's worth; each PCI buffer goes back to the
/// device at once. Frames wait in the PCI ring while the guest's running
/// driver has no buffer posted; see the module's text for what is dropped.
fn deliver(n: &mut Nic, mem: &GuestRam) {
    n.dev
        .overstate_used_lengths(crate::attack_linux::used_len_extra());
    for _ in 0..NIC_QUEUE {
        let Some(token) = n.dev.device().backend().raw.poll_receive() else {
            n.waiting = false;
            return;
        };
        let ready = n.dev.can_receive(mem);
        let running = n.dev.status().contains(DeviceStatus::DRIVER_OK) && !n.dev.is_broken();
        if !ready && running {
            if !n.waiting {
                n.waiting = true;
                n.rx.waits += 1;
            }
            return;
        }
        n.waiting = false;
        let nic = n.dev.device_mut().backend_mut();
        let Some(&slot) = nic.slot_of.get(usize::from(token)) else {
            n.rx.pci_errors += 1;
            return;
        };
        let buf = nic.rx_buf(slot);
        // SAFETY: `buf` is the buffer posted with `token` (slot_of).
        let done = unsafe { nic.raw.receive_complete(token, buf) };
        // The frame goes to the guest straight from the PCI buffer, which
        // is posted again only afterwards.
        match done.map(|(hdr, len)| buf.get(hdr..hdr + len)) {
            Err(_) => n.rx.pci_errors += 1,
            Ok(None) => n.rx.bad_frame += 1,
            Ok(Some(_)) if !ready => n.rx.no_driver += 1,
            Ok(Some(frame)) => match n.dev.receive(mem, frame) {
                Ok(()) => {
                    n.rx.frames += 1;
                    n.rx.bytes += frame.len() as u64;
                }
                Err(RxError::BadFrame) => n.rx.bad_frame += 1,
                Err(RxError::NoBuffer | RxError::Broken) => n.rx.no_driver += 1,
                Err(RxError::BadBuffer | RxError::Fault) => n.rx.bad_buffer += 1,
            },
        }
        if !n.dev.device_mut().backend_mut().post(slot) {
            n.rx.pci_errors += 1;
        }
    }
}

/// Used-ring lengths the devices reported past the buffers (`linux-hostile=usedlen`).
pub fn overstated_used_lengths() -> u64 {
    DISK.get()
        .map_or(0, |d| d.lock().dev.overstated_used_lengths())
        + NET
            .get()
            .map_or(0, |n| n.lock().dev.overstated_used_lengths())
}

/// What the devices did, for the end of the run.
pub fn report() {
    if let Some(d) = DISK.get() {
        let d = d.lock();
        let b = d.dev.device().backend();
        println!(
            "host: linux: disk: {} PCI requests, {} failed, {} counter ticks inside them, {} INTx interrupts; device {}",
            b.requests,
            b.errors,
            b.ticks,
            d.irqs,
            if d.dev.is_broken() {
                "broken by its driver"
            } else {
                "sound"
            }
        );
    }
    if let Some(n) = NET.get() {
        let n = n.lock();
        let nic = n.dev.device().backend();
        let r = &n.rx;
        println!(
            "host: linux: network: {} INTx interrupts; sent {} frames ({} bytes, {} failed), received {} frames ({} bytes); dropped {} (no driver {}, bad guest buffer {}, bad frame {}), waited for guest buffers {} times, {} PCI receive errors; device {}",
            n.irqs,
            nic.tx_frames,
            nic.tx_bytes,
            nic.tx_errors,
            r.frames,
            r.bytes,
            r.no_driver + r.bad_buffer + r.bad_frame,
            r.no_driver,
            r.bad_buffer,
            r.bad_frame,
            r.waits,
            r.pci_errors,
            if n.dev.is_broken() {
                "broken by its driver"
            } else {
                "sound"
            }
        );
        // A line of its own: the console's lines end at 256 bytes.
        println!(
            "host: linux: network: all {TX_BUFS} transmit buffers busy {} times (the guest's frames waited in its queue)",
            nic.tx_waits
        );
    }
    if DISK.get().is_some() || NET.get().is_some() {
        let (taken, unhandled) = crate::intx::counts();
        println!("host: linux: INTx: {taken} interrupts taken, {unhandled} with no handler");
    }
}
