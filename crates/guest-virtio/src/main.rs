//! The protected-guest demo's guest (issue 7), used for all three VMs: a
//! virtio-mmio console and a virtio-blk device through the `virtio-drivers`
//! crate, emulated by the host VM from MMIO exits.
//!
//! It finds out whether it is protected the way an unmodified pKVM guest
//! does (Linux `drivers/virt/coco/pkvm-guest/arm-pkvm-guest.c`,
//! `pkvm_init_hyp_services`): the KVM vendor-hypervisor UID, then the
//! KVM_FEATURES bitmap, HYP_MEMINFO for the sharing granule, and MEM_SHARE
//! plus MEM_UNSHARE offered means its memory is private and must be shared
//! explicitly. (The hypervisor offers those two only to protected VMs.)
//!
//! DMA in a protected guest goes through bounce buffers, as a pKVM Linux
//! guest's swiotlb does (its pool is made shared with MEM_SHARE by
//! `set_memory_decrypted`) and as Android's vmbase virtio Hal does (a pool
//! of shared memory; `share` copies into a bounce buffer taken from it,
//! `unshare` copies back). Here the pool is [`POOL_PAGES`] pages of the
//! guest's RAM, shared page by page with MEM_SHARE before the devices are
//! set up and unshared with MEM_UNSHARE at the end; virtqueue rings are
//! allocated from it too (`dma_alloc`). A normal guest uses the same pool
//! without sharing (the host can read all of its memory anyway) and lets
//! the device use its buffers in place.
//!
//! The devices' completions come as interrupts (level-triggered SPIs the
//! host drives with IRQ_LINE, [`demo::CONSOLE_INTID`] and
//! [`demo::BLK_INTID`]): block requests are submitted with the
//! non-blocking calls and vCPU 0 waits in WFI for the block interrupt
//! before it completes them; the console's interrupt is acknowledged after
//! each line. The handler masks the SPI at the distributor (the line stays
//! high until the driver acknowledges at the device) and vCPU 0 unmasks it
//! after the acknowledgement.
//!
//! vCPU 0 drives the devices; vCPU 1 writes the VM's secret into private
//! memory (protected VMs) and turns itself off. Both run with the MMU off
//! (as the host does, so guest and host see the same memory without cache
//! maintenance), so there is no lock anywhere: only vCPU 0 allocates and
//! touches the devices.
#![no_std]
#![no_main]

mod private_rings;

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::gic::{self, SPURIOUS};
use guest_rt::{demo, println, Exception, Frame};
use smccc::psci;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// KVM vendor-hypervisor calls (Linux include/linux/arm-smccc.h).
const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
const VENDOR_HYP_KVM_FEATURES: u32 = 0x8600_0000;
const HYP_MEMINFO: u32 = 0xc600_0002;
const MEM_SHARE: u32 = 0xc600_0003;
const MEM_UNSHARE: u32 = 0xc600_0004;
const FUNC_HYP_MEMINFO: u64 = 2;
const FUNC_MEM_SHARE: u64 = 3;
const FUNC_MEM_UNSHARE: u64 = 4;
const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];
/// An IPA that is not this guest's memory.
const NOT_MINE: u64 = 0x1_0000_0000;

/// Pages in the DMA / bounce-buffer pool.
const POOL_PAGES: usize = 16;
/// Blocks written per request, and requests.
const BLOCKS_PER_WRITE: usize = 2;
const WRITES: usize = 4;
const SECTOR: usize = 512;

/// A static only vCPU 0 mutates (or, for [`SECRET`], only vCPU 1).
struct Cell<T>(UnsafeCell<T>);
// SAFETY: each cell has a single writer vCPU (documented at each static);
// readers on other vCPUs synchronise through PSCI (AFFINITY_INFO).
unsafe impl<T> Sync for Cell<T> {}

#[repr(C, align(4096))]
struct Pages<const N: usize>([[u8; PAGE_SIZE]; N]);

/// The DMA pool (vCPU 0).
static POOL: Cell<Pages<POOL_PAGES>> = Cell(UnsafeCell::new(Pages([[0; PAGE_SIZE]; POOL_PAGES])));
/// Which pool pages are in use, one bit each (vCPU 0).
static POOL_USED: Cell<u32> = Cell(UnsafeCell::new(0));
/// Whether DMA must bounce through the shared pool.
static PROTECTED: AtomicBool = AtomicBool::new(false);
/// The page vCPU 1 fills with the secret (vCPU 1).
static SECRET: Cell<Pages<1>> = Cell(UnsafeCell::new(Pages([[0; PAGE_SIZE]; 1])));
/// vCPU 1's report: 1 once the secret is written and read back.
static SECRET_DONE: AtomicU64 = AtomicU64::new(0);

/// The heap guest-rt's allocator gets (vCPU 0): the console's receive
/// buffer is the only allocation.
const HEAP_SIZE: usize = 32 * 1024;
static HEAP: Cell<Pages<{ HEAP_SIZE / PAGE_SIZE }>> = Cell(UnsafeCell::new(Pages(
    [[0; PAGE_SIZE]; HEAP_SIZE / PAGE_SIZE],
)));

fn pool_base() -> usize {
    POOL.0.get() as usize
}

/// Takes `pages` contiguous pool pages, zeroed.
fn pool_alloc(pages: usize) -> Option<usize> {
    // SAFETY: vCPU 0 is the only user of POOL_USED.
    let used = unsafe { &mut *POOL_USED.0.get() };
    if pages == 0 || pages > POOL_PAGES {
        return None;
    }
    let mask = (1u32 << pages) - 1;
    let first = (0..=POOL_PAGES - pages).find(|i| *used & (mask << i) == 0)?;
    *used |= mask << first;
    let addr = pool_base() + first * PAGE_SIZE;
    // SAFETY: the pages are in POOL and were free: nobody else uses them.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, pages * PAGE_SIZE) };
    Some(addr)
}

fn pool_free(addr: usize, pages: usize) {
    // SAFETY: vCPU 0 is the only user of POOL_USED.
    let used = unsafe { &mut *POOL_USED.0.get() };
    let first = (addr - pool_base()) / PAGE_SIZE;
    *used &= !(((1u32 << pages) - 1) << first);
}

/// virtio-drivers' platform interface for this guest. Addresses: the MMU
/// is off, so virtual address = IPA = what the device (the host) is given.
struct GuestHal;

// SAFETY: dma_alloc returns zeroed, page-aligned pool memory nobody else
// uses until dma_dealloc; share returns an address the host can use for the
// buffer (a shared bounce buffer in a protected VM, the buffer itself
// otherwise) until unshare.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match pool_alloc(pages) {
            Some(a) => (
                a as PhysAddr,
                NonNull::new(a as *mut u8).expect("pool is not at 0"),
            ),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        pool_free(paddr as usize, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("no device at 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let ptr = buffer.cast::<u8>().as_ptr();
        if !PROTECTED.load(Ordering::Relaxed) {
            return ptr as PhysAddr;
        }
        let len = buffer.len();
        let bounce = pool_alloc(len.div_ceil(PAGE_SIZE).max(1)).expect("bounce pool exhausted");
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller's buffer is valid for `len` bytes; the
            // bounce buffer is at least that large and distinct.
            unsafe { core::ptr::copy_nonoverlapping(ptr, bounce as *mut u8, len) };
        }
        bounce as PhysAddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        if !PROTECTED.load(Ordering::Relaxed) {
            return;
        }
        let len = buffer.len();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `paddr` is the bounce buffer `share` returned for
            // this buffer; the buffer is valid for `len` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    paddr as *const u8,
                    buffer.cast::<u8>().as_ptr(),
                    len,
                );
            }
        }
        pool_free(paddr as usize, len.div_ceil(PAGE_SIZE).max(1));
    }
}

fn transport(
    ipa: u64,
) -> Result<MmioTransport<'static>, virtio_drivers::transport::mmio::MmioError> {
    let header = NonNull::new(ipa as *mut VirtIOHeader).expect("device IPA is not 0");
    // SAFETY: `ipa` is a virtio-mmio transport the host emulates, 0x200
    // bytes long; nothing else in this guest uses it.
    unsafe { MmioTransport::new(header, demo::VIRTIO_MMIO_SIZE as usize) }
}

/// Writes the demo control register at `off`.
fn ctl(off: u64, value: u64) {
    // SAFETY: the demo control device in the host's MMIO window; a write
    // exits to the host and has no effect on guest memory.
    unsafe { core::ptr::write_volatile((demo::CTL_IPA + off) as *mut u64, value) };
}

fn hvc(fid: u32, a1: u64) -> [u64; 4] {
    guest_rt::hvc(fid, a1, 0, 0)
}

/// What the guest learnt from the hypervisor.
struct Discovery {
    uid: bool,
    features: u64,
    granule: u64,
    protected: bool,
}

/// pKVM guest service discovery (Linux kvm_init_hyp_services and
/// pkvm_init_hyp_services).
fn discover() -> Discovery {
    let uid = hvc(VENDOR_HYP_CALL_UID, 0) == KVM_UID;
    let features = if uid {
        hvc(VENDOR_HYP_KVM_FEATURES, 0)[0]
    } else {
        0
    };
    let has = |f: u64| features & (1 << f) != 0;
    let granule = if has(FUNC_HYP_MEMINFO) {
        hvc(HYP_MEMINFO, 0)[0]
    } else {
        0
    };
    let protected =
        uid && granule == PAGE_SIZE as u64 && has(FUNC_MEM_SHARE) && has(FUNC_MEM_UNSHARE);
    Discovery {
        uid,
        features,
        granule,
        protected,
    }
}

/// MEM_SHARE (or MEM_UNSHARE) of every pool page; the first error.
fn share_pool(share: bool) -> Result<(), i64> {
    let fid = if share { MEM_SHARE } else { MEM_UNSHARE };
    for p in 0..POOL_PAGES {
        let r = hvc(fid, (pool_base() + p * PAGE_SIZE) as u64)[0] as i64;
        if r != 0 {
            return Err(r);
        }
    }
    Ok(())
}

/// Device interrupts taken (bit 0: console, bit 1: block) and not yet
/// consumed by vCPU 0, and how many were taken in all.
static IRQ_SEEN: AtomicU64 = AtomicU64::new(0);
static IRQS: AtomicU64 = AtomicU64::new(0);
/// Console lines whose interrupt did not come within a second.
static MISSED: AtomicU64 = AtomicU64::new(0);

fn irq_bit(intid: u32) -> u64 {
    if intid == demo::BLK_INTID {
        2
    } else {
        1
    }
}

/// vCPU 0's IRQ handler: a device's SPI is masked at the distributor (its
/// level stays high until the driver acknowledges at the device) and noted.
fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    let a = gic::ack();
    let id = a.intid();
    if id == SPURIOUS {
        return true;
    }
    if id == demo::CONSOLE_INTID || id == demo::BLK_INTID {
        gic::disable(id);
        IRQ_SEEN.fetch_or(irq_bit(id), Ordering::AcqRel);
        IRQS.fetch_add(1, Ordering::Relaxed);
    }
    gic::eoi(a);
    true
}

/// Interrupts for the devices: both SPIs level-triggered, to vCPU 0.
fn irq_setup() {
    guest_rt::set_exception_hook(irq);
    gic::irq_mask();
    gic::init_distributor();
    gic::init_cpu();
    for id in [demo::CONSOLE_INTID, demo::BLK_INTID] {
        gic::configure_spi(id, false);
        gic::route_spi(id, 0);
        gic::set_priority(id, 0x80);
        gic::enable(id);
    }
    gic::irq_unmask();
}

/// Waits (WFI, at most a second) for device `intid`'s interrupt; whether
/// it came. Consumes it: the caller acknowledges at the device and then
/// unmasks the SPI ([`gic::enable`]).
fn wait_irq(intid: u32) -> bool {
    let bit = irq_bit(intid);
    gic::wait_until(1000, || {
        IRQ_SEEN.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    })
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    // The host's guest option `arg=N` is in the bits above the handle.
    let (handle, arg) = (x0 & 0xff, x0 >> 8);
    if cpu != 0 {
        secondary(handle);
    }
    // SAFETY: HEAP is given once, here, and nothing else uses it.
    guest_rt::heap::give(unsafe { &mut (*HEAP.0.get()).0 }.as_flattened_mut());
    // A protected VM booted through the firmware, which measured this
    // program: what the hypervisor recorded, as any code of the VM reads it.
    if let Some(d) = guest_rt::measurement(guest_rt::ITEM_KERNEL) {
        let mut l = guest_rt::Line::new();
        for b in d {
            let _ = write!(l, "{b:02x}");
        }
        println!(
            "guest-virtio: VM {handle}: measured kernel sha256 {}",
            l.as_str()
        );
        // Only the firmware may report, once: the kernel's own try fails.
        let r = guest_rt::hvc(guest_rt::MEASUREMENT_SET, 0, 0, 0)[0] as i64;
        println!("guest-virtio: VM {handle}: MEASUREMENT_SET after boot: {r}");
    }
    let ok = match guard_devices() {
        Ok(_) if arg == 1 => {
            private_rings::run(handle);
            guest_rt::system_off()
        }
        Ok(guarded) => run(handle, guarded),
        Err(e) => {
            // The control register's page may be unguarded: no report.
            println!("guest-virtio: VM {handle}: MMIO_GUARD refused: {e}");
            guest_rt::system_off()
        }
    };
    ctl(
        demo::CTL_CMD,
        if ok {
            demo::CMD_RESULT_OK
        } else {
            demo::CMD_RESULT_FAIL
        },
    );
    guest_rt::system_off()
}

/// MMIO guard (offered to protected VMs, as upstream Linux's ioremap hook
/// uses it): guards the pages of the host's window this guest touches, the
/// virtio-mmio transports' and the demo control register's, before any
/// access to them; a protected VM's access to any other page there is an
/// abort. Returns the pages guarded (0: not offered, a normal VM).
fn guard_devices() -> Result<u64, i64> {
    let virtio = guest_rt::mmio_guard_range(demo::CONSOLE_IPA, 2 * demo::VIRTIO_MMIO_SIZE)?;
    Ok(virtio + guest_rt::mmio_guard_range(demo::CTL_IPA, 0x18)?)
}

/// vCPU 1: writes the secret (protected VMs), then turns itself off.
fn secondary(handle: u64) -> ! {
    if PROTECTED.load(Ordering::Acquire) {
        let s = demo::secret(handle);
        let page = SECRET.0.get().cast::<u64>();
        let words = PAGE_SIZE / 8;
        let mut good = true;
        // SAFETY: vCPU 1 is the only user of SECRET; in bounds.
        unsafe {
            for i in (0..words).step_by(2) {
                page.add(i).write_volatile(s[0]);
                page.add(i + 1).write_volatile(s[1]);
            }
            for i in (0..words).step_by(2) {
                good &= page.add(i).read_volatile() == s[0];
                good &= page.add(i + 1).read_volatile() == s[1];
            }
        }
        SECRET_DONE.store(if good { 1 } else { 2 }, Ordering::Release);
    } else {
        SECRET_DONE.store(3, Ordering::Release);
    }
    guest_rt::cpu_off()
}

fn run(handle: u64, guarded: u64) -> bool {
    let d = discover();
    PROTECTED.store(d.protected, Ordering::Release);
    if d.protected {
        if let Err(e) = share_pool(true) {
            println!("guest-virtio: VM {handle}: MEM_SHARE of the DMA pool failed: {e}");
            return false;
        }
    }
    irq_setup();
    let mut con = match transport(demo::CONSOLE_IPA).map(VirtIOConsole::<GuestHal, _>::new) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            println!("guest-virtio: VM {handle}: virtio console: {e}");
            return false;
        }
        Err(e) => {
            println!(
                "guest-virtio: VM {handle}: virtio-mmio at {:#x}: {e}",
                demo::CONSOLE_IPA
            );
            return false;
        }
    };
    let mut ok = true;
    // Each line raises the console's interrupt (its transmitq's used
    // buffers); it is acknowledged at the device, then unmasked.
    macro_rules! say {
        ($($arg:tt)*) => {{
            let _ = writeln!(con, $($arg)*);
            if wait_irq(demo::CONSOLE_INTID) {
                let _ = con.ack_interrupt();
                gic::enable(demo::CONSOLE_INTID);
            } else {
                MISSED.fetch_add(1, Ordering::Relaxed);
            }
        }};
    }
    say!(
        "virtio console up; KVM vendor UID {}, KVM_FEATURES {:#x}, HYP_MEMINFO granule {}",
        if d.uid { "found" } else { "missing" },
        d.features,
        d.granule
    );
    if d.protected {
        say!(
            "MEM_SHARE and MEM_UNSHARE offered: I am protected; DMA bounces through {} pages at IPA {:#x} shared with MEM_SHARE",
            POOL_PAGES,
            pool_base()
        );
    } else {
        say!("no MEM_SHARE offered: I am a normal VM; devices use my buffers in place");
    }
    if guarded != 0 {
        say!(
            "MMIO_GUARD offered: guarded {guarded} pages of the host's window (virtio-mmio at {:#x}, control at {:#x}) before touching them",
            demo::CONSOLE_IPA,
            demo::CTL_IPA
        );
    }

    // vCPU 1 writes the secret while vCPU 0 carries on.
    let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), handle)[0];
    if r != 0 {
        say!("CPU_ON(1) = {}", r as i64);
        return false;
    }
    let mut polls = 0u64;
    while guest_rt::hvc(psci::PSCI_AFFINITY_INFO_64, 1, 0, 0)[0] != 1 {
        polls += 1;
        if polls > 10_000_000 {
            say!("vCPU 1 never turned off");
            return false;
        }
        // Waits for vCPU 1, not for an interrupt: hand the CPU over.
        guest_rt::yield_cpu();
    }
    match SECRET_DONE.load(Ordering::Acquire) {
        1 => say!(
            "vCPU 1 wrote a 16-byte secret {} times into private memory at IPA {:#x}",
            PAGE_SIZE / 16,
            SECRET.0.get() as usize
        ),
        3 => say!("vCPU 1 up and off again"),
        v => {
            say!("vCPU 1 failed ({v})");
            ok = false;
        }
    }

    let mut blk = match transport(demo::BLK_IPA).map(VirtIOBlk::<GuestHal, _>::new) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            say!("virtio-blk: {e}");
            return false;
        }
        Err(e) => {
            say!("virtio-mmio at {:#x}: {e}", demo::BLK_IPA);
            return false;
        }
    };
    say!("virtio-blk up: {} sectors", blk.capacity());
    let pattern = |i: usize| (handle as u8).wrapping_mul(0x31) ^ (i as u8).wrapping_mul(7);
    const CHUNK: usize = BLOCKS_PER_WRITE * SECTOR;
    let mut buf = [0u8; CHUNK];
    for w in 0..WRITES {
        for (j, b) in buf.iter_mut().enumerate() {
            *b = pattern(w * CHUNK + j);
        }
        if let Err(e) = blk_write(&mut blk, w * BLOCKS_PER_WRITE, &buf) {
            say!("write of blocks {}..: {e}", w * BLOCKS_PER_WRITE);
            return false;
        }
    }
    let mut back = [0u8; WRITES * BLOCKS_PER_WRITE * SECTOR];
    if let Err(e) = blk_read(&mut blk, 0, &mut back) {
        say!("read of blocks 0..: {e}");
        return false;
    }
    let same = back.iter().enumerate().all(|(i, b)| *b == pattern(i));
    say!(
        "wrote {} blocks in {} requests, read them back in 1, each completion an interrupt: {}",
        WRITES * BLOCKS_PER_WRITE,
        WRITES,
        if same { "identical" } else { "DIFFERENT" }
    );
    ok &= same;

    let r = hvc(MEM_SHARE, NOT_MINE)[0] as i64;
    say!("MEM_SHARE({NOT_MINE:#x}), memory I do not own = {r}");
    ok &= r == -3;

    // While the console's rings are still shared (a protected VM unshares
    // its pool below).
    say!(
        "{} device interrupts taken so far, {} console lines without one",
        IRQS.load(Ordering::Relaxed),
        MISSED.load(Ordering::Relaxed)
    );
    if d.protected {
        say!("asking the host to read my shared pool");
        ctl(demo::CTL_POOL_IPA, pool_base() as u64);
        ctl(demo::CTL_POOL_PAGES, POOL_PAGES as u64);
        ctl(demo::CTL_CMD, demo::CMD_SHARED);
        say!("done; unsharing the pool (MEM_UNSHARE) and powering off");
        if let Err(e) = share_pool(false) {
            println!("guest-virtio: VM {handle}: MEM_UNSHARE of the DMA pool failed: {e}");
            return false;
        }
        ctl(demo::CTL_CMD, demo::CMD_UNSHARED);
    } else {
        say!("done, powering off");
    }
    ok
}

type Blk = VirtIOBlk<GuestHal, MmioTransport<'static>>;

/// A block request's completion: the block interrupt, acknowledged at the
/// device, the SPI unmasked.
fn blk_wait(blk: &mut Blk) -> Result<(), &'static str> {
    if !wait_irq(demo::BLK_INTID) {
        return Err("no completion interrupt within a second");
    }
    blk.ack_interrupt();
    gic::enable(demo::BLK_INTID);
    Ok(())
}

/// Writes `buf` at `block`, waiting for the completion interrupt in WFI.
fn blk_write(blk: &mut Blk, block: usize, buf: &[u8]) -> Result<(), &'static str> {
    let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
    // SAFETY: `req`, `buf` and `resp` stay alive and unmoved until
    // complete_write_blocks below, which ends the request.
    let token = unsafe { blk.write_blocks_nb(block, &mut req, buf, &mut resp) }
        .map_err(|_| "submitting the write failed")?;
    blk_wait(blk)?;
    // SAFETY: the same token and buffers as the submission.
    unsafe { blk.complete_write_blocks(token, &req, buf, &mut resp) }
        .map_err(|_| "the write failed")
}

/// Reads into `buf` from `block`, waiting for the completion interrupt.
fn blk_read(blk: &mut Blk, block: usize, buf: &mut [u8]) -> Result<(), &'static str> {
    let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
    // SAFETY: as in `blk_write`.
    let token = unsafe { blk.read_blocks_nb(block, &mut req, buf, &mut resp) }
        .map_err(|_| "submitting the read failed")?;
    blk_wait(blk)?;
    // SAFETY: as in `blk_write`.
    unsafe { blk.complete_read_blocks(token, &req, buf, &mut resp) }.map_err(|_| "the read failed")
}
