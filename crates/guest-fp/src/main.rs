//! FP/SIMD isolation guest. It takes a VM number from x0 at entry (the
//! context id vCPU 0 is started with: guest-rt passes it as `arg`), then for
//! each of [`ROUNDS`] rounds loads a VM- and round-specific pattern into all
//! 32 Q registers and FPCR, executes WFI, and checks every register and
//! FPCR afterwards. The WFI exits to the hypervisor, which may run another
//! VM on this physical CPU in the meantime (and must then switch the FP/SIMD
//! state, lazily or not); as the only guest, WFI simply returns.
//! Prints `guest-fp: VM <n>: <R> rounds, FP/SIMD state intact` or the first
//! corruption, then powers off.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_rt::println;

/// Rounds, each one WFI exit.
pub const ROUNDS: u64 = 100;

/// FPCR bits every Armv8-A FPU implements (Arm ARM D24.2 FPCR): AHP (26),
/// DN (25), FZ (24), RMode (23:22).
const FPCR_MASK: u64 = 0b1_1111 << 22;

#[repr(C, align(16))]
struct Regs([u128; 32]);

fn pattern(vm: u64, round: u64, reg: usize) -> u128 {
    let lo = (vm << 48) | (round << 16) | ((reg as u64) << 8) | 0x3c;
    let hi = !lo.rotate_left(17);
    (u128::from(hi) << 64) | u128::from(lo)
}

fn fpcr_pattern(vm: u64, round: u64) -> u64 {
    let rmode = (vm + round) & 3;
    let fz = round & 1;
    let dn = (round >> 1) & 1;
    let ahp = vm & 1;
    (ahp << 26) | (dn << 25) | (fz << 24) | (rmode << 22)
}

/// Loads `src` into q0..q31 and `fpcr` into FPCR, executes WFI, stores
/// q0..q31 into `dst` and returns FPCR as read back. One asm block, so the
/// compiler cannot use an FP/SIMD register in between; FPCR is reset to 0
/// (the state Rust code expects) before the block ends.
fn load_wfi_store(src: &Regs, dst: &mut Regs, fpcr: u64) -> u64 {
    let got: u64;
    // SAFETY: reads 512 bytes from `src` and writes 512 bytes to `dst`,
    // both 16-byte aligned; every vector register is declared clobbered;
    // WFI only pauses the vCPU; FPCR is restored to 0.
    unsafe {
        asm!(
            "ldp q0, q1, [{src}, #0]",
            "ldp q2, q3, [{src}, #32]",
            "ldp q4, q5, [{src}, #64]",
            "ldp q6, q7, [{src}, #96]",
            "ldp q8, q9, [{src}, #128]",
            "ldp q10, q11, [{src}, #160]",
            "ldp q12, q13, [{src}, #192]",
            "ldp q14, q15, [{src}, #224]",
            "ldp q16, q17, [{src}, #256]",
            "ldp q18, q19, [{src}, #288]",
            "ldp q20, q21, [{src}, #320]",
            "ldp q22, q23, [{src}, #352]",
            "ldp q24, q25, [{src}, #384]",
            "ldp q26, q27, [{src}, #416]",
            "ldp q28, q29, [{src}, #448]",
            "ldp q30, q31, [{src}, #480]",
            "msr fpcr, {fpcr}",
            "wfi",
            "mrs {got}, fpcr",
            "stp q0, q1, [{dst}, #0]",
            "stp q2, q3, [{dst}, #32]",
            "stp q4, q5, [{dst}, #64]",
            "stp q6, q7, [{dst}, #96]",
            "stp q8, q9, [{dst}, #128]",
            "stp q10, q11, [{dst}, #160]",
            "stp q12, q13, [{dst}, #192]",
            "stp q14, q15, [{dst}, #224]",
            "stp q16, q17, [{dst}, #256]",
            "stp q18, q19, [{dst}, #288]",
            "stp q20, q21, [{dst}, #320]",
            "stp q22, q23, [{dst}, #352]",
            "stp q24, q25, [{dst}, #384]",
            "stp q26, q27, [{dst}, #416]",
            "stp q28, q29, [{dst}, #448]",
            "stp q30, q31, [{dst}, #480]",
            "msr fpcr, xzr",
            src = in(reg) src.0.as_ptr(),
            dst = in(reg) dst.0.as_mut_ptr(),
            fpcr = in(reg) fpcr,
            got = out(reg) got,
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            out("v4") _,
            out("v5") _,
            out("v6") _,
            out("v7") _,
            out("v8") _,
            out("v9") _,
            out("v10") _,
            out("v11") _,
            out("v12") _,
            out("v13") _,
            out("v14") _,
            out("v15") _,
            out("v16") _,
            out("v17") _,
            out("v18") _,
            out("v19") _,
            out("v20") _,
            out("v21") _,
            out("v22") _,
            out("v23") _,
            out("v24") _,
            out("v25") _,
            out("v26") _,
            out("v27") _,
            out("v28") _,
            out("v29") _,
            out("v30") _,
            out("v31") _,
            options(nostack),
        );
    }
    got
}

fn run(vm: u64) -> Result<(), (u64, &'static str, usize, u128, u128)> {
    let mut src = Regs([0; 32]);
    let mut dst = Regs([0; 32]);
    for round in 0..ROUNDS {
        for (r, q) in src.0.iter_mut().enumerate() {
            *q = pattern(vm, round, r);
        }
        let fpcr = fpcr_pattern(vm, round);
        let got = load_wfi_store(&src, &mut dst, fpcr);
        if let Some(r) = (0..32).find(|&r| dst.0[r] != src.0[r]) {
            return Err((round, "q", r, dst.0[r], src.0[r]));
        }
        if got & FPCR_MASK != fpcr {
            return Err((round, "FPCR", 0, u128::from(got), u128::from(fpcr)));
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, vm: u64) -> ! {
    if cpu != 0 {
        guest_rt::cpu_off();
    }
    println!("guest-fp: VM {vm}: {ROUNDS} rounds of 32 Q registers + FPCR across WFI");
    match run(vm) {
        Ok(()) => println!("guest-fp: VM {vm}: {ROUNDS} rounds, FP/SIMD state intact"),
        Err((round, "q", r, got, want)) => {
            println!("guest-fp: VM {vm}: round {round}: q{r} is {got:#034x}, expected {want:#034x}")
        }
        Err((round, what, _, got, want)) => {
            println!("guest-fp: VM {vm}: round {round}: {what} is {got:#x}, expected {want:#x}")
        }
    }
    guest_rt::system_off()
}
