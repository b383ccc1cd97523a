//! `cargo xtask profile METRIC`: where one exit's instructions go.
//!
//! The bench gives one number per exit; this says which functions execute
//! those instructions. It boots the bench image twice on QEMU virt under
//! `-icount shift=0` with QEMU's execution trace on (`-d in_asm,exec,nochain`:
//! every translated block once, with its instructions, and a line per block
//! executed), each boot running only the chosen metric in guest-bench
//! (`guests=guest-bench:p:lazy:arg=...`, see `profile` in guest-bench), the
//! second with twice the iterations of the first. Everything else in the two
//! boots is the same, so the difference of the two traces, divided by the
//! difference in iterations, is what one iteration executes: block counts
//! times block sizes, summed per function of the hypervisor, the host VM and
//! the guest (their ELF symbol tables; their addresses do not overlap). The
//! total includes the guest's timing loop (counter reads), which the bench
//! subtracts.
//!
//! Functions are the compiled ones: code inlined into a caller counts for the
//! caller. The traces are large (hundreds of MB to a few GB each) and are
//! deleted once read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::{Object, ObjectSymbol, SymbolKind, SymbolSection};

use crate::{note, provision, target_dir, Platform, Result};

/// The metrics guest-bench's profile mode runs, by index from 1
/// (`PROFILE_METRICS` in crates/guest-bench holds the same, in the same
/// order; the guest prints the name it runs and xtask checks it).
const PROFILE_METRICS: [&str; 7] = [
    "hvc_null",
    "psci_version",
    "mmio_hyp",
    "mmio_host",
    "s2_fault",
    "mem_share_unshare",
    "hvc_unknown",
];

fn metrics() -> &'static [&'static str] {
    &PROFILE_METRICS
}

/// Per translated block (by guest PC): its instructions and how often it ran.
#[derive(Debug, Default)]
pub struct Trace {
    size: HashMap<u64, u64>,
    count: HashMap<u64, u64>,
}

impl Trace {
    /// Reads a QEMU `-d in_asm,exec,nochain` log.
    pub fn read(r: impl BufRead) -> std::io::Result<Self> {
        let mut t = Trace::default();
        // The block being listed: (first PC, instructions so far); u64::MAX
        // until its first instruction line.
        let mut block: Option<(u64, u64)> = None;
        let end_block = |t: &mut Trace, block: Option<(u64, u64)>| {
            if let Some((pc, n)) = block.filter(|b| b.0 != u64::MAX) {
                t.size.insert(pc, n);
            }
        };
        for line in r.split(b'\n') {
            let line = line?;
            if line.starts_with(b"IN:") {
                end_block(&mut t, block.take());
                block = Some((u64::MAX, 0));
            } else if line.starts_with(b"0x") {
                // "0x40200000:  d503201f  nop": one instruction of the block.
                if let (Some((pc, n)), Some(addr)) = (block.as_mut(), insn_addr(&line)) {
                    if *pc == u64::MAX {
                        *pc = addr;
                    }
                    *n += 1;
                }
            } else if line.starts_with(b"Trace ") {
                // "Trace 0: 0x7f.. [00000000/0000000040200000/00000461/ff022200] sym"
                if let Some(pc) = exec_pc(&line) {
                    *t.count.entry(pc).or_default() += 1;
                }
            } else if line.is_empty() {
                end_block(&mut t, block.take());
            }
        }
        end_block(&mut t, block);
        Ok(t)
    }

    /// Instructions per block start executed in `self` but not in `base`,
    /// divided by `iterations`.
    pub fn per_iteration(&self, base: &Trace, iterations: u64) -> Vec<(u64, f64)> {
        let mut out = Vec::new();
        for (&pc, &n) in &self.count {
            let d = n as i64 - base.count.get(&pc).copied().unwrap_or(0) as i64;
            let size = self.size.get(&pc).or(base.size.get(&pc)).copied();
            if let (true, Some(size)) = (d != 0, size) {
                out.push((pc, (d * size as i64) as f64 / iterations as f64));
            }
        }
        for (&pc, &n) in &base.count {
            if !self.count.contains_key(&pc) {
                if let Some(&size) = base.size.get(&pc) {
                    out.push((pc, -((n * size) as f64) / iterations as f64));
                }
            }
        }
        out
    }
}

fn hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn insn_addr(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b':')?;
    hex(line.get(2..end)?)
}

fn exec_pc(line: &[u8]) -> Option<u64> {
    let open = line.iter().position(|&b| b == b'[')?;
    let rest = &line[open + 1..];
    let first = rest.iter().position(|&b| b == b'/')?;
    let rest = &rest[first + 1..];
    let second = rest.iter().position(|&b| b == b'/')?;
    hex(&rest[..second])
}

/// Function symbols of several ELFs, for address lookup.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (start, end, component, demangled-ish name), sorted by start.
    syms: Vec<(u64, u64, &'static str, String)>,
}

impl Symbols {
    /// Adds the function symbols of `elf`, tagged `component`.
    pub fn add(&mut self, component: &'static str, elf: &[u8]) -> Result<()> {
        let file = object::File::parse(elf).map_err(|e| format!("not an ELF: {e}"))?;
        let mut syms = Vec::new();
        for s in file.symbols() {
            let name = s.name().unwrap_or("?");
            // Functions, and the assembly's labels (no type); not ELF mapping
            // symbols ($x, $d) or data.
            let code = match s.kind() {
                SymbolKind::Text => true,
                SymbolKind::Unknown | SymbolKind::Label => s.size() == 0,
                _ => false,
            };
            // Absolute symbols (TEXT_OFFSET and other link-time constants)
            // are numbers, not code.
            let absolute = s.section() == SymbolSection::Absolute;
            if !code || absolute || s.is_undefined() || name.starts_with('$') {
                continue;
            }
            syms.push((s.address(), s.size(), readable(name)));
        }
        syms.sort_by_key(|s| s.0);
        // Assembly labels (the vectors, the world switch) have no size: each
        // runs to the next symbol.
        for i in 0..syms.len() {
            let (start, size, ref name) = syms[i];
            let end = if size != 0 {
                start + size
            } else {
                syms.get(i + 1).map_or(start + 4, |n| n.0.max(start + 4))
            };
            self.syms.push((start, end, component, name.clone()));
        }
        self.syms.sort_by_key(|s| s.0);
        Ok(())
    }

    /// The component and function containing `pc`.
    pub fn lookup(&self, pc: u64) -> (&'static str, &str) {
        let i = self.syms.partition_point(|s| s.0 <= pc);
        match i.checked_sub(1).map(|i| &self.syms[i]) {
            Some((_, end, c, name)) if pc < *end => (c, name),
            _ => ("?", "(no symbol)"),
        }
    }
}

/// A Rust v0/legacy mangled name made readable enough for a table: the
/// legacy `_ZN...17h<hash>E` form becomes `a::b::c`.
fn readable(name: &str) -> String {
    let Some(body) = name.strip_prefix("_ZN").and_then(|b| b.strip_suffix('E')) else {
        return name.to_owned();
    };
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(d) = rest.find(|c: char| !c.is_ascii_digit()).filter(|&d| d > 0) {
        let Ok(len) = rest[..d].parse::<usize>() else {
            break;
        };
        let Some(part) = rest.get(d..d + len) else {
            break;
        };
        // A component starting with `$` is escaped with a leading `_`.
        parts.push(if part.starts_with("_$") {
            &part[1..]
        } else {
            part
        });
        rest = &rest[d + len..];
    }
    if parts
        .last()
        .is_some_and(|p| p.len() == 17 && p.starts_with('h'))
    {
        parts.pop();
    }
    if parts.is_empty() {
        return name.to_owned();
    }
    parts
        .join("::")
        .replace("$LT$", "<")
        .replace("$GT$", ">")
        .replace("$u20$", " ")
        .replace("$C$", ",")
        .replace("..", "::")
}

/// Starts one profiling boot: `iterations` of metric `index`, its trace
/// written to `log`; [`finish`] waits for it.
fn boot(
    built: &crate::Built,
    index: usize,
    name: &str,
    iterations: u64,
    log: &Path,
) -> Result<std::process::Child> {
    let mut args = built.board.qemu_args(&built.qemu_kernel, Some(1));
    let arg = index as u64 | iterations << 8;
    args.extend([
        "-append".to_owned(),
        format!("guests=guest-bench:p:v1:lazy:arg={arg}"),
        "-icount".to_owned(),
        "shift=0".to_owned(),
        "-d".to_owned(),
        "in_asm,exec,nochain".to_owned(),
        "-D".to_owned(),
        log.display().to_string(),
    ]);
    note(&format!(
        "$ {} {}  # {name} x {iterations}",
        provision::QEMU,
        args.join(" ")
    ));
    Command::new(provision::QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))
}

/// Largest trace a profiling boot may write: the boot plus 2 x 5,000
/// iterations of the costliest metric stay well below it; a boot that is not
/// doing what was asked (a guest spinning) is stopped before it fills the disk.
const MAX_TRACE: u64 = 12 << 30;

/// Waits (bounded in time and trace size) for a profiling boot; its
/// `bench: NAME instructions=N` figure.
fn finish(
    mut child: std::process::Child,
    name: &str,
    deadline: Instant,
    trace: &Path,
) -> Result<u64> {
    let rx = crate::bench::stdout_lines(&mut child)?;
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => log.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let size = std::fs::metadata(trace).map_or(0, |m| m.len());
        if Instant::now() > deadline || size > MAX_TRACE {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(trace);
            let why = if size > MAX_TRACE {
                format!("its trace passed {} GiB", MAX_TRACE >> 30)
            } else {
                "timed out".to_owned()
            };
            return Err(format!(
                "profiling boot stopped ({why}):\n{}",
                log.join("\n")
            ));
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let want = format!("guest-bench: profiling {name} over ");
    if !log
        .iter()
        .any(|l| crate::bench::untagged(l).starts_with(&want))
    {
        return Err(format!(
            "guest-bench did not profile {name}:\n{}",
            log.join("\n")
        ));
    }
    let prefix = format!("bench: {name} instructions=");
    let figure = log
        .iter()
        .find_map(|l| crate::bench::untagged(l).strip_prefix(&prefix))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    match (status.success(), figure) {
        (true, Some(f)) => Ok(f),
        _ => Err(format!(
            "profiling boot failed ({status}):\n{}",
            log.join("\n")
        )),
    }
}

fn read_trace(path: &Path) -> Result<Trace> {
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let t = Trace::read(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if std::env::var_os("HYP_PROFILE_KEEP").is_none() {
        let _ = std::fs::remove_file(path);
    }
    Ok(t)
}

/// `cargo xtask profile METRIC --iterations N`.
pub fn profile(metric: &str, iterations: u64) -> Result<()> {
    run(metric, iterations).map(|_| ())
}

/// The `cargo xtask test` step: profiles hvc_null and checks the traced total
/// is the bench figure plus the timing loop (a few dozen instructions), and
/// that the vector's `__hvc_fast` is where the call is answered.
pub fn check() -> Result<()> {
    let p = run("hvc_null", 200)?;
    let fast = p
        .rows
        .iter()
        .find(|r| r.1 == "__hvc_fast")
        .map_or(0.0, |r| r.2);
    if !(p.total >= p.figure as f64 && p.total <= p.figure as f64 + 60.0) || fast < 10.0 {
        return Err(format!(
            "hvc_null profile: traced {:.1} per iteration (bench {}), __hvc_fast {fast:.1}",
            p.total, p.figure
        ));
    }
    Ok(())
}

/// A profile: rows (component, function, instructions per iteration), their
/// total, and the bench's own figure for the metric.
struct Profile {
    rows: Vec<(&'static str, String, f64)>,
    total: f64,
    figure: u64,
}

fn run(metric: &str, iterations: u64) -> Result<Profile> {
    let Some(index) = metrics().iter().position(|m| *m == metric).map(|i| i + 1) else {
        return Err(format!(
            "no profile for {metric:?}: one of {}",
            metrics().join(", ")
        ));
    };
    let max = if metric == "s2_fault" { 1000 } else { 5000 };
    if !(1..=max).contains(&iterations) {
        return Err(format!(
            "--iterations {iterations}: 1..={max} for {metric} (the second boot runs twice as many)"
        ));
    }
    let started = Instant::now();
    let built = crate::build(Platform::Qemu)?;
    provision::qemu()?;
    let dir = target_dir().join("profile");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let logs: [PathBuf; 2] = [dir.join("short.log"), dir.join("long.log")];
    // Both boots at once (they are independent); QEMU's trace is slow.
    let deadline = Instant::now() + Duration::from_secs(900);
    let short = boot(&built, index, metric, iterations, &logs[0])?;
    let long = boot(&built, index, metric, 2 * iterations, &logs[1]);
    let long = match long {
        Ok(c) => c,
        Err(e) => {
            let mut short = short;
            let _ = short.kill();
            let _ = short.wait();
            return Err(e);
        }
    };
    let f_short = finish(short, metric, deadline, &logs[0]);
    let f_long = finish(long, metric, deadline, &logs[1]);
    let (f_short, f_long) = (f_short?, f_long?);
    note(&format!(
        "traces written in {:.0} s; reading them",
        started.elapsed().as_secs_f64()
    ));
    let a = read_trace(&logs[0])?;
    let b = read_trace(&logs[1])?;

    let mut syms = Symbols::default();
    let guest_dir = target_dir().join(&built.board.guest_target).join("release");
    for (component, path) in [
        ("hyp", built.elf.clone()),
        ("host", guest_dir.join("host")),
        ("guest", guest_dir.join("guest-bench")),
    ] {
        let elf =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        syms.add(component, &elf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut per_fn: HashMap<(&str, &str), f64> = HashMap::new();
    let mut total = 0.0;
    for (pc, insns) in b.per_iteration(&a, iterations) {
        *per_fn.entry(syms.lookup(pc)).or_default() += insns;
        total += insns;
    }
    let mut rows: Vec<(&'static str, String, f64)> = per_fn
        .into_iter()
        .filter(|r| r.1.abs() >= 0.5)
        .map(|((c, n), v)| (c, n.to_owned(), v))
        .collect();
    rows.sort_by(|x, y| y.2.total_cmp(&x.2));
    println!();
    println!(
        "{metric}: instructions per iteration, by function (inlined code counts for its caller)"
    );
    for (component, name, insns) in &rows {
        println!("{insns:>10.1}  {component:<5}  {name}");
    }
    println!("{total:>10.1}  total (with the guest's timing loop and the sorting of its samples)");
    println!(
        "bench figure for the same body (timing loop subtracted): {f_long} ({f_short} in the shorter boot)"
    );
    note(&format!(
        "profile took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Profile {
        rows,
        total,
        figure: f_long,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;

    const SHORT: &str = "----------------
IN: 
0x40000000:  580000c0  ldr      x0, #0x40000018
0x40000004:  d61f0080  br       x4

Trace 0: 0x7f2c07000100 [00000000/0000000040000000/00000461/ff022200] 
----------------
IN: f
0x40200000:  14000010  nop
0x40200004:  14000010  nop
0x40200008:  14000010  b        #0x40200000

Trace 0: 0x7f2c07000340 [00000400/0000000040200000/00000461/ff022200] f
Trace 0: 0x7f2c07000340 [00000400/0000000040200000/00000461/ff022200] f
";

    #[test]
    fn trace_counts_blocks_and_sizes() {
        let t = Trace::read(SHORT.as_bytes()).unwrap();
        assert_eq!(t.size.get(&0x4000_0000), Some(&2));
        assert_eq!(t.size.get(&0x4020_0000), Some(&3));
        assert_eq!(t.count.get(&0x4020_0000), Some(&2));
        assert_eq!(t.count.get(&0x4000_0000), Some(&1));
    }

    #[test]
    fn per_iteration_is_the_difference() {
        let a = Trace::read(SHORT.as_bytes()).unwrap();
        // Four more executions of the 3-instruction block over 2 iterations.
        let more = format!(
            "{SHORT}{}",
            "Trace 0: 0x7f [00000400/0000000040200000/00000461/ff022200] f\n".repeat(4)
        );
        let b = Trace::read(more.as_bytes()).unwrap();
        let d = b.per_iteration(&a, 2);
        assert_eq!(d, vec![(0x4020_0000, 6.0)]);
    }

    #[test]
    fn legacy_mangled_names_are_readable() {
        assert_eq!(
            readable("_ZN8hyp_core2vm9host_call17h489318374b1e46b5E"),
            "hyp_core::vm::host_call"
        );
        assert_eq!(
            readable("_ZN4vgic4mmio34_$LT$impl$u20$vgic..dist..Vgic$GT$4mmio17hd7195227ede4004bE"),
            "vgic::mmio::<impl vgic::dist::Vgic>::mmio"
        );
        assert_eq!(readable("__guest_enter"), "__guest_enter");
    }
}
