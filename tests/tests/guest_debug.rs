//! guest-debug: hardware breakpoints, watchpoints, software step, BRK and
//! the OS lock work inside a guest whose two vCPUs move between physical
//! CPUs (host option `migrate`), with a bystander VM beside it that owns its
//! (empty) debug registers and one that never touches them: neither may
//! take a debug exception of the debugger's. The debugger also arms
//! watchpoints and breakpoints that match at EL2 and makes exits of every
//! kind: the hypervisor must not notice.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(120);

const GUESTS: &str =
    "guests=guest-debug:v2:migrate,guest-debug:arg=1:cpu=0,guest-debug:arg=2:cpu=1";

#[test]
fn guest_debug_virt() {
    guest_debug(TestBoard::QemuVirt);
}

#[test]
fn guest_debug_rpi4() {
    guest_debug(TestBoard::Rpi4);
}

fn guest_debug(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some(GUESTS.into()),
        ..BootOptions::default()
    });
    q.expect_exact("[vm1] guest-debug: VM 1: PASS", T);
    q.expect_exit_code(0, T);
    let log = q.log().join("\n");
    for line in [
        "[vm1] guest-debug: VM 1: 6 breakpoints, 4 watchpoints",
        "[vm1] guest-debug: vCPU 0: 12 rounds of 6 breakpoints, 4 watchpoints, BRK, step, OS lock: OK",
        "[vm1] guest-debug: vCPU 1: 12 rounds of 6 breakpoints, 4 watchpoints, BRK, step, OS lock: OK",
        "[vm1] guest-debug: VM: 300 rounds of exits under EL2-matching watchpoints and breakpoints: EL2 unaffected",
        "[vm2] guest-debug: VM 2: bystander (owner): 600 iterations, no debug exception",
        "[vm3] guest-debug: VM 3: bystander (no debug): 600 iterations, no debug exception",
    ] {
        assert!(log.contains(line), "missing {line:?}:\n{log}");
    }
    // Both debugger vCPUs ran on more than one physical CPU.
    for v in 0..2 {
        let prefix = format!("host: VM 1 vCPU {v} ran on CPUs 0x");
        let mask = log
            .lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, m)| m.trim().to_string()))
            .and_then(|m| u64::from_str_radix(&m, 16).ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{log}"));
        assert!(
            mask.count_ones() >= 2,
            "vCPU {v} never migrated (CPUs {mask:#x})"
        );
    }
}
