//! guest-sve: SVE for guests (QEMU virt `-cpu max`) and SVE hidden where the
//! CPU has none (raspi4b's Cortex-A72). See `crates/guest-sve`.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(120);

/// The exit statistics' `fp=` count (FP/SIMD and SVE traps).
fn fp_traps(exits: &str) -> u64 {
    exits
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fp="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fp= in {exits:?}"))
}

/// Two VMs with one vCPU each on the host's CPU 0, switched at every yield:
/// each keeps Z0-Z31, P0-P15 and FFR over 100 rounds; VM 2 runs every other
/// round at a 16-byte vector length and never finds VM 1's bytes beyond it
/// when it raises the length again. Without `:sve=` each starts at the
/// hypervisor's cap, 64 bytes; ZCR_EL1.LEN = 15, or every bit of ZCR_EL1
/// set, gives no more (QEMU's `-cpu max` would give 256); SME stays trapped
/// (SMSTART UNDEFINED).
#[test]
fn two_vms_keep_their_own_sve_state() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guests=guest-sve,guest-sve".into()),
        ..BootOptions::default()
    });
    let exits = q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
    // Lazy switching really happened: each VM's first SVE or FP use after
    // the other VM ran trapped to EL2, 100 rounds each.
    let fp = fp_traps(&exits);
    assert!(fp >= 200, "expected >= 200 FP/SVE traps, got {fp}: {exits}");
    let mut lines = Vec::new();
    for vm in [1, 2] {
        lines.extend([
            format!("[vm{vm}] guest-sve: VM {vm}: starts at VL 64 bytes (ZCR_EL1 reads 0x3)"),
            format!("[vm{vm}] guest-sve: VM {vm}: SVE 1, ZCR_EL1.LEN = 15 gives VL 64 bytes (ZCR_EL1 reads 0xf)"),
            format!("[vm{vm}] guest-sve: VM {vm}: ZCR_EL1 = all ones gives VL 64 bytes"),
            format!("[vm{vm}] guest-sve: VM {vm}: SMSTART UNDEFINED"),
            format!("[vm{vm}] guest-sve: VM {vm}: 100 rounds, SVE state intact"),
        ]);
    }
    assert_lines(&q, &lines);
}

/// Every line of `lines` is in the log.
fn assert_lines(q: &Qemu, lines: &[String]) {
    let log = q.log();
    for line in lines {
        assert!(log.contains(line), "missing {line:?}:\n{}", log.join("\n"));
    }
}

/// Four VMs with one vCPU each on the host's CPU 0, each with its own
/// vector-length cap chosen at VM_CREATE (`:sve=BITS`): 128, 512, 256 (a
/// protected VM) and 2048 bits, more than the hypervisor's cap, which it
/// gets instead (64 bytes). Each starts at its length (RDVL, ZCR_EL1.LEN),
/// cannot raise it (ZCR_EL1.LEN = 15) even right after a VM with longer
/// vectors ran on the CPU (VMs 1 and 3, after every yield), and keeps its
/// whole state over 100 rounds; VM 2 and VM 4 (512 bits) never find another
/// VM's bytes beyond a 16-byte length.
#[test]
fn per_vm_vector_lengths() {
    let mut q = Qemu::boot(BootOptions {
        append: Some(
            "guests=guest-sve:sve=128,guest-sve:sve=512,guest-sve:p:sve=256,guest-sve:sve=2048"
                .into(),
        ),
        ..BootOptions::default()
    });
    let exits = q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
    let fp = fp_traps(&exits);
    assert!(fp >= 400, "expected >= 400 FP/SVE traps, got {fp}: {exits}");
    let mut lines = Vec::new();
    for (vm, bytes) in [(1, 16), (2, 64), (3, 32), (4, 64)] {
        let len = bytes / 16 - 1;
        lines.extend([
            format!("[vm{vm}] guest-sve: VM {vm}: starts at VL {bytes} bytes (ZCR_EL1 reads {len:#x})"),
            format!("[vm{vm}] guest-sve: VM {vm}: SVE 1, ZCR_EL1.LEN = 15 gives VL {bytes} bytes (ZCR_EL1 reads 0xf)"),
            format!("[vm{vm}] guest-sve: VM {vm}: ZCR_EL1 = all ones gives VL {bytes} bytes"),
            format!("[vm{vm}] guest-sve: VM {vm}: 100 rounds, SVE state intact"),
        ]);
    }
    assert_lines(&q, &lines);
}

/// A vector-length request that is not a power of two (384 bits) is
/// refused: VM_CREATE returns Invalid, and the host stops.
#[test]
fn malformed_vector_length_is_refused() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guests=guest-sve:sve=384".into()),
        ..BootOptions::default()
    });
    q.expect_exact("host: FAIL VM_CREATE for guest-sve: Invalid", T);
    q.expect_exit_code(1, T);
}

/// An SVE guest and an FP/SIMD-only guest on one CPU: neither disturbs the
/// other (the FP guest's Q registers and FPCR, the SVE guest's whole state).
#[test]
fn sve_and_fp_guests_share_a_cpu() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guests=guest-sve,guest-fp".into()),
        ..BootOptions::default()
    });
    q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);
    let log = q.log();
    for line in [
        "[vm1] guest-sve: VM 1: 100 rounds, SVE state intact",
        "[vm2] guest-fp: VM 2: 100 rounds, FP/SIMD state intact",
    ] {
        assert!(
            log.iter().any(|l| l == line),
            "missing {line:?}:\n{}",
            log.join("\n")
        );
    }
}

/// raspi4b (Cortex-A72, no SVE): the guest's ID registers show no SVE, and
/// RDVL and ZCR_EL1 are UNDEFINED.
#[test]
fn sve_hidden_on_rpi4() {
    let mut q = Qemu::boot(BootOptions {
        board: TestBoard::Rpi4,
        append: Some("guest=guest-sve".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "[vm1] guest-sve: VM 1: SVE hidden, RDVL and ZCR_EL1 UNDEFINED",
        T,
    );
    q.expect_exit_code(0, T);
}
