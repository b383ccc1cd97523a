//! Board crate for the Raspberry Pi 4 (BCM2711, GIC-400) and QEMU's `raspi4b`:
//! the image's entry point (EL3 to EL2 drop, parked secondaries), the board's
//! memory map (generated from `platforms/rpi4/board.toml`), the PL011 console
//! set-up, and the firmware operations (spin-table CPU release, semihosting
//! exit under QEMU).
//!
//! Two boot paths (see `entry.S`):
//! * **QEMU raspi4b with the ELF** (`cargo xtask run/test`): all four cores
//!   enter at EL3 together; the entry drops each to EL2 and parks cores 1-3 on
//!   [`rpi4_park`]. There is no device tree; the board's defaults are used.
//!   QEMU runs with `-semihosting`, so power-off and failure exit QEMU.
//! * **Pi firmware with kernel8.img**: core 0 enters at EL2 with the DTB in
//!   x0; cores 1-3 wait in the firmware's spin table at 0xd8 + 8 * cpu.
//!   There is no way to power off: the system halts in a WFE loop.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod gic400;
mod pl011;

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use hyp_core::platform::{GuestImage, MemRegion, Platform, PlatformOps};

include!(concat!(env!("OUT_DIR"), "/board.rs"));

global_asm!(include_str!("entry.S"));

/// Cores of the BCM2711 (Cortex-A72 cluster; MPIDR Aff0 = 0..3).
const CPUS: usize = 4;

/// The firmware's spin table: core n polls the u64 at `0xd8 + 8 * n` (n >= 1)
/// and jumps to it when nonzero (raspberrypi/tools armstubs/armstub8.S; QEMU's
/// raspi loader emulates the same table for a raw Image).
const SPIN_TABLE: u64 = 0xd8;

/// The first word of a flattened device tree (stored big-endian).
const FDT_MAGIC: u32 = 0xd00d_feed;

const fn mem(r: board::Region) -> MemRegion {
    MemRegion {
        base: r.base,
        size: r.size,
    }
}

/// The exception level the entry was taken at: 3 under QEMU with the ELF
/// (semihosting available, own parking table), 2 from the Pi firmware.
static BOOT_EL: AtomicU64 = AtomicU64::new(0);

/// The physical GIC-400 (distributor and CPU interface).
const GIC: gic400::Gic400 = gic400::Gic400::new(board::GICD.base, board::GICC.base);

unsafe extern "C" {
    fn secondary_entry();
    fn rpi4_secondary();
    fn rpi4_idle();
    static mut rpi4_park: [u64; CPUS];
    static mut rpi4_cpu_entry: [u64; CPUS];
    static mut rpi4_cpu_ctx: [u64; CPUS];
}

fn booted_at_el3() -> bool {
    BOOT_EL.load(Ordering::Relaxed) == 3
}

/// Writes `value` to the u64 at `addr` and cleans it to the point of
/// coherency: the reader is a core with its MMU and caches off.
///
/// # Safety
///
/// `addr` must be a u64 of RAM that only boot code reads (the release slots).
unsafe fn publish_u64(addr: *mut u64, value: u64) {
    // SAFETY: per the contract; EL2 maps all of RAM read/write.
    unsafe { core::ptr::write_volatile(addr, value) };
    barriers::maint::clean_inval_to_poc(addr as u64, 8);
}

/// Semihosting SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit: QEMU (with
/// `-semihosting`) exits with status `code`.
fn semihosting_exit(code: u32) {
    let block: [u64; 2] = [0x20026, u64::from(code)];
    // SAFETY: HLT #0xf000 is the AArch64 semihosting trap; QEMU reads the
    // two-word parameter block and does not return. Only called when the
    // entry was taken at EL3, i.e. under QEMU with the ELF.
    unsafe { asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr(), options(nostack)) };
}

/// Semihosting SYS_GET_CMDLINE (0x15): QEMU answers with the kernel's file
/// name followed by its `-append` arguments (its fallback when no
/// `-semihosting-config arg=` is given). Returns the arguments after the
/// file name, copied into `buf`. Only called when entered at EL3 (QEMU).
/// QEMU refuses the call when the whole line does not fit, so the buffer
/// holds a path of up to 512 bytes besides the longest boot arguments the
/// hypervisor keeps (512, `hyp_abi::BOOTARGS_LEN`: a Linux guest's take
/// about 200).
fn semihosting_cmdline(buf: &mut [u8]) -> usize {
    let mut raw = [0u8; 1024];
    let mut block: [u64; 2] = [raw.as_mut_ptr() as u64, raw.len() as u64];
    let ret: u64;
    // SAFETY: HLT #0xf000 is the semihosting trap; QEMU writes at most
    // block[1] bytes into `raw` and the length back into block[1].
    unsafe {
        asm!("hlt #0xf000", inout("x0") 0x15u64 => ret, in("x1") block.as_mut_ptr(), options(nostack));
    }
    if ret != 0 {
        return 0;
    }
    let len = (block[1] as usize).min(raw.len());
    let line = &raw[..len];
    // Skip the file name (the first word).
    let args = match line.iter().position(|&b| b == b' ') {
        Some(i) => &line[i + 1..],
        None => &[][..],
    };
    let n = args.len().min(buf.len());
    buf[..n].copy_from_slice(&args[..n]);
    n
}

fn halt() -> ! {
    loop {
        // SAFETY: WFE only pauses the core.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

struct Rpi4Ops;

impl PlatformOps for Rpi4Ops {
    fn start_cpu(&self, cpu: usize, entry: u64, ctx: u64) -> Result<(), i64> {
        if cpu == 0 || cpu >= CPUS {
            return Err(-2); // PSCI INVALID_PARAMETERS
        }
        // SAFETY: the release tables live in this image's .data and are read
        // only by core `cpu` in `rpi4_secondary`, after the release below.
        unsafe {
            publish_u64(&raw mut rpi4_cpu_entry[cpu], entry);
            publish_u64(&raw mut rpi4_cpu_ctx[cpu], ctx);
        }
        let slot = if booted_at_el3() {
            // SAFETY: as above; core `cpu` polls its own slot in entry.S.
            unsafe { &raw mut rpi4_park[cpu] }
        } else {
            (SPIN_TABLE + 8 * cpu as u64) as *mut u64
        };
        // SAFETY: `slot` is core `cpu`'s release slot: ours (above) or the
        // firmware's spin table in the first page of RAM, which the hyp region
        // covers and nothing else uses.
        unsafe { publish_u64(slot, rpi4_secondary as *const () as usize as u64) };
        barriers::maint::publish_and_wake();
        Ok(())
    }

    fn park_cpu(&self, cpu: usize) {
        // Released like a started core, to a WFI loop (entry.S).
        if let Err(e) = self.start_cpu(cpu, rpi4_idle as *const () as usize as u64, 0) {
            log::warn!("cannot park CPU {cpu}: error {e}");
        }
    }

    fn system_off(&self) -> ! {
        if booted_at_el3() {
            semihosting_exit(0);
        }
        // A Pi has no firmware power-off call here: stop every core we run on.
        log::info!("system halted (no power-off on this board)");
        halt()
    }

    fn fail_exit(&self, code: u32) -> ! {
        if booted_at_el3() {
            semihosting_exit(code);
        }
        halt()
    }

    fn payload(&self, index: usize) -> Option<GuestImage> {
        payloads::ALL.get(index).map(|p| GuestImage {
            name: p.name,
            bytes: p.bytes,
            load_ipa: p.load_ipa,
            entry: p.entry,
        })
    }

    fn default_cpus(&self) -> usize {
        CPUS
    }

    fn bootargs(&self, buf: &mut [u8]) -> usize {
        if booted_at_el3() {
            semihosting_cmdline(buf)
        } else {
            0
        }
    }

    fn init_cpu_interrupts(&self, cpu: usize) {
        if cpu == 0 {
            GIC.init_distributor();
        }
        GIC.init_cpu();
        if cpu == 0 {
            if let Err(e) = GIC.self_test(1, 0) {
                panic!("GIC-400 self-test: {e}");
            }
            log::info!(
                "GIC-400: {} interrupt IDs, {}, SGI 1 to self acknowledged and EOIed",
                GIC.lines(),
                if GIC.has_security() {
                    "group 1 (non-secure view)"
                } else {
                    "no Security Extensions, group 0"
                }
            );
        }
    }
}

static PLATFORM: Platform = Platform {
    name: board::NAME,
    uart_base: board::UART0.base,
    // The PL011s' VideoCore interrupt 57; VideoCore interrupts are GIC-400
    // SPIs from 64 (BCM2711 ARM Peripherals, chapter 6): SPI 121, INTID 153
    // (as Linux's bcm2711.dtsi and QEMU's raspi4b wire it).
    uart_intid: Some(153),
    ram: &[mem(board::RAM), mem(board::RAM_HIGH)],
    devices: &[
        mem(board::UART0),
        mem(board::GICD),
        mem(board::GICC),
        mem(board::GICH),
        mem(board::GICV),
    ],
    hyp: mem(board::HYP),
    vm_pool: mem(board::VM_POOL),
    gic: hyp_core::platform::GicLayout::V2 {
        gicd: board::GICD.base,
        gicc: board::GICC.base,
        gich: board::GICH.base,
        gicv: board::GICV.base,
    },
    assignable: &[],
    // The Pi 4 has no SMMU, and its PCIe (the VL805 USB controller) stays the
    // hypervisor's: the host gets no DMA-capable device.
    smmu: None,
    pci: None,
    ops: &Rpi4Ops,
};

/// The DTB the firmware passed, if `x0` points at one in low RAM (checked
/// before anything reads further: under QEMU with a raw Image x0 is 0).
fn firmware_dtb(x0: u64) -> u64 {
    let ram = board::RAM;
    if x0 == 0 || !x0.is_multiple_of(8) || x0 < ram.base || x0 + 8 > ram.base + ram.size {
        return 0;
    }
    // SAFETY: `x0` is an aligned address inside the board's RAM (checked above).
    let magic = unsafe { core::ptr::read_volatile(x0 as *const u32) };
    if u32::from_be(magic) == FDT_MAGIC {
        x0
    } else {
        0
    }
}

#[unsafe(no_mangle)]
extern "C" fn platform_primary_main(x0: u64, boot_el: u64) -> ! {
    BOOT_EL.store(boot_el, Ordering::Relaxed);
    pl011::init(board::UART0.base);
    let dtb = if boot_el == 3 { 0 } else { firmware_dtb(x0) };
    hyp_core::boot::primary(&PLATFORM, dtb, secondary_entry as *const () as usize as u64)
}

#[unsafe(no_mangle)]
extern "C" fn platform_secondary_main(cpu: u64) -> ! {
    hyp_core::boot::secondary(cpu as usize)
}
