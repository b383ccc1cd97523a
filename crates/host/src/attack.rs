//! The host as an attacker of its protected VMs (`attack=NAME`): each attack
//! prints what the hypervisor answered, and `tests/tests/hostile_host.rs`
//! checks it.

use crate::hostif::call;
use crate::many;
use guest_rt::println;
use hyp_abi::BootInfo;

/// Runs attack `name`.
pub fn run(info: &BootInfo, name: &str) {
    match name {
        "vcpu_init" => vcpu_init(info),
        "fp" => fp(info),
        "vmcr" => vmcr(info),
        _ => crate::fail(format_args!("unknown attack {name:?}")),
    }
}

/// Item 1: starting a protected VM's vCPUs where the host likes. The host
/// may set vCPU 0's entry once, before the VM runs; vCPU 1 (before the
/// guest started it, and after its CPU_OFF) and vCPU 0 again must be
/// Denied. guest-hello starts vCPU 1 itself and waits for it to go off.
fn vcpu_init(info: &BootInfo) {
    let (h, entry) = many::load(many::hello(info), true, 2);
    let early = call(hyp_abi::VCPU_INIT, [h, 1, entry, 0x666]);
    if let Err(e) = call(hyp_abi::VCPU_INIT, [h, 0, entry, h]) {
        crate::fail(format_args!(
            "attack vcpu_init: the one allowed VCPU_INIT: {e:?}"
        ));
    }
    let twice = call(hyp_abi::VCPU_INIT, [h, 0, entry, 0x666]);
    many::power_off(h, 2);
    let after_off = call(hyp_abi::VCPU_INIT, [h, 1, entry, 0x666]);
    println!(
        "host: attack vcpu_init: vCPU 1 before the guest started it: {early:?}; vCPU 0 a second time: {twice:?}; vCPU 1 after its CPU_OFF: {after_off:?}"
    );
    if let Err(e) = crate::hostif::destroy_vm(h) {
        crate::fail(format_args!("attack vcpu_init: VM_DESTROY: {e:?}"));
    }
}

/// Rounds of the `fp` attack.
const FP_ROUNDS: u64 = 1000;

/// Item 3: the host's FP/SIMD state survives VCPU_RUN. Each round, for a
/// guest that uses FP/SIMD (guest-fp) and one that does not (guest-fp
/// idle), the host loads a pattern into all 32 Q registers, FPCR and FPSR,
/// runs the guest until its next WFI exit, and checks every register.
fn fp(info: &BootInfo) {
    use guest_rt::fpregs::{self, FpRegs, FPCR_MASK, FPSR_MASK};
    let Some(module) = info.modules().iter().find(|m| m.name() == "guest-fp") else {
        crate::fail(format_args!("attack fp: no guest-fp image"));
    };
    let arg_busy = (FP_ROUNDS + 10) << 1;
    let arg_idle = arg_busy | 1;
    let mut vms = [(0, "uses FP"), (0, "does not")];
    for (i, arg) in [arg_busy, arg_idle].into_iter().enumerate() {
        let (h, entry) = many::load(module, i == 0, 1);
        if let Err(e) = call(hyp_abi::VCPU_INIT, [h, 0, entry, h | arg << 8]) {
            crate::fail(format_args!("attack fp: VCPU_INIT: {e:?}"));
        }
        vms[i].0 = h;
    }
    let mut src = FpRegs::zero();
    let mut bad = 0u64;
    for round in 0..FP_ROUNDS {
        for (i, &(h, what)) in vms.iter().enumerate() {
            for (r, q) in src.q.iter_mut().enumerate() {
                let lo = 0x4f57_0000_0000_0000 | (round << 24) | ((i as u64) << 16) | r as u64;
                *q = (u128::from(!lo.rotate_left(29)) << 64) | u128::from(lo);
            }
            src.fpcr = (round << 22) & FPCR_MASK;
            src.fpsr = (round.wrapping_mul(0x9e37) ^ i as u64) & FPSR_MASK;
            let (dst, x) = fpregs::across_hvc(&src, [u64::from(hyp_abi::VCPU_RUN), h, 0, 0]);
            if x[0] != hyp_abi::exit::YIELD {
                crate::fail(format_args!(
                    "attack fp: round {round}: VCPU_RUN of the guest that {what} returned {:#x}",
                    x[0]
                ));
            }
            let q = (0..32).find(|&r| dst.q[r] != src.q[r]);
            if q.is_some() || dst.fpcr & FPCR_MASK != src.fpcr || dst.fpsr & FPSR_MASK != src.fpsr {
                bad += 1;
                if bad <= 3 {
                    let r = q.unwrap_or(0);
                    println!(
                        "host: attack fp: round {round}, guest that {what}: q{r} {:#034x} (want {:#034x}), FPCR {:#x} (want {:#x}), FPSR {:#x} (want {:#x})",
                        dst.q[r], src.q[r], dst.fpcr, src.fpcr, dst.fpsr, src.fpsr
                    );
                }
            }
        }
    }
    println!(
        "host: attack fp: {FP_ROUNDS} rounds x 2 guests (one uses FP/SIMD, one does not): {bad} rounds with host Q0-Q31/FPCR/FPSR changed"
    );
    for (h, _) in vms {
        let _ = crate::hostif::destroy_vm(h);
    }
}

/// Item 4: no EL1 or virtual-GIC state of a guest reaches the host. A
/// protected guest-faults in its `leak` mode (`arg=3`) sets a marker in
/// each register of its list (CSSELR_EL1, the GICv3 virtual CPU interface:
/// ICH_VMCR_EL2's priority mask, binary points and group enables, and the
/// active priorities) and powers off; then the host, on the same CPU,
/// reads them through its own names (its `ICC_*` accesses reach the same
/// virtual CPU interface, HCR_EL2.IMO/FMO) and prints what it sees. On
/// GICv2 the host has no GICV frame, so only CSSELR_EL1 is read.
fn vmcr(info: &BootInfo) {
    macro_rules! rd {
        ($enc:literal) => {{
            let v: u64;
            // SAFETY: a register read with no side effects.
            unsafe { core::arch::asm!(concat!("mrs {0}, ", $enc), out(reg) v, options(nomem, nostack)) };
            v
        }};
    }
    let Some(module) = info.modules().iter().find(|m| m.name() == "guest-faults") else {
        crate::fail(format_args!("attack vmcr: no guest-faults image"));
    };
    let (h, entry) = many::load(module, true, 1);
    if let Err(e) = call(hyp_abi::VCPU_INIT, [h, 0, entry, h | 3 << 8]) {
        crate::fail(format_args!("attack vmcr: VCPU_INIT: {e:?}"));
    }
    many::power_off(h, 1);
    let csselr = rd!("csselr_el1");
    if guest_rt::gic::version() == guest_rt::gic::Version::V2 {
        println!("host: attack vmcr: after the guest: CSSELR_EL1={csselr:#x}");
    } else {
        let (pmr, bpr0, bpr1) = (
            rd!("s3_0_c4_c6_0"),
            rd!("s3_0_c12_c8_3"),
            rd!("s3_0_c12_c12_3"),
        );
        let (grp0, grp1, ctlr) = (
            rd!("s3_0_c12_c12_6"),
            rd!("s3_0_c12_c12_7"),
            rd!("s3_0_c12_c12_4"),
        );
        let (ap0, ap1) = (rd!("s3_0_c12_c8_4"), rd!("s3_0_c12_c9_0"));
        println!(
            "host: attack vmcr: after the guest: CSSELR_EL1={csselr:#x} ICC_PMR_EL1={pmr:#x} ICC_BPR0_EL1={bpr0:#x} ICC_BPR1_EL1={bpr1:#x} ICC_IGRPEN0_EL1={grp0:#x} ICC_IGRPEN1_EL1={grp1:#x} ICC_CTLR_EL1.EOImode={} ICC_AP0R0_EL1={ap0:#x} ICC_AP1R0_EL1={ap1:#x}",
            (ctlr >> 1) & 1
        );
    }
    if let Err(e) = crate::hostif::destroy_vm(h) {
        crate::fail(format_args!("attack vmcr: VM_DESTROY: {e:?}"));
    }
}
