//! The protected-VM firmware: the hypervisor enters every protected VM
//! here (vCPU 0, EL1, MMU off), never at the host's entry.
//!
//! The host chooses what a protected VM runs, so it could hand the VM a
//! device tree that makes it share everything. As AVF's pvmfw does, this
//! firmware, shipped in the hypervisor's image and loaded by the hypervisor
//! into the VM's own pages at `hyp_abi::layout::PVMFW_IPA`, checks the
//! host's claims (x0 = device tree, x1 = kernel entry) against the
//! hypervisor's facts (x2, x3 = the VM's RAM, x4 = its vCPUs) with rules the
//! host cannot change (`rules`), measures the kernel and initrd (SHA-256),
//! reports the measurement to the hypervisor (MEASUREMENT_SET, accepted
//! once and only from this window) and only then jumps to the kernel with
//! x0 = the device tree and x1..x3 = 0 (Linux's booting.rst). A broken rule
//! prints `pvmfw: refused: ...` and powers the VM off (PSCI SYSTEM_OFF), so
//! the host sees it stop.
//!
//! Built on guest-rt (entry, console, PSCI) with one stack; its accesses
//! are Device-nGnRnE with the MMU off, so the target's strict alignment
//! matters, and guest RAM is read through raw slices once its range is
//! checked to lie in the RAM the hypervisor reported.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod rules;
mod sha;

use core::fmt::Write as _;
use guest_rt::{println, Line};
use rules::{Facts, Refusal, HEADER_LEN};

/// Reads `len` bytes of guest RAM at `at`.
///
/// # Safety
///
/// `[at, at + len)` lies in the VM's RAM (checked by the caller against
/// [`Facts`]): memory of this VM, identity-mapped with the MMU off, that
/// nothing writes while the firmware runs (vCPU 0 is the only one on).
unsafe fn ram(at: u64, len: u64) -> &'static [u8] {
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts(at as *const u8, len as usize) }
}

/// The lower-case hex of a digest.
fn hex(d: &[u8; 32]) -> Line {
    let mut l = Line::new();
    for b in d {
        let _ = write!(l, "{b:02x}");
    }
    l
}

/// Four big-endian words of a digest (MEASUREMENT_SET's registers).
fn words(d: &[u8; 32]) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (i, c) in d.chunks_exact(8).enumerate() {
        let mut b = [0; 8];
        b.copy_from_slice(c);
        w[i] = u64::from_be_bytes(b);
    }
    w
}

/// The virtual counter (under QEMU `-icount shift=0`, one tick per
/// instruction): the firmware's cost, printed before the jump.
fn counter() -> u64 {
    let v: u64;
    // SAFETY: reads a counter register; no memory, no side effects.
    unsafe { core::arch::asm!("isb", "mrs {0}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// What the firmware hands the kernel.
struct Go {
    entry: u64,
    x0: u64,
}

fn boot(x0: u64, entry: u64, facts: &Facts) -> Result<Go, Refusal<'static>> {
    rules::kernel_header_in_ram(facts, entry)?;
    let mut header = [0u8; HEADER_LEN];
    // SAFETY: checked in RAM just above.
    header.copy_from_slice(unsafe { ram(entry, HEADER_LEN as u64) });
    let kernel = rules::check_kernel(facts, entry, &header)?;
    let dtb = if rules::may_hold_dtb(facts, x0) {
        let mut head = [0u8; 8];
        // SAFETY: checked in RAM by `may_hold_dtb`.
        head.copy_from_slice(unsafe { ram(x0, 8) });
        rules::dtb_extent(facts, x0, head)?.map(|size| (x0, size))
    } else {
        None
    };
    let summary = match dtb {
        Some((at, size)) => {
            // SAFETY: `dtb_extent` checked the whole blob lies in RAM.
            let blob = unsafe { ram(at, size) };
            rules::check_blob(blob)?;
            let fdt = fdt::Fdt::new(blob).map_err(|_| Refusal::DtbParse)?;
            Some(rules::check_dt(&fdt, facts, kernel, (at, size))?)
        }
        None => None,
    };
    let sha = sha::Engine::pick();
    // SAFETY: `check_kernel` checked the image lies in RAM.
    let kdigest = sha.digest(unsafe { ram(kernel.base, kernel.size) });
    let idigest = summary.and_then(|s| s.initrd).map(|(s, e)| {
        // SAFETY: `check_dt` checked the initrd lies in RAM.
        sha.digest(unsafe { ram(s, e - s) })
    });
    let mut args = [0u64; 17];
    args[..4].copy_from_slice(&words(&kdigest));
    if let Some(d) = &idigest {
        args[4..8].copy_from_slice(&words(d));
        args[8] = 1;
    }
    let r = <smccc::Hvc as smccc::Call>::call64(hyp_abi::pvmfw::MEASUREMENT_SET, args);
    println!(
        "pvmfw: kernel sha256 {} ({:#x} bytes at {:#x})",
        hex(&kdigest).as_str(),
        kernel.size,
        kernel.base
    );
    match (&idigest, summary.and_then(|s| s.initrd)) {
        (Some(d), Some((s, e))) => println!(
            "pvmfw: initrd sha256 {} ({:#x} bytes at {s:#x})",
            hex(d).as_str(),
            e - s
        ),
        _ => println!("pvmfw: no initrd"),
    }
    if r[0] != 0 {
        // The hypervisor refused the report (not a fresh protected VM):
        // nothing measured may be trusted, so nothing boots.
        println!(
            "pvmfw: the hypervisor refused the measurement ({})",
            r[0] as i64
        );
        guest_rt::system_off();
    }
    match summary {
        Some(s) => match s.pool {
            Some((at, size)) => println!(
                "pvmfw: device tree ok ({} devices, pool {at:#x} {} MiB)",
                s.devices,
                size >> 20
            ),
            None => println!("pvmfw: device tree ok ({} devices, no pool)", s.devices),
        },
        None => println!("pvmfw: no device tree (x0 = {x0:#x} passed on as it is)"),
    }
    Ok(Go { entry, x0 })
}

#[unsafe(no_mangle)]
fn guest_main(cpu: usize, x0: u64) -> ! {
    // Marker 6 of the insn-count plugin (crates/insn-count: HINT #0x7e, a
    // NOP everywhere else): the firmware's cost is counted from here to
    // marker 7, right before the jump to the kernel.
    // SAFETY: an unallocated hint: a NOP.
    unsafe { core::arch::asm!("hint #0x7e", options(nomem, nostack, preserves_flags)) };
    let start = counter();
    if cpu != 0 {
        // Only vCPU 0 is ever started here (the hypervisor refuses a
        // CPU_ON entry outside RAM).
        guest_rt::cpu_off();
    }
    let [entry, ram_base, ram_size, vcpus] = guest_rt::boot_regs();
    let facts = Facts {
        ram_base,
        ram_size,
        vcpus,
    };
    match boot(x0, entry, &facts) {
        Ok(go) => {
            println!(
                "pvmfw: booting the kernel at {:#x} after {} counter ticks",
                go.entry,
                counter() - start
            );
            // SAFETY: the kernel was checked to be an arm64 Image in this
            // VM's RAM and measured; it is entered as booting.rst asks:
            // MMU and D-cache off, interrupts masked (they were at entry
            // and nothing here unmasked them), x0 = the device tree, x1..x3
            // = 0. Nothing here returns.
            unsafe {
                core::arch::asm!(
                    "hint #0x7f", // insn-count marker 7 (see marker 6)
                    "br {entry}",
                    entry = in(reg) go.entry,
                    in("x0") go.x0,
                    in("x1") 0u64,
                    in("x2") 0u64,
                    in("x3") 0u64,
                    options(noreturn, nostack),
                )
            }
        }
        Err(e) => {
            println!("pvmfw: refused: {e}");
            guest_rt::system_off()
        }
    }
}
