//! guest-timer: the EL1 virtual timer (PPI 27) as a periodic 1 ms interrupt
//! on vCPUs 0 and 1 at once: exactly 50 ticks each, re-armed in the
//! handler, at least 50 periods of counter time, none after it stops.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(60);

#[test]
fn virtual_timer_ticks_on_two_vcpus() {
    run(TestBoard::QemuVirt);
}

/// The same on the Raspberry Pi 4 image: the GIC-400 (GICv2 vGIC; the
/// physical PPI 27 goes through the GIC-400's CPU interface at EL2).
#[test]
fn virtual_timer_ticks_on_two_vcpus_rpi4() {
    run(TestBoard::Rpi4);
}

fn run(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guest=guest-timer".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-timer): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    for line in [
        "[vm1] guest-timer: 50 virtual timer ticks",
        "[vm1] guest-timer: elapsed counter time >= 50 periods of 1 ms",
        "[vm1] guest-timer: 0 other or spurious interrupts",
        "[vm1] guest-timer: vCPU 1: 50 virtual timer ticks",
        "[vm1] guest-timer: vCPU 1: elapsed counter time >= 50 periods of 1 ms",
        "[vm1] guest-timer: vCPU 1: 0 other or spurious interrupts",
        "[vm1] guest-timer: done, powering off",
    ] {
        q.expect_exact(line, T);
    }
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
}

/// The EL1 physical timer (PPI 30; `arg=1`): vCPU 0 arms it by CVAL, vCPU
/// 1 by TVAL, each gets exactly 50 ticks with ISTATUS set, TVAL and CVAL
/// agree with CNTPCT, and CNTPCT never goes back and equals CNTVCT.
#[test]
fn physical_timer_ticks_on_two_vcpus() {
    run_phys(TestBoard::QemuVirt);
}

/// The same on raspi4b (GIC-400: the physical PPI 30 taken at EL2).
#[test]
fn physical_timer_ticks_on_two_vcpus_rpi4() {
    run_phys(TestBoard::Rpi4);
}

fn run_phys(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guest=guest-timer:arg=1".into()),
        ..BootOptions::default()
    });
    for line in [
        "[vm1] guest-timer: 50 physical timer ticks (CVAL)",
        "[vm1] guest-timer: elapsed counter time >= 50 periods of 1 ms",
        "[vm1] guest-timer: 0 other or spurious interrupts",
        "[vm1] guest-timer: physical counter = virtual counter, monotonic, timer registers consistent: 0 failed checks",
        "[vm1] guest-timer: vCPU 1: 50 physical timer ticks (TVAL)",
        "[vm1] guest-timer: vCPU 1: elapsed counter time >= 50 periods of 1 ms",
        "[vm1] guest-timer: vCPU 1: 0 other or spurious interrupts",
        "[vm1] guest-timer: vCPU 1: physical counter = virtual counter, monotonic, timer registers consistent: 0 failed checks",
        "[vm1] guest-timer: done, powering off",
    ] {
        q.expect_exact(line, T);
    }
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
}
