//! `cargo xtask bench` and `cargo xtask size`.
//!
//! `bench` boots the board's image under `-icount shift=0`, where
//! QEMU's virtual clock advances one nanosecond per instruction executed (by
//! all CPUs together), so guest-bench's counter deltas are instruction
//! counts, identical from run to run (see `crates/guest-bench` for each
//! metric's definition and the method):
//! - on one CPU with `guests=guest-bench:p:lazy,guest-bench:arg=131`: every
//!   metric but `sgi_latency` (one CPU, so the counter counts only the
//!   measured path; the second VM is `vcpu_switch`'s partner), and again
//!   with 62 idle VMs created first (`idle=62`), where the exit costs must
//!   be the same (`_64vms`);
//! - on two CPUs with `guests=guest-bench:v2`: `sgi_latency` (the target
//!   vCPU runs on the other physical CPU);
//! - on two CPUs, one VM destroyed on CPU 0 (`neighbour_destroy_ns`), or
//!   toggling its caches and then destroyed (`neighbour_cache_toggle_ns`),
//!   while guest-bench on CPU 1 times exit round trips: the longest, in
//!   nanoseconds of virtual time (at most [`NEIGHBOUR_BOUND_NS`]; not
//!   compared between the two runs: it depends on where QEMU's round-robin
//!   switches CPUs).
//!
//! QEMU virt (`--platform qemu`): `-smp 1` and `-smp 2`; the counter runs
//! at 1 GHz, one tick per instruction, and every iteration is timed alone.
//! QEMU raspi4b (`--platform rpi4`) always has 4 CPUs: the boots pass
//! `hyp.cpus=1` and `hyp.cpus=2`, and the hypervisor parks the other CPUs
//! in WFI, where they execute nothing (a CPU polling in a WFE loop would add
//! its instructions to every span: `mem_share_unshare` read ~6 million
//! instead of ~50,000 that way). Its counter advances once every 16
//! instructions (QEMU 10's raspi4b keeps the CPU's default 62.5 MHz
//! CNTFRQ_EL0; a real Pi's firmware sets 54 MHz), so guest-bench times
//! groups of 16 iterations started at the 16 counter phases, whose deltas
//! add up to the exact count (its `Clock`); the records carry a `method`.
//!
//! Then it runs the s2mm host benchmark (nanoseconds, machine-dependent),
//! prints a table, moves `target/bench/latest.json` to `previous.json`
//! (rpi4: `latest-rpi4.json`, `previous-rpi4.json`, so each board is
//! compared with its own previous run), writes the new file (one record per
//! metric: `name`, `instructions` or `ns`, `iterations`, and on rpi4
//! `method`) and prints the change from the previous run. Any failure (a
//! guest `FAIL`, a missing metric, QEMU not powering off cleanly) fails the
//! command.
//!
//! `size` prints the bytes of text, rodata, data and bss of the hypervisor
//! alone (its code and data without the embedded guest payloads) and of
//! the whole image, per board.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::{Object, ObjectSection, SectionKind};

use crate::{build, cargo, note, provision, run_checked, target_dir, Platform, Result};

/// Metrics guest-bench reports under icount (instructions).
pub const GUEST_METRICS: [&str; 21] = [
    "hvc_null",
    "psci_version",
    "hvc_unknown",
    "mmio_hyp",
    "mmio_host",
    "s2_fault",
    "mem_share_unshare",
    "sgi_latency",
    "vtimer_latency",
    "vcpu_switch",
    "idle_cost",
    "boot_to_guest",
    "neighbour_destroy_ns",
    "neighbour_cache_toggle_ns",
    "hvc_null_64vms",
    "psci_version_64vms",
    "hvc_unknown_64vms",
    "mmio_hyp_64vms",
    "mmio_host_64vms",
    "vtimer_latency_64vms",
    "vcpu_switch_64vms",
];

/// Exit costs that must not depend on how many VMs exist: the `_64vms`
/// figures (62 idle VMs beside the two bench VMs) equal the 1-VM ones.
const VM_COUNT_INVARIANT: [&str; 7] = [
    "hvc_null",
    "psci_version",
    "hvc_unknown",
    "mmio_hyp",
    "mmio_host",
    "vtimer_latency",
    "vcpu_switch",
];

/// The longest exit round trip a VM may see while another VM is destroyed
/// or cleans its caches on another CPU (nanoseconds of virtual time), the
/// issue's goal: a lock held across the whole destroy (448 MiB: about
/// 320 ms) or clean, or a step that kept its CPU for more than a
/// millisecond, fails it.
const NEIGHBOUR_BOUND_NS: f64 = 1_000_000.0;

/// Goals (instructions, at most): hvc_null from the first performance
/// round, the rest from the second (`idle_cost`: 1% of one CPU's
/// instructions over the second it measures).
const TARGETS: [(&str, u64); 11] = [
    ("hvc_null", 80),
    ("hvc_unknown", 40),
    ("mmio_hyp", 120),
    ("mmio_host", 700),
    ("s2_fault", 2_500),
    ("mem_share_unshare", 5_000),
    ("sgi_latency", 700),
    ("vtimer_latency", 400),
    ("vcpu_switch", 700),
    ("idle_cost", 10_000_000),
    ("boot_to_guest", 5_000_000),
];

/// One result.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Metric name.
    pub name: String,
    /// Instructions (guest metrics) or nanoseconds (host metrics).
    pub value: f64,
    /// Whether `value` is nanoseconds.
    pub ns: bool,
    /// Iterations (samples) behind the value.
    pub iterations: u64,
    /// How the value was obtained, when not the default (exact per
    /// iteration on a 1 GHz counter): the rpi4 counter's method.
    pub method: Option<String>,
}

impl Record {
    fn json(&self) -> String {
        let (key, v) = if self.ns {
            ("ns", format!("{:.4}", self.value))
        } else {
            ("instructions", format!("{}", self.value as u64))
        };
        let method = self
            .method
            .as_ref()
            .map(|m| format!(",\"method\":\"{m}\""))
            .unwrap_or_default();
        format!(
            "  {{\"name\":\"{}\",\"{key}\":{v},\"iterations\":{}{method}}}",
            self.name, self.iterations
        )
    }
}

/// A QEMU boot of the bench guest.
struct Boot {
    smp: Option<u32>,
    /// Counted by the insn-count plugin (`-icount shift=0,sleep=off`): the
    /// instructions of every CPU between the guest's markers 0 and 1 become
    /// `idle_cost`.
    plugin: bool,
    append: &'static str,
    /// Appended to each metric's name (a boot that repeats another's).
    suffix: &'static str,
    /// Metrics this boot must produce (unless the guest says it skipped them).
    want: &'static [&'static str],
}

const BOOTS: [Boot; 6] = [
    Boot {
        plugin: false,
        smp: Some(1),
        append: "guests=guest-bench:p:lazy,guest-bench:arg=131",
        suffix: "",
        want: &[
            "vcpu_switch",
            "hvc_null",
            "psci_version",
            "hvc_unknown",
            "mmio_hyp",
            "mmio_host",
            "s2_fault",
            "mem_share_unshare",
            "vtimer_latency",
        ],
    },
    Boot {
        plugin: false,
        smp: Some(2),
        append: "guests=guest-bench:v2",
        suffix: "",
        want: &["sgi_latency"],
    },
    // VM 1 (448 MiB, protected) powers off at once and host CPU 0 destroys
    // it (`reap`) while VM 2, on CPU 1, times exit round trips through the
    // host until the destroy is over and 2,000 more (arg: 0x80 | 2000 << 8).
    Boot {
        plugin: false,
        smp: Some(2),
        append: "guests=guest-hello:p:v1:mem=448:reap,guest-bench:v1:cpu=1:arg=512128",
        suffix: "",
        want: &["neighbour_destroy_ns"],
    },
    // VM 1 (448 MiB) toggles its caches 6 times (18 VM-wide cleans without
    // FEAT_S2FWB, which `hyp.s2fwb=off` asks for on virt; arg 0x82 | 6 << 8)
    // and is then destroyed, while VM 2 on CPU 1 times exit round trips
    // throughout (arg 0x81 | 2000 << 8).
    Boot {
        plugin: false,
        smp: Some(2),
        append: "hyp.s2fwb=off guests=guest-bench:p:v1:mem=448:reap:arg=1666,guest-bench:v1:cpu=1:arg=512129",
        suffix: "",
        want: &["neighbour_cache_toggle_ns"],
    },
    // `idle_cost`: one VM (arg 0x84) waits 1 s in WFI, its virtual timer
    // 100 ms away each time; the insn-count plugin counts what the CPU
    // executes meanwhile (the goal: under 1% of one CPU's instructions, 10
    // million). One CPU: QEMU 10.0 with the plugin and `-icount` crashes
    // in translated code on a second CPU (a SIGSEGV in code_gen_buffer).
    Boot {
        plugin: true,
        smp: Some(1),
        append: "guests=guest-bench:arg=132",
        suffix: "",
        want: &["idle_cost", "boot_to_guest"],
    },
    // The first boot again with 62 idle VMs created first (the bench VMs
    // are VMs 63 and 64): the exit costs must not change.
    Boot {
        plugin: false,
        smp: Some(1),
        append: "idle=62 guests=guest-bench:p:lazy,guest-bench:arg=131",
        suffix: "_64vms",
        want: &VM_COUNT_INVARIANT,
    },
];

/// A console line without the `[vmN] ` tag the hypervisor puts before a
/// guest's lines: guest-bench's `bench:` lines come tagged, the host's
/// (`bench: barriers ...`) do not.
pub fn untagged(line: &str) -> &str {
    line.strip_prefix("[vm")
        .and_then(|r| r.split_once("] "))
        .filter(|(h, _)| !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit()))
        .map_or(line, |(_, text)| text)
}

/// The text of a `bench: ...` line (tagged `[vmN] ` or not).
pub fn bench_text(line: &str) -> Option<&str> {
    untagged(line.trim()).strip_prefix("bench: ")
}

/// Parses `bench: NAME instructions=N iterations=I` lines (tagged `[vmN] `
/// or not); `Ok(None)` for other lines, `Err` for `bench: FAIL ...`.
pub fn parse_line(line: &str) -> Result<Option<Record>> {
    let Some(rest) = bench_text(line) else {
        return Ok(None);
    };
    if rest.starts_with("FAIL") {
        return Err(format!("guest-bench: {rest}"));
    }
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or_default().to_owned();
    let (mut value, mut iterations) = (None, None);
    for w in words {
        if let Some(v) = w.strip_prefix("instructions=") {
            value = v.parse::<u64>().ok();
        } else if let Some(v) = w.strip_prefix("iterations=") {
            iterations = v.parse::<u64>().ok();
        }
    }
    match (value, iterations) {
        (Some(v), Some(i)) => Ok(Some(Record {
            name,
            value: v as f64,
            ns: false,
            iterations: i,
            method: None,
        })),
        _ => Ok(None),
    }
}

/// The lines `child` prints on stdout (piped), read by a thread so the
/// caller can wait for them with a timeout.
pub fn stdout_lines(child: &mut std::process::Child) -> Result<std::sync::mpsc::Receiver<String>> {
    let stdout = child.stdout.take().ok_or("no QEMU stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Boots `image` with `boot`'s options; the records, skip notes and log.
fn run_boot(
    platform: Platform,
    board: &board::Board,
    kernel: &Path,
    boot: &Boot,
) -> Result<(Vec<Record>, Vec<String>)> {
    // raspi4b has a fixed CPU count (4): the hypervisor brings up only
    // `hyp.cpus` of them and parks the rest in WFI, where they execute
    // nothing (a polling CPU would add its instructions to the counter).
    let (smp, append) = match (platform, boot.smp) {
        (Platform::Qemu, smp) => (smp, boot.append.to_owned()),
        (_, Some(n)) => (None, format!("{} hyp.cpus={n}", boot.append)),
        (_, None) => (None, boot.append.to_owned()),
    };
    let mut args = board.qemu_args(kernel, smp);
    let counts = target_dir().join("bench").join("idle.counts");
    let icount = if boot.plugin {
        // The plugin writes its counts there; in a fresh tree nothing has made the directory yet.
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&counts);
        args.extend(crate::insncount::qemu_args(
            &crate::insncount::plugin()?,
            &counts,
            None,
        ));
        // Idle CPUs let virtual time jump to the next timer at once.
        "shift=0,sleep=off"
    } else {
        "shift=0"
    };
    args.extend(
        ["-append", &append, "-icount", icount]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let mut cmd = Command::new(provision::QEMU);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    note(&format!("$ {} {}", provision::QEMU, args.join(" ")));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))?;
    let rx = stdout_lines(&mut child)?;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if bench_text(&line).is_some() || line.contains("FAIL") || line.contains("panic") {
                    println!("  | {line}");
                }
                log.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "bench boot `{}` timed out after 240 s:\n{}",
                boot.append,
                log.join("\n")
            ));
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for line in &log {
        match parse_line(line) {
            Err(e) => return Err(format!("{e}\n{}", log.join("\n"))),
            Ok(Some(mut r)) => {
                r.name.push_str(boot.suffix);
                records.push(r);
            }
            Ok(None) => {
                if let Some(s) = bench_text(line) {
                    skipped.push(s.to_owned());
                }
            }
        }
    }
    if boot.plugin
        && status.success()
        && !skipped.iter().any(|s| s.starts_with("idle_cost skipped"))
    {
        let m = crate::insncount::read(&counts)?;
        let idle = crate::insncount::between(&m, 0, 1)?;
        records.push(Record {
            name: "idle_cost".to_owned(),
            value: idle.total() as f64,
            ns: false,
            iterations: 1,
            method: Some("insn-count plugin: all CPUs, per 1 s of virtual time".to_owned()),
        });
        let start = m.at.get(&2).ok_or(
            "insn-count: guest-bench's marker 2 (its first instruction of guest_main) was never executed",
        )?;
        records.push(Record {
            name: "boot_to_guest".to_owned(),
            value: start.total() as f64,
            ns: false,
            iterations: 1,
            method: Some("insn-count plugin: power-on to the VM's guest_main, all CPUs".to_owned()),
        });
    }
    if !status.success() {
        return Err(format!(
            "bench boot `{}`: QEMU exited with {status}:\n{}",
            boot.append,
            log.join("\n")
        ));
    }
    for want in boot.want {
        let found = records
            .iter()
            .any(|r| r.name == *want || r.name == format!("{want}{}", boot.suffix))
            || skipped
                .iter()
                .any(|s| s.starts_with(&format!("{want} skipped")));
        if !found {
            return Err(format!(
                "bench boot `{}` did not report {want}:\n{}",
                boot.append,
                log.join("\n")
            ));
        }
    }
    Ok((records, skipped))
}

/// The s2mm host benchmark's records (ns per page).
fn s2mm_host() -> Result<Vec<Record>> {
    let json = target_dir().join("bench").join("s2mm-host.json");
    run_checked(&mut cargo(&[
        "run",
        "--release",
        "-p",
        "s2mm",
        "--example",
        "s2bench",
        "--",
        "--json",
        &json.display().to_string(),
    ]))?;
    let text = std::fs::read_to_string(&json)
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    let field = |line: &str, key: &str| -> Option<String> {
        let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = &line[at..];
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        let end = rest.find(['"', ',', '}'])?;
        Some(rest[..end].to_owned())
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if let (Some(k), Some(m), Some(ns)) = (
            field(line, "crate"),
            field(line, "metric"),
            field(line, "ns_per_page").and_then(|v| v.parse::<f64>().ok()),
        ) {
            out.push(Record {
                name: format!("s2mm_host.{k}.{m}_ns_per_page"),
                value: ns,
                ns: true,
                // s2bench's default: the median of 7 runs.
                iterations: 7,
                method: None,
            });
        }
    }
    if out.is_empty() {
        return Err(format!("no records in {}", json.display()));
    }
    Ok(out)
}

/// One line per s2mm host metric that aarch64-paging also ran (live table), in the records'
/// order: both figures side by side and s2mm's speedup (aarch64-paging's ns per page over
/// s2mm's), as s2bench prints them, so they sit under the table.
fn s2mm_speedups(records: &[Record]) -> Vec<String> {
    let ns = |krate: &str, metric: &str| {
        records
            .iter()
            .find(|r| r.name == format!("s2mm_host.{krate}.{metric}_ns_per_page"))
            .map(|r| r.value)
    };
    records
        .iter()
        .filter_map(|r| {
            let metric = r
                .name
                .strip_prefix("s2mm_host.s2mm.")?
                .strip_suffix("_ns_per_page")?;
            let paging = ns("aarch64-paging", metric)?;
            (r.value > 0.0).then(|| {
                format!(
                    "speedup {metric} s2mm_vs_aarch64-paging={:.2}x (ns per 4 KiB page: s2mm {:.3}, aarch64-paging {:.3})",
                    paging / r.value,
                    r.value,
                    paging
                )
            })
        })
        .collect()
}

/// Reads a JSON file this module wrote (one record per line).
pub fn read_json(text: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for line in text.lines() {
        let get = |key: &str| -> Option<&str> {
            let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
            let rest = &line[at..];
            let rest = rest.strip_prefix('"').unwrap_or(rest);
            let end = rest.find(['"', ',', '}'])?;
            Some(&rest[..end])
        };
        let Some(name) = get("name") else { continue };
        let (value, ns) = match (get("instructions"), get("ns")) {
            (Some(v), _) => (v.parse().ok(), false),
            (None, Some(v)) => (v.parse().ok(), true),
            _ => (None, false),
        };
        let (Some(value), Some(iterations)) =
            (value, get("iterations").and_then(|i| i.parse().ok()))
        else {
            continue;
        };
        out.push(Record {
            name: name.to_owned(),
            value,
            ns,
            iterations,
            method: get("method").map(str::to_owned),
        });
    }
    out
}

/// Writes records as JSON, one per line.
pub fn to_json(records: &[Record]) -> String {
    let body: Vec<String> = records.iter().map(Record::json).collect();
    format!("[\n{}\n]\n", body.join(",\n"))
}

/// Runs the guest benchmarks only (both boots); used by `bench` and `test`.
pub fn guest_records(platform: Platform) -> Result<(Vec<Record>, Vec<String>)> {
    let built = build(platform)?;
    provision::qemu()?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for boot in &BOOTS {
        let (r, s) = run_boot(platform, &built.board, &built.qemu_kernel, boot)?;
        records.extend(r);
        skipped.extend(s);
    }
    // `bench: clock ...` lines (slow counters: rpi4) describe the method;
    // they are notes, not skipped metrics. Both boots print the same.
    let mut clock: Vec<String> = Vec::new();
    skipped.retain(|s| match s.strip_prefix("clock ") {
        Some(c) => {
            if !clock.iter().any(|x| x == c) {
                clock.push(c.to_owned());
            }
            false
        }
        None => true,
    });
    if let Some(period) = clock.iter().find_map(|c| {
        c.split_whitespace()
            .find_map(|w| w.strip_prefix("insns_per_tick="))
    }) {
        let method = format!("phased, {period} insns per counter tick");
        for r in &mut records {
            r.method = Some(method.clone());
        }
    }
    skipped.splice(0..0, clock.into_iter().map(|c| format!("clock {c}")));
    // `bench: barriers ...` lines (the host's multi-page calls): both boots
    // print the same counts; keep one of each.
    let mut seen: Vec<String> = Vec::new();
    skipped.retain(|s| {
        if !s.starts_with("barriers ") {
            return true;
        }
        let new = !seen.contains(s);
        seen.push(s.clone());
        new
    });
    // The `_64vms` boot measures what the others do; keep only its exit costs.
    records.retain(|r| {
        r.name
            .strip_suffix("_64vms")
            .is_none_or(|m| VM_COUNT_INVARIANT.contains(&m))
    });
    for m in VM_COUNT_INVARIANT {
        let one = records.iter().find(|r| r.name == m).map(|r| r.value);
        let many = records
            .iter()
            .find(|r| r.name == format!("{m}_64vms"))
            .map(|r| r.value);
        if let (Some(one), Some(many)) = (one, many) {
            if one != many {
                return Err(format!(
                    "{m}: {one} instructions with 2 VMs, {many} with 64: an exit's cost depends on how many VMs exist"
                ));
            }
        }
    }
    // Table order: the issue's.
    records.sort_by_key(|r| {
        GUEST_METRICS
            .iter()
            .position(|m| *m == r.name)
            .unwrap_or(usize::MAX)
    });
    Ok((records, skipped))
}

/// Runs the guest benchmarks twice on `platform` (`cargo xtask test`):
/// every metric reported, each a plausible instruction count (more than 0,
/// under 10 million; `boot_to_guest` under a billion), and both runs identical; the first run's records
/// (which `cargo xtask test` then compares with the baseline).
pub fn check_twice(platform: Platform) -> Result<Vec<Record>> {
    let (a, notes_a) = guest_records(platform)?;
    let (b, notes_b) = guest_records(platform)?;
    let barriers = |notes: &[String]| -> Vec<String> {
        notes
            .iter()
            .filter(|n| n.starts_with("barriers "))
            .cloned()
            .collect()
    };
    let (ba, bb) = (barriers(&notes_a), barriers(&notes_b));
    if ba != bb {
        return Err(format!(
            "barrier counts differ between runs:\n{ba:?}\n{bb:?}"
        ));
    }
    check_barrier_counts(&ba)?;
    for m in GUEST_METRICS {
        // Boot counts the whole start-up (on raspi4b, without FEAT_S2FWB,
        // 60 million instructions of it clean the host's RAM to PoC).
        let most = if m == "boot_to_guest" { 1e9 } else { 1e7 };
        match a.iter().find(|r| r.name == m) {
            None => return Err(format!("{}: {m} not reported", platform.dir())),
            Some(r) if !(1.0..most).contains(&r.value) => {
                return Err(format!(
                    "{}: {m} = {} instructions",
                    platform.dir(),
                    r.value
                ));
            }
            Some(_) => {}
        }
    }
    for r in a.iter().filter(|r| r.name.starts_with("neighbour_")) {
        if r.value >= NEIGHBOUR_BOUND_NS {
            return Err(format!(
                "{}: {} = {} ns: a neighbour's long operation held this VM's exits up",
                platform.dir(),
                r.name,
                r.value
            ));
        }
    }
    if a.len() != GUEST_METRICS.len() {
        return Err(format!(
            "{} of {} metrics reported",
            a.len(),
            GUEST_METRICS.len()
        ));
    }
    // The neighbour probe's figure depends on where QEMU's round-robin
    // switches between the two CPUs; every other metric is exact.
    let exact = |r: &&Record| !r.name.starts_with("neighbour_");
    let (ea, eb): (Vec<&Record>, Vec<&Record>) = (
        a.iter().filter(exact).collect(),
        b.iter().filter(exact).collect(),
    );
    if ea != eb {
        return Err(format!("two runs differ:\n{ea:?}\n{eb:?}"));
    }
    Ok(a)
}

/// The seed-002 bound on the host's multi-page calls: each of the four
/// operations is reported, and giving or destroying 512 pages costs at
/// most 12 DSBs (a few batches per call, not one per page).
fn check_barrier_counts(lines: &[String]) -> Result<()> {
    for op in [
        "mem_donate",
        "vm_destroy_donated",
        "mem_lend",
        "vm_destroy_lent",
    ] {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(op))
            .ok_or_else(|| format!("no `bench: barriers {op}` line in {lines:?}"))?;
        let dsb = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dsb="))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("no dsb count in `{line}`"))?;
        // A constant per call, not per page: a destroy's batches are the
        // guest's unmap, the region's and the VM's own pages' return to the
        // host, and the freeing of the guest's root (9 DSBs measured).
        if dsb > 12 {
            return Err(format!("{op}: {dsb} DSBs for 512 pages: `{line}`"));
        }
    }
    Ok(())
}

/// `cargo xtask bench`.
pub fn bench(platform: Platform) -> Result<()> {
    let started = Instant::now();
    let (mut records, skipped) = guest_records(platform)?;
    records.extend(s2mm_host()?);

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Each board keeps its own pair of files, so a run is compared with the
    // previous run on the same board.
    let (latest, previous) = match platform {
        Platform::Qemu => (dir.join("latest.json"), dir.join("previous.json")),
        _ => (
            dir.join(format!("latest-{}.json", platform.dir())),
            dir.join(format!("previous-{}.json", platform.dir())),
        ),
    };
    let old = std::fs::read_to_string(&latest).ok().map(|t| read_json(&t));
    if old.is_some() {
        std::fs::rename(&latest, &previous)
            .map_err(|e| format!("cannot move {}: {e}", latest.display()))?;
    }
    std::fs::write(&latest, to_json(&records))
        .map_err(|e| format!("cannot write {}: {e}", latest.display()))?;

    println!();
    println!(
        "{:<58} {:>14} {:>10} {:>16}  target",
        "metric", "value", "iters", "previous"
    );
    for r in &records {
        let unit = if r.ns { "ns" } else { "insn" };
        let prev = old
            .as_ref()
            .and_then(|o| o.iter().find(|p| p.name == r.name && p.ns == r.ns))
            .map(|p| {
                if r.ns {
                    let pct = if p.value != 0.0 {
                        (r.value - p.value) / p.value * 100.0
                    } else {
                        0.0
                    };
                    format!("{:+.1}%", pct)
                } else if p.value == r.value {
                    "=".to_owned()
                } else {
                    format!("{:+}", r.value as i64 - p.value as i64)
                }
            })
            .unwrap_or_else(|| "-".to_owned());
        let target = TARGETS
            .iter()
            .find(|(n, _)| *n == r.name)
            .map(|(_, t)| {
                if r.value as u64 <= *t {
                    format!("<= {t} met")
                } else {
                    format!("<= {t} MISSED")
                }
            })
            .unwrap_or_default();
        let v = if r.ns {
            format!("{:.3} {unit}", r.value)
        } else {
            format!("{} {unit}", r.value as u64)
        };
        println!(
            "{:<58} {:>14} {:>10} {:>16}  {}",
            r.name, v, r.iterations, prev, target
        );
    }
    let speedups = s2mm_speedups(&records);
    if !speedups.is_empty() {
        println!();
        println!("s2mm vs aarch64-paging, same work on the host (live tables; s2bench):");
        for l in speedups {
            println!("  {l}");
        }
    }
    let (barrier_lines, notes): (Vec<&String>, Vec<&String>) =
        skipped.iter().partition(|s| s.starts_with("barriers "));
    if !barrier_lines.is_empty() {
        println!();
        println!("Barriers per multi-page host call (page-table batches; seed 002):");
        for l in barrier_lines {
            println!("  {}", &l["barriers ".len()..]);
        }
    }
    for s in notes {
        println!("{s}");
    }
    if platform == Platform::Qemu {
        // The Linux boot is its own run (`--linux-boot`, a few minutes):
        // its last result, if there is one.
        let f = target_dir().join("bench").join("linux-boot.json");
        let ratio = std::fs::read_to_string(&f).ok().and_then(|j| {
            let v = j.split("\"linux_boot_ratio\":").nth(1)?;
            v.trim_start()
                .split(|c: char| c != '.' && !c.is_ascii_digit())
                .next()?
                .parse::<f64>()
                .ok()
        });
        println!();
        match ratio {
            Some(r) => println!(
                "linux_boot_ratio {r:.3} (goal <= 1.05; the last `cargo xtask bench --linux-boot`, {})",
                f.display()
            ),
            None => println!(
                "linux_boot_ratio: not measured in this tree yet (`cargo xtask bench --linux-boot`, a few minutes)"
            ),
        }
    }
    // The plugin's figures (idle_cost, boot_to_guest) are exact counts.
    if records.iter().any(|r| {
        r.method
            .as_deref()
            .is_some_and(|m| !m.starts_with("insn-count"))
    }) {
        println!(
            "{}: the counter advances once every several instructions, so each guest figure \
             is the median over groups of that many iterations whose timed spans start at \
             counter phases 0, 1, ..: the group's tick deltas add up to exactly the span's \
             instruction count when every iteration in the group costs the same (else to \
             their mean, within one instruction); see crates/guest-bench",
            platform.dir()
        );
    }
    println!();
    note(&format!(
        "wrote {}{}",
        latest.display(),
        if old.is_some() {
            format!(" (previous run in {})", previous.display())
        } else {
            String::new()
        }
    ));
    if let Some(old) = &old {
        let changed: Vec<&Record> = records
            .iter()
            .filter(|r| !r.ns)
            .filter(|r| {
                old.iter()
                    .find(|p| p.name == r.name && !p.ns)
                    .is_some_and(|p| p.value != r.value)
            })
            .collect();
        if changed.is_empty() {
            note("instruction counts identical to the previous run");
        } else {
            note(&format!(
                "instruction counts changed since the previous run: {}",
                changed
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // The committed baseline, for information (`cargo xtask test` fails on
    // a growth beyond the tolerance).
    let key = crate::baseline::board_key(platform);
    match std::fs::read_to_string(crate::baseline::path())
        .map_err(|e| e.to_string())
        .and_then(|t| crate::baseline::parse(&t))
    {
        Ok(b) => match b.board(key) {
            Some(base) => {
                let rows = crate::baseline::compare(
                    base,
                    &crate::baseline::exact(&records),
                    crate::baseline::TOLERANCE_PCT,
                );
                println!();
                print!("{}", crate::baseline::table(key, &rows));
            }
            None => note(&format!("the baseline has no `{key}` board")),
        },
        Err(e) => note(&format!("no bench baseline to compare with: {e}")),
    }
    note(&format!(
        "bench took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Section sizes of one ELF.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    text: u64,
    rodata: u64,
    data: u64,
    bss: u64,
}

/// Sums the allocated sections of `elf` by kind.
fn sizes(elf: &[u8]) -> Result<Sizes> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF: {e}"))?;
    let mut s = Sizes::default();
    for sec in file.sections() {
        let size = sec.size();
        match sec.kind() {
            SectionKind::Text => s.text += size,
            SectionKind::ReadOnlyData
            | SectionKind::ReadOnlyString
            | SectionKind::ReadOnlyDataWithRel => s.rodata += size,
            SectionKind::Data => s.data += size,
            SectionKind::UninitializedData | SectionKind::Common => s.bss += size,
            _ => {}
        }
    }
    Ok(s)
}

/// Bytes of the guest payloads the board crate embeds (`include_bytes!`
/// into `.rodata`): the flat binaries in the payload directory.
fn payload_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        if e.path().extension().is_some_and(|x| x == "bin") {
            n += e
                .metadata()
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .len();
        }
    }
    Ok(n)
}

/// `cargo xtask size`.
pub fn size(platforms: &[Platform]) -> Result<()> {
    let mut rows = Vec::new();
    for &p in platforms {
        let built = build(p)?;
        let elf = crate::read(&built.elf)?;
        let all = sizes(&elf)?;
        let payload = payload_bytes(&built.payload_dir)?;
        let image_len = std::fs::metadata(&built.image)
            .map_err(|e| format!("{}: {e}", built.image.display()))?
            .len();
        rows.push((p, all, payload, image_len));
    }
    println!();
    println!(
        "{:<6} {:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "board", "", "text", "rodata", "data", "bss", "total"
    );
    for (p, all, payload, image_len) in rows {
        let total = |s: &Sizes| s.text + s.rodata + s.data + s.bss;
        let hyp = Sizes {
            rodata: all.rodata.saturating_sub(payload),
            ..all
        };
        for (what, s) in [("hypervisor alone", hyp), ("whole image", all)] {
            println!(
                "{:<6} {:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
                p.dir(),
                what,
                s.text,
                s.rodata,
                s.data,
                s.bss,
                total(&s)
            );
        }
        println!(
            "{:<6} {:<18} guest payloads {payload} bytes (in rodata); image file {image_len} bytes",
            p.dir(),
            ""
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn s2mm_speedups_pair_each_s2mm_row_with_live_aarch64_paging() {
        let rec = |name: &str, value: f64| Record {
            name: name.to_owned(),
            value,
            ns: true,
            iterations: 7,
            method: None,
        };
        let got = s2mm_speedups(&[
            rec("s2mm_host.s2mm.map_4k_1g_ns_per_page", 0.5),
            rec("s2mm_host.s2mm.set_state_4k_1g_ns_per_page", 4.0),
            rec("s2mm_host.another-crate.set_state_4k_1g_ns_per_page", 3.0),
            rec("s2mm_host.aarch64-paging.set_state_4k_1g_ns_per_page", 10.0),
            rec(
                "s2mm_host.aarch64-paging-inactive.map_4k_1g_ns_per_page",
                2.0,
            ),
            rec("s2mm_host.aarch64-paging.map_4k_1g_ns_per_page", 5.0),
            rec("hvc_null", 22.0),
        ]);
        assert_eq!(
            got,
            [
                "speedup map_4k_1g s2mm_vs_aarch64-paging=10.00x (ns per 4 KiB page: s2mm 0.500, aarch64-paging 5.000)",
                "speedup set_state_4k_1g s2mm_vs_aarch64-paging=2.50x (ns per 4 KiB page: s2mm 4.000, aarch64-paging 10.000)",
            ]
        );
    }

    #[test]
    fn bench_lines_tagged_or_not() {
        for line in [
            "bench: hvc_null instructions=123 iterations=1000",
            "[vm1] bench: hvc_null instructions=123 iterations=1000",
            "[vm65534] bench: hvc_null instructions=123 iterations=1000",
        ] {
            let r = parse_line(line).unwrap().unwrap();
            assert_eq!(
                (r.name.as_str(), r.value, r.iterations),
                ("hvc_null", 123.0, 1000)
            );
        }
        assert!(parse_line("[vm2] bench: FAIL x").is_err());
        assert!(parse_line("[vm] bench: a instructions=1 iterations=1")
            .unwrap()
            .is_none());
        assert!(parse_line("[vm1] guest-bench: VM 1").unwrap().is_none());
        assert_eq!(bench_text("[vm3] bench: barriers x"), Some("barriers x"));
        assert_eq!(untagged("[vmx] a"), "[vmx] a");
        assert_eq!(untagged("hyp: a"), "hyp: a");
    }
}
