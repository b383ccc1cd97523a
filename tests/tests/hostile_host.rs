//! The host VM as an attacker of its protected VMs (issue: "Protected VMs
//! hold against a hostile host"). Each test is named after its item's key
//! word; the host's attacks are in `crates/host/src/attack.rs`.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu, TestBoard};

const T: Duration = Duration::from_secs(60);

/// Item 1: the host sets a protected VM's boot entry once, for vCPU 0,
/// before it runs; starting vCPU 1 (before the guest did, or after its
/// CPU_OFF) or vCPU 0 again is Denied, while the guest's own CPU_ON works.
#[test]
fn vcpu_init_of_a_protected_vm_only_once_before_it_runs() {
    vcpu_init(TestBoard::QemuVirt);
}

#[test]
fn vcpu_init_of_a_protected_vm_only_once_before_it_runs_rpi4() {
    vcpu_init(TestBoard::Rpi4);
}

fn vcpu_init(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("attack=vcpu_init".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact("[vm1] guest-hello: vCPU 1 up (context 0x101)", T);
    q.expect_exact("[vm1] guest-hello: all 2 vCPUs reported and are off", T);
    q.expect_exact(
        "host: attack vcpu_init: vCPU 1 before the guest started it: Err(Denied); \
         vCPU 0 a second time: Err(Denied); vCPU 1 after its CPU_OFF: Err(Denied)",
        T,
    );
    q.expect_exit_code(0, T);
}

/// Item 7: break-before-make is invisible to the guest. vCPU 1 of a
/// protected VM reads and writes every page of a 2 MiB block in a loop while
/// vCPU 0 shares and unshares pages inside it 1,000 times (each splits or
/// re-merges the block's entries with a break window in between): no abort
/// reaches the guest. Before the fix a fault in the window was injected
/// (17 aborts in one run).
#[test]
fn bbm_window_faults_are_retried_not_injected() {
    bbm(TestBoard::QemuVirt);
}

#[test]
fn bbm_window_faults_are_retried_not_injected_rpi4() {
    bbm(TestBoard::Rpi4);
}

fn bbm(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("guest=guest-faults:p:v2:arg=1".to_owned()),
        ..BootOptions::default()
    });
    let l = q.expect_guest_line(1, "guest-faults: bbm: ", T);
    q.expect_exit_code(0, T);
    let passes: u64 = l
        .split(" made ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pass count in {l:?}"));
    assert!(passes > 100, "vCPU 1 hardly ran: {l}");
    assert!(
        l.contains("1000 share/unshare pairs inside a 2 MiB block (0 failed)")
            && l.ends_with(": 0 aborts"),
        "{l}"
    );
}

/// Item 5: MMIO guard, upstream style (function 7 of the KVM vendor
/// service), enforced. A protected guest-faults (`arg=2`) finds MMIO_GUARD
/// in KVM_FEATURES (0x9d: bit 7 beside FEATURES, HYP_MEMINFO, MEM_SHARE,
/// MEM_UNSHARE); before any guard its read of the host's window (page 0)
/// is an injected abort, as is its write to page 1, which it never guards;
/// guarding its own RAM or an unaligned IPA is refused (-3); once it
/// guarded page 0, a write and a read there reach the host's test device
/// (41 written, 42 read) while page 1 still aborts. The host counts exactly
/// the 2 MMIO exits of the guarded page and never sees page 1. Before this
/// change the Android-numbered MAP answered SUCCESS and changed nothing:
/// every access in the window went to the host (no abort; "MMIO at
/// 0xa001000 has no device"), and KVM_FEATURES read 0x1fd.
#[test]
fn mmio_guard_only_guarded_pages_reach_the_host() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-faults:p:arg=2".to_owned()),
        ..BootOptions::default()
    });
    let g = |q: &mut Qemu, text: &str| {
        q.expect_guest(1, &format!("guest-faults: mmio_guard: {text}"), T);
    };
    g(&mut q, "KVM_FEATURES 0x9d, MMIO_GUARD offered: true");
    g(
        &mut q,
        "read of 0xa000800 before guarding it: data abort injected, ESR_EL1=0x96000010 FAR_EL1=0xa000800",
    );
    g(
        &mut q,
        "write to unguarded 0xa001000: data abort injected, ESR_EL1=0x96000050 FAR_EL1=0xa001000",
    );
    g(&mut q, "MMIO_GUARD(0x40000000), my own RAM = -3");
    g(&mut q, "MMIO_GUARD(0xa000808), unaligned = -3");
    g(&mut q, "MMIO_GUARD(0xa000000) = 0");
    g(&mut q, "write 41 to guarded 0xa000800: no exception");
    g(&mut q, "read of guarded 0xa000800: no exception");
    g(&mut q, "the host's test device read 42");
    g(
        &mut q,
        "read of unguarded 0xa001000 after guarding 0xa000000: data abort injected, ESR_EL1=0x96000010 FAR_EL1=0xa001000",
    );
    g(&mut q, "3 exceptions taken, powering off");
    let done = q.expect_line("host: done: ", T);
    assert!(
        done.starts_with("host: done: 2 MMIO exits served, "),
        "{done}"
    );
    q.expect_exit_code(0, T);
    assert!(
        !q.log().iter().any(|l| l.contains("has no device")),
        "an unguarded access reached the host: {:#?}",
        q.log()
    );
}

/// Item 6: with `hyp.s2fwb=on`, HCR_EL2.FWB stays set for the host and every
/// VM across every world switch, in the release image the tests boot. A
/// switch that dropped it is refused by `HcrEl2::write_traps_only` in every
/// build (FWB is not a trap bit); before the fix the vCPUs' saved HCR lacked
/// it and the first switch panicked (`non-trap fields 0x400000000000
/// change`). The demo runs (three VMs, two protected) and passes.
#[test]
fn s2fwb_stays_on_across_world_switches_in_release() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("hyp.s2fwb=on".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "hyp: stage 2 uses FEAT_S2FWB: no guest cache-maintenance traps",
        T,
    );
    q.expect_line("demo: PASS", T);
    q.expect_exit_code(0, T);
    assert!(
        !q.log().iter().any(|l| l.contains("PANIC")),
        "no panic with FWB"
    );
}

/// Item 3: the host's FP/SIMD state survives VCPU_RUN. 1,000 rounds: the
/// host loads a pattern into all 32 Q registers, FPCR and FPSR, runs a guest
/// that uses FP/SIMD and then one that does not, and checks every register
/// after each run. Before the fix, after a run of the guest that used no FP
/// the host's first FP access trapped (the guest's entry had set
/// CPTR_EL2.TFP) and the hypervisor reloaded the host's registers from the
/// copy saved at the previous switch: 1,001 of 2,000 runs rolled the host's
/// state back.
#[test]
fn fp_host_state_survives_vcpu_run() {
    fp(TestBoard::QemuVirt);
}

#[test]
fn fp_host_state_survives_vcpu_run_rpi4() {
    fp(TestBoard::Rpi4);
}

fn fp(board: TestBoard) {
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some("attack=fp".to_owned()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "host: attack fp: 1000 rounds x 2 guests (one uses FP/SIMD, one does not): \
         0 rounds with host Q0-Q31/FPCR/FPSR changed",
        Duration::from_secs(120),
    );
    q.expect_exit_code(0, T);
}

/// Item 11: what a guest prints cannot pass for the hypervisor or the host.
/// guest-hello's hostile console (`arg=1`) prints the very lines tests wait
/// for (`hyp: VM 1 vCPU 0 requested SYSTEM_OFF`, `host: VM 1 (guest-hello)
/// powered off`, a `demo: PASS`), one behind a carriage return, one behind
/// ANSI escapes, one past the 256-byte line buffer: each shows up only
/// tagged `[vm1] ` and escaped, and the real lines once each, untagged.
#[test]
fn console_of_a_guest_cannot_pass_for_hyp_or_host() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("guest=guest-hello:arg=1".to_owned()),
        ..BootOptions::default()
    });
    let forged = [
        "[vm1] hyp: VM 1 vCPU 0 requested SYSTEM_OFF",
        // The carriage return is dropped: no return to column 0.
        "[vm1] host: VM 1 (guest-hello) powered off",
        "[vm1] demo: PASS protected=2 normal=1 denied=0 shared=0 scrubbed=0",
        "[vm1] \\x1b[2K\\x1b[1Ghyp: exits total=0\\x1b[0m",
        // The piece past the line buffer is tagged too.
        "[vm1] host: fuzz: ok=1",
    ];
    for l in forged {
        q.expect_exact(l, T);
    }
    q.expect_guest(1, "guest-hello: hostile console done, powering off", T);
    // The real lines, after the forged ones.
    q.expect_exact("hyp: VM 1 vCPU 0 requested SYSTEM_OFF", T);
    q.expect_exact("host: VM 1 (guest-hello) powered off", T);
    q.expect_line("hyp: exits total=", T);
    q.expect_exit_code(0, T);

    let log = q.log();
    let count = |line: &str| log.iter().filter(|l| *l == line).count();
    assert_eq!(count(&format!("[vm1] {}", "-".repeat(256))), 1, "{log:#?}");
    for l in forged {
        assert_eq!(count(l), 1, "{l:?} in {log:#?}");
    }
    // Once each: on a console that printed guest lines as they are, the
    // guest's own `host: VM 1 (guest-hello) powered off` would be a second.
    assert_eq!(
        count("hyp: VM 1 vCPU 0 requested SYSTEM_OFF"),
        1,
        "{log:#?}"
    );
    assert_eq!(count("host: VM 1 (guest-hello) powered off"), 1, "{log:#?}");
    for l in &log {
        assert!(
            !l.contains(['\x1b', '\r']),
            "raw control character in {l:?}"
        );
        assert!(!l.starts_with("demo:"), "no demo runs here: {l:?}");
        if let Some(text) = l.strip_prefix("[vm1] ") {
            assert!(!text.starts_with("[vm"), "doubly tagged: {l:?}");
        } else if !l.starts_with("[stderr] ") {
            assert!(
                l.starts_with("hyp: ") || l.starts_with("host: "),
                "a line neither tagged nor the hypervisor's or host's: {l:?}"
            );
        }
    }
}

/// Item 4 (key word `vmcr`): no EL1 or virtual-GIC state passes from one VM
/// to the next on the same physical CPU. Two protected guest-faults VMs in
/// their `leak` mode (`arg=3`) run one after the other on one CPU: each
/// reads every register of the derived list (ARCHITECTURE.md, "EL1 and GIC
/// state between VMs": CSSELR_EL1, DISR_EL1, the LOR registers, ACTLR_EL1,
/// TPIDR2_EL0, SCXTNUM_EL0/EL1, PAR_EL1, CNTKCTL_EL1, CNTV_CTL/CVAL_EL0,
/// MDSCR_EL1, the pointer-authentication keys, ZCR/SMCR/SMPRI_EL1, the MTE
/// registers, ACCDATA_EL1, AMAIR2/MAIR2/TCR2/SCTLR2/PIR/PIRE0/POR_EL0/EL1,
/// FPMR, GCS, RCWMASK, MPAM, TRFCR, ERRSELR, AMU, and the virtual CPU
/// interface: ICH_VMCR_EL2's fields and the active priorities through
/// ICC_* on GICv3, GICH_VMCR/GICH_APR through the GICV frame on GICv2),
/// reports those not at a new vCPU's value, then writes a marker to each
/// and powers off. Neither VM may report one. Before the fix the second VM
/// saw CSSELR_EL1 and DISR_EL1 (VDISR_EL2) of the first on virt and
/// CSSELR_EL1 on raspi4b.
#[test]
fn no_el1_or_vmcr_state_leaks_between_vms() {
    leak_between_vms(TestBoard::QemuVirt);
}

/// [`no_el1_or_vmcr_state_leaks_between_vms`] on raspi4b (Cortex-A72,
/// GIC-400: GICH_VMCR).
#[test]
fn no_el1_or_vmcr_state_leaks_between_vms_rpi4() {
    leak_between_vms(TestBoard::Rpi4);
}

fn leak_between_vms(board: TestBoard) {
    // One CPU for the host and both VMs; the second VM starts 2 s after the
    // first (which takes well under that), and the log order is checked.
    let mut q = Qemu::boot(BootOptions {
        board,
        append: Some(
            "hyp.cpus=1 guests=guest-faults:p:arg=3,guest-faults:p:arg=3:after=2000".to_owned(),
        ),
        ..BootOptions::default()
    });
    let first = q.expect_guest_line(1, "guest-faults: leak: VM 1: ", T);
    let second = q.expect_guest_line(2, "guest-faults: leak: VM 2: ", T);
    q.expect_exit_code(0, T);
    let log = q.log();
    let pos = |needle: &str| log.iter().position(|l| l.contains(needle));
    let (end1, start2) = (
        pos("[vm1] guest-faults: leak: VM 1: ").expect("VM 1's summary"),
        pos("[vm2] guest-faults: leak: ").expect("VM 2's first line"),
    );
    assert!(end1 < start2, "VM 2 started before VM 1 had finished");
    // The markers were really written: CSSELR_EL1 exists on both CPUs.
    assert!(
        log.iter().any(|l| l
            == "[vm1] guest-faults: leak: CSSELR_EL1: read 0x0 (reset 0x0), wrote 0x2, reads 0x2"),
        "VM 1 could not set CSSELR_EL1"
    );
    let gic = match board {
        TestBoard::QemuVirt => "ICC_PMR_EL1: read 0x0 (reset 0x0), wrote 0xa0, reads 0xa0",
        _ => "GICC_PMR: read 0x0 (reset 0x0), wrote 0xa0, reads 0xa0",
    };
    for vm in [1, 2] {
        assert!(
            log.contains(&format!("[vm{vm}] guest-faults: leak: {gic}")),
            "VM {vm}'s priority mask:\n{}",
            log.join("\n")
        );
    }
    for l in [first, second] {
        assert!(l.ends_with(" 0 not at reset:"), "{l}");
    }
}

/// Item 4 (key word `vmcr`), the host's side: after a protected VM set a
/// marker in CSSELR_EL1 and in every field of its virtual CPU interface
/// (ICH_VMCR_EL2: priority mask, binary points, group enables, EOImode;
/// ICH_AP0R0/AP1R0_EL2) and powered off, the host reads them through its
/// own names on the same CPU and finds their reset values. Before the fix
/// it read every marker: `CSSELR_EL1=0x2 ICC_PMR_EL1=0xa0 ICC_BPR0_EL1=0x5
/// ICC_BPR1_EL1=0x6 ICC_IGRPEN0_EL1=0x1 ICC_IGRPEN1_EL1=0x1
/// ICC_CTLR_EL1.EOImode=1 ICC_AP0R0_EL1=0x100000 ICC_AP1R0_EL1=0x200000`.
#[test]
fn no_vmcr_or_el1_state_of_a_guest_reaches_the_host() {
    let mut q = Qemu::boot(BootOptions {
        append: Some("hyp.cpus=1 attack=vmcr".to_owned()),
        ..BootOptions::default()
    });
    q.expect_guest_line(1, "guest-faults: leak: VM 1: ", T);
    q.expect_exact(
        "host: attack vmcr: after the guest: CSSELR_EL1=0x0 ICC_PMR_EL1=0x0 ICC_BPR0_EL1=0x2 \
         ICC_BPR1_EL1=0x3 ICC_IGRPEN0_EL1=0x0 ICC_IGRPEN1_EL1=0x0 ICC_CTLR_EL1.EOImode=0 \
         ICC_AP0R0_EL1=0x0 ICC_AP1R0_EL1=0x0",
        T,
    );
    q.expect_exit_code(0, T);
}

/// [`no_vmcr_or_el1_state_of_a_guest_reaches_the_host`] on raspi4b: the
/// host has no GICV frame there (GICH_VMCR is out of its reach), so only
/// CSSELR_EL1 is read.
#[test]
fn no_vmcr_or_el1_state_of_a_guest_reaches_the_host_rpi4() {
    let mut q = Qemu::boot(BootOptions {
        board: TestBoard::Rpi4,
        append: Some("hyp.cpus=1 attack=vmcr".to_owned()),
        ..BootOptions::default()
    });
    q.expect_guest_line(1, "guest-faults: leak: VM 1: ", T);
    q.expect_exact("host: attack vmcr: after the guest: CSSELR_EL1=0x0", T);
    q.expect_exit_code(0, T);
}
