//! List-register scheduling with the fake backend: flush/sync around simulated guest runs.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod common;
use common::{dr, dw, setup, Fake};
use vgic::lr::hcr;
use vgic::{LrState, Region, VcpuIf, Version, Vgic};

/// Runs the guest until nothing is left: each round flushes, the guest takes one interrupt
/// (ack + EOI), and the vCPU syncs. Returns the delivered INTIDs in order.
fn drain(g: &Vgic, cpu: &mut VcpuIf, f: &mut Fake) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..200 {
        cpu.flush(g, f);
        let Some(i) = f.take_one() else {
            break;
        };
        out.push(i);
        cpu.sync(g, f);
    }
    cpu.sync(g, f);
    out
}

#[test]
fn overflow_delivers_by_priority_then_refills() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    let prios = [0x80u8, 0x10, 0x40, 0xa0, 0x20, 0x60, 0x30, 0x50];
    for (k, p) in prios.iter().enumerate() {
        setup(&g, 0, 40 + k as u32, *p);
        assert_eq!(g.inject(0, 40 + k as u32).unwrap(), 1);
    }
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    // The four highest priorities are loaded, highest first; underflow is armed.
    assert_eq!(cpu.loaded(), &[41, 44, 46, 42]);
    assert!(f.valid().iter().all(|(_, s)| *s == LrState::Pending));
    assert_eq!(f.hcr, hcr::EN | hcr::UIE);
    // The guest handles three; then the list registers underflow and it would exit.
    for _ in 0..3 {
        f.take_one().unwrap();
    }
    assert!(f.maintenance());
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(cpu.loaded(), &[42, 47, 45, 40], "refilled by priority");
    assert_eq!(f.hcr, hcr::EN | hcr::UIE);
    let rest = drain(&g, &mut cpu, &mut f);
    assert_eq!(rest, [42, 47, 45, 40, 43]);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
    assert_eq!(f.hcr, hcr::EN, "no underflow without overflow");
}

#[test]
fn eoimode0_ack_keeps_active_until_eoi() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    setup(&g, 0, 50, 0x80);
    g.inject(0, 50).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    assert_eq!(f.ack(), Some(50));
    cpu.sync(&g, &mut f);
    // Active in the distributor (ISACTIVER1 bit 18), and still presented on re-entry.
    assert_eq!(dr(&g, 0, 0x304), 1 << 18);
    assert_eq!(dr(&g, 0, 0x204), 0, "no longer pending");
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(50, LrState::Active)]);
    f.eoi(50);
    assert_eq!(f.valid(), []);
    cpu.sync(&g, &mut f);
    assert_eq!(dr(&g, 0, 0x304), 0);
    cpu.flush(&g, &mut f);
    assert_eq!(cpu.loaded(), &[] as &[u8]);
}

#[test]
fn eoimode1_priority_drop_then_deactivation() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    setup(&g, 0, 50, 0x80);
    g.inject(0, 50).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    f.set_eoimode(true);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    assert_eq!(f.ack(), Some(50));
    f.eoi(50);
    assert_eq!(f.aprs, [0, 0], "priority dropped");
    assert_eq!(f.valid(), [(50, LrState::Active)], "still active");
    cpu.sync(&g, &mut f);
    assert_eq!(dr(&g, 0, 0x304), 1 << 18);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(50, LrState::Active)]);
    f.dir(50);
    cpu.sync(&g, &mut f);
    assert_eq!(dr(&g, 0, 0x304), 0);
}

#[test]
fn level_interrupt_is_resampled_after_eoi() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    setup(&g, 0, vgic::VTIMER_PPI, 0xa0);
    assert_eq!(g.set_level(0, 27, true).unwrap(), 1);
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    let lr = f.lr(0);
    assert_eq!(
        (lr.vintid, lr.state, lr.eoi_maint),
        (27, LrState::Pending, true)
    );
    assert!(lr.group1);
    assert_eq!(f.take_one(), Some(27));
    assert!(f.maintenance(), "EOI maintenance exit");
    cpu.sync(&g, &mut f);
    // The line is still high: pending again.
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(27, LrState::Pending)]);
    // The line drops before the guest takes it: gone at the next entry.
    g.set_level(0, 27, false).unwrap();
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
    assert!(!g.has_pending(0, 0xff));
    // The same, with the line driven by the flush itself (as the run loop samples the timer).
    cpu.sync(&g, &mut f);
    cpu.flush_with_line(&g, &mut f, Some((27, true)));
    assert_eq!(f.valid(), [(27, LrState::Pending)]);
    cpu.sync(&g, &mut f);
    cpu.flush_with_line(&g, &mut f, Some((27, false)));
    assert_eq!(f.valid(), []);
    // Only PPIs: an SPI's line is left alone.
    setup(&g, 0, 40, 0xa0);
    cpu.sync(&g, &mut f);
    cpu.flush_with_line(&g, &mut f, Some((40, true)));
    assert_eq!(f.valid(), []);
}

#[test]
fn active_level_interrupt_is_loaded_without_pending() {
    // The guest acknowledged the timer and exits (say, its time slice ended) before its handler
    // lowers the line: the next entry must not load it pending+active, or the handler's EOI would
    // leave a stale pending state behind and the guest would take it twice.
    let g = Vgic::new(Version::V3, 1).unwrap();
    setup(&g, 0, vgic::VTIMER_PPI, 0xa0);
    g.set_level(0, 27, true).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    assert_eq!(f.ack(), Some(27));
    cpu.sync(&g, &mut f);
    // The line is still high at the next entry (sampled before the handler ran).
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(27, LrState::Active)]);
    assert!(
        f.lr(0).eoi_maint,
        "deactivation exits to re-sample the line"
    );
    // The handler lowers the line, then deactivates: nothing pending is left in the LR.
    f.eoi(27);
    assert_eq!(f.valid(), []);
    assert!(f.maintenance(), "EOI maintenance exit");
    g.set_level(0, 27, false).unwrap();
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
    // Had the line stayed high, the re-sample would make it pending again.
    g.set_level(0, 27, true).unwrap();
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(27, LrState::Pending)]);
}

#[test]
fn edge_while_active_becomes_pending_and_active() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    dw(&g, 0, 0xc0c, 2); // ICFGR3 covers INTIDs 48..64: INTID 48 edge
    setup(&g, 0, 48, 0x80);
    g.inject(0, 48).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    assert!(!f.lr(0).eoi_maint, "edge: no EOI maintenance");
    assert_eq!(f.ack(), Some(48));
    // A second edge while the guest handles the first: the loaded vCPU is kicked.
    assert_eq!(g.inject(0, 48).unwrap(), 1);
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(48, LrState::PendingActive)]);
    f.eoi(48);
    assert_eq!(f.valid(), [(48, LrState::Pending)]);
    assert_eq!(f.take_one(), Some(48));
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
}

#[test]
fn disabled_masked_and_misrouted_are_not_delivered() {
    let g = Vgic::new(Version::V3, 2).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu0 = VcpuIf::new(0);
    // Disabled: pending but not enabled.
    g.inject(0, 33).unwrap();
    cpu0.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
    assert_eq!(dr(&g, 0, 0x204) & 2, 2, "pending is still visible");
    // Enabled, but group 1 disabled in GICD_CTLR.
    setup(&g, 0, 33, 0x80);
    dw(&g, 0, 0, 1);
    cpu0.sync(&g, &mut f);
    cpu0.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
    // Group enabled: delivered. Then routed to vCPU 1: vCPU 0 no longer gets it.
    dw(&g, 0, 0, 2);
    cpu0.sync(&g, &mut f);
    cpu0.flush(&g, &mut f);
    assert_eq!(f.valid(), [(33, LrState::Pending)]);
    cpu0.sync(&g, &mut f);
    let k = g
        .mmio(0, Region::Dist, 0x6000 + 8 * 33, 8, Some(1))
        .unwrap()
        .kick;
    assert_eq!(k, 0b10);
    cpu0.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
    let mut f1 = Fake::new(Version::V3, 4);
    let mut cpu1 = VcpuIf::new(1);
    cpu1.flush(&g, &mut f1);
    assert_eq!(f1.valid(), [(33, LrState::Pending)]);
    // Masked by the priority mask: in the list register, but the guest cannot take it, and
    // WFI would not wake.
    f1.set_pmr(0x80);
    assert_eq!(f1.ack(), None);
    cpu1.sync(&g, &mut f1);
    assert!(!g.has_pending(1, cpu1.priority_mask(Version::V3, &mut f1)));
    f1.set_pmr(0x90);
    assert!(g.has_pending(1, cpu1.priority_mask(Version::V3, &mut f1)));
    // Routed to a vCPU that does not exist: nobody.
    g.mmio(0, Region::Dist, 0x6000 + 8 * 33, 8, Some(7))
        .unwrap();
    assert!(!g.has_pending(1, 0xff) && !g.has_pending(0, 0xff));
}

#[test]
fn active_spi_stays_with_the_vcpu_that_took_it() {
    let g = Vgic::new(Version::V3, 2).unwrap();
    setup(&g, 0, 60, 0x80);
    g.inject(0, 60).unwrap();
    let (mut f0, mut f1) = (Fake::new(Version::V3, 2), Fake::new(Version::V3, 2));
    let (mut c0, mut c1) = (VcpuIf::new(0), VcpuIf::new(1));
    c0.flush(&g, &mut f0);
    f0.ack().unwrap();
    c0.sync(&g, &mut f0);
    g.mmio(0, Region::Dist, 0x6000 + 8 * 60, 8, Some(1))
        .unwrap();
    c1.flush(&g, &mut f1);
    assert_eq!(f1.valid(), []);
    c0.flush(&g, &mut f0);
    assert_eq!(f0.valid(), [(60, LrState::Active)]);
    f0.eoi(60);
    c0.sync(&g, &mut f0);
    // Now inactive: a new edge goes to the new route.
    g.inject(0, 60).unwrap();
    c1.sync(&g, &mut f1);
    c1.flush(&g, &mut f1);
    assert_eq!(f1.valid(), [(60, LrState::Pending)]);
}

#[test]
fn mmio_clear_pending_while_loaded_wins_over_the_list_register() {
    let g = Vgic::new(Version::V3, 2).unwrap();
    setup(&g, 0, 40, 0x80);
    g.inject(0, 40).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    // vCPU 1 clears it while vCPU 0 runs with it in a list register: vCPU 0 is kicked.
    assert_eq!(dw(&g, 1, 0x284, 1 << 8), 1);
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
}

#[test]
fn v2_sgis_carry_their_sender_one_source_at_a_time() {
    let g = Vgic::new(Version::V2, 3).unwrap();
    dw(&g, 0, 0, 1); // group 0 (v2 default)
                     // SGIR from vCPU 2: SGI 5 to CPUs 0 and 1.
    assert_eq!(dw(&g, 2, 0xf00, (0b011 << 16) | 5), 0b011);
    // SGIR from vCPU 1: SGI 5 to "all but self" (0 and 2).
    assert_eq!(dw(&g, 1, 0xf00, (1 << 24) | 5), 0b101);
    // SPENDSGIR byte of SGI 5 on vCPU 0 shows both sources (bits 1 and 2).
    let v = g.mmio(0, Region::Dist, 0xf25, 1, None).unwrap().value;
    assert_eq!(v, 0b110);
    let mut f = Fake::new(Version::V2, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    let lr = f.lr(0);
    assert_eq!((lr.vintid, lr.source, lr.state), (5, 1, LrState::Pending));
    assert!(lr.eoi_maint, "another source waits");
    assert!(!lr.group1);
    assert_eq!(f.take_one(), Some(5));
    assert!(f.maintenance());
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    let lr = f.lr(0);
    assert_eq!((lr.vintid, lr.source, lr.eoi_maint), (5, 2, false));
    f.take_one();
    cpu.sync(&g, &mut f);
    assert_eq!(g.mmio(0, Region::Dist, 0xf25, 1, None).unwrap().value, 0);
    // CPENDSGIR clears a source without delivering it; "self" filter.
    dw(&g, 0, 0xf00, (2 << 24) | 7);
    assert_eq!(g.mmio(0, Region::Dist, 0xf27, 1, None).unwrap().value, 1);
    g.mmio(0, Region::Dist, 0xf17, 1, Some(1)).unwrap();
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), []);
}

#[test]
fn v3_sgi1r_targets_by_list_affinity_and_irm() {
    let g = Vgic::new(Version::V3, 4).unwrap();
    dw(&g, 0, 0, 2);
    // SGI 3 to TargetList {1, 3}.
    assert_eq!(g.sgi1r(0, (3 << 24) | 0b1010).unwrap(), 0b1010);
    // Aff1 = 1: no vCPU has that affinity.
    assert_eq!(g.sgi1r(0, (1 << 16) | (3 << 24) | 0b1).unwrap(), 0);
    // IRM: everyone but the sender.
    assert_eq!(g.sgi1r(2, (1 << 40) | (4 << 24)).unwrap(), 0b1011);
    // Bits for vCPUs that do not exist are ignored.
    assert_eq!(g.sgi1r(0, (3 << 24) | 0xff00).unwrap(), 0);
    // The targets as the fast path asks for them (it takes the SGIs to
    // others only): the same decode, the sender included when listed.
    assert_eq!(g.sgi1r_targets(0, (3 << 24) | 0b1011), 0b1011);
    assert_eq!(g.sgi1r_targets(2, (1 << 40) | 0b0100), 0b1011);
    assert_eq!(g.sgi1r_targets(0, (1 << 16) | 0b1), 0);
    assert_eq!(g.sgi1r_targets(0, (1 << 44) | 0b1), 0);
    assert_eq!(g.sgi1r_targets(0, 0xfff0), 0);
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(3);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(3, LrState::Pending), (4, LrState::Pending)]);
    // SGI pending state is visible in the SGI frame's ISPENDR0.
    let base = 3 * vgic::REDIST_FRAME_SIZE + 0x1_0000;
    cpu.sync(&g, &mut f);
    let p = g
        .mmio(3, Region::Redist, base + 0x200, 4, None)
        .unwrap()
        .value;
    assert_eq!(p, (1 << 3) | (1 << 4));
}

#[test]
fn save_restore_round_trips_vmcr_and_active_priorities() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    setup(&g, 0, 40, 0x40);
    g.inject(0, 40).unwrap();
    let mut f = Fake::new(Version::V3, 4);
    f.set_eoimode(true);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    f.ack();
    let (vmcr, aprs) = (f.vmcr, f.aprs);
    assert_ne!(aprs, [0, 0]);
    cpu.sync(&g, &mut f);
    cpu.save(&mut f);
    assert_eq!(f.hcr, 0, "interface off while descheduled");
    // Nothing of this vCPU stays for the next context on the CPU (the host,
    // another VM's vCPU): VMCR and the active priorities at reset, no list
    // register valid.
    assert_eq!((f.vmcr, f.aprs), (0, [0, 0]), "VMCR and APRs reset by save");
    assert_eq!(f.valid(), [], "list registers emptied by save");
    cpu.restore(&mut f);
    assert_eq!((f.vmcr, f.aprs), (vmcr, aprs));
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(40, LrState::Active)]);
}

#[test]
fn stale_list_registers_are_cleared_and_double_flush_is_safe() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    for i in 0..3 {
        setup(&g, 0, 40 + i, 0x40);
        g.inject(0, 40 + i).unwrap();
    }
    let mut f = Fake::new(Version::V3, 4);
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut f);
    cpu.flush(&g, &mut f); // no sync in between: synced first, nothing lost
    assert_eq!(f.valid().len(), 3);
    dw(&g, 0, 0x184, 0b011 << 8); // disable 40 and 41
    cpu.sync(&g, &mut f);
    cpu.flush(&g, &mut f);
    assert_eq!(f.valid(), [(42, LrState::Pending)]);
    assert_eq!(f.raw[1..4], [0, 0, 0]);
}

#[test]
fn v3_sysregs_backend_records_lr_and_hcr_writes() {
    use barriers::{GuestPending, Insn, SysReg};
    let g = Vgic::new(Version::V3, 1).unwrap();
    setup(&g, 0, 40, 0x40);
    g.inject(0, 40).unwrap();
    // SAFETY: host test: the recording backend; SRE = 1 as the hypervisor's bring-up sets it.
    let sre = barriers::isb(unsafe { barriers::regs::IccSreEl2::write(0b1001) });
    barriers::trace::take();
    let mut pending = GuestPending::new();
    let trap_tc = 1 << 10;
    // SAFETY: host test; `trap_tc` stands for the hypervisor's traps.
    let mut b = unsafe { vgic::V3Sysregs::new(&sre, &mut pending, trap_tc) };
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut b);
    // The list-register writes are guest-only: the entry ERET discharges them.
    barriers::trace::set_reg(SysReg::SctlrEl2, barriers::sync::SCTLR_EL2_EOS_EIS);
    let eos = barriers::sync::check_eos();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut vttbr = unsafe { barriers::vttbr::Vttbr::assume_loaded(1 << 48) };
    let entry = barriers::enter_guest(&eos, &mut vttbr, pending);
    // SAFETY: host test: nothing runs; the recording stands for the world switch's ERET and the
    // guest's run.
    let _ = unsafe { entry.run(|| ()) };
    let msrs: Vec<_> = barriers::trace::take()
        .into_iter()
        .filter_map(|i| match i {
            Insn::Msr { reg, value, .. } => Some((reg, value)),
            _ => None,
        })
        .collect();
    // ICH_VTR_EL2 reads 0 on the host (one list register).
    let lr = vgic::Lr::decode_v3(msrs[0].1);
    assert_eq!(msrs[0].0, SysReg::IchLr(0));
    assert_eq!(
        (lr.vintid, lr.priority, lr.state),
        (40, 0x40, LrState::Pending)
    );
    assert_eq!(msrs[1], (SysReg::IchHcrEl2, (trap_tc | hcr::EN) as u64));
}

#[test]
fn v2_mmio_backend_uses_the_gich_layout() {
    let g = Vgic::new(Version::V2, 1).unwrap();
    dw(&g, 0, 0, 1);
    dw(&g, 0, 0x800 + 40, 1); // ITARGETSR: INTID 40 to CPU 0 (byte in a word write)
    setup(&g, 0, 40, 0x48);
    g.inject(0, 40).unwrap();
    let mut frame = [0u32; 0x50];
    frame[1] = 3; // GICH_VTR.ListRegs = 3: four list registers
    frame[0x30 / 4] = 0xf; // ELRSR0: all empty
                           // SAFETY: `frame` is 0x140 bytes, aligned, and only used through the backend below.
    let mut b = unsafe { vgic::V2Mmio::new(frame.as_mut_ptr() as usize) };
    let mut cpu = VcpuIf::new(0);
    cpu.flush(&g, &mut b);
    // LR0 at 0x100: pending, priority 0x48 >> 3 = 9, vINTID 40, EOI (level-sensitive).
    // SAFETY: as above (a volatile read of the frame the backend wrote).
    let lr0 = unsafe { core::ptr::read_volatile(frame.as_ptr().add(0x100 / 4)) };
    assert_eq!(lr0, 0x1000_0000 | (9 << 23) | (1 << 19) | 40);
    cpu.sync(&g, &mut b);
    cpu.save(&mut b);
    assert_eq!(frame[0], 0, "HCR cleared by save");
    assert_eq!(frame[0x100 / 4], 0, "LR0 emptied by save");
    assert_eq!(frame[0x8 / 4], 0, "VMCR reset by save");
}
