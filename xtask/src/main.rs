//! The build door: `cargo xtask build|run|test` builds the hypervisor images, runs them in QEMU and runs every check.
//!
//! * `build --platform <board>`: provision the Rust targets, build the guest
//!   payloads (flat binaries + manifest in `target/payloads/<board>/`), build
//!   the hypervisor with `HYP_PAYLOAD_DIR` pointing there, and write the flat
//!   image `target/images/<board>/hypervisor.img` (checked arm64 Image header).
//! * `run --platform <board>`: build, provision QEMU, boot the image in QEMU with
//!   the serial port on the terminal; exits with QEMU's status.
//! * `test`: format, clippy, host unit tests, image build and the QEMU
//!   integration tests (`hyp-tests`), stopping at the first failure.
//! * `bench [--platform <board>]`, `size [--platform <board>]`: see `bench.rs`;
//!   `bench --update-baseline`: see `baseline.rs`.
//! * `coverage [--crate <name>]`, `mutants [--file <path>]`: developer tools
//!   (line coverage of a crate's host tests, mutation testing of hyp-core);
//!   see `coverage.rs` and `mutants.rs`. Not part of `test`.

// The host's device-tree module (included by linux.rs's tests) names `alloc`.
#[cfg(test)]
extern crate alloc;

mod baseline;
mod bench;
mod bootbench;
mod coverage;
mod flat;
mod fuzz;
mod insncount;
mod iobench;
mod kbuild;
mod kmods;
mod linux;
mod mutants;
mod profile;
mod provision;
#[cfg(test)]
mod pvmfw_rules;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use board::{Board, Manifest, ManifestEntry};
use clap::{Parser, Subcommand, ValueEnum};

/// Errors are messages for the user.
pub type Result<T> = std::result::Result<T, String>;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test the hypervisor")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Platform {
    /// QEMU `virt` (platforms/qemu).
    Qemu,
    /// Raspberry Pi 4 (platforms/rpi4).
    Rpi4,
}

impl Platform {
    fn dir(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Rpi4 => "rpi4",
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the guest payloads and the hypervisor image for a board.
    Build {
        /// The board (a directory under platforms/).
        #[arg(long, value_enum)]
        platform: Platform,
        /// hyp-core features (comma-separated), e.g. the test-only
        /// `test-leak-one-page`. Such a variant is built in its own target
        /// directory and written to `target/images/<board>-<features>/`,
        /// so it never replaces the normal image.
        #[arg(long, value_name = "FEATURES")]
        features: Option<String>,
    },
    /// Build, then boot the image in QEMU with the serial port on this terminal.
    Run {
        /// The board (a directory under platforms/).
        #[arg(long, value_enum, default_value = "qemu")]
        platform: Platform,
        /// Number of CPUs (default: the board's qemu.smp).
        #[arg(long)]
        smp: Option<u32>,
        /// Wait for gdb on :1234 (`-s -S`); disables the default timeout.
        #[arg(long)]
        gdb: bool,
        /// Deterministic instruction counting (`-icount shift=0`).
        #[arg(long)]
        icount: bool,
        /// Kill QEMU after SECS seconds (exit status 124); 0 = unbounded.
        /// Default: 120, or 0 with --gdb.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Kernel command line (`-append`): reaches the hypervisor as /chosen/bootargs.
        #[arg(long, value_name = "ARGS")]
        append: Option<String>,
        /// hyp-core features of a test variant (see `build --features`).
        #[arg(long, value_name = "FEATURES")]
        features: Option<String>,
        /// Run an external EL1 kernel as the host's only guest: an arm64
        /// Image (raw or gzip) or an AArch64 ELF, with a generated device
        /// tree (its IPA in x0 at entry); with --guest-load, also a
        /// headerless raw image or an ELF linked at 0.
        #[arg(long, value_name = "PATH")]
        guest: Option<PathBuf>,
        /// Initrd/initramfs for --guest.
        #[arg(long, value_name = "PATH", requires = "guest")]
        initrd: Option<PathBuf>,
        /// Appended to the guest kernel's command line (after
        /// "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr panic=-1").
        #[arg(long, value_name = "ARGS", requires = "guest")]
        guest_append: Option<String>,
        /// The guest kernel's whole command line, exactly ARGS (nothing is
        /// prepended: give console=ttyAMA0 yourself for Linux).
        #[arg(
            long,
            value_name = "ARGS",
            requires = "guest",
            conflicts_with = "guest_append"
        )]
        guest_cmdline: Option<String>,
        /// Load --guest PATH at guest IPA ADDR and enter it there: a
        /// headerless raw image (entry = ADDR), or an ELF linked at 0 (ADDR
        /// is its base). ADDR: 8-byte aligned, the image inside the lower
        /// half of guest RAM (RAM is at IPA 0x40000000).
        #[arg(long, value_name = "ADDR", requires = "guest", value_parser = parse_u64)]
        guest_load: Option<u64>,
        /// vCPUs of the --guest VM.
        #[arg(long, value_name = "N", default_value = "1", requires = "guest")]
        guest_smp: u32,
        /// RAM of the --guest VM in MiB (default 256).
        #[arg(long, visible_alias = "mem", value_name = "MIB", requires = "guest")]
        guest_mem: Option<u64>,
        /// Make the --guest VM protected (its memory donated, not lent).
        #[arg(long, requires = "guest")]
        protected: bool,
        /// A raw disk image: a virtio-blk PCI device the host drives and
        /// serves to the --guest as a virtio-mmio disk (QEMU only).
        #[arg(long, value_name = "PATH", requires = "guest")]
        disk: Option<PathBuf>,
        /// A network for the --guest: QEMU's user-mode network on a
        /// virtio-net PCI device the host drives and serves to the guest as
        /// virtio-mmio (QEMU only). SPEC: user[,hostfwd=tcp:127.0.0.1:HPORT-:GPORT]...
        #[arg(long, value_name = "SPEC", requires = "guest")]
        net: Option<String>,
        /// Do not build or boot: print the --guest's QEMU loader arguments
        /// (one line) and the hypervisor's boot arguments (the next line).
        #[arg(long, requires = "guest")]
        prepare_only: bool,
        /// Extra QEMU arguments (after `--`).
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Fetch Debian's arm64 kernel and busybox-static (apt, cached in
    /// target/linux-cache) or build the project's kernel (`--kernel built`),
    /// build an initramfs and boot Linux as a guest.
    Linux {
        /// The board (a directory under platforms/). rpi4 (QEMU raspi4b):
        /// no --disk or --net (no PCIe there).
        #[arg(long, value_enum, default_value = "qemu")]
        platform: Platform,
        /// Host CPUs (QEMU -smp; on raspi4b, whose 4 cores are fixed,
        /// `hyp.cpus=N`).
        #[arg(long, default_value = "2")]
        smp: u32,
        /// Guest vCPUs.
        #[arg(long, default_value = "2")]
        guest_smp: u32,
        /// Deterministic instruction counting (`-icount shift=0`).
        #[arg(long)]
        icount: bool,
        /// A protected VM (memory donated).
        #[arg(long)]
        protected: bool,
        /// Kill QEMU after SECS seconds; 0 = unbounded.
        #[arg(long, value_name = "SECS", default_value = "600")]
        timeout: u64,
        /// Guest RAM in MiB (default 256).
        #[arg(long, visible_alias = "guest-mem", value_name = "MIB")]
        mem: Option<u64>,
        /// Appended to the guest kernel's command line (after
        /// "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr panic=-1").
        #[arg(long, value_name = "ARGS")]
        guest_append: Option<String>,
        /// The guest kernel's whole command line, exactly ARGS (nothing is
        /// prepended: give console=ttyAMA0 yourself).
        #[arg(long, value_name = "ARGS", conflicts_with = "guest_append")]
        guest_cmdline: Option<String>,
        /// A raw disk image the guest sees as /dev/vda (a virtio-blk PCI
        /// device the host drives and serves to it as virtio-mmio); with
        /// `--guest-append hyp.init=disk`, /init checks it (see README).
        #[arg(long, value_name = "PATH")]
        disk: Option<PathBuf>,
        /// A network for the guest (eth0): QEMU's user-mode network on a
        /// virtio-net PCI device the host drives and serves to it as
        /// virtio-mmio; with `--guest-append hyp.init=net`, /init uses it
        /// (see README). SPEC: user[,hostfwd=tcp:127.0.0.1:HPORT-:GPORT]...
        #[arg(long, value_name = "SPEC")]
        net: Option<String>,
        /// Only fetch (or build) the kernel and build the initramfs, print
        /// the boot arguments.
        #[arg(long)]
        prepare_only: bool,
        /// The guest kernel: `debian` (Debian's arm64 kernel package, its
        /// modules in the initramfs) or `built` (the project's, built once
        /// from Debian's linux-source-6.12 with platforms/linux/guest.config:
        /// the pKVM guest driver and restricted DMA pools, all built in;
        /// cached in target/linux-cache/kbuild). Default: `built` for a
        /// protected VM with a disk or a network (its devices need the
        /// pKVM driver's shared pool), else `debian`.
        #[arg(long, value_enum)]
        kernel: Option<linux::KernelSource>,
    },
    /// Run every check: fmt, clippy, unit tests, image build, QEMU integration tests.
    Test,
    /// Attack the hypervisor from the host on QEMU virt: random control
    /// calls from every host CPU interleaved with runs of live protected and
    /// normal VMs, checked against the host's model, with probes and the
    /// hypervisor's AUDIT after every batch (host option `fuzz=N seed=S`).
    /// Fails on any FAIL line or a non-zero exit.
    Fuzz {
        /// Control calls in all.
        #[arg(long, default_value = "1000000")]
        calls: u64,
        /// Random seed.
        #[arg(long, default_value = "1")]
        seed: u64,
    },
    /// Boot the bench guest under `-icount shift=0` (exact instruction counts)
    /// and run the s2mm host benchmark; table on the terminal,
    /// target/bench/latest.json (the run before in previous.json; rpi4:
    /// latest-rpi4.json and previous-rpi4.json), and the comparison with
    /// the committed baseline (bench/baseline.json).
    Bench {
        /// The board (a directory under platforms/).
        #[arg(long, value_enum, default_value = "qemu")]
        platform: Platform,
        /// Instead: a Linux guest's 4 KiB disk reads and 1 MiB HTTP
        /// transfers through the hypervisor (virtio PCI devices served by
        /// the host) against the same kernel on QEMU's virtio-mmio devices
        /// without it, in exact instructions counted by the insn-count QEMU
        /// plugin (target/bench/linux-io.json; about 10 minutes).
        #[arg(long)]
        linux_io: bool,
        /// With --linux-io: profile one piece of work (blk, rx or tx) on
        /// each path instead, by function (hypervisor, host, Linux).
        #[arg(long, requires = "linux_io")]
        profile: Option<String>,
        /// With --linux-io: the project's kernel as a protected VM against
        /// the same kernel as a normal VM, both through the hypervisor
        /// (target/bench/linux-io-protected.json).
        #[arg(long, requires = "linux_io")]
        protected: bool,
        /// Instead: rewrite bench/baseline.json from a fresh run of the
        /// guest bench on both boards (each run twice, identical counts
        /// required) and print every metric's old and new figure, for the
        /// deliberate commit that updates it.
        #[arg(long, conflicts_with = "linux_io")]
        update_baseline: bool,
        /// Instead: `linux_boot_ratio`, the instructions from QEMU's power-on
        /// to /init of `cargo xtask linux`'s Debian kernel (1 vCPU) through
        /// the hypervisor over the same kernel and initramfs on QEMU alone
        /// (the insn-count plugin; target/bench/linux-boot.json).
        #[arg(long, conflicts_with_all = ["linux_io", "update_baseline"])]
        linux_boot: bool,
    },
    /// Where one bench metric's instructions go: two traced boots on QEMU
    /// virt (-icount, `-d in_asm,exec`), per-function instructions per
    /// iteration. METRIC: hvc_null, psci_version, mmio_hyp, mmio_host,
    /// s2_fault, mem_share_unshare, hvc_unknown, vtimer_latency,
    /// vcpu_switch or sgi_latency.
    Profile {
        /// The metric to profile.
        metric: String,
        /// Iterations of the shorter boot (the other runs twice as many).
        #[arg(long, default_value = "500")]
        iterations: u64,
        /// Also the hypervisor's translated blocks run per iteration, by
        /// address, with their source lines (binutils' addr2line).
        #[arg(long)]
        blocks: bool,
    },
    /// Bytes of text, rodata, data and bss of the hypervisor alone and of
    /// the whole image (with the guest payloads), per board.
    Size {
        /// One board (default: every board).
        #[arg(long, value_enum)]
        platform: Option<Platform>,
    },
    /// Line coverage of a crate by its host tests (cargo-llvm-cov, installed
    /// when missing): a per-file table and the total; lcov file in
    /// target/coverage/. Not part of `test`.
    Coverage {
        /// The crate to measure.
        #[arg(
            long = "crate",
            value_enum,
            value_name = "NAME",
            default_value = "hyp-core"
        )]
        krate: coverage::CovCrate,
        /// Also write an HTML report (target/coverage/<crate>/html/).
        #[arg(long)]
        html: bool,
    },
    /// Mutation testing of hyp-core by its host tests (cargo-mutants,
    /// installed when missing): counts of caught, missed, timed-out and
    /// unviable mutants, and the missed ones. Exit status 2 when some were
    /// missed, 3 when some timed out. Not part of `test`.
    Mutants {
        /// Only mutants in this file (e.g. crates/hyp-core/src/inject.rs);
        /// default: every file of hyp-core built for the host (~790
        /// mutants, about an hour).
        #[arg(long, value_name = "PATH")]
        file: Option<String>,
        /// Stop one mutant's tests after SECS seconds (outcome `timeout`).
        #[arg(long, value_name = "SECS", default_value = "60")]
        timeout: u64,
        /// Stop one mutant's build after SECS seconds.
        #[arg(long, value_name = "SECS", default_value = "600")]
        build_timeout: u64,
    },
}

/// A number, decimal or 0x-prefixed hexadecimal, `_` allowed between digits.
fn parse_u64(s: &str) -> Result<u64> {
    let t = s.replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .map_err(|e| format!("{s:?} is not a number (decimal or 0x-hex): {e}"))
}

/// The workspace root (the parent of xtask/), found at run time (see
/// [`find_root`]): a copied checkout builds into its own `target/`, not into
/// the one of the checkout where this binary was compiled. Exits with an
/// error message when there is none.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
        let cwd = std::env::current_dir().ok();
        let starts: Vec<&Path> = manifest_dir
            .iter()
            .chain(cwd.iter())
            .map(PathBuf::as_path)
            .collect();
        find_root(&starts).unwrap_or_else(|e| {
            note(&format!("error: {e}"));
            std::process::exit(2)
        })
    })
}

/// Whether `dir` is this workspace's root: a Cargo.toml with a `[workspace]`
/// table, and `xtask/Cargo.toml` beside it.
fn is_workspace_root(dir: &Path) -> bool {
    dir.join("xtask").join("Cargo.toml").is_file()
        && std::fs::read_to_string(dir.join("Cargo.toml"))
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| t.get("workspace").is_some_and(toml::Value::is_table))
}

/// The workspace root: the nearest [`is_workspace_root`] directory at or
/// above the first of `starts` that has one. `cargo xtask` (`cargo run`)
/// sets `CARGO_MANIFEST_DIR` to xtask/ when it runs the binary, so that
/// comes first; then the current directory.
fn find_root(starts: &[&Path]) -> Result<PathBuf> {
    starts
        .iter()
        .find_map(|s| s.ancestors().find(|d| is_workspace_root(d)))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            let tried: Vec<String> = starts.iter().map(|s| s.display().to_string()).collect();
            format!(
                "cannot find the workspace root (a Cargo.toml with [workspace] and xtask/ beside it) \
                 at or above {}; run `cargo xtask` inside the checkout",
                if tried.is_empty() {
                    "(no directory: CARGO_MANIFEST_DIR unset, current directory unknown)".to_owned()
                } else {
                    tried.join(" or ")
                }
            )
        })
}

/// The workspace target directory (xtask always builds into it).
pub fn target_dir() -> PathBuf {
    root().join("target")
}

/// Prints a progress line.
pub fn note(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming the command.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    note(&format!("$ {}", show(cmd)));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run `{}`: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", show(cmd)))
    }
}

/// A `cargo` command in the workspace root, building into the workspace `target/`.
fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .current_dir(root())
        .env("CARGO_TARGET_DIR", target_dir());
    cmd
}

fn load_board(platform: Platform) -> Result<(Board, PathBuf)> {
    let dir = root().join("platforms").join(platform.dir());
    let board = Board::load(dir.join("board.toml")).map_err(|e| e.to_string())?;
    board
        .check()
        .map_err(|e| format!("{}: {e}", dir.join("board.toml").display()))?;
    Ok((board, dir))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Writes `bytes` unless the file already holds them (keeps the mtime, so
/// cargo's rerun-if-changed does not rebuild the platform crate needlessly).
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What `build` produced.
struct Built {
    board: Board,
    payload_dir: PathBuf,
    /// The hypervisor ELF (for gdb).
    elf: PathBuf,
    /// The flat image (arm64 Image): `hypervisor.img`, or `kernel8.img` on rpi4.
    image: PathBuf,
    /// What QEMU's `-kernel` gets: the flat image on qemu, the ELF on rpi4
    /// (raspi4b enters an ELF at EL3 on all cores; see platform-rpi4).
    qemu_kernel: PathBuf,
}

/// Builds the payloads (flat binaries + manifest) for `board`.
fn build_payloads(platform: Platform, board: &Board) -> Result<PathBuf> {
    let payload_dir = target_dir().join("payloads").join(platform.dir());
    let mut manifest = Manifest::default();
    for guest in &board.guests {
        note(&format!("building guest {guest} ({})", board.guest_target));
        run_checked(&mut cargo(&[
            "build",
            "--release",
            "-p",
            guest,
            "--bin",
            guest,
            "--target",
            &board.guest_target,
        ]))?;
        let elf = target_dir()
            .join(&board.guest_target)
            .join("release")
            .join(guest);
        let flat =
            flat::elf_to_flat(&read(&elf)?).map_err(|e| format!("{}: {e}", elf.display()))?;
        let file = format!("{guest}.bin");
        write(&payload_dir.join(&file), &flat.bytes)?;
        note(&format!(
            "payload {guest}: {} bytes at IPA {:#x}, entry {:#x}",
            flat.bytes.len(),
            flat.load_addr,
            flat.entry
        ));
        manifest.payloads.push(ManifestEntry {
            name: guest.clone(),
            file,
            load_ipa: flat.load_addr,
            entry: flat.entry,
        });
    }
    let manifest_path = payload_dir.join(board::MANIFEST_FILE);
    write(&manifest_path, manifest.to_toml().as_bytes())?;
    Ok(payload_dir)
}

/// config.txt for the Pi firmware (docs: raspberrypi.com/documentation, "config.txt").
const RPI4_CONFIG: &str = "\
# Raspberry Pi 4 firmware configuration for the hypervisor (written by cargo xtask build).
# 64-bit mode: the firmware's armstub drops to EL2 (not EL1) and enters
# kernel8.img on core 0 with the DTB in x0; cores 1-3 wait in its spin table.
arm_64bit=1
kernel=kernel8.img
# The image is linked at 0x80000 and not relocatable (newer firmware would put
# an arm64 Image at 0x200000 otherwise); entry.S halts if it runs elsewhere.
kernel_address=0x80000
# Low-peripheral map: UART0 at 0xfe201000, GIC-400 at 0xff841000.
arm_peri_high=0
# The GIC-400 (not the legacy interrupt controller); the armstub puts every
# interrupt in group 1 (non-secure).
enable_gic=1
# UART0 (PL011) on GPIO 14/15 instead of Bluetooth; the hypervisor also sets the pins
# and 115200 baud itself.
enable_uart=1
dtoverlay=disable-bt
uart_2ndstage=1
# RAM below 0x3c000000 for the ARM cores (board.toml's `ram` region).
gpu_mem=64
# The DTB in the gap that board.toml keeps out of the hyp and vm regions.
device_tree_address=0x04000000
";

const RPI4_README: &str = "\
Booting the hypervisor on a Raspberry Pi 4
==========================================

Files here:
  kernel8.img   the hypervisor as an arm64 Image (flat binary, header at offset 0)
  config.txt    firmware settings (64-bit, EL2 kept, UART0, load address 0x80000)
  hyp-rpi4.elf  the same hypervisor as ELF: what `cargo xtask run --platform rpi4`
                boots on qemu-system-aarch64 -M raspi4b (QEMU enters an ELF at EL3
                on all four cores, and the hypervisor drops to EL2 itself)

1. Take a FAT32-formatted SD card holding the Raspberry Pi firmware: start4.elf,
   fixup4.dat and bcm2711-rpi-4-b.dtb from the `boot` folder of the
   raspberrypi/firmware repository on GitHub (or use the boot partition of a
   Raspberry Pi OS image), plus overlays/disable-bt.dtbo.
2. Copy kernel8.img and config.txt from this folder to the card's root,
   replacing any existing ones. Remove any armstub= line from other configs:
   the firmware's built-in armstub must run (it drops to EL2 and keeps the
   spin table the hypervisor uses to start cores 1-3).
3. Connect a 3.3 V USB serial adapter to GPIO 14 (TXD, pin 8), GPIO 15 (RXD,
   pin 10) and GND (pin 6); open it at 115200 8N1 (e.g. `picocom -b 115200 /dev/ttyUSB0`).
4. Insert the card and power the Pi: the firmware prints its second-stage
   log (uart_2ndstage=1), loads kernel8.img at 0x80000 and the DTB at
   0x04000000, and the hypervisor prints `hyp: booting on rpi4` on the same UART.
   When the guest powers off, the hypervisor prints `hyp: system halted` and
   stops (a Pi has no power-off); power-cycle to boot again.
";

fn build(platform: Platform) -> Result<Built> {
    build_variant(platform, &[])
}

/// Splits a `--features` list.
fn feature_list(features: Option<&str>) -> Vec<String> {
    features
        .unwrap_or("")
        .split([',', ' '])
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Builds the image for `platform` with hyp-core `features` (none: the
/// normal image). A variant gets its own cargo target directory
/// (`target/variants/<features>`) and image directory
/// (`target/images/<board>-<features>`); the guest payloads are shared.
fn build_variant(platform: Platform, features: &[String]) -> Result<Built> {
    let (board, board_dir) = load_board(platform)?;
    let variant = features.join("+");
    note(&format!(
        "building {} ({})",
        board.name,
        board_dir.display()
    ));
    provision::targets(&[&board.hyp_target, &board.guest_target])?;
    let payload_dir = build_payloads(platform, &board)?;

    note(&format!(
        "building hypervisor {} ({}, {})",
        board.hyp_bin, board.hyp_crate, board.hyp_target
    ));
    let hyp_target_dir = if variant.is_empty() {
        target_dir()
    } else {
        target_dir().join("variants").join(&variant)
    };
    let hyp_features: Vec<String> = features.iter().map(|f| format!("hyp-core/{f}")).collect();
    let hyp_features = hyp_features.join(",");
    let mut args = vec![
        "build",
        "--release",
        "-p",
        &board.hyp_crate,
        "--bin",
        &board.hyp_bin,
        "--target",
        &board.hyp_target,
    ];
    if !variant.is_empty() {
        args.extend(["--features", &hyp_features]);
    }
    run_checked(
        cargo(&args)
            .env("HYP_PAYLOAD_DIR", &payload_dir)
            .env("CARGO_TARGET_DIR", &hyp_target_dir),
    )?;
    let elf = hyp_target_dir
        .join(&board.hyp_target)
        .join("release")
        .join(&board.hyp_bin);
    let flat = flat::elf_to_flat(&read(&elf)?).map_err(|e| format!("{}: {e}", elf.display()))?;
    if flat.load_addr != board.load_address {
        note(&format!(
            "warning: the image's lowest physical address is {:#x}, board load_address is {:#x}",
            flat.load_addr, board.load_address
        ));
    }
    let ram_base = board
        .regions_of(board::RegionKind::Ram)
        .find(|r| r.base <= board.load_address && board.load_address < r.end())
        .map(|r| r.base)
        .ok_or_else(|| format!("load_address {:#x} is not in RAM", board.load_address))?;
    let expected = flat::Expected {
        load_address: board.load_address,
        ram_base,
        mem_size: flat.mem_end - flat.load_addr,
    };
    let header = flat::check_image_header(&flat.bytes, &expected)
        .map_err(|e| format!("{}: {e}", elf.display()))?;
    note(&format!(
        "arm64 Image header: text_offset {:#x}, image_size {:#x}, flags {:#x}",
        header.text_offset, header.image_size, header.flags
    ));
    let image_dir = if variant.is_empty() {
        target_dir().join("images").join(platform.dir())
    } else {
        target_dir()
            .join("images")
            .join(format!("{}-{variant}", platform.dir()))
    };
    let (image, qemu_kernel) = match platform {
        Platform::Qemu => {
            let image = image_dir.join("hypervisor.img");
            write(&image, &flat.bytes)?;
            (image.clone(), image)
        }
        Platform::Rpi4 => {
            let image = image_dir.join("kernel8.img");
            let elf_copy = image_dir.join("hyp-rpi4.elf");
            write(&image, &flat.bytes)?;
            write(&elf_copy, &read(&elf)?)?;
            write(&image_dir.join("config.txt"), RPI4_CONFIG.as_bytes())?;
            write(&image_dir.join("README.txt"), RPI4_README.as_bytes())?;
            (image, elf_copy)
        }
    };
    note(&format!(
        "image: {} ({} bytes, entry {:#x})",
        image.display(),
        flat.bytes.len(),
        flat.entry
    ));
    if platform == Platform::Rpi4 {
        note("SD card files (kernel8.img, config.txt, README.txt) and hyp-rpi4.elf for QEMU in:");
        println!("{}", image_dir.display());
    }
    Ok(Built {
        board,
        payload_dir,
        elf,
        image,
        qemu_kernel,
    })
}

/// Options of `run`.
struct RunOpts {
    smp: Option<u32>,
    gdb: bool,
    icount: bool,
    timeout: Option<u64>,
    append: Option<String>,
    features: Vec<String>,
    qemu_args: Vec<String>,
    /// An external guest kernel (`--guest`).
    guest: Option<linux::GuestOpts>,
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// `--disk` and `--net` are PCI devices behind QEMU virt's SMMU: no other
/// board has them (raspi4b has no PCIe and no SMMU).
fn pci_devices_on(platform: Platform, disk: bool, net: bool) -> Result<()> {
    if platform != Platform::Qemu && disk {
        return Err(format!(
            "--disk needs --platform qemu (the host's virtio-blk PCI device is QEMU's), not {}",
            platform.dir()
        ));
    }
    if platform != Platform::Qemu && net {
        return Err(format!(
            "--net needs --platform qemu (the host's virtio-net PCI device is QEMU's), not {}",
            platform.dir()
        ));
    }
    Ok(())
}

fn run(platform: Platform, opts: RunOpts) -> Result<u8> {
    if let Some(g) = &opts.guest {
        pci_devices_on(platform, g.disk.is_some(), g.net.is_some())?;
    }
    // --smp: QEMU's -smp, or on raspi4b (always 4 cores) the hypervisor's
    // hyp.cpus=N before the user's own boot words.
    let (smp, cpus_word) = match opts.smp {
        Some(n) => linux_cpus(platform, n)?,
        None => (None, None),
    };
    let host_words = match (cpus_word, &opts.append) {
        (Some(w), Some(a)) => Some(format!("{w} {a}")),
        (w, a) => w.or_else(|| a.clone()),
    };
    // The guest first: a bad --guest is an error before anything is built.
    let prepared = match &opts.guest {
        Some(g) => Some(linux::prepare(g, host_words.as_deref())?),
        None => None,
    };
    let built = build_variant(platform, &opts.features)?;
    provision::qemu()?;
    let mut args = built.board.qemu_args(&built.qemu_kernel, smp);
    let append = match prepared {
        Some(p) => {
            args.extend(p.qemu_args);
            Some(p.bootargs)
        }
        None => host_words,
    };
    if let Some(append) = &append {
        args.extend(["-append".to_owned(), append.clone()]);
    }
    if opts.icount {
        args.extend(["-icount".to_owned(), "shift=0".to_owned()]);
    }
    if opts.gdb {
        args.extend(["-s".to_owned(), "-S".to_owned()]);
    }
    args.extend(opts.qemu_args.iter().cloned());
    let timeout = opts.timeout.unwrap_or(if opts.gdb { 0 } else { 120 });
    let mut cmd = Command::new(provision::QEMU);
    cmd.args(&args);
    note(&format!("$ {}", show(&cmd)));
    if opts.gdb {
        note(&format!(
            "QEMU waits for gdb; attach with: gdb-multiarch {} -ex 'target remote :1234'",
            built.elf.display()
        ));
    }
    note(
        if timeout == 0 {
            "serial on this terminal; quit QEMU with Ctrl-A X".to_owned()
        } else {
            format!("serial on this terminal; quit QEMU with Ctrl-A X (timeout {timeout} s)")
        }
        .as_str(),
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))?;
    let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout));
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
        {
            let code = exit_code(status);
            note(&format!("QEMU exited with status {code}"));
            return Ok(code);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // SIGTERM first: QEMU then restores the terminal it put in raw mode.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let grace = Instant::now() + Duration::from_secs(3);
            while Instant::now() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!();
            note(&format!(
                "timeout after {timeout} s: QEMU did not power off"
            ));
            return Ok(124);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Package names of the workspace default-members (root Cargo.toml).
fn default_members() -> Result<Vec<String>> {
    fn toml_at(path: &Path) -> Result<toml::Table> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.parse::<toml::Table>()
            .map_err(|e| format!("{}: {e}", path.display()))
    }
    let manifest = toml_at(&root().join("Cargo.toml"))?;
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("default-members"))
        .and_then(|m| m.as_array())
        .ok_or("Cargo.toml has no workspace.default-members")?;
    let mut names = Vec::new();
    for m in members {
        let dir = m
            .as_str()
            .ok_or("workspace.default-members holds a non-string")?;
        let path = root().join(dir).join("Cargo.toml");
        let name = toml_at(&path)?
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no package.name", path.display()))?;
        names.push(name);
    }
    Ok(names)
}

fn test() -> Result<()> {
    let started = Instant::now();
    let mut done: Vec<(String, Duration)> = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        note(&format!("==> step {}: {name}", done.len() + 1));
        let t = Instant::now();
        match f() {
            Ok(()) => {
                done.push((name.to_owned(), t.elapsed()));
                Ok(())
            }
            Err(e) => {
                eprintln!();
                note("summary:");
                for (n, d) in &done {
                    note(&format!("  ok     {n} ({:.1} s)", d.as_secs_f64()));
                }
                note(&format!("  FAILED {name}"));
                Err(format!("step `{name}` failed: {e}"))
            }
        }
    };
    let (board, board_dir) = load_board(Platform::Qemu)?;
    step("provision (Rust targets, QEMU)", &mut || {
        let mut targets = vec![board.hyp_target.as_str(), board.guest_target.as_str()];
        targets.push("aarch64-unknown-none");
        provision::targets(&targets)?;
        provision::qemu()
    })?;
    step("cargo fmt --all --check", &mut || {
        run_checked(&mut cargo(&["fmt", "--all", "--check"]))
    })?;
    step("clippy (host crates)", &mut || {
        let mut args = vec!["clippy".to_owned(), "--all-targets".to_owned()];
        for m in default_members()? {
            args.extend(["-p".to_owned(), m]);
        }
        args.extend(["-p", "hyp-tests", "--", "-D", "warnings"].map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_checked(&mut cargo(&args))
    })?;
    let mut built = None;
    step("build the qemu image", &mut || {
        built = Some(build(Platform::Qemu)?);
        Ok(())
    })?;
    let built = built.ok_or("the qemu image was not built")?;
    // The demo's negative test boots an image whose isolation is broken on
    // purpose (hyp-core feature test-leak-one-page), kept apart from the
    // normal image.
    let mut built_leak = None;
    step("build the qemu image with test-leak-one-page", &mut || {
        built_leak = Some(build_variant(
            Platform::Qemu,
            &["test-leak-one-page".to_owned()],
        )?);
        Ok(())
    })?;
    let built_leak = built_leak.ok_or("the leaky qemu image was not built")?;
    let mut built_rpi4 = None;
    step("build the rpi4 image", &mut || {
        built_rpi4 = Some(build(Platform::Rpi4)?);
        Ok(())
    })?;
    let built_rpi4 = built_rpi4.ok_or("the rpi4 image was not built")?;
    step("clippy (hypervisor, bare metal)", &mut || {
        for b in [&built, &built_rpi4] {
            run_checked(
                cargo(&[
                    "clippy",
                    "--release",
                    "-p",
                    &b.board.hyp_crate,
                    "--target",
                    &b.board.hyp_target,
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("HYP_PAYLOAD_DIR", &b.payload_dir),
            )?;
        }
        Ok(())
    })?;
    step("clippy (guests, bare metal)", &mut || {
        let mut args = vec!["clippy", "--release"];
        for g in &board.guests {
            args.extend(["-p", g.as_str()]);
        }
        args.extend([
            "--target",
            board.guest_target.as_str(),
            "--",
            "-D",
            "warnings",
        ]);
        run_checked(&mut cargo(&args))?;
        run_checked(&mut cargo(&[
            "clippy",
            "--release",
            "-p",
            "guest-rt",
            "--target",
            "aarch64-unknown-none",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("cargo test (host crates)", &mut || {
        run_checked(&mut cargo(&["test"]))
    })?;
    // Each production barrier path's counts (0 needless, 0 missing ISBs, 0
    // TLBIs under a wrong VMID), printed; and barriers' drop guards, which
    // stay in release builds, tested in one.
    step("barrier paths: per-path ISB/DSB/TLBI counts", &mut || {
        run_checked(&mut cargo(&[
            "test",
            "-p",
            "hyp-core",
            "--test",
            "barrier_paths",
            "--",
            "--nocapture",
        ]))
    })?;
    step("barriers in release (drop guards stay)", &mut || {
        run_checked(&mut cargo(&["test", "--release", "-p", "barriers"]))
    })?;
    let rpi4_dir = load_board(Platform::Rpi4)?.1;
    step(
        "QEMU integration tests (hyp-tests: virt and raspi4b)",
        &mut || {
            run_checked(
                cargo(&["test", "-p", "hyp-tests", "--", "--test-threads=2"])
                    .env("HYP_IMAGE_QEMU", &built.image)
                    .env("HYP_IMAGE_QEMU_LEAK", &built_leak.image)
                    .env("HYP_BOARD_DIR", &board_dir)
                    .env("HYP_IMAGE_RPI4", &built_rpi4.qemu_kernel)
                    .env("HYP_KERNEL8_RPI4", &built_rpi4.image)
                    .env("HYP_BOARD_DIR_RPI4", &rpi4_dir),
            )
        },
    )?;
    // The host attacks the hypervisor from every CPU with live VMs
    // (crates/host/src/fuzz.rs); the floors are the fuzzer's and these.
    step(
        "fuzz: 100,000 host calls with live VMs (seed 1)",
        &mut || {
            let report = fuzz::fuzz(100_000, 1)?;
            fuzz::check_floors(&report, 100_000)
        },
    )?;
    // The bench guest runs, reports every metric, and twice the same counts;
    // on raspi4b too (its 16-instruction counter tick, phased method). The
    // same runs are compared with the committed baseline: no exact metric
    // may grow by more than 2% (issue 21 item 5; `baseline.rs`).
    step(
        "guest bench under icount, twice: identical counts, within 2% of bench/baseline.json",
        &mut || baseline::check(Platform::Qemu, &bench::check_twice(Platform::Qemu)?),
    )?;
    step(
        "guest bench on raspi4b under icount, twice: identical counts, within 2% of bench/baseline.json",
        &mut || baseline::check(Platform::Rpi4, &bench::check_twice(Platform::Rpi4)?),
    )?;
    step(
        "insn-count QEMU plugin: the exact count between two markers of a known program",
        &mut insncount::self_check,
    )?;
    step(
        "profile of hvc_null (two traced boots): traced total matches the bench",
        &mut profile::check,
    )?;
    step(
        "Linux guest (Debian arm64 kernel + busybox initramfs + modules, 2 vCPUs): scripted check (also under -icount), the shell typed at and rebooted, a virtio disk read and written, a virtio network (DHCP, HTTP both ways), a protected VM through the firmware; on raspi4b the check and the shell (no PCIe there); the project's kernel (built from linux-source-6.12, or cached): the check (virt and raspi4b), the disk and the network, normal and protected, a protected VM's secret against memory dumps, a hostile host",
        &mut || {
            let g = linux::linux_guest(linux::KernelSource::Debian, 2, false, None, None)?;
            // The project's kernel (built, or cached in target/): the same
            // boot, disk and network tests with nothing to load.
            let own = linux::linux_guest(linux::KernelSource::Built, 2, false, None, None)?;
            // raspi4b: the same guest on 2 of its 4 cores (`hyp.cpus=2`).
            let (_, rpi4_words) = linux_cpus(Platform::Rpi4, 2)?;
            let rpi4 = g.prepare_with(rpi4_words.as_deref())?;
            let own_rpi4 = own.prepare_with(rpi4_words.as_deref())?;
            let disk = linux::make_test_disk()?;
            let big_disk = linux::make_big_disk()?;
            let (_, debugfs) = provision::e2fsprogs()?;
            let tested = run_checked(
                cargo(&[
                    "test",
                    "-p",
                    "hyp-tests",
                    "--test",
                    "linux_guest",
                    "--",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("HYP_IMAGE_QEMU", &built.image)
                .env("HYP_BOARD_DIR", &board_dir)
                .env("HYP_LINUX_APPEND", &g.prepared.bootargs)
                .env("HYP_LINUX_QEMU_ARGS", g.prepared.qemu_args.join("\n"))
                .env("HYP_IMAGE_RPI4", &built_rpi4.qemu_kernel)
                .env("HYP_BOARD_DIR_RPI4", &rpi4_dir)
                .env("HYP_LINUX_APPEND_RPI4", &rpi4.bootargs)
                .env("HYP_LINUX_QEMU_ARGS_RPI4", rpi4.qemu_args.join("\n"))
                .env("HYP_LINUX_VERSION", &g.kernel.version)
                .env("HYP_LINUX_BUILT_APPEND", &own.prepared.bootargs)
                .env(
                    "HYP_LINUX_BUILT_QEMU_ARGS",
                    own.prepared.qemu_args.join("\n"),
                )
                .env("HYP_LINUX_BUILT_APPEND_RPI4", &own_rpi4.bootargs)
                .env(
                    "HYP_LINUX_BUILT_QEMU_ARGS_RPI4",
                    own_rpi4.qemu_args.join("\n"),
                )
                .env("HYP_LINUX_DISK", &disk)
                // The devices as `--disk` and `--net user` give them (the
                // network test adds its own port forward).
                .env("HYP_LINUX_DISK_ARGS", linux::disk_qemu_args(&disk)?.join("\n"))
                .env("HYP_LINUX_NET_ARGS", linux::net_qemu_args("user")?.join("\n"))
                .env("HYP_LINUX_BIG_DISK", &big_disk)
                .env(
                    "HYP_LINUX_BIG_DISK_ARGS",
                    linux::disk_qemu_args(&big_disk)?.join("\n"),
                )
                .env("HYP_DEBUGFS", &debugfs),
            );
            match linux::read_disk_file(&disk, "/marker.txt") {
                Ok(m) => note(&format!(
                    "linux: {}: marker.txt: {:?}",
                    disk.display(),
                    String::from_utf8_lossy(&m)
                )),
                Err(e) => note(&format!("linux: no marker: {e}")),
            }
            tested
        },
    )?;
    // Figures, not a timed test: it prints ns/page and barrier counts for
    // s2mm and aarch64-paging doing the same work, and fails only if it cannot run.
    step("s2mm host benchmark (vs aarch64-paging)", &mut || {
        run_checked(&mut cargo(&[
            "run",
            "--release",
            "-p",
            "s2mm",
            "--example",
            "s2bench",
            "--",
            "--json",
            "target/bench/s2mm-host.json",
        ]))
    })?;
    eprintln!();
    note("summary:");
    for (n, d) in &done {
        note(&format!("  ok     {n} ({:.1} s)", d.as_secs_f64()));
    }
    note(&format!(
        "all {} steps passed in {:.1} s",
        done.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Options of `cargo xtask linux`.
struct LinuxOpts {
    platform: Platform,
    smp: u32,
    guest_smp: u32,
    icount: bool,
    protected: bool,
    timeout: u64,
    mem: Option<u64>,
    guest_append: Option<String>,
    guest_cmdline: Option<String>,
    disk: Option<PathBuf>,
    net: Option<String>,
    prepare_only: bool,
    kernel: Option<linux::KernelSource>,
}

/// How a run (`run --smp`, `linux --smp`) on `platform` gets `smp` host
/// CPUs: QEMU's `-smp`, and the hypervisor's own boot words. raspi4b always has its
/// board's cores (4), so fewer become `hyp.cpus=N` (the others park in WFI).
fn linux_cpus(platform: Platform, smp: u32) -> Result<(Option<u32>, Option<String>)> {
    match platform {
        Platform::Qemu => Ok((Some(smp), None)),
        Platform::Rpi4 => {
            let cores = load_board(platform)?.0.qemu.smp;
            match smp {
                0 => Err("--smp 0: at least one CPU".to_owned()),
                s if s > cores => Err(format!(
                    "--smp {s}: raspi4b has {cores} cores (fewer run with hyp.cpus=N)"
                )),
                s if s == cores => Ok((None, None)),
                s => Ok((None, Some(format!("hyp.cpus={s}")))),
            }
        }
    }
}

/// Prints what `prepare` gives: the loader arguments, then the boot arguments.
fn print_prepared(g: &linux::GuestOpts, host_extra: Option<&str>) -> Result<u8> {
    let p = linux::prepare(g, host_extra)?;
    println!("{}", p.qemu_args.join(" "));
    println!("{}", p.bootargs);
    Ok(0)
}

/// `cargo xtask linux`: fetch, build the initramfs, boot.
fn linux_cmd(o: LinuxOpts) -> Result<u8> {
    let LinuxOpts {
        platform,
        smp,
        guest_smp,
        icount,
        protected,
        timeout,
        mem,
        guest_append,
        guest_cmdline,
        disk,
        net,
        prepare_only,
        kernel,
    } = o;
    // The board first: what it cannot have fails before the fetch.
    pci_devices_on(platform, disk.is_some(), net.is_some())?;
    let (qemu_smp, host_words) = linux_cpus(platform, smp)?;
    let kernel = kernel.unwrap_or_else(|| {
        if protected && (disk.is_some() || net.is_some()) {
            note("linux: a protected VM with devices: the project's kernel (--kernel built), whose pKVM guest driver shares their buffers through a restricted DMA pool");
            linux::KernelSource::Built
        } else {
            linux::KernelSource::Debian
        }
    });
    let k = linux::kernel(kernel)?;
    if protected && !linux::pkvm_config(&k.config)?.0 {
        // Without the driver the kernel never shares a page: its devices
        // would read private memory the host cannot reach, and break.
        if disk.is_some() || net.is_some() {
            return Err(format!(
                "--protected with --disk or --net needs a kernel with the pKVM guest driver and restricted DMA pools (--kernel built): {} has no CONFIG_ARM_PKVM_GUEST, so its devices' buffers would stay private to it",
                k.version
            ));
        }
        note("linux: --protected: this kernel has no pKVM guest driver, so it will not use MEM_SHARE/MEM_UNSHARE; booting it in a protected VM anyway");
    }
    let guest = linux::GuestOpts {
        kernel: k.image,
        initrd: Some(k.initrd),
        append: guest_append,
        cmdline: guest_cmdline,
        load: None,
        smp: guest_smp,
        mem_mib: mem,
        protected,
        disk,
        net,
    };
    if prepare_only {
        return print_prepared(&guest, host_words.as_deref());
    }
    run(
        platform,
        RunOpts {
            smp: qemu_smp,
            gdb: false,
            icount,
            timeout: Some(timeout),
            append: host_words,
            features: Vec::new(),
            qemu_args: Vec::new(),
            guest: Some(guest),
        },
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build { platform, features } => {
            build_variant(platform, &feature_list(features.as_deref())).map(|_| 0)
        }
        Cmd::Run {
            platform,
            smp,
            gdb,
            icount,
            timeout,
            append,
            features,
            guest,
            initrd,
            guest_append,
            guest_cmdline,
            guest_load,
            guest_smp,
            guest_mem,
            protected,
            disk,
            net,
            prepare_only,
            qemu_args,
        } => {
            let guest = guest.map(|kernel| linux::GuestOpts {
                kernel,
                initrd,
                append: guest_append,
                cmdline: guest_cmdline,
                load: guest_load,
                smp: guest_smp,
                mem_mib: guest_mem,
                protected,
                disk,
                net,
            });
            match guest {
                Some(g) if prepare_only => print_prepared(&g, append.as_deref()),
                guest => run(
                    platform,
                    RunOpts {
                        smp,
                        gdb,
                        icount,
                        timeout,
                        append,
                        features: feature_list(features.as_deref()),
                        qemu_args,
                        guest,
                    },
                ),
            }
        }
        Cmd::Linux {
            platform,
            smp,
            guest_smp,
            icount,
            protected,
            timeout,
            mem,
            guest_append,
            guest_cmdline,
            disk,
            net,
            prepare_only,
            kernel,
        } => linux_cmd(LinuxOpts {
            platform,
            smp,
            guest_smp,
            icount,
            protected,
            timeout,
            mem,
            guest_append,
            guest_cmdline,
            disk,
            net,
            prepare_only,
            kernel,
        }),
        Cmd::Test => test().map(|_| 0),
        Cmd::Fuzz { calls, seed } => fuzz::fuzz(calls, seed).map(|_| 0),
        Cmd::Bench {
            linux_boot: true, ..
        } => bootbench::linux_boot().map(|()| 0),
        Cmd::Bench {
            linux_io: true,
            profile,
            protected,
            ..
        } => iobench::linux_io(profile.as_deref(), protected).map(|()| 0),
        Cmd::Bench {
            update_baseline: true,
            ..
        } => baseline::update().map(|()| 0),
        Cmd::Bench { platform, .. } => bench::bench(platform).map(|_| 0),
        Cmd::Profile {
            metric,
            iterations,
            blocks,
        } => profile::profile(&metric, iterations, blocks).map(|_| 0),
        Cmd::Size { platform } => {
            let all = [Platform::Qemu, Platform::Rpi4];
            bench::size(platform.as_ref().map_or(&all[..], std::slice::from_ref)).map(|_| 0)
        }
        Cmd::Coverage { krate, html } => coverage::coverage(krate, html).map(|_| 0),
        Cmd::Mutants {
            file,
            timeout,
            build_timeout,
        } => mutants::mutants(file.as_deref(), timeout, build_timeout),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            note(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system's temporary directory.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        dir
    }

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the directory");
        std::fs::write(path, text).expect("write the file");
    }

    #[test]
    fn find_root_walks_up_to_the_workspace_with_xtask() {
        let t = temp_dir("find-root");
        // An outer workspace without xtask/, the checkout inside it, and a
        // nested package manifest (no [workspace]) on the way up.
        put(&t.join("Cargo.toml"), "[workspace]\nmembers = []\n");
        let ws = t.join("copy");
        put(
            &ws.join("Cargo.toml"),
            "[workspace]\nmembers = [\"xtask\"]\n",
        );
        put(
            &ws.join("xtask/Cargo.toml"),
            "[package]\nname = \"xtask\"\n",
        );
        put(&ws.join("tests/Cargo.toml"), "[package]\nname = \"t\"\n");
        let deep = ws.join("tests/tests/sub");
        std::fs::create_dir_all(&deep).expect("create the directory");

        assert_eq!(find_root(&[&ws.join("xtask")]), Ok(ws.clone()));
        assert_eq!(find_root(&[&deep]), Ok(ws.clone()));
        assert_eq!(find_root(&[&ws]), Ok(ws.clone()));
        // The first start that finds one wins; one that finds none is skipped.
        let elsewhere = t.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("create the directory");
        assert_eq!(find_root(&[&elsewhere, &deep]), Ok(ws.clone()));

        // A `workspace` that is not a table does not count.
        let fake = t.join("fake");
        put(&fake.join("Cargo.toml"), "workspace = 1\n");
        put(
            &fake.join("xtask/Cargo.toml"),
            "[package]\nname = \"xtask\"\n",
        );
        let err = find_root(&[&fake.join("xtask")]).expect_err("no workspace root");
        assert!(err.contains("cannot find the workspace root"), "{err}");
        assert!(
            err.contains(&fake.join("xtask").display().to_string()),
            "{err}"
        );
        assert!(find_root(&[]).is_err());
        std::fs::remove_dir_all(&t).expect("remove the temporary directory");
    }

    #[test]
    fn guest_options_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["cargo xtask"], args].concat());
        let Ok(Cli {
            command:
                Cmd::Run {
                    guest_mem,
                    guest_load,
                    guest_cmdline,
                    guest_smp,
                    protected,
                    ..
                },
        }) = parse(&[
            "run",
            "--guest",
            "g",
            "--mem",
            "32",
            "--guest-load",
            "0x4020_0000",
            "--guest-cmdline",
            "a  b",
            "--guest-smp",
            "2",
            "--protected",
        ])
        else {
            panic!("run options rejected");
        };
        assert_eq!(guest_mem, Some(32));
        assert_eq!(guest_load, Some(0x4020_0000));
        assert_eq!(guest_cmdline.as_deref(), Some("a  b"));
        assert_eq!((guest_smp, protected), (2, true));
        for mem in ["--mem", "--guest-mem"] {
            let Ok(Cli {
                command:
                    Cmd::Linux {
                        mem,
                        guest_cmdline,
                        guest_smp,
                        protected,
                        kernel,
                        ..
                    },
            }) = parse(&[
                "linux",
                mem,
                "64",
                "--guest-cmdline",
                "x",
                "--guest-smp",
                "1",
                "--protected",
                "--kernel",
                "built",
            ])
            else {
                panic!("linux options rejected");
            };
            assert_eq!(kernel, Some(linux::KernelSource::Built));
            assert_eq!(mem, Some(64));
            assert_eq!(guest_cmdline.as_deref(), Some("x"));
            assert_eq!((guest_smp, protected), (1, true));
        }
        let conflict = [
            &[
                "run",
                "--guest",
                "g",
                "--guest-cmdline",
                "a",
                "--guest-append",
                "b",
            ][..],
            &["linux", "--guest-cmdline", "a", "--guest-append", "b"],
        ];
        for args in conflict {
            let e = parse(args)
                .err()
                .expect("--guest-cmdline with --guest-append");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
        }
        // The guest options need --guest.
        assert!(parse(&["run", "--guest-load", "0x40200000"]).is_err());
        assert!(parse(&["run", "--guest", "g", "--guest-load", "0x4020000g"]).is_err());
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert_eq!(parse_u64("0X10"), Ok(16));
    }

    #[test]
    fn disk_option_once_and_on_qemu_only() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["cargo xtask"], args].concat());
        let Ok(Cli {
            command: Cmd::Linux { disk, .. },
        }) = parse(&["linux", "--disk", "d.img"])
        else {
            panic!("linux --disk rejected");
        };
        assert_eq!(disk, Some(PathBuf::from("d.img")));
        let Ok(Cli {
            command: Cmd::Run { disk, .. },
        }) = parse(&["run", "--guest", "g", "--disk", "d.img"])
        else {
            panic!("run --disk rejected");
        };
        assert_eq!(disk, Some(PathBuf::from("d.img")));
        for args in [
            &["linux", "--disk", "a.img", "--disk", "b.img"][..],
            &["run", "--guest", "g", "--disk", "a.img", "--disk", "a.img"],
        ] {
            let e = parse(args).err().expect("two disks");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
        }
        // --disk is for a --guest.
        assert!(parse(&["run", "--disk", "d.img"]).is_err());
        // Not on the Raspberry Pi: refused before anything is built.
        let e = run(
            Platform::Rpi4,
            RunOpts {
                smp: None,
                gdb: false,
                icount: false,
                timeout: None,
                append: None,
                features: Vec::new(),
                qemu_args: Vec::new(),
                guest: Some(linux::GuestOpts {
                    kernel: PathBuf::from("k"),
                    initrd: None,
                    append: None,
                    cmdline: None,
                    load: None,
                    smp: 1,
                    mem_mib: None,
                    protected: false,
                    disk: Some(PathBuf::from("d.img")),
                    net: None,
                }),
            },
        )
        .expect_err("--disk on rpi4");
        assert!(e.contains("--disk needs --platform qemu"), "{e}");
    }

    #[test]
    fn net_option_once_checked_and_on_qemu_only() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["cargo xtask"], args].concat());
        let spec = "user,hostfwd=tcp:127.0.0.1:18080-:8080";
        let Ok(Cli {
            command: Cmd::Linux { net, .. },
        }) = parse(&["linux", "--net", spec])
        else {
            panic!("linux --net rejected");
        };
        assert_eq!(net.as_deref(), Some(spec));
        let Ok(Cli {
            command: Cmd::Run { net, .. },
        }) = parse(&["run", "--guest", "g", "--net", "user"])
        else {
            panic!("run --net rejected");
        };
        assert_eq!(net.as_deref(), Some("user"));
        let e = parse(&["linux", "--net", "user", "--net", "user"])
            .err()
            .expect("two networks");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        // --net is for a --guest.
        assert!(parse(&["run", "--net", "user"]).is_err());
        let guest = |net: &str| linux::GuestOpts {
            kernel: PathBuf::from("k"),
            initrd: None,
            append: None,
            cmdline: None,
            load: None,
            smp: 1,
            mem_mib: None,
            protected: false,
            disk: None,
            net: Some(net.to_owned()),
        };
        let opts = |net: &str| RunOpts {
            smp: None,
            gdb: false,
            icount: false,
            timeout: None,
            append: None,
            features: Vec::new(),
            qemu_args: Vec::new(),
            guest: Some(guest(net)),
        };
        let e = run(Platform::Rpi4, opts("user")).expect_err("--net on rpi4");
        assert!(e.contains("--net needs --platform qemu"), "{e}");
        // A bad SPEC is an error before anything is read or built (the
        // kernel "k" does not exist).
        let e = linux::prepare(&guest("user,hostfwd=tcp:0.0.0.0:1-:2"), None).expect_err("bad");
        assert!(e.contains("must be 127.0.0.1"), "{e}");
    }

    #[test]
    fn linux_on_raspi4b_keeps_its_cores_and_has_no_pci_devices() {
        // virt: QEMU's -smp, no hypervisor words.
        assert_eq!(linux_cpus(Platform::Qemu, 2), Ok((Some(2), None)));
        // raspi4b's 4 cores stay; fewer are the hypervisor's hyp.cpus=N.
        assert_eq!(
            linux_cpus(Platform::Rpi4, 2),
            Ok((None, Some("hyp.cpus=2".to_owned())))
        );
        assert_eq!(linux_cpus(Platform::Rpi4, 4), Ok((None, None)));
        for bad in [0, 5] {
            assert!(linux_cpus(Platform::Rpi4, bad).is_err(), "--smp {bad}");
        }
        let parse = |args: &[&str]| Cli::try_parse_from([&["cargo xtask"], args].concat());
        let Ok(Cli {
            command: Cmd::Linux { platform, .. },
        }) = parse(&["linux", "--platform", "rpi4"])
        else {
            panic!("linux --platform rpi4 rejected");
        };
        assert_eq!(platform, Platform::Rpi4);
        assert!(pci_devices_on(Platform::Qemu, true, true).is_ok());
        let e = pci_devices_on(Platform::Rpi4, true, false).expect_err("disk");
        assert!(e.contains("--disk needs --platform qemu"), "{e}");
        let e = pci_devices_on(Platform::Rpi4, false, true).expect_err("net");
        assert!(e.contains("--net needs --platform qemu"), "{e}");
        // Refused before anything is fetched or built.
        let o = |disk: Option<&str>| LinuxOpts {
            platform: Platform::Rpi4,
            smp: 2,
            guest_smp: 2,
            icount: false,
            protected: false,
            timeout: 1,
            mem: None,
            guest_append: None,
            guest_cmdline: None,
            disk: disk.map(PathBuf::from),
            net: None,
            prepare_only: true,
            kernel: Some(linux::KernelSource::Built),
        };
        let e = linux_cmd(o(Some("d.img"))).expect_err("--disk on rpi4");
        assert!(e.contains("--disk needs --platform qemu"), "{e}");
    }

    #[test]
    fn root_is_this_checkout() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(Some(root()), here.parent());
    }
}
