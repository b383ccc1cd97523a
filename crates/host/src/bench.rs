//! What the benchmarks (`cargo xtask bench`, guest-bench) need from the
//! host besides its guests: the barriers of its multi-page calls.

/// The barriers every page-table batch has issued since boot (DSB, TLBI,
/// ISB, DC, VMID switches), from STATS(0, `STATS_BARRIERS` + i).
fn barrier_totals() -> [u64; hyp_abi::STATS_BARRIER_KINDS as usize] {
    core::array::from_fn(|i| {
        crate::call(
            hyp_abi::STATS,
            [0, hyp_abi::STATS_BARRIERS + i as u64, 0, 0],
        )
        .unwrap_or(u64::MAX)
    })
}

/// Runs `op` and prints the barriers its page-table batches issued:
/// `bench: barriers NAME pages=N dsb=.. tlbi=.. isb=.. dc=.. vmid_switches=..`.
fn count_barriers(name: &str, pages: u64, op: impl FnOnce()) {
    let before = barrier_totals();
    op();
    let after = barrier_totals();
    let d: [u64; 5] = core::array::from_fn(|i| after[i].wrapping_sub(before[i]));
    guest_rt::println!(
        "bench: barriers {name} pages={pages} dsb={} tlbi={} isb={} dc={} vmid_switches={}",
        d[0],
        d[1],
        d[2],
        d[3],
        d[4]
    );
}

/// Seed 002 on the real paths: each multi-page host operation runs as one
/// page-table batch per stage 2 it changes, so donating, lending and
/// destroying 512 pages costs a handful of DSBs, not 512. Prints one
/// `bench: barriers` line per operation (`cargo xtask bench` shows them).
pub fn barrier_report() {
    const PAGES: u64 = 512;
    let Some(pa) = crate::alloc_pages(PAGES * 4096) else {
        crate::fail(format_args!("no host memory for the barrier counts"));
    };
    let ipa = crate::GUEST_RAM_IPA;
    for (protected, give, destroy) in [
        (true, "mem_donate", "vm_destroy_donated"),
        (false, "mem_lend", "vm_destroy_lent"),
    ] {
        let flags = if protected {
            hyp_abi::FLAG_PROTECTED
        } else {
            0
        };
        let h = match crate::hostif::vm_create(1, flags) {
            Ok(h) => h.0,
            Err(e) => crate::fail(format_args!("barrier counts: VM_CREATE: {e:?}")),
        };
        count_barriers(give, PAGES, || {
            let r = crate::hostif::give(h, pa, ipa, PAGES, protected, false);
            if let Err(e) = r {
                crate::fail(format_args!("barrier counts: {give}: {e:?}"));
            }
        });
        count_barriers(destroy, PAGES, || {
            if let Err(e) = crate::hostif::destroy_vm(h) {
                crate::fail(format_args!("barrier counts: {destroy}: {e:?}"));
            }
        });
    }
}
