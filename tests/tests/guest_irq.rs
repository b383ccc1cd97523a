//! Guest interrupts from the host's devices (issue 18 item 1): IRQ_DECLARE
//! and IRQ_LINE. `guest-irq` (2 vCPUs) takes 1,000 level-triggered SPIs that
//! the host raises when vCPU 0 asks, on vCPU 1, held until the guest
//! acknowledges the device; the host tries every INTID it must not drive.
//! Two physical CPUs, one per vCPU, so that the latency of a kicked vCPU is
//! the kick's and not QEMU's scheduling of idle CPUs.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(120);
/// The hypervisor's time slice is 10 ms (`run/mod.rs`): an interrupt for a
/// vCPU that spins without exiting reaches it within a slice even with no
/// kick (measured: median 9,960 us without the kick, 76 us with it, about
/// 2,500 us with it while two other QEMUs compete for this machine's two
/// cores). The latencies are wall-clock (QEMU's counter follows the host's
/// clock), so the three boards run one after another in one test.
const KICKED_MEDIAN_MAX_US: u64 = 4_000;

#[test]
fn host_raises_declared_spis_only_and_kicks_the_running_vcpu() {
    irq(TestBoard::QemuVirt, false);
    irq(TestBoard::QemuVirt, true);
    irq(TestBoard::Rpi4, false);
}

fn irq(board: TestBoard, protected: bool) {
    let p = if protected { ":p" } else { "" };
    let mut opts = BootOptions {
        board,
        append: Some(format!("guest=guest-irq{p}:v2")),
        ..BootOptions::default()
    };
    if board == TestBoard::Rpi4 {
        // raspi4b always has 4 CPUs: the hypervisor parks two.
        opts.append = Some(format!("guest=guest-irq{p}:v2 hyp.cpus=2"));
    } else {
        opts = opts.smp(2);
    }
    let mut q = Qemu::boot(opts);
    q.expect_exact(
        "host: irq: before the run: declare SGI 1 Err(Invalid), PPI 27 Err(Invalid), \
         PPI 23 Err(Invalid), INTID 96 Err(Invalid); line of undeclared SPI 40 Err(Denied)",
        T,
    );
    q.expect_exact(
        "host: irq: after the run: declare SPI 41 Err(State); line of SPI 40 at level 2 \
         Err(Invalid), of PPI 27 Err(Invalid)",
        T,
    );
    q.expect_guest(
        1,
        "guest-irq: 1000 of 1000 interrupts taken on vCPU 1 (lost 0, on the wrong vCPU 0, \
         with the line low 0, other 0, spurious 0)",
        T,
    );
    let lat = q.expect_guest_line(1, "guest-irq: median latency from request to handler: ", T);
    let spinning: u64 = lat
        .split("handler: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no latency in {lat:?}"));
    assert!(
        spinning < KICKED_MEDIAN_MAX_US,
        "a spinning vCPU took the interrupt {spinning} us after the request (median): \
         not kicked, it waited for its time slice: {lat}"
    );
    q.expect_guest(
        1,
        "guest-irq: level held: left high 20 times, taken again 20 times before the acknowledgement",
        T,
    );
    q.expect_line("host: irq: raised 1000 times: ", T);
    q.expect_exit_code(0, T);
}
