//! guest-pmu: the virtual PMU (`hyp-core`'s `vcpu::pmu`) as guests see it.
//!
//! - Counting: two VMs, both using the PMU, share host CPU 0 while VM 1
//!   also moves to another host CPU after every run (`roam`). Under
//!   `-icount` QEMU counts instructions exactly; each VM's counters must
//!   count all of its own work and stand still while it is out (the
//!   hypervisor's switch, the host, the other VM's million-iteration
//!   rounds, a move): at most a few instructions and cycles across each
//!   yield. The hostile accesses (counters past N, PMCEID writes, EL2
//!   filter bits) are UNDEFINED or masked, and each VM's first look at the
//!   PMU is all zero.
//! - Overflow: vCPU 1 of a two-vCPU VM overflows a CPU_CYCLES counter with
//!   its interrupt enabled: it alone takes PPI 23, once.
//! - A protected VM has no PMU (pKVM's policy): PMUVer 0, UNDEFINED.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(120);

fn boot(board: TestBoard, append: &str, icount: bool) -> Qemu {
    Qemu::boot(BootOptions {
        board,
        append: Some(append.into()),
        icount,
        ..BootOptions::default()
    })
}

fn counting(board: TestBoard) {
    let mut q = boot(
        board,
        "guests=guest-pmu:v1:roam:arg=160,guest-pmu:v1:arg=16000",
        true,
    );
    q.expect_line("host: VM 1 (guest-pmu) moved to another host CPU", T);
    q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
    let log = q.log().join("\n");
    for vm in [1, 2] {
        for line in [
            format!("[vm{vm}] guest-pmu: VM {vm}: PMEVCNTR30_EL0 (N = 6): undefined"),
            format!("[vm{vm}] guest-pmu: VM {vm}: PMXEVCNTR/PMXEVTYPER with PMSELR_EL0 = N: undefined"),
            format!("[vm{vm}] guest-pmu: VM {vm}: write of PMCEID0_EL0: undefined"),
            format!("[vm{vm}] guest-pmu: VM {vm}: first look at the PMU: all zero"),
            format!("[vm{vm}] guest-pmu: VM {vm}: instructions: every round's work counted: yes; at most"),
            format!("[vm{vm}] guest-pmu: VM {vm}: PASS"),
        ] {
            assert!(log.contains(&line), "missing {line:?}:\n{log}");
        }
    }
    // VM 1 really moved: once per run, 20 yields.
    let moved = log
        .lines()
        .find_map(|l| l.strip_prefix("host: VM 1 (guest-pmu) moved to another host CPU "))
        .and_then(|r| r.strip_suffix(" times"))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no move count:\n{log}"));
    assert!(moved >= 20, "VM 1 moved {moved} times:\n{log}");
}

#[test]
fn pmu_counts_across_moves_and_stands_still_while_out() {
    counting(TestBoard::QemuVirt);
}

/// Cortex-A72 (PMUv3 without FEAT_PMUv3p1: no MDCR_EL2.HPMD), GIC-400: EL2
/// is kept out of the counts by the event filters alone.
#[test]
fn pmu_counts_across_moves_and_stands_still_while_out_rpi4() {
    counting(TestBoard::Rpi4);
}

fn overflow(board: TestBoard) {
    let mut q = boot(board, "guest=guest-pmu:v2:arg=1", false);
    for line in [
        "[vm1] guest-pmu: VM 1: vCPU 0: 0 PMU interrupts, PMOVSSET 0x0, 0 other interrupts",
        "[vm1] guest-pmu: VM 1: vCPU 1: 1 PMU interrupts, PMOVSSET 0x1, 0 other interrupts",
        "[vm1] guest-pmu: VM 1: PASS",
    ] {
        q.expect_exact(line, T);
    }
    q.expect_exit_code(0, T);
}

#[test]
fn pmu_overflow_interrupt_reaches_its_vcpu() {
    overflow(TestBoard::QemuVirt);
}

#[test]
fn pmu_overflow_interrupt_reaches_its_vcpu_rpi4() {
    overflow(TestBoard::Rpi4);
}

#[test]
fn protected_vm_has_no_pmu() {
    let mut q = boot(TestBoard::QemuVirt, "guest=guest-pmu:p:v1", false);
    q.expect_exact(
        "[vm1] guest-pmu: VM 1: no PMU (PMUVer 0); PMCR_EL0, PMCNTENSET_EL0, PMCCNTR_EL0: undefined",
        T,
    );
    q.expect_exact("[vm1] guest-pmu: VM 1: PASS", T);
    q.expect_exit_code(0, T);
}
