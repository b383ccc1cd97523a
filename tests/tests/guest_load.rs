//! `cargo xtask run --guest PATH --guest-load ADDR --guest-cmdline ARGS`: a
//! guest that is neither Linux nor an arm64 Image. A few hand-assembled
//! instructions, position-independent, print where they run and the x0 they
//! were given through the emulated PL011, check that x0 points at a device
//! tree (its magic), and power off with PSCI SYSTEM_OFF. Booted twice: as a
//! headerless raw image at ADDR, and wrapped in an ELF linked at 0 (ADDR its
//! base, the entry 8 bytes in). The host must report exactly ARGS as the
//! guest's command line. The loader arguments and boot arguments come from
//! the xtask itself (`run --prepare-only`), run with `cargo run -p xtask`.
//!
//! The guest's source (`llvm-mc -triple=aarch64`, then `llvm-objcopy -O binary`):
//!
//! ```text
//! _start: mov  x19, x0                 // the device tree's IPA
//!         movz x4, #0x0900, lsl #16    // PL011 data register, 0x0900_0000
//!         adr  x1, msg_at
//!         bl   puts
//!         adr  x1, _start              // where this code runs
//!         bl   puthex
//!         adr  x1, msg_x0
//!         bl   puts
//!         mov  x1, x19
//!         bl   puthex
//!         adr  x1, msg_nl
//!         bl   puts
//!         ldr  w2, [x19]               // FDT magic 0xd00dfeed, big-endian
//!         movz w3, #0x0dd0
//!         movk w3, #0xedfe, lsl #16
//!         adr  x1, msg_bad
//!         cmp  w2, w3
//!         b.ne 1f
//!         adr  x1, msg_good
//! 1:      bl   puts
//!         movz x0, #0x0008             // PSCI SYSTEM_OFF 0x8400_0008
//!         movk x0, #0x8400, lsl #16
//!         hvc  #0
//! 2:      wfi
//!         b    2b
//! puts:   ldrb w5, [x1], #1            // x1: a NUL-terminated string
//!         cbz  w5, 3f
//!         str  w5, [x4]
//!         b    puts
//! 3:      ret
//! puthex: mov  x6, #60                 // x1 as 16 hex digits
//! 4:      lsr  x7, x1, x6
//!         and  x7, x7, #0xf
//!         add  x8, x7, #0x30
//!         add  x9, x7, #0x57
//!         cmp  x7, #10
//!         csel x8, x8, x9, lo
//!         str  w8, [x4]
//!         subs x6, x6, #4
//!         b.ge 4b
//!         ret
//! msg_at:   .asciz "guest-load: running at 0x"
//! msg_x0:   .asciz ", x0 0x"
//! msg_nl:   .asciz "\n"
//! msg_good: .asciz "guest-load: x0 points at a device tree\n"
//! msg_bad:  .asciz "guest-load: x0 points at no device tree\n"
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(60);

/// The guest's instructions (see the module documentation).
const CODE: [u32; 41] = [
    0xaa00_03f3, // mov  x19, x0
    0xd2a1_2004, // movz x4, #0x0900, lsl #16
    0x1000_04e1, // adr  x1, msg_at
    0x9400_0016, // bl   puts
    0x10ff_ff81, // adr  x1, _start
    0x9400_0019, // bl   puthex
    0x5000_0521, // adr  x1, msg_x0
    0x9400_0012, // bl   puts
    0xaa13_03e1, // mov  x1, x19
    0x9400_0015, // bl   puthex
    0x5000_04e1, // adr  x1, msg_nl
    0x9400_000e, // bl   puts
    0xb940_0262, // ldr  w2, [x19]
    0x5281_ba03, // movz w3, #0x0dd0
    0x72bd_bfc3, // movk w3, #0xedfe, lsl #16
    0x1000_05a1, // adr  x1, msg_bad
    0x6b03_005f, // cmp  w2, w3
    0x5400_0041, // b.ne 1f
    0x1000_0401, // adr  x1, msg_good
    0x9400_0006, // 1: bl puts
    0xd280_0100, // movz x0, #0x0008
    0xf2b0_8000, // movk x0, #0x8400, lsl #16
    0xd400_0002, // hvc  #0
    0xd503_207f, // 2: wfi
    0x17ff_ffff, // b    2b
    0x3840_1425, // puts: ldrb w5, [x1], #1
    0x3400_0065, // cbz  w5, 3f
    0xb900_0085, // str  w5, [x4]
    0x17ff_fffd, // b    puts
    0xd65f_03c0, // 3: ret
    0xd280_0786, // puthex: mov x6, #60
    0x9ac6_2427, // 4: lsr x7, x1, x6
    0x9240_0ce7, // and  x7, x7, #0xf
    0x9100_c0e8, // add  x8, x7, #0x30
    0x9101_5ce9, // add  x9, x7, #0x57
    0xf100_28ff, // cmp  x7, #10
    0x9a89_3108, // csel x8, x8, x9, lo
    0xb900_0088, // str  w8, [x4]
    0xf100_10c6, // subs x6, x6, #4
    0x54ff_ff0a, // b.ge 4b
    0xd65f_03c0, // ret
];

/// The strings right after the code, in the order the `adr`s expect.
const STRINGS: &[u8] = b"guest-load: running at 0x\0, x0 0x\0\n\0\
    guest-load: x0 points at a device tree\n\0\
    guest-load: x0 points at no device tree\n\0";

/// The headerless raw image.
fn raw_image() -> Vec<u8> {
    let mut b: Vec<u8> = CODE.iter().flat_map(|w| w.to_le_bytes()).collect();
    b.extend_from_slice(STRINGS);
    b
}

/// The same code in an AArch64 ELF64 linked at 0: one PT_LOAD at address 0
/// whose first 8 bytes are padding (zeros), `e_entry` = 8.
fn elf_at_zero(code: &[u8]) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    const PAD: u64 = 8;
    let off = EHDR + PHDR;
    let size = PAD + code.len() as u64;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, LE, v1
    e.extend_from_slice(&2u16.to_le_bytes()); // e_type ET_EXEC
    e.extend_from_slice(&183u16.to_le_bytes()); // e_machine EM_AARCH64
    e.extend_from_slice(&1u32.to_le_bytes()); // e_version
    e.extend_from_slice(&PAD.to_le_bytes()); // e_entry
    e.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    e.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(e.len() as u64, EHDR);
    e.extend_from_slice(&1u32.to_le_bytes()); // p_type PT_LOAD
    e.extend_from_slice(&7u32.to_le_bytes()); // p_flags RWX
    e.extend_from_slice(&off.to_le_bytes()); // p_offset
    e.extend_from_slice(&0u64.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&0u64.to_le_bytes()); // p_paddr
    e.extend_from_slice(&size.to_le_bytes()); // p_filesz
    e.extend_from_slice(&size.to_le_bytes()); // p_memsz
    e.extend_from_slice(&8u64.to_le_bytes()); // p_align
    assert_eq!(e.len() as u64, off);
    e.extend_from_slice(&[0; PAD as usize]);
    e.extend_from_slice(code);
    e
}

/// The workspace root (tests/ is one of its members).
fn root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().expect("tests/ has a parent").to_owned()
}

/// `cargo xtask ARGS` (as `cargo run -p xtask`, from the workspace root).
fn xtask(args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .current_dir(root())
        .output()
        .expect("run cargo xtask")
}

/// Writes `bytes` to a file of this test under target/.
fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = root().join("target").join("guest-load-test");
    std::fs::create_dir_all(&dir).expect("create target/guest-load-test");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write the guest image");
    path
}

/// What `run --prepare-only` printed: (QEMU loader arguments, boot arguments).
fn prepare(guest: &Path, extra: &[&str]) -> (Vec<String>, String) {
    let guest = guest.to_str().expect("a UTF-8 path");
    let mut args = vec!["run", "--guest", guest, "--prepare-only"];
    args.extend_from_slice(extra);
    let out = xtask(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo xtask {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let [loader, bootargs] = lines[..] else {
        panic!("expected two lines from --prepare-only, got:\n{stdout}");
    };
    let loader = loader.split_whitespace().map(str::to_owned).collect();
    (loader, bootargs.to_owned())
}

/// The command line: odd spacing, quotes and a ` -- ` of its own, none of
/// which may be lost or added to, and words the hypervisor and the host
/// take when they are theirs (before the first ` -- `), which must not
/// change them from a guest's command line.
const ARGS: &str = "guest-load-test  a=1 \"b c\" hyp.cpus=1 guests=nope -- d";

/// Boots `guest` with `--guest-load ADDR --guest-cmdline ARGS --guest-mem 16`
/// and checks what it and the host print.
fn boot(guest: &Path, addr: u64, entry: u64) {
    let addr_s = format!("{addr:#x}");
    let (loader, bootargs) = prepare(
        guest,
        &[
            "--guest-load",
            &addr_s,
            "--guest-cmdline",
            ARGS,
            "--guest-mem",
            "16",
        ],
    );
    assert!(
        bootargs.ends_with(&format!(" -- {ARGS}")),
        "boot arguments: {bootargs}"
    );
    let start = Instant::now();
    let mut q = Qemu::boot(BootOptions {
        append: Some(bootargs),
        extra: loader,
        smp: Some(2),
        ..BootOptions::default()
    });
    // The guest's `hyp.cpus=1` is not the hypervisor's.
    q.expect_exact("hyp: 2 CPUs online at EL2", T);
    q.expect_exact(
        "host: VM 1 (linux): 1 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    q.expect_matching("the kernel's placement", T, |l| {
        l.starts_with(&format!(
            "host: linux: kernel {:#x} bytes at IPA {addr:#x} (entry {entry:#x}),",
            (entry - addr) as usize + raw_image().len()
        ))
    });
    q.expect_exact(&format!("host: linux: command line \"{ARGS}\""), T);
    // The device tree is at the end of RAM less 2 MiB.
    q.expect_exact(
        &format!("[vm1] guest-load: running at {entry:#018x}, x0 0x0000000040e00000"),
        T,
    );
    q.expect_exact("[vm1] guest-load: x0 points at a device tree", T);
    q.expect_exact("host: VM 1 (linux) powered off", T);
    assert_eq!(q.expect_exit(T), 0);
    eprintln!(
        "guest_load: {} at {addr:#x}: powered off {:.1} s after QEMU started",
        guest.display(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn raw_image_and_elf_at_zero_with_exact_command_line() {
    // One test, the two boots in turn.
    let raw = file("raw.bin", &raw_image());
    boot(&raw, 0x4020_0000, 0x4020_0000);
    let elf = file("at0.elf", &elf_at_zero(&raw_image()));
    boot(&elf, 0x4030_0000, 0x4030_0008);
}

#[test]
fn bad_load_addresses_are_refused_before_booting() {
    let raw = file("refused.bin", &raw_image());
    let raw = raw.to_str().expect("a UTF-8 path");
    for (addr, why) in [
        ("0x40200004", "8-byte aligned"),
        ("0x3ff00000", "lower half of guest RAM"),
        // 16 MiB of RAM: the kernel must end below 0x40800000.
        ("0x40800000", "lower half of guest RAM"),
    ] {
        let out = xtask(&[
            "run",
            "--guest",
            raw,
            "--guest-load",
            addr,
            "--guest-mem",
            "16",
            "--prepare-only",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{addr}: accepted:\n{stderr}");
        assert!(stderr.contains(why), "{addr}: {stderr}");
    }
    // Without --guest-load, a raw image is not an arm64 Image.
    let out = xtask(&["run", "--guest", raw, "--prepare-only"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("give --guest-load ADDR"),
        "{stderr}"
    );
    // --guest-cmdline and --guest-append exclude each other (clap).
    let out = xtask(&[
        "run",
        "--guest",
        raw,
        "--guest-cmdline",
        "a",
        "--guest-append",
        "b",
        "--prepare-only",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}
