//! VTCR/VTTBR values, EL2 stage 1, TLBI policy, table freeing and out-of-memory behaviour.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use barriers::{check, trace, Consumer, Insn, Tlbi};
use s2mm::el2::El2Stage1;
use s2mm::host::HostAlloc;
use s2mm::ownership::{transition, CompState, PageOwnership, Requester, Transition};
use s2mm::stage2::stage2_geometry;
use s2mm::Vttbr;
use s2mm::{Attrs, BlockSize, Error, Ipa, MemType, OwnerId, Pa, PageState, Perms, Stage2, Va};

const K4: u64 = 4096;
const M2: u64 = 1 << 21;
const G: u64 = 1 << 30;

#[test]
fn geometry_concatenates_start_tables() {
    // (ipa bits, start level, root entries, root pages)
    for (bits, lvl, entries, pages) in [
        (32, 2, 2048, 4),
        (36, 1, 64, 1),
        (40, 1, 1024, 2),
        (42, 1, 4096, 8),
        (43, 1, 8192, 16),
        (44, 0, 32, 1),
        (48, 0, 512, 1),
    ] {
        assert_eq!(
            stage2_geometry(bits),
            Ok((lvl, entries, pages)),
            "{bits}-bit IPA"
        );
    }
    assert_eq!(stage2_geometry(31), Err(Error::UnsupportedIpaSize));
    assert_eq!(stage2_geometry(52), Err(Error::UnsupportedIpaSize));
}

#[test]
fn vtcr_and_vttbr_values() {
    let mut a = HostAlloc::new();
    let s40 = Stage2::new(&mut a, 7, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(0) };
    // T0SZ=24, SL0=1 (level 1), IRGN0=ORGN0=WBWA, SH0=inner, TG0=4K, PS=40 bits, RES1 bit 31.
    assert_eq!(s40.vtcr(2, false), Ok(0x8002_3558));
    assert_eq!(s40.vtcr(5, false), Ok(0x8005_3558));
    assert_eq!(s40.vtcr(1, false), Err(Error::UnsupportedPaRange)); // 36-bit PA < 40-bit IPA
    assert_eq!(s40.vtcr(7, false), Err(Error::UnsupportedPaRange));
    assert_eq!(s40.vttbr(), s40.root().0 | (7 << 48));
    assert_eq!(
        s40.root().0 % (2 * K4),
        0,
        "concatenated root aligned to its size"
    );
    let s44 = Stage2::new(&mut a, 300, 44, false).unwrap();
    // T0SZ=20, SL0=2 (level 0), PS=44 bits, VS=1 (16-bit VMID).
    assert_eq!(s44.vtcr(4, true), Ok(0x8004_3594 | (1 << 19)));
    assert_eq!(
        s44.vtcr(4, false),
        Err(Error::OutOfRange),
        "VMID 300 in 8 bits"
    );
    assert_eq!(s40.vtcr(2, true), Ok(0x8002_3558 | (1 << 19)));
    assert_eq!(s44.vttbr() >> 48, 300);
    let s48 = Stage2::new(&mut a, 1, 48, true).unwrap();
    assert_eq!(
        s48.vtcr(6, false),
        Ok(0x8005_3590),
        "52-bit PARange capped to 48-bit PS"
    );
    for s in [s40, s44, s48] {
        s.destroy(&mut a, &mut v);
    }
    assert_eq!(a.live_pages(), 0);
}

/// VTCR_EL2 and TCR_EL2, now built from `aarch64-cpu` fields, are bit-for-bit the values of
/// the hand-written shifts they replaced, for every IPA/VA size, PARange and VMID width.
#[test]
fn vtcr_and_tcr_bits_unchanged() {
    let mut a = HostAlloc::new();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(0) };
    for ipa_bits in 32..=48u32 {
        for vmid in [1u16, 0x100] {
            let s2 = Stage2::new(&mut a, vmid, ipa_bits, false).unwrap();
            let (level, _, _) = stage2_geometry(ipa_bits).unwrap();
            let sl0: u64 = [0b10, 0b01, 0b00][usize::from(level)];
            for parange in 0..8u64 {
                let Ok(got) = s2.vtcr(parange, vmid > 0xff) else {
                    continue;
                };
                let old = u64::from(64 - ipa_bits)
                    | (sl0 << 6)
                    | (0b01 << 8)
                    | (0b01 << 10)
                    | (0b11 << 12)
                    | (parange.min(5) << 16)
                    | (u64::from(vmid > 0xff) << 19)
                    | (1 << 31);
                assert_eq!(
                    got, old,
                    "{ipa_bits}-bit IPA, VMID {vmid}, PARange {parange}"
                );
            }
            s2.destroy(&mut a, &mut v);
        }
    }
    for va_bits in 25..=48u32 {
        let el2 = El2Stage1::new(&mut a, va_bits).unwrap();
        for parange in 0..7u64 {
            let old = u64::from(64 - va_bits)
                | (0b01 << 8)
                | (0b01 << 10)
                | (0b11 << 12)
                | (parange.min(5) << 16)
                | (1 << 23)
                | (1 << 31);
            assert_eq!(
                el2.tcr_el2(parange),
                Ok(old),
                "{va_bits}-bit VA, PARange {parange}"
            );
        }
        assert_eq!(el2.tcr_el2(7), Err(Error::UnsupportedPaRange));
        el2.destroy(&mut a);
    }
    assert_eq!(a.live_pages(), 0);
}

#[test]
fn el2_stage1_map_query_and_barriers() {
    let mut a = HostAlloc::new();
    let mut el2 = El2Stage1::new(&mut a, 39).unwrap();
    assert_eq!(
        el2.tcr_el2(2).unwrap(),
        25 | (1 << 8) | (1 << 10) | (3 << 12) | (2 << 16) | (1 << 23) | (1 << 31)
    );
    assert_eq!(s2mm::desc::El2Format::MAIR_EL2, 0x44_04ff);
    trace::clear();
    let text = Attrs {
        mem: MemType::Normal,
        perms: Perms::RX,
    };
    let st = el2
        .map_identity(&mut a, Pa(0x4008_0000), 16 * K4, text)
        .unwrap();
    el2.map_identity(&mut a, Pa(0x4020_0000), M2, Attrs::RAM_RW)
        .unwrap();
    el2.map_identity(&mut a, Pa(0x0900_0000), K4, Attrs::DEVICE_RW)
        .unwrap();
    // EL2 consumes its own mappings: the batch ends with DSB ISHST + ISB.
    assert_eq!((st.dsb, st.isb, st.tlbi), (1, 1, 0));
    trace::record(Insn::Use(Consumer::El2Memory));
    let t = trace::take();
    assert!(
        check::check(&t).is_empty(),
        "{}",
        check::report(&check::check(&t))
    );
    let m = el2.query(&a, Va(0x4008_3000)).unwrap();
    assert_eq!((m.pa, m.attrs, m.level), (Pa(0x4008_3000), text, 3));
    assert_eq!(el2.query(&a, Va(0x4020_1000)).unwrap().level, 2);
    assert_eq!(
        el2.query(&a, Va(0x0900_0000)).unwrap().attrs,
        Attrs::DEVICE_RW
    );
    assert!(el2.query(&a, Va(0x4009_0000)).is_none());
    // W^X and executable device memory are refused, nothing changes.
    assert_eq!(
        el2.map_identity(&mut a, Pa(0x5000_0000), K4, Attrs::RAM_RWX),
        Err(Error::InvalidAttrs)
    );
    let dev_x = Attrs {
        mem: MemType::Device,
        perms: Perms::RX,
    };
    assert_eq!(
        el2.map_identity(&mut a, Pa(0x5000_0000), K4, dev_x),
        Err(Error::InvalidAttrs)
    );
    assert!(el2.query(&a, Va(0x5000_0000)).is_none());
    // Unmapping a live page: TLBI VAE2IS, DSB ISH, then ISB (EL2 relies on its mappings).
    trace::clear();
    let st = el2.unmap(&mut a, Va(0x4008_f000), K4).unwrap();
    let t = trace::take();
    assert!(t
        .iter()
        .any(|i| matches!(i, Insn::Tlbi(Tlbi::Vae2is { .. }))));
    assert_eq!(st.isb, 1);
    assert!(
        check::check(&t).is_empty(),
        "{}",
        check::report(&check::check(&t))
    );
    assert!(el2.query(&a, Va(0x4008_f000)).is_none());
    assert_eq!(el2.query(&a, Va(0x4008_e000)).unwrap().attrs, text);
    el2.unmap(&mut a, Va(0), 1 << 39).unwrap();
    assert_eq!(a.live_pages(), 1, "only the root remains");
    el2.destroy(&mut a);
    assert_eq!(a.live_pages(), 0);
}

#[test]
fn tlbi_policy_per_page_or_vmid_wide() {
    let mut a = HostAlloc::new();
    let mut s2 = Stage2::new(&mut a, 9, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    s2.set_block_policy(BlockSize::Page4K);
    s2.map(
        &mut a,
        &mut v,
        Ipa(G),
        Pa(G),
        512 * K4,
        Attrs::RAM_RW,
        PageState::Owned,
    )
    .unwrap();
    // 16 pages <= limit (32): IPAS2E1IS each, DSB ISH, VMALLE1IS, DSB ISH (D8.17.6.1).
    trace::clear();
    v.record_state();
    let st = s2.unmap(&mut a, &mut v, Ipa(G), 16 * K4).unwrap();
    let t = trace::take();
    let ipas = t
        .iter()
        .filter(|i| matches!(i, Insn::Tlbi(Tlbi::Ipas2e1is { level: Some(3), .. })))
        .count();
    assert_eq!((ipas, st.tlbi, st.dsb), (16, 17, 3));
    assert!(check::check(&t).is_empty());
    // 40 pages > limit: one VMALLS12E1IS.
    trace::clear();
    v.record_state();
    let st = s2.unmap(&mut a, &mut v, Ipa(G + 16 * K4), 40 * K4).unwrap();
    let t = trace::take();
    assert_eq!((st.tlbi, st.dsb), (1, 2));
    assert!(matches!(
        t.iter().find(|i| matches!(i, Insn::Tlbi(_))),
        Some(Insn::Tlbi(Tlbi::Vmalls12e1is))
    ));
    // Mapping into empty space: no TLBI, one DSB for the whole batch.
    let st = s2
        .map(
            &mut a,
            &mut v,
            Ipa(2 * G),
            Pa(2 * G),
            1024 * K4,
            Attrs::RAM_RW,
            PageState::Owned,
        )
        .unwrap();
    assert_eq!((st.tlbi, st.dsb), (0, 1));
    s2.destroy(&mut a, &mut v);
    assert_eq!(a.live_pages(), 0);
}

#[test]
fn emptied_tables_are_freed() {
    let mut a = HostAlloc::new();
    let mut s2 = Stage2::new(&mut a, 1, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    let base = a.live_pages();
    // Scattered single pages: one level-2 and several level-3 tables.
    for i in 0..8u64 {
        s2.map(
            &mut a,
            &mut v,
            Ipa(G + i * 3 * M2 + K4),
            Pa(i * K4),
            K4,
            Attrs::RAM_RW,
            PageState::Owned,
        )
        .unwrap();
    }
    assert_eq!(a.live_pages(), base + 1 + 8);
    for i in 0..8u64 {
        s2.unmap(&mut a, &mut v, Ipa(G + i * 3 * M2 + K4), K4)
            .unwrap();
        assert_eq!(
            a.live_pages(),
            base + if i == 7 { 0 } else { 1 + 7 - i as usize }
        );
    }
    s2.destroy(&mut a, &mut v);
    assert_eq!(a.live_pages(), 0);
}

#[test]
fn out_of_memory_leaves_consistent_tables() {
    let mut a = HostAlloc::new();
    let mut s2 = Stage2::new(&mut a, 1, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    s2.set_block_policy(BlockSize::Page4K);
    // Room for the level-2 table and one level-3 table only.
    let base = a.live_pages();
    a.limit = Some(base + 2);
    trace::clear();
    v.record_state();
    let r = s2.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0),
        3 * M2,
        Attrs::RAM_RW,
        PageState::Owned,
    );
    assert_eq!(r, Err(Error::OutOfMemory));
    // The barriers of the partial batch were still discharged.
    let t = trace::take();
    assert!(check::check(&t).is_empty());
    for p in (0..3 * M2).step_by(K4 as usize) {
        if let Some(m) = s2.query(&a, Ipa(p)) {
            assert_eq!(m.pa, Pa(p));
        }
    }
    // The new subtree was being built off-line: on failure it is dropped whole, so nothing
    // changed and nothing leaked.
    assert_eq!(s2.query(&a, Ipa(0)), None);
    assert_eq!(a.live_pages(), base);
    // Into an existing live table, the pages mapped before the failure stay mapped.
    a.limit = None;
    s2.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0),
        K4,
        Attrs::RAM_RW,
        PageState::Owned,
    )
    .unwrap();
    a.limit = Some(a.live_pages() + 1);
    let r = s2.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0),
        3 * M2,
        Attrs::RAM_RW,
        PageState::Owned,
    );
    assert_eq!(r, Err(Error::OutOfMemory));
    assert_eq!(s2.query(&a, Ipa(M2 - K4)).map(|m| m.pa), Some(Pa(M2 - K4)));
    assert_eq!(
        s2.query(&a, Ipa(2 * M2 - K4)).map(|m| m.pa),
        Some(Pa(2 * M2 - K4))
    );
    assert_eq!(s2.query(&a, Ipa(2 * M2)), None);
    a.limit = None;
    s2.destroy(&mut a, &mut v);
    assert_eq!(a.live_pages(), 0);
}

#[test]
fn host_donate_then_reclaim_through_the_tables() {
    const GUEST: OwnerId = OwnerId(2);
    let mut a = HostAlloc::new();
    let mut host = Stage2::new(&mut a, 0, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(host.vttbr()) };
    let mut guest = Stage2::new(&mut a, 2, 40, true).unwrap();
    host.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0),
        G,
        Attrs::RAM_RWX,
        PageState::Owned,
    )
    .unwrap();
    let page = Pa(0x1234_5000);
    let read = |host: &Stage2, guest: &Stage2, a: &HostAlloc| PageOwnership {
        host: CompState::from_mapping(host.query(a, Ipa(page.0)).map(|m| m.state)),
        guest: CompState::from_mapping(guest.query(a, Ipa(0x8000_0000)).map(|m| m.state)),
        hyp: CompState::NoAccess,
    };
    let cur = read(&host, &guest, &a);
    let next = transition(cur, Transition::HostDonate, Requester::Host).unwrap();
    assert_eq!(next.guest, CompState::Owned);
    host.set_annotation(&mut a, &mut v, Ipa(page.0), K4, GUEST)
        .unwrap();
    guest
        .map(
            &mut a,
            &mut v,
            Ipa(0x8000_0000),
            page,
            K4,
            Attrs::RAM_RWX,
            next.guest.page_state().unwrap(),
        )
        .unwrap();
    assert_eq!(read(&host, &guest, &a), next);
    assert_eq!(host.annotation(&a, Ipa(page.0)), Some(GUEST));
    // The guest cannot donate it back; the host cannot lend it again.
    assert!(transition(next, Transition::HostDonate, Requester::Guest).is_err());
    assert!(transition(next, Transition::HostLend, Requester::Host).is_err());
    // Reclaim after destroy: host owns it again and the 1 GiB block is restored.
    let back = transition(next, Transition::Reclaim, Requester::Host).unwrap();
    guest.destroy(&mut a, &mut v);
    host.map(
        &mut a,
        &mut v,
        Ipa(page.0),
        page,
        K4,
        Attrs::RAM_RWX,
        back.host.page_state().unwrap(),
    )
    .unwrap();
    assert_eq!(host.query(&a, Ipa(page.0)).unwrap().level, 1);
    host.destroy(&mut a, &mut v);
    assert_eq!(a.live_pages(), 0);
}

/// The raw descriptor a live make stores (the second page lands in an existing table).
fn stored_desc(fwb: bool, attrs: Attrs, state: PageState) -> u64 {
    let mut a = HostAlloc::new();
    let mut s2 = Stage2::new(&mut a, 1, 40, fwb).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    s2.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0x8000_0000),
        K4,
        Attrs::DEVICE_RW,
        PageState::Owned,
    )
    .unwrap();
    trace::clear();
    v.record_state();
    s2.map(&mut a, &mut v, Ipa(K4), Pa(0x8000_1000), K4, attrs, state)
        .unwrap();
    let d = trace::take()
        .iter()
        .find_map(|i| {
            if let Insn::Store { new, .. } = i {
                Some(*new)
            } else {
                None
            }
        })
        .unwrap();
    s2.destroy(&mut a, &mut v);
    d
}

#[test]
fn stage2_descriptor_encodings() {
    let memattr = |d: u64| (d >> 2) & 0xf;
    // Normal write-back: 0b1111 without FWB, 0b0110 (forced WB) with FWB; device nGnRE 0b0001.
    assert_eq!(
        memattr(stored_desc(false, Attrs::RAM_RW, PageState::Owned)),
        0b1111
    );
    assert_eq!(
        memattr(stored_desc(true, Attrs::RAM_RW, PageState::Owned)),
        0b0110
    );
    assert_eq!(
        memattr(stored_desc(true, Attrs::DEVICE_RW, PageState::Owned)),
        0b0001
    );
    let d = stored_desc(true, Attrs::RAM_RW, PageState::SharedBorrowed);
    assert_eq!(d & 3, 3, "level-3 page");
    assert_eq!(d & 0x0000_ffff_ffff_f000, 0x8000_1000);
    assert_eq!((d >> 6) & 3, 0b11, "S2AP RW");
    assert_eq!((d >> 8) & 3, 0b11, "inner shareable");
    assert_eq!((d >> 10) & 1, 1, "AF");
    assert_eq!((d >> 54) & 1, 1, "XN");
    assert_eq!((d >> 55) & 3, 0b10, "SHARED_BORROWED in SW bits [56:55]");
    let d = stored_desc(
        true,
        Attrs {
            mem: MemType::Normal,
            perms: Perms::RX,
        },
        PageState::SharedOwned,
    );
    assert_eq!(
        ((d >> 6) & 3, (d >> 54) & 1, (d >> 55) & 3),
        (0b01, 0, 0b01)
    );
}

#[test]
fn owner_annotation_encoding() {
    let mut a = HostAlloc::new();
    let mut s2 = Stage2::new(&mut a, 1, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    s2.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0),
        2 * K4,
        Attrs::RAM_RW,
        PageState::Owned,
    )
    .unwrap();
    trace::clear();
    v.record_state();
    s2.set_annotation(&mut a, &mut v, Ipa(K4), K4, OwnerId(0x5a))
        .unwrap();
    let t = trace::take();
    let new = t
        .iter()
        .find_map(|i| {
            if let Insn::Store { new, .. } = i {
                Some(*new)
            } else {
                None
            }
        })
        .unwrap();
    // Invalid (bit 0 clear), owner in bits [9:2].
    assert_eq!(new, 0x5a << 2);
    assert!(t.iter().any(|i| matches!(
        i,
        Insn::Tlbi(Tlbi::Ipas2e1is {
            ipa: K4,
            level: Some(3)
        })
    )));
    assert_eq!(s2.annotation(&a, Ipa(K4)), Some(OwnerId(0x5a)));
    assert!(s2.query(&a, Ipa(K4)).is_none());
    s2.destroy(&mut a, &mut v);
}
