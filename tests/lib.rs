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

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

    /// Starts `cmd` with stdout and stderr captured and stdin closed.
    pub fn spawn(mut cmd: Command) -> Qemu {
        let command = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
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
        Qemu {
            child,
            command,
            events,
            log,
            readers,
            eof: false,
            exit: None,
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
    /// it; earlier lines are skipped (they stay in the log).
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect_matching(&format!("a line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
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
