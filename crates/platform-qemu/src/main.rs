//! Board crate for QEMU `virt` (GICv3, virtualization=on): the image's entry
//! point, the board's memory map (generated from `platforms/qemu/board.toml`)
//! and its firmware operations (PSCI through SMC, semihosting exit).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::arch::{asm, global_asm};
use hyp_core::platform::{GuestImage, MemRegion, Platform, PlatformOps};
use smccc::Smc;

include!(concat!(env!("OUT_DIR"), "/board.rs"));

global_asm!(include_str!("entry.S"));

const fn mem(r: board::Region) -> MemRegion {
    MemRegion {
        base: r.base,
        size: r.size,
    }
}

struct QemuOps;

impl PlatformOps for QemuOps {
    fn start_cpu(&self, cpu: usize, entry: u64, ctx: u64) -> Result<(), i64> {
        // QEMU virt gives CPU n the MPIDR affinity n for up to 8 CPUs.
        smccc::psci::cpu_on::<Smc>(cpu as u64, entry, ctx).map_err(i64::from)
    }

    fn system_off(&self) -> ! {
        let _ = smccc::psci::system_off::<Smc>();
        panic!("PSCI SYSTEM_OFF returned");
    }

    fn fail_exit(&self, code: u32) -> ! {
        // Semihosting SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit: QEMU
        // exits with status `code` (enabled by board.toml's QEMU arguments).
        let block: [u64; 2] = [0x20026, u64::from(code)];
        // SAFETY: HLT #0xf000 is the AArch64 semihosting trap; QEMU reads the
        // two-word parameter block and does not return.
        unsafe { asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr(), options(nostack)) };
        loop {
            core::hint::spin_loop();
        }
    }

    fn payload(&self, index: usize) -> Option<GuestImage> {
        payloads::ALL.get(index).map(|p| GuestImage {
            name: p.name,
            bytes: p.bytes,
            load_ipa: p.load_ipa,
            entry: p.entry,
        })
    }
}

static PLATFORM: Platform = Platform {
    name: board::NAME,
    uart_base: board::UART0.base,
    // SPI 1 (QEMU virt's device tree: interrupts = <0 1 4>).
    uart_intid: Some(33),
    ram: &[mem(board::RAM)],
    devices: &[
        mem(board::UART0),
        mem(board::GICD),
        mem(board::GICR),
        mem(board::SMMU),
    ],
    hyp: mem(board::HYP),
    vm_pool: mem(board::VM_POOL),
    gic: hyp_core::platform::GicLayout::V3 {
        gicd: board::GICD.base,
        gicr: board::GICR.base,
    },
    assignable: &[hyp_core::platform::AssignableDevice {
        name: "pl031-rtc",
        region: mem(board::RTC),
        intid: 34,
    }],
    smmu: Some(mem(board::SMMU)),
    pci: Some(hyp_core::platform::PciHost {
        ecam: mem(board::PCIE_ECAM),
        mmio: mem(board::PCIE_MMIO),
        pio: mem(board::PCIE_PIO),
    }),
    ops: &QemuOps,
};

unsafe extern "C" {
    fn secondary_entry();
}

#[unsafe(no_mangle)]
extern "C" fn platform_primary_main(dtb: u64) -> ! {
    hyp_core::boot::primary(&PLATFORM, dtb, secondary_entry as *const () as usize as u64)
}

#[unsafe(no_mangle)]
extern "C" fn platform_secondary_main(cpu: u64) -> ! {
    hyp_core::boot::secondary(cpu as usize)
}
