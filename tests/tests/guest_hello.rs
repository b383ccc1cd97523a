//! The first guest (issue 2): PSCI and SMCCC answers, 4 vCPUs started with
//! CPU_ON, an unknown HVC and SMC answered NOT_SUPPORTED, an access outside
//! guest memory injected back as a synchronous external abort, and the
//! hypervisor's exit counters on shutdown.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(60);

#[test]
fn four_vcpus_psci_smccc_and_abort_injection() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-hello".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact("hyp: 4 CPUs online at EL2", T);
    q.expect_exact(
        "host: VM 1 (guest-hello): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    q.expect_exact("[vm1] guest-hello: vCPU 0 up (PSCI 1.1, SMCCC 1.1)", T);
    q.expect_exact("[vm1] guest-hello: PSCI_FEATURES(CPU_ON) = 0", T);
    q.expect_exact("[vm1] guest-hello: unknown HVC returned -1", T);
    q.expect_exact("[vm1] guest-hello: unknown SMC returned -1", T);
    // PSCI ALREADY_ON for the caller itself.
    q.expect_exact("[vm1] guest-hello: CPU_ON(self) = -4", T);
    q.expect_exact("[vm1] guest-hello: all 4 vCPUs reported and are off", T);
    q.expect_exact(
        "[vm1] guest-hello: read outside memory at 0x100000000: abort injected, \
         ESR_EL1=0x96000010 FAR_EL1=0x100000000",
        T,
    );
    q.expect_exact("[vm1] guest-hello: done, powering off", T);
    q.expect_exact("host: VM 1 (guest-hello) powered off", T);
    q.expect_matching("the VM's destruction", T, |l| {
        l.starts_with("host: VM 1 (guest-hello) destroyed: ")
            && l.ends_with(" exits, 0 pages scrubbed (lent memory)")
    });
    let exits = q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);

    // Secondaries print in any order, but each exactly once, before vCPU 0's summary.
    let log = q.log();
    let summary = log
        .iter()
        .position(|l| l == "[vm1] guest-hello: all 4 vCPUs reported and are off")
        .expect("summary line seen above");
    for cpu in 1..4 {
        let line = format!(
            "[vm1] guest-hello: vCPU {cpu} up (context {:#x})",
            0x100 + cpu
        );
        let at: Vec<_> = log
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == line)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            at.len(),
            1,
            "expected {line:?} exactly once in:\n{}",
            log.join("\n")
        );
        assert!(at[0] < summary, "{line:?} came after the summary");
    }

    // The counters: exactly one trapped SMC, the abort and the console
    // writes as data aborts, HVCs for every PSCI call.
    let field = |name: &str| -> u64 {
        exits
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {exits:?}"))
    };
    assert_eq!(field("smc"), 1, "{exits}");
    assert!(field("hvc") >= 10, "{exits}");
    assert!(field("dabt") > 100, "{exits}");
    let sum: u64 = [
        "hvc", "smc", "dabt", "iabt", "sysreg", "wfx", "fp", "irq", "other",
    ]
    .iter()
    .map(|n| field(n))
    .sum();
    assert_eq!(field("total"), sum, "{exits}");
}
