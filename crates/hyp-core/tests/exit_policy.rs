//! The exit policy, row by row: every exit class the hypervisor handles, as
//! the syndrome registers and general-purpose registers the CPU reports,
//! with the exact decision expected (`hyp_core::exit::policy`).

use hyp_abi::exit as run_exit;
use hyp_abi::layout::{GICD_IPA, GICR_IPA, HOST_MMIO_IPA, HOST_MMIO_SIZE, RAM_IPA, UART_IPA};
use hyp_core::arch::esr::{AccessSize, DataAbort, Esr, MmioAccess, SysRegAccess, SysRegEnc};
use hyp_core::calls::smccc::{self as call, vendor};
use hyp_core::exit::policy::{self, Action, Decision, Exit, Facts, Trap, VgicFrames};
use hyp_core::exit::sysreg::VmReg;
use hyp_core::vcpu::debug::{Access, DebugReg};
use hyp_core::vcpu::inject::Injected;
use hyp_core::vcpu::pmu::GuestReg;
use hyp_core::vcpu::Who;
use hyp_core::vm::control::RunEnd;
use smccc::psci;

const GUEST: Who = Who::Guest { slot: 2, vcpu: 1 };

/// The facts of a test context.
#[derive(Clone, Copy)]
struct Ctx {
    who: Who,
    nr_vcpus: usize,
    protected: bool,
    /// Guest RAM: [RAM_IPA, RAM_IPA + ram_size).
    ram_size: u64,
    vgic: Option<VgicFrames>,
    /// Pages of the host's MMIO window the VM guard-mapped (bit *i*: page *i*).
    guarded: u64,
}

impl Facts for Ctx {
    fn who(&self) -> Who {
        self.who
    }
    fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }
    fn protected(&self) -> bool {
        self.protected
    }
    fn is_ram(&self, ipa: u64) -> bool {
        (RAM_IPA..RAM_IPA + self.ram_size).contains(&ipa)
    }
    fn vgic(&self) -> Option<VgicFrames> {
        self.vgic
    }
    fn mmio_to_host(&self, ipa: u64) -> bool {
        !self.protected
            || (HOST_MMIO_IPA..HOST_MMIO_IPA + HOST_MMIO_SIZE).contains(&ipa)
                && self.guarded & 1 << ((ipa - HOST_MMIO_IPA) / 4096) != 0
    }
}

const V3: Option<VgicFrames> = Some(VgicFrames {
    version: vgic::Version::V3,
    nr_vcpus: 2,
});

const V2: Option<VgicFrames> = Some(VgicFrames {
    version: vgic::Version::V2,
    nr_vcpus: 2,
});

fn guest() -> Ctx {
    Ctx {
        who: GUEST,
        nr_vcpus: 2,
        protected: false,
        ram_size: 16 << 20,
        vgic: V3,
        guarded: 0,
    }
}

fn protected() -> Ctx {
    Ctx {
        protected: true,
        ..guest()
    }
}

fn host() -> Ctx {
    Ctx {
        who: Who::Host,
        nr_vcpus: 4,
        protected: false,
        ram_size: 0,
        vgic: None,
        guarded: 0,
    }
}

// ---- syndromes, as the CPU reports them (Arm ARM D24.2.40 ESR_EL2) ----

const IL: u64 = 1 << 25;

fn esr(ec: u64, iss: u64) -> Esr {
    Esr(ec << 26 | IL | iss)
}

fn trap(e: Esr, far: u64, ipa: u64) -> Trap {
    Trap {
        esr: e,
        far,
        hpfar: (ipa >> 12) << 4,
    }
}

fn hvc() -> Trap {
    trap(esr(0x16, 0), 0, 0)
}

fn smc() -> Trap {
    trap(esr(0x17, 0), 0, 0)
}

fn regs(x: &[u64]) -> [u64; 31] {
    let mut r = [0; 31];
    r[..x.len()].copy_from_slice(x);
    r
}

/// DFSC: translation fault, level 3.
const XLAT: u64 = 0x07;
/// DFSC: permission fault, level 3.
const PERM: u64 = 0x0f;

/// A syndrome-valid data abort: `bytes`-wide, register `rt`, `write`.
fn dabt(ipa: u64, bytes: u64, rt: u64, write: bool, fsc: u64) -> Trap {
    let sas = bytes.trailing_zeros() as u64;
    let iss = 1 << 24 | sas << 22 | rt << 16 | 1 << 15 | u64::from(write) << 6 | fsc;
    trap(esr(0x24, iss), 0xffff_0000_dead_0000 | (ipa & 0xfff), ipa)
}

/// A data abort without a valid syndrome (ISV = 0), e.g. a load pair.
fn dabt_nosyn(ipa: u64, write: bool, fsc: u64) -> Trap {
    trap(
        esr(0x24, u64::from(write) << 6 | fsc),
        0x1234_5000 | (ipa & 0xfff),
        ipa,
    )
}

/// A fault on the stage-1 walk (S1PTW).
fn dabt_s1ptw(ipa: u64) -> Trap {
    trap(esr(0x24, 1 << 7 | XLAT), 0x5000, ipa)
}

fn iabt(ipa: u64, fsc: u64) -> Trap {
    trap(esr(0x20, fsc), 0x7000_0000 | (ipa & 0xfff), ipa)
}

fn mmio(ipa: u64, bytes: u64, rt: u8, write: bool) -> MmioAccess {
    MmioAccess {
        ipa,
        size: match bytes {
            1 => AccessSize::Byte,
            2 => AccessSize::Half,
            4 => AccessSize::Word,
            _ => AccessSize::Double,
        },
        sign_extend: false,
        reg: rt,
        sixty_four: true,
        write,
    }
}

/// A trapped MSR/MRS (EC 0x18): `read` is MRS.
fn sys(enc: SysRegEnc, rt: u64, read: bool) -> Trap {
    let SysRegEnc {
        op0,
        op1,
        crn,
        crm,
        op2,
    } = enc;
    let iss = u64::from(op0) << 20
        | u64::from(op2) << 17
        | u64::from(op1) << 14
        | u64::from(crn) << 10
        | rt << 5
        | u64::from(crm) << 1
        | u64::from(read);
    trap(esr(0x18, iss), 0, 0)
}

const SCTLR_EL1: SysRegEnc = SysRegEnc::new(3, 0, 1, 0, 0);
const ID_AA64PFR0_EL1: SysRegEnc = SysRegEnc::new(3, 0, 0, 4, 0);
const ICC_SGI1R_EL1: SysRegEnc = SysRegEnc::new(3, 0, 12, 11, 5);
const DC_CISW: SysRegEnc = SysRegEnc::new(1, 0, 7, 14, 2);
const MDSCR_EL1: SysRegEnc = SysRegEnc::new(2, 0, 0, 2, 2);
const OSLSR_EL1: SysRegEnc = SysRegEnc::new(2, 0, 1, 1, 4);
const PMCR_EL0: SysRegEnc = SysRegEnc::new(3, 3, 9, 12, 0);
const PMEVCNTR30_EL0: SysRegEnc = SysRegEnc::new(3, 3, 14, 11, 6);

fn then(action: Action) -> Decision {
    Decision { pc_step: 4, action }
}

fn at(action: Action) -> Decision {
    Decision { pc_step: 0, action }
}

fn decide(t: &Trap, x: &[u64], cx: &Ctx) -> Decision {
    let exit = policy::decode(t, &regs(x));
    policy::decide(&exit, cx)
}

/// Each row: name, trap, x0.., context, expected decision.
type Row = (&'static str, Trap, Vec<u64>, Ctx, Decision);

fn check(rows: Vec<Row>) {
    let mut bad = Vec::new();
    for (name, t, x, cx, want) in rows {
        let got = decide(&t, &x, &cx);
        if got != want {
            bad.push(format!("{name}:\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} rows differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

fn mpidr(vcpu: u64) -> u64 {
    vcpu
}

#[test]
fn psci_calls() {
    let on = u64::from(psci::PSCI_CPU_ON_64);
    let aff = u64::from(psci::PSCI_AFFINITY_INFO_64);
    let g = guest();
    check(vec![
        (
            "PSCI_VERSION",
            hvc(),
            vec![u64::from(psci::PSCI_VERSION)],
            g,
            at(Action::Return([call::PSCI_VERSION_1_1, 0, 0, 0])),
        ),
        (
            "PSCI_VERSION by SMC steps over the SMC",
            smc(),
            vec![u64::from(psci::PSCI_VERSION)],
            g,
            then(Action::Return([call::PSCI_VERSION_1_1, 0, 0, 0])),
        ),
        (
            "CPU_ON of vCPU 1",
            hvc(),
            vec![on, mpidr(1), 0x4008_0000, 42],
            g,
            at(Action::CpuOn {
                target: 1,
                entry: 0x4008_0000,
                context: 42,
            }),
        ),
        (
            "CPU_ON of a vCPU the VM does not have",
            hvc(),
            vec![on, mpidr(2), 0x4008_0000, 0],
            g,
            at(Action::ReturnX0(call::INVALID_PARAMETERS)),
        ),
        (
            "CPU_ON with affinity bits above Aff0",
            hvc(),
            vec![on, 1 << 8, 0x4008_0000, 0],
            g,
            at(Action::ReturnX0(call::INVALID_PARAMETERS)),
        ),
        (
            "AFFINITY_INFO level 0",
            hvc(),
            vec![aff, mpidr(0), 0],
            g,
            at(Action::AffinityInfo { target: 0 }),
        ),
        (
            "AFFINITY_INFO level 1 is not supported",
            hvc(),
            vec![aff, mpidr(0), 1],
            g,
            at(Action::ReturnX0(call::INVALID_PARAMETERS)),
        ),
        (
            "CPU_SUSPEND is a standby",
            hvc(),
            vec![u64::from(psci::PSCI_CPU_SUSPEND_64)],
            g,
            at(Action::ReturnX0(call::SUCCESS)),
        ),
        (
            "CPU_OFF goes to the host",
            hvc(),
            vec![u64::from(psci::PSCI_CPU_OFF)],
            g,
            at(Action::ToHost(RunEnd::CpuOff, [run_exit::CPU_OFF, 0, 0, 0])),
        ),
        (
            "SYSTEM_OFF goes to the host",
            hvc(),
            vec![u64::from(psci::PSCI_SYSTEM_OFF)],
            g,
            at(Action::ToHost(
                RunEnd::SystemOff,
                [run_exit::SYSTEM_OFF, 0, 0, 0],
            )),
        ),
        (
            "SYSTEM_RESET by SMC goes to the host past the SMC",
            smc(),
            vec![u64::from(psci::PSCI_SYSTEM_RESET)],
            g,
            then(Action::ToHost(
                RunEnd::SystemReset,
                [run_exit::SYSTEM_RESET, 0, 0, 0],
            )),
        ),
        (
            "an unknown function",
            hvc(),
            vec![0x8400_00ff],
            g,
            at(Action::Return([call::NOT_SUPPORTED, 0, 0, 0])),
        ),
        (
            "a host control call from a guest is unknown",
            hvc(),
            vec![u64::from(hyp_abi::VM_CREATE), 1],
            g,
            at(Action::Return([call::NOT_SUPPORTED, 0, 0, 0])),
        ),
    ]);
}

#[test]
fn vendor_calls() {
    let share = u64::from(vendor::MEM_SHARE);
    let unshare = u64::from(vendor::MEM_UNSHARE);
    let guard = u64::from(vendor::MMIO_GUARD);
    let features = u64::from(vendor::KVM_FEATURES);
    let (g, p) = (guest(), protected());
    check(vec![
        (
            "CALL_UID is KVM's",
            hvc(),
            vec![u64::from(vendor::CALL_UID)],
            g,
            at(Action::Return(vendor::KVM_UID)),
        ),
        (
            "KVM_FEATURES of a protected VM offers MEM_SHARE",
            hvc(),
            vec![features, 0],
            p,
            at(Action::Return([vendor::FEATURES_BITMAP, 0, 0, 0])),
        ),
        (
            "KVM_FEATURES of a normal VM hides the protected-only calls",
            hvc(),
            vec![features, 0],
            g,
            at(Action::Return([
                vendor::FEATURES_BITMAP & !vendor::PROTECTED_ONLY,
                0,
                0,
                0,
            ])),
        ),
        (
            "HYP_MEMINFO",
            hvc(),
            vec![u64::from(vendor::HYP_MEMINFO)],
            p,
            at(Action::Return([vendor::GRANULE, 0, 0, 0])),
        ),
        (
            "HYP_MEMINFO with a reserved argument set",
            hvc(),
            vec![u64::from(vendor::HYP_MEMINFO), 1],
            p,
            at(Action::Return([call::SMCCC_RET_INVALID_PARAMETER, 0, 0, 0])),
        ),
        (
            "MEM_SHARE of a page",
            hvc(),
            vec![share, RAM_IPA + 0x3000],
            p,
            at(Action::Share {
                ipa: RAM_IPA + 0x3000,
                share: true,
            }),
        ),
        (
            "MEM_UNSHARE of a page",
            hvc(),
            vec![unshare, RAM_IPA + 0x3000],
            p,
            at(Action::Share {
                ipa: RAM_IPA + 0x3000,
                share: false,
            }),
        ),
        (
            "MEM_SHARE of an unaligned address",
            hvc(),
            vec![share, RAM_IPA + 0x3004],
            p,
            at(Action::Return([call::SMCCC_RET_INVALID_PARAMETER, 0, 0, 0])),
        ),
        (
            "MEM_SHARE with a reserved argument set",
            hvc(),
            vec![share, RAM_IPA, 1],
            p,
            at(Action::Return([call::SMCCC_RET_INVALID_PARAMETER, 0, 0, 0])),
        ),
        (
            "MMIO_GUARD of a page in the host's window is recorded",
            hvc(),
            vec![guard, HOST_MMIO_IPA + 0x3000],
            p,
            at(Action::MmioGuard {
                ipa: HOST_MMIO_IPA + 0x3000,
            }),
        ),
        (
            "MMIO_GUARD of an emulated device page succeeds, nothing to record",
            hvc(),
            vec![guard, UART_IPA],
            p,
            at(Action::ReturnX0(call::SMCCC_RET_SUCCESS)),
        ),
        (
            "MMIO_GUARD of the VM's own RAM is refused",
            hvc(),
            vec![guard, RAM_IPA + 0x1000],
            p,
            at(Action::ReturnX0(call::SMCCC_RET_INVALID_PARAMETER)),
        ),
        (
            "MMIO_GUARD of an unaligned address is refused",
            hvc(),
            vec![guard, HOST_MMIO_IPA + 8],
            p,
            at(Action::Return([call::SMCCC_RET_INVALID_PARAMETER, 0, 0, 0])),
        ),
        (
            "MMIO_GUARD with a reserved argument set is refused",
            hvc(),
            vec![guard, HOST_MMIO_IPA, 1],
            p,
            at(Action::Return([call::SMCCC_RET_INVALID_PARAMETER, 0, 0, 0])),
        ),
        (
            "MMIO_GUARD is not offered to a normal VM",
            hvc(),
            vec![guard, HOST_MMIO_IPA],
            g,
            at(Action::ReturnX0(call::NOT_SUPPORTED)),
        ),
        (
            "Android's MMIO_GUARD_ENROLL (function 6) is unknown",
            hvc(),
            vec![0xc600_0006],
            p,
            at(Action::Return([call::NOT_SUPPORTED, 0, 0, 0])),
        ),
        (
            "MEASUREMENT_SET of a protected VM goes to its effect (PC and once)",
            hvc(),
            vec![u64::from(hyp_abi::pvmfw::MEASUREMENT_SET), 1, 2, 3],
            p,
            at(Action::MeasurementSet),
        ),
        (
            "a guest's YIELD goes back to the host (x0 = 0, not waiting)",
            hvc(),
            vec![u64::from(hyp_abi::GUEST_YIELD)],
            g,
            at(Action::Yield),
        ),
        (
            "MEASUREMENT_SET of a normal VM: it has no firmware",
            hvc(),
            vec![u64::from(hyp_abi::pvmfw::MEASUREMENT_SET), 1, 2, 3],
            g,
            at(Action::ReturnX0(call::NOT_SUPPORTED)),
        ),
        (
            "MEASUREMENT_GET of the initrd's second half",
            hvc(),
            vec![u64::from(hyp_abi::pvmfw::MEASUREMENT_GET), 1, 1],
            g,
            at(Action::MeasurementGet { item: 1, half: 1 }),
        ),
        (
            "MEASUREMENT_GET of an unknown item",
            hvc(),
            vec![u64::from(hyp_abi::pvmfw::MEASUREMENT_GET), 2, 0],
            p,
            at(Action::Return([call::SMCCC_RET_INVALID_PARAMETER, 0, 0, 0])),
        ),
    ]);
}

/// The HVC vector answers a function ID nobody implements itself
/// (`calls::known::unknown_to_all`) with x0 = NOT_SUPPORTED and x1..x3 = 0,
/// for any caller. The full path must decide exactly that for each such ID,
/// whoever calls (a normal VM, a protected VM, the host) and whatever the
/// upper half of x0 and x1..x3 hold.
#[test]
fn what_the_vector_answers_alone_the_policy_answers_alike() {
    let want = at(Action::Return([call::NOT_SUPPORTED, 0, 0, 0]));
    let mut seen = 0u32;
    let mut f = 0x2545_f491u32;
    let mut ids: Vec<u32> = (0..=0xffu32)
        .flat_map(|hi| (0..0x120u32).map(move |lo| hi << 24 | lo))
        .collect();
    ids.extend((0..200_000).map(|_| {
        f = f.wrapping_mul(0x0019_660d).wrapping_add(0x3c6e_f35f);
        f
    }));
    for fid in ids {
        if !hyp_core::calls::known::unknown_to_all(fid) {
            continue;
        }
        seen += 1;
        let upper = u64::from(fid.rotate_left(7)) << 32;
        let x = [
            upper | u64::from(fid),
            u64::from(fid) * 3,
            !u64::from(fid),
            1 << 12,
        ];
        for cx in [guest(), protected(), host()] {
            let got = decide(&hvc(), &x, &cx);
            assert_eq!(
                got, want,
                "{fid:#x} from {:?} (protected {})",
                cx.who, cx.protected
            );
        }
    }
    assert!(seen > 200_000, "{seen}");
}

#[test]
fn host_calls() {
    let on = u64::from(psci::PSCI_CPU_ON_64);
    let h = host();
    check(vec![
        (
            "a control call",
            hvc(),
            vec![u64::from(hyp_abi::VCPU_RUN), 1, 0],
            h,
            at(Action::HostCall),
        ),
        (
            "the last control call",
            hvc(),
            vec![u64::from(hyp_abi::FID_LAST)],
            h,
            at(Action::HostCall),
        ),
        (
            "the host cannot YIELD to itself",
            hvc(),
            vec![u64::from(hyp_abi::GUEST_YIELD)],
            h,
            at(Action::ReturnX0(call::NOT_SUPPORTED)),
        ),
        (
            "the firmware's MEASUREMENT_SET is no host call",
            hvc(),
            vec![u64::from(hyp_abi::pvmfw::MEASUREMENT_SET)],
            h,
            at(Action::ReturnX0(call::NOT_SUPPORTED)),
        ),
        (
            "just past the control range",
            hvc(),
            vec![u64::from(hyp_abi::FID_LAST) + 1],
            h,
            at(Action::Return([call::NOT_SUPPORTED, 0, 0, 0])),
        ),
        (
            "a control call by SMC",
            smc(),
            vec![u64::from(hyp_abi::STATS)],
            h,
            then(Action::HostCall),
        ),
        (
            "CPU_ON of CPU 3",
            hvc(),
            vec![on, 3, 0x4000_0000, 7],
            h,
            at(Action::CpuOn {
                target: 3,
                entry: 0x4000_0000,
                context: 7,
            }),
        ),
        (
            "CPU_ON of a CPU that does not exist",
            hvc(),
            vec![on, 4, 0x4000_0000, 7],
            h,
            at(Action::ReturnX0(call::INVALID_PARAMETERS)),
        ),
        (
            "AFFINITY_INFO",
            hvc(),
            vec![u64::from(psci::PSCI_AFFINITY_INFO_64), 2, 0],
            h,
            at(Action::AffinityInfo { target: 2 }),
        ),
        (
            "CPU_OFF",
            hvc(),
            vec![u64::from(psci::PSCI_CPU_OFF)],
            h,
            at(Action::HostCpuOff),
        ),
        (
            "SYSTEM_RESET powers off",
            hvc(),
            vec![u64::from(psci::PSCI_SYSTEM_RESET)],
            h,
            at(Action::SystemOff),
        ),
        (
            "MEM_SHARE is a guest service",
            hvc(),
            vec![u64::from(vendor::MEM_SHARE), 0x4000_0000],
            h,
            at(Action::ReturnX0(call::NOT_SUPPORTED)),
        ),
        (
            "KVM_FEATURES shows the whole bitmap",
            hvc(),
            vec![u64::from(vendor::KVM_FEATURES)],
            h,
            at(Action::Return([vendor::FEATURES_BITMAP, 0, 0, 0])),
        ),
    ]);
}

/// MMIO guard: a protected VM's access in the host's window reaches the
/// host only on a page it guarded; a normal VM's always does; what the
/// hypervisor emulates itself needs no guard.
#[test]
fn mmio_guard_decides_what_reaches_the_host() {
    // Page 0 of the window guarded, page 1 not.
    let p = Ctx {
        guarded: 1,
        ..protected()
    };
    let (g, dev, other) = (guest(), HOST_MMIO_IPA + 0x200, HOST_MMIO_IPA + 0x1008);
    let write_to_host = |ipa| {
        then(Action::ToHost(
            RunEnd::Runnable,
            [run_exit::MMIO, ipa, hyp_abi::mmio_flags(4, true), 7],
        ))
    };
    check(vec![
        (
            "a protected VM's write to a guarded page goes to the host",
            dabt(dev, 4, 1, true, XLAT),
            vec![0, 7],
            p,
            write_to_host(dev),
        ),
        (
            "a protected VM's read of a guarded page waits for the host",
            dabt(dev, 4, 7, false, XLAT),
            vec![],
            p,
            at(Action::AwaitMmio {
                access: mmio(dev, 4, 7, false),
                record: [run_exit::MMIO, dev, hyp_abi::mmio_flags(4, false), 0],
            }),
        ),
        (
            "a protected VM's write to an unguarded page is an abort",
            dabt(other, 4, 1, true, XLAT),
            vec![0, 7],
            p,
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0008,
                write: true,
            })),
        ),
        (
            "a protected VM's read of an unguarded page is an abort",
            dabt(other, 4, 7, false, XLAT),
            vec![],
            p,
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0008,
                write: false,
            })),
        ),
        (
            "a protected VM that guarded nothing: its first access is an abort",
            dabt(dev, 4, 1, true, XLAT),
            vec![0, 7],
            protected(),
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0200,
                write: true,
            })),
        ),
        (
            "a normal VM's write goes to the host without a guard",
            dabt(other, 4, 1, true, XLAT),
            vec![0, 7],
            g,
            write_to_host(other),
        ),
        (
            "the emulated UART needs no guard",
            dabt(UART_IPA, 4, 3, true, PERM),
            vec![0, 0, 0, b'A' as u64],
            protected(),
            then(Action::Uart {
                off: 0,
                access: mmio(UART_IPA, 4, 3, true),
                value: b'A' as u64,
            }),
        ),
        (
            "the vGIC needs no guard",
            dabt(GICD_IPA + 0x4, 4, 2, false, XLAT),
            vec![],
            protected(),
            then(Action::Vgic {
                region: vgic::Region::Dist,
                off: 0x4,
                access: mmio(GICD_IPA + 4, 4, 2, false),
                value: 0,
            }),
        ),
    ]);
}

#[test]
fn mmio_in_and_out_of_regions() {
    let (g, h) = (guest(), host());
    let dev = HOST_MMIO_IPA + 0x200;
    check(vec![
        (
            "console write",
            dabt(UART_IPA, 4, 3, true, PERM),
            vec![0, 0, 0, b'A' as u64],
            g,
            then(Action::Uart {
                off: 0,
                access: mmio(UART_IPA, 4, 3, true),
                value: b'A' as u64,
            }),
        ),
        (
            "console flag register read",
            dabt(UART_IPA + 0x18, 4, 5, false, PERM),
            vec![],
            g,
            then(Action::Uart {
                off: 0x18,
                access: mmio(UART_IPA + 0x18, 4, 5, false),
                value: 0,
            }),
        ),
        (
            "the host's console",
            dabt(UART_IPA, 1, 0, true, PERM),
            vec![b'h' as u64],
            h,
            then(Action::Uart {
                off: 0,
                access: mmio(UART_IPA, 1, 0, true),
                value: b'h' as u64,
            }),
        ),
        (
            "a write of XZR",
            dabt(UART_IPA, 4, 31, true, PERM),
            vec![9; 31],
            g,
            then(Action::Uart {
                off: 0,
                access: mmio(UART_IPA, 4, 31, true),
                value: 0,
            }),
        ),
        (
            "a device write goes to the host, value cut to the access size",
            dabt(dev, 2, 1, true, XLAT),
            vec![0, 0xdead_beef],
            g,
            then(Action::ToHost(
                RunEnd::Runnable,
                [run_exit::MMIO, dev, hyp_abi::mmio_flags(2, true), 0xbeef],
            )),
        ),
        (
            "a device read waits for the host",
            dabt(dev, 4, 7, false, XLAT),
            vec![],
            g,
            at(Action::AwaitMmio {
                access: mmio(dev, 4, 7, false),
                record: [run_exit::MMIO, dev, hyp_abi::mmio_flags(4, false), 0],
            }),
        ),
        (
            "the host window's last byte",
            dabt(HOST_MMIO_IPA + 0x3fff, 1, 0, true, XLAT),
            vec![1],
            g,
            then(Action::ToHost(
                RunEnd::Runnable,
                [
                    run_exit::MMIO,
                    HOST_MMIO_IPA + 0x3fff,
                    hyp_abi::mmio_flags(1, true),
                    1,
                ],
            )),
        ),
        (
            "just past the host window",
            dabt(HOST_MMIO_IPA + 0x4000, 4, 0, true, XLAT),
            vec![1],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0000,
                write: true,
            })),
        ),
        (
            "the host cannot reach the guests' device window",
            dabt(dev, 4, 0, false, XLAT),
            vec![],
            h,
            at(Action::DenyHost(Injected::DataAbort {
                far: 0xffff_0000_dead_0200,
                write: false,
            })),
        ),
        (
            "vGIC distributor read",
            dabt(GICD_IPA + 0x4, 4, 2, false, XLAT),
            vec![],
            g,
            then(Action::Vgic {
                region: vgic::Region::Dist,
                off: 0x4,
                access: mmio(GICD_IPA + 4, 4, 2, false),
                value: 0,
            }),
        ),
        (
            "vGIC redistributor of vCPU 1",
            dabt(GICR_IPA + vgic::REDIST_FRAME_SIZE + 0x100, 4, 2, true, XLAT),
            vec![0, 0, 0xff],
            g,
            then(Action::Vgic {
                region: vgic::Region::Redist,
                off: vgic::REDIST_FRAME_SIZE + 0x100,
                access: mmio(GICR_IPA + vgic::REDIST_FRAME_SIZE + 0x100, 4, 2, true),
                value: 0xff,
            }),
        ),
        (
            "a redistributor the VM does not have",
            dabt(GICR_IPA + 2 * vgic::REDIST_FRAME_SIZE, 4, 2, false, XLAT),
            vec![],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0000,
                write: false,
            })),
        ),
        (
            "GICv2: the distributor is 4 KiB",
            dabt(GICD_IPA + 0xffc, 4, 2, false, XLAT),
            vec![],
            Ctx { vgic: V2, ..g },
            then(Action::Vgic {
                region: vgic::Region::Dist,
                off: 0xffc,
                access: mmio(GICD_IPA + 0xffc, 4, 2, false),
                value: 0,
            }),
        ),
        (
            "GICv2: no redistributors",
            dabt(GICR_IPA, 4, 2, false, XLAT),
            vec![],
            Ctx { vgic: V2, ..g },
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0000,
                write: false,
            })),
        ),
        (
            "GICv3: the distributor's last word",
            dabt(GICD_IPA + vgic::DIST_SIZE_V3 - 4, 4, 2, false, XLAT),
            vec![],
            g,
            then(Action::Vgic {
                region: vgic::Region::Dist,
                off: vgic::DIST_SIZE_V3 - 4,
                access: mmio(GICD_IPA + vgic::DIST_SIZE_V3 - 4, 4, 2, false),
                value: 0,
            }),
        ),
        (
            "a 64-bit device write keeps all its bits",
            dabt(dev, 8, 4, true, XLAT),
            vec![0, 0, 0, 0, 0x0123_4567_89ab_cdef],
            g,
            then(Action::ToHost(
                RunEnd::Runnable,
                [
                    run_exit::MMIO,
                    dev,
                    hyp_abi::mmio_flags(8, true),
                    0x0123_4567_89ab_cdef,
                ],
            )),
        ),
        (
            "a VM without a vGIC",
            dabt(GICD_IPA, 4, 2, false, XLAT),
            vec![],
            Ctx { vgic: None, ..g },
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0000,
                write: false,
            })),
        ),
        (
            "a vGIC access without syndrome",
            dabt_nosyn(GICD_IPA + 0x100, true, XLAT),
            vec![],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0x1234_5100,
                write: true,
            })),
        ),
        (
            "a vGIC read without syndrome is injected as a read",
            dabt_nosyn(GICD_IPA + 0x104, false, XLAT),
            vec![],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0x1234_5104,
                write: false,
            })),
        ),
        (
            "a device access without syndrome",
            dabt_nosyn(dev, false, XLAT),
            vec![],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0x1234_5200,
                write: false,
            })),
        ),
        (
            "the host's access without syndrome is denied",
            dabt_nosyn(0x4000_0000, true, PERM),
            vec![],
            h,
            at(Action::DenyHost(Injected::DataAbort {
                far: 0x1234_5000,
                write: true,
            })),
        ),
    ]);
}

#[test]
fn aborts_in_and_out_of_memory() {
    let (g, h) = (guest(), host());
    let ram = RAM_IPA + 0x12_3000;
    check(vec![
        (
            "translation fault in guest RAM: map on demand",
            dabt(ram, 8, 0, false, XLAT),
            vec![],
            g,
            at(Action::MapOnDemand { ipa: ram }),
        ),
        (
            "a load pair in unmapped RAM: map on demand too",
            dabt_nosyn(ram, false, XLAT),
            vec![],
            g,
            at(Action::MapOnDemand { ipa: ram }),
        ),
        (
            "instruction fetch from unmapped RAM: map on demand",
            iabt(ram, XLAT),
            vec![],
            g,
            at(Action::MapOnDemand { ipa: ram }),
        ),
        (
            "a stage-1 walk in unmapped RAM: map on demand",
            dabt_s1ptw(ram),
            vec![],
            g,
            at(Action::MapOnDemand { ipa: ram }),
        ),
        (
            "permission fault in RAM: abort",
            dabt(ram, 8, 0, true, PERM),
            vec![],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0xffff_0000_dead_0000,
                write: true,
            })),
        ),
        (
            "instruction fetch from a device: abort",
            iabt(HOST_MMIO_IPA, XLAT),
            vec![],
            g,
            at(Action::Inject(Injected::InstAbort { far: 0x7000_0000 })),
        ),
        (
            "a stage-1 walk outside RAM: abort",
            dabt_s1ptw(0x1000),
            vec![],
            g,
            at(Action::Inject(Injected::DataAbort {
                far: 0x5000,
                write: false,
            })),
        ),
        (
            "the host's translation fault is never mapped on demand",
            dabt(ram, 8, 0, false, XLAT),
            vec![],
            h,
            at(Action::DenyHost(Injected::DataAbort {
                far: 0xffff_0000_dead_0000,
                write: false,
            })),
        ),
        (
            "the host's instruction abort",
            iabt(ram, PERM),
            vec![],
            h,
            at(Action::Inject(Injected::InstAbort { far: 0x7000_0000 })),
        ),
    ]);
    // When nothing was given lazily there, the same exit is an abort.
    let exit = policy::decode(&dabt(ram, 8, 0, false, XLAT), &regs(&[]));
    assert_eq!(
        policy::decide_unmapped(&exit, &g),
        at(Action::Inject(Injected::DataAbort {
            far: 0xffff_0000_dead_0000,
            write: false
        }))
    );
    let exit = policy::decode(&iabt(ram, XLAT), &regs(&[]));
    assert_eq!(
        policy::decide_unmapped(&exit, &g),
        at(Action::Inject(Injected::InstAbort { far: 0x7000_0000 }))
    );
}

#[test]
fn wfx_fp_smc_and_unknown() {
    let (g, h) = (guest(), host());
    check(vec![
        (
            "guest WFI",
            trap(esr(0x01, 0), 0, 0),
            vec![],
            g,
            then(Action::Wfi),
        ),
        (
            "guest WFE",
            trap(esr(0x01, 1), 0, 0),
            vec![],
            g,
            then(Action::Resume),
        ),
        (
            "host WFI",
            trap(esr(0x01, 0), 0, 0),
            vec![],
            h,
            then(Action::Resume),
        ),
        (
            "FP trap",
            trap(esr(0x07, 0), 0, 0),
            vec![],
            g,
            at(Action::Fp),
        ),
        (
            "host FP trap",
            trap(esr(0x07, 0), 0, 0),
            vec![],
            h,
            at(Action::Fp),
        ),
        (
            "unknown exception class",
            trap(esr(0x00, 0), 0, 0),
            vec![],
            g,
            at(Action::Inject(Injected::Undefined)),
        ),
        (
            "guest WFI from a 16-bit Thumb instruction (AArch32 EL0, IL = 0)",
            trap(Esr(0x01 << 26), 0, 0),
            vec![],
            g,
            Decision {
                pc_step: 2,
                action: Action::Wfi,
            },
        ),
        (
            "console write by a 16-bit Thumb store steps 2 bytes",
            {
                let mut t = dabt(UART_IPA, 4, 3, true, PERM);
                t.esr = Esr(t.esr.0 & !IL);
                t
            },
            vec![0, 0, 0, b'T' as u64],
            g,
            Decision {
                pc_step: 2,
                action: Action::Uart {
                    off: 0,
                    access: mmio(UART_IPA, 4, 3, true),
                    value: b'T' as u64,
                },
            },
        ),
        (
            "BRK from the guest's EL1 is not expected at EL2",
            trap(esr(0x3c, 0), 0, 0),
            vec![],
            h,
            at(Action::Inject(Injected::Undefined)),
        ),
    ]);
}

#[test]
fn sysreg_traps() {
    let (g, h) = (guest(), host());
    check(vec![
        (
            "ID register read",
            sys(ID_AA64PFR0_EL1, 4, true),
            vec![],
            g,
            then(Action::IdRead {
                enc: ID_AA64PFR0_EL1,
                rt: 4,
            }),
        ),
        (
            "ID register read into XZR",
            sys(ID_AA64PFR0_EL1, 31, true),
            vec![],
            g,
            then(Action::Resume),
        ),
        (
            "ID register write",
            sys(ID_AA64PFR0_EL1, 4, false),
            vec![],
            g,
            at(Action::Inject(Injected::Undefined)),
        ),
        (
            "SGI1R write",
            sys(ICC_SGI1R_EL1, 6, false),
            vec![0, 0, 0, 0, 0, 0, 1 << 24 | 3],
            g,
            then(Action::Sgi1r { value: 1 << 24 | 3 }),
        ),
        (
            "SGI1R write without a vGIC",
            sys(ICC_SGI1R_EL1, 6, false),
            vec![],
            Ctx { vgic: None, ..g },
            at(Action::Inject(Injected::Undefined)),
        ),
        (
            "set/way maintenance",
            sys(DC_CISW, 0, false),
            vec![],
            g,
            then(Action::SetWay),
        ),
        (
            "the host's set/way maintenance is ignored",
            sys(DC_CISW, 0, false),
            vec![],
            h,
            then(Action::Resume),
        ),
        (
            "SCTLR_EL1 write (TVM)",
            sys(SCTLR_EL1, 2, false),
            vec![0, 0, 0x30d0_1805],
            g,
            then(Action::TvmWrite {
                reg: VmReg::Sctlr,
                value: 0x30d0_1805,
            }),
        ),
        (
            "SCTLR_EL1 read is not trapped by TVM: UNDEF if it arrives",
            sys(SCTLR_EL1, 2, true),
            vec![],
            g,
            at(Action::Inject(Injected::Undefined)),
        ),
        (
            "a guest's MDSCR_EL1 read is its own (vcpu::debug)",
            sys(MDSCR_EL1, 1, true),
            vec![0, 77],
            g,
            then(Action::Debug(Access {
                reg: DebugReg::Mdscr,
                read: true,
                rt: 1,
                value: 0,
            })),
        ),
        (
            "a guest's OSLSR_EL1 read is its own",
            sys(OSLSR_EL1, 1, true),
            vec![],
            g,
            then(Action::Debug(Access {
                reg: DebugReg::Oslsr,
                read: true,
                rt: 1,
                value: 0,
            })),
        ),
        (
            "a guest's MDSCR_EL1 write carries the value",
            sys(MDSCR_EL1, 1, false),
            vec![0, 77],
            g,
            then(Action::Debug(Access {
                reg: DebugReg::Mdscr,
                read: false,
                rt: 1,
                value: 77,
            })),
        ),
        (
            "the host's MDSCR_EL1 reads as zero",
            sys(MDSCR_EL1, 1, true),
            vec![0, 77],
            host(),
            then(Action::Load { rt: 1, value: 0 }),
        ),
        (
            "the host's OSLSR_EL1 says the OS lock is implemented",
            sys(OSLSR_EL1, 1, true),
            vec![],
            host(),
            then(Action::Load {
                rt: 1,
                value: 1 << 3,
            }),
        ),
        (
            "the host's debug register writes are ignored",
            sys(MDSCR_EL1, 1, false),
            vec![0, 77],
            host(),
            then(Action::Resume),
        ),
        (
            "a normal VM's PMU registers go to the virtual PMU (read)",
            sys(PMCR_EL0, 1, true),
            vec![],
            g,
            at(Action::Pmu {
                reg: GuestReg::Pmcr,
                rt: 1,
                write: None,
            }),
        ),
        (
            "a normal VM's PMU registers go to the virtual PMU (write)",
            sys(PMEVCNTR30_EL0, 2, false),
            vec![0, 0, 77],
            g,
            at(Action::Pmu {
                reg: GuestReg::Evcntr(30),
                rt: 2,
                write: Some(77),
            }),
        ),
        (
            "a protected VM has no PMU (pKVM)",
            sys(PMCR_EL0, 1, true),
            vec![],
            protected(),
            at(Action::Inject(Injected::Undefined)),
        ),
        (
            "the host has no PMU",
            sys(PMCR_EL0, 1, true),
            vec![],
            host(),
            at(Action::Inject(Injected::Undefined)),
        ),
    ]);
}

/// CNTP_TVAL/CTL/CVAL_EL0 trap while CNTHCTL_EL2.EL1PCEN is clear: a
/// guest's access gives it the timer and runs again (PC unchanged); the
/// host's is refused. Neighbouring encodings stay UNDEFINED.
#[test]
fn physical_timer_traps() {
    let (g, h) = (guest(), host());
    let mut cases = Vec::new();
    for op2 in 0..=2 {
        for read in [true, false] {
            let e = SysRegEnc::new(3, 3, 14, 2, op2);
            cases.push((
                "guest CNTP_*",
                sys(e, 3, read),
                vec![],
                g,
                at(Action::PTimerFirstUse),
            ));
            let undef = at(Action::Inject(Injected::Undefined));
            cases.push(("host CNTP_*", sys(e, 3, read), vec![], h, undef));
        }
    }
    let undef = at(Action::Inject(Injected::Undefined));
    // CNTPS_* (3, 7, 14, 2, x) and an unallocated op2.
    for e in [
        SysRegEnc::new(3, 7, 14, 2, 1),
        SysRegEnc::new(3, 3, 14, 2, 3),
    ] {
        cases.push(("not CNTP_*", sys(e, 3, true), vec![], g, undef));
    }
    check(cases);
}

/// An SVE trap (EC 0x19, CPTR_EL2.TZ): a guest's switches its SVE state in
/// and runs the instruction again; the host has no SVE: UNDEFINED.
#[test]
fn sve_traps() {
    let (g, h) = (guest(), host());
    let t = trap(esr(0x19, 0), 0, 0);
    check(vec![
        ("guest SVE", t, vec![], g, at(Action::Sve)),
        (
            "host SVE",
            t,
            vec![],
            h,
            at(Action::Inject(Injected::Undefined)),
        ),
    ]);
}

#[test]
fn decode_takes_values_from_the_registers() {
    let x: Vec<u64> = (100..131).collect();
    let r = regs(&x);
    assert_eq!(
        policy::decode(&sys(SCTLR_EL1, 30, false), &r),
        Exit::SysReg {
            access: SysRegAccess {
                enc: SCTLR_EL1,
                reg: 30,
                read: false
            },
            value: 130
        }
    );
    assert_eq!(
        policy::decode(&hvc(), &r),
        Exit::Call {
            smc: false,
            x: [100, 101, 102, 103]
        }
    );
    // A load's value is not the register's old contents.
    let Exit::DataAbort { abort, value, .. } =
        policy::decode(&dabt(UART_IPA, 4, 5, false, PERM), &r)
    else {
        panic!("not a data abort");
    };
    assert_eq!(
        (abort, value),
        (DataAbort::Mmio(mmio(UART_IPA, 4, 5, false)), 0)
    );
}
