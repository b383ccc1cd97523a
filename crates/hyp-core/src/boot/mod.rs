//! Bringing the hypervisor up on every CPU, and taking the system down.

use crate::arch::console;
use crate::arch::world_switch::{self, HostSave};
use crate::arch::{mmu, spectre, sysreg};
use crate::platform::{MemRegion, Platform};
use crate::vcpu::traps::{host_hcr, HCR_BASE};
use crate::vm::{host as host_vcpus, state};
use aarch64_cpu::registers::ID_AA64MMFR2_EL1;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Most physical CPUs the hypervisor drives.
pub use crate::vcpu::MAX_CPUS;

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
static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// The hypervisor's own boot facts, from the device tree (or the board description):
/// not the host's `hyp_abi::BootInfo`, which `load_host` builds from it.
#[derive(Debug)]
pub struct BootFacts {
    /// CPUs listed under /cpus.
    pub cpus: usize,
    /// Total RAM listed under /memory.
    pub memory: [MemRegion; 4],
    /// Number of valid entries in `memory`.
    pub memory_count: usize,
    /// /chosen/bootargs, copied (the DTB may lie in memory given to guests).
    pub bootargs: [u8; hyp_abi::BOOTARGS_LEN],
    /// Length of `bootargs`.
    pub bootargs_len: usize,
    /// The device tree lists an SMMUv3 (`arm,smmu-v3`) at the board's SMMU
    /// address.
    pub smmu: bool,
    /// The INTx lines of the board's PCIe host bridge (the `pci-host-ecam-generic` node at the
    /// board's ECAM address), from its `interrupt-map`; `None` without such a node.
    pub pci_intx: Option<Result<[u32; 4], crate::vm::host_intx::MapError>>,
}

impl BootFacts {
    /// The bootargs string.
    pub fn bootargs(&self) -> &str {
        core::str::from_utf8(&self.bootargs[..self.bootargs_len]).unwrap_or("")
    }
    /// Value of `key=value` in the bootargs, before a guest's command line
    /// (`hyp_abi::own_arg`).
    pub fn arg(&self, key: &str) -> Option<&str> {
        hyp_abi::own_arg(self.bootargs(), key)
    }
}

fn parse_dtb(dtb: u64) -> BootFacts {
    // SAFETY: the boot protocol passes the DTB's address in x0; `from_ptr`
    // validates the header (magic, size) before reading further.
    let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(f) => f,
        Err(e) => panic!("no valid device tree at {dtb:#x}: {e:?}"),
    };
    let mut info = BootFacts {
        cpus: fdt.cpus().count(),
        memory: [MemRegion { base: 0, size: 0 }; 4],
        memory_count: 0,
        bootargs: [0; hyp_abi::BOOTARGS_LEN],
        bootargs_len: 0,
        smmu: false,
        pci_intx: None,
    };
    if let Some(ecam) = crate::platform::get().and_then(|p| p.pci).map(|p| p.ecam) {
        info.pci_intx = pci_intx(&fdt, ecam.base);
    }
    if let Some(want) = crate::platform::get().and_then(|p| p.smmu) {
        info.smmu = fdt.all_nodes().any(|n| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,smmu-v3"))
                && n.reg()
                    .and_then(|mut r| r.next())
                    .is_some_and(|r| r.starting_address as u64 == want.base)
        });
    }
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

/// The INTx lines of the generic ECAM host bridge whose configuration space is at `ecam`.
fn pci_intx(
    fdt: &fdt::Fdt<'_>,
    ecam: u64,
) -> Option<Result<[u32; 4], crate::vm::host_intx::MapError>> {
    let node = fdt.all_nodes().find(|n| {
        n.compatible()
            .is_some_and(|c| c.all().any(|s| s == "pci-host-ecam-generic"))
            && n.reg()
                .and_then(|mut r| r.next())
                .is_some_and(|r| r.starting_address as u64 == ecam)
    })?;
    let Some(map) = node.property("interrupt-map") else {
        return Some(Err("no interrupt-map"));
    };
    // QEMU virt's has 16 entries of 10 cells.
    let mut cells = [0u32; 512];
    let n = map.value.len() / 4;
    if n > cells.len() || map.value.len() % 4 != 0 {
        return Some(Err("interrupt-map too large or not in cells"));
    }
    for (c, b) in cells.iter_mut().zip(map.value.chunks_exact(4)) {
        *c = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    }
    let cell =
        |n: &fdt::node::FdtNode<'_, '_>, name: &str| n.property(name).and_then(|p| p.as_usize());
    // Every entry names the same parent (the GIC) in practice, and each
    // `find_phandle` walks the whole tree: the last answer is kept.
    // (phandle, its #address-cells and #interrupt-cells)
    type Cells = Option<(usize, usize)>;
    let last: core::cell::Cell<Option<(u32, Cells)>> = core::cell::Cell::new(None);
    let parent = |ph: u32| {
        if let Some((_, r)) = last.get().filter(|&(p, _)| p == ph) {
            return r;
        }
        let r = fdt.find_phandle(ph).and_then(|p| {
            // A parent without #address-cells contributes no unit address.
            Some((
                cell(&p, "#address-cells").unwrap_or(0),
                cell(&p, "#interrupt-cells")?,
            ))
        });
        last.set(Some((ph, r)));
        r
    };
    Some(crate::vm::host_intx::from_interrupt_map(
        &cells[..n],
        parent,
    ))
}

/// Boot facts from the board description alone, for boot loaders that pass
/// no device tree: the board's RAM regions, `PlatformOps::default_cpus`, no
/// bootargs.
fn board_info(p: &Platform) -> BootFacts {
    let mut info = BootFacts {
        cpus: p.ops.default_cpus(),
        memory: [MemRegion { base: 0, size: 0 }; 4],
        memory_count: 0,
        bootargs: [0; hyp_abi::BOOTARGS_LEN],
        bootargs_len: 0,
        smmu: false,
        pci_intx: None,
    };
    for r in p.ram.iter().take(info.memory.len()) {
        info.memory[info.memory_count] = *r;
        info.memory_count += 1;
    }
    info.bootargs_len = p.ops.bootargs(&mut info.bootargs).min(info.bootargs.len());
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
    let p = crate::platform::get().expect("platform recorded before CPU init");
    let v3 = matches!(p.gic, crate::platform::GicLayout::V3 { .. });
    let spec = spectre::assess(spectre::this_cpu());
    // SAFETY: the assessment of this CPU; the boards that run a Cortex-A72
    // grant CPUACTLR_EL1 access at EL3 (`arch::spectre`).
    unsafe { spectre::apply(&spec) };
    // SAFETY: `host` is this CPU's block in a static; `mmu::build` ran on the
    // boot CPU before any CPU gets here.
    let sync = unsafe {
        mmu::cpu_on(
            HCR.load(Ordering::Acquire),
            world_switch::vectors_address(spec.bp_invalidate),
            tpidr,
            v3,
        )
    };
    if cpu == 0 || spec != *BOOT_SPECTRE.get().unwrap_or(&spec) {
        log_spectre(cpu, &spec);
    }
    let _ = BOOT_SPECTRE.call_once(|| spec);
    (host, sync)
}

/// CPU 0's assessment: later CPUs log theirs only when it differs.
static BOOT_SPECTRE: spin::Once<spectre::Assessment> = spin::Once::new();

/// One line per kind of CPU: what it is, each state, and what is applied.
fn log_spectre(cpu: usize, a: &spectre::Assessment) {
    let v = a.verdict;
    log::info!(
        "cpu{cpu}: MIDR {:#x} ({}): spectre-v2 {}, spectre-bhb {}, ssb {}; vectors at {:#x}{}{}",
        crate::arch::sysreg::midr_el1(),
        a.core.unwrap_or("core not in the list"),
        v.v2.name(),
        v.bhb.name(),
        v.ssb.name(),
        world_switch::vectors_address(a.bp_invalidate),
        if a.bp_invalidate {
            "; branch predictor invalidated on every entry from EL0/EL1"
        } else {
            ""
        },
        if a.cpuactlr_set != 0 {
            "; CPUACTLR_EL1 load-pass-store disabled"
        } else {
            ""
        },
    );
}

/// The boot CPU's path: console, checks, EL2 MMU and vectors, secondaries,
/// the first VM. `dtb` is the device tree's physical address, or 0 when the
/// boot loader passed none (the board's defaults are used then).
/// `secondary_entry` is the physical address secondaries start at.
pub fn primary(p: &'static Platform, dtb: u64, secondary_entry: u64) -> ! {
    console::init(p.uart_base);
    crate::platform::set(p);
    log::info!("booting on {}", p.name);
    let el = (sysreg::current_el() >> 2) & 3;
    assert!(el == 2, "entered at EL{el}, the hypervisor needs EL2");
    crate::arch::tables::init(p);
    mmu::build(p);
    // FEAT_LOR (ID_AA64MMFR1_EL1.LO, bits [19:16]): trap its registers.
    if (sysreg::id_aa64mmfr1_el1() >> 16) & 0xf != 0 {
        crate::vcpu::traps::set_feature_traps(crate::vcpu::traps::HCR_TLOR);
    }
    HCR.store(host_hcr(false), Ordering::Release);
    let (host, mut sync) = cpu_init(0);
    log::info!("EL2 MMU and caches on, vectors installed, SCTLR_EL2.EIS=EOS=1");
    p.ops.init_cpu_interrupts(0);
    let (info, source) = if dtb == 0 {
        (board_info(p), "no device tree, board defaults")
    } else {
        (parse_dtb(dtb), "device tree")
    };
    let fwb = want_fwb(&info);
    if fwb {
        let hcr = host_hcr(true);
        HCR.store(hcr, Ordering::Release);
        // SAFETY: adds FWB to the value written at bring-up; no stage-2
        // translation is live yet (no VM has run).
        sync.hcr = barriers::isb(unsafe { barriers::regs::HcrEl2::write(hcr) });
        log::info!("stage 2 uses FEAT_S2FWB: no guest cache-maintenance traps");
    } else {
        log::info!(
            "stage 2 without FEAT_S2FWB: guests get cache-maintenance traps, maps clean to PoC"
        );
    }
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
    let present = info.cpus.clamp(1, MAX_CPUS);
    let cpus = cpus_to_use(&info, present);
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
    crate::arch::gic::init(p.gic);
    if let Some(intid) = p.uart_intid {
        crate::vm::console_in::init(intid);
    }
    ONLINE.store(1, Ordering::Release);
    for cpu in 1..cpus {
        if let Err(e) = p.ops.start_cpu(cpu, secondary_entry, cpu as u64) {
            panic!("firmware refused to start CPU {cpu}: error {e}");
        }
    }
    for cpu in cpus..present {
        p.ops.park_cpu(cpu);
    }
    if cpus < present {
        log::info!("hyp.cpus={cpus}: CPUs {cpus}..{present} left idle");
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

    // Test hook for the panic path (tests/tests/panic_exit.rs): a panic
    // must print its location and fail the run.
    assert!(
        info.arg("hyp.selftest") != Some("panic"),
        "panic requested by hyp.selftest=panic"
    );
    let host_ram = p.vm_pool;
    let boot_info = match load_host(p, &info, cpus, host_ram) {
        Ok(b) => b,
        Err(e) => panic!("cannot load the host VM: {e}"),
    };
    if let Err(e) = state::init(host_ram, fwb, p.assignable) {
        panic!("cannot set up the host's stage 2: {e}");
    }
    if let Some(mut pci) = state::confine_host_devices(p, info.smmu) {
        let routed = info.pci_intx.map(|r| {
            r.and_then(|intx| {
                let g = crate::arch::gic::phys().ok_or("no GIC")?;
                crate::vm::host_intx::route(g, intx).map(|()| intx)
            })
        });
        match routed {
            Some(Ok(intx)) => {
                log::info!(
                    "host PCIe INTx: INTIDs {intx:?} (INTA..INTD of device 0), level, routed to \
                     CPU 0 and given to host vCPU 0 as hardware-linked virtual interrupts"
                );
                pci.intx = intx;
            }
            Some(Err(why)) => log::warn!("host PCIe INTx not routed: {why}"),
            None => log::warn!("host PCIe INTx not routed: no host bridge in the device tree"),
        }
        // SAFETY: `boot_info` is the BootInfo `load_host` wrote in host RAM,
        // which no lower EL has run on yet.
        unsafe { (*(boot_info as *mut hyp_abi::BootInfo)).pci = pci };
        // The host reads it with its MMU off (non-cacheable).
        barriers::maint::clean_inval_to_poc(
            boot_info,
            core::mem::size_of::<hyp_abi::BootInfo>() as u64,
        );
    }
    log::info!(
        "host VM: {} MiB at {:#x} (identity), boot info at {boot_info:#x}",
        host_ram.size >> 20,
        host_ram.base
    );
    NR_CPUS.store(cpus, Ordering::Release);
    let host_entry = p
        .ops
        .guest("host")
        .map(|h| h.entry)
        .unwrap_or(host_ram.base);
    host_vcpus::start(0, host_entry, boot_info);
    crate::run::run_cpu(0, cpus, host, &sync);
    shutdown(p)
}

static NR_CPUS: AtomicUsize = AtomicUsize::new(0);
/// HCR_EL2 every CPU starts with (HCR_BASE and the feature traps, plus FWB
/// when stage 2 uses it).
static HCR: AtomicU64 = AtomicU64::new(HCR_BASE);

/// How many of the `present` CPUs to bring up: all of them, or fewer when
/// `hyp.cpus=N` (1 <= N) asks for it, as `-smp N` would on QEMU virt. The
/// benchmark uses it on boards with a fixed CPU count (raspi4b), where an
/// idle CPU must sleep rather than poll (see `PlatformOps::park_cpu`).
/// A malformed or out-of-range value is ignored with a warning.
fn cpus_to_use(info: &BootFacts, present: usize) -> usize {
    let Some(v) = info.arg("hyp.cpus") else {
        return present;
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=present).contains(&n) => n,
        _ => {
            log::warn!("hyp.cpus={v} ignored: expected 1..={present}");
            present
        }
    }
}

/// Whether to use FEAT_S2FWB: whenever the CPU has it
/// (ID_AA64MMFR2_EL1.FWB), as KVM does, unless `hyp.s2fwb=off` asks for the
/// cache-maintenance path (seed 003: the TVM/TSW traps and the cleans to
/// PoC of every stage-2 map), which CPUs without FWB (the Pi 4's
/// Cortex-A72) always take.
fn want_fwb(info: &BootFacts) -> bool {
    let has = ID_AA64MMFR2_EL1::FWB.read(sysreg::id_aa64mmfr2_el1()) != 0;
    match info.arg("hyp.s2fwb") {
        None | Some("on") if has => true,
        Some("on") => {
            log::warn!("hyp.s2fwb=on but the CPU has no FEAT_S2FWB: using cache maintenance");
            false
        }
        None | Some("off") => false,
        Some(v) => {
            log::warn!("hyp.s2fwb={v} ignored: expected on or off");
            has
        }
    }
}

/// Copies the host VM's image to its load address in `host_ram`, and after
/// it a `hyp_abi::BootInfo` followed by every other payload (the guest
/// images the host may run). Returns the BootInfo's address.
fn load_host(
    p: &Platform,
    info: &BootFacts,
    cpus: usize,
    host_ram: MemRegion,
) -> Result<u64, &'static str> {
    let host = p
        .ops
        .guest("host")
        .ok_or("no payload named \"host\" in the image")?;
    let end = host
        .load_ipa
        .checked_add(host.bytes.len() as u64)
        .ok_or("host image overflows")?;
    if host.load_ipa < host_ram.base || end > host_ram.end() {
        return Err("host image outside the host's RAM");
    }
    // SAFETY: the destination lies in host RAM, which EL2 maps by identity
    // and which no VM uses yet; the source is the image's read-only payload.
    // The same holds for the copies below.
    unsafe {
        core::ptr::copy_nonoverlapping(
            host.bytes.as_ptr(),
            host.load_ipa as *mut u8,
            host.bytes.len(),
        );
    }
    // Room for the host's BSS and stacks past its loaded bytes.
    let info_pa = (end + (4 << 20)).next_multiple_of(2 << 20);
    let mut bi = hyp_abi::BootInfo {
        magic: hyp_abi::BOOT_MAGIC,
        cpus: cpus as u64,
        ram_base: host_ram.base,
        ram_size: host_ram.size,
        free_base: 0,
        bootargs: [0; hyp_abi::BOOTARGS_LEN],
        nr_modules: 0,
        modules: [hyp_abi::Module {
            name: [0; 32],
            addr: 0,
            size: 0,
            load_ipa: 0,
            entry: 0,
        }; hyp_abi::MAX_MODULES],
        pci: hyp_abi::PciWindows::default(),
        vgic: p.gic.vgic().code(),
    };
    let n = info.bootargs_len.min(bi.bootargs.len());
    bi.bootargs[..n].copy_from_slice(&info.bootargs[..n]);
    let mut next =
        (info_pa + core::mem::size_of::<hyp_abi::BootInfo>() as u64).next_multiple_of(4096);
    let mut i = 0;
    while let Some(g) = p.ops.payload(i) {
        i += 1;
        if g.name == "host" {
            continue;
        }
        if g.name == crate::platform::FIRMWARE {
            // The hypervisor's own payload: loaded into protected VMs by
            // VCPU_INIT (`vm::control::firmware`), never given to the host.
            if g.load_ipa != hyp_abi::layout::PVMFW_IPA
                || g.entry != hyp_abi::layout::PVMFW_IPA
                || g.bytes.len() as u64 > hyp_abi::layout::PVMFW_SIZE
            {
                return Err("the protected-VM firmware is not linked for its window");
            }
            continue;
        }
        let k = bi.nr_modules as usize;
        if k == hyp_abi::MAX_MODULES {
            return Err("too many guest payloads for the boot info");
        }
        if next + g.bytes.len() as u64 > host_ram.end() {
            return Err("guest payloads do not fit the host's RAM");
        }
        // SAFETY: see above.
        unsafe { core::ptr::copy_nonoverlapping(g.bytes.as_ptr(), next as *mut u8, g.bytes.len()) };
        let m = &mut bi.modules[k];
        let nb = g.name.len().min(31);
        m.name[..nb].copy_from_slice(&g.name.as_bytes()[..nb]);
        m.addr = next;
        m.size = g.bytes.len() as u64;
        m.load_ipa = g.load_ipa;
        m.entry = g.entry;
        bi.nr_modules += 1;
        next = (next + m.size).next_multiple_of(4096);
    }
    bi.free_base = next.next_multiple_of(2 << 20);
    // SAFETY: see above; `info_pa` is page aligned.
    unsafe { core::ptr::write(info_pa as *mut hyp_abi::BootInfo, bi) };
    // The host starts with its MMU off: `vm::init` maps its RAM at stage 2
    // without FEAT_S2FWB, which cleans the whole range to PoC, so the
    // non-cacheable reads of the host see these copies.
    Ok(info_pa)
}

/// A secondary CPU's path, entered from the board's assembly with the MMU off.
pub fn secondary(cpu: usize) -> ! {
    let Some(p) = crate::platform::get() else {
        panic!("secondary CPU {cpu} started before the boot CPU set up");
    };
    let (host, sync) = cpu_init(cpu);
    p.ops.init_cpu_interrupts(cpu);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    let cpus = loop {
        let n = NR_CPUS.load(Ordering::Acquire);
        if n != 0 {
            break n;
        }
        sysreg::wfe();
    };
    crate::run::run_cpu(cpu, cpus, host, &sync);
    shutdown(p)
}

fn shutdown(p: &Platform) -> ! {
    log::info!("{}", state::exit_totals());
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
    if let Some(p) = crate::platform::get() {
        p.ops.fail_exit(1);
    }
    loop {
        sysreg::wfe();
    }
}
