//! A hypervisor panic prints where it happened and stops QEMU with a failing
//! status (semihosting exit 1), so no test can mistake a crash for success.
//! A host VM failure (here: a guest name it does not have) also fails the run.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

#[test]
fn panic_prints_location_and_fails() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("hyp.selftest=panic".to_owned()),
        ..BootOptions::default()
    });
    q.expect_matching(
        "the panic line with its location",
        Duration::from_secs(60),
        |l| l.starts_with("hyp: PANIC on CPU 0: panicked at crates/hyp-core/src/boot/mod.rs:"),
    );
    q.expect_exact(
        "panic requested by hyp.selftest=panic",
        Duration::from_secs(10),
    );
    q.expect_exit_code(1, Duration::from_secs(30));
}

#[test]
fn host_failure_fails_the_run() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=no-such-guest".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: FAIL no guest image named \"no-such-guest\"",
        Duration::from_secs(60),
    );
    q.expect_exit_code(1, Duration::from_secs(30));
}
