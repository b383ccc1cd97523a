//! Console input (issue 18 item 5): what the test types on QEMU's serial
//! port (the hypervisor's physical PL011) reaches the VM with the console
//! focus through its emulated PL011's receive FIFO and interrupt; and a
//! normal VM's PSCI SYSTEM_RESET restarts it from its image.
//!
//! `guest-console` reads lines in its interrupt handler only (it waits in
//! WFI otherwise) and answers each. On QEMU virt (GICv3: the physical UART
//! interrupt is SPI 1, INTID 33; the guest's vGIC is GICv3) and on raspi4b
//! (GIC-400: the PL011's INTID 153; the guest's vGIC is GICv2).

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(120);

const READY: &str = "guest-console: reading my PL011 through its interrupt (INTID 33); type a line";

#[test]
fn typed_lines_reach_the_focused_guest_and_reset_restarts_it() {
    console(TestBoard::QemuVirt);
}

#[test]
fn typed_lines_reach_the_focused_guest_and_reset_restarts_it_rpi4() {
    console(TestBoard::Rpi4);
}

fn console(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guest=guest-console:v1".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact("hyp: console input goes to VM 1", T);
    q.expect_guest(1, READY, T);
    q.send("hello-console\n");
    let got = q.expect_guest_line(1, "guest-console: got ", T);
    assert!(
        got.starts_with("guest-console: got \"hello-console\" (13 bytes, "),
        "{got}"
    );
    // Taken through the interrupt: at least one, at most one per character
    // and the newline (QEMU hands the UART one character at a time when
    // its FIFO is off).
    let irqs: u64 = got
        .split("bytes, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interrupt count in {got:?}"));
    assert!((1..=14).contains(&irqs), "{got}");

    // A second line, CR-terminated as a terminal sends it.
    q.send("second line\r");
    q.expect_guest_line(1, "guest-console: got \"second line\" (11 bytes, ", T);

    // Flow control: the guest stops reading until its FIFO (64
    // characters) is full; the rest of a 120-character line waits in the
    // physical UART, which the hypervisor stops draining meanwhile, and
    // arrives whole once the guest reads again.
    q.send("hold\n");
    q.expect_guest(
        1,
        "guest-console: holding my input until the FIFO is full",
        T,
    );
    let long: String = (0..120u8).map(|i| char::from(b'a' + i % 26)).collect();
    q.send(&format!("{long}\n"));
    q.expect_guest(1, "guest-console: FIFO full (RXFF); reading again", T);
    q.expect_guest_line(1, &format!("guest-console: got \"{long}\" (120 bytes, "), T);

    // SYSTEM_RESET: the host destroys the normal VM and creates it again
    // from its image; it boots again and still has the focus.
    q.send("reset\n");
    q.expect_guest(1, "guest-console: resetting (PSCI SYSTEM_RESET)", T);
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_RESET", T);
    q.expect_exact(
        "host: VM 1 (guest-console) reset: restarting it (boot 2)",
        T,
    );
    q.expect_guest(1, READY, T);
    q.send("after the reset\n");
    q.expect_guest_line(1, "guest-console: got \"after the reset\" (15 bytes, ", T);
    q.send("off\n");
    let off = q.expect_guest_line(1, "guest-console: powering off (", T);
    assert!(
        off.contains(" 0 lost characters, 0 other interrupts"),
        "{off}"
    );
    q.expect_exact("host: VM 1 (guest-console) powered off", T);
    assert_eq!(q.expect_exit(T), 0);
    let log = q.log();
    assert!(
        !log.iter().any(|l| l.contains("powered reset")),
        "a normal VM's reset must not stop it:\n{}",
        log.join("\n")
    );
}
