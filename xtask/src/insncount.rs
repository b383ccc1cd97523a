//! The `insn-count` QEMU plugin (`crates/insn-count`) from xtask's side:
//! building it and the guest's `hyp-mark` program, and reading what the
//! plugin wrote. A bench brackets its work with two markers; the figure is
//! the difference of the plugin's counts, summed over every emulated CPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use insn_count::mark_word;

use crate::{cargo, provision, root, run_checked, target_dir, Result};

/// Builds the plugin (release) and returns the `.so` QEMU loads.
pub fn plugin() -> Result<PathBuf> {
    run_checked(&mut cargo(&[
        "build",
        "-q",
        "-p",
        "insn-count",
        "--release",
    ]))?;
    let so = target_dir().join("release").join("libinsn_count.so");
    if !so.is_file() {
        return Err(format!("insn-count: {} not built", so.display()));
    }
    Ok(so)
}

/// QEMU's arguments that load the plugin, writing its counts to `out`,
/// and profiling between the markers `profile`.
pub fn qemu_args(plugin: &Path, out: &Path, profile: Option<(u32, u32)>) -> Vec<String> {
    let mut arg = format!("file={},out={}", plugin.display(), out.display());
    if let Some((a, b)) = profile {
        arg.push_str(&format!(",profile={a}-{b}"));
    }
    vec!["-plugin".to_owned(), arg]
}

/// `/bin/hyp-mark` for the Linux guest's initramfs: the plugin crate's
/// `mark/hyp_mark.rs`, a static executable without libc, compiled by the
/// pinned toolchain's `rustc` for `aarch64-unknown-none` (whose rust-lld
/// links a static ELF Linux runs as is).
pub fn mark_program() -> Result<Vec<u8>> {
    provision::targets(&["aarch64-unknown-none"])?;
    let src = root()
        .join("crates")
        .join("insn-count")
        .join("mark")
        .join("hyp_mark.rs");
    let out = target_dir().join("insn-count").join("hyp-mark");
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    run_checked(
        Command::new(rustc)
            .current_dir(root())
            .args([
                "--edition",
                "2021",
                "--target",
                "aarch64-unknown-none",
                "-C",
                "panic=abort",
                "-C",
                "opt-level=2",
                "-o",
            ])
            .arg(&out)
            .arg(&src),
    )?;
    std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))
}

/// NOPs between the self-check's two markers.
const CHECK_NOPS: u32 = 1000;

/// Checks the plugin against a count known in advance: QEMU runs a raw
/// program (loaded with the generic loader, which also sets the PC; above
/// the device tree QEMU puts at the start of RAM) that executes marker 0,
/// [`CHECK_NOPS`] NOPs, a `mov` and a loop of 10 rounds of 3 instructions,
/// marker 1, then spins. Both markers' callbacks see their own instruction
/// counted (the inline count is registered first), so marker 1 sees
/// exactly `CHECK_NOPS + 1 + 30 + 1` more than marker 0.
pub fn self_check() -> Result<()> {
    provision::qemu()?;
    let plugin = plugin()?;
    let dir = target_dir().join("insn-count");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut words = vec![mark_word(0)];
    words.extend(std::iter::repeat_n(NOP, CHECK_NOPS as usize));
    words.extend([
        0xd280_0140, // mov x0, #10
        0xd100_0400, // 1: sub x0, x0, #1
        NOP,
        0xb5ff_ffc0, // cbnz x0, 1b
        mark_word(1),
        0x1400_0000, // b .
    ]);
    let bin: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let prog = dir.join("self-check.bin");
    std::fs::write(&prog, bin).map_err(|e| format!("{}: {e}", prog.display()))?;
    let out = dir.join("self-check.counts");
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(provision::QEMU)
        .args(["-M", "virt", "-cpu", "max", "-smp", "1", "-display", "none"])
        .args(["-monitor", "none", "-serial", "none"])
        .args(qemu_args(&plugin, &out, None))
        .arg("-device")
        .arg(format!(
            "loader,file={},addr=0x40200000,cpu-num=0",
            prog.display()
        ))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", provision::QEMU))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        if let Ok(m) = read(&out) {
            if m.at.contains_key(&1) {
                seen = Some(m);
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let m = seen.ok_or("insn-count: marker 1 never reached the file in 20 s")?;
    let got = between(&m, 0, 1)?.total();
    let want = u64::from(CHECK_NOPS) + 1 + 30 + 1;
    if got != want {
        return Err(format!(
            "insn-count: {got} instructions between the markers, expected {want}"
        ));
    }
    crate::note(&format!(
        "insn-count: {got} instructions between the markers, as expected"
    ));
    Ok(())
}

/// `NOP`.
const NOP: u32 = 0xd503_201f;

/// One line of the plugin's file: each CPU's count at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub cpus: Vec<u64>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.cpus.iter().sum()
    }

    /// What each CPU and all of them executed from `self` to `later`.
    pub fn until(&self, later: &Counts) -> Result<Counts> {
        if later.cpus.len() != self.cpus.len() {
            return Err("insn-count: CPU counts of different lengths".to_owned());
        }
        let cpus = self
            .cpus
            .iter()
            .zip(&later.cpus)
            .map(|(a, b)| {
                b.checked_sub(*a)
                    .ok_or_else(|| "insn-count: a count went backwards".to_owned())
            })
            .collect::<Result<Vec<u64>>>()?;
        Ok(Counts { cpus })
    }
}

/// The plugin's file: the counts at the last execution of each marker
/// (a marker executed twice keeps its last), and at QEMU's exit.
#[derive(Debug, Default)]
pub struct Marks {
    pub at: BTreeMap<u32, Counts>,
    pub exit: Option<Counts>,
    /// `profile=A-B`: instructions per translation-block start address.
    pub profile: Vec<(u64, u64)>,
}

/// Reads `mark N cpu C total T cpus A,B,...` and `exit total T cpus ...`
/// lines; a total that is not the sum of its CPUs is an error.
pub fn parse(text: &str) -> Result<Marks> {
    let mut m = Marks::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (mark, rest) = match w.as_slice() {
            ["pc", pc, "insns", n] => {
                let pc = pc
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                match (pc, n.parse::<u64>()) {
                    (Some(pc), Ok(n)) => m.profile.push((pc, n)),
                    _ => return Err(format!("insn-count: bad line {line:?}")),
                }
                continue;
            }
            ["profile", "end"] => continue,
            ["mark", n, "cpu", _, rest @ ..] => (
                Some(
                    n.parse::<u32>()
                        .map_err(|e| format!("insn-count: {line:?}: {e}"))?,
                ),
                rest,
            ),
            ["exit", rest @ ..] => (None, rest),
            _ => return Err(format!("insn-count: unknown line {line:?}")),
        };
        let ["total", total, "cpus", cpus] = rest else {
            return Err(format!("insn-count: unknown line {line:?}"));
        };
        let counts = Counts {
            cpus: cpus
                .split(',')
                .map(|c| c.parse::<u64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("insn-count: {line:?}: {e}"))?,
        };
        if total.parse::<u64>().ok() != Some(counts.total()) {
            return Err(format!("insn-count: {line:?}: total is not the CPUs' sum"));
        }
        match mark {
            Some(n) => {
                m.at.insert(n, counts);
            }
            None => m.exit = Some(counts),
        }
    }
    Ok(m)
}

/// Reads the plugin's file `path`.
pub fn read(path: &Path) -> Result<Marks> {
    parse(&std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// What ran between markers `a` and `b`.
pub fn between(m: &Marks, a: u32, b: u32) -> Result<Counts> {
    let get = |n: u32| {
        m.at.get(&n)
            .ok_or_else(|| format!("insn-count: marker {n} was never executed"))
    };
    get(a)?.until(get(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_marks_and_exit_and_subtracts_per_cpu() {
        let m = parse(
            "mark 0 cpu 1 total 30 cpus 10,20\nmark 1 cpu 0 total 100 cpus 45,55\npc 0xffff800008010000 insns 12\npc 0x40001000 insns 3\nprofile end\nexit total 200 cpus 90,110\n",
        )
        .expect("valid");
        assert_eq!(
            m.profile,
            vec![(0xffff_8000_0801_0000, 12), (0x4000_1000, 3)]
        );
        let d = between(&m, 0, 1).expect("both marks");
        assert_eq!(d.cpus, vec![35, 35]);
        assert_eq!(d.total(), 70);
        assert_eq!(m.exit.as_ref().expect("exit").total(), 200);
        assert!(between(&m, 0, 2).is_err(), "marker 2 never ran");
        assert!(between(&m, 1, 0).is_err(), "backwards");
    }

    #[test]
    fn refuses_a_total_that_is_not_the_sum_and_unknown_lines() {
        assert!(parse("mark 0 cpu 0 total 31 cpus 10,20\n").is_err());
        assert!(parse("hello\n").is_err());
        assert!(parse("mark x cpu 0 total 1 cpus 1\n").is_err());
    }
}
