//! Host benchmark: s2mm vs google/aarch64-paging (0.12) stage-2 support doing the same work.
//!
//! `cargo run --release -p s2mm --example s2bench [-- --json PATH] [--iters N]`
//!
//! One line per metric: `<crate> <metric> ns_per_page=.. dsb=.. tlbi=.. isb=..`, where
//! ns_per_page is the median wall time over the iterations divided by the 262,144 pages of
//! 1 GiB. s2mm's barrier counts are the `BatchStats` of the batch (what the EL2 build would
//! execute; on the host the `barriers` recording backend logs them instead). aarch64-paging
//! emits no barriers on the host (its asm is `cfg(target_arch = "aarch64")`): its counts are
//! derived from its source for a live (`mark_active`) table and labelled `counted=source`
//! (see `paging_counts`). Both sides treat the tables as live; the `aarch64-paging-inactive`
//! lines show aarch64-paging without its live-table BBM checks and TLB walks.
//!
//! Metrics, each over the same GiB of 4 KiB pages (`_4k_`) or of 2 MiB blocks (`_2m_`):
//! `map` into empty tables, `set_state` (changing the attributes of every page already mapped
//! in the live table: s2mm's `Stage2::set_state`, what the hypervisor's share, lend and donate
//! paths call, against aarch64-paging's `modify_range` writing the same software bits), and
//! `unmap`.
//!
//! On the host every descriptor store and barrier of s2mm goes through the `barriers` recording
//! backend, which by default appends a record per store to a per-thread trace (about 12 MiB per
//! GiB of pages) for the tests' checker. The EL2 build stores the descriptor and records
//! nothing, so this benchmark turns the trace off (`barriers::trace::set_recording(false)`):
//! the stores, the batch's bookkeeping and its `BatchStats` are the same, only the log is not
//! kept. With it on, the recording alone was about 12 ns of the ~16 ns per page of
//! `set_state_4k_1g`.

#![allow(
    clippy::unwrap_used,
    reason = "benchmark binary: a panic is the failure report"
)]

use s2mm::Vttbr;
use std::hint::black_box;
use std::time::Instant;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes as S2A};
use aarch64_paging::paging::{Constraints, MemoryRegion, PageTable, Stage2, Translation};
use aarch64_paging::Mapping;
use s2mm::{Attrs, BatchStats, BlockSize, Ipa, Pa, PageState, TableAlloc};

/// A recycling page pool shared by both crates, like the hypervisor's pre-donated table pool:
/// table pages are already faulted in, so both sides measure their walkers, not the kernel's
/// page-fault path. Freed pages are zeroed again on reuse.
#[derive(Default)]
struct Pool {
    free: Vec<usize>,
}

impl Pool {
    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * 4096, pages * 4096).unwrap()
    }
    fn get(&mut self) -> usize {
        match self.free.pop() {
            Some(p) => {
                // SAFETY: a page of ours, not in use.
                unsafe { std::ptr::write_bytes(p as *mut u8, 0, 4096) };
                p
            }
            // SAFETY: non-zero layout.
            None => unsafe { alloc_zeroed(Self::layout(1)) as usize },
        }
    }
    fn put(&mut self, p: usize) {
        self.free.push(p);
    }
}

#[derive(Clone, Default)]
struct SharedPool(Rc<RefCell<Pool>>);

// SAFETY: pages are zeroed, aligned to their size, exclusively handed out until returned;
// `table_ptr` is the identity (PA == host address).
unsafe impl TableAlloc for SharedPool {
    fn alloc_tables(&mut self, pages: usize) -> Option<Pa> {
        if pages == 1 {
            return Some(Pa(self.0.borrow_mut().get() as u64));
        }
        // SAFETY: non-zero layout.
        Some(Pa(unsafe { alloc_zeroed(Pool::layout(pages)) } as u64))
    }
    unsafe fn free_tables(&mut self, pa: Pa, pages: usize) {
        if pages == 1 {
            self.0.borrow_mut().put(pa.0 as usize);
        } else {
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(pa.0 as *mut u8, Pool::layout(pages)) };
        }
    }
    fn table_ptr(&self, pa: Pa) -> NonNull<AtomicU64> {
        NonNull::new(pa.0 as *mut AtomicU64).unwrap()
    }
}

impl Translation<S2A> for SharedPool {
    fn allocate_table(&mut self) -> (NonNull<PageTable<S2A>>, PhysicalAddress) {
        let p = self.0.borrow_mut().get();
        (
            NonNull::new(p as *mut PageTable<S2A>).unwrap(),
            PhysicalAddress(p),
        )
    }
    unsafe fn deallocate_table(&mut self, page_table: NonNull<PageTable<S2A>>) {
        self.0.borrow_mut().put(page_table.as_ptr() as usize);
    }
    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<S2A>> {
        NonNull::new(pa.0 as *mut PageTable<S2A>).unwrap()
    }
}

const G: u64 = 1 << 30;
const PAGES: u64 = G / 4096;

struct Row {
    krate: &'static str,
    metric: &'static str,
    ns_per_page: f64,
    stats: BatchStats,
    counted: &'static str,
}

/// 4 KiB pages per leaf entry of a metric.
fn entries(metric: &str) -> f64 {
    if metric.contains("2m") {
        512.0
    } else {
        1.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The page state the `set_state` rows move every page to: what a host share makes of the
/// host's pages (software bits [56:55] = 0b01; `PageState::Owned`, 0b00, before).
const SHARED: PageState = PageState::SharedOwned;

/// One timed s2mm run: (map, set_state, unmap) with `block` as the largest leaf.
fn s2mm_run(pool: &SharedPool, block: BlockSize) -> [(f64, BatchStats); 3] {
    let mut a = pool.clone();
    let mut s2 = s2mm::Stage2::new(&mut a, 1, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    s2.set_block_policy(block);
    barriers::trace::clear();
    let t = Instant::now();
    let map = s2
        .map(
            &mut a,
            &mut v,
            Ipa(G),
            Pa(pa_for(block == BlockSize::Page4K)),
            G,
            Attrs::RAM_RW,
            PageState::Owned,
        )
        .unwrap();
    let t_map = t.elapsed().as_nanos() as f64;
    barriers::trace::clear();
    // The live-table attribute change: software bits only, so each leaf is rewritten in place
    // with no break-before-make and no TLBI (R_WHZWS exempts software bits from BBM, and no
    // walker uses them, so no TLB entry can hold a stale copy that matters); the batch owes
    // one trailing DSB ISHST so the walkers see the new descriptors.
    let t = Instant::now();
    let state = s2.set_state(&mut a, &mut v, Ipa(G), G, SHARED).unwrap();
    let t_state = t.elapsed().as_nanos() as f64;
    barriers::trace::clear();
    // Same work as aarch64-paging's side: every leaf of the GiB changed, at the expected size.
    let mut leaves = 0u64;
    s2.for_each_entry(&a, |_, _, e| {
        let s2mm::Entry::Mapped(m) = e else {
            panic!("s2mm: unexpected annotation {e:?}")
        };
        assert_eq!((m.state, m.level), (SHARED, block_level(block)));
        leaves += 1;
    });
    assert_eq!(
        leaves,
        if block == BlockSize::Page4K {
            PAGES
        } else {
            512
        }
    );
    let t = Instant::now();
    let unmap = s2.unmap(&mut a, &mut v, Ipa(G), G).unwrap();
    let t_unmap = t.elapsed().as_nanos() as f64;
    barriers::trace::clear();
    black_box(s2.destroy(&mut a, &mut v));
    barriers::trace::clear();
    [(t_map, map), (t_state, state), (t_unmap, unmap)]
}

/// Level of the leaves a run with this block policy builds (the runs here never use 1 GiB).
fn block_level(block: BlockSize) -> u8 {
    if block == BlockSize::Page4K {
        3
    } else {
        2
    }
}

/// Output address of the benchmarked GiB: for the 2 MiB runs it is 2 MiB- but not 1 GiB-aligned,
/// so both crates build 512 level-2 blocks (aarch64-paging cannot be told "at most 2 MiB").
fn pa_for(pages_only: bool) -> u64 {
    if pages_only {
        G
    } else {
        G + (1 << 21)
    }
}

fn ram_rw() -> S2A {
    S2A::VALID
        | S2A::MEMATTR_NORMAL_INNER_WB
        | S2A::MEMATTR_NORMAL_OUTER_WB
        | S2A::S2AP_ACCESS_RW
        | S2A::SH_INNER
        | S2A::ACCESS_FLAG
        | S2A::XN
}

/// One timed aarch64-paging run, same work: identity map of [1 GiB, 2 GiB), the same software
/// bits written into every leaf, unmap.
fn paging_run(pool: &SharedPool, pages_only: bool, active: bool) -> [f64; 3] {
    let mut m = Mapping::new(pool.clone(), 1, Stage2);
    if active {
        m.mark_active();
    }
    let c = if pages_only {
        Constraints::NO_BLOCK_MAPPINGS
    } else {
        Constraints::empty()
    };
    let r = MemoryRegion::new(G as usize, 2 * G as usize);
    let t = Instant::now();
    m.map_range(
        &r,
        PhysicalAddress(pa_for(pages_only) as usize),
        ram_rw(),
        c,
    )
    .unwrap();
    let t_map = t.elapsed().as_nanos() as f64;
    // The same descriptor change as s2mm's `set_state(SharedOwned)`: SWFLAG_0 set, SWFLAG_1
    // clear (bits 55 and 56), nothing else. aarch64-paging cannot tell software bits from
    // permissions: on a live table it first dry-runs the updater over the range to check BBM,
    // then per level-3 table (or the level-2 table of blocks) with updates issues DSB ISHST and
    // one TLBI IPAS2E1IS per changed leaf, and ends with DSB ISH + ISB (see `paging_counts`).
    let t = Instant::now();
    m.modify_range(&r, &|_, d| {
        if d.flags().contains(S2A::VALID) {
            d.modify_flags(S2A::SWFLAG_0, S2A::SWFLAG_1)
        } else {
            Ok(())
        }
    })
    .unwrap();
    let t_state = t.elapsed().as_nanos() as f64;
    // Same work as s2mm's side: every leaf changed, at the expected level.
    let (mut leaves, want_level) = (0u64, if pages_only { 3 } else { 2 });
    m.walk_range(&r, &mut |_, d, level| {
        if d.is_valid() {
            assert!(d.flags().contains(S2A::SWFLAG_0) && level == want_level);
            leaves += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(leaves, if pages_only { PAGES } else { 512 });
    let t = Instant::now();
    // Unmap: aarch64-paging writes invalid entries when VALID is absent.
    m.map_range(
        &r,
        PhysicalAddress(pa_for(pages_only) as usize),
        S2A::empty(),
        c,
    )
    .unwrap();
    let t_unmap = t.elapsed().as_nanos() as f64;
    if active {
        m.mark_inactive();
    }
    black_box(m);
    [t_map, t_state, t_unmap]
}

/// What aarch64-paging 0.12.3 would emit for these operations on a live table, read from its
/// source (`Mapping::map_range` → `invalidate_range`: DSB ISHST, one TLBI IPAS2E1IS per leaf
/// in the range, DSB ISH + ISB; unmapping a level-1 range detaches the subtree:
/// `free_detached` = DSB ISHST, one TLBI per valid leaf, DSB ISH + ISB, then
/// `invalidate_range` for the now-invalid entry; `modify_range` on a live table: for each
/// table in which the updater changed leaves, DSB ISHST and one TLBI IPAS2E1IS per changed
/// leaf, then one DSB ISH + ISB for the call).
fn paging_counts(metric: &str) -> BatchStats {
    let (dsb, tlbi, isb) = match metric {
        "map_4k_1g" => (2, PAGES, 1),
        // 512 level-3 tables, each DSB ISHST + 512 TLBIs; then DSB ISH + ISB.
        "set_state_4k_1g" => (512 + 1, PAGES, 1),
        "unmap_4k_1g" => (4, PAGES + 1, 2),
        "map_2m_1g" => (2, 512, 1),
        // One level-2 table of 512 blocks: DSB ISHST + 512 TLBIs; then DSB ISH + ISB.
        "set_state_2m_1g" => (2, 512, 1),
        // The level-2 table holding the blocks is detached: 512 block TLBIs, then one more.
        "unmap_2m_1g" => (4, 513, 2),
        _ => (0, 0, 0),
    };
    BatchStats {
        dsb,
        tlbi: tlbi as u32,
        isb,
        dc: 0,
        vmid_switches: 0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .iter()
        .position(|a| a == "--json")
        .map(|i| args[i + 1].clone());
    let iters: usize = args
        .iter()
        .position(|a| a == "--iters")
        .map_or(7, |i| args[i + 1].parse().unwrap());
    // What the EL2 build executes: no trace of the stores (see the crate docs above).
    barriers::trace::set_recording(false);
    let mut rows = Vec::new();
    let per_page = |ns: Vec<f64>| median(ns) / PAGES as f64;

    for (block, tag) in [(BlockSize::Page4K, "4k"), (BlockSize::Block2M, "2m")] {
        let pool = SharedPool::default();
        // Warm-up (fills the pool), untimed.
        s2mm_run(&pool, block);
        paging_run(&pool, tag == "4k", true);
        let runs: Vec<_> = (0..iters).map(|_| s2mm_run(&pool, block)).collect();
        let names: [&'static str; 3] = if tag == "4k" {
            ["map_4k_1g", "set_state_4k_1g", "unmap_4k_1g"]
        } else {
            ["map_2m_1g", "set_state_2m_1g", "unmap_2m_1g"]
        };
        for (k, name) in names.iter().enumerate() {
            rows.push(Row {
                krate: "s2mm",
                metric: name,
                ns_per_page: per_page(runs.iter().map(|r| r[k].0).collect()),
                stats: runs[0][k].1,
                counted: "trace",
            });
        }
        for (active, label) in [(true, "aarch64-paging"), (false, "aarch64-paging-inactive")] {
            let runs: Vec<_> = (0..iters)
                .map(|_| paging_run(&pool, tag == "4k", active))
                .collect();
            for (k, name) in names.iter().enumerate() {
                rows.push(Row {
                    krate: label,
                    metric: name,
                    ns_per_page: per_page(runs.iter().map(|r| r[k]).collect()),
                    stats: if active {
                        paging_counts(name)
                    } else {
                        BatchStats::default()
                    },
                    counted: if active { "source" } else { "none(inactive)" },
                });
            }
        }
    }

    for r in &rows {
        println!(
            "{} {} ns_per_page={:.3} ns_per_entry={:.2} dsb={} tlbi={} isb={} counted={}",
            r.krate,
            r.metric,
            r.ns_per_page,
            r.ns_per_page * entries(r.metric),
            r.stats.dsb,
            r.stats.tlbi,
            r.stats.isb,
            r.counted
        );
    }
    for metric in [
        "map_4k_1g",
        "set_state_4k_1g",
        "unmap_4k_1g",
        "map_2m_1g",
        "set_state_2m_1g",
        "unmap_2m_1g",
    ] {
        let get = |k: &str| {
            rows.iter()
                .find(|r| r.krate == k && r.metric == metric)
                .map(|r| r.ns_per_page)
        };
        if let (Some(a), Some(b)) = (get("s2mm"), get("aarch64-paging")) {
            println!("speedup {metric} s2mm_vs_aarch64-paging={:.2}x", b / a);
        }
    }
    if let Some(path) = json {
        let body: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "  {{\"crate\":\"{}\",\"metric\":\"{}\",\"ns_per_page\":{:.4},\"dsb\":{},\"tlbi\":{},\"isb\":{},\"counted\":\"{}\"}}",
                    r.krate, r.metric, r.ns_per_page, r.stats.dsb, r.stats.tlbi, r.stats.isb, r.counted
                )
            })
            .collect();
        if let Some(dir) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(&path, format!("[\n{}\n]\n", body.join(",\n")))
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
}
