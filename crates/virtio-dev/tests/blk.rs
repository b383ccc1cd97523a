//! The block device end to end through the fake memory: reads, writes, flush, GET_ID,
//! unknown requests, out-of-range sectors, interrupts, configuration space.

mod common;

use common::*;
use virtio_dev::blk::*;
use virtio_dev::transport::reg;
use virtio_dev::{DeviceType, Error, Feature, MmioTransport, MAX_DESC_LEN};

const N: u16 = 16;
const SECTORS: usize = 64;
const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x8000;

fn blk(mem: &FakeMem) -> MmioTransport<Block<RamDisk>> {
    let mut t = MmioTransport::new(Block::new(RamDisk::new(SECTORS)), false);
    start(&mut t, mem, 1, u32::from(N));
    t
}

fn header(mem: &FakeMem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.put(at, &h);
}

#[test]
fn identity_and_configuration_space() {
    let t = MmioTransport::new(Block::new(RamDisk::new(SECTORS)), false);
    assert_eq!(r(&t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&t, reg::VERSION), 2);
    assert_eq!(r(&t, reg::DEVICE_ID), DeviceType::Block as u32);
    assert_eq!(r(&t, reg::VENDOR_ID), virtio_dev::transport::VENDOR_ID);
    // capacity as two 32-bit halves, as one 64-bit read, and byte by byte.
    assert_eq!(t.read(reg::CONFIG, 4), SECTORS as u64);
    assert_eq!(t.read(reg::CONFIG + 4, 4), 0);
    assert_eq!(t.read(reg::CONFIG, 8), SECTORS as u64);
    assert_eq!(t.read(reg::CONFIG, 1), SECTORS as u64);
    assert_eq!(
        t.read(reg::CONFIG + 8, 4),
        u64::from(MAX_DESC_LEN),
        "size_max"
    );
    assert_eq!(t.read(reg::CONFIG + 12, 4), 15, "seg_max");
    assert_eq!(t.read(reg::CONFIG + 0x40, 4), 0, "past the fields");
    // Misaligned or odd-sized accesses read 0.
    assert_eq!(t.read(reg::CONFIG + 1, 4), 0);
    assert_eq!(t.read(reg::CONFIG, 3), 0);
    assert_eq!(t.read(reg::MAGIC_VALUE, 2), 0);
    // Features: VERSION_1 (bit 32) and size_max, seg_max, flush.
    let mut t = t;
    let mem = FakeMem::new();
    w(&mut t, &mem, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&t, reg::DEVICE_FEATURES), (1 << 1) | (1 << 2) | (1 << 9));
    w(&mut t, &mem, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&t, reg::DEVICE_FEATURES), 1);
    w(&mut t, &mem, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&t, reg::DEVICE_FEATURES), 0);
    assert_eq!(t.offered_features(), Feature::VERSION_1.bits() | 0x206);
    // One queue: queue 1 does not exist.
    w(&mut t, &mem, reg::QUEUE_SEL, 1);
    assert_eq!(r(&t, reg::QUEUE_NUM_MAX), 0);
    assert_eq!(
        r(&t, reg::SHM_LEN_LOW),
        u32::MAX,
        "no shared memory regions"
    );
    assert!(mem.log().is_empty());
}

#[test]
fn write_then_read_back_across_descriptors_then_flush_and_get_id() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    // Write 3 sectors at sector 5 from buffers of 700 + 836 bytes.
    let pattern: Vec<u8> = (0..1536u32).map(|i| (i * 13 + 1) as u8).collect();
    mem.put(DATA, &pattern[..700]);
    mem.put(DATA + 0x2000, &pattern[700..]);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 5);
    mem.put(STATUS, &[0xff]);
    chain(
        &mem,
        0,
        N,
        0,
        &[
            (HDR, 16, false),
            (DATA, 700, false),
            (DATA + 0x2000, 836, false),
            (STATUS, 1, true),
        ],
    );
    assert!(notify(&mut t, &mem, 0), "used-buffer interrupt");
    assert_eq!(r(&t, reg::INTERRUPT_STATUS), 1);
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(used(&mem, 0, N, 0), (0, 1));
    assert_eq!(&t.device().backend().data[5 * 512..8 * 512], &pattern[..]);
    // ACK lowers the line.
    assert!(!w(&mut t, &mem, reg::INTERRUPT_ACK, 1));
    // Read sectors 4..8 into one buffer of 2048 bytes.
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 4);
    chain(
        &mem,
        0,
        N,
        4,
        &[
            (HDR + 0x100, 16, false),
            (DATA + 0x4000, 2048, true),
            (STATUS + 1, 1, true),
        ],
    );
    assert!(notify(&mut t, &mem, 0));
    assert_eq!(mem.get(STATUS + 1, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(used(&mem, 0, N, 1), (4, 2049));
    let back = mem.get(DATA + 0x4000, 2048);
    assert_eq!(&back[..512], &t.device().backend().data[4 * 512..5 * 512]);
    assert_eq!(&back[512..], &pattern[..]);
    // Flush, GET_ID, an unknown type (GET_LIFETIME, 10).
    header(&mem, HDR + 0x200, VIRTIO_BLK_T_FLUSH, 0);
    chain(
        &mem,
        0,
        N,
        8,
        &[(HDR + 0x200, 16, false), (STATUS + 2, 1, true)],
    );
    header(&mem, HDR + 0x300, VIRTIO_BLK_T_GET_ID, 0);
    chain(
        &mem,
        0,
        N,
        10,
        &[
            (HDR + 0x300, 16, false),
            (DATA + 0x6000, 20, true),
            (STATUS + 3, 1, true),
        ],
    );
    header(&mem, HDR + 0x400, 10, 0);
    chain(
        &mem,
        0,
        N,
        13,
        &[
            (HDR + 0x400, 16, false),
            (DATA + 0x7000, 16, true),
            (STATUS + 4, 1, true),
        ],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(
        mem.get(STATUS + 2, 3),
        [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP]
    );
    assert_eq!(t.device().backend().flushes, 1);
    assert_eq!(mem.get(DATA + 0x6000, 20), b"fake-disk-0001\0\0\0\0\0\0");
    assert_eq!(
        [
            used(&mem, 0, N, 2),
            used(&mem, 0, N, 3),
            used(&mem, 0, N, 4)
        ],
        [(8, 1), (10, 21), (13, 1)]
    );
    assert_eq!(t.take_error(), None);
    assert!(!t.is_broken());
}

#[test]
fn reads_and_writes_beyond_the_capacity_fail_with_ioerr() {
    let last = SECTORS as u64 - 1;
    // (type, sector, data bytes): one past the end, straddling the end, a sector number
    // that overflows when scaled, not a whole sector.
    for (kind, sector, len) in [
        (VIRTIO_BLK_T_IN, SECTORS as u64, 512),
        (VIRTIO_BLK_T_OUT, last, 1024),
        (VIRTIO_BLK_T_IN, u64::MAX, 512),
        (VIRTIO_BLK_T_OUT, u64::MAX / 2, 512),
        (VIRTIO_BLK_T_IN, 0, 100),
    ] {
        let mem = FakeMem::new();
        let mut t = blk(&mem);
        let before = t.device().backend().data.clone();
        header(&mem, HDR, kind, sector);
        let writable = kind == VIRTIO_BLK_T_IN;
        chain(
            &mem,
            0,
            N,
            0,
            &[(HDR, 16, false), (DATA, len, writable), (STATUS, 1, true)],
        );
        notify(&mut t, &mem, 0);
        assert_eq!(
            mem.get(STATUS, 1),
            [VIRTIO_BLK_S_IOERR],
            "{kind} at {sector}"
        );
        assert!(!t.is_broken());
        assert_eq!(t.device().backend().data, before);
        assert!(mem.log().iter().all(|a| a.ipa != DATA), "data untouched");
        assert_eq!(used(&mem, 0, N, 0), (0, 1));
    }
    // The last sector itself is fine.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, HDR, VIRTIO_BLK_T_IN, last);
    chain(
        &mem,
        0,
        N,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_OK]);
}

#[test]
fn malformed_layouts_and_backend_errors_fail_with_ioerr() {
    // A header shorter than 16 bytes; an IN request with readable data; an OUT request
    // with writable data.
    let cases: [(u32, &[Buf]); 3] = [
        (
            VIRTIO_BLK_T_IN,
            &[(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)],
        ),
        (
            VIRTIO_BLK_T_IN,
            &[
                (HDR, 16, false),
                (DATA, 512, false),
                (DATA + 512, 512, true),
                (STATUS, 1, true),
            ],
        ),
        (
            VIRTIO_BLK_T_OUT,
            &[
                (HDR, 16, false),
                (DATA, 512, false),
                (DATA + 512, 512, true),
                (STATUS, 1, true),
            ],
        ),
    ];
    for (kind, bufs) in cases {
        let mem = FakeMem::new();
        let mut t = blk(&mem);
        header(&mem, HDR, kind, 0);
        chain(&mem, 0, N, 0, bufs);
        notify(&mut t, &mem, 0);
        assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR], "{bufs:?}");
        assert_eq!(t.take_error(), Some(Error::Request { queue: 0 }));
        assert!(!t.is_broken());
    }
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    t.device_mut().backend_mut().fail = true;
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    chain(
        &mem,
        0,
        N,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
}

#[test]
fn no_interrupt_flag_suppresses_the_used_buffer_interrupt() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    mem.put16(avail_area(0), 1); // VIRTQ_AVAIL_F_NO_INTERRUPT
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    chain(&mem, 0, N, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert!(!notify(&mut t, &mem, 0));
    assert_eq!(used_idx(&mem, 0), 1);
    assert_eq!(r(&t, reg::INTERRUPT_STATUS), 0);
}

/// A backend that takes runs: records each run it is handed.
struct Runs {
    disk: RamDisk,
    calls: Vec<(char, u64, usize)>,
}

impl BlockBackend for Runs {
    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), IoError> {
        self.disk.read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8; SECTOR_SIZE]) -> Result<(), IoError> {
        self.disk.write(sector, data)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
    fn read_run(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.calls.push(('r', sector, buf.len()));
        let o = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&self.disk.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_run(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError> {
        self.calls.push(('w', sector, data.len()));
        let o = sector as usize * SECTOR_SIZE;
        self.disk.data[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn requests_reach_a_run_taking_backend_a_page_at_a_time() {
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(
        Block::new(Runs {
            disk: RamDisk::new(SECTORS),
            calls: Vec::new(),
        }),
        false,
    );
    start(&mut t, &mem, 1, u32::from(N));
    // Write 9 sectors at sector 3 from buffers of 1000 + 3608 bytes: runs of
    // 8 sectors and 1, whatever the guest's buffer boundaries.
    let pattern: Vec<u8> = (0..4608u32).map(|i| (i * 31 + 7) as u8).collect();
    mem.put(DATA, &pattern[..1000]);
    mem.put(DATA + 0x2000, &pattern[1000..]);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 3);
    chain(
        &mem,
        0,
        N,
        0,
        &[
            (HDR, 16, false),
            (DATA, 1000, false),
            (DATA + 0x2000, 3608, false),
            (STATUS, 1, true),
        ],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_OK]);
    // Read them back into one buffer.
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 3);
    chain(
        &mem,
        0,
        N,
        4,
        &[
            (HDR + 0x100, 16, false),
            (DATA + 0x4000, 4608, true),
            (STATUS + 1, 1, true),
        ],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(mem.get(STATUS + 1, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(mem.get(DATA + 0x4000, 4608), pattern);
    assert_eq!(
        t.device().backend().calls,
        [
            ('w', 3, 4096),
            ('w', 11, 512),
            ('r', 3, 4096),
            ('r', 11, 512)
        ]
    );
    assert_eq!(t.take_error(), None);
}

/// A hostile host's device (`overstate_used_lengths`, the host's `linux-hostile=usedlen`)
/// reports used lengths past the buffers, 64 KiB more or `u32::MAX`, and counts them; it
/// still writes only inside the buffers, and the setting outlives a reset.
#[test]
fn overstated_used_lengths_lie_about_the_length_only() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    t.overstate_used_lengths(0x1_0000);
    for (n, sector, want) in [(0u16, 3u64, 513 + 0x1_0000), (1, 4, u32::MAX)] {
        header(&mem, HDR, VIRTIO_BLK_T_IN, sector);
        chain(
            &mem,
            0,
            N,
            4 * n,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        mem.clear_log();
        notify(&mut t, &mem, 0);
        assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_OK]);
        // 512 data bytes and the status byte, plus the lie (saturating).
        assert_eq!(used(&mem, 0, N, n), (u32::from(4 * n), want));
        let inside = |a: &Access| {
            (DATA..DATA + 512).contains(&a.ipa) || a.ipa == STATUS || a.ipa >= used_area(0)
        };
        assert!(
            mem.log().iter().filter(|a| a.write).all(inside),
            "writes only inside the buffers and the used ring: {:?}",
            mem.log()
        );
        t.overstate_used_lengths(u32::MAX);
    }
    assert_eq!(t.overstated_used_lengths(), 2);
    // A reset keeps the setting and the count.
    w(&mut t, &mem, reg::STATUS, 0);
    mem.put16(avail_area(0) + 2, 0);
    mem.put16(used_area(0) + 2, 0);
    start(&mut t, &mem, 1, u32::from(N));
    header(&mem, HDR, VIRTIO_BLK_T_IN, 5);
    chain(
        &mem,
        0,
        N,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(used(&mem, 0, N, 0).1, u32::MAX);
    assert_eq!(t.overstated_used_lengths(), 3);
    // 0: honest again.
    t.overstate_used_lengths(0);
    chain(
        &mem,
        0,
        N,
        4,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(used(&mem, 0, N, 1).1, 513);
    assert_eq!(t.overstated_used_lengths(), 3);
}
