//! Basic map / unmap / query behaviour.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use s2mm::host::HostAlloc;
use s2mm::Vttbr;
use s2mm::{Attrs, BlockSize, Ipa, OwnerId, Pa, PageState, Stage2};

const G: u64 = 1 << 30;
const M2: u64 = 1 << 21;
const K4: u64 = 4096;

#[test]
fn map_query_unmap_blocks_and_pages() {
    let mut a = HostAlloc::new();
    let mut s2 = Stage2::new(&mut a, 1, 40, true).unwrap();
    // SAFETY: host test: the recording backend, one owner per test.
    let mut v = unsafe { Vttbr::assume_loaded(s2.vttbr()) };
    assert_eq!(a.live_pages(), 2); // two concatenated level-1 tables
    let base = a.live_pages();
    // 1 GiB aligned: one level-1 block.
    s2.map(
        &mut a,
        &mut v,
        Ipa(G),
        Pa(4 * G),
        G,
        Attrs::RAM_RWX,
        PageState::Owned,
    )
    .unwrap();
    let m = s2.query(&a, Ipa(G + 5 * K4 + 17)).unwrap();
    assert_eq!((m.pa, m.level), (Pa(4 * G + 5 * K4), 1));
    assert_eq!(a.live_pages(), base);
    // Unmap one page in the middle: split to 2 MiB blocks + one page table.
    s2.unmap(&mut a, &mut v, Ipa(G + M2 + K4), K4).unwrap();
    assert!(s2.query(&a, Ipa(G + M2 + K4)).is_none());
    assert_eq!(s2.query(&a, Ipa(G + M2)).unwrap().level, 3);
    assert_eq!(s2.query(&a, Ipa(G + 2 * M2)).unwrap().level, 2);
    assert_eq!(a.live_pages(), base + 2);
    // Map it back: the page table and then the level-2 table collapse into the 1 GiB block.
    s2.map(
        &mut a,
        &mut v,
        Ipa(G + M2 + K4),
        Pa(4 * G + M2 + K4),
        K4,
        Attrs::RAM_RWX,
        PageState::Owned,
    )
    .unwrap();
    let m = s2.query(&a, Ipa(G + M2 + K4)).unwrap();
    assert_eq!((m.pa, m.level), (Pa(4 * G + M2 + K4), 1));
    assert_eq!(a.live_pages(), base);
    s2.unmap(&mut a, &mut v, Ipa(G), G).unwrap();
    assert_eq!(a.live_pages(), base);
    // Annotations.
    s2.set_annotation(&mut a, &mut v, Ipa(3 * M2 + K4), K4, OwnerId(7))
        .unwrap();
    assert_eq!(s2.annotation(&a, Ipa(3 * M2 + K4)), Some(OwnerId(7)));
    assert_eq!(s2.annotation(&a, Ipa(3 * M2)), None);
    s2.unmap(&mut a, &mut v, Ipa(0), G).unwrap();
    assert_eq!(a.live_pages(), base);
    s2.set_block_policy(BlockSize::Page4K);
    s2.map(
        &mut a,
        &mut v,
        Ipa(0),
        Pa(0),
        M2,
        Attrs::RAM_RW,
        PageState::Owned,
    )
    .unwrap();
    assert_eq!(s2.query(&a, Ipa(M2 - K4)).unwrap().level, 3);
    s2.destroy(&mut a, &mut v);
    assert_eq!(a.live_pages(), 0);
}
