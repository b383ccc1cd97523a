//! The hypervisor's own EL2 stage-1 translation and per-CPU EL2 bring-up:
//! an identity map of the board's RAM (normal write-back) and devices
//! (Device-nGnRE) built with `s2mm`'s EL2 regime, the same walker as stage 2.

use super::{sysreg, tables};
use crate::platform::Platform;
use barriers::isb;
use barriers::regs;
use barriers::sync::{EosChecked, GicSre, HcrAny, Synced};
use s2mm::desc::El2Format;
use s2mm::{Attrs, El2Stage1, MemType, Pa, Perms};
use spin::Once;

/// EL2 virtual address size: 39 bits, three levels from level 1.
const VA_BITS: u32 = 39;

/// TTBR0_EL2 and TCR_EL2 for every CPU, set by `build`.
static EL2_REGS: Once<(u64, u64)> = Once::new();

unsafe extern "C" {
    /// First byte of the image and end of its text, from the board's linker script.
    static __image_start: u8;
    static __text_end: u8;
}

/// SCTLR_EL2 with M, C, I, SA, EOS and EIS set (RES1 bits included; E2H = 0 layout).
pub const SCTLR_EL2_ON: u64 = 0x30c5_0838 | 1 | (1 << 2) | (1 << 12);

/// Builds the hypervisor's EL2 stage-1 with `s2mm`'s EL2 regime, on the boot
/// CPU with the MMU off: RAM identity-mapped read/write and execute-never,
/// except the image's text, which is read/execute (W^X); device regions as
/// Device-nGnRE. Tables come from the page pool (`tables::init` first).
///
/// # Panics
///
/// If the board's regions cannot be mapped (a board bug).
pub fn build(p: &Platform) {
    let text = (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__text_end) as u64,
    );
    let mut pool = tables::POOL.lock();
    let mut alloc = tables::Tables(&mut pool);
    let mut el2 = El2Stage1::new(&mut alloc, VA_BITS).expect("EL2 root table");
    let mut map = |base: u64, end: u64, attrs: Attrs| {
        if end > base {
            if let Err(e) = el2.map_identity(&mut alloc, Pa(base), end - base, attrs) {
                panic!("EL2 map {base:#x}..{end:#x}: {e:?}");
            }
        }
    };
    for r in p.ram {
        if r.base <= text.0 && text.1 <= r.end() {
            map(r.base, text.0, Attrs::RAM_RW);
            map(
                text.0,
                text.1,
                Attrs {
                    mem: MemType::Normal,
                    perms: Perms::RX,
                },
            );
            map(text.1, r.end(), Attrs::RAM_RW);
        } else {
            map(r.base, r.end(), Attrs::RAM_RW);
        }
    }
    for d in p.devices {
        map(d.base, d.end(), Attrs::DEVICE_RW);
    }
    let tcr = el2
        .tcr_el2(sysreg::id_aa64mmfr0_el1() & 0xf)
        .expect("CPU reports a reserved PARange");
    EL2_REGS.call_once(|| (el2.ttbr0_el2(), tcr));
    // The tables were written with the MMU (and so the data cache) off: make
    // sure no stale line shadows them once walks are cacheable. At boot the
    // pool has handed out a contiguous run from its base.
    let (base, used) = (alloc.0.base(), alloc.0.used() as u64);
    barriers::maint::clean_inval_to_poc(base, used * 4096);
}

/// What a CPU holds once its EL2 context is up: proof that HCR_EL2 (E2H,
/// TGE) is synchronised, which `*_EL1`-named accesses need, and proof that
/// exception entry and ERET are context synchronisation events.
#[derive(Debug)]
pub struct CpuSync {
    /// HCR_EL2 synchronised (E2H = TGE = 0 from here on).
    pub hcr: Synced<HcrAny>,
    /// SCTLR_EL2.EIS = EOS = 1, checked.
    pub eos: EosChecked,
    /// ICC_SRE_EL2.SRE = 1 synchronised (GICv3 boards only).
    pub gic: Option<Synced<GicSre>>,
}

/// Sets up this CPU's EL2 context: HCR_EL2 (the guests' value, written once
/// and never changed while at EL2), MMU and caches on, VBAR_EL2, TPIDR_EL2.
///
/// # Safety
///
/// `tpidr` must point at this CPU's per-CPU block, live forever; `build` must
/// have run.
pub unsafe fn cpu_on(hcr: u64, vectors: u64, tpidr: u64, gic_v3: bool) -> CpuSync {
    let &(ttbr0, tcr) = EL2_REGS
        .get()
        .expect("mmu::build runs before any CPU turns its MMU on");
    // SAFETY: E2H = TGE = 0 (nVHE) and only guest traps and routing; EL2 is
    // not yet translating anything the change could affect.
    let hcr_token = unsafe { regs::HcrEl2::write(hcr) };
    // ISB: the TCR_EL2 layout below depends on E2H (invariant 6).
    let hcr = isb(hcr_token);
    // SAFETY: the MMU is still off; the table maps all of RAM (this code,
    // stacks, the table itself) by identity with the attributes in MAIR.
    let translation = unsafe {
        (
            regs::MairEl2::write(El2Format::MAIR_EL2),
            regs::TcrEl2::write(&hcr, tcr),
            regs::Ttbr0El2::write(ttbr0),
        )
    };
    // ISB: the translation turned on below uses MAIR/TCR/TTBR0_EL2.
    let _ = isb(translation);
    barriers::maint::flush_el2_tlb_before_mmu_on();
    // SAFETY: identity map, caches on, EIS/EOS set (SCTLR_EL2_ON); VBAR_EL2
    // points at the linked vector table; `tpidr` per the contract.
    let (sctlr, vbar) = unsafe {
        regs::TpidrEl2::write(tpidr);
        (
            regs::SctlrEl2::write(SCTLR_EL2_ON),
            regs::VbarEl2::write(vectors),
        )
    };
    // ISB: every following EL2 access depends on SCTLR_EL2.M/C; exceptions
    // taken at EL2 from here on use VBAR_EL2.
    let (mmu_on, _) = isb((sctlr, vbar));
    barriers::sync::uses::el2_memory(&mmu_on);
    // ICC_SRE_EL2: SRE (bit 0, system-register CPU interface at EL2) and
    // Enable (bit 3, EL1 may use ICC_SRE_EL1). Only where a GICv3 CPU
    // interface exists: on a GICv2 system the register is UNDEFINED.
    let gic = gic_v3.then(|| {
        // SAFETY: SRE = 1 as the contract requires; EL1 gets the system
        // register interface (its accesses go to the virtual interface).
        isb(unsafe { regs::IccSreEl2::write(0b1001) })
    });
    CpuSync {
        hcr,
        eos: barriers::sync::check_eos(),
        gic,
    }
}
