//! The Raspberry Pi 4 image (issue 8) on QEMU's raspi4b, both ways in:
//!
//! * the ELF, as `cargo xtask run --platform rpi4` boots it: all four cores
//!   enter at EL3, the entry drops each to EL2 and parks cores 1-3 until the
//!   hypervisor releases them; semihosting makes power-off exit QEMU with 0;
//! * the SD card's `kernel8.img` as a raw arm64 Image: QEMU then does what the
//!   Pi firmware does (core 0 at EL2, cores 1-3 in the spin table at 0xd8), so
//!   this exercises the real-hardware path. There is no power-off there: the
//!   hypervisor halts and the test stops QEMU.
//!
//! Both boot the host's default, the protected-guest demo (QEMU passes no
//! bootargs on raspi4b, so no other guest can be picked there).
//!
//! Plus a host-side check of kernel8.img's arm64 Image header against the ELF
//! (what the Pi firmware and QEMU read to load it).

use std::time::Duration;

use hyp_tests::{
    env_path, expect_demo_pass, BootOptions, DemoCounts, Qemu, TestBoard, DEMO_POOL_PAGES,
    DEMO_VM_PAGES,
};
use object::{Object, ObjectSegment};

const T: Duration = Duration::from_secs(90);

const GIC_LINE: &str = "hyp: GIC-400: 224 interrupt IDs, no Security Extensions, group 0, \
                        SGI 1 to self acknowledged and EOIed";

/// QEMU raspi4b passes no bootargs, so the host runs its default: the
/// protected-guest demo (tests/tests/demo.rs checks it on virt too).
fn expect_demo(q: &mut Qemu) {
    let c = expect_demo_pass(q, T);
    assert_eq!(
        c,
        DemoCounts {
            denied: 2 * (2 * DEMO_VM_PAGES + 2 * DEMO_POOL_PAGES),
            shared: 2 * DEMO_POOL_PAGES,
            scrubbed: 2 * DEMO_VM_PAGES,
        }
    );
}

#[test]
fn raspi4b_elf_four_cpus_at_el2_demo_exit_0() {
    let mut q = Qemu::boot(BootOptions::board(TestBoard::Rpi4));
    q.expect_exact("hyp: booting on rpi4", T);
    q.expect_exact(
        "hyp: EL2 MMU and caches on, vectors installed, SCTLR_EL2.EIS=EOS=1",
        T,
    );
    // The physical GIC-400 driver: QEMU's model has 192 SPIs and no Security
    // Extensions; an SGI to self is acknowledged (ID and source) and EOIed.
    q.expect_exact(GIC_LINE, T);
    // QEMU passes no device tree with an ELF: the board's defaults (ram + ram_high).
    q.expect_exact(
        "hyp: no device tree, board defaults: 4 CPUs, 1984 MiB RAM, bootargs \"\"",
        T,
    );
    q.expect_exact("hyp: 4 CPUs online at EL2", T);
    expect_demo(&mut q);
    q.expect_exit_code(0, T);
    let first = q.log().into_iter().find(|l| !l.starts_with("[stderr] "));
    assert_eq!(first.as_deref(), Some("hyp: booting on rpi4"));
}

#[test]
fn raspi4b_kernel8_img_firmware_path_spin_table() {
    let mut q = Qemu::boot(BootOptions::board(TestBoard::Rpi4Kernel8));
    q.expect_exact("hyp: booting on rpi4", T);
    q.expect_exact(GIC_LINE, T);
    q.expect_exact(
        "hyp: no device tree, board defaults: 4 CPUs, 1984 MiB RAM, bootargs \"\"",
        T,
    );
    // Cores 1-3 came out of QEMU's spin-table stub, as from the Pi firmware's.
    q.expect_exact("hyp: 4 CPUs online at EL2", T);
    expect_demo(&mut q);
    // Entered at EL2, the hypervisor cannot know it runs under QEMU: it halts.
    q.expect_exact("hyp: system halted (no power-off on this board)", T);
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The fields the Pi firmware and QEMU's loader read (Linux
/// Documentation/arch/arm64/booting.rst), checked against the ELF the image
/// was made from.
#[test]
fn kernel8_img_has_a_valid_arm64_image_header() {
    let img = std::fs::read(env_path("HYP_KERNEL8_RPI4")).expect("kernel8.img");
    let elf_bytes = std::fs::read(env_path("HYP_IMAGE_RPI4")).expect("hyp-rpi4.elf");
    let elf = object::File::parse(&*elf_bytes).expect("ELF");
    let board =
        board::Board::load(env_path("HYP_BOARD_DIR_RPI4").join("board.toml")).expect("board.toml");
    assert!(img.len() >= 64, "kernel8.img is {} bytes", img.len());

    // magic "ARM\x64" at 0x38.
    assert_eq!(u32_at(&img, 0x38), 0x644d_5241, "magic");
    assert_eq!(&img[0x38..0x3c], b"ARM\x64");
    // code0: `b` past the header (to the entry code); code1: 0.
    let code0 = u32_at(&img, 0);
    assert_eq!(code0 >> 26, 0b000101, "code0 {code0:#x} is not a B");
    let target = u64::from(code0 & 0x03ff_ffff) * 4;
    assert!(
        (64..img.len() as u64).contains(&target),
        "code0 branches to {target:#x}"
    );
    assert_eq!(u32_at(&img, 4), 0, "code1");
    // text_offset: RAM starts at 0 on the BCM2711, so it is the load address,
    // where the ELF's first segment is linked and where the firmware loads it
    // (config.txt kernel_address=0x80000).
    let text_offset = u64_at(&img, 8);
    assert_eq!(text_offset, 0x8_0000);
    assert_eq!(text_offset, board.load_address);
    let segs: Vec<(u64, u64)> = elf
        .segments()
        .filter(|s| s.size() > 0)
        .map(|s| (s.address(), s.size()))
        .collect();
    let lowest = segs.iter().map(|s| s.0).min().expect("segments");
    assert_eq!(lowest, text_offset, "the ELF is linked elsewhere");
    assert_eq!(elf.entry(), text_offset, "the ELF's entry is the header");
    // image_size: the whole image in memory, BSS and stacks included.
    let mem_end = segs.iter().map(|s| s.0 + s.1).max().expect("segments");
    let image_size = u64_at(&img, 16);
    assert!(
        image_size >= mem_end - text_offset && image_size >= img.len() as u64,
        "image_size {image_size:#x} < {:#x} in memory / {:#x} in the file",
        mem_end - text_offset,
        img.len()
    );
    assert!(
        image_size > img.len() as u64,
        "BSS is not in the file but counted"
    );
    // flags: bit 0 = 0 little-endian, bits 1-2 = 1 (4 KiB pages), bit 3 = 0
    // (2 MiB aligned base as close as possible to the start of RAM).
    assert_eq!(u64_at(&img, 24), 0b0010, "flags");
    // res2..res4 and res5.
    assert_eq!(&img[32..56], &[0u8; 24]);
    assert_eq!(u32_at(&img, 60), 0, "res5");
    // The flat image is the ELF's bytes: the first instruction matches.
    let text = elf
        .segments()
        .find(|s| s.address() == text_offset)
        .expect("text segment");
    let data = text.data().expect("segment data");
    assert_eq!(
        &img[..64],
        &data[..64],
        "kernel8.img does not start with the ELF's text"
    );
}
