//! The protected-VM firmware's rules (crates/pvmfw/src/rules.rs, pure:
//! `core`, `fdt`, `hyp-abi`), run here on the host against device trees the
//! host's own writer (crates/host/src/dtb.rs) makes: the honest tree of a
//! protected Linux VM passes, and each hostile change of it is refused with
//! its rule and value.

#[path = "../../crates/pvmfw/src/rules.rs"]
mod rules;

use crate::linux::host_dtb::{self, Hostile, LinuxVm, VirtioMmio};
use hyp_abi::layout::RAM_IPA;
use rules::{Facts, Kernel, Refusal};

const MEM: u64 = 256 << 20;
const FACTS: Facts = Facts {
    ram_base: RAM_IPA,
    ram_size: MEM,
    vcpus: 2,
};
const KERNEL: Kernel = Kernel {
    base: RAM_IPA,
    size: 0x200_0000,
};
const DTB_IPA: u64 = RAM_IPA + MEM - (2 << 20);
const POOL: (u64, u64) = (DTB_IPA - (8 << 20), 8 << 20);
const INITRD: (u64, u64) = (RAM_IPA + MEM / 2, RAM_IPA + MEM / 2 + 0x40_0000);
const DEVS: [VirtioMmio; 2] = [
    VirtioMmio {
        ipa: 0x0a00_0000,
        size: 0x200,
        spi: 16,
    },
    VirtioMmio {
        ipa: 0x0a00_0200,
        size: 0x200,
        spi: 17,
    },
];

/// The honest tree of a protected Linux VM with two devices.
fn honest() -> LinuxVm<'static> {
    LinuxVm {
        gic: hyp_abi::Vgic::V3,
        vcpus: 2,
        mem: MEM,
        cmdline: "console=ttyAMA0",
        initrd: Some(INITRD),
        boot: 1,
        virtio: &DEVS,
        dma_pool: Some(POOL),
        hostile: Hostile::None,
        pmu: false,
    }
}

/// The firmware's verdict on `vm`'s tree (at [`DTB_IPA`]) as text: the
/// summary, or the refusal as it prints it.
fn verdict(vm: &LinuxVm<'_>, facts: &Facts) -> String {
    let dtb = host_dtb::linux_dtb(vm).expect("the writer accepts it");
    let fdt = fdt::Fdt::new(&dtb).expect("a DTB");
    match rules::check_dt(&fdt, facts, KERNEL, (DTB_IPA, dtb.len() as u64)) {
        Ok(s) => format!("ok {s:?}"),
        Err(e) => format!("refused: {e}"),
    }
}

#[test]
fn the_honest_tree_passes() {
    assert_eq!(
        verdict(&honest(), &FACTS),
        format!(
            "ok Summary {{ devices: 2, pool: Some({:?}), initrd: Some({:?}) }}",
            POOL, INITRD
        )
    );
    // A normal VM's tree (no pool, no devices) passes too.
    let plain = LinuxVm {
        virtio: &[],
        dma_pool: None,
        initrd: None,
        ..honest()
    };
    assert_eq!(
        verdict(&plain, &FACTS),
        "ok Summary { devices: 0, pool: None, initrd: None }"
    );
}

#[test]
fn hostile_trees_are_refused_with_their_rule() {
    let far = [VirtioMmio {
        ipa: 0x0c00_0000,
        ..DEVS[0]
    }];
    let cases: [(LinuxVm<'_>, &str); 7] = [
        (
            LinuxVm {
                dma_pool: Some((POOL.0 - (24 << 20), 32 << 20)),
                ..honest()
            },
            "refused: pool of 0x2000000 bytes exceeds the limit 0x1000000",
        ),
        (
            LinuxVm {
                hostile: Hostile::SecondMemory,
                ..honest()
            },
            "refused: 2 memory nodes (exactly 1 allowed)",
        ),
        (
            LinuxVm {
                hostile: Hostile::DeviceWithoutPool,
                ..honest()
            },
            "refused: virtio device virtio_mmio@a000000 does not use the DMA pool",
        ),
        (
            LinuxVm {
                virtio: &far,
                ..honest()
            },
            "refused: virtio device virtio_mmio@c000000 at 0xc000000 is outside the host MMIO window 0xa000000+0x4000",
        ),
        (
            LinuxVm {
                mem: MEM * 2,
                ..honest()
            },
            "refused: memory node 0x40000000+0x20000000 is not the VM's RAM",
        ),
        (
            LinuxVm {
                dma_pool: Some((RAM_IPA + 0x10_0000, 1 << 20)),
                ..honest()
            },
            "refused: pool overlaps the kernel at 0x40000000",
        ),
        (
            LinuxVm {
                initrd: Some((RAM_IPA + MEM - 0x1000, RAM_IPA + MEM + 0x1000)),
                ..honest()
            },
            "refused: initrd 0x4ffff000..0x50001000 is not in RAM",
        ),
    ];
    for (vm, want) in cases {
        assert_eq!(verdict(&vm, &FACTS), want);
    }
    // More cpu nodes than the hypervisor gave the VM vCPUs.
    let one = Facts { vcpus: 1, ..FACTS };
    assert_eq!(verdict(&honest(), &one), "refused: 2 cpu nodes for 1 vCPUs");
}

#[test]
fn unknown_devices_and_pool_flags_are_refused() {
    use vm_fdt::FdtWriter;
    // The honest tree with one more node, written by hand.
    let tree = |extra: &dyn Fn(&mut FdtWriter) -> Result<(), vm_fdt::Error>| {
        let mut w = FdtWriter::new().expect("writer");
        let root = w.begin_node("").expect("root");
        w.property_u32("#address-cells", 2).expect("cells");
        w.property_u32("#size-cells", 2).expect("cells");
        let m = w.begin_node("memory@40000000").expect("memory");
        w.property_string("device_type", "memory").expect("type");
        w.property_array_u64("reg", &[RAM_IPA, MEM]).expect("reg");
        w.end_node(m).expect("end");
        extra(&mut w).expect("extra");
        w.end_node(root).expect("end");
        w.finish().expect("finish")
    };
    let check = |dtb: Vec<u8>| {
        let fdt = fdt::Fdt::new(&dtb).expect("a DTB");
        match rules::check_dt(&fdt, &FACTS, KERNEL, (DTB_IPA, dtb.len() as u64)) {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("refused: {e}"),
        }
    };
    assert_eq!(check(tree(&|_| Ok(()))), "ok");
    let evil = tree(&|w| {
        let n = w.begin_node("dma@9100000")?;
        w.property_string_list("compatible", vec!["vendor,bus-master".into()])?;
        w.property_array_u64("reg", &[0x0910_0000, 0x1000])?;
        w.end_node(n)
    });
    assert_eq!(
        check(evil),
        "refused: node dma@9100000 is of an unknown kind (compatible \"vendor,bus-master\")"
    );
    for flag in ["no-map", "reusable"] {
        let pool = tree(&|w| {
            let rm = w.begin_node("reserved-memory")?;
            w.property_u32("#address-cells", 2)?;
            w.property_u32("#size-cells", 2)?;
            w.property_null("ranges")?;
            let p = w.begin_node("pool@4f600000")?;
            w.property_string("compatible", "restricted-dma-pool")?;
            w.property_array_u64("reg", &[POOL.0, POOL.1])?;
            w.property_null(flag)?;
            w.end_node(p)?;
            w.end_node(rm)
        });
        assert_eq!(check(pool), format!("refused: pool is {flag}"));
    }
    let two = tree(&|w| {
        let rm = w.begin_node("reserved-memory")?;
        w.property_u32("#address-cells", 2)?;
        w.property_u32("#size-cells", 2)?;
        for at in [POOL.0, POOL.0 - (1 << 20)] {
            let p = w.begin_node(&format!("pool@{at:x}"))?;
            w.property_string("compatible", "restricted-dma-pool")?;
            w.property_array_u64("reg", &[at, 1 << 20])?;
            w.end_node(p)?;
        }
        w.end_node(rm)
    });
    assert_eq!(
        check(two),
        "refused: 2 reserved-memory regions (at most 1 allowed)"
    );
}

/// An arm64 Image header with `text_offset`, `image_size` and `magic`.
fn header(text_offset: u64, image_size: u64, magic: u32) -> [u8; rules::HEADER_LEN] {
    let mut h = [0u8; rules::HEADER_LEN];
    h[8..16].copy_from_slice(&text_offset.to_le_bytes());
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[56..60].copy_from_slice(&magic.to_le_bytes());
    h
}

#[test]
fn kernel_header_rules() {
    let m = rules::ARM64_MAGIC;
    assert_eq!(
        rules::check_kernel(&FACTS, RAM_IPA, &header(0, 0x10_0000, m)),
        Ok(Kernel {
            base: RAM_IPA,
            size: 0x10_0000
        })
    );
    // Old kernels: text_offset 0x80000 above a 2 MiB boundary.
    assert!(rules::check_kernel(&FACTS, RAM_IPA + 0x8_0000, &header(0x8_0000, 0x1000, m)).is_ok());
    assert_eq!(
        rules::check_kernel(&FACTS, RAM_IPA, &header(0, 0x1000, 0x1234)),
        Err(Refusal::KernelMagic(0x1234))
    );
    assert_eq!(
        rules::check_kernel(&FACTS, RAM_IPA, &header(0, MEM + 0x1000, m)),
        Err(Refusal::KernelSize(RAM_IPA, MEM + 0x1000))
    );
    assert_eq!(
        rules::check_kernel(&FACTS, RAM_IPA, &header(0, 0, m)),
        Err(Refusal::KernelSize(RAM_IPA, 0))
    );
    assert_eq!(
        rules::check_kernel(&FACTS, RAM_IPA + 0x1000, &header(0, 0x1000, m)),
        Err(Refusal::KernelAlign(RAM_IPA + 0x1000))
    );
    assert_eq!(
        rules::kernel_header_in_ram(&FACTS, RAM_IPA - 0x1000),
        Err(Refusal::KernelOutsideRam(RAM_IPA - 0x1000))
    );
    assert_eq!(
        rules::kernel_header_in_ram(&FACTS, u64::MAX - 8),
        Err(Refusal::KernelOutsideRam(u64::MAX - 8))
    );
}

#[test]
fn device_tree_extent_rules() {
    let head = |size: u32| {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&rules::FDT_MAGIC.to_be_bytes());
        h[4..].copy_from_slice(&size.to_be_bytes());
        h
    };
    assert_eq!(
        rules::dtb_extent(&FACTS, DTB_IPA, head(0x800)),
        Ok(Some(0x800))
    );
    // No magic: no device tree (x0 is passed on as it is).
    assert_eq!(rules::dtb_extent(&FACTS, DTB_IPA, [0; 8]), Ok(None));
    assert_eq!(
        rules::dtb_extent(&FACTS, DTB_IPA, head(4 << 20)),
        Err(Refusal::DtbTooLarge(4 << 20))
    );
    let end = RAM_IPA + MEM - 0x100;
    assert_eq!(
        rules::dtb_extent(&FACTS, end, head(0x800)),
        Err(Refusal::DtbOutsideRam(end, 0x800))
    );
    assert!(!rules::may_hold_dtb(&FACTS, 0x1234));
    assert!(!rules::may_hold_dtb(&FACTS, DTB_IPA + 4));
}

#[test]
fn a_blob_that_does_not_parse_is_named() {
    // The firmware maps fdt's parse error to this refusal.
    assert!(fdt::Fdt::new(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 8]).is_err());
    assert_eq!(Refusal::DtbParse.to_string(), "device tree does not parse");
}

/// The honest tree's blob.
fn honest_blob() -> Vec<u8> {
    host_dtb::linux_dtb(&honest()).expect("the writer accepts it")
}

/// The firmware's whole check of `blob`: the format, then the parser, then
/// the rules (a panic anywhere fails the test).
fn firmware_verdict(blob: &[u8]) -> Result<(), String> {
    rules::check_blob(blob).map_err(|e| e.to_string())?;
    let fdt = fdt::Fdt::new(blob).map_err(|_| Refusal::DtbParse.to_string())?;
    rules::check_dt(&fdt, &FACTS, KERNEL, (DTB_IPA, blob.len() as u64))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn malformed_blobs_are_refused_by_the_format_check() {
    let good = honest_blob();
    assert_eq!(firmware_verdict(&good), Ok(()));
    assert_eq!(
        rules::check_blob(&good[..good.len() - 4]),
        Err(Refusal::DtbMalformed("totalsize is not the blob's size", 4))
    );
    assert_eq!(
        rules::check_blob(&good[..20]),
        Err(Refusal::DtbMalformed("truncated header", 20))
    );
    // A /memreserve/ entry would hide RAM from the kernel.
    let rsv = u32::from_be_bytes(good[16..20].try_into().expect("4 bytes")) as usize;
    let mut memreserve = good.clone();
    memreserve[rsv + 3] = 0x10;
    assert_eq!(
        rules::check_blob(&memreserve),
        Err(Refusal::DtbMalformed(
            "memory reservation entries",
            rsv as u64
        ))
    );
    // The structure block cut short of its FDT_END.
    let off = u32::from_be_bytes(good[8..12].try_into().expect("4 bytes")) as usize;
    let size = u32::from_be_bytes(good[36..40].try_into().expect("4 bytes")) as usize;
    let mut short = good.clone();
    short[36..40].copy_from_slice(&((size - 4) as u32).to_be_bytes());
    assert_eq!(
        rules::check_blob(&short),
        Err(Refusal::DtbMalformed(
            "structure block ends before FDT_END",
            (off + size - 4) as u64
        ))
    );
}

/// Every one-byte corruption of the honest blob (three values at every
/// offset) is either refused or passes every rule, and nothing panics: a
/// hostile host cannot crash the firmware's parser with a bad blob.
#[test]
fn no_corrupted_blob_panics_the_firmware() {
    let good = honest_blob();
    let (mut refused, mut passed) = (0, 0);
    for i in 0..good.len() {
        for v in [0x00, 0xff, good[i] ^ 0x01] {
            if v == good[i] {
                continue;
            }
            let mut b = good.clone();
            b[i] = v;
            match firmware_verdict(&b) {
                Ok(()) => passed += 1,
                Err(_) => refused += 1,
            }
        }
    }
    assert!(
        refused > 0 && refused + passed > 2 * good.len(),
        "{refused} {passed}"
    );
}

/// 20,000 blobs with one to four random bytes of the honest blob replaced
/// by random values (a fixed xorshift seed): refused or passing, never a
/// panic.
#[test]
fn no_randomly_corrupted_blob_panics_the_firmware() {
    let good = honest_blob();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut refused = 0;
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        refused += usize::from(firmware_verdict(&b).is_err());
    }
    assert!(refused > 0);
}
