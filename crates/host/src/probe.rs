//! `linux-probe` (a host boot argument, for a protected Linux VM): the host
//! does what an attacker in it would, all the time the VM runs. Host CPU 1
//! (or 0 on one CPU), between two runs of its vCPU, reads the first word of
//! the next [`CHUNK`] pages of the VM's RAM; a pass covers all of it. Each
//! read the hypervisor refuses is counted (by the host's exception hook,
//! and by the hypervisor's own count of refused host accesses); each that
//! succeeds is a page the guest shared. At the end of a pass one line says
//! how many of each, with the hypervisor's count beside the host's, and
//! the readable pages as physical ranges:
//!
//! ```text
//! host: probe: pass 3: 65536 pages, 63456 refused (hypervisor: 63456), 2080 readable in 2 runs
//! host: probe: pass 3 readable: 0x5f600000+0x800000 0x5e7d0000+0x20000
//! ```
//!
//! `linux-hold=SECS` keeps the machine up SECS seconds after the VM is
//! destroyed (`host: linux: holding the machine for SECS s`), so that a
//! test can dump host memory through QEMU's monitor then.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::{demo, PAGE};
use guest_rt::println;

/// Pages read between two runs of the probing CPU's vCPU.
const CHUNK: u64 = 256;
/// Readable runs a pass records (more are counted, not listed).
const MAX_RUNS: usize = 8;

/// One pass over the VM's RAM.
struct Pass {
    /// Passes finished before this one.
    done: u64,
    /// The next page to read.
    next: u64,
    refused: u64,
    readable: u64,
    /// The hypervisor's count of refused host accesses when the pass began.
    denied_before: u64,
    runs: [(u64, u64); MAX_RUNS],
    nruns: usize,
}

/// What is probed: the VM's RAM in host physical memory.
struct Target {
    handle: u64,
    ram_pa: u64,
    pages: u64,
}

static ON: AtomicBool = AtomicBool::new(false);
static TARGET: spin::Once<Target> = spin::Once::new();
static PASS: spin::Mutex<Pass> = spin::Mutex::new(Pass {
    done: 0,
    next: 0,
    refused: 0,
    readable: 0,
    denied_before: 0,
    runs: [(0, 0); MAX_RUNS],
    nruns: 0,
});

/// Probes VM `handle`'s `bytes` of RAM at host `ram_pa` from now on.
pub fn start(handle: u64, ram_pa: u64, bytes: u64) {
    TARGET.call_once(|| Target {
        handle,
        ram_pa,
        pages: bytes / PAGE,
    });
    PASS.lock().denied_before = demo::hyp_denied();
    ON.store(true, Ordering::Release);
    println!(
        "host: probe: reading every page of VM {handle}'s RAM ({} pages at PA {ram_pa:#x}), {CHUNK} between runs",
        bytes / PAGE
    );
}

/// Stops probing VM `handle` (it stopped).
pub fn stop(handle: u64) {
    if TARGET.get().is_some_and(|t| t.handle == handle) {
        ON.store(false, Ordering::Release);
    }
}

/// Probes the next [`CHUNK`] pages, if probing is on; ends the pass (and
/// says so) at the end of the VM's RAM.
pub fn step() {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let Some(t) = TARGET.get() else {
        return;
    };
    // One CPU probes at a time; another that finds the lock taken goes on.
    let Some(mut p) = PASS.try_lock() else {
        return;
    };
    let end = (p.next + CHUNK).min(t.pages);
    for page in p.next..end {
        let pa = t.ram_pa + page * PAGE;
        if demo::probe_r(pa, 1) != 0 {
            p.refused += 1;
            continue;
        }
        p.readable += 1;
        let n = p.nruns;
        match p.runs[..n].last_mut() {
            Some(r) if r.0 + r.1 == pa => r.1 += PAGE,
            _ if n < MAX_RUNS => {
                p.runs[n] = (pa, PAGE);
                p.nruns += 1;
            }
            _ => {}
        }
    }
    p.next = end;
    if end < t.pages {
        return;
    }
    let denied = demo::hyp_denied();
    p.done += 1;
    println!(
        "host: probe: pass {}: {} pages, {} refused (hypervisor: {}), {} readable in {} runs",
        p.done,
        t.pages,
        p.refused,
        denied - p.denied_before,
        p.readable,
        p.nruns
    );
    let mut line = alloc::string::String::new();
    for &(pa, len) in &p.runs[..p.nruns] {
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {pa:#x}+{len:#x}"));
    }
    println!("host: probe: pass {} readable:{}", p.done, line.as_str());
    p.next = 0;
    p.refused = 0;
    p.readable = 0;
    p.nruns = 0;
    p.denied_before = denied;
}
