//! guest-prio: what keeps a pending interrupt from being taken (PSTATE.I,
//! the enable bit, the priority mask), the order pending interrupts are
//! taken in (by priority), and preemption of a handler by a more urgent
//! interrupt but not by a less urgent one.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(60);

/// The lines from "taken in this order" on, the same on both GIC versions.
const COMMON_TAIL: [&str; 7] = [
    "[vm1] guest-prio: taken in this order: SGI 4 (0x20), SGI 2 (0x40), SGI 1 (0x80), SGI 3 (0xa0)",
    "[vm1] guest-prio: all four pending, then unmasked: took SGIs 4, 2, 1, 3",
    // SGI 5's handler unmasks IRQs: SGI 7 (less urgent) waits, SGI 6 preempts.
    "[vm1] guest-prio: inside SGI 5 (0xc0): SGI 7 (0xe0) taken 0 times, SGI 6 (0x40) nested: yes",
    "[vm1] guest-prio: preemption: enter 5, enter 6, exit 6, exit 5, enter 7, exit 7",
    "[vm1] guest-prio: running priority 0xc0 in SGI 5, 0x40 in nested SGI 6",
    "[vm1] guest-prio: 0 spurious acknowledges",
    "[vm1] guest-prio: done, powering off",
];

#[test]
fn masking_priorities_and_preemption() {
    run(
        TestBoard::QemuVirt,
        &[
            // Priorities as the (virtual) redistributor holds them.
            "[vm1] guest-prio: GICR_IPRIORITYR: SGI 1 = 0x80, 2 = 0x40, 3 = 0xa0, 4 = 0x20",
            // Pending and forwarded (HPPIR names the most urgent), but PSTATE.I masks them.
            "[vm1] guest-prio: IRQs masked: GICR_ISPENDR0 = 0x1e, ICC_HPPIR1_EL1 = 4, taken 0",
            // Disabled: still pending, no longer forwarded to the CPU interface.
            "[vm1] guest-prio: SGIs disabled, IRQs unmasked: GICR_ISPENDR0 = 0x1e, ICC_HPPIR1_EL1 = 1023, taken 0",
            // Enabled again but all at or above the priority mask.
            "[vm1] guest-prio: enabled, ICC_PMR_EL1 = 0x10: GICR_ISPENDR0 = 0x1e, ICC_HPPIR1_EL1 = 4, taken 0",
            // Raising the mask lets through exactly the SGIs below it, most urgent first.
            "[vm1] guest-prio: ICC_PMR_EL1 = 0x30: took SGI 4",
            "[vm1] guest-prio: ICC_PMR_EL1 = 0x90: took SGIs 2, 1",
            "[vm1] guest-prio: ICC_PMR_EL1 = 0xf0: took SGI 3",
        ],
    );
}

/// The same on the Raspberry Pi 4 image: a GICv2 vGIC (emulated GICD, the
/// GIC-400's GICV frame as the guest's GICC), so the lines name the GICv2
/// registers. One value differs, and it comes from the hardware's virtual
/// CPU interface, not the hypervisor: with every pending SGI at or above the
/// priority mask, the GICV's `GICC_HPPIR` reads 1023 (QEMU's GICv2 CPU
/// interfaces only consider interrupts that pass the mask, as for
/// GICC_IAR), while GICv3's `ICC_HPPIR1_EL1` names SGI 4.
#[test]
fn masking_priorities_and_preemption_rpi4() {
    run(
        TestBoard::Rpi4,
        &[
            // Priorities as the (virtual) distributor's banked registers hold them
            // (the GIC-400's GICV keeps 5 priority bits: multiples of 8 survive).
            "[vm1] guest-prio: GICD_IPRIORITYR: SGI 1 = 0x80, 2 = 0x40, 3 = 0xa0, 4 = 0x20",
            "[vm1] guest-prio: IRQs masked: GICD_ISPENDR0 = 0x1e, GICC_HPPIR = 4, taken 0",
            // The vGIC's GICv2 SGI enables are programmable (IMPLEMENTATION DEFINED).
            "[vm1] guest-prio: SGIs disabled, IRQs unmasked: GICD_ISPENDR0 = 0x1e, GICC_HPPIR = 1023, taken 0",
            "[vm1] guest-prio: enabled, GICC_PMR = 0x10: GICD_ISPENDR0 = 0x1e, GICC_HPPIR = 1023, taken 0",
            "[vm1] guest-prio: GICC_PMR = 0x30: took SGI 4",
            "[vm1] guest-prio: GICC_PMR = 0x90: took SGIs 2, 1",
            "[vm1] guest-prio: GICC_PMR = 0xf0: took SGI 3",
        ],
    );
}

fn run(board: TestBoard, head: &[&str]) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guest=guest-prio".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-prio): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    for line in head.iter().chain(COMMON_TAIL.iter()) {
        q.expect_exact(line, T);
    }
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exit_code(0, T);
}
