//! The host VM: the VMM of the pKVM model, a small EL1 program that owns
//! the machine's RAM (identity-mapped at stage 2) and drives guests only
//! through the hypervisor's host control interface (`hyp-abi`).
//!
//! At boot the hypervisor hands it a [`hyp_abi::BootInfo`]: its RAM, the
//! CPU count, the boot arguments and the guest images. The host then
//! - creates one VM per guest named in `guests=` (or `guest=`), copies the
//!   image into pages of its own RAM and gives them to the VM (lent to a
//!   normal VM, donated to a protected one), and sets vCPU 0's entry (x0 =
//!   the VM's handle);
//! - optionally (`fuzz=N seed=S`, [`fuzz`]) first attacks the hypervisor
//!   from every host CPU: N random control calls interleaved with runs of
//!   live protected and normal VMs, checked against a model, with probes
//!   and the hypervisor's self-audit after every batch;
//! - brings up its other CPUs with PSCI and runs every VM's vCPU *v* on host
//!   CPU *v mod cpus*, answering the exits the hypervisor forwards (MMIO to
//!   its test device, yields, CPU_OFF, SYSTEM_OFF);
//! - when every VM has powered off, destroys them, prints what it saw and
//!   powers the machine off.
//!
//! Guest list syntax: `guests=NAME[:p][:vN][:lazy],...` (`:p` protected, `:vN` N
//! vCPUs, default 4 for one guest, else 1; `:lazy` memory mapped at stage 2
//! on first touch, see `bench.rs`; `:roam`: a one-vCPU guest moves to the
//! next host CPU after each run; `:sve=BITS`: the VM's SVE vector-length
//! cap, asked for at VM_CREATE).
//!
//! Without `guests=` or `guest=` the host runs the protected-guest demo
//! ([`demo`], issue 7): two protected guests and one normal guest
//! (`guest-virtio`, 2 vCPUs each) with virtio console and block devices,
//! isolation probes, and scrub and secret checks at teardown. Its last line
//! is `demo: PASS ...` or `demo: FAIL <reason>` (then MACHINE_EXIT(1)).
#![no_std]
#![no_main]

extern crate alloc;

mod attack;
mod attack_intx;
mod attack_linux;
mod bench;
mod demo;
mod dtb;
mod fuzz;
mod hostif;
mod intx;
mod irqdev;
mod linux;
mod linuxdev;
mod many;
mod mem;
mod pci;
mod probe;
mod restart;

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use guest_rt::println;
use hostif::{call, Handle};
use hyp_abi::{exit, BootInfo, HostError, BOOT_MAGIC};

/// IPA where guest RAM starts (where guest-rt programs are linked).
pub use hyp_abi::layout::RAM_IPA as GUEST_RAM_IPA;
/// RAM per guest.
pub const GUEST_RAM: u64 = 16 << 20;
/// The demo's guests: two protected, one normal, 2 vCPUs each.
const DEMO_GUESTS: &str = "guest-virtio:p:v2,guest-virtio:p:v2,guest-virtio:v2";
/// IPA of the host-emulated test device every guest may use: the start of the host's MMIO window.
const TEST_DEVICE_IPA: u64 = hyp_abi::layout::HOST_MMIO_IPA;
const MAX_GUESTS: usize = 8;
/// Page size.
pub const PAGE: u64 = 4096;

/// A guest VM the host created.
pub struct Guest {
    handle: Handle,
    vcpus: usize,
    protected: bool,
    name: &'static str,
    stopped: AtomicBool,
    /// The test device's register.
    device: AtomicU64,
    ram_pa: u64,
    /// Bytes of guest RAM at [`GUEST_RAM_IPA`].
    ram: u64,
    /// Guest option `after=MS`: its vCPUs first run this many counter ticks
    /// after the host starts serving ([`SERVE_START`]).
    start_after: u64,
    /// Its virtio devices (demo).
    devices: spin::Mutex<demo::Devices>,
    /// Guest option `cpu=N`: its vCPU v runs on host CPU (N + v) mod CPUs.
    first_cpu: usize,
    /// Guest option `reap`: destroyed by the CPU that sees it power off,
    /// while the other VMs run on, not at the end.
    reap: bool,
    /// Destroyed already (`reap`).
    reaped: AtomicBool,
    /// Guest option `migrate`: every host CPU runs any of its vCPUs that no
    /// other CPU is running (VCPU_RUN's `Busy` is skipped), so they move
    /// between CPUs; `ran_on` records where (one bit per CPU, per vCPU).
    migrate: bool,
    ran_on: [AtomicU64; 8],
    /// Guest option `roam` (one vCPU): after each of its runs the vCPU
    /// moves on to the next host CPU ([`Guest::hops`] of them so far).
    roam: bool,
    /// Runs of a `roam` guest, each on another host CPU than the last.
    hops: AtomicUsize,
}

impl Guest {
    /// The host CPU that runs vCPU `v` now: (`cpu=` + v) mod CPUs, moved on
    /// by one with each run of a `roam` guest.
    fn cpu_of(&self, v: usize, cpus: usize) -> usize {
        let hops = if self.roam {
            self.hops.load(Ordering::Acquire)
        } else {
            0
        };
        (self.first_cpu + v + hops) % cpus
    }
}

/// Counter value when the host started serving its guests (guest option
/// `after=MS` counts from here).
static SERVE_START: AtomicU64 = AtomicU64::new(0);

/// Whether the host runs the demo (no guest list given).
static DEMO: AtomicBool = AtomicBool::new(false);

static GUESTS: spin::Once<([Option<Guest>; MAX_GUESTS], usize)> = spin::Once::new();
static CPUS: AtomicUsize = AtomicUsize::new(1);
static DONE_CPUS: AtomicUsize = AtomicUsize::new(0);
static MMIO_EXITS: AtomicU64 = AtomicU64::new(0);
static YIELDS: AtomicU64 = AtomicU64::new(0);
/// HOST_IDLE calls: rounds after which every vCPU of a CPU waited.
static SLEEPS: AtomicU64 = AtomicU64::new(0);
static NEXT_FREE: spin::Mutex<u64> = spin::Mutex::new(0);
static RAM_END: AtomicU64 = AtomicU64::new(0);

/// Size of the host's heap.
const HEAP_SIZE: usize = 64 << 10;

/// The heap's memory (in .bss, zeroed at entry), for what crates build in
/// `alloc` collections: the device tree for an external kernel (vm-fdt,
/// [`dtb`]), a few KiB. [`primary`] gives it to guest-rt's allocator.
static mut HEAP_SPACE: [u8; HEAP_SIZE] = [0; HEAP_SIZE];

/// Takes `bytes` (page multiple) of host RAM for a guest.
pub fn alloc_pages(bytes: u64) -> Option<u64> {
    let mut next = NEXT_FREE.lock();
    let base = next.next_multiple_of(2 << 20);
    if base + bytes > RAM_END.load(Ordering::Relaxed) {
        return None;
    }
    *next = base + bytes;
    Some(base)
}

fn boot_info(arg: u64) -> &'static BootInfo {
    // SAFETY: the hypervisor passes the address of a BootInfo in our RAM in
    // x0; it stays there (below free_base) for the host's lifetime.
    let info = unsafe { &*(arg as *const BootInfo) };
    assert_eq!(info.magic, BOOT_MAGIC, "no boot info at {arg:#x}");
    info
}

fn arg<'a>(info: &'a BootInfo, key: &str) -> Option<&'a str> {
    // Words after ` -- ` are a guest kernel's command line (linux.rs).
    hyp_abi::own_arg(info.bootargs(), key)
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, arg_ptr: u64) -> ! {
    let info = boot_info(arg_ptr);
    if cpu == 0 {
        primary(info, arg_ptr);
    }
    if fuzz::running() {
        fuzz::secondary(cpu);
    }
    serve(cpu);
    DONE_CPUS.fetch_add(1, Ordering::AcqRel);
    guest_rt::cpu_off();
}

fn primary(info: &'static BootInfo, arg_ptr: u64) -> ! {
    // SAFETY: HEAP_SPACE is used by nothing but the heap, which this CPU
    // gives it once, before anything allocates and before the other CPUs
    // are started.
    guest_rt::heap::give(unsafe { &mut *core::ptr::addr_of_mut!(HEAP_SPACE) });
    println!(
        "host: up on {} CPUs, {} MiB RAM at {:#x}, {} guest images",
        info.cpus,
        info.ram_size >> 20,
        info.ram_base,
        info.nr_modules
    );
    CPUS.store(info.cpus as usize, Ordering::Relaxed);
    *NEXT_FREE.lock() = info.free_base;
    RAM_END.store(info.ram_base + info.ram_size, Ordering::Relaxed);

    if let Some(n) = arg(info, "fuzz").and_then(|n| n.parse::<u64>().ok()) {
        let seed = arg(info, "seed").and_then(|s| s.parse().ok()).unwrap_or(1);
        fuzz::run(n, seed, info, arg_ptr);
        hostif::run_flag_checks();
    }
    let alone = arg(info, "guests").is_none() && arg(info, "guest").is_none();
    if alone && arg(info, "fuzz").is_some() {
        guest_rt::system_off();
    }
    if let Some(n) = arg(info, "vms").and_then(|n| n.parse::<u64>().ok()) {
        many::run(info, n);
        if alone {
            guest_rt::system_off();
        }
    }
    if let Some(a) = arg(info, "attack") {
        attack::run(info, a);
        if alone {
            guest_rt::system_off();
        }
    }
    // VMs that stay idle while the guests run (exit costs with many VMs).
    let _idle = arg(info, "idle")
        .and_then(|n| n.parse::<u64>().ok())
        .map(many::idle);

    let linux = linux::requested(info);
    let list = arg(info, "guests").or_else(|| arg(info, "guest"));
    // The demo is the default unless a guest list or an external kernel
    // (linux=...) was asked for.
    // Guest memory the host reaches goes through guarded accesses (virtio
    // rings and buffers, probes): a page the hypervisor refuses (a protected
    // guest's private memory) is skipped and counted, in every mode. Without
    // the hook, a protected guest that points its device at private memory
    // made the host panic and power off the machine.
    demo::install();
    let list = list.or(linux.then_some("")).unwrap_or_else(|| {
        DEMO.store(true, Ordering::Relaxed);
        println!(
            "demo: two protected VMs and one normal VM (guest-virtio, 2 vCPUs each), virtio console and block served by this host"
        );
        DEMO_GUESTS
    });
    let demo_mode = DEMO.load(Ordering::Relaxed);
    let count = list.split(',').count();
    let mut guests: [Option<Guest>; MAX_GUESTS] = [const { None }; MAX_GUESTS];
    let mut n = 0;
    if linux {
        // An external kernel (linux=...; see linux.rs) instead of the list.
        guests[0] = Some(linux::create(info));
        n = 1;
    }
    if list
        .split(',')
        .any(|g| g.split(':').next() == Some("guest-bench"))
    {
        // The bench also reports the barriers of the multi-page host calls.
        bench::barrier_report();
    }
    for spec in list.split(',').filter(|_| !linux) {
        if n == MAX_GUESTS {
            fail(format_args!("more than {MAX_GUESTS} guests"));
        }
        let g = create_guest(info, spec, count);
        if demo_mode {
            demo::probe_new_vm(&g);
        }
        guests[n] = Some(g);
        n += 1;
    }
    if arg(info, "assign") == Some("rtc") {
        // QEMU virt's PL031 (see platforms/qemu/board.toml) to VM 1.
        let h = guests[0].as_ref().map_or(0, |g| g.handle.0);
        match call(hyp_abi::DEVICE_ASSIGN, [h, 0x0901_0000, 0x1000, 34]) {
            Ok(_) => println!("host: PL031 RTC assigned to VM {h}"),
            Err(e) => fail(format_args!("DEVICE_ASSIGN of the RTC to VM {h}: {e:?}")),
        }
        // A device belongs to one VM; a frame or interrupt that is not an
        // assignable device is refused.
        let again = call(hyp_abi::DEVICE_ASSIGN, [h, 0x0901_0000, 0x1000, 34]);
        let uart = call(hyp_abi::DEVICE_ASSIGN, [h, 0x0900_0000, 0x1000, 33]);
        println!("host: assigning it again: {again:?}; assigning the UART: {uart:?}");
    }
    // What is typed on the console goes to the first guest (the kernel's
    // VM with linux=...); the demo's guests read no input.
    if let Some(g) = guests[0].as_ref().filter(|_| !demo_mode) {
        restart::focus(g.handle.0);
    }
    restart::set_boot_info(info);
    GUESTS.call_once(|| (guests, n));
    SERVE_START.store(guest_rt::gic::counter(), Ordering::Release);

    start_cpus(info.cpus, arg_ptr);
    serve(0);
    // Wait (bounded) for the other host CPUs to finish their share.
    let mut spins = 0u64;
    while DONE_CPUS.load(Ordering::Acquire) + 1 < info.cpus as usize {
        spins += 1;
        if spins > 1_000_000_000 {
            fail(format_args!("host CPUs did not finish"));
        }
        core::hint::spin_loop();
    }
    teardown(n);
    if demo_mode {
        demo_verdict(info, n);
    }
    linux::hold(info);
    guest_rt::system_off()
}

/// The demo's last checks and its last line.
fn demo_verdict(info: &BootInfo, n: usize) {
    let Some((guests, _)) = GUESTS.get() else {
        return;
    };
    let all = || guests[..n].iter().flatten();
    let protected: [u64; MAX_GUESTS] = core::array::from_fn(|i| match &guests[i] {
        Some(g) if i < n && g.protected => g.handle.0,
        _ => 0,
    });
    let mut handles = [0u64; MAX_GUESTS];
    let mut np = 0;
    for h in protected.into_iter().filter(|h| *h != 0) {
        handles[np] = h;
        np += 1;
    }
    // The search reads all 768 MiB: with the MMU off every load is a
    // Device access, which QEMU emulates slowly without FEAT_S2FWB (32 s on
    // raspi4b). The other host CPUs are off now, every VM is gone and its
    // pages were cleaned to PoC by the scrub, and the host never had caches
    // on before, so no cache line can hide or stale anything: this CPU
    // turns on its MMU and caches (identity map) for the search.
    guest_rt::mmu::enable();
    demo::scan_secrets(info.ram_base, info.ram_size, &handles[..np]);
    let normal = all().filter(|g| !g.protected).count();
    let errors = demo::DEVICE_ERRORS.load(Ordering::SeqCst);
    if errors != 0 {
        fail(format_args!(
            "the guests' drivers caused {errors} device errors"
        ));
    }
    let ok = demo::GUESTS_OK.load(Ordering::SeqCst);
    if ok != n as u64 {
        fail(format_args!("{ok} of {n} guests reported success"));
    }
    let denied = demo::hyp_denied();
    let expected = demo::EXPECT_DENIED.load(Ordering::SeqCst);
    if denied != expected {
        fail(format_args!(
            "the hypervisor refused {denied} host accesses, the probes expected {expected}"
        ));
    }
    let scrubbed = SCRUBBED.load(Ordering::SeqCst);
    println!(
        "demo: PASS protected={np} normal={normal} denied={denied} shared={} scrubbed={scrubbed}",
        demo::SHARED.load(Ordering::SeqCst)
    );
}

/// Starts host CPUs 1..`cpus` (PSCI CPU_ON) at the host's entry with
/// `arg_ptr`, as the hypervisor started CPU 0.
pub fn start_cpus(cpus: u64, arg_ptr: u64) {
    for c in 1..cpus {
        let r = guest_rt::hvc(
            smccc::psci::PSCI_CPU_ON_64,
            c,
            guest_rt::entry_point(),
            arg_ptr,
        );
        if r[0] != 0 {
            fail(format_args!(
                "PSCI CPU_ON of host CPU {c} returned {}",
                r[0] as i64
            ));
        }
    }
}

/// Copies guest image `module` into the guest RAM whose first byte (IPA
/// `GUEST_RAM_IPA`) is host RAM at `ram_pa`.
///
/// # Safety
///
/// The image's span there is host RAM nobody else uses. Word copies: the
/// host runs with its MMU off, where unaligned accesses fault.
pub unsafe fn load_image(module: &hyp_abi::Module, ram_pa: u64) {
    // SAFETY: the module lies below free_base (host RAM, identity mapped,
    // page aligned); the destination is the caller's (contract).
    unsafe {
        mem::copy_words(
            ram_pa + module.load_ipa - GUEST_RAM_IPA,
            module.addr,
            module.size,
        );
    }
}

/// Pages VM_DESTROY scrubbed, over all VMs.
static SCRUBBED: AtomicU64 = AtomicU64::new(0);

fn fail(why: core::fmt::Arguments<'_>) -> ! {
    if DEMO.load(Ordering::Relaxed) {
        println!("demo: FAIL {why}");
    } else {
        println!("host: FAIL {why}");
    }
    let _ = call(hyp_abi::MACHINE_EXIT, [1, 0, 0, 0]);
    guest_rt::system_off()
}

/// A guest as its `guests=` entry describes it.
pub struct Spec {
    name: &'static str,
    protected: bool,
    lazy: bool,
    vcpus: usize,
    start_after: u64,
    arg: u64,
    ram: u64,
    first_cpu: usize,
    reap: bool,
    migrate: bool,
    roam: bool,
    /// Guest option `sve=BITS`: the SVE vector-length cap asked for at
    /// VM_CREATE, in quadwords ([`hyp_abi::flag_sve_vq`]; 0: the
    /// hypervisor's). Passed as given: the hypervisor refuses a length that
    /// is not a power of two up to 2048 bits.
    sve_vq: u64,
}

/// Parses guest list entry `spec` (one of `count`).
pub fn parse_spec(spec: &'static str, count: usize) -> Spec {
    let mut parts = spec.split(':');
    let mut s = Spec {
        name: parts.next().unwrap_or(""),
        protected: false,
        lazy: false,
        vcpus: if count == 1 { 4 } else { 1 },
        start_after: 0,
        arg: 0,
        ram: GUEST_RAM,
        first_cpu: 0,
        reap: false,
        migrate: false,
        roam: false,
        sve_vq: 0,
    };
    for p in parts {
        if p == "p" {
            s.protected = true;
        } else if p == "lazy" {
            s.lazy = true;
        } else if p == "reap" {
            s.reap = true;
        } else if p == "migrate" {
            s.migrate = true;
        } else if p == "roam" {
            s.roam = true;
        } else if let Some(mib) = p
            .strip_prefix("mem=")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|m| (16..=1024).contains(m))
        {
            s.ram = mib << 20;
        } else if let Some(c) = p.strip_prefix("cpu=").and_then(|v| v.parse::<usize>().ok()) {
            s.first_cpu = c;
        } else if let Some(a) = p
            .strip_prefix("arg=")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|a| *a < 1 << 56)
        {
            s.arg = a;
        } else if let Some(bits) = p
            .strip_prefix("sve=")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|b| *b > 0 && b % 128 == 0 && *b <= 128 << 16)
        {
            s.sve_vq = bits / 128;
        } else if let Some(ms) = p.strip_prefix("after=").and_then(|v| v.parse::<u64>().ok()) {
            s.start_after = ms.saturating_mul(guest_rt::gic::counter_hz() / 1000);
        } else if let Some(v) = p.strip_prefix('v').and_then(|v| v.parse().ok()) {
            s.vcpus = v;
        } else {
            fail(format_args!("bad guest option {p:?} in {spec:?}"));
        }
    }
    if s.roam && s.vcpus != 1 {
        // Its vCPUs would meet on one host CPU's turn.
        fail(format_args!("roam needs one vCPU (:v1) in {spec:?}"));
    }
    s
}

fn create_guest(info: &BootInfo, spec: &'static str, count: usize) -> Guest {
    let s = parse_spec(spec, count);
    let name = s.name;
    let Some(ram_pa) = alloc_pages(s.ram) else {
        fail(format_args!("out of host memory for {name}"));
    };
    let Some(disk_pa) = alloc_pages(demo::DISK_BYTES) else {
        fail(format_args!("out of host memory for {name}'s disk"));
    };
    let handle = load_guest(info, &s, ram_pa);
    println!(
        "host: VM {} ({name}): {} vCPUs, {} MiB at IPA {GUEST_RAM_IPA:#x}, {}",
        handle.0,
        s.vcpus,
        s.ram >> 20,
        if s.protected {
            "protected (donated)"
        } else {
            "normal (lent)"
        }
    );
    restart::remember(handle.0, spec, count);
    Guest {
        handle,
        vcpus: s.vcpus,
        protected: s.protected,
        name,
        stopped: AtomicBool::new(false),
        device: AtomicU64::new(0),
        ram_pa,
        ram: s.ram,
        start_after: s.start_after,
        devices: spin::Mutex::new(demo::Devices::new(handle.0, disk_pa, s.protected)),
        first_cpu: s.first_cpu,
        reap: s.reap,
        reaped: AtomicBool::new(false),
        migrate: s.migrate,
        ran_on: [const { AtomicU64::new(0) }; 8],
        roam: s.roam,
        hops: AtomicUsize::new(0),
    }
}

/// Creates the VM of guest `s` over its RAM at host `ram_pa` (cleared, the
/// image loaded), gives it the RAM and sets vCPU 0's entry.
pub fn load_guest(info: &BootInfo, s: &Spec, ram_pa: u64) -> Handle {
    let name = s.name;
    let Some(module) = info.modules().iter().find(|m| m.name() == name) else {
        fail(format_args!("no guest image named {name:?}"));
    };
    let flags = if s.protected {
        hyp_abi::FLAG_PROTECTED
    } else {
        0
    } | hyp_abi::flag_sve_vq(s.sve_vq);
    let handle = match hostif::vm_create(s.vcpus as u64, flags) {
        Ok(h) => h,
        Err(e) => fail(format_args!("VM_CREATE for {name}: {e:?}")),
    };
    let off = module.load_ipa - GUEST_RAM_IPA;
    if off + module.size > s.ram {
        fail(format_args!("{name} does not fit its RAM"));
    }
    // SAFETY: [ram_pa, ram_pa + ram) is host RAM nobody else uses (bump
    // allocated, or a destroyed VM's, lent and back), the module lies below
    // free_base; both are mapped by the host's identity stage 2. Word
    // copies: the host runs with its MMU off, where unaligned accesses
    // fault. Only the first GUEST_RAM bytes are cleared: the bump allocator
    // never hands out RAM twice, and RAM the host never touched is zero
    // from boot.
    unsafe {
        mem::zero_words(ram_pa, GUEST_RAM);
        load_image(module, ram_pa);
    }
    let pages = s.ram / PAGE;
    let r = hostif::give(handle.0, ram_pa, GUEST_RAM_IPA, pages, s.protected, s.lazy);
    if let Err(e) = r {
        fail(format_args!("giving memory to {name}: {e:?}"));
    }
    if name == "guest-irq" {
        irqdev::prepare(handle.0);
    }
    demo::declare_irqs(handle.0);
    // x0 at entry: the VM handle in bits [7:0], the guest option `arg=N` above.
    let x0 = handle.0 | s.arg << 8;
    if let Err(e) = crate::hostif::vcpu_init(handle.0, 0, module.entry, x0) {
        fail(format_args!("VCPU_INIT for {name}: {e:?}"));
    }
    handle
}

/// Runs this host CPU's share of vCPUs until every VM has stopped.
fn serve(cpu: usize) {
    let Some((guests, n)) = GUESTS.get() else {
        return;
    };
    let cpus = CPUS.load(Ordering::Relaxed);
    let start = SERVE_START.load(Ordering::Acquire);
    loop {
        let mut live = 0;
        let mut ran = false;
        // Until when this CPU may sleep: every vCPU it ran waits for an
        // interrupt (the earliest timer deadline, the oldest event
        // generation seen), `None` once one did anything else.
        let mut idle = Some(Waiting::FOREVER);
        for g in guests[..*n].iter().flatten() {
            if g.stopped.load(Ordering::Acquire) {
                // A VM being restarted (it reset) is stopped for the moment.
                live += usize::from(restart::restarting(g.handle.0));
                continue;
            }
            live += 1;
            if g.start_after != 0 && guest_rt::gic::counter().wrapping_sub(start) < g.start_after {
                if let Some(w) = idle.as_mut() {
                    w.deadline = w.deadline.min(start.wrapping_add(g.start_after));
                }
                continue;
            }
            for v in 0..g.vcpus {
                if g.migrate || g.cpu_of(v, cpus) == cpu {
                    let r = run_vcpu(g, v as u64);
                    if g.roam {
                        // The next run is another CPU's (this one's is over).
                        g.hops.fetch_add(1, Ordering::AcqRel);
                    }
                    idle = idle.zip(r).map(|(a, b)| a.min(b));
                    ran = true;
                    if cpu + 1 == cpus {
                        // `linux-probe`: the host reads the VM's pages.
                        probe::step();
                    }
                    if cpu == 0 {
                        // The PCIe devices' INTx lines come to host vCPU 0
                        // (`intx`); a guest running on CPU 0 when one
                        // fires yields, so this comes at once.
                        intx::serve();
                    }
                }
            }
        }
        if cpu == 0 && !ran {
            intx::serve();
        }
        if live == 0 {
            return;
        }
        if let Some(w) = idle {
            // Nothing to run until a vCPU's interrupt is due: the
            // hypervisor sleeps this CPU (at most 10 ms) until the earliest
            // timer deadline, an interrupt for this CPU, or an event that
            // may have made one of its vCPUs runnable.
            SLEEPS.fetch_add(1, Ordering::Relaxed);
            let _ = call(hyp_abi::HOST_IDLE, [w.deadline, w.generation, 0, 0]);
        }
    }
}

/// A vCPU that waits for an interrupt (its WFI) or cannot run (off): when
/// its timer fires (counter value; `u64::MAX`: never) and the event
/// generation its run ended at (`u64::MAX`: unknown, count from the sleep).
#[derive(Clone, Copy)]
struct Waiting {
    deadline: u64,
    generation: u64,
}

impl Waiting {
    const FOREVER: Waiting = Waiting {
        deadline: u64::MAX,
        generation: u64::MAX,
    };

    /// Both waits at once: the earlier deadline, the older generation.
    fn min(self, o: Waiting) -> Waiting {
        Waiting {
            deadline: self.deadline.min(o.deadline),
            generation: self.generation.min(o.generation),
        }
    }
}

/// Consecutive MMIO reads of one vCPU the host answers by resuming it at
/// once (VCPU_RUN with [`hyp_abi::RUN_COMPLETE_MMIO`]) before it serves the
/// other vCPUs: EL2's time slice restarts at every VCPU_RUN, so without a
/// bound a guest reading device registers in a loop would keep this CPU.
const MMIO_BURST: usize = 64;

/// Runs vCPU `v` of `g` until it yields, stops or has had [`MMIO_BURST`]
/// MMIO exits. An MMIO read is answered in the next VCPU_RUN itself; an
/// off vCPU or a stopped VM makes VCPU_RUN return `State`. Returns how it
/// waits when it waits for an interrupt or is off, `None` when it did
/// anything else.
fn run_vcpu(g: &Guest, v: u64) -> Option<Waiting> {
    let mut answer: Option<u64> = None;
    for _ in 0..MMIO_BURST {
        let (flags, value) = match answer.take() {
            Some(val) => (hyp_abi::RUN_COMPLETE_MMIO, val),
            None => (0, 0),
        };
        let r = hostif::call_full(hyp_abi::VCPU_RUN, [g.handle.0, v, flags, value]);
        match r[0] {
            exit::MEMORY => {
                // The VM's pages for stage-2 tables ran out at a fault: give
                // it more; the vCPU retries the access when it runs again.
                if let Err(e) = hostif::topup(g.handle.0) {
                    fail(format_args!(
                        "VM_TOPUP for VM {} at {:#x}: {e:?}",
                        g.handle.0, r[1]
                    ));
                }
            }
            exit::MMIO => {
                MMIO_EXITS.fetch_add(1, Ordering::Relaxed);
                let (ipa, mmio, value) = (r[1], r[2], r[3]);
                let write = mmio & (1 << 8) != 0;
                // The Linux VM's disk and network sit where the demo's
                // devices do (QEMU virt's virtio-mmio windows): they go first.
                let val = if linuxdev::owns(g.handle.0, ipa) {
                    linuxdev::mmio(g, ipa, mmio, value)
                } else if demo::is_demo_device(ipa) {
                    demo::mmio(g, ipa, mmio, value)
                } else if g.name == "guest-irq" && irqdev::owns(ipa) {
                    irqdev::mmio(g.handle.0, ipa, write, value)
                } else {
                    if ipa & !0xfff != TEST_DEVICE_IPA && ipa != guest_rt::demo::REAPED_IPA {
                        println!(
                            "host: VM {} vCPU {v}: MMIO at {ipa:#x} has no device",
                            g.handle.0
                        );
                    }
                    if write {
                        g.device.store(value, Ordering::Relaxed);
                        0
                    } else if ipa == guest_rt::demo::REAPED_IPA {
                        REAPING.load(Ordering::Acquire) | REAPED.load(Ordering::Acquire) << 16
                    } else {
                        g.device.load(Ordering::Relaxed).wrapping_add(1)
                    }
                };
                if !write {
                    answer = Some(val);
                }
                if g.name == "linux" {
                    attack_linux::mmio_exit(g.handle.0, g.vcpus, v, &mut answer);
                }
            }
            code => {
                vcpu_stopped(g, v, code);
                return match (code, HostError::from_code(code)) {
                    // A WFI with nothing to take: x1 = 1, its timer, the
                    // event generation.
                    (exit::YIELD, _) if r[1] == 1 => Some(Waiting {
                        deadline: r[2],
                        generation: r[3],
                    }),
                    // Off (or its VM stopped): it waits for a CPU_ON, an
                    // event counted from the sleep.
                    (_, Some(HostError::State)) => Some(Waiting::FOREVER),
                    _ => None,
                };
            }
        }
    }
    if let Some(val) = answer {
        if let Err(e) = call(hyp_abi::MMIO_COMPLETE, [g.handle.0, v, val, 0]) {
            fail(format_args!("MMIO_COMPLETE: {e:?}"));
        }
    }
    None
}

/// A VCPU_RUN result other than an MMIO exit.
fn vcpu_stopped(g: &Guest, v: u64, code: u64) {
    if g.migrate && HostError::from_code(code) != Some(HostError::Busy) {
        // This host vCPU's index is its CPU's (MPIDR Aff0).
        let mpidr: u64;
        // SAFETY: reads MPIDR_EL1.
        unsafe { core::arch::asm!("mrs {0}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
        if let Some(m) = g.ran_on.get(v as usize) {
            m.fetch_or(1 << (mpidr & 0x3f), Ordering::Relaxed);
        }
    }
    if code == exit::SYSTEM_OFF || code == exit::SYSTEM_RESET {
        // Received frames no longer go into its memory.
        linuxdev::detach(g.handle.0);
        probe::stop(g.handle.0);
    }
    match code {
        exit::YIELD => {
            YIELDS.fetch_add(1, Ordering::Relaxed);
        }
        exit::CPU_OFF => {}
        exit::SYSTEM_RESET if restart::can_restart(g) => restart::reset(g),
        exit::SYSTEM_OFF | exit::SYSTEM_RESET => {
            let how = if code == exit::SYSTEM_OFF {
                "off"
            } else {
                "reset"
            };
            if !g.stopped.swap(true, Ordering::AcqRel) {
                if g.name == "linux" {
                    linux::powered_off(g);
                }
                println!("host: VM {} ({}) powered {how}", g.handle.0, g.name);
                if g.migrate {
                    for (v, m) in g.ran_on.iter().take(g.vcpus).enumerate() {
                        let m = m.load(Ordering::Relaxed);
                        println!("host: VM {} vCPU {v} ran on CPUs {m:#x}", g.handle.0);
                    }
                }
                if g.reap {
                    reap(g);
                }
            }
        }
        code => match HostError::from_code(code) {
            // The VM stopped (another vCPU's SYSTEM_OFF), or the vCPU is
            // off (never started, or PSCI CPU_OFF).
            Some(HostError::State) => {}
            // The VM is being restarted on another CPU (destroyed, not yet
            // created again).
            Some(HostError::NoVm) if restart::restarted(g.handle.0) => {}
            // Another CPU runs it (`migrate`).
            Some(HostError::Busy) if g.migrate => {}
            Some(e) => fail(format_args!("VCPU_RUN {}/{v}: {e:?}", g.handle.0)),
            None => fail(format_args!(
                "VCPU_RUN {}/{v}: unknown exit {code}",
                g.handle.0
            )),
        },
    }
}

/// VMs [`reap`] has begun and finished destroying so far (guests read
/// `begun | finished << 16` at `guest_rt::demo::REAPED_IPA`).
static REAPING: AtomicU64 = AtomicU64::new(0);
static REAPED: AtomicU64 = AtomicU64::new(0);

/// Destroys `g` now (guest option `reap`), while the other VMs run on.
fn reap(g: &Guest) {
    REAPING.fetch_add(1, Ordering::AcqRel);
    let t0 = guest_rt::gic::counter();
    match hostif::destroy_vm(g.handle.0) {
        Ok(scrubbed) => {
            let us = (guest_rt::gic::counter() - t0) * 1_000_000 / guest_rt::gic::counter_hz();
            println!(
                "host: VM {} ({}) destroyed while the others run: {scrubbed} pages scrubbed in {us} us",
                g.handle.0, g.name
            );
            SCRUBBED.fetch_add(scrubbed, Ordering::SeqCst);
            g.reaped.store(true, Ordering::Release);
            REAPED.fetch_add(1, Ordering::AcqRel);
        }
        Err(e) => fail(format_args!("VM_DESTROY {}: {e:?}", g.handle.0)),
    }
}

fn teardown(n: usize) {
    let Some((guests, _)) = GUESTS.get() else {
        return;
    };
    for g in guests[..n].iter().flatten() {
        if g.reaped.load(Ordering::Acquire) {
            continue;
        }
        let exits = call(hyp_abi::STATS, [g.handle.0, hyp_abi::STATS_TOTAL, 0, 0]).unwrap_or(0);
        if g.roam {
            println!(
                "host: VM {} ({}) moved to another host CPU {} times",
                g.handle.0,
                g.name,
                g.hops.load(Ordering::Acquire)
            );
        }
        match hostif::destroy_vm(g.handle.0) {
            Ok(scrubbed) => {
                println!(
                    "host: VM {} ({}) destroyed: {} exits, {} pages scrubbed{}",
                    g.handle.0,
                    g.name,
                    exits,
                    scrubbed,
                    if g.protected { "" } else { " (lent memory)" }
                );
                SCRUBBED.fetch_add(scrubbed, Ordering::SeqCst);
                if g.protected && DEMO.load(Ordering::Relaxed) {
                    demo::check_scrubbed(g, scrubbed);
                }
            }
            Err(e) => fail(format_args!("VM_DESTROY {}: {e:?}", g.handle.0)),
        }
        let _ = g.ram_pa;
    }
    irqdev::report();
    linuxdev::report();
    println!(
        "host: done: {} MMIO exits served, {} yields, {} sleeps",
        MMIO_EXITS.load(Ordering::Relaxed),
        YIELDS.load(Ordering::Relaxed),
        SLEEPS.load(Ordering::Relaxed)
    );
}
