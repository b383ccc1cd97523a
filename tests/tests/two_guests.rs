//! A misbehaving guest and a well-behaved one at the same time, sharing a
//! physical CPU: guest-faults (unknown calls, aborts outside its memory and
//! without syndrome, IMPLEMENTATION DEFINED registers and PMU counters past
//! PMCR_EL0.N, MEM_SHARE of
//! memory it does not own, and first of all two seconds spinning with
//! interrupts masked) and guest-hello with 4 vCPUs. The hypervisor and
//! guest-hello carry on: guest-hello runs and finishes while guest-faults is
//! hogging the CPU they share (the hypervisor's time slice preempts it).
//! guest-hello starts 300 ms after guest-faults (`:after=300`): the slice is
//! real time, so on a loaded machine guest-faults' first slices can pass
//! with little progress, and guest-hello could otherwise finish before the
//! hog even began.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(90);

#[test]
fn misbehaving_guest_beside_a_well_behaved_one() {
    run(TestBoard::QemuVirt);
}

/// The same on the Raspberry Pi 4 image (GIC-400: the time slice and its
/// interrupt go through the GICv2 CPU interface).
#[test]
fn misbehaving_guest_beside_a_well_behaved_one_rpi4() {
    run(TestBoard::Rpi4);
}

fn run(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guests=guest-faults,guest-hello:v4:after=300".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-faults): 1 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    q.expect_exact(
        "host: VM 2 (guest-hello): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    q.expect_exact("[vm1] guest-faults: spun for 2 s with interrupts masked", T);
    q.expect_exact("host: VM 1 (guest-faults) powered off", T);
    q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);

    let log = q.log();
    let at = |line: &str| {
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("missing {line:?} in:\n{}", log.join("\n")))
    };
    // Every misbehaviour was answered inside the guest.
    for line in [
        "[vm1] guest-faults: unknown HVC 0xc600fff0 returned -1",
        "[vm1] guest-faults: read at 0x100000000: data abort injected, ESR_EL1=0x96000010 FAR_EL1=0x100000000",
        "[vm1] guest-faults: ldp at 0xc000000 (no syndrome): data abort injected, ESR_EL1=0x96000010 FAR_EL1=0xc000000",
        "[vm1] guest-faults: mrs s3_0_c15_c0_0 (IMPLEMENTATION DEFINED): undefined instruction, ESR_EL1=0x2000000",
        "[vm1] guest-faults: mrs PMEVCNTR30_EL0: undefined instruction, ESR_EL1=0x2000000",
        "[vm1] guest-faults: MEM_SHARE(0x100000000) = -3",
    ] {
        at(line);
    }
    // The well-behaved guest completed all its work, and did so while the
    // other guest was still spinning with interrupts masked.
    let spin_start = at("[vm1] guest-faults: spinning for 2 s with interrupts masked");
    let hello_off = at("host: VM 2 (guest-hello) powered off");
    at("[vm2] guest-hello: all 4 vCPUs reported and are off");
    let spin_done = at("[vm1] guest-faults: spun for 2 s with interrupts masked");
    assert!(
        spin_start < hello_off && hello_off < spin_done,
        "guest-hello did not finish while the hog spun:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("host: VM 2 (guest-hello) destroyed: ")),
        "{}",
        log.join("\n")
    );
}

/// A protected guest whose virtio driver keeps its virtqueue in private
/// memory and notifies anyway (guest-virtio `arg=1`): the host, serving the
/// device, touches pages the hypervisor refuses it. Its device breaks
/// (DEVICE_NEEDS_RESET, which the guest reads back) and nothing else: the
/// host says why and carries on, and guest-hello beside it runs to the
/// end. Before, the host took the refused access as an unhandled exception
/// outside the demo and panicked, powering off the machine with every VM.
#[test]
fn a_protected_guests_private_virtqueue_breaks_only_its_device() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guests=guest-virtio:p:arg=1,guest-hello".to_owned()),
        ..BootOptions::default()
    });
    // The two VMs run side by side: their lines come in any order.
    q.expect_line("host: done: ", T);
    let log = q.log();
    for want in [
        "host: VM 1: virtio Console: its virtqueue points at IPA 0x4001",
        "[vm1] guest-virtio: VM 1: device status 0x4f (DEVICE_NEEDS_RESET)",
        "host: VM 1 (guest-virtio) powered off",
        "[vm2] guest-hello: done, powering off",
    ] {
        assert!(
            log.iter().any(|l| l.starts_with(want)),
            "no {want:?}:\n{}",
            log.join("\n")
        );
    }
    assert_eq!(q.expect_exit(T), 0, "the host finishes normally");
    assert!(
        !q.log().iter().any(|l| l.contains("panic")),
        "no panic:\n{}",
        q.log().join("\n")
    );
}
