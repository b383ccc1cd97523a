//! The host VM as an attacker of its protected VMs (issue: "Protected VMs
//! hold against a hostile host"). Each test is named after its item's key
//! word; the host's attacks are in `crates/host/src/attack.rs`.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(60);

/// Item 1: the host sets a protected VM's boot entry once, for vCPU 0,
/// before it runs; starting vCPU 1 (before the guest did, or after its
/// CPU_OFF) or vCPU 0 again is Denied, while the guest's own CPU_ON works.
#[test]
fn vcpu_init_of_a_protected_vm_only_once_before_it_runs() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("attack=vcpu_init".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact("guest-hello: vCPU 1 up (context 0x101)", T);
    q.expect_exact("guest-hello: all 2 vCPUs reported and are off", T);
    q.expect_exact(
        "host: attack vcpu_init: vCPU 1 before the guest started it: Err(Denied); \
         vCPU 0 a second time: Err(Denied); vCPU 1 after its CPU_OFF: Err(Denied)",
        T,
    );
    q.expect_exit_code(0, T);
}
