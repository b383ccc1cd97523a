//! The host VM issues 10,000 random control calls (valid and invalid
//! handles, vCPUs, addresses, sizes, orders), destroys whatever VMs they
//! created, checks it can write and read back every page it had offered,
//! and then runs a guest normally: the hypervisor must neither panic nor
//! lose a page.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(90);

#[test]
fn ten_thousand_random_calls_then_a_normal_guest() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("fuzz=10000 seed=42 guest=guest-hello".to_owned()),
        ..BootOptions::default()
    });
    q.expect_matching("the fuzz start line", T, |l| {
        l.starts_with("host: fuzz: 10000 random control calls over 0x400000 bytes at ")
    });
    let counts = q.expect_line("host: fuzz: ok=", T);
    let total: u64 = counts
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(_, v)| v.parse::<u64>().expect("numeric count"))
        .sum();
    assert_eq!(total, 10_000, "every call answered once: {counts}");
    let field = |name: &str| -> u64 {
        counts
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {counts:?}"))
    };
    // The mix must exercise both sides: successes, and each refusal that
    // random arguments provoke.
    for name in ["ok", "Invalid", "NoVm", "Denied", "Range", "State"] {
        assert!(field(name) > 0, "{name} never happened: {counts}");
    }
    q.expect_matching("everything given back", T, |l| {
        l.starts_with("host: fuzz: all VMs destroyed (")
            && l.ends_with("pages scrubbed), 1024 scratch pages usable again")
    });
    q.expect_exact(
        "host: fuzz: VCPU_RUN flags: unknown bit Err(Invalid), completion with no read outstanding Err(State), vCPU still off",
        T,
    );
    q.expect_exact("[vm1] guest-hello: all 4 vCPUs reported and are off", T);
    q.expect_exact("host: VM 1 (guest-hello) powered off", T);
    q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
}
