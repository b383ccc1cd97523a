//! `cargo xtask profile METRIC`: where one exit's instructions go.
//!
//! The bench gives one number per exit; this says which functions execute
//! those instructions. It boots the bench image twice on QEMU virt under
//! `-icount shift=0` with QEMU's execution trace on (`-d
//! in_asm,exec,nochain,int`: every translated block once, with its
//! instructions, a line per block executed, and the exceptions taken, which
//! with QEMU's other notes tell where a block stopped early: see
//! [`Trace::read`]), each boot running only the chosen metric in
//! guest-bench (`guests=guest-bench:p:v1:lazy:arg=...`, see `profile` in
//! guest-bench), the second with twice the iterations of the first. Everything else in the two
//! boots is the same, so the difference of the two traces, divided by the
//! difference in iterations, is what one iteration executes: block counts
//! times block sizes, summed per function of the hypervisor, the host VM and
//! the guest (their ELF symbol tables; their addresses do not overlap). The
//! total includes the guest's timing loop (counter reads), which the bench
//! subtracts.
//!
//! Most metrics run in one one-vCPU VM on one CPU. `vcpu_switch` adds the
//! partner VM that yields (as in the bench; told the iterations, so it
//! yields long enough for them), and one iteration is a whole round trip,
//! two switches: the bench reports half of it. `sgi_latency` boots one VM
//! with two vCPUs on `-smp 2`; the trace holds both CPUs' blocks (QEMU runs
//! them in turn on one thread under `-icount`), so the cost is summed over
//! the CPUs, including what the waiting CPU executes meanwhile.
//! `vtimer_latency`'s and `sgi_latency`'s iterations hold more than the
//! bench's span (which runs from the timer's compare value, or from just
//! before the SGI is sent, to the first instruction of the guest's IRQ
//! vector): programming the timer and the guest's wait, the guest's
//! handler after the vector's first instructions.
//!
//! Functions are the compiled ones: code inlined into a caller counts for the
//! caller. `--blocks` adds the hypervisor's translated blocks that run per
//! iteration, each with the source line of its first instruction (the
//! `addr2line` program of binutils, run once over all of them: neither the
//! `addr2line` nor the `gimli` crate is in the workspace), which shows where
//! inside an inlined function the instructions go. The traces are large
//! (hundreds of MB to a few GB each) and are deleted once read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::{Object, ObjectSymbol, SymbolKind, SymbolSection};

use crate::{note, provision, root, target_dir, Platform, Result};

// The metrics guest-bench's profile mode runs, by index from 1: guest-bench's
// own list (the guest prints the name it runs and xtask checks it).
#[path = "../../crates/guest-bench/src/profile_metrics.rs"]
mod profile_metrics;

fn metrics() -> &'static [&'static str] {
    &profile_metrics::PROFILE_METRICS
}

/// guest-bench's `arg=` of the `vcpu_switch` partner VM (`PARTNER`), the
/// round trips it serves above.
const PARTNER: u64 = 0x83;

/// The QEMU CPUs and the `guests=` list of a profiling boot of `metric`
/// (index `index` in the list) over `iterations`.
fn boot_setup(metric: &str, index: usize, iterations: u64) -> (u32, String) {
    let arg = index as u64 | iterations << 8;
    match metric {
        // The bench's first boot: VM 1 measures, VM 2 yields.
        "vcpu_switch" => (
            1,
            format!(
                "guest-bench:p:lazy:arg={arg},guest-bench:arg={}",
                PARTNER | iterations << 8
            ),
        ),
        // The bench's second boot: two vCPUs on two CPUs.
        "sgi_latency" => (2, format!("guest-bench:v2:arg={arg}")),
        _ => (1, format!("guest-bench:p:v1:lazy:arg={arg}")),
    }
}

/// Iterations of the longer boot per bench figure: `vcpu_switch`'s is half
/// a round trip.
fn switches_per_iteration(metric: &str) -> u64 {
    if metric == "vcpu_switch" {
        2
    } else {
        1
    }
}

/// A translated block: its first instruction's address and its
/// instructions. QEMU may translate code at one address into blocks of
/// different lengths (under `-icount`, a block cut where the instruction
/// budget ends, e.g. at a timer's deadline, or before an I/O access), so
/// both make the key.
type Tb = (u64, u64);

/// Per translated block: how often it ran, in all and inside spans (see
/// [`Trace::read`]).
#[derive(Debug, Default)]
pub struct Trace {
    count: HashMap<Tb, u64>,
    /// Executions inside the spans.
    in_span: HashMap<Tb, u64>,
    /// Executions up to the last span end (inclusive).
    to_last_end: HashMap<Tb, u64>,
    /// Spans closed.
    spans: u64,
}

/// The last execution counted, while it may still be corrected.
#[derive(Debug, Clone, Copy)]
struct LastExec {
    cpu: u32,
    tb: Tb,
    /// It was counted in the open span.
    in_open: bool,
    /// It ended a span: the tail went to `to_last_end` with it.
    ended: bool,
}

impl Trace {
    /// Reads a QEMU `-d in_asm,exec,nochain,int` log. With `span` (start,
    /// end block addresses) it also counts the blocks executed (on any CPU)
    /// from the last execution of `start` before each execution of `end`
    /// to that `end` (`start` counted, `end` not), and those executed up to
    /// the last `end`.
    ///
    /// A block's length comes from its listing (`IN:`), which QEMU writes
    /// when it translates the block, just before running it: the next
    /// execution line with that address names the translation (its host
    /// code pointer) that later execution lines name again.
    ///
    /// An execution line is written when a block is entered; three things
    /// stop a block early, and the execution then counts as the block's
    /// first instructions only: a synchronous exception (a data abort, a
    /// trapped instruction: `Taking exception` and its `ELR`, the faulting
    /// instruction, inside the block), an I/O access under `-icount` not at
    /// the end of its block (`cpu_io_recompile: rewound execution of TB to
    /// ADDR`: the access runs again as a block of its own), and a block left
    /// at its entry for a pending interrupt (`Stopped execution of TB chain
    /// before`: none of it ran; it runs again later).
    pub fn read(r: impl BufRead, span: Option<(u64, u64)>) -> std::io::Result<Self> {
        let mut t = Trace::default();
        // Listed blocks not run yet: address -> length.
        let mut listed: HashMap<u64, u64> = HashMap::new();
        // (host code pointer, address) -> length.
        let mut translation: HashMap<(u64, u64), u64> = HashMap::new();
        // Address -> length of its last listing (for an execution line whose
        // translation was not seen).
        let mut last: HashMap<u64, u64> = HashMap::new();
        // The current span's counts, while one is open.
        let mut open: Option<HashMap<Tb, u64>> = None;
        // Since the last end.
        let mut tail: HashMap<Tb, u64> = HashMap::new();
        let mut last_exec: Option<LastExec> = None;
        // A synchronous exception being logged: its CPU.
        let mut exception: Option<u32> = None;
        // The block being listed: (first PC, instructions so far); u64::MAX
        // until its first instruction line.
        let mut block: Option<(u64, u64)> = None;
        fn end_block(
            block: Option<(u64, u64)>,
            listed: &mut HashMap<u64, u64>,
            last: &mut HashMap<u64, u64>,
        ) {
            if let Some((pc, n)) = block.filter(|b| b.0 != u64::MAX) {
                listed.insert(pc, n);
                last.insert(pc, n);
            }
        }
        // Counts `e` as having run only up to `stop` (an address in it).
        let cut = |t: &mut Trace,
                   open: &mut Option<HashMap<Tb, u64>>,
                   tail: &mut HashMap<Tb, u64>,
                   e: LastExec,
                   stop: u64| {
            let (pc, size) = e.tb;
            if !(pc..pc + 4 * size).contains(&stop) {
                return;
            }
            let ran = (pc, (stop - pc) / 4);
            let move_one = |m: &mut HashMap<Tb, u64>| {
                if let Some(n) = m.get_mut(&e.tb) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&e.tb);
                    }
                    if ran.1 > 0 {
                        *m.entry(ran).or_default() += 1;
                    }
                }
            };
            move_one(&mut t.count);
            if span.is_some() {
                move_one(if e.ended { &mut t.to_last_end } else { tail });
            }
            if let (true, Some(m)) = (e.in_open, open.as_mut()) {
                move_one(m);
            }
        };
        for line in r.split(b'\n') {
            let line = line?;
            if line.starts_with(b"IN:") {
                end_block(block.take(), &mut listed, &mut last);
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
                end_block(block.take(), &mut listed, &mut last);
                let Some((cpu, ptr, pc)) = exec_line(&line) else {
                    continue;
                };
                let size = match listed.remove(&pc) {
                    Some(n) => {
                        translation.insert((ptr, pc), n);
                        n
                    }
                    None => match translation.get(&(ptr, pc)).or(last.get(&pc)) {
                        Some(&n) => n,
                        // Never listed: no length to count with.
                        None => continue,
                    },
                };
                let tb = (pc, size);
                let mut e = LastExec {
                    cpu,
                    tb,
                    in_open: false,
                    ended: false,
                };
                *t.count.entry(tb).or_default() += 1;
                if let Some((start, end)) = span {
                    *tail.entry(tb).or_default() += 1;
                    if pc == start {
                        open.get_or_insert_with(HashMap::new).clear();
                    } else if pc == end {
                        for (tb, n) in tail.drain() {
                            *t.to_last_end.entry(tb).or_default() += n;
                        }
                        e.ended = true;
                        if let Some(counts) = open.take() {
                            for (tb, n) in counts {
                                *t.in_span.entry(tb).or_default() += n;
                            }
                            t.spans += 1;
                        }
                    }
                    if let Some(counts) = open.as_mut() {
                        *counts.entry(tb).or_default() += 1;
                        e.in_open = true;
                    }
                }
                last_exec = Some(e);
            } else if let Some(rest) = line.strip_prefix(b"Taking exception ") {
                // "Taking exception 4 [Data Abort] on CPU 0"; asynchronous
                // ones are taken between blocks.
                let asynchronous = [&b"IRQ"[..], b"FIQ", b"SError", b"Virtual"]
                    .iter()
                    .any(|k| rest.windows(k.len()).any(|w| w == *k));
                exception = (!asynchronous)
                    .then(|| {
                        let cpu = rest.rsplit(|&b| b == b' ').next()?;
                        std::str::from_utf8(cpu).ok()?.trim().parse().ok()
                    })
                    .flatten();
            } else if let Some(elr) = line.strip_prefix(b"...with ELR 0x") {
                if let (Some(cpu), Some(e), Some(elr)) = (exception.take(), last_exec, hex(elr)) {
                    if e.cpu == cpu {
                        cut(&mut t, &mut open, &mut tail, e, elr);
                        last_exec = None;
                    }
                }
            } else if let Some(addr) =
                line.strip_prefix(b"cpu_io_recompile: rewound execution of TB to ")
            {
                if let (Some(e), Some(addr)) = (last_exec.take(), hex(addr)) {
                    cut(&mut t, &mut open, &mut tail, e, addr);
                }
            } else if line.starts_with(b"Stopped execution of TB chain before ") {
                // "... before 0x7f.. [0000000040204d68]": that block, just
                // entered, ran none of its instructions.
                let pc = line
                    .iter()
                    .rposition(|&b| b == b'[')
                    .and_then(|i| line.get(i + 1..i + 17))
                    .and_then(hex);
                if let (Some(e), Some(pc)) = (last_exec, pc) {
                    if e.tb.0 == pc {
                        cut(&mut t, &mut open, &mut tail, e, pc);
                        last_exec = None;
                    }
                }
            } else if line.is_empty() {
                end_block(block.take(), &mut listed, &mut last);
            }
        }
        Ok(t)
    }

    /// The blocks executed more (or less) often in `self` than in `base`:
    /// the difference per iteration, sorted by address.
    pub fn per_iteration(&self, base: &Trace, iterations: u64) -> Vec<Block> {
        self.difference(base, iterations, |t| &t.count)
    }

    /// [`Trace::per_iteration`] of the executions up to the last span end.
    pub fn per_iteration_to_last_end(&self, base: &Trace, iterations: u64) -> Vec<Block> {
        self.difference(base, iterations, |t| &t.to_last_end)
    }

    /// [`Trace::per_iteration`] of the executions inside spans, and the
    /// spans per iteration.
    pub fn per_iteration_in_span(&self, base: &Trace, iterations: u64) -> (Vec<Block>, f64) {
        (
            self.difference(base, iterations, |t| &t.in_span),
            (self.spans as f64 - base.spans as f64) / iterations as f64,
        )
    }

    fn difference(
        &self,
        base: &Trace,
        iterations: u64,
        counts: fn(&Trace) -> &HashMap<Tb, u64>,
    ) -> Vec<Block> {
        let mut out = Vec::new();
        let tbs = counts(self).keys().chain(
            counts(base)
                .keys()
                .filter(|tb| !counts(self).contains_key(tb)),
        );
        for &(pc, size) in tbs {
            let n = |t: &Trace| counts(t).get(&(pc, size)).copied().unwrap_or(0) as i64;
            let d = n(self) - n(base);
            if d != 0 {
                out.push(Block {
                    pc,
                    size,
                    execs: d as f64 / iterations as f64,
                    insns: (d * size as i64) as f64 / iterations as f64,
                });
            }
        }
        out.sort_by_key(|b| (b.pc, b.size));
        out
    }
}

/// One translated block's share of an iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Its first instruction's address.
    pc: u64,
    /// Its instructions.
    size: u64,
    /// Executions per iteration.
    execs: f64,
    /// Instructions per iteration (`execs * size`).
    insns: f64,
}

fn hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn insn_addr(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b':')?;
    hex(line.get(2..end)?)
}

/// An execution line's CPU, host code pointer and guest address.
fn exec_line(line: &[u8]) -> Option<(u32, u64, u64)> {
    let cpu = line.split(|&b| b == b' ').nth(1)?;
    let cpu = std::str::from_utf8(cpu.strip_suffix(b":")?)
        .ok()?
        .parse()
        .ok()?;
    let ptr = line.split(|&b| b == b' ').nth(2)?;
    let ptr = hex(ptr.strip_prefix(b"0x")?)?;
    let open = line.iter().position(|&b| b == b'[')?;
    let rest = &line[open + 1..];
    let first = rest.iter().position(|&b| b == b'/')?;
    let rest = &rest[first + 1..];
    let second = rest.iter().position(|&b| b == b'/')?;
    Some((cpu, ptr, hex(&rest[..second])?))
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

    /// The address of `component`'s function `name`.
    pub fn address(&self, component: &str, name: &str) -> Option<u64> {
        self.syms
            .iter()
            .find(|s| s.2 == component && s.3 == name)
            .map(|s| s.0)
    }

    /// The component and function containing `pc`.
    pub fn lookup(&self, pc: u64) -> (&'static str, &str) {
        let (c, name, _) = self.lookup_offset(pc);
        (c, name)
    }

    /// The component and function containing `pc`, and `pc`'s offset in it.
    pub fn lookup_offset(&self, pc: u64) -> (&'static str, &str, u64) {
        let i = self.syms.partition_point(|s| s.0 <= pc);
        match i.checked_sub(1).map(|i| &self.syms[i]) {
            Some((start, end, c, name)) if pc < *end => (c, name, pc - start),
            _ => ("?", "(no symbol)", 0),
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
    let (smp, guests) = boot_setup(name, index, iterations);
    let mut args = built.board.qemu_args(&built.qemu_kernel, Some(smp));
    args.extend([
        "-append".to_owned(),
        format!("guests={guests}"),
        "-icount".to_owned(),
        "shift=0".to_owned(),
        "-d".to_owned(),
        "in_asm,exec,nochain,int".to_owned(),
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

fn read_trace(path: &Path, span: Option<(u64, u64)>) -> Result<Trace> {
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let t = Trace::read(BufReader::with_capacity(1 << 20, f), span)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if std::env::var_os("HYP_PROFILE_KEEP").is_none() {
        let _ = std::fs::remove_file(path);
    }
    Ok(t)
}

/// `cargo xtask profile METRIC --iterations N [--blocks]`.
pub fn profile(metric: &str, iterations: u64, blocks: bool) -> Result<()> {
    run(metric, iterations, blocks).map(|_| ())
}

/// The `cargo xtask test` step: profiles hvc_null and checks the traced total
/// is the bench figure plus the timing loop (a few dozen instructions), and
/// that the vector's `__hvc_fast` is where the call is answered.
pub fn check() -> Result<()> {
    let p = run("hvc_null", 200, false)?;
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
/// total, and the bench's own figure for one iteration of the metric
/// (`vcpu_switch`: twice the bench's, a round trip).
struct Profile {
    rows: Vec<(&'static str, String, f64)>,
    total: f64,
    figure: u64,
}

fn run(metric: &str, iterations: u64, blocks: bool) -> Result<Profile> {
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
    let span = match bench_span(metric) {
        Some(((c0, f0, o0), (c1, f1, o1))) => {
            let at = |c, f, o| {
                syms.address(c, f)
                    .map(|a| a + o)
                    .ok_or(format!("no {c} symbol {f} for {metric}'s span"))
            };
            Some((at(c0, f0, o0)?, at(c1, f1, o1)?))
        }
        None => None,
    };
    let a = read_trace(&logs[0], span)?;
    let b = read_trace(&logs[1], span)?;

    // With a span: the traces up to its last end, which leaves out the
    // boots' tails (on two CPUs they differ by where QEMU's round-robin
    // leaves each CPU, e.g. the host's wait for its other CPU at the end).
    let deltas = match span {
        Some(_) => b.per_iteration_to_last_end(&a, iterations),
        None => b.per_iteration(&a, iterations),
    };
    let (rows, total) = function_rows(&deltas, &syms);
    println!();
    println!(
        "{metric}: instructions per iteration, by function (inlined code counts for its caller){}",
        if span.is_some() {
            "; each trace up to the last span end (see below)"
        } else {
            ""
        }
    );
    print_rows(&rows);
    let (hyp, host) = (
        component_total(&deltas, &syms, "hyp"),
        component_total(&deltas, &syms, "host"),
    );
    if span.is_some() {
        println!("{total:>10.1}  total (with the guest's loop around the span)");
    } else {
        println!(
            "{total:>10.1}  total (with the guest's timing loop and the sorting of its samples)"
        );
    }
    // (+ 0.0: no "-0.0" for a sum of rows that cancel.)
    println!(
        "{:>10.1}  of it in the hypervisor, {:.1} in the host",
        hyp + 0.0,
        host + 0.0
    );
    let k = switches_per_iteration(metric);
    let baseline = crate::baseline::parse(
        &std::fs::read_to_string(crate::baseline::path()).unwrap_or_default(),
    )
    .ok()
    .and_then(|b| {
        b.board(crate::baseline::board_key(Platform::Qemu))
            .and_then(|m| m.iter().find(|(n, _)| n == metric).map(|(_, v)| *v))
    })
    .map_or_else(String::new, |v| format!("; bench/baseline.json: {v}"));
    println!(
        "bench figure for the same body (timing loop subtracted): {f_long} ({f_short} in the shorter boot){baseline}"
    );
    if let Some(why) = difference(metric, f_long) {
        println!("{why}");
    }
    if let Some(((_, f0, o0), (_, f1, o1))) = bench_span(metric) {
        let (in_span, spans) = b.per_iteration_in_span(&a, iterations);
        let (rows, total) = function_rows(&in_span, &syms);
        println!();
        println!(
            "{metric}: the bench's span alone, from the last {f0}+{o0:#x} before {f1}+{o1:#x} ({spans:.2} spans per iteration)"
        );
        print_rows(&rows);
        println!(
            "{total:>10.1}  total of the span (the bench's figure, {f_long}, differs by the instructions at its edges: before the start, and the vector's before its counter read)"
        );
    }
    if blocks {
        let elf = std::fs::read(&built.elf)
            .map_err(|e| format!("cannot read {}: {e}", built.elf.display()))?;
        let hyp_blocks: Vec<&Block> = deltas
            .iter()
            .filter(|d| syms.lookup(d.pc).0 == "hyp" && d.execs.abs() >= 0.5)
            .collect();
        let lines = source_lines(&built.elf, &elf, hyp_blocks.iter().map(|d| d.pc))?;
        println!();
        print!("{}", block_table(metric, &hyp_blocks, &syms, &lines, hyp));
    }
    note(&format!(
        "profile took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Profile {
        rows,
        total,
        figure: f_long * k,
    })
}

/// Per function (component, name) instructions per iteration of `deltas`,
/// the rows of at least half an instruction, largest first; and the total.
fn function_rows(deltas: &[Block], syms: &Symbols) -> (Vec<(&'static str, String, f64)>, f64) {
    let mut per_fn: HashMap<(&str, &str), f64> = HashMap::new();
    let mut total = 0.0;
    for d in deltas {
        *per_fn.entry(syms.lookup(d.pc)).or_default() += d.insns;
        total += d.insns;
    }
    let mut rows: Vec<(&'static str, String, f64)> = per_fn
        .into_iter()
        .filter(|r| r.1.abs() >= 0.5)
        .map(|((c, n), v)| (c, n.to_owned(), v))
        .collect();
    rows.sort_by(|x, y| y.2.total_cmp(&x.2).then_with(|| x.1.cmp(&y.1)));
    (rows, total)
}

fn print_rows(rows: &[(&'static str, String, f64)]) {
    for (component, name, insns) in rows {
        println!("{insns:>10.1}  {component:<5}  {name}");
    }
}

/// Where the bench's own span lies in an iteration that holds more: (start,
/// end) blocks as (component, symbol, offset). `vtimer_latency`: from the
/// hypervisor's vector for an IRQ from the guest (taken when the timer
/// fires) to the guest's IRQ vector, whose first instructions stamp the
/// counter. `sgi_latency`: from vCPU 0's call of `send_sgi_to` (the few
/// instructions before it, from the counter read, are not in it) to vCPU 1's
/// IRQ vector.
type Mark = (&'static str, &'static str, u64);
fn bench_span(metric: &str) -> Option<(Mark, Mark)> {
    let vector = ("guest", "bench_vectors", 0x280);
    match metric {
        "vtimer_latency" => Some((("hyp", "__hyp_vectors", 0x480), vector)),
        "sgi_latency" => Some((("guest", "guest_rt::gic::send_sgi_to", 0), vector)),
        _ => None,
    }
}

/// The instructions per iteration of `component`'s blocks.
fn component_total(deltas: &[Block], syms: &Symbols, component: &str) -> f64 {
    deltas
        .iter()
        .filter(|d| syms.lookup(d.pc).0 == component)
        .map(|d| d.insns)
        .sum()
}

/// How one iteration of the trace relates to the bench's figure `figure`,
/// where it is more than the timing loop.
fn difference(metric: &str, figure: u64) -> Option<String> {
    Some(match metric {
        "vcpu_switch" => format!(
            "one iteration here is a whole round trip, VM 1 to VM 2 and back (2 x {figure} = {}): the bench reports half",
            2 * figure
        ),
        "vtimer_latency" => "one iteration here also programs the timer, waits for it (the guest's loop, ~5,000), and after the guest's vector runs its handler, whose deactivation of the timer's interrupt exits again (the list register's EOI maintenance interrupt: the hypervisor's second IRQ exit); the bench counts from the compare value to the vector: the span below".to_owned(),
        "sgi_latency" => "both CPUs' instructions, in the order QEMU ran them (in turn, on one thread): one iteration here also holds vCPU 0's wait and vCPU 1's handler after its vector's first instructions; the bench counts from just before the SGI is sent to vCPU 1's vector: the span below. Fractions above are where the round-robin put the CPUs' turns (the two boots part when their iteration counts are printed); the span's counts are whole".to_owned(),
        _ => return None,
    })
}

/// Source lines of the addresses `pcs` in `elf` (at `path`): (innermost
/// inlined function, file:line), by address. Runs binutils' `addr2line`
/// once.
fn source_lines(
    path: &Path,
    elf: &[u8],
    pcs: impl Iterator<Item = u64>,
) -> Result<HashMap<u64, (String, String)>> {
    // Not needed for the lookup; confirms the file is the ELF read above.
    object::File::parse(elf).map_err(|e| format!("{}: {e}", path.display()))?;
    let input: String = pcs.map(|pc| format!("{pc:#x}\n")).collect();
    let mut child = Command::new("addr2line")
        .args(["-a", "-f", "-i", "-C", "-e"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start addr2line (binutils): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("addr2line: no stdin")?;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes())
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("addr2line: {e}"))?;
    writer
        .join()
        .map_err(|_| "addr2line: writer panicked")?
        .map_err(|e| format!("addr2line: {e}"))?;
    if !out.status.success() {
        return Err(format!("addr2line failed ({})", out.status));
    }
    let prefix = format!("{}/", root().display());
    Ok(parse_addr2line(
        &String::from_utf8_lossy(&out.stdout),
        &prefix,
    ))
}

/// `addr2line -a -f -i` output: per address line (`0x...`), pairs of lines
/// (function, file:line), innermost inlined frame first. Keeps the innermost
/// function and a location: its file:line, the file relative to `root` (a
/// prefix) when under it, the Rust library's and crates.io's shortened; where
/// the line is unknown (`?`: code the compiler made, not from one line), the
/// line of the call in the next frame out; where no frame has a source file
/// (the assembly), `(assembly: no line table)`.
fn parse_addr2line(out: &str, root: &str) -> HashMap<u64, (String, String)> {
    let short = |file: &str| -> String {
        let file = file.split(" (discriminator").next().unwrap_or(file);
        if let Some(rel) = file.strip_prefix(root) {
            return rel.to_owned();
        }
        // /rustc/<commit>/library/..., ~/.cargo/registry/src/<index>/<crate>/...
        for marker in ["/library/", "/registry/src/"] {
            if let Some(i) = file.find(marker) {
                let rest = &file[i + marker.len()..];
                return match marker {
                    "/library/" => format!("library/{rest}"),
                    _ => rest.split_once('/').map_or(rest, |r| r.1).to_owned(),
                };
            }
        }
        file.to_owned()
    };
    let mut map = HashMap::new();
    let mut lines = out.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(pc) = l
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        // (function, file:line), innermost first, up to the next address.
        let mut frames = Vec::new();
        while lines.peek().is_some_and(|l| !l.starts_with("0x")) {
            let func = lines.next().unwrap_or_default();
            let file = lines.next().unwrap_or_default();
            frames.push((func, file));
        }
        let Some(&(func, file)) = frames.first() else {
            continue;
        };
        let known = |f: &str| f.contains('/') && !f.ends_with(":?") && !f.ends_with(":0");
        let location = if known(file) {
            short(file)
        } else if !file.contains('/') {
            "(assembly: no line table)".to_owned()
        } else {
            let file = file.rsplit_once(':').map_or(file, |f| f.0);
            match frames.iter().skip(1).find(|f| known(f.1)) {
                Some(outer) => format!("{}, called at {}", short(file), short(outer.1)),
                None => short(file),
            }
        };
        map.insert(pc, (func.to_owned(), location));
    }
    map
}

/// The `--blocks` table: the hypervisor's blocks, by address.
fn block_table(
    metric: &str,
    blocks: &[&Block],
    syms: &Symbols,
    lines: &HashMap<u64, (String, String)>,
    hyp_total: f64,
) -> String {
    let mut out = format!(
        "{metric}: the hypervisor's translated blocks per iteration, by address (source: the block's first instruction; `in` the inlined function it lies in)\n"
    );
    out.push_str(&format!(
        "{:>18} {:>7} {:>5} {:>8}  {}\n",
        "address", "execs", "size", "insns", "function / source"
    ));
    let mut sum = 0.0;
    for b in blocks {
        let (_, func, off) = syms.lookup_offset(b.pc);
        let source = match lines.get(&b.pc) {
            Some((inl, file)) if !func.starts_with(inl.as_str()) && !inl.starts_with('$') => {
                format!("{file} (in {inl})")
            }
            Some((_, file)) => file.clone(),
            None => "?".to_owned(),
        };
        out.push_str(&format!(
            "{:>#18x} {:>7.2} {:>5} {:>8.1}  {func}+{off:#x}  {source}\n",
            b.pc, b.execs, b.size, b.insns
        ));
        sum += b.insns;
    }
    out.push_str(&format!(
        "{:>41.1}  total of these blocks ({hyp_total:.1} in all the hypervisor's; the rest in blocks run less than every other iteration)\n",
        sum
    ));
    out
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
        let t = Trace::read(SHORT.as_bytes(), None).unwrap();
        assert_eq!(t.count.get(&(0x4020_0000, 3)), Some(&2));
        assert_eq!(t.count.get(&(0x4000_0000, 2)), Some(&1));
        assert_eq!(t.count.len(), 2);
    }

    #[test]
    fn blocks_stopped_early_count_what_ran() {
        let listing = |pc: u64, n: u64| {
            let mut l = String::from("IN: \n");
            for i in 0..n {
                l.push_str(&format!("0x{:x}:  d503201f  nop\n", pc + 4 * i));
            }
            l + "\n"
        };
        let exec = |cpu: u32, ptr: u64, pc: u64| {
            format!("Trace {cpu}: 0x{ptr:x} [00000000/{pc:016x}/00000461/ff022200] \n")
        };
        let exception = |what: &str, cpu: u32, elr: u64| {
            format!("Taking exception 4 [{what}] on CPU {cpu}\n...from EL1 to EL2\n...with ESR 0x24/0x93890046\n...with ELR 0x{elr:x}\n...to EL2 PC 0x40200c00 PSTATE 0x23c9\n")
        };
        let mut log = String::new();
        // A data abort at the third of four instructions: two ran.
        log += &listing(0x100, 4);
        log += &exec(0, 0x7f01, 0x100);
        log += &exception("Data Abort", 0, 0x108);
        // An IRQ (between blocks; its ELR may be the block's own start, a
        // loop) and a call at a block's end (ELR after it): all of it ran.
        log += &exec(0, 0x7f01, 0x100);
        log += &exception("IRQ", 0, 0x100);
        log += &exec(0, 0x7f01, 0x100);
        log += &exception("Hypervisor Call", 0, 0x110);
        // Another CPU's exception does not cut CPU 0's block.
        log += &exec(0, 0x7f01, 0x100);
        log += &exception("Data Abort", 1, 0x104);
        // Entered and left at once for an interrupt: none of it ran.
        log += &listing(0x200, 3);
        log += &exec(0, 0x7f02, 0x200);
        log += "Stopped execution of TB chain before 0x7f02 [0000000000000200] \n";
        log += &exec(0, 0x7f02, 0x200);
        // An I/O access at the second instruction: one ran, then the access
        // as a block of its own.
        log += &listing(0x300, 3);
        log += &exec(0, 0x7f03, 0x300);
        log += "cpu_io_recompile: rewound execution of TB to 0000000000000304\n";
        log += &listing(0x304, 1);
        log += &exec(0, 0x7f04, 0x304);
        let t = Trace::read(log.as_bytes(), None).unwrap();
        let mut counts: Vec<_> = t.count.iter().map(|(&tb, &n)| (tb, n)).collect();
        counts.sort_unstable();
        assert_eq!(
            counts,
            [
                ((0x100, 2), 1),
                ((0x100, 4), 3),
                ((0x200, 3), 1),
                ((0x300, 1), 1),
                ((0x304, 1), 1)
            ]
        );
    }

    #[test]
    fn one_address_several_lengths() {
        // The 3-instruction block again, cut to 1 instruction (a new
        // translation, its own code pointer), run once; then the first
        // translation twice more.
        let log = format!(
            "{SHORT}----------------
IN: f
0x40200000:  14000010  nop

Trace 0: 0x7f2c07000500 [00000400/0000000040200000/00000461/ff022201] f
Trace 0: 0x7f2c07000340 [00000400/0000000040200000/00000461/ff022200] f
Trace 0: 0x7f2c07000340 [00000400/0000000040200000/00000461/ff022200] f
Trace 0: 0x7f2c07000500 [00000400/0000000040200000/00000461/ff022201] f
"
        );
        let t = Trace::read(log.as_bytes(), None).unwrap();
        assert_eq!(t.count[&(0x4020_0000, 3)], 4);
        assert_eq!(t.count[&(0x4020_0000, 1)], 2);
        let base = Trace::read(SHORT.as_bytes(), None).unwrap();
        let d = t.per_iteration(&base, 1);
        assert_eq!(
            d.iter()
                .map(|b| (b.size, b.execs, b.insns))
                .collect::<Vec<_>>(),
            [(1, 2.0, 2.0), (3, 2.0, 6.0)]
        );
    }

    #[test]
    fn per_iteration_is_the_difference() {
        let a = Trace::read(SHORT.as_bytes(), None).unwrap();
        // Four more executions of the 3-instruction block over 2 iterations.
        let more = format!(
            "{SHORT}{}",
            "Trace 0: 0x7f [00000400/0000000040200000/00000461/ff022200] f\n".repeat(4)
        );
        let b = Trace::read(more.as_bytes(), None).unwrap();
        let d = b.per_iteration(&a, 2);
        assert_eq!(
            d,
            vec![Block {
                pc: 0x4020_0000,
                size: 3,
                execs: 2.0,
                insns: 6.0
            }]
        );
        // Fewer executions count negative; blocks only one trace ran count
        // too; the result is by address.
        let c = Trace::read(
            "IN: g\n0x40100000:  d503201f  nop\n\nTrace 0: 0x7f [00000400/0000000040100000/00000461/ff022200] g\n"
                .as_bytes(),
            None,
        )
        .unwrap();
        let d = c.per_iteration(&a, 1);
        assert_eq!(
            d.iter().map(|b| b.pc).collect::<Vec<_>>(),
            [0x4000_0000, 0x4010_0000, 0x4020_0000]
        );
        assert_eq!(
            d.iter().map(|b| b.insns).collect::<Vec<_>>(),
            [-2.0, 1.0, -6.0]
        );
    }

    #[test]
    fn spans_run_from_the_last_start_to_the_end() {
        // Blocks: S (start, 2 insns) at 0x10, A (3) at 0x20, E (end, 1) at
        // 0x30, on two CPUs.
        let mut log = String::from(
            "IN: \n0x10:  0  nop\n0x14:  0  nop\n\nIN: \n0x20:  0  nop\n0x24:  0  nop\n0x28:  0  nop\n\nIN: \n0x30:  0  nop\n\n",
        );
        let exec = |cpu: u32, pc: u64| {
            format!("Trace {cpu}: 0x7f [00000000/{pc:016x}/00000461/ff022200] \n")
        };
        // A before any start and E without an open span: not in a span.
        for (cpu, pc) in [
            (0, 0x20),
            (1, 0x30),
            (0, 0x10),
            (0, 0x20),
            (0, 0x10),
            (1, 0x20),
            (1, 0x30),
            (0, 0x20),
        ] {
            log.push_str(&exec(cpu, pc));
        }
        let t = Trace::read(log.as_bytes(), Some((0x10, 0x30))).unwrap();
        assert_eq!(t.spans, 1);
        // The second S restarts the span: S once, A once (CPU 1's), E not.
        let mut in_span: Vec<_> = t.in_span.iter().map(|(&(pc, _), &n)| (pc, n)).collect();
        in_span.sort_unstable();
        assert_eq!(in_span, [(0x10, 1), (0x20, 1)]);
        assert_eq!(t.count[&(0x20, 3)], 4);
        // Up to the last end (CPU 1's second E): the last A left out.
        assert_eq!(t.to_last_end[&(0x20, 3)], 3);
        assert_eq!(t.to_last_end[&(0x30, 1)], 2);
        let base = Trace::read(log.as_bytes(), None).unwrap();
        let (d, spans) = t.per_iteration_in_span(&base, 1);
        assert_eq!(spans, 1.0);
        assert_eq!(d.iter().map(|b| b.insns).sum::<f64>(), 5.0);
    }

    #[test]
    fn every_profiled_metric_is_a_bench_metric_once() {
        for (i, m) in metrics().iter().enumerate() {
            assert!(crate::bench::GUEST_METRICS.contains(m), "{m}");
            assert!(!metrics()[..i].contains(m), "{m} twice");
        }
        // The bench's exit-cost rows (bench/baseline.json's "virt") that are
        // guest-bench's in the one-VM or two-vCPU boots all have a profile.
        for m in [
            "vtimer_latency",
            "vcpu_switch",
            "sgi_latency",
            "hvc_null",
            "s2_fault",
        ] {
            assert!(metrics().contains(&m), "{m}");
        }
    }

    #[test]
    fn boots_match_the_bench() {
        let index = |m: &str| metrics().iter().position(|x| *x == m).unwrap() + 1;
        // vcpu_switch: the bench's two VMs, the partner told the iterations.
        let (smp, g) = boot_setup("vcpu_switch", index("vcpu_switch"), 1000);
        assert_eq!(smp, 1);
        let arg = index("vcpu_switch") as u64 | 1000 << 8;
        assert_eq!(
            g,
            format!(
                "guest-bench:p:lazy:arg={arg},guest-bench:arg={}",
                0x83 | 1000 << 8
            )
        );
        // sgi_latency: two vCPUs on two CPUs, as in the bench's second boot.
        let (smp, g) = boot_setup("sgi_latency", index("sgi_latency"), 5);
        assert_eq!((smp, g.as_str()), (2, "guest-bench:v2:arg=1290"));
        let (smp, g) = boot_setup("vtimer_latency", 8, 500);
        assert_eq!((smp, g.as_str()), (1, "guest-bench:p:v1:lazy:arg=128008"));
        assert_eq!(switches_per_iteration("vcpu_switch"), 2);
        assert_eq!(switches_per_iteration("hvc_null"), 1);
    }

    #[test]
    fn addr2line_output_keeps_the_innermost_frame() {
        let out = "0x000000004020d360
hyp_core::vcpu::pmu::PmuState::new
/w/crates/hyp-core/src/vcpu/pmu/mod.rs:328
hyp_core::run::run_cpu
/w/crates/hyp-core/src/run/mod.rs:61
0x0000000040201bb4
__hvc_fast
hyp_core.80b1463634feedd8-cgu.0:?
0x0000000040201bc0
hyp_core::run::run_cpu
/w/crates/hyp-core/src/run/mod.rs:70 (discriminator 2)
0x000000004020eb74
vgic::cpuif::VcpuIf::flush
/rustc/5980/library/core/src/iter/range.rs:?
hyp_core::vcpu::gic::vgic_before_entry
/w/crates/hyp-core/src/vcpu/gic.rs:117
hyp_core::run::run_cpu
/w/crates/hyp-core/src/run/mod.rs:103
0x0000000040221260
spin::mutex::Mutex<T,R>::lock
/r/.cargo/registry/src/index.crates.io-1949/spin-0.10.1/src/mutex.rs:186
";
        let m = parse_addr2line(out, "/w/");
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[&0x4020_d360],
            (
                "hyp_core::vcpu::pmu::PmuState::new".to_owned(),
                "crates/hyp-core/src/vcpu/pmu/mod.rs:328".to_owned()
            )
        );
        assert_eq!(
            m[&0x4020_1bb4],
            (
                "__hvc_fast".to_owned(),
                "(assembly: no line table)".to_owned()
            )
        );
        assert_eq!(m[&0x4020_1bc0].1, "crates/hyp-core/src/run/mod.rs:70");
        assert_eq!(
            m[&0x4020_eb74].1,
            "library/core/src/iter/range.rs, called at crates/hyp-core/src/vcpu/gic.rs:117"
        );
        assert_eq!(m[&0x4022_1260].1, "spin-0.10.1/src/mutex.rs:186");
    }

    #[test]
    fn block_table_names_the_inlined_function_and_sums() {
        let mut syms = Symbols::default();
        syms.syms.push((
            0x4000_0000,
            0x4000_0100,
            "hyp",
            "hyp_core::run::run_cpu".to_owned(),
        ));
        let blocks = [
            Block {
                pc: 0x4000_0010,
                size: 4,
                execs: 1.0,
                insns: 4.0,
            },
            Block {
                pc: 0x4000_0040,
                size: 3,
                execs: 2.0,
                insns: 6.0,
            },
        ];
        let refs: Vec<&Block> = blocks.iter().collect();
        let mut lines = HashMap::new();
        lines.insert(
            0x4000_0010,
            ("hyp_core::run::run_cpu".to_owned(), "run.rs:5".to_owned()),
        );
        lines.insert(
            0x4000_0040,
            ("hyp_core::vcpu::load".to_owned(), "vcpu.rs:9".to_owned()),
        );
        let t = block_table("m", &refs, &syms, &lines, 12.0);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 5);
        assert!(
            rows[2].ends_with("hyp_core::run::run_cpu+0x10  run.rs:5"),
            "{}",
            rows[2]
        );
        assert!(
            rows[3].ends_with("+0x40  vcpu.rs:9 (in hyp_core::vcpu::load)"),
            "{}",
            rows[3]
        );
        assert!(
            rows[4].trim_start().starts_with("10.0  total"),
            "{}",
            rows[4]
        );
        assert!(rows[4].contains("12.0 in all"), "{}", rows[4]);
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
