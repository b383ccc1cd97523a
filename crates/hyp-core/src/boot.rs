//! Bringing the hypervisor up on every CPU, and taking the system down.

use crate::arch::world_switch::{self, HostSave};
use crate::arch::{mmu, sysreg};
use crate::platform::{MemRegion, Platform};
use crate::{console, stats, vm};
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Once;

/// Most physical CPUs the hypervisor drives.
pub const MAX_CPUS: usize = vm::MAX_VCPUS;

/// Per-CPU block; TPIDR_EL2 points at it. `host` must stay first: the
/// vectors address it at offset 0 of TPIDR_EL2.
#[repr(C)]
struct PerCpu {
    host: HostSave,
}

static mut PERCPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        host: HostSave::new(),
    }
}; MAX_CPUS];
static PLATFORM: Once<&'static Platform> = Once::new();
static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// Boot facts taken from the device tree.
#[derive(Debug)]
pub struct BootInfo {
    /// CPUs listed under /cpus.
    pub cpus: usize,
    /// Total RAM listed under /memory.
    pub memory: [MemRegion; 4],
    /// Number of valid entries in `memory`.
    pub memory_count: usize,
    /// /chosen/bootargs, copied (the DTB may lie in memory given to guests).
    pub bootargs: [u8; 128],
    /// Length of `bootargs`.
    pub bootargs_len: usize,
}

impl BootInfo {
    /// The bootargs string.
    pub fn bootargs(&self) -> &str {
        core::str::from_utf8(&self.bootargs[..self.bootargs_len]).unwrap_or("")
    }
    /// Value of `key=value` in the bootargs.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.bootargs()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

fn parse_dtb(dtb: u64) -> BootInfo {
    // SAFETY: the boot protocol passes the DTB's address in x0; `from_ptr`
    // validates the header (magic, size) before reading further.
    let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(f) => f,
        Err(e) => panic!("no valid device tree at {dtb:#x}: {e:?}"),
    };
    let mut info = BootInfo {
        cpus: fdt.cpus().count(),
        memory: [MemRegion { base: 0, size: 0 }; 4],
        memory_count: 0,
        bootargs: [0; 128],
        bootargs_len: 0,
    };
    for r in fdt.memory().regions() {
        if info.memory_count < info.memory.len() {
            info.memory[info.memory_count] = MemRegion {
                base: r.starting_address as u64,
                size: r.size.unwrap_or(0) as u64,
            };
            info.memory_count += 1;
        }
    }
    if let Some(args) = fdt.chosen().bootargs() {
        let n = args.len().min(info.bootargs.len());
        info.bootargs[..n].copy_from_slice(&args.as_bytes()[..n]);
        info.bootargs_len = n;
    }
    info
}

/// Boot facts from the board description alone, for boot loaders that pass
/// no device tree: the board's RAM regions, `PlatformOps::default_cpus`, no
/// bootargs.
fn board_info(p: &Platform) -> BootInfo {
    let mut info = BootInfo {
        cpus: p.ops.default_cpus(),
        memory: [MemRegion { base: 0, size: 0 }; 4],
        memory_count: 0,
        bootargs: [0; 128],
        bootargs_len: 0,
    };
    for r in p.ram.iter().take(info.memory.len()) {
        info.memory[info.memory_count] = *r;
        info.memory_count += 1;
    }
    info
}

fn percpu(cpu: usize) -> &'static mut HostSave {
    assert!(cpu < MAX_CPUS, "CPU index {cpu} out of range");
    // SAFETY: each CPU takes only its own slot, once.
    unsafe { &mut (*core::ptr::addr_of_mut!(PERCPU))[cpu].host }
}

/// Per-CPU EL2 set-up shared by the boot CPU and secondaries.
fn cpu_init(cpu: usize) -> (&'static mut HostSave, mmu::CpuSync) {
    let host = percpu(cpu);
    let tpidr = host as *mut HostSave as u64;
    // SAFETY: `host` is this CPU's block in a static; `mmu::build` ran on the
    // boot CPU before any CPU gets here.
    let sync = unsafe { mmu::cpu_on(vm::HCR_GUEST, world_switch::vectors_address(), tpidr) };
    (host, sync)
}

/// The boot CPU's path: console, checks, EL2 MMU and vectors, secondaries,
/// the first VM. `dtb` is the device tree's physical address, or 0 when the
/// boot loader passed none (the board's defaults are used then).
/// `secondary_entry` is the physical address secondaries start at.
pub fn primary(p: &'static Platform, dtb: u64, secondary_entry: u64) -> ! {
    console::init(p.uart_base);
    PLATFORM.call_once(|| p);
    log::info!("booting on {}", p.name);
    let el = (sysreg::current_el() >> 2) & 3;
    assert!(el == 2, "entered at EL{el}, the hypervisor needs EL2");
    crate::arch::tables::init(p);
    mmu::build(p);
    let (host, sync) = cpu_init(0);
    log::info!("EL2 MMU and caches on, vectors installed, SCTLR_EL2.EIS=EOS=1");
    p.ops.init_cpu_interrupts(0);
    let (info, source) = if dtb == 0 {
        (board_info(p), "no device tree, board defaults")
    } else {
        (parse_dtb(dtb), "device tree")
    };
    for need in [("hyp", &p.hyp), ("vm_pool", &p.vm_pool)] {
        assert!(
            info.memory[..info.memory_count]
                .iter()
                .any(|m| m.contains(need.1)),
            "board region {} {:#x}..{:#x} is not RAM according to the {source}",
            need.0,
            need.1.base,
            need.1.end()
        );
    }
    let cpus = info.cpus.clamp(1, MAX_CPUS);
    log::info!(
        "{source}: {} CPUs, {} MiB RAM, bootargs \"{}\"",
        info.cpus,
        info.memory[..info.memory_count]
            .iter()
            .map(|m| m.size)
            .sum::<u64>()
            >> 20,
        info.bootargs()
    );
    ONLINE.store(1, Ordering::Release);
    for cpu in 1..cpus {
        if let Err(e) = p.ops.start_cpu(cpu, secondary_entry, cpu as u64) {
            panic!("firmware refused to start CPU {cpu}: error {e}");
        }
    }
    // Bounded wait: QEMU brings a CPU up in well under a million spins.
    let mut spins = 0u64;
    while ONLINE.load(Ordering::Acquire) < cpus {
        spins += 1;
        assert!(
            spins < 200_000_000,
            "only {} of {cpus} CPUs came online",
            ONLINE.load(Ordering::Acquire)
        );
        core::hint::spin_loop();
    }
    log::info!("{cpus} CPUs online at EL2");

    let name = info.arg("guest").unwrap_or("guest-hello");
    let Some(image) = p.ops.guest(name) else {
        panic!("no guest payload named {name:?} in this image");
    };
    let vm = match vm::create(p, &image, cpus.min(4), 64 << 20) {
        Ok(vm) => vm,
        Err(e) => panic!("cannot create VM for {name}: {e}"),
    };
    log::info!(
        "VM {} ({name}): {} vCPUs, {} MiB at IPA {:#x}",
        vm.vmid,
        vm.nr_vcpus,
        vm.ram.size >> 20,
        vm::GUEST_RAM_IPA
    );
    barriers::maint::publish_and_wake();
    vm::run_cpu(0, vm, host, &sync);
    shutdown(p)
}

/// A secondary CPU's path, entered from the board's assembly with the MMU off.
pub fn secondary(cpu: usize) -> ! {
    let Some(p) = PLATFORM.get() else {
        panic!("secondary CPU {cpu} started before the boot CPU set up");
    };
    let (host, sync) = cpu_init(cpu);
    p.ops.init_cpu_interrupts(cpu);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    let vm = loop {
        if let Some(vm) = vm::vm() {
            break vm;
        }
        sysreg::wfe();
    };
    vm::run_cpu(cpu, vm, host, &sync);
    shutdown(p)
}

fn shutdown(p: &Platform) -> ! {
    log::info!("{}", stats::snapshot());
    p.ops.system_off()
}

/// Called from the EL2 vectors for exceptions taken at EL2: hypervisor bugs.
#[unsafe(no_mangle)]
extern "C" fn hyp_el2_exception(kind: u64, frame: *const u64) {
    // SAFETY: the vector passes its saved frame of 34 words.
    let elr = unsafe { *frame.add(31) };
    panic!(
        "exception taken at EL2 (vector {kind}): ESR_EL2={:#x} ELR_EL2={elr:#x} FAR_EL2={:#x}",
        sysreg::esr_el2(),
        sysreg::far_el2()
    );
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mpidr = sysreg::mpidr_el1() & 0xff;
    console::emergency(format_args!("\r\nhyp: PANIC on CPU {mpidr}: {info}\r\n"));
    if let Some(p) = PLATFORM.get() {
        p.ops.fail_exit(1);
    }
    loop {
        sysreg::wfe();
    }
}
