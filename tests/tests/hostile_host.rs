//! The host VM as an attacker of its protected VMs (issue: "Protected VMs
//! hold against a hostile host"). Each test is named after its item's key
//! word; the host's attacks are in `crates/host/src/attack.rs`.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(60);

/// Item 1: the host sets a protected VM's boot entry once, for vCPU 0,
/// before it runs; starting vCPU 1 (before the guest did, or after its
/// CPU_OFF) or vCPU 0 again is Denied, while the guest's own CPU_ON works.
#[test]
fn vcpu_init_of_a_protected_vm_only_once_before_it_runs() {
    let mut q = Qemu::boot(BootOptions {
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
    let mut q = Qemu::boot(BootOptions {
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
    let mut q = Qemu::boot(BootOptions {
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
