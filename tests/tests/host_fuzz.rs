//! The host VM attacks the hypervisor from every host CPU (`fuzz=N`,
//! crates/host/src/fuzz.rs): random control calls, valid and invalid,
//! interleaved with runs of live protected and normal VMs, checked against
//! its model, with probes of every page it gave away and the hypervisor's
//! AUDIT after every batch; then every VM is destroyed, every page is the
//! host's again, and a guest runs normally. `cargo xtask test` also runs
//! 100,000 calls (`cargo xtask fuzz`); this is the short version.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(180);

#[test]
fn fuzz_from_every_cpu_with_live_vms_then_a_normal_guest() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("fuzz=4000 seed=42 guest=guest-hello".to_owned()),
        ..BootOptions::default()
    });
    q.expect_matching("the fuzz start line", T, |l| {
        l.starts_with("host: fuzz: 4000 calls from 4 CPUs ")
    });
    let run = q.expect_line("host: fuzz: VCPU_RUN: ok=", T);
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
    };
    assert!(field(&run, "ok") > 400, "guests ran: {run}");
    let audits = q.expect_line("host: fuzz: audits: ", T);
    assert!(
        audits.contains(" 0 violations; 0 answers the model did not allow"),
        "{audits}"
    );
    q.expect_matching("everything given back", T, |l| {
        l.starts_with("host: fuzz: all VMs destroyed, 5760 of 5760 pages written and read back")
    });
    q.expect_matching("the verdict", T, |l| l.starts_with("host: fuzz: PASS "));
    q.expect_exact(
        "host: fuzz: VCPU_RUN flags: unknown bit Err(Invalid), completion with no read outstanding Err(State), vCPU still off",
        T,
    );
    // Every VM was destroyed, so the guest gets handle 1 again.
    q.expect_exact("[vm1] guest-hello: all 4 vCPUs reported and are off", T);
    q.expect_exact("host: VM 1 (guest-hello) powered off", T);
    q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
}
