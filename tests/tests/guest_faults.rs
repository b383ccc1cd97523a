//! guest-faults: a misbehaving guest. Unknown calls get NOT_SUPPORTED;
//! accesses outside RAM and devices (with or without a valid syndrome) come
//! back as synchronous external aborts; system registers a guest must not
//! reach are UNDEFINED; ID registers are sanitised; MEM_SHARE of memory the
//! guest does not own fails. None of it stops the hypervisor.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(60);

/// The vector answers unknown HVCs itself; the SMCs go through the decoder:
/// the same registers either way (crates/guest-faults/src/calls.rs).
const CALLS_ALIKE: &str = "[vm1] guest-faults: calls: HVC and SMC left the same x0..x17 for \
     22 function IDs, 14 unknown (x0 = -1, x1..x3 = 0, x4..x17 kept): 0 differences";

fn run() -> Vec<String> {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-faults".into()),
        ..BootOptions::default()
    });
    q.expect_exact("[vm1] guest-faults: up", T);
    q.expect_line("[vm1] guest-faults: ID_AA64PFR0_EL1=", T);
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
    q.log()
}

/// The line starting with `prefix` (fails with the log if there is none).
fn line<'a>(log: &'a [String], prefix: &str) -> &'a str {
    log.iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", log.join("\n")))
}

/// The value of `NAME=` on an ID-register line.
fn field(l: &str, name: &str) -> u64 {
    l.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {l:?}"))
}

#[test]
fn calls_aborts_and_undefined_instructions() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-faults".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-faults): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    for l in [
        "[vm1] guest-faults: up",
        "[vm1] guest-faults: unknown HVC 0xc600fff0 returned -1",
        "[vm1] guest-faults: unknown HVC 0x840000ff returned -1",
        "[vm1] guest-faults: unknown SMC 0xc600fff0 returned -1",
        CALLS_ALIKE,
        // EC 0x25 (data abort, same EL), IL, DFSC 0x10 (synchronous external
        // abort); WnR for the writes.
        "[vm1] guest-faults: read at 0x100000000: data abort injected, \
         ESR_EL1=0x96000010 FAR_EL1=0x100000000",
        "[vm1] guest-faults: write at 0x100000008: data abort injected, \
         ESR_EL1=0x96000050 FAR_EL1=0x100000008",
        // ISV = 0 accesses cannot be emulated: injected too.
        "[vm1] guest-faults: ldp at 0xc000000 (no syndrome): data abort injected, \
         ESR_EL1=0x96000010 FAR_EL1=0xc000000",
        "[vm1] guest-faults: post-indexed ldr at 0xc000010 (no syndrome): data abort injected, \
         ESR_EL1=0x96000010 FAR_EL1=0xc000010",
        "[vm1] guest-faults: str at 0xc000020: data abort injected, \
         ESR_EL1=0x96000050 FAR_EL1=0xc000020",
        // EC 0 (unknown reason) with IL.
        "[vm1] guest-faults: mrs s3_0_c15_c0_0 (IMPLEMENTATION DEFINED): undefined instruction, \
         ESR_EL1=0x2000000",
    ] {
        q.expect_exact(l, T);
    }
    q.expect_line("[vm1] guest-faults: mrs PMCR_EL0: ", T);
    q.expect_line("[vm1] guest-faults: ID_AA64PFR0_EL1=", T);
    q.expect_line("[vm1] guest-faults: ID_AA64DFR0_EL1=", T);
    let share = q.expect_line("[vm1] guest-faults: MEM_SHARE(0x100000000) = ", T);
    let ret: i64 = share
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no return value in {share:?}"));
    assert!(
        ret < 0,
        "MEM_SHARE of an IPA outside RAM succeeded: {share}"
    );
    q.expect_line("[vm1] guest-faults: MEM_SHARE(0x40000001) = -", T);
    q.expect_line(" exceptions taken, powering off", T);
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
}

/// A normal VM has the virtual PMU (`guest_pmu.rs` tests it): PMCR_EL0
/// reads; a counter past PMCR_EL0.N is UNDEFINED.
#[test]
fn pmu_registers_past_n_are_undefined() {
    let log = run();
    assert_eq!(
        line(&log, "[vm1] guest-faults: mrs PMCR_EL0: "),
        "[vm1] guest-faults: mrs PMCR_EL0: no exception"
    );
    assert_eq!(
        line(&log, "[vm1] guest-faults: mrs PMEVCNTR30_EL0: "),
        "[vm1] guest-faults: mrs PMEVCNTR30_EL0: undefined instruction, ESR_EL1=0x2000000"
    );
}

#[test]
fn id_registers_are_sanitised() {
    let log = run();
    let pfr0 = line(&log, "[vm1] guest-faults: ID_AA64PFR0_EL1=");
    for (name, want) in [
        ("EL0", 1),
        ("EL1", 1),
        ("EL2", 0),
        // QEMU's `-cpu max` has SVE, which guests get (`vcpu::sve`).
        ("SVE", 1),
        ("MPAM", 0),
        ("AMU", 0),
        ("RME", 0),
    ] {
        assert_eq!(field(pfr0, name), want, "{name} in {pfr0}");
    }
    assert!(field(pfr0, "GIC") <= 1, "{pfr0}");
    assert!(field(pfr0, "RAS") <= 1, "{pfr0}");
    let pfr1 = line(&log, "[vm1] guest-faults: ID_AA64PFR1_EL1=");
    for name in ["MTE", "RAS_frac", "SME", "GCS"] {
        assert_eq!(field(pfr1, name), 0, "{name} in {pfr1}");
    }
    let dfr0 = line(&log, "[vm1] guest-faults: ID_AA64DFR0_EL1=");
    for (name, want) in [
        ("DebugVer", 6),
        ("TraceVer", 0),
        // FEAT_PMUv3p1: the virtual PMU's level (QEMU's `max` has more).
        ("PMUVer", 4),
        ("PMSVer", 0),
        ("DoubleLock", 0xf),
        ("TraceBuffer", 0),
        ("BRBE", 0),
    ] {
        assert_eq!(field(dfr0, name), want, "{name} in {dfr0}");
    }
    let isar1 = line(&log, "[vm1] guest-faults: ID_AA64ISAR1_EL1=");
    for name in ["APA", "API", "GPA", "GPI", "LS64"] {
        assert_eq!(field(isar1, name), 0, "{name} in {isar1}");
    }
    let mmfr0 = line(&log, "[vm1] guest-faults: ID_AA64MMFR0_EL1=");
    assert_eq!(field(mmfr0, "PARange"), 2, "40-bit IPA: {mmfr0}");
    assert_eq!(field(mmfr0, "FGT"), 0, "{mmfr0}");
}

#[test]
fn mem_share_of_memory_not_owned_is_invalid_parameter() {
    let log = run();
    // SMCCC INVALID_PARAMETER (-3): not the guest's page, and not page-aligned.
    assert_eq!(
        line(&log, "[vm1] guest-faults: MEM_SHARE(0x100000000) = "),
        "[vm1] guest-faults: MEM_SHARE(0x100000000) = -3"
    );
    assert_eq!(
        line(&log, "[vm1] guest-faults: MEM_SHARE(0x40000001) = "),
        "[vm1] guest-faults: MEM_SHARE(0x40000001) = -3"
    );
}

/// raspi4b enters EL2 through the vectors that invalidate the branch
/// predictor first (Cortex-A72, `arch::spectre`), then the same
/// `__hvc_fast`: unknown HVCs answered there as SMCs are by the decoder.
#[test]
fn unknown_calls_answer_alike_by_hvc_and_smc_rpi4() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-faults".into()),
        ..BootOptions::board(TestBoard::Rpi4)
    });
    q.expect_exact("[vm1] guest-faults: unknown HVC 0xc600fff0 returned -1", T);
    q.expect_exact(CALLS_ALIKE, T);
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
}
