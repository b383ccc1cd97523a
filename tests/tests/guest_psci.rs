//! guest-psci: every PSCI function's FEATURES answer, SMCCC VERSION and
//! ARCH_FEATURES, CPU_ON's error codes, AFFINITY_INFO through OFF -> ON ->
//! OFF, a vCPU started twice with a new context id, CPU_SUSPEND, and the
//! KVM vendor-hypervisor service.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(60);

fn boot() -> Qemu {
    Qemu::boot(BootOptions {
        append: Some("guest=guest-psci".into()),
        ..BootOptions::default()
    })
}

/// Index of the only line equal to `line` in `log` (fails if absent or repeated).
fn only(log: &[String], line: &str) -> usize {
    let at: Vec<_> = log
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == line)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "expected {line:?} exactly once in:\n{}",
        log.join("\n")
    );
    at[0]
}

#[test]
fn psci_calls_errors_affinity_and_restart() {
    let mut q = boot();
    q.expect_exact(
        "host: VM 1 (guest-psci): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    let vcpu0 = [
        "[vm1] guest-psci: PSCI_VERSION = 1.1",
        "[vm1] guest-psci: SMCCC_VERSION = 1.1",
        "[vm1] guest-psci: PSCI_FEATURES(PSCI_VERSION) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(CPU_SUSPEND_64) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(CPU_OFF) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(CPU_ON_64) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(AFFINITY_INFO_64) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(SYSTEM_OFF) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(SYSTEM_RESET) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(PSCI_FEATURES) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(SMCCC_VERSION) = 0",
        "[vm1] guest-psci: PSCI_FEATURES(MIGRATE_64) = -1",
        "[vm1] guest-psci: PSCI_FEATURES(0x840000ff) = -1",
        "[vm1] guest-psci: ARCH_FEATURES(SMCCC_VERSION) = 0",
        "[vm1] guest-psci: ARCH_FEATURES(SMCCC_ARCH_FEATURES) = 0",
        // QEMU -cpu max has CSV2_3 and SSBS: WORKAROUND_1/3 are not needed
        // (UNAFFECTED = 1), nor is WORKAROUND_2 (NOT_REQUIRED = -2).
        // tests/tests/hostile_host.rs (`spectre`) checks raspi4b's answers.
        "[vm1] guest-psci: ARCH_FEATURES(ARCH_WORKAROUND_1) = 1",
        "[vm1] guest-psci: ARCH_FEATURES(ARCH_WORKAROUND_2) = -2",
        "[vm1] guest-psci: ARCH_FEATURES(ARCH_WORKAROUND_3) = 1",
        // ARCH_FEATURES answers for Arm architecture calls only.
        "[vm1] guest-psci: ARCH_FEATURES(CPU_ON_64) = -1",
        "[vm1] guest-psci: ARCH_WORKAROUND_1() = 0",
        "[vm1] guest-psci: ARCH_WORKAROUND_3() = 0",
        // INVALID_PARAMETERS (-2) for MPIDRs naming no vCPU.
        "[vm1] guest-psci: CPU_ON(MPIDR 0x100) = -2",
        "[vm1] guest-psci: CPU_ON(MPIDR 7) = -2",
        // INVALID_ADDRESS (-9) for entry points outside guest RAM.
        "[vm1] guest-psci: CPU_ON(entry 0x1000) = -9",
        "[vm1] guest-psci: CPU_ON(entry 0x100000000) = -9",
        "[vm1] guest-psci: AFFINITY_INFO(1, level 1) = -2",
        "[vm1] guest-psci: AFFINITY_INFO(MPIDR 7) = -2",
        "[vm1] guest-psci: AFFINITY_INFO(1) = 1 before CPU_ON",
        "[vm1] guest-psci: CPU_ON(1, context 0x1001) = 0",
        "[vm1] guest-psci: AFFINITY_INFO(1) = 0 while vCPU 1 runs",
        // ALREADY_ON (-4).
        "[vm1] guest-psci: CPU_ON(1) while on = -4",
        "[vm1] guest-psci: AFFINITY_INFO(1) = 1 after its CPU_OFF (start 1)",
        "[vm1] guest-psci: CPU_ON(1, context 0x2001) = 0",
        "[vm1] guest-psci: AFFINITY_INFO(1) = 0 while vCPU 1 runs",
        "[vm1] guest-psci: CPU_ON(1) while on = -4",
        "[vm1] guest-psci: AFFINITY_INFO(1) = 1 after its CPU_OFF (start 2)",
        "[vm1] guest-psci: CPU_ON(2, context 0x1002) = 0",
        "[vm1] guest-psci: CPU_ON(3, context 0x1003) = 0",
        "[vm1] guest-psci: vCPUs 2 and 3 reported and are off",
        "[vm1] guest-psci: CPU_SUSPEND(0) = 0",
        "[vm1] guest-psci: done, powering off",
    ];
    for line in vcpu0 {
        q.expect_exact(line, T);
    }
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);

    // Each secondary start printed its own context exactly once, while that
    // start was in progress (secondaries print concurrently with vCPU 0).
    let log = q.log();
    let first_on = only(&log, "[vm1] guest-psci: AFFINITY_INFO(1) = 1 before CPU_ON");
    let first_off = only(
        &log,
        "[vm1] guest-psci: AFFINITY_INFO(1) = 1 after its CPU_OFF (start 1)",
    );
    let second_off = only(
        &log,
        "[vm1] guest-psci: AFFINITY_INFO(1) = 1 after its CPU_OFF (start 2)",
    );
    let others_off = only(&log, "[vm1] guest-psci: vCPUs 2 and 3 reported and are off");
    let a = only(&log, "[vm1] guest-psci: vCPU 1 up (context 0x1001)");
    assert!(
        first_on < a && a < first_off,
        "first start of vCPU 1 out of order"
    );
    let b = only(&log, "[vm1] guest-psci: vCPU 1 up (context 0x2001)");
    assert!(
        first_off < b && b < second_off,
        "second start of vCPU 1 out of order"
    );
    for t in 2..4 {
        let l = only(
            &log,
            &format!("[vm1] guest-psci: vCPU {t} up (context {:#x})", 0x1000 + t),
        );
        assert!(second_off < l && l < others_off, "vCPU {t} out of order");
    }
}

#[test]
fn kvm_vendor_hypervisor_service() {
    let mut q = boot();
    q.expect_exact("[vm1] guest-psci: CPU_SUSPEND(0) = 0", T);
    q.expect_exact(
        "[vm1] guest-psci: VENDOR_HYP_CALL_UID = 0xb66fb428 0xe911c52e 0x564bcaa9 0x743a004d (KVM)",
        T,
    );
    // FEATURES and HYP_MEMINFO (bits 0, 2); MEM_SHARE, MEM_UNSHARE and
    // MMIO_GUARD (bits 3, 4, 7) are offered to protected VMs only, and this
    // one is normal.
    q.expect_exact("[vm1] guest-psci: KVM_FEATURES = 0x5 0x0 0x0 0x0", T);
    q.expect_exact("[vm1] guest-psci: HYP_MEMINFO = 4096", T);
    // SMCCC INVALID_PARAMETER (-3): the reserved arguments must be zero.
    q.expect_exact("[vm1] guest-psci: HYP_MEMINFO(1, 0, 0) = -3", T);
    q.expect_exact("[vm1] guest-psci: done, powering off", T);
    q.expect_exit_code(0, T);
}

/// SMCCC TRNG (issue 19 item 4) on QEMU virt, whose `-cpu max` has
/// FEAT_RNG: version 1.0, the functions it offers, the UUID, draws of the
/// right shape that differ, and INVALID_PARAMETERS (-2) for bad lengths.
#[test]
fn trng_serves_entropy_from_the_cpu() {
    let mut q = boot();
    q.expect_exact("[vm1] guest-psci: TRNG_VERSION = 0x10000", T);
    q.expect_exact(
        "[vm1] guest-psci: TRNG_FEATURES(RND64) = 0, (RND32) = 0, (0x84000054) = -1",
        T,
    );
    q.expect_exact(
        "[vm1] guest-psci: TRNG_GET_UUID = 0xc0b2e1f3 0x6e4b9d5a 0x4f2d718c 0x573b9a0e",
        T,
    );
    q.expect_exact(
        "[vm1] guest-psci: TRNG_RND64(192): x0 = 0 and 0, draws differ, ones about half",
        T,
    );
    q.expect_exact(
        "[vm1] guest-psci: TRNG_RND64(8) fits 8 bits: true; TRNG_RND32(40) fits w2:w3 with 8 in w2: true",
        T,
    );
    q.expect_exact(
        "[vm1] guest-psci: TRNG_RND64(0) = -2, (193) = -2, TRNG_RND32(97) = -2",
        T,
    );
    q.expect_exit_code(0, T);
}

/// The Pi 4's Cortex-A72 has no FEAT_RNG, and the hypervisor uses no other
/// source there (QEMU's raspi4b does not model the SoC's RNG200): TRNG is
/// absent, which DEN0098 says through TRNG_VERSION's NOT_SUPPORTED (-1),
/// and no call draws anything.
#[test]
fn trng_is_absent_without_a_random_number_generator_rpi4() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-psci".into()),
        ..BootOptions::board(TestBoard::Rpi4)
    });
    q.expect_exact("[vm1] guest-psci: TRNG_VERSION = 0xffffffffffffffff", T);
    q.expect_exact("[vm1] guest-psci: TRNG_RND64(64) = -1", T);
    q.expect_exit_code(0, T);
}
