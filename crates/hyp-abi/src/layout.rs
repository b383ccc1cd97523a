//! The guest physical (IPA) layout every VM sees, the host VM included: QEMU virt's addresses,
//! on every board, so a guest built once runs anywhere. The hypervisor emulates or maps what is
//! here; the host writes it into Linux guests' device trees; `guest-rt` programs are linked for
//! it.
//!
//! | IPA                          | what                                            |
//! |------------------------------|-------------------------------------------------|
//! | [`GICD_IPA`]                 | virtual GIC distributor (v3: 64 KiB, v2: 4 KiB) |
//! | [`GICC_V2_IPA`]              | GICv2: the GIC-400's GICV frame (8 KiB)          |
//! | [`GICR_IPA`]                 | GICv3: virtual redistributors, one per vCPU      |
//! | [`UART_IPA`]                 | the emulated PL011 (the hypervisor's console)    |
//! | [`HOST_MMIO_IPA`]            | the host's MMIO window ([`HOST_MMIO_SIZE`]): accesses exit to the host, which emulates its devices (virtio-mmio, the test device); a protected VM's only on pages it guarded (MMIO_GUARD) |
//! | [`PVMFW_IPA`]                | a protected VM's firmware ([`PVMFW_SIZE`]): pages the hypervisor loads from its image, the host never sees |
//! | [`RAM_IPA`] and up           | guest RAM                                        |

/// The virtual GIC distributor (QEMU virt's GICD).
pub const GICD_IPA: u64 = 0x0800_0000;
/// GICv2: the CPU interface, where the hypervisor maps the GIC-400's GICV frame (QEMU virt's
/// GICv2 GICC).
pub const GICC_V2_IPA: u64 = 0x0801_0000;
/// GICv2: size of the CPU interface window at [`GICC_V2_IPA`] (the GIC-400's GICV frame: two
/// 4 KiB pages, `GICC_DIR` in the second).
pub const GICC_V2_SIZE: u64 = 0x2000;
/// GICv3: the first virtual redistributor; vCPU *n*'s is `n` redistributor strides above.
pub const GICR_IPA: u64 = 0x080a_0000;
/// The emulated PL011 every VM (the host included) sees: QEMU virt's UART address.
pub const UART_IPA: u64 = 0x0900_0000;
/// Size of the emulated PL011's window (one 4 KiB page).
pub const UART_SIZE: u64 = 0x1000;
/// The emulated PL011's interrupt (level-sensitive SPI 1, INTID 33: QEMU virt's UART
/// interrupt), raised while its receive interrupt is pending and unmasked.
pub const UART_INTID: u32 = 33;
/// The virtual PMU's overflow interrupt a normal VM sees (level-sensitive PPI 7, INTID 23,
/// as on QEMU virt): high while its PMCR_EL0.E is set and an overflowed counter has its
/// interrupt enabled.
pub const PMU_INTID: u32 = 23;
/// Start of the IPAs whose accesses are forwarded to the host (QEMU virt's virtio-mmio
/// window): the host emulates its devices there (the demo's virtio-mmio transports, the test
/// guests' test device at the start of the window).
pub const HOST_MMIO_IPA: u64 = 0x0a00_0000;
/// Size of the host's MMIO window.
pub const HOST_MMIO_SIZE: u64 = 0x4000;
/// Where the hypervisor maps a protected VM's firmware (`crates/pvmfw`): its own pages,
/// taken from the memory the host donated for the VM's state (never from guest RAM, so the
/// host can neither map nor read them), loaded from the hypervisor's image at VCPU_INIT. vCPU 0
/// starts here; the firmware checks the host's device tree, measures the kernel and jumps to
/// it. Below guest RAM and outside every device window above (QEMU virt's PCIe MMIO window is
/// the host's, never a guest's), so no MEM_DONATE/MEM_LEND can reach it.
pub const PVMFW_IPA: u64 = 0x2000_0000;
/// Size of the firmware's window at [`PVMFW_IPA`]: text, data, BSS and its one stack (its
/// link script fails the build when it does not fit). Every page is mapped for a protected VM.
pub const PVMFW_SIZE: u64 = 0x2_0000;
const _: () = assert!(
    PVMFW_IPA + PVMFW_SIZE <= RAM_IPA && PVMFW_IPA >= HOST_MMIO_IPA + HOST_MMIO_SIZE,
    "the firmware window lies between the device windows and guest RAM"
);
/// Guest RAM lies at or above this IPA (guest-rt programs are linked here); below it is
/// device space, as on QEMU virt.
pub const RAM_IPA: u64 = 0x4000_0000;
