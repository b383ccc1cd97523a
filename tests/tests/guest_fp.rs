//! guest-fp: all 32 Q registers and FPCR survive exits to the host (the
//! guest yields its CPU: the hypervisor's YIELD call). As the only guest,
//! the yield returns to the same VM; with two VMs on one physical CPU, the
//! hypervisor switches FP/SIMD state between them at those exits.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(60);

#[test]
fn fp_state_survives_exits_to_the_host() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-fp".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-fp): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    // vCPU 0 boots with x0 = 0: VM number 0.
    q.expect_exact(
        "[vm1] guest-fp: VM 1: 100 rounds of 32 Q registers + FPCR across a yield",
        T,
    );
    q.expect_exact("[vm1] guest-fp: VM 1: 100 rounds, FP/SIMD state intact", T);
    let exits = q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
    let hvc: u64 = exits
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hvc="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no hvc= in {exits:?}"));
    assert!(hvc >= 100, "every round must exit on its yield: {exits}");
}

/// Boot arguments that run two guest-fp VMs (x0 = their handles, 1 and 2)
/// with one vCPU each: the host runs vCPU 0 of both on its CPU 0, switching
/// at every yield.
const TWO_VMS: &str = "guests=guest-fp,guest-fp";

#[test]
fn two_vms_keep_their_own_fp_state() {
    two_vms(TestBoard::QemuVirt);
}

#[test]
fn two_vms_keep_their_own_fp_state_rpi4() {
    two_vms(TestBoard::Rpi4);
}

fn two_vms(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some(TWO_VMS.into()),
        ..BootOptions::default()
    });
    let exits = q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
    // Lazy switching really happened: each VM's first FP use after the
    // other VM ran trapped to EL2 (CPTR_EL2.TFP), 100 rounds each.
    let fp: u64 = exits
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fp="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fp= in {exits:?}"));
    assert!(fp >= 200, "expected >= 200 FP traps, got {fp}: {exits}");
    // The VMs finish in either order.
    let log = q.log();
    for vm in [1, 2] {
        let line = format!("[vm{vm}] guest-fp: VM {vm}: 100 rounds, FP/SIMD state intact");
        assert!(
            log.contains(&line),
            "missing {line:?} (an FP/SIMD register was corrupted?):\n{}",
            log.join("\n")
        );
    }
}
