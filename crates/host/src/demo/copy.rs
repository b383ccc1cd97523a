//! Copies between host memory and guest memory (one page or part of one,
//! inside [`guarded`](super::guarded)) under the host's rule that every
//! access be aligned to its size (its MMU is off, so all memory is Device
//! memory, where an unaligned access faults): guest memory only through
//! the single-instruction helpers of `demo.rs` (so a refused access is
//! skipped exactly), host memory through aligned words wholly inside the
//! slice.
//!
//! Where the two addresses agree modulo 8, the middle goes 16 bytes at a
//! time ([`copy16`]); where they do not (a network frame at an odd offset
//! of a guest's buffer), aligned 8-byte words of one side are shifted
//! together into aligned words of the other. Only the ends go byte by
//! byte. Before, a misaligned frame went a byte at a time: 5.3 million
//! instructions per MiB the guest sent (`cargo xtask bench --linux-io
//! --profile tx`).

use super::{copy16, ldr64, ldrb, str64, strb};

/// `(start, len)` of the part of `[0, n)` that [`copy16`] copies between
/// `pa + start` and `host + start` (len a multiple of 16; 0 when the two
/// differ modulo 8 or the run is short).
fn bulk(pa: u64, host: u64, n: usize) -> (usize, usize) {
    if !(pa ^ host).is_multiple_of(8) {
        return (0, 0);
    }
    let start = ((8 - pa % 8) % 8) as usize;
    if start >= n {
        return (0, 0);
    }
    (start, (n - start) / 16 * 16)
}

/// Bytes from `at` up to the next multiple of 8, at most `n`.
fn to_align(at: u64, n: usize) -> usize {
    (((8 - at % 8) % 8) as usize).min(n)
}

/// Guest `[pa, pa + dst.len())`, within one page, into `dst`.
pub(super) fn read_guest(pa: u64, dst: &mut [u8]) {
    let n = dst.len();
    let host = dst.as_ptr() as u64;
    let (b0, bn) = bulk(pa, host, n);
    let mut i = 0;
    if bn != 0 {
        for (j, d) in dst[..b0].iter_mut().enumerate() {
            *d = ldrb(pa + j as u64);
        }
        copy16(host + b0 as u64, pa + b0 as u64, bn);
        i = b0 + bn;
    } else if !(pa ^ host).is_multiple_of(8) {
        // Host side aligned first; then each host word is the high part of
        // one guest word and the low part of the next. Every guest word
        // loaded holds a byte of the range, so it is in the range's page.
        i = to_align(host, n);
        for (j, d) in dst[..i].iter_mut().enumerate() {
            *d = ldrb(pa + j as u64);
        }
        let words = (n - i) / 8;
        if words != 0 {
            let k = (pa + i as u64) % 8;
            let (lo_shift, hi_shift) = (8 * k as u32, 64 - 8 * k as u32);
            let base = pa + i as u64 - k;
            let mut lo = ldr64(base);
            for m in 0..words {
                let hi = ldr64(base + 8 * (m as u64 + 1));
                let v = (lo >> lo_shift) | (hi << hi_shift);
                // SAFETY: `host + i` is 8-aligned (to_align) and the word
                // ends at most at `n` (words = (n - i) / 8).
                unsafe { (dst.as_mut_ptr().add(i + 8 * m) as *mut u64).write(v) };
                lo = hi;
            }
            i += 8 * words;
        }
    }
    // The rest: 8 bytes where the guest side is aligned, else bytes.
    while i < n {
        let at = pa + i as u64;
        if at.is_multiple_of(8) && n - i >= 8 && (host + i as u64).is_multiple_of(8) {
            let v = ldr64(at);
            // SAFETY: aligned (checked) and inside `dst` (n - i >= 8).
            unsafe { (dst.as_mut_ptr().add(i) as *mut u64).write(v) };
            i += 8;
        } else {
            dst[i] = ldrb(at);
            i += 1;
        }
    }
}

/// `src` into guest `[pa, pa + src.len())`, within one page.
pub(super) fn write_guest(pa: u64, src: &[u8]) {
    let n = src.len();
    let host = src.as_ptr() as u64;
    let (b0, bn) = bulk(pa, host, n);
    let mut i = 0;
    if bn != 0 {
        for (j, s) in src[..b0].iter().enumerate() {
            strb(pa + j as u64, *s);
        }
        copy16(pa + b0 as u64, host + b0 as u64, bn);
        i = b0 + bn;
    } else if !(pa ^ host).is_multiple_of(8) {
        // Guest side aligned first; each guest word is the high part of one
        // aligned host word and the low part of the next, both wholly in
        // `src`: the first starts `k` bytes before `host + i`, so at least
        // `k` bytes are copied singly before.
        let mut head = to_align(pa, n);
        let k = ((host + head as u64) % 8) as usize;
        if head < k {
            head += 8;
        }
        let head = head.min(n);
        for (j, s) in src[..head].iter().enumerate() {
            strb(pa + j as u64, *s);
        }
        i = head;
        // Host words from `src + i - k` (i >= k unless all of `src` went
        // singly); the last loaded must end by `n`.
        let span = if i < n { n - (i - k) } else { 0 };
        let words = (span / 8).saturating_sub(1);
        if words != 0 {
            let (lo_shift, hi_shift) = (8 * k as u32, 64 - 8 * k as u32);
            let word = |m: usize| {
                // SAFETY: `src + i - k + 8m` is 8-aligned and, for m <=
                // words, ends inside `src` (8 * (words + 1) <= span).
                unsafe { (src.as_ptr().add(i - k + 8 * m) as *const u64).read() }
            };
            let mut lo = word(0);
            for m in 0..words {
                let hi = word(m + 1);
                str64(pa + (i + 8 * m) as u64, (lo >> lo_shift) | (hi << hi_shift));
                lo = hi;
            }
            i += 8 * words;
        }
    }
    while i < n {
        let at = pa + i as u64;
        if at.is_multiple_of(8) && n - i >= 8 && (host + i as u64).is_multiple_of(8) {
            // SAFETY: aligned (checked) and inside `src` (n - i >= 8).
            let v = unsafe { (src.as_ptr().add(i) as *const u64).read() };
            str64(at, v);
            i += 8;
        } else {
            strb(at, src[i]);
            i += 1;
        }
    }
}
