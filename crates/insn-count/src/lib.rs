//! `insn-count`: a QEMU TCG plugin that counts every instruction each
//! emulated CPU executes and, whenever a CPU executes a *marker*, writes the
//! counts of that moment to a file. The benches (`cargo xtask bench
//! --linux-io`) bracket the work they measure with two markers, so a figure
//! is an exact count summed over all CPUs (the guest's, the host VM's and
//! the hypervisor's instructions alike), unaffected by the idle stretches
//! icount's virtual clock skips, by how long QEMU's own I/O takes, or by the
//! speed of the machine running QEMU.
//!
//! Markers are the hint instructions `HINT #0x78` to `HINT #0x7f`, which
//! the architecture leaves unallocated and so executes as NOPs at every
//! exception level (Arm ARM C6.2.128 HINT: "unallocated hints behave as
//! NOP"); `HINT #(0x78 + n)` is marker `n`. Anything can execute one: the
//! bench's guest runs `hyp-mark N` (see [`MARK_PROGRAM`]).
//!
//! Loaded as `-plugin file=PATH/libinsn_count.so,out=FILE`. Each line of
//! FILE is `mark N cpu C total T cpus A,B,...` (T the sum over all CPUs, A,
//! B each CPU's own), and a last `exit total T cpus ...` when QEMU quits.
//!
//! With `profile=A-B` it also profiles from marker A to marker B: when B
//! executes, one `pc ADDR insns N` line per translation block that ran in
//! between (ADDR its first instruction's virtual address, N the
//! instructions executed in blocks starting there, counted whole: a block
//! an exception leaves early counts as if it ran to its end). Lines
//! follow B's `mark` line; `profile end` closes them. Profiling costs a
//! callback per block executed, so it is only on between A and B.
//!
//! The C API (`include/qemu/qemu-plugin.h`, plugin API version 4 as in QEMU
//! 10.0) is declared here by hand for the few calls used: the plugin is a
//! Rust `cdylib`, and no Debian package ships the header.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The first marker's HINT immediate; markers are `MARK_BASE..MARK_BASE + 8`.
pub const MARK_BASE: u32 = 0x78;
/// How many markers there are.
pub const MARKS: u32 = 8;

/// The marker number `word` encodes, if it is one: `HINT #imm` is
/// `0xd503201f | imm << 5` with a 7-bit `imm` (Arm ARM C6.2.128).
pub fn mark_of(word: u32) -> Option<u32> {
    if word & !(0x7f << 5) != 0xd503_201f {
        return None;
    }
    let imm = (word >> 5) & 0x7f;
    (MARK_BASE..MARK_BASE + MARKS)
        .contains(&imm)
        .then(|| imm - MARK_BASE)
}

/// The encoding of marker `n`'s instruction.
pub fn mark_word(n: u32) -> u32 {
    0xd503_201f | (MARK_BASE + n % MARKS) << 5
}

/// The guest program the bench puts in its initramfs as `/bin/hyp-mark`:
/// `hyp-mark N` executes marker N (its first argument's first digit, 0-7)
/// and exits 0. Built by xtask with `rustc --target aarch64-unknown-none`
/// into a static Linux executable; the instruction at `1:` and the seven
/// after it are [`mark_word`]`(0..8)`, each followed by a branch to the exit.
pub const MARK_PROGRAM: &str = include_str!("../mark/hyp_mark.rs");

/// `qemu_plugin_u64`: one `u64` per CPU in a scoreboard.
#[repr(C)]
#[derive(Clone, Copy)]
struct U64 {
    score: *mut c_void,
    offset: usize,
}

/// `qemu_info_t`'s first fields (only `system_emulation` is read).
#[repr(C)]
pub struct Info {
    target_name: *const c_char,
    version_min: c_int,
    version_cur: c_int,
    system_emulation: bool,
}

type TransCb = extern "C" fn(id: u64, tb: *mut c_void);
type ExecCb = extern "C" fn(vcpu: c_uint, data: *mut c_void);
/// A block's start address and instruction count, as a profile callback's
/// data (one leaked per translation while profiling is configured).
type BlockInfo = (u64, u64);
type AtexitCb = extern "C" fn(id: u64, data: *mut c_void);

/// `QEMU_PLUGIN_INLINE_ADD_U64`.
const INLINE_ADD_U64: c_int = 0;
/// `QEMU_PLUGIN_CB_NO_REGS`.
const CB_NO_REGS: c_int = 0;

extern "C" {
    fn qemu_plugin_scoreboard_new(element_size: usize) -> *mut c_void;
    fn qemu_plugin_u64_get(entry: U64, vcpu: c_uint) -> u64;
    fn qemu_plugin_num_vcpus() -> c_int;
    fn qemu_plugin_register_vcpu_tb_trans_cb(id: u64, cb: TransCb);
    fn qemu_plugin_register_atexit_cb(id: u64, cb: AtexitCb, data: *mut c_void);
    fn qemu_plugin_tb_n_insns(tb: *const c_void) -> usize;
    fn qemu_plugin_tb_vaddr(tb: *const c_void) -> u64;
    fn qemu_plugin_register_vcpu_tb_exec_cb(
        tb: *mut c_void,
        cb: ExecCb,
        flags: c_int,
        data: *mut c_void,
    );
    fn qemu_plugin_tb_get_insn(tb: *const c_void, idx: usize) -> *mut c_void;
    fn qemu_plugin_insn_data(insn: *const c_void, dest: *mut c_void, len: usize) -> usize;
    fn qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
        insn: *mut c_void,
        op: c_int,
        entry: U64,
        imm: u64,
    );
    fn qemu_plugin_register_vcpu_insn_exec_cb(
        insn: *mut c_void,
        cb: ExecCb,
        flags: c_int,
        data: *mut c_void,
    );
}

/// The plugin API version this file declares (QEMU refuses a plugin whose
/// version is outside what it supports).
#[no_mangle]
#[used]
pub static qemu_plugin_version: c_int = 4;

/// The per-CPU counters and the output file, set once at install.
struct State {
    count: U64,
    out: File,
    /// `profile=A-B`: the markers that start and stop it.
    profile: Option<(u32, u32)>,
}

/// Whether the profile is on (between its markers).
static PROFILING: AtomicBool = AtomicBool::new(false);
/// Instructions per block start while profiling.
static PROFILE: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

// SAFETY: the scoreboard pointer is only handed back to QEMU's API, which
// may be called from any of its vCPU threads.
unsafe impl Send for State {}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Every CPU's count and their sum, as `total T cpus A,B,...`.
fn counts(count: U64) -> String {
    // SAFETY: QEMU's API, called from a callback QEMU runs.
    let n = unsafe { qemu_plugin_num_vcpus() }.max(0) as c_uint;
    // SAFETY: as above; `count` is the scoreboard entry made at install.
    let each: Vec<u64> = (0..n)
        .map(|c| unsafe { qemu_plugin_u64_get(count, c) })
        .collect();
    let cpus: Vec<String> = each.iter().map(u64::to_string).collect();
    format!("total {} cpus {}", each.iter().sum::<u64>(), cpus.join(","))
}

fn write_line(line: &str) {
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(st) = s.as_mut() {
        // A failed write loses a line, which the bench reports as a
        // missing marker; QEMU itself must go on.
        let _ = writeln!(st.out, "{line}").and_then(|()| st.out.flush());
    }
}

fn counter() -> Option<U64> {
    STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|s| s.count)
}

fn profile_marks() -> Option<(u32, u32)> {
    STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|s| s.profile)
}

extern "C" fn on_mark(vcpu: c_uint, data: *mut c_void) {
    let Some(count) = counter() else {
        return;
    };
    let n = data as usize as u32;
    write_line(&format!("mark {n} cpu {vcpu} {}", counts(count)));
    match profile_marks() {
        Some((a, _)) if a == n => {
            PROFILE.lock().unwrap_or_else(|e| e.into_inner()).clear();
            PROFILING.store(true, Ordering::Relaxed);
        }
        Some((_, b)) if b == n && PROFILING.swap(false, Ordering::Relaxed) => {
            let p = std::mem::take(&mut *PROFILE.lock().unwrap_or_else(|e| e.into_inner()));
            let mut text = String::new();
            for (pc, n) in p {
                text.push_str(&format!("pc {pc:#x} insns {n}\n"));
            }
            text.push_str("profile end");
            write_line(&text);
        }
        _ => {}
    }
}

extern "C" fn on_block(_vcpu: c_uint, data: *mut c_void) {
    if !PROFILING.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: `data` is the `BlockInfo` leaked for this block in
    // `on_translate`, never freed.
    let (pc, n) = unsafe { *(data as *const BlockInfo) };
    *PROFILE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(pc)
        .or_default() += n;
}

extern "C" fn on_exit(_id: u64, _data: *mut c_void) {
    if let Some(count) = counter() {
        write_line(&format!("exit {}", counts(count)));
    }
}

extern "C" fn on_translate(_id: u64, tb: *mut c_void) {
    let Some(count) = counter() else {
        return;
    };
    // SAFETY: `tb` is the block QEMU is translating, valid in this callback.
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    if profile_marks().is_some() {
        // SAFETY: as above.
        let info: BlockInfo = (unsafe { qemu_plugin_tb_vaddr(tb) }, n as u64);
        let data = Box::into_raw(Box::new(info));
        // SAFETY: as above; `data` lives for the rest of the run.
        unsafe { qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, CB_NO_REGS, data.cast()) };
    }
    for i in 0..n {
        // SAFETY: `i` is below the block's instruction count.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        // One count per instruction executed (not per block entered: a
        // block left early by an exception counts only what it ran).
        // SAFETY: `insn` is valid during this callback; `count` is ours.
        unsafe {
            qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, INLINE_ADD_U64, count, 1);
        }
        let mut word = [0u8; 4];
        // SAFETY: `word` has room for the 4 bytes asked for.
        let got = unsafe { qemu_plugin_insn_data(insn, word.as_mut_ptr().cast(), 4) };
        if got == 4 {
            if let Some(m) = mark_of(u32::from_le_bytes(word)) {
                // SAFETY: as above; the marker number travels as the
                // callback's data pointer, never dereferenced.
                unsafe {
                    qemu_plugin_register_vcpu_insn_exec_cb(
                        insn,
                        on_mark,
                        CB_NO_REGS,
                        m as usize as *mut c_void,
                    );
                }
            }
        }
    }
}

/// `profile=A-B`'s markers.
fn profile_arg(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < MARKS && b < MARKS && a != b).then_some((a, b))
}

/// QEMU's entry: `out=FILE` is required.
///
/// # Safety
/// Called by QEMU with its documented arguments: `info` valid for the call,
/// `argv` holding `argc` C strings.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: u64,
    info: *const Info,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    // SAFETY: valid for this call (QEMU's contract).
    if info.is_null() || !unsafe { (*info).system_emulation } {
        eprintln!("insn-count: only for system emulation");
        return -1;
    }
    let mut out = None;
    let mut profile = None;
    for i in 0..argc.max(0) as usize {
        // SAFETY: `argv` holds `argc` NUL-terminated strings.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy();
        match arg.split_once('=') {
            Some(("out", path)) => out = Some(path.to_owned()),
            Some(("profile", marks)) => match profile_arg(marks) {
                Some(p) => profile = Some(p),
                None => {
                    eprintln!(
                        "insn-count: profile={marks}: expected A-B, two different markers 0-7"
                    );
                    return -1;
                }
            },
            _ => {
                eprintln!("insn-count: unknown argument {arg:?} (takes out=FILE and profile=A-B)");
                return -1;
            }
        }
    }
    let Some(path) = out else {
        eprintln!("insn-count: needs out=FILE");
        return -1;
    };
    let file = match File::create(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("insn-count: {path}: {e}");
            return -1;
        }
    };
    // SAFETY: QEMU's API; one u64 per CPU.
    let score = unsafe { qemu_plugin_scoreboard_new(8) };
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(State {
        count: U64 { score, offset: 0 },
        out: file,
        profile,
    });
    // SAFETY: QEMU's API, with callbacks that live as long as the plugin.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
        qemu_plugin_register_atexit_cb(id, on_exit, std::ptr::null_mut());
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_the_eight_top_hints_and_nothing_else() {
        for n in 0..MARKS {
            assert_eq!(mark_of(mark_word(n)), Some(n));
        }
        assert_eq!(mark_word(0), 0xd503_2f1f);
        // NOP, YIELD, WFI, ESB, BTI, the hint just below the markers.
        for w in [
            0xd503_201f,
            0xd503_203f,
            0xd503_207f,
            0xd503_221f,
            0xd503_241f,
            0xd503_2eff,
        ] {
            assert_eq!(mark_of(w), None, "{w:#x}");
        }
        // Same hint immediate in a different instruction (MSR/SYS space).
        assert_eq!(mark_of(mark_word(0) ^ 1 << 12), None);
    }

    #[test]
    fn profile_takes_two_different_markers() {
        assert_eq!(profile_arg("0-1"), Some((0, 1)));
        assert_eq!(profile_arg("7-2"), Some((7, 2)));
        for bad in ["1-1", "0-8", "0", "a-b", "-1", "0-1-2"] {
            assert_eq!(profile_arg(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_guest_program_executes_every_marker() {
        for n in 0..MARKS {
            let text = format!("hint #{:#x}", MARK_BASE + n);
            assert!(MARK_PROGRAM.contains(&text), "{text} missing");
        }
    }
}
