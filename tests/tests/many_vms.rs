//! VMs and vCPUs are limited by the VMID width and the vGIC, not by fixed
//! tables: 64 one-vCPU VMs alive at once (each with its state and tables in
//! pages its host donated), and one VM with as many vCPUs as the vGIC
//! serves (8); one more is refused.

use std::time::Duration;

use hyp_tests::{guest_line, BootOptions, Qemu};

const T: Duration = Duration::from_secs(120);

#[test]
fn sixty_four_vms_alive_at_once() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("vms=64".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact("hyp: VMs: up to 65534 (16-bit VMIDs)", T);
    q.expect_exact("host: vms: 64 VMs alive at once (handles 1..=64)", T);
    q.expect_matching("every VM ran", T, |l| {
        l.starts_with("host: vms: all 64 ran to SYSTEM_OFF (")
            && l.ends_with(" exits), all still alive")
    });
    q.expect_exact(
        "host: vms: all 64 destroyed (8192 pages scrubbed), a new VM took a freed slot",
        T,
    );
    q.expect_exit_code(0, T);
    let log = q.log();
    for h in 1..=64 {
        let done = guest_line(h, "guest-hello: done, powering off");
        let times = log.iter().filter(|l| **l == done).count();
        assert_eq!(times, 1, "VM {h}'s guest finished {times} times");
        let line = format!("hyp: VM {h} vCPU 0 requested SYSTEM_OFF");
        assert!(log.contains(&line), "VM {h} never powered off");
    }
}

#[test]
fn a_vm_with_as_many_vcpus_as_the_vgic_serves() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guests=guest-hello:v8:p".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: VM 1 (guest-hello): 8 vCPUs, 16 MiB at IPA 0x40000000, protected (donated)",
        T,
    );
    q.expect_exact("[vm1] guest-hello: all 8 vCPUs reported and are off", T);
    q.expect_exact("[vm1] guest-hello: done, powering off", T);
    q.expect_exit_code(0, T);
    for cpu in 1..8 {
        let line = format!(
            "[vm1] guest-hello: vCPU {cpu} up (context {:#x})",
            0x100 + cpu
        );
        assert!(q.log().contains(&line), "vCPU {cpu} never came up");
    }

    let mut q = Qemu::boot(BootOptions {
        append: Some("guests=guest-hello:v9".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact("host: FAIL VM_CREATE for guest-hello: Invalid", T);
    q.expect_exit_code(1, T);
}
