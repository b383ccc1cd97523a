//! `cargo xtask bench --linux-boot`: issue 21's `linux_boot_ratio`, what
//! the hypervisor costs a Linux boot, in exact instructions.
//!
//! The kernel `cargo xtask linux` boots by default (Debian's) and its
//! initramfs boot twice, on one CPU with one vCPU under
//! `-icount shift=0,sleep=off`: as `cargo xtask linux` runs it (the
//! hypervisor, the host, the guest), and directly on QEMU `virt` (its own
//! device tree). /init executes marker 7 (`/bin/hyp-mark 7`) as it starts;
//! the `insn-count` plugin's count at that marker is every instruction since
//! QEMU's power-on. The ratio of the two counts is `linux_boot_ratio` (goal
//! <= 1.05). Through the hypervisor the host also says when vCPU 0 started
//! (`host: linux: vCPU 0 starts at counter N`; under icount on one CPU the
//! counter is the instruction count), which splits the figure into what
//! comes before the guest's first instruction and the guest's boot itself.
//! Results: the terminal and `target/bench/linux-boot.json`. One CPU: QEMU
//! 10.0 crashes in translated code with the plugin, `-icount` and a second
//! CPU.

use std::path::Path;

use crate::iobench::Session;
use crate::{build_variant, insncount, linux, note, provision, target_dir, Platform, Result};

/// The marker /init executes first (`hyp-mark 7`).
pub const INIT_MARK: u32 = 7;

/// Boots `args` until /init's marker, then stops QEMU; the count at the
/// marker, and the host's vCPU-start counter if it printed one.
fn boot(what: &str, args: &[String], counts: &Path) -> Result<(u64, Option<u64>)> {
    let _ = std::fs::remove_file(counts);
    let mut s = Session::start(&format!("linux-boot: {what}"), args)?;
    let before = s.until("LINUX-GUEST-INIT-OK")?;
    drop(s);
    let start = before.iter().find_map(|l| {
        l.strip_prefix("host: linux: vCPU 0 starts at counter ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let m = insncount::read(counts)?;
    let at = m.at.get(&INIT_MARK).ok_or_else(|| {
        format!("linux-boot: {what}: /init's marker {INIT_MARK} was never counted")
    })?;
    Ok((at.total(), start))
}

/// `cargo xtask bench --linux-boot`.
pub fn linux_boot() -> Result<()> {
    let k = linux::kernel(linux::KernelSource::Debian)?;
    let plugin = insncount::plugin()?;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let prepared = linux::prepare(&k.guest(1), None)?;
    let built = build_variant(Platform::Qemu, &[])?;
    provision::qemu()?;
    let icount = ["-icount".to_owned(), "shift=0,sleep=off".to_owned()];
    let hyp_counts = dir.join("linux-boot-hyp.counts");
    let direct_counts = dir.join("linux-boot-direct.counts");
    let mut hyp = built.board.qemu_args(&built.qemu_kernel, Some(1));
    hyp.extend(icount.iter().cloned());
    hyp.extend(insncount::qemu_args(&plugin, &hyp_counts, None));
    hyp.extend(prepared.qemu_args.iter().cloned());
    hyp.extend(["-append".to_owned(), prepared.bootargs.clone()]);
    let cmdline = prepared
        .bootargs
        .split_once(" -- ")
        .map_or(linux::BASE_CMDLINE, |(_, c)| c);
    let direct = crate::iobench::bare_virt(
        &prepared.kernel_file,
        &k.initrd,
        cmdline,
        &direct_counts,
        None,
    )?;
    let (with, start) = boot("through the hypervisor", &hyp, &hyp_counts)?;
    let (bare, _) = boot("directly on QEMU", &direct, &direct_counts)?;
    let ratio = with as f64 / bare as f64;
    println!();
    println!(
        "Linux boot to /init in exact instructions (insn-count plugin; 1 CPU, 1 vCPU, -icount shift=0,sleep=off; {})",
        k.version
    );
    println!(
        "{:<44} {:>15}",
        "through the hypervisor, from power-on", with
    );
    if let Some(s) = start {
        println!(
            "{:<44} {:>15}",
            "  of which before vCPU 0's first instruction", s
        );
        println!(
            "{:<44} {:>15}",
            "  from vCPU 0's first instruction",
            with.saturating_sub(s)
        );
    }
    println!("{:<44} {:>15}", "directly on QEMU, from power-on", bare);
    println!("linux_boot_ratio {ratio:.3} (goal <= 1.05)");
    if let Some(s) = start {
        println!(
            "  from the kernel's first instruction: {:.3}",
            with.saturating_sub(s) as f64 / bare as f64
        );
    }
    let json = format!(
        "{{\"hyp\": {with}, \"vcpu0_start\": {}, \"direct\": {bare}, \"linux_boot_ratio\": {ratio:.4}}}\n",
        start.map_or("null".to_owned(), |s| s.to_string())
    );
    let out = dir.join("linux-boot.json");
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    note(&format!("linux-boot: written {}", out.display()));
    Ok(())
}
