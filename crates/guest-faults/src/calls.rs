//! HVC and SMC answer alike. The hypervisor answers an HVC whose function
//! ID nobody implements in its vector (`__hvc_fast`) before saving any
//! register; a trapped SMC with the same ID still goes through the decoder
//! (`exit::fast`, `calls::smccc`). Both must leave the same registers: SMCCC
//! 1.1 has x0 = NOT_SUPPORTED (-1) for an unknown function, and this
//! hypervisor returns x1..x3 = 0 and keeps x4..x17. Each ID below is called
//! both ways with x1..x17 holding distinct values, and x0..x17 after the
//! call compared; for the unknown ones, the values are checked too.

use core::arch::asm;
use guest_rt::println;

/// x0..x17 after an SMCCC call through `hvc #0` (`smc` false) or `smc #0`
/// with x0..x17 = `x`.
fn call(smc: bool, x: [u64; 18]) -> [u64; 18] {
    let mut r = x;
    macro_rules! go {
        ($insn:literal) => {
            // SAFETY: an SMCCC call of a function that changes nothing
            // (unknown, or answered from constants: see `IDS`); every
            // register the hypervisor may write is an operand.
            unsafe {
                asm!($insn,
                    inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
                    inout("x4") r[4], inout("x5") r[5], inout("x6") r[6], inout("x7") r[7],
                    inout("x8") r[8], inout("x9") r[9], inout("x10") r[10], inout("x11") r[11],
                    inout("x12") r[12], inout("x13") r[13], inout("x14") r[14], inout("x15") r[15],
                    inout("x16") r[16], inout("x17") r[17], options(nostack))
            }
        };
    }
    if smc {
        go!("smc #0");
    } else {
        go!("hvc #0");
    }
    r
}

/// IDs (x0, upper half included) and whether nobody implements them.
const IDS: [(u64, bool); 22] = [
    (0xc600_fff0, true),
    (0x8400_00ff, true),
    (0, true),
    (0xffff_ffff, true),
    (0xffff_ffff_ffff_ffff, true),
    // KVM's PTP (vendor function 1) and Android's MMIO guard numbers.
    (0x8600_0001, true),
    (0xc600_0005, true),
    (0xc600_0006, true),
    (0xc600_0008, true),
    // Either side of the host's interface (0xc6000040..=0xc600004f).
    (0xc600_003f, true),
    (0xc600_0050, true),
    // CPU_ON 32-bit; TRNG_VERSION with the SMC64 bit.
    (0x8400_0003, true),
    (0xc400_0050, true),
    (0x5a5a_0000_c600_fff0, true),
    // Known to somebody, answered from constants: the same both ways.
    (0x8000_0000, false), // SMCCC_VERSION
    (0x8400_0000, false), // PSCI_VERSION
    (0xdead_beef_8400_0000, false),
    (0x8600_ff01, false), // VENDOR_HYP_CALL_UID
    (0x8600_0000, false), // KVM_FEATURES
    (0x8000_0001, false), // SMCCC_ARCH_FEATURES (x1: junk, NOT_SUPPORTED)
    (0xc600_0040, false), // the host's VM_CREATE, from a guest
    (0xc600_0002, false), // HYP_MEMINFO with x1..x3 non-zero: INVALID_PARAMETER
];

/// Runs the comparison; prints one line per difference and a summary.
pub fn hvc_equals_smc() {
    let mut bad = 0;
    let mut unknown = 0;
    for (i, &(fid, nobody)) in IDS.iter().enumerate() {
        let mut x = [0u64; 18];
        x[0] = fid;
        for (r, v) in x.iter_mut().enumerate().skip(1) {
            *v = 0x0101_0101_0101_0101u64.wrapping_mul(r as u64) ^ (i as u64) << 56;
        }
        let hvc = call(false, x);
        let smc = call(true, x);
        if hvc != smc {
            println!("guest-faults: calls: {fid:#x}: HVC left {hvc:x?}, SMC {smc:x?}");
            bad += 1;
        }
        if nobody {
            unknown += 1;
            let want_kept = hvc[4..] == x[4..];
            if hvc[0] != u64::MAX || hvc[1..4] != [0; 3] || !want_kept {
                println!("guest-faults: calls: unknown {fid:#x}: HVC left {hvc:x?}");
                bad += 1;
            }
        }
    }
    println!(
        "guest-faults: calls: HVC and SMC left the same x0..x17 for {} function IDs, {unknown} unknown (x0 = -1, x1..x3 = 0, x4..x17 kept): {} differences",
        IDS.len(),
        bad
    );
}
