//! Bulk copies and clears of host RAM (guest images into the RAM the host
//! gives a VM, that RAM's first clear).

/// Copies `len` bytes (rounded up to 8) from `src` to `dst`, both 8-byte
/// aligned host RAM. 8-byte accesses only: the host runs with its MMU off,
/// where its data accesses are Device memory at stage 1 and an unaligned
/// one faults (LDP/STP of X registers check each 8-byte element's
/// alignment, Arm ARM B2.5.2). 64 bytes per loop: a word-by-word copy of
/// Debian's 32 MiB kernel was 16.5 million instructions before the VM's
/// first one.
///
/// # Safety
///
/// `dst` and `src` are 8-byte aligned host RAM, `len` bytes rounded up to 8
/// each, not overlapping, and nothing else uses `dst`'s range meanwhile.
pub unsafe fn copy_words(dst: u64, src: u64, len: u64) {
    let words = len.div_ceil(8);
    let chunks = words / 8;
    if chunks > 0 {
        // SAFETY: the caller's contract; `chunks * 64` bytes lie within
        // `len` rounded up to 8.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldp {a}, {b}, [{s}], #16",
                "ldp {c}, {d}, [{s}], #16",
                "stp {a}, {b}, [{t}], #16",
                "stp {c}, {d}, [{t}], #16",
                "ldp {a}, {b}, [{s}], #16",
                "ldp {c}, {d}, [{s}], #16",
                "stp {a}, {b}, [{t}], #16",
                "stp {c}, {d}, [{t}], #16",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                s = inout(reg) src => _,
                t = inout(reg) dst => _,
                n = inout(reg) chunks => _,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                d = out(reg) _,
                options(nostack),
            );
        }
    }
    for i in chunks * 8..words {
        // SAFETY: the caller's contract: the words after the last chunk.
        unsafe {
            ((dst + 8 * i) as *mut u64)
                .write_volatile(((src + 8 * i) as *const u64).read_volatile())
        };
    }
}

/// Zeroes `len` bytes (rounded up to 8) at 8-byte aligned `dst`, 64 bytes
/// per loop (as [`copy_words`], 8-byte accesses only).
///
/// # Safety
///
/// As [`copy_words`]'s destination.
pub unsafe fn zero_words(dst: u64, len: u64) {
    let words = len.div_ceil(8);
    let chunks = words / 8;
    if chunks > 0 {
        // SAFETY: the caller's contract.
        unsafe {
            core::arch::asm!(
                "2:",
                "stp xzr, xzr, [{t}], #16",
                "stp xzr, xzr, [{t}], #16",
                "stp xzr, xzr, [{t}], #16",
                "stp xzr, xzr, [{t}], #16",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                t = inout(reg) dst => _,
                n = inout(reg) chunks => _,
                options(nostack),
            );
        }
    }
    for i in chunks * 8..words {
        // SAFETY: the caller's contract.
        unsafe { ((dst + 8 * i) as *mut u64).write_volatile(0) };
    }
}
