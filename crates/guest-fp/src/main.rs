//! FP/SIMD isolation guest. It takes a VM number from x0 at entry (the
//! context id vCPU 0 is started with: guest-rt passes it as `arg`), then for
//! each of [`ROUNDS`] rounds loads a VM- and round-specific pattern into all
//! 32 Q registers and FPCR, yields its CPU (the hypervisor's YIELD call),
//! and checks every register and FPCR afterwards. The yield goes back to the
//! host, which may run another VM on this physical CPU in the meantime (and
//! the hypervisor must then switch the FP/SIMD state, lazily or not); as
//! the only guest, the yield simply returns.
//! Prints `guest-fp: VM <n>: <R> rounds, FP/SIMD state intact` or the first
//! corruption, then powers off.
#![no_std]
#![no_main]

use guest_rt::fpregs::{self, FpRegs, FPCR_MASK};
use guest_rt::println;

/// Rounds, each one yield.
pub const ROUNDS: u64 = 100;

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

fn run(vm: u64, rounds: u64) -> Result<(), (u64, &'static str, usize, u128, u128)> {
    let mut src = FpRegs::zero();
    for round in 0..rounds {
        for (r, q) in src.q.iter_mut().enumerate() {
            *q = pattern(vm, round, r);
        }
        src.fpcr = fpcr_pattern(vm, round);
        let dst = fpregs::across_yield(&src);
        if let Some(r) = (0..32).find(|&r| dst.q[r] != src.q[r]) {
            return Err((round, "q", r, dst.q[r], src.q[r]));
        }
        if dst.fpcr & FPCR_MASK != src.fpcr {
            return Err((round, "FPCR", 0, u128::from(dst.fpcr), u128::from(src.fpcr)));
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    if cpu != 0 {
        guest_rt::cpu_off();
    }
    // x0: the VM handle in bits [7:0]; the guest option `arg=N` above:
    // bit 0 idle (yields that touch no FP/SIMD register), bits above the
    // rounds (0: ROUNDS).
    let (vm, arg) = (x0 & 0xff, x0 >> 8);
    let rounds = match arg >> 1 {
        0 => ROUNDS,
        n => n,
    };
    if arg & 1 != 0 {
        println!("guest-fp: VM {vm}: idle, {rounds} yields without FP/SIMD");
        for _ in 0..rounds {
            guest_rt::yield_cpu();
        }
        guest_rt::system_off()
    }
    println!("guest-fp: VM {vm}: {rounds} rounds of 32 Q registers + FPCR across a yield");
    match run(vm, rounds) {
        Ok(()) => println!("guest-fp: VM {vm}: {rounds} rounds, FP/SIMD state intact"),
        Err((round, "q", r, got, want)) => {
            println!("guest-fp: VM {vm}: round {round}: q{r} is {got:#034x}, expected {want:#034x}")
        }
        Err((round, what, _, got, want)) => {
            println!("guest-fp: VM {vm}: round {round}: {what} is {got:#x}, expected {want:#x}")
        }
    }
    guest_rt::system_off()
}
