//! A physical device owned by a VM (issue 6, item 4): the host assigns QEMU
//! virt's PL031 RTC to guest-rtc (DEVICE_ASSIGN). Its registers are mapped
//! into the VM's stage 2; its level-sensitive SPI 34 is taken at EL2,
//! disabled at the physical distributor, raised in the VM's vGIC, and
//! re-enabled once the guest cleared the device. The guest takes two alarm
//! interrupts. A second assignment and a non-assignable frame are refused.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(60);

#[test]
fn assigned_rtc_interrupts_reach_the_guest() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-rtc assign=rtc".to_owned()),
        ..BootOptions::default()
    });
    for line in [
        "hyp: VM 1: device pl031-rtc assigned (SPI 34)",
        "host: PL031 RTC assigned to VM 1",
        "host: assigning it again: Err(Denied); assigning the UART: Err(Invalid)",
        "[vm1] guest-rtc: PL031 at 0x9010000 mapped in, its interrupt is SPI 34",
        "[vm1] guest-rtc: alarm 1 taken through the vGIC",
        "[vm1] guest-rtc: alarm 2 taken through the vGIC",
        "[vm1] guest-rtc: 2 alarms, 0 other interrupts, RIS after clearing = 0",
        "[vm1] guest-rtc: done, powering off",
        "host: VM 1 (guest-rtc) powered off",
    ] {
        q.expect_exact(line, T);
    }
    q.expect_exit_code(0, T);
}
