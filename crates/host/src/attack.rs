//! The host as an attacker of its protected VMs (`attack=NAME`; `intx`, its
//! interrupt path, is in `attack_intx.rs`): each attack
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
        "dma" => dma(info),
        "intx" => crate::attack_intx::intx(info),
        "dt" => dt(info),
        _ => crate::fail(format_args!("unknown attack {name:?}")),
    }
}

/// Item 1: starting a protected VM's vCPUs where the host likes. The host
/// may set vCPU 0's entry once, before the VM runs; vCPU 1 (before the
/// guest started it, and after its CPU_OFF) and vCPU 0 again must be
/// Denied. guest-hello starts vCPU 1 itself and waits for it to go off.
fn vcpu_init(info: &BootInfo) {
    let (h, entry) = many::load(many::hello(info), true, 2);
    let early = crate::hostif::vcpu_init(h, 1, entry, 0x666);
    if let Err(e) = crate::hostif::vcpu_init(h, 0, entry, h) {
        crate::fail(format_args!(
            "attack vcpu_init: the one allowed VCPU_INIT: {e:?}"
        ));
    }
    let twice = crate::hostif::vcpu_init(h, 0, entry, 0x666);
    many::power_off(h, 2);
    let after_off = crate::hostif::vcpu_init(h, 1, entry, 0x666);
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
        if let Err(e) = crate::hostif::vcpu_init(h, 0, entry, h | arg << 8) {
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
    if let Err(e) = crate::hostif::vcpu_init(h, 0, entry, h | 3 << 8) {
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

/// Sector the `dma` attack's transfers use (the test puts a pattern there).
const DMA_SECTOR: usize = 8;
/// Sector of the legitimate write after the attacks.
const DMA_GOOD_SECTOR: usize = 16;
/// Polls of the used ring before a request counts as never completed.
const DMA_POLLS: u32 = 2_000_000;

/// Issue 18 item 2: the host programs its virtio-blk device to move data
/// where the host itself may not reach: a disk sector into the hypervisor's
/// image and into a page donated to a protected VM, and a protected page
/// out to the disk. Each transfer must be refused by the SMMU (an event
/// recorded); afterwards the protected guest still runs from the page the
/// attack aimed at, and a legitimate read and write work.
fn dma(info: &BootInfo) {
    use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
    let Some(mut pci) = crate::pci::init(info) else {
        crate::fail(format_args!("attack dma: the host has no PCIe"));
    };
    let Some(df) = pci.blk else {
        crate::fail(format_args!("attack dma: no virtio-blk-pci device"));
    };
    let (h, entry, guest_pa) = many::load_at(many::hello(info), true, 1);
    // The hypervisor's image on QEMU virt (its `load_address`): an attacker
    // knows the board it runs on, and the hypervisor's memory is never in
    // the host's stage 2, so the attack has to go around the CPU.
    let hyp_pa = 0x4020_0000;
    let mut results = alloc::vec::Vec::new();
    for (what, target, write) in [
        ("disk -> hypervisor image", hyp_pa, false),
        ("disk -> protected page", guest_pa, false),
        ("protected page -> disk", guest_pa, true),
    ] {
        let mut blk = match VirtIOBlk::<crate::pci::HostHal, _>::new(pci.transport(df)) {
            Ok(b) => b,
            Err(e) => crate::fail(format_args!("attack dma: virtio-blk: {e:?}")),
        };
        let mut buf = [0u8; SECTOR_SIZE];
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        crate::pci::redirect_next(buf.as_ptr(), target);
        // SAFETY: req, buf and resp outlive the request (polled to its end
        // or abandoned with the device reset when `blk` is dropped).
        let token = unsafe {
            if write {
                blk.write_blocks_nb(DMA_SECTOR, &mut req, &buf, &mut resp)
            } else {
                blk.read_blocks_nb(DMA_SECTOR, &mut req, &mut buf, &mut resp)
            }
        };
        let outcome = match token {
            Err(e) => alloc::format!("not queued ({e:?})"),
            Ok(t) => {
                let mut done = None;
                for _ in 0..DMA_POLLS {
                    if blk.peek_used() == Some(t) {
                        // SAFETY: the same req, buf and resp as queued.
                        done = Some(unsafe {
                            if write {
                                blk.complete_write_blocks(t, &req, &buf, &mut resp)
                            } else {
                                blk.complete_read_blocks(t, &req, &mut buf, &mut resp)
                            }
                        });
                        break;
                    }
                    core::hint::spin_loop();
                }
                match done {
                    Some(Ok(())) => "completed".into(),
                    Some(Err(e)) => alloc::format!("failed ({e:?})"),
                    None => "never completed".into(),
                }
            }
        };
        let refused = call(hyp_abi::STATS, [0, 202, 0, 0]).unwrap_or(u64::MAX);
        results.push((what, target, outcome, refused));
    }
    let mut before = 0;
    for (what, target, outcome, refused) in &results {
        println!(
            "host: attack dma: {what} ({target:#x}): request {outcome}, {} accesses refused by the SMMU",
            refused - before
        );
        before = *refused;
    }
    // The protected guest runs from the page the attack aimed at.
    if let Err(e) = crate::hostif::vcpu_init(h, 0, entry, h) {
        crate::fail(format_args!("attack dma: VCPU_INIT: {e:?}"));
    }
    many::power_off(h, 1);
    // A legitimate write and read through the same device.
    let mut blk = match VirtIOBlk::<crate::pci::HostHal, _>::new(pci.transport(df)) {
        Ok(b) => b,
        Err(e) => crate::fail(format_args!("attack dma: virtio-blk: {e:?}")),
    };
    let mut good = [0u8; SECTOR_SIZE];
    for (i, b) in good.iter_mut().enumerate() {
        *b = (i as u8) ^ 0x5a;
    }
    let w = blk.write_blocks(DMA_GOOD_SECTOR, &good);
    let mut back = [0u8; SECTOR_SIZE];
    let r = blk.read_blocks(DMA_GOOD_SECTOR, &mut back);
    println!(
        "host: attack dma: legitimate write {w:?}, read back {r:?}, equal {}",
        back == good
    );
    if let Err(e) = crate::hostif::destroy_vm(h) {
        crate::fail(format_args!("attack dma: VM_DESTROY: {e:?}"));
    }
}

/// RAM of each `dt` attack VM: the guest-hello "kernel" at its start, the
/// pool at 2 MiB, the device tree at 3 MiB.
const DT_RAM: u64 = 4 << 20;
const DT_POOL: (u64, u64) = (crate::GUEST_RAM_IPA + (2 << 20), 1 << 20);
const DT_IPA: u64 = crate::GUEST_RAM_IPA + (3 << 20);

/// Issue 19 item 7: device trees that break the protected-VM firmware's
/// rules. For each, the host makes a protected VM (guest-hello as its
/// kernel), writes the broken tree, donates the RAM and runs vCPU 0, which
/// starts in the firmware: it must print `pvmfw: refused: ...` and power
/// the VM off before the kernel runs. Then the host calls MEASUREMENT_SET
/// itself (the firmware's call: NOT_SUPPORTED for the host).
fn dt(info: &BootInfo) {
    use crate::dtb::{linux_dtb, Hostile, LinuxVm, VirtioMmio};
    let module = many::hello(info);
    let dev = |ipa| VirtioMmio {
        ipa,
        size: 0x200,
        spi: 16,
    };
    let (inside, outside) = ([dev(hyp_abi::layout::HOST_MMIO_IPA)], [dev(0x0c00_0000)]);
    let honest = LinuxVm {
        gic: info.vgic().unwrap_or(hyp_abi::Vgic::V3),
        vcpus: 1,
        mem: DT_RAM,
        cmdline: "",
        initrd: None,
        boot: 1,
        virtio: &inside,
        dma_pool: Some(DT_POOL),
        hostile: Hostile::None,
        pmu: false,
    };
    // The honest tree with a /memreserve/ entry patched in (it would hide
    // RAM from the kernel): refused by the firmware's format check.
    let memreserve = |dtb: &mut alloc::vec::Vec<u8>| {
        let rsv = u32::from_be_bytes([dtb[16], dtb[17], dtb[18], dtb[19]]) as usize;
        dtb[rsv + 3] = 0x10; // address 0x10_0000_0000..
        dtb[rsv + 15] = 0x10; // size 0x10
    };
    let keep = |_: &mut alloc::vec::Vec<u8>| {};
    /// A change to the written blob.
    type Patch<'p> = &'p dyn Fn(&mut alloc::vec::Vec<u8>);
    let cases: [(&str, LinuxVm<'_>, Patch<'_>); 5] = [
        (
            "oversized pool",
            LinuxVm {
                dma_pool: Some((crate::GUEST_RAM_IPA, 32 << 20)),
                ..honest
            },
            &keep,
        ),
        (
            "second memory node",
            LinuxVm {
                hostile: Hostile::SecondMemory,
                ..honest
            },
            &keep,
        ),
        (
            "device without the pool",
            LinuxVm {
                hostile: Hostile::DeviceWithoutPool,
                ..honest
            },
            &keep,
        ),
        (
            "device outside the window",
            LinuxVm {
                virtio: &outside,
                ..honest
            },
            &keep,
        ),
        ("memory reservation", honest, &memreserve),
    ];
    for (what, vm, patch) in cases {
        let mut dtb =
            linux_dtb(&vm).unwrap_or_else(|e| crate::fail(format_args!("attack dt: {e}")));
        patch(&mut dtb);
        let h = match crate::hostif::vm_create(1, hyp_abi::FLAG_PROTECTED) {
            Ok(h) => h.0,
            Err(e) => crate::fail(format_args!("attack dt: VM_CREATE: {e:?}")),
        };
        let Some(pa) = crate::alloc_pages(DT_RAM) else {
            crate::fail(format_args!("attack dt: no host memory"));
        };
        // SAFETY: [pa, pa + DT_RAM) is host RAM nobody else uses (bump
        // allocated), not yet given to the VM.
        unsafe { crate::load_image(module, pa) };
        let at = pa + (DT_IPA - crate::GUEST_RAM_IPA);
        for (i, &b) in dtb.iter().enumerate() {
            // SAFETY: as above; the tree (a few hundred bytes) fits the
            // RAM's last MiB. Byte stores: the host's MMU is off.
            unsafe { ((at + i as u64) as *mut u8).write_volatile(b) };
        }
        let pages = DT_RAM / crate::PAGE;
        if let Err(e) = crate::hostif::give(h, pa, crate::GUEST_RAM_IPA, pages, true, false) {
            crate::fail(format_args!("attack dt: MEM_DONATE: {e:?}"));
        }
        if let Err(e) = crate::hostif::vcpu_init(h, 0, module.entry, DT_IPA) {
            crate::fail(format_args!("attack dt: VCPU_INIT: {e:?}"));
        }
        many::power_off(h, 1);
        println!("host: attack dt: {what}: VM {h} powered off");
        if let Err(e) = crate::hostif::destroy_vm(h) {
            crate::fail(format_args!("attack dt: VM_DESTROY: {e:?}"));
        }
    }
    let r = crate::hostif::call_full(hyp_abi::pvmfw::MEASUREMENT_SET, [0; 4])[0] as i64;
    println!("host: attack dt: MEASUREMENT_SET from the host: {r}");
}
