//! `cargo xtask fuzz --calls N [--seed S]`: boots QEMU virt with the host's
//! fuzzer (`fuzz=N seed=S`, crates/host/src/fuzz.rs: random control calls
//! from every host CPU interleaved with runs of live protected and normal
//! VMs, checked against a model, with probes and the hypervisor's AUDIT
//! after every batch). Fails on any `FAIL` line, a hypervisor panic, a
//! missing `PASS` line or a non-zero exit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{build, note, provision, Platform, Result};

/// QEMU seconds allowed: a fixed start-up plus, at the slowest rate seen
/// under load (~150 calls/s on 4 emulated CPUs), each call.
fn timeout(calls: u64) -> Duration {
    Duration::from_secs(120 + calls / 100)
}

/// Boots the fuzzer; returns its report lines (`host: fuzz: ...`).
pub fn fuzz(calls: u64, seed: u64) -> Result<Vec<String>> {
    let built = build(Platform::Qemu)?;
    provision::qemu()?;
    let mut args = built.board.qemu_args(&built.qemu_kernel, None);
    args.extend(["-append".to_owned(), format!("fuzz={calls} seed={seed}")]);
    let mut cmd = Command::new(provision::QEMU);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    note(&format!(
        "fuzz: {calls} calls, seed {seed}: $ {} {}",
        provision::QEMU,
        args.join(" ")
    ));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))?;
    let out = child.stdout.take().ok_or("no QEMU stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = started + timeout(calls);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut passed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                if line.starts_with("host: fuzz:") {
                    println!("{line}");
                    report.push(line.clone());
                }
                if line.starts_with("host: fuzz: PASS") {
                    passed = true;
                }
                if line.contains("FAIL") || line.contains("panicked") || line.contains("PANIC") {
                    eprintln!("{line}");
                    failures.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("fuzz: no end after {} s", timeout(calls).as_secs()));
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    note(&format!(
        "fuzz: QEMU exited ({status}) after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    if !failures.is_empty() {
        return Err(format!(
            "fuzz: {} failure lines, first: {}",
            failures.len(),
            failures[0]
        ));
    }
    if !status.success() {
        return Err(format!("fuzz: QEMU exited with {status}"));
    }
    if !passed {
        return Err("fuzz: no PASS line".to_owned());
    }
    Ok(report)
}

/// `field=` of the report line that starts with `prefix`.
fn field(report: &[String], prefix: &str, name: &str) -> Result<u64> {
    let line = report
        .iter()
        .find(|l| l.starts_with(prefix))
        .ok_or_else(|| format!("fuzz: no line {prefix:?}"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .ok_or_else(|| format!("fuzz: no {name}= in {line:?}"))
}

/// Floors on a run of `calls` calls, beside the fuzzer's own: every call
/// type succeeds and is refused, guests run (one call in 8 at least),
/// Busy happens, and probes fault.
pub fn check_floors(report: &[String], calls: u64) -> Result<()> {
    let p = |t: &str| format!("host: fuzz: {t}: ");
    for t in [
        "VM_CREATE",
        "VM_DESTROY",
        "MEM_DONATE",
        "MEM_LEND",
        "VCPU_INIT",
        "VCPU_RUN",
        "MMIO_COMPLETE",
        "STATS",
        "VCPU_STATE",
        "VM_TOPUP",
        "other-VM",
    ] {
        if field(report, &p(t), "ok")? < calls / 1000 {
            return Err(format!("fuzz: {t}: fewer than {} successes", calls / 1000));
        }
    }
    for (t, e) in [
        ("VM_CREATE", "Invalid"),
        ("VM_CREATE", "Denied"),
        ("MEM_DONATE", "Denied"),
        ("MEM_LEND", "Range"),
        ("VCPU_INIT", "Denied"),
        ("VCPU_RUN", "State"),
        ("VCPU_RUN", "NoVm"),
        ("other-VM", "Busy"),
        ("bad-fid", "NotSupported"),
    ] {
        if field(report, &p(t), e)? == 0 {
            return Err(format!("fuzz: {t} never answered {e}"));
        }
    }
    if field(report, &p("VCPU_RUN"), "ok")? < calls / 8 {
        return Err("fuzz: fewer than one call in 8 ran guest code".to_owned());
    }
    let audits = report
        .iter()
        .find(|l| l.starts_with("host: fuzz: audits: "))
        .ok_or("fuzz: no audit line")?;
    if !audits.contains(" 0 violations; 0 answers") {
        return Err(format!("fuzz: {audits}"));
    }
    Ok(())
}
