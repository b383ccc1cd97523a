//! guest-cache (seed 003, ARM-RULES.md section 3): vCPU 1 writes a buffer
//! with its MMU and caches off, turns them on after vCPU 0 did, and reads
//! its data back. QEMU models no caches, so the data always reads back
//! there; the hypervisor's VM-wide clean+invalidate on each vCPU's cache
//! enable is what makes it true on hardware, and the hypervisor's log
//! shows it happened for vCPU 1 too. Then vCPU 0 does a set/way operation
//! with both vCPUs' caches on, and vCPU 1's cache toggle that follows must
//! still be trapped: the set/way trap re-arms TVM on every vCPU.
//! QEMU's `-cpu max` has FEAT_S2FWB, which makes all of this unnecessary
//! and is used by default, so these boots ask for the maintenance path
//! (`hyp.s2fwb=off`); raspi4b's Cortex-A72 always takes it.

use std::time::Duration;

use hyp_tests::{BootOptions, Qemu};

const T: Duration = Duration::from_secs(60);

fn boot() -> Qemu {
    let mut q = Qemu::boot(BootOptions {
        append: Some("hyp.s2fwb=off guest=guest-cache".into()),
        ..BootOptions::default()
    });
    q.expect_exact(
        "hyp: stage 2 without FEAT_S2FWB: guests get cache-maintenance traps, maps clean to PoC",
        T,
    );
    q
}

const VCPU0_ON: &str = "[vm1] guest-cache: vCPU 0 turned its MMU and caches on \
                        (1st vCPU to do so, SCTLR_EL1.M=1 C=1 I=1)";
const VCPU1_ON: &str = "[vm1] guest-cache: vCPU 1 turned its MMU and caches on \
                        (2nd vCPU to do so, SCTLR_EL1.M=1 C=1 I=1)";

#[test]
fn secondary_reads_back_what_it_wrote_with_caches_off() {
    let mut q = boot();
    q.expect_exact(
        "host: VM 1 (guest-cache): 4 vCPUs, 16 MiB at IPA 0x40000000, normal (lent)",
        T,
    );
    for line in [
        VCPU0_ON,
        "[vm1] guest-cache: vCPU 0 read the 2048-word buffer through its cacheable mapping: all zero",
        "[vm1] guest-cache: vCPU 1 up with MMU and caches off (SCTLR_EL1.M=0 C=0)",
        "[vm1] guest-cache: vCPU 1 wrote 2048 words (4 pages) with its caches off",
        VCPU1_ON,
        "[vm1] guest-cache: vCPU 1 read back 2048 words after enabling caches: OK",
        "[vm1] guest-cache: caches were turned on by vCPU 0, then vCPU 1; vCPU 1 verdict: OK",
        "[vm1] guest-cache: vCPU 0 reads vCPU 1's 2048 words: OK",
        SET_WAY,
        VCPU1_SAW,
        VCPU1_TOGGLED,
        "[vm1] guest-cache: done, powering off",
    ] {
        q.expect_exact(line, T);
    }
    q.expect_exit_code(0, T);
}

const SET_WAY: &str = "[vm1] guest-cache: vCPU 0 did DC CISW (set/way) with its caches on";
const VCPU1_SAW: &str = "[vm1] guest-cache: vCPU 1 saw vCPU 0's set/way operation";
const VCPU1_TOGGLED: &str = "[vm1] guest-cache: vCPU 1 turned its data cache off \
                             (caches on: false) and on again (SCTLR_EL1.M=1 C=1)";

/// The line the hypervisor is expected to print for each VM-wide
/// clean+invalidate it does on a vCPU's cache toggle (a proposal: the lead
/// fixes the format when TVM trapping lands).
fn flush_line(vcpu: u32) -> String {
    format!("hyp: VM 1: vCPU {vcpu} turned its caches on: VM-wide clean+invalidate")
}

#[test]
fn vm_wide_flush_when_vcpu1_turns_caches_on() {
    let mut q = boot();
    q.expect_exact(&flush_line(0), T);
    q.expect_exact(VCPU0_ON, T);
    // The flush for vCPU 1 (not only vCPU 0's) comes after vCPU 1's writes
    // and before it reads them back.
    q.expect_exact(
        "[vm1] guest-cache: vCPU 1 wrote 2048 words (4 pages) with its caches off",
        T,
    );
    q.expect_exact(&flush_line(1), T);
    q.expect_exact(VCPU1_ON, T);
    q.expect_exact(
        "[vm1] guest-cache: vCPU 1 read back 2048 words after enabling caches: OK",
        T,
    );
    q.expect_exit_code(0, T);
}

/// vCPU 0's DC CISW (trapped by HCR_EL2.TSW) flushes the VM and re-arms
/// TVM on vCPU 1 as well, whose caches are on (TVM dropped): vCPU 1's
/// cache disable and re-enable after it are both trapped, each with a
/// VM-wide clean+invalidate.
#[test]
fn set_way_on_vcpu0_rearms_tvm_so_vcpu1_cache_enable_is_seen() {
    let mut q = boot();
    q.expect_exact(VCPU1_ON, T);
    q.expect_exact(
        "hyp: VM 1: vCPU 0 did a set/way operation: VM-wide clean+invalidate, \
         TVM re-armed on every vCPU",
        T,
    );
    q.expect_exact(SET_WAY, T);
    q.expect_exact(VCPU1_SAW, T);
    q.expect_exact(
        "hyp: VM 1: vCPU 1 turned its caches off: VM-wide clean+invalidate",
        T,
    );
    q.expect_exact(&flush_line(1), T);
    q.expect_exact(VCPU1_TOGGLED, T);
    q.expect_exit_code(0, T);
}
