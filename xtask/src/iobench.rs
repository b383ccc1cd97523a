//! `cargo xtask bench --linux-io`: what the hypervisor costs a Linux guest's
//! disk and network (issue 18's numbers), in exact instructions.
//!
//! The same Debian kernel and initramfs boot twice per run, on one CPU, under
//! `-icount shift=0,sleep=off` (the guest's clock advances one tick per
//! instruction, so timer interrupts come at the same instruction rate on both
//! paths):
//! - through the hypervisor: QEMU's virtio-blk-pci and virtio-net-pci behind
//!   the SMMU, driven by the host VM and served to the guest as virtio-mmio
//!   (`--disk`, `--net user`);
//! - directly: QEMU `virt` without the hypervisor, the kernel on QEMU's own
//!   virtio-mmio devices (`virtio-blk-device`, `virtio-net-device`).
//!
//! With `--protected` the two paths are instead the project's kernel
//! (xtask/src/kbuild.rs) as a normal VM and as a protected VM, both through
//! the hypervisor: what protection costs I/O (the bounce through the
//! restricted DMA pool, MMIO guard; issue 19's goal <= 1.3x).
//!
//! The counts come from the `insn-count` QEMU plugin (`crates/insn-count`):
//! every instruction every CPU executes, the guest's, the host VM's and the
//! hypervisor's alike, between two markers the guest executes with
//! `/bin/hyp-mark N` around each piece of work typed at its shell:
//! - block: `dd if=/dev/vda of=/dev/null bs=4096 count=REQUESTS iflag=direct`
//!   (O_DIRECT: one 4 KiB request each, no readahead);
//! - network receive: `wget` of 1 MiB from an HTTP server this bench runs on
//!   127.0.0.1 (the guest's 10.0.2.2), into the guest's tmpfs;
//! - network transmit: `wget --post-file` of 1 MiB to the same server.
//!
//! Each transfer is checked (byte counts, sha256 both ways).
//!
//! The counts are exact, but not the same from run to run: where the host
//! waits for QEMU's device (a block request's completion), it spins, and
//! QEMU completes the I/O in real time, so the spin's length depends on the
//! machine. Each path runs [`RUNS`] times; min, median and max are shown.
//! One CPU, so "summed over all physical CPUs" is that CPU (the plugin sums
//! all of them anyway). Results go to the terminal and to
//! `target/bench/linux-io.json`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::profile::Symbols;
use crate::{build_variant, insncount, linux, note, provision, target_dir, Platform, Result};

/// Block requests of 4 KiB each: 16 MiB.
const REQUESTS: u64 = 4096;
/// The disk: a little more than what is read.
const DISK_BYTES: u64 = 24 << 20;
/// Each HTTP transfer.
const NET_BYTES: usize = 1 << 20;
/// Boots per path.
const RUNS: usize = 3;
/// One boot's bound.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// What one boot measured: instructions between the markers.
#[derive(Debug, Clone, Copy)]
struct Sample {
    blk: u64,
    rx: u64,
    tx: u64,
    /// Through the hypervisor: the host's PCI disk requests over the whole
    /// boot and the counter ticks (instructions, under icount) it spent
    /// inside them, from its report when the VM stops.
    host_disk: Option<(u64, u64)>,
}

/// `host: linux: disk: R PCI requests, F failed, T counter ticks inside them; ...`
fn host_disk(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("host: linux: disk: ")?;
    let w: Vec<&str> = rest.split_whitespace().collect();
    match w.as_slice() {
        [r, "PCI", "requests,", _, "failed,", t, "counter", ..] => {
            Some((r.parse().ok()?, t.parse().ok()?))
        }
        _ => None,
    }
}

/// A booted QEMU whose guest shell is typed at.
pub(crate) struct Session {
    what: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    deadline: Instant,
}

impl Session {
    /// Starts QEMU with `args`; `what` names it in notes and errors
    /// (`linux-io: through the hypervisor, run 1`).
    pub(crate) fn start(what: &str, args: &[String]) -> Result<Session> {
        note(&format!("{what}: booting"));
        let mut child = Command::new(provision::QEMU)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))?;
        let stdin = child.stdin.take().ok_or("QEMU has no stdin")?;
        let stdout = child.stdout.take().ok_or("QEMU has no stdout")?;
        let (tx, lines) = mpsc::channel::<String>();
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
        Ok(Session {
            what: what.to_owned(),
            child,
            stdin,
            lines,
            log: Vec::new(),
            deadline: Instant::now() + BOOT_LIMIT,
        })
    }

    fn tail(&self) -> String {
        self.log[self.log.len().saturating_sub(20)..].join("\n")
    }

    /// The guest's next console line (without the hypervisor's `[vm1] ` tag).
    fn next(&mut self) -> Result<String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => {
                self.log.push(l.clone());
                Ok(l.strip_prefix("[vm1] ").unwrap_or(&l).trim().to_owned())
            }
            Err(_) => Err(format!(
                "{}: no more output (QEMU exited or {} s passed); last lines:\n{}",
                self.what,
                BOOT_LIMIT.as_secs(),
                self.tail()
            )),
        }
    }

    /// Reads lines up to one that starts with `end`; returns those before it.
    pub(crate) fn until(&mut self, end: &str) -> Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            let l = self.next()?;
            if l.starts_with(end) {
                return Ok(seen);
            }
            seen.push(l);
        }
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("{}: typing at the guest: {e}", self.what))
    }

    /// Types `cmd; echo END` and returns the lines up to END.
    fn run(&mut self, cmd: &str, end: &str) -> Result<Vec<String>> {
        self.type_line(&format!("{cmd}; echo {end}"))?;
        self.until(end)
    }

    fn fail(&self, why: &str) -> String {
        format!("{}: {why}; last lines:\n{}", self.what, self.tail())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's HTTP server on 127.0.0.1: `GET /in.bin` gets [`payload`];
/// a `POST` body is hashed and its sha256 kept for the bench to compare.
struct Server {
    port: u16,
    posted: Arc<Mutex<Option<(usize, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 1 MiB of xorshift64 bytes, none of them 0: busybox's `wget
/// --post-file` sends its file as a C string (it stops at the first NUL).
fn payload() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(NET_BYTES);
    while out.len() < NET_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x % 255) as u8 + 1);
    }
    out
}

/// One request on `s`: the headers, then a GET's answer or a POST's body.
fn serve_one(mut s: TcpStream, body: &[u8], posted: &Mutex<Option<(usize, String)>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    if first.starts_with("POST ") {
        let mut got = vec![0u8; length];
        if r.read_exact(&mut got).is_ok() {
            *posted.lock().unwrap_or_else(|e| e.into_inner()) = Some((got.len(), sha256_hex(&got)));
        }
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    } else {
        let _ = write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(body);
    }
}

fn server(body: Arc<Vec<u8>>) -> Result<Server> {
    let l =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("linux-io: HTTP server: {e}"))?;
    let port = l
        .local_addr()
        .map_err(|e| format!("linux-io: HTTP server: {e}"))?
        .port();
    let posted = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let (p, st) = (posted.clone(), stop.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            if st.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(s) = s {
                serve_one(s, &body, &p);
            }
        }
    });
    Ok(Server { port, posted, stop })
}

/// One boot: the block read, then the network both ways.
fn measure(
    what: &str,
    args: &[String],
    counts: &Path,
    srv: &Server,
    want: &str,
    through_host: bool,
) -> Result<(Sample, insncount::Marks)> {
    let _ = std::fs::remove_file(counts);
    let mut s = Session::start(&format!("linux-io: {what}"), args)?;
    s.until("LINUX-GUEST-SHELL:")?;
    // Block.
    let out = s.run(
        &format!("hyp-mark 0; dd if=/dev/vda of=/dev/null bs=4096 count={REQUESTS} iflag=direct; hyp-mark 1"),
        "IO-BLK-DONE",
    )?;
    if !out
        .iter()
        .any(|l| l.starts_with(&format!("{REQUESTS}+0 records in")))
    {
        return Err(s.fail(&format!("dd did not read {REQUESTS} blocks")));
    }
    // The network: an address by DHCP (eth0 appears when virtio_net probes).
    let out = s.run(
        "i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; ip link set eth0 up; udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/udhcpc.script >/dev/null 2>&1 && echo IO-NET-UP",
        "IO-NET-SETUP",
    )?;
    if !out.iter().any(|l| l == "IO-NET-UP") {
        return Err(s.fail("no DHCP lease on eth0"));
    }
    let url = format!("http://10.0.2.2:{}", srv.port);
    // Receive: 1 MiB into tmpfs; checked after the second marker.
    let out = s.run(
        &format!("hyp-mark 2; timeout 120 wget -q -O /tmp/in.bin {url}/in.bin; hyp-mark 3; echo IO-RX-SHA $(sha256sum /tmp/in.bin)"),
        "IO-RX-DONE",
    )?;
    if !out
        .iter()
        .any(|l| l.starts_with(&format!("IO-RX-SHA {want}")))
    {
        return Err(s.fail("the guest's copy of in.bin does not match"));
    }
    // Transmit: the same bytes back, posted.
    *srv.posted.lock().unwrap_or_else(|e| e.into_inner()) = None;
    s.run(
        &format!("hyp-mark 4; timeout 120 wget -q -O /dev/null --post-file=/tmp/in.bin {url}/up; hyp-mark 5"),
        "IO-TX-DONE",
    )?;
    let posted = srv.posted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if posted.as_ref().map(|(n, h)| (*n, h.as_str())) != Some((NET_BYTES, want)) {
        return Err(s.fail(&format!("the server got {posted:?}, not the 1 MiB sent")));
    }
    s.type_line("poweroff -f")?;
    let host_disk = if through_host {
        s.until("host: linux: disk: ")?;
        s.log.last().and_then(|l| host_disk(l))
    } else {
        None
    };
    drop(s);
    let m = insncount::read(counts)?;
    let sample = Sample {
        blk: insncount::between(&m, 0, 1)?.total(),
        rx: insncount::between(&m, 2, 3)?.total(),
        tx: insncount::between(&m, 4, 5)?.total(),
        host_disk,
    };
    Ok((sample, m))
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

/// QEMU `virt` without the hypervisor, as the Linux benches boot it: one
/// CPU, 1 GiB, `-icount shift=0,sleep=off`, the insn-count plugin writing
/// `counts` (profiling `marks`), and `kernel`, `initrd` and `cmdline`.
pub fn bare_virt(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    counts: &Path,
    marks: Option<(u32, u32)>,
) -> Result<Vec<String>> {
    let mut a = strings(&[
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
    ]);
    a.extend(insncount::qemu_args(&insncount::plugin()?, counts, marks));
    a.extend([
        "-kernel".to_owned(),
        kernel.display().to_string(),
        "-initrd".to_owned(),
        initrd.display().to_string(),
        "-append".to_owned(),
        cmdline.to_owned(),
    ]);
    Ok(a)
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// min, median, max of `v` (sorted in place).
fn spread(v: &mut [u64]) -> (u64, u64, u64) {
    v.sort_unstable();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// A table row: its name, the sample's figure, the work units in it, the
/// JSON key.
type Row = (&'static str, fn(&Sample) -> u64, f64, &'static str);

/// The markers around each piece of work (`--profile WORK`).
fn work_marks(work: &str) -> Result<(u32, u32)> {
    match work {
        "blk" => Ok((0, 1)),
        "rx" => Ok((2, 3)),
        "tx" => Ok((4, 5)),
        _ => Err(format!("--profile {work:?}: expected blk, rx or tx")),
    }
}

/// Where a profiled path's instructions went: per component (the
/// hypervisor, the host VM, Linux's kernel, Linux's user space) and the
/// functions with the most, per unit of work (`per`). Linux's kernel is
/// one bucket: Debian ships its symbols only in a separate -dbg package
/// (its System.map is a placeholder), and it is the same kernel on both
/// paths.
fn print_profile(path: &str, m: &insncount::Marks, syms: &Symbols, per: f64, unit: &str) {
    let mut comp: HashMap<&str, u64> = HashMap::new();
    let mut func: HashMap<(&str, &str), u64> = HashMap::new();
    let mut total = 0;
    for &(pc, n) in &m.profile {
        let (c, f) = match syms.lookup(pc) {
            ("?", _) if pc >= 0xffff_0000_0000_0000 => ("linux", "(the kernel)"),
            ("?", _) => ("user", "(user space)"),
            cf => cf,
        };
        *comp.entry(c).or_default() += n;
        *func.entry((c, f)).or_default() += n;
        total += n;
    }
    println!();
    println!(
        "{path}: {:.0} instructions per {unit} (translation blocks counted whole)",
        total as f64 / per
    );
    let mut comps: Vec<_> = comp.into_iter().collect();
    comps.sort_by_key(|c| std::cmp::Reverse(c.1));
    for (c, n) in comps {
        println!(
            "  {c:<8} {:>12.0} {:>6.1}%",
            n as f64 / per,
            100.0 * n as f64 / total.max(1) as f64
        );
    }
    let mut funcs: Vec<_> = func.into_iter().collect();
    funcs.sort_by_key(|f| std::cmp::Reverse(f.1));
    for ((c, f), n) in funcs.into_iter().take(PROFILE_ROWS) {
        println!(
            "  {:>12.0} {:>6.1}%  {c:<6} {f}",
            n as f64 / per,
            100.0 * n as f64 / total.max(1) as f64
        );
    }
}

/// Functions shown per profiled path.
const PROFILE_ROWS: usize = 25;

/// The bench: both paths [`RUNS`] times, the table and the JSON; with
/// `profile` (blk, rx or tx), one run of each path profiled instead.
pub fn linux_io(profile: Option<&str>, protected: bool) -> Result<()> {
    let marks = profile.map(work_marks).transpose()?;
    // Against a protected VM: the project's kernel (Debian's cannot be one).
    let k = linux::kernel(if protected {
        linux::KernelSource::Built
    } else {
        linux::KernelSource::Debian
    })?;
    let plugin = insncount::plugin()?;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let img = dir.join("linux-io-disk.img");
    disk(&img)?;
    let guest = linux::GuestOpts {
        disk: Some(img.clone()),
        net: Some("user".to_owned()),
        ..k.guest(1)
    };
    let prepared = linux::prepare(&guest, None)?;
    let built = build_variant(Platform::Qemu, &[])?;
    provision::qemu()?;
    let icount = strings(&["-icount", "shift=0,sleep=off"]);
    let hyp_counts = dir.join("linux-io-hyp.counts");
    let direct_counts = dir.join("linux-io-direct.counts");
    let mut hyp = built.board.qemu_args(&built.qemu_kernel, Some(1));
    hyp.extend(icount.iter().cloned());
    hyp.extend(insncount::qemu_args(&plugin, &hyp_counts, marks));
    hyp.extend(prepared.qemu_args.iter().cloned());
    hyp.extend(["-append".to_owned(), prepared.bootargs.clone()]);
    // The unpacked kernel `prepare` wrote, booted by QEMU itself.
    let kernel = &prepared.kernel_file;
    let cmdline = prepared
        .bootargs
        .split_once(" -- ")
        .map_or(linux::BASE_CMDLINE, |(_, c)| c);
    // The second path: the same kernel as a protected VM (`--protected`),
    // or on QEMU without the hypervisor.
    let (second, goal) = if protected {
        ("protected", 1.3)
    } else {
        ("direct", 1.5)
    };
    let protected_args = if protected {
        let p = linux::prepare(
            &linux::GuestOpts {
                protected: true,
                ..guest.clone()
            },
            None,
        )?;
        let mut a = built.board.qemu_args(&built.qemu_kernel, Some(1));
        a.extend(strings(&["-icount", "shift=0,sleep=off"]));
        a.extend(insncount::qemu_args(&plugin, &direct_counts, marks));
        a.extend(p.qemu_args.iter().cloned());
        a.extend(["-append".to_owned(), p.bootargs.clone()]);
        Some(a)
    } else {
        None
    };
    let mut direct = bare_virt(kernel, &k.initrd, cmdline, &direct_counts, marks)?;
    direct.extend([
        "-drive".to_owned(),
        format!("file={},if=none,format=raw,id=d0", img.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=d0".to_owned(),
        "-netdev".to_owned(),
        "user,id=n0".to_owned(),
        "-device".to_owned(),
        "virtio-net-device,netdev=n0".to_owned(),
    ]);
    let direct = protected_args.unwrap_or(direct);
    let body = Arc::new(payload());
    let want = sha256_hex(&body);
    let srv = server(body)?;
    if let (Some(work), Some(_)) = (profile, marks) {
        let mut syms = Symbols::default();
        let host = target_dir()
            .join(&built.board.guest_target)
            .join("release")
            .join("host");
        for (component, path) in [("hyp", &built.elf), ("host", &host)] {
            let elf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            syms.add(component, &elf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let (per, unit) = if work == "blk" {
            (REQUESTS as f64, "4 KiB request")
        } else {
            (1.0, "MiB")
        };
        let (_, m) = measure(
            "through the hypervisor, profiled",
            &hyp,
            &hyp_counts,
            &srv,
            &want,
            true,
        )?;
        print_profile("through the hypervisor", &m, &syms, per, unit);
        let (_, m) = measure(
            &format!("{second}, profiled"),
            &direct,
            &direct_counts,
            &srv,
            &want,
            protected,
        )?;
        print_profile(second, &m, &syms, per, unit);
        return Ok(());
    }
    let mut with = Vec::new();
    let mut bare = Vec::new();
    for i in 0..RUNS {
        let w = measure(
            &format!("through the hypervisor, run {}", i + 1),
            &hyp,
            &hyp_counts,
            &srv,
            &want,
            true,
        )?
        .0;
        note(&format!("linux-io: hypervisor run {}: {w:?}", i + 1));
        with.push(w);
        let d = measure(
            &format!("{second}, run {}", i + 1),
            &direct,
            &direct_counts,
            &srv,
            &want,
            protected,
        )?
        .0;
        note(&format!("linux-io: {second} run {}: {d:?}", i + 1));
        bare.push(d);
    }
    let rows: [Row; 3] = [
        (
            "block read, per 4 KiB request",
            |s| s.blk,
            REQUESTS as f64,
            "blk",
        ),
        ("HTTP receive, per 1 MiB", |s| s.rx, 1.0, "net_rx"),
        ("HTTP transmit, per 1 MiB", |s| s.tx, 1.0, "net_tx"),
    ];
    let mib = |key: &str| match key {
        "blk" => (REQUESTS * 4096) as f64 / f64::from(1 << 20),
        _ => NET_BYTES as f64 / f64::from(1 << 20),
    };
    println!();
    println!(
        "Linux guest I/O in exact instructions (insn-count plugin, summed over all CPUs; 1 CPU, -icount shift=0,sleep=off; {RUNS} runs each)"
    );
    println!(
        "{:<32} {:<10} {:>13} {:>13} {:>13} {:>14}",
        "", "path", "min", "median", "max", "MiB/1e9 insns"
    );
    let mut json = Vec::new();
    for (name, get, per, key) in rows {
        let mut h: Vec<u64> = with.iter().map(get).collect();
        let mut d: Vec<u64> = bare.iter().map(get).collect();
        let (hs, ds) = (spread(&mut h), spread(&mut d));
        let first = if protected { "normal" } else { "hypervisor" };
        for (path, (lo, med, hi)) in [(first, hs), (second, ds)] {
            println!(
                "{name:<32} {path:<10} {:>13.0} {:>13.0} {:>13.0} {:>14.2}",
                lo as f64 / per,
                med as f64 / per,
                hi as f64 / per,
                mib(key) / (med as f64 / 1e9)
            );
        }
        // Protection's cost (protected over normal), or the hypervisor's
        // (through it over direct).
        let ratio = if protected {
            ds.1 as f64 / hs.1 as f64
        } else {
            hs.1 as f64 / ds.1 as f64
        };
        println!("{:<32} ratio of medians {ratio:.2}x (goal <= {goal}x)", "");
        json.push(format!(
            "\"{key}\": {{\"hyp\": {h:?}, \"{second}\": {d:?}, \"ratio_of_medians\": {ratio:.3}}}"
        ));
    }
    let waits: Vec<u64> = with
        .iter()
        .filter_map(|s| s.host_disk.map(|(r, t)| t / r.max(1)))
        .collect();
    println!(
        "through the hypervisor, the host spent {waits:?} counter ticks (= instructions under icount) per PCI disk request inside virtio-drivers' call, which spins until QEMU completes it"
    );
    let text = format!(
        "{{\"requests\": {REQUESTS}, \"request_bytes\": 4096, \"net_bytes\": {NET_BYTES}, {}}}\n",
        json.join(", ")
    );
    let out = dir.join(if protected {
        "linux-io-protected.json"
    } else {
        "linux-io.json"
    });
    std::fs::write(&out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    note(&format!("linux-io: written {}", out.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hosts_disk_line() {
        assert_eq!(
            host_disk("host: linux: disk: 4110 PCI requests, 0 failed, 351234000 counter ticks inside them; device sound"),
            Some((4110, 351_234_000))
        );
        assert_eq!(host_disk("host: linux: network: sent 3 frames"), None);
    }

    #[test]
    fn payload_has_no_nul_and_is_a_mebibyte() {
        let p = payload();
        assert_eq!(p.len(), NET_BYTES);
        assert!(!p.contains(&0));
    }
}
