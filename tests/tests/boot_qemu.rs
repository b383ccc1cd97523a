//! Boots the QEMU image with guest-hello: the hypervisor announces itself and powers off cleanly.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

#[test]
fn boots_and_powers_off() {
    let mut qemu = Qemu::boot(BootOptions {
        append: Some("guest=guest-hello".to_owned()),
        ..BootOptions::default()
    });
    qemu.expect_line("hyp: booting on qemu-virt", Duration::from_secs(60));
    qemu.expect_exit_code(0, Duration::from_secs(60));
    // The announcement is the very first line on the serial port.
    let first = qemu.log().into_iter().find(|l| !l.starts_with("[stderr] "));
    assert_eq!(first.as_deref(), Some("hyp: booting on qemu-virt"));
}
