//! An external EL1 kernel (Linux's arm64 Image, or a flat binary with an
//! explicit load address and entry) as a guest of the host VM (issue #9).
//!
//! `cargo xtask run --guest PATH` has QEMU's generic loader put the kernel
//! (and `--initrd`) into host RAM and passes, in the boot arguments:
//!
//! ```text
//! linux=PA,SIZE[,LOAD_IPA,ENTRY] [initrd=PA,SIZE] [guest-smp=N]
//! [guest-mem=MIB] [guest-protected] ... -- KERNEL COMMAND LINE
//! ```
//!
//! The host then creates one VM with N vCPUs and `guest-mem` MiB of RAM at
//! IPA 0x4000_0000 (lent, or donated with `guest-protected`), copies the
//! kernel to RAM base + `text_offset` (from the Image header;
//! Documentation/arch/arm64/booting.rst), the initrd to the middle of RAM
//! and a generated device tree near its end, and starts vCPU 0 at the
//! kernel with x0 = the DTB's IPA (x1..x3 = 0, MMU off, interrupts masked:
//! the vCPU reset state).
//!
//! The device tree (what the hypervisor emulates for every VM) is written
//! by [`crate::dtb`].

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::hostif::{self, Handle};
use crate::{fail, Guest, GUEST_RAM_IPA, PAGE};
use guest_rt::println;
use hyp_abi::{BootInfo, Vgic};

/// Default guest RAM.
const DEFAULT_MEM_MIB: u64 = 256;
/// Room kept for the device tree at the end of guest RAM.
const DTB_ROOM: u64 = 2 << 20;
/// A protected VM's restricted DMA pool (its virtio devices' bounce
/// buffers, the only memory it shares with the host for I/O): 8 MiB, room
/// for Linux's swiotlb slabs for a disk and a network card with their
/// queues in flight.
const DMA_POOL: u64 = 8 << 20;
/// arm64 Image header magic "ARM\x64" at offset 56 (booting.rst).
const IMAGE_MAGIC: u32 = 0x644d_5241;

/// A blob QEMU's loader put into host RAM.
#[derive(Clone, Copy)]
struct Blob {
    pa: u64,
    size: u64,
}

/// The guest kernel's command line: everything after ` -- `.
fn guest_cmdline(info: &BootInfo) -> &str {
    hyp_abi::guest_cmdline(info.bootargs())
}

fn word<'a>(info: &'a BootInfo, key: &str) -> Option<&'a str> {
    hyp_abi::own_arg(info.bootargs(), key)
}

fn flag(info: &BootInfo, key: &str) -> bool {
    hyp_abi::own_args(info.bootargs())
        .split_ascii_whitespace()
        .any(|w| w == key)
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Up to four comma-separated numbers.
fn nums(s: &str) -> ([u64; 4], usize) {
    let mut out = [0; 4];
    let mut n = 0;
    for p in s.split(',') {
        if n == 4 {
            fail(format_args!("too many numbers in {s:?}"));
        }
        out[n] = num(p).unwrap_or_else(|| fail(format_args!("bad number {p:?} in {s:?}")));
        n += 1;
    }
    (out, n)
}

/// Whether the boot arguments ask for an external kernel.
pub fn requested(info: &BootInfo) -> bool {
    word(info, "linux").is_some()
}

/// Reads the u64 at `pa` (8-byte aligned host RAM).
fn rd64(pa: u64) -> u64 {
    // SAFETY: callers pass aligned addresses inside a blob in host RAM,
    // which the host's identity stage 2 maps.
    unsafe { (pa as *const u64).read_volatile() }
}

/// The kernel's VM as the boot arguments describe it, kept for restarts.
struct Config {
    kernel: Blob,
    initrd: Option<Blob>,
    vcpus: usize,
    mem: u64,
    protected: bool,
    cmdline: &'static str,
    load_ipa: u64,
    entry: u64,
    /// The virtual GIC the hypervisor gives VMs (its device-tree node).
    gic: Vgic,
}

static CONFIG: spin::Once<Config> = spin::Once::new();

/// Reads and checks the kernel's description in the boot arguments.
fn parse(info: &'static BootInfo) -> Config {
    let (k, nk) = nums(word(info, "linux").unwrap_or(""));
    if nk != 2 && nk != 4 {
        fail(format_args!("linux= needs PA,SIZE[,LOAD_IPA,ENTRY]"));
    }
    let kernel = Blob {
        pa: k[0],
        size: k[1],
    };
    let initrd = word(info, "initrd").map(|s| {
        let (v, n) = nums(s);
        if n != 2 {
            fail(format_args!("initrd= needs PA,SIZE"));
        }
        Blob {
            pa: v[0],
            size: v[1],
        }
    });
    let vcpus = word(info, "guest-smp").and_then(num).unwrap_or(1) as usize;
    let mem = word(info, "guest-mem")
        .and_then(num)
        .unwrap_or(DEFAULT_MEM_MIB)
        << 20;
    let protected = flag(info, "guest-protected");
    let cmdline = guest_cmdline(info);
    let gic = info.vgic().unwrap_or_else(|| {
        fail(format_args!(
            "the boot info names no virtual GIC (vgic = {})",
            info.vgic
        ))
    });

    let ram_end = info.ram_base + info.ram_size;
    for (what, b) in [("kernel", Some(kernel)), ("initrd", initrd)] {
        let Some(b) = b else { continue };
        if b.pa % 8 != 0 || b.pa < info.free_base || b.pa + b.size > ram_end {
            fail(format_args!(
                "{what} at {:#x}+{:#x} is not in free host RAM",
                b.pa, b.size
            ));
        }
        // Guest RAM is allocated below the blobs QEMU loaded.
        crate::RAM_END.fetch_min(b.pa & !((2 << 20) - 1), Ordering::Relaxed);
    }

    // Where the kernel goes: the Image header, or LOAD_IPA/ENTRY given.
    let (load_ipa, entry, image_size) = if nk == 4 {
        (k[2], k[3], kernel.size)
    } else {
        if rd64(kernel.pa + 56) as u32 != IMAGE_MAGIC {
            fail(format_args!(
                "the kernel has no arm64 Image header (give LOAD_IPA,ENTRY)"
            ));
        }
        let (text_offset, image_size) = match rd64(kernel.pa + 16) {
            // booting.rst: image_size 0 means a pre-3.17 kernel with
            // text_offset 0x80000.
            0 => (0x8_0000, kernel.size),
            size => (rd64(kernel.pa + 8), size),
        };
        let load = GUEST_RAM_IPA + text_offset;
        (load, load, image_size.max(kernel.size))
    };
    let initrd_ipa = GUEST_RAM_IPA + mem / 2;
    let dtb_ipa = GUEST_RAM_IPA + mem - DTB_ROOM;
    if load_ipa < GUEST_RAM_IPA
        || load_ipa % 8 != 0
        || load_ipa + image_size > initrd_ipa
        || entry < load_ipa
    {
        fail(format_args!(
            "the kernel ({image_size:#x} bytes at {load_ipa:#x}) does not fit below {initrd_ipa:#x} \
             (or is not 8-byte aligned)"
        ));
    }
    // A protected VM's DMA pool sits below the device tree.
    let top = if protected {
        dtb_ipa - DMA_POOL
    } else {
        dtb_ipa
    };
    if initrd.is_some_and(|i| initrd_ipa + i.size > top) {
        fail(format_args!("the initrd does not fit below {top:#x}"));
    }
    Config {
        kernel,
        initrd,
        vcpus,
        mem,
        protected,
        cmdline,
        load_ipa,
        entry,
        gic,
    }
}

impl Config {
    fn initrd_ipa(&self) -> u64 {
        GUEST_RAM_IPA + self.mem / 2
    }

    fn dtb_ipa(&self) -> u64 {
        GUEST_RAM_IPA + self.mem - DTB_ROOM
    }

    /// A protected VM's restricted DMA pool: [`DMA_POOL`] bytes just below
    /// the device tree, 2 MiB aligned.
    fn dma_pool(&self) -> (u64, u64) {
        (self.dtb_ipa() - DMA_POOL, DMA_POOL)
    }
}

/// Creates the kernel's VM over the guest RAM at host `ram_pa`: copies the
/// kernel, the initrd and a device tree saying this is boot `boot`, gives
/// the RAM and sets vCPU 0's entry. Returns the VM's handle and the
/// device tree's size.
fn load(cfg: &Config, ram_pa: u64, boot: u32) -> (Handle, usize) {
    let flags = if cfg.protected {
        hyp_abi::FLAG_PROTECTED
    } else {
        0
    };
    let handle = hostif::vm_create(cfg.vcpus as u64, flags)
        .unwrap_or_else(|e| fail(format_args!("VM_CREATE for linux: {e:?}")));
    let pa_of = |ipa: u64| ram_pa + (ipa - GUEST_RAM_IPA);
    let (initrd_ipa, dtb_ipa) = (cfg.initrd_ipa(), cfg.dtb_ipa());

    // SAFETY: the kernel blob QEMU loaded (8-byte aligned, checked when
    // parsed) and the guest's freshly allocated RAM, still the host's.
    unsafe { crate::mem::copy_words(pa_of(cfg.load_ipa), cfg.kernel.pa, cfg.kernel.size) };
    // The arm64 Image header's image_size (offset 16) covers the kernel's
    // BSS past the file: zeroed, so what a protected VM's firmware measures
    // (image_size bytes from the load address) depends on the file alone.
    let image_size = rd64(cfg.kernel.pa + 16);
    if image_size > cfg.kernel.size && cfg.load_ipa + image_size <= GUEST_RAM_IPA + cfg.mem {
        let (end, img_end) = (
            pa_of(cfg.load_ipa) + cfg.kernel.size,
            pa_of(cfg.load_ipa) + image_size,
        );
        let aligned = end.next_multiple_of(8).min(img_end);
        for a in end..aligned {
            // SAFETY: guest RAM, still the host's; byte stores.
            unsafe { (a as *mut u8).write_volatile(0) };
        }
        // SAFETY: guest RAM, still the host's, 8-byte aligned.
        unsafe { crate::mem::zero_words(aligned, img_end - aligned) };
    }
    if let Some(i) = cfg.initrd {
        // SAFETY: as the kernel's copy, for the initrd blob.
        unsafe { crate::mem::copy_words(pa_of(initrd_ipa), i.pa, i.size) };
    }
    let initrd_range = cfg.initrd.map(|i| (initrd_ipa, initrd_ipa + i.size));
    let dtb = crate::dtb::linux_dtb(&crate::dtb::LinuxVm {
        gic: cfg.gic,
        vcpus: cfg.vcpus,
        mem: cfg.mem,
        cmdline: cfg.cmdline,
        initrd: initrd_range,
        boot,
        virtio: crate::linuxdev::dt_nodes(),
        dma_pool: cfg.protected.then(|| cfg.dma_pool()),
        hostile: crate::dtb::Hostile::None,
        pmu: !cfg.protected,
    })
    .unwrap_or_else(|e| fail(format_args!("device tree: {e}")));
    if dtb.len() as u64 > DTB_ROOM {
        fail(format_args!(
            "the device tree ({} bytes) does not fit",
            dtb.len()
        ));
    }
    let dtb_pa = pa_of(dtb_ipa);
    // SAFETY: guest RAM, still the host's, page aligned.
    unsafe { crate::mem::zero_words(dtb_pa, DTB_ROOM) };
    for (i, &b) in dtb.iter().enumerate() {
        // SAFETY: [dtb_pa, dtb_pa + DTB_ROOM) is the end of the guest's RAM,
        // still host-owned (it is given to the VM below) and used by nothing
        // else; `i` is below DTB_ROOM (checked above). Byte stores: with the
        // MMU off unaligned accesses fault.
        unsafe { ((dtb_pa + i as u64) as *mut u8).write_volatile(b) };
    }

    let pages = cfg.mem / PAGE;
    if let Err(e) = hostif::give(handle.0, ram_pa, GUEST_RAM_IPA, pages, cfg.protected, false) {
        fail(format_args!("giving memory to linux: {e:?}"));
    }
    if let Err(e) = crate::hostif::vcpu_init(handle.0, 0, cfg.entry, dtb_ipa) {
        fail(format_args!("VCPU_INIT for linux: {e:?}"));
    }
    crate::linuxdev::attach(handle.0, ram_pa, cfg.mem);
    (handle, dtb.len())
}

/// Creates the VM for the kernel named in the boot arguments.
pub fn create(info: &'static BootInfo) -> Guest {
    let cfg = CONFIG.call_once(|| parse(info));
    crate::attack_linux::init(info);
    crate::linuxdev::init(info, cfg.protected);
    let mem = cfg.mem;
    let ram_pa = crate::alloc_pages(mem)
        .unwrap_or_else(|| fail(format_args!("no {} MiB of host RAM for linux", mem >> 20)));
    let (handle, dtb_size) = load(cfg, ram_pa, 1);
    println!(
        "host: VM {} (linux): {} vCPUs, {} MiB at IPA {GUEST_RAM_IPA:#x}, {}",
        handle.0,
        cfg.vcpus,
        mem >> 20,
        if cfg.protected {
            "protected (donated)"
        } else {
            "normal (lent)"
        }
    );
    println!(
        "host: linux: kernel {:#x} bytes at IPA {:#x} (entry {:#x}), initrd {:#x} bytes at {:#x}, DTB {dtb_size} bytes at {:#x}",
        cfg.kernel.size,
        cfg.load_ipa,
        cfg.entry,
        cfg.initrd.map_or(0, |i| i.size),
        cfg.initrd_ipa(),
        cfg.dtb_ipa(),
    );
    println!("host: linux: command line \"{}\"", cfg.cmdline);
    println!(
        "host: linux: vCPU 0 starts at counter {} ({} Hz)",
        counter(),
        counter_hz()
    );
    if flag(info, "linux-probe") {
        if !cfg.protected {
            fail(format_args!("linux-probe needs guest-protected"));
        }
        crate::probe::start(handle.0, ram_pa, mem);
    }
    // The demo's virtio devices exist for every guest; Linux's device tree
    // does not list them, so its RAM disk stays unused.
    let Some(disk_pa) = crate::alloc_pages(crate::demo::DISK_BYTES) else {
        crate::fail(format_args!("linux: no host memory for the device state"));
    };
    Guest {
        handle,
        vcpus: cfg.vcpus,
        protected: cfg.protected,
        name: "linux",
        stopped: AtomicBool::new(false),
        device: AtomicU64::new(0),
        ram_pa,
        ram: cfg.mem,
        start_after: 0,
        devices: spin::Mutex::new(crate::demo::Devices::new(handle.0, disk_pa, cfg.protected)),
        first_cpu: 0,
        reap: false,
        reaped: AtomicBool::new(false),
        migrate: false,
        ran_on: [const { core::sync::atomic::AtomicU64::new(0) }; 8],
        roam: false,
        hops: core::sync::atomic::AtomicUsize::new(0),
    }
}

/// The kernel's VM `g` reset and was destroyed: creates it again from the
/// same kernel, initrd and command line (QEMU's loader left them in host
/// RAM, untouched), over the same RAM, as boot `boot`.
pub fn reload(g: &Guest, boot: u32) -> Handle {
    let Some(cfg) = CONFIG.get() else {
        fail(format_args!("linux: no kernel to reload"));
    };
    let (handle, _) = load(cfg, g.ram_pa, boot);
    println!(
        "host: linux: boot {boot}: vCPU 0 starts at counter {}",
        counter()
    );
    handle
}

/// The virtual counter (CNTVCT_EL0; the host's CNTVOFF_EL2 is 0, so this is
/// the system counter). Under `-icount shift=0` QEMU's virtual clock advances
/// one nanosecond per instruction, so at 1 GHz one tick is one instruction.
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reads a counter register; no memory, no side effects.
    unsafe { core::arch::asm!("isb", "mrs {0}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

fn counter_hz() -> u64 {
    let v: u64;
    // SAFETY: as above.
    unsafe { core::arch::asm!("mrs {0}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// `linux-hold=SECS`: after the VMs are gone, keeps the machine up SECS
/// seconds of the counter (at most 60), saying so first: a test dumps the
/// host's memory through QEMU's monitor meanwhile (`probe`).
pub fn hold(info: &BootInfo) {
    let Some(w) = word(info, "linux-hold") else {
        return;
    };
    let secs = num(w)
        .filter(|&s| s <= 60)
        .unwrap_or_else(|| fail(format_args!("linux-hold={w}: give seconds, at most 60")));
    println!("host: linux: holding the machine for {secs} s");
    let t0 = counter();
    while counter() - t0 < secs * counter_hz() {
        core::hint::spin_loop();
    }
    println!("host: linux: hold over");
}

/// Called when the kernel's VM `g` powers off: the counter, for boot timing.
pub fn powered_off(g: &Guest) {
    let handle = g.handle.0;
    println!(
        "host: linux: powered off at counter {} ({} Hz)",
        counter(),
        counter_hz()
    );
    // What the guest shared and guarded through the pKVM calls, as the
    // hypervisor counted them (only a protected VM makes them; guards of
    // pages the hypervisor emulates itself are not counted: nothing there
    // reaches the host either way).
    let calls = |i| {
        hostif::call(
            hyp_abi::STATS,
            [handle, hyp_abi::STATS_GUEST_CALLS + i, 0, 0],
        )
        .unwrap_or(0)
    };
    println!(
        "host: linux: pKVM calls: {} MEM_SHARE, {} MEM_UNSHARE, {} MMIO_GUARD of the host's device pages",
        calls(0),
        calls(1),
        calls(2)
    );
    if let Some(cfg) = CONFIG.get() {
        crate::attack_linux::powered_off(g.protected, g.ram_pa, g.ram, cfg.dma_pool());
    }
}
