//! guest-sgi: 4 vCPUs send each other SGIs (100 targeted, INTIDs 1/2/3 in
//! turns, and 20 broadcasts with INTID 4, per sender and target) through the
//! virtual GIC (GICv3: trapped `ICC_SGI1R_EL1`; GICv2 on the Raspberry Pi 4:
//! the emulated `GICD_SGIR`), and every SGI is counted exactly per (sender,
//! INTID) at its target. On GICv2 the guest also checks each SGI's sender
//! CPU number in `GICC_IAR` against the sender it recorded.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(90);

#[test]
fn sgis_between_four_vcpus_counted_exactly() {
    run(TestBoard::QemuVirt);
}

/// The same on the Raspberry Pi 4 image: GIC-400, so a GICv2 vGIC (the
/// output is the same).
#[test]
fn sgis_between_four_vcpus_counted_exactly_rpi4() {
    run(TestBoard::Rpi4);
}

fn run(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guest=guest-sgi".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-sgi): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    for t in 0..4 {
        let from: Vec<String> = (0..4)
            .filter(|&s| s != t)
            .map(|s| format!("from {s} 34/33/33/20"))
            .collect();
        q.expect_exact(
            &format!(
                "[vm1] guest-sgi: vCPU {t} took 360 SGIs (INTIDs 1/2/3/4): {}",
                from.join(", ")
            ),
            T,
        );
    }
    q.expect_exact("[vm1] guest-sgi: 0 SGIs without a sender", T);
    q.expect_exact(
        "[vm1] guest-sgi: 4 vCPUs took 1440 SGIs: 100 targeted (INTIDs 1/2/3 = 34/33/33) \
         + 20 broadcast (INTID 4) per sender and target: exact",
        T,
    );
    // SGIs to the sender itself reach its list registers before it runs
    // again (the vector's fast path takes only SGIs to others).
    q.expect_exact(
        "[vm1] guest-sgi: vCPU 0 took 50 of 50 SGIs to itself at once (50 in all)",
        T,
    );
    q.expect_exact("[vm1] guest-sgi: done, powering off", T);
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
}
