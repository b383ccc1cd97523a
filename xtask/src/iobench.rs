//! `cargo xtask bench --linux-blk`: what the hypervisor costs a Linux guest's disk
//! reads (issue 18's numbers), in exact instructions.
//!
//! The same Debian kernel and initramfs read the same 64 MiB raw disk twice, both
//! under `-icount shift=0` on one CPU (the counter runs at 1 GHz and advances one
//! tick per instruction, so the guest's clock counts every instruction the CPU
//! executes: the guest's, the host VM's that serves its device, the hypervisor's):
//! - through the hypervisor: QEMU's virtio-blk-pci behind the SMMU, driven by the
//!   host VM and served to the guest as virtio-mmio (`--disk`);
//! - directly: QEMU `virt` without the hypervisor, the kernel on QEMU's own
//!   virtio-mmio block device (`virtio-blk-device`).
//!
//! Virtual time under icount is instructions executed plus the stretches the
//! clock skips while every CPU waits (`sleep=off`): QEMU completes block I/O in
//! real time, so a request's wait shows up as a skip whose length depends on the
//! timer deadline it lands before. The figures are therefore not exact
//! instruction counts; each path runs [`RUNS`] times and the spread is printed.
//!
//! In each, the shell `/init` starts is typed at: `dd if=/dev/vda of=/dev/null bs=4096
//! count=N iflag=direct` (O_DIRECT: one 4 KiB request each, no readahead) between two
//! reads of `/proc/uptime` (10 ms resolution; the transfer takes seconds). One CPU,
//! so "summed over all physical CPUs" is that CPU. Results go to the terminal and to
//! `target/bench/linux-blk.json`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{build_variant, linux, note, provision, target_dir, Platform, Result};

/// Requests of 4 KiB each: 64 MiB.
const REQUESTS: u64 = 16384;
/// The disk: a little more than what is read.
const DISK_BYTES: u64 = 80 << 20;
/// Boots per path.
const RUNS: usize = 3;
/// The whole run's bound, per boot.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// One boot's result: instructions for all the requests.
struct Run {
    instructions: u64,
}

/// Runs `qemu` with `args`, waits for the shell, types the measurement and
/// returns the instructions it took.
fn measure(what: &str, args: &[String]) -> Result<Run> {
    note(&format!("linux-blk: {what}: booting"));
    let mut child = Command::new(provision::QEMU)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))?;
    let mut stdin = child.stdin.take().ok_or("QEMU has no stdin")?;
    let stdout = child.stdout.take().ok_or("QEMU has no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + BOOT_LIMIT;
    let mut log = Vec::new();
    let next = |log: &mut Vec<String>| -> Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                log.push(l.clone());
                Ok(l)
            }
            Err(_) => Err(format!(
                "linux-blk: {what}: no more output (QEMU exited or {} s passed); last lines:\n{}",
                BOOT_LIMIT.as_secs(),
                log[log.len().saturating_sub(20)..].join("\n")
            )),
        }
    };
    let result = (|| -> Result<Run> {
        while !next(&mut log)?.contains("LINUX-GUEST-SHELL:") {}
        let cmd = format!(
            "cat /proc/uptime; dd if=/dev/vda of=/dev/null bs=4096 count={REQUESTS} iflag=direct; cat /proc/uptime; echo BLK-BENCH-DONE\n"
        );
        stdin
            .write_all(cmd.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("typing at the guest: {e}"))?;
        let mut uptimes = Vec::new();
        let mut read_all = false;
        loop {
            let l = next(&mut log)?;
            // Lines of the guest come tagged `[vm1] ` under the hypervisor.
            let text = l.strip_prefix("[vm1] ").unwrap_or(&l).trim();
            if text == "BLK-BENCH-DONE" {
                break;
            }
            if text.starts_with(&format!("{REQUESTS}+0 records in")) {
                read_all = true;
            }
            if text.starts_with("dd:") || text.contains(" copied") {
                note(&format!("linux-blk: {what}: {text}"));
            }
            let words: Vec<&str> = text.split_whitespace().collect();
            if words.len() == 2 && words.iter().all(|w| w.parse::<f64>().is_ok()) {
                uptimes.push(words[0].parse::<f64>().unwrap_or(0.0));
            }
        }
        if !read_all {
            return Err(format!(
                "linux-blk: {what}: dd did not read {REQUESTS} blocks:\n{}",
                log[log.len().saturating_sub(20)..].join("\n")
            ));
        }
        let [t0, t1] = uptimes[..] else {
            return Err(format!(
                "linux-blk: {what}: expected two /proc/uptime lines, got {uptimes:?}:\n{}",
                log.join("\n")
            ));
        };
        Ok(Run {
            instructions: ((t1 - t0) * 1e9).round() as u64,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Makes the disk: `DISK_BYTES` of a repeating pattern (not sparse zeros, so
/// both paths really move data).
fn disk(path: &Path) -> Result<()> {
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for _ in 0..DISK_BYTES >> 20 {
        f.write_all(&block)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The bench: both boots, the table and the JSON.
pub fn linux_blk() -> Result<()> {
    let fetched = linux::fetch()?;
    let initrd = linux::initramfs(&fetched)?;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let img = dir.join("linux-blk-disk.img");
    disk(&img)?;
    let guest = linux::GuestOpts {
        kernel: fetched.kernel.clone(),
        initrd: Some(initrd.clone()),
        append: None,
        cmdline: None,
        load: None,
        smp: 1,
        mem_mib: None,
        protected: false,
        disk: Some(img.clone()),
        net: None,
    };
    let prepared = linux::prepare(&guest, None)?;
    let built = build_variant(Platform::Qemu, &[])?;
    provision::qemu()?;
    let mut hyp = built.board.qemu_args(&built.qemu_kernel, Some(1));
    hyp.extend(["-icount".to_owned(), "shift=0,sleep=off".to_owned()]);
    hyp.extend(prepared.qemu_args.iter().cloned());
    hyp.extend(["-append".to_owned(), prepared.bootargs.clone()]);
    // The unpacked kernel `prepare` wrote, booted by QEMU itself.
    let kernel = target_dir().join("guest").join("kernel.bin");
    let cmdline = prepared
        .bootargs
        .split_once(" -- ")
        .map_or(linux::BASE_CMDLINE, |(_, c)| c);
    let direct_args: Vec<String> = [
        "-M",
        "virt",
        "-cpu",
        "max",
        "-m",
        "1G",
        "-smp",
        "1",
        "-nographic",
        "-icount",
        "shift=0,sleep=off",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        "-kernel".to_owned(),
        kernel.display().to_string(),
        "-initrd".to_owned(),
        initrd.display().to_string(),
        "-append".to_owned(),
        cmdline.to_owned(),
        "-drive".to_owned(),
        format!("file={},if=none,format=raw,id=d0", img.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=d0".to_owned(),
    ])
    .collect();
    // Each path RUNS times: the figures are virtual time, which is exact for
    // the instructions executed but also holds the idle stretches the clock
    // skips over while QEMU completes I/O in real time (see the module
    // documentation), so runs differ; the spread is shown, not hidden.
    let mut with = Vec::new();
    let mut direct = Vec::new();
    for i in 0..RUNS {
        with.push(measure(&format!("through the hypervisor, run {}", i + 1), &hyp)?.instructions);
        direct
            .push(measure(&format!("directly on QEMU, run {}", i + 1), &direct_args)?.instructions);
    }
    with.sort_unstable();
    direct.sort_unstable();
    let per = |v: u64| v as f64 / REQUESTS as f64;
    let mib_per_1e9 = |v: u64| (REQUESTS * 4096) as f64 / f64::from(1 << 20) / (v as f64 / 1e9);
    let (wm, dm) = (with[RUNS / 2], direct[RUNS / 2]);
    let ratio = per(wm) / per(dm);
    println!();
    println!("Linux virtio-blk reads: {REQUESTS} O_DIRECT requests of 4 KiB, 1 CPU, -icount shift=0,sleep=off, {RUNS} runs each");
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>18}",
        "virtual ns per request", "min", "median", "max", "MiB/1e9 (median)"
    );
    for (name, v) in [
        ("through the hypervisor", &with),
        ("directly on QEMU", &direct),
    ] {
        println!(
            "{name:<24} {:>12.0} {:>12.0} {:>12.0} {:>18.2}",
            per(v[0]),
            per(v[RUNS / 2]),
            per(v[RUNS - 1]),
            mib_per_1e9(v[RUNS / 2])
        );
    }
    println!(
        "ratio of medians {ratio:.2}x (goal <= 1.5x); runs differ by the idle time QEMU's I/O adds"
    );
    let json = format!(
        "{{\"requests\": {REQUESTS}, \"request_bytes\": 4096, \"hyp_virtual_ns\": {with:?}, \"direct_virtual_ns\": {direct:?}, \"ratio_of_medians\": {ratio:.3}}}\n"
    );
    let out = dir.join("linux-blk.json");
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    note(&format!("linux-blk: written {}", out.display()));
    Ok(())
}
