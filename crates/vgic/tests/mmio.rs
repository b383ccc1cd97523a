//! Distributor and redistributor register emulation.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod common;
use common::{dr, dw};
use vgic::{Region, Version, Vgic, VgicError, REDIST_FRAME_SIZE};

fn rd(g: &Vgic, n: u64, off: u64, size: u8) -> Result<u64, VgicError> {
    g.mmio(0, Region::Redist, n * REDIST_FRAME_SIZE + off, size, None)
        .map(|o| o.value)
}

#[test]
fn gicd_identification_v3() {
    let g = Vgic::new(Version::V3, 4).unwrap();
    // ITLinesNumber 2 (96 INTIDs), IDbits 9 (10-bit INTIDs), No1N.
    assert_eq!(dr(&g, 0, 0x4), 2 | (9 << 19) | (1 << 25));
    assert_eq!(dr(&g, 0, 0x8), 0x43b);
    assert_eq!(dr(&g, 0, 0xffe8) >> 4 & 0xf, 3, "PIDR2.ArchRev");
    assert_eq!(dr(&g, 0, 0xfff0), 0x0d);
    // CTLR: ARE and DS read as one; group enables round-trip; RWP reads 0.
    assert_eq!(dr(&g, 0, 0), (1 << 4) | (1 << 6));
    dw(&g, 0, 0, 0x8000_0013);
    assert_eq!(dr(&g, 0, 0), 0x53);
    assert_eq!(dr(&g, 0, 0xc), 0, "TYPER2 RAZ");
}

#[test]
fn gicd_identification_v2() {
    let g = Vgic::new(Version::V2, 4).unwrap();
    assert_eq!(dr(&g, 0, 0x4), 2 | (3 << 5), "ITLinesNumber, CPUNumber = 3");
    assert_eq!(dr(&g, 0, 0xfe8) >> 4 & 0xf, 2);
    assert_eq!(dr(&g, 0, 0), 0);
    dw(&g, 0, 0, 1);
    assert_eq!(dr(&g, 0, 0), 1);
    assert_eq!(
        g.mmio(0, Region::Dist, 0xffe8, 4, None),
        Err(VgicError::BadOffset),
        "v2 distributor is 4 KiB"
    );
    assert_eq!(
        g.mmio(0, Region::Redist, 0, 4, None),
        Err(VgicError::BadOffset)
    );
}

#[test]
fn enable_set_clear_round_trip() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    dw(&g, 0, 0x104, 0x8000_0101);
    assert_eq!(dr(&g, 0, 0x104), 0x8000_0101);
    assert_eq!(
        dr(&g, 0, 0x184),
        0x8000_0101,
        "ICENABLER reads the same state"
    );
    dw(&g, 0, 0x184, 0x0000_0001);
    assert_eq!(dr(&g, 0, 0x104), 0x8000_0100);
    // Zero bits do nothing.
    dw(&g, 0, 0x104, 0);
    assert_eq!(dr(&g, 0, 0x104), 0x8000_0100);
    // v3: the distributor's private word is RAZ/WI (ARE = 1).
    dw(&g, 0, 0x100, u32::MAX as u64);
    assert_eq!(dr(&g, 0, 0x100), 0);
    // INTIDs beyond the implemented ones: RAZ/WI.
    dw(&g, 0, 0x10c, u32::MAX as u64);
    assert_eq!(dr(&g, 0, 0x10c), 0);
}

#[test]
fn pending_and_active_set_clear() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    dw(&g, 0, 0x204, 0b101);
    assert_eq!(dr(&g, 0, 0x204), 0b101);
    dw(&g, 0, 0x284, 0b001);
    assert_eq!(dr(&g, 0, 0x284), 0b100);
    dw(&g, 0, 0x304, 0b11);
    assert_eq!(dr(&g, 0, 0x384), 0b11);
    dw(&g, 0, 0x384, 0b10);
    assert_eq!(dr(&g, 0, 0x304), 0b01);
    // A level line shows as pending; ICPENDR clears only the latch, not the line.
    g.set_level(0, 40, true).unwrap();
    dw(&g, 0, 0x284, 1 << 8);
    assert_eq!(dr(&g, 0, 0x204) & (1 << 8), 1 << 8);
}

#[test]
fn priority_byte_and_word_access() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    g.mmio(0, Region::Dist, 0x400 + 41, 1, Some(0xa7)).unwrap();
    assert_eq!(dr(&g, 0, 0x400 + 40), 0xa0 << 8, "5 priority bits kept");
    dw(&g, 0, 0x400 + 44, 0x1122_3344);
    assert_eq!(
        g.mmio(0, Region::Dist, 0x400 + 46, 1, None).unwrap().value,
        0x20
    );
    assert_eq!(dr(&g, 0, 0x400 + 44), 0x1020_3040);
    assert_eq!(dr(&g, 0, 0x400), 0, "private priorities RAZ in the v3 GICD");
    assert_eq!(
        g.mmio(0, Region::Dist, 0x400 + 40, 2, None),
        Err(VgicError::BadSize),
        "no halfword access"
    );
}

#[test]
fn icfgr_sgis_edge_ppis_level_spis_writable() {
    let g = Vgic::new(Version::V2, 1).unwrap();
    assert_eq!(dr(&g, 0, 0xc00), 0xaaaa_aaaa, "SGIs edge, read-only");
    dw(&g, 0, 0xc04, u32::MAX as u64);
    assert_eq!(dr(&g, 0, 0xc04), 0, "PPIs level, read-only");
    dw(&g, 0, 0xc08, 0xffff_ffff);
    assert_eq!(dr(&g, 0, 0xc08), 0xaaaa_aaaa, "odd bits only");
    dw(&g, 0, 0xc08, 0);
    assert_eq!(dr(&g, 0, 0xc08), 0);
}

#[test]
fn irouter_round_trip_and_halves() {
    let g = Vgic::new(Version::V3, 2).unwrap();
    let off = 0x6000 + 8 * 40;
    // IRM (bit 31) is RAZ/WI; Aff3 and Aff2.Aff1.Aff0 are kept.
    g.mmio(0, Region::Dist, off, 8, Some(0x12_8034_5601))
        .unwrap();
    assert_eq!(
        g.mmio(0, Region::Dist, off, 8, None).unwrap().value,
        0x12_0034_5601
    );
    dw(&g, 0, off, 1);
    assert_eq!(dr(&g, 0, off), 1);
    assert_eq!(dr(&g, 0, off + 4), 0x12);
    dw(&g, 0, off + 4, 0);
    assert_eq!(g.mmio(0, Region::Dist, off, 8, None).unwrap().value, 1);
    // IROUTER of a private or unimplemented INTID: RAZ/WI.
    dw(&g, 0, 0x6000, 5);
    assert_eq!(dr(&g, 0, 0x6000), 0);
    assert_eq!(
        g.mmio(0, Region::Dist, off, 1, None),
        Err(VgicError::BadSize)
    );
}

#[test]
fn itargetsr_v2() {
    let g = Vgic::new(Version::V2, 2).unwrap();
    // Private INTIDs read as the accessing CPU.
    assert_eq!(dr(&g, 1, 0x800), 0x0202_0202);
    assert_eq!(dr(&g, 0, 0x81c), 0x0101_0101);
    // SPIs keep only existing CPUs.
    g.mmio(0, Region::Dist, 0x800 + 33, 1, Some(0xff)).unwrap();
    assert_eq!(dr(&g, 0, 0x820), 0x0300);
    // v3: ITARGETSR is RAZ/WI with affinity routing.
    let g3 = Vgic::new(Version::V3, 2).unwrap();
    dw(&g3, 0, 0x820, 0x0101_0101);
    assert_eq!(dr(&g3, 0, 0x820), 0);
}

#[test]
fn gicr_typer_waker_and_frames() {
    let g = Vgic::new(Version::V3, 3).unwrap();
    for n in 0..3u64 {
        let t = rd(&g, n, 0x8, 8).unwrap();
        assert_eq!(t >> 32, n, "affinity Aff0 = n");
        assert_eq!(t >> 8 & 0xffff, n, "processor number");
        assert_eq!(t >> 4 & 1, (n == 2) as u64, "Last");
        assert_eq!(rd(&g, n, 0xc, 4).unwrap(), n, "upper half");
    }
    assert_eq!(
        rd(&g, 3, 0x8, 8),
        Err(VgicError::BadOffset),
        "no 4th redistributor"
    );
    // WAKER: asleep at reset; clearing ProcessorSleep clears ChildrenAsleep at once.
    assert_eq!(rd(&g, 1, 0x14, 4).unwrap(), 0b110);
    g.mmio(0, Region::Redist, REDIST_FRAME_SIZE + 0x14, 4, Some(0))
        .unwrap();
    assert_eq!(rd(&g, 1, 0x14, 4).unwrap(), 0);
    assert_eq!(rd(&g, 0, 0x14, 4).unwrap(), 0b110, "per redistributor");
    assert_eq!(rd(&g, 0, 0xffe8, 4).unwrap() >> 4 & 0xf, 3);
    assert_eq!(rd(&g, 0, 0x70, 8).unwrap(), 0, "PROPBASER RAZ");
    // SGI frame at +64 KiB: private enables, priorities, config.
    let sgi = REDIST_FRAME_SIZE + 0x1_0000;
    g.mmio(0, Region::Redist, sgi + 0x100, 4, Some(1 << 27))
        .unwrap();
    assert_eq!(
        rd(&g, 1, 0x1_0100, 4).unwrap(),
        0xffff | (1 << 27),
        "SGIs on at reset"
    );
    assert_eq!(
        rd(&g, 0, 0x1_0100, 4).unwrap(),
        0xffff,
        "other vCPU untouched"
    );
    g.mmio(0, Region::Redist, sgi + 0x400 + 27, 1, Some(0xa0))
        .unwrap();
    assert_eq!(rd(&g, 1, 0x1_0418, 4).unwrap(), 0xa0 << 24);
    assert_eq!(rd(&g, 1, 0x1_0c00, 4).unwrap(), 0xaaaa_aaaa);
    assert_eq!(
        rd(&g, 1, 0x1_0080, 4).unwrap(),
        u32::MAX as u64,
        "group 1 at reset"
    );
    assert_eq!(rd(&g, 1, 0x1_0104, 4), Err(VgicError::BadOffset));
}

#[test]
fn bad_offsets_and_sizes_are_errors() {
    let g = Vgic::new(Version::V3, 1).unwrap();
    for (off, size, e) in [
        (0x104, 2, VgicError::BadSize),
        (0x102, 2, VgicError::BadSize),
        (0x101, 4, VgicError::BadSize),
        (0x104, 8, VgicError::BadSize),
        (0x104, 3, VgicError::BadSize),
        (0x20, 4, VgicError::BadOffset),
        (0x1_0000, 4, VgicError::BadOffset),
        (u64::MAX - 3, 4, VgicError::BadOffset),
    ] {
        assert_eq!(
            g.mmio(0, Region::Dist, off, size, None),
            Err(e),
            "{off:#x}/{size}"
        );
        assert_eq!(g.mmio(0, Region::Dist, off, size, Some(!0)), Err(e));
    }
    assert_eq!(g.mmio(1, Region::Dist, 0, 4, None), Err(VgicError::BadVcpu));
    assert_eq!(g.set_level(0, 3, true), Err(VgicError::BadIntid));
    assert_eq!(g.set_level(0, 96, true), Err(VgicError::BadIntid));
    assert_eq!(g.inject(0, 1020), Err(VgicError::BadIntid));
    assert!(Vgic::new(Version::V2, 9).is_err());
}

#[test]
fn no_panic_on_any_offset() {
    for version in [Version::V2, Version::V3] {
        let g = Vgic::new(version, 2).unwrap();
        for off in (0..0x2_0000u64)
            .step_by(4)
            .chain((0x3_0000..0x5_0000).step_by(4))
        {
            for region in [Region::Dist, Region::Redist] {
                let _ = g.mmio(1, region, off, 4, Some(0xffff_ffff));
                let _ = g.mmio(1, region, off, 4, None);
                let _ = g.mmio(0, region, off, 1, Some(0xff));
            }
        }
    }
}

/// Every access `fixed_read` answers, checked against `mmio`'s locked dispatch; returns how many
/// it answered. Offsets cover each frame whole (every byte), sizes 1, 2, 4 and 8.
fn fixed_reads_agree(g: &Vgic) -> usize {
    let dist = match g.version() {
        Version::V3 => vgic::DIST_SIZE_V3,
        Version::V2 => vgic::DIST_SIZE_V2,
    };
    let redist = g.nr_vcpus() as u64 * REDIST_FRAME_SIZE;
    let mut answered = 0;
    for (region, end) in [(Region::Dist, dist), (Region::Redist, redist)] {
        for off in 0..end {
            for size in [1, 2, 4, 8] {
                if let Some(v) = g.fixed_read(region, off, size) {
                    let vcpu = answered % g.nr_vcpus();
                    let read = g.mmio(vcpu, region, off, size, None).map(|o| o.value);
                    assert_eq!(read, Ok(v), "{region:?} {off:#x} size {size}");
                    assert!(size == 8 || v >> (8 * size) == 0, "fits in {size} bytes");
                    answered += 1;
                }
            }
        }
    }
    answered
}

#[test]
fn fixed_reads_are_the_registers_mmio_reads_and_never_change() {
    for (version, nr) in [
        (Version::V3, 1),
        (Version::V3, 3),
        (Version::V3, vgic::MAX_VCPUS),
        (Version::V2, 1),
        (Version::V2, vgic::MAX_VCPUS),
    ] {
        let g = Vgic::new(version, nr).unwrap();
        // The registers the fast path relies on are among them.
        let (id, nr_rd) = match version {
            Version::V3 => (0xffd0, nr),
            Version::V2 => (0xfd0, 0),
        };
        for off in [0x4, 0x8, id + 0x18] {
            assert!(g.fixed_read(Region::Dist, off, 4).is_some(), "{off:#x}");
        }
        assert_eq!(
            version == Version::V3,
            g.fixed_read(Region::Dist, 0xc, 4).is_some()
        );
        for n in 0..nr_rd as u64 {
            assert!(g
                .fixed_read(Region::Redist, n * REDIST_FRAME_SIZE + 8, 8)
                .is_some());
        }
        let before = fixed_reads_agree(&g);
        // Every word of every frame written with all ones, then with zeros (writes to these
        // registers are ignored; nothing else may change them).
        for value in [u64::from(u32::MAX), 0] {
            for off in (0..0x1_0000).step_by(4) {
                let _ = g.mmio(0, Region::Dist, off, 4, Some(value));
                for n in 0..nr_rd as u64 {
                    for frame in [0, 0x1_0000] {
                        let at = n * REDIST_FRAME_SIZE + frame + off;
                        let _ = g.mmio(n as usize, Region::Redist, at, 4, Some(value));
                    }
                }
            }
        }
        assert_eq!(fixed_reads_agree(&g), before);
    }
}
