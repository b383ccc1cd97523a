//! `leak` mode (guest option `arg=3`): the EL1/EL0 and virtual-GIC state a
//! guest can write and a later VM (or the host) on the same physical CPU
//! could read (ARCHITECTURE.md, "EL1 and GIC state between VMs").
//!
//! For each register of [`REGS`] the guest first reads it and reports it if
//! it is not at the value a new vCPU starts with (state another context left
//! on this CPU), then writes a marker and reads it back, and powers off. Run
//! twice on one CPU (`guests=guest-faults:p:arg=3,guest-faults:p:arg=3:after=..`)
//! the second VM's reads show what the first one's markers left behind.
//! A register whose access is UNDEFINED (not implemented, or trapped and
//! refused by the hypervisor) counts as clean. `tests/tests/hostile_host.rs`
//! (`no_el1_or_vmcr_state_leaks_between_vms`) checks the summary line.

use core::arch::asm;
use core::fmt::Write;
use core::sync::atomic::Ordering;
use guest_rt::println;

/// One register: how to read and write it, the marker written, the value a
/// new vCPU reads.
struct Reg {
    name: &'static str,
    read: fn() -> u64,
    write: fn(u64),
    marker: u64,
    reset: u64,
}

macro_rules! sysregs {
    ($($name:literal, $enc:literal, $marker:expr, $reset:expr;)*) => {
        &[$(Reg {
            name: $name,
            read: || {
                let v: u64;
                // SAFETY: a system-register read; if it is UNDEFINED the
                // exception hook skips it (`v` is then ignored).
                unsafe { asm!(concat!("mov {0}, xzr\nmrs {0}, ", $enc), out(reg) v, options(nomem, nostack)) };
                v
            },
            write: |v| {
                // SAFETY: the markers only touch state this guest does not
                // rely on (see the table); UNDEFINED writes are skipped.
                unsafe { asm!(concat!("msr ", $enc, ", {0}\nisb"), in(reg) v, options(nostack)) };
            },
            marker: $marker,
            reset: $reset,
        },)*]
    };
}

/// The derived list (ARCHITECTURE.md's table): name, encoding, marker, the
/// value a new vCPU reads.
static REGS: &[Reg] = sysregs! {
    "CSSELR_EL1", "s3_2_c0_c0_0", 0b0010, 0;
    "DISR_EL1", "s3_0_c12_c1_1", (1 << 31) | 0x5a, 0;
    "LORSA_EL1", "s3_0_c10_c4_0", 0x1_0000, 0;
    "LOREA_EL1", "s3_0_c10_c4_1", 0x2_0000, 0;
    "LORN_EL1", "s3_0_c10_c4_2", 1, 0;
    "LORC_EL1", "s3_0_c10_c4_3", 0b100, 0;
    "ACTLR_EL1", "s3_0_c1_c0_1", 1, 0;
    "TPIDR2_EL0", "s3_3_c13_c0_5", 0x5a5a_0002, 0;
    "SCXTNUM_EL0", "s3_3_c13_c0_7", 0x5a5a_0003, 0;
    "SCXTNUM_EL1", "s3_0_c13_c0_7", 0x5a5a_0004, 0;
    "PAR_EL1", "s3_0_c7_c4_0", 0x5a5a_5000, 0;
    "CNTKCTL_EL1", "s3_0_c14_c1_0", 0b11, 0;
    "CNTV_CVAL_EL0", "s3_3_c14_c3_2", 0x5a5a_0000_0000, 0;
    "CNTV_CTL_EL0", "s3_3_c14_c3_1", 0b10, 0;
    "CNTP_CTL_EL0", "s3_3_c14_c2_1", 0b10, 0;
    "CNTP_CVAL_EL0", "s3_3_c14_c2_2", 0x5a5a_0000_0000, 0;
    "MDSCR_EL1", "s2_0_c0_c2_2", 1 << 12, 0;
    "APIAKEYLO_EL1", "s3_0_c2_c1_0", 0x5a5a_0010, 0;
    "APIAKEYHI_EL1", "s3_0_c2_c1_1", 0x5a5a_0011, 0;
    "APIBKEYLO_EL1", "s3_0_c2_c1_2", 0x5a5a_0012, 0;
    "APIBKEYHI_EL1", "s3_0_c2_c1_3", 0x5a5a_0013, 0;
    "APDAKEYLO_EL1", "s3_0_c2_c2_0", 0x5a5a_0014, 0;
    "APDAKEYHI_EL1", "s3_0_c2_c2_1", 0x5a5a_0015, 0;
    "APDBKEYLO_EL1", "s3_0_c2_c2_2", 0x5a5a_0016, 0;
    "APDBKEYHI_EL1", "s3_0_c2_c2_3", 0x5a5a_0017, 0;
    "APGAKEYLO_EL1", "s3_0_c2_c3_0", 0x5a5a_0018, 0;
    "APGAKEYHI_EL1", "s3_0_c2_c3_1", 0x5a5a_0019, 0;
    "ZCR_EL1", "s3_0_c1_c2_0", 1, 0;
    "SMCR_EL1", "s3_0_c1_c2_6", 1, 0;
    "SMPRI_EL1", "s3_0_c1_c2_4", 1, 0;
    "TFSR_EL1", "s3_0_c5_c6_0", 1, 0;
    "TFSRE0_EL1", "s3_0_c5_c6_1", 1, 0;
    "GCR_EL1", "s3_0_c1_c0_6", 0xff, 0;
    "RGSR_EL1", "s3_0_c1_c0_5", 0x5a_0000, 0;
    "ACCDATA_EL1", "s3_0_c13_c0_5", 0x5a5a, 0;
    "AMAIR2_EL1", "s3_0_c10_c3_1", 0x5a5a_0020, 0;
    "MAIR2_EL1", "s3_0_c10_c2_1", 0x5a5a_0021, 0;
    "TCR2_EL1", "s3_0_c2_c0_3", 1, 0;
    "SCTLR2_EL1", "s3_0_c1_c0_3", 1 << 2, 0;
    "PIR_EL1", "s3_0_c10_c2_3", 0x5a5a_0022, 0;
    "PIRE0_EL1", "s3_0_c10_c2_2", 0x5a5a_0023, 0;
    "POR_EL1", "s3_0_c10_c2_4", 0x5a5a_0024, 0;
    "POR_EL0", "s3_3_c10_c2_4", 0x5a5a_0025, 0;
    "FPMR", "s3_3_c4_c4_2", 1, 0;
    "GCSCR_EL1", "s3_0_c2_c5_0", 1 << 5, 0;
    "GCSPR_EL1", "s3_0_c2_c5_1", 0x5a5a_1000, 0;
    "GCSCRE0_EL1", "s3_0_c2_c5_2", 1 << 5, 0;
    "GCSPR_EL0", "s3_3_c2_c5_1", 0x5a5a_2000, 0;
    "RCWMASK_EL1", "s3_0_c13_c0_6", 0x5a5a_0026, 0;
    "RCWSMASK_EL1", "s3_0_c13_c0_3", 0x5a5a_0027, 0;
    "MPAM0_EL1", "s3_0_c10_c5_1", 1, 0;
    "MPAM1_EL1", "s3_0_c10_c5_0", 1, 0;
    "TRFCR_EL1", "s3_0_c1_c2_1", 1, 0;
    "ERRSELR_EL1", "s3_0_c5_c3_1", 1, 0;
    "AMUSERENR_EL0", "s3_3_c13_c2_3", 1, 0;
    "AMCNTENSET0_EL0", "s3_3_c13_c2_5", 1, 0;
};

/// The GICv3 virtual CPU interface (ICH_VMCR_EL2 and the active
/// priorities): ICC_* names, ICV_* registers. Reset: ICH_VMCR_EL2 = 0, so
/// the binary points read their minimum (QEMU: 5 priority bits, so 2 and 3).
static GICV3: &[Reg] = sysregs! {
    "ICC_PMR_EL1", "s3_0_c4_c6_0", 0xa0, 0;
    "ICC_BPR0_EL1", "s3_0_c12_c8_3", 5, 2;
    "ICC_BPR1_EL1", "s3_0_c12_c12_3", 6, 3;
    "ICC_IGRPEN0_EL1", "s3_0_c12_c12_6", 1, 0;
    "ICC_IGRPEN1_EL1", "s3_0_c12_c12_7", 1, 0;
    "ICC_CTLR_EL1", "s3_0_c12_c12_4", 0b10, ICV_CTLR_RESET;
    "ICC_AP0R0_EL1", "s3_0_c12_c8_4", 1 << 20, 0;
    "ICC_AP1R0_EL1", "s3_0_c12_c9_0", 1 << 21, 0;
};

/// ICV_CTLR_EL1 of a new vCPU on QEMU virt: EOImode and CBPR 0, the
/// read-only fields A3V (bit 15), IDbits = 24 bits, PRIbits = 4 (5 bits).
const ICV_CTLR_RESET: u64 = 0x8c00;

/// GICv2 (the GIC-400's GICV frame, GICH_VMCR and GICH_APR behind it):
/// offset, name, marker, the value a new vCPU reads.
const GICV2: &[(usize, &str, u32, u32)] = &[
    (0x00, "GICC_CTLR", 0b11 | (1 << 9), 0),
    (0x04, "GICC_PMR", 0xa0, 0),
    (0x08, "GICC_BPR", 5, 2),
    (0x1c, "GICC_ABPR", 6, 3),
    (0xd0, "GICC_APR0", 1 << 20, 0),
];

/// The GICC (GICV) frame guests see on GICv2.
const GICC: usize = 0x0801_0000;

/// Accumulates the names of the registers not at their reset value.
struct Report {
    dirty: heapless_line::Line,
    n_dirty: usize,
    n_undef: usize,
    n_ok: usize,
}

mod heapless_line {
    /// A fixed line buffer (no heap in this guest).
    pub struct Line {
        pub buf: [u8; 1536],
        pub len: usize,
    }
    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let b = s.as_bytes();
            let n = b.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
            self.len += n;
            Ok(())
        }
    }
    impl Line {
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
        }
    }
}

fn faulted(before: u64) -> bool {
    super::COUNT.load(Ordering::Relaxed) != before
}

fn check(
    r: &mut Report,
    name: &str,
    read: impl Fn() -> u64,
    write: impl Fn(u64),
    marker: u64,
    reset: u64,
) {
    let c = super::COUNT.load(Ordering::Relaxed);
    let v = read();
    if faulted(c) {
        r.n_undef += 1;
        println!("guest-faults: leak: {name}: UNDEFINED");
        return;
    }
    write(marker);
    let back = read();
    if v != reset {
        r.n_dirty += 1;
        let _ = write!(r.dirty, " {name}={v:#x}");
    } else {
        r.n_ok += 1;
    }
    println!("guest-faults: leak: {name}: read {v:#x} (reset {reset:#x}), wrote {marker:#x}, reads {back:#x}");
}

/// Runs the mode, then powers off.
pub fn run(vm: u64) -> ! {
    let mut r = Report {
        dirty: heapless_line::Line {
            buf: [0; 1536],
            len: 0,
        },
        n_dirty: 0,
        n_undef: 0,
        n_ok: 0,
    };
    for g in REGS {
        check(&mut r, g.name, g.read, g.write, g.marker, g.reset);
    }
    if guest_rt::gic::version() == guest_rt::gic::Version::V2 {
        for &(off, name, marker, reset) in GICV2 {
            let p = (GICC + off) as *mut u32;
            // SAFETY: the GICV frame the hypervisor maps for this vCPU.
            let rd = || u64::from(unsafe { core::ptr::read_volatile(p) });
            // SAFETY: as above; the markers set masks and enables this
            // guest (interrupts masked) does not use.
            let wr = |v: u64| unsafe { core::ptr::write_volatile(p, v as u32) };
            check(&mut r, name, rd, wr, u64::from(marker), u64::from(reset));
        }
    } else {
        for g in GICV3 {
            check(&mut r, g.name, g.read, g.write, g.marker, g.reset);
        }
    }
    println!(
        "guest-faults: leak: VM {vm}: {} registers at reset, {} UNDEFINED, {} not at reset:{}",
        r.n_ok,
        r.n_undef,
        r.n_dirty,
        r.dirty.as_str()
    );
    guest_rt::system_off()
}
