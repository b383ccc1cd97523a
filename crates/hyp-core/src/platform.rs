//! What a board tells the hypervisor core: memory, console, CPUs, guests, and
//! the firmware operations that differ between boards.

/// A physical memory range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl MemRegion {
    /// One past the last byte.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }
    /// Whether `other` lies entirely inside this region.
    #[must_use]
    pub const fn contains(&self, other: &MemRegion) -> bool {
        other.base >= self.base && other.end() <= self.end()
    }
}

/// A guest payload linked into the image.
#[derive(Debug, Clone, Copy)]
pub struct GuestImage {
    /// Crate name.
    pub name: &'static str,
    /// Flat binary.
    pub bytes: &'static [u8],
    /// IPA the binary is loaded at.
    pub load_ipa: u64,
    /// Entry point IPA.
    pub entry: u64,
}

/// Board operations that go through firmware or board hardware.
pub trait PlatformOps: Sync {
    /// Starts physical CPU `cpu` at physical address `entry` with `ctx` in x0.
    ///
    /// # Errors
    ///
    /// The firmware's PSCI error code.
    fn start_cpu(&self, cpu: usize, entry: u64, ctx: u64) -> Result<(), i64>;
    /// Leaves physical CPU `cpu`, which the hypervisor will not use
    /// (`hyp.cpus=N`), idle for good: it must execute nothing (a CPU polling
    /// in a loop would show up in instruction counts under QEMU `-icount`).
    /// The default does nothing: on PSCI boards a CPU that was never
    /// started stays off.
    fn park_cpu(&self, cpu: usize) {
        let _ = cpu;
    }
    /// Powers the system off; QEMU exits with status 0.
    fn system_off(&self) -> !;
    /// Stops the system reporting failure (QEMU: semihosting exit status `code`).
    fn fail_exit(&self, code: u32) -> !;
    /// Payload number `index` (in image order): the host VM and every guest
    /// image it may run.
    fn payload(&self, index: usize) -> Option<GuestImage>;
    /// The payload named `name`, if the image carries one.
    fn guest(&self, name: &str) -> Option<GuestImage> {
        (0..)
            .map_while(|i| self.payload(i))
            .find(|p| p.name == name)
    }
    /// CPUs to bring up when the boot loader passed no device tree (QEMU
    /// raspi4b started with an ELF). Boards whose loader always passes one
    /// keep this default.
    fn default_cpus(&self) -> usize {
        1
    }
    /// Boot arguments from the boot loader when there is no device tree
    /// (QEMU raspi4b: semihosting's command line). Writes them into `buf`
    /// and returns their length; the default has none.
    fn bootargs(&self, buf: &mut [u8]) -> usize {
        let _ = buf;
        0
    }
    /// Sets up the board's interrupt controller on CPU `cpu`, with its EL2
    /// MMU on. CPU 0 calls it first, before any secondary starts. EL2 keeps
    /// interrupts masked; the default does nothing.
    fn init_cpu_interrupts(&self, cpu: usize) {
        let _ = cpu;
    }
}

/// The board's interrupt controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicLayout {
    /// GICv3: distributor and redistributors (system-register CPU interface).
    V3 {
        /// GICD base.
        gicd: u64,
        /// Base of the first redistributor (RD and SGI frames per CPU).
        gicr: u64,
    },
    /// GICv2 (GIC-400): memory-mapped CPU interface and virtualisation frames.
    V2 {
        /// GICD base.
        gicd: u64,
        /// GICC base.
        gicc: u64,
        /// GICH base (virtual interface control).
        gich: u64,
        /// GICV base (virtual CPU interface, mapped for guests).
        gicv: u64,
    },
}

impl GicLayout {
    /// The virtual GIC VMs get on this board: the same version.
    #[must_use]
    pub const fn vgic(&self) -> hyp_abi::Vgic {
        match self {
            GicLayout::V3 { .. } => hyp_abi::Vgic::V3,
            GicLayout::V2 { .. } => hyp_abi::Vgic::V2,
        }
    }
}

/// A device the host may assign to one VM: its MMIO frame is mapped into the
/// VM's stage 2 at the same address and its SPI routed to the VM's vGIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignableDevice {
    /// Name (for logs).
    pub name: &'static str,
    /// MMIO frame.
    pub region: MemRegion,
    /// Its interrupt (an SPI INTID).
    pub intid: u32,
}

/// A generic ECAM PCIe host bridge.
#[derive(Debug, Clone, Copy)]
pub struct PciHost {
    /// Configuration space.
    pub ecam: MemRegion,
    /// The 32-bit memory window.
    pub mmio: MemRegion,
    /// The I/O window.
    pub pio: MemRegion,
}

impl PciHost {
    /// The windows, as the host's boot information describes them (no INTx: boot adds the
    /// lines it routes, from the device tree).
    #[must_use]
    pub fn windows(&self) -> hyp_abi::PciWindows {
        let w = |r: MemRegion| [r.base, r.size];
        hyp_abi::PciWindows {
            ecam: w(self.ecam),
            mmio: w(self.mmio),
            pio: w(self.pio),
            intx: [0; 4],
        }
    }
}

/// Everything board-specific the core needs.
pub struct Platform {
    /// Board name, printed at boot.
    pub name: &'static str,
    /// Physical address of the console PL011.
    pub uart_base: u64,
    /// Its interrupt (an SPI INTID), taken at EL2 for console input; `None`:
    /// input is not read.
    pub uart_intid: Option<u32>,
    /// RAM regions.
    pub ram: &'static [MemRegion],
    /// Device regions (mapped as device memory at EL2).
    pub devices: &'static [MemRegion],
    /// The hypervisor's own memory; never given to a VM.
    pub hyp: MemRegion,
    /// Memory the hypervisor may give to VMs.
    pub vm_pool: MemRegion,
    /// Interrupt controller.
    pub gic: GicLayout,
    /// Devices the host may assign to a VM.
    pub assignable: &'static [AssignableDevice],
    /// The SMMUv3 register frame, if the board may have one; used when the
    /// device tree lists an `arm,smmu-v3` there (`arch::smmu`).
    pub smmu: Option<MemRegion>,
    /// The PCIe host bridge whose windows the host's drivers may reach,
    /// mapped into its stage 2 only once the SMMU confines DMA: the
    /// allow-list, which never holds the GIC, the SMMU or the UART.
    pub pci: Option<PciHost>,
    /// Firmware operations.
    pub ops: &'static dyn PlatformOps,
}

impl core::fmt::Debug for Platform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Platform")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The board the hypervisor booted on, recorded once by `boot::primary`.
static CURRENT: spin::Once<&'static Platform> = spin::Once::new();

/// Records the board (boot CPU, once).
pub fn set(p: &'static Platform) {
    CURRENT.call_once(|| p);
}

/// The board, once recorded.
pub fn get() -> Option<&'static Platform> {
    CURRENT.get().copied()
}

/// The name of the protected-VM firmware's payload (`crates/pvmfw`): loaded
/// by the hypervisor into each protected VM, never handed to the host.
pub const FIRMWARE: &str = "pvmfw";

/// The protected-VM firmware's bytes (linked at and entered at
/// `hyp_abi::layout::PVMFW_IPA`, checked at boot), if the image has it.
#[must_use]
pub fn firmware() -> Option<&'static [u8]> {
    get()?.ops.guest(FIRMWARE).map(|g| g.bytes)
}

/// Stops the machine reporting failure `code`.
///
/// # Panics
///
/// Before the board is recorded.
pub fn fail_exit(code: u32) -> ! {
    match get() {
        Some(p) => p.ops.fail_exit(code),
        None => panic!("fail_exit before boot"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_relations() {
        let a = MemRegion {
            base: 0x1000,
            size: 0x1000,
        };
        let b = MemRegion {
            base: 0x1800,
            size: 0x1000,
        };
        let c = MemRegion {
            base: 0x2000,
            size: 0x10,
        };
        assert!(b.contains(&c));
        assert!(!a.contains(&b));
    }
}
