//! PSCI and SMCCC conformance guest (4 vCPUs). vCPU 0 asks for every version
//! and feature, exercises CPU_ON's errors, follows vCPU 1 through
//! AFFINITY_INFO OFF -> ON -> OFF and starts it a second time with a new
//! context, starts vCPUs 2 and 3, checks CPU_SUSPEND, queries the KVM
//! vendor-hypervisor service, and powers off. `tests/tests/guest_psci.rs`
//! checks every line.
//!
//! Secondaries and vCPU 0 share a small mailbox in RAM. Both run with their
//! MMUs off, so every access is Device-nGnRnE and goes straight to memory:
//! plain loads and stores (no exclusives) are coherent between them.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::println;
use smccc::arch::{
    SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2, SMCCC_ARCH_WORKAROUND_3,
    SMCCC_VERSION,
};
use smccc::psci;

const VCPUS: u64 = 4;
/// Bound on every wait (each iteration is one HVC or a few loads).
const POLLS: u32 = 10_000_000;

/// VENDOR_HYP_CALL_UID, KVM_FEATURES and HYP_MEMINFO (Linux arm-smccc.h).
const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
const VENDOR_HYP_KVM_FEATURES: u32 = 0x8600_0000;
const VENDOR_HYP_KVM_HYP_MEMINFO: u32 = 0xc600_0002;
const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// Context id each secondary reported (0 = nothing yet).
static REPORTED: [AtomicU64; VCPUS as usize] = [const { AtomicU64::new(0) }; VCPUS as usize];
/// The context id vCPU 0 releases a secondary with (it then turns itself off).
static RELEASE: [AtomicU64; VCPUS as usize] = [const { AtomicU64::new(0) }; VCPUS as usize];

fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    guest_rt::hvc(fid, a1, a2, a3)[0] as i64
}

fn cpu_on(target: u64, entry: u64, ctx: u64) -> i64 {
    call(psci::PSCI_CPU_ON_64, target, entry, ctx)
}

fn affinity(target: u64) -> i64 {
    call(psci::PSCI_AFFINITY_INFO_64, target, 0, 0)
}

fn wait_affinity(target: u64, state: i64) {
    let mut polls = 0;
    while affinity(target) != state {
        polls += 1;
        if polls > POLLS {
            panic!("vCPU {target} never reached AFFINITY_INFO state {state}");
        }
    }
}

fn wait_reported(target: u64, ctx: u64) {
    let mut polls = 0;
    while REPORTED[target as usize].load(Ordering::Acquire) != ctx {
        polls += 1;
        if polls > POLLS {
            panic!("vCPU {target} never reported context {ctx:#x}");
        }
        core::hint::spin_loop();
    }
}

fn secondary(cpu: usize, ctx: u64) -> ! {
    println!("guest-psci: vCPU {cpu} up (context {ctx:#x})");
    REPORTED[cpu].store(ctx, Ordering::Release);
    let mut polls = 0;
    while RELEASE[cpu].load(Ordering::Acquire) != ctx {
        polls += 1;
        if polls > POLLS {
            panic!("vCPU {cpu} was never released");
        }
        core::hint::spin_loop();
    }
    guest_rt::cpu_off()
}

fn version(v: i64) -> (i64, i64) {
    (v >> 16, v & 0xffff)
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, arg: u64) -> ! {
    if cpu != 0 {
        secondary(cpu, arg);
    }
    let entry = guest_rt::entry_point();

    let (maj, min) = version(call(psci::PSCI_VERSION, 0, 0, 0));
    println!("guest-psci: PSCI_VERSION = {maj}.{min}");
    let (maj, min) = version(call(SMCCC_VERSION, 0, 0, 0));
    println!("guest-psci: SMCCC_VERSION = {maj}.{min}");

    let features: [(&str, u32); 10] = [
        ("PSCI_VERSION", psci::PSCI_VERSION),
        ("CPU_SUSPEND_64", psci::PSCI_CPU_SUSPEND_64),
        ("CPU_OFF", psci::PSCI_CPU_OFF),
        ("CPU_ON_64", psci::PSCI_CPU_ON_64),
        ("AFFINITY_INFO_64", psci::PSCI_AFFINITY_INFO_64),
        ("SYSTEM_OFF", psci::PSCI_SYSTEM_OFF),
        ("SYSTEM_RESET", psci::PSCI_SYSTEM_RESET),
        ("PSCI_FEATURES", psci::PSCI_FEATURES),
        ("SMCCC_VERSION", SMCCC_VERSION),
        // MIGRATE (0xc4000005): not implemented.
        ("MIGRATE_64", 0xc400_0005),
    ];
    for (name, fid) in features {
        let r = call(psci::PSCI_FEATURES, u64::from(fid), 0, 0);
        println!("guest-psci: PSCI_FEATURES({name}) = {r}");
    }
    let r = call(psci::PSCI_FEATURES, 0x8400_00ff, 0, 0);
    println!("guest-psci: PSCI_FEATURES(0x840000ff) = {r}");

    let arch: [(&str, u32); 6] = [
        ("SMCCC_VERSION", SMCCC_VERSION),
        ("SMCCC_ARCH_FEATURES", SMCCC_ARCH_FEATURES),
        ("ARCH_WORKAROUND_1", SMCCC_ARCH_WORKAROUND_1),
        ("ARCH_WORKAROUND_2", SMCCC_ARCH_WORKAROUND_2),
        ("ARCH_WORKAROUND_3", SMCCC_ARCH_WORKAROUND_3),
        ("CPU_ON_64", psci::PSCI_CPU_ON_64),
    ];
    for (name, fid) in arch {
        let r = call(SMCCC_ARCH_FEATURES, u64::from(fid), 0, 0);
        println!("guest-psci: ARCH_FEATURES({name}) = {r}");
    }
    // The workaround calls themselves (what Linux makes on a context switch
    // where ARCH_FEATURES said SUCCESS).
    for (name, fid) in [
        ("ARCH_WORKAROUND_1", SMCCC_ARCH_WORKAROUND_1),
        ("ARCH_WORKAROUND_3", SMCCC_ARCH_WORKAROUND_3),
    ] {
        println!("guest-psci: {name}() = {}", call(fid, 0, 0, 0));
    }

    // CPU_ON errors.
    println!(
        "guest-psci: CPU_ON(MPIDR 0x100) = {}",
        cpu_on(0x100, entry, 0)
    );
    println!("guest-psci: CPU_ON(MPIDR 7) = {}", cpu_on(7, entry, 0));
    println!(
        "guest-psci: CPU_ON(entry 0x1000) = {}",
        cpu_on(1, 0x1000, 0)
    );
    println!(
        "guest-psci: CPU_ON(entry 0x100000000) = {}",
        cpu_on(1, 0x1_0000_0000, 0)
    );
    println!(
        "guest-psci: AFFINITY_INFO(1, level 1) = {}",
        call(psci::PSCI_AFFINITY_INFO_64, 1, 1, 0)
    );
    println!(
        "guest-psci: AFFINITY_INFO(MPIDR 7) = {}",
        call(psci::PSCI_AFFINITY_INFO_64, 7, 0, 0)
    );

    // vCPU 1: OFF -> ON -> OFF, twice.
    println!(
        "guest-psci: AFFINITY_INFO(1) = {} before CPU_ON",
        affinity(1)
    );
    for (round, ctx) in [(1, 0x1001), (2, 0x2001)] {
        let r = cpu_on(1, entry, ctx);
        println!("guest-psci: CPU_ON(1, context {ctx:#x}) = {r}");
        wait_reported(1, ctx);
        wait_affinity(1, 0);
        println!("guest-psci: AFFINITY_INFO(1) = 0 while vCPU 1 runs");
        println!(
            "guest-psci: CPU_ON(1) while on = {}",
            cpu_on(1, entry, 0xbad)
        );
        RELEASE[1].store(ctx, Ordering::Release);
        wait_affinity(1, 1);
        println!("guest-psci: AFFINITY_INFO(1) = 1 after its CPU_OFF (start {round})");
    }

    // vCPUs 2 and 3.
    for t in 2..VCPUS {
        let r = cpu_on(t, entry, 0x1000 + t);
        println!("guest-psci: CPU_ON({t}, context {:#x}) = {r}", 0x1000 + t);
    }
    for t in 2..VCPUS {
        wait_reported(t, 0x1000 + t);
        RELEASE[t as usize].store(0x1000 + t, Ordering::Release);
        wait_affinity(t, 1);
    }
    println!("guest-psci: vCPUs 2 and 3 reported and are off");

    // CPU_SUSPEND (standby power state 0) returns at once.
    let r = call(psci::PSCI_CPU_SUSPEND_64, 0, entry, 0);
    println!("guest-psci: CPU_SUSPEND(0) = {r}");

    // The KVM vendor-hypervisor service.
    let uid = guest_rt::hvc(VENDOR_HYP_CALL_UID, 0, 0, 0);
    let kvm = if uid == KVM_UID { "KVM" } else { "not KVM" };
    println!(
        "guest-psci: VENDOR_HYP_CALL_UID = {:#x} {:#x} {:#x} {:#x} ({kvm})",
        uid[0], uid[1], uid[2], uid[3]
    );
    let f = guest_rt::hvc(VENDOR_HYP_KVM_FEATURES, 0, 0, 0);
    println!(
        "guest-psci: KVM_FEATURES = {:#x} {:#x} {:#x} {:#x}",
        f[0], f[1], f[2], f[3]
    );
    println!(
        "guest-psci: HYP_MEMINFO = {}",
        call(VENDOR_HYP_KVM_HYP_MEMINFO, 0, 0, 0)
    );
    println!(
        "guest-psci: HYP_MEMINFO(1, 0, 0) = {}",
        call(VENDOR_HYP_KVM_HYP_MEMINFO, 1, 0, 0)
    );

    trng();
    println!("guest-psci: done, powering off");
    guest_rt::system_off()
}

/// SMCCC TRNG (Arm DEN 0098) function IDs.
const TRNG_VERSION: u32 = 0x8400_0050;
const TRNG_FEATURES: u32 = 0x8400_0051;
const TRNG_GET_UUID: u32 = 0x8400_0052;
const TRNG_RND32: u32 = 0x8400_0053;
const TRNG_RND64: u32 = 0xc400_0053;

/// The TRNG: its version (NOT_SUPPORTED where the CPU has no random number
/// generator, and then nothing else), features, UUID, and draws whose
/// shape is checked here and whose values are not printed (two draws
/// differ; about half their bits are ones).
fn trng() {
    let v = call(TRNG_VERSION, 0, 0, 0);
    println!("guest-psci: TRNG_VERSION = {v:#x}");
    if v < 0 {
        println!(
            "guest-psci: TRNG_RND64(64) = {}",
            call(TRNG_RND64, 64, 0, 0)
        );
        return;
    }
    println!(
        "guest-psci: TRNG_FEATURES(RND64) = {}, (RND32) = {}, (0x84000054) = {}",
        call(TRNG_FEATURES, u64::from(TRNG_RND64), 0, 0),
        call(TRNG_FEATURES, u64::from(TRNG_RND32), 0, 0),
        call(TRNG_FEATURES, 0x8400_0054, 0, 0)
    );
    let u = guest_rt::hvc(TRNG_GET_UUID, 0, 0, 0);
    println!(
        "guest-psci: TRNG_GET_UUID = {:#x} {:#x} {:#x} {:#x}",
        u[0], u[1], u[2], u[3]
    );
    let a = guest_rt::hvc(TRNG_RND64, 192, 0, 0);
    let b = guest_rt::hvc(TRNG_RND64, 192, 0, 0);
    let ones: u32 = a[1..].iter().map(|w| w.count_ones()).sum();
    println!(
        "guest-psci: TRNG_RND64(192): x0 = {} and {}, draws {}, ones {}",
        a[0] as i64,
        b[0] as i64,
        if a[1..] == b[1..] { "equal" } else { "differ" },
        if (48..=144).contains(&ones) {
            "about half"
        } else {
            "skewed"
        }
    );
    let c = guest_rt::hvc(TRNG_RND64, 8, 0, 0);
    let d = guest_rt::hvc(TRNG_RND32, 40, 0, 0);
    println!(
        "guest-psci: TRNG_RND64(8) fits 8 bits: {}; TRNG_RND32(40) fits w2:w3 with 8 in w2: {}",
        c[0] == 0 && c[1] == 0 && c[2] == 0 && c[3] < 256,
        d[0] == 0 && d[1] == 0 && d[2] < 256 && d[3] >> 32 == 0
    );
    println!(
        "guest-psci: TRNG_RND64(0) = {}, (193) = {}, TRNG_RND32(97) = {}",
        call(TRNG_RND64, 0, 0, 0),
        call(TRNG_RND64, 193, 0, 0),
        call(TRNG_RND32, 97, 0, 0)
    );
}
