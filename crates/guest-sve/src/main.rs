//! SVE isolation guest. It takes a VM number from x0 at entry (the VM
//! handle, bits [7:0]) and reads ID_AA64PFR0_EL1.SVE.
//!
//! Without SVE (the Cortex-A72 of raspi4b) it checks that SVE is hidden:
//! the field and ID_AA64ZFR0_EL1 read 0, and RDVL and a ZCR_EL1 read are
//! UNDEFINED. Prints `guest-sve: VM <n>: SVE hidden, RDVL and ZCR_EL1
//! UNDEFINED`.
//!
//! With SVE it first prints the vector length it starts with and ZCR_EL1
//! (its VM's length, which the host chose at VM_CREATE: `:sve=BITS`), then
//! asks for more than it may have: ZCR_EL1.LEN = 15 (2048 bits) must give a
//! vector length no larger than its VM's (at most the hypervisor's cap, 64
//! bytes); it prints the length. Then, for each of [`ROUNDS`] rounds, it
//! loads a VM- and round-specific pattern into Z0-Z31, P0-P15 and FFR at the
//! current length, yields its CPU (the host may run another VM there), and
//! stores them again, all in one assembly function. Every byte must come
//! back. Even VMs (2, 4, ..) use a 16-byte vector length (ZCR_EL1.LEN = 0)
//! in odd rounds and, still in the assembly, raise it back to the full
//! length after the yield and store the whole Z registers: the bytes beyond
//! the short length must never hold another VM's pattern (each pattern byte
//! carries its VM's number in bits [7:6]). Odd VMs, after the yield, ask
//! for 2048 bits again: RDVL must still give their VM's length (however
//! long the other VMs' vectors on this CPU), and the Z registers stored at
//! it must be their own. Prints `guest-sve: VM <n>: <R> rounds, SVE state
//! intact` or the first difference, then powers off.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{println, Exception, Frame};

/// Rounds, each one yield.
const ROUNDS: u64 = 100;
/// The largest vector length the buffers hold (the hypervisor's cap).
const VL_MAX: usize = 64;

/// Z0-Z31 (VL bytes each), P0-P15 (VL/8 each), FFR (VL/8), as the probe
/// stores them: the same layout as the hypervisor's, for the same reason.
#[repr(C, align(16))]
struct Regs {
    z: [u8; 32 * VL_MAX],
    p: [u8; 16 * VL_MAX / 8],
    ffr: [u8; VL_MAX / 8],
}

impl Regs {
    const fn zero() -> Self {
        Self {
            z: [0; 32 * VL_MAX],
            p: [0; 16 * VL_MAX / 8],
            ffr: [0; VL_MAX / 8],
        }
    }
}

unsafe extern "C" {
    /// Loads `src` (FFR, P, Z at the current length), yields with HVC,
    /// stores into `dst`; then, if `full` is not null, sets ZCR_EL1 to `zcr`
    /// and stores Z0-Z31 at the new length into `full`, and returns that
    /// length (RDVL; 0 if `full` is null).
    fn __sve_probe(src: *const Regs, dst: *mut Regs, full: *mut Regs, zcr: u64) -> usize;
}

global_asm!(
    ".arch_extension sve",
    ".section .text.__sve_probe, \"ax\"",
    ".global __sve_probe",
    "__sve_probe:",
    "stp x19, x20, [sp, #-48]!",
    "stp x21, x22, [sp, #16]",
    "stp x29, x30, [sp, #32]",
    "mov x19, x0",
    "mov x20, x1",
    "mov x21, x2",
    "mov x22, x3",
    // FFR through P0, then P0-P15, then Z0-Z31.
    "add x9, x19, #2176",
    "ldr p0, [x9]",
    "wrffr p0.b",
    "add x9, x19, #2048",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "ldr p\\n, [x9, #\\n, MUL VL]",
    ".endr",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "ldr z\\n, [x19, #\\n, MUL VL]",
    ".endr",
    // GUEST_YIELD (x0), no arguments.
    "movz x0, #{yield_lo}",
    "movk x0, #{yield_hi}, lsl #16",
    "mov x1, xzr",
    "mov x2, xzr",
    "mov x3, xzr",
    "hvc #0",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "str z\\n, [x20, #\\n, MUL VL]",
    ".endr",
    "add x9, x20, #2048",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "str p\\n, [x9, #\\n, MUL VL]",
    ".endr",
    "add x9, x20, #2176",
    "rdffr p0.b",
    "str p0, [x9]",
    "mov x0, xzr",
    "cbz x21, 1f",
    "msr s3_0_c1_c2_0, x22",
    "isb",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "str z\\n, [x21, #\\n, MUL VL]",
    ".endr",
    "rdvl x0, #1",
    "1:",
    "ldp x29, x30, [sp, #32]",
    "ldp x21, x22, [sp, #16]",
    "ldp x19, x20, [sp], #48",
    "ret",
    ".text",
    yield_lo = const hyp_abi::GUEST_YIELD & 0xffff,
    yield_hi = const hyp_abi::GUEST_YIELD >> 16,
);

/// UNDEFINED exceptions taken (EC 0), each skipped.
static UNDEFS: AtomicU64 = AtomicU64::new(0);

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    if e.esr >> 26 == 0 {
        UNDEFS.fetch_add(1, Ordering::Relaxed);
        f.elr += 4;
        return true;
    }
    false
}

fn id_aa64pfr0() -> u64 {
    let v: u64;
    // SAFETY: an ID register read (trapped and answered by the hypervisor).
    unsafe { asm!("mrs {0}, id_aa64pfr0_el1", out(reg) v, options(nomem, nostack)) };
    v
}

fn id_aa64zfr0() -> u64 {
    let v: u64;
    // SAFETY: as above (ID_AA64ZFR0_EL1).
    unsafe { asm!("mrs {0}, s3_0_c0_c4_4", out(reg) v, options(nomem, nostack)) };
    v
}

/// RDVL: the current vector length in bytes (0 if it was UNDEFINED).
fn rdvl() -> usize {
    let v: u64;
    // SAFETY: reads the vector length; if UNDEFINED, the hook skips it.
    unsafe {
        asm!(".arch_extension sve", "mov {0}, xzr", "rdvl {0}, #1", out(reg) v, options(nomem, nostack))
    };
    v as usize
}

fn zcr_el1() -> u64 {
    let v: u64;
    // SAFETY: reads ZCR_EL1; if UNDEFINED, the hook skips it.
    unsafe { asm!("mov {0}, xzr", "mrs {0}, s3_0_c1_c2_0", out(reg) v, options(nomem, nostack)) };
    v
}

fn set_zcr_el1(v: u64) {
    // SAFETY: sets this vCPU's SVE vector length; no memory is involved.
    unsafe { asm!("msr s3_0_c1_c2_0, {0}", "isb", in(reg) v, options(nostack)) };
}

/// CPACR_EL1.ZEN = 0b11 (with FPEN = 0b11): SVE at EL1 and EL0 untrapped.
fn enable_sve_el1() {
    // SAFETY: only enables SVE and FP/SIMD for this vCPU.
    unsafe {
        asm!(
            "mrs {t}, cpacr_el1",
            "orr {t}, {t}, #(3 << 16)",
            "orr {t}, {t}, #(3 << 20)",
            "msr cpacr_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        )
    };
}

/// The pattern byte of VM `vm`, round `round`, at byte `i` of the register
/// file: VM number in bits [7:6].
fn byte(vm: u64, round: u64, i: usize) -> u8 {
    ((vm & 3) << 6) as u8 | ((round as usize * 5 + i * 3 + 1) & 0x3f) as u8
}

fn fill(r: &mut Regs, vm: u64, round: u64, vl: usize) {
    *r = Regs::zero();
    for (i, b) in r.z[..32 * vl].iter_mut().enumerate() {
        *b = byte(vm, round, i);
    }
    for (i, b) in r.p[..16 * vl / 8].iter_mut().enumerate() {
        *b = byte(vm, round, i + 7);
    }
    // FFR must be monotonic (WRFFR): its first k bits set.
    let k = ((vm * 13 + round) as usize) % (vl + 1);
    for bit in 0..k {
        r.ffr[bit / 8] |= 1 << (bit % 8);
    }
}

/// The first difference between `want` and `got` at length `vl`.
fn diff(want: &Regs, got: &Regs, vl: usize) -> Option<(&'static str, usize, u8, u8)> {
    let parts: [(&'static str, &[u8], &[u8]); 3] = [
        ("Z", &want.z[..32 * vl], &got.z[..32 * vl]),
        ("P", &want.p[..16 * vl / 8], &got.p[..16 * vl / 8]),
        ("FFR", &want.ffr[..vl / 8], &got.ffr[..vl / 8]),
    ];
    for (name, w, g) in parts {
        if let Some(i) = (0..w.len()).find(|&i| w[i] != g[i]) {
            return Some((name, i, g[i], w[i]));
        }
    }
    None
}

/// Bytes of the full-length Z registers beyond the short length `short`
/// that carry another VM's number.
fn foreign(full: &Regs, vm: u64, short: usize, vl: usize) -> Option<(usize, u8)> {
    (0..32).find_map(|n| {
        (short..vl).find_map(|j| {
            let b = full.z[n * vl + j];
            let owner = u64::from(b >> 6);
            (b != 0 && owner != vm & 3).then_some((n * vl + j, b))
        })
    })
}

static mut SRC: Regs = Regs::zero();
static mut DST: Regs = Regs::zero();
static mut FULL: Regs = Regs::zero();

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    if cpu != 0 {
        guest_rt::cpu_off();
    }
    let vm = x0 & 0xff;
    guest_rt::set_exception_hook(on_exception);
    let sve = (id_aa64pfr0() >> 32) & 0xf;
    if sve == 0 {
        let zfr0 = id_aa64zfr0();
        let before = UNDEFS.load(Ordering::Relaxed);
        let _ = rdvl();
        let _ = zcr_el1();
        let undefs = UNDEFS.load(Ordering::Relaxed) - before;
        if zfr0 == 0 && undefs == 2 {
            println!("guest-sve: VM {vm}: SVE hidden, RDVL and ZCR_EL1 UNDEFINED");
        } else {
            println!("guest-sve: VM {vm}: SVE hidden but ID_AA64ZFR0_EL1 = {zfr0:#x}, {undefs} of 2 UNDEFINED");
        }
        guest_rt::system_off()
    }
    enable_sve_el1();
    // The length the hypervisor gave this VM, before any ZCR_EL1 write.
    let start = rdvl();
    println!(
        "guest-sve: VM {vm}: starts at VL {start} bytes (ZCR_EL1 reads {:#x})",
        zcr_el1()
    );
    // Ask for 2048 bits: the hypervisor caps it.
    set_zcr_el1(0xf);
    let asked = rdvl();
    println!(
        "guest-sve: VM {vm}: SVE {sve}, ZCR_EL1.LEN = 15 gives VL {asked} bytes (ZCR_EL1 reads {:#x})",
        zcr_el1()
    );
    if asked == 0 || asked > VL_MAX || !asked.is_multiple_of(16) {
        println!("guest-sve: VM {vm}: VL {asked} out of range");
        guest_rt::system_off()
    }
    // Every bit set (LEN = 15 and the RES0 bits): the same cap.
    set_zcr_el1(u64::MAX);
    println!(
        "guest-sve: VM {vm}: ZCR_EL1 = all ones gives VL {} bytes",
        rdvl()
    );
    // SME is hidden and trapped at EL2 (CPTR_EL2.TSM): with its own trap
    // off (CPACR_EL1.SMEN = 0b11, bits [25:24]), SMSTART is UNDEFINED.
    // SAFETY: only changes this vCPU's SME trap.
    unsafe {
        asm!(
            "mrs {t}, cpacr_el1",
            "orr {t}, {t}, #(3 << 24)",
            "msr cpacr_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        )
    };
    let before = UNDEFS.load(Ordering::Relaxed);
    // SAFETY: SMSTART (MSR SVCRSMZA, #1) by encoding; if it ran it would
    // only change this vCPU's streaming mode, but it is UNDEFINED.
    unsafe { asm!(".inst 0xd503477f", options(nomem, nostack)) };
    let smstart = UNDEFS.load(Ordering::Relaxed) - before;
    println!(
        "guest-sve: VM {vm}: SMSTART {}",
        if smstart == 1 {
            "UNDEFINED"
        } else {
            "EXECUTED"
        }
    );
    let vl = asked;
    let full_zcr = (vl / 16 - 1) as u64;
    let short_rounds = vm.is_multiple_of(2);
    println!(
        "guest-sve: VM {vm}: {ROUNDS} rounds of Z0-Z31, P0-P15, FFR across a yield{}",
        if short_rounds {
            ", odd rounds at VL 16"
        } else {
            ""
        }
    );
    // SAFETY: vCPU 0 is the only one running this code.
    let (src, dst, full) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(SRC),
            &mut *core::ptr::addr_of_mut!(DST),
            &mut *core::ptr::addr_of_mut!(FULL),
        )
    };
    for round in 0..ROUNDS {
        let short = short_rounds && round % 2 == 1;
        let cur = if short { 16 } else { vl };
        set_zcr_el1(if short { 0 } else { full_zcr });
        fill(src, vm, round, cur);
        *dst = Regs::zero();
        *full = Regs::zero();
        // Even VMs' short rounds go back to their full length after the
        // yield; odd VMs ask for 2048 bits (LEN = 15) after every yield.
        let widen = !short_rounds;
        let full_ptr: *mut Regs = if short || widen {
            full
        } else {
            core::ptr::null_mut()
        };
        let zcr = if widen { 0xf } else { full_zcr };
        // SAFETY: the probe reads `src` and writes `dst`/`full` (Regs,
        // 16-byte aligned, VL_MAX sized, and the length is at most VL_MAX:
        // the hypervisor caps it, as checked above); it preserves the
        // AAPCS64 callee-saved registers it uses.
        let after = unsafe { __sve_probe(src, dst, full_ptr, zcr) };
        if let Some((what, i, got, want)) = diff(src, dst, cur) {
            println!("guest-sve: VM {vm}: round {round} (VL {cur}): {what} byte {i} is {got:#x}, expected {want:#x}");
            guest_rt::system_off()
        }
        if !full_ptr.is_null() && after != vl {
            println!(
                "guest-sve: VM {vm}: round {round}: VL {after} bytes after the yield, not {vl}"
            );
            guest_rt::system_off()
        }
        if widen {
            if let Some(i) = (0..32 * vl).find(|&i| full.z[i] != src.z[i]) {
                println!(
                    "guest-sve: VM {vm}: round {round}: at LEN 15, Z byte {i} is {:#x}, expected {:#x}",
                    full.z[i], src.z[i]
                );
                guest_rt::system_off()
            }
        }
        if short {
            if let Some((i, b)) = foreign(full, vm, 16, vl) {
                println!("guest-sve: VM {vm}: round {round}: Z byte {i} beyond VL 16 is {b:#x}, another VM's");
                guest_rt::system_off()
            }
        }
    }
    set_zcr_el1(full_zcr);
    println!("guest-sve: VM {vm}: {ROUNDS} rounds, SVE state intact");
    guest_rt::system_off()
}
