//! The test guests' GIC driver: the `arm-gic` crate's drivers for both
//! interrupt controllers the hypervisor's virtual GIC presents, chosen at run
//! time ([`version`]), behind one set of functions.
//!
//! * **GICv3** (QEMU virt): [`GicV3`] (distributor and redistributors) and
//!   [`GicCpuInterface`] (`ICC_*_EL1`). All interrupts group 1.
//! * **GICv2** (the Raspberry Pi 4's GIC-400, or QEMU virt with
//!   `gic-version=2`): [`GicV2`] over the distributor (banked for INTIDs
//!   0..32) and the memory-mapped CPU interface (under the hypervisor the
//!   GIC-400's GICV frame). All interrupts group 0, signalled as IRQ.
//!
//! Under the hypervisor vCPU *n* has MPIDR Aff0 *n*, redistributor *n* and
//! GICv2 CPU interface *n* (its vGIC numbers them so), which is how this
//! driver names CPUs to `arm-gic`. What `arm-gic` 0.10 lacks, or does
//! otherwise than the guests need, is done on its register blocks, each place
//! saying why: mostly reads (pending, enabled, priorities), and on GICv2 the
//! set-up, priorities and targets.
//!
//! Set-up: [`init_distributor`] once per VM, then [`init_cpu`] on every vCPU;
//! then [`enable`] interrupts and [`irq_unmask`]. A handler (the exception
//! hook on vector 5, "current EL with SPx, IRQ") gives what [`ack`] returned
//! back to [`eoi`] (EOImode 0: the EOI also deactivates; on GICv2 it repeats
//! an SGI's sender CPU, IHI 0048B 4.4.5, so handlers may nest).
//!
//! Registers are accessed through `safe-mmio`, as `arm-gic` does: each access
//! is one `ldr`/`str` with a register base, so a hypervisor that traps it
//! gets a valid syndrome (ESR_EL2.ISV = 1).

use arm_gic::gicv2::registers::{Gicc, Gicd as GicdV2};
use arm_gic::gicv2::{GicV2, SgiTarget as SgiTargetV2, SgiTargetListFilter};
use arm_gic::gicv3::registers::{Gicd, GicdCtlr, GicrSgi, Sgi};
use arm_gic::gicv3::{GicCpuInterface, GicV3, SgiTarget as SgiTargetV3, SgiTargetGroup};
use arm_gic::{IntId, InterruptGroup, Trigger, UniqueMmioPointer};
use arm_sysregs::el0::accessors::{read_cntfrq_el0, read_cntvct_el0};
use arm_sysregs::el1::accessors::{
    read_icc_rpr_el1, read_icc_sre_el1, read_id_aa64pfr0_el1, read_mpidr_el1, write_icc_bpr1_el1,
};
use arm_sysregs::el1::registers::{IccBpr1El1, IccSreEl1};
use core::arch::asm;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};
use safe_mmio::fields::ReadPureWrite;
use safe_mmio::{field, field_shared};

/// Distributor base (IPA), both versions.
pub const GICD_BASE: usize = hyp_abi::layout::GICD_IPA as usize;
const GICR_BASE: usize = hyp_abi::layout::GICR_IPA as usize;
const GICC_BASE: usize = hyp_abi::layout::GICC_V2_IPA as usize;
/// vCPUs the VM may have (GICv2's limit too).
const MAX_CPUS: usize = 8;

/// INTID returned by an acknowledge when nothing is pending.
pub const SPURIOUS: u32 = IntId::SPECIAL_NONE.raw_value();
/// The EL1 virtual timer's PPI.
pub const VTIMER_PPI: u32 = 27;
/// INTID of the EL1 physical timer (the binding's non-secure physical timer).
pub const PTIMER_PPI: u32 = 30;
/// Every interrupt's priority after set-up: `arm-gic`'s GICv3 default.
const DEFAULT_PRIORITY: u32 = u32::from_ne_bytes([arm_gic::gicv3::HIGHEST_NS_PRIORITY; 4]);

/// The registers at `base`, for one operation. `arm-gic` asks for views
/// without aliases, but views of one frame do coexist here: each vCPU and
/// each nested handler makes its own, as on any GIC that several CPUs drive
/// (what they write is banked per CPU, write-one-to-set/clear, or set-up
/// done by one vCPU), and a few functions use a driver and its registers in
/// turn. Views are pointers: no Rust reference to device memory is formed.
fn view<T>(base: usize) -> UniqueMmioPointer<'static, T> {
    let regs = NonNull::new(base as *mut T).expect("GIC frames are not at 0");
    // SAFETY: `base` is a GIC frame of the VM (`hyp_abi::layout`), Device
    // memory for its life; aliasing as documented above.
    unsafe { UniqueMmioPointer::new(regs) }
}

fn gic_v3() -> GicV3<'static> {
    let gicr = NonNull::new(GICR_BASE as *mut GicrSgi).expect("GICR_BASE is not 0");
    // SAFETY: the VM's redistributors, one per vCPU from GICR_BASE; as `view`.
    unsafe { GicV3::new(view(GICD_BASE), gicr, MAX_CPUS) }.expect("GICv3 redistributors")
}

fn gic_v2() -> GicV2<'static> {
    // SAFETY: the VM's GICv2 distributor and CPU interface; as `view`.
    unsafe { GicV2::new(GICD_BASE as *mut GicdV2, GICC_BASE as *mut Gicc) }
}

/// This vCPU's SGI and PPI registers (GICv3), for what `GicV3` has no call
/// for. `GicV3::new` accepts only GICv3 redistributors without virtual LPIs
/// (one `GicrSgi` each) or GICv4 ones, and the vGIC's are the former.
fn sgi_frame() -> UniqueMmioPointer<'static, Sgi> {
    view(GICR_BASE + cpu() * size_of::<GicrSgi>() + core::mem::offset_of!(GicrSgi, sgi))
}

/// Writes `v` to registers `range` of one register array.
fn fill<const N: usize>(
    mut regs: UniqueMmioPointer<'_, [ReadPureWrite<u32>; N]>,
    range: Range<usize>,
    v: u32,
) {
    for mut r in regs.get_range(range).expect("registers inside the frame") {
        r.write(v);
    }
}

/// Reads word `n` of the register array `reg` of the block `regs`.
macro_rules! word {
    ($regs:expr, $reg:ident, $n:expr) => {{
        let regs = $regs;
        field_shared!(regs, $reg)
            .get($n)
            .expect("a register")
            .read()
    }};
}

fn isb() {
    // SAFETY: a context synchronisation barrier has no other effect.
    unsafe { asm!("isb", options(nostack)) };
}

fn dsb_sy() {
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb sy", options(nostack)) };
}

/// An INTID as `arm-gic` takes it.
fn id(intid: u32) -> IntId {
    IntId::try_from(intid).expect("a valid INTID")
}

/// The GIC architecture this driver found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Version {
    /// GICv2: memory-mapped CPU interface.
    V2 = 2,
    /// GICv3: system-register CPU interface and redistributors.
    V3 = 3,
}

/// [`version`] once known (0: not yet); a race only repeats the read.
static VERSION: AtomicU8 = AtomicU8::new(0);

/// The GIC version: `ID_AA64PFR0_EL1.GIC` is 0 without a GIC
/// system-register interface, which leaves GICv2's memory-mapped one (Arm
/// ARM D19.2.64; QEMU reports it only with a GICv3). Read once (it traps to
/// the hypervisor), then remembered.
pub fn version() -> Version {
    match VERSION.load(Ordering::Relaxed) {
        2 => Version::V2,
        3 => Version::V3,
        _ => {
            let v = match read_id_aa64pfr0_el1().gic() {
                0 => Version::V2,
                _ => Version::V3,
            };
            VERSION.store(v as u8, Ordering::Relaxed);
            v
        }
    }
}

fn v2() -> bool {
    version() == Version::V2
}

/// This vCPU's MPIDR_EL1 affinity fields, packed as Aff3.Aff2.Aff1.Aff0 in
/// 32 bits (the layout of `GICR_TYPER.Affinity_Value`).
pub fn affinity() -> u32 {
    let m = read_mpidr_el1();
    u32::from_le_bytes([m.aff0(), m.aff1(), m.aff2(), m.aff3()])
}

/// This vCPU's number: its Aff0, redistributor and GICv2 CPU interface.
fn cpu() -> usize {
    usize::from(read_mpidr_el1().aff0())
}

/// `aff` ([`affinity`]'s packing) in MPIDR_EL1's, as `arm-gic` takes it.
fn mpidr(aff: u32) -> u64 {
    u64::from(aff & 0xff_ffff) | (u64::from(aff >> 24) << 32)
}

/// Configures the distributor, once per VM, before any vCPU's [`init_cpu`]:
/// with the distributor disabled, makes every SPI disabled, level sensitive,
/// at the default priority, routed to the calling vCPU and group 1 (v3) or 0
/// (v2), then enables it (v3: with affinity routing).
pub fn init_distributor() {
    if v2() {
        init_distributor_v2();
        return;
    }
    let mut g = gic_v3();
    let d = g.distributor();
    let all = GicdCtlr::EnableGrp0 | GicdCtlr::EnableGrp1NS | GicdCtlr::EnableGrp1S;
    d.modify_control(all, false);
    d.enable_all_interrupts(false);
    d.wait_for_pending_write();
    // Group 1, priority, level; then ARE and EnableGrp1 (RWP waited).
    d.configure_default_settings();
    let me = Some(mpidr(affinity()));
    for spi in 0..d.typer().num_spis() {
        d.set_routing(IntId::spi(spi), me).expect("an SPI");
    }
}

/// GICv2 [`init_distributor`], on `arm-gic`'s register block: `GicV2` sets
/// nothing per SPI in bulk and no target at all.
fn init_distributor_v2() {
    gic_v2().enable_group0(false);
    let words = (gic_v2().typer().num_irqs() / 32) as usize;
    let mut d = view::<GicdV2>(GICD_BASE);
    fill(field!(d, icenabler), 1..words, !0);
    fill(field!(d, icpendr), 1..words, !0);
    fill(field!(d, igroupr), 1..words, 0);
    fill(field!(d, ipriorityr), 8..words * 8, DEFAULT_PRIORITY);
    fill(field!(d, icfgr), 2..words * 2, 0);
    let me = u32::from_ne_bytes([1 << cpu(); 4]);
    for mut t in field!(d, itargetsr).get_range(8..words * 8).expect("SPIs") {
        // SAFETY: writing GICD_ITARGETSR only routes SPIs.
        unsafe { t.write_unsafe(me) };
    }
    gic_v2().enable_group0(true);
}

/// Configures this vCPU's private interrupts and CPU interface: every SGI
/// and PPI disabled, not pending, at the default priority, group 1 (v3) or
/// 0 (v2); priority mask `0xff`; the smallest binary point (most preemption
/// levels); EOImode 0; the group enabled. On GICv3 it first wakes the
/// redistributor. PSTATE.I is left as it is.
pub fn init_cpu() {
    if v2() {
        init_cpu_v2();
        return;
    }
    let (mut g, me) = (gic_v3(), cpu());
    let typer = g.gicr_typer(me).expect("a redistributor per vCPU");
    assert_eq!(
        typer.core_mpidr(),
        mpidr(affinity()),
        "redistributor {me} is not this vCPU's"
    );
    // ICC_SRE_EL1.SRE, GICR_WAKER, ICC_CTLR_EL1 = 0 (EOImode 0).
    g.init_cpu(me);
    // SGIs/PPIs disabled (RWP waited), group 1, priority, PPIs level.
    g.redistributor(me)
        .expect("this vCPU's")
        .configure_default_settings();
    // arm-gic leaves them pending: it clears no pending state.
    let mut sgi = sgi_frame();
    fill(field!(sgi, icpendr), 0..1, !0);
    isb();
    assert!(
        read_icc_sre_el1().contains(IccSreEl1::SRE),
        "no GIC system registers"
    );
    set_priority_mask(0xff);
    // arm-gic has no ICC_BPR1_EL1 call: below the minimum sets the minimum.
    write_icc_bpr1_el1(IccBpr1El1::empty());
    GicCpuInterface::enable_group1(true);
    isb();
}

/// GICv2 [`init_cpu`], on the banked `GICD_*R0` and the GICC frame:
/// `GicV2::setup` would also rewrite every SPI's group and the distributor's
/// enable from each vCPU, and sets no binary point.
fn init_cpu_v2() {
    let mut d = view::<GicdV2>(GICD_BASE);
    fill(field!(d, icenabler), 0..1, !0);
    // ICPENDR0's SGI bits are WI: SGIs are cleared per sender in
    // GICD_CPENDSGIR0..3, past the end of arm-gic's register block.
    fill(field!(d, icpendr), 0..1, !0);
    let cpendsgir = GICD_BASE + hw_regs::gic::as_usize::GICD_CPENDSGIR;
    fill(view::<[ReadPureWrite<u32>; 4]>(cpendsgir), 0..4, !0);
    fill(field!(d, igroupr), 0..1, 0);
    fill(field!(d, ipriorityr), 0..8, DEFAULT_PRIORITY);
    let mut c = view::<Gicc>(GICC_BASE);
    field!(c, pmr).write(0xff);
    // SAFETY: GICC_BPR (plain in arm-gic) only sets preemption grouping;
    // below the minimum sets the minimum (IHI 0048B, 3.3.3).
    unsafe { field!(c, bpr).write_unsafe(0) };
    // EnableGrp0; FIQEn and EOImode 0: group 0 as IRQ, an EOI deactivates.
    field!(c, ctlr).write(1);
}

/// Sets an interrupt's priority (lower is more urgent). The GIC keeps only
/// its implemented high-order bits: at least 5 on a virtual CPU interface
/// (IHI 0069, 4.8; the GIC-400's GICV has exactly 5), so multiples of 8
/// survive everywhere.
pub fn set_priority(intid: u32, prio: u8) {
    if !v2() {
        let set = gic_v3().set_interrupt_priority(id(intid), Some(cpu()), prio);
        set.expect("an INTID the GIC has");
        return;
    }
    // GicV2::set_interrupt_priority writes the whole word, zeroing the other
    // three priorities in it: read-modify-write the word instead.
    let shift = 8 * (intid % 4);
    let mut d = view::<GicdV2>(GICD_BASE);
    let mut p = field!(d, ipriorityr);
    let mut w = p.get(intid as usize / 4).expect("an INTID");
    w.modify(|v| (v & !(0xff << shift)) | (u32::from(prio) << shift));
}

/// An interrupt's priority as the GIC holds it (`arm-gic` only writes them).
pub fn priority(intid: u32) -> u8 {
    let n = intid as usize / 4;
    let w = match (version(), intid < 32) {
        (Version::V3, true) => word!(sgi_frame(), ipriorityr, n),
        (Version::V3, false) => word!(view::<Gicd>(GICD_BASE), ipriorityr, n),
        (Version::V2, _) => word!(view::<GicdV2>(GICD_BASE), ipriorityr, n),
    };
    (w >> (8 * (intid % 4))) as u8
}

/// Enables an interrupt (this vCPU's, for an SGI or PPI).
pub fn enable(intid: u32) {
    if v2() {
        gic_v2()
            .enable_interrupt(id(intid), true)
            .expect("GICD_ISENABLER kept it");
    } else {
        let done = gic_v3().enable_interrupt(id(intid), Some(cpu()), true);
        done.expect("an INTID the GIC has");
    }
}

/// Disables an interrupt. On GICv3 it then waits until the GIC has stopped
/// forwarding it (RWP), as the architecture requires before relying on the
/// disable; GICv2 has no such indication.
pub fn disable(intid: u32) {
    if v2() {
        gic_v2()
            .enable_interrupt(id(intid), false)
            .expect("ICENABLER");
        return;
    }
    let mut g = gic_v3();
    let done = g.enable_interrupt(id(intid), Some(cpu()), false);
    done.expect("an INTID the GIC has");
    if intid < 32 {
        g.gicr_barrier(cpu()).expect("this vCPU's redistributor");
    } else {
        g.gicd_barrier();
    }
}

/// This vCPU's `GICR_ISPENDR0` (v3) or banked `GICD_ISPENDR0` (v2): the
/// pending SGIs and PPIs, one bit each (`arm-gic` reads no pending state).
pub fn private_pending() -> u32 {
    if v2() {
        word!(view::<GicdV2>(GICD_BASE), ispendr, 0)
    } else {
        word!(sgi_frame(), ispendr, 0)
    }
}

/// This vCPU's `GICR_ISENABLER0` (v3) or banked `GICD_ISENABLER0` (v2):
/// the enabled SGIs and PPIs, one bit each.
pub fn private_enabled() -> u32 {
    if v2() {
        word!(view::<GicdV2>(GICD_BASE), isenabler, 0)
    } else {
        word!(sgi_frame(), isenabler, 0)
    }
}

/// Configures an SPI as edge-triggered (`true`) or level-sensitive.
pub fn configure_spi(intid: u32, edge: bool) {
    assert!(intid >= 32, "INTID {intid} is not an SPI");
    let t = if edge { Trigger::Edge } else { Trigger::Level };
    if v2() {
        gic_v2().set_trigger(id(intid), t);
    } else {
        gic_v3().set_trigger(id(intid), None, t).expect("an SPI");
    }
}

/// Routes an SPI to the vCPU with affinity `aff` (as [`affinity`] packs it;
/// v2: to that vCPU's CPU interface, by Aff0).
pub fn route_spi(intid: u32, aff: u32) {
    assert!(intid >= 32, "INTID {intid} is not an SPI");
    if !v2() {
        let mut g = gic_v3();
        g.distributor()
            .set_routing(id(intid), Some(mpidr(aff)))
            .expect("an SPI");
        return;
    }
    // arm-gic has no GICD_ITARGETSR access: set this SPI's byte by hand.
    let mask = u32::from(1u8.checked_shl(aff & 0xff).expect("8 CPU interfaces"));
    let shift = 8 * (intid % 4);
    let mut d = view::<GicdV2>(GICD_BASE);
    let mut t = field!(d, itargetsr);
    let mut w = t.get(intid as usize / 4).expect("an SPI");
    // SAFETY: reading or writing GICD_ITARGETSR only routes SPIs.
    unsafe {
        let v = w.read_unsafe() & !(0xff << shift);
        w.write_unsafe(v | (mask << shift));
    }
}

/// Sets the priority mask (`ICC_PMR_EL1`, `GICC_PMR`): only interrupts with
/// a priority value strictly lower than `mask` are signalled.
pub fn set_priority_mask(mask: u8) {
    if v2() {
        gic_v2().set_priority_mask(mask);
    } else {
        GicCpuInterface::set_priority_mask(mask);
        isb();
    }
}

/// The priority mask as the CPU interface holds it.
pub fn priority_mask() -> u8 {
    if v2() {
        gic_v2().get_priority_mask()
    } else {
        GicCpuInterface::get_priority_mask()
    }
}

/// The running priority (`ICC_RPR_EL1`, `GICC_RPR`; 0xff when nothing is
/// active), which `arm-gic` does not read.
pub fn running_priority() -> u8 {
    if !v2() {
        return read_icc_rpr_el1().priority();
    }
    let mut c = view::<Gicc>(GICC_BASE);
    // SAFETY: reading GICC_RPR has no side effect.
    unsafe { field!(c, rpr).read_unsafe() as u8 }
}

/// The highest-priority pending interrupt forwarded to this CPU interface
/// (`ICC_HPPIR1_EL1`, or `GICC_HPPIR`, which `GicV2` does not read, without
/// its CPUID bits), or [`SPURIOUS`].
pub fn highest_pending() -> u32 {
    if !v2() {
        let p = GicCpuInterface::get_pending_interrupt(InterruptGroup::Group1);
        return p.map_or(SPURIOUS, u32::from);
    }
    let mut c = view::<Gicc>(GICC_BASE);
    // SAFETY: reading GICC_HPPIR has no side effect.
    unsafe { field!(c, hppir).read_unsafe() & 0x3ff }
}

/// An acknowledged interrupt, as [`ack`] read it; give it back to [`eoi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// What `arm-gic` acknowledged: the INTID, or on GICv2 the whole
    /// `GICC_IAR` (an SGI's CPUID included), which its EOI writes back.
    iar: IntId,
    v2: bool,
}

impl Ack {
    /// The INTID ([`SPURIOUS`] when nothing was pending).
    pub fn intid(self) -> u32 {
        u32::from(self.iar) & if self.v2 { 0x3ff } else { !0 }
    }

    /// GICv2 SGIs: the sending CPU interface's number (`GICC_IAR.CPUID`
    /// \[12:10\]); `None` on GICv3 (`ICC_IAR1_EL1` does not name it) and for
    /// other interrupts.
    pub fn source(self) -> Option<usize> {
        let cpuid = (u32::from(self.iar) >> 10) & 7;
        (self.v2 && self.intid() < 16).then_some(cpuid as usize)
    }
}

/// Acknowledges the highest-priority pending interrupt (`ICC_IAR1_EL1` or
/// `GICC_IAR`): it becomes active and the running priority rises to its
/// priority. [`Ack::intid`] is [`SPURIOUS`] when there was none.
pub fn ack() -> Ack {
    let v2 = v2();
    let iar = if v2 {
        gic_v2().get_and_acknowledge_interrupt(InterruptGroup::Group0)
    } else {
        GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1)
    };
    // arm-gic orders nothing: the read must complete before any access the
    // handler makes on its behalf (Linux's gic_read_iar, gic_handle_irq).
    dsb_sy();
    let iar = iar.unwrap_or(IntId::SPECIAL_NONE);
    Ack { iar, v2 }
}

/// Ends an acknowledged interrupt (EOImode 0: priority drop and
/// deactivation): `ICC_EOIR1_EL1`, or `GICC_EOIR` with the whole `GICC_IAR`.
pub fn eoi(a: Ack) {
    if a.v2 {
        gic_v2().end_interrupt(a.iar, InterruptGroup::Group0);
    } else {
        GicCpuInterface::end_interrupt(a.iar, InterruptGroup::Group1);
        isb();
    }
}

/// Where an SGI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgiTarget {
    /// The vCPUs whose Aff0 bits are set in the mask (0..16), sharing this
    /// vCPU's Aff3.Aff2.Aff1 (v2: 0..8, each its CPU interface).
    List(u16),
    /// Every vCPU but this one.
    Others,
}

/// Sends SGI `intid` (0..16) to `target` through `ICC_SGI1R_EL1` or
/// `GICD_SGIR`. Memory writes made before the call are visible to the
/// targets before they can take the SGI (DSB first, as Linux's
/// `gic_ipi_send_mask` in both drivers).
pub fn send_sgi(intid: u32, target: SgiTarget) {
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb ish", options(nostack)) };
    let sgi = IntId::sgi(intid);
    if v2() {
        // GicV2's SgiTarget::All lists every CPU interface, this one too:
        // "all but self" is its filter. (GicV2 also sets NSATT, which a GIC
        // without Security Extensions, as the VM's, ignores.)
        let (target_list_filter, target_list) = match target {
            SgiTarget::Others => (SgiTargetListFilter::ForwardOthersOnly, 0),
            SgiTarget::List(list) => (SgiTargetListFilter::CPUTargetList, list & 0xff),
        };
        let target = SgiTargetV2::List {
            target_list_filter,
            target_list,
        };
        gic_v2().send_sgi(sgi, target);
        return;
    }
    let target = match target {
        SgiTarget::Others => SgiTargetV3::All,
        SgiTarget::List(target_list) => {
            let m = read_mpidr_el1();
            let (affinity3, affinity2, affinity1) = (m.aff3(), m.aff2(), m.aff1());
            SgiTargetV3::List {
                affinity3,
                affinity2,
                affinity1,
                target_list,
            }
        }
    };
    GicCpuInterface::send_sgi(sgi, target, SgiTargetGroup::CurrentGroup1).expect("an SGI");
    isb();
}

/// Sends SGI `intid` to the vCPU with Aff0 `cpu` (in this vCPU's cluster).
pub fn send_sgi_to(intid: u32, cpu: usize) {
    send_sgi(intid, SgiTarget::List(1 << cpu));
}

/// Clears PSTATE.I: IRQs can be taken (`arm_gic::irq_enable` would unmask
/// D, A and F too).
pub fn irq_unmask() {
    // SAFETY: unmasking IRQs only lets the installed vectors run.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
}

/// Sets PSTATE.I: IRQs stay pending.
pub fn irq_mask() {
    // SAFETY: masking IRQs has no effect on memory.
    unsafe { asm!("msr daifset, #2", options(nostack)) };
}

/// Waits for an interrupt (DSB, WFI): returns when one is pending even if
/// PSTATE.I masks it.
pub fn wfi() {
    dsb_sy();
    arm_gic::wfi();
}

/// The virtual counter (`CNTVCT_EL0`), read after an ISB so it is not
/// speculated ahead of earlier instructions.
pub fn counter() -> u64 {
    isb();
    read_cntvct_el0().bits()
}

/// The counter frequency (`CNTFRQ_EL0`), in Hz.
pub fn counter_hz() -> u64 {
    read_cntfrq_el0().bits()
}

/// Busy-waits for `us` microseconds of the virtual counter.
pub fn delay_us(us: u64) {
    let end = counter() + counter_hz() * us / 1_000_000;
    while counter() < end {
        core::hint::spin_loop();
    }
}

/// Polls `cond` until it holds or `ms` milliseconds of the virtual counter
/// have passed; returns whether it held.
pub fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = counter() + counter_hz() * ms / 1000;
    loop {
        if cond() {
            return true;
        }
        if counter() >= end {
            return cond();
        }
        core::hint::spin_loop();
    }
}

/// The EL1 virtual timer (`CNTV_*_EL0`).
pub mod vtimer {
    use arm_sysregs::el0::accessors::{
        read_cntv_cval_el0, write_cntv_ctl_el0, write_cntv_cval_el0,
    };
    use arm_sysregs::el0::registers::{CntvCtlEl0, CntvCvalEl0};

    /// CNTV_CTL_EL0.ENABLE.
    pub const ENABLE: u64 = CntvCtlEl0::ENABLE.bits();

    /// Writes `CNTV_CVAL_EL0`: the timer fires when `CNTVCT_EL0` >= `cval`.
    pub fn set_cval(cval: u64) {
        write_cntv_cval_el0(CntvCvalEl0::from_bits_retain(cval));
        super::isb();
    }

    /// Reads `CNTV_CVAL_EL0`.
    pub fn cval() -> u64 {
        read_cntv_cval_el0().bits()
    }

    /// Writes `CNTV_CTL_EL0`.
    pub fn set_ctl(ctl: u64) {
        write_cntv_ctl_el0(CntvCtlEl0::from_bits_retain(ctl));
        super::isb();
    }
}

/// The EL1 physical timer (`CNTP_*_EL0`) and the physical counter.
pub mod ptimer {
    use core::arch::asm;

    /// CNTP_CTL_EL0.ENABLE.
    pub const ENABLE: u64 = 1;
    /// CNTP_CTL_EL0.ISTATUS.
    pub const ISTATUS: u64 = 1 << 2;

    /// Writes `CNTP_CVAL_EL0`: the timer fires when `CNTPCT_EL0` >= `cval`.
    pub fn set_cval(cval: u64) {
        // SAFETY: a timer register write; no memory effect.
        unsafe { asm!("msr cntp_cval_el0, {0}", "isb", in(reg) cval, options(nostack)) };
    }

    /// Reads `CNTP_CVAL_EL0`.
    pub fn cval() -> u64 {
        let v: u64;
        // SAFETY: a timer register read.
        unsafe { asm!("mrs {0}, cntp_cval_el0", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// Writes `CNTP_TVAL_EL0`: the timer fires `ticks` counter ticks from now.
    pub fn set_tval(ticks: u32) {
        // SAFETY: a timer register write; no memory effect.
        unsafe {
            asm!("msr cntp_tval_el0, {0}", "isb", in(reg) u64::from(ticks), options(nostack))
        };
    }

    /// Reads `CNTP_TVAL_EL0` (signed: CVAL - CNTPCT, truncated to 32 bits).
    pub fn tval() -> i32 {
        let v: u64;
        // SAFETY: a timer register read.
        unsafe { asm!("isb", "mrs {0}, cntp_tval_el0", out(reg) v, options(nomem, nostack)) };
        v as u32 as i32
    }

    /// Writes `CNTP_CTL_EL0`.
    pub fn set_ctl(ctl: u64) {
        // SAFETY: a timer register write; no memory effect.
        unsafe { asm!("msr cntp_ctl_el0, {0}", "isb", in(reg) ctl, options(nostack)) };
    }

    /// Reads `CNTP_CTL_EL0`.
    pub fn ctl() -> u64 {
        let v: u64;
        // SAFETY: a timer register read.
        unsafe { asm!("isb", "mrs {0}, cntp_ctl_el0", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// The physical counter (`CNTPCT_EL0`), read after an ISB.
    pub fn counter() -> u64 {
        let v: u64;
        // SAFETY: a counter read.
        unsafe { asm!("isb", "mrs {0}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
        v
    }
}
