//! The host attacks the hypervisor continuously (`fuzz=N seed=S`): every
//! host CPU issues random control calls, valid and invalid, interleaved
//! with VCPU_RUN and MMIO_COMPLETE on live vCPUs of protected and normal
//! VMs running real guest images (guest-hello, guest-fp, guest-bench), and
//! checks the answers against its own model.
//!
//! * **Work.** Host CPU *c* owns [`SLOTS`] VM slots and a private area of
//!   its RAM (guest RAM, the runs it donates for VM state and tables, and
//!   pages for extra gives): only it changes who owns those pages, so its
//!   model of them is exact. It also *interferes* with the other CPUs' VMs
//!   (their handles are published in [`PUBLISHED`]): VCPU_RUN of their
//!   guest-fp vCPUs (which never power off), MMIO_COMPLETE, VCPU_STATE,
//!   STATS; that is where Busy comes from (a vCPU running on another CPU,
//!   VM_DESTROY of a VM with a running vCPU). CPUs share nothing but
//!   single-word atomics written by one CPU (no exclusives: the host runs
//!   with its MMU off, so its memory is Device).
//! * **Model.** Per page of its area: the host's, the hypervisor's (a VM's
//!   state run), donated, lent, or in a VM being destroyed. Per slot: the
//!   VM's handle, kind, vCPUs, runs, extra regions (IPA ranges), whether it
//!   powered off or is dying, reads awaiting completion, and the one page a
//!   sharing guest (guest-bench's MEM_SHARE loop) was seen to share.
//!   Calls whose outcome the model decides (malformed arguments, pages not
//!   the host's, overlapping IPAs, a protected VM's second VCPU_INIT, a
//!   stopped VM...) must return exactly the predicted code; calls whose
//!   outcome depends on other CPUs or the guest (runs, completions) must
//!   return one of the codes the ABI allows there.
//! * **Batches.** After every [`BATCH`] calls a CPU probes its area: each
//!   page it believes it no longer owns (donated, or the hypervisor's) must
//!   fault on a host read (the hypervisor injects an abort; the exception
//!   hook counts and skips it), each page it owns or lent must read; then
//!   it asks the hypervisor to audit itself (AUDIT): 0 violations.
//! * **End.** Every VM is destroyed, every page of every area is written
//!   and read back, the counts are printed per call type, and each has a
//!   floor (a run where nearly every call is rejected, or no guest code
//!   runs, fails).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::{println, Exception, Frame};
use hyp_abi::{exit, BootInfo, HostError, Module};

use crate::{fail, GUEST_RAM_IPA, PAGE};

const MAX_CPUS: usize = 8;
/// VM slots per host CPU.
const SLOTS: usize = 3;
/// Guest RAM per VM (1 MiB: one give).
const RAM_PAGES: u64 = 256;
/// Pages per run donated for a VM's state and tables.
const RUN_PAGES: u64 = hyp_abi::VM_CREATE_PAGES;
/// Runs per slot (VM_CREATE's and VM_TOPUP's).
const RUNS: u64 = 8;
/// Pages per slot for extra gives at random IPAs.
const EXTRA_PAGES: u64 = 64;
/// Most extra regions per VM.
const MAX_EXTRAS: usize = 8;
/// IPA window of the extra gives (above the guest's RAM).
const EXTRA_IPA: u64 = GUEST_RAM_IPA + (4 << 20);
const EXTRA_IPA_PAGES: u64 = 256;
const SLOT_PAGES: u64 = RAM_PAGES + RUNS * RUN_PAGES + EXTRA_PAGES;
const CPU_PAGES: u64 = SLOTS as u64 * SLOT_PAGES;
/// Calls between two probe-and-audit rounds.
const BATCH: u64 = 1000;

/// Call types, as counted.
const TYPES: [&str; 14] = [
    "VM_CREATE",
    "VM_DESTROY",
    "MEM_DONATE",
    "MEM_LEND",
    "VCPU_INIT",
    "VCPU_RUN",
    "MMIO_COMPLETE",
    "STATS",
    "VCPU_STATE",
    "VM_TOPUP",
    "other-VM",
    "bad-fid",
    "AUDIT",
    "IRQ_DECLARE/IRQ_LINE",
];
const NT: usize = TYPES.len();
const T_CREATE: usize = 0;
const T_DESTROY: usize = 1;
const T_DONATE: usize = 2;
const T_LEND: usize = 3;
const T_INIT: usize = 4;
const T_RUN: usize = 5;
const T_MMIO: usize = 6;
const T_STATS: usize = 7;
const T_STATE: usize = 8;
const T_TOPUP: usize = 9;
const T_OTHER: usize = 10;
const T_BADFID: usize = 11;
const T_AUDIT: usize = 12;
const T_IRQ: usize = 13;
/// Result columns: 0 ok, 1..=8 the errors (`-code`).
const RES: usize = 9;

/// Figures each CPU keeps (written only by it: load + store, no
/// read-modify-write across CPUs).
struct Figures {
    counts: [[AtomicU64; RES]; NT],
    /// VCPU_RUNs that entered the guest (returned an exit record).
    ran: AtomicU64,
    mmio_exits: AtomicU64,
    memory_exits: AtomicU64,
    system_offs: AtomicU64,
    vms: AtomicU64,
    probes: AtomicU64,
    faulted: AtomicU64,
    shared_seen: AtomicU64,
    mismatches: AtomicU64,
    violations: AtomicU64,
    guest_exits: AtomicU64,
    pages_back: AtomicU64,
    done: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const, reason = "array initialiser")]
const Z: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const, reason = "array initialiser")]
const FIG: Figures = Figures {
    counts: [const { [Z; RES] }; NT],
    ran: Z,
    mmio_exits: Z,
    memory_exits: Z,
    system_offs: Z,
    vms: Z,
    probes: Z,
    faulted: Z,
    shared_seen: Z,
    mismatches: Z,
    violations: Z,
    guest_exits: Z,
    pages_back: Z,
    done: AtomicBool::new(false),
};
static FIGS: [Figures; MAX_CPUS] = [FIG; MAX_CPUS];

fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Each slot's VM as the other CPUs may use it: handle | kind << 32 (0:
/// none). Written by the owner only.
static PUBLISHED: [[AtomicU64; SLOTS]; MAX_CPUS] = [const { [Z; SLOTS] }; MAX_CPUS];
/// The fuzz parameters for the other CPUs (set before they start).
static RUNNING: AtomicBool = AtomicBool::new(false);
static PARAMS: [AtomicU64; 4] = [Z; 4]; // calls per CPU, seed, area base, info
static CPUS: AtomicU64 = AtomicU64::new(1);

static ARMED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static FAULTS: [AtomicU64; MAX_CPUS] = [Z; MAX_CPUS];

fn cpu() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {0}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    ((mpidr & 0xff) as usize).min(MAX_CPUS - 1)
}

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    let c = cpu();
    // A data abort at EL1 (what the hypervisor injects for a refused
    // stage-2 access) while this CPU's probe is armed.
    if e.vector == 4 && e.esr >> 26 == 0x25 && ARMED[c].load(Ordering::Relaxed) {
        bump(&FAULTS[c], 1);
        f.elr += 4;
        return true;
    }
    false
}

/// One `ldr` from `pa`: whether it faulted.
fn probe(pa: u64) -> bool {
    let c = cpu();
    let before = FAULTS[c].load(Ordering::Relaxed);
    ARMED[c].store(true, Ordering::Relaxed);
    let mut v: u64 = 0;
    // SAFETY: a single load from host RAM (identity-mapped at stage 2); if
    // the hypervisor refuses it, the armed hook skips it.
    unsafe {
        asm!("ldr {v}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    core::hint::black_box(v);
    ARMED[c].store(false, Ordering::Relaxed);
    FAULTS[c].load(Ordering::Relaxed) != before
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// What a page of a CPU's area is, in its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pg {
    Host,
    Hyp,
    Donated,
    Lent,
    /// Its VM is being destroyed: comes back at some step.
    Dying,
}

/// The guests the fuzzer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// guest-hello: starts its other vCPUs, prints, powers off.
    Hello = 1,
    /// guest-fp, WFI loop without FP (never powers off).
    FpIdle = 2,
    /// guest-fp, FP rounds across a yield (never powers off).
    FpBusy = 3,
    /// guest-bench reading the host's test device (MMIO exits), 10,000
    /// times, then powers off.
    BenchMmio = 4,
    /// guest-bench sharing and unsharing a page 10,000 times (protected),
    /// then powers off.
    BenchShare = 5,
}

impl Kind {
    fn of(n: u64) -> Option<Self> {
        Some(match n {
            1 => Self::Hello,
            2 => Self::FpIdle,
            3 => Self::FpBusy,
            4 => Self::BenchMmio,
            5 => Self::BenchShare,
            _ => return None,
        })
    }
    /// Never powers off: other CPUs may run it.
    fn endless(self) -> bool {
        matches!(self, Self::FpIdle | Self::FpBusy)
    }
}

#[derive(Debug, Clone, Copy)]
struct Extra {
    pages: u64,
    ipa: u64,
}

/// One slot's VM in the model.
#[derive(Debug, Clone, Copy)]
struct Vm {
    h: u64,
    kind: Kind,
    protected: bool,
    vcpus: u64,
    runs: u64,
    extras: [Option<Extra>; MAX_EXTRAS],
    /// Powered off (SYSTEM_OFF seen, or a call said it is stopped).
    off: bool,
    dying: bool,
    mmio: [bool; 8],
    /// A donated page the guest was seen to share (a host read succeeded).
    shared: Option<u64>,
}

struct Worker {
    cpu: usize,
    cpus: usize,
    rng: Rng,
    /// First page of this CPU's area.
    base: u64,
    pages: [Pg; CPU_PAGES as usize],
    vms: [Option<Vm>; SLOTS],
    modules: [Module; 3],
}

type R = Result<u64, HostError>;

fn call5(fid: u32, a: [u64; 5]) -> [u64; 4] {
    let mut args = [0u64; 17];
    args[..5].copy_from_slice(&a);
    let r = <smccc::Hvc as smccc::Call>::call64(fid, args);
    [r[0], r[1], r[2], r[3]]
}

fn res(x0: u64) -> R {
    match HostError::from_code(x0) {
        Some(e) => Err(e),
        None => Ok(x0),
    }
}

fn col(r: R) -> usize {
    match r {
        Ok(_) => 0,
        Err(e) => (-(e as i64)) as usize,
    }
}

/// Issues `fid` from host CPU `cpu` (counted under `t`); checks the answer
/// against `ok`, the outcomes the model allows.
fn issue(cpu: usize, t: usize, fid: u32, a: [u64; 5], ok: &dyn Fn(R) -> bool) -> [u64; 4] {
    let x = call5(fid, a);
    let r = res(x[0]);
    bump(&FIGS[cpu].counts[t][col(r)], 1);
    if !ok(r) {
        bump(&FIGS[cpu].mismatches, 1);
        println!(
            "host: FAIL fuzz: CPU {cpu}: {} {a:x?} answered {r:?}, which the model does not allow",
            TYPES[t]
        );
    }
    x
}

impl Worker {
    fn fig(&self) -> &'static Figures {
        &FIGS[self.cpu]
    }

    fn slot_base(&self, s: usize) -> u64 {
        self.base + s as u64 * SLOT_PAGES * PAGE
    }
    fn ram_pa(&self, s: usize) -> u64 {
        self.slot_base(s)
    }
    fn run_pa(&self, s: usize, i: u64) -> u64 {
        self.slot_base(s) + (RAM_PAGES + i * RUN_PAGES) * PAGE
    }
    fn extra_pa(&self, s: usize, first: u64) -> u64 {
        self.slot_base(s) + (RAM_PAGES + RUNS * RUN_PAGES + first) * PAGE
    }
    fn set(&mut self, pa: u64, pages: u64, pg: Pg) {
        let i = ((pa - self.base) / PAGE) as usize;
        for p in &mut self.pages[i..i + pages as usize] {
            *p = pg;
        }
    }
    fn all_host(&self, pa: u64, pages: u64) -> bool {
        let i = ((pa - self.base) / PAGE) as usize;
        self.pages[i..i + pages as usize]
            .iter()
            .all(|p| *p == Pg::Host)
    }

    fn publish(&self, s: usize) {
        let v = self.vms[s].map_or(0, |vm| vm.h | (vm.kind as u64) << 32);
        PUBLISHED[self.cpu][s].store(v, Ordering::Release);
    }

    /// A new VM in empty slot `s`: VM_CREATE, the guest image copied into
    /// its RAM, RAM given (topped up as needed), vCPU 0 started.
    fn create(&mut self, s: usize) {
        let kind = Kind::of(1 + self.rng.below(5)).unwrap_or(Kind::FpIdle);
        let protected = kind == Kind::BenchShare || self.rng.chance(50);
        let vcpus = if kind == Kind::Hello {
            1 + self.rng.below(4)
        } else {
            1 + self.rng.below(2)
        };
        let run = self.run_pa(s, 0);
        let x = issue(
            self.cpu,
            T_CREATE,
            hyp_abi::VM_CREATE,
            [vcpus, u64::from(protected), run, RUN_PAGES, 0],
            &|r| r.is_ok(),
        );
        let Ok(h) = res(x[0]) else { return };
        bump(&self.fig().vms, 1);
        self.set(run, RUN_PAGES, Pg::Hyp);
        let mut vm = Vm {
            h,
            kind,
            protected,
            vcpus,
            runs: 1,
            extras: [None; MAX_EXTRAS],
            off: false,
            dying: false,
            mmio: [false; 8],
            shared: None,
        };
        let module = self.modules[match kind {
            Kind::Hello => 0,
            Kind::FpIdle | Kind::FpBusy => 1,
            _ => 2,
        }];
        let pa = self.ram_pa(s);
        // SAFETY: the slot's RAM is this CPU's and the host's (the model
        // says so: the slot was empty).
        unsafe { crate::load_image(&module, pa) };
        let (fid, t, pg) = if protected {
            (hyp_abi::MEM_DONATE, T_DONATE, Pg::Donated)
        } else {
            (hyp_abi::MEM_LEND, T_LEND, Pg::Lent)
        };
        // A third of the VMs get their RAM lazily (mapped on first touch:
        // faults that need tables, MEMORY exits, VM_TOPUP).
        let lazy = u64::from(self.rng.chance(33)) * hyp_abi::MEM_FLAG_LAZY;
        loop {
            let x = issue(
                self.cpu,
                t,
                fid,
                [h, pa, GUEST_RAM_IPA, RAM_PAGES, lazy],
                &|r| matches!(r, Ok(_) | Err(HostError::NoMemory)),
            );
            match res(x[0]) {
                Ok(_) => break,
                Err(_) if vm.runs < RUNS => self.topup(s, &mut vm),
                Err(_) => {
                    // No pages left to top up with: the VM is torn down.
                    self.vms[s] = Some(vm);
                    self.destroy(s);
                    return;
                }
            }
        }
        self.set(pa, RAM_PAGES, pg);
        let arg = match kind {
            Kind::Hello => 0,
            Kind::FpIdle => (1 << 41) | 1,
            Kind::FpBusy => 1 << 41,
            Kind::BenchMmio => 4 | 10_000 << 8,
            Kind::BenchShare => 6 | 10_000 << 8,
        };
        // A protected VM's VCPU_INIT loads its firmware into the VM's own
        // pages: NoMemory until enough are topped up.
        loop {
            let x = issue(
                self.cpu,
                T_INIT,
                hyp_abi::VCPU_INIT,
                [h, 0, module.entry, (h & 0xff) | arg << 8, 0],
                &|r| r.is_ok() || (vm.protected && r == Err(HostError::NoMemory)),
            );
            match res(x[0]) {
                Ok(_) => break,
                Err(_) if vm.runs < RUNS => self.topup(s, &mut vm),
                Err(_) => {
                    self.vms[s] = Some(vm);
                    self.destroy(s);
                    return;
                }
            }
        }
        self.vms[s] = Some(vm);
        self.publish(s);
    }

    /// One more run for `vm` (slot `s`); the model must allow it.
    fn topup(&mut self, s: usize, vm: &mut Vm) {
        let pa = self.run_pa(s, vm.runs);
        let x = issue(
            self.cpu,
            T_TOPUP,
            hyp_abi::VM_TOPUP,
            [vm.h, pa, RUN_PAGES, 0, 0],
            &|r| r.is_ok(),
        );
        if res(x[0]).is_ok() {
            self.set(pa, RUN_PAGES, Pg::Hyp);
            vm.runs += 1;
        }
    }

    /// VM_DESTROY to the end (Busy while another CPU runs one of its
    /// vCPUs: tried again); every page of the slot is the host's again.
    fn destroy(&mut self, s: usize) {
        let Some(mut vm) = self.vms[s] else { return };
        // Others stop picking it first.
        PUBLISHED[self.cpu][s].store(0, Ordering::Release);
        let exits = call5(hyp_abi::STATS, [vm.h, hyp_abi::STATS_TOTAL, 0, 0, 0])[0];
        if HostError::from_code(exits).is_none() {
            bump(&self.fig().guest_exits, exits);
        }
        let endless = vm.kind.endless();
        let (start, end) = (self.slot_base(s), self.slot_base(s) + SLOT_PAGES * PAGE);
        for _ in 0..1_000_000 {
            let x = issue(
                self.cpu,
                T_DESTROY,
                hyp_abi::VM_DESTROY,
                [vm.h, 0, 0, 0, 0],
                &|r| r.is_ok() || (endless && r == Err(HostError::Busy)),
            );
            match res(x[0]) {
                Ok(_) => {
                    if !vm.dying {
                        vm.dying = true;
                        for i in 0..SLOT_PAGES {
                            let pa = start + i * PAGE;
                            if self.pages[((pa - self.base) / PAGE) as usize] != Pg::Host {
                                self.set(pa, 1, Pg::Dying);
                            }
                        }
                        self.vms[s] = Some(vm);
                    }
                    if x[1] == 0 {
                        self.set(start, (end - start) / PAGE, Pg::Host);
                        self.vms[s] = None;
                        return;
                    }
                }
                Err(HostError::Busy) => {
                    // SAFETY: a hint.
                    unsafe { asm!("yield", options(nomem, nostack, preserves_flags)) };
                }
                Err(e) => fail(format_args!("fuzz: VM_DESTROY {}: {e:?}", vm.h)),
            }
        }
        fail(format_args!("fuzz: VM_DESTROY {} never ended", vm.h))
    }

    /// VCPU_RUN of own vCPU `v` of slot `s` (answering an outstanding read
    /// first when the model knows of one), and what the exit asks for.
    fn run(&mut self, s: usize, v: u64) {
        let Some(mut vm) = self.vms[s] else { return };
        let complete = vm.mmio[v as usize] && self.rng.chance(90);
        let flags = u64::from(complete) * hyp_abi::RUN_COMPLETE_MMIO;
        let (off, endless) = (vm.off || vm.dying, vm.kind.endless());
        let x = issue(
            self.cpu,
            T_RUN,
            hyp_abi::VCPU_RUN,
            [vm.h, v, flags, self.rng.next(), 0],
            &|r| match r {
                Ok(code) => !off && code <= exit::MEMORY,
                // Off vCPU, awaiting completion, stopped VM; another CPU
                // runs it (only the endless guests are run by others).
                Err(HostError::State) => true,
                Err(HostError::Busy) => endless && !off,
                Err(_) => false,
            },
        );
        if complete && res(x[0]) != Err(HostError::State) {
            vm.mmio[v as usize] = false;
        }
        match res(x[0]) {
            Ok(code) => {
                bump(&self.fig().ran, 1);
                match code {
                    exit::MMIO => {
                        bump(&self.fig().mmio_exits, 1);
                        vm.mmio[v as usize] = x[2] & (1 << 8) == 0;
                    }
                    exit::MEMORY => {
                        bump(&self.fig().memory_exits, 1);
                        if vm.runs < RUNS {
                            self.topup(s, &mut vm);
                        }
                    }
                    exit::SYSTEM_OFF | exit::SYSTEM_RESET => {
                        bump(&self.fig().system_offs, 1);
                        vm.off = true;
                    }
                    _ => {}
                }
            }
            Err(HostError::State) if vm.mmio[v as usize] && !complete => {}
            Err(_) => {}
        }
        if self.vms[s].is_some() {
            self.vms[s] = Some(vm);
        }
    }

    /// A random extra MEM_DONATE/MEM_LEND to slot `s`'s VM, its outcome
    /// predicted.
    fn give_extra(&mut self, s: usize) {
        let Some(mut vm) = self.vms[s] else { return };
        let donate = if self.rng.chance(85) {
            vm.protected
        } else {
            !vm.protected
        };
        let n = 1 + self.rng.below(8);
        let first = self.rng.below(EXTRA_PAGES - n + 1);
        let mut pa = self.extra_pa(s, first);
        let mut ipa = EXTRA_IPA + self.rng.below(EXTRA_IPA_PAGES) * PAGE;
        let mut pages = n;
        let mut flags = u64::from(self.rng.chance(40)) * hyp_abi::MEM_FLAG_LAZY;
        let mut want = None;
        let mut pa_range = false;
        match self.rng.below(12) {
            0 => {
                flags |= 2;
                want = Some(HostError::Invalid);
            }
            1 => {
                pages = if self.rng.chance(50) { 0 } else { 513 };
                want = Some(HostError::Invalid);
            }
            2 => {
                pa += 8;
                want = Some(HostError::Invalid);
            }
            3 => {
                // Below guest RAM, or past the IPA space.
                ipa = if self.rng.chance(50) {
                    0x0900_0000
                } else {
                    1 << 40
                };
            }
            4 => {
                pa = if self.rng.chance(50) { 0x1000 } else { !0xfff };
                pa_range = true;
            }
            5 => {
                // Pages the model says are not the host's alone (the RAM
                // or a run of this VM).
                pa = if self.rng.chance(50) {
                    self.ram_pa(s)
                } else {
                    self.run_pa(s, 0)
                };
            }
            6 => {
                // The guest's RAM IPAs (in use).
                ipa = GUEST_RAM_IPA + self.rng.below(RAM_PAGES) * PAGE;
            }
            _ => {}
        }
        let size = pages * PAGE;
        let in_ram = pa >= self.base && pa + size <= self.base + CPU_PAGES * PAGE;
        let kind_ok = donate == vm.protected;
        let overlap = |a: u64, n: u64| ipa < a + n * PAGE && a < ipa + size;
        let predicted = if flags & !hyp_abi::MEM_FLAG_LAZY != 0 || !kind_ok {
            Err(HostError::Invalid)
        } else if let Some(e) = want {
            Err(e)
        } else if pa_range || ipa < GUEST_RAM_IPA || ipa + size > 1 << 40 {
            Err(HostError::Range)
        } else if vm.off || vm.dying {
            Err(HostError::State)
        } else if overlap(GUEST_RAM_IPA, RAM_PAGES)
            || vm.extras.iter().flatten().any(|e| overlap(e.ipa, e.pages))
            || !in_ram
            || !self.all_host(pa, pages)
        {
            // An IPA in use, or a page not the host's alone.
            Err(HostError::Denied)
        } else {
            Ok(0)
        };
        let fid = if donate {
            hyp_abi::MEM_DONATE
        } else {
            hyp_abi::MEM_LEND
        };
        let t = if donate { T_DONATE } else { T_LEND };
        let stoppable = !vm.kind.endless();
        let x = issue(self.cpu, t, fid, [vm.h, pa, ipa, pages, flags], &|r| {
            r == predicted
                || (predicted.is_ok() && r == Err(HostError::NoMemory))
                // Another CPU saw it power off first (a reused handle).
                || (stoppable && predicted.is_ok() && r == Err(HostError::State))
        });
        match res(x[0]) {
            Ok(_) if predicted.is_ok() => {
                let pg = if donate { Pg::Donated } else { Pg::Lent };
                self.set(pa, pages, pg);
                let e = Extra { pages, ipa };
                // A give that continues one extends it (in the
                // hypervisor); the model keeps both as ranges.
                if let Some(slot) = vm.extras.iter_mut().find(|e| e.is_none()) {
                    *slot = Some(e);
                } else {
                    fail(format_args!("fuzz: more than {MAX_EXTRAS} extra regions"));
                }
            }
            Err(HostError::NoMemory) if vm.runs < RUNS => self.topup(s, &mut vm),
            Err(HostError::State) if predicted.is_ok() => vm.off = true,
            _ => {}
        }
        self.vms[s] = Some(vm);
    }

    /// One random call of this CPU's choice.
    fn step(&mut self) {
        let s = self.rng.below(SLOTS as u64) as usize;
        let Some(vm) = self.vms[s] else {
            if self.rng.chance(60) {
                self.create(s);
            } else {
                self.bad_call(None);
            }
            return;
        };
        // A VM that powered off is destroyed soon.
        if vm.off && self.rng.chance(30) {
            self.destroy(s);
            return;
        }
        let v = self.rng.below(vm.vcpus);
        match self.rng.below(100) {
            0..=39 => self.run(s, v),
            40..=49 => self.interfere(),
            50..=57 => {
                if vm.extras.iter().all(Option::is_some) {
                    self.destroy(s);
                } else {
                    self.give_extra(s);
                }
            }
            58..=60 => self.destroy(s),
            61..=63 => {
                let mut vm = vm;
                if vm.runs < RUNS {
                    self.topup(s, &mut vm);
                    self.vms[s] = Some(vm);
                } else {
                    // A run already given: not the host's.
                    let i = self.rng.below(RUNS);
                    let pa = self.run_pa(s, i);
                    let dying = vm.dying;
                    issue(
                        self.cpu,
                        T_TOPUP,
                        hyp_abi::VM_TOPUP,
                        [vm.h, pa, RUN_PAGES, 0, 0],
                        &|r| {
                            r == Err(if dying {
                                HostError::State
                            } else {
                                HostError::Denied
                            })
                        },
                    );
                }
            }
            64..=69 => {
                // VCPU_INIT: a protected VM's was set at creation.
                let module_entry = GUEST_RAM_IPA;
                let entry = match self.rng.below(4) {
                    0 => module_entry + 2,
                    1 => 0x1000,
                    _ => module_entry,
                };
                let (p, stopped) = (vm.protected, vm.off || vm.dying);
                let badv = self.rng.chance(10);
                // guest-hello starts its other vCPUs itself and stops if
                // the host started one first: vCPU 0 only there.
                let v = if vm.kind == Kind::Hello { 0 } else { v };
                let vv = if badv {
                    vm.vcpus + self.rng.below(4)
                } else {
                    v
                };
                issue(
                    self.cpu,
                    T_INIT,
                    hyp_abi::VCPU_INIT,
                    [vm.h, vv, entry, vm.h, 0],
                    &|r| {
                        if badv {
                            r == Err(HostError::Invalid)
                        } else if p {
                            r == Err(HostError::Denied)
                        } else if entry % 4 != 0 {
                            r == Err(HostError::Invalid)
                        } else if entry < GUEST_RAM_IPA {
                            r == Err(HostError::Range)
                        } else if stopped {
                            r == Err(HostError::State)
                        } else {
                            // On or off: only the guest knows.
                            matches!(r, Ok(_) | Err(HostError::State))
                        }
                    },
                );
            }
            70..=75 => {
                let badv = self.rng.chance(20);
                let vv = if badv {
                    vm.vcpus + self.rng.below(4)
                } else {
                    v
                };
                let x = issue(
                    self.cpu,
                    T_MMIO,
                    hyp_abi::MMIO_COMPLETE,
                    [vm.h, vv, self.rng.next(), 0, 0],
                    &|r| {
                        if badv {
                            r == Err(HostError::Invalid)
                        } else {
                            matches!(r, Ok(_) | Err(HostError::State) | Err(HostError::Busy))
                        }
                    },
                );
                if !badv && res(x[0]).is_ok() {
                    if let Some(m) = self.vms[s].as_mut() {
                        m.mmio[v as usize] = false;
                    }
                }
            }
            76..=80 => {
                let badv = self.rng.chance(20);
                let vv = if badv {
                    vm.vcpus + self.rng.below(4)
                } else {
                    v
                };
                issue(
                    self.cpu,
                    T_STATE,
                    hyp_abi::VCPU_STATE,
                    [vm.h, vv, 0, 0, 0],
                    &|r| {
                        if badv {
                            r == Err(HostError::Invalid)
                        } else {
                            matches!(r, Ok(0..=2))
                        }
                    },
                );
            }
            81..=82 => {
                // IRQ_DECLARE / IRQ_LINE: an SGI, a PPI, an SPI, past the
                // SPIs or anything; level 0, 1 or the invalid 2.
                let intid = [1, 27, 32 + self.rng.below(64), 96, self.rng.next()]
                    [self.rng.below(5) as usize];
                let spi = (32..96).contains(&intid);
                let dying = vm.dying;
                if self.rng.chance(50) {
                    issue(
                        self.cpu,
                        T_IRQ,
                        hyp_abi::IRQ_DECLARE,
                        [vm.h, intid, 0, 0, 0],
                        &|r| {
                            if !spi {
                                r == Err(HostError::Invalid)
                            } else {
                                // Before the first run, after it, or one
                                // of the board's assignable devices' SPIs.
                                matches!(r, Ok(0) | Err(HostError::State) | Err(HostError::Denied))
                                    || (dying && r == Err(HostError::NoVm))
                            }
                        },
                    );
                } else {
                    let level = self.rng.below(3);
                    issue(
                        self.cpu,
                        T_IRQ,
                        hyp_abi::IRQ_LINE,
                        [vm.h, intid, level, 0, 0],
                        &|r| {
                            if level > 1 || !spi {
                                r == Err(HostError::Invalid) || (dying && r == Err(HostError::NoVm))
                            } else {
                                matches!(r, Ok(_) | Err(HostError::Denied))
                                    || (dying && r == Err(HostError::NoVm))
                            }
                        },
                    );
                }
            }
            83..=85 => {
                let reason = if self.rng.chance(50) {
                    hyp_abi::STATS_TOTAL
                } else {
                    self.rng.below(256)
                };
                issue(
                    self.cpu,
                    T_STATS,
                    hyp_abi::STATS,
                    [vm.h, reason, 0, 0, 0],
                    &|r| {
                        r.is_ok()
                            || (reason != hyp_abi::STATS_TOTAL && r == Err(HostError::Invalid))
                    },
                );
            }
            _ => self.bad_call(Some(s)),
        }
    }

    /// Malformed calls whose answer the model knows.
    fn bad_call(&mut self, s: Option<usize>) {
        let nohandle = [0, 65_535 + self.rng.below(1 << 20), u64::MAX][self.rng.below(3) as usize];
        let free_run = s.map_or(self.run_pa(0, 0), |s| self.run_pa(s, 0));
        match self.rng.below(8) {
            0 => {
                issue(
                    self.cpu,
                    T_BADFID,
                    hyp_abi::FID_LAST + 1 + self.rng.below(4) as u32,
                    [0; 5],
                    &|r| r == Err(HostError::NotSupported),
                );
            }
            1 => {
                let vcpus = if self.rng.chance(50) { 0 } else { 9 };
                issue(
                    self.cpu,
                    T_CREATE,
                    hyp_abi::VM_CREATE,
                    [vcpus, 0, free_run, RUN_PAGES, 0],
                    &|r| r == Err(HostError::Invalid),
                );
            }
            2 => {
                let (flags, pages) = if self.rng.chance(50) {
                    // An unknown flag, or an SVE vector length that is not
                    // a power of two, or past 2048 bits.
                    let flags = match self.rng.below(3) {
                        0 => 2,
                        1 => hyp_abi::flag_sve_vq(3),
                        _ => hyp_abi::flag_sve_vq(17),
                    };
                    (flags, RUN_PAGES)
                } else {
                    (0, self.rng.below(RUN_PAGES))
                };
                issue(
                    self.cpu,
                    T_CREATE,
                    hyp_abi::VM_CREATE,
                    [1, flags, free_run, pages, 0],
                    &|r| r == Err(HostError::Invalid),
                );
            }
            3 => {
                // Pages not the host's alone: a VM's RAM, or below/above RAM.
                let used = (0..SLOTS)
                    .find_map(|s| self.vms[s].filter(|vm| !vm.dying).map(|_| self.ram_pa(s)));
                let (pa, want) = match used {
                    Some(pa) if self.rng.chance(60) => (pa, HostError::Denied),
                    _ => (0x1000, HostError::Range),
                };
                issue(
                    self.cpu,
                    T_CREATE,
                    hyp_abi::VM_CREATE,
                    [1, 1, pa, RUN_PAGES, 0],
                    &|r| r == Err(want),
                );
            }
            4 => {
                issue(
                    self.cpu,
                    T_RUN,
                    hyp_abi::VCPU_RUN,
                    [nohandle, 0, 0, 0, 0],
                    &|r| r == Err(HostError::NoVm),
                );
            }
            5 => {
                issue(
                    self.cpu,
                    T_DESTROY,
                    hyp_abi::VM_DESTROY,
                    [nohandle, 0, 0, 0, 0],
                    &|r| r == Err(HostError::NoVm),
                );
            }
            6 => {
                issue(
                    self.cpu,
                    T_DONATE,
                    hyp_abi::MEM_DONATE,
                    [nohandle, free_run, GUEST_RAM_IPA, 1, 0],
                    &|r| r == Err(HostError::NoVm),
                );
            }
            _ => match s.and_then(|s| self.vms[s].map(|vm| (s, vm))) {
                Some((_, vm)) => {
                    // VCPU_RUN with an unknown flag.
                    issue(
                        self.cpu,
                        T_RUN,
                        hyp_abi::VCPU_RUN,
                        [vm.h, 0, 2 << self.rng.below(8), 0, 0],
                        &|r| r == Err(HostError::Invalid),
                    );
                }
                None => {
                    issue(
                        self.cpu,
                        T_STATS,
                        hyp_abi::STATS,
                        // (Handle 0 is the host's own statistics.)
                        [nohandle.max(1 << 20), 255, 0, 0, 0],
                        &|r| r == Err(HostError::NoVm),
                    );
                }
            },
        }
    }

    /// A call on another CPU's VM (published handle): its answer depends
    /// on that CPU, so only codes the ABI allows are checked.
    fn interfere(&mut self) {
        let c = self.rng.below(self.cpus as u64) as usize;
        let s = self.rng.below(SLOTS as u64) as usize;
        let p = PUBLISHED[c][s].load(Ordering::Acquire);
        let (h, kind) = (p & 0xffff_ffff, Kind::of(p >> 32));
        if h == 0 {
            self.bad_call(None);
            return;
        }
        let v = self.rng.below(2);
        // The VM may be gone (NoVm), stopping, or have 1 vCPU (Invalid).
        let any = |r: R| {
            !matches!(
                r,
                Err(HostError::NotSupported
                    | HostError::Range
                    | HostError::NoMemory
                    | HostError::Denied)
            )
        };
        match self.rng.below(4) {
            0 | 1 if kind.is_some_and(Kind::endless) => {
                let x = issue(
                    self.cpu,
                    T_OTHER,
                    hyp_abi::VCPU_RUN,
                    [h, v, 0, 0, 0],
                    &|r| any(r) && !matches!(r, Ok(c) if c > exit::MEMORY),
                );
                if let Ok(code) = res(x[0]) {
                    bump(&self.fig().ran, 1);
                    if code == exit::MMIO && x[2] & (1 << 8) == 0 {
                        call5(hyp_abi::MMIO_COMPLETE, [h, v, 0, 0, 0]);
                    }
                }
            }
            2 => {
                issue(
                    self.cpu,
                    T_OTHER,
                    hyp_abi::MMIO_COMPLETE,
                    [h, v, self.rng.next(), 0, 0],
                    &any,
                );
            }
            _ => {
                issue(
                    self.cpu,
                    T_OTHER,
                    hyp_abi::VCPU_STATE,
                    [h, v, 0, 0, 0],
                    &any,
                );
            }
        }
    }

    /// Probes every page of the area against the model; then AUDIT.
    fn check(&mut self) {
        let mut probes = 0;
        let mut faulted = 0;
        for i in 0..CPU_PAGES {
            let pg = self.pages[i as usize];
            if pg == Pg::Dying {
                continue;
            }
            let pa = self.base + i * PAGE;
            let f = probe(pa);
            probes += 1;
            faulted += u64::from(f);
            let should = matches!(pg, Pg::Donated | Pg::Hyp);
            if f == should {
                continue;
            }
            // A guest may share one of its donated pages (guest-bench's
            // MEM_SHARE loop): one page per such VM, always the same.
            let s = (i / SLOT_PAGES) as usize;
            if let Some(vm) = self.vms[s].as_mut() {
                if pg == Pg::Donated && !f && vm.kind == Kind::BenchShare {
                    if vm.shared.is_none() {
                        bump(&FIGS[self.cpu].shared_seen, 1);
                        vm.shared = Some(pa);
                    }
                    if vm.shared == Some(pa) {
                        continue;
                    }
                }
            }
            bump(&self.fig().mismatches, 1);
            println!(
                "host: FAIL fuzz: CPU {}: page {pa:#x} ({pg:?} in the model): the host read {}",
                self.cpu,
                if f { "faulted" } else { "succeeded" }
            );
        }
        bump(&self.fig().probes, probes);
        bump(&self.fig().faulted, faulted);
        let x = issue(self.cpu, T_AUDIT, hyp_abi::AUDIT, [0; 5], &|r| r == Ok(0));
        if let Ok(n) = res(x[0]) {
            bump(&self.fig().violations, n);
        }
    }
}

/// Guest images the fuzzer runs.
fn modules(info: &BootInfo) -> [Module; 3] {
    ["guest-hello", "guest-fp", "guest-bench"].map(|name| {
        match info.modules().iter().find(|m| m.name() == name) {
            Some(m) if m.size <= (RAM_PAGES * PAGE) / 2 => *m,
            _ => fail(format_args!("fuzz: no usable {name} image")),
        }
    })
}

/// This CPU's share: `n` calls, then everything torn down and checked.
fn work(cpu: usize) {
    let n = PARAMS[0].load(Ordering::Acquire);
    let seed = PARAMS[1].load(Ordering::Acquire);
    let base = PARAMS[2].load(Ordering::Acquire) + cpu as u64 * CPU_PAGES * PAGE;
    // SAFETY: the BootInfo's address, as the primary got it.
    let info = unsafe { &*(PARAMS[3].load(Ordering::Acquire) as *const BootInfo) };
    let mut w = Worker {
        cpu,
        cpus: CPUS.load(Ordering::Acquire) as usize,
        rng: Rng((seed ^ (cpu as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1),
        base,
        pages: [Pg::Host; CPU_PAGES as usize],
        vms: [None; SLOTS],
        modules: modules(info),
    };
    let mut next_check = BATCH;
    while w.total() < n {
        w.step();
        if w.total() >= next_check {
            w.check();
            next_check += BATCH;
        }
    }
    for s in 0..SLOTS {
        w.destroy(s);
    }
    w.check();
    // Every page of the area is the host's again: write and read each.
    let mut back = 0;
    for i in 0..CPU_PAGES {
        let pa = base + i * PAGE;
        if probe(pa) {
            println!("host: FAIL fuzz: CPU {cpu}: page {pa:#x} not the host's after every VM was destroyed");
            bump(&w.fig().mismatches, 1);
            continue;
        }
        // SAFETY: a host page (the read just succeeded), this CPU's alone.
        unsafe {
            (pa as *mut u64).write_volatile(pa ^ seed);
            if (pa as *const u64).read_volatile() == pa ^ seed {
                back += 1;
            }
        }
    }
    bump(&w.fig().pages_back, back);
    FIGS[cpu].done.store(true, Ordering::Release);
}

impl Worker {
    /// Calls issued so far (AUDIT not counted).
    fn total(&self) -> u64 {
        self.fig().counts[..T_AUDIT]
            .iter()
            .flatten()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// Whether the other host CPUs should join a fuzz run ([`secondary`]).
pub fn running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// A secondary host CPU's share (started by [`run`] with PSCI CPU_ON).
pub fn secondary(cpu: usize) -> ! {
    guest_rt::set_exception_hook(on_exception);
    work(cpu);
    guest_rt::cpu_off()
}

/// `fuzz=N seed=S`: N calls spread over every host CPU (see the module
/// docs), then the report; fails the machine on any mismatch.
pub fn run(n: u64, seed: u64, info: &'static BootInfo, arg_ptr: u64) {
    let cpus = (info.cpus as usize).clamp(1, MAX_CPUS);
    let Some(area) = crate::alloc_pages(cpus as u64 * CPU_PAGES * PAGE) else {
        fail(format_args!("fuzz: no memory for the fuzzer's areas"));
    };
    println!(
        "host: fuzz: {n} calls from {cpus} CPUs (guest-hello, guest-fp, guest-bench VMs, protected and normal) over {} pages at {area:#x}, seed {seed}",
        cpus as u64 * CPU_PAGES
    );
    guest_rt::set_exception_hook(on_exception);
    let denied0 = crate::demo::hyp_denied();
    let t0 = guest_rt::gic::counter();
    CPUS.store(cpus as u64, Ordering::Release);
    PARAMS[0].store(n / cpus as u64, Ordering::Release);
    PARAMS[1].store(seed, Ordering::Release);
    PARAMS[2].store(area, Ordering::Release);
    PARAMS[3].store(info as *const BootInfo as u64, Ordering::Release);
    RUNNING.store(true, Ordering::Release);
    crate::start_cpus(cpus as u64, arg_ptr);
    work(0);
    for (c, fig) in FIGS.iter().enumerate().take(cpus).skip(1) {
        let mut spins = 0u64;
        while !fig.done.load(Ordering::Acquire) {
            spins += 1;
            if spins > 20_000_000_000 {
                fail(format_args!("fuzz: host CPU {c} did not finish"));
            }
            core::hint::spin_loop();
        }
        // Wait until it is off, so that it can be started again later.
        while guest_rt::hvc(smccc::psci::PSCI_AFFINITY_INFO_64, c as u64, 0, 0)[0] != 1 {
            core::hint::spin_loop();
        }
    }
    RUNNING.store(false, Ordering::Release);
    let ms = (guest_rt::gic::counter() - t0) * 1000 / guest_rt::gic::counter_hz();
    report(n, cpus, ms, crate::demo::hyp_denied() - denied0);
}

fn sum(cpus: usize, f: impl Fn(&Figures) -> &AtomicU64) -> u64 {
    FIGS[..cpus]
        .iter()
        .map(|x| f(x).load(Ordering::Acquire))
        .sum()
}

/// The per-type counts, the figures and their floors.
fn report(n: u64, cpus: usize, ms: u64, denied: u64) {
    let mut calls = 0;
    let mut ok_all = 0;
    let mut busy = 0;
    let mut totals = [[0u64; RES]; NT];
    for (t, name) in TYPES.iter().enumerate() {
        let c: [u64; RES] = core::array::from_fn(|i| sum(cpus, |f| &f.counts[t][i]));
        totals[t] = c;
        if t != T_AUDIT {
            calls += c.iter().sum::<u64>();
            ok_all += c[0];
        }
        busy += c[4];
        println!(
            "host: fuzz: {name}: ok={} NotSupported={} Invalid={} NoVm={} Busy={} NoMemory={} Denied={} Range={} State={}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        );
    }
    let ran = sum(cpus, |f| &f.ran);
    let probes = sum(cpus, |f| &f.probes);
    let faulted = sum(cpus, |f| &f.faulted);
    let mismatches = sum(cpus, |f| &f.mismatches);
    let violations = sum(cpus, |f| &f.violations);
    let back = sum(cpus, |f| &f.pages_back);
    println!(
        "host: fuzz: guest code: {ran} VCPU_RUNs ran a guest ({} MMIO exits, {} MEMORY exits, {} SYSTEM_OFFs), {} guest exits counted by the hypervisor, {} VMs created",
        sum(cpus, |f| &f.mmio_exits),
        sum(cpus, |f| &f.memory_exits),
        sum(cpus, |f| &f.system_offs),
        sum(cpus, |f| &f.guest_exits),
        sum(cpus, |f| &f.vms),
    );
    println!(
        "host: fuzz: probes: {probes} host reads, {faulted} faulted as the model said (hypervisor counted {denied} refused), {} pages seen shared by guests",
        sum(cpus, |f| &f.shared_seen)
    );
    println!(
        "host: fuzz: audits: {} AUDIT calls, {violations} violations; {mismatches} answers the model did not allow",
        totals[T_AUDIT].iter().sum::<u64>()
    );
    println!(
        "host: fuzz: all VMs destroyed, {back} of {} pages written and read back",
        cpus as u64 * CPU_PAGES
    );
    // Floors: most calls must do something, guests must run, and each
    // call type must both succeed and be refused.
    let per_type_ok = [
        T_CREATE, T_DESTROY, T_DONATE, T_LEND, T_INIT, T_RUN, T_TOPUP, T_STATS, T_STATE, T_MMIO,
    ];
    let mut why = None;
    if calls < n - n % cpus as u64 {
        why = Some("fewer calls than asked");
    } else if ok_all * 3 < calls - totals[T_DESTROY][4] {
        // A VM_DESTROY answered Busy (another CPU runs one of the VM's
        // vCPUs) is tried again until it ends (`destroy`): those retries
        // are a wait, whose length depends on how QEMU's threads are
        // scheduled (4,789 of them on a loaded machine), not calls the
        // fuzz chose, so they are not in the floor's count.
        why = Some("fewer than a third of the calls succeeded");
    } else if ran * 10 < calls {
        why = Some("fewer than one call in 10 ran guest code");
    } else if n >= 10_000 && per_type_ok.iter().any(|&t| totals[t][0] == 0) {
        why = Some("a call type never succeeded");
    } else if n >= 10_000 && (busy == 0 || totals[T_RUN][8] == 0 || totals[T_DONATE][6] == 0) {
        why = Some("no Busy, no refused run or no refused donation");
    } else if n >= 10_000 && (faulted == 0 || sum(cpus, |f| &f.mmio_exits) == 0) {
        why = Some("no probe faulted or no MMIO exit");
    } else if faulted != denied {
        why = Some("the hypervisor's count of refused accesses differs from the probes'");
    } else if mismatches != 0 || violations != 0 {
        why = Some("mismatches or audit violations");
    } else if back != cpus as u64 * CPU_PAGES {
        why = Some("pages not given back");
    }
    if let Some(why) = why {
        fail(format_args!("fuzz: {why}"));
    }
    println!("host: fuzz: PASS {calls} calls in {ms} ms on {cpus} CPUs, 0 mismatches, 0 audit violations, all pages back");
}
