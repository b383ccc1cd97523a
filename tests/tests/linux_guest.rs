//! Debian's arm64 Linux kernel as a guest of the host VM (issue #9): 2 vCPUs
//! brought up with PSCI, the vGIC and the virtual timer, the emulated PL011
//! as its console, an initramfs whose /init prints a marker, and then either
//! (with `hyp.init=check` on the kernel's command line) runs a few commands
//! and powers off, or starts the interactive shell `cargo xtask linux` ends
//! in, which the second test types at.
//!
//! /init first loads the initramfs's kernel modules (virtio_mmio,
//! virtio_blk, virtio_net, ext4 and their dependencies) and says so.
//!
//! Needs the kernel and initramfs that `cargo xtask test` fetches and builds
//! in its own step (which sets `HYP_LINUX_APPEND`, the hypervisor's boot
//! arguments, and `HYP_LINUX_QEMU_ARGS`, the loader devices, one per line),
//! so it is `#[ignore]`d in the general integration-test step.
//!
//! The third boots with a disk (`HYP_LINUX_DISK`, an ext4 image the step
//! makes fresh with hello.txt and hello.sha256; `HYP_DEBUGFS`, e2fsprogs'
//! debugfs, reads it back afterwards): QEMU's virtio-blk PCI device behind
//! the SMMU, which the host drives and serves to the guest as a virtio-mmio
//! disk, checked by /init under `hyp.init=disk`.
//!
//! Linux's console lines come tagged `[vm1] ` by the hypervisor.

use std::process::Command;
use std::time::{Duration, Instant};

use hyp_tests::{env_path, BootOptions, Qemu};

/// Generous bound for a TCG boot (about 20 s on the 2-core CI machine).
const T: Duration = Duration::from_secs(120);

fn env(name: &str) -> String {
    env_path(name).to_string_lossy().into_owned()
}

/// The per-CPU counts of the `/proc/interrupts` line, e.g.
/// ` 11:        512        301     GICv3  27 Level     arch_timer`.
fn counts(line: &str, cpus: usize) -> Vec<u64> {
    line.split_whitespace()
        .skip(1)
        .take(cpus)
        .map(|c| c.parse().unwrap_or(0))
        .collect()
}

#[test]
#[ignore = "needs the Debian kernel: run by `cargo xtask test` (its Linux step)"]
fn debian_linux_boots_on_two_vcpus() {
    // The guest's command line is last (after ` -- `): the word selects
    // /init's scripted check.
    let append = format!("{} hyp.init=check", env("HYP_LINUX_APPEND"));
    let extra: Vec<String> = env("HYP_LINUX_QEMU_ARGS")
        .lines()
        .map(str::to_owned)
        .collect();
    let start = Instant::now();
    let mut q = Qemu::boot(BootOptions {
        append: Some(append),
        smp: Some(2),
        extra,
        ..BootOptions::default()
    });
    q.expect_line("host: VM 1 (linux): 2 vCPUs, 256 MiB at IPA 0x40000000", T);
    let banner = q.expect_line("Linux version ", T);
    assert!(
        banner.contains("Linux version 6.") && banner.contains("Debian"),
        "unexpected banner: {banner}"
    );
    q.expect_line("psci: PSCIv1.1 detected in firmware.", T);
    q.expect_line(
        "GICv3: CPU0: found redistributor 0 region 0:0x00000000080a0000",
        T,
    );
    q.expect_line("arch_timer: cp15 timer(s) running at", T);
    q.expect_line(
        "GICv3: CPU1: found redistributor 1 region 0:0x00000000080c0000",
        T,
    );
    q.expect_line("smp: Brought up 1 node, 2 CPUs", T);
    q.expect_line("ttyAMA0 at MMIO 0x9000000", T);
    q.expect_guest(1, "LINUX-GUEST-INIT-OK", T);
    eprintln!(
        "linux_guest: init marker after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    expect_modules_loaded(&mut q);
    eprintln!(
        "linux_guest: modules loaded after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let uname = q.expect_line("Linux ", T);
    assert!(uname.contains("aarch64"), "uname -a: {uname}");
    q.expect_guest(1, "cpus online: 0-1", T);
    q.expect_guest_matching(1, "the CPU0 CPU1 header", T, |l| {
        l.split_whitespace().collect::<Vec<_>>() == ["CPU0", "CPU1"]
    });
    // The text without the `[vm1] ` tag.
    let timer = q.expect_guest_line(1, "arch_timer", T);
    let c = counts(&timer, 2);
    assert!(
        c.len() == 2 && c.iter().all(|&n| n > 0),
        "the timer interrupt must count on both CPUs: {timer:?}\n{}",
        q.log().join("\n")
    );
    eprintln!("linux_guest: {timer}");
    q.expect_guest(1, "LINUX-GUEST-DONE", T);
    q.expect_line("host: VM 1 (linux) powered off", T);
    assert_eq!(q.expect_exit(T), 0);
    eprintln!(
        "linux_guest: powered off after {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Prints the boot count the host put in the device tree (a string
/// property: its NUL goes).
const BOOT_COUNT: &str =
    "echo boot-count=$(tr -d '\\000' < /proc/device-tree/chosen/hyp,boot-count)\n";

/// Issue 18 item 5: what is typed on the hypervisor's console reaches the
/// Linux shell through the emulated PL011's receive interrupt (Linux's
/// amba-pl011 driver), and `reboot -f` (PSCI SYSTEM_RESET) restarts the
/// normal VM, which boots again (boot 2 in its device tree) with the console.
#[test]
#[ignore = "needs the Debian kernel: run by `cargo xtask test` (its Linux step)"]
fn linux_shell_reads_the_console_and_reboot_restarts_the_vm() {
    let extra: Vec<String> = env("HYP_LINUX_QEMU_ARGS")
        .lines()
        .map(str::to_owned)
        .collect();
    let mut q = Qemu::boot(BootOptions {
        append: Some(env("HYP_LINUX_APPEND")),
        smp: Some(2),
        extra,
        ..BootOptions::default()
    });
    q.expect_exact("hyp: console input goes to VM 1", T);
    q.expect_guest_line(1, "LINUX-GUEST-SHELL: busybox sh on ttyAMA0", T);
    // The shell echoes what it reads; only the evaluated line says 42.
    q.send("echo typed-$((6*7))-back\n");
    q.expect_guest(1, "typed-42-back", T);
    // The PL011's interrupt counted: the driver was told of the input.
    q.send("grep -c uart-pl011 /proc/interrupts; grep uart-pl011 /proc/interrupts\n");
    let irq = q.expect_guest_matching(1, "the pl011 line of /proc/interrupts", T, |l| {
        l.contains("uart-pl011") && !l.contains("grep")
    });
    let c = counts(&irq, 2);
    assert!(
        c.iter().sum::<u64>() > 0,
        "the PL011 interrupt must have been taken: {irq:?}"
    );
    q.send(BOOT_COUNT);
    q.expect_guest(1, "boot-count=1", T);

    q.send("reboot -f\n");
    q.expect_exact("host: VM 1 (linux) reset: restarting it (boot 2)", T);
    q.expect_guest_line(1, "LINUX-GUEST-SHELL: busybox sh on ttyAMA0", T);
    q.send(BOOT_COUNT);
    q.expect_guest(1, "boot-count=2", T);
    q.send("poweroff -f\n");
    q.expect_line("host: VM 1 (linux) powered off", T);
    assert_eq!(q.expect_exit(T), 0);
}

/// The modules /init loads (tests/../xtask/src/kmods.rs ROOT_MODULES and
/// their dependencies); the line lists them in load order.
fn expect_modules_loaded(q: &mut Qemu) {
    let line = q.expect_guest_line(1, "LINUX-GUEST-MODULES:", T);
    assert!(
        line.starts_with("LINUX-GUEST-MODULES: loaded "),
        "a module failed to load: {line}"
    );
    let names: Vec<&str> = line.split_whitespace().skip(2).collect();
    for m in ["virtio_mmio", "virtio_blk", "virtio_net", "jbd2", "ext4"] {
        assert!(names.contains(&m), "{m} not loaded: {line}");
    }
    let at = |m: &str| names.iter().position(|n| *n == m);
    assert!(at("jbd2") < at("ext4"), "dependencies first: {line}");
}

/// Issue 18 item 6: a disk. The guest mounts /dev/vda (ext4), checks
/// hello.txt against hello.sha256, writes marker.txt with its boot count,
/// unmounts and powers off; the marker is then read out of the image.
#[test]
#[ignore = "needs the Debian kernel and a disk image: run by `cargo xtask test` (its Linux step)"]
fn linux_reads_and_writes_a_virtio_disk() {
    let disk = env("HYP_LINUX_DISK");
    let append = format!("{} hyp.init=disk", env("HYP_LINUX_APPEND"));
    let mut extra: Vec<String> = env("HYP_LINUX_QEMU_ARGS")
        .lines()
        .map(str::to_owned)
        .collect();
    extra.extend([
        "-drive".to_owned(),
        format!("file={disk},if=none,format=raw,id=disk0"),
        "-device".to_owned(),
        "virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on".to_owned(),
    ]);
    let start = Instant::now();
    let mut q = Qemu::boot(BootOptions {
        append: Some(append),
        smp: Some(2),
        extra,
        ..BootOptions::default()
    });
    q.expect_line("host: VM 1 (linux): 2 vCPUs, 256 MiB at IPA 0x40000000", T);
    q.expect_guest(1, "LINUX-GUEST-INIT-OK", T);
    expect_modules_loaded(&mut q);
    let verdict = q.expect_guest_line(1, "LINUX-DISK:", T);
    assert_eq!(
        verdict,
        "LINUX-DISK: hello.txt OK",
        "the guest's disk check failed\n--- captured output ---\n{}",
        q.log().join("\n")
    );
    q.expect_guest(1, "LINUX-DISK-DONE", T);
    q.expect_line("host: VM 1 (linux) powered off", T);
    assert_eq!(q.expect_exit(T), 0);
    eprintln!(
        "linux_guest: disk checked and written in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // What the guest wrote, read out of the image (debugfs, no mount).
    let out = Command::new(env("HYP_DEBUGFS"))
        .args(["-R", "cat /marker.txt", &disk])
        .output()
        .expect("run debugfs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written by the guest at boot 1\n",
        "marker.txt; debugfs said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn interrupt_counts_parse() {
    let l = " 11:        512        301     GICv3  27 Level     arch_timer";
    assert_eq!(counts(l, 2), [512, 301]);
}
