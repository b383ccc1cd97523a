//! Every production path that issues barriers, traced and checked.
//!
//! Each scenario runs the hypervisor's own code (the `switch` sequences the world switch and
//! the EL2 bring-up use, and the `Control` calls behind the host and guest hypercalls) on the
//! recording backend, prints its ISB/DSB/TLBI/cache-maintenance counts and asserts the checker
//! finds 0 needless ISBs, 0 missing ones, 0 TLBIs under a wrong VMID and nothing else. Run with
//! `--nocapture` to see the table (`cargo xtask test` does).

use aarch64_cpu::registers::HCR_EL2;
use barriers::check::{check, report, summary, Summary};
use barriers::sync::{uses, Synced};
use barriers::vttbr::Vttbr;
use barriers::{enter_guest, trace, GuestPending, Insn, SysReg};
use hyp_core::arch::switch::{self, ContextRegs, CpuSync, El1Context, El2Regs, SCTLR_EL2_ON};
use hyp_core::platform::MemRegion;
use hyp_core::vcpu::traps::{CPTR_FP_ON, CPTR_TRAP_FP};
use hyp_core::vm::control::{
    Control, PhysMem, RegionKind, FLAG_PROTECTED, GUEST_RAM_IPA_MIN, VM_CREATE_PAGES,
};
use hyp_core::vm::memcache::host::TestAlloc;

const RAM: MemRegion = MemRegion {
    base: 0x5000_0000,
    size: 0x400_0000,
};
/// HCR_EL2 as the hypervisor runs: RW, VM, FMO/IMO/AMO, TWI, TSC, TVM, TSW (the trap bits
/// differ per context).
const HCR: u64 = HCR_EL2::RW::SET.value
    | HCR_EL2::VM::SET.value
    | HCR_EL2::FMO::SET.value
    | HCR_EL2::IMO::SET.value
    | HCR_EL2::AMO::SET.value
    | HCR_EL2::TSC::SET.value;
const TWI: u64 = HCR_EL2::TWI::SET.value;
const TVM: u64 = HCR_EL2::TVM::SET.value;
const TSW: u64 = HCR_EL2::TSW::SET.value;

struct Scrub;
impl PhysMem for Scrub {
    fn scrub(&mut self, pa: u64, len: u64) {
        // What HypMem does on the CPU: zero through the hypervisor's mapping, then clean.
        barriers::maint::clean_inval_to_poc(pa, len);
    }
    fn clean(&mut self, pa: u64, len: u64) {
        barriers::maint::clean_inval_to_poc(pa, len);
    }
}

/// Checks one scenario's trace, prints its counts, and returns them.
fn path(name: &str, t: &[Insn]) -> Summary {
    let s = summary(t);
    println!("barrier path {name:<28} {s}");
    assert!(
        s.needless_isb == 0 && s.missing_isb == 0 && s.wrong_vmid == 0 && s.other == 0,
        "{name}:\n{}",
        report(&check(t))
    );
    s
}

/// The trace since the last call, starting with what `vt` knows.
fn take(vt: &Vttbr) -> Vec<Insn> {
    let t = trace::take();
    vt.record_state();
    t
}

/// One CPU: EL2 up (traced as its own path), the host's VMID loaded and entered.
struct Cpu {
    sync: CpuSync,
    vt: Vttbr,
    fp_on: Option<Synced<barriers::sync::El2Fp>>,
}

fn eret(sync: &CpuSync, vt: &mut Vttbr, pending: GuestPending) {
    let e = enter_guest(&sync.eos, vt, pending);
    // SAFETY: host test: the recording's Eret stands for the world switch's ERET and the
    // guest's run.
    let _ = unsafe { e.run(|| ()) };
}

fn cpu_up() -> (Cpu, Vec<Insn>) {
    trace::reset();
    trace::set_reg(SysReg::CptrEl2, CPTR_TRAP_FP);
    // SAFETY: host test: the recording backend.
    let sync = unsafe {
        switch::el2_on(El2Regs {
            hcr: HCR,
            mair: s2mm::desc::El2Format::MAIR_EL2,
            tcr: 0x8080_3519,
            ttbr0: 0x4010_0000,
            sctlr: SCTLR_EL2_ON,
            vectors: 0x4020_0800,
            tpidr: 0x4030_0000,
            gic_v3: true,
            ras: true,
        })
    };
    let bringup = trace::take();
    // SAFETY: host test: one owner for this thread; `init` as `run_cpu` does.
    let vt = unsafe { Vttbr::init(0) };
    let mut c = Cpu {
        sync,
        vt,
        fp_on: None,
    };
    // The host's first entry.
    let mut pending = GuestPending::new();
    let host = ContextRegs {
        vttbr: 0,
        hcr: HCR | TWI,
        vmpidr: 1 << 31,
    };
    // SAFETY: host test.
    unsafe { switch::load_context(&mut c.vt, &c.sync, host, &El1Context::RESET, &mut pending) };
    switch::trap_fp(&c.sync, &mut c.fp_on, CPTR_TRAP_FP, &mut pending);
    eret(&c.sync, &mut c.vt, pending);
    trace::clear();
    c.vt.record_state();
    (c, bringup)
}

#[test]
fn every_production_path_has_no_needless_missing_or_wrong_vmid_barrier() {
    let (mut c, bringup) = cpu_up();
    path("el2 mmu bring-up", &bringup);

    // ---- The world switch: host -> guest (VCPU_RUN), then back with FP in use. ----
    let guest_vttbr = (1u64 << 48) | 0x4800_0000;
    let mut host_el1 = El1Context::RESET;
    host_el1.save(&c.sync.hcr);
    let mut pending = GuestPending::new();
    let guest = ContextRegs {
        vttbr: guest_vttbr,
        hcr: HCR | TVM | TSW | TWI,
        vmpidr: 1 << 31,
    };
    // SAFETY: host test.
    unsafe { switch::load_context(&mut c.vt, &c.sync, guest, &El1Context::RESET, &mut pending) };
    switch::trap_fp(&c.sync, &mut c.fp_on, CPTR_TRAP_FP, &mut pending);
    eret(&c.sync, &mut c.vt, pending);
    path("world switch in (host->vm)", &take(&c.vt));

    // The guest used FP and exits to the host: save its FP state, load the host.
    let on = switch::enable_fp(&c.sync, &mut c.fp_on, CPTR_FP_ON);
    uses::el2_fp(on); // what world_switch::fp_save declares
    let mut guest_el1 = El1Context::RESET;
    guest_el1.save(&c.sync.hcr);
    let mut pending = GuestPending::new();
    let host = ContextRegs {
        vttbr: 0,
        hcr: HCR | TWI,
        vmpidr: 1 << 31,
    };
    // SAFETY: host test.
    unsafe { switch::load_context(&mut c.vt, &c.sync, host, &host_el1, &mut pending) };
    switch::trap_fp(&c.sync, &mut c.fp_on, CPTR_TRAP_FP, &mut pending);
    eret(&c.sync, &mut c.vt, pending);
    path("world switch out (vm->host)", &take(&c.vt));

    // ---- Host control calls (the host's VMID is loaded). ----
    let ctl: Control<_, _> =
        Control::new(TestAlloc::new(), Scrub, &mut c.vt, RAM, 40, 2, false, false)
            .expect("host stage 2");
    // Each VM's state: 64 KiB at the end of RAM.
    let state = |i: u64| RAM.end() - (i + 1) * VM_CREATE_PAGES * 4096;
    path("host stage 2 at boot", &take(&c.vt));
    let p = ctl
        .create(&mut c.vt, 2, FLAG_PROTECTED, state(0), VM_CREATE_PAGES)
        .expect("create");
    let n = ctl
        .create(&mut c.vt, 1, 0, state(1), VM_CREATE_PAGES)
        .expect("create");
    path("vm create", &take(&c.vt));

    // 512 pages (2 MiB) donated: one batch per stage 2, not one per page.
    let block = RAM.base + 0x20_0000;
    ctl.give(
        &mut c.vt,
        p,
        block,
        GUEST_RAM_IPA_MIN,
        512,
        RegionKind::Donated,
    )
    .expect("donate");
    let s = path("mem donate 512 pages", &take(&c.vt));
    assert!(s.dsb <= 8, "donating 512 pages: {} DSBs", s.dsb);
    ctl.give(
        &mut c.vt,
        n,
        RAM.base + 0x40_0000,
        GUEST_RAM_IPA_MIN,
        512,
        RegionKind::Lent,
    )
    .expect("lend");
    let s = path("mem lend 512 pages", &take(&c.vt));
    assert!(s.dsb <= 8, "lending 512 pages: {} DSBs", s.dsb);
    ctl.give_with(
        &mut c.vt,
        p,
        RAM.base + 0x60_0000,
        GUEST_RAM_IPA_MIN + 0x100_0000,
        16,
        RegionKind::Donated,
        true,
    )
    .expect("lazy donate");
    path("mem donate lazily", &take(&c.vt));

    // ---- Guest calls (the protected VM's VMID is loaded: the host's stage 2 changes must
    // switch to VMID 0 for their TLBIs). ----
    let vm_vttbr = ctl.vm(p).expect("vm").vttbr;
    let mut pending = GuestPending::new();
    // SAFETY: host test.
    pending.add(unsafe { c.vt.load(vm_vttbr) });
    eret(&c.sync, &mut c.vt, pending);
    trace::clear();
    c.vt.record_state();
    ctl.map_on_demand(&mut c.vt, p, GUEST_RAM_IPA_MIN + 0x100_3000)
        .expect("lazy fault");
    path("lazy fault", &take(&c.vt));
    ctl.guest_share(&mut c.vt, p, GUEST_RAM_IPA_MIN + 0x5000, true)
        .expect("share");
    // The guest's block is split (its TLBIs under its own, loaded VMID); the host gains a
    // mapping (invalid to valid: no TLBI, so no switch).
    path("mem share (guest block split)", &take(&c.vt));
    ctl.guest_share(&mut c.vt, p, GUEST_RAM_IPA_MIN + 0x5000, false)
        .expect("unshare");
    let t = take(&c.vt);
    let s = path("mem unshare (host loses the page)", &t);
    assert!(s.tlbi > 0, "unshare must invalidate the host's entry: {s}");
    assert!(
        switches_to_vmid(&t, 0),
        "the host's entry is invalidated under the host's VMID, not the loaded guest's"
    );

    // ---- Back to the host: a cache toggle, then destroy and recreate (VMID reuse). ----
    let mut pending = GuestPending::new();
    // SAFETY: host test.
    pending.add(unsafe { c.vt.load(0) });
    eret(&c.sync, &mut c.vt, pending);
    trace::clear();
    c.vt.record_state();
    let regions = ctl.vm(p).expect("vm").regions;
    switch::clean_vm(
        regions
            .iter()
            .flatten()
            .map(|r| (r.pa, r.pages.min(4) * s2mm::PAGE_SIZE)),
        || {},
    );
    path("cache toggle (vm-wide clean)", &take(&c.vt));
    while ctl.destroy(&mut c.vt, p).expect("destroy").more {}
    let t = take(&c.vt);
    let s = path("vm destroy", &t);
    assert!(
        t.contains(&Insn::Tlbi(barriers::Tlbi::Vmalls12e1is)),
        "destroy invalidates the whole VMID before it is reused"
    );
    assert!(s.tlbi > 0);
    let p2 = ctl
        .create(&mut c.vt, 1, FLAG_PROTECTED, state(0), VM_CREATE_PAGES)
        .expect("recreate");
    assert_eq!(p2, p, "the slot (and VMID) is reused");
    path("vm recreate (vmid reused)", &take(&c.vt));
    while ctl.destroy(&mut c.vt, n).expect("destroy normal").more {}
    path("vm destroy (lent memory)", &take(&c.vt));
}

/// The trace switches VTTBR_EL2 to `vmid` for maintenance.
fn switches_to_vmid(t: &[Insn], vmid: u16) -> bool {
    t.iter().any(|i| {
        matches!(i, Insn::Msr { reg: SysReg::VttbrEl2, value, .. }
            if barriers::regs::vttbr_vmid(*value) == vmid)
    })
}
