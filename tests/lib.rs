//! QEMU integration-test harness: boots the image `cargo xtask test` built and checks what it prints.
//!
//! `cargo xtask test` sets `HYP_IMAGE_QEMU` (the flat image) and
//! `HYP_BOARD_DIR` (platforms/qemu); [`Qemu::boot`] builds the QEMU command
//! line from that board.toml exactly like `cargo xtask run`, captures the
//! serial output line by line, and panics with the whole log on any failure.
//! For the Raspberry Pi 4 ([`TestBoard::Rpi4`], [`TestBoard::Rpi4Kernel8`]) it
//! also sets `HYP_IMAGE_RPI4` (the ELF that `cargo xtask run --platform rpi4`
//! boots), `HYP_KERNEL8_RPI4` (the SD card's kernel8.img) and
//! `HYP_BOARD_DIR_RPI4` (platforms/rpi4).
//!
//! ```no_run
//! use hyp_tests::{BootOptions, Qemu};
//! use std::time::Duration;
//!
//! let mut qemu = Qemu::boot(BootOptions::scenario("hello"));
//! qemu.expect_line("hyp: booting on qemu-virt", Duration::from_secs(30));
//! assert_eq!(qemu.expect_exit(Duration::from_secs(60)), 0);
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use board::Board;

/// Which image boots, on which QEMU machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TestBoard {
    /// QEMU virt with the flat image (`HYP_IMAGE_QEMU`, `HYP_BOARD_DIR`).
    #[default]
    QemuVirt,
    /// QEMU raspi4b with the hypervisor's ELF, as `cargo xtask run --platform
    /// rpi4` boots it: every core enters at EL3 (`HYP_IMAGE_RPI4`,
    /// `HYP_BOARD_DIR_RPI4`).
    Rpi4,
    /// QEMU raspi4b with the SD card's kernel8.img as a raw arm64 Image: like
    /// the Pi firmware, QEMU enters core 0 at EL2 and holds the others in a
    /// spin table at 0xd8 (`HYP_KERNEL8_RPI4`, `HYP_BOARD_DIR_RPI4`).
    Rpi4Kernel8,
    /// QEMU virt with the test-only image whose isolation is broken on
    /// purpose (hyp-core feature `test-leak-one-page`: MEM_DONATE leaves the
    /// first donated page mapped in the host; `HYP_IMAGE_QEMU_LEAK`,
    /// `HYP_BOARD_DIR`).
    QemuVirtLeak,
}

/// How to boot QEMU.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// The board and image.
    pub board: TestBoard,
    /// Kernel command line (`-append`), seen by the hypervisor as `/chosen/bootargs`.
    pub append: Option<String>,
    /// CPUs (default: the board's `qemu.smp`).
    pub smp: Option<u32>,
    /// Deterministic instruction counting (`-icount shift=0`).
    pub icount: bool,
    /// Extra QEMU arguments, appended last.
    pub extra: Vec<String>,
}

impl BootOptions {
    /// Boots with `-append scenario=<name>`.
    pub fn scenario(name: &str) -> BootOptions {
        BootOptions {
            append: Some(format!("scenario={name}")),
            ..BootOptions::default()
        }
    }

    /// Sets the number of CPUs.
    pub fn smp(mut self, smp: u32) -> BootOptions {
        self.smp = Some(smp);
        self
    }

    /// Enables `-icount shift=0`.
    pub fn icount(mut self) -> BootOptions {
        self.icount = true;
        self
    }

    /// Boots `board` instead of QEMU virt.
    pub fn board(board: TestBoard) -> BootOptions {
        BootOptions {
            board,
            ..BootOptions::default()
        }
    }
}

/// The path in environment variable `name`, set by `cargo xtask test`.
pub fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!("{name} is unset: run the integration tests through `cargo xtask test`"),
    }
}

/// The image and board directory environment variables for `board`.
fn board_env(board: TestBoard) -> (&'static str, &'static str) {
    match board {
        TestBoard::QemuVirt => ("HYP_IMAGE_QEMU", "HYP_BOARD_DIR"),
        TestBoard::Rpi4 => ("HYP_IMAGE_RPI4", "HYP_BOARD_DIR_RPI4"),
        TestBoard::Rpi4Kernel8 => ("HYP_KERNEL8_RPI4", "HYP_BOARD_DIR_RPI4"),
        TestBoard::QemuVirtLeak => ("HYP_IMAGE_QEMU_LEAK", "HYP_BOARD_DIR"),
    }
}

/// The QEMU command for `opts`: board from `board.toml` in the board
/// directory, image and directory from the environment ([`TestBoard`]).
pub fn qemu_command(opts: &BootOptions) -> Command {
    let (image_var, dir_var) = board_env(opts.board);
    let image = env_path(image_var);
    let board_toml = env_path(dir_var).join("board.toml");
    let board = Board::load(&board_toml).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(board.qemu_args(&image, opts.smp));
    if let Some(append) = &opts.append {
        cmd.args(["-append", append]);
    }
    if opts.icount {
        cmd.args(["-icount", "shift=0"]);
    }
    cmd.args(&opts.extra);
    cmd
}

enum Event {
    Line(String),
    Eof,
}

/// A running QEMU (or any child process) with its output captured line by line.
///
/// Dropping it kills the process.
pub struct Qemu {
    child: Child,
    /// The child's standard input: QEMU's serial port with `-nographic`
    /// ([`Qemu::send`]).
    stdin: Option<ChildStdin>,
    command: String,
    events: Receiver<Event>,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    eof: bool,
    exit: Option<i32>,
}

/// Reads `from` line by line into `log` (prefixed) and, for stdout, onto `tx`.
fn reader(
    from: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<Event>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut from = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match from.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']).to_owned();
                    if let Ok(mut log) = log.lock() {
                        log.push(format!("{prefix}{line}"));
                    }
                    if let Some(tx) = &tx {
                        let _ = tx.send(Event::Line(line));
                    }
                }
            }
        }
        if let Some(tx) = &tx {
            let _ = tx.send(Event::Eof);
        }
    })
}

impl Qemu {
    /// Boots the image under test (see the crate documentation).
    pub fn boot(opts: BootOptions) -> Qemu {
        Qemu::spawn(qemu_command(&opts))
    }

    /// Starts `cmd` with stdout and stderr captured and stdin a pipe that
    /// stays open, empty until [`Qemu::send`] writes to it.
    pub fn spawn(mut cmd: Command) -> Qemu {
        let command = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader(out, "", log.clone(), Some(tx)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader(err, "[stderr] ", log.clone(), None));
        }
        let stdin = child.stdin.take();
        Qemu {
            child,
            stdin,
            command,
            events,
            log,
            readers,
            eof: false,
            exit: None,
        }
    }

    /// Types `text` at the process: writes it to its standard input, which
    /// QEMU with `-nographic` connects to the board's serial port, so the
    /// hypervisor's console receives it (fails with the log if the process
    /// stopped reading). Nothing is added: end a line with `\n`.
    pub fn send(&mut self, text: &str) {
        // Logged first: the answer may be logged before the write returns.
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("[sent] {text:?}"));
        }
        let ok = match self.stdin.as_mut() {
            Some(s) => s
                .write_all(text.as_bytes())
                .and_then(|()| s.flush())
                .is_ok(),
            None => false,
        };
        if !ok {
            self.fail(&format!("cannot send {text:?}: standard input is closed"));
        }
    }

    /// Everything captured so far (stderr lines prefixed with `[stderr] `).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Collect the rest of the output (bounded: a grandchild could hold the pipes).
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !self.readers.iter().all(|r| r.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.log().join("\n");
        panic!(
            "{what}\n--- command ---\n{}\n--- captured output ---\n{log}\n--- end of output ---",
            self.command
        );
    }

    /// Waits up to `timeout` for a stdout line containing `needle` and returns
    /// it; earlier lines are skipped (they stay in the log). A needle that
    /// starts with a hypervisor or host tag (`hyp:`, `host:`, `demo:`, see
    /// [`TRUSTED_TAGS`]) matches only lines that start with it, so a guest's
    /// (tagged) line never satisfies it.
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        let trusted = TRUSTED_TAGS.iter().any(|t| needle.starts_with(t));
        self.expect_matching(&format!("a line containing {needle:?}"), timeout, |l| {
            if trusted {
                l.starts_with(needle)
            } else {
                l.contains(needle)
            }
        })
    }

    /// Waits up to `timeout` for the line `text` printed by guest VM `vm`
    /// (`[vmN] text`, see [`guest_line`]).
    pub fn expect_guest(&mut self, vm: u64, text: &str, timeout: Duration) -> String {
        self.expect_exact(&guest_line(vm, text), timeout)
    }

    /// Waits up to `timeout` for a line of guest VM `vm` whose text contains
    /// `needle`; returns the text, without the VM's tag.
    pub fn expect_guest_line(&mut self, vm: u64, needle: &str, timeout: Duration) -> String {
        self.expect_guest_matching(
            vm,
            &format!("a line of VM {vm} containing {needle:?}"),
            timeout,
            |t| t.contains(needle),
        )
    }

    /// Waits up to `timeout` for a line of guest VM `vm` whose text (without
    /// the VM's tag) satisfies `pred`, and returns that text.
    pub fn expect_guest_matching(
        &mut self,
        vm: u64,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let l = self.expect_matching(what, timeout, |l| {
            guest_text(l).is_some_and(|(h, t)| h == vm && pred(t))
        });
        guest_text(&l)
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for a stdout line equal to `line` (trailing `\r` ignored).
    pub fn expect_exact(&mut self, line: &str, timeout: Duration) -> String {
        self.expect_matching(&format!("the line {line:?}"), timeout, |l| l == line)
    }

    /// Waits up to `timeout` for a stdout line satisfying `pred`; `what` describes it in failures.
    pub fn expect_matching(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eof {
                self.fail(&format!("output ended (QEMU exited) before {what}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Line(l)) if pred(&l) => return l,
                Ok(Event::Line(_)) => {}
                Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "timeout after {:.1} s waiting for {what}",
                    timeout.as_secs_f64()
                )),
            }
        }
    }

    /// Like [`Qemu::expect_matching`], but the process stopping first is
    /// `None` (the caller reads [`Qemu::log`] for why) instead of a failure.
    pub fn wait_matching_or_exit(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Line(l)) if pred(&l) => return Some(l),
                Ok(Event::Line(_)) => {}
                Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "timeout after {:.1} s waiting for {what}",
                    timeout.as_secs_f64()
                )),
            }
        }
        // Let the readers take in the last of stderr.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !self.readers.iter().all(|r| r.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits up to `timeout` for the process to exit and returns its status
    /// (QEMU: 0 after PSCI SYSTEM_OFF, 1 after a hypervisor panic).
    pub fn expect_exit(&mut self, timeout: Duration) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => self.fail(&format!(
                    "timeout after {:.1} s: QEMU did not power off",
                    timeout.as_secs_f64()
                )),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => self.fail(&format!("waiting for QEMU: {e}")),
            }
        };
        // The process is gone: collect the rest of its output for the log.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        match status.code() {
            Some(code) => {
                self.exit = Some(code);
                code
            }
            None => self.fail(&format!("QEMU was killed by a signal ({status})")),
        }
    }

    /// Waits for the exit and fails (with the log) unless the status is `expected`.
    pub fn expect_exit_code(&mut self, expected: i32, timeout: Duration) {
        let code = self.expect_exit(timeout);
        if code != expected {
            self.fail(&format!("exit status {code}, expected {expected}"));
        }
    }
}

/// How the lines of the hypervisor (`hyp: `) and of the host VM, the VMM
/// (`host: `, `demo: `), start. A guest's console lines never do: the
/// hypervisor prints them as `[vmN] text` ([`guest_line`]).
pub const TRUSTED_TAGS: [&str; 3] = ["hyp:", "host:", "demo:"];

/// Guest VM `vm`'s console line `text` as the hypervisor prints it.
pub fn guest_line(vm: u64, text: &str) -> String {
    format!("[vm{vm}] {text}")
}

/// The VM handle and text of a guest's console line `[vmN] text`; `None`
/// for other lines.
pub fn guest_text(line: &str) -> Option<(u64, &str)> {
    let rest = line.strip_prefix("[vm")?;
    let (digits, text) = rest.split_once("] ")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, text))
}

/// The counts on the protected-guest demo's PASS line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoCounts {
    /// Host accesses the hypervisor refused.
    pub denied: u64,
    /// Pages guests shared that the host read.
    pub shared: u64,
    /// Pages VM_DESTROY scrubbed.
    pub scrubbed: u64,
}

/// Pages each protected demo VM is given (16 MiB).
pub const DEMO_VM_PAGES: u64 = 4096;
/// Pages each protected demo VM shares for its bounce buffers.
pub const DEMO_POOL_PAGES: u64 = 16;

/// Follows the protected-guest demo (the host's default with no `guest=`)
/// to its PASS line, checking every isolation line on the way, and returns
/// the counts. The demo is two protected VMs (handles 1 and 2) and one
/// normal VM (3), 2 vCPUs each.
pub fn expect_demo_pass(q: &mut Qemu, t: Duration) -> DemoCounts {
    let (vm, pool) = (DEMO_VM_PAGES, DEMO_POOL_PAGES);
    for h in 1..=2 {
        q.expect_exact(
            &format!("host: VM {h} (guest-virtio): 2 vCPUs, 16 MiB at IPA 0x40000000, protected (donated)"),
            t,
        );
        // Every read and every write of every donated page faulted, and the
        // hypervisor counted each one.
        q.expect_exact(
            &format!(
                "demo: VM {h}: host read+write of each of its {vm} donated pages: {} of {} accesses faulted (hypervisor counted {})",
                2 * vm,
                2 * vm,
                2 * vm
            ),
            t,
        );
    }
    q.expect_exact(
        "host: VM 3 (guest-virtio): 2 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        t,
    );
    q.expect_exact(
        &format!("demo: VM 3: host read of each of its {vm} lent pages: {vm} readable (normal VM, for contrast)"),
        t,
    );
    let pass = q.expect_line("demo: PASS ", t);
    let log = q.log();
    let has = |line: &str| {
        assert!(
            log.iter().any(|l| l == line),
            "missing {line:?} in:\n{}",
            log.join("\n")
        );
    };
    // A line `prefix IPA suffix`: the IPA (where the guest's linker put a
    // static) must be a page of the guest's 16 MiB at 0x40000000.
    let has_ipa = |prefix: &str, suffix: &str| {
        let ipa = log
            .iter()
            .find_map(|l| {
                let rest = l.strip_prefix(prefix)?.strip_suffix(suffix)?;
                u64::from_str_radix(rest.strip_prefix("0x")?, 16).ok()
            })
            .unwrap_or_else(|| panic!("missing \"{prefix}<IPA>{suffix}\" in:\n{}", log.join("\n")));
        assert!(
            ipa % 4096 == 0 && (0x4000_0000..0x4100_0000).contains(&ipa),
            "{prefix}{ipa:#x}{suffix}"
        );
    };
    for h in 1..=2 {
        has(&format!("[vm{h}] virtio console up; KVM vendor UID found, KVM_FEATURES 0x9d, HYP_MEMINFO granule 4096"));
        has_ipa(
            &format!("[vm{h}] MEM_SHARE and MEM_UNSHARE offered: I am protected; DMA bounces through {pool} pages at IPA "),
            " shared with MEM_SHARE",
        );
        // Upstream MMIO guard: the protected guests guard their device
        // pages (an access to any other page of the window is an abort).
        has(&format!("[vm{h}] MMIO_GUARD offered: guarded 2 pages of the host's window (virtio-mmio at 0xa000000, control at 0xa003000) before touching them"));
        has_ipa(
            &format!("[vm{h}] vCPU 1 wrote a 16-byte secret 256 times into private memory at IPA "),
            "",
        );
        has(&format!(
            "demo: VM {h}: the {pool} pages it shared (MEM_SHARE): {pool} readable by the host"
        ));
        has(&format!(
            "demo: VM {h}: after MEM_UNSHARE: {} of {} host reads+writes of those pages faulted (hypervisor counted {})",
            2 * pool,
            2 * pool,
            2 * pool
        ));
        has(&format!(
            "demo: VM {h} destroyed: {vm} pages scrubbed; the host read them back: all zero"
        ));
    }
    // The normal VM learns it is not protected: no MEM_SHARE (nor
    // MMIO_GUARD) in KVM_FEATURES.
    has(
        "[vm3] virtio console up; KVM vendor UID found, KVM_FEATURES 0x5, HYP_MEMINFO granule 4096",
    );
    has("[vm3] no MEM_SHARE offered: I am a normal VM; devices use my buffers in place");
    for h in 1..=3 {
        has(&format!("[vm{h}] virtio-blk up: 128 sectors"));
        has(&format!(
            "[vm{h}] wrote 8 blocks in 4 requests, read them back in 1, each completion an interrupt: identical"
        ));
        // Device interrupts: the 5 block completions and one per console
        // line so far, none missing.
        let irqs = log
            .iter()
            .find_map(|l| {
                l.strip_prefix(&format!("[vm{h}] "))?
                    .strip_suffix(" device interrupts taken so far, 0 console lines without one")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no interrupt count of VM {h} in:\n{}", log.join("\n")));
        assert!(
            (10..=20).contains(&irqs),
            "VM {h}: {irqs} device interrupts"
        );
        // Sharing memory the guest does not own: SMCCC INVALID_PARAMETER.
        has(&format!(
            "[vm{h}] MEM_SHARE(0x100000000), memory I do not own = -3"
        ));
    }
    has("demo: secret search self-test: found a planted copy of VM 1's secret, erased it");
    has("demo: secrets of VM 1 and 2 not found in 768 MiB of host-readable RAM at 0x50000000");
    // The PASS line is the host's last line.
    let last_host = log
        .iter()
        .rev()
        .find(|l| l.starts_with("demo: ") || l.starts_with("host: ") || l.starts_with("[vm"))
        .expect("host lines");
    assert_eq!(*last_host, pass, "PASS is not the host's last line");
    let field = |name: &str| -> u64 {
        pass.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {pass:?}"))
    };
    assert_eq!(field("protected"), 2, "{pass}");
    assert_eq!(field("normal"), 1, "{pass}");
    DemoCounts {
        denied: field("denied"),
        shared: field("shared"),
        scrubbed: field("scrubbed"),
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Qemu {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Qemu::spawn(cmd)
    }

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("must panic");
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn lines_and_exit() {
        let mut q = sh("echo 'hyp: booting'; printf 'crlf\\r\\n'; echo done; exit 3");
        assert_eq!(q.expect_line("booting", T), "hyp: booting");
        assert_eq!(q.expect_exact("crlf", T), "crlf");
        assert_eq!(q.expect_exit(T), 3);
        assert_eq!(q.log(), ["hyp: booting", "crlf", "done"]);
    }

    #[test]
    fn trusted_needles_match_only_untagged_lines() {
        let mut q = sh(
            "echo '[vm1] hyp: exits total=1'; echo '[vm1] host: VM 1 up'; \
                        echo 'hyp: exits total=2'; echo '[vm12] guest: hi'; echo 'host: VM 1 up'",
        );
        assert_eq!(q.expect_line("hyp: exits total=", T), "hyp: exits total=2");
        assert_eq!(q.expect_guest(12, "guest: hi", T), "[vm12] guest: hi");
        assert_eq!(q.expect_line("host: VM 1", T), "host: VM 1 up");
        assert_eq!(guest_text("[vm3] a b"), Some((3, "a b")));
        assert_eq!(guest_text("[vm] a"), None);
        assert_eq!(guest_text("[vmx] a"), None);
        assert_eq!(guest_text("hyp: [vm1] a"), None);
    }

    #[test]
    fn send_reaches_standard_input() {
        let mut q = sh("read a; echo \"got $a\"; read b; echo \"then $b\"");
        q.send("hello 42\n");
        assert_eq!(q.expect_line("got ", T), "got hello 42");
        q.send("x\n");
        assert_eq!(q.expect_line("then ", T), "then x");
        assert_eq!(q.expect_exit(T), 0);
        assert_eq!(
            q.log(),
            [
                "[sent] \"hello 42\\n\"",
                "got hello 42",
                "[sent] \"x\\n\"",
                "then x"
            ]
        );
    }

    #[test]
    fn stderr_is_logged() {
        let mut q = sh("echo oops >&2; exit 0");
        q.expect_exit_code(0, T);
        assert_eq!(q.log(), ["[stderr] oops"]);
    }

    #[test]
    fn missing_line_panics_with_log() {
        let msg = panic_message(|| {
            let mut q = sh("echo first; echo second");
            q.expect_line("third", T);
        });
        assert!(msg.contains("before a line containing \"third\""), "{msg}");
        assert!(msg.contains("first\nsecond"), "{msg}");
    }

    #[test]
    fn line_timeout_panics_and_kills() {
        let start = Instant::now();
        let msg = panic_message(|| {
            let mut q = sh("echo started; exec sleep 30");
            q.expect_line("never", Duration::from_millis(300));
        });
        assert!(msg.contains("timeout after 0.3 s"), "{msg}");
        assert!(msg.contains("started"), "{msg}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn exit_timeout_panics() {
        let msg = panic_message(|| {
            let mut q = sh("echo up; exec sleep 30");
            q.expect_exit(Duration::from_millis(300));
        });
        assert!(
            msg.contains("did not power off") && msg.contains("up"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_exit_code_panics() {
        let msg = panic_message(|| {
            let mut q = sh("echo 'hyp: panic'; exit 1");
            q.expect_exit_code(0, T);
        });
        assert!(msg.contains("exit status 1, expected 0"), "{msg}");
        assert!(msg.contains("hyp: panic"), "{msg}");
    }

    #[test]
    fn drop_kills() {
        let q = sh("exec sleep 30");
        let pid = q.child.id();
        drop(q);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(!alive, "pid {pid} survived the drop");
    }

    #[test]
    fn command_line_from_board() {
        // HYP_BOARD_DIR/HYP_IMAGE_QEMU come from `cargo xtask test`; skip the env part otherwise.
        if std::env::var_os("HYP_BOARD_DIR").is_none()
            || std::env::var_os("HYP_IMAGE_QEMU").is_none()
        {
            return;
        }
        let cmd = qemu_command(&BootOptions::scenario("hello").smp(2).icount());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-smp 2 -nographic -kernel"), "{joined}");
        assert!(
            joined.ends_with("-append scenario=hello -icount shift=0"),
            "{joined}"
        );
    }
}
