//! Self-hosted debug guest. x0 at entry: the VM handle in bits \[7:0\], the
//! guest option `arg=N` above.
//!
//! `arg=0`, the debugger: vCPU 0 starts vCPU 1 and both run [`ROUNDS`]
//! rounds, each of which, for every breakpoint and watchpoint the CPU has
//! (ID_AA64DFR0_EL1), arms it, yields its CPU (the host may run another VM
//! there, or this vCPU elsewhere: option `migrate`), reads the registers
//! back and triggers it, checking ESR_EL1, ELR_EL1 and FAR_EL1 of the debug
//! exception taken; then BRK, software step over instructions the
//! hypervisor emulates (an ID-register read, a trapped SMC, a vGIC read, an
//! HVC) with every step's ELR_EL1, the OS lock (locked: the breakpoint must
//! not fire; unlocked: it must), and an UNDEF for a breakpoint the CPU does
//! not have. vCPU 0 then arms watchpoints over the low 4 GiB with HMC set
//! (match at EL2 too) and breakpoints at EL2-like addresses, and makes
//! hypervisor exits: EL2 must not notice.
//!
//! `arg=1` and `arg=2`, the bystanders: they execute the debugger's
//! breakpoint address and touch its watched words (the same addresses: the
//! same image) with debug exceptions unmasked, between yields, and must take
//! no debug exception: `arg=1` owns its debug registers too (MDSCR_EL1.MDE
//! and KDE set, so the hypervisor loads its empty ones), `arg=2` never
//! touches them (its registers trap; the CPU's must be clear).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use guest_rt::{println, Exception, Frame};
use smccc::psci;

/// Rounds per vCPU.
const ROUNDS: u64 = 12;
/// Bystander iterations (each a yield).
const BYSTANDER_ITERS: u64 = 600;

const EC_UNKNOWN: u64 = 0x00;
const EC_BREAKPOINT_CUR: u64 = 0x31;
const EC_STEP_CUR: u64 = 0x33;
const EC_WATCHPOINT_CUR: u64 = 0x35;
const EC_BRK64: u64 = 0x3c;

const MDSCR_SS: u64 = 1 << 0;
const MDSCR_KDE: u64 = 1 << 13;
const MDSCR_MDE: u64 = 1 << 15;
const SPSR_SS: u64 = 1 << 21;
const SPSR_D: u64 = 1 << 9;

/// DBGBCR: E, PMC = 0b11 (EL1 and EL0), BAS = 0b1111 (A64).
const BCR_EL1: u64 = 1 | (0b11 << 1) | (0b1111 << 5);
/// DBGWCR: E, PAC = 0b11, LSC = 0b11 (loads and stores), BAS = 0xff.
const WCR_EL1: u64 = 1 | (0b11 << 1) | (0b11 << 3) | (0xff << 5);

/// Debug exceptions one vCPU took: (EC, ELR, FAR, ISS).
struct Taken {
    count: AtomicU64,
    ec: AtomicU64,
    elr: AtomicU64,
    far: AtomicU64,
    iss: AtomicU64,
}

impl Taken {
    const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            ec: AtomicU64::new(0),
            elr: AtomicU64::new(0),
            far: AtomicU64::new(0),
            iss: AtomicU64::new(0),
        }
    }
    fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.ec.store(u64::MAX, Ordering::SeqCst);
    }
    fn get(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.count.load(Ordering::SeqCst),
            self.ec.load(Ordering::SeqCst),
            self.elr.load(Ordering::SeqCst),
            self.far.load(Ordering::SeqCst),
            self.iss.load(Ordering::SeqCst),
        )
    }
}

static TAKEN: [Taken; 2] = [const { Taken::new() }; 2];
/// Which breakpoint/watchpoint each vCPU armed (to disarm it in the hook).
static ARMED: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Software-step log per vCPU: the ELR_EL1 of each step exception.
static STEPS: [[AtomicU64; 32]; 2] = [const { [const { AtomicU64::new(0) }; 32] }; 2];
static NSTEPS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
static DONE: AtomicU64 = AtomicU64::new(0);

/// The words the watchpoints watch, one per vCPU, each in its own 64 bytes.
#[repr(C, align(64))]
struct Watched([u64; 8]);
static mut WATCH: [Watched; 2] = [const { Watched([0; 8]) }; 2];

fn watch_addr(cpu: usize) -> *mut u64 {
    // SAFETY: only the address is taken.
    unsafe { core::ptr::addr_of_mut!(WATCH[cpu].0[0]) }
}

/// The breakpoint target.
#[inline(never)]
extern "C" fn bp_target() -> u64 {
    core::hint::black_box(0x1234)
}

fn cpu_index() -> usize {
    let m: u64;
    // SAFETY: reads MPIDR_EL1.
    unsafe { asm!("mrs {0}, mpidr_el1", out(reg) m, options(nomem, nostack)) };
    (m & 0xff) as usize
}

macro_rules! sysreg_rw {
    ($get:ident, $set:ident, $name:literal) => {
        fn $get() -> u64 {
            let v: u64;
            // SAFETY: a debug register read (trapped and emulated, or direct).
            unsafe { asm!(concat!("mrs {0}, ", $name), out(reg) v, options(nomem, nostack)) };
            v
        }
        fn $set(v: u64) {
            // SAFETY: a debug register write; the ISB makes it take effect.
            unsafe { asm!(concat!("msr ", $name, ", {0}"), "isb", in(reg) v, options(nostack)) };
        }
    };
}
sysreg_rw!(mdscr, set_mdscr, "mdscr_el1");

fn oslsr() -> u64 {
    let v: u64;
    // SAFETY: reads the OS lock status.
    unsafe { asm!("mrs {0}, oslsr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

fn set_oslar(v: u64) {
    // SAFETY: the OS lock.
    unsafe { asm!("msr oslar_el1, {0}", "isb", in(reg) v, options(nostack)) };
}

macro_rules! dbg_regs {
    ($get:ident, $set:ident, $op2:literal, $($i:literal => $c:literal),*) => {
        fn $get(n: u64) -> u64 {
            let v: u64;
            match n {
                // SAFETY: a debug register read.
                $($i => unsafe { asm!(concat!("mrs {0}, s2_0_c0_", $c, "_", $op2), out(reg) v, options(nomem, nostack)) },)*
                // SAFETY: as above.
                _ => unsafe { asm!(concat!("mrs {0}, s2_0_c0_c15_", $op2), out(reg) v, options(nomem, nostack)) },
            }
            v
        }
        fn $set(n: u64, v: u64) {
            match n {
                // SAFETY: a debug register write; the ISB makes it take effect.
                $($i => unsafe { asm!(concat!("msr s2_0_c0_", $c, "_", $op2, ", {0}"), "isb", in(reg) v, options(nostack)) },)*
                // SAFETY: as above.
                _ => unsafe { asm!(concat!("msr s2_0_c0_c15_", $op2, ", {0}"), "isb", in(reg) v, options(nostack)) },
            }
        }
    };
}
dbg_regs!(bvr, set_bvr, "4", 0 => "c0", 1 => "c1", 2 => "c2", 3 => "c3", 4 => "c4", 5 => "c5", 6 => "c6", 7 => "c7", 8 => "c8", 9 => "c9", 10 => "c10", 11 => "c11", 12 => "c12", 13 => "c13", 14 => "c14");
dbg_regs!(bcr, set_bcr, "5", 0 => "c0", 1 => "c1", 2 => "c2", 3 => "c3", 4 => "c4", 5 => "c5", 6 => "c6", 7 => "c7", 8 => "c8", 9 => "c9", 10 => "c10", 11 => "c11", 12 => "c12", 13 => "c13", 14 => "c14");
dbg_regs!(wvr, set_wvr, "6", 0 => "c0", 1 => "c1", 2 => "c2", 3 => "c3", 4 => "c4", 5 => "c5", 6 => "c6", 7 => "c7", 8 => "c8", 9 => "c9", 10 => "c10", 11 => "c11", 12 => "c12", 13 => "c13", 14 => "c14");
dbg_regs!(wcr, set_wcr, "7", 0 => "c0", 1 => "c1", 2 => "c2", 3 => "c3", 4 => "c4", 5 => "c5", 6 => "c6", 7 => "c7", 8 => "c8", 9 => "c9", 10 => "c10", 11 => "c11", 12 => "c12", 13 => "c13", 14 => "c14");

fn unmask_debug() {
    // SAFETY: PSTATE.D only.
    unsafe { asm!("msr daifclr, #8", "isb", options(nostack)) };
}
fn mask_debug() {
    // SAFETY: PSTATE.D only.
    unsafe { asm!("msr daifset, #8", "isb", options(nostack)) };
}

/// Bystander mode (0: the debugger).
static MODE: AtomicU64 = AtomicU64::new(0);
/// Debug exceptions a bystander took.
static STRAY: AtomicU64 = AtomicU64::new(0);

fn hook(e: &Exception, f: &mut Frame) -> bool {
    let cpu = cpu_index().min(1);
    let ec = e.esr >> 26;
    let iss = e.esr & 0x1ff_ffff;
    if MODE.load(Ordering::Relaxed) != 0 {
        if matches!(ec, EC_BREAKPOINT_CUR | EC_STEP_CUR | EC_WATCHPOINT_CUR) {
            // Another VM's breakpoint fired here: count it, and go on with
            // debug exceptions masked.
            STRAY.fetch_add(1, Ordering::SeqCst);
            f.spsr |= SPSR_D;
            return true;
        }
        return false;
    }
    let t = &TAKEN[cpu];
    match ec {
        EC_STEP_CUR => {
            let i = NSTEPS[cpu].fetch_add(1, Ordering::SeqCst);
            if let Some(s) = STEPS[cpu].get(i) {
                s.store(f.elr, Ordering::SeqCst);
            }
            f.spsr |= SPSR_SS;
            return true;
        }
        EC_BRK64 if iss & 0xffff == 0x100 => {
            // Start stepping: back past the BRK, with PSTATE.SS set and
            // debug exceptions unmasked.
            f.elr += 4;
            f.spsr = (f.spsr | SPSR_SS) & !SPSR_D;
            return true;
        }
        EC_BRK64 if iss & 0xffff == 0x101 => {
            f.elr += 4;
            f.spsr = (f.spsr & !SPSR_SS) | SPSR_D;
            return true;
        }
        _ => {}
    }
    t.count.fetch_add(1, Ordering::SeqCst);
    t.ec.store(ec, Ordering::SeqCst);
    t.elr.store(f.elr, Ordering::SeqCst);
    t.far.store(e.far, Ordering::SeqCst);
    t.iss.store(iss, Ordering::SeqCst);
    let n = ARMED[cpu].load(Ordering::SeqCst);
    match ec {
        // The breakpoint or watchpoint is disarmed and the instruction runs
        // again.
        EC_BREAKPOINT_CUR => set_bcr(n, 0),
        EC_WATCHPOINT_CUR => set_wcr(n, 0),
        EC_BRK64 | EC_UNKNOWN => f.elr += 4,
        _ => return false,
    }
    true
}

global_asm!(
    ".global guest_debug_step_region",
    "guest_debug_step_region:",
    "    brk     #0x100",
    "    mov     x9, #1",
    "    mrs     x10, id_aa64dfr0_el1",
    "    add     x9, x9, #1",
    "    mov     x0, x13",
    "    smc     #0",
    "    add     x9, x9, #1",
    "    ldr     w11, [x12]",
    "    mov     x0, x13",
    "    hvc     #0",
    "    add     x9, x9, #1",
    "    brk     #0x101",
    "    ret",
);

unsafe extern "C" {
    fn guest_debug_step_region();
}

/// Instructions stepped: from `mov x9, #1` to the one before `brk #0x101`.
const STEPPED: usize = 10;

type Check = Result<(), &'static str>;

fn expect(ok: bool, what: &'static str) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what)
    }
}

fn breakpoint(cpu: usize, n: u64) -> Check {
    let t = &TAKEN[cpu];
    let target = bp_target as *const () as u64;
    ARMED[cpu].store(n, Ordering::SeqCst);
    set_bvr(n, target);
    set_bcr(n, BCR_EL1);
    guest_rt::yield_cpu();
    expect(
        bvr(n) == target && bcr(n) == BCR_EL1,
        "DBGBVR/DBGBCR changed across a yield",
    )?;
    t.reset();
    bp_target();
    let (count, ec, elr, _, _) = t.get();
    expect(count == 1, "breakpoint: not exactly one exception")?;
    expect(
        ec == EC_BREAKPOINT_CUR,
        "breakpoint: ESR_EL1.EC is not 0x31",
    )?;
    expect(elr == target, "breakpoint: ELR_EL1 is not the target")?;
    expect(bcr(n) == 0, "breakpoint: not disarmed")?;
    bp_target();
    expect(t.get().0 == 1, "breakpoint: fired while disarmed")
}

fn watchpoint(cpu: usize, n: u64) -> Check {
    let t = &TAKEN[cpu];
    let addr = watch_addr(cpu);
    ARMED[cpu].store(n, Ordering::SeqCst);
    set_wvr(n, addr as u64);
    set_wcr(n, WCR_EL1);
    guest_rt::yield_cpu();
    expect(
        wvr(n) == addr as u64 && wcr(n) == WCR_EL1,
        "DBGWVR/DBGWCR changed across a yield",
    )?;
    for write in [true, false] {
        t.reset();
        // SAFETY: this vCPU's word.
        unsafe {
            if write {
                core::ptr::write_volatile(addr, n);
            } else {
                let _ = core::ptr::read_volatile(addr);
            }
        }
        let (count, ec, _, far, iss) = t.get();
        expect(count == 1, "watchpoint: not exactly one exception")?;
        expect(
            ec == EC_WATCHPOINT_CUR,
            "watchpoint: ESR_EL1.EC is not 0x35",
        )?;
        expect(far == addr as u64, "watchpoint: FAR_EL1 is not the word")?;
        expect(
            (iss >> 6) & 1 == u64::from(write),
            "watchpoint: ESR_EL1.WnR is wrong",
        )?;
        set_wcr(n, WCR_EL1);
    }
    set_wcr(n, 0);
    Ok(())
}

fn brk(cpu: usize) -> Check {
    let t = &TAKEN[cpu];
    t.reset();
    // SAFETY: the hook steps past it.
    unsafe { asm!("brk #0x42", options(nostack)) };
    let (count, ec, _, _, iss) = t.get();
    expect(
        count == 1 && ec == EC_BRK64 && iss & 0xffff == 0x42,
        "BRK: wrong exception",
    )
}

fn step(cpu: usize) -> Check {
    NSTEPS[cpu].store(0, Ordering::SeqCst);
    // Masked: with MDSCR_EL1.SS set and PSTATE.SS clear, an unmasked step
    // would be active-pending at once. The BRK starting the region returns
    // with SPSR_EL1.SS set and D clear; the one ending it masks again.
    mask_debug();
    set_mdscr(mdscr() | MDSCR_SS);
    let gicd_typer = guest_rt::gic::GICD_BASE as u64 + 4;
    // SAFETY: the region reads GICD_TYPER and calls PSCI_VERSION; it
    // clobbers only the registers named.
    unsafe {
        asm!("bl guest_debug_step_region",
            in("x12") gicd_typer, in("x13") u64::from(psci::PSCI_VERSION),
            out("x0") _, out("x9") _, out("x10") _, out("x11") _, out("x30") _,
            out("x1") _, out("x2") _, out("x3") _, options(nostack))
    };
    set_mdscr(mdscr() & !MDSCR_SS);
    unmask_debug();
    let start = guest_debug_step_region as *const () as u64;
    let n = NSTEPS[cpu].load(Ordering::SeqCst);
    for (i, s) in STEPS[cpu].iter().take(n.min(32)).enumerate() {
        let want = start + 8 + 4 * i as u64;
        if s.load(Ordering::SeqCst) != want {
            println!(
                "guest-debug: vCPU {cpu}: step {i} at {:#x}, expected {want:#x}",
                s.load(Ordering::SeqCst)
            );
            return Err("software step: an instruction was skipped or repeated");
        }
    }
    expect(n == STEPPED, "software step: wrong number of steps")
}

fn os_lock(cpu: usize) -> Check {
    let t = &TAKEN[cpu];
    let target = bp_target as *const () as u64;
    ARMED[cpu].store(0, Ordering::SeqCst);
    set_bvr(0, target);
    set_bcr(0, BCR_EL1);
    set_oslar(1);
    expect(
        oslsr() & 0b1010 == 0b1010,
        "OS lock: OSLSR_EL1 does not say locked",
    )?;
    guest_rt::yield_cpu();
    t.reset();
    bp_target();
    expect(t.get().0 == 0, "OS lock: a breakpoint fired while locked")?;
    set_oslar(0);
    expect(
        oslsr() & 0b1010 == 0b1000,
        "OS lock: OSLSR_EL1 does not say unlocked",
    )?;
    guest_rt::yield_cpu();
    bp_target();
    expect(t.get().0 == 1, "OS lock: no breakpoint after unlocking")
}

fn missing(cpu: usize, brps: u64) -> Check {
    if brps >= 16 {
        return Ok(());
    }
    let t = &TAKEN[cpu];
    t.reset();
    let _ = bvr(brps);
    expect(
        t.get().0 == 1 && t.get().1 == EC_UNKNOWN,
        "a missing breakpoint is not UNDEFINED",
    )
}

fn counts() -> (u64, u64) {
    let dfr0: u64;
    // SAFETY: an ID register read.
    unsafe { asm!("mrs {0}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack)) };
    (((dfr0 >> 12) & 0xf) + 1, ((dfr0 >> 20) & 0xf) + 1)
}

fn debugger(cpu: usize) -> Check {
    let (brps, wrps) = counts();
    set_oslar(0);
    set_mdscr(MDSCR_MDE | MDSCR_KDE);
    unmask_debug();
    for _ in 0..ROUNDS {
        for n in 0..brps {
            breakpoint(cpu, n)?;
        }
        for n in 0..wrps {
            watchpoint(cpu, n)?;
        }
        brk(cpu)?;
        step(cpu)?;
        os_lock(cpu)?;
        set_bcr(0, 0);
        missing(cpu, brps)?;
    }
    mask_debug();
    set_mdscr(0);
    println!(
        "guest-debug: vCPU {cpu}: {ROUNDS} rounds of {brps} breakpoints, {wrps} watchpoints, BRK, step, OS lock: OK"
    );
    Ok(())
}

/// Watchpoints over the low 4 GiB with HMC (EL2 matching) and breakpoints
/// at EL2-like addresses, armed while the guest makes exits of every kind
/// (with its own debug exceptions masked, so only EL2 could trigger them).
fn hostile(cpu: usize) -> Check {
    let (brps, wrps) = counts();
    // PAC = 0b01 with HMC: EL1 and EL2; LSC both; BAS 0xff; MASK 31 (2 GiB).
    let wcr = 1 | (0b01 << 1) | (0b11 << 3) | (0xff << 5) | (1 << 13) | (31 << 24);
    for n in 0..wrps {
        set_wvr(n, (n & 1) << 31);
        set_wcr(n, wcr);
    }
    // PMC = 0b01 with HMC: EL1 and EL2, at the hypervisor's lower-EL
    // vectors (QEMU virt: VBAR_EL2 0x40200800; raspi4b: its image at
    // 0x80000), which this guest's small image never reaches.
    let bcr = 1 | (0b01 << 1) | (0b1111 << 5) | (1 << 13);
    for n in 0..brps {
        let base = if n % 2 == 0 { 0x4020_0800 } else { 0x8_0800 };
        set_bvr(n, base + 0x400 + (n / 2) * 0x80);
        set_bcr(n, bcr);
    }
    set_mdscr(MDSCR_MDE | MDSCR_KDE | MDSCR_SS);
    let exits = 300;
    for i in 0..exits {
        let _ = guest_rt::hvc(psci::PSCI_VERSION, 0, 0, 0);
        let _ = guest_rt::smc(psci::PSCI_VERSION, 0, 0, 0);
        // SAFETY: GICD_TYPER, a read-only vGIC register.
        let _ = unsafe { core::ptr::read_volatile((guest_rt::gic::GICD_BASE + 4) as *const u32) };
        let _ = counts();
        if i % 32 == 0 {
            guest_rt::yield_cpu();
        }
    }
    set_mdscr(MDSCR_MDE | MDSCR_KDE);
    for n in 0..brps {
        set_bcr(n, 0);
    }
    for n in 1..wrps {
        set_wcr(n, 0);
    }
    // The watchpoints were live: unmasked, this vCPU's own store hits one.
    let t = &TAKEN[cpu];
    ARMED[cpu].store(0, Ordering::SeqCst);
    t.reset();
    unmask_debug();
    // SAFETY: this vCPU's word (below 2 GiB on these boards: watchpoint 0).
    unsafe { core::ptr::write_volatile(watch_addr(cpu), 7) };
    mask_debug();
    let (count, ec, _, far, _) = t.get();
    for n in 0..wrps {
        set_wcr(n, 0);
    }
    for n in 0..brps {
        set_bcr(n, 0);
    }
    set_mdscr(0);
    // The first access after unmasking hits watchpoint 0 (the low 2 GiB):
    // the store, or a stack access before it.
    expect(
        count == 1 && ec == EC_WATCHPOINT_CUR && far < 1 << 31,
        "the EL2-wide watchpoint did not fire for the guest's own store",
    )?;
    println!("guest-debug: VM: {exits} rounds of exits under EL2-matching watchpoints and breakpoints: EL2 unaffected");
    Ok(())
}

fn bystander(vm: u64, mode: u64) -> ! {
    MODE.store(mode, Ordering::SeqCst);
    if mode == 1 {
        set_oslar(0);
        set_mdscr(MDSCR_MDE | MDSCR_KDE);
    }
    unmask_debug();
    for i in 0..BYSTANDER_ITERS {
        bp_target();
        // SAFETY: this VM's own copy of the debugger's watched words.
        unsafe {
            core::ptr::write_volatile(watch_addr(0), i);
            core::ptr::write_volatile(watch_addr(1), i);
        }
        guest_rt::yield_cpu();
    }
    let stray = STRAY.load(Ordering::SeqCst);
    let what = if mode == 1 { "owner" } else { "no debug" };
    if stray == 0 {
        println!("guest-debug: VM {vm}: bystander ({what}): {BYSTANDER_ITERS} iterations, no debug exception");
    } else {
        println!("guest-debug: VM {vm}: bystander ({what}): FAIL: {stray} debug exceptions from another VM");
    }
    guest_rt::system_off()
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    guest_rt::set_exception_hook(hook);
    if cpu > 1 {
        guest_rt::cpu_off();
    }
    if cpu == 1 {
        let r = debugger(1);
        if let Err(e) = r {
            println!("guest-debug: vCPU 1: FAIL: {e}");
        }
        DONE.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
        guest_rt::cpu_off();
    }
    let (vm, arg) = (x0 & 0xff, x0 >> 8);
    if arg != 0 {
        bystander(vm, arg);
    }
    let (brps, wrps) = counts();
    println!("guest-debug: VM {vm}: {brps} breakpoints, {wrps} watchpoints");
    let r = guest_rt::hvc(psci::PSCI_CPU_ON_64, 1, guest_rt::entry_point(), 1)[0] as i64;
    if r != 0 {
        println!("guest-debug: VM {vm}: FAIL: CPU_ON(1) = {r}");
        guest_rt::system_off();
    }
    let mut r = debugger(0);
    while r.is_ok() && DONE.load(Ordering::SeqCst) == 0 {
        guest_rt::yield_cpu();
    }
    if r.is_ok() && DONE.load(Ordering::SeqCst) != 1 {
        r = Err("vCPU 1 failed");
    }
    if r.is_ok() {
        r = hostile(0);
    }
    match r {
        Ok(()) => println!("guest-debug: VM {vm}: PASS"),
        Err(e) => println!("guest-debug: VM {vm}: FAIL: {e}"),
    }
    guest_rt::system_off()
}
