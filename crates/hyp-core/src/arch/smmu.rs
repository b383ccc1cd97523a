//! The SMMUv3 that stands between the host's devices and memory, owned by the
//! hypervisor (pKVM's hypervisor-owned IOMMU model).
//!
//! A device the host programs can DMA to any physical address: hypervisor
//! memory, a protected VM's pages. Only the SMMU stops it. So before the host
//! can reach any DMA-capable device (the PCIe windows, `vm::state::
//! map_host_devices`), this module takes the SMMU over: its registers are in
//! the hypervisor's EL2 map only, never in the host's stage 2; its stream
//! table, command and event queues are in the hypervisor's image; and every
//! stream of PCI bus 0 translates through the host's own stage-2 tables (STE
//! Config = stage 2 only, S2TTB = the host's VTTBR_EL2 base, the host's VTCR),
//! so a device reaches exactly what the host's CPUs reach, and nothing the
//! host gave away. Streams past bus 0 have no entry: their traffic is refused
//! (C_BAD_STREAMID).
//!
//! The SMMU's TLBs follow every change of the host's stage 2: the page-table
//! batches call [`invalidate_stage2`] right after their own TLB maintenance
//! completed (`barriers::pt::set_device_tlb_hook`; SMMU_CR2.PTM = 1, so
//! broadcast TLBIs are not relied on), which issues CMD_TLBI_S12_VMALL and
//! CMD_SYNC and waits for it.
//!
//! Refused transactions leave event records (STE.S2R = 1); [`drain_events`]
//! logs each and counts them (STATS(0, 202)). The encodings are in the
//! `smmuv3` crate, tested on the host.

use core::sync::atomic::{AtomicU64, Ordering};
use smmuv3::{regs, Cmd, Event, Features, QueueIdx, CMD_BYTES, EVT_BYTES};
use spin::{Mutex, Once};

/// log2 of the stream table's entries: 256, one PCI bus.
const STRTAB_LOG2: u32 = 8;
/// log2 of the command queue's entries.
const CMDQ_LOG2: u32 = 8;
/// log2 of the event queue's entries.
const EVTQ_LOG2: u32 = 9;
/// The SMMU VMID of the host's streams (SMMU VMIDs are the SMMU's own; the
/// host's CPU VMID is 0 too).
const HOST_VMID: u16 = 0;
/// Polls of a register before the SMMU is declared stuck.
const SPIN_LIMIT: u32 = 10_000_000;

/// The stream table (aligned to its size, IHI 0070 6.3.24).
#[repr(C, align(16384))]
struct StreamTable([[u64; 8]; 1 << STRTAB_LOG2]);
/// The command queue (aligned to its size).
#[repr(C, align(4096))]
struct CmdQueue([[u64; 2]; 1 << CMDQ_LOG2]);
/// The event queue.
#[repr(C, align(4096))]
struct EvtQueue([[u64; 4]; 1 << EVTQ_LOG2]);

const _: () = assert!(core::mem::size_of::<StreamTable>() == (smmuv3::STE_BYTES << STRTAB_LOG2));
const _: () = assert!(core::mem::size_of::<CmdQueue>() == CMD_BYTES << CMDQ_LOG2);
const _: () = assert!(core::mem::size_of::<EvtQueue>() == EVT_BYTES << EVTQ_LOG2);

/// The SMMU while the hypervisor drives it.
struct Smmu {
    base: u64,
    cmdq: &'static mut CmdQueue,
    cmd_prod: u32,
    /// Written by the SMMU: read with volatile loads only.
    evtq: *const EvtQueue,
    evt_cons: u32,
}

// SAFETY: the raw pointer is to a static only the SMMU writes and only the
// holder of the mutex reads.
unsafe impl Send for Smmu {}

static SMMU: Once<Mutex<Smmu>> = Once::new();
/// Transactions the SMMU refused (event records read), and records lost to
/// a full event queue.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

fn read32(a: u64) -> u32 {
    // SAFETY: `a` is an SMMU register in the EL2 device mapping (the board
    // lists the frame in `Platform::devices`).
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn write32(a: u64, v: u32) {
    // SAFETY: as `read32`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

fn write64(a: u64, v: u64) {
    // SAFETY: as `read32`; the 64-bit registers take 64-bit accesses.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

/// Polls `reg` until `done(value)`, at most [`SPIN_LIMIT`] times.
fn wait(reg: u64, done: impl Fn(u32) -> bool) -> Result<(), &'static str> {
    for _ in 0..SPIN_LIMIT {
        if done(read32(reg)) {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("the SMMU did not acknowledge in time")
}

/// Writes CR0 and waits for CR0ACK to match.
fn set_cr0(base: u64, v: u32) -> Result<(), &'static str> {
    write32(base + regs::CR0, v);
    wait(base + regs::CR0ACK, |a| a == v)
}

impl Smmu {
    /// Queues `cmds`, the last of which is a CMD_SYNC, and waits until the
    /// SMMU has consumed them all.
    fn run(&mut self, cmds: &[Cmd]) -> Result<(), &'static str> {
        let q = QueueIdx::new(CMDQ_LOG2);
        let cons_reg = self.base + regs::CMDQ_CONS;
        for c in cmds {
            // Bounded: the queue drains as the SMMU consumes it.
            wait(cons_reg, |cons| !q.full(self.cmd_prod, cons))?;
            self.cmdq.0[q.slot(self.cmd_prod)] = c.encode();
            self.cmd_prod = q.next(self.cmd_prod);
        }
        // The entries are complete in memory before the SMMU reads them.
        barriers::maint::device_memory_barrier();
        write32(self.base + regs::CMDQ_PROD, self.cmd_prod);
        let prod = self.cmd_prod;
        wait(cons_reg, |cons| {
            q.empty(prod, cons) || smmuv3::cmdq_error(cons) != 0
        })?;
        let cons = read32(cons_reg);
        if smmuv3::cmdq_error(cons) != 0 {
            return Err("the SMMU refused a command (CMDQ_CONS.ERR)");
        }
        Ok(())
    }
}

/// What [`init`] found and did.
#[derive(Debug, Clone, Copy)]
pub struct Enabled {
    /// The SMMU's features.
    pub features: Features,
    /// Streams with an entry (0..this).
    pub streams: u32,
}

/// Takes over the SMMU at `base`: every stream of PCI bus 0 translates
/// through the stage-2 tables of `host_vttbr` with `vtcr`; everything else
/// is refused; faults are recorded. Registers the device-TLB hook.
///
/// # Errors
///
/// An SMMU without what this needs (`smmuv3::Unsupported`, as text), or one
/// that does not acknowledge. The host then gets no DMA-capable device.
pub fn init(base: u64, host_vttbr: u64, vtcr: u64) -> Result<Enabled, &'static str> {
    let features = Features::from_idr(
        read32(base + regs::IDR0),
        read32(base + regs::IDR1),
        read32(base + regs::IDR5),
    )
    .map_err(|e| match e {
        smmuv3::Unsupported::NoStage2 => {
            "no stage-2 translation (QEMU: -global arm-smmuv3.stage=2)"
        }
        smmuv3::Unsupported::NoAarch64Tables => "no AArch64 translation tables",
        smmuv3::Unsupported::No4kGranule => "no 4 KiB granule",
        smmuv3::Unsupported::FewStreamIds => "fewer than 8 stream ID bits",
        smmuv3::Unsupported::BigEndianOnly => "big-endian tables only",
    })?;
    // Off, and traffic aborted (not passed) while it is.
    set_cr0(base, 0)?;
    write32(base + regs::GBPA, regs::GBPA_ABORT | regs::GBPA_UPDATE);
    wait(base + regs::GBPA, |g| g & regs::GBPA_UPDATE == 0)?;

    static mut STRTAB: StreamTable = StreamTable([[0; 8]; 1 << STRTAB_LOG2]);
    static mut CMDQ: CmdQueue = CmdQueue([[0; 2]; 1 << CMDQ_LOG2]);
    static mut EVTQ: EvtQueue = EvtQueue([[0; 4]; 1 << EVTQ_LOG2]);
    // SAFETY: `init` runs once, on the boot CPU (`SMMU` is set below and
    // `boot::primary` calls this once); the SMMU is the only other user.
    let (strtab, cmdq) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(STRTAB),
            &mut *core::ptr::addr_of_mut!(CMDQ),
        )
    };
    let ttb = host_vttbr & 0x0000_ffff_ffff_fffe;
    let ste = smmuv3::ste_stage2(HOST_VMID, vtcr, features.oas, ttb);
    for e in &mut strtab.0 {
        *e = ste;
    }
    let pa = |p: *const u8| p as u64; // EL2 runs identity-mapped.
    barriers::maint::device_memory_barrier();
    write32(base + regs::CR1, regs::CR1_WB_ISH);
    write32(base + regs::CR2, regs::CR2_RECINVSID | regs::CR2_PTM);
    write64(
        base + regs::STRTAB_BASE,
        regs::BASE_ALLOC_HINT | (pa(strtab.0.as_ptr().cast()) & regs::BASE_ADDR_MASK),
    );
    // FMT = linear (0), LOG2SIZE.
    write32(base + regs::STRTAB_BASE_CFG, STRTAB_LOG2);
    write64(
        base + regs::CMDQ_BASE,
        regs::BASE_ALLOC_HINT
            | (pa(cmdq.0.as_ptr().cast()) & regs::BASE_ADDR_MASK)
            | u64::from(CMDQ_LOG2),
    );
    write32(base + regs::CMDQ_PROD, 0);
    write32(base + regs::CMDQ_CONS, 0);
    write64(
        base + regs::EVTQ_BASE,
        regs::BASE_ALLOC_HINT
            | (pa(core::ptr::addr_of!(EVTQ).cast()) & regs::BASE_ADDR_MASK)
            | u64::from(EVTQ_LOG2),
    );
    write32(base + regs::EVTQ_PROD, 0);
    write32(base + regs::EVTQ_CONS, 0);
    set_cr0(base, regs::CR0_CMDQEN)?;
    let mut s = Smmu {
        base,
        cmdq,
        cmd_prod: 0,
        evtq: core::ptr::addr_of!(EVTQ),
        evt_cons: 0,
    };
    // Nothing cached from before: configuration, then TLBs.
    s.run(&[Cmd::CfgiAll, Cmd::TlbiNsnhAll, Cmd::Sync])?;
    set_cr0(base, regs::CR0_CMDQEN | regs::CR0_EVTQEN | regs::CR0_SMMUEN)?;
    SMMU.call_once(|| Mutex::new(s));
    barriers::pt::set_device_tlb_hook(invalidate_stage2);
    Ok(Enabled {
        features,
        streams: 1 << STRTAB_LOG2,
    })
}

/// Whether an SMMU confines the host's devices.
pub fn enabled() -> bool {
    SMMU.get().is_some()
}

/// The device-TLB hook: after a stage-2 change of `vmid` completed on the
/// CPUs, the SMMU forgets the host's translations (when `vmid` is the
/// host's) and this returns once it has.
///
/// # Panics
///
/// If the SMMU does not complete the invalidation: it could then keep a
/// translation to a page the host no longer owns, and the hypervisor stops
/// rather than hand that page on.
pub fn invalidate_stage2(vmid: u16) {
    if vmid != HOST_VMID {
        return;
    }
    let Some(s) = SMMU.get() else {
        return;
    };
    if let Err(e) = s
        .lock()
        .run(&[Cmd::TlbiS12Vmall { vmid: HOST_VMID }, Cmd::Sync])
    {
        panic!("SMMU TLB invalidation failed: {e}");
    }
}

/// Reads the event records the SMMU has written since the last call, logs
/// each and counts it; returns the total so far.
pub fn drain_events() -> u64 {
    let Some(s) = SMMU.get() else {
        return 0;
    };
    let mut s = s.lock();
    let q = QueueIdx::new(EVTQ_LOG2);
    let prod_reg = s.base + regs::EVTQ_PROD;
    let prod = read32(prod_reg);
    // EVTQ_PROD.OVFLG (bit 31) differs from CONS's: records were lost.
    if (prod ^ s.evt_cons) & (1 << 31) != 0 {
        LOST.fetch_add(1, Ordering::Relaxed);
        log::warn!("SMMU event queue overflowed: records lost");
        s.evt_cons ^= 1 << 31;
    }
    // The records up to PROD are in memory before they are read.
    barriers::maint::device_memory_barrier();
    // Records of one transfer come in runs (a device's DMA engine retries
    // word by word): one line per run of the same kind, stream, direction
    // and page.
    let mut run: Option<(Event, u64, u64)> = None;
    let mut n = 0;
    while !q.empty(prod, s.evt_cons) && n < (1 << EVTQ_LOG2) {
        let slot = q.slot(s.evt_cons);
        // SAFETY: `evtq` is the event queue static; the slot is in range.
        let rec = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*s.evtq).0[slot])) };
        let e = Event::decode(rec);
        FAULTS.fetch_add(1, Ordering::Relaxed);
        run = match run {
            Some((first, last, count))
                if (first.id, first.sid, first.read) == (e.id, e.sid, e.read)
                    && first.addr >> 12 == e.addr >> 12 =>
            {
                Some((first, last.max(e.addr), count + 1))
            }
            Some(done) => {
                log_run(done);
                Some((e, e.addr, 1))
            }
            None => Some((e, e.addr, 1)),
        };
        s.evt_cons = (s.evt_cons & (1 << 31)) | q.next(s.evt_cons & !(1 << 31));
        n += 1;
    }
    if let Some(done) = run {
        log_run(done);
    }
    write32(s.base + regs::EVTQ_CONS, s.evt_cons);
    FAULTS.load(Ordering::Relaxed)
}

/// One line for a run of event records: the first, the highest address, how many.
fn log_run((e, last, count): (Event, u64, u64)) {
    log::info!(
        "SMMU: {} ({:#x}) stream {:#x}: {count} {}s of {:#x}..={last:#x} refused",
        e.name(),
        e.id,
        e.sid,
        if e.read { "read" } else { "write" },
        e.addr
    );
}

/// Refused transactions counted so far (after [`drain_events`]).
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}
