//! The device tree the host gives an external kernel (linux.rs).
//!
//! It describes what the hypervisor emulates for every VM (crates/hyp-core):
//! memory, the vCPUs with the PSCI enable method, PSCI 1.0 over HVC, the
//! virtual GIC the board gives VMs (`hyp_abi::BootInfo::vgic`): GICv3's
//! distributor and one redistributor per vCPU (bindings:
//! interrupt-controller/arm,gic-v3.yaml), or GICv2's distributor and CPU
//! interface (interrupt-controller/arm,gic.yaml), the architected timer's
//! PPIs (timer/arm,arch_timer.yaml), a normal VM's PMU and its PPI
//! (perf/arm,pmu.yaml), the PL011 with its fixed 24 MHz clock
//! (serial/arm,pl011.yaml), and `/chosen` with the command line, the initrd
//! and `stdout-path`; every address from `hyp_abi::layout` (QEMU virt's, on
//! every board).
//!
//! The blob is written by `vm-fdt` (rust-vmm's FDT writer, in its
//! `no_std` + `alloc` mode) into a `Vec` on the host's heap; linux.rs
//! copies it into the guest's RAM. This file uses only `alloc`, `vm-fdt`,
//! `hyp-abi` and `hw-regs`, so xtask's unit tests include it and check the
//! tree it writes with a DTB parser.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hw_regs::gic::{GICD_SIZE_V2, GICD_SIZE_V3, GICR_STRIDE};
use hyp_abi::layout::{
    GICC_V2_IPA, GICC_V2_SIZE, GICD_IPA, GICR_IPA, PMU_INTID, RAM_IPA, UART_INTID, UART_IPA,
    UART_SIZE,
};
use hyp_abi::Vgic;
use vm_fdt::{Error, FdtWriter};

/// The interrupt of the guest's PL011 (emulated at EL2, at [`UART_IPA`]):
/// the SPI the hypervisor raises for console input ([`UART_INTID`], QEMU
/// virt's SPI 1).
const UART_SPI: u32 = UART_INTID - 32;
/// Phandles.
const PH_GIC: u32 = 1;
const PH_CLK: u32 = 2;
const PH_POOL: u32 = 3;

/// Opens node `name`, lets `body` write its properties and children, and
/// closes it.
fn node(
    w: &mut FdtWriter,
    name: &str,
    body: impl FnOnce(&mut FdtWriter) -> Result<(), Error>,
) -> Result<(), Error> {
    let n = w.begin_node(name)?;
    body(w)?;
    w.end_node(n)
}

/// A string-list property (`"a", "b"`).
fn strs(w: &mut FdtWriter, name: &str, list: &[&str]) -> Result<(), Error> {
    w.property_string_list(name, list.iter().map(|s| String::from(*s)).collect())
}

/// Interrupt specifier flags (third cell): level-triggered, active high.
const LEVEL_HIGH: u32 = 4;

/// The flags cell of a PPI's specifier for a VM with `vcpus` vCPUs: on
/// GICv2 bits \[15:8\] name the CPUs the PPI is wired to (all of them
/// here; arm,gic.yaml), GICv3 has no such field.
fn ppi_flags(gic: Vgic, vcpus: usize) -> u32 {
    match gic {
        Vgic::V2 => (((1u32 << vcpus.min(8)) - 1) << 8) | LEVEL_HIGH,
        Vgic::V3 => LEVEL_HIGH,
    }
}

/// The interrupt controller node: the vGIC `gic` of a VM with `vcpus`
/// vCPUs, at the IPAs the hypervisor emulates or maps it.
fn intc(w: &mut FdtWriter, gic: Vgic, vcpus: usize) -> Result<(), Error> {
    node(w, &format!("intc@{GICD_IPA:x}"), |w| {
        match gic {
            Vgic::V3 => {
                w.property_string("compatible", "arm,gic-v3")?;
                w.property_u32("#redistributor-regions", 1)?;
                w.property_array_u64(
                    "reg",
                    &[GICD_IPA, GICD_SIZE_V3, GICR_IPA, GICR_STRIDE * vcpus as u64],
                )?;
            }
            Vgic::V2 => {
                // A GICv2 whose CPU interface is the GIC-400's GICV frame,
                // named as QEMU virt (gic-version=2) and kvmtool name a
                // GICv2 guest's; no GICH/GICV regions: the guest gets no
                // virtualisation of its own.
                w.property_string("compatible", "arm,cortex-a15-gic")?;
                w.property_array_u64("reg", &[GICD_IPA, GICD_SIZE_V2, GICC_V2_IPA, GICC_V2_SIZE])?;
            }
        }
        w.property_u32("#interrupt-cells", 3)?;
        w.property_null("interrupt-controller")?;
        w.property_phandle(PH_GIC)
    })
}

/// A virtio-mmio device the host serves: its register window at `ipa`
/// (`size` bytes) and its level-triggered interrupt, SPI `spi`.
#[derive(Clone, Copy, Debug)]
pub struct VirtioMmio {
    pub ipa: u64,
    pub size: u64,
    pub spi: u32,
}

/// How a hostile host breaks a protected VM's device tree on purpose
/// (`attack=dt`, attack.rs; the firmware must refuse each): the tree is
/// otherwise the honest one. An oversized pool or a device outside the
/// host's window needs no knob: the caller passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// The honest tree.
    None,
    /// A second memory node, 1 MiB past the VM's RAM.
    SecondMemory,
    /// The first virtio node without `memory-region` (its DMA would not
    /// bounce through the pool).
    DeviceWithoutPool,
}

/// What the device tree of a Linux VM says.
#[derive(Clone, Copy, Debug)]
pub struct LinuxVm<'a> {
    /// The virtual GIC the board gives VMs.
    pub gic: Vgic,
    pub vcpus: usize,
    /// Bytes of RAM at [`RAM_IPA`].
    pub mem: u64,
    pub cmdline: &'a str,
    /// The initrd's IPAs `[start, end)`, if any.
    pub initrd: Option<(u64, u64)>,
    /// The VM's boots from 1 (the host restarts a VM that resets):
    /// `/chosen/hyp,boot-count` holds it as a decimal string, for a guest
    /// to tell a reboot from its first boot.
    pub boot: u32,
    pub virtio: &'a [VirtioMmio],
    /// A protected VM's restricted DMA pool, `(IPA, bytes)` inside its RAM:
    /// a `restricted-dma-pool` reserved-memory region that every virtio
    /// node names in `memory-region`, so the guest bounces all its device
    /// I/O through it (and shares only it with the host;
    /// reserved-memory/shared-dma-pool.yaml).
    pub dma_pool: Option<(u64, u64)>,
    /// [`Hostile::None`] but in the host's attacks.
    pub hostile: Hostile,
    /// The VM has the virtual PMU (a normal VM: pKVM gives protected VMs
    /// none): an `arm,armv8-pmuv3` node with its PPI.
    pub pmu: bool,
}

/// The device tree of `vm`: its memory, vCPUs, GIC, timer, PL011, command
/// line and initrd, and its virtio devices (the binding
/// Documentation/devicetree/bindings/virtio/mmio.yaml: `virtio,mmio`,
/// `reg`, `interrupts`; `dma-coherent`, as the host's accesses to guest
/// memory are cacheable), with the DMA pool if it has one.
///
/// # Errors
///
/// vm-fdt's, when a name or value is not valid in a device tree (a NUL in
/// the command line, say).
pub fn linux_dtb(vm: &LinuxVm<'_>) -> Result<Vec<u8>, Error> {
    let LinuxVm {
        gic,
        vcpus,
        mem,
        cmdline,
        initrd,
        boot,
        virtio,
        dma_pool,
        hostile,
        pmu,
    } = *vm;
    let uart = format!("pl011@{UART_IPA:x}");
    let mut w = FdtWriter::new()?;
    node(&mut w, "", |w| {
        w.property_u32("#address-cells", 2)?;
        w.property_u32("#size-cells", 2)?;
        w.property_string("compatible", "linux,dummy-virt")?;
        w.property_string("model", "hyp guest (QEMU virt layout)")?;
        w.property_u32("interrupt-parent", PH_GIC)?;

        node(w, "chosen", |w| {
            w.property_string("bootargs", cmdline)?;
            w.property_string("stdout-path", &format!("/{uart}"))?;
            w.property_string("hyp,boot-count", &format!("{boot}"))?;
            if let Some((start, end)) = initrd {
                w.property_u64("linux,initrd-start", start)?;
                w.property_u64("linux,initrd-end", end)?;
            }
            Ok(())
        })?;

        node(w, &format!("memory@{RAM_IPA:x}"), |w| {
            w.property_string("device_type", "memory")?;
            w.property_array_u64("reg", &[RAM_IPA, mem])
        })?;
        if hostile == Hostile::SecondMemory {
            let at = RAM_IPA + mem;
            node(w, &format!("memory@{at:x}"), |w| {
                w.property_string("device_type", "memory")?;
                w.property_array_u64("reg", &[at, 1 << 20])
            })?;
        }

        if let Some((at, size)) = dma_pool {
            node(w, "reserved-memory", |w| {
                w.property_u32("#address-cells", 2)?;
                w.property_u32("#size-cells", 2)?;
                w.property_null("ranges")?;
                node(w, &format!("restricted-dma-pool@{at:x}"), |w| {
                    w.property_string("compatible", "restricted-dma-pool")?;
                    w.property_array_u64("reg", &[at, size])?;
                    w.property_phandle(PH_POOL)
                })
            })?;
        }

        node(w, "cpus", |w| {
            w.property_u32("#address-cells", 1)?;
            w.property_u32("#size-cells", 0)?;
            for v in 0..vcpus {
                node(w, &format!("cpu@{v:x}"), |w| {
                    w.property_string("device_type", "cpu")?;
                    w.property_string("compatible", "arm,armv8")?;
                    // MPIDR Aff0 = vCPU index (the hypervisor's VMPIDR_EL2).
                    w.property_u32("reg", v as u32)?;
                    w.property_string("enable-method", "psci")
                })?;
            }
            Ok(())
        })?;

        node(w, "psci", |w| {
            strs(w, "compatible", &["arm,psci-1.0", "arm,psci-0.2"])?;
            w.property_string("method", "hvc")
        })?;

        intc(w, gic, vcpus)?;

        // Interrupt specifiers: <type number flags>, type 1 = PPI (number =
        // INTID - 16), 0 = SPI (INTID - 32); flags: level high (and a PPI's
        // CPU mask on GICv2).
        node(w, "timer", |w| {
            w.property_string("compatible", "arm,armv8-timer")?;
            // Secure physical (INTID 29), non-secure physical (30), virtual
            // (27), hypervisor (26): the binding's order.
            let f = ppi_flags(gic, vcpus);
            w.property_array_u32("interrupts", &[1, 13, f, 1, 14, f, 1, 11, f, 1, 10, f])
        })?;

        if pmu {
            // perf/arm,pmu.yaml: the overflow interrupt, a PPI.
            node(w, "pmu", |w| {
                w.property_string("compatible", "arm,armv8-pmuv3")?;
                let f = ppi_flags(gic, vcpus);
                w.property_array_u32("interrupts", &[1, PMU_INTID - 16, f])
            })?;
        }

        node(w, "apb-pclk", |w| {
            w.property_string("compatible", "fixed-clock")?;
            w.property_u32("#clock-cells", 0)?;
            w.property_u32("clock-frequency", 24_000_000)?;
            w.property_string("clock-output-names", "clk24mhz")?;
            w.property_phandle(PH_CLK)
        })?;

        node(w, &uart, |w| {
            strs(w, "compatible", &["arm,pl011", "arm,primecell"])?;
            w.property_array_u64("reg", &[UART_IPA, UART_SIZE])?;
            w.property_array_u32("interrupts", &[0, UART_SPI, LEVEL_HIGH])?;
            w.property_array_u32("clocks", &[PH_CLK, PH_CLK])?;
            strs(w, "clock-names", &["uartclk", "apb_pclk"])
        })?;

        for (i, d) in virtio.iter().enumerate() {
            node(w, &format!("virtio_mmio@{:x}", d.ipa), |w| {
                w.property_string("compatible", "virtio,mmio")?;
                w.property_array_u64("reg", &[d.ipa, d.size])?;
                w.property_array_u32("interrupts", &[0, d.spi, LEVEL_HIGH])?;
                if dma_pool.is_some() && !(i == 0 && hostile == Hostile::DeviceWithoutPool) {
                    w.property_u32("memory-region", PH_POOL)?;
                }
                w.property_null("dma-coherent")
            })?;
        }
        Ok(())
    })?;
    w.finish()
}
