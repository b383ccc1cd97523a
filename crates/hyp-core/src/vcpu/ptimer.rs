//! The EL1 physical timer (CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0) of a
//! guest vCPU: the hardware timer itself, given to the vCPU lazily.
//!
//! A vCPU starts with CNTHCTL_EL2.EL1PCEN clear ([`CNTHCTL`]), so its first
//! CNTP_* access traps (EC 0x18). That access marks the vCPU a timer user
//! ([`PTimer::used`]), loads its timer state (reset: 0, 0) and sets EL1PCEN
//! ([`CNTHCTL_PTIMER`]); the access is then executed again, directly. From
//! then on every run of the vCPU loads CNTP_CVAL/CTL at its start and saves
//! them at its end, where the timer is also disabled (CTL = 0) and EL1PCEN
//! cleared again, so neither the host nor another guest sees or is
//! interrupted by it, and a vCPU that moved CPUs takes its timer along. A
//! vCPU that never touches the timer costs one flag test per run start and
//! run end (KVM does the same save/restore for every vCPU, in
//! `timer_save_state`/`timer_restore_state`, arch/arm64/kvm/arch_timer.c).
//!
//! Its interrupt (PPI 30, the binding's non-secure physical timer, which
//! the guest's device tree advertises) is taken at EL2 while the vCPU runs
//! (HCR_EL2.IMO), masked at the redistributor ([`fired`]) and delivered as
//! a level-sensitive virtual PPI 30 sampled from CNTP_CTL_EL0 before each
//! entry ([`sample`]) until the level dropped, when the PPI is enabled
//! again: the virtual timer's scheme (`vcpu::gic::vgic_before_entry`), but
//! sampled only while `Cpu::timers_masked` says so (also after each
//! [`load`]), so that entries of other vCPUs share the virtual timer's one
//! test.
//!
//! Counter offset: every context runs with CNTVOFF_EL2 = 0 (`run::run_cpu`)
//! and FEAT_ECV's CNTPOFF_EL2 is not used, so a guest's physical and virtual
//! views of the counter are one and the same (CNTPCT_EL0 = CNTVCT_EL0), the
//! consistency KVM keeps with both offsets equal (`timer_set_offset`).
//!
//! The host vCPU keeps EL1PCEN clear: its CNTP_* accesses stay UNDEFINED.

#[cfg(target_arch = "aarch64")]
pub use on_cpu::*;

/// A guest vCPU's EL1 physical timer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PTimer {
    /// The vCPU has accessed the timer: it is switched with the vCPU.
    pub used: bool,
    /// CNTP_CTL_EL0 (ENABLE, IMASK; ISTATUS is read-only).
    pub ctl: u64,
    /// CNTP_CVAL_EL0.
    pub cval: u64,
}

impl PTimer {
    /// A vCPU's timer at reset: unused, disabled, compare value 0.
    pub const RESET: Self = Self {
        used: false,
        ctl: 0,
        cval: 0,
    };
}

/// CNTP_CTL_EL0 / CNTV_CTL_EL0 ENABLE (bit 0).
const CTL_ENABLE: u64 = 1;
/// IMASK (bit 1).
const CTL_IMASK: u64 = 1 << 1;
/// ISTATUS (bit 2).
const CTL_ISTATUS: u64 = 1 << 2;

/// The level of a generic timer's interrupt for control value `ctl`
/// (Arm ARM D12.8.x "Operation of the timers": asserted while ENABLE = 1,
/// IMASK = 0 and ISTATUS = 1).
#[must_use]
pub const fn level(ctl: u64) -> bool {
    ctl & (CTL_ENABLE | CTL_IMASK | CTL_ISTATUS) == CTL_ENABLE | CTL_ISTATUS
}

/// The counter value a timer with control `ctl` and compare value `cval`
/// fires at, or `u64::MAX` when it is disabled or masked.
#[must_use]
pub const fn deadline(ctl: u64, cval: u64) -> u64 {
    if ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE {
        cval
    } else {
        u64::MAX
    }
}

/// The register effects (AArch64 only).
#[cfg(target_arch = "aarch64")]
mod on_cpu {
    use super::{deadline, level, PTimer, CTL_ENABLE, CTL_IMASK};
    use crate::arch::gic::{self, Phys};
    use crate::vcpu::ctx::{Cpu, TIMER_P};
    use crate::vcpu::traps::{CNTHCTL, CNTHCTL_PTIMER};
    use barriers::{regs, GuestPending};

    /// The vCPU's first CNTP_* access trapped: from now on it owns the timer.
    /// Loads its (reset) state and lets its accesses through; the access runs
    /// again after the entry ERET, which synchronises these writes.
    pub fn first_use(c: &mut Cpu<'_>, t: &mut PTimer, pending: &mut GuestPending) {
        t.used = true;
        load(c, t, pending);
    }

    /// At the start of a vCPU's run: its timer goes onto the CPU, if it uses one.
    #[inline(always)]
    pub fn load(c: &mut Cpu<'_>, t: &PTimer, pending: &mut GuestPending) {
        if t.used {
            load_used(c, t, pending);
        }
    }

    /// [`load`] for a vCPU that uses the timer: out of line, so a vCPU that
    /// does not pays one test.
    #[cold]
    #[inline(never)]
    fn load_used(c: &mut Cpu<'_>, t: &PTimer, pending: &mut GuestPending) {
        // Its level may be high (or have dropped on another CPU): sample it
        // before each entry until it is low.
        c.timers_masked |= TIMER_P;
        let e2h = &c.sync.hcr;
        // The compare value before the enable: the timer never runs with a
        // previous owner's compare value.
        pending.add(regs::CntpCvalEl0::write(e2h, t.cval));
        pending.add(regs::CntpCtlEl0::write(e2h, t.ctl));
        // SAFETY: lets this vCPU, which owns the timer now, access it.
        pending.add(unsafe { regs::CnthctlEl2::write(CNTHCTL_PTIMER) });
    }

    /// At the end of a vCPU's run: saves its timer and takes it off the CPU
    /// (disabled, so its interrupt drops; accesses trap again). `pending` is
    /// the host's, whose entry ERET synchronises the writes.
    #[inline(always)]
    pub fn put(c: &Cpu<'_>, t: &mut PTimer, pending: &mut GuestPending) {
        if t.used {
            put_used(c, t, pending);
        }
    }

    /// [`put`] for a vCPU that uses the timer (out of line).
    #[cold]
    #[inline(never)]
    fn put_used(c: &Cpu<'_>, t: &mut PTimer, pending: &mut GuestPending) {
        let e2h = &c.sync.hcr;
        t.ctl = regs::CntpCtlEl0::read(e2h) & (CTL_ENABLE | CTL_IMASK);
        t.cval = regs::CntpCvalEl0::read(e2h);
        pending.add(regs::CntpCtlEl0::write(e2h, 0));
        // The compare value goes too: the next owner (or the host, which
        // cannot read it) loads its own before any read.
        pending.add(regs::CntpCvalEl0::write(e2h, 0));
        // SAFETY: sets the trap again.
        pending.add(unsafe { regs::CnthctlEl2::write(CNTHCTL) });
    }

    /// Before an entry while [`TIMER_P`] is set (the PPI fired, or a vCPU
    /// that uses the timer was loaded): samples the timer's output into the
    /// vGIC (level-sensitive PPI 30); once it is low, enables the physical
    /// PPI again and stops sampling (the next rise is taken at EL2,
    /// [`fired`]). A vCPU that does not use the timer reads CNTP_CTL_EL0 = 0
    /// (`put`): low.
    #[cold]
    #[inline(never)]
    pub fn sample(c: &mut Cpu<'_>, g: &Phys, vg: &vgic::Vgic, vcpu: usize) {
        let lvl = level(regs::CntpCtlEl0::read(&c.sync.hcr));
        let _ = vg.set_level(vcpu, gic::PTIMER_PPI, lvl);
        if !lvl {
            g.ppi_enable(c.idx, gic::PTIMER_PPI, true);
            c.timers_masked &= !TIMER_P;
        }
    }

    /// PPI 30 was taken at EL2: masked at the redistributor until the
    /// level, delivered virtually, drops ([`sample`]).
    #[cold]
    pub fn fired(c: &mut Cpu<'_>, g: &Phys) {
        g.ppi_enable(c.idx, gic::PTIMER_PPI, false);
        c.timers_masked |= TIMER_P;
    }

    /// The counter value at which the running vCPU's virtual or physical timer
    /// (if it uses it) fires, `u64::MAX` for none: when a waiting vCPU must run
    /// again. Both timers count the same counter (CNTVOFF_EL2 = 0).
    pub fn wake_deadline(c: &Cpu<'_>, t: &PTimer) -> u64 {
        let e2h = &c.sync.hcr;
        let v = deadline(regs::CntvCtlEl0::read(e2h), regs::CntvCvalEl0::read(e2h));
        if !t.used {
            return v;
        }
        let p = deadline(regs::CntpCtlEl0::read(e2h), regs::CntpCvalEl0::read(e2h));
        v.min(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_needs_enable_unmasked_and_status() {
        assert!(level(0b101));
        for ctl in [0b000, 0b001, 0b100, 0b111, 0b011, 0b110] {
            assert!(!level(ctl), "{ctl:#b}");
        }
    }

    #[test]
    fn deadline_only_when_enabled_and_unmasked() {
        assert_eq!(deadline(0b001, 42), 42);
        assert_eq!(deadline(0b101, 42), 42);
        assert_eq!(deadline(0b011, 42), u64::MAX);
        assert_eq!(deadline(0b000, 42), u64::MAX);
    }
}
