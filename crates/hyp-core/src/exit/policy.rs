//! Exit policy: what a synchronous exit means and what to do about it.
//!
//! Three steps handle every synchronous exit: [`decode`] turns the syndrome
//! registers and the vCPU's general-purpose registers into an [`Exit`];
//! [`decide`] turns that `Exit` and the facts about the exiting context
//! ([`Facts`]) into a [`Decision`]; `exit::effects` (AArch64 only) carries it
//! out, and is the only step that touches registers, locks or tables. The
//! first two are pure and tested row by row on the host
//! (`tests/exit_policy.rs`).

use crate::arch::esr::{self, DataAbort, Esr, MmioAccess, SysRegAccess};
use crate::calls::smccc::{self as call, Hypercall};
use crate::exit::sysreg::{self, TrappedSysReg, VmReg};
use crate::vcpu::debug;
use crate::vcpu::inject::Injected;
use crate::vcpu::Who;
use crate::vm::control::RunEnd;
use crate::vm::uart;
use hyp_abi::exit as run_exit;
use hyp_abi::layout;

/// The syndrome registers of a synchronous exit (ESR_EL2, FAR_EL2,
/// HPFAR_EL2), read once per exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trap {
    /// ESR_EL2.
    pub esr: Esr,
    /// FAR_EL2.
    pub far: u64,
    /// HPFAR_EL2.
    pub hpfar: u64,
}

impl Trap {
    /// The faulting IPA of a stage-2 abort.
    #[must_use]
    pub const fn ipa(&self) -> u64 {
        esr::fault_ipa(self.hpfar, self.far)
    }
}

/// A synchronous exit, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// HVC, or an SMC trapped by HCR_EL2.TSC, with x0..x3.
    Call {
        /// Trapped SMC (its preferred return address is the SMC itself).
        smc: bool,
        /// x0..x3.
        x: [u64; 4],
    },
    /// A stage-2 data abort.
    DataAbort {
        /// The access, as the syndrome describes it.
        abort: DataAbort,
        /// FAR_EL2: the faulting virtual address.
        far: u64,
        /// WnR as the syndrome reports it (meaningful whatever ISV says).
        write: bool,
        /// A translation fault (DFSC 0b0001xx): nothing is mapped there.
        translation: bool,
        /// For a syndrome-valid write, the register's value (XZR: 0).
        value: u64,
        /// Length of the trapped instruction: 4, or 2 for a 16-bit Thumb
        /// instruction of AArch32 EL0 (ESR_EL2.IL).
        len: u64,
    },
    /// A stage-2 instruction abort.
    InstAbort {
        /// FAR_EL2.
        far: u64,
        /// Faulting IPA.
        ipa: u64,
        /// A translation fault (IFSC 0b0001xx).
        translation: bool,
    },
    /// WFI (`wfe`: false) or WFE (true), trapped by HCR_EL2.TWI/TWE.
    Wfx {
        /// WFE rather than WFI.
        wfe: bool,
        /// Length of the trapped instruction (4, or 2 in Thumb).
        len: u64,
    },
    /// First FP/SIMD use while CPTR_EL2.TFP traps it.
    Fp,
    /// An SVE instruction or ZCR_EL1 access while CPTR_EL2.TZ traps it.
    Sve,
    /// A trapped MSR/MRS or system instruction.
    SysReg {
        /// The access.
        access: SysRegAccess,
        /// For a write, the register's value (XZR: 0).
        value: u64,
    },
    /// Any other exception class (injected as UNDEFINED).
    Unknown,
}

/// A decision that steps past the trapped instruction steps `len` bytes.
const fn past(d: Decision, len: u64) -> Decision {
    if d.pc_step == INSN {
        Decision {
            pc_step: len,
            action: d.action,
        }
    } else {
        d
    }
}

impl Exit {
    /// The IPA of a stage-2 translation fault (data or instruction abort):
    /// nothing was mapped there when the access was made.
    #[must_use]
    pub const fn translation_fault_ipa(&self) -> Option<u64> {
        match *self {
            Exit::DataAbort {
                translation: true,
                abort:
                    DataAbort::Mmio(MmioAccess { ipa, .. })
                    | DataAbort::NoSyndrome { ipa, .. }
                    | DataAbort::Stage1Walk { ipa },
                ..
            }
            | Exit::InstAbort {
                translation: true,
                ipa,
                ..
            } => Some(ipa),
            _ => None,
        }
    }
}

/// DFSC/IFSC 0b0001xx: a translation fault at level xx.
const fn is_translation_fault(esr: Esr) -> bool {
    esr.iss() & 0x3c == 0x04
}

/// Decodes a synchronous exit from its syndrome and the vCPU's x0..x30.
#[must_use]
#[inline]
pub fn decode(trap: &Trap, x: &[u64; 31]) -> Exit {
    let reg = |r: u8| if r == 31 { 0 } else { x[r as usize] };
    let esr = trap.esr;
    match esr.ec() {
        esr::ec::HVC64 | esr::ec::SMC64 => Exit::Call {
            smc: esr.ec() == esr::ec::SMC64,
            x: [x[0], x[1], x[2], x[3]],
        },
        esr::ec::DABT_LOW => {
            let abort = esr::decode_data_abort(esr, trap.hpfar, trap.far);
            let value = match abort {
                DataAbort::Mmio(m) if m.write => reg(m.reg),
                _ => 0,
            };
            Exit::DataAbort {
                abort,
                far: trap.far,
                write: esr.iss() & esr::dabt::WNR != 0,
                translation: is_translation_fault(esr),
                value,
                len: esr.insn_len(),
            }
        }
        esr::ec::IABT_LOW => Exit::InstAbort {
            far: trap.far,
            ipa: trap.ipa(),
            translation: is_translation_fault(esr),
        },
        esr::ec::WFX => Exit::Wfx {
            wfe: esr.iss() & 1 != 0,
            len: esr.insn_len(),
        },
        esr::ec::FP_ASIMD => Exit::Fp,
        esr::ec::SVE => Exit::Sve,
        esr::ec::SYS64 => {
            let access = esr::decode_sysreg(esr);
            let value = if access.read { 0 } else { reg(access.reg) };
            Exit::SysReg { access, value }
        }
        _ => Exit::Unknown,
    }
}

/// The virtual GIC a guest has, as far as the policy needs it: which frames
/// it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgicFrames {
    /// GICv3 (distributor + one redistributor per vCPU) or GICv2
    /// (distributor; the CPU interface is the hardware's GICV frame).
    pub version: vgic::Version,
    /// vCPUs, one redistributor frame each (GICv3).
    pub nr_vcpus: usize,
}

impl VgicFrames {
    /// Which frame `ipa` falls in, and the offset in it. Always inlined:
    /// the vector's fast path calls it for every vGIC read (a call there
    /// measured 8 instructions more per read).
    #[must_use]
    #[inline(always)]
    pub fn region(&self, ipa: u64) -> Option<(vgic::Region, u64)> {
        // Each frame as an offset from its base below its size: one
        // unsigned compare each (an IPA below the base wraps to a huge
        // offset). The distributor first: the redistributors' size needs a
        // multiplication. GICv2 has no redistributors.
        let dist_size = match self.version {
            vgic::Version::V3 => vgic::DIST_SIZE_V3,
            vgic::Version::V2 => vgic::DIST_SIZE_V2,
        };
        let dist_off = ipa.wrapping_sub(layout::GICD_IPA);
        if dist_off < dist_size {
            return Some((vgic::Region::Dist, dist_off));
        }
        let redist_off = ipa.wrapping_sub(layout::GICR_IPA);
        let redist_size = self.nr_vcpus as u64 * vgic::REDIST_FRAME_SIZE;
        (self.version == vgic::Version::V3 && redist_off < redist_size)
            .then_some((vgic::Region::Redist, redist_off))
    }
}

/// What the policy may ask about the exiting context. Each answer may cost
/// a lock, so the policy asks only for what the exit at hand needs.
pub trait Facts {
    /// Whose exit this is.
    fn who(&self) -> Who;
    /// How many vCPUs a PSCI target may name: the VM's vCPUs, or for the
    /// host the physical CPUs.
    fn nr_vcpus(&self) -> usize;
    /// A protected VM.
    fn protected(&self) -> bool;
    /// Whether `ipa` lies in memory given to the VM.
    fn is_ram(&self, ipa: u64) -> bool;
    /// The VM's virtual GIC, if it has one.
    fn vgic(&self) -> Option<VgicFrames>;
    /// Whether the VM's access to `ipa` in the host's MMIO window may reach
    /// the host: always for a normal VM, for a protected one only in a page
    /// it guard-mapped (MMIO_GUARD). One fact, so one look at the VM.
    fn mmio_to_host(&self, ipa: u64) -> bool;
}

/// What to do about an exit. Beside each, the PC moves by
/// [`Decision::pc_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more: the context resumes.
    Resume,
    /// Answer a call: x0..x3 get these values.
    Return([u64; 4]),
    /// Answer a call: x0 gets this value, x1..x3 keep theirs.
    ReturnX0(u64),
    /// Write `value` to register `rt` (an emulated read; never XZR).
    Load {
        /// Destination register.
        rt: u8,
        /// The value read.
        value: u64,
    },
    /// Inject a synchronous exception into the context's EL1.
    Inject(Injected),
    /// The host touched memory it does not own (counted as a denied
    /// access): inject the abort.
    DenyHost(Injected),
    /// A translation fault in guest RAM: map the page if it was given lazily
    /// and retry the access; otherwise (see [`decide_unmapped`]) handle it as
    /// any other abort.
    MapOnDemand {
        /// Faulting IPA.
        ipa: u64,
    },
    /// An access to the emulated PL011 console.
    Uart {
        /// Offset in the UART window.
        off: u64,
        /// The access.
        access: MmioAccess,
        /// The value written.
        value: u64,
    },
    /// An access to the virtual distributor or a redistributor.
    Vgic {
        /// Which frame.
        region: vgic::Region,
        /// Offset in it.
        off: u64,
        /// The access.
        access: MmioAccess,
        /// The value written.
        value: u64,
    },
    /// A load from a device the host emulates: the vCPU waits for the
    /// host's MMIO completion; the host gets `record`.
    AwaitMmio {
        /// The access, completed later into its register.
        access: MmioAccess,
        /// The VCPU_RUN exit record.
        record: [u64; 4],
    },
    /// Back to the host with this VCPU_RUN result (guests only).
    ToHost(RunEnd, [u64; 4]),
    /// WFI: resume if the vCPU has a virtual interrupt to take, else yield
    /// to the host.
    Wfi,
    /// FP/SIMD trap: switch the FP registers to this context.
    Fp,
    /// A guest vCPU's SVE trap: switch its SVE state in (`vcpu::sve`).
    Sve,
    /// A guest vCPU's first EL1 physical timer access: give it the timer
    /// (`vcpu::ptimer`) and execute the access again.
    PTimerFirstUse,
    /// ICC_SGI1R_EL1 written: send virtual SGIs.
    Sgi1r {
        /// The value written.
        value: u64,
    },
    /// Read of an ID register: its sanitised value goes to `rt`.
    IdRead {
        /// The register.
        enc: esr::SysRegEnc,
        /// Destination register (never XZR).
        rt: u8,
    },
    /// DC ISW/CSW/CISW trapped by HCR_EL2.TSW.
    SetWay,
    /// A guest's access to a debug register (`vcpu::debug::trap`).
    Debug(debug::Access),
    /// A normal VM's access to a PMU register: the virtual PMU performs
    /// it (the PC steps past it) or refuses it (UNDEF injected at it).
    Pmu {
        /// The register.
        reg: crate::vcpu::pmu::GuestReg,
        /// Rt (an MRS's destination; XZR: 31).
        rt: u8,
        /// An MSR's value.
        write: Option<u64>,
    },
    /// A write trapped by HCR_EL2.TVM: perform it on the vCPU's behalf.
    TvmWrite {
        /// The register.
        reg: VmReg,
        /// The value.
        value: u64,
    },
    /// PSCI CPU_ON of vCPU `target` of the same VM (for the host: of
    /// physical CPU `target`).
    CpuOn {
        /// Target vCPU index.
        target: usize,
        /// Entry IPA.
        entry: u64,
        /// Its x0.
        context: u64,
    },
    /// PSCI AFFINITY_INFO of vCPU (for the host: physical CPU) `target`.
    AffinityInfo {
        /// Target vCPU index.
        target: usize,
    },
    /// MMIO_GUARD of the page at `ipa` in the host's MMIO window: record
    /// it in the VM's guard set and answer SUCCESS.
    MmioGuard {
        /// Page IPA.
        ipa: u64,
    },
    /// An SMCCC TRNG call: answered with entropy from this CPU.
    Trng(crate::calls::trng::TrngCall),
    /// A guest's YIELD: x0 = 0, and back to the host (`exit::YIELD`, not
    /// waiting).
    Yield,
    /// MEASUREMENT_SET from a protected VM: recorded if the caller's PC is
    /// in the firmware window and nothing was recorded yet.
    MeasurementSet,
    /// MEASUREMENT_GET: half `half` of item `item` of what was recorded.
    MeasurementGet {
        /// Kernel or initrd.
        item: u64,
        /// Which 16 bytes.
        half: u64,
    },
    /// MEM_SHARE (`share`) or MEM_UNSHARE of the page at `ipa`.
    Share {
        /// Page IPA.
        ipa: u64,
        /// Share rather than unshare.
        share: bool,
    },
    /// A host control call (function ID in the host range).
    HostCall,
    /// The host's CPU_OFF.
    HostCpuOff,
    /// The host's SYSTEM_OFF or SYSTEM_RESET: the machine powers off.
    SystemOff,
}

/// An [`Action`] and how far the PC moves past the trapped instruction
/// before it (0: the instruction is retried, or an exception is injected at
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Bytes to add to the PC first.
    pub pc_step: u64,
    /// What to do.
    pub action: Action,
}

/// Length of a trapped AArch64 instruction.
const INSN: u64 = 4;

const fn then(action: Action) -> Decision {
    Decision {
        pc_step: INSN,
        action,
    }
}

const fn at(action: Action) -> Decision {
    Decision { pc_step: 0, action }
}

/// Decides what to do about `exit` of the context `facts` describes.
#[must_use]
#[inline]
pub fn decide(exit: &Exit, facts: &impl Facts) -> Decision {
    let guest = matches!(facts.who(), Who::Guest { .. });
    match exit.translation_fault_ipa() {
        Some(ipa) if guest && ipa >= layout::RAM_IPA => at(Action::MapOnDemand { ipa }),
        _ => decide_unmapped(exit, facts),
    }
}

/// [`decide`] for an exit that is not (or no longer) a candidate for
/// [`Action::MapOnDemand`]: what an abort in guest RAM becomes when nothing
/// was given lazily there.
///
/// Always inlined: [`decide`] makes its call on every exit (the other
/// callers take the rare path of a lazy fault with nothing to map).
#[must_use]
#[inline(always)]
pub fn decide_unmapped(exit: &Exit, facts: &impl Facts) -> Decision {
    let who = facts.who();
    let guest = matches!(who, Who::Guest { .. });
    match *exit {
        Exit::Call { smc, x } => {
            // A trapped SMC's preferred return address is the SMC itself; an
            // HVC's is the next instruction.
            let pc_step = if smc { INSN } else { 0 };
            // Each arm builds its `Decision` in place: an `Action` chosen
            // first and moved into one afterwards took a `memcpy`.
            if guest {
                Decision {
                    pc_step,
                    action: guest_call(x, facts),
                }
            } else {
                Decision {
                    pc_step,
                    action: host_call(x, facts),
                }
            }
        }
        Exit::DataAbort {
            abort,
            far,
            write,
            value,
            len,
            ..
        } => past(data_abort(abort, far, write, value, facts), len),
        Exit::InstAbort { far, .. } => at(Action::Inject(Injected::InstAbort { far })),
        Exit::Wfx { wfe, len } => past(
            then(if guest && !wfe {
                Action::Wfi
            } else {
                Action::Resume
            }),
            len,
        ),
        Exit::Fp => at(Action::Fp),
        // The host has no SVE (hidden, TZ kept set): UNDEFINED.
        Exit::Sve if guest => at(Action::Sve),
        Exit::Sve => at(Action::Inject(Injected::Undefined)),
        Exit::SysReg { access, value } => sysreg_access(access, value, facts),
        Exit::Unknown => at(Action::Inject(Injected::Undefined)),
    }
}

/// A guest's SMCCC call.
#[inline(always)]
fn guest_call(x: [u64; 4], facts: &impl Facts) -> Action {
    // YIELD first: its cost is a VM switch's (the bench's `vcpu_switch`).
    if x[0] as u32 == hyp_abi::GUEST_YIELD {
        return Action::Yield;
    }
    let c = call::decode(x);
    if let Some(mut r) = call::stateless_answer(c) {
        if c == Hypercall::VendorFeatures && !facts.protected() {
            // MEM_SHARE/MEM_UNSHARE and MMIO_GUARD are protected-VM
            // services (as in pKVM, where only protected VMs get them): a
            // normal VM's memory is the host's already, and every access
            // in the host's window goes to the host. A guest learns
            // whether it is protected from this bitmap, as Linux's
            // pkvm_init_hyp_services does.
            r[0] &= !call::vendor::PROTECTED_ONLY;
        }
        return Action::Return(r);
    }
    if let Some(a) = power_call(c, facts) {
        return a;
    }
    match c {
        Hypercall::CpuOff => Action::ToHost(RunEnd::CpuOff, [run_exit::CPU_OFF, 0, 0, 0]),
        Hypercall::SystemOff => Action::ToHost(RunEnd::SystemOff, [run_exit::SYSTEM_OFF, 0, 0, 0]),
        Hypercall::SystemReset => {
            Action::ToHost(RunEnd::SystemReset, [run_exit::SYSTEM_RESET, 0, 0, 0])
        }
        Hypercall::MemShare { ipa } => Action::Share { ipa, share: true },
        Hypercall::MemUnshare { ipa } => Action::Share { ipa, share: false },
        Hypercall::Trng(t) => Action::Trng(t),
        // The firmware's measurement: only a protected VM has a firmware.
        Hypercall::MeasurementSet if facts.protected() => Action::MeasurementSet,
        Hypercall::Yield => Action::Yield,
        Hypercall::MeasurementGet { item, half } => Action::MeasurementGet { item, half },
        // MMIO guard (upstream Linux's one call, protected VMs only): a
        // protected VM's access in the host's window reaches the host only
        // for the pages it guarded (see `data_abort`). Its own RAM is
        // refused; any other device page succeeds (Linux guards every
        // ioremap, the emulated UART and vGIC frames included) but needs
        // no record: nothing outside the window is ever forwarded.
        Hypercall::MmioGuard { ipa } => {
            if !facts.protected() {
                Action::ReturnX0(call::NOT_SUPPORTED)
            } else if facts.is_ram(ipa) {
                Action::ReturnX0(call::SMCCC_RET_INVALID_PARAMETER)
            } else if host_mmio(ipa) {
                Action::MmioGuard { ipa }
            } else {
                Action::ReturnX0(call::SMCCC_RET_SUCCESS)
            }
        }
        _ => Action::ReturnX0(call::NOT_SUPPORTED),
    }
}

/// PSCI CPU_ON, AFFINITY_INFO and CPU_SUSPEND, the same for the host (whose
/// vCPUs are the physical CPUs) and a guest; `None` for other calls.
///
/// Always inlined: called out of line, its `Option<Action>` came back through
/// the stack, and `decide_unmapped` then copied every call's `Action` (the
/// host's VCPU_RUN included) with two `memcpy` calls, ~150 instructions.
#[inline(always)]
fn power_call(c: Hypercall, facts: &impl Facts) -> Option<Action> {
    Some(match c {
        Hypercall::CpuOn {
            target,
            entry,
            context,
        } => match call::mpidr_to_index(target, facts.nr_vcpus()) {
            None => Action::ReturnX0(call::INVALID_PARAMETERS),
            Some(target) => Action::CpuOn {
                target,
                entry,
                context,
            },
        },
        Hypercall::AffinityInfo {
            target,
            lowest_level,
        } => match call::mpidr_to_index(target, facts.nr_vcpus()) {
            Some(target) if lowest_level == 0 => Action::AffinityInfo { target },
            _ => Action::ReturnX0(call::INVALID_PARAMETERS),
        },
        Hypercall::CpuSuspend => Action::ReturnX0(call::SUCCESS),
        _ => return None,
    })
}

/// The host's calls: its control interface, and PSCI for its own vCPUs
/// (one per physical CPU) and the machine.
///
/// Always inlined, as [`power_call`]: out of line, its `Action` came back
/// through the stack and was copied into the `Decision` with a `memcpy`.
#[inline(always)]
fn host_call(x: [u64; 4], facts: &impl Facts) -> Action {
    if (hyp_abi::FID_BASE..=hyp_abi::FID_LAST).contains(&(x[0] as u32)) {
        return Action::HostCall;
    }
    let c = call::decode(x);
    if let Some(r) = call::stateless_answer(c) {
        return Action::Return(r);
    }
    if let Some(a) = power_call(c, facts) {
        return a;
    }
    match c {
        Hypercall::CpuOff => Action::HostCpuOff,
        Hypercall::SystemOff | Hypercall::SystemReset => Action::SystemOff,
        // The host's entropy is its own draw, like any VM's.
        Hypercall::Trng(t) => Action::Trng(t),
        // Memory sharing and MMIO guard are guest services: the host owns
        // its memory already.
        _ => Action::ReturnX0(call::NOT_SUPPORTED),
    }
}

/// A data abort that no lazy mapping answers.
#[inline(always)]
fn data_abort(abort: DataAbort, far: u64, write: bool, value: u64, facts: &impl Facts) -> Decision {
    let who = facts.who();
    let guest = matches!(who, Who::Guest { .. });
    let deny = |what| {
        at(if guest {
            Action::Inject(what)
        } else {
            Action::DenyHost(what)
        })
    };
    let ipa = match abort {
        DataAbort::Mmio(m) => m.ipa,
        DataAbort::NoSyndrome { ipa, .. } | DataAbort::Stage1Walk { ipa } => ipa,
    };
    // The vGIC's frames (guests only; the host has the real GIC).
    if let Some((region, off)) = guest
        .then(|| facts.vgic())
        .flatten()
        .and_then(|v| v.region(ipa))
    {
        return match abort {
            DataAbort::Mmio(access) => then(Action::Vgic {
                region,
                off,
                access,
                value,
            }),
            // No syndrome (ISV = 0): the access cannot be emulated.
            _ => at(Action::Inject(Injected::DataAbort { far, write })),
        };
    }
    match abort {
        DataAbort::Mmio(access)
            if (layout::UART_IPA..layout::UART_IPA + uart::WINDOW).contains(&access.ipa) =>
        {
            then(Action::Uart {
                off: access.ipa - layout::UART_IPA,
                access,
                value,
            })
        }
        // A protected VM's access reaches the host only on a page it
        // guarded (MMIO_GUARD); any other becomes an abort, from its first
        // instruction on. A normal VM's always does.
        DataAbort::Mmio(access)
            if guest && host_mmio(access.ipa) && facts.mmio_to_host(access.ipa) =>
        {
            let bytes = access.size.bytes();
            let flags = hyp_abi::mmio_flags(bytes, access.write);
            if access.write {
                let record = [run_exit::MMIO, access.ipa, flags, value & size_mask(bytes)];
                then(Action::ToHost(RunEnd::Runnable, record))
            } else {
                at(Action::AwaitMmio {
                    access,
                    record: [run_exit::MMIO, access.ipa, flags, 0],
                })
            }
        }
        DataAbort::Mmio(access) => deny(Injected::DataAbort {
            far,
            write: access.write,
        }),
        DataAbort::NoSyndrome { write, .. } => deny(Injected::DataAbort { far, write }),
        DataAbort::Stage1Walk { .. } => {
            at(Action::Inject(Injected::DataAbort { far, write: false }))
        }
    }
}

/// Whether `ipa` lies in the window of devices the host emulates for guests.
fn host_mmio(ipa: u64) -> bool {
    (layout::HOST_MMIO_IPA..layout::HOST_MMIO_IPA + layout::HOST_MMIO_SIZE).contains(&ipa)
}

/// The low `bytes` bytes.
const fn size_mask(bytes: u64) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1 << (bytes * 8)) - 1
    }
}

/// Trapped MSR/MRS and system instructions: ICC_SGI1R_EL1 (HCR_EL2.IMO),
/// ID registers (TID3), the virtual-memory controls (TVM), set/way cache
/// maintenance (TSW), debug registers (a guest's own, the host's RAZ/WI),
/// a normal VM's PMU registers (TPM), a guest's first EL1 physical timer
/// access (CNTHCTL_EL2.EL1PCEN; the host's is refused); anything else
/// (implementation-defined registers, the host's and protected VMs' PMU
/// accesses) is UNDEFINED.
#[inline(always)]
fn sysreg_access(access: SysRegAccess, value: u64, facts: &impl Facts) -> Decision {
    let who = facts.who();
    let guest = matches!(who, Who::Guest { .. });
    if guest && sysreg::is_sgi1r_write(&access) && facts.vgic().is_some() {
        return then(Action::Sgi1r { value });
    }
    let rt = access.reg;
    match sysreg::classify_access(&access) {
        TrappedSysReg::IdReg(enc) if access.read => then(if rt == 31 {
            Action::Resume
        } else {
            Action::IdRead { enc, rt }
        }),
        TrappedSysReg::SetWay(_) => then(if guest {
            Action::SetWay
        } else {
            Action::Resume
        }),
        TrappedSysReg::Vm(reg) if !access.read => then(Action::TvmWrite { reg, value }),
        TrappedSysReg::PhysTimer if guest => at(Action::PTimerFirstUse),
        // The PMU is a normal VM's only (pKVM: not the host's, not a
        // protected VM's); the rest fall to UNDEF below.
        TrappedSysReg::Pmu(reg) if guest && !facts.protected() => at(Action::Pmu {
            reg,
            rt,
            write: (!access.read).then_some(value),
        }),
        // A guest's debug registers (op0 = 2, trapped by MDCR_EL2.TDA/TDOSA)
        // are its own, switched lazily (`vcpu::debug`).
        _ if guest && access.enc.op0 == 2 => match debug::classify(access.enc) {
            Some(reg) => then(Action::Debug(debug::Access {
                reg,
                read: access.read,
                rt,
                value,
            })),
            None => at(Action::Inject(Injected::Undefined)),
        },
        // The host's: RAZ/WI instead of UNDEF, because Linux writes
        // MDSCR_EL1 and the OS lock registers at boot (see
        // `sysreg::debug_read`).
        _ => match sysreg::debug_read(access.enc) {
            Some(value) if access.read && rt != 31 => then(Action::Load { rt, value }),
            Some(_) => then(Action::Resume),
            None => at(Action::Inject(Injected::Undefined)),
        },
    }
}
